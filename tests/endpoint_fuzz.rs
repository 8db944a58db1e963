//! Fuzzing the agent's two doors with what a broken or hostile local client sends: random and
//! mutated requests on the plugin socket, random request lines, headers and bodies on the HTTP
//! endpoints. The agent must answer each with a well-formed reply or close the connection, and
//! stay healthy and ready throughout; a valid request after the storm must still work (the
//! negative control: the checks can see an agent that stopped serving).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const NODE: &str = r#"{
  "vpcs": [{ "cidr": "10.0.0.0/16", "subnets": [{ "name": "nodes", "cidr": "10.0.0.0/20" }] }],
  "instances": [{ "name": "node", "type": "m5.large", "subnet": "nodes" }]
}"#;

/// Requests close to valid ones, so that the fuzzer reaches past the JSON parser.
fn socket_input() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop_oneof![
        Just(r#"{"v":1,"op":"add","key":{"network":"net","container_id":"c","ifname":"eth0"},"timeout_ms":10}"#.to_owned()),
        Just(r#"{"v":1,"op":"del","key":{"network":"net","container_id":"c","ifname":"eth0"}}"#.to_owned()),
        Just(r#"{"v":1,"op":"check","key":{"network":"net","container_id":"c","ifname":"eth0"}}"#.to_owned()),
        Just(r#"{"v":1,"op":"gc","network":"net","keep":[]}"#.to_owned()),
        Just(r#"{"v":1,"op":"status"}"#.to_owned()),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        (valid.clone(), any::<usize>(), any::<u8>()).prop_map(|(v, at, b)| {
            let mut bytes = v.into_bytes();
            let i = at % bytes.len();
            bytes[i] = b;
            bytes.push(b'\n');
            bytes
        }),
        (valid, any::<usize>()).prop_map(|(v, at)| {
            let mut bytes = v.into_bytes();
            bytes.truncate(at % (bytes.len() + 1));
            bytes
        }),
        "[a-z\"{}:,0-9 ]{0,200}\n".prop_map(String::into_bytes),
    ]
}

fn http_input() -> impl Strategy<Value = Vec<u8>> {
    let path = prop_oneof![
        Just("/v1/pool".to_owned()),
        Just("/v1/enis".to_owned()),
        Just("/v1/allocations".to_owned()),
        Just("/v1/status".to_owned()),
        Just("/readyz".to_owned()),
        Just("/metrics".to_owned()),
        "/[a-z0-9/%?=&.]{0,80}",
    ];
    let method = prop_oneof![Just("GET"), Just("POST"), Just("DELETE"), Just("G\u{0}T"),];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        (method, path, "[ -~]{0,100}", prop::collection::vec(any::<u8>(), 0..100)).prop_map(
            |(m, p, h, body)| {
                let mut b = format!(
                    "{m} {p} HTTP/1.1\r\nHost: x\r\nX-Fuzz: {h}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                b.extend(body);
                b
            }
        ),
    ]
}

fn socket_exchange(path: &std::path::Path, input: &[u8]) -> Result<(), TestCaseError> {
    let mut s =
        UnixStream::connect(path).map_err(|e| TestCaseError::fail(format!("connect: {e}")))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(input);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    if !out.is_empty() {
        let r: Result<prefixd::ipc::Reply, _> = serde_json::from_slice(&out);
        prop_assert!(
            r.is_ok(),
            "not a reply: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    Ok(())
}

fn http_exchange(addr: SocketAddr, input: &[u8]) -> Result<(), TestCaseError> {
    let mut s =
        TcpStream::connect(addr).map_err(|e| TestCaseError::fail(format!("connect: {e}")))?;
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(input);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    if !out.is_empty() {
        prop_assert!(
            out.starts_with(b"HTTP/1."),
            "not HTTP: {:?}",
            String::from_utf8_lossy(&out)
        );
        let code = std::str::from_utf8(&out[9..12]).unwrap_or("").to_owned();
        prop_assert!(code != "500", "a 500: {:?}", String::from_utf8_lossy(&out));
    }
    Ok(())
}

#[test]
fn the_socket_and_the_http_endpoints_survive_fuzzing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mock, a) = rt.block_on(async {
        let mock = common::start_mock(NODE).await;
        let node = mock.id("node").unwrap().to_owned();
        let a = common::start_agent(&mock, &node, &[]).await;
        (mock, a)
    });
    let socket = a.socket.clone();
    let http = a.agent.introspection_addr();
    let metrics = a.agent.metrics_addr();
    let mut runner = TestRunner::new(Config {
        cases: 300,
        ..Config::default()
    });
    runner
        .run(&socket_input(), |input| socket_exchange(&socket, &input))
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 300,
        ..Config::default()
    });
    runner
        .run(&http_input(), |input| {
            http_exchange(http, &input)?;
            http_exchange(metrics, &input)
        })
        .unwrap();
    // Still healthy, ready, and serving real requests.
    let (code, body) = common::http(http, "GET", "/readyz", &[], "");
    assert_eq!(code, 200, "{body}");
    let (code, _) = common::http(http, "GET", "/healthz", &[], "");
    assert_eq!(code, 200);
    let r = rt.block_on(common::add(&socket, "after", 5_000));
    assert!(r.address.is_some(), "{r:?}");
    rt.block_on(async {
        a.agent.shutdown().await.unwrap();
        drop(mock);
    });
}
