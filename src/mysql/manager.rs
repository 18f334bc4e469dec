//! How the pool opens and looks after MySQL backend connections: the sub-pool key (user,
//! database and the client capabilities that shape replies), what every backend connection of
//! one pool needs to log in ([`MyBackendContext`], replaced whole on reload), and the pool's
//! [`Manager`] for MySQL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use suture_protocol::mysql::capability::*;

use crate::config::{PoolConfig, Secret, ServerAddr, ServerRole, Timeouts};
use crate::mysql::backend::{self, MyBackendConn, MyBackendError};
use crate::net::dns::Resolver;
use crate::net::tls::{BackendTls, TlsError};
use crate::ops::pool_state::PoolOps;
use crate::pool::Manager;
use crate::session::core::Current;

/// Client capabilities that change what the server sends or does: a backend connection logs
/// in with exactly the client's choice of these, so it can serve only clients that made the
/// same choice.
pub(crate) const SHAPE_CAPABILITIES: u64 = CLIENT_FOUND_ROWS
    | CLIENT_IGNORE_SPACE
    | CLIENT_INTERACTIVE
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_LOCAL_FILES
    | CLIENT_DEPRECATE_EOF;

/// Which sub-pool a MySQL backend connection belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct MyKey {
    pub(crate) user: String,
    /// The database of the login (`CLIENT_CONNECT_WITH_DB`), if any.
    pub(crate) database: Option<String>,
    /// The client's capability flags that change what the server sends or does, masked with
    /// [`SHAPE_CAPABILITIES`]: a backend logs in with exactly these.
    pub(crate) capabilities: u64,
    /// The client's character set (collation id) from its handshake, which sets the session's
    /// `character_set_client`, `_connection` and `_results`; 0 for the server's default.
    pub(crate) character_set: u8,
}

impl MyKey {
    /// A key with the capabilities masked to [`SHAPE_CAPABILITIES`].
    #[cfg(test)]
    pub(crate) fn new(user: String, database: Option<String>, capabilities: u64) -> MyKey {
        MyKey {
            user,
            database,
            capabilities: capabilities & SHAPE_CAPABILITIES,
            character_set: 0,
        }
    }

    /// Whether the client logged in as interactive (the server then applies
    /// `interactive_timeout` instead of `wait_timeout`).
    pub(crate) fn interactive(&self) -> bool {
        self.capabilities & CLIENT_INTERACTIVE != 0
    }
}

/// How to open backend connections for one MySQL pool.
pub(crate) struct MyBackendContext {
    pub(crate) pool_name: String,
    pub(crate) resolver: Resolver,
    pub(crate) servers: Vec<ServerAddr>,
    pub(crate) tls: BackendTls,
    pub(crate) timeouts: Timeouts,
    pub(crate) max_message_size: usize,
    /// Every configured user's password: backends are logged in with it, never with a
    /// client's scramble.
    pub(crate) users: HashMap<String, Secret>,
    /// Whether a read-only server is acceptable.
    pub(crate) role: ServerRole,
    /// Where logins and their failures are reported for `/status` and `/startup`.
    pub(crate) ops: Arc<PoolOps>,
    /// Tests force the plugin of the first auth response, to make a server switch plugins.
    #[cfg(test)]
    pub(crate) first_plugin: Option<crate::mysql::backend_auth::ClientPlugin>,
}

impl MyBackendContext {
    /// Takes what backend logins need from the pool's configuration (TLS settings loaded here).
    pub(crate) fn new(
        config: &PoolConfig,
        resolver: Resolver,
        ops: Arc<PoolOps>,
    ) -> Result<MyBackendContext, TlsError> {
        let users = config
            .users
            .values()
            .map(|user| (user.name.clone(), user.password.clone()))
            .collect();
        Ok(MyBackendContext {
            pool_name: config.name.clone(),
            resolver,
            servers: config.servers.clone(),
            tls: BackendTls::new(&config.tls)?,
            timeouts: config.timeouts.clone(),
            max_message_size: config.limits.max_message_size,
            users,
            role: config.role,
            ops,
            #[cfg(test)]
            first_plugin: None,
        })
    }
}

/// The pool's [`Manager`] for MySQL.
pub(crate) struct MyManager {
    /// Replaced whole on reload: new connections use the new users, servers and deadlines.
    pub(crate) ctx: Current<MyBackendContext>,
}

impl MyManager {
    pub(crate) fn new(ctx: Arc<MyBackendContext>) -> MyManager {
        MyManager {
            ctx: Current::new(ctx),
        }
    }
}

impl Manager for MyManager {
    type Key = MyKey;
    type Conn = MyBackendConn;
    type Error = MyBackendError;

    async fn connect(&self, key: &MyKey) -> Result<MyBackendConn, MyBackendError> {
        backend::connect(&self.ctx.get(), key).await
    }

    fn check_idle(&self, conn: &mut MyBackendConn) -> Result<(), &'static str> {
        conn.check_idle(self.ctx.get().max_message_size)
    }

    fn is_retryable(err: &MyBackendError) -> bool {
        err.is_retryable()
    }

    fn idle_limit(&self, conn: &MyBackendConn) -> Option<Duration> {
        conn.idle_limit(conn.capabilities & CLIENT_INTERACTIVE != 0)
    }

    async fn health_check(&self, conn: &mut MyBackendConn) -> bool {
        let limit = self.ctx.get().timeouts.health_check_timeout;
        conn.ping(limit).await.is_ok()
    }

    fn conn_id(conn: &MyBackendConn) -> i64 {
        i64::from(conn.connection_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_only_shape_capabilities() {
        let key = MyKey::new(
            "app".into(),
            None,
            CLIENT_INTERACTIVE | CLIENT_SSL | CLIENT_COMPRESS | CLIENT_DEPRECATE_EOF,
        );
        assert_eq!(key.capabilities, CLIENT_INTERACTIVE | CLIENT_DEPRECATE_EOF);
        assert!(key.interactive());
        assert!(!MyKey::new("app".into(), None, CLIENT_FOUND_ROWS).interactive());
    }
}
