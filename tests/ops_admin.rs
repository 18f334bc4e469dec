//! The admin port (issue 11): every DESIGN §7 series exists from start and passes
//! `promtool check metrics`; heals and idle closes show in `/metrics` and `/status` after a
//! fault; probes say what they should while the database is down; the watchdog turns
//! `/healthz` 503 while the data-path loop is stalled (test-hooks build) and back.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use support::http::{self, series_value};
use support::rig::{config_via, Rig};
use support::{free_port, suture_config_with, PgServer, SutureProc};

/// The series and label values DESIGN §7 lists for pool `app`.
const SERIES: &[(&str, &str, &[&str])] = &[
    (
        "suture_backend_idle_closes_total",
        "cause",
        &["fin", "rst", "server_error", "idle_timeout_notice"],
    ),
    (
        "suture_replays_total",
        "reason",
        &[
            "never_sent",
            "zero_bytes",
            "refused_while_idle",
            "no_side_effects",
        ],
    ),
    (
        "suture_replays_refused_total",
        "reason",
        &[
            "maybe_executed",
            "in_transaction",
            "commit_unknown",
            "tainted_session",
            "budget_exhausted",
            "backend_unavailable",
        ],
    ),
    ("suture_backend_connections", "state", &["idle", "active"]),
    (
        "suture_backend_connects_total",
        "result",
        &[
            "ok",
            "timeout",
            "refused",
            "dns_error",
            "tls_error",
            "auth_error",
            "read_only",
        ],
    ),
    (
        "suture_backend_closes_total",
        "reason",
        &[
            "max_lifetime",
            "idle_timeout",
            "health_check",
            "shutdown",
            "error",
        ],
    ),
];

/// `promtool`, installed with apt-get when missing; an error (never a silent pass) when it
/// cannot be had.
fn promtool() -> anyhow::Result<&'static str> {
    let have = || Command::new("promtool").arg("--version").output().is_ok();
    if !have() {
        eprintln!("promtool missing: installing the Debian package prometheus");
        let _ = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "prometheus",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    ensure!(
        have(),
        "promtool is not installed and could not be installed (apt-get install prometheus)"
    );
    Ok("promtool")
}

fn promtool_check_metrics(page: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new(promtool()?)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(page.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "promtool check metrics failed:\n{said}"
    );
    ensure!(
        said.trim().is_empty(),
        "promtool check metrics complained:\n{said}"
    );
    Ok(())
}

#[tokio::test]
async fn every_series_exists_at_zero_and_passes_promtool() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let suture = SutureProc::start(&suture_config_with(&pg, free_port(), "")).await?;
    let page = http::get(suture.admin_port(), "/metrics").await?;
    ensure!(page.status == 200, "/metrics: {page:?}");
    for (name, label, values) in SERIES {
        for value in *values {
            ensure!(
                series_value(&page.body, name, &[("pool", "app"), (label, value)]).is_some(),
                "{name}{{pool=\"app\",{label}=\"{value}\"}} missing:\n{}",
                page.body
            );
        }
    }
    for (name, labels) in [
        ("suture_session_heals_total", vec![("pool", "app")]),
        ("suture_held_requests", vec![("pool", "app")]),
        ("suture_checkout_wait_seconds_count", vec![("pool", "app")]),
        (
            "suture_request_duration_seconds_count",
            vec![("protocol", "postgres")],
        ),
        ("suture_client_connections", vec![("protocol", "postgres")]),
        (
            "suture_client_connections_total",
            vec![("protocol", "postgres"), ("result", "auth_failed")],
        ),
        ("suture_event_loop_lag_seconds", vec![]),
        ("suture_config_reloads_total", vec![("result", "rejected")]),
        ("suture_log_lines_dropped_total", vec![]),
    ] {
        ensure!(
            series_value(&page.body, name, &labels).is_some(),
            "{name} {labels:?} missing:\n{}",
            page.body
        );
    }
    ensure!(
        page.body.contains(
            "suture_request_duration_seconds_bucket{protocol=\"postgres\",le=\"0.00005\"}"
        ),
        "the latency histogram starts at 50 µs"
    );
    promtool_check_metrics(&page.body)
}

