#!/usr/bin/env bash
# balance.sh - issue 7's benchmark: ringmesh's request balancing (P2C over
# peak-EWMA) against HAProxy `balance roundrobin` and `balance leastconn`, over
# the same three HTTP/1.1 keep-alive backends, one of them slow, in the same
# run, on 127.0.0.1. The target: ringmesh's p99 lower than both HAProxy p99s.
#
# What runs
#   backends  fast1, fast2: nginx (one instance each, 1 worker) answering
#             `return 200` with a BODY_BYTES body; slow: a small python3 asyncio
#             server (written to the scratch dir) that waits SLOW_MS and then
#             answers the same body (nginx cannot wait without modules). All
#             three keep connections alive and answer GET /__status with
#             nginx's stub_status counters, so each backend's requests are
#             counted where they arrive, the same way for every proxy.
#             All on BACKEND_CPUS.
#   ringmesh  WORKERS worker(s) on PROXY_CPUS; a static discovery file with one
#             service bal.test:80 (endpoints fast1, fast2, slow; protocol
#             http1) and RINGMESH_TCP_FORWARD=<port>=bal.test:80: each request
#             is balanced on its own (P2C over peak-EWMA) onto pooled upstream
#             connections. Inbound/outbound listeners off; admin on a port.
#   haproxy   one process, nbthread 1, on PROXY_CPUS, mode http, keep-alive and
#             `http-reuse always` to the servers; one frontend per algorithm:
#             "haproxy-rr" (`balance roundrobin`) and "haproxy-lc"
#             (`balance leastconn`), same three servers, no health checks.
#   load      on LOAD_CPUS, two modes per candidate and round:
#             closed  wrk -t1 -cCONNS --latency, as fast as the proxy goes (a
#                     client waits for each answer, so a candidate that avoids
#                     the slow backend also serves more requests per second).
#                     wrk 4 corrects its percentiles for coordinated omission:
#                     a 50 ms answer also counts the requests its connection
#                     would have sent meanwhile at its average rate, so at
#                     ~50k req/s a single slow answer weighs ~150 samples.
#             fixed   h2load --h1 -cRATE_CONNS --rps: RATE req/s in all, the
#                     same offered load for every candidate, each connection
#                     paced (one request at a time) and the connections' phases
#                     spread (-r, see RAMP) so requests arrive evenly, not in
#                     bursts; p50/p99 exact over every request from h2load's
#                     per-request log. FIXED=0 skips it.
#
# Method
#   The three candidates are interleaved within each of ROUNDS rounds so that
#   machine drift hits all alike; each gets WARMUP unmeasured seconds of wrk
#   (the balancers learn), DURATION measured seconds of wrk, then DURATION
#   measured seconds at the fixed rate. Before each case the script
#   waits (up to WAIT_IDLE s) for a quiet machine and measures again (RETRIES
#   times at most) when other processes took more than OTHER_MAX% of a core.
#   Backend shares come from the /__status counters read just before and after
#   each measured window (warm-up excluded). Proxy CPU = utime+stime of the
#   proxy process over the window. Reported per mode: medians over rounds of
#   req/s, p50, p99 and proxy cpu; requests per backend summed over rounds; and
#   whether ringmesh's median p99 is below both HAProxy medians (and in how
#   many rounds that held on its own).
#
# Usage: bench/scripts/balance.sh [-h] [KEY=value ...]   (or the same as env vars)
#   DURATION=5 ROUNDS=3 WARMUP=1 CONNS=16
#   FIXED=1 RATE=2000 RATE_CONNS=100   the fixed-rate mode
#   SLOW_MS=50       extra delay of the slow backend
#   BODY_BYTES=64
#   PROXY_CPUS=1  LOAD_CPUS=0  BACKEND_CPUS= (default LOAD_CPUS)
#   WORKERS=1        ringmesh LINKERD2_PROXY_CORES
#   IO_DRIVER=auto   RINGMESH_IO_DRIVER
#   QUICK=1          ~30 s run: DURATION=3 ROUNDS=1 (unless set)
#   CSV=target/bench/balance.csv (relative to the workspace root)
#   RINGMESH_BIN=    default target/release/ringmesh (built if missing)
#   KEEP=0           1 = keep the scratch dir (configs, logs, raw load output)
#   WAIT_IDLE=15     before each case wait up to this many seconds for the machine
#                    to be idle (< 10% busy over 0.5 s)
#   OTHER_MAX=5 RETRIES=1   a case is measured again (at most RETRIES times) when
#                    other processes took more than OTHER_MAX% of a core meanwhile
#   BUDGET=100       seconds after which the script no longer waits or measures
#                    again (rounds still above OTHER_MAX are listed in a WARNING):
#                    on an idle machine the defaults take ~2 minutes
#   BASE_PORT=18280  ports BASE_PORT .. BASE_PORT+6 on 127.0.0.1 must be free
#
# Exit status: 0 when the run completed (whether or not the target held; the
# last line says), 1 on a failure or when ringmesh did not exit 0 on SIGTERM.
#
# Needs wrk, h2load, haproxy, nginx, curl, python3, taskset; missing Debian packages are
# installed with apt-get when run as root.
set -euo pipefail

