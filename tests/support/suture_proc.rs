//! The real `suture` binary, run as a child process with a config file
//! written for the test, and the config builder the tests share.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tempfile::TempDir;

use super::free_port;
use super::pg_server::PgServer;

/// A running `suture --config FILE`; killed on drop.
pub(crate) struct SutureProc {
    child: Child,
    dir: TempDir,
    listen: Listening,
    admin_port: Option<u16>,
}

/// Where the first pool listens.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Listening {
    /// A TCP port on 127.0.0.1.
    Tcp(u16),
    /// `listen = "unix:PATH"`.
    Unix(PathBuf),
}

impl std::fmt::Display for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listening::Tcp(port) => write!(f, "port {port}"),
            Listening::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

impl SutureProc {
    /// Writes `config_toml` to a file, starts the binary and waits until the
    /// first pool's listener (a TCP port or a Unix socket) accepts connections.
    pub(crate) async fn start(config_toml: &str) -> anyhow::Result<SutureProc> {
        let (proc, _) = Self::start_with(config_toml, None, false).await?;
        Ok(proc)
    }

    /// Like [`SutureProc::start`], with the log filter `rust_log` (instead of the caller's
    /// `RUST_LOG` or `info`), and with stderr handed to the caller as a pipe it reads (or
    /// does not read) itself when `piped_stderr`.
    pub(crate) async fn start_with(
        config_toml: &str,
        rust_log: Option<&str>,
        piped_stderr: bool,
    ) -> anyhow::Result<(SutureProc, Option<std::process::ChildStderr>)> {
        let listen = first_pool_listen(config_toml)
            .context("config has no [pools.*] listen = \"host:port\" or \"unix:PATH\"")?;
        let dir = tempfile::Builder::new().prefix("suture-proc-").tempdir()?;
        let config_path = dir.path().join("suture.toml");
        std::fs::write(&config_path, config_toml)?;
        let log = File::create(dir.path().join("suture.log"))?;
        let filter = match rust_log {
            Some(filter) => filter.to_owned(),
            None => std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        };
        let stderr = if piped_stderr {
            Stdio::piped()
        } else {
            Stdio::from(log.try_clone()?)
        };
        let mut child = Command::new(suture_binary())
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .context("spawning the suture binary")?;
        let pipe = child.stderr.take();
        let mut proc = SutureProc {
            child,
            dir,
            listen,
            admin_port: admin_listen_port(config_toml),
        };
        proc.wait_listening(Duration::from_secs(10)).await?;
        Ok((proc, pipe))
    }

    async fn wait_listening(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "suture exited ({status}) before listening on {}; log:\n{}",
                    self.listen,
                    self.log_contents()
                );
            }
            let up = match &self.listen {
                Listening::Tcp(port) => tokio::net::TcpStream::connect(("127.0.0.1", *port))
                    .await
                    .is_ok(),
                Listening::Unix(path) => tokio::net::UnixStream::connect(path).await.is_ok(),
            };
            if up {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "suture did not listen on {} within {limit:?}; log:\n{}",
                    self.listen,
                    self.log_contents()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The first pool's listen port.
    pub(crate) fn port(&self) -> u16 {
        match &self.listen {
            Listening::Tcp(port) => *port,
            Listening::Unix(path) => {
                panic!("the first pool listens on {}, not a port", path.display())
            }
        }
    }

    /// The first pool's Unix socket (`listen = "unix:PATH"`).
    pub(crate) fn socket_path(&self) -> PathBuf {
        match &self.listen {
            Listening::Unix(path) => path.clone(),
            Listening::Tcp(port) => panic!("the first pool listens on port {port}"),
        }
    }

    /// Runs the binary with `config_toml` until it exits by itself (a start that must
    /// fail), killing it after `limit`; its exit code and its log.
    pub(crate) async fn run_to_exit(
        config_toml: &str,
        limit: Duration,
    ) -> anyhow::Result<(Option<i32>, String)> {
        let dir = tempfile::Builder::new().prefix("suture-proc-").tempdir()?;
        let config_path = dir.path().join("suture.toml");
        std::fs::write(&config_path, config_toml)?;
        let log_path = dir.path().join("suture.log");
        let log = File::create(&log_path)?;
        let mut child = Command::new(suture_binary())
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning the suture binary")?;
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "suture still running after {limit:?}; log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok((
            status.code(),
            std::fs::read_to_string(&log_path).unwrap_or_default(),
        ))
    }

    /// The admin port (`[admin] listen`).
    pub(crate) fn admin_port(&self) -> u16 {
        self.admin_port
            .unwrap_or_else(|| panic!("the config has no [admin] listen"))
    }

    /// The config file the process was started with (rewrite it, then SIGHUP).
    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("suture.toml")
    }

    /// Sends a signal (`"TERM"`, `"INT"`, `"HUP"`) with kill(1).
    pub(crate) fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -{name} failed: {status}");
        Ok(())
    }

    /// Waits up to `limit` for the process to exit; its exit code (`None`: killed by a signal).
    pub(crate) async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() >= deadline {
                bail!("suture did not exit within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// OS process id (for /proc/PID/status).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident set size in bytes, from /proc/PID/status (VmRSS).
    pub(crate) fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS line")?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .context("malformed VmRSS line")?
            .parse()?;
        Ok(kib * 1024)
    }

    /// Combined stdout and stderr so far.
    pub(crate) fn log_contents(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("suture.log")
    }
}

