//! The MySQL-protocol twin of [`super::rig`]: a private MariaDB, a
//! [`FaultRelay`] in front of it and Suture (a `protocol = "mysql"` pool) in
//! front of the relay ([`MysqlRig`]); a MariaDB with or without Suture in
//! front ([`MysqlTarget`], direct with `SUTURE_TEST_DIRECT=1`); and the small
//! `mysql_async` helpers the MySQL tests share: error codes, backend ids,
//! KILL from an admin connection and Suture's heal counters.

use std::time::Duration;

use anyhow::Context as _;
use mysql_async::prelude::Queryable as _;
use mysql_async::{Conn, Opts, OptsBuilder};

use super::fault_relay::FaultRelay;
use super::http;
use super::mariadb_server::{
    connect_mysql, mysql_opts, MariaDbServer, APP_DB, APP_PASSWORD, APP_USER,
};
use super::rig::{finish, within};
use super::suture_proc::{mysql_config, set_pool_keys, SutureProc};
use super::{direct_mode, free_port};

/// The second native-password account some tests create (`CREATE USER`), and
/// that [`mysql_config`] lists.
pub(crate) const OTHER_USER: &str = "other";
pub(crate) const OTHER_PASSWORD: &str = "other-secret";

/// `CR_SERVER_LOST`: "Lost connection to MySQL server during query".
pub(crate) const CR_SERVER_LOST: u16 = 2013;
/// `CR_CONN_HOST_ERROR`: "Can't connect to MySQL server".
pub(crate) const CR_CONN_HOST_ERROR: u16 = 2003;
/// ER_SERVER_SHUTDOWN: the server answered a running query while shutting down.
pub(crate) const ER_SERVER_SHUTDOWN: u16 = 1053;

/// The Suture config of a MySQL pool in front of 127.0.0.1:`server_port`,
/// with the `[pools.app]` keys `set` (see [`set_pool_keys`]).
pub(crate) fn mysql_config_via(server_port: u16, set: &[(&str, &str)]) -> anyhow::Result<String> {
    set_pool_keys(mysql_config(server_port, free_port()), set)
}

/// MariaDB, a relay in front of it and Suture in front of the relay. Field
/// order is drop order: Suture first, MariaDB last.
pub(crate) struct MysqlRig {
    pub(crate) suture: SutureProc,
    pub(crate) relay: FaultRelay,
    pub(crate) db: MariaDbServer,
}

impl MysqlRig {
    /// A fresh MariaDB with the relay and Suture (with `[pools.app]` keys `set`).
    pub(crate) async fn start(set: &[(&str, &str)]) -> anyhow::Result<MysqlRig> {
        Self::start_on(MariaDbServer::start().await?, set).await
    }

    /// Puts the relay and Suture (with `[pools.app]` keys `set`) in front of `db`.
    pub(crate) async fn start_on(
        db: MariaDbServer,
        set: &[(&str, &str)],
    ) -> anyhow::Result<MysqlRig> {
        let relay = FaultRelay::start_for_port(db.port()).await?;
        let suture = SutureProc::start(&mysql_config_via(relay.port(), set)?).await?;
        Ok(MysqlRig { suture, relay, db })
    }

    /// Options for `app` on database `app` through Suture.
    pub(crate) fn app_opts(&self) -> Opts {
        mysql_opts(self.suture.port(), APP_USER, APP_PASSWORD, APP_DB)
    }

    /// Connects as `app` through Suture.
    pub(crate) async fn connect_app(&self) -> anyhow::Result<Conn> {
        connect_mysql(self.suture.port(), APP_USER, APP_PASSWORD, APP_DB).await
    }

