//! What the expressions and clauses inside a MySQL/MariaDB statement do, wherever they
//! appear: function calls judged by the function's name (the builtins that are pure, the ones
//! that wait on purpose, take a lock or depend on the connection they run on; anything not
//! listed, a stored function, a UDF, a sequence, may change data), locking reads, INTO, and
//! user variable assignments.

use super::lexer::{Token, TokenKind};
use super::statement::Facts;

/// What the expressions and clauses of a statement do, wherever they appear.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Effects {
    /// A call of a function that is not a known pure builtin.
    impure: bool,
    /// A call that may change data (a stored function, NEXTVAL, an unknown UDF).
    pub(super) may_write_data: bool,
    /// A locking read, INTO OUTFILE / DUMPFILE, or INTO a variable.
    acts: bool,
    /// A call that waits on purpose, or a locking read.
    pub(super) waits: bool,
    /// State Suture cannot restore: a user variable assigned, a named lock taken.
    pub(super) taints: bool,
}

impl Effects {
    /// The effects of every expression and clause among `tokens`.
    pub(super) fn of(tokens: &[Token<'_>]) -> Effects {
        let mut e = Effects::default();
        for (i, t) in tokens.iter().enumerate() {
            let next = tokens.get(i + 1);
            let after_next = tokens.get(i + 2);
            match t.kind {
                TokenKind::Word
                    if next.is_some_and(|n| n.is_punct(b'(')) && !names_columns(tokens, i) =>
                {
                    let qualified = i > 0 && tokens[i - 1].is_punct(b'.');
                    let no_arguments = after_next.is_some_and(|n| n.is_punct(b')'));
                    e.call(call_kind(t.text, qualified, no_arguments));
                }
                TokenKind::Word
                    if t.is_any(&["NEXT", "PREVIOUS"]) && next.is_some_and(|n| n.is("VALUE")) =>
                {
                    e.call(Call::WritesData)
                }
                TokenKind::Word
                    if t.is("FOR") && next.is_some_and(|n| n.is_any(&["UPDATE", "SHARE"]))
                        || t.is("LOCK") && next.is_some_and(|n| n.is("IN")) =>
                {
                    e.acts = true;
                    e.waits = true;
                }
                TokenKind::Word if t.is("INTO") => {
                    e.acts = true;
                    e.taints |= tokens[i + 1..]
                        .iter()
                        .take_while(|n| n.kind == TokenKind::UserVar || n.is_punct(b','))
                        .any(|n| n.kind == TokenKind::UserVar);
                }
                TokenKind::UserVar if next.is_some_and(|n| n.kind == TokenKind::Assign) => {
                    e.acts = true;
                    e.taints = true;
                }
                _ => {}
            }
        }
        e
    }

    fn call(&mut self, call: Call) {
        match call {
            Call::Pure => {}
            Call::SessionBound => self.impure = true,
            Call::Waits => {
                self.impure = true;
                self.waits = true;
            }
            Call::Locks => {
                self.impure = true;
                self.waits = true;
                self.taints = true;
            }
            Call::SetsSessionValue => {
                self.impure = true;
                self.taints = true;
            }
            Call::WritesData => {
                self.impure = true;
                self.may_write_data = true;
            }
        }
    }

    /// Whether the statement does something beyond reading.
    pub(super) fn acts(&self) -> bool {
        self.impure || self.acts || self.taints
    }

    pub(super) fn add_to(self, facts: Facts) -> Facts {
        Facts {
            waits: facts.waits || self.waits,
            taints: facts.taints || self.taints,
            ..facts
        }
    }
}

/// Whether the word at `i`, followed by `(`, names a column list rather than calling a
/// function: a derived table's (`AS dt (a, b)`) or a common table expression's
/// (`WITH c (n) AS (...)`).
fn names_columns(tokens: &[Token<'_>], i: usize) -> bool {
    if i > 0 && tokens[i - 1].is("AS") {
        return true;
    }
    let mut depth = 0usize;
    for (j, t) in tokens.iter().enumerate().skip(i + 1) {
        if t.is_punct(b'(') {
            depth += 1;
        } else if t.is_punct(b')') {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return tokens.get(j + 1).is_some_and(|n| n.is("AS"));
            }
        }
    }
    false
}

/// What calling a function does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    /// A builtin without side effects whose result does not depend on the connection.
    Pure,
    /// A builtin whose result depends on the connection it runs on (LAST_INSERT_ID(),
    /// FOUND_ROWS(), CONNECTION_ID(), ...), or that changes server state that is not data
    /// (RELEASE_LOCK): running it on another backend is not the same.
    SessionBound,
    /// Waits on purpose.
    Waits,
    /// Takes a lock the session holds after the statement (GET_LOCK).
    Locks,
    /// Sets a value the session keeps (LAST_INSERT_ID(expr)).
    SetsSessionValue,
    /// Anything else: a stored function, a sequence, a UDF; it may change data.
    WritesData,
}

