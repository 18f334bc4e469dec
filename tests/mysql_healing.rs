//! Issue 12: Suture heals broken MySQL-protocol backend connections (DESIGN
//! §3–§5 and their MySQL notes) in front of a real MariaDB: backends killed
//! with `KILL` from an admin connection, server restarts, `wait_timeout`
//! shorter than the client's idle time, relay faults (RST, FIN, black hole,
//! cut), and one test per §3 row with its 2013/2003 error.
//!
//! Where it is cheap a plain `mysql_async` connection suffers the same fault
//! (through a relay of its own, or straight to the server) and must fail, so
//! the test proves something. Each such test prints one line
//! `FIELD <test>: direct=<what> suture=<what>` (`--no-capture` collects them).

mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use mysql_async::prelude::Queryable as _;
use mysql_async::Conn;
use support::mysql_rig::{
    backend_id, create_other_user_and_db, describe, expect_err, kill, kill_all_of, select_i64,
    server_error, show, wait_heal_events_above, MysqlRig, CR_CONN_HOST_ERROR, CR_SERVER_LOST,
    ER_SERVER_SHUTDOWN,
};
use support::rig::within;
use support::MariaDbServer;

/// Time given to Suture to notice a fault on an idle connection.
const SETTLE: Duration = Duration::from_millis(300);
/// How long a direct connection is given before its step is called a hang.
const DIRECT_PATIENCE: Duration = Duration::from_secs(5);

/// The one line per test the report table is built from.
fn field(test: &str, direct: &str, suture: &str) {
    println!("FIELD {test}: direct={direct} suture={suture}");
}

/// A direct connection's next query, as a FIELD cell; a hang is a cell too.
async fn direct_next_query(conn: &mut Conn, sql: &str) -> String {
    let started = Instant::now();
    match tokio::time::timeout(DIRECT_PATIENCE, conn.query_drop(sql)).await {
        Err(_) => format!("hangs (no answer in {}s)", DIRECT_PATIENCE.as_secs()),
        Ok(result) => format!(
            "{} after {:.1}s",
            show(&result),
            started.elapsed().as_secs_f64()
        ),
    }
}

/// The direct control must have failed, or the fault proves nothing.
fn ensure_direct_broke(direct: &str) -> anyhow::Result<()> {
    ensure!(
        !direct.starts_with("ok"),
        "the direct connection survived the fault ({direct}): the test proves nothing"
    );
    Ok(())
}

/// The session's next query after an idle fault: `SELECT 2` must return 2,
/// and Suture must count a heal. Returns the FIELD cell.
async fn expect_healed(
    rig: &MysqlRig,
    conn: &mut Conn,
    heals_before: f64,
) -> anyhow::Result<String> {
    let started = Instant::now();
    let got = select_i64(conn, "SELECT 2")
        .await
        .context("the healed session's next query")?;
    ensure!(got == 2, "SELECT 2 returned {got}");
    let took = started.elapsed().as_secs_f64();
    let heals = wait_heal_events_above(&rig.suture, heals_before, Duration::from_secs(2)).await?;
    ensure!(
        heals > heals_before,
        "the query worked but Suture counted no heal (heals + replays stayed at {heals_before})"
    );
    Ok(format!("ok (healed) after {took:.1}s"))
}

// ---------------------------------------------------------------------------
// An idle session's backend dies: healed
// ---------------------------------------------------------------------------

