//! TCP connect to a pool's backend servers: resolve afresh, try each candidate, bound every step.
//!
//! A failure here means nothing was sent to any server, so the caller may always retry.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::dns::{DnsError, Resolver};
use super::socket::{configure_backend_socket, SocketOptions};
use crate::config::ServerAddr;

/// Why no backend connection could be made. Describes the last failure seen.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no backend servers configured")]
    NoServers,
    #[error("cannot resolve backend {server}")]
    Dns {
        server: ServerAddr,
        #[source]
        source: DnsError,
    },
    #[error("connecting to backend {server} ({addr}) timed out after {timeout:?}")]
    Timeout {
        server: ServerAddr,
        addr: SocketAddr,
        timeout: Duration,
    },
    #[error("cannot connect to backend {server} ({addr})")]
    Io {
        server: ServerAddr,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl ConnectError {
    /// The `result` label of `suture_backend_connects_total`: `timeout`, `refused` or `dns_error`.
    pub fn metrics_label(&self) -> &'static str {
        match self {
            ConnectError::Dns { .. } => "dns_error",
            ConnectError::Timeout { .. } => "timeout",
            ConnectError::NoServers | ConnectError::Io { .. } => "refused",
        }
    }
}

/// Connects to the first server that accepts, in configuration order, trying every address each
/// name resolves to. Names are resolved on every call (the resolver caches within the record's
/// TTL). Each lookup is bounded by `dns_timeout`, each connect attempt by `connect_timeout`.
/// The socket is configured with [`configure_backend_socket`] and `socket`. Cancel safe.
pub async fn connect_tcp(
    resolver: &Resolver,
    servers: &[ServerAddr],
    dns_timeout: Duration,
    connect_timeout: Duration,
    socket: &SocketOptions,
) -> Result<(TcpStream, ServerAddr, SocketAddr), ConnectError> {
    let mut last_error = ConnectError::NoServers;
    for server in servers {
        let addrs = match resolver
            .resolve(&server.host, server.port, dns_timeout)
            .await
        {
            Ok(addrs) => addrs,
            Err(source) => {
                tracing::debug!(%server, error = %source, "backend name did not resolve");
                last_error = ConnectError::Dns {
                    server: server.clone(),
                    source,
                };
                continue;
            }
        };
        for addr in addrs {
            match connect_one(server, addr, connect_timeout, socket).await {
                Ok(stream) => return Ok((stream, server.clone(), addr)),
                Err(err) => {
                    tracing::debug!(%server, %addr, error = %err, "backend connect failed");
                    last_error = err;
                }
            }
        }
    }
    Err(last_error)
}

async fn connect_one(
    server: &ServerAddr,
    addr: SocketAddr,
    timeout: Duration,
    socket: &SocketOptions,
) -> Result<TcpStream, ConnectError> {
    let io_error = |source| ConnectError::Io {
        server: server.clone(),
        addr,
        source,
    };
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_elapsed) => {
            return Err(ConnectError::Timeout {
                server: server.clone(),
                addr,
                timeout,
            })
        }
        Ok(result) => result.map_err(io_error)?,
    };
    configure_backend_socket(&stream, socket).map_err(io_error)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_secs(2);

    fn addr(host: &str, port: u16) -> ServerAddr {
        ServerAddr {
            host: host.to_owned(),
            port,
        }
    }

    /// A port on which nothing listens (bound, then released).
    async fn closed_port() -> std::io::Result<u16> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Ok(listener.local_addr()?.port())
    }

    #[tokio::test]
    async fn falls_through_to_the_next_server() -> Result<(), Box<dyn std::error::Error>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let servers = [
            addr("127.0.0.1", closed_port().await?),
            addr("localhost", port),
        ];
        let resolver = Resolver::new(T);
        let (_stream, server, peer) =
            connect_tcp(&resolver, &servers, T, T, &SocketOptions::default()).await?;
        assert_eq!(server, servers[1]);
        assert_eq!(peer.port(), port);
        Ok(())
    }

    #[tokio::test]
    async fn refused_is_labelled() -> std::io::Result<()> {
        let servers = [addr("127.0.0.1", closed_port().await?)];
        let err = connect_tcp(&Resolver::new(T), &servers, T, T, &SocketOptions::default())
            .await
            .expect_err("nothing listens");
        assert_eq!(err.metrics_label(), "refused");
        assert!(err.to_string().contains("127.0.0.1"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn no_servers_is_an_error() {
        let err = connect_tcp(&Resolver::new(T), &[], T, T, &SocketOptions::default())
            .await
            .expect_err("no servers");
        assert!(matches!(err, ConnectError::NoServers));
    }

    #[tokio::test]
    async fn connect_is_bounded_by_the_timeout() {
        // 192.0.2.1 (TEST-NET-1) drops SYNs, or the network is unreachable: either way, quickly.
        let servers = [addr("192.0.2.1", 5432)];
        let start = std::time::Instant::now();
        let err = connect_tcp(
            &Resolver::new(T),
            &servers,
            T,
            Duration::from_millis(200),
            &SocketOptions::default(),
        )
        .await
        .expect_err("unreachable");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "took {:?}",
            start.elapsed()
        );
        assert!(
            matches!(err.metrics_label(), "timeout" | "refused"),
            "{err}"
        );
    }

    #[test]
    fn dns_failures_are_labelled() {
        let err = ConnectError::Dns {
            server: addr("db", 1),
            source: DnsError::Timeout {
                host: "db".into(),
                timeout: T,
            },
        };
        assert_eq!(err.metrics_label(), "dns_error");
    }
}
