#!/usr/bin/env bash
# tap-cost.sh - what tap costs the data path (issue 17): ringmesh's worker
# CPU per request with no tap, with one tap that matches nothing, and with
# one tap that matches every request, for HTTP/1.1 (wrk) and h2c (h2load)
# through a forward to nginx. The three modes run in a rotating order in
# every round, so drift hits them alike.
#
# Per round and mode: req/s, the worker's CPU µs per request, and the tap's
# events sent and dropped during the round (a "match all" round taps every
# request: its events are sent, or dropped when the tap client falls
# behind - never is a request slowed to wait for it).
#
# Usage: bench/scripts/tap-cost.sh [ROUNDS=3] [DURATION=5] [BIN=target/release/ringmesh] [RATE=N] [CLIENT=sink|curl|ringmesh] [KINDS="h1 h2"]
# CLIENT: the tap client. sink (the default, tap-sink.py) opens the call
# with the largest HTTP/2 windows and only reads and discards, in 1 MiB
# reads: next to no CPU, as a client elsewhere would cost this machine
# nothing. curl reads the call's bytes and throws them away too, but
# parses every frame and sends WINDOW_UPDATEs, taking a few % of the load
# generator's core;
# `ringmesh tap` decodes and prints every event, and on a 2-core machine
# takes CPU from the load generator beside it, so the proxy is driven
# differently in the "all" rounds than in the others (fewer requests per
# wake-up: each costs more).
# RATE: a fixed load of N requests/s (at most ~20000) in every mode (h2load --rps, HTTP/1.1
# with --h1) instead of as many as the proxy can take. Saturated, whatever
# tap costs lowers req/s, and a worker serving fewer requests per wake-up
# spends more per request; at a fixed rate the modes serve the same load,
# so the difference is what tapping does.
# Pinning (2 cores): ringmesh and nginx on cpu1; the load generator and the
# tap client on cpu0.
# PAD=1 (the default) keeps cpu0 busy with a nice-19 loop: the load
# generator and the tap client still get all the CPU they ask for, but
# cpu0 never idles. On a VM, waking a task on an idle CPU costs the waker
# (the proxy) an expensive exit, and how often cpu0 idles differs between
# the modes (the tap client runs in one of them), which measured as a
# cost of tapping that was not the proxy's work. PAD=0 turns it off.
# At the end: per kind and mode, the median process µs/request and the
# median of each round's ratio to the same round's "none".
set -euo pipefail
cd "$(dirname "$0")/../.."
for kv in "$@"; do export "${kv?}"; done
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5} BIN=${BIN:-target/release/ringmesh} CLIENT=${CLIENT:-sink} PAD=${PAD:-1}
KINDS=${KINDS:-h1 h2}
for t in wrk h2load nginx curl taskset bc; do
  command -v "$t" > /dev/null || { echo "tap-cost.sh: $t is missing (scripts/install-test-deps.sh)"; exit 1; }
done
tmp=$(mktemp -d /tmp/rm-tap.XXXXXX)
pids=()
tap_pid=
cleanup() {
  [ -n "$tap_pid" ] && kill "$tap_pid" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

mkdir -p "$tmp/nginx"
cat > "$tmp/nginx/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $tmp/nginx/pid; error_log $tmp/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:18980; location / { return 200 "ok"; } }
  server { listen 127.0.0.1:18982 http2; location / { return 200 "ok"; } }
}
EOF
taskset -c 1 nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
pids+=($!)
if [ "$PAD" = 1 ]; then
  nice -n 19 taskset -c 0 sh -c 'while :; do :; done' &
  pids+=($!)
fi

