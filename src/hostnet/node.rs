//! The node's side, as the agent keeps it: every ENI's link found by MAC and configured (MTU,
//! up, its primary address, its routing table with the subnet's gateway, `from ENI-IP lookup
//! TABLE` at 32765), the policy rules of every allocation (512, 1536; IPv6 ones too), the host
//! routes of pods and of their IPv4 egress interfaces, the mark rule (1024), the
//! external service ranges (1535), and the SNAT table. [`Node::reconcile`] compares all of it
//! with what the datastore says and repairs what differs — continuously, not only at start (the
//! VPC CNI's #1856) — and names each repair.
//!
//! Only what prefixd owns is touched: rules at its five priorities, the tables of the ENIs it
//! manages (2–100 and 10100–10999), its own nft table, the pods' host ends.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use super::config::{HostConfig, gateway_of, table_of};
use super::netlink::{Link, Mac, Netlink, NetlinkError, Route, Rule, TABLE_MAIN, mac_text};
use super::nft::{self, NftError};
use super::pod::{self, PRIO_FROM_POD, PRIO_TO_POD, PodError};
use super::snat::{self, SnatInputs};
use super::sysctl::{self, SysctlError};

/// Rule priority of `fwmark MARK/MARK lookup main`.
pub const PRIO_MARK: u32 = 1024;
/// Rule priority of `to EXTERNAL-SERVICE-CIDR lookup main`.
pub const PRIO_EXTERNAL: u32 = 1535;
/// Rule priority of `from ENI-IP lookup TABLE`.
pub const PRIO_ENI: u32 = 32765;
const OUR_PRIORITIES: [u32; 5] = [
    PRIO_TO_POD,
    PRIO_MARK,
    PRIO_EXTERNAL,
    PRIO_FROM_POD,
    PRIO_ENI,
];

/// Programming the node failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The kernel refused.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// nftables failed.
    #[error(transparent)]
    Nft(#[from] NftError),
    /// A sysctl could not be set.
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    /// A pod rule could not be changed.
    #[error(transparent)]
    Pod(#[from] PodError),
    /// The primary ENI's link is not there.
    #[error("no link has the primary ENI {eni}'s MAC {mac}")]
    NoPrimaryLink {
        /// The ENI.
        eni: String,
        /// Its MAC.
        mac: String,
    },
}

/// An ENI as the node's data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniNet {
    /// Its id.
    pub id: String,
    /// Its MAC.
    pub mac: Mac,
    /// Its primary address.
    pub ip: Ipv4Addr,
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// Its device index.
    pub device_index: u32,
    /// Its network card.
    pub card: u32,
    /// The instance's primary ENI.
    pub primary: bool,
}

impl EniNet {
    /// Its routing table.
    pub fn table(&self) -> u32 {
        table_of(self.primary, self.device_index, self.card)
    }
}

/// What the node should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The primary ENI.
    pub primary: EniNet,
    /// The other ENIs whose links are configured.
    pub enis: Vec<EniNet>,
    /// Every allocated address (IPv4 or IPv6): its ENI's table, and its host end's name when
    /// known (its /32 or /128 route is restored too).
    pub pods: Vec<(IpAddr, u32, Option<String>)>,
    /// IPv6-only pods' IPv4 egress addresses and their host ends (their /32 routes are
    /// restored).
    pub egress: Vec<(Ipv4Addr, String)>,
    /// The VPC's CIDRs.
    pub vpc_cidrs: Vec<Ipv4Net>,
}

/// One repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// `rule`, `route`, `nft`, `link`.
    pub object: &'static str,
    /// `restored` or `removed`.
    pub action: &'static str,
    /// Which.
    pub what: String,
}

fn host32(a: Ipv4Addr) -> IpNet {
    IpNet::V4(Ipv4Net::new(a, 32).expect("32 is a valid length"))
}

fn ours_table(t: u32) -> bool {
    (2..=100).contains(&t) || (10_100..=10_999).contains(&t)
}

