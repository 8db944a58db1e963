//! The mock's EC2 state: VPCs, subnets and their addresses, CIDR reservations, instances and
//! ENIs, with EC2's rules for limits, exclusivity and errors. No I/O and no clock: callers pass
//! `now_ms`, the mock's own (scalable) time.
//!
//! The state is split by what it models: [`network`] (VPCs, subnets, reservations),
//! [`instance`] (instances), [`eni`] (ENIs, attachments and their addresses), [`routing`]
//! (peering connections, route tables, prefix lists, transit gateways).
//!
//! One model holds several accounts of one region: every VPC has an owner, and what hangs off
//! a VPC (subnets, ENIs, instances, route tables) is its owner's. Describe calls show a caller
//! its own resources (and peering connections it is a side of); the network actions refuse
//! another account's ids as EC2 does, with NotFound. The ENI and instance actions do not check
//! the caller: the agent and simulator run in the default account. The
//! [`super::account::Account`] that owns a model tells followers (the emulated VPC data plane)
//! when it changed.

mod eni;
mod instance;
mod network;
mod routing;

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

pub use eni::{Attachment, Eni, Ipv6Request};
pub use instance::Instance;
pub use network::{CidrReservation, MAX_VPC_CIDRS, Subnet, Vpc};
pub use routing::{
    InternetGateway, MAX_PREFIX_LIST_ENTRIES, Peering, PeeringSide, PeeringState, PrefixList,
    Route, RouteDest, RouteTable, RouteTarget, TransitGateway,
};

use super::ApiError;
use super::addr::AddressSpace;
use crate::core::Prefix28;

/// Tags on a resource.
pub type Tags = BTreeMap<String, String>;

/// Addresses asked for in CreateNetworkInterface or AssignPrivateIpAddresses. The action layer
/// has already checked that prefix and address parameters are not mixed.
#[derive(Debug, Clone, Default)]
pub struct IpRequest {
    /// Ipv4PrefixCount.
    pub prefix_count: u32,
    /// Ipv4Prefix.N.
    pub prefixes: Vec<String>,
    /// SecondaryPrivateIpAddressCount.
    pub ip_count: u32,
    /// PrivateIpAddress.N.
    pub ips: Vec<Ipv4Addr>,
}

impl IpRequest {
    /// Slots asked for, in u64: counts near u32::MAX (a hostile or broken client) must meet
    /// EC2's limit error, never wrap, nor panic while the model's lock is held.
    pub(super) fn slots(&self) -> u64 {
        u64::from(self.prefix_count)
            + self.prefixes.len() as u64
            + u64::from(self.ip_count)
            + self.ips.len() as u64
    }
    pub(super) fn wants_prefixes(&self) -> bool {
        self.prefix_count > 0 || !self.prefixes.is_empty()
    }
}

/// The whole mock EC2 state of one account and region.

#[derive(Debug, Clone)]
pub struct Model {
    /// Region name.
    pub region: String,
    /// Account id.
    pub account: String,
    counter: u64,
    /// VPCs by id.
    pub vpcs: BTreeMap<String, Vpc>,
    /// Subnets by id.
    pub subnets: BTreeMap<String, Subnet>,
    /// CIDR reservations by id.
    pub reservations: BTreeMap<String, CidrReservation>,
    /// Instances by id.
    pub instances: BTreeMap<String, Instance>,
    /// ENIs by id.
    pub enis: BTreeMap<String, Eni>,
    /// VPC peering connections by id.
    pub peerings: BTreeMap<String, Peering>,
    /// Route tables by id.
    pub route_tables: BTreeMap<String, RouteTable>,
    /// Customer-managed prefix lists by id.
    pub prefix_lists: BTreeMap<String, PrefixList>,
    /// Transit gateways by id.
    pub transit_gateways: BTreeMap<String, TransitGateway>,
    /// Internet gateways by id.
    pub internet_gateways: BTreeMap<String, InternetGateway>,
    /// Access key id → account id for callers of other accounts than [`Model::account`].
    pub access_keys: BTreeMap<String, String>,
    /// ENIs attached to each instance: kept by [`Model::set_attachment`] (a fleet's calls must
    /// not scan the account).
    by_instance: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Attachment id → ENI, kept the same way.
    by_attachment: BTreeMap<String, String>,
    /// How subnets pick unnamed addresses (new subnets too), with its seed.
    pub address_choice: (super::addr::AddressChoice, u64),
    /// How long a new attachment stays `attaching`, in mock ms.
    pub attach_delay_ms: u64,
}

