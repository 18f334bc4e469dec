//! Shutdown and reload (issue 11, DESIGN §7) with real clients: on SIGTERM an in-flight query
//! finishes and its client is then closed with 57P01, an idle client gets 57P01 at once,
//! readiness fails at once, `accept_for` keeps accepting, a second signal exits at once,
//! `POST /quitquitquit` drains like SIGTERM; SIGHUP changes users and pool settings without
//! dropping a session, keeps what cannot change live, and rejects a bad file naming the key.

mod support;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use support::http::{self, series_value};
use support::rig::{connect_watched, within, Watched};
use support::{dsn_for, free_port, suture_config_with, PgServer, SutureProc};

async fn start(pg: &PgServer, shutdown: &str) -> anyhow::Result<SutureProc> {
    let cfg = format!(
        "{}\n[shutdown]\n{shutdown}\n",
        suture_config_with(pg, free_port(), "")
    );
    let suture = SutureProc::start(&cfg).await?;
    let ready =
        http::wait_for(suture.admin_port(), "/readyz", 200, Duration::from_secs(10)).await?;
    ensure!(ready.status == 200, "never ready: {ready:?}");
    Ok(suture)
}

async fn app(suture: &SutureProc) -> anyhow::Result<Watched> {
    connect_watched(&dsn_for(suture.port(), "app", "app-secret", "app")).await
}

/// Waits until the watched connection ended; how it ended.
async fn ended(client: &Watched, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    while client.connection_end() == "still open" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.connection_end()
}

#[tokio::test]
async fn sigterm_lets_the_query_in_flight_finish_and_closes_idle_clients() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let mut suture = start(&pg, "drain_timeout = \"10s\"").await?;
    let admin = suture.admin_port();
    let idle = app(&suture).await?;
    let busy = std::sync::Arc::new(app(&suture).await?);
    idle.client.simple_query("SELECT 1").await?;
    let query = {
        let busy = std::sync::Arc::clone(&busy);
        tokio::spawn(async move {
            busy.client
                .query_one("SELECT 42 FROM pg_sleep(1.5)", &[])
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    suture.signal("TERM")?;
    let readyz = http::wait_for(admin, "/readyz", 503, Duration::from_secs(2)).await?;
    ensure!(
        readyz.status == 503 && readyz.body.contains("draining"),
        "{readyz:?}"
    );
    let idle_end = ended(&idle, Duration::from_secs(2)).await;
    ensure!(
        idle_end.contains("57P01"),
        "the idle client is told 57P01: {idle_end}"
    );
    let answer = within(query).await??;
    let value: i32 = answer.context("the query in flight finishes")?.get(0);
    ensure!(value == 42);
    let busy_end = ended(&busy, Duration::from_secs(2)).await;
    ensure!(
        busy_end.contains("57P01"),
        "the client of the finished query is then closed with 57P01: {busy_end}"
    );
    println!("SIGTERM: in-flight query answered {value}, then its client saw: {busy_end}");
    println!("SIGTERM: idle client saw: {idle_end}");
    let refused = tokio_postgres::connect(
        &dsn_for(suture.port(), "app", "app-secret", "app"),
        tokio_postgres::NoTls,
    )
    .await;
    ensure!(refused.is_err(), "no new clients after accept_for");
    let code = suture.wait_exit(Duration::from_secs(5)).await?;
    ensure!(code == Some(0), "exit code {code:?}");
    let log = suture.log_contents();
    ensure!(log.contains("backend connections terminated"), "{log}");
    Ok(())
}

#[tokio::test]
async fn open_transactions_may_finish_and_accept_for_keeps_accepting() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let mut suture = start(&pg, "accept_for = \"1s\"\ndrain_timeout = \"10s\"").await?;
    let tx = app(&suture).await?;
    tx.client.batch_execute("BEGIN; SELECT 1").await?;
    suture.signal("TERM")?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = app(&suture)
        .await
        .context("still accepting during accept_for")?;
    let n: i32 = late.client.query_one("SELECT 7", &[]).await?.get(0);
    ensure!(n == 7);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(
        tx.connection_end() == "still open",
        "the open transaction is not cut"
    );
    tx.client.batch_execute("SELECT 2; COMMIT").await?;
    let end = ended(&tx, Duration::from_secs(2)).await;
    ensure!(
        end.contains("57P01"),
        "closed once the transaction ended: {end}"
    );
    let code = suture.wait_exit(Duration::from_secs(5)).await?;
    ensure!(code == Some(0), "exit code {code:?}");
    Ok(())
}

#[tokio::test]
async fn a_second_signal_exits_at_once() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let mut suture = start(&pg, "drain_timeout = \"60s\"").await?;
    let tx = app(&suture).await?;
    tx.client.batch_execute("BEGIN").await?;
    suture.signal("TERM")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(suture.is_running(), "still draining the open transaction");
    let started = Instant::now();
    suture.signal("INT")?;
    let code = suture.wait_exit(Duration::from_secs(2)).await?;
    ensure!(code == Some(1), "exit code {code:?}");
    println!("second signal: exited after {:?}", started.elapsed());
    Ok(())
}

