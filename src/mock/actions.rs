//! The EC2 actions the mock answers: parameters in (as the EC2 API reference names them),
//! model calls, XML out (element names as in EC2's service model).

use std::net::Ipv4Addr;
use std::time::SystemTime;

use ipnet::Ipv4Net;

use super::Ec2Error;
use super::addr::ReservationKind;
use super::model::{CidrReservation, Eni, Instance, IpRequest, Model, Subnet, Tags, check_id};
use super::wire::{Filter, Params, Xml};
use crate::core::instance_types::{self, InstanceTypeInfo};

/// Every action the mock implements.
pub const ACTIONS: &[&str] = &[
    "DescribeInstances",
    "DescribeInstanceTypes",
    "DescribeSubnets",
    "DescribeNetworkInterfaces",
    "CreateNetworkInterface",
    "AttachNetworkInterface",
    "DetachNetworkInterface",
    "DeleteNetworkInterface",
    "ModifyNetworkInterfaceAttribute",
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
    "CreateTags",
    "CreateSubnetCidrReservation",
    "GetSubnetCidrReservations",
    "DeleteSubnetCidrReservation",
    "CreateVpc",
    "CreateSubnet",
    "RunInstances",
    "TerminateInstances",
];

/// Answers one request. `now_ms` is the mock's clock (for attachment states).
pub fn handle(
    model: &mut Model,
    action: &str,
    p: &Params,
    now_ms: u64,
    request_id: &str,
) -> Result<String, Ec2Error> {
    let mut x = Xml::response(action, request_id);
    match action {
        "DescribeInstances" => describe_instances(model, p, &mut x, now_ms)?,
        "DescribeInstanceTypes" => describe_instance_types(p, &mut x)?,
        "DescribeSubnets" => describe_subnets(model, p, &mut x)?,
        "DescribeNetworkInterfaces" => describe_enis(model, p, &mut x, now_ms)?,
        "CreateNetworkInterface" => create_eni(model, p, &mut x, now_ms)?,
        "AttachNetworkInterface" => {
            let eni = p.required("NetworkInterfaceId")?;
            let inst = p.required("InstanceId")?;
            let dev = p
                .int("DeviceIndex")?
                .ok_or_else(|| missing("DeviceIndex"))?;
            let card = p.int("NetworkCardIndex")?.unwrap_or(0);
            let id = model.attach(eni, inst, dev, card, now_ms)?;
            x.leaf("attachmentId", id).leaf("networkCardIndex", card);
        }
        "DetachNetworkInterface" => {
            model.detach(p.required("AttachmentId")?)?;
            x.leaf("return", true);
        }
        "DeleteNetworkInterface" => {
            model.delete_eni(p.required("NetworkInterfaceId")?)?;
            x.leaf("return", true);
        }
        "ModifyNetworkInterfaceAttribute" => modify_eni(model, p, &mut x)?,
        "AssignPrivateIpAddresses" => assign(model, p, &mut x)?,
        "UnassignPrivateIpAddresses" => {
            let eni = p.required("NetworkInterfaceId")?;
            let prefixes = p.list("Ipv4Prefix");
            let ips = p
                .list("PrivateIpAddress")
                .iter()
                .map(|a| Params::ip("PrivateIpAddress", a))
                .collect::<Result<Vec<_>, _>>()?;
            if prefixes.is_empty() && ips.is_empty() {
                return Err(Ec2Error::client(
                    "MissingParameter",
                    "The request must contain the parameter PrivateIpAddress or Ipv4Prefix",
                ));
            }
            model.unassign(eni, &prefixes, &ips)?;
            x.leaf("return", true);
        }
        "CreateTags" => {
            let resources = p.list("ResourceId");
            if resources.is_empty() {
                return Err(missing("ResourceId"));
            }
            model.create_tags(&resources, &p.tags()?)?;
            x.leaf("return", true);
        }
        "CreateSubnetCidrReservation" => {
            let subnet = p.required("SubnetId")?;
            let cidr = cidr_param(p, "Cidr")?;
            let kind = match p.required("ReservationType")? {
                "prefix" => ReservationKind::Prefix,
                "explicit" => ReservationKind::Explicit,
                other => {
                    return Err(Ec2Error::client(
                        "InvalidParameterValue",
                        format!(
                            "Value ({other}) for parameter ReservationType is invalid. Expected prefix or explicit."
                        ),
                    ));
                }
            };
            let desc = p.get("Description").unwrap_or("").to_owned();
            let id = model.create_reservation(subnet, cidr, kind, desc)?;
            let r = model.reservations[&id].clone();
            x.node("subnetCidrReservation", |x| {
                reservation_xml(x, &r, &model.account)
            });
        }
        "GetSubnetCidrReservations" => {
            let subnet = p.required("SubnetId")?;
            if !model.subnets.contains_key(subnet) {
                check_id(subnet, "subnet-", "InvalidSubnetID.Malformed")?;
                return Err(Ec2Error::client(
                    "InvalidSubnetID.NotFound",
                    format!("The subnet ID '{subnet}' does not exist"),
                ));
            }
            let filters = p.filters()?;
            let mut rs: Vec<&CidrReservation> = Vec::new();
            for r in model.reservations.values().filter(|r| r.subnet == subnet) {
                if matches_all(&filters, |name| reservation_field(r, name))? {
                    rs.push(r);
                }
            }
            let account = model.account.clone();
            x.set("subnetIpv4CidrReservationSet", rs, |x, r| {
                reservation_xml(x, r, &account)
            });
            x.open("subnetIpv6CidrReservationSet")
                .close("subnetIpv6CidrReservationSet");
        }
        "DeleteSubnetCidrReservation" => {
            let r = model.delete_reservation(p.required("SubnetCidrReservationId")?)?;
            x.node("deletedSubnetCidrReservation", |x| {
                reservation_xml(x, &r, &model.account)
            });
        }
        "CreateVpc" => {
            let cidr = cidr_param(p, "CidrBlock")?;
            let id = model.create_vpc(cidr, p.tag_specs("vpc")?)?;
            let v = &model.vpcs[&id];
            let account = &model.account;
            x.node("vpc", |x| {
                x.leaf("vpcId", &v.id)
                    .leaf("ownerId", account)
                    .leaf("state", "available")
                    .leaf("cidrBlock", v.cidr)
                    .leaf("dhcpOptionsId", "dopt-00000000")
                    .leaf("instanceTenancy", "default")
                    .leaf("isDefault", false);
                tags_xml(x, &v.tags);
            });
        }
        "CreateSubnet" => {
            let vpc = p.required("VpcId")?;
            let cidr = cidr_param(p, "CidrBlock")?;
            let id = model.create_subnet(
                vpc,
                cidr,
                p.get("AvailabilityZone").map(str::to_owned),
                p.tag_specs("subnet")?,
            )?;
            let s = model.subnets[&id].clone();
            let (account, region) = (model.account.clone(), model.region.clone());
            x.node("subnet", |x| subnet_xml(x, &s, &account, &region));
        }
        "RunInstances" => run_instances(model, p, &mut x, now_ms)?,
        "TerminateInstances" => {
            let ids = p.list("InstanceId");
            if ids.is_empty() {
                return Err(missing("InstanceId"));
            }
            let done = model.terminate(&ids)?;
            x.set("instancesSet", done, |x, (id, was_running)| {
                x.leaf("instanceId", id);
                state_xml(x, "currentState", false);
                state_xml(x, "previousState", was_running);
            });
        }
        other => {
            return Err(Ec2Error::client(
                "InvalidAction",
                format!("The action {other} is not valid for this web service."),
            ));
        }
    }
    Ok(x.finish(action))
}

