//! Tests of the statement classifier on statements as ORMs, drivers and dump tools send them.

use super::*;

const MODE: SqlMode = SqlMode {
    ansi_quotes: false,
    no_backslash_escapes: false,
};

/// The facts of a query that must be one statement.
fn one(sql: &str, in_transaction: bool) -> Facts {
    let all = classify(sql.as_bytes(), MODE, in_transaction);
    assert_eq!(all.len(), 1, "{sql}: {all:?}");
    all[0]
}

fn outside(sql: &str) -> Facts {
    one(sql, false)
}

fn inside(sql: &str) -> Facts {
    one(sql, true)
}

fn whole(sql: &str, in_transaction: bool) -> Facts {
    combine(&classify(sql.as_bytes(), MODE, in_transaction))
}

#[test]
fn plain_reads_execute_nothing() {
    for sql in [
        "SELECT 1",
        "select 1 from dual",
        "  SELECT abalance FROM accounts WHERE aid = 12 ",
        "(SELECT a FROM t) UNION ALL (SELECT b FROM u)",
        "SELECT COUNT(*), MAX(x), CONCAT(a, '-', b) FROM t GROUP BY c HAVING SUM(d) > 1",
        "SELECT * FROM t WHERE id IN (1, 2) AND EXISTS (SELECT 1 FROM u WHERE u.t = t.id)",
        "SELECT CAST('test plain returns' AS CHAR(60)) AS anon_1",
        "SELECT CAST(x AS DECIMAL(10, 2)), CONVERT(y USING utf8mb4) FROM t",
        "SELECT DATABASE()",
        "SELECT @@tx_isolation",
        "SELECT @@session.transaction_isolation, @@version_comment LIMIT 1",
        "/* mysql-connector-java-8.0.33 */SELECT @@session.auto_increment_increment AS a, \
         @@character_set_client AS b, @@license AS c",
        "SELECT @x",
        "SELECT NOW(6), UTC_TIMESTAMP(), DATE_FORMAT(d, '%Y') FROM t",
        "SELECT ROW_NUMBER() OVER (PARTITION BY a ORDER BY b) FROM t",
        "SELECT * FROM t1 JOIN t2 USING (id) LEFT JOIN (t3) ON (t3.a = t1.a)",
        "SELECT dt.a FROM (SELECT 1, 2) AS dt (a, b)",
        "SELECT * FROM t FORCE INDEX (idx) WHERE MATCH (a) AGAINST ('x' IN BOOLEAN MODE)",
        "WITH RECURSIVE c (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 5) SELECT n FROM c",
        "VALUES ROW(1, 2), ROW(3, 4)",
        "TABLE t",
        "SHOW VARIABLES LIKE 'sql_mode'",
        "SHOW FULL PROCESSLIST",
        "show create table `t`",
        "DESCRIBE t",
        "DESC t",
        "EXPLAIN SELECT * FROM t WHERE a = f(1)",
        "EXPLAIN FORMAT=JSON UPDATE t SET a = 1",
        "HELP 'contents'",
        "DO 0",
        "DO 1 + 1",
        "XA RECOVER",
        "SELECT 'FOR UPDATE', \"INTO @x\", `GET_LOCK`",
        "SELECT a FROM t -- FOR UPDATE\n",
        "SELECT a /* INTO @x */ FROM t",
    ] {
        let f = outside(sql);
        assert!(f.executes_nothing, "{sql}: {f:?}");
        assert!(!f.may_commit && !f.taints && !f.waits, "{sql}: {f:?}");
        assert_eq!(f.ends_transaction, None, "{sql}");
        assert!(!f.traits().executes, "{sql}");
    }
}

