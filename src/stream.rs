//! The two halves of a backend socket, plain TCP or TLS, so a session can read and write them
//! from two concurrent futures. Protocol-agnostic: PostgreSQL and MySQL backends both use it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

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

impl AsyncRead for StreamRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamRead::Plain(s) => Pin::new(s).poll_read(cx, buf),
            StreamRead::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for StreamWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            StreamWrite::Plain(s) => Pin::new(s).poll_write(cx, buf),
            StreamWrite::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamWrite::Plain(s) => Pin::new(s).poll_flush(cx),
            StreamWrite::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamWrite::Plain(s) => Pin::new(s).poll_shutdown(cx),
            StreamWrite::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
