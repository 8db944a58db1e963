//! The agent as a hostile or unlucky world meets it: a second agent on the same files, pods
//! that go away while their ADD waits, SIGTERM with ADDs waiting, a full node's GC, a
//! checkpoint that cannot be written, a socket removed from under the agent. Each test would
//! fail on the agent before these paths were closed; each has its negative control.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{add, del, eventually, http_async, start_agent, start_agent_in, start_mock};
use prefixd::core::{Change, PodKey, Prefix28};
use prefixd::ipc::{ErrorKind, Op};

const NODE: &str = r#"{
  "vpcs": [{ "cidr": "10.0.0.0/16", "subnets": [{ "name": "nodes", "cidr": "10.0.0.0/20" }] }],
  "instances": [{ "name": "node", "type": "m5.large", "subnet": "nodes" }]
}"#;

/// An agent that never grows its pool by itself: addresses come only from
/// [`give_prefix`], so an ADD waits for as long as the test wants.
const FROZEN: &[(&str, &str)] = &[("DISABLE_NETWORK_RESOURCE_PROVISIONING", "true")];

async fn give_prefix(a: &prefixd::agent::Agent, cidr: &str) {
    let inv = a.pool.inventory().await.unwrap();
    let eni = inv.enis.iter().find(|e| e.primary).unwrap().id.clone();
    let prefix: Prefix28 = cidr.parse().unwrap();
    let r = a
        .pool
        .apply(vec![Change::AddPrefix { eni, prefix }])
        .await
        .unwrap();
    assert!(r.iter().all(|x| x.is_ok()), "{r:?}");
}

