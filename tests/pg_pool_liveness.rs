//! Issue 4, DESIGN §5: the pool's liveness machinery against a real
//! PostgreSQL. The active health check finds a black-holed pooled flow
//! before a client gets it; the role check keeps a read-only server away
//! from a pool that wants a primary; the failover hold keeps new logins
//! waiting through a server restart and answers 57P03 when the server stays
//! away longer than the hold.

mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use support::rig::{
    config_via, describe_sqlstate as describe, finish, select_int, set_app_role, within, Rig,
};
use support::{dsn_for, PgServer, SutureProc};
use tokio_postgres::{Client, NoTls};

/// Connects as `app` to database `app` through Suture.
async fn connect_app(suture: &SutureProc) -> Result<Client, tokio_postgres::Error> {
    connect_db(suture, "app").await
}

async fn connect_db(suture: &SutureProc, db: &str) -> Result<Client, tokio_postgres::Error> {
    let dsn = dsn_for(suture.port(), "app", "app-secret", db);
    let (client, connection) = tokio_postgres::connect(&dsn, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Expects a login refused with `code`; returns the message.
fn expect_sqlstate(
    result: Result<Client, tokio_postgres::Error>,
    code: &str,
) -> anyhow::Result<String> {
    match result {
        Ok(_) => bail!("login succeeded, expected SQLSTATE {code}"),
        Err(err) => match err.as_db_error() {
            Some(db) if db.code().code() == code => Ok(db.message().to_owned()),
            _ => bail!("expected SQLSTATE {code}, got {}", describe(&err)),
        },
    }
}

// ---------------------------------------------------------------------------
// Active health check (black-holed flows)
// ---------------------------------------------------------------------------

/// A pooled backend flow is black-holed (a NAT or load balancer dropped it
/// silently: no FIN, no RST). The health check finds it and the pool
/// replaces it, so the next client is served at once instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_pooled_connection_is_found_by_the_health_check() -> anyhow::Result<()> {
    let rig = Rig::start(&[
        ("min_idle", "1"),
        ("health_check_after", "\"1s\""),
        ("health_check_timeout", "\"500ms\""),
    ])
    .await?;
    let (suture, relay) = (&rig.suture, &rig.relay);
    let result = async {
        let a = within(connect_app(suture)).await??;
        ensure!(select_int(&a, "SELECT 1::int4").await? == 1);
        drop(a);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let black_holed = relay.flow_count();
        ensure!(black_holed >= 1, "no pooled backend flow through the relay");
        relay.blackhole_all().await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let started = Instant::now();
        let b = tokio::time::timeout(Duration::from_secs(3), async {
            let b = connect_app(suture).await?;
            let row = b.query_one("SELECT 2::int4", &[]).await?;
            Ok::<i32, tokio_postgres::Error>(row.get(0))
        })
        .await
        .with_context(|| {
            format!("a black-holed pooled connection was handed out ({black_holed} black-holed)")
        })?
        .context("client B")?;
        ensure!(b == 2, "SELECT 2 returned {b}");
        ensure!(
            started.elapsed() < Duration::from_secs(2),
            "client B took {:?}",
            started.elapsed()
        );
        ensure!(
            suture.log_contents().contains("failed its health check"),
            "no health check failure logged"
        );
        Ok(())
    }
    .await;
    finish(suture, result)
}

// ---------------------------------------------------------------------------
// Role check
// ---------------------------------------------------------------------------

/// Makes every new session of user `app` read-only, as on a standby.
async fn make_app_read_only(pg: &PgServer) -> anyhow::Result<()> {
    set_app_role(pg, "default_transaction_read_only = on").await
}

/// A pool that wants a primary never hands out a read-only server: the
/// logins are held for the failover hold and then refused with 57P03.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_server_is_refused_for_a_primary_pool() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    make_app_read_only(&pg).await?;
    let cfg = config_via(
        &pg,
        pg.port(),
        &[("role", "\"primary\""), ("failover_hold", "\"2s\"")],
    )?;
    let suture = SutureProc::start(&cfg).await?;
    let result = async {
        let started = Instant::now();
        let login = within(connect_app(&suture)).await?;
        let took = started.elapsed();
        let message = expect_sqlstate(login, "57P03")?;
        ensure!(
            message.contains("failover hold (2s)"),
            "unexpected message {message:?}"
        );
        ensure!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
            "refused after {took:?}, expected about the 2 s hold"
        );
        ensure!(
            suture.log_contents().contains("read-only"),
            "the read-only server was not logged"
        );
        Ok(())
    }
    .await;
    finish(&suture, result)
}

