//! A lost backend, handled as DESIGN §3 says, for both protocols. First whatever the client was already given is
//! written out whole; then `heal::decide` chooses, on the ledger's facts:
//!
//! - heal: nothing was in flight, outside a transaction; a new backend takes the session's
//!   slot and the session's state is restored on it;
//! - replay: the requests in flight provably did not run (or execute nothing); what the lost
//!   backend had accepted is put back in front of what it never got, and sent to the new one;
//! - refuse: each request the lost backend accepted is answered with the truth
//!   (`heal::answers`), the requests it never got stay queued, the client is shown its lost
//!   transaction until it ends it (`aborted`), and the session carries on on a new backend; or,
//!   for state that cannot be rebuilt, a FATAL ends the session.
//!
//! Nothing the lost backend accepted is ever sent to another one, except in a replay.

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;

use crate::heal::{self, After, Answer, Decision, LossFacts, RefusalReason, ReplayReason};
use crate::ops::pool_state::EventKind;
use crate::ops::series::IDLE_CLOSE_CAUSES;
use crate::pool::Manager;
use crate::retry_budget::replay_backoff;
use crate::session::command_phase::{CommandPhase, Next};
use crate::session::framing::ClientFramer;
use crate::session::hooks::{AbortedEnd, Hooks, LostIo};
use crate::session::ledger::{InFlight, Reply, TxEnd, TxState};
use crate::session::link::Link;
use crate::session::relay;
use crate::session::tracker::Unsolicited;
use crate::wire::{self, WireError};

impl<H: Hooks> CommandPhase<H> {
    /// Acts on the §3 decision for a lost backend.
    pub(crate) async fn backend_lost(&mut self, lost: &WireError) -> Next {
        let written = relay::write_pending(
            &mut self.client_write,
            self.checkout.conn().rbuf(),
            &mut self.backend,
            &self.boundary,
            self.limits.client_write,
        )
        .await;
        if let Err(err) = written {
            tracing::debug!(error = %err, "client left while its last reply was written");
            return Next::End;
        }
        let (fatal, cause) = {
            let tracker = self.shared.lock();
            let cause = loss_cause(lost, tracker.unsolicited.as_ref());
            (tracker.fatal_code.clone(), cause)
        };
        if let Some(code) = fatal {
            // The backend's own FATAL reached the client: the session ends, as it would have
            // on the server. (A client can cause this at will, by breaking the protocol.)
            if let Some(suppressed) = self.hooks.core().log_limit.allow("backend_fatal") {
                tracing::info!(pool = %self.pool(), error = %lost, code, suppressed, "backend ended the session with a FATAL error");
            }
            return Next::End;
        }
        if self.backend.ends_at_boundary() && !self.answer_owed_ready().await {
            return Next::End;
        }
        let facts = self.shared.lock().loss_facts();
        let decision = heal::decide(facts, &mut &self.hooks.core().replay_budget);
        let backend_id = <H::Manager as Manager>::conn_id(self.checkout.conn_ref());
        tracing::warn!(pool = %self.pool(), client = self.client_id, cause, backend_id, error = %lost, ?decision, ?facts, "backend connection lost");
        if !self.backend.ends_at_boundary() {
            if let Decision::Refuse(reason) = decision {
                self.count_refusal(reason);
            }
            tracing::warn!(pool = %self.pool(), "the loss cut a message streamed to the client in pieces; nothing more can be written to it, closing its connection");
            return Next::End;
        }
        match decision {
            Decision::Heal => self.heal(cause, backend_id).await,
            Decision::Replay(reason) => self.replay(reason, backend_id).await,
            Decision::Refuse(RefusalReason::TaintedSession) => {
                self.count_refusal(RefusalReason::TaintedSession);
                let notice = self.hooks.refusal_notice(RefusalReason::TaintedSession);
                self.end_with(notice, facts.in_flight == 0).await;
                Next::End
            }
            Decision::Refuse(reason) => {
                self.count_refusal(reason);
                self.answer_and_continue(reason, facts).await
            }
        }
    }

    /// When the lost backend owed the oldest request only its ready marker, and the state that
    /// marker carries is known (an answered COMMIT, an open block, an error), sends what the
    /// backend would have sent and completes the request; the loss is then judged on what is
    /// left. An error in that place would answer the client's Sync, which libpq's pipeline
    /// mode cannot take, and after an answered COMMIT it would not be the truth. False if the
    /// client left.
    async fn answer_owed_ready(&mut self) -> bool {
        let mut out = BytesMut::new();
        {
            let mut tracker = self.shared.lock();
            let Some(owed) = tracker.ledger.owes_only_ready() else {
                return true;
            };
            let rest = Answer::Rest {
                closes: owed.closes,
                ready: owed.ready,
            };
            if self
                .hooks
                .encode_answer(rest, 0, None, &tracker.book, &mut out)
                .is_err()
            {
                return true;
            }
            tracker.reply(Reply::Ready(owed.ready), 0);
            tracing::debug!(pool = %self.pool(), client = self.client_id, ?owed, "the lost backend owed only the ready marker; sent in its place");
        }
        wire::write_all(&mut self.client_write, &out, self.limits.client_write)
            .await
            .is_ok()
    }

