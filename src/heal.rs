//! The healing policy of DESIGN §3, protocol-agnostic and without I/O.
//!
//! Given what the session's ledger knew when its backend was lost, [`decide`] is the one place
//! that chooses: swap in a new backend silently, send the requests in flight again (within the
//! replay budget), or tell the client the truth. [`LossFacts::from_ledger`] computes its inputs
//! from the requests in flight; [`answers`] says how each request the backend accepted is
//! answered after a refusal and what the client is left in. All pure, so every case is
//! table-tested.

use crate::session::ledger::{Boundary, InFlight, TxEnd, TxState};

/// What a session knows at the moment its backend connection was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LossFacts {
    /// The transaction state before the oldest request in flight (the state now, when none is).
    pub(crate) tx: TxState,
    /// Requests in flight.
    pub(crate) in_flight: usize,
    /// The backend accepted bytes of some request in flight.
    pub(crate) any_accepted: bool,
    /// Every request the backend accepted bytes of executes nothing (Parse, Describe, Close,
    /// Sync, BEGIN, SHOW): running them twice changes nothing anyone can see.
    pub(crate) accepted_harmless: bool,
    /// A request the backend accepted bytes of may commit: COMMIT, PREPARE TRANSACTION, or a
    /// simple query that ends an implicit transaction.
    pub(crate) accepted_may_commit: bool,
    /// Every request the backend accepted bytes of is kept, so it can be sent again.
    pub(crate) accepted_retained: bool,
    /// Reply bytes of a request in flight already reached the client.
    pub(crate) answered_bytes: bool,
    /// The backend's only answer was a fatal error raised only while it waits for a request
    /// (PostgreSQL 57P05, MySQL 4031): it read none of the requests in flight.
    pub(crate) refused_while_idle: bool,
    /// A write of the oldest request was attempted (false when the backend was found dead
    /// before any write).
    pub(crate) write_attempted: bool,
    /// The session's state can be rebuilt on a new backend.
    pub(crate) state_restorable: bool,
    /// Times the requests in flight were replayed already.
    pub(crate) replays: u32,
}

impl LossFacts {
    /// The facts about `requests` (in flight, oldest first) that started from `tx`.
    pub(crate) fn from_ledger(
        tx: TxState,
        requests: impl IntoIterator<Item = InFlight>,
        refused_while_idle: bool,
        state_restorable: bool,
        replays: u32,
    ) -> LossFacts {
        let mut facts = LossFacts {
            tx,
            in_flight: 0,
            any_accepted: false,
            accepted_harmless: true,
            accepted_may_commit: false,
            accepted_retained: true,
            answered_bytes: false,
            refused_while_idle,
            write_attempted: false,
            state_restorable,
            replays,
        };
        for request in requests {
            if facts.in_flight == 0 {
                facts.write_attempted = request.write_attempted;
            }
            facts.in_flight += 1;
            facts.answered_bytes |= request.answered_bytes;
            if request.accepted {
                facts.any_accepted = true;
                facts.accepted_harmless &= !request.traits.executes;
                facts.accepted_may_commit |= may_commit(&request, tx);
                facts.accepted_retained &= request.retained;
            }
        }
        facts
    }
}

/// Whether a request that reached the backend may have committed something.
fn may_commit(request: &InFlight, tx: TxState) -> bool {
    // A simple query run inside an implicit transaction commits it when it ends.
    request.traits.may_commit
        || tx == TxState::Implicit && request.boundary == Some(Boundary::Command)
}

/// Why requests were replayed (`suture_replays_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplayReason {
    /// The backend was found dead before any byte was written.
    NeverSent,
    /// The write failed with zero bytes accepted.
    ZeroBytes,
    /// The backend refused them with an idle-only fatal error.
    RefusedWhileIdle,
    /// They may have reached the backend, but they execute nothing.
    NoSideEffects,
}

