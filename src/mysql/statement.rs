//! What a MySQL/MariaDB statement may do (DESIGN §3), told from its tokens: whether it
//! certainly changes nothing on the server, may commit, ends a transaction, waits on purpose
//! or creates session state Suture cannot rebuild on another backend. Each judgement errs on
//! the safe side: an unknown statement or function may commit and executes something.
//!
//! A COM_QUERY may hold several statements (CLIENT_MULTI_STATEMENTS): [`classify`] judges each
//! one, following the transaction state through them (`BEGIN; ...; COMMIT`), and [`combine`]
//! says what they mean together.

use super::lexer::{statements, SqlMode, Token, TokenKind};
use super::statement_effects::Effects;
use crate::session::ledger::{Traits, TxEnd};

/// What one statement (or a whole query, see [`combine`]) may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Facts {
    /// It certainly changes nothing on the server, so running it twice is running it once: a
    /// SELECT of columns and pure builtin functions (no INTO, no locking read, no `:=`), SHOW,
    /// EXPLAIN without ANALYZE, DESCRIBE, HELP, `DO` of pure expressions, and BEGIN or START
    /// TRANSACTION outside a transaction. SET and USE are not "nothing".
    pub(crate) executes_nothing: bool,
    /// It may commit data: data changes outside a transaction (the server may be in
    /// autocommit mode), COMMIT, statements with an implicit commit (DDL, LOCK TABLES, BEGIN
    /// inside a transaction, `SET autocommit = 1` inside one), CALL and other statements whose
    /// content is not visible here, XA PREPARE / COMMIT / ROLLBACK.
    pub(crate) may_commit: bool,
    /// How it ends the open transaction: `Rollback` only for a plain ROLLBACK (not AND CHAIN,
    /// not TO SAVEPOINT); `Commit` for COMMIT (also AND CHAIN), XA COMMIT and implicit commits
    /// inside a transaction.
    pub(crate) ends_transaction: Option<TxEnd>,
    /// It may wait long on purpose: SLEEP, GET_LOCK and the replication waits, locking reads
    /// (FOR UPDATE, FOR SHARE, LOCK IN SHARE MODE), LOCK TABLES, FLUSH ... WITH READ LOCK,
    /// CALL and EXECUTE (their content is not visible here).
    pub(crate) waits: bool,
    /// It creates state Suture cannot restore: user variables (`SET @x`, `INTO @x`, `@x :=`),
    /// temporary tables, GET_LOCK, LOCK TABLES, SQL-level PREPARE / EXECUTE / DEALLOCATE,
    /// HANDLER, XA transactions, `SET TRANSACTION` (next transaction only), SET ROLE, a
    /// change to `session_track_*` (Suture would stop seeing the session state).
    pub(crate) taints: bool,
    /// It is (or holds) `SET NAMES x COLLATE y`: the server reports the character set it
    /// chose, not the collation, which [`names_collation`] reads from the text.
    pub(crate) chooses_collation: bool,
}

impl Facts {
    /// An empty query, or one statement that changes nothing.
    const NOTHING: Facts = Facts {
        executes_nothing: true,
        may_commit: false,
        ends_transaction: None,
        waits: false,
        taints: false,
        chooses_collation: false,
    };
    /// Runs something, but commits nothing, waits for nothing on purpose and taints nothing.
    const EXECUTES: Facts = Facts {
        executes_nothing: false,
        ..Facts::NOTHING
    };
    /// A statement whose effects are not visible from its text.
    const OPAQUE: Facts = Facts {
        executes_nothing: false,
        may_commit: true,
        ends_transaction: None,
        waits: true,
        taints: false,
        chooses_collation: false,
    };

    /// The ledger's view of the request these facts describe. Every SQL statement may be made
    /// to wait by the server (row and metadata locks), so `waits` is always true there;
    /// [`Facts::waits`] is the stricter "waits on purpose".
    pub(crate) fn traits(&self) -> Traits {
        Traits {
            executes: !self.executes_nothing,
            may_commit: self.may_commit,
            ends_tx: self.ends_transaction,
            waits: true,
            // MySQL says in every OK packet whether a transaction is open.
            chains: false,
        }
    }
}

/// Whether a transaction is open before a statement, as far as the statements before it tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InTx {
    Yes,
    No,
    /// A statement ran that opens a transaction when autocommit is off, or one whose effect on
    /// the transaction is not visible (CALL).
    Maybe,
}

