//! Tests of the tracked session state: session state blocks as MariaDB 10.11 sends them
//! (recorded from a private server with `session_track_system_variables = '*'`,
//! `session_track_state_change = ON`, `session_track_schema = ON`), taints, and the SQL that
//! restores the state.

use std::collections::BTreeMap;

use suture_protocol::mysql::{put_session_change, SessionChange};

use super::*;

/// `SET NAMES utf8mb4`, as MariaDB 10.11 reports it.
const SET_NAMES: &[u8] = b"\x00!\x18character_set_connection\x07utf8mb4\
\x00\x1d\x14character_set_client\x07utf8mb4\
\x00\x1e\x15character_set_results\x07utf8mb4\x02\x011";
/// `SET character_set_results = NULL`.
const RESULTS_NULL: &[u8] = b"\x00\x17\x15character_set_results\x00\x02\x011";
/// `SET @x = 1` (also `CREATE TEMPORARY TABLE`, `PREPARE p FROM ...`): only "changed".
const USER_VARIABLE: &[u8] = b"\x02\x011";
/// `USE app`.
const USE_APP: &[u8] = b"\x01\x04\x03app\x02\x011";
/// `SET autocommit=0`.
const AUTOCOMMIT_OFF: &[u8] = b"\x00\x0f\nautocommit\x03OFF\x02\x011";
/// `SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED`.
const ISOLATION: &[u8] = b"\x00\x1c\x0ctx_isolation\x0eREAD-COMMITTED\x02\x011";

