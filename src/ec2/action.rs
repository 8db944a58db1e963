//! The EC2 actions prefixd knows, as a type: the adapter's, the mock's and the simulator's
//! calls, metrics labels, the IAM policy and EC2's throttling buckets all name them through
//! [`Action`], never through strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An EC2 Query API action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// AcceptVpcPeeringConnection (the mock's set-up).
    AcceptVpcPeeringConnection,
    /// AssignIpv6Addresses.
    AssignIpv6Addresses,
    /// AssignPrivateIpAddresses.
    AssignPrivateIpAddresses,
    /// AssociateRouteTable (the mock's set-up).
    AssociateRouteTable,
    /// AssociateSubnetCidrBlock (the mock's set-up).
    AssociateSubnetCidrBlock,
    /// AssociateVpcCidrBlock (the mock's set-up).
    AssociateVpcCidrBlock,
    /// AttachInternetGateway (the mock's set-up).
    AttachInternetGateway,
    /// AttachNetworkInterface.
    AttachNetworkInterface,
    /// CreateInternetGateway (the mock's set-up).
    CreateInternetGateway,
    /// CreateManagedPrefixList (the mock's set-up).
    CreateManagedPrefixList,
    /// CreateNetworkInterface.
    CreateNetworkInterface,
    /// CreateRoute (the mock's set-up).
    CreateRoute,
    /// CreateRouteTable (the mock's set-up).
    CreateRouteTable,
    /// CreateSubnet (the mock's set-up).
    CreateSubnet,
    /// CreateSubnetCidrReservation.
    CreateSubnetCidrReservation,
    /// CreateTags.
    CreateTags,
    /// CreateTransitGateway (the mock's set-up).
    CreateTransitGateway,
    /// CreateVpc (the mock's set-up).
    CreateVpc,
    /// CreateVpcPeeringConnection (the mock's set-up).
    CreateVpcPeeringConnection,
    /// DeleteNetworkInterface.
    DeleteNetworkInterface,
    /// DeleteSubnetCidrReservation.
    DeleteSubnetCidrReservation,
    /// DeleteTransitGateway (the mock's set-up).
    DeleteTransitGateway,
    /// DeleteVpcPeeringConnection (the mock's set-up).
    DeleteVpcPeeringConnection,
    /// DescribeInstanceTypes.
    DescribeInstanceTypes,
    /// DescribeInstances.
    DescribeInstances,
    /// DescribeManagedPrefixLists.
    DescribeManagedPrefixLists,
    /// DescribeNetworkInterfaces.
    DescribeNetworkInterfaces,
    /// DescribeRouteTables.
    DescribeRouteTables,
    /// DescribeSubnets.
    DescribeSubnets,
    /// DescribeVpcPeeringConnections.
    DescribeVpcPeeringConnections,
    /// DescribeVpcs.
    DescribeVpcs,
    /// DetachNetworkInterface.
    DetachNetworkInterface,
    /// GetManagedPrefixListEntries.
    GetManagedPrefixListEntries,
    /// GetSubnetCidrReservations.
    GetSubnetCidrReservations,
    /// ModifyNetworkInterfaceAttribute.
    ModifyNetworkInterfaceAttribute,
    /// RunInstances (the mock's set-up).
    RunInstances,
    /// TerminateInstances (the mock's set-up).
    TerminateInstances,
    /// UnassignIpv6Addresses.
    UnassignIpv6Addresses,
    /// UnassignPrivateIpAddresses.
    UnassignPrivateIpAddresses,
}

/// A token bucket's size and refill per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketSpec {
    /// Burst.
    pub capacity: f64,
    /// Tokens per second.
    pub refill: f64,
}

/// An action name EC2 does not have (or prefixd does not know).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an EC2 action prefixd knows")]
pub struct UnknownAction(pub String);

