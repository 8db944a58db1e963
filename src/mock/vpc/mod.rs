//! The emulated VPC data plane (`prefixd mock-ec2 --dataplane`, Linux, root): network
//! namespaces that carry packets as EC2 does where it matters, driven by the mock's model.
//!
//! * A router namespace for the VPC: one veth port per attached ENI, the subnet router's `.1` on
//!   each, a route for every address and prefix of an ENI towards its port, and the
//!   source/destination check in nftables — a packet from ENI X's port whose source is not
//!   X's is dropped and counted, by ENI.
//! * A namespace per running instance: `eth0` with the primary ENI's MAC, address and default
//!   route; an attached ENI's link (`ens6`, ...) appears after a hot-plug delay, carrying its
//!   MAC, down and unaddressed; it goes on detach. The mock's EC2 API and IMDSv2 are served
//!   inside, on the namespace's own loopback (`127.0.0.1:PORT`, and IMDS on
//!   `169.254.169.254:80`), so that an agent run there finds them where an instance would.
//! * A peer instance that answers ping and a TCP echo, and an internet namespace behind a
//!   gateway that forwards only instances' primary addresses (an internet gateway), or
//!   masquerades every source (a NAT gateway).
//! * IPv6 where a subnet has a /64: the router is `fe80:ec2::1` on the port, routes each ENI's
//!   /128s and /80s to the ENI's link-local address, and checks IPv6 sources per ENI too; an
//!   instance's own IPv6 addresses sit on `eth0` with a default route via the router; the peer
//!   has one, and the internet host answers on IPv6 through the gateway (no NAT, no check).
//!
//! Everything it makes is inside namespaces named with the run's prefix, so that removing them
//! removes it all; a run that died is cleaned up by the next. Not emulated: security groups,
//! NACLs, the VPC's MTU and PMTU behaviour, DNS, router advertisements (an instance's IPv6
//! default route is set as they would set it), flow logs, bandwidth.
//! [`desired`] says what the model asks for (pure); [`fabric`] makes it in the kernel;
//! [`services`] runs the listeners inside.

pub mod desired;
pub mod fabric;
pub mod services;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::account::Account;
use crate::core::settings::parse_duration;
use crate::hostnet::netlink::NetlinkError;
use crate::hostnet::netns::{NetNs, NetnsError};
use crate::hostnet::nft::NftError;
use crate::hostnet::sysctl::SysctlError;
use desired::Desired;
use fabric::{Egress, Fabric, INTERNET_HOST};

/// The echo port of the peer and the internet host.
pub const ECHO_PORT: u16 = 7;

/// The data plane could not be made or changed.
#[derive(Debug, thiserror::Error)]
pub enum VpcError {
    /// Not root.
    #[error(
        "the emulated VPC needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to make network namespaces; run as root"
    )]
    NotRoot,
    /// A namespace could not be made or used.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The kernel refused a netlink request.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// nftables failed (or is missing).
    #[error(transparent)]
    Nft(#[from] NftError),
    /// A sysctl could not be set.
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    /// A namespace has no loopback link.
    #[error("a new network namespace has no loopback link")]
    NoLoopback,
    /// A link made a moment ago is not there.
    #[error("link {0} disappeared right after it was made")]
    Lost(String),
    /// The scenario's data-plane settings are wrong.
    #[error("dataplane.{field}: {why}")]
    Spec {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The mock's model refused to make the peer.
    #[error("the peer instance: {0}")]
    Peer(String),
    /// A listener inside a namespace could not be bound.
    #[error("listening in {netns} on {addr}: {source}")]
    Listen {
        /// The namespace.
        netns: String,
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The scenario's `dataplane` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneSpec {
    /// How long after AttachNetworkInterface the ENI's link appears in the instance.
    #[serde(default = "default_hotplug")]
    pub hotplug_delay: String,
    /// `internet-gateway` or `nat-gateway`.
    #[serde(default = "default_egress")]
    pub egress: Egress,
    /// The subnet (by name) of the peer instance; default the first subnet.
    #[serde(default)]
    pub peer_subnet: Option<String>,
}

fn default_hotplug() -> String {
    "2s".into()
}

fn default_egress() -> Egress {
    Egress::InternetGateway
}

impl Default for DataplaneSpec {
    fn default() -> Self {
        Self {
            hotplug_delay: default_hotplug(),
            egress: default_egress(),
            peer_subnet: None,
        }
    }
}

/// One instance's namespace and endpoint, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceInfo {
    /// The namespace's name.
    pub netns: String,
    /// The mock's EC2 endpoint inside it.
    pub endpoint: String,
}

/// The topology, as printed at start and served at `GET /_mock/dataplane`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Topology {
    /// The router namespace.
    pub router_netns: String,
    /// Instances by id.
    pub instances: BTreeMap<String, InstanceInfo>,
    /// The peer.
    pub peer: PeerInfo,
    /// The internet namespace.
    pub internet: InternetInfo,
}

