//! Is an idle backend socket still alive? A non-blocking peek answers without consuming
//! anything (DESIGN §5): nothing to read means alive, end of stream means the peer sent FIN, an
//! error means RST, and bytes waiting while idle are an unsolicited message the protocol layer
//! must read and classify. Works for TLS connections too (it looks at the TCP socket under them).

use std::io;
use std::mem::MaybeUninit;

use bytes::BytesMut;
use socket2::Socket;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

/// What a peek saw on an idle socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Nothing to read, no close: alive.
    Alive,
    /// End of stream: the peer (or something in between) closed.
    Fin,
    /// The socket failed (connection reset and the like).
    Rst,
    /// Bytes arrived while idle.
    DataWaiting,
}

impl Liveness {
    /// Cause label for `suture_backend_idle_closes_total{cause}`, for the dead states.
    pub(crate) fn cause(self) -> &'static str {
        match self {
            Liveness::Fin => "fin",
            Liveness::Rst => "rst",
            Liveness::Alive | Liveness::DataWaiting => "server_error",
        }
    }
}

/// A second handle on a backend's TCP socket, used only for peeking.
pub(crate) struct Probe {
    socket: Socket,
}

impl Probe {
    /// Duplicates the socket's descriptor (it shares the non-blocking mode and the connection).
    pub(crate) fn of(stream: &TcpStream) -> io::Result<Probe> {
        Ok(Probe {
            socket: socket2::SockRef::from(stream).try_clone()?,
        })
    }

    /// Peeks without blocking and without consuming.
    pub(crate) fn check(&self) -> Liveness {
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        match self.socket.peek(&mut byte) {
            Ok(0) => Liveness::Fin,
            Ok(_) => Liveness::DataWaiting,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Liveness::Alive,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Liveness::Alive,
            Err(_) => Liveness::Rst,
        }
    }
}

/// The first step of an idle backend's check, for both protocols: a connection marked broken
/// or a socket found dead fails with its cause label; `Ok(true)` means bytes are waiting and
/// the protocol must read them to judge.
pub(crate) fn data_waiting(broken: bool, probe: &Probe) -> Result<bool, &'static str> {
    if broken {
        return Err("error");
    }
    match probe.check() {
        Liveness::Alive => Ok(false),
        Liveness::DataWaiting => Ok(true),
        dead => Err(dead.cause()),
    }
}

/// Reads into `buf` whatever `reader` has ready, without waiting (for a connection whose probe
/// saw bytes while idle; over TLS they may turn out to be records without data). `Err` carries
/// the idle-close cause: `fin` at end of stream, `rst` when the socket failed, `server_error`
/// when more than `max` bytes would be held.
pub(crate) fn read_ready<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(), &'static str> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut chunk = [0u8; 4096];
    loop {
        let mut read = ReadBuf::new(&mut chunk);
        match std::pin::Pin::new(&mut *reader).poll_read(&mut cx, &mut read) {
            std::task::Poll::Pending => return Ok(()),
            std::task::Poll::Ready(Err(_)) => return Err(Liveness::Rst.cause()),
            std::task::Poll::Ready(Ok(())) => {
                let got = read.filled();
                if got.is_empty() {
                    return Err(Liveness::Fin.cause());
                }
                if buf.len() + got.len() > max {
                    return Err(Liveness::DataWaiting.cause());
                }
                buf.extend_from_slice(got);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    async fn settle() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn quiet_socket_is_alive() {
        let (client, _server) = pair().await;
        assert_eq!(Probe::of(&client).expect("probe").check(), Liveness::Alive);
    }

    #[tokio::test]
    async fn fin_is_seen() {
        let (client, mut server) = pair().await;
        server.shutdown().await.expect("shutdown");
        settle().await;
        assert_eq!(Probe::of(&client).expect("probe").check(), Liveness::Fin);
    }

    #[tokio::test]
    async fn rst_is_seen() {
        let (client, server) = pair().await;
        server.set_zero_linger().expect("linger");
        drop(server);
        settle().await;
        assert_eq!(Probe::of(&client).expect("probe").check(), Liveness::Rst);
    }

    #[tokio::test]
    async fn unsolicited_bytes_are_seen_and_left_in_place() {
        let (client, mut server) = pair().await;
        server.write_all(b"E").await.expect("write");
        settle().await;
        let probe = Probe::of(&client).expect("probe");
        assert_eq!(probe.check(), Liveness::DataWaiting);
        assert_eq!(probe.check(), Liveness::DataWaiting);
    }
}
