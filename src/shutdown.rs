//! The drain (DESIGN §7): readiness fails at once; new clients are still accepted for
//! `[shutdown] accept_for`; then the listeners close, idle clients are told FATAL 57P01 and
//! closed, and requests in flight and open transactions may finish until
//! `[shutdown] drain_timeout`; finally every idle backend gets a Terminate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::ShutdownConfig;
use crate::ops::health::Health;
use crate::ops::lifecycle::Drain;
use crate::served::ServedPool;

/// How often the drain counts the sessions left.
const POLL: Duration = Duration::from_millis(50);

/// Runs the drain; returns when every session ended or the drain timeout passed.
pub(crate) async fn drain(
    health: &Health,
    settings: ShutdownConfig,
    stop_accepting: &watch::Sender<bool>,
    drain: &Drain,
    served: &[Arc<ServedPool>],
) {
    health.set_draining();
    if !settings.accept_for.is_zero() {
        tracing::info!(accept_for = ?settings.accept_for, "shutting down: not ready any more, still accepting clients");
        tokio::time::sleep(settings.accept_for).await;
    }
    let _ = stop_accepting.send(true);
    drain.start();
    let open = sessions(served);
    tracing::info!(
        sessions = open,
        drain_timeout = ?settings.drain_timeout,
        "shutting down: no new clients; idle clients are closed, requests in flight and open transactions may finish"
    );
    let deadline = Instant::now() + settings.drain_timeout;
    loop {
        let open = sessions(served);
        if open == 0 {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                sessions = open,
                "drain timeout passed; closing the remaining sessions"
            );
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let mut terminated = 0;
    for pool in served {
        terminated += pool.current().terminate_idle().await;
    }
    tracing::info!(
        backends = terminated,
        "backend connections terminated; exiting"
    );
}

/// Client sessions still open, all pools together.
fn sessions(served: &[Arc<ServedPool>]) -> usize {
    served
        .iter()
        .map(|p| p.max_clients.saturating_sub(p.slots.available_permits()))
        .sum()
}