/// The peer instance.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PeerInfo {
    /// Its id.
    pub id: String,
    /// Its namespace.
    pub netns: String,
    /// Its primary address.
    pub address: String,
    /// Its IPv6 address, when its subnet has IPv6 (empty otherwise).
    pub address6: String,
    /// The TCP echo port.
    pub tcp_echo_port: u16,
}

/// The internet host.
#[derive(Debug, Clone, Serialize, Default)]
pub struct InternetInfo {
    /// Its namespace.
    pub netns: String,
    /// Its address.
    pub address: String,
    /// Its IPv6 address.
    pub address6: String,
    /// The TCP echo port.
    pub tcp_echo_port: u16,
}

/// Packets dropped, by ENI (or at the gateway) and reason.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Drops {
    /// The ENI whose port dropped them; none for the internet gateway.
    pub eni: Option<String>,
    /// `source-destination-check` or `internet-gateway`.
    pub reason: &'static str,
    /// Packets.
    pub packets: u64,
}

/// A running emulated VPC.
pub struct Dataplane {
    run: String,
    topology: Arc<Mutex<Topology>>,
    fabric: Arc<Mutex<Option<Fabric>>>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// This process's next run prefix: `pv`, the pid in base 36, `_`, a counter.
fn run_prefix() -> String {
    let mut pid = std::process::id();
    let mut digits = Vec::new();
    loop {
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(pid % 36) as usize]);
        pid /= 36;
        if pid == 0 {
            break;
        }
    }
    digits.reverse();
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("pv{}_{n}", String::from_utf8_lossy(&digits))
}

/// The pid a run prefix was made by.
fn pid_of(netns: &str) -> Option<u32> {
    let rest = netns.strip_prefix("pv")?;
    let (pid, _) = rest.split_once('_')?;
    u32::from_str_radix(pid, 36).ok()
}

/// Removes the namespaces of runs whose process is gone (a mock that died); returns them.
pub fn remove_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    for name in NetNs::list() {
        if let Some(pid) = pid_of(&name)
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && NetNs::delete(&name).is_ok()
        {
            removed.push(name);
        }
    }
    removed
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

