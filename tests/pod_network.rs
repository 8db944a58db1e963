//! Pods that can talk, proven with real containers: the `prefixd agent` binary in an emulated
//! instance's namespace (discovering itself through that instance's IMDS, calling the mock's
//! EC2 inside it), containerd starting busybox containers with `ctr run --cni` and deploy/'s
//! conflist (`prefixd-cni` as the main plugin, then portmap), and the emulated VPC judging every
//! packet as EC2 does (the source/destination check per ENI, the internet gateway).
//!
//! Every check has its failure next to it: a rule deleted by hand makes the same ping fail and
//! the drop counted; the node-port reply stripped of its mark is dropped; a node with
//! `AWS_VPC_K8S_CNI_EXTERNALSNAT=true` cannot reach the internet through an internet gateway.
//! Root only; these tests fail, never skip, when they cannot run.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::containerd::{Containerd, busybox_rootfs};
use common::node::{NodeAgent, cni_dirs, diff, snapshot};
use common::vpc::{Vpc, sh, sh_ok, tcp_echo};
use prefixd::core::Prefix28;
use prefixd::hostnet::pod::host_veth_name;

/// Two t3.nano nodes: two ENIs of one /28 slot each, so that a node's second prefix is on its
/// second ENI.
const SCENARIO: &str = r#"{
  "vpcs": [{ "cidr": "10.0.0.0/16", "subnets": [{ "name": "nodes", "cidr": "10.0.0.0/20" }] }],
  "instances": [
    { "name": "node-a", "type": "t3.nano", "subnet": "nodes" },
    { "name": "node-b", "type": "t3.nano", "subnet": "nodes" }
  ],
  "dataplane": { "hotplug_delay": "300ms" }
}"#;

/// RECONCILE_INTERVAL of these tests.
const INTERVAL: Duration = Duration::from_secs(3);

/// An emulated node: its agent, its containerd, a busybox rootfs.
struct Node {
    name: String,
    netns: String,
    agent: NodeAgent,
    ctr: Containerd,
    rootfs: PathBuf,
    _dir: tempfile::TempDir,
}