pub(super) fn not_found(code: &str, what: &str, id: &str) -> ApiError {
    ApiError::client(code, format!("The {what} ID '{id}' does not exist"))
}

/// Checks an id's form (`prefix` and hex): EC2 answers `*.Malformed` otherwise.
pub fn check_id(id: &str, prefix: &str, code: &str) -> Result<(), ApiError> {
    let ok = id.strip_prefix(prefix).is_some_and(|r| {
        !r.is_empty() && r.len() <= 17 && r.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::client(code, format!("Invalid id: \"{id}\"")))
    }
}

impl Model {
    /// How every subnet picks unnamed addresses from now on.
    pub fn set_address_choice(&mut self, choice: super::addr::AddressChoice, seed: u64) {
        for s in self.subnets.values_mut() {
            s.space.set_choice(choice, seed);
        }
        self.address_choice = (choice, seed);
    }

    /// The account of a caller that signed with `access_key` (the default account for a key
    /// not in [`Model::access_keys`]).
    pub fn account_of_key(&self, access_key: Option<&str>) -> &str {
        access_key
            .and_then(|k| self.access_keys.get(k))
            .unwrap_or(&self.account)
    }

    /// An empty account.
    pub fn new(region: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            account: "123456789012".into(),
            counter: 0,
            vpcs: BTreeMap::new(),
            subnets: BTreeMap::new(),
            reservations: BTreeMap::new(),
            instances: BTreeMap::new(),
            enis: BTreeMap::new(),
            peerings: BTreeMap::new(),
            route_tables: BTreeMap::new(),
            prefix_lists: BTreeMap::new(),
            transit_gateways: BTreeMap::new(),
            internet_gateways: BTreeMap::new(),
            access_keys: BTreeMap::new(),
            by_instance: BTreeMap::new(),
            by_attachment: BTreeMap::new(),
            address_choice: Default::default(),
            attach_delay_ms: 0,
        }
    }

    /// A fresh id `prefix` + 17 hex digits, deterministic for a given sequence of calls.
    pub fn next_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        // splitmix64: distinct, scattered-looking ids from a counter.
        let mut z = self.counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // 17 hex digits like EC2's, the first always 0.
        format!("{prefix}{z:017x}")
    }

    pub(super) fn next_mac(&mut self) -> String {
        self.counter += 1;
        let c = self.counter;
        format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            (c >> 32) as u8,
            (c >> 24) as u8,
            (c >> 16) as u8,
            (c >> 8) as u8,
            c as u8
        )
    }

    /// CreateTags.
    pub fn create_tags(&mut self, resources: &[String], tags: &Tags) -> Result<(), ApiError> {
        // Unknown ids of a known kind get that kind's NotFound code, as in EC2; anything else
        // is InvalidID.
        for r in resources {
            if r.starts_with("eni-") {
                self.eni(r)?;
            } else if r.starts_with("i-") {
                self.instance(r)?;
            } else if r.starts_with("subnet-") {
                self.subnet(r)?;
            } else if r.starts_with("rtb-") && !self.route_tables.contains_key(r) {
                return Err(not_found("InvalidRouteTableID.NotFound", "routeTable", r));
            } else if r.starts_with("pcx-") && !self.peerings.contains_key(r) {
                return Err(ApiError::client(
                    "InvalidVpcPeeringConnectionID.NotFound",
                    format!("The vpcPeeringConnection ID '{r}' does not exist"),
                ));
            } else if !["vpc-", "rtb-", "pcx-"].iter().any(|p| r.starts_with(p))
                || (r.starts_with("vpc-") && !self.vpcs.contains_key(r))
            {
                return Err(ApiError::client(
                    "InvalidID",
                    format!("The ID '{r}' is not valid"),
                ));
            }
        }
        for r in resources {
            let target = if let Some(e) = self.enis.get_mut(r) {
                &mut e.tags
            } else if let Some(i) = self.instances.get_mut(r) {
                &mut i.tags
            } else if let Some(s) = self.subnets.get_mut(r) {
                &mut s.tags
            } else if let Some(t) = self.route_tables.get_mut(r) {
                &mut t.tags
            } else if let Some(p) = self.peerings.get_mut(r) {
                &mut p.tags
            } else {
                &mut self.vpcs.get_mut(r).expect("checked").tags
            };
            target.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Ok(())
    }

    /// ENIs attached to `instance`, by device index (from the index, not a scan).
    pub fn enis_of(&self, instance: &str) -> Vec<&Eni> {
        let mut v: Vec<&Eni> = self
            .by_instance
            .get(instance)
            .into_iter()
            .flatten()
            .filter_map(|id| self.enis.get(id))
            .collect();
        v.sort_by_key(|e| {
            e.attachment
                .as_ref()
                .map(|a| (a.card_index, a.device_index))
        });
        v
    }
}

