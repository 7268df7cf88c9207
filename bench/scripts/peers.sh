#!/usr/bin/env bash
# peers.sh - ringmesh against HAProxy and nginx as HTTP proxies, same backend,
# same pinning, same run, on 127.0.0.1: HTTP/1.1 with wrk, HTTP/2 (h2c prior
# knowledge) with h2load, plus ringmesh-only runs that show per-core scaling
# (1 worker vs 2) and what a Prometheus scrape every SCRAPE_MS costs under load.
#
# What runs
#   backend   nginx, 1 worker, on BACKEND_CPUS: BODY_BYTES static body over
#             HTTP/1.1 and over h2c.
#   ringmesh  WORKERS workers on PROXY_CPUS; explicit forwards
#             (RINGMESH_TCP_FORWARD) to the backend. HTTP/1 and HTTP/2 are
#             detected and proxied per request/stream (layer 7, pooled upstream
#             connections, metrics recorded); h2 goes to the h2c backend (h2 to
#             h2, as HAProxy's row).
#   haproxy   nbthread 1 on PROXY_CPUS, mode http, keep-alive + http-reuse safe;
#             h2 frontend to the h2c backend (h2 to h2).
#   nginx     1 worker on PROXY_CPUS, proxy_pass with upstream keepalive; its h2
#             listener proxies to the HTTP/1.1 backend (nginx cannot proxy h2).
#   load      wrk -t1 -cCONNS (HTTP/1.1), h2load -t1 -cH2_CLIENTS -mH2_STREAMS
#             (HTTP/2), on LOAD_CPUS.
#   SCALING=1 adds "ringmesh-2w": a second ringmesh with 2 workers on cpus 0,1
#             (so it shares cpu0 with the load generator: on a 2-core machine
#             this shows how the per-core design uses a second core, not a clean
#             2x; read req/s and cpu us/req together).
#   SCRAPE=1  adds "ringmesh+scrape": the same ringmesh while a loop fetches
#             /metrics every SCRAPE_MS (curl, on LOAD_CPUS). After the rounds,
#             SCRAPE_SERIES extra label sets are created (explicit-proxy requests
#             to distinct refused addresses: each is a 502 series) and SCRAPES
#             scrapes are timed: ringmesh CPU per scrape and wall time, with the
#             number of series reported.
#
# Method
#   Cases are interleaved within each of ROUNDS rounds so that machine drift hits
#   every candidate alike; each case gets WARMUP unmeasured seconds, then
#   DURATION measured seconds. Before each case the script waits (up to
#   WAIT_IDLE s) for a quiet machine, and measures again (RETRIES times at most)
#   when other processes took more than OTHER_MAX% of a core during the window.
#   Proxy CPU = utime+stime of the proxy's processes (all threads; nginx master +
#   worker) from /proc over the window. "vs best peer" = ringmesh's cpu us/req
#   divided by the lower of HAProxy's and nginx's in the same round (median over
#   rounds; < 1.00 = ringmesh cheaper). Every load run is bounded (timeout);
#   every process started here is stopped on exit.
#
# Usage: bench/scripts/peers.sh [-h] [KEY=value ...]   (or the same as env vars)
#   DURATION=10 ROUNDS=3 WARMUP=1 CONNS=50 H2_CLIENTS=4 H2_STREAMS=16
#   BODY_BYTES=64   PROXY_CPUS=1  LOAD_CPUS=0  BACKEND_CPUS= (default LOAD_CPUS)
#   WORKERS=1       ringmesh LINKERD2_PROXY_CORES for the main candidate
#   IO_DRIVER=auto  RINGMESH_IO_DRIVER
#   H1=1 H2=1 SCALING=1 SCRAPE=1   which parts run
#   SCRAPE_MS=100 SCRAPE_SERIES=1000 SCRAPES=200
#   QUICK=1         smoke run: DURATION=2 ROUNDS=1 WARMUP=0 SCRAPE_SERIES=100 SCRAPES=20
#   CSV=target/bench/peers.csv (relative to the workspace root)
#   RINGMESH_BIN=   default target/release/ringmesh (built if missing)
#   KEEP=0 WAIT_IDLE=120 OTHER_MAX=5 RETRIES=3
#   BASE_PORT=18180 ports BASE_PORT .. BASE_PORT+12 on 127.0.0.1 must be free
#
# Needs wrk, h2load, haproxy, nginx, curl, taskset; missing Debian packages are
# installed with apt-get when run as root.
set -euo pipefail

