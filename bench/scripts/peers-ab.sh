#!/usr/bin/env bash
# peers-ab.sh - interleaved A/B of ringmesh binaries in the issues' harness
# (../shared/bench/peers.sh), with the matching HAProxy case next to each.
#
# KIND picks the comparison:
#   h1   HTTP/1.1: h1-haproxy-http vs the binary as an explicit forward
#        (detects HTTP/1 and proxies per request)
#   tcp  opaque TCP: h1-haproxy-tcp vs the binary with the backend's port
#        opaque (RINGMESH_OUTBOUND_OPAQUE_PORTS), so it relays bytes
#   h2   h2c -> h2c: h2-haproxy-h2 vs the binary forwarding to the h2c port
# Per round, one peers.sh invocation per binary, 1 worker; the binaries'
# order alternates between rounds so drift hits them alike. Prints the two
# peers.sh rows of each invocation prefixed with the round and binary; read
# `proxy_us` (CPU µs per request) and its ratio to HAProxy's in the same
# invocation, and skip rows whose bg% is high (something else ran).
#
# Usage: bench/scripts/peers-ab.sh KIND ROUNDS BIN_A BIN_B [BIN ...]
#   DURATION=6   seconds measured per case; PEERS= path of peers.sh
set -u
kind=$1 rounds=$2
shift 2
peers=${PEERS:-$(dirname "$0")/../../../shared/bench/peers.sh}
base="env LINKERD2_PROXY_CORES=1 LINKERD2_PROXY_LOG=warn LINKERD2_PROXY_ADMIN_LISTEN_ADDR= LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR= LINKERD2_PROXY_INBOUND_LISTEN_ADDR="
case $kind in
  h1) cases=h1-haproxy-http,h1-candidate var=CANDIDATE_H1 extra="RINGMESH_TCP_FORWARD=127.0.0.1:{LISTEN}=127.0.0.1:{UPSTREAM}" ;;
  tcp) cases=h1-haproxy-tcp,h1-candidate var=CANDIDATE_H1 extra="RINGMESH_OUTBOUND_OPAQUE_PORTS={UPSTREAM} RINGMESH_TCP_FORWARD=127.0.0.1:{LISTEN}=127.0.0.1:{UPSTREAM}" ;;
  h2) cases=h2-haproxy-h2,h2-candidate var=CANDIDATE_H2 extra="RINGMESH_TCP_FORWARD=127.0.0.1:{LISTEN}=127.0.0.1:{UPSTREAM_H2}" ;;
  *) echo "peers-ab.sh: KIND is h1, tcp or h2" >&2; exit 2 ;;
esac
rows="^ *(${cases/,/|}) "
for r in $(seq 1 "$rounds"); do
  bins=("$@")
  if (( r % 2 == 0 )); then
    mapfile -t bins < <(printf '%s\n' "$@" | tac)
  fi
  for b in "${bins[@]}"; do
    out=$(bash "$peers" ROUNDS=1 DURATION="${DURATION:-6}" CASES="$cases" "$var=$base $extra $b" 2>&1)
    echo "$out" | grep -E "$rows" | sed "s|^|r$r $(basename "$b") |"
  done
done
