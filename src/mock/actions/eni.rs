//! ENI actions: Describe/Create/Attach/Detach/Delete/ModifyNetworkInterface(Attribute),
//! Assign/UnassignPrivateIpAddresses.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{FieldFn, missing, next_token, one, select, tag_field, tags_xml, time};
use crate::mock::ApiError;
use crate::mock::model::{Eni, IpRequest, Ipv6Request, Model};
use crate::mock::wire::{Params, Xml};

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
            "ipv6-addresses.ipv6-address" => {
                Some(e.ipv6_addresses.iter().map(|a| a.to_string()).collect())
            }
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

pub(super) fn eni_xml(x: &mut Xml, e: &Eni, account: &str, now_ms: u64) {
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
    x.set("ipv6AddressesSet", &e.ipv6_addresses, |x, a| {
        x.leaf("ipv6Address", a).leaf("isPrimaryIpv6", false);
    });
    x.set("ipv6PrefixSet", &e.ipv6_prefixes, |x, p| {
        x.leaf("ipv6Prefix", p);
    });
    tags_xml(x, &e.tags);
}

pub(super) fn describe(
    model: &Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
    now_ms: u64,
) -> Result<(), ApiError> {
    let ids = p.list("NetworkInterfaceId");
    for id in &ids {
        model.eni(id)?;
    }
    let (page, next) = select(
        p,
        model
            .enis
            .values()
            .filter(|e| model.owner_of(&e.vpc) == caller),
        &ids,
        |e| &e.id,
        |e| eni_field(e, now_ms),
    )?;
    x.set("networkInterfaceSet", page, |x, e| {
        eni_xml(x, e, caller, now_ms)
    });
    next_token(x, next);
    Ok(())
}

