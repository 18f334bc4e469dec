//! The ledger test (DESIGN §3, §9; issue 4): the proof of the replay contract.
//!
//! Many clients insert uniquely keyed rows `(client, seq)` into a table
//! without a unique index, through Suture, with the pool sized like the
//! application's (`max_size` = clients): simple and extended queries,
//! pipelined INSERTs (tokio-postgres sends them back to back), transactions,
//! and raw clients that send extended-protocol batches behind a Flush before
//! their Sync (as psycopg 3 does when it fetches mid-pipeline). A chaos task
//! meanwhile resets and half-closes the backend flows through the fault
//! relay, cuts them after a few bytes either way, black-holes them or stops
//! reading from them for a moment, terminates backends with
//! `pg_terminate_backend` and restarts the server once.
//! Afterwards the table is read straight from PostgreSQL:
//!
//! 1. every acknowledged row exists exactly once (nothing acknowledged was lost),
//! 2. no row exists more than once (nothing that had run was replayed),
//! 3. every error a client saw carries a SQLSTATE that §3 allows
//!    ([`ALLOWED_SQLSTATES`]).
//!
//! 4. no statement fails without a SQLSTATE (a bare close) and none hangs.
//!
//! Rows present but never acknowledged are fine: the client was told the
//! outcome is unknown (40003 / 08007).
//!
//! Runs 15 s by default; `SUTURE_LEDGER_SECS=N` runs N seconds.
//! `SUTURE_LEDGER_SEED=N` replays a chaos schedule (the seed is printed).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use support::dsn_for;
use support::fault_relay::Direction;
use support::raw_client::{error_fields, ext, BackendMsg};
use support::rig::Rig;
use support::RawClient;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

/// The SQLSTATEs a client may see from Suture while backends die under it
/// (DESIGN §3 table, plus what PostgreSQL itself says in these situations).
/// Any other SQLSTATE fails the test.
const ALLOWED_SQLSTATES: &[(&str, &str)] = &[
    (
        "40003",
        "statement_completion_unknown: the request may have run, outside a transaction",
    ),
    (
        "08006",
        "connection_failure: backend lost inside a transaction (rolled back), or no backend within the failover hold",
    ),
    (
        "08007",
        "transaction_resolution_unknown: a COMMIT was in flight and got no reply",
    ),
    (
        "57P03",
        "cannot_connect_now: no backend within the failover hold (or the server is starting / shutting down)",
    ),
    (
        "57P01",
        "admin_shutdown: the server's own terminate message, forwarded while a statement was running",
    ),
    (
        "25P02",
        "in_failed_sql_transaction: a statement inside a transaction that is already aborted",
    ),
];

/// The role the clients use. Not `app`: its SCRAM login costs a PBKDF2 of
/// 4096 rounds on each side, which in this unoptimised test build takes
/// ~100 ms of CPU; after every mass fault all clients (and Suture, towards
/// PostgreSQL) log in again at once, and on a small machine the logins then
/// take longer than the gaps between faults, so the run measures login
/// starvation instead of the replay contract. `md5user` logs in to
/// PostgreSQL with md5, and clients use trust towards Suture's loopback
/// listener. What this test proves starts after login.
const USER: &str = "md5user";
const PASSWORD: &str = "md5-secret";
/// Number of concurrent clients, each on its own connection.
const CLIENTS: i32 = 16;
/// Of them, this many speak the extended protocol by hand in Flush batches.
const FLUSH_CLIENTS: i32 = 3;
/// Default run time; `SUTURE_LEDGER_SECS` overrides it.
const DEFAULT_SECS: u64 = 15;
/// Suture's failover hold here is 10 s (see the rig's settings); a step may
/// legitimately wait that long and more on a loaded machine, so only a wait
/// well beyond it counts as a hang.
const STEP: Duration = Duration::from_secs(35);
/// Pause between two attempts of one client (keeps the load modest).
const PAUSE_MS: std::ops::Range<u64> = 10..40;
/// Pause between two faults.
const FAULT_GAP_MS: std::ops::Range<u64> = 300..1200;

// ---------------------------------------------------------------------------
// What the clients record
// ---------------------------------------------------------------------------

/// The statement (or step) an outcome belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Op {
    Connect,
    /// Autocommit INSERT, simple query protocol.
    Insert,
    /// Autocommit INSERT, extended protocol (unnamed statement, one batch).
    InsertExtended,
    /// Autocommit INSERT that runs ~50 ms (pg_sleep), so faults hit it in flight.
    InsertSlow,
    /// Three autocommit INSERTs sent back to back before any answer (pipelined).
    InsertPipelined,
    /// Raw client: Parse/Bind/Execute(INSERT)/Flush, answered before the Sync.
    FlushInsert,
    /// Raw client: the Sync that commits the Flush batches' implicit transaction.
    FlushSync,
    Begin,
    TxInsert,
    Commit,
    Rollback,
}

/// How one statement ended, from the client's point of view.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Ok,
    /// An ErrorResponse with this SQLSTATE and severity (ERROR / FATAL).
    Sqlstate(String, String),
    /// The statement failed without any ErrorResponse (the connection closed
    /// or broke under it); the text says how.
    Bare(String),
    /// No reply within [`STEP`].
    Hung,
}