fn call_kind(name: &[u8], qualified: bool, no_arguments: bool) -> Call {
    if qualified {
        return Call::WritesData;
    }
    if listed(PURE_FUNCTIONS, name) || listed(KEYWORDS_BEFORE_PARENTHESIS, name) {
        return Call::Pure;
    }
    if name.eq_ignore_ascii_case(b"GET_LOCK") {
        return Call::Locks;
    }
    if name.eq_ignore_ascii_case(b"LAST_INSERT_ID") && !no_arguments {
        return Call::SetsSessionValue;
    }
    if listed(WAITING_FUNCTIONS, name) {
        return Call::Waits;
    }
    if listed(SESSION_BOUND_FUNCTIONS, name) {
        return Call::SessionBound;
    }
    Call::WritesData
}

/// Whether `name` (any case) is in `list` (upper case, sorted).
fn listed(list: &[&str], name: &[u8]) -> bool {
    list.binary_search_by(|probe| {
        probe
            .bytes()
            .cmp(name.iter().map(|b| b.to_ascii_uppercase()))
    })
    .is_ok()
}

/// Builtins without side effects whose result does not depend on the connection. Sorted.
const PURE_FUNCTIONS: &[&str] = &[
    "ABS",
    "ACOS",
    "ADDDATE",
    "ADDTIME",
    "AES_DECRYPT",
    "AES_ENCRYPT",
    "ANY_VALUE",
    "ASCII",
    "ASIN",
    "ATAN",
    "ATAN2",
    "AVG",
    "BIN",
    "BIN_TO_UUID",
    "BIT_AND",
    "BIT_COUNT",
    "BIT_LENGTH",
    "BIT_OR",
    "BIT_XOR",
    "CAST",
    "CEIL",
    "CEILING",
    "CHAR",
    "CHARACTER_LENGTH",
    "CHARSET",
    "CHAR_LENGTH",
    "COALESCE",
    "COERCIBILITY",
    "COLLATION",
    "COMPRESS",
    "CONCAT",
    "CONCAT_WS",
    "CONV",
    "CONVERT",
    "CONVERT_TZ",
    "COS",
    "COT",
    "COUNT",
    "CRC32",
    "CUME_DIST",
    "CURDATE",
    "CURRENT_DATE",
    "CURRENT_ROLE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "CURRENT_USER",
    "CURTIME",
    "DATABASE",
    "DATE",
    "DATEDIFF",
    "DATE_ADD",
    "DATE_FORMAT",
    "DATE_SUB",
    "DAY",
    "DAYNAME",
    "DAYOFMONTH",
    "DAYOFWEEK",
    "DAYOFYEAR",
    "DEFAULT",
    "DEGREES",
    "DENSE_RANK",
    "ELT",
    "EXP",
    "EXPORT_SET",
    "EXTRACT",
    "FIELD",
    "FIND_IN_SET",
    "FIRST_VALUE",
    "FLOOR",
    "FORMAT",
    "FROM_BASE64",
    "FROM_DAYS",
    "FROM_UNIXTIME",
    "GET_FORMAT",
    "GREATEST",
    "GROUPING",
    "GROUP_CONCAT",
    "HEX",
    "HOUR",
    "IF",
    "IFNULL",
    "INET6_ATON",
    "INET6_NTOA",
    "INET_ATON",
    "INET_NTOA",
    "INSERT",
    "INSTR",
    "INTERVAL",
    "ISNULL",
    "IS_FREE_LOCK",
    "IS_IPV4",
    "IS_IPV6",
    "IS_USED_LOCK",
    "IS_UUID",
    "JSON_ARRAY",
    "JSON_ARRAYAGG",
    "JSON_ARRAY_APPEND",
    "JSON_ARRAY_INSERT",
    "JSON_CONTAINS",
    "JSON_CONTAINS_PATH",
    "JSON_DEPTH",
    "JSON_EXTRACT",
    "JSON_INSERT",
    "JSON_KEYS",
    "JSON_LENGTH",
    "JSON_MERGE",
    "JSON_MERGE_PATCH",
    "JSON_MERGE_PRESERVE",
    "JSON_OBJECT",
    "JSON_OBJECTAGG",
    "JSON_OVERLAPS",
    "JSON_PRETTY",
    "JSON_QUOTE",
    "JSON_REMOVE",
    "JSON_REPLACE",
    "JSON_SEARCH",
    "JSON_SET",
    "JSON_TABLE",
    "JSON_TYPE",
    "JSON_UNQUOTE",
    "JSON_VALID",
    "JSON_VALUE",
    "LAG",
    "LAST_DAY",
    "LAST_VALUE",
    "LCASE",
    "LEAD",
    "LEAST",
    "LEFT",
    "LENGTH",
    "LN",
    "LOCALTIME",
    "LOCALTIMESTAMP",
    "LOCATE",
    "LOG",
    "LOG10",
    "LOG2",
    "LOWER",
    "LPAD",
    "LTRIM",
    "MAKEDATE",
    "MAKETIME",
    "MAKE_SET",
    "MATCH",
    "MAX",
    "MD5",
    "MICROSECOND",
    "MID",
    "MIN",
    "MINUTE",
    "MOD",
    "MONTH",
    "MONTHNAME",
    "NOW",
    "NTH_VALUE",
    "NTILE",
    "NULLIF",
    "OCT",
    "OCTET_LENGTH",
    "ORD",
    "PERCENT_RANK",
    "PERIOD_ADD",
    "PERIOD_DIFF",
    "PI",
    "POSITION",
    "POW",
    "POWER",
    "QUARTER",
    "QUOTE",
    "RADIANS",
    "RAND",
    "RANK",
    "REGEXP_INSTR",
    "REGEXP_LIKE",
    "REGEXP_REPLACE",
    "REGEXP_SUBSTR",
    "REPEAT",
    "REPLACE",
    "REVERSE",
    "RIGHT",
    "ROUND",
    "ROW_NUMBER",
    "RPAD",
    "RTRIM",
    "SCHEMA",
    "SECOND",
    "SEC_TO_TIME",
    "SESSION_USER",
    "SHA",
    "SHA1",
    "SHA2",
    "SIGN",
    "SIN",
    "SOUNDEX",
    "SPACE",
    "SQRT",
    "STD",
    "STDDEV",
    "STDDEV_POP",
    "STDDEV_SAMP",
    "STRCMP",
    "STR_TO_DATE",
    "SUBDATE",
    "SUBSTR",
    "SUBSTRING",
    "SUBSTRING_INDEX",
    "SUBTIME",
    "SUM",
    "SYSDATE",
    "SYSTEM_USER",
    "TAN",
    "TIME",
    "TIMEDIFF",
    "TIMESTAMP",
    "TIMESTAMPADD",
    "TIMESTAMPDIFF",
    "TIME_FORMAT",
    "TIME_TO_SEC",
    "TO_BASE64",
    "TO_DAYS",
    "TO_SECONDS",
    "TRIM",
    "TRUNCATE",
    "UCASE",
    "UNCOMPRESS",
    "UNCOMPRESSED_LENGTH",
    "UNHEX",
    "UNIX_TIMESTAMP",
    "UPPER",
    "USER",
    "UTC_DATE",
    "UTC_TIME",
    "UTC_TIMESTAMP",
    "UUID",
    "UUID_SHORT",
    "UUID_TO_BIN",
    "VARIANCE",
    "VAR_POP",
    "VAR_SAMP",
    "VERSION",
    "WEEK",
    "WEEKDAY",
    "WEEKOFYEAR",
    "WEIGHT_STRING",
    "YEAR",
    "YEARWEEK",
];

