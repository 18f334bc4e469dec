//! Suture: a sidecar proxy that heals broken database connections.
pub mod admin;
pub mod config;
mod heal;
mod liveness;
mod log_limit;
pub mod logging;
// Wired into server.rs by the MySQL session (issue 12); until then its parts are built and unit-tested only.
#[allow(dead_code)]
mod mysql;
pub mod net;
pub mod ops;
mod peer_text;
mod pool;
mod postgres;
mod reload;
mod retry_budget;
mod served;
pub mod server;
mod session;
mod shutdown;
mod stream;
pub(crate) mod wire;
