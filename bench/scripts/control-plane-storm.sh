#!/usr/bin/env bash
# control-plane-storm.sh - what the control plane costs (issue 16): ringmesh
# follows 1000 services x 10 endpoints through Destination.Get/GetProfile
# from the fake control plane, while wrk drives HTTP/1.1 through a forward
# to an nginx backend. Rounds alternate "quiet" (the control plane idle)
# and "storm" (10 services' endpoint sets change every 100 ms: 100
# updates/s) in one run, so drift hits both alike.
#
# Per round: wrk req/s and p99, the worker's CPU µs per request, the
# control core's CPU (ms per second of the round), the process RSS.
#
# Usage: bench/scripts/control-plane-storm.sh [ROUNDS=6] [DURATION=6] [BIN=target/release/ringmesh]
# Pinning (2 cores): ringmesh and nginx on cpu1; wrk and the fake control
# plane (python, nice 19, so the client is not starved by it) on cpu0.
set -euo pipefail
cd "$(dirname "$0")/../.."
for kv in "$@"; do export "${kv?}"; done
ROUNDS=${ROUNDS:-6} DURATION=${DURATION:-6} BIN=${BIN:-target/release/ringmesh}
SERVICES=${SERVICES:-1000} ENDPOINTS=${ENDPOINTS:-10}
tmp=$(mktemp -d /tmp/rm-storm.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

python3 - "$tmp/cp.json" "$SERVICES" "$ENDPOINTS" 0 <<'EOF'
import json, sys
path, n, k, tick = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dsts = {}
for i in range(n):
    # Closed ports on loopback aliases: never connected to here.
    eps = [{"addr": "127.0.%d.%d" % (1 + i // 250, 1 + (i % 250)), "port": 10000 + j} for j in range(k)]
    dsts["svc-%d.default.svc.cluster.local:80" % i] = {"service": "svc-%d" % i, "endpoints": eps}
json.dump({"destinations": dsts}, open(path, "w"))
EOF

# The fake control plane.
nice -n 19 taskset -c 0 /usr/bin/python3 engine/tests/mesh/fake_cp.py --listen 127.0.0.1:0 --config "$tmp/cp.json" > "$tmp/cp.log" 2>&1 &
cp_pid=$!
pids+=($cp_pid)
for _ in $(seq 100); do grep -q '^ready ' "$tmp/cp.log" && break; sleep 0.2; done
cp_addr=$(sed -n 's/^ready //p' "$tmp/cp.log")
[ -n "$cp_addr" ] || { echo "fake_cp did not start"; cat "$tmp/cp.log"; exit 1; }

# The backend.
mkdir -p "$tmp/nginx"
cat > "$tmp/nginx/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $tmp/nginx/pid; error_log $tmp/nginx/error.log;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:18980; location / { return 200 "ok"; } } }
EOF
taskset -c 1 nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
pids+=($!)

env -i PATH="$PATH" LINKERD2_PROXY_CORES=1 LINKERD2_PROXY_LOG=warn \
  LINKERD2_PROXY_DESTINATION_SVC_ADDR="$cp_addr" \
  LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR=127.0.0.1:18940 LINKERD2_PROXY_INBOUND_LISTEN_ADDR= \
  LINKERD2_PROXY_ADMIN_LISTEN_ADDR=127.0.0.1:18991 \
  RINGMESH_TCP_FORWARD=127.0.0.1:18981=127.0.0.1:18980 \
  taskset -c 1 "$BIN" > "$tmp/ringmesh.log" 2>&1 &
rm_pid=$!
pids+=($rm_pid)
for _ in $(seq 100); do curl -sf http://127.0.0.1:18991/ready > /dev/null && break; sleep 0.1; done

# Every service watched: one request each through the explicit proxy
# (answered 502: nothing listens on the endpoints).
echo "watching $SERVICES services ..."
seq 0 $((SERVICES - 1)) | xargs -P 16 -I{} curl -s -o /dev/null -m 5 -x http://127.0.0.1:18940 http://svc-{}.default.svc.cluster.local/ || true
for _ in $(seq 100); do
  w=$(curl -s http://127.0.0.1:18991/metrics | awk '/^destination_watches /{print $2}')
  [ "${w:-0}" -ge "$SERVICES" ] && break
  sleep 0.2
done
echo "destination_watches ${w:-0}"

# Thread names are cut to 15 bytes: ringmesh-contro, ringmesh-worke(r).
tid_of() { for t in /proc/$rm_pid/task/*; do if grep -q "^$1" "$t/comm"; then basename "$t"; fi; done | head -1; }
ctl=$(tid_of ringmesh-contr)
wrk0=$(tid_of ringmesh-worke)
ticks() { awk '{print $14 + $15}' "/proc/$rm_pid/task/$1/stat"; }
cp_ticks() { awk '{print $14 + $15}' "/proc/$cp_pid/stat"; }
hz=$(getconf CLK_TCK)

# The storm's configs, made once (the storm itself only renames files):
# config t changes 10 services' endpoints from config t-1.
python3 - "$tmp" "$SERVICES" "$ENDPOINTS" <<'EOF2'
import json, sys
d, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for tick in range(1, 41):
    dsts = {}
    changed = {(tick * 10 + j) % n for j in range(10)}
    for i in range(n):
        shift = tick if i in changed else 0
        eps = [{"addr": "127.0.%d.%d" % (1 + i // 250, 1 + (i % 250)), "port": 10000 + ((j + shift) % (k + 5))} for j in range(k)]
        dsts["svc-%d.default.svc.cluster.local:80" % i] = {"service": "svc-%d" % i, "endpoints": eps}
    json.dump({"destinations": dsts}, open("%s/storm-%d.json" % (d, tick), "w"))
EOF2

storm() {
  local tick=0
  while :; do
    tick=$((tick % 40 + 1))
    cp "$tmp/storm-$tick.json" "$tmp/cp.json.tmp"
    mv "$tmp/cp.json.tmp" "$tmp/cp.json"
    sleep 0.1
  done
}

# The control for the storm: the same config rewritten unchanged at the
# same rate. The fake control plane reloads and recomputes every stream's
# answer (the same CPU on the client's core as in a storm) but sends
# nothing, so storm minus decoy is what ringmesh's updates cost.
decoy() {
  while :; do
    cp "$tmp/storm-40.json" "$tmp/cp.json.tmp"
    mv "$tmp/cp.json.tmp" "$tmp/cp.json"
    sleep 0.1
  done
}

printf '%-6s %-6s %10s %9s %12s %14s %9s %8s %12s\n' round mode req/s p99_ms worker_us/req control_ms/s rss_MiB updates fake_cp_ms/s
# Settle on the decoy's config first (storm-40), so a decoy sends nothing.
cp "$tmp/storm-40.json" "$tmp/cp.json.tmp"; mv "$tmp/cp.json.tmp" "$tmp/cp.json"; sleep 3
orders=("quiet decoy storm" "storm quiet decoy" "decoy storm quiet")
for r in $(seq 1 "$ROUNDS"); do
  for mode in ${orders[$(( (r - 1) % 3 ))]}; do
    spid=
    if [ "$mode" != quiet ]; then
      taskset -c 0 bash -c "$(declare -f "$mode"); tmp=$tmp; $mode" & spid=$!
      sleep 0.5
    fi
    u0=$(curl -s http://127.0.0.1:18991/metrics | awk '/^destination_updates_total /{print $2}')
    c0=$(ticks "$ctl"); w0=$(ticks "$wrk0"); f0=$(cp_ticks)
    out=$(taskset -c 0 wrk -t1 -c16 -d"${DURATION}s" --latency http://127.0.0.1:18981/ 2>&1)
    c1=$(ticks "$ctl"); w1=$(ticks "$wrk0"); f1=$(cp_ticks)
    u1=$(curl -s http://127.0.0.1:18991/metrics | awk '/^destination_updates_total /{print $2}')
    # The storm stops; what the control plane still owes is sent before
    # the next round.
    if [ -n "$spid" ]; then
      kill "$spid"; wait "$spid" 2>/dev/null || true
      # What the control plane still owes is sent before the next mode,
      # and the storm's last config replaced by the decoy's.
      cp "$tmp/storm-40.json" "$tmp/cp.json.tmp"; mv "$tmp/cp.json.tmp" "$tmp/cp.json"; sleep 3
    fi
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    p99=$(echo "$out" | awk '$1=="99%"{v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}')
    rss=$(awk '/VmRSS/{printf "%.1f", $2/1024}' "/proc/$rm_pid/status")
    printf '%-6s %-6s %10s %9s %12.2f %14.1f %9s %8s %12.0f\n' "$r" "$mode" "$rps" "$p99" \
      "$(echo "($w1 - $w0) * 1000000 / $hz / ($rps * $DURATION)" | bc -l)" \
      "$(echo "($c1 - $c0) * 1000 / $hz / $DURATION" | bc -l)" "$rss" "$((u1 - u0))" \
      "$(echo "($f1 - $f0) * 1000 / $hz / $DURATION" | bc -l)"
  done
done
