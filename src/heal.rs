//! The healing policy of DESIGN §3, protocol-agnostic and without I/O: given what a session
//! tracked when its backend was lost, decide whether to swap in a new backend silently, replay
//! the request in flight, or tell the client the truth. Pure, so every case is unit-tested.

/// What a session knows at the moment its backend connection was lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LossFacts {
    /// A request was sent (or was being sent) and its reply is not complete.
    pub(crate) request_in_flight: bool,
    /// Bytes of the in-flight request(s) the kernel accepted for the backend.
    pub(crate) bytes_to_backend: u64,
    /// Bytes of the reply already forwarded to the client.
    pub(crate) bytes_to_client: u64,
    /// The backend's only answer was a fatal error raised only while waiting for a request
    /// (PostgreSQL 57P05, MySQL 4031).
    pub(crate) refused_while_idle: bool,
    /// The client's transaction status before the request was idle (no open transaction).
    pub(crate) idle_before_request: bool,
    /// The client's transaction status now is inside a transaction block.
    pub(crate) in_transaction: bool,
    /// The request may commit (COMMIT, END, PREPARE TRANSACTION ...).
    pub(crate) may_commit: bool,
    /// The session's state can be rebuilt on a new backend.
    pub(crate) state_restorable: bool,
    /// The session still holds the whole request, so it can be sent again.
    pub(crate) request_retained: bool,
    /// The requests in flight execute nothing (Parse, Bind, Describe, Close, Sync only), so
    /// running them twice changes nothing the client can see.
    pub(crate) side_effect_free: bool,
    /// A write of the request was attempted (and failed, if nothing was accepted); false when
    /// the pre-write check found the backend dead first.
    pub(crate) write_attempted: bool,
}

/// Why a request was replayed (`suture_replays_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplayReason {
    /// The backend was found dead before any byte was written.
    NeverSent,
    /// The write failed with zero bytes accepted.
    ZeroBytes,
    /// The backend refused it with an idle-only fatal error.
    RefusedWhileIdle,
    /// It may have reached the backend, but it executes nothing (e.g. a Close and Sync).
    NoSideEffects,
}

/// Why a loss was surfaced to the client (`suture_replays_refused_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefusalReason {
    /// The request may have run.
    MaybeExecuted,
    /// The client was inside a transaction, which is gone.
    InTransaction,
    /// A commit was in flight: its outcome is unknown.
    CommitUnknown,
    /// The session had state that cannot be rebuilt.
    TaintedSession,
    /// The request could have been replayed, but its replays or the pool's replay budget are
    /// used up.
    BudgetExhausted,
}

/// What to do about a lost backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing was in flight: swap in a new backend and restore the session.
    Heal,
    /// Replay the request on a new backend.
    Replay(ReplayReason),
    /// Tell the client.
    Refuse(RefusalReason),
}

impl ReplayReason {
    /// Metrics label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ReplayReason::NeverSent => "never_sent",
            ReplayReason::ZeroBytes => "zero_bytes",
            ReplayReason::RefusedWhileIdle => "refused_while_idle",
            ReplayReason::NoSideEffects => "no_side_effects",
        }
    }
}

impl RefusalReason {
    /// Metrics label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            RefusalReason::MaybeExecuted => "maybe_executed",
            RefusalReason::InTransaction => "in_transaction",
            RefusalReason::CommitUnknown => "commit_unknown",
            RefusalReason::TaintedSession => "tainted_session",
            RefusalReason::BudgetExhausted => "budget_exhausted",
        }
    }
}

