//! A TCP relay for fault injection (DESIGN §9): it sits between Suture and
//! the server, forwards bytes both ways, and on command resets, half-closes,
//! black-holes, delays, cuts or stops reading its flows.
//!
//! Every accepted connection is a *flow*: the socket to Suture (the client
//! side), the socket to the target (the upstream side) and two copy tasks,
//! one per direction. Each copy task holds one half of each socket, so as
//! long as either task runs both sockets stay open, and when both end both
//! sockets close. Commands reach the tasks through a per-flow watch channel;
//! the async command methods return once every affected task has acted on
//! the command (or ended), so a test can inject a fault and then act
//! without racing the relay.
//!
//! Flows are numbered from 0 in the order they were accepted; `_flow(i)`
//! variants address one of them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a command waits for the copy tasks to act on it.
const ACK_LIMIT: Duration = Duration::from_secs(5);
/// How long the relay waits to connect to its target for a new flow.
const UPSTREAM_CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// After a cut, how long the relay lets the last bytes travel before the RST.
const CUT_SETTLE: Duration = Duration::from_millis(50);
/// Acknowledgement value of a copy task that has ended.
const ENDED: u64 = u64::MAX;

/// Which way bytes travel through the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// From the client side (Suture) to the target (PostgreSQL).
    ToServer,
    /// From the target (PostgreSQL) to the client side (Suture).
    ToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToServer => 0,
            Direction::ToClient => 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Forward nothing in either direction; keep the sockets open.
    Blackhole,
    /// Close both sockets with SO_LINGER 0 (the peers see ECONNRESET).
    Rst,
    /// FIN towards the client side, close the upstream side, forward nothing.
    Fin,
}

#[derive(Clone, Copy, Debug)]
struct FlowState {
    mode: Mode,
    /// Stop reading from the client side (its writes eventually block).
    stop_reading: bool,
    /// Per direction: reset the flow after this many more bytes, counted
    /// from the command that set it (applied once per `cut_seq`).
    cut_in: [Option<u64>; 2],
    /// Bumped by every command that sets `cut_in`.
    cut_seq: u64,
    /// Bumped on every command, acknowledged by the copy tasks.
    generation: u64,
}

struct Flow {
    ctl: watch::Sender<FlowState>,
    /// Per direction: the last generation the copy task acted on, or ENDED.
    acked: watch::Sender<[u64; 2]>,
    /// Per direction: bytes forwarded so far.
    forwarded: [AtomicU64; 2],
}

impl Flow {
    fn command(&self, change: impl FnOnce(&mut FlowState)) -> u64 {
        let mut generation = 0;
        self.ctl.send_modify(|st| {
            change(st);
            st.generation += 1;
            generation = st.generation;
        });
        generation
    }

    fn is_open(&self) -> bool {
        self.acked.borrow().iter().any(|&a| a != ENDED)
    }

    async fn wait_acked(&self, generation: u64) -> anyhow::Result<()> {
        let mut rx = self.acked.subscribe();
        tokio::time::timeout(
            ACK_LIMIT,
            rx.wait_for(|a| a.iter().all(|&g| g >= generation)),
        )
        .await
        .context("fault relay: copy tasks did not act on a command in time")?
        .context("fault relay: flow vanished")?;
        Ok(())
    }
}

struct Shared {
    target: SocketAddr,
    flows: Mutex<Vec<Arc<Flow>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    delay_nanos: AtomicU64,
    /// For new flows: cut after this many bytes in a direction (u64::MAX = never).
    cut: [AtomicU64; 2],
}

impl Shared {
    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed))
    }

    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(fut);
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    fn flows(&self) -> Vec<Arc<Flow>> {
        lock(&self.flows).clone()
    }
}

struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept_task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.accept_task.abort();
        for task in lock(&self.shared.tasks).drain(..) {
            task.abort();
        }
    }
}

/// Handle to a running relay; clones share it. The relay stops (and its
/// sockets close) when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct FaultRelay {
    inner: Arc<Inner>,
}

