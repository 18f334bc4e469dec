//! Issue 13, item 1: pools listening on a Unix-domain socket. A PostgreSQL client
//! (tokio-postgres with `host=/dir`, as libpq finds `<dir>/.s.PGSQL.<port>`) and a MySQL
//! client (mysql_async with a socket path) run queries through Suture; the SSLRequest is
//! answered 'N' and a cancel request works over the socket; a backend killed under a Unix
//! client is healed; `trust` works on a socket; the socket file gets `listen_mode`, replaces a
//! stale file, refuses a live one or one that is not a socket (left alone), names a missing
//! directory, and is removed at shutdown.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context as _};
use mysql_async::prelude::Queryable as _;
use support::mariadb_server::{APP_DB, APP_PASSWORD, APP_USER};
use support::pg_server::SUPERUSER_PASSWORD;
use support::rig::{finish, select_int, within};
use support::suture_proc::mysql_config;
use support::{free_port, suture_config_with, MariaDbServer, PgServer, SutureProc};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;

/// How long a start that must fail may take.
const FAILED_START: Duration = Duration::from_secs(10);

/// The shared PostgreSQL test config with the pool listening on `socket` instead of TCP,
/// plus `pool_extra` lines.
fn pg_unix_config(pg: &PgServer, socket: &Path, pool_extra: &str) -> anyhow::Result<String> {
    let port = free_port();
    let cfg = suture_config_with(pg, port, pool_extra);
    let tcp = format!("listen = \"127.0.0.1:{port}\"");
    ensure!(cfg.contains(&tcp), "config has no `{tcp}` line");
    Ok(cfg.replace(&tcp, &format!("listen = \"unix:{}\"", socket.display())))
}

/// A directory for the socket and the path libpq looks for with `host=DIR port=PORT`.
fn socket_dir(port: u16) -> anyhow::Result<(TempDir, PathBuf)> {
    let dir = tempfile::Builder::new().prefix("suture-sock-").tempdir()?;
    let path = dir.path().join(format!(".s.PGSQL.{port}"));
    Ok((dir, path))
}

/// tokio-postgres settings for `app` through the socket in `dir` (`host=DIR port=PORT`).
fn app_over_socket(dir: &Path, port: u16) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(dir)
        .port(port)
        .user("app")
        .password("app-secret")
        .dbname("app")
        .connect_timeout(Duration::from_secs(10));
    cfg
}

async fn connect(cfg: &tokio_postgres::Config) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = within(cfg.connect(NoTls)).await??;
    tokio::spawn(connection);
    Ok(client)
}

fn mode_of(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::symlink_metadata(path)?.permissions().mode() & 0o777)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_client_queries_over_the_socket() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let port = 6432;
    let (dir, path) = socket_dir(port)?;
    let suture = SutureProc::start(&pg_unix_config(&pg, &path, "")?).await?;
    let result = async {
        let meta = std::fs::symlink_metadata(&path)?;
        ensure!(
            meta.file_type().is_socket(),
            "{} is not a socket",
            path.display()
        );
        ensure!(
            mode_of(&path)? == 0o666,
            "default mode {:o}",
            mode_of(&path)?
        );
        let client = connect(&app_over_socket(dir.path(), port)).await?;
        ensure!(select_int(&client, "SELECT 41 + 1").await? == 42);
        let rows = within(client.query("SELECT generate_series(1, 1000)", &[])).await??;
        ensure!(rows.len() == 1000, "{} rows", rows.len());
        // Prepared statements with parameters, over the same socket.
        let stmt = within(client.prepare("SELECT $1::int4 * 2")).await??;
        let row = within(client.query_one(&stmt, &[&21i32])).await??;
        ensure!(row.get::<_, i32>(0) == 42);
        Ok(())
    }
    .await;
    finish(&suture, result)
}