#[test]
fn reads_that_do_something() {
    for sql in [
        "SELECT * FROM t WHERE id = 1 FOR UPDATE",
        "select * from t where id = 1 for share nowait",
        "SELECT * FROM t LOCK IN SHARE MODE",
        "SELECT next_val as id_val from hibernate_sequence for update",
    ] {
        let f = outside(sql);
        assert!(!f.executes_nothing && f.waits && !f.taints, "{sql}: {f:?}");
    }
    for sql in [
        "SELECT SLEEP(1)",
        "DO SLEEP(5)",
        "SELECT BENCHMARK(1000, MD5('x'))",
    ] {
        let f = outside(sql);
        assert!(
            !f.executes_nothing && f.waits && !f.taints && !f.may_commit,
            "{sql}: {f:?}"
        );
    }
    for sql in [
        "SELECT GET_LOCK('lock1', 10)",
        "DO GET_LOCK('x', 0)",
        "SELECT a INTO @x FROM t",
        "SELECT a, b FROM t LIMIT 1 INTO @a, @b",
        "SELECT @rownum := @rownum + 1 FROM t",
        "SELECT LAST_INSERT_ID(42)",
        "EXPLAIN FORMAT=JSON INTO @plan SELECT 1",
    ] {
        let f = outside(sql);
        assert!(!f.executes_nothing && f.taints, "{sql}: {f:?}");
    }
    for sql in [
        "SELECT LAST_INSERT_ID()",
        "SELECT FOUND_ROWS()",
        "SELECT CONNECTION_ID()",
        "SELECT RELEASE_LOCK('x')",
        "SELECT a FROM t INTO OUTFILE '/tmp/x'",
    ] {
        let f = outside(sql);
        assert!(
            !f.executes_nothing && !f.taints && !f.may_commit,
            "{sql}: {f:?}"
        );
    }
    // Functions that may write data: stored functions, sequences, UDFs.
    for sql in [
        "SELECT my_function(1)",
        "SELECT app.audit('x')",
        "SELECT NEXTVAL(s)",
        "SELECT NEXT VALUE FOR s",
        "SELECT concat_ws(',', a) FROM t WHERE x = db.f()",
    ] {
        let f = outside(sql);
        assert!(!f.executes_nothing && f.may_commit, "{sql}: {f:?}");
        let f = inside(sql);
        assert!(!f.may_commit, "inside a transaction nothing commits: {sql}");
    }
    assert!(!outside("EXPLAIN ANALYZE SELECT * FROM t").executes_nothing);
    assert!(!outside("ANALYZE FORMAT=JSON SELECT 1").executes_nothing);
    assert!(outside("ANALYZE DELETE FROM t").may_commit);
}

#[test]
fn data_changes_may_commit_outside_a_transaction() {
    for sql in [
        "INSERT INTO t (a, b) VALUES (1, 'x') ON DUPLICATE KEY UPDATE b = VALUES(b)",
        "INSERT INTO `t` (`a`) VALUES (1) AS new ON DUPLICATE KEY UPDATE a = new.a",
        "REPLACE INTO t VALUES (1)",
        "UPDATE t SET a = a + 1 WHERE id = 3",
        "DELETE FROM t WHERE id = 4",
        "LOAD DATA LOCAL INFILE 'x.csv' INTO TABLE t",
        "WITH x AS (SELECT 1 AS id) UPDATE t JOIN x USING (id) SET t.a = 1",
        "INSERT INTO t SELECT * FROM u",
        "DELETE FROM t RETURNING id",
    ] {
        let f = outside(sql);
        assert!(!f.executes_nothing && f.may_commit, "{sql}: {f:?}");
        assert!(
            !f.taints && !f.waits && f.ends_transaction.is_none(),
            "{sql}: {f:?}"
        );
        let f = inside(sql);
        assert!(!f.executes_nothing && !f.may_commit, "{sql}: {f:?}");
    }
    assert!(outside("INSERT INTO t VALUES (GET_LOCK('x', 1))").taints);
    assert!(outside("UPDATE t SET a = (@x := 1)").taints);
}

#[test]
fn procedures_and_opaque_statements() {
    for sql in [
        "CALL p()",
        "call app.p(1, @out)",
        "BEGIN NOT ATOMIC SELECT 1; END",
    ] {
        for f in [outside(sql), inside(sql)] {
            assert!(
                !f.executes_nothing && f.may_commit && f.waits,
                "{sql}: {f:?}"
            );
        }
    }
    // Unknown statements are assumed to do anything but taint.
    for sql in ["FROBNICATE t", "`weird`", "DECLARE x INT"] {
        let f = outside(sql);
        assert!(!f.executes_nothing && f.may_commit, "{sql}: {f:?}");
    }
}

