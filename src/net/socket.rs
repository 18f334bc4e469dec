//! Socket options for both sides of the proxy.
//!
//! Backend sockets get keepalive probes and `TCP_USER_TIMEOUT` so a peer that vanished without a
//! FIN or RST (a NAT table entry dropped, a host gone dark) is noticed within about a minute
//! instead of the kernel's default of hours (field reports F1 and F3).
//!
//! Both sides get `TCP_NOTSENT_LOWAT`: a socket is reported writable as soon as little of what
//! was written is still unsent, not only once a third of a (possibly many-MiB, autotuned) send
//! buffer is free. Write timeouts measure progress, so a peer that reads slowly but steadily
//! must be seen to make it (DESIGN §6).
//!
//! Client listeners get a listen backlog of thousands, not the 128 of `TcpListener::bind`.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};

/// Default idle time before the first keepalive probe (`keepalive_idle`).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the kernel drops the connection.
pub const KEEPALIVE_RETRIES: u32 = 3;
/// Default for how long sent data may stay unacknowledged before the kernel drops the
/// connection (`tcp_user_timeout`).
pub const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Unsent bytes below which a socket counts as writable (`TCP_NOTSENT_LOWAT`).
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

/// The configurable backend socket options (`keepalive_idle`, `tcp_user_timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// Idle time before the first keepalive probe.
    pub keepalive_idle: Duration,
    /// `TCP_USER_TIMEOUT` (Linux); zero leaves the kernel default.
    pub user_timeout: Duration,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            keepalive_idle: KEEPALIVE_IDLE,
            user_timeout: USER_TIMEOUT,
        }
    }
}

impl From<&crate::config::Timeouts> for SocketOptions {
    fn from(t: &crate::config::Timeouts) -> Self {
        SocketOptions {
            keepalive_idle: t.keepalive_idle,
            user_timeout: t.tcp_user_timeout,
        }
    }
}

/// `TCP_NODELAY`, keepalive (`keepalive_idle`, then 10 s interval, 3 probes) and, on Linux,
/// `TCP_USER_TIMEOUT` (unless zero).
pub fn configure_backend_socket(stream: &TcpStream, opts: &SocketOptions) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = SockRef::from(stream);
    let keepalive = TcpKeepalive::new()
        .with_time(opts.keepalive_idle)
        .with_interval(KEEPALIVE_INTERVAL);
    #[cfg(not(any(target_os = "openbsd", target_os = "windows")))]
    let keepalive = keepalive.with_retries(KEEPALIVE_RETRIES);
    sock.set_tcp_keepalive(&keepalive)?;
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    if !opts.user_timeout.is_zero() {
        sock.set_tcp_user_timeout(Some(opts.user_timeout))?;
    }
    set_notsent_lowat(&sock)
}

/// Listen backlog of client listeners; the kernel caps it at `net.core.somaxconn` (4096 by
/// default since Linux 5.4).
pub const LISTEN_BACKLOG: i32 = 4096;

/// Binds a client listener (`SO_REUSEADDR`, non-blocking) with a backlog of
/// [`LISTEN_BACKLOG`]. With tokio's 128, a burst of connection attempts overflows the accept
/// queue while the event loop is busy: the kernel drops SYNs (clients retry after 1 s, 3 s,
/// ...), or with SYN cookies the handshake's last ACK, and a MySQL client, which waits for the
/// server to speak first, then waits until its own timeout.
pub fn bind_client_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// `TCP_NODELAY` (replies to clients are already batched by the proxy) and
/// `TCP_NOTSENT_LOWAT`.
pub fn configure_client_socket(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    set_notsent_lowat(&SockRef::from(stream))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_notsent_lowat(sock: &SockRef<'_>) -> std::io::Result<()> {
    sock.set_tcp_notsent_lowat(NOTSENT_LOWAT)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_notsent_lowat(_sock: &SockRef<'_>) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn client_listener_queues_more_than_128_connections() -> std::io::Result<()> {
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(128);
        if somaxconn < 512 {
            return Ok(()); // the kernel would cap the backlog anyway
        }
        let listener = bind_client_listener("127.0.0.1:0".parse().map_err(std::io::Error::other)?)?;
        let addr = listener.local_addr()?;
        // Nothing accepts: every connection waits in the queue, and none may be dropped
        // (a dropped SYN would be retried only after a second).
        let mut queued = Vec::new();
        for _ in 0..300 {
            let connect = TcpStream::connect(addr);
            match tokio::time::timeout(Duration::from_millis(500), connect).await {
                Ok(stream) => queued.push(stream?),
                Err(_) => panic!("connection {} was not queued", queued.len() + 1),
            }
        }
        let (accepted, _) = listener.accept().await?;
        assert_eq!(accepted.local_addr()?, addr);
        Ok(())
    }

    #[tokio::test]
    async fn backend_options_are_set() -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let stream = TcpStream::connect(listener.local_addr()?).await?;
        configure_backend_socket(&stream, &SocketOptions::default())?;
        let sock = SockRef::from(&stream);
        assert!(sock.tcp_nodelay()?);
        assert!(sock.keepalive()?);
        #[cfg(target_os = "linux")]
        {
            assert_eq!(sock.tcp_keepalive_time()?, KEEPALIVE_IDLE);
            assert_eq!(sock.tcp_keepalive_interval()?, KEEPALIVE_INTERVAL);
            assert_eq!(sock.tcp_keepalive_retries()?, KEEPALIVE_RETRIES);
            assert_eq!(sock.tcp_user_timeout()?, Some(USER_TIMEOUT));
        }
        Ok(())
    }

    #[tokio::test]
    async fn backend_options_follow_the_config() -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let stream = TcpStream::connect(listener.local_addr()?).await?;
        let opts = SocketOptions {
            keepalive_idle: Duration::from_secs(7),
            user_timeout: Duration::from_secs(2),
        };
        configure_backend_socket(&stream, &opts)?;
        #[cfg(target_os = "linux")]
        {
            let sock = SockRef::from(&stream);
            assert_eq!(sock.tcp_keepalive_time()?, Duration::from_secs(7));
            assert_eq!(sock.tcp_user_timeout()?, Some(Duration::from_secs(2)));
        }
        Ok(())
    }

    #[tokio::test]
    async fn client_options_are_set() -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let stream = TcpStream::connect(listener.local_addr()?).await?;
        configure_client_socket(&stream)?;
        assert!(SockRef::from(&stream).tcp_nodelay()?);
        #[cfg(target_os = "linux")]
        assert_eq!(SockRef::from(&stream).tcp_notsent_lowat()?, NOTSENT_LOWAT);
        Ok(())
    }
}
