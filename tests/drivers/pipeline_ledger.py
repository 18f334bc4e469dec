#!/usr/bin/env python3
"""The pipelined ledger (issue 9): psycopg 3 in pipeline mode as a second real client.

This module owns one ledger run against one target (`--dsn`: Suture, PgBouncer or
PostgreSQL itself), the fault schedule that hits it, and the verdict; and `--table`,
which prints the comparison of several runs' JSON files. tests/drivers/pipeline_ledger.sh
sets up the server and the proxies and calls it once per target.

N clients, each on its own autocommit connection in pipeline mode, insert uniquely keyed
rows (client, seq) into `ledger(client int, seq int, payload text)`, which has no unique
index, so a statement executed twice shows as a duplicate. Each attempt is one of:

  batch  several INSERTs, then one Sync (leaving the pipeline block). All of them run in
         ONE implicit transaction that the Sync commits.
  each   several INSERTs, each followed by `Pipeline.sync()`: one Sync per statement, each
         its own implicit transaction.
  flush  INSERT ... RETURNING whose row is fetched inside the pipeline (psycopg sends a
         Flush, the backend answers while the implicit transaction is still open), a
         second INSERT, then one Sync.
  tx     BEGIN; INSERT; INSERT; COMMIT, all pipelined, then one Sync.

How psycopg 3 (3.1 to 3.3) frames them: each `execute()` in pipeline mode queues
PQsendQueryParams (Parse/Bind/Describe/Execute; after `prepare_threshold` = 5 uses of
the same text a named Parse once, then Bind/Describe/Execute of it) and flushes the
socket, with NO Sync of its own. A Sync is sent only by `Pipeline.sync()`, by leaving the
outermost pipeline block, or by psycopg itself around commit()/rollback()/transaction();
a protocol Flush is sent only when a result is fetched inside the block (fetchone() and
friends, executemany(returning=True)). So in autocommit mode the statements between two
Syncs share one implicit transaction; "Sync per statement" needs an explicit sync().

Acknowledged means the client was told the row committed: for batch/each/flush, the
INSERT's result was OK and the Sync that ends its implicit transaction came back; for
tx, the INSERTs were OK and COMMIT's result came back as "COMMIT".

Clients are asyncio tasks on psycopg's AsyncConnection, not threads: one event loop
lets a watchdog bound every step (a step still running after --step-limit is counted
as a hang and its socket is shut down, so the client goes on) without relying on
cancellation inside psycopg, and the fault injector runs in the same loop; the GIL
would keep threads on one core anyway.

Faults, over a superuser connection straight to PostgreSQL (`--superuser-dsn`): every
--fault-every seconds 1-3 random backends of the clients' role are terminated, and once,
at a seeded point in the middle of the run, `--restart-cmd` restarts the server. The
schedule (times, counts, which of the listed backends) comes from `--seed` alone, so every
target gets the same one. Afterwards the table is read straight from PostgreSQL.

`--assert` exits 1 when a row is lost or duplicated, a one-transaction pipeline (batch,
flush, tx) is only partly present ("torn"), an error has no SQLSTATE, a step hung, or a
SQLSTATE is outside ALLOWED_SQLSTATES (DESIGN §3). Lost rows are printed with their
pipeline and the time they were acknowledged, to find them in the proxy's log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import psycopg
from psycopg import pq

# SQLSTATEs a client may see while backends die under it (DESIGN §3). Anything else
# fails --assert.
ALLOWED_SQLSTATES = {
    # statement_completion_unknown: the request may have run, outside a transaction.
    "40003": "statement completion unknown",
    # connection_failure: backend lost inside a transaction (rolled back), or no backend
    # within the failover hold.
    "08006": "connection failure",
    # transaction_resolution_unknown: a COMMIT (or an implicit commit at Sync) was in
    # flight and got no reply.
    "08007": "transaction resolution unknown",
    # cannot_connect_now: no backend within the failover hold, or the server is starting
    # up or shutting down.
    "57P03": "cannot connect now",
    # in_failed_sql_transaction: a statement inside a transaction already aborted (after
    # an 08006).
    "25P02": "in failed SQL transaction",
    # admin_shutdown: PostgreSQL's own terminate message, forwarded while a statement ran.
    # Allowed on statement steps only, never on connect.
    "57P01": "admin shutdown (statement steps only)",
}
ALLOWED_ON_CONNECT = set(ALLOWED_SQLSTATES) - {"57P01"}

DEFAULT_MIX = "batch=35,each=20,flush=10,tx=35"
INSERT = "INSERT INTO ledger (client, seq, payload) VALUES (%s, %s, %s)"
INSERT_RETURNING = INSERT + " RETURNING seq"

IDLE = pq.TransactionStatus.IDLE
INTRANS = pq.TransactionStatus.INTRANS
INERROR = pq.TransactionStatus.INERROR


# --------------------------------------------------------------------------- records


@dataclass
class Tally:
    """What all clients saw, merged as they go (one event loop: no locks needed)."""

    attempts: Counter = field(default_factory=Counter)  # by mode
    rows_attempted: int = 0
    acked: list = field(default_factory=list)  # (client, seq)
    attempted: set = field(default_factory=set)
    connects: Counter = field(default_factory=Counter)  # ok / failed
    # (sqlstate, severity, step) -> count, and the first message of each.
    errors: Counter = field(default_factory=Counter)
    error_messages: dict = field(default_factory=dict)
    # (message, step) -> count
    bare: Counter = field(default_factory=Counter)
    hangs: Counter = field(default_factory=Counter)  # step -> count
    wrong_counts: list = field(default_factory=list)
    notices: Counter = field(default_factory=Counter)  # sqlstate -> count
    # Every attempt: (client, mode, keys); batch, flush and tx are one transaction each.
    units: list = field(default_factory=list)
    # key -> (unit index, UTC time of the acknowledgement)
    acked_at: dict = field(default_factory=dict)
    # The first MAX_EVENTS errors: (UTC time, client, "mode/step", what)
    events: list = field(default_factory=list)


MAX_EVENTS = 5000
ATOMIC_MODES = ("batch", "flush", "tx")


def utc_now() -> str:
    t = time.time()
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}"


_NUMBERS = re.compile(r"\b(port|pid|PID) \d+|\d+\.\d+\.\d+\.\d+")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    line = _NUMBERS.sub(lambda m: m.group(1) + " N" if m.group(1) else "ADDR", line)
    return f"{type(exc).__name__}: {line}"[:200]


def record_error(tally: Tally, client: int, step: str, exc: BaseException) -> None:
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        diag = exc.diag
        severity = diag.severity_nonlocalized or diag.severity or "?"
        key = (sqlstate, severity, step)
        tally.errors[key] += 1
        tally.error_messages.setdefault(key, (diag.message_primary or "")[:200])
        what = f"{sqlstate} {severity}"
    else:
        what = first_line(exc)
        # psycopg raises "cannot exit pipeline mode while busy" in place of an error that
        # answered the pipeline's Sync (libpq's pipeline mode cannot take one there; a direct
        # server's deferred constraint failing at the Sync does the same). It stays a bare
        # error, but names the error it replaced.
        replaced = exc.__context__
        if getattr(replaced, "sqlstate", None):
            what += f" (in place of {replaced.sqlstate}: {first_line(replaced)})"[:200]
        tally.bare[(what, step)] += 1
        what = "bare " + what
    record_event(tally, client, step, what)


def record_event(tally: Tally, client: int, step: str, what: str) -> None:
    if len(tally.events) < MAX_EVENTS:
        tally.events.append((utc_now(), client, step, what))


# --------------------------------------------------------------------------- clients


class Client:
    """One connection's worth of work; reconnects whenever the connection is unusable."""

    def __init__(self, ident: int, args, tally: Tally, stop: asyncio.Event, modes, weights):
        self.id = ident
        self.args = args
        self.tally = tally
        self.stop = stop
        self.modes = modes
        self.weights = weights
        self.rng = random.Random(args.seed * 1_000_003 + ident)
        self.conn: psycopg.AsyncConnection | None = None
        self.seq = 0
        # Watched by the watchdog.
        self.step = "idle"
        self.step_started: float | None = None
        self.kicked = False
        self.sent: list = []
        self.unit = -1

    def begin_step(self, step: str) -> None:
        self.step = step
        self.step_started = time.monotonic()

    def end_step(self) -> None:
        self.step_started = None

    def next_key(self) -> tuple[int, int]:
        self.seq += 1
        key = (self.id, self.seq)
        self.tally.attempted.add(key)
        self.tally.rows_attempted += 1
        self.tally.units[self.unit][2].append(key)
        return key

    async def run(self) -> None:
        while not self.stop.is_set():
            if self.conn is None and not await self.connect():
                await asyncio.sleep(self.rng.uniform(0.1, 0.3))
                continue
            mode = self.rng.choices(self.modes, self.weights)[0]
            self.tally.attempts[mode] += 1
            self.unit = len(self.tally.units)
            self.tally.units.append((self.id, mode, []))
            self.kicked = False
            self.sent = []
            try:
                await getattr(self, "attempt_" + mode)(mode)
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                self.end_step()
                if not self.kicked:  # a kicked step was counted as a hang
                    record_error(self.tally, self.id, f"{mode}/{self.failed_step()}", exc)
                await self.recover(mode)
            self.end_step()
            if self.args.pause_ms:
                await asyncio.sleep(self.rng.uniform(0, self.args.pause_ms) / 1000)
        await self.drop()

    async def connect(self) -> bool:
        self.begin_step("connect")
        try:
            self.conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(
                    self.args.dsn,
                    autocommit=True,
                    connect_timeout=int(self.args.step_limit),
                    prepare_threshold=self.args.prepare_threshold,
                ),
                self.args.step_limit,
            )
            self.conn.add_notice_handler(self.on_notice)
            self.tally.connects["ok"] += 1
            return True
        except asyncio.TimeoutError:
            self.tally.hangs["connect"] += 1
            record_event(self.tally, self.id, "connect", "hang")
            self.tally.connects["failed"] += 1
            return False
        except Exception as exc:  # noqa: BLE001
            record_error(self.tally, self.id, "connect", exc)
            self.tally.connects["failed"] += 1
            return False
        finally:
            self.end_step()

    def on_notice(self, diag) -> None:
        self.tally.notices[diag.sqlstate or "?"] += 1

    async def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # noqa: BLE001
                pass

    def usable(self) -> bool:
        conn = self.conn
        return (
            conn is not None
            and not conn.closed
            and conn.pgconn.pipeline_status == pq.PipelineStatus.OFF
            and conn.info.transaction_status in (IDLE, INTRANS, INERROR)
        )

    async def recover(self, mode: str) -> None:
        """After an error: keep the connection if it still works, else drop it."""
        if self.kicked or not self.usable():
            await self.drop()
            return
        if self.conn.info.transaction_status == IDLE:
            return
        self.begin_step("rollback")
        try:
            await self.conn.execute("ROLLBACK")
        except Exception as exc:  # noqa: BLE001
            if not self.kicked:
                record_error(self.tally, self.id, f"{mode}/rollback", exc)
            if self.kicked or not self.usable():
                await self.drop()
        finally:
            self.end_step()

    # Each attempt raises on the first error. `sent` lists its statements in order;
    # the failed step is the first one without a result (PostgreSQL holds results back
    # until a Sync or Flush, so the error usually surfaces while waiting for the Sync),
    # or the Sync itself when every statement was answered.

    def payload(self, key, mode) -> str:
        return f"c{key[0]} s{key[1]} {mode}"

    async def send(self, step: str, sql: str, params=None):
        cur = self.conn.cursor()
        self.sent.append((step, cur))
        self.step = step
        await cur.execute(sql, params)
        return cur

    def failed_step(self) -> str:
        for step, cur in self.sent:
            if cur.pgresult is None:
                return step
        return "sync"

    def ack(self, key, cur, step) -> None:
        if cur.rowcount != 1:
            self.tally.wrong_counts.append(f"{step} of {key}: rowcount {cur.rowcount}")
        self.tally.acked.append(key)
        self.tally.acked_at[key] = (self.unit, utc_now())

    async def attempt_batch(self, mode: str) -> None:
        """INSERT x 2-5, one Sync: one implicit transaction."""
        keys, curs = [], []
        self.begin_step("insert")
        async with self.conn.pipeline():
            for _ in range(self.rng.randint(2, 5)):
                key = self.next_key()
                keys.append(key)
                curs.append(await self.send("insert", INSERT, (*key, self.payload(key, mode))))
            self.step = "sync"
        # Leaving the block sent the Sync and read every result up to ReadyForQuery.
        for key, cur in zip(keys, curs):
            self.ack(key, cur, "batch/insert")

    async def attempt_each(self, mode: str) -> None:
        """(INSERT, Sync) x 2-4: each its own implicit transaction."""
        self.begin_step("insert")
        async with self.conn.pipeline() as p:
            for _ in range(self.rng.randint(2, 4)):
                key = self.next_key()
                self.begin_step("insert")
                cur = await self.send("insert", INSERT, (*key, self.payload(key, mode)))
                self.step = "sync"
                await p.sync()
                # sync() can return before the Sync's answer when the connection broke
                # under it (the error then surfaces when the block ends): only a
                # drained result queue proves ReadyForQuery came back.
                if p.result_queue or self.conn.closed:
                    continue
                self.ack(key, cur, "each/insert")
            # Leaving the block sends one more (empty) Sync.
            self.begin_step("sync")

    async def attempt_flush(self, mode: str) -> None:
        """INSERT RETURNING fetched behind a Flush, INSERT, one Sync."""
        first, second = self.next_key(), self.next_key()
        self.begin_step("insert_returning")
        async with self.conn.pipeline():
            cur1 = await self.send(
                "insert_returning", INSERT_RETURNING, (*first, self.payload(first, mode))
            )
            row = await cur1.fetchone()  # psycopg sends a Flush and waits for this result
            if row is None or row[0] != first[1]:
                self.tally.wrong_counts.append(f"flush/fetch of {first}: returned {row}")
            self.begin_step("insert")
            cur2 = await self.send("insert", INSERT, (*second, self.payload(second, mode)))
            self.step = "sync"
        self.ack(first, cur1, "flush/insert_returning")
        self.ack(second, cur2, "flush/insert")

    async def attempt_tx(self, mode: str) -> None:
        """BEGIN; INSERT; INSERT; COMMIT, then one Sync."""
        keys = [self.next_key(), self.next_key()]
        curs = []
        commit = None
        self.begin_step("begin")
        try:
            async with self.conn.pipeline():
                await self.send("begin", "BEGIN")
                for key in keys:
                    curs.append(
                        await self.send("tx_insert", INSERT, (*key, self.payload(key, mode)))
                    )
                commit = await self.send("commit", "COMMIT")
                self.step = "sync"
        finally:
            # COMMIT's own result decides, even if something failed after it.
            status = commit.statusmessage if commit is not None else None
            if status == "COMMIT":
                for key, cur in zip(keys, curs):
                    self.ack(key, cur, "tx/insert")
            elif status is not None:
                self.tally.wrong_counts.append(f"tx of {keys}: COMMIT answered {status!r}")