#[test]
fn transaction_control() {
    for sql in [
        "BEGIN",
        "begin work",
        "START TRANSACTION",
        "START TRANSACTION READ ONLY",
        "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ WRITE",
    ] {
        let f = outside(sql);
        assert!(f.executes_nothing && !f.may_commit, "{sql}: {f:?}");
        // Inside a transaction, BEGIN commits it first.
        let f = inside(sql);
        assert!(!f.executes_nothing && f.may_commit, "{sql}: {f:?}");
        assert_eq!(f.ends_transaction, Some(TxEnd::Commit), "{sql}");
    }
    for sql in [
        "COMMIT",
        "commit work",
        "COMMIT AND CHAIN",
        "COMMIT AND NO CHAIN RELEASE",
    ] {
        let f = inside(sql);
        assert!(!f.executes_nothing && f.may_commit, "{sql}: {f:?}");
        assert_eq!(f.ends_transaction, Some(TxEnd::Commit), "{sql}");
    }
    for (sql, end) in [
        ("ROLLBACK", Some(TxEnd::Rollback)),
        ("rollback work", Some(TxEnd::Rollback)),
        ("ROLLBACK AND NO CHAIN", Some(TxEnd::Rollback)),
        ("ROLLBACK RELEASE", Some(TxEnd::Rollback)),
        ("ROLLBACK AND CHAIN", None),
        ("ROLLBACK TO SAVEPOINT s1", None),
        ("ROLLBACK WORK TO s1", None),
    ] {
        let f = inside(sql);
        assert_eq!(f.ends_transaction, end, "{sql}");
        assert!(!f.may_commit && !f.executes_nothing, "{sql}: {f:?}");
    }
    for sql in ["SAVEPOINT s1", "RELEASE SAVEPOINT s1"] {
        let f = inside(sql);
        assert!(
            !f.executes_nothing && !f.may_commit && f.ends_transaction.is_none(),
            "{sql}"
        );
    }
}

#[test]
fn implicit_commits() {
    for sql in [
        "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(10))",
        "ALTER TABLE t ADD COLUMN c INT",
        "DROP TABLE IF EXISTS t",
        "TRUNCATE TABLE t",
        "RENAME TABLE a TO b",
        "CREATE INDEX i ON t (a)",
        "CREATE DATABASE /*!32312 IF NOT EXISTS*/ `app` /*!40100 DEFAULT CHARACTER SET utf8mb4 */",
        "GRANT SELECT ON app.* TO 'u'@'%'",
        "CREATE USER 'u'@'%' IDENTIFIED BY 'p'",
        "SET PASSWORD FOR 'u'@'%' = PASSWORD('x')",
        "ANALYZE TABLE t",
        "OPTIMIZE TABLE t",
        "FLUSH PRIVILEGES",
        "LOAD INDEX INTO CACHE t",
        "CREATE VIEW v AS SELECT @x := 1",
        "CREATE PROCEDURE p() BEGIN SET @x = 1; SELECT GET_LOCK('a', 1); END",
    ] {
        let f = outside(sql);
        assert!(!f.executes_nothing && f.may_commit, "{sql}: {f:?}");
        assert!(!f.taints && !f.waits, "{sql}: {f:?}");
        assert_eq!(f.ends_transaction, None, "nothing to end outside: {sql}");
        assert_eq!(inside(sql).ends_transaction, Some(TxEnd::Commit), "{sql}");
    }
    for sql in ["LOCK TABLES t READ, u WRITE", "lock table t write"] {
        let f = inside(sql);
        assert!(f.may_commit && f.taints && f.waits, "{sql}: {f:?}");
        assert_eq!(f.ends_transaction, Some(TxEnd::Commit));
    }
    let f = outside("FLUSH TABLES WITH READ LOCK");
    assert!(f.may_commit && f.taints && f.waits, "{f:?}");
    let f = inside("UNLOCK TABLES");
    assert!(f.may_commit && !f.taints, "{f:?}");
}

#[test]
fn temporary_tables() {
    for sql in [
        "CREATE TEMPORARY TABLE tmp (a INT)",
        "CREATE OR REPLACE TEMPORARY TABLE tmp AS SELECT 1",
        "create temporary table if not exists tmp like t",
    ] {
        let f = inside(sql);
        assert!(
            f.taints && !f.may_commit && f.ends_transaction.is_none(),
            "{sql}: {f:?}"
        );
    }
    let f = inside("DROP TEMPORARY TABLE IF EXISTS tmp");
    assert!(!f.taints && !f.may_commit && !f.executes_nothing, "{f:?}");
}

