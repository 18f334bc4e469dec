//! Reading and writing with deadlines for the phases where Suture itself speaks a protocol
//! (logins, resets, health checks, errors it sends): the error type every protocol's socket work
//! reports, one read into a buffer, and a bounded write. The command phase streams instead
//! (`session::relay`). Protocol-agnostic.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use suture_protocol::ProtocolError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How much a read buffer grows by at least, per read. Login and reset messages are small, and
/// the buffers read into here become the session's (a client's, a backend's): kept small, they
/// cost an idle session little (DESIGN §10); a larger message grows the buffer as it arrives.
pub(crate) const READ_CHUNK: usize = 1024;

/// Why reading or writing a message failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[source] io::Error),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The peer sent bytes that are not a valid message.
    #[error("protocol violation: {0}")]
    Protocol(#[source] ProtocolError),
    /// The peer did not answer or did not read in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The peer accepted no byte of a write for this long: it stopped reading.
    #[error("peer stopped reading: no byte accepted for {0:?}")]
    StoppedReading(Duration),
}

impl From<io::Error> for WireError {
    fn from(err: io::Error) -> Self {
        WireError::Io(err)
    }
}

impl From<ProtocolError> for WireError {
    fn from(err: ProtocolError) -> Self {
        WireError::Protocol(err)
    }
}

/// Reads from `reader` into `buf` once; EOF is [`WireError::Closed`].
pub(crate) async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<usize, WireError> {
    buf.reserve(READ_CHUNK);
    match reader.read_buf(buf).await? {
        0 => Err(WireError::Closed),
        n => Ok(n),
    }
}

/// Writes all of `bytes` and flushes, within `limit`.
pub(crate) async fn write_all<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), WireError> {
    let write = async {
        writer.write_all(bytes).await?;
        writer.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(result) => result.map_err(WireError::Io),
        Err(_) => Err(WireError::Timeout(limit)),
    }
}
