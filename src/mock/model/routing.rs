//! Where traffic can go beyond a VPC: VPC peering connections (across accounts), route tables
//! with their associations and routes, managed prefix lists, and transit gateways (only as
//! route targets: their own route tables are not modelled).
//!
//! Rules kept from EC2: a peering between VPCs whose CIDRs overlap fails; only the accepter's
//! account accepts it; a route's state is derived, not stored — a route through a peering that
//! is not active, a deleted transit gateway or a deleted ENI is a `blackhole`; every table of a
//! VPC has a `local` route for each of the VPC's CIDRs, and nothing more specific than one of
//! them may point elsewhere than an ENI.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;

use super::{Model, Tags, check_id, not_found};
use crate::mock::ApiError;

/// One side of a peering connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeeringSide {
    /// The VPC.
    pub vpc: String,
    /// Its account.
    pub owner: String,
    /// Its region.
    pub region: String,
}

/// A peering connection's state (EC2's `status.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeeringState {
    /// Waiting for the accepter's account.
    PendingAcceptance,
    /// Traffic can flow (where routes say so).
    Active,
    /// Refused by EC2 (overlap, unknown VPC or account).
    Failed,
    /// Deleted by either side.
    Deleted,
}

impl PeeringState {
    /// EC2's code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingAcceptance => "pending-acceptance",
            Self::Active => "active",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        }
    }
}

/// A VPC peering connection.
#[derive(Debug, Clone)]
pub struct Peering {
    /// pcx-…
    pub id: String,
    /// The side that asked.
    pub requester: PeeringSide,
    /// The side that accepts.
    pub accepter: PeeringSide,
    /// Its state.
    pub state: PeeringState,
    /// EC2's `status.message`.
    pub message: String,
    /// Tags.
    pub tags: Tags,
}

/// What a route leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// The VPC itself.
    Local,
    /// An internet gateway (igw-…, attached to the VPC) or a virtual private gateway (vgw-…,
    /// not modelled): always active.
    Gateway(String),
    /// A NAT gateway (nat-…): not modelled, always active.
    NatGateway(String),
    /// A peering connection.
    Peering(String),
    /// A transit gateway.
    TransitGateway(String),
    /// An ENI (an appliance).
    NetworkInterface(String),
}

/// Where a route leads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDest {
    /// A CIDR.
    Cidr(Ipv4Net),
    /// A managed prefix list (pl-…).
    PrefixList(String),
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Its destination.
    pub dest: RouteDest,
    /// Its target.
    pub target: RouteTarget,
    /// `CreateRouteTable` for the local routes, `CreateRoute` for the rest.
    pub origin: &'static str,
}

/// A route table.
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// rtb-…
    pub id: String,
    /// Its VPC.
    pub vpc: String,
    /// The main association's id when this is the VPC's main table (subnets without an
    /// explicit association use it).
    pub main_association: Option<String>,
    /// Explicit associations: (rtbassoc-…, subnet).
    pub associations: Vec<(String, String)>,
    /// Routes, in creation order.
    pub routes: Vec<Route>,
    /// Tags.
    pub tags: Tags,
}

impl RouteTable {
    /// A VPC's main table with the local route for `cidr`.
    pub(super) fn main(id: &str, vpc: &str, assoc: &str, cidr: Ipv4Net) -> Self {
        let mut t = Self {
            id: id.to_owned(),
            vpc: vpc.to_owned(),
            main_association: Some(assoc.to_owned()),
            associations: Vec::new(),
            routes: Vec::new(),
            tags: Tags::new(),
        };
        t.add_local(cidr);
        t
    }

    /// Adds the local route for one of the VPC's CIDRs.
    pub(super) fn add_local(&mut self, cidr: Ipv4Net) {
        self.routes.push(Route {
            dest: RouteDest::Cidr(cidr),
            target: RouteTarget::Local,
            origin: "CreateRouteTable",
        });
    }
}

/// A customer-managed prefix list.
#[derive(Debug, Clone)]
pub struct PrefixList {
    /// pl-…
    pub id: String,
    /// Its name.
    pub name: String,
    /// `IPv4` or `IPv6`.
    pub family: String,
    /// MaxEntries.
    pub max_entries: u32,
    /// Its entries: (CIDR, description).
    pub entries: Vec<(ipnet::IpNet, String)>,
    /// Its version.
    pub version: u64,
    /// Its account.
    pub owner: String,
    /// Tags.
    pub tags: Tags,
}

