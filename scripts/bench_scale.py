#!/usr/bin/env python3
"""Load driver of scripts/bench_scale.sh: many clients from one asyncio process.

Every phase writes one JSON document (--json) with its raw numbers; `report` turns the
documents into the table. Memory is read from /proc: VmRSS (status) and Pss (smaps_rollup),
in KiB. Clients: asyncpg (PostgreSQL, simple-query `SELECT 1`) and aiomysql (MySQL/MariaDB,
COM_QUERY `SELECT 1`), both with autocommit, no TLS.

  open   --proto P --port N --pid PID --steps 1000,2000
      From no clients, opens clients up to each step, every new one at once; each logs in and
      runs one query, then stays open. After each step (and before the first) waits --settle
      seconds and reads Suture's memory and CPU time. Closes them all at the end.
  steady --proto P --port N --out FILE
      One client running `SELECT 1` every --interval seconds until SIGTERM; writes
      "unix_time latency_seconds" per query to FILE (a separate process, so the burst's
      client-side work does not delay it).
  burst  --proto P --port N --pid PID --holders K --n 5000
      K clients hold K backends, a `steady` process runs beside them; after --before
      seconds, N connection attempts at once (at most --concurrency in flight). Records, per
      attempt, the error (code) and the time to it, Suture's memory every 50 ms, and the
      steady client's latency before, during and after.
  pools  --bin SUTURE --config FILE --ports P1,P2,... --admin N
      Starts Suture and times process start -> every listener accepting, and -> /startup 200.
  soak   --targets postgres:PORT,mysql:PORT --clients N --secs S --pid PID
      N clients per target, each running a query every --query-every seconds (jittered) and
      now and then (--reconnect, a probability per query) logging in again; Suture's memory
      every --interval seconds.
  report --dir DIR --out JSON
      Merges DIR/*.json into one document (OUT) and prints the table.
"""
import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request

USER, PASSWORD, DATABASE = "app", "app-secret", "app"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ process readings

def memory(pid):
    """VmRSS and Pss of pid, in KiB (None when unreadable)."""
    rss = pss = None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return {"rss_kib": rss, "pss_kib": pss}


def cpu_seconds(pid):
    """User plus system CPU time of pid, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def threads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def pct(values, p):
    """The p-th percentile (nearest rank) of values; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def summary(values):
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99),
            "max": max(values), "mean": statistics.fmean(values)}


def write_json(path, doc):
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
    os.replace(path + ".tmp", path)


# ------------------------------------------------------------------ clients

class Client:
    """One client connection of either protocol."""

    def __init__(self, proto, port):
        self.proto, self.port, self.conn = proto, port, None

    async def connect(self, timeout=60):
        if self.proto == "postgres":
            import asyncpg
            self.conn = await asyncpg.connect(
                host="127.0.0.1", port=self.port, user=USER, password=PASSWORD,
                database=DATABASE, ssl=False, timeout=timeout, statement_cache_size=0)
        else:
            import aiomysql
            self.conn = await aiomysql.connect(
                host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, db=DATABASE,
                autocommit=True, connect_timeout=timeout)

    async def query(self):
        if self.proto == "postgres":
            await self.conn.execute("SELECT 1")
        else:
            async with self.conn.cursor() as cur:
                await cur.execute("SELECT 1")
                await cur.fetchall()

    async def close(self):
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            if self.proto == "postgres":
                await conn.close(timeout=5)
            else:
                conn.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def error_code(err):
    """(code, message) of a failed attempt: SQLSTATE for PostgreSQL, error number for MySQL."""
    code = None
    if getattr(err, "args", None) and isinstance(err.args[0], int):
        code = err.args[0]  # MySQL: the error number (PyMySQL keeps the SQLSTATE aside)
    if code is None:
        code = getattr(err, "sqlstate", None)
    if code is None:
        code = type(err).__name__
    text = str(err.args[1]) if len(getattr(err, "args", ())) > 1 else str(err)
    return str(code), text.strip().splitlines()[0][:120] if text.strip() else type(err).__name__


async def open_and_query(proto, port, n, concurrency):
    """Opens n clients (at most `concurrency` logging in at once), each runs one query.
    Returns (clients that succeeded, {error: count}, seconds)."""
    gate = asyncio.Semaphore(concurrency)
    errors = {}

    async def one():
        c = Client(proto, port)
        async with gate:
            try:
                await c.connect()
                await c.query()
                return c
            except Exception as err:  # noqa: BLE001 - every failure is counted
                key = "%s %s" % error_code(err)
                errors[key] = errors.get(key, 0) + 1
                await c.close()
                return None

    t0 = time.perf_counter()
    done = await asyncio.gather(*(one() for _ in range(n)))
    secs = time.perf_counter() - t0
    return [c for c in done if c is not None], errors, secs