#[derive(Default)]
struct ClientLog {
    /// Rows the client was told are committed.
    acked: Vec<(i32, i32)>,
    /// For acknowledged transactions: when each step returned (UTC time of
    /// day, to match against Suture's log if a row goes missing).
    traces: HashMap<(i32, i32), String>,
    /// Every key the client sent in some INSERT.
    attempted: Vec<(i32, i32)>,
    /// Per (op, outcome) count.
    outcomes: BTreeMap<(Op, Outcome), u64>,
    /// First message seen per "SQLSTATE/op".
    messages: BTreeMap<String, String>,
    /// INSERTs acknowledged with a row count other than 1.
    wrong_counts: Vec<String>,
    /// Attempts (autocommit statements or whole transactions).
    attempts: u64,
    /// Per op: how long the slowest one took, and the total.
    latency: BTreeMap<Op, (Duration, Duration)>,
    /// The client's id, for [`ClientLog::hangs`].
    id: i32,
    /// Each statement that got no answer: which, and when it was sent (UTC time of day, to
    /// find its session in Suture's log).
    hangs: Vec<String>,
}

impl ClientLog {
    fn new(id: i32) -> ClientLog {
        ClientLog {
            id,
            ..ClientLog::default()
        }
    }

    fn record(&mut self, op: Op, outcome: Outcome, took: Duration) {
        if outcome == Outcome::Hung {
            let sent = std::time::SystemTime::now() - took;
            self.hangs.push(format!(
                "client {} {op:?} sent at {}",
                self.id,
                utc_time_of_day(sent)
            ));
        }
        *self.outcomes.entry((op, outcome)).or_insert(0) += 1;
        let slot = self.latency.entry(op).or_default();
        slot.0 = slot.0.max(took);
        slot.1 += took;
    }

    /// Keeps the first message of an error a raw client saw.
    fn note_raw_error(&mut self, op: Op, outcome: &Outcome, message: String) {
        if let Outcome::Sqlstate(code, severity) = outcome {
            self.messages
                .entry(format!("{code}/{op:?}"))
                .or_insert_with(|| format!("{severity}: {message}"));
        }
    }

    /// Records a failed statement; true when the error ended the session
    /// (a FATAL ErrorResponse or no ErrorResponse at all).
    fn record_err(
        &mut self,
        op: Op,
        err: &tokio_postgres::Error,
        conn: &Conn,
        took: Duration,
    ) -> bool {
        let outcome = classify(err, conn);
        let fatal = match err.as_db_error() {
            Some(db) => {
                self.messages
                    .entry(format!("{}/{op:?}", db.code().code()))
                    .or_insert_with(|| format!("{}: {}", db.severity(), db.message()));
                db.severity() != "ERROR"
            }
            None => true,
        };
        self.record(op, outcome, took);
        fatal
    }
}

/// A client connection plus how its connection task ended.
struct Conn {
    client: Client,
    ended: Arc<Mutex<Option<String>>>,
}

impl Conn {
    fn end(&self) -> Option<String> {
        self.ended.lock().ok().and_then(|e| e.clone())
    }
}

async fn connect(port: u16) -> Result<Conn, tokio_postgres::Error> {
    let dsn = dsn_for(port, USER, PASSWORD, "app");
    let (client, mut connection) = tokio_postgres::connect(&dsn, NoTls).await?;
    let ended = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&ended);
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let how = loop {
            match futures_util::StreamExt::next(&mut messages).await {
                Some(Ok(AsyncMessage::Notice(notice))) => note(&notice),
                Some(Ok(_)) => {}
                None => break "closed cleanly".to_string(),
                Some(Err(err)) => {
                    break match err.as_db_error() {
                        // An ErrorResponse that arrived while no statement waited.
                        Some(db) => format!("ended by an unsolicited {}", db.code().code()),
                        None => format!("ended with {}", first_line(&err.to_string())),
                    };
                }
            }
        };
        if let Ok(mut slot) = slot.lock() {
            *slot = Some(how);
        }
    });
    Ok(Conn { client, ended })
}

/// Notices (warnings) the clients received, by SQLSTATE: count and first
/// message. A 25P01 "there is no transaction in progress" means a COMMIT or
/// ROLLBACK ran outside the transaction the client had opened, i.e. the
/// transaction was silently lost under it.
static NOTICES: Mutex<BTreeMap<String, (u64, String)>> = Mutex::new(BTreeMap::new());

fn note(notice: &tokio_postgres::error::DbError) {
    if let Ok(mut notices) = NOTICES.lock() {
        let slot = notices
            .entry(notice.code().code().to_string())
            .or_insert_with(|| (0, format!("{}: {}", notice.severity(), notice.message())));
        slot.0 += 1;
    }
}

fn utc_now() -> String {
    utc_time_of_day(std::time::SystemTime::now())
}

/// `at` as the time of day in UTC, as Suture's log writes it (HH:MM:SS.mmm).
fn utc_time_of_day(at: std::time::SystemTime) -> String {
    let t = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let day = t.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day / 3600,
        day / 60 % 60,
        day % 60,
        t.subsec_millis()
    )
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn classify(err: &tokio_postgres::Error, conn: &Conn) -> Outcome {
    if let Some(db) = err.as_db_error() {
        return Outcome::Sqlstate(db.code().code().to_string(), db.severity().to_string());
    }
    let what = if err.is_closed() {
        "connection closed".to_string()
    } else {
        first_line(&err.to_string())
    };
    match conn.end() {
        Some(end) => Outcome::Bare(format!("{what}; connection {end}")),
        None => Outcome::Bare(what),
    }
}

