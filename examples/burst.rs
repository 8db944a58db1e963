//! Measures the README's agent figures: 200 simultaneous ADDs on a cold m5.large
//! (MAX_PODS=250) against the mock EC2 with its latency model on — wall time to the last
//! address and EC2 calls, against the critical path — and the agent's resident memory idle and
//! during the burst (the agent runs as its own process so that its memory is its own).
//!
//! Run: `cargo build --release && cargo run --release --example burst`

use std::time::{Duration, Instant};

mod support;

use prefixd::core::PodKey;
use prefixd::ec2::Action;
use prefixd::ipc::{self, Op};
use prefixd::mock::MockServer;
use prefixd::mock::scenario::{LatencySpec, Scenario};

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let latency = LatencySpec::realistic();
    let mut scenario = Scenario::default_scenario();
    scenario.latency = latency.clone();
    let mock = MockServer::start(
        scenario.build("default").unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let node = mock.id("node").unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let agent =
        support::start_agent(&mock.endpoint(), &node, dir.path(), &[("MAX_PODS", "250")]).await;
    let pid = agent.id();
    // Cold: wait for the start-up Assign (WARM_PREFIX_TARGET=1) to land, then settle.
    while mock.stats().calls_of(Action::AssignPrivateIpAddresses) < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kb(pid, "VmRSS:");
    let before = mock.stats();

    let start = Instant::now();
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let s = socket.clone();
            std::thread::spawn(move || {
                let r = ipc::call(
                    &s,
                    Op::Add {
                        key: PodKey::new("net", format!("burst{i}"), "eth0").unwrap(),
                        pod_namespace: "default".into(),
                        pod_name: format!("p{i}"),
                        timeout_ms: 60_000,
                    },
                    Duration::from_secs(70),
                )
                .unwrap();
                (r.address.is_some(), start.elapsed())
            })
        })
        .collect();
    let mut last = Duration::ZERO;
    let mut ok = 0;
    for t in threads {
        let (got, at) = t.join().unwrap();
        ok += got as u32;
        last = last.max(at);
    }
    let peak = rss_kb(pid, "VmHWM:");
    let after = mock.stats();
    let d = |a: Action| after.calls_of(a) - before.calls_of(a);
    let lat = |a: Action| {
        prefixd::core::config::parse_duration(
            "x",
            latency
                .actions
                .get(a.name())
                .map(String::as_str)
                .unwrap_or("0"),
        )
        .unwrap()
    };
    let attach_ready =
        prefixd::core::config::parse_duration("x", latency.attach.as_deref().unwrap_or("0"))
            .unwrap();
    let critical = lat(Action::AssignPrivateIpAddresses)
        + lat(Action::CreateNetworkInterface)
        + lat(Action::AttachNetworkInterface)
        + attach_ready;
    println!("200 simultaneous ADDs on a cold m5.large (MAX_PODS=250), mock EC2 latency model on");
    println!("  addresses: {ok}/200; last address after {} ms", ms(last));
    println!(
        "  critical path: Assign {} + Create {} + Attach {} + attachment ready {} = {} ms; ratio {:.2}",
        ms(lat(Action::AssignPrivateIpAddresses)),
        ms(lat(Action::CreateNetworkInterface)),
        ms(lat(Action::AttachNetworkInterface)),
        ms(attach_ready),
        ms(critical),
        last.as_secs_f64() / critical.as_secs_f64()
    );
    let mutating: Vec<String> = after
        .calls
        .keys()
        .filter(|a| a.is_mutating() && d(**a) > 0)
        .map(|a| format!("{a} {}", d(*a)))
        .collect();
    let describes: u64 = after
        .calls
        .keys()
        .filter(|a| !a.is_mutating())
        .map(|a| d(*a))
        .sum();
    println!(
        "  EC2 calls during the burst: {} ({}; Describe* {describes})",
        after.total_calls() - before.total_calls(),
        mutating.join(", ")
    );
    println!(
        "  agent RSS: idle {:.1} MB, peak during the burst {:.1} MB",
        idle as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    support::stop(agent);
}