# ------------------------------------------------------------------ raw login attempts
#
# The burst opens thousands of connections from one Python process on the CPUs Suture runs
# on. A full driver spends about a millisecond of Python per connect, which would be measured
# as Suture's delay; these minimal logins cost a few HMACs. PostgreSQL: StartupMessage, then
# SCRAM-SHA-256 with the salted password cached per (salt, iterations) (Suture's salt is fixed
# per user); MySQL: the greeting, then mysql_native_password or caching_sha2_password.
# Each returns ("connected", "") or the error code and message the server side sent; the
# perf_counter() time the client sent its last login message is kept in `sent`, so the time a
# refused client then waited (for a backend, in the checkout queue) can be told apart.

_SALTED = {}


def _salted_password(salt, iterations):
    key = (salt, iterations)
    if key not in _SALTED:
        _SALTED[key] = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, iterations)
    return _SALTED[key]


def _pg_msg(tag, body):
    return tag + struct.pack("!i", len(body) + 4) + body


async def _pg_read(reader):
    head = await reader.readexactly(5)
    (length,) = struct.unpack("!i", head[1:5])
    return head[:1], await reader.readexactly(length - 4)


def _pg_error(body):
    """(SQLSTATE, message) of an ErrorResponse body."""
    fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
    return fields.get(b"C", "no-sqlstate"), fields.get(b"M", "")


def _my_error(pkt, after_handshake):
    """(error number, message) of an ERR packet; '#' and the SQLSTATE follow the number once
    the client has said it speaks protocol 4.1."""
    code = str(struct.unpack("<H", pkt[1:3])[0])
    rest = pkt[3:]
    if after_handshake and rest[:1] == b"#":
        rest = rest[6:]
    return code, rest.decode(errors="replace")


async def pg_attempt(port, sent):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        params = f"user\0{USER}\0database\0{DATABASE}\0\0".encode()
        body = struct.pack("!i", 196608) + params
        writer.write(struct.pack("!i", len(body) + 4) + body)
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={nonce}"
        auth_message = client_key = None
        while True:
            tag, body = await _pg_read(reader)
            if tag == b"E":
                return _pg_error(body)
            if tag == b"Z":
                return "connected", ""
            if tag != b"R":
                continue
            (kind,) = struct.unpack("!i", body[:4])
            if kind == 10:  # AuthenticationSASL
                data = ("n,," + first_bare).encode()
                writer.write(_pg_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(data)) + data))
            elif kind == 11:  # AuthenticationSASLContinue
                server_first = body[4:].decode()
                attrs = dict(a.split("=", 1) for a in server_first.split(","))
                salted = _salted_password(base64.b64decode(attrs["s"]), int(attrs["i"]))
                client_key = hmac.digest(salted, b"Client Key", "sha256")
                stored = hashlib.sha256(client_key).digest()
                final_bare = f"c=biws,r={attrs['r']}"
                auth_message = f"{first_bare},{server_first},{final_bare}".encode()
                sig = hmac.digest(stored, auth_message, "sha256")
                proof = bytes(a ^ b for a, b in zip(client_key, sig))
                writer.write(_pg_msg(b"p", f"{final_bare},p={base64.b64encode(proof).decode()}".encode()))
                sent.append(time.perf_counter())
            elif kind not in (0, 12):
                return f"auth-{kind}", ""
    finally:
        writer.close()


async def _my_read(reader):
    head = await reader.readexactly(4)
    length = head[0] | head[1] << 8 | head[2] << 16
    return head[3], await reader.readexactly(length)


def _my_write(writer, seq, payload):
    n = len(payload)
    writer.write(bytes((n & 255, n >> 8 & 255, n >> 16, seq & 255)) + payload)


def _my_scramble(plugin, nonce):
    pw = PASSWORD.encode()
    if plugin == "caching_sha2_password":
        h1 = hashlib.sha256(pw).digest()
        h2 = hashlib.sha256(hashlib.sha256(h1).digest() + nonce).digest()
        return bytes(a ^ b for a, b in zip(h1, h2))
    h1 = hashlib.sha1(pw).digest()
    h2 = hashlib.sha1(nonce + hashlib.sha1(h1).digest()).digest()
    return bytes(a ^ b for a, b in zip(h1, h2))