async def watchdog(clients, args, tally: Tally, done: asyncio.Event) -> None:
    """Counts a step that outlives --step-limit as a hang and shuts its socket down."""
    while not done.is_set():
        await asyncio.sleep(0.5)
        now = time.monotonic()
        for c in clients:
            started = c.step_started
            if started is None or c.kicked or c.step == "connect":
                continue  # connect has its own deadline
            if now - started > args.step_limit:
                c.kicked = True
                tally.hangs[c.step] += 1
                record_event(tally, c.id, c.step, "hang")
                kick(c.conn)


def kick(conn) -> None:
    """Shuts the connection's socket down so the waiting psycopg call returns."""
    try:
        fd = conn.pgconn.socket
    except Exception:  # noqa: BLE001
        return
    try:
        s = socket.socket(fileno=os.dup(fd))
        try:
            s.shutdown(socket.SHUT_RDWR)
        finally:
            s.close()
    except OSError:
        pass


# --------------------------------------------------------------------------- faults


@dataclass
class Faults:
    ticks: int = 0
    terminated: int = 0
    wanted: int = 0
    restarts: int = 0
    restart_at_s: float = 0.0
    restart_took_s: float = 0.0
    failures: list = field(default_factory=list)
    timeline: list = field(default_factory=list)


async def superuser(args) -> psycopg.AsyncConnection:
    return await asyncio.wait_for(
        psycopg.AsyncConnection.connect(args.superuser_dsn, autocommit=True, connect_timeout=10),
        15,
    )


