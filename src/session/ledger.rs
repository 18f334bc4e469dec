//! The per-request ledger of one session (DESIGN §3), protocol-agnostic.
//!
//! A request is what the client waits on: a self-contained command (PostgreSQL Query or
//! FunctionCall, a MySQL command), an extended-protocol batch up to its Sync, or one up to its
//! Flush. The ledger holds every request from the moment the relay reads it from the client
//! until its reply is complete, in order, with its place in the client's byte stream, how much
//! of it the backend accepted, how many reply bytes went to the client and what it may do. A
//! loss is judged on these facts alone (`heal`); an answered request leaves the ledger and is
//! never sent again. The bytes of requests in flight are kept (up to a cap) so that one which
//! provably did not run can be sent to a new backend.
//!
//! Offsets are positions in the client's byte stream since the ledger was last cleared: the
//! relay registers every byte it reads (requests, and bytes that belong to none), and reports
//! every byte the backend's socket accepted.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Buf, BytesMut};

use crate::session::progress::{Completion, Progress};

/// The backend's transaction state as the session last knew it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum TxState {
    /// Outside any transaction.
    #[default]
    Idle,
    /// Inside a transaction block.
    InBlock,
    /// Inside a failed transaction block (statements are refused until it ends).
    Failed,
    /// Inside the implicit transaction an extended-protocol batch opened when an Execute was
    /// answered behind a Flush; it ends at the next Sync (DESIGN §3).
    Implicit,
    /// Inside an implicit transaction that already failed: the backend ignores everything up
    /// to the next Sync.
    ImplicitFailed,
}

impl TxState {
    /// Whether the backend holds an open transaction of any kind.
    pub(crate) fn in_transaction(self) -> bool {
        self != TxState::Idle
    }
}

/// How a request ends, which decides how its reply ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Boundary {
    /// An extended-protocol batch ended by Sync: its reply ends with the ready marker.
    Sync,
    /// An extended-protocol batch ended by Flush: its reply ends when each counted part was
    /// answered, or at an error.
    Flush,
    /// A self-contained command (PostgreSQL Query, FunctionCall; a MySQL command): its reply
    /// ends with the ready marker.
    Command,
}

/// How a request ends a transaction block, if it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxEnd {
    Rollback,
    Commit,
}

/// What a request may do, as the protocol reads it from the client's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Traits {
    /// It runs a statement (not only Parse, Bind, Describe, Close, Sync, BEGIN or SHOW).
    pub(crate) executes: bool,
    /// It may commit a transaction (COMMIT, END, PREPARE TRANSACTION, COMMIT PREPARED ...).
    pub(crate) may_commit: bool,
    /// It ends a transaction block with ROLLBACK (or COMMIT).
    pub(crate) ends_tx: Option<TxEnd>,
    /// The server may make it wait (for a lock, for replication): anything but closing a
    /// statement or a bare sync.
    pub(crate) waits: bool,
    /// A transaction end in it may begin a new block as it ends the old one (COMMIT or
    /// ROLLBACK AND CHAIN, PostgreSQL).
    pub(crate) chains: bool,
}

impl Traits {
    fn merge(&mut self, other: Traits) {
        self.executes |= other.executes;
        self.may_commit |= other.may_commit;
        self.ends_tx = self.ends_tx.or(other.ends_tx);
        self.waits |= other.waits;
        self.chains |= other.chains;
    }
}

/// What one backend message means for the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Part of the oldest request's reply; `answers_part` when it answers one counted part.
    Part { answers_part: bool },
    /// A (non-fatal) error answering the oldest request.
    Error,
    /// The ready marker, with the transaction state after the request.
    Ready(TxState),
}

/// The bit of counted part `index` in [`Request::commit_parts`]; none past the 64th.
fn part_bit(index: u32) -> u64 {
    1u64.checked_shl(index).unwrap_or(0)
}

/// One request in flight.
#[derive(Debug)]
struct Request<N> {
    /// Stream offset of its first byte.
    start: u64,
    /// Stream offset after its last byte read so far.
    end: u64,
    /// None while the client has not sent its end yet.
    boundary: Option<Boundary>,
    /// Parts that each get one answer (PostgreSQL Parse, Bind, Describe, Execute, Close).
    parts: u32,
    answered_parts: u32,
    reply_bytes: u64,
    traits: Traits,
    /// Its bytes are in the ledger's retained buffer.
    retained: bool,
    /// An error answered it.
    errored: bool,
    /// Sent while the backend ignores everything up to the next Sync: it gets no reply.
    skipped: bool,
    /// Counted parts since its last one that is not a Close (PostgreSQL).
    trailing_closes: u32,
    /// Bit `i` set: counted part `i` (of the first 64) is an Execute of COMMIT or END. An
    /// error answering it is a failed COMMIT, which leaves the block.
    commit_parts: u64,
    /// What its answered statements did to the transaction.
    progress: Progress,
    /// When its first byte was read (for `suture_request_duration_seconds`).
    started: Instant,
    note: N,
}

