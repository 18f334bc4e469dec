//! A private MariaDB server per test: a copy of a once-built template data
//! directory, started with `mariadbd --no-defaults` on a free loopback port,
//! owned by the test (the MySQL-protocol twin of [`super::pg_server`]).
//!
//! The template is built by the first test process that needs it, with
//! `mariadb-install-db` and an SQL file for the users below, in a unique
//! directory that is renamed into place (`suture-mariadb-template-<version>-v<N>`
//! in the system temp directory), so parallel test processes never see a
//! half-built template; a process that loses the rename race uses the winner's.
//!
//! When the tests run as root the server runs as the `mysql` OS user: the
//! copy is chowned to it and `mariadbd --user=mysql` drops privileges itself.
//! That keeps the spawned child the server process itself (no `runuser`
//! wrapper in between), so SIGTERM, SIGKILL and `wait` reach the server
//! directly; `--user=root` is only the fallback for a machine without a
//! `mysql` account. As another user the server runs as that user.
//!
//! Accounts in the template (all reachable over TCP from 127.0.0.1; the server
//! runs with `--skip-name-resolve`, so `localhost` accounts match only the
//! Unix socket):
//! - [`ADMIN_USER`]`@'%'` / [`ADMIN_PASSWORD`]: every privilege, `WITH GRANT OPTION`.
//! - `app@'%'` / `app-secret`, `mysql_native_password`, every privilege on
//!   database `app` (MySQL has no database owner; this is the equivalent).
//! - `eduser@'%'` / `ed-secret`, `ed25519` (the `auth_ed25519` plugin ships
//!   with the server package; the `mariadb` CLI has the client plugin).
//! - No `caching_sha2_password` user: MariaDB 10.11 has no such server plugin
//!   (only the client library ships one); `mariadb_harness` checks that.
//!   MySQL 8 behaviour is unit-tested on packets instead.
//!
//! # What MariaDB 10.11 sends when it drops a connection
//!
//! Measured on 10.11.19 (Debian 12), default `thread_handling =
//! one-thread-per-connection`, with the raw socket of [`super::raw_mysql`]
//! after a login and nothing more ("idle"); `tests/mariadb_harness.rs` asserts
//! each line, and `strace -f` of mariadbd showed the syscalls behind them.
//! Suture's MySQL healing rules rest on these facts.
//!
//! | event | bytes on the wire | then |
//! |-------|-------------------|------|
//! | `KILL id` / `KILL CONNECTION id`, idle | none | FIN |
//! | `KILL id` while in `SELECT SLEEP(30)` | none | FIN |
//! | `KILL QUERY id` while in `SELECT SLEEP(30)` | column count (seq 1), column def (seq 2), EOF (seq 3), then `28 00 00 04 ff 25 05 23 37 30 31 30 30` "Query execution was interrupted": ERR 1317, SQLSTATE 70100, **seq 4** | stays open, serves |
//! | `wait_timeout` expires | none | **RST** (`SO_LINGER {1, 0}`, then close) |
//! | `wait_timeout` expires, `thread_handling = pool-of-threads` | none | FIN, up to ~0.5 s late |
//! | clean shutdown (SIGTERM or `SHUTDOWN`), idle or busy | none | FIN |
//! | SIGKILL of mariadbd | none | FIN (the kernel closes the sockets) |
//!
//! On KILL and on shutdown the server *does* try to send ERR 1927
//! `Connection was killed` (`1e 00 00 01 ff 87 07 23 37 30 31 30 30 43 6f 6e
//! ...`: 30-byte payload, **sequence id 1**, SQLSTATE 70100), but only after
//! the killing thread (or, at shutdown, the main thread) has already called
//! `shutdown(fd, SHUT_RDWR)` on the victim's socket, so the write fails with
//! EPIPE and never reaches the client; the error log shows it as `[ERROR]
//! mariadbd: Connection was killed` with `log_warnings >= 4`. The order is
//! fixed (the victim's thread wakes up *because* of the shutdown), so this is
//! not a race that sometimes delivers the ERR. Consequences for Suture:
//! MariaDB 10.11 never sends an unsolicited ERR with sequence id 0 (and the
//! ERR it means to send would carry sequence id 1); an idle MariaDB backend's
//! death is a FIN or an RST with no bytes, so DESIGN §3 rules 1–2 (never
//! sent, zero bytes accepted) and retiring connections before `wait_timeout`
//! carry the load, and an RST must be read as "closed", like a FIN.
//!
//! Also measured: the greeting's server version is `5.5.5-10.11.19-MariaDB-0+deb12u1`
//! (the `5.5.5-` prefix), its default auth plugin `mysql_native_password`;
//! `mysql_async` notices a killed idle connection only at its next command,
//! which fails with `Io(UnexpectedEof, "connection closed")`.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use mysql_async::prelude::Queryable as _;
use mysql_async::{Conn, Opts, OptsBuilder};
use tempfile::TempDir;

