#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and fails on any
# crash, leak or timeout (CI runs it from .ci/run; a person can too).
#   bash scripts/fuzz.sh                 # every target, FUZZ_SECONDS each
#   FUZZ_SECONDS=300 bash scripts/fuzz.sh h2_server http1_transport
# Corpus: fuzz/corpus/<target> (scratch, git-ignored) first, then the
# checked-in fuzz/seeds/<target>. A crash leaves its input in
# fuzz/artifacts/<target>/ and this script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH="${FUZZ_SECONDS:-20}"
# One known false leak (glibc's thread-local destructor record): fuzz/lsan.supp.
export LSAN_OPTIONS="suppressions=$PWD/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

# AddressSanitizer needs a nightly toolchain. Without one, cargo-fuzz still
# instruments for coverage on stable with --sanitizer none: fuzzing runs,
# memory errors in unsafe code go unseen; say so loudly.
if rustup run nightly rustc --version >/dev/null 2>&1; then
    TOOLCHAIN=(+nightly)
    SANITIZER=(--sanitizer address)
else
    echo "scripts/fuzz.sh: WARNING: no nightly toolchain (rustup toolchain install nightly);" >&2
    echo "scripts/fuzz.sh: WARNING: fuzzing on stable WITHOUT AddressSanitizer (--sanitizer none)" >&2
    TOOLCHAIN=()
    SANITIZER=(--sanitizer none)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo "${TOOLCHAIN[@]}" fuzz list)
fi
# One build for every target (cargo-fuzz's default: optimised, with debug
# assertions and overflow checks).
cargo "${TOOLCHAIN[@]}" fuzz build "${SANITIZER[@]}"

# What the targets write (static_loader's discovery file, under the temp
# dir) goes in a directory of this run's own, removed at exit: a fuzzed
# process ends by exit or abort, never through a destructor.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failed=()
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    echo "== fuzz $t for ${SECONDS_EACH}s"
    # -timeout: one input taking over 10 s is a hang (a failure); -rss_limit_mb
    # guards against unbounded allocation; inputs up to 64 KiB.
    if ! TMPDIR="$scratch" cargo "${TOOLCHAIN[@]}" fuzz run "${SANITIZER[@]}" "$t" \
        "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 2>"corpus/$t.log"; then
        tail -n 60 "corpus/$t.log" >&2
        failed+=("$t")
    else
        grep -E '^stat::number_of_executed_units|^Done' "corpus/$t.log" || true
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "scripts/fuzz.sh: FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "scripts/fuzz.sh: ${#TARGETS[@]} targets, ${SECONDS_EACH}s each, no crash"
