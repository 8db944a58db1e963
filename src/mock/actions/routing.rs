//! Routing actions: VPC peering connections, route tables and routes, managed prefix lists,
//! transit gateways. Every one acts for the calling account (see [`crate::mock::model`]).

use ipnet::{IpNet, Ipv4Net};

use super::{FieldFn, missing, next_token, one, select_in, tag_field, tags_xml};
use crate::mock::ApiError;
use crate::mock::model::{
    Model, Peering, PeeringSide, PrefixList, Route, RouteDest, RouteTable, RouteTarget,
    TransitGateway,
};
use crate::mock::wire::{Params, Xml};

/// DescribeRouteTables' MaxResults range (EC2's service model).
const ROUTE_TABLE_PAGE: (u32, u32) = (5, 100);
/// DescribeVpcPeeringConnections'.
const PEERING_PAGE: (u32, u32) = (5, 1000);
/// DescribeManagedPrefixLists' and GetManagedPrefixListEntries'.
const PREFIX_LIST_PAGE: (u32, u32) = (1, 100);

// ---- peering ---------------------------------------------------------------------------------

fn side_xml(x: &mut Xml, tag: &str, side: &PeeringSide, model: &Model, active: bool) {
    x.node(tag, |x| {
        let vpc = model.vpcs.get(&side.vpc).filter(|v| v.owner == side.owner);
        if let Some(v) = vpc {
            x.leaf("cidrBlock", v.cidr);
            x.set("cidrBlockSet", v.cidrs(), |x, c| {
                x.leaf("cidrBlock", c);
            });
            x.set("ipv6CidrBlockSet", v.ipv6.iter(), |x, (_, net)| {
                x.leaf("ipv6CidrBlock", net);
            });
        }
        x.leaf("ownerId", &side.owner);
        if active {
            x.node("peeringOptions", |x| {
                x.leaf("allowDnsResolutionFromRemoteVpc", false)
                    .leaf("allowEgressFromLocalClassicLinkToRemoteVpc", false)
                    .leaf("allowEgressFromLocalVpcToRemoteClassicLink", false);
            });
        }
        x.leaf("vpcId", &side.vpc).leaf("region", &side.region);
    });
}

fn peering_xml(x: &mut Xml, p: &Peering, model: &Model) {
    let active = p.state == crate::mock::model::PeeringState::Active;
    side_xml(x, "accepterVpcInfo", &p.accepter, model, active);
    side_xml(x, "requesterVpcInfo", &p.requester, model, active);
    x.node("status", |x| {
        x.leaf("code", p.state.as_str()).leaf("message", &p.message);
    });
    tags_xml(x, &p.tags);
    x.leaf("vpcPeeringConnectionId", &p.id);
}

fn side_cidrs(model: &Model, side: &PeeringSide) -> Vec<String> {
    model
        .vpcs
        .get(&side.vpc)
        .filter(|v| v.owner == side.owner)
        .map(|v| v.cidrs().map(|c| c.to_string()).collect())
        .unwrap_or_default()
}

fn peering_field<'a>(p: &'a Peering, model: &'a Model) -> Box<FieldFn<'a>> {
    Box::new(move |name: &str| {
        if let Some(t) = tag_field(&p.tags, name) {
            return t;
        }
        match name {
            "vpc-peering-connection-id" => one(&p.id),
            "status-code" => one(p.state.as_str()),
            "status-message" => one(&p.message),
            "requester-vpc-info.vpc-id" => one(&p.requester.vpc),
            "requester-vpc-info.owner-id" => one(&p.requester.owner),
            "requester-vpc-info.cidr-block" => Some(side_cidrs(model, &p.requester)),
            "accepter-vpc-info.vpc-id" => one(&p.accepter.vpc),
            "accepter-vpc-info.owner-id" => one(&p.accepter.owner),
            "accepter-vpc-info.cidr-block" => Some(side_cidrs(model, &p.accepter)),
            _ => None,
        }
    })
}

pub(super) fn describe_peerings(
    model: &Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let ids = p.list("VpcPeeringConnectionId");
    for id in &ids {
        model.peering(id, caller)?;
    }
    let visible = model
        .peerings
        .values()
        .filter(|c| c.requester.owner == caller || c.accepter.owner == caller);
    let (page, next) = select_in(
        p,
        visible,
        &ids,
        |c| &c.id,
        |c| peering_field(c, model),
        PEERING_PAGE,
    )?;
    x.set("vpcPeeringConnectionSet", page, |x, c| {
        peering_xml(x, c, model)
    });
    next_token(x, next);
    Ok(())
}

