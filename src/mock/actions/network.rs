//! VPC and subnet actions: CreateVpc, DescribeVpcs, CreateSubnet, DescribeSubnets, and the subnet CIDR
//! reservations.

use super::{
    FieldFn, check_known, cidr_param, matches_all, next_token, one, select, tag_field, tags_xml,
};
use crate::mock::ApiError;
use crate::mock::addr::ReservationKind;
use crate::mock::model::{CidrReservation, Model, Subnet, Vpc};
use crate::mock::wire::{Params, Xml};

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

pub(super) fn describe_subnets(model: &Model, p: &Params, x: &mut Xml) -> Result<(), ApiError> {
    let ids = p.list("SubnetId");
    check_known(&ids, "subnet-", "InvalidSubnetID", "subnet", |id| {
        model.subnets.contains_key(id)
    })?;
    let (page, next) = select(p, model.subnets.values(), &ids, |s| &s.id, subnet_field)?;
    let (account, region) = (&model.account, &model.region);
    x.set("subnetSet", page, |x, s| subnet_xml(x, s, account, region));
    next_token(x, next);
    Ok(())
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

fn vpc_xml(x: &mut Xml, v: &Vpc, account: &str) {
    x.leaf("vpcId", &v.id)
        .leaf("ownerId", account)
        .leaf("state", "available")
        .leaf("cidrBlock", v.cidr)
        .leaf("dhcpOptionsId", "dopt-00000000")
        .leaf("instanceTenancy", "default")
        .leaf("isDefault", false);
    x.set("cidrBlockAssociationSet", [v], |x, v| {
        x.leaf("associationId", format!("vpc-cidr-assoc-{}", &v.id[4..]))
            .leaf("cidrBlock", v.cidr);
        x.node("cidrBlockState", |x| {
            x.leaf("state", "associated");
        });
    });
    tags_xml(x, &v.tags);
}

fn vpc_field(v: &Vpc) -> Box<FieldFn<'_>> {
    Box::new(move |name: &str| {
        if let Some(t) = tag_field(&v.tags, name) {
            return t;
        }
        match name {
            "vpc-id" => one(&v.id),
            "cidr" | "cidr-block-association.cidr-block" => one(v.cidr),
            "state" => one("available"),
            _ => None,
        }
    })
}

pub(super) fn describe_vpcs(model: &Model, p: &Params, x: &mut Xml) -> Result<(), ApiError> {
    let ids = p.list("VpcId");
    check_known(&ids, "vpc-", "InvalidVpcID", "vpc", |id| {
        model.vpcs.contains_key(id)
    })?;
    let (page, next) = select(p, model.vpcs.values(), &ids, |v| &v.id, vpc_field)?;
    let account = &model.account;
    x.set("vpcSet", page, |x, v| vpc_xml(x, v, account));
    next_token(x, next);
    Ok(())
}

pub(super) fn create_vpc(model: &mut Model, p: &Params, x: &mut Xml) -> Result<(), ApiError> {
    let cidr = cidr_param(p, "CidrBlock")?;
    let id = model.create_vpc(cidr, p.tag_specs("vpc")?)?;
    let v = &model.vpcs[&id];
    let account = &model.account;
    x.node("vpc", |x| vpc_xml(x, v, account));
    Ok(())
}

pub(super) fn create_subnet(model: &mut Model, p: &Params, x: &mut Xml) -> Result<(), ApiError> {
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

pub(super) fn get_reservations(model: &Model, p: &Params, x: &mut Xml) -> Result<(), ApiError> {
    let subnet = p.required("SubnetId")?.to_owned();
    check_known(
        std::slice::from_ref(&subnet),
        "subnet-",
        "InvalidSubnetID",
        "subnet",
        |id| model.subnets.contains_key(id),
    )?;
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
