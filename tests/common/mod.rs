//! Helpers shared by the black-box tests: the mock EC2 on an ephemeral loopback port, a real
//! aws-sdk-ec2 client pointed at it, and raw HTTP for what no SDK sends.
#![allow(dead_code)]

pub mod awscli;
pub mod containerd;
pub mod node;
pub mod reports;
pub mod vpc;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use prefixd::mock::{MockServer, Scenario};

/// Starts the mock with a scenario given as JSON.
pub async fn start_mock(scenario_json: &str) -> MockServer {
    let built = Scenario::parse(scenario_json, "test")
        .unwrap()
        .build("test")
        .unwrap();
    MockServer::start(built, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// The real SDK client against `endpoint`, with the SDK's retries off so that every error
/// reaches the test.
pub fn sdk_client(endpoint: &str) -> aws_sdk_ec2::Client {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-west-2"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

/// One HTTP/1.1 request over a fresh connection; returns (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status: u16 = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Runs `http` off the async runtime.
pub async fn http_async(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    headers: Vec<(&'static str, String)>,
    body: String,
) -> (u16, String) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http(addr, method, &path, &h, &body)
    })
    .await
    .unwrap()
}

/// An agent running in this process against a mock, over HTTP through the real SDK.
pub struct TestAgent {
    pub agent: prefixd::agent::Agent,
    pub socket: std::path::PathBuf,
    pub dir: tempfile::TempDir,
}

/// Starts `prefixd agent`'s machinery in-process. `settings` are env var names and values.
pub async fn start_agent(
    mock: &MockServer,
    instance: &str,
    settings: &[(&str, &str)],
) -> TestAgent {
    start_agent_in(mock, instance, settings, tempfile::tempdir().unwrap(), 1).await
}

/// As [`start_agent`], in a given directory and with SDK retries set to `attempts`.
pub async fn start_agent_in(
    mock: &MockServer,
    instance: &str,
    settings: &[(&str, &str)],
    dir: tempfile::TempDir,
    attempts: u32,
) -> TestAgent {
    start_agent_full(&mock.endpoint(), instance, settings, dir, attempts, true).await
}

/// The agent against any EC2 endpoint (LocalStack), ready.
pub async fn start_agent_at(
    endpoint: &str,
    instance: &str,
    settings: &[(&str, &str)],
) -> TestAgent {
    start_agent_full(
        endpoint,
        instance,
        settings,
        tempfile::tempdir().unwrap(),
        3,
        true,
    )
    .await
}

/// The agent against any EC2 endpoint, without waiting for readiness.
pub async fn start_agent_at_unready(
    endpoint: &str,
    instance: &str,
    settings: &[(&str, &str)],
) -> TestAgent {
    start_agent_full(
        endpoint,
        instance,
        settings,
        tempfile::tempdir().unwrap(),
        3,
        false,
    )
    .await
}

async fn start_agent_full(
    endpoint: &str,
    instance: &str,
    settings: &[(&str, &str)],
    dir: tempfile::TempDir,
    attempts: u32,
    wait: bool,
) -> TestAgent {
    let socket = dir.path().join("agent.sock");
    let cp = dir.path().join("checkpoint.json");
    let (socket_s, cp_s) = (socket.display().to_string(), cp.display().to_string());
    let mut pairs: Vec<(&str, &str)> = vec![
        ("CHECKPOINT_PATH", &cp_s),
        ("SOCKET_PATH", &socket_s),
        ("INTROSPECTION_BIND_ADDRESS", "127.0.0.1:0"),
        ("METRICS_BIND_ADDRESS", "127.0.0.1:0"),
        ("POOL_TICK", "100ms"),
        ("EC2_API_QPS", "100"),
        // In the test's own process: the host's network is never touched. The data plane is
        // tested with the agent in an emulated instance's namespace (tests/pod_network.rs).
        ("ENABLE_HOST_NETWORKING", "false"),
    ];
    pairs.extend_from_slice(settings);
    let cfg = prefixd::agent::config::AgentConfig::with(pairs).unwrap();
    let metrics = std::sync::Arc::new(prefixd::metrics::Metrics::new());
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-west-2"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .retry_config(
            aws_sdk_ec2::config::retry::RetryConfig::standard().with_max_attempts(attempts),
        )
        .build();
    let ec2 = prefixd::ec2::sdk::SdkEc2::new(
        aws_sdk_ec2::Client::from_conf(conf),
        cfg.limiter.limiter(),
        metrics.clone(),
    );
    let agent = prefixd::agent::AgentBuilder::new(cfg, ec2, instance.parse().unwrap())
        .metrics(metrics)
        .start()
        .await
        .unwrap();
    if wait {
        agent
            .wait_ready(std::time::Duration::from_secs(20))
            .await
            .unwrap();
    }
    TestAgent { agent, socket, dir }
}

