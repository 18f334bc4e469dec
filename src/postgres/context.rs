//! What every PostgreSQL session and backend connection of one pool shares: the backend
//! servers and how to reach them, the users' derived secrets, the pool itself and the cancel
//! registry. Built once per pool at start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ServerAddr;
use crate::config::{PoolConfig, ServerRole, Timeouts};
use crate::log_limit::LogLimiter;
use crate::net::dns::Resolver;
use crate::net::tls::{BackendTls, TlsError};
use crate::pool::{Manager, Pool, PoolSettings};
use crate::postgres::backend::{self, BackendConn, BackendError};
use crate::postgres::cancel::CancelRegistry;
use crate::postgres::client_auth::UserSecrets;
use crate::retry_budget::{RetryBudget, DEFAULT_BURST, DEFAULT_REFILL_PER_SECOND};
use crate::session::budget::BufferBudget;

/// Which sub-pool a backend connection belongs to: what PostgreSQL fixes at login and `SET`
/// cannot change afterwards. A client's startup options are settings applied at checkout, so
/// they never multiply sub-pools (DESIGN §5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PgKey {
    pub(crate) user: String,
    pub(crate) database: String,
}

/// How to open backend connections for one pool.
pub(crate) struct BackendContext {
    pub(crate) pool_name: String,
    pub(crate) resolver: Resolver,
    pub(crate) servers: Vec<ServerAddr>,
    pub(crate) tls: BackendTls,
    pub(crate) timeouts: Timeouts,
    pub(crate) max_message_size: usize,
    pub(crate) users: HashMap<String, UserSecrets>,
    /// Whether a read-only server is acceptable.
    pub(crate) role: ServerRole,
}

/// The pool's [`Manager`] for PostgreSQL.
pub(crate) struct PgManager {
    ctx: Arc<BackendContext>,
}

impl Manager for PgManager {
    type Key = PgKey;
    type Conn = BackendConn;
    type Error = BackendError;

    async fn connect(&self, key: &PgKey) -> Result<BackendConn, BackendError> {
        backend::connect(&self.ctx, key).await
    }

    fn check_idle(&self, conn: &mut BackendConn) -> Result<(), &'static str> {
        conn.check_idle(self.ctx.max_message_size)
    }

    fn is_retryable(err: &BackendError) -> bool {
        err.is_retryable()
    }

    fn idle_limit(&self, conn: &BackendConn) -> Option<Duration> {
        conn.idle_limit()
    }

    async fn health_check(&self, conn: &mut BackendConn) -> bool {
        // An empty query: EmptyQueryResponse and ReadyForQuery, nothing else changes.
        let limit = self.ctx.timeouts.health_check_timeout;
        conn.run_internal("", limit, self.ctx.max_message_size)
            .await
            .is_ok()
    }
}

/// Everything a PostgreSQL client session of one pool needs.
pub(crate) struct PgService {
    pub(crate) config: PoolConfig,
    pub(crate) backend: Arc<BackendContext>,
    pub(crate) pool: Pool<PgManager>,
    pub(crate) cancels: Arc<CancelRegistry>,
    /// Replays this pool may still make (DESIGN §3 global retry budget).
    pub(crate) replay_budget: RetryBudget,
    /// Log lines clients can cause at will, rate-limited per cause.
    pub(crate) log_limit: LogLimiter,
    /// A random value of the process that unknown users' mock SCRAM salts derive from.
    pub(crate) mock_secret: [u8; 32],
    /// The memory all sessions of the process may hold in client messages held whole.
    pub(crate) buffer_budget: Arc<BufferBudget>,
}

impl PgService {
    /// Derives every user's secrets (PBKDF2 once per user, here) and builds the pool.
    pub(crate) fn new(
        config: PoolConfig,
        resolver: Resolver,
        cancels: Arc<CancelRegistry>,
        buffer_budget: Arc<BufferBudget>,
    ) -> Result<Arc<PgService>, TlsError> {
        let users = config
            .users
            .values()
            .map(|user| {
                (
                    user.name.clone(),
                    UserSecrets::derive(user.password.expose()),
                )
            })
            .collect();
        let backend = Arc::new(BackendContext {
            pool_name: config.name.clone(),
            resolver,
            servers: config.servers.clone(),
            tls: BackendTls::new(&config.tls)?,
            timeouts: config.timeouts.clone(),
            max_message_size: config.limits.max_message_size,
            users,
            role: config.role,
        });
        let settings = PoolSettings {
            min_idle: config.sizes.min_idle,
            max_size: config.sizes.max_size,
            max_waiters: config.sizes.max_waiters,
            checkout_timeout: config.timeouts.checkout,
            idle_timeout: config.timeouts.idle,
            max_lifetime: config.timeouts.max_lifetime,
            failover_hold: config.timeouts.failover_hold,
            max_held: config.sizes.max_held,
            health_check_after: config.timeouts.health_check_after,
            health_check_timeout: config.timeouts.health_check_timeout,
        };
        let pool = Pool::new(
            &config.name,
            PgManager {
                ctx: Arc::clone(&backend),
            },
            settings,
        );
        Ok(Arc::new(PgService {
            config,
            backend,
            pool,
            cancels,
            replay_budget: RetryBudget::new(DEFAULT_BURST, DEFAULT_REFILL_PER_SECOND),
            log_limit: LogLimiter::default(),
            mock_secret: rand::random(),
            buffer_budget,
        }))
    }

    /// The secrets of a configured user.
    pub(crate) fn user(&self, name: &str) -> Option<&UserSecrets> {
        self.backend.users.get(name)
    }
}
