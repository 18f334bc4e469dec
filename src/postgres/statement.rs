//! What a PostgreSQL statement may do, told from its text without parsing SQL: whether it
//! executes anything, may commit, ends a transaction block, may change session state (so the
//! backend needs a reset before reuse) or may create state Suture cannot rebuild on another
//! backend. One case-insensitive Aho-Corasick pass per statement finds every marker word.

use std::sync::LazyLock;

use aho_corasick::automaton::Automaton;
use aho_corasick::dfa::DFA;
use aho_corasick::Anchored;

use crate::session::ledger::TxEnd;

/// Whether running `sql` twice is the same as running it once, as far as anyone can tell:
/// opening a transaction block or showing a setting.
#[cfg(test)]
pub(crate) fn executes_nothing(sql: &str) -> bool {
    Statement::new(sql).executes_nothing()
}

/// Whether `sql` may create session state that cannot be rebuilt on a new backend. Plain
/// reads and writes (SELECT, INSERT, UPDATE, DELETE, DDL on real tables) do not.
#[cfg(test)]
pub(crate) fn may_taint_session(sql: &str) -> bool {
    Statement::new(sql).may_taint_session()
}

/// Whether running `sql` might leave session state behind (SET, PREPARE, LISTEN, temp tables,
/// advisory locks, ...). Conservative: anything but a plain SELECT/VALUES/SHOW counts.
#[cfg(test)]
pub(crate) fn may_change_session(sql: &str) -> bool {
    Statement::new(sql).may_change_session()
}

/// The statement starts that leave session state behind, among those beginning with `lead`
/// (a lower-cased first character): a SELECT is compared with SET alone, not with all of them.
fn tainting_starts(lead: u8) -> &'static [&'static str] {
    match lead {
        b's' => &["set"],
        b'r' => &["reset"],
        b'd' => &["discard", "declare", "do"],
        b'p' => &["prepare"],
        b'l' => &["listen", "load", "lock"],
        b'c' => &[
            "create temp",
            "create local temp",
            "create global temp",
            "create unlogged temp",
            "call",
        ],
        _ => &[],
    }
}

/// Function names and clauses that leave session state behind wherever they appear.
const TAINTING_ANYWHERE: &[&str] = &[
    "set_config",
    "advisory",
    "into temp",
    "lo_",
    "dblink",
    "with hold",
    "currval",
];
/// Words which, anywhere in a read-only looking statement, may still change session state.
const STATEFUL_MARKERS: &[&str] = &[
    "set_config",
    "advisory",
    "into",
    "pg_",
    "lo_",
    "dblink",
    "prepare",
    "declare",
    "listen",
    "temp",
    "currval",
];
/// A word that makes a statement one that may commit.
const COMMIT: &str = "commit";

/// Bits of [`Statement::markers`]: one per pattern, in the order the automaton is built.
const STATEFUL_BITS: u32 = (1 << STATEFUL_MARKERS.len()) - 1;
const TAINTING_BITS: u32 = ((1 << TAINTING_ANYWHERE.len()) - 1) << STATEFUL_MARKERS.len();
const COMMIT_BIT: u32 = 1 << (STATEFUL_MARKERS.len() + TAINTING_ANYWHERE.len());

/// Every marker word, found in one case-insensitive pass over a statement.
static MARKERS: LazyLock<DFA> = LazyLock::new(|| {
    let patterns = STATEFUL_MARKERS
        .iter()
        .chain(TAINTING_ANYWHERE)
        .chain([&COMMIT]);
    // A DFA: more memory at build time (a few KiB for these patterns), fewest instructions
    // per byte scanned, which is what every simple query pays. `markers_of` steps through it
    // itself. (A leftmost-first search, restarted after each match, took 12 % more
    // instructions on pgbench's queries than one overlapping search.)
    DFA::builder()
        .ascii_case_insensitive(true)
        .build(patterns)
        .expect("fixed marker patterns always build")
});
/// Every marker bit, for a DFA without an unanchored start (it is built with one, but if it
/// were not, the statement must count as doing everything).
const ALL_MARKERS: u32 = STATEFUL_BITS | TAINTING_BITS | COMMIT_BIT;