impl InTx {
    /// After a statement that runs in the open transaction, or opens one under autocommit=0.
    fn after_statement(self) -> InTx {
        match self {
            InTx::Yes => InTx::Yes,
            InTx::No | InTx::Maybe => InTx::Maybe,
        }
    }

    /// Whether an implicit commit here may commit an open transaction.
    fn may_be_open(self) -> bool {
        self != InTx::No
    }
}

/// The facts of each statement of `sql` (`;`-separated, empty ones left out), given whether a
/// transaction was open before it.
pub(crate) fn classify(sql: &[u8], mode: SqlMode, in_transaction: bool) -> Vec<Facts> {
    let mut tx = if in_transaction { InTx::Yes } else { InTx::No };
    statements(sql, mode)
        .iter()
        .map(|tokens| {
            let (facts, after) = classify_statement(tokens, tx);
            tx = after;
            facts
        })
        .collect()
}

/// What a query of several statements means as a whole: it executes nothing only if none of
/// them executes anything, and may commit, waits or taints if any does. It ends the
/// transaction with `Rollback` only when it is one plain ROLLBACK (several statements are not
/// answered as one), and with `Commit` when its last statement commits. No statements at all
/// (an empty query, which the server refuses) execute nothing.
pub(crate) fn combine(facts: &[Facts]) -> Facts {
    let ends_transaction = match facts {
        [one] => one.ends_transaction,
        [.., last] if last.ends_transaction == Some(TxEnd::Commit) => Some(TxEnd::Commit),
        _ => None,
    };
    let mut all = Facts {
        ends_transaction,
        ..Facts::NOTHING
    };
    for f in facts {
        all.executes_nothing &= f.executes_nothing;
        all.may_commit |= f.may_commit;
        all.waits |= f.waits;
        all.taints |= f.taints;
        all.chooses_collation |= f.chooses_collation;
    }
    all
}

/// The collation the one statement of `sql` chose with `SET NAMES x COLLATE y` (the last one
/// when its SET list has several), unquoted; `None` when `sql` is not one such statement.
pub(crate) fn names_collation(sql: &[u8], mode: SqlMode) -> Option<String> {
    let statements = statements(sql, mode);
    let [tokens] = statements.as_slice() else {
        return None;
    };
    let (verb, rest) = tokens.split_first()?;
    if !verb.is("SET") {
        return None;
    }
    let chosen = assignments(rest)
        .into_iter()
        .filter_map(collation_of_names)
        .next_back()?;
    let text = match chosen.kind {
        TokenKind::String | TokenKind::QuotedIdent => chosen.text.get(1..chosen.text.len() - 1)?,
        _ => chosen.text,
    };
    String::from_utf8(text.to_vec()).ok()
}

/// The collation token of a SET item `NAMES x COLLATE y`.
fn collation_of_names<'s, 'a>(item: &'s [Token<'a>]) -> Option<&'s Token<'a>> {
    if !item.first()?.is("NAMES") {
        return None;
    }
    let at = item.iter().position(|t| t.is("COLLATE"))?;
    item.get(at + 1)
}

