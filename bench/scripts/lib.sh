# lib.sh - what ringmesh's bench scripts share: tools, scratch dir and process
# handling, CPU accounting and the quiet-machine gate. Sourced, not run; the
# sourcing script sets ME (its name), ROOT (the workspace) and SETTINGS,
# calls parse_settings "$@", and sets KEEP, WAIT_IDLE, OTHER_MAX and RETRIES
# before using the rest.

# parse_settings "$@": KEY=value arguments whose KEY matches the sourcing
# script's SETTINGS pattern become exported variables; -h/--help prints the
# script's header comment; anything else is an error (exit 2).
parse_settings() {
  local arg k
  for arg in "$@"; do
    case $arg in
      -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
      [A-Z]*=*) k=${arg%%=*}
                [[ $k =~ ^($SETTINGS)$ ]] || { echo "$ME: unknown setting $k (see -h)" >&2; exit 2; }
                export "${arg?}" ;;
      *) echo "$ME: unknown argument '$arg' (settings are KEY=value; see -h)" >&2; exit 2 ;;
    esac
  done
}

# parse_wrk FILE (wrk --latency output) -> rps p50 p99 errors requests.
# wrk 4 reports percentiles corrected for coordinated omission: each latency
# above the mean per-connection interval (runtime / (requests / connections))
# also counts the requests that connection would have sent meanwhile at its
# average rate.
parse_wrk() {
  awk '
    function us(v) { if (v ~ /us$/) { sub(/us$/, "", v); return v + 0 }
                     if (v ~ /ms$/) { sub(/ms$/, "", v); return v * 1000 }
                     if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60e6 }
                     if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1e6 }
                     return v + 0 }
    /Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = us($2) }
    $1 == "99%" { p99 = us($2) }
    / requests in / { reqs = $1 }
    /Non-2xx or 3xx responses:/ { e += $NF }
    /Socket errors:/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { x = $i; sub(/,/, "", x); e += x } }
    END { printf "%s %.0f %.0f %d %s\n", (rps == "" ? 0 : rps), p50, p99, e, (reqs == "" ? 0 : reqs) }' "$1"
}
# parse_h2load OUT LOG (h2load output and its --log-file) -> rps p50 p99
# errors requests, the percentiles exact over every request in the log (its
# third column: microseconds to the end of the response).
parse_h2load() {
  local p50 p99 rps errs reqs
  read -r p50 p99 < <({ [[ -s $2 ]] && cut -f3 "$2" | sort -n; } | awk '{ a[NR] = $1 }
    END { if (NR == 0) { print "0 0"; exit }
          i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999); printf "%d %d\n", a[i50], a[i99] }')
  read -r rps errs reqs < <(awk '
    /^finished in/ { r = $4; sub(/,$/, "", r); rps = r }
    /^requests:/ { for (i = 1; i <= NF; i++) { if ($(i + 1) ~ /^(failed|errored|timeout),?$/) e += $i; if ($(i + 1) ~ /^succeeded,?$/) ok = $i } }
    /^status codes:/ { for (i = 2; i <= NF; i++) if ($(i + 1) ~ /^[345]xx,?$/) e += $i }
    END { printf "%s %d %s\n", (rps == "" ? 0 : rps), e, (ok == "" ? 0 : ok) }' "$1")
  echo "$rps $p50 $p99 $errs $reqs"
}

# need_tools tool... : installs missing Debian packages (as root) or explains.
need_tools() {
  PATH=$PATH:/usr/sbin:/sbin   # nginx and haproxy live in sbin on Debian
  local t missing=() pkgs=()
  for t in "$@"; do command -v "$t" >/dev/null || missing+=("$t"); done
  ((${#missing[@]})) || return 0
  for t in "${missing[@]}"; do
    case $t in
      h2load) pkgs+=(nghttp2-client) ;;
      taskset) pkgs+=(util-linux) ;;
      curl|wrk|haproxy|nginx|iperf3) pkgs+=("$t") ;;
      *) echo "$ME: '$t' not found on PATH" >&2; exit 2 ;;
    esac
  done
  if [[ $(id -u) != 0 ]]; then
    echo "$ME: missing ${missing[*]}; run as root to install them, or: sudo apt-get install -y ${pkgs[*]}" >&2
    exit 2
  fi
  echo "# installing ${pkgs[*]} from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y "${pkgs[@]}" >&2 || { apt-get update >&2 && apt-get install -y "${pkgs[@]}" >&2; }
  for t in "${missing[@]}"; do command -v "$t" >/dev/null || { echo "$ME: '$t' still not found" >&2; exit 2; }; done
}