impl<N> Request<N> {
    fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// A request that left the ledger because its reply is complete.
#[derive(Debug)]
pub(crate) struct Completed<N> {
    pub(crate) note: N,
    /// An error was part of its reply.
    pub(crate) errored: bool,
    /// The transaction state after it.
    pub(crate) tx_after: TxState,
    /// When its first byte was read.
    pub(crate) started: Instant,
}

/// All a lost backend still owed the oldest request ([`Ledger::owes_only_ready`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OwedReady {
    /// Replies to trailing Closes not yet sent.
    pub(crate) closes: u32,
    /// The state the ready marker carries.
    pub(crate) ready: TxState,
}

/// What healing needs to know about one request in flight, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InFlight {
    /// The backend accepted at least one of its bytes.
    pub(crate) accepted: bool,
    /// A write of it was attempted (false when the backend was found dead before).
    pub(crate) write_attempted: bool,
    /// Reply bytes of it already went to the client.
    pub(crate) answered_bytes: bool,
    /// Its parts whose answers already went to the client (PostgreSQL).
    pub(crate) answered_parts: u32,
    /// None while the client has not sent its end.
    pub(crate) boundary: Option<Boundary>,
    pub(crate) traits: Traits,
    /// Its bytes are kept, so it can be sent again.
    pub(crate) retained: bool,
    /// It gets no reply (sent while the backend skips to the next Sync).
    pub(crate) skipped: bool,
}

/// Requests in flight, oldest first, with the bytes to send them again.
#[derive(Debug)]
pub(crate) struct Ledger<N> {
    requests: VecDeque<Request<N>>,
    /// Stream offset after the last byte registered.
    offset: u64,
    /// Stream offset up to which the backend accepted bytes.
    accepted: u64,
    /// Stream offset up to which a write was attempted.
    attempted: u64,
    /// The transaction state after the last completed request.
    tx: TxState,
    /// The backend ignores everything up to the next Sync (an error in an extended batch).
    skipping: bool,
    /// Bytes of the retained requests, in order.
    retained: BytesMut,
    retain_cap: usize,
}

impl<N> Ledger<N> {
    /// An empty ledger keeping at most `retain_cap` bytes of requests in flight.
    pub(crate) fn new(retain_cap: usize) -> Ledger<N> {
        Ledger {
            requests: VecDeque::new(),
            offset: 0,
            accepted: 0,
            attempted: 0,
            tx: TxState::Idle,
            skipping: false,
            retained: BytesMut::new(),
            retain_cap,
        }
    }

    /// The transaction state after the last completed request (what the oldest request in
    /// flight started from).
    pub(crate) fn tx(&self) -> TxState {
        self.tx
    }

