//! Issue 10: hostile and careless clients. Each test plays a client that an
//! attacker or a buggy driver would be, against a real PostgreSQL behind
//! Suture, and checks what the operator and the other clients see: bounded
//! logs, no stall when the log reader stalls, no hint that a user exists, a
//! protocol violation that ends only its own session, a refusal at the
//! connection cap that libpq reads, memory given back and bounded, and write
//! timeouts that measure progress.

mod support;

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use bytes::BytesMut;
use postgres_protocol::message::frontend;
use support::raw_client::{error_fields, BackendMsg};
use support::rig::{config_via, select_int, Rig, STEP};
use support::{dsn_for, PgServer, RawClient, SutureProc};
use tokio_postgres::NoTls;

/// A config for `pg` with the `[pools.app]` keys in `set`.
fn config(pg: &PgServer, set: &[(&str, &str)]) -> anyhow::Result<String> {
    config_via(pg, pg.port(), set)
}

/// The message text of the first ErrorResponse among `msgs`.
fn message_of(msgs: &[BackendMsg]) -> String {
    field_of(msgs, b'M')
}

fn field_of(msgs: &[BackendMsg], code: u8) -> String {
    msgs.iter()
        .find(|m| m.tag == b'E')
        .and_then(|m| error_fields(&m.body).into_iter().find(|(c, _)| *c == code))
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// Reads messages until an ErrorResponse or the connection closes.
async fn read_error(raw: &mut RawClient) -> Vec<BackendMsg> {
    let mut got = Vec::new();
    while let Ok(msg) = raw.read_message(STEP).await {
        let done = msg.tag == b'E';
        got.push(msg);
        if done {
            break;
        }
    }
    got
}

/// The longest run of `c` in `text`.
fn longest_run(text: &str, c: char) -> usize {
    text.split(|x| x != c).map(str::len).max().unwrap_or(0)
}

// ---------------------------------------------------------------------------
// 1. Unauthenticated log flooding
// ---------------------------------------------------------------------------

/// Clients that log in with a 9,900-byte unknown user name, or offer a
/// 9,000-byte SCRAM mechanism name, cost the operator a few hundred bytes of
/// log per try at most (names are cut to 63 bytes, as PostgreSQL does, and
/// repeated lines are rate-limited), and the name they get back is cut too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_tries_log_little_and_get_bounded_names_back() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let suture = SutureProc::start(&config(&pg, &[("min_idle", "0")])?).await?;
    const TRIES: usize = 40;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = suture.log_contents().len();
    for i in 0..TRIES {
        let user = format!("{}{i}", "u".repeat(9_900));
        let mut raw = RawClient::connect(suture.port()).await?;
        let err = match raw.login(&user, "wrong", "app").await {
            Ok(_) => bail!("an unknown user logged in"),
            Err(err) => format!("{err:#}"),
        };
        ensure!(
            longest_run(&err, 'u') <= 63,
            "the client got {} bytes of its own user name back",
            longest_run(&err, 'u')
        );
    }
    for _ in 0..TRIES {
        let mut raw = RawClient::connect(suture.port()).await?;
        raw.send_startup("app", "app").await?;
        raw.read_until(b'R', STEP).await?;
        let mut out = BytesMut::new();
        frontend::sasl_initial_response(&"M".repeat(9_000), b"n,,n=,r=abc", &mut out)?;
        raw.send(&out).await?;
        let reply = read_error(&mut raw).await;
        let message = message_of(&reply);
        ensure!(
            longest_run(&message, 'M') <= 63,
            "the client got {} bytes of its mechanism name back",
            longest_run(&message, 'M')
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = suture.log_contents().len() - before;
    let per_try = grown / (2 * TRIES);
    eprintln!("log bytes per unauthenticated try: {per_try}");
    ensure!(
        per_try < 400,
        "{per_try} log bytes per unauthenticated try ({grown} in all)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Logging never blocks the data path
// ---------------------------------------------------------------------------

/// Suture's stderr goes to a pipe nobody reads (a log shipper that fell
/// behind) while many clients come and go with debug logging on. Another
/// client's `SELECT 1` must stay fast, and once the reader catches up the log
/// says how many lines were dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_log_reader_never_stalls_a_session() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let cfg = config(&pg, &[("min_idle", "2"), ("client_auth", "\"trust\"")])?;
    let (suture, pipe) = SutureProc::start_with(&cfg, Some("suture=debug,info"), true).await?;
    let mut pipe = pipe.context("no stderr pipe")?;
    let port = suture.port();
    let probe = support::rig::connect_watched(&dsn_for(port, "app", "app-secret", "app")).await?;
    let stop = Arc::new(AtomicBool::new(false));
    // Enough short sessions (two debug lines each) to fill the log queue (4,096 lines) and
    // the pipe several times over, however slow the machine.
    const FLOOD_SESSIONS: u64 = 6_000;
    let sessions = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut flood = Vec::new();
    for _ in 0..8 {
        let stop = Arc::clone(&stop);
        let sessions = Arc::clone(&sessions);
        flood.push(tokio::spawn(async move {
            let dsn = dsn_for(port, "md5user", "md5-secret", "app");
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Ok((client, conn))) =
                    tokio::time::timeout(STEP, tokio_postgres::connect(&dsn, NoTls)).await
                {
                    tokio::spawn(conn);
                    let _ = client.simple_query("SELECT 1").await;
                    sessions.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut worst = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until && sessions.load(Ordering::Relaxed) < FLOOD_SESSIONS {
        let started = Instant::now();
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            probe.client.query_one("SELECT 1::int4", &[]),
        )
        .await;
        worst = worst.max(started.elapsed());
        match got {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => bail!("SELECT 1 failed while the log reader stalled: {err}"),
            Err(_) => bail!("SELECT 1 got no answer in 10 s while the log reader stalled"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.await?;
    }
    let sessions = sessions.load(Ordering::Relaxed);
    eprintln!("{sessions} flood sessions; another session's worst SELECT 1: {worst:?}");
    ensure!(
        sessions >= FLOOD_SESSIONS,
        "only {sessions} flood sessions in 30 s: the log may not have filled"
    );
    ensure!(
        worst < Duration::from_secs(1),
        "a session waited {worst:?} while the log reader stalled"
    );
    // The reader catches up: the log says what it lost.
    let found = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&found);
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        // Ends when Suture is gone (the pipe closes).
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            text.extend_from_slice(&chunk[..n]);
            if !seen.load(Ordering::Relaxed)
                && String::from_utf8_lossy(&text).contains("log lines dropped")
            {
                seen.store(true, Ordering::Relaxed);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !found.load(Ordering::Relaxed) && Instant::now() < deadline {
        // Something to log once the reader is back.
        let _ = select_int(&probe.client, "SELECT 2::int4").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(probe);
    drop(suture);
    tokio::task::spawn_blocking(move || reader.join())
        .await?
        .map_err(|_| anyhow::anyhow!("log reader panicked"))?;
    ensure!(
        found.load(Ordering::Relaxed),
        "the log does not say that lines were dropped"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. No user enumeration
// ---------------------------------------------------------------------------

/// The salt and iteration count of the SCRAM exchange for `user`.
async fn scram_salt(port: u16, user: &str) -> anyhow::Result<String> {
    let mut raw = RawClient::connect(port).await?;
    raw.send_startup(user, "app").await?;
    raw.read_until(b'R', STEP).await?;
    let mut out = BytesMut::new();
    frontend::sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abcdefghijkl", &mut out)?;
    raw.send(&out).await?;
    let reply = raw.read_until(b'R', STEP).await?;
    let body = &reply.last().context("no SASLContinue")?.body;
    let text = String::from_utf8_lossy(body.get(4..).unwrap_or_default()).into_owned();
    let salt = text
        .split(',')
        .filter(|part| part.starts_with("s=") || part.starts_with("i="))
        .collect::<Vec<_>>()
        .join(",");
    ensure!(!salt.is_empty(), "no salt in {text:?}");
    Ok(salt)
}

/// An unknown user gets the same salt every time, as a configured one does,
/// so two tries do not tell whether a user exists; different unknown users
/// get different salts, as different real users would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_get_a_stable_salt() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let suture = SutureProc::start(&config(&pg, &[("min_idle", "0")])?).await?;
    let known = [
        scram_salt(suture.port(), "app").await?,
        scram_salt(suture.port(), "app").await?,
    ];
    ensure!(known[0] == known[1], "a configured user's salt changed");
    let first = scram_salt(suture.port(), "nobody").await?;
    let again = scram_salt(suture.port(), "nobody").await?;
    ensure!(
        first == again,
        "an unknown user got a new salt on each try ({first} vs {again})"
    );
    let other = scram_salt(suture.port(), "somebody-else").await?;
    ensure!(other != first, "two unknown users share a salt");
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. A protocol violation ends its own session, not backends
// ---------------------------------------------------------------------------

/// Forty clients, one after another, each send a message type that does
/// not exist. Each gets the server's FATAL 08P01 and its connection is
/// closed; no backend is swapped in for it, so the server sees at most one
/// backend per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_end_the_session_and_do_not_churn_backends() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        for i in 0..40 {
            let mut raw = RawClient::connect(rig.suture.port()).await?;
            raw.login("app", "app-secret", "app").await?;
            raw.send(b"y\0\0\0\x04").await?;
            let reply = read_error(&mut raw).await;
            ensure!(
                field_of(&reply, b'C') == "08P01",
                "client {i}: {:?}",
                message_of(&reply)
            );
            let closed = raw.read_to_eof(Duration::from_secs(3)).await;
            ensure!(
                closed.closed,
                "client {i}: the connection stayed open after FATAL 08P01"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let backends = rig.relay.accepted_count();
        eprintln!("backends created for 40 protocol-violating clients: {backends}");
        ensure!(backends <= 41, "{backends} backends for 40 clients");
        rig.connect_app().await?;
        Ok(())
    }
    .await;
    rig.finish(result)
}

// ---------------------------------------------------------------------------
// 5. The refusal at the connection cap comes after SSL negotiation
// ---------------------------------------------------------------------------

/// At `max_client_connections`, libpq with its default `sslmode=prefer`
/// first sends an SSLRequest; it must be answered before the refusal, so
/// psql shows "sorry, too many clients already". The refusal is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_at_the_connection_cap_is_told_too_many_clients() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let suture = SutureProc::start(&config(&pg, &[("max_client_connections", "1")])?).await?;
    // The slot of the harness's own readiness probe is given back at once, but not
    // necessarily before this connect.
    let dsn = dsn_for(suture.port(), "app", "app-secret", "app");
    let mut holder = support::rig::try_connect_watched(&dsn).await?;
    for _ in 0..20 {
        if holder.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        holder = support::rig::try_connect_watched(&dsn).await?;
    }
    let holder = holder?;
    ensure!(select_int(&holder.client, "SELECT 1::int4").await? == 1);
    let psql = pg.bin_dir().join("psql");
    let port = suture.port();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(psql)
            .arg(format!(
                "host=127.0.0.1 port={port} user=app dbname=app sslmode=prefer connect_timeout=5"
            ))
            .args(["-X", "-c", "SELECT 1"])
            .env("PGPASSWORD", "app-secret")
            .output()
    })
    .await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("libpq at the cap: {}", stderr.trim());
    ensure!(
        stderr.contains("sorry, too many clients already"),
        "psql said: {stderr}"
    );
    ensure!(
        suture.log_contents().contains("too many clients"),
        "the refusal was not logged"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 6. Memory held per session, and by all of them together
// ---------------------------------------------------------------------------

/// After one 60 MiB query, an idle session holds little memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_gives_memory_back_after_a_large_query() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let suture = SutureProc::start(&config(&pg, &[("min_idle", "0")])?).await?;
    let c =
        support::rig::connect_watched(&dsn_for(suture.port(), "app", "app-secret", "app")).await?;
    ensure!(select_int(&c.client, "SELECT 1::int4").await? == 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = suture.rss_bytes()?;
    let big = format!("SELECT length('{}')", "x".repeat(60 * 1024 * 1024));
    let rows = tokio::time::timeout(Duration::from_secs(120), c.client.simple_query(&big))
        .await
        .context("the 60 MiB query got no answer in 120 s")??;
    ensure!(rows.len() >= 2, "the large query returned nothing");
    drop(big);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = suture.rss_bytes()?;
    let held = after.saturating_sub(baseline);
    eprintln!(
        "RSS of an idle session after a 60 MiB query: +{} KiB",
        held / 1024
    );
    ensure!(
        held < 16 * 1024 * 1024,
        "an idle session still holds {} MiB after a 60 MiB query",
        held / (1024 * 1024)
    );
    Ok(())
}

/// Five sessions each send most of a 59 MiB message and stop: large queries
/// are streamed to the backend, and what must be buffered whole (a Describe)
/// is bounded for all sessions together by `max_buffered_bytes`; a session
/// that would pass it gets a clear error and is closed. Suture's memory stays
/// far below 5 × 59 MiB, and other sessions keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_messages_are_bounded_for_all_sessions_together() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let cfg = config(&pg, &[("min_idle", "0"), ("max_size", "20")])?.replace(
        "[pools.app]",
        "[runtime]\nmax_buffered_bytes = \"64MiB\"\n\n[pools.app]",
    );
    let suture = SutureProc::start(&cfg).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = suture.rss_bytes()?;
    const CLAIMED: usize = 59 * 1024 * 1024;
    const SENT: usize = 40 * 1024 * 1024;
    let mut sessions = Vec::new();
    let mut refused = 0;
    for tag in [b'Q', b'D'] {
        for _ in 0..5 {
            let mut raw = RawClient::connect(suture.port()).await?;
            raw.login("app", "app-secret", "app").await?;
            let mut header = vec![tag];
            header.extend_from_slice(&u32::try_from(CLAIMED)?.to_be_bytes());
            raw.send(&header).await?;
            let chunk = vec![b'x'; 1024 * 1024];
            let mut sent = 0;
            while sent < SENT {
                if raw.send(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            if sent < SENT {
                refused += 1;
            }
            sessions.push(raw);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = suture.rss_bytes()?.saturating_sub(baseline);
    eprintln!(
        "RSS with 10 incomplete 59 MiB messages: +{} MiB; {refused} sessions refused while sending",
        grown / (1024 * 1024)
    );
    ensure!(
        grown < 150 * 1024 * 1024,
        "10 incomplete messages took {} MiB",
        grown / (1024 * 1024)
    );
    let other =
        support::rig::connect_watched(&dsn_for(suture.port(), "app", "app-secret", "app")).await?;
    ensure!(select_int(&other.client, "SELECT 1::int4").await? == 1);
    drop(sessions);
    Ok(())
}

// ---------------------------------------------------------------------------
// 7. Write timeouts measure progress
// ---------------------------------------------------------------------------

/// With `client_write_timeout = "500ms"`, a client that reads a 12 MB result slowly but
/// steadily (about 1 MB/s, far more than the socket buffers hold) gets all of it; one that
/// stops reading is cut off soon after, and the cut is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_are_served_stalled_ones_are_cut_and_logged() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let suture = SutureProc::start(&config(
        &pg,
        &[("min_idle", "0"), ("client_write_timeout", "\"500ms\"")],
    )?)
    .await?;
    const ROWS: usize = 12_000;
    let query = format!("SELECT repeat('x', 1000) FROM generate_series(1, {ROWS})");
    let mut slow = RawClient::connect(suture.port()).await?;
    slow.login("app", "app-secret", "app").await?;
    slow.send_query(&query).await?;
    let started = Instant::now();
    let mut rows = 0;
    loop {
        let msg = slow
            .read_message(STEP)
            .await
            .with_context(|| format!("the slow reader was cut off after {rows} rows"))?;
        match msg.tag {
            b'D' => {
                rows += 1;
                // About 1 MB/s: 64 rows of 1 KB every 60 ms.
                if rows % 64 == 0 {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
            }
            b'E' => bail!("slow reader got an error: {}", message_of(&[msg])),
            b'Z' => break,
            _ => {}
        }
    }
    let took = started.elapsed();
    eprintln!("steady slow reader: {rows} rows in {took:?}");
    ensure!(
        rows == ROWS && took > Duration::from_secs(5),
        "{rows} rows in {took:?}"
    );

    let mut stalled = RawClient::connect(suture.port()).await?;
    stalled.login("app", "app-secret", "app").await?;
    stalled.send_query(&query).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, closed) = stalled.drain_to_eof(Duration::from_secs(5)).await;
    ensure!(closed, "a reader that stopped was not cut off");
    ensure!(
        suture.log_contents().contains("stopped reading"),
        "the cut was not logged"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 8. Smaller ones
// ---------------------------------------------------------------------------

/// PostgreSQL answers one SSLRequest per connection; a second one is a
/// protocol violation (FATAL 08P01), not another 'N'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ssl_request_is_refused() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let suture = SutureProc::start(&config(&pg, &[("min_idle", "0")])?).await?;
    let mut raw = RawClient::connect(suture.port()).await?;
    let ssl_request = [0u8, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    raw.send(&ssl_request).await?;
    let first = raw.read_bytes(1, STEP).await?;
    ensure!(first == b"N", "first SSLRequest answered {first:?}");
    raw.send(&ssl_request).await?;
    let second = raw.read_to_eof(Duration::from_secs(3)).await;
    ensure!(
        second.bytes.first() == Some(&b'E')
            && support::find_sqlstate(&second.bytes).as_deref() == Some("08P01"),
        "second SSLRequest answered {:?}",
        String::from_utf8_lossy(&second.bytes)
    );
    ensure!(second.closed, "the connection stayed open");
    Ok(())
}

/// `auth_failure_delay` slows down failed logins (like PostgreSQL's
/// auth_delay), not successful ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failure_delay_slows_failed_logins_only() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let suture = SutureProc::start(&config(
        &pg,
        &[("min_idle", "1"), ("auth_failure_delay", "\"700ms\"")],
    )?)
    .await?;
    let started = Instant::now();
    let bad = tokio_postgres::connect(&dsn_for(suture.port(), "app", "wrong", "app"), NoTls).await;
    let failed_in = started.elapsed();
    ensure!(bad.is_err(), "a wrong password logged in");
    ensure!(
        failed_in >= Duration::from_millis(700),
        "a failed login was answered after {failed_in:?}"
    );
    let started = Instant::now();
    let good =
        support::rig::connect_watched(&dsn_for(suture.port(), "app", "app-secret", "app")).await?;
    ensure!(select_int(&good.client, "SELECT 1::int4").await? == 1);
    ensure!(
        started.elapsed() < Duration::from_millis(700),
        "a good login took {:?}",
        started.elapsed()
    );
    Ok(())
}
