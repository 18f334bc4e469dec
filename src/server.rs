//! Listeners and the process lifecycle: one listener per pool (TCP or a Unix socket, see
//! `net::listener`), one task per client connection,
//! a cap on concurrent clients per pool (refused with a protocol error, not left hanging), pool
//! maintenance and warm-up, the heartbeat the watchdog reads, SIGHUP reloads, and on SIGTERM,
//! SIGINT or `POST /quitquitquit` the drain of `shutdown`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::admin::status::PoolSource;
use crate::admin::AdminState;
use crate::config::{Config, ListenAddr, Protocol, ShutdownConfig};
use crate::log_limit::LogLimiter;
use crate::memory_return::CLIENTS;
use crate::mysql::{GreetingCell, MyService, MyShared};
use crate::net::dns::Resolver;
use crate::net::listener::{BindError, Listener};
use crate::net::tls::TlsError;
use crate::ops::health::{AcceptWatch, Health};
use crate::ops::lifecycle::{Drain, Lifecycle, StopSource};
use crate::ops::pool_state::PoolOps;
use crate::postgres::cancel::CancelRegistry;
use crate::postgres::{PgService, PgShared};
use crate::served::{ServedPool, Service};
use crate::session::budget::BufferBudget;
use crate::session::core::CoreShared;

/// How often pools retire and top up connections.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("pools.{pool}.listen: cannot listen on {addr}")]
    Bind {
        /// The pool.
        pool: String,
        /// The address.
        addr: ListenAddr,
        /// Why.
        #[source]
        source: BindError,
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
    /// Installing the signal handlers failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// What the data path shares with the admin port and the watchdog.
pub struct Ops {
    pub health: Arc<Health>,
    pub lifecycle: Arc<Lifecycle>,
    pub admin: Arc<AdminState>,
    /// The file SIGHUP reloads.
    pub config_path: PathBuf,
    /// `[shutdown]` as last loaded (a reload may change it).
    pub shutdown: Arc<RwLock<ShutdownConfig>>,
}

/// Names sessions in logs, process-wide.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// Runs every configured pool until a stop request, then drains.
pub async fn run(config: Config, ops: Ops) -> Result<(), ServerError> {
    let resolver = Resolver::new(Duration::from_secs(2));
    let cancels = Arc::new(CancelRegistry::default());
    let buffer_budget = BufferBudget::new(config.runtime.max_buffered_bytes);
    let (drain, drain_signal) = Drain::new();
    let (stop_accepting, stop_rx) = watch::channel(false);
    let mut served = Vec::new();
    for (name, pool) in &config.pools {
        let listener = Listener::bind(&pool.listen, pool.listen_mode)
            .await
            .map_err(|source| ServerError::Bind {
                pool: name.clone(),
                addr: pool.listen.clone(),
                source,
            })?;
        let log_limit = Arc::new(LogLimiter::default());
        let core = CoreShared {
            ops: Arc::new(PoolOps::default()),
            drain: drain_signal.clone(),
            log_limit: Arc::clone(&log_limit),
            buffer_budget: Arc::clone(&buffer_budget),
        };
        let svc = match pool.protocol {
            Protocol::Postgres => {
                let shared = PgShared {
                    resolver: resolver.clone(),
                    cancels: Arc::clone(&cancels),
                    mock_secret: rand::random(),
                    core,
                };
                PgService::new(pool.clone(), shared).map(Service::Postgres)
            }
            Protocol::Mysql => {
                let shared = MyShared {
                    resolver: resolver.clone(),
                    greeting: Arc::new(GreetingCell::default()),
                    core,
                };
                MyService::new(pool.clone(), shared).map(Service::Mysql)
            }
        }
        .map_err(|source| ServerError::Tls {
            pool: name.clone(),
            source,
        })?;
        svc.spawn_maintenance(MAINTENANCE_EVERY);
        spawn_held_back_reports(name.clone(), log_limit);
        let pool_served = Arc::new(ServedPool::new(svc));
        pool_served.spawn_warm_up(config.admin.startup_timeout);
        tracing::info!(pool = %name, listen = %pool.listen, servers = ?pool.servers.iter().map(ToString::to_string).collect::<Vec<_>>(), "listening");
        let watch = ops.health.accept_watch(name);
        if let Some(w) = &watch {
            w.started();
        }
        tokio::spawn(accept_loop(
            listener,
            Arc::clone(&pool_served),
            watch,
            stop_rx.clone(),
        ));
        served.push(pool_served);
    }
    ops.admin.set_pools(
        served
            .iter()
            .map(|p| Arc::clone(p) as Arc<dyn PoolSource>)
            .collect(),
    );
    ops.health.beat();
    tokio::spawn(Arc::clone(&ops.health).heartbeat());
    crate::memory_return::spawn_trimmer();
    ops.health.set_listeners_up();
    spawn_signal_handlers(&ops, config, served.clone())?;

    ops.lifecycle.stopped().await;
    let settings = *ops.shutdown.read().unwrap_or_else(|p| p.into_inner());
    crate::shutdown::drain(&ops.health, settings, &stop_accepting, &drain, &served).await;
    Ok(())
}

/// SIGTERM and SIGINT request a stop; SIGHUP reloads the configuration.
fn spawn_signal_handlers(
    ops: &Ops,
    config: Config,
    served: Vec<Arc<ServedPool>>,
) -> Result<(), ServerError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ServerError::Signals)?;
    let lifecycle = Arc::clone(&ops.lifecycle);
    tokio::spawn(async move {
        loop {
            let source = tokio::select! {
                _ = term.recv() => StopSource::Sigterm,
                _ = int.recv() => StopSource::Sigint,
            };
            lifecycle.request_stop(source);
        }
    });
    let mut reloader = crate::reload::Reloader::new(
        config,
        served,
        ops.config_path.clone(),
        Arc::clone(&ops.shutdown),
    );
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reloader.reload().await;
        }
    });
    Ok(())
}

async fn accept_loop(
    listener: Listener,
    served: Arc<ServedPool>,
    watch: Option<Arc<AcceptWatch>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(err) => {
                if let Some(w) = &watch {
                    w.failed();
                }
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Some(w) = &watch {
            w.succeeded();
        }
        if let Err(err) = stream.configure() {
            tracing::debug!(error = %err, "could not set client socket options");
        }
        let svc = served.current();
        let mark = CLIENTS.enter();
        let Ok(permit) = Arc::clone(&served.slots).try_acquire_owned() else {
            tokio::spawn(async move {
                svc.refuse_at_cap(stream).await;
                drop(mark);
            });
            continue;
        };
        let client_id = NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed);
        let protocol = svc.config().protocol.as_str();
        tokio::spawn(async move {
            metrics::gauge!("suture_client_connections", "protocol" => protocol).increment(1.0);
            svc.serve(stream, client_id).await;
            metrics::gauge!("suture_client_connections", "protocol" => protocol).decrement(1.0);
            drop(permit);
            drop(mark);
        });
    }
    if let Some(w) = &watch {
        w.stopped();
    }
}

/// How often log lines held back by the rate limits are reported.
const HELD_BACK_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Reports, per cause, the log lines the rate limits held back and no later line reported.
fn spawn_held_back_reports(pool: String, limiter: Arc<LogLimiter>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HELD_BACK_REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (cause, suppressed) in limiter.held_back() {
                tracing::info!(pool = %pool, cause, suppressed, "log lines of this cause were held back by the rate limit");
            }
        }
    });
}
