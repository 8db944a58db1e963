//! VPCs, subnets (with every address tracked) and subnet CIDR reservations.

use ipnet::{Ipv4Net, Ipv6Net};

use super::{Model, Tags, check_id, not_found};
use crate::mock::ApiError;
use crate::mock::addr::{AddressSpace, ReservationKind};
use crate::mock::addr6::Ipv6Space;

/// A VPC.
#[derive(Debug, Clone)]
pub struct Vpc {
    /// vpc-…
    pub id: String,
    /// The account that owns it.
    pub owner: String,
    /// Its primary CIDR.
    pub cidr: Ipv4Net,
    /// Secondary IPv4 CIDRs (AssociateVpcCidrBlock), with their association ids.
    pub secondary_cidrs: Vec<(String, Ipv4Net)>,
    /// Its default security group.
    pub default_sg: String,
    /// Its Amazon-provided IPv6 /56, with the association id.
    pub ipv6: Option<(String, Ipv6Net)>,
    /// Tags.
    pub tags: Tags,
}

impl Vpc {
    /// Every IPv4 CIDR of the VPC, the primary first.
    pub fn cidrs(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        std::iter::once(self.cidr).chain(self.secondary_cidrs.iter().map(|(_, c)| *c))
    }
}

/// At most this many IPv4 CIDRs per VPC (EC2's default quota, the primary included).
pub const MAX_VPC_CIDRS: usize = 5;

/// The RFC 1918 ranges: a VPC's secondary CIDR may not come from another one than its
/// primary's (EC2's association restrictions).
const RFC1918: [&str; 3] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];
/// Ranges no VPC may use.
const NEVER: [&str; 4] = ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"];

fn rfc1918_of(net: &Ipv4Net) -> Option<Ipv4Net> {
    RFC1918
        .iter()
        .map(|r| r.parse::<Ipv4Net>().expect("valid"))
        .find(|r| r.contains(net))
}

/// A subnet.
#[derive(Debug, Clone)]
pub struct Subnet {
    /// subnet-…
    pub id: String,
    /// Its VPC.
    pub vpc: String,
    /// Availability zone.
    pub az: String,
    /// Every address.
    pub space: AddressSpace,
    /// Its IPv6 /64 and what is assigned from it, with the association id.
    pub ipv6: Option<(String, Ipv6Space)>,
    /// Tags.
    pub tags: Tags,
}

/// A subnet CIDR reservation.
#[derive(Debug, Clone)]
pub struct CidrReservation {
    /// scr-…
    pub id: String,
    /// Its subnet.
    pub subnet: String,
    /// The reserved range.
    pub cidr: Ipv4Net,
    /// prefix or explicit.
    pub kind: ReservationKind,
    /// Free text.
    pub description: String,
}

fn check_vpc_range(cidr: &Ipv4Net) -> Result<(), ApiError> {
    if !(16..=28).contains(&cidr.prefix_len()) {
        return Err(ApiError::client(
            "InvalidVpc.Range",
            format!("The CIDR '{cidr}' is invalid: a VPC CIDR is a /16 to a /28."),
        ));
    }
    if let Some(r) = NEVER
        .iter()
        .map(|r| r.parse::<Ipv4Net>().expect("valid"))
        .find(|r| r.contains(cidr) || cidr.contains(r))
    {
        return Err(ApiError::client(
            "InvalidVpc.Range",
            format!("The CIDR '{cidr}' is restricted: {r} cannot be used in a VPC."),
        ));
    }
    Ok(())
}

impl Model {
    /// The VPC `id` when `caller` owns it; another account's VPC is NotFound to it, as in EC2.
    pub fn own_vpc(&self, id: &str, caller: &str) -> Result<&Vpc, ApiError> {
        check_id(id, "vpc-", "InvalidVpcID.Malformed")?;
        self.vpcs
            .get(id)
            .filter(|v| v.owner == caller)
            .ok_or_else(|| not_found("InvalidVpcID.NotFound", "vpc", id))
    }

