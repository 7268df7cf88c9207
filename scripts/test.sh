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
# The in-process tests run many proxies, their clients and backends in one
# process: their descriptors go up to the hard limit,
# as a low soft limit (1024 on many systems) would make the proxies refuse
# connections into their descriptor reserve (engine/src/fd_limit.rs).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ $# -eq 0 ]; then
    set -- --workspace
fi
# Every test binary runs (--no-fail-fast); a test that failed is run once
# more, alone, and the run passes only if it then passes (it is reported as
# FLAKY): see scripts/rerun-failed.py for when there is no second chance.
log=$(mktemp /tmp/ringmesh-test.XXXXXX.log)
if cargo test --locked --no-fail-fast "$@" 2>&1 | tee "$log"; then
    rm -f "$log"
    exit 0
fi
python3 scripts/rerun-failed.py "$log"