fn block(changes: &[SessionChange<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for change in changes {
        put_session_change(change, &mut out);
    }
    out
}

fn var<'a>(name: &'a str, value: &'a str) -> SessionChange<'a> {
    SessionChange::SystemVariable {
        name: name.as_bytes(),
        value: value.as_bytes(),
    }
}

fn baseline(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn variables_and_schema_are_recorded() {
    let mut state = SessionState::new(None);
    for bytes in [SET_NAMES, AUTOCOMMIT_OFF, ISOLATION, USE_APP] {
        assert_eq!(state.apply_tracking(bytes, None), Ok(()));
    }
    assert_eq!(state.variable("character_set_client"), Some("utf8mb4"));
    assert_eq!(state.variable("autocommit"), Some("OFF"));
    assert_eq!(state.variable("tx_isolation"), Some("READ-COMMITTED"));
    assert_eq!(state.schema(), Some("app"));
    assert!(!state.tainted());
    // A later value replaces the earlier one; names are kept in lower case.
    state
        .apply_tracking(&block(&[var("AutoCommit", "ON")]), None)
        .expect("plain variable");
    assert_eq!(state.variable("autocommit"), Some("ON"));
}

#[test]
fn unexplained_state_changes_taint() {
    let mut state = SessionState::new(Some("app".into()));
    assert_eq!(
        state.apply_tracking(USER_VARIABLE, None),
        Err(Taint::UnexplainedChange)
    );
    assert!(state.tainted());
    // Tainted stays tainted until a reset, even when later blocks are fine.
    assert_eq!(state.apply_tracking(SET_NAMES, None), Ok(()));
    assert!(state.tainted());
    state.reset(Some("app".into()));
    assert!(!state.tainted());
    assert_eq!(state.variable("character_set_client"), None);
    // The flag with an inner length, as `put_session_change` writes it, counts too.
    let mut state = SessionState::new(None);
    let bytes = block(&[SessionChange::StateChange(b"1")]);
    assert_eq!(
        state.apply_tracking(&bytes, None),
        Err(Taint::UnexplainedChange)
    );
    // A schema change explains the flag.
    assert_eq!(
        SessionState::new(None).apply_tracking(USE_APP, None),
        Ok(())
    );
}

#[test]
fn other_records_are_ignored() {
    let mut state = SessionState::new(None);
    let bytes = block(&[
        SessionChange::Gtids {
            encoding: 0,
            gtids: b"0-1-5",
        },
        SessionChange::TransactionState(b"T_______"),
        SessionChange::TransactionCharacteristics(b"START TRANSACTION;"),
        SessionChange::Other {
            kind: 9,
            data: b"\x01x",
        },
        SessionChange::StateChange(b"0"),
    ]);
    assert_eq!(state.apply_tracking(&bytes, None), Ok(()));
    assert_eq!(state.apply_tracking(b"", None), Ok(()));
    assert_eq!(state, SessionState::new(None));
}

#[test]
fn bad_tracking_taints() {
    let mut state = SessionState::new(None);
    assert!(matches!(
        state.apply_tracking(b"\x00\x05\x09abc", None),
        Err(Taint::Malformed(_))
    ));
    assert!(state.tainted());

    let mut state = SessionState::new(None);
    let bytes = block(&[SessionChange::SystemVariable {
        name: b"lc_messages",
        value: b"\xff\xfe",
    }]);
    assert_eq!(state.apply_tracking(&bytes, None), Err(Taint::NotUtf8));
    let mut state = SessionState::new(None);
    let bytes = block(&[SessionChange::Schema(b"\xc3")]);
    assert_eq!(state.apply_tracking(&bytes, None), Err(Taint::NotUtf8));

    let mut state = SessionState::new(None);
    let bytes = block(&[var("session_track_state_change", "OFF")]);
    assert_eq!(
        state.apply_tracking(&bytes, None),
        Err(Taint::TrackingChanged("session_track_state_change".into()))
    );
    // The labels are fixed strings.
    assert_eq!(Taint::UnexplainedChange.label(), "unexplained_state_change");
    assert_eq!(Taint::NotUtf8.label(), "not_utf8");
}

#[test]
fn schema_changes() {
    let mut state = SessionState::new(Some(String::new()));
    assert_eq!(state.schema(), None);
    state.set_schema(Some("db1".into()));
    assert_eq!(state.schema(), Some("db1"));
    // A dropped current schema is reported as an empty one.
    state
        .apply_tracking(&block(&[SessionChange::Schema(b"")]), None)
        .expect("empty schema");
    assert_eq!(state.schema(), None);
    state.reset(Some("db2".into()));
    assert_eq!(state.schema(), Some("db2"));
}

#[test]
fn multi_statements_option() {
    let mut state = SessionState::new(None);
    assert_eq!(state.multi_statements(), None);
    state.set_multi_statements(false);
    assert_eq!(state.multi_statements(), Some(false));
    state.reset(None);
    assert_eq!(state.multi_statements(), Some(false), "a connection option");
}

#[test]
fn restore_sets_what_differs_from_the_baseline() {
    let mut state = SessionState::new(Some("app".into()));
    let bytes = block(&[
        var("sql_mode", "STRICT_TRANS_TABLES,NO_ZERO_DATE"),
        var("time_zone", "+02:00"),
        var("autocommit", "OFF"),
        var("wait_timeout", "28800"),
        var("long_query_time", "10.000000"),
        var("auto_increment_offset", "-1"),
        var("character_set_client", "utf8mb4"),
        var("lc_time_names", "de_DE"),
    ]);
    state.apply_tracking(&bytes, None).expect("variables");
    state
        .apply_tracking(RESULTS_NULL, None)
        .expect("NULL results");
    let login = baseline(&[
        ("character_set_client", "utf8mb4"),
        ("time_zone", "SYSTEM"),
        ("lc_time_names", "de_DE"),
    ]);
    assert_eq!(
        state.restore_sql(&login),
        [
            "SET SESSION `auto_increment_offset` = -1, `autocommit` = 'OFF', \
             `character_set_results` = NULL, `long_query_time` = 10.000000, \
             `sql_mode` = 'STRICT_TRANS_TABLES,NO_ZERO_DATE', `time_zone` = '+02:00', \
             `wait_timeout` = 28800",
            "USE `app`",
        ]
    );
    assert!(SessionState::new(None).restore_sql(&login).is_empty());
    assert_eq!(
        SessionState::new(Some("we`ird".into())).restore_sql(&login),
        ["USE `we``ird`"]
    );
}

#[test]
fn restore_keeps_connection_charset_and_collation_together() {
    let mut state = SessionState::new(None);
    state
        .apply_tracking(
            &block(&[
                var("collation_connection", "utf8mb4_unicode_ci"),
                var("character_set_connection", "utf8mb4"),
            ]),
            None,
        )
        .expect("charset");
    // The collation is the login's, but setting the character set would reset it.
    let login = baseline(&[
        ("character_set_connection", "latin1"),
        ("collation_connection", "utf8mb4_unicode_ci"),
    ]);
    assert_eq!(
        state.restore_sql(&login),
        ["SET SESSION `character_set_connection` = 'utf8mb4', \
          `collation_connection` = 'utf8mb4_unicode_ci'"]
    );
}

#[test]
fn restore_leaves_out_one_shot_derived_and_tracking_variables() {
    let mut state = SessionState::new(None);
    let _ = state.apply_tracking(
        &block(&[
            var("insert_id", "5"),
            var("last_insert_id", "7"),
            var("character_set_database", "latin1"),
            var("collation_database", "latin1_swedish_ci"),
            var("session_track_system_variables", ""),
            var("sql_mode", "ANSI_QUOTES"),
        ]),
        None,
    );
    assert_eq!(
        state.restore_sql(&BTreeMap::new()),
        ["SET SESSION `sql_mode` = 'ANSI_QUOTES'"]
    );
}

#[test]
fn quoting() {
    assert_eq!(quote_identifier("db"), "`db`");
    assert_eq!(quote_identifier("a`b"), "`a``b`");
    assert_eq!(quote_string("+02:00"), "'+02:00'");
    assert_eq!(quote_string("it's"), "'it''s'");
    assert_eq!(quote_string(""), "''");
    // The same string whether backslashes escape or not.
    assert_eq!(
        quote_string(r"a\b'c"),
        "CONCAT('a', CHAR(92 USING utf8mb4), 'b''c')"
    );
    assert_eq!(quote_string(r"\"), "CONCAT('', CHAR(92 USING utf8mb4), '')");
    assert_eq!(
        variable_name("validate_password.length"),
        "`validate_password`.`length`"
    );
    for (value, number) in [
        ("0", true),
        ("-12", true),
        ("10.000000", true),
        ("18446744073709551615", true),
        ("", false),
        ("-", false),
        ("1.", false),
        (".5", false),
        ("1e5", false),
        ("ON", false),
        ("+02:00", false),
    ] {
        assert_eq!(is_number(value), number, "{value}");
    }
}

#[test]
fn restore_sql_survives_the_lexer_in_every_mode() {
    use super::super::lexer::{statements, SqlMode};
    let mut state = SessionState::new(Some("app".into()));
    state
        .apply_tracking(
            &block(&[
                var("lc_time_names", r"en\US'; DROP TABLE t; --"),
                var("time_zone", "+02:00"),
            ]),
            None,
        )
        .expect("variables");
    for ansi_quotes in [false, true] {
        for no_backslash_escapes in [false, true] {
            let mode = SqlMode {
                ansi_quotes,
                no_backslash_escapes,
            };
            for sql in state.restore_sql(&BTreeMap::new()) {
                assert_eq!(statements(sql.as_bytes(), mode).len(), 1, "{sql} {mode:?}");
            }
        }
    }
}

#[test]
fn a_new_connection_charset_forgets_the_old_collation() {
    let mut state = SessionState::new(None);
    state
        .apply_tracking(
            &block(&[
                var("character_set_connection", "latin1"),
                var("collation_connection", "latin1_german1_ci"),
            ]),
            None,
        )
        .expect("explicit collation");
    // `SET NAMES utf8mb4`: MariaDB reports the character sets only.
    state.apply_tracking(SET_NAMES, None).expect("set names");
    assert_eq!(state.variable("collation_connection"), None);
    assert_eq!(
        state.restore_sql(&BTreeMap::new()),
        ["SET SESSION `character_set_client` = 'utf8mb4', \
          `character_set_connection` = 'utf8mb4', `character_set_results` = 'utf8mb4'"]
    );
}

#[test]
fn the_collation_set_names_chose_is_kept() {
    let mut state = SessionState::new(None);
    // `SET NAMES utf8mb4 COLLATE utf8mb4_bin`: reported like `SET NAMES utf8mb4`.
    state
        .apply_tracking(SET_NAMES, Some("utf8mb4_bin"))
        .expect("set names collate");
    assert_eq!(state.variable("collation_connection"), Some("utf8mb4_bin"));
    assert_eq!(
        state.restore_sql(&BTreeMap::new()),
        ["SET SESSION `character_set_client` = 'utf8mb4', \
          `character_set_connection` = 'utf8mb4', `character_set_results` = 'utf8mb4', \
          `collation_connection` = 'utf8mb4_bin'"]
    );
    // A reported collation wins over the statement's text.
    state
        .apply_tracking(
            &block(&[
                var("character_set_connection", "latin1"),
                var("collation_connection", "latin1_swedish_ci"),
            ]),
            Some("utf8mb4_bin"),
        )
        .expect("explicit collation");
    assert_eq!(
        state.variable("collation_connection"),
        Some("latin1_swedish_ci")
    );
}