    /// The account that owns VPC `vpc` (the default account for an unknown one).
    pub fn owner_of(&self, vpc: &str) -> &str {
        self.vpcs.get(vpc).map_or(&self.account, |v| &v.owner)
    }

    // ---- VPCs, subnets, reservations ----------------------------------------------------

    /// CreateVpc in the default account.
    pub fn create_vpc(&mut self, cidr: Ipv4Net, tags: Tags) -> Result<String, ApiError> {
        let owner = self.account.clone();
        self.create_vpc_for(&owner, cidr, tags)
    }

    /// CreateVpc in `owner`'s account.
    pub fn create_vpc_for(
        &mut self,
        owner: &str,
        cidr: Ipv4Net,
        tags: Tags,
    ) -> Result<String, ApiError> {
        check_vpc_range(&cidr)?;
        let id = self.next_id("vpc-");
        let default_sg = self.next_id("sg-");
        let main_rtb = self.next_id("rtb-");
        let main_assoc = self.next_id("rtbassoc-");
        self.route_tables.insert(
            main_rtb.clone(),
            super::RouteTable::main(&main_rtb, &id, &main_assoc, cidr.trunc()),
        );
        self.vpcs.insert(
            id.clone(),
            Vpc {
                id: id.clone(),
                owner: owner.to_owned(),
                cidr: cidr.trunc(),
                secondary_cidrs: Vec::new(),
                default_sg,
                ipv6: None,
                tags,
            },
        );
        Ok(id)
    }

    /// CreateSubnet.
    pub fn create_subnet(
        &mut self,
        vpc: &str,
        cidr: Ipv4Net,
        az: Option<String>,
        tags: Tags,
    ) -> Result<String, ApiError> {
        check_id(vpc, "vpc-", "InvalidVpcID.Malformed")?;
        let v = self
            .vpcs
            .get(vpc)
            .ok_or_else(|| not_found("InvalidVpcID.NotFound", "vpc", vpc))?;
        if !(16..=28).contains(&cidr.prefix_len()) || !v.cidrs().any(|c| c.contains(&cidr)) {
            let all: Vec<String> = v.cidrs().map(|c| c.to_string()).collect();
            return Err(ApiError::client(
                "InvalidSubnet.Range",
                format!(
                    "The CIDR '{cidr}' is invalid for VPC {vpc} ({}).",
                    all.join(", ")
                ),
            ));
        }
        if let Some(other) = self.subnets.values().find(|s| {
            s.vpc == vpc && (s.space.net().contains(&cidr) || cidr.contains(&s.space.net()))
        }) {
            return Err(ApiError::client(
                "InvalidSubnet.Conflict",
                format!(
                    "The CIDR '{cidr}' conflicts with subnet {} ({}).",
                    other.id,
                    other.space.net()
                ),
            ));
        }
        let id = self.next_id("subnet-");
        let az = az.unwrap_or_else(|| format!("{}a", self.region));
        let mut space = AddressSpace::new(cidr.trunc());
        space.set_choice(self.address_choice.0, self.address_choice.1);
        self.subnets.insert(
            id.clone(),
            Subnet {
                id: id.clone(),
                vpc: vpc.to_owned(),
                az,
                space,
                ipv6: None,
                tags,
            },
        );
        Ok(id)
    }