impl Dataplane {
    /// Builds the emulated VPC for `account` and follows its model: a peer instance is run in
    /// `peer_subnet` (its id lands in `names` as `peer`).
    pub async fn start(
        account: Arc<Account>,
        names: &mut BTreeMap<String, String>,
        spec: &DataplaneSpec,
    ) -> Result<Self, VpcError> {
        if !is_root() {
            return Err(VpcError::NotRoot);
        }
        crate::hostnet::nft::available()?;
        let hotplug =
            parse_duration("dataplane.hotplug_delay", &spec.hotplug_delay).map_err(|e| {
                VpcError::Spec {
                    field: "hotplug_delay",
                    why: e.why,
                }
            })?;
        for gone in remove_leftovers() {
            tracing::info!(netns = %gone, "removed a namespace of an earlier run that died");
        }
        let peer = Self::run_peer(&account, names, spec)?;
        let run = run_prefix();
        let egress = spec.egress;
        let fabric = {
            let run = run.clone();
            tokio::task::spawn_blocking(move || Fabric::new(&run, egress))
                .await
                .expect("the set-up thread does not panic")?
        };
        let topology = Arc::new(Mutex::new(Topology {
            router_netns: fabric.router_netns(),
            internet: InternetInfo {
                netns: fabric.inet_netns(),
                address: INTERNET_HOST.to_string(),
                address6: fabric::INTERNET_HOST6.to_string(),
                tcp_echo_port: ECHO_PORT,
            },
            peer: PeerInfo {
                id: peer.clone(),
                tcp_echo_port: ECHO_PORT,
                ..PeerInfo::default()
            },
            ..Topology::default()
        }));
        let fabric = Arc::new(Mutex::new(Some(fabric)));
        let services = services::Services::start(&fabric, names.clone())?;
        let (stop, stopped) = watch::channel(false);
        let dp = Self {
            run,
            topology: topology.clone(),
            fabric: fabric.clone(),
            stop,
            task: Mutex::new(None),
        };
        let mut follower = Follower {
            account,
            fabric,
            services,
            topology,
            peer,
            hotplug_ms: hotplug.as_millis() as u64,
        };
        // The first pass before start returns: the caller prints the topology.
        follower.pass().await?;
        *dp.task.lock().expect("task lock") = Some(tokio::spawn(follower.run(stopped)));
        Ok(dp)
    }

    fn run_peer(
        account: &Account,
        names: &mut BTreeMap<String, String>,
        spec: &DataplaneSpec,
    ) -> Result<String, VpcError> {
        account.with_model(|m| {
            let subnet = match &spec.peer_subnet {
                Some(n) => names.get(n).cloned().ok_or_else(|| VpcError::Spec {
                    field: "peer_subnet",
                    why: format!("no subnet is named {n:?}"),
                })?,
                None => m
                    .subnets
                    .keys()
                    .next()
                    .cloned()
                    .ok_or_else(|| VpcError::Peer("the scenario has no subnet".into()))?,
            };
            let id = m
                .run_instance("t3.micro", &subnet, vec![], "ami-peer".into(), 0)
                .map_err(|e| VpcError::Peer(e.to_string()))?;
            m.create_tags(
                std::slice::from_ref(&id),
                &[("Name".to_owned(), "peer".to_owned())].into(),
            )
            .map_err(|e| VpcError::Peer(e.to_string()))?;
            // On a subnet with IPv6 the peer has an IPv6 address too (DHCPv6 puts it on eth0).
            if m.subnets.get(&subnet).is_some_and(|s| s.ipv6.is_some()) {
                let eni = m.instances[&id].primary_eni.clone();
                m.assign_ipv6(
                    &eni,
                    crate::mock::model::Ipv6Request {
                        address_count: 1,
                        ..Default::default()
                    },
                )
                .map_err(|e| VpcError::Peer(e.to_string()))?;
            }
            names.insert("peer".into(), id.clone());
            Ok(id)
        })
    }

    /// The run's prefix (every namespace it made starts with it).
    pub fn run_prefix(&self) -> &str {
        &self.run
    }

    /// The topology.
    pub fn topology(&self) -> Topology {
        self.topology.lock().expect("topology lock").clone()
    }

    /// Drop counters by ENI and reason.
    pub async fn drops(&self) -> Result<Vec<Drops>, VpcError> {
        let fabric = self.fabric.clone();
        tokio::task::spawn_blocking(move || {
            let guard = fabric.lock().expect("fabric lock");
            let Some(f) = guard.as_ref() else {
                return Ok(Vec::new());
            };
            f.drops()
        })
        .await
        .expect("the counters thread does not panic")
    }

