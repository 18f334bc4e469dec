//! Issue 4: the field reports of DESIGN §1 (F1–F5), one test per row of the
//! §3 error table, a server's idle-in-transaction timeout, and server
//! restarts, each against a real PostgreSQL through the fault relay.
//!
//! Every test checks what a client of Suture sees (rows, the exact SQLSTATE,
//! what it can do next) and, where it is cheap, what a plain tokio-postgres
//! connection to PostgreSQL sees under the same fault (through a second relay
//! or straight to the server). Each test prints one line
//! `FIELD <test>: direct=<what> suture=<what>`; run with `--no-capture` to
//! collect them.

mod support;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use support::rig::{
    config_via, connect_watched, describe, finish, pg_with_app_setting, select_int, sqlstate,
    try_connect_watched, within, Rig, Watched,
};
use support::{dsn_for, free_port, PgServer, SutureProc};
use tokio_postgres::{Client, NoTls};

/// How long a direct connection is given before its step is called a hang.
const DIRECT_PATIENCE: Duration = Duration::from_secs(5);
/// Time given to Suture to notice a fault on an idle connection.
const SETTLE: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------
// Harness (the rig itself is in support::rig)
// ---------------------------------------------------------------------------

/// Short form of a result for the FIELD lines.
fn show<T>(result: &Result<T, tokio_postgres::Error>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(err) => match err.as_db_error() {
            Some(db) => format!("{} {}", db.severity(), db.code().code()),
            None => describe(err),
        },
    }
}

/// Runs a direct-connection step, calling it a hang after [`DIRECT_PATIENCE`].
async fn direct_step<T, F>(fut: F) -> String
where
    F: Future<Output = Result<T, tokio_postgres::Error>>,
{
    let started = Instant::now();
    match tokio::time::timeout(DIRECT_PATIENCE, fut).await {
        Err(_) => format!("hangs (no answer in {}s)", DIRECT_PATIENCE.as_secs()),
        Ok(result) => format!("{} after {:.1}s", show(&result), secs(started)),
    }
}

