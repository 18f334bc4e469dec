//! What every MySQL session of one pool shares: the protocol-agnostic core (configuration, pool,
//! budgets), how to reach and log in to the servers, what clients are greeted with (the
//! server's version and capabilities, learned from a backend login, since drivers gate features
//! on them), and the connection ids clients are given. Built once per pool at start, again on
//! reload.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::PoolConfig;
use crate::mysql::backend::{self, MyBackendConn, MyBackendError};
use crate::mysql::client_login::Greeting;
use crate::mysql::manager::{MyBackendContext, MyKey, MyManager};
use crate::net::dns::Resolver;
use crate::net::tls::TlsError;
use crate::pool::Pool;
use crate::session::core::{pool_settings, Core, CoreShared, PreparedReload};

/// What clients are greeted with, shared by a pool's services across reloads.
#[derive(Default)]
pub(crate) struct GreetingCell {
    known: RwLock<Option<Greeting>>,
    /// Held while a login learns the greeting: clients that arrive meanwhile wait for it
    /// instead of each logging in once more.
    learning: tokio::sync::Mutex<()>,
    /// Connection ids given to clients: Suture's own (the backend serving a client changes).
    next_connection_id: AtomicU32,
}

impl GreetingCell {
    fn get(&self) -> Option<Greeting> {
        self.known.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Learns the greeting from a backend connection that just logged in.
    pub(crate) fn learn(&self, conn: &MyBackendConn) -> Greeting {
        let greeting = Greeting {
            server_version: conn.server_version.clone(),
            connection_id: 0,
            status: conn.state.status,
            character_set: conn.character_set,
            capabilities: conn.server_capabilities,
        };
        *self.known.write().unwrap_or_else(|p| p.into_inner()) = Some(greeting.clone());
        greeting
    }

    fn connection_id(&self) -> u32 {
        // Never 0: some clients take it for "unknown".
        self.next_connection_id.fetch_add(1, Ordering::Relaxed) % (u32::MAX - 1) + 1
    }
}

/// Everything a MySQL client session of one pool needs.
pub(crate) struct MyService {
    pub(crate) core: Core<MyManager>,
    pub(crate) backend: Arc<MyBackendContext>,
    pub(crate) greeting: Arc<GreetingCell>,
}

/// A reload prepared by [`MyService::prepare_reload`].
pub(crate) type MyReloaded = PreparedReload<MyBackendContext>;

/// What a MySQL pool shares across reloads.
pub(crate) struct MyShared {
    pub(crate) resolver: Resolver,
    pub(crate) greeting: Arc<GreetingCell>,
    pub(crate) core: CoreShared,
}

impl MyService {
    pub(crate) fn new(config: PoolConfig, shared: MyShared) -> Result<Arc<MyService>, TlsError> {
        let backend = Arc::new(MyBackendContext::new(
            &config,
            shared.resolver.clone(),
            Arc::clone(&shared.core.ops),
        )?);
        let pool = Pool::new(
            &config.name,
            MyManager::new(Arc::clone(&backend)),
            pool_settings(&config),
            Arc::clone(&shared.core.ops),
        );
        Ok(Self::assemble(config, backend, pool, shared))
    }

    pub(crate) fn prepare_reload(&self, config: PoolConfig) -> Result<MyReloaded, TlsError> {
        let backend = Arc::new(MyBackendContext::new(
            &config,
            self.backend.resolver.clone(),
            Arc::clone(&self.core.ops),
        )?);
        Ok(MyReloaded { config, backend })
    }

    /// Puts a prepared reload in force: the same pool (its connections stay) opens new
    /// connections with the new users, servers and deadlines.
    pub(crate) fn commit_reload(&self, reloaded: MyReloaded) -> Arc<MyService> {
        let pool = &self.core.pool;
        pool.manager().ctx.set(Arc::clone(&reloaded.backend));
        pool.set_settings(pool_settings(&reloaded.config));
        let shared = MyShared {
            resolver: self.backend.resolver.clone(),
            greeting: Arc::clone(&self.greeting),
            core: self.core.shared(),
        };
        Self::assemble(reloaded.config, reloaded.backend, pool.clone(), shared)
    }

    fn assemble(
        config: PoolConfig,
        backend: Arc<MyBackendContext>,
        pool: Pool<MyManager>,
        shared: MyShared,
    ) -> Arc<MyService> {
        Arc::new(MyService {
            core: Core::new(config, pool, shared.core, "mysql"),
            backend,
            greeting: shared.greeting,
        })
    }

    /// The greeting for a new client: the server's, with a connection id of its own. A server
    /// not seen yet is logged in to once, as the pool's first configured user.
    pub(crate) async fn greeting(&self) -> Result<Greeting, MyBackendError> {
        let mut greeting = match self.greeting.get() {
            Some(greeting) => greeting,
            // Boxed: a login future is kilobytes, and every session awaits this one.
            None => Box::pin(self.learn_greeting()).await?,
        };
        greeting.connection_id = self.greeting.connection_id();
        Ok(greeting)
    }

    /// Logs in to a server once to learn what clients are greeted with (also at start, so
    /// `/startup` knows the pool can log in).
    pub(crate) async fn learn_greeting(&self) -> Result<Greeting, MyBackendError> {
        let _learning = self.greeting.learning.lock().await;
        if let Some(greeting) = self.greeting.get() {
            return Ok(greeting);
        }
        let key = self.probe_key().ok_or_else(|| {
            MyBackendError::UnknownUser("(no user configured for the pool)".to_owned())
        })?;
        let limit = self.core.config.timeouts.checkout;
        let mut conn = tokio::time::timeout(limit, backend::connect(&self.backend, &key))
            .await
            .map_err(|_| MyBackendError::Timeout {
                step: "the first login",
                limit,
            })??;
        let greeting = self.greeting.learn(&conn);
        conn.terminate().await;
        // The server ends the session once it read COM_QUIT: wait for its close (briefly), so
        // the probe is gone before the clients that waited for it open their backends.
        let mut rest = bytes::BytesMut::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            crate::wire::fill(&mut conn.reader, &mut rest),
        )
        .await;
        Ok(greeting)
    }

    /// The key of the login that learns the greeting.
    fn probe_key(&self) -> Option<MyKey> {
        let user = self.core.config.users.keys().next()?;
        Some(MyKey {
            user: user.clone(),
            database: self.core.config.database.clone(),
            capabilities: 0,
            character_set: 0,
        })
    }
}
