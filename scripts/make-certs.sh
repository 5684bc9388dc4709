#!/usr/bin/env bash
# Make a private CA and a SuperLink server certificate for Flower's TLS (openssl only).
#
#   scripts/make-certs.sh [OUT_DIR] [EXTRA_SAN ...]
#
# OUT_DIR (default: certificates) receives ca.crt, ca.key, server.pem, server.key. The server
# certificate is valid for localhost, 127.0.0.1, ::1 and the compose service name "superlink";
# add the SuperLink's public DNS name or IP as EXTRA_SAN (e.g. DNS:fl.example.org IP:10.0.0.5).
# Existing files are kept: delete OUT_DIR to make new ones. A new OUT_DIR is private (0700); in it
# server.key is readable (0644) because the SuperLink container runs as another user (uid 49999) and
# reads it through a bind mount. CERT_DAYS sets the validity (default 365 days).
set -euo pipefail

out=${1:-certificates}
shift || true
days=${CERT_DAYS:-365}

if [[ -f "$out/server.pem" ]]; then
    echo "$out/server.pem exists; keeping the certificates in $out"
    exit 0
fi
[[ -d "$out" ]] || mkdir -p -m 700 "$out"
sans="DNS:localhost,DNS:superlink,IP:127.0.0.1,IP:::1"
for san in "$@"; do sans+=",$san"; done

openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
    -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/O=fedhn/CN=fedhn CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -sha256 \
    -keyout "$out/server.key" -out "$out/server.csr" -subj "/O=fedhn/CN=superlink" 2>/dev/null
openssl x509 -req -sha256 -days "$days" -in "$out/server.csr" \
    -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial -out "$out/server.pem" \
    -extfile <(printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' "$sans")
rm -f "$out/server.csr" "$out/ca.srl"
chmod 600 "$out/ca.key"
chmod 644 "$out/server.key"
echo "Wrote $out/ca.crt (give it to SuperNodes and flwr), $out/server.pem and $out/server.key (SuperLink); SANs: $sans"
