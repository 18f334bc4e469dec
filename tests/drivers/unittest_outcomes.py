#!/usr/bin/env python3
"""Run a driver's unittest suite and record every test's outcome as JSON lines.

Usage: unittest_outcomes.py --suite-dir DIR --module tests --out FILE
                            [--per-test-timeout SECONDS]

DIR is put first on sys.path, `MODULE.test_suite()` is called to build the suite
(the way the driver's own runner does it), and each test is run in order. One
JSON object per line is appended to FILE as soon as a test finishes:

    {"id": "tests.test_async.AsyncTests.test_foo", "outcome": "pass", "detail": "..."}

outcome is one of pass, fail, error, skip, xfail (expected failure), xpass
(unexpected success) or timeout.

Tests already present in FILE are not run again, so after a crash or a per-test
timeout (the watchdog records "timeout" for the running test and ends the
process, because a test blocked inside libpq cannot be interrupted from
Python) the caller just starts this runner again and it resumes after the
tests already recorded. Exit status: 0 when every test was recorded, 3 when a
test timed out (run again to resume), anything else is a crash.
"""

import argparse
import importlib
import json
import os
import sys
import threading
import time
import traceback
import unittest


def iter_tests(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from iter_tests(item)
        else:
            yield item


class Recorder(unittest.TestResult):
    """A TestResult that keeps one outcome per test id (worst one wins)."""

    RANK = {"pass": 0, "xfail": 0, "skip": 1, "xpass": 2, "fail": 3, "error": 4}

    def __init__(self):
        super().__init__()
        self.outcomes = {}

    def _set(self, test, outcome, detail=""):
        tid = test.id()
        old = self.outcomes.get(tid)
        if old is None or self.RANK[outcome] > self.RANK[old[0]]:
            self.outcomes[tid] = (outcome, detail)

    def _err(self, test, err):
        return self._exc_info_to_string(err, test)[-4000:]

    def addSuccess(self, test):
        super().addSuccess(test)
        self._set(test, "pass")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, "fail", self._err(test, err))

    def addError(self, test, err):
        super().addError(test, err)
        self._set(test, "error", self._err(test, err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set(test, "skip", str(reason))

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set(test, "xfail")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, "xpass")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            # Attribute the subtest failure to its parent test id.
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            self._set(test, kind, self._err(test, err))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite-dir", required=True)
    ap.add_argument("--module", default="tests")
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-test-timeout", type=float, default=60.0)
    args = ap.parse_args()

    done = set()
    if os.path.exists(args.out):
        with open(args.out) as f:
            for line in f:
                line = line.strip()
                if line:
                    done.add(json.loads(line)["id"])

    # A previous runner that died inside a test (crash, kill) left its id here.
    current_file = args.out + ".current"
    if os.path.exists(current_file):
        with open(current_file) as f:
            crashed = f.read().strip()
        os.unlink(current_file)
        if crashed and crashed not in done:
            with open(args.out, "a") as f:
                f.write(json.dumps({"id": crashed, "outcome": "error",
                                    "detail": "the test process died during this test"}) + "\n")
            done.add(crashed)

    sys.path.insert(0, os.path.abspath(args.suite_dir))
    mod = importlib.import_module(args.module)
    tests = [t for t in iter_tests(mod.test_suite()) if t.id() not in done]

    out = open(args.out, "a", buffering=1)
    lock = threading.Lock()
    current = {"id": None, "start": 0.0}

    def write(rec):
        with lock:
            out.write(json.dumps(rec) + "\n")
            out.flush()

    def watchdog():
        while True:
            time.sleep(0.5)
            with lock:
                tid, start = current["id"], current["start"]
            if tid and time.monotonic() - start > args.per_test_timeout:
                write({"id": tid, "outcome": "timeout",
                       "detail": f"no result after {args.per_test_timeout:.0f}s"})
                sys.stderr.write(f"TIMEOUT {tid}\n")
                sys.stderr.flush()
                os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()

    # Some tests print; keep our own stdout readable.
    for test in tests:
        tid = test.id()
        result = Recorder()
        with open(current_file, "w") as f:
            f.write(tid)
        with lock:
            current["id"], current["start"] = tid, time.monotonic()
        t0 = time.monotonic()
        try:
            test(result)
        except Exception:  # a test that breaks the runner itself
            result.outcomes[tid] = ("error", traceback.format_exc()[-4000:])
        with lock:
            current["id"] = None
        outcome, detail = result.outcomes.get(tid, ("error", "no result recorded"))
        # Class/module fixtures failing are reported under other ids; keep them too.
        for other, (o, d) in result.outcomes.items():
            if other != tid:
                write({"id": other, "outcome": o, "detail": d})
        write({"id": tid, "outcome": outcome, "detail": detail,
               "seconds": round(time.monotonic() - t0, 3)})
    out.close()
    if os.path.exists(current_file):
        os.unlink(current_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
