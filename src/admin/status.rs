//! The `/status` document: what it holds per pool, how it is built from a pool's operational
//! state, and how `suture status` prints it as tables (in the manner of PgBouncer's
//! `SHOW POOLS`).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ops::pool_state::{ConnectOutcome, LastEvent, PoolOpsSnapshot, ServerLimits};

/// The whole document.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_seconds: f64,
    pub draining: bool,
    pub event_loop_lag_seconds: f64,
    pub pools: Vec<PoolStatus>,
}

/// One pool.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub protocol: String,
    pub listen: String,
    pub servers: Vec<String>,
    /// Warm spares kept per user and database.
    pub min_idle: usize,
    /// Open client connections on the listener.
    pub clients: usize,
    pub backends: Backends,
    /// Requests in the failover hold.
    pub held: usize,
    /// Clients waiting for a free slot (`max_size`).
    pub waiting: usize,
    pub logged_in: bool,
    pub last_heal: Option<Event>,
    pub last_replay: Option<Event>,
    pub last_refusal: Option<Event>,
    pub last_idle_close: Option<Event>,
    pub last_connect: Option<Connect>,
    /// Limits the server reported on the newest backend connection.
    pub server_limits: Option<Limits>,
}

/// Backend connections by state.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Backends {
    pub idle: usize,
    pub active: usize,
}

/// The last event of a kind.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub cause: String,
    /// RFC 3339, UTC.
    pub at: String,
    pub at_unix: f64,
}

/// The last backend connect.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Connect {
    pub result: String,
    pub error: Option<String>,
    pub at: String,
    pub at_unix: f64,
}

/// Discovered server limits, in seconds; `None` when the server has none.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Limits {
    pub idle_session_timeout_seconds: Option<f64>,
    pub idle_in_transaction_session_timeout_seconds: Option<f64>,
    pub read_only: bool,
}

/// What a served pool tells the admin port; implemented where pools are run.
pub trait PoolSource: Send + Sync {
    fn status(&self) -> PoolStatus;
}

/// The parts of [`PoolStatus`] that come from the pool's operational state.
pub fn fill_from_ops(status: &mut PoolStatus, ops: PoolOpsSnapshot) {
    status.logged_in = ops.logged_in;
    status.last_heal = ops.heal.map(event);
    status.last_replay = ops.replay.map(event);
    status.last_refusal = ops.refusal.map(event);
    status.last_idle_close = ops.idle_close.map(event);
    status.last_connect = ops.connect.map(connect);
    status.server_limits = ops.limits.map(limits);
}

fn event(e: LastEvent) -> Event {
    Event {
        cause: e.cause,
        at: rfc3339(e.at),
        at_unix: unix(e.at),
    }
}

fn connect(c: ConnectOutcome) -> Connect {
    Connect {
        result: c.result.to_owned(),
        error: c.error,
        at: rfc3339(c.at),
        at_unix: unix(c.at),
    }
}

fn limits(l: ServerLimits) -> Limits {
    Limits {
        idle_session_timeout_seconds: l.idle_session_timeout.map(|d| d.as_secs_f64()),
        idle_in_transaction_session_timeout_seconds: l
            .idle_in_transaction_session_timeout
            .map(|d| d.as_secs_f64()),
        read_only: l.read_only,
    }
}

