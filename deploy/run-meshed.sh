#!/usr/bin/env bash
# run-meshed.sh - the README's example, meshed: two ringmesh proxies with
# workload identities from a throwaway CA (static identity mode, no control
# plane), talking mutual TLS with Linkerd's transport header.
#
#   client -> A (forward 127.0.0.1:18080, identity "client...")
#          == mTLS + transport header ==>
#          B (inbound 127.0.0.1:14143, identity "echo...") -> 127.0.0.1:18081/18082
#
# Start the two python backends of the README first, then run this (from
# the repository root); Ctrl-C stops both proxies. It prints the commands to
# try. Needs openssl (Debian: openssl) and a release build (it runs
# `cargo build --release` once).
#
# Settings (environment): DIR=<scratch dir> (default: a new mktemp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v openssl >/dev/null || { echo "run-meshed.sh: openssl is needed (apt-get install openssl)" >&2; exit 2; }
DIR=${DIR:-$(mktemp -d /tmp/ringmesh-meshed.XXXXXX)}
mkdir -p "$DIR"
CLIENT=client.default.serviceaccount.identity.linkerd.cluster.local
SERVER=echo.default.serviceaccount.identity.linkerd.cluster.local

# A CA, and a P-256 key + certificate per identity (DNS SAN = the identity).
openssl ecparam -name prime256v1 -genkey -noout -out "$DIR/ca.key" 2>/dev/null
openssl req -x509 -new -key "$DIR/ca.key" -subj "/CN=identity.linkerd.cluster.local" -days 30 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$DIR/ca.pem" 2>/dev/null
for who in client echo; do
  name=$who.default.serviceaccount.identity.linkerd.cluster.local
  openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$DIR/$who.key"
  openssl req -new -key "$DIR/$who.key" -subj "/CN=$name" -out "$DIR/$who.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' "$name" > "$DIR/$who.ext"
  openssl x509 -req -in "$DIR/$who.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" -CAcreateserial \
    -days 7 -extfile "$DIR/$who.ext" -out "$DIR/$who.pem" 2>/dev/null
done

# A's discovery: the service's endpoints are behind B, which proves SERVER
# and takes meshed connections on its inbound port.
cat > "$DIR/discovery.toml" <<EOF
[[service]]
name = "echo.test:8080"
endpoints = ["127.0.0.1:18081", "127.0.0.1:18082"]
protocol = "http1"
identity = "$SERVER"
opaque_transport_port = 14143
EOF

cargo build --release --bin ringmesh
BIN=target/release/ringmesh
export LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS="$(cat "$DIR/ca.pem")" LINKERD2_PROXY_CORES=1
env LINKERD2_PROXY_IDENTITY_LOCAL_NAME=$SERVER RINGMESH_IDENTITY_CERT="$DIR/echo.pem" RINGMESH_IDENTITY_KEY="$DIR/echo.key" \
  LINKERD2_PROXY_INBOUND_LISTEN_ADDR=127.0.0.1:14143 LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR= \
  LINKERD2_PROXY_ADMIN_LISTEN_ADDR=127.0.0.1:14191 "$BIN" &
B=$!
env LINKERD2_PROXY_IDENTITY_LOCAL_NAME=$CLIENT RINGMESH_IDENTITY_CERT="$DIR/client.pem" RINGMESH_IDENTITY_KEY="$DIR/client.key" \
  RINGMESH_DISCOVERY_STATIC="$DIR/discovery.toml" RINGMESH_TCP_FORWARD=127.0.0.1:18080=echo.test:8080 \
  LINKERD2_PROXY_INBOUND_LISTEN_ADDR= "$BIN" &
A=$!
trap 'kill $A $B 2>/dev/null; wait $A $B 2>/dev/null' EXIT INT TERM
cat <<EOF
# meshed pair running (scratch files in $DIR); try:
curl http://127.0.0.1:18080/                       # through A, mTLS to B, to the backends
curl -s http://127.0.0.1:4191/metrics  | grep 'tls="true"'   # A: server_id="$SERVER"
curl -s http://127.0.0.1:14191/metrics | grep 'tls="true"'   # B: client_id="$CLIENT"
# Ctrl-C stops both proxies.
EOF
wait
