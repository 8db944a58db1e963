//! The EC2 Query API the mock answers: parameters in (as the EC2 API reference names them),
//! model calls, XML out (element names as in EC2's service model). One file per part of the
//! model: [`eni`], [`instance`], [`network`], [`routing`]; shared parameter, filter and paging
//! helpers here. Every call is made by an account (`caller`, from the request's access key).

mod eni;
mod instance;
mod network;
mod routing;

use std::time::SystemTime;

use ipnet::Ipv4Net;

pub use eni::attach_status;

use super::ApiError;
use super::model::{Model, Tags, check_id};
use super::wire::{Filter, Params, Xml};
use crate::ec2::Action;

/// Every action the mock implements.
pub const ACTIONS: &[Action] = &[
    Action::DescribeInstances,
    Action::DescribeInstanceTypes,
    Action::DescribeSubnets,
    Action::DescribeVpcs,
    Action::DescribeNetworkInterfaces,
    Action::CreateNetworkInterface,
    Action::AttachNetworkInterface,
    Action::DetachNetworkInterface,
    Action::DeleteNetworkInterface,
    Action::ModifyNetworkInterfaceAttribute,
    Action::AssignPrivateIpAddresses,
    Action::UnassignPrivateIpAddresses,
    Action::AssignIpv6Addresses,
    Action::UnassignIpv6Addresses,
    Action::AssociateVpcCidrBlock,
    Action::AssociateSubnetCidrBlock,
    Action::CreateTags,
    Action::CreateSubnetCidrReservation,
    Action::GetSubnetCidrReservations,
    Action::DeleteSubnetCidrReservation,
    Action::CreateVpc,
    Action::CreateSubnet,
    Action::RunInstances,
    Action::TerminateInstances,
    Action::CreateVpcPeeringConnection,
    Action::AcceptVpcPeeringConnection,
    Action::DeleteVpcPeeringConnection,
    Action::DescribeVpcPeeringConnections,
    Action::CreateRouteTable,
    Action::AssociateRouteTable,
    Action::CreateRoute,
    Action::DescribeRouteTables,
    Action::CreateManagedPrefixList,
    Action::DescribeManagedPrefixLists,
    Action::GetManagedPrefixListEntries,
    Action::CreateTransitGateway,
    Action::DeleteTransitGateway,
    Action::CreateInternetGateway,
    Action::AttachInternetGateway,
];

/// Answers one request of `caller` (an account id). `now_ms` is the mock's clock (for
/// attachment states).
pub fn handle(
    model: &mut Model,
    caller: &str,
    action: Action,
    p: &Params,
    now_ms: u64,
    request_id: &str,
) -> Result<String, ApiError> {
    let name = action.name();
    let mut x = Xml::response(name, request_id);
    let c = caller;
    match action {
        Action::DescribeInstances => instance::describe(model, c, p, &mut x, now_ms)?,
        Action::DescribeInstanceTypes => instance::describe_types(p, &mut x)?,
        Action::RunInstances => instance::run(model, p, &mut x, now_ms)?,
        Action::TerminateInstances => instance::terminate(model, p, &mut x)?,
        Action::DescribeNetworkInterfaces => eni::describe(model, c, p, &mut x, now_ms)?,
        Action::CreateNetworkInterface => eni::create(model, p, &mut x, now_ms)?,
        Action::AttachNetworkInterface => eni::attach(model, p, &mut x, now_ms)?,
        Action::DetachNetworkInterface => eni::detach(model, p, &mut x)?,
        Action::DeleteNetworkInterface => eni::delete(model, p, &mut x)?,
        Action::ModifyNetworkInterfaceAttribute => eni::modify(model, p, &mut x)?,
        Action::AssignPrivateIpAddresses => eni::assign(model, p, &mut x)?,
        Action::UnassignPrivateIpAddresses => eni::unassign(model, p, &mut x)?,
        Action::AssignIpv6Addresses => eni::assign_ipv6(model, p, &mut x)?,
        Action::UnassignIpv6Addresses => eni::unassign_ipv6(model, p, &mut x)?,
        Action::AssociateVpcCidrBlock => network::associate_vpc_cidr(model, c, p, &mut x)?,
        Action::AssociateSubnetCidrBlock => network::associate_subnet_cidr(model, p, &mut x)?,
        Action::CreateTags => {
            let resources = p.list("ResourceId");
            if resources.is_empty() {
                return Err(missing("ResourceId"));
            }
            model.create_tags(&resources, &p.tags()?)?;
            x.leaf("return", true);
        }
        Action::DescribeSubnets => network::describe_subnets(model, c, p, &mut x)?,
        Action::DescribeVpcs => network::describe_vpcs(model, c, p, &mut x)?,
        Action::CreateVpc => network::create_vpc(model, c, p, &mut x)?,
        Action::CreateSubnet => network::create_subnet(model, c, p, &mut x)?,
        Action::CreateSubnetCidrReservation => network::create_reservation(model, p, &mut x)?,
        Action::GetSubnetCidrReservations => network::get_reservations(model, c, p, &mut x)?,
        Action::DeleteSubnetCidrReservation => network::delete_reservation(model, p, &mut x)?,
        Action::CreateVpcPeeringConnection => routing::create_peering(model, c, p, &mut x)?,
        Action::AcceptVpcPeeringConnection => routing::accept_peering(model, c, p, &mut x)?,
        Action::DeleteVpcPeeringConnection => routing::delete_peering(model, c, p, &mut x)?,
        Action::DescribeVpcPeeringConnections => routing::describe_peerings(model, c, p, &mut x)?,
        Action::CreateRouteTable => routing::create_route_table(model, c, p, &mut x)?,
        Action::AssociateRouteTable => routing::associate_route_table(model, c, p, &mut x)?,
        Action::CreateRoute => routing::create_route(model, c, p, &mut x)?,
        Action::DescribeRouteTables => routing::describe_route_tables(model, c, p, &mut x)?,
        Action::CreateManagedPrefixList => routing::create_prefix_list(model, c, p, &mut x)?,
        Action::DescribeManagedPrefixLists => routing::describe_prefix_lists(model, c, p, &mut x)?,
        Action::GetManagedPrefixListEntries => routing::prefix_list_entries(model, c, p, &mut x)?,
        Action::CreateTransitGateway => routing::create_transit_gateway(model, c, p, &mut x)?,
        Action::DeleteTransitGateway => routing::delete_transit_gateway(model, c, p, &mut x)?,
        Action::CreateInternetGateway => routing::create_internet_gateway(model, c, p, &mut x)?,
        Action::AttachInternetGateway => routing::attach_internet_gateway(model, c, p, &mut x)?,
    }
    Ok(x.finish(name))
}