fn missing(name: &str) -> Ec2Error {
    Ec2Error::client(
        "MissingParameter",
        format!("The request must contain the parameter {name}"),
    )
}

fn cidr_param(p: &Params, name: &str) -> Result<Ipv4Net, Ec2Error> {
    let v = p.required(name)?;
    v.parse().map_err(|_| {
        Ec2Error::client(
            "InvalidParameterValue",
            format!("Value ({v}) for parameter {name} is invalid. Expected an IPv4 CIDR block."),
        )
    })
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn tags_xml(x: &mut Xml, tags: &Tags) {
    x.set("tagSet", tags, |x, (k, v)| {
        x.leaf("key", k).leaf("value", v);
    });
}

fn state_xml(x: &mut Xml, tag: &str, running: bool) {
    x.node(tag, |x| {
        if running {
            x.leaf("code", 16).leaf("name", "running");
        } else {
            x.leaf("code", 48).leaf("name", "terminated");
        }
    });
}

/// Fields of a resource for filters: `Ok(None)` means the filter name is not supported.
type FieldFn<'a> = dyn Fn(&str) -> Option<Vec<String>> + 'a;

fn matches_all(
    filters: &[Filter],
    field: impl Fn(&str) -> Option<Vec<String>>,
) -> Result<bool, Ec2Error> {
    for f in filters {
        let Some(values) = field(&f.name) else {
            return Err(Ec2Error::client(
                "InvalidParameterValue",
                format!("The filter '{}' is invalid", f.name),
            ));
        };
        if !f.matches(&values) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn tag_field(tags: &Tags, name: &str) -> Option<Option<Vec<String>>> {
    if let Some(k) = name.strip_prefix("tag:") {
        return Some(Some(tags.get(k).cloned().into_iter().collect()));
    }
    if name == "tag-key" {
        return Some(Some(tags.keys().cloned().collect()));
    }
    None
}

fn one(s: impl ToString) -> Option<Vec<String>> {
    Some(vec![s.to_string()])
}

/// Applies MaxResults / NextToken to `items`.
fn paginate<T>(
    p: &Params,
    mut items: Vec<T>,
    ids_given: bool,
) -> Result<(Vec<T>, Option<String>), Ec2Error> {
    let max = p.int("MaxResults")?;
    if ids_given && max.is_some() {
        return Err(Ec2Error::client(
            "InvalidParameterCombination",
            "The parameter MaxResults cannot be used with the parameter naming ids.",
        ));
    }
    let start = match p.get("NextToken") {
        None | Some("") => 0,
        Some(t) => t
            .strip_prefix("mock-")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n <= items.len())
            .ok_or_else(|| {
                Ec2Error::client("InvalidNextToken", format!("The token '{t}' is invalid."))
            })?,
    };
    let Some(max) = max else {
        return Ok((items.split_off(start), None));
    };
    if !(5..=1000).contains(&max) {
        return Err(Ec2Error::client(
            "InvalidParameterValue",
            format!(
                "Value ({max}) for parameter MaxResults is invalid. Expected a value from 5 to 1000."
            ),
        ));
    }
    let mut page = items.split_off(start);
    let next = (page.len() > max as usize).then(|| format!("mock-{}", start + max as usize));
    page.truncate(max as usize);
    Ok((page, next))
}

// ---- ENIs -----------------------------------------------------------------------------------

fn eni_field<'a>(e: &'a Eni, now_ms: u64) -> Box<FieldFn<'a>> {
    Box::new(move |name: &str| {
        if let Some(t) = tag_field(&e.tags, name) {
            return t;
        }
        let att = e.attachment.as_ref();
        match name {
            "network-interface-id" => one(&e.id),
            "attachment.instance-id" => Some(att.map(|a| a.instance.clone()).into_iter().collect()),
            "attachment.device-index" => Some(
                att.map(|a| a.device_index.to_string())
                    .into_iter()
                    .collect(),
            ),
            "attachment.attachment-id" => Some(att.map(|a| a.id.clone()).into_iter().collect()),
            "attachment.status" => Some(
                att.map(|a| attach_status(a.ready_at_ms, now_ms).to_owned())
                    .into_iter()
                    .collect(),
            ),
            "status" => one(e.status()),
            "subnet-id" => one(&e.subnet),
            "vpc-id" => one(&e.vpc),
            "availability-zone" => one(&e.az),
            "description" => one(&e.description),
            "mac-address" => one(&e.mac),
            "private-ip-address" => Some(
                std::iter::once(e.primary_ip)
                    .chain(e.secondary.iter().copied())
                    .map(|a| a.to_string())
                    .collect(),
            ),
            "ipv4-prefixes.ipv4-prefix" => Some(e.prefixes.iter().map(|p| p.to_string()).collect()),
            "group-id" => Some(e.sgs.clone()),
            _ => None,
        }
    })
}