ME=balance.sh
SETTINGS='DURATION|ROUNDS|WARMUP|CONNS|FIXED|RATE|RATE_CONNS|SLOW_MS|BODY_BYTES|PROXY_CPUS|LOAD_CPUS|BACKEND_CPUS|WORKERS|IO_DRIVER|QUICK|CSV|RINGMESH_BIN|KEEP|WAIT_IDLE|OTHER_MAX|RETRIES|BUDGET|BASE_PORT'
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/scripts/lib.sh
source "$ROOT/bench/scripts/lib.sh"
parse_settings "$@"

if [[ ${QUICK:-0} == 1 ]]; then
  DURATION=${DURATION:-3}; ROUNDS=${ROUNDS:-1}
fi
DURATION=${DURATION:-5}; ROUNDS=${ROUNDS:-3}; WARMUP=${WARMUP:-1}; CONNS=${CONNS:-16}
FIXED=${FIXED:-1}; RATE=${RATE:-2000}; RATE_CONNS=${RATE_CONNS:-100}
SLOW_MS=${SLOW_MS:-50}; BODY_BYTES=${BODY_BYTES:-64}
PROXY_CPUS=${PROXY_CPUS:-1}; LOAD_CPUS=${LOAD_CPUS:-0}; BACKEND_CPUS=${BACKEND_CPUS:-$LOAD_CPUS}
WORKERS=${WORKERS:-1}; IO_DRIVER=${IO_DRIVER:-auto}
KEEP=${KEEP:-0}; WAIT_IDLE=${WAIT_IDLE:-15}; OTHER_MAX=${OTHER_MAX:-5}; RETRIES=${RETRIES:-1}; BUDGET=${BUDGET:-100}
BASE_PORT=${BASE_PORT:-18280}
for v in DURATION ROUNDS WARMUP CONNS FIXED RATE RATE_CONNS SLOW_MS BODY_BYTES WORKERS WAIT_IDLE OTHER_MAX RETRIES BUDGET BASE_PORT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$ME: $v=${!v} is not a non-negative integer" >&2; exit 2; }
done
((DURATION > 0 && ROUNDS > 0 && CONNS > 0 && RATE > 0 && RATE_CONNS > 0 && BODY_BYTES > 0 && WORKERS > 0)) \
  || { echo "$ME: DURATION, ROUNDS, CONNS, RATE, RATE_CONNS, BODY_BYTES and WORKERS must be > 0" >&2; exit 2; }
[[ $IO_DRIVER =~ ^(auto|uring|epoll)$ ]] || { echo "$ME: IO_DRIVER must be auto, uring or epoll" >&2; exit 2; }