# ringmesh_bin: sets BIN (RINGMESH_BIN, or target/release/ringmesh, built if
# missing), BIN_SUM and BIN_DATE.
ringmesh_bin() {
  if [[ -n ${RINGMESH_BIN:-} ]]; then
    BIN=$RINGMESH_BIN
  else
    BIN=$ROOT/target/release/ringmesh
    if [[ ! -x $BIN ]]; then
      echo "# building $BIN" >&2
      (cd "$ROOT" && cargo build --release -p ringmesh-engine) >&2
    fi
  fi
  [[ -x $BIN ]] || { echo "$ME: ringmesh binary $BIN is not executable" >&2; exit 2; }
  BIN_SUM=$(sha256sum "$BIN" | cut -c1-12)
  BIN_DATE=$(date -r "$BIN" '+%F %T')
}

# ---------------------------------------------------------------- processes
listening() {  # port -> true if something listens on 127.0.0.1:port or *:port (/proc/net/tcp, no connect)
  local hex
  hex=$(printf '%04X' "$1")
  awk -v h="$hex" '$4=="0A" && ($2=="0100007F:" h || $2=="00000000:" h) {f=1} END{exit !f}' /proc/net/tcp
}
ports_free() {  # port... : exits when one is taken
  local p
  for p in "$@"; do
    ! listening "$p" || { echo "$ME: 127.0.0.1:$p is already in use (another run? see the *_PORT settings)" >&2; exit 2; }
  done
}
# scratch_dir: makes $S (removed on exit unless KEEP=1 or a failure) with a
# private copy of $BIN as $S/ringmesh, and installs the exit trap that stops
# every process started with start_bg.
scratch_dir() {
  S=$(mktemp -d "/tmp/${ME%.sh}.XXXXXX")
  chmod 755 "$S"   # nginx workers run as nobody when started by root
  cp "$BIN" "$S/ringmesh"   # a rebuild next door during the run must not change what is measured
  PIDS=()          # long-running servers, stopped on exit
  CUR=""           # the running load generator, if any
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# nginx_conf name server-blocks: an nginx.conf (1 worker, no access log, its
# pid, error log and temp dirs under $S/name*) around the given server and
# upstream blocks, on stdout. Keep-alive is effectively unlimited: nginx
# closes a keep-alive connection after 1000 requests by default, and a
# reconnect would put connection set-up cost into a per-request number.
nginx_conf() {
  mkdir -p "$S/$1-tmp"
  cat <<EOF
worker_processes 1;
pid $S/$1.pid;
error_log $S/$1.err warn;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  http2_max_requests 100000000;
  client_body_temp_path $S/$1-tmp/body;
  proxy_temp_path $S/$1-tmp/proxy;
  fastcgi_temp_path $S/$1-tmp/fastcgi;
  uwsgi_temp_path $S/$1-tmp/uwsgi;
  scgi_temp_path $S/$1-tmp/scgi;
$2
}
EOF
}

stop_pid() {  # pid: TERM (and its children), wait up to 3 s, then KILL
  local p=$1 kids="" k i
  [[ -r /proc/$p/task/$p/children ]] && kids=$(<"/proc/$p/task/$p/children")
  kill -TERM "$p" 2>/dev/null || return 0
  for i in $(seq 1 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  for k in $kids; do kill -KILL "$k" 2>/dev/null || true; done
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n $CUR ]] && kill -TERM "$CUR" 2>/dev/null && wait "$CUR" 2>/dev/null
  local p
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  if [[ $KEEP == 1 || $rc != 0 ]]; then echo "# scratch dir kept: $S" >&2; else rm -rf "$S"; fi
  exit "$rc"
}
die() { echo "$ME: $*" >&2; exit 1; }


