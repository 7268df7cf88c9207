#!/usr/bin/env bash
# tcp-forward.sh - ringmesh's explicit TCP forward (RINGMESH_TCP_FORWARD) against
# HAProxy `mode tcp`, same pinning, same run, on 127.0.0.1.
#
# What it measures
#   1. Small requests: wrk (HTTP/1.1 keep-alive, CONNS connections, -t1) fetches a
#      BODY_BYTES static response from an nginx backend, either directly ("direct",
#      the baseline) or through a TCP forward: ringmesh (1 worker) or HAProxy
#      (`mode tcp`, nbthread 1). Both proxies are pinned to PROXY_CPUS; wrk to
#      LOAD_CPUS, nginx (1 worker) to BACKEND_CPUS. Neither proxy parses HTTP: this
#      is the per-read/per-write cost of a userspace L4 relay (both copy through
#      16 KiB buffers by default; HAProxy's splice is off by default and stays off).
#      A ringmesh forward detects the protocol and proxies HTTP/1 per request
#      unless the target port is opaque; the script makes it opaque (FORWARD_MODE)
#      and counts, from ringmesh's debug line for each connection, which protocol
#      each connection got, so every report says what was compared.
#   2. Bulk: iperf3 (BULK_SECS, BULK_STREAMS streams) to an iperf3 server, direct
#      and through each proxy. iperf3 opens a control connection and then its data
#      connection(s) to the same port; a forward relays each like any connection.
#
# How
#   One ringmesh process holds both forwards (HTTP and iperf3), one HAProxy holds
#   both listeners; both stay up for the whole run. Cases are interleaved within
#   each of ROUNDS rounds (direct, ringmesh, haproxy, then again), so slow drift of
#   the VM hits all candidates alike. Each case gets WARMUP seconds of unmeasured
#   load, then DURATION measured seconds. Proxy CPU is the utime+stime delta of the
#   proxy process (all its threads, from /proc/PID/stat, 10 ms ticks) over the
#   measured window. Every load run is bounded by `timeout`; every process this
#   script starts is stopped on exit (trap), by pid. At the end ringmesh is sent
#   SIGTERM and must drain and exit 0.
#
# Reading the output
#   HTTP table (medians over rounds):
#     req/s        median requests/s; min-max and spread = (max-min)/median show noise
#     p50/p99 us   wrk --latency percentiles (closed loop: latency and req/s move together)
#     errs         wrk socket errors + non-2xx responses, summed over rounds (want 0)
#     proxy cpu%   proxy CPU as % of one core during the window
#     cpu us/req   proxy CPU microseconds per request: the efficiency number
#     vs haproxy   cpu us/req / haproxy's in the same round, median over rounds
#                  (< 1.00 = ringmesh cheaper). Pairing within a round matters:
#                  on this VM whole 10 s windows run ~20% slower for any proxy.
#   With the default pinning (wrk and nginx share cpu0, the proxy alone on cpu1)
#   req/s is capped by whichever core fills first: cpu0 (its ceiling is the direct
#   row) or the proxy's core (proxy cpu% near 90-100%; softirq time on that core is
#   not in the proxy's utime+stime). cpu us/req is the number that does not depend
#   on which. peers.sh instead puts the backend on the proxy's core
#   (BACKEND_CPUS=1), which makes req/s ~ 1/(proxy us + backend us).
#   Bulk table: median Gbit/s, min-max, proxy cpu% during the transfer, and
#   Gbit/s as % of direct in the same round (median over rounds).
#   Direct bulk has client and server on LOAD_CPUS/BACKEND_CPUS (one core by
#   default) while a proxied run adds the proxy's core, so a proxy can come out
#   above 100% of direct; compare ringmesh with HAProxy first.
#   A WARNING line is printed when other processes still took CPU during a round
#   after RETRIES, when ringmesh logged warnings/errors, or when requests failed;
#   check those before reading the numbers.
#   The CSV (CSV=, default target/bench/tcp-forward.csv) has one row per case and
#   round plus one row per candidate with round=median (there secs, requests, errors
#   and attempts are totals over the rounds and other_cpu_pct is the worst round).
#
# Usage: bench/scripts/tcp-forward.sh [-h] [KEY=value ...]   (or the same as env vars)
#   DURATION=10      measured seconds per HTTP case
#   ROUNDS=3         interleaved rounds (HTTP and bulk)
#   CONNS=50         wrk connections (wrk -t$WRK_THREADS)
#   WARMUP=1         unmeasured seconds of load before each HTTP case (0 = none)
#   BULK_SECS=5      iperf3 seconds per bulk case (0 = skip the bulk test)
#   BULK_STREAMS=1   iperf3 -P
#   PROXY_CPUS=1     taskset list for ringmesh and HAProxy
#   LOAD_CPUS=0      taskset list for wrk and the iperf3 client
#   BACKEND_CPUS=    taskset list for nginx and the iperf3 server (default LOAD_CPUS)
#   IO_DRIVER=auto   ringmesh RINGMESH_IO_DRIVER: auto | uring | epoll
#   FORWARD_MODE=opaque  opaque: the backend and iperf3 ports are given to ringmesh
#                    as RINGMESH_OUTBOUND_OPAQUE_PORTS, so it relays bytes as HAProxy
#                    mode tcp does (L4 against L4). detect: ringmesh's protocol
#                    detection runs and HTTP/1 is proxied per request (ringmesh L7
#                    against HAProxy L4: what ringmesh's HTTP path costs)
#   WORKERS=1        ringmesh LINKERD2_PROXY_CORES
#   DIRECT=1         0 = skip the direct (no proxy) baseline
#   BODY_BYTES=64    backend response body size
#   WRK_THREADS=1
#   QUICK=1          smoke test: DURATION=2 ROUNDS=1 WARMUP=0 BULK_SECS=2 (unless set)
#   CSV=target/bench/tcp-forward.csv   (relative to the workspace root)
#   RINGMESH_BIN=    binary to test; default target/release/ringmesh, built with
#                    `cargo build --release -p ringmesh-engine` if missing
#   KEEP=0           1 = keep the scratch dir (configs, logs, raw wrk/iperf3 output)
#   WAIT_IDLE=120    before each case wait up to this many seconds for the machine to be
#                    idle (< 10% busy over 0.5 s): a compile next door ruins a 2-core run
#   OTHER_MAX=5      a case is measured again (at most RETRIES=3 times) when processes
#                    other than this script's took more than OTHER_MAX% of one core
#                    during its window; what they took is kept (CSV other_cpu_pct,
#                    attempts) and rounds still above it are listed in a WARNING
#   Ports on 127.0.0.1 (must be free): BACKEND_PORT=18080 RINGMESH_PORT=15000
#   HAPROXY_PORT=15001 IPERF_PORT=5201 RINGMESH_IPERF_PORT=15201 HAPROXY_IPERF_PORT=15202
#   Other RINGMESH_*/LINKERD2_PROXY_* variables in the environment (for example
#   RINGMESH_TCP_BUFFER_SIZE) reach ringmesh unchanged and are printed in the header.
#
# Needs wrk, haproxy, nginx, iperf3 and taskset. Missing Debian packages are
# installed with apt-get, which needs root; everything else runs as any user.
set -euo pipefail

