//! The PostgreSQL side of Suture: client login, backend connections, the relay and the
//! bookkeeping healing needs.

mod aborted;
mod backend;
mod backend_auth;
pub(crate) mod cancel;
mod client_auth;
mod client_login;
mod command_phase;
mod context;
mod deadlines;
mod discovery;
mod drain;
mod errors;
mod loss;
mod lost;
mod messages;
mod relay;
mod restore;
mod session;
mod session_state;
mod statement;
mod tracker;
mod wire;

pub(crate) use context::{PgKey, PgService, Shared as PgShared};
pub(crate) use session::{refuse_at_cap, serve};