pub(super) fn create_peering(
    model: &mut Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let id = model.create_peering(
        caller,
        p.required("VpcId")?,
        p.required("PeerVpcId")?,
        p.get("PeerOwnerId").filter(|s| !s.is_empty()),
        p.get("PeerRegion").filter(|s| !s.is_empty()),
        p.tag_specs("vpc-peering-connection")?,
    )?;
    let c = model.peerings[&id].clone();
    x.node("vpcPeeringConnection", |x| peering_xml(x, &c, model));
    Ok(())
}

pub(super) fn accept_peering(
    model: &mut Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let id = p.required("VpcPeeringConnectionId")?;
    model.accept_peering(caller, id)?;
    let c = model.peerings[id].clone();
    x.node("vpcPeeringConnection", |x| peering_xml(x, &c, model));
    Ok(())
}

pub(super) fn delete_peering(
    model: &mut Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    model.delete_peering(caller, p.required("VpcPeeringConnectionId")?)?;
    x.leaf("return", true);
    Ok(())
}

// ---- route tables ----------------------------------------------------------------------------

fn route_xml(x: &mut Xml, r: &Route, model: &Model) {
    match &r.dest {
        RouteDest::Cidr(c) => x.leaf("destinationCidrBlock", c),
        RouteDest::PrefixList(id) => x.leaf("destinationPrefixListId", id),
    };
    match &r.target {
        RouteTarget::Local => x.leaf("gatewayId", "local"),
        RouteTarget::Gateway(id) => x.leaf("gatewayId", id),
        RouteTarget::NatGateway(id) => x.leaf("natGatewayId", id),
        RouteTarget::Peering(id) => x.leaf("vpcPeeringConnectionId", id),
        RouteTarget::TransitGateway(id) => x.leaf("transitGatewayId", id),
        RouteTarget::NetworkInterface(id) => x.leaf("networkInterfaceId", id),
    };
    x.leaf("state", model.route_state(r))
        .leaf("origin", r.origin);
}

fn route_table_xml(x: &mut Xml, t: &RouteTable, model: &Model) {
    x.leaf("routeTableId", &t.id).leaf("vpcId", &t.vpc);
    x.leaf("ownerId", model.owner_of(&t.vpc));
    let main = t.main_association.iter().map(|a| (a, None));
    let explicit = t.associations.iter().map(|(a, s)| (a, Some(s)));
    x.set("associationSet", main.chain(explicit), |x, (a, s)| {
        x.leaf("routeTableAssociationId", a)
            .leaf("routeTableId", &t.id);
        if let Some(s) = s {
            x.leaf("subnetId", s);
        }
        x.leaf("main", s.is_none());
        x.node("associationState", |x| {
            x.leaf("state", "associated");
        });
    });
    x.open("propagatingVgwSet").close("propagatingVgwSet");
    x.set("routeSet", &t.routes, |x, r| route_xml(x, r, model));
    tags_xml(x, &t.tags);
}

fn route_values(t: &RouteTable, f: impl Fn(&Route) -> Option<String>) -> Option<Vec<String>> {
    Some(t.routes.iter().filter_map(f).collect())
}

fn route_table_field<'a>(t: &'a RouteTable, model: &'a Model) -> Box<FieldFn<'a>> {
    Box::new(move |name: &str| {
        if let Some(tag) = tag_field(&t.tags, name) {
            return tag;
        }
        let target = |want: fn(&RouteTarget) -> Option<&String>| {
            route_values(t, |r| want(&r.target).cloned())
        };
        match name {
            "route-table-id" => one(&t.id),
            "vpc-id" => one(&t.vpc),
            "owner-id" => one(model.owner_of(&t.vpc)),
            "association.main" => one(t.main_association.is_some()),
            "association.subnet-id" => {
                Some(t.associations.iter().map(|(_, s)| s.clone()).collect())
            }
            "association.route-table-association-id" => Some(
                t.main_association
                    .iter()
                    .chain(t.associations.iter().map(|(a, _)| a))
                    .cloned()
                    .collect(),
            ),
            "route.destination-cidr-block" => route_values(t, |r| match &r.dest {
                RouteDest::Cidr(c) => Some(c.to_string()),
                RouteDest::PrefixList(_) => None,
            }),
            "route.destination-prefix-list-id" => route_values(t, |r| match &r.dest {
                RouteDest::PrefixList(p) => Some(p.clone()),
                RouteDest::Cidr(_) => None,
            }),
            "route.state" => route_values(t, |r| Some(model.route_state(r).to_owned())),
            "route.origin" => route_values(t, |r| Some(r.origin.to_owned())),
            "route.vpc-peering-connection-id" => target(|t| match t {
                RouteTarget::Peering(id) => Some(id),
                _ => None,
            }),
            "route.transit-gateway-id" => target(|t| match t {
                RouteTarget::TransitGateway(id) => Some(id),
                _ => None,
            }),
            "route.gateway-id" => route_values(t, |r| match &r.target {
                RouteTarget::Gateway(id) => Some(id.clone()),
                RouteTarget::Local => Some("local".into()),
                _ => None,
            }),
            "route.nat-gateway-id" => target(|t| match t {
                RouteTarget::NatGateway(id) => Some(id),
                _ => None,
            }),
            _ => None,
        }
    })
}