LASTPID=""
start_bg() {  # cpus name cmd...   (output -> $S/name.log)
  local cpus=$1 name=$2; shift 2
  taskset -c "$cpus" "$@" >"$S/$name.log" 2>&1 &
  LASTPID=$!
  PIDS+=("$LASTPID")
}
wait_listen() {  # pid name port...
  local pid=$1 name=$2 p i; shift 2
  for p in "$@"; do
    for i in $(seq 1 100); do
      listening "$p" && continue 2
      kill -0 "$pid" 2>/dev/null || { tail -n 20 "$S/$name.log" >&2; die "$name exited during start-up"; }
      sleep 0.05
    done
    tail -n 20 "$S/$name.log" >&2; die "$name is not listening on 127.0.0.1:$p after 5 s"
  done
}

# ---------------------------------------------------------------- measuring
CLK=$(getconf CLK_TCK)
ticks() {  # pid -> utime+stime of the process (all threads), in clock ticks
  local line f
  read -r line <"/proc/$1/stat" || { echo 0; return; }
  line=${line##*) }
  read -r -a f <<<"$line"
  echo $((f[11] + f[12]))
}
now_ns() { date +%s%N; }
warnings() {  # log file -> number of warning/error lines so far
  local n
  n=$(grep -c -E ' (WARN|ERROR) |\[(WARNING|ALERT)\]' "$1" 2>/dev/null) || true
  echo "${n:-0}"
}
alive_or_die() {  # pid name
  kill -0 "$1" 2>/dev/null && return 0
  local rc=0
  wait "$1" 2>/dev/null || rc=$?
  echo "--- last lines of $2's log:" >&2; tail -n 30 "$S/$2.log" >&2
  die "$2 (pid $1) died during the run (exit status $rc)"
}
busy_probe() {  # seconds -> % of all CPU time busy over that time (nothing of ours is running)
  local a b
  a=$(awk '$1=="cpu"{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
  sleep "$1"
  b=$(awk '$1=="cpu"{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN{split(a,x," "); split(b,y," "); t=y[2]-x[2]; printf "%.0f", (t > 0 ? 100*(y[1]-x[1])/t : 0)}'
}
idle_gate() {  # waits up to WAIT_IDLE s until the machine is < 10% busy over 0.5 s
  local t0=$SECONDS bg
  bg=$(busy_probe 0.5)
  while ((bg >= 10 && SECONDS - t0 < WAIT_IDLE)); do
    sleep 2
    bg=$(busy_probe 0.5)
  done
  ((SECONDS - t0 > 1)) && echo "#   (waited $((SECONDS - t0)) s for an idle machine; now ${bg}% busy)" >&2
  return 0
}
# CPU ticks (utime+stime+cutime+cstime) of every user-space process that is not
# this script or one of its descendants. The delta over a window is what others
# (a compile next door) took from the cores while we measured; a child that
# exited and was reaped shows up in its parent's cutime. Kernel threads are left
# out: ksoftirqd may be doing our own loopback work.
other_ticks() {
  # processes come and go between the glob and the read: cat's complaint is expected
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v me=$$ '
    { pid = $1; l = $0; sub(/^.*\) /, "", l); split(l, f, " ")
      pp[pid] = f[2] + 0; t[pid] = f[12] + f[13] + f[14] + f[15] }
    END { for (p in t) {
            q = p + 0; ours = 0; n = 0
            while (q > 2 && n++ < 128) { if (q == me) { ours = 1; break }; q = pp[q] + 0 }
            if (ours || q == 2 || p == 2) continue
            s += t[p] }
          print s + 0 }'
}
other_pct() {  # ticks0 ticks1 ns0 ns1 -> % of one core, rounded
  awk -v a="$1" -v b="$2" -v s0="$3" -v s1="$4" -v clk="$CLK" 'BEGIN{printf "%.0f", 100 * (b - a) / clk / ((s1 - s0) / 1e9)}'
}

run_bounded() {  # seconds out cmd...   run in the background so INT/TERM stay responsive
  local secs=$1 out=$2 rc=0; shift 2
  timeout -k 5 "$secs" "$@" >"$out" 2>&1 &
  CUR=$!
  wait "$CUR" || rc=$?
  CUR=""
  return "$rc"
}

CSV_HEADER='test,round,candidate,ringmesh_driver,secs,conns,requests,rps,rps_min,rps_max,p50_us,p99_us,errors,proxy_cpu_pct,proxy_us_per_req,us_per_req_vs_haproxy,gbit_s,gbit_s_min,gbit_s_max,pct_of_direct,proxy_log_warnings,other_cpu_pct,attempts'
