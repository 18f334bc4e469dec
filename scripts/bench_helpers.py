#!/usr/bin/env python3
"""Helpers for scripts/bench.sh.

  idle   --dsn DSN --n N --ready-file FILE
      Opens N logged-in, idle client connections (psycopg2, one process, autocommit),
      writes "login OPENED" to FILE; on SIGUSR1 runs SELECT 1 once on each and writes
      "queried COUNT" to FILE.q; holds them until SIGTERM or SIGINT.
  report --raw RAW.tsv --machine MACHINE.md --out RESULTS.md
      Reads every single measurement from RAW.tsv, prints the summary table (medians per
      workload and target, with suture/direct and suture/pgbouncer ratios) and writes it
      with the machine description to RESULTS.md.

RAW.tsv columns: round, group, workload, unit, target, value, note.
"""
import argparse
import os
import signal
import statistics
import sys

TARGETS = ("direct", "pgbouncer", "suture")


def write_atomically(path, text):
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


def cmd_idle(args):
    import psycopg2  # only needed here

    # Signals are waited for synchronously, so block them first.
    sigs = {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    conns = []
    try:
        for i in range(args.n):
            try:
                conn = psycopg2.connect(args.dsn, connect_timeout=30)
                conn.autocommit = True  # no implicit BEGIN: idle, not idle in transaction
                conns.append(conn)
            except psycopg2.Error as err:
                print(f"idle: connection {i + 1} of {args.n} failed: {str(err).strip()}",
                      file=sys.stderr, flush=True)
                break
        write_atomically(args.ready_file, f"login {len(conns)}\n")
        if signal.sigwait(sigs) != signal.SIGUSR1:
            return
        queried = 0
        for conn in conns:
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.fetchall()
                queried += 1
            except psycopg2.Error as err:
                print(f"idle: query failed: {str(err).strip()}", file=sys.stderr, flush=True)
        write_atomically(args.ready_file + ".q", f"queried {queried}\n")
        signal.sigwait(sigs - {signal.SIGUSR1})
    finally:
        for c in conns:
            try:
                c.close()
            except psycopg2.Error:
                pass


def fmt(value):
    if value is None:
        return "–"
    if float(value).is_integer() and abs(value) >= 10:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cmd_report(args):
    # (group, workload, unit) in first-seen order -> target -> list of values
    rows = {}
    notes = {}
    with open(args.raw, encoding="utf-8") as fh:
        header = fh.readline()
        assert header.startswith("round\t"), header
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 6:
                continue
            _rnd, group, workload, unit, target, value = parts[:6]
            note = parts[6] if len(parts) > 6 else ""
            key = (group, workload, unit)
            per_target = rows.setdefault(key, {})
            lst = per_target.setdefault(target, [])
            if value not in ("", "NA"):
                lst.append(float(value))
            if note:
                notes.setdefault(key, set()).add(f"{target}: {note}")

    header = ["workload", "unit", "direct", "pgbouncer", "suture",
              "suture/direct", "suture/pgbouncer", "n"]
    table = []
    for key, per_target in rows.items():
        _group, workload, unit = key
        med = {}
        for t in TARGETS:
            vals = per_target.get(t, [])
            med[t] = statistics.median(vals) if vals else None
        def ratio(a, b):
            if a is None or b is None or b == 0:
                return "–"
            return f"{a / b:.2f}"
        n = max((len(per_target.get(t, [])) for t in TARGETS), default=0)
        table.append([workload, unit, fmt(med["direct"]), fmt(med["pgbouncer"]),
                      fmt(med["suture"]), ratio(med["suture"], med["direct"]),
                      ratio(med["suture"], med["pgbouncer"]), str(n)])
        if workload.endswith(": time per tx") and med["direct"] is not None:
            # What each proxy adds to one client's round trip.
            added = {t: None if med[t] is None else med[t] - med["direct"]
                     for t in ("pgbouncer", "suture")}
            table.append([workload.replace(": time per tx", ": added latency"), unit, "0",
                          fmt(added["pgbouncer"]), fmt(added["suture"]), "–",
                          ratio(added["suture"], added["pgbouncer"]), str(n)])

    md = ["| " + " | ".join(header) + " |",
          "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    for r in table:
        md.append("| " + " | ".join(r) + " |")
    md_text = "\n".join(md) + "\n"

    # Plain text table for the terminal.
    widths = [max(len(header[i]), *(len(r[i]) for r in table)) if table else len(header[i])
              for i in range(len(header))]
    def line(cells):
        return "  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i])
                         for i, c in enumerate(cells))
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in table:
        print(line(r))
    if notes:
        print()
        print("notes:")
        for key, ns in notes.items():
            for n in sorted(ns):
                print(f"  {key[1]}: {n}")

    with open(args.machine, encoding="utf-8") as fh:
        machine = fh.read()
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write(machine)
        fh.write("\n## Results (median over rounds)\n\n")
        fh.write(md_text)
        if notes:
            fh.write("\n### Notes\n\n")
            for key, ns in notes.items():
                for n in sorted(ns):
                    fh.write(f"- {key[1]}: {n}\n")
        if args.extra:
            with open(args.extra, encoding="utf-8") as ex:
                fh.write("\n")
                fh.write(ex.read())


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("idle")
    p.add_argument("--dsn", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--ready-file", required=True)
    p.set_defaults(func=cmd_idle)
    p = sub.add_parser("report")
    p.add_argument("--raw", required=True)
    p.add_argument("--machine", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--extra", help="markdown appended after the table (e.g. soak samples)")
    p.set_defaults(func=cmd_report)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
