//! The mock's HTTP server: EC2 Query API, IMDSv2 and the admin API on one listener, all on one
//! [`Account`] (whose call path every EC2 request takes).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;

/// Longest latency or attach delay the mock accepts (a bigger one is a typo, and its
/// arithmetic must not overflow).
pub const MAX_MOCK_DELAY: std::time::Duration = std::time::Duration::from_secs(3600);
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::account::Account;
use super::control::{Control, ErrorRateSpec, FaultSpec, Stats};
use super::imds::{self, ImdsState};
use super::model::Model;
use super::scenario::Built;
use super::wire::{Params, error_xml};
use super::{ApiError, actions};
use crate::ec2::Action;

/// Everything a request handler needs.
pub struct Shared {
    account: Arc<Account>,
    imds: Mutex<ImdsState>,
    names: BTreeMap<String, String>,
    requests: AtomicU64,
    dataplane: std::sync::OnceLock<Arc<super::vpc::Dataplane>>,
}

impl Shared {
    fn request_id(&self) -> String {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        format!("00000000-0000-4000-8000-{n:012x}")
    }
}

/// A running mock.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl MockServer {
    /// Serves `built` on `listen` (port 0 for an ephemeral one).
    pub async fn start(built: Built, listen: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        Self::serve(
            vec![listener],
            Arc::new(Account::new(built.model, built.control)),
            built.names,
            built.imds_instance,
        )
    }

    /// Serves `account` on bound listeners (the first is the endpoint), with IMDS for
    /// `imds_instance`. Several servers may share one account: the emulated VPC runs one inside
    /// each instance's namespace.
    pub fn serve(
        listeners: Vec<TcpListener>,
        account: Arc<Account>,
        names: BTreeMap<String, String>,
        imds_instance: Option<String>,
    ) -> std::io::Result<Self> {
        let addr = listeners
            .first()
            .ok_or_else(|| std::io::Error::other("no listener"))?
            .local_addr()?;
        let shared = Arc::new(Shared {
            account,
            imds: Mutex::new(ImdsState::for_instance(imds_instance)),
            names,
            requests: AtomicU64::new(0),
            dataplane: std::sync::OnceLock::new(),
        });
        let app = router(shared.clone());
        let (stop, stopped) = watch::channel(false);
        let tasks = listeners
            .into_iter()
            .map(|l| {
                let (app, mut stopped) = (app.clone(), stopped.clone());
                tokio::spawn(async move {
                    let _ = axum::serve(l, app)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.changed().await;
                        })
                        .await;
                })
            })
            .collect();
        tracing::info!(%addr, "mock EC2 listening");
        Ok(Self {
            addr,
            shared,
            stop,
            tasks,
        })
    }

    /// Serves `dataplane`'s topology and drops at `GET /_mock/dataplane`.
    pub fn set_dataplane(&self, dataplane: Arc<super::vpc::Dataplane>) {
        let _ = self.shared.dataplane.set(dataplane);
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

    /// The account it serves.
    pub fn account(&self) -> &Arc<Account> {
        &self.shared.account
    }

    /// Reads or changes the EC2 state directly (tests, the demo's view).
    pub fn with_model<R>(&self, f: impl FnOnce(&mut Model) -> R) -> R {
        self.shared.account.with_model(f)
    }

    /// Changes throttling, faults or latency directly.
    pub fn with_control<R>(&self, f: impl FnOnce(&mut Control) -> R) -> R {
        self.shared.account.with_control(f)
    }

    /// Call statistics so far.
    pub fn stats(&self) -> Stats {
        self.shared.account.stats()
    }

    /// Stops serving and waits for the server tasks.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
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
        .route("/_mock/dataplane", get(admin_dataplane))
        .route("/_mock/iam", post(admin_iam))
        .route("/_mock/accounts", post(admin_accounts))
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

/// The access key id a SigV4-signed request names (`Credential=AKID/date/region/…`).
fn access_key(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let cred = auth.split_once("Credential=")?.1;
    Some(cred.split('/').next()?.to_owned())
}

async fn ec2(State(s): State<Arc<Shared>>, headers: HeaderMap, uri: Uri, body: Bytes) -> Response {
    let params = if body.is_empty() {
        Params::parse(uri.query().unwrap_or("").as_bytes())
    } else {
        Params::parse(&body)
    };
    let rid = s.request_id();
    let fail = |e: ApiError| xml(e.status, error_xml(&e, &rid));
    let Some(name) = params.get("Action") else {
        return fail(ApiError::client(
            "MissingAction",
            "The request must contain the parameter Action",
        ));
    };
    let action = match name.parse::<Action>() {
        Ok(a) if actions::ACTIONS.contains(&a) => a,
        _ => {
            return fail(ApiError::client(
                "InvalidAction",
                format!("The action {name} is not valid for this web service."),
            ));
        }
    };
    let unfiltered = !action.is_mutating()
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
    let key = access_key(&headers);
    let answer = s
        .account
        .call(action, unfiltered, |m, now_ms| {
            let caller = m.account_of_key(key.as_deref()).to_owned();
            actions::handle(m, &caller, action, &params, now_ms, &rid)
        })
        .await;
    match answer {
        Ok(body) => {
            tracing::debug!(%action, "mock EC2 call answered");
            xml(200, body)
        }
        Err(e) => {
            tracing::debug!(%action, code = %e.code, message = %e.message, "mock EC2 call failed");
            fail(e)
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
    let (status, body) = s.account.read(|m| imds::metadata(m, &instance, path));
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
fn check_action(action: Action) -> Option<Response> {
    (!actions::ACTIONS.contains(&action))
        .then(|| bad(format!("{action} is not an action the mock implements")))
}

/// An admin request's JSON body; a bad one is a 400 that says what is wrong (an unknown action
/// names itself).
fn admin_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| Box::new(bad(format!("bad request body: {e}"))))
}

async fn admin_dataplane(State(s): State<Arc<Shared>>) -> Response {
    match s.dataplane.get() {
        Some(d) => Json(d.report().await).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "no data plane: start the mock with --dataplane" })),
        )
            .into_response(),
    }
}

