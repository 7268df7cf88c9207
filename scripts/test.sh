#!/usr/bin/env bash
# Runs every test: unit, property and integration (real sockets on loopback,
# network namespaces with iptables REDIRECT; needs root, see README).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