def _my_client_shape():
    """The capability flags and character set aiomysql logs in with: Suture keeps a sub-pool
    per (user, database, reply-shaping capabilities, character set), so the burst must look
    like the clients that hold the pool."""
    from aiomysql.connection import DEFAULT_CHARSET
    from pymysql.charset import charset_by_name
    from pymysql.constants import CLIENT
    caps = (CLIENT.CAPABILITIES | CLIENT.CONNECT_WITH_DB | CLIENT.MULTI_RESULTS
            | CLIENT.MULTI_STATEMENTS)
    return caps, charset_by_name(DEFAULT_CHARSET).id


async def my_attempt(port, sent):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        seq, pkt = await _my_read(reader)
        if pkt[:1] == b"\xff":
            return _my_error(pkt, False)
        # Protocol 10 greeting: version, connection id, scramble part 1, caps, ..., part 2, plugin.
        end = pkt.index(b"\0", 1)
        pos = end + 1 + 4
        nonce = pkt[pos:pos + 8]
        pos += 8 + 1 + 2 + 1 + 2 + 2
        data_len = pkt[pos]
        pos += 1 + 10
        part2 = max(13, data_len - 8)
        nonce += pkt[pos:pos + part2 - 1]
        pos += part2
        plugin = pkt[pos:].split(b"\0", 1)[0].decode() or "mysql_native_password"
        caps, charset = _my_client_shape()
        auth = _my_scramble(plugin, nonce)
        # Lenenc auth data (one length byte below 251) and no connection attributes.
        payload = (struct.pack("<IIB", caps, 1 << 24, charset) + bytes(23) + USER.encode()
                   + b"\0" + bytes((len(auth),)) + auth + DATABASE.encode() + b"\0"
                   + plugin.encode() + b"\0" + b"\0")
        _my_write(writer, seq + 1, payload)
        sent.append(time.perf_counter())
        while True:
            seq, pkt = await _my_read(reader)
            first = pkt[:1]
            if first == b"\x00":
                return "connected", ""
            if first == b"\xff":
                return _my_error(pkt, True)
            if first == b"\xfe":  # auth switch: plugin name, new scramble
                name, rest = pkt[1:].split(b"\0", 1)
                _my_write(writer, seq + 1, _my_scramble(name.decode(), rest.rstrip(b"\0")))
                sent.append(time.perf_counter())
            elif first == b"\x01" and pkt[1:2] == b"\x04":
                return "full-auth-needed", ""
    finally:
        writer.close()


# ------------------------------------------------------------------ open

async def cmd_open(args):
    steps = [int(s) for s in args.steps.split(",")]
    clients = []
    await asyncio.sleep(args.settle)
    points = [{"clients": 0, **memory(args.pid), "cpu_s": cpu_seconds(args.pid),
               "fds": fds(args.pid), "threads": threads(args.pid)}]
    opens = []
    for step in steps:
        want = step - len(clients)
        cpu0 = cpu_seconds(args.pid)
        opened, errors, secs = await open_and_query(args.proto, args.port, want,
                                                    args.concurrency)
        cpu1 = cpu_seconds(args.pid)
        clients += opened
        opens.append({"to": step, "attempted": want, "ok": len(opened), "errors": errors,
                      "secs": secs, "suture_cpu_s": cpu1 - cpu0})
        print(f"open {args.proto}: {len(opened)}/{want} opened in {secs:.2f}s "
              f"(now {len(clients)}), errors {errors or 'none'}", file=sys.stderr, flush=True)
        await asyncio.sleep(args.settle)
        points.append({"clients": len(clients), **memory(args.pid),
                       "cpu_s": cpu_seconds(args.pid), "fds": fds(args.pid),
                       "threads": threads(args.pid)})
    # Every client still answers (they were idle, not dead).
    alive = await asyncio.gather(*(c.query() for c in clients), return_exceptions=True)
    still = sum(1 for a in alive if not isinstance(a, BaseException))
    await asyncio.gather(*(c.close() for c in clients))
    base = points[0]
    for p in points[1:]:
        n = p["clients"]
        for k in ("rss_kib", "pss_kib"):
            if n and p[k] is not None and base[k] is not None:
                p[k.replace("_kib", "_per_client_kib")] = (p[k] - base[k]) / n
    write_json(args.json, {"phase": args.name, "proto": args.proto, "points": points,
                           "opens": opens, "answered_at_end": still})


