//! Issue 4: Suture heals broken PostgreSQL backend connections (DESIGN §1,
//! §3, §4, §5). Each test starts its own PostgreSQL, a fault relay in front
//! of it and Suture in front of the relay, then injects a fault and checks
//! what the client sees: rows where Suture can heal, the §3 SQLSTATE where
//! it must tell the truth.

mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use support::rig::{
    connect_watched, describe_sqlstate as describe, pg_with_app_setting, select_int, sqlstate,
    within, Rig,
};
use support::{dsn_for, free_port, suture_config_with, PgServer, SutureProc};
use tokio_postgres::{Client, NoTls};

/// Time given to Suture to notice a fault on an idle connection.
const SETTLE: Duration = Duration::from_millis(300);

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

// ---------------------------------------------------------------------------
// Field reports (DESIGN §1)
// ---------------------------------------------------------------------------

/// F1: every idle pooled socket gets an RST; the next client must be served
/// from a healthy connection (a pooled driver would see "broken pipe").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_pooled_idle_rst_is_not_handed_to_the_next_client() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let a = rig.connect_app().await?;
        ensure!(select_int(&a.client, "SELECT 1::int4").await? == 1);
        drop(a);
        // A's backend goes back to the pool next to the min_idle spare.
        tokio::time::sleep(SETTLE).await;
        let open = rig.relay.flow_count();
        ensure!(open >= 1, "no backend connection open through the relay");
        rig.relay.rst_all().await?;
        tokio::time::sleep(SETTLE).await;
        // Several clients at once, so no dead pooled connection can hide.
        let clients = [
            rig.connect_app().await?,
            rig.connect_app().await?,
            rig.connect_app().await?,
        ];
        for (i, b) in clients.iter().enumerate() {
            let got = select_int(&b.client, "SELECT 1::int4")
                .await
                .with_context(|| format!("client B{i} after RST of {open} pooled backends"))?;
            ensure!(got == 1);
        }
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// F2: the server side closes (FIN) the backend of an idle session; the
/// session's next query must run on a fresh backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_idle_session_backend_fin_heals() -> anyhow::Result<()> {
    idle_session_heals_after(Fault::Fin).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_backend_rst_heals() -> anyhow::Result<()> {
    idle_session_heals_after(Fault::Rst).await
}

/// How the relay kills the backend flows.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Fin,
    Rst,
}

/// A session runs a query, the relay kills its backend flow while it is idle,
/// and its next queries must succeed on a fresh backend.
async fn idle_session_heals_after(fault: Fault) -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let c = rig.connect_app().await?;
        ensure!(select_int(&c.client, "SELECT 1::int4").await? == 1);
        match fault {
            Fault::Fin => rig.relay.fin_all().await?,
            Fault::Rst => rig.relay.rst_all().await?,
        }
        tokio::time::sleep(SETTLE).await;
        let two = select_int(&c.client, "SELECT 2::int4")
            .await
            .with_context(|| format!("after {fault:?}; connection {}", c.connection_end()))?;
        ensure!(two == 2, "SELECT 2 returned {two}");
        select_int(&c.client, "SELECT pg_backend_pid()").await?;
        Ok(())
    }
    .await;
    rig.finish(result)
}

