#!/usr/bin/env python3
"""The MySQL ledger (DESIGN §9, issue 12): N PyMySQL clients insert numbered rows
with autocommit into one target (MariaDB directly, or Suture in front of it) while
every backend connection of the user is killed every KILL_EVERY seconds from an
admin connection straight to the server; the caller (mysql_ledger.sh) restarts
the server once meanwhile. Then the server's table is checked against what the
clients were told:

- every acknowledged row exists exactly once (no row lost, none written twice);
- every error a client saw is an ERR packet with a MySQL code of DESIGN §3 (2013
  or 2003): never a bare socket error, which PyMySQL itself reports as its own
  2013/2006 with the errno in the text, so errors are told apart by whether they
  were raised from an ERR packet the client received.

Usage: mysql_ledger.py --name NAME --port PORT --server-port PORT [--clients 8]
                       [--secs 15] [--kill-every 0.6] [--assert] [--json FILE]
Prints the totals; with --assert exits 1 when a rule above is broken.
"""

import argparse
import collections
import json
import sys
import threading
import time

import pymysql
import pymysql.err

ALLOWED_CODES = {2013, 2003}
TABLE = "ledger"

# Errors built from an ERR packet the client read pass through this function;
# PyMySQL's own errors for a broken socket do not. Tag the first kind.
_raise_from_packet = pymysql.err.raise_mysql_exception


def _tagged_raise(data):
    try:
        _raise_from_packet(data)
    except pymysql.err.MySQLError as exc:
        exc.from_packet = True
        raise


pymysql.err.raise_mysql_exception = _tagged_raise


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.acked = set()
        self.attempts = 0
        self.errors = collections.Counter()
        self.examples = {}

    def error(self, step, exc):
        code = exc.args[0] if isinstance(exc, pymysql.err.MySQLError) and exc.args else None
        packet = getattr(exc, "from_packet", False)
        kind = f"{'ERR' if packet else 'driver'} {code if code is not None else type(exc).__name__} ({step})"
        with self.lock:
            self.errors[kind] += 1
            self.examples.setdefault(kind, str(exc)[:200])


def connect(args, db="app", user="app", password="app-secret", port=None):
    return pymysql.connect(host="127.0.0.1", port=port or args.port, user=user,
                           password=password, database=db, autocommit=True,
                           connect_timeout=10, read_timeout=30, write_timeout=30)


def client(args, n, tally, stop):
    conn = None
    seq = 0
    while not stop.is_set():
        if conn is None:
            try:
                conn = connect(args)
            except Exception as exc:  # noqa: BLE001 - every failure is tallied
                tally.error("connect", exc)
                time.sleep(0.05)
                continue
        seq += 1
        with tally.lock:
            tally.attempts += 1
        try:
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {TABLE} (client, seq) VALUES (%s, %s)", (n, seq))
            with tally.lock:
                tally.acked.add((n, seq))
        except Exception as exc:  # noqa: BLE001
            tally.error("insert", exc)
            if not conn.open:
                conn = None
            else:
                # A connection that said 2013 may still work (Suture keeps it), or not.
                try:
                    conn.ping(reconnect=False)
                except Exception:  # noqa: BLE001
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001
                        pass
                    conn = None
    if conn is not None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass


def killer(args, stop, kills):
    while not stop.wait(args.kill_every):
        try:
            admin = connect(args, db=None, user="root", password="root-secret",
                            port=args.server_port)
        except Exception:  # noqa: BLE001 - the server is restarting
            continue
        try:
            with admin.cursor() as cur:
                cur.execute("SELECT id FROM information_schema.processlist "
                            "WHERE user = 'app' AND id <> CONNECTION_ID()")
                for (pid,) in cur.fetchall():
                    try:
                        cur.execute(f"KILL {int(pid)}")
                        kills[0] += 1
                    except pymysql.err.MySQLError:
                        pass
        except Exception:  # noqa: BLE001
            pass
        finally:
            try:
                admin.close()
            except Exception:  # noqa: BLE001
                pass


def server_rows(args):
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = connect(args, user="root", password="root-secret", port=args.server_port)
            break
        except Exception:  # noqa: BLE001
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    with conn.cursor() as cur:
        cur.execute(f"SELECT client, seq, COUNT(*) FROM {TABLE} GROUP BY client, seq")
        rows = {(c, s): k for c, s, k in cur.fetchall()}
    conn.close()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--server-port", type=int, required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--secs", type=float, default=15)
    ap.add_argument("--kill-every", type=float, default=0.6)
    ap.add_argument("--assert", dest="check", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()

    setup = connect(args, user="root", password="root-secret", port=args.server_port)
    with setup.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
        # No unique key: a row written twice must show up as two rows.
        cur.execute(f"CREATE TABLE {TABLE} (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                    "client INT NOT NULL, seq INT NOT NULL)")
    setup.close()

    tally, stop, kills = Tally(), threading.Event(), [0]
    threads = [threading.Thread(target=client, args=(args, n, tally, stop), daemon=True)
               for n in range(args.clients)]
    threads.append(threading.Thread(target=killer, args=(args, stop, kills), daemon=True))
    print(f"[{args.name}] {args.clients} clients, kills every {args.kill_every}s, "
          f"{args.secs:.0f}s", flush=True)
    for t in threads:
        t.start()
    time.sleep(args.secs)
    stop.set()
    for t in threads:
        t.join(timeout=40)
    hung = sum(1 for t in threads if t.is_alive())

    present = server_rows(args)
    duplicates = sorted(k for k, count in present.items() if count > 1)
    lost = sorted(k for k in tally.acked if k not in present)
    unacked_present = sum(1 for k in present if k not in tally.acked)
    bad = {k: v for k, v in tally.errors.items()
           if not k.startswith("ERR ") or int(k.split()[1]) not in ALLOWED_CODES}
    report = {
        "name": args.name, "attempts": tally.attempts, "acked": len(tally.acked),
        "rows": sum(present.values()), "duplicates": len(duplicates), "lost": len(lost),
        "unacked_present": unacked_present, "kills": kills[0], "hung_threads": hung,
        "errors": dict(tally.errors), "bad_errors": sum(bad.values()),
    }
    print(f"[{args.name}] attempts {tally.attempts}, acked {len(tally.acked)}, rows "
          f"{report['rows']}, duplicates {len(duplicates)}, lost {len(lost)}, "
          f"unacked but present {unacked_present}, kills {kills[0]}")
    for kind, count in sorted(tally.errors.items()):
        print(f"[{args.name}]   error {kind}: {count}  e.g. {tally.examples[kind]!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f)
    if not args.check:
        return 0
    problems = []
    if duplicates:
        problems.append(f"{len(duplicates)} row(s) written twice, e.g. {duplicates[:5]}")
    if lost:
        problems.append(f"{len(lost)} acknowledged row(s) missing, e.g. {lost[:5]}")
    if bad:
        problems.append(f"{sum(bad.values())} error(s) that are not ERR 2013/2003: {sorted(bad)}")
    if not tally.acked:
        problems.append("no row was acknowledged")
    if hung:
        problems.append(f"{hung} client thread(s) still stuck 40 s after the end")
    for p in problems:
        print(f"[{args.name}] FAIL: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
