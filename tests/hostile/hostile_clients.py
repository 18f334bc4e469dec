#!/usr/bin/env python3
"""Hostile and careless clients (issue 10): the measuring script behind its closing table.

This module owns the measurements and their table. It starts the given Suture binary
itself, once per measurement, with a TOML config written to a temporary directory (kept
in `--log-dir` with the measurement's log when given), in
front of a PostgreSQL that is already running (`--pg-port`, with the role `app`, password
`app-secret`, owning the database `app`), plays the clients, prints one row per
measurement and writes the same rows to `--json`. `--table BEFORE.json AFTER.json` prints
two such runs side by side. tests/hostile/run.sh starts the server and calls it.

Only the standard library is used: the clients speak the wire protocol over raw sockets
(startup, SCRAM-SHA-256, simple queries), because the hostile ones must send what no
driver sends; psql is the one real client (the libpq row). The config uses only keys that
the binaries before and after issue 10 both know (no `auth_failure_delay`, no
`max_buffered_bytes`), so the same run measures either.

The measurements:

  1. log bytes per unauthenticated try: 40 SCRAM logins with a 9,900-byte unknown user
     name (startup, SASLInitialResponse, a client-final with a bogus proof), 40 with a
     9,000-byte SASL mechanism name; Suture's log growth per try, and the longest run of
     the name that came back to the client.
  2. another session's worst latency while nobody reads Suture's stderr (a pipe) for 5 s,
     under debug logging and a flood of short sessions and wrong passwords from 8
     threads; then the pipe is drained and the log searched for dropped lines.
  3. backends created by 40 protocol-violating clients (each logs in and sends message
     type 'y'), from `pg_stat_database.sessions` over a direct superuser connection, and
     what the clients saw (FATAL 08P01, connection closed within 3 s). An extra row: one
     client that keeps sending 'y' for 3 s. Clients one after another hide the churn where
     the connection stays open (the backend swapped in under one is handed to the next);
     one client repeating the violation shows it.
  4. what psql (`sslmode=prefer`) shows at `max_client_connections = 1`.
  5. VmRSS growth of Suture with one idle session after a 60 MiB simple query.
  6. `client_write_timeout = "2s"`: a reader of an 8,000-row result (about 8 MB) that
     reads 32 KiB every 100 ms, one that reads nothing for 6 s, and as an extra row one
     that reads 128 KiB every 100 ms. One after another, each on its own connection with
     a fixed 64 KiB receive buffer. When Suture closed its end is seen in /proc (its
     descriptor of that connection is gone), not guessed from the client side, and the
     largest send queue of Suture's end is reported: the kernel tells a writer that a
     socket is writable again only once a third of its send buffer (autotuned up to
     net.ipv4.tcp_wmem's maximum, 4 MiB by default) is free, so a slow reader is seen to
     make progress only every ~1.3 MiB it reads.

Every Suture started here is killed when its measurement ends, and at exit.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import glob
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

PROTOCOL_3 = 196608
WAIT_CAP = 15.0  # longest wait for any one answer; a longer one is reported as "> 15 s"
STALL_SECS = 5.0
FLOOD_THREADS = 8
TRIES = 40
VIOLATORS = 40
VIOLATION = b"y\x00\x00\x00\x04"  # message type 'y' does not exist
REPEAT_SECS = 3.0
BIG_QUERY_MIB = 60
WIDE_ROWS = 8000
WIDE_QUERY = f"SELECT repeat('x', 1000) FROM generate_series(1, {WIDE_ROWS})"
SLOW_CHUNK = 32 * 1024
SLOW_EVERY = 0.1
FASTER_CHUNK = 128 * 1024  # a reference reader 4 times as fast
STALLED_SECS = 6.0
READER_RCVBUF = 64 * 1024  # fixed receive buffer of the reader clients (no autotuning)


# ---------------------------------------------------------------- wire protocol


class Closed(Exception):
    """The peer closed the connection (or reset it)."""


class Timeout(Exception):
    """No complete message within the time allowed."""


class PgError(Exception):
    """An ErrorResponse; `fields` maps field codes ('S', 'V', 'C', 'M', ...) to text."""

    def __init__(self, fields: dict[str, str]):
        super().__init__(f"{fields.get('V', fields.get('S', '?'))} {fields.get('C', '?')}: "
                         f"{fields.get('M', '')}")
        self.fields = fields


def error_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def message(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!I", len(body) + 4) + body


def startup_packet(params: dict[str, str]) -> bytes:
    body = struct.pack("!I", PROTOCOL_3)
    for key, value in params.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def sasl_initial(mechanism: str, data: bytes) -> bytes:
    return message(b"p", mechanism.encode() + b"\0" + struct.pack("!i", len(data)) + data)


def query_message(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


def longest_run(data: bytes, byte: int) -> int:
    best = run = 0
    for b in data:
        run = run + 1 if b == byte else 0
        best = max(best, run)
    return best


class Conn:
    """One raw protocol connection with a receive buffer and deadlines on every read."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.received = bytearray()  # everything read, kept only when `keep` is set
        self.keep = False

    @classmethod
    def tcp(cls, port: int, host: str = "127.0.0.1", rcvbuf: int | None = None) -> "Conn":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(WAIT_CAP)
        sock.connect((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    @classmethod
    def unix(cls, directory: str, port: int) -> "Conn":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(WAIT_CAP)
        sock.connect(os.path.join(directory, f".s.PGSQL.{port}"))
        return cls(sock)

    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        self.sock.settimeout(WAIT_CAP)
        self.sock.sendall(data)

    def recv_some(self, limit: int, timeout: float) -> bytes:
        """One recv of at most `limit` bytes into the buffer; raises Closed at EOF."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(limit)
        except socket.timeout as exc:
            raise Timeout() from exc
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise Closed() from exc
        if not data:
            raise Closed()
        if self.keep:
            self.received += data
        self.buf += data
        return data

    def take_message(self) -> tuple[bytes, bytes] | None:
        """The next complete message in the buffer, if there is one."""
        if len(self.buf) < 5:
            return None
        length = struct.unpack_from("!I", self.buf, 1)[0]
        if len(self.buf) < 1 + length:
            return None
        tag, body = bytes(self.buf[:1]), bytes(self.buf[5:1 + length])
        del self.buf[:1 + length]
        return tag, body

    def read_message(self, timeout: float = WAIT_CAP) -> tuple[bytes, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.take_message()
            if msg is not None:
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout()
            self.recv_some(256 * 1024, left)

    def wait_closed(self, timeout: float) -> bool:
        """Reads and discards until EOF; False when the deadline comes first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self.recv_some(256 * 1024, left)
                self.buf.clear()
            except Closed:
                return True
            except Timeout:
                return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


_SALTED_CACHE: dict[tuple[str, bytes, int], bytes] = {}
_SALTED_LOCK = threading.Lock()


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """PBKDF2 of the password, cached: the flood logs in thousands of times with one salt."""
    key = (password, salt, iterations)
    with _SALTED_LOCK:
        if key in _SALTED_CACHE:
            return _SALTED_CACHE[key]
    value = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    with _SALTED_LOCK:
        _SALTED_CACHE[key] = value
    return value


def scram_final(password: str, client_first_bare: str, server_first: str,
                bogus: bool = False) -> str:
    """The client-final message answering `server_first` (RFC 5802 / 7677)."""
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    without_proof = f"c=biws,r={attrs['r']}"
    if bogus:
        proof = secrets.token_bytes(32)
    else:
        salted = salted_password(password, base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return f"{without_proof},p={base64.b64encode(proof).decode()}"


def expect_auth(conn: Conn, code: int, timeout: float) -> bytes:
    """Reads until an Authentication message with `code`; raises PgError on an error."""
    while True:
        tag, body = conn.read_message(timeout)
        if tag == b"E":
            raise PgError(error_fields(body))
        if tag == b"R":
            got = struct.unpack_from("!I", body)[0]
            if got == code:
                return body[4:]
            raise RuntimeError(f"authentication request {got}, expected {code}")


def scram_exchange(conn: Conn, password: str, timeout: float) -> None:
    """From AuthenticationSASL on: SASLInitialResponse, SASLResponse, until SASLFinal."""
    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    client_first_bare = f"n=,r={nonce}"
    conn.send(sasl_initial("SCRAM-SHA-256", f"n,,{client_first_bare}".encode()))
    server_first = expect_auth(conn, 11, timeout).decode()
    final = scram_final(password, client_first_bare, server_first)
    conn.send(message(b"p", final.encode()))
    expect_auth(conn, 12, timeout)


def login(conn: Conn, user: str, password: str, database: str,
          timeout: float = WAIT_CAP) -> None:
    """Startup and authentication (trust, cleartext, md5 or SCRAM) up to ReadyForQuery."""
    conn.send(startup_packet({"user": user, "database": database}))
    while True:
        tag, body = conn.read_message(timeout)
        if tag == b"E":
            raise PgError(error_fields(body))
        if tag == b"Z":
            return
        if tag != b"R":
            continue
        code = struct.unpack_from("!I", body)[0]
        if code == 10:
            scram_exchange(conn, password, timeout)
        elif code == 5:
            inner = hashlib.md5((password + user).encode()).hexdigest()
            outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
            conn.send(message(b"p", b"md5" + outer.encode() + b"\0"))
        elif code == 3:
            conn.send(message(b"p", password.encode() + b"\0"))
        elif code != 0:
            raise RuntimeError(f"unsupported authentication request {code}")


def simple_query(conn: Conn, sql: str, timeout: float = WAIT_CAP) -> list[list[str | None]]:
    """Runs one simple query; returns its rows as text, raises PgError on an error."""
    conn.send(query_message(sql))
    deadline = time.monotonic() + timeout
    rows: list[list[str | None]] = []
    error = None
    while True:
        tag, body = conn.read_message(max(deadline - time.monotonic(), 0.0))
        if tag == b"D":
            rows.append(data_row(body))
        elif tag == b"E":
            error = PgError(error_fields(body))
        elif tag == b"Z":
            if error:
                raise error
            return rows


def data_row(body: bytes) -> list[str | None]:
    count = struct.unpack_from("!H", body)[0]
    pos, values = 2, []
    for _ in range(count):
        size = struct.unpack_from("!i", body, pos)[0]
        pos += 4
        if size < 0:
            values.append(None)
        else:
            values.append(body[pos:pos + size].decode("utf-8", "replace"))
            pos += size
    return values


def terminate(conn: Conn) -> None:
    try:
        conn.send(message(b"X", b""))
    except OSError:
        pass
    conn.close()


# ---------------------------------------------------------------- Suture processes

_RUNNING: list[subprocess.Popen] = []


def kill_all() -> None:
    for proc in list(_RUNNING):
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    _RUNNING.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Suture:
    """One `suture --config FILE`, its log file (or stderr pipe) and its /proc entries."""

    def __init__(self, args, label: str, pool_extra: dict[str, str],
                 rust_log: str = "info", pipe: bool = False):
        self.args = args
        if args.log_dir:
            self.dir = os.path.join(args.log_dir, label)
            os.makedirs(self.dir, exist_ok=True)
        else:
            self.dir = tempfile.mkdtemp(prefix=f"suture-hostile-{label}-")
        self.port = free_port()
        self.config_path = os.path.join(self.dir, "suture.toml")
        with open(self.config_path, "w") as f:
            f.write(self.config(pool_extra))
        self.log_path = os.path.join(self.dir, "suture.log")
        self.log_file = open(self.log_path, "wb")
        env = dict(os.environ, RUST_LOG=rust_log)
        self.proc = subprocess.Popen(
            [args.suture_bin, "--config", self.config_path], env=env,
            stdin=subprocess.DEVNULL, stdout=self.log_file,
            stderr=subprocess.PIPE if pipe else self.log_file)
        _RUNNING.append(self.proc)
        self.wait_listening()

    def config(self, pool_extra: dict[str, str]) -> str:
        pool = {
            "protocol": '"postgres"',
            "listen": f'"127.0.0.1:{self.port}"',
            "servers": f'["{self.args.pg_host}:{self.args.pg_port}"]',
            "tls": '"disable"',
            "client_auth": '"scram-sha-256"',
            "min_idle": "0",
            "max_size": "20",
            "failover_hold": '"5s"',
        }
        pool.update(pool_extra)
        lines = [f'[admin]\nlisten = "127.0.0.1:{free_port()}"\n', "[pools.app]"]
        lines += [f"{key} = {value}" for key, value in pool.items()]
        lines += ["", f"[pools.app.users.{self.args.user}]",
                  f"password = {json.dumps(self.args.password)}", ""]
        return "\n".join(lines)

    def wait_listening(self, limit: float = 10.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"suture exited ({self.proc.returncode}) before listening; "
                                   f"log:\n{self.log_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"suture did not listen on {self.port} within {limit} s")

    def log_size(self) -> int:
        self.log_file.flush()
        return os.path.getsize(self.log_path)

    def log_text(self, start: int = 0) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return f.read().decode("utf-8", "replace")

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    def held_connection(self, client_port: int) -> int | None:
        """The send queue of Suture's end of the client's connection while Suture still has a
        descriptor for it; None once it let go."""
        entry = socket_entry(self.port, client_port)
        if entry is None:
            return None
        target = f"socket:[{entry[0]}]"
        try:
            for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
                try:
                    if os.readlink(f"/proc/{self.proc.pid}/fd/{fd}") == target:
                        return entry[1]
                except OSError:
                    continue
        except OSError:
            pass
        return None

    def connect(self, **kw) -> Conn:
        return Conn.tcp(self.port, **kw)

    def login(self, password: str | None = None, **kw) -> Conn:
        conn = self.connect(**kw)
        try:
            login(conn, self.args.user, password or self.args.password, self.args.database)
        except BaseException:
            conn.close()
            raise
        return conn

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self.proc in _RUNNING:
            _RUNNING.remove(self.proc)
        self.log_file.close()
        if not self.args.log_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Suture":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def socket_entry(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """(inode, bytes in the send queue) of the IPv4 socket local_port -> remote_port, from
    /proc/net/tcp; None when no process holds it (gone, or orphaned: inode 0)."""
    want_local, want_remote = f":{local_port:04X}", f":{remote_port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[1].endswith(want_local) and cols[2].endswith(want_remote):
                    inode = int(cols[9])
                    if inode:
                        return inode, int(cols[4].split(":")[0], 16)
    except OSError:
        pass
    return None


class CloseWatch(threading.Thread):
    """Polls when Suture lets go of its end of one client connection."""

    def __init__(self, suture: Suture, client_port: int, since: float):
        super().__init__(daemon=True)
        self.suture, self.client_port, self.since = suture, client_port, since
        self.closed_after: float | None = None
        self.max_send_queue = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            queued = self.suture.held_connection(self.client_port)
            if queued is None:
                self.closed_after = time.monotonic() - self.since
                return
            self.max_send_queue = max(self.max_send_queue, queued)
            time.sleep(0.05)


# ---------------------------------------------------------------- results


@dataclass
class Row:
    key: str
    measurement: str
    value: str
    detail: str = ""
    raw: dict = field(default_factory=dict)


def fmt_int(n: int) -> str:
    return f"{n:,}"


def plural(n: int, word: str) -> str:
    return f"{fmt_int(n)} {word}" + ("" if n == 1 else "s")


def fmt_secs(s: float) -> str:
    return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"


def log_excerpt(text: str, pattern: str, width: int = 200) -> str:
    """The first log line matching `pattern` (a regex), cut to `width` characters."""
    for line in text.splitlines():
        if re.search(pattern, line, re.IGNORECASE):
            line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
            return line if len(line) <= width else line[:width] + "…"
    return ""


# ---------------------------------------------------------------- 1. log flooding


def read_to_error(conn: Conn, timeout: float) -> dict[str, str] | None:
    """Reads until an ErrorResponse (its fields) or EOF/timeout (None)."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            tag, body = conn.read_message(max(deadline - time.monotonic(), 0.0))
            if tag == b"E":
                return error_fields(body)
    except (Closed, Timeout):
        return None


def unknown_user_try(suture: Suture, user: str) -> tuple[int, str]:
    """A SCRAM login as an unknown user with a bogus proof; (echo run, stage reached)."""
    conn = suture.connect()
    conn.keep = True
    stage = "startup"
    try:
        conn.send(startup_packet({"user": user, "database": suture.args.database}))
        expect_auth(conn, 10, WAIT_CAP)
        stage = "SASLInitialResponse"
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        conn.send(sasl_initial("SCRAM-SHA-256", f"n,,n=,r={nonce}".encode()))
        server_first = expect_auth(conn, 11, WAIT_CAP).decode()
        stage = "client-final"
        conn.send(message(b"p", scram_final("", f"n=,r={nonce}", server_first, True).encode()))
        fields = read_to_error(conn, WAIT_CAP)
        stage = f"error {fields.get('C')}" if fields else "no error"
    except PgError as err:
        stage = f"error {err.fields.get('C')} at {stage}"
    except (Closed, Timeout, RuntimeError) as err:
        stage = f"{type(err).__name__} at {stage}"
    finally:
        conn.close()
    return longest_run(conn.received, ord("u")), stage


def mechanism_try(suture: Suture, mechanism: str) -> tuple[int, str]:
    """A login offering an unknown SASL mechanism; (echo run, what came back)."""
    conn = suture.connect()
    conn.keep = True
    try:
        conn.send(startup_packet({"user": suture.args.user, "database": suture.args.database}))
        expect_auth(conn, 10, WAIT_CAP)
        conn.send(sasl_initial(mechanism, b"n,,n=,r=abc"))
        fields = read_to_error(conn, WAIT_CAP)
        stage = f"error {fields.get('C')}" if fields else "no error"
    except PgError as err:
        stage = f"error {err.fields.get('C')} before the mechanism"
    except (Closed, Timeout, RuntimeError) as err:
        stage = type(err).__name__
    finally:
        conn.close()
    return longest_run(conn.received, ord("M")), stage


def measure_log_flooding(args) -> list[Row]:
    with Suture(args, "logflood", {}) as suture:
        time.sleep(0.5)
        start = suture.log_size()
        user_echo, user_stages = 0, {}
        for i in range(TRIES):
            echo, stage = unknown_user_try(suture, "u" * 9_900 + str(i))
            user_echo = max(user_echo, echo)
            user_stages[stage] = user_stages.get(stage, 0) + 1
        time.sleep(0.5)
        middle = suture.log_size()
        mech_echo, mech_stages = 0, {}
        for _ in range(TRIES):
            echo, stage = mechanism_try(suture, "M" * 9_000)
            mech_echo = max(mech_echo, echo)
            mech_stages[stage] = mech_stages.get(stage, 0) + 1
        time.sleep(0.5)
        end = suture.log_size()
    per_user, per_mech = (middle - start) // TRIES, (end - middle) // TRIES
    per_try = (end - start) // (2 * TRIES)
    raw = {"log_bytes": end - start, "tries": 2 * TRIES, "per_try": per_try,
           "per_user_try": per_user, "per_mechanism_try": per_mech,
           "user_echo": user_echo, "mechanism_echo": mech_echo,
           "user_outcomes": user_stages, "mechanism_outcomes": mech_stages}
    return [
        Row("log_per_try", "log bytes per unauthenticated try",
            f"{fmt_int(per_try)} B (user {fmt_int(per_user)}, mechanism {fmt_int(per_mech)})",
            f"{2 * TRIES} tries: {TRIES} with a 9,900-byte unknown user name "
            f"({outcomes(user_stages)}), {TRIES} with a 9,000-byte SASL mechanism "
            f"({outcomes(mech_stages)}); {fmt_int(end - start)} B of log in all", raw),
        Row("echo", "longest run of the name echoed to the client",
            f"user {fmt_int(user_echo)} B, mechanism {fmt_int(mech_echo)} B",
            "bytes of the client's own user name / mechanism name in what it got back", raw),
    ]


def outcomes(stages: dict[str, int]) -> str:
    return ", ".join(f"{n}× {stage}" for stage, n in sorted(stages.items()))


# ---------------------------------------------------------------- 2. stalled log reader


class Flood:
    """Threads that log in, SELECT 1 and leave, or fail a login, until stopped."""

    def __init__(self, suture: Suture, threads: int):
        self.suture = suture
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sessions = self.bad_logins = self.errors = 0
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(threads)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def run(self, ident: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            wrong = (n + ident) % 4 == 0
            kind = self.one(wrong)
            with self.lock:
                setattr(self, kind, getattr(self, kind) + 1)

    def one(self, wrong: bool) -> str:
        conn = None
        try:
            if wrong:
                try:
                    self.suture.login("not-the-password")
                except PgError:
                    return "bad_logins"
                return "errors"
            conn = self.suture.login()
            simple_query(conn, "SELECT 1")
            return "sessions"
        except (OSError, Closed, Timeout, PgError, RuntimeError):
            return "errors"
        finally:
            if conn:
                terminate(conn)

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(WAIT_CAP + 5)


class Probe(threading.Thread):
    """An established session that runs SELECT 1 every 100 ms and keeps the worst wait."""

    def __init__(self, conn: Conn):
        super().__init__(daemon=True)
        self.conn = conn
        self.stop = threading.Event()
        self.worst = 0.0
        self.count = 0
        self.hung = False
        self.failure = ""

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                simple_query(self.conn, "SELECT 1", WAIT_CAP)
            except Timeout:
                self.hung = True
                self.worst = max(self.worst, time.monotonic() - started)
                return
            except (OSError, Closed, PgError) as err:
                self.failure = str(err) or type(err).__name__
                return
            self.worst = max(self.worst, time.monotonic() - started)
            self.count += 1
            time.sleep(0.1)


class Drain(threading.Thread):
    """Reads Suture's stderr pipe until EOF."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.data = bytearray()
        self.lock = threading.Lock()

    def run(self) -> None:
        while True:
            chunk = self.pipe.read1(64 * 1024)
            if not chunk:
                return
            with self.lock:
                self.data += chunk

    def text(self) -> str:
        with self.lock:
            return self.data.decode("utf-8", "replace")


def measure_stalled_log_reader(args) -> list[Row]:
    with Suture(args, "stall", {"min_idle": "2"}, rust_log="suture=debug,info",
                pipe=True) as suture:
        probe = Probe(suture.login())
        flood = Flood(suture, FLOOD_THREADS)
        flood.start()
        probe.start()
        time.sleep(STALL_SECS)
        with flood.lock:
            during = (flood.sessions, flood.bad_logins, flood.errors)
        probe.stop.set()
        flood.stop.set()
        drain = Drain(suture.proc.stderr)
        drain.start()
        probe.join(WAIT_CAP + 5)
        flood.join()
        dropped = wait_for_drop_report(suture, drain)
        probe_conn_alive = not probe.hung and not probe.failure
        terminate(probe.conn)
        suture.proc.kill()
        drain.join(5)
        with open(os.path.join(suture.dir, "stderr-drained.log"), "wb") as f:
            f.write(drain.data)
    worst = "> 15 s" if probe.hung else fmt_secs(probe.worst)
    if probe.failure:
        worst += f" (then failed: {probe.failure})"
    line = log_excerpt(drain.text(), r"dropped")
    totals = [int(t) for t in re.findall(r"total[=:]\"?(\d+)", drain.text())]
    raw = {"worst_secs": probe.worst, "hung": probe.hung, "probes": probe.count,
           "flood_sessions": during[0], "flood_bad_logins": during[1],
           "flood_errors": during[2], "probe_alive": probe_conn_alive,
           "dropped_reported": dropped, "dropped_total": max(totals, default=None),
           "dropped_line": line, "log_bytes_drained": len(drain.data)}
    drop_value = "no"
    if dropped:
        drop_value = "yes" + (f" ({fmt_int(max(totals))} lines)" if totals else "")
    return [
        Row("stall_latency", "another session's worst SELECT 1, log reader stalled 5 s",
            worst,
            f"{probe.count} probes; the flood completed {fmt_int(during[0])} sessions and "
            f"{fmt_int(during[1])} wrong-password logins ({fmt_int(during[2])} failed "
            f"otherwise) in the {STALL_SECS:.0f} s with debug logging", raw),
        Row("stall_dropped", "log says lines were dropped (pipe drained after 5 s)",
            drop_value, line or f"no such line in {fmt_int(len(drain.data))} B of log", raw),
    ]


def wait_for_drop_report(suture: Suture, drain: Drain, limit: float = 5.0) -> bool:
    """Gives the log something to say for a few seconds while the reader catches up."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if re.search(r"dropped", drain.text(), re.IGNORECASE):
            return True
        try:
            terminate(suture.login())
        except (OSError, Closed, Timeout, PgError):
            pass
        time.sleep(0.3)
    return bool(re.search(r"dropped", drain.text(), re.IGNORECASE))


# ---------------------------------------------------------------- 3. protocol violations


class Admin:
    """A direct superuser connection to PostgreSQL, for pg_stat_database."""

    def __init__(self, args):
        if args.admin_host.startswith("/"):
            self.conn = Conn.unix(args.admin_host, args.pg_port)
        else:
            self.conn = Conn.tcp(args.pg_port, args.admin_host)
        login(self.conn, args.admin_user, args.admin_password, args.admin_db)
        self.database = args.database

    def sessions(self) -> int:
        sql = ("SELECT pg_stat_clear_snapshot(), sessions FROM pg_stat_database "
               f"WHERE datname = '{self.database}'")
        return int(simple_query(self.conn, sql)[0][1])

    def settled_sessions(self, limit: float = 10.0) -> int:
        """The counter once it has not moved for a second (backends flush it on exit)."""
        last, since = self.sessions(), time.monotonic()
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = self.sessions()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= 1.0:
                break
        return last

    def close(self) -> None:
        terminate(self.conn)


def violate(suture: Suture) -> tuple[str, bool]:
    """Logs in, sends message type 'y'; (what came back, closed within 3 s)."""
    conn = suture.login()
    deadline = time.monotonic() + 3.0
    try:
        conn.send(VIOLATION)
        fields = read_to_error(conn, 3.0)
        saw = f"{fields.get('V', fields.get('S'))} {fields.get('C')}" if fields else "nothing"
        closed = conn.wait_closed(max(deadline - time.monotonic(), 0.0))
    except (OSError, Closed):
        saw, closed = "reset", True
    finally:
        conn.close()
    return saw, closed


def violate_repeatedly(suture: Suture, secs: float) -> int:
    """One client sends message type 'y' again and again for `secs`, each time after an
    answer or 50 ms (a message sent while a backend is swapped may go unanswered), until
    it is closed; returns how many of its violations were answered."""
    conn = suture.login()
    deadline = time.monotonic() + secs
    answered = 0
    try:
        while time.monotonic() < deadline:
            conn.send(VIOLATION)
            try:
                while True:
                    tag, _ = conn.read_message(0.05)
                    if tag == b"E":
                        answered += 1
                        break
            except Timeout:
                continue
    except (OSError, Closed):
        pass
    finally:
        conn.close()
    return answered


def backends_created(admin: Admin, args, label: str, play) -> tuple[int, object, str]:
    """Starts Suture, runs `play(suture)`, stops Suture; the backends PostgreSQL created
    meanwhile (pg_stat_database.sessions: Suture gone, its backends have flushed it)."""
    before = admin.settled_sessions()
    with Suture(args, label, {}) as suture:
        result = play(suture)
        time.sleep(0.5)
    after = admin.settled_sessions()
    return after - before, result, f"{before} to {after}"


def violators(suture: Suture) -> tuple[dict[str, int], int]:
    seen: dict[str, int] = {}
    closed = 0
    for _ in range(VIOLATORS):
        saw, was_closed = violate(suture)
        seen[saw] = seen.get(saw, 0) + 1
        closed += was_closed
    return seen, closed


def measure_protocol_violations(args) -> list[Row]:
    admin = Admin(args)
    try:
        created, (seen, closed), moved = backends_created(admin, args, "violations", violators)
        repeat_created, answered, repeat_moved = backends_created(
            admin, args, "violation-repeat", lambda s: violate_repeatedly(s, REPEAT_SECS))
    finally:
        admin.close()
    fatal = seen.get("FATAL 08P01", 0)
    raw = {"backends": created, "clients": VIOLATORS, "seen": seen, "closed": closed,
           "repeat_backends": repeat_created, "repeat_answered": answered}
    return [
        Row("violation_backends", "backends created by 40 protocol-violating clients",
            fmt_int(created),
            f"pg_stat_database.sessions of '{args.database}' went from {moved} "
            "(Suture started, 40 clients one after another, Suture stopped)", raw),
        Row("violation_seen", "what those clients saw",
            f"{fatal}/{VIOLATORS} FATAL 08P01, {closed}/{VIOLATORS} closed within 3 s",
            "all replies: " + outcomes(seen), raw),
        Row("violation_repeat", f"one client repeating the violation for {REPEAT_SECS:.0f} s "
            "(extra)", f"{plural(repeat_created, 'backend')}, {fmt_int(answered)} answered",
            f"it sends message type 'y' after each answer or every 50 ms while its connection "
            f"stays open; pg_stat_database.sessions went from {repeat_moved}", raw),
    ]


# ---------------------------------------------------------------- 4. libpq at the cap


def find_psql(args) -> str:
    if args.psql:
        return args.psql
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not found:
        raise RuntimeError("no psql under /usr/lib/postgresql/*/bin (give --psql)")
    return found[-1]


def hold_the_slot(suture: Suture) -> Conn:
    """Logs in once the slot of the readiness probe's connection is free again."""
    for _ in range(50):
        try:
            conn = suture.login()
            simple_query(conn, "SELECT 1")
            return conn
        except (PgError, Closed, OSError):
            time.sleep(0.1)
    raise RuntimeError("could not take the only client slot")


def measure_connection_cap(args) -> list[Row]:
    with Suture(args, "cap", {"max_client_connections": "1"}) as suture:
        holder = hold_the_slot(suture)
        start = suture.log_size()
        dsn = f"host=127.0.0.1 port={suture.port} user={args.user} dbname={args.database} " \
              "sslmode=prefer connect_timeout=5"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = args.password
        out = subprocess.run([find_psql(args), dsn, "-X", "-c", "SELECT 1"], env=env,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=30)
        time.sleep(0.3)
        logged = log_excerpt(suture.log_text(start), r"too many clients")
        terminate(holder)
    said = " ".join(out.stderr.split())
    short = said.split("failed: ", 1)[-1] if "failed: " in said else said
    raw = {"psql_stderr": out.stderr, "psql_exit": out.returncode, "logged": logged}
    return [
        Row("cap_libpq", "what libpq (psql, sslmode=prefer) shows at the cap",
            short or f"(nothing; exit {out.returncode})", said, raw),
        Row("cap_logged", "the refusal at the cap is logged",
            "yes" if logged else "no", logged or "no log line about the refusal", raw),
    ]


# ---------------------------------------------------------------- 5. memory after a big query


def measure_idle_rss(args) -> list[Row]:
    with Suture(args, "rss", {}) as suture:
        conn = suture.login()
        simple_query(conn, "SELECT 1")
        time.sleep(0.5)
        baseline = suture.rss_kib()
        size = BIG_QUERY_MIB * 1024 * 1024
        big = "SELECT length('" + "x" * size + "')"
        answer = simple_query(conn, big, timeout=120)[0][0]
        del big
        time.sleep(2.0)
        after = suture.rss_kib()
        terminate(conn)
    grown = after - baseline
    raw = {"baseline_kib": baseline, "after_kib": after, "grown_kib": grown,
           "answer": answer}
    return [Row("idle_rss", "RSS held by an idle session after a 60 MiB query",
                f"+{fmt_int(grown)} KiB",
                f"VmRSS {fmt_int(baseline)} KiB before, {fmt_int(after)} KiB 2 s after the "
                f"answer (length {answer})", raw)]


# ---------------------------------------------------------------- 6. slow and stalled readers


@dataclass
class ReadOutcome:
    rows: int = 0
    complete: bool = False
    ended: str = ""
    client_secs: float = 0.0
    suture_closed_after: float | None = None
    max_send_queue: int = 0


def count_rows(conn: Conn, outcome: ReadOutcome) -> None:
    while (msg := conn.take_message()) is not None:
        tag, body = msg
        if tag == b"D":
            outcome.rows += 1
        elif tag == b"E":
            outcome.ended = "error " + error_fields(body).get("C", "?")
        elif tag == b"Z":
            outcome.complete = True


def steady_reader(suture: Suture, conn: Conn, chunk: int, outcome: ReadOutcome) -> None:
    """Reads `chunk` bytes every 100 ms until ReadyForQuery or the end of the connection."""
    conn.send(query_message(WIDE_QUERY))
    started = time.monotonic()
    watch = CloseWatch(suture, conn.local_port(), started)
    watch.start()
    try:
        while not outcome.complete:
            time.sleep(SLOW_EVERY)
            conn.recv_some(chunk, WAIT_CAP)
            count_rows(conn, outcome)
        outcome.ended = outcome.ended or "ReadyForQuery"
    except Closed:
        outcome.ended = "connection closed"
    except Timeout:
        outcome.ended = "no byte for 15 s"
    outcome.client_secs = time.monotonic() - started
    time.sleep(0.2)
    watch.stop_flag.set()
    watch.join(1)
    outcome.suture_closed_after = watch.closed_after
    outcome.max_send_queue = watch.max_send_queue


def stalled_reader(suture: Suture, conn: Conn, outcome: ReadOutcome) -> None:
    """Asks for the wide result, reads nothing for 6 s, then reads what is left."""
    conn.send(query_message(WIDE_QUERY))
    started = time.monotonic()
    watch = CloseWatch(suture, conn.local_port(), started)
    watch.start()
    time.sleep(STALLED_SECS)
    watch.stop_flag.set()
    watch.join(1)
    outcome.suture_closed_after = watch.closed_after
    outcome.max_send_queue = watch.max_send_queue
    try:
        while not outcome.complete:
            conn.recv_some(256 * 1024, 5.0)
            count_rows(conn, outcome)
        outcome.ended = outcome.ended or "ReadyForQuery"
    except Closed:
        outcome.ended = "connection closed"
    except Timeout:
        outcome.ended = "no byte for 5 s after the stall"
    outcome.client_secs = time.monotonic() - started


def describe_read(outcome: ReadOutcome) -> str:
    cut = outcome.suture_closed_after
    if outcome.complete and outcome.rows == WIDE_ROWS and cut is None:
        return f"all {fmt_int(WIDE_ROWS)} rows in {fmt_secs(outcome.client_secs)}"
    if cut is not None:
        return f"cut after {fmt_secs(cut)} ({fmt_int(outcome.rows)} rows reached it)"
    return f"not cut; {fmt_int(outcome.rows)} rows, {outcome.ended}"


def read_detail(outcome: ReadOutcome) -> str:
    return (f"client side: {fmt_int(outcome.rows)} rows, ended with {outcome.ended} after "
            f"{fmt_secs(outcome.client_secs)}; Suture's end of it had up to "
            f"{fmt_int(outcome.max_send_queue // 1024)} KiB in its kernel send queue")


CUT_LOGGED = r"stopped reading|write.?timeout|timed out"


def one_reader(suture: Suture, play, *extra) -> tuple[ReadOutcome, str]:
    """Runs one reader on its own connection; its outcome and the first log line about a
    cut written meanwhile."""
    start = suture.log_size()
    conn = suture.login(rcvbuf=READER_RCVBUF)
    outcome = ReadOutcome()
    try:
        play(suture, conn, *extra, outcome)
    finally:
        conn.close()
    time.sleep(0.3)
    return outcome, log_excerpt(suture.log_text(start), CUT_LOGGED)


def measure_readers(args) -> list[Row]:
    extra = {"client_write_timeout": '"2s"', "min_idle": "2"}
    with Suture(args, "readers", extra) as suture:
        stalled, stalled_log = one_reader(suture, stalled_reader)
        slow, slow_log = one_reader(suture, steady_reader, SLOW_CHUNK)
        faster, faster_log = one_reader(suture, steady_reader, FASTER_CHUNK)
    rows = []
    for key, chunk, outcome, logged in (("slow_reader", SLOW_CHUNK, slow, slow_log),
                                        ("faster_reader", FASTER_CHUNK, faster, faster_log)):
        rate = f"{chunk // 1024} KiB every {SLOW_EVERY * 1000:.0f} ms"
        title = (f"steady slow reader ({rate}), client_write_timeout 2 s" if chunk == SLOW_CHUNK
                 else f"steady reader at {rate} (extra)")
        value = describe_read(outcome)
        if outcome.suture_closed_after is not None:
            value += "; logged" if logged else "; not logged"
        rows.append(Row(key, title, value,
                        read_detail(outcome) + f"; log: {logged or 'nothing about a cut'}",
                        dict(asdict(outcome), logged=logged)))
    stalled_value = describe_read(stalled) + ("; logged" if stalled_log else "; not logged")
    rows.insert(1, Row("stalled_reader", "stalled reader (reads nothing for 6 s)",
                       stalled_value,
                       read_detail(stalled) + f"; log: {stalled_log or 'nothing about it'}",
                       dict(asdict(stalled), logged=stalled_log)))
    return rows


# ---------------------------------------------------------------- table and main

MEASUREMENTS = [
    ("log flooding", measure_log_flooding),
    ("stalled log reader", measure_stalled_log_reader),
    ("protocol violations", measure_protocol_violations),
    ("connection cap", measure_connection_cap),
    ("idle RSS", measure_idle_rss),
    ("slow and stalled readers", measure_readers),
]


def run_all(args) -> list[Row]:
    rows: list[Row] = []
    for name, measure in MEASUREMENTS:
        print(f"[hostile] measuring: {name}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        rows += measure(args)
        print(f"[hostile]   done in {time.monotonic() - t0:.1f} s", file=sys.stderr,
              flush=True)
    return rows


def md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def print_rows(label: str, rows: list[Row]) -> None:
    print(f"\nHostile clients against {label}\n")
    print("| measurement | value |")
    print("|---|---|")
    for row in rows:
        print(f"| {md_cell(row.measurement)} | {md_cell(row.value)} |")
    print()
    for row in rows:
        print(f"- {row.measurement}: {row.detail}")


def print_comparison(before_path: str, after_path: str) -> None:
    with open(before_path) as f:
        before = json.load(f)
    with open(after_path) as f:
        after = json.load(f)
    old = {r["key"]: r for r in before["rows"]}
    print(f"\nbefore: {before['binary']}\nafter:  {after['binary']}\n")
    print("| measurement | before | after |")
    print("|---|---|---|")
    for row in after["rows"]:
        was = old.get(row["key"], {}).get("value", "(not measured)")
        print(f"| {md_cell(row['measurement'])} | {md_cell(was)} | {md_cell(row['value'])} |")
    print()
    for label, run in (("before", before), ("after", after)):
        for row in run["rows"]:
            print(f"- {label}, {row['measurement']}: {row['detail']}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suture-bin", help="the suture binary to measure")
    ap.add_argument("--pg-port", type=int, help="port of the running PostgreSQL")
    ap.add_argument("--pg-host", default="127.0.0.1", help="its address, for Suture")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--log-dir", help="keep each Suture's config and log in DIR/<measurement>/"
                    " (default: temporary directories, removed)")
    ap.add_argument("--label", help="name of this run in the table (default: the binary)")
    ap.add_argument("--user", default="app")
    ap.add_argument("--password", default="app-secret")
    ap.add_argument("--database", default="app")
    ap.add_argument("--admin-host", default="127.0.0.1",
                    help="superuser connection: host, or a socket directory (starts with /)")
    ap.add_argument("--admin-user", default="postgres")
    ap.add_argument("--admin-password", default=os.environ.get("PGPASSWORD", ""))
    ap.add_argument("--admin-db", default="postgres")
    ap.add_argument("--psql", help="psql binary (default: newest /usr/lib/postgresql/*/bin)")
    ap.add_argument("--only", help="comma-separated keys of MEASUREMENTS to run (debugging)")
    ap.add_argument("--table", nargs=2, metavar=("BEFORE_JSON", "AFTER_JSON"),
                    help="print the before/after table of two runs and exit")
    args = ap.parse_args(argv)
    if not args.table and (not args.suture_bin or not args.pg_port):
        ap.error("--suture-bin and --pg-port are required (or --table)")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.table:
        print_comparison(*args.table)
        return 0
    atexit.register(kill_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    global MEASUREMENTS
    if args.only:
        wanted = args.only.split(",")
        MEASUREMENTS = [m for m in MEASUREMENTS if any(w in m[0] for w in wanted)]
    args.suture_bin = os.path.abspath(args.suture_bin)
    rows = run_all(args)
    label = args.label or args.suture_bin
    print_rows(label, rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"binary": label, "rows": [asdict(r) for r in rows]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