    /// The topology and the drops, as `GET /_mock/dataplane` serves them.
    pub async fn report(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.topology()).expect("a topology serializes");
        v["drops"] = match self.drops().await {
            Ok(d) => serde_json::to_value(d).expect("drops serialize"),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        v
    }

    /// Stops following the model and removes every namespace of the run.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().expect("task lock").take();
        if let Some(t) = task {
            let _ = t.await;
        }
        let fabric = self.fabric.clone();
        let _ = tokio::task::spawn_blocking(move || teardown(&fabric)).await;
    }
}

fn teardown(fabric: &Mutex<Option<Fabric>>) {
    if let Some(f) = fabric.lock().expect("fabric lock").take() {
        for name in f.namespaces() {
            if let Err(e) = NetNs::delete(&name) {
                tracing::warn!(netns = %name, error = %e, "could not remove a namespace");
            }
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        teardown(&self.fabric);
    }
}

/// Keeps the kernel in step with the model.
struct Follower {
    account: Arc<Account>,
    fabric: Arc<Mutex<Option<Fabric>>>,
    services: services::Services,
    topology: Arc<Mutex<Topology>>,
    peer: String,
    hotplug_ms: u64,
}

impl Follower {
    /// One reconcile: the desired state from the model, applied; services for new instances.
    /// Returns when the next hot-plug is due, in mock ms.
    async fn pass(&mut self) -> Result<Option<u64>, VpcError> {
        let now = self.account.now_ms();
        let desired = self.account.read(|m| Desired::of(m, now, self.hotplug_ms));
        let fabric = self.fabric.clone();
        let d = desired.clone();
        let (made, gone) = tokio::task::spawn_blocking(move || {
            let mut g = fabric.lock().expect("fabric lock");
            match g.as_mut() {
                Some(f) => f.apply(&d),
                None => Ok((Vec::new(), Vec::new())),
            }
        })
        .await
        .expect("the fabric thread does not panic")?;
        for id in &gone {
            self.services.stop(id);
            self.topology
                .lock()
                .expect("topology lock")
                .instances
                .remove(id);
        }
        for id in made {
            let info = self
                .services
                .start_instance(&self.account, &id, id == self.peer)?;
            let mut t = self.topology.lock().expect("topology lock");
            if id == self.peer {
                t.peer.netns = info.netns.clone();
                if let Some(p) = desired.ports.values().find(|p| p.instance == id) {
                    t.peer.address = p.primary.to_string();
                }
            } else {
                t.instances.insert(id, info);
            }
        }
        {
            let mut t = self.topology.lock().expect("topology lock");
            if let Some(p) = desired
                .ports
                .values()
                .find(|p| p.instance == self.peer && p.device_index == 0)
            {
                if t.peer.address.is_empty() {
                    t.peer.address = p.primary.to_string();
                }
                if t.peer.address6.is_empty()
                    && let Some(a) = p.ips6.first()
                {
                    t.peer.address6 = a.to_string();
                }
            }
        }
        Ok(desired.next_change_ms)
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut changes = self.account.changes();
        let mut next: Option<u64> = None;
        loop {
            let wait = match next {
                Some(at) => {
                    let now = self.account.now_ms();
                    let scale = self.account.with_control(|c| c.time_scale).max(1e-9);
                    Duration::from_millis(at.saturating_sub(now)).div_f64(scale)
                }
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                r = changes.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
            }
            match self.pass().await {
                Ok(n) => next = n,
                Err(e) => {
                    tracing::warn!(error = %e, "the emulated VPC could not follow the model; retrying");
                    next = Some(self.account.now_ms() + 500);
                }
            }
        }
    }
}

/// The primary address of `instance`'s eth0 in `topology` terms (for callers that know ids).
pub fn primary_of(account: &Account, instance: &str) -> Option<Ipv4Addr> {
    account.read(|m| {
        m.instances
            .get(instance)
            .and_then(|i| m.enis.get(&i.primary_eni))
            .map(|e| e.primary_ip)
    })
}
