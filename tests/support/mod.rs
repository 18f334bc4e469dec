//! Shared harness for integration tests: real PostgreSQL and MariaDB servers
//! started per test, the real `suture` binary, raw protocol clients for bad
//! input and exact wire checks, and
//! [`Target`], which points a test at Suture or (with
//! `SUTURE_TEST_DIRECT=1`) straight at PostgreSQL.
//!
//! Each integration test file includes this with `mod support;` and uses
//! only part of it.
#![allow(dead_code, unused_imports)]

pub(crate) mod fault_relay;
pub(crate) mod http;
pub(crate) mod mariadb_server;
pub(crate) mod mysql_rig;
pub(crate) mod pg_server;
pub(crate) mod raw_client;
pub(crate) mod raw_mysql;
pub(crate) mod replies;
pub(crate) mod rig;
pub(crate) mod suture_proc;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};

use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

pub(crate) use mariadb_server::{connect_mysql, MariaDbServer};
pub(crate) use pg_server::{connect_dsn, dsn_for, PgServer};
pub(crate) use raw_client::{find_sqlstate, RawClient};
pub(crate) use suture_proc::{suture_config_for, suture_config_with, SutureProc};

/// A free TCP port on 127.0.0.1 (bound, read, released), never one this process was given
/// before: the kernel may hand out a just-released port again, and a config that got the same
/// port for its pool and its admin listener is refused (seen in CI).
pub(crate) fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|err| panic!("cannot bind an ephemeral port: {err}"));
        if given.insert(port) {
            return port;
        }
    }
}

/// True when `SUTURE_TEST_DIRECT=1`: tests talk to PostgreSQL directly.
pub(crate) fn direct_mode() -> bool {
    std::env::var("SUTURE_TEST_DIRECT").is_ok_and(|v| v == "1")
}

/// What a test talks to: Suture in front of its own PostgreSQL, or that
/// PostgreSQL itself in direct mode. Field order matters for drop: Suture
/// goes first.
pub(crate) struct Target {
    pub(crate) suture: Option<SutureProc>,
    pub(crate) pg: PgServer,
}

impl Target {
    /// A PostgreSQL and (unless direct) Suture with the default config.
    pub(crate) async fn start() -> anyhow::Result<Target> {
        Self::start_with("").await
    }

    /// Like [`Target::start`], with extra `[pools.app]` lines for Suture.
    pub(crate) async fn start_with(pool_extra: &str) -> anyhow::Result<Target> {
        let pg = PgServer::start().await?;
        let suture = if direct_mode() {
            None
        } else {
            let cfg = suture_config_with(&pg, free_port(), pool_extra);
            Some(SutureProc::start(&cfg).await?)
        };
        Ok(Target { suture, pg })
    }

    pub(crate) fn is_direct(&self) -> bool {
        self.suture.is_none()
    }

    /// The port clients connect to.
    pub(crate) fn port(&self) -> u16 {
        match &self.suture {
            Some(s) => s.port(),
            None => self.pg.port(),
        }
    }

    pub(crate) fn dsn(&self, user: &str, password: &str, db: &str) -> String {
        dsn_for(self.port(), user, password, db)
    }

    /// A tokio-postgres config for `app`/`app-secret` on database `app`.
    pub(crate) fn app_config(&self) -> Config {
        let mut cfg = Config::new();
        cfg.host("127.0.0.1")
            .port(self.port())
            .user("app")
            .password("app-secret")
            .dbname("app")
            .connect_timeout(std::time::Duration::from_secs(10));
        cfg
    }

    /// Connects as `app` to database `app`.
    pub(crate) async fn connect_app(&self) -> anyhow::Result<Client> {
        self.connect("app", "app-secret", "app").await
    }

    pub(crate) async fn connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> anyhow::Result<Client> {
        connect_dsn(&self.dsn(user, password, db)).await
    }

    /// Connects as `app` and returns the client plus a channel carrying the
    /// connection's notifications and notices.
    pub(crate) async fn connect_app_with_messages(
        &self,
    ) -> anyhow::Result<(Client, tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>)> {
        connect_with_messages(&self.app_config()).await
    }

    /// A fresh client runs `SELECT 1` successfully: the proxy still serves.
    pub(crate) async fn assert_serves(&self) -> anyhow::Result<()> {
        let client = self.connect_app().await?;
        let row = client.query_one("SELECT 1::int4", &[]).await?;
        let one: i32 = row.get(0);
        anyhow::ensure!(one == 1, "SELECT 1 returned {one}");
        Ok(())
    }

    /// Log of Suture (or PostgreSQL in direct mode), for failure messages.
    pub(crate) fn log_contents(&self) -> String {
        match &self.suture {
            Some(s) => s.log_contents(),
            None => self.pg.log_contents(),
        }
    }
}

/// Connects with `cfg` and forwards async messages to a channel.
pub(crate) async fn connect_with_messages(
    cfg: &Config,
) -> anyhow::Result<(Client, tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>)> {
    let (client, mut connection) = cfg.connect(NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(msg)) = futures_util::StreamExt::next(&mut messages).await {
            if tx.send(msg).is_err() {
                // Nobody listens any more; keep driving the connection.
                continue;
            }
        }
    });
    Ok((client, rx))
}

/// Prints why a Suture-specific check is skipped in direct mode.
pub(crate) fn skip_note(test: &str, why: &str) {
    eprintln!("note: {test}: {why} (SUTURE_TEST_DIRECT=1), skipped");
}
