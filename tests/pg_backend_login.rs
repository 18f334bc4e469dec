//! Suture's own logins to PostgreSQL (SCRAM-SHA-256, the harness's default for role `app`):
//! many backends of one pool log in at once; a configured password the server does not take
//! gives the client the server's 28P01; a reload that changes the password logs in with the
//! new one, never with keys derived from the old one.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use support::http::{self, series_value};
use support::rig::{
    connect_watched, describe_sqlstate, finish, select_int, superuser_of, try_connect_watched,
    Watched,
};
use support::suture_proc::set_pool_keys;
use support::{dsn_for, free_port, suture_config_for, PgServer, SutureProc};

const CONFIGURED: &str = "password = \"app-secret\"";
const STALE: &str = "password = \"stale-secret\"";

/// Checks that role `app` has a SCRAM verifier, so backend logins as `app` run SCRAM.
async fn app_uses_scram(pg: &PgServer) -> anyhow::Result<()> {
    let su = superuser_of(pg).await?;
    let row = su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'",
            &[],
        )
        .await?;
    let verifier: String = row.get(0);
    ensure!(
        verifier.starts_with("SCRAM-SHA-256$"),
        "role app has no SCRAM verifier: {}",
        verifier.split('$').next().unwrap_or_default()
    );
    Ok(())
}

/// Expects the server's refusal of a wrong password, as PostgreSQL words it.
fn expect_server_28p01(login: Result<Watched, tokio_postgres::Error>) -> anyhow::Result<()> {
    let err = login
        .err()
        .context("a login with a password the server does not take succeeded")?;
    let db = err
        .as_db_error()
        .with_context(|| format!("no ErrorResponse: {err:?}"))?;
    ensure!(db.code().code() == "28P01", "{}", describe_sqlstate(&err));
    ensure!(
        db.message() == "password authentication failed for user \"app\"",
        "{}",
        db.message()
    );
    Ok(())
}

/// The value of `suture_backend_connects_total{result}`.
async fn backend_connects(suture: &SutureProc, result: &str) -> anyhow::Result<f64> {
    let page = http::get(suture.admin_port(), "/metrics").await?.body;
    Ok(series_value(
        &page,
        "suture_backend_connects_total",
        &[("result", result)],
    )
    .unwrap_or(0.0))
}

/// Rewrites the configuration, sends SIGHUP and waits until the `n`th reload is in force.
async fn reload(suture: &SutureProc, config: &str, n: f64) -> anyhow::Result<()> {
    std::fs::write(suture.config_path(), config)?;
    suture.signal("HUP")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = http::get(suture.admin_port(), "/metrics").await?.body;
        let ok = series_value(&page, "suture_config_reloads_total", &[("result", "ok")]);
        if ok.is_some_and(|ok| ok >= n) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "reload {n} not in force: {ok:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sixteen sessions at once, each inside a transaction so that each holds a backend of its
/// own, on a pool that also warms spares: every backend login succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_backends_of_one_pool_log_in() -> anyhow::Result<()> {
    const SESSIONS: usize = 16;
    let pg = PgServer::start().await?;
    app_uses_scram(&pg).await?;
    let cfg = set_pool_keys(
        suture_config_for(&pg, free_port()),
        &[("min_idle", "4"), ("max_size", "24")],
    )?;
    let suture = SutureProc::start(&cfg).await?;
    let result = async {
        let dsn = dsn_for(suture.port(), "app", "app-secret", "app");
        let logins = (0..SESSIONS).map(|i| {
            let dsn = dsn.clone();
            async move {
                let session = connect_watched(&dsn)
                    .await
                    .with_context(|| format!("session {i}"))?;
                session.client.batch_execute("BEGIN").await?;
                let pid = select_int(&session.client, "SELECT pg_backend_pid()").await?;
                anyhow::Ok((session, pid))
            }
        });
        let sessions = futures_util::future::try_join_all(logins).await?;
        let pids: HashSet<i32> = sessions.iter().map(|(_, pid)| *pid).collect();
        ensure!(pids.len() == SESSIONS, "backend pids {pids:?}");
        let ok = backend_connects(&suture, "ok").await?;
        ensure!(ok >= SESSIONS as f64, "{ok} backend logins counted");
        Ok(())
    }
    .await;
    finish(&suture, result)
}

/// The configured password is not the server's: the client (which gave Suture that password)
/// gets the server's own refusal, and the failed login is counted as an auth error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_backend_password_gives_the_servers_28p01() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    app_uses_scram(&pg).await?;
    let cfg = suture_config_for(&pg, free_port()).replace(CONFIGURED, STALE);
    ensure!(cfg.contains(STALE), "the config names no app password");
    let suture = SutureProc::start(&cfg).await?;
    let result = async {
        let dsn = dsn_for(suture.port(), "app", "stale-secret", "app");
        expect_server_28p01(try_connect_watched(&dsn).await?)?;
        let failed = backend_connects(&suture, "auth_error").await?;
        ensure!(failed >= 1.0, "{failed} failed backend logins counted");
        Ok(())
    }
    .await;
    finish(&suture, result)
}

/// After a backend login has cached the keys for the server's salt, a reload changes the
/// password: a new backend login (another database, so no pooled connection serves it) uses the
/// new password and is refused; back to the right one, it logs in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_password_logs_in_with_the_new_one() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    app_uses_scram(&pg).await?;
    let suture = SutureProc::start(&suture_config_for(&pg, free_port())).await?;
    let result = async {
        let port = suture.port();
        let first = connect_watched(&dsn_for(port, "app", "app-secret", "app")).await?;
        ensure!(select_int(&first.client, "SELECT 1").await? == 1);
        let configured = std::fs::read_to_string(suture.config_path())?;
        let stale = configured.replace(CONFIGURED, STALE);
        ensure!(stale != configured, "the config names no app password");

        reload(&suture, &stale, 1.0).await?;
        let login = try_connect_watched(&dsn_for(port, "app", "stale-secret", "postgres")).await?;
        expect_server_28p01(login)?;

        reload(&suture, &configured, 2.0).await?;
        let again = connect_watched(&dsn_for(port, "app", "app-secret", "postgres"))
            .await
            .context("login after the password was set back")?;
        ensure!(select_int(&again.client, "SELECT 2").await? == 2);
        Ok(())
    }
    .await;
    finish(&suture, result)
}