pub(super) fn describe_route_tables(
    model: &Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let ids = p.list("RouteTableId");
    for id in &ids {
        model.route_table(id, caller)?;
    }
    let visible = model
        .route_tables
        .values()
        .filter(|t| model.owner_of(&t.vpc) == caller);
    let (page, next) = select_in(
        p,
        visible,
        &ids,
        |t| &t.id,
        |t| route_table_field(t, model),
        ROUTE_TABLE_PAGE,
    )?;
    x.set("routeTableSet", page, |x, t| route_table_xml(x, t, model));
    next_token(x, next);
    Ok(())
}

pub(super) fn create_route_table(
    model: &mut Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let id = model.create_route_table(caller, p.required("VpcId")?, p.tag_specs("route-table")?)?;
    let t = model.route_tables[&id].clone();
    x.node("routeTable", |x| route_table_xml(x, &t, model));
    Ok(())
}

pub(super) fn associate_route_table(
    model: &mut Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let assoc = model.associate_route_table(
        caller,
        p.required("RouteTableId")?,
        p.required("SubnetId")?,
    )?;
    x.leaf("associationId", assoc);
    x.node("associationState", |x| {
        x.leaf("state", "associated");
    });
    Ok(())
}

pub(super) fn create_route(
    model: &mut Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let table = p.required("RouteTableId")?;
    let dest = match (
        p.get("DestinationCidrBlock"),
        p.get("DestinationPrefixListId"),
    ) {
        (Some(c), None) => RouteDest::Cidr(cidr(c, "DestinationCidrBlock")?),
        (None, Some(pl)) => RouteDest::PrefixList(pl.to_owned()),
        (None, None) => {
            if p.get("DestinationIpv6CidrBlock").is_some() {
                return Err(ApiError::client(
                    "InvalidParameterValue",
                    "The mock routes IPv4 destinations only (DestinationCidrBlock or DestinationPrefixListId).",
                ));
            }
            return Err(missing("DestinationCidrBlock"));
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::client(
                "InvalidParameterCombination",
                "Only one of DestinationCidrBlock and DestinationPrefixListId may be given.",
            ));
        }
    };
    let targets: Vec<RouteTarget> = [
        (
            "GatewayId",
            RouteTarget::Gateway as fn(String) -> RouteTarget,
        ),
        ("NatGatewayId", RouteTarget::NatGateway),
        ("VpcPeeringConnectionId", RouteTarget::Peering),
        ("TransitGatewayId", RouteTarget::TransitGateway),
        ("NetworkInterfaceId", RouteTarget::NetworkInterface),
    ]
    .into_iter()
    .filter_map(|(name, make)| p.get(name).map(|v| make(v.to_owned())))
    .collect();
    let [target] = <[RouteTarget; 1]>::try_from(targets).map_err(|t| {
        ApiError::client(
            if t.is_empty() {
                "MissingParameter"
            } else {
                "InvalidParameterCombination"
            },
            "Give exactly one target: GatewayId, NatGatewayId, VpcPeeringConnectionId, TransitGatewayId or NetworkInterfaceId.",
        )
    })?;
    model.create_route(caller, table, dest, target)?;
    x.leaf("return", true);
    Ok(())
}

fn cidr(v: &str, name: &str) -> Result<Ipv4Net, ApiError> {
    v.parse().map_err(|_| {
        ApiError::client(
            "InvalidParameterValue",
            format!("Value ({v}) for parameter {name} is invalid. Expected an IPv4 CIDR block."),
        )
    })
}

// ---- prefix lists ----------------------------------------------------------------------------

fn prefix_list_xml(x: &mut Xml, l: &PrefixList, region: &str) {
    x.leaf("prefixListId", &l.id)
        .leaf("addressFamily", &l.family)
        .leaf("state", "create-complete")
        .leaf(
            "prefixListArn",
            format!("arn:aws:ec2:{region}:{}:prefix-list/{}", l.owner, l.id),
        )
        .leaf("prefixListName", &l.name)
        .leaf("maxEntries", l.max_entries)
        .leaf("version", l.version);
    tags_xml(x, &l.tags);
    x.leaf("ownerId", &l.owner);
}

