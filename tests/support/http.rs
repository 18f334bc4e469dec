//! A tiny HTTP/1.0 client for Suture's admin port (and Prometheus' API in the ops checks):
//! one request per connection, the whole answer read, with a deadline.

use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Deadline of one request.
const LIMIT: Duration = Duration::from_secs(10);

/// An HTTP answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// `GET path` on 127.0.0.1:`port`.
pub(crate) async fn get(port: u16, path: &str) -> anyhow::Result<Answer> {
    request(port, "GET", path).await
}

/// `POST path` (empty body) on 127.0.0.1:`port`.
pub(crate) async fn post(port: u16, path: &str) -> anyhow::Result<Answer> {
    request(port, "POST", path).await
}

async fn request(port: u16, method: &str, path: &str) -> anyhow::Result<Answer> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(LIMIT, exchange)
        .await
        .with_context(|| format!("{method} {path} on port {port} timed out"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("incomplete HTTP answer: {text:?}");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok(Answer {
        status,
        body: body.to_owned(),
    })
}

/// The value of the series `name{labels}` (labels as rendered, e.g. `pool="app",cause="rst"`;
/// empty for none) in a Prometheus text page; `None` when absent.
pub(crate) fn series_value(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            if all {
                value.parse().ok()
            } else {
                None
            }
        })
}

/// Polls `GET path` until it answers `status`, up to `limit`; the last answer.
pub(crate) async fn wait_for(
    port: u16,
    path: &str,
    status: u16,
    limit: Duration,
) -> anyhow::Result<Answer> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        // Connection errors count as "not yet" until the deadline (a server still starting).
        match get(port, path).await {
            Ok(answer) if answer.status == status => return Ok(answer),
            Ok(answer) if std::time::Instant::now() >= deadline => return Ok(answer),
            Err(err) if std::time::Instant::now() >= deadline => return Err(err),
            Ok(_) | Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
