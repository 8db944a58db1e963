//! The emulated VPC (`prefixd mock-ec2 --dataplane`) judges packets as EC2 does: proved with
//! namespaces configured by hand (plain `ip` and `nft` commands, no plugin), with hot-plugged
//! links, with a teardown that leaves nothing, and with containerd running a container on it.
//! Root only; these tests fail, never skip, when they cannot run.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::vpc::{Vpc, host_state, ping, sh_ok, tcp_echo, wait_link};
use common::{containerd::Containerd, sdk_client};
use prefixd::core::Prefix28;

const SCENARIO: &str = r#"{
  "vpcs": [{ "cidr": "10.0.0.0/16", "subnets": [{ "name": "nodes", "cidr": "10.0.0.0/20" }] }],
  "instances": [{ "name": "node", "type": "m5.large", "subnet": "nodes" }],
  "dataplane": { "hotplug_delay": "300ms" }
}"#;

fn primary(vpc: &Vpc, name: &str) -> (String, Ipv4Addr) {
    let id = vpc.id(name);
    vpc.account.read(|m| {
        let eni = &m.enis[&m.instances[&id].primary_eni];
        (eni.id.clone(), eni.primary_ip)
    })
}

/// Assigns one prefix to `eni` through the SDK (over HTTP, as the agent would).
async fn assign_prefix(ec2: &aws_sdk_ec2::Client, eni: &str) -> Prefix28 {
    ec2.assign_private_ip_addresses()
        .network_interface_id(eni)
        .ipv4_prefix_count(1)
        .send()
        .await
        .unwrap()
        .assigned_ipv4_prefixes()[0]
        .ipv4_prefix()
        .unwrap()
        .parse()
        .unwrap()
}

