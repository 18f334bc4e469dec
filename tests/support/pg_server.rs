//! A private PostgreSQL server per test: a copy of a once-built template
//! data directory, started on a free loopback port, owned by the test.
//!
//! The template is built by the first test process that needs it (initdb,
//! roles, database, pg_hba) in a unique directory and renamed into place, so
//! parallel test processes never see a half-built template; a process that
//! loses the rename race discards its own copy and uses the winner's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tempfile::TempDir;
use tokio_postgres::{Client, NoTls};

use super::free_port;

/// Bumped whenever the template's contents change, so a stale template
/// left in the temp dir by an older harness is never reused.
const TEMPLATE_VERSION: u32 = 2;

/// Superuser password set by initdb.
pub(crate) const SUPERUSER_PASSWORD: &str = "postgres";

/// Serialises template building inside one process (`cargo test` runs tests
/// as threads); across processes the rename does the job.
static TEMPLATE_LOCK: Mutex<()> = Mutex::new(());

/// A running (or stopped) PostgreSQL owned by one test.
pub(crate) struct PgServer {
    dir: TempDir,
    port: u16,
    bin: PathBuf,
}

impl PgServer {
    /// Copies the template and starts a server on a free port.
    pub(crate) async fn start() -> anyhow::Result<PgServer> {
        tokio::task::spawn_blocking(Self::start_blocking).await?
    }

    fn start_blocking() -> anyhow::Result<PgServer> {
        let bin = pg_bin_dir()?;
        let template = ensure_template(&bin)?;
        let dir = tempfile::Builder::new().prefix("suture-pg-").tempdir()?;
        chown_postgres(dir.path(), false)?;
        let data = dir.path().join("data");
        run_checked(Command::new("cp").arg("-a").arg(&template).arg(&data))?;
        let mut server = PgServer { dir, port: 0, bin };
        // A port can be taken by someone else between probing and binding: retry.
        let mut attempts = 0;
        loop {
            server.port = free_port();
            server.write_local_settings()?;
            match server.pg_ctl_start() {
                Ok(()) => return Ok(server),
                Err(err) if attempts >= 4 => return Err(err),
                Err(_) => attempts += 1,
            }
        }
    }

    /// TCP port on 127.0.0.1.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Directory holding the data dir, the log and the unix socket.
    pub(crate) fn base_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Directory of the PostgreSQL binaries in use (psql, pgbench, ...).
    pub(crate) fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// A key=value DSN for tokio-postgres or libpq.
    pub(crate) fn dsn(&self, user: &str, password: &str, db: &str) -> String {
        dsn_for(self.port, user, password, db)
    }

    /// Connects directly (not through Suture) and spawns the connection task.
    pub(crate) async fn connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> anyhow::Result<Client> {
        connect_dsn(&self.dsn(user, password, db)).await
    }

    /// Fast shutdown (pg_ctl -m fast), waiting for it.
    pub(crate) async fn stop(&self) -> anyhow::Result<()> {
        let args = self.pg_ctl_args(&["-m", "fast", "-w", "-t", "30", "stop"]);
        let bin = self.bin.clone();
        tokio::task::spawn_blocking(move || run_as_postgres(&bin.join("pg_ctl"), &args)).await??;
        Ok(())
    }