    /// A plain `mysql_async` session as `app` through a relay of its own (the
    /// "direct connection" column of a fault).
    pub(crate) async fn direct_via_relay(&self) -> anyhow::Result<(FaultRelay, Conn)> {
        let relay = FaultRelay::start_for_port(self.db.port()).await?;
        let conn = connect_mysql(relay.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
        Ok((relay, conn))
    }

    /// A superuser connection straight to MariaDB.
    pub(crate) async fn admin(&self) -> anyhow::Result<Conn> {
        self.db.admin().await
    }

    /// Heal events counted so far for pool `app` (see [`heal_events`]).
    pub(crate) async fn heal_events(&self) -> anyhow::Result<f64> {
        heal_events(&self.suture).await
    }

    /// Adds the end of Suture's log to a failure.
    pub(crate) fn finish(&self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        finish(&self.suture, result)
    }
}

/// What a proxy test talks to: Suture in front of its own MariaDB, or that
/// MariaDB itself in direct mode. Field order matters for drop: Suture first.
pub(crate) struct MysqlTarget {
    pub(crate) suture: Option<SutureProc>,
    pub(crate) db: MariaDbServer,
}

impl MysqlTarget {
    /// A MariaDB (with extra mariadbd options `server_args`) and, unless
    /// direct, Suture with the `[pools.app]` keys `set`.
    pub(crate) async fn start(
        server_args: &[&str],
        set: &[(&str, &str)],
    ) -> anyhow::Result<MysqlTarget> {
        let db = MariaDbServer::start_with(server_args).await?;
        let suture = if direct_mode() {
            None
        } else {
            Some(SutureProc::start(&mysql_config_via(db.port(), set)?).await?)
        };
        Ok(MysqlTarget { suture, db })
    }

    pub(crate) fn is_direct(&self) -> bool {
        self.suture.is_none()
    }

    /// The port clients connect to.
    pub(crate) fn port(&self) -> u16 {
        self.suture
            .as_ref()
            .map_or(self.db.port(), SutureProc::port)
    }

    /// Options for `user` on `db` (empty: none) at [`MysqlTarget::port`].
    pub(crate) fn opts(&self, user: &str, password: &str, db: &str) -> OptsBuilder {
        OptsBuilder::from_opts(mysql_opts(self.port(), user, password, db))
    }

    /// Connects as `app` to database `app`.
    pub(crate) async fn connect_app(&self) -> anyhow::Result<Conn> {
        connect_mysql(self.port(), APP_USER, APP_PASSWORD, APP_DB).await
    }

    /// Adds the end of Suture's log to a failure.
    pub(crate) fn finish(&self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        match &self.suture {
            Some(suture) => finish(suture, result),
            None => result,
        }
    }
}

/// Creates the account [`OTHER_USER`] on `db` with every privilege on
/// database `app` and on a second database `otherdb`, which it creates.
pub(crate) async fn create_other_user_and_db(db: &MariaDbServer) -> anyhow::Result<()> {
    let mut admin = db.admin().await?;
    for sql in [
        "CREATE DATABASE IF NOT EXISTS otherdb".to_string(),
        format!(
            "CREATE USER IF NOT EXISTS '{OTHER_USER}'@'%' IDENTIFIED VIA mysql_native_password \
             USING PASSWORD('{OTHER_PASSWORD}')"
        ),
        format!("GRANT ALL PRIVILEGES ON app.* TO '{OTHER_USER}'@'%'"),
        format!("GRANT ALL PRIVILEGES ON otherdb.* TO '{OTHER_USER}'@'%'"),
        format!("GRANT ALL PRIVILEGES ON otherdb.* TO '{APP_USER}'@'%'"),
    ] {
        within(admin.query_drop(&sql))
            .await?
            .with_context(|| sql.clone())?;
    }
    admin.disconnect().await?;
    Ok(())
}

/// The server's error packet, if the error is one.
pub(crate) fn server_error(err: &mysql_async::Error) -> Option<&mysql_async::ServerError> {
    match err {
        mysql_async::Error::Server(server) => Some(server),
        _ => None,
    }
}

/// An error as a client sees it: `ERROR code (state): message`, or the bare error.
pub(crate) fn describe(err: &mysql_async::Error) -> String {
    match server_error(err) {
        Some(e) => format!("ERROR {} ({}): {}", e.code, e.state, e.message),
        None => format!("no ERR packet: {err}"),
    }
}

/// Short form of a result for the FIELD lines: `ok`, `ERROR code`, or the bare error.
pub(crate) fn show<T>(result: &Result<T, mysql_async::Error>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(err) => match server_error(err) {
            Some(e) => format!("ERROR {} ({})", e.code, e.state),
            None => format!("{err}"),
        },
    }
}

