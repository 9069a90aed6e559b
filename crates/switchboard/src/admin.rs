//! Admin HTTP: `/healthz` (the process can work), `/readyz` (taking calls), `/metrics` (Prometheus).
//!
//! Both health answers tell the truth: once a task the gateway cannot live without has ended
//! (the SIP driver, the accept loops), `/healthz` and `/readyz` answer 503 with what ended, at
//! once, while the process shuts down and exits non-zero.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;

use crate::app::GatewayState;

#[derive(Clone)]
struct AdminState {
    gateway: Arc<GatewayState>,
    metrics: Option<PrometheusHandle>,
}

/// Binds `addr` and serves in the background; returns the bound address and the server task
/// (which the gateway supervises: it should never end).
pub async fn serve(
    addr: SocketAddr,
    gateway: Arc<GatewayState>,
    metrics: Option<PrometheusHandle>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AdminState { gateway, metrics });
    // axum's accept loop already pauses on EMFILE and similar errors instead of spinning.
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin listener stopped");
        }
    });
    Ok((bound, task))
}

async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.gateway.failure() {
        Some(failure) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {failure}\n")),
        None => (StatusCode::OK, "ok\n".to_string()),
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let gw = &state.gateway;
    if let Some(failure) = gw.failure() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {failure}\n"));
    }
    if !gw.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting or shutting down\n".to_string());
    }
    let active = gw.active_calls.load(Ordering::Acquire);
    let limit = gw.config.calls.max_concurrent;
    if gw.capacity_saturated.load(Ordering::Acquire) {
        // Same answer as INVITE and OPTIONS get: a load balancer steers new calls elsewhere.
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: pacing saturated ({active} calls)\n"));
    }
    if active >= limit {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: at the call limit ({active}/{limit})\n"));
    }
    (StatusCode::OK, format!("ready: {active}/{limit} calls\n"))
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    match &state.metrics {
        Some(handle) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()),
        None => (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain")], "metrics disabled\n".to_string()),
    }
}