impl Action {
    /// Every action, in name order.
    pub const ALL: &'static [Action] = &[
        Self::AcceptVpcPeeringConnection,
        Self::AssignIpv6Addresses,
        Self::AssignPrivateIpAddresses,
        Self::AssociateRouteTable,
        Self::AssociateSubnetCidrBlock,
        Self::AssociateVpcCidrBlock,
        Self::AttachInternetGateway,
        Self::AttachNetworkInterface,
        Self::CreateInternetGateway,
        Self::CreateManagedPrefixList,
        Self::CreateNetworkInterface,
        Self::CreateRoute,
        Self::CreateRouteTable,
        Self::CreateSubnet,
        Self::CreateSubnetCidrReservation,
        Self::CreateTags,
        Self::CreateTransitGateway,
        Self::CreateVpc,
        Self::CreateVpcPeeringConnection,
        Self::DeleteNetworkInterface,
        Self::DeleteSubnetCidrReservation,
        Self::DeleteTransitGateway,
        Self::DeleteVpcPeeringConnection,
        Self::DescribeInstanceTypes,
        Self::DescribeInstances,
        Self::DescribeManagedPrefixLists,
        Self::DescribeNetworkInterfaces,
        Self::DescribeRouteTables,
        Self::DescribeSubnets,
        Self::DescribeVpcPeeringConnections,
        Self::DescribeVpcs,
        Self::DetachNetworkInterface,
        Self::GetManagedPrefixListEntries,
        Self::GetSubnetCidrReservations,
        Self::ModifyNetworkInterfaceAttribute,
        Self::RunInstances,
        Self::TerminateInstances,
        Self::UnassignIpv6Addresses,
        Self::UnassignPrivateIpAddresses,
    ];

    /// What the agent calls: its IAM policy (deploy/iam-policy.json) grants exactly these.
    /// CreateTags is never called by itself: CreateNetworkInterface's TagSpecification needs it.
    pub const AGENT: &'static [Action] = &[
        Self::AssignIpv6Addresses,
        Self::AssignPrivateIpAddresses,
        Self::AttachNetworkInterface,
        Self::CreateNetworkInterface,
        Self::CreateTags,
        Self::DeleteNetworkInterface,
        Self::DescribeInstanceTypes,
        Self::DescribeInstances,
        Self::DescribeNetworkInterfaces,
        Self::DescribeSubnets,
        Self::DescribeVpcs,
        Self::DetachNetworkInterface,
        Self::ModifyNetworkInterfaceAttribute,
        Self::UnassignPrivateIpAddresses,
    ];

    /// The API name, e.g. `AssignPrivateIpAddresses`.
    pub fn name(self) -> &'static str {
        match self {
            Self::AcceptVpcPeeringConnection => "AcceptVpcPeeringConnection",
            Self::AssignIpv6Addresses => "AssignIpv6Addresses",
            Self::AssignPrivateIpAddresses => "AssignPrivateIpAddresses",
            Self::AssociateRouteTable => "AssociateRouteTable",
            Self::AssociateSubnetCidrBlock => "AssociateSubnetCidrBlock",
            Self::AssociateVpcCidrBlock => "AssociateVpcCidrBlock",
            Self::AttachInternetGateway => "AttachInternetGateway",
            Self::AttachNetworkInterface => "AttachNetworkInterface",
            Self::CreateInternetGateway => "CreateInternetGateway",
            Self::CreateManagedPrefixList => "CreateManagedPrefixList",
            Self::CreateNetworkInterface => "CreateNetworkInterface",
            Self::CreateRoute => "CreateRoute",
            Self::CreateRouteTable => "CreateRouteTable",
            Self::CreateSubnet => "CreateSubnet",
            Self::CreateSubnetCidrReservation => "CreateSubnetCidrReservation",
            Self::CreateTags => "CreateTags",
            Self::CreateTransitGateway => "CreateTransitGateway",
            Self::CreateVpc => "CreateVpc",
            Self::CreateVpcPeeringConnection => "CreateVpcPeeringConnection",
            Self::DeleteNetworkInterface => "DeleteNetworkInterface",
            Self::DeleteSubnetCidrReservation => "DeleteSubnetCidrReservation",
            Self::DeleteTransitGateway => "DeleteTransitGateway",
            Self::DeleteVpcPeeringConnection => "DeleteVpcPeeringConnection",
            Self::DescribeInstanceTypes => "DescribeInstanceTypes",
            Self::DescribeInstances => "DescribeInstances",
            Self::DescribeManagedPrefixLists => "DescribeManagedPrefixLists",
            Self::DescribeNetworkInterfaces => "DescribeNetworkInterfaces",
            Self::DescribeRouteTables => "DescribeRouteTables",
            Self::DescribeSubnets => "DescribeSubnets",
            Self::DescribeVpcPeeringConnections => "DescribeVpcPeeringConnections",
            Self::DescribeVpcs => "DescribeVpcs",
            Self::DetachNetworkInterface => "DetachNetworkInterface",
            Self::GetManagedPrefixListEntries => "GetManagedPrefixListEntries",
            Self::GetSubnetCidrReservations => "GetSubnetCidrReservations",
            Self::ModifyNetworkInterfaceAttribute => "ModifyNetworkInterfaceAttribute",
            Self::RunInstances => "RunInstances",
            Self::TerminateInstances => "TerminateInstances",
            Self::UnassignIpv6Addresses => "UnassignIpv6Addresses",
            Self::UnassignPrivateIpAddresses => "UnassignPrivateIpAddresses",
        }
    }

    /// Whether the action changes EC2 state (everything but Describe* and Get*). Mutating
    /// calls go through the client-side limiter and count against EC2's mutating buckets.
    pub fn is_mutating(self) -> bool {
        !matches!(
            self,
            Self::DescribeInstanceTypes
                | Self::DescribeInstances
                | Self::DescribeManagedPrefixLists
                | Self::DescribeNetworkInterfaces
                | Self::DescribeRouteTables
                | Self::DescribeSubnets
                | Self::DescribeVpcPeeringConnections
                | Self::DescribeVpcs
                | Self::GetManagedPrefixListEntries
                | Self::GetSubnetCidrReservations
        )
    }

    /// EC2's token bucket for the action (../shared/reference/ec2.md). `unfiltered` marks a
    /// read with no ids, filters or pagination, which EC2 meters more tightly.
    pub fn bucket(self, unfiltered: bool) -> BucketSpec {
        let (capacity, refill) = match self {
            a if !a.is_mutating() => {
                if unfiltered {
                    (50.0, 10.0)
                } else {
                    (100.0, 20.0)
                }
            }
            Self::AssignPrivateIpAddresses
            | Self::UnassignPrivateIpAddresses
            | Self::AssignIpv6Addresses
            | Self::UnassignIpv6Addresses
            | Self::CreateNetworkInterface
            | Self::DeleteNetworkInterface
            | Self::ModifyNetworkInterfaceAttribute => (100.0, 5.0),
            Self::CreateTags => (100.0, 10.0),
            Self::CreateSubnetCidrReservation | Self::DeleteSubnetCidrReservation => (5.0, 1.0),
            _ => (50.0, 5.0),
        };
        BucketSpec { capacity, refill }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Action {
    type Err = UnknownAction;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownAction(s.to_owned()))
    }
}

impl Serialize for Action {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_sorted() {
        for a in Action::ALL {
            assert_eq!(a.name().parse::<Action>().unwrap(), *a);
            assert_eq!(serde_json::to_string(a).unwrap(), format!("\"{a}\""));
        }
        let names: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!("Launch".parse::<Action>().is_err());
        assert!(Action::AGENT.iter().all(|a| Action::ALL.contains(a)));
    }

    #[test]
    fn buckets_follow_ec2() {
        let assign = Action::AssignPrivateIpAddresses.bucket(false);
        assert_eq!((assign.capacity, assign.refill), (100.0, 5.0));
        let d = Action::DescribeNetworkInterfaces;
        assert!(!d.is_mutating());
        assert_eq!(d.bucket(true).refill, 10.0);
        assert_eq!(d.bucket(false).refill, 20.0);
        assert_eq!(Action::AttachNetworkInterface.bucket(false).capacity, 50.0);
        assert_eq!(
            Action::CreateSubnetCidrReservation.bucket(false).refill,
            1.0
        );
        assert!(!Action::GetSubnetCidrReservations.is_mutating());
    }
}
