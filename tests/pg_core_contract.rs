//! Issue 9: the replay contract (DESIGN §3–§5) off the happy path, one test
//! per defect that was found. Each test starts its own PostgreSQL, the
//! fault relay and Suture, and checks what a client sees: rows, SQLSTATEs,
//! a byte stream that still frames, a backend that was not replaced.
//!
//! Raw-protocol clients (tests/support/raw_client.rs) are used where a real
//! driver cannot be made to pipeline the exact messages a defect needs
//! (Flush-delimited batches, pipelined simple queries, a half-sent COPY).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use bytes::BytesMut;
use support::fault_relay::Direction;
use support::raw_client::{error_fields, ext, BackendMsg};
use support::rig::{
    config_via, describe_sqlstate as describe, select_int, sqlstate, within, Rig, STEP,
};
use support::{free_port, PgServer, RawClient, SutureProc};
use tokio_postgres::{Client, NoTls};

/// Time given to Suture to notice a fault on an idle connection.
const SETTLE: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Terminates every client backend of role `app`; returns how many.
async fn terminate_app_backends(su: &Client) -> anyhow::Result<i64> {
    let row = within(su.query_one(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE usename = 'app' AND backend_type = 'client backend'",
        &[],
    ))
    .await??;
    Ok(row.get(0))
}

/// Client backends of role `app` on the server right now.
async fn app_backends(su: &Client) -> anyhow::Result<i64> {
    let row = within(su.query_one(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE usename = 'app' AND backend_type = 'client backend'",
        &[],
    ))
    .await??;
    Ok(row.get(0))
}

/// A raw client logged in to Suture as `app`.
async fn raw_app(rig: &Rig) -> anyhow::Result<RawClient> {
    let mut raw = RawClient::connect(rig.suture.port()).await?;
    raw.login("app", "app-secret", "app").await?;
    Ok(raw)
}

/// Bytes on the wire of each reply when `sqls` run one after another as
/// simple queries on one direct session: what the relay must let through.
async fn reply_lens(pg: &PgServer, sqls: &[&str]) -> anyhow::Result<Vec<u64>> {
    let mut raw = RawClient::connect(pg.port()).await?;
    raw.login("app", "app-secret", "app").await?;
    let mut lens = Vec::new();
    for sql in sqls {
        raw.send_query(sql).await?;
        let msgs = raw.read_until_ready(STEP).await?;
        lens.push(msgs.iter().map(|m| 5 + m.body.len() as u64).sum());
    }
    Ok(lens)
}

/// The SQLSTATE of the first ErrorResponse among `msgs`.
fn sqlstate_of(msgs: &[BackendMsg]) -> Option<String> {
    msgs.iter()
        .find(|m| m.tag == b'E')
        .and_then(|m| error_fields(&m.body).into_iter().find(|(c, _)| *c == b'C'))
        .map(|(_, v)| v)
}

