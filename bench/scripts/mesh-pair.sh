#!/usr/bin/env bash
# mesh-pair.sh - the meshed path, client -> outbound proxy =mTLS=> inbound
# proxy -> server, with a pair of ringmesh against a pair of linkerd2-proxy:
# same topology, pinning and load, rounds interleaved.
#
# Topology (one network namespace this script creates, removed on exit):
#   pod A 10.79.0.1 (on lo): the load generator, its outbound proxy on :4140
#   pod B 10.79.0.2 (on lo): the inbound proxy on :4143, nginx on :8080
#     (HTTP/1.1), :8081 (h2c) and :8082 (HTTP/1.1 on a port both meshes
#     treat as opaque TCP), answering "ok"
#   iptables (as Linkerd's proxy-init): connections from any uid but the
#   proxies' (2102) to 10.79.0.2:8080-8082 are redirected to :4140.
# Proxy A connects to B's :4143 with mutual TLS and Linkerd's transport
# header (HTTP/1.1 is carried over HTTP/2 between the proxies, as Linkerd's
# h2 hint does); B terminates it and calls nginx.
#   ringmesh: static identities (certificates from the test CA) and a
#     static discovery file saying 10.79.0.2:8080-8081 are meshed (identity
#     of B, opaque transport 4143, protocol_hint h2).
#   linkerd2-proxy: the fake control plane (engine/tests/mesh/fake_cp.py:
#     Certify, Destination, policy) with the same facts.
# Pinning: load generator on CLIENT_CPU; both proxies and nginx on
# PROXY_CPU (1 worker / LINKERD2_PROXY_CORES=1 each), so that core is the
# bottleneck. CPU per request = both proxies' user+system time over the
# measured window / requests completed.
#
# Kinds: h1 (wrk, CONNS keep-alive connections), h2 (h2load, H2_CLIENTS x
# H2_STREAMS, prior knowledge), newconn (wrk with Connection: close, one
# new client connection per request; A's HTTP connection to B stays pooled,
# as in a mesh), handshake (the same on the opaque port: every client
# connection is relayed over a new mTLS connection from A to B, so each
# request costs a handshake between the proxies: the handshake-bound case;
# session resumption is whatever each proxy does by default).
#
# Usage: sudo bench/scripts/mesh-pair.sh [KEY=value ...]
#   ROUNDS=3 DURATION=6 WARMUP=1 CONNS=32 NEWCONN_CONNS=8 H2_CLIENTS=4
#   H2_STREAMS=8 KINDS=h1,h2,newconn,handshake CLIENT_CPU=0 PROXY_CPU=1
#   RINGMESH_BIN=target/release/ringmesh
#   LINKERD_BIN=../shared/peers/linkerd2-proxy   KEEP=0 (1: keep scratch)
#   BASE_BIN= (set: a third pair, "base", of ringmesh from this binary: an
#   A/B of two ringmesh builds against each other and linkerd2-proxy in one
#   run; the medians then also give ringmesh / base)
#   STAT=0 (1: also count, over each measured window, both proxies' system
#   calls, context switches and page faults per request with `perf stat`,
#   and the TCP segments every hop sent per request)
# Output: one row per round, pair and kind; then medians and the ringmesh /
# linkerd2-proxy ratios of CPU per request and p99.
set -euo pipefail
ME=mesh-pair.sh
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SETTINGS='ROUNDS|DURATION|WARMUP|CONNS|NEWCONN_CONNS|H2_CLIENTS|H2_STREAMS|KINDS|CLIENT_CPU|PROXY_CPU|RINGMESH_BIN|LINKERD_BIN|KEEP|STAT|BASE_BIN'
# shellcheck source=lib.sh
source "$ROOT/bench/scripts/lib.sh"
parse_settings "$@"
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-6} WARMUP=${WARMUP:-1} CONNS=${CONNS:-32}
NEWCONN_CONNS=${NEWCONN_CONNS:-8} H2_CLIENTS=${H2_CLIENTS:-4} H2_STREAMS=${H2_STREAMS:-8}
KINDS=${KINDS:-h1,h2,newconn,handshake} CLIENT_CPU=${CLIENT_CPU:-0} PROXY_CPU=${PROXY_CPU:-1}
RINGMESH_BIN=${RINGMESH_BIN:-$ROOT/target/release/ringmesh}
LINKERD_BIN=${LINKERD_BIN:-$ROOT/../shared/peers/linkerd2-proxy}
KEEP=${KEEP:-0} STAT=${STAT:-0} BASE_BIN=${BASE_BIN:-}
[[ $(id -u) == 0 ]] || { echo "$ME: needs root (a network namespace, iptables, setpriv)" >&2; exit 2; }
need_tools wrk h2load taskset nginx curl
for t in openssl ip iptables setpriv /usr/bin/python3; do
  command -v "$t" >/dev/null || { echo "$ME: $t not found (sudo bash scripts/install-test-deps.sh)" >&2; exit 2; }