/// One statement as the classifiers see it: its text and which marker words it contains,
/// found once per message in a single pass, without copying or lowering the text.
pub(crate) struct Statement<'a> {
    /// The text from its first non-space character on.
    head: &'a str,
    /// That character, lower-cased if it is an ASCII letter (0 for an empty statement): most
    /// statements (SELECT, INSERT, ...) are told apart from the keywords the checks look for by
    /// it alone, before any word is split off.
    lead: u8,
    markers: u32,
    /// More than one statement (a `;` before the trailing ones).
    several: bool,
}

/// The marker bits found in `text`: one step of the DFA per byte, and at each match state
/// every marker ending there. This is an overlapping search written out as the `Automaton`
/// docs show: the library's own (`find_overlapping_iter`) keeps its position in a search state
/// in memory and reports one match per call, and took 1,250 instructions on pgbench's query
/// where this loop takes 1,050.
fn markers_of(text: &[u8]) -> u32 {
    let dfa = &*MARKERS;
    let Ok(mut state) = dfa.start_state(Anchored::No) else {
        return ALL_MARKERS;
    };
    let mut markers = 0;
    for (at, &byte) in text.iter().enumerate() {
        state = dfa.next_state(Anchored::No, state, byte);
        if !dfa.is_special(state) || !dfa.is_match(state) {
            continue;
        }
        for i in 0..dfa.match_len(state) {
            let pattern = dfa.match_pattern(state, i);
            let bit = 1 << pattern.as_u32();
            // COMMIT counts only as a word of its own (not `commit_log`, `nocommit`).
            let end = at + 1;
            if bit == COMMIT_BIT
                && !is_word(text, end.saturating_sub(dfa.pattern_len(pattern)), end)
            {
                continue;
            }
            markers |= bit;
        }
    }
    markers
}

