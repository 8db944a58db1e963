//! ENIs: creation with addresses, attachment (limits, device indexes, cards), detach, delete,
//! attributes, and the assignment of prefixes and secondary addresses.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use super::{IpRequest, Model, Tags, check_id, not_found, take};
use crate::core::instance_types::InstanceTypeInfo;
use crate::core::{Prefix28, Prefix80};
use crate::mock::ApiError;

/// Largest Ipv4AddressesPerInterface of any type: the cap for an ENI not attached to anything.
const MAX_ADDRESSES_UNATTACHED: u32 = 50;

/// An ENI's attachment.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// eni-attach-…
    pub id: String,
    /// The instance.
    pub instance: String,
    /// Device index.
    pub device_index: u32,
    /// Network card index.
    pub card_index: u32,
    /// Mock time of the attach.
    pub attached_at_ms: u64,
    /// Mock time at which `attaching` becomes `attached`.
    pub ready_at_ms: u64,
    /// Wall-clock attach time.
    pub attach_time: SystemTime,
    /// Deleted with the instance.
    pub delete_on_termination: bool,
}

/// An ENI.
#[derive(Debug, Clone)]
pub struct Eni {
    /// eni-…
    pub id: String,
    /// Subnet.
    pub subnet: String,
    /// VPC.
    pub vpc: String,
    /// Availability zone.
    pub az: String,
    /// Description.
    pub description: String,
    /// Security groups.
    pub sgs: Vec<String>,
    /// MAC address.
    pub mac: String,
    /// Primary private address.
    pub primary_ip: Ipv4Addr,
    /// Secondary addresses.
    pub secondary: Vec<Ipv4Addr>,
    /// Delegated prefixes.
    pub prefixes: Vec<Prefix28>,
    /// Delegated IPv6 /80 prefixes.
    pub ipv6_prefixes: Vec<Prefix80>,
    /// IPv6 addresses.
    pub ipv6_addresses: Vec<Ipv6Addr>,
    /// Tags.
    pub tags: Tags,
    /// The attachment, when attached.
    pub attachment: Option<Attachment>,
    /// Source/destination check.
    pub source_dest_check: bool,
}

impl Eni {
    /// `in-use` when attached, else `available`.
    pub fn status(&self) -> &'static str {
        if self.attachment.is_some() {
            "in-use"
        } else {
            "available"
        }
    }

    fn slots_used(&self) -> u32 {
        1 + self.secondary.len() as u32 + self.prefixes.len() as u32
    }
}

impl Model {
    // ---- ENIs ----------------------------------------------------------------------------

    /// The ENI `id`, or `InvalidNetworkInterfaceID.*`.
    pub fn eni(&self, id: &str) -> Result<&Eni, ApiError> {
        check_id(id, "eni-", "InvalidNetworkInterfaceID.Malformed")?;
        self.enis
            .get(id)
            .ok_or_else(|| not_found("InvalidNetworkInterfaceID.NotFound", "networkInterface", id))
    }

    fn slot_limit(&self, eni: &Eni) -> (u32, Option<&'static InstanceTypeInfo>) {
        match &eni.attachment {
            Some(a) => {
                let t = self.instances[&a.instance].itype;
                (t.ipv4_per_eni, Some(t))
            }
            None => (MAX_ADDRESSES_UNATTACHED, None),
        }
    }

