#!/usr/bin/env bash
# Runs every test: unit, property and integration (real sockets on loopback;
# network namespaces with iptables REDIRECT, which need root). Installs the
# Debian packages the tests drive when they are missing.
#   sudo bash scripts/test.sh            # everything
#   sudo bash scripts/test.sh -p ringmesh-engine --test l4   # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the transparent-mode tests need root (network namespaces, iptables); run with sudo" >&2
    exit 1
fi
bash scripts/install-test-deps.sh
if [ $# -eq 0 ]; then
    set -- --workspace
fi
cargo test --locked "$@"