/// libpq does not ask for TLS over a socket, but a client may: it is told 'N' and logs in on
/// the same connection. A cancel request over the socket reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_request_and_cancel_over_the_socket() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let port = 6433;
    let (dir, path) = socket_dir(port)?;
    let suture = SutureProc::start(&pg_unix_config(&pg, &path, "")?).await?;
    let result = async {
        let mut stream = tokio::net::UnixStream::connect(&path).await?;
        // SSLRequest: length 8, code 80877103.
        stream
            .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await?;
        let mut answer = [0u8; 1];
        within(stream.read_exact(&mut answer)).await??;
        ensure!(answer == *b"N", "SSLRequest answered {answer:?}");
        let mut cfg = app_over_socket(dir.path(), port);
        cfg.ssl_mode(SslMode::Disable);
        let (client, connection) = within(cfg.connect_raw(stream, NoTls)).await??;
        tokio::spawn(connection);
        ensure!(select_int(&client, "SELECT 7").await? == 7);

        let client = connect(&app_over_socket(dir.path(), port)).await?;
        let token = client.cancel_token();
        let sleeper = tokio::spawn(async move {
            let outcome = client.simple_query("SELECT pg_sleep(30)").await;
            (client, outcome)
        });
        // Until it lands: a cancel that arrives before the query started cancels nothing.
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if sleeper.is_finished() {
                break;
            }
            within(token.cancel_query(NoTls))
                .await?
                .context("cancel request over the socket")?;
        }
        let (client, outcome) = within(sleeper).await??;
        let err = match outcome {
            Ok(_) => anyhow::bail!("pg_sleep(30) was not cancelled"),
            Err(err) => err,
        };
        let code = err.as_db_error().map(|db| db.code().code().to_owned());
        ensure!(code.as_deref() == Some("57014"), "cancelled with {err:?}");
        ensure!(select_int(&client, "SELECT 8").await? == 8);
        Ok(())
    }
    .await;
    finish(&suture, result)
}

