//! The agent against the mock EC2.
//!
//! Where a test is about the pool's behaviour over time — cooldowns, RELEASE_DELAY, backoff, the
//! limiter — it runs on tokio's paused clock against the mock's account directly (no HTTP), with
//! the pool inline: exact and quick. Where it is about the real paths — the SDK over HTTP, the
//! plugin socket, the HTTP endpoints — it runs on real time through them.

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use common::{PausedAgent, add, eventually, http_async, paused_agent, start_agent, start_mock};
use ipnet::Ipv4Net;
use prefixd::ec2::Action;
use prefixd::mock::control::ErrorRateSpec;

const NODE: &str = r#"{
  "vpcs": [{ "cidr": "10.0.0.0/16", "subnets": [{ "name": "nodes", "cidr": "10.0.0.0/20" }] }],
  "instances": [{ "name": "node", "type": "m5.large", "subnet": "nodes" }]
}"#;

const FRAGMENTED: &str = r#"{
  "vpcs": [{ "cidr": "10.0.0.0/16", "subnets": [{ "name": "nodes", "cidr": "10.0.0.0/22", "fragment": true }] }],
  "instances": [{ "name": "node", "type": "m5.large", "subnet": "nodes" }]
}"#;

/// (ENIs attached to the instance, prefixes on them, `available` ENIs) as EC2 sees them.
fn ec2_view(account: &prefixd::mock::Account, instance: &str) -> (usize, usize, usize) {
    account.read(|m| {
        let enis = m.enis_of(instance);
        let prefixes = enis.iter().map(|e| e.prefixes.len()).sum();
        let available = m.enis.values().filter(|e| e.attachment.is_none()).count();
        (enis.len(), prefixes, available)
    })
}

async fn free_prefixes(pool: &prefixd::agent::pool::PoolHandle) -> usize {
    let v = pool.inventory().await.unwrap();
    v.enis
        .iter()
        .flat_map(|e| e.prefixes.iter())
        .filter(|p| !p.in_use())
        .count()
}

impl common::PausedAgent {
    fn view(&self) -> (usize, usize, usize) {
        ec2_view(&self.account, &self.id("node"))
    }
}

