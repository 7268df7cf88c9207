#!/usr/bin/env bash
# h2-profile.sh - one h2c -> h2c window in the issues' layout, by hand, with
# the per-request counters peers.sh does not show; optionally under perf.
#
# nginx h2c backend (1 worker) and the proxy on cpu1, h2load -t1 -c4 -m8 on
# cpu0 (1 s warm-up, then SECS measured). The proxy is a ringmesh binary (1
# worker, explicit forward, admin on 127.0.0.1:28090) or `haproxy` (nbthread 1,
# h2 to the backend). Prints h2load's summary and, per request: proxy CPU and
# user time (µs, /proc), io_uring enters and completions
# (ringmesh_worker_uring_*), TCP segments sent (nstat, all of loopback) and the
# proxy's context switches.
#
# Usage: bench/scripts/h2-profile.sh BIN|haproxy SECS [perf record options...]
#   e.g. bench/scripts/h2-profile.sh target/release/ringmesh 4 -F 999 -g -o /tmp/h2.data
# Ports 28081 (backend), 28082 (proxy), 28090 (admin) on 127.0.0.1.
set -u
bin=$1
secs=${2:-5}
shift 2
d=$(mktemp -d /tmp/h2-profile.XXXXXX)
trap 'kill $px $ng 2>/dev/null; wait 2>/dev/null; rm -rf "$d"' EXIT
mkdir -p "$d/tmp"
cat >"$d/backend.conf" <<C
worker_processes 1;
pid $d/backend.pid;
error_log $d/backend.err warn;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off; keepalive_timeout 120s; keepalive_requests 10000000;
  client_body_temp_path $d/tmp/body; proxy_temp_path $d/tmp/proxy; fastcgi_temp_path $d/tmp/fcgi;
  uwsgi_temp_path $d/tmp/uwsgi; scgi_temp_path $d/tmp/scgi;
  server { listen 127.0.0.1:28081 http2; location / { return 200 "ok\n"; } }
}
C
taskset -c 1 nginx -c "$d/backend.conf" -g 'daemon off;' 2>"$d/nginx.err" &
ng=$!
if [ "$bin" = haproxy ]; then
  cat >"$d/haproxy.cfg" <<C
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse safe
frontend fe_h2h2
  bind 127.0.0.1:28082 proto h2
  default_backend be_h2
backend be_h2
  server s1 127.0.0.1:28081 proto h2
C
  taskset -c 1 haproxy -f "$d/haproxy.cfg" -db 2>"$d/proxy.err" &
else
  env LINKERD2_PROXY_CORES=1 LINKERD2_PROXY_LOG=warn LINKERD2_PROXY_ADMIN_LISTEN_ADDR=127.0.0.1:28090 \
    LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR= LINKERD2_PROXY_INBOUND_LISTEN_ADDR= \
    RINGMESH_TCP_FORWARD=127.0.0.1:28082=127.0.0.1:28081 taskset -c 1 "$bin" 2>"$d/proxy.err" &
fi
px=$!
sleep 0.5
metric() { curl -s 127.0.0.1:28090/metrics | awk -v k="$1" '$1 ~ "^"k {s+=$2} END {print s+0}'; }
cpu() { awk -v f="$1" '{print (f == "user") ? $14 : $14 + $15}' "/proc/$px/stat"; }
switches() { cat /proc/"$px"/task/*/status | awk '/ctxt_switches/ {s+=$2} END {print s}'; }
taskset -c 0 h2load -t1 -c4 -m8 -D 1 http://127.0.0.1:28082/ >/dev/null 2>&1
e0=$(metric ringmesh_worker_uring_enters_total)
c0=$(metric ringmesh_worker_uring_completions_total)
t0=$(cpu all)
u0=$(cpu user)
s0=$(switches)
nstat -n >/dev/null
if [ $# -gt 0 ]; then
  perf record "$@" -p "$px" -- sleep "$secs" >/dev/null 2>&1 &
  pf=$!
fi
out=$(taskset -c 0 h2load -t1 -c4 -m8 -D "$secs" http://127.0.0.1:28082/ 2>&1)
t1=$(cpu all)
u1=$(cpu user)
s1=$(switches)
segs=$(nstat -z TcpOutSegs | awk '/TcpOutSegs/ {print $2}')
e1=$(metric ringmesh_worker_uring_enters_total)
c1=$(metric ringmesh_worker_uring_completions_total)
[ $# -gt 0 ] && wait "$pf"
n=$(echo "$out" | awk '/^requests:/ {print $2}')
tck=$(getconf CLK_TCK)
echo "$out" | grep -E '^finished|^requests'
awk -v n="$n" -v t=$((t1 - t0)) -v u=$((u1 - u0)) -v tck="$tck" -v e=$((e1 - e0)) -v c=$((c1 - c0)) \
  -v segs="$segs" -v s=$((s1 - s0)) 'BEGIN {
  printf "per request: proxy_us %.2f user_us %.2f uring_enters %.3f uring_completions %.3f tcp_segs %.2f ctx_switches %.3f\n",
    t * 1e6 / tck / n, u * 1e6 / tck / n, e / n, c / n, segs / n, s / n }'
