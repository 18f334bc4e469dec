//! The client's connection, over TCP or a Unix-domain socket: one [`ClientSocket`] for the
//! login phase and its two halves ([`ClientRead`], [`ClientWrite`]) for the command phase, the
//! client's address for logs, and the socket options that apply to TCP only.
//!
//! An enum rather than a type parameter: the relay is generic over its reader and writer
//! already, so it is compiled once for these enums, and each read or write pays one branch that
//! is always predicted (the variant never changes during a session) next to a system call. A
//! type parameter would compile the whole session core twice and thread a second parameter
//! through every hook.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{tcp, unix, TcpStream, UnixStream};

use crate::io_delegate::{delegate_async_read, delegate_async_write};
use crate::net::socket::configure_client_socket;

/// A client connection as accepted.
pub(crate) enum ClientSocket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The reading half of a client connection.
pub(crate) enum ClientRead {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
}

/// The writing half of a client connection; dropping it shuts the client's side down.
pub(crate) enum ClientWrite {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
}

/// Who is connected, for logs and for the host a MySQL error names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientPeer {
    Tcp(SocketAddr),
    /// A client of a Unix-socket listener (its end of the socket has no name).
    Unix,
    /// A TCP client whose address could not be read any more (it already left).
    Unknown,
}

impl ClientPeer {
    /// The client's IP address; `None` over a Unix socket.
    pub(crate) fn ip(self) -> Option<IpAddr> {
        match self {
            ClientPeer::Tcp(addr) => Some(addr.ip()),
            ClientPeer::Unix | ClientPeer::Unknown => None,
        }
    }

    fn of_tcp(addr: io::Result<SocketAddr>) -> ClientPeer {
        addr.map_or(ClientPeer::Unknown, ClientPeer::Tcp)
    }
}

impl fmt::Display for ClientPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientPeer::Tcp(addr) => write!(f, "{addr}"),
            ClientPeer::Unix => f.write_str("unix"),
            ClientPeer::Unknown => f.write_str("unknown"),
        }
    }
}

impl ClientSocket {
    /// Sets the client-side socket options (`TCP_NODELAY`, `TCP_NOTSENT_LOWAT`); a Unix
    /// socket has none of them to set.
    pub(crate) fn configure(&self) -> io::Result<()> {
        match self {
            ClientSocket::Tcp(stream) => configure_client_socket(stream),
            ClientSocket::Unix(_) => Ok(()),
        }
    }

    /// Who is connected.
    pub(crate) fn peer(&self) -> ClientPeer {
        match self {
            ClientSocket::Tcp(stream) => ClientPeer::of_tcp(stream.peer_addr()),
            ClientSocket::Unix(_) => ClientPeer::Unix,
        }
    }

    /// The two halves, for reading and writing from two futures at once.
    pub(crate) fn into_split(self) -> (ClientRead, ClientWrite) {
        match self {
            ClientSocket::Tcp(stream) => {
                let (r, w) = stream.into_split();
                (ClientRead::Tcp(r), ClientWrite::Tcp(w))
            }
            ClientSocket::Unix(stream) => {
                let (r, w) = stream.into_split();
                (ClientRead::Unix(r), ClientWrite::Unix(w))
            }
        }
    }
}

impl ClientRead {
    /// Who is connected.
    pub(crate) fn peer(&self) -> ClientPeer {
        match self {
            ClientRead::Tcp(half) => ClientPeer::of_tcp(half.peer_addr()),
            ClientRead::Unix(_) => ClientPeer::Unix,
        }
    }
}

delegate_async_read!(ClientSocket { Tcp, Unix });
delegate_async_read!(ClientRead { Tcp, Unix });
delegate_async_write!(ClientSocket { Tcp, Unix });
delegate_async_write!(ClientWrite { Tcp, Unix });

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn unix_halves_carry_bytes_both_ways() -> io::Result<()> {
        let (ours, mut theirs) = UnixStream::pair()?;
        let socket = ClientSocket::Unix(ours);
        socket.configure()?;
        assert_eq!(socket.peer(), ClientPeer::Unix);
        assert_eq!(socket.peer().to_string(), "unix");
        assert_eq!(socket.peer().ip(), None);
        let (mut read, mut write) = socket.into_split();
        assert_eq!(read.peer(), ClientPeer::Unix);
        write.write_all(b"ping").await?;
        let mut got = [0u8; 4];
        theirs.read_exact(&mut got).await?;
        assert_eq!(&got, b"ping");
        theirs.write_all(b"pong").await?;
        read.read_exact(&mut got).await?;
        assert_eq!(&got, b"pong");
        drop(write);
        assert_eq!(
            theirs.read(&mut got).await?,
            0,
            "dropping the writer shuts it down"
        );
        Ok(())
    }

    #[tokio::test]
    async fn tcp_peer_is_its_address() -> io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (accepted, addr) = listener.accept().await?;
        let socket = ClientSocket::Tcp(accepted);
        socket.configure()?;
        assert_eq!(socket.peer(), ClientPeer::Tcp(addr));
        assert_eq!(socket.peer().to_string(), client.local_addr()?.to_string());
        Ok(())
    }
}
