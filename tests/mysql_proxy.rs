//! Issue 12: Suture as a MySQL-protocol proxy in front of a real MariaDB,
//! with `mysql_async` and the raw client of tests/support/raw_mysql.rs as
//! the clients: login and its refusals, the greeting, result sets and types,
//! multi-statements, server-side prepared statements, packets of 16 MiB and
//! more, LOAD DATA LOCAL INFILE, COM_INIT_DB / COM_PING /
//! COM_RESET_CONNECTION / COM_CHANGE_USER, session tracking kept from
//! clients that did not ask for it, and many clients on a small pool.
//!
//! With `SUTURE_TEST_DIRECT=1` every test talks to MariaDB itself, which is
//! how each expectation was checked against the server first.

mod support;

use std::time::Duration;

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use futures_util::StreamExt as _;
use mysql_async::prelude::Queryable as _;
use mysql_async::{ChangeUserOpts, Conn, Row, Value};
use support::mariadb_server::{ADMIN_PASSWORD, ADMIN_USER, APP_DB, APP_PASSWORD, APP_USER};
use support::mysql_rig::{
    create_other_user_and_db, describe, expect_err, select_i64, MysqlTarget, OTHER_PASSWORD,
    OTHER_USER,
};
use support::raw_mysql::{parse_err, RawMysql, COM_PING};
use support::rig::within;

/// COM_INIT_DB.
const COM_INIT_DB: u8 = 0x02;
/// SERVER_SESSION_STATE_CHANGED in an OK packet's status flags.
const SESSION_STATE_CHANGED: u16 = 0x4000;
/// Size of the large-packet payloads: past one 16 MiB packet.
const BIG: usize = 20 * 1024 * 1024;

async fn start() -> anyhow::Result<MysqlTarget> {
    MysqlTarget::start(&[], &[]).await
}

async fn connect_as(
    target: &MysqlTarget,
    user: &str,
    password: &str,
    db: &str,
) -> Result<Conn, mysql_async::Error> {
    let opts = target.opts(user, password, db);
    match tokio::time::timeout(Duration::from_secs(10), Conn::new(opts)).await {
        Ok(result) => result,
        Err(_) => Err(mysql_async::Error::Other(
            "login did not finish within 10 s".into(),
        )),
    }
}

// ---------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------

/// The greeting carries the backend's own version string (MariaDB's
/// `5.5.5-` prefix included: drivers gate features on it) and a native
/// login works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_native_password_with_the_backends_version() -> anyhow::Result<()> {
    let t = start().await?;
    let result = async {
        let raw = RawMysql::connect_login(t.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
        let version = &raw.greeting().server_version;
        ensure!(
            version.starts_with("5.5.5-10.11"),
            "greeting version {version:?}, expected MariaDB's 5.5.5-10.11..."
        );
        let mut conn = t.connect_app().await?;
        ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
        let user: Option<String> = within(conn.query_first("SELECT CURRENT_USER()")).await??;
        ensure!(
            user.as_deref() == Some("app@%"),
            "CURRENT_USER() = {user:?}"
        );
        let (major, minor, _) = conn.server_version();
        ensure!(
            (major, minor) == (10, 11),
            "mysql_async sees version {major}.{minor}"
        );
        conn.disconnect().await?;
        Ok(())
    }
    .await;
    t.finish(result)
}

/// A wrong password gets the server's 1045 (28000) with its usual text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gets_1045_access_denied() -> anyhow::Result<()> {
    let t = start().await?;
    let result = async {
        let message = expect_err(
            connect_as(&t, APP_USER, "not-the-password", APP_DB).await,
            1045,
            "28000",
            &["Access denied for user 'app'@'", "(using password: YES)"],
            "login with a wrong password",
        )?;
        let host_ok = ["'app'@'localhost'", "'app'@'127.0.0.1'"]
            .iter()
            .any(|h| message.contains(h));
        ensure!(host_ok, "1045 names an unexpected host: {message:?}");
        // The refusal leaves nothing behind: the right password still works.
        let mut conn = t.connect_app().await?;
        ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
        Ok(())
    }
    .await;
    t.finish(result)
}

