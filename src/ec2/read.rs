//! The read-only EC2 seam of the reports (`prefixd capacity`, `prefixd ranges`): our verbs and
//! our records for what an account's network looks like — subnets and who holds their
//! addresses, reservations, VPCs, peering connections, route tables, prefix lists. Every
//! Describe is paginated to the end. [`crate::ec2::sdk::SdkRead`] implements it with
//! aws-sdk-ec2; errors are the agent's [`Ec2Error`], classified once in the adapter.

use std::future::Future;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{Action, Ec2Error, InstanceInfo, TypeLimits};
use crate::core::{EniId, InstanceId, Prefix28, SubnetId};

/// What EC2 actions the reports call: their IAM policy (deploy/iam-reports-policy.json) grants
/// exactly these, and `tests/reports.rs` checks it against the calls made.
pub const ACTIONS: &[Action] = &[
    Action::DescribeInstanceTypes,
    Action::DescribeInstances,
    Action::DescribeManagedPrefixLists,
    Action::DescribeNetworkInterfaces,
    Action::DescribeRouteTables,
    Action::DescribeSubnets,
    Action::DescribeVpcPeeringConnections,
    Action::DescribeVpcs,
    Action::GetManagedPrefixListEntries,
    Action::GetSubnetCidrReservations,
];

/// Which subnets to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubnetQuery {
    /// These ones.
    Ids(Vec<SubnetId>),
    /// Those with a tag key (`kubernetes.io/cluster/NAME`), whatever its value.
    TagKey(String),
    /// Every subnet of a VPC.
    Vpc(String),
}

/// A subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetRecord {
    /// Its id.
    pub id: SubnetId,
    /// Its VPC.
    pub vpc: String,
    /// Its IPv4 CIDR.
    pub cidr: Ipv4Net,
    /// Its availability zone.
    pub az: String,
    /// AvailableIpAddressCount.
    pub available: u32,
    /// Its `Name` tag, when it has one.
    pub name: Option<String>,
}

/// A subnet CIDR reservation's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservationType {
    /// EC2 takes automatic prefixes from it first.
    Prefix,
    /// Only explicit assignment uses it.
    Explicit,
}

/// A subnet CIDR reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRecord {
    /// Its id.
    pub id: String,
    /// The range.
    pub cidr: Ipv4Net,
    /// Its type.
    pub kind: ReservationType,
}

/// An ENI as the capacity report needs it: what it holds in its subnet, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniRecord {
    /// Its id.
    pub id: EniId,
    /// Its subnet.
    pub subnet: SubnetId,
    /// Every private address (the primary included).
    pub addresses: Vec<Ipv4Addr>,
    /// Its /28 prefixes.
    pub prefixes: Vec<Prefix28>,
    /// The instance it is attached to.
    pub instance: Option<InstanceId>,
    /// `interface`, `nat_gateway`, `vpc_endpoint`, ...
    pub interface_type: String,
    /// Made by an AWS service for you (load balancers, endpoints, NAT gateways).
    pub requester_managed: bool,
    /// Its description.
    pub description: String,
}

/// One IPv4 CIDR of a VPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpcCidr {
    /// The range.
    pub cidr: Ipv4Net,
    /// `associated`, `associating`, `disassociated`...
    pub state: String,
}

/// A VPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpcRecord {
    /// Its id.
    pub id: String,
    /// Its account.
    pub owner: String,
    /// Its primary CIDR.
    pub primary: Ipv4Net,
    /// Every IPv4 CIDR association, the primary included.
    pub cidrs: Vec<VpcCidr>,
    /// Its IPv6 blocks.
    pub ipv6: Vec<Ipv6Net>,
}

/// One side of a peering connection, as the peering shows it (another account's included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSide {
    /// The VPC.
    pub vpc: String,
    /// Its account.
    pub owner: String,
    /// Its region.
    pub region: String,
    /// Its IPv4 CIDRs.
    pub cidrs: Vec<Ipv4Net>,
    /// Its IPv6 CIDRs.
    pub ipv6: Vec<Ipv6Net>,
}

