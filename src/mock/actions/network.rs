//! VPC and subnet actions: CreateVpc, DescribeVpcs, CreateSubnet, DescribeSubnets, and the subnet CIDR
//! reservations.

use super::{
    FieldFn, check_known, cidr_param, matches_all, next_token, one, select, tag_field, tags_xml,
};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::mock::ApiError;
use crate::mock::addr::ReservationKind;
use crate::mock::model::{CidrReservation, Model, Subnet, Vpc};
use crate::mock::wire::{Params, Xml};

fn subnet_xml(x: &mut Xml, s: &Subnet, available: u32, account: &str, region: &str) {
    x.leaf("subnetId", &s.id)
        .leaf(
            "subnetArn",
            format!("arn:aws:ec2:{region}:{account}:subnet/{}", s.id),
        )
        .leaf("state", "available")
        .leaf("ownerId", account)
        .leaf("vpcId", &s.vpc)
        .leaf("cidrBlock", s.space.net())
        .leaf("availableIpAddressCount", available)
        .leaf("availabilityZone", &s.az)
        .leaf("defaultForAz", false)
        .leaf("mapPublicIpOnLaunch", false)
        .leaf("assignIpv6AddressOnCreation", false);
    x.set(
        "ipv6CidrBlockAssociationSet",
        s.ipv6.iter(),
        |x, (id, space)| {
            subnet_ipv6_xml(x, id, space.net(), "associated");
        },
    );
    tags_xml(x, &s.tags);
}

fn own_subnet(model: &Model, caller: &str, id: &str) -> bool {
    model
        .subnets
        .get(id)
        .is_some_and(|s| model.owner_of(&s.vpc) == caller)
}

pub(super) fn describe_subnets(
    model: &Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let ids = p.list("SubnetId");
    check_known(&ids, "subnet-", "InvalidSubnetID", "subnet", |id| {
        own_subnet(model, caller, id)
    })?;
    let visible = model
        .subnets
        .values()
        .filter(|s| model.owner_of(&s.vpc) == caller);
    let (page, next) = select(p, visible, &ids, |s| &s.id, subnet_field)?;
    let region = &model.region;
    x.set("subnetSet", page, |x, s| {
        subnet_xml(x, s, model.available_in(s), caller, region)
    });
    next_token(x, next);
    Ok(())
}

fn subnet_ipv6_xml(x: &mut Xml, id: &str, net: Ipv6Net, state: &str) {
    x.leaf("associationId", id).leaf("ipv6CidrBlock", net);
    x.node("ipv6CidrBlockState", |x| {
        x.leaf("state", state);
    });
}

fn vpc_ipv6_xml(x: &mut Xml, id: &str, net: Ipv6Net, state: &str, region: &str) {
    x.leaf("associationId", id).leaf("ipv6CidrBlock", net);
    x.node("ipv6CidrBlockState", |x| {
        x.leaf("state", state);
    });
    x.leaf("networkBorderGroup", region)
        .leaf("ipv6Pool", "Amazon");
}

fn subnet_field(s: &Subnet) -> Box<FieldFn<'_>> {
    Box::new(move |name: &str| {
        if let Some(t) = tag_field(&s.tags, name) {
            return t;
        }
        match name {
            "subnet-id" => one(&s.id),
            "vpc-id" => one(&s.vpc),
            "availability-zone" => one(&s.az),
            "cidr-block" => one(s.space.net()),
            "ipv6-cidr-block-association.ipv6-cidr-block" => {
                Some(s.ipv6.iter().map(|(_, sp)| sp.net().to_string()).collect())
            }
            _ => None,
        }
    })
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

fn vpc_xml(x: &mut Xml, v: &Vpc, region: &str) {
    x.leaf("vpcId", &v.id)
        .leaf("ownerId", &v.owner)
        .leaf("state", "available")
        .leaf("cidrBlock", v.cidr)
        .leaf("dhcpOptionsId", "dopt-00000000")
        .leaf("instanceTenancy", "default")
        .leaf("isDefault", false);
    let primary = (format!("vpc-cidr-assoc-{}", &v.id[4..]), v.cidr);
    let all = std::iter::once(&primary).chain(v.secondary_cidrs.iter());
    x.set("cidrBlockAssociationSet", all, |x, (id, cidr)| {
        vpc_cidr_xml(x, id, *cidr, "associated");
    });
    x.set(
        "ipv6CidrBlockAssociationSet",
        v.ipv6.iter(),
        |x, (id, net)| {
            vpc_ipv6_xml(x, id, *net, "associated", region);
        },
    );
    tags_xml(x, &v.tags);
}

fn vpc_cidr_xml(x: &mut Xml, id: &str, cidr: Ipv4Net, state: &str) {
    x.leaf("associationId", id).leaf("cidrBlock", cidr);
    x.node("cidrBlockState", |x| {
        x.leaf("state", state);
    });
}

fn vpc_field(v: &Vpc) -> Box<FieldFn<'_>> {
    Box::new(move |name: &str| {
        if let Some(t) = tag_field(&v.tags, name) {
            return t;
        }
        match name {
            "vpc-id" => one(&v.id),
            "owner-id" => one(&v.owner),
            "cidr" => one(v.cidr),
            "cidr-block-association.cidr-block" => Some(v.cidrs().map(|c| c.to_string()).collect()),
            "state" => one("available"),
            _ => None,
        }
    })
}

