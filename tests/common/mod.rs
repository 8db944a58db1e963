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