/// An attachment's state at `now_ms`: `attaching` until it is ready, then `attached`.
pub fn attach_status(ready_at_ms: u64, now_ms: u64) -> &'static str {
    if now_ms < ready_at_ms {
        "attaching"
    } else {
        "attached"
    }
}

fn eni_xml(x: &mut Xml, e: &Eni, account: &str, now_ms: u64) {
    x.leaf("networkInterfaceId", &e.id)
        .leaf("subnetId", &e.subnet)
        .leaf("vpcId", &e.vpc)
        .leaf("availabilityZone", &e.az)
        .leaf("description", &e.description)
        .leaf("ownerId", account)
        .leaf("requesterManaged", false)
        .leaf("status", e.status())
        .leaf("macAddress", &e.mac)
        .leaf("privateIpAddress", e.primary_ip)
        .leaf("sourceDestCheck", e.source_dest_check)
        .leaf("interfaceType", "interface");
    x.set("groupSet", &e.sgs, |x, g| {
        x.leaf("groupId", g).leaf("groupName", g);
    });
    if let Some(a) = &e.attachment {
        x.node("attachment", |x| {
            x.leaf("attachmentId", &a.id)
                .leaf("instanceId", &a.instance)
                .leaf("instanceOwnerId", account)
                .leaf("deviceIndex", a.device_index)
                .leaf("networkCardIndex", a.card_index)
                .leaf("status", attach_status(a.ready_at_ms, now_ms))
                .leaf("attachTime", time(a.attach_time))
                .leaf("deleteOnTermination", a.delete_on_termination);
        });
    }
    let addrs =
        std::iter::once((e.primary_ip, true)).chain(e.secondary.iter().map(|a| (*a, false)));
    x.set("privateIpAddressesSet", addrs, |x, (a, primary)| {
        x.leaf("privateIpAddress", a).leaf("primary", primary);
    });
    x.set("ipv4PrefixSet", &e.prefixes, |x, p| {
        x.leaf("ipv4Prefix", p);
    });
    tags_xml(x, &e.tags);
}