ME=peers.sh
SETTINGS='DURATION|ROUNDS|WARMUP|CONNS|H2_CLIENTS|H2_STREAMS|BODY_BYTES|PROXY_CPUS|LOAD_CPUS|BACKEND_CPUS|WORKERS|IO_DRIVER|H1|H2|SCALING|SCRAPE|SCRAPE_MS|SCRAPE_SERIES|SCRAPES|QUICK|CSV|RINGMESH_BIN|KEEP|WAIT_IDLE|OTHER_MAX|RETRIES|BASE_PORT'
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/scripts/lib.sh
source "$ROOT/bench/scripts/lib.sh"
parse_settings "$@"

if [[ ${QUICK:-0} == 1 ]]; then
  DURATION=${DURATION:-2}; ROUNDS=${ROUNDS:-1}; WARMUP=${WARMUP:-0}
  SCRAPE_SERIES=${SCRAPE_SERIES:-100}; SCRAPES=${SCRAPES:-20}
fi
DURATION=${DURATION:-10}; ROUNDS=${ROUNDS:-3}; WARMUP=${WARMUP:-1}
CONNS=${CONNS:-50}; H2_CLIENTS=${H2_CLIENTS:-4}; H2_STREAMS=${H2_STREAMS:-16}
BODY_BYTES=${BODY_BYTES:-64}
PROXY_CPUS=${PROXY_CPUS:-1}; LOAD_CPUS=${LOAD_CPUS:-0}; BACKEND_CPUS=${BACKEND_CPUS:-$LOAD_CPUS}
WORKERS=${WORKERS:-1}; IO_DRIVER=${IO_DRIVER:-auto}
H1=${H1:-1}; H2=${H2:-1}; SCALING=${SCALING:-1}; SCRAPE=${SCRAPE:-1}
SCRAPE_MS=${SCRAPE_MS:-100}; SCRAPE_SERIES=${SCRAPE_SERIES:-1000}; SCRAPES=${SCRAPES:-200}
KEEP=${KEEP:-0}; WAIT_IDLE=${WAIT_IDLE:-120}; OTHER_MAX=${OTHER_MAX:-5}; RETRIES=${RETRIES:-3}
BASE_PORT=${BASE_PORT:-18180}
for v in DURATION ROUNDS WARMUP CONNS H2_CLIENTS H2_STREAMS BODY_BYTES WORKERS H1 H2 SCALING SCRAPE \
         SCRAPE_MS SCRAPE_SERIES SCRAPES WAIT_IDLE OTHER_MAX RETRIES BASE_PORT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$ME: $v=${!v} is not a non-negative integer" >&2; exit 2; }
done
((DURATION > 0 && ROUNDS > 0 && CONNS > 0 && BODY_BYTES > 0 && SCRAPE_MS > 0 && SCRAPES > 0)) \
  || { echo "$ME: DURATION, ROUNDS, CONNS, BODY_BYTES, SCRAPE_MS and SCRAPES must be > 0" >&2; exit 2; }
[[ $IO_DRIVER =~ ^(auto|uring|epoll)$ ]] || { echo "$ME: IO_DRIVER must be auto, uring or epoll" >&2; exit 2; }

