//! Against real LocalStack (started by `scripts/test-all` through `localstack/run start`): the
//! agent end to end in secondary-IP mode, prefix-support detection, and a differential run of one
//! EC2 scenario against LocalStack and the mock. Fails, never skips, when LocalStack is not up.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{Filter, InstanceType, NetworkInterfaceAttachmentChanges};
use common::{add, del, eventually, http_async, sdk_client, start_mock};

fn endpoint() -> String {
    std::env::var("PREFIXD_LOCALSTACK_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

fn require_localstack() -> String {
    let ep = endpoint();
    let addr = ep.trim_start_matches("http://").to_owned();
    let ok = TcpStream::connect(&addr).ok().and_then(|mut s| {
        write!(
            s,
            "GET /_localstack/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out.contains("\"ec2\""))
    });
    assert_eq!(
        ok,
        Some(true),
        "LocalStack's EC2 is not answering on {ep}: run ./scripts/test-all (it starts LocalStack), or `localstack/run start`"
    );
    ep
}

/// A VPC, a subnet and an m5.large in `ec2`; returns (subnet, instance).
async fn seed(ec2: &aws_sdk_ec2::Client, cidr_third: u8) -> (String, String) {
    let vpc = ec2
        .create_vpc()
        .cidr_block(format!("10.{cidr_third}.0.0/16"))
        .send()
        .await
        .unwrap();
    let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block(format!("10.{cidr_third}.0.0/20"))
        .availability_zone("us-west-2a")
        .send()
        .await
        .unwrap();
    let subnet = subnet.subnet().unwrap().subnet_id().unwrap().to_owned();
    let images = ec2.describe_images().owners("amazon").send().await.ok();
    let ami = images
        .and_then(|i| {
            i.images()
                .iter()
                .filter_map(|i| i.image_id().map(str::to_owned))
                .min()
        })
        .unwrap_or_else(|| "ami-12345678".into());
    let run = ec2
        .run_instances()
        .image_id(ami)
        .instance_type(InstanceType::M5Large)
        .min_count(1)
        .max_count(1)
        .subnet_id(&subnet)
        .send()
        .await
        .unwrap();
    (subnet, run.instances()[0].instance_id().unwrap().to_owned())
}

/// The agent in-process against LocalStack.
async fn agent_on_localstack(instance: &str, args: &[(&str, &str)]) -> common::TestAgent {
    // start_agent takes a MockServer for its endpoint; LocalStack is addressed the same way.
    common::start_agent_at(&endpoint(), instance, args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_in_secondary_ip_mode_end_to_end() {
    let ep = require_localstack();
    let ec2 = sdk_client(&ep);
    let (subnet, instance) = seed(&ec2, 31).await;
    let a = agent_on_localstack(
        &instance,
        &[
            ("ENABLE_PREFIX_DELEGATION", "false"),
            ("WARM_IP_TARGET", "3"),
            ("MINIMUM_IP_TARGET", "4"),
            ("RELEASE_DELAY", "1s"),
            ("IP_COOLDOWN_PERIOD", "1s"),
            ("MAX_PODS", "29"),
        ],
    )
    .await;
    // 12 pods: more than the primary's 9 slots hold with WARM_IP_TARGET=3, so a second ENI is
    // created, attached and filled.
    let mut got = Vec::new();
    for i in 0..12 {
        let r = add(&a.socket, &format!("ls{i}"), 20_000).await;
        got.push(
            r.address
                .unwrap_or_else(|| panic!("ADD ls{i}: {:?}", r.error)),
        );
    }
    let enis = ec2
        .describe_network_interfaces()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(&instance)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(
        enis.network_interfaces().len() >= 2,
        "a second ENI was attached"
    );
    let secondary: Vec<String> = enis
        .network_interfaces()
        .iter()
        .flat_map(|n| n.private_ip_addresses())
        .filter(|p| p.primary() != Some(true))
        .filter_map(|p| p.private_ip_address().map(str::to_owned))
        .collect();
    for ip in &got {
        assert!(
            secondary.contains(&ip.to_string()),
            "{ip} is a secondary address in LocalStack"
        );
    }
    let created: Vec<_> = enis
        .network_interfaces()
        .iter()
        .filter(|n| n.attachment().and_then(|a| a.device_index()) != Some(0))
        .collect();
    assert!(
        created
            .iter()
            .all(|n| n.subnet_id() == Some(subnet.as_str()))
    );
    assert!(
        created.iter().all(|n| n
            .tag_set()
            .iter()
            .any(|t| t.key() == Some("node.k8s.amazonaws.com/instance_id"))),
        "created ENIs carry the tag"
    );

    // All gone: after the cooldown and RELEASE_DELAY the excess goes back, the extra ENI too.
    for i in 0..12 {
        assert_eq!(del(&a.socket, &format!("ls{i}")).await.released, Some(1));
    }
    let ec2b = ec2.clone();
    let inst = instance.clone();
    eventually(30, "the second ENI released", async || {
        ec2b.describe_network_interfaces()
            .filters(
                Filter::builder()
                    .name("attachment.instance-id")
                    .values(&inst)
                    .build(),
            )
            .send()
            .await
            .map(|r| r.network_interfaces().len() == 1)
            .unwrap_or(false)
    })
    .await;
    // Detached first, deleted after: the ENI is briefly "available" between the two calls, so
    // the deletion is awaited too (an ENI left available would keep this count at 2).
    let ec2c = ec2.clone();
    let sub = subnet.clone();
    eventually(
        30,
        "the released ENI deleted, not left available",
        async || {
            ec2c.describe_network_interfaces()
                .filters(Filter::builder().name("subnet-id").values(&sub).build())
                .send()
                .await
                .map(|r| r.network_interfaces().len() == 1)
                .unwrap_or(false)
        },
    )
    .await;
    a.agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_mode_notices_that_localstack_cannot_delegate() {
    let ep = require_localstack();
    let ec2 = sdk_client(&ep);
    let (_, instance) = seed(&ec2, 32).await;

    // Fallback off: the agent says so and is not ready.
    let a =
        common::start_agent_at_unready(&ep, &instance, &[("SECONDARY_IP_FALLBACK", "false")]).await;
    let status = a.agent.status.clone();
    eventually(20, "unsupported prefixes noticed", async || {
        status.view().prefixes_unsupported
    })
    .await;
    let ia = a.agent.introspection_addr();
    let (s, body) = http_async(ia, "GET", "/readyz", vec![], String::new()).await;
    assert_eq!(s, 503);
    assert!(body.contains("cannot delegate prefixes"), "{body}");
    let (_, m) = http_async(
        a.agent.metrics_addr(),
        "GET",
        "/metrics",
        vec![],
        String::new(),
    )
    .await;
    assert!(m.contains("prefixd_prefix_delegation_unsupported 1"), "{m}");
    let (_, st) = http_async(ia, "GET", "/v1/status", vec![], String::new()).await;
    let (_, cfg) = http_async(ia, "GET", "/v1/config", vec![], String::new()).await;
    let (_, enis) = http_async(ia, "GET", "/v1/enis", vec![], String::new()).await;
    let table = prefixd::cli::status::render(
        &serde_json::from_str(&st).unwrap(),
        &serde_json::from_str(&cfg).unwrap(),
        &serde_json::from_str(&enis).unwrap(),
        Err("x".into()),
    );
    assert!(
        table.contains("endpoint cannot delegate prefixes"),
        "{table}"
    );
    a.agent.shutdown().await.unwrap();

    // Fallback on: it carries on with /32 secondary addresses.
    let (_, instance2) = seed(&ec2, 33).await;
    let b = agent_on_localstack(&instance2, &[("SECONDARY_IP_FALLBACK", "true")]).await;
    let r = add(&b.socket, "pod", 20_000).await;
    assert!(r.address.is_some(), "{:?}", r.error);
    let v = b.agent.status.view();
    assert!(v.prefixes_unsupported && v.fallback_active, "{v:?}");
    b.agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_prefix_mode_is_reported_as_unsupported() {
    let ep = require_localstack();
    let ec2 = sdk_client(&ep);
    // LocalStack keeps IPv6 CIDRs: a VPC /56 and a subnet /64 of it.
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.34.0.0/16")
        .amazon_provided_ipv6_cidr_block(true)
        .send()
        .await
        .unwrap();
    let vpc = vpc.vpc().unwrap();
    let v6: ipnet::Ipv6Net = vpc.ipv6_cidr_block_association_set()[0]
        .ipv6_cidr_block()
        .expect("LocalStack gives the VPC an IPv6 /56")
        .parse()
        .unwrap();
    let sixty_four = v6.subnets(64).unwrap().next().unwrap();
    let subnet = ec2
        .create_subnet()
        .vpc_id(vpc.vpc_id().unwrap())
        .cidr_block("10.34.0.0/20")
        .ipv6_cidr_block(sixty_four.to_string())
        .availability_zone("us-west-2a")
        .send()
        .await
        .unwrap();
    let subnet = subnet.subnet().unwrap().subnet_id().unwrap().to_owned();
    let run = ec2
        .run_instances()
        .image_id("ami-12345678")
        .instance_type(InstanceType::M5Large)
        .min_count(1)
        .max_count(1)
        .subnet_id(&subnet)
        .send()
        .await
        .unwrap();
    let instance = run.instances()[0].instance_id().unwrap().to_owned();
    let eni = run.instances()[0].network_interfaces()[0]
        .network_interface_id()
        .unwrap()
        .to_owned();

    // The difference itself: Ipv6PrefixCount is accepted and nothing is assigned.
    let r = ec2
        .assign_ipv6_addresses()
        .network_interface_id(&eni)
        .ipv6_prefix_count(1)
        .send()
        .await
        .expect("LocalStack accepts AssignIpv6Addresses");
    assert!(
        r.assigned_ipv6_prefixes().is_empty(),
        "LocalStack delegated an IPv6 prefix: {r:?} (update the agent's note and this test)"
    );

    // The agent says so: not ready, with the reason, in /readyz, the metric and ADD's answer.
    let a = common::start_agent_at_unready(
        &ep,
        &instance,
        &[("ENABLE_IPv4", "false"), ("ENABLE_IPv6", "true")],
    )
    .await;
    let status = a.agent.status.clone();
    eventually(20, "the missing /80 noticed", async || {
        status.view().ipv6_prefixes_unsupported
    })
    .await;
    let ia = a.agent.introspection_addr();
    let (s, body) = http_async(ia, "GET", "/readyz", vec![], String::new()).await;
    assert_eq!(s, 503);
    assert!(body.contains("cannot delegate an IPv6 /80"), "{body}");
    let (_, m) = http_async(
        a.agent.metrics_addr(),
        "GET",
        "/metrics",
        vec![],
        String::new(),
    )
    .await;
    assert!(
        m.contains("prefixd_ipv6_prefix_delegation_unsupported 1"),
        "{m}"
    );
    let r = add(&a.socket, "pod6", 5_000).await;
    let e = r.error.expect("an ADD is refused");
    assert!(
        e.message.contains("cannot delegate an IPv6 /80") && e.message.contains("ENABLE_IPv6"),
        "{e:?}"
    );
    a.agent.shutdown().await.unwrap();
}

/// What one step did: `Ok(summary)` or `Err(code)`.
type Step = (&'static str, Result<String, String>);

fn outcome<T, E: ProvideErrorMetadata>(
    r: Result<T, E>,
    f: impl FnOnce(&T) -> String,
) -> Result<String, String> {
    match r {
        Ok(v) => Ok(f(&v)),
        Err(e) => Err(e.code().unwrap_or("?").to_owned()),
    }
}

/// One scenario through the SDK; the summary keeps shapes and counts, not ids.
async fn scenario(ec2: &aws_sdk_ec2::Client, third: u8) -> Vec<Step> {
    let (subnet, instance) = seed(ec2, third).await;
    let mut out: Vec<Step> = Vec::new();
    let c = ec2
        .create_network_interface()
        .subnet_id(&subnet)
        .description("diff")
        .send()
        .await;
    let eni = c
        .as_ref()
        .ok()
        .and_then(|r| {
            r.network_interface()?
                .network_interface_id()
                .map(str::to_owned)
        })
        .unwrap_or_default();
    out.push((
        "create ENI",
        outcome(c, |r| {
            let n = r.network_interface().unwrap();
            format!(
                "status={} subnet_ok={} primary_ip={}",
                n.status().map(|s| s.as_str()).unwrap_or("?"),
                n.subnet_id() == Some(subnet.as_str()),
                n.private_ip_address().is_some()
            )
        }),
    ));
    let at = ec2
        .attach_network_interface()
        .network_interface_id(&eni)
        .instance_id(&instance)
        .device_index(1)
        .send()
        .await;
    let att = at
        .as_ref()
        .ok()
        .and_then(|r| r.attachment_id().map(str::to_owned))
        .unwrap_or_default();
    out.push((
        "attach at device 1",
        outcome(at, |r| {
            format!(
                "attachment_id={} card={:?}",
                r.attachment_id().is_some(),
                r.network_card_index()
            )
        }),
    ));
    out.push((
        "modify DeleteOnTermination",
        outcome(
            ec2.modify_network_interface_attribute()
                .network_interface_id(&eni)
                .attachment(
                    NetworkInterfaceAttachmentChanges::builder()
                        .attachment_id(&att)
                        .delete_on_termination(true)
                        .build(),
                )
                .send()
                .await,
            |_| "ok".into(),
        ),
    ));
    let asg = ec2
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .secondary_private_ip_address_count(3)
        .send()
        .await;
    let assigned: Vec<String> = asg
        .as_ref()
        .map(|r| {
            r.assigned_private_ip_addresses()
                .iter()
                .filter_map(|p| p.private_ip_address().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.push((
        "assign 3 secondary",
        outcome(asg, |r| {
            format!("assigned={}", r.assigned_private_ip_addresses().len())
        }),
    ));
    out.push((
        "assign 1 prefix",
        outcome(
            ec2.assign_private_ip_addresses()
                .network_interface_id(&eni)
                .ipv4_prefix_count(1)
                .send()
                .await,
            |r| format!("prefixes={}", r.assigned_ipv4_prefixes().len()),
        ),
    ));
    let d = ec2
        .describe_network_interfaces()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(&instance)
                .build(),
        )
        .send()
        .await;
    out.push((
        "describe by instance",
        outcome(d, |r| {
            let mine = r
                .network_interfaces()
                .iter()
                .find(|n| n.network_interface_id() == Some(eni.as_str()));
            format!(
                "enis={} status={} secondary={} dot={:?}",
                r.network_interfaces().len(),
                mine.and_then(|n| n.status())
                    .map(|s| s.as_str())
                    .unwrap_or("?"),
                mine.map(|n| n.private_ip_addresses().len() - 1)
                    .unwrap_or(0),
                mine.and_then(|n| n.attachment())
                    .and_then(|a| a.delete_on_termination())
            )
        }),
    ));
    let d = ec2
        .describe_network_interfaces()
        .filters(
            Filter::builder()
                .name("attachment.device-index")
                .values("1")
                .build(),
        )
        .filters(Filter::builder().name("subnet-id").values(&subnet).build())
        .send()
        .await;
    out.push((
        "describe by device index and subnet",
        outcome(d, |r| format!("enis={}", r.network_interfaces().len())),
    ));
    out.push((
        "unassign 2 secondary",
        outcome(
            ec2.unassign_private_ip_addresses()
                .network_interface_id(&eni)
                .set_private_ip_addresses(Some(assigned[..2.min(assigned.len())].to_vec()))
                .send()
                .await,
            |_| "ok".into(),
        ),
    ));
    let d = ec2
        .describe_network_interfaces()
        .network_interface_ids(&eni)
        .send()
        .await;
    out.push((
        "describe after unassign",
        outcome(d, |r| {
            format!(
                "secondary={}",
                r.network_interfaces()[0].private_ip_addresses().len() - 1
            )
        }),
    ));
    out.push((
        "delete while attached",
        outcome(
            ec2.delete_network_interface()
                .network_interface_id(&eni)
                .send()
                .await,
            |_| "ok".into(),
        ),
    ));
    out.push((
        "detach",
        outcome(
            ec2.detach_network_interface()
                .attachment_id(&att)
                .send()
                .await,
            |_| "ok".into(),
        ),
    ));
    let d = ec2
        .describe_network_interfaces()
        .filters(Filter::builder().name("status").values("available").build())
        .filters(Filter::builder().name("subnet-id").values(&subnet).build())
        .send()
        .await;
    out.push((
        "describe available",
        outcome(d, |r| format!("enis={}", r.network_interfaces().len())),
    ));
    out.push((
        "delete",
        outcome(
            ec2.delete_network_interface()
                .network_interface_id(&eni)
                .send()
                .await,
            |_| "ok".into(),
        ),
    ));
    out.push((
        "describe unknown ENI",
        outcome(
            ec2.describe_network_interfaces()
                .network_interface_ids("eni-0123456789abcdef0")
                .send()
                .await,
            |_| "ok".into(),
        ),
    ));
    out.push((
        "delete unknown ENI",
        outcome(
            ec2.delete_network_interface()
                .network_interface_id("eni-0123456789abcdef0")
                .send()
                .await,
            |_| "ok".into(),
        ),
    ));
    out.push((
        "detach unknown attachment",
        outcome(
            ec2.detach_network_interface()
                .attachment_id("eni-attach-0123456789abcdef0")
                .send()
                .await,
            |_| "ok".into(),
        ),
    ));
    out.push((
        "describe unknown instance",
        outcome(
            ec2.describe_instances()
                .instance_ids("i-0123456789abcdef0")
                .send()
                .await,
            |_| "ok".into(),
        ),
    ));
    out
}

/// Where LocalStack (moto) and the mock are expected to differ, and why. Every other step must
/// agree on outcome and shape.
const EXPECTED_DIFFERENCES: &[(&str, &str)] = &[
    (
        "assign 3 secondary",
        "LocalStack's answer lists the ENI's primary address with the 3 new ones (EC2 lists only the new ones); the agent never takes a primary address from an Assign answer",
    ),
    (
        "assign 1 prefix",
        "LocalStack ignores Ipv4PrefixCount: the call succeeds and assigns no prefix",
    ),
    (
        "describe by instance",
        "LocalStack ignores Attachment.DeleteOnTermination in ModifyNetworkInterfaceAttribute",
    ),
    (
        "describe by device index and subnet",
        "LocalStack does not implement the attachment.device-index filter and answers InternalFailure; the agent does not use that filter",
    ),
    (
        "delete while attached",
        "LocalStack does not refuse to delete an attached ENI (EC2 answers InvalidNetworkInterface.InUse)",
    ),
    (
        "detach",
        "follows from the step before: LocalStack deleted the attached ENI, so its attachment is gone",
    ),
    (
        "describe available",
        "follows from the same: the ENI no longer exists in LocalStack",
    ),
    (
        "delete",
        "follows from the same: the ENI no longer exists in LocalStack",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_localstack_and_mock() {
    let ep = require_localstack();
    let mock = start_mock(r#"{}"#).await;
    let ls = scenario(&sdk_client(&ep), 34).await;
    let mk = scenario(&sdk_client(&mock.endpoint()), 34).await;
    let expected: BTreeMap<&str, &str> = EXPECTED_DIFFERENCES.iter().copied().collect();
    let mut report = Vec::new();
    let mut unexpected = Vec::new();
    for ((name, l), (_, m)) in ls.iter().zip(mk.iter()) {
        let same = l == m;
        report.push(format!(
            "{name:<36} localstack={l:?} mock={m:?}{}",
            if same { "" } else { "  DIFFERENT" }
        ));
        match (same, expected.get(name)) {
            (true, Some(why)) => unexpected.push(format!(
                "{name}: listed as a difference ({why}) but both agree now"
            )),
            (false, None) => unexpected.push(format!("{name}: localstack {l:?} vs mock {m:?}")),
            _ => {}
        }
    }
    let text = report.join("\n");
    eprintln!("{text}");
    assert!(
        unexpected.is_empty(),
        "unexpected differences:\n{}\n\nfull report:\n{text}",
        unexpected.join("\n")
    );
}

/// One observation of a report: what it is, what it was.
type Obs = (&'static str, String);

/// What the reports say about one scenario on one endpoint, by step.
fn report_observations(endpoint: &str, keys: [(&str, &str); 2], cluster: &str) -> Vec<Obs> {
    use common::awscli::{Aws, aws_binary};
    use common::reports::{id, peered_accounts, prefixd};
    let a = Aws {
        bin: aws_binary(),
        endpoint: endpoint.to_owned(),
        key: "test".into(),
    };
    let (b, c) = (a.as_key(keys[0].0), a.as_key(keys[1].0));
    let p = peered_accounts(&a, (&b, keys[0].1), (&c, keys[1].1), cluster);
    let mut out: Vec<Obs> = Vec::new();
    let mut step = |name: &'static str, v: String| out.push((name, v));
    let overlapping = id(
        &c.ok(&["create-vpc", "--cidr-block", "10.0.128.0/17"]),
        &["Vpc", "VpcId"],
    );
    let failed = a.ok(&[
        "create-vpc-peering-connection",
        "--vpc-id",
        &p.vpc,
        "--peer-vpc-id",
        &overlapping,
        "--peer-owner-id",
        keys[1].1,
    ]);
    step(
        "peering of overlapping VPCs",
        failed["VpcPeeringConnection"]["Status"]["Code"].to_string(),
    );
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("remote.txt");
    std::fs::write(&remote, "100.64.0.0/10 branch offices\n").unwrap();
    let r = prefixd(
        endpoint,
        &[
            "ranges",
            "--cluster",
            cluster,
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
    step("ranges exit code", r.code.to_string());
    let j = r.json();
    step("ranges account", j["account"].to_string());
    let overlaps: Vec<String> = j["overlaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{} {} {}×{} routed:{}",
                o["severity"],
                o["overlap"],
                o["a"]["kind"],
                o["b"]["kind"],
                !o["routed_by"].as_array().unwrap().is_empty()
            )
        })
        .collect();
    step("ranges overlaps", overlaps.join("; "));
    let kinds: Vec<String> = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].to_string())
        .collect();
    step("ranges findings", kinds.join(" "));
    let mut inv: Vec<String> = j["inventory"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] != "route" || !r["cidr"].as_str().unwrap().starts_with("10.99."))
        .map(|r| format!("{} {}", r["cidr"], r["kind"]))
        .collect();
    inv.sort();
    step(
        "ranges inventory (the deleted peering's route aside)",
        inv.join(", "),
    );
    let dead = j["inventory"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cidr"] == "10.99.0.0/16" && r["kind"] == "route")
        .map(|r| r["route"]["state"].to_string())
        .unwrap_or_default();
    step("route through the deleted peering", dead);
    step("ranges suggestions", j["suggestions"].to_string());
    // Capacity: a /24 with an ENI at named addresses, a prefix and an explicit reservation,
    // and a prefix asked for by name.
    let vpc = id(
        &a.ok(&["create-vpc", "--cidr-block", "10.55.0.0/16"]),
        &["Vpc", "VpcId"],
    );
    let s = id(
        &a.ok(&[
            "create-subnet",
            "--vpc-id",
            &vpc,
            "--cidr-block",
            "10.55.0.0/24",
        ]),
        &["Subnet", "SubnetId"],
    );
    let eni = id(
        &a.ok(&[
            "create-network-interface",
            "--subnet-id",
            &s,
            "--private-ip-addresses",
            "PrivateIpAddress=10.55.0.20,Primary=true",
            "PrivateIpAddress=10.55.0.100,Primary=false",
            "--description",
            "ELB app/web",
        ]),
        &["NetworkInterface", "NetworkInterfaceId"],
    );
    let _ = a.run(&[
        "assign-private-ip-addresses",
        "--network-interface-id",
        &eni,
        "--ipv4-prefixes",
        "10.55.0.48/28",
    ]);
    for (cidr, kind) in [("10.55.0.128/27", "prefix"), ("10.55.0.224/28", "explicit")] {
        a.ok(&[
            "create-subnet-cidr-reservation",
            "--subnet-id",
            &s,
            "--cidr",
            cidr,
            "--reservation-type",
            kind,
        ]);
    }
    let cap = prefixd(
        endpoint,
        &[
            "capacity",
            "--subnet",
            &s,
            "--instance-type",
            "m5.large",
            "--pods",
            "30",
            "--json",
        ],
        &[],
    );
    step("capacity exit code", cap.code.to_string());
    let cj = cap.json();
    let sub = &cj["subnets"][0];
    step("capacity /28 map", sub["map"]["blocks"].to_string());
    let mut counts = sub["map"]["counts"].clone();
    counts.as_object_mut().unwrap().remove("allocated");
    step("capacity counts (allocated aside)", counts.to_string());
    step(
        "capacity allocated /28s",
        sub["map"]["counts"]["allocated"].to_string(),
    );
    step("capacity fit", sub["fit"].to_string());
    step(
        "capacity AvailableIpAddressCount",
        sub["available"].to_string(),
    );
    let _ = (&p.pcx_c, &p.tgw);
    out
}

/// Where LocalStack's answers to the reports' calls differ from EC2's (and the mock's), and why.
const REPORT_DIFFERENCES: &[(&str, &str)] = &[
    (
        "peering of overlapping VPCs",
        "LocalStack leaves it initiating-request; EC2 fails it (overlapping CIDRs). The report leaves both out.",
    ),
    (
        "ranges account",
        "LocalStack's default account is 000000000000, the mock's 123456789012",
    ),
    (
        "ranges findings",
        "no blackhole (LocalStack keeps a route through a deleted peering active), and one overlap more (the pending peering)",
    ),
    (
        "route through the deleted peering",
        "active on LocalStack, blackhole on EC2",
    ),
    (
        "capacity /28 map",
        "LocalStack assigns no prefix (the named /28 stays free)",
    ),
    (
        "capacity counts (allocated aside)",
        "the named /28 counts as free on LocalStack",
    ),
    (
        "capacity allocated /28s",
        "LocalStack assigns no prefix: 0 allocated",
    ),
    (
        "capacity AvailableIpAddressCount",
        "the /28 LocalStack did not assign is 16 addresses more available",
    ),
    (
        "ranges overlaps",
        "LocalStack lists the peering of overlapping VPCs as pending: its VPC collides with ours",
    ),
    (
        "ranges inventory (the deleted peering's route aside)",
        "the pending peering of overlapping VPCs: its 10.0.128.0/17 is in LocalStack's inventory",
    ),
];

#[test]
fn reports_differential_localstack_and_mock() {
    let ep = require_localstack();
    // LocalStack takes a 12-digit access key id as the account; the mock is told the same.
    let keys = [
        ("222233334444", "222233334444"),
        ("333344445555", "333344445555"),
    ];
    let mock = common::awscli::MockProcess::start(None);
    for (k, acct) in keys {
        mock.admin(
            "/_mock/accounts",
            &serde_json::json!({"access_key": k, "account": acct}),
        );
    }
    let cluster = format!(
        "ls-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let ls = report_observations(&ep, keys, &cluster);
    let mk = report_observations(&mock.endpoint, keys, &cluster);
    let expected: BTreeMap<&str, &str> = REPORT_DIFFERENCES.iter().copied().collect();
    let mut report = Vec::new();
    let mut unexpected = Vec::new();
    for ((name, l), (_, m)) in ls.iter().zip(mk.iter()) {
        let same = l == m;
        report.push(format!(
            "{name:<52} localstack={l} mock={m}{}",
            if same { "" } else { "  DIFFERENT" }
        ));
        match (same, expected.get(name)) {
            (true, Some(why)) => unexpected.push(format!(
                "{name}: listed as a difference ({why}) but both agree now"
            )),
            (false, None) => unexpected.push(format!("{name}: localstack {l} vs mock {m}")),
            _ => {}
        }
    }
    let text = report.join("\n");
    eprintln!("{text}");
    assert!(
        unexpected.is_empty(),
        "unexpected differences:\n{}\n\nfull report:\n{text}",
        unexpected.join("\n")
    );
    // What both must say: the routed service-range collision, the unrouted Docker one.
    for obs in [&ls, &mk] {
        let overlaps = &obs.iter().find(|(n, _)| *n == "ranges overlaps").unwrap().1;
        assert!(
            overlaps
                .contains("\"error\" \"172.20.0.0/16\" \"service-range\"×\"peer-vpc\" routed:true"),
            "{overlaps}"
        );
        assert!(
            overlaps
                .contains("\"warning\" \"172.17.0.0/16\" \"peer-vpc\"×\"well-known\" routed:false"),
            "{overlaps}"
        );
    }
}