    /// Starts the server again on the same port and data directory.
    pub(crate) async fn start_again(&self) -> anyhow::Result<()> {
        // After kill() orphaned backends may still hold shared memory for a
        // moment; postgres refuses to start until they are gone, so retry.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = {
                let args = self.pg_ctl_start_args();
                let bin = self.bin.clone();
                tokio::task::spawn_blocking(move || run_as_postgres(&bin.join("pg_ctl"), &args))
                    .await?
            };
            match attempt {
                Ok(_) => return Ok(()),
                Err(err) if Instant::now() < deadline => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => return Err(err.context(self.log_contents())),
            }
        }
    }

    /// Fast stop, then start.
    pub(crate) async fn restart(&self) -> anyhow::Result<()> {
        self.stop().await?;
        self.start_again().await
    }

    /// SIGKILL to the postmaster (a crash, from the clients' point of view).
    pub(crate) fn kill(&self) -> anyhow::Result<()> {
        let pid = self.postmaster_pid()?;
        run_checked(Command::new("kill").arg("-KILL").arg(pid.to_string()))?;
        Ok(())
    }

    /// The postmaster's process id, from postmaster.pid.
    pub(crate) fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .context("reading postmaster.pid")?;
        let first = text.lines().next().unwrap_or_default().trim();
        first
            .parse()
            .with_context(|| format!("bad postmaster.pid line {first:?}"))
    }

    /// The server log so far (for failure messages).
    pub(crate) fn log_contents(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Port and socket directory differ per copy; appended after the template's settings.
    fn write_local_settings(&self) -> anyhow::Result<()> {
        let conf = self.data_dir().join("postgresql.auto.conf");
        let text = format!(
            "port = {}\nunix_socket_directories = '{}'\n",
            self.port,
            self.dir.path().display()
        );
        std::fs::write(&conf, text)?;
        chown_postgres(&conf, false)
    }

    fn pg_ctl_args(&self, rest: &[&str]) -> Vec<String> {
        let mut args = vec!["-D".to_string(), self.data_dir().display().to_string()];
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    }

    fn pg_ctl_start_args(&self) -> Vec<String> {
        let log = self.log_path().display().to_string();
        self.pg_ctl_args(&["-l", &log, "-w", "-t", "60", "start"])
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        run_as_postgres(&self.bin.join("pg_ctl"), &self.pg_ctl_start_args())
            .map(|_| ())
            .map_err(|err| err.context(self.log_contents()))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let args = self.pg_ctl_args(&["-m", "immediate", "-w", "-t", "10", "stop"]);
        let _ = run_as_postgres(&self.bin.join("pg_ctl"), &args);
    }
}