# ------------------------------------------------------------------ steady

async def cmd_steady(args):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    c = Client(args.proto, args.port)
    await c.connect()
    with open(args.out, "w", encoding="ascii", buffering=1) as fh:
        fh.write("ready\n")
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                await c.query()
                fh.write(f"{time.time():.6f} {time.perf_counter() - t0:.6f}\n")
            except Exception as err:  # noqa: BLE001 - a failure is recorded, not fatal
                fh.write(f"{time.time():.6f} error {error_code(err)[0]}\n")
                await c.close()
                try:
                    await c.connect()
                except Exception:  # noqa: BLE001
                    await asyncio.sleep(0.1)
            try:
                await asyncio.wait_for(stop.wait(), args.interval)
            except asyncio.TimeoutError:
                pass
    await c.close()


def read_steady(path):
    lat, errs = [], []
    with open(path, encoding="ascii") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) != 2 and len(parts) != 3:
                continue
            if parts[1] == "error":
                errs.append(float(parts[0]))
            else:
                lat.append((float(parts[0]), float(parts[1])))
    return lat, errs


class Sampler(threading.Thread):
    """Reads a process's memory every `every` seconds, in a thread of its own."""

    def __init__(self, pid, every):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples = pid, every, []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            self.samples.append((time.time(), memory(self.pid)["rss_kib"]))
            self.halt.wait(self.every)


# ------------------------------------------------------------------ burst

async def cmd_burst(args):
    holders, errors, _ = await open_and_query(args.proto, args.port, args.holders, 50)
    if len(holders) != args.holders:
        sys.exit(f"burst: only {len(holders)} of {args.holders} holders connected: {errors}")
    steady = subprocess.Popen([sys.executable, __file__, "steady", "--proto", args.proto,
                               "--port", str(args.port), "--out", args.steady_out,
                               "--interval", str(args.interval)])
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            if os.path.exists(args.steady_out) and os.path.getsize(args.steady_out) > 0:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(args.before)
        before = memory(args.pid)
        sampler = Sampler(args.pid, 0.05)
        sampler.start()
        # The attempts come from --procs processes (uvloop when installed), so the clients'
        # own work spreads over the CPUs instead of queueing in one event loop. Several rounds
        # show whether memory the first one left behind is reused or grows.
        results, rounds, windows = [], [], []
        cpu0 = cpu_seconds(args.pid)
        for rnd in range(args.rounds):
            start_at = time.time() + 1.0
            shares = [args.n // args.procs + (1 if i < args.n % args.procs else 0)
                      for i in range(args.procs)]
            outs = [f"{args.json}.attempts{i}" for i in range(args.procs)]
            workers = [subprocess.Popen(
                [sys.executable, __file__, "attempts", "--proto", args.proto,
                 "--port", str(args.port), "--n", str(k), "--concurrency", str(args.concurrency),
                 "--timeout", str(args.attempt_timeout), "--start-at", str(start_at),
                 "--out", out]) for k, out in zip(shares, outs)]
            while time.time() < start_at:
                await asyncio.sleep(0.01)
            t_start = time.time()
            while any(w.poll() is None for w in workers):
                await asyncio.sleep(0.01)
            t_end = time.time()
            windows.append((t_start, t_end))
            for out in outs:
                with open(out, encoding="utf-8") as fh:
                    results += [tuple(r) for r in json.load(fh)]
                os.unlink(out)
            await asyncio.sleep(args.after)
            peak = max((r for t, r in sampler.samples if t >= t_start and r is not None),
                       default=None)
            rounds.append({"burst_secs": t_end - t_start, "peak_rss_kib": peak,
                           "after_rss_kib": memory(args.pid)["rss_kib"]})
        cpu1 = cpu_seconds(args.pid)
        sampler.halt.set()
        sampler.join()
        after = memory(args.pid)
        after_fds = fds(args.pid)
        # Holders still answer.
        alive = await asyncio.gather(*(c.query() for c in holders), return_exceptions=True)
    finally:
        steady.send_signal(signal.SIGTERM)
        steady.wait(timeout=30)
    await asyncio.gather(*(c.close() for c in holders))

    lat, steady_errors = read_steady(args.steady_out)
    first = windows[0][0]
    before_lat = [l for t, l in lat if first - args.before <= t < first]
    during_lat = [l for t, l in lat if any(a <= t <= b for a, b in windows)]
    after_lat = [l for t, l in lat if t > windows[-1][1]]
    by_code = {}
    for code, text, secs, waited in results:
        entry = by_code.setdefault(code, {"count": 0, "times": [], "messages": {}})
        entry["count"] += 1
        entry["times"].append(secs)
        m = entry["messages"].setdefault(text, {"times": [], "waits": []})
        m["times"].append(secs)
        if waited is not None:
            m["waits"].append(waited)
    codes = {code: {"count": e["count"], "time_s": summary(e["times"]),
                    "messages": {t: {**summary(m["times"]),
                                     "after_login_s": summary(m["waits"])}
                                 for t, m in e["messages"].items()}}
             for code, e in by_code.items()}
    expected = "53300" if args.proto == "postgres" else "1040"
    err_times = [secs for code, _, secs, _ in results if code == expected]
    peak = max((r for _, r in sampler.samples if r is not None), default=None)
    doc = {
        "phase": "burst", "proto": args.proto, "label": args.label, "attempts": args.n, "holders": args.holders,
        "concurrency": args.concurrency, "procs": args.procs, "rounds": rounds,
        "burst_secs": windows[0][1] - windows[0][0],
        "suture_cpu_s": cpu1 - cpu0, "expected_code": expected,
        "expected_errors": len(err_times), "time_to_error_s": summary(err_times),
        "codes": codes,
        "rss_kib": {"before": before["rss_kib"], "peak": peak, "after": after["rss_kib"]},
        "pss_kib": {"before": before["pss_kib"], "after": after["pss_kib"]},
        "fds_after": after_fds, "after_wait_s": args.after,
        "holders_answering": sum(1 for a in alive if not isinstance(a, BaseException)),
        "steady_latency_s": {"before": summary(before_lat), "during": summary(during_lat),
                             "after": summary(after_lat)},
        "steady_errors": len(steady_errors),
        "rss_samples": sampler.samples,
    }
    write_json(args.json, doc)
    print(f"burst {args.proto}: {len(err_times)}/{args.n} got {expected} "
          f"(p99 {pct(err_times, 99)}, max {max(err_times, default=None)}) in "
          f"{windows[0][1] - windows[0][0]:.2f}s; codes {[(k, v['count']) for k, v in codes.items()]}",
          file=sys.stderr, flush=True)