CSV=${CSV:-target/bench/peers.csv}
[[ $CSV == /* ]] || CSV=$ROOT/$CSV
need_tools wrk h2load haproxy nginx curl taskset timeout awk python3
ringmesh_bin

P_BE=$BASE_PORT;              P_BE_H2=$((BASE_PORT + 1))
P_RM=$((BASE_PORT + 2));      P_RM_H2=$((BASE_PORT + 3))
P_RM_OUT=$((BASE_PORT + 4));  P_RM_ADMIN=$((BASE_PORT + 5))
P_HAP=$((BASE_PORT + 6));     P_HAP_H2=$((BASE_PORT + 7))
P_NGX=$((BASE_PORT + 8));     P_NGX_H2=$((BASE_PORT + 9))
P_RM2=$((BASE_PORT + 10));    P_RM2_ADMIN=$((BASE_PORT + 11))
ports_free $(seq "$BASE_PORT" $((BASE_PORT + 11)))
scratch_dir

# ---------------------------------------------------------------- configs
BODY=$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')
nginx_conf backend "
  server { listen 127.0.0.1:$P_BE backlog=4096; location / { default_type text/plain; return 200 \"$BODY\"; } }
  server { listen 127.0.0.1:$P_BE_H2 http2 backlog=4096; location / { default_type text/plain; return 200 \"$BODY\"; } }" >"$S/backend.conf"
nginx_conf nginxproxy "
  upstream be { server 127.0.0.1:$P_BE; keepalive 128; keepalive_requests 100000000; }
  server { listen 127.0.0.1:$P_NGX backlog=4096;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }
  server { listen 127.0.0.1:$P_NGX_H2 http2 backlog=4096;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" >"$S/nginxproxy.conf"
cat >"$S/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  option http-keep-alive
  http-reuse safe
frontend fe_h1
  bind 127.0.0.1:$P_HAP
  default_backend be_h1
frontend fe_h2
  bind 127.0.0.1:$P_HAP_H2 proto h2
  default_backend be_h2
backend be_h1
  server s1 127.0.0.1:$P_BE
backend be_h2
  server s1 127.0.0.1:$P_BE_H2 proto h2
EOF
for c in backend nginxproxy; do nginx -t -q -p "$S" -e "$S/nginx-t.err" -c "$S/$c.conf" -g 'daemon off;'; done
haproxy -c -q -f "$S/haproxy.cfg"

# ---------------------------------------------------------------- start
kids() {  # pid -> the pid and its children (nginx master + worker)
  local f="/proc/$1/task/$1/children" k="" i
  for i in $(seq 1 100); do [[ -r $f ]] && k=$(<"$f"); [[ -n $k ]] && break; sleep 0.05; done
  [[ -n $k ]] || echo "$ME: warning: no worker found for pid $1; its CPU covers the master only" >&2
  echo "$1 $k"
}
start_bg "$BACKEND_CPUS" backend nginx -p "$S" -e "$S/backend.err" -c "$S/backend.conf" -g 'daemon off;'
BE_PID=$LASTPID
start_bg "$PROXY_CPUS" haproxy haproxy -db -f "$S/haproxy.cfg"
HAP_PID=$LASTPID
start_bg "$PROXY_CPUS" nginxproxy nginx -p "$S" -e "$S/nginxproxy.err" -c "$S/nginxproxy.conf" -g 'daemon off;'
NGX_PID=$LASTPID
start_ringmesh() {  # name cpus workers admin-port forwards [outbound listen]
  start_bg "$2" "$1" env \
    RINGMESH_TCP_FORWARD="$5" \
    LINKERD2_PROXY_CORES="$3" \
    RINGMESH_IO_DRIVER="$IO_DRIVER" \
    LINKERD2_PROXY_LOG="warn,ringmesh=info" \
    LINKERD2_PROXY_ADMIN_LISTEN_ADDR="127.0.0.1:$4" \
    LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR="${6:-}" \
    LINKERD2_PROXY_INBOUND_LISTEN_ADDR="" \
    LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD="5s" \
    "$S/ringmesh"
}
start_ringmesh ringmesh "$PROXY_CPUS" "$WORKERS" "$P_RM_ADMIN" \
  "127.0.0.1:$P_RM=127.0.0.1:$P_BE,127.0.0.1:$P_RM_H2=127.0.0.1:$P_BE_H2" "127.0.0.1:$P_RM_OUT"
RM_PID=$LASTPID   # env execs, so this is ringmesh itself
RM2_PID=""
if [[ $SCALING == 1 && $H1 == 1 ]]; then
  start_ringmesh ringmesh-2w 0,1 2 "$P_RM2_ADMIN" "127.0.0.1:$P_RM2=127.0.0.1:$P_BE"
  RM2_PID=$LASTPID
fi
wait_listen "$BE_PID" backend "$P_BE" "$P_BE_H2"
wait_listen "$HAP_PID" haproxy "$P_HAP" "$P_HAP_H2"
wait_listen "$NGX_PID" nginxproxy "$P_NGX" "$P_NGX_H2"
wait_listen "$RM_PID" ringmesh "$P_RM" "$P_RM_H2" "$P_RM_OUT" "$P_RM_ADMIN"
[[ -n $RM2_PID ]] && wait_listen "$RM2_PID" ringmesh-2w "$P_RM2" "$P_RM2_ADMIN"
BE_PIDS=$(kids "$BE_PID")
NGX_PIDS=$(kids "$NGX_PID")
RM_DRIVER=$(sed -n 's/.*driver=\([a-z_]*\).*/\1/p' "$S/ringmesh.log" | head -n1)
RM_DRIVER=${RM_DRIVER:-unknown}

# Every path answers 200 with the body before anything is measured.
check_h1() {  # port name
  local r
  r=$(curl -sS --max-time 5 -D - "http://127.0.0.1:$1/" 2>&1) || true
  [[ $r == "HTTP/1.1 200"* && $r == *"$BODY" ]] || die "bad HTTP/1.1 response via $2 (127.0.0.1:$1): ${r:0:300}"
}
check_h2() {  # port name
  timeout 10 h2load -n1 -c1 "http://127.0.0.1:$1/" >"$S/check.out" 2>&1 || true
  grep -q 'status codes: 1 2xx' "$S/check.out" || die "h2c check failed via $2 (127.0.0.1:$1): $(tail -n 5 "$S/check.out")"
}
check_h1 "$P_BE" direct; check_h1 "$P_RM" ringmesh; check_h1 "$P_HAP" haproxy; check_h1 "$P_NGX" nginx
[[ -n $RM2_PID ]] && check_h1 "$P_RM2" ringmesh-2w
if [[ $H2 == 1 ]]; then
  check_h2 "$P_BE_H2" direct; check_h2 "$P_RM_H2" ringmesh; check_h2 "$P_HAP_H2" haproxy; check_h2 "$P_NGX_H2" nginx
fi

# ---------------------------------------------------------------- cases
ticks_all() {  # pids... -> utime+stime summed
  local p t=0
  for p in "$@"; do t=$((t + $(ticks "$p"))); done
  echo "$t"
}
SCRAPER=""
start_scraper() {  # admin port seconds -> background loop, count in $S/scrapes
  local port=$1 secs=$2
  : >"$S/scrapes"
  # One long-lived python process, not a curl per scrape: forking on the load
  # generator's core would slow the load and blame the proxy.
  taskset -c "$LOAD_CPUS" python3 -c '
import sys, time, urllib.request
port, secs, ms, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
end = time.monotonic() + secs
with open(out, "a") as log:
    while time.monotonic() < end:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            r.read()
        log.write("1\n")
        time.sleep(ms / 1000)
' "$port" "$secs" "$SCRAPE_MS" "$S/scrapes" >"$S/scraper.log" 2>&1 &
  SCRAPER=$!
}

RAW=$S/rows.csv
: >"$RAW"
# case round proto candidate port pids [scrape-admin-port]
run_case() {
  local round=$1 proto=$2 cand=$3 port=$4 pids=$5 scrape=${6:-}
  local url="http://127.0.0.1:$port/" out="$S/$proto.$cand.r$round.out" log="$S/$proto.$cand.r$round.h2log"
  local attempt t0=0 t1=0 s0 s1 f0 f1 other load
  if [[ $proto == h1 ]]; then
    load=(taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" --latency)
  else
    load=(taskset -c "$LOAD_CPUS" h2load -t1 -c"$H2_CLIENTS" -m"$H2_STREAMS")
  fi
  for attempt in $(seq 1 $((RETRIES + 1))); do
    idle_gate
    if ((WARMUP > 0)); then
      if [[ $proto == h1 ]]; then
        run_bounded $((WARMUP + 15)) "$S/warmup.out" "${load[@]}" -d"${WARMUP}s" "$url" || die "warm-up against $cand failed: $(tail -n 5 "$S/warmup.out")"
      else
        run_bounded $((WARMUP + 15)) "$S/warmup.out" "${load[@]}" -D "$WARMUP" "$url" || die "warm-up against $cand failed: $(tail -n 5 "$S/warmup.out")"
      fi
    fi
    [[ -n $scrape ]] && start_scraper "$scrape" "$DURATION"
    [[ -n $pids ]] && t0=$(ticks_all $pids)
    f0=$(other_ticks); s0=$(now_ns)
    if [[ $proto == h1 ]]; then
      run_bounded $((DURATION + 15)) "$out" "${load[@]}" -d"${DURATION}s" "$url" || die "wrk against $cand failed: $(tail -n 5 "$out")"
    else
      rm -f "$log"
      run_bounded $((DURATION + 15)) "$out" "${load[@]}" -D "$DURATION" --log-file="$log" "$url" || die "h2load against $cand failed: $(tail -n 5 "$out")"
    fi
    s1=$(now_ns); f1=$(other_ticks)
    [[ -n $pids ]] && t1=$(ticks_all $pids)
    if [[ -n $scrape ]]; then wait "$SCRAPER" || true; SCRAPER=""; fi
    local p
    for p in $pids; do alive_or_die "$p" "$cand"; done
    other=$(other_pct "$f0" "$f1" "$s0" "$s1")
    # The scraper is this script's child: not counted in "other".
    ((other <= OTHER_MAX)) && break
    ((attempt <= RETRIES)) && echo "#   round $round $proto $cand: other processes took ${other}% of a core meanwhile; measuring again" >&2
  done
  local rps p50 p99 errs reqs scrapes=""
  if [[ $proto == h1 ]]; then
    read -r rps p50 p99 errs reqs < <(parse_wrk "$out")
  else
    read -r rps p50 p99 errs reqs < <(parse_h2load "$out" "$log")
    rm -f "$log"
  fi
  [[ -n $scrape ]] && scrapes=$(wc -l <"$S/scrapes")
  awk -v OFS=, -v round="$round" -v proto="$proto" -v cand="$cand" -v rps="$rps" -v p50="$p50" -v p99="$p99" \
      -v errs="$errs" -v reqs="$reqs" -v dt=$((t1 - t0)) -v has_pid="${pids:+1}" -v clk="$CLK" -v s0="$s0" -v s1="$s1" \
      -v other="$other" -v attempt="$attempt" -v scrapes="$scrapes" '
    BEGIN {
      secs = (s1 - s0) / 1e9
      cpu = has_pid ? sprintf("%.1f", 100 * dt / clk / secs) : ""
      per = (has_pid && reqs > 0) ? sprintf("%.2f", 1e6 * dt / clk / reqs) : ""
      print proto, round, cand, sprintf("%.3f", secs), reqs, sprintf("%.0f", rps), p50, p99, errs, cpu, per, "", scrapes, other, attempt
    }' | tee -a "$RAW" | awk -F, '{ printf "#   round %s %s %-16s %9.0f req/s  p50 %6s us  p99 %6s us  errs %s  proxy %5s%% cpu  %6s us/req%s\n",
      $2, $1, $3, $6, $7, $8, $9, ($10 == "" ? "-" : $10), ($11 == "" ? "-" : $11), ($13 == "" ? "" : "  scrapes " $13) }' >&2
}

# ---------------------------------------------------------------- run
BG=$(busy_probe 1)
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -qv '^??' && echo "+dirty" || true)
echo "# peers.sh: $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -r); ringmesh $rev$dirty (sha256 $BIN_SUM, built $BIN_DATE)"
echo "# ringmesh: $WORKERS worker(s) on cpu $PROXY_CPUS, driver $RM_DRIVER; peers: haproxy $(haproxy -v | awk 'NR==1{print $3}') nbthread 1, nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') 1 worker, both on cpu $PROXY_CPUS"
echo "# backend nginx cpu $BACKEND_CPUS; load cpu $LOAD_CPUS: wrk -t1 -c$CONNS, h2load -t1 -c$H2_CLIENTS -m$H2_STREAMS; ${BODY_BYTES}-byte bodies; ${DURATION}s measured (+${WARMUP}s warm-up) x $ROUNDS interleaved rounds"
echo "# machine busy before start: ${BG}% of all CPUs"
for r in $(seq 1 "$ROUNDS"); do
  echo "# round $r/$ROUNDS" >&2
  if [[ $H1 == 1 ]]; then
    run_case "$r" h1 direct "$P_BE" ""
    run_case "$r" h1 ringmesh "$P_RM" "$RM_PID"
    run_case "$r" h1 haproxy "$P_HAP" "$HAP_PID"
    run_case "$r" h1 nginx "$P_NGX" "$NGX_PIDS"
    [[ $SCRAPE == 1 ]] && run_case "$r" h1 ringmesh+scrape "$P_RM" "$RM_PID" "$P_RM_ADMIN"
    [[ -n $RM2_PID ]] && run_case "$r" h1 ringmesh-2w "$P_RM2" "$RM2_PID"
  fi
  if [[ $H2 == 1 ]]; then
    run_case "$r" h2 direct "$P_BE_H2" ""
    run_case "$r" h2 ringmesh "$P_RM_H2" "$RM_PID"
    run_case "$r" h2 haproxy "$P_HAP_H2" "$HAP_PID"
    run_case "$r" h2 nginx "$P_NGX_H2" "$NGX_PIDS"
  fi
done

# Counted before the scrape-cost step, whose refused requests are logged on purpose.
RM_WARN=$(warnings "$S/ringmesh.log")

# The cost of one scrape with many series: SCRAPE_SERIES extra label sets
# (explicit-proxy requests to distinct refused addresses on 127.0.0.3), then
# SCRAPES scrapes back to back with no other load.
scrape_line=""
if [[ $SCRAPE == 1 ]]; then
  for i in $(seq 1 "$SCRAPE_SERIES"); do
    t="127.0.0.3:$((20000 + i))"
    timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf "GET http://$2/ HTTP/1.1\r\nHost: $2\r\n\r\n" >&3; head -c 12 <&3 >/dev/null' _ "$P_RM_OUT" "$t" || true
  done
  series=$(curl -sS --max-time 10 "http://127.0.0.1:$P_RM_ADMIN/metrics" | grep -vc '^#')
  bytes=$(curl -sS --max-time 10 -o /dev/null -w '%{size_download}' "http://127.0.0.1:$P_RM_ADMIN/metrics")
  idle_gate
  t0=$(ticks "$RM_PID"); s0=$(now_ns)
  for i in $(seq 1 "$SCRAPES"); do curl -sS -o /dev/null --max-time 10 "http://127.0.0.1:$P_RM_ADMIN/metrics"; done
  s1=$(now_ns); t1=$(ticks "$RM_PID")
  scrape_line=$(awk -v n="$SCRAPES" -v dt=$((t1 - t0)) -v clk="$CLK" -v s0="$s0" -v s1="$s1" -v series="$series" -v bytes="$bytes" \
    'BEGIN { printf "one scrape of %d series (%d bytes): %.2f ms ringmesh CPU, %.2f ms wall (curl included), over %d scrapes", series, bytes, 1000 * dt / clk / n, (s1 - s0) / 1e6 / n, n }')
fi

# ringmesh must drain and exit 0 on SIGTERM.
rm_stop() {  # pid -> STOPPED="exit N" or a complaint (no subshell: wait needs our child)
  local pid=$1 i rc=0
  kill -TERM "$pid"
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then STOPPED="still running 10 s after SIGTERM"; return; fi
  wait "$pid" || rc=$?
  STOPPED="exit $rc"
}
rm_stop "$RM_PID"; RM_STOP=$STOPPED
RM2_STOP="-"
if [[ -n $RM2_PID ]]; then rm_stop "$RM2_PID"; RM2_STOP=$STOPPED; fi

# ---------------------------------------------------------------- report
# Pass 1 collects the peers' cpu us/req per round; pass 2 fills in each ringmesh
# row's ratio to the best peer of its round and the scrape runs' req/s relative
# to plain ringmesh in the same round; then medians per (proto, candidate).
summary=$(awk -F, -v OFS=, '
  function sortv(s, a,   k, i, j, t) { k = split(s, a, " ")
    for (i = 2; i <= k; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return k }
  function med(s,   a, k) { if (s == "") return ""; k = sortv(s, a); return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
  function lo(s,   a) { if (s == "") return ""; sortv(s, a); return a[1] }
  function hi(s,   a, k) { if (s == "") return ""; k = sortv(s, a); return a[k] }
  NR == FNR {
    if (($3 == "haproxy" || $3 == "nginx") && $11 != "") { k = $1 SUBSEP $2; if (!(k in best) || $11 + 0 < best[k]) best[k] = $11 + 0 }
    if ($3 == "ringmesh") plain[$1 SUBSEP $2] = $6
    next }
  { k = $1 SUBSEP $3
    if ($3 ~ /^ringmesh/ && $11 != "" && best[$1 SUBSEP $2] > 0) { $12 = sprintf("%.2f", $11 / best[$1 SUBSEP $2]); vs[k] = vs[k] " " $12 }
    if ($3 == "ringmesh+scrape" && plain[$1 SUBSEP $2] > 0) rel[k] = rel[k] " " $6 / plain[$1 SUBSEP $2]
    print > "/dev/stderr"
    if (!(k in seen)) { seen[k] = 1; order[++n] = k; pr[k] = $1; cand[k] = $3 }
    reqs[k] += $5; errs[k] += $9; att[k] += $15; if ($14 + 0 > oth[k]) oth[k] = $14 + 0
    rps[k] = rps[k] " " $6; p50[k] = p50[k] " " $7; p99[k] = p99[k] " " $8
    if ($10 != "") cpu[k] = cpu[k] " " $10
    if ($11 != "") per[k] = per[k] " " $11
    if ($13 != "") scr[k] = scr[k] " " $13 }
  END {
    for (i = 1; i <= n; i++) { k = order[i]
      print pr[k], "median", cand[k], "", reqs[k], med(rps[k]), med(p50[k]), med(p99[k]), errs[k], med(cpu[k]), med(per[k]),
            (vs[k] == "" ? "" : sprintf("%.2f", med(vs[k]))), med(scr[k]), oth[k] + 0, att[k],
            lo(rps[k]), hi(rps[k]), (rel[k] == "" ? "" : sprintf("%.3f", med(rel[k]))) } }' "$RAW" "$RAW" 2>"$S/rows-with-ratios.csv")

mkdir -p "$(dirname "$CSV")"
{
  echo "proto,round,candidate,secs,requests,rps,p50_us,p99_us,errors,proxy_cpu_pct,proxy_us_per_req,us_per_req_vs_best_peer,scrapes,other_cpu_pct,attempts,rps_min,rps_max,rps_vs_plain_ringmesh"
  cat "$S/rows-with-ratios.csv"
  echo "$summary"
} >"$CSV"

table() {  # proto title
  echo
  echo "$2"
  echo "$summary" | awk -F, -v p="$1" '
    BEGIN { printf "%-16s %9s %8s %8s %8s %5s %10s %10s %12s\n", "candidate", "req/s", "spread", "p50 us", "p99 us", "errs", "proxy cpu%", "cpu us/req", "vs best peer" }
    $1 == p { sp = ($6 > 0) ? sprintf("%.1f%%", 100 * ($17 - $16) / $6) : "-"
      printf "%-16s %9.0f %8s %8.0f %8.0f %5d %10s %10s %12s\n", $3, $6, sp, $7, $8, $9,
        ($10 == "" ? "-" : sprintf("%.1f", $10)), ($11 == "" ? "-" : sprintf("%.2f", $11)), ($12 == "" ? "-" : $12) }'
}
[[ $H1 == 1 ]] && table h1 "HTTP/1.1 keep-alive, ${BODY_BYTES}-byte responses, wrk -c$CONNS (medians over $ROUNDS rounds; spread = (max-min)/median req/s)"
[[ $H2 == 1 ]] && table h2 "HTTP/2 h2c, h2load -c$H2_CLIENTS -m$H2_STREAMS (medians over $ROUNDS rounds; haproxy h2 to h2, nginx h2 to HTTP/1.1)"
echo
if [[ $SCRAPE == 1 && $H1 == 1 ]]; then
  echo "$summary" | awk -F, -v ms="$SCRAPE_MS" '$1 == "h1" && $3 == "ringmesh+scrape" {
    printf "# scrape under load: a /metrics scrape every %s ms (%s per window) -> req/s %.1f%% of plain ringmesh in the same rounds (median)\n", ms, $13, 100 * $18 }'
fi
[[ -n $scrape_line ]] && echo "# $scrape_line"
if [[ -n $RM2_PID ]]; then
  echo "$summary" | awk -F, '$1 == "h1" && $3 == "ringmesh" { a = $6; ca = $11 } $1 == "h1" && $3 == "ringmesh-2w" { b = $6; cb = $11 }
    END { if (a > 0 && b > 0) printf "# scaling: ringmesh 2 workers (cpus 0,1) %.0f req/s = %.2fx of 1 worker (cpu %s), %s vs %s cpu us/req\n", b, b / a, "'"$PROXY_CPUS"'", cb, ca }'
fi
echo "# ringmesh SIGTERM -> $RM_STOP (2-worker: $RM2_STOP); warning/error log lines: $RM_WARN"
echo "# CSV: $CSV"
total_errs=$(echo "$summary" | awk -F, '{ s += $9 } END { print s + 0 }')
dirty=$(awk -F, -v max="$OTHER_MAX" '$14 + 0 > max { printf "%s%s %s r%s (%s%%)", (n++ ? ", " : ""), $1, $3, $2, $14 }' "$RAW")
[[ -n $dirty ]] && echo "# WARNING: other processes took more than ${OTHER_MAX}% of a core during: $dirty"
((total_errs > 0)) && echo "# WARNING: $total_errs failed requests in total (errs columns)"
((RM_WARN > 0)) && { echo "# WARNING: ringmesh logged $RM_WARN warning/error lines during the load rounds:"; grep -E ' (WARN|ERROR) ' "$S/ringmesh.log" | head -n "$RM_WARN" | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/#   /'; }
[[ $RM_STOP == "exit 0" ]] || { echo "# WARNING: ringmesh did not exit cleanly on SIGTERM"; exit 1; }
exit 0
