//! The protocol-agnostic session core. Today it holds the per-request ledger every session
//! keeps of its requests in flight and the memory budget of client buffers; the command-phase loop, heal orchestration and cancel
//! routing join it when a second protocol needs them.

pub(crate) mod budget;
pub(crate) mod ledger;