fn describe_enis(model: &Model, p: &Params, x: &mut Xml, now_ms: u64) -> Result<(), Ec2Error> {
    let ids = p.list("NetworkInterfaceId");
    for id in &ids {
        model.eni(id)?;
    }
    let filters = p.filters()?;
    let mut out = Vec::new();
    for e in model.enis.values() {
        if !ids.is_empty() && !ids.contains(&e.id) {
            continue;
        }
        if matches_all(&filters, eni_field(e, now_ms))? {
            out.push(e);
        }
    }
    let (page, next) = paginate(p, out, !ids.is_empty())?;
    let account = &model.account;
    x.set("networkInterfaceSet", page, |x, e| {
        eni_xml(x, e, account, now_ms)
    });
    if let Some(t) = next {
        x.leaf("nextToken", t);
    }
    Ok(())
}

fn ip_request(p: &Params, create: bool) -> Result<IpRequest, Ec2Error> {
    let prefix_count = p.int("Ipv4PrefixCount")?.unwrap_or(0);
    let prefixes: Vec<String> = if create {
        p.indexed("Ipv4Prefix")
            .into_iter()
            .map(|(_, q)| q.required("Ipv4Prefix").map(str::to_owned))
            .collect::<Result<_, _>>()?
    } else {
        p.list("Ipv4Prefix")
    };
    let ip_count = p.int("SecondaryPrivateIpAddressCount")?.unwrap_or(0);
    let ips: Vec<Ipv4Addr> = if create {
        p.indexed("PrivateIpAddresses")
            .into_iter()
            .filter(|(_, q)| q.get("Primary") != Some("true"))
            .map(|(_, q)| Params::ip("PrivateIpAddresses", q.required("PrivateIpAddress")?))
            .collect::<Result<_, _>>()?
    } else {
        p.list("PrivateIpAddress")
            .iter()
            .map(|a| Params::ip("PrivateIpAddress", a))
            .collect::<Result<_, _>>()?
    };
    let combo = |msg: &str| {
        Err(Ec2Error::client(
            "InvalidParameterCombination",
            msg.to_owned(),
        ))
    };
    if prefix_count > 0 && !prefixes.is_empty() {
        return combo("Ipv4PrefixCount and Ipv4Prefix cannot be specified together.");
    }
    if ip_count > 0 && !ips.is_empty() {
        return combo(
            "SecondaryPrivateIpAddressCount and PrivateIpAddress cannot be specified together.",
        );
    }
    if (prefix_count > 0 || !prefixes.is_empty()) && (ip_count > 0 || !ips.is_empty()) {
        return combo(
            "IPv4 prefixes cannot be assigned together with private IP addresses in one request.",
        );
    }
    Ok(IpRequest {
        prefix_count,
        prefixes,
        ip_count,
        ips,
    })
}

