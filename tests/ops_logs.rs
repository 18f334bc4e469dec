//! Logs (issue 11): with `[log] format = "json"` every line is a JSON object; heals, replays,
//! refusals and idle closes each get one line naming the pool, the cause, the client and the
//! backend process; and nothing a client sent — a wrong password, query text, parameters —
//! nor a configured password appears at info level.

mod support;

use std::time::Duration;

use anyhow::{ensure, Context as _};
use support::fault_relay::FaultRelay;
use support::rig::{config_via, connect_watched, try_connect_watched};
use support::{dsn_for, PgServer, SutureProc};

const WRONG_PASSWORD: &str = "Wr0ng-Pa55-do-not-log";
const QUERY_SECRET: &str = "query-text-do-not-log";
const PARAM_SECRET: &str = "param-value-do-not-log";

#[tokio::test]
async fn json_lines_name_each_heal_and_refusal_and_never_a_secret() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let relay = FaultRelay::start_for_port(pg.port()).await?;
    let cfg = config_via(&pg, relay.port(), &[("min_idle", "1")])?.replacen(
        "[admin]\n",
        "[log]\nformat = \"json\"\nlevel = \"info\"\n\n[admin]\n",
        1,
    );
    let suture = SutureProc::start(&cfg).await?;
    let dsn = |password: &str| dsn_for(suture.port(), "app", password, "app");

    let refused = try_connect_watched(&dsn(WRONG_PASSWORD)).await?;
    ensure!(refused.is_err(), "a wrong password is refused");
    let client = connect_watched(&dsn("app-secret")).await?;
    client
        .client
        .simple_query(&format!("SELECT '{QUERY_SECRET}'"))
        .await?;
    client
        .client
        .query_one("SELECT $1::text", &[&PARAM_SECRET])
        .await?;
    // An RST to every backend while the session is idle: a heal.
    relay.rst_all().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.client.simple_query("SELECT 1").await?;
    // An RST while a statement runs: a refusal (40003), never a replay.
    let running = {
        let sleep = format!("SELECT pg_sleep(1), '{QUERY_SECRET}'");
        let (c, conn) = tokio_postgres::connect(&dsn("app-secret"), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        tokio::spawn(async move { c.simple_query(&sleep).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    relay.rst_all().await?;
    let outcome = tokio::time::timeout(Duration::from_secs(10), running).await??;
    ensure!(outcome.is_err(), "the running statement is refused");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = suture.log_contents();
    for secret in [
        WRONG_PASSWORD,
        QUERY_SECRET,
        PARAM_SECRET,
        "app-secret",
        "md5-secret",
    ] {
        ensure!(!log.contains(secret), "{secret:?} is in the log:\n{log}");
    }
    let mut lines = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not a JSON line: {line}"))?;
        lines.push(value);
    }
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .cloned()
            .with_context(|| format!("no {message:?} line in:\n{log}"))
    };
    let heal = find("backend swapped under an idle session")?;
    let fields = &heal["fields"];
    ensure!(
        fields["pool"] == "app" && fields["cause"] == "rst",
        "{heal}"
    );
    ensure!(fields["client"].as_u64().is_some(), "client id: {heal}");
    ensure!(
        fields["backend_id"].as_i64().is_some_and(|p| p > 0),
        "{heal}"
    );
    let refusal = find("backend loss reported to the client")?;
    ensure!(refusal["fields"]["cause"] == "maybe_executed", "{refusal}");
    ensure!(
        refusal["fields"]["backend_id"].as_i64().is_some(),
        "{refusal}"
    );
    let idle_close = find("idle backend connection found closed")?;
    ensure!(idle_close["fields"]["cause"] == "rst", "{idle_close}");
    println!("heal line: {heal}\nrefusal line: {refusal}\nidle close line: {idle_close}");
    Ok(())
}