async def restart_server(args, faults: Faults, at: float) -> None:
    t = time.monotonic()
    # Output to a file, not a pipe: the restarted postmaster may inherit the descriptors.
    with tempfile.TemporaryFile() as out:
        proc = await asyncio.create_subprocess_shell(
            args.restart_cmd, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
        )
        rc = await proc.wait()
        out.seek(0)
        text = out.read().decode(errors="replace").strip()
    faults.restarts += 1
    faults.restart_took_s = round(time.monotonic() - t, 2)
    faults.timeline.append(f"{at:7.2f}s restart (took {faults.restart_took_s}s, rc {rc})")
    if rc != 0:
        faults.failures.append(f"restart command exited {rc}: {text[-300:]}")


async def inject(args, faults: Faults, user: str, t0: float) -> None:
    """Terminates 1-3 client backends every --fault-every seconds; restarts once."""
    rng = random.Random(args.seed)
    restart_at = args.secs * rng.uniform(0.35, 0.65)
    faults.restart_at_s = round(restart_at, 2)
    restarted = not args.restart_cmd
    su = None
    tick = 0
    while True:
        tick += 1
        due = t0 + tick * args.fault_every
        if due >= t0 + args.secs:
            break
        # The schedule draws the same numbers every tick, whatever happens.
        want = rng.randint(1, 3)
        picks = [rng.random() for _ in range(3)]
        delay = due - time.monotonic()
        if delay < -args.fault_every / 2:
            continue  # missed while the server restarted
        await asyncio.sleep(max(0.0, delay))
        at = time.monotonic() - t0
        faults.ticks += 1
        if not restarted and at >= restart_at:
            restarted = True
            if su is not None:
                await su.close()
                su = None
            await restart_server(args, faults, at)
            continue
        try:
            if su is None or su.closed:
                su = await superuser(args)
            cur = await su.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND usename = %s ORDER BY pid",
                (user,),
            )
            pids = [r[0] for r in await cur.fetchall()]
            chosen = []
            for p in picks[:want]:
                if pids:
                    chosen.append(pids.pop(int(p * len(pids))))
            n = 0
            for pid in chosen:
                cur = await su.execute("SELECT pg_terminate_backend(%s)", (pid,))
                n += bool((await cur.fetchone())[0])
            faults.wanted += want
            faults.terminated += n
            faults.timeline.append(f"{at:7.2f}s terminate {n}/{want}")
        except Exception as exc:  # noqa: BLE001
            faults.failures.append(f"{at:.2f}s terminate: {first_line(exc)}")
            if su is not None:
                await su.close()
            su = None
    if not restarted:
        await restart_server(args, faults, time.monotonic() - t0)
    if su is not None:
        await su.close()


