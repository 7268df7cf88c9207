#!/usr/bin/env bash
# h2-ab.sh - interleaved A/B of ringmesh binaries on h2c -> h2c in the issues'
# harness (../shared/bench/peers.sh), HAProxy (`h2-haproxy-h2`) next to each.
#
# Per round, one peers.sh invocation per binary (HAProxy + the binary as the
# h2c candidate: 1 worker, explicit forward to the backend's h2c port); the
# binaries' order alternates between rounds so drift hits them alike. Prints
# the two peers.sh rows of each invocation prefixed with the round and binary.
#
# Usage: bench/scripts/h2-ab.sh ROUNDS BIN_A BIN_B [BIN ...]
#   DURATION=6   seconds measured per case; PEERS= path of peers.sh
set -u
rounds=$1
shift
peers=${PEERS:-$(dirname "$0")/../../../shared/bench/peers.sh}
for r in $(seq 1 "$rounds"); do
  bins=("$@")
  if (( r % 2 == 0 )); then
    mapfile -t bins < <(printf '%s\n' "$@" | tac)
  fi
  for b in "${bins[@]}"; do
    out=$(bash "$peers" ROUNDS=1 DURATION="${DURATION:-6}" CASES=h2-haproxy-h2,h2-candidate \
      CANDIDATE_H2="env LINKERD2_PROXY_CORES=1 LINKERD2_PROXY_LOG=warn LINKERD2_PROXY_ADMIN_LISTEN_ADDR= LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR= LINKERD2_PROXY_INBOUND_LISTEN_ADDR= RINGMESH_TCP_FORWARD=127.0.0.1:{LISTEN}=127.0.0.1:{UPSTREAM_H2} $b" 2>&1)
    echo "$out" | grep -E '^ *(h2-haproxy-h2|h2-candidate) ' | sed "s|^|r$r $(basename "$b") |"
  done
done