impl Drop for SutureProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("SUTURE_TEST_SHOW_LOG").is_some() {
            eprintln!("---- suture log ----\n{}", self.log_contents());
        }
    }
}

/// The binary to run: `SUTURE_TEST_BIN` when set (e.g. a release build, or
/// another checkout's build), else the one cargo built for these tests.
fn suture_binary() -> PathBuf {
    std::env::var_os("SUTURE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_suture")))
}

/// Finds `listen = "...:PORT"` inside `[admin]`.
fn admin_listen_port(config: &str) -> Option<u16> {
    let mut in_admin = false;
    for line in config.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_admin = line == "[admin]";
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if in_admin && key.trim() == "listen" => {
                let value = value.split('#').next()?.trim().trim_matches('"');
                return value.rsplit_once(':')?.1.parse().ok();
            }
            _ => {}
        }
    }
    None
}

/// Finds `listen = "...:PORT"` or `listen = "unix:PATH"` inside the first `[pools.*]`
/// section.
fn first_pool_listen(config: &str) -> Option<Listening> {
    let mut in_pool = false;
    for line in config.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            let name = line.trim_matches(|c| c == '[' || c == ']');
            in_pool = name.starts_with("pools.") && name.matches('.').count() == 1;
            continue;
        }
        if !in_pool {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() == "listen" {
            let value = value.split('#').next()?.trim().trim_matches('"');
            if let Some(path) = value.strip_prefix("unix:") {
                return Some(Listening::Unix(PathBuf::from(path)));
            }
            return value.rsplit_once(':')?.1.parse().ok().map(Listening::Tcp);
        }
    }
    None
}

/// A DESIGN §8 config with one pool `app` in front of `pg`.
pub(crate) fn suture_config_for(pg: &PgServer, listen_port: u16) -> String {
    suture_config_with(pg, listen_port, "")
}

/// Like [`suture_config_for`], with extra `key = value` lines placed in the
/// `[pools.app]` table (e.g. `client_auth = "md5"`).
pub(crate) fn suture_config_with(pg: &PgServer, listen_port: u16, pool_extra: &str) -> String {
    let admin_port = free_port();
    let pg_port = pg.port();
    format!(
        r#"[admin]
listen = "127.0.0.1:{admin_port}"

[pools.app]
protocol = "postgres"
listen = "127.0.0.1:{listen_port}"
servers = ["127.0.0.1:{pg_port}"]
tls = "disable"
min_idle = 1
max_size = 10
max_lifetime = "30m"
idle_timeout = "10m"
connect_timeout = "5s"
failover_hold = "30s"
{pool_extra}

[pools.app.users.app]
password = "app-secret"

[pools.app.users.postgres]
password = "postgres"

[pools.app.users.md5user]
password = "md5-secret"
"#
    )
}

/// `cfg` with the `[pools.app]` keys in `set` (an existing `key = ...` line is
/// replaced, a new key is added at the top of the table), e.g.
/// `&[("min_idle", "1"), ("health_check_after", "\"1s\"")]`.
pub(crate) fn set_pool_keys(mut cfg: String, set: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut extra = String::new();
    for (key, value) in set {
        let prefix = format!("\n{key} = ");
        match cfg.find(&prefix) {
            Some(start) => {
                let line_start = start + 1;
                let line_end = cfg[line_start..]
                    .find('\n')
                    .map_or(cfg.len(), |i| line_start + i);
                cfg.replace_range(line_start..line_end, &format!("{key} = {value}"));
            }
            None => extra.push_str(&format!("{key} = {value}\n")),
        }
    }
    let header = "[pools.app]\n";
    anyhow::ensure!(cfg.contains(header), "config has no [pools.app]");
    Ok(cfg.replacen(header, &format!("{header}{extra}"), 1))
}

/// A DESIGN §8 config with one MySQL pool `app` listening on `listen_port`
/// in front of the server at 127.0.0.1:`server_port` (a MariaDB of
/// [`super::mariadb_server`] or a relay in front of it), with its accounts
/// `app`, `other` (created by tests that need a second user) and `root`.
pub(crate) fn mysql_config(server_port: u16, listen_port: u16) -> String {
    let admin_port = free_port();
    format!(
        r#"[admin]
listen = "127.0.0.1:{admin_port}"

[pools.app]
protocol = "mysql"
listen = "127.0.0.1:{listen_port}"
servers = ["127.0.0.1:{server_port}"]
tls = "disable"
min_idle = 1
max_size = 10
max_lifetime = "30m"
idle_timeout = "10m"
connect_timeout = "5s"
failover_hold = "30s"

[pools.app.users.app]
password = "app-secret"

[pools.app.users.other]
password = "other-secret"

[pools.app.users.root]
password = "root-secret"
"#
    )
}
