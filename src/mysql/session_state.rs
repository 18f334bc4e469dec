//! The MySQL session state Suture can rebuild on a new backend (DESIGN §4), learned from what
//! the backend itself reports in its OK packets (session tracking): the system variables the
//! session assigned, the current schema, and whether multi-statements were switched with
//! COM_SET_OPTION. A state change that no tracked variable or schema explains (user
//! variables, temporary tables, SQL-level prepared statements, locks) taints the session; so
//! does a change of the tracking settings themselves, or tracking Suture cannot read.
//!
//! The SQL that rebuilds the state ([`SessionState::restore_sql`]) quotes every value so it
//! means the same with and without `NO_BACKSLASH_ESCAPES` and `ANSI_QUOTES`.

use std::collections::BTreeMap;

use suture_protocol::mysql::{parse_lenenc_str, session_changes, track, SessionChange};
use suture_protocol::ProtocolError;

/// Why session tracking left the session tainted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Taint {
    /// `SESSION_TRACK_STATE_CHANGE` said the state changed and no variable or schema record
    /// in the same OK packet says how: a user variable, a temporary table, a prepared
    /// statement or a lock.
    #[error("the session state changed in a way no tracked variable or schema explains")]
    UnexplainedChange,
    /// A `session_track_*` variable changed: Suture can no longer follow the state.
    #[error("session tracking setting {0} changed")]
    TrackingChanged(String),
    /// A variable name, value or schema that is not UTF-8 (it could not be restored as sent).
    #[error("session tracking carries text that is not UTF-8")]
    NotUtf8,
    /// The session state block of an OK packet is malformed.
    #[error("malformed session tracking: {0}")]
    Malformed(#[source] ProtocolError),
}

impl Taint {
    /// A fixed, low-cardinality label for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Taint::UnexplainedChange => "unexplained_state_change",
            Taint::TrackingChanged(_) => "tracking_changed",
            Taint::NotUtf8 => "not_utf8",
            Taint::Malformed(_) => "malformed_tracking",
        }
    }
}

/// Variables that are never set when restoring: the tracking settings (Suture's own), values
/// that apply to the next statement only, and the ones the schema decides (`USE` sets them).
const NOT_RESTORED: &[&str] = &[
    "character_set_database",
    "collation_database",
    "identity",
    "insert_id",
    "last_insert_id",
    "rand_seed1",
    "rand_seed2",
];

/// Variables whose value may be NULL (reported as an empty value), which is not a string.
const NULLABLE: &[&str] = &["character_set_results"];

/// Variables set together: a new `character_set_connection` resets `collation_connection`,
/// so when either is restored both are.
const SET_TOGETHER: [&str; 2] = ["character_set_connection", "collation_connection"];

/// What the backend told about one client session's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SessionState {
    /// System variables the session assigned, by lower-case name, with the value as the
    /// server reported it.
    variables: BTreeMap<String, String>,
    schema: Option<String>,
    /// Set by COM_SET_OPTION; `None` while the login's capability flags decide.
    multi_statements: Option<bool>,
    tainted: bool,
}

impl SessionState {
    /// The state right after login into `schema`.
    #[cfg(test)]
    pub(crate) fn new(schema: Option<String>) -> SessionState {
        SessionState {
            schema: schema.filter(|s| !s.is_empty()),
            ..SessionState::default()
        }
    }