# --------------------------------------------------------------------------- the run


def parse_mix(text: str):
    modes, weights = [], []
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in ("batch", "each", "flush", "tx"):
            raise SystemExit(f"--mix: unknown mode {name!r}")
        if float(weight or 1) > 0:
            modes.append(name)
            weights.append(float(weight or 1))
    if not modes:
        raise SystemExit("--mix: no mode with a positive weight")
    return modes, weights


async def run(args) -> dict:
    modes, weights = parse_mix(args.mix)
    user = psycopg.conninfo.conninfo_to_dict(args.dsn).get("user") or os.environ.get("PGUSER")
    if not user:
        raise SystemExit("--dsn must name the clients' user")
    su = await superuser(args)
    await su.execute("TRUNCATE ledger")
    await su.close()

    tally = Tally()
    faults = Faults()
    stop = asyncio.Event()
    done = asyncio.Event()
    clients = [Client(i, args, tally, stop, modes, weights) for i in range(args.clients)]
    t0 = time.monotonic()
    tasks = [asyncio.create_task(c.run()) for c in clients]
    dog = asyncio.create_task(watchdog(clients, args, tally, done))
    await inject(args, faults, user, t0)
    await asyncio.sleep(max(0.0, t0 + args.secs - time.monotonic()))
    stop.set()
    load_secs = time.monotonic() - t0
    await asyncio.gather(*tasks)
    done.set()
    await dog

    su = await superuser(args)
    cur = await su.execute("SELECT client, seq, count(*) FROM ledger GROUP BY client, seq")
    present = {(c, s): n for c, s, n in await cur.fetchall()}
    await su.close()
    return verdict(args, tally, faults, present, load_secs, user)