/// Runs one statement with the step limit; `Ok(Some(rows affected))`.
async fn run_simple(conn: &Conn, sql: &str) -> Result<Result<u64, tokio_postgres::Error>, ()> {
    match tokio::time::timeout(STEP, conn.client.simple_query(sql)).await {
        Err(_) => Err(()),
        Ok(Err(err)) => Ok(Err(err)),
        Ok(Ok(msgs)) => Ok(Ok(msgs
            .iter()
            .map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => *n,
                _ => 0,
            })
            .sum())),
    }
}

fn insert_sql(client: i32, seq: i32, slow: bool) -> String {
    if slow {
        format!(
            "INSERT INTO ledger (client, seq, payload) \
             SELECT {client}, {seq}, 'slow c{client} s{seq}' FROM pg_sleep(0.05)"
        )
    } else {
        format!(
            "INSERT INTO ledger (client, seq, payload) VALUES ({client}, {seq}, 'c{client} s{seq}')"
        )
    }
}

/// One client: connects through Suture, inserts until `stop`, reconnects
/// whenever its connection is closed.
async fn run_client(id: i32, port: u16, seed: u64, stop: Arc<AtomicBool>) -> ClientLog {
    let mut rng =
        StdRng::seed_from_u64(seed ^ (0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(id as u64 + 1)));
    let mut log = ClientLog::new(id);
    let mut conn: Option<Conn> = None;
    let mut seq: i32 = 0;
    while !stop.load(Ordering::Relaxed) {
        if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            conn = None;
            let t = Instant::now();
            match tokio::time::timeout(STEP, connect(port)).await {
                Ok(Ok(c)) => {
                    log.record(Op::Connect, Outcome::Ok, t.elapsed());
                    conn = Some(c);
                }
                Ok(Err(err)) => {
                    let outcome = match err.as_db_error() {
                        Some(db) => {
                            let code = db.code().code().to_string();
                            log.messages
                                .entry(format!("{code}/{:?}", Op::Connect))
                                .or_insert_with(|| format!("{}: {}", db.severity(), db.message()));
                            Outcome::Sqlstate(code, db.severity().to_string())
                        }
                        None => Outcome::Bare(first_line(&err.to_string())),
                    };
                    log.record(Op::Connect, outcome, t.elapsed());
                    tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
                    continue;
                }
                Err(_) => {
                    log.record(Op::Connect, Outcome::Hung, t.elapsed());
                    continue;
                }
            }
        }
        let Some(c) = conn.as_ref() else { continue };
        log.attempts += 1;
        let pick: f64 = rng.random();
        let keep = if pick < 0.15 {
            run_pipelined(id, &mut seq, c, &mut log).await
        } else if pick < 0.75 {
            // Autocommit INSERT: one row, acknowledged when it returns Ok.
            seq += 1;
            let key = (id, seq);
            log.attempted.push(key);
            let t = Instant::now();
            let (op, result) = if pick < 0.45 {
                (Op::Insert, run_simple(c, &insert_sql(id, seq, false)).await)
            } else if pick < 0.55 {
                (
                    Op::InsertSlow,
                    run_simple(c, &insert_sql(id, seq, true)).await,
                )
            } else {
                let payload = format!("ext c{id} s{seq}");
                let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 3] = [
                    (&id, Type::INT4),
                    (&seq, Type::INT4),
                    (&payload, Type::TEXT),
                ];
                let fut = c.client.execute_typed(
                    "INSERT INTO ledger (client, seq, payload) VALUES ($1, $2, $3)",
                    &params,
                );
                let r = match tokio::time::timeout(STEP, fut).await {
                    Err(_) => Err(()),
                    Ok(r) => Ok(r),
                };
                (Op::InsertExtended, r)
            };
            match result {
                Ok(Ok(n)) => {
                    log.record(op, Outcome::Ok, t.elapsed());
                    log.acked.push(key);
                    if n != 1 {
                        log.wrong_counts
                            .push(format!("{op:?} of ({id}, {seq}) acknowledged {n} rows"));
                    }
                    true
                }
                Ok(Err(err)) => !log.record_err(op, &err, c, t.elapsed()),
                Err(()) => {
                    log.record(op, Outcome::Hung, t.elapsed());
                    false
                }
            }
        } else {
            run_transaction(id, &mut seq, c, &mut rng, &mut log).await
        };
        if !keep {
            // The session ended (FATAL, bare close) or hung: start afresh
            // rather than wait for tokio-postgres to notice the close.
            conn = None;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(PAUSE_MS))).await;
    }
    log
}

/// Three autocommit INSERTs issued at once on one connection: tokio-postgres
/// writes them back to back (each its own Sync) before reading any answer.
/// Each row is acknowledged by its own answer. Returns false when the
/// connection must be dropped.
async fn run_pipelined(id: i32, seq: &mut i32, c: &Conn, log: &mut ClientLog) -> bool {
    let keys: Vec<(i32, i32)> = (1..=3).map(|k| (id, *seq + k)).collect();
    *seq += 3;
    log.attempted.extend(&keys);
    let t = Instant::now();
    let sql = "INSERT INTO ledger (client, seq, payload) VALUES ($1, $2, 'pipelined')";
    let runs = keys.iter().map(|(client, seq)| async move {
        let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
            [(client, Type::INT4), (seq, Type::INT4)];
        c.client.execute_typed(sql, &params).await
    });
    let Ok(results) = tokio::time::timeout(STEP, futures_util::future::join_all(runs)).await else {
        log.record(Op::InsertPipelined, Outcome::Hung, t.elapsed());
        return false;
    };
    let mut keep = true;
    for (key, result) in keys.into_iter().zip(results) {
        match result {
            Ok(n) => {
                log.record(Op::InsertPipelined, Outcome::Ok, t.elapsed());
                log.acked.push(key);
                if n != 1 {
                    log.wrong_counts
                        .push(format!("pipelined INSERT of {key:?} acknowledged {n} rows"));
                }
            }
            Err(err) => keep &= !log.record_err(Op::InsertPipelined, &err, c, t.elapsed()),
        }
    }
    keep
}