// ---------------------------------------------------------------------------
// Server-side ends of idle sessions
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_terminate_backend_of_idle_session_heals() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let c = rig.connect_app().await?;
        let pid = select_int(&c.client, "SELECT pg_backend_pid()").await?;
        let su = rig.superuser().await?;
        let row = within(su.query_one("SELECT pg_terminate_backend($1)", &[&pid])).await??;
        let terminated: bool = row.get(0);
        ensure!(terminated, "pg_terminate_backend({pid}) returned false");
        tokio::time::sleep(SETTLE).await;
        let three = select_int(&c.client, "SELECT 3::int4")
            .await
            .with_context(|| {
                format!("after terminating {pid}; connection {}", c.connection_end())
            })?;
        ensure!(three == 3, "SELECT 3 returned {three}");
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// The server's idle_session_timeout (1 s for role `app`) is shorter than
/// the client's idle time: directly, the second query fails; through
/// Suture it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_timeout_shorter_than_client_idle_heals() -> anyhow::Result<()> {
    let pg = pg_with_app_setting("idle_session_timeout = '1s'").await?;
    // Suture opens its first backend only now, with the role setting in force.
    let rig = Rig::start_on(pg, &[("min_idle", "0")]).await?;
    let result = async {
        let via = rig.connect_app().await?;
        let direct = rig.direct().await?;
        ensure!(select_int(&via.client, "SELECT 1::int4").await? == 1);
        ensure!(select_int(&direct.client, "SELECT 1::int4").await? == 1);
        tokio::time::sleep(Duration::from_millis(2500)).await;

        // The test can fail: PostgreSQL itself has closed the direct session.
        match within(direct.client.query_one("SELECT 2::int4", &[])).await? {
            Ok(_) => bail!("direct session survived idle_session_timeout: the test proves nothing"),
            Err(err) => eprintln!(
                "direct client after idle_session_timeout: {} (connection {})",
                describe(&err),
                direct.connection_end()
            ),
        }

        let two = select_int(&via.client, "SELECT 2::int4")
            .await
            .with_context(|| format!("through Suture; connection {}", via.connection_end()))?;
        ensure!(two == 2, "SELECT 2 returned {two}");
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// DESIGN §4: the process ID a client got at login routes cancels to
/// whichever backend serves it after a heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heal_keeps_client_visible_process_id_for_cancel() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let c = rig.connect_app().await?;
        ensure!(select_int(&c.client, "SELECT 1::int4").await? == 1);
        rig.relay.fin_all().await?;
        tokio::time::sleep(SETTLE).await;

        let token = c.client.cancel_token();
        let started = Instant::now();
        let query = tokio::time::timeout(
            Duration::from_millis(3500),
            c.client.batch_execute("SELECT pg_sleep(10)"),
        );
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            within(token.cancel_query(NoTls)).await
        };
        let (outcome, cancelled) = tokio::join!(query, cancel);
        cancelled?.context("sending the cancel request")?;
        let took = started.elapsed();
        match outcome {
            Err(_) => bail!("pg_sleep(10) was not cancelled within 3 s of the cancel request"),
            Ok(Ok(())) => bail!("pg_sleep(10) completed in {took:?} instead of being cancelled"),
            Ok(Err(err)) => ensure!(
                sqlstate(&err) == Some("57014"),
                "expected 57014 query_canceled, got {} after {took:?}",
                describe(&err)
            ),
        }
        // The session carries on.
        ensure!(select_int(&c.client, "SELECT 4::int4").await? == 4);
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// DESIGN §4: SET values are session state Suture restores, so a session
/// that only changed settings heals and keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_session_parameter_survives_heal() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let c = rig.connect_app().await?;
        within(c.client.batch_execute("SET application_name = 'x'")).await??;
        rig.relay.rst_all().await?;
        tokio::time::sleep(SETTLE).await;
        let row = within(c.client.query_one("SHOW application_name", &[]))
            .await?
            .with_context(|| format!("after RST; connection {}", c.connection_end()))?;
        let name: String = row.get(0);
        ensure!(
            name == "x",
            "application_name after heal is {name:?}, expected \"x\""
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

// ---------------------------------------------------------------------------
// Truthful errors (DESIGN §3 table)
// ---------------------------------------------------------------------------

/// A session with state Suture cannot rebuild (here a temporary table; SET
/// values are restorable, see `set_session_parameter_survives_heal`) loses
/// its backend: the next query gets an ErrorResponse 08006 naming the lost
/// state, not a bare closed connection, and the client connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirty_session_losing_backend_gets_08006_not_bare_eof() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let c = rig.connect_app().await?;
        within(
            c.client
                .batch_execute("CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1)"),
        )
        .await??;
        rig.relay.rst_all().await?;
        tokio::time::sleep(SETTLE).await;
        let err = match within(c.client.query("SELECT x FROM scratch", &[])).await? {
            Ok(rows) => bail!("query on a lost temp table returned {} rows", rows.len()),
            Err(err) => err,
        };
        let Some(db) = err.as_db_error() else {
            bail!(
                "expected ErrorResponse 08006, got a bare error: {err:?} (connection {})",
                c.connection_end()
            );
        };
        ensure!(
            db.code().code() == "08006",
            "expected 08006, got {}",
            describe(&err)
        );
        ensure!(
            db.message().to_lowercase().contains("temp"),
            "08006 message does not name the lost temporary table: {:?}",
            db.message()
        );
        // §3: the client connection is closed.
        ensure!(
            wait_closed(&c.client, Duration::from_secs(5)).await,
            "client connection still open after losing unrestorable state"
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// A transaction in progress loses its backend: nothing is replayed, the
/// next statement gets a §3 SQLSTATE, the client can roll back and carry
/// on, and the row inserted before the fault does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_in_progress_losing_backend_is_not_replayed() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute("CREATE TABLE t (x int); GRANT ALL ON t TO app")).await??;

        let c = rig.connect_app().await?;
        within(c.client.batch_execute("BEGIN")).await??;
        within(c.client.batch_execute("INSERT INTO t VALUES (1)")).await??;
        rig.relay.rst_all().await?;
        tokio::time::sleep(SETTLE).await;

        let err = match within(c.client.batch_execute("INSERT INTO t VALUES (2)")).await? {
            Ok(()) => bail!("statement after losing the transaction's backend succeeded"),
            Err(err) => err,
        };
        let code = sqlstate(&err).map(str::to_string);
        ensure!(
            matches!(code.as_deref(), Some("08006" | "40003" | "08007")),
            "expected SQLSTATE 08006, 40003 or 08007, got {} (connection {})",
            describe(&err),
            c.connection_end()
        );
        if code.as_deref() == Some("08006") {
            // Status E until ROLLBACK, as after any failed statement.
            match within(c.client.batch_execute("SELECT 1")).await? {
                Ok(()) => bail!("statement ran in an aborted transaction"),
                Err(err) => ensure!(
                    sqlstate(&err) == Some("25P02"),
                    "expected 25P02 in the aborted transaction, got {}",
                    describe(&err)
                ),
            }
        }
        within(c.client.batch_execute("ROLLBACK"))
            .await?
            .context("ROLLBACK after the lost transaction")?;
        ensure!(select_int(&c.client, "SELECT 5::int4").await? == 5);

        let count: i64 = within(su.query_one("SELECT count(*) FROM t", &[]))
            .await??
            .get(0);
        ensure!(
            count == 0,
            "table t has {count} rows after the lost transaction"
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// F3: connections are rotated before a maximum age, under a session that
/// never notices: same settings, no error, a different backend afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_rotation_under_an_idle_session() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let cfg = suture_config_with(&pg, free_port(), "")
        .replace("max_lifetime = \"30m\"", "max_lifetime = \"2s\"");
    ensure!(
        cfg.contains("max_lifetime = \"2s\""),
        "config template changed"
    );
    let suture = SutureProc::start(&cfg).await?;
    let c = connect_watched(&dsn_for(suture.port(), "app", "app-secret", "app")).await?;
    within(c.client.batch_execute("SET application_name = 'rotated'")).await??;
    let before = select_int(&c.client, "SELECT pg_backend_pid()").await?;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let after = select_int(&c.client, "SELECT pg_backend_pid()")
        .await
        .with_context(|| format!("after the lifetime; connection {}", c.connection_end()))?;
    ensure!(
        before != after,
        "backend {before} was not rotated after its 2 s lifetime"
    );
    let row = within(c.client.query_one("SHOW application_name", &[])).await??;
    let name: String = row.get(0);
    ensure!(
        name == "rotated",
        "application_name after rotation is {name:?}"
    );
    Ok(())
}

/// Named prepared statements and LISTEN channels are rebuilt on the new
/// backend: the statement prepared before the heal executes after it, and a
/// NOTIFY sent after the heal still reaches the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_and_listen_survive_heal() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let (client, mut notes) = connect_with_notifications(rig.suture.port()).await?;
        let statement = within(client.prepare("SELECT $1::int4 + 1")).await??;
        within(client.batch_execute("LISTEN healed_channel")).await??;
        rig.relay.rst_all().await?;
        tokio::time::sleep(SETTLE).await;
        let row = within(client.query_one(&statement, &[&41i32]))
            .await?
            .context("executing the statement prepared before the heal")?;
        let answer: i32 = row.get(0);
        ensure!(answer == 42, "prepared statement returned {answer}");
        let su = rig.superuser().await?;
        within(su.batch_execute("NOTIFY healed_channel, 'after'")).await??;
        let payload = tokio::time::timeout(Duration::from_secs(5), notes.recv())
            .await
            .context("no notification after the heal")?
            .context("notification channel closed")?;
        ensure!(payload == "after", "payload {payload:?}");
        Ok(())
    }
    .await;
    rig.finish(result)
}