done
[[ -x $RINGMESH_BIN ]] || { echo "$ME: $RINGMESH_BIN not built (cargo build --release)" >&2; exit 2; }
[[ -x $LINKERD_BIN ]] || { echo "$ME: $LINKERD_BIN missing" >&2; exit 2; }
[[ -z $BASE_BIN || -x $BASE_BIN ]] || { echo "$ME: BASE_BIN $BASE_BIN missing" >&2; exit 2; }
[[ $STAT == 0 ]] || command -v perf >/dev/null || { echo "$ME: STAT=1 needs perf" >&2; exit 2; }

NS=rmbench-$$ UID_P=2102 IP_A=10.79.0.1 IP_B=10.79.0.2
S=$(mktemp -d /tmp/mesh-pair.XXXXXX)
chmod 755 "$S"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  if [[ $KEEP == 1 ]]; then echo "# scratch kept in $S" >&2; else rm -rf "$S"; fi
}
trap cleanup EXIT INT TERM
inns() { ip netns exec "$NS" "$@"; }
# Background processes are started with `ip netns exec` itself (not the
# function), so `$!` is the process: ip, taskset, setpriv and env exec.

# --- the namespace, its addresses and Linkerd's redirect -----------------
ip netns add "$NS"
inns ip link set lo up
# New connection per request: reuse TIME_WAIT ports and use the whole
# range, or the client runs out of ports and waits on SYN retransmits.
inns sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65535"
inns ip addr add $IP_A/32 dev lo
inns ip addr add $IP_B/32 dev lo
inns iptables -w -t nat -A OUTPUT -p tcp -d $IP_B -m multiport --dports 8080:8082 \
  -m owner ! --uid-owner $UID_P -j REDIRECT --to-ports 4140

# --- identities: a CA; static certificates (ringmesh), CSRs (linkerd) ----
ID_A=a.default.serviceaccount.identity.linkerd.cluster.local
ID_B=b.default.serviceaccount.identity.linkerd.cluster.local
openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$S/ca.key"
openssl req -x509 -new -key "$S/ca.key" -subj "/CN=identity.linkerd.cluster.local" -days 2 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$S/ca.pem" 2>/dev/null
for who in a b; do
  id=$who.default.serviceaccount.identity.linkerd.cluster.local
  mkdir -p "$S/$who-id"
  openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$S/$who.key"
  openssl pkcs8 -topk8 -nocrypt -in "$S/$who.key" -outform DER -out "$S/$who-id/key.p8"
  openssl req -new -key "$S/$who.key" -subj "/CN=$id" -addext "subjectAltName=DNS:$id" -outform DER -out "$S/$who-id/csr.der" 2>/dev/null
  openssl req -new -key "$S/$who.key" -subj "/CN=$id" -out "$S/$who.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' "$id" >"$S/$who.ext"
  openssl x509 -req -in "$S/$who.csr" -CA "$S/ca.pem" -CAkey "$S/ca.key" -CAcreateserial -days 1 \
    -extfile "$S/$who.ext" -out "$S/$who.pem" 2>/dev/null
  echo "token-$who" >"$S/$who-id/token"
done
chmod -R a+rX "$S"
ANCHORS=$(cat "$S/ca.pem")

