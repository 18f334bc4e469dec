//! A deliberately dumb PostgreSQL client over a raw TCP socket, for tests
//! that must send what no real driver sends (garbage, bad lengths) or
//! behave badly (say nothing, stop reading).

use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Authentication request codes (the Int32 after an 'R' message).
pub(crate) const AUTH_OK: i32 = 0;
pub(crate) const AUTH_CLEARTEXT: i32 = 3;
pub(crate) const AUTH_MD5: i32 = 5;
pub(crate) const AUTH_SASL: i32 = 10;

/// One backend message: tag and body (without tag and length).
#[derive(Debug, Clone)]
pub(crate) struct BackendMsg {
    pub(crate) tag: u8,
    pub(crate) body: Vec<u8>,
}

/// What a successful [`RawClient::login`] learned.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoginInfo {
    /// Authentication request codes seen, in order (e.g. `[10, 11, 12, 0]`).
    pub(crate) auth_codes: Vec<i32>,
    /// Process id and secret key from BackendKeyData.
    pub(crate) backend_key: Option<(i32, i32)>,
}

/// Result of reading until EOF or a timeout.
#[derive(Debug)]
pub(crate) struct ReadOutcome {
    pub(crate) bytes: Vec<u8>,
    /// True when the peer closed (EOF or reset) before the timeout.
    pub(crate) closed: bool,
}

pub(crate) struct RawClient {
    stream: TcpStream,
    /// Bytes read but not yet consumed as messages.
    pending: Vec<u8>,
}

