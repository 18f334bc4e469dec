//! Listeners and the process lifecycle: one listener per pool, one task per client connection,
//! a cap on concurrent clients per pool (refused with a protocol error, not left hanging), pool
//! maintenance, and shutdown on SIGTERM/SIGINT: stop accepting, let sessions finish up to the
//! drain deadline, then close what is left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::{Config, Protocol};
use crate::net::dns::Resolver;
use crate::net::socket::configure_client_socket;
use crate::net::tls::TlsError;
use crate::postgres::cancel::CancelRegistry;
use crate::postgres::PgService;
use crate::session::budget::BufferBudget;

/// How long shutdown waits for sessions to end before closing them.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How often pools retire and top up connections.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("pools.{pool}.listen: cannot listen on {addr}: {source}")]
    Bind {
        /// The pool.
        pool: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A pool's TLS settings could not be loaded.
    #[error("pools.{pool}.tls: {source}")]
    Tls {
        /// The pool.
        pool: String,
        /// Why.
        #[source]
        source: TlsError,
    },
    /// A pool uses a protocol this build does not serve yet.
    #[error("pools.{0}.protocol: mysql is not served yet")]
    UnsupportedProtocol(String),
    /// Installing the signal handlers failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Runs every configured pool until SIGTERM or SIGINT, then drains.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let resolver = Resolver::new(Duration::from_secs(2));
    let cancels = Arc::new(CancelRegistry::default());
    let buffer_budget = BufferBudget::new(config.runtime.max_buffered_bytes);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut pools = Vec::new();
    for (name, pool) in &config.pools {
        if pool.protocol != Protocol::Postgres {
            return Err(ServerError::UnsupportedProtocol(name.clone()));
        }
        let listener =
            TcpListener::bind(pool.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    pool: name.clone(),
                    addr: pool.listen,
                    source,
                })?;
        let svc = PgService::new(
            pool.clone(),
            resolver.clone(),
            Arc::clone(&cancels),
            Arc::clone(&buffer_budget),
        )
        .map_err(|source| ServerError::Tls {
            pool: name.clone(),
            source,
        })?;
        svc.pool.spawn_maintenance(MAINTENANCE_EVERY);
        spawn_held_back_reports(Arc::clone(&svc));
        let slots = Arc::new(Semaphore::new(pool.sizes.max_client_connections));
        tracing::info!(pool = %name, listen = %pool.listen, servers = ?pool.servers.iter().map(ToString::to_string).collect::<Vec<_>>(), "listening");
        tokio::spawn(accept_loop(
            listener,
            Arc::clone(&svc),
            Arc::clone(&slots),
            stop_rx.clone(),
        ));
        pools.push((svc, slots));
    }
    wait_for_shutdown_signal().await?;
    tracing::info!("shutting down: no new connections, draining sessions");
    let _ = stop_tx.send(true);
    let drain = async {
        for (svc, slots) in &pools {
            let all = u32::try_from(svc.config.sizes.max_client_connections).unwrap_or(u32::MAX);
            let _ = slots.acquire_many(all).await;
        }
    };
    if tokio::time::timeout(DRAIN_DEADLINE, drain).await.is_err() {
        tracing::warn!("drain deadline passed; closing remaining sessions");
    }
    for (svc, _) in &pools {
        svc.pool.close_idle();
    }
    Ok(())
}

async fn wait_for_shutdown_signal() -> Result<(), ServerError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Signals)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    svc: Arc<PgService>,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(err) = configure_client_socket(&stream) {
            tracing::debug!(error = %err, "could not set client socket options");
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tokio::spawn(crate::postgres::refuse_at_cap(Arc::clone(&svc), stream));
            continue;
        };
        let svc = Arc::clone(&svc);
        tokio::spawn(async move {
            metrics::gauge!("suture_client_connections", "protocol" => "postgres").increment(1.0);
            crate::postgres::serve(svc, stream).await;
            metrics::gauge!("suture_client_connections", "protocol" => "postgres").decrement(1.0);
            drop(permit);
        });
    }
}

/// How often log lines held back by the rate limits are reported.
const HELD_BACK_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Reports, per cause, the log lines the rate limits held back and no later line reported.
fn spawn_held_back_reports(svc: Arc<PgService>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HELD_BACK_REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (cause, suppressed) in svc.log_limit.held_back() {
                tracing::info!(pool = %svc.config.name, cause, suppressed, "log lines of this cause were held back by the rate limit");
            }
        }
    });
}
