//! Logging that never blocks the data path (DESIGN §6). Lines are formatted where they are
//! logged and handed to a bounded queue; one thread of its own writes them to stderr. When the
//! queue is full — the reader of stderr (a log shipper) fell behind or stopped — lines are
//! dropped instead of waited for, counted in `suture_log_lines_dropped_total`, and a line says
//! how many were lost once the log flows again.

use std::time::Duration;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Lines the queue holds before new ones are dropped (about a MiB).
const QUEUED_LINES: usize = 4_096;
/// How often lost lines are looked for and reported.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The filter directive (`log.level` or `RUST_LOG`) does not parse.
    #[error("invalid log filter {directives:?}: {source}")]
    Filter {
        directives: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A subscriber was already installed.
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
}

/// Keeps the writer thread alive; dropping it flushes what is queued.
pub struct LogGuard {
    _worker: WorkerGuard,
}

/// Installs text or JSON lines on stderr through the lossy queue; `RUST_LOG`, when set,
/// overrides `log.level`. Starts the thread that reports lost lines.
pub fn init(log: &LogConfig) -> Result<LogGuard, LogError> {
    let directives = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => directives,
        _ => log.level.clone(),
    };
    let filter = EnvFilter::try_new(&directives).map_err(|source| LogError::Filter {
        directives: directives.clone(),
        source,
    })?;
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("suture-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    let installed = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|err| LogError::Install(err.to_string()))?;
    spawn_drop_reporter(dropped);
    Ok(LogGuard { _worker: worker })
}

/// Every second: lines dropped since the last look are counted and reported. The report may
/// itself be dropped while the queue is still full; the next look then sees it as one more
/// lost line and reports again, until a report gets through.
fn spawn_drop_reporter(dropped: ErrorCounter) {
    let spawned = std::thread::Builder::new()
        .name("suture-log-drops".into())
        .spawn(move || {
            let mut seen = 0;
            loop {
                std::thread::sleep(REPORT_EVERY);
                let now = dropped.dropped_lines();
                if now > seen {
                    let lost = now - seen;
                    metrics::counter!("suture_log_lines_dropped_total").increment(lost as u64);
                    tracing::warn!(
                        lost,
                        total = now,
                        "log lines dropped: the reader of Suture's log is not keeping up"
                    );
                    seen = now;
                }
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start the thread that reports lost log lines");
    }
}