/// Creates an ENI with one prefix and attaches it at `device_index`: (id, MAC, primary, prefix,
/// attachment).
async fn second_eni(
    ec2: &aws_sdk_ec2::Client,
    vpc: &Vpc,
    device_index: i32,
) -> (String, String, Ipv4Addr, Prefix28, String) {
    let subnet = vpc.id("nodes");
    let created = ec2
        .create_network_interface()
        .subnet_id(&subnet)
        .ipv4_prefix_count(1)
        .send()
        .await
        .unwrap();
    let ni = created.network_interface().unwrap();
    let id = ni.network_interface_id().unwrap().to_owned();
    let mac = ni.mac_address().unwrap().to_owned();
    let ip: Ipv4Addr = ni.private_ip_address().unwrap().parse().unwrap();
    let prefix: Prefix28 = ni.ipv4_prefixes()[0]
        .ipv4_prefix()
        .unwrap()
        .parse()
        .unwrap();
    let att = ec2
        .attach_network_interface()
        .network_interface_id(&id)
        .instance_id(vpc.id("node"))
        .device_index(device_index)
        .send()
        .await
        .unwrap()
        .attachment_id()
        .unwrap()
        .to_owned();
    (id, mac, ip, prefix, att)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_are_judged_as_ec2_judges_them() {
    let vpc = Vpc::start(SCENARIO).await;
    let ec2 = sdk_client(&vpc.server.endpoint());
    let node = vpc.netns("node");
    let (eni1, node_ip) = primary(&vpc, "node");
    let peer: Ipv4Addr = vpc.topology.peer.address.parse().unwrap();
    let peer_echo = SocketAddr::from((peer, vpc.topology.peer.tcp_echo_port));
    let internet: Ipv4Addr = vpc.topology.internet.address.parse().unwrap();

    let p1 = assign_prefix(&ec2, &eni1).await;
    let (eni2, mac2, eni2_ip, p2, _) = second_eni(&ec2, &vpc, 1).await;
    let link2 = wait_link(&node, &mac2, Duration::from_secs(5)).expect("the ENI's link appears");
    let l2 = &link2.name;

    // A pod-like address from the primary ENI's prefix, routed out eth0: it reaches the peer.
    let a = p1.addr(1);
    sh_ok(&node, &format!("ip addr add {a}/32 dev lo"));
    assert!(ping(&node, a, peer), "{a} → peer by ping");
    assert!(tcp_echo(&node, a, peer_echo), "{a} → peer by TCP echo");
    assert_eq!(vpc.drops(Some(&eni1)).await, 0);

    // The same source sent out through the second ENI's link: dropped, and counted on it.
    sh_ok(
        &node,
        &format!(
            "ip link set {l2} up && ip addr add {eni2_ip}/20 dev {l2} noprefixroute && \
             ip route add default via 10.0.0.1 dev {l2} onlink table 100 && \
             ip rule add from {a} lookup 100 pref 100"
        ),
    );
    let before = vpc.drops(Some(&eni2)).await;
    assert!(
        !ping(&node, a, peer),
        "the source check lets {a} out of the wrong ENI"
    );
    assert!(
        vpc.drops(Some(&eni2)).await > before,
        "the drop is counted on {eni2}"
    );
    sh_ok(&node, &format!("ip rule del from {a} lookup 100 pref 100"));

    // An address from the second ENI's prefix, policy-routed out through its link: it reaches
    // the peer with no drop.
    let b = p2.addr(1);
    sh_ok(
        &node,
        &format!("ip addr add {b}/32 dev lo && ip rule add from {b} lookup 100 pref 101"),
    );
    let before = vpc.drops(Some(&eni2)).await;
    assert!(ping(&node, b, peer), "{b} → peer out of its own ENI");
    assert!(tcp_echo(&node, b, peer_echo), "{b} → peer by TCP");
    assert_eq!(
        vpc.drops(Some(&eni2)).await,
        before,
        "no drop for a source the ENI holds"
    );

    // An address no ENI holds is dropped.
    let nobody = Ipv4Addr::new(10, 0, 15, 200);
    sh_ok(&node, &format!("ip addr add {nobody}/32 dev lo"));
    let before = vpc.drops(Some(&eni1)).await;
    assert!(!ping(&node, nobody, peer));
    assert!(vpc.drops(Some(&eni1)).await > before);

    // The internet: a pod-range source is dropped at the gateway, and passes once SNATed to the
    // instance's primary address.
    let before = vpc.drops(None).await;
    assert!(
        !ping(&node, a, internet),
        "unSNATed pod traffic reaches the internet"
    );
    assert!(vpc.drops(None).await > before, "the gateway counts it");
    sh_ok(
        &node,
        &format!(
            "nft add table ip t && \
             nft 'add chain ip t post {{ type nat hook postrouting priority 100; }}' && \
             nft add rule ip t post ip saddr {a} oifname eth0 snat to {node_ip}"
        ),
    );
    assert!(
        ping(&node, a, internet),
        "{a} SNATed to {node_ip} reaches the internet"
    );
    let inet_echo = SocketAddr::from((internet, vpc.topology.internet.tcp_echo_port));
    assert!(tcp_echo(&node, a, inet_echo));
    let report: serde_json::Value = serde_json::from_str(
        &common::http_async(
            vpc.server.addr(),
            "GET",
            "/_mock/dataplane",
            vec![],
            String::new(),
        )
        .await
        .1,
    )
    .unwrap();
    assert!(
        report["drops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["eni"] == eni2.as_str() && d["reason"] == "source-destination-check"),
        "{report}"
    );
    vpc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_hot_plugged_after_the_delay_and_go_on_detach() {
    let vpc = Vpc::start(&SCENARIO.replace("\"300ms\"", "\"1s\"")).await;
    let ec2 = sdk_client(&vpc.server.endpoint());
    let node = vpc.netns("node");
    let attached = Instant::now();
    let (eni, mac, _, _, att) = second_eni(&ec2, &vpc, 1).await;
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        wait_link(&node, &mac, Duration::ZERO).is_none(),
        "the link is there before the hot-plug delay"
    );
    let link = wait_link(&node, &mac, Duration::from_secs(5)).expect("the link appears");
    assert!(
        attached.elapsed() >= Duration::from_millis(900),
        "{:?}",
        attached.elapsed()
    );
    assert_eq!(link.name, "ens6");
    assert_eq!(link.mtu, 9001);
    assert!(!link.up, "a hot-plugged link comes down and unaddressed");
    ec2.detach_network_interface()
        .attachment_id(&att)
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while wait_link(&node, &mac, Duration::ZERO).is_some() {
        assert!(
            Instant::now() < deadline,
            "{eni}'s link is still there after detach"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    vpc.stop().await;
}

#[test]
fn a_hundred_attach_detach_cycles_and_sigterm_leave_nothing_behind() {
    // Before the mock starts, no namespace can carry its run's prefix (its pid is not yet
    // taken): the host's links, routes, rules and tables are what must come back.
    let before = host_state("no namespace has this prefix");
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.json");
    std::fs::write(&scenario, SCENARIO.replace("\"300ms\"", "\"0s\"")).unwrap();
    let mut mock = std::process::Command::new(env!("CARGO_BIN_EXE_prefixd"))
        .args([
            "mock-ec2",
            "--listen",
            "127.0.0.1:0",
            "--dataplane",
            "--scenario",
        ])
        .arg(&scenario)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(mock.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let started: serde_json::Value = serde_json::from_str(&line).unwrap();
    let dp = &started["dataplane"];
    let node_id = started["names"]["node"].as_str().unwrap();
    let node = dp["instances"][node_id]["netns"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = node.split('-').next().unwrap().to_owned();
    assert!(
        host_state(&run).contains(&node),
        "the run's namespaces are there"
    );
    for key in ["router_netns", "peer", "internet"] {
        assert!(!dp[key].is_null(), "{key} in {dp}");
    }
    // The instance's EC2 endpoint answers inside its namespace, and IMDS where an instance
    // has it.
    let inside = dp["instances"][node_id]["endpoint"].as_str().unwrap();
    let described = sh_ok(
        &node,
        &format!("curl -s -d 'Action=DescribeInstances&Version=2016-11-15' {inside}"),
    );
    assert!(described.contains(node_id), "{described}");
    let token = sh_ok(
        &node,
        "curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token",
    );
    let id = sh_ok(
        &node,
        &format!(
            "curl -s -H 'X-aws-ec2-metadata-token: {token}' http://169.254.169.254/latest/meta-data/instance-id"
        ),
    );
    assert_eq!(id, node_id);
    let endpoint = started["endpoint"].as_str().unwrap().to_owned();
    let links_before = common::vpc::links(&node).len();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ec2 = sdk_client(&endpoint);
        let subnet = started["names"]["nodes"].as_str().unwrap();
        let ni = ec2
            .create_network_interface()
            .subnet_id(subnet)
            .send()
            .await
            .unwrap();
        let ni = ni.network_interface().unwrap();
        let (eni, mac) = (
            ni.network_interface_id().unwrap().to_owned(),
            ni.mac_address().unwrap().to_owned(),
        );
        for cycle in 0..100 {
            let att = ec2
                .attach_network_interface()
                .network_interface_id(&eni)
                .instance_id(node_id)
                .device_index(1)
                .send()
                .await
                .unwrap()
                .attachment_id()
                .unwrap()
                .to_owned();
            assert!(
                wait_link(&node, &mac, Duration::from_secs(5)).is_some(),
                "cycle {cycle}: no link"
            );
            ec2.detach_network_interface()
                .attachment_id(&att)
                .send()
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while wait_link(&node, &mac, Duration::ZERO).is_some() {
                assert!(Instant::now() < deadline, "cycle {cycle}: the link stays");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    assert_eq!(
        common::vpc::links(&node).len(),
        links_before,
        "no link left in the instance"
    );
    let status = std::process::Command::new("kill")
        .args(["-TERM", &mock.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        mock.wait().unwrap().success(),
        "the mock exits 0 on SIGTERM"
    );
    assert_eq!(host_state(&run), before, "the run left something behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_runs_a_container_on_the_vpc_that_pings_the_router() {
    let vpc = Vpc::start(SCENARIO).await;
    let ec2 = sdk_client(&vpc.server.endpoint());
    let (eni1, _) = primary(&vpc, "node");
    let prefix = assign_prefix(&ec2, &eni1).await;
    let node = vpc.netns("node");
    let cni = tempfile::tempdir().unwrap();
    let conf = cni.path().join("net.d");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("10-test.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "vpc-test",
            "plugins": [{
                "type": "ptp",
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": prefix.to_string() }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": cni.path().join("host-local").display().to_string(),
                }
            }]
        })
        .to_string(),
    )
    .unwrap();
    let ctr = Containerd::start(&node, &conf, std::path::Path::new("/usr/lib/cni"));
    let rootfs = common::containerd::busybox_rootfs(cni.path());
    let out = tokio::task::spawn_blocking(move || {
        let out = ctr.run(
            &rootfs,
            "pinger",
            &["/bin/busybox", "ping", "-c", "2", "-W", "2", "10.0.0.1"],
        );
        (out, ctr.log())
    })
    .await
    .unwrap();
    let (out, log) = out;
    assert!(
        out.status.success(),
        "the container could not ping the router: {}{}\ncontainerd: {log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(vpc.drops(Some(&eni1)).await, 0);
    // The runtime's CNI DEL removed the container's veth from the instance.
    let left: Vec<String> = common::vpc::links(&node)
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n != "lo" && n != "eth0")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    vpc.stop().await;
}
