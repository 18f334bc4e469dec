#!/usr/bin/env python3
"""Compare two JSON-lines outcome files written by unittest_outcomes.py.

Usage: compare_outcomes.py --direct FILE --proxied FILE --expected FILE
                           --label NAME [--proxy-name suture]

Prints the counts of both runs, every test whose outcome differs, and a final
line `NAME suite through suture: N passed, M failed`, where N counts tests that
pass (or xfail) through the proxy and M counts unexpected differences: tests
that pass directly but do not pass through the proxy, and are not listed in the
expected-differences file (one test id per line, `# reason` after it). Tests
missing from the proxied run (it crashed or ran out of time) count as failed,
and so do tests the proxied run has but the direct run lacks (no baseline).
Exit status 0 only when M is 0.
"""

import argparse
import collections
import json
import sys

PASSING = {"pass", "xfail"}


def load(path):
    res = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    rec = json.loads(line)
                    res[rec["id"]] = rec
    except FileNotFoundError:
        pass
    return res


def load_expected(path):
    expected = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            body = line.strip()
            if not body or body.startswith("#"):
                continue
            tid, sep, reason = body.partition("#")
            tid, reason = tid.strip(), reason.strip()
            if not sep or not reason:
                sys.exit(f"{path}:{n}: every entry needs a '# reason' comment")
            expected[tid] = reason
    return expected


def counts(res):
    c = collections.Counter(r["outcome"] for r in res.values())
    return ", ".join(f"{k} {c[k]}" for k in
                     ("pass", "fail", "error", "skip", "xfail", "xpass", "timeout") if c[k])


def first_line(detail):
    lines = [l for l in (detail or "").strip().splitlines() if l.strip()]
    return lines[-1].strip()[:200] if lines else ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--direct", required=True)
    ap.add_argument("--proxied", required=True)
    ap.add_argument("--expected", required=True)
    ap.add_argument("--label", default="driver")
    ap.add_argument("--proxy-name", default="suture")
    args = ap.parse_args()

    direct = load(args.direct)
    proxied = load(args.proxied)
    expected = load_expected(args.expected)

    print(f"direct : {len(direct)} tests: {counts(direct)}")
    print(f"{args.proxy_name:7}: {len(proxied)} tests: {counts(proxied)}")

    unexpected, allowed, other = [], [], []
    for tid in sorted(set(direct) | set(proxied)):
        d = direct.get(tid, {}).get("outcome", "missing")
        p = proxied.get(tid, {}).get("outcome", "missing")
        if d == p:
            continue
        detail = first_line(proxied.get(tid, {}).get("detail", ""))
        row = (tid, d, p, detail)
        if d in PASSING and p not in PASSING:
            (allowed if tid in expected else unexpected).append(row)
        elif d == "missing":
            # The direct run did not get to this test (crash, deadline): no
            # baseline, so the comparison cannot vouch for it.
            unexpected.append(row)
        else:
            other.append(row)

    def show(title, rows):
        if rows:
            print(f"\n{title} ({len(rows)}):")
            for tid, d, p, detail in rows:
                extra = f"  [{expected[tid]}]" if tid in expected else ""
                print(f"  {tid}: direct {d}, {args.proxy_name} {p}{extra}")
                if detail and p not in PASSING:
                    print(f"      {detail}")

    show("UNEXPECTED: pass directly but not through " + args.proxy_name + " (or no direct baseline)", unexpected)
    show("expected differences (listed in " + args.expected.rsplit('/', 1)[-1] + ")", allowed)
    show("other differences (not counted)", other)
    stale = sorted(t for t in expected if t in direct and
                   direct[t]["outcome"] in PASSING and
                   proxied.get(t, {}).get("outcome") in PASSING)
    if stale:
        print("\nlisted as expected differences but now pass through "
              f"{args.proxy_name} (consider removing):")
        for t in stale:
            print(f"  {t}")

    passed = sum(1 for r in proxied.values() if r["outcome"] in PASSING)
    print(f"\n{args.label} suite through {args.proxy_name}: {passed} passed, {len(unexpected)} failed")
    return 0 if not unexpected and direct else 1


if __name__ == "__main__":
    sys.exit(main())