async fn warm(a: &PausedAgent, n: usize) {
    a.until(20, &format!("{n} free prefixes"), async || {
        free_prefixes(&a.agent.pool).await == n
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn cold_start_reaches_warm_prefix_target_with_one_assign() {
    let a = paused_agent(NODE, &[]).await;
    warm(&a, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = a.stats();
    assert_eq!(
        stats.calls_of(Action::AssignPrivateIpAddresses),
        1,
        "{stats:?}"
    );
    assert_eq!(stats.calls_of(Action::CreateNetworkInterface), 0);
    assert_eq!(a.view(), (1, 1, 0));
    // An ADD is served from it, with no EC2 call.
    let addr = a.add("c1", 5_000).await.expect("an address");
    let net: Ipv4Net = "10.0.0.0/20".parse().unwrap();
    assert!(net.contains(&addr));
    // Idempotent.
    assert_eq!(a.add("c1", 5_000).await.unwrap(), addr);
    assert_eq!(a.stats().mutating_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn burst_of_200_adds_fills_the_primary_then_a_second_eni_and_dels_release_the_excess() {
    let a = std::sync::Arc::new(
        paused_agent(
            NODE,
            &[
                ("MAX_PODS", "250"),
                ("RELEASE_DELAY", "1s"),
                ("IP_COOLDOWN_PERIOD", "1s"),
            ],
        )
        .await,
    );
    warm(&a, 1).await;
    let node = a.id("node");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            a.add(&format!("pod{i}"), 30_000).await
        }));
    }
    let mut addrs = HashSet::new();
    for t in tasks {
        let addr = t.await.unwrap().expect("an address");
        assert!(addrs.insert(addr), "an address given twice");
    }
    assert_eq!(addrs.len(), 200);
    let (enis, prefixes, available) = a.view();
    assert_eq!(enis, 2, "the primary filled, then one more ENI");
    assert!(prefixes >= 13, "{prefixes} prefixes for 200 pods");
    assert_eq!(available, 0);
    let primary_prefixes = a
        .account
        .read(|m| m.enis[&m.instances[&node].primary_eni].prefixes.len());
    assert_eq!(
        primary_prefixes, 9,
        "m5.large: 10 slots, the primary address takes one"
    );
    let stats = a.stats();
    assert_eq!(stats.calls_of(Action::CreateNetworkInterface), 1);
    assert_eq!(stats.calls_of(Action::AttachNetworkInterface), 1);

    // Everything goes; after the cooldown and RELEASE_DELAY the excess is released, the second
    // ENI with it.
    for i in 0..200 {
        assert!(a.del(&format!("pod{i}")).await);
    }
    assert!(!a.del("pod0").await, "DEL is idempotent");
    a.until(20, "release down to WARM_PREFIX_TARGET", async || {
        a.view() == (1, 1, 0)
    })
    .await;
    let stats = a.stats();
    assert_eq!(stats.calls_of(Action::DeleteNetworkInterface), 1);
    assert!(stats.calls_of(Action::UnassignPrivateIpAddresses) >= 1);
}

#[tokio::test(start_paused = true)]
async fn injected_throttling_on_every_action_converges_within_the_limiter() {
    let built = NODE;
    let a = std::sync::Arc::new(
        paused_agent(built, &[("EC2_API_QPS", "4"), ("EC2_API_BURST", "4")]).await,
    );
    for action in prefixd::mock::actions::ACTIONS {
        a.account.with_control(|c| {
            c.set_error_rate(ErrorRateSpec {
                action: *action,
                rate: 0.3,
                code: "RequestLimitExceeded".into(),
            })
        });
    }
    let start = tokio::time::Instant::now();
    let mutating_before = a.stats().mutating_calls();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            a.add(&format!("t{i}"), 30_000).await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("an address");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stats = a.stats();
    let injected: u64 = stats
        .errors
        .values()
        .flat_map(|m| m.get("RequestLimitExceeded"))
        .sum();
    assert!(injected > 0, "nothing was throttled: {stats:?}");
    // Every mutating call went through the limiter: burst 4, then 4 per second.
    let mutating = (stats.mutating_calls() - mutating_before) as f64;
    assert!(
        mutating <= 4.0 + 4.0 * elapsed + 1.0,
        "{mutating} mutating calls in {elapsed:.1} s exceed the limiter (burst 4, 4/s)"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_attach_leaves_no_eni() {
    let scenario = r#"{
      "vpcs": [{ "cidr": "10.0.0.0/16", "subnets": [{ "name": "nodes", "cidr": "10.0.0.0/20" }] }],
      "instances": [{ "name": "node", "type": "m5.large", "subnet": "nodes" }],
      "faults": [{ "action": "AttachNetworkInterface", "fail_next": 1, "code": "InternalError" }]
    }"#;
    // 12 free prefixes: 9 on the primary, then a new ENI, whose first attach fails.
    let a = paused_agent(
        scenario,
        &[("WARM_PREFIX_TARGET", "12"), ("MAX_PODS", "250")],
    )
    .await;
    warm(&a, 12).await;
    let stats = a.stats();
    assert_eq!(
        stats.errors_of(Action::AttachNetworkInterface, "InternalError"),
        1
    );
    assert_eq!(stats.calls_of(Action::CreateNetworkInterface), 2);
    assert!(
        stats.calls_of(Action::DeleteNetworkInterface) >= 1,
        "the half-made ENI was deleted"
    );
    assert_eq!(a.view(), (2, 12, 0), "no ENI leaked");
}

#[tokio::test(start_paused = true)]
async fn fragmented_subnet_falls_back_to_secondary_addresses() {
    let a = paused_agent(FRAGMENTED, &[]).await;
    let addr = a.add("pod", 20_000).await.expect("an address");
    let node = a.id("node");
    let secondary: Vec<Ipv4Addr> = a
        .account
        .read(|m| m.enis[&m.instances[&node].primary_eni].secondary.clone());
    assert!(
        secondary.contains(&addr),
        "{addr} is a /32 secondary address"
    );
    let st = a.agent.status.view();
    assert!(st.fallback_active, "{st:?}");
    assert_eq!(st.mode, "secondary_ip");
    let stats = a.stats();
    assert!(stats.errors_of(Action::AssignPrivateIpAddresses, "InsufficientCidrBlocks") >= 1);
}

#[tokio::test(start_paused = true)]
async fn new_enis_go_to_the_pod_subnet_with_room_moving_on_after_insufficient_cidr() {
    let scenario = r#"{
      "vpcs": [{ "cidr": "10.0.0.0/16", "subnets": [
          { "name": "nodes", "cidr": "10.0.0.0/20" },
          { "name": "pods-a", "cidr": "10.0.16.0/20", "fragment": true },
          { "name": "pods-b", "cidr": "10.0.32.0/24" }
      ]}],
      "instances": [{ "name": "node", "type": "m5.large", "subnet": "nodes" }]
    }"#;
    let names = prefixd::mock::Scenario::parse(scenario, "t")
        .unwrap()
        .build("t")
        .unwrap()
        .names;
    let (a_id, b_id) = (names["pods-a"].clone(), names["pods-b"].clone());
    let subnets = format!("{a_id},{b_id}");
    // 12 free prefixes: 9 on the primary, the rest on a new ENI. pods-a has the most free
    // addresses but no free /28, so the ENI goes to pods-b.
    let a = paused_agent(
        scenario,
        &[
            ("WARM_PREFIX_TARGET", "12"),
            ("MAX_PODS", "250"),
            ("POD_SUBNET_IDS", &subnets),
        ],
    )
    .await;
    warm(&a, 12).await;
    let node = a.id("node");
    let subnets_of_enis: Vec<String> = a
        .account
        .read(|m| m.enis_of(&node).iter().map(|e| e.subnet.clone()).collect());
    assert_eq!(subnets_of_enis.len(), 2);
    assert_eq!(subnets_of_enis[1], b_id, "the new ENI is in pods-b");
    assert_eq!(
        a.stats()
            .errors_of(Action::CreateNetworkInterface, "InsufficientCidrBlocks"),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn limit_exceeded_makes_the_agent_resync_before_acting_again() {
    let scenario = r#"{
      "vpcs": [{ "cidr": "10.0.0.0/16", "subnets": [{ "name": "nodes", "cidr": "10.0.0.0/20" }] }],
      "instances": [{ "name": "node", "type": "m5.large", "subnet": "nodes" }],
      "faults": [{ "action": "AssignPrivateIpAddresses", "fail_next": 1, "code": "PrivateIpAddressLimitExceeded" }]
    }"#;
    let a = paused_agent(scenario, &[("RECONCILE_INTERVAL", "1h")]).await;
    let describes_at_start = a.stats().calls_of(Action::DescribeNetworkInterfaces);
    warm(&a, 1).await;
    let stats = a.stats();
    assert_eq!(
        stats.errors_of(
            Action::AssignPrivateIpAddresses,
            "PrivateIpAddressLimitExceeded"
        ),
        1
    );
    // With an hour between scheduled resyncs, the extra Describe is the forced resync.
    assert!(
        stats.calls_of(Action::DescribeNetworkInterfaces) > describes_at_start,
        "no resync after PrivateIpAddressLimitExceeded: {stats:?}"
    );
}

// ---- real time: the SDK over HTTP, the socket, the HTTP endpoints ------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_provisioning_never_changes_ec2() {
    let mock = start_mock(NODE).await;
    let node = mock.id("node").unwrap().to_owned();
    let a = start_agent(
        &mock,
        &node,
        &[("DISABLE_NETWORK_RESOURCE_PROVISIONING", "true")],
    )
    .await;
    let r = add(&a.socket, "pod", 300).await;
    assert_eq!(r.error.unwrap().kind, prefixd::ipc::ErrorKind::Timeout);
    assert_eq!(mock.stats().mutating_calls(), 0);
    a.agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_metrics_and_status_table() {
    let mock = start_mock(NODE).await;
    let node = mock.id("node").unwrap().to_owned();
    let a = start_agent(&mock, &node, &[]).await;
    eventually(10, "warm pool", async || {
        free_prefixes(&a.agent.pool).await == 1
    })
    .await;
    add(&a.socket, "c1", 5_000).await;
    let ia = a.agent.introspection_addr();
    let (s, body) = http_async(ia, "GET", "/v1/pool", vec![], String::new()).await;
    assert_eq!(s, 200);
    let snap: prefixd::core::PoolSnapshot = serde_json::from_str(&body).unwrap();
    snap.validate().unwrap();
    assert_eq!(snap.limits.max_pods, 110);
    assert_eq!(snap.enis[0].prefixes[0].assigned, 1);
    let (s, body) = http_async(ia, "GET", "/v1/allocations", vec![], String::new()).await;
    assert_eq!(s, 200);
    assert!(body.contains("\"container_id\":\"c1\""), "{body}");
    let (s, _) = http_async(ia, "GET", "/readyz", vec![], String::new()).await;
    assert_eq!(s, 200);
    let (s, _) = http_async(ia, "GET", "/healthz", vec![], String::new()).await;
    assert_eq!(s, 200);
    let (s, cfg) = http_async(ia, "GET", "/v1/config", vec![], String::new()).await;
    assert_eq!(s, 200);
    assert!(cfg.contains("\"warm_prefix_target\":1"), "{cfg}");
    let (s, m) = http_async(
        a.agent.metrics_addr(),
        "GET",
        "/metrics",
        vec![],
        String::new(),
    )
    .await;
    assert_eq!(s, 200);
    for needle in [
        "prefixd_ec2_calls_total{action=\"AssignPrivateIpAddresses\",result=\"ok\"} 1",
        "prefixd_addresses{state=\"assigned\"} 1",
        "prefixd_prefixes 1",
        "prefixd_add_latency_seconds_count 1",
        "prefixd_checkpoint_write_seconds_count",
        "prefixd_fallback_active 0",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
    let status: serde_json::Value = serde_json::from_str(
        &http_async(ia, "GET", "/v1/status", vec![], String::new())
            .await
            .1,
    )
    .unwrap();
    let enis: serde_json::Value = serde_json::from_str(
        &http_async(ia, "GET", "/v1/enis", vec![], String::new())
            .await
            .1,
    )
    .unwrap();
    let config: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let table = prefixd::cli::status::render(&status, &config, &enis, Ok(()));
    assert!(table.contains("m5.large"), "{table}");
    assert!(
        table.contains("total 16 addresses: 1 assigned, 0 cooling, 15 free"),
        "{table}"
    );
    a.agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_enis_are_swept() {
    let mock = start_mock(NODE).await;
    let node = mock.id("node").unwrap().to_owned();
    let subnet = mock.id("nodes").unwrap().to_owned();
    let tagged = |inst: &str, created: &str| {
        let tags = prefixd::mock::model::Tags::from([
            (
                "node.k8s.amazonaws.com/instance_id".to_owned(),
                inst.to_owned(),
            ),
            (
                "node.k8s.amazonaws.com/createdAt".to_owned(),
                created.to_owned(),
            ),
        ]);
        let s = subnet.clone();
        mock.with_model(move |m| {
            m.create_eni(&s, vec![], "leak".into(), None, Default::default(), tags)
                .unwrap()
        })
    };
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let own = tagged(&node, &now); // this node's own: a leak at once
    let old = tagged("i-0aaaaaaaaaaaaaaaa", "2020-01-01T00:00:00Z"); // another node's, old: a leak
    let fresh = tagged("i-0bbbbbbbbbbbbbbbb", &now); // another node's, fresh: not yet
    let untagged = mock.with_model(|m| {
        m.create_eni(
            &subnet,
            vec![],
            "x".into(),
            None,
            Default::default(),
            Default::default(),
        )
        .unwrap()
    });
    let a = start_agent(&mock, &node, &[]).await;
    eventually(10, "the sweep", async || {
        mock.stats().calls_of(Action::DeleteNetworkInterface) >= 2
    })
    .await;
    let left: Vec<String> = mock.with_model(|m| m.enis.keys().cloned().collect());
    assert!(
        !left.contains(&own) && !left.contains(&old),
        "leaks deleted"
    );
    assert!(
        left.contains(&fresh) && left.contains(&untagged),
        "the rest kept"
    );
    let (_, m) = http_async(
        a.agent.metrics_addr(),
        "GET",
        "/metrics",
        vec![],
        String::new(),
    )
    .await;
    assert!(m.contains("prefixd_leaked_enis_deleted_total 2"), "{m}");
    a.agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_0600_and_refuses_non_root_peers() {
    use std::os::unix::fs::PermissionsExt;
    let mock = start_mock(NODE).await;
    let node = mock.id("node").unwrap().to_owned();
    let a = start_agent(&mock, &node, &[]).await;
    let mode = std::fs::metadata(&a.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Open the file to everyone, so that only SO_PEERCRED stands between nobody and the pool.
    std::fs::set_permissions(&a.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(a.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = serde_json::json!({"cniVersion": "1.1.0", "name": "net", "type": "ptp",
        "ipam": {"type": "prefixd-cni", "socket": a.socket}});
    let plugin = env!("CARGO_BIN_EXE_prefixd-cni");
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut c = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", plugin])
            .env("CNI_COMMAND", "STATUS")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("setpriv (util-linux) runs the plugin as nobody");
        c.stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        c.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], 50, "{e}");
    assert!(
        e["details"].as_str().unwrap_or("").contains("only root"),
        "{e}"
    );
    a.agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_over_http_grows_and_releases_through_the_socket() {
    // The paused-time tests reach the mock directly; this one takes the real path end to end:
    // aws-sdk-ec2 over HTTP, the plugin socket, growth past the primary ENI and release.
    let mock = start_mock(NODE).await;
    let node = mock.id("node").unwrap().to_owned();
    let a = start_agent(
        &mock,
        &node,
        &[
            ("MAX_PODS", "250"),
            ("RELEASE_DELAY", "1s"),
            ("IP_COOLDOWN_PERIOD", "1s"),
        ],
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..160 {
        let s = a.socket.clone();
        tasks.push(tokio::spawn(async move {
            add(&s, &format!("pod{i}"), 30_000).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.error.is_none(), "{:?}", r.error);
    }
    assert_eq!(ec2_view(mock.account(), &node).0, 2);
    for i in 0..160 {
        assert_eq!(
            common::del(&a.socket, &format!("pod{i}")).await.released,
            Some(1)
        );
    }
    eventually(20, "release down to WARM_PREFIX_TARGET", async || {
        ec2_view(mock.account(), &node) == (1, 1, 0)
    })
    .await;
    a.agent.shutdown().await.unwrap();
}
