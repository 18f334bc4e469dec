//! Tests of the SQL tokenizer: comments, executable comments, quoting under each SQL mode,
//! variables, and statement splitting.

use super::*;

const DEFAULT: SqlMode = SqlMode {
    ansi_quotes: false,
    no_backslash_escapes: false,
};

fn kinds_and_texts(sql: &str, mode: SqlMode) -> Vec<(TokenKind, String)> {
    Lexer::new(sql.as_bytes(), mode)
        .map(|t| (t.kind, String::from_utf8_lossy(t.text).into_owned()))
        .collect()
}

fn texts(sql: &str) -> Vec<String> {
    kinds_and_texts(sql, DEFAULT)
        .into_iter()
        .map(|(_, t)| t)
        .collect()
}

fn statement_texts(sql: &str) -> Vec<String> {
    statements(sql.as_bytes(), DEFAULT)
        .iter()
        .map(|s| {
            s.iter()
                .map(|t| String::from_utf8_lossy(t.text).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn words_punctuation_and_operators() {
    assert_eq!(
        texts("SELECT a.b,1e5 FROM t WHERE x>=0x1F;"),
        ["SELECT", "a", ".", "b", ",", "1e5", "FROM", "t", "WHERE", "x", ">", "=", "0x1F", ";"]
    );
    assert_eq!(
        kinds_and_texts("SET @a:=1", DEFAULT),
        [
            (TokenKind::Word, "SET".into()),
            (TokenKind::UserVar, "@a".into()),
            (TokenKind::Assign, ":=".into()),
            (TokenKind::Word, "1".into()),
        ]
    );
    assert_eq!(texts("a : b"), ["a", ":", "b"]);
    assert_eq!(
        texts("é_x$1"),
        ["é_x$1"],
        "non-ASCII bytes are identifier bytes"
    );
}

#[test]
fn comments_are_skipped() {
    assert_eq!(
        texts("SELECT 1 -- INSERT\nFROM t"),
        ["SELECT", "1", "FROM", "t"]
    );
    assert_eq!(texts("SELECT 1 --\tx\n2"), ["SELECT", "1", "2"]);
    assert_eq!(texts("SELECT 1 --"), ["SELECT", "1"], "at the very end");
    assert_eq!(
        texts("SELECT 1--1"),
        ["SELECT", "1", "-", "-", "1"],
        "no space after --: two minus signs"
    );
    assert_eq!(texts("SELECT # DROP TABLE t\n1"), ["SELECT", "1"]);
    assert_eq!(texts("SELECT /* ; COMMIT */ 1"), ["SELECT", "1"]);
    assert_eq!(
        texts("SELECT /*+ NO_RANGE_OPTIMIZATION(t) */ 1"),
        ["SELECT", "1"]
    );
    assert_eq!(texts("SELECT 1 /* unterminated ; DROP"), ["SELECT", "1"]);
    assert_eq!(texts("/**/SELECT/***/1"), ["SELECT", "1"]);
}

#[test]
fn executable_comments_are_code() {
    assert_eq!(
        texts("/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE */;"),
        ["SET", "@OLD_SQL_MODE", "=", "@@SQL_MODE", ";"]
    );
    assert_eq!(texts("/*!SET x=1*/"), ["SET", "x", "=", "1"]);
    assert_eq!(
        texts("/*M!100100 SET STATEMENT x=1 FOR*/ SELECT 1"),
        ["SET", "STATEMENT", "x", "=", "1", "FOR", "SELECT", "1"]
    );
    assert_eq!(
        texts("CREATE /*!32312 IF NOT EXISTS*/ db /*!40100 DEFAULT CHARACTER SET utf8mb4 */"),
        [
            "CREATE",
            "IF",
            "NOT",
            "EXISTS",
            "db",
            "DEFAULT",
            "CHARACTER",
            "SET",
            "utf8mb4"
        ]
    );
    assert_eq!(
        texts("/*!80016 DEFAULT ENCRYPTION='N' */"),
        ["DEFAULT", "ENCRYPTION", "=", "'N'"]
    );
    // A comment inside an executable comment, and a `*/` that only closes it.
    assert_eq!(
        texts("/*!50003 CREATE */ /*!50017 DEFINER=`root`@`%`*/ x"),
        ["CREATE", "DEFINER", "=", "`root`", "@`%`", "x"]
    );
    assert_eq!(
        texts("/*M*/ 1"),
        ["1"],
        "only /*M! is MariaDB's executable comment"
    );
}

#[test]
fn strings_and_identifiers_keep_their_content() {
    assert_eq!(
        kinds_and_texts(r#"SELECT 'it''s; COMMIT', "a\"; b", `we``ird;`"#, DEFAULT),
        [
            (TokenKind::Word, "SELECT".into()),
            (TokenKind::String, "'it''s; COMMIT'".into()),
            (TokenKind::Punct, ",".into()),
            (TokenKind::String, r#""a\"; b""#.into()),
            (TokenKind::Punct, ",".into()),
            (TokenKind::QuotedIdent, "`we``ird;`".into()),
        ]
    );
    // A backslash escapes the quote by default...
    assert_eq!(
        texts(r"SELECT 'a\'; DROP t' x"),
        ["SELECT", r"'a\'; DROP t'", "x"]
    );
    // ...and is ordinary under NO_BACKSLASH_ESCAPES, so the string ends after it.
    let nbe = SqlMode {
        no_backslash_escapes: true,
        ..DEFAULT
    };
    let tokens: Vec<_> = kinds_and_texts(r"SELECT 'a\'; DROP t'", nbe)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(tokens, ["SELECT", r"'a\'", ";", "DROP", "t", "'"]);
    // Backticks never take backslash escapes.
    assert_eq!(texts(r"SELECT `a\` , 1"), ["SELECT", r"`a\`", ",", "1"]);
}

#[test]
fn ansi_quotes_make_double_quotes_identifiers() {
    let ansi = SqlMode {
        ansi_quotes: true,
        ..DEFAULT
    };
    assert_eq!(
        kinds_and_texts(r#"SELECT "a\" FROM t"#, ansi),
        [
            (TokenKind::Word, "SELECT".into()),
            (TokenKind::QuotedIdent, r#""a\""#.into()),
            (TokenKind::Word, "FROM".into()),
            (TokenKind::Word, "t".into()),
        ]
    );
    assert_eq!(
        kinds_and_texts(r#"SELECT "a""b""#, ansi)[1],
        (TokenKind::QuotedIdent, r#""a""b""#.into())
    );
    assert_eq!(
        kinds_and_texts(r#"SELECT "x""#, DEFAULT)[1].0,
        TokenKind::String
    );
}

#[test]
fn variables() {
    assert_eq!(
        kinds_and_texts(
            "@x @'a b' @`c` @@sql_mode @@SESSION.time_zone @@global.`x` @",
            DEFAULT
        ),
        [
            (TokenKind::UserVar, "@x".into()),
            (TokenKind::UserVar, "@'a b'".into()),
            (TokenKind::UserVar, "@`c`".into()),
            (TokenKind::SystemVar, "@@sql_mode".into()),
            (TokenKind::SystemVar, "@@SESSION.time_zone".into()),
            (TokenKind::SystemVar, "@@global.`x`".into()),
            (TokenKind::UserVar, "@".into()),
        ]
    );
    assert_eq!(texts("'u'@'%'"), ["'u'", "@'%'"]);
}

#[test]
fn unterminated_quotes_run_to_the_end() {
    assert_eq!(texts("SELECT 'abc; COMMIT"), ["SELECT", "'abc; COMMIT"]);
    assert_eq!(texts("SELECT `abc"), ["SELECT", "`abc"]);
    assert_eq!(texts(r"SELECT 'abc\"), ["SELECT", r"'abc\"]);
    assert_eq!(texts("@@"), ["@@"]);
}

#[test]
fn sql_mode_from_status_and_variable() {
    assert_eq!(SqlMode::from_status(0x0002), DEFAULT);
    assert_eq!(
        SqlMode::from_status(0x0202),
        SqlMode {
            no_backslash_escapes: true,
            ansi_quotes: false
        }
    );
    assert_eq!(
        DEFAULT.with_sql_mode("STRICT_TRANS_TABLES,ANSI_QUOTES"),
        SqlMode {
            ansi_quotes: true,
            no_backslash_escapes: false
        }
    );
    assert!(
        DEFAULT
            .with_sql_mode("REAL_AS_FLOAT,PIPES_AS_CONCAT,ANSI")
            .ansi_quotes
    );
    assert!(
        DEFAULT
            .with_sql_mode("no_backslash_escapes")
            .no_backslash_escapes
    );
    assert_eq!(DEFAULT.with_sql_mode(""), DEFAULT);
    assert!(!DEFAULT.with_sql_mode("ANSI_QUOTESX").ansi_quotes);
}

#[test]
fn statements_are_split_at_semicolons() {
    assert_eq!(
        statement_texts("SELECT 1; INSERT INTO t VALUES (';');;  ; -- x\n"),
        ["SELECT 1", "INSERT INTO t VALUES ( ';' )"]
    );
    assert_eq!(statement_texts(""), Vec::<String>::new());
    assert_eq!(
        statement_texts("/* only a comment */"),
        Vec::<String>::new()
    );
    assert_eq!(statement_texts("SELECT 1 /* ; */ # ;\n"), ["SELECT 1"]);
}

#[test]
fn program_bodies_stay_whole() {
    let procedure = "CREATE DEFINER=`root`@`%` PROCEDURE p() BEGIN \
        DECLARE x INT; IF x THEN SELECT 1; END IF; \
        CASE x WHEN 1 THEN SELECT 2; END CASE; \
        SELECT CASE WHEN x THEN 1 END; \
        l: LOOP LEAVE l; END LOOP; \
        FOR i IN 1..3 DO SELECT i; END FOR; \
        WHILE x DO SET x = 0; END WHILE; \
        REPEAT SET x = 1; UNTIL x END REPEAT; \
        END; SELECT 3";
    let parts = statement_texts(procedure);
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[1], "SELECT 3");
    let anonymous = statement_texts("BEGIN NOT ATOMIC SET @a = 1; SELECT @a; END; DO 1");
    assert_eq!(anonymous.len(), 2, "{anonymous:?}");
    assert_eq!(anonymous[1], "DO 1");
    // A trigger without BEGIN ends at its first `;`.
    assert_eq!(
        statement_texts("CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW SET NEW.a = 1; SELECT 1")
            .len(),
        2
    );
    // BEGIN as a transaction start is no body.
    assert_eq!(statement_texts("BEGIN; SELECT 1; COMMIT").len(), 3);
}
