//! Suture: a sidecar proxy that heals broken database connections.
pub mod config;
mod heal;
mod liveness;
pub mod net;
mod pool;
mod postgres;
mod retry_budget;
pub mod server;
mod session;
mod stream;
