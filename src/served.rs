//! One pool as the process serves it: the service new sessions get (replaced on reload) for
//! whichever protocol it speaks, the listener's client slots, the warm-up at start, and what
//! the admin port reports about it. This is the one place that dispatches on the protocol.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::admin::status::{fill_from_ops, Backends, PoolSource, PoolStatus};
use crate::config::PoolConfig;
use crate::mysql::MyService;
use crate::net::client_socket::ClientSocket;
use crate::net::tls::TlsError;
use crate::ops::pool_state::PoolOps;
use crate::pool::{Manager, Pool, PoolStats};
use crate::postgres::PgService;
use crate::session::core::Core;

/// A pool's service, by protocol.
#[derive(Clone)]
pub(crate) enum Service {
    Postgres(Arc<PgService>),
    Mysql(Arc<MyService>),
}

/// A reload prepared for one pool, by protocol.
pub(crate) enum Reload {
    Postgres(crate::postgres::PgReloaded),
    Mysql(crate::mysql::MyReloaded),
}

impl Service {
    /// The pool's configuration as the service runs it.
    pub(crate) fn config(&self) -> &PoolConfig {
        match self {
            Service::Postgres(svc) => &svc.core.config,
            Service::Mysql(svc) => &svc.core.config,
        }
    }

    fn ops(&self) -> &PoolOps {
        match self {
            Service::Postgres(svc) => &svc.core.ops,
            Service::Mysql(svc) => &svc.core.ops,
        }
    }

    fn stats(&self) -> PoolStats {
        match self {
            Service::Postgres(svc) => svc.core.pool.stats(),
            Service::Mysql(svc) => svc.core.pool.stats(),
        }
    }

    /// Serves one client connection until it ends.
    pub(crate) async fn serve(self, stream: ClientSocket, client_id: u64) {
        // Each protocol's session future is boxed: inline, every client's task would be as
        // large as the larger of the two (kilobytes apart) whichever protocol it speaks.
        match self {
            Service::Postgres(svc) => {
                Box::pin(crate::postgres::serve(svc, stream, client_id)).await
            }
            Service::Mysql(svc) => Box::pin(crate::mysql::serve(svc, stream, client_id)).await,
        }
    }

    /// Refuses a client over `max_client_connections` the way the protocol's server does.
    pub(crate) async fn refuse_at_cap(self, stream: ClientSocket) {
        match self {
            Service::Postgres(svc) => crate::postgres::refuse_at_cap(svc, stream).await,
            Service::Mysql(svc) => crate::mysql::refuse_at_cap(svc, stream).await,
        }
    }

    /// Runs the pool's maintenance (warm spares, idle retirement, health checks) every
    /// `every`.
    pub(crate) fn spawn_maintenance(&self, every: Duration) {
        match self {
            Service::Postgres(svc) => svc.core.pool.spawn_maintenance(every),
            Service::Mysql(svc) => svc.core.pool.spawn_maintenance(every),
        }
    }

    /// Says goodbye to every idle backend connection and closes it; returns how many.
    pub(crate) async fn terminate_idle(&self) -> usize {
        match self {
            Service::Postgres(svc) => svc.core.terminate_idle().await,
            Service::Mysql(svc) => svc.core.terminate_idle().await,
        }
    }

    /// Prepares `config` (derives secrets, loads TLS settings) without changing anything yet.
    pub(crate) fn prepare_reload(&self, config: PoolConfig) -> Result<Reload, TlsError> {
        match self {
            Service::Postgres(svc) => svc.prepare_reload(config).map(Reload::Postgres),
            Service::Mysql(svc) => svc.prepare_reload(config).map(Reload::Mysql),
        }
    }

    /// Puts a prepared reload in force; the service new sessions get is returned.
    pub(crate) fn commit_reload(&self, reload: Reload) -> Service {
        match (self, reload) {
            (Service::Postgres(svc), Reload::Postgres(r)) => {
                Service::Postgres(svc.commit_reload(r))
            }
            (Service::Mysql(svc), Reload::Mysql(r)) => Service::Mysql(svc.commit_reload(r)),
            // A pool's protocol cannot change on reload (it is reported and kept).
            (svc, _) => svc.clone(),
        }
    }