def verdict(args, tally: Tally, faults: Faults, present: dict, load_secs: float, user) -> dict:
    acked = set(tally.acked)
    lost = sorted(k for k in acked if k not in present)
    dups = sorted((k, n) for k, n in present.items() if n > 1)
    phantom = sorted(k for k in present if k not in tally.attempted)
    errors = [
        {
            "sqlstate": s,
            "severity": sev,
            "step": step,
            "count": n,
            "message": tally.error_messages.get((s, sev, step), ""),
            "allowed": s in (ALLOWED_ON_CONNECT if step == "connect" else ALLOWED_SQLSTATES),
        }
        for (s, sev, step), n in sorted(tally.errors.items())
    ]
    bare = [{"message": m, "step": step, "count": n} for (m, step), n in sorted(tally.bare.items())]
    torn = []
    for client, mode, keys in tally.units:
        if mode in ATOMIC_MODES and keys:
            n = sum(1 for k in keys if k in present)
            if 0 < n < len(keys):
                torn.append({"client": client, "mode": mode, "keys": keys,
                             "present": [k in present for k in keys]})
    lost_detail = []
    for key in lost[:20]:
        unit, at = tally.acked_at[key]
        client, mode, keys = tally.units[unit]
        near = [e for e in tally.events if e[1] == client]
        lost_detail.append({
            "key": key, "mode": mode, "acked_at_utc": at,
            "unit_keys": keys, "unit_present": [k in present for k in keys],
            "client_events": near[-40:],
        })
    by_sqlstate = Counter()
    for e in errors:
        by_sqlstate[e["sqlstate"]] += e["count"]
    problems = []
    if lost:
        problems.append(f"{len(lost)} acknowledged rows missing (lost)")
    if dups:
        problems.append(f"{len(dups)} keys present more than once (duplicates)")
    if torn:
        problems.append(f"{len(torn)} one-transaction pipelines only partly present (torn)")
    if phantom:
        problems.append(f"{len(phantom)} keys present that no client sent")
    if bare:
        problems.append(f"{sum(b['count'] for b in bare)} errors without a SQLSTATE")
    if tally.hangs:
        problems.append(f"{sum(tally.hangs.values())} hangs")
    bad = sorted({e["sqlstate"] for e in errors if not e["allowed"]})
    if bad:
        problems.append(f"SQLSTATEs outside DESIGN §3's set: {', '.join(bad)}")
    if tally.wrong_counts:
        problems.append(f"{len(tally.wrong_counts)} statements acknowledged with a wrong result")
    if faults.failures:
        problems.append(f"{len(faults.failures)} fault injections failed (harness)")
    return {
        "label": args.label,
        "seed": args.seed,
        "clients": args.clients,
        "secs": round(load_secs, 2),
        "user": user,
        "mix": args.mix,
        "step_limit_s": args.step_limit,
        "attempts": dict(tally.attempts),
        "attempts_total": sum(tally.attempts.values()),
        "rows_attempted": tally.rows_attempted,
        "acknowledged": len(tally.acked),
        "acknowledged_unique": len(acked),
        "present": len(present),
        "present_rows": sum(present.values()),
        "present_not_acknowledged": sum(1 for k in present if k not in acked),
        "lost": len(lost),
        "lost_sample": lost[:20],
        "duplicates": len(dups),
        "duplicates_sample": dups[:20],
        "lost_detail": lost_detail,
        "torn": len(torn),
        "torn_sample": torn[:20],
        "phantom": len(phantom),
        "errors_total": sum(by_sqlstate.values()),
        "errors_by_sqlstate": dict(sorted(by_sqlstate.items())),
        "errors": errors,
        "bare_total": sum(b["count"] for b in bare),
        "bare": bare,
        "hangs_total": sum(tally.hangs.values()),
        "hangs": dict(tally.hangs),
        "connects": dict(tally.connects),
        "notices": dict(tally.notices),
        "wrong_counts": tally.wrong_counts[:20],
        "faults": {
            "ticks": faults.ticks,
            "terminated": faults.terminated,
            "wanted": faults.wanted,
            "restarts": faults.restarts,
            "restart_at_s": faults.restart_at_s,
            "restart_took_s": faults.restart_took_s,
            "failures": faults.failures,
            "timeline": faults.timeline,
        },
        "events": tally.events,
        "problems": problems,
        "passed": not problems,
    }