#[tokio::test]
async fn quitquitquit_drains_like_sigterm() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let mut suture = start(&pg, "").await?;
    let idle = app(&suture).await?;
    let answer = http::post(suture.admin_port(), "/quitquitquit").await?;
    ensure!(answer.status == 200, "{answer:?}");
    let end = ended(&idle, Duration::from_secs(3)).await;
    ensure!(end.contains("57P01"), "{end}");
    let code = suture.wait_exit(Duration::from_secs(5)).await?;
    ensure!(code == Some(0), "exit code {code:?}");
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_users_and_settings_without_dropping_a_session() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let suture = start(&pg, "").await?;
    let admin = suture.admin_port();
    let session = app(&suture).await?;
    session.client.simple_query("SELECT 1").await?;
    let before = std::fs::read_to_string(suture.config_path())?;

    // Remove user `postgres`, change sizes, and try to move the listener.
    let listen = format!("listen = \"127.0.0.1:{}\"", suture.port());
    let moved = format!("listen = \"127.0.0.1:{}\"", free_port());
    let changed = before
        .replace("[pools.app.users.postgres]\npassword = \"postgres\"\n", "")
        .replace("max_size = 10", "max_size = 12")
        .replace(&listen, &moved);
    ensure!(changed != before, "the rewrite changed nothing");
    std::fs::write(suture.config_path(), &changed)?;
    suture.signal("HUP")?;
    wait_for_log(&suture, "configuration reloaded").await?;
    let log = suture.log_contents();
    ensure!(
        log.contains("pools.app.listen"),
        "the listen change is reported:\n{log}"
    );
    ensure!(log.contains("users removed: postgres"), "{log}");
    session
        .client
        .simple_query("SELECT 2")
        .await
        .context("the session survives")?;
    ensure!(session.connection_end() == "still open");
    let postgres = tokio_postgres::connect(
        &dsn_for(suture.port(), "postgres", "postgres", "postgres"),
        tokio_postgres::NoTls,
    )
    .await;
    ensure!(postgres.is_err(), "a removed user can no longer log in");
    app(&suture).await.context("the old listen address stays")?;

    // A bad file is rejected, naming the key; the running configuration stays.
    std::fs::write(
        suture.config_path(),
        changed.replace("min_idle = 1", "min_idle = \"many\""),
    )?;
    suture.signal("HUP")?;
    wait_for_log(&suture, "reload rejected").await?;
    let log = suture.log_contents();
    ensure!(
        log.contains("pools.app.min_idle"),
        "the key is named:\n{log}"
    );
    app(&suture)
        .await
        .context("still serving after a rejected reload")?;
    session.client.simple_query("SELECT 3").await?;
    let page = http::get(admin, "/metrics").await?.body;
    let ok = series_value(&page, "suture_config_reloads_total", &[("result", "ok")]);
    let rejected = series_value(
        &page,
        "suture_config_reloads_total",
        &[("result", "rejected")],
    );
    ensure!(
        ok == Some(1.0) && rejected == Some(1.0),
        "{ok:?} {rejected:?}"
    );
    Ok(())
}

async fn wait_for_log(suture: &SutureProc, needle: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !suture.log_contents().contains(needle) {
        ensure!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            suture.log_contents()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
