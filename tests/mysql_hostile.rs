//! Hostile and careless MySQL clients against Suture (issue 12 item 6, as issue 10 asks of
//! PostgreSQL): garbage in place of the login, lengths that lie, commands with the wrong
//! sequence id, packets over the limit, silent clients, huge and unknown user names. Each gets a
//! clear error or is closed, Suture keeps running, and another client is served normally
//! afterwards. Suture only: a direct MariaDB has its own limits.

mod support;

use std::time::Duration;

use anyhow::{ensure, Context as _};
use mysql_async::prelude::Queryable as _;
use support::mariadb_server::{APP_DB, APP_PASSWORD, APP_USER};
use support::mysql_rig::MysqlTarget;
use support::raw_mysql::{parse_err, Ending, RawMysql, COM_QUERY};

/// How long a raw client waits for Suture to answer or close.
const WAIT: Duration = Duration::from_secs(5);

async fn start() -> anyhow::Result<MysqlTarget> {
    MysqlTarget::start(
        &[],
        &[
            ("client_login_timeout", "\"1s\""),
            ("max_message_size", "\"1MiB\""),
        ],
    )
    .await
}

/// A well-behaved client still gets its rows.
async fn still_serves(t: &MysqlTarget) -> anyhow::Result<()> {
    let mut conn = t.connect_app().await?;
    let one: Option<i64> = conn.query_first("SELECT 1").await?;
    ensure!(one == Some(1), "SELECT 1 gave {one:?}");
    conn.disconnect().await?;
    Ok(())
}

/// The ERR packet a raw client got before the connection closed, if any.
async fn err_before_close(raw: &mut RawMysql) -> Option<(u16, String)> {
    let closing = raw.read_until_close(WAIT).await;
    let packets = closing.packets().ok()?;
    let err = packets.iter().find(|p| p.payload.first() == Some(&0xff))?;
    let parsed = parse_err(&err.payload)?;
    Some((parsed.code, parsed.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_lies_and_silence_are_refused_and_others_are_served() -> anyhow::Result<()> {
    let t = start().await?;
    if t.is_direct() {
        return Ok(());
    }
    let result = async {
        // Garbage where the handshake response belongs: Bad handshake, closed.
        let mut raw = RawMysql::connect(t.port()).await?;
        raw.send_packet(1, &[0xde; 64]).await?;
        let refused = err_before_close(&mut raw).await;
        ensure!(
            refused.as_ref().is_some_and(|(code, _)| *code == 1043),
            "garbage login: {refused:?}"
        );
        // A header that promises 16 MiB and then nothing: closed by the login deadline.
        let mut raw = RawMysql::connect(t.port()).await?;
        raw.send_raw(&[0xff, 0xff, 0xff, 0x01]).await?;
        let closing = raw.read_until_close(WAIT).await;
        ensure!(
            closing.ending != Ending::Open,
            "a lying length: {}",
            closing.describe()
        );
        // Silent after the greeting: closed by the login deadline.
        let mut raw = RawMysql::connect(t.port()).await?;
        let closing = raw.read_until_close(WAIT).await;
        ensure!(
            closing.ending != Ending::Open,
            "a silent client: {}",
            closing.describe()
        );
        // A command with the wrong sequence id: an error, then closed.
        let mut raw = RawMysql::connect_login(t.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
        raw.send_packet(3, &[COM_QUERY, b'1']).await?;
        let refused = err_before_close(&mut raw).await;
        ensure!(
            refused.as_ref().is_some_and(|(code, _)| *code == 1156),
            "wrong sequence id: {refused:?}"
        );
        // A command over max_message_size: an error, then closed.
        let mut raw = RawMysql::connect_login(t.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
        let mut big = vec![COM_QUERY];
        big.extend(std::iter::repeat_n(b' ', 2 << 20));
        raw.send_packet(0, &big).await?;
        let refused = err_before_close(&mut raw).await;
        ensure!(refused.is_some(), "an oversized command got no error");
        still_serves(&t).await
    }
    .await;
    t.finish(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_huge_user_names_get_the_same_bounded_denial() -> anyhow::Result<()> {
    let t = start().await?;
    if t.is_direct() {
        return Ok(());
    }
    let result = async {
        let denial = |user: String| {
            let port = t.port();
            async move {
                let mut raw = RawMysql::connect(port).await?;
                let outcome = raw.login(&user, "wrong", "").await;
                let err = outcome.err().context("a wrong password was accepted")?;
                // The raw client names the user itself; what Suture sent follows.
                let text = err.to_string();
                let reply = text
                    .split_once(" failed: ")
                    .map_or(text.as_str(), |(_, r)| r);
                anyhow::Ok(reply.to_owned())
            }
        };
        let known = denial(APP_USER.to_owned()).await?;
        let unknown = denial("nobody_here".to_owned()).await?;
        let huge = denial("u".repeat(10_000)).await?;
        for text in [&known, &unknown, &huge] {
            ensure!(text.contains("1045"), "not an access denial: {text}");
        }
        ensure!(
            known.replace(APP_USER, "U") == unknown.replace("nobody_here", "U"),
            "a known and an unknown user are told apart: {known} / {unknown}"
        );
        ensure!(
            huge.len() < 400,
            "a 10,000-byte user name is echoed back: {} bytes",
            huge.len()
        );
        still_serves(&t).await
    }
    .await;
    t.finish(result)
}