impl RawClient {
    pub(crate) async fn connect(port: u16) -> anyhow::Result<RawClient> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            pending: Vec::new(),
        })
    }

    /// Sends bytes as they are.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Half-closes the connection (FIN), keeping the read side open.
    pub(crate) async fn shutdown_write(&mut self) -> anyhow::Result<()> {
        self.stream.shutdown().await?;
        Ok(())
    }

    /// Sends a protocol 3.0 StartupMessage.
    pub(crate) async fn send_startup(&mut self, user: &str, db: &str) -> anyhow::Result<()> {
        self.send_startup_with(user, db, &[]).await
    }

    /// Sends a StartupMessage with extra parameters (e.g. `client_encoding`).
    pub(crate) async fn send_startup_with(
        &mut self,
        user: &str,
        db: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        let params = [("user", user), ("database", db)]
            .into_iter()
            .chain(extra.iter().copied());
        frontend::startup_message(params, &mut buf)?;
        self.send(&buf).await
    }

    /// Sends a simple Query message.
    pub(crate) async fn send_query(&mut self, sql: &str) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf)?;
        self.send(&buf).await
    }

    /// Startup plus authentication (SCRAM-SHA-256, md5 or cleartext, as
    /// asked), then reads up to ReadyForQuery.
    pub(crate) async fn login(
        &mut self,
        user: &str,
        password: &str,
        db: &str,
    ) -> anyhow::Result<LoginInfo> {
        self.login_with(user, password, db, &[]).await
    }

    /// Like [`RawClient::login`], with extra startup parameters.
    pub(crate) async fn login_with(
        &mut self,
        user: &str,
        password: &str,
        db: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<LoginInfo> {
        self.send_startup_with(user, db, extra).await?;
        let mut info = LoginInfo::default();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = self.read_message(Duration::from_secs(10)).await?;
            match msg.tag {
                b'R' => {
                    let code = be_i32(&msg.body, 0)?;
                    info.auth_codes.push(code);
                    let payload = &msg.body[4..];
                    let mut buf = BytesMut::new();
                    match code {
                        AUTH_OK => continue,
                        AUTH_CLEARTEXT => {
                            frontend::password_message(password.as_bytes(), &mut buf)?
                        }
                        AUTH_MD5 => {
                            let salt: [u8; 4] =
                                payload.get(..4).context("short md5 salt")?.try_into()?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                password.as_bytes(),
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut buf)?;
                        }
                        AUTH_SASL => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                s.message(),
                                &mut buf,
                            )?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().context("SASLContinue without SASL")?;
                            s.update(payload)?;
                            frontend::sasl_response(s.message(), &mut buf)?;
                        }
                        12 => {
                            let s = scram.as_mut().context("SASLFinal without SASL")?;
                            s.finish(payload)?;
                            continue;
                        }
                        other => bail!("unsupported authentication request {other}"),
                    }
                    self.send(&buf).await?;
                }
                b'K' => info.backend_key = Some((be_i32(&msg.body, 0)?, be_i32(&msg.body, 4)?)),
                b'E' => bail!("login failed: {}", describe_error(&msg.body)),
                b'Z' => return Ok(info),
                _ => {}
            }
        }
    }

    /// Reads one whole backend message, within `limit`.
    pub(crate) async fn read_message(&mut self, limit: Duration) -> anyhow::Result<BackendMsg> {
        tokio::time::timeout(limit, self.read_message_inner())
            .await
            .context("timed out waiting for a backend message")?
    }

    async fn read_message_inner(&mut self) -> anyhow::Result<BackendMsg> {
        loop {
            if self.pending.len() >= 5 {
                let len = be_i32(&self.pending, 1)?;
                if len < 4 {
                    bail!("backend sent message length {len}");
                }
                let total = 1 + len as usize;
                if self.pending.len() >= total {
                    let msg = BackendMsg {
                        tag: self.pending[0],
                        body: self.pending[5..total].to_vec(),
                    };
                    self.pending.drain(..total);
                    return Ok(msg);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed by peer");
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads messages until one with `tag` arrives; returns all read.
    pub(crate) async fn read_until(
        &mut self,
        tag: u8,
        limit: Duration,
    ) -> anyhow::Result<Vec<BackendMsg>> {
        self.read_until_any(&[tag], limit).await
    }

    /// Reads messages until one with any of `tags` arrives; returns all read.
    pub(crate) async fn read_until_any(
        &mut self,
        tags: &[u8],
        limit: Duration,
    ) -> anyhow::Result<Vec<BackendMsg>> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = self.read_message(left).await?;
            let done = tags.contains(&msg.tag);
            out.push(msg);
            if done {
                return Ok(out);
            }
        }
    }

    /// Reads exactly `n` bytes (e.g. the one-byte answer to an SSLRequest), within `limit`.
    pub(crate) async fn read_bytes(
        &mut self,
        n: usize,
        limit: Duration,
    ) -> anyhow::Result<Vec<u8>> {
        let read = async {
            while self.pending.len() < n {
                let mut chunk = [0u8; 4096];
                let got = self.stream.read(&mut chunk).await?;
                if got == 0 {
                    bail!(
                        "connection closed by peer after {} bytes",
                        self.pending.len()
                    );
                }
                self.pending.extend_from_slice(&chunk[..got]);
            }
            Ok(self.pending.drain(..n).collect())
        };
        tokio::time::timeout(limit, read)
            .await
            .context("timed out waiting for bytes")?
    }

    /// Reads messages up to and including the next ReadyForQuery.
    pub(crate) async fn read_until_ready(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<Vec<BackendMsg>> {
        self.read_until(b'Z', limit).await
    }

    /// Reads everything until EOF or `limit`, whichever is first. Bytes
    /// already buffered by earlier reads are included.
    pub(crate) async fn read_to_eof(&mut self, limit: Duration) -> ReadOutcome {
        let mut bytes = std::mem::take(&mut self.pending);
        let deadline = tokio::time::Instant::now() + limit;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => {
                    return ReadOutcome {
                        bytes,
                        closed: false,
                    }
                }
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return ReadOutcome {
                        bytes,
                        closed: true,
                    }
                }
                Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Like [`RawClient::read_to_eof`] but only counts bytes (for huge results).
    pub(crate) async fn drain_to_eof(&mut self, limit: Duration) -> (u64, bool) {
        let mut total = self.pending.len() as u64;
        self.pending.clear();
        let deadline = tokio::time::Instant::now() + limit;
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return (total, false),
                Ok(Ok(0)) | Ok(Err(_)) => return (total, true),
                Ok(Ok(n)) => total += n as u64,
            }
        }
    }
}

/// Encoders for the extended-protocol messages tests send by hand.
pub(crate) mod ext {
    use bytes::BytesMut;
    use postgres_protocol::message::frontend;

