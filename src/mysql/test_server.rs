//! Test-only: the integration tests' private MariaDB harness (`tests/support/mariadb_server.rs`,
//! with the process helpers of `tests/support/pg_server.rs` it uses), compiled into the
//! library's unit tests so they can reach `pub(crate)` items against a real server.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

#[path = "../../tests/support/mariadb_server.rs"]
pub(crate) mod mariadb_server;
#[path = "../../tests/support/pg_server.rs"]
mod pg_server;

pub(crate) use mariadb_server::MariaDbServer;

/// A loopback port nothing listens on right now (the harness's `free_port` contract).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map_or(0, |addr| addr.port())
}