async fn admin_stats(State(s): State<Arc<Shared>>) -> Response {
    Json(s.account.stats()).into_response()
}

async fn admin_names(State(s): State<Arc<Shared>>) -> Response {
    Json(s.names.clone()).into_response()
}

async fn admin_fault(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let f: FaultSpec = match admin_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if let Some(r) = check_action(f.action) {
        return r;
    }
    if f.fail_next == 0 || f.code.is_empty() {
        return bad("fail_next must be at least 1 and code an EC2 error code");
    }
    s.account.with_control(|c| c.add_fault(f));
    Json(serde_json::json!({"ok": true})).into_response()
}

async fn admin_error_rate(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let r: ErrorRateSpec = match admin_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if let Some(resp) = check_action(r.action) {
        return resp;
    }
    if !(0.0..=1.0).contains(&r.rate) {
        return bad("rate must be from 0 to 1");
    }
    s.account.with_control(|c| c.set_error_rate(r));
    Json(serde_json::json!({"ok": true})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FragmentReq {
    subnet: String,
}

async fn admin_fragment(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let r: FragmentReq = match admin_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let id = s.names.get(&r.subnet).cloned().unwrap_or(r.subnet);
    match s.account.with_model(|m| m.fragment_subnet(&id)) {
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

async fn admin_throttling(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let r: ThrottlingReq = match admin_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if r.time_scale.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
        return bad("time_scale must be a positive number");
    }
    s.account.with_control(|c| {
        if let Some(t) = r.time_scale {
            c.time_scale = t;
        }
        c.throttling = r.enabled;
    });
    Json(serde_json::json!({"ok": true})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyReq {
    #[serde(default)]
    action: Option<Action>,
    #[serde(default)]
    attach: bool,
    delay: String,
}

async fn admin_latency(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let r: LatencyReq = match admin_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let d = match crate::core::config::parse_duration("delay", &r.delay) {
        Ok(d) => d,
        Err(e) => return bad(e.to_string()),
    };
    if d > MAX_MOCK_DELAY {
        return bad(format!("delay {:?} is longer than the mock allows (1h)", d));
    }
    if r.attach {
        s.account
            .with_model(|m| m.attach_delay_ms = d.as_millis() as u64);
    } else if let Some(a) = r.action {
        if let Some(resp) = check_action(a) {
            return resp;
        }
        s.account.with_control(|c| c.latency.insert(a, d));
    } else {
        return bad("give an action, or attach: true");
    }
    Json(serde_json::json!({"ok": true})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IamReq {
    /// An IAM policy document, or null to allow everything again.
    policy: Option<serde_json::Value>,
}

async fn admin_iam(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let r: IamReq = match admin_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let policy = match r.policy.as_ref().map(super::iam::Policy::parse).transpose() {
        Ok(p) => p,
        Err(e) => return bad(e.to_string()),
    };
    s.account.with_control(|c| c.iam = policy);
    Json(serde_json::json!({"ok": true})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountReq {
    access_key: String,
    account: String,
}

async fn admin_accounts(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let r: AccountReq = match admin_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if r.account.len() != 12 || !r.account.bytes().all(|b| b.is_ascii_digit()) {
        return bad("account must be a 12-digit AWS account id");
    }
    if r.access_key.is_empty() {
        return bad("access_key must not be empty");
    }
    s.account
        .with_model(|m| m.access_keys.insert(r.access_key, r.account));
    Json(serde_json::json!({"ok": true})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImdsReq {
    instance: String,
}

async fn admin_imds(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let r: ImdsReq = match admin_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let id = s.names.get(&r.instance).cloned().unwrap_or(r.instance);
    if !s.account.read(|m| m.instances.contains_key(&id)) {
        return bad(format!("no instance {id}"));
    }
    s.imds.lock().expect("imds lock").instance = Some(id.clone());
    Json(serde_json::json!({ "instance": id })).into_response()
}