/// Expects `result` to be an ERR packet with `code` and SQLSTATE `state`
/// whose message contains every one of `words`; returns the message.
pub(crate) fn expect_err<T>(
    result: Result<T, mysql_async::Error>,
    code: u16,
    state: &str,
    words: &[&str],
    what: &str,
) -> anyhow::Result<String> {
    let err = match result {
        Ok(_) => anyhow::bail!("{what}: succeeded, expected ERROR {code} ({state})"),
        Err(err) => err,
    };
    let server = server_error(&err)
        .with_context(|| format!("{what}: expected ERROR {code} ({state}), got {err}"))?;
    anyhow::ensure!(
        server.code == code && server.state == state,
        "{what}: expected ERROR {code} ({state}), got {}",
        describe(&err)
    );
    for word in words {
        anyhow::ensure!(
            server.message.contains(word),
            "{what}: the message {:?} does not say {word:?}",
            server.message
        );
    }
    Ok(server.message.clone())
}

/// Runs a query returning one integer and returns it (within the step limit).
pub(crate) async fn select_i64(conn: &mut Conn, sql: &str) -> anyhow::Result<i64> {
    within(conn.query_first::<i64, _>(sql))
        .await?
        .with_context(|| format!("{sql} failed"))?
        .with_context(|| format!("{sql} returned no row"))
}

/// The backend connection id behind `conn` (what `KILL` takes), as the
/// server reports it.
pub(crate) async fn backend_id(conn: &mut Conn) -> anyhow::Result<i64> {
    select_i64(conn, "SELECT CONNECTION_ID()").await
}

/// Kills connection `id` from a superuser connection to `db`.
pub(crate) async fn kill(db: &MariaDbServer, id: i64) -> anyhow::Result<()> {
    let mut admin = db.admin().await?;
    within(admin.query_drop(format!("KILL {id}")))
        .await?
        .with_context(|| format!("KILL {id}"))?;
    admin.disconnect().await?;
    Ok(())
}

/// Kills every connection of `user` on `db` (except the admin's own);
/// returns how many there were. A connection that ended meanwhile (1094,
/// unknown thread id) is not an error.
pub(crate) async fn kill_all_of(db: &MariaDbServer, user: &str) -> anyhow::Result<usize> {
    let mut admin = db.admin().await?;
    let ids: Vec<i64> = within(admin.exec(
        "SELECT id FROM information_schema.processlist WHERE user = ? AND id <> CONNECTION_ID()",
        (user,),
    ))
    .await??;
    for id in &ids {
        match within(admin.query_drop(format!("KILL {id}"))).await? {
            Ok(()) => {}
            Err(err) if server_error(&err).is_some_and(|e| e.code == 1094) => {}
            Err(err) => return Err(err).with_context(|| format!("KILL {id}")),
        }
    }
    admin.disconnect().await?;
    Ok(ids.len())
}

/// Heal events of pool `app` on Suture's /metrics: backends swapped under
/// idle sessions (`suture_session_heals_total`) plus requests replayed
/// invisibly (`suture_replays_total`, every reason).
pub(crate) async fn heal_events(suture: &SutureProc) -> anyhow::Result<f64> {
    let page = http::get(suture.admin_port(), "/metrics").await?.body;
    Ok(
        series_sum(&page, "suture_session_heals_total", &[("pool", "app")])
            + series_sum(&page, "suture_replays_total", &[("pool", "app")]),
    )
}

/// The sum of every series `name` with `labels` (others may vary) in a
/// Prometheus text page.
pub(crate) fn series_sum(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter_map(|line| http::series_value(line, name, labels))
        .sum()
}

/// Waits until `heal_events` exceeds `before`, up to `limit`; the last value.
pub(crate) async fn wait_heal_events_above(
    suture: &SutureProc,
    before: f64,
    limit: Duration,
) -> anyhow::Result<f64> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let now = heal_events(suture).await?;
        if now > before || std::time::Instant::now() >= deadline {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
