#!/usr/bin/env bash
# Development certificates: a throw-away CA, a server certificate for the
# broker, and one client certificate per name given (CN = the name, so a
# broker with use_identity_as_username maps it to the ACL user).
#
#   deploy/mosquitto/make-test-ca.sh OUT_DIR [SERVER_NAME] [CLIENT...]
#   deploy/mosquitto/make-test-ca.sh certs localhost kiosk-01 operator
#
# Writes OUT_DIR/ca.crt ca.key server.crt server.key NAME.crt NAME.key.
# EC P-256 keys, 825 days. NOT for production: use your own PKI there.
set -euo pipefail
out=${1:?usage: make-test-ca.sh OUT_DIR [SERVER_NAME] [CLIENT...]}
server=${2:-localhost}
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$out"
cd "$out"
umask 077
days=825
if [ -e ca.key ]; then
  echo "make-test-ca: $out/ca.key exists; reusing the CA" >&2
else
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout ca.key -out ca.crt -days "$days" -subj "/CN=kiosk-fleet test CA" 2>/dev/null
fi
issue() {  # issue NAME CN EXT
  local name=$1 cn=$2 ext=$3
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$name.key" -out "$name.csr" -subj "/CN=$cn" 2>/dev/null
  printf '%s\n' "$ext" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out "$name.crt" -days "$days" -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
if [[ "$server" =~ ^[0-9.]+$ ]]; then san="IP:$server"; else san="DNS:$server"; fi
issue server "$server" "subjectAltName=$san,IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
for client in "$@"; do
  issue "$client" "$client" "extendedKeyUsage=clientAuth"
done
chmod 644 ca.crt server.crt ./*.crt
rm -f ca.srl
echo "make-test-ca: wrote $(ls | tr '\n' ' ')in $out"