/// An unknown database at login gets 1049 (42000) "Unknown database" (for
/// a user with global privileges: `app` would get 1044, access denied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_gets_1049() -> anyhow::Result<()> {
    let t = start().await?;
    let result = async {
        expect_err(
            connect_as(&t, ADMIN_USER, ADMIN_PASSWORD, "nosuchdb").await,
            1049,
            "42000",
            &["Unknown database 'nosuchdb'"],
            "login to an unknown database",
        )?;
        Ok(())
    }
    .await;
    t.finish(result)
}

// ---------------------------------------------------------------------------
// Queries and results
// ---------------------------------------------------------------------------

/// Rows and column types come through as the server sent them, in the
/// text protocol and in the binary (prepared) protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_rows_and_types() -> anyhow::Result<()> {
    let t = start().await?;
    let result = async {
        let mut conn = t.connect_app().await?;
        within(conn.query_drop(
            "CREATE TABLE typed (id INT PRIMARY KEY, name VARCHAR(40), price DECIMAL(10,2), \
             born DATE, ratio DOUBLE, note TEXT NULL, raw VARBINARY(8))",
        ))
        .await??;
        within(conn.query_drop(
            "INSERT INTO typed VALUES (1, 'ünïcode', 12.50, '2024-02-29', 0.25, NULL, 0x00ff), \
             (2, 'two', -3.00, '1999-12-31', 1e300, 'x', '')",
        ))
        .await??;
        let sql = "SELECT id, name, price, born, ratio, note, raw FROM typed ORDER BY id";
        type Typed = (i32, String, String, String, f64, Option<String>, Vec<u8>);
        let text: Vec<Typed> = within(conn.query(sql)).await??;
        let stmt = within(conn.prep(sql)).await??;
        let binary: Vec<Row> = within(conn.exec(&stmt, ())).await??;
        ensure!(
            text.len() == 2 && binary.len() == 2,
            "row counts {} / {}",
            text.len(),
            binary.len()
        );
        ensure!(
            text[0]
                == (
                    1,
                    "ünïcode".into(),
                    "12.50".into(),
                    "2024-02-29".into(),
                    0.25,
                    None,
                    vec![0, 255]
                ),
            "text row 1: {:?}",
            text[0]
        );
        ensure!(text[1].4 == 1e300 && text[1].5.as_deref() == Some("x") && text[1].6.is_empty());
        // Binary protocol: typed values, a DATE as a date, NULL as NULL.
        let first = &binary[0];
        ensure!(first.get::<i32, _>(0) == Some(1));
        ensure!(
            matches!(first.as_ref(3), Some(Value::Date(2024, 2, 29, 0, 0, 0, 0))),
            "binary DATE: {:?}",
            first.as_ref(3)
        );
        ensure!(
            matches!(first.as_ref(5), Some(Value::NULL)),
            "binary NULL: {:?}",
            first.as_ref(5)
        );
        ensure!(first.get::<f64, _>(4) == Some(0.25));
        let columns: Vec<String> = first
            .columns_ref()
            .iter()
            .map(|c| c.name_str().into_owned())
            .collect();
        ensure!(
            columns == ["id", "name", "price", "born", "ratio", "note", "raw"],
            "{columns:?}"
        );
        Ok(())
    }
    .await;
    t.finish(result)
}