    /// Nothing was in flight: a new backend, the state restored, nobody notices. If none can
    /// be had, the client is told when it next asks for something (so a client that stays
    /// quiet through an outage loses nothing).
    async fn heal(&mut self, cause: &'static str, lost: i64) -> Next {
        if IDLE_CLOSE_CAUSES.contains(&cause) {
            self.hooks.core().ops.record(EventKind::IdleClose, cause);
            metrics::counter!("suture_backend_idle_closes_total", "pool" => self.pool().to_owned(), "cause" => cause)
                .increment(1);
        }
        let drop_to = self.shared.lock().ledger.accepted_end();
        self.restart_client_stream(drop_to);
        let mut waited = false;
        loop {
            match self.replace_backend().await {
                Ok(()) => break,
                Err(notice) if waited || !self.cbuf.is_empty() => {
                    self.tell(Some(notice)).await;
                    return Next::End;
                }
                Err(_) => {
                    if !self.wait_for_request().await {
                        return Next::End;
                    }
                    waited = true;
                }
            }
        }
        self.shared.lock().reset_requests(TxState::Idle);
        metrics::counter!("suture_session_heals_total", "pool" => self.pool().to_owned())
            .increment(1);
        self.hooks.core().ops.record(EventKind::Heal, cause);
        let new_backend_id = <H::Manager as Manager>::conn_id(self.checkout.conn_ref());
        tracing::info!(pool = %self.pool(), client = self.client_id, cause, backend_id = lost, new_backend_id, "backend swapped under an idle session");
        Next::Resume
    }

    /// Sends the requests in flight again on a new backend: what the lost one had accepted
    /// (kept by the ledger) in front of what it never got.
    async fn replay(&mut self, reason: ReplayReason, lost: i64) -> Next {
        let (again, drop_to, attempt) = {
            let mut tracker = self.shared.lock();
            tracker.replays += 1;
            let again = tracker.ledger.accepted_bytes().map(BytesMut::from);
            (again, tracker.ledger.accepted_end(), tracker.replays)
        };
        self.restart_client_stream(drop_to);
        if let Some(mut again) = again.filter(|a| !a.is_empty()) {
            again.extend_from_slice(&self.cbuf);
            self.cbuf = again;
        }
        metrics::counter!("suture_replays_total", "pool" => self.pool().to_owned(), "reason" => reason.label())
            .increment(1);
        self.hooks
            .core()
            .ops
            .record(EventKind::Replay, reason.label());
        tracing::info!(pool = %self.pool(), client = self.client_id, cause = reason.label(), backend_id = lost, attempt, "requests replayed on a new backend");
        tokio::time::sleep(replay_backoff(attempt)).await;
        if let Err(notice) = self.replace_backend().await {
            self.tell(Some(notice)).await;
            return Next::End;
        }
        self.shared.lock().reset_requests(TxState::Idle);
        Next::Resume
    }