/// What a raw client saw for one step.
enum RawStep {
    /// The step's answer, ending with the wanted message.
    Answered(Vec<BackendMsg>),
    /// The connection closed or broke.
    Closed(String),
    /// No answer within [`STEP`].
    Hung,
}

/// Sends `bytes` and reads until a message with tag `until` (or an
/// ErrorResponse, when `or_error`).
async fn raw_step(raw: &mut RawClient, bytes: &[u8], until: u8, or_error: bool) -> RawStep {
    if let Err(err) = raw.send(bytes).await {
        return RawStep::Closed(first_line(&err.to_string()));
    }
    let deadline = Instant::now() + STEP;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return RawStep::Hung;
        }
        match raw.read_message(left).await {
            Ok(msg) => {
                let done = msg.tag == until || or_error && msg.tag == b'E';
                got.push(msg);
                if done {
                    return RawStep::Answered(got);
                }
            }
            Err(err) if err.to_string().contains("timed out") => return RawStep::Hung,
            Err(err) => return RawStep::Closed(first_line(&err.to_string())),
        }
    }
}

/// The first ErrorResponse among `msgs` as an outcome, with its message.
fn raw_error(msgs: &[BackendMsg]) -> Option<(Outcome, String)> {
    let error = msgs.iter().find(|m| m.tag == b'E')?;
    let fields = error_fields(&error.body);
    let get = |c: u8| {
        fields
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    Some((Outcome::Sqlstate(get(b'C'), get(b'S')), get(b'M')))
}

/// A client speaking the extended protocol by hand in Flush-delimited
/// batches: INSERT behind a Flush (its CommandComplete read), a second one
/// the same way, then the Sync that commits both (they share the implicit
/// transaction). Both rows are acknowledged only by a ReadyForQuery with no
/// error on the way.
async fn run_flush_client(id: i32, port: u16, seed: u64, stop: Arc<AtomicBool>) -> ClientLog {
    let mut rng =
        StdRng::seed_from_u64(seed ^ (0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(id as u64 + 1)));
    let mut log = ClientLog::new(id);
    let mut conn: Option<RawClient> = None;
    let mut seq: i32 = 0;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            let t = Instant::now();
            let login = async {
                let mut raw = RawClient::connect(port).await?;
                raw.login(USER, PASSWORD, "app").await?;
                Ok::<_, anyhow::Error>(raw)
            };
            match tokio::time::timeout(STEP, login).await {
                Ok(Ok(raw)) => {
                    log.record(Op::Connect, Outcome::Ok, t.elapsed());
                    conn = Some(raw);
                }
                Ok(Err(err)) => {
                    let text = first_line(&format!("{err:#}"));
                    let outcome = match text.split_once("login failed: ") {
                        Some((_, rest)) => Outcome::Sqlstate(
                            rest.split(':').next().unwrap_or_default().to_string(),
                            "FATAL".to_string(),
                        ),
                        None => Outcome::Bare(text),
                    };
                    log.record(Op::Connect, outcome, t.elapsed());
                    tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
                    continue;
                }
                Err(_) => {
                    log.record(Op::Connect, Outcome::Hung, t.elapsed());
                    continue;
                }
            }
        }
        let Some(raw) = conn.as_mut() else { continue };
        log.attempts += 1;
        let keys = [(id, seq + 1), (id, seq + 2)];
        seq += 2;
        log.attempted.extend(keys);
        let mut failed = false;
        let mut keep = true;
        for (client, s) in keys {
            let mut batch = BytesMut::new();
            let sql = format!(
                "INSERT INTO ledger (client, seq, payload) VALUES ({client}, {s}, 'flush')"
            );
            if ext::parse("", &sql, &mut batch).is_err() || ext::bind("", &mut batch).is_err() {
                break;
            }
            let _ = ext::execute(&mut batch);
            ext::flush(&mut batch);
            let t = Instant::now();
            match raw_step(raw, &batch, b'C', true).await {
                RawStep::Answered(msgs) => match raw_error(&msgs) {
                    None => log.record(Op::FlushInsert, Outcome::Ok, t.elapsed()),
                    Some((outcome, message)) => {
                        log.note_raw_error(Op::FlushInsert, &outcome, message);
                        keep &= !matches!(&outcome, Outcome::Sqlstate(_, sev) if sev != "ERROR");
                        log.record(Op::FlushInsert, outcome, t.elapsed());
                        failed = true;
                    }
                },
                RawStep::Closed(how) => {
                    log.record(Op::FlushInsert, Outcome::Bare(how), t.elapsed());
                    keep = false;
                }
                RawStep::Hung => {
                    log.record(Op::FlushInsert, Outcome::Hung, t.elapsed());
                    keep = false;
                }
            }
            if failed || !keep {
                break;
            }
        }
        if keep {
            let mut sync = BytesMut::new();
            ext::sync(&mut sync);
            let t = Instant::now();
            match raw_step(raw, &sync, b'Z', false).await {
                RawStep::Answered(msgs) => match raw_error(&msgs) {
                    None if !failed => {
                        log.record(Op::FlushSync, Outcome::Ok, t.elapsed());
                        log.acked.extend(keys);
                    }
                    None => {}
                    Some((outcome, message)) => {
                        log.note_raw_error(Op::FlushSync, &outcome, message);
                        keep &= !matches!(&outcome, Outcome::Sqlstate(_, sev) if sev != "ERROR");
                        log.record(Op::FlushSync, outcome, t.elapsed());
                    }
                },
                RawStep::Closed(how) => {
                    log.record(Op::FlushSync, Outcome::Bare(how), t.elapsed());
                    keep = false;
                }
                RawStep::Hung => {
                    log.record(Op::FlushSync, Outcome::Hung, t.elapsed());
                    keep = false;
                }
            }
        }
        if !keep {
            conn = None;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(PAUSE_MS))).await;
    }
    log
}

