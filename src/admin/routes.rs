//! What each admin path answers. Probes answer `200 ok` or `503` with the reason in the body.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::status::{PoolStatus, Status};
use super::AdminState;
use crate::ops::lifecycle::StopSource;

type Answer = Response<Full<Bytes>>;

pub(super) async fn route(
    state: &AdminState,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Answer {
    let method = request.method().clone();
    match (method, request.uri().path()) {
        (Method::GET, "/metrics") => metrics(state),
        (Method::GET, "/startup") => probe(startup_failure(state)),
        (Method::GET, "/healthz") => probe(state.health.liveness_failure()),
        (Method::GET, "/readyz") => probe(readiness_failure(state)),
        (Method::GET, "/status") => status(state),
        (Method::POST, "/quitquitquit") => quit(state, peer),
        #[cfg(feature = "test-hooks")]
        (Method::POST, "/test/stall") => stall(state, request.uri().query()),
        (_, "/metrics" | "/startup" | "/healthz" | "/readyz" | "/status" | "/quitquitquit") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /startup, /healthz, /readyz, /status\n",
        ),
    }
}

fn text(code: StatusCode, body: impl Into<Bytes>) -> Answer {
    let mut answer = Response::new(Full::new(body.into()));
    *answer.status_mut() = code;
    answer.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer
}

fn probe(failure: Option<String>) -> Answer {
    match failure {
        None => text(StatusCode::OK, "ok\n"),
        Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

fn pool_statuses(state: &AdminState) -> Vec<PoolStatus> {
    state.pools().iter().map(|p| p.status()).collect()
}

fn metrics(state: &AdminState) -> Answer {
    // Gauges that are cheaper to read at scrape time than to keep up to date on the data path.
    for pool in pool_statuses(state) {
        let name = pool.name;
        metrics::gauge!("suture_backend_connections", "pool" => name.clone(), "state" => "idle")
            .set(pool.backends.idle as f64);
        metrics::gauge!("suture_backend_connections", "pool" => name, "state" => "active")
            .set(pool.backends.active as f64);
    }
    let mut answer = text(StatusCode::OK, state.prometheus.render());
    answer.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    answer
}

/// Not started yet: a listener is not up, or a pool that keeps warm spares has not logged in
/// to its backend once (until `startup_timeout`).
fn startup_failure(state: &AdminState) -> Option<String> {
    if !state.health.listeners_up() {
        return Some("listeners are not up yet".into());
    }
    if state.health.startup_timed_out() {
        return None;
    }
    let cold: Vec<String> = pool_statuses(state)
        .into_iter()
        .filter(|p| p.min_idle > 0 && !p.logged_in)
        .map(|p| p.name)
        .collect();
    (!cold.is_empty()).then(|| {
        format!(
            "pool(s) {} have not logged in to a backend yet",
            cold.join(", ")
        )
    })
}

/// Not ready: not started, draining, or (with `readiness_checks_backend`) a pool's backend is
/// unreachable.
fn readiness_failure(state: &AdminState) -> Option<String> {
    if state.health.draining() {
        return Some("draining: shutting down".into());
    }
    if let Some(why) = startup_failure(state) {
        return Some(format!("starting: {why}"));
    }
    if !state.readiness_checks_backend {
        return None;
    }
    let failing: Vec<String> = pool_statuses(state)
        .into_iter()
        .filter_map(|p| {
            let connect = p.last_connect.as_ref()?;
            let error = connect.error.as_ref()?;
            Some(format!(
                "pool {}: backend unreachable ({}): {error}",
                p.name, connect.result
            ))
        })
        .collect();
    (!failing.is_empty()).then(|| failing.join("\n"))
}

fn status(state: &AdminState) -> Answer {
    let document = Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: state.health.uptime().as_secs_f64(),
        draining: state.health.draining(),
        event_loop_lag_seconds: state.health.lag().as_secs_f64(),
        pools: pool_statuses(state),
    };
    match serde_json::to_vec_pretty(&document) {
        Ok(body) => {
            let mut answer = text(StatusCode::OK, body);
            answer.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            answer
        }
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
    }
}

/// `POST /quitquitquit`, from loopback only: the same as SIGTERM.
fn quit(state: &AdminState, peer: SocketAddr) -> Answer {
    if !peer.ip().is_loopback() {
        return text(StatusCode::FORBIDDEN, "only from loopback\n");
    }
    let lifecycle = Arc::clone(&state.lifecycle);
    // A second request exits the process: answer first, then act.
    tokio::spawn(async move {
        tokio::task::yield_now().await;
        lifecycle.request_stop(StopSource::Quitquitquit);
    });
    text(StatusCode::OK, "draining\n")
}

/// Test hook: blocks the data-path event loop for `ms` milliseconds (builds with the
/// `test-hooks` feature only).
#[cfg(feature = "test-hooks")]
fn stall(state: &AdminState, query: Option<&str>) -> Answer {
    let ms: u64 = query
        .and_then(|q| q.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let handle = state
        .data_path
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let Some(handle) = handle else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no data path yet\n");
    };
    handle.spawn(async move {
        tracing::warn!(ms, "test hook: stalling the data-path event loop");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    });
    text(StatusCode::OK, format!("stalling for {ms}ms\n"))
}