/// An agent on tokio's paused clock (run it in `#[tokio::test(start_paused = true)]`): the
/// mock's account reached directly (no HTTP), the pool inline and in memory, no socket or HTTP.
/// ADDs and DELs go through `agent.pool`. Timers — cooldowns, RELEASE_DELAY, backoff, the
/// limiter — run on virtual time, so these tests are exact and take no real time waiting.
pub struct PausedAgent {
    pub agent: prefixd::agent::Agent,
    pub account: std::sync::Arc<prefixd::mock::Account>,
    pub names: std::collections::BTreeMap<String, String>,
}

impl PausedAgent {
    pub fn id(&self, name: &str) -> String {
        self.names[name].clone()
    }

    pub fn stats(&self) -> prefixd::mock::control::Stats {
        self.account.stats()
    }

    /// An ADD as the plugin makes it.
    pub async fn add(
        &self,
        container: &str,
        timeout_ms: u64,
    ) -> Result<std::net::Ipv4Addr, prefixd::agent::pool::PoolError> {
        let key = prefixd::core::PodKey::new("net", container, "eth0").unwrap();
        self.agent
            .pool
            .allocate(
                key,
                prefixd::core::PodInfo::default(),
                std::time::Duration::from_millis(timeout_ms),
            )
            .await
            .map(|l| l.address.expect("an IPv4 node gives an IPv4 address"))
    }

    /// A DEL: whether the key held an address.
    pub async fn del(&self, container: &str) -> bool {
        let key = prefixd::core::PodKey::new("net", container, "eth0").unwrap();
        self.agent.pool.release(key).await.unwrap().is_some()
    }

    /// Waits (on virtual time) until `f` holds, at most `secs`.
    pub async fn until(&self, secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        while tokio::time::Instant::now() < deadline {
            if f().await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("not within {secs} s of virtual time: {what}");
    }
}

/// The agent for the scenario's instance `node`, on paused time, with `settings` (env names).
pub async fn paused_agent(scenario: &str, settings: &[(&str, &str)]) -> PausedAgent {
    let built = Scenario::parse(scenario, "test")
        .unwrap()
        .build("test")
        .unwrap();
    let names = built.names.clone();
    let account = std::sync::Arc::new(prefixd::mock::Account::new(built.model, built.control));
    let mut pairs = vec![("POOL_TICK", "100ms"), ("EC2_API_QPS", "100")];
    pairs.extend_from_slice(settings);
    let cfg = prefixd::agent::config::AgentConfig::with(pairs).unwrap();
    let ec2 = prefixd::mock::DirectEc2::new(
        account.clone(),
        Some(cfg.limiter.limiter()),
        prefixd::ec2::RetryPolicy::AGENT,
        1,
    );
    let agent = prefixd::agent::AgentBuilder::new(cfg, ec2, names["node"].parse().unwrap())
        .pool(prefixd::agent::PoolMode::Inline)
        .headless()
        .start()
        .await
        .unwrap();
    agent.resynced().await;
    PausedAgent {
        agent,
        account,
        names,
    }
}

/// ADD through the socket, as the plugin does (blocking client on a blocking thread).
pub async fn add(
    socket: &std::path::Path,
    container: &str,
    timeout_ms: u64,
) -> prefixd::ipc::Reply {
    let socket = socket.to_owned();
    let key = prefixd::core::PodKey::new("net", container, "eth0").unwrap();
    tokio::task::spawn_blocking(move || {
        prefixd::ipc::call(
            &socket,
            prefixd::ipc::Op::Add {
                key,
                pod_namespace: "default".into(),
                pod_name: "p".into(),
                timeout_ms,
            },
            std::time::Duration::from_millis(timeout_ms + 5_000),
        )
        .unwrap()
    })
    .await
    .unwrap()
}

/// DEL through the socket.
pub async fn del(socket: &std::path::Path, container: &str) -> prefixd::ipc::Reply {
    let socket = socket.to_owned();
    let key = prefixd::core::PodKey::new("net", container, "eth0").unwrap();
    tokio::task::spawn_blocking(move || {
        prefixd::ipc::call(
            &socket,
            prefixd::ipc::Op::Del { key, unlink: None },
            std::time::Duration::from_secs(5),
        )
        .unwrap()
    })
    .await
    .unwrap()
}

/// Polls `f` every 50 ms until it is true or `secs` pass.
pub async fn eventually(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out after {secs} s waiting for: {what}");
}
