//! The protocol-agnostic session core. Today it holds the per-request ledger every session
//! keeps of its requests in flight; the command-phase loop, heal orchestration and cancel
//! routing join it when a second protocol needs them.

pub(crate) mod ledger;
