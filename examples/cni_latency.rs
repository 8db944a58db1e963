//! ADD+DEL latency of prefixd-cni beside Debian's host-local, in the same run, interleaved:
//! through ptp in a network namespace, and the IPAM plugins alone (run as ptp runs them: same
//! env, same stdin). The agent runs as its own process with a warm pool against the mock EC2.
//!
//! Run as root: `cargo build --release && cargo run --release --example cni_latency [RUNS]`

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use prefixd::mock::MockServer;
use prefixd::mock::scenario::Scenario;
use serde_json::{Value, json};

fn exec(
    plugin: &str,
    cmd: &str,
    conf: &Value,
    container: &str,
    netns: &str,
    path: &str,
) -> Duration {
    let t = Instant::now();
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", container)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", netns)
        .env("CNI_PATH", path)
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=bench",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // /bin/true (the floor) may exit before it reads: a broken pipe is fine there.
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes());
    let out = child.wait_with_output().unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{plugin} {cmd}: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let mock = MockServer::start(
        Scenario::default_scenario().build("default").unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let node = mock.id("node").unwrap().to_owned();
    let plugin = support::release_bin("prefixd-cni");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    // A warm pool that never runs dry in the loop: no cooldown (this measures the plugin path,
    // not the pool), two prefixes kept free.
    let agent = support::start_agent(
        &mock.endpoint(),
        &node,
        dir.path(),
        &[("IP_COOLDOWN_PERIOD", "0s"), ("WARM_PREFIX_TARGET", "2")],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(&plugin, bin.join("prefixd-cni")).unwrap();
    let cni_path = format!("{}:/usr/lib/cni", bin.display());
    let ns = format!("pfxd-bench-{}", std::process::id());
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success(),
        "ip netns add (root?)"
    );
    let netns = format!("/var/run/netns/{ns}");
    let prefixd_conf = json!({"cniVersion": "1.0.0", "name": "bench-prefixd", "type": "ptp",
        "ipam": {"type": "prefixd-cni", "socket": socket, "prefix_length": 28, "routes": []}});
    let host_local_conf = json!({"cniVersion": "1.0.0", "name": "bench-hostlocal", "type": "ptp",
        "ipam": {"type": "host-local", "subnet": "10.99.0.0/16", "dataDir": dir.path().join("host-local")}});
    let ptp = "/usr/lib/cni/ptp";
    let hl = "/usr/lib/cni/host-local";
    let pc = plugin.to_str().unwrap().to_owned();
    let mut t: [Vec<Duration>; 5] = Default::default();
    let blocking = tokio::task::spawn_blocking(move || {
        for i in 0..runs {
            let id = format!("bench{i}");
            let pair = |p: &str, c: &Value| {
                exec(p, "ADD", c, &id, &netns, &cni_path)
                    + exec(p, "DEL", c, &id, &netns, &cni_path)
            };
            // Interleaved, the order rotating, so all see the same machine. The fifth is the
            // floor: two starts of /bin/true through the same harness (what any exec'd IPAM
            // plugin pays before doing anything).
            for k in 0..5 {
                match (i + k) % 5 {
                    0 => t[0].push(pair(ptp, &prefixd_conf)),
                    1 => t[1].push(pair(ptp, &host_local_conf)),
                    2 => t[2].push(pair(&pc, &prefixd_conf)),
                    3 => t[3].push(pair(hl, &host_local_conf)),
                    _ => t[4].push(pair("/bin/true", &host_local_conf)),
                }
            }
        }
        t
    });
    let mut t = blocking.await.unwrap();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    support::stop(agent);
    let names = [
        "ptp + prefixd-cni",
        "ptp + host-local",
        "prefixd-cni alone",
        "host-local alone",
        "exec floor (/bin/true)",
    ];
    println!("ADD+DEL latency, {runs} runs each, interleaved (ms)");
    let mut p50 = [0.0; 5];
    for (i, n) in names.iter().enumerate() {
        p50[i] = pct(&mut t[i], 0.5);
        println!(
            "  {n:<20} p50 {:>6.2}  p99 {:>6.2}",
            p50[i],
            pct(&mut t[i], 0.99)
        );
    }
    println!(
        "  ratio ptp chain (prefixd-cni / host-local) p50: {:.2}",
        p50[0] / p50[1]
    );
    println!(
        "  ratio IPAM alone (prefixd-cni / host-local) p50: {:.2}",
        p50[2] / p50[3]
    );
    println!(
        "  ratio exec floor / host-local p50: {:.2}; prefixd-cni above the floor: {:.2} ms",
        p50[4] / p50[3],
        p50[2] - p50[4]
    );
}
