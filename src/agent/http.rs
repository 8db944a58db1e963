//! The agent's HTTP endpoints.
//!
//! Introspection (INTROSPECTION_BIND_ADDRESS, default 127.0.0.1:61679):
//! * `GET /v1/pool` — the pool snapshot `prefixd plan --state` reads;
//! * `GET /v1/enis` — ENIs with their prefixes and addresses and the state of each;
//! * `GET /v1/allocations` — who holds which address;
//! * `GET /v1/config` — the effective settings and the node's limits;
//! * `GET /v1/status` — readiness, mode, fallback, the last plan;
//! * `GET /healthz` — the pool owner answers; `GET /readyz` — ready to hand out addresses,
//!   with the reason when not.
//!
//! Metrics (METRICS_BIND_ADDRESS, default 127.0.0.1:61678): `GET /metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;

use serde::Serialize;

use super::pool::PoolHandle;
use super::status::Status;
use crate::core::PodKey;
use crate::core::inventory::{EniStock, Inventory};
use crate::core::planner::Limits;
use crate::metrics::Metrics;

/// What the introspection handlers share.
#[derive(Clone)]
pub struct Introspection {
    /// The pool.
    pub pool: PoolHandle,
    /// Agent status.
    pub status: Arc<Status>,
    /// Limits for /v1/pool.
    pub limits: Limits,
    /// /v1/config's body.
    pub config: Arc<serde_json::Value>,
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
}

async fn pool(State(s): State<Introspection>) -> Response {
    match s.pool.snapshot(s.limits).await {
        Ok(p) => Json(p).into_response(),
        Err(e) => unavailable(e),
    }
}

/// One prefix in `/v1/enis`.
#[derive(Serialize)]
struct PrefixView {
    cidr: String,
    assigned: u32,
    cooling: u32,
    free: u32,
}

/// One secondary address in `/v1/enis`.
#[derive(Serialize)]
struct IpView {
    address: std::net::Ipv4Addr,
    /// `assigned`, `cooling` or `free`.
    state: &'static str,
}

/// One ENI in `/v1/enis`.
#[derive(Serialize)]
struct EniView {
    id: crate::core::EniId,
    device_index: u32,
    primary: bool,
    prefixes: Vec<PrefixView>,
    secondary_ips: Vec<IpView>,
}

impl From<&EniStock> for EniView {
    fn from(e: &EniStock) -> Self {
        Self {
            id: e.id.clone(),
            device_index: e.device_index,
            primary: e.primary,
            prefixes: e
                .prefixes
                .iter()
                .map(|p| PrefixView {
                    cidr: p.block.to_string(),
                    assigned: p.usage.assigned,
                    cooling: p.usage.cooling,
                    free: p.usage.free,
                })
                .collect(),
            secondary_ips: e
                .secondary_ips
                .iter()
                .map(|a| IpView {
                    address: a.block,
                    state: if a.usage.assigned > 0 {
                        "assigned"
                    } else if a.usage.cooling > 0 {
                        "cooling"
                    } else {
                        "free"
                    },
                })
                .collect(),
        }
    }
}

/// One allocation in `/v1/allocations`.
#[derive(Serialize)]
struct AllocationView {
    key: PodKey,
    address: std::net::IpAddr,
    pod_namespace: String,
    pod_name: String,
    allocated_at_ms: u64,
}

async fn inventory(s: &Introspection) -> Result<Inventory, Response> {
    s.pool.inventory().await.map_err(unavailable)
}

async fn enis(State(s): State<Introspection>) -> Response {
    match inventory(&s).await {
        Ok(v) => Json(v.enis.iter().map(EniView::from).collect::<Vec<_>>()).into_response(),
        Err(r) => r,
    }
}

async fn allocations(State(s): State<Introspection>) -> Response {
    match inventory(&s).await {
        Ok(v) => Json(
            v.allocations
                .into_iter()
                .map(|h| AllocationView {
                    key: h.key,
                    address: h.address,
                    pod_namespace: h.pod.namespace,
                    pod_name: h.pod.name,
                    allocated_at_ms: h.allocated_at.0,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(r) => r,
    }
}

async fn config(State(s): State<Introspection>) -> Response {
    Json((*s.config).clone()).into_response()
}

async fn status(State(s): State<Introspection>) -> Response {
    let mut v = serde_json::to_value(s.status.view()).unwrap_or_default();
    // Pods whose addresses EC2 took back while they live: kept from every other pod.
    v["stranded_allocations"] = s.pool.stranded().into();
    Json(v).into_response()
}

async fn healthz(State(s): State<Introspection>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), s.pool.snapshot(s.limits)).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n").into_response(),
        Ok(Err(e)) => unavailable(e),
        Err(_) => unavailable("the pool owner did not answer within 2 s"),
    }
}

async fn readyz(State(s): State<Introspection>) -> Response {
    match s.status.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => unavailable(format!("not ready: {why}")),
    }
}

/// The introspection router.
pub fn introspection(state: Introspection) -> Router {
    Router::new()
        .route("/v1/pool", get(pool))
        .route("/v1/enis", get(enis))
        .route("/v1/allocations", get(allocations))
        .route("/v1/config", get(config))
        .route("/v1/status", get(status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(m): State<Arc<Metrics>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

/// The metrics router.
pub fn metrics_router(m: Arc<Metrics>) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(m)
}

/// Serves `router` on `listener` until `stop` turns true, bounded ([`super::bounded`]).
pub async fn serve(listener: TcpListener, router: Router, mut stop: watch::Receiver<bool>) {
    let _ = axum::serve(super::bounded::Bounded::new(listener), router)
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await;
}
