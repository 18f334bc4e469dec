//! The session state Suture can rebuild on a new backend (DESIGN §4): settings changed with
//! `SET`, `LISTEN` channels and named prepared statements. Statements are recognised from their
//! text, recorded only once the backend has acknowledged them, and replayed as they were sent.
//! Everything else that creates session state taints the session (see `tracker`).

use std::collections::BTreeMap;

use bytes::Bytes;

/// Retained Parse messages above this many bytes are not kept: the session is tainted instead.
const MAX_PREPARED_BYTES: usize = 1024 * 1024;

/// A statement that changes restorable session state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StateOp {
    /// `SET name ...` (session scope): replay `sql` to restore it.
    Set { key: String, sql: String },
    /// `RESET name`.
    Reset { key: String },
    /// `RESET ALL`.
    ResetAll,
    /// `LISTEN channel`.
    Listen { key: String, sql: String },
    /// `UNLISTEN channel`.
    Unlisten { key: String },
    /// `UNLISTEN *`.
    UnlistenAll,
    /// `DEALLOCATE name` (also drops protocol-level prepared statements).
    Deallocate { name: String },
    /// `DEALLOCATE ALL`.
    DeallocateAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// Statements that look like state changes but change nothing that lasts
    /// (`SET LOCAL`, `SET TRANSACTION`, `DISCARD PLANS`, ...).
    Nothing,
}

/// First words of the statements [`classify`] recognises.
const STATE_VERBS: [&str; 6] = [
    "set",
    "reset",
    "listen",
    "unlisten",
    "deallocate",
    "discard",
];

/// Recognises a single statement that changes restorable state; `None` for anything else.
pub(crate) fn classify(sql: &str) -> Option<StateOp> {
    let text = sql.trim().trim_end_matches(';').trim_end();
    // Most statements are none of these: tell from how the text starts, without allocating.
    let starts_with = |verb: &str| {
        text.as_bytes()
            .get(..verb.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(verb.as_bytes()))
    };
    if !STATE_VERBS.iter().any(|verb| starts_with(verb)) {
        return None;
    }
    if text.contains(';') {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    match words.as_slice() {
        ["set", "local", ..] | ["set", "transaction", ..] => Some(StateOp::Nothing),
        ["set", "session", "characteristics", ..] => set_op("session characteristics", text),
        ["set", "session", "authorization", ..] => set_op("session authorization", text),
        ["set", "session", name, ..] | ["set", name, ..] => set_op(setting_key(name), text),
        ["reset", "all"] => Some(StateOp::ResetAll),
        ["reset", "session", "authorization"] => Some(StateOp::Reset {
            key: "session authorization".into(),
        }),
        ["reset", name] => Some(StateOp::Reset {
            key: setting_key(name).to_owned(),
        }),
        ["listen", _] => Some(StateOp::Listen {
            key: channel_key(text),
            sql: text.to_owned(),
        }),
        ["unlisten", "*"] => Some(StateOp::UnlistenAll),
        ["unlisten", _] => Some(StateOp::Unlisten {
            key: channel_key(text),
        }),
        ["deallocate", "all"] | ["deallocate", "prepare", "all"] => Some(StateOp::DeallocateAll),
        ["deallocate", "prepare", _] | ["deallocate", _] => {
            let name = text.split_whitespace().last().unwrap_or_default();
            Some(StateOp::Deallocate {
                name: identifier(name),
            })
        }
        ["discard", "all"] => Some(StateOp::DiscardAll),
        ["discard", "plans"] | ["discard", "sequences"] => Some(StateOp::Nothing),
        _ => None,
    }
}

fn set_op(key: &str, text: &str) -> Option<StateOp> {
    Some(StateOp::Set {
        key: key.to_owned(),
        sql: text.to_owned(),
    })
}

/// `search_path=x` (no spaces) and `search_path` name the same setting.
fn setting_key(word: &str) -> &str {
    word.split(['=', '\'']).next().unwrap_or(word)
}

/// The channel as PostgreSQL names it: unquoted identifiers fold to lower case.
fn channel_key(text: &str) -> String {
    identifier(text.split_whitespace().nth(1).unwrap_or_default())
}

fn identifier(token: &str) -> String {
    match token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => token.to_ascii_lowercase(),
    }
}

/// The restorable state of one client session.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    /// `SET` statements in effect, by setting.
    settings: BTreeMap<String, String>,
    /// `LISTEN` statements in effect, by channel.
    listens: BTreeMap<String, String>,
    /// Named prepared statements: the client's Parse message, by name.
    prepared: BTreeMap<String, Bytes>,
    prepared_bytes: usize,
}

