//! `prefixd capacity` and `prefixd ranges` as operators run them: the binary, through the real
//! aws-sdk-ec2 client, against `prefixd mock-ec2` with scenarios set up by the aws CLI (several
//! accounts, each its own access key). Every answer is checked against one counted by hand.

mod common;

use std::path::Path;
use std::process::Command;

use common::awscli::{Aws, MockProcess};
use common::reports::{Peered, Run, id};
use serde_json::{Value, json};

/// The peer accounts' access keys.
const PEER: (&str, &str) = ("peerkey", "222233334444");
const OTHER: (&str, &str) = ("otherkey", "333344445555");

/// `prefixd ARGS…` against the mock.
fn prefixd(mock: &MockProcess, args: &[&str], env: &[(&str, &str)]) -> Run {
    common::reports::prefixd(&mock.endpoint, args, env)
}

/// The three accounts of [`common::reports::peered_accounts`] on the mock (their access keys
/// mapped to accounts), and a peering of overlapping VPCs, which fails as in EC2.
fn peered_accounts(mock: &MockProcess) -> Peered {
    for (key, account) in [PEER, OTHER] {
        mock.admin(
            "/_mock/accounts",
            &json!({"access_key": key, "account": account}),
        );
    }
    let a = mock.aws();
    let (b, c) = (a.as_key(PEER.0), a.as_key(OTHER.0));
    let p = common::reports::peered_accounts(&a, (&b, PEER.1), (&c, OTHER.1), "shop");
    let vpc = p.vpc.as_str();
    // The peering of overlapping VPCs fails, as in EC2, and takes no part.
    let overlapping = id(
        &c.ok(&["create-vpc", "--cidr-block", "10.0.128.0/17"]),
        &["Vpc", "VpcId"],
    );
    let failed = a.ok(&[
        "create-vpc-peering-connection",
        "--vpc-id",
        vpc,
        "--peer-vpc-id",
        &overlapping,
        "--peer-owner-id",
        OTHER.1,
    ]);
    assert_eq!(failed["VpcPeeringConnection"]["Status"]["Code"], "failed");
    p
}

/// The fragmented subnet, counted by hand. A /22 (64 blocks):
/// * block 0 holds EC2's reserved .0–.3 and the node's primary 10.0.0.4;
/// * an unattached "ELB app/web" ENI holds 10.0.0.20, .100, .200: blocks 1, 6, 12 broken;
/// * the node's primary ENI holds prefixes 10.0.1.0/28 and 10.0.1.16/28 (blocks 16, 17);
/// * its second ENI's primary 10.0.1.40 breaks block 18;
/// * a `prefix` reservation 10.0.2.0/24 (blocks 32–47), an `explicit` one 10.0.3.0/28 (48);
/// * block 63 holds the broadcast address.
struct Fragmented {
    subnet: String,
    instance: String,
    elb: String,
    second: String,
}