/// The backend of an idle Unix client is killed; its next query is answered on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_client_is_healed() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let port = 6434;
    let (dir, path) = socket_dir(port)?;
    let suture = SutureProc::start(&pg_unix_config(&pg, &path, "")?).await?;
    let result = async {
        let client = connect(&app_over_socket(dir.path(), port)).await?;
        let pid = select_int(&client, "SELECT pg_backend_pid()").await?;
        let su = pg.connect("postgres", SUPERUSER_PASSWORD, "app").await?;
        let row = within(su.query_one("SELECT pg_terminate_backend($1)", &[&pid])).await??;
        ensure!(
            row.get::<_, bool>(0),
            "pg_terminate_backend({pid}) returned false"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let three = select_int(&client, "SELECT 3")
            .await
            .with_context(|| format!("after terminating backend {pid}"))?;
        ensure!(three == 3);
        let new_pid = select_int(&client, "SELECT pg_backend_pid()").await?;
        ensure!(new_pid != pid, "still on backend {pid}");
        Ok(())
    }
    .await;
    finish(&suture, result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_on_a_socket_and_the_configured_mode() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let port = 6435;
    let (dir, path) = socket_dir(port)?;
    let extra = "client_auth = \"trust\"\nlisten_mode = \"0600\"";
    let suture = SutureProc::start(&pg_unix_config(&pg, &path, extra)?).await?;
    let result = async {
        ensure!(mode_of(&path)? == 0o600, "mode {:o}", mode_of(&path)?);
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(dir.path())
            .port(port)
            .user("app")
            .dbname("app");
        let client = connect(&cfg)
            .await
            .context("trust login without a password")?;
        ensure!(select_int(&client, "SELECT 5").await? == 5);
        Ok(())
    }
    .await;
    finish(&suture, result)
}

/// MariaDB and Suture with a MySQL pool on `DIR/mysql.sock`.
async fn mysql_over_socket() -> anyhow::Result<(MariaDbServer, TempDir, PathBuf, SutureProc)> {
    let db = MariaDbServer::start().await?;
    let dir = tempfile::Builder::new().prefix("suture-sock-").tempdir()?;
    let path = dir.path().join("mysql.sock");
    let port = free_port();
    let cfg = mysql_config(db.port(), port);
    let tcp = format!("listen = \"127.0.0.1:{port}\"");
    ensure!(cfg.contains(&tcp), "config has no `{tcp}` line");
    let cfg = cfg.replace(&tcp, &format!("listen = \"unix:{}\"", path.display()));
    let suture = SutureProc::start(&cfg).await?;
    Ok((db, dir, path, suture))
}

/// mysql_async as `app` through the socket at `path`.
async fn mysql_connect(path: &Path) -> anyhow::Result<mysql_async::Conn> {
    let opts = mysql_async::OptsBuilder::default()
        .socket(Some(path.display().to_string()))
        .user(Some(APP_USER))
        .pass(Some(APP_PASSWORD))
        .db_name(Some(APP_DB));
    Ok(within(mysql_async::Conn::new(opts)).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_client_queries_over_the_socket() -> anyhow::Result<()> {
    let (_db, _dir, path, suture) = mysql_over_socket().await?;
    let result = async {
        let mut conn = mysql_connect(&path).await?;
        let sum: Option<i64> = within(conn.query_first("SELECT 40 + 2")).await??;
        ensure!(sum == Some(42), "SELECT 40 + 2 gave {sum:?}");
        // Server-side prepared statements over the socket too.
        let doubled: Option<i64> = within(conn.exec_first("SELECT ? * 2", (21i64,))).await??;
        ensure!(doubled == Some(42), "prepared SELECT gave {doubled:?}");
        let user: Option<String> = within(conn.query_first("SELECT CURRENT_USER()")).await??;
        ensure!(
            user.as_deref().is_some_and(|u| u.starts_with("app@")),
            "{user:?}"
        );
        within(conn.disconnect()).await??;
        Ok(())
    }
    .await;
    finish(&suture, result)
}

/// `KILL` of the backend of an idle MySQL client on the socket: its next query is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_unix_client_is_healed() -> anyhow::Result<()> {
    let (db, _dir, path, suture) = mysql_over_socket().await?;
    let result = async {
        let mut conn = mysql_connect(&path).await?;
        let id: Option<u64> = within(conn.query_first("SELECT CONNECTION_ID()")).await??;
        let id = id.context("no CONNECTION_ID()")?;
        let mut admin = db.admin().await?;
        within(admin.query_drop(format!("KILL {id}"))).await??;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let three: Option<i64> = within(conn.query_first("SELECT 3"))
            .await?
            .with_context(|| format!("after KILL {id}"))?;
        ensure!(three == Some(3), "SELECT 3 gave {three:?}");
        let new_id: Option<u64> = within(conn.query_first("SELECT CONNECTION_ID()")).await??;
        ensure!(new_id != Some(id), "still on killed backend {id}");
        Ok(())
    }
    .await;
    finish(&suture, result)
}

/// A socket file left by a Suture that was killed is replaced; at shutdown the new one is
/// removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_is_replaced_and_removed_at_shutdown() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let port = 6436;
    let (dir, path) = socket_dir(port)?;
    drop(std::os::unix::net::UnixListener::bind(&path)?);
    ensure!(path.exists(), "the stale socket file was not left behind");
    let mut suture = SutureProc::start(&pg_unix_config(&pg, &path, "")?).await?;
    let result = async {
        let client = connect(&app_over_socket(dir.path(), port)).await?;
        ensure!(select_int(&client, "SELECT 1").await? == 1);
        ensure!(
            suture
                .log_contents()
                .contains("removed a stale socket file"),
            "no log line about the stale file"
        );
        drop(client);
        suture.signal("TERM")?;
        let code = suture.wait_exit(Duration::from_secs(15)).await?;
        ensure!(code == Some(0), "exit code {code:?}");
        ensure!(!path.exists(), "{} left behind at shutdown", path.display());
        Ok(())
    }
    .await;
    finish(&suture, result)
}

/// A second Suture on the socket of a running one fails to start, says why, and leaves the
/// first one serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_socket_makes_start_fail() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let port = 6437;
    let (dir, path) = socket_dir(port)?;
    let suture = SutureProc::start(&pg_unix_config(&pg, &path, "")?).await?;
    let result = async {
        let (code, log) =
            SutureProc::run_to_exit(&pg_unix_config(&pg, &path, "")?, FAILED_START).await?;
        ensure!(code.is_some_and(|c| c != 0), "second start exited {code:?}");
        ensure!(
            log.contains("pools.app.listen: cannot listen on unix:")
                && log.contains("another process is listening on this socket"),
            "log of the failed start:\n{log}"
        );
        let client = connect(&app_over_socket(dir.path(), port)).await?;
        ensure!(select_int(&client, "SELECT 2").await? == 2);
        Ok(())
    }
    .await;
    finish(&suture, result)
}

/// A path that is not a socket is never deleted; a missing directory is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_a_socket_or_no_directory_makes_start_fail() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let (dir, path) = socket_dir(6438)?;
    std::fs::write(&path, "not a socket")?;
    let (code, log) =
        SutureProc::run_to_exit(&pg_unix_config(&pg, &path, "")?, FAILED_START).await?;
    ensure!(
        code.is_some_and(|c| c != 0),
        "start over a file exited {code:?}"
    );
    ensure!(
        log.contains("the path exists and is not a socket (a regular file)"),
        "log:\n{log}"
    );
    ensure!(
        std::fs::read_to_string(&path)? == "not a socket",
        "the file was touched"
    );

    let missing = dir.path().join("missing");
    let socket = missing.join("s.sock");
    let (code, log) =
        SutureProc::run_to_exit(&pg_unix_config(&pg, &socket, "")?, FAILED_START).await?;
    ensure!(
        code.is_some_and(|c| c != 0),
        "start without a directory exited {code:?}"
    );
    ensure!(
        log.contains(&format!(
            "the directory {} does not exist",
            missing.display()
        )),
        "log:\n{log}"
    );
    ensure!(!missing.exists(), "the directory was created");
    Ok(())
}
