//! Helpers shared by the black-box tests: the mock EC2 on an ephemeral loopback port, a real
//! aws-sdk-ec2 client pointed at it, and raw HTTP for what no SDK sends.
#![allow(dead_code)]

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
    pub agent: prefixd::agent::AgentHandle,
    pub socket: std::path::PathBuf,
    pub dir: tempfile::TempDir,
}

/// Starts `prefixd agent`'s machinery in-process. `args` are extra agent flags.
pub async fn start_agent(mock: &MockServer, instance: &str, args: &[&str]) -> TestAgent {
    start_agent_in(mock, instance, args, tempfile::tempdir().unwrap(), 1).await
}

/// As [`start_agent`], in a given directory and with SDK retries set to `attempts`.
pub async fn start_agent_in(
    mock: &MockServer,
    instance: &str,
    args: &[&str],
    dir: tempfile::TempDir,
    attempts: u32,
) -> TestAgent {
    start_agent_full(&mock.endpoint(), instance, args, dir, attempts, true).await
}

/// The agent against any EC2 endpoint (LocalStack), ready.
pub async fn start_agent_at(endpoint: &str, instance: &str, args: &[&str]) -> TestAgent {
    start_agent_full(
        endpoint,
        instance,
        args,
        tempfile::tempdir().unwrap(),
        3,
        true,
    )
    .await
}

/// The agent against any EC2 endpoint, without waiting for readiness.
pub async fn start_agent_at_unready(endpoint: &str, instance: &str, args: &[&str]) -> TestAgent {
    start_agent_full(
        endpoint,
        instance,
        args,
        tempfile::tempdir().unwrap(),
        3,
        false,
    )
    .await
}

async fn start_agent_full(
    endpoint: &str,
    instance: &str,
    args: &[&str],
    dir: tempfile::TempDir,
    attempts: u32,
    wait: bool,
) -> TestAgent {
    use clap::Parser;
    #[derive(Parser)]
    struct A {
        #[command(flatten)]
        a: prefixd::agent::config::AgentArgs,
    }
    let socket = dir.path().join("agent.sock");
    let cp = dir.path().join("checkpoint.json");
    let mut argv: Vec<String> = vec![
        "agent".into(),
        "--instance-id".into(),
        instance.into(),
        "--checkpoint-path".into(),
        cp.display().to_string(),
        "--socket-path".into(),
        socket.display().to_string(),
        "--introspection-bind-address".into(),
        "127.0.0.1:0".into(),
        "--metrics-bind-address".into(),
        "127.0.0.1:0".into(),
        "--pool-tick".into(),
        "100ms".into(),
    ];
    if !args.contains(&"--ec2-api-qps") {
        argv.extend(["--ec2-api-qps".into(), "100".into()]);
    }
    argv.extend(args.iter().map(|s| s.to_string()));
    let cfg = A::try_parse_from(&argv).unwrap().a.to_config().unwrap();
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
        prefixd::ec2::limiter::Limiter::new(cfg.ec2_api_qps, cfg.ec2_api_burst),
        metrics.clone(),
    );
    let agent = prefixd::agent::start(cfg, ec2, instance.parse().unwrap(), metrics)
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
            prefixd::ipc::Op::Del { key },
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
