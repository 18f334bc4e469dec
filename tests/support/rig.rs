//! The fault-injection rig shared by the PostgreSQL healing tests:
//! PostgreSQL, a [`FaultRelay`] in front of it and Suture in front of the
//! relay, plus the small client helpers those tests use.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context as _};
use tokio_postgres::{Client, NoTls};

use super::fault_relay::FaultRelay;
use super::pg_server::{PgServer, SUPERUSER_PASSWORD};
use super::suture_proc::{set_pool_keys, suture_config_with, SutureProc};
use super::{dsn_for, free_port};

/// Upper bound for any single client step, so a hang fails the test
/// instead of running into the nextest timeout.
pub(crate) const STEP: Duration = Duration::from_secs(10);

/// Lines of Suture's log that [`finish`] adds to a failure.
const LOG_TAIL_LINES: usize = 80;

/// PostgreSQL, a relay in front of it and Suture in front of the relay.
/// Field order is drop order: Suture first, PostgreSQL last.
pub(crate) struct Rig {
    pub(crate) suture: SutureProc,
    pub(crate) relay: FaultRelay,
    pub(crate) pg: PgServer,
}

impl Rig {
    /// A fresh PostgreSQL with the relay and Suture (with `[pools.app]`
    /// keys `set`, see [`config_via`]) in front of it.
    pub(crate) async fn start(set: &[(&str, &str)]) -> anyhow::Result<Rig> {
        Self::start_on(PgServer::start().await?, set).await
    }

    /// Puts the relay and Suture (with `[pools.app]` keys `set`) in front of
    /// an already running `pg`.
    pub(crate) async fn start_on(pg: PgServer, set: &[(&str, &str)]) -> anyhow::Result<Rig> {
        let relay = FaultRelay::start_for_port(pg.port()).await?;
        let cfg = config_via(&pg, relay.port(), set)?;
        let suture = SutureProc::start(&cfg).await?;
        Ok(Rig { suture, relay, pg })
    }

    /// Connects as `app` through Suture.
    pub(crate) async fn connect_app(&self) -> anyhow::Result<Watched> {
        connect_watched(&self.app_dsn()).await
    }

    /// Like [`Rig::connect_app`], keeping the login error for inspection.
    pub(crate) async fn try_connect_app(
        &self,
    ) -> anyhow::Result<Result<Watched, tokio_postgres::Error>> {
        try_connect_watched(&self.app_dsn()).await
    }

    fn app_dsn(&self) -> String {
        dsn_for(self.suture.port(), "app", "app-secret", "app")
    }

    /// A superuser connection straight to PostgreSQL, database `app`.
    pub(crate) async fn superuser(&self) -> anyhow::Result<Client> {
        superuser_of(&self.pg).await
    }

    /// The one number `sql` (a `SELECT count(*) ...`) returns, read as superuser straight
    /// from PostgreSQL.
    pub(crate) async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(within(self.superuser().await?.query_one(sql, &[]))
            .await??
            .get(0))
    }

    /// A plain tokio-postgres session as `app` through a relay of its own,
    /// for the "direct connection" column.
    pub(crate) async fn direct_via_relay(&self) -> anyhow::Result<(FaultRelay, Watched)> {
        let relay = FaultRelay::start_for_port(self.pg.port()).await?;
        let client = connect_watched(&dsn_for(relay.port(), "app", "app-secret", "app")).await?;
        Ok((relay, client))
    }

    /// A plain tokio-postgres session as `app` straight to PostgreSQL.
    pub(crate) async fn direct(&self) -> anyhow::Result<Watched> {
        connect_watched(&self.pg.dsn("app", "app-secret", "app")).await
    }

    /// Adds the end of Suture's log to a failure.
    pub(crate) fn finish(&self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        finish(&self.suture, result)
    }
}

/// Adds the end of `suture`'s log to a failure.
pub(crate) fn finish(suture: &SutureProc, result: anyhow::Result<()>) -> anyhow::Result<()> {
    result.map_err(|err| {
        let log = suture.log_contents();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        err.context(format!("---- suture log (tail) ----\n{tail}"))
    })
}

