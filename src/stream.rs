//! The two halves of a backend socket, plain TCP or TLS, so a session can read and write them
//! from two concurrent futures. Protocol-agnostic: PostgreSQL and MySQL backends both use it.

use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::io_delegate::{delegate_async_read, delegate_async_write};

/// Reading half of a backend connection.
pub(crate) enum StreamRead {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// TLS over TCP.
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// Writing half of a backend connection.
pub(crate) enum StreamWrite {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// TLS over TCP.
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

/// Splits a plain TCP stream.
pub(crate) fn split_plain(stream: TcpStream) -> (StreamRead, StreamWrite) {
    let (r, w) = stream.into_split();
    (StreamRead::Plain(r), StreamWrite::Plain(w))
}

/// Splits a TLS stream.
pub(crate) fn split_tls(stream: TlsStream<TcpStream>) -> (StreamRead, StreamWrite) {
    let (r, w) = tokio::io::split(stream);
    (StreamRead::Tls(r), StreamWrite::Tls(w))
}

delegate_async_read!(StreamRead { Plain, Tls });
delegate_async_write!(StreamWrite { Plain, Tls });
