#!/usr/bin/env bash
# Development PKI for the local MQTT TLS listener: a CA, a server certificate for 127.0.0.1 /
# localhost, and client certificates whose CN is the MQTT identity (mosquitto's
# use_identity_as_username): the bridge (fleet-bridge) and vehicles VEH-TEST-001..010.
# Client keys are also packed as PKCS#12 (password "fleet") for native-tls clients.
#
#   scripts/dev-certs.sh DIR      create what is missing in DIR (idempotent)
#
# Not for production: keys are unencrypted and the CA key sits next to them.
set -euo pipefail
dir=${1:?usage: dev-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
days=3650

if [[ ! -f ca.key || ! -f ca.crt ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days "$days" \
    -subj "/CN=fleetstream dev CA" >/dev/null 2>&1
fi

# issue NAME CN [SAN]: key + certificate signed by the dev CA.
issue() {
  local name=$1 cn=$2 san=${3:-}
  [[ -f "$name.crt" && -f "$name.key" ]] && return 0
  openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "/CN=$cn" >/dev/null 2>&1
  local ext
  ext=$(mktemp)
  if [[ -n "$san" ]]; then
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" >"$ext"
  else
    printf 'extendedKeyUsage=clientAuth\n' >"$ext"
  fi
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$name.crt" \
    -days "$days" -extfile "$ext" >/dev/null 2>&1
  rm -f "$name.csr" "$ext"
  if [[ -z "$san" ]]; then
    openssl pkcs12 -export -in "$name.crt" -inkey "$name.key" -out "$name.p12" \
      -passout pass:fleet -certpbe AES-256-CBC -keypbe AES-256-CBC -macalg sha256 >/dev/null 2>&1
  fi
}

issue server localhost "DNS:localhost,IP:127.0.0.1"
issue fleet-bridge fleet-bridge
for i in $(seq -w 1 10); do
  issue "VEH-TEST-0$i" "VEH-TEST-0$i"
done
chmod 644 ./*.crt
chmod 640 ./*.key ./*.p12
