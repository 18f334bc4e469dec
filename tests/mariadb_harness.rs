//! Self-tests of the MariaDB harness (tests/support/mariadb_server.rs and
//! tests/support/raw_mysql.rs) against real servers it starts, and the
//! server facts Suture's MySQL healing rules rest on. Each fact is printed as
//! a `FACT` line (`cargo nextest run --test mariadb_harness --no-capture`).
//!
//! The facts themselves, with the raw bytes, are in the module doc of
//! tests/support/mariadb_server.rs. In short, for MariaDB 10.11: KILL of an
//! idle (or busy) connection and a clean shutdown send no byte and then FIN
//! (the ERR 1927 the server means to send, with sequence id 1, is written
//! after its own `shutdown(SHUT_RDWR)` and fails with EPIPE); `wait_timeout`
//! sends no byte and then RST (FIN with `pool-of-threads`); `KILL QUERY`
//! ends a result with ERR 1317 (70100) and keeps the connection; a SIGKILL
//! of the server is a FIN. No unsolicited ERR with sequence id 0 ever arrives.
//! The greeting's version carries the `5.5.5-` prefix, and there is no
//! `caching_sha2_password` server plugin.

mod support;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use mysql_async::prelude::Queryable as _;
use mysql_async::Conn;
use support::mariadb_server::{
    ADMIN_USER, APP_DB, APP_PASSWORD, APP_USER, ED25519_PASSWORD, ED25519_USER,
};
use support::raw_mysql::{parse_err, Closing, Ending, RawMysql, COM_PING, COM_QUERY};
use support::MariaDbServer;

/// How long a raw watch for the server's goodbye may take.
const WATCH: Duration = Duration::from_secs(8);
/// Time for a statement sent without waiting to start executing.
const SETTLE: Duration = Duration::from_millis(300);

async fn raw_app(server: &MariaDbServer) -> anyhow::Result<RawMysql> {
    RawMysql::connect_login(server.port(), APP_USER, APP_PASSWORD, APP_DB).await
}

/// A raw `app` connection busy in `SELECT SLEEP(30)`.
async fn raw_busy(server: &MariaDbServer) -> anyhow::Result<RawMysql> {
    let mut raw = raw_app(server).await?;
    raw.send_command(COM_QUERY, b"SELECT SLEEP(30)").await?;
    tokio::time::sleep(SETTLE).await;
    Ok(raw)
}

fn fact(what: &str, closing: &Closing) {
    println!("FACT {what}: {}", closing.describe());
}

/// The connection ended the way `ending` says without a single byte.
fn ensure_silent(what: &str, closing: &Closing, ending: &Ending) -> anyhow::Result<()> {
    fact(what, closing);
    ensure!(
        closing.bytes.is_empty(),
        "{what}: expected no bytes, got {}",
        closing.describe()
    );
    let same = match (ending, &closing.ending) {
        (Ending::Reset(_), Ending::Reset(_)) => true,
        (want, got) => want == got,
    };
    ensure!(
        same,
        "{what}: expected {ending:?}, got {}",
        closing.describe()
    );
    Ok(())
}

async fn kill(admin: &mut Conn, statement: &str, id: u32) -> anyhow::Result<()> {
    admin
        .query_drop(format!("{statement} {id}"))
        .await
        .with_context(|| format!("{statement} {id}"))
}

