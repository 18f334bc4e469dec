//! The client side of `suture status`: one HTTP/1.0 GET of `/status` over a plain TCP socket,
//! with deadlines, and the document parsed back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::status::Status;

/// Deadline of each step of the request.
const STEP_LIMIT: Duration = Duration::from_secs(5);
/// Largest answer read.
const MAX_ANSWER: u64 = 16 << 20;

/// Why `/status` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusFetchError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot reach the admin port at {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin port answered {0}")]
    Http(String),
    #[error("the admin port sent a /status document that cannot be read: {0}")]
    Json(#[source] serde_json::Error),
}

/// Reads `/status` from the admin port at `admin` (`host:port`).
pub fn fetch_status(admin: &str) -> Result<Status, StatusFetchError> {
    let addr = admin
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| StatusFetchError::Resolve(admin.to_owned()))?;
    let io = |source| StatusFetchError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, STEP_LIMIT).map_err(io)?;
    stream.set_read_timeout(Some(STEP_LIMIT)).map_err(io)?;
    stream.set_write_timeout(Some(STEP_LIMIT)).map_err(io)?;
    write!(
        stream,
        "GET /status HTTP/1.0\r\nHost: {admin}\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(io)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| StatusFetchError::Http("an incomplete answer".into()))?;
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(StatusFetchError::Http(status_line.to_owned()));
    }
    serde_json::from_str(body).map_err(StatusFetchError::Json)
}
