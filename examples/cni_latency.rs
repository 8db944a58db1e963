//! ADD+DEL latency of prefixd-cni as the main plugin (address, veth, routes, rules, neighbour)
//! beside Debian's ptp + host-local, in the same run, interleaved, inside an emulated instance's
//! namespace of the emulated VPC — the release agent runs there as its node agent, with a warm
//! pool, discovering itself through that instance's IMDS. Also measured: the IPAM role under
//! ptp, each IPAM plugin alone (run as ptp runs it: same env, same stdin), the floor any
//! exec'd plugin pays (two starts of /bin/true through the same harness), and where prefixd-cni
//! alone spends its time: two runs of it that stop before the socket (VERSION, same env and
//! stdin), and the agent's side of an ADD and a DEL spoken over the socket from this process (no
//! exec), so that the rest is what the plugin itself adds between the two.
//!
//! Every plugin runs in the node's namespace (spawned from a thread that entered it) against a
//! pod namespace of this run's; nothing touches the machine's own network.
//!
//! Run as root: `cargo build --release && ./scripts/build-cni && cargo run --release --example
//! cni_latency [RUNS]` (build-cni links prefixd-cni statically, as the node image does; the
//! run says which one it measured)
//! (`TRACE_NET=bench-main` writes an strace of the main plugin's last ADD and DEL to
//! /tmp/trace.ADD and /tmp/trace.DEL: how the veth deletion's RCU wait was found).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/common/vpc.rs"]
#[allow(dead_code)]
mod vpc;

mod support;

use prefixd::hostnet::netns::NetNs;
use prefixd::ipc::Op;
use serde_json::{Value, json};

const SCENARIO: &str = r#"{
  "vpcs": [{ "cidr": "10.0.0.0/16", "subnets": [{ "name": "nodes", "cidr": "10.0.0.0/20" }] }],
  "instances": [{ "name": "node", "type": "m5.large", "subnet": "nodes" }],
  "dataplane": { "hotplug_delay": "300ms" }
}"#;

