//! Network plumbing. Backends: asynchronous DNS, TCP connect with deadlines, socket options and
//! TLS. Clients: the listeners (TCP or Unix socket) and the client connection type.
//!
//! Every step here has its own deadline (DESIGN §6); nothing blocks a runtime thread.

pub(crate) mod client_socket;
pub mod connect;
pub mod dns;
pub mod listener;
pub(crate) mod login_error;
pub mod socket;
pub mod tls;

pub use connect::{connect_tcp, ConnectError};
pub use dns::{DnsError, Resolver};
pub use socket::{configure_backend_socket, configure_client_socket, SocketOptions};
pub use tls::{BackendTls, TlsError};