/// A key=value DSN for tokio-postgres or libpq on 127.0.0.1.
pub(crate) fn dsn_for(port: u16, user: &str, password: &str, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={user} password='{}' dbname={db} connect_timeout=10",
        password.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// Connects with a DSN and spawns the connection task.
pub(crate) async fn connect_dsn(dsn: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The newest /usr/lib/postgresql/<major>/bin that has initdb.
pub(crate) fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in
        std::fs::read_dir(root).context("no /usr/lib/postgresql: run scripts/install-deps.sh")?
    {
        let entry = entry?;
        let Some(major) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("initdb").exists() && best.as_ref().is_none_or(|(m, _)| major > *m) {
            best = Some((major, bin));
        }
    }
    best.map(|(_, bin)| bin)
        .context("no PostgreSQL under /usr/lib/postgresql/*/bin: run scripts/install-deps.sh")
}

fn major_of(bin: &Path) -> String {
    bin.parent()
        .and_then(|p| p.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "x".to_string())
}

/// Returns the template data directory, building it if needed.
fn ensure_template(bin: &Path) -> anyhow::Result<PathBuf> {
    let _guard = TEMPLATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let final_dir = std::env::temp_dir().join(format!(
        "suture-pg-template-{}-v{TEMPLATE_VERSION}",
        major_of(bin)
    ));
    if final_dir.join("PG_VERSION").exists() {
        return Ok(final_dir);
    }
    let build = tempfile::Builder::new()
        .prefix("suture-pg-template-build-")
        .tempdir()?;
    chown_postgres(build.path(), false)?;
    let data = build.path().join("data");
    build_template(bin, build.path(), &data)?;
    match std::fs::rename(&data, &final_dir) {
        Ok(()) => Ok(final_dir),
        // Another process won the race: its template is complete (rename is atomic).
        Err(_) if final_dir.join("PG_VERSION").exists() => Ok(final_dir),
        Err(err) => {
            Err(err).with_context(|| format!("renaming template into {}", final_dir.display()))
        }
    }
}

fn build_template(bin: &Path, base: &Path, data: &Path) -> anyhow::Result<()> {
    let pwfile = base.join("pwfile");
    std::fs::write(&pwfile, format!("{SUPERUSER_PASSWORD}\n"))?;
    chown_postgres(&pwfile, false)?;
    run_as_postgres(
        &bin.join("initdb"),
        &[
            "-D".to_string(),
            data.display().to_string(),
            "-U".to_string(),
            "postgres".to_string(),
            "-A".to_string(),
            "scram-sha-256".to_string(),
            format!("--pwfile={}", pwfile.display()),
            "-E".to_string(),
            "UTF8".to_string(),
            "--locale=C".to_string(),
            "--no-sync".to_string(),
        ],
    )
    .context("initdb")?;
    let mut conf = std::fs::read_to_string(data.join("postgresql.conf"))?;
    conf.push_str(
        "\n# suture test harness\n\
         shared_buffers = 16MB\n\
         max_connections = 100\n\
         max_prepared_transactions = 4\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n\
         listen_addresses = '127.0.0.1'\n\
         logging_collector = off\n\
         log_min_messages = warning\n\
         log_connections = off\n\
         max_wal_size = 256MB\n\
         checkpoint_timeout = 30min\n",
    );
    std::fs::write(data.join("postgresql.conf"), conf)?;
    // Specific users first: the first matching line wins.
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all scram-sha-256\n\
         host all trustuser 127.0.0.1/32 trust\n\
         host all md5user 127.0.0.1/32 md5\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    )?;

    // Start the template once to create roles and the database.
    let port = free_port();
    std::fs::write(
        data.join("postgresql.auto.conf"),
        format!(
            "port = {port}\nunix_socket_directories = '{}'\n",
            base.display()
        ),
    )?;
    chown_postgres(base, true)?;
    let log = base.join("template.log").display().to_string();
    let data_s = data.display().to_string();
    let start = run_as_postgres(
        &bin.join("pg_ctl"),
        &[
            "-D".into(),
            data_s.clone(),
            "-l".into(),
            log.clone(),
            "-w".into(),
            "-t".into(),
            "60".into(),
            "start".into(),
        ],
    );
    if let Err(err) = start {
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(err.context(log_text));
    }
    // One -c per statement: psql runs a multi-statement -c in one transaction,
    // where CREATE DATABASE is not allowed.
    let statements = [
        "CREATE ROLE app LOGIN PASSWORD 'app-secret'",
        "CREATE DATABASE app OWNER app",
        "CREATE ROLE trustuser LOGIN",
        "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5-secret'",
    ];
    let mut psql_cmd = Command::new(bin.join("psql"));
    psql_cmd
        .arg(dsn_for(port, "postgres", SUPERUSER_PASSWORD, "postgres"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
    for sql in statements {
        psql_cmd.args(["-c", sql]);
    }
    let psql = psql_cmd.output();
    let stop = run_as_postgres(
        &bin.join("pg_ctl"),
        &[
            "-D".into(),
            data_s,
            "-m".into(),
            "fast".into(),
            "-w".into(),
            "stop".into(),
        ],
    );
    check_output(psql?, "psql (template setup)")?;
    stop?;
    // The copies get their own port and socket directory.
    std::fs::write(data.join("postgresql.auto.conf"), "")?;
    std::fs::remove_file(data.join("postmaster.opts")).ok();
    Ok(())
}

/// Runs a PostgreSQL binary as the `postgres` OS user when we are root.
fn run_as_postgres(program: &Path, args: &[String]) -> anyhow::Result<Output> {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).stdin(Stdio::null()).current_dir("/");
    run_checked(&mut cmd)
}

pub(crate) fn run_checked(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    check_output(out, &format!("{cmd:?}"))
}

pub(crate) fn check_output(out: Output, what: &str) -> anyhow::Result<Output> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

pub(crate) fn is_root() -> bool {
    // Avoids a libc dependency: effective uid from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Gives a path to the postgres user (only when running as root).
fn chown_postgres(path: &Path, recursive: bool) -> anyhow::Result<()> {
    if !is_root() {
        return Ok(());
    }
    let mut cmd = Command::new("chown");
    if recursive {
        cmd.arg("-R");
    }
    run_checked(cmd.arg("postgres:postgres").arg(path))?;
    Ok(())
}