use super::free_port;
use super::pg_server::{is_root, run_checked};

/// Bumped whenever the template's contents or install options change, so a
/// stale template left in the temp dir by an older harness is never reused.
const TEMPLATE_VERSION: u32 = 1;

/// The superuser reachable over TCP.
pub(crate) const ADMIN_USER: &str = "root";
pub(crate) const ADMIN_PASSWORD: &str = "root-secret";
/// The application user and its database.
pub(crate) const APP_USER: &str = "app";
pub(crate) const APP_PASSWORD: &str = "app-secret";
pub(crate) const APP_DB: &str = "app";
/// A user of the `ed25519` plugin.
pub(crate) const ED25519_USER: &str = "eduser";
pub(crate) const ED25519_PASSWORD: &str = "ed-secret";

/// How long a start (including crash recovery) or a clean stop may take.
const START_LIMIT: Duration = Duration::from_secs(60);
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// How long one connection attempt of [`connect_mysql`] may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// The line mariadbd logs once it listens.
const READY_LINE: &str = "ready for connections";

/// Runs first in the bootstrap that `mariadb-install-db --extra-file` does:
/// the bootstrap runs with `--skip-grant-tables`, and `FLUSH PRIVILEGES`
/// loads the grant tables so that CREATE USER works.
const TEMPLATE_SQL: &str = "FLUSH PRIVILEGES;
CREATE USER 'root'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('root-secret');
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
CREATE DATABASE app;
CREATE USER 'app'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('app-secret');
GRANT ALL PRIVILEGES ON app.* TO 'app'@'%';
INSTALL SONAME 'auth_ed25519';
CREATE USER 'eduser'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('ed-secret');
GRANT ALL PRIVILEGES ON app.* TO 'eduser'@'%';
";

/// InnoDB settings that must be the same for the install and every start.
const INNODB_SIZES: [&str; 2] = ["--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M"];

/// Small, fast settings for CI. `innodb_flush_log_at_trx_commit = 2` writes
/// the log to the OS at every commit, so a SIGKILL of the server (not of the
/// machine) loses no committed transaction: kill tests rely on that.
const SERVER_SETTINGS: [&str; 12] = [
    "--skip-name-resolve",
    "--max-connections=200",
    "--performance-schema=OFF",
    "--innodb-flush-log-at-trx-commit=2",
    "--innodb-doublewrite=0",
    "--innodb-temp-data-file-path=ibtmp1:4M:autoextend",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
    // Room for the 16 MiB+ (continuation packet) tests.
    "--max-allowed-packet=64M",
    "--table-open-cache=200",
    "--skip-log-bin",
    "--log-warnings=2",
];

/// Serialises template building inside one process (`cargo test` runs tests
/// as threads); across processes the rename does the job.
static TEMPLATE_LOCK: Mutex<()> = Mutex::new(());

/// A running (or stopped) MariaDB owned by one test; killed on drop.
pub(crate) struct MariaDbServer {
    dir: TempDir,
    port: u16,
    bin: MariaDbBins,
    version: String,
    /// Extra mariadbd options of [`MariaDbServer::start_with`], kept for restarts.
    extra_args: Vec<String>,
    /// The running mariadbd, if any.
    child: Mutex<Option<Child>>,
}