/// One COM_QUERY with two SELECTs and an UPDATE: three results, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statements_give_multi_results() -> anyhow::Result<()> {
    let t = start().await?;
    let result = async {
        let mut conn = t.connect_app().await?;
        within(conn.query_drop("CREATE TABLE m (a INT); INSERT INTO m VALUES (1), (2), (3)"))
            .await??;
        let mut results = within(
            conn.query_iter("SELECT 1 AS one; SELECT a FROM m ORDER BY a; UPDATE m SET a = a + 10"),
        )
        .await??;
        let first: Vec<i64> = within(results.collect::<i64>()).await??;
        let second: Vec<i64> = within(results.collect::<i64>()).await??;
        let third: Vec<Row> = within(results.collect::<Row>()).await??;
        let affected = results.affected_rows();
        drop(results);
        ensure!(first == [1], "first result {first:?}");
        ensure!(second == [1, 2, 3], "second result {second:?}");
        ensure!(
            third.is_empty() && affected == 3,
            "UPDATE: {} rows, {affected} affected",
            third.len()
        );
        ensure!(select_i64(&mut conn, "SELECT SUM(a) FROM m").await? == 36);
        // An error in the middle ends the batch with that error; the session goes on.
        let err =
            within(conn.query_drop("SELECT 1; SELECT * FROM no_such_table; SELECT 3")).await?;
        expect_err(err, 1146, "42S02", &["no_such_table"], "the failing batch")?;
        ensure!(select_i64(&mut conn, "SELECT 4").await? == 4);
        Ok(())
    }
    .await;
    t.finish(result)
}

/// Server-side prepared statements: executed with parameters many times,
/// closed, prepared again; two statements alive at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_execute_close_and_reprepare() -> anyhow::Result<()> {
    let t = start().await?;
    let result = async {
        let mut conn = t.connect_app().await?;
        within(conn.query_drop("CREATE TABLE p (id INT PRIMARY KEY, v VARCHAR(20))")).await??;
        let insert = within(conn.prep("INSERT INTO p (id, v) VALUES (?, ?)")).await??;
        let double = within(conn.prep("SELECT ? * 2")).await??;
        ensure!(
            insert.id() != double.id(),
            "two statements share id {}",
            insert.id()
        );
        for i in 0..200i64 {
            within(conn.exec_drop(&insert, (i, format!("v{i}")))).await??;
            let got: Option<i64> = within(conn.exec_first(&double, (i,))).await??;
            ensure!(got == Some(i * 2), "SELECT {i} * 2 gave {got:?}");
        }
        ensure!(select_i64(&mut conn, "SELECT COUNT(*) FROM p").await? == 200);
        within(conn.close(double)).await??;
        let again = within(conn.prep("SELECT ? * 2")).await??;
        let got: Option<i64> = within(conn.exec_first(&again, (21,))).await??;
        ensure!(got == Some(42), "re-prepared statement gave {got:?}");
        let v: Option<String> =
            within(conn.exec_first("SELECT v FROM p WHERE id = ?", (199,))).await??;
        ensure!(v.as_deref() == Some("v199"), "got {v:?}");
        // A duplicate key through a prepared statement is the server's error.
        expect_err(
            within(conn.exec_drop(&insert, (5, "dup"))).await?,
            1062,
            "23000",
            &["Duplicate entry"],
            "duplicate key",
        )?;
        within(conn.close(insert)).await??;
        within(conn.close(again)).await??;
        ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
        Ok(())
    }
    .await;
    t.finish(result)
}

/// A 20 MiB value both ways: a 20 MiB COM_QUERY (a full 16 MiB packet plus
/// a continuation packet), a 20 MiB prepared-statement parameter, and rows
/// of 20 MiB coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_mib_blob_insert_and_select() -> anyhow::Result<()> {
    let t = start().await?;
    let result = async {
        let mut conn = t.connect_app().await?;
        within(conn.query_drop("CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB)")).await??;
        let text: String = (0..BIG)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let big_query = format!("INSERT INTO big VALUES (1, '{text}')");
        within(conn.query_drop(big_query)).await??;
        let binary: Vec<u8> = (0..BIG).map(|i| (i * 7 % 251) as u8).collect();
        within(conn.exec_drop("INSERT INTO big VALUES (?, ?)", (2, binary.clone()))).await??;

        let lens: Vec<(i32, i64)> =
            within(conn.query("SELECT id, LENGTH(b) FROM big ORDER BY id")).await??;
        ensure!(
            lens == [(1, BIG as i64), (2, BIG as i64)],
            "stored lengths {lens:?}"
        );
        let back: Option<Vec<u8>> =
            within(conn.query_first("SELECT b FROM big WHERE id = 1")).await??;
        ensure!(
            back.as_deref() == Some(text.as_bytes()),
            "text row came back different"
        );
        let back: Option<Vec<u8>> =
            within(conn.exec_first("SELECT b FROM big WHERE id = ?", (2,))).await??;
        ensure!(
            back.as_deref() == Some(&binary[..]),
            "binary row came back different"
        );
        // Exactly 16 MiB - 1 bytes of payload in a row: the edge where the
        // packet is full and an empty continuation packet must follow.
        let edge: Option<Vec<u8>> =
            within(conn.query_first("SELECT REPEAT('z', 16777215 - 5)")).await??;
        ensure!(edge.map(|e| e.len()) == Some(16_777_210));
        ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
        Ok(())
    }
    .await;
    t.finish(result)
}