/// `KILL` of an idle session's backend (MariaDB sends nothing, then FIN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_idle_session_backend_heals() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let mut direct = rig.db.connect_app().await?;
        let direct_id = backend_id(&mut direct).await?;
        let mut conn = rig.connect_app().await?;
        let id = backend_id(&mut conn).await?;
        let before = rig.heal_events().await?;
        kill(&rig.db, id).await?;
        kill(&rig.db, direct_id).await?;
        tokio::time::sleep(SETTLE).await;
        let d = direct_next_query(&mut direct, "SELECT 2").await;
        ensure_direct_broke(&d)?;
        let s = expect_healed(&rig, &mut conn, before).await?;
        let new_id = backend_id(&mut conn).await?;
        ensure!(new_id != id, "still on killed backend {id}");
        field("kill_idle_session_backend", &d, &s);
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// Every backend of `app` killed while the clients are idle, the pool's warm
/// spares included: three sessions and a new client are all served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_every_backend_heals_every_session() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "2")]).await?;
    let result = async {
        let mut sessions = Vec::new();
        for _ in 0..3 {
            let mut conn = rig.connect_app().await?;
            ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
            sessions.push(conn);
        }
        let before = rig.heal_events().await?;
        let killed = kill_all_of(&rig.db, "app").await?;
        ensure!(killed >= 3, "only {killed} backends of app to kill");
        tokio::time::sleep(SETTLE).await;
        for (i, conn) in sessions.iter_mut().enumerate() {
            let got = select_i64(conn, "SELECT 3")
                .await
                .with_context(|| format!("session {i}"))?;
            ensure!(got == 3);
        }
        let mut fresh = rig.connect_app().await?;
        ensure!(select_i64(&mut fresh, "SELECT 4").await? == 4);
        let heals = rig.heal_events().await?;
        ensure!(
            heals >= before + 3.0,
            "heals + replays went from {before} to {heals} for 3 sessions"
        );
        field(
            "kill_every_backend",
            "-",
            &format!("ok ({killed} backends killed, 3 sessions healed)"),
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// The pool sized like the application's (`max_size` 4, four sessions, no
/// spare): every backend is killed and the four sessions, querying at once,
/// all heal on the slots the dead backends held; when one session leaves, a
/// new client gets its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_pool_every_backend_killed_every_session_heals() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "0"), ("max_size", "4")]).await?;
    let result = async {
        let mut sessions = Vec::new();
        for _ in 0..4 {
            let mut conn = rig.connect_app().await?;
            ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
            sessions.push(conn);
        }
        let before = rig.heal_events().await?;
        let killed = kill_all_of(&rig.db, "app").await?;
        ensure!(
            killed == 4,
            "{killed} backends of app killed, the pool holds 4"
        );
        tokio::time::sleep(SETTLE).await;
        let answers = futures_util::future::join_all(
            sessions.iter_mut().map(|conn| select_i64(conn, "SELECT 5")),
        )
        .await;
        for (i, got) in answers.into_iter().enumerate() {
            let got = got.with_context(|| format!("session {i} after the kill"))?;
            ensure!(got == 5, "session {i}: SELECT 5 gave {got}");
        }
        let heals = rig.heal_events().await?;
        ensure!(
            heals >= before + 4.0,
            "heals + replays went from {before} to {heals} for 4 sessions"
        );
        let leaving = sessions.pop().context("four sessions")?;
        within(leaving.disconnect()).await??;
        let mut fresh = rig.connect_app().await?;
        ensure!(select_i64(&mut fresh, "SELECT 6").await? == 6);
        field(
            "full_pool_kill_every_backend",
            "-",
            "ok (4 of 4 backends killed, 4 sessions healed at once)",
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// A clean server restart while sessions are idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_while_idle_heals() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let mut direct = rig.db.connect_app().await?;
        ensure!(select_i64(&mut direct, "SELECT 1").await? == 1);
        let mut conn = rig.connect_app().await?;
        ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
        let before = rig.heal_events().await?;
        rig.db.restart().await?;
        tokio::time::sleep(SETTLE).await;
        let d = direct_next_query(&mut direct, "SELECT 2").await;
        ensure_direct_broke(&d)?;
        let s = expect_healed(&rig, &mut conn, before).await?;
        field("server_restart_idle", &d, &s);
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// A clean server restart while a query runs: the query's outcome is unknown,
/// so the client gets 2013 "may have executed" (or the server's own 1053,
/// when it answered before closing), never a replay; the session then goes on
/// on the restarted server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_query_gives_2013_and_session_continues() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let mut direct = rig.db.connect_app().await?;
        ensure!(select_i64(&mut direct, "SELECT 1").await? == 1);
        let mut conn = rig.connect_app().await?;
        ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
        let restarter = async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            rig.db.restart().await
        };
        let (s, d, restarted) = tokio::join!(
            within(conn.query_drop("SELECT SLEEP(5)")),
            direct_next_query(&mut direct, "SELECT SLEEP(5)"),
            restarter
        );
        restarted?;
        ensure_direct_broke(&d)?;
        let err = match s? {
            Ok(()) => bail!("SELECT SLEEP(5) across a restart answered OK"),
            Err(e) => e,
        };
        let code = server_error(&err).map(|e| e.code);
        ensure!(
            code == Some(CR_SERVER_LOST) && describe(&err).contains("may have executed")
                || code == Some(ER_SERVER_SHUTDOWN),
            "SELECT SLEEP(5) across a restart: {}",
            describe(&err)
        );
        ensure!(
            select_i64(&mut conn, "SELECT 3").await? == 3,
            "the session did not go on after the restart"
        );
        field(
            "server_restart_mid_query",
            &d,
            &format!(
                "ERROR {} ({}), session continues",
                code.unwrap_or(0),
                describe(&err)
            ),
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// The server's `wait_timeout` (2 s) is shorter than the client's idle time
/// (3.5 s): directly the second query fails, through Suture it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_shorter_than_client_idle_heals() -> anyhow::Result<()> {
    let db = MariaDbServer::start().await?;
    db.set_global("wait_timeout = 2").await?;
    // Suture's backends all start after the SET GLOBAL.
    let rig = MysqlRig::start_on(db, &[("min_idle", "0")]).await?;
    let result = async {
        let mut direct = rig.db.connect_app().await?;
        ensure!(select_i64(&mut direct, "SELECT @@wait_timeout").await? == 2);
        let mut conn = rig.connect_app().await?;
        ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
        let before = rig.heal_events().await?;
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let d = direct_next_query(&mut direct, "SELECT 2").await;
        ensure_direct_broke(&d)?;
        let started = Instant::now();
        let got = select_i64(&mut conn, "SELECT 2")
            .await
            .context("through Suture after wait_timeout")?;
        ensure!(got == 2);
        let s = format!("ok after {:.1}s", started.elapsed().as_secs_f64());
        // A backend retired before wait_timeout is no heal; a healed one is.
        // Either way the client saw nothing, which is what this checks.
        let heals = rig.heal_events().await?;
        field(
            "wait_timeout",
            &d,
            &format!("{s} (heals + replays {before} -> {heals})"),
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// How the relay breaks the idle flows.
#[derive(Clone, Copy, Debug)]
enum RelayFault {
    Rst,
    Fin,
}

async fn relay_fault_on_idle_session_heals(fault: RelayFault) -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let (drelay, mut direct) = rig.direct_via_relay().await?;
        ensure!(select_i64(&mut direct, "SELECT 1").await? == 1);
        let mut conn = rig.connect_app().await?;
        ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
        let before = rig.heal_events().await?;
        match fault {
            RelayFault::Rst => {
                rig.relay.rst_all().await?;
                drelay.rst_all().await?;
            }
            RelayFault::Fin => {
                rig.relay.fin_all().await?;
                drelay.fin_all().await?;
            }
        }
        tokio::time::sleep(SETTLE).await;
        let d = direct_next_query(&mut direct, "SELECT 2").await;
        ensure_direct_broke(&d)?;
        let s = expect_healed(&rig, &mut conn, before).await?;
        field(
            &format!("relay_{fault:?}_idle_session").to_lowercase(),
            &d,
            &s,
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_rst_of_idle_session_heals() -> anyhow::Result<()> {
    relay_fault_on_idle_session_heals(RelayFault::Rst).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_fin_of_idle_session_heals() -> anyhow::Result<()> {
    relay_fault_on_idle_session_heals(RelayFault::Fin).await
}

/// F1: every idle pooled socket gets an RST; new clients are all served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_idle_rst_is_not_handed_to_new_clients() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "2")]).await?;
    let result = async {
        let mut first = Vec::new();
        for _ in 0..3 {
            let mut conn = rig.connect_app().await?;
            ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
            first.push(conn);
        }
        for conn in first {
            conn.disconnect().await?;
        }
        tokio::time::sleep(SETTLE).await;
        let open = rig.relay.flow_count();
        rig.relay.rst_all().await?;
        tokio::time::sleep(SETTLE).await;
        for i in 0..3 {
            let mut conn = rig.connect_app().await?;
            let got = select_i64(&mut conn, "SELECT 1")
                .await
                .with_context(|| format!("client {i} after RST of {open} pooled backends"))?;
            ensure!(got == 1);
        }
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// F4: a black-holed session backend is found by keepalive / the health
/// check; the client's next query is healed or told 2013, within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_session_backend_is_detected() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[
        ("min_idle", "1"),
        ("tcp_user_timeout", "\"2s\""),
        ("keepalive_idle", "\"1s\""),
        ("health_check_after", "\"1s\""),
        ("health_check_timeout", "\"500ms\""),
    ])
    .await?;
    let result = async {
        let (drelay, mut direct) = rig.direct_via_relay().await?;
        ensure!(select_i64(&mut direct, "SELECT 1").await? == 1);
        let mut conn = rig.connect_app().await?;
        ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
        rig.relay.blackhole_all().await?;
        drelay.blackhole_all().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (d, outcome) = tokio::join!(direct_next_query(&mut direct, "SELECT 2"), async {
            let started = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(12),
                conn.query_first::<i64, _>("SELECT 2"),
            )
            .await;
            (r, started.elapsed())
        });
        let (outcome, took) = outcome;
        let s = match outcome {
            Err(_) => {
                field("blackholed_session_backend", &d, "hangs (no answer in 12s)");
                bail!("query on a black-holed session backend got no answer in 12 s")
            }
            Ok(Ok(got)) => {
                ensure!(got == Some(2), "SELECT 2 gave {got:?}");
                format!("ok (healed) after {:.1}s", took.as_secs_f64())
            }
            Ok(Err(err)) => {
                expect_err(
                    Err::<(), _>(err),
                    CR_SERVER_LOST,
                    "HY000",
                    &[],
                    "black-holed backend",
                )?;
                format!("ERROR 2013 after {:.1}s", took.as_secs_f64())
            }
        };
        ensure!(
            took < Duration::from_secs(10),
            "answer took {took:?}, expected under 10 s"
        );
        field("blackholed_session_backend", &d, &s);
        Ok(())
    }
    .await;
    rig.finish(result)
}

// ---------------------------------------------------------------------------
// §3 rows: the truth, with MySQL error codes
// ---------------------------------------------------------------------------

/// A backend killed during `SELECT SLEEP(5)`: 2013 "may have executed",
/// and the session goes on on a new backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_query_gives_2013_may_have_executed() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let mut direct = rig.db.connect_app().await?;
        let direct_id = backend_id(&mut direct).await?;
        let mut conn = rig.connect_app().await?;
        let id = backend_id(&mut conn).await?;
        let killer = async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            kill(&rig.db, id).await?;
            kill(&rig.db, direct_id).await
        };
        let (s, d, killed) = tokio::join!(
            within(conn.query_drop("SELECT SLEEP(5)")),
            direct_next_query(&mut direct, "SELECT SLEEP(5)"),
            killer
        );
        killed?;
        ensure_direct_broke(&d)?;
        expect_err(
            s?,
            CR_SERVER_LOST,
            "HY000",
            &[
                "Lost connection to MySQL server during query",
                "may have executed",
            ],
            "SELECT SLEEP(5) whose backend was killed",
        )?;
        ensure!(
            select_i64(&mut conn, "SELECT 3").await? == 3,
            "the session did not go on"
        );
        field(
            "kill_during_query",
            &d,
            "ERROR 2013 (may have executed), session continues",
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// A write whose backend is killed while it runs is never replayed: the
/// client gets 2013, and the row is not there (a silent replay would have
/// inserted it and answered OK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_in_flight_is_not_replayed() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let mut conn = rig.connect_app().await?;
        within(conn.query_drop("CREATE TABLE w (id INT AUTO_INCREMENT PRIMARY KEY, s INT)"))
            .await??;
        let id = backend_id(&mut conn).await?;
        let killer = async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            kill(&rig.db, id).await
        };
        let (outcome, killed) = tokio::join!(
            within(conn.query_drop("INSERT INTO w (s) SELECT SLEEP(3)")),
            killer
        );
        killed?;
        // An autocommit write may have committed: "may have executed" and
        // "commit outcome unknown" are both the truth; a success is not.
        let message = expect_err(
            outcome?,
            CR_SERVER_LOST,
            "HY000",
            &[],
            "INSERT ... SLEEP(3)",
        )?;
        ensure!(
            message.contains("may have executed") || message.contains("outcome is unknown"),
            "2013 for a write in flight names no possible outcome: {message:?}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut admin = rig.admin().await?;
        let rows = select_i64(&mut admin, "SELECT COUNT(*) FROM app.w").await?;
        ensure!(rows == 0, "{rows} row(s) in w: the killed INSERT ran again");
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// A backend killed inside BEGIN … (uncommitted INSERT): the next statement
/// gets 2013 saying the transaction was rolled back, the row is absent, the
/// client's ROLLBACK gets OK and the session works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_inside_transaction_gives_2013_rolled_back() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let mut conn = rig.connect_app().await?;
        within(conn.query_drop("CREATE TABLE tx (id INT PRIMARY KEY)")).await??;
        within(conn.query_drop("BEGIN")).await??;
        within(conn.query_drop("INSERT INTO tx VALUES (1)")).await??;
        let id = backend_id(&mut conn).await?;
        kill(&rig.db, id).await?;
        tokio::time::sleep(SETTLE).await;
        let message = expect_err(
            within(conn.query_drop("INSERT INTO tx VALUES (2)")).await?,
            CR_SERVER_LOST,
            "HY000",
            &["inside a transaction", "the transaction was rolled back"],
            "the next statement of the lost transaction",
        )?;
        let mut admin = rig.admin().await?;
        let rows = select_i64(&mut admin, "SELECT COUNT(*) FROM app.tx").await?;
        ensure!(
            rows == 0,
            "{rows} row(s) of the rolled-back transaction exist"
        );
        within(conn.query_drop("ROLLBACK"))
            .await?
            .map_err(|e| anyhow::anyhow!("ROLLBACK after the loss: {}", describe(&e)))?;
        within(conn.query_drop("INSERT INTO tx VALUES (3)")).await??;
        ensure!(select_i64(&mut conn, "SELECT COUNT(*) FROM tx").await? == 1);
        field(
            "kill_inside_transaction",
            "-",
            &format!("ERROR 2013 ({message}), ROLLBACK ok"),
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// COMMIT in flight and no reply (the relay swallows it, then resets):
/// 2013 saying the commit outcome is unknown, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_in_flight_gives_2013_outcome_unknown() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let mut conn = rig.connect_app().await?;
        within(conn.query_drop("CREATE TABLE c (id INT PRIMARY KEY)")).await??;
        within(conn.query_drop("BEGIN")).await??;
        within(conn.query_drop("INSERT INTO c VALUES (1)")).await??;
        rig.relay.blackhole_all().await?;
        let reset = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rig.relay.rst_all().await
        };
        let (outcome, reset) = tokio::join!(within(conn.query_drop("COMMIT")), reset);
        reset?;
        expect_err(
            outcome?,
            CR_SERVER_LOST,
            "HY000",
            &["during COMMIT", "the commit outcome is unknown"],
            "COMMIT with no reply",
        )?;
        ensure!(
            select_i64(&mut conn, "SELECT 5").await? == 5,
            "the session did not go on"
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// A reply cut short (the relay resets after part of a result reached
/// Suture): 2013, never a spliced result, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_cut_midway_gives_2013_and_session_continues() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let (drelay, mut direct) = rig.direct_via_relay().await?;
        let mut conn = rig.connect_app().await?;
        ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
        rig.relay.cut_open_after(support::fault_relay::Direction::ToClient, 4000).await?;
        drelay.cut_open_after(support::fault_relay::Direction::ToClient, 4000).await?;
        let sql = "SELECT REPEAT('x', 100) FROM information_schema.columns a, information_schema.columns b LIMIT 5000";
        let d = direct_next_query(&mut direct, sql).await;
        ensure_direct_broke(&d)?;
        let cut = within(conn.query::<String, _>(sql)).await?;
        expect_err(cut, CR_SERVER_LOST, "HY000", &["Lost connection"], "a result cut midway")?;
        ensure!(select_i64(&mut conn, "SELECT 6").await? == 6, "the session did not go on");
        field("result_cut_midway", &d, "ERROR 2013, session continues");
        Ok(())
    }
    .await;
    rig.finish(result)
}

// ---------------------------------------------------------------------------
// Session state across a heal
// ---------------------------------------------------------------------------

/// SET SESSION sql_mode / time_zone / NAMES, USE otherdb and a prepared
/// statement; the backend is killed; all of it is still in force and the
/// statement still executes under its client-visible id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_and_prepared_statements_survive_a_heal() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "1")]).await?;
    let result = async {
        create_other_user_and_db(&rig.db).await?;
        let mut conn = rig.connect_app().await?;
        within(conn.query_drop("SET SESSION sql_mode = 'ANSI_QUOTES,NO_ZERO_DATE'")).await??;
        within(conn.query_drop("SET SESSION time_zone = '+03:00'")).await??;
        within(conn.query_drop("SET NAMES latin1")).await??;
        within(conn.query_drop("USE otherdb")).await??;
        within(conn.query_drop("CREATE TABLE here (a INT)")).await??;
        let plus = within(conn.prep("SELECT ? + 1")).await??;
        let count = within(conn.prep("SELECT COUNT(*) FROM here")).await??;
        let state = "SELECT @@session.sql_mode, @@session.time_zone, @@session.character_set_client, DATABASE()";
        let before: Option<(String, String, String, String)> = within(conn.query_first(state)).await??;

        let id = backend_id(&mut conn).await?;
        let heals = rig.heal_events().await?;
        kill(&rig.db, id).await?;
        tokio::time::sleep(SETTLE).await;

        let after: Option<(String, String, String, String)> = within(conn.query_first(state))
            .await?
            .map_err(|e| anyhow::anyhow!("after the heal: {}", describe(&e)))?;
        ensure!(after == before, "session state before {before:?}, after {after:?}");
        let new_id = backend_id(&mut conn).await?;
        ensure!(new_id != id, "still on the killed backend");
        ensure!(rig.heal_events().await? > heals, "no heal counted");
        let got: Option<i64> = within(conn.exec_first(&plus, (41,))).await??;
        ensure!(got == Some(42), "the prepared statement after the heal gave {got:?}");
        let n: Option<i64> = within(conn.exec_first(&count, ())).await??;
        ensure!(n == Some(0), "COUNT(*) FROM here gave {n:?}");
        // A statement prepared on the new backend gets its own id; both work.
        let times = within(conn.prep("SELECT ? * 3")).await??;
        ensure!(times.id() != plus.id() && times.id() != count.id(), "statement ids collide");
        let got: Option<i64> = within(conn.exec_first(&times, (5,))).await??;
        ensure!(got == Some(15));
        let got: Option<i64> = within(conn.exec_first(&plus, (1,))).await??;
        ensure!(got == Some(2));
        within(conn.close(plus)).await??;
        let got: Option<i64> = within(conn.exec_first(&times, (7,))).await??;
        ensure!(got == Some(21));
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// `SET NAMES x COLLATE y`: the server reports the character set without the
/// collation, yet both must hold on the healed backend (the collation would
/// otherwise fall back to the character set's default and change how the
/// session compares strings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_names_collation_survives_a_heal() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let mut conn = rig.connect_app().await?;
        within(conn.query_drop("SET NAMES utf8mb4 COLLATE utf8mb4_bin")).await??;
        let state = "SELECT @@character_set_connection, @@collation_connection, 'a' = 'A'";
        let before: Option<(String, String, i64)> = within(conn.query_first(state)).await??;
        ensure!(
            before == Some(("utf8mb4".into(), "utf8mb4_bin".into(), 0)),
            "before the heal: {before:?}"
        );
        let id = backend_id(&mut conn).await?;
        let heals = rig.heal_events().await?;
        kill(&rig.db, id).await?;
        tokio::time::sleep(SETTLE).await;
        let after: Option<(String, String, i64)> = within(conn.query_first(state))
            .await?
            .map_err(|e| anyhow::anyhow!("after the heal: {}", describe(&e)))?;
        ensure!(rig.heal_events().await? > heals, "no heal counted");
        ensure!(
            after == before,
            "before the heal {before:?}, after {after:?}"
        );
        // A later SET NAMES without COLLATE goes back to the default collation.
        within(conn.query_drop("SET NAMES utf8mb4")).await??;
        let plain: Option<(String, String, i64)> = within(conn.query_first(state)).await??;
        let id = backend_id(&mut conn).await?;
        kill(&rig.db, id).await?;
        tokio::time::sleep(SETTLE).await;
        let healed: Option<(String, String, i64)> = within(conn.query_first(state)).await??;
        ensure!(
            healed == plain,
            "after SET NAMES utf8mb4: {plain:?}, healed {healed:?}"
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// A user variable cannot be rebuilt: after the kill the next query gets
/// 2013 naming the lost state and the client connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_variable_taints_the_session() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let mut conn = rig.connect_app().await?;
        within(conn.query_drop("SET @kept = 42")).await??;
        let id = backend_id(&mut conn).await?;
        kill(&rig.db, id).await?;
        tokio::time::sleep(SETTLE).await;
        let message = expect_err(
            within(conn.query_drop("SELECT @kept")).await?,
            CR_SERVER_LOST,
            "HY000",
            &[],
            "the tainted session's next query",
        )?;
        ensure!(
            message.to_lowercase().contains("variable"),
            "2013 does not name the lost state (user variables): {message:?}"
        );
        let next = within(conn.query_drop("SELECT 1")).await?;
        ensure!(
            next.is_err(),
            "the tainted session's connection is still usable"
        );
        field(
            "tainted_session",
            "-",
            &format!("ERROR 2013 ({message}), connection closed"),
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

// ---------------------------------------------------------------------------
// Server down for a while
// ---------------------------------------------------------------------------

/// The server is down for 3 s; a client's query waits in the failover hold
/// and succeeds once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_3s_query_waits_in_the_hold_and_succeeds() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "1"), ("failover_hold", "\"15s\"")]).await?;
    let result = async {
        let mut conn = rig.connect_app().await?;
        ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
        rig.db.stop().await?;
        let down_at = Instant::now();
        let back = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            rig.db.start_again().await
        };
        let query = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tokio::time::timeout(
                Duration::from_secs(20),
                conn.query_first::<i64, _>("SELECT 7"),
            )
            .await
        };
        let (started, outcome) = tokio::join!(back, query);
        started?;
        let got = outcome
            .context("no answer within 20 s")?
            .map_err(|e| anyhow::anyhow!("query during the outage: {}", describe(&e)))?;
        ensure!(got == Some(7), "SELECT 7 gave {got:?}");
        field(
            "server_down_3s",
            "-",
            &format!("ok after {:.1}s (held)", down_at.elapsed().as_secs_f64()),
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// The server stays down past a 1 s failover hold: 2003, and once it is
/// back a client can log in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_past_the_hold_gives_2003() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "1"), ("failover_hold", "\"1s\"")]).await?;
    let result = async {
        let mut conn = rig.connect_app().await?;
        ensure!(select_i64(&mut conn, "SELECT 1").await? == 1);
        rig.db.stop().await?;
        tokio::time::sleep(SETTLE).await;
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(10), conn.query_drop("SELECT 8"))
            .await
            .context("no answer within 10 s")?;
        let took = started.elapsed();
        expect_err(
            outcome,
            CR_CONN_HOST_ERROR,
            "HY000",
            &["Can't connect"],
            "query with the server down",
        )?;
        ensure!(
            took >= Duration::from_millis(800),
            "2003 after {took:?}, before the 1 s hold ran out"
        );
        rig.db.start_again().await?;
        let same = within(conn.query_first::<i64, _>("SELECT 9")).await?;
        let mut fresh = rig.connect_app().await?;
        ensure!(select_i64(&mut fresh, "SELECT 10").await? == 10);
        field(
            "server_down_past_hold",
            "-",
            &format!(
                "ERROR 2003 after {:.1}s; same connection afterwards: {}",
                took.as_secs_f64(),
                show(&same)
            ),
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// COM_RESET_CONNECTION resets the backend's session tracking too (to the server's default
/// list, which has time_zone but not sql_mode): a SET after it must still be known to Suture
/// and survive a heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_set_after_reset_connection_survives_a_heal() -> anyhow::Result<()> {
    let rig = MysqlRig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let mut conn = rig.connect_app().await?;
        within(conn.query_drop("SET SESSION time_zone = '+01:00'")).await??;
        ensure!(
            within(conn.reset()).await??,
            "COM_RESET_CONNECTION not sent"
        );
        let tz: Option<String> = within(conn.query_first("SELECT @@session.time_zone")).await??;
        ensure!(tz.as_deref() == Some("SYSTEM"), "after the reset: {tz:?}");
        within(conn.query_drop("SET SESSION time_zone = '+04:00', sql_mode = 'ANSI_QUOTES'"))
            .await??;
        let id = backend_id(&mut conn).await?;
        kill(&rig.db, id).await?;
        tokio::time::sleep(SETTLE).await;
        let state: Option<(String, String)> =
            within(conn.query_first("SELECT @@session.time_zone, @@session.sql_mode"))
                .await?
                .map_err(|e| anyhow::anyhow!("after the heal: {}", describe(&e)))?;
        ensure!(
            state == Some(("+04:00".to_owned(), "ANSI_QUOTES".to_owned())),
            "a SET after COM_RESET_CONNECTION was lost in the heal: {state:?}"
        );
        ensure!(
            backend_id(&mut conn).await? != id,
            "still on the killed backend"
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}