def cmd_attempts(args):
    """Part of a burst: n logins at once (at most --concurrency in flight) from --start-at;
    writes [code, message, seconds, seconds after the last login message] per attempt."""
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    login = pg_attempt if args.proto == "postgres" else my_attempt

    async def run():
        gate = asyncio.Semaphore(args.concurrency)
        results = []

        async def attempt():
            async with gate:
                t0, sent = time.perf_counter(), []
                try:
                    code, text = await asyncio.wait_for(login(args.port, sent), args.timeout)
                except Exception as err:  # noqa: BLE001 - the failure is the measurement
                    code, text = type(err).__name__, str(err)
                t1 = time.perf_counter()
                results.append((code, text[:120], t1 - t0, t1 - sent[-1] if sent else None))

        await asyncio.sleep(max(0.0, args.start_at - time.time()))
        await asyncio.gather(*(attempt() for _ in range(args.n)))
        return results

    write_json(args.out, asyncio.run(run()))


# ------------------------------------------------------------------ pools

def accepting(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def startup_ok(admin):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/startup", timeout=0.5) as r:
            return r.status == 200
    except OSError:
        return False


def cmd_pools(args):
    ports = [int(p) for p in args.ports.split(",")]
    with open(args.log, "w", encoding="utf-8") as log:
        t0 = time.perf_counter()
        env = dict(os.environ)
        if env.get("LD_PRELOAD_SUTURE"):
            env["LD_PRELOAD"] = env["LD_PRELOAD_SUTURE"]
        proc = subprocess.Popen([args.bin, "--config", args.config], stdout=log, stderr=log,
                                env=env)
        pending, startup_at, all_at = set(ports), None, None
        try:
            while time.perf_counter() - t0 < args.timeout and (pending or startup_at is None):
                if proc.poll() is not None:
                    sys.exit(f"pools: suture exited with {proc.returncode}; see {args.log}")
                if pending:
                    pending = {p for p in pending if not accepting(p)}
                    if not pending:
                        all_at = time.perf_counter() - t0
                if startup_at is None and startup_ok(args.admin):
                    startup_at = time.perf_counter() - t0
                if pending or startup_at is None:
                    time.sleep(0.002)
            time.sleep(1)
            mem = memory(proc.pid)
            threads = len(os.listdir(f"/proc/{proc.pid}/task"))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    doc = {"phase": "pools", "pools": len(ports), "all_listening_s": all_at,
           "startup_ok_s": startup_at, "not_listening": sorted(pending), **mem,
           "threads": threads}
    write_json(args.json, doc)
    print(f"pools: {len(ports)} listening after {all_at}s, /startup 200 after {startup_at}s",
          file=sys.stderr, flush=True)


# ------------------------------------------------------------------ soak

async def cmd_soak(args):
    targets = [(t.split(":")[0], int(t.split(":")[1])) for t in args.targets.split(",")]
    counts = {"queries": 0, "reconnects": 0, "errors": {}}
    stop = asyncio.Event()

    def count_error(err):
        key = "%s %s" % error_code(err)
        counts["errors"][key] = counts["errors"].get(key, 0) + 1

    async def client(proto, port):
        c = Client(proto, port)
        while not stop.is_set():
            try:
                if c.conn is None:
                    await c.connect()
                await c.query()
                counts["queries"] += 1
                if random.random() < args.reconnect:
                    await c.close()
                    counts["reconnects"] += 1
            except Exception as err:  # noqa: BLE001 - counted, the client carries on
                count_error(err)
                await c.close()
            try:
                await asyncio.wait_for(stop.wait(),
                                       args.query_every * random.uniform(0.5, 1.5))
            except asyncio.TimeoutError:
                pass
        await c.close()

    tasks = []
    t0 = time.perf_counter()
    for proto, port in targets:
        opened, errors, secs = await open_and_query(proto, port, args.clients, 100)
        if errors:
            count_error(RuntimeError(f"{proto} open: {errors}"))
        print(f"soak {proto}: {len(opened)} clients in {secs:.1f}s", file=sys.stderr,
              flush=True)
        for c in opened:
            await c.close()
        tasks += [asyncio.create_task(client(proto, port)) for _ in range(args.clients)]
    samples = []
    start = time.perf_counter()
    while True:
        el = time.perf_counter() - start
        samples.append({"t": round(el, 1), **memory(args.pid), "fds": fds(args.pid)})
        if el >= args.secs:
            break
        await asyncio.sleep(min(args.interval, max(0.0, args.secs - el)))
    stop.set()
    await asyncio.gather(*tasks)
    rss = [s["rss_kib"] for s in samples]
    after_warm = [s for s in samples if s["t"] >= args.warmup] or samples
    xs = [s["t"] / 60 for s in after_warm]
    ys = [s["rss_kib"] for s in after_warm]
    slope = statistics.linear_regression(xs, ys).slope if len(xs) > 1 else None
    doc = {"phase": "soak", "targets": [p for p, _ in targets], "clients": args.clients,
           "secs": args.secs, "interval": args.interval, "warmup": args.warmup,
           "query_every": args.query_every, "reconnect": args.reconnect,
           "queries": counts["queries"], "reconnects": counts["reconnects"],
           "errors": counts["errors"], "first_kib": after_warm[0]["rss_kib"],
           "last_kib": rss[-1], "max_kib": max(rss), "slope_kib_per_min": slope,
           "samples": samples, "wall_s": time.perf_counter() - t0}
    write_json(args.json, doc)


# ------------------------------------------------------------------ report

def fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        v = f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}" if abs(v) >= 0.01 else f"{v:.4f}"
    elif isinstance(v, int):
        v = f"{v:,}"
    return f"{v}{unit}"


