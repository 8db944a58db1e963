//! prefixd-cni under software written by others: Debian's containernetworking-plugins `ptp`
//! runs it as its IPAM plugin, from a node namespace and into pod namespaces this test creates,
//! against a running agent on the mock EC2 (its data plane off: the IPAM role). Needs root and /usr/lib/cni/ptp (`scripts/test-all` installs the package);
//! without them it fails and says why, never skips.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::node::ScratchNs;
use common::{start_agent, start_mock};
use serde_json::{Value, json};

const NODE: &str = r#"{
  "vpcs": [{ "cidr": "10.0.0.0/16", "subnets": [{ "name": "nodes", "cidr": "10.0.0.0/20" }] }],
  "instances": [{ "name": "node", "type": "m5.large", "subnet": "nodes" }]
}"#;

const PTP: &str = "/usr/lib/cni/ptp";

fn preconditions() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        uid, "0",
        "the ptp tests need root (network namespaces, veths); run them as root"
    );
    assert!(
        Path::new(PTP).exists(),
        "{PTP} is missing: install Debian's containernetworking-plugins (./scripts/test-all does)"
    );
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        ip.is_ok_and(|o| o.status.success()),
        "the `ip` command (iproute2) is missing"
    );
}

/// A pod's network namespace of this test's, deleted on drop.
struct Netns(ScratchNs);
impl Netns {
    fn new(tag: &str) -> Self {
        Self(ScratchNs::new(&format!("ptp_{tag}")))
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0.name)
    }
    fn addrs(&self) -> String {
        let o = Command::new("ip")
            .args(["-n", &self.0.name, "-4", "addr", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// A CNI_PATH holding our plugin and Debian's.
fn cni_path(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let link = bin.join("prefixd-cni");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_prefixd-cni"), &link).unwrap();
    format!("{}:/usr/lib/cni", bin.display())
}

/// Runs a plugin as a runtime on the node would: from the node's namespace (a scratch one of
/// this test's: ptp puts the host ends of its veths and their routes there, never on this
/// machine's own).
fn exec(
    node: &ScratchNs,
    plugin: &str,
    cmd: &str,
    conf: &Value,
    container: &str,
    netns: Option<&Netns>,
    path: &str,
) -> Output {
    let mut c = Command::new(plugin);
    c.env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", container)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", path)
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(n) = netns {
        c.env("CNI_NETNS", n.path());
    }
    let conf = conf.to_string();
    node.ns
        .run(move || {
            let mut child = c.spawn().unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(conf.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        })
        .unwrap()
}

fn ok_json(o: &Output, what: &str) -> Value {
    assert!(
        o.status.success(),
        "{what} failed: stdout {} stderr {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

fn address_of(result: &Value) -> Ipv4Addr {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ptp_with_prefixd_cni_in_real_network_namespaces() {
    preconditions();
    let mock = start_mock(NODE).await;
    let node = mock.id("node").unwrap().to_owned();
    let a = start_agent(&mock, &node, &[("IP_COOLDOWN_PERIOD", "1s")]).await;
    let work = tempfile::tempdir().unwrap();
    let node_ns = ScratchNs::new("ptp_node");
    let path = cni_path(work.path());
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "prefixd-test",
        "type": "ptp",
        "ipam": { "type": "prefixd-cni", "socket": a.socket, "timeout": "20s",
                  "prefix_length": 28, "routes": [] }
    });
    // The plugin calls block this worker; the agent runs on the other one and its pool thread.
    let (ns1, ns2) = (Netns::new("a"), Netns::new("b"));
    let r1 = ok_json(
        &exec(&node_ns, PTP, "ADD", &conf, "pod-a", Some(&ns1), &path),
        "ptp ADD pod-a",
    );
    let r2 = ok_json(
        &exec(&node_ns, PTP, "ADD", &conf, "pod-b", Some(&ns2), &path),
        "ptp ADD pod-b",
    );
    let (addrs1, addrs2) = (ns1.addrs(), ns2.addrs());
    let (ip1, ip2) = (address_of(&r1), address_of(&r2));
    assert_ne!(ip1, ip2, "two pods, two addresses");
    assert!(
        addrs1.contains(&format!("inet {ip1}/28")),
        "pod-a's eth0: {addrs1}"
    );
    assert!(
        addrs2.contains(&format!("inet {ip2}/28")),
        "pod-b's eth0: {addrs2}"
    );
    // Both lie in prefixes attached to the node in EC2.
    let prefixes: Vec<prefixd::core::Prefix28> = mock.with_model(|m| {
        m.enis_of(&node)
            .iter()
            .flat_map(|e| e.prefixes.clone())
            .collect()
    });
    for ip in [ip1, ip2] {
        assert!(
            prefixes.iter().any(|p| p.contains(ip)),
            "{ip} is not in an attached prefix"
        );
    }
    let held = |k: &str| {
        let key = prefixd::core::PodKey::new("prefixd-test", k, "eth0").unwrap();
        let s = a.socket.clone();
        move || {
            prefixd::ipc::call(
                &s,
                prefixd::ipc::Op::Check { key },
                std::time::Duration::from_secs(5),
            )
            .unwrap()
            .address
        }
    };
    assert_eq!(
        tokio::task::spawn_blocking(held("pod-a")).await.unwrap(),
        Some(ip1)
    );

    // CHECK through ptp, with the ADD result as prevResult.
    let mut check = conf.clone();
    check["prevResult"] = r1.clone();
    let o = exec(&node_ns, PTP, "CHECK", &check, "pod-a", Some(&ns1), &path);
    ok_json(&o, "ptp CHECK pod-a");

    // DEL: the address leaves the namespace and the agent frees it; DEL again succeeds.
    ok_json(
        &exec(&node_ns, PTP, "DEL", &conf, "pod-a", Some(&ns1), &path),
        "ptp DEL pod-a",
    );
    assert!(
        !ns1.addrs().contains(&ip1.to_string()),
        "pod-a still has {ip1}: {}",
        ns1.addrs()
    );
    assert_eq!(
        tokio::task::spawn_blocking(held("pod-a")).await.unwrap(),
        None
    );
    ok_json(
        &exec(&node_ns, PTP, "DEL", &conf, "pod-a", Some(&ns1), &path),
        "second DEL pod-a",
    );
    // CHECK of the released attachment is an error (the plugin alone: ptp would stop at the
    // missing interface first).
    let o = exec(
        &node_ns,
        env!("CARGO_BIN_EXE_prefixd-cni"),
        "CHECK",
        &conf,
        "pod-a",
        Some(&ns1),
        &path,
    );
    assert!(!o.status.success());
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["code"], 3, "{e}");

    // GC (spec 1.1, the plugin as the runtime calls it): pod-b is valid, pod-c is not.
    let conf11 = {
        let mut c = conf.clone();
        c["cniVersion"] = json!("1.1.0");
        c
    };
    let ns3 = Netns::new("c");
    let r3 = ok_json(
        &exec(
            &node_ns,
            env!("CARGO_BIN_EXE_prefixd-cni"),
            "ADD",
            &conf11,
            "pod-c",
            Some(&ns3),
            &path,
        ),
        "ADD pod-c",
    );
    assert!(r3["ips"][0]["address"].as_str().is_some());
    let mut gc = conf11.clone();
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": "pod-b", "ifname": "eth0" }]);
    ok_json(
        &exec(
            &node_ns,
            env!("CARGO_BIN_EXE_prefixd-cni"),
            "GC",
            &gc,
            "",
            None,
            &path,
        ),
        "GC",
    );
    assert_eq!(
        tokio::task::spawn_blocking(held("pod-c")).await.unwrap(),
        None,
        "GC released pod-c"
    );
    assert_eq!(
        tokio::task::spawn_blocking(held("pod-b")).await.unwrap(),
        Some(ip2),
        "GC kept pod-b"
    );

    // STATUS: fine while the agent runs, error 50 once it is gone.
    ok_json(
        &exec(
            &node_ns,
            env!("CARGO_BIN_EXE_prefixd-cni"),
            "STATUS",
            &conf11,
            "",
            None,
            &path,
        ),
        "STATUS",
    );
    ok_json(
        &exec(&node_ns, PTP, "DEL", &conf, "pod-b", Some(&ns2), &path),
        "ptp DEL pod-b",
    );
    a.agent.shutdown().await.unwrap();
    let o = exec(
        &node_ns,
        env!("CARGO_BIN_EXE_prefixd-cni"),
        "STATUS",
        &conf11,
        "",
        None,
        &path,
    );
    assert!(!o.status.success());
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["code"], 50, "{e}");
    // ADD with the agent gone: try again later.
    let o = exec(
        &node_ns,
        env!("CARGO_BIN_EXE_prefixd-cni"),
        "ADD",
        &conf,
        "pod-d",
        Some(&ns3),
        &path,
    );
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["code"], 11, "{e}");
    drop((ns1, ns2, ns3));
}
