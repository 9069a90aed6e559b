//! Admin HTTP: `/healthz` (the process is alive), `/readyz` (taking calls), `/metrics` (Prometheus).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::app::GatewayState;

#[derive(Clone)]
struct AdminState {
    gateway: Arc<GatewayState>,
    metrics: Option<PrometheusHandle>,
}

/// Binds `addr` and serves in the background; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    gateway: Arc<GatewayState>,
    metrics: Option<PrometheusHandle>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AdminState { gateway, metrics });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin listener stopped");
        }
    });
    Ok(bound)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let gw = &state.gateway;
    if !gw.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting or shutting down\n".to_string());
    }
    let active = gw.active_calls.load(Ordering::Acquire);
    let limit = gw.config.calls.max_concurrent;
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
