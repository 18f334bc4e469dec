//! What the admin port reports about one pool beyond its metrics: whether it has logged in to
//! a backend since start, the outcome of its last backend connect, the server limits
//! discovered on its newest backend connection, and the last heal, replay, refusal and idle
//! close with their cause and time. Written by the data path at those (rare) events, read by
//! the admin thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// One event of a kind, the last one seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastEvent {
    pub at: SystemTime,
    /// The cause or reason label (as in the metrics).
    pub cause: String,
}

/// The events `/status` shows per pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Heal,
    Replay,
    Refusal,
    IdleClose,
}

/// The outcome of the last backend connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectOutcome {
    pub at: SystemTime,
    /// `ok` or the `suture_backend_connects_total` result label.
    pub result: &'static str,
    /// Why it failed (for the log and the readiness body; never shown to clients).
    pub error: Option<String>,
}

/// Server limits as discovered on a backend connection (DESIGN §5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerLimits {
    pub idle_session_timeout: Option<Duration>,
    pub idle_in_transaction_session_timeout: Option<Duration>,
    pub read_only: bool,
}

#[derive(Debug, Default)]
struct Events {
    heal: Option<LastEvent>,
    replay: Option<LastEvent>,
    refusal: Option<LastEvent>,
    idle_close: Option<LastEvent>,
    connect: Option<ConnectOutcome>,
    limits: Option<ServerLimits>,
}

/// One pool's operational state; shared by the pool's sessions and the admin thread.
#[derive(Debug, Default)]
pub struct PoolOps {
    logged_in: AtomicBool,
    events: Mutex<Events>,
}

/// A copy of one pool's operational state.
#[derive(Clone, Debug, Default)]
pub struct PoolOpsSnapshot {
    pub logged_in: bool,
    pub heal: Option<LastEvent>,
    pub replay: Option<LastEvent>,
    pub refusal: Option<LastEvent>,
    pub idle_close: Option<LastEvent>,
    pub connect: Option<ConnectOutcome>,
    pub limits: Option<ServerLimits>,
}

impl PoolOps {
    fn events(&self) -> MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event of `kind` with its cause label.
    pub fn record(&self, kind: EventKind, cause: &str) {
        let event = Some(LastEvent {
            at: SystemTime::now(),
            cause: cause.to_owned(),
        });
        let mut events = self.events();
        match kind {
            EventKind::Heal => events.heal = event,
            EventKind::Replay => events.replay = event,
            EventKind::Refusal => events.refusal = event,
            EventKind::IdleClose => events.idle_close = event,
        }
    }

    /// A backend login succeeded; `limits` is what discovery read on it.
    pub fn connected(&self, limits: ServerLimits) {
        self.logged_in.store(true, Ordering::Release);
        let mut events = self.events();
        events.connect = Some(ConnectOutcome {
            at: SystemTime::now(),
            result: "ok",
            error: None,
        });
        events.limits = Some(limits);
    }

    /// A backend connect failed with `result` (the metrics label) because of `error`.
    pub fn connect_failed(&self, result: &'static str, error: String) {
        self.events().connect = Some(ConnectOutcome {
            at: SystemTime::now(),
            result,
            error: Some(error),
        });
    }

    /// Whether any backend login succeeded since start.
    pub fn logged_in(&self) -> bool {
        self.logged_in.load(Ordering::Acquire)
    }

    /// Why the backend looks unreachable now: the last connect failed. `None` when it
    /// succeeded or none was tried yet.
    pub fn backend_failure(&self) -> Option<String> {
        let events = self.events();
        let connect = events.connect.as_ref()?;
        connect
            .error
            .as_ref()
            .map(|err| format!("{}: {err}", connect.result))
    }

    pub fn snapshot(&self) -> PoolOpsSnapshot {
        let events = self.events();
        PoolOpsSnapshot {
            logged_in: self.logged_in(),
            heal: events.heal.clone(),
            replay: events.replay.clone(),
            refusal: events.refusal.clone(),
            idle_close: events.idle_close.clone(),
            connect: events.connect.clone(),
            limits: events.limits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_connects_are_kept() {
        let ops = PoolOps::default();
        assert!(!ops.logged_in());
        assert_eq!(ops.backend_failure(), None);
        ops.connect_failed("refused", "connection refused".into());
        assert_eq!(
            ops.backend_failure().as_deref(),
            Some("refused: connection refused")
        );
        ops.connected(ServerLimits {
            idle_session_timeout: Some(Duration::from_secs(5)),
            ..ServerLimits::default()
        });
        assert!(ops.logged_in());
        assert_eq!(ops.backend_failure(), None);
        ops.record(EventKind::Heal, "rst");
        ops.record(EventKind::Refusal, "maybe_executed");
        let snap = ops.snapshot();
        assert_eq!(snap.heal.map(|e| e.cause).as_deref(), Some("rst"));
        assert_eq!(
            snap.refusal.map(|e| e.cause).as_deref(),
            Some("maybe_executed")
        );
        assert!(snap.replay.is_none());
        assert_eq!(
            snap.limits.and_then(|l| l.idle_session_timeout),
            Some(Duration::from_secs(5))
        );
    }
}
