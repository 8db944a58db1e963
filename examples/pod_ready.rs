//! Time from `ctr run` to the container's first answered ping to a peer instance, over many
//! containers started one after another on an emulated node: containerd (with its own root,
//! state and socket) runs busybox containers with `--cni` and deploy/'s conflist (prefixd-cni as
//! the main plugin, then portmap), the release agent runs in the instance's namespace with the
//! deployed defaults, and the emulated VPC carries the ping (the source/destination check on).
//!
//! Run as root: `cargo build --release && cargo run --release --example pod_ready [CONTAINERS]`

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "../tests/common/vpc.rs"]
#[allow(dead_code)]
mod vpc;

#[path = "../tests/common/containerd.rs"]
#[allow(dead_code)]
mod containerd;

mod support;

const SCENARIO: &str = r#"{
  "vpcs": [{ "cidr": "10.0.0.0/16", "subnets": [{ "name": "nodes", "cidr": "10.0.0.0/20" }] }],
  "instances": [{ "name": "node", "type": "m5.large", "subnet": "nodes" }],
  "dataplane": { "hotplug_delay": "2s" }
}"#;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The node's CNI directories as the DaemonSet's init container makes them.
fn cni_dirs(dir: &Path, socket: &Path, netns: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (conf, bin, src) = (dir.join("net.d"), dir.join("bin"), dir.join("src"));
    std::fs::create_dir_all(&src).unwrap();
    let mut list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/10-prefixd.conflist").unwrap())
            .unwrap();
    list["plugins"][0]["socket"] = socket.display().to_string().into();
    std::fs::write(src.join("10-prefixd.conflist"), list.to_string()).unwrap();
    let ok = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg(support::release_bin("prefixd"))
        .args(["install-cni", "--node-sysctls", "--bin-dir"])
        .arg(&bin)
        .arg("--conf-dir")
        .arg(&conf)
        .arg("--plugin")
        .arg(support::release_bin("prefixd-cni"))
        .arg("--conflist")
        .arg(src.join("10-prefixd.conflist"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "prefixd install-cni");
    for p in std::fs::read_dir("/usr/lib/cni").unwrap().flatten() {
        let _ = std::os::unix::fs::symlink(p.path(), bin.join(p.file_name()));
    }
    (conf, bin)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(60);
    prefixd::mock::vpc::remove_leftovers();
    let vpc = vpc::Vpc::start(SCENARIO).await;
    let node = vpc.netns("node");
    let endpoint = vpc.topology.instances[&vpc.id("node")].endpoint.clone();
    let peer = vpc.topology.peer.address.clone();
    let dir = tempfile::tempdir().unwrap();
    let agent = support::start_node_agent(&node, &endpoint, dir.path(), &[]).await;
    let (conf, bin) = cni_dirs(
        &dir.path().join("cni"),
        &dir.path().join("agent.sock"),
        &node,
    );
    let rootfs = containerd::busybox_rootfs(dir.path());
    let script =
        format!("until ping -c1 -W1 {peer} >/dev/null 2>&1; do :; done; echo up; exec sleep 60");
    let times = tokio::task::spawn_blocking(move || {
        let ctr = containerd::Containerd::start(&node, &conf, &bin);
        let mut times = Vec::new();
        for i in 0..n {
            let id = format!("ready{i}");
            let t = Instant::now();
            let mut child = ctr.run_piped(&rootfs, &id, &["/bin/busybox", "sh", "-c", &script]);
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let took = t.elapsed();
            if line.trim() != "up" {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "{id} did not answer: {line:?}; ctr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            times.push(took);
            let _ = ctr.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
            let out = child.wait_with_output().unwrap();
            assert!(
                !String::from_utf8_lossy(&out.stderr).contains("ctr:"),
                "{id}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        times
    })
    .await
    .unwrap();
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", agent.id())).unwrap_or_default();
    let kb = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1000.0
    };
    let (rss, hwm) = (kb("VmRSS:"), kb("VmHWM:"));
    support::stop(agent);
    vpc.stop().await;
    let mut t = times;
    t.sort();
    let at = |p: f64| ms(t[((t.len() as f64 - 1.0) * p).round() as usize]);
    println!(
        "ctr run -> first answered ping to the peer, {} containers: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        t.len(),
        at(0.5),
        at(0.9),
        at(1.0)
    );
    println!("agent (programming the node) RSS after the run {rss:.1} MB, peak {hwm:.1} MB");
}