fn prefix_list_field(l: &PrefixList) -> Box<FieldFn<'_>> {
    Box::new(move |name: &str| {
        if let Some(t) = tag_field(&l.tags, name) {
            return t;
        }
        match name {
            "prefix-list-id" => one(&l.id),
            "prefix-list-name" => one(&l.name),
            "owner-id" => one(&l.owner),
            _ => None,
        }
    })
}

pub(super) fn describe_prefix_lists(
    model: &Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let ids = p.list("PrefixListId");
    for id in &ids {
        model.prefix_list(id, caller)?;
    }
    let visible = model.prefix_lists.values().filter(|l| l.owner == caller);
    let (page, next) = select_in(
        p,
        visible,
        &ids,
        |l| &l.id,
        prefix_list_field,
        PREFIX_LIST_PAGE,
    )?;
    x.set("prefixListSet", page, |x, l| {
        prefix_list_xml(x, l, &model.region)
    });
    next_token(x, next);
    Ok(())
}

pub(super) fn create_prefix_list(
    model: &mut Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let mut entries = Vec::new();
    for (_, e) in p.indexed("Entry") {
        let c = e.required("Cidr")?;
        let net: IpNet = c.parse().map_err(|_| {
            ApiError::client(
                "InvalidParameterValue",
                format!("Value ({c}) for parameter Entry.Cidr is invalid. Expected a CIDR block."),
            )
        })?;
        entries.push((net, e.get("Description").unwrap_or("").to_owned()));
    }
    let max = p.int("MaxEntries")?.ok_or_else(|| missing("MaxEntries"))?;
    let id = model.create_prefix_list(
        caller,
        p.required("PrefixListName")?,
        p.required("AddressFamily")?,
        max,
        entries,
        p.tag_specs("prefix-list")?,
    )?;
    let l = model.prefix_lists[&id].clone();
    x.node("prefixList", |x| prefix_list_xml(x, &l, &model.region));
    Ok(())
}

pub(super) fn prefix_list_entries(
    model: &Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let l = model.prefix_list(p.required("PrefixListId")?, caller)?;
    if let Some(v) = p.get("TargetVersion")
        && v != l.version.to_string()
    {
        return Err(ApiError::client(
            "InvalidPrefixListVersion",
            format!("Prefix list {} has no version {v}.", l.id),
        ));
    }
    let (page, next) = super::paginate(p, l.entries.iter().collect(), false, PREFIX_LIST_PAGE)?;
    x.set("entrySet", page, |x, (c, d)| {
        x.leaf("cidr", c);
        if !d.is_empty() {
            x.leaf("description", d);
        }
    });
    next_token(x, next);
    Ok(())
}

// ---- internet gateways -----------------------------------------------------------------------

pub(super) fn create_internet_gateway(
    model: &mut Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let tags = p.tag_specs("internet-gateway")?;
    let id = model.create_internet_gateway(caller, tags.clone());
    x.node("internetGateway", |x| {
        x.open("attachmentSet").close("attachmentSet");
        x.leaf("internetGatewayId", &id).leaf("ownerId", caller);
        tags_xml(x, &tags);
    });
    Ok(())
}

pub(super) fn attach_internet_gateway(
    model: &mut Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    model.attach_internet_gateway(
        caller,
        p.required("InternetGatewayId")?,
        p.required("VpcId")?,
    )?;
    x.leaf("return", true);
    Ok(())
}

// ---- transit gateways ------------------------------------------------------------------------

fn tgw_xml(x: &mut Xml, t: &TransitGateway, region: &str) {
    x.leaf("transitGatewayId", &t.id)
        .leaf(
            "transitGatewayArn",
            format!("arn:aws:ec2:{region}:{}:transit-gateway/{}", t.owner, t.id),
        )
        .leaf("state", if t.deleted { "deleted" } else { "available" })
        .leaf("ownerId", &t.owner)
        .leaf("description", &t.description);
    tags_xml(x, &t.tags);
}

pub(super) fn create_transit_gateway(
    model: &mut Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let id = model.create_transit_gateway(
        caller,
        p.get("Description").unwrap_or("").to_owned(),
        p.tag_specs("transit-gateway")?,
    );
    let t = model.transit_gateways[&id].clone();
    x.node("transitGateway", |x| tgw_xml(x, &t, &model.region));
    Ok(())
}

pub(super) fn delete_transit_gateway(
    model: &mut Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
) -> Result<(), ApiError> {
    let id = p.required("TransitGatewayId")?;
    model.delete_transit_gateway(caller, id)?;
    let t = model.transit_gateways[id].clone();
    x.node("transitGateway", |x| tgw_xml(x, &t, &model.region));
    Ok(())
}