    /// Parse of an unnamed (or named) statement without parameter types.
    pub(crate) fn parse(name: &str, sql: &str, out: &mut BytesMut) -> anyhow::Result<()> {
        frontend::parse(name, sql, std::iter::empty(), out)?;
        Ok(())
    }

    /// Bind of the unnamed portal to `statement`, no parameters, text results.
    pub(crate) fn bind(statement: &str, out: &mut BytesMut) -> anyhow::Result<()> {
        let no_params: [Option<&[u8]>; 0] = [];
        let bound = frontend::bind(
            "",
            statement,
            std::iter::empty::<i16>(),
            no_params,
            |_param: Option<&[u8]>, _buf| Ok(postgres_protocol::IsNull::Yes),
            std::iter::empty::<i16>(),
            out,
        );
        match bound {
            Ok(()) => Ok(()),
            Err(_) => anyhow::bail!("encoding Bind failed"),
        }
    }

    /// Describe of the unnamed portal.
    pub(crate) fn describe_portal(out: &mut BytesMut) -> anyhow::Result<()> {
        frontend::describe(b'P', "", out)?;
        Ok(())
    }

    /// Execute of the unnamed portal, all rows.
    pub(crate) fn execute(out: &mut BytesMut) -> anyhow::Result<()> {
        frontend::execute("", 0, out)?;
        Ok(())
    }

    /// Close of the unnamed portal (what libpq 17 and later send after each
    /// pipelined PQsendQuery).
    pub(crate) fn close_portal(out: &mut BytesMut) -> anyhow::Result<()> {
        frontend::close(b'P', "", out)?;
        Ok(())
    }

    pub(crate) fn sync(out: &mut BytesMut) {
        frontend::sync(out);
    }

    pub(crate) fn flush(out: &mut BytesMut) {
        frontend::flush(out);
    }

    /// A simple Query message.
    pub(crate) fn query(sql: &str, out: &mut BytesMut) -> anyhow::Result<()> {
        frontend::query(sql, out)?;
        Ok(())
    }

    /// A simple Query message whose text is raw bytes (any encoding).
    pub(crate) fn query_bytes(sql: &[u8], out: &mut BytesMut) {
        let len = i32::try_from(4 + sql.len() + 1).unwrap_or(i32::MAX);
        out.extend_from_slice(b"Q");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(sql);
        out.extend_from_slice(&[0]);
    }
}

fn be_i32(bytes: &[u8], at: usize) -> anyhow::Result<i32> {
    let b: [u8; 4] = bytes
        .get(at..at + 4)
        .context("message too short")?
        .try_into()?;
    Ok(i32::from_be_bytes(b))
}

/// Splits `bytes` into backend messages as far as they frame cleanly.
/// A single leading 'N'/'S' byte (an SSLRequest answer) is skipped.
pub(crate) fn split_messages(bytes: &[u8]) -> Vec<BackendMsg> {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + 5 {
        let len = i32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]]);
        if len < 4 || bytes.len() < at + 1 + len as usize {
            break;
        }
        let end = at + 1 + len as usize;
        out.push(BackendMsg {
            tag: bytes[at],
            body: bytes[at + 5..end].to_vec(),
        });
        at = end;
    }
    out
}

/// Fields of an ErrorResponse/NoticeResponse body as (code, value).
pub(crate) fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        out.push((code, String::from_utf8_lossy(&tail[..end]).into_owned()));
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    out
}

/// The SQLSTATE (C field) of the first ErrorResponse in `bytes`, if any.
pub(crate) fn find_sqlstate(bytes: &[u8]) -> Option<String> {
    split_messages(bytes)
        .iter()
        .find(|m| m.tag == b'E')
        .and_then(|m| error_fields(&m.body).into_iter().find(|(c, _)| *c == b'C'))
        .map(|(_, v)| v)
}

/// "SQLSTATE: message" for an ErrorResponse body.
pub(crate) fn describe_error(body: &[u8]) -> String {
    let fields = error_fields(body);
    let get = |c: u8| {
        fields
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    format!("{}: {}", get(b'C'), get(b'M'))
}