# --- nginx (pod B's application) ------------------------------------------
mkdir -p "$S/nginx-tmp"
cat >"$S/nginx.conf" <<EOF
worker_processes 1;
pid $S/nginx.pid;
error_log $S/nginx.err warn;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off;
  keepalive_timeout 120s;
  keepalive_requests 10000000;
  client_body_temp_path $S/nginx-tmp/body;
  proxy_temp_path $S/nginx-tmp/proxy;
  fastcgi_temp_path $S/nginx-tmp/fastcgi;
  uwsgi_temp_path $S/nginx-tmp/uwsgi;
  scgi_temp_path $S/nginx-tmp/scgi;
  server { listen $IP_B:8080;       location / { return 200 "ok\n"; } }
  server { listen $IP_B:8081 http2; location / { return 200 "ok\n"; } }
  server { listen $IP_B:8082;       location / { return 200 "ok\n"; } }
}
EOF
ip netns exec "$NS" taskset -c "$PROXY_CPU" "$(command -v nginx)" -p "$S" -c "$S/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

# --- the fake control plane (linkerd2-proxy's pair) --------------------------
cat >"$S/cp.json" <<EOF
{"destinations": {
  "$IP_B:8080": {"opaque": false, "policy": "service", "service": "web", "namespace": "default",
    "fqn": "web.default.svc.cluster.local",
    "endpoints": [{"addr": "$IP_B", "port": 8080, "tls_identity": "$ID_B",
      "opaque_transport_inbound_port": 4143, "protocol_hint": "h2"}]},
  "$IP_B:8081": {"opaque": false, "policy": "service", "service": "web-h2", "namespace": "default",
    "fqn": "web-h2.default.svc.cluster.local",
    "endpoints": [{"addr": "$IP_B", "port": 8081, "tls_identity": "$ID_B",
      "opaque_transport_inbound_port": 4143, "protocol_hint": "h2"}]},
  "$IP_B:8082": {"opaque": true, "policy": "service", "service": "web-tcp", "namespace": "default",
    "fqn": "web-tcp.default.svc.cluster.local",
    "endpoints": [{"addr": "$IP_B", "port": 8082, "tls_identity": "$ID_B",
      "opaque_transport_inbound_port": 4143, "protocol_hint": "opaque"}]}},
 "unknown_policy": "not-found",
 "inbound": {"default_policy": "all-unauthenticated", "ports": {"8082": {"protocol": "opaque"}}}}
EOF
ip netns exec "$NS" /usr/bin/python3 "$ROOT/engine/tests/mesh/fake_cp.py" --listen 127.0.0.1:8090 --config "$S/cp.json" \
  --ca-cert "$S/ca.pem" --ca-key "$S/ca.key" >"$S/cp.log" 2>&1 &
PIDS+=($!)

# --- ringmesh's static discovery (the same facts) -----------------------------
cat >"$S/ringmesh.toml" <<EOF
[[service]]
name = "$IP_B:8080"
endpoints = ["$IP_B:8080"]
identity = "$ID_B"
opaque_transport_port = 4143
protocol_hint = "h2"

[[service]]
name = "$IP_B:8081"
endpoints = ["$IP_B:8081"]
identity = "$ID_B"
opaque_transport_port = 4143
protocol_hint = "h2"

[[service]]
name = "$IP_B:8082"
endpoints = ["$IP_B:8082"]
identity = "$ID_B"
opaque_transport_port = 4143
protocol = "opaque"
EOF