/// Why a loss was surfaced to the client (`suture_replays_refused_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefusalReason {
    /// A request may have run.
    MaybeExecuted,
    /// The client was inside a transaction, which is gone.
    InTransaction,
    /// A commit was in flight: its outcome is unknown.
    CommitUnknown,
    /// The session had state that cannot be rebuilt.
    TaintedSession,
    /// The requests could have been replayed, but their replays or the pool's replay budget
    /// are used up.
    BudgetExhausted,
    /// No backend could be had for the session within the failover hold.
    BackendUnavailable,
}

/// What to do about a lost backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing was in flight: swap in a new backend and restore the session.
    Heal,
    /// Send the requests in flight again on a new backend.
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
            RefusalReason::BackendUnavailable => "backend_unavailable",
        }
    }
}

/// The replay budget, as [`decide`] sees it: a token is taken only for a replay.
pub(crate) trait ReplayBudget {
    /// Takes one token if there is one.
    fn try_spend(&mut self) -> bool;
}

impl ReplayBudget for &crate::retry_budget::RetryBudget {
    fn try_spend(&mut self) -> bool {
        crate::retry_budget::RetryBudget::try_spend(self)
    }
}

/// The §3 decision. `budget` is asked for a token only when the answer would be a replay.
pub(crate) fn decide(facts: LossFacts, budget: &mut impl ReplayBudget) -> Decision {
    let unexecuted = facts.in_flight == 0
        || !facts.answered_bytes && (!facts.any_accepted || facts.refused_while_idle);
    let harmless = facts.any_accepted && facts.accepted_harmless && !facts.answered_bytes;
    if !unexecuted && !harmless {
        if facts.accepted_may_commit {
            return Decision::Refuse(RefusalReason::CommitUnknown);
        }
        if facts.tx.in_transaction() {
            return Decision::Refuse(RefusalReason::InTransaction);
        }
        return Decision::Refuse(RefusalReason::MaybeExecuted);
    }
    if facts.tx.in_transaction() {
        return Decision::Refuse(RefusalReason::InTransaction);
    }
    if !facts.state_restorable {
        return Decision::Refuse(RefusalReason::TaintedSession);
    }
    if facts.in_flight == 0 {
        return Decision::Heal;
    }
    if facts.any_accepted && !facts.accepted_retained {
        return Decision::Refuse(RefusalReason::MaybeExecuted);
    }
    let reason = if facts.any_accepted && !unexecuted {
        ReplayReason::NoSideEffects
    } else if facts.any_accepted {
        ReplayReason::RefusedWhileIdle
    } else if facts.write_attempted {
        ReplayReason::ZeroBytes
    } else {
        ReplayReason::NeverSent
    };
    if facts.replays >= crate::retry_budget::MAX_REPLAYS_PER_REQUEST || !budget.try_spend() {
        return Decision::Refuse(RefusalReason::BudgetExhausted);
    }
    Decision::Replay(reason)
}

/// The error a request is answered with after a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Told {
    /// The refusal itself (the first request of a lost transaction, or any request that may
    /// have run).
    Refusal(RefusalReason),
    /// Inside a transaction the client already knows is aborted (PostgreSQL 25P02).
    Aborted,
}

/// How one request the backend accepted is answered after a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// An error, then the ready marker with this state (None: no ready marker, the request
    /// was a Flush batch or is still open, and the client skips to its Sync).
    Error(Told, Option<TxState>),
    /// It ended the lost transaction with ROLLBACK: answered as done, ready marker idle. Its
    /// first `answered` parts were answered by the lost backend already and are not again.
    RolledBack { answered: u32 },
    /// The ready marker only (a Sync while the client skips to it).
    ReadyOnly(TxState),
    /// The end of a reply the lost backend had all but finished: the answers to `closes`
    /// trailing Closes, then the ready marker with `ready` (`Ledger::owes_only_ready`).
    Rest { closes: u32, ready: TxState },
    /// No answer at all (a request the backend would have skipped).
    Nothing,
}

