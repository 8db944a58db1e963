//! The mock's EC2 state: VPCs, subnets and their addresses, CIDR reservations, instances and
//! ENIs, with EC2's rules for limits, exclusivity and errors. No I/O and no clock: callers pass
//! `now_ms`, the mock's own (scalable) time.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::SystemTime;

use ipnet::Ipv4Net;

use super::Ec2Error;
use super::addr::{AddressSpace, ReservationKind};
use crate::core::Prefix28;
use crate::core::instance_types::{self, InstanceTypeInfo};

/// Tags on a resource.
pub type Tags = BTreeMap<String, String>;

/// Largest Ipv4AddressesPerInterface of any type: the cap for an ENI not attached to anything.
const MAX_ADDRESSES_UNATTACHED: u32 = 50;

/// A VPC.
#[derive(Debug, Clone)]
pub struct Vpc {
    /// vpc-…
    pub id: String,
    /// Its CIDR.
    pub cidr: Ipv4Net,
    /// Its default security group.
    pub default_sg: String,
    /// Tags.
    pub tags: Tags,
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

/// An instance.
#[derive(Debug, Clone)]
pub struct Instance {
    /// i-…
    pub id: String,
    /// Its type's limits.
    pub itype: &'static InstanceTypeInfo,
    /// Subnet of the primary ENI.
    pub subnet: String,
    /// VPC.
    pub vpc: String,
    /// Availability zone.
    pub az: String,
    /// Security groups of the primary ENI.
    pub sgs: Vec<String>,
    /// running or terminated.
    pub running: bool,
    /// The primary ENI (device index 0).
    pub primary_eni: String,
    /// Launch time.
    pub launched: SystemTime,
    /// Image id.
    pub image: String,
    /// Tags.
    pub tags: Tags,
}

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
    fn slots(&self) -> u32 {
        self.prefix_count + self.prefixes.len() as u32 + self.ip_count + self.ips.len() as u32
    }
    fn wants_prefixes(&self) -> bool {
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
    /// How long a new attachment stays `attaching`, in mock ms.
    pub attach_delay_ms: u64,
}

fn not_found(code: &str, what: &str, id: &str) -> Ec2Error {
    Ec2Error::client(code, format!("The {what} ID '{id}' does not exist"))
}

/// Checks an id's form (`prefix` and hex): EC2 answers `*.Malformed` otherwise.
pub fn check_id(id: &str, prefix: &str, code: &str) -> Result<(), Ec2Error> {
    let ok = id.strip_prefix(prefix).is_some_and(|r| {
        !r.is_empty() && r.len() <= 17 && r.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if ok {
        Ok(())
    } else {
        Err(Ec2Error::client(code, format!("Invalid id: \"{id}\"")))
    }
}

impl Model {
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

    fn next_mac(&mut self) -> String {
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

    // ---- VPCs, subnets, reservations ----------------------------------------------------

    /// CreateVpc.
    pub fn create_vpc(&mut self, cidr: Ipv4Net, tags: Tags) -> Result<String, Ec2Error> {
        if !(16..=28).contains(&cidr.prefix_len()) {
            return Err(Ec2Error::client(
                "InvalidVpc.Range",
                format!("The CIDR '{cidr}' is invalid: a VPC is a /16 to a /28."),
            ));
        }
        let id = self.next_id("vpc-");
        let default_sg = self.next_id("sg-");
        self.vpcs.insert(
            id.clone(),
            Vpc {
                id: id.clone(),
                cidr: cidr.trunc(),
                default_sg,
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
    ) -> Result<String, Ec2Error> {
        check_id(vpc, "vpc-", "InvalidVpcID.Malformed")?;
        let v = self
            .vpcs
            .get(vpc)
            .ok_or_else(|| not_found("InvalidVpcID.NotFound", "vpc", vpc))?;
        if !(16..=28).contains(&cidr.prefix_len()) || !v.cidr.contains(&cidr) {
            return Err(Ec2Error::client(
                "InvalidSubnet.Range",
                format!("The CIDR '{cidr}' is invalid for VPC {vpc} ({}).", v.cidr),
            ));
        }
        if let Some(other) = self.subnets.values().find(|s| {
            s.vpc == vpc && (s.space.net().contains(&cidr) || cidr.contains(&s.space.net()))
        }) {
            return Err(Ec2Error::client(
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
        self.subnets.insert(
            id.clone(),
            Subnet {
                id: id.clone(),
                vpc: vpc.to_owned(),
                az,
                space: AddressSpace::new(cidr.trunc()),
                tags,
            },
        );
        Ok(id)
    }

    fn subnet(&self, id: &str) -> Result<&Subnet, Ec2Error> {
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
    ) -> Result<String, Ec2Error> {
        let s = self.subnet(subnet)?;
        if !s.space.contains_net(&cidr) {
            return Err(Ec2Error::client(
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
            return Err(Ec2Error::client(
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
    pub fn delete_reservation(&mut self, id: &str) -> Result<CidrReservation, Ec2Error> {
        self.reservations.remove(id).ok_or_else(|| {
            Ec2Error::client(
                "InvalidSubnetCidrReservationID.NotFound",
                format!("The subnet CIDR reservation ID '{id}' does not exist"),
            )
        })
    }

    fn reservation_ranges(&self, subnet: &str) -> (Vec<Ipv4Net>, Vec<Ipv4Net>) {
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
    pub fn fragment_subnet(&mut self, subnet: &str) -> Result<usize, Ec2Error> {
        self.subnet(subnet)?;
        let s = self.subnets.get_mut(subnet).expect("checked");
        Ok(s.space.fragment().len())
    }

    // ---- instances -----------------------------------------------------------------------

    /// RunInstances for one instance: its primary ENI at device index 0.
    pub fn run_instance(
        &mut self,
        itype: &str,
        subnet: &str,
        sgs: Vec<String>,
        image: String,
        now_ms: u64,
    ) -> Result<String, Ec2Error> {
        let info = instance_types::lookup(itype).ok_or_else(|| {
            Ec2Error::client(
                "InvalidParameterValue",
                format!("Invalid value '{itype}' for InstanceType."),
            )
        })?;
        let (vpc, az) = {
            let s = self.subnet(subnet)?;
            (s.vpc.clone(), s.az.clone())
        };
        let sgs = if sgs.is_empty() {
            vec![self.vpcs[&vpc].default_sg.clone()]
        } else {
            sgs
        };
        let id = self.next_id("i-");
        let eni = self.create_eni(
            subnet,
            sgs.clone(),
            "Primary network interface".into(),
            None,
            IpRequest::default(),
            Tags::new(),
        )?;
        let att = self.next_id("eni-attach-");
        let e = self.enis.get_mut(&eni).expect("just created");
        e.attachment = Some(Attachment {
            id: att,
            instance: id.clone(),
            device_index: 0,
            card_index: 0,
            ready_at_ms: now_ms,
            attach_time: SystemTime::now(),
            delete_on_termination: true,
        });
        self.instances.insert(
            id.clone(),
            Instance {
                id: id.clone(),
                itype: info,
                subnet: subnet.to_owned(),
                vpc,
                az,
                sgs,
                running: true,
                primary_eni: eni,
                launched: SystemTime::now(),
                image,
                tags: Tags::new(),
            },
        );
        Ok(id)
    }

    fn instance(&self, id: &str) -> Result<&Instance, Ec2Error> {
        check_id(id, "i-", "InvalidInstanceID.Malformed")?;
        self.instances
            .get(id)
            .ok_or_else(|| not_found("InvalidInstanceID.NotFound", "instance", id))
    }

    /// TerminateInstances: DeleteOnTermination ENIs are deleted, the others detached.
    pub fn terminate(&mut self, ids: &[String]) -> Result<Vec<(String, bool)>, Ec2Error> {
        for id in ids {
            self.instance(id)?;
        }
        let mut out = Vec::new();
        for id in ids {
            let was_running = self.instances[id].running;
            let attached: Vec<String> = self
                .enis
                .values()
                .filter(|e| e.attachment.as_ref().is_some_and(|a| &a.instance == id))
                .map(|e| e.id.clone())
                .collect();
            for eni in attached {
                let delete = self.enis[&eni]
                    .attachment
                    .as_ref()
                    .is_some_and(|a| a.delete_on_termination);
                self.enis.get_mut(&eni).expect("listed").attachment = None;
                if delete {
                    self.delete_eni(&eni)?;
                }
            }
            self.instances.get_mut(id).expect("checked").running = false;
            out.push((id.clone(), was_running));
        }
        Ok(out)
    }

    // ---- ENIs ----------------------------------------------------------------------------

    /// The ENI `id`, or `InvalidNetworkInterfaceID.*`.
    pub fn eni(&self, id: &str) -> Result<&Eni, Ec2Error> {
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
    ) -> Result<String, Ec2Error> {
        let (vpc, az) = {
            let s = self.subnet(subnet)?;
            (s.vpc.clone(), s.az.clone())
        };
        if 1 + req.slots() > MAX_ADDRESSES_UNATTACHED {
            return Err(Ec2Error::client(
                "PrivateIpAddressLimitExceeded",
                "Number of private addresses will exceed limit.",
            ));
        }
        let sgs = if sgs.is_empty() {
            vec![self.vpcs[&vpc].default_sg.clone()]
        } else {
            sgs
        };
        // Take everything from a copy of the subnet so that a failure leaves nothing taken.
        let (prefix_res, all_res) = self.reservation_ranges(subnet);
        let mut space = self.subnets[subnet].space.clone();
        let primary = match primary_ip {
            Some(a) => space.take_ip(a)?,
            None => space.take_ips(1, &all_res)?[0],
        };
        let (prefixes, secondary) = take(&mut space, &req, &prefix_res, &all_res)?;
        self.subnets.get_mut(subnet).expect("checked").space = space;
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
    ) -> Result<String, Ec2Error> {
        let e = self.eni(eni)?;
        let inst = self.instance(instance)?;
        if !inst.running {
            return Err(Ec2Error::client(
                "IncorrectInstanceState",
                format!("The instance '{instance}' is not in the 'running' state."),
            ));
        }
        if e.attachment.is_some() {
            return Err(Ec2Error::client(
                "InvalidNetworkInterface.InUse",
                format!("Interface: [{eni}] in use."),
            ));
        }
        if e.az != inst.az {
            return Err(Ec2Error::client(
                "InvalidParameterCombination",
                format!(
                    "The network interface {eni} is in {} and the instance {instance} in {}.",
                    e.az, inst.az
                ),
            ));
        }
        let t = inst.itype;
        if card_index >= t.max_cards {
            return Err(Ec2Error::client(
                "InvalidParameterValue",
                format!(
                    "Network card index {card_index} is not valid for {} ({} cards).",
                    t.name, t.max_cards
                ),
            ));
        }
        let attached: Vec<&Attachment> = self
            .enis
            .values()
            .filter_map(|x| x.attachment.as_ref())
            .filter(|a| a.instance == instance)
            .collect();
        if let Some(a) = attached
            .iter()
            .find(|a| a.device_index == device_index && a.card_index == card_index)
        {
            let holder = self
                .enis
                .values()
                .find(|x| x.attachment.as_ref().is_some_and(|y| y.id == a.id))
                .map(|x| x.id.clone())
                .unwrap_or_default();
            return Err(Ec2Error::client(
                "InvalidParameterValue",
                format!(
                    "Instance '{instance}' already has an interface attached at device index '{device_index}' ({holder})."
                ),
            ));
        }
        if attached.len() as u32 >= t.max_enis {
            return Err(Ec2Error::client(
                "AttachmentLimitExceeded",
                format!(
                    "Interface count {} exceeds the limit for {}",
                    attached.len() + 1,
                    t.name
                ),
            ));
        }
        if e.slots_used() > t.ipv4_per_eni {
            return Err(Ec2Error::client(
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
        let ready_at_ms = now_ms + self.attach_delay_ms;
        self.enis.get_mut(eni).expect("checked").attachment = Some(Attachment {
            id: id.clone(),
            instance: instance.to_owned(),
            device_index,
            card_index,
            ready_at_ms,
            attach_time: SystemTime::now(),
            delete_on_termination: false,
        });
        Ok(id)
    }

    fn eni_by_attachment(&self, attachment: &str) -> Result<String, Ec2Error> {
        check_id(attachment, "eni-attach-", "InvalidAttachmentID.Malformed")?;
        self.enis
            .values()
            .find(|e| e.attachment.as_ref().is_some_and(|a| a.id == attachment))
            .map(|e| e.id.clone())
            .ok_or_else(|| {
                Ec2Error::client(
                    "InvalidAttachmentID.NotFound",
                    format!("Interface does not have attachment {attachment}"),
                )
            })
    }

    /// DetachNetworkInterface.
    pub fn detach(&mut self, attachment: &str) -> Result<(), Ec2Error> {
        let eni = self.eni_by_attachment(attachment)?;
        let e = self.enis.get_mut(&eni).expect("found");
        if e.attachment.as_ref().is_some_and(|a| a.device_index == 0) {
            return Err(Ec2Error::client(
                "OperationNotPermitted",
                format!("The network interface at device index 0 ({eni}) cannot be detached."),
            ));
        }
        e.attachment = None;
        Ok(())
    }

    /// DeleteNetworkInterface.
    pub fn delete_eni(&mut self, eni: &str) -> Result<(), Ec2Error> {
        let e = self.eni(eni)?;
        if e.attachment.is_some() {
            return Err(Ec2Error::client(
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
        Ok(())
    }

    /// ModifyNetworkInterfaceAttribute with Attachment.*.
    pub fn set_delete_on_termination(
        &mut self,
        eni: &str,
        attachment: &str,
        value: bool,
    ) -> Result<(), Ec2Error> {
        self.eni(eni)?;
        let holder = self.eni_by_attachment(attachment)?;
        if holder != eni {
            return Err(Ec2Error::client(
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
    ) -> Result<(), Ec2Error> {
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
    ) -> Result<(Vec<Prefix28>, Vec<Ipv4Addr>), Ec2Error> {
        let e = self.eni(eni)?;
        let (limit, itype) = self.slot_limit(e);
        if req.wants_prefixes()
            && let Some(t) = itype
            && !t.supports_prefixes()
        {
            return Err(xen_refusal(t));
        }
        if e.slots_used() + req.slots() > limit {
            return Err(Ec2Error::client(
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
        let mut space = self.subnets[&subnet].space.clone();
        let (prefixes, ips) = take(&mut space, &req, &prefix_res, &all_res)?;
        self.subnets.get_mut(&subnet).expect("exists").space = space;
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
    ) -> Result<(), Ec2Error> {
        let e = self.eni(eni)?;
        let mut ps = Vec::new();
        for p in prefixes {
            let parsed: Option<Prefix28> = p.parse().ok();
            match parsed.filter(|q| e.prefixes.contains(q)) {
                Some(q) => ps.push(q),
                None => {
                    return Err(Ec2Error::client(
                        "InvalidParameterValue",
                        format!("The prefix {p} is not assigned to interface {eni}."),
                    ));
                }
            }
        }
        for a in ips {
            if *a == e.primary_ip {
                return Err(Ec2Error::client(
                    "InvalidParameterValue",
                    format!("The primary address {a} of {eni} cannot be unassigned."),
                ));
            }
            if !e.secondary.contains(a) {
                return Err(Ec2Error::client(
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

    /// CreateTags.
    pub fn create_tags(&mut self, resources: &[String], tags: &Tags) -> Result<(), Ec2Error> {
        // Unknown ids of a known kind get that kind's NotFound code, as in EC2; anything else
        // is InvalidID.
        for r in resources {
            if r.starts_with("eni-") {
                self.eni(r)?;
            } else if r.starts_with("i-") {
                self.instance(r)?;
            } else if r.starts_with("subnet-") {
                self.subnet(r)?;
            } else if !(r.starts_with("vpc-") && self.vpcs.contains_key(r)) {
                return Err(Ec2Error::client(
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
            } else {
                &mut self.vpcs.get_mut(r).expect("checked").tags
            };
            target.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Ok(())
    }

    /// ENIs attached to `instance`, by device index.
    pub fn enis_of(&self, instance: &str) -> Vec<&Eni> {
        let mut v: Vec<&Eni> = self
            .enis
            .values()
            .filter(|e| {
                e.attachment
                    .as_ref()
                    .is_some_and(|a| a.instance == instance)
            })
            .collect();
        v.sort_by_key(|e| {
            e.attachment
                .as_ref()
                .map(|a| (a.card_index, a.device_index))
        });
        v
    }
}

fn xen_refusal(t: &InstanceTypeInfo) -> Ec2Error {
    Ec2Error::client(
        "InvalidParameterValue",
        format!(
            "Prefix delegation is not supported for instance type {} (hypervisor {}): it needs a Nitro instance.",
            t.name, t.hypervisor
        ),
    )
}

fn take(
    space: &mut AddressSpace,
    req: &IpRequest,
    prefix_res: &[Ipv4Net],
    all_res: &[Ipv4Net],
) -> Result<(Vec<Prefix28>, Vec<Ipv4Addr>), Ec2Error> {
    let mut prefixes = Vec::new();
    for p in &req.prefixes {
        prefixes.push(space.take_prefix(p)?);
    }
    if req.prefix_count > 0 {
        prefixes.extend(space.take_prefixes(req.prefix_count, prefix_res, all_res)?);
    }
    let mut ips = Vec::new();
    for a in &req.ips {
        ips.push(space.take_ip(*a)?);
    }
    if req.ip_count > 0 {
        ips.extend(space.take_ips(req.ip_count, all_res)?);
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