fn create_eni(model: &mut Model, p: &Params, x: &mut Xml, now_ms: u64) -> Result<(), Ec2Error> {
    let subnet = p.required("SubnetId")?;
    let req = ip_request(p, true)?;
    let primary = match p.get("PrivateIpAddress") {
        Some(a) => Some(Params::ip("PrivateIpAddress", a)?),
        None => p
            .indexed("PrivateIpAddresses")
            .into_iter()
            .find(|(_, q)| q.get("Primary") == Some("true"))
            .map(|(_, q)| Params::ip("PrivateIpAddresses", q.required("PrivateIpAddress")?))
            .transpose()?,
    };
    let id = model.create_eni(
        subnet,
        p.list("SecurityGroupId"),
        p.get("Description").unwrap_or("").to_owned(),
        primary,
        req,
        p.tag_specs("network-interface")?,
    )?;
    let e = model.enis[&id].clone();
    let account = model.account.clone();
    x.node("networkInterface", |x| eni_xml(x, &e, &account, now_ms));
    Ok(())
}

fn modify_eni(model: &mut Model, p: &Params, x: &mut Xml) -> Result<(), Ec2Error> {
    let eni = p.required("NetworkInterfaceId")?;
    let att = p.get("Attachment.AttachmentId");
    let dot = p.bool("Attachment.DeleteOnTermination")?;
    let desc = p.get("Description.Value").map(str::to_owned);
    let sdc = p.bool("SourceDestCheck.Value")?;
    if att.is_none() && dot.is_none() && desc.is_none() && sdc.is_none() {
        return Err(Ec2Error::client(
            "InvalidParameterCombination",
            "No attributes specified.",
        ));
    }
    match (att, dot) {
        (Some(a), Some(v)) => model.set_delete_on_termination(eni, a, v)?,
        (None, Some(_)) => return Err(missing("Attachment.AttachmentId")),
        (Some(_), None) => return Err(missing("Attachment.DeleteOnTermination")),
        (None, None) => {}
    }
    if desc.is_some() || sdc.is_some() {
        model.modify_eni(eni, desc, sdc)?;
    }
    x.leaf("return", true);
    Ok(())
}

fn assign(model: &mut Model, p: &Params, x: &mut Xml) -> Result<(), Ec2Error> {
    let eni = p.required("NetworkInterfaceId")?;
    let req = ip_request(p, false)?;
    if req.prefix_count == 0 && req.prefixes.is_empty() && req.ip_count == 0 && req.ips.is_empty() {
        return Err(Ec2Error::client(
            "MissingParameter",
            "The request must contain one of Ipv4PrefixCount, Ipv4Prefix, SecondaryPrivateIpAddressCount or PrivateIpAddress",
        ));
    }
    let (prefixes, ips) = model.assign(eni, req)?;
    x.leaf("networkInterfaceId", eni);
    x.set("assignedPrivateIpAddressesSet", ips, |x, a| {
        x.leaf("privateIpAddress", a);
    });
    x.set("assignedIpv4PrefixSet", prefixes, |x, q| {
        x.leaf("ipv4Prefix", q);
    });
    x.leaf("return", true);
    Ok(())
}

// ---- instances ------------------------------------------------------------------------------

fn instance_field<'a>(i: &'a Instance, model: &'a Model) -> Box<FieldFn<'a>> {
    Box::new(move |name: &str| {
        if let Some(t) = tag_field(&i.tags, name) {
            return t;
        }
        match name {
            "instance-id" => one(&i.id),
            "instance-state-name" => one(if i.running { "running" } else { "terminated" }),
            "instance-type" => one(&i.itype.name),
            "subnet-id" => one(&i.subnet),
            "vpc-id" => one(&i.vpc),
            "availability-zone" => one(&i.az),
            "network-interface.network-interface-id" => {
                Some(model.enis_of(&i.id).iter().map(|e| e.id.clone()).collect())
            }
            _ => None,
        }
    })
}

