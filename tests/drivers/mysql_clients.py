"""Real MySQL clients through Suture (issue 12): mysql-connector-python with server-side
prepared statements (prepared=True) and the mariadb command-line client, each across a KILL of
its backend from an admin connection. Prints one line per check and exits non-zero when any
fails.

    python3 mysql_clients.py --port SUTURE --server-port MARIADB --socket SOCKET
"""

import argparse
import subprocess
import sys
import time

import mysql.connector
import pymysql

FAILED = []


def check(name, ok, detail=""):
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-port", type=int, required=True)
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    prepared_statements(args.port, args.server_port)
    command_line_client(args.port, args.server_port, args.work)
    print(f"mysql_clients: {6 - len(FAILED)} passed, {len(FAILED)} failed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
