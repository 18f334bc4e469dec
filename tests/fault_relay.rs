//! Self-tests of the fault relay (tests/support/fault_relay.rs) against a
//! small local echo server: each fault looks to a client the way the
//! healing tests assume it does.

mod support;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use support::fault_relay::{Direction, FaultRelay};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(5);

/// An echo server; `received` counts the bytes it has read over all connections.
struct Echo {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_server() -> anyhow::Result<Echo> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buf = vec![0_u8; 8192];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            counter.fetch_add(n as u64, Ordering::SeqCst);
                            if sock.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(Echo {
        addr,
        received,
        task,
    })
}

async fn setup() -> anyhow::Result<(Echo, FaultRelay)> {
    let echo = echo_server().await?;
    let relay = FaultRelay::start(echo.addr).await?;
    Ok((echo, relay))
}

async fn connect(relay: &FaultRelay) -> anyhow::Result<TcpStream> {
    Ok(tokio::time::timeout(LIMIT, TcpStream::connect(relay.addr())).await??)
}

/// Writes `msg` and reads the same number of bytes back.
async fn roundtrip(sock: &mut TcpStream, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
    sock.write_all(msg).await?;
    let mut back = vec![0_u8; msg.len()];
    tokio::time::timeout(LIMIT, sock.read_exact(&mut back))
        .await
        .context("echo did not come back in time")??;
    Ok(back)
}