fn unix(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// `2026-11-02T10:04:05.123Z`.
pub fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// Year, month and day of the `days`-th day after 1970-01-01 (proleptic Gregorian calendar),
/// counted in 400-year eras of 146,097 days.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The document as `suture status` prints it: one table of pools and their connections, one
/// of their last events and discovered limits. `now` is the Unix time to show ages against.
pub fn render_tables(status: &Status, now: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "suture {}  up {}  event loop lag {:.3}s{}",
        status.version,
        age(status.uptime_seconds),
        status.event_loop_lag_seconds,
        if status.draining { "  DRAINING" } else { "" }
    );
    out.push('\n');
    let pools: Vec<Vec<String>> = status
        .pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.protocol.clone(),
                p.listen.clone(),
                p.servers.join(","),
                p.clients.to_string(),
                p.backends.idle.to_string(),
                p.backends.active.to_string(),
                p.held.to_string(),
                p.waiting.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "pool",
            "protocol",
            "listen",
            "servers",
            "clients",
            "sv_idle",
            "sv_active",
            "held",
            "waiting",
        ],
        &pools,
    ));
    out.push('\n');
    let shown = |e: &Option<Event>| match e {
        Some(e) => format!("{} ({} ago)", e.cause, age(now - e.at_unix)),
        None => "-".to_owned(),
    };
    let seconds = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s}s"));
    let events: Vec<Vec<String>> = status
        .pools
        .iter()
        .map(|p| {
            let limits = p.server_limits;
            vec![
                p.name.clone(),
                shown(&p.last_heal),
                shown(&p.last_replay),
                shown(&p.last_refusal),
                shown(&p.last_idle_close),
                p.last_connect.as_ref().map_or("-".to_owned(), |c| {
                    format!("{} ({} ago)", c.result, age(now - c.at_unix))
                }),
                seconds(limits.and_then(|l| l.idle_session_timeout_seconds)),
                seconds(limits.and_then(|l| l.idle_in_transaction_session_timeout_seconds)),
                limits.map_or("-".to_owned(), |l| {
                    if l.read_only { "on" } else { "off" }.to_owned()
                }),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "pool",
            "last heal",
            "last replay",
            "last refusal",
            "last idle close",
            "last connect",
            "idle_session_timeout",
            "idle_in_tx_timeout",
            "read_only",
        ],
        &events,
    ));
    out
}

/// `4s`, `3m12s`, `2h05m`.
fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A psql-style table: headers, a rule, then rows; numbers right-aligned.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let cells: Vec<String> = headers
        .iter()
        .zip(&widths)
        .map(|(h, w)| format!(" {h:^w$} "))
        .collect();
    let _ = writeln!(out, "{}", cells.join("|").trim_end());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
    let _ = writeln!(out, "{}", rule.join("+"));
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| {
                if !cell.is_empty() && cell.bytes().all(|b| b.is_ascii_digit()) {
                    format!(" {cell:>w$} ")
                } else {
                    format!(" {cell:<w$} ")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("|").trim_end());
    }
    let _ = writeln!(
        out,
        "({} row{})",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_250);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.250Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_800);
        assert_eq!(rfc3339(t), "2100-01-01T00:00:00.000Z");
    }

    #[test]
    fn tables_show_each_pool() {
        let status = Status {
            version: "0.1.0".into(),
            uptime_seconds: 75.0,
            draining: false,
            event_loop_lag_seconds: 0.0,
            pools: vec![PoolStatus {
                name: "app".into(),
                protocol: "postgres".into(),
                listen: "127.0.0.1:6432".into(),
                servers: vec!["db:5432".into()],
                min_idle: 1,
                clients: 3,
                backends: Backends { idle: 1, active: 2 },
                held: 0,
                waiting: 0,
                logged_in: true,
                last_heal: Some(Event {
                    cause: "rst".into(),
                    at: String::new(),
                    at_unix: 100.0,
                }),
                last_replay: None,
                last_refusal: None,
                last_idle_close: None,
                last_connect: None,
                server_limits: Some(Limits {
                    idle_session_timeout_seconds: Some(5.0),
                    idle_in_transaction_session_timeout_seconds: None,
                    read_only: false,
                }),
            }],
        };
        let text = render_tables(&status, 104.0);
        assert!(text.contains("up 1m15s"), "{text}");
        assert!(text.contains("rst (4s ago)"), "{text}");
        assert!(text.contains(" app  | postgres"), "{text}");
        assert!(text.contains("5s"), "{text}");
        assert!(text.contains("(1 row)"), "{text}");
    }
}
