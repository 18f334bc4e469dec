//! The PostgreSQL side of Suture: client login, backend connections, the relay and the
//! bookkeeping healing needs.

mod aborted;
mod backend;
mod backend_auth;
mod backend_scram;
mod book;
pub(crate) mod cancel;
mod client_auth;
mod client_login;
mod context;
mod discovery;
mod errors;
mod framing;
mod hooks;
mod lost;
mod messages;
mod restore;
mod session;
mod session_state;
mod statement;
mod wire;

pub(crate) use context::{PgService, Reloaded as PgReloaded, Shared as PgShared};
pub(crate) use session::{refuse_at_cap, serve};

/// The sub-pools warmed at start: one per configured user, in the pool's `database` when set,
/// else the user's own (PostgreSQL's default).
pub(crate) fn warm_keys(config: &crate::config::PoolConfig) -> Vec<context::PgKey> {
    config
        .users
        .keys()
        .map(|user| context::PgKey {
            user: user.clone(),
            database: config.database.clone().unwrap_or_else(|| user.clone()),
        })
        .collect()
}