# start_pair ringmesh|base|linkerd: both proxies, pinned, as uid 2102;
# waits until both are ready. Sets PAIR_PIDS.
start_pair() {
  local common=(LINKERD2_PROXY_CORES=1 LINKERD2_PROXY_LOG=warn LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS="$ANCHORS")
  local a b bin=$RINGMESH_BIN
  [[ $1 == base ]] && bin=$BASE_BIN
  if [[ $1 == ringmesh || $1 == base ]]; then
    a=(env "${common[@]}" LINKERD2_PROXY_IDENTITY_LOCAL_NAME=$ID_A RINGMESH_IDENTITY_CERT="$S/a.pem"
       RINGMESH_IDENTITY_KEY="$S/a.key" RINGMESH_DISCOVERY_STATIC="$S/ringmesh.toml"
       LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR=127.0.0.1:4140 LINKERD2_PROXY_INBOUND_LISTEN_ADDR=
       LINKERD2_PROXY_ADMIN_LISTEN_ADDR=127.0.0.1:4191 "$bin")
    b=(env "${common[@]}" LINKERD2_PROXY_IDENTITY_LOCAL_NAME=$ID_B RINGMESH_IDENTITY_CERT="$S/b.pem"
       RINGMESH_IDENTITY_KEY="$S/b.key" LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR=
       LINKERD2_PROXY_INBOUND_LISTEN_ADDR=$IP_B:4143 LINKERD2_PROXY_ADMIN_LISTEN_ADDR=127.0.0.1:4192 "$bin")
  else
    local l5d=(LINKERD2_PROXY_IDENTITY_SVC_ADDR=127.0.0.1:8090 LINKERD2_PROXY_DESTINATION_SVC_ADDR=127.0.0.1:8090
      LINKERD2_PROXY_POLICY_SVC_ADDR=127.0.0.1:8090 LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS=10.0.0.0/8
      LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS=10.0.0.0/8 LINKERD2_PROXY_INBOUND_DEFAULT_POLICY=all-unauthenticated)
    a=(env "${common[@]}" "${l5d[@]}" LINKERD2_PROXY_IDENTITY_LOCAL_NAME=$ID_A LINKERD2_PROXY_IDENTITY_DIR="$S/a-id"
       LINKERD2_PROXY_IDENTITY_TOKEN_FILE="$S/a-id/token"
       'LINKERD2_PROXY_DESTINATION_CONTEXT={"ns":"default","pod":"a-0"}' 'LINKERD2_PROXY_POLICY_WORKLOAD={"ns":"default","pod":"a-0"}'
       LINKERD2_PROXY_INBOUND_IPS=$IP_A LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR=127.0.0.1:4140
       LINKERD2_PROXY_INBOUND_LISTEN_ADDR=$IP_A:4143 LINKERD2_PROXY_ADMIN_LISTEN_ADDR=127.0.0.1:4191
       LINKERD2_PROXY_CONTROL_LISTEN_ADDR=127.0.0.1:4190 "$LINKERD_BIN")
    b=(env "${common[@]}" "${l5d[@]}" LINKERD2_PROXY_IDENTITY_LOCAL_NAME=$ID_B LINKERD2_PROXY_IDENTITY_DIR="$S/b-id"
       LINKERD2_PROXY_IDENTITY_TOKEN_FILE="$S/b-id/token"
       'LINKERD2_PROXY_DESTINATION_CONTEXT={"ns":"default","pod":"b-0"}' 'LINKERD2_PROXY_POLICY_WORKLOAD={"ns":"default","pod":"b-0"}'
       LINKERD2_PROXY_INBOUND_IPS=$IP_B LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR=127.0.0.1:24140
       LINKERD2_PROXY_INBOUND_LISTEN_ADDR=$IP_B:4143 LINKERD2_PROXY_ADMIN_LISTEN_ADDR=127.0.0.1:4192
       LINKERD2_PROXY_CONTROL_LISTEN_ADDR=127.0.0.1:4194 "$LINKERD_BIN")
  fi
  ip netns exec "$NS" taskset -c "$PROXY_CPU" setpriv --reuid $UID_P --regid $UID_P --clear-groups "${b[@]}" >"$S/$1-b.log" 2>&1 &
  PAIR_PIDS=($!)
  ip netns exec "$NS" taskset -c "$PROXY_CPU" setpriv --reuid $UID_P --regid $UID_P --clear-groups "${a[@]}" >"$S/$1-a.log" 2>&1 &
  PAIR_PIDS+=($!)
  local deadline=$((SECONDS + 30)) port
  for port in 4191 4192; do
    until inns curl -sf -o /dev/null "http://127.0.0.1:$port/ready"; do
      if ((SECONDS > deadline)); then
        echo "$ME: $1 pair not ready; logs:" >&2; tail -n 20 "$S/$1-a.log" "$S/$1-b.log" "$S/cp.log" >&2; exit 1
      fi
      sleep 0.2
    done
  done
  # The first request through also warms the pools and the Destination
  # watches; it must succeed.
  local i
  for i in $(seq 1 50); do
    inns curl -sf -o /dev/null --max-time 2 "http://$IP_B:8080/" && return 0
    sleep 0.2
  done
  echo "$ME: no request passed the $1 pair; logs:" >&2; tail -n 20 "$S/$1-a.log" "$S/$1-b.log" >&2; exit 1
}