/// Keywords and type names that may stand before `(` without being a call. Sorted.
const KEYWORDS_BEFORE_PARENTHESIS: &[&str] = &[
    "AGAINST",
    "ALL",
    "AND",
    "ANY",
    "AS",
    "BETWEEN",
    "BINARY",
    "BY",
    "CASE",
    "COLUMNS",
    "DATETIME",
    "DECIMAL",
    "DISTINCT",
    "DIV",
    "DOUBLE",
    "ELSE",
    "ESCAPE",
    "EXCEPT",
    "EXISTS",
    "FLOAT",
    "FROM",
    "GROUP",
    "HAVING",
    "IN",
    "INDEX",
    "INT",
    "INTEGER",
    "INTERSECT",
    "INTO",
    "IS",
    "JOIN",
    "KEY",
    "LATERAL",
    "LIKE",
    "LIMIT",
    "MEMBER",
    "NCHAR",
    "NOT",
    "NUMERIC",
    "OF",
    "OFFSET",
    "ON",
    "OR",
    "ORDER",
    "OVER",
    "PARTITION",
    "RECURSIVE",
    "REGEXP",
    "RLIKE",
    "ROW",
    "SELECT",
    "SEPARATOR",
    "SIGNED",
    "SOME",
    "STRAIGHT_JOIN",
    "THEN",
    "UNION",
    "UNSIGNED",
    "USING",
    "VALUES",
    "VARCHAR",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
    "XOR",
];