async fn held(a: &prefixd::agent::Agent) -> Vec<Ipv4Addr> {
    let inv = a.pool.inventory().await.unwrap();
    inv.allocations
        .iter()
        .filter_map(|h| match h.address {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(_) => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_files_is_refused_and_the_first_keeps_serving() {
    let mock = start_mock(NODE).await;
    let node = mock.id("node").unwrap().to_owned();
    let first = start_agent(&mock, &node, &[]).await;
    let dir = first.dir.path().to_owned();
    let socket = first.socket.clone();
    let r = add(&socket, "a", 5_000).await;
    assert!(r.error.is_none(), "{r:?}");
    // Same checkpoint and socket: refused at start, naming the file and the holder.
    let cfg = prefixd::agent::config::AgentConfig::with([
        (
            "CHECKPOINT_PATH",
            dir.join("checkpoint.json").to_str().unwrap(),
        ),
        ("SOCKET_PATH", socket.to_str().unwrap()),
        ("INTROSPECTION_BIND_ADDRESS", "127.0.0.1:0"),
        ("METRICS_BIND_ADDRESS", "127.0.0.1:0"),
        ("ENABLE_HOST_NETWORKING", "false"),
    ])
    .unwrap();
    let ec2 = prefixd::ec2::sdk::SdkEc2::new(
        common::sdk_client(&mock.endpoint()),
        cfg.limiter.limiter(),
        std::sync::Arc::new(prefixd::metrics::Metrics::new()),
    );
    let e = prefixd::agent::AgentBuilder::new(cfg, ec2, node.parse().unwrap())
        .start()
        .await
        .err()
        .expect("a second agent on the same checkpoint starts");
    let msg = e.to_string();
    assert!(
        msg.contains("checkpoint.json") && msg.contains(&std::process::id().to_string()),
        "{msg}"
    );
    // The first one's socket is still there and still its.
    let r = add(&socket, "b", 5_000).await;
    assert!(r.error.is_none(), "{r:?}");
    assert!(first.agent.status.readiness().is_ok());
    first.agent.shutdown().await.unwrap();
    assert!(!socket.exists(), "the agent removes the socket it made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_never_removes_a_socket_it_did_not_make() {
    let mock = start_mock(NODE).await;
    let node = mock.id("node").unwrap().to_owned();
    let a = start_agent(&mock, &node, &[]).await;
    // Someone replaces the socket file: readiness says so, and shutdown leaves the new one.
    std::fs::remove_file(&a.socket).unwrap();
    assert!(
        a.agent
            .status
            .readiness()
            .unwrap_err()
            .contains("removed or replaced")
    );
    let other = std::os::unix::net::UnixListener::bind(&a.socket).unwrap();
    let (code, body) = http_async(
        a.agent.introspection_addr(),
        "GET",
        "/readyz",
        vec![],
        String::new(),
    )
    .await;
    assert_eq!(code, 503, "{body}");
    let socket = a.socket.clone();
    a.agent.shutdown().await.unwrap();
    assert!(
        socket.exists(),
        "the agent removed a socket it did not make"
    );
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_del_cancels_the_waiting_add_of_its_attachment() {
    let mock = start_mock(NODE).await;
    let node = mock.id("node").unwrap().to_owned();
    let a = start_agent(&mock, &node, FROZEN).await;
    let socket = a.socket.clone();
    let t = Instant::now();
    let waiting = tokio::spawn(async move { add(&socket, "gone", 30_000).await });
    eventually(5, "the ADD waits", async || a.agent.pool.pending() == 1).await;
    let r = del(&a.socket, "gone").await;
    assert!(r.error.is_none(), "{r:?}");
    let r = waiting.await.unwrap();
    let e = r.error.expect("the cancelled ADD got an address");
    assert_eq!(e.kind, ErrorKind::Timeout);
    assert!(e.message.contains("cancelled"), "{}", e.message);
    assert!(
        t.elapsed() < Duration::from_secs(25),
        "the ADD waited out its timeout"
    );
    // Negative control: an address that comes now goes to nobody.
    give_prefix(&a.agent, "10.0.9.0/28").await;
    assert!(held(&a.agent).await.is_empty());
    a.agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_whose_caller_went_away_is_not_made() {
    let mock = start_mock(NODE).await;
    let node = mock.id("node").unwrap().to_owned();
    let a = start_agent(&mock, &node, FROZEN).await;
    // The runtime kills the plugin while its ADD waits: the connection closes.
    let socket = a.socket.clone();
    let key = PodKey::new("net", "killed", "eth0").unwrap();
    let gave_up = tokio::task::spawn_blocking(move || {
        prefixd::ipc::call(
            &socket,
            Op::Add {
                key,
                pod_namespace: String::new(),
                pod_name: String::new(),
                timeout_ms: 60_000,
            },
            Duration::from_millis(500),
        )
    })
    .await
    .unwrap();
    assert!(gave_up.is_err());
    eventually(5, "the agent notices", async || a.agent.pool.pending() == 0).await;
    // Negative control: an ADD still waiting when the address comes gets it.
    let socket = a.socket.clone();
    let live = tokio::spawn(async move { add(&socket, "live", 30_000).await });
    eventually(5, "the live ADD waits", async || {
        a.agent.pool.pending() == 1
    })
    .await;
    give_prefix(&a.agent, "10.0.9.0/28").await;
    let r = live.await.unwrap();
    let addr = r.address.expect("the live ADD got no address");
    assert_eq!(
        held(&a.agent).await,
        vec![addr],
        "the killed plugin's ADD was made"
    );
    a.agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_answers_waiting_adds_at_once_with_try_again() {
    let mock = start_mock(NODE).await;
    let node = mock.id("node").unwrap().to_owned();
    let a = start_agent(&mock, &node, FROZEN).await;
    let socket = a.socket.clone();
    let waiting = tokio::spawn(async move { add(&socket, "p", 60_000).await });
    eventually(5, "the ADD waits", async || a.agent.pool.pending() == 1).await;
    let t = Instant::now();
    a.agent.shutdown().await.unwrap();
    let r = waiting.await.unwrap();
    let e = r.error.expect("an address while stopping");
    assert_eq!(e.kind, ErrorKind::Timeout, "{e:?}");
    assert!(e.message.contains("try again"), "{}", e.message);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "shutdown waited out the ADD"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_gc_works_over_the_socket() {
    let mock = start_mock(NODE).await;
    let node = mock.id("node").unwrap().to_owned();
    let a = start_agent(&mock, &node, &[]).await;
    let r = add(&a.socket, "kept", 5_000).await;
    let kept_addr = r.address.unwrap();
    let r = add(&a.socket, "gone", 5_000).await;
    assert!(r.address.is_some());
    let mut keep: Vec<PodKey> = (0..prefixd::ipc::MAX_ATTACHMENTS - 1)
        .map(|i| PodKey::new("net", format!("{i:0>256}"), "eth0").unwrap())
        .collect();
    keep.push(PodKey::new("net", "kept", "eth0").unwrap());
    let socket = a.socket.clone();
    let r = tokio::task::spawn_blocking(move || {
        prefixd::ipc::call(
            &socket,
            Op::Gc {
                network: "net".into(),
                keep,
            },
            Duration::from_secs(20),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!(r.released, Some(1));
    assert_eq!(r.kept, Some(vec![std::net::IpAddr::V4(kept_addr)]));
    a.agent.shutdown().await.unwrap();
}

/// `chattr +i` on a file for as long as it lives (so that a failing test leaves a removable file).
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(path: &std::path::Path) -> Self {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .expect("chattr (e2fsprogs) runs");
        assert!(ok.success(), "chattr +i {}", path.display());
        Self(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_checkpoint_and_a_failed_write_is_undone() {
    let mock = start_mock(NODE).await;
    let node = mock.id("node").unwrap().to_owned();
    let a = start_agent_in(&mock, &node, &[], tempfile::tempdir().unwrap(), 1).await;
    // As root no permission stops a write; the immutable attribute does: the log's appends
    // fail (EPERM), and so does the rename a compaction makes over it.
    let log = a.dir.path().join("checkpoint.json.log");
    let immutable = Immutable::set(&log);
    let r = add(&a.socket, "p", 5_000).await;
    assert_eq!(r.error.unwrap().kind, ErrorKind::Internal);
    assert!(held(&a.agent).await.is_empty(), "an undurable ADD was kept");
    let why = a.agent.status.readiness().unwrap_err();
    assert!(why.contains("checkpoint"), "{why}");
    let r = add(&a.socket, "q", 5_000).await;
    assert_eq!(r.error.unwrap().kind, ErrorKind::NotReady);
    // Fixed: the agent finds out by itself and serves again.
    drop(immutable);
    eventually(10, "ready again", async || {
        a.agent.status.readiness().is_ok()
    })
    .await;
    let r = add(&a.socket, "q", 5_000).await;
    assert!(r.address.is_some(), "{r:?}");
    a.agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_answers_overflowing_counts_with_ec2s_error_and_keeps_serving() {
    let mock = start_mock(NODE).await;
    let node = mock.id("node").unwrap().to_owned();
    let eni = mock.with_model(|m| m.instances[&node].primary_eni.clone());
    let form = "application/x-www-form-urlencoded".to_owned();
    for count in ["4294967295", "4294967294", "2147483648"] {
        let body = format!(
            "Action=AssignPrivateIpAddresses&Version=2016-11-15&NetworkInterfaceId={eni}&Ipv4PrefixCount={count}"
        );
        let (code, text) = http_async(
            mock.addr(),
            "POST",
            "/",
            vec![("Content-Type", form.clone())],
            body,
        )
        .await;
        assert_eq!(code, 400, "{text}");
        assert!(text.contains("PrivateIpAddressLimitExceeded"), "{text}");
    }
    // A huge attach delay is refused, not stored to overflow later.
    let (code, text) = http_async(
        mock.addr(),
        "POST",
        "/_mock/latency",
        vec![("Content-Type", "application/json".into())],
        r#"{"attach":true,"delay":"1000h"}"#.into(),
    )
    .await;
    assert!(code == 400, "{code} {text}");
    // Negative control: the model's lock is not poisoned; a sane request still works.
    let body = format!(
        "Action=AssignPrivateIpAddresses&Version=2016-11-15&NetworkInterfaceId={eni}&Ipv4PrefixCount=1"
    );
    let (code, text) =
        http_async(mock.addr(), "POST", "/", vec![("Content-Type", form)], body).await;
    assert_eq!(code, 200, "{text}");
}