    /// AssociateVpcCidrBlock with an IPv4 CidrBlock: a secondary CIDR, within EC2's
    /// restrictions (size, reserved ranges, another RFC 1918 range than the primary's, overlap
    /// with the VPC's CIDRs or those of VPCs it is actively peered with, at most five). The
    /// main route table gains its `local` route. Returns the association id.
    pub fn associate_vpc_cidr(&mut self, vpc: &str, cidr: Ipv4Net) -> Result<String, ApiError> {
        check_id(vpc, "vpc-", "InvalidVpcID.Malformed")?;
        let v = self
            .vpcs
            .get(vpc)
            .ok_or_else(|| not_found("InvalidVpcID.NotFound", "vpc", vpc))?;
        let cidr = cidr.trunc();
        check_vpc_range(&cidr)?;
        if v.cidrs().count() >= MAX_VPC_CIDRS {
            return Err(ApiError::client(
                "CidrLimitExceeded",
                format!("VPC {vpc} already has {MAX_VPC_CIDRS} IPv4 CIDR blocks."),
            ));
        }
        if let Some(c) = v.cidrs().find(|c| c.contains(&cidr) || cidr.contains(c)) {
            return Err(ApiError::client(
                "InvalidVpc.Range",
                format!("The CIDR '{cidr}' overlaps the VPC's CIDR {c}."),
            ));
        }
        let (primary, secondary) = (rfc1918_of(&v.cidr), rfc1918_of(&cidr));
        if secondary.is_some() && primary != secondary {
            return Err(ApiError::client(
                "InvalidVpc.Range",
                format!(
                    "The CIDR '{cidr}' is restricted: a VPC whose primary CIDR is {} cannot take a block from another RFC 1918 range.",
                    v.cidr
                ),
            ));
        }
        for peer in self.active_peers_of(vpc) {
            if let Some(c) = self.vpcs[&peer]
                .cidrs()
                .find(|c| c.contains(&cidr) || cidr.contains(c))
            {
                return Err(ApiError::client(
                    "InvalidVpc.Range",
                    format!(
                        "The CIDR '{cidr}' overlaps {c} of {peer}, which VPC {vpc} is peered with."
                    ),
                ));
            }
        }
        let assoc = self.next_id("vpc-cidr-assoc-");
        self.vpcs
            .get_mut(vpc)
            .expect("checked")
            .secondary_cidrs
            .push((assoc.clone(), cidr));
        for t in self.route_tables.values_mut().filter(|t| t.vpc == vpc) {
            t.add_local(cidr);
        }
        Ok(assoc)
    }

    /// AssociateVpcCidrBlock with AmazonProvidedIpv6CidrBlock (or CreateVpc with it): a /56
    /// from Amazon's pool. Returns the association id and the block.
    pub fn associate_vpc_ipv6(&mut self, vpc: &str) -> Result<(String, Ipv6Net), ApiError> {
        check_id(vpc, "vpc-", "InvalidVpcID.Malformed")?;
        let v = self
            .vpcs
            .get(vpc)
            .ok_or_else(|| not_found("InvalidVpcID.NotFound", "vpc", vpc))?;
        if v.ipv6.is_some() {
            return Err(ApiError::client(
                "CidrLimitExceeded",
                format!("VPC {vpc} already has an Amazon-provided IPv6 CIDR block."),
            ));
        }
        // 2600:1f14::/32 is one of Amazon's pools; each VPC its own /56 in it.
        let n = self.vpcs.values().filter(|v| v.ipv6.is_some()).count() as u128 + 1;
        let base: u128 = 0x2600_1f14u128 << 96 | n << 72;
        let net = Ipv6Net::new(std::net::Ipv6Addr::from(base), 56).expect("56 is valid");
        let assoc = self.next_id("vpc-cidr-assoc-");
        self.vpcs.get_mut(vpc).expect("checked").ipv6 = Some((assoc.clone(), net));
        Ok((assoc, net))
    }

