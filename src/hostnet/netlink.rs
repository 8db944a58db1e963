//! A small synchronous rtnetlink client: links, addresses, routes, rules and neighbours of the
//! network namespace the socket was opened in. Blocking and runtime-free, so that the CNI plugin
//! (one short-lived process per pod) and the agent's blocking tasks share it; the message
//! formats are netlink-packet-route's, the socket netlink-sys's.
//!
//! Every request asks for an acknowledgement, so that an error (EEXIST, ENOENT, EPERM...) comes
//! back as a [`NetlinkError`] naming what was being done.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A netlink request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened or used.
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request.
    #[error("{what}: {source}")]
    Refused {
        /// What was asked, e.g. `add route 10.0.0.5/32 table 2`.
        what: String,
        /// The kernel's errno.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's answer could not be decoded.
    #[error("netlink answer to {what} could not be decoded: {why}")]
    Decode {
        /// What was asked.
        what: String,
        /// The decoder's complaint.
        why: String,
    },
}

impl NetlinkError {
    /// The kernel's errno, when it refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The object already exists (EEXIST).
    pub fn exists(&self) -> bool {
        self.errno() == Some(17)
    }

    /// The object does not exist (ENOENT, ESRCH, ENODEV, EADDRNOTAVAIL).
    pub fn missing(&self) -> bool {
        matches!(self.errno(), Some(2 | 3 | 19 | 99))
    }
}

/// A MAC address.
pub type Mac = [u8; 6];

/// A link (network interface).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address (all zeros for loopback).
    pub mac: Mac,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// `veth`, `dummy`... when the kernel says.
    pub kind: Option<String>,
    /// ifindex of the peer (a veth's other end) in its namespace.
    pub peer_index: Option<u32>,
}

/// An address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The link.
    pub index: u32,
    /// Address and prefix length.
    pub net: IpNet,
}

/// What a route does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Forwards it (through a gateway or a link).
    Unicast,
    /// Answers with ICMP unreachable.
    Unreachable,
    /// Drops it in silence.
    Blackhole,
    /// Delivers it locally (the kernel's local table).
    Local,
    /// Anything else the kernel has (broadcast...).
    Other,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Routing table.
    pub table: u32,
    /// What it does.
    pub kind: RouteKind,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output link.
    pub oif: Option<u32>,
    /// Preferred source.
    pub src: Option<IpAddr>,
    /// Scope link (on the link, no gateway needed).
    pub scope_link: bool,
    /// The gateway is on the link even though no address covers it.
    pub onlink: bool,
    /// Who made it (`RTPROT_*`): kernel 2, boot 3, static 4.
    pub protocol: u8,
}

impl Route {
    /// A unicast route to `dst` in `table`.
    pub fn to(dst: IpNet, table: u32) -> Self {
        Self {
            dst,
            table,
            kind: RouteKind::Unicast,
            gateway: None,
            oif: None,
            src: None,
            scope_link: false,
            onlink: false,
            protocol: RTPROT_STATIC,
        }
    }

    /// Through link `oif`.
    pub fn dev(mut self, oif: u32) -> Self {
        self.oif = Some(oif);
        self
    }

    /// Via `gateway`.
    pub fn via(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// Scope link.
    pub fn link_scope(mut self) -> Self {
        self.scope_link = true;
        self
    }

    /// The gateway is on-link.
    pub fn on_link(mut self) -> Self {
        self.onlink = true;
        self
    }

    /// Of another kind.
    pub fn of_kind(mut self, kind: RouteKind) -> Self {
        self.kind = kind;
        self
    }

    /// With a preferred source.
    pub fn from_src(mut self, src: IpAddr) -> Self {
        self.src = Some(src);
        self
    }
}

/// `RTPROT_STATIC`: what the agent and the mock put in.
pub const RTPROT_STATIC: u8 = 4;
/// The main routing table.
pub const TABLE_MAIN: u32 = 254;
/// The local routing table.
pub const TABLE_LOCAL: u32 = 255;

/// A policy-routing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Priority (lower first).
    pub priority: u32,
    /// Source prefix.
    pub from: Option<IpNet>,
    /// Destination prefix.
    pub to: Option<IpNet>,
    /// Firewall mark and mask.
    pub fwmark: Option<(u32, u32)>,
    /// Input interface.
    pub iif: Option<String>,
    /// The table to look up.
    pub table: u32,
    /// IPv6 when true.
    pub v6: bool,
}

