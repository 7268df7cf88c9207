#!/usr/bin/env bash
# scrape-flood.sh - what a flood of /metrics scrapes costs the data path:
# for each binary, HTTP/1.1 req/s through an explicit forward to nginx
# alone, then beside wrk scraping the admin port with 16 connections back
# to back. Binaries alternate between rounds. The proxy (one worker, its
# control core with it) and nginx share PROXY_CPU; both wrk runs CLIENT_CPU.
#
# Usage: bench/scripts/scrape-flood.sh [KEY=value ...] BIN [BIN ...]
#   ROUNDS=2 DURATION=4 CLIENT_CPU=0 PROXY_CPU=1
set -euo pipefail
ME=scrape-flood.sh
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SETTINGS='ROUNDS|DURATION|CLIENT_CPU|PROXY_CPU'
bins=()
for a in "$@"; do
  case $a in [A-Z]*=*) args+=("$a") ;; *) bins+=("$a") ;; esac
done
# shellcheck source=lib.sh
source "$ROOT/bench/scripts/lib.sh"
parse_settings "${args[@]+"${args[@]}"}"
ROUNDS=${ROUNDS:-2} DURATION=${DURATION:-4} CLIENT_CPU=${CLIENT_CPU:-0} PROXY_CPU=${PROXY_CPU:-1}
((${#bins[@]} > 0)) || { echo "$ME: name at least one binary (see -h)" >&2; exit 2; }
need_tools wrk nginx taskset
S=$(mktemp -d /tmp/scrape-flood.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$S"
}
trap cleanup EXIT INT TERM
NGINX_PORT=18380
cat >"$S/nginx.conf" <<NG
worker_processes 1; pid $S/nginx.pid; error_log $S/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:$NGINX_PORT; location / { return 200 "ok\n"; } } }
NG
taskset -c "$PROXY_CPU" nginx -c "$S/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
rps() { awk '/Requests\/sec/ { print $2 }' "$1"; }
printf '%-6s %-28s %14s %18s %14s\n' round binary alone_rps beside_flood_rps flood_scrapes_s
port=18400
for r in $(seq 1 "$ROUNDS"); do
  for bin in "${bins[@]}"; do
    # Fresh ports each run: a killed proxy's sockets can outlive it briefly.
    port=$((port + 2))
    env LINKERD2_PROXY_CORES=1 LINKERD2_PROXY_LOG=warn LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR= \
      LINKERD2_PROXY_INBOUND_LISTEN_ADDR= LINKERD2_PROXY_ADMIN_LISTEN_ADDR=127.0.0.1:$((port + 1)) \
      RINGMESH_TCP_FORWARD=127.0.0.1:$port=127.0.0.1:$NGINX_PORT \
      taskset -c "$PROXY_CPU" "$bin" >"$S/proxy.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do
      curl -sf -o /dev/null "http://127.0.0.1:$((port + 1))/ready" && break
      sleep 0.1
    done
    taskset -c "$CLIENT_CPU" wrk -t1 -c16 -d1s "http://127.0.0.1:$port/" >/dev/null
    taskset -c "$CLIENT_CPU" wrk -t1 -c16 -d"${DURATION}s" "http://127.0.0.1:$port/" >"$S/alone.txt"
    taskset -c "$CLIENT_CPU" wrk -t1 -c16 -d"$((DURATION + 2))s" "http://127.0.0.1:$((port + 1))/metrics" >"$S/flood.txt" &
    flood=$!
    sleep 1
    taskset -c "$CLIENT_CPU" wrk -t1 -c16 -d"${DURATION}s" "http://127.0.0.1:$port/" >"$S/beside.txt"
    wait "$flood"
    printf '%-6s %-28s %14s %18s %14s\n' "r$r" "$(basename "$bin")" "$(rps "$S/alone.txt")" "$(rps "$S/beside.txt")" "$(rps "$S/flood.txt")"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done