/// A client whose notifications are forwarded to a channel.
async fn connect_with_notifications(
    port: u16,
) -> anyhow::Result<(Client, tokio::sync::mpsc::UnboundedReceiver<String>)> {
    let (client, mut connection) =
        tokio_postgres::connect(&dsn_for(port, "app", "app-secret", "app"), NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    Ok((client, rx))
}

/// Notifications that arrive while Suture runs its own health check on a
/// quiet session's backend are delivered, none lost: checks every 50 ms, a
/// notification every 5 ms for 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_during_session_health_checks_are_not_lost() -> anyhow::Result<()> {
    let rig = Rig::start(&[("health_check_after", "\"50ms\"")]).await?;
    let result = async {
        let (client, mut notes) = connect_with_notifications(rig.suture.port()).await?;
        within(client.batch_execute("LISTEN busy_channel")).await??;
        let su = rig.superuser().await?;
        const SENT: usize = 400;
        for i in 0..SENT {
            within(su.batch_execute(&format!("NOTIFY busy_channel, '{i}'"))).await??;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut received = Vec::new();
        while received.len() < SENT {
            match tokio::time::timeout(Duration::from_secs(3), notes.recv()).await {
                Ok(Some(payload)) => received.push(payload),
                _ => break,
            }
        }
        let expected: Vec<String> = (0..SENT).map(|i| i.to_string()).collect();
        ensure!(
            received == expected,
            "received {} of {SENT} notifications (in order: {})",
            received.len(),
            received.iter().zip(&expected).all(|(a, b)| a == b)
        );
        Ok(())
    }
    .await;
    rig.finish(result)
}