impl<'a> Statement<'a> {
    pub(crate) fn new(text: &'a str) -> Statement<'a> {
        let markers = markers_of(text.as_bytes());
        let several = text.trim_end().trim_end_matches(';').contains(';');
        Statement::with(text, markers, several)
    }

    fn with(text: &'a str, markers: u32, several: bool) -> Statement<'a> {
        let head = text.trim_start();
        let lead = head.as_bytes().first().map_or(0, u8::to_ascii_lowercase);
        Statement {
            head,
            lead,
            markers,
            several,
        }
    }

    /// The statement's words, without the trailing `;`.
    fn words(&self) -> std::str::SplitWhitespace<'a> {
        self.head
            .trim_end()
            .trim_end_matches(';')
            .split_whitespace()
    }

    /// Whether the statement starts with the ASCII `prefix` (lower case), ignoring case.
    fn starts_with(&self, prefix: &str) -> bool {
        prefix.as_bytes().first() == Some(&self.lead) && starts_with_word_prefix(self.head, prefix)
    }

    /// The same as the function `executes_nothing` on the text.
    pub(crate) fn executes_nothing(&self) -> bool {
        if !["begin", "start", "show"]
            .iter()
            .any(|word| self.starts_with(word))
        {
            return false;
        }
        let mut words = self.words();
        let first = [words.next(), words.next(), words.next()];
        let is =
            |word: Option<&str>, want: &str| word.is_some_and(|w| w.eq_ignore_ascii_case(want));
        match first {
            [w, None, None] => is(w, "begin"),
            [w, second, None] if is(w, "begin") => is(second, "work") || is(second, "transaction"),
            [w, second, None] if is(w, "start") => is(second, "transaction"),
            [w, Some(_), None] => is(w, "show"),
            _ => false,
        }
    }

    /// Whether the statement may commit a transaction (so a lost reply means "outcome
    /// unknown"): COMMIT (also COMMIT PREPARED, and anywhere in several statements), END,
    /// PREPARE TRANSACTION (the transaction may be prepared and holding its locks) and
    /// ROLLBACK PREPARED (a prepared transaction's fate is just as unknown).
    pub(crate) fn may_commit(&self) -> bool {
        if self.markers & COMMIT_BIT != 0 || self.starts_with("end") {
            return true;
        }
        if !self.starts_with("prepare") && !self.starts_with("rollback") {
            return false;
        }
        let mut words = self.head.split_whitespace();
        let first = words.next().unwrap_or_default();
        let second = words.next().unwrap_or_default();
        first.eq_ignore_ascii_case("prepare") && second.eq_ignore_ascii_case("transaction")
            || first.eq_ignore_ascii_case("rollback") && second.eq_ignore_ascii_case("prepared")
    }

    /// How the statement ends a transaction block, if it is exactly ROLLBACK, ABORT, COMMIT or
    /// END (with an optional WORK or TRANSACTION); not ROLLBACK TO SAVEPOINT, the two-phase
    /// forms or AND CHAIN.
    pub(crate) fn ends_transaction(&self) -> Option<TxEnd> {
        if !matches!(self.lead, b'r' | b'a' | b'c' | b'e') {
            return None;
        }
        let mut words = self.words();
        let first = words.next()?;
        match words.next() {
            None => {}
            Some(w)
                if (w.eq_ignore_ascii_case("work") || w.eq_ignore_ascii_case("transaction"))
                    && words.next().is_none() => {}
            Some(_) => return None,
        }
        let is = |want: &str| first.eq_ignore_ascii_case(want);
        if is("rollback") || is("abort") {
            Some(TxEnd::Rollback)
        } else if is("commit") || is("end") {
            Some(TxEnd::Commit)
        } else {
            None
        }
    }

    /// Whether a transaction end in the statement may begin a new block as it ends the old
    /// one: COMMIT, END, ROLLBACK or ABORT ... AND CHAIN. Several statements may whenever
    /// any word is CHAIN.
    pub(crate) fn may_chain(&self) -> bool {
        if self.several {
            return self
                .head
                .as_bytes()
                .windows(b"chain".len())
                .any(|w| w.eq_ignore_ascii_case(b"chain"));
        }
        if !matches!(self.lead, b'r' | b'a' | b'c' | b'e') {
            return false;
        }
        let mut last = self.words().rev();
        let is =
            |word: Option<&str>, want: &str| word.is_some_and(|w| w.eq_ignore_ascii_case(want));
        is(last.next(), "chain") && is(last.next(), "and")
    }

    /// The same as the function `may_taint_session` on the text.
    pub(crate) fn may_taint_session(&self) -> bool {
        let starts = tainting_starts(self.lead).iter().any(|start| {
            starts_with_word_prefix(self.head, start)
                && self.head[start.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !c.is_alphanumeric() && c != '_')
        });
        starts || self.several || self.markers & TAINTING_BITS != 0
    }

    /// The same as the function `may_change_session` on the text.
    pub(crate) fn may_change_session(&self) -> bool {
        let head = self
            .head
            .trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        let read_only = ["select", "values", "show"]
            .iter()
            .any(|word| starts_with_word_prefix(head, word));
        // Several statements: judge conservatively rather than split SQL here.
        !read_only || self.several || self.markers & STATEFUL_BITS != 0
    }
}

/// Bytes of a streamed statement's start kept for the checks that look at how it starts.
const STREAMED_HEAD: usize = 256;
/// Bytes kept from the end of one piece so a marker split across two pieces is still found
/// (longer than every marker).
const STREAMED_OVERLAP: usize = 32;

/// A statement too large to be held whole (a Query or Parse streamed to the backend in
/// pieces), classified as its pieces go by: its start is kept, marker words are looked for in
/// every piece (with an overlap), and whether a second statement follows a `;` is tracked.
#[derive(Debug, Default)]
pub(crate) struct StreamedStatement {
    head: Vec<u8>,
    tail: Vec<u8>,
    markers: u32,
    /// A `;` was seen, not yet followed by anything but spaces and `;`.
    after_semicolon: bool,
    several: bool,
}

impl StreamedStatement {
    /// The next piece of the statement's text.
    pub(crate) fn feed(&mut self, piece: &[u8]) {
        if self.head.len() < STREAMED_HEAD {
            let take = piece.len().min(STREAMED_HEAD - self.head.len());
            self.head.extend_from_slice(&piece[..take]);
        }
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(piece);
        self.markers |= markers_of(&window);
        let keep = window.len().saturating_sub(STREAMED_OVERLAP);
        self.tail = window.split_off(keep);
        for &b in piece {
            match b {
                b';' => self.after_semicolon = true,
                b if b.is_ascii_whitespace() || b == 0 => {}
                _ if self.after_semicolon => self.several = true,
                _ => {}
            }
        }
    }