/// A transit gateway (as a route target).
#[derive(Debug, Clone)]
pub struct TransitGateway {
    /// tgw-…
    pub id: String,
    /// Its account.
    pub owner: String,
    /// Description.
    pub description: String,
    /// `available` or `deleted`.
    pub deleted: bool,
    /// Tags.
    pub tags: Tags,
}

/// An internet gateway.
#[derive(Debug, Clone)]
pub struct InternetGateway {
    /// igw-…
    pub id: String,
    /// Its account.
    pub owner: String,
    /// The VPC it is attached to.
    pub vpc: Option<String>,
    /// Tags.
    pub tags: Tags,
}

/// EC2's message for a peering it refuses.
const PEERING_FAILED: &str =
    "Failed due to incorrect VPC-ID, Account ID, or overlapping CIDR range.";

/// At most this many entries in a prefix list (EC2's MaxEntries limit).
pub const MAX_PREFIX_LIST_ENTRIES: u32 = 1_000;

impl Model {
    // ---- peering --------------------------------------------------------------------------

    /// The peering `id` when `caller` is one of its sides.
    pub fn peering(&self, id: &str, caller: &str) -> Result<&Peering, ApiError> {
        check_id(id, "pcx-", "InvalidVpcPeeringConnectionId.Malformed")?;
        self.peerings
            .get(id)
            .filter(|p| p.requester.owner == caller || p.accepter.owner == caller)
            .ok_or_else(|| {
                ApiError::client(
                    "InvalidVpcPeeringConnectionID.NotFound",
                    format!("The vpcPeeringConnection ID '{id}' does not exist"),
                )
            })
    }

    /// VPCs that `vpc` is actively peered with.
    pub fn active_peers_of(&self, vpc: &str) -> Vec<String> {
        self.peerings
            .values()
            .filter(|p| p.state == PeeringState::Active)
            .filter_map(|p| {
                if p.requester.vpc == vpc {
                    Some(p.accepter.vpc.clone())
                } else if p.accepter.vpc == vpc {
                    Some(p.requester.vpc.clone())
                } else {
                    None
                }
            })
            .collect()
    }

    /// CreateVpcPeeringConnection by `caller` from its VPC `vpc` to `peer_vpc` of
    /// `peer_owner` (default: the caller) in `peer_region` (default: the mock's). As in EC2 the
    /// request itself succeeds when `vpc` is the caller's; the connection is `failed` when the
    /// peer VPC is not in that account and region, or when any CIDRs of the two overlap.
    pub fn create_peering(
        &mut self,
        caller: &str,
        vpc: &str,
        peer_vpc: &str,
        peer_owner: Option<&str>,
        peer_region: Option<&str>,
        tags: Tags,
    ) -> Result<String, ApiError> {
        let mine = self.own_vpc(vpc, caller)?.clone();
        check_id(peer_vpc, "vpc-", "InvalidVpcID.Malformed")?;
        let peer_owner = peer_owner.unwrap_or(caller).to_owned();
        let peer_region = peer_region.unwrap_or(&self.region).to_owned();
        let peer = self
            .vpcs
            .get(peer_vpc)
            .filter(|p| p.owner == peer_owner && peer_region == self.region);
        let overlap = peer.and_then(|p| {
            mine.cidrs().find_map(|a| {
                p.cidrs()
                    .find(|b| a.contains(b) || b.contains(&a))
                    .map(|b| (a, b))
            })
        });
        let (state, message) = match (peer, overlap) {
            (Some(_), None) if peer_vpc != vpc => (
                PeeringState::PendingAcceptance,
                format!("Pending Acceptance by {peer_owner}"),
            ),
            _ => (PeeringState::Failed, PEERING_FAILED.to_owned()),
        };
        let id = self.next_id("pcx-");
        self.peerings.insert(
            id.clone(),
            Peering {
                id: id.clone(),
                requester: PeeringSide {
                    vpc: vpc.to_owned(),
                    owner: caller.to_owned(),
                    region: self.region.clone(),
                },
                accepter: PeeringSide {
                    vpc: peer_vpc.to_owned(),
                    owner: peer_owner,
                    region: peer_region,
                },
                state,
                message,
                tags,
            },
        );
        Ok(id)
    }