env -i PATH="$PATH" LINKERD2_PROXY_CORES=1 LINKERD2_PROXY_LOG=warn \
  LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR= LINKERD2_PROXY_INBOUND_LISTEN_ADDR= \
  LINKERD2_PROXY_ADMIN_LISTEN_ADDR=127.0.0.1:18991 \
  LINKERD2_PROXY_CONTROL_LISTEN_ADDR=127.0.0.1:18990 RINGMESH_TAP_ALLOW_LOOPBACK=true \
  RINGMESH_TCP_FORWARD=127.0.0.1:18981=127.0.0.1:18980,127.0.0.1:18983=127.0.0.1:18982 \
  taskset -c 1 "$BIN" > "$tmp/ringmesh.log" 2>&1 &
rm_pid=$!
pids+=($rm_pid)
for _ in $(seq 100); do curl -sf http://127.0.0.1:18991/ready > /dev/null && break; sleep 0.1; done

# Thread names are cut to 15 bytes: ringmesh-worke(r).
wrk0=$(for t in /proc/$rm_pid/task/*; do grep -q '^ringmesh-worke' "$t/comm" && basename "$t"; done | head -1)
ticks() { awk '{print $14 + $15}' "/proc/$rm_pid/task/$wrk0/stat"; }
# The whole process (the control core writes the tap's events).
pticks() { awk '{print $14 + $15}' "/proc/$rm_pid/stat"; }
hz=$(getconf CLK_TCK)
# nginx's worker: it serves every request the same way in every mode, on
# the proxy's core, so its CPU per request is a gauge of how much the
# machine itself moved between rounds and modes (tap changes nothing in
# nginx's work).
ngx_master=$(cat "$tmp/nginx/pid" 2>/dev/null || true)
for _ in $(seq 50); do [ -n "$ngx_master" ] && break; sleep 0.1; ngx_master=$(cat "$tmp/nginx/pid" 2>/dev/null || true); done
ngx=$(pgrep -P "$ngx_master" | head -1)
nticks() { awk '{print $14 + $15}' "/proc/$ngx/stat"; }
metric() { curl -s http://127.0.0.1:18991/metrics | awk -v m="$1" '$1==m{print $2}'; }
installed() { metric tap_installed; }

# The Observe requests curl sends (gRPC frames of an ObserveRequest with
# limit 10,000,000): every destination port 1-65535, or the exact path
# /never-matches.
observe_all='\x00\x00\x00\x00\x11\x08\x80\xad\xe2\x04\x12\x0a\x2a\x08\x1a\x06\x08\x01\x10\xff\xff\x03'
observe_nomatch='\x00\x00\x00\x00\x1b\x08\x80\xad\xe2\x04\x12\x14\x32\x12\x22\x10\x0a\x0e\x2f\x6e\x65\x76\x65\x72\x2d\x6d\x61\x74\x63\x68\x65\x73'
printf "$observe_all" > "$tmp/observe-all"
printf "$observe_nomatch" > "$tmp/observe-nomatch"

start_tap() {
  case $1 in
    none) return ;;
    nomatch) args=(--path /never-matches) ;;
    all) args=() ;;
  esac
  if [ "$CLIENT" = sink ]; then
    taskset -c 0 python3 bench/scripts/tap-sink.py 127.0.0.1:18990 "$tmp/observe-$1" &
  elif [ "$CLIENT" = curl ]; then
    taskset -c 0 curl -s --http2-prior-knowledge -X POST -H 'content-type: application/grpc' \
      -H 'te: trailers' --data-binary "@$tmp/observe-$1" -o /dev/null \
      http://127.0.0.1:18990/io.linkerd.proxy.tap.Tap/Observe &
  else
    taskset -c 0 "$BIN" tap --addr 127.0.0.1:18990 "${args[@]}" > /dev/null 2>&1 &
  fi
  tap_pid=$!
  for _ in $(seq 50); do [ "$(installed)" = 1 ] && return; sleep 0.1; done
  echo "the tap did not install"; exit 1
}
stop_tap() {
  [ -n "$tap_pid" ] || return 0
  kill "$tap_pid" 2>/dev/null || true
  wait "$tap_pid" 2>/dev/null || true
  tap_pid=
  for _ in $(seq 50); do [ "$(installed)" = 0 ] && return; sleep 0.1; done
}

load() {
  if [ -n "${RATE:-}" ]; then
    # (h2load paces an HTTP/1.1 client at most ~330 requests/s: more
    # clients for it.)
    local c=16 port=18983 h1=()
    [ "$1" = h1 ] && { c=64; port=18981; h1=(--h1); }
    taskset -c 0 h2load "${h1[@]}" -t1 -c"$c" -m1 --rps=$(( RATE / c )) -D "$DURATION" "http://127.0.0.1:$port/" 2>&1 |
      awk '/^finished in/{gsub(",",""); print $4}'
    return
  fi
  case $1 in
    h1) taskset -c 0 wrk -t1 -c16 -d"${DURATION}s" http://127.0.0.1:18981/ 2>&1 | awk '/Requests\/sec/{print $2}' ;;
    h2) taskset -c 0 h2load -t1 -c16 -m10 -D "$DURATION" http://127.0.0.1:18983/ 2>&1 | awk '/^finished in/{gsub(",",""); print $4}' ;;
  esac
}

# Warm-up.
taskset -c 0 wrk -t1 -c16 -d2s http://127.0.0.1:18981/ > /dev/null 2>&1
printf '%-6s %-5s %-8s %10s %14s %15s %12s %12s %13s\n' round kind mode req/s worker_us/req process_us/req events_sent events_dropped nginx_us/req
orders=("none nomatch all" "nomatch all none" "all none nomatch")
for r in $(seq 1 "$ROUNDS"); do
  for kind in $KINDS; do
    for mode in ${orders[$(( (r - 1) % 3 ))]}; do
      start_tap "$mode"
      s0=$(metric tap_events_total); w0=$(ticks); p0=$(pticks); n0=$(nticks)
      rps=$(load "$kind")
      w1=$(ticks); p1=$(pticks); n1=$(nticks); s1=$(metric tap_events_total)
      d0=$(metric tap_events_dropped_total)
      stop_tap
      d1=$(metric tap_events_dropped_total)
      printf '%-6s %-5s %-8s %10.0f %14.2f %15.2f %12s %12s %13.2f\n' "$r" "$kind" "$mode" "$rps" \
        "$(echo "($w1 - $w0) * 1000000 / $hz / ($rps * $DURATION)" | bc -l)" \
        "$(echo "($p1 - $p0) * 1000000 / $hz / ($rps * $DURATION)" | bc -l)" \
        "$((s1 - s0))" "$((d1 - d0))" \
        "$(echo "($n1 - $n0) * 1000000 / $hz / ($rps * $DURATION)" | bc -l)" | tee -a "$tmp/rows"
    done
  done
done

# Medians: process µs/request, each round's ratio to its "none", and the
# same ratio for nginx (its work does not change with tap: what it moves is
# the machine, or tap's cost to the core it shares, e.g. softirqs).
echo
printf '%-5s %-8s %22s %26s %18s\n' kind mode median_process_us/req median_ratio_to_none nginx_ratio
awk '
  { us[$1" "$2" "$3] = $6; ng[$1" "$2" "$3] = $9; kinds[$2] = 1; rounds[$1] = 1 }
  function median(a, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    split("h1 h2", ks, " "); split("none nomatch all", ms, " ")
    for (k = 1; k <= 2; k++) for (m = 1; m <= 3; m++) {
      n = 0; split("", v); split("", q); split("", g)
      for (r in rounds) {
        key = r" "ks[k]" "ms[m]; base = r" "ks[k]" none"
        if (key in us && base in us && us[base] > 0 && ng[base] > 0) {
          n++; v[n] = us[key]; q[n] = us[key] / us[base]; g[n] = ng[key] / ng[base]
        }
      }
      if (n) { printf "%-5s %-8s %22.2f %26.3f %18.3f\n", ks[k], ms[m], median(v, n), median(q, n), median(g, n) }
    }
  }' "$tmp/rows"
