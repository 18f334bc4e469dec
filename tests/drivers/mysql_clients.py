"""Real MySQL clients through Suture (issue 12): mysql-connector-python with server-side
prepared statements (prepared=True) and the mariadb command-line client, each across a KILL of
its backend from an admin connection, and sysbench oltp_read_write with server-side prepared
statements (zero errors through Suture; the direct run beside it is the baseline). Prints one
line per check and exits non-zero when any fails.

    python3 mysql_clients.py --port SUTURE --server-port MARIADB --socket SOCKET
"""

import argparse
import re
import shutil
import subprocess
import sys
import time

import mysql.connector
import pymysql

FAILED = []
CHECKED = []


def check(name, ok, detail=""):
    CHECKED.append(name)
    print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
    if not ok:
        FAILED.append(name)


def kill_backends(server_port):
    """KILLs every connection of `app` on the server itself (not through Suture)."""
    admin = pymysql.connect(host="127.0.0.1", port=server_port, user="root",
                            password="root-secret", autocommit=True)
    with admin.cursor() as cur:
        cur.execute("SELECT id FROM information_schema.processlist WHERE user = 'app'")
        for (conn_id,) in cur.fetchall():
            try:
                cur.execute(f"KILL {conn_id}")
            except pymysql.MySQLError:
                pass
    admin.close()
    time.sleep(0.3)


def prepared_statements(port, server_port):
    conn = mysql.connector.connect(host="127.0.0.1", port=port, user="app",
                                   password="app-secret", database="app",
                                   autocommit=True, use_pure=True)
    cur = conn.cursor(prepared=True)
    cur.execute("CREATE TABLE IF NOT EXISTS clients_t (id INT PRIMARY KEY, v VARCHAR(20))")
    cur.execute("DELETE FROM clients_t")
    insert = "INSERT INTO clients_t VALUES (?, ?)"
    for i in range(5):
        cur.execute(insert, (i, f"v{i}"))
    cur.execute("SELECT v FROM clients_t WHERE id = ?", (3,))
    check("connector prepared select", cur.fetchall() == [("v3",)])
    kill_backends(server_port)
    try:
        cur.execute("SELECT v FROM clients_t WHERE id = ?", (4,))
        rows = cur.fetchall()
        check("connector prepared statement after KILL", rows == [("v4",)], repr(rows))
        cur.execute(insert, (5, "v5"))
        cur.execute("SELECT COUNT(*) FROM clients_t")
        check("connector prepared insert after KILL", cur.fetchall() == [(6,)])
    except mysql.connector.Error as err:
        check("connector prepared statement after KILL", False, str(err))
    conn.close()


def cli(port, sql):
    return subprocess.run(
        ["mariadb", "--no-defaults", "--protocol=TCP", "-h127.0.0.1", f"-P{port}", "-uapp",
         "-papp-secret", "--local-infile=1", "-N", "-B", "app", "-e", sql],
        capture_output=True, text=True, timeout=30)


def command_line_client(port, server_port, work):
    out = cli(port, "SELECT VERSION(); SELECT 1 + 1")
    lines = out.stdout.split()
    check("mariadb CLI queries", out.returncode == 0 and lines[-1] == "2", out.stderr.strip())
    path = f"{work}/rows.csv"
    with open(path, "w") as f:
        f.writelines(f"{i},row{i}\n" for i in range(1000))
    out = cli(port, "CREATE TABLE IF NOT EXISTS li (id INT, v VARCHAR(10)); DELETE FROM li; "
                    f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE li FIELDS TERMINATED BY ','; "
                    "SELECT COUNT(*) FROM li")
    check("mariadb CLI LOAD DATA LOCAL INFILE", out.returncode == 0
          and out.stdout.split()[-1:] == ["1000"], out.stderr.strip() or out.stdout)
    # An interactive session that idles across a KILL of its backend.
    proc = subprocess.Popen(
        ["mariadb", "--no-defaults", "--protocol=TCP", "-h127.0.0.1", f"-P{port}", "-uapp",
         "-papp-secret", "-N", "-B", "app"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write("SET @@session.time_zone = '+03:00';\nSELECT 'before';\n")
    proc.stdin.flush()
    time.sleep(0.5)
    kill_backends(server_port)
    out, err = proc.communicate("SELECT @@session.time_zone, 'after';\n", timeout=30)
    check("mariadb CLI session across KILL", proc.returncode == 0 and "+03:00\tafter" in out,
          (err or out).strip())


def sysbench(port, *args):
    """Runs sysbench's oltp_read_write (4 tables of 10,000 rows, server-side prepared
    statements) against PORT; returns (exit status, output)."""
    cmd = ["sysbench", "oltp_read_write", "--db-driver=mysql", "--mysql-host=127.0.0.1",
           f"--mysql-port={port}", "--mysql-user=app", "--mysql-password=app-secret",
           "--mysql-db=app", "--tables=4", "--table-size=10000", "--db-ps-mode=auto",
           "--rand-type=uniform", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def sysbench_figures(out):
    """(transactions, ignored errors, reconnects) from a sysbench run's report."""
    def figure(label):
        m = re.search(rf"{label}:\s+(\d+)", out)
        return int(m.group(1)) if m else None
    return figure("transactions"), figure("ignored errors"), figure("reconnects")


def sysbench_read_write(port, server_port):
    """sysbench oltp_read_write through Suture: transactions run, no error at all (not even one
    sysbench retries), no reconnect; the same run directly is printed as the baseline."""
    if shutil.which("sysbench") is None:
        check("sysbench oltp_read_write", False, "sysbench is missing (scripts/install-deps.sh)")
        return
    rc, out = sysbench(server_port, "prepare")
    if rc != 0:
        check("sysbench oltp_read_write", False, "prepare failed: " + out[-500:])
        return
    run = ["--threads=4", "--time=10", "--report-interval=0", "run"]
    rc, out = sysbench(server_port, *run)
    print(f"sysbench oltp_read_write direct: exit {rc}, (transactions, errors, reconnects) = "
          f"{sysbench_figures(out)}")
    rc, out = sysbench(port, *run)
    txs, errors, reconnects = sysbench_figures(out)
    check("sysbench oltp_read_write through Suture, zero errors",
          rc == 0 and (txs or 0) > 0 and errors == 0 and reconnects == 0,
          f"exit {rc}, {txs} transactions, {errors} errors, {reconnects} reconnects"
          + ("" if rc == 0 else ": " + out[-500:]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-port", type=int, required=True)
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    prepared_statements(args.port, args.server_port)
    command_line_client(args.port, args.server_port, args.work)
    sysbench_read_write(args.port, args.server_port)
    print(f"mysql_clients: {len(CHECKED) - len(FAILED)} passed, {len(FAILED)} failed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