    /// Answers every request the lost backend accepted (after a budget refusal: every request
    /// in flight) with the truth, shows the client its lost transaction until it ends it, and
    /// carries on on a new backend with the requests the lost one never got.
    async fn answer_and_continue(&mut self, reason: RefusalReason, facts: LossFacts) -> Next {
        let (requests, kept, drop_to) = {
            let tracker = self.shared.lock();
            let ledger = &tracker.ledger;
            let every = reason == RefusalReason::BudgetExhausted;
            let requests: Vec<InFlight> =
                ledger.in_flight().filter(|r| every || r.accepted).collect();
            // A ROLLBACK batch is answered part by part, from its own messages.
            let kept: Vec<Option<BytesMut>> = requests
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    (r.traits.ends_tx == Some(TxEnd::Rollback))
                        .then(|| ledger.retained_request(i).map(BytesMut::from))
                        .flatten()
                })
                .collect();
            let drop_to = if every {
                ledger.offset()
            } else {
                ledger.accepted_end()
            };
            (requests, kept, drop_to)
        };
        let (answers, after) = heal::answers(&requests, facts.tx, reason);
        let mut out = BytesMut::new();
        {
            let tracker = self.shared.lock();
            for (index, (answer, request)) in answers.into_iter().zip(&kept).enumerate() {
                let encoded = self.hooks.encode_answer(
                    answer,
                    index,
                    request.as_deref(),
                    &tracker.book,
                    &mut out,
                );
                if encoded.is_err() {
                    return Next::End;
                }
            }
        }
        self.restart_client_stream(drop_to);
        if !out.is_empty() {
            let written =
                wire::write_all(&mut self.client_write, &out, self.limits.client_write).await;
            if written.is_err() {
                return Next::End;
            }
        }
        self.shared.lock().reset_requests(TxState::Idle);
        if after != After::Outside {
            if let Next::End = self.show_lost_transaction(after).await {
                return Next::End;
            }
        }
        match self.replace_backend().await {
            Ok(()) => Next::Resume,
            Err(notice) => {
                self.tell(Some(notice)).await;
                Next::End
            }
        }
    }

    /// Serves the client from its lost transaction until it ends it (no backend needed).
    async fn show_lost_transaction(&mut self, mode: After) -> Next {
        if !self.skip_discarded().await {
            return Next::End;
        }
        let io = LostIo {
            client_read: &mut self.client_read,
            cbuf: &mut self.cbuf,
            client_write: &mut self.client_write,
            shared: &self.shared,
            max_message_size: self.limits.max_message_size,
            write_limit: self.limits.client_write,
        };
        let end = self.hooks.serve_lost_transaction(io, mode).await;
        match end {
            AbortedEnd::TransactionEnded => Next::Resume,
            AbortedEnd::ClientGone(err) => {
                tracing::debug!(error = %err, "client left during its lost transaction");
                Next::End
            }
            AbortedEnd::ClientProtocol(err) => {
                self.client_protocol_error(&err).await;
                Next::End
            }
        }
    }

    /// Drops the client bytes that belong to requests the lost backend accepted (everything
    /// before `drop_to` in the ledger's stream) and starts framing the client's stream afresh
    /// for a new ledger. The rest of a message streamed to the lost backend is dropped as it
    /// arrives.
    fn restart_client_stream(&mut self, drop_to: u64) {
        let client = &mut self.client;
        let drop = usize::try_from(drop_to.saturating_sub(client.base))
            .unwrap_or(usize::MAX)
            .min(self.cbuf.len());
        let dropped_everything_read = drop >= client.scanned;
        client.discard = if dropped_everything_read && client.framer.in_message() {
            client.framer.remaining()
        } else {
            0
        };
        self.cbuf.advance(drop);
        client.restart();
    }

    /// Reads and drops the rest of a message streamed to a lost backend; false if the client
    /// left.
    async fn skip_discarded(&mut self) -> bool {
        loop {
            let n = self.client.discard.min(self.cbuf.len());
            self.cbuf.advance(n);
            self.client.discard -= n;
            if self.client.discard == 0 {
                return true;
            }
            if !matches!(self.client_read.read_buf(&mut self.cbuf).await, Ok(n) if n > 0) {
                return false;
            }
        }
    }

    /// Waits for the client's next bytes; false if it left (or asked to).
    async fn wait_for_request(&mut self) -> bool {
        if self.cbuf.is_empty()
            && !matches!(self.client_read.read_buf(&mut self.cbuf).await, Ok(n) if n > 0)
        {
            return false;
        }
        !self.hooks.is_quit(&self.cbuf)
    }

    /// Tells the client `notice`; the session then ends. When nothing was in flight it is sent
    /// as the answer to the client's next request, so drivers that drop an error arriving
    /// while idle (tokio-postgres) still read it.
    async fn end_with(&mut self, notice: H::Notice, idle: bool) {
        if idle && !self.wait_for_request().await {
            return;
        }
        self.send_notice(&notice).await;
    }
}

/// The cause label of a lost backend, as `suture_backend_idle_closes_total` names them when the
/// session was idle: an unsolicited fatal error (the server's idle timeout, or another), a FIN,
/// an RST; `error` for anything else (a failed health check, a timeout).
fn loss_cause(lost: &WireError, unsolicited: Option<&Unsolicited>) -> &'static str {
    match (unsolicited, lost) {
        (Some(u), _) if u.idle_timeout => "idle_timeout_notice",
        (Some(_), _) => "server_error",
        (None, WireError::Closed) => "fin",
        (None, WireError::Io(err)) if is_reset(err) => "rst",
        (None, _) => "error",
    }
}

fn is_reset(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(err.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_of_a_loss() {
        let rst = WireError::Io(std::io::ErrorKind::ConnectionReset.into());
        let idle = Unsolicited {
            code: "57P05".to_owned(),
            idle_timeout: true,
        };
        let terminated = Unsolicited {
            code: "57P01".to_owned(),
            idle_timeout: false,
        };
        assert_eq!(
            loss_cause(&WireError::Closed, Some(&idle)),
            "idle_timeout_notice"
        );
        assert_eq!(
            loss_cause(&WireError::Closed, Some(&terminated)),
            "server_error"
        );
        assert_eq!(loss_cause(&WireError::Closed, None), "fin");
        assert_eq!(loss_cause(&rst, None), "rst");
        let timeout = WireError::Timeout(std::time::Duration::from_secs(1));
        assert_eq!(loss_cause(&timeout, None), "error");
    }
}