CSV=${CSV:-target/bench/balance.csv}
[[ $CSV == /* ]] || CSV=$ROOT/$CSV
need_tools wrk h2load haproxy nginx curl taskset timeout awk python3
ringmesh_bin

P_FAST1=$BASE_PORT;           P_FAST2=$((BASE_PORT + 1));  P_SLOW=$((BASE_PORT + 2))
P_RM=$((BASE_PORT + 3));      P_RM_ADMIN=$((BASE_PORT + 4))
P_HAP_RR=$((BASE_PORT + 5));  P_HAP_LC=$((BASE_PORT + 6))
ports_free $(seq "$BASE_PORT" $((BASE_PORT + 6)))
scratch_dir

# ---------------------------------------------------------------- configs
BODY=$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')
fast_conf() {  # name port
  nginx_conf "$1" "  server { listen 127.0.0.1:$2 backlog=4096;
    location / { default_type text/plain; return 200 \"$BODY\"; }
    location = /__status { stub_status; } }"
}
fast_conf fast1 "$P_FAST1" >"$S/fast1.conf"
fast_conf fast2 "$P_FAST2" >"$S/fast2.conf"

# The slow backend: HTTP/1.1 keep-alive, each request answered SLOW_MS after
# its head arrived (concurrent requests wait concurrently), /__status answered
# at once in stub_status' format (the status request itself counted, as nginx
# does).
cat >"$S/slow.py" <<'EOF'
import asyncio, sys

port, delay, body = int(sys.argv[1]), int(sys.argv[2]) / 1000, sys.argv[3].encode()
RESP = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
count = 0
active = 0

async def handle(reader, writer):
    global count, active
    active += 1
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            count += 1
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            path = parts[1] if len(parts) > 1 else b"/"
            length, close = 0, parts[-1] == b"HTTP/1.0"
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                k, v = k.strip().lower(), v.strip().lower()
                if k == b"content-length":
                    length = int(v)
                elif k == b"connection":
                    close = v == b"close" or (close and v != b"keep-alive")
            if length:
                await reader.readexactly(length)
            if path == b"/__status":
                text = b"Active connections: %d \nserver accepts handled requests\n 0 0 %d \n" % (active, count)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text))
            else:
                await asyncio.sleep(delay)
                writer.write(RESP)
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        active -= 1
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()

asyncio.run(main())
EOF

cat >"$S/discovery.toml" <<EOF
[[service]]
name = "bal.test:80"
endpoints = ["127.0.0.1:$P_FAST1", "127.0.0.1:$P_FAST2", "127.0.0.1:$P_SLOW"]
protocol = "http1"
EOF

hap_backend() {  # name algorithm
  cat <<EOF
backend $1
  balance $2
  server fast1 127.0.0.1:$P_FAST1
  server fast2 127.0.0.1:$P_FAST2
  server slow 127.0.0.1:$P_SLOW
EOF
}
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
  http-reuse always
frontend fe_rr
  bind 127.0.0.1:$P_HAP_RR
  default_backend be_rr
frontend fe_lc
  bind 127.0.0.1:$P_HAP_LC
  default_backend be_lc
$(hap_backend be_rr roundrobin)
$(hap_backend be_lc leastconn)
EOF
for c in fast1 fast2; do nginx -t -q -p "$S" -e "$S/nginx-t.err" -c "$S/$c.conf" -g 'daemon off;'; done
haproxy -c -q -f "$S/haproxy.cfg"

# ---------------------------------------------------------------- start
start_bg "$BACKEND_CPUS" fast1 nginx -p "$S" -e "$S/fast1.err" -c "$S/fast1.conf" -g 'daemon off;'
F1_PID=$LASTPID
start_bg "$BACKEND_CPUS" fast2 nginx -p "$S" -e "$S/fast2.err" -c "$S/fast2.conf" -g 'daemon off;'
F2_PID=$LASTPID
start_bg "$BACKEND_CPUS" slow python3 "$S/slow.py" "$P_SLOW" "$SLOW_MS" "$BODY"
SLOW_PID=$LASTPID
start_bg "$PROXY_CPUS" haproxy haproxy -db -f "$S/haproxy.cfg"
HAP_PID=$LASTPID
start_bg "$PROXY_CPUS" ringmesh env \
  RINGMESH_DISCOVERY_STATIC="$S/discovery.toml" \
  RINGMESH_TCP_FORWARD="127.0.0.1:$P_RM=bal.test:80" \
  LINKERD2_PROXY_CORES="$WORKERS" \
  RINGMESH_IO_DRIVER="$IO_DRIVER" \
  LINKERD2_PROXY_LOG="warn,ringmesh=info" \
  LINKERD2_PROXY_ADMIN_LISTEN_ADDR="127.0.0.1:$P_RM_ADMIN" \
  LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR="" \
  LINKERD2_PROXY_INBOUND_LISTEN_ADDR="" \
  LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD="5s" \
  "$S/ringmesh"
RM_PID=$LASTPID   # env execs, so this is ringmesh itself
wait_listen "$F1_PID" fast1 "$P_FAST1"
wait_listen "$F2_PID" fast2 "$P_FAST2"
wait_listen "$SLOW_PID" slow "$P_SLOW"
wait_listen "$HAP_PID" haproxy "$P_HAP_RR" "$P_HAP_LC"
wait_listen "$RM_PID" ringmesh "$P_RM" "$P_RM_ADMIN"
for i in $(seq 1 100); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$P_RM_ADMIN/ready") == 200 ]] && break
  alive_or_die "$RM_PID" ringmesh
  ((i < 100)) || die "ringmesh not ready after 5 s"
  sleep 0.05
done
RM_DRIVER=$(sed -n 's/.*driver=\([a-z_]*\).*/\1/p' "$S/ringmesh.log" | head -n1)
RM_DRIVER=${RM_DRIVER:-unknown}

# Every path answers 200 with the body, and the slow backend is SLOW_MS slower
# than a fast one (median of 5 fetches each, on one connection after the first).
check() {  # port name
  local r
  r=$(curl -sS --max-time 5 -D - "http://127.0.0.1:$1/" 2>&1) || true
  [[ $r == "HTTP/1.1 200"* && $r == *"$BODY" ]] || die "bad response via $2 (127.0.0.1:$1): ${r:0:300}"
}
for c in "$P_FAST1 fast1" "$P_FAST2 fast2" "$P_SLOW slow" "$P_RM ringmesh" "$P_HAP_RR haproxy-rr" "$P_HAP_LC haproxy-lc"; do
  check $c
done
fetch_ms() {  # port -> median ms of 5 sequential requests
  local u="http://127.0.0.1:$1/"
  curl -s -o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null --max-time 10 \
    -w '%{time_total}\n' "$u" "$u" "$u" "$u" "$u" | sort -n | awk '{ a[NR] = $1 } END { printf "%.2f", 1000 * a[3] }'
}
FAST_MS=$(fetch_ms "$P_FAST1"); SLOW_MEASURED_MS=$(fetch_ms "$P_SLOW")
awk -v f="$FAST_MS" -v s="$SLOW_MEASURED_MS" -v want="$SLOW_MS" 'BEGIN { d = s - f; exit !(d >= 0.9 * want && d <= want + 20) }' \
  || die "the slow backend answers in $SLOW_MEASURED_MS ms against $FAST_MS ms for a fast one; expected about $SLOW_MS ms more"

# ---------------------------------------------------------------- cases
served() {  # port -> the backend's request counter (stub_status; it counts this query too)
  local n
  n=$(curl -sS --max-time 5 "http://127.0.0.1:$1/__status" | awk 'NR == 3 { print $3 }')
  [[ $n =~ ^[0-9]+$ ]] || die "no request counter from the backend on 127.0.0.1:$1"
  echo "$n"
}
counts() { echo "$(served "$P_FAST1") $(served "$P_FAST2") $(served "$P_SLOW")"; }

RAW=$S/rows.csv
: >"$RAW"
RATE_PER_CONN=$(awk -v r="$RATE" -v c="$RATE_CONNS" 'BEGIN { printf "%.3f", r / c }')
# h2load starts every client's --rps clock when the client connects: all at
# once they would send in bursts of RATE_CONNS. Opening RAMP connections per
# millisecond spreads them over one per-connection interval (RATE_CONNS / RATE
# s), so requests arrive about evenly, RATE per second.
RAMP=$(((RATE + 999) / 1000))
# mode round candidate port pid
run_case() {
  local mode=$1 round=$2 cand=$3 port=$4 pid=$5
  local url="http://127.0.0.1:$port/" out="$S/$mode.$cand.r$round.out" log="$S/$mode.$cand.r$round.log"
  local wrk=(taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" --latency)
  local attempt t0 t1 s0 s1 f0 f1 other c0 c1 p
  for attempt in $(seq 1 $((RETRIES + 1))); do
    ((SECONDS < BUDGET)) || WAIT_IDLE=0   # past the budget: measure at once, flag a busy machine
    idle_gate
    if [[ $mode == closed ]] && ((WARMUP > 0)); then
      run_bounded $((WARMUP + 15)) "$S/warmup.out" "${wrk[@]}" -d"${WARMUP}s" "$url" || die "warm-up against $cand failed: $(tail -n 5 "$S/warmup.out")"
    fi
    c0=$(counts)
    t0=$(ticks "$pid"); f0=$(other_ticks); s0=$(now_ns)
    if [[ $mode == closed ]]; then
      run_bounded $((DURATION + 15)) "$out" "${wrk[@]}" -d"${DURATION}s" "$url" || die "wrk against $cand failed: $(tail -n 5 "$out")"
    else
      rm -f "$log"
      run_bounded $((DURATION + 15)) "$out" taskset -c "$LOAD_CPUS" h2load --h1 -t1 -c"$RATE_CONNS" --rps="$RATE_PER_CONN" \
        -n $((RATE * DURATION)) -r "$RAMP" --rate-period=1ms --log-file="$log" "$url" || die "h2load against $cand failed: $(tail -n 5 "$out")"
    fi
    s1=$(now_ns); f1=$(other_ticks); t1=$(ticks "$pid")
    c1=$(counts)
    alive_or_die "$pid" "${cand%%-*}"
    for p in "$F1_PID fast1" "$F2_PID fast2" "$SLOW_PID slow"; do alive_or_die $p; done
    other=$(other_pct "$f0" "$f1" "$s0" "$s1")
    ((other <= OTHER_MAX || SECONDS >= BUDGET)) && break
    ((attempt <= RETRIES)) && echo "#   round $round $mode $cand: other processes took ${other}% of a core meanwhile; measuring again" >&2
  done
  local res
  if [[ $mode == closed ]]; then res=$(parse_wrk "$out"); else res=$(parse_h2load "$out" "$log"); rm -f "$log"; fi
  awk -v OFS=, -v mode="$mode" -v round="$round" -v cand="$cand" -v res="$res" -v dt=$((t1 - t0)) -v clk="$CLK" \
      -v s0="$s0" -v s1="$s1" -v other="$other" -v attempt="$attempt" -v c0="$c0" -v c1="$c1" '
    BEGIN {
      secs = (s1 - s0) / 1e9
      split(res, x, " "); split(c0, a, " "); split(c1, b, " ")
      # Between two reads of a counter exactly one status query was counted.
      f1 = b[1] - a[1] - 1; f2 = b[2] - a[2] - 1; sl = b[3] - a[3] - 1; tot = f1 + f2 + sl
      print mode, round, cand, sprintf("%.3f", secs), x[5], sprintf("%.0f", x[1]), x[2], x[3], x[4],
            sprintf("%.1f", 100 * dt / clk / secs), (x[5] > 0 ? sprintf("%.2f", 1e6 * dt / clk / x[5]) : ""),
            f1, f2, sl, (tot > 0 ? sprintf("%.2f", 100 * sl / tot) : ""), other, attempt
    }' | tee -a "$RAW" | awk -F, '{ printf "#   round %s %-6s %-10s %7.0f req/s  p50 %6s us  p99 %6s us  errs %s  slow %5s%% (%s of %s)  proxy %5s%% cpu\n",
      $2, $1, $3, $6, $7, $8, $9, $15, $14, $12 + $13 + $14, $10 }' >&2
}

# ---------------------------------------------------------------- run
BG=$(busy_probe 1)
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -qv '^??' && echo "+dirty" || true)
echo "# balance.sh: $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -r); ringmesh $rev$dirty (sha256 $BIN_SUM, built $BIN_DATE)"
echo "# ringmesh: $WORKERS worker(s) on cpu $PROXY_CPUS, driver $RM_DRIVER, P2C peak-EWMA; haproxy $(haproxy -v | awk 'NR==1{print $3}') nbthread 1 on cpu $PROXY_CPUS, http-reuse always"
echo "# backends on cpu $BACKEND_CPUS: fast1, fast2 nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') (${FAST_MS} ms per curl fetch), slow python3 asyncio +${SLOW_MS} ms (${SLOW_MEASURED_MS} ms per curl fetch); ${BODY_BYTES}-byte bodies"
echo "# load on cpu $LOAD_CPUS, ${DURATION}s measured per case x $ROUNDS interleaved rounds: closed = wrk -t1 -c$CONNS (+${WARMUP}s warm-up); fixed = h2load --h1 $RATE req/s over $RATE_CONNS connections; machine busy before start: ${BG}%"
for r in $(seq 1 "$ROUNDS"); do
  echo "# round $r/$ROUNDS" >&2
  for c in "ringmesh $P_RM $RM_PID" "haproxy-rr $P_HAP_RR $HAP_PID" "haproxy-lc $P_HAP_LC $HAP_PID"; do
    read -r cand port pid <<<"$c"
    run_case closed "$r" "$cand" "$port" "$pid"
    [[ $FIXED == 1 ]] && run_case fixed "$r" "$cand" "$port" "$pid"
  done
done
RM_WARN=$(warnings "$S/ringmesh.log")

# ringmesh must drain and exit 0 on SIGTERM.
RM_STOP="exit 0"
kill -TERM "$RM_PID"
for i in $(seq 1 100); do kill -0 "$RM_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$RM_PID" 2>/dev/null; then
  RM_STOP="still running 10 s after SIGTERM"
else
  rc=0; wait "$RM_PID" || rc=$?; RM_STOP="exit $rc"
fi

# ---------------------------------------------------------------- report
# Per (mode, candidate): medians over rounds of req/s, p50, p99 and cpu; totals
# of requests, errors and per-backend counts; the worst round's other_cpu_pct.
summary=$(awk -F, -v OFS=, '
  function sortv(s, a,   k, i, j, t) { k = split(s, a, " ")
    for (i = 2; i <= k; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return k }
  function med(s,   a, k) { if (s == "") return ""; k = sortv(s, a); return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
  { k = $1 SUBSEP $3
    if (!(k in seen)) { seen[k] = 1; order[++n] = k; md[k] = $1; cand[k] = $3 }
    secs[k] += $4; reqs[k] += $5; errs[k] += $9; f1[k] += $12; f2[k] += $13; sl[k] += $14; att[k] += $17
    if ($16 + 0 > oth[k]) oth[k] = $16 + 0
    rps[k] = rps[k] " " $6; p50[k] = p50[k] " " $7; p99[k] = p99[k] " " $8; cpu[k] = cpu[k] " " $10
    if ($11 != "") per[k] = per[k] " " $11 }
  END {
    for (i = 1; i <= n; i++) { k = order[i]; tot = f1[k] + f2[k] + sl[k]
      print md[k], "median", cand[k], sprintf("%.3f", secs[k]), reqs[k], med(rps[k]), med(p50[k]), med(p99[k]), errs[k], med(cpu[k]), med(per[k]),
            f1[k], f2[k], sl[k], (tot > 0 ? sprintf("%.2f", 100 * sl[k] / tot) : ""), oth[k] + 0, att[k] } }' "$RAW")

mkdir -p "$(dirname "$CSV")"
{
  echo "mode,round,candidate,secs,requests,rps,p50_us,p99_us,errors,proxy_cpu_pct,proxy_us_per_req,fast1_reqs,fast2_reqs,slow_reqs,slow_pct,other_cpu_pct,attempts"
  cat "$RAW"
  echo "$summary"
} >"$CSV"

table() {  # mode title
  echo
  echo "$2"
  echo "$summary" | awk -F, -v m="$1" '
    BEGIN { printf "%-11s %8s %9s %9s %5s %7s %7s %7s %6s %10s\n", "candidate", "req/s", "p50 us", "p99 us", "errs", "fast1%", "fast2%", "slow%", "slow n", "proxy cpu%" }
    $1 == m { tot = $12 + $13 + $14
      printf "%-11s %8.0f %9.0f %9.0f %5d %7s %7s %7s %6d %10.1f\n", $3, $6, $7, $8, $9,
        (tot > 0 ? sprintf("%.2f", 100 * $12 / tot) : "-"), (tot > 0 ? sprintf("%.2f", 100 * $13 / tot) : "-"),
        (tot > 0 ? sprintf("%.2f", 100 * $14 / tot) : "-"), $14, $10 }'
}
table closed "closed loop: wrk -t1 -c$CONNS, as fast as each proxy goes (medians over $ROUNDS rounds; p50/p99 as wrk reports them, corrected for coordinated omission at each candidate's own rate; backend shares summed over the rounds)"
[[ $FIXED == 1 ]] && table fixed "fixed rate: h2load --h1 $RATE req/s over $RATE_CONNS connections, the same offered load for all (medians over $ROUNDS rounds; p50/p99 exact over every request)"
echo
echo "# ringmesh SIGTERM -> $RM_STOP; warning/error log lines: $RM_WARN"
echo "# CSV: $CSV"
total_errs=$(echo "$summary" | awk -F, '{ s += $9 } END { print s + 0 }')
dirty=$(awk -F, -v max="$OTHER_MAX" '$16 + 0 > max { printf "%s%s %s r%s (%s%%)", (n++ ? ", " : ""), $1, $3, $2, $16 }' "$RAW")
[[ -n $dirty ]] && echo "# WARNING: other processes took more than ${OTHER_MAX}% of a core during: $dirty"
((total_errs > 0)) && echo "# WARNING: $total_errs failed requests in total (errs columns)"
short=$(echo "$summary" | awk -F, -v r="$RATE" '$1 == "fixed" && $6 < 0.95 * r { printf "%s%s %.0f req/s", (n++ ? ", " : ""), $3, $6 }')
[[ -n $short ]] && echo "# WARNING: the fixed-rate load fell short of $RATE req/s (more RATE_CONNS?): $short"
((RM_WARN > 0)) && { echo "# WARNING: ringmesh logged $RM_WARN warning/error lines:"; grep -E ' (WARN|ERROR) ' "$S/ringmesh.log" | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/#   /'; }
# The target (issue 7): ringmesh's median p99 below both HAProxy medians, per
# mode, and in how many rounds it held on its own.
awk -F, -v rounds="$ROUNDS" '
  NR == FNR { p[$1, $2, $3] = $8 + 0; next }
  { m[$1] = 1; q[$1, $3] = $8 + 0 }
  END {
    for (md in m) {
      held = 0
      for (r = 1; r <= rounds; r++) if (p[md, r, "ringmesh"] < p[md, r, "haproxy-rr"] && p[md, r, "ringmesh"] < p[md, r, "haproxy-lc"]) held++
      rm = q[md, "ringmesh"]; rr = q[md, "haproxy-rr"]; lc = q[md, "haproxy-lc"]
      printf "# target (%s): ringmesh p99 %d us < haproxy roundrobin %d us and < leastconn %d us: %s (held in %d of %d rounds)\n",
        md, rm, rr, lc, (rm < rr && rm < lc ? "MET" : "MISSED"), held, rounds } }' "$RAW" <(echo "$summary") | sort
[[ $RM_STOP == "exit 0" ]] || { echo "# WARNING: ringmesh did not exit cleanly on SIGTERM"; exit 1; }
exit 0