/// Takes what `req` asks for from `space`, all or nothing: on an error, what was already taken
/// is given back (no copy of the subnet is made: a /16 is 64 K addresses).
pub(super) fn take(
    space: &mut AddressSpace,
    req: &IpRequest,
    prefix_res: &[Ipv4Net],
    all_res: &[Ipv4Net],
) -> Result<(Vec<Prefix28>, Vec<Ipv4Addr>), ApiError> {
    let mut prefixes = Vec::new();
    let mut ips = Vec::new();
    let r = (|| {
        for p in &req.prefixes {
            prefixes.push(space.take_prefix(p)?);
        }
        if req.prefix_count > 0 {
            prefixes.extend(space.take_prefixes(req.prefix_count, prefix_res, all_res)?);
        }
        for a in &req.ips {
            ips.push(space.take_ip(*a)?);
        }
        if req.ip_count > 0 {
            ips.extend(space.take_ips(req.ip_count, all_res)?);
        }
        Ok::<(), ApiError>(())
    })();
    if let Err(e) = r {
        for p in prefixes {
            space.put_prefix(p);
        }
        for a in ips {
            space.put_ip(a);
        }
        return Err(e);
    }
    Ok((prefixes, ips))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(itype: &str) -> (Model, String, String) {
        let mut m = Model::new("us-west-2");
        let vpc = m
            .create_vpc("10.0.0.0/16".parse().unwrap(), Tags::new())
            .unwrap();
        let subnet = m
            .create_subnet(&vpc, "10.0.0.0/24".parse().unwrap(), None, Tags::new())
            .unwrap();
        let i = m
            .run_instance(itype, &subnet, vec![], "ami-1".into(), 0)
            .unwrap();
        (m, subnet, i)
    }

    fn prefixes(n: u32) -> IpRequest {
        IpRequest {
            prefix_count: n,
            ..IpRequest::default()
        }
    }

    #[test]
    fn slots_are_shared_by_prefixes_and_secondary_ips() {
        let (mut m, _, i) = setup("m5.large");
        let eni = m.instances[&i].primary_eni.clone();
        m.assign(&eni, prefixes(5)).unwrap();
        m.assign(
            &eni,
            IpRequest {
                ip_count: 4,
                ..IpRequest::default()
            },
        )
        .unwrap();
        let e = m.assign(&eni, prefixes(1)).unwrap_err();
        assert_eq!(e.code, "PrivateIpAddressLimitExceeded");
        assert_eq!(m.eni(&eni).unwrap().prefixes.len(), 5);
    }

    #[test]
    fn attachment_limits_and_device_index() {
        let (mut m, subnet, i) = setup("m5.large");
        let mk = |m: &mut Model| {
            m.create_eni(
                &subnet,
                vec![],
                "x".into(),
                None,
                IpRequest::default(),
                Tags::new(),
            )
            .unwrap()
        };
        let a = mk(&mut m);
        let b = mk(&mut m);
        let c = mk(&mut m);
        m.attach(&a, &i, 1, 0, 0).unwrap();
        let e = m.attach(&b, &i, 1, 0, 0).unwrap_err();
        assert_eq!(e.code, "InvalidParameterValue");
        assert!(e.message.contains("device index '1'"), "{}", e.message);
        assert!(m.eni(&b).unwrap().attachment.is_none(), "no overwrite");
        m.attach(&b, &i, 2, 0, 0).unwrap();
        assert_eq!(
            m.attach(&c, &i, 3, 0, 0).unwrap_err().code,
            "AttachmentLimitExceeded"
        );
        assert_eq!(
            m.delete_eni(&a).unwrap_err().code,
            "InvalidNetworkInterface.InUse"
        );
        let att = m.eni(&a).unwrap().attachment.clone().unwrap().id;
        m.detach(&att).unwrap();
        m.delete_eni(&a).unwrap();
        assert_eq!(
            m.eni(&a).unwrap_err().code,
            "InvalidNetworkInterfaceID.NotFound"
        );
        assert_eq!(
            m.eni("eni-zz").unwrap_err().code,
            "InvalidNetworkInterfaceID.Malformed"
        );
        let primary_att = m
            .eni(&m.instances[&i].primary_eni)
            .unwrap()
            .attachment
            .clone()
            .unwrap()
            .id;
        assert_eq!(
            m.detach(&primary_att).unwrap_err().code,
            "OperationNotPermitted"
        );
    }

    #[test]
    fn xen_instances_refuse_prefixes() {
        let (mut m, _, i) = setup("m4.large");
        let eni = m.instances[&i].primary_eni.clone();
        let e = m.assign(&eni, prefixes(1)).unwrap_err();
        assert!(e.message.contains("Nitro"), "{}", e.message);
        m.assign(
            &eni,
            IpRequest {
                ip_count: 2,
                ..IpRequest::default()
            },
        )
        .unwrap();
    }

    #[test]
    fn terminate_deletes_delete_on_termination_enis_and_keeps_others() {
        let (mut m, subnet, i) = setup("m5.large");
        let before = m.subnets[&subnet].space.available();
        let keep = m
            .create_eni(&subnet, vec![], "k".into(), None, prefixes(1), Tags::new())
            .unwrap();
        let gone = m
            .create_eni(&subnet, vec![], "g".into(), None, prefixes(1), Tags::new())
            .unwrap();
        m.attach(&keep, &i, 1, 0, 0).unwrap();
        let att = m.attach(&gone, &i, 2, 0, 0).unwrap();
        m.set_delete_on_termination(&gone, &att, true).unwrap();
        let primary = m.instances[&i].primary_eni.clone();
        m.terminate(std::slice::from_ref(&i)).unwrap();
        assert!(m.eni(&primary).is_err());
        assert!(m.eni(&gone).is_err());
        assert_eq!(m.eni(&keep).unwrap().status(), "available");
        // The kept ENI still holds its primary address and prefix; the instance's primary
        // address and the deleted ENI's addresses are back.
        assert_eq!(m.subnets[&subnet].space.available(), before + 1 - 17);
    }

    #[test]
    fn failed_create_takes_no_address() {
        let (mut m, subnet, _) = setup("m5.large");
        let before = m.subnets[&subnet].space.available();
        let e = m
            .create_eni(&subnet, vec![], "x".into(), None, prefixes(40), Tags::new())
            .unwrap_err();
        assert_eq!(e.code, "InsufficientCidrBlocks");
        assert_eq!(m.subnets[&subnet].space.available(), before);
    }
}
