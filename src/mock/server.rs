//! The mock's HTTP server: EC2 Query API, IMDSv2 and the admin API on one listener.
//!
//! State sits behind plain mutexes that are never held across an `.await`: each request takes
//! the lock, does its (fast, synchronous) work and lets go before any latency sleep.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::control::{Control, ErrorRateSpec, FaultSpec, Stats};
use super::imds::{self, ImdsState};
use super::model::Model;
use super::scenario::Built;
use super::wire::{Params, error_xml};
use super::{Ec2Error, actions};

/// Everything a request handler needs.
pub struct Shared {
    model: Mutex<Model>,
    control: Mutex<Control>,
    imds: Mutex<ImdsState>,
    names: BTreeMap<String, String>,
    start: Instant,
    requests: AtomicU64,
}

impl Shared {
    fn now_ms(&self, scale: f64) -> u64 {
        (self.start.elapsed().as_secs_f64() * scale * 1000.0) as u64
    }

    fn request_id(&self) -> String {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        format!("00000000-0000-4000-8000-{n:012x}")
    }
}

/// A running mock.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MockServer {
    /// Serves `built` on `listen` (port 0 for an ephemeral one).
    pub async fn start(built: Built, listen: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            model: Mutex::new(built.model),
            control: Mutex::new(built.control),
            imds: Mutex::new(ImdsState::for_instance(built.imds_instance)),
            names: built.names,
            start: Instant::now(),
            requests: AtomicU64::new(0),
        });
        let app = router(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        tracing::info!(%addr, "mock EC2 listening");
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the EC2 endpoint, and IMDS's.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The id behind a scenario name (`node`, `nodes`...).
    pub fn id(&self, name: &str) -> Option<&str> {
        self.shared.names.get(name).map(String::as_str)
    }

    /// Every name → id.
    pub fn names(&self) -> &BTreeMap<String, String> {
        &self.shared.names
    }

    /// Reads or changes the EC2 state directly (tests, the demo's view).
    pub fn with_model<R>(&self, f: impl FnOnce(&mut Model) -> R) -> R {
        f(&mut self.shared.model.lock().expect("model lock"))
    }

    /// Changes throttling, faults or latency directly.
    pub fn with_control<R>(&self, f: impl FnOnce(&mut Control) -> R) -> R {
        f(&mut self.shared.control.lock().expect("control lock"))
    }

    /// Call statistics so far.
    pub fn stats(&self) -> Stats {
        self.with_control(|c| c.stats.clone())
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", post(ec2).get(ec2))
        .route("/latest/api/token", put(imds_token))
        .route("/latest/meta-data", get(imds_root))
        .route("/latest/meta-data/", get(imds_root))
        .route("/latest/meta-data/{*path}", get(imds_get))
        .route("/_mock/stats", get(admin_stats))
        .route("/_mock/names", get(admin_names))
        .route("/_mock/faults", post(admin_fault))
        .route("/_mock/error-rates", post(admin_error_rate))
        .route("/_mock/fragment", post(admin_fragment))
        .route("/_mock/throttling", post(admin_throttling))
        .route("/_mock/latency", post(admin_latency))
        .route("/_mock/imds", post(admin_imds))
        .with_state(shared)
}

fn xml(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
        body,
    )
        .into_response()
}

async fn ec2(State(s): State<Arc<Shared>>, uri: Uri, body: Bytes) -> Response {
    let params = if body.is_empty() {
        Params::parse(uri.query().unwrap_or("").as_bytes())
    } else {
        Params::parse(&body)
    };
    let rid = s.request_id();
    let Some(action) = params.get("Action").map(str::to_owned) else {
        let e = Ec2Error::client(
            "MissingAction",
            "The request must contain the parameter Action",
        );
        return xml(e.status, error_xml(&e, &rid));
    };
    let unfiltered = (action.starts_with("Describe") || action.starts_with("Get"))
        && params.get("MaxResults").is_none()
        && params.filters().map(|f| f.is_empty()).unwrap_or(true)
        && [
            "NetworkInterfaceId.1",
            "InstanceId.1",
            "SubnetId.1",
            "InstanceType.1",
        ]
        .iter()
        .all(|k| params.get(k).is_none());
    let admitted =
        s.control
            .lock()
            .expect("control lock")
            .admit(&action, unfiltered, Instant::now());
    let delay = match admitted {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(action, code = %e.code, "mock EC2 call refused");
            return xml(e.status, error_xml(&e, &rid));
        }
    };
    if delay > Duration::ZERO {
        tokio::time::sleep(delay).await;
    }
    let scale = s.control.lock().expect("control lock").time_scale;
    let now_ms = s.now_ms(scale);
    let result = {
        let mut m = s.model.lock().expect("model lock");
        actions::handle(&mut m, &action, &params, now_ms, &rid)
    };
    match result {
        Ok(body) => {
            tracing::debug!(action, "mock EC2 call answered");
            xml(200, body)
        }
        Err(e) => {
            s.control
                .lock()
                .expect("control lock")
                .count_error(&action, &e.code);
            tracing::debug!(action, code = %e.code, message = %e.message, "mock EC2 call failed");
            xml(e.status, error_xml(&e, &rid))
        }
    }
}