    /// No request is in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Requests in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.requests.len()
    }

    /// Stream offset after the last byte registered.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the newest request in flight is still open (the client has not sent its end).
    pub(crate) fn newest_is_open(&self) -> bool {
        self.requests.back().is_some_and(|r| r.boundary.is_none())
    }

    /// The newest request if it is open, else a new one.
    fn open_request(&mut self, note: impl FnOnce() -> N) -> &mut Request<N> {
        if !self.newest_is_open() {
            self.requests.push_back(Request {
                start: self.offset,
                end: self.offset,
                boundary: None,
                parts: 0,
                answered_parts: 0,
                reply_bytes: 0,
                traits: Traits::default(),
                retained: true,
                errored: false,
                skipped: false,
                trailing_closes: 0,
                commit_parts: 0,
                progress: Progress::default(),
                started: Instant::now(),
                note: note(),
            });
        }
        let Some(newest) = self.requests.back_mut() else {
            unreachable!("a request was just pushed")
        };
        newest
    }

    /// Appends `bytes` to the newest request (keeping them while the cap allows).
    fn append_to_newest(&mut self, bytes: &[u8]) {
        self.offset += bytes.len() as u64;
        let cap = self.retain_cap;
        let kept = self.retained.len();
        let Some(newest) = self.requests.back_mut() else {
            return;
        };
        let before = newest.len();
        newest.end = self.offset;
        if !newest.retained {
            return;
        }
        if kept + bytes.len() <= cap {
            self.retained.extend_from_slice(bytes);
        } else {
            // Too large to keep: it cannot be sent again; drop what was kept of it.
            newest.retained = false;
            let drop_from = kept - usize::try_from(before).unwrap_or(kept).min(kept);
            self.retained.truncate(drop_from);
        }
    }

    /// A client message that belongs to the current request (opening one if none is open);
    /// `counted` when it gets an answer of its own (PostgreSQL Parse, Bind, Describe,
    /// Execute, Close).
    pub(crate) fn part(&mut self, message: &[u8], counted: bool, traits: Traits, note: N) {
        let request = self.open_request(|| note);
        request.parts += u32::from(counted);
        if counted {
            request.trailing_closes = 0;
            if traits.ends_tx == Some(TxEnd::Commit) || traits.chains && traits.may_commit {
                request.commit_parts |= part_bit(request.parts - 1);
            }
        }
        request.traits.merge(traits);
        self.append_to_newest(message);
    }

    /// A client message closing a statement or portal (PostgreSQL Close): a counted part of
    /// the current request that runs nothing.
    pub(crate) fn close_part(&mut self, message: &[u8], note: N) {
        self.part(message, true, Traits::default(), note);
        if let Some(newest) = self.requests.back_mut() {
            newest.trailing_closes += 1;
        }
    }

    /// A statement of the oldest request completed (its reply says how). In a request that
    /// may chain, a COMMIT or ROLLBACK may have begun a new block as it ended the old one, and
    /// is taken to have: a new block the client is wrongly told is lost costs it a ROLLBACK,
    /// while a block it is wrongly told is over would let the statements it meant for it run
    /// one by one outside any.
    pub(crate) fn statement_completed(&mut self, done: Completion) {
        if let Some(front) = self.requests.front_mut() {
            let done = match done {
                Completion::Ended | Completion::RolledBack if front.traits.chains => {
                    Completion::Began
                }
                done => done,
            };
            front.progress = front.progress.then(done);
        }
    }

    /// What the lost backend still owed the oldest request, when that is only its ready marker
    /// (after the replies to trailing Closes, if those are missing too) and the state the
    /// marker carries is known: the request is a Sync batch the backend accepted, answered
    /// part by part up to its end or up to an error. Nothing in it is in doubt then, so the
    /// client can be sent what the backend would have sent.
    pub(crate) fn owes_only_ready(&self) -> Option<OwedReady> {
        let front = self.requests.front()?;
        if front.boundary != Some(Boundary::Sync) || front.skipped || front.start >= self.accepted {
            return None;
        }
        let unanswered = front.parts.saturating_sub(front.answered_parts);
        // After an error the backend skips everything up to the Sync, Closes too.
        let closes = if front.errored { 0 } else { unanswered };
        if closes > front.trailing_closes {
            return None;
        }
        let ready = front.progress.ready_state(self.tx, front.errored)?;
        Some(OwedReady { closes, ready })
    }

    /// The client message that ends the current request (opening one if none is open).
    /// A Flush that ends a batch expecting no answer ends nothing and is registered as a byte
    /// of no request.
    pub(crate) fn end(&mut self, message: &[u8], boundary: Boundary, traits: Traits, note: N) {
        let open = self.requests.back().filter(|r| r.boundary.is_none());
        if boundary == Boundary::Flush && open.is_none() {
            self.offset += message.len() as u64;
            return;
        }
        // A batch that expects no answer (no counted part) gets none.
        let unanswered = boundary == Boundary::Flush && open.is_some_and(|r| r.parts == 0);
        // Skipped when the backend reads it before the Sync that ends its skipping.
        let skipping = self.skipping
            && !self
                .requests
                .iter()
                .any(|r| r.boundary == Some(Boundary::Sync));
        let request = self.open_request(|| note);
        request.boundary = Some(boundary);
        request.traits.merge(traits);
        // While the backend skips to the next Sync, only a Sync is answered.
        request.skipped = unanswered || skipping && boundary != Boundary::Sync;
        self.append_to_newest(message);
    }

    /// The client message that ends a request the backend answers with nothing (MySQL
    /// COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA): it is done once the backend accepted all of
    /// it.
    pub(crate) fn end_unanswered(&mut self, message: &[u8], traits: Traits, note: N) {
        let request = self.open_request(|| note);
        request.boundary = Some(Boundary::Command);
        request.traits.merge(traits);
        request.skipped = true;
        self.append_to_newest(message);
    }

    /// Bytes that continue the newest request in flight (COPY data after its command); with
    /// none in flight they belong to no request.
    pub(crate) fn continuation(&mut self, bytes: &[u8]) {
        if self.requests.is_empty() {
            self.offset += bytes.len() as u64;
        } else {
            self.append_to_newest(bytes);
        }
    }

    /// Client bytes that belong to no request (the rest of a request the server already
    /// answered, as MySQL does with a request over `max_allowed_packet`).
    pub(crate) fn unowned(&mut self, bytes: &[u8]) {
        self.offset += bytes.len() as u64;
    }

    /// A write of the bytes from the current accepted offset on is about to start.
    pub(crate) fn write_attempted(&mut self) {
        self.attempted = self.attempted.max(self.accepted + 1);
    }

    /// The backend's socket accepted `n` more bytes. Skipped requests that are now sent whole
    /// are done (they get no reply).
    pub(crate) fn accepted(&mut self, n: usize, on_complete: &mut impl FnMut(Completed<N>)) {
        self.accepted += n as u64;
        self.complete_sent_skipped(on_complete);
    }

    /// Skipped requests at the front that were sent whole are done: no reply will come.
    fn complete_sent_skipped(&mut self, on_complete: &mut impl FnMut(Completed<N>)) {
        while self
            .requests
            .front()
            .is_some_and(|r| r.skipped && r.boundary.is_some() && r.end <= self.accepted)
        {
            self.complete_front(self.tx, on_complete);
        }
    }

    /// No request in flight has had a byte accepted by the backend yet.
    pub(crate) fn none_sent(&self) -> bool {
        self.requests
            .front()
            .is_none_or(|r| r.start >= self.accepted)
    }

    /// A backend message of `len` bytes that was (or is about to be) forwarded to the client.
    pub(crate) fn reply(
        &mut self,
        reply: Reply,
        len: usize,
        on_complete: &mut impl FnMut(Completed<N>),
    ) {
        let len = len as u64;
        match reply {
            Reply::Part { answers_part } => {
                let Some(front) = self.requests.front_mut() else {
                    return;
                };
                front.reply_bytes += len;
                if answers_part {
                    front.answered_parts += 1;
                    if front.boundary == Some(Boundary::Flush)
                        && front.answered_parts >= front.parts
                    {
                        let after = self.after_flush_batch(false);
                        self.complete_front(after, on_complete);
                    }
                }
            }
            Reply::Error => {
                let Some(front) = self.requests.front_mut() else {
                    return;
                };
                front.reply_bytes += len;
                // The first error answers the oldest unanswered part; the backend then skips
                // to the Sync.
                if !front.errored && front.commit_parts & part_bit(front.answered_parts) != 0 {
                    front.progress = front.progress.then(Completion::CommitFailed);
                }
                front.errored = true;
                match front.boundary {
                    // Inside a command or a Sync batch: the ready marker follows.
                    Some(Boundary::Command) | Some(Boundary::Sync) => {}
                    // An extended batch: the backend now skips everything up to the next Sync.
                    Some(Boundary::Flush) | None => {
                        self.skipping = true;
                        let done = front.boundary.is_some();
                        for later in self.requests.iter_mut().skip(1) {
                            if later.boundary != Some(Boundary::Sync) && later.boundary.is_some() {
                                later.skipped = true;
                            } else {
                                break;
                            }
                        }
                        if done {
                            let after = self.after_flush_batch(true);
                            self.complete_front(after, on_complete);
                            self.complete_sent_skipped(on_complete);
                        }
                    }
                }
            }
            Reply::Ready(tx) => {
                if let Some(front) = self.requests.front_mut() {
                    front.reply_bytes += len;
                }
                self.skipping = false;
                // Flush batches (and skipped requests) before the Sync or command it answers
                // are complete too.
                while let Some(front) = self.requests.front() {
                    let last = matches!(front.boundary, Some(Boundary::Sync | Boundary::Command))
                        && !front.skipped;
                    self.complete_front(tx, on_complete);
                    if last {
                        break;
                    }
                }
                self.tx = tx;
                // Requests without a reply behind it, sent whole already, are done too.
                self.complete_sent_skipped(on_complete);
            }
        }
    }

    /// The transaction state after the oldest request, a Flush batch, was answered (up to
    /// an error when `errored`, after which the backend skips to the Sync). What its answered
    /// statements did to the block decides it; only when they did not change the block does
    /// the state before the batch (DESIGN §3).
    fn after_flush_batch(&self, errored: bool) -> TxState {
        let Some(front) = self.requests.front() else {
            return self.tx;
        };
        // The block the batch leaves the client in, and whether anything ran outside one.
        let (before, executes) = match front.progress {
            // A BEGIN was answered: inside the block it opened.
            Progress::InBlock => (TxState::InBlock, false),
            // A COMMIT was answered (or failed, which rolls the block back and leaves it):
            // outside, with nothing run since.
            Progress::Ended => (TxState::Idle, false),
            // Statements ran after the block ended: in an implicit transaction.
            Progress::EndedThenWorked => (TxState::Idle, true),
            Progress::Nothing | Progress::Worked | Progress::Unsure => {
                (self.tx, front.traits.executes)
            }
        };
        match (before, errored) {
            (TxState::InBlock | TxState::Failed, true) => TxState::Failed,
            (TxState::Idle | TxState::Implicit | TxState::ImplicitFailed, true) => {
                TxState::ImplicitFailed
            }
            (TxState::Idle, false) if executes => TxState::Implicit,
            (tx, false) => tx,
        }
    }

    fn complete_front(&mut self, tx_after: TxState, on_complete: &mut impl FnMut(Completed<N>)) {
        let Some(front) = self.requests.pop_front() else {
            return;
        };
        if front.retained {
            let len = usize::try_from(front.len()).unwrap_or(usize::MAX);
            self.retained.advance(len.min(self.retained.len()));
        }
        if self.requests.is_empty() && self.retained.is_empty() {
            // Reuse the allocation from its start.
            self.retained.clear();
        }
        self.tx = tx_after;
        on_complete(Completed {
            note: front.note,
            errored: front.errored,
            tx_after,
            started: front.started,
        });
    }

    /// The requests in flight as healing sees them, oldest first.
    pub(crate) fn in_flight(&self) -> impl Iterator<Item = InFlight> + '_ {
        self.requests.iter().map(|r| InFlight {
            accepted: r.start < self.accepted,
            write_attempted: r.start < self.attempted,
            answered_bytes: r.reply_bytes > 0,
            answered_parts: r.answered_parts,
            boundary: r.boundary,
            traits: r.traits,
            retained: r.retained,
            skipped: r.skipped,
        })
    }

    /// Stream offset after the last byte of the requests the backend accepted any byte of:
    /// everything before it must never reach another backend.
    pub(crate) fn accepted_end(&self) -> u64 {
        self.requests
            .iter()
            .filter(|r| r.start < self.accepted)
            .map(|r| r.end)
            .max()
            .unwrap_or(self.accepted)
            .max(self.accepted.min(self.offset))
    }

    /// The kept bytes of the requests the backend accepted any byte of, when all of them are
    /// kept (a replay sends them again, in order).
    pub(crate) fn accepted_bytes(&self) -> Option<&[u8]> {
        let mut len = 0usize;
        for r in self.requests.iter().filter(|r| r.start < self.accepted) {
            if !r.retained {
                return None;
            }
            len += usize::try_from(r.len()).ok()?;
        }
        self.retained.get(..len)
    }

    /// The kept bytes of the request at `index` (0: the oldest in flight), if it is kept.
    pub(crate) fn retained_request(&self, index: usize) -> Option<&[u8]> {
        let mut from = 0usize;
        for (i, r) in self.requests.iter().enumerate() {
            let len = usize::try_from(r.len()).ok()?;
            if i == index {
                return r
                    .retained
                    .then(|| self.retained.get(from..from + len))
                    .flatten();
            }
            if r.retained {
                from += len;
            }
        }
        None
    }

    /// The kept bytes of the requests in flight, oldest first, for a protocol that rewrites
    /// ids in them before they go to another backend (MySQL statement ids).
    pub(crate) fn retained_mut(&mut self) -> &mut [u8] {
        &mut self.retained[..]
    }

    /// Forgets every request (the session moves to a new backend); stream offsets start again
    /// at zero and the transaction state is `tx`.
    pub(crate) fn clear(&mut self, tx: TxState) {
        self.requests.clear();
        self.offset = 0;
        self.accepted = 0;
        self.attempted = 0;
        self.skipping = false;
        self.retained.clear();
        self.tx = tx;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Traits = Traits {
        executes: true,
        may_commit: false,
        ends_tx: None,
        waits: true,
        chains: false,
    };
    const NOTHING: Traits = Traits {
        executes: false,
        may_commit: false,
        ends_tx: None,
        waits: false,
        chains: false,
    };

    fn ledger() -> Ledger<u32> {
        Ledger::new(1024)
    }

    fn done(ledger: &mut Ledger<u32>, reply: Reply, len: usize) -> Vec<u32> {
        let mut out = Vec::new();
        ledger.reply(reply, len, &mut |c: Completed<u32>| out.push(c.note));
        out
    }

    fn accept(ledger: &mut Ledger<u32>, n: usize) -> Vec<u32> {
        let mut out = Vec::new();
        ledger.accepted(n, &mut |c: Completed<u32>| out.push(c.note));
        out
    }

    #[test]
    fn answered_requests_leave_and_their_bytes_go() {
        let mut l = ledger();
        l.end(b"Q-one", Boundary::Command, Q, 1);
        l.end(b"Q-two", Boundary::Command, NOTHING, 2);
        accept(&mut l, 10);
        assert_eq!(l.accepted_bytes(), Some(&b"Q-oneQ-two"[..]));
        assert_eq!(
            done(
                &mut l,
                Reply::Part {
                    answers_part: false
                },
                20
            ),
            Vec::<u32>::new()
        );
        assert_eq!(done(&mut l, Reply::Ready(TxState::Idle), 6), vec![1]);
        // Only the unanswered request is left, and only its bytes would be sent again.
        assert_eq!(l.len(), 1);
        assert_eq!(l.accepted_bytes(), Some(&b"Q-two"[..]));
        let front = l.in_flight().next().expect("one in flight");
        assert!(front.accepted && !front.answered_bytes && !front.traits.executes);
    }

    #[test]
    fn transaction_state_is_per_request() {
        let mut l = ledger();
        l.end(
            b"COMMIT",
            Boundary::Command,
            Traits {
                may_commit: true,
                ..Q
            },
            1,
        );
        l.end(b"INSERT", Boundary::Command, Q, 2);
        l.tx = TxState::InBlock;
        accept(&mut l, 12);
        done(
            &mut l,
            Reply::Part {
                answers_part: false,
            },
            12,
        );
        assert_eq!(done(&mut l, Reply::Ready(TxState::Idle), 6), vec![1]);
        // The INSERT started outside the transaction.
        assert_eq!(l.tx(), TxState::Idle);
        let front = l.in_flight().next().expect("INSERT in flight");
        assert!(!front.traits.may_commit);
    }

    /// Parse, Bind, Execute, Close for each of `completions` (how its Execute completes),
    /// then a Sync; the backend stops answering after `answered` parts.
    fn sync_batch(completions: &[Completion], answered: usize) -> Ledger<u32> {
        let mut l = ledger();
        for _ in completions {
            l.part(b"P", true, NOTHING, 1);
            l.part(b"B", true, NOTHING, 1);
            l.part(b"E", true, Q, 1);
            l.close_part(b"C", 1);
        }
        l.end(b"S", Boundary::Sync, NOTHING, 1);
        accept(&mut l, 4 * completions.len() + 1);
        for i in 0..answered {
            if i % 4 == 2 {
                l.statement_completed(completions[i / 4]);
            }
            assert!(done(&mut l, Reply::Part { answers_part: true }, 5).is_empty());
        }
        l
    }

    #[test]
    fn only_the_ready_marker_is_owed_after_an_answered_commit() {
        use Completion::{Began, Ended, Other};
        let all = [Began, Other, Ended];
        // Everything answered: only the ready marker, idle.
        let owed = sync_batch(&all, 12).owes_only_ready();
        assert_eq!(
            owed,
            Some(OwedReady {
                closes: 0,
                ready: TxState::Idle
            })
        );
        // The last Close unanswered too.
        let owed = sync_batch(&all, 11).owes_only_ready();
        assert_eq!(
            owed,
            Some(OwedReady {
                closes: 1,
                ready: TxState::Idle
            })
        );
        // COMMIT's own answer missing: in doubt.
        assert_eq!(sync_batch(&all, 10).owes_only_ready(), None);
        // An open block: idle-in-transaction.
        let owed = sync_batch(&[Began, Other], 8).owes_only_ready();
        assert_eq!(
            owed,
            Some(OwedReady {
                closes: 0,
                ready: TxState::InBlock
            })
        );
        // Work outside a block that the Sync would commit: in doubt.
        assert_eq!(sync_batch(&[Other], 4).owes_only_ready(), None);
    }

    #[test]
    fn only_the_ready_marker_is_owed_after_an_error() {
        let mut l = sync_batch(&[Completion::Other, Completion::Other], 1);
        done(&mut l, Reply::Error, 20);
        assert_eq!(
            l.owes_only_ready(),
            Some(OwedReady {
                closes: 0,
                ready: TxState::Idle
            })
        );
        // Nothing is owed for a command, nor for a batch never sent.
        let mut l = ledger();
        l.end(b"Q", Boundary::Command, Q, 1);
        accept(&mut l, 1);
        assert_eq!(l.owes_only_ready(), None);
        let mut l = ledger();
        l.end(b"S", Boundary::Sync, NOTHING, 1);
        assert_eq!(l.owes_only_ready(), None);
    }

    /// Inside a block, Parse, Bind, an Execute with the traits `execute`, Close, Sync; the
    /// backend answered `answered` parts, then an error.
    fn failed_in_block(execute: Traits, answered: usize) -> Ledger<u32> {
        let mut l = ledger();
        l.tx = TxState::InBlock;
        l.part(b"P", true, NOTHING, 1);
        l.part(b"B", true, NOTHING, 1);
        l.part(b"E", true, execute, 1);
        l.close_part(b"C", 1);
        l.end(b"S", Boundary::Sync, NOTHING, 1);
        accept(&mut l, 5);
        for _ in 0..answered {
            assert!(done(&mut l, Reply::Part { answers_part: true }, 5).is_empty());
        }
        assert!(done(&mut l, Reply::Error, 20).is_empty());
        l
    }

    #[test]
    fn a_failed_commit_leaves_the_block() {
        let commit = Traits {
            may_commit: true,
            ends_tx: Some(TxEnd::Commit),
            ..Q
        };
        let owed = |ready| Some(OwedReady { closes: 0, ready });
        // The COMMIT's Execute answered with an error: rolled back, the block is gone.
        assert_eq!(
            failed_in_block(commit, 2).owes_only_ready(),
            owed(TxState::Idle)
        );
        // Its Bind failed: the COMMIT never ran, the block is failed.
        assert_eq!(
            failed_in_block(commit, 1).owes_only_ready(),
            owed(TxState::Failed)
        );
        // Any other statement failing inside the block leaves it failed.
        assert_eq!(
            failed_in_block(Q, 2).owes_only_ready(),
            owed(TxState::Failed)
        );
        // Past the 64 parts the ledger marks, a failed COMMIT is taken for a failed block.
        assert_eq!(part_bit(63), 1 << 63);
        assert_eq!(part_bit(64), 0);
    }

    #[test]
    fn flush_batch_is_answered_part_by_part_and_leaves_an_implicit_transaction() {
        let mut l = ledger();
        l.part(b"P", true, NOTHING, 1);
        l.part(b"B", true, NOTHING, 1);
        l.part(b"E", true, Q, 1);
        l.end(b"H", Boundary::Flush, NOTHING, 1);
        accept(&mut l, 4);
        assert!(done(&mut l, Reply::Part { answers_part: true }, 5).is_empty());
        assert!(done(&mut l, Reply::Part { answers_part: true }, 5).is_empty());
        assert_eq!(
            done(&mut l, Reply::Part { answers_part: true }, 15),
            vec![1]
        );
        assert!(l.is_empty());
        assert_eq!(l.tx(), TxState::Implicit);
        l.end(b"S", Boundary::Sync, NOTHING, 2);
        accept(&mut l, 1);
        assert_eq!(done(&mut l, Reply::Ready(TxState::Idle), 6), vec![2]);
        assert_eq!(l.tx(), TxState::Idle);
    }

    /// Parse, Bind, an Execute with the traits `execute`, Flush, from `tx`; its
    /// CommandComplete says `completion`, or an error answers it when that is None.
    fn flushed_statement(tx: TxState, execute: Traits, completion: Option<Completion>) -> TxState {
        let mut l = ledger();
        l.tx = tx;
        l.part(b"P", true, NOTHING, 1);
        l.part(b"B", true, NOTHING, 1);
        l.part(b"E", true, execute, 1);
        l.end(b"H", Boundary::Flush, NOTHING, 1);
        accept(&mut l, 4);
        done_parts(&mut l, 2);
        let completed = match completion {
            Some(completion) => {
                l.statement_completed(completion);
                done_parts(&mut l, 1)
            }
            None => done(&mut l, Reply::Error, 30),
        };
        assert_eq!(completed, vec![1]);
        l.tx()
    }

    fn done_parts(l: &mut Ledger<u32>, n: usize) -> Vec<u32> {
        (0..n)
            .flat_map(|_| done(l, Reply::Part { answers_part: true }, 5))
            .collect()
    }

    #[test]
    fn a_flush_batch_leaves_the_block_its_statements_left() {
        let commit = Traits {
            may_commit: true,
            ends_tx: Some(TxEnd::Commit),
            ..Q
        };
        use Completion::{Began, Ended, Other};
        // BEGIN answered: inside a block, not an implicit transaction.
        assert_eq!(
            flushed_statement(TxState::Idle, NOTHING, Some(Began)),
            TxState::InBlock
        );
        // COMMIT answered: outside, nothing open.
        assert_eq!(
            flushed_statement(TxState::InBlock, commit, Some(Ended)),
            TxState::Idle
        );
        // COMMIT failed: the block is rolled back and gone; the backend skips to the Sync.
        assert_eq!(
            flushed_statement(TxState::InBlock, commit, None),
            TxState::ImplicitFailed
        );
        // Any other statement failing inside the block leaves it failed.
        assert_eq!(
            flushed_statement(TxState::InBlock, Q, None),
            TxState::Failed
        );
        // COMMIT AND CHAIN answered: a new block began; failed, it left the block.
        let chained = Traits {
            chains: true,
            ..commit
        };
        assert_eq!(
            flushed_statement(TxState::InBlock, chained, Some(Ended)),
            TxState::InBlock
        );
        assert_eq!(
            flushed_statement(TxState::InBlock, chained, None),
            TxState::ImplicitFailed
        );
        // Other statements leave the block as it was, or open an implicit transaction.
        assert_eq!(
            flushed_statement(TxState::InBlock, Q, Some(Other)),
            TxState::InBlock
        );
        assert_eq!(
            flushed_statement(TxState::Idle, Q, Some(Other)),
            TxState::Implicit
        );
    }

    #[test]
    fn a_flush_batch_without_an_execute_leaves_no_transaction() {
        let mut l = ledger();
        l.part(b"P", true, NOTHING, 1);
        l.end(b"H", Boundary::Flush, NOTHING, 1);
        done(&mut l, Reply::Part { answers_part: true }, 5);
        assert_eq!(l.tx(), TxState::Idle);
        // A bare Flush is no request.
        l.end(b"H", Boundary::Flush, NOTHING, 2);
        assert!(l.is_empty());
        assert_eq!(l.offset(), 3);
    }

    #[test]
    fn an_error_in_a_flush_batch_skips_to_the_sync() {
        let mut l = ledger();
        l.part(b"PBE", true, Q, 1);
        l.end(b"H", Boundary::Flush, NOTHING, 1);
        l.part(b"BE", true, Q, 2);
        l.end(b"H", Boundary::Flush, NOTHING, 2);
        l.end(b"S", Boundary::Sync, NOTHING, 3);
        accept(&mut l, 8);
        // The error answers the first batch; the second gets no answer at all.
        assert_eq!(done(&mut l, Reply::Error, 30), vec![1, 2]);
        assert_eq!(l.tx(), TxState::ImplicitFailed);
        // A batch sent after the Sync is answered normally.
        l.part(b"X", true, Q, 4);
        l.end(b"H", Boundary::Flush, NOTHING, 4);
        let f: Vec<InFlight> = l.in_flight().collect();
        assert_eq!((f.len(), f[1].skipped), (2, false));
        assert_eq!(done(&mut l, Reply::Ready(TxState::Idle), 6), vec![3]);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn a_batch_sent_before_the_sync_while_skipping_gets_no_answer() {
        let mut l = ledger();
        l.part(b"E", true, Q, 1);
        l.end(b"H", Boundary::Flush, NOTHING, 1);
        accept(&mut l, 2);
        assert_eq!(done(&mut l, Reply::Error, 30), vec![1]);
        l.part(b"E", true, Q, 2);
        l.end(b"H", Boundary::Flush, NOTHING, 2);
        l.end(b"S", Boundary::Sync, NOTHING, 3);
        let f: Vec<InFlight> = l.in_flight().collect();
        assert_eq!((f[0].skipped, f[1].skipped), (true, false));
        assert_eq!(done(&mut l, Reply::Ready(TxState::Idle), 6), vec![2, 3]);
    }

    #[test]
    fn skipped_requests_sent_whole_are_done() {
        let mut l = ledger();
        l.part(b"E", true, Q, 1);
        l.end(b"H", Boundary::Flush, NOTHING, 1);
        accept(&mut l, 2);
        assert_eq!(done(&mut l, Reply::Error, 30), vec![1]);
        l.part(b"E", true, Q, 2);
        l.end(b"H", Boundary::Flush, NOTHING, 2);
        assert!(accept(&mut l, 1).is_empty());
        assert_eq!(accept(&mut l, 1), vec![2]);
    }

    #[test]
    fn requests_without_a_reply_are_done_once_sent_and_in_turn() {
        let mut l = ledger();
        l.end_unanswered(b"close", NOTHING, 1);
        assert!(accept(&mut l, 4).is_empty(), "not sent whole yet");
        assert_eq!(accept(&mut l, 1), vec![1]);
        // Behind a request that waits for its reply, it is done when its turn comes.
        l.end(b"query", Boundary::Command, Q, 2);
        l.end_unanswered(b"close", NOTHING, 3);
        assert!(accept(&mut l, 10).is_empty());
        assert_eq!(done(&mut l, Reply::Ready(TxState::Idle), 7), vec![2, 3]);
        assert!(l.is_empty());
    }

    #[test]
    fn acceptance_is_by_stream_position() {
        let mut l = ledger();
        l.end(b"aaaa", Boundary::Command, Q, 1);
        l.end(b"bbbb", Boundary::Command, Q, 2);
        l.end(b"cccc", Boundary::Command, Q, 3);
        l.write_attempted();
        accept(&mut l, 5);
        let f: Vec<InFlight> = l.in_flight().collect();
        assert_eq!(
            f.iter()
                .map(|r| (r.accepted, r.write_attempted))
                .collect::<Vec<_>>(),
            vec![(true, true), (true, false), (false, false)]
        );
        // The partly accepted request counts whole: none of it may go anywhere else.
        assert_eq!(l.accepted_end(), 8);
        assert_eq!(l.accepted_bytes(), Some(&b"aaaabbbb"[..]));
    }

    #[test]
    fn requests_beyond_the_cap_are_not_kept() {
        let mut l: Ledger<u32> = Ledger::new(8);
        l.end(b"small", Boundary::Command, Q, 1);
        l.part(b"big-", false, Q, 2);
        l.continuation(b"and-bigger");
        l.end(b"!", Boundary::Sync, NOTHING, 2);
        accept(&mut l, 20);
        assert_eq!(l.accepted_bytes(), None);
        done(&mut l, Reply::Ready(TxState::Idle), 6);
        assert_eq!(l.accepted_bytes(), None, "the big one is still in flight");
        done(&mut l, Reply::Ready(TxState::Idle), 6);
        assert!(l.is_empty());
        l.end(b"again", Boundary::Command, Q, 3);
        accept(&mut l, 5);
        assert_eq!(l.accepted_bytes(), Some(&b"again"[..]));
    }

    #[test]
    fn copy_data_continues_the_command_and_noise_belongs_to_nothing() {
        let mut l = ledger();
        l.continuation(b"dddd");
        assert!(l.is_empty());
        l.end(b"COPY", Boundary::Command, Q, 1);
        l.continuation(b"data");
        assert_eq!(l.len(), 1);
        accept(&mut l, 12);
        assert_eq!(l.accepted_end(), 12);
        assert_eq!(l.accepted_bytes(), Some(&b"COPYdata"[..]));
    }
}
