//! What every PostgreSQL session and backend connection of one pool shares: the protocol-agnostic
//! core (configuration, pool, budgets), the backend servers and how to reach them, the users'
//! derived secrets and the cancel registry. Built once per pool at start, again on reload.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ServerAddr;
use crate::config::{PoolConfig, ServerRole, Timeouts};
use crate::net::dns::Resolver;
use crate::net::tls::{BackendTls, TlsError};
use crate::ops::pool_state::PoolOps;
use crate::pool::{Manager, Pool};
use crate::postgres::backend::{self, BackendConn, BackendError};
use crate::postgres::cancel::CancelRegistry;
use crate::postgres::client_auth::UserSecrets;
use crate::session::core::{pool_settings, Core, CoreShared, Current, PreparedReload};

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
    /// Where logins and their failures are reported for `/status` and `/startup`.
    pub(crate) ops: Arc<PoolOps>,
}

/// The pool's [`Manager`] for PostgreSQL.
pub(crate) struct PgManager {
    /// Replaced whole on reload: new connections use the new users, servers and deadlines.
    ctx: Current<BackendContext>,
}

impl Manager for PgManager {
    type Key = PgKey;
    type Conn = BackendConn;
    type Error = BackendError;

    async fn connect(&self, key: &PgKey) -> Result<BackendConn, BackendError> {
        backend::connect(&self.ctx.get(), key).await
    }

    fn check_idle(&self, conn: &mut BackendConn) -> Result<(), &'static str> {
        conn.check_idle(self.ctx.get().max_message_size)
    }

    fn is_retryable(err: &BackendError) -> bool {
        err.is_retryable()
    }

    fn idle_limit(&self, conn: &BackendConn) -> Option<Duration> {
        conn.idle_limit()
    }

    async fn health_check(&self, conn: &mut BackendConn) -> bool {
        // An empty query: EmptyQueryResponse and ReadyForQuery, nothing else changes.
        let ctx = self.ctx.get();
        let limit = ctx.timeouts.health_check_timeout;
        conn.run_internal("", limit, ctx.max_message_size)
            .await
            .is_ok()
    }

    fn conn_id(conn: &BackendConn) -> i64 {
        i64::from(conn.process_id)
    }
}

/// Everything a PostgreSQL client session of one pool needs.
pub(crate) struct PgService {
    /// What every protocol's sessions share (configuration, pool, budgets, drain).
    pub(crate) core: Core<PgManager>,
    pub(crate) backend: Arc<BackendContext>,
    pub(crate) cancels: Arc<CancelRegistry>,
    /// A random value of the process that unknown users' mock SCRAM salts derive from.
    pub(crate) mock_secret: [u8; 32],
}

/// A reload prepared by [`PgService::prepare_reload`].
pub(crate) type Reloaded = PreparedReload<BackendContext>;

/// What a pool shares across reloads: its connections, its cancel keys, its operational state,
/// the drain signal, its log rate limits, the secret mock salts derive from and the memory
/// budget of client buffers.
pub(crate) struct Shared {
    pub(crate) resolver: Resolver,
    pub(crate) cancels: Arc<CancelRegistry>,
    pub(crate) mock_secret: [u8; 32],
    pub(crate) core: CoreShared,
}

impl PgService {
    /// Derives every user's secrets (PBKDF2 once per user, here) and builds the pool.
    pub(crate) fn new(config: PoolConfig, shared: Shared) -> Result<Arc<PgService>, TlsError> {
        let backend = Arc::new(backend_context(&config, &shared)?);
        let pool = Pool::new(
            &config.name,
            PgManager {
                ctx: Current::new(Arc::clone(&backend)),
            },
            pool_settings(&config),
            Arc::clone(&shared.core.ops),
        );
        Ok(Self::assemble(config, backend, pool, shared))
    }

    /// Prepares the service for `config` after a reload (derives the users' secrets, loads
    /// TLS settings) without changing anything yet.
    pub(crate) fn prepare_reload(&self, config: PoolConfig) -> Result<Reloaded, TlsError> {
        let shared = self.shared();
        let backend = Arc::new(backend_context(&config, &shared)?);
        Ok(Reloaded { config, backend })
    }

    /// Puts a prepared reload in force: the same pool (its connections stay) opens new
    /// connections with the new users, servers and deadlines and applies the new sizes.
    /// Sessions that run keep the service they started with; new ones get the one returned.
    pub(crate) fn commit_reload(&self, reloaded: Reloaded) -> Arc<PgService> {
        let pool = &self.core.pool;
        pool.manager().ctx.set(Arc::clone(&reloaded.backend));
        pool.set_settings(pool_settings(&reloaded.config));
        Self::assemble(
            reloaded.config,
            reloaded.backend,
            pool.clone(),
            self.shared(),
        )
    }

    fn shared(&self) -> Shared {
        Shared {
            resolver: self.backend.resolver.clone(),
            cancels: Arc::clone(&self.cancels),
            mock_secret: self.mock_secret,
            core: self.core.shared(),
        }
    }

    fn assemble(
        config: PoolConfig,
        backend: Arc<BackendContext>,
        pool: Pool<PgManager>,
        shared: Shared,
    ) -> Arc<PgService> {
        Arc::new(PgService {
            core: Core::new(config, pool, shared.core, "postgres"),
            backend,
            cancels: shared.cancels,
            mock_secret: shared.mock_secret,
        })
    }

    /// The secrets of a configured user.
    pub(crate) fn user(&self, name: &str) -> Option<&UserSecrets> {
        self.backend.users.get(name)
    }
}

/// How to reach and log in to the pool's servers.
fn backend_context(config: &PoolConfig, shared: &Shared) -> Result<BackendContext, TlsError> {
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
    Ok(BackendContext {
        pool_name: config.name.clone(),
        resolver: shared.resolver.clone(),
        servers: config.servers.clone(),
        tls: BackendTls::new(&config.tls)?,
        timeouts: config.timeouts.clone(),
        max_message_size: config.limits.max_message_size,
        users,
        role: config.role,
        ops: Arc::clone(&shared.core.ops),
    })
}
