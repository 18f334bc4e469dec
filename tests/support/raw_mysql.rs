//! A deliberately small MySQL-protocol client over a raw TCP socket, for
//! tests that must see exactly what a server (or Suture) writes: the raw
//! bytes, the sequence ids and how the connection ends (FIN, RST or still
//! open). It logs in with `mysql_native_password` (following an auth switch
//! to it) and sends single command packets; it decodes only packet headers,
//! the v10 greeting, OK and ERR. Nothing read from the network is trusted:
//! every length is checked and a short packet is an error, never a panic.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sha1::{Digest as _, Sha1};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Capability flags (protocol documentation names, `CLIENT_*`).
pub(crate) const CLIENT_LONG_PASSWORD: u32 = 0x1;
pub(crate) const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
pub(crate) const CLIENT_PROTOCOL_41: u32 = 0x200;
pub(crate) const CLIENT_TRANSACTIONS: u32 = 0x2000;
pub(crate) const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
pub(crate) const CLIENT_MULTI_RESULTS: u32 = 0x2_0000;
pub(crate) const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;

/// Command bytes.
pub(crate) const COM_QUIT: u8 = 0x01;
pub(crate) const COM_QUERY: u8 = 0x03;
pub(crate) const COM_PING: u8 = 0x0e;

/// utf8mb4_general_ci.
const CHARSET_UTF8MB4: u8 = 45;
const MAX_PACKET: u32 = 16 * 1024 * 1024;
const NATIVE_PASSWORD: &str = "mysql_native_password";
/// Bound on a single read of the greeting or a reply.
const STEP: Duration = Duration::from_secs(10);

/// One packet: its sequence id and payload (header removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Packet {
    pub(crate) seq: u8,
    pub(crate) payload: Vec<u8>,
}

/// What the server's v10 greeting says.
#[derive(Debug, Clone)]
pub(crate) struct Greeting {
    pub(crate) server_version: String,
    pub(crate) connection_id: u32,
    pub(crate) capabilities: u32,
    pub(crate) status: u16,
    /// The 20-byte nonce for the scramble.
    pub(crate) scramble: Vec<u8>,
    pub(crate) auth_plugin: String,
}

/// An ERR packet's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ErrPacket {
    pub(crate) code: u16,
    pub(crate) sqlstate: Option<String>,
    pub(crate) message: String,
}

/// How a connection ended while [`RawMysql::read_until_close`] watched it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Orderly close: read returned 0.
    Fin,
    /// The read failed (e.g. connection reset); the error text.
    Reset(String),
    /// Still open when the time ran out.
    Open,
}

/// Everything that arrived until the connection ended (or the time ran out).
#[derive(Debug, Clone)]
pub(crate) struct Closing {
    pub(crate) bytes: Vec<u8>,
    pub(crate) ending: Ending,
    /// Time from the start of the watch to the ending (or the timeout).
    pub(crate) after: Duration,
}

impl Closing {
    /// The bytes as packets; an error if they do not frame exactly.
    pub(crate) fn packets(&self) -> anyhow::Result<Vec<Packet>> {
        split_packets(&self.bytes)
    }

    /// One line for a test's output: hex bytes, packets, errors and the ending.
    pub(crate) fn describe(&self) -> String {
        let mut text = format!(
            "{} byte(s) [{}], then {:?} after {} ms",
            self.bytes.len(),
            hex(&self.bytes),
            self.ending,
            self.after.as_millis()
        );
        if let Ok(packets) = self.packets() {
            for packet in packets {
                let _ = write!(text, "; packet seq {}", packet.seq);
                if let Some(err) = parse_err(&packet.payload) {
                    let _ = write!(
                        text,
                        " ERR {} ({}) {:?}",
                        err.code,
                        err.sqlstate.as_deref().unwrap_or("-"),
                        err.message
                    );
                }
            }
        }
        text
    }
}

/// A raw client connection.
pub(crate) struct RawMysql {
    stream: TcpStream,
    /// Bytes read but not yet consumed as packets.
    pending: Vec<u8>,
    greeting: Greeting,
}