#[test]
fn set_statements() {
    // Session variables are tracked and restorable: they execute, nothing more.
    for sql in [
        "SET NAMES utf8mb4",
        "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_unicode_ci'",
        "SET CHARACTER SET utf8",
        "SET character_set_results = NULL",
        "SET sql_mode = 'STRICT_TRANS_TABLES,NO_ZERO_DATE'",
        "SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')",
        "SET @@session.time_zone = '+02:00'",
        "SET time_zone := 'UTC'",
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        "SET GLOBAL max_connections = 100",
        "SET autocommit=0",
        "SET autocommit = 1",
        "/*!40014 SET FOREIGN_KEY_CHECKS=0 */",
    ] {
        let f = outside(sql);
        assert!(
            !f.executes_nothing && !f.may_commit && !f.taints,
            "{sql}: {f:?}"
        );
    }
    // SET NAMES ... COLLATE: the collation is read from the text.
    assert!(outside("SET NAMES utf8mb4 COLLATE utf8mb4_bin").chooses_collation);
    assert!(!outside("SET NAMES utf8mb4").chooses_collation);
    assert!(!outside("SET collation_connection = 'utf8mb4_bin'").chooses_collation);
    for (sql, chosen) in [
        ("SET NAMES utf8mb4 COLLATE utf8mb4_bin", Some("utf8mb4_bin")),
        (
            "set names 'utf8mb4' collate 'utf8mb4_unicode_ci'",
            Some("utf8mb4_unicode_ci"),
        ),
        (
            "SET NAMES latin1 COLLATE `latin1_bin`, time_zone = 'UTC'",
            Some("latin1_bin"),
        ),
        ("SET NAMES utf8mb4", None),
        ("SELECT 1", None),
        ("SET NAMES a COLLATE a_bin; SET NAMES b", None),
    ] {
        assert_eq!(
            names_collation(sql.as_bytes(), MODE).as_deref(),
            chosen,
            "{sql}"
        );
    }
    // State that cannot be rebuilt.
    for sql in [
        "SET @x = 1",
        "/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE */",
        "/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */",
        "SET @a := 1, @b = 2",
        "SET sql_mode = '', @x = 1",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET TRANSACTION READ ONLY",
        "SET ROLE ALL",
        "SET session_track_state_change = OFF",
        "SET @@session.session_track_system_variables = ''",
    ] {
        let f = outside(sql);
        assert!(f.taints && !f.executes_nothing, "{sql}: {f:?}");
    }
    // autocommit=1 inside a transaction commits it.
    for sql in [
        "SET autocommit=1",
        "SET @@autocommit = ON",
        "set session autocommit = 'ON'",
        "SET autocommit = DEFAULT",
        "SET sql_mode = '', autocommit = 1",
    ] {
        let f = inside(sql);
        assert!(f.may_commit, "{sql}: {f:?}");
        assert_eq!(f.ends_transaction, Some(TxEnd::Commit), "{sql}");
    }
    for sql in [
        "SET autocommit=0",
        "SET autocommit = OFF",
        "SET @@autocommit = 'off'",
        "SET @@global.autocommit = 1",
        "SET GLOBAL autocommit = 1",
    ] {
        let f = inside(sql);
        assert!(!f.may_commit, "{sql}: {f:?}");
    }
    // SET STATEMENT ... FOR is the statement, run with variables of its own.
    assert!(outside("SET STATEMENT max_statement_time = 1 FOR SELECT 1").executes_nothing);
    let f = inside("SET STATEMENT max_statement_time = 1 FOR INSERT INTO t VALUES (1)");
    assert!(!f.may_commit && !f.executes_nothing);
    assert!(
        outside("SET STATEMENT max_statement_time = 1 FOR INSERT INTO t VALUES (1)").may_commit
    );
    assert!(outside("SET DEFAULT ROLE ALL TO 'u'@'%'").may_commit);
}

#[test]
fn sql_level_prepared_statements_handlers_and_xa_taint() {
    for sql in [
        "PREPARE s FROM 'SELECT ?'",
        "EXECUTE s USING @a",
        "DEALLOCATE PREPARE s",
        "DROP PREPARE s",
        "HANDLER t OPEN",
        "XA START 'x'",
        "XA END 'x'",
    ] {
        let f = outside(sql);
        assert!(f.taints && !f.executes_nothing, "{sql}: {f:?}");
    }
    for sql in [
        "XA PREPARE 'x'",
        "XA COMMIT 'x'",
        "XA COMMIT 'x' ONE PHASE",
        "XA ROLLBACK 'x'",
    ] {
        let f = outside(sql);
        assert!(f.taints && f.may_commit, "{sql}: {f:?}");
    }
    assert_eq!(
        outside("XA COMMIT 'x'").ends_transaction,
        Some(TxEnd::Commit)
    );
    assert_eq!(outside("XA ROLLBACK 'x'").ends_transaction, None);
}