/// LOAD DATA LOCAL INFILE: the server asks the client for the file, the
/// client streams it, the rows arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_data_local_infile() -> anyhow::Result<()> {
    let t = MysqlTarget::start(&["--local-infile=1"], &[]).await?;
    let result = async {
        let mut conn = t.connect_app().await?;
        within(conn.query_drop("CREATE TABLE li (id INT PRIMARY KEY, name VARCHAR(20))")).await??;
        let mut data = String::new();
        for i in 0..5000 {
            data.push_str(&format!("{i},name-{i}\n"));
        }
        let bytes = Bytes::from(data);
        conn.set_infile_handler(async move {
            let chunks: Vec<std::io::Result<Bytes>> = bytes
                .chunks(3000)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Ok(futures_util::stream::iter(chunks).boxed())
        });
        within(conn.query_drop(
            "LOAD DATA LOCAL INFILE 'rows.csv' INTO TABLE li FIELDS TERMINATED BY ','",
        ))
        .await??;
        ensure!(
            conn.affected_rows() == 5000,
            "affected rows {}",
            conn.affected_rows()
        );
        ensure!(select_i64(&mut conn, "SELECT COUNT(*) FROM li").await? == 5000);
        let name: Option<String> =
            within(conn.query_first("SELECT name FROM li WHERE id = 4999")).await??;
        ensure!(name.as_deref() == Some("name-4999"), "{name:?}");
        ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
        Ok(())
    }
    .await;
    t.finish(result)
}

// ---------------------------------------------------------------------------
// Utility commands
// ---------------------------------------------------------------------------

/// COM_INIT_DB switches the database (and a database `app` has no rights on
/// gets the server's 1044); COM_PING answers OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn com_init_db_and_com_ping() -> anyhow::Result<()> {
    let t = start().await?;
    let result = async {
        create_other_user_and_db(&t.db).await?;
        let mut raw = RawMysql::connect_login(t.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
        raw.send_command(COM_PING, b"").await?;
        let pong = raw.read_packet(Duration::from_secs(10)).await?;
        ensure!(
            pong.payload.first() == Some(&0x00) && pong.seq == 1,
            "COM_PING got {pong:?}"
        );
        raw.send_command(COM_INIT_DB, b"otherdb").await?;
        let ok = raw.read_packet(Duration::from_secs(10)).await?;
        ensure!(
            ok.payload.first() == Some(&0x00),
            "COM_INIT_DB otherdb got {:?}",
            parse_err(&ok.payload)
        );
        // An unqualified table now lands in otherdb.
        raw.query_ok("CREATE TABLE made_here (a INT)").await?;
        raw.send_command(COM_INIT_DB, b"nosuchdb").await?;
        let refused = raw.read_packet(Duration::from_secs(10)).await?;
        let err = parse_err(&refused.payload).context("COM_INIT_DB nosuchdb: no ERR")?;
        ensure!(
            err.code == 1044
                && err.sqlstate.as_deref() == Some("42000")
                && err.message.contains("'nosuchdb'"),
            "COM_INIT_DB nosuchdb: {err:?}"
        );
        raw.query_ok("DO 1").await?;

        let mut admin = t.db.admin().await?;
        let n: Option<i64> = within(admin.query_first(
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = 'otherdb' AND table_name = 'made_here'",
        ))
        .await??;
        ensure!(n == Some(1), "otherdb.made_here was not created");

        let mut conn = t.connect_app().await?;
        within(conn.ping()).await??;
        within(conn.query_drop("USE otherdb")).await??;
        let db: Option<String> = within(conn.query_first("SELECT DATABASE()")).await??;
        ensure!(db.as_deref() == Some("otherdb"), "DATABASE() = {db:?}");
        Ok(())
    }
    .await;
    t.finish(result)
}