stop_pair() {
  # SIGKILL: a graceful drain would hold the ports the next pair binds.
  kill -9 "${PAIR_PIDS[@]}" 2>/dev/null || true
  wait "${PAIR_PIDS[@]}" 2>/dev/null || true
}

# cpu_ticks PID...: user+system and system clock ticks of the processes (all
# threads).
cpu_ticks() {
  local p t=0 k=0
  for p in "$@"; do
    case $(readlink "/proc/$p/exe") in
      *ringmesh* | *linkerd2-proxy*) ;;
      *) echo "$ME: pid $p is not a proxy ($(readlink "/proc/$p/exe"))" >&2; exit 1 ;;
    esac
    t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat")))
    k=$((k + $(awk '{ print $15 }' "/proc/$p/stat")))
  done
  echo "$t $k"
}

# load KIND SECONDS OUT: runs the load generator in the namespace.
load() {
  local kind=$1 secs=$2 out=$3
  case $kind in
    h1) inns taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${secs}s" --latency "http://$IP_B:8080/" >"$out" 2>&1 ;;
    newconn) inns taskset -c "$CLIENT_CPU" wrk -t1 -c"$NEWCONN_CONNS" -d"${secs}s" --latency -H "Connection: close" "http://$IP_B:8080/" >"$out" 2>&1 ;;
    handshake) inns taskset -c "$CLIENT_CPU" wrk -t1 -c"$NEWCONN_CONNS" -d"${secs}s" --latency -H "Connection: close" "http://$IP_B:8082/" >"$out" 2>&1 ;;
    h2) inns taskset -c "$CLIENT_CPU" h2load -c"$H2_CLIENTS" -m"$H2_STREAMS" -D"$secs" --log-file="$out.log" "http://$IP_B:8081/" >"$out" 2>&1 ;;
  esac
}

# tcp_out_segs: TCP segments sent in the namespace so far (every hop of
# the benchmark's traffic, and only it: the namespace's own counters).
tcp_out_segs() {
  inns awk '/^Tcp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "OutSegs") c = i; h = 1 } else print $c }' /proc/net/snmp
}

TCK=$(getconf CLK_TCK)
printf '%-6s %-9s %-8s %10s %9s %9s %7s %12s %12s\n' round pair kind rps p50_us p99_us errors cpu_us_req sys_us_req
RESULTS=$S/results.tsv
: >"$RESULTS"
IFS=, read -r -a kinds <<<"$KINDS"
for r in $(seq 1 "$ROUNDS"); do
  pairs=(ringmesh linkerd)
  [[ -n $BASE_BIN ]] && pairs=(ringmesh base linkerd)
  # Rotate the order between rounds so drift hits every pair alike.
  for ((i = 1; i < r; i++)); do pairs=("${pairs[@]:1}" "${pairs[0]}"); done
  for pair in "${pairs[@]}"; do
    start_pair "$pair"
    for kind in "${kinds[@]}"; do
      ((WARMUP > 0)) && load "$kind" "$WARMUP" "$S/warm.out"
      read -r before sys_before < <(cpu_ticks "${PAIR_PIDS[@]}")
      if [[ $STAT == 1 ]]; then
        perf stat -x, -e raw_syscalls:sys_enter,context-switches,page-faults \
          -p "$(IFS=,; echo "${PAIR_PIDS[*]}")" -o "$S/$pair-$kind.stat" &
        stat_pid=$!
        segs_before=$(tcp_out_segs)
      fi
      load "$kind" "$DURATION" "$S/$pair-$kind.out"
      read -r after sys_after < <(cpu_ticks "${PAIR_PIDS[@]}")
      if [[ $STAT == 1 ]]; then
        kill -INT "$stat_pid"
        wait "$stat_pid" 2>/dev/null || true
        segs=$(($(tcp_out_segs) - segs_before))
      fi
      if [[ $kind == h2 ]]; then
        read -r rps p50 p99 errs reqs < <(parse_h2load "$S/$pair-$kind.out" "$S/$pair-$kind.out.log")
      else
        read -r rps p50 p99 errs reqs < <(parse_wrk "$S/$pair-$kind.out")
      fi
      per_req() { awk -v t="$1" -v tck="$TCK" -v n="$reqs" 'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / tck / n : 0) }'; }
      us=$(per_req $((after - before)))
      sys=$(per_req $((sys_after - sys_before)))
      printf '%-6s %-9s %-8s %10.0f %9s %9s %7s %12s %12s\n' "r$r" "$pair" "$kind" "$rps" "$p50" "$p99" "$errs" "$us" "$sys"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$pair" "$kind" "$rps" "$p99" "$errs" "$us" "$sys" >>"$RESULTS"
      if [[ $STAT == 1 ]]; then
        # perf stat -x, lines: value,unit,event,...
        awk -F, -v n="$reqs" -v segs="$segs" -v r="r$r" -v p="$pair" -v k="$kind" '
          $3 ~ /sys_enter/ { sc = $1 } $3 ~ /context-switches/ { cs = $1 } $3 ~ /page-faults/ { pf = $1 }
          END { if (n > 0) printf "%-6s %-9s %-8s per request: syscalls %.2f, context switches %.2f, page faults %.3f, TCP segments (all hops) %.2f\n", r, p, k, sc / n, cs / n, pf / n, segs / n }' \
          "$S/$pair-$kind.stat"
      fi
    done
    stop_pair
  done
