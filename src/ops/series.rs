//! The metric series of DESIGN §7: their names, descriptions, label values and histogram
//! buckets, the Prometheus recorder, and the zero values every series has from the start
//! (dashboards and alerts must find a series before its first event).

use std::collections::BTreeSet;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::config::Config;
use crate::ops::histograms::{MetricsHandle, SutureRecorder};

/// `suture_backend_idle_closes_total{cause}` values.
pub const IDLE_CLOSE_CAUSES: [&str; 4] = ["fin", "rst", "server_error", "idle_timeout_notice"];
/// `suture_replays_total{reason}` values.
pub const REPLAY_REASONS: [&str; 4] = [
    "never_sent",
    "zero_bytes",
    "refused_while_idle",
    "no_side_effects",
];
/// `suture_replays_refused_total{reason}` values.
pub const REFUSAL_REASONS: [&str; 6] = [
    "maybe_executed",
    "in_transaction",
    "commit_unknown",
    "tainted_session",
    "budget_exhausted",
    "backend_unavailable",
];
/// `suture_backend_connections{state}` values.
pub const BACKEND_STATES: [&str; 2] = ["idle", "active"];
/// `suture_backend_connects_total{result}` values.
pub const CONNECT_RESULTS: [&str; 7] = [
    "ok",
    "timeout",
    "refused",
    "dns_error",
    "tls_error",
    "auth_error",
    "read_only",
];
/// `suture_backend_closes_total{reason}` values.
pub const CLOSE_REASONS: [&str; 5] = [
    "max_lifetime",
    "idle_timeout",
    "health_check",
    "shutdown",
    "error",
];
/// `suture_client_connections_total{result}` values.
pub const CLIENT_RESULTS: [&str; 4] = ["accepted", "auth_failed", "rejected", "protocol_error"];
/// `suture_config_reloads_total{result}` values.
pub const RELOAD_RESULTS: [&str; 2] = ["ok", "rejected"];

/// Histogram buckets in seconds: from 50 µs (a loopback round trip through the proxy) to 10 s.
pub const BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Every series name Suture exports (the dashboard and the alert rules may query only these).
pub const NAMES: [&str; 16] = [
    "suture_backend_idle_closes_total",
    "suture_replays_total",
    "suture_replays_refused_total",
    "suture_session_heals_total",
    "suture_backend_connections",
    "suture_backend_connects_total",
    "suture_backend_closes_total",
    "suture_client_connections",
    "suture_client_connections_total",
    "suture_held_requests",
    "suture_checkout_wait_seconds",
    "suture_request_duration_seconds",
    "suture_event_loop_lag_seconds",
    "suture_config_reloads_total",
    "suture_log_lines_dropped_total",
    "suture_draining",
];

/// Another recorder was installed first.
#[derive(Debug, thiserror::Error)]
#[error("a metrics recorder is already installed")]
pub struct RecorderInstalled;

/// Installs the global recorder: counters and gauges in metrics-exporter-prometheus's, histograms
/// in Suture's own (`crate::ops::histograms`), with [`BUCKETS`]. No HTTP listener of its own: the
/// admin port serves [`MetricsHandle::render`]. Call once, before any metric is touched.
pub fn install() -> Result<MetricsHandle, RecorderInstalled> {
    let recorder = SutureRecorder::new(PrometheusBuilder::new().build_recorder(), &BUCKETS);
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| RecorderInstalled)?;
    describe();
    Ok(handle)
}

/// HELP text and units of every series.
fn describe() {
    describe_counter!(
        "suture_backend_idle_closes_total",
        "Backend connections found closed while idle, by cause"
    );
    describe_counter!(
        "suture_replays_total",
        "Requests replayed invisibly on a new backend, by reason"
    );
    describe_counter!(
        "suture_replays_refused_total",
        "Backend losses surfaced to the client, by reason"
    );
    describe_counter!(
        "suture_session_heals_total",
        "Backends swapped under idle sessions with their state restored"
    );
    describe_gauge!(
        "suture_backend_connections",
        "Backend connections by state (idle in the pool, active with a client)"
    );
    describe_counter!(
        "suture_backend_connects_total",
        "Backend connection attempts, by result"
    );
    describe_counter!(
        "suture_backend_closes_total",
        "Backend connections Suture closed, by reason"
    );
    describe_gauge!("suture_client_connections", "Open client connections");
    describe_counter!(
        "suture_client_connections_total",
        "Client connections, by result"
    );
    describe_gauge!(
        "suture_held_requests",
        "Requests waiting in the failover hold"
    );
    describe_histogram!(
        "suture_checkout_wait_seconds",
        Unit::Seconds,
        "Time to get a backend connection"
    );
    describe_histogram!(
        "suture_request_duration_seconds",
        Unit::Seconds,
        "Request latency as seen through the proxy, from the request's first byte to its reply's end"
    );
    describe_gauge!(
        "suture_event_loop_lag_seconds",
        Unit::Seconds,
        "Scheduling lag of the data-path event loop, as the watchdog measures it"
    );
    describe_counter!(
        "suture_config_reloads_total",
        "Configuration reloads (SIGHUP), by result"
    );
    describe_counter!(
        "suture_log_lines_dropped_total",
        "Log lines dropped because the log writer could not keep up"
    );
    describe_gauge!(
        "suture_draining",
        "1 while Suture shuts down (readiness fails, sessions drain)"
    );
}

/// Registers every series of `config` at zero: each label value DESIGN §7 lists, for each
/// pool and each protocol in use.
pub fn register_zeros(config: &Config) {
    let protocols: BTreeSet<&'static str> =
        config.pools.values().map(|p| p.protocol.as_str()).collect();
    for protocol in protocols {
        metrics::gauge!("suture_client_connections", "protocol" => protocol).set(0.0);
        for result in CLIENT_RESULTS {
            metrics::counter!("suture_client_connections_total", "protocol" => protocol, "result" => result)
                .increment(0);
        }
        let _ = metrics::histogram!("suture_request_duration_seconds", "protocol" => protocol);
    }
    for name in config.pools.keys() {
        register_pool_zeros(name);
    }
    metrics::gauge!("suture_event_loop_lag_seconds").set(0.0);
    metrics::gauge!("suture_draining").set(0.0);
    metrics::counter!("suture_log_lines_dropped_total").increment(0);
    for result in RELOAD_RESULTS {
        metrics::counter!("suture_config_reloads_total", "result" => result).increment(0);
    }
}

fn register_pool_zeros(pool: &str) {
    let labelled = |name: &'static str, label: &'static str, values: &[&'static str]| {
        for value in values {
            metrics::counter!(name, "pool" => pool.to_owned(), label => *value).increment(0);
        }
    };
    labelled(
        "suture_backend_idle_closes_total",
        "cause",
        &IDLE_CLOSE_CAUSES,
    );
    labelled("suture_replays_total", "reason", &REPLAY_REASONS);
    labelled("suture_replays_refused_total", "reason", &REFUSAL_REASONS);
    labelled("suture_backend_connects_total", "result", &CONNECT_RESULTS);
    labelled("suture_backend_closes_total", "reason", &CLOSE_REASONS);
    metrics::counter!("suture_session_heals_total", "pool" => pool.to_owned()).increment(0);
    for state in BACKEND_STATES {
        metrics::gauge!("suture_backend_connections", "pool" => pool.to_owned(), "state" => state)
            .set(0.0);
    }
    metrics::gauge!("suture_held_requests", "pool" => pool.to_owned()).set(0.0);
    let _ = metrics::histogram!("suture_checkout_wait_seconds", "pool" => pool.to_owned());
}