/// A direct session's next query, with how its connection ended if it did.
async fn direct_next_query(w: &Watched, sql: &str) -> String {
    let first = direct_step(w.client.batch_execute(sql)).await;
    if w.client.is_closed() {
        format!("{first} [connection: {}]", w.connection_end())
    } else {
        first
    }
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// The one line per test the report table is built from.
fn field(test: &str, direct: &str, suture: &str) {
    println!("FIELD {test}: direct={direct} suture={suture}");
}

/// Waits until the client's connection is closed.
async fn wait_closed(client: &Client, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !client.is_closed() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Expects `result` to be an ErrorResponse with `code`; returns the error.
fn expect_code<T>(
    result: Result<T, tokio_postgres::Error>,
    code: &str,
    what: &str,
) -> anyhow::Result<tokio_postgres::Error> {
    match result {
        Ok(_) => bail!("{what}: succeeded, expected SQLSTATE {code}"),
        Err(err) => {
            ensure!(
                sqlstate(&err) == Some(code),
                "{what}: expected SQLSTATE {code}, got {}",
                describe(&err)
            );
            Ok(err)
        }
    }
}

// ---------------------------------------------------------------------------
// F1: a managed database RSTs every idle pooled socket
// ---------------------------------------------------------------------------

/// Four clients at once leave four pooled backends behind; the relay resets
/// every one of them; four new clients at once must all be served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f1_rst_of_every_idle_pooled_socket_is_not_seen_by_new_clients() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let mut first = Vec::new();
        for _ in 0..4 {
            first.push(rig.connect_app().await?);
        }
        let runs = first
            .iter()
            .map(|c| select_int(&c.client, "SELECT pg_backend_pid()"));
        for pid in futures_util::future::join_all(runs).await {
            pid?;
        }
        drop(first);
        tokio::time::sleep(SETTLE).await;
        let pooled = rig.relay.flow_count();
        ensure!(
            pooled >= 4,
            "only {pooled} pooled backend flows, expected 4"
        );

        let (drelay, d) = rig.direct_via_relay().await?;
        ensure!(select_int(&d.client, "SELECT 1::int4").await? == 1);

        rig.relay.rst_all().await?;
        drelay.rst_all().await?;
        tokio::time::sleep(SETTLE).await;
        let direct = direct_next_query(&d, "SELECT 1").await;

        let started = Instant::now();
        let mut second = Vec::new();
        for _ in 0..4 {
            second.push(rig.connect_app().await?);
        }
        let runs = second
            .iter()
            .map(|c| select_int(&c.client, "SELECT 1::int4"));
        for (i, got) in futures_util::future::join_all(runs)
            .await
            .into_iter()
            .enumerate()
        {
            let got = got.with_context(|| {
                format!(
                    "new client {i} after RST of {pooled} pooled backends; connection {}",
                    second[i].connection_end()
                )
            })?;
            ensure!(got == 1);
        }
        field(
            "f1_rst_all_idle_pooled",
            &direct,
            &format!(
                "4/4 new clients ok in {:.1}s ({pooled} pooled flows reset)",
                secs(started)
            ),
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

// ---------------------------------------------------------------------------
// F2: the server's idle timeout is shorter than the client's idle time
// ---------------------------------------------------------------------------

/// idle_session_timeout = 1 s for `app`; a session idles 2.5 s and queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_idle_session_timeout_shorter_than_session_idle() -> anyhow::Result<()> {
    let pg = pg_with_app_setting("idle_session_timeout = '1s'").await?;
    let rig = Rig::start_on(pg, &[("min_idle", "1")]).await?;
    let result = async {
        let c = rig.connect_app().await?;
        let d = rig.direct().await?;
        ensure!(select_int(&c.client, "SELECT 1::int4").await? == 1);
        ensure!(select_int(&d.client, "SELECT 1::int4").await? == 1);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let direct = direct_next_query(&d, "SELECT 2").await;
        let two = select_int(&c.client, "SELECT 2::int4")
            .await
            .with_context(|| format!("through Suture; connection {}", c.connection_end()))?;
        ensure!(two == 2);
        field("f2_idle_session_timeout_session", &direct, "ok (healed)");
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// idle_session_timeout = 1 s for `app`; pooled backends sit 2.5 s, then
/// a new client must be served without error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_idle_session_timeout_shorter_than_pool_idle() -> anyhow::Result<()> {
    let pg = pg_with_app_setting("idle_session_timeout = '1s'").await?;
    let rig = Rig::start_on(pg, &[("min_idle", "2")]).await?;
    let result = async {
        let a = rig.connect_app().await?;
        ensure!(select_int(&a.client, "SELECT 1::int4").await? == 1);
        drop(a);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let started = Instant::now();
        let b = rig.connect_app().await?;
        let got = select_int(&b.client, "SELECT 2::int4")
            .await
            .with_context(|| format!("new client; connection {}", b.connection_end()))?;
        ensure!(got == 2);
        ensure!(
            started.elapsed() < Duration::from_secs(2),
            "new client took {:?}",
            started.elapsed()
        );
        field(
            "f2_idle_session_timeout_pool",
            "(a pooled direct connection is the session case: see above)",
            &format!("new client ok in {:.2}s", secs(started)),
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

// ---------------------------------------------------------------------------
// F3: writes to a peer that stopped reading; connections past a maximum age
// ---------------------------------------------------------------------------

/// 32 MiB parameter: more than the loopback socket buffers can absorb.
const BIG: usize = 32 << 20;

/// The backend stops reading; a query with a 32 MiB parameter must fail
/// within about `backend_write_timeout` (1 s), not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_write_to_peer_that_stopped_reading_is_bounded() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1"), ("backend_write_timeout", "\"1s\"")]).await?;
    let result = async {
        let sql = "SELECT length($1::text)::int4";
        let big = "x".repeat(BIG);

        let (drelay, d) = rig.direct_via_relay().await?;
        let dstmt = within(d.client.prepare(sql)).await??;
        drelay.stop_reading_all().await?;
        let direct = direct_step(d.client.query_one(&dstmt, &[&big])).await;
        drelay.resume_all().await?;

        let c = rig.connect_app().await?;
        // Prepared first: with the relay not reading, the Parse round trip
        // itself would never get an answer.
        let stmt = within(c.client.prepare(sql)).await??;
        rig.relay.stop_reading_all().await?;
        let started = Instant::now();
        let outcome = within(c.client.query_one(&stmt, &[&big])).await;
        let took = secs(started);
        let outcome = outcome.with_context(|| {
            format!(
                "a write to a backend that stopped reading hung ({} open flows)",
                rig.relay.flow_count()
            )
        })?;
        let err = match outcome {
            Ok(row) => bail!(
                "query succeeded ({}) although the backend stopped reading",
                row.get::<_, i32>(0)
            ),
            Err(err) => err,
        };
        let code = sqlstate(&err).map(str::to_owned);
        ensure!(
            matches!(code.as_deref(), Some("40003" | "08006")),
            "expected 40003 or 08006, got {} after {took:.1}s",
            describe(&err)
        );
        rig.relay.resume_all().await?;
        let next = if code.as_deref() == Some("40003") {
            // §3: the session continues on a new backend.
            match select_int(&c.client, "SELECT 1::int4").await {
                Ok(1) => Ok("same client: SELECT 1 ok".to_string()),
                Ok(other) => Err(anyhow::anyhow!("SELECT 1 returned {other}")),
                Err(err) => Err(err.context(format!(
                    "same client after 40003; connection {}",
                    c.connection_end()
                ))),
            }
        } else {
            Ok("client closed".to_string())
        };
        let fresh = rig.connect_app().await?;
        ensure!(select_int(&fresh.client, "SELECT 3::int4").await? == 3);
        field(
            "f3_backend_stopped_reading",
            &direct,
            &format!(
                "{} after {took:.1}s; {}; new client ok",
                show(&Err::<(), _>(err)),
                match &next {
                    Ok(n) => n.clone(),
                    Err(e) => format!("same client: {}", e.root_cause()),
                }
            ),
        );
        next?;
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// max_lifetime = 2 s: a session that idles 4 s is moved to a new backend
/// without noticing (an intermediate proxy's maximum age never reaches it).
/// The direct column: a connection the proxy closes at its maximum age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_connection_past_max_lifetime_is_rotated() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1"), ("max_lifetime", "\"2s\"")]).await?;
    let result = async {
        let (drelay, d) = rig.direct_via_relay().await?;
        ensure!(select_int(&d.client, "SELECT 1::int4").await? == 1);

        let c = rig.connect_app().await?;
        let before = select_int(&c.client, "SELECT pg_backend_pid()").await?;
        tokio::time::sleep(Duration::from_secs(4)).await;
        // The proxy in the direct path closes connections at its maximum age.
        drelay.fin_all().await?;
        tokio::time::sleep(SETTLE).await;
        let direct = direct_next_query(&d, "SELECT 1").await;

        let one = select_int(&c.client, "SELECT 1::int4")
            .await
            .with_context(|| format!("after 4 s idle; connection {}", c.connection_end()))?;
        ensure!(one == 1);
        let after = select_int(&c.client, "SELECT pg_backend_pid()").await?;
        let su = rig.superuser().await?;
        let row = within(su.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&before],
        ))
        .await??;
        let old_alive: i64 = row.get(0);
        ensure!(
            after != before && old_alive == 0,
            "backend not rotated past max_lifetime: pid before {before}, after {after}, \
             old backend still connected: {}",
            old_alive > 0
        );
        field(
            "f3_past_max_lifetime",
            &format!("{direct} (proxy closed the aged connection)"),
            "ok, backend rotated while idle",
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

// ---------------------------------------------------------------------------
// F4: black-holed flows
// ---------------------------------------------------------------------------

/// A session's backend flow is black-holed while the client is idle: no FIN,
/// no RST, nothing. The next query must be healed or fail with a §3
/// SQLSTATE within a bounded time, never hang.
///
/// Note: the relay is a user-space process, so its kernel still ACKs what
/// Suture sends and answers keepalive probes; `tcp_user_timeout` and
/// `keepalive_idle` can only act once buffers fill. Whatever bounds the wait
/// here is Suture's own machinery (liveness checks or a deadline).
/// (The black-holed *pooled* connection is covered by
/// `blackholed_pooled_connection_is_found_by_the_health_check` in
/// tests/pg_pool_liveness.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_black_holed_session_backend_is_detected() -> anyhow::Result<()> {
    let rig = Rig::start(&[
        ("min_idle", "1"),
        ("tcp_user_timeout", "\"2s\""),
        ("keepalive_idle", "\"1s\""),
        ("health_check_after", "\"1s\""),
        ("health_check_timeout", "\"500ms\""),
    ])
    .await?;
    let result = async {
        let (drelay, d) = rig.direct_via_relay().await?;
        ensure!(select_int(&d.client, "SELECT 1::int4").await? == 1);
        let c = rig.connect_app().await?;
        ensure!(select_int(&c.client, "SELECT 1::int4").await? == 1);

        rig.relay.blackhole_all().await?;
        drelay.blackhole_all().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;

        let (direct, outcome) =
            tokio::join!(direct_step(d.client.batch_execute("SELECT 1")), async {
                let started = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(12),
                    c.client.query_one("SELECT 2::int4", &[]),
                )
                .await;
                (r, started.elapsed())
            });
        let (outcome, took) = outcome;
        let suture = match outcome {
            Err(_) => {
                field(
                    "f4_blackholed_session_backend",
                    &direct,
                    "hangs (no answer in 12s)",
                );
                bail!(
                    "query on a black-holed session backend got no answer in 12 s \
                     (connection {})",
                    c.connection_end()
                )
            }
            Ok(Ok(row)) => {
                ensure!(row.get::<_, i32>(0) == 2);
                format!("ok (healed) after {:.1}s", took.as_secs_f64())
            }
            Ok(Err(err)) => {
                ensure!(
                    matches!(sqlstate(&err), Some("40003" | "08006" | "57P03")),
                    "expected a §3 SQLSTATE, got {} after {took:?}",
                    describe(&err)
                );
                format!(
                    "{} after {:.1}s",
                    show(&Err::<(), _>(err)),
                    took.as_secs_f64()
                )
            }
        };
        ensure!(
            took < Duration::from_secs(10),
            "answer took {took:?}, expected under 10 s"
        );
        field("f4_blackholed_session_backend", &direct, &suture);
        Ok(())
    }
    .await;
    rig.finish(result)
}

// ---------------------------------------------------------------------------
// F5: a server name that does not resolve
// ---------------------------------------------------------------------------

/// Pool `bad` points at a name that does not resolve; its logins get 57P03
/// within about the 2 s hold, while pool `app` in the same process keeps
/// serving without a stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f5_unresolvable_server_name_fails_within_the_hold() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let bad_port = free_port();
    let good = config_via(&pg, pg.port(), &[("min_idle", "1")])?;
    let bad = format!(
        r#"[pools.bad]
protocol = "postgres"
listen = "127.0.0.1:{bad_port}"
servers = ["does-not-exist.invalid:5432"]
tls = "disable"
dns_timeout = "1s"
failover_hold = "2s"

[pools.bad.users.app]
password = "app-secret"

"#
    );
    // The bad pool goes first, so SutureProc waits for its listener.
    let (head, pools) = good
        .split_once("[pools.app]")
        .context("config has no [pools.app]")?;
    let cfg = format!("{head}{bad}[pools.app]{pools}");
    let suture = SutureProc::start(&cfg).await?;
    let good_port = {
        let line = pools
            .lines()
            .find(|l| l.starts_with("listen = "))
            .context("no listen line")?;
        line.trim_end_matches('"')
            .rsplit(':')
            .next()
            .context("no port")?
            .parse::<u16>()?
    };
    let result = async {
        let good_client = connect_watched(&dsn_for(good_port, "app", "app-secret", "app")).await?;
        ensure!(select_int(&good_client.client, "SELECT 1::int4").await? == 1);

        let direct = direct_step(async {
            let (client, conn) = tokio_postgres::connect(
                "host=does-not-exist.invalid port=5432 user=app password=x dbname=app \
                 connect_timeout=5",
                NoTls,
            )
            .await?;
            drop(conn);
            Ok::<Client, tokio_postgres::Error>(client)
        })
        .await;

        let bad_login = async {
            let started = Instant::now();
            let login = try_connect_watched(&dsn_for(bad_port, "app", "app-secret", "app")).await?;
            Ok::<_, anyhow::Error>((login.map(|w| w.client), started.elapsed()))
        };
        // Meanwhile the good pool serves, each query quickly.
        let good_traffic = async {
            let started = Instant::now();
            let mut slowest = Duration::ZERO;
            let mut n = 0;
            while started.elapsed() < Duration::from_secs(3) {
                let t = Instant::now();
                ensure!(select_int(&good_client.client, "SELECT 1::int4").await? == 1);
                let fresh =
                    connect_watched(&dsn_for(good_port, "app", "app-secret", "app")).await?;
                ensure!(select_int(&fresh.client, "SELECT 2::int4").await? == 2);
                slowest = slowest.max(t.elapsed());
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, anyhow::Error>((n, slowest))
        };
        let (bad_login, good_traffic) = tokio::join!(bad_login, good_traffic);
        let (login, took) = bad_login?;
        let (rounds, slowest) = good_traffic?;
        let err = expect_code(login, "57P03", "login to the unresolvable pool")?;
        ensure!(
            took < Duration::from_secs(5),
            "57P03 after {took:?}, expected within about the 2 s hold"
        );
        // A round is a query plus a fresh SCRAM login: well under a second, but a loaded
        // 2-core machine can stretch it. What this guards against is the good pool waiting on
        // the bad pool's hold or DNS timeout, which would take 2 s or more.
        ensure!(
            slowest < Duration::from_secs(2),
            "the good pool stalled: slowest round {slowest:?}"
        );
        field(
            "f5_unresolvable_server",
            &direct,
            &format!(
                "{} after {:.1}s; other pool: {rounds} rounds, slowest {:.0}ms",
                show(&Err::<(), _>(err)),
                took.as_secs_f64(),
                slowest.as_secs_f64() * 1000.0
            ),
        );
        Ok(())
    }
    .await;
    finish(&suture, result)
}

// ---------------------------------------------------------------------------
// DESIGN §3, one test per row
// ---------------------------------------------------------------------------

/// Row 1: the backend dies while `SELECT pg_sleep(2)` runs outside a
/// transaction: 40003, and the same client carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_statement_may_have_run_gives_40003_and_session_continues() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let (drelay, d) = rig.direct_via_relay().await?;
        ensure!(select_int(&d.client, "SELECT 1::int4").await? == 1);
        let c = rig.connect_app().await?;
        ensure!(select_int(&c.client, "SELECT 1::int4").await? == 1);

        let cut = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rig.relay.rst_all().await?;
            drelay.rst_all().await
        };
        let (got, direct, cut) = tokio::join!(
            within(c.client.batch_execute("SELECT pg_sleep(2)")),
            direct_step(d.client.batch_execute("SELECT pg_sleep(2)")),
            cut
        );
        cut?;
        let err = expect_code(got?, "40003", "pg_sleep whose backend was reset")?;
        let severity = err.as_db_error().map(|db| db.severity().to_owned());
        let one = select_int(&c.client, "SELECT 1::int4")
            .await
            .with_context(|| format!("same client after 40003; {}", c.connection_end()))?;
        ensure!(one == 1);
        let d_next = direct_next_query(&d, "SELECT 1").await;
        field(
            "s3_40003_may_have_run",
            &format!("{direct}; next: {d_next}"),
            &format!(
                "{} 40003; next SELECT 1 on the same client ok",
                severity.unwrap_or_default()
            ),
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// Row 2: BEGIN; INSERT; the backend is reset while the client is idle in
/// the transaction. Next statement 08006, then 25P02 until ROLLBACK, then
/// the session carries on and the row does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_transaction_lost_gives_08006_then_25p02_until_rollback() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute("CREATE TABLE t (x int); GRANT ALL ON t TO app")).await??;
        let (drelay, d) = rig.direct_via_relay().await?;
        let c = rig.connect_app().await?;
        for w in [&c, &d] {
            within(w.client.batch_execute("BEGIN")).await??;
            within(w.client.batch_execute("INSERT INTO t VALUES (1)")).await??;
        }
        rig.relay.rst_all().await?;
        drelay.rst_all().await?;
        tokio::time::sleep(SETTLE).await;
        let direct = direct_next_query(&d, "INSERT INTO t VALUES (2)").await;

        let first = within(c.client.batch_execute("INSERT INTO t VALUES (2)")).await?;
        let err = expect_code(first, "08006", "statement after the transaction was lost")
            .with_context(|| format!("connection {}", c.connection_end()))?;
        let severity = err
            .as_db_error()
            .map(|db| db.severity().to_owned())
            .unwrap_or_default();
        ensure!(severity == "ERROR", "08006 with severity {severity}");
        let second = within(c.client.batch_execute("SELECT 1")).await?;
        expect_code(second, "25P02", "statement in the aborted transaction")?;
        within(c.client.batch_execute("ROLLBACK"))
            .await?
            .context("ROLLBACK")?;
        ensure!(select_int(&c.client, "SELECT 1::int4").await? == 1);
        let count: i64 = within(su.query_one("SELECT count(*) FROM t", &[]))
            .await??
            .get(0);
        ensure!(count == 0, "{count} rows after the lost transactions");
        field(
            "s3_08006_in_transaction",
            &direct,
            "ERROR 08006; then ERROR 25P02; ROLLBACK ok; SELECT 1 ok; 0 rows",
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// Row 3: COMMIT in flight (a deferred trigger makes it take 1 s) when the
/// backend is reset: 08007, and the session carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_commit_in_flight_gives_08007_and_session_continues() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute(
            "CREATE TABLE t (x int); GRANT ALL ON t TO app;
             CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON t
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();",
        ))
        .await??;
        let (drelay, d) = rig.direct_via_relay().await?;
        let c = rig.connect_app().await?;
        for (w, x) in [(&c, 1), (&d, 2)] {
            within(w.client.batch_execute("BEGIN")).await??;
            within(
                w.client
                    .batch_execute(&format!("INSERT INTO t VALUES ({x})")),
            )
            .await??;
        }
        let cut = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            rig.relay.rst_all().await?;
            drelay.rst_all().await
        };
        let (got, direct, cut) = tokio::join!(
            within(c.client.batch_execute("COMMIT")),
            direct_step(d.client.batch_execute("COMMIT")),
            cut
        );
        cut?;
        let err = expect_code(got?, "08007", "COMMIT whose backend was reset")?;
        let severity = err
            .as_db_error()
            .map(|db| db.severity().to_owned())
            .unwrap_or_default();
        let one = select_int(&c.client, "SELECT 1::int4")
            .await
            .with_context(|| format!("same client after 08007; {}", c.connection_end()))?;
        ensure!(one == 1);
        // The transaction's status after COMMIT is idle: a new one works.
        within(c.client.batch_execute("BEGIN; SELECT 1; COMMIT"))
            .await?
            .context("a new transaction after 08007")?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rows: Vec<i32> = within(su.query("SELECT x FROM t ORDER BY x", &[]))
            .await??
            .iter()
            .map(|r| r.get(0))
            .collect();
        field(
            "s3_08007_commit_in_flight",
            &direct,
            &format!("{severity} 08007; next SELECT 1 ok (rows committed anyway: {rows:?})"),
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// Row 4: a session with a temporary table loses its backend: 08006 naming
/// the lost state, FATAL, and the client connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_tainted_session_gives_08006_fatal_and_is_closed() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let (drelay, d) = rig.direct_via_relay().await?;
        let c = rig.connect_app().await?;
        for w in [&c, &d] {
            within(w.client.batch_execute("CREATE TEMP TABLE scratch (x int)")).await??;
        }
        rig.relay.rst_all().await?;
        drelay.rst_all().await?;
        tokio::time::sleep(SETTLE).await;
        let direct = direct_next_query(&d, "SELECT x FROM scratch").await;
        let got = within(c.client.batch_execute("SELECT x FROM scratch")).await?;
        let err = expect_code(got, "08006", "query after losing a temp table")
            .with_context(|| format!("connection {}", c.connection_end()))?;
        let db = err.as_db_error().context("no ErrorResponse")?;
        ensure!(
            db.severity() == "FATAL",
            "severity {} for unrestorable state",
            db.severity()
        );
        ensure!(
            db.message().to_lowercase().contains("temp"),
            "message does not name the temporary table: {:?}",
            db.message()
        );
        ensure!(
            wait_closed(&c.client, Duration::from_secs(5)).await,
            "client connection still open after FATAL 08006"
        );
        let fresh = rig.connect_app().await?;
        ensure!(select_int(&fresh.client, "SELECT 1::int4").await? == 1);
        field(
            "s3_08006_tainted_session",
            &direct,
            "FATAL 08006 naming the temp table; connection closed; reconnect ok",
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// Row 5: the server is down longer than the 2 s failover hold: a login gets
/// 57P03, and so does an idle session whose backend died (or 08006, which
/// the table also allows); after the server is back both can go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unreachable_gives_57p03_after_the_hold() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1"), ("failover_hold", "\"2s\"")]).await?;
    let result = async {
        let d = rig.direct().await?;
        let c = rig.connect_app().await?;
        ensure!(select_int(&c.client, "SELECT 1::int4").await? == 1);
        ensure!(select_int(&d.client, "SELECT 1::int4").await? == 1);
        rig.pg.stop().await?;

        let d_session = direct_next_query(&d, "SELECT 1").await;
        let d_login = direct_step(async {
            let (client, conn) =
                tokio_postgres::connect(&rig.pg.dsn("app", "app-secret", "app"), NoTls).await?;
            drop(conn);
            Ok::<Client, tokio_postgres::Error>(client)
        })
        .await;

        let login = async {
            let started = Instant::now();
            let login = rig.try_connect_app().await?.map(|w| w.client);
            Ok::<_, anyhow::Error>((login, started.elapsed()))
        };
        let session = async {
            let started = Instant::now();
            let r = within(c.client.batch_execute("SELECT 1")).await?;
            Ok::<_, anyhow::Error>((r, started.elapsed()))
        };
        let (login, session) = tokio::join!(login, session);
        let (login, login_took) = login?;
        let (session, session_took) = session?;
        let login_err = expect_code(login, "57P03", "login while the server is down")?;
        ensure!(
            login_took >= Duration::from_millis(1800) && login_took < Duration::from_secs(5),
            "login refused after {login_took:?}, expected about the 2 s hold"
        );
        let session_err = match session {
            Ok(()) => bail!("query succeeded with the server down"),
            Err(err) => err,
        };
        let session_code = sqlstate(&session_err).map(str::to_owned);
        let session_shows = match session_code.as_deref() {
            Some("57P03" | "08006") => show(&Err::<(), _>(session_err)),
            // The refusal reached the idle client before its query did.
            None if c.client.is_closed()
                && ["57P03", "08006"]
                    .iter()
                    .any(|code| c.connection_end().contains(code)) =>
            {
                format!(
                    "[{}] while idle, then {}",
                    c.connection_end(),
                    describe(&session_err)
                )
            }
            _ => bail!(
                "idle session whose backend died: expected 57P03 (or 08006), got {} \
                 (connection {})",
                describe(&session_err),
                c.connection_end()
            ),
        };
        ensure!(
            session_took < Duration::from_secs(5),
            "session error after {session_took:?}"
        );
        rig.pg.start_again().await?;
        let after = match within(c.client.query_one("SELECT 4::int4", &[])).await? {
            Ok(_) => "same session ok after restart".to_string(),
            Err(err) => {
                ensure!(
                    c.client.is_closed(),
                    "session neither usable nor closed: {}",
                    describe(&err)
                );
                "session closed; reconnect ok".to_string()
            }
        };
        let fresh = rig.connect_app().await?;
        ensure!(select_int(&fresh.client, "SELECT 5::int4").await? == 5);
        field(
            "s3_57p03_unreachable",
            &format!("login: {d_login}; idle session: {d_session}"),
            &format!(
                "login: {} after {:.1}s; idle session: {session_shows} after {:.1}s; {after}",
                show(&Err::<(), _>(login_err)),
                login_took.as_secs_f64(),
                session_took.as_secs_f64()
            ),
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

// ---------------------------------------------------------------------------
// idle_in_transaction_session_timeout
// ---------------------------------------------------------------------------

/// idle_in_transaction_session_timeout = 1 s for `app`; BEGIN, then 2 s
/// idle. The server ends the backend with FATAL 25P03 while the client is
/// idle in its transaction; the transaction is gone either way.
///
/// Accepted (DESIGN §3 row 2): 08006 ERROR, 25P02 until ROLLBACK, then the
/// session carries on — or the server's own FATAL 25P03 passed through
/// (the client connection then closes). The FIELD line records which.
///
/// Observed: Suture passes the server's FATAL 25P03 on to the client as soon
/// as the server sends it (while the client is still idle in its
/// transaction) and closes the client connection, exactly as a direct
/// connection behaves; tokio-postgres reports the 25P03 on the connection
/// and the next statement gets "connection closed". §3 row 2 would instead
/// keep the session (08006, status E until ROLLBACK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_timeout_is_reported_as_a_lost_transaction() -> anyhow::Result<()> {
    let pg = pg_with_app_setting("idle_in_transaction_session_timeout = '1s'").await?;
    let rig = Rig::start_on(pg, &[("min_idle", "1")]).await?;
    let result = async {
        let d = rig.direct().await?;
        let c = rig.connect_app().await?;
        within(c.client.batch_execute("BEGIN")).await??;
        within(d.client.batch_execute("BEGIN")).await??;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let direct = direct_next_query(&d, "SELECT 1").await;

        let first = within(c.client.batch_execute("SELECT 1")).await?;
        let err = match first {
            Ok(()) => bail!("statement ran in a transaction the server had ended"),
            Err(err) => err,
        };
        let suture = match sqlstate(&err) {
            Some("08006") => {
                let second = within(c.client.batch_execute("SELECT 1")).await?;
                expect_code(second, "25P02", "statement in the aborted transaction")?;
                within(c.client.batch_execute("ROLLBACK"))
                    .await?
                    .context("ROLLBACK")?;
                ensure!(select_int(&c.client, "SELECT 1::int4").await? == 1);
                "ERROR 08006; then 25P02; ROLLBACK ok; SELECT 1 ok".to_string()
            }
            Some("25P03") => {
                ensure!(
                    wait_closed(&c.client, Duration::from_secs(5)).await,
                    "connection open after FATAL 25P03"
                );
                "FATAL 25P03 forwarded as the reply; connection closed".to_string()
            }
            // The FATAL reached the client while it was idle (its driver
            // reports it on the connection), then Suture closed the client.
            None if c.client.is_closed() && c.connection_end().contains("25P03") => format!(
                "FATAL 25P03 forwarded while idle, connection closed; next query: {}",
                describe(&err)
            ),
            _ => bail!(
                "expected 08006 or 25P03, got {} (connection {})",
                describe(&err),
                c.connection_end()
            ),
        };
        let fresh = rig.connect_app().await?;
        ensure!(select_int(&fresh.client, "SELECT 1::int4").await? == 1);
        field("idle_in_transaction_timeout", &direct, &suture);
        Ok(())
    }
    .await;
    rig.finish(result)
}

// ---------------------------------------------------------------------------
// Server restarts
// ---------------------------------------------------------------------------

/// Four sessions idle while the server restarts (fast shutdown: each
/// backend gets 57P01 while idle); each session's next query runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_restart_while_sessions_idle_heals_every_session() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let d = rig.direct().await?;
        ensure!(select_int(&d.client, "SELECT 1::int4").await? == 1);
        let mut sessions = Vec::new();
        for _ in 0..4 {
            let c = rig.connect_app().await?;
            within(
                c.client
                    .batch_execute("SET application_name = 'idle-through-restart'"),
            )
            .await??;
            ensure!(select_int(&c.client, "SELECT 1::int4").await? == 1);
            sessions.push(c);
        }
        rig.pg.restart().await?;
        let direct = direct_next_query(&d, "SELECT 1").await;
        let started = Instant::now();
        let runs = sessions.iter().map(|c| async move {
            let row = within(c.client.query_one("SHOW application_name", &[])).await??;
            Ok::<String, anyhow::Error>(row.get(0))
        });
        for (i, got) in futures_util::future::join_all(runs)
            .await
            .into_iter()
            .enumerate()
        {
            let name = got.with_context(|| {
                format!(
                    "session {i} after restart; {}",
                    sessions[i].connection_end()
                )
            })?;
            ensure!(name == "idle-through-restart", "session {i}: {name:?}");
        }
        field(
            "restart_while_idle",
            &direct,
            &format!("4/4 sessions ok (SET kept) in {:.1}s", secs(started)),
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// The server restarts while `SELECT pg_sleep(3)` runs: the client gets
/// 57P01 (passed through) or 40003; then its next query works, or, if the
/// connection was closed, a reconnect works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_query_gives_57p01_or_40003() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let d = rig.direct().await?;
        let c = rig.connect_app().await?;
        ensure!(select_int(&c.client, "SELECT 1::int4").await? == 1);
        ensure!(select_int(&d.client, "SELECT 1::int4").await? == 1);
        let restart = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rig.pg.restart().await
        };
        let (got, direct, restarted) = tokio::join!(
            within(c.client.batch_execute("SELECT pg_sleep(3)")),
            direct_step(d.client.batch_execute("SELECT pg_sleep(3)")),
            restart
        );
        restarted?;
        let err = match got? {
            Ok(()) => bail!("pg_sleep(3) succeeded across a server restart"),
            Err(err) => err,
        };
        ensure!(
            matches!(sqlstate(&err), Some("57P01" | "40003")),
            "expected 57P01 or 40003, got {} (connection {})",
            describe(&err),
            c.connection_end()
        );
        let next = match within(c.client.query_one("SELECT 2::int4", &[])).await? {
            Ok(row) => {
                ensure!(row.get::<_, i32>(0) == 2);
                "next query on the same client ok".to_string()
            }
            Err(next_err) => {
                ensure!(
                    c.client.is_closed(),
                    "client neither usable nor closed: {}",
                    describe(&next_err)
                );
                let fresh = rig.connect_app().await?;
                ensure!(select_int(&fresh.client, "SELECT 3::int4").await? == 3);
                "connection closed; reconnect ok".to_string()
            }
        };
        let d_next = direct_next_query(&d, "SELECT 1").await;
        field(
            "restart_mid_query",
            &format!("{direct}; next: {d_next}"),
            &format!("{}; {next}", show(&Err::<(), _>(err))),
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}