/// Paths of the server binaries in use.
#[derive(Debug, Clone)]
struct MariaDbBins {
    server: PathBuf,
    install_db: PathBuf,
}

impl MariaDbServer {
    /// Copies the template and starts a server on a free port.
    pub(crate) async fn start() -> anyhow::Result<MariaDbServer> {
        Self::start_with(&[]).await
    }

    /// Like [`MariaDbServer::start`], with extra mariadbd options after the
    /// harness's own (a later option wins), e.g. `--thread-handling=pool-of-threads`.
    /// They apply to every later start of this server too.
    pub(crate) async fn start_with(extra_args: &[&str]) -> anyhow::Result<MariaDbServer> {
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || Self::start_blocking(extra_args)).await?
    }

    fn start_blocking(extra_args: Vec<String>) -> anyhow::Result<MariaDbServer> {
        let bin = MariaDbBins::find()?;
        let version = server_version(&bin.server)?;
        let template = ensure_template(&bin, &version)?;
        let dir = tempfile::Builder::new()
            .prefix("suture-mariadb-")
            .tempdir()?;
        run_checked(
            Command::new("cp")
                .arg("-a")
                .arg(&template)
                .arg(dir.path().join("data")),
        )?;
        std::fs::create_dir(dir.path().join("tmp"))?;
        chown_to_server_user(dir.path(), true)?;
        let mut server = MariaDbServer {
            dir,
            port: 0,
            bin,
            version,
            extra_args,
            child: Mutex::new(None),
        };
        // A port can be taken by someone else between probing and binding:
        // retry on another port when that is why the start failed.
        let mut attempts = 0;
        loop {
            server.port = free_port();
            match server.launch().run() {
                Ok(child) => {
                    *server.lock_child() = Some(child);
                    return Ok(server);
                }
                Err(err) if attempts < 4 && server.bind_failed() => {
                    let _ = err;
                    attempts += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// TCP port on 127.0.0.1.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The server's version as `mariadbd --version` prints it (e.g. `10.11.19`).
    pub(crate) fn version(&self) -> &str {
        &self.version
    }

    /// The server's data directory.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Directory holding the data dir, the log, the pid file and the socket.
    pub(crate) fn base_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's Unix socket.
    pub(crate) fn socket_path(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    /// A `mysql://` URL for `mysql_async` (TCP only: `prefer_socket=false`).
    pub(crate) fn dsn(&self, user: &str, password: &str, db: &str) -> String {
        mysql_dsn(self.port, user, password, db)
    }

    /// `mysql_async` options for a TCP connection to this server.
    pub(crate) fn opts(&self, user: &str, password: &str, db: &str) -> Opts {
        mysql_opts(self.port, user, password, db)
    }

    /// Connects directly (not through Suture).
    pub(crate) async fn connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> anyhow::Result<Conn> {
        connect_mysql(self.port, user, password, db).await
    }

    /// Connects as `app` to database `app`.
    pub(crate) async fn connect_app(&self) -> anyhow::Result<Conn> {
        self.connect(APP_USER, APP_PASSWORD, APP_DB).await
    }

    /// A connection as the superuser (no default database).
    pub(crate) async fn admin(&self) -> anyhow::Result<Conn> {
        let opts = OptsBuilder::from_opts(self.opts(ADMIN_USER, ADMIN_PASSWORD, ""))
            .db_name(None::<String>);
        connect_with(opts.into()).await
    }

    /// Runs `SET GLOBAL <assignment>` as the superuser, e.g.
    /// `set_global("wait_timeout = 2")`. Global values apply to sessions
    /// that start afterwards, not to open ones.
    pub(crate) async fn set_global(&self, assignment: &str) -> anyhow::Result<()> {
        let mut admin = self.admin().await?;
        admin
            .query_drop(format!("SET GLOBAL {assignment}"))
            .await
            .with_context(|| format!("SET GLOBAL {assignment}"))?;
        admin.disconnect().await?;
        Ok(())
    }

    /// Clean shutdown (SIGTERM, as systemd does), waiting for the process to exit.
    pub(crate) async fn stop(&self) -> anyhow::Result<()> {
        let child = self.take_child().context("stop: server is not running")?;
        let pid = child.id();
        run_checked(Command::new("kill").arg("-TERM").arg(pid.to_string()))?;
        let status = tokio::task::spawn_blocking(move || wait_exit(child, STOP_LIMIT)).await??;
        if !status.success() {
            bail!(
                "mariadbd exited with {status} on SIGTERM; log:\n{}",
                self.log_contents()
            );
        }
        Ok(())
    }

    /// Starts the server again on the same port and data directory (after
    /// [`stop`](Self::stop) or [`kill`](Self::kill); InnoDB recovers after a kill).
    pub(crate) async fn start_again(&self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("start_again: server is still running");
        }
        // Someone may have bound the port meanwhile; it is ours again soon
        // if it was only a connection in TIME_WAIT (mariadbd uses SO_REUSEADDR).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let launch = self.launch();
            match tokio::task::spawn_blocking(move || launch.run()).await? {
                Ok(child) => {
                    *self.lock_child() = Some(child);
                    return Ok(());
                }
                Err(_) if Instant::now() < deadline && self.bind_failed() => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Clean stop, then start on the same port.
    pub(crate) async fn restart(&self) -> anyhow::Result<()> {
        self.stop().await?;
        self.start_again().await
    }

    /// SIGKILL to the server (a crash, from the clients' point of view).
    pub(crate) fn kill(&self) -> anyhow::Result<()> {
        let mut child = self.take_child().context("kill: server is not running")?;
        child.kill().context("SIGKILL to mariadbd")?;
        child.wait().context("reaping mariadbd")?;
        Ok(())
    }

    /// The running server's process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.lock_child().as_ref().map(Child::id)
    }

    /// True while the server process runs (it may have exited by itself).
    pub(crate) fn is_running(&self) -> bool {
        let mut guard = self.lock_child();
        match guard.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                *guard = None;
                false
            }
            None => false,
        }
    }

    /// The server's error log so far, and its stderr if it wrote any (for
    /// failure messages).
    pub(crate) fn log_contents(&self) -> String {
        let mut text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let stderr = std::fs::read_to_string(self.stderr_path()).unwrap_or_default();
        if !stderr.trim().is_empty() {
            text.push_str("\n--- mariadbd stderr ---\n");
            text.push_str(&stderr);
        }
        text
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mariadb.err")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("mariadbd.stderr")
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_child(&self) -> Option<Child> {
        self.lock_child().take()
    }

    /// True when the last start failed because the port was taken.
    fn bind_failed(&self) -> bool {
        let log = self.log_contents();
        let last_start = log
            .rfind("Starting MariaDB")
            .map_or(&log[..], |at| &log[at..]);
        last_start.contains("Bind on TCP/IP port") || last_start.contains("Address already in use")
    }

    fn server_args(&self) -> Vec<String> {
        let base = self.dir.path();
        let mut args = vec![
            // Must come first: no my.cnf of the machine is read.
            "--no-defaults".to_string(),
            format!("--datadir={}", self.data_dir().display()),
            format!("--port={}", self.port),
            "--bind-address=127.0.0.1".to_string(),
            format!("--socket={}", self.socket_path().display()),
            format!("--pid-file={}", base.join("mariadbd.pid").display()),
            format!("--log-error={}", self.log_path().display()),
            // Temporary tables and files stay inside the test's directory.
            format!("--tmpdir={}", self.tmp_dir().display()),
        ];
        args.extend(server_user_arg());
        args.extend(INNODB_SIZES.iter().map(|s| s.to_string()));
        args.extend(SERVER_SETTINGS.iter().map(|s| s.to_string()));
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Everything one start of mariadbd needs, owned, for a blocking task.
    fn launch(&self) -> Launch {
        Launch {
            server: self.bin.server.clone(),
            args: self.server_args(),
            log: self.log_path(),
            stderr: self.stderr_path(),
            port: self.port,
        }
    }
}

/// One start of mariadbd: spawn it, wait until it accepts connections.
struct Launch {
    server: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    stderr: PathBuf,
    port: u16,
}

impl Launch {
    /// Spawns mariadbd and waits until its log says it accepts connections;
    /// on failure the process is killed and the error carries the log.
    fn run(self) -> anyhow::Result<Child> {
        let log_offset = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)?;
        let mut child = Command::new(&self.server)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .current_dir("/")
            .spawn()
            .with_context(|| format!("spawning {}", self.server.display()))?;
        match self.wait_ready(&mut child, log_offset) {
            Ok(()) => Ok(child),
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(err)
            }
        }
    }

    fn wait_ready(&self, child: &mut Child, log_offset: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let log = log_since(&self.log, log_offset);
            if log.contains(READY_LINE) {
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                bail!(
                    "mariadbd exited ({status}) before accepting connections on port {}; \
                     log:\n{log}\nstderr:\n{stderr}",
                    self.port
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "mariadbd not ready on port {} after {START_LIMIT:?}; log:\n{log}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        // Like pg_ctl -m immediate: nothing of a test's server is worth keeping.
        if let Some(mut child) = self.take_child() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl MariaDbBins {
    /// The server and install binaries (MariaDB's names first, then MySQL-compatible links).
    fn find() -> anyhow::Result<MariaDbBins> {
        let server = first_existing(&["/usr/sbin/mariadbd", "/usr/sbin/mysqld"])
            .context("no /usr/sbin/mariadbd: run scripts/install-deps.sh")?;
        let install_db =
            first_existing(&["/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db"])
                .context("no /usr/bin/mariadb-install-db: run scripts/install-deps.sh")?;
        Ok(MariaDbBins { server, install_db })
    }
}

fn first_existing(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.exists())
}

/// The version from `mariadbd --version` ("... Ver 10.11.19-MariaDB-0+deb12u1 for ...").
fn server_version(server: &Path) -> anyhow::Result<String> {
    let out = run_checked(Command::new(server).arg("--version"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == "Ver")
        .and_then(|_| words.next())
        .and_then(|v| v.split('-').next())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .with_context(|| format!("cannot read a version from {text:?}"))
}

/// The part of a log file after `offset` (empty when unreadable).
fn log_since(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let mut bytes = Vec::new();
            if file.read_to_end(&mut bytes).is_ok() {
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
    }
    text
}

/// Waits up to `limit` for `child` to exit; SIGKILLs it after that.
fn wait_exit(mut child: Child, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("mariadbd did not exit within {limit:?} of SIGTERM; killed it");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The OS user mariadbd runs as when we are root: `mysql` if it exists.
fn server_os_user() -> Option<&'static str> {
    if !is_root() {
        return None;
    }
    let has_mysql = std::fs::read_to_string("/etc/passwd")
        .is_ok_and(|p| p.lines().any(|l| l.starts_with("mysql:")));
    Some(if has_mysql { "mysql" } else { "root" })
}

/// `--user=...` for mariadbd and mariadb-install-db, when we are root.
fn server_user_arg() -> Option<String> {
    server_os_user().map(|user| format!("--user={user}"))
}

/// Gives a path to the server's OS user (only when running as root).
fn chown_to_server_user(path: &Path, recursive: bool) -> anyhow::Result<()> {
    let Some(user) = server_os_user().filter(|u| *u != "root") else {
        return Ok(());
    };
    let mut cmd = Command::new("chown");
    if recursive {
        cmd.arg("-R");
    }
    // `user:` is the user and its login group.
    run_checked(cmd.arg(format!("{user}:")).arg(path))?;
    Ok(())
}

/// Returns the template data directory, building it if needed.
fn ensure_template(bin: &MariaDbBins, version: &str) -> anyhow::Result<PathBuf> {
    let _guard = TEMPLATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let final_dir = std::env::temp_dir().join(format!(
        "suture-mariadb-template-{version}-v{TEMPLATE_VERSION}"
    ));
    if template_complete(&final_dir) {
        return Ok(final_dir);
    }
    let build = tempfile::Builder::new()
        .prefix("suture-mariadb-template-build-")
        .tempdir()?;
    let data = build.path().join("data");
    let started = Instant::now();
    build_template(bin, build.path(), &data)?;
    eprintln!(
        "mariadb_server: built template for MariaDB {version} in {} ms",
        started.elapsed().as_millis()
    );
    match std::fs::rename(&data, &final_dir) {
        Ok(()) => Ok(final_dir),
        // Another process won the race: its template is complete (rename is atomic).
        Err(_) if template_complete(&final_dir) => Ok(final_dir),
        Err(err) => {
            Err(err).with_context(|| format!("renaming template into {}", final_dir.display()))
        }
    }
}

fn template_complete(dir: &Path) -> bool {
    dir.join("ibdata1").exists() && dir.join("app").is_dir()
}

/// `mariadb-install-db` with the accounts of [`TEMPLATE_SQL`]; no server is
/// started, the SQL runs in the install's own bootstrap.
fn build_template(bin: &MariaDbBins, base: &Path, data: &Path) -> anyhow::Result<()> {
    let sql = base.join("template.sql");
    std::fs::write(&sql, TEMPLATE_SQL)?;
    // A tmpdir of its own: parallel bootstraps in a shared /tmp clash on
    // their internal temporary tables ("Unknown table 'mysql.tmp_user_sys'").
    let tmp = base.join("tmp");
    std::fs::create_dir(&tmp)?;
    chown_to_server_user(base, true)?;
    let mut cmd = Command::new(&bin.install_db);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", tmp.display()))
        .args(server_user_arg())
        .args([
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
            "--skip-name-resolve",
        ])
        .arg(format!("--extra-file={}", sql.display()))
        .args(INNODB_SIZES)
        .stdin(Stdio::null())
        .current_dir("/");
    run_checked(&mut cmd).context("mariadb-install-db (template)")?;
    if !template_complete(data) {
        bail!(
            "mariadb-install-db succeeded but {} is incomplete",
            data.display()
        );
    }
    Ok(())
}

/// `mysql_async` options for a TCP connection to 127.0.0.1:`port`. An
/// empty `db` means no default database. `prefer_socket` is off: by default
/// mysql_async would switch to the server's Unix socket, bypassing whatever
/// listens on the port (Suture, a relay).
pub(crate) fn mysql_opts(port: u16, user: &str, password: &str, db: &str) -> Opts {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .db_name((!db.is_empty()).then_some(db))
        .prefer_socket(false)
        .into()
}

/// The same options as a `mysql://` URL.
pub(crate) fn mysql_dsn(port: u16, user: &str, password: &str, db: &str) -> String {
    format!(
        "mysql://{}:{}@127.0.0.1:{port}/{}?prefer_socket=false",
        url_escape(user),
        url_escape(password),
        url_escape(db)
    )
}

/// Percent-encodes everything but unreserved URL characters.
fn url_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Connects with `mysql_async` to 127.0.0.1:`port` (a server, Suture or a
/// relay), bounded by a timeout.
pub(crate) async fn connect_mysql(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> anyhow::Result<Conn> {
    connect_with(mysql_opts(port, user, password, db)).await
}

async fn connect_with(opts: Opts) -> anyhow::Result<Conn> {
    let target = format!(
        "{}@{}:{}",
        opts.user().unwrap_or(""),
        opts.ip_or_hostname(),
        opts.tcp_port()
    );
    tokio::time::timeout(CONNECT_LIMIT, Conn::new(opts))
        .await
        .with_context(|| format!("connecting to {target}: no answer within {CONNECT_LIMIT:?}"))?
        .with_context(|| format!("connecting to {target}"))
}