impl RawMysql {
    /// Connects and reads the greeting.
    pub(crate) async fn connect(port: u16) -> anyhow::Result<RawMysql> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        let mut client = RawMysql {
            stream,
            pending: Vec::new(),
            greeting: empty_greeting(),
        };
        let packet = client
            .read_packet(STEP)
            .await
            .context("reading the greeting")?;
        client.greeting = parse_greeting(&packet.payload)?;
        Ok(client)
    }

    /// Connects and logs in with `mysql_native_password`; `db` may be empty.
    pub(crate) async fn connect_login(
        port: u16,
        user: &str,
        password: &str,
        db: &str,
    ) -> anyhow::Result<RawMysql> {
        let mut client = Self::connect(port).await?;
        client.login(user, password, db).await?;
        Ok(client)
    }

    /// Writes `bytes` as they are, framing or not (lengths that lie).
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    pub(crate) fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// The server's id for this connection (what `KILL` takes).
    pub(crate) fn connection_id(&self) -> u32 {
        self.greeting.connection_id
    }

    /// Sends a HandshakeResponse41 and follows an auth switch to
    /// `mysql_native_password`; fails on ERR or any other plugin.
    pub(crate) async fn login(
        &mut self,
        user: &str,
        password: &str,
        db: &str,
    ) -> anyhow::Result<()> {
        let response = handshake_response(&self.greeting, user, password, db);
        self.send_packet(1, &response).await?;
        let reply = self
            .read_packet(STEP)
            .await
            .context("reading the login reply")?;
        match reply.payload.first() {
            Some(0x00) => Ok(()),
            Some(0xfe) => self.auth_switch(&reply, password).await,
            _ => bail!("login as {user} failed: {}", describe_reply(&reply.payload)),
        }
    }

    async fn auth_switch(&mut self, request: &Packet, password: &str) -> anyhow::Result<()> {
        let mut reader = Reader::new(&request.payload[1..]);
        let plugin = reader.nul_str().context("auth switch plugin name")?;
        if plugin != NATIVE_PASSWORD {
            bail!("auth switch to {plugin:?}: only {NATIVE_PASSWORD} is implemented");
        }
        let data = reader.rest();
        let nonce = data.strip_suffix(&[0]).unwrap_or(data);
        let scramble = native_password_scramble(password, nonce);
        self.send_packet(request.seq.wrapping_add(1), &scramble)
            .await?;
        let reply = self
            .read_packet(STEP)
            .await
            .context("reading the auth switch reply")?;
        match reply.payload.first() {
            Some(0x00) => Ok(()),
            _ => bail!(
                "login after auth switch failed: {}",
                describe_reply(&reply.payload)
            ),
        }
    }

    /// Sends one packet with sequence id `seq` (payload below 16 MiB).
    pub(crate) async fn send_packet(&mut self, seq: u8, payload: &[u8]) -> anyhow::Result<()> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|len| *len < 0xff_ffff)
            .context("payload too long for one packet")?;
        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&len.to_le_bytes()[..3]);
        frame.push(seq);
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Sends a command packet (sequence id 0): `command` byte and body.
    pub(crate) async fn send_command(&mut self, command: u8, body: &[u8]) -> anyhow::Result<()> {
        let mut payload = Vec::with_capacity(1 + body.len());
        payload.push(command);
        payload.extend_from_slice(body);
        self.send_packet(0, &payload).await
    }

    /// Sends COM_QUERY and expects a single OK packet (for SET, DO, DDL, ...).
    pub(crate) async fn query_ok(&mut self, sql: &str) -> anyhow::Result<()> {
        self.send_command(COM_QUERY, sql.as_bytes()).await?;
        let reply = self
            .read_packet(STEP)
            .await
            .with_context(|| format!("reply to {sql:?}"))?;
        if reply.payload.first() != Some(&0x00) {
            bail!("{sql:?} got {}", describe_reply(&reply.payload));
        }
        Ok(())
    }

    /// Reads one whole packet, waiting at most `limit`.
    pub(crate) async fn read_packet(&mut self, limit: Duration) -> anyhow::Result<Packet> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((packet, used)) = first_packet(&self.pending) {
                self.pending.drain(..used);
                return Ok(packet);
            }
            let mut buf = [0u8; 8192];
            let n = tokio::time::timeout_at(deadline.into(), self.stream.read(&mut buf))
                .await
                .context("no whole packet within the time limit")??;
            if n == 0 {
                bail!(
                    "connection closed with {} byte(s) of a packet pending",
                    self.pending.len()
                );
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// Reads everything until the peer closes or `limit` passes, without
    /// sending anything; bytes already buffered come first.
    pub(crate) async fn read_until_close(&mut self, limit: Duration) -> Closing {
        let start = Instant::now();
        let deadline = start + limit;
        let mut bytes = std::mem::take(&mut self.pending);
        let mut buf = [0u8; 8192];
        let ending = loop {
            match tokio::time::timeout_at(deadline.into(), self.stream.read(&mut buf)).await {
                Err(_) => break Ending::Open,
                Ok(Ok(0)) => break Ending::Fin,
                Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
                Ok(Err(err)) => break Ending::Reset(err.to_string()),
            }
        };
        Closing {
            bytes,
            ending,
            after: start.elapsed(),
        }
    }
}

