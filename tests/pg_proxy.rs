//! Issue 3: Suture as a PostgreSQL session proxy, exercised with real
//! clients (tokio-postgres, psql, pgbench) against a real PostgreSQL.
//!
//! Every test starts its own PostgreSQL and Suture. With
//! `SUTURE_TEST_DIRECT=1` the same tests run straight against PostgreSQL,
//! which checks the tests themselves; checks that only make sense for
//! Suture print a note and are skipped in that mode.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use support::raw_client::AUTH_MD5;
use support::{find_sqlstate, skip_note, RawClient, Target};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls};

const APP_USER: &str = "app";
const APP_PASSWORD: &str = "app-secret";
const APP_DB: &str = "app";

/// How long a bad-input connection may stay open before we call it a hang.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

fn sqlstate(err: &tokio_postgres::Error) -> Option<&SqlState> {
    err.as_db_error().map(|db| db.code())
}

// ---------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_returns_rows() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let client = t.connect_app().await?;
    let messages = client
        .simple_query("SELECT g, 'row ' || g FROM generate_series(1, 3) g")
        .await?;
    let rows: Vec<(String, String)> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0)?.to_string(), r.get(1)?.to_string()))
            }
            _ => None,
        })
        .collect();
    ensure!(
        rows == [("1", "row 1"), ("2", "row 2"), ("3", "row 3")]
            .map(|(a, b)| (a.to_string(), b.to_string())),
        "unexpected rows {rows:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_query_with_parameters() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let client = t.connect_app().await?;
    let row = client
        .query_one(
            "SELECT $1::int8 + $2::int8, upper($3::text), $4::bytea",
            &[&40_i64, &2_i64, &"suture", &vec![0_u8, 1, 255]],
        )
        .await?;
    ensure!(row.get::<_, i64>(0) == 42);
    ensure!(row.get::<_, String>(1) == "SUTURE");
    ensure!(row.get::<_, Vec<u8>>(2) == vec![0, 1, 255]);
    let none: Option<i32> = client
        .query_one("SELECT $1::int4", &[&None::<i32>])
        .await?
        .get(0);
    ensure!(none.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_is_reused() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let client = t.connect_app().await?;
    let stmt = client.prepare("SELECT $1::int4 * 2").await?;
    for i in 0..50_i32 {
        let doubled: i32 = client.query_one(&stmt, &[&i]).await?.get(0);
        ensure!(doubled == i * 2, "{i} * 2 gave {doubled}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_answer_in_order() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let client = t.connect_app().await?;
    let stmt = client.prepare("SELECT $1::int4").await?;
    // Polled together, tokio-postgres writes all requests before reading any
    // reply; the slow first query checks that replies are not reordered.
    let (a, b, c, d, e) = tokio::join!(
        client.query_one("SELECT 1::int4 FROM pg_sleep(0.2)", &[]),
        client.query_one(&stmt, &[&2_i32]),
        client.query_one("SELECT 3::int4", &[]),
        client.query_one(&stmt, &[&4_i32]),
        client.simple_query("SELECT 5"),
    );
    ensure!(a?.get::<_, i32>(0) == 1);
    ensure!(b?.get::<_, i32>(0) == 2);
    ensure!(c?.get::<_, i32>(0) == 3);
    ensure!(d?.get::<_, i32>(0) == 4);
    let five = e?
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .context("no row from SELECT 5")?;
    ensure!(five == "5");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_rollback_discards_rows() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let mut client = t.connect_app().await?;
    client.batch_execute("CREATE TABLE tx_t (id int)").await?;
    {
        let tx = client.transaction().await?;
        tx.execute("INSERT INTO tx_t VALUES (1), (2)", &[]).await?;
        let inside: i64 = tx.query_one("SELECT count(*) FROM tx_t", &[]).await?.get(0);
        ensure!(inside == 2);
        tx.rollback().await?;
    }
    let after: i64 = client
        .query_one("SELECT count(*) FROM tx_t", &[])
        .await?
        .get(0);
    ensure!(after == 0, "rolled-back rows visible: {after}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_then_session_continues() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let client = t.connect_app().await?;
    let err = client
        .query("SELECT * FROM no_such_table", &[])
        .await
        .err()
        .context("query on a missing table succeeded")?;
    ensure!(
        sqlstate(&err) == Some(&SqlState::UNDEFINED_TABLE),
        "got {err:?}"
    );
    let err = client
        .simple_query("SELECT * FROM no_such_table")
        .await
        .err()
        .context("simple query on a missing table succeeded")?;
    ensure!(
        sqlstate(&err) == Some(&SqlState::UNDEFINED_TABLE),
        "got {err:?}"
    );
    let one: i32 = client.query_one("SELECT 1::int4", &[]).await?.get(0);
    ensure!(one == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_10mb_roundtrip() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let client = t.connect_app().await?;
    client
        .batch_execute("CREATE TABLE copy_t (id int PRIMARY KEY, payload text NOT NULL)")
        .await?;

    // ~12 MB of COPY text: tab-separated, no characters that need escaping.
    let mut data = Vec::with_capacity(13 << 20);
    let mut id = 0_u32;
    while data.len() < 12 << 20 {
        id += 1;
        let payload: String = (0..100)
            .map(|i| char::from(b'a' + ((id + i) % 26) as u8))
            .collect();
        data.extend_from_slice(format!("{id}\t{payload}\n").as_bytes());
    }
    let data = Bytes::from(data);

    let sink = client
        .copy_in::<_, Bytes>("COPY copy_t (id, payload) FROM STDIN")
        .await?;
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(64 * 1024) {
        sink.send(data.slice_ref(chunk)).await?;
    }
    let copied = sink.finish().await?;
    ensure!(
        copied == u64::from(id),
        "COPY FROM reported {copied} rows, sent {id}"
    );

    let stream = client
        .copy_out("COPY (SELECT id, payload FROM copy_t ORDER BY id) TO STDOUT")
        .await?;
    futures_util::pin_mut!(stream);
    let mut back = Vec::with_capacity(data.len());
    while let Some(chunk) = stream.next().await {
        back.extend_from_slice(&chunk?);
    }
    ensure!(
        back.len() == data.len(),
        "COPY TO gave {} bytes, expected {}",
        back.len(),
        data.len()
    );
    ensure!(back == data, "COPY TO bytes differ from COPY FROM bytes");
    Ok(())
}

// ---------------------------------------------------------------------------
// Notifications and process ids
// ---------------------------------------------------------------------------

async fn next_notification(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>,
    limit: Duration,
) -> anyhow::Result<tokio_postgres::Notification> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let msg = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .context("no notification in time")?
            .context("connection ended")?;
        if let AsyncMessage::Notification(n) = msg {
            return Ok(n);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_reaches_other_connection() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let (listener, mut rx) = t.connect_app_with_messages().await?;
    listener.batch_execute("LISTEN suture_events").await?;
    let sender = t.connect_app().await?;
    let sender_pid: i32 = sender
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    sender
        .batch_execute("NOTIFY suture_events, 'hello through suture'")
        .await?;
    let n = next_notification(&mut rx, Duration::from_secs(5)).await?;
    ensure!(n.channel() == "suture_events");
    ensure!(n.payload() == "hello through suture");
    ensure!(
        n.process_id() == sender_pid,
        "notification pid {} != sender pid {sender_pid}",
        n.process_id()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_notification_carries_own_backend_pid() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let (client, mut rx) = t.connect_app_with_messages().await?;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    client
        .batch_execute("LISTEN self_channel; NOTIFY self_channel, 'me'")
        .await?;
    let n = next_notification(&mut rx, Duration::from_secs(5)).await?;
    ensure!(
        n.process_id() == pid,
        "notification pid {} != pg_backend_pid() {pid}",
        n.process_id()
    );
    Ok(())
}

/// The raw client sees BackendKeyData itself, so it can check all three ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_key_pid_matches_backend_and_notifications() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let mut raw = RawClient::connect(t.port()).await?;
    let info = raw.login(APP_USER, APP_PASSWORD, APP_DB).await?;
    let (key_pid, _secret) = info.backend_key.context("no BackendKeyData")?;
    raw.send_query("LISTEN k; NOTIFY k, 'x'; SELECT pg_backend_pid()")
        .await?;
    let msgs = raw.read_until(b'Z', Duration::from_secs(5)).await?;
    let notify = msgs
        .iter()
        .find(|m| m.tag == b'A')
        .context("no NotificationResponse")?;
    let notify_pid = i32::from_be_bytes(notify.body[..4].try_into()?);
    let row = msgs.iter().find(|m| m.tag == b'D').context("no DataRow")?;
    // DataRow: int16 column count, int32 length, value text.
    let len = i32::from_be_bytes(row.body[2..6].try_into()?) as usize;
    let backend_pid: i32 = std::str::from_utf8(&row.body[6..6 + len])?.parse()?;
    ensure!(
        key_pid == backend_pid,
        "BackendKeyData pid {key_pid} != pg_backend_pid() {backend_pid}"
    );
    ensure!(
        notify_pid == backend_pid,
        "notification pid {notify_pid} != pg_backend_pid() {backend_pid}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_interrupts_pg_sleep() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let client = t.connect_app().await?;
    let token = client.cancel_token();
    let sleeper = client.query("SELECT pg_sleep(10)", &[]);
    let canceller = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = Instant::now();
        token.cancel_query(NoTls).await.map(|()| sent)
    };
    let (result, sent) = tokio::join!(sleeper, canceller);
    let sent = sent?;
    let err = result.err().context("pg_sleep(10) was not cancelled")?;
    let took = sent.elapsed();
    ensure!(
        sqlstate(&err) == Some(&SqlState::QUERY_CANCELED),
        "got {err:?}"
    );
    ensure!(took < Duration::from_secs(3), "cancel took {took:?}");
    let one: i32 = client.query_one("SELECT 1::int4", &[]).await?.get(0);
    ensure!(one == 1);
    Ok(())
}

// ---------------------------------------------------------------------------
// Startup parameters and authentication
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_startup_parameter_reaches_backend() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let mut cfg = t.app_config();
    cfg.options("-c search_path=myschema");
    let (client, _rx) = support::connect_with_messages(&cfg).await?;
    let path: String = client.query_one("SHOW search_path", &[]).await?.get(0);
    ensure!(path == "myschema", "search_path is {path:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_name_passes_through() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let mut cfg = t.app_config();
    cfg.application_name("suture-test-app");
    let (client, _rx) = support::connect_with_messages(&cfg).await?;
    let name: String = client.query_one("SHOW application_name", &[]).await?.get(0);
    ensure!(name == "suture-test-app", "application_name is {name:?}");
    Ok(())
}

async fn expect_auth_failure(t: &Target, user: &str, password: &str) -> anyhow::Result<()> {
    let err = t
        .connect(user, password, APP_DB)
        .await
        .err()
        .with_context(|| format!("login as {user} with a bad password succeeded"))?;
    let err = err
        .downcast_ref::<tokio_postgres::Error>()
        .context("not a tokio-postgres error")?;
    let db = err
        .as_db_error()
        .with_context(|| format!("no ErrorResponse: {err:?}"))?;
    ensure!(db.code() == &SqlState::INVALID_PASSWORD, "got {db:?}");
    let expected = format!("password authentication failed for user \"{user}\"");
    ensure!(
        db.message() == expected,
        "message {:?}, expected {expected:?}",
        db.message()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_28p01() -> anyhow::Result<()> {
    let t = Target::start().await?;
    expect_auth_failure(&t, APP_USER, "not-the-password").await?;
    t.assert_serves().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_is_28p01_like_wrong_password() -> anyhow::Result<()> {
    let t = Target::start().await?;
    expect_auth_failure(&t, "nosuchuser", "whatever").await?;
    t.assert_serves().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_client_auth_when_configured() -> anyhow::Result<()> {
    let t = Target::start_with("client_auth = \"md5\"").await?;
    // Directly, only md5user is set up for md5 in pg_hba; through Suture the
    // pool asks every client for md5.
    let (user, password) = if t.is_direct() {
        ("md5user", "md5-secret")
    } else {
        (APP_USER, APP_PASSWORD)
    };
    let mut raw = RawClient::connect(t.port()).await?;
    let info = raw.login(user, password, APP_DB).await?;
    ensure!(
        info.auth_codes.first() == Some(&AUTH_MD5),
        "auth requests {:?}",
        info.auth_codes
    );
    let client = t.connect(user, password, APP_DB).await?;
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    ensure!(who == user);
    let err = t
        .connect(user, "wrong", APP_DB)
        .await
        .err()
        .context("md5 with a wrong password succeeded")?;
    let err = err
        .downcast_ref::<tokio_postgres::Error>()
        .context("not a tokio-postgres error")?;
    ensure!(
        sqlstate(err) == Some(&SqlState::INVALID_PASSWORD),
        "got {err:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_sequential_clients() -> anyhow::Result<()> {
    let t = Target::start().await?;
    for i in 0..30_i32 {
        let client = t
            .connect_app()
            .await
            .with_context(|| format!("client {i}"))?;
        let v: i32 = client.query_one("SELECT $1::int4", &[&i]).await?.get(0);
        ensure!(v == i);
        drop(client);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Command-line clients
// ---------------------------------------------------------------------------

fn pg_tool(t: &Target, tool: &str) -> Command {
    let mut cmd = Command::new(t.pg.bin_dir().join(tool));
    cmd.env("PGPASSWORD", APP_PASSWORD)
        .env_remove("PGSERVICE")
        .env_remove("PGSSLMODE");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_select_42() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let dsn = format!("host=127.0.0.1 port={} user=app dbname=app", t.port());
    let mut cmd = pg_tool(&t, "psql");
    cmd.args([dsn.as_str(), "-X", "-A", "-t", "-c", "select 42"]);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "psql failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(stdout.trim() == "42", "psql printed {stdout:?}");
    Ok(())
}

/// Runs pgbench with `args`, returning stdout+stderr; fails on non-zero exit.
async fn pgbench(t: &Target, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = pg_tool(t, "pgbench");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &t.port().to_string(),
        "-U",
        APP_USER,
    ])
    .args(args)
    .arg(APP_DB);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "pgbench {args:?} failed ({}):\n{text}",
        out.status
    );
    Ok(text)
}

/// Checks pgbench's summary: no failed transactions, tps above zero.
fn check_pgbench_summary(output: &str) -> anyhow::Result<f64> {
    let failed = output
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions:"))
        .map(|rest| rest.split_whitespace().next().unwrap_or("?").to_string());
    match failed {
        Some(n) => ensure!(
            n == "0",
            "pgbench reports {n} failed transactions:\n{output}"
        ),
        None => {
            // Older pgbench: every transaction must have been processed.
            let line = output
                .lines()
                .find_map(|l| l.strip_prefix("number of transactions actually processed:"))
                .with_context(|| format!("no transaction summary in pgbench output:\n{output}"))?;
            ensure!(
                !line.contains('/'),
                "pgbench lost transactions: {line}\n{output}"
            );
        }
    }
    let tps: f64 = output
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("no tps line in pgbench output:\n{output}"))?
        .parse()?;
    ensure!(tps > 0.0, "tps = {tps}\n{output}");
    Ok(tps)
}

async fn pgbench_select_only(mode: &str) -> anyhow::Result<()> {
    let t = Target::start().await?;
    pgbench(&t, &["-i", "-s", "1", "-q"]).await?;
    let out = pgbench(&t, &["-S", "-T", "3", "-c", "4", "-j", "2", "-M", mode]).await?;
    let tps = check_pgbench_summary(&out)?;
    eprintln!("pgbench -S -M {mode}: tps = {tps:.0}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_simple() -> anyhow::Result<()> {
    pgbench_select_only("simple").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_extended() -> anyhow::Result<()> {
    pgbench_select_only("extended").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared() -> anyhow::Result<()> {
    pgbench_select_only("prepared").await
}

// ---------------------------------------------------------------------------
// Bad input: each case ends with a fresh client being served
// ---------------------------------------------------------------------------

/// Expects the peer to close within [`CLOSE_WITHIN`]; any ErrorResponse it
/// sent first must carry 08P01. Returns the bytes received.
async fn expect_closed(raw: &mut RawClient, what: &str) -> anyhow::Result<Vec<u8>> {
    let got = raw.read_to_eof(CLOSE_WITHIN).await;
    ensure!(
        got.closed,
        "{what}: connection still open after {CLOSE_WITHIN:?}"
    );
    if let Some(code) = find_sqlstate(&got.bytes) {
        ensure!(code == "08P01", "{what}: SQLSTATE {code}, expected 08P01");
    }
    Ok(got.bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_garbage_before_startup() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let mut raw = RawClient::connect(t.port()).await?;
    raw.send(b"GET / HTTP/1.1\r\nHost: suture\r\n\r\n").await?;
    expect_closed(&mut raw, "garbage").await?;
    t.assert_serves().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_startup_length_below_8() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let mut raw = RawClient::connect(t.port()).await?;
    raw.send(&4_i32.to_be_bytes()).await?;
    expect_closed(&mut raw, "startup length 4").await?;
    t.assert_serves().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_startup_length_huge() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let mut raw = RawClient::connect(t.port()).await?;
    let mut msg = (1_i32 << 30).to_be_bytes().to_vec();
    msg.extend_from_slice(&196_608_i32.to_be_bytes()); // protocol 3.0
    msg.extend_from_slice(b"user\0app\0");
    raw.send(&msg).await?;
    expect_closed(&mut raw, "startup length 2^30").await?;
    t.assert_serves().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_truncated_startup_then_close() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let mut raw = RawClient::connect(t.port()).await?;
    let mut msg = 100_i32.to_be_bytes().to_vec();
    msg.extend_from_slice(&196_608_i32.to_be_bytes());
    msg.extend_from_slice(b"user\0ap");
    raw.send(&msg).await?;
    raw.shutdown_write().await?;
    expect_closed(&mut raw, "truncated startup").await?;
    drop(raw);
    t.assert_serves().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_silent_client_hits_login_timeout() -> anyhow::Result<()> {
    let t = Target::start_with("client_login_timeout = \"1s\"").await?;
    let started = Instant::now();
    let mut silent = RawClient::connect(t.port()).await?;
    // While the silent client hangs, others are served.
    t.assert_serves().await?;
    t.assert_serves().await?;
    if t.is_direct() {
        skip_note(
            "bad_input_silent_client_hits_login_timeout",
            "PostgreSQL's authentication_timeout is 60 s, not Suture's client_login_timeout",
        );
        return Ok(());
    }
    let left = Duration::from_secs(3).saturating_sub(started.elapsed());
    let got = silent.read_to_eof(left + Duration::from_millis(500)).await;
    ensure!(got.closed, "silent client not closed within ~3 s");
    t.assert_serves().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_message_length_below_4_after_login() -> anyhow::Result<()> {
    let t = Target::start().await?;
    let mut raw = RawClient::connect(t.port()).await?;
    raw.login(APP_USER, APP_PASSWORD, APP_DB).await?;
    raw.send(&[b'Q', 0, 0, 0, 2]).await?;
    let bytes = expect_closed(&mut raw, "message length 2").await?;
    if t.is_direct() {
        // PostgreSQL logs "invalid message length" and closes without a reply.
        skip_note(
            "bad_input_message_length_below_4_after_login",
            "no ErrorResponse check",
        );
    } else {
        let code = find_sqlstate(&bytes).context("no ErrorResponse before close")?;
        ensure!(code == "08P01", "SQLSTATE {code}");
    }
    t.assert_serves().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_message_above_max_message_size() -> anyhow::Result<()> {
    let t = Target::start_with("max_message_size = \"1MiB\"").await?;
    if t.is_direct() {
        skip_note(
            "bad_input_message_above_max_message_size",
            "PostgreSQL accepts 2 MiB queries; the limit is Suture's",
        );
        return t.assert_serves().await;
    }
    let mut raw = RawClient::connect(t.port()).await?;
    raw.login(APP_USER, APP_PASSWORD, APP_DB).await?;
    // Header only: claims 2 MiB, the body never comes.
    let mut header = vec![b'Q'];
    header.extend_from_slice(&((2 << 20) + 4_i32).to_be_bytes());
    header.extend_from_slice(b"SELECT ");
    raw.send(&header).await?;
    let bytes = expect_closed(&mut raw, "2 MiB message").await?;
    let code = find_sqlstate(&bytes).context("no ErrorResponse before close")?;
    ensure!(code == "08P01", "SQLSTATE {code}");
    t.assert_serves().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_client_stops_reading_large_result() -> anyhow::Result<()> {
    let t = Target::start_with("client_write_timeout = \"2s\"").await?;
    let mut raw = RawClient::connect(t.port()).await?;
    raw.login(APP_USER, APP_PASSWORD, APP_DB).await?;
    // About 200 MB of result; this client never reads it.
    raw.send_query("SELECT repeat('x', 1000000) FROM generate_series(1, 200)")
        .await?;
    let started = Instant::now();
    let mut max_rss = 0_u64;
    while started.elapsed() < Duration::from_secs(5) {
        t.assert_serves().await?;
        if let Some(s) = &t.suture {
            max_rss = max_rss.max(s.rss_bytes()?);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if t.is_direct() {
        skip_note(
            "bad_input_client_stops_reading_large_result",
            "PostgreSQL has no client write timeout; RSS and close checks are Suture's",
        );
        return Ok(());
    }
    ensure!(
        max_rss < 200 << 20,
        "suture RSS reached {} MiB",
        max_rss >> 20
    );
    // Suture must have given up on the client: draining now ends in EOF
    // well before the whole result arrives.
    let (received, closed) = raw.drain_to_eof(Duration::from_secs(20)).await;
    ensure!(closed, "stalled client still open after the write timeout");
    ensure!(
        received < 150 << 20,
        "stalled client received {} MiB: the result was not cut off",
        received >> 20
    );
    t.assert_serves().await
}
