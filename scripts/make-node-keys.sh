#!/usr/bin/env bash
# Make a key pair per SuperNode for Flower's SuperNode authentication (ssh-keygen only).
#
#   scripts/make-node-keys.sh [OUT_DIR] [NODES]
#
# OUT_DIR (default: certificates/node-keys) receives node-<i> (the SuperNode's private key, OpenSSH
# format, for flower-supernode --auth-supernode-private-key) and node-<i>.pub (its public key, for
# flwr supernode register) for i = 0 .. NODES-1 (default 2): ECDSA on the NIST curve P-384, as
# Flower 1.42 wants. Existing keys are kept (a missing .pub is derived from its private key), so
# keys already registered with a SuperLink stay valid; delete a node's files to make new ones. A new
# OUT_DIR is private (0700); in it the private keys are readable (0644) because the SuperNode
# containers run as another user (uid 49999) and read them through a bind mount.
set -euo pipefail

out=${1:-certificates/node-keys}
nodes=${2:-2}

if ! command -v ssh-keygen >/dev/null; then
    echo "ssh-keygen not found: install OpenSSH's client (e.g. apt-get install openssh-client)" >&2
    exit 1
fi
if ! [[ "$nodes" =~ ^[1-9][0-9]*$ ]]; then
    echo "NODES must be a positive number, not '$nodes'" >&2
    exit 1
fi
[[ -d "$out" ]] || mkdir -p -m 700 "$out"

made=()
for ((i = 0; i < nodes; i++)); do
    key="$out/node-$i"
    if [[ ! -f "$key" ]]; then
        ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedhn node-$i" -f "$key"
        chmod 644 "$key"
        made+=("node-$i")
    elif [[ ! -f "$key.pub" ]]; then
        # Read through a pipe: ssh-keygen refuses a private key file that others may read.
        public=$(ssh-keygen -y -f <(cat "$key"))
        printf '%s\n' "$public" >"$key.pub"
    fi
done
echo "Keys of $nodes SuperNodes in $out (new: ${made[*]:-none}); register each node-<i>.pub with:" \
    "flwr supernode register $out/node-<i>.pub CONNECTION"