/// The shared test config with `servers` pointing at `server_port` and the
/// `[pools.app]` keys in `set` (an existing line is replaced, a new key is
/// added), e.g. `&[("min_idle", "1"), ("health_check_after", "\"1s\"")]`.
pub(crate) fn config_via(
    pg: &PgServer,
    server_port: u16,
    set: &[(&str, &str)],
) -> anyhow::Result<String> {
    let cfg = suture_config_with(pg, free_port(), "");
    let direct = format!("servers = [\"127.0.0.1:{}\"]", pg.port());
    ensure!(cfg.contains(&direct), "config has no `{direct}` line");
    let cfg = cfg.replace(&direct, &format!("servers = [\"127.0.0.1:{server_port}\"]"));
    set_pool_keys(cfg, set)
}

/// A superuser connection straight to `pg`, database `app`.
pub(crate) async fn superuser_of(pg: &PgServer) -> anyhow::Result<Client> {
    pg.connect("postgres", SUPERUSER_PASSWORD, "app").await
}

/// Runs `ALTER ROLE app SET {setting}` on `pg` as superuser, so every new
/// session of `app` starts with it.
pub(crate) async fn set_app_role(pg: &PgServer, setting: &str) -> anyhow::Result<()> {
    let su = superuser_of(pg).await?;
    within(su.batch_execute(&format!("ALTER ROLE app SET {setting}"))).await??;
    Ok(())
}

/// A fresh PostgreSQL whose role `app` has `setting` (see [`set_app_role`]).
pub(crate) async fn pg_with_app_setting(setting: &str) -> anyhow::Result<PgServer> {
    let pg = PgServer::start().await?;
    set_app_role(&pg, setting).await?;
    Ok(pg)
}

/// A client plus how its connection task ended (an error the server sent
/// while no query was waiting ends up there).
pub(crate) struct Watched {
    pub(crate) client: Client,
    ended: Arc<Mutex<Option<String>>>,
}

impl Watched {
    pub(crate) fn connection_end(&self) -> String {
        self.ended
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
            .unwrap_or_else(|| "still open".to_string())
    }
}

pub(crate) async fn connect_watched(dsn: &str) -> anyhow::Result<Watched> {
    Ok(try_connect_watched(dsn).await??)
}

pub(crate) async fn try_connect_watched(
    dsn: &str,
) -> anyhow::Result<Result<Watched, tokio_postgres::Error>> {
    let (client, connection) = match within(tokio_postgres::connect(dsn, NoTls)).await? {
        Ok(pair) => pair,
        Err(err) => return Ok(Err(err)),
    };
    let ended = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&ended);
    tokio::spawn(async move {
        let how = match connection.await {
            Ok(()) => "closed cleanly".to_string(),
            Err(err) => describe(&err),
        };
        if let Ok(mut slot) = slot.lock() {
            *slot = Some(how);
        }
    });
    Ok(Ok(Watched { client, ended }))
}

/// Runs `fut`, failing if it takes longer than [`STEP`].
pub(crate) async fn within<F: Future>(fut: F) -> anyhow::Result<F::Output> {
    tokio::time::timeout(STEP, fut)
        .await
        .with_context(|| format!("step did not finish within {STEP:?}"))
}

/// Runs a query returning one int4 and returns it.
pub(crate) async fn select_int(client: &Client, sql: &str) -> anyhow::Result<i32> {
    let row = within(client.query_one(sql, &[]))
        .await?
        .with_context(|| format!("{sql} failed"))?;
    Ok(row.get(0))
}

/// The SQLSTATE of an ErrorResponse, if the error is one.
pub(crate) fn sqlstate(err: &tokio_postgres::Error) -> Option<&str> {
    err.as_db_error().map(|db| db.code().code())
}

/// An error as a client sees it: severity and SQLSTATE of an
/// ErrorResponse, or the bare error.
pub(crate) fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} {} ({})", db.severity(), db.code().code(), db.message()),
        None if err.is_closed() => "connection closed".to_string(),
        None => format!("{err}"),
    }
}

/// An error for a failure message: SQLSTATE and message if the server (or
/// Suture) sent an ErrorResponse, otherwise the bare error.
pub(crate) fn describe_sqlstate(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("SQLSTATE {} ({})", db.code().code(), db.message()),
        None => format!("no ErrorResponse: {err:?}"),
    }
}