/// BEGIN; INSERT; INSERT; COMMIT — both rows acknowledged only when COMMIT
/// returns Ok. Any error: ROLLBACK (if the connection is still open).
/// Returns false when the connection must be dropped.
async fn run_transaction(
    id: i32,
    seq: &mut i32,
    c: &Conn,
    rng: &mut StdRng,
    log: &mut ClientLog,
) -> bool {
    let first = *seq + 1;
    let second = *seq + 2;
    *seq += 2;
    log.attempted.push((id, first));
    log.attempted.push((id, second));
    let slow_second = rng.random_bool(0.3);
    let first_sql = insert_sql(id, first, false);
    let second_sql = insert_sql(id, second, slow_second);
    let steps: [(Op, &str, Option<u64>); 4] = [
        (Op::Begin, "BEGIN", None),
        (Op::TxInsert, &first_sql, Some(1)),
        (Op::TxInsert, &second_sql, Some(1)),
        (Op::Commit, "COMMIT", None),
    ];
    let mut trace = String::new();
    for (op, sql, expect) in steps {
        let t = Instant::now();
        match run_simple(c, sql).await {
            Ok(Ok(n)) => {
                log.record(op, Outcome::Ok, t.elapsed());
                if let Some(want) = expect {
                    if n != want {
                        log.wrong_counts.push(format!(
                            "{op:?} in transaction of client {id} acknowledged {n} rows"
                        ));
                    }
                }
                trace.push_str(&format!("{op:?} ok at {} ", utc_now()));
                if op == Op::Commit {
                    log.acked.push((id, first));
                    log.acked.push((id, second));
                    log.traces.insert((id, first), trace.clone());
                    log.traces.insert((id, second), trace.clone());
                }
            }
            Ok(Err(err)) => {
                if log.record_err(op, &err, c, t.elapsed()) {
                    return false;
                }
                if op == Op::Commit {
                    return true;
                }
                // An ERROR inside the transaction (§3: 08006 leaves it
                // aborted, status E until ROLLBACK): roll back, carry on.
                let t = Instant::now();
                return match run_simple(c, "ROLLBACK").await {
                    Ok(Ok(_)) => {
                        log.record(Op::Rollback, Outcome::Ok, t.elapsed());
                        true
                    }
                    Ok(Err(err)) => !log.record_err(Op::Rollback, &err, c, t.elapsed()),
                    Err(()) => {
                        log.record(Op::Rollback, Outcome::Hung, t.elapsed());
                        false
                    }
                };
            }
            Err(()) => {
                log.record(op, Outcome::Hung, t.elapsed());
                return false;
            }
        }
    }
    true
}

// ---------------------------------------------------------------------------
// Chaos
// ---------------------------------------------------------------------------

#[derive(Default)]
struct FaultLog {
    /// Injected faults by kind.
    count: BTreeMap<&'static str, u64>,
    /// Backend flows open through the relay when an rst_all / fin_all hit.
    flows_hit: u64,
    /// Backends actually terminated by pg_terminate_backend.
    terminated: u64,
    /// Fault injections that failed (the test harness, not Suture).
    failures: Vec<String>,
    timeline: Vec<String>,
}