done

echo
echo "# medians over $ROUNDS rounds (ratio = ringmesh / linkerd2-proxy)"
# rm_sys/l5d: the ringmesh pair's kernel time alone against linkerd2-proxy's
# whole CPU (the ratio no user-space work can bring ringmesh below).
printf '%-8s %14s %14s %8s %14s %14s %8s %12s %12s %12s\n' kind rm_cpu_us l5d_cpu_us ratio rm_p99_us l5d_p99_us ratio rm_sys_us l5d_sys_us rm_sys/l5d
for kind in "${kinds[@]}"; do
  med() { awk -F'\t' -v p="$1" -v k="$kind" -v c="$2" '$1 == p && $2 == k { print $c }' "$RESULTS" | sort -g | awk '{ a[NR] = $1 } END { print (NR ? a[int((NR + 1) / 2)] : 0) }'; }
  rc=$(med ringmesh 6) lc=$(med linkerd 6) rp=$(med ringmesh 4) lp=$(med linkerd 4) rs=$(med ringmesh 7) ls=$(med linkerd 7)
  awk -v k="$kind" -v rc="$rc" -v lc="$lc" -v rp="$rp" -v lp="$lp" -v rs="$rs" -v ls="$ls" 'BEGIN {
    printf "%-8s %14.1f %14.1f %8.2f %14.0f %14.0f %8.2f %12.1f %12.1f %12.2f\n", k, rc, lc, (lc > 0 ? rc / lc : 0), rp, lp, (lp > 0 ? rp / lp : 0), rs, ls, (lc > 0 ? rs / lc : 0) }'
done
if [[ -n $BASE_BIN ]]; then
  echo
  echo "# A/B: ringmesh ($RINGMESH_BIN) / base ($BASE_BIN), medians over $ROUNDS rounds"
  printf '%-8s %14s %14s %8s %14s %14s %8s\n' kind rm_cpu_us base_cpu_us ratio rm_p99_us base_p99_us ratio
  for kind in "${kinds[@]}"; do
    rc=$(med ringmesh 6) bc=$(med base 6) rp=$(med ringmesh 4) bp=$(med base 4)
    awk -v k="$kind" -v rc="$rc" -v bc="$bc" -v rp="$rp" -v bp="$bp" 'BEGIN {
      printf "%-8s %14.1f %14.1f %8.3f %14.0f %14.0f %8.2f\n", k, rc, bc, (bc > 0 ? rc / bc : 0), rp, bp, (bp > 0 ? rp / bp : 0) }'
  done
fi
