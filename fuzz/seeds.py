#!/usr/bin/env python3
"""Writes the hand-made seed corpora of the fuzz targets:
fuzz/corpus/{framing,startup,scanner,mysql_framing,mysql_handshake}/.

Each seed is a small, meaningful piece of PostgreSQL or MySQL wire traffic (valid startup packets, typical
backend replies, a client extended-protocol batch, COPY streams, truncated and oversized lengths),
prefixed with the setup bytes its target reads first (see the module docs of fuzz_targets/*.rs).
Seeds are named `seed-<what>`; entries the fuzzer found are kept under their hash names beside
them. Run from anywhere: `python3 fuzz/seeds.py` (it only adds or overwrites `seed-*` files).
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def msg(tag, body):
    """A tagged message: tag byte, int32 length (counting itself), body."""
    return tag + i32(len(body) + 4) + body


def cstr(s):
    return s + b"\0"


def startup(params, version=0x0003_0000):
    body = struct.pack(">I", version) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return i32(len(body) + 4) + body


SSL_REQUEST = i32(8) + i32(80877103)
GSSENC_REQUEST = i32(8) + i32(80877104)


def cancel(pid, key):
    return i32(16) + i32(80877102) + i32(pid) + i32(key)


# ---- backend and client messages ----


def row_description(names):
    body = i16(len(names))
    for n in names:
        body += cstr(n) + i32(16384) + i16(1) + i32(25) + i16(-1) + i32(-1) + i16(0)
    return msg(b"T", body)


def data_row(values):
    body = i16(len(values))
    for v in values:
        body += i32(-1) if v is None else i32(len(v)) + v
    return msg(b"D", body)


def error(fields, tag=b"E"):
    return msg(tag, b"".join(f + cstr(v) for f, v in fields) + b"\0")


COMMAND_COMPLETE = msg(b"C", cstr(b"SELECT 2"))
READY_IDLE = msg(b"Z", b"I")
READY_IN_TX = msg(b"Z", b"T")
READY_FAILED = msg(b"Z", b"E")
SELECT_REPLY = (
    row_description([b"id", b"name"])
    + data_row([b"1", b"alice"])
    + data_row([b"2", None])
    + COMMAND_COMPLETE
    + READY_IDLE
)
FATAL_57P05 = error(
    [
        (b"S", b"FATAL"),
        (b"V", b"FATAL"),
        (b"C", b"57P05"),
        (b"M", b"terminating connection due to idle-session timeout"),
        (b"F", b"postgres.c"),
        (b"L", b"3245"),
        (b"R", b"ProcessInterrupts"),
    ]
)
ERROR_WITH_DETAIL = error(
    [
        (b"S", b"ERROR"),
        (b"C", b"23505"),
        (b"M", b"duplicate key value violates unique constraint \"t_pkey\""),
        (b"D", b"Key (id)=(1) already exists."),
        (b"H", b"Use another id."),
        (b"n", b"t_pkey"),
    ]
)
NOTICE = error([(b"S", b"NOTICE"), (b"V", b"NOTICE"), (b"C", b"00000"), (b"M", b"hi")], b"N")
LOGIN_REPLY = (
    msg(b"R", i32(0))
    + msg(b"S", cstr(b"server_version") + cstr(b"15.19"))
    + msg(b"S", cstr(b"client_encoding") + cstr(b"UTF8"))
    + msg(b"S", cstr(b"TimeZone") + cstr(b"Europe/Paris"))
    + msg(b"K", i32(12345) + i32(-559038737))
    + READY_IDLE
)
AUTH_REQUESTS = (
    msg(b"R", i32(3))
    + msg(b"R", i32(5) + b"\x01\x02\x03\x04")
    + msg(b"R", i32(10) + cstr(b"SCRAM-SHA-256-PLUS") + cstr(b"SCRAM-SHA-256") + b"\0")
    + msg(b"R", i32(11) + b"r=fyko+d2lbbFgONRv9qkxdawL,s=QSXCR+Q6sek8bf92,i=4096")
    + msg(b"R", i32(12) + b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
    + msg(b"R", i32(7))
)
CLIENT_AUTH = (
    msg(b"p", cstr(b"md5a3556571e93b0d20722ba62be61e8c2d"))
    + msg(b"p", cstr(b"SCRAM-SHA-256") + i32(32) + b"n,,n=,r=fyko+d2lbbFgONRv9qkxdawL")
    + msg(b"p", cstr(b"SCRAM-SHA-256") + i32(-1))
    + msg(b"p", b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
)
EXTENDED_BATCH = (
    msg(b"P", cstr(b"s1") + cstr(b"SELECT $1::int + $2") + i16(2) + i32(23) + i32(0))
    + msg(b"B", cstr(b"") + cstr(b"s1") + i16(0) + i16(2) + i32(1) + b"7" + i32(-1) + i16(0))
    + msg(b"D", b"P" + cstr(b""))
    + msg(b"E", cstr(b"") + i32(0))
    + msg(b"S", b"")
)
BACKEND_EXTENDED_REPLY = (
    msg(b"1", b"")
    + msg(b"2", b"")
    + row_description([b"?column?"])
    + data_row([b"8"])
    + msg(b"C", cstr(b"SELECT 1"))
    + READY_IDLE
)
SIMPLE_QUERIES = (
    msg(b"Q", cstr(b"SELECT 1"))
    + msg(b"Q", cstr(b"SET search_path TO app, public"))
    + msg(b"Q", cstr(b"BEGIN; UPDATE t SET x = 1; COMMIT"))
    + msg(b"Q", cstr(b"LISTEN chan"))
    + msg(b"X", b"")
)
NOTIFICATION = msg(b"A", i32(4242) + cstr(b"chan") + cstr(b"payload")) + READY_IDLE
COPY_OUT = (
    msg(b"H", b"\0" + i16(2) + i16(0) + i16(0))
    + msg(b"d", b"1\talice\n")
    + msg(b"d", b"2\tbob\n")
    + msg(b"d", b"3\t\\N\n")
    + msg(b"c", b"")
    + msg(b"C", cstr(b"COPY 3"))
    + READY_IDLE
)
COPY_IN = (
    msg(b"d", b"x" * 200) + msg(b"d", b"y" * 40) + msg(b"c", b"") + msg(b"S", b"")
)
COPY_FAIL = msg(b"d", b"1\n") + msg(b"f", cstr(b"client gave up"))
# A DataRow of 1 MiB of which only the start has arrived: streamed by the backend scanner.
LARGE_DATA_ROW_HEADER = b"D" + i32(1 << 20) + i16(1) + i32((1 << 20) - 10) + b"abcdef"
BIG_COPY_HEADER = b"d" + i32(0x7FFFFFFF) + b"0123456789"
TRUNCATED = SELECT_REPLY[: len(SELECT_REPLY) - 3]
TOO_SHORT_LENGTH = READY_IDLE + b"Z" + i32(3) + b"I"
NEGATIVE_LENGTH = READY_IDLE + b"C" + i32(-1)
HUGE_LENGTH = READY_IDLE + b"E" + i32(0x7FFFFFFF) + b"SERROR\0"
EMPTY_BODIES = msg(b"X", b"") + msg(b"H", b"") + msg(b"c", b"") + b"Z\0\0"
BAD_BODIES = (
    msg(b"D", i16(-1))
    + msg(b"D", i16(2) + i32(100) + b"x")
    + msg(b"E", b"SERROR\0C1\0M2")
    + msg(b"K", i32(1) + i32(2) + i32(3))
    + msg(b"R", i32(5) + b"\x01\x02")
    + msg(b"p", cstr(b"M") + i32(5) + b"abc")
    + msg(b"P", cstr(b"") + cstr(b"SELECT 1") + i16(-1))
    + msg(b"Q", b"SELECT '\xe9'\0")
    + msg(b"S", cstr(b"a") + b"b")
)

FRAMING_STREAMS = {
    "select-reply": SELECT_REPLY,
    "fatal-57p05": FATAL_57P05,
    "error-detail-hint": ERROR_WITH_DETAIL + READY_FAILED,
    "notice": NOTICE + READY_IN_TX,
    "login-reply": LOGIN_REPLY,
    "auth-requests": AUTH_REQUESTS,
    "client-auth": CLIENT_AUTH,
    "extended-batch": EXTENDED_BATCH,
    "extended-reply": BACKEND_EXTENDED_REPLY,
    "simple-queries": SIMPLE_QUERIES,
    "notification": NOTIFICATION,
    "copy-out": COPY_OUT,
    "copy-in": COPY_IN,
    "copy-fail": COPY_FAIL,
    "large-datarow-header": LARGE_DATA_ROW_HEADER,
    "big-copy-header": BIG_COPY_HEADER,
    "truncated": TRUNCATED,
    "too-short-length": TOO_SHORT_LENGTH,
    "negative-length": NEGATIVE_LENGTH,
    "huge-length": HUGE_LENGTH,
    "empty-bodies": EMPTY_BODIES,
    "bad-bodies": BAD_BODIES,
}


def framing_seeds():
    # Prefix: small limit selector, large limit selector (see framing.rs).
    seeds = {}
    for name, stream in FRAMING_STREAMS.items():
        seeds[name] = bytes([200, 11]) + stream
    seeds["limit-tiny"] = bytes([5, 0]) + SELECT_REPLY
    seeds["limit-exact"] = bytes([len(READY_IDLE), 255]) + READY_IDLE + READY_IDLE
    seeds["limit-max-header-only"] = bytes([255, 255]) + b"D" + i32(0x7FFFFFFF)
    return seeds


def startup_seeds():
    # Prefix: big-endian u16 `max` (10 000 as in the proxy; 0xffff is unlimited).
    proxy = struct.pack(">H", 10_000)
    app = startup(
        [
            (b"user", b"app"),
            (b"database", b"shop"),
            (b"application_name", b"psql"),
            (b"client_encoding", b"UTF8"),
        ]
    )
    packets = {
        "startup-user-db": app,
        "ssl-then-startup": SSL_REQUEST + app,
        "gssenc-then-ssl-then-startup": GSSENC_REQUEST + SSL_REQUEST + app,
        "cancel": cancel(12345, -559038737),
        "startup-options": startup(
            [(b"user", b"bob"), (b"options", b"-c search_path=app -c statement_timeout=5s")]
        ),
        "startup-replication": startup(
            [(b"user", b"repl"), (b"replication", b"database"), (b"database", b"")]
        ),
        "startup-duplicate-keys": startup([(b"user", b"a"), (b"user", b"b"), (b"x", b"")]),
        "startup-empty-user": startup([(b"user", b"")]),
        "startup-no-params": startup([]),
        "protocol-3-2": startup([(b"user", b"app")], 0x0003_0002),
        "protocol-2-0": startup([(b"user", b"app")], 0x0002_0000),
        "startup-not-utf8": startup([(b"user", b"\xe9t\xe9")]),
        "startup-missing-terminator": i32(13) + i32(0x0003_0000) + b"user",
        "startup-trailing-bytes": i32(10) + i32(0x0003_0000) + b"\0x",
        "ssl-too-long": i32(9) + i32(80877103) + b"\0",
        "cancel-too-short": i32(12) + i32(80877102) + i32(1),
        "truncated": app[:20],
        "length-only": i32(34),
        "length-7": i32(7) + b"\0\0\0\0",
        "length-negative": i32(-2147483648),
        "length-huge": i32(0x7FFFFFFF) + i32(0x0003_0000),
    }
    seeds = {name: proxy + p for name, p in packets.items()}
    seeds["max-8-ssl"] = struct.pack(">H", 8) + SSL_REQUEST + SSL_REQUEST
    seeds["max-below-cancel"] = struct.pack(">H", 15) + cancel(1, 2)
    seeds["max-unlimited"] = b"\xff\xff" + app
    return seeds


def scanner_setup(kind, max_sel, thr_sel, reads, repair=False, hold=False):
    """The 8-byte setup of scanner.rs: kind, flags, limit, threshold, five read sizes."""
    flags = kind | (4 if repair else 0) | (8 if hold else 0)
    return bytes([flags, max_sel, thr_sel]) + bytes(reads)


def scanner_seeds():
    BACKEND, CLIENT, THRESHOLD = 0, 1, 2
    # max selector 0xf0 is 64 KiB; 0x20 is 256 bytes. Threshold selector 16 is 64 bytes.
    cases = {
        "backend-select": (scanner_setup(BACKEND, 0xF0, 0, [6, 3, 0, 40, 12]), SELECT_REPLY),
        "backend-login": (scanner_setup(BACKEND, 0xF0, 0, [1, 7, 30, 2, 99]), LOGIN_REPLY),
        "backend-errors": (
            scanner_setup(BACKEND, 0x20, 0, [16, 16, 16, 16, 16]),
            FATAL_57P05 + ERROR_WITH_DETAIL + NOTICE + READY_FAILED,
        ),
        "backend-copy-out-threshold": (
            scanner_setup(THRESHOLD, 0x20, 2, [4, 9, 1, 20, 3]),
            COPY_OUT,
        ),
        "backend-large-datarow": (
            scanner_setup(BACKEND, 0xF0, 0, [3, 2, 7, 1, 255]),
            LARGE_DATA_ROW_HEADER + b"x" * 300,
        ),
        "backend-datarow-over-limit": (
            scanner_setup(THRESHOLD, 0x04, 4, [5, 5, 5, 5, 5]),
            data_row([b"a" * 60]) + READY_IDLE,
        ),
        "backend-notification": (
            scanner_setup(BACKEND, 0xF0, 0, [0, 0, 0, 0, 0]),
            NOTIFICATION,
        ),
        "client-extended-batch": (
            scanner_setup(CLIENT, 0xF0, 0, [10, 3, 50, 1, 7], hold=True),
            EXTENDED_BATCH + EXTENDED_BATCH,
        ),
        "client-simple-queries": (
            scanner_setup(CLIENT, 0x20, 0, [2, 60, 4, 8, 1], hold=True),
            SIMPLE_QUERIES,
        ),
        "client-copy-in": (
            scanner_setup(CLIENT, 0x08, 0, [30, 1, 90, 2, 5]),
            COPY_IN + COPY_FAIL,
        ),
        "client-describe-over-limit": (
            scanner_setup(CLIENT, 0x02, 0, [7, 7, 7, 7, 7]),
            msg(b"D", b"S" + cstr(b"a_rather_long_statement_name")),
        ),
        "client-big-copy": (
            scanner_setup(CLIENT, 0x20, 0, [9, 0, 3, 30, 1]),
            BIG_COPY_HEADER + b"z" * 100,
        ),
        "threshold-zero": (
            scanner_setup(THRESHOLD, 0xF0, 0, [1, 2, 3, 4, 5]),
            COPY_OUT + SELECT_REPLY,
        ),
        "threshold-unlimited": (
            scanner_setup(THRESHOLD, 0xFF, 0xFF, [1, 1, 1, 1, 1]),
            SELECT_REPLY,
        ),
        "tiny-limit": (scanner_setup(BACKEND, 0x03, 0, [1, 2, 3, 4, 5]), READY_IDLE),
        "truncated": (scanner_setup(BACKEND, 0x20, 0, [5, 5, 5, 5, 5]), TRUNCATED),
        "too-short-length": (scanner_setup(BACKEND, 0x20, 0, [2, 2, 2, 2, 2]), TOO_SHORT_LENGTH),
        "negative-length": (scanner_setup(CLIENT, 0x20, 0, [3, 3, 3, 3, 3]), NEGATIVE_LENGTH),
        "huge-length": (scanner_setup(BACKEND, 0xF0, 0, [8, 8, 8, 8, 8]), HUGE_LENGTH),
        "repair-select": (
            scanner_setup(BACKEND, 0x20, 0, [6, 3, 0, 40, 12], repair=True),
            SELECT_REPLY,
        ),
        "repair-garbage-lengths": (
            scanner_setup(THRESHOLD, 0x10, 8, [4, 1, 9, 2, 6], repair=True, hold=True),
            TOO_SHORT_LENGTH + HUGE_LENGTH + EXTENDED_BATCH,
        ),
        "repair-client-copy": (
            scanner_setup(CLIENT, 0x03, 0, [2, 11, 5, 0, 3], repair=True),
            COPY_IN + EXTENDED_BATCH,
        ),
        "repair-large-datarow": (
            scanner_setup(BACKEND, 0x10, 0, [3, 2, 7, 1, 255], repair=True),
            LARGE_DATA_ROW_HEADER + b"x" * 300 + READY_IDLE,
        ),
    }
    return {name: setup + stream for name, (setup, stream) in cases.items()}


# ---- MySQL (mysql_framing, mysql_handshake) ----


def lenenc(v):
    if v < 0xFB:
        return bytes([v])
    if v <= 0xFFFF:
        return b"\xfc" + struct.pack("<H", v)
    if v <= 0xFFFFFF:
        return b"\xfd" + struct.pack("<I", v)[:3]
    return b"\xfe" + struct.pack("<Q", v)


def lstr(s):
    return lenenc(len(s)) + s


def pkt(seq, payload):
    """A MySQL packet: 3-byte little-endian payload length, sequence id, payload."""
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


def my_ok(status=2, header=b"\x00", tail=b""):
    return header + b"\x00\x00" + struct.pack("<HH", status, 0) + tail


def my_eof(status=2):
    return b"\xfe\x00\x00" + struct.pack("<H", status)


def my_err(code, state=b"HY000", msg=b"boom"):
    return b"\xff" + struct.pack("<H", code) + b"#" + state + msg


def coldef(name):
    return b"".join(lstr(x) for x in [b"def", b"test", b"t", b"t", name, name]) + (
        b"\x0c\x21\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00"
    )


GREETING_55 = bytes.fromhex(
    "0a352e352e322d6d32000b00000064764840492d434a00fff70802000000000000000000000000002a34647c635a776b345e5d3a00"
)
GREETING_MYSQL8 = (
    b"\x0a8.0.36\x00\x2a\x00\x00\x00abcdefgh\x00\xff\xff\xff\x02\x00\xff\xdf\x15"
    + b"\x00" * 10
    + b"ijklmnopqrst\x00caching_sha2_password\x00"
)
GREETING_MARIADB = (
    b"\x0a5.5.5-10.11.6-MariaDB-0+deb12u1\x00\x07\x00\x00\x00Wf)?n'Z3\x00\xfe\xf7\x2d\x02\x00\xff\x81\x15"
    + b"\x00" * 6
    + b"\x1d\x00\x00\x00"
    + b"3O!u_[-@?Y(c\x00mysql_native_password\x00"
)
RESPONSE_PAM = bytes.fromhex(
    "8da60f0000000001080000000000000000000000000000000000000000000000"
    "70616d0014ab09eef6bcb1323e61143865c0991d957d75d447746573740"
    "06d7973716c5f6e61746976655f70617373776f726400"
)
SSL_REQUEST_MY = struct.pack("<IIB", 0x8A01, 16 << 20, 33) + b"\x00" * 23
RESPONSE_MARIADB = (
    struct.pack("<IIB", 0x3A8A08, 1 << 30, 45)
    + b"\x00" * 19
    + struct.pack("<I", 0x11)
    + b"app\x00"
    + lstr(b"\x07" * 32)
    + b"shop\x00caching_sha2_password\x00"
    + lstr(lstr(b"_client_name") + lstr(b"libmariadb") + lstr(b"_os") + lstr(b"Linux"))
)
SESSION_STATE = (
    b"\x00" + lstr(lstr(b"autocommit") + lstr(b"OFF"))
    + b"\x01" + lstr(lstr(b"test"))
    + b"\x02" + lstr(lstr(b"1"))
    + b"\x03" + lstr(b"\x00" + lstr(b"3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5"))
    + b"\x04" + lstr(lstr(b"SET TRANSACTION ISOLATION LEVEL READ COMMITTED;"))
    + b"\x05" + lstr(lstr(b"T_______"))
)
TRACKED_OK = my_ok(0x4002, tail=lstr(b"") + lstr(SESSION_STATE))
ERR_4031 = my_err(4031, msg=b"The client was disconnected by the server because of inactivity.")
ERR_1927 = my_err(1927, b"70100", b"Connection was killed")
PREPARE_OK = b"\x00\x01\x00\x00\x00\x01\x00\x02\x00\x00\x00\x00"
CHANGE_USER = (
    b"\x11bob\x00\x14abcdefghijklmnopqrstshop\x00\x21\x00mysql_native_password\x00"
    + lstr(lstr(b"_os") + lstr(b"Lx"))
)

# Capabilities: protocol 4.1 + transactions + secure connection + plugin auth (+ lenenc data,
# connect attrs, session track, deprecate EOF), MariaDB extended ones in the high half.
CAPS_CLASSIC = 0x0008A200
CAPS_TRACK = CAPS_CLASSIC | (1 << 23) | (1 << 21) | (1 << 20) | (1 << 3)
CAPS_DEPRECATE = CAPS_TRACK | (1 << 24)
CAPS_MARIADB = (CAPS_DEPRECATE & ~1) | (0x1D << 32)

SELECT_REPLY_MY = (
    pkt(1, b"\x02") + pkt(2, coldef(b"a")) + pkt(3, coldef(b"b")) + pkt(4, my_eof())
    + pkt(5, b"\x011\x03abc") + pkt(6, b"\xfb\x00") + pkt(7, my_eof(0x22))
)
SELECT_REPLY_DEPRECATE = (
    pkt(1, b"\x01") + pkt(2, coldef(b"a")) + pkt(3, b"\x00") + pkt(4, b"\x011")
    + pkt(5, my_ok(0x4002, b"\xfe", lstr(b"") + lstr(SESSION_STATE)))
)
MULTI_RESULTS = (
    pkt(1, my_ok(0x000A)) + pkt(2, b"\x01") + pkt(3, coldef(b"x")) + pkt(4, my_eof(0x0A))
    + pkt(5, b"\x011") + pkt(6, my_eof(0x0003))
)
PREPARE_REPLY = (
    pkt(1, PREPARE_OK) + pkt(2, coldef(b"?")) + pkt(3, coldef(b"?")) + pkt(4, my_eof())
    + pkt(5, coldef(b"a")) + pkt(6, my_eof())
)
CURSOR_REPLY = pkt(1, b"\x01") + pkt(2, coldef(b"a")) + pkt(3, my_eof(0x42))
LOCAL_INFILE = pkt(1, b"\xfb/tmp/data.csv") + pkt(2, b"1,a\n2,b\n") + pkt(3, b"") + pkt(4, my_ok())
CHANGE_USER_REPLY = (
    pkt(1, b"\xfecaching_sha2_password\x00abcdefghijklmnopqrst\x00") + pkt(2, b"\x07" * 32)
    + pkt(3, b"\x01\x04") + pkt(4, b"\x02") + pkt(5, b"\x01-----BEGIN PUBLIC KEY-----\nMIIB\n")
    + pkt(6, b"\x09" * 256) + pkt(7, my_ok())
)
BIG_ROW_HEADER = b"\xff\xff\xff\x03\xfe\x00\x00\x00\x01\x00\x00\x00\x00" + b"x" * 40
CONTINUATION_BAD_SEQ = b"\xff\xff\xff\x00" + b"y" * 36
COMMANDS_MY = (
    pkt(0, b"\x03select 1") + pkt(0, b"\x0e") + pkt(0, b"\x02shop")
    + pkt(0, b"\x17\x01\x00\x00\x00\x01\x01\x00\x00\x00") + pkt(0, b"\x19\x01\x00\x00\x00")
    + pkt(0, b"\x1f") + pkt(0, b"\x01")
)


def framing_setup(kind, cmd_index, max_sel, thr_sel, reads, repair=False):
    """The 8-byte setup of mysql_framing.rs."""
    flags = kind | (4 if repair else 0) | (cmd_index << 3)
    return bytes([flags, max_sel, thr_sel]) + bytes(reads)


def mysql_framing_seeds():
    DEFAULT, THRESHOLD, WHOLE = 0, 1, 2
    QUERY, EXECUTE, PREPARE, FETCH, PING, SET_OPTION, CHANGE_USER_I = 0, 1, 2, 3, 4, 5, 6
    cases = {
        "select-classic": (framing_setup(DEFAULT, QUERY, 0xF0, 0, [6, 3, 0, 40, 12]), SELECT_REPLY_MY),
        "select-deprecate-eof": (
            framing_setup(THRESHOLD, QUERY, 0x20, 4, [1, 1, 0, 9, 2]),
            SELECT_REPLY_DEPRECATE,
        ),
        "multi-results": (framing_setup(DEFAULT, QUERY, 0xF0, 0, [2, 0, 0, 5, 1]), MULTI_RESULTS),
        "prepare": (framing_setup(DEFAULT, PREPARE, 0xF0, 0, [0, 0, 0, 1, 7]), PREPARE_REPLY),
        "cursor": (framing_setup(WHOLE, EXECUTE, 0x40, 0, [1, 0, 0, 3, 3]), CURSOR_REPLY),
        "local-infile": (framing_setup(DEFAULT, QUERY, 0xF0, 0, [4, 0, 0, 2, 8]), LOCAL_INFILE),
        "change-user": (framing_setup(DEFAULT, CHANGE_USER_I, 0xF0, 0, [9, 0, 0, 9, 9]), CHANGE_USER_REPLY),
        "unsolicited-4031": (framing_setup(DEFAULT, PING, 0xF0, 0, [3, 0, 0, 3, 3]), pkt(0, ERR_4031)),
        "unsolicited-1927": (framing_setup(WHOLE, QUERY, 0x20, 0, [1, 0, 0, 1, 1]), pkt(0, ERR_1927)),
        "set-option": (framing_setup(DEFAULT, SET_OPTION, 0xF0, 0, [0, 0, 0, 0, 0]), pkt(1, my_eof())),
        "fetch": (
            framing_setup(DEFAULT, FETCH, 0xF0, 0, [5, 0, 0, 5, 5]),
            pkt(1, b"\x00\x00\x07") + pkt(2, my_eof(0x80)),
        ),
        "big-row-header": (framing_setup(DEFAULT, QUERY, 0x20, 0, [3, 1, 0, 7, 255]), BIG_ROW_HEADER),
        "continuation-bad-seq": (
            framing_setup(THRESHOLD, QUERY, 0x08, 2, [40, 0, 0, 4, 4]),
            CONTINUATION_BAD_SEQ + b"\x00\x00\x00\x05",
        ),
        "over-limit-whole": (framing_setup(WHOLE, QUERY, 0x02, 0, [7, 7, 7, 7, 7]), SELECT_REPLY_MY),
        "over-limit-streamed": (framing_setup(THRESHOLD, QUERY, 0x01, 1, [2, 9, 1, 30, 3]), SELECT_REPLY_MY),
        "client-commands": (framing_setup(WHOLE, QUERY, 0x20, 0, [2, 60, 4, 8, 1]), COMMANDS_MY),
        "repair-garbage": (
            framing_setup(THRESHOLD, QUERY, 0x10, 8, [4, 1, 9, 2, 6], repair=True),
            BIG_ROW_HEADER + SELECT_REPLY_MY,
        ),
        "repair-whole": (framing_setup(WHOLE, PREPARE, 0x04, 0, [1, 2, 3, 4, 5], repair=True), PREPARE_REPLY),
        "truncated": (framing_setup(DEFAULT, QUERY, 0xF0, 0, [5, 5, 5, 5, 5]), SELECT_REPLY_MY[:-3]),
    }
    return {name: setup + stream for name, (setup, stream) in cases.items()}


def mysql_handshake_seeds():
    def caps(c):
        return struct.pack("<Q", c)

    payloads = {
        "greeting-55": (CAPS_CLASSIC, GREETING_55),
        "greeting-mysql8": (CAPS_CLASSIC, GREETING_MYSQL8),
        "greeting-mariadb": (CAPS_MARIADB, GREETING_MARIADB),
        "response-pam": (CAPS_CLASSIC, RESPONSE_PAM),
        "response-mariadb": (CAPS_MARIADB, RESPONSE_MARIADB),
        "ssl-request": (CAPS_CLASSIC, SSL_REQUEST_MY),
        "ok-plain": (CAPS_CLASSIC, my_ok()),
        "ok-info": (CAPS_CLASSIC, b"\x00\xfc\x2c\x01\xfd\x70\x11\x01\x01\x00\x01\x00Rows matched: 300"),
        "ok-tracked": (CAPS_TRACK, TRACKED_OK),
        "ok-fe-tracked": (CAPS_DEPRECATE, b"\xfe" + TRACKED_OK[1:]),
        "err-1096": (CAPS_CLASSIC, my_err(1096, msg=b"No tables used")),
        "err-4031": (CAPS_CLASSIC, ERR_4031),
        "err-1927": (CAPS_MARIADB, ERR_1927),
        "err-no-sqlstate": (0, b"\xff\x10\x04Too many connections"),
        "progress": (CAPS_MARIADB, b"\xff\xff\xff\x01\x02\x00\x10\x00\x05stage"),
        "eof": (CAPS_CLASSIC, my_eof()),
        "prepare-ok": (CAPS_CLASSIC, PREPARE_OK),
        "auth-switch": (CAPS_CLASSIC, b"\xfemysql_native_password\x00abcdefghijklmnopqrst\x00"),
        "auth-fast-ok": (CAPS_CLASSIC, b"\x01\x03"),
        "auth-full": (CAPS_CLASSIC, b"\x01\x04"),
        "auth-pem": (CAPS_CLASSIC, b"\x01-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\n-----END PUBLIC KEY-----\n"),
        "change-user": (CAPS_TRACK, CHANGE_USER),
        "stmt-execute": (CAPS_CLASSIC, b"\x17\x01\x00\x00\x00\x01\x01\x00\x00\x00"),
        "lenenc-9": (0, b"\xfe\x00\x00\x00\x01\x00\x00\x00\x00"),
        "session-state": (CAPS_TRACK, SESSION_STATE),
        "truncated-greeting": (CAPS_CLASSIC, GREETING_MYSQL8[:30]),
    }
    return {name: caps(c) + p for name, (c, p) in payloads.items()}


def main():
    for target, seeds in [
        ("framing", framing_seeds()),
        ("startup", startup_seeds()),
        ("scanner", scanner_seeds()),
        ("mysql_framing", mysql_framing_seeds()),
        ("mysql_handshake", mysql_handshake_seeds()),
    ]:
        folder = os.path.join(HERE, "corpus", target)
        os.makedirs(folder, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(folder, "seed-" + name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} seeds in {folder}")


if __name__ == "__main__":
    main()
