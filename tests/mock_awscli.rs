//! The mock EC2 driven by a client written by others: the aws CLI, against `prefixd mock-ec2`
//! running as its own process. The aws CLI comes from `scripts/test-all` (PREFIXD_AWS_CLI) or
//! PATH; without it this test fails and says how to get it.

mod common;

use std::net::Ipv4Addr;

use common::awscli::{Aws, MockProcess};
use ipnet::Ipv4Net;
use prefixd::core::Prefix28;
use serde_json::Value;

fn prefixes(eni: &Value) -> Vec<Prefix28> {
    eni["Ipv4Prefixes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["Ipv4Prefix"].as_str().unwrap().parse().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn aws_cli_drives_the_prefix_delegation_path() {
    let mock = MockProcess::start(None);
    let aws: Aws = mock.aws();

    let vpc = aws.ok(&["create-vpc", "--cidr-block", "10.1.0.0/16"]);
    let vpc_id = vpc["Vpc"]["VpcId"].as_str().unwrap().to_owned();
    assert!(vpc_id.starts_with("vpc-"));
    assert_eq!(vpc["Vpc"]["CidrBlock"], "10.1.0.0/16");

    let subnet = aws.ok(&[
        "create-subnet",
        "--vpc-id",
        &vpc_id,
        "--cidr-block",
        "10.1.0.0/24",
        "--availability-zone",
        "us-west-2b",
    ]);
    let subnet_id = subnet["Subnet"]["SubnetId"].as_str().unwrap().to_owned();
    assert_eq!(subnet["Subnet"]["AvailableIpAddressCount"], 251);
    assert_eq!(subnet["Subnet"]["AvailabilityZone"], "us-west-2b");
    let net: Ipv4Net = "10.1.0.0/24".parse().unwrap();

    let run = aws.ok(&[
        "run-instances",
        "--image-id",
        "ami-12345678",
        "--instance-type",
        "m5.large",
        "--count",
        "1",
        "--subnet-id",
        &subnet_id,
    ]);
    let inst = &run["Instances"][0];
    let instance_id = inst["InstanceId"].as_str().unwrap().to_owned();
    assert_eq!(inst["InstanceType"], "m5.large");
    assert_eq!(inst["State"]["Name"], "running");
    assert_eq!(inst["NetworkInterfaces"][0]["Attachment"]["DeviceIndex"], 0);
    let primary_ip: Ipv4Addr = inst["PrivateIpAddress"].as_str().unwrap().parse().unwrap();
    assert!(net.contains(&primary_ip));

    let created = aws.ok(&[
        "create-network-interface",
        "--subnet-id",
        &subnet_id,
        "--description",
        "prefixd test",
        "--ipv4-prefix-count",
        "1",
    ]);
    let eni = &created["NetworkInterface"];
    let eni_id = eni["NetworkInterfaceId"].as_str().unwrap().to_owned();
    assert_eq!(eni["Status"], "available");
    assert_eq!(eni["Description"], "prefixd test");
    assert_eq!(eni["SubnetId"], subnet_id.as_str());
    assert_eq!(eni["VpcId"], vpc_id.as_str());
    let first = prefixes(eni);
    assert_eq!(first.len(), 1);

    let att = aws.ok(&[
        "attach-network-interface",
        "--network-interface-id",
        &eni_id,
        "--instance-id",
        &instance_id,
        "--device-index",
        "1",
    ]);
    let att_id = att["AttachmentId"].as_str().unwrap().to_owned();
    assert!(att_id.starts_with("eni-attach-"));
    assert_eq!(att["NetworkCardIndex"], 0);

    let assigned = aws.ok(&[
        "assign-private-ip-addresses",
        "--network-interface-id",
        &eni_id,
        "--ipv4-prefix-count",
        "2",
    ]);
    assert_eq!(assigned["NetworkInterfaceId"], eni_id.as_str());
    let more: Vec<Prefix28> = assigned["AssignedIpv4Prefixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Ipv4Prefix"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(more.len(), 2);

    let described = aws.ok(&[
        "describe-network-interfaces",
        "--filters",
        &format!("Name=attachment.instance-id,Values={instance_id}"),
        "Name=attachment.device-index,Values=1",
    ]);
    let list = described["NetworkInterfaces"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    let d = &list[0];
    assert_eq!(d["NetworkInterfaceId"], eni_id.as_str());
    assert_eq!(d["Status"], "in-use");
    assert_eq!(d["Attachment"]["InstanceId"], instance_id.as_str());
    assert_eq!(d["Attachment"]["AttachmentId"], att_id.as_str());
    let all = prefixes(d);
    assert_eq!(all.len(), 3);
    let mut expected: Vec<Prefix28> = first.iter().chain(more.iter()).copied().collect();
    expected.sort();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(sorted, expected);
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "prefixes are distinct");
    for p in &all {
        // Parsing as Prefix28 already proved each is an aligned /28.
        assert!(
            net.contains(&p.network()) && net.contains(&p.addr(15)),
            "{p} outside the subnet"
        );
        assert!(
            !p.contains(primary_ip),
            "{p} overlaps the instance's address"
        );
    }
    let subnet_now = aws.ok(&["describe-subnets", "--subnet-ids", &subnet_id]);
    // 251 − the instance's address − the ENI's address − 3 × 16.
    assert_eq!(
        subnet_now["Subnets"][0]["AvailableIpAddressCount"],
        251 - 2 - 48
    );

    aws.ok(&[
        "unassign-private-ip-addresses",
        "--network-interface-id",
        &eni_id,
        "--ipv4-prefixes",
        &all[0].to_string(),
        &all[1].to_string(),
    ]);
    let after = aws.ok(&[
        "describe-network-interfaces",
        "--network-interface-ids",
        &eni_id,
    ]);
    let left = prefixes(&after["NetworkInterfaces"][0]);
    assert_eq!(left, vec![all[2]], "unassigned prefixes are gone");

    aws.ok(&["detach-network-interface", "--attachment-id", &att_id]);
    let detached = aws.ok(&[
        "describe-network-interfaces",
        "--filters",
        "Name=status,Values=available",
    ]);
    assert_eq!(
        detached["NetworkInterfaces"][0]["NetworkInterfaceId"],
        eni_id.as_str()
    );
    aws.ok(&[
        "delete-network-interface",
        "--network-interface-id",
        &eni_id,
    ]);
    let gone = aws
        .run(&[
            "describe-network-interfaces",
            "--network-interface-ids",
            &eni_id,
        ])
        .unwrap_err();
    assert!(
        gone.contains("InvalidNetworkInterfaceID.NotFound"),
        "{gone}"
    );
    let subnet_end = aws.ok(&["describe-subnets", "--subnet-ids", &subnet_id]);
    assert_eq!(subnet_end["Subnets"][0]["AvailableIpAddressCount"], 250);

    // Errors reach the CLI with EC2's codes.
    let e = aws
        .run(&[
            "delete-network-interface",
            "--network-interface-id",
            inst["NetworkInterfaces"][0]["NetworkInterfaceId"]
                .as_str()
                .unwrap(),
        ])
        .unwrap_err();
    assert!(e.contains("InvalidNetworkInterface.InUse"), "{e}");
}

fn ipv6_nets(v: &Value, list: &str, field: &str) -> Vec<ipnet::Ipv6Net> {
    v[list]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p[field].as_str().unwrap().parse().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn aws_cli_drives_the_ipv6_path() {
    use ipnet::Ipv6Net;
    use std::net::Ipv6Addr;
    let mock = MockProcess::start(None);
    let aws: Aws = mock.aws();
    let vpc = aws.ok(&["create-vpc", "--cidr-block", "10.2.0.0/16"]);
    let vpc_id = vpc["Vpc"]["VpcId"].as_str().unwrap().to_owned();
    // A subnet cannot have IPv6 before its VPC does.
    let e = aws
        .run(&[
            "create-subnet",
            "--vpc-id",
            &vpc_id,
            "--cidr-block",
            "10.2.0.0/24",
            "--ipv6-cidr-block",
            "2600:1f14::/64",
        ])
        .unwrap_err();
    assert!(
        e.contains("InvalidParameterValue") || e.contains("InvalidSubnet"),
        "{e}"
    );

    let assoc = aws.ok(&[
        "associate-vpc-cidr-block",
        "--vpc-id",
        &vpc_id,
        "--amazon-provided-ipv6-cidr-block",
    ]);
    let v56: Ipv6Net = assoc["Ipv6CidrBlockAssociation"]["Ipv6CidrBlock"]
        .as_str()
        .unwrap_or_else(|| panic!("{assoc}"))
        .parse()
        .unwrap();
    assert_eq!(v56.prefix_len(), 56);
    let described = aws.ok(&["describe-vpcs", "--vpc-ids", &vpc_id]);
    assert_eq!(
        ipv6_nets(
            &described["Vpcs"][0],
            "Ipv6CidrBlockAssociationSet",
            "Ipv6CidrBlock"
        ),
        vec![v56]
    );
    let mut blocks = v56.subnets(64).unwrap();
    let (b0, b1) = (blocks.next().unwrap(), blocks.next().unwrap());

    let s1 = aws.ok(&[
        "create-subnet",
        "--vpc-id",
        &vpc_id,
        "--cidr-block",
        "10.2.0.0/24",
        "--ipv6-cidr-block",
        &b0.to_string(),
    ]);
    let s1_id = s1["Subnet"]["SubnetId"].as_str().unwrap().to_owned();
    assert_eq!(
        ipv6_nets(
            &s1["Subnet"],
            "Ipv6CidrBlockAssociationSet",
            "Ipv6CidrBlock"
        ),
        vec![b0]
    );
    // A second subnet gets its /64 afterwards; a /64 outside the VPC's /56 or taken is refused.
    let s2 = aws.ok(&[
        "create-subnet",
        "--vpc-id",
        &vpc_id,
        "--cidr-block",
        "10.2.1.0/24",
    ]);
    let s2_id = s2["Subnet"]["SubnetId"].as_str().unwrap().to_owned();
    for bad in [b0.to_string(), "2001:db8::/64".to_owned()] {
        assert!(
            aws.run(&[
                "associate-subnet-cidr-block",
                "--subnet-id",
                &s2_id,
                "--ipv6-cidr-block",
                &bad,
            ])
            .is_err(),
            "{bad} associated"
        );
    }
    aws.ok(&[
        "associate-subnet-cidr-block",
        "--subnet-id",
        &s2_id,
        "--ipv6-cidr-block",
        &b1.to_string(),
    ]);
    let listed = aws.ok(&["describe-subnets", "--subnet-ids", &s2_id]);
    assert_eq!(
        ipv6_nets(
            &listed["Subnets"][0],
            "Ipv6CidrBlockAssociationSet",
            "Ipv6CidrBlock"
        ),
        vec![b1]
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
        &s1_id,
    ]);
    let eni = run["Instances"][0]["NetworkInterfaces"][0]["NetworkInterfaceId"]
        .as_str()
        .unwrap()
        .to_owned();

    // One /80, aligned inside the subnet's /64.
    let got = aws.ok(&[
        "assign-ipv6-addresses",
        "--network-interface-id",
        &eni,
        "--ipv6-prefix-count",
        "1",
    ]);
    let p80: Ipv6Net = got["AssignedIpv6Prefixes"][0]
        .as_str()
        .unwrap_or_else(|| panic!("{got}"))
        .parse()
        .unwrap();
    assert_eq!(p80.prefix_len(), 80);
    assert!(b0.contains(&p80) && p80 == p80.trunc(), "{p80} in {b0}");
    // Count and list at once: EC2's error.
    let e = aws
        .run(&[
            "assign-ipv6-addresses",
            "--network-interface-id",
            &eni,
            "--ipv6-prefix-count",
            "1",
            "--ipv6-prefixes",
            &p80.to_string(),
        ])
        .unwrap_err();
    assert!(e.contains("InvalidParameterCombination"), "{e}");
    // A single address: in the /64, not in the /80.
    let got = aws.ok(&[
        "assign-ipv6-addresses",
        "--network-interface-id",
        &eni,
        "--ipv6-address-count",
        "1",
    ]);
    let one: Ipv6Addr = got["AssignedIpv6Addresses"][0]
        .as_str()
        .unwrap_or_else(|| panic!("{got}"))
        .parse()
        .unwrap();
    assert!(b0.contains(&one) && !p80.contains(&one), "{one}");
    let described = aws.ok(&[
        "describe-network-interfaces",
        "--network-interface-ids",
        &eni,
    ]);
    let e0 = &described["NetworkInterfaces"][0];
    assert_eq!(ipv6_nets(e0, "Ipv6Prefixes", "Ipv6Prefix"), vec![p80]);
    assert_eq!(
        e0["Ipv6Addresses"][0]["Ipv6Address"].as_str(),
        Some(one.to_string().as_str()),
        "{e0}"
    );
    // m5.large: 10 IPv6 addresses per ENI, a /80 counting as one.
    let e = aws
        .run(&[
            "assign-ipv6-addresses",
            "--network-interface-id",
            &eni,
            "--ipv6-address-count",
            "9",
        ])
        .unwrap_err();
    assert!(
        e.contains("InvalidParameterValue") && e.contains("limit"),
        "{e}"
    );

    // Unassigned, the /80 leaves the listing and the same slot comes back.
    let un = aws.ok(&[
        "unassign-ipv6-addresses",
        "--network-interface-id",
        &eni,
        "--ipv6-prefixes",
        &p80.to_string(),
    ]);
    assert_eq!(
        un["UnassignedIpv6Prefixes"][0].as_str(),
        Some(p80.to_string().as_str()),
        "{un}"
    );
    let described = aws.ok(&[
        "describe-network-interfaces",
        "--network-interface-ids",
        &eni,
    ]);
    assert!(
        ipv6_nets(
            &described["NetworkInterfaces"][0],
            "Ipv6Prefixes",
            "Ipv6Prefix"
        )
        .is_empty()
    );
    let again = aws.ok(&[
        "assign-ipv6-addresses",
        "--network-interface-id",
        &eni,
        "--ipv6-prefix-count",
        "1",
    ]);
    assert_eq!(
        again["AssignedIpv6Prefixes"][0].as_str(),
        Some(p80.to_string().as_str())
    );

    // Xen instances take no prefixes.
    let xen = aws.ok(&[
        "run-instances",
        "--image-id",
        "ami-12345678",
        "--instance-type",
        "t2.micro",
        "--count",
        "1",
        "--subnet-id",
        &s1_id,
    ]);
    let xen_eni = xen["Instances"][0]["NetworkInterfaces"][0]["NetworkInterfaceId"]
        .as_str()
        .unwrap()
        .to_owned();
    let e = aws
        .run(&[
            "assign-ipv6-addresses",
            "--network-interface-id",
            &xen_eni,
            "--ipv6-prefix-count",
            "1",
        ])
        .unwrap_err();
    assert!(e.contains("Nitro"), "{e}");
}