    /// Applies the session state block of an OK packet (its `session_state` bytes).
    /// Variable and schema records are kept; GTIDs and transaction records are ignored. Taints
    /// the session (and says why) when the block is malformed or not UTF-8, when a
    /// `session_track_*` variable changed, or when a state change record ("1") comes without
    /// any variable or schema record explaining it. The records that could be read are
    /// applied either way. `collation` is the one a `SET NAMES x COLLATE y` chose (servers
    /// report its character set only).
    pub(crate) fn apply_tracking(
        &mut self,
        state_bytes: &[u8],
        collation: Option<&str>,
    ) -> Result<(), Taint> {
        let mut explained = false;
        let mut changed = false;
        let mut taint = None;
        let mut rest = state_bytes;
        while let Some((&kind, after_kind)) = rest.split_first() {
            let (data, used) = match parse_lenenc_str(after_kind) {
                Ok(record) => record,
                Err(e) => {
                    taint = Some(Taint::Malformed(e));
                    break;
                }
            };
            let record = &rest[..1 + used];
            rest = &after_kind[used..];
            if kind == track::STATE_CHANGE {
                // MySQL and MariaDB send the flag as the record's data itself (`02 01 31`);
                // the layout with an inner length (`02 02 01 31`) is accepted too.
                changed |= data == b"1" || data == b"\x011";
                continue;
            }
            match self.apply_record(record) {
                Ok(true) => explained = true,
                Ok(false) => {}
                Err(t) => {
                    explained = true;
                    taint.get_or_insert(t);
                }
            }
        }
        if changed && !explained {
            taint.get_or_insert(Taint::UnexplainedChange);
        }
        self.imply_collation(state_bytes, collation);
        match taint {
            Some(t) => {
                self.tainted = true;
                Err(t)
            }
            None => Ok(()),
        }
    }

    /// Applies one record (other than a state change); true when it is a variable or schema
    /// record, which explains a state change.
    fn apply_record(&mut self, record: &[u8]) -> Result<bool, Taint> {
        let mut explains = false;
        for change in session_changes(record) {
            match change.map_err(Taint::Malformed)? {
                SessionChange::SystemVariable { name, value } => {
                    explains = true;
                    self.assign(name, value)?;
                }
                SessionChange::Schema(schema) => {
                    explains = true;
                    let schema = std::str::from_utf8(schema).map_err(|_| Taint::NotUtf8)?;
                    self.set_schema(Some(schema.to_owned()));
                }
                _ => {}
            }
        }
        Ok(explains)
    }

    /// A new `character_set_connection` resets `collation_connection`, and MariaDB reports
    /// the character set of `SET NAMES x [COLLATE y]` without the collation: an earlier
    /// collation no longer holds. The one `collation` the statement chose is recorded;
    /// without one, setting the character set alone restores the default.
    fn imply_collation(&mut self, state_bytes: &[u8], chosen: Option<&str>) {
        let mut charset = false;
        let mut collation = false;
        for change in session_changes(state_bytes).flatten() {
            if let SessionChange::SystemVariable { name, .. } = change {
                charset |= name.eq_ignore_ascii_case(SET_TOGETHER[0].as_bytes());
                collation |= name.eq_ignore_ascii_case(SET_TOGETHER[1].as_bytes());
            }
        }
        if charset && !collation {
            match chosen {
                Some(c) => self
                    .variables
                    .insert(SET_TOGETHER[1].to_owned(), c.to_owned()),
                None => self.variables.remove(SET_TOGETHER[1]),
            };
        }
    }