    /// Runs `check` on the statement as the classifiers see it: its start, and the markers and
    /// `;` of all of it.
    pub(crate) fn judge<T>(&self, check: impl FnOnce(&Statement<'_>) -> T) -> T {
        let head = String::from_utf8_lossy(&self.head);
        check(&Statement::with(&head, self.markers, self.several))
    }
}

/// Whether `text[start..end]` is a whole word: no identifier character right before or after.
fn is_word(text: &[u8], start: usize, end: usize) -> bool {
    let ident = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$' || *b >= 0x80;
    let before = start.checked_sub(1).and_then(|i| text.get(i));
    !before.is_some_and(ident) && !text.get(end).is_some_and(ident)
}

/// Whether `text` starts with the ASCII `prefix`, ignoring case (a prefix, not a whole word).
fn starts_with_word_prefix(text: &str, prefix: &str) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_reads_leave_no_state() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12;\n",
            "  select 1",
            "(SELECT 1)",
            "SHOW x",
            "values (1)",
        ] {
            assert!(!may_change_session(sql), "{sql}");
        }
    }

    #[test]
    fn writes_settings_and_stateful_functions_count() {
        for sql in [
            "SET search_path = x",
            "select set_config('a.b', '1', false)",
            "SELECT pg_advisory_lock(1)",
            "select * into temp t from x",
            "PREPARE p AS SELECT 1",
            "LISTEN c",
            "select 1; set x = 1",
            "BEGIN",
            "INSERT INTO t VALUES (1)",
            "",
        ] {
            assert!(may_change_session(sql), "{sql}");
        }
    }

    #[test]
    fn only_unrebuildable_state_taints() {
        for sql in [
            "SELECT pg_backend_pid()",
            "INSERT INTO t VALUES (1)",
            "update t set x = 1",
            "SELECT settings FROM t",
        ] {
            assert!(!may_taint_session(sql), "{sql}");
        }
        for sql in [
            "SET search_path = x",
            "set_config('a', 'b', false)",
            "select pg_advisory_lock(1)",
            "CREATE TEMP TABLE t (x int)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "LISTEN ch",
            "select 1; set x = 1",
        ] {
            assert!(may_taint_session(sql), "{sql}");
        }
    }

    #[test]
    fn every_tainting_start_taints_in_any_case_and_after_spaces() {
        for lead in b'a'..=b'z' {
            for start in tainting_starts(lead) {
                assert_eq!(
                    start.as_bytes()[0],
                    lead,
                    "{start} filed under {}",
                    lead as char
                );
                for sql in [
                    format!("{start} x"),
                    format!("  {}", start.to_uppercase()),
                    format!("\n{start};"),
                ] {
                    assert!(may_taint_session(&sql), "{sql:?}");
                }
                assert!(!may_taint_session(&format!("{start}x")), "{start}x");
            }
        }
        for sql in [
            "LOCK TABLE t",
            "do $$ begin end $$",
            "CALL p()",
            "discard all",
        ] {
            assert!(may_taint_session(sql), "{sql}");
        }
    }

    #[test]
    fn only_begin_and_show_execute_nothing() {
        for sql in ["BEGIN", "begin;", "START TRANSACTION", "show search_path"] {
            assert!(executes_nothing(sql), "{sql}");
        }
        for sql in [
            "BEGIN; INSERT INTO t VALUES (1)",
            "SELECT 1",
            "START TRANSACTION READ ONLY; DELETE FROM t",
            "COMMIT",
        ] {
            assert!(!executes_nothing(sql), "{sql}");
        }
    }

    #[test]
    fn markers_match_in_any_case_and_commits_are_seen() {
        assert!(may_change_session("SELECT PG_ADVISORY_LOCK(1)"));
        assert!(may_taint_session("Select Set_Config('a', 'b', false)"));
        assert!(may_taint_session("cReAtE tEmP table t (x int)"));
        assert!(!may_taint_session("CREATE TEMPLATE_TABLE t (x int)"));
        assert!(!may_taint_session("settle_accounts()"));
        assert!(executes_nothing("Begin Work"));
        assert!(!executes_nothing("begins"));
        for (sql, commits) in [
            ("COMMIT", true),
            ("end", true),
            ("update t set x = 1; Commit", true),
            ("prepare transaction 'x'", true),
            ("COMMIT PREPARED 'x'", true),
            ("rollback prepared 'x'", true),
            ("ROLLBACK", false),
            ("PREPARE p AS SELECT 1", false),
            ("INSERT INTO commit_t VALUES (1)", false),
            ("select * from t_commit", false),
            ("select 1;commit;", true),
            ("SELECT 1", false),
        ] {
            assert_eq!(Statement::new(sql).may_commit(), commits, "{sql}");
        }
    }

    /// The bits of every marker word found anywhere in `text`, the slow way.
    fn markers_by_search(text: &str) -> u32 {
        let lower = text.to_ascii_lowercase();
        let words = STATEFUL_MARKERS
            .iter()
            .chain(TAINTING_ANYWHERE)
            .chain([&COMMIT]);
        let mut bits = 0;
        for (i, word) in words.enumerate() {
            let mut found = lower.match_indices(word);
            let counts = if *word == COMMIT {
                found.any(|(at, _)| is_word(lower.as_bytes(), at, at + word.len()))
            } else {
                found.next().is_some()
            };
            if counts {
                bits |= 1 << i;
            }
        }
        bits
    }

    #[test]
    fn every_marker_is_found_also_where_markers_overlap() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
            "select * into temp t from x",
            "SELECT * INTO TEMPORARY t FROM x",
            "select tempg_x, commitemp, currvalisten, with holdeclare from lo_",
            "DECLARE c CURSOR WITH HOLD FOR SELECT pg_advisory_lock(1)",
            "select set_config('a', 'b', false); commit",
            "select dblink_connect('x'), nocommit, commit_log",
            "intotemp into  temp prepareprepare",
            "",
        ] {
            assert_eq!(markers_of(sql.as_bytes()), markers_by_search(sql), "{sql}");
        }
    }

    #[test]
    fn chained_transaction_ends_are_recognised() {
        for (sql, chains) in [
            ("COMMIT AND CHAIN", true),
            ("rollback work and chain;", true),
            ("END TRANSACTION AND CHAIN", true),
            ("abort and\tchain", true),
            ("COMMIT AND NO CHAIN", false),
            ("COMMIT", false),
            ("SELECT 'and chain'", false),
            ("INSERT INTO t VALUES (1); COMMIT AND CHAIN", true),
            ("SELECT 1; SELECT 2", false),
        ] {
            assert_eq!(Statement::new(sql).may_chain(), chains, "{sql}");
        }
    }

    #[test]
    fn transaction_ends_are_recognised() {
        for (sql, end) in [
            ("ROLLBACK", Some(TxEnd::Rollback)),
            ("rollback;", Some(TxEnd::Rollback)),
            (" abort work ", Some(TxEnd::Rollback)),
            ("COMMIT TRANSACTION", Some(TxEnd::Commit)),
            ("end", Some(TxEnd::Commit)),
            ("ROLLBACK TO SAVEPOINT a", None),
            ("COMMIT PREPARED 'x'", None),
            ("COMMIT AND CHAIN", None),
            ("COMMIT WORK NOW", None),
            ("SELECT 1", None),
            ("", None),
        ] {
            assert_eq!(Statement::new(sql).ends_transaction(), end, "{sql}");
        }
    }

    #[test]
    fn a_streamed_statement_is_judged_like_the_whole_text() {
        let text = format!(
            "INSERT INTO t SELECT x FROM big WHERE v = '{}' AND pg_advisory_lock(1) > 0",
            "y".repeat(100_000)
        );
        let mut streamed = StreamedStatement::default();
        // Pieces that cut the marker word in two.
        let cut = text.find("advisory").unwrap_or(0) + 3;
        streamed.feed(&text.as_bytes()[..cut]);
        streamed.feed(&text.as_bytes()[cut..]);
        let whole = Statement::new(&text);
        assert_eq!(
            streamed.judge(|s| (
                s.may_taint_session(),
                s.may_commit(),
                s.may_change_session()
            )),
            (
                whole.may_taint_session(),
                whole.may_commit(),
                whole.may_change_session()
            )
        );
        assert!(streamed.judge(|s| s.may_taint_session()));
        let mut two = StreamedStatement::default();
        two.feed(b"SELECT 1;");
        two.feed(b"  COMMIT");
        assert!(two.judge(|s| s.may_commit()));
        assert!(two.judge(|s| s.may_taint_session()), "several statements");
    }
}