fn fragmented_subnet(aws: &Aws) -> Fragmented {
    let vpc = id(
        &aws.ok(&["create-vpc", "--cidr-block", "10.0.0.0/16"]),
        &["Vpc", "VpcId"],
    );
    let subnet = id(
        &aws.ok(&[
            "create-subnet",
            "--vpc-id",
            &vpc,
            "--cidr-block",
            "10.0.0.0/22",
            "--availability-zone",
            "us-west-2a",
            "--tag-specifications",
            "ResourceType=subnet,Tags=[{Key=Name,Value=nodes},{Key=kubernetes.io/cluster/prod,Value=shared}]",
        ]),
        &["Subnet", "SubnetId"],
    );
    let run = aws.ok(&[
        "run-instances",
        "--image-id",
        "ami-12345678",
        "--instance-type",
        "m5.large",
        "--count",
        "1",
        "--subnet-id",
        &subnet,
    ]);
    let instance = id(&run["Instances"][0], &["InstanceId"]);
    let primary = id(
        &run["Instances"][0]["NetworkInterfaces"][0],
        &["NetworkInterfaceId"],
    );
    assert_eq!(
        run["Instances"][0]["PrivateIpAddress"], "10.0.0.4",
        "the mock gives the lowest free address"
    );
    let elb = id(
        &aws.ok(&[
            "create-network-interface",
            "--subnet-id",
            &subnet,
            "--private-ip-address",
            "10.0.0.20",
            "--description",
            "ELB app/web",
        ]),
        &["NetworkInterface", "NetworkInterfaceId"],
    );
    aws.ok(&[
        "assign-private-ip-addresses",
        "--network-interface-id",
        &elb,
        "--private-ip-addresses",
        "10.0.0.100",
        "10.0.0.200",
    ]);
    for p in ["10.0.1.0/28", "10.0.1.16/28"] {
        aws.ok(&[
            "assign-private-ip-addresses",
            "--network-interface-id",
            &primary,
            "--ipv4-prefixes",
            p,
        ]);
    }
    let second = id(
        &aws.ok(&[
            "create-network-interface",
            "--subnet-id",
            &subnet,
            "--private-ip-address",
            "10.0.1.40",
        ]),
        &["NetworkInterface", "NetworkInterfaceId"],
    );
    aws.ok(&[
        "attach-network-interface",
        "--network-interface-id",
        &second,
        "--instance-id",
        &instance,
        "--device-index",
        "1",
    ]);
    for (cidr, kind) in [("10.0.2.0/24", "prefix"), ("10.0.3.0/28", "explicit")] {
        aws.ok(&[
            "create-subnet-cidr-reservation",
            "--subnet-id",
            &subnet,
            "--cidr",
            cidr,
            "--reservation-type",
            kind,
        ]);
    }
    Fragmented {
        subnet,
        instance,
        elb,
        second,
    }
}

/// The 64 blocks, as the report writes them.
const FRAGMENTED_MAP: &str = "-x....x.....x...##x.............::::::::::::::::e..............-";

fn fit_of<'a>(subnet: &'a Value, policy: &str) -> &'a Value {
    subnet["fit"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["policy"] == policy)
        .unwrap_or_else(|| panic!("no {policy} in {}", subnet["fit"]))
}