    /// CreateNetworkInterface.
    pub fn create_eni(
        &mut self,
        subnet: &str,
        sgs: Vec<String>,
        description: String,
        primary_ip: Option<Ipv4Addr>,
        req: IpRequest,
        tags: Tags,
    ) -> Result<String, ApiError> {
        let (vpc, az) = {
            let s = self.subnet(subnet)?;
            (s.vpc.clone(), s.az.clone())
        };
        if 1 + req.slots() > u64::from(MAX_ADDRESSES_UNATTACHED) {
            return Err(ApiError::client(
                "PrivateIpAddressLimitExceeded",
                "Number of private addresses will exceed limit.",
            ));
        }
        let sgs = if sgs.is_empty() {
            vec![self.vpcs[&vpc].default_sg.clone()]
        } else {
            sgs
        };
        // All or nothing: a failure gives back what was taken.
        let (prefix_res, all_res) = self.reservation_ranges(subnet);
        let space = &mut self.subnets.get_mut(subnet).expect("checked").space;
        let primary = match primary_ip {
            Some(a) => space.take_ip(a)?,
            None => space.take_ips(1, &all_res)?[0],
        };
        let (prefixes, secondary) = match take(space, &req, &prefix_res, &all_res) {
            Ok(t) => t,
            Err(e) => {
                space.put_ip(primary);
                return Err(e);
            }
        };
        let id = self.next_id("eni-");
        let mac = self.next_mac();
        self.enis.insert(
            id.clone(),
            Eni {
                id: id.clone(),
                subnet: subnet.to_owned(),
                vpc,
                az,
                description,
                sgs,
                mac,
                primary_ip: primary,
                secondary,
                prefixes,
                ipv6_prefixes: Vec::new(),
                ipv6_addresses: Vec::new(),
                tags,
                attachment: None,
                source_dest_check: true,
            },
        );
        Ok(id)
    }