/// Waits until the server's error log contains `needle`.
async fn wait_for_log(server: &MariaDbServer, needle: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + WATCH;
    loop {
        let log = server.log_contents();
        if log.contains(needle) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "no {needle:?} in the error log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count_rows(conn: &mut Conn, table: &str) -> anyhow::Result<i64> {
    let n: Option<i64> = conn
        .query_first(format!("SELECT COUNT(*) FROM {table}"))
        .await?;
    n.context("COUNT(*) returned no row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_serves_app() -> anyhow::Result<()> {
    let started = Instant::now();
    let server = MariaDbServer::start().await?;
    println!(
        "FACT start: {} ms (template present or built)",
        started.elapsed().as_millis()
    );
    let mut app = server.connect_app().await?;
    app.query_drop("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20))")
        .await?;
    app.query_drop("INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, 'three')")
        .await?;
    let rows: Vec<(i32, String)> = app.query("SELECT id, name FROM t ORDER BY id").await?;
    ensure!(
        rows == [(1, "one".into()), (2, "two".into()), (3, "three".into())],
        "rows back: {rows:?}"
    );
    let (port, version, user): (u16, String, String) = app
        .query_first("SELECT @@port, @@version, CURRENT_USER()")
        .await?
        .context("no row")?;
    ensure!(
        port == server.port(),
        "@@port {port}, harness says {}",
        server.port()
    );
    ensure!(
        version.starts_with(server.version()) && version.contains("MariaDB"),
        "@@version {version:?} vs {}",
        server.version()
    );
    ensure!(user == "app@%", "CURRENT_USER() {user:?}");
    app.disconnect().await?;

    let raw = raw_app(&server).await?;
    let greeting = raw.greeting();
    println!(
        "FACT greeting: version {:?}, auth plugin {:?}, capabilities {:#010x}",
        greeting.server_version, greeting.auth_plugin, greeting.capabilities
    );
    ensure!(
        greeting.server_version.starts_with("5.5.5-"),
        "MariaDB's greeting carries the 5.5.5- prefix: {:?}",
        greeting.server_version
    );

    let mut admin = server.admin().await?;
    let who: Option<String> = admin.query_first("SELECT CURRENT_USER()").await?;
    ensure!(
        who.as_deref() == Some("root@%"),
        "admin is {who:?}, want {ADMIN_USER}@%"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_auth_plugins() -> anyhow::Result<()> {
    let server = MariaDbServer::start().await?;
    let mut admin = server.admin().await?;
    let plugins: Vec<(String, String)> = admin
        .query("SELECT user, plugin FROM mysql.user WHERE host = '%' ORDER BY user")
        .await?;
    println!("FACT accounts: {plugins:?}");
    ensure!(plugins.contains(&("app".into(), "mysql_native_password".into())));
    ensure!(plugins.contains(&("eduser".into(), "ed25519".into())));

    // MariaDB 10.11 has no caching_sha2_password server plugin at all.
    let available: Option<i64> = admin
        .query_first(
            "SELECT COUNT(*) FROM information_schema.ALL_PLUGINS \
             WHERE PLUGIN_NAME LIKE 'caching_sha2%' OR PLUGIN_LIBRARY LIKE 'caching_sha2%'",
        )
        .await?;
    ensure!(
        available == Some(0),
        "caching_sha2 plugins available: {available:?}"
    );
    let install = admin
        .query_drop("INSTALL SONAME 'caching_sha2_password'")
        .await;
    println!("FACT INSTALL SONAME 'caching_sha2_password': {install:?}");
    ensure!(
        install.is_err(),
        "caching_sha2_password installed on MariaDB?"
    );

    // The ed25519 user logs in with the mariadb CLI (it has the client plugin).
    let cli = std::path::Path::new("/usr/bin/mariadb");
    if cli.exists() {
        let out = std::process::Command::new(cli)
            .arg("--no-defaults")
            .args(["-h", "127.0.0.1", "-P", &server.port().to_string()])
            .args(["-u", ED25519_USER, &format!("-p{ED25519_PASSWORD}"), APP_DB])
            .args(["-N", "-e", "SELECT CURRENT_USER()"])
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && stdout.trim() == "eduser@%",
            "ed25519 login via the mariadb CLI: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_idle_connection_is_a_bare_fin() -> anyhow::Result<()> {
    // log_warnings 4 logs the errors the server fails to send to clients.
    let server = MariaDbServer::start_with(&["--log-warnings=4"]).await?;
    let mut admin = server.admin().await?;
    for statement in ["KILL", "KILL CONNECTION"] {
        let mut raw = raw_app(&server).await?;
        kill(&mut admin, statement, raw.connection_id()).await?;
        let closing = raw.read_until_close(WATCH).await;
        ensure_silent(
            &format!("{statement} of an idle connection"),
            &closing,
            &Ending::Fin,
        )?;
    }
    // The server did try to write ERR 1927 after shutting the socket down; the victim's
    // thread logs that failure a moment after the FIN (how soon depends on the machine's
    // load, so this is reported, not required).
    let logged = wait_for_log(&server, "[ERROR] mariadbd: Connection was killed")
        .await
        .is_ok();
    println!("FACT the killed connection's unsent ERR 1927 is in the error log: {logged}");

    let mut raw = raw_busy(&server).await?;
    kill(&mut admin, "KILL", raw.connection_id()).await?;
    let closing = raw.read_until_close(WATCH).await;
    ensure_silent(
        "KILL of a connection in SELECT SLEEP(30)",
        &closing,
        &Ending::Fin,
    )?;

    // What a driver sees: nothing until its next command, which fails.
    let mut conn = server.connect_app().await?;
    kill(&mut admin, "KILL", conn.id()).await?;
    tokio::time::sleep(SETTLE).await;
    let next = conn.query_drop("SELECT 1").await;
    println!("FACT mysql_async after KILL of its idle connection: {next:?}");
    ensure!(next.is_err(), "the killed connection still answered");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_query_ends_the_result_with_err_1317() -> anyhow::Result<()> {
    let server = MariaDbServer::start().await?;
    let mut admin = server.admin().await?;
    let mut raw = raw_busy(&server).await?;
    kill(&mut admin, "KILL QUERY", raw.connection_id()).await?;
    let closing = raw.read_until_close(Duration::from_secs(1)).await;
    fact("KILL QUERY of SELECT SLEEP(30)", &closing);
    ensure!(
        closing.ending == Ending::Open,
        "connection closed: {}",
        closing.describe()
    );
    let packets = closing.packets()?;
    let seqs: Vec<u8> = packets.iter().map(|p| p.seq).collect();
    ensure!(seqs == [1, 2, 3, 4], "sequence ids {seqs:?}");
    let err = packets
        .last()
        .and_then(|p| parse_err(&p.payload))
        .context("last packet is not ERR")?;
    ensure!(
        err.code == 1317 && err.sqlstate.as_deref() == Some("70100"),
        "got {err:?}"
    );
    // The connection still serves.
    raw.send_command(COM_PING, b"").await?;
    let pong = raw.read_packet(WATCH).await?;
    ensure!(
        pong.seq == 1 && pong.payload.first() == Some(&0x00),
        "ping: {pong:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_is_a_bare_rst() -> anyhow::Result<()> {
    let server = MariaDbServer::start().await?;
    let mut raw = raw_app(&server).await?;
    raw.query_ok("SET SESSION wait_timeout = 2").await?;
    let closing = raw.read_until_close(WATCH).await;
    ensure_silent(
        "wait_timeout = 2 expiring",
        &closing,
        &Ending::Reset(String::new()),
    )?;
    ensure!(
        closing.after >= Duration::from_millis(1900) && closing.after < Duration::from_secs(4),
        "closed after {:?}",
        closing.after
    );

    // set_global reaches sessions that start afterwards.
    server.set_global("wait_timeout = 2").await?;
    let mut conn = server.connect_app().await?;
    let session: Option<u64> = conn.query_first("SELECT @@session.wait_timeout").await?;
    ensure!(session == Some(2), "new session's wait_timeout {session:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_with_thread_pool_is_a_bare_fin() -> anyhow::Result<()> {
    let server = MariaDbServer::start_with(&["--thread-handling=pool-of-threads"]).await?;
    let mut raw = raw_app(&server).await?;
    raw.query_ok("SET SESSION wait_timeout = 1").await?;
    let closing = raw.read_until_close(WATCH).await;
    ensure_silent(
        "wait_timeout = 1 expiring (pool-of-threads)",
        &closing,
        &Ending::Fin,
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_a_bare_fin_to_idle_and_busy() -> anyhow::Result<()> {
    let server = MariaDbServer::start().await?;
    let mut app = server.connect_app().await?;
    app.query_drop("CREATE TABLE kept (id INT PRIMARY KEY)")
        .await?;
    app.query_drop("INSERT INTO kept VALUES (1), (2)").await?;
    drop(app);
    let mut idle = raw_app(&server).await?;
    let mut busy = raw_busy(&server).await?;
    let started = Instant::now();
    server.stop().await?;
    println!("FACT clean stop: {} ms", started.elapsed().as_millis());
    let closing = idle.read_until_close(WATCH).await;
    ensure_silent("SIGTERM shutdown, idle connection", &closing, &Ending::Fin)?;
    let closing = busy.read_until_close(WATCH).await;
    ensure_silent(
        "SIGTERM shutdown, connection in SELECT SLEEP(30)",
        &closing,
        &Ending::Fin,
    )?;
    ensure!(!server.is_running(), "still running after stop");

    let port = server.port();
    server.start_again().await?;
    ensure!(server.port() == port, "port changed");
    let mut idle = raw_app(&server).await?;
    let mut admin = server.admin().await?;
    // The statement's own connection is cut too; its result does not matter.
    let _ = admin.query_drop("SHUTDOWN").await;
    let closing = idle.read_until_close(WATCH).await;
    ensure_silent(
        "SHUTDOWN statement, idle connection",
        &closing,
        &Ending::Fin,
    )?;
    let deadline = Instant::now() + WATCH;
    while server.is_running() {
        ensure!(
            Instant::now() < deadline,
            "server still running after SHUTDOWN"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.start_again().await?;
    let mut app = server.connect_app().await?;
    ensure!(
        count_rows(&mut app, "kept").await? == 2,
        "rows lost over two shutdowns"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_crash_keep_port_and_data() -> anyhow::Result<()> {
    let server = MariaDbServer::start().await?;
    let port = server.port();
    let mut app = server.connect_app().await?;
    app.query_drop("CREATE TABLE t (id INT PRIMARY KEY)")
        .await?;
    app.query_drop("INSERT INTO t VALUES (1)").await?;
    drop(app);

    let started = Instant::now();
    server.restart().await?;
    println!(
        "FACT restart (clean stop + start): {} ms",
        started.elapsed().as_millis()
    );
    ensure!(server.port() == port, "port changed over restart");
    let mut app = server.connect_app().await?;
    ensure!(
        count_rows(&mut app, "t").await? == 1,
        "row lost over restart"
    );
    app.query_drop("INSERT INTO t VALUES (2)").await?;
    drop(app);

    let mut idle = raw_app(&server).await?;
    let pid = server.pid().context("no pid")?;
    server.kill()?;
    let closing = idle.read_until_close(WATCH).await;
    ensure_silent(
        "SIGKILL of the server, idle connection",
        &closing,
        &Ending::Fin,
    )?;
    let started = Instant::now();
    server.start_again().await?;
    println!(
        "FACT start after SIGKILL (crash recovery): {} ms",
        started.elapsed().as_millis()
    );
    ensure!(server.pid() != Some(pid), "same pid after kill");
    let mut app = server.connect_app().await?;
    ensure!(
        count_rows(&mut app, "t").await? == 2,
        "committed row lost in the crash"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_servers_in_one_process() -> anyhow::Result<()> {
    let started = Instant::now();
    let servers =
        futures_util::future::try_join_all((0..3).map(|_| MariaDbServer::start())).await?;
    println!(
        "FACT three servers started together: {} ms",
        started.elapsed().as_millis()
    );
    let mut ports: Vec<u16> = servers.iter().map(MariaDbServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    ensure!(ports.len() == 3, "ports shared: {ports:?}");
    for (i, server) in servers.iter().enumerate() {
        let mut app = server.connect_app().await?;
        app.query_drop("CREATE TABLE mine (n INT)").await?;
        app.query_drop(format!("INSERT INTO mine VALUES ({i})"))
            .await?;
    }
    servers[1].kill()?;
    for (i, server) in [(0, &servers[0]), (2, &servers[2])] {
        let mut app = server.connect_app().await?;
        let n: Option<i32> = app.query_first("SELECT n FROM mine").await?;
        ensure!(
            n == Some(i),
            "server {i} holds {n:?}: data directories shared?"
        );
    }
    Ok(())
}