impl FaultRelay {
    /// Starts a relay on 127.0.0.1 (free port) in front of `target`.
    pub(crate) async fn start(target: SocketAddr) -> anyhow::Result<FaultRelay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            flows: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            delay_nanos: AtomicU64::new(0),
            cut: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)],
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(FaultRelay {
            inner: Arc::new(Inner {
                shared,
                addr,
                accept_task,
            }),
        })
    }

    /// Starts a relay in front of `127.0.0.1:port` (e.g. a PgServer's port).
    pub(crate) async fn start_for_port(port: u16) -> anyhow::Result<FaultRelay> {
        Self::start(SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    /// The relay's listening port.
    pub(crate) fn port(&self) -> u16 {
        self.inner.addr.port()
    }

    /// The relay's listening address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Flows whose copy tasks are still running (a reset, FIN'd or fully
    /// closed flow no longer counts; a black-holed one does).
    pub(crate) fn flow_count(&self) -> usize {
        self.shared().flows().iter().filter(|f| f.is_open()).count()
    }

    /// Flows accepted since the start, open or not.
    pub(crate) fn accepted_count(&self) -> usize {
        lock(&self.shared().flows).len()
    }

    /// RST on both sockets of every open flow.
    pub(crate) async fn rst_all(&self) -> anyhow::Result<()> {
        self.command_all(|st| st.mode = Mode::Rst).await
    }

    /// RST on both sockets of flow `i`.
    pub(crate) async fn rst_flow(&self, i: usize) -> anyhow::Result<()> {
        self.command_one(i, |st| st.mode = Mode::Rst).await
    }

    /// FIN towards the client side and close the upstream side, for every open flow.
    pub(crate) async fn fin_all(&self) -> anyhow::Result<()> {
        self.command_all(|st| st.mode = Mode::Fin).await
    }

    /// FIN towards the client side and close the upstream side of flow `i`.
    pub(crate) async fn fin_flow(&self, i: usize) -> anyhow::Result<()> {
        self.command_one(i, |st| st.mode = Mode::Fin).await
    }

    /// Stop forwarding on every open flow, keeping the sockets open. Flows
    /// accepted later forward normally.
    pub(crate) async fn blackhole_all(&self) -> anyhow::Result<()> {
        self.command_all(|st| st.mode = Mode::Blackhole).await
    }

    /// Stop forwarding on flow `i`, keeping its sockets open.
    pub(crate) async fn blackhole_flow(&self, i: usize) -> anyhow::Result<()> {
        self.command_one(i, |st| st.mode = Mode::Blackhole).await
    }

    /// Stop reading from the client side of every open flow, so the
    /// client's writes eventually block; the other direction still flows.
    pub(crate) async fn stop_reading_all(&self) -> anyhow::Result<()> {
        self.command_all(|st| st.stop_reading = true).await
    }

    /// Stop reading from the client side of flow `i`.
    pub(crate) async fn stop_reading_flow(&self, i: usize) -> anyhow::Result<()> {
        self.command_one(i, |st| st.stop_reading = true).await
    }

    /// Undo `blackhole` and `stop_reading` on every open flow.
    pub(crate) async fn resume_all(&self) -> anyhow::Result<()> {
        self.command_all(|st| {
            if st.mode == Mode::Blackhole {
                st.mode = Mode::Forward;
            }
            st.stop_reading = false;
        })
        .await
    }

    /// Delay every forwarded chunk (all flows, both directions) by `delay`;
    /// `Duration::ZERO` turns it off.
    pub(crate) fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.shared().delay_nanos.store(nanos, Ordering::Relaxed);
    }

    /// For flows accepted from now on: after `n_bytes` have been forwarded in
    /// `direction`, reset the flow (RST on both sockets).
    pub(crate) fn cut_after(&self, direction: Direction, n_bytes: u64) {
        self.shared().cut[direction.index()].store(n_bytes, Ordering::Relaxed);
    }

    /// For every open flow: after `n_bytes` more have been forwarded in
    /// `direction` (counted from now), reset the flow. Returns once every
    /// copy task has taken the command.
    pub(crate) async fn cut_open_after(
        &self,
        direction: Direction,
        n_bytes: u64,
    ) -> anyhow::Result<()> {
        self.command_all(|st| {
            st.cut_in[direction.index()] = Some(n_bytes);
            st.cut_seq += 1;
        })
        .await
    }

    /// Bytes flow `i` has forwarded in `direction` so far.
    pub(crate) fn forwarded(&self, i: usize, direction: Direction) -> u64 {
        lock(&self.shared().flows).get(i).map_or(0, |f| {
            f.forwarded[direction.index()].load(Ordering::Relaxed)
        })
    }

    /// Turn off `cut_after` for flows accepted from now on.
    pub(crate) fn clear_cuts(&self) {
        for cut in &self.shared().cut {
            cut.store(u64::MAX, Ordering::Relaxed);
        }
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    async fn command_all(&self, change: impl Fn(&mut FlowState)) -> anyhow::Result<()> {
        let mut pending = Vec::new();
        for flow in self.shared().flows() {
            if flow.is_open() {
                let generation = flow.command(&change);
                pending.push((flow, generation));
            }
        }
        for (flow, generation) in pending {
            flow.wait_acked(generation).await?;
        }
        Ok(())
    }

    async fn command_one(&self, i: usize, change: impl Fn(&mut FlowState)) -> anyhow::Result<()> {
        let flow = lock(&self.shared().flows)
            .get(i)
            .cloned()
            .with_context(|| format!("fault relay: no flow {i}"))?;
        let generation = flow.command(change);
        flow.wait_acked(generation).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared2 = Arc::clone(&shared);
        shared.spawn(async move { open_flow(client, shared2).await });
    }
}

async fn open_flow(client: TcpStream, shared: Arc<Shared>) {
    let upstream =
        match tokio::time::timeout(UPSTREAM_CONNECT_LIMIT, TcpStream::connect(shared.target)).await
        {
            Ok(Ok(s)) => s,
            // Nothing behind the relay: the client sees a reset, as it would
            // from a refused connection.
            _ => {
                let _ = client.set_zero_linger();
                return;
            }
        };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let cuts = [
        shared.cut[0].load(Ordering::Relaxed),
        shared.cut[1].load(Ordering::Relaxed),
    ];
    let flow = Arc::new(Flow {
        ctl: watch::Sender::new(FlowState {
            mode: Mode::Forward,
            stop_reading: false,
            cut_in: [None, None],
            cut_seq: 0,
            generation: 0,
        }),
        acked: watch::Sender::new([0, 0]),
        forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
    });
    lock(&shared.flows).push(Arc::clone(&flow));
    let (client_r, client_w) = client.into_split();
    let (upstream_r, upstream_w) = upstream.into_split();
    let to_server = Pump {
        dir: Direction::ToServer,
        src: client_r,
        dst: upstream_w,
        cut: cuts[0],
        flow: Arc::clone(&flow),
        shared: Arc::clone(&shared),
    };
    let to_client = Pump {
        dir: Direction::ToClient,
        src: upstream_r,
        dst: client_w,
        cut: cuts[1],
        flow,
        shared: Arc::clone(&shared),
    };
    shared.spawn(to_server.run());
    shared.spawn(to_client.run());
}

/// Records that direction `idx` of `flow` acted on command `generation`.
fn ack(flow: &Flow, idx: usize, generation: u64) {
    flow.acked.send_modify(|a| {
        if a[idx] != ENDED {
            a[idx] = generation;
        }
    });
}

/// Marks a copy task as ended however it ends (including abort).
struct EndGuard {
    flow: Arc<Flow>,
    idx: usize,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.flow.acked.send_modify(|a| a[self.idx] = ENDED);
    }
}