fn ip_request(p: &Params, create: bool) -> Result<IpRequest, ApiError> {
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
        Err(ApiError::client(
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

pub(super) fn create(
    model: &mut Model,
    p: &Params,
    x: &mut Xml,
    now_ms: u64,
) -> Result<(), ApiError> {
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

pub(super) fn modify(model: &mut Model, p: &Params, x: &mut Xml) -> Result<(), ApiError> {
    let eni = p.required("NetworkInterfaceId")?;
    let att = p.get("Attachment.AttachmentId");
    let dot = p.bool("Attachment.DeleteOnTermination")?;
    let desc = p.get("Description.Value").map(str::to_owned);
    let sdc = p.bool("SourceDestCheck.Value")?;
    if att.is_none() && dot.is_none() && desc.is_none() && sdc.is_none() {
        return Err(ApiError::client(
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

pub(super) fn assign(model: &mut Model, p: &Params, x: &mut Xml) -> Result<(), ApiError> {
    let eni = p.required("NetworkInterfaceId")?;
    let req = ip_request(p, false)?;
    if req.prefix_count == 0 && req.prefixes.is_empty() && req.ip_count == 0 && req.ips.is_empty() {
        return Err(ApiError::client(
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

pub(super) fn attach(
    model: &mut Model,
    p: &Params,
    x: &mut Xml,
    now_ms: u64,
) -> Result<(), ApiError> {
    let eni = p.required("NetworkInterfaceId")?;
    let inst = p.required("InstanceId")?;
    let dev = p
        .int("DeviceIndex")?
        .ok_or_else(|| missing("DeviceIndex"))?;
    let card = p.int("NetworkCardIndex")?.unwrap_or(0);
    let id = model.attach(eni, inst, dev, card, now_ms)?;
    x.leaf("attachmentId", id).leaf("networkCardIndex", card);
    Ok(())
}

pub(super) fn detach(model: &mut Model, p: &Params, x: &mut Xml) -> Result<(), ApiError> {
    model.detach(p.required("AttachmentId")?)?;
    x.leaf("return", true);
    Ok(())
}

pub(super) fn delete(model: &mut Model, p: &Params, x: &mut Xml) -> Result<(), ApiError> {
    model.delete_eni(p.required("NetworkInterfaceId")?)?;
    x.leaf("return", true);
    Ok(())
}

pub(super) fn unassign(model: &mut Model, p: &Params, x: &mut Xml) -> Result<(), ApiError> {
    let eni = p.required("NetworkInterfaceId")?;
    let prefixes = p.list("Ipv4Prefix");
    let ips = p
        .list("PrivateIpAddress")
        .iter()
        .map(|a| Params::ip("PrivateIpAddress", a))
        .collect::<Result<Vec<_>, _>>()?;
    if prefixes.is_empty() && ips.is_empty() {
        return Err(ApiError::client(
            "MissingParameter",
            "The request must contain the parameter PrivateIpAddress or Ipv4Prefix",
        ));
    }
    model.unassign(eni, &prefixes, &ips)?;
    x.leaf("return", true);
    Ok(())
}

fn ipv6_param(name: &str, v: &str) -> Result<Ipv6Addr, ApiError> {
    v.parse().map_err(|_| {
        ApiError::client(
            "InvalidParameterValue",
            format!("Value ({v}) for parameter {name} is invalid. Expected an IPv6 address."),
        )
    })
}

pub(super) fn assign_ipv6(model: &mut Model, p: &Params, x: &mut Xml) -> Result<(), ApiError> {
    let eni = p.required("NetworkInterfaceId")?;
    let req = Ipv6Request {
        prefix_count: p.int("Ipv6PrefixCount")?.unwrap_or(0),
        prefixes: p.list("Ipv6Prefix"),
        address_count: p.int("Ipv6AddressCount")?.unwrap_or(0),
        addresses: p
            .list("Ipv6Addresses")
            .iter()
            .map(|a| ipv6_param("Ipv6Addresses", a))
            .collect::<Result<_, _>>()?,
    };
    let combo = |msg: &str| {
        Err(ApiError::client(
            "InvalidParameterCombination",
            msg.to_owned(),
        ))
    };
    if req.prefix_count > 0 && !req.prefixes.is_empty() {
        return combo("Ipv6PrefixCount and Ipv6Prefix cannot be specified together.");
    }
    if req.address_count > 0 && !req.addresses.is_empty() {
        return combo("Ipv6AddressCount and Ipv6Addresses cannot be specified together.");
    }
    let wants_prefixes = req.prefix_count > 0 || !req.prefixes.is_empty();
    let wants_addresses = req.address_count > 0 || !req.addresses.is_empty();
    if wants_prefixes && wants_addresses {
        return combo(
            "IPv6 prefixes cannot be assigned together with IPv6 addresses in one request.",
        );
    }
    if !wants_prefixes && !wants_addresses {
        return Err(ApiError::client(
            "MissingParameter",
            "The request must contain one of Ipv6AddressCount, Ipv6Addresses, Ipv6PrefixCount or Ipv6Prefix",
        ));
    }
    let (prefixes, addresses) = model.assign_ipv6(eni, req)?;
    x.values("assignedIpv6Addresses", addresses);
    x.values("assignedIpv6PrefixSet", prefixes);
    x.leaf("networkInterfaceId", eni);
    Ok(())
}

pub(super) fn unassign_ipv6(model: &mut Model, p: &Params, x: &mut Xml) -> Result<(), ApiError> {
    let eni = p.required("NetworkInterfaceId")?;
    let prefixes = p.list("Ipv6Prefix");
    let addresses = p
        .list("Ipv6Addresses")
        .iter()
        .map(|a| ipv6_param("Ipv6Addresses", a))
        .collect::<Result<Vec<_>, _>>()?;
    if prefixes.is_empty() && addresses.is_empty() {
        return Err(ApiError::client(
            "MissingParameter",
            "The request must contain the parameter Ipv6Addresses or Ipv6Prefix",
        ));
    }
    let (ps, addrs) = model.unassign_ipv6(eni, &prefixes, &addresses)?;
    x.leaf("networkInterfaceId", eni);
    x.values("unassignedIpv6Addresses", addrs);
    x.values("unassignedIpv6PrefixSet", ps);
    Ok(())
}
