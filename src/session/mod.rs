//! The protocol-agnostic session core: the command-phase loop and its relay, the per-request
//! ledger and tracker, deadlines, heal orchestration after a lost backend, the drain at
//! shutdown, and the memory budget of client buffers. Each protocol plugs in through the
//! traits of `framing` (what its bytes mean), `link` (its backend connection) and `hooks`
//! (logins, restores, resets and what the client is told).

pub(crate) mod budget;
pub(crate) mod command_phase;
pub(crate) mod core;
pub(crate) mod deadlines;
mod drain;
pub(crate) mod framing;
pub(crate) mod hooks;
pub(crate) mod ledger;
pub(crate) mod link;
mod loss;
mod on_wake;
pub(crate) mod progress;
pub(crate) mod relay;
pub(crate) mod tracker;
