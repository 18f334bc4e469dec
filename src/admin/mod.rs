//! The admin port (DESIGN §7): one HTTP/1 listener on an OS thread of its own, with its own
//! small current-thread runtime, so it answers while the data-path event loop is stalled
//! (field report F4). It serves `/metrics`, `/startup`, `/healthz`, `/readyz`, `/status` and
//! `POST /quitquitquit`; `routes` decides the answers.

pub mod client;
mod routes;
pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::ops::health::Health;
use crate::ops::histograms::MetricsHandle;
use crate::ops::lifecycle::Lifecycle;
use status::PoolSource;

/// Most admin connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole admin connection lasts at most this.
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);
/// How often the exporter's upkeep runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Why the admin port could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin.listen: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the admin thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Everything the admin port reads.
pub struct AdminState {
    pub prometheus: MetricsHandle,
    pub health: Arc<Health>,
    pub lifecycle: Arc<Lifecycle>,
    /// Filled in once the pools run.
    pub pools: RwLock<Vec<Arc<dyn PoolSource>>>,
    pub readiness_checks_backend: bool,
    /// The data-path runtime, for the test hooks that stall it.
    #[cfg(feature = "test-hooks")]
    pub data_path: RwLock<Option<tokio::runtime::Handle>>,
}

impl AdminState {
    pub fn new(
        prometheus: MetricsHandle,
        health: Arc<Health>,
        lifecycle: Arc<Lifecycle>,
        readiness_checks_backend: bool,
    ) -> AdminState {
        AdminState {
            prometheus,
            health,
            lifecycle,
            pools: RwLock::new(Vec::new()),
            readiness_checks_backend,
            #[cfg(feature = "test-hooks")]
            data_path: RwLock::new(None),
        }
    }

    /// The pools being served, to report on.
    pub fn set_pools(&self, pools: Vec<Arc<dyn PoolSource>>) {
        *self.pools.write().unwrap_or_else(|p| p.into_inner()) = pools;
    }

    fn pools(&self) -> Vec<Arc<dyn PoolSource>> {
        self.pools.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Binds `addr` and serves the admin port on a thread of its own until the process exits.
/// Returns the address bound (port 0 picks one).
pub fn spawn(addr: SocketAddr, state: Arc<AdminState>) -> Result<SocketAddr, AdminError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| AdminError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AdminError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| AdminError::Bind { addr, source })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AdminError::Thread)?;
    std::thread::Builder::new()
        .name("suture-admin".into())
        .spawn(move || runtime.block_on(serve(listener, state)))
        .map_err(AdminError::Thread)?;
    Ok(bound)
}

async fn serve(listener: std::net::TcpListener, state: Arc<AdminState>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(error = %err, "admin listener failed");
            return;
        }
    };
    let upkeep = state.prometheus.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(routes::route(&state, peer, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Ok(Err(err)) = tokio::time::timeout(CONNECTION_LIMIT, connection).await {
                tracing::debug!(error = %err, %peer, "admin connection failed");
            }
            drop(permit);
        });
    }
}