    /// AttachNetworkInterface: returns the attachment id.
    pub fn attach(
        &mut self,
        eni: &str,
        instance: &str,
        device_index: u32,
        card_index: u32,
        now_ms: u64,
    ) -> Result<String, ApiError> {
        let e = self.eni(eni)?;
        let inst = self.instance(instance)?;
        if !inst.running {
            return Err(ApiError::client(
                "IncorrectInstanceState",
                format!("The instance '{instance}' is not in the 'running' state."),
            ));
        }
        if e.attachment.is_some() {
            return Err(ApiError::client(
                "InvalidNetworkInterface.InUse",
                format!("Interface: [{eni}] in use."),
            ));
        }
        if e.az != inst.az {
            return Err(ApiError::client(
                "InvalidParameterCombination",
                format!(
                    "The network interface {eni} is in {} and the instance {instance} in {}.",
                    e.az, inst.az
                ),
            ));
        }
        let t = inst.itype;
        if card_index >= t.max_cards {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!(
                    "Network card index {card_index} is not valid for {} ({} cards).",
                    t.name, t.max_cards
                ),
            ));
        }
        let attached: Vec<&Eni> = self.enis_of(instance);
        if let Some(holder) = attached.iter().find(|x| {
            x.attachment
                .as_ref()
                .is_some_and(|a| a.device_index == device_index && a.card_index == card_index)
        }) {
            let holder = holder.id.clone();
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!(
                    "Instance '{instance}' already has an interface attached at device index '{device_index}' ({holder})."
                ),
            ));
        }
        if attached.len() as u32 >= t.max_enis {
            return Err(ApiError::client(
                "AttachmentLimitExceeded",
                format!(
                    "Interface count {} exceeds the limit for {}",
                    attached.len() + 1,
                    t.name
                ),
            ));
        }
        if e.slots_used() > t.ipv4_per_eni {
            return Err(ApiError::client(
                "PrivateIpAddressLimitExceeded",
                format!(
                    "Number of private addresses on {eni} ({}) exceeds the limit for {} ({}).",
                    e.slots_used(),
                    t.name,
                    t.ipv4_per_eni
                ),
            ));
        }
        if !e.prefixes.is_empty() && !t.supports_prefixes() {
            return Err(xen_refusal(t));
        }
        let id = self.next_id("eni-attach-");
        let ready_at_ms = now_ms.saturating_add(self.attach_delay_ms);
        self.set_attachment(
            eni,
            Some(Attachment {
                id: id.clone(),
                instance: instance.to_owned(),
                device_index,
                card_index,
                attached_at_ms: now_ms,
                ready_at_ms,
                attach_time: SystemTime::now(),
                delete_on_termination: false,
            }),
        );
        Ok(id)
    }

    /// Sets (or clears) an ENI's attachment, keeping the indexes by instance and by
    /// attachment id.
    pub(super) fn set_attachment(&mut self, eni: &str, a: Option<Attachment>) {
        let e = self.enis.get_mut(eni).expect("a known ENI");
        if let Some(old) = e.attachment.take() {
            self.by_attachment.remove(&old.id);
            if let Some(set) = self.by_instance.get_mut(&old.instance) {
                set.remove(eni);
                if set.is_empty() {
                    self.by_instance.remove(&old.instance);
                }
            }
        }
        if let Some(new) = &a {
            self.by_attachment.insert(new.id.clone(), eni.to_owned());
            self.by_instance
                .entry(new.instance.clone())
                .or_default()
                .insert(eni.to_owned());
        }
        e.attachment = a;
    }

    fn eni_by_attachment(&self, attachment: &str) -> Result<String, ApiError> {
        check_id(attachment, "eni-attach-", "InvalidAttachmentID.Malformed")?;
        self.by_attachment.get(attachment).cloned().ok_or_else(|| {
            ApiError::client(
                "InvalidAttachmentID.NotFound",
                format!("Interface does not have attachment {attachment}"),
            )
        })
    }

    /// DetachNetworkInterface.
    pub fn detach(&mut self, attachment: &str) -> Result<(), ApiError> {
        let eni = self.eni_by_attachment(attachment)?;
        let e = &self.enis[&eni];
        if e.attachment.as_ref().is_some_and(|a| a.device_index == 0) {
            return Err(ApiError::client(
                "OperationNotPermitted",
                format!("The network interface at device index 0 ({eni}) cannot be detached."),
            ));
        }
        self.set_attachment(&eni, None);
        Ok(())
    }

    /// DeleteNetworkInterface.
    pub fn delete_eni(&mut self, eni: &str) -> Result<(), ApiError> {
        let e = self.eni(eni)?;
        if e.attachment.is_some() {
            return Err(ApiError::client(
                "InvalidNetworkInterface.InUse",
                format!("The network interface '{eni}' is currently in use."),
            ));
        }
        let e = self.enis.remove(eni).expect("checked");
        let s = self
            .subnets
            .get_mut(&e.subnet)
            .expect("an ENI's subnet exists");
        s.space.put_ip(e.primary_ip);
        for a in e.secondary {
            s.space.put_ip(a);
        }
        for p in e.prefixes {
            s.space.put_prefix(p);
        }
        if let Some((_, six)) = &mut s.ipv6 {
            for p in e.ipv6_prefixes {
                six.put_prefix(p);
            }
            for a in e.ipv6_addresses {
                six.put_address(a);
            }
        }
        Ok(())
    }

    /// ModifyNetworkInterfaceAttribute with Attachment.*.
    pub fn set_delete_on_termination(
        &mut self,
        eni: &str,
        attachment: &str,
        value: bool,
    ) -> Result<(), ApiError> {
        self.eni(eni)?;
        let holder = self.eni_by_attachment(attachment)?;
        if holder != eni {
            return Err(ApiError::client(
                "InvalidAttachmentID.NotFound",
                format!("Interface {eni} does not have attachment {attachment}"),
            ));
        }
        let a = self
            .enis
            .get_mut(eni)
            .and_then(|e| e.attachment.as_mut())
            .expect("found above");
        a.delete_on_termination = value;
        Ok(())
    }

    /// ModifyNetworkInterfaceAttribute with Description / SourceDestCheck.
    pub fn modify_eni(
        &mut self,
        eni: &str,
        description: Option<String>,
        source_dest_check: Option<bool>,
    ) -> Result<(), ApiError> {
        self.eni(eni)?;
        let e = self.enis.get_mut(eni).expect("checked");
        if let Some(d) = description {
            e.description = d;
        }
        if let Some(s) = source_dest_check {
            e.source_dest_check = s;
        }
        Ok(())
    }

    /// AssignPrivateIpAddresses: returns what was assigned.
    pub fn assign(
        &mut self,
        eni: &str,
        req: IpRequest,
    ) -> Result<(Vec<Prefix28>, Vec<Ipv4Addr>), ApiError> {
        let e = self.eni(eni)?;
        let (limit, itype) = self.slot_limit(e);
        if req.wants_prefixes()
            && let Some(t) = itype
            && !t.supports_prefixes()
        {
            return Err(xen_refusal(t));
        }
        if u64::from(e.slots_used()) + req.slots() > u64::from(limit) {
            return Err(ApiError::client(
                "PrivateIpAddressLimitExceeded",
                format!(
                    "Number of private addresses will exceed limit: {eni} has {} of {limit}, {} asked.",
                    e.slots_used(),
                    req.slots()
                ),
            ));
        }
        let subnet = e.subnet.clone();
        let (prefix_res, all_res) = self.reservation_ranges(&subnet);
        let space = &mut self.subnets.get_mut(&subnet).expect("exists").space;
        let (prefixes, ips) = take(space, &req, &prefix_res, &all_res)?;
        let e = self.enis.get_mut(eni).expect("checked");
        e.prefixes.extend(prefixes.iter().copied());
        e.secondary.extend(ips.iter().copied());
        Ok((prefixes, ips))
    }

    /// UnassignPrivateIpAddresses.
    pub fn unassign(
        &mut self,
        eni: &str,
        prefixes: &[String],
        ips: &[Ipv4Addr],
    ) -> Result<(), ApiError> {
        let e = self.eni(eni)?;
        let mut ps = Vec::new();
        for p in prefixes {
            let parsed: Option<Prefix28> = p.parse().ok();
            match parsed.filter(|q| e.prefixes.contains(q)) {
                Some(q) => ps.push(q),
                None => {
                    return Err(ApiError::client(
                        "InvalidParameterValue",
                        format!("The prefix {p} is not assigned to interface {eni}."),
                    ));
                }
            }
        }
        for a in ips {
            if *a == e.primary_ip {
                return Err(ApiError::client(
                    "InvalidParameterValue",
                    format!("The primary address {a} of {eni} cannot be unassigned."),
                ));
            }
            if !e.secondary.contains(a) {
                return Err(ApiError::client(
                    "InvalidParameterValue",
                    format!(
                        "Some of the specified addresses are not assigned to interface {eni}: {a}"
                    ),
                ));
            }
        }
        let subnet = e.subnet.clone();
        let e = self.enis.get_mut(eni).expect("checked");
        e.prefixes.retain(|p| !ps.contains(p));
        e.secondary.retain(|a| !ips.contains(a));
        let s = self.subnets.get_mut(&subnet).expect("exists");
        for p in ps {
            s.space.put_prefix(p);
        }
        for a in ips {
            s.space.put_ip(*a);
        }
        Ok(())
    }
}

