#!/usr/bin/env python3
"""Runs once more, alone, the tests a `cargo test --no-fail-fast` run failed.

Usage: rerun-failed.py LOG  (LOG: that run's combined output)

Many integration tests drive real sockets under bounded time; on a loaded
shared machine one of them can miss its window. A test that fails and then
passes when run again alone is reported as FLAKY (so it gets fixed) and does
not fail the run; one that fails twice does. The run fails outright, with no
second chance, when:
  - more than MAX_RETRIED tests failed (that is a broken change, not noise);
  - a test binary failed without naming a failed test (it crashed);
  - a rerun selects no test.
Exit status: 0 when every failed test passed on its rerun, else 1.
"""

import re
import subprocess
import sys

MAX_RETRIED = 3

FAILED_TEST = re.compile(r"^test (.+) \.\.\. FAILED$")
# `cargo test --no-fail-fast` ends with "error: N targets failed:" and one
# "    `-p pkg --test name`" line per target; a single failing target is
# reported as "error: test failed, to rerun pass `-p pkg --lib`".
TARGETS_FAILED = re.compile(r"^error: \d+ targets? failed:$")
TARGET_LINE = re.compile(r"^\s+`(.+)`$")
ONE_TARGET = re.compile(r"^error: test failed, to rerun pass `(.+)`$")
PASSED = re.compile(r"^test result: ok\. (\d+) passed")


def parse(lines):
    names, targets = [], []
    in_targets = False
    for line in lines:
        line = line.rstrip("\n")
        m = FAILED_TEST.match(line)
        if m:
            names.append(m.group(1))
            continue
        m = ONE_TARGET.match(line)
        if m:
            targets.append(m.group(1))
            continue
        if TARGETS_FAILED.match(line):
            in_targets = True
            continue
        if in_targets:
            m = TARGET_LINE.match(line)
            if m:
                targets.append(m.group(1))
            else:
                in_targets = False
    # A failure line is printed twice (as the test ends and in the list of
    # failures at the binary's end).
    return list(dict.fromkeys(names)), list(dict.fromkeys(targets))


def main():
    with open(sys.argv[1], errors="replace") as f:
        names, targets = parse(f)
    print("\n=== rerun-failed: failed tests: %s; failed targets: %s"
          % (names or "none named", targets or "none named"), flush=True)
    if not names or not targets:
        print("rerun-failed: a target failed without a named failed test "
              "(a crash?): no rerun", flush=True)
        return 1
    if len(names) > MAX_RETRIED:
        print("rerun-failed: %d tests failed (more than %d): no rerun"
              % (len(names), MAX_RETRIED), flush=True)
        return 1
    ok = True
    for target in targets:
        cmd = (["cargo", "test", "--locked"] + target.split()
               + ["--", "--exact", "--test-threads=1"] + names)
        print("=== rerun-failed: %s" % " ".join(cmd), flush=True)
        run = subprocess.run(cmd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        sys.stdout.write(run.stdout)
        ran = sum(int(m.group(1)) for m in
                  (PASSED.match(l) for l in run.stdout.splitlines()) if m)
        if run.returncode != 0 or ran == 0:
            print("rerun-failed: %s failed again (or ran no test)" % target,
                  flush=True)
            ok = False
    if ok:
        print("\n" + "!" * 72)
        for n in names:
            print("FLAKY (failed, then passed when run again alone): %s" % n)
        print("!" * 72, flush=True)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