fn empty_greeting() -> Greeting {
    Greeting {
        server_version: String::new(),
        connection_id: 0,
        capabilities: 0,
        status: 0,
        scramble: Vec::new(),
        auth_plugin: String::new(),
    }
}

/// Parses a v10 greeting (an ERR instead is returned as an error).
pub(crate) fn parse_greeting(payload: &[u8]) -> anyhow::Result<Greeting> {
    if let Some(err) = parse_err(payload) {
        bail!(
            "server refused the connection: ERR {} {:?}",
            err.code,
            err.message
        );
    }
    let mut r = Reader::new(payload);
    let protocol = r.u8()?;
    if protocol != 10 {
        bail!("greeting with protocol version {protocol}, not 10");
    }
    let server_version = r.nul_str().context("server version")?;
    let connection_id = r.u32()?;
    let mut scramble = r.take(8)?.to_vec();
    r.take(1)?; // filler
    let caps_low = u32::from(r.u16()?);
    r.take(1)?; // character set
    let status = r.u16()?;
    let caps_high = u32::from(r.u16()?);
    let auth_data_len = usize::from(r.u8()?);
    r.take(10)?; // reserved (MariaDB: extended capabilities in the last 4)
    let capabilities = caps_low | (caps_high << 16);
    if capabilities & CLIENT_SECURE_CONNECTION != 0 {
        let part2 = r.take(auth_data_len.saturating_sub(8).max(13))?;
        // The part ends with a NUL that is not part of the nonce.
        scramble.extend_from_slice(part2.strip_suffix(&[0]).unwrap_or(part2));
    }
    let auth_plugin = if capabilities & CLIENT_PLUGIN_AUTH != 0 {
        r.nul_str().unwrap_or_default()
    } else {
        String::new()
    };
    Ok(Greeting {
        server_version,
        connection_id,
        capabilities,
        status,
        scramble,
        auth_plugin,
    })
}

