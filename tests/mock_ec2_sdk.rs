//! The mock EC2 driven by the real aws-sdk-ec2 client over HTTP: the prefix-delegation path and
//! every error the mock promises, with the HTTP status EC2 uses.

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    Filter, Ipv4PrefixSpecificationRequest, NetworkInterfaceAttachmentChanges, ResourceType, Tag,
    TagSpecification,
};
use common::{http_async, sdk_client, start_mock};
use ipnet::Ipv4Net;
use prefixd::core::{Prefix28, Prefix80};
use prefixd::ec2::Action;

const SCENARIO: &str = r#"{
  "vpcs": [{ "name": "main", "cidr": "10.0.0.0/16", "subnets": [
      { "name": "nodes", "cidr": "10.0.0.0/20", "az": "us-west-2a" },
      { "name": "frag", "cidr": "10.0.16.0/24", "az": "us-west-2a", "fragment": true },
      { "name": "reserved", "cidr": "10.0.32.0/24", "az": "us-west-2a",
        "reservations": [{ "cidr": "10.0.32.128/26", "type": "prefix" }] },
      { "name": "tiny", "cidr": "10.0.48.0/26", "az": "us-west-2a" }
  ]}],
  "instances": [
    { "name": "node", "type": "m5.large", "subnet": "nodes" },
    { "name": "old", "type": "m4.large", "subnet": "nodes" }
  ]
}"#;

/// Error code and HTTP status of an SDK error.
fn code_status<E: ProvideErrorMetadata>(
    e: &aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
) -> (String, u16) {
    let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
    (e.code().unwrap_or("").to_owned(), status)
}

/// AvailableIpAddressCount of `subnet`.
async fn available(ec2: &aws_sdk_ec2::Client, subnet: &str) -> i32 {
    ec2.describe_subnets()
        .subnet_ids(subnet)
        .send()
        .await
        .unwrap()
        .subnets()[0]
        .available_ip_address_count()
        .unwrap()
}

/// How many ENIs DescribeNetworkInterfaces lists with filter `name` = `value`.
async fn matching(ec2: &aws_sdk_ec2::Client, name: &str, value: &str) -> usize {
    ec2.describe_network_interfaces()
        .filters(Filter::builder().name(name).values(value).build())
        .send()
        .await
        .unwrap()
        .network_interfaces()
        .len()
}

/// A new ENI in `subnet`, with nothing asked for: its id.
async fn new_eni(ec2: &aws_sdk_ec2::Client, subnet: &str) -> String {
    ec2.create_network_interface()
        .subnet_id(subnet)
        .send()
        .await
        .unwrap()
        .network_interface()
        .unwrap()
        .network_interface_id()
        .unwrap()
        .to_owned()
}