async fn chaos(rig: &Rig, seed: u64, run: Duration) -> FaultLog {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = FaultLog::default();
    let start = Instant::now();
    let deadline = start + run;
    let restart_at = start + run.mul_f64(rng.random_range(0.3..0.6));
    let mut restarted = false;
    let mut su: Option<Client> = None;
    loop {
        let gap = Duration::from_millis(rng.random_range(FAULT_GAP_MS));
        let now = Instant::now();
        if now + gap >= deadline {
            break;
        }
        tokio::time::sleep(gap).await;
        let at = start.elapsed().as_millis();
        if !restarted && Instant::now() >= restart_at {
            restarted = true;
            su = None;
            let began = Instant::now();
            let result = rig.pg.restart().await;
            *log.count.entry("server restart").or_insert(0) += 1;
            log.timeline.push(format!(
                "{at:>6} ms  server restart (took {:?})",
                began.elapsed()
            ));
            if let Err(err) = result {
                log.failures.push(format!("restart: {err:#}"));
            }
            continue;
        }
        match rng.random_range(0..6) {
            0 => {
                let flows = rig.relay.flow_count() as u64;
                log.flows_hit += flows;
                *log.count.entry("relay rst_all").or_insert(0) += 1;
                log.timeline
                    .push(format!("{at:>6} ms  rst_all ({flows} flows)"));
                if let Err(err) = rig.relay.rst_all().await {
                    log.failures.push(format!("rst_all: {err:#}"));
                }
            }
            1 => {
                let flows = rig.relay.flow_count() as u64;
                log.flows_hit += flows;
                *log.count.entry("relay fin_all").or_insert(0) += 1;
                log.timeline
                    .push(format!("{at:>6} ms  fin_all ({flows} flows)"));
                if let Err(err) = rig.relay.fin_all().await {
                    log.failures.push(format!("fin_all: {err:#}"));
                }
            }
            2 => {
                // Every open flow is reset after a few more bytes either way:
                // mid-request, mid-reply, between messages.
                let (direction, name) = if rng.random_bool(0.5) {
                    (Direction::ToServer, "relay cut towards server")
                } else {
                    (Direction::ToClient, "relay cut towards client")
                };
                let n = rng.random_range(0..300);
                *log.count.entry(name).or_insert(0) += 1;
                log.timeline
                    .push(format!("{at:>6} ms  {name} after {n} bytes"));
                if let Err(err) = rig.relay.cut_open_after(direction, n).await {
                    log.failures.push(format!("cut: {err:#}"));
                }
            }
            3 | 4 => {
                // A black hole or a backend that stops reading, for a moment
                // (a network blip): requests in flight must simply be late.
                let pause = Duration::from_millis(rng.random_range(200..900));
                let name = if rng.random_bool(0.5) {
                    let r = rig.relay.blackhole_all().await;
                    if let Err(err) = r {
                        log.failures.push(format!("blackhole: {err:#}"));
                    }
                    "relay black hole"
                } else {
                    let r = rig.relay.stop_reading_all().await;
                    if let Err(err) = r {
                        log.failures.push(format!("stop reading: {err:#}"));
                    }
                    "relay stop reading"
                };
                *log.count.entry(name).or_insert(0) += 1;
                log.timeline
                    .push(format!("{at:>6} ms  {name} for {pause:?}"));
                tokio::time::sleep(pause).await;
                if let Err(err) = rig.relay.resume_all().await {
                    log.failures.push(format!("resume: {err:#}"));
                }
            }
            _ => {
                let want = rng.random_range(1..=3_usize);
                match terminate_some(rig, &mut su, &mut rng, want).await {
                    Ok(n) => {
                        log.terminated += n;
                        *log.count.entry("pg_terminate_backend").or_insert(0) += 1;
                        log.timeline
                            .push(format!("{at:>6} ms  pg_terminate_backend x{n}"));
                    }
                    Err(err) => {
                        su = None;
                        log.failures.push(format!("terminate: {err:#}"));
                    }
                }
            }
        }
    }
    if !restarted {
        // Very short runs: the restart still happens once.
        let at = start.elapsed().as_millis();
        *log.count.entry("server restart").or_insert(0) += 1;
        log.timeline
            .push(format!("{at:>6} ms  server restart (late)"));
        if let Err(err) = rig.pg.restart().await {
            log.failures.push(format!("restart: {err:#}"));
        }
    }
    log
}