def ms(summ, key):
    v = summ.get(key)
    return None if v is None else v * 1000


def cmd_report(args):
    docs = {}
    for name in sorted(os.listdir(args.dir)):
        if name.endswith(".json"):
            with open(os.path.join(args.dir, name), encoding="utf-8") as fh:
                docs[name[:-5]] = json.load(fh)
    if args.meta:
        with open(args.meta, encoding="utf-8") as fh:
            docs["meta"] = json.load(fh)
    write_json(args.out, docs)
    rows = []  # (what, protocol, value, target, verdict)

    def row(what, proto, value, target="", ok=None):
        rows.append((what, proto, value, target, "" if ok is None else ("ok" if ok else "MISS")))

    for key, d in docs.items():
        if d.get("phase") == "open":
            o = d["opens"][-1]
            p = d["points"][-1]
            row(f"{o['to']:,} sessions opened at once, each ran SELECT 1", d["proto"],
                f"{sum(x['ok'] for x in d['opens'])}/{o['to']} ok in {fmt(o['secs'])} s",
                f"all {o['to']:,}", sum(x["ok"] for x in d["opens"]) == o["to"])
            row("  Suture CPU per session opened", d["proto"],
                fmt(o["suture_cpu_s"] * 1e6 / max(1, o["ok"]), " µs"))
            row("  still answering after the measurement", d["proto"],
                f"{d['answered_at_end']}/{p['clients']}")
            row(f"  Suture memory per session, all {o['to']:,} opened at once (ΔRSS/n)",
                d["proto"], fmt(p.get("rss_per_client_kib"), " KiB"))
    for key, d in docs.items():
        if d.get("phase") == "idle":
            base = d["points"][0]
            row("Suture memory, no clients (RSS / PSS)", d["proto"],
                f"{fmt(base['rss_kib'])} / {fmt(base['pss_kib'])} KiB")
            for p in d["points"][1:]:
                row(f"  per idle client at {p['clients']:,} (ΔRSS/n, ΔPSS/n)", d["proto"],
                    f"{fmt(p.get('rss_per_client_kib'))} / {fmt(p.get('pss_per_client_kib'))} KiB",
                    "≤ 16 KiB", (p.get("rss_per_client_kib") or 1e9) <= 16)
    for key, d in docs.items():
        if d.get("phase") == "burst":
            t = d["time_to_error_s"]
            label = d.get("label", "Suture")
            # The targets are Suture's; another proxy's run is there to compare with.
            ours = label == "Suture"
            proto = d["proto"] if ours else f"{d['proto']} ({label})"
            total = d["attempts"] * len(d.get("rounds", [1]))
            row(f"burst of {d['attempts']:,} attempts ×{len(d.get('rounds', [1]))}, pool held by "
                f"{d['holders'] + 1}", proto, f"{d['expected_errors']:,} got {d['expected_code']}",
                f"all {total:,}" if ours else "", d["expected_errors"] == total if ours else None)
            for text, m in d["codes"].get(d["expected_code"], {}).get("messages", {}).items():
                row(f"  {m['n']:,} × “{text[:58]}”", proto,
                    f"p99 {fmt(ms(m, 'p99'))} / max {fmt(ms(m, 'max'))} ms", "from connect")
                w = m.get("after_login_s", {})
                if w.get("n"):
                    row("    of which after the login's last message", proto,
                        f"p99 {fmt(ms(w, 'p99'))} / max {fmt(ms(w, 'max'))} ms",
                        f"≈ checkout_timeout {args.checkout_timeout}",
                        w["max"] <= args.checkout_timeout_s + 0.25 if ours else None)
            others = {k: v["count"] for k, v in d["codes"].items() if k != d["expected_code"]}
            if others:
                row("  other outcomes", proto, json.dumps(others))
            row("  time to the error, all, p99 / max", proto,
                f"{fmt(ms(t, 'p99'))} / {fmt(ms(t, 'max'))} ms",
                f"≤ checkout_timeout {args.checkout_timeout} + login")
            s = d["steady_latency_s"]
            row("  connected client SELECT 1 p50 before / during", proto,
                f"{fmt(ms(s['before'], 'p50'))} / {fmt(ms(s['during'], 'p50'))} ms")
            row("  connected client SELECT 1 p99 before / during", proto,
                f"{fmt(ms(s['before'], 'p99'))} / {fmt(ms(s['during'], 'p99'))} ms",
                f"{d['steady_errors']} errors")
            r = d["rss_kib"]
            # Back to baseline: at least 90 % of what the burst added is given back.
            returned = (None if None in (r["before"], r["peak"], r["after"])
                        else r["after"] - r["before"] <= 0.1 * max(0, r["peak"] - r["before"]))
            row(f"  {label} RSS before / peak / after", proto,
                f"{fmt(r['before'])} / {fmt(r['peak'])} / {fmt(r['after'])} KiB",
                f"≥ 90 % of the rise returned {d['after_wait_s']} s later" if ours else "",
                returned if ours else None)
            for i, rd in enumerate(d.get("rounds", [])):
                row(f"  round {i + 1} of {d['attempts']:,}: RSS peak / after", proto,
                    f"{fmt(rd['peak_rss_kib'])} / {fmt(rd['after_rss_kib'])} KiB")
    for key, d in docs.items():
        if d.get("phase") == "pools":
            row(f"{d['pools']} pools: start → all listening", "both",
                fmt(None if d["all_listening_s"] is None else d["all_listening_s"] * 1000, " ms"),
                "< 1 s", d["all_listening_s"] is not None and d["all_listening_s"] < 1)
            row(f"{d['pools']} pools: start → /startup 200", "both",
                fmt(None if d["startup_ok_s"] is None else d["startup_ok_s"] * 1000, " ms"))
            row(f"{d['pools']} pools: RSS", "both", fmt(d["rss_kib"], " KiB"))
    for key, d in docs.items():
        if d.get("phase") == "soak":
            row(f"soak {d['secs']} s, {d['clients']:,} clients per protocol", "+".join(d["targets"]),
                f"{d['queries']:,} queries, {d['reconnects']:,} re-logins, "
                f"{sum(d['errors'].values())} errors")
            row("  RSS first / last / max", "+".join(d["targets"]),
                f"{fmt(d['first_kib'])} / {fmt(d['last_kib'])} / {fmt(d['max_kib'])} KiB",
                f"first at ≥{d['warmup']} s")
            row("  RSS slope", "+".join(d["targets"]),
                fmt(d["slope_kib_per_min"], " KiB/min"))
    meta = docs.get("meta")
    if meta:
        print(f"{meta['suture']} (commit {meta['commit']}"
              f"{', uncommitted changes' if meta['uncommitted_changes'] else ''}), "
              f"{meta['cpu']} x{meta['nproc']}, {meta['mem_gib']} GiB, {meta['kernel']}; "
              f"PostgreSQL {meta['postgres']}, MariaDB {meta['mariadb']}"
              f"{'; LD_PRELOAD ' + meta['preload'] if meta.get('preload') else ''}")
    w = [max(len(r[i]) for r in rows + [("what", "protocol", "value", "target", "")])
         for i in range(5)]
    line = lambda r: "  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)).rstrip()  # noqa: E731
    print(line(("what", "protocol", "value", "target", "")))
    print("  ".join("-" * x for x in w))
    for r in rows:
        print(line(r))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("open")
    p.add_argument("--name", default="open")
    p.add_argument("--proto", required=True, choices=("postgres", "mysql"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--steps", required=True)
    p.add_argument("--settle", type=float, default=3)
    p.add_argument("--concurrency", type=int, default=100000)
    p.add_argument("--json", required=True)
    p = sub.add_parser("steady")
    p.add_argument("--proto", required=True, choices=("postgres", "mysql"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--out", required=True)
    p = sub.add_parser("burst")
    p.add_argument("--proto", required=True, choices=("postgres", "mysql"))
    p.add_argument("--label", help="what the report calls the proxy under test [Suture]",
                   default="Suture")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--holders", type=int, required=True)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=100000)
    p.add_argument("--before", type=float, default=5)
    p.add_argument("--after", type=float, default=5)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--attempt-timeout", type=float, default=60)
    p.add_argument("--steady-out", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p = sub.add_parser("attempts")
    p.add_argument("--proto", required=True, choices=("postgres", "mysql"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=100000)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--start-at", type=float, required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("pools")
    p.add_argument("--bin", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--ports", required=True)
    p.add_argument("--admin", type=int, required=True)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--log", required=True)
    p.add_argument("--json", required=True)
    p = sub.add_parser("soak")
    p.add_argument("--targets", required=True)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--secs", type=float, default=600)
    p.add_argument("--interval", type=float, default=10)
    p.add_argument("--warmup", type=float, default=30)
    p.add_argument("--query-every", type=float, default=10)
    p.add_argument("--reconnect", type=float, default=0.02)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--json", required=True)
    p = sub.add_parser("report")
    p.add_argument("--dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--meta")
    p.add_argument("--checkout-timeout", default="")
    p.add_argument("--checkout-timeout-s", type=float, default=0)
    args = ap.parse_args()
    if args.cmd == "pools":
        cmd_pools(args)
    elif args.cmd == "attempts":
        cmd_attempts(args)
    elif args.cmd == "report":
        cmd_report(args)
    else:
        asyncio.run({"open": cmd_open, "steady": cmd_steady, "burst": cmd_burst,
                     "soak": cmd_soak}[args.cmd](args))


if __name__ == "__main__":
    main()
