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
# try. Stop the README's first proxy before (Ctrl-C): A uses the same ports
# (127.0.0.1:18080, :4140, :4191). Needs openssl and curl (Debian: openssl,
# curl) and a release build (it runs `cargo build --release` once, unless
# RINGMESH_BIN is set).
#
# Settings (environment): DIR=<scratch dir> (default: a new mktemp dir);
# RINGMESH_BIN=/path/to/ringmesh runs that binary, without building.
#
# It exits non-zero when a port it needs is in use, or, printing the
# proxy's log, when a proxy exits or its admin /ready does not answer 200
# within 20 s.
set -euo pipefail
# RINGMESH_BIN as the caller's shell finds it (before the cd below).
if [ -n "${RINGMESH_BIN:-}" ]; then
  case $RINGMESH_BIN in
    */*) RINGMESH_BIN=$(realpath -m "$RINGMESH_BIN") ;;
    *) RINGMESH_BIN=$(command -v "$RINGMESH_BIN" || echo "$RINGMESH_BIN") ;;
  esac
  [ -x "$RINGMESH_BIN" ] || { echo "run-meshed.sh: RINGMESH_BIN=$RINGMESH_BIN is not an executable" >&2; exit 2; }
fi
cd "$(dirname "$0")/.."
for tool in openssl curl; do
  command -v $tool >/dev/null || { echo "run-meshed.sh: $tool is needed (apt-get install $tool)" >&2; exit 2; }
done
# A port in use would make a proxy exit, or its /ready be another's.
for port in 18080 4140 4191 14143 14191; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run-meshed.sh: 127.0.0.1:$port is in use (the README's first proxy? stop it with Ctrl-C)" >&2
    exit 1
  fi
done
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

if [ -n "${RINGMESH_BIN:-}" ]; then
  BIN=$RINGMESH_BIN
else
  cargo build --release --bin ringmesh
  BIN=target/release/ringmesh
fi
A= B=
trap 'kill $A $B 2>/dev/null || true; wait $A $B 2>/dev/null || true' EXIT INT TERM
# Each proxy's log is shown and kept in $DIR, to be printed if it fails.
export LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS="$(cat "$DIR/ca.pem")" LINKERD2_PROXY_CORES=1
env LINKERD2_PROXY_IDENTITY_LOCAL_NAME=$SERVER RINGMESH_IDENTITY_CERT="$DIR/echo.pem" RINGMESH_IDENTITY_KEY="$DIR/echo.key" \
  LINKERD2_PROXY_INBOUND_LISTEN_ADDR=127.0.0.1:14143 LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR= \
  LINKERD2_PROXY_ADMIN_LISTEN_ADDR=127.0.0.1:14191 "$BIN" 2> >(tee "$DIR/b.log" >&2) &
B=$!
env LINKERD2_PROXY_IDENTITY_LOCAL_NAME=$CLIENT RINGMESH_IDENTITY_CERT="$DIR/client.pem" RINGMESH_IDENTITY_KEY="$DIR/client.key" \
  RINGMESH_DISCOVERY_STATIC="$DIR/discovery.toml" RINGMESH_TCP_FORWARD=127.0.0.1:18080=echo.test:8080 \
  LINKERD2_PROXY_INBOUND_LISTEN_ADDR= "$BIN" 2> >(tee "$DIR/a.log" >&2) &
A=$!

# started NAME PID ADMIN_PORT LOG: the proxy runs and its /ready says 200.
started() {
  local name=$1 pid=$2 port=$3 log=$4 rc
  for _ in $(seq 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      rc=0; wait "$pid" || rc=$?
      sleep 0.2 # tee writes the log's last lines
      printf 'run-meshed.sh: proxy %s exited (status %s); its log (%s):\n' "$name" "$rc" "$log" >&2
      cat "$log" >&2
      return 1
    fi
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ready")" = 200 ]; then
      return 0
    fi
    sleep 0.2
  done
  printf 'run-meshed.sh: proxy %s not ready on 127.0.0.1:%s after 20 s; its log (%s):\n' "$name" "$port" "$log" >&2
  cat "$log" >&2
  return 1
}
started B "$B" 14191 "$DIR/b.log" || exit 1
started A "$A" 4191 "$DIR/a.log" || exit 1
cat <<EOF
# meshed pair running (scratch files in $DIR); try:
curl http://127.0.0.1:18080/                       # through A, mTLS to B, to the backends
curl -s http://127.0.0.1:4191/metrics  | grep 'tls="true"'   # A: server_id="$SERVER"
curl -s http://127.0.0.1:14191/metrics | grep 'tls="true"'   # B: client_id="$CLIENT"
# Ctrl-C stops both proxies.
EOF
wait