fn prefixes_of(ni: &aws_sdk_ec2::types::NetworkInterface) -> Vec<Prefix28> {
    ni.ipv4_prefixes()
        .iter()
        .map(|p| p.ipv4_prefix().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn prefix_delegation_path_through_the_sdk() {
    let mock = start_mock(SCENARIO).await;
    let ec2 = sdk_client(&mock.endpoint());
    let node = mock.id("node").unwrap().to_owned();
    let subnet = mock.id("nodes").unwrap().to_owned();
    let net: Ipv4Net = "10.0.0.0/20".parse().unwrap();

    // Discovery as the agent will do it.
    let r = ec2
        .describe_instances()
        .instance_ids(&node)
        .send()
        .await
        .unwrap();
    let inst = &r.reservations()[0].instances()[0];
    assert_eq!(inst.instance_type().unwrap().as_str(), "m5.large");
    assert_eq!(inst.subnet_id(), Some(subnet.as_str()));
    let primary = &inst.network_interfaces()[0];
    assert_eq!(primary.attachment().unwrap().device_index(), Some(0));
    let t = ec2
        .describe_instance_types()
        .instance_types("m5.large".into())
        .send()
        .await
        .unwrap();
    let info = t.instance_types()[0].network_info().unwrap();
    assert_eq!(info.maximum_network_interfaces(), Some(3));
    assert_eq!(info.ipv4_addresses_per_interface(), Some(10));
    assert_eq!(
        t.instance_types()[0].hypervisor().unwrap().as_str(),
        "nitro"
    );
    let s = ec2
        .describe_subnets()
        .subnet_ids(&subnet)
        .send()
        .await
        .unwrap();
    // /20: 4096 − 5 reserved − 2 primary addresses.
    assert_eq!(s.subnets()[0].available_ip_address_count(), Some(4089));

    // Create an ENI with one prefix, tagged, then attach it and make it DeleteOnTermination.
    let created = ec2
        .create_network_interface()
        .subnet_id(&subnet)
        .description(format!("prefixd ENI for {node}"))
        .ipv4_prefix_count(1)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::NetworkInterface)
                .tags(
                    Tag::builder()
                        .key("node.k8s.amazonaws.com/instance_id")
                        .value(&node)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let eni = created.network_interface().unwrap();
    let eni_id = eni.network_interface_id().unwrap().to_owned();
    assert_eq!(eni.status().unwrap().as_str(), "available");
    let mut all = prefixes_of(eni);
    assert_eq!(all.len(), 1);
    let att = ec2
        .attach_network_interface()
        .network_interface_id(&eni_id)
        .instance_id(&node)
        .device_index(1)
        .send()
        .await
        .unwrap();
    let att_id = att.attachment_id().unwrap().to_owned();
    assert_eq!(att.network_card_index(), Some(0));
    ec2.modify_network_interface_attribute()
        .network_interface_id(&eni_id)
        .attachment(
            NetworkInterfaceAttachmentChanges::builder()
                .attachment_id(&att_id)
                .delete_on_termination(true)
                .build(),
        )
        .send()
        .await
        .unwrap();

    // Assign two more: the response carries them.
    let a = ec2
        .assign_private_ip_addresses()
        .network_interface_id(&eni_id)
        .ipv4_prefix_count(2)
        .send()
        .await
        .unwrap();
    let got: Vec<Prefix28> = a
        .assigned_ipv4_prefixes()
        .iter()
        .map(|p| p.ipv4_prefix().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got.len(), 2);
    all.extend(got);
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), 3);
    for p in &all {
        assert!(
            net.contains(&p.network()) && net.contains(&p.addr(15)),
            "{p} outside the subnet"
        );
    }

    // Describe with filters.
    let d = ec2
        .describe_network_interfaces()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(&node)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(d.network_interfaces().len(), 2);
    let mine = d
        .network_interfaces()
        .iter()
        .find(|n| n.network_interface_id() == Some(eni_id.as_str()))
        .unwrap();
    assert_eq!(prefixes_of(mine).len(), 3);
    assert_eq!(
        mine.attachment().unwrap().delete_on_termination(),
        Some(true)
    );
    assert_eq!(mine.status().unwrap().as_str(), "in-use");
    for (name, value, expect) in [
        ("tag:node.k8s.amazonaws.com/instance_id", node.as_str(), 1),
        ("tag-key", "node.k8s.amazonaws.com/instance_id", 1),
        ("attachment.device-index", "1", 1),
        ("status", "available", 0),
        ("subnet-id", subnet.as_str(), 3), // both node ENIs and the m4's primary
        ("network-interface-id", eni_id.as_str(), 1),
    ] {
        assert_eq!(
            matching(&ec2, name, value).await,
            expect,
            "filter {name}={value}"
        );
    }
    // CreateTags, then the tag filters see it.
    ec2.create_tags()
        .resources(&eni_id)
        .tags(Tag::builder().key("team").value("net").build())
        .send()
        .await
        .unwrap();
    let d = ec2
        .describe_network_interfaces()
        .filters(Filter::builder().name("tag:team").values("net").build())
        .send()
        .await
        .unwrap();
    assert_eq!(d.network_interfaces().len(), 1);
    assert!(
        d.network_interfaces()[0]
            .tag_set()
            .iter()
            .any(|t| t.key() == Some("team") && t.value() == Some("net"))
    );
    let e = ec2
        .create_tags()
        .resources("eni-0000000000000dead")
        .tags(Tag::builder().key("a").value("b").build())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code_status(&e).0, "InvalidNetworkInterfaceID.NotFound");
    let vpc = mine.vpc_id().unwrap().to_owned();
    assert_eq!(matching(&ec2, "vpc-id", &vpc).await, 3);

    // Unassign one: gone from the ENI and the subnet gets it back.
    let before = available(&ec2, &subnet).await;
    ec2.unassign_private_ip_addresses()
        .network_interface_id(&eni_id)
        .ipv4_prefixes(all[0].to_string())
        .send()
        .await
        .unwrap();
    let d = ec2
        .describe_network_interfaces()
        .network_interface_ids(&eni_id)
        .send()
        .await
        .unwrap();
    let left = prefixes_of(&d.network_interfaces()[0]);
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&all[0]));
    let after = available(&ec2, &subnet).await;
    assert_eq!(after, before + 16);

    // Detach and delete.
    ec2.detach_network_interface()
        .attachment_id(&att_id)
        .send()
        .await
        .unwrap();
    ec2.delete_network_interface()
        .network_interface_id(&eni_id)
        .send()
        .await
        .unwrap();
    let e = ec2
        .describe_network_interfaces()
        .network_interface_ids(&eni_id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code_status(&e),
        ("InvalidNetworkInterfaceID.NotFound".into(), 400)
    );
    mock.shutdown().await;
}

/// One step of a table: a request sent through the SDK, and what it answered — `("ok", 200)`,
/// or EC2's error code and HTTP status.
type Step<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = (String, u16)> + 'a>>;