#[tokio::test]
async fn a_heal_shows_in_metrics_status_and_suture_status() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "1")]).await?;
    let result = async {
        let client = rig.connect_app().await?;
        client.client.simple_query("SELECT 1").await?;
        let admin = rig.suture.admin_port();
        // Every backend behind the relay, the session's and the warm spares, gets an RST.
        rig.relay.rst_all().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rows = client.client.simple_query("SELECT 2").await?;
        ensure!(!rows.is_empty(), "the healed session answers");
        let page = http::get(admin, "/metrics").await?.body;
        let heals = series_value(&page, "suture_session_heals_total", &[("pool", "app")]);
        ensure!(heals.is_some_and(|v| v >= 1.0), "heals: {heals:?}\n{page}");
        let rst = series_value(
            &page,
            "suture_backend_idle_closes_total",
            &[("pool", "app"), ("cause", "rst")],
        );
        ensure!(
            rst.is_some_and(|v| v >= 1.0),
            "idle closes: {rst:?}\n{page}"
        );
        let requests = series_value(
            &page,
            "suture_request_duration_seconds_count",
            &[("protocol", "postgres")],
        );
        ensure!(requests.is_some_and(|v| v >= 2.0), "requests: {requests:?}");
        promtool_check_metrics(&page)?;
        let excerpt: Vec<&str> = page
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && (l.contains("heals")
                        || l.contains("idle_closes")
                        || l.contains("connects_total{pool=\"app\",result=\"ok\"")
                        || l.starts_with("suture_backend_connections")
                        || l.starts_with("suture_request_duration_seconds_count")
                        || l.starts_with("suture_event_loop_lag"))
            })
            .collect();
        println!(
            "---- /metrics after an RST to every backend ----\n{}",
            excerpt.join("\n")
        );

        let status = http::get(admin, "/status").await?;
        let doc: serde_json::Value = serde_json::from_str(&status.body)?;
        let pool = &doc["pools"][0];
        ensure!(pool["name"] == "app", "{doc}");
        ensure!(pool["last_heal"]["cause"] == "rst", "last heal: {doc}");
        ensure!(pool["clients"] == 1, "one client: {doc}");
        ensure!(pool["backends"]["active"] == 1, "one active backend: {doc}");
        let out = Command::new(env!("CARGO_BIN_EXE_suture"))
            .args(["status", "--admin", &format!("127.0.0.1:{admin}")])
            .output()?;
        let table = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "suture status failed: {out:?}");
        ensure!(
            table.contains("rst ("),
            "the table shows the heal:\n{table}"
        );
        println!("---- suture status ----\n{table}");
        Ok(())
    }
    .await;
    rig.finish(result)
}

#[tokio::test]
async fn probes_while_the_database_is_unreachable() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    // Nothing listens on the server port: every connect is refused.
    let mut cfg = config_via(&pg, free_port(), &[("min_idle", "1")])?;
    cfg = cfg.replacen(
        "[admin]\n",
        "[admin]\nstartup_timeout = \"6s\"\nreadiness_checks_backend = true\n",
        1,
    );
    let suture = SutureProc::start(&cfg).await?;
    let admin = suture.admin_port();
    let deadline = Instant::now() + Duration::from_secs(5);
    let startup = loop {
        let answer = http::get(admin, "/startup").await?;
        if !answer.body.contains("listeners") || Instant::now() >= deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(
        startup.status == 503 && startup.body.contains("pool(s) app"),
        "/startup waits for the warm-up: {startup:?}"
    );
    let healthz = http::get(admin, "/healthz").await?;
    ensure!(
        healthz.status == 200,
        "a database outage never fails liveness: {healthz:?}"
    );
    let startup = http::wait_for(admin, "/startup", 200, Duration::from_secs(8)).await?;
    ensure!(
        startup.status == 200,
        "/startup gives up waiting: {startup:?}"
    );
    let readyz = http::get(admin, "/readyz").await?;
    ensure!(
        readyz.status == 503 && readyz.body.contains("pool app: backend unreachable"),
        "readiness names the pool and the cause: {readyz:?}"
    );
    ensure!(http::get(admin, "/healthz").await?.status == 200);
    ensure!(http::get(admin, "/nope").await?.status == 404);
    Ok(())
}

#[tokio::test]
async fn readiness_ignores_the_database_by_default() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let cfg = config_via(&pg, free_port(), &[("min_idle", "0")])?;
    let suture = SutureProc::start(&cfg).await?;
    let admin = suture.admin_port();
    for path in ["/startup", "/healthz", "/readyz"] {
        let answer = http::wait_for(admin, path, 200, Duration::from_secs(5)).await?;
        ensure!(answer.status == 200, "{path}: {answer:?}");
    }
    Ok(())
}

#[tokio::test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature: cargo nextest run --features test-hooks"
)]
async fn watchdog_fails_liveness_while_the_loop_is_stalled() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let cfg = suture_config_with(&pg, free_port(), "").replacen(
        "[admin]\n",
        "[admin]\nstall_threshold = \"1s\"\n",
        1,
    );
    let suture = SutureProc::start(&cfg).await?;
    let admin = suture.admin_port();
    ensure!(http::get(admin, "/healthz").await?.status == 200);
    let stalled = http::post(admin, "/test/stall?ms=4000").await?;
    ensure!(stalled.status == 200, "{stalled:?}");
    let started = Instant::now();
    let mut saw_503 = None;
    while started.elapsed() < Duration::from_secs(4) {
        let answer = http::get(admin, "/healthz").await?;
        if answer.status == 503 {
            saw_503 = Some((started.elapsed(), answer.body));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (after, why) = saw_503.context("/healthz never turned 503 while the loop was stalled")?;
    ensure!(why.contains("stalled"), "{why}");
    println!("/healthz 503 after {after:?}: {why}");
    // The admin port keeps answering during the stall.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let page = http::get(admin, "/metrics").await?.body;
    let lag = series_value(&page, "suture_event_loop_lag_seconds", &[]);
    ensure!(lag.is_some_and(|l| l > 1.0), "lag while stalled: {lag:?}");
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        if http::get(admin, "/healthz").await?.status == 200 {
            break;
        }
        ensure!(Instant::now() < deadline, "/healthz did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
