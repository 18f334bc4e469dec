//! The `suture` command: run the proxy, or check a configuration file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use suture::config::{Config, ConfigError, RuntimeConfig};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig) => check_config(&cli.config),
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

/// `error: cause: cause ...`, for errors we only hold by reference.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
    let runtime = build_runtime(&config.runtime).context("cannot start the tokio runtime")?;
    runtime.block_on(suture::server::run(config))?;
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
