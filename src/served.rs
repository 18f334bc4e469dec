//! One pool as the process serves it: the service new sessions get (replaced on reload), the
//! listener's client slots, the warm-up at start, and what the admin port reports about it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::admin::status::{fill_from_ops, Backends, PoolSource, PoolStatus};
use crate::postgres::PgService;

/// A served pool.
pub(crate) struct ServedPool {
    current: RwLock<Arc<PgService>>,
    /// One permit per client connection the listener may hold.
    pub(crate) slots: Arc<Semaphore>,
    /// The size `slots` was made with.
    pub(crate) max_clients: usize,
}

impl ServedPool {
    pub(crate) fn new(svc: Arc<PgService>) -> ServedPool {
        let max_clients = svc.config.sizes.max_client_connections;
        ServedPool {
            current: RwLock::new(svc),
            slots: Arc::new(Semaphore::new(max_clients)),
            max_clients,
        }
    }

    /// The service a new session gets.
    pub(crate) fn current(&self) -> Arc<PgService> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the service for sessions that start from now on.
    pub(crate) fn replace(&self, svc: Arc<PgService>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = svc;
    }

    /// Opens one backend connection for each configured user at start, when the pool keeps
    /// warm spares, so it has logged in before its first client (`/startup`). The database is
    /// the pool's `database` when set, else the user's own name (PostgreSQL's default). A
    /// sub-pool is created only for a user whose login works; connection-level failures are
    /// retried until `give_up_after`.
    pub(crate) fn spawn_warm_up(&self, give_up_after: Duration) {
        let svc = self.current();
        if svc.config.sizes.min_idle == 0 {
            return;
        }
        for user in svc.config.users.keys() {
            let key = crate::postgres::PgKey {
                user: user.clone(),
                database: svc.config.database.clone().unwrap_or_else(|| user.clone()),
            };
            let svc = Arc::clone(&svc);
            tokio::spawn(async move {
                match svc.pool.warm(&key, give_up_after).await {
                    Ok(()) => {
                        tracing::debug!(pool = %svc.config.name, user = %key.user, database = %key.database, "warm spares opened")
                    }
                    Err(err) => {
                        tracing::warn!(pool = %svc.config.name, user = %key.user, database = %key.database, error = %err, "could not open a warm spare at start; the first client will")
                    }
                }
            });
        }
    }
}

impl PoolSource for ServedPool {
    fn status(&self) -> PoolStatus {
        let svc = self.current();
        let stats = svc.pool.stats();
        let config = &svc.config;
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
        fill_from_ops(&mut status, svc.ops.snapshot());
        status
    }
}