/// What the client is left in after the accepted requests were answered; the requests it
/// sent after them are served from there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum After {
    /// Outside any transaction: carry on on a new backend.
    Outside,
    /// Inside the lost transaction block; `announced` once the client was told it is gone.
    Block { announced: bool },
    /// Inside the lost implicit transaction, up to the client's next Sync.
    Implicit { announced: bool },
    /// Skipping everything up to the client's next Sync, after an error it was shown.
    Skipping,
}

/// The context the client is in when nothing in flight has been answered yet.
pub(crate) fn context_of(tx: TxState) -> After {
    match tx {
        TxState::Idle => After::Outside,
        TxState::InBlock | TxState::Failed => After::Block { announced: false },
        TxState::Implicit => After::Implicit { announced: false },
        TxState::ImplicitFailed => After::Skipping,
    }
}

/// How each of `accepted` (the requests the backend accepted bytes of, oldest first, which
/// started from `tx`) is answered after `reason`, and what the client is left in.
pub(crate) fn answers(
    accepted: &[InFlight],
    tx: TxState,
    reason: RefusalReason,
) -> (Vec<Answer>, After) {
    let mut out = Vec::with_capacity(accepted.len());
    let mut ctx = context_of(tx);
    for request in accepted {
        let ends_batch = matches!(request.boundary, Some(Boundary::Sync | Boundary::Command));
        let is_sync = request.boundary == Some(Boundary::Sync);
        let (answer, next) = match ctx {
            _ if request.skipped && !is_sync => (Answer::Nothing, ctx),
            After::Skipping if is_sync => (Answer::ReadyOnly(TxState::Idle), After::Outside),
            After::Skipping => (Answer::Nothing, ctx),
            // Whatever may have run (or committed) outside a transaction: the refusal, and
            // the client is outside a transaction afterwards.
            After::Outside => {
                let told = match reason {
                    RefusalReason::InTransaction => RefusalReason::MaybeExecuted,
                    other => other,
                };
                if ends_batch {
                    (
                        Answer::Error(Told::Refusal(told), Some(TxState::Idle)),
                        After::Outside,
                    )
                } else {
                    (Answer::Error(Told::Refusal(told), None), After::Skipping)
                }
            }
            After::Block { .. } if reason == RefusalReason::CommitUnknown => {
                if ends_batch {
                    (
                        Answer::Error(Told::Refusal(reason), Some(TxState::Idle)),
                        After::Outside,
                    )
                } else {
                    (Answer::Error(Told::Refusal(reason), None), After::Skipping)
                }
            }
            After::Block { .. } if request.traits.ends_tx == Some(TxEnd::Rollback) => {
                let answered = request.answered_parts;
                (Answer::RolledBack { answered }, After::Outside)
            }
            After::Block { announced } => {
                let told = if announced {
                    Told::Aborted
                } else {
                    Told::Refusal(RefusalReason::InTransaction)
                };
                let ready = ends_batch.then_some(TxState::Failed);
                (Answer::Error(told, ready), After::Block { announced: true })
            }
            After::Implicit { announced } => {
                let told = if reason == RefusalReason::CommitUnknown {
                    Told::Refusal(reason)
                } else {
                    Told::Refusal(RefusalReason::InTransaction)
                };
                match (is_sync, announced) {
                    (true, false) => (Answer::Error(told, Some(TxState::Idle)), After::Outside),
                    (true, true) => (Answer::ReadyOnly(TxState::Idle), After::Outside),
                    (false, false) => (Answer::Error(told, None), After::Skipping),
                    (false, true) => (Answer::Nothing, ctx),
                }
            }
        };
        out.push(answer);
        ctx = next;
    }
    (out, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::ledger::Traits;

    struct Tokens(u32);

    impl ReplayBudget for Tokens {
        fn try_spend(&mut self) -> bool {
            if self.0 == 0 {
                return false;
            }
            self.0 -= 1;
            true
        }
    }

    fn idle() -> LossFacts {
        LossFacts::from_ledger(TxState::Idle, [], false, true, 0)
    }

    fn request(accepted: bool, executes: bool) -> InFlight {
        InFlight {
            accepted,
            write_attempted: accepted,
            answered_bytes: false,
            answered_parts: 0,
            boundary: Some(Boundary::Command),
            traits: Traits {
                executes,
                ..Traits::default()
            },
            retained: true,
            skipped: false,
        }
    }

    fn facts(tx: TxState, requests: &[InFlight]) -> LossFacts {
        LossFacts::from_ledger(tx, requests.iter().copied(), false, true, 0)
    }

    fn decide_with(facts: LossFacts) -> Decision {
        decide(facts, &mut Tokens(10))
    }

    #[test]
    fn nothing_in_flight_heals() {
        assert_eq!(decide_with(idle()), Decision::Heal);
    }

    #[test]
    fn facts_summarise_only_what_the_backend_accepted() {
        let unsent_commit = InFlight {
            traits: Traits {
                may_commit: true,
                executes: true,
                ends_tx: Some(TxEnd::Commit),
                waits: true,
                chains: false,
            },
            ..request(false, true)
        };
        let f = facts(TxState::Idle, &[request(true, false), unsent_commit]);
        assert_eq!(f.in_flight, 2);
        assert!(f.any_accepted && f.accepted_harmless && !f.accepted_may_commit);
        let f = facts(TxState::Implicit, &[request(true, true)]);
        assert!(
            f.accepted_may_commit,
            "a query ends the implicit transaction"
        );
        let f = facts(TxState::Idle, &[request(true, true), request(false, true)]);
        assert!(!f.accepted_harmless);
    }

    #[test]
    fn unsent_requests_replay() {
        let never = facts(
            TxState::Idle,
            &[InFlight {
                write_attempted: false,
                ..request(false, true)
            }],
        );
        assert_eq!(
            decide_with(never),
            Decision::Replay(ReplayReason::NeverSent)
        );
        let zero = facts(
            TxState::Idle,
            &[InFlight {
                write_attempted: true,
                ..request(false, true)
            }],
        );
        assert_eq!(decide_with(zero), Decision::Replay(ReplayReason::ZeroBytes));
    }

    #[test]
    fn idle_refusal_replays_even_after_bytes_were_written() {
        let f = LossFacts::from_ledger(TxState::Idle, [request(true, true)], true, true, 0);
        assert_eq!(
            decide_with(f),
            Decision::Replay(ReplayReason::RefusedWhileIdle)
        );
    }

    #[test]
    fn written_request_without_reply_is_maybe_executed() {
        let f = facts(TxState::Idle, &[request(true, true)]);
        assert_eq!(
            decide_with(f),
            Decision::Refuse(RefusalReason::MaybeExecuted)
        );
    }

    #[test]
    fn harmless_requests_replay_but_not_after_a_reply_byte() {
        let f = facts(TxState::Idle, &[request(true, false), request(true, false)]);
        assert_eq!(
            decide_with(f),
            Decision::Replay(ReplayReason::NoSideEffects)
        );
        let answered = InFlight {
            answered_bytes: true,
            ..request(true, false)
        };
        let f = facts(TxState::Idle, &[answered]);
        assert!(matches!(decide_with(f), Decision::Refuse(_)));
        // One harmful request among them: nothing may be replayed.
        let f = facts(TxState::Idle, &[request(true, false), request(true, true)]);
        assert_eq!(
            decide_with(f),
            Decision::Refuse(RefusalReason::MaybeExecuted)
        );
    }

    #[test]
    fn commit_accepted_anywhere_in_flight_is_unknown() {
        let commit = InFlight {
            traits: Traits {
                may_commit: true,
                executes: true,
                ends_tx: Some(TxEnd::Commit),
                waits: true,
                chains: false,
            },
            ..request(true, true)
        };
        let f = facts(TxState::InBlock, &[request(true, true), commit]);
        assert_eq!(
            decide_with(f),
            Decision::Refuse(RefusalReason::CommitUnknown)
        );
    }

    #[test]
    fn open_transactions_are_reported_even_when_nothing_was_sent() {
        for tx in [
            TxState::InBlock,
            TxState::Failed,
            TxState::Implicit,
            TxState::ImplicitFailed,
        ] {
            assert_eq!(
                decide_with(facts(tx, &[])),
                Decision::Refuse(RefusalReason::InTransaction),
                "{tx:?}"
            );
            assert_eq!(
                decide_with(facts(tx, &[request(false, true)])),
                Decision::Refuse(RefusalReason::InTransaction),
                "{tx:?}"
            );
        }
    }

    #[test]
    fn tainted_session_is_reported() {
        let f = LossFacts::from_ledger(TxState::Idle, [], false, false, 0);
        assert_eq!(
            decide_with(f),
            Decision::Refuse(RefusalReason::TaintedSession)
        );
    }

    #[test]
    fn a_request_no_longer_held_cannot_be_replayed() {
        let f = facts(
            TxState::Idle,
            &[InFlight {
                retained: false,
                ..request(true, false)
            }],
        );
        assert_eq!(
            decide_with(f),
            Decision::Refuse(RefusalReason::MaybeExecuted)
        );
    }

    #[test]
    fn the_budget_is_asked_only_for_replays() {
        let mut empty = Tokens(0);
        assert_eq!(decide(idle(), &mut empty), Decision::Heal);
        let unsent = facts(TxState::Idle, &[request(false, true)]);
        assert_eq!(
            decide(unsent, &mut empty),
            Decision::Refuse(RefusalReason::BudgetExhausted)
        );
        let mut one = Tokens(1);
        assert!(matches!(decide(unsent, &mut one), Decision::Replay(_)));
        assert_eq!(one.0, 0);
        let tired = LossFacts {
            replays: crate::retry_budget::MAX_REPLAYS_PER_REQUEST,
            ..unsent
        };
        assert_eq!(
            decide(tired, &mut Tokens(10)),
            Decision::Refuse(RefusalReason::BudgetExhausted)
        );
    }

    /// Exhaustive: nothing that may have run is replayed, nothing is healed silently inside a
    /// transaction.
    #[test]
    fn never_replays_what_may_have_run() {
        let txs = [
            TxState::Idle,
            TxState::InBlock,
            TxState::Failed,
            TxState::Implicit,
            TxState::ImplicitFailed,
        ];
        for bits in 0u32..(1 << 9) {
            let b = |i: u32| bits & (1 << i) != 0;
            for tx in txs {
                let first = InFlight {
                    accepted: b(0),
                    write_attempted: b(0),
                    answered_bytes: b(1),
                    answered_parts: 0,
                    boundary: Some(Boundary::Command),
                    traits: Traits {
                        executes: b(2),
                        may_commit: b(3),
                        ends_tx: None,
                        waits: true,
                        chains: false,
                    },
                    retained: b(4),
                    skipped: false,
                };
                let second = InFlight {
                    accepted: b(0) && b(5),
                    traits: Traits {
                        executes: b(6),
                        ..Traits::default()
                    },
                    ..request(false, false)
                };
                let requests: Vec<InFlight> = match (b(7), b(8)) {
                    (false, _) => vec![],
                    (true, false) => vec![first],
                    (true, true) => vec![first, second],
                };
                let f = LossFacts::from_ledger(tx, requests.iter().copied(), false, true, 0);
                match decide_with(f) {
                    Decision::Replay(_) => {
                        assert!(!f.answered_bytes, "{f:?}");
                        assert!(!f.any_accepted || f.accepted_harmless, "{f:?}");
                        assert!(!tx.in_transaction(), "{f:?}");
                    }
                    Decision::Heal => assert!(f.in_flight == 0 && !tx.in_transaction(), "{f:?}"),
                    Decision::Refuse(_) => {}
                }
            }
        }
    }

    fn ended(boundary: Boundary, traits: Traits) -> InFlight {
        InFlight {
            boundary: Some(boundary),
            traits,
            ..request(true, true)
        }
    }

    #[test]
    fn pipelined_requests_outside_a_transaction_each_hear_the_refusal() {
        let (out, after) = answers(
            &[
                ended(Boundary::Command, Traits::default()),
                ended(Boundary::Sync, Traits::default()),
            ],
            TxState::Idle,
            RefusalReason::MaybeExecuted,
        );
        let told = Answer::Error(
            Told::Refusal(RefusalReason::MaybeExecuted),
            Some(TxState::Idle),
        );
        assert_eq!(out, vec![told, told]);
        assert_eq!(after, After::Outside);
    }

    #[test]
    fn a_lost_flush_batch_leaves_the_client_skipping_to_its_sync() {
        let (out, after) = answers(
            &[
                ended(Boundary::Flush, Traits::default()),
                ended(Boundary::Flush, Traits::default()),
                ended(Boundary::Sync, Traits::default()),
            ],
            TxState::Idle,
            RefusalReason::MaybeExecuted,
        );
        assert_eq!(
            out,
            vec![
                Answer::Error(Told::Refusal(RefusalReason::MaybeExecuted), None),
                Answer::Nothing,
                Answer::ReadyOnly(TxState::Idle),
            ]
        );
        assert_eq!(after, After::Outside);
    }

    #[test]
    fn inside_a_block_the_first_hears_08006_then_25p02_until_rollback_then_40003() {
        let rollback = Traits {
            ends_tx: Some(TxEnd::Rollback),
            ..Traits::default()
        };
        let (out, after) = answers(
            &[
                ended(Boundary::Command, Traits::default()),
                ended(Boundary::Command, Traits::default()),
                ended(Boundary::Command, rollback),
                ended(Boundary::Command, Traits::default()),
            ],
            TxState::InBlock,
            RefusalReason::InTransaction,
        );
        assert_eq!(
            out,
            vec![
                Answer::Error(
                    Told::Refusal(RefusalReason::InTransaction),
                    Some(TxState::Failed)
                ),
                Answer::Error(Told::Aborted, Some(TxState::Failed)),
                Answer::RolledBack { answered: 0 },
                Answer::Error(
                    Told::Refusal(RefusalReason::MaybeExecuted),
                    Some(TxState::Idle)
                ),
            ]
        );
        assert_eq!(after, After::Outside);
        let (_, after) = answers(
            &[ended(Boundary::Command, Traits::default())],
            TxState::InBlock,
            RefusalReason::InTransaction,
        );
        assert_eq!(after, After::Block { announced: true });
    }

    #[test]
    fn an_unknown_commit_is_told_to_every_accepted_request() {
        let commit = Traits {
            may_commit: true,
            executes: true,
            ends_tx: Some(TxEnd::Commit),
            waits: true,
            chains: false,
        };
        let (out, after) = answers(
            &[
                ended(Boundary::Sync, Traits::default()),
                ended(Boundary::Sync, commit),
            ],
            TxState::InBlock,
            RefusalReason::CommitUnknown,
        );
        let told = Answer::Error(
            Told::Refusal(RefusalReason::CommitUnknown),
            Some(TxState::Idle),
        );
        assert_eq!(out, vec![told, told]);
        assert_eq!(after, After::Outside);
    }

    #[test]
    fn an_implicit_transaction_ends_at_the_sync() {
        let (out, after) = answers(
            &[ended(Boundary::Sync, Traits::default())],
            TxState::Implicit,
            RefusalReason::InTransaction,
        );
        assert_eq!(
            out,
            vec![Answer::Error(
                Told::Refusal(RefusalReason::InTransaction),
                Some(TxState::Idle)
            )]
        );
        assert_eq!(after, After::Outside);
        assert_eq!(
            context_of(TxState::Implicit),
            After::Implicit { announced: false }
        );
        let (out, after) = answers(
            &[ended(Boundary::Sync, Traits::default())],
            TxState::ImplicitFailed,
            RefusalReason::InTransaction,
        );
        assert_eq!(
            (out, after),
            (vec![Answer::ReadyOnly(TxState::Idle)], After::Outside)
        );
    }
}