fn text(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

async fn imds_token(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let ttl = headers
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok());
    let (status, body) = s.imds.lock().expect("imds lock").issue(ttl, Instant::now());
    let mut r = text(status, body);
    if status == 200
        && let Some(v) = ttl.and_then(|t| t.parse().ok())
    {
        r.headers_mut()
            .insert("x-aws-ec2-metadata-token-ttl-seconds", v);
    }
    r
}

fn imds_answer(s: &Shared, headers: &HeaderMap, path: &str) -> Response {
    let token = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok());
    let instance = {
        let st = s.imds.lock().expect("imds lock");
        if !st.valid(token, Instant::now()) {
            return text(401, "Unauthorized".into());
        }
        st.instance.clone()
    };
    let Some(instance) = instance else {
        return text(404, "no instance is bound to this IMDS".into());
    };
    let (status, body) = imds::metadata(&s.model.lock().expect("model lock"), &instance, path);
    text(status, body)
}

async fn imds_root(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    imds_answer(&s, &headers, "")
}

async fn imds_get(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Response {
    imds_answer(&s, &headers, &path)
}

fn bad(msg: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": msg.into() })),
    )
        .into_response()
}

/// `Some(error response)` when `action` is not one the mock implements.
fn check_action(action: &str) -> Option<Response> {
    (!actions::ACTIONS.contains(&action))
        .then(|| bad(format!("{action:?} is not an action the mock implements")))
}

async fn admin_stats(State(s): State<Arc<Shared>>) -> Response {
    Json(s.control.lock().expect("control lock").stats.clone()).into_response()
}

async fn admin_names(State(s): State<Arc<Shared>>) -> Response {
    Json(s.names.clone()).into_response()
}

async fn admin_fault(State(s): State<Arc<Shared>>, Json(f): Json<FaultSpec>) -> Response {
    if let Some(r) = check_action(&f.action) {
        return r;
    }
    if f.fail_next == 0 || f.code.is_empty() {
        return bad("fail_next must be at least 1 and code an EC2 error code");
    }
    s.control.lock().expect("control lock").add_fault(f);
    Json(serde_json::json!({"ok": true})).into_response()
}

async fn admin_error_rate(State(s): State<Arc<Shared>>, Json(r): Json<ErrorRateSpec>) -> Response {
    if let Some(resp) = check_action(&r.action) {
        return resp;
    }
    if !(0.0..=1.0).contains(&r.rate) {
        return bad("rate must be from 0 to 1");
    }
    s.control.lock().expect("control lock").set_error_rate(r);
    Json(serde_json::json!({"ok": true})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FragmentReq {
    subnet: String,
}

async fn admin_fragment(State(s): State<Arc<Shared>>, Json(r): Json<FragmentReq>) -> Response {
    let id = s.names.get(&r.subnet).cloned().unwrap_or(r.subnet);
    match s.model.lock().expect("model lock").fragment_subnet(&id) {
        Ok(n) => Json(serde_json::json!({ "subnet": id, "scattered": n })).into_response(),
        Err(e) => bad(e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThrottlingReq {
    enabled: bool,
    #[serde(default)]
    time_scale: Option<f64>,
}

async fn admin_throttling(State(s): State<Arc<Shared>>, Json(r): Json<ThrottlingReq>) -> Response {
    let mut c = s.control.lock().expect("control lock");
    if let Some(t) = r.time_scale {
        if !(t > 0.0 && t.is_finite()) {
            return bad("time_scale must be a positive number");
        }
        c.time_scale = t;
    }
    c.throttling = r.enabled;
    Json(serde_json::json!({"ok": true})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyReq {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    attach: bool,
    delay: String,
}

async fn admin_latency(State(s): State<Arc<Shared>>, Json(r): Json<LatencyReq>) -> Response {
    let d = match crate::core::config::parse_duration("delay", &r.delay) {
        Ok(d) => d,
        Err(e) => return bad(e.to_string()),
    };
    if r.attach {
        s.model.lock().expect("model lock").attach_delay_ms = d.as_millis() as u64;
    } else if let Some(a) = r.action {
        if let Some(resp) = check_action(&a) {
            return resp;
        }
        s.control.lock().expect("control lock").latency.insert(a, d);
    } else {
        return bad("give an action, or attach: true");
    }
    Json(serde_json::json!({"ok": true})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImdsReq {
    instance: String,
}

async fn admin_imds(State(s): State<Arc<Shared>>, Json(r): Json<ImdsReq>) -> Response {
    let id = s.names.get(&r.instance).cloned().unwrap_or(r.instance);
    if !s
        .model
        .lock()
        .expect("model lock")
        .instances
        .contains_key(&id)
    {
        return bad(format!("no instance {id}"));
    }
    s.imds.lock().expect("imds lock").instance = Some(id.clone());
    Json(serde_json::json!({ "instance": id })).into_response()
}
