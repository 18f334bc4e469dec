//! A session during shutdown (DESIGN §7): once the drain starts, the client is closed with the
//! protocol's shutdown error (PostgreSQL FATAL 57P01) as soon as it is at rest — no request in flight, no transaction open, nothing
//! half sent either way. Until then its requests and its open transaction may finish.

use std::time::Duration;

use crate::ops::lifecycle::DrainSignal;
use crate::session::command_phase::{CommandPhase, Next};
use crate::session::hooks::Hooks;
use crate::session::ledger::TxState;
use crate::session::on_wake::OnWake;
use crate::session::relay::RelayEnd;

/// How often a busy session looks again whether it is at rest, while draining.
const DRAIN_POLL: Duration = Duration::from_millis(50);

impl<H: Hooks> CommandPhase<H> {
    /// Relays until one side ends (`Some`), or until the session should look whether it can
    /// close: the drain just started, or, while draining, every [`DRAIN_POLL`] (`None`).
    /// Dropping the relay there is safe: everything it must not lose lives in the session.
    pub(crate) async fn relay_or_drain(&mut self, drain: &mut DrainSignal) -> Option<RelayEnd> {
        if drain.started() {
            tokio::select! {
                biased;
                end = self.relay() => Some(end),
                () = tokio::time::sleep(DRAIN_POLL) => None,
            }
        } else {
            // The drain signal is looked at when it fires, not on each of the relay's
            // wake-ups (one per request and one per reply).
            let wait = std::pin::pin!(drain.wait());
            let drain = OnWake::new(wait);
            tokio::select! {
                biased;
                end = self.relay() => Some(end),
                () = drain => None,
            }
        }
    }

    /// Closes the client with the shutdown error if the session is at rest; else it carries on.
    pub(crate) async fn close_if_at_rest(&mut self) -> Next {
        let at_rest = {
            let tracker = self.shared.lock();
            tracker.ledger.is_empty() && tracker.ledger.tx() == TxState::Idle
        } && self.cbuf.is_empty()
            && self.backend.pending == 0
            && self.boundary.at_boundary();
        if !at_rest {
            return Next::Resume;
        }
        let notice = self.hooks.shutdown_notice();
        self.send_notice(&notice).await;
        tracing::info!(pool = %self.pool(), client = self.client_id, "idle client closed for shutdown");
        Next::End
    }
}