/// The message text of the first ErrorResponse among `msgs`.
fn message_of(msgs: &[BackendMsg]) -> String {
    msgs.iter()
        .find(|m| m.tag == b'E')
        .and_then(|m| error_fields(&m.body).into_iter().find(|(c, _)| *c == b'M'))
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// Tags of `msgs` as a string, e.g. "TDCZ".
fn tags(msgs: &[BackendMsg]) -> String {
    msgs.iter().map(|m| char::from(m.tag)).collect()
}

/// The transaction status of the last ReadyForQuery among `msgs`.
fn ready_status(msgs: &[BackendMsg]) -> Option<char> {
    msgs.iter()
        .rev()
        .find(|m| m.tag == b'Z')
        .and_then(|m| m.body.first())
        .map(|&b| char::from(b))
}

/// The first column of the first DataRow among `msgs`, as text.
fn first_value(msgs: &[BackendMsg]) -> Option<String> {
    let row = msgs.iter().find(|m| m.tag == b'D')?;
    let len = i32::from_be_bytes(row.body.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    let value = row.body.get(6..6 + len)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

/// Reads one more message if one comes within `limit`.
async fn extra_message(raw: &mut RawClient, limit: Duration) -> Option<BackendMsg> {
    raw.read_message(limit).await.ok()
}

// ---------------------------------------------------------------------------
// 1. A full pool heals as fast as an empty one
// ---------------------------------------------------------------------------

/// `max_size` = number of clients, `min_idle = 0` (the usual session-mode
/// sizing). Every client's backend is terminated while it is idle; each
/// client's next query must be served at once, in the slot its session
/// already holds, not after `checkout_timeout` (5 s) and never with a bare
/// close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_pool_heals_in_the_sessions_own_slot() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0"), ("max_size", "4")]).await?;
    let result = async {
        let mut clients = Vec::new();
        for _ in 0..4 {
            let c = rig.connect_app().await?;
            ensure!(select_int(&c.client, "SELECT 1::int4").await? == 1);
            clients.push(c);
        }
        let su = rig.superuser().await?;
        let killed = terminate_app_backends(&su).await?;
        ensure!(killed == 4, "terminated {killed} backends, expected 4");
        tokio::time::sleep(SETTLE).await;
        let runs = clients.iter().map(|c| async move {
            let started = Instant::now();
            let got = within(c.client.query_one("SELECT 2::int4", &[])).await;
            (got, started.elapsed(), c.connection_end())
        });
        for (i, (got, took, end)) in futures_util::future::join_all(runs)
            .await
            .into_iter()
            .enumerate()
        {
            match got? {
                Ok(row) => ensure!(row.get::<_, i32>(0) == 2),
                Err(err) => bail!("client {i}: {} (connection {end})", describe(&err)),
            }
            ensure!(
                took < Duration::from_secs(2),
                "client {i} waited {took:?} for its heal (a second pool slot?)"
            );
        }
        let open = app_backends(&su).await?;
        ensure!(open <= 4, "{open} backends for max_size = 4");
        Ok(())
    }
    .await;
    rig.finish(result)
}

// ---------------------------------------------------------------------------
// 2. An Execute answered behind a Flush is inside an implicit transaction
// ---------------------------------------------------------------------------

/// How the backend is lost in the Flush tests.
#[derive(Clone, Copy, Debug)]
enum Loss {
    Terminate,
    Rst,
}

/// Parse/Bind/Execute(INSERT)/Flush, the client gets CommandComplete; the
/// backend is lost before the Sync. The INSERT was rolled back with the
/// backend's implicit transaction, so the Sync must not answer "success":
/// it gets 08006 and then ReadyForQuery, the row does not exist, and the
/// session carries on.
async fn flush_batch_lost_before_sync(loss: Loss) -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute("CREATE TABLE flush_t (x int); GRANT ALL ON flush_t TO app"))
            .await??;
        let mut raw = raw_app(&rig).await?;
        let mut batch = BytesMut::new();
        ext::parse("", "INSERT INTO flush_t VALUES (1)", &mut batch)?;
        ext::bind("", &mut batch)?;
        ext::execute(&mut batch)?;
        ext::flush(&mut batch);
        raw.send(&batch).await?;
        let answered = raw.read_until(b'C', STEP).await?;
        ensure!(
            tags(&answered) == "12C",
            "Flush batch answered with {}",
            tags(&answered)
        );
        match loss {
            Loss::Terminate => {
                ensure!(terminate_app_backends(&su).await? == 1);
            }
            Loss::Rst => rig.relay.rst_all().await?,
        }
        tokio::time::sleep(SETTLE).await;
        let mut sync = BytesMut::new();
        ext::sync(&mut sync);
        raw.send(&sync).await?;
        let reply = raw
            .read_until_ready(STEP)
            .await
            .context("the Sync after the lost implicit transaction")?;
        ensure!(
            sqlstate_of(&reply).as_deref() == Some("08006"),
            "Sync after a lost implicit transaction answered {} (error {:?}: {})",
            tags(&reply),
            sqlstate_of(&reply),
            message_of(&reply)
        );
        ensure!(ready_status(&reply) == Some('I'), "{}", tags(&reply));
        let rows: i64 = within(su.query_one("SELECT count(*) FROM flush_t", &[]))
            .await??
            .get(0);
        ensure!(rows == 0, "the rolled-back INSERT left {rows} rows");
        raw.send_query("SELECT 7::int4").await?;
        let next = raw.read_until_ready(STEP).await?;
        ensure!(
            first_value(&next).as_deref() == Some("7"),
            "{}",
            tags(&next)
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_batch_terminated_before_sync_is_not_success() -> anyhow::Result<()> {
    flush_batch_lost_before_sync(Loss::Terminate).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_batch_reset_before_sync_is_not_success() -> anyhow::Result<()> {
    flush_batch_lost_before_sync(Loss::Rst).await
}

// ---------------------------------------------------------------------------
// 3. Startup options do not multiply sub-pools
// ---------------------------------------------------------------------------

/// Forty clients, one after another, each with its own `-c` option, against
/// `max_size = 3`: the server never sees more than 3 backends of the user,
/// every client still gets its option, and a client without options gets
/// the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_do_not_multiply_backends() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1"), ("max_size", "3")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        let mut most = 0;
        for i in 1..=40 {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host("127.0.0.1")
                .port(rig.suture.port())
                .user("app")
                .password("app-secret")
                .dbname("app")
                .options(format!(
                    "-c statement_timeout={i}s -c application_name=opt\\ {i}"
                ));
            let (client, conn) = within(cfg.connect(NoTls))
                .await?
                .with_context(|| format!("client {i} with options"))?;
            tokio::spawn(conn);
            let shown = within(client.simple_query("SHOW statement_timeout"))
                .await??
                .into_iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                });
            ensure!(
                shown.as_deref() == Some(&format!("{i}s")),
                "client {i}: statement_timeout {shown:?}"
            );
            let name = within(client.simple_query("SHOW application_name"))
                .await??
                .into_iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                });
            ensure!(
                name.as_deref() == Some(&format!("opt {i}")),
                "client {i}: application_name {name:?}"
            );
            drop(client);
            most = most.max(app_backends(&su).await?);
        }
        tokio::time::sleep(SETTLE).await;
        most = most.max(app_backends(&su).await?);
        ensure!(most <= 3, "up to {most} backends for max_size = 3");
        let plain = rig.connect_app().await?;
        let rows = within(plain.client.simple_query("SHOW statement_timeout")).await??;
        let shown = rows.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        ensure!(
            shown.as_deref() == Some("0"),
            "a client without options inherited statement_timeout {shown:?}"
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

// ---------------------------------------------------------------------------
// 4. A cancel never reaches another client's statement
// ---------------------------------------------------------------------------

/// Clients that send a CancelRequest while they disconnect (as lib/pq does
/// on a cancelled context) share a small pool with clients that run short
/// transactions. Nobody cancels the latter, so none of their statements may
/// fail with 57014.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_while_disconnecting_never_cancels_another_client() -> anyhow::Result<()> {
    // Cheap logins (md5 to the server, trust to Suture), so the clients
    // churn through many backends in a few seconds.
    let rig = Rig::start(&[
        ("min_idle", "0"),
        ("max_size", "3"),
        ("client_auth", "\"trust\""),
    ])
    .await?;
    let result = async {
        let stop = Arc::new(AtomicBool::new(false));
        let cancelled = Arc::new(AtomicU64::new(0));
        let victim_ok = Arc::new(AtomicU64::new(0));
        let port = rig.suture.port();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let stop = Arc::clone(&stop);
            tasks.push(tokio::spawn(async move {
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let dsn = support::dsn_for(port, "md5user", "md5-secret", "app");
                    let Ok(Ok((client, conn))) =
                        tokio::time::timeout(STEP, tokio_postgres::connect(&dsn, NoTls)).await
                    else {
                        continue;
                    };
                    let conn = tokio::spawn(conn);
                    // As lib/pq does on a cancelled context: the cancel goes out
                    // while the statement runs, the connection is closed as
                    // soon as the statement returns.
                    let token = client.cancel_token();
                    let cancel = tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        token.cancel_query(NoTls).await
                    });
                    let _ = client.simple_query("SELECT pg_sleep(0.002)").await;
                    drop(client);
                    conn.abort();
                    let _ = tokio::time::timeout(STEP, cancel).await;
                    sent += 1;
                }
                sent
            }));
        }
        let mut victims = Vec::new();
        for _ in 0..2 {
            let stop = Arc::clone(&stop);
            let cancelled = Arc::clone(&cancelled);
            let ok = Arc::clone(&victim_ok);
            victims.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let dsn = support::dsn_for(port, "md5user", "md5-secret", "app");
                    let Ok(Ok((client, conn))) =
                        tokio::time::timeout(STEP, tokio_postgres::connect(&dsn, NoTls)).await
                    else {
                        continue;
                    };
                    tokio::spawn(conn);
                    for _ in 0..3 {
                        match client
                            .batch_execute("BEGIN; SELECT pg_sleep(0.002); COMMIT")
                            .await
                        {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(err) => {
                                if sqlstate(&err) == Some("57014") {
                                    cancelled.fetch_add(1, Ordering::Relaxed);
                                }
                                errors.push(describe(&err));
                                break;
                            }
                        }
                    }
                }
                errors
            }));
        }
        tokio::time::sleep(Duration::from_secs(8)).await;
        stop.store(true, Ordering::Relaxed);
        let mut cancels = 0;
        for task in tasks {
            cancels += task.await?;
        }
        let mut errors = Vec::new();
        for task in victims {
            errors.extend(task.await?);
        }
        let hit = cancelled.load(Ordering::Relaxed);
        let ok = victim_ok.load(Ordering::Relaxed);
        let shown = &errors[..errors.len().min(5)];
        eprintln!(
            "{cancels} cancels sent while disconnecting; victims: {ok} ok, {} errors (first: {shown:?})",
            errors.len()
        );
        ensure!(cancels > 100, "only {cancels} cancels were sent: the test proves little");
        ensure!(ok > 100, "only {ok} victim transactions ran: the test proves little");
        ensure!(
            hit == 0,
            "{hit} statements of clients that cancelled nothing failed with 57014"
        );
        ensure!(errors.is_empty(), "victims saw errors: {shown:?}");
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// The race of the stress test above, made deterministic: client A's
/// CancelRequest is still on its way to PostgreSQL (the relay holds it for
/// a second) when A disconnects; the next client gets A's backend at once
/// (`max_size = 1`) and starts a statement. The cancel must not reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_flight_when_its_client_leaves_does_not_cancel_the_next_client(
) -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0"), ("max_size", "1")]).await?;
    let result = async {
        let a = rig.connect_app().await?;
        let pid_a = select_int(&a.client, "SELECT pg_backend_pid()").await?;
        // The next client logs in now and waits for A's backend (the only one).
        let port = rig.suture.port();
        let next = tokio::spawn(async move {
            support::rig::connect_watched(&support::dsn_for(port, "app", "app-secret", "app")).await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let flows = rig.relay.accepted_count();
        rig.relay.set_delay(Duration::from_secs(1));
        let token = a.client.cancel_token();
        let cancel = tokio::spawn(async move { token.cancel_query(NoTls).await });
        // Once the relay holds the cancel, other traffic flows at full speed.
        let deadline = Instant::now() + STEP;
        while rig.relay.accepted_count() == flows {
            ensure!(
                Instant::now() < deadline,
                "the cancel never reached the relay"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        rig.relay.set_delay(Duration::ZERO);
        drop(a);
        let v = within(next).await???;
        let slept = within(v.client.batch_execute("SELECT pg_sleep(1.5)")).await?;
        let _ = within(cancel).await;
        if let Err(err) = slept {
            bail!(
                "a statement of a client that cancelled nothing failed: {}",
                describe(&err)
            );
        }
        let pid_v = select_int(&v.client, "SELECT pg_backend_pid()").await?;
        ensure!(pid_v == pid_a, "the next client did not get A's backend");
        Ok(())
    }
    .await;
    rig.finish(result)
}

// ---------------------------------------------------------------------------
// 5. Found by reading the code
// ---------------------------------------------------------------------------

/// Pipelined `SHOW` (answered) and `BEGIN` (lost with no reply): only the
/// BEGIN may be sent again. The client must see each reply exactly once:
/// SHOW's rows, then BEGIN's CommandComplete, nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_request_is_never_sent_again() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let lens = reply_lens(&rig.pg, &["SHOW search_path"]).await?;
        let mut raw = raw_app(&rig).await?;
        rig.relay
            .cut_open_after(Direction::ToClient, lens[0])
            .await?;
        let mut both = BytesMut::new();
        ext::query("SHOW search_path", &mut both)?;
        ext::query("BEGIN", &mut both)?;
        raw.send(&both).await?;
        let first = raw.read_until_ready(STEP).await.context("SHOW's reply")?;
        ensure!(tags(&first) == "TDCZ", "SHOW answered {}", tags(&first));
        let second = raw.read_until_ready(STEP).await.context("BEGIN's reply")?;
        ensure!(
            tags(&second) == "CZ" && ready_status(&second) == Some('T'),
            "BEGIN answered {} (error {:?}: {}) — an answered request was sent again?",
            tags(&second),
            sqlstate_of(&second),
            message_of(&second)
        );
        if let Some(extra) = extra_message(&mut raw, Duration::from_secs(1)).await {
            bail!(
                "an extra message {:?} after both replies",
                char::from(extra.tag)
            );
        }
        raw.send_query("ROLLBACK").await?;
        raw.read_until_ready(STEP).await?;
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// `BEGIN`, then pipelined `COMMIT` (answered) and `INSERT` (no reply): the
/// INSERT ran in autocommit after the COMMIT, so it may have run: 40003,
/// not "transaction rolled back".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commit_then_lost_insert_is_40003() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute("CREATE TABLE commit_t (x int); GRANT ALL ON commit_t TO app"))
            .await??;
        let lens = reply_lens(&rig.pg, &["BEGIN", "COMMIT"]).await?;
        let mut raw = raw_app(&rig).await?;
        raw.send_query("BEGIN").await?;
        raw.read_until_ready(STEP).await?;
        rig.relay
            .cut_open_after(Direction::ToClient, lens[1])
            .await?;
        let mut both = BytesMut::new();
        ext::query("COMMIT", &mut both)?;
        ext::query("INSERT INTO commit_t VALUES (1)", &mut both)?;
        raw.send(&both).await?;
        let commit = raw.read_until_ready(STEP).await.context("COMMIT's reply")?;
        ensure!(tags(&commit) == "CZ", "COMMIT answered {}", tags(&commit));
        let insert = raw.read_until_ready(STEP).await.context("INSERT's reply")?;
        ensure!(
            sqlstate_of(&insert).as_deref() == Some("40003"),
            "lost autocommit INSERT after an answered COMMIT: {} (error {:?}: {})",
            tags(&insert),
            sqlstate_of(&insert),
            message_of(&insert)
        );
        ensure!(ready_status(&insert) == Some('I'));
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// A lost `PREPARE TRANSACTION` may have prepared the transaction (it then
/// holds its locks until someone commits or rolls it back): 08007, never
/// "rolled back".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_prepare_transaction_is_08007() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute("CREATE TABLE prep_t (x int); GRANT ALL ON prep_t TO app"))
            .await??;
        let mut raw = raw_app(&rig).await?;
        for sql in ["BEGIN", "INSERT INTO prep_t VALUES (1)"] {
            raw.send_query(sql).await?;
            let reply = raw.read_until_ready(STEP).await?;
            ensure!(
                sqlstate_of(&reply).is_none(),
                "{sql}: {}",
                message_of(&reply)
            );
        }
        rig.relay.cut_open_after(Direction::ToClient, 0).await?;
        raw.send_query("PREPARE TRANSACTION 'suture_t1'").await?;
        let reply = raw.read_until_ready(STEP).await?;
        ensure!(
            sqlstate_of(&reply).as_deref() == Some("08007"),
            "lost PREPARE TRANSACTION: {} (error {:?}: {})",
            tags(&reply),
            sqlstate_of(&reply),
            message_of(&reply)
        );
        let prepared: i64 = within(su.query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'suture_t1'",
            &[],
        ))
        .await??
        .get(0);
        if prepared > 0 {
            within(su.batch_execute("ROLLBACK PREPARED 'suture_t1'")).await??;
        }
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// A COPY whose backend is lost while a large CopyData message is half
/// through: the rest of that message is payload, never messages. Here the
/// payload after the loss looks exactly like Query messages inserting into
/// `marker`; none of them may run, and the session must stay in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_payload_is_never_read_as_messages_after_a_loss() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute(
            "CREATE TABLE copy_t (x text); CREATE TABLE marker (x int); \
             GRANT ALL ON copy_t, marker TO app",
        ))
        .await??;
        let mut raw = raw_app(&rig).await?;
        raw.send_query("COPY copy_t FROM STDIN").await?;
        raw.read_until(b'G', STEP).await?;
        const TOTAL: usize = 1024 * 1024;
        const FIRST: usize = 256 * 1024;
        let mut header = BytesMut::new();
        header.extend_from_slice(b"d");
        header.extend_from_slice(&i32::try_from(4 + TOTAL)?.to_be_bytes());
        raw.send(&header).await?;
        raw.send(&vec![b'a'; FIRST]).await?;
        tokio::time::sleep(SETTLE).await;
        rig.relay.rst_all().await?;
        let reply = raw
            .read_until_ready(STEP)
            .await
            .context("reply to the lost COPY")?;
        ensure!(
            sqlstate_of(&reply).is_some(),
            "lost COPY answered {} without an error",
            tags(&reply)
        );
        // The rest of the CopyData message: fake Query messages, then padding.
        let mut rest = BytesMut::new();
        while rest.len() < 64 * 1024 {
            ext::query("INSERT INTO marker VALUES (1)", &mut rest)?;
        }
        rest.resize(TOTAL - FIRST, b'\n');
        raw.send(&rest).await?;
        let mut done = BytesMut::new();
        done.extend_from_slice(b"c\0\0\0\x04");
        ext::query("SELECT 5::int4", &mut done)?;
        raw.send(&done).await?;
        let next = raw
            .read_until_ready(STEP)
            .await
            .context("query after the COPY")?;
        ensure!(
            first_value(&next).as_deref() == Some("5"),
            "query after the lost COPY answered {} ({:?}: {})",
            tags(&next),
            sqlstate_of(&next),
            message_of(&next)
        );
        let marked: i64 = within(su.query_one("SELECT count(*) FROM marker", &[]))
            .await??
            .get(0);
        ensure!(marked == 0, "COPY payload ran as {marked} queries");
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// Suture is part way through writing a large result to a client that
/// reads slowly when the backend dies (noticed on the next write to it).
/// Whatever was started must be completed before Suture writes anything of
/// its own: the client's stream frames cleanly, each request gets one
/// reply, and the session carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_cut_mid_write_is_completed_before_any_error() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let mut raw = raw_app(&rig).await?;
        raw.send_query("SELECT repeat('x', 1000) FROM generate_series(1, 20000)")
            .await?;
        // Not reading: Suture's write to this client blocks.
        tokio::time::sleep(Duration::from_secs(1)).await;
        rig.relay.rst_all().await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        raw.send_query("SELECT 2::int4").await?;
        let first = raw
            .read_until_ready(Duration::from_secs(20))
            .await
            .context("reading the big result: the stream must frame cleanly")?;
        let complete = first.iter().any(|m| m.tag == b'C');
        let code = sqlstate_of(&first);
        ensure!(
            complete || code.as_deref() == Some("40003"),
            "big result ended with {:?} after {} messages",
            code,
            first.len()
        );
        let second = raw
            .read_until_ready(STEP)
            .await
            .context("the pipelined second query")?;
        ensure!(
            first_value(&second).as_deref() == Some("2"),
            "second query answered {} ({:?}: {})",
            tags(&second),
            sqlstate_of(&second),
            message_of(&second)
        );
        raw.send_query("SELECT 3::int4").await?;
        let third = raw.read_until_ready(STEP).await?;
        ensure!(
            first_value(&third).as_deref() == Some("3"),
            "{}",
            tags(&third)
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// Every fresh backend dies while the session's state is restored on it:
/// that is a backend Suture cannot get (57P03 once the failover hold is
/// over), not a session whose state cannot be rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_backends_that_keep_dying_are_unavailable_not_tainted() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1"), ("failover_hold", "\"2s\"")]).await?;
    let result = async {
        let warm = rig.connect_app().await?;
        ensure!(select_int(&warm.client, "SELECT 1::int4").await? == 1);
        drop(warm);
        // The warm spare has sent nothing but its login and discovery.
        let deadline = Instant::now() + STEP;
        while rig.relay.flow_count() < 2 {
            ensure!(Instant::now() < deadline, "no warm spare appeared");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(SETTLE).await;
        let login_bytes = (0..rig.relay.accepted_count())
            .map(|i| rig.relay.forwarded(i, Direction::ToServer))
            .filter(|&n| n > 0)
            .min()
            .context("no flow forwarded anything")?;
        let c = rig.connect_app().await?;
        within(c.client.batch_execute("SET search_path = public")).await??;
        // New backends die on the first byte after their login.
        rig.relay.cut_after(Direction::ToServer, login_bytes + 1);
        rig.relay.rst_all().await?;
        tokio::time::sleep(SETTLE).await;
        let started = Instant::now();
        let err = match within(c.client.query_one("SELECT 2::int4", &[])).await? {
            Ok(_) => bail!("served although every new backend dies"),
            Err(err) => err,
        };
        ensure!(
            sqlstate(&err) == Some("57P03"),
            "expected 57P03 after {:?}, got {}",
            started.elapsed(),
            describe(&err)
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// A Parse that waits for a lock is not a dead backend: it must not be
/// given up (and its backend replaced) while the lock is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_waiting_for_a_lock_is_not_a_stall() -> anyhow::Result<()> {
    let rig = Rig::start(&[
        ("min_idle", "0"),
        ("health_check_after", "\"1s\""),
        ("health_check_timeout", "\"500ms\""),
    ])
    .await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute("CREATE TABLE lock_t (x int); GRANT ALL ON lock_t TO app"))
            .await??;
        let c = rig.connect_app().await?;
        let before = select_int(&c.client, "SELECT pg_backend_pid()").await?;
        let locker = rig.superuser().await?;
        within(locker.batch_execute("BEGIN; LOCK TABLE lock_t IN ACCESS EXCLUSIVE MODE")).await??;
        let release = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            within(locker.batch_execute("COMMIT")).await
        };
        let (prepared, released) =
            tokio::join!(within(c.client.prepare("SELECT x FROM lock_t")), release);
        released??;
        prepared?.map_err(|e| anyhow::anyhow!("prepare: {}", describe(&e)))?;
        let after = select_int(&c.client, "SELECT pg_backend_pid()").await?;
        ensure!(
            before == after,
            "the backend waiting for a lock was replaced ({before} -> {after})"
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// A query that is not valid UTF-8 (the client's encoding is LATIN1) is an
/// ordinary query: it does not make the session's state unrestorable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_query_does_not_taint_the_session() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let mut raw = RawClient::connect(rig.suture.port()).await?;
        raw.login_with("app", "app-secret", "app", &[("client_encoding", "LATIN1")])
            .await?;
        let mut latin1 = BytesMut::new();
        ext::query_bytes(b"SELECT 'caf\xe9'", &mut latin1);
        raw.send(&latin1).await?;
        let reply = raw.read_until_ready(STEP).await?;
        ensure!(sqlstate_of(&reply).is_none(), "{}", message_of(&reply));
        raw.send_query("SET search_path = public").await?;
        raw.read_until_ready(STEP).await?;
        let su = rig.superuser().await?;
        ensure!(terminate_app_backends(&su).await? == 1);
        tokio::time::sleep(SETTLE).await;
        raw.send_query("SHOW search_path").await?;
        let shown = raw.read_until_ready(STEP).await?;
        ensure!(
            first_value(&shown).as_deref() == Some("public"),
            "after a heal: {} ({:?}: {})",
            tags(&shown),
            sqlstate_of(&shown),
            message_of(&shown)
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// What a client is told when no backend can be reached names the pool, not
/// the backend's host name or address (those go to Suture's log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_name_the_pool_not_the_backend() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    for server in ["127.0.0.1:CLOSED", "suture-no-such-host.invalid:5432"] {
        let closed = free_port();
        let server = server.replace("CLOSED", &closed.to_string());
        let cfg = config_via(
            &pg,
            pg.port(),
            &[("failover_hold", "\"0s\""), ("min_idle", "0")],
        )?
        .replace(
            &format!("servers = [\"127.0.0.1:{}\"]", pg.port()),
            &format!("servers = [\"{server}\"]"),
        );
        let suture = SutureProc::start(&cfg).await?;
        let dsn = support::dsn_for(suture.port(), "app", "app-secret", "app");
        let err = match within(tokio_postgres::connect(&dsn, NoTls)).await? {
            Ok(_) => bail!("{server}: connected to nothing"),
            Err(err) => err,
        };
        let message = err
            .as_db_error()
            .map(|db| db.message().to_owned())
            .with_context(|| format!("{server}: no ErrorResponse: {err}"))?;
        let host = server.rsplit_once(':').map_or(&*server, |(h, _)| h);
        ensure!(
            !message.contains(host) && !message.contains(&closed.to_string()),
            "the client was told the backend address: {message:?}"
        );
        ensure!(
            message.contains("\"app\""),
            "the client was not told the pool: {message:?}"
        );
        ensure!(
            suture.log_contents().contains(host),
            "the log should name the backend {host}"
        );
    }
    Ok(())
}