/// The facts of one statement and the transaction state after it.
fn classify_statement(tokens: &[Token<'_>], tx: InTx) -> (Facts, InTx) {
    let words = Words(tokens);
    let Some(verb) = tokens.first() else {
        return (Facts::NOTHING, tx);
    };
    if verb.is_punct(b'(') || verb.is_any(&["SELECT", "VALUES", "TABLE", "DO"]) {
        return read(tokens, tx);
    }
    if verb.kind != TokenKind::Word {
        return (Facts::OPAQUE, InTx::Maybe);
    }
    let upper = verb.text.to_ascii_uppercase();
    match upper.as_slice() {
        b"WITH" if with_changes_data(tokens) => dml(tokens, tx),
        b"WITH" => read(tokens, tx),
        b"SHOW" | b"DESCRIBE" | b"DESC" | b"HELP" => (Facts::NOTHING, tx),
        b"EXPLAIN" => explain(&tokens[1..], tx),
        b"ANALYZE" if words.is(1, "TABLE") || words.is(1, "TABLES") => implicit_commit(tx),
        b"ANALYZE" => analyze(&tokens[1..], tx),
        b"INSERT" | b"REPLACE" | b"UPDATE" | b"DELETE" => dml(tokens, tx),
        b"LOAD" if words.is(1, "INDEX") => implicit_commit(tx),
        b"LOAD" => dml(tokens, tx),
        b"SET" => set(&tokens[1..], tx),
        b"BEGIN" if words.is(1, "NOT") => (Facts::OPAQUE, InTx::Maybe),
        b"BEGIN" => begin(tx),
        b"START" if words.is(1, "TRANSACTION") => begin(tx),
        b"COMMIT" => commit(&tokens[1..]),
        b"ROLLBACK" => rollback(&tokens[1..], tx),
        b"SAVEPOINT" | b"RELEASE" => (Facts::EXECUTES, tx),
        b"XA" => xa(&tokens[1..], tx),
        b"CALL" => (Facts::OPAQUE, InTx::Maybe),
        b"EXECUTE" => (tainted(Facts::OPAQUE), InTx::Maybe),
        b"PREPARE" | b"DEALLOCATE" | b"HANDLER" => (tainted(Facts::EXECUTES), tx),
        b"DROP" if words.is(1, "PREPARE") => (tainted(Facts::EXECUTES), tx),
        b"DROP" if words.is(1, "TEMPORARY") => (Facts::EXECUTES, tx),
        b"CREATE" if creates_temporary(tokens) => (tainted(Facts::EXECUTES), tx),
        b"LOCK" if words.is(1, "TABLE") || words.is(1, "TABLES") => {
            let (facts, after) = implicit_commit(tx);
            (waiting(tainted(facts)), after)
        }
        b"LOCK" | b"BACKUP" => (waiting(tainted(Facts::OPAQUE)), tx),
        b"UNLOCK" => unlock(tx),
        b"FLUSH" => flush(tokens, tx),
        b"USE" | b"KILL" | b"PURGE" | b"SIGNAL" | b"RESIGNAL" | b"GET" | b"CHECKSUM"
        | b"SHUTDOWN" | b"RESTART" => (Facts::EXECUTES, tx),
        b"CREATE" | b"ALTER" | b"DROP" | b"RENAME" | b"TRUNCATE" | b"GRANT" | b"REVOKE"
        | b"OPTIMIZE" | b"REPAIR" | b"CHECK" | b"CACHE" | b"RESET" | b"INSTALL" | b"UNINSTALL"
        | b"START" | b"STOP" | b"CHANGE" | b"IMPORT" | b"CLONE" | b"BINLOG" => {
            let (facts, after) = implicit_commit(tx);
            let effects = if has_program_body(tokens) {
                Effects::default()
            } else {
                Effects::of(tokens)
            };
            (effects.add_to(facts), after)
        }
        _ => (Facts::OPAQUE, InTx::Maybe),
    }
}

fn tainted(facts: Facts) -> Facts {
    Facts {
        taints: true,
        ..facts
    }
}

fn waiting(facts: Facts) -> Facts {
    Facts {
        waits: true,
        ..facts
    }
}

/// Positional word checks on a statement's tokens.
#[derive(Clone, Copy)]
struct Words<'s, 'a>(&'s [Token<'a>]);

impl Words<'_, '_> {
    fn is(&self, i: usize, word: &str) -> bool {
        self.0.get(i).is_some_and(|t| t.is(word))
    }
}

