//! What the statements of one request that the backend already answered did to the
//! transaction, in order, and from it the transaction state the request's ready marker would
//! have carried. The ledger keeps one [`Progress`] per request; a loss uses it when a request
//! was answered all the way to its ready marker (DESIGN §3): when the state is known, the
//! marker is all the lost backend still owed, and nothing is in doubt.

use crate::session::ledger::TxState;

/// What one completed statement did to the transaction block (PostgreSQL's CommandComplete
/// tag says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    /// It began a block (BEGIN, START TRANSACTION).
    Began,
    /// It ended the block and settled what it did (COMMIT, PREPARE TRANSACTION, COMMIT
    /// PREPARED, ROLLBACK PREPARED): its CommandComplete comes only once that is durable.
    Ended,
    /// ROLLBACK: the end of the block, or a rollback to a savepoint inside it; the tag does not
    /// say which.
    RolledBack,
    /// COMMIT (or END) answered with an error (a deferred constraint, a serialization failure,
    /// a timeout at commit): PostgreSQL rolls the block back and leaves it (xact.c: a failure
    /// while committing returns to the default state), so it ended the block as well.
    CommitFailed,
    /// Anything else that ran.
    Other,
}

impl Completion {
    /// The completion a PostgreSQL CommandComplete tag stands for.
    pub(crate) fn of_tag(tag: &[u8]) -> Completion {
        match tag {
            b"BEGIN" | b"START TRANSACTION" => Completion::Began,
            b"COMMIT" | b"PREPARE TRANSACTION" | b"COMMIT PREPARED" | b"ROLLBACK PREPARED" => {
                Completion::Ended
            }
            b"ROLLBACK" => Completion::RolledBack,
            _ => Completion::Other,
        }
    }
}

/// The statements of a request answered so far, as far as the transaction goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Progress {
    /// None completed.
    #[default]
    Nothing,
    /// Some completed; none began or ended a block.
    Worked,
    /// The last one that changed the block began one; any after it ran inside it.
    InBlock,
    /// The last one that changed the block ended it, and nothing ran after it.
    Ended,
    /// A block ended, then statements ran outside one: work the ready marker's Sync commits.
    EndedThenWorked,
    /// A ROLLBACK whose meaning the tag leaves open.
    Unsure,
}

impl Progress {
    /// The progress after one more completed statement.
    pub(crate) fn then(self, done: Completion) -> Progress {
        match (self, done) {
            (_, Completion::RolledBack) => Progress::Unsure,
            // Whatever came before, a block began or ended here.
            (_, Completion::Began) => Progress::InBlock,
            (_, Completion::Ended | Completion::CommitFailed) => Progress::Ended,
            (Progress::Unsure, Completion::Other) => Progress::Unsure,
            (Progress::Nothing | Progress::Worked, Completion::Other) => Progress::Worked,
            (Progress::InBlock, Completion::Other) => Progress::InBlock,
            (Progress::Ended | Progress::EndedThenWorked, Completion::Other) => {
                Progress::EndedThenWorked
            }
        }
    }

    /// The state the request's ready marker would carry, for a request that started in
    /// `start` and was answered up to its ready marker (`errored`: up to an error, after which
    /// the backend skips to the Sync and rolls back what is not in a block). None when that
    /// marker would have settled something the client cannot know (work of an implicit
    /// transaction that its Sync commits) or the progress is unsure.
    pub(crate) fn ready_state(self, start: TxState, errored: bool) -> Option<TxState> {
        let in_block = match (self, start) {
            (Progress::Unsure, _) => return None,
            (Progress::InBlock, _) => true,
            (Progress::Ended, _) => false,
            (Progress::Nothing | Progress::Worked, TxState::InBlock | TxState::Failed) => true,
            (Progress::Nothing, TxState::Idle) => false,
            // Work the Sync would commit, unless an error rolled it back.
            _ if errored => false,
            _ => return None,
        };
        let failed_before = start == TxState::Failed && matches!(self, Progress::Nothing);
        Some(match (in_block, errored || failed_before) {
            (true, true) => TxState::Failed,
            (true, false) => TxState::InBlock,
            (false, _) => TxState::Idle,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(done: &[Completion]) -> Progress {
        done.iter().fold(Progress::Nothing, |p, &d| p.then(d))
    }

    #[test]
    fn tags() {
        assert_eq!(Completion::of_tag(b"BEGIN"), Completion::Began);
        assert_eq!(Completion::of_tag(b"COMMIT"), Completion::Ended);
        assert_eq!(
            Completion::of_tag(b"PREPARE TRANSACTION"),
            Completion::Ended
        );
        assert_eq!(Completion::of_tag(b"ROLLBACK"), Completion::RolledBack);
        assert_eq!(Completion::of_tag(b"INSERT 0 1"), Completion::Other);
        assert_eq!(Completion::of_tag(b"COMMITTED"), Completion::Other);
    }

    #[test]
    fn an_answered_commit_settles_the_transaction() {
        use Completion::*;
        let p = progress(&[Began, Other, Other, Ended]);
        assert_eq!(p.ready_state(TxState::Idle, false), Some(TxState::Idle));
        // Inside a block that began earlier, too.
        let p = progress(&[Other, Ended]);
        assert_eq!(p.ready_state(TxState::InBlock, false), Some(TxState::Idle));
    }

    #[test]
    fn work_after_the_commit_is_in_doubt() {
        use Completion::*;
        let p = progress(&[Began, Ended, Other]);
        assert_eq!(p.ready_state(TxState::Idle, false), None);
        // Unless an error rolled it back.
        assert_eq!(p.ready_state(TxState::Idle, true), Some(TxState::Idle));
    }

    #[test]
    fn implicit_work_is_in_doubt_until_its_sync() {
        let p = progress(&[Completion::Other]);
        assert_eq!(p.ready_state(TxState::Idle, false), None);
        assert_eq!(p.ready_state(TxState::Implicit, false), None);
        assert_eq!(p.ready_state(TxState::Idle, true), Some(TxState::Idle));
        // Nothing ran (Parse, Describe): nothing to commit.
        let nothing = Progress::Nothing;
        assert_eq!(
            nothing.ready_state(TxState::Idle, false),
            Some(TxState::Idle)
        );
        assert_eq!(nothing.ready_state(TxState::Implicit, false), None);
    }

    #[test]
    fn a_block_stays_open() {
        use Completion::*;
        let p = progress(&[Began, Other]);
        assert_eq!(p.ready_state(TxState::Idle, false), Some(TxState::InBlock));
        assert_eq!(p.ready_state(TxState::Idle, true), Some(TxState::Failed));
        let p = progress(&[Other]);
        assert_eq!(
            p.ready_state(TxState::InBlock, false),
            Some(TxState::InBlock)
        );
        assert_eq!(
            Progress::Nothing.ready_state(TxState::Failed, false),
            Some(TxState::Failed)
        );
    }

    #[test]
    fn a_rollback_is_unsure() {
        use Completion::*;
        let p = progress(&[Began, RolledBack]);
        assert_eq!(p.ready_state(TxState::Idle, false), None);
        assert_eq!(p.then(Other), Progress::Unsure);
        // A COMMIT after it settles it again.
        assert_eq!(p.then(Ended), Progress::Ended);
    }
}