fn instance_xml(x: &mut Xml, i: &Instance, model: &Model, now_ms: u64) {
    let primary_ip = model.enis.get(&i.primary_eni).map(|e| e.primary_ip);
    x.leaf("instanceId", &i.id).leaf("imageId", &i.image);
    state_xml(x, "instanceState", i.running);
    x.leaf("reason", "")
        .leaf("amiLaunchIndex", 0)
        .leaf("instanceType", &i.itype.name)
        .leaf("launchTime", time(i.launched))
        .node("placement", |x| {
            x.leaf("availabilityZone", &i.az).leaf("tenancy", "default");
        })
        .node("monitoring", |x| {
            x.leaf("state", "disabled");
        });
    if i.running {
        x.leaf("subnetId", &i.subnet).leaf("vpcId", &i.vpc);
        if let Some(ip) = primary_ip {
            x.leaf("privateIpAddress", ip);
        }
    }
    x.leaf("sourceDestCheck", true);
    x.set("groupSet", &i.sgs, |x, g| {
        x.leaf("groupId", g).leaf("groupName", g);
    });
    x.leaf("architecture", "x86_64")
        .leaf("rootDeviceType", "ebs")
        .leaf("virtualizationType", "hvm");
    let account = &model.account;
    x.set("networkInterfaceSet", model.enis_of(&i.id), |x, e| {
        eni_xml(x, e, account, now_ms)
    });
    tags_xml(x, &i.tags);
}

fn describe_instances(model: &Model, p: &Params, x: &mut Xml, now_ms: u64) -> Result<(), Ec2Error> {
    let ids = p.list("InstanceId");
    for id in &ids {
        check_id(id, "i-", "InvalidInstanceID.Malformed")?;
        if !model.instances.contains_key(id) {
            return Err(Ec2Error::client(
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{id}' does not exist"),
            ));
        }
    }
    let filters = p.filters()?;
    let mut out = Vec::new();
    for i in model.instances.values() {
        if !ids.is_empty() && !ids.contains(&i.id) {
            continue;
        }
        if matches_all(&filters, instance_field(i, model))? {
            out.push(i);
        }
    }
    let (page, next) = paginate(p, out, !ids.is_empty())?;
    x.set("reservationSet", page, |x, i| {
        x.leaf("reservationId", format!("r-{}", &i.id[2..]))
            .leaf("ownerId", &model.account)
            .open("groupSet")
            .close("groupSet");
        x.set("instancesSet", [i], |x, i| {
            instance_xml(x, i, model, now_ms)
        });
    });
    if let Some(t) = next {
        x.leaf("nextToken", t);
    }
    Ok(())
}

fn run_instances(model: &mut Model, p: &Params, x: &mut Xml, now_ms: u64) -> Result<(), Ec2Error> {
    let itype = p.get("InstanceType").unwrap_or("m5.large");
    let subnet = p.required("SubnetId")?;
    let image = p.get("ImageId").unwrap_or("ami-00000000").to_owned();
    let min = p.int("MinCount")?.unwrap_or(1);
    let max = p.int("MaxCount")?.unwrap_or(min).max(min);
    if min == 0 || max > 100 {
        return Err(Ec2Error::client(
            "InvalidParameterValue",
            "MinCount must be at least 1 and MaxCount at most 100 in the mock.",
        ));
    }
    let sgs = p.list("SecurityGroupId");
    let mut ids = Vec::new();
    for _ in 0..max {
        ids.push(model.run_instance(itype, subnet, sgs.clone(), image.clone(), now_ms)?);
    }
    let tags = p.tag_specs("instance")?;
    if !tags.is_empty() {
        model.create_tags(&ids, &tags)?;
    }
    let rid = model.next_id("r-");
    x.leaf("reservationId", rid)
        .leaf("ownerId", &model.account)
        .open("groupSet")
        .close("groupSet");
    let insts: Vec<&Instance> = ids.iter().map(|i| &model.instances[i]).collect();
    x.set("instancesSet", insts, |x, i| {
        instance_xml(x, i, model, now_ms)
    });
    Ok(())
}