/// COM_RESET_CONNECTION clears session variables, user variables and
/// prepared statements; COM_CHANGE_USER logs in as another user (and clears
/// the same), and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connection_and_change_user() -> anyhow::Result<()> {
    let t = start().await?;
    let result = async {
        create_other_user_and_db(&t.db).await?;
        let mut conn = t.connect_app().await?;
        within(conn.query_drop("SET SESSION time_zone = '+05:00', @kept = 7")).await??;
        let tz: Option<String> = within(conn.query_first("SELECT @@session.time_zone")).await??;
        ensure!(tz.as_deref() == Some("+05:00"));
        ensure!(
            within(conn.reset()).await??,
            "mysql_async did not send COM_RESET_CONNECTION"
        );
        let (tz, kept): (String, Option<i64>) =
            within(conn.query_first("SELECT @@session.time_zone, @kept"))
                .await??
                .context("no row")?;
        ensure!(
            tz == "SYSTEM" && kept.is_none(),
            "after reset: time_zone {tz}, @kept {kept:?}"
        );
        ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);

        within(conn.query_drop("SET SESSION sql_mode = 'ANSI_QUOTES', @gone = 1")).await??;
        let opts = ChangeUserOpts::default()
            .with_user(Some(OTHER_USER.into()))
            .with_pass(Some(OTHER_PASSWORD.into()))
            .with_db_name(Some("otherdb".into()));
        within(conn.change_user(opts)).await??;
        let (user, db, mode, gone): (String, String, String, Option<i64>) = within(
            conn.query_first("SELECT CURRENT_USER(), DATABASE(), @@session.sql_mode, @gone"),
        )
        .await??
        .context("no row")?;
        ensure!(
            user == "other@%" && db == "otherdb",
            "after change_user: {user} on {db}"
        );
        ensure!(
            !mode.contains("ANSI_QUOTES") && gone.is_none(),
            "state survived change_user: {mode:?} {gone:?}"
        );

        let wrong = ChangeUserOpts::default()
            .with_user(Some(APP_USER.into()))
            .with_pass(Some("wrong".into()));
        let refused = within(conn.change_user(wrong)).await?;
        expect_err(
            refused,
            1045,
            "28000",
            &["Access denied for user 'app'"],
            "change_user with a wrong password",
        )?;

        let mut conn = t.connect_app().await?;
        let back = ChangeUserOpts::default()
            .with_user(Some(OTHER_USER.into()))
            .with_pass(Some(OTHER_PASSWORD.into()));
        within(conn.change_user(back)).await??;
        let home = ChangeUserOpts::default()
            .with_user(Some(APP_USER.into()))
            .with_pass(Some(APP_PASSWORD.into()))
            .with_db_name(Some(APP_DB.into()));
        within(conn.change_user(home)).await??;
        let user: Option<String> = within(conn.query_first("SELECT CURRENT_USER()")).await??;
        ensure!(user.as_deref() == Some("app@%"), "back as {user:?}");
        Ok(())
    }
    .await;
    t.finish(result)
}