static EXEC: AtomicU32 = AtomicU32::new(0);

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Node {
    /// The agent started and ready with both ENIs configured; the CNI directories installed by
    /// `prefixd install-cni` run in the node's namespace (with `--node-sysctls` when `init`,
    /// as the DaemonSet's privileged init container does; without it the agent sets them).
    fn start(vpc: &Vpc, name: &str, settings: &[(&str, &str)], init: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let netns = vpc.netns(name);
        let endpoint = vpc.topology.instances[&vpc.id(name)].endpoint.clone();
        let mut all = vec![
            ("RECONCILE_INTERVAL", "3s"),
            ("WARM_PREFIX_TARGET", "2"),
            ("IP_COOLDOWN_PERIOD", "60s"),
        ];
        all.extend_from_slice(settings);
        let mut agent = NodeAgent::start(&netns, &endpoint, &dir.path().join("agent"), &all);
        // The init step reads the address families as the DaemonSet's init container does.
        let families: Vec<(&str, &str)> = settings
            .iter()
            .copied()
            .filter(|(k, _)| k.starts_with("ENABLE_IPv"))
            .collect();
        let (conf, bin) = cni_dirs(
            &dir.path().join("cni"),
            &agent.socket(),
            &netns,
            init,
            &families,
        );
        agent.wait_ready(Duration::from_secs(60));
        let node = Self {
            name: name.to_owned(),
            netns: netns.clone(),
            ctr: Containerd::start(&netns, &conf, &bin),
            rootfs: busybox_rootfs(dir.path()),
            agent,
            _dir: dir,
        };
        // t3.nano's ENIs hold one /28 each: WARM_PREFIX_TARGET=2 takes a second ENI. An
        // IPv6-only node keeps no warm pool, and larger types fit both /28s on the primary.
        let v6_only = settings.contains(&("ENABLE_IPv4", "false"));
        let nano = vpc
            .account
            .read(|m| m.instances[&vpc.id(name)].itype.name == "t3.nano");
        node.wait_enis(if nano && !v6_only { 2 } else { 1 });
        node
    }

    /// Waits until the agent lists `n` ENIs (each configured before it is listed).
    fn wait_enis(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let enis: serde_json::Value =
                serde_json::from_str(&self.agent.get("/v1/enis")).unwrap();
            if enis.as_array().map_or(0, Vec::len) >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {n} ENIs not listed: {enis}\n{}",
                self.name,
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A container running a TCP echo on port 7; returns its address (read inside it).
    fn pod(&self, id: &str) -> Ipv4Addr {
        self.run_pod(id);
        self.addr4(id)
    }

    fn run_pod(&self, id: &str) {
        if let Err(out) = self.ctr.run_detached(
            &self.rootfs,
            id,
            &["/bin/busybox", "nc", "-ll", "-p", "7", "-e", "/bin/cat"],
        ) {
            ok(
                &out,
                &format!("ctr run {id}\n{}\n{}", self.ctr.log(), self.agent.log()),
            );
            panic!("ctr run {id} ended");
        }
    }

    /// The container's IPv4 address on eth0 (a /32).
    fn addr4(&self, id: &str) -> Ipv4Addr {
        let out = ok(
            &self.exec(id, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]),
            "ip addr in the container",
        );
        let cidr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap_or_else(|| panic!("no address in {out}"));
        assert!(cidr.ends_with("/32"), "the pod's address is a /32: {out}");
        cidr.trim_end_matches("/32").parse().unwrap()
    }

    /// The container's global IPv6 address on eth0 (a /128).
    fn addr6(&self, id: &str) -> Ipv6Addr {
        let out = ok(
            &self.exec(
                id,
                &[
                    "ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global",
                ],
            ),
            "ip -6 addr in the container",
        );
        let cidr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .unwrap_or_else(|| panic!("no IPv6 address in {out}"));
        assert!(cidr.ends_with("/128"), "the pod's address is a /128: {out}");
        cidr.trim_end_matches("/128").parse().unwrap()
    }

    fn ping6(&self, id: &str, dst: Ipv6Addr) -> bool {
        self.exec(id, &["ping6", "-c1", "-W2", &dst.to_string()])
            .status
            .success()
    }

    fn exec(&self, id: &str, cmd: &[&str]) -> Output {
        let n = EXEC.fetch_add(1, Ordering::Relaxed);
        let mut full = vec!["/bin/busybox"];
        full.extend_from_slice(cmd);
        self.ctr.exec(id, &format!("x{n}"), &full)
    }

    fn ping(&self, id: &str, dst: Ipv4Addr) -> bool {
        self.exec(id, &["ping", "-c1", "-W2", &dst.to_string()])
            .status
            .success()
    }

    /// A TCP echo from the container to `dst`.
    fn echo(&self, id: &str, dst: SocketAddr) -> bool {
        let out = self.exec(
            id,
            &[
                "sh",
                "-c",
                &format!(
                    "(echo prefixd; sleep 1) | nc -w 3 {} {}",
                    dst.ip(),
                    dst.port()
                ),
            ],
        );
        String::from_utf8_lossy(&out.stdout).contains("prefixd")
    }

    /// Kills the container; its ctr runs the CNI DEL, which must succeed.
    fn remove(&self, id: &str) {
        let out = self.ctr.remove(id);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("ctr:") && !err.to_lowercase().contains("fail"),
            "removing {id}: {err}"
        );
    }

    /// Waits until every allocation has its `to` rule.
    fn wait_rules(&self) {
        let deadline = Instant::now() + INTERVAL + Duration::from_secs(2);
        loop {
            let held: serde_json::Value =
                serde_json::from_str(&self.agent.get("/v1/allocations")).unwrap();
            let rules = self.rules();
            let missing: Vec<&str> = held
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["address"].as_str().unwrap())
                .filter(|a| !rules.contains(&format!("512:\tfrom all to {a} lookup main")))
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no rules for {missing:?}: {rules}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (briefly: it is counted right after the repair) for a counter to reach 1.
    fn wait_metric(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.agent.metric(name) < 1.0 {
            assert!(
                Instant::now() < deadline,
                "{name} stayed 0:\n{}",
                self.agent.metrics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn rules(&self) -> String {
        sh_ok(&self.netns, "ip rule")
    }
}

/// The ENI (id) whose prefixes hold `a`, and whether it is its instance's primary.
fn eni_of(vpc: &Vpc, a: Ipv4Addr) -> (String, bool) {
    vpc.account.read(|m| {
        let e = m
            .enis
            .values()
            .find(|e| e.prefixes.iter().any(|p| p.contains(a)))
            .unwrap_or_else(|| panic!("no ENI holds {a}"));
        let primary = m.instances.values().any(|i| i.primary_eni == e.id);
        (e.id.clone(), primary)
    })
}

fn primary_of(vpc: &Vpc, name: &str) -> (String, Ipv4Addr) {
    let id = vpc.id(name);
    vpc.account.read(|m| {
        let e = &m.enis[&m.instances[&id].primary_eni];
        (e.id.clone(), e.primary_ip)
    })
}

/// Fills the pool after `a` (ADDs over the socket, as a plugin would) until an address lands in
/// another prefix: from then on, containers get addresses of the other /28.
async fn fill_prefix(node: &Node, a: Ipv4Addr) -> usize {
    let p = Prefix28::containing(a);
    for i in 0..20 {
        let r = common::add(&node.agent.socket(), &format!("fill-{i}"), 20_000).await;
        let got = r
            .address
            .unwrap_or_else(|| panic!("fill ADD: {:?}", r.error));
        if !p.contains(got) {
            return i + 1;
        }
    }
    panic!("20 ADDs did not leave {p}");
}

/// Runs blocking work (ctr, ping) on this runtime thread; the VPC's services keep running on
/// the other.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_both_enis_reach_the_peer_the_internet_each_other_and_node_ports() {
    let vpc = Vpc::start(SCENARIO).await;
    let peer: Ipv4Addr = vpc.topology.peer.address.parse().unwrap();
    let peer_echo = SocketAddr::from((peer, vpc.topology.peer.tcp_echo_port));
    let internet: Ipv4Addr = vpc.topology.internet.address.parse().unwrap();
    let inet_echo = SocketAddr::from((internet, vpc.topology.internet.tcp_echo_port));
    let (eni_a1, node_a_ip) = primary_of(&vpc, "node-a");
    let a = blocking(|| Node::start(&vpc, "node-a", &[], true));
    // node-b leaves SNAT to a NAT gateway; this VPC has only an internet gateway.
    let b = blocking(|| {
        Node::start(
            &vpc,
            "node-b",
            &[("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true")],
            false,
        )
    });

    // The node: both ENIs' links configured, the sysctls set (by the init step on node-a, by
    // the agent itself on node-b).
    for n in [&a, &b] {
        let rules = n.rules();
        assert!(rules.contains("32765:"), "{}: {rules}", n.name);
        assert!(
            rules.contains("1024:\tfrom all fwmark 0x80/0x80 lookup main"),
            "{rules}"
        );
        assert_eq!(
            sh_ok(&n.netns, "cat /proc/sys/net/ipv4/conf/eth0/rp_filter").trim(),
            "2"
        );
        let t2 = sh_ok(&n.netns, "ip route show table 2");
        assert!(t2.contains("default via 10.0.0.1 dev"), "{}: {t2}", n.name);
        assert!(sh_ok(&n.netns, "nft list table ip prefixd").contains("chain pod_mark"));
    }
    let snat_a = sh_ok(&a.netns, "nft list table ip prefixd");
    assert!(snat_a.contains(&format!("snat to {node_a_ip}")), "{snat_a}");
    assert!(
        !sh_ok(&b.netns, "nft list table ip prefixd").contains("snat to"),
        "EXTERNALSNAT=true: no SNAT on node-b"
    );

    // One container, the rest of its /28 filled, another container: the second /28 is on the
    // other ENI.
    let addr1 = blocking(|| a.pod("c1"));
    fill_prefix(&a, addr1).await;
    let addr2 = blocking(|| a.pod("c2"));
    let (eni1, primary1) = eni_of(&vpc, addr1);
    let (eni2, primary2) = eni_of(&vpc, addr2);
    assert_ne!(eni1, eni2);
    assert!(
        primary1 ^ primary2,
        "one pod on the primary ENI, one on the secondary: {addr1} on {eni1}, {addr2} on {eni2}"
    );
    let (sec_pod, sec_addr, sec_eni) = if primary2 {
        ("c1", addr1, eni1.clone())
    } else {
        ("c2", addr2, eni2.clone())
    };
    let rules = a.rules();
    assert!(
        rules.contains(&format!("512:\tfrom all to {addr1} lookup main")),
        "{rules}"
    );
    assert!(
        rules.contains(&format!("1536:\tfrom {sec_addr} lookup 2")),
        "the secondary ENI's pod has its from-rule: {rules}"
    );
    // The host end carries the VPC CNI's name (Calico finds it); ctr gives no pod, so the hash
    // is of the container id it passes (`NAMESPACE-ID`).
    let links = sh_ok(&a.netns, "ip -o link show");
    assert!(
        links.contains(&host_veth_name("eni", "", "", "default-c1")),
        "{links}"
    );

    // 1. Both reach the peer, by ping and TCP, and nothing is dropped.
    blocking(|| {
        for (id, addr) in [("c1", addr1), ("c2", addr2)] {
            assert!(a.ping(id, peer), "{id} ({addr}) pings the peer");
            assert!(
                a.echo(id, peer_echo),
                "{id} ({addr}) TCP echo with the peer"
            );
        }
    });
    assert_eq!(vpc.drops(Some(&eni1)).await, 0, "drops on {eni1}");
    assert_eq!(vpc.drops(Some(&eni2)).await, 0, "drops on {eni2}");

    // 2. Both reach the internet, SNATed to node-a's primary address.
    blocking(|| {
        for (id, addr) in [("c1", addr1), ("c2", addr2)] {
            assert!(a.ping(id, internet), "{id} ({addr}) pings the internet");
            assert!(a.echo(id, inet_echo), "{id} TCP echo with the internet");
            let ct = sh_ok(
                &a.netns,
                &format!("conntrack -L -s {addr} -d {internet} 2>/dev/null"),
            );
            assert!(
                ct.contains(&format!("dst={node_a_ip}")) && ct.contains("mark=128"),
                "{id}'s flows are SNATed to {node_a_ip} and marked: {ct}"
            );
        }
    });
    assert_eq!(vpc.drops(Some(&eni_a1)).await, 0);

    // node-b (EXTERNALSNAT=true) reaches the peer, not the internet: the gateway drops it.
    let addr_b = blocking(|| b.pod("d1"));
    let igw_before = vpc.drops(None).await;
    blocking(|| {
        assert!(b.ping("d1", peer), "d1 pings the peer");
        assert!(!b.ping("d1", internet), "unSNATed d1 reaches the internet");
    });
    assert!(
        vpc.drops(None).await > igw_before,
        "the internet gateway counted d1's packets"
    );

    // 3. Pods on one node reach each other; pods on two nodes reach each other (into the
    // secondary ENI too).
    blocking(|| {
        assert!(a.ping("c1", addr2) && a.ping("c2", addr1), "c1 <-> c2");
        assert!(a.echo("c1", SocketAddr::from((addr2, 7))), "c1 -> c2 TCP");
        assert!(a.ping("c1", addr_b) && b.ping("d1", addr1), "c1 <-> d1");
        assert!(
            b.ping("d1", sec_addr),
            "d1 -> {sec_pod} on node-a's secondary ENI"
        );
        assert!(
            b.echo("d1", SocketAddr::from((sec_addr, 7))),
            "d1 -> {sec_pod} TCP"
        );
    });
    assert_eq!(vpc.drops(Some(&sec_eni)).await, 0);

    // 4. A NodePort as kube-proxy's nftables mode makes it (DNAT at dstnat, no masquerade:
    // externalTrafficPolicy=Local), to the pod on the secondary ENI, from a client in the
    // subnet: the reply leaves through the primary ENI because the connection is marked.
    sh_ok(
        &a.netns,
        &format!(
            "nft add table ip kptest && \
             nft 'add chain ip kptest pre {{ type nat hook prerouting priority dstnat; }}' && \
             nft add rule ip kptest pre tcp dport 30007 fib daddr type local dnat to {sec_addr}:7"
        ),
    );
    let node_port = SocketAddr::from((node_a_ip, 30007));
    let peer_ns = vpc.topology.peer.netns.clone();
    assert!(
        blocking(|| tcp_echo(&peer_ns, peer, node_port)),
        "peer -> node-a:30007 -> {sec_pod}"
    );
    assert_eq!(vpc.drops(Some(&sec_eni)).await, 0);
    // The control: the same reply without the mark leaves through the secondary ENI with the
    // node's address, and EC2 drops it.
    sh_ok(
        &a.netns,
        &format!(
            "nft 'add chain ip kptest strip {{ type filter hook prerouting priority -80; }}' && \
             nft add rule ip kptest strip ip saddr {sec_addr} meta mark set 0"
        ),
    );
    assert!(
        !blocking(|| tcp_echo(&peer_ns, peer, node_port)),
        "an unmarked node-port reply got through"
    );
    assert!(
        vpc.drops(Some(&sec_eni)).await > 0,
        "the unmarked reply is dropped on {sec_eni}"
    );
    sh_ok(&a.netns, "nft delete chain ip kptest strip");
    assert!(blocking(|| tcp_echo(&peer_ns, peer, node_port)));

    blocking(|| {
        a.remove("c1");
        a.remove("c2");
        b.remove("d1");
    });
    drop((a, b));
    vpc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_rule_comes_back_restarts_restore_and_nothing_is_left_behind() {
    let vpc = Vpc::start(SCENARIO).await;
    let peer: Ipv4Addr = vpc.topology.peer.address.parse().unwrap();
    let (eni_primary, _) = primary_of(&vpc, "node-a");
    let mut a = blocking(|| Node::start(&vpc, "node-a", &[], true));
    // A first container comes and goes, so that what portmap's first DEL leaves (iptables-nft
    // tables) is in the picture before it is taken.
    blocking(|| {
        ok(
            &a.ctr.run(&a.rootfs, "warmup", &["/bin/busybox", "true"]),
            &format!("ctr run --rm warmup\n{}", a.ctr.log()),
        )
    });
    let first = blocking(|| a.pod("c1"));
    fill_prefix(&a, first).await;
    blocking(|| a.remove("c1"));
    // The fill's allocations have no pod: the agent gives them their rules at its next pass.
    blocking(|| a.wait_rules());
    let before = blocking(|| snapshot(&a.netns));

    let x = blocking(|| a.pod("c2"));
    let y = blocking(|| a.pod("c3"));
    let (eni_x, primary_x) = eni_of(&vpc, x);
    assert!(!primary_x, "{x} is on the secondary ENI");
    let rule = format!("1536:\tfrom {x} lookup 2");
    assert!(a.rules().contains(&rule));
    assert!(blocking(|| a.ping("c2", peer)));

    // 5. The from-rule deleted by hand: c2's packets leave through the primary ENI, which does
    // not hold its address, and are dropped; the agent puts the rule back within an interval.
    let dropped = vpc.drops(Some(&eni_primary)).await;
    sh_ok(
        &a.netns,
        &format!("ip rule del from {x} lookup 2 pref 1536"),
    );
    let deleted = Instant::now();
    assert!(
        !blocking(|| a.ping("c2", peer)),
        "c2 reached the peer without its rule"
    );
    assert!(
        vpc.drops(Some(&eni_primary)).await > dropped,
        "the wrong-ENI packets are counted on {eni_primary}"
    );
    blocking(|| {
        while !a.rules().contains(&rule) {
            assert!(
                deleted.elapsed() < INTERVAL + Duration::from_secs(2),
                "the rule was not restored within {INTERVAL:?}\n{}",
                a.agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert!(blocking(|| a.ping("c2", peer)), "c2 reaches the peer again");
    assert_eq!(vpc.drops(Some(&eni_x)).await, 0);
    blocking(|| a.wait_metric("prefixd_host_repairs_total{object=\"rule\",action=\"restored\"}"));
    // The same for the SNAT table.
    sh_ok(&a.netns, "nft delete table ip prefixd");
    let gone = Instant::now();
    blocking(|| {
        while sh(&a.netns, "nft list table ip prefixd").status.code() != Some(0) {
            assert!(
                gone.elapsed() < INTERVAL + Duration::from_secs(2),
                "nft table not restored"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    blocking(|| a.wait_metric("prefixd_host_repairs_total{object=\"nft\",action=\"restored\"}"));

    // 6. DEL with the agent stopped: the pod's wiring goes, the release waits on disk.
    blocking(|| a.agent.stop());
    let veth_y = host_veth_name("eni", "", "", "default-c3");
    blocking(|| a.remove("c3"));
    let links = sh_ok(&a.netns, "ip -o link show");
    assert!(!links.contains(&veth_y), "c3's host end is gone: {links}");
    let rules = a.rules();
    assert!(
        !rules.contains(&format!("{y} ")) && !rules.contains(&format!("{y}\n")),
        "c3's rules ({y}) are gone: {rules}\n{}",
        a.ctr.log()
    );
    let pending = a.agent.dir.join("pending-release");
    assert_eq!(std::fs::read_dir(&pending).unwrap().count(), 1);
    // The node loses every pod rule while the agent is down; the restart restores them.
    for pref in [512, 1536] {
        while sh(&a.netns, &format!("ip rule del pref {pref}"))
            .status
            .success()
        {}
    }
    assert!(!a.rules().contains("512:"));
    blocking(|| {
        a.agent.restart();
        a.agent.wait_ready(Duration::from_secs(60));
    });
    assert_eq!(
        std::fs::read_dir(&pending).unwrap().count(),
        0,
        "the recorded release was taken"
    );
    let allocations = a.agent.get("/v1/allocations");
    assert!(
        !allocations.contains(&format!("\"{y}\"")),
        "{y} released: {allocations}"
    );
    let rules = a.rules();
    assert!(rules.contains(&rule), "c2's from-rule restored: {rules}");
    let held: serde_json::Value = serde_json::from_str(&allocations).unwrap();
    for h in held.as_array().unwrap() {
        let addr = h["address"].as_str().unwrap();
        assert!(
            rules.contains(&format!("512:\tfrom all to {addr} lookup main")),
            "{addr}'s rule restored: {rules}"
        );
    }
    assert!(blocking(|| a.ping("c2", peer)));

    // And once the containers are gone, the node is as it was.
    blocking(|| a.remove("c2"));
    let after = blocking(|| snapshot(&a.netns));
    let (added, removed) = diff(&before, &after);
    assert!(
        added.is_empty() && removed.is_empty(),
        "left behind: {added:#?}\nmissing: {removed:#?}"
    );
    drop(a);
    vpc.stop().await;
}

/// Two nodes on a subnet with IPv6: one IPv6-only (as EKS runs IPv6 clusters), one dual-stack.
const SCENARIO6: &str = r#"{
  "vpcs": [{ "cidr": "10.0.0.0/16", "ipv6": true,
             "subnets": [{ "name": "nodes", "cidr": "10.0.0.0/20", "ipv6": true }] }],
  "instances": [
    { "name": "node-6", "type": "t3.small", "subnet": "nodes" },
    { "name": "node-dual", "type": "t3.small", "subnet": "nodes" }
  ],
  "dataplane": { "hotplug_delay": "300ms" }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_only_and_dual_stack_pods_reach_the_peer_and_ipv4_through_the_egress_interface() {
    use prefixd::hostnet::egress;
    let vpc = Vpc::start(SCENARIO6).await;
    let peer4: Ipv4Addr = vpc.topology.peer.address.parse().unwrap();
    let peer6: Ipv6Addr = vpc
        .topology
        .peer
        .address6
        .parse()
        .unwrap_or_else(|_| panic!("the peer has an IPv6 address: {:?}", vpc.topology.peer));
    let internet: Ipv4Addr = vpc.topology.internet.address.parse().unwrap();
    let internet6: Ipv6Addr = vpc.topology.internet.address6.parse().unwrap();
    let inet_echo = SocketAddr::from((internet, vpc.topology.internet.tcp_echo_port));
    let (eni6, node6_ip) = primary_of(&vpc, "node-6");
    let (eni_dual, _) = primary_of(&vpc, "node-dual");
    let six = blocking(|| {
        Node::start(
            &vpc,
            "node-6",
            &[("ENABLE_IPv4", "false"), ("ENABLE_IPv6", "true")],
            true,
        )
    });
    let dual = blocking(|| Node::start(&vpc, "node-dual", &[("ENABLE_IPv6", "true")], false));

    // The nodes forward IPv6 and keep the router's advertisements (set by the init step on
    // node-6, by the agent on node-dual); each has one /80 on its primary ENI.
    for n in [&six, &dual] {
        assert_eq!(
            sh_ok(&n.netns, "cat /proc/sys/net/ipv6/conf/all/forwarding").trim(),
            "1",
            "{}",
            n.name
        );
        assert_eq!(
            sh_ok(&n.netns, "cat /proc/sys/net/ipv6/conf/eth0/accept_ra").trim(),
            "2",
            "{}",
            n.name
        );
    }
    let slash80 = |eni: &str| {
        vpc.account.read(|m| {
            let p = &m.enis[eni].ipv6_prefixes;
            assert_eq!(p.len(), 1, "one /80 on {eni}: {p:?}");
            p[0].to_ipnet()
        })
    };
    let p6 = slash80(&eni6);
    let p_dual = slash80(&eni_dual);

    // An IPv6-only container: a /128 of the /80, rule 512, an IPv4 egress interface.
    blocking(|| six.run_pod("s1"));
    let s1 = blocking(|| six.addr6("s1"));
    assert!(p6.contains(&s1), "{s1} in {p6}");
    let e1 = egress::egress_address(s1).unwrap();
    let v4if = ok(
        &blocking(|| six.exec("s1", &["ip", "-o", "-4", "addr", "show"])),
        "ip -4 addr in s1",
    );
    assert!(
        v4if.contains(&format!("v4if0    inet {e1}/32"))
            || v4if.contains(&format!("v4if0 inet {e1}/32")),
        "s1's only IPv4 address is {e1} on v4if0: {v4if}"
    );
    assert!(!v4if.contains("eth0"), "no IPv4 on s1's eth0: {v4if}");
    let rules6 = sh_ok(&six.netns, "ip -6 rule");
    assert!(
        rules6.contains(&format!("512:\tfrom all to {s1} lookup main")),
        "{rules6}"
    );
    let snat = sh_ok(&six.netns, "nft list table ip prefixd");
    assert!(
        snat.contains("chain egress_v4") && snat.contains(&format!("snat to {node6_ip}")),
        "{snat}"
    );

    // 1. IPv6 to the peer (ping, TCP) and to the internet, with nothing dropped.
    blocking(|| {
        assert!(six.ping6("s1", peer6), "s1 ({s1}) pings the peer's {peer6}");
        assert!(
            six.echo("s1", SocketAddr::from((peer6, 7))),
            "s1 TCP echo with the peer over IPv6"
        );
        assert!(six.ping6("s1", internet6), "s1 pings {internet6}");
    });
    assert_eq!(vpc.drops(Some(&eni6)).await, 0, "drops on {eni6}");

    // 2. IPv4 through the egress interface, SNATed to node-6's address: to the internet (through
    // a gateway that drops every source but a primary address) and to the peer in the VPC.
    blocking(|| {
        assert!(six.ping("s1", internet), "s1 pings {internet} over IPv4");
        assert!(six.echo("s1", inet_echo), "s1 TCP echo with the internet");
        assert!(six.ping("s1", peer4), "s1 pings the peer's {peer4}");
        let ct = sh_ok(
            &six.netns,
            &format!("conntrack -L -s {e1} -d {internet} 2>/dev/null"),
        );
        assert!(
            ct.contains(&format!("dst={node6_ip}")),
            "s1's IPv4 flows are SNATed to {node6_ip}: {ct}"
        );
    });
    // The control: the same packets untracked, so never SNATed, leave with their 169.254.172.x
    // source, and EC2's source check drops them at the ENI.
    let before = vpc.drops(Some(&eni6)).await;
    sh_ok(
        &six.netns,
        "nft add table ip pxctl && \
         nft 'add chain ip pxctl raw { type filter hook prerouting priority raw; }' && \
         nft add rule ip pxctl raw ip saddr 169.254.172.0/22 notrack",
    );
    assert!(
        !blocking(|| six.ping("s1", internet)),
        "an unSNATed egress packet reached the internet"
    );
    assert!(
        vpc.drops(Some(&eni6)).await > before,
        "the source check counted it on {eni6}"
    );
    sh_ok(&six.netns, "nft delete table ip pxctl");
    assert!(blocking(|| six.ping("s1", internet)));

    // The control of the IPv6 source check: a source outside the ENI's /80 (the next /80 of
    // the subnet) is dropped and counted on the ENI.
    let outside = Ipv6Addr::from(u128::from(p6.network()) + (1u128 << 48));
    let mid = vpc.drops(Some(&eni6)).await;
    sh_ok(
        &six.netns,
        &format!("ip -6 addr add {outside}/128 dev eth0 nodad"),
    );
    assert!(
        !sh(
            &six.netns,
            &format!("busybox ping6 -c1 -W2 -I {outside} {peer6}")
        )
        .status
        .success(),
        "a source outside the /80 got through"
    );
    let wrong = vpc.drops(Some(&eni6)).await;
    assert!(wrong > mid, "the IPv6 source check counted it on {eni6}");
    sh_ok(
        &six.netns,
        &format!("ip -6 addr del {outside}/128 dev eth0"),
    );

    // 3. A dual-stack container: one address of each family in one result, both reach the peer,
    // no egress interface; IPv6 between the two nodes' pods.
    let d4 = blocking(|| dual.pod("d1"));
    let d6 = blocking(|| dual.addr6("d1"));
    assert!(p_dual.contains(&d6), "{d6} in {p_dual}");
    assert!(
        !blocking(|| dual.exec("d1", &["ip", "link", "show", "v4if0"]))
            .status
            .success(),
        "a dual-stack pod has no egress interface"
    );
    blocking(|| {
        assert!(dual.ping("d1", peer4), "d1 ({d4}) pings {peer4}");
        assert!(dual.ping6("d1", peer6), "d1 ({d6}) pings {peer6}");
        assert!(dual.echo("d1", SocketAddr::from((peer4, 7))));
        assert!(dual.echo("d1", SocketAddr::from((peer6, 7))));
        assert!(dual.ping6("d1", s1) && six.ping6("s1", d6), "d1 <-> s1");
    });
    assert_eq!(vpc.drops(Some(&eni_dual)).await, 0, "drops on {eni_dual}");
    assert_eq!(
        vpc.drops(Some(&eni6)).await,
        wrong,
        "no new drops on {eni6}"
    );
    let dual_rules = sh_ok(&dual.netns, "ip rule; ip -6 rule");
    for a in [d4.to_string(), d6.to_string()] {
        assert!(
            dual_rules.contains(&format!("512:\tfrom all to {a} lookup main")),
            "{dual_rules}"
        );
    }

    // 4. The IPv6 rule deleted by hand comes back within an interval.
    let rule = format!("512:\tfrom all to {s1} lookup main");
    sh_ok(&six.netns, &format!("ip -6 rule del to {s1} pref 512"));
    let deleted = Instant::now();
    blocking(|| {
        while !sh_ok(&six.netns, "ip -6 rule").contains(&rule) {
            assert!(
                deleted.elapsed() < INTERVAL + Duration::from_secs(2),
                "the IPv6 rule was not restored\n{}",
                six.agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    blocking(|| six.wait_metric("prefixd_host_repairs_total{object=\"rule\",action=\"restored\"}"));

    // 5. DEL takes both families' rules and the egress interface.
    let end = egress::host_end_name(&host_veth_name("eni", "", "", "default-s1"));
    assert!(sh_ok(&six.netns, "ip -o link show").contains(&end), "{end}");
    blocking(|| {
        six.remove("s1");
        dual.remove("d1");
    });
    let links = sh_ok(&six.netns, "ip -o link show");
    assert!(
        !links.contains(&end),
        "the egress host end is gone: {links}"
    );
    assert!(!sh_ok(&six.netns, "ip -6 rule").contains(&s1.to_string()));
    let dual_rules = sh_ok(&dual.netns, "ip rule; ip -6 rule");
    assert!(
        !dual_rules.contains(&format!("{d4} ")) && !dual_rules.contains(&d6.to_string()),
        "{dual_rules}"
    );
    drop((six, dual));
    vpc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_external_snat_the_nat_gateway_serves_the_pods() {
    let vpc = Vpc::start(&SCENARIO.replace(
        "\"hotplug_delay\": \"300ms\"",
        "\"hotplug_delay\": \"300ms\", \"egress\": \"nat-gateway\"",
    ))
    .await;
    let internet: Ipv4Addr = vpc.topology.internet.address.parse().unwrap();
    let a = blocking(|| {
        Node::start(
            &vpc,
            "node-a",
            &[("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true")],
            true,
        )
    });
    let addr = blocking(|| a.pod("c1"));
    blocking(|| {
        assert!(
            a.ping("c1", internet),
            "c1 reaches the internet through the NAT gateway"
        );
        let ct = sh_ok(
            &a.netns,
            &format!("conntrack -L -s {addr} -d {internet} 2>/dev/null"),
        );
        assert!(
            ct.contains(&format!("dst={addr}")),
            "not SNATed on the node: {ct}"
        );
        a.remove("c1");
    });
    drop(a);
    vpc.stop().await;
}

/// The SNAT table of every setting the kernel can meet loads into nftables and replaces itself
/// (in a namespace of the test's own); a broken script is refused there too.
#[test]
fn every_snat_table_loads_into_the_kernel() {
    use prefixd::core::settings::Values;
    use prefixd::hostnet::config::{HostConfig, SETTINGS};
    use prefixd::hostnet::{nft, snat};
    let scratch = common::node::ScratchNs::new("snat");
    let vpc: Vec<ipnet::Ipv4Net> = vec![
        "10.0.0.0/16".parse().unwrap(),
        "100.64.0.0/16".parse().unwrap(),
    ];
    for settings in [
        &[][..],
        &[("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true")][..],
        &[
            ("AWS_VPC_CNI_NODE_PORT_SUPPORT", "false"),
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "none"),
        ][..],
        &[
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "hashrandom"),
            (
                "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
                "192.168.0.0/16,10.0.5.0/24",
            ),
            ("AWS_VPC_K8S_CNI_CONNMARK", "0x4000"),
            ("AWS_VPC_K8S_CNI_VETHPREFIX", "cali"),
        ][..],
        // IPv6-only: the egress chain too, with and without the node's own SNAT.
        &[("ENABLE_IPv4", "false"), ("ENABLE_IPv6", "true")][..],
        &[
            ("ENABLE_IPv4", "false"),
            ("ENABLE_IPv6", "true"),
            ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true"),
        ][..],
    ] {
        let families = [
            prefixd::core::config::ENABLE_IPV4,
            prefixd::core::config::ENABLE_IPV6,
        ];
        let cfg = HostConfig::from_lookup(
            &Values::from_pairs(settings.iter().copied(), &[SETTINGS, &families], "agent").unwrap(),
        )
        .unwrap();
        let script = snat::render(&snat::SnatInputs {
            cfg: &cfg,
            primary_link: "eth0",
            primary_ip: "10.0.0.4".parse().unwrap(),
            vpc_cidrs: &vpc,
        });
        let listed = scratch
            .ns
            .run(|| {
                nft::apply(&script)?;
                nft::apply(&script)?;
                nft::list_text(&["list", "table", "ip", snat::TABLE])
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("{settings:?}: {e}\n{script}"));
        assert!(listed.contains("chain pod_mark"), "{listed}");
        assert_eq!(
            listed.contains("chain egress_snat"),
            !cfg.external_snat,
            "{listed}"
        );
        assert_eq!(
            listed.contains("ip saddr 169.254.172.0/22"),
            cfg.v4_egress_active(),
            "{listed}"
        );
    }
    // The control: the kernel (through nft) refuses what is not a table.
    let refused = scratch
        .ns
        .run(|| nft::apply("table ip prefixd { chain snat { } }"))
        .unwrap();
    assert!(refused.is_err());
}