    /// AcceptVpcPeeringConnection by the accepter's account.
    pub fn accept_peering(&mut self, caller: &str, id: &str) -> Result<(), ApiError> {
        let p = self.peering(id, caller)?;
        if p.accepter.owner != caller {
            return Err(ApiError::client(
                "OperationNotPermitted",
                format!(
                    "The peering connection {id} can only be accepted by its accepter's account {}.",
                    p.accepter.owner
                ),
            ));
        }
        if p.state != PeeringState::PendingAcceptance {
            return Err(ApiError::client(
                "InvalidStateTransition",
                format!(
                    "The peering connection {id} is {} and cannot be accepted.",
                    p.state.as_str()
                ),
            ));
        }
        let p = self.peerings.get_mut(id).expect("checked");
        p.state = PeeringState::Active;
        p.message = "Active".into();
        Ok(())
    }

    /// DeleteVpcPeeringConnection by either side: routes through it become blackholes.
    pub fn delete_peering(&mut self, caller: &str, id: &str) -> Result<(), ApiError> {
        let p = self.peering(id, caller)?;
        if matches!(p.state, PeeringState::Deleted | PeeringState::Failed) {
            return Err(ApiError::client(
                "InvalidStateTransition",
                format!("The peering connection {id} is {}.", p.state.as_str()),
            ));
        }
        let p = self.peerings.get_mut(id).expect("checked");
        p.state = PeeringState::Deleted;
        p.message = format!("Deleted by {caller}");
        Ok(())
    }

    // ---- transit gateways -----------------------------------------------------------------

    /// CreateTransitGateway: available at once.
    pub fn create_transit_gateway(
        &mut self,
        caller: &str,
        description: String,
        tags: Tags,
    ) -> String {
        let id = self.next_id("tgw-");
        self.transit_gateways.insert(
            id.clone(),
            TransitGateway {
                id: id.clone(),
                owner: caller.to_owned(),
                description,
                deleted: false,
                tags,
            },
        );
        id
    }

    /// DeleteTransitGateway: routes to it become blackholes.
    pub fn delete_transit_gateway(&mut self, caller: &str, id: &str) -> Result<(), ApiError> {
        let t = self.transit_gateway(id, caller)?;
        if t.deleted {
            return Err(ApiError::client(
                "IncorrectState",
                format!("Transit gateway {id} is already deleted."),
            ));
        }
        self.transit_gateways.get_mut(id).expect("checked").deleted = true;
        Ok(())
    }

    fn transit_gateway(&self, id: &str, caller: &str) -> Result<&TransitGateway, ApiError> {
        check_id(id, "tgw-", "InvalidTransitGatewayID.Malformed")?;
        self.transit_gateways
            .get(id)
            .filter(|t| t.owner == caller)
            .ok_or_else(|| not_found("InvalidTransitGatewayID.NotFound", "transitGateway", id))
    }

    // ---- internet gateways ----------------------------------------------------------------

    /// CreateInternetGateway: detached.
    pub fn create_internet_gateway(&mut self, caller: &str, tags: Tags) -> String {
        let id = self.next_id("igw-");
        self.internet_gateways.insert(
            id.clone(),
            InternetGateway {
                id: id.clone(),
                owner: caller.to_owned(),
                vpc: None,
                tags,
            },
        );
        id
    }

    /// AttachInternetGateway: one gateway per VPC, one VPC per gateway.
    pub fn attach_internet_gateway(
        &mut self,
        caller: &str,
        igw: &str,
        vpc: &str,
    ) -> Result<(), ApiError> {
        self.own_vpc(vpc, caller)?;
        let g = self.internet_gateway(igw, caller)?;
        if let Some(v) = &g.vpc {
            return Err(ApiError::client(
                "Resource.AlreadyAssociated",
                format!("resource {igw} is already attached to network {v}"),
            ));
        }
        if let Some(other) = self
            .internet_gateways
            .values()
            .find(|g| g.vpc.as_deref() == Some(vpc))
        {
            return Err(ApiError::client(
                "Resource.AlreadyAssociated",
                format!(
                    "network {vpc} already has internet gateway {} attached",
                    other.id
                ),
            ));
        }
        self.internet_gateways.get_mut(igw).expect("checked").vpc = Some(vpc.to_owned());
        Ok(())
    }