#[test]
fn other_statements_execute() {
    for sql in [
        "USE app",
        "KILL QUERY 12",
        "SIGNAL SQLSTATE '45000'",
        "GET DIAGNOSTICS @n = NUMBER",
        "CHECKSUM TABLE t",
    ] {
        let f = outside(sql);
        assert!(!f.executes_nothing && !f.may_commit, "{sql}: {f:?}");
    }
}

#[test]
fn several_statements_follow_the_transaction() {
    let facts = classify(b"BEGIN; INSERT INTO t VALUES (1); COMMIT", MODE, false);
    assert_eq!(facts.len(), 3);
    assert!(facts[0].executes_nothing);
    assert!(!facts[1].may_commit, "inside the BEGIN");
    assert!(facts[2].may_commit);
    let all = combine(&facts);
    assert!(!all.executes_nothing && all.may_commit);
    assert_eq!(all.ends_transaction, Some(TxEnd::Commit));

    // After a data change outside a transaction, autocommit may be off: BEGIN may commit.
    let facts = classify(b"INSERT INTO t VALUES (1); BEGIN", MODE, false);
    assert!(facts[1].may_commit);
    // After COMMIT, nothing is open.
    let facts = classify(b"COMMIT; BEGIN", MODE, true);
    assert!(facts[1].executes_nothing && !facts[1].may_commit);
    // COMMIT AND CHAIN opens the next one.
    let facts = classify(b"COMMIT AND CHAIN; UPDATE t SET a = 1", MODE, true);
    assert!(!facts[1].may_commit);
    // DDL commits and ends the transaction: the next change autocommits.
    let facts = classify(b"ALTER TABLE t ADD c INT; UPDATE t SET c = 1", MODE, true);
    assert!(facts[1].may_commit);
}

#[test]
fn combining() {
    let all = whole("SELECT 1; SELECT 2", false);
    assert!(all.executes_nothing && !all.may_commit);
    let all = whole("SELECT 1; INSERT INTO t VALUES (1)", false);
    assert!(!all.executes_nothing && all.may_commit && !all.taints);
    let all = whole("SELECT 1; SET @x = 1; SELECT SLEEP(1)", false);
    assert!(all.taints && all.waits);
    // Several statements are never answered as one rollback.
    assert_eq!(
        whole("ROLLBACK", true).ends_transaction,
        Some(TxEnd::Rollback)
    );
    assert_eq!(
        whole("UPDATE t SET a = 1; ROLLBACK", true).ends_transaction,
        None
    );
    assert_eq!(
        whole("COMMIT; BEGIN; SELECT 1", true).ends_transaction,
        None
    );
    let empty = combine(&[]);
    assert!(empty.executes_nothing && !empty.may_commit && empty.ends_transaction.is_none());
    assert_eq!(combine(&classify(b"", MODE, false)), empty);
    assert_eq!(combine(&classify(b" ; /* */ ;", MODE, false)), empty);
}

#[test]
fn quoting_modes_change_what_is_code() {
    // A backslash-escaped quote hides `; INSERT` by default...
    let sql = br"SELECT 'a\'; INSERT INTO t VALUES (1); SELECT '";
    assert_eq!(classify(sql, MODE, false).len(), 1);
    assert!(combine(&classify(sql, MODE, false)).executes_nothing);
    // ...but under NO_BACKSLASH_ESCAPES the string ends at the backslash.
    let nbe =
        SqlMode::from_status(suture_protocol::mysql::status::SERVER_STATUS_NO_BACKSLASH_ESCAPES);
    let facts = classify(sql, nbe, false);
    assert_eq!(facts.len(), 3);
    assert!(combine(&facts).may_commit);
    // Under ANSI_QUOTES "..." is a name: "f"(1) is a call of an unknown function.
    let ansi = SqlMode {
        ansi_quotes: true,
        ..MODE
    };
    assert!(classify(br#"SELECT "SLEEP(1)""#, MODE, false)[0].executes_nothing);
    assert!(!classify(br#"SELECT "t"."a" FROM "t""#, ansi, false)[0].taints);
}

#[test]
fn traits_for_the_ledger() {
    let t = outside("INSERT INTO t VALUES (1)").traits();
    assert!(t.executes && t.may_commit && t.waits && t.ends_tx.is_none());
    let t = outside("SELECT 1").traits();
    assert!(!t.executes && !t.may_commit && t.waits);
    assert_eq!(inside("ROLLBACK").traits().ends_tx, Some(TxEnd::Rollback));
}