/// Terminates up to `want` random backends of role `app` (Suture's).
async fn terminate_some(
    rig: &Rig,
    su: &mut Option<Client>,
    rng: &mut StdRng,
    want: usize,
) -> anyhow::Result<u64> {
    if su.as_ref().is_none_or(|c| c.is_closed()) {
        *su = Some(rig.superuser().await?);
    }
    let Some(client) = su.as_ref() else {
        return Ok(0);
    };
    let rows = client
        .query(
            "SELECT pid FROM pg_stat_activity \
             WHERE usename = $1 AND backend_type = 'client backend'",
            &[&USER],
        )
        .await?;
    let mut pids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    let mut done = 0;
    for _ in 0..want.min(pids.len()) {
        let pid = pids.swap_remove(rng.random_range(0..pids.len()));
        let row = client
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await?;
        if row.get::<_, bool>(0) {
            done += 1;
        }
    }
    Ok(done)
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

fn run_secs() -> u64 {
    std::env::var("SUTURE_LEDGER_SECS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(DEFAULT_SECS)
}

fn seed() -> u64 {
    std::env::var("SUTURE_LEDGER_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random)
}

fn allowed(code: &str) -> bool {
    ALLOWED_SQLSTATES.iter().any(|(c, _)| *c == code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_no_lost_ack_no_double_execution_truthful_errors() -> anyhow::Result<()> {
    let secs = run_secs();
    let seed = seed();
    eprintln!("ledger: {CLIENTS} clients, {secs} s, seed {seed} (SUTURE_LEDGER_SEED={seed} to repeat the chaos schedule)");
    let rig = Rig::start(&[
        // Logins are kept cheap (see [`USER`]): clients use trust on the
        // loopback listener.
        ("client_auth", "\"trust\""),
        // Session pooling sized like the application's own pool: one
        // backend per client and not one more, so every heal must happen
        // in the slot its session already holds (DESIGN §4).
        ("max_size", &CLIENTS.to_string()),
        ("min_idle", "0"),
        // The restart takes well under a second; a shorter hold than the shared
        // config's 30 s keeps a slow machine's logins from looking like hangs.
        ("failover_hold", "\"10s\""),
    ])
    .await?;
    {
        let su = rig.superuser().await?;
        // No unique index: a statement executed twice shows as a duplicate.
        su.batch_execute(
            "CREATE TABLE ledger (client int, seq int, payload text); \
             GRANT ALL ON ledger TO md5user",
        )
        .await?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let port = rig.suture.port();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let stop = Arc::clone(&stop);
            if id < CLIENTS - FLUSH_CLIENTS {
                tokio::spawn(run_client(id, port, seed, stop))
            } else {
                tokio::spawn(run_flush_client(id, port, seed, stop))
            }
        })
        .collect();
    // Let every client connect before the first fault.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let faults = chaos(&rig, seed, Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for task in clients {
        logs.push(task.await.context("client task panicked")?);
    }

    // Read the ledger straight from PostgreSQL.
    let su = rig.superuser().await?;
    let rows = su
        .query(
            "SELECT client, seq, count(*) FROM ledger GROUP BY client, seq",
            &[],
        )
        .await?;
    let mut present: HashMap<(i32, i32), i64> = HashMap::new();
    for row in &rows {
        present.insert((row.get(0), row.get(1)), row.get(2));
    }
    let total_rows: i64 = present.values().sum();

    let acked: BTreeSet<(i32, i32)> = logs.iter().flat_map(|l| l.acked.iter().copied()).collect();
    let attempted: BTreeSet<(i32, i32)> = logs
        .iter()
        .flat_map(|l| l.attempted.iter().copied())
        .collect();
    let acked_total: usize = logs.iter().map(|l| l.acked.len()).sum();
    let attempts: u64 = logs.iter().map(|l| l.attempts).sum();

    let mut missing: Vec<(i32, i32)> = acked
        .iter()
        .filter(|k| !present.contains_key(k))
        .copied()
        .collect();
    missing.sort_unstable();
    let mut duplicates: Vec<((i32, i32), i64)> = present
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(k, n)| (*k, *n))
        .collect();
    duplicates.sort_unstable();
    let mut never_sent: Vec<(i32, i32)> = present
        .keys()
        .filter(|k| !attempted.contains(k))
        .copied()
        .collect();
    never_sent.sort_unstable();
    let present_unacked = present.keys().filter(|k| !acked.contains(k)).count();

    let mut outcomes: BTreeMap<(Op, Outcome), u64> = BTreeMap::new();
    let mut messages: BTreeMap<String, String> = BTreeMap::new();
    let mut wrong_counts = Vec::new();
    let mut latency: BTreeMap<Op, (Duration, Duration)> = BTreeMap::new();
    for l in &logs {
        for (op, (max, total)) in &l.latency {
            let slot = latency.entry(*op).or_default();
            slot.0 = slot.0.max(*max);
            slot.1 += *total;
        }
        for (k, n) in &l.outcomes {
            *outcomes.entry(k.clone()).or_insert(0) += n;
        }
        for (code, msg) in &l.messages {
            messages.entry(code.clone()).or_insert_with(|| msg.clone());
        }
        wrong_counts.extend(l.wrong_counts.iter().cloned());
    }
    let mut by_code: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut bare: BTreeMap<String, BTreeMap<Op, u64>> = BTreeMap::new();
    let mut hung: BTreeMap<Op, u64> = BTreeMap::new();
    let mut ok: BTreeMap<Op, u64> = BTreeMap::new();
    for ((op, outcome), n) in &outcomes {
        match outcome {
            Outcome::Ok => *ok.entry(*op).or_insert(0) += n,
            Outcome::Sqlstate(code, severity) => {
                *by_code
                    .entry(code.clone())
                    .or_default()
                    .entry(format!("{op:?}/{severity}"))
                    .or_insert(0) += n
            }
            Outcome::Bare(what) => {
                *bare
                    .entry(what.clone())
                    .or_default()
                    .entry(*op)
                    .or_insert(0) += n
            }
            Outcome::Hung => *hung.entry(*op).or_insert(0) += n,
        }
    }
    let disallowed: Vec<&String> = by_code.keys().filter(|c| !allowed(c)).collect();
    let bare_total: u64 = bare.values().flat_map(|m| m.values()).sum();

    // ---- summary ----
    let mut s = String::new();
    s.push_str(&format!(
        "\n==== ledger summary (seed {seed}, {secs} s, {CLIENTS} clients) ====\n"
    ));
    s.push_str(&format!(
        "attempts (autocommit statements + transactions): {attempts}\n"
    ));
    s.push_str(&format!(
        "rows acknowledged           : {acked_total} ({} distinct)\n",
        acked.len()
    ));
    s.push_str(&format!(
        "keys attempted              : {}\n",
        attempted.len()
    ));
    s.push_str(&format!(
        "keys present                : {} ({total_rows} rows)\n",
        present.len()
    ));
    s.push_str(&format!("present, not acknowledged   : {present_unacked} (fine: outcome was unknown to the client)\n"));
    s.push_str(&format!(
        "acknowledged, missing       : {}\n",
        missing.len()
    ));
    s.push_str(&format!(
        "duplicates                  : {}\n",
        duplicates.len()
    ));
    s.push_str(&format!(
        "present, never attempted    : {}\n",
        never_sent.len()
    ));
    s.push_str(&format!(
        "wrong acknowledged row count: {}\n",
        wrong_counts.len()
    ));
    s.push_str("successes by step (and over all outcomes: slowest, total time):\n");
    for (op, (max, total)) in &latency {
        let n = ok.get(op).copied().unwrap_or(0);
        s.push_str(&format!(
            "  {op:?}: {n} ok; slowest {max:.2?}, total {total:.2?}\n"
        ));
    }
    s.push_str("errors by SQLSTATE:\n");
    for (code, ops) in &by_code {
        let verdict = if allowed(code) {
            "allowed"
        } else {
            "NOT ALLOWED"
        };
        s.push_str(&format!("  {code} [{verdict}] {ops:?}\n"));
        for (key, msg) in messages.range(format!("{code}/")..format!("{code}0")) {
            s.push_str(&format!("      {key}: {msg}\n"));
        }
    }
    // Statements (and logins) that failed with no ErrorResponse at all: the
    // client saw its connection close or break, the bare EOF §3 says Suture
    // exists to prevent.
    let notices = NOTICES.lock().map(|n| n.clone()).unwrap_or_default();
    s.push_str("notices to clients by SQLSTATE:\n");
    for (code, (n, msg)) in &notices {
        s.push_str(&format!("  {code}: {n} (e.g. {msg})\n"));
    }
    s.push_str(&format!("bare closes (no SQLSTATE): {bare_total}\n"));
    for (what, ops) in &bare {
        s.push_str(&format!("  {what}: {ops:?}\n"));
    }
    s.push_str(&format!("hung (no reply within {STEP:?}): {hung:?}\n"));
    for hang in logs.iter().flat_map(|l| &l.hangs) {
        s.push_str(&format!("  {hang}\n"));
    }
    s.push_str("faults injected:\n");
    for (kind, n) in &faults.count {
        s.push_str(&format!("  {kind}: {n}\n"));
    }
    s.push_str(&format!(
        "  (flows open at rst/fin: {}, backends terminated: {})\n",
        faults.flows_hit, faults.terminated
    ));
    for f in &faults.failures {
        s.push_str(&format!("  fault injection failed: {f}\n"));
    }
    s.push_str("timeline:\n");
    for t in &faults.timeline {
        s.push_str(&format!("  {t}\n"));
    }
    s.push_str(&suture_log_digest(&rig.suture.log_contents()));
    eprintln!("{s}");

    ensure!(
        faults.failures.is_empty(),
        "fault injection failed, the run proves less than it claims: {:?}",
        faults.failures
    );
    ensure!(
        !acked.is_empty() && faults.count.values().sum::<u64>() > 0,
        "nothing was acknowledged or no fault was injected: the run proves nothing"
    );
    for key in missing.iter().take(10) {
        let trace = logs
            .iter()
            .find_map(|l| l.traces.get(key))
            .map(String::as_str)
            .unwrap_or("autocommit INSERT");
        eprintln!("missing acknowledged row {key:?}: {trace}");
    }
    ensure!(
        missing.is_empty(),
        "{} acknowledged rows are missing (first: {:?}) (seed {seed})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    ensure!(
        duplicates.is_empty(),
        "{} rows exist more than once — something that had run was replayed (first: {:?}) (seed {seed})",
        duplicates.len(),
        &duplicates[..duplicates.len().min(10)]
    );
    ensure!(
        never_sent.is_empty(),
        "rows present that no client sent: {:?}",
        &never_sent[..never_sent.len().min(10)]
    );
    ensure!(
        wrong_counts.is_empty(),
        "INSERTs acknowledged with a wrong row count: {:?}",
        &wrong_counts[..wrong_counts.len().min(10)]
    );
    ensure!(
        disallowed.is_empty(),
        "clients saw SQLSTATEs §3 does not allow: {disallowed:?} (seed {seed})"
    );
    ensure!(
        bare_total == 0,
        "{bare_total} statements failed with a bare close, no SQLSTATE (seed {seed}): {bare:?}"
    );
    ensure!(
        hung.is_empty(),
        "statements got no answer within {STEP:?} (seed {seed}): {hung:?}"
    );
    Ok(())
}

/// Counts Suture's healing decisions and refusals from its log.
fn suture_log_digest(log: &str) -> String {
    let mut decisions: BTreeMap<String, u64> = BTreeMap::new();
    let mut events: BTreeMap<String, u64> = BTreeMap::new();
    for line in log.lines() {
        let line = strip_ansi(line);
        if let Some(i) = line.find("decision=") {
            let rest = &line[i + "decision=".len()..];
            let d = rest.split_whitespace().next().unwrap_or_default();
            *decisions.entry(d.to_string()).or_insert(0) += 1;
        }
        for marker in [
            "request replayed on a new backend",
            "backend swapped under an idle session",
            "client refused",
            "session state could not be restored",
            "client protocol violation",
            "backend reset failed",
        ] {
            if line.contains(marker) {
                *events.entry(marker.to_string()).or_insert(0) += 1;
            }
        }
        if line.contains(" ERROR ") || line.contains("panicked") {
            *events
                .entry(format!("ERROR/panic: {}", tail(&line, 160)))
                .or_insert(0) += 1;
        }
    }
    let mut s = String::from("suture log: backend losses by decision:\n");
    for (d, n) in &decisions {
        s.push_str(&format!("  {d}: {n}\n"));
    }
    s.push_str("suture log: events:\n");
    for (e, n) in &events {
        s.push_str(&format!("  {e}: {n}\n"));
    }
    s
}

fn tail(s: &str, n: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    chars[chars.len().saturating_sub(n)..].iter().collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