/// IPv6 addresses asked for in AssignIpv6Addresses; the action layer has checked that a count
/// and a list of the same kind are not both given.
#[derive(Debug, Clone, Default)]
pub struct Ipv6Request {
    /// Ipv6PrefixCount.
    pub prefix_count: u32,
    /// Ipv6Prefix.N.
    pub prefixes: Vec<String>,
    /// Ipv6AddressCount.
    pub address_count: u32,
    /// Ipv6Addresses.N.
    pub addresses: Vec<Ipv6Addr>,
}

impl Ipv6Request {
    fn slots(&self) -> u64 {
        u64::from(self.prefix_count)
            + self.prefixes.len() as u64
            + u64::from(self.address_count)
            + self.addresses.len() as u64
    }
}

impl Model {
    /// AssignIpv6Addresses: returns what was assigned. A /80 counts as one address against the
    /// instance type's IPv6 addresses per interface, as an IPv4 /28 does.
    pub fn assign_ipv6(
        &mut self,
        eni: &str,
        req: Ipv6Request,
    ) -> Result<(Vec<Prefix80>, Vec<Ipv6Addr>), ApiError> {
        let e = self.eni(eni)?;
        let itype = e
            .attachment
            .as_ref()
            .map(|a| self.instances[&a.instance].itype);
        let wants_prefixes = req.prefix_count > 0 || !req.prefixes.is_empty();
        if wants_prefixes
            && let Some(t) = itype
            && !t.supports_prefixes()
        {
            return Err(xen_refusal(t));
        }
        let limit = itype.map_or(MAX_ADDRESSES_UNATTACHED, |t| t.ipv6_per_eni);
        let used = (e.ipv6_prefixes.len() + e.ipv6_addresses.len()) as u64;
        if used + req.slots() > u64::from(limit) {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!(
                    "Number of IPv6 addresses on {eni} would exceed the limit: {used} of {limit}, {} asked.",
                    req.slots()
                ),
            ));
        }
        let subnet = e.subnet.clone();
        let Some((_, space)) = &self.subnets[&subnet].ipv6 else {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!("Subnet {subnet} of {eni} has no IPv6 CIDR block: associate one first."),
            ));
        };
        let mut space = space.clone();
        let mut prefixes = Vec::new();
        for p in &req.prefixes {
            prefixes.push(space.take_prefix(p)?);
        }
        if req.prefix_count > 0 {
            prefixes.extend(space.take_prefixes(req.prefix_count)?);
        }
        let mut addresses = Vec::new();
        for a in &req.addresses {
            addresses.push(space.take_address(*a)?);
        }
        if req.address_count > 0 {
            addresses.extend(space.take_addresses(req.address_count)?);
        }
        self.subnets
            .get_mut(&subnet)
            .expect("exists")
            .ipv6
            .as_mut()
            .expect("checked")
            .1 = space;
        let e = self.enis.get_mut(eni).expect("checked");
        e.ipv6_prefixes.extend(prefixes.iter().copied());
        e.ipv6_addresses.extend(addresses.iter().copied());
        Ok((prefixes, addresses))
    }

    /// UnassignIpv6Addresses: returns what was unassigned.
    pub fn unassign_ipv6(
        &mut self,
        eni: &str,
        prefixes: &[String],
        addresses: &[Ipv6Addr],
    ) -> Result<(Vec<Prefix80>, Vec<Ipv6Addr>), ApiError> {
        let e = self.eni(eni)?;
        let mut ps = Vec::new();
        for p in prefixes {
            match p
                .parse::<Prefix80>()
                .ok()
                .filter(|q| e.ipv6_prefixes.contains(q))
            {
                Some(q) => ps.push(q),
                None => {
                    return Err(ApiError::client(
                        "InvalidParameterValue",
                        format!("The IPv6 prefix {p} is not assigned to interface {eni}."),
                    ));
                }
            }
        }
        if let Some(a) = addresses.iter().find(|a| !e.ipv6_addresses.contains(a)) {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!("The IPv6 address {a} is not assigned to interface {eni}."),
            ));
        }
        let subnet = e.subnet.clone();
        let e = self.enis.get_mut(eni).expect("checked");
        e.ipv6_prefixes.retain(|p| !ps.contains(p));
        e.ipv6_addresses.retain(|a| !addresses.contains(a));
        if let Some((_, space)) = &mut self.subnets.get_mut(&subnet).expect("exists").ipv6 {
            for p in &ps {
                space.put_prefix(*p);
            }
            for a in addresses {
                space.put_address(*a);
            }
        }
        Ok((ps, addresses.to_vec()))
    }
}

fn xen_refusal(t: &InstanceTypeInfo) -> ApiError {
    ApiError::client(
        "InvalidParameterValue",
        format!(
            "Prefix delegation is not supported for instance type {} (hypervisor {}): it needs a Nitro instance.",
            t.name, t.hypervisor
        ),
    )
}