/// The §3 decision.
pub(crate) fn decide(facts: LossFacts) -> Decision {
    let unexecuted = !facts.request_in_flight
        || facts.refused_while_idle && facts.bytes_to_client == 0
        || facts.bytes_to_backend == 0 && facts.bytes_to_client == 0;
    let harmless = facts.side_effect_free
        && facts.bytes_to_client == 0
        && facts.idle_before_request
        && !facts.in_transaction
        && facts.state_restorable
        && facts.request_retained;
    if !unexecuted && harmless {
        return Decision::Replay(ReplayReason::NoSideEffects);
    }
    if !unexecuted {
        if facts.may_commit {
            return Decision::Refuse(RefusalReason::CommitUnknown);
        }
        if facts.in_transaction || !facts.idle_before_request {
            return Decision::Refuse(RefusalReason::InTransaction);
        }
        return Decision::Refuse(RefusalReason::MaybeExecuted);
    }
    if facts.in_transaction || facts.request_in_flight && !facts.idle_before_request {
        return Decision::Refuse(RefusalReason::InTransaction);
    }
    if !facts.state_restorable {
        return Decision::Refuse(RefusalReason::TaintedSession);
    }
    if !facts.request_in_flight {
        return Decision::Heal;
    }
    if !facts.request_retained {
        return Decision::Refuse(RefusalReason::MaybeExecuted);
    }
    if facts.refused_while_idle && facts.bytes_to_backend > 0 {
        Decision::Replay(ReplayReason::RefusedWhileIdle)
    } else if facts.write_attempted {
        Decision::Replay(ReplayReason::ZeroBytes)
    } else {
        Decision::Replay(ReplayReason::NeverSent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle() -> LossFacts {
        LossFacts {
            idle_before_request: true,
            state_restorable: true,
            request_retained: true,
            ..LossFacts::default()
        }
    }

    #[test]
    fn nothing_in_flight_heals() {
        assert_eq!(decide(idle()), Decision::Heal);
    }

    #[test]
    fn unsent_request_replays() {
        let facts = LossFacts {
            request_in_flight: true,
            ..idle()
        };
        assert_eq!(decide(facts), Decision::Replay(ReplayReason::NeverSent));
    }

    #[test]
    fn failed_write_with_nothing_accepted_replays_as_zero_bytes() {
        let facts = LossFacts {
            request_in_flight: true,
            write_attempted: true,
            ..idle()
        };
        assert_eq!(decide(facts), Decision::Replay(ReplayReason::ZeroBytes));
    }

    #[test]
    fn idle_refusal_replays_even_after_bytes_were_written() {
        let facts = LossFacts {
            request_in_flight: true,
            bytes_to_backend: 30,
            refused_while_idle: true,
            ..idle()
        };
        assert_eq!(
            decide(facts),
            Decision::Replay(ReplayReason::RefusedWhileIdle)
        );
    }

    #[test]
    fn written_request_without_reply_is_maybe_executed() {
        let facts = LossFacts {
            request_in_flight: true,
            bytes_to_backend: 30,
            ..idle()
        };
        assert_eq!(
            decide(facts),
            Decision::Refuse(RefusalReason::MaybeExecuted)
        );
    }

    #[test]
    fn partial_reply_is_never_replayed() {
        let facts = LossFacts {
            request_in_flight: true,
            bytes_to_client: 10,
            refused_while_idle: true,
            ..idle()
        };
        assert_ne!(
            decide(facts),
            Decision::Replay(ReplayReason::RefusedWhileIdle)
        );
        assert!(matches!(decide(facts), Decision::Refuse(_)));
    }

    #[test]
    fn written_request_that_executes_nothing_replays() {
        let facts = LossFacts {
            request_in_flight: true,
            bytes_to_backend: 14,
            side_effect_free: true,
            ..idle()
        };
        assert_eq!(decide(facts), Decision::Replay(ReplayReason::NoSideEffects));
        let answered = LossFacts {
            bytes_to_client: 5,
            ..facts
        };
        assert!(matches!(decide(answered), Decision::Refuse(_)));
    }

    #[test]
    fn commit_in_flight_is_unknown() {
        let facts = LossFacts {
            request_in_flight: true,
            bytes_to_backend: 7,
            may_commit: true,
            ..idle()
        };
        assert_eq!(
            decide(facts),
            Decision::Refuse(RefusalReason::CommitUnknown)
        );
    }

    #[test]
    fn open_transaction_is_reported_even_when_idle() {
        let facts = LossFacts {
            in_transaction: true,
            ..idle()
        };
        assert_eq!(
            decide(facts),
            Decision::Refuse(RefusalReason::InTransaction)
        );
        let facts = LossFacts {
            request_in_flight: true,
            idle_before_request: false,
            ..idle()
        };
        assert_eq!(
            decide(facts),
            Decision::Refuse(RefusalReason::InTransaction)
        );
    }

    #[test]
    fn tainted_session_is_reported() {
        let facts = LossFacts {
            state_restorable: false,
            ..idle()
        };
        assert_eq!(
            decide(facts),
            Decision::Refuse(RefusalReason::TaintedSession)
        );
    }

    #[test]
    fn a_request_no_longer_held_cannot_be_replayed() {
        let facts = LossFacts {
            request_in_flight: true,
            request_retained: false,
            ..idle()
        };
        assert_eq!(
            decide(facts),
            Decision::Refuse(RefusalReason::MaybeExecuted)
        );
    }

    /// Exhaustive: a request whose bytes reached the backend is replayed only on an idle-only
    /// refusal with nothing sent to the client; partial replies are never replayed.
    #[test]
    fn never_replays_what_may_have_run() {
        for bits in 0u32..(1 << 10) {
            let b = |i: u32| bits & (1 << i) != 0;
            let facts = LossFacts {
                request_in_flight: b(0),
                bytes_to_backend: if b(1) { 5 } else { 0 },
                bytes_to_client: if b(2) { 5 } else { 0 },
                refused_while_idle: b(3),
                idle_before_request: b(4),
                in_transaction: b(5),
                may_commit: b(6),
                state_restorable: b(7),
                request_retained: b(8),
                side_effect_free: b(9),
                write_attempted: false,
            };
            if let Decision::Replay(_) = decide(facts) {
                assert!(
                    facts.request_in_flight && facts.bytes_to_client == 0,
                    "{facts:?}"
                );
                assert!(
                    facts.bytes_to_backend == 0
                        || facts.refused_while_idle
                        || facts.side_effect_free,
                    "{facts:?}"
                );
                assert!(
                    !facts.in_transaction && facts.idle_before_request && facts.state_restorable,
                    "{facts:?}"
                );
            }
            if let Decision::Heal = decide(facts) {
                assert!(
                    !facts.request_in_flight && !facts.in_transaction && facts.state_restorable,
                    "{facts:?}"
                );
            }
        }
    }
}