    fn internet_gateway(&self, id: &str, caller: &str) -> Result<&InternetGateway, ApiError> {
        check_id(id, "igw-", "InvalidInternetGatewayID.Malformed")?;
        self.internet_gateways
            .get(id)
            .filter(|g| g.owner == caller)
            .ok_or_else(|| not_found("InvalidInternetGatewayID.NotFound", "internetGateway", id))
    }

    // ---- prefix lists ---------------------------------------------------------------------

    /// The prefix list `id`, when the caller owns it.
    pub fn prefix_list(&self, id: &str, caller: &str) -> Result<&PrefixList, ApiError> {
        check_id(id, "pl-", "InvalidPrefixListID.Malformed")?;
        self.prefix_lists
            .get(id)
            .filter(|p| p.owner == caller)
            .ok_or_else(|| not_found("InvalidPrefixListID.NotFound", "prefixList", id))
    }

    /// CreateManagedPrefixList.
    pub fn create_prefix_list(
        &mut self,
        caller: &str,
        name: &str,
        family: &str,
        max_entries: u32,
        entries: Vec<(ipnet::IpNet, String)>,
        tags: Tags,
    ) -> Result<String, ApiError> {
        if name.is_empty() || name.starts_with("com.amazonaws") {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!(
                    "The prefix list name '{name}' is invalid: give a name that does not start with com.amazonaws."
                ),
            ));
        }
        let v4 = match family {
            "IPv4" => true,
            "IPv6" => false,
            other => {
                return Err(ApiError::client(
                    "InvalidParameterValue",
                    format!(
                        "Value ({other}) for parameter AddressFamily is invalid. Expected IPv4 or IPv6."
                    ),
                ));
            }
        };
        if !(1..=MAX_PREFIX_LIST_ENTRIES).contains(&max_entries) {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!(
                    "Value ({max_entries}) for parameter MaxEntries is invalid. Expected 1 to {MAX_PREFIX_LIST_ENTRIES}."
                ),
            ));
        }
        if entries.len() > max_entries as usize {
            return Err(ApiError::client(
                "PrefixListMaxEntriesExceeded",
                format!(
                    "The prefix list has {} entries, more than its MaxEntries {max_entries}.",
                    entries.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for (c, _) in &entries {
            if matches!(c, ipnet::IpNet::V4(_)) != v4 {
                return Err(ApiError::client(
                    "InvalidParameterValue",
                    format!("The CIDR {c} is not an {family} CIDR."),
                ));
            }
            if !seen.insert(c.trunc()) {
                return Err(ApiError::client(
                    "InvalidParameterValue",
                    format!("The CIDR {c} appears twice in the prefix list."),
                ));
            }
        }
        let id = self.next_id("pl-");
        self.prefix_lists.insert(
            id.clone(),
            PrefixList {
                id: id.clone(),
                name: name.to_owned(),
                family: family.to_owned(),
                max_entries,
                entries: entries.into_iter().map(|(c, d)| (c.trunc(), d)).collect(),
                version: 1,
                owner: caller.to_owned(),
                tags,
            },
        );
        Ok(id)
    }

    // ---- route tables ---------------------------------------------------------------------

    /// The route table `id` when the caller owns its VPC.
    pub fn route_table(&self, id: &str, caller: &str) -> Result<&RouteTable, ApiError> {
        check_id(id, "rtb-", "InvalidRouteTableID.Malformed")?;
        self.route_tables
            .get(id)
            .filter(|t| self.owner_of(&t.vpc) == caller)
            .ok_or_else(|| not_found("InvalidRouteTableID.NotFound", "routeTable", id))
    }

    /// CreateRouteTable: a table with the VPC's local routes.
    pub fn create_route_table(
        &mut self,
        caller: &str,
        vpc: &str,
        tags: Tags,
    ) -> Result<String, ApiError> {
        let cidrs: Vec<Ipv4Net> = self.own_vpc(vpc, caller)?.cidrs().collect();
        let id = self.next_id("rtb-");
        let mut t = RouteTable {
            id: id.clone(),
            vpc: vpc.to_owned(),
            main_association: None,
            associations: Vec::new(),
            routes: Vec::new(),
            tags,
        };
        for c in cidrs {
            t.add_local(c);
        }
        self.route_tables.insert(id.clone(), t);
        Ok(id)
    }

    /// AssociateRouteTable: the subnet (of the same VPC, not associated elsewhere) uses this
    /// table instead of the main one. Returns the association id.
    pub fn associate_route_table(
        &mut self,
        caller: &str,
        table: &str,
        subnet: &str,
    ) -> Result<String, ApiError> {
        let vpc = self.route_table(table, caller)?.vpc.clone();
        let s = self.subnet(subnet)?;
        if s.vpc != vpc {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!("Route table {table} and subnet {subnet} belong to different networks."),
            ));
        }
        if let Some(t) = self
            .route_tables
            .values()
            .find(|t| t.associations.iter().any(|(_, s)| s == subnet))
        {
            return Err(ApiError::client(
                "Resource.AlreadyAssociated",
                format!(
                    "the specified association for route table {} conflicts with an existing association",
                    t.id
                ),
            ));
        }
        let assoc = self.next_id("rtbassoc-");
        self.route_tables
            .get_mut(table)
            .expect("checked")
            .associations
            .push((assoc.clone(), subnet.to_owned()));
        Ok(assoc)
    }

    /// The table a subnet uses: its explicit association, else its VPC's main table.
    pub fn table_of_subnet(&self, subnet: &str) -> Option<&RouteTable> {
        let vpc = &self.subnets.get(subnet)?.vpc;
        self.route_tables
            .values()
            .find(|t| t.associations.iter().any(|(_, s)| s == subnet))
            .or_else(|| {
                self.route_tables
                    .values()
                    .find(|t| &t.vpc == vpc && t.main_association.is_some())
            })
    }

    /// CreateRoute. The target must exist (and a peering must join this table's VPC); a
    /// destination already routed, or one inside a local route that does not lead to an ENI,
    /// is refused.
    pub fn create_route(
        &mut self,
        caller: &str,
        table: &str,
        dest: RouteDest,
        target: RouteTarget,
    ) -> Result<(), ApiError> {
        let t = self.route_table(table, caller)?;
        if let Some(r) = t.routes.iter().find(|r| r.dest == dest) {
            let d = match &r.dest {
                RouteDest::Cidr(c) => c.to_string(),
                RouteDest::PrefixList(p) => p.clone(),
            };
            return Err(ApiError::client(
                "RouteAlreadyExists",
                format!("The route identified by {d} already exists."),
            ));
        }
        match &dest {
            RouteDest::Cidr(c) => {
                let local = t.routes.iter().find_map(|r| match (&r.dest, &r.target) {
                    (RouteDest::Cidr(l), RouteTarget::Local) if l.contains(c) => Some(*l),
                    _ => None,
                });
                if let Some(l) = local
                    && !matches!(target, RouteTarget::NetworkInterface(_))
                {
                    return Err(ApiError::client(
                        "InvalidParameterValue",
                        format!(
                            "The destination CIDR block {c} is equal to or more specific than one of this VPC's CIDR blocks ({l}). This route can target only an interface or an instance."
                        ),
                    ));
                }
            }
            RouteDest::PrefixList(p) => {
                self.prefix_list(p, caller)?;
            }
        }
        let vpc = t.vpc.clone();
        match &target {
            RouteTarget::Local => {
                return Err(ApiError::client(
                    "InvalidParameterValue",
                    "Routes with the target local are made by EC2 for the VPC's CIDR blocks.",
                ));
            }
            RouteTarget::Peering(id) => {
                let p = self.peering(id, caller)?;
                if p.requester.vpc != vpc && p.accepter.vpc != vpc {
                    return Err(ApiError::client(
                        "InvalidParameterValue",
                        format!("The peering connection {id} does not join VPC {vpc}."),
                    ));
                }
            }
            RouteTarget::TransitGateway(id) => {
                self.transit_gateway(id, caller)?;
            }
            RouteTarget::NetworkInterface(id) => {
                let e = self.eni(id)?;
                if e.vpc != vpc {
                    return Err(ApiError::client(
                        "InvalidParameterValue",
                        format!("The network interface {id} is not in VPC {vpc}."),
                    ));
                }
            }
            RouteTarget::Gateway(id) if id.starts_with("igw-") => {
                let g = self.internet_gateway(id, caller)?;
                if g.vpc.as_deref() != Some(vpc.as_str()) {
                    return Err(ApiError::client(
                        "InvalidParameterValue",
                        format!(
                            "route table {table} and network gateway {id} belong to different networks"
                        ),
                    ));
                }
            }
            RouteTarget::Gateway(id) => {
                // Virtual private gateways are not modelled: any well-formed one is taken.
                check_id(id, "vgw-", "InvalidGatewayID.Malformed")?;
            }
            RouteTarget::NatGateway(id) => {
                check_id(id, "nat-", "InvalidNatGatewayID.Malformed")?;
            }
        }
        self.route_tables
            .get_mut(table)
            .expect("checked")
            .routes
            .push(Route {
                dest,
                target,
                origin: "CreateRoute",
            });
        Ok(())
    }

    /// A route's state now: `blackhole` when its peering is not active, its transit gateway is
    /// deleted or its ENI is gone or detached; `active` otherwise.
    pub fn route_state(&self, r: &Route) -> &'static str {
        let alive = match &r.target {
            RouteTarget::Local | RouteTarget::Gateway(_) | RouteTarget::NatGateway(_) => true,
            RouteTarget::Peering(id) => self
                .peerings
                .get(id)
                .is_some_and(|p| p.state == PeeringState::Active),
            RouteTarget::TransitGateway(id) => {
                self.transit_gateways.get(id).is_some_and(|t| !t.deleted)
            }
            RouteTarget::NetworkInterface(id) => {
                self.enis.get(id).is_some_and(|e| e.attachment.is_some())
            }
        };
        if alive { "active" } else { "blackhole" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_accounts() -> (Model, String, String) {
        let mut m = Model::new("us-west-2");
        let a = m
            .create_vpc("10.0.0.0/16".parse().unwrap(), Tags::new())
            .unwrap();
        let b = m
            .create_vpc_for(
                "222233334444",
                "172.20.0.0/16".parse().unwrap(),
                Tags::new(),
            )
            .unwrap();
        (m, a, b)
    }

    #[test]
    fn peering_across_accounts_needs_the_accepter_and_refuses_overlap() {
        let (mut m, a, b) = two_accounts();
        let me = m.account.clone();
        let pcx = m
            .create_peering(&me, &a, &b, Some("222233334444"), None, Tags::new())
            .unwrap();
        assert_eq!(m.peerings[&pcx].state, PeeringState::PendingAcceptance);
        assert_eq!(
            m.accept_peering(&me, &pcx).unwrap_err().code,
            "OperationNotPermitted"
        );
        m.accept_peering("222233334444", &pcx).unwrap();
        assert_eq!(m.active_peers_of(&a), vec![b.clone()]);
        // A third account sees nothing of it.
        assert!(m.peering(&pcx, "999999999999").is_err());
        // The peer's range can no longer be added to the requester.
        assert_eq!(
            m.associate_vpc_cidr(&a, "172.20.0.0/20".parse().unwrap())
                .unwrap_err()
                .code,
            "InvalidVpc.Range"
        );
        // Overlapping VPCs: the connection fails.
        let c = m
            .create_vpc_for(
                "222233334444",
                "10.0.128.0/17".parse().unwrap(),
                Tags::new(),
            )
            .unwrap();
        let bad = m
            .create_peering(&me, &a, &c, Some("222233334444"), None, Tags::new())
            .unwrap();
        assert_eq!(m.peerings[&bad].state, PeeringState::Failed);
        // The wrong owner for a VPC: failed too.
        let wrong = m
            .create_peering(&me, &a, &b, None, None, Tags::new())
            .unwrap();
        assert_eq!(m.peerings[&wrong].state, PeeringState::Failed);
    }

    #[test]
    fn routes_are_checked_and_their_state_follows_the_target() {
        let (mut m, a, b) = two_accounts();
        let me = m.account.clone();
        let pcx = m
            .create_peering(&me, &a, &b, Some("222233334444"), None, Tags::new())
            .unwrap();
        let rtb = m.create_route_table(&me, &a, Tags::new()).unwrap();
        let dest = RouteDest::Cidr("172.20.0.0/16".parse().unwrap());
        m.create_route(&me, &rtb, dest.clone(), RouteTarget::Peering(pcx.clone()))
            .unwrap();
        let route = |m: &Model| m.route_tables[&rtb].routes.last().unwrap().clone();
        assert_eq!(m.route_state(&route(&m)), "blackhole", "pending peering");
        m.accept_peering("222233334444", &pcx).unwrap();
        assert_eq!(m.route_state(&route(&m)), "active");
        assert_eq!(
            m.create_route(&me, &rtb, dest, RouteTarget::Gateway("igw-1".into()))
                .unwrap_err()
                .code,
            "RouteAlreadyExists"
        );
        assert_eq!(
            m.create_route(
                &me,
                &rtb,
                RouteDest::Cidr("10.0.4.0/24".parse().unwrap()),
                RouteTarget::Gateway("igw-1".into())
            )
            .unwrap_err()
            .code,
            "InvalidParameterValue"
        );
        m.delete_peering("222233334444", &pcx).unwrap();
        assert_eq!(m.route_state(&route(&m)), "blackhole");
        let tgw = m.create_transit_gateway(&me, String::new(), Tags::new());
        m.create_route(
            &me,
            &rtb,
            RouteDest::Cidr("192.168.0.0/16".parse().unwrap()),
            RouteTarget::TransitGateway(tgw.clone()),
        )
        .unwrap();
        assert_eq!(m.route_state(&route(&m)), "active");
        m.delete_transit_gateway(&me, &tgw).unwrap();
        assert_eq!(m.route_state(&route(&m)), "blackhole");
        // Another account's table is not found.
        assert!(m.route_table(&rtb, "222233334444").is_err());
    }

    #[test]
    fn secondary_cidrs_follow_ec2_restrictions_and_get_local_routes() {
        let (mut m, a, _) = two_accounts();
        m.associate_vpc_cidr(&a, "100.64.0.0/16".parse().unwrap())
            .unwrap();
        m.associate_vpc_cidr(&a, "10.1.0.0/16".parse().unwrap())
            .unwrap();
        for (c, why) in [
            ("192.168.0.0/16", "another RFC 1918 range"),
            ("10.0.128.0/20", "overlaps"),
            ("169.254.0.0/16", "restricted"),
            ("10.2.0.0/15", "a /16 to a /28"),
        ] {
            let e = m.associate_vpc_cidr(&a, c.parse().unwrap()).unwrap_err();
            assert!(e.message.contains(why), "{c}: {}", e.message);
        }
        let main = m.table_of_subnet_or_main(&a);
        assert_eq!(
            main.routes
                .iter()
                .filter(|r| r.target == RouteTarget::Local)
                .count(),
            3
        );
        m.associate_vpc_cidr(&a, "10.3.0.0/16".parse().unwrap())
            .unwrap();
        m.associate_vpc_cidr(&a, "10.4.0.0/16".parse().unwrap())
            .unwrap();
        assert_eq!(
            m.associate_vpc_cidr(&a, "10.5.0.0/16".parse().unwrap())
                .unwrap_err()
                .code,
            "CidrLimitExceeded"
        );
    }

    impl Model {
        fn table_of_subnet_or_main(&self, vpc: &str) -> &RouteTable {
            self.route_tables
                .values()
                .find(|t| t.vpc == vpc && t.main_association.is_some())
                .unwrap()
        }
    }

    #[test]
    fn prefix_lists_are_validated() {
        let (mut m, _, _) = two_accounts();
        let me = m.account.clone();
        let e = |c: &str| (c.parse().unwrap(), String::new());
        let id = m
            .create_prefix_list(
                &me,
                "onprem",
                "IPv4",
                2,
                vec![e("10.8.0.0/16")],
                Tags::new(),
            )
            .unwrap();
        assert!(m.prefix_list(&id, &me).is_ok());
        assert!(m.prefix_list(&id, "222233334444").is_err());
        for (entries, max, code) in [
            (
                vec![e("10.8.0.0/16"), e("10.9.0.0/16")],
                1,
                "PrefixListMaxEntriesExceeded",
            ),
            (
                vec![e("10.8.0.0/16"), e("10.8.0.0/16")],
                5,
                "InvalidParameterValue",
            ),
            (vec![e("2001:db8::/32")], 5, "InvalidParameterValue"),
        ] {
            assert_eq!(
                m.create_prefix_list(&me, "x", "IPv4", max, entries, Tags::new())
                    .unwrap_err()
                    .code,
                code
            );
        }
    }
}
