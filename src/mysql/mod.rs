//! The MySQL and MariaDB side of Suture: the client handshake and login, backend connections,
//! what each command and reply means for the session's ledger, and the session state learned
//! from the server's session tracking. The command-phase loop, the ledger and the heal
//! orchestration are the shared ones in `crate::session`; nothing here imports `postgres`.

pub(crate) mod client_auth;
pub(crate) mod client_login;
pub(crate) mod errors;
pub(crate) mod lexer;
pub(crate) mod session_state;
pub(crate) mod statement;
mod statement_effects;
pub(crate) mod statement_ids;
