//! Wire framing and parsing for the protocols Suture speaks, PostgreSQL ([`pg`]) and
//! MySQL/MariaDB ([`mysql`]). No I/O, no tokio.
//!
//! Everything here works on byte slices and `bytes` buffers handed in by the proxy. Parsers never
//! panic on peer input: every length is checked before it is used, an incomplete buffer is
//! `Ok(None)` (or [`pg::Step::NeedMore`], [`mysql::Step::NeedMore`]), and anything that breaks the protocol is a
//! [`ProtocolError`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod mysql;
pub mod pg;

mod error;

pub use error::ProtocolError;