pub(super) fn describe_vpcs(
    model: &Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let ids = p.list("VpcId");
    check_known(&ids, "vpc-", "InvalidVpcID", "vpc", |id| {
        model.vpcs.get(id).is_some_and(|v| v.owner == caller)
    })?;
    let visible = model.vpcs.values().filter(|v| v.owner == caller);
    let (page, next) = select(p, visible, &ids, |v| &v.id, vpc_field)?;
    let region = &model.region;
    x.set("vpcSet", page, |x, v| vpc_xml(x, v, region));
    next_token(x, next);
    Ok(())
}

pub(super) fn create_vpc(
    model: &mut Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let cidr = cidr_param(p, "CidrBlock")?;
    let tags = p.tag_specs("vpc")?;
    let ipv6 = p.bool("AmazonProvidedIpv6CidrBlock")?.unwrap_or(false);
    let id = model.create_vpc_for(caller, cidr, tags)?;
    if ipv6 {
        model.associate_vpc_ipv6(&id)?;
    }
    let v = &model.vpcs[&id];
    x.node("vpc", |x| vpc_xml(x, v, &model.region));
    Ok(())
}

fn ipv6_cidr_param(p: &Params, name: &str) -> Result<Option<Ipv6Net>, ApiError> {
    p.get(name)
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::client(
                    "InvalidParameterValue",
                    format!(
                        "Value ({v}) for parameter {name} is invalid. Expected an IPv6 CIDR block."
                    ),
                )
            })
        })
        .transpose()
}

pub(super) fn associate_vpc_cidr(
    model: &mut Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let vpc = p.required("VpcId")?;
    model.own_vpc(vpc, caller)?;
    let ipv6 = p.bool("AmazonProvidedIpv6CidrBlock")? == Some(true);
    match (p.get("CidrBlock"), ipv6) {
        (Some(_), false) => {
            let cidr = cidr_param(p, "CidrBlock")?;
            let assoc = model.associate_vpc_cidr(vpc, cidr)?;
            x.node("cidrBlockAssociation", |x| {
                vpc_cidr_xml(x, &assoc, cidr.trunc(), "associating");
            });
            x.leaf("vpcId", vpc);
            return Ok(());
        }
        (None, true) => {}
        _ => {
            return Err(ApiError::client(
                "InvalidParameterCombination",
                "Give one of CidrBlock (a secondary IPv4 block) or AmazonProvidedIpv6CidrBlock=true.",
            ));
        }
    }
    let (assoc, net) = model.associate_vpc_ipv6(vpc)?;
    let region = model.region.clone();
    x.node("ipv6CidrBlockAssociation", |x| {
        vpc_ipv6_xml(x, &assoc, net, "associating", &region);
    });
    x.leaf("vpcId", vpc);
    Ok(())
}

pub(super) fn associate_subnet_cidr(
    model: &mut Model,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let subnet = p.required("SubnetId")?;
    let cidr =
        ipv6_cidr_param(p, "Ipv6CidrBlock")?.ok_or_else(|| super::missing("Ipv6CidrBlock"))?;
    let assoc = model.associate_subnet_ipv6(subnet, cidr)?;
    x.node("ipv6CidrBlockAssociation", |x| {
        subnet_ipv6_xml(x, &assoc, cidr.trunc(), "associating");
    });
    x.leaf("subnetId", subnet);
    Ok(())
}

pub(super) fn create_subnet(
    model: &mut Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let vpc = p.required("VpcId")?;
    model.own_vpc(vpc, caller)?;
    let cidr = cidr_param(p, "CidrBlock")?;
    let ipv6 = ipv6_cidr_param(p, "Ipv6CidrBlock")?;
    let id = model.create_subnet(
        vpc,
        cidr,
        p.get("AvailabilityZone").map(str::to_owned),
        p.tag_specs("subnet")?,
    )?;
    if let Some(net) = ipv6
        && let Err(e) = model.associate_subnet_ipv6(&id, net)
    {
        // CreateSubnet is one call: a bad IPv6 block makes no subnet.
        model.subnets.remove(&id);
        return Err(e);
    }
    let s = model.subnets[&id].clone();
    let available = model.available_in(&s);
    x.node("subnet", |x| {
        subnet_xml(x, &s, available, caller, &model.region)
    });
    Ok(())
}

pub(super) fn create_reservation(
    model: &mut Model,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let subnet = p.required("SubnetId")?;
    let cidr = cidr_param(p, "Cidr")?;
    let kind = match p.required("ReservationType")? {
        "prefix" => ReservationKind::Prefix,
        "explicit" => ReservationKind::Explicit,
        other => {
            return Err(ApiError::client(
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
    Ok(())
}

pub(super) fn get_reservations(
    model: &Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let subnet = p.required("SubnetId")?.to_owned();
    check_known(
        std::slice::from_ref(&subnet),
        "subnet-",
        "InvalidSubnetID",
        "subnet",
        |id| own_subnet(model, caller, id),
    )?;
    let filters = p.filters()?;
    let mut rs: Vec<&CidrReservation> = Vec::new();
    for r in model.reservations.values().filter(|r| r.subnet == subnet) {
        if matches_all(&filters, |name| reservation_field(r, name))? {
            rs.push(r);
        }
    }
    let (page, next) = super::paginate(p, rs, false, (5, 1000))?;
    x.set("subnetIpv4CidrReservationSet", page, |x, r| {
        reservation_xml(x, r, caller)
    });
    x.open("subnetIpv6CidrReservationSet")
        .close("subnetIpv6CidrReservationSet");
    next_token(x, next);
    Ok(())
}

pub(super) fn delete_reservation(
    model: &mut Model,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let r = model.delete_reservation(p.required("SubnetCidrReservationId")?)?;
    x.node("deletedSubnetCidrReservation", |x| {
        reservation_xml(x, &r, &model.account)
    });
    Ok(())
}
