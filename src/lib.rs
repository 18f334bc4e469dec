//! Suture: a sidecar proxy that heals broken database connections.
pub mod config;
mod heal;
mod liveness;
mod log_limit;
pub mod logging;
pub mod net;
mod peer_text;
mod pool;
mod postgres;
mod retry_budget;
pub mod server;
mod session;
mod stream;