    /// Opens the warm spares of every configured user at start (see
    /// [`ServedPool::spawn_warm_up`]).
    fn spawn_warm_up(&self, give_up_after: Duration) {
        match self {
            Service::Postgres(svc) => {
                let keys = crate::postgres::warm_keys(&svc.core.config);
                spawn_warm_up(&svc.core, keys, give_up_after);
            }
            // MySQL backends are keyed by the client's capability flags, unknown before a
            // client logs in: the warm-up is the login that learns the server's greeting.
            Service::Mysql(svc) => {
                let svc = Arc::clone(svc);
                tokio::spawn(async move {
                    let until = tokio::time::Instant::now() + give_up_after;
                    loop {
                        match svc.learn_greeting().await {
                            Ok(_) => break,
                            Err(err)
                                if tokio::time::Instant::now() >= until || !err.is_retryable() =>
                            {
                                tracing::warn!(pool = %svc.core.config.name, error = %err, "could not log in to the server at start; the first client will try again");
                                break;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                        }
                    }
                });
            }
        }
    }
}

/// Opens one backend connection per key, in the background; connection-level failures are
/// retried until `give_up_after`.
fn spawn_warm_up<M: Manager>(core: &Core<M>, keys: Vec<M::Key>, give_up_after: Duration) {
    for key in keys {
        let pool: Pool<M> = core.pool.clone();
        let name = core.config.name.clone();
        tokio::spawn(async move {
            match pool.warm(&key, give_up_after).await {
                Ok(()) => tracing::debug!(pool = %name, ?key, "warm spares opened"),
                Err(err) => {
                    tracing::warn!(pool = %name, ?key, error = %err, "could not open a warm spare at start; the first client will")
                }
            }
        });
    }
}

/// A served pool.
pub(crate) struct ServedPool {
    current: RwLock<Service>,
    /// One permit per client connection the listener may hold.
    pub(crate) slots: Arc<Semaphore>,
    /// The size `slots` was made with.
    pub(crate) max_clients: usize,
}

impl ServedPool {
    pub(crate) fn new(svc: Service) -> ServedPool {
        let max_clients = svc.config().sizes.max_client_connections;
        ServedPool {
            current: RwLock::new(svc),
            slots: Arc::new(Semaphore::new(max_clients)),
            max_clients,
        }
    }

    /// The service a new session gets.
    pub(crate) fn current(&self) -> Service {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the service for sessions that start from now on.
    pub(crate) fn replace(&self, svc: Service) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = svc;
    }

    /// Opens one backend connection for each configured user at start, when the pool keeps
    /// warm spares, so it has logged in before its first client (`/startup`). A sub-pool is
    /// created only for a user whose login works; connection-level failures are retried until
    /// `give_up_after`.
    pub(crate) fn spawn_warm_up(&self, give_up_after: Duration) {
        let svc = self.current();
        if svc.config().sizes.min_idle > 0 {
            svc.spawn_warm_up(give_up_after);
        }
    }
}

impl PoolSource for ServedPool {
    fn status(&self) -> PoolStatus {
        let svc = self.current();
        let stats = svc.stats();
        let config = svc.config();
        let mut status = PoolStatus {
            name: config.name.clone(),
            protocol: config.protocol.as_str().to_owned(),
            listen: config.listen.to_string(),
            servers: config.servers.iter().map(ToString::to_string).collect(),
            min_idle: config.sizes.min_idle,
            clients: self
                .max_clients
                .saturating_sub(self.slots.available_permits()),
            backends: Backends {
                idle: stats.idle,
                active: stats.active,
            },
            held: stats.held,
            waiting: stats.waiting,
            logged_in: false,
            last_heal: None,
            last_replay: None,
            last_refusal: None,
            last_idle_close: None,
            last_connect: None,
            server_limits: None,
        };
        fill_from_ops(&mut status, svc.ops().snapshot());
        status
    }
}