/// What the DaemonSet's privileged init container sets, which the agent's unprivileged
/// container cannot (its /proc/sys is read-only): forwarding, and loose reverse-path filtering
/// on the link of the main table's default route (the primary ENI's). With `ipv6`, IPv6
/// forwarding too, and `accept_ra=2` on that link so that the node keeps the default route the
/// VPC router advertises (a forwarding interface ignores advertisements otherwise). Returns each
/// key and whether it was written.
pub fn node_sysctls(ipv6: bool) -> Result<Vec<(String, bool)>, HostError> {
    let mut nl = Netlink::open()?;
    let default = IpNet::V4(Ipv4Net::default());
    let oif = nl
        .routes(false)?
        .into_iter()
        .find(|r| r.table == TABLE_MAIN && r.dst == default)
        .and_then(|r| r.oif);
    let mut done = Vec::new();
    done.push((
        "net.ipv4.ip_forward".to_owned(),
        sysctl::ensure("net.ipv4.ip_forward", "1")?,
    ));
    let link = match oif {
        Some(index) => nl.links()?.into_iter().find(|l| l.index == index),
        None => None,
    };
    if let Some(l) = &link {
        let key = format!("net.ipv4.conf.{}.rp_filter", l.name);
        let wrote = sysctl::ensure(&key, "2")?;
        done.push((key, wrote));
    }
    if ipv6 {
        for (key, value) in ipv6_sysctls(link.as_ref().map(|l| l.name.as_str())) {
            let wrote = sysctl::ensure(&key, value)?;
            done.push((key, wrote));
        }
    }
    Ok(done)
}