/// Reads a length-encoded integer from `bytes` at `*pos`.
fn lenenc(bytes: &[u8], pos: &mut usize) -> anyhow::Result<u64> {
    let first = *bytes.get(*pos).context("short OK packet")?;
    *pos += 1;
    let width = match first {
        0..=0xfa => return Ok(u64::from(first)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => anyhow::bail!("bad length-encoded integer 0x{first:02x}"),
    };
    let raw = bytes.get(*pos..*pos + width).context("short OK packet")?;
    *pos += width;
    Ok(raw.iter().rev().fold(0, |acc, b| acc << 8 | u64::from(*b)))
}

/// A client that did not ask for CLIENT_SESSION_TRACK gets OK packets
/// without session-state data (Suture itself turns tracking on for its
/// backends and must strip it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tracking_is_stripped_for_a_client_that_did_not_ask() -> anyhow::Result<()> {
    let t = start().await?;
    let result = async {
        create_other_user_and_db(&t.db).await?;
        let mut raw = RawMysql::connect_login(t.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
        for sql in [
            "SET SESSION time_zone = '+01:00'",
            "SET NAMES latin1",
            "SET SESSION sql_mode = 'ANSI_QUOTES'",
            "USE otherdb",
            "SET @u = 1",
            "BEGIN",
            "COMMIT",
        ] {
            raw.send_command(support::raw_mysql::COM_QUERY, sql.as_bytes())
                .await?;
            let ok = raw.read_packet(Duration::from_secs(10)).await?;
            let p = &ok.payload;
            ensure!(
                p.first() == Some(&0x00),
                "{sql}: not an OK packet: {:?}",
                parse_err(p)
            );
            let mut pos = 1;
            lenenc(p, &mut pos)?;
            lenenc(p, &mut pos)?;
            let flags = p.get(pos..pos + 2).context("no status flags")?;
            let status = u16::from_le_bytes([flags[0], flags[1]]);
            pos += 4;
            ensure!(
                status & SESSION_STATE_CHANGED == 0,
                "{sql}: status 0x{status:04x} has SESSION_STATE_CHANGED"
            );
            ensure!(
                pos == p.len(),
                "{sql}: {} byte(s) after the warnings: {:02x?}",
                p.len() - pos,
                &p[pos..]
            );
        }
        Ok(())
    }
    .await;
    t.finish(result)
}

// ---------------------------------------------------------------------------
// Many clients, small pool
// ---------------------------------------------------------------------------

/// 24 clients at once on a pool of `max_size = 4`: every one logs in, runs
/// its queries with its own results, and never more than four backends of
/// `app` exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_clients_share_a_pool_of_four() -> anyhow::Result<()> {
    let t = MysqlTarget::start(&[], &[("max_size", "4"), ("min_idle", "1")]).await?;
    let result = async {
        let port = t.port();
        let mut tasks = Vec::new();
        for client in 0..24i64 {
            tasks.push(tokio::spawn(async move {
                let run = async {
                    let mut conn =
                        support::connect_mysql(port, APP_USER, APP_PASSWORD, APP_DB).await?;
                    for q in 0..10i64 {
                        let got: Option<i64> = conn.exec_first("SELECT ? + ?", (client, q)).await?;
                        ensure!(
                            got == Some(client + q),
                            "client {client} query {q}: {got:?}"
                        );
                    }
                    conn.disconnect().await?;
                    anyhow::Ok(())
                };
                tokio::time::timeout(Duration::from_secs(60), run)
                    .await
                    .with_context(|| format!("client {client} did not finish in 60 s"))?
            }));
        }
        let mut admin = t.db.admin().await?;
        let mut most = 0i64;
        while !tasks.iter().all(|task| task.is_finished()) {
            let n: Option<i64> = within(admin.query_first(
                "SELECT COUNT(*) FROM information_schema.processlist WHERE user = 'app'",
            ))
            .await??;
            most = most.max(n.unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (i, task) in tasks.into_iter().enumerate() {
            task.await?.with_context(|| format!("client {i}"))?;
        }
        println!("at most {most} backend(s) of app during the run");
        if !t.is_direct() {
            ensure!(most <= 4, "{most} backends of app at once, max_size is 4");
        }
        Ok(())
    }
    .await;
    if let Err(err) = &result {
        eprintln!("many_concurrent_clients: {}", err_text(err));
    }
    t.finish(result)
}

fn err_text(err: &anyhow::Error) -> String {
    match err.downcast_ref::<mysql_async::Error>() {
        Some(e) => describe(e),
        None => format!("{err:#}"),
    }
}