impl SessionState {
    /// Records an acknowledged statement.
    pub(crate) fn apply(&mut self, op: StateOp) {
        match op {
            StateOp::Set { key, sql } => {
                self.settings.insert(key, sql);
            }
            StateOp::Reset { key } => {
                self.settings.remove(&key);
            }
            StateOp::ResetAll => self.settings.clear(),
            StateOp::Listen { key, sql } => {
                self.listens.insert(key, sql);
            }
            StateOp::Unlisten { key } => {
                self.listens.remove(&key);
            }
            StateOp::UnlistenAll => self.listens.clear(),
            StateOp::Deallocate { name } => self.forget_prepared(&name),
            StateOp::DeallocateAll => self.clear_prepared(),
            StateOp::DiscardAll => {
                self.settings.clear();
                self.listens.clear();
                self.clear_prepared();
            }
            StateOp::Nothing => {}
        }
    }

    /// Records a named statement the backend acknowledged (ParseComplete). Returns false when
    /// keeping it would pass the memory cap: the caller then treats the session as tainted.
    pub(crate) fn remember_prepared(&mut self, name: String, parse_message: Bytes) -> bool {
        self.forget_prepared(&name);
        if self.prepared_bytes + parse_message.len() > MAX_PREPARED_BYTES {
            return false;
        }
        self.prepared_bytes += parse_message.len();
        self.prepared.insert(name, parse_message);
        true
    }

    /// A named statement was closed.
    pub(crate) fn forget_prepared(&mut self, name: &str) {
        if let Some(message) = self.prepared.remove(name) {
            self.prepared_bytes -= message.len();
        }
    }

    fn clear_prepared(&mut self) {
        self.prepared.clear();
        self.prepared_bytes = 0;
    }

    /// The statements that rebuild settings and LISTENs, as one simple query; `None` if none.
    pub(crate) fn restore_sql(&self) -> Option<String> {
        let statements: Vec<&str> = self
            .settings
            .values()
            .chain(self.listens.values())
            .map(String::as_str)
            .collect();
        (!statements.is_empty()).then(|| statements.join("; "))
    }

    /// The Parse messages that rebuild the named prepared statements.
    pub(crate) fn parse_messages(&self) -> impl Iterator<Item = &Bytes> {
        self.prepared.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_forms_are_keyed_by_setting() {
        for (sql, key) in [
            ("SET search_path = a, b", "search_path"),
            ("set session TimeZone to 'UTC';", "timezone"),
            ("SET application_name='x'", "application_name"),
            ("SET SESSION AUTHORIZATION bob", "session authorization"),
        ] {
            match classify(sql) {
                Some(StateOp::Set { key: k, sql: s }) => {
                    assert_eq!(k, key, "{sql}");
                    assert!(sql.starts_with(&s), "{sql}");
                }
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    #[test]
    fn transaction_scoped_and_unrelated_statements() {
        assert_eq!(classify("SET LOCAL x = 1"), Some(StateOp::Nothing));
        assert_eq!(
            classify("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            Some(StateOp::Nothing)
        );
        assert_eq!(classify("SELECT 1"), None);
        assert_eq!(classify("SET x = 1; SET y = 2"), None);
        assert_eq!(classify("UPDATE t SET x = 1"), None);
    }

    #[test]
    fn listen_and_prepared_statements_round_trip() {
        let mut state = SessionState::default();
        for sql in [
            "SET a = 1",
            "SET a = 2",
            "LISTEN Chan",
            "LISTEN \"Other\"",
            "UNLISTEN \"Other\"",
        ] {
            state.apply(classify(sql).expect(sql));
        }
        assert_eq!(
            state.restore_sql().as_deref(),
            Some("SET a = 2; LISTEN Chan")
        );
        assert!(state.remember_prepared("s1".into(), Bytes::from_static(b"P...")));
        assert_eq!(state.parse_messages().count(), 1);
        state.apply(classify("DEALLOCATE s1").expect("deallocate"));
        assert_eq!(state.parse_messages().count(), 0);
        state.apply(classify("DISCARD ALL").expect("discard"));
        assert_eq!(state.restore_sql(), None);
    }

    #[test]
    fn prepared_statements_are_capped() {
        let mut state = SessionState::default();
        let big = Bytes::from(vec![0u8; MAX_PREPARED_BYTES / 2 + 1]);
        assert!(state.remember_prepared("a".into(), big.clone()));
        assert!(!state.remember_prepared("b".into(), big.clone()));
        assert!(
            state.remember_prepared("a".into(), big),
            "replacing a statement frees its bytes"
        );
    }
}