    /// Records one tracked variable assignment.
    fn assign(&mut self, name: &[u8], value: &[u8]) -> Result<(), Taint> {
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            return Err(Taint::NotUtf8);
        };
        let name = name.to_ascii_lowercase();
        let tracking = name.starts_with("session_track_");
        self.variables.insert(name.clone(), value.to_owned());
        if tracking {
            return Err(Taint::TrackingChanged(name));
        }
        Ok(())
    }

    /// COM_INIT_DB succeeded (or a schema record arrived); an empty name is no schema.
    pub(crate) fn set_schema(&mut self, schema: Option<String>) {
        self.schema = schema.filter(|s| !s.is_empty());
    }

    /// COM_SET_OPTION switched multi-statements on or off.
    pub(crate) fn set_multi_statements(&mut self, on: bool) {
        self.multi_statements = Some(on);
    }

    /// Marks the session tainted for a reason found elsewhere (the statement classifier).
    pub(crate) fn taint(&mut self) {
        self.tainted = true;
    }

    /// COM_RESET_CONNECTION or COM_CHANGE_USER succeeded: variables go back to the login's,
    /// the unrestorable state is gone, and the schema is `schema`. The multi-statements
    /// option is a property of the connection, not of the session, and stays.
    pub(crate) fn reset(&mut self, schema: Option<String>) {
        self.variables.clear();
        self.tainted = false;
        self.set_schema(schema);
    }

    /// The statements that rebuild this state on a fresh backend logged in as the same user
    /// with the same capability flags, whose variables right after login were `baseline`
    /// (lower-case names): one `SET SESSION ...` of every variable whose value differs, then
    /// `USE` of the schema. Multi-statements are restored with COM_SET_OPTION (see
    /// [`SessionState::multi_statements`]), not SQL.
    pub(crate) fn restore_sql(&self, baseline: &BTreeMap<String, String>) -> Vec<String> {
        let differs =
            |name: &str, value: &str| baseline.get(name).map(String::as_str) != Some(value);
        let together = SET_TOGETHER
            .iter()
            .any(|name| self.variables.get(*name).is_some_and(|v| differs(name, v)));
        let assignments: Vec<String> = self
            .variables
            .iter()
            .filter(|(name, _)| restorable(name))
            .filter(|(name, value)| {
                differs(name, value) || together && SET_TOGETHER.contains(&name.as_str())
            })
            .map(|(name, value)| format!("{} = {}", variable_name(name), value_sql(name, value)))
            .collect();
        let mut sql = Vec::new();
        if !assignments.is_empty() {
            sql.push(format!("SET SESSION {}", assignments.join(", ")));
        }
        if let Some(schema) = &self.schema {
            sql.push(format!("USE {}", quote_identifier(schema)));
        }
        sql
    }

    pub(crate) fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The multi-statements option set with COM_SET_OPTION; `None` if never set.
    pub(crate) fn multi_statements(&self) -> Option<bool> {
        self.multi_statements
    }

    pub(crate) fn tainted(&self) -> bool {
        self.tainted
    }

    /// A tracked variable's value as the server reported it (lower-case name).
    pub(crate) fn variable(&self, name: &str) -> Option<&str> {
        self.variables.get(name).map(String::as_str)
    }
}

/// Whether a tracked variable is set again when restoring.
fn restorable(name: &str) -> bool {
    !name.starts_with("session_track_") && !NOT_RESTORED.contains(&name)
}

/// A variable name for SET: each dot-separated part (`validate_password.length`) quoted.
fn variable_name(name: &str) -> String {
    name.split('.')
        .map(quote_identifier)
        .collect::<Vec<_>>()
        .join(".")
}

/// A value as the server reported it, as SQL: numbers bare (numeric variables refuse
/// strings), NULL for an empty nullable one, everything else a string literal (booleans and
/// enums accept their names as strings).
fn value_sql(name: &str, value: &str) -> String {
    if NULLABLE.contains(&name) && (value.is_empty() || value.eq_ignore_ascii_case("NULL")) {
        "NULL".to_owned()
    } else if is_number(value) {
        value.to_owned()
    } else {
        quote_string(value)
    }
}

/// `-?digits[.digits]`, as the server reports numeric variables.
fn is_number(value: &str) -> bool {
    let unsigned = value.strip_prefix('-').unwrap_or(value);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (unsigned, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && fraction.is_none_or(digits)
}

/// An identifier in backticks, backticks inside doubled.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A string literal that means the same with and without `NO_BACKSLASH_ESCAPES` (and
/// `ANSI_QUOTES`): single quotes, quotes inside doubled, and each backslash written as
/// `CHAR(92 USING utf8mb4)` joined with CONCAT (no spelling of a backslash inside a literal
/// is read the same in both modes).
pub(crate) fn quote_string(value: &str) -> String {
    let literal = |part: &str| format!("'{}'", part.replace('\'', "''"));
    if !value.contains('\\') {
        return literal(value);
    }
    let parts: Vec<String> = value.split('\\').map(literal).collect();
    format!("CONCAT({})", parts.join(", CHAR(92 USING utf8mb4), "))
}

#[cfg(test)]
#[path = "session_state_tests.rs"]
mod tests;