ME=tcp-forward.sh
SETTINGS='FORWARD_MODE|OTHER_MAX|RETRIES|WAIT_IDLE|DURATION|ROUNDS|CONNS|WARMUP|BULK_SECS|BULK_STREAMS|PROXY_CPUS|LOAD_CPUS|BACKEND_CPUS|IO_DRIVER|WORKERS|DIRECT|BODY_BYTES|WRK_THREADS|QUICK|CSV|RINGMESH_BIN|KEEP|BACKEND_PORT|RINGMESH_PORT|HAPROXY_PORT|IPERF_PORT|RINGMESH_IPERF_PORT|HAPROXY_IPERF_PORT'
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/scripts/lib.sh
source "$ROOT/bench/scripts/lib.sh"
parse_settings "$@"

if [[ ${QUICK:-0} == 1 ]]; then
  DURATION=${DURATION:-2}; ROUNDS=${ROUNDS:-1}; WARMUP=${WARMUP:-0}; BULK_SECS=${BULK_SECS:-2}
fi
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
WARMUP=${WARMUP:-1}
BULK_SECS=${BULK_SECS:-5}
BULK_STREAMS=${BULK_STREAMS:-1}
PROXY_CPUS=${PROXY_CPUS:-1}
LOAD_CPUS=${LOAD_CPUS:-0}
BACKEND_CPUS=${BACKEND_CPUS:-$LOAD_CPUS}
IO_DRIVER=${IO_DRIVER:-auto}
FORWARD_MODE=${FORWARD_MODE:-opaque}
WORKERS=${WORKERS:-1}
DIRECT=${DIRECT:-1}
BODY_BYTES=${BODY_BYTES:-64}
WRK_THREADS=${WRK_THREADS:-1}
KEEP=${KEEP:-0}
WAIT_IDLE=${WAIT_IDLE:-120}
OTHER_MAX=${OTHER_MAX:-5}
RETRIES=${RETRIES:-3}
BACKEND_PORT=${BACKEND_PORT:-18080}
RINGMESH_PORT=${RINGMESH_PORT:-15000}
HAPROXY_PORT=${HAPROXY_PORT:-15001}
IPERF_PORT=${IPERF_PORT:-5201}
RINGMESH_IPERF_PORT=${RINGMESH_IPERF_PORT:-15201}
HAPROXY_IPERF_PORT=${HAPROXY_IPERF_PORT:-15202}