    /// AssociateSubnetCidrBlock (or CreateSubnet with Ipv6CidrBlock): a /64 of the VPC's /56.
    pub fn associate_subnet_ipv6(
        &mut self,
        subnet: &str,
        cidr: Ipv6Net,
    ) -> Result<String, ApiError> {
        let s = self.subnet(subnet)?;
        let vpc = &self.vpcs[&s.vpc];
        let Some((_, vnet)) = vpc.ipv6 else {
            return Err(ApiError::client(
                "InvalidSubnet.Range",
                format!(
                    "The IPv6 CIDR '{cidr}' is invalid: VPC {} has no IPv6 CIDR block.",
                    vpc.id
                ),
            ));
        };
        if cidr.prefix_len() != 64 || !vnet.contains(&cidr) {
            return Err(ApiError::client(
                "InvalidSubnet.Range",
                format!("The IPv6 CIDR '{cidr}' is invalid: a subnet takes a /64 of {vnet}."),
            ));
        }
        if s.ipv6.is_some() {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!("Subnet {subnet} already has an IPv6 CIDR block."),
            ));
        }
        if let Some(other) = self.subnets.values().find(|o| {
            o.vpc == s.vpc
                && o.ipv6
                    .as_ref()
                    .is_some_and(|(_, sp)| sp.net() == cidr.trunc())
        }) {
            return Err(ApiError::client(
                "InvalidSubnet.Conflict",
                format!("The IPv6 CIDR '{cidr}' conflicts with subnet {}.", other.id),
            ));
        }
        let assoc = self.next_id("subnet-cidr-assoc-");
        self.subnets.get_mut(subnet).expect("checked").ipv6 =
            Some((assoc.clone(), Ipv6Space::new(cidr)));
        Ok(assoc)
    }

    pub(super) fn subnet(&self, id: &str) -> Result<&Subnet, ApiError> {
        check_id(id, "subnet-", "InvalidSubnetID.Malformed")?;
        self.subnets
            .get(id)
            .ok_or_else(|| not_found("InvalidSubnetID.NotFound", "subnet", id))
    }

    /// CreateSubnetCidrReservation.
    pub fn create_reservation(
        &mut self,
        subnet: &str,
        cidr: Ipv4Net,
        kind: ReservationKind,
        description: String,
    ) -> Result<String, ApiError> {
        let s = self.subnet(subnet)?;
        if !s.space.contains_net(&cidr) {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!(
                    "The CIDR {cidr} is not within subnet {subnet} ({}).",
                    s.space.net()
                ),
            ));
        }
        if self
            .reservations
            .values()
            .any(|r| r.subnet == subnet && (r.cidr.contains(&cidr) || cidr.contains(&r.cidr)))
        {
            return Err(ApiError::client(
                "InvalidSubnetCidrReservation.Conflict",
                format!("The CIDR {cidr} overlaps an existing reservation in {subnet}."),
            ));
        }
        let id = self.next_id("scr-");
        self.reservations.insert(
            id.clone(),
            CidrReservation {
                id: id.clone(),
                subnet: subnet.to_owned(),
                cidr: cidr.trunc(),
                kind,
                description,
            },
        );
        Ok(id)
    }

    /// DeleteSubnetCidrReservation.
    pub fn delete_reservation(&mut self, id: &str) -> Result<CidrReservation, ApiError> {
        self.reservations.remove(id).ok_or_else(|| {
            ApiError::client(
                "InvalidSubnetCidrReservationID.NotFound",
                format!("The subnet CIDR reservation ID '{id}' does not exist"),
            )
        })
    }

    /// AvailableIpAddressCount of `subnet`: free addresses outside its `prefix` reservations
    /// (a prefix reservation lowers the count: a whole-subnet one drives it to 0).
    pub fn available_in(&self, subnet: &Subnet) -> u32 {
        let (prefix, _) = self.reservation_ranges(&subnet.id);
        subnet.space.available() - subnet.space.free_in(&prefix)
    }

    pub(super) fn reservation_ranges(&self, subnet: &str) -> (Vec<Ipv4Net>, Vec<Ipv4Net>) {
        let mut prefix = Vec::new();
        let mut all = Vec::new();
        for r in self.reservations.values().filter(|r| r.subnet == subnet) {
            if r.kind == ReservationKind::Prefix {
                prefix.push(r.cidr);
            }
            all.push(r.cidr);
        }
        (prefix, all)
    }

    /// Scatters used addresses over a subnet so no aligned /28 stays free.
    pub fn fragment_subnet(&mut self, subnet: &str) -> Result<usize, ApiError> {
        self.subnet(subnet)?;
        let s = self.subnets.get_mut(subnet).expect("checked");
        Ok(s.space.fragment().len())
    }
}
