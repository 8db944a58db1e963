//! The emulated VPC for tests: the mock EC2 with its data plane, in this process; and what a
//! test does inside its namespaces — commands, pings, a TCP echo from a chosen source, links by
//! MAC, drop counters.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prefixd::hostnet::netlink::{Link, Mac, Netlink, parse_mac};
use prefixd::hostnet::netns::NetNs;
use prefixd::mock::vpc::{Dataplane, Drops, Topology};
use prefixd::mock::{Account, MockServer, Scenario};

/// A mock EC2 with the emulated VPC.
pub struct Vpc {
    pub account: Arc<Account>,
    pub names: BTreeMap<String, String>,
    pub dataplane: Arc<Dataplane>,
    pub server: MockServer,
    pub topology: Topology,
}

impl Vpc {
    /// Starts it for `scenario` (JSON); fails the test when it cannot (not root, no nft...).
    pub async fn start(scenario: &str) -> Self {
        let s = Scenario::parse(scenario, "test").unwrap();
        let built = s.build("test").unwrap();
        let account = Arc::new(Account::new(built.model, built.control));
        let mut names = built.names;
        let dataplane = Arc::new(
            Dataplane::start(account.clone(), &mut names, &s.dataplane)
                .await
                .unwrap_or_else(|e| panic!("the emulated VPC could not start: {e}")),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = MockServer::serve(
            vec![listener],
            account.clone(),
            names.clone(),
            built.imds_instance,
        )
        .unwrap();
        server.set_dataplane(dataplane.clone());
        let topology = dataplane.topology();
        Self {
            account,
            names,
            dataplane,
            server,
            topology,
        }
    }

    pub fn id(&self, name: &str) -> String {
        self.names[name].clone()
    }

    /// The namespace of the instance named `name`.
    pub fn netns(&self, name: &str) -> String {
        let id = self.id(name);
        if name == "peer" {
            return self.topology.peer.netns.clone();
        }
        self.dataplane.topology().instances[&id].netns.clone()
    }

    /// Drops counted for `eni` (source check), or at the internet gateway when `None`.
    pub async fn drops(&self, eni: Option<&str>) -> u64 {
        self.dataplane
            .drops()
            .await
            .unwrap()
            .into_iter()
            .filter(|d: &Drops| d.eni.as_deref() == eni)
            .map(|d| d.packets)
            .sum()
    }

    /// Stops following and removes every namespace.
    pub async fn stop(self) {
        self.server.shutdown().await;
        self.dataplane.shutdown().await;
    }
}

/// `sh -c CMD` inside the named namespace (`ip netns exec`).
pub fn sh(netns: &str, cmd: &str) -> Output {
    Command::new("ip")
        .args(["netns", "exec", netns, "sh", "-c", cmd])
        .output()
        .expect("ip netns exec runs")
}

/// `sh -c CMD` inside `netns`, which must succeed.
pub fn sh_ok(netns: &str, cmd: &str) -> String {
    let out = sh(netns, cmd);
    assert!(
        out.status.success(),
        "in {netns}: {cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One ping from `src` to `dst` inside `netns` (2 s to answer).
pub fn ping(netns: &str, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
    sh(netns, &format!("ping -c1 -W2 -I {src} {dst}"))
        .status
        .success()
}

/// A TCP connection from `src` to `dst` inside `netns`: true when what is sent comes back.
pub fn tcp_echo(netns: &str, src: Ipv4Addr, dst: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let ns = NetNs::named(netns).unwrap();
    ns.run(|| -> std::io::Result<bool> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.bind(&SocketAddr::from((src, 0)).into())?;
        s.connect_timeout(&dst.into(), Duration::from_secs(2))?;
        let mut s: std::net::TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"prefixd")?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf)?;
        Ok(&buf == b"prefixd")
    })
    .unwrap()
    .unwrap_or(false)
}

/// The links of a namespace.
pub fn links(netns: &str) -> Vec<Link> {
    NetNs::named(netns)
        .unwrap()
        .run(|| Netlink::open().and_then(|mut nl| nl.links()))
        .unwrap()
        .unwrap()
}

/// The link with `mac` in `netns`, waiting up to `within`.
pub fn wait_link(netns: &str, mac: &str, within: Duration) -> Option<Link> {
    let mac: Mac = parse_mac(mac).unwrap();
    let deadline = Instant::now() + within;
    loop {
        if let Some(l) = links(netns).into_iter().find(|l| l.mac == mac) {
            return Some(l);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The host's view, to compare before and after: the namespaces whose name starts with
/// `prefix`, and the host's own links, routes, rules and nft tables.
pub fn host_state(prefix: &str) -> String {
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut netns: Vec<String> = NetNs::list()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    netns.sort();
    format!(
        "netns: {netns:?}\nlinks:\n{}\nroutes:\n{}\nrules:\n{}\nnft:\n{}",
        run(&["ip", "-o", "link", "show"])
            .lines()
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n"),
        run(&["ip", "route", "show", "table", "all"]),
        run(&["ip", "rule"]),
        run(&["nft", "list", "tables"]),
    )
}