for v in OTHER_MAX RETRIES WAIT_IDLE DURATION ROUNDS CONNS WARMUP BULK_SECS BULK_STREAMS WORKERS BODY_BYTES WRK_THREADS \
         BACKEND_PORT RINGMESH_PORT HAPROXY_PORT IPERF_PORT RINGMESH_IPERF_PORT HAPROXY_IPERF_PORT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$ME: $v=${!v} is not a non-negative integer" >&2; exit 2; }
done
((DURATION > 0 && ROUNDS > 0 && CONNS > 0 && BODY_BYTES > 0)) || { echo "$ME: DURATION, ROUNDS, CONNS and BODY_BYTES must be > 0" >&2; exit 2; }
[[ $IO_DRIVER =~ ^(auto|uring|epoll)$ ]] || { echo "$ME: IO_DRIVER must be auto, uring or epoll" >&2; exit 2; }
[[ $FORWARD_MODE =~ ^(opaque|detect)$ ]] || { echo "$ME: FORWARD_MODE must be opaque or detect" >&2; exit 2; }

CSV=${CSV:-target/bench/tcp-forward.csv}
[[ $CSV == /* ]] || CSV=$ROOT/$CSV

# ---------------------------------------------------------------- tools
need_tools wrk haproxy nginx iperf3 taskset timeout awk
ringmesh_bin

# ---------------------------------------------------------------- processes
ports_free "$BACKEND_PORT" "$RINGMESH_PORT" "$HAPROXY_PORT" "$IPERF_PORT" "$RINGMESH_IPERF_PORT" "$HAPROXY_IPERF_PORT"
scratch_dir

# ---------------------------------------------------------------- configs
BODY=$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')
nginx_conf nginx "  server { listen 127.0.0.1:$BACKEND_PORT backlog=4096;
    location / { default_type text/plain; return 200 \"$BODY\"; } }" >"$S/nginx.conf"

cat >"$S/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
listen http_forward
  bind 127.0.0.1:$HAPROXY_PORT
  server backend 127.0.0.1:$BACKEND_PORT
listen iperf_forward
  bind 127.0.0.1:$HAPROXY_IPERF_PORT
  server iperf 127.0.0.1:$IPERF_PORT
EOF

nginx -t -q -p "$S" -e "$S/nginx-t.err" -c "$S/nginx.conf" -g 'daemon off;'
haproxy -c -q -f "$S/haproxy.cfg"

# ---------------------------------------------------------------- start
start_bg "$BACKEND_CPUS" nginx nginx -p "$S" -e "$S/nginx.err" -c "$S/nginx.conf" -g 'daemon off;'
NGINX_PID=$LASTPID
start_bg "$PROXY_CPUS" haproxy haproxy -db -f "$S/haproxy.cfg"
HAPROXY_PID=$LASTPID

# ringmesh's own start-up and shutdown lines at info ("starting" names the
# driver, "ready" means every worker listens) and l4's debug lines, one or two
# per accepted connection (which protocol it got), none per request; warnings
# and errors from anywhere.
opaque_env=()
[[ $FORWARD_MODE == opaque ]] && opaque_env=(RINGMESH_OUTBOUND_OPAQUE_PORTS="$BACKEND_PORT,$IPERF_PORT")
start_bg "$PROXY_CPUS" ringmesh env "${opaque_env[@]}" \
  RINGMESH_TCP_FORWARD="127.0.0.1:$RINGMESH_PORT=127.0.0.1:$BACKEND_PORT,127.0.0.1:$RINGMESH_IPERF_PORT=127.0.0.1:$IPERF_PORT" \
  LINKERD2_PROXY_CORES="$WORKERS" \
  RINGMESH_IO_DRIVER="$IO_DRIVER" \
  LINKERD2_PROXY_LOG="warn,ringmesh=info,ringmesh_engine::l4=debug" \
  LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR="" \
  LINKERD2_PROXY_INBOUND_LISTEN_ADDR="" \
  LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD="5s" \
  "$S/ringmesh"
RINGMESH_PID=$LASTPID   # env execs, so this is ringmesh itself

iperf_pid=""
if ((BULK_SECS > 0)); then
  start_bg "$BACKEND_CPUS" iperf3-server iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" --rcv-timeout 10000
  iperf_pid=$LASTPID
fi

for i in $(seq 1 200); do
  grep -qw 'ready' "$S/ringmesh.log" && break
  kill -0 "$RINGMESH_PID" 2>/dev/null || { cat "$S/ringmesh.log" >&2; die "ringmesh exited during start-up"; }
  sleep 0.05
done
grep -qw 'ready' "$S/ringmesh.log" || { cat "$S/ringmesh.log" >&2; die "ringmesh did not log 'ready' within 10 s"; }
wait_listen "$NGINX_PID" nginx "$BACKEND_PORT"
wait_listen "$HAPROXY_PID" haproxy "$HAPROXY_PORT" "$HAPROXY_IPERF_PORT"
wait_listen "$RINGMESH_PID" ringmesh "$RINGMESH_PORT" "$RINGMESH_IPERF_PORT"
[[ -n $iperf_pid ]] && wait_listen "$iperf_pid" iperf3-server "$IPERF_PORT"

RM_DRIVER=$(sed -n 's/.*driver=\([a-z_]*\).*/\1/p' "$S/ringmesh.log" | head -n1)
RM_DRIVER=${RM_DRIVER:-unknown}

# One request on a fresh connection through every HTTP path: status and body.
check_http() {  # port name
  local r
  r=$(timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" >&3; cat <&3' _ "$1" 2>&1) || true
  [[ $r == "HTTP/1.1 200"* && $r == *$'\r\n\r\n'"$BODY" ]] \
    || die "bad response via $2 (127.0.0.1:$1): ${r:0:300}"
}
check_http "$BACKEND_PORT" direct
check_http "$RINGMESH_PORT" ringmesh
check_http "$HAPROXY_PORT" haproxy

RAW=$S/rows.csv
: >"$RAW"

# Both cases: measure once; when other processes took more than OTHER_MAX% of a
# core during the window, wait for quiet and measure again (RETRIES times at most).
http_case() {  # round candidate port [proxy_pid]
  local round=$1 cand=$2 port=$3 pid=${4:-} url="http://127.0.0.1:$3/" out="$S/wrk.$2.r$1.out"
  local wrk=(taskset -c "$LOAD_CPUS" wrk -t"$WRK_THREADS" -c"$CONNS" --latency)
  local attempt t0=0 t1=0 w0=0 w1=0 s0 s1 f0 f1 other
  for attempt in $(seq 1 $((RETRIES + 1))); do
    idle_gate
    if ((WARMUP > 0)); then
      run_bounded $((WARMUP + 15)) "$S/wrk.warmup.out" "${wrk[@]}" -d"${WARMUP}s" "$url" \
        || die "wrk warm-up against $cand failed: $(tail -n 5 "$S/wrk.warmup.out")"
    fi
    if [[ -n $pid ]]; then t0=$(ticks "$pid"); w0=$(warnings "$S/$cand.log"); fi
    f0=$(other_ticks); s0=$(now_ns)
    run_bounded $((DURATION + 15)) "$out" "${wrk[@]}" -d"${DURATION}s" "$url" \
      || die "wrk against $cand failed or overran: $(tail -n 5 "$out")"
    s1=$(now_ns); f1=$(other_ticks)
    if [[ -n $pid ]]; then t1=$(ticks "$pid"); alive_or_die "$pid" "$cand"; w1=$(warnings "$S/$cand.log"); fi
    other=$(other_pct "$f0" "$f1" "$s0" "$s1")
    ((other <= OTHER_MAX)) && break
    ((attempt <= RETRIES)) && echo "#   round $round $cand: other processes took ${other}% of a core meanwhile; measuring again" >&2
  done
  local rps p50 p99 errs reqs
  read -r rps p50 p99 errs reqs < <(parse_wrk "$out")
  awk -v round="$round" -v cand="$cand" -v drv="$RM_DRIVER" -v conns="$CONNS" -v s0="$s0" -v s1="$s1" \
      -v has_pid="${pid:+1}" -v dt=$((t1 - t0)) -v clk="$CLK" -v warn=$((w1 - w0)) -v other="$other" -v attempt="$attempt" \
      -v rps="$rps" -v p50="$p50" -v p99="$p99" -v errs="$errs" -v reqs="$reqs" '
    BEGIN {
      secs = (s1 - s0) / 1e9
      cpu = ""; per = ""; w = ""
      if (has_pid) {
        cpu = sprintf("%.1f", 100 * dt / clk / secs)
        per = reqs > 0 ? sprintf("%.2f", 1e6 * dt / clk / reqs) : ""
        w = warn
      }
      printf "http,%s,%s,%s,%.3f,%s,%d,%.0f,,,%.0f,%.0f,%d,%s,%s,,,,,,%s,%s,%s\n",
        round, cand, drv, secs, conns, reqs, rps, p50, p99, errs + 0, cpu, per, w, other, attempt
    }' | tee -a "$RAW" | awk -F, '{printf "#   round %s %-9s %9.0f req/s  p50 %6s us  p99 %6s us  errs %s  proxy %5s%% cpu  %6s us/req  others %s%%\n", $2, $3, $8, $11, $12, $13, ($14==""?"-":$14), ($15==""?"-":$15), $22}' >&2
}

bulk_case() {  # round candidate port [proxy_pid]
  local round=$1 cand=$2 port=$3 pid=${4:-} out="$S/iperf3.$2.r$1.out"
  local attempt t0=0 t1=0 w0=0 w1=0 s0 s1 f0 f1 other rc
  for attempt in $(seq 1 $((RETRIES + 1))); do
    idle_gate
    rc=0
    if [[ -n $pid ]]; then t0=$(ticks "$pid"); w0=$(warnings "$S/$cand.log"); fi
    f0=$(other_ticks); s0=$(now_ns)
    run_bounded $((BULK_SECS + 20)) "$out" taskset -c "$LOAD_CPUS" \
      iperf3 -c 127.0.0.1 -p "$port" -t "$BULK_SECS" -P "$BULK_STREAMS" -f g --connect-timeout 3000 || rc=$?
    s1=$(now_ns); f1=$(other_ticks)
    if [[ -n $pid ]]; then t1=$(ticks "$pid"); alive_or_die "$pid" "$cand"; w1=$(warnings "$S/$cand.log"); fi
    alive_or_die "$iperf_pid" iperf3-server
    if ((rc != 0)); then
      echo "$ME: warning: iperf3 through $cand failed (exit $rc): $(tail -n 3 "$out" | tr '\n' ' ')" >&2
    fi
    other=$(other_pct "$f0" "$f1" "$s0" "$s1")
    ((other <= OTHER_MAX)) && break
    ((attempt <= RETRIES)) && echo "#   round $round $cand: other processes took ${other}% of a core meanwhile; measuring again" >&2
  done
  awk -v round="$round" -v cand="$cand" -v drv="$RM_DRIVER" -v streams="$BULK_STREAMS" -v s0="$s0" -v s1="$s1" \
      -v has_pid="${pid:+1}" -v dt=$((t1 - t0)) -v clk="$CLK" -v warn=$((w1 - w0)) -v rc="$rc" -v other="$other" -v attempt="$attempt" '
    /receiver/ { for (i = 2; i <= NF; i++) if ($i == "Gbits/sec") v = $(i - 1)
                 if ($1 == "[SUM]") sum = v; last = v }
    END {
      g = (sum != "") ? sum : last
      secs = (s1 - s0) / 1e9
      cpu = has_pid ? sprintf("%.1f", 100 * dt / clk / secs) : ""
      printf "bulk,%s,%s,%s,%.3f,%s,,,,,,,%d,%s,,,%s,,,,%s,%s,%s\n",
        round, cand, drv, secs, streams, (g == "" || rc != 0) ? 1 : 0, cpu, (g == "" ? 0 : g), (has_pid ? warn : ""), other, attempt
    }' "$out" | tee -a "$RAW" | awk -F, '{printf "#   round %s %-9s %7.2f Gbit/s  proxy %5s%% cpu  others %s%%\n", $2, $3, $17, ($14==""?"-":$14), $22}' >&2
}

# ---------------------------------------------------------------- run
BG=$(busy_probe 1)
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -qv '^??' && echo "+dirty" || true)
extra_env=$(env | grep -E '^(RINGMESH|LINKERD2_PROXY)_' | grep -vE '^(RINGMESH_BIN)=' | tr '\n' ' ' || true)
echo "# tcp-forward.sh: $(nproc) CPUs, $(uname -r); ringmesh $rev$dirty ($BIN, built $BIN_DATE, sha256 $BIN_SUM)"
echo "# ringmesh: $WORKERS worker(s), driver $RM_DRIVER (IO_DRIVER=$IO_DRIVER), forward mode $FORWARD_MODE${opaque_env:+ (${opaque_env[0]})}${extra_env:+; env: $extra_env}"
echo "# peers: haproxy $(haproxy -v | awk 'NR==1{print $3}') mode tcp nbthread 1, nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') 1 worker, $(wrk -v 2>&1 | awk 'NR==1{print $1, $2}'), $(iperf3 --version | awk 'NR==1{print $1, $2}')"
echo "# pinning: proxies cpu $PROXY_CPUS; wrk/iperf3 client cpu $LOAD_CPUS; nginx/iperf3 server cpu $BACKEND_CPUS"
echo "# load: wrk -t$WRK_THREADS -c$CONNS, ${DURATION}s measured (+${WARMUP}s warm-up) x $ROUNDS rounds, ${BODY_BYTES}-byte body; iperf3 -P$BULK_STREAMS ${BULK_SECS}s x $ROUNDS rounds"
echo "# machine busy before start: ${BG}% of all CPUs (each case first waits up to ${WAIT_IDLE}s for < 10%)"

for r in $(seq 1 "$ROUNDS"); do
  echo "# HTTP round $r/$ROUNDS" >&2
  [[ $DIRECT == 1 ]] && http_case "$r" direct "$BACKEND_PORT"
  http_case "$r" ringmesh "$RINGMESH_PORT" "$RINGMESH_PID"
  http_case "$r" haproxy "$HAPROXY_PORT" "$HAPROXY_PID"
done
if ((BULK_SECS > 0)); then
  for r in $(seq 1 "$ROUNDS"); do
    echo "# bulk round $r/$ROUNDS" >&2
    bulk_case "$r" direct "$IPERF_PORT"
    bulk_case "$r" ringmesh "$RINGMESH_IPERF_PORT" "$RINGMESH_PID"
    bulk_case "$r" haproxy "$HAPROXY_IPERF_PORT" "$HAPROXY_PID"
  done
fi

# ringmesh must drain and exit 0 on SIGTERM (connections are all closed by now).
t_stop=$(now_ns)
kill -TERM "$RINGMESH_PID"
rm_rc=""
for i in $(seq 1 100); do kill -0 "$RINGMESH_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$RINGMESH_PID" 2>/dev/null; then
  rm_stop="still running 10 s after SIGTERM (killed)"
else
  wait "$RINGMESH_PID" && rm_rc=0 || rm_rc=$?
  rm_stop="exit $rm_rc after $(awk -v a="$t_stop" -v b="$(now_ns)" 'BEGIN{printf "%.1f", (b-a)/1e9}') s"
fi
RM_WARN=$(warnings "$S/ringmesh.log")
protocols=$(sed -n 's/.* protocol=\([A-Za-z0-9]*\).*/\1/p' "$S/ringmesh.log" | sort | uniq -c | awk '{printf "%s%s=%s", (n++ ? " " : ""), $2, $1}')
protocols=${protocols:-"none logged (a binary without protocol detection: all opaque)"}
accepted=$(sed -n 's/.*accepted=\([0-9]*\).*/\1/p' "$S/ringmesh.log" | awk '{s+=$1} END{print s+0}')

# ---------------------------------------------------------------- report
summary=$(awk -F, -v OFS=, '
  function sortv(s, a,   k, i, j, t) { k = split(s, a, " ")
    for (i = 2; i <= k; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return k }
  function med(s,   a, k) { if (s == "") return ""; k = sortv(s, a); return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
  function lo(s,   a) { if (s == "") return ""; sortv(s, a); return a[1] }
  function hi(s,   a, k) { if (s == "") return ""; k = sortv(s, a); return a[k] }
  # Pass 1 (NR == FNR): collect. Pass 2: each round row again, with its ratio to
  # the reference of the same round filled in; ratios are paired within a round
  # so that drift between rounds (this VM has slow windows) cancels out.
  NR != FNR {
    k = $1 SUBSEP $3
    if ($1 == "http" && $15 != "" && hp[$2] > 0) { $16 = sprintf("%.2f", $15 / hp[$2]); vsl[k] = vsl[k] " " $16 }
    if ($1 == "bulk" && dg[$2] > 0) { $20 = sprintf("%.1f", 100 * $17 / dg[$2]); pctl[k] = pctl[k] " " $20 }
    print; next }
  $1 == "http" && $3 == "haproxy" && $15 != "" { hp[$2] = $15 }
  $1 == "bulk" && $3 == "direct" { dg[$2] = $17 }
  { key = $1 SUBSEP $3; if (!(key in seen)) { seen[key] = 1; order[++n] = key; test[key] = $1; cand[key] = $3; drv[key] = $4 }
    secs[key] += $5; conns[key] = $6; reqs[key] += $7; errs[key] += $13; warn[key] += $21; if ($22 + 0 > oth[key]) oth[key] = $22 + 0; att[key] += $23
    if ($1 == "http") { rps[key] = rps[key] " " $8; p50[key] = p50[key] " " $11; p99[key] = p99[key] " " $12 }
    else gb[key] = gb[key] " " $17
    if ($14 != "") cpu[key] = cpu[key] " " $14
    if ($15 != "") per[key] = per[key] " " $15 }
  END {
    for (i = 1; i <= n; i++) { k = order[i]
      vs = (vsl[k] != "") ? sprintf("%.2f", med(vsl[k])) : ""
      pct = (pctl[k] != "") ? sprintf("%.1f", med(pctl[k])) : ""
      print test[k], "median", cand[k], drv[k], sprintf("%.3f", secs[k]), conns[k], reqs[k],
            med(rps[k]), lo(rps[k]), hi(rps[k]), med(p50[k]), med(p99[k]), errs[k],
            med(cpu[k]), med(per[k]), vs, med(gb[k]), lo(gb[k]), hi(gb[k]), pct, (cand[k] == "direct" ? "" : warn[k]), oth[k] + 0, att[k]
    } }' "$RAW" "$RAW")

mkdir -p "$(dirname "$CSV")"
{ echo "$CSV_HEADER"; echo "$summary"; } >"$CSV"
summary=$(awk -F, '$2 == "median"' <<<"$summary")

echo
echo "HTTP/1.1 keep-alive, ${BODY_BYTES}-byte responses, wrk -c$CONNS, ${DURATION}s x $ROUNDS rounds (medians)"
echo "$summary" | awk -F, '
  BEGIN { printf "%-9s %9s %15s %7s %8s %8s %5s %10s %10s %10s\n", "candidate", "req/s", "min-max", "spread", "p50 us", "p99 us", "errs", "proxy cpu%", "cpu us/req", "vs haproxy" }
  $1 == "http" { sp = ($8 > 0) ? sprintf("%.1f%%", 100 * ($10 - $9) / $8) : "-"
    printf "%-9s %9.0f %15s %7s %8.0f %8.0f %5d %10s %10s %10s\n", $3, $8, sprintf("%.1fk-%.1fk", $9 / 1000, $10 / 1000), sp,
      $11, $12, $13, ($14 == "" ? "-" : sprintf("%.1f", $14)), ($15 == "" ? "-" : sprintf("%.2f", $15)), ($16 == "" ? "-" : $16) }'
if ((BULK_SECS > 0)); then
  echo
  echo "Bulk: iperf3 -P$BULK_STREAMS, ${BULK_SECS}s x $ROUNDS rounds (medians)"
  echo "$summary" | awk -F, '
    BEGIN { printf "%-9s %8s %13s %10s %10s %5s\n", "candidate", "Gbit/s", "min-max", "proxy cpu%", "of direct", "errs" }
    $1 == "bulk" { printf "%-9s %8.2f %13s %10s %10s %5d\n", $3, $17, sprintf("%.2f-%.2f", $18, $19), ($14 == "" ? "-" : sprintf("%.1f", $14)),
      ($20 == "" ? "-" : $20 "%"), $13 }'
fi
echo
echo "# ringmesh: SIGTERM -> $rm_stop; connections accepted: $accepted; by protocol: $protocols; warning/error log lines: $RM_WARN"
echo "# CSV: $CSV"
total_errs=$(echo "$summary" | awk -F, '{s += $13} END{print s + 0}')
if ((RM_WARN > 0)); then
  echo "# WARNING: ringmesh logged $RM_WARN warning/error lines:"
  grep -E ' (WARN|ERROR) ' "$S/ringmesh.log" | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/#   /'
fi
dirty=$(awk -F, -v max="$OTHER_MAX" '$22 + 0 > max {printf "%s%s %s r%s (%s%%)", (n++ ? ", " : ""), $1, $3, $2, $22}' "$RAW")
[[ -n $dirty ]] && echo "# WARNING: other processes took more than ${OTHER_MAX}% of a core during: $dirty; those rounds are contaminated"
((total_errs > 0)) && echo "# WARNING: $total_errs request/transfer errors in total (see errs columns)"
[[ $rm_rc == 0 ]] || { echo "# WARNING: ringmesh did not exit cleanly on SIGTERM"; exit 1; }
exit 0