pub(crate) fn missing(name: &str) -> ApiError {
    ApiError::client(
        "MissingParameter",
        format!("The request must contain the parameter {name}"),
    )
}

fn cidr_param(p: &Params, name: &str) -> Result<Ipv4Net, ApiError> {
    let v = p.required(name)?;
    v.parse().map_err(|_| {
        ApiError::client(
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
) -> Result<bool, ApiError> {
    for f in filters {
        let Some(values) = field(&f.name) else {
            return Err(ApiError::client(
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

/// Applies MaxResults (within the action's `(min, max)`) / NextToken to `items`.
fn paginate<T>(
    p: &Params,
    mut items: Vec<T>,
    ids_given: bool,
    (lo, hi): (u32, u32),
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let max = p.int("MaxResults")?;
    if ids_given && max.is_some() {
        return Err(ApiError::client(
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
                ApiError::client("InvalidNextToken", format!("The token '{t}' is invalid."))
            })?,
    };
    let Some(max) = max else {
        return Ok((items.split_off(start), None));
    };
    if !(lo..=hi).contains(&max) {
        return Err(ApiError::client(
            "InvalidParameterValue",
            format!(
                "Value ({max}) for parameter MaxResults is invalid. Expected a value from {lo} to {hi}."
            ),
        ));
    }
    let mut page = items.split_off(start);
    let next = (page.len() > max as usize).then(|| format!("mock-{}", start + max as usize));
    page.truncate(max as usize);
    Ok((page, next))
}

/// A Describe's answer set: the items whose id is among `ids` (every item when none is given)
/// and that match every filter of `p`, paged by its MaxResults and NextToken. `fields` says what
/// a filter sees of an item.
fn select<'a, T: 'a>(
    p: &Params,
    items: impl Iterator<Item = &'a T>,
    ids: &[String],
    id_of: impl Fn(&T) -> &str,
    fields: impl Fn(&'a T) -> Box<FieldFn<'a>>,
) -> Result<(Vec<&'a T>, Option<String>), ApiError> {
    select_in(p, items, ids, id_of, fields, (5, 1000))
}

/// [`select`] for an action whose MaxResults range is `range`.
fn select_in<'a, T: 'a>(
    p: &Params,
    items: impl Iterator<Item = &'a T>,
    ids: &[String],
    id_of: impl Fn(&T) -> &str,
    fields: impl Fn(&'a T) -> Box<FieldFn<'a>>,
    range: (u32, u32),
) -> Result<(Vec<&'a T>, Option<String>), ApiError> {
    let filters = p.filters()?;
    let mut out = Vec::new();
    for item in items {
        if !ids.is_empty() && !ids.iter().any(|i| i == id_of(item)) {
            continue;
        }
        if matches_all(&filters, fields(item))? {
            out.push(item);
        }
    }
    paginate(p, out, !ids.is_empty(), range)
}

/// `<nextToken>` when there is another page.
fn next_token(x: &mut Xml, next: Option<String>) {
    if let Some(t) = next {
        x.leaf("nextToken", t);
    }
}

/// Checks that every id in `ids` has `prefix`'s form (`{kind}.Malformed` otherwise) and that
/// `exists` knows it (`{kind}.NotFound`, "The {what} ID '…' does not exist").
fn check_known(
    ids: &[String],
    prefix: &str,
    kind: &str,
    what: &str,
    exists: impl Fn(&str) -> bool,
) -> Result<(), ApiError> {
    for id in ids {
        check_id(id, prefix, &format!("{kind}.Malformed"))?;
        if !exists(id) {
            return Err(ApiError::client(
                format!("{kind}.NotFound"),
                format!("The {what} ID '{id}' does not exist"),
            ));
        }
    }
    Ok(())
}