def print_report(r: dict) -> None:
    p = print
    p(f"pipelined ledger [{r['label']}]: {r['clients']} clients, {r['secs']} s, seed {r['seed']}")
    f = r["faults"]
    p(
        f"  faults: {f['terminated']} backends terminated over {f['ticks']} ticks,"
        f" {f['restarts']} restart at {f['restart_at_s']} s (took {f['restart_took_s']} s)"
    )
    for line in f["failures"]:
        p(f"    fault injection failed: {line}")
    attempts = ", ".join(f"{m} {n}" for m, n in sorted(r["attempts"].items()))
    p(f"  attempts:                   {r['attempts_total']} ({attempts})")
    p(f"  rows attempted:             {r['rows_attempted']}")
    p(f"  rows acknowledged:          {r['acknowledged']}")
    p(f"  keys present:               {r['present']} ({r['present_rows']} rows)")
    p(f"  present, not acknowledged:  {r['present_not_acknowledged']} (fine)")
    p(f"  acknowledged, missing:      {r['lost']} (LOST){'  e.g. ' + str(r['lost_sample'][:5]) if r['lost'] else ''}")
    p(f"  duplicates:                 {r['duplicates']}{'  e.g. ' + str(r['duplicates_sample'][:5]) if r['duplicates'] else ''}")
    if r["torn"]:
        p(f"  torn one-transaction units: {r['torn']}  e.g. {r['torn_sample'][:3]}")
    for d in r["lost_detail"][:5]:
        p(f"    lost {tuple(d['key'])}: {d['mode']} unit {d['unit_keys']} present {d['unit_present']},"
          f" acknowledged at {d['acked_at_utc']} UTC")
        for at, _, step, what in d["client_events"][-6:]:
            p(f"      client event {at} {step}: {what[:90]}")
    if r["phantom"]:
        p(f"  present, never sent:        {r['phantom']}")
    p(f"  connects:                   {r['connects'].get('ok', 0)} ok, {r['connects'].get('failed', 0)} failed")
    p(f"  errors with a SQLSTATE:     {r['errors_total']}")
    for e in r["errors"]:
        mark = "" if e["allowed"] else "   <-- not allowed"
        p(f"    {e['sqlstate']} {e['severity']:<7} {e['step']:<24} {e['count']:>6}  {e['message'][:70]}{mark}")
    p(f"  bare errors (no SQLSTATE):  {r['bare_total']}")
    for b in r["bare"]:
        p(f"    {b['step']:<24} {b['count']:>6}  {b['message'][:90]}")
    p(f"  hangs (> {r['step_limit_s']} s):           {r['hangs_total']} {r['hangs'] or ''}")
    if r["notices"]:
        p(f"  notices:                    {r['notices']}")
    for w in r["wrong_counts"]:
        p(f"  wrong result: {w}")
    if r["passed"]:
        p("  verdict: PASS")
    else:
        p("  verdict: FAIL: " + "; ".join(r["problems"]))


