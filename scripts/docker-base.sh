#!/usr/bin/env bash
# A Debian base image for the Dockerfile where Docker Hub cannot be reached: debootstrap builds a
# minimal Debian from the Debian mirror apt uses, and `docker import` turns it into an image.
#
#   scripts/docker-base.sh [IMAGE]          (as root; default IMAGE: fedhn-debian:bookworm)
#
# Then build the app image on it (Dockerfile, stage flower-on-debian):
#   docker compose build --build-arg BASE_IMAGE=flower-on-debian --build-arg DEBIAN_IMAGE=IMAGE
# An existing IMAGE is kept (delete it with `docker image rm IMAGE` to make it anew). Installs
# debootstrap with apt-get when it is missing. DEBIAN_MIRROR overrides the mirror.
set -euo pipefail

image=${1:-fedhn-debian:bookworm}
suite=bookworm

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image exists"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "debootstrap needs root: run scripts/docker-base.sh as root" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null; then
    apt-get install -y --no-install-recommends debootstrap
fi
# The mirror of apt's own Debian source (deb822 or one-line format), else Debian's default.
mirror=${DEBIAN_MIRROR:-$(
    cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -m1 -oE 'https?://[^ ]+/debian/?( |$)' | tr -d ' ' || true
)}
mirror=${mirror:-http://deb.debian.org/debian}

rootfs=$(mktemp -d /tmp/fedhn-debian-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap $suite from $mirror ..."
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "$image: $(docker image inspect --format '{{.Size}}' "$image" | numfmt --to=iec) (Debian $suite from $mirror)"