/// With `role = "any"` the same read-only server serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_server_serves_an_any_pool() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    make_app_read_only(&pg).await?;
    let cfg = config_via(
        &pg,
        pg.port(),
        &[("role", "\"any\""), ("failover_hold", "\"2s\"")],
    )?;
    let suture = SutureProc::start(&cfg).await?;
    let result = async {
        let c = within(connect_app(&suture))
            .await?
            .map_err(|e| anyhow::anyhow!(describe(&e)))?;
        ensure!(select_int(&c, "SELECT 1::int4").await? == 1);
        let row = within(c.query_one("SHOW transaction_read_only", &[])).await??;
        let read_only: String = row.get(0);
        ensure!(read_only == "on", "transaction_read_only = {read_only}");
        Ok(())
    }
    .await;
    finish(&suture, result)
}

// ---------------------------------------------------------------------------
// Failover hold
// ---------------------------------------------------------------------------

/// The server restarts; a client that logs in while it is down is held, not
/// refused, and its query runs once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_during_server_restart_is_held_and_served() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let cfg = config_via(&pg, pg.port(), &[("min_idle", "1")])?;
    let suture = SutureProc::start(&cfg).await?;
    let result = async {
        let a = within(connect_app(&suture)).await??;
        ensure!(select_int(&a, "SELECT 1::int4").await? == 1);
        drop(a);
        tokio::time::sleep(Duration::from_millis(200)).await;

        pg.stop().await?;
        let stopped = Instant::now();
        let restart = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            pg.start_again().await?;
            Ok::<Instant, anyhow::Error>(Instant::now())
        };
        let login = async {
            // Log in while the server is down.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let b = within(connect_app(&suture))
                .await?
                .map_err(|e| anyhow::anyhow!("login during the restart: {}", describe(&e)))?;
            let got = select_int(&b, "SELECT 2::int4").await?;
            Ok::<(i32, Instant), anyhow::Error>((got, Instant::now()))
        };
        let (up, served) = tokio::join!(restart, login);
        let up = up?;
        let (got, served) = served?;
        ensure!(got == 2, "SELECT 2 returned {got}");
        ensure!(
            served >= up.checked_sub(Duration::from_millis(500)).unwrap_or(up),
            "served before the server was back?"
        );
        ensure!(
            served.duration_since(up) < Duration::from_secs(2),
            "served {:?} after the server was back (outage began {:?} before)",
            served.duration_since(up),
            up.duration_since(stopped)
        );
        Ok(())
    }
    .await;
    finish(&suture, result)
}

/// The server stays down longer than the failover hold: the held login is
/// refused with 57P03 after the hold, and serving resumes once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_longer_than_the_hold_gives_57p03() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let cfg = config_via(
        &pg,
        pg.port(),
        &[("min_idle", "1"), ("failover_hold", "\"2s\"")],
    )?;
    let suture = SutureProc::start(&cfg).await?;
    let result = async {
        let a = within(connect_app(&suture)).await??;
        ensure!(select_int(&a, "SELECT 1::int4").await? == 1);
        drop(a);
        pg.stop().await?;
        let started = Instant::now();
        let login = within(connect_app(&suture)).await?;
        let took = started.elapsed();
        let message = expect_sqlstate(login, "57P03")?;
        ensure!(
            message.contains("not accepting connections") && message.contains("failover hold (2s)"),
            "unexpected message {message:?}"
        );
        ensure!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
            "refused after {took:?}, expected about the 2 s hold"
        );
        pg.start_again().await?;
        let c = within(connect_app(&suture))
            .await?
            .map_err(|e| anyhow::anyhow!("after the server came back: {}", describe(&e)))?;
        ensure!(select_int(&c, "SELECT 3::int4").await? == 3);
        Ok(())
    }
    .await;
    finish(&suture, result)
}

/// A server's answer that is not an outage (here: no such database) is not
/// held: the client gets the server's own error at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_is_not_held() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let cfg = config_via(&pg, pg.port(), &[("failover_hold", "\"30s\"")])?;
    let suture = SutureProc::start(&cfg).await?;
    let result = async {
        let started = Instant::now();
        let login = within(connect_db(&suture, "no_such_db")).await?;
        expect_sqlstate(login, "3D000")?;
        ensure!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        Ok(())
    }
    .await;
    finish(&suture, result)
}