/// A request that must fail: its code and status.
macro_rules! fails {
    ($req:expr) => {
        Box::pin(async { code_status(&$req.send().await.unwrap_err()) }) as Step
    };
}

/// A request that must succeed.
macro_rules! succeeds {
    ($req:expr) => {
        Box::pin(async {
            $req.send().await.unwrap();
            ("ok".to_owned(), 200u16)
        }) as Step
    };
}

/// Runs the steps in order: each answered as expected, or the step's name says which did not.
async fn run_steps(steps: Vec<(&str, Step<'_>, &str)>) {
    for (what, step, want) in steps {
        let (code, status) = step.await;
        let want_status = if want == "ok" { 200 } else { 400 };
        assert_eq!((code.as_str(), status), (want, want_status), "{what}");
    }
}

fn explicit(prefix: &str) -> Ipv4PrefixSpecificationRequest {
    Ipv4PrefixSpecificationRequest::builder()
        .ipv4_prefix(prefix)
        .build()
}

#[tokio::test]
async fn errors_through_the_sdk() {
    let mock = start_mock(SCENARIO).await;
    let ec2 = sdk_client(&mock.endpoint());
    let node = mock.id("node").unwrap().to_owned();
    let subnet = mock.id("nodes").unwrap().to_owned();
    let eni_of = |instance: &str| mock.with_model(|m| m.instances[instance].primary_eni.clone());
    let primary = eni_of(&node);
    let old_eni = eni_of(mock.id("old").unwrap());
    let frag = mock.id("frag").unwrap().to_owned();
    let tiny = mock.id("tiny").unwrap().to_owned();
    let (a, b, c) = (
        new_eni(&ec2, &subnet).await,
        new_eni(&ec2, &subnet).await,
        new_eni(&ec2, &subnet).await,
    );
    let assign = || {
        ec2.assign_private_ip_addresses()
            .network_interface_id(&primary)
    };
    let attach = |eni: &str, dev| {
        ec2.attach_network_interface()
            .network_interface_id(eni)
            .instance_id(&node)
            .device_index(dev)
    };
    let create = |subnet: &str| ec2.create_network_interface().subnet_id(subnet);
    run_steps(vec![
        // Slots: m5.large has 10 per ENI, the primary address takes one.
        (
            "six prefixes",
            succeeds!(assign().ipv4_prefix_count(6)),
            "ok",
        ),
        (
            "two addresses",
            succeeds!(assign().secondary_private_ip_address_count(2)),
            "ok",
        ),
        (
            "two more prefixes: 1 + 6 + 2 + 2 > 10",
            fails!(assign().ipv4_prefix_count(2)),
            "PrivateIpAddressLimitExceeded",
        ),
        // Exclusive parameters.
        (
            "prefix count and address count",
            fails!(
                assign()
                    .ipv4_prefix_count(1)
                    .secondary_private_ip_address_count(1)
            ),
            "InvalidParameterCombination",
        ),
        (
            "prefix count and explicit prefix",
            fails!(
                create(&subnet)
                    .ipv4_prefix_count(1)
                    .ipv4_prefixes(explicit("10.0.1.0/28"))
            ),
            "InvalidParameterCombination",
        ),
        // Explicit prefixes: taken, misaligned, free.
        (
            "a taken prefix",
            fails!(create(&subnet).ipv4_prefixes(explicit("10.0.0.16/28"))),
            "InvalidParameterValue",
        ),
        (
            "a misaligned prefix",
            fails!(create(&subnet).ipv4_prefixes(explicit("10.0.5.8/28"))),
            "InvalidParameterValue",
        ),
        (
            "a free prefix",
            succeeds!(create(&subnet).ipv4_prefixes(explicit("10.0.5.16/28"))),
            "ok",
        ),
        // Attachment limit and device index.
        ("attach at 1", succeeds!(attach(&a, 1)), "ok"),
        (
            "attach at a taken index",
            fails!(attach(&b, 1)),
            "InvalidParameterValue",
        ),
        ("attach at 2", succeeds!(attach(&b, 2)), "ok"),
        (
            "a fourth ENI on an m5.large",
            fails!(attach(&c, 3)),
            "AttachmentLimitExceeded",
        ),
        // Delete an attached ENI; unknown and malformed ids.
        (
            "delete an attached ENI",
            fails!(ec2.delete_network_interface().network_interface_id(&a)),
            "InvalidNetworkInterface.InUse",
        ),
        (
            "delete an unknown ENI",
            fails!(
                ec2.delete_network_interface()
                    .network_interface_id("eni-0000000000000dead")
            ),
            "InvalidNetworkInterfaceID.NotFound",
        ),
        (
            "a malformed ENI id",
            fails!(ec2.delete_network_interface().network_interface_id("nic-1")),
            "InvalidNetworkInterfaceID.Malformed",
        ),
        (
            "detach an unknown attachment",
            fails!(
                ec2.detach_network_interface()
                    .attachment_id("eni-attach-0000000000000dead")
            ),
            "InvalidAttachmentID.NotFound",
        ),
        (
            "an unknown instance",
            fails!(ec2.describe_instances().instance_ids("i-0000000000000dead")),
            "InvalidInstanceID.NotFound",
        ),
        (
            "an unknown subnet",
            fails!(
                ec2.describe_subnets()
                    .subnet_ids("subnet-0000000000000dead")
            ),
            "InvalidSubnetID.NotFound",
        ),
        (
            "an unknown instance type",
            fails!(
                ec2.describe_instance_types()
                    .instance_types("m5.mega".into())
            ),
            "InvalidInstanceType",
        ),
        (
            "an unknown filter",
            fails!(
                ec2.describe_network_interfaces()
                    .filters(Filter::builder().name("bogus").values("x").build())
            ),
            "InvalidParameterValue",
        ),
        // Xen refuses prefixes but takes secondary addresses.
        (
            "a prefix on Xen",
            fails!(
                ec2.assign_private_ip_addresses()
                    .network_interface_id(&old_eni)
                    .ipv4_prefix_count(1)
            ),
            "InvalidParameterValue",
        ),
        (
            "addresses on Xen",
            succeeds!(
                ec2.assign_private_ip_addresses()
                    .network_interface_id(&old_eni)
                    .secondary_private_ip_address_count(3)
            ),
            "ok",
        ),
        // Fragmentation: many free addresses, no free /28.
        (
            "a prefix from a fragmented subnet",
            fails!(create(&frag).ipv4_prefix_count(1)),
            "InsufficientCidrBlocks",
        ),
        // All or nothing: a /26 has two usable /28s.
        (
            "three prefixes from a /26",
            fails!(create(&tiny).ipv4_prefix_count(3)),
            "InsufficientCidrBlocks",
        ),
    ])
    .await;
    let free = |s: &str| {
        let s = s.to_owned();
        mock.with_model(move |m| m.subnets[&s].space.available())
    };
    assert_eq!(free(&tiny), 59, "the failed create took nothing");
    assert!(free(&frag) > 200, "free addresses, but no free /28");
    let e = ec2
        .assign_private_ip_addresses()
        .network_interface_id(&old_eni)
        .ipv4_prefix_count(1)
        .send()
        .await
        .unwrap_err();
    assert!(e.message().unwrap().contains("Nitro"));
    // /32 addresses still come from a fragmented subnet, and never collide.
    let ok = ec2
        .create_network_interface()
        .subnet_id(&frag)
        .secondary_private_ip_address_count(5)
        .send()
        .await
        .unwrap();
    let ips: HashSet<String> = ok
        .network_interface()
        .unwrap()
        .private_ip_addresses()
        .iter()
        .map(|p| p.private_ip_address().unwrap().to_owned())
        .collect();
    assert_eq!(ips.len(), 6, "addresses never collide");
    let taken = mock.with_model(|m| m.enis[&primary].prefixes.clone());
    assert!(
        taken.contains(&"10.0.0.16/28".parse().unwrap()),
        "the taken prefix of the table above: {taken:?}"
    );

    // Prefix reservations are used first.
    let reserved = mock.id("reserved").unwrap().to_owned();
    let r = ec2
        .create_network_interface()
        .subnet_id(&reserved)
        .ipv4_prefix_count(2)
        .send()
        .await
        .unwrap();
    let res_net: Ipv4Net = "10.0.32.128/26".parse().unwrap();
    for p in prefixes_of(r.network_interface().unwrap()) {
        assert!(
            res_net.contains(&p.network()),
            "{p} not from the reservation"
        );
    }
    let g = ec2
        .get_subnet_cidr_reservations()
        .subnet_id(&reserved)
        .send()
        .await
        .unwrap();
    assert_eq!(g.subnet_ipv4_cidr_reservations().len(), 1);
    assert_eq!(
        g.subnet_ipv4_cidr_reservations()[0]
            .reservation_type()
            .unwrap()
            .as_str(),
        "prefix"
    );
    let id = g.subnet_ipv4_cidr_reservations()[0]
        .subnet_cidr_reservation_id()
        .unwrap()
        .to_owned();
    let delete = || {
        ec2.delete_subnet_cidr_reservation()
            .subnet_cidr_reservation_id(&id)
    };
    run_steps(vec![
        ("delete the reservation", succeeds!(delete()), "ok"),
        (
            "delete it again",
            fails!(delete()),
            "InvalidSubnetCidrReservationID.NotFound",
        ),
    ])
    .await;
    let c = ec2
        .create_subnet_cidr_reservation()
        .subnet_id(&reserved)
        .cidr("10.0.32.64/28")
        .reservation_type(aws_sdk_ec2::types::SubnetCidrReservationType::Prefix)
        .send()
        .await
        .unwrap();
    assert_eq!(
        c.subnet_cidr_reservation().unwrap().cidr(),
        Some("10.0.32.64/28")
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn throttling_faults_pagination_and_terminate() {
    let mock = start_mock(SCENARIO).await;
    let ec2 = sdk_client(&mock.endpoint());
    let node = mock.id("node").unwrap().to_owned();
    let subnet = mock.id("nodes").unwrap().to_owned();

    // Pagination over eight ENIs.
    for _ in 0..6 {
        ec2.create_network_interface()
            .subnet_id(&subnet)
            .send()
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let r = ec2
            .describe_network_interfaces()
            .max_results(5)
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        assert!(r.network_interfaces().len() <= 5);
        seen.extend(
            r.network_interfaces()
                .iter()
                .map(|n| n.network_interface_id().unwrap().to_owned()),
        );
        token = r.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 8);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 8);

    // Faults from the admin endpoint: the next 2 attaches fail with InternalError (HTTP 500).
    let (status, _) = http_async(
        mock.addr(),
        "POST",
        "/_mock/faults",
        vec![("Content-Type", "application/json".into())],
        r#"{"action":"AttachNetworkInterface","fail_next":2,"code":"InternalError"}"#.into(),
    )
    .await;
    assert_eq!(status, 200);
    let eni = new_eni(&ec2, &subnet).await;
    for _ in 0..2 {
        let e = ec2
            .attach_network_interface()
            .network_interface_id(&eni)
            .instance_id(&node)
            .device_index(1)
            .send()
            .await
            .unwrap_err();
        assert_eq!(code_status(&e), ("InternalError".into(), 500));
    }
    ec2.attach_network_interface()
        .network_interface_id(&eni)
        .instance_id(&node)
        .device_index(1)
        .send()
        .await
        .unwrap();

    // Latency model: an attachment shows `attaching` until its delay has passed.
    mock.with_model(|m| m.attach_delay_ms = 1_500);
    let slow = new_eni(&ec2, &subnet).await;
    ec2.attach_network_interface()
        .network_interface_id(&slow)
        .instance_id(&node)
        .device_index(2)
        .send()
        .await
        .unwrap();
    let status_of = |ec2: aws_sdk_ec2::Client, id: String| async move {
        ec2.describe_network_interfaces()
            .network_interface_ids(id)
            .send()
            .await
            .unwrap()
            .network_interfaces()[0]
            .attachment()
            .unwrap()
            .status()
            .unwrap()
            .as_str()
            .to_owned()
    };
    assert_eq!(status_of(ec2.clone(), slow.clone()).await, "attaching");
    tokio::time::sleep(std::time::Duration::from_millis(1_700)).await;
    assert_eq!(status_of(ec2.clone(), slow.clone()).await, "attached");

    // Terminate: DeleteOnTermination ENIs go (the primary), the others stay `available`.
    ec2.terminate_instances()
        .instance_ids(&node)
        .send()
        .await
        .unwrap();
    let d = ec2
        .describe_network_interfaces()
        .network_interface_ids(&eni)
        .network_interface_ids(&slow)
        .send()
        .await
        .unwrap();
    assert!(
        d.network_interfaces()
            .iter()
            .all(|n| n.status().unwrap().as_str() == "available")
    );

    // Throttling on: Assign's bucket holds 100; the 101st call in a burst gets 503.
    // Time scale 0.001: the bucket refills 5 tokens per 1,000 s, so none come back during the
    // burst and exactly one call of 101 is throttled.
    mock.with_control(|c| {
        c.throttling = true;
        c.time_scale = 0.001;
    });
    let other = new_eni(&ec2, &subnet).await;
    let mut throttled = 0;
    for _ in 0..101 {
        if let Err(e) = ec2
            .unassign_private_ip_addresses()
            .network_interface_id(&other)
            .private_ip_addresses("10.0.9.9")
            .send()
            .await
        {
            let (code, status) = code_status(&e);
            if code == "RequestLimitExceeded" {
                assert_eq!(status, 503);
                throttled += 1;
            }
        }
    }
    assert_eq!(throttled, 1, "100 tokens, 101 calls");
    let stats = mock.stats();
    assert_eq!(
        stats
            .throttled
            .get(&Action::UnassignPrivateIpAddresses)
            .copied(),
        Some(throttled)
    );
    // Another action is not throttled by that.
    ec2.describe_subnets()
        .subnet_ids(&subnet)
        .send()
        .await
        .unwrap();
    mock.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_ec2_error_codes() {
    let mock = start_mock(SCENARIO).await;
    let post = |body: &'static str| {
        http_async(
            mock.addr(),
            "POST",
            "/",
            vec![("Content-Type", "application/x-www-form-urlencoded".into())],
            body.into(),
        )
    };
    for (body, wants) in [
        (
            "Action=LaunchRockets&Version=2016-11-15",
            &["<Code>InvalidAction</Code>", "<RequestID>"][..],
        ),
        ("Version=2016-11-15", &["<Code>MissingAction</Code>"]),
        (
            "Action=AttachNetworkInterface&Version=2016-11-15&InstanceId=i-1",
            &["<Code>MissingParameter</Code>", "NetworkInterfaceId"],
        ),
        (
            "Action=AssignPrivateIpAddresses&Version=2016-11-15&NetworkInterfaceId=eni-1&Ipv4PrefixCount=lots",
            &["<Code>InvalidParameterValue</Code>"],
        ),
        (
            "Action=DescribeNetworkInterfaces&MaxResults=2",
            &["MaxResults"],
        ),
        (
            "Action=DescribeNetworkInterfaces&NextToken=garbage",
            &["InvalidNextToken"],
        ),
    ] {
        let (s, b) = post(body).await;
        assert_eq!(s, 400, "{body}");
        for w in wants {
            assert!(b.contains(w), "{body}: {w} not in {b}");
        }
    }
    // Garbage bytes never panic or hang.
    let (s, _) = http_async(
        mock.addr(),
        "POST",
        "/",
        vec![],
        "%%%\u{0}&&==&Action".into(),
    )
    .await;
    assert_eq!(s, 400);
    let (s, b) = http_async(
        mock.addr(),
        "POST",
        "/_mock/faults",
        vec![("Content-Type", "application/json".into())],
        r#"{"action":"Nope","fail_next":1,"code":"X"}"#.into(),
    )
    .await;
    assert_eq!(s, 400);
    assert!(b.contains("Nope"), "{b}");
    mock.shutdown().await;
}

#[tokio::test]
async fn imds_v2_reflects_live_state() {
    let mock = start_mock(SCENARIO).await;
    let ec2 = sdk_client(&mock.endpoint());
    let node = mock.id("node").unwrap().to_owned();
    let addr = mock.addr();

    // Without a token: 401. Token TTL out of range: 400.
    let (s, _) = http_async(
        addr,
        "GET",
        "/latest/meta-data/instance-id",
        vec![],
        String::new(),
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = http_async(
        addr,
        "PUT",
        "/latest/api/token",
        vec![("X-aws-ec2-metadata-token-ttl-seconds", "0".into())],
        String::new(),
    )
    .await;
    assert_eq!(s, 400);

    // aws-config's own IMDS client, as the agent uses it.
    let imds = aws_config::imds::Client::builder()
        .endpoint(mock.endpoint())
        .unwrap()
        .build();
    let get = |p: &'static str| {
        let imds = imds.clone();
        async move { imds.get(p).await.map(String::from) }
    };
    // The card-0 network-card and a missing ipv4-prefix answer 404, as IMDS does.
    let mac = get("/latest/meta-data/mac").await.unwrap();
    let base = format!("/latest/meta-data/network/interfaces/macs/{mac}");
    let get_mac = |k: &str| {
        let imds = imds.clone();
        let p = format!("{base}/{k}");
        async move { imds.get(&p).await.map(String::from) }
    };
    let primary = get_mac("interface-id").await.unwrap();
    let subnet = mock.id("nodes").unwrap().to_owned();
    let macs = format!("{mac}/");
    // (path, what it answers: exactly this, or None for 404).
    let exact: Vec<(String, Option<&str>)> = vec![
        ("instance-id".into(), Some(&node)),
        ("instance-type".into(), Some("m5.large")),
        ("placement/region".into(), Some("us-west-2")),
        ("placement/availability-zone".into(), Some("us-west-2a")),
        ("network/interfaces/macs/".into(), Some(&macs)),
        (format!("{base}/device-number"), Some("0")),
        (format!("{base}/network-card"), None),
        (format!("{base}/ipv4-prefix"), None),
        (
            format!("{base}/subnet-ipv4-cidr-block"),
            Some("10.0.0.0/20"),
        ),
        (format!("{base}/vpc-ipv4-cidr-blocks"), Some("10.0.0.0/16")),
        (format!("{base}/subnet-id"), Some(&subnet)),
    ];
    for (path, want) in exact {
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/latest/meta-data/{path}")
        };
        let got = imds.get(&path).await.map(String::from).ok();
        assert_eq!(got.as_deref(), want, "{path}");
    }
    assert!(primary.starts_with("eni-"));
    for (key, prefix) in [("security-group-ids", "sg-"), ("vpc-id", "vpc-")] {
        assert!(get_mac(key).await.unwrap().starts_with(prefix), "{key}");
    }

    // Live: a prefix assigned through EC2 shows up.
    let a = ec2
        .assign_private_ip_addresses()
        .network_interface_id(&primary)
        .ipv4_prefix_count(1)
        .send()
        .await
        .unwrap();
    let p = a.assigned_ipv4_prefixes()[0]
        .ipv4_prefix()
        .unwrap()
        .to_owned();
    assert_eq!(get_mac("ipv4-prefix").await.unwrap(), p);
    let ips = get_mac("local-ipv4s").await.unwrap();
    assert!(ips.lines().next().unwrap().parse::<Ipv4Addr>().is_ok());
    mock.shutdown().await;
}

#[tokio::test]
async fn admin_fragments_a_subnet_and_sets_latency() {
    let mock = start_mock(SCENARIO).await;
    let ec2 = sdk_client(&mock.endpoint());
    let subnet = mock.id("tiny").unwrap().to_owned();
    let json = |b: &'static str| {
        (
            vec![("Content-Type", "application/json".to_owned())],
            b.to_owned(),
        )
    };
    let (h, b) = json(r#"{"subnet":"tiny"}"#);
    let (s, body) = http_async(mock.addr(), "POST", "/_mock/fragment", h, b).await;
    assert_eq!(s, 200, "{body}");
    let e = ec2
        .create_network_interface()
        .subnet_id(&subnet)
        .ipv4_prefix_count(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code_status(&e).0, "InsufficientCidrBlocks");
    let avail = available(&ec2, &subnet).await;
    assert!(avail >= 50, "free addresses remain: {avail}");

    // A 400 ms delay on DescribeSubnets: the call takes at least that long (a lower bound only).
    let (h, b) = json(r#"{"action":"DescribeSubnets","delay":"400ms"}"#);
    assert_eq!(
        http_async(mock.addr(), "POST", "/_mock/latency", h, b)
            .await
            .0,
        200
    );
    let t = std::time::Instant::now();
    ec2.describe_subnets()
        .subnet_ids(&subnet)
        .send()
        .await
        .unwrap();
    assert!(t.elapsed() >= std::time::Duration::from_millis(400));
    let (h, b) = json(r#"{"action":"DescribeSubnets","delay":"soon"}"#);
    assert_eq!(
        http_async(mock.addr(), "POST", "/_mock/latency", h, b)
            .await
            .0,
        400
    );

    // Error rate 1.0 from the admin API: every call fails with the code.
    let (h, b) = json(r#"{"action":"CreateTags","rate":1.0,"code":"UnauthorizedOperation"}"#);
    assert_eq!(
        http_async(mock.addr(), "POST", "/_mock/error-rates", h, b)
            .await
            .0,
        200
    );
    let e = ec2
        .create_tags()
        .resources(&subnet)
        .tags(Tag::builder().key("a").value("b").build())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code_status(&e), ("UnauthorizedOperation".into(), 403));
    let (s, stats) = http_async(mock.addr(), "GET", "/_mock/stats", vec![], String::new()).await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["errors"]["CreateTags"]["UnauthorizedOperation"], 1);
    mock.shutdown().await;
}

/// IPv6 through the SDK: a VPC's Amazon-provided /56, a subnet's /64, one /80 per ENI with
/// `Ipv6PrefixCount` (aligned, inside the /64, never twice), EC2's refusals (both forms at once,
/// Xen, a subnet without IPv6, the per-ENI limit), DescribeNetworkInterfaces and IMDS.
#[tokio::test]
async fn ipv6_prefixes_through_the_sdk_and_imds() {
    let mock = start_mock(SCENARIO).await;
    let ec2 = sdk_client(&mock.endpoint());
    let v4_subnet = mock.id("nodes").unwrap().to_owned();
    let old = mock.id("old").unwrap().to_owned();

    let vpc = ec2
        .create_vpc()
        .cidr_block("10.8.0.0/16")
        .amazon_provided_ipv6_cidr_block(true)
        .send()
        .await
        .unwrap();
    let vpc = vpc.vpc().unwrap();
    let vpc_id = vpc.vpc_id().unwrap().to_owned();
    let v56: ipnet::Ipv6Net = vpc.ipv6_cidr_block_association_set()[0]
        .ipv6_cidr_block()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(v56.prefix_len(), 56);
    let v64 = v56.subnets(64).unwrap().nth(3).unwrap();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.8.0.0/20")
        .ipv6_cidr_block(v64.to_string())
        .availability_zone("us-west-2a")
        .send()
        .await
        .unwrap();
    let subnet_id = subnet.subnet().unwrap().subnet_id().unwrap().to_owned();
    let listed = ec2
        .describe_subnets()
        .subnet_ids(&subnet_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.subnets()[0].ipv6_cidr_block_association_set()[0].ipv6_cidr_block(),
        Some(v64.to_string().as_str())
    );
    // A /64 outside the VPC's /56, or a second subnet on the same /64: refused.
    let outside: ipnet::Ipv6Net = "2001:db8::/64".parse().unwrap();
    let e = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.8.16.0/20")
        .ipv6_cidr_block(outside.to_string())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code_status(&e), ("InvalidSubnet.Range".into(), 400));
    let e = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.8.16.0/20")
        .ipv6_cidr_block(v64.to_string())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code_status(&e), ("InvalidSubnet.Conflict".into(), 400));

    // A node in the IPv6 subnet, its /80 as the agent asks for it.
    let run = ec2
        .run_instances()
        .image_id("ami-1")
        .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
        .subnet_id(&subnet_id)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let inst = &run.instances()[0];
    let eni = inst.network_interfaces()[0]
        .network_interface_id()
        .unwrap()
        .to_owned();
    let both = ec2
        .assign_ipv6_addresses()
        .network_interface_id(&eni)
        .ipv6_prefix_count(1)
        .ipv6_prefixes("2600::/80")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code_status(&both),
        ("InvalidParameterCombination".into(), 400)
    );
    let mut seen = HashSet::new();
    for _ in 0..3 {
        let r = ec2
            .assign_ipv6_addresses()
            .network_interface_id(&eni)
            .ipv6_prefix_count(1)
            .send()
            .await
            .unwrap();
        let p: Prefix80 = r.assigned_ipv6_prefixes()[0].parse().unwrap();
        assert!(v64.contains(&p.network()), "{p} outside {v64}");
        assert!(seen.insert(p), "{p} assigned twice");
    }
    let r = ec2
        .assign_ipv6_addresses()
        .network_interface_id(&eni)
        .ipv6_address_count(2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.assigned_ipv6_addresses().len(), 2);
    let d = ec2
        .describe_network_interfaces()
        .network_interface_ids(&eni)
        .send()
        .await
        .unwrap();
    let ni = &d.network_interfaces()[0];
    let listed: HashSet<Prefix80> = ni
        .ipv6_prefixes()
        .iter()
        .map(|p| p.ipv6_prefix().unwrap().parse().unwrap())
        .collect();
    assert_eq!(listed, seen);
    assert_eq!(ni.ipv6_addresses().len(), 2);
    // m5.large: 10 IPv6 addresses per interface; 3 prefixes + 2 addresses held.
    let e = ec2
        .assign_ipv6_addresses()
        .network_interface_id(&eni)
        .ipv6_address_count(6)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code_status(&e).0, "InvalidParameterValue");
    assert!(e.message().unwrap().contains("limit"), "{e:?}");
    // Unassign gives a prefix back; the next one is the same slot.
    let first = *seen.iter().min().unwrap();
    ec2.unassign_ipv6_addresses()
        .network_interface_id(&eni)
        .ipv6_prefixes(first.to_string())
        .send()
        .await
        .unwrap();
    let again = ec2
        .assign_ipv6_addresses()
        .network_interface_id(&eni)
        .ipv6_prefix_count(1)
        .send()
        .await
        .unwrap();
    assert_eq!(again.assigned_ipv6_prefixes(), [first.to_string()]);

    // A subnet without IPv6, and a Xen instance: refused with the reason.
    let old_eni = ec2
        .describe_instances()
        .instance_ids(&old)
        .send()
        .await
        .unwrap()
        .reservations()[0]
        .instances()[0]
        .network_interfaces()[0]
        .network_interface_id()
        .unwrap()
        .to_owned();
    let e = ec2
        .assign_ipv6_addresses()
        .network_interface_id(&old_eni)
        .ipv6_prefix_count(1)
        .send()
        .await
        .unwrap_err();
    assert!(e.message().unwrap().contains("Nitro"), "{e:?}");
    let v4_eni = new_eni(&ec2, &v4_subnet).await;
    let e = ec2
        .assign_ipv6_addresses()
        .network_interface_id(&v4_eni)
        .ipv6_prefix_count(1)
        .send()
        .await
        .unwrap_err();
    assert!(e.message().unwrap().contains("no IPv6 CIDR"), "{e:?}");

    // The adapter the agent uses reads the same.
    let adapter = prefixd::ec2::sdk::SdkEc2::new(
        ec2.clone(),
        prefixd::ec2::limiter::Limiter::new(100.0, 100),
        std::sync::Arc::new(prefixd::metrics::Metrics::new()),
    );
    use prefixd::ec2::Ec2;
    let sid: prefixd::core::SubnetId = subnet_id.parse().unwrap();
    let info = adapter.describe_subnets(&[sid]).await.unwrap();
    assert_eq!(info[0].ipv6_cidrs, vec![v64]);

    // IMDS of that instance: the prefixes and the subnet's and VPC's blocks.
    let mac = ni.mac_address().unwrap();
    let base = format!("network/interfaces/macs/{mac}");
    let id = inst.instance_id().unwrap();
    let get = |k: &str| {
        let (status, body) = mock
            .account()
            .read(|m| prefixd::mock::imds::metadata(m, id, &format!("{base}/{k}")));
        (status == 200).then_some(body)
    };
    let prefixes: HashSet<Prefix80> = get("ipv6-prefix")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(prefixes.len(), 3);
    assert_eq!(get("subnet-ipv6-cidr-blocks").unwrap(), v64.to_string());
    assert_eq!(get("vpc-ipv6-cidr-blocks").unwrap(), v56.to_string());
    assert_eq!(get("ipv6s").unwrap().lines().count(), 2);
}
