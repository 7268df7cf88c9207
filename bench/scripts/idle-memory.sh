#!/usr/bin/env bash
# idle-memory.sh - ringmesh's memory with many idle HTTP/1 keep-alive client
# connections, and how much of it goes back after they close.
#
# What it measures (VmRSS from /proc/PID/status, one ringmesh worker)
#   1. idle: RSS of a fresh ringmesh with one worker and one forward, after
#      one request (so the worker's lazily built state exists).
#   2. held: CONNS client connections, each having completed one keep-alive
#      request through an explicit forward (RINGMESH_TCP_FORWARD) to a small
#      keep-alive backend, all left open and idle. Per connection =
#      (held - idle) / CONNS.
#   3. released: RSS SETTLE seconds after all of them closed.
#
# Settings (KEY=value arguments or environment)
#   BIN=target/release/ringmesh  the binary
#   DRIVERS="uring epoll"       RINGMESH_IO_DRIVER values, one run each
#   CONNS=10000                 idle keep-alive connections
#   SETTLE=30                   seconds after closing before the last sample
#   EXTRA_ENV=""                more VAR=value for ringmesh (space separated)
#   CSV=target/bench/idle-memory.csv
#   LOG=/dev/null               where ringmesh's stderr goes
#
# Targets (issue 13, item 6): <= 4 KiB per idle connection, released RSS
# within 20 % of idle, idle <= 10 MiB with one worker. Every process the
# script starts is stopped on exit (trap, by pid); every wait is bounded.
set -euo pipefail
ME=idle-memory.sh
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SETTINGS='BIN|DRIVERS|CONNS|SETTLE|EXTRA_ENV|CSV|LOG'
# shellcheck source=lib.sh
source "$ROOT/bench/scripts/lib.sh"
parse_settings "$@"
BIN=${BIN:-$ROOT/target/release/ringmesh}
DRIVERS=${DRIVERS:-uring epoll}
CONNS=${CONNS:-10000}
SETTLE=${SETTLE:-30}
EXTRA_ENV=${EXTRA_ENV:-}
CSV=${CSV:-$ROOT/target/bench/idle-memory.csv}
[[ -x $BIN ]] || { echo "$ME: $BIN missing (cargo build --release --bin ringmesh)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "$ME: python3 needed" >&2; exit 1; }
mkdir -p "$(dirname "$CSV")"
want=$((CONNS + 1000)); hard=$(ulimit -Hn)
[[ $hard == unlimited || $hard -ge $want ]] || { echo "$ME: ulimit -Hn $hard < $want" >&2; exit 1; }
ulimit -n "$want"

# The client and backend: one python process. The backend answers every
# request on a keep-alive connection with a 2-byte body; the client opens
# CONNS connections one after another through the proxy, each sends one GET
# and reads the answer, and then they are held until stdin says "close".
PY=$(mktemp /tmp/idle-memory.XXXXXX.py)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -f "$PY"
}
trap cleanup EXIT
cat >"$PY" <<'EOF'
import socket, sys, threading, time
def backend(ls):
    def one(c):
        buf = b""
        try:
            while True:
                d = c.recv(4096)
                if not d:
                    return
                buf += d
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            pass
        finally:
            c.close()
    while True:
        c, _ = ls.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()
cmd = sys.argv[1]
if cmd == "backend":
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0)); ls.listen(1024)
    print(ls.getsockname()[1], flush=True)
    backend(ls)
elif cmd == "clients":
    addr = ("127.0.0.1", int(sys.argv[2])); n = int(sys.argv[3])
    req = b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n"
    held = []
    end = time.time() + 120
    for i in range(n):
        if time.time() > end:
            print("timeout after %d" % i, flush=True); sys.exit(1)
        s = socket.create_connection(addr, timeout=10)
        s.sendall(req)
        got = b""
        while not got.endswith(b"ok"):
            d = s.recv(4096)
            if not d:
                print("closed at %d" % i, flush=True); sys.exit(1)
            got += d
        held.append(s)
    print("held", flush=True)
    sys.stdin.readline()
    for s in held:
        s.close()
    print("closed", flush=True)
    sys.stdin.readline()
EOF

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Waits (bounded) until a TCP port accepts.
wait_port() {
  local i
  for i in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$ME: port $1 never opened" >&2; return 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

[[ -s $CSV ]] || echo "driver,conns,idle_kib,held_kib,per_conn_bytes,released_kib,released_vs_idle" >"$CSV"
BPORT=$(mktemp /tmp/idle-memory.XXXXXX.port)
python3 "$PY" backend >"$BPORT" &
PIDS+=("$!")
for _ in $(seq 1 100); do [[ -s $BPORT ]] && break; sleep 0.05; done
read -r UPSTREAM <"$BPORT"
rm -f "$BPORT"

for driver in $DRIVERS; do
  LISTEN=$(free_port)
  # shellcheck disable=SC2086
  env -i PATH="$PATH" LINKERD2_PROXY_CORES=1 RINGMESH_IO_DRIVER="$driver" \
    LINKERD2_PROXY_ADMIN_LISTEN_ADDR= LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR= LINKERD2_PROXY_INBOUND_LISTEN_ADDR= \
    RINGMESH_TCP_FORWARD="127.0.0.1:$LISTEN=127.0.0.1:$UPSTREAM" LINKERD2_PROXY_LOG=warn $EXTRA_ENV \
    "$BIN" 2>>"${LOG:-/dev/null}" &
  RM=$!
  PIDS+=("$RM")
  wait_port "$LISTEN"
  timeout 10 python3 "$PY" clients "$LISTEN" 1 </dev/null >/dev/null || true
  sleep 1
  idle=$(rss_kib "$RM")
  coproc CLIENTS { exec timeout 300 python3 "$PY" clients "$LISTEN" "$CONNS"; }
  CPID=$CLIENTS_PID
  PIDS+=("$CPID")
  read -r -t 150 line <&"${CLIENTS[0]}" || line="(no answer)"
  [[ $line == held ]] || { echo "$ME: clients: $line" >&2; exit 1; }
  sleep 1
  held=$(rss_kib "$RM")
  echo close >&"${CLIENTS[1]}"
  read -r -t 60 line <&"${CLIENTS[0]}" || true
  sleep "$SETTLE"
  released=$(rss_kib "$RM")
  echo done >&"${CLIENTS[1]}" || true
  wait "$CPID" 2>/dev/null || true
  kill "$RM"; wait "$RM" 2>/dev/null || true
  per=$(( (held - idle) * 1024 / CONNS ))
  pct=$(awk -v r="$released" -v i="$idle" 'BEGIN { printf "%.0f", (r - i) * 100 / i }')
  printf '%s: idle %d KiB, %d idle connections %d KiB (%d bytes each), %ds after closing %d KiB (%+d%% of idle)\n' \
    "$driver" "$idle" "$CONNS" "$held" "$per" "$SETTLE" "$released" "$pct"
  echo "$driver,$CONNS,$idle,$held,$per,$released,$pct" >>"$CSV"
done
