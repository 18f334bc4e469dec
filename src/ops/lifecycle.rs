//! Stop requests: SIGTERM, SIGINT and `POST /quitquitquit` all land here. The first starts the
//! drain (DESIGN §7); a second one, while the drain runs, ends the process at once.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::{watch, Notify};

/// Where a stop request came from (for the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSource {
    Sigterm,
    Sigint,
    Quitquitquit,
}

impl StopSource {
    pub fn as_str(self) -> &'static str {
        match self {
            StopSource::Sigterm => "SIGTERM",
            StopSource::Sigint => "SIGINT",
            StopSource::Quitquitquit => "POST /quitquitquit",
        }
    }
}

/// Exit status when a second stop request cuts the drain short.
pub const EXIT_AT_ONCE: i32 = 1;

/// Counts stop requests and wakes the drain on the first.
#[derive(Debug, Default)]
pub struct Lifecycle {
    requests: AtomicU32,
    stop: Notify,
}

impl Lifecycle {
    /// A stop request. The first wakes [`Lifecycle::stopped`]; the second exits the process
    /// at once, whatever is still draining.
    pub fn request_stop(&self, source: StopSource) {
        let before = self.requests.fetch_add(1, Ordering::AcqRel);
        if before == 0 {
            tracing::info!(source = source.as_str(), "stop requested: draining");
            self.stop.notify_one();
        } else {
            tracing::warn!(
                source = source.as_str(),
                "second stop request: exiting at once"
            );
            eprintln!(
                "suture: second stop request ({}), exiting at once",
                source.as_str()
            );
            std::process::exit(EXIT_AT_ONCE);
        }
    }

    /// Whether a stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.requests.load(Ordering::Acquire) > 0
    }

    /// Waits for the first stop request.
    pub async fn stopped(&self) {
        if self.stop_requested() {
            return;
        }
        self.stop.notified().await;
    }
}

/// Starts the drain of sessions: after it, each session closes its client as soon as it is at
/// rest (no request in flight, no transaction open).
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<bool>,
}

/// What a session watches to learn that the drain started; cheap to clone.
#[derive(Clone, Debug)]
pub struct DrainSignal {
    rx: watch::Receiver<bool>,
}

impl Drain {
    pub fn new() -> (Drain, DrainSignal) {
        let (tx, rx) = watch::channel(false);
        (Drain { tx }, DrainSignal { rx })
    }

    /// Tells every session.
    pub fn start(&self) {
        self.tx.send_replace(true);
    }
}

impl DrainSignal {
    /// Whether the drain started.
    pub fn started(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits until the drain starts (at once if it has). Cancel-safe.
    pub async fn wait(&mut self) {
        // An error means the sender is gone: no drain will ever start.
        if self.rx.wait_for(|started| *started).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