impl Rule {
    /// `lookup table` at `priority`.
    pub fn lookup(priority: u32, table: u32) -> Self {
        Self {
            priority,
            from: None,
            to: None,
            fwmark: None,
            iif: None,
            table,
            v6: false,
        }
    }

    /// From `net`.
    pub fn from(mut self, net: IpNet) -> Self {
        self.v6 = matches!(net, IpNet::V6(_));
        self.from = Some(net);
        self
    }

    /// To `net`.
    pub fn to(mut self, net: IpNet) -> Self {
        self.v6 = matches!(net, IpNet::V6(_));
        self.to = Some(net);
        self
    }

    /// Packets with `mark` under `mask`.
    pub fn fwmark(mut self, mark: u32, mask: u32) -> Self {
        self.fwmark = Some((mark, mask));
        self
    }
}

/// A rtnetlink socket in one network namespace.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn mac_of(v: &[u8]) -> Mac {
    let mut m = [0u8; 6];
    if v.len() == 6 {
        m.copy_from_slice(v);
    }
    m
}

/// `02:ab:...` text of a MAC.
pub fn mac_text(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `02:ab:cd:ef:01:23`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    (parts.len() == 6).then(|| mac_of(&parts))
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        Ok(Self {
            sock,
            seq: 0,
            buf: Vec::with_capacity(1 << 17),
        })
    }

    /// Sends `msg` and collects the answers: the messages of a dump, or nothing for an
    /// acknowledged change.
    fn request(
        &mut self,
        what: impl Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut out_buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out_buf);
        self.sock.send(&out_buf, 0).map_err(NetlinkError::Socket)?;
        let mut out = Vec::new();
        loop {
            self.buf.clear();
            let n = self
                .sock
                .recv(&mut self.buf, 0)
                .map_err(NetlinkError::Socket)?;
            let mut off = 0;
            while off < n.min(self.buf.len()) {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..])
                    .map_err(|e| NetlinkError::Decode {
                        what: what(),
                        why: e.to_string(),
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(NetlinkError::Refused {
                                what: what(),
                                source: e.to_io(),
                            }),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    _ => {}
                }
            }
        }
    }

    // ---- links -------------------------------------------------------------------------------

    /// Every link.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let answers = self.request(
            || "list links".into(),
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
                _ => None,
            })
            .collect())
    }

    /// The link named `name`: one lookup, not a dump of every link (a node has one per pod).
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(
            || format!("get link {name}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        ) {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
                _ => None,
            })),
            Err(e) if e.missing() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link with MAC `mac`.
    pub fn link_by_mac(&mut self, mac: &Mac) -> Result<Option<Link>, NetlinkError> {
        Ok(self.links()?.into_iter().find(|l| &l.mac == mac))
    }

    /// Creates a veth pair: `name` here, `peer` in the namespace `peer_ns` (an open namespace
    /// file) or here, each with its MAC when given.
    pub fn add_veth(
        &mut self,
        name: &str,
        mac: Option<Mac>,
        peer: &str,
        peer_mac: Option<Mac>,
        peer_ns: Option<std::os::fd::RawFd>,
        mtu: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_owned()));
        if let Some(m) = peer_mac {
            peer_msg.attributes.push(LinkAttribute::Address(m.to_vec()));
        }
        if let Some(fd) = peer_ns {
            peer_msg.attributes.push(LinkAttribute::NetNsFd(fd));
        }
        if let Some(m) = mtu {
            peer_msg.attributes.push(LinkAttribute::Mtu(m));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        if let Some(m) = mac {
            msg.attributes.push(LinkAttribute::Address(m.to_vec()));
        }
        if let Some(m) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            || format!("add veth {name} (peer {peer})"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Creates a dummy link.
    pub fn add_dummy(&mut self, name: &str) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Dummy,
            )]));
        self.request(
            || format!("add dummy {name}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    fn set_link(
        &mut self,
        what: impl Fn() -> String,
        index: u32,
        attrs: Vec<LinkAttribute>,
        flags: Option<(LinkFlags, LinkFlags)>,
    ) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some((f, mask)) = flags {
            msg.header.flags = f;
            msg.header.change_mask = mask;
        }
        msg.attributes = attrs;
        self.request(what, RouteNetlinkMessage::SetLink(msg), 0)
            .map(drop)
    }

    /// Brings a link up (or down).
    pub fn set_up(&mut self, index: u32, up: bool) -> Result<(), NetlinkError> {
        let f = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        self.set_link(
            || format!("set link {index} {}", if up { "up" } else { "down" }),
            index,
            vec![],
            Some((f, LinkFlags::Up)),
        )
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.set_link(
            || format!("set link {index} mtu {mtu}"),
            index,
            vec![LinkAttribute::Mtu(mtu)],
            None,
        )
    }

    /// Renames a link (it must be down).
    pub fn set_name(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        self.set_link(
            || format!("rename link {index} to {name}"),
            index,
            vec![LinkAttribute::IfName(name.to_owned())],
            None,
        )
    }

    /// Moves a link into the namespace open as `ns`.
    pub fn move_to_ns(&mut self, index: u32, ns: std::os::fd::RawFd) -> Result<(), NetlinkError> {
        self.set_link(
            || format!("move link {index} to another namespace"),
            index,
            vec![LinkAttribute::NetNsFd(ns)],
            None,
        )
    }

    /// Deletes a link (a veth takes its peer with it).
    pub fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(
            || format!("delete link {index}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        )
        .map(drop)
    }

    // ---- addresses ---------------------------------------------------------------------------

    /// Every address.
    pub fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        let answers = self.request(
            || "list addresses".into(),
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in answers {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip
                && let Ok(net) = IpNet::new(ip, a.header.prefix_len)
            {
                out.push(Address {
                    index: a.header.index,
                    net,
                });
            }
        }
        Ok(out)
    }

    fn address_message(index: u32, net: IpNet) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = family(net.addr());
        msg.header.prefix_len = net.prefix_len();
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(net.addr()));
        msg.attributes.push(AddressAttribute::Address(net.addr()));
        msg
    }

    /// Puts `net` (address and prefix length) on link `index`; with `no_prefix_route`, the
    /// kernel adds no route for the prefix. An address already there is no error.
    pub fn add_address(
        &mut self,
        index: u32,
        net: IpNet,
        no_prefix_route: bool,
    ) -> Result<(), NetlinkError> {
        let mut msg = Self::address_message(index, net);
        let mut flags = AddressFlags::empty();
        if no_prefix_route {
            flags |= AddressFlags::Noprefixroute;
        }
        // EC2 assigned the address to this node alone: duplicate address detection would only
        // keep it tentative (unusable as a source) for a second.
        if matches!(net, IpNet::V6(_)) {
            flags |= AddressFlags::Nodad;
        }
        if !flags.is_empty() {
            msg.attributes.push(AddressAttribute::Flags(flags));
        }
        match self.request(
            || format!("add address {net} to link {index}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.exists() => Ok(()),
            r => r.map(drop),
        }
    }

    /// Removes `net` from link `index`.
    pub fn del_address(&mut self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        self.request(
            || format!("delete address {net} from link {index}"),
            RouteNetlinkMessage::DelAddress(Self::address_message(index, net)),
            0,
        )
        .map(drop)
    }

    // ---- routes ------------------------------------------------------------------------------

    /// Every route of one family in every table.
    pub fn routes(&mut self, v6: bool) -> Result<Vec<Route>, NetlinkError> {
        let mut q = RouteMessage::default();
        q.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let answers = self.request(
            || "list routes".into(),
            RouteNetlinkMessage::GetRoute(q),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => route_of(&r),
                _ => None,
            })
            .collect())
    }

    fn route_message(r: &Route) -> RouteMessage {
        let mut msg = RouteMessage::default();
        let h = &mut msg.header;
        h.address_family = family(r.dst.addr());
        h.destination_prefix_length = r.dst.prefix_len();
        h.table = if r.table < 256 {
            r.table as u8
        } else {
            RouteHeader::RT_TABLE_UNSPEC
        };
        h.protocol = RouteProtocol::from(r.protocol);
        h.scope = if r.scope_link {
            RouteScope::Link
        } else if r.kind == RouteKind::Local {
            RouteScope::Host
        } else {
            RouteScope::Universe
        };
        h.kind = match r.kind {
            RouteKind::Unicast | RouteKind::Other => RouteType::Unicast,
            RouteKind::Unreachable => RouteType::Unreachable,
            RouteKind::Blackhole => RouteType::BlackHole,
            RouteKind::Local => RouteType::Local,
        };
        if r.onlink {
            h.flags = RouteFlags::Onlink;
        }
        msg.attributes.push(RouteAttribute::Table(r.table));
        msg.attributes
            .push(RouteAttribute::Destination(r.dst.network().into()));
        if let Some(g) = r.gateway {
            msg.attributes.push(RouteAttribute::Gateway(g.into()));
        }
        if let Some(o) = r.oif {
            msg.attributes.push(RouteAttribute::Oif(o));
        }
        if let Some(s) = r.src {
            msg.attributes.push(RouteAttribute::PrefSource(s.into()));
        }
        msg
    }

    /// Adds a route; with `replace`, one to the same destination in the same table is
    /// replaced.
    pub fn add_route(&mut self, r: &Route, replace: bool) -> Result<(), NetlinkError> {
        let flags = if replace {
            NLM_F_CREATE | NLM_F_REPLACE
        } else {
            NLM_F_CREATE | NLM_F_EXCL
        };
        self.request(
            || format!("add route {} table {}", r.dst, r.table),
            RouteNetlinkMessage::NewRoute(Self::route_message(r)),
            flags,
        )
        .map(drop)
    }

    /// Deletes a route (the destination, table and kind pick it).
    pub fn del_route(&mut self, r: &Route) -> Result<(), NetlinkError> {
        let mut msg = Self::route_message(r);
        // The kernel matches on what is given: leave scope and protocol open.
        msg.header.scope = RouteScope::NoWhere;
        msg.header.protocol = RouteProtocol::Unspec;
        self.request(
            || format!("delete route {} table {}", r.dst, r.table),
            RouteNetlinkMessage::DelRoute(msg),
            0,
        )
        .map(drop)
    }

    // ---- rules -------------------------------------------------------------------------------

    /// Every rule of one family.
    pub fn rules(&mut self, v6: bool) -> Result<Vec<Rule>, NetlinkError> {
        let mut q = RuleMessage::default();
        q.header.family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let answers = self.request(
            || "list rules".into(),
            RouteNetlinkMessage::GetRule(q),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => rule_of(&r, v6),
                _ => None,
            })
            .collect())
    }

    fn rule_message(r: &Rule) -> RuleMessage {
        let mut msg = RuleMessage::default();
        msg.header.family = if r.v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        msg.header.action = RuleAction::ToTable;
        msg.header.table = if r.table < 256 { r.table as u8 } else { 0 };
        msg.attributes.push(RuleAttribute::Priority(r.priority));
        msg.attributes.push(RuleAttribute::Table(r.table));
        if let Some(f) = r.from {
            msg.header.src_len = f.prefix_len();
            msg.attributes.push(RuleAttribute::Source(f.network()));
        }
        if let Some(t) = r.to {
            msg.header.dst_len = t.prefix_len();
            msg.attributes.push(RuleAttribute::Destination(t.network()));
        }
        if let Some((mark, mask)) = r.fwmark {
            msg.attributes.push(RuleAttribute::FwMark(mark));
            msg.attributes.push(RuleAttribute::FwMask(mask));
        }
        if let Some(i) = &r.iif {
            msg.attributes.push(RuleAttribute::Iifname(i.clone()));
        }
        msg
    }

    /// Adds a rule; one exactly like it already there is no error.
    pub fn add_rule(&mut self, r: &Rule) -> Result<(), NetlinkError> {
        match self.request(
            || format!("add rule {r:?}"),
            RouteNetlinkMessage::NewRule(Self::rule_message(r)),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.exists() => Ok(()),
            r => r.map(drop),
        }
    }

    /// Deletes a rule.
    pub fn del_rule(&mut self, r: &Rule) -> Result<(), NetlinkError> {
        self.request(
            || format!("delete rule {r:?}"),
            RouteNetlinkMessage::DelRule(Self::rule_message(r)),
            0,
        )
        .map(drop)
    }

    // ---- neighbours ----------------------------------------------------------------------------

    /// A permanent neighbour entry: `ip` is at `mac` on link `index` (replacing any entry).
    pub fn set_neighbour(&mut self, index: u32, ip: IpAddr, mac: Mac) -> Result<(), NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(ip);
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(NeighbourAttribute::Destination(match ip {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            || format!("set neighbour {ip} on link {index}"),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Permanent neighbour entries: (link, address, MAC).
    pub fn permanent_neighbours(&mut self) -> Result<Vec<(u32, IpAddr, Mac)>, NetlinkError> {
        let answers = self.request(
            || "list neighbours".into(),
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in answers {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.state != NeighbourState::Permanent {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => {
                        ip = Some(IpAddr::V4(*v))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                        ip = Some(IpAddr::V6(*v))
                    }
                    NeighbourAttribute::LinkLayerAddress(v) => mac = Some(mac_of(v)),
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push((n.header.ifindex, ip, mac));
            }
        }
        Ok(out)
    }
}

fn link_of(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: [0; 6],
        mtu: 0,
        up: l.header.flags.contains(LinkFlags::Up),
        kind: None,
        peer_index: None,
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(m) => link.mac = mac_of(m),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Link(i) => link.peer_index = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn route_of(m: &RouteMessage) -> Option<Route> {
    let v6 = m.header.address_family == AddressFamily::Inet6;
    let mut dst_ip: IpAddr = if v6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let mut r = Route::to(IpNet::new(dst_ip, 0).ok()?, u32::from(m.header.table));
    r.protocol = u8::from(m.header.protocol);
    r.scope_link = m.header.scope == RouteScope::Link;
    r.onlink = m.header.flags.contains(RouteFlags::Onlink);
    r.kind = match m.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::Unreachable => RouteKind::Unreachable,
        RouteType::BlackHole => RouteKind::Blackhole,
        RouteType::Local => RouteKind::Local,
        _ => RouteKind::Other,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::Destination(d) => dst_ip = ip_of(d)?,
            RouteAttribute::Gateway(g) => r.gateway = ip_of(g),
            RouteAttribute::Oif(o) => r.oif = Some(*o),
            RouteAttribute::PrefSource(s) => r.src = ip_of(s),
            _ => {}
        }
    }
    r.dst = IpNet::new(dst_ip, m.header.destination_prefix_length).ok()?;
    Some(r)
}

fn rule_of(m: &RuleMessage, v6: bool) -> Option<Rule> {
    if m.header.action != RuleAction::ToTable {
        return None;
    }
    let mut r = Rule::lookup(0, u32::from(m.header.table));
    r.v6 = v6;
    let (mut mark, mut mask) = (None, None);
    for a in &m.attributes {
        match a {
            RuleAttribute::Priority(p) => r.priority = *p,
            RuleAttribute::Table(t) => r.table = *t,
            RuleAttribute::Source(s) => r.from = IpNet::new(*s, m.header.src_len).ok(),
            RuleAttribute::Destination(d) => r.to = IpNet::new(*d, m.header.dst_len).ok(),
            RuleAttribute::FwMark(v) => mark = Some(*v),
            RuleAttribute::FwMask(v) => mask = Some(*v),
            RuleAttribute::Iifname(i) => r.iif = Some(i.clone()),
            _ => {}
        }
    }
    if let Some(mark) = mark {
        r.fwmark = Some((mark, mask.unwrap_or(u32::MAX)));
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        let m = parse_mac("02:ab:0c:00:ff:10").unwrap();
        assert_eq!(mac_text(&m), "02:ab:0c:00:ff:10");
        assert!(parse_mac("02:ab").is_none());
        assert!(parse_mac("zz:ab:0c:00:ff:10").is_none());
    }

    #[test]
    fn route_messages_carry_what_was_asked() {
        let r = Route::to("10.0.0.16/28".parse().unwrap(), 1536)
            .via("10.0.0.1".parse().unwrap())
            .dev(7)
            .on_link();
        let m = Netlink::route_message(&r);
        assert_eq!(m.header.destination_prefix_length, 28);
        assert_eq!(
            m.header.table,
            RouteHeader::RT_TABLE_UNSPEC,
            "tables over 255 go as an attribute"
        );
        assert!(m.attributes.contains(&RouteAttribute::Table(1536)));
        assert!(m.header.flags.contains(RouteFlags::Onlink));
        let back = route_of(&m).unwrap();
        assert_eq!(back.dst, r.dst);
        assert_eq!(back.table, 1536);
        assert_eq!(back.gateway, r.gateway);
        assert_eq!(back.oif, Some(7));
        let rule = Rule::lookup(1536, 2).from("10.0.0.17/32".parse().unwrap());
        let back = rule_of(&Netlink::rule_message(&rule), false).unwrap();
        assert_eq!(back, rule);
    }
}