/// IPv6 forwarding, and `accept_ra=2` on the primary ENI's link when it is known. The order
/// matters: accept_ra=2 first, so that the router's advertisements are never ignored.
fn ipv6_sysctls(primary_link: Option<&str>) -> Vec<(String, &'static str)> {
    let mut v: Vec<(String, &'static str)> = primary_link
        .map(|l| (format!("net.ipv6.conf.{l}.accept_ra"), "2"))
        .into_iter()
        .collect();
    v.push(("net.ipv6.conf.all.forwarding".to_owned(), "1"));
    v
}

/// The node's network, through a netlink socket in the agent's namespace.
pub struct Node {
    cfg: HostConfig,
    nl: Netlink,
    /// The table as the kernel listed it right after the last apply, and the script applied.
    nft_listing: Option<String>,
    last_script: Option<String>,
}

impl Node {
    /// The node's network with these settings.
    pub fn open(cfg: HostConfig) -> Result<Self, HostError> {
        Ok(Self {
            cfg,
            nl: Netlink::open()?,
            nft_listing: None,
            last_script: None,
        })
    }

    /// The link with `mac`, if it has appeared.
    pub fn link_of(&mut self, mac: &Mac) -> Result<Option<Link>, HostError> {
        Ok(self.nl.link_by_mac(mac)?)
    }

    /// The primary ENI's link: MTU, forwarding on, and loose reverse-path filtering when
    /// NodePort support is on (a NodePort connection DNATed to a pod on another ENI fails strict
    /// checking). Returns the link's name.
    pub fn setup_primary(&mut self, eni: &EniNet) -> Result<String, HostError> {
        let l = self
            .link_of(&eni.mac)?
            .ok_or_else(|| HostError::NoPrimaryLink {
                eni: eni.id.clone(),
                mac: mac_text(&eni.mac),
            })?;
        if l.mtu != self.cfg.eni_mtu {
            self.nl.set_mtu(l.index, self.cfg.eni_mtu)?;
        }
        sysctl::ensure("net.ipv4.ip_forward", "1")?;
        if self.cfg.node_port_support {
            sysctl::ensure(&format!("net.ipv4.conf.{}.rp_filter", l.name), "2")?;
        }
        if self.cfg.families.ipv6 {
            for (key, value) in ipv6_sysctls(Some(&l.name)) {
                sysctl::ensure(&key, value)?;
            }
        }
        Ok(l.name)
    }

    /// A secondary ENI's link: MTU, up, its primary address with the subnet's mask and no subnet
    /// route in main, its table (the gateway on the link, the default route through it) and
    /// `from ENI-IP lookup TABLE`. `Ok(None)` while the link has not appeared.
    pub fn setup_eni(&mut self, eni: &EniNet) -> Result<Option<Link>, HostError> {
        let Some(l) = self.link_of(&eni.mac)? else {
            return Ok(None);
        };
        if l.mtu != self.cfg.eni_mtu {
            self.nl.set_mtu(l.index, self.cfg.eni_mtu)?;
        }
        if !l.up {
            self.nl.set_up(l.index, true)?;
        }
        let net = Ipv4Net::new(eni.ip, eni.subnet.prefix_len()).expect("a subnet's length");
        self.nl.add_address(l.index, IpNet::V4(net), true)?;
        // A subnet route the kernel or someone else put in main would send other ENIs' traffic
        // through this link.
        for r in self.nl.routes(false)? {
            if r.table == TABLE_MAIN && r.oif == Some(l.index) && r.dst == IpNet::V4(eni.subnet) {
                let _ = self.nl.del_route(&r);
            }
        }
        for r in Self::eni_routes(eni, l.index) {
            self.nl.add_route(&r, true)?;
        }
        self.nl.add_rule(&Self::eni_rule(eni))?;
        Ok(Some(l))
    }

    fn eni_routes(eni: &EniNet, index: u32) -> [Route; 2] {
        let gw = gateway_of(eni.subnet);
        [
            Route::to(host32(gw), eni.table()).dev(index).link_scope(),
            Route::to(IpNet::V4(Ipv4Net::default()), eni.table())
                .via(IpAddr::V4(gw))
                .dev(index),
        ]
    }

    fn eni_rule(eni: &EniNet) -> Rule {
        Rule::lookup(PRIO_ENI, eni.table()).from(host32(eni.ip))
    }

    /// Removes a secondary ENI's table and rule (before it is detached).
    pub fn remove_eni(&mut self, eni: &EniNet) -> Result<(), HostError> {
        let table = eni.table();
        for r in self.nl.routes(false)? {
            if r.table == table {
                match self.nl.del_route(&r) {
                    Err(e) if !e.missing() => return Err(e.into()),
                    _ => {}
                }
            }
        }
        match self.nl.del_rule(&Self::eni_rule(eni)) {
            Err(e) if !e.missing() => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn wanted_rules(&self, want: &Desired) -> Vec<Rule> {
        let mut rules =
            vec![Rule::lookup(PRIO_MARK, TABLE_MAIN).fwmark(self.cfg.connmark, self.cfg.connmark)];
        for c in &self.cfg.external_service_cidrs {
            rules.push(Rule::lookup(PRIO_EXTERNAL, TABLE_MAIN).to(IpNet::V4(*c)));
        }
        for e in &want.enis {
            rules.push(Self::eni_rule(e));
        }
        for (a, table, _) in &want.pods {
            rules.extend(pod::pod_rules(*a, *table));
        }
        rules
    }

    /// Brings the node to `want`: what is missing comes back, what is stale goes. Returns what
    /// it repaired (nothing when all was in place).
    pub fn reconcile(&mut self, want: &Desired) -> Result<Vec<Repair>, HostError> {
        let mut repairs = Vec::new();
        let primary_link = self.setup_primary(&want.primary)?;
        // Rules.
        let wanted = self.wanted_rules(want);
        let v6_pods = want.pods.iter().any(|(a, _, _)| a.is_ipv6());
        let mut have = self.nl.rules(false)?;
        // IPv6 rules are read always: a node that had IPv6 pods and has none now loses them.
        have.extend(self.nl.rules(true)?);
        let key = |r: &Rule| (r.priority, r.from, r.to, r.fwmark, r.table);
        let have_keys: BTreeSet<_> = have.iter().map(key).collect();
        let want_keys: BTreeSet<_> = wanted.iter().map(key).collect();
        for r in &wanted {
            if !have_keys.contains(&key(r)) {
                self.nl.add_rule(r)?;
                repairs.push(Repair {
                    object: "rule",
                    action: "restored",
                    what: format!("{r:?}"),
                });
            }
        }
        for r in &have {
            if OUR_PRIORITIES.contains(&r.priority) && !want_keys.contains(&key(r)) {
                match self.nl.del_rule(r) {
                    Err(e) if !e.missing() => return Err(e.into()),
                    _ => {}
                }
                repairs.push(Repair {
                    object: "rule",
                    action: "removed",
                    what: format!("{r:?}"),
                });
            }
        }
        // ENI tables.
        let routes = self.nl.routes(false)?;
        let mut tables = BTreeSet::new();
        for e in &want.enis {
            tables.insert(e.table());
            let Some(l) = self.link_of(&e.mac)? else {
                continue;
            };
            for r in Self::eni_routes(e, l.index) {
                let present = routes.iter().any(|x| {
                    x.table == r.table && x.dst == r.dst && x.gateway == r.gateway && x.oif == r.oif
                });
                if !present {
                    self.nl.add_route(&r, true)?;
                    repairs.push(Repair {
                        object: "route",
                        action: "restored",
                        what: format!("{} table {}", r.dst, r.table),
                    });
                }
            }
        }
        for r in &routes {
            if ours_table(r.table) && !tables.contains(&r.table) {
                match self.nl.del_route(r) {
                    Err(e) if !e.missing() => return Err(e.into()),
                    _ => {}
                }
                repairs.push(Repair {
                    object: "route",
                    action: "removed",
                    what: format!("{} table {}", r.dst, r.table),
                });
            }
        }
        // Pods' /32 and /128 routes, where the host end is there and the route is not.
        let routes6 = if v6_pods {
            self.nl.routes(true)?
        } else {
            Vec::new()
        };
        let egress = want
            .egress
            .iter()
            .map(|(a, name)| (IpAddr::V4(*a), 0, Some(name.clone())));
        for (a, _, veth) in want.pods.iter().cloned().chain(egress) {
            let Some(name) = veth else { continue };
            let Some(l) = self.nl.link_by_name(&name)? else {
                continue;
            };
            let dst = pod::host_net(a);
            let present = if a.is_ipv6() { &routes6 } else { &routes }
                .iter()
                .any(|r| r.table == TABLE_MAIN && r.dst == dst && r.oif == Some(l.index));
            if !present {
                self.nl
                    .add_route(&Route::to(dst, TABLE_MAIN).dev(l.index).link_scope(), true)?;
                repairs.push(Repair {
                    object: "route",
                    action: "restored",
                    what: format!("{dst} dev {name}"),
                });
            }
        }
        // The SNAT table: re-applied when it is missing or differs from what was applied.
        let script = snat::render(&SnatInputs {
            cfg: &self.cfg,
            primary_link: &primary_link,
            primary_ip: want.primary.ip,
            vpc_cidrs: &want.vpc_cidrs,
        });
        let now = nft::list_text(&["list", "table", "ip", snat::TABLE]).ok();
        let tampered = self.nft_listing.is_some() && now != self.nft_listing;
        let inputs_changed = self.last_script.as_deref() != Some(script.as_str());
        if tampered || inputs_changed {
            nft::apply(&script)?;
            if tampered {
                repairs.push(Repair {
                    object: "nft",
                    action: "restored",
                    what: format!("table ip {}", snat::TABLE),
                });
            }
            self.nft_listing = nft::list_text(&["list", "table", "ip", snat::TABLE]).ok();
            self.last_script = Some(script);
        }
        Ok(repairs)
    }

    /// Removes the pod rules of an address no allocation holds.
    pub fn remove_pod_rules(&mut self, address: IpAddr) -> Result<(), HostError> {
        Ok(pod::remove_rules(&mut self.nl, address)?)
    }
}
