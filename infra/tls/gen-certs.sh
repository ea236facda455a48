#!/usr/bin/env bash
# Makes a private CA and the TLS material of docker-compose.secure.yml in infra/tls/generated/ (git-ignored):
# Kafka's PKCS12 keystore (+ the credential files the apache/kafka image reads), Redis's cert and key, ca.crt.
set -euo pipefail

OUT="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/generated}"
DAYS="${TLS_DAYS:-825}"
command -v openssl >/dev/null || { echo "gen-certs: openssl not found" >&2; exit 1; }
mkdir -p "$OUT/kafka" "$OUT/redis"
cd "$OUT"

if [[ ! -s ca.key ]]; then
  openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days "$DAYS" -subj "/CN=sentiflow-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
fi

# server <name> <dir> <subjectAltName>: key + certificate signed by the CA.
server() {
  local name="$1" dir="$2" san="$3"
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=$name" -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$DAYS" -sha256 \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san") -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr"
}

server kafka kafka "DNS:kafka,DNS:localhost,IP:127.0.0.1"
password="$(openssl rand -hex 24)"
openssl pkcs12 -export -in kafka/kafka.crt -inkey kafka/kafka.key -certfile ca.crt -name kafka \
  -passout "pass:$password" -out kafka/kafka.keystore.p12
printf '%s' "$password" >kafka/keystore_creds
printf '%s' "$password" >kafka/key_creds
rm -f kafka/kafka.key

server redis redis "DNS:redis,DNS:localhost,IP:127.0.0.1"
cp ca.crt redis/ca.crt

# The brokers' and Redis's container users must read their files through the bind mounts; the CA key
# stays private to whoever ran this script.
chmod 0600 ca.key
chmod 0644 ca.crt kafka/* redis/*
openssl verify -CAfile ca.crt kafka/kafka.crt redis/redis.crt
echo "TLS material in $OUT (CA: $OUT/ca.crt)"
