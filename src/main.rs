//! The `suture` command: run the proxy, check a configuration file, or print a running
//! Suture's pools (`suture status`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use clap::{Parser, Subcommand};
use suture::admin::AdminState;
use suture::config::{error_chain, Config, ConfigError, RuntimeConfig};
use suture::ops::health::Health;
use suture::ops::lifecycle::Lifecycle;

#[derive(Debug, Parser)]
#[command(name = "suture", version, about)]
struct Cli {
    /// Configuration file (TOML); `SUTURE__SECTION__KEY` environment variables override it.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "SUTURE_CONFIG",
        default_value = "suture.toml",
        value_name = "FILE"
    )]
    config: PathBuf,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration, print every problem found and exit non-zero if there is one.
    CheckConfig,
    /// Print a running Suture's pools, backends, clients and last heals (from its /status).
    Status {
        /// The admin address (`host:port`); default: `admin.listen` of the configuration,
        /// else 127.0.0.1:9187.
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
        /// Print the JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig) => check_config(&cli.config),
        Some(Command::Status { admin, json }) => status(&cli.config, admin, json),
        None => match run(&cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "suture stopped");
                eprintln!("suture: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check_config(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!("config OK: {} pool(s)", config.pools.len());
            ExitCode::SUCCESS
        }
        Err(err) => {
            report_config_error(path, &err);
            ExitCode::FAILURE
        }
    }
}

fn report_config_error(path: &Path, err: &ConfigError) {
    match err {
        ConfigError::Invalid(problems) => {
            eprintln!("{}: {} problem(s):", path.display(), problems.len());
            for problem in problems.iter() {
                eprintln!("  {problem}");
            }
        }
        other => eprintln!("{}: {}", path.display(), error_chain(other)),
    }
}

fn status(path: &Path, admin: Option<String>, json: bool) -> ExitCode {
    let admin = admin.unwrap_or_else(|| match Config::load(path) {
        Ok(config) => config.admin.listen.to_string(),
        Err(_) => suture::config::defaults::ADMIN_LISTEN.to_owned(),
    });
    match suture::admin::client::fetch_status(&admin) {
        Ok(status) if json => match serde_json::to_string_pretty(&status) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("suture status: {err}");
                ExitCode::FAILURE
            }
        },
        Ok(status) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            print!("{}", suture::admin::status::render_tables(&status, now));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("suture status: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path) -> anyhow::Result<()> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => {
            report_config_error(path, &err);
            anyhow::bail!("invalid configuration");
        }
    };
    let _log = suture::logging::init(&config.log)?;
    tracing::info!(
        config = %path.display(),
        pools = config.pools.len(),
        version = env!("CARGO_PKG_VERSION"),
        "starting suture"
    );
    let fds = suture::fd_limit::raise();
    suture::fd_limit::log(&fds, suture::fd_limit::needed(&config));
    let prometheus =
        suture::ops::series::install().context("cannot install the metrics recorder")?;
    suture::ops::series::register_zeros(&config);
    let pools: Vec<String> = config.pools.keys().cloned().collect();
    let health = Arc::new(Health::new(
        config.admin.stall_threshold,
        config.admin.startup_timeout,
        &pools,
    ));
    health
        .spawn_watchdog()
        .context("cannot start the watchdog thread")?;
    let lifecycle = Arc::new(Lifecycle::default());
    let admin = Arc::new(AdminState::new(
        prometheus,
        Arc::clone(&health),
        Arc::clone(&lifecycle),
        config.admin.readiness_checks_backend,
    ));
    let bound = suture::admin::spawn(config.admin.listen, Arc::clone(&admin))?;
    tracing::info!(listen = %bound, "admin port: /metrics /startup /healthz /readyz /status");
    let runtime = build_runtime(&config.runtime).context("cannot start the tokio runtime")?;
    #[cfg(feature = "test-hooks")]
    {
        *admin.data_path.write().unwrap_or_else(|p| p.into_inner()) =
            Some(runtime.handle().clone());
    }
    let ops = suture::server::Ops {
        health,
        lifecycle,
        admin,
        config_path: path.to_owned(),
        shutdown: Arc::new(RwLock::new(config.shutdown)),
    };
    runtime.block_on(suture::server::run(config, ops))?;
    // Sessions still running after the drain timeout end with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(())
}

/// The event loop `[runtime]` asks for: single-threaded for one worker, work-stealing for more.
fn build_runtime(settings: &RuntimeConfig) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = match settings.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    tracing::info!(worker_threads = workers, "event loop");
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}