fn exec(
    plugin: &str,
    cmd: &str,
    conf: &Value,
    container: &str,
    netns: &Path,
    path: &str,
) -> Duration {
    let t = Instant::now();
    let trace = std::env::var("TRACE_NET")
        .ok()
        .filter(|n| conf["name"] == n.as_str() && !plugin.contains("ptp"));
    let mut child = match &trace {
        Some(_) => {
            let mut c = Command::new("strace");
            c.args([
                "-f",
                "-tt",
                "-T",
                "-o",
                &format!("/tmp/trace.{cmd}"),
                plugin,
            ]);
            c
        }
        None => Command::new(plugin),
    };
    let mut child = child
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

/// A pod namespace of this run, named like the emulated VPC's so that a dead run's is removed.
fn pod_netns(tag: &str) -> (String, NetNs) {
    let name = format!("pv{}_{tag}", std::process::id());
    let _ = NetNs::delete(&name);
    (
        name.clone(),
        NetNs::create(&name).expect("a pod namespace (root)"),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    prefixd::mock::vpc::remove_leftovers();
    let vpc = vpc::Vpc::start(SCENARIO).await;
    let node = vpc.netns("node");
    let endpoint = vpc.topology.instances[&vpc.id("node")].endpoint.clone();
    let plugin = support::release_bin("prefixd-cni");
    let linked = if support::is_static(&plugin) {
        "statically linked, as the node image builds it"
    } else {
        "dynamically linked: run ./scripts/build-cni for the node image's build"
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    // A warm pool that never runs dry in the loop: no cooldown (this measures the plugin path,
    // not the pool), two prefixes kept free.
    let agent = support::start_node_agent(
        &node,
        &endpoint,
        dir.path(),
        &[("IP_COOLDOWN_PERIOD", "0s"), ("WARM_PREFIX_TARGET", "2")],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(&plugin, bin.join("prefixd-cni")).unwrap();
    let cni_path = format!("{}:/usr/lib/cni", bin.display());
    let (main_name, _main_ns) = pod_netns("bench_main");
    let (ptp_name, _ptp_ns) = pod_netns("bench_ptp");
    let main_netns = Path::new("/run/netns").join(&main_name);
    let ptp_netns = Path::new("/run/netns").join(&ptp_name);
    let main_conf = json!({"cniVersion": "1.0.0", "name": "bench-main", "type": "prefixd-cni", "socket": socket});
    let ipam_conf = json!({"cniVersion": "1.0.0", "name": "bench-ipam", "type": "ptp",
        "ipam": {"type": "prefixd-cni", "socket": socket, "prefix_length": 28, "routes": []}});
    let host_local_conf = json!({"cniVersion": "1.0.0", "name": "bench-hostlocal", "type": "ptp",
        "ipam": {"type": "host-local", "subnet": "10.99.0.0/16", "dataDir": dir.path().join("host-local")}});
    let ptp = "/usr/lib/cni/ptp";
    let hl = "/usr/lib/cni/host-local";
    let pc = plugin.to_str().unwrap().to_owned();
    let node_ns = NetNs::named(&node).unwrap();
    let mut t: [Vec<Duration>; 10] = Default::default();
    let rtt_socket = socket.clone();
    let mut t = tokio::task::spawn_blocking(move || {
        node_ns
            .run(|| {
                for i in 0..runs {
                    let id = format!("bench{i}");
                    let pair = |p: &str, c: &Value, ns: &Path| {
                        exec(p, "ADD", c, &id, ns, &cni_path)
                            + exec(p, "DEL", c, &id, ns, &cni_path)
                    };
                    let agent_side = || {
                        let key = prefixd::core::PodKey::new("bench-rtt", &id, "eth0").unwrap();
                        let t0 = Instant::now();
                        let add = Op::Add {
                            key: key.clone(),
                            pod_namespace: "default".into(),
                            pod_name: "bench".into(),
                            timeout_ms: 5_000,
                        };
                        let r = prefixd::ipc::call(&rtt_socket, add, Duration::from_secs(10));
                        assert!(r.unwrap().address.is_some());
                        let t1 = Instant::now();
                        let del = Op::Del { key, unlink: None };
                        prefixd::ipc::call(&rtt_socket, del, Duration::from_secs(10)).unwrap();
                        (t1 - t0, t1.elapsed())
                    };
                    // Interleaved, the order rotating, so all see the same machine.
                    for k in 0..8 {
                        match (i + k) % 8 {
                            0 => t[0].push(pair(&pc, &main_conf, &main_netns)),
                            1 => t[1].push(pair(ptp, &host_local_conf, &ptp_netns)),
                            2 => t[2].push(pair(ptp, &ipam_conf, &ptp_netns)),
                            3 => t[3].push(pair(&pc, &ipam_conf, &ptp_netns)),
                            4 => t[4].push(pair(hl, &host_local_conf, &ptp_netns)),
                            5 => t[5].push(pair("/bin/true", &host_local_conf, &ptp_netns)),
                            6 => t[6].push(
                                exec(&pc, "VERSION", &ipam_conf, &id, &ptp_netns, &cni_path)
                                    + exec(&pc, "VERSION", &ipam_conf, &id, &ptp_netns, &cni_path),
                            ),
                            _ => {
                                let (add, del) = agent_side();
                                t[7].push(add + del);
                                t[8].push(add);
                                t[9].push(del);
                            }
                        }
                    }
                }
                t
            })
            .unwrap()
    })
    .await
    .unwrap();
    let _ = NetNs::delete(&main_name);
    let _ = NetNs::delete(&ptp_name);
    support::stop(agent);
    vpc.stop().await;
    let names = [
        "prefixd-cni (main plugin)",
        "ptp + host-local",
        "ptp + prefixd-cni (IPAM)",
        "prefixd-cni IPAM alone",
        "host-local alone",
        "exec floor (/bin/true)",
        "prefixd-cni VERSION x2",
        "agent side (socket, no exec)",
        "  of which the ADD",
        "  of which the DEL",
    ];
    println!("ADD+DEL latency, {runs} runs each, interleaved, in an emulated node (ms)");
    println!("  prefixd-cni: {linked}");
    let mut p50 = [0.0; 10];
    for (i, n) in names.iter().enumerate() {
        p50[i] = pct(&mut t[i], 0.5);
        println!(
            "  {n:<26} p50 {:>6.2}  p99 {:>6.2}",
            p50[i],
            pct(&mut t[i], 0.99)
        );
    }
    println!(
        "  ratio main plugin / ptp + host-local p50: {:.2}",
        p50[0] / p50[1]
    );
    println!(
        "  ratio ptp chain (prefixd-cni IPAM / host-local) p50: {:.2}",
        p50[2] / p50[1]
    );
    println!(
        "  ratio IPAM alone (prefixd-cni / host-local) p50: {:.2}",
        p50[3] / p50[4]
    );
    println!(
        "  prefixd-cni IPAM alone, p50 breakdown: {:.2} starting (beyond /bin/true: {:.2}) + {:.2} \
         agent side + {:.2} the rest (connect, request, JSON of the result)",
        p50[6],
        p50[6] - p50[5],
        p50[7],
        p50[3] - p50[6] - p50[7]
    );
}
