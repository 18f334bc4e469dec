//! The MySQL and MariaDB side of Suture: the client handshake and login, backend connections,
//! what each command and reply means for the session's ledger, and the session state learned
//! from the server's session tracking. The command-phase loop, the ledger and the heal
//! orchestration are the shared ones in `crate::session`; nothing here imports `postgres`.

mod aborted;
pub(crate) mod backend;
pub(crate) mod backend_auth;
pub(crate) mod backend_query;
mod book;
mod change_user;
pub(crate) mod client_auth;
pub(crate) mod client_login;
mod context;
pub(crate) mod errors;
mod framing;
mod hooks;
mod lexer;
mod lost;
pub(crate) mod manager;
mod reset;
mod session;
mod session_state;
mod statement;
mod statement_effects;
mod statement_ids;
#[cfg(test)]
mod test_server;

pub(crate) use context::{GreetingCell, MyReloaded, MyService, MyShared};
pub(crate) use session::{refuse_at_cap, serve};
