#![allow(dead_code)]
//! What the measurement examples share: the release `prefixd` agent started as its own process
//! against a mock EC2 endpoint (on loopback, or inside an emulated instance's namespace),
//! waited for until ready.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A release-built binary next to the running example (target/release/NAME).
pub fn release_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        bin.exists(),
        "build it first: cargo build --release ({} missing)",
        bin.display()
    );
    bin
}

/// Whether an ELF executable has no program interpreter (static or static-pie).
pub fn is_static(bin: &Path) -> bool {
    let b = std::fs::read(bin).unwrap();
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..count).all(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) != PT_INTERP
    })
}

fn ready(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = write!(
        s,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// Starts `prefixd agent` for `node` against `endpoint`, with its files in `dir` and `extra`
/// env vars; returns once /readyz answers 200. The socket is `dir/agent.sock`.
pub async fn start_agent(endpoint: &str, node: &str, dir: &Path, extra: &[(&str, &str)]) -> Child {
    let intro: SocketAddr = format!(
        "127.0.0.1:{}",
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    )
    .parse()
    .unwrap();
    let child = Command::new(release_bin("prefixd"))
        .arg("agent")
        .env("INSTANCE_ID", node)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", "us-west-2")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("CHECKPOINT_PATH", dir.join("checkpoint.json"))
        .env("SOCKET_PATH", dir.join("agent.sock"))
        .env("INTROSPECTION_BIND_ADDRESS", intro.to_string())
        .env("METRICS_BIND_ADDRESS", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        // On this machine's own namespace: its network is never touched.
        .env("ENABLE_HOST_NETWORKING", "false")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    while !ready(intro) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// Starts `prefixd agent` inside `netns`, an emulated instance's namespace: it finds itself
/// through that instance's IMDS, reaches EC2 at `endpoint` (the mock's, inside the namespace)
/// and programs the namespace as its node. Returns once /readyz answers 200.
pub async fn start_node_agent(
    netns: &str,
    endpoint: &str,
    dir: &Path,
    extra: &[(&str, &str)],
) -> Child {
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg(release_bin("prefixd"))
        .arg("agent")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", "us-west-2")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("CHECKPOINT_PATH", dir.join("checkpoint.json"))
        .env("SOCKET_PATH", dir.join("agent.sock"))
        .env("INTROSPECTION_BIND_ADDRESS", "127.0.0.1:61679")
        .env("METRICS_BIND_ADDRESS", "127.0.0.1:61678")
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ns = prefixd::hostnet::netns::NetNs::named(netns).unwrap();
    while !ns
        .run(|| ready("127.0.0.1:61679".parse().unwrap()))
        .unwrap()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// SIGTERM, then wait.
pub fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
