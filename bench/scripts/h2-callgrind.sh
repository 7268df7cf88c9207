#!/usr/bin/env bash
# h2-callgrind.sh - user-space instructions per proxied h2c -> h2c request,
# counted by valgrind's callgrind: deterministic (within ~0.3 %), so small
# CPU changes can be compared on a noisy or busy machine where timing
# cannot (CPU time per request still decides; this only shows where the
# instructions go and whether a change removed some).
#
# nginx h2c backend (1 worker) and the proxy under callgrind, h2load -t1
# -c4 -m8: a warm-up of 4000 requests, counters zeroed, then N requests
# counted. The proxy is a ringmesh binary (1 worker, explicit forward, the
# epoll driver: valgrind does not know io_uring) or `haproxy` (nbthread 1,
# h2 to the backend). Prints Ir (instructions) per request; KEEP=FILE keeps
# the callgrind profile for callgrind_annotate.
#
# Usage: bench/scripts/h2-callgrind.sh BIN|haproxy [N]
# Ports 28281 (backend), 28282 (proxy) on 127.0.0.1.
set -u
bin=$1
n=${2:-20000}
d=$(mktemp -d /tmp/h2-callgrind.XXXXXX)
trap 'kill $px $ng 2>/dev/null; wait 2>/dev/null; rm -rf "$d"' EXIT
cat >"$d/backend.conf" <<C
worker_processes 1;
pid $d/backend.pid;
error_log $d/backend.err warn;
events { worker_connections 1024; }
http {
  access_log off; keepalive_timeout 120s; keepalive_requests 10000000;
  client_body_temp_path $d/b; proxy_temp_path $d/p; fastcgi_temp_path $d/f;
  uwsgi_temp_path $d/u; scgi_temp_path $d/s;
  server { listen 127.0.0.1:28281 http2; location / { return 200 "ok\n"; } }
}
C
nginx -c "$d/backend.conf" -g 'daemon off;' 2>/dev/null &
ng=$!
vg=(valgrind --tool=callgrind --callgrind-out-file="$d/cg.%p")
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
  bind 127.0.0.1:28282 proto h2
  default_backend be_h2
backend be_h2
  server s1 127.0.0.1:28281 proto h2
C
  "${vg[@]}" haproxy -f "$d/haproxy.cfg" -db 2>"$d/vg.err" &
else
  env LINKERD2_PROXY_CORES=1 LINKERD2_PROXY_LOG=warn LINKERD2_PROXY_ADMIN_LISTEN_ADDR= \
    LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR= LINKERD2_PROXY_INBOUND_LISTEN_ADDR= RINGMESH_IO_DRIVER=epoll \
    RINGMESH_TCP_FORWARD=127.0.0.1:28282=127.0.0.1:28281 "${vg[@]}" "$bin" 2>"$d/vg.err" &
fi
px=$!
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/28282) 2>/dev/null && break; sleep 0.2; done
h2load -t1 -c4 -m8 -n 4000 http://127.0.0.1:28282/ >/dev/null 2>&1
callgrind_control -z "$px" >/dev/null 2>&1
out=$(h2load -t1 -c4 -m8 -n "$n" http://127.0.0.1:28282/ 2>&1)
callgrind_control -d "$px" >/dev/null 2>&1
sleep 1
ok=$(echo "$out" | awk '/^requests:/ {print $8}')
f=$(ls -t "$d"/cg.* | head -1)
ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$f")
echo "requests_ok $ok Ir $ir Ir/req $((ir / n))"
if [ -n "${KEEP:-}" ]; then cp "$f" "$KEEP"; fi