/// What a copy task does after a wait is interrupted.
enum Next {
    /// Re-examine the flow state from the top of the loop.
    Reconsider,
    Done,
}

/// One direction of one flow.
struct Pump {
    dir: Direction,
    src: OwnedReadHalf,
    dst: OwnedWriteHalf,
    /// Bytes left before the cut (u64::MAX = no cut).
    cut: u64,
    flow: Arc<Flow>,
    shared: Arc<Shared>,
}

impl Pump {
    async fn run(mut self) {
        let _guard = EndGuard {
            flow: Arc::clone(&self.flow),
            idx: self.dir.index(),
        };
        let mut ctl = self.flow.ctl.subscribe();
        let mut buf = vec![0_u8; 16 * 1024];
        let mut cut_seq = 0;
        loop {
            let st = *ctl.borrow_and_update();
            if st.cut_seq != cut_seq {
                cut_seq = st.cut_seq;
                if let Some(n) = st.cut_in[self.dir.index()] {
                    self.cut = n;
                }
            }
            match st.mode {
                Mode::Rst => return self.reset(),
                Mode::Fin => return self.fin(),
                Mode::Blackhole => {}
                Mode::Forward => {}
            }
            let paused =
                st.mode == Mode::Blackhole || (self.dir == Direction::ToServer && st.stop_reading);
            self.ack(st.generation);
            if paused {
                if ctl.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let read = tokio::select! {
                changed = ctl.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
                read = self.src.read(&mut buf) => read,
            };
            let n = match read {
                Ok(0) => {
                    // Half-close from this side: pass the FIN on and end this
                    // direction; the other one carries on.
                    let _ = self.dst.shutdown().await;
                    return;
                }
                Ok(n) => n,
                Err(_) => {
                    // The source reset (or failed): reset the whole flow.
                    self.flow.command(|st| st.mode = Mode::Rst);
                    return self.reset();
                }
            };
            let n64 = n as u64;
            let (len, cut_now) = if n64 >= self.cut {
                (usize::try_from(self.cut).unwrap_or(n), true)
            } else {
                if self.cut != u64::MAX {
                    self.cut -= n64;
                }
                (n, false)
            };
            match self.forward(&buf[..len], &mut ctl).await {
                Ok(()) => {
                    self.flow.forwarded[self.dir.index()].fetch_add(len as u64, Ordering::Relaxed);
                }
                Err(Next::Reconsider) => continue,
                Err(Next::Done) => return,
            }
            if cut_now {
                tokio::time::sleep(CUT_SETTLE).await;
                self.flow.command(|st| st.mode = Mode::Rst);
                return self.reset();
            }
        }
    }

    /// Delay (if set) and write one chunk. A black hole meanwhile holds the
    /// chunk until the flow forwards again (it was read from the source
    /// already: dropping it would lose bytes from the middle of a live TCP
    /// stream, which no network does); a reset or FIN gives it up.
    async fn forward(
        &mut self,
        chunk: &[u8],
        ctl: &mut watch::Receiver<FlowState>,
    ) -> Result<(), Next> {
        let delay = self.shared.delay();
        let idx = self.dir.index();
        let Pump { dst, flow, .. } = self;
        let work = async {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            dst.write_all(chunk).await
        };
        tokio::pin!(work);
        loop {
            tokio::select! {
                written = &mut work => {
                    return match written {
                        Ok(()) => Ok(()),
                        Err(_) => {
                            flow.command(|st| st.mode = Mode::Rst);
                            Err(Next::Reconsider)
                        }
                    };
                }
                changed = ctl.changed() => {
                    if changed.is_err() {
                        return Err(Next::Done);
                    }
                    // Held without polling the write, acknowledging each
                    // command, until the flow forwards again or ends.
                    loop {
                        let st = *ctl.borrow();
                        match st.mode {
                            Mode::Forward => break,
                            Mode::Rst | Mode::Fin => return Err(Next::Reconsider),
                            Mode::Blackhole => {
                                ack(flow, idx, st.generation);
                                if ctl.changed().await.is_err() {
                                    return Err(Next::Done);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn ack(&self, generation: u64) {
        ack(&self.flow, self.dir.index(), generation);
    }

    /// SO_LINGER 0 on both sockets, then close our halves without a FIN.
    /// The other task does the same, so both sockets close with RST.
    fn reset(self) {
        let _ = self.src.as_ref().set_zero_linger();
        let _ = self.dst.as_ref().set_zero_linger();
        // Dropping a write half would shut down writing (a FIN) first.
        self.dst.forget();
        drop(self.src);
    }

    fn fin(self) {
        match self.dir {
            Direction::ToClient => {
                // FIN towards the client (the socket stays open through the
                // read half the other task keeps); our upstream read half
                // goes away.
                let _ =
                    socket2::SockRef::from(self.dst.as_ref()).shutdown(std::net::Shutdown::Write);
                drop(self.src);
                drop(self.dst);
            }
            Direction::ToServer => {
                // Close the upstream side (our write half), then keep reading
                // and discarding from the client until it closes, so its
                // writes are accepted and it reads EOF.
                let Pump {
                    src,
                    dst,
                    flow,
                    shared,
                    ..
                } = self;
                drop(dst);
                shared.spawn(drain(src, flow.ctl.subscribe()));
            }
        }
    }
}

/// Reads and discards from a FIN'd flow's client side until it closes;
/// a later RST command resets it.
async fn drain(mut src: OwnedReadHalf, mut ctl: watch::Receiver<FlowState>) {
    let mut buf = vec![0_u8; 16 * 1024];
    loop {
        tokio::select! {
            changed = ctl.changed() => {
                if changed.is_err() {
                    return;
                }
                if ctl.borrow().mode == Mode::Rst {
                    let _ = src.as_ref().set_zero_linger();
                    return;
                }
            }
            read = src.read(&mut buf) => {
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }
    }
}