/// SELECT, VALUES, TABLE, DO, a parenthesised query or WITH ... SELECT: nothing, unless its
/// expressions or clauses do something.
fn read(tokens: &[Token<'_>], tx: InTx) -> (Facts, InTx) {
    let effects = Effects::of(tokens);
    let facts = Facts {
        executes_nothing: !effects.acts(),
        may_commit: effects.may_write_data && tx != InTx::Yes,
        ..effects.add_to(Facts::NOTHING)
    };
    let after = if facts.executes_nothing {
        tx
    } else {
        tx.after_statement()
    };
    (facts, after)
}

/// INSERT, REPLACE, UPDATE, DELETE, LOAD DATA / XML, WITH ... UPDATE / DELETE.
fn dml(tokens: &[Token<'_>], tx: InTx) -> (Facts, InTx) {
    let facts = Facts {
        may_commit: tx != InTx::Yes,
        ..Effects::of(tokens).add_to(Facts::EXECUTES)
    };
    (facts, tx.after_statement())
}

/// Whether a WITH statement's main statement (the first word after the common table
/// expressions, outside parentheses) changes data.
fn with_changes_data(tokens: &[Token<'_>]) -> bool {
    let mut depth = 0usize;
    for t in tokens {
        if t.is_punct(b'(') {
            depth += 1;
        } else if t.is_punct(b')') {
            depth = depth.saturating_sub(1);
        } else if depth == 0 && t.is_any(&["UPDATE", "DELETE", "INSERT", "REPLACE"]) {
            return true;
        } else if depth == 0 && t.is_any(&["SELECT", "TABLE", "VALUES"]) {
            return false;
        }
    }
    false
}

/// A statement with an implicit commit (DDL and friends): it commits any open transaction
/// and is itself committed at once.
fn implicit_commit(tx: InTx) -> (Facts, InTx) {
    let facts = Facts {
        may_commit: true,
        ends_transaction: tx.may_be_open().then_some(TxEnd::Commit),
        ..Facts::EXECUTES
    };
    (facts, InTx::No)
}

/// `CREATE [OR REPLACE] TEMPORARY TABLE`: no implicit commit, a table Suture cannot rebuild.
fn creates_temporary(tokens: &[Token<'_>]) -> bool {
    tokens
        .iter()
        .skip(1)
        .take(3)
        .take_while(|t| !t.is("TABLE"))
        .any(|t| t.is("TEMPORARY"))
}

/// `CREATE | ALTER ... PROCEDURE | FUNCTION | TRIGGER | EVENT | PACKAGE | VIEW`: the body
/// runs later, not now, so its calls and variables say nothing about this statement.
fn has_program_body(tokens: &[Token<'_>]) -> bool {
    tokens
        .first()
        .is_some_and(|t| t.is_any(&["CREATE", "ALTER"]))
        && tokens.iter().take(12).any(|t| {
            t.is_any(&[
                "PROCEDURE",
                "FUNCTION",
                "TRIGGER",
                "EVENT",
                "PACKAGE",
                "VIEW",
            ])
        })
}

/// EXPLAIN / DESCRIBE of a statement: nothing, unless it is EXPLAIN ANALYZE (which runs it).
fn explain(rest: &[Token<'_>], tx: InTx) -> (Facts, InTx) {
    match rest.first() {
        Some(t) if t.is("ANALYZE") => analyze(&rest[1..], tx),
        _ => {
            // The statement is only planned: its calls and locking clauses do not run, but
            // `EXPLAIN FORMAT=JSON INTO @x` assigns.
            let taints = Effects::of(rest).taints;
            let facts = Facts {
                executes_nothing: !taints,
                taints,
                ..Facts::NOTHING
            };
            (facts, tx)
        }
    }
}

/// MariaDB's `ANALYZE [FORMAT=JSON] stmt` and MySQL's `EXPLAIN ANALYZE [FORMAT=TREE] stmt`:
/// the statement is run.
fn analyze(rest: &[Token<'_>], tx: InTx) -> (Facts, InTx) {
    let statement = match rest {
        [format, eq, _, inner @ ..] if format.is("FORMAT") && eq.is_punct(b'=') => inner,
        _ => rest,
    };
    let (facts, after) = classify_statement(statement, tx);
    (
        Facts {
            executes_nothing: false,
            ..facts
        },
        after,
    )
}

/// BEGIN [WORK] / START TRANSACTION [...]: inside a transaction, it commits it first.
fn begin(tx: InTx) -> (Facts, InTx) {
    let open = tx.may_be_open();
    let facts = Facts {
        executes_nothing: !open,
        may_commit: open,
        ends_transaction: open.then_some(TxEnd::Commit),
        ..Facts::NOTHING
    };
    (facts, InTx::Yes)
}

/// Whether a COMMIT or ROLLBACK tail (`[WORK] [AND [NO] CHAIN] [[NO] RELEASE]`) chains a
/// new transaction.
fn chains(rest: &[Token<'_>]) -> bool {
    rest.windows(2)
        .any(|pair| pair[0].is("AND") && pair[1].is("CHAIN"))
}

/// COMMIT [WORK] [AND [NO] CHAIN] [[NO] RELEASE].
fn commit(rest: &[Token<'_>]) -> (Facts, InTx) {
    let facts = Facts {
        may_commit: true,
        ends_transaction: Some(TxEnd::Commit),
        ..Facts::EXECUTES
    };
    (facts, if chains(rest) { InTx::Yes } else { InTx::No })
}

/// ROLLBACK [WORK] TO [SAVEPOINT] x, or ROLLBACK [WORK] [AND [NO] CHAIN] [[NO] RELEASE].
fn rollback(rest: &[Token<'_>], tx: InTx) -> (Facts, InTx) {
    let rest = match rest.first() {
        Some(t) if t.is("WORK") => &rest[1..],
        _ => rest,
    };
    if rest.first().is_some_and(|t| t.is("TO")) {
        return (Facts::EXECUTES, tx);
    }
    if chains(rest) {
        // Answering it as a plain rollback would leave the client outside the transaction
        // it asked for.
        return (Facts::EXECUTES, InTx::Yes);
    }
    let facts = Facts {
        ends_transaction: Some(TxEnd::Rollback),
        ..Facts::EXECUTES
    };
    (facts, InTx::No)
}

/// XA START | BEGIN | END | PREPARE | COMMIT | ROLLBACK | RECOVER.
fn xa(rest: &[Token<'_>], tx: InTx) -> (Facts, InTx) {
    let Some(verb) = rest.first() else {
        return (Facts::OPAQUE, InTx::Maybe);
    };
    let resolves = Facts {
        may_commit: true,
        ..tainted(Facts::EXECUTES)
    };
    if verb.is("RECOVER") {
        (Facts::NOTHING, tx)
    } else if verb.is_any(&["START", "BEGIN"]) {
        (tainted(Facts::EXECUTES), InTx::Yes)
    } else if verb.is("END") {
        (tainted(Facts::EXECUTES), tx)
    } else if verb.is("PREPARE") {
        (resolves, InTx::No)
    } else if verb.is("COMMIT") {
        let facts = Facts {
            ends_transaction: Some(TxEnd::Commit),
            ..resolves
        };
        (facts, InTx::No)
    } else if verb.is("ROLLBACK") {
        (resolves, InTx::No)
    } else {
        (tainted(Facts::OPAQUE), InTx::Maybe)
    }
}

/// UNLOCK TABLES commits when tables were locked with LOCK TABLES; UNLOCK INSTANCE does not.
fn unlock(tx: InTx) -> (Facts, InTx) {
    let facts = Facts {
        may_commit: true,
        ..Facts::EXECUTES
    };
    let after = if tx == InTx::No {
        InTx::No
    } else {
        InTx::Maybe
    };
    (facts, after)
}

/// FLUSH has an implicit commit; `FLUSH TABLES ... WITH READ LOCK` and `... FOR EXPORT` also
/// hold locks for the session.
fn flush(tokens: &[Token<'_>], tx: InTx) -> (Facts, InTx) {
    let (facts, after) = implicit_commit(tx);
    let locks = tokens
        .windows(2)
        .any(|w| w[0].is("READ") && w[1].is("LOCK") || w[0].is("FOR") && w[1].is("EXPORT"));
    if locks {
        (waiting(tainted(facts)), after)
    } else {
        (facts, after)
    }
}

/// SET ...: session variables (tracked by the server, restorable), user variables (not),
/// `SET TRANSACTION` (next transaction only), `SET autocommit = 1` (commits), MariaDB's
/// `SET STATEMENT ... FOR stmt`, and the account statements SET PASSWORD / SET DEFAULT ROLE.
fn set(rest: &[Token<'_>], tx: InTx) -> (Facts, InTx) {
    let words = Words(rest);
    if words.is(0, "PASSWORD") || words.is(0, "DEFAULT") && words.is(1, "ROLE") {
        return implicit_commit(tx);
    }
    if words.is(0, "TRANSACTION") || words.is_role_or_resource_group() {
        return (tainted(Facts::EXECUTES), tx);
    }
    if words.is(0, "STATEMENT") {
        return match top_level(rest).position(|(_, t)| t.is("FOR")) {
            Some(i) => classify_statement(&rest[i + 1..], tx),
            None => (Facts::OPAQUE, InTx::Maybe),
        };
    }
    let mut facts = Effects::of(rest).add_to(Facts::EXECUTES);
    let mut after = tx;
    for item in assignments(rest) {
        facts.chooses_collation |= collation_of_names(item).is_some();
        match assigned(item) {
            Assigned::User => facts.taints = true,
            Assigned::Session(name) if is_tracking_variable(name) => facts.taints = true,
            Assigned::Session(name) if name.eq_ignore_ascii_case(b"autocommit") => {
                if !turns_off(item) && tx.may_be_open() {
                    facts.may_commit = true;
                    facts.ends_transaction = Some(TxEnd::Commit);
                    after = InTx::No;
                }
            }
            Assigned::Session(_) | Assigned::Global | Assigned::Other => {}
        }
    }
    (facts, after)
}

impl Words<'_, '_> {
    /// `SET ROLE ...` (the active roles, not a tracked variable) and MySQL's
    /// `SET RESOURCE GROUP` (the thread's group).
    fn is_role_or_resource_group(&self) -> bool {
        self.is(0, "ROLE") || self.is(0, "RESOURCE") && self.is(1, "GROUP")
    }
}

/// What one item of a SET list assigns.
#[derive(Debug, PartialEq, Eq)]
enum Assigned<'a> {
    /// `@x = ...`.
    User,
    /// A session variable (`x`, `SESSION x`, `LOCAL x`, `@@x`, `@@session.x`), by name.
    Session(&'a [u8]),
    /// `GLOBAL x`, `PERSIST x`, `PERSIST_ONLY x`, `@@global.x`, `@@persist.x`.
    Global,
    /// `NAMES ...`, `CHARACTER SET ...`, anything else.
    Other,
}

fn assigned<'a>(item: &[Token<'a>]) -> Assigned<'a> {
    let Some(first) = item.first() else {
        return Assigned::Other;
    };
    match first.kind {
        TokenKind::UserVar => Assigned::User,
        TokenKind::SystemVar => {
            let name = first.text.get(2..).unwrap_or_default();
            match name.iter().position(|&b| b == b'.') {
                Some(dot) => {
                    let scope = &name[..dot];
                    if scope.eq_ignore_ascii_case(b"session")
                        || scope.eq_ignore_ascii_case(b"local")
                    {
                        Assigned::Session(&name[dot + 1..])
                    } else {
                        Assigned::Global
                    }
                }
                None => Assigned::Session(name),
            }
        }
        TokenKind::Word if first.is_any(&["GLOBAL", "PERSIST", "PERSIST_ONLY"]) => Assigned::Global,
        TokenKind::Word if first.is_any(&["SESSION", "LOCAL"]) => match item.get(1) {
            Some(name) if name.kind == TokenKind::Word => Assigned::Session(name.text),
            _ => Assigned::Other,
        },
        TokenKind::Word if first.is_any(&["NAMES", "CHARACTER", "CHARSET"]) => Assigned::Other,
        TokenKind::Word => Assigned::Session(first.text),
        _ => Assigned::Other,
    }
}

/// Variables that steer what the server tells Suture about the session.
fn is_tracking_variable(name: &[u8]) -> bool {
    name.len() >= 14 && name[..14].eq_ignore_ascii_case(b"session_track_")
}

/// Whether a SET item's value is certainly "off" (`0`, `OFF`, `FALSE`).
fn turns_off(item: &[Token<'_>]) -> bool {
    let value = item
        .iter()
        .position(|t| t.is_punct(b'=') || t.kind == TokenKind::Assign)
        .map_or(&[][..], |i| &item[i + 1..]);
    match value {
        [v] => {
            v.is_any(&["0", "OFF", "FALSE"])
                || v.kind == TokenKind::String && {
                    let inner = v.text.get(1..v.text.len().saturating_sub(1));
                    inner.is_some_and(|s| s == b"0" || s.eq_ignore_ascii_case(b"OFF"))
                }
        }
        _ => false,
    }
}

/// The tokens of `tokens` outside parentheses, with their positions.
fn top_level<'s, 'a>(tokens: &'s [Token<'a>]) -> impl Iterator<Item = (usize, &'s Token<'a>)> + 's {
    let mut depth = 0usize;
    tokens.iter().enumerate().filter(move |(_, t)| {
        if t.is_punct(b'(') {
            depth += 1;
        } else if t.is_punct(b')') {
            depth = depth.saturating_sub(1);
        } else {
            return depth == 0;
        }
        false
    })
}

/// The items of a SET list: `tokens` split at commas outside parentheses.
fn assignments<'s, 'a>(tokens: &'s [Token<'a>]) -> Vec<&'s [Token<'a>]> {
    let mut items = Vec::new();
    let mut start = 0;
    for (i, t) in top_level(tokens) {
        if t.is_punct(b',') {
            items.push(&tokens[start..i]);
            start = i + 1;
        }
    }
    items.push(&tokens[start..]);
    items
}

#[cfg(test)]
#[path = "statement_tests.rs"]
mod tests;