/// Builtins that wait on purpose (GET_LOCK is judged on its own). Sorted.
const WAITING_FUNCTIONS: &[&str] = &[
    "BENCHMARK",
    "MASTER_GTID_WAIT",
    "MASTER_POS_WAIT",
    "SLEEP",
    "SOURCE_POS_WAIT",
    "WAIT_FOR_EXECUTED_GTID_SET",
    "WAIT_UNTIL_SQL_THREAD_AFTER_GTIDS",
];

/// Builtins whose result depends on the connection, or that change server state that is not
/// data. Sorted.
const SESSION_BOUND_FUNCTIONS: &[&str] = &[
    "CONNECTION_ID",
    "FOUND_ROWS",
    "LAST_INSERT_ID",
    "RELEASE_ALL_LOCKS",
    "RELEASE_LOCK",
    "ROW_COUNT",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_sorted_and_upper_case() {
        for list in [
            PURE_FUNCTIONS,
            KEYWORDS_BEFORE_PARENTHESIS,
            WAITING_FUNCTIONS,
            SESSION_BOUND_FUNCTIONS,
        ] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{list:?}");
            assert!(list
                .iter()
                .all(|name| name.bytes().all(|b| !b.is_ascii_lowercase())));
        }
        assert!(listed(PURE_FUNCTIONS, b"concat"));
        assert!(listed(PURE_FUNCTIONS, b"Json_Extract"));
        assert!(!listed(PURE_FUNCTIONS, b"CONCA"));
        assert!(!listed(PURE_FUNCTIONS, b"CONCATX"));
    }

    #[test]
    fn calls() {
        assert_eq!(call_kind(b"now", false, true), Call::Pure);
        assert_eq!(call_kind(b"in", false, false), Call::Pure);
        assert_eq!(call_kind(b"concat", true, false), Call::WritesData);
        assert_eq!(call_kind(b"my_func", false, false), Call::WritesData);
        assert_eq!(call_kind(b"get_lock", false, false), Call::Locks);
        assert_eq!(call_kind(b"sleep", false, false), Call::Waits);
        assert_eq!(
            call_kind(b"last_insert_id", false, true),
            Call::SessionBound
        );
        assert_eq!(
            call_kind(b"last_insert_id", false, false),
            Call::SetsSessionValue
        );
    }
}