fn describe_instance_types(p: &Params, x: &mut Xml) -> Result<(), Ec2Error> {
    let names = p.list("InstanceType");
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| instance_types::lookup(n).is_none())
        .collect();
    if !unknown.is_empty() {
        return Err(Ec2Error::client(
            "InvalidInstanceType",
            format!(
                "The following supplied instance types do not exist: [{}]",
                unknown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let filters = p.filters()?;
    let mut all: Vec<&InstanceTypeInfo> = if names.is_empty() {
        instance_types::all().values().collect()
    } else {
        names
            .iter()
            .filter_map(|n| instance_types::lookup(n))
            .collect()
    };
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    for t in all {
        let field = |name: &str| match name {
            "instance-type" => one(&t.name),
            "hypervisor" => one(&t.hypervisor),
            "bare-metal" => one(t.bare_metal),
            _ => None,
        };
        if matches_all(&filters, field)? {
            out.push(t);
        }
    }
    let (page, next) = paginate(p, out, false)?;
    x.set("instanceTypeSet", page, |x, t| {
        x.leaf("instanceType", &t.name)
            .leaf("currentGeneration", true)
            .leaf("bareMetal", t.bare_metal);
        if !t.hypervisor.is_empty() {
            x.leaf("hypervisor", &t.hypervisor);
        }
        x.node("vCpuInfo", |x| {
            x.leaf("defaultVCpus", t.vcpus);
        });
        x.node("networkInfo", |x| {
            x.leaf("maximumNetworkInterfaces", t.max_enis)
                .leaf("maximumNetworkCards", t.max_cards)
                .leaf("defaultNetworkCardIndex", 0);
            let per_card = t.max_enis / t.max_cards.max(1);
            x.set("networkCards", 0..t.max_cards, |x, c| {
                x.leaf("networkCardIndex", c)
                    .leaf("maximumNetworkInterfaces", per_card);
            });
            x.leaf("ipv4AddressesPerInterface", t.ipv4_per_eni)
                .leaf("ipv6AddressesPerInterface", t.ipv6_per_eni)
                .leaf("ipv6Supported", true);
        });
    });
    if let Some(t) = next {
        x.leaf("nextToken", t);
    }
    Ok(())
}

// ---- subnets and reservations -----------------------------------------------------------------

fn subnet_xml(x: &mut Xml, s: &Subnet, account: &str, region: &str) {
    x.leaf("subnetId", &s.id)
        .leaf(
            "subnetArn",
            format!("arn:aws:ec2:{region}:{account}:subnet/{}", s.id),
        )
        .leaf("state", "available")
        .leaf("ownerId", account)
        .leaf("vpcId", &s.vpc)
        .leaf("cidrBlock", s.space.net())
        .leaf("availableIpAddressCount", s.space.available())
        .leaf("availabilityZone", &s.az)
        .leaf("defaultForAz", false)
        .leaf("mapPublicIpOnLaunch", false);
    tags_xml(x, &s.tags);
}

fn describe_subnets(model: &Model, p: &Params, x: &mut Xml) -> Result<(), Ec2Error> {
    let ids = p.list("SubnetId");
    for id in &ids {
        check_id(id, "subnet-", "InvalidSubnetID.Malformed")?;
        if !model.subnets.contains_key(id) {
            return Err(Ec2Error::client(
                "InvalidSubnetID.NotFound",
                format!("The subnet ID '{id}' does not exist"),
            ));
        }
    }
    let filters = p.filters()?;
    let mut out = Vec::new();
    for s in model.subnets.values() {
        if !ids.is_empty() && !ids.contains(&s.id) {
            continue;
        }
        let field = |name: &str| {
            if let Some(t) = tag_field(&s.tags, name) {
                return t;
            }
            match name {
                "subnet-id" => one(&s.id),
                "vpc-id" => one(&s.vpc),
                "availability-zone" => one(&s.az),
                "cidr-block" => one(s.space.net()),
                _ => None,
            }
        };
        if matches_all(&filters, field)? {
            out.push(s);
        }
    }
    let (page, next) = paginate(p, out, !ids.is_empty())?;
    let (account, region) = (&model.account, &model.region);
    x.set("subnetSet", page, |x, s| subnet_xml(x, s, account, region));
    if let Some(t) = next {
        x.leaf("nextToken", t);
    }
    Ok(())
}

fn reservation_field(r: &CidrReservation, name: &str) -> Option<Vec<String>> {
    match name {
        "reservationType" => one(r.kind.as_str()),
        "subnet-cidr-reservation-id" => one(&r.id),
        "subnet-id" => one(&r.subnet),
        _ => None,
    }
}

fn reservation_xml(x: &mut Xml, r: &CidrReservation, account: &str) {
    x.leaf("subnetCidrReservationId", &r.id)
        .leaf("subnetId", &r.subnet)
        .leaf("cidr", r.cidr)
        .leaf("reservationType", r.kind.as_str())
        .leaf("ownerId", account)
        .leaf("description", &r.description);
}