/// Waits until the relay has `n` open flows (the accept side runs async).
async fn wait_flows(relay: &FaultRelay, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + LIMIT;
    while relay.flow_count() != n {
        ensure!(
            Instant::now() < deadline,
            "relay has {} open flows, expected {n}",
            relay.flow_count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Reads until EOF or an error; returns the bytes and how it ended.
async fn read_to_end_or_error(
    sock: &mut TcpStream,
) -> anyhow::Result<(Vec<u8>, Option<ErrorKind>)> {
    let mut got = Vec::new();
    let mut buf = vec![0_u8; 8192];
    loop {
        match tokio::time::timeout(LIMIT, sock.read(&mut buf))
            .await
            .context("read neither ended nor failed in time")?
        {
            Ok(0) => return Ok((got, None)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) => return Ok((got, Some(err.kind()))),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_pass_through_both_ways() -> anyhow::Result<()> {
    let (_echo, relay) = setup().await?;
    let mut sock = connect(&relay).await?;
    let msg: Vec<u8> = (0..200_000_u32).map(|i| (i % 251) as u8).collect();
    let back = roundtrip(&mut sock, &msg).await?;
    ensure!(back == msg, "echo through the relay differs");
    wait_flows(&relay, 1).await?;
    ensure!(relay.accepted_count() == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rst_makes_the_client_read_fail_with_connection_reset() -> anyhow::Result<()> {
    let (_echo, relay) = setup().await?;
    let mut sock = connect(&relay).await?;
    roundtrip(&mut sock, b"hello").await?;
    relay.rst_all().await?;
    let (got, ended) = read_to_end_or_error(&mut sock).await?;
    ensure!(got.is_empty(), "unexpected bytes {got:?}");
    ensure!(
        ended == Some(ErrorKind::ConnectionReset),
        "expected ECONNRESET, read ended with {ended:?}"
    );
    wait_flows(&relay, 0).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rst_flow_resets_only_that_flow() -> anyhow::Result<()> {
    let (_echo, relay) = setup().await?;
    let mut first = connect(&relay).await?;
    roundtrip(&mut first, b"one").await?;
    let mut second = connect(&relay).await?;
    roundtrip(&mut second, b"two").await?;
    wait_flows(&relay, 2).await?;
    relay.rst_flow(0).await?;
    let (_, ended) = read_to_end_or_error(&mut first).await?;
    ensure!(
        ended == Some(ErrorKind::ConnectionReset),
        "first flow: {ended:?}"
    );
    ensure!(roundtrip(&mut second, b"still").await? == b"still");
    ensure!(relay.flow_count() == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fin_makes_the_client_read_eof() -> anyhow::Result<()> {
    let (_echo, relay) = setup().await?;
    let mut sock = connect(&relay).await?;
    roundtrip(&mut sock, b"hello").await?;
    relay.fin_all().await?;
    let (got, ended) = read_to_end_or_error(&mut sock).await?;
    ensure!(got.is_empty(), "unexpected bytes {got:?}");
    ensure!(ended.is_none(), "expected EOF, read failed with {ended:?}");
    // The half-closed socket still accepts writes (like a server that sent
    // FIN and has not gone away yet); nothing comes back.
    sock.write_all(b"into the void").await?;
    ensure!(relay.flow_count() == 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_stalls_old_flows_while_new_flows_work() -> anyhow::Result<()> {
    let (_echo, relay) = setup().await?;
    let mut old = connect(&relay).await?;
    roundtrip(&mut old, b"before").await?;
    relay.blackhole_all().await?;
    old.write_all(b"lost").await?;
    let mut buf = [0_u8; 16];
    match tokio::time::timeout(Duration::from_millis(500), old.read(&mut buf)).await {
        Err(_) => {}
        Ok(read) => bail!("black-holed flow answered: {read:?}"),
    }
    let mut new = connect(&relay).await?;
    ensure!(roundtrip(&mut new, b"fresh").await? == b"fresh");
    wait_flows(&relay, 2).await?;
    // Resuming lets the old flow carry on; what was held back arrives first,
    // as TCP would retransmit it after a transient black hole.
    relay.resume_all().await?;
    old.write_all(b"again").await?;
    let mut back = [0_u8; 9];
    tokio::time::timeout(LIMIT, old.read_exact(&mut back)).await??;
    ensure!(&back == b"lostagain", "resumed flow echoed {back:?}");
    Ok(())
}

/// A chunk the relay had read but not yet written when a black hole began
/// is held, not dropped: after the resume it arrives, as TCP would deliver
/// it after a transient outage. (Found by pg_ledger: a query swallowed this
/// way left its session on a live connection waiting for a reply forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_holds_a_chunk_already_read() -> anyhow::Result<()> {
    let (echo, relay) = setup().await?;
    let mut sock = connect(&relay).await?;
    roundtrip(&mut sock, b"warm").await?;
    let before = echo.received.load(Ordering::SeqCst);
    // Each chunk waits this long in the relay before it is written.
    relay.set_delay(Duration::from_millis(300));
    sock.write_all(b"in flight").await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    relay.blackhole_all().await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    ensure!(
        echo.received.load(Ordering::SeqCst) == before,
        "bytes reached the server during the black hole"
    );
    relay.set_delay(Duration::ZERO);
    relay.resume_all().await?;
    let mut back = [0_u8; 9];
    tokio::time::timeout(LIMIT, sock.read_exact(&mut back))
        .await
        .context("the chunk read before the black hole never arrived")??;
    ensure!(&back == b"in flight", "resumed flow echoed {back:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_towards_client_delivers_exactly_n_bytes_then_reset() -> anyhow::Result<()> {
    let (_echo, relay) = setup().await?;
    relay.cut_after(Direction::ToClient, 10);
    let mut sock = connect(&relay).await?;
    sock.write_all(&[7_u8; 100]).await?;
    let (got, ended) = read_to_end_or_error(&mut sock).await?;
    ensure!(got.len() == 10, "got {} bytes, expected 10", got.len());
    ensure!(
        ended == Some(ErrorKind::ConnectionReset),
        "read ended with {ended:?}"
    );
    // Only new flows are cut once cleared.
    relay.clear_cuts();
    let mut next = connect(&relay).await?;
    ensure!(roundtrip(&mut next, &[1_u8; 100]).await? == vec![1_u8; 100]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_towards_server_delivers_exactly_n_bytes_then_reset() -> anyhow::Result<()> {
    let (echo, relay) = setup().await?;
    relay.cut_after(Direction::ToServer, 10);
    let mut sock = connect(&relay).await?;
    sock.write_all(&[7_u8; 100]).await?;
    let (got, ended) = read_to_end_or_error(&mut sock).await?;
    ensure!(got.len() <= 10, "got {} bytes back", got.len());
    ensure!(
        ended == Some(ErrorKind::ConnectionReset),
        "read ended with {ended:?}"
    );
    let received = echo.received.load(Ordering::SeqCst);
    ensure!(
        received == 10,
        "server received {received} bytes, expected 10"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_slows_each_chunk() -> anyhow::Result<()> {
    let (_echo, relay) = setup().await?;
    let mut sock = connect(&relay).await?;
    roundtrip(&mut sock, b"warm").await?;
    let delay = Duration::from_millis(200);
    relay.set_delay(delay);
    let started = Instant::now();
    roundtrip(&mut sock, b"slow").await?;
    let took = started.elapsed();
    // One chunk each way, each delayed.
    ensure!(
        took >= 2 * delay,
        "round trip took {took:?} with delay {delay:?}"
    );
    relay.set_delay(Duration::ZERO);
    let started = Instant::now();
    roundtrip(&mut sock, b"fast").await?;
    ensure!(started.elapsed() < delay, "delay still applied after reset");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_reading_makes_client_writes_block() -> anyhow::Result<()> {
    let (echo, relay) = setup().await?;
    let mut sock = connect(&relay).await?;
    roundtrip(&mut sock, b"hello").await?;
    relay.stop_reading_all().await?;
    let before = echo.received.load(Ordering::SeqCst);
    let chunk = vec![0_u8; 64 * 1024];
    let mut written = 0_u64;
    let blocked = loop {
        match tokio::time::timeout(Duration::from_millis(500), sock.write_all(&chunk)).await {
            Err(_) => break true,
            Ok(res) => res?,
        }
        written += chunk.len() as u64;
        if written > 256 * 1024 * 1024 {
            break false;
        }
    };
    ensure!(blocked, "wrote {written} bytes without blocking");
    ensure!(
        echo.received.load(Ordering::SeqCst) == before,
        "bytes reached the server after stop_reading"
    );
    Ok(())
}
