//! End to end with a real Prometheus (issue 11): Prometheus, started here on a free port with
//! its storage in a temporary directory, scrapes Suture every second while the test kills idle
//! backends (an RST to the pool's warm spares and to an idle session's backend); then the
//! Grafana dashboard's own PromQL, sent to Prometheus' query API, shows idle closes and heals
//! above zero. Needs the `prometheus` binary (Debian package prometheus): installed with
//! apt-get when missing, and the test fails, never passes, without it.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use support::free_port;
use support::http;
use support::rig::Rig;

/// A Prometheus server of this test; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_binary() -> anyhow::Result<()> {
    let have = || Command::new("prometheus").arg("--version").output().is_ok();
    if !have() {
        eprintln!("prometheus missing: installing the Debian package prometheus");
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
        "the prometheus binary is not installed and could not be installed"
    );
    Ok(())
}

impl Prometheus {
    async fn start(scrape_port: u16) -> anyhow::Result<Prometheus> {
        prometheus_binary()?;
        let dir = tempfile::Builder::new().prefix("suture-prom-").tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: suture\n    static_configs:\n      \
                 - targets: [\"127.0.0.1:{scrape_port}\"]\n"
            ),
        )?;
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let prom = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let ready = http::wait_for(port, "/-/ready", 200, Duration::from_secs(30)).await;
        match ready {
            Ok(answer) if answer.status == 200 => Ok(prom),
            other => bail!("prometheus did not get ready: {other:?}\n{}", prom.log()),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The sum of an instant query's values (0 when it has none).
    async fn query_sum(&self, promql: &str) -> anyhow::Result<f64> {
        let answer = http::get(
            self.port,
            &format!("/api/v1/query?query={}", encode(promql)),
        )
        .await?;
        ensure!(answer.status == 200, "query {promql}: {answer:?}");
        let doc: serde_json::Value = serde_json::from_str(&answer.body)?;
        ensure!(doc["status"] == "success", "query {promql}: {doc}");
        let mut sum = 0.0;
        for series in doc["data"]["result"].as_array().context("a vector")? {
            let value: f64 = series["value"][1]
                .as_str()
                .context("a sample")?
                .parse()
                .unwrap_or(0.0);
            if value.is_finite() {
                sum += value;
            }
        }
        Ok(sum)
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The PromQL of the dashboard panel titled `title`, with the dashboard's variables filled in
/// as Grafana would for pool `app`.
fn panel_expr(title: &str) -> anyhow::Result<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/suture-dashboard.json"
    );
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let panel = dashboard["panels"]
        .as_array()
        .context("panels")?
        .iter()
        .find(|p| p["title"] == title)
        .with_context(|| format!("no panel {title:?}"))?;
    let expr = panel["targets"][0]["expr"].as_str().context("expr")?;
    Ok(expr
        .replace("$pool", "app")
        .replace("$__rate_interval", "1m"))
}

#[tokio::test]
async fn the_dashboards_queries_show_idle_closes_and_heals() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "2")]).await?;
    let result = async {
        let prom = Prometheus::start(rig.suture.admin_port()).await?;
        let session = rig.connect_app().await?;
        session.client.simple_query("SELECT 1").await?;
        // A few scrapes of the zero values first.
        let deadline = Instant::now() + Duration::from_secs(30);
        while prom
            .query_sum("count_over_time(up{job=\"suture\"}[1m])")
            .await?
            < 3.0
        {
            ensure!(
                Instant::now() < deadline,
                "prometheus never scraped suture:\n{}",
                prom.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for _ in 0..2 {
            // Every backend gets an RST: the warm spares idle in the pool (idle closes) and
            // the idle session's own (a heal when the session next asks).
            rig.relay.rst_all().await?;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            session.client.simple_query("SELECT 2").await?;
        }
        let idle = panel_expr("Idle closes by cause")?;
        let heals = panel_expr("Session heals")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (i, h) = (prom.query_sum(&idle).await?, prom.query_sum(&heals).await?);
            println!("dashboard queries: idle closes {i:.2}, heals {h:.2}\n  {idle}\n  {heals}");
            if i > 0.0 && h > 0.0 {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the dashboard shows no idle closes ({i}) or heals ({h})"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    .await;
    rig.finish(result)
}