def print_table(specs: list[str]) -> None:
    """One column per run: `--table direct=a.json pgbouncer=b.json suture=c.json`."""
    runs = []
    for spec in specs:
        label, _, path = spec.partition("=")
        try:
            with open(path) as fh:
                runs.append((label, json.load(fh)))
        except (OSError, ValueError) as exc:
            runs.append((label, {"missing": str(exc)}))
    codes = sorted({c for _, r in runs for c in r.get("errors_by_sqlstate", {})})
    rows = [
        ("attempts", lambda r: r["attempts_total"]),
        ("acknowledged", lambda r: r["acknowledged"]),
        ("present", lambda r: r["present"]),
        ("present, not acked", lambda r: r["present_not_acknowledged"]),
        ("lost", lambda r: r["lost"]),
        ("duplicates", lambda r: r["duplicates"]),
        ("torn transactions", lambda r: r["torn"]),
    ]
    rows += [(f"errors {c}", lambda r, c=c: r["errors_by_sqlstate"].get(c, 0)) for c in codes]
    rows += [
        ("bare (no SQLSTATE)", lambda r: r["bare_total"]),
        ("hangs", lambda r: r["hangs_total"]),
        ("backends terminated", lambda r: r["faults"]["terminated"]),
        ("verdict", lambda r: "PASS" if r["passed"] else "FAIL"),
    ]
    width = max(12, *(len(label) + 2 for label, _ in runs))
    print(f"| {'':<20} |" + "".join(f" {label:>{width}} |" for label, _ in runs))
    print(f"|{'-' * 22}|" + "".join(f"{'-' * (width + 1)}:|" for _ in runs))
    for name, get in rows:
        cells = []
        for _, r in runs:
            try:
                v = get(r)
                cells.append(f"{v:,}" if isinstance(v, int) else str(v))
            except (KeyError, TypeError):
                cells.append("-")
        print(f"| {name:<20} |" + "".join(f" {c:>{width}} |" for c in cells))
    for label, r in runs:
        for b in r.get("bare", []):
            print(f"  {label}: bare {b['count']} x {b['step']}: {b['message'][:100]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", help="the clients' target (libpq conninfo)")
    ap.add_argument("--superuser-dsn", help="a superuser connection straight to PostgreSQL")
    ap.add_argument("--restart-cmd", default="", help="shell command restarting the server once")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--secs", type=float, default=15.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--fault-every", type=float, default=0.6)
    ap.add_argument("--step-limit", type=float, default=35.0, help="a longer step is a hang")
    ap.add_argument("--pause-ms", type=float, default=0.0, help="random pause after each attempt")
    ap.add_argument("--prepare-threshold", type=int, default=5, help="psycopg's; default 5")
    ap.add_argument("--mix", default=DEFAULT_MIX, help=f"attempt weights [{DEFAULT_MIX}]")
    ap.add_argument("--label", default="target")
    ap.add_argument("--json", help="write the result as one JSON object here")
    ap.add_argument("--assert", dest="check", action="store_true",
                    help="exit 1 on lost, duplicates, bare errors, hangs or disallowed SQLSTATEs")
    ap.add_argument("--table", nargs="+", metavar="LABEL=FILE",
                    help="only print a comparison of earlier runs' JSON files")
    args = ap.parse_args()
    if args.table:
        print_table(args.table)
        return 0
    if not args.dsn or not args.superuser_dsn:
        ap.error("--dsn and --superuser-dsn are required")
    if args.seed is None:
        args.seed = random.randrange(1 << 31)
    # psycopg logs "error ignored terminating <pipeline>" when a pipeline block ends by an
    # exception; the error itself is what we record.
    logging.getLogger("psycopg").addHandler(logging.NullHandler())
    logging.getLogger("psycopg").propagate = False

    result = asyncio.run(run(args))
    print_report(result)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
            fh.write("\n")
    if args.check and not result["passed"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