#[test]
fn capacity_of_a_fragmented_subnet_is_what_a_hand_count_gives() {
    let mock = MockProcess::start(None);
    let aws = mock.aws();
    let f = fragmented_subnet(&aws);
    let available = aws.ok(&["describe-subnets", "--subnet-ids", &f.subnet])["Subnets"][0]
        ["AvailableIpAddressCount"]
        .clone();
    let r = prefixd(
        &mock,
        &[
            "capacity",
            "--subnet",
            &f.subnet,
            "--instance-type",
            "m5.large",
            "--pods",
            "30",
            "--policy",
            "prefixd WARM_PREFIX_TARGET=0",
            "--policy",
            "vpc-cni WARM_IP_TARGET=5 MINIMUM_IP_TARGET=30",
            "--json",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    let j = r.json();
    let s = &j["subnets"][0];
    assert_eq!(s["id"], f.subnet.as_str());
    assert_eq!(s["name"], "nodes");
    assert_eq!(s["available"], available, "EC2's own count, passed through");
    assert_eq!(s["map"]["blocks"], FRAGMENTED_MAP);
    let c = &s["map"]["counts"];
    assert_eq!(
        (
            &c["blocks"],
            &c["free"],
            &c["free_reserved"],
            &c["fragmented"],
            &c["allocated"],
            &c["reserved"],
            &c["explicit"]
        ),
        (
            &json!(64),
            &json!(39),
            &json!(16),
            &json!(4),
            &json!(2),
            &json!(2),
            &json!(1)
        )
    );
    // Loose /32s: 11 in block 0 (.4 is taken), 15 in each of the four broken blocks and 15 in
    // the last block.
    assert_eq!(c["loose_addresses"], 11 + 4 * 15 + 15);
    assert_eq!(s["free_slots"], 55);
    // The unattached ENI breaks three /28s, the node (its second ENI) one.
    assert_eq!(
        s["map"]["top_enis"][0],
        json!({"holder": f.elb, "blocks": 3})
    );
    assert_eq!(
        s["map"]["top_enis"][1],
        json!({"holder": f.second, "blocks": 1})
    );
    assert_eq!(
        s["map"]["top_instances"][0],
        json!({"holder": "ELB app/web", "blocks": 3})
    );
    assert_eq!(
        s["map"]["top_instances"][1],
        json!({"holder": f.instance, "blocks": 1})
    );
    // What a node holds: WARM_PREFIX_TARGET=1 → ⌈30/16⌉ + 1 = 3 prefixes on one ENI, 49
    // addresses; WARM_PREFIX_TARGET=0 → 2 (33); the VPC CNI with W=5, M=30 → ⌈35/16⌉ = 3.
    let held: Vec<(String, u64, u64)> = j["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["policy"].as_str().unwrap().to_owned(),
                p["shape"]["prefixes"].as_u64().unwrap(),
                p["held"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        held,
        vec![
            ("prefixd WARM_PREFIX_TARGET=1".into(), 3, 49),
            ("prefixd WARM_PREFIX_TARGET=0".into(), 2, 33),
            (
                "vpc-cni MINIMUM_IP_TARGET=30 WARM_IP_TARGET=5".into(),
                3,
                49
            ),
        ]
    );
    // 55 free /28s (16 of them reserved), 86 loose /32s, one ENI a node:
    // P = 3: best ⌊55/3⌋ = 18 (the ENIs' addresses go to loose space); worst: n·3 + n ≤ 55 → 13.
    // P = 2: best 27; worst n·2 + n ≤ 55 → 18, so five nodes more in the worst case.
    let w1 = fit_of(s, "prefixd WARM_PREFIX_TARGET=1");
    assert_eq!((&w1["worst"], &w1["best"]), (&json!(13), &json!(18)));
    let w0 = fit_of(s, "prefixd WARM_PREFIX_TARGET=0");
    assert_eq!((&w0["worst"], &w0["best"]), (&json!(18), &json!(27)));
    assert_eq!(w0["more_than_first"], 5);
    let v = fit_of(s, "vpc-cni MINIMUM_IP_TARGET=30 WARM_IP_TARGET=5");
    assert_eq!((&v["worst"], &v["best"]), (&json!(13), &json!(18)));
    // The suggested reservation: CIDRs of free (or EC2-reserved) blocks only, enough /28s for
    // the nodes it promises with the reservation already there, and room outside for their
    // ENIs plus the subnet's five /32s in use.
    let g = &s["suggestion"];
    let nodes = g["nodes"].as_u64().unwrap();
    assert!(nodes > 13, "{g}");
    assert!(g["blocks"].as_u64().unwrap() + 16 >= 3 * nodes, "{g}");
    assert!(g["addresses_outside"].as_u64().unwrap() >= nodes + 5, "{g}");
    for cidr in g["cidrs"].as_array().unwrap() {
        let net: ipnet::Ipv4Net = cidr.as_str().unwrap().parse().unwrap();
        for b in net.subnets(28).unwrap() {
            let i = ((u32::from(b.network()) - u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)))
                / 16) as usize;
            let glyph = FRAGMENTED_MAP.as_bytes()[i];
            assert!(
                glyph == b'.' || glyph == b'-',
                "{net} holds block {i} ({})",
                glyph as char
            );
        }
    }
    // The reservation really does what it says: made with the aws CLI, the worst case becomes
    // the nodes promised.
    for cidr in g["cidrs"].as_array().unwrap() {
        aws.ok(&[
            "create-subnet-cidr-reservation",
            "--subnet-id",
            &f.subnet,
            "--cidr",
            cidr.as_str().unwrap(),
            "--reservation-type",
            "prefix",
        ]);
    }
    let after = prefixd(
        &mock,
        &[
            "capacity",
            "--subnet",
            &f.subnet,
            "--instance-type",
            "m5.large",
            "--pods",
            "30",
            "--json",
        ],
        &[],
    )
    .json();
    let a = fit_of(&after["subnets"][0], "prefixd WARM_PREFIX_TARGET=1");
    assert!(a["worst"].as_u64().unwrap() >= nodes, "{a} < {nodes}");
}

#[test]
fn capacity_finds_subnets_by_cluster_and_node_and_reads_the_trend() {
    let mock = MockProcess::start(None);
    let aws = mock.aws();
    let f = fragmented_subnet(&aws);
    let dir = tempfile::tempdir().unwrap();
    // Two earlier reports: 75 and 65 free /28s ten days apart; 55 now: one a day.
    for (day, free) in [("2026-11-18", 75), ("2026-11-28", 65)] {
        std::fs::write(
            dir.path().join(format!("{day}.json")),
            json!({"generated_at": format!("{day}T00:00:00Z"),
                   "subnets": [{"id": f.subnet, "free_slots": free}]})
            .to_string(),
        )
        .unwrap();
    }
    let hist = dir.path().to_str().unwrap();
    let svg = dir.path().join("svg");
    let by_cluster = prefixd(
        &mock,
        &[
            "capacity",
            "--cluster",
            "prod",
            "--instance-type",
            "m5.large",
            "--pods",
            "30",
            "--history",
            hist,
            "--now",
            "2026-12-08T00:00:00Z",
            "--svg",
            svg.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert_eq!(by_cluster.code, 0, "{}", by_cluster.err);
    let j = by_cluster.json();
    assert_eq!(j["subnets_from"], "tagged kubernetes.io/cluster/prod");
    let t = &j["subnets"][0]["trend"];
    assert_eq!(t["points"], 3);
    assert!(
        (t["slots_per_day"].as_f64().unwrap() - 1.0).abs() < 1e-9,
        "{t}"
    );
    assert_eq!(t["runs_out"], "2027-02-01");
    // The picture: one square per /28, colour by state, the legend's counts.
    let pic = std::fs::read_to_string(svg.join(format!("{}.svg", f.subnet))).unwrap();
    assert_eq!(pic.matches("<title>").count(), 64);
    assert!(pic.contains("free (39)") && pic.contains("fragmented (holds a /32) (4)"));
    // Within a 60-day horizon that is a finding: exit 1.
    let soon = prefixd(
        &mock,
        &[
            "capacity",
            "--cluster",
            "prod",
            "--instance-type",
            "m5.large",
            "--pods",
            "30",
            "--history",
            hist,
            "--now",
            "2026-12-08T00:00:00Z",
            "--horizon-days",
            "60",
        ],
        &[],
    );
    assert_eq!(soon.code, 1, "{}", soon.out);
    assert!(soon.out.contains("warning runs-out"), "{}", soon.out);
    assert!(
        soon.out.contains("runs out 2027-02-01 (55 days)"),
        "{}",
        soon.out
    );
    // On the node: its subnet from INSTANCE_ID and DescribeInstances, its type by default, the
    // warm targets from the agent's env vars.
    let node = prefixd(
        &mock,
        &["capacity", "--pods", "30", "--json"],
        &[("INSTANCE_ID", &f.instance), ("WARM_PREFIX_TARGET", "0")],
    );
    assert_eq!(node.code, 0, "{}", node.err);
    let n = node.json();
    assert_eq!(n["instance_type"], "m5.large");
    assert_eq!(n["subnets"][0]["id"], f.subnet.as_str());
    assert_eq!(n["policies"][0]["policy"], "prefixd WARM_PREFIX_TARGET=0");
    assert_eq!(
        fit_of(&n["subnets"][0], "prefixd WARM_PREFIX_TARGET=0")["worst"],
        18
    );
    // Too few nodes for --min-nodes: a finding.
    let few = prefixd(
        &mock,
        &[
            "capacity",
            "--subnet",
            &f.subnet,
            "--instance-type",
            "m5.large",
            "--pods",
            "30",
            "--min-nodes",
            "20",
        ],
        &[],
    );
    assert_eq!(few.code, 1);
    assert!(few.out.contains("warning few-nodes"), "{}", few.out);
    // A subnet with free addresses and no free /28: an error finding (InsufficientCidrBlocks).
    // (Made with ENIs: the mock's /_mock/fragment takes addresses no ENI holds, which no
    // report can see, as in EC2 every address is some ENI's.)
    let other = aws.ok(&["describe-subnets", "--subnet-ids", &f.subnet])["Subnets"][0]["VpcId"]
        .as_str()
        .unwrap()
        .to_owned();
    let frag = id(
        &aws.ok(&[
            "create-subnet",
            "--vpc-id",
            &other,
            "--cidr-block",
            "10.0.8.0/26",
        ]),
        &["Subnet", "SubnetId"],
    );
    // Four /28s: the first and last hold EC2's reserved addresses, an ENI breaks the others.
    aws.ok(&[
        "create-network-interface",
        "--subnet-id",
        &frag,
        "--private-ip-addresses",
        "PrivateIpAddress=10.0.8.20,Primary=true",
        "PrivateIpAddress=10.0.8.40,Primary=false",
    ]);
    let bad = prefixd(
        &mock,
        &[
            "capacity",
            "--subnet",
            &frag,
            "--instance-type",
            "m5.large",
            "--pods",
            "30",
        ],
        &[],
    );
    assert_eq!(bad.code, 1, "{}", bad.out);
    assert!(bad.out.contains("error no-free-28"), "{}", bad.out);
    // Bad input: exit 2, named.
    for (args, what) in [
        (
            vec!["capacity", "--subnet", "subnet-zz"],
            "--subnet subnet-zz",
        ),
        (vec!["capacity", "--subnet", &f.subnet], "--instance-type"),
        (
            vec![
                "capacity",
                "--subnet",
                &f.subnet,
                "--instance-type",
                "m5.large",
                "--policy",
                "calico X=1",
            ],
            "calico",
        ),
        (
            vec![
                "capacity",
                "--subnet",
                &f.subnet,
                "--instance-type",
                "m5.large",
                "--policy",
                "prefixd WARM_PREFIX_TARGET=-1",
            ],
            "WARM_PREFIX_TARGET",
        ),
    ] {
        let r = prefixd(&mock, &args, &[]);
        assert_eq!(r.code, 2, "{args:?}: {}", r.out);
        assert!(r.err.contains(what), "{args:?}: {}", r.err);
    }
    let r = prefixd(
        &mock,
        &[
            "capacity",
            "--subnet",
            &f.subnet,
            "--instance-type",
            "m5.large",
        ],
        &[("WARM_IP_TARGET", "lots")],
    );
    assert_eq!(r.code, 2);
    assert!(r.err.contains("WARM_IP_TARGET"), "{}", r.err);
    // No credentials at all: said as such, not as a network fault.
    let out = Command::new(env!("CARGO_BIN_EXE_prefixd"))
        .args([
            "capacity",
            "--subnet",
            &f.subnet,
            "--instance-type",
            "m5.large",
        ])
        .env_clear()
        .env("AWS_ENDPOINT_URL", &mock.endpoint)
        .env("AWS_REGION", "us-west-2")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no AWS credentials were found"), "{err}");
}

#[test]
fn ranges_finds_the_routed_the_unrouted_and_the_blackhole() {
    let mock = MockProcess::start(None);
    let p = peered_accounts(&mock);
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("remote.txt");
    std::fs::write(
        &remote,
        "# declared by the network team\n100.64.0.0/10 branch offices (CGNAT)\n192.168.0.0/16 datacenter\n",
    )
    .unwrap();
    let r = prefixd(
        &mock,
        &[
            "ranges",
            "--cluster",
            "shop",
            "--pod-subnet",
            &p.pod_subnet,
            "--remote",
            remote.to_str().unwrap(),
            "--suggest",
            "/16",
            "--json",
        ],
        &[],
    );
    assert_eq!(r.code, 1, "findings: exit 1\n{}\n{}", r.out, r.err);
    let j = r.json();
    assert_eq!(j["vpc"], p.vpc.as_str());
    assert_eq!(j["account"], "123456789012");
    let mut tables: Vec<&str> = j["route_tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tables.sort();
    let mut want = vec![p.table.as_str(), p.main_table.as_str()];
    want.sort();
    assert_eq!(
        tables, want,
        "the cluster subnet's own table and the pod subnet's main one"
    );
    // The inventory, each range with where it came from.
    let inv: Vec<(String, String, String)> = j["inventory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["cidr"].as_str().unwrap().to_owned(),
                r["kind"].as_str().unwrap().to_owned(),
                r["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let has = |cidr: &str, kind: &str, src: &str| {
        assert!(
            inv.iter()
                .any(|(c, k, s)| c == cidr && k == kind && s.contains(src)),
            "no {cidr} {kind} from {src:?} in {inv:#?}"
        );
    };
    has("10.0.0.0/16", "vpc-cidr", "primary CIDR");
    has("100.64.0.0/16", "vpc-cidr", "secondary CIDR");
    has(
        "10.0.0.0/20",
        "subnet",
        &format!("{}: cluster subnet", p.cluster_subnet),
    );
    has("100.64.0.0/20", "pod-subnet", "pod subnet");
    has("172.20.0.0/16", "service-range", "inferred: EKS's default");
    has(
        "172.20.0.0/16",
        "peer-vpc",
        &format!("{} (active)", p.pcx_b),
    );
    has("172.20.0.0/16", "peer-vpc", "account 222233334444");
    has("172.17.0.0/16", "peer-vpc", "account 333344445555");
    has("172.20.0.0/16", "route", &format!("→ {} (active)", p.pcx_b));
    has(
        "10.99.0.0/16",
        "route",
        &format!("→ {} (blackhole)", p.pcx_d),
    );
    has(
        "100.64.0.0/10",
        "route",
        &format!("from {} \"onprem\" → {}", p.pl, p.tgw),
    );
    has("192.168.0.0/16", "route", &p.tgw);
    has("0.0.0.0/0", "route", "→ igw-");
    has("100.64.0.0/10", "remote", "branch offices");
    has("172.17.0.0/16", "well-known", "Docker");
    has("169.254.0.0/16", "well-known", "link-local");
    assert!(
        !inv.iter().any(|(c, _, _)| c == "10.99.0.0/16"
            && inv
                .iter()
                .any(|(_, k, s)| k == "peer-vpc" && s.contains(&p.pcx_d))),
        "the deleted peering is left out"
    );
    assert!(
        j["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains(&p.pcx_d))
    );
    // The overlaps, counted by hand: two routed (errors), one not (a warning), one blackhole.
    let overlaps: Vec<(String, String, String, String, String)> = j["overlaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["severity"].as_str().unwrap().to_owned(),
                o["overlap"].as_str().unwrap().to_owned(),
                o["a"]["kind"].as_str().unwrap().to_owned(),
                o["b"]["kind"].as_str().unwrap().to_owned(),
                o["routed_by"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
        .collect();
    assert_eq!(
        overlaps,
        vec![
            (
                "error".into(),
                "100.64.0.0/16".into(),
                "vpc-cidr".into(),
                "remote".into(),
                format!(
                    "{}: 100.64.0.0/10 (from {} \"onprem\") → {} (active)",
                    p.table, p.pl, p.tgw
                )
            ),
            (
                "error".into(),
                "172.20.0.0/16".into(),
                "service-range".into(),
                "peer-vpc".into(),
                format!("{}: 172.20.0.0/16 → {} (active)", p.table, p.pcx_b)
            ),
            (
                "warning".into(),
                "172.17.0.0/16".into(),
                "peer-vpc".into(),
                "well-known".into(),
                String::new()
            ),
        ],
        "{overlaps:#?}"
    );
    let kinds: Vec<&str> = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec!["overlap-routed", "overlap-routed", "overlap", "blackhole"]
    );
    assert!(
        j["findings"][3]["message"]
            .as_str()
            .unwrap()
            .contains(&p.pcx_d)
    );
    // Free /16s: 10/8 less 10.0 and 10.99; 172.16/12 less 172.17 and 172.20; 192.168/16 and
    // 100.64/10 are taken whole.
    let s = &j["suggestions"];
    assert_eq!(
        (&s[0]["pool"], &s[0]["free"]),
        (&json!("10.0.0.0/8"), &json!(254))
    );
    assert_eq!(
        s[0]["first"],
        json!(["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16", "10.4.0.0/16"])
    );
    assert_eq!(s[1]["free"], 14);
    assert_eq!(
        s[1]["first"],
        json!([
            "172.16.0.0/16",
            "172.18.0.0/16",
            "172.19.0.0/16",
            "172.21.0.0/16"
        ])
    );
    assert_eq!((&s[2]["free"], &s[3]["free"]), (&json!(0), &json!(0)));
    // Given the real service range, the collision with the peer goes; the remote one stays.
    let given = prefixd(
        &mock,
        &[
            "ranges",
            "--cluster",
            "shop",
            "--service-cidr",
            "10.100.0.0/16",
            "--remote",
            remote.to_str().unwrap(),
            "--json",
        ],
        &[],
    )
    .json();
    let sev: Vec<&str> = given["overlaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["overlap"].as_str().unwrap())
        .collect();
    assert_eq!(sev, vec!["100.64.0.0/16", "172.17.0.0/16"]);
    // The table for people.
    let text = prefixd(
        &mock,
        &["ranges", "--cluster", "shop", "--suggest", "16"],
        &[],
    );
    assert_eq!(text.code, 1);
    assert!(
        text.out.contains("Overlaps:") && text.out.contains("Blackhole routes:"),
        "{}",
        text.out
    );
    assert!(
        text.out.contains("10.0.0.0/8: 254 free, e.g. 10.1.0.0/16"),
        "{}",
        text.out
    );
    let _ = (&p.pcx_c, &p.cluster_subnet);
}

/// The IAM policy in deploy/ for the reports, as an IAM policy document.
fn reports_policy() -> Value {
    serde_json::from_str(&std::fs::read_to_string("deploy/iam-reports-policy.json").unwrap())
        .unwrap()
}

fn calls(stats: &Value) -> std::collections::BTreeMap<String, u64> {
    stats["calls"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

#[test]
fn the_reports_policy_is_exactly_what_they_call_and_refusals_name_the_permission() {
    let mock = MockProcess::start(None);
    let f = fragmented_subnet(&mock.aws());
    let p = peered_accounts(&mock);
    // The policy names exactly the reports' actions.
    let granted: std::collections::BTreeSet<String> = reports_policy()["Statement"][0]["Action"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().trim_start_matches("ec2:").to_owned())
        .collect();
    let declared: std::collections::BTreeSet<String> = prefixd::ec2::read::ACTIONS
        .iter()
        .map(|a| a.name().to_owned())
        .collect();
    assert_eq!(granted, declared);
    // With only that policy, both reports run in full (the node mode too), and the calls they
    // make are exactly the policy's: nothing it grants goes unused.
    mock.admin("/_mock/iam", &json!({"policy": reports_policy()}));
    let before = calls(&mock.stats());
    let cap = prefixd(
        &mock,
        &["capacity", "--pods", "30", "--json"],
        &[("INSTANCE_ID", &f.instance)],
    );
    assert_eq!(cap.code, 0, "{}", cap.err);
    let ranges = prefixd(&mock, &["ranges", "--cluster", "shop", "--json"], &[]);
    assert_eq!(ranges.code, 1, "{}", ranges.err);
    let after = calls(&mock.stats());
    let used: std::collections::BTreeSet<String> = after
        .iter()
        .filter(|(k, v)| before.get(*k).copied().unwrap_or(0) < **v)
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(used, granted, "the reports called {used:?}");
    let errors = mock.stats()["errors"].clone();
    assert!(
        errors
            .as_object()
            .unwrap()
            .values()
            .all(|m| m.get("UnauthorizedOperation").is_none()),
        "{errors}"
    );
    // A policy without DescribeRouteTables: the refusal names the permission, exit 2.
    let mut narrow = reports_policy();
    narrow["Statement"][0]["Action"]
        .as_array_mut()
        .unwrap()
        .retain(|a| a != "ec2:DescribeRouteTables");
    mock.admin("/_mock/iam", &json!({"policy": narrow}));
    let refused = prefixd(&mock, &["ranges", "--cluster", "shop"], &[]);
    assert_eq!(refused.code, 2, "{}", refused.out);
    assert!(
        refused
            .err
            .contains("lack the permission ec2:DescribeRouteTables")
            && refused.err.contains("deploy/iam-reports-policy.json"),
        "{}",
        refused.err
    );
    mock.admin("/_mock/iam", &json!({"policy": null}));
    // Throttled twice: the SDK's retries absorb it. Throttled past its three attempts: named.
    let fault = |n: u32| json!({"action": "DescribeNetworkInterfaces", "fail_next": n, "code": "RequestLimitExceeded"});
    mock.admin("/_mock/faults", &fault(2));
    let args = [
        "capacity",
        "--subnet",
        &f.subnet,
        "--instance-type",
        "m5.large",
        "--pods",
        "30",
    ];
    assert_eq!(prefixd(&mock, &args, &[]).code, 0);
    mock.admin("/_mock/faults", &fault(3));
    let throttled = prefixd(&mock, &args, &[]);
    assert_eq!(throttled.code, 2);
    assert!(
        throttled
            .err
            .contains("EC2 throttled DescribeNetworkInterfaces (RequestLimitExceeded)"),
        "{}",
        throttled.err
    );
    let _ = (&p.vpc, Path::new("."));
}

/// The fit figure against the simulator on the same subnet: a scenario file (a /22 where
/// other tenants hold two ENIs, one with a /28), `prefixd capacity` on it through the mock, and
/// `prefixd simulate` launching nodes into it one after another until its /28s run out — with
/// EC2 picking the new ENIs' addresses lowest first and at random.
#[test]
fn the_simulated_fleet_runs_out_between_the_worst_and_the_best_case() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("tenants.json");
    std::fs::write(
        &scenario,
        json!({
            "vpcs": [{"cidr": "10.0.0.0/16", "subnets": [{
                "name": "pods", "cidr": "10.0.0.0/22",
                "enis": [
                    {"addresses": ["10.0.0.20", "10.0.0.100"], "description": "ELB app/web"},
                    {"addresses": ["10.0.2.7"], "prefixes": ["10.0.1.0/28"], "description": "other cluster"}
                ]
            }]}]
        })
        .to_string(),
    )
    .unwrap();
    let mock = MockProcess::start(Some(&scenario));
    let subnet = mock.start["names"]["pods"].as_str().unwrap().to_owned();
    // 30 pods and no warm prefix: a node fits when it has its two /28s.
    let cap = prefixd(
        &mock,
        &[
            "capacity",
            "--subnet",
            &subnet,
            "--instance-type",
            "m5.large",
            "--pods",
            "30",
            "--json",
        ],
        &[("WARM_PREFIX_TARGET", "0")],
    );
    assert_eq!(cap.code, 0, "{}", cap.err);
    let c = cap.json();
    assert_eq!(
        c["subnets"][0]["map"]["blocks"].as_str().unwrap()[..36].to_owned(),
        "-x....x.........#...............x..."
    );
    let fit = fit_of(&c["subnets"][0], "prefixd WARM_PREFIX_TARGET=0");
    let (worst, best) = (
        fit["worst"].as_u64().unwrap(),
        fit["best"].as_u64().unwrap(),
    );
    // 58 free /28s, 72 loose /32s: best ⌊58/2⌋ = 29, worst n·2 + n ≤ 58 → 19.
    assert_eq!((worst, best), (19, 29));
    let nodes = best + 6;
    for (addresses, expect) in [("lowest", Some(best)), ("scattered", None)] {
        let profile = dir.path().join(format!("fill-{addresses}.json"));
        std::fs::write(
            &profile,
            json!({
                "name": format!("fill-{addresses}"),
                "description": "nodes launched one a minute into the tenants' subnet",
                "nodes": nodes,
                "instance_type": "m5.large",
                "scenario": "tenants.json",
                "subnet": "pods",
                "launch_at_boot": true,
                "addresses": addresses,
                "boot_spread": format!("{}s", 60 * nodes),
                "duration": format!("{}s", 60 * nodes + 300),
                "seed": 7,
                "phases": [{"kind": "scale_up", "at": "0s", "pods_per_node": 30}],
                "policies": [{"agent": "prefixd", "env": {"WARM_PREFIX_TARGET": "0", "SECONDARY_IP_FALLBACK": "false"}}]
            })
            .to_string(),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_prefixd"))
            .args(["simulate", "--profile", profile.to_str().unwrap(), "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        let p = &r["policies"][0];
        let served = p["nodes_served"].as_u64().unwrap();
        assert_eq!(p["nodes_with_pods"], nodes);
        assert!(
            (worst..=best).contains(&served),
            "{addresses}: {served} nodes fit in the simulation, outside [{worst}, {best}]"
        );
        assert!(
            p["insufficient_cidr"].as_u64().unwrap() > 0,
            "the subnet did run out"
        );
        if let Some(e) = expect {
            // Lowest first, new ENIs' addresses fill the loose space: the best case exactly.
            assert_eq!(served, e, "{addresses}");
        }
        eprintln!("{addresses}: {served} of {nodes} nodes served; report said {worst} to {best}");
    }
}