/// A VPC peering connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeeringRecord {
    /// Its id.
    pub id: String,
    /// `active`, `pending-acceptance`, `failed`, `deleted`...
    pub status: String,
    /// The requester.
    pub requester: PeerSide,
    /// The accepter.
    pub accepter: PeerSide,
}

/// Where a route leads from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteDestination {
    /// An IPv4 CIDR.
    Cidr(Ipv4Net),
    /// An IPv6 CIDR.
    Ipv6(Ipv6Net),
    /// A managed prefix list.
    PrefixList(String),
}

/// What kind of thing a route leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// The VPC.
    Local,
    /// A peering connection.
    Peering,
    /// A transit gateway.
    TransitGateway,
    /// An internet gateway.
    InternetGateway,
    /// A virtual private gateway (VPN, Direct Connect).
    VpnGateway,
    /// A NAT gateway.
    NatGateway,
    /// An ENI or instance.
    Interface,
    /// Something else (endpoints, carrier and local gateways, Cloud WAN).
    Other,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    /// Its destination.
    pub destination: RouteDestination,
    /// Its target's kind.
    pub target_kind: TargetKind,
    /// Its target's id (`local` for the VPC).
    pub target: String,
    /// `active` or `blackhole`.
    pub state: String,
}

/// A route table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTableRecord {
    /// Its id.
    pub id: String,
    /// Its VPC.
    pub vpc: String,
    /// The VPC's main table (subnets without an explicit association use it).
    pub main: bool,
    /// Subnets explicitly associated with it.
    pub subnets: Vec<SubnetId>,
    /// Its routes.
    pub routes: Vec<RouteRecord>,
}

/// A managed prefix list with its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixListRecord {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its CIDRs.
    pub entries: Vec<IpNet>,
}

/// EC2 as the reports read it. Every method is one Describe, paginated to the end (two for
/// [`Ec2Read::peerings`], one filtered by each side). What a method promises (a subnet's ENIs,
/// a VPC's route tables) it also checks in the answer: an endpoint that ignores a filter
/// (LocalStack ignores the peering sides') must not slip others' resources into a report.
pub trait Ec2Read: Send + Sync {
    /// DescribeInstances for one instance.
    fn instance(&self, id: &InstanceId) -> impl Future<Output = Result<InstanceInfo, Ec2Error>>;
    /// DescribeInstanceTypes for one type.
    fn instance_type(&self, name: &str) -> impl Future<Output = Result<TypeLimits, Ec2Error>>;
    /// DescribeSubnets.
    fn subnets(&self, q: &SubnetQuery)
    -> impl Future<Output = Result<Vec<SubnetRecord>, Ec2Error>>;
    /// GetSubnetCidrReservations (IPv4).
    fn reservations(
        &self,
        subnet: &SubnetId,
    ) -> impl Future<Output = Result<Vec<ReservationRecord>, Ec2Error>>;
    /// DescribeNetworkInterfaces of one subnet: everything that holds an address there.
    fn subnet_enis(
        &self,
        subnet: &SubnetId,
    ) -> impl Future<Output = Result<Vec<EniRecord>, Ec2Error>>;
    /// DescribeVpcs.
    fn vpcs(&self, ids: &[String]) -> impl Future<Output = Result<Vec<VpcRecord>, Ec2Error>>;
    /// DescribeVpcPeeringConnections where `vpc` is either side.
    fn peerings(&self, vpc: &str) -> impl Future<Output = Result<Vec<PeeringRecord>, Ec2Error>>;
    /// DescribeRouteTables of a VPC.
    fn route_tables(
        &self,
        vpc: &str,
    ) -> impl Future<Output = Result<Vec<RouteTableRecord>, Ec2Error>>;
    /// DescribeManagedPrefixLists and GetManagedPrefixListEntries for one list.
    fn prefix_list(&self, id: &str) -> impl Future<Output = Result<PrefixListRecord, Ec2Error>>;
}