/// A HandshakeResponse41 for `mysql_native_password`.
fn handshake_response(greeting: &Greeting, user: &str, password: &str, db: &str) -> Vec<u8> {
    let mut caps = CLIENT_LONG_PASSWORD
        | CLIENT_PROTOCOL_41
        | CLIENT_TRANSACTIONS
        | CLIENT_SECURE_CONNECTION
        | CLIENT_MULTI_RESULTS
        | CLIENT_PLUGIN_AUTH;
    if !db.is_empty() {
        caps |= CLIENT_CONNECT_WITH_DB;
    }
    caps &= greeting.capabilities | CLIENT_LONG_PASSWORD;
    let auth = if greeting.auth_plugin == NATIVE_PASSWORD || greeting.auth_plugin.is_empty() {
        native_password_scramble(password, &greeting.scramble)
    } else {
        // Another default plugin: answer nothing and let the server switch.
        Vec::new()
    };
    let mut out = Vec::new();
    out.extend_from_slice(&caps.to_le_bytes());
    out.extend_from_slice(&MAX_PACKET.to_le_bytes());
    out.push(CHARSET_UTF8MB4);
    out.extend_from_slice(&[0u8; 23]);
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    // A scramble is 0 or 20 bytes, so the one-byte length always fits.
    out.push(u8::try_from(auth.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&auth);
    if caps & CLIENT_CONNECT_WITH_DB != 0 {
        out.extend_from_slice(db.as_bytes());
        out.push(0);
    }
    if caps & CLIENT_PLUGIN_AUTH != 0 {
        out.extend_from_slice(NATIVE_PASSWORD.as_bytes());
        out.push(0);
    }
    out
}

/// SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password))); empty for an empty password.
pub(crate) fn native_password_scramble(password: &str, nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha1::digest(password.as_bytes());
    let stage2 = Sha1::digest(stage1);
    let mut hasher = Sha1::new();
    hasher.update(nonce);
    hasher.update(stage2);
    let mask = hasher.finalize();
    stage1.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect()
}

/// The first whole packet in `bytes` and how many bytes it used, if complete.
fn first_packet(bytes: &[u8]) -> Option<(Packet, usize)> {
    let header = bytes.get(..4)?;
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    let payload = bytes.get(4..4 + len)?;
    let packet = Packet {
        seq: header[3],
        payload: payload.to_vec(),
    };
    Some((packet, 4 + len))
}

/// Splits bytes into packets; an error if the last one is cut short.
pub(crate) fn split_packets(mut bytes: &[u8]) -> anyhow::Result<Vec<Packet>> {
    let mut packets = Vec::new();
    while !bytes.is_empty() {
        let Some((packet, used)) = first_packet(bytes) else {
            bail!("{} trailing byte(s) are not a whole packet", bytes.len());
        };
        packets.push(packet);
        bytes = &bytes[used..];
    }
    Ok(packets)
}

/// Decodes an ERR packet payload (protocol 41 form, SQLSTATE marker optional).
pub(crate) fn parse_err(payload: &[u8]) -> Option<ErrPacket> {
    let mut r = Reader::new(payload);
    if r.u8().ok()? != 0xff {
        return None;
    }
    let code = r.u16().ok()?;
    let rest = r.rest();
    let (sqlstate, message) = match rest.split_first() {
        Some((b'#', after)) if after.len() >= 5 => (
            Some(String::from_utf8_lossy(&after[..5]).into_owned()),
            &after[5..],
        ),
        _ => (None, rest),
    };
    Some(ErrPacket {
        code,
        sqlstate,
        message: String::from_utf8_lossy(message).into_owned(),
    })
}

/// A short description of a reply packet for error messages.
fn describe_reply(payload: &[u8]) -> String {
    match parse_err(payload) {
        Some(err) => format!("ERR {} ({:?}) {:?}", err.code, err.sqlstate, err.message),
        None => format!("packet [{}]", hex(payload)),
    }
}

/// Bytes as space-separated lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, byte) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// A bounds-checked cursor over a payload.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.buf.len());
        let end = end.with_context(|| {
            format!(
                "packet too short: need {n} byte(s) at offset {}, have {}",
                self.pos,
                self.buf.len()
            )
        })?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> anyhow::Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> anyhow::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated string (the NUL is consumed).
    fn nul_str(&mut self) -> anyhow::Result<String> {
        let rest = &self.buf[self.pos..];
        let len = rest
            .iter()
            .position(|b| *b == 0)
            .context("no NUL terminator")?;
        let text = String::from_utf8_lossy(&rest[..len]).into_owned();
        self.pos += len + 1;
        Ok(text)
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        rest
    }
}
