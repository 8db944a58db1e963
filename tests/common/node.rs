//! An emulated node as an operator runs one: the `prefixd agent` binary as its own process in
//! an instance's namespace of the emulated VPC (it finds itself through that instance's IMDS and
//! reaches the mock's EC2 endpoint inside it), the CNI directories a DaemonSet would install
//! (deploy/'s conflist, `prefixd-cni`, Debian's plugins), and helpers to read the node's state.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prefixd::hostnet::netlink::Netlink;
use prefixd::hostnet::netns::NetNs;

/// Where the agent's introspection listens inside the node's namespace.
pub const INTROSPECTION: &str = "127.0.0.1:61679";
/// Where its metrics listen.
pub const METRICS: &str = "127.0.0.1:61678";

/// The agent of one emulated node.
pub struct NodeAgent {
    pub netns: String,
    pub dir: PathBuf,
    endpoint: String,
    settings: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
}

impl NodeAgent {
    /// Starts `prefixd agent` in `netns` with its files in `dir`, EC2 at `endpoint` (the mock's
    /// inside the namespace), and `settings` over the test's defaults.
    pub fn start(netns: &str, endpoint: &str, dir: &Path, settings: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut a = Self {
            netns: netns.to_owned(),
            dir: dir.to_owned(),
            endpoint: endpoint.to_owned(),
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            starts: 0,
        };
        a.spawn();
        a
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(env!("CARGO_BIN_EXE_prefixd"))
            .arg("agent")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_REGION", "us-west-2")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("CHECKPOINT_PATH", self.dir.join("checkpoint.json"))
            .env("SOCKET_PATH", self.socket())
            .env("INTROSPECTION_BIND_ADDRESS", INTROSPECTION)
            .env("METRICS_BIND_ADDRESS", METRICS)
            .env("POOL_TICK", "200ms")
            .env("EC2_API_QPS", "100")
            .env("RUST_LOG", "info")
            .envs(self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(c.spawn().expect("the agent starts"));
    }

    /// Waits for `/readyz` to answer 200.
    pub fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("the agent exited ({status}):\n{}", self.log());
            }
            if let Some((200, _)) = self.try_get("/readyz") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agent was not ready within {within:?}: {:?}\n{}",
                self.try_get("/readyz"),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.wait();
        }
    }

    /// Starts it again with the same files and settings.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// GET on its introspection endpoint, inside the namespace.
    pub fn try_get(&self, path: &str) -> Option<(u16, String)> {
        http_in(&self.netns, INTROSPECTION.parse().unwrap(), path)
    }

    pub fn get(&self, path: &str) -> String {
        let (status, body) = self.try_get(path).expect("introspection answers");
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// Its /metrics text.
    pub fn metrics(&self) -> String {
        http_in(&self.netns, METRICS.parse().unwrap(), "/metrics")
            .expect("metrics answer")
            .1
    }

    /// One sample of the metric `name{labels}` (0 when absent).
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(name_and_labels))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A GET from inside `netns`; `None` when nothing answers.
pub fn http_in(netns: &str, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let path = path.to_owned();
    NetNs::named(netns)
        .unwrap()
        .run(move || -> std::io::Result<(u16, String)> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
            let body = out
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_default();
            Ok((status, body))
        })
        .unwrap()
        .ok()
}

/// The node's CNI directories as the DaemonSet's init container installs them: `prefixd
/// install-cni` run in the node's namespace (with `--node-sysctls` when `sysctls`, as the
/// privileged init container does) puts deploy/'s conflist (its socket pointed at `socket`) in
/// `conf` and the plugin in `bin`, where Debian's plugins (portmap, loopback...) join it.
/// Returns (conf dir, bin dir).
pub fn cni_dirs(
    dir: &Path,
    socket: &Path,
    netns: &str,
    sysctls: bool,
    env: &[(&str, &str)],
) -> (PathBuf, PathBuf) {
    let conf = dir.join("net.d");
    let bin = dir.join("bin");
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/10-prefixd.conflist").unwrap())
            .unwrap();
    assert_eq!(
        list["plugins"][0]["type"], "prefixd-cni",
        "deploy/'s conflist has prefixd-cni as the main plugin"
    );
    list["plugins"][0]["socket"] = socket.display().to_string().into();
    std::fs::write(src.join("10-prefixd.conflist"), list.to_string()).unwrap();
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{netns}"))
        .arg(env!("CARGO_BIN_EXE_prefixd"))
        .arg("install-cni")
        .arg("--bin-dir")
        .arg(&bin)
        .arg("--conf-dir")
        .arg(&conf)
        .arg("--plugin")
        .arg(env!("CARGO_BIN_EXE_prefixd-cni"))
        .arg("--conflist")
        .arg(src.join("10-prefixd.conflist"));
    if sysctls {
        c.arg("--node-sysctls");
    }
    c.envs(env.iter().copied());
    let out = c.stderr(Stdio::piped()).output().unwrap();
    assert!(
        out.status.success(),
        "prefixd install-cni: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in std::fs::read_dir("/usr/lib/cni")
        .expect("Debian's containernetworking-plugins are installed")
        .flatten()
    {
        let _ = std::os::unix::fs::symlink(p.path(), bin.join(p.file_name()));
    }
    (conf, bin)
}

/// What a node's data plane is, as `ip link`, `ip route show table all`, `ip rule` and
/// `nft list ruleset` would show it (through netlink and nft, sorted): for before/after diffs.
pub fn snapshot(netns: &str) -> Vec<String> {
    let ns = NetNs::named(netns).unwrap();
    let mut out = ns
        .run(|| {
            let mut nl = Netlink::open().unwrap();
            let mut v: Vec<String> = nl
                .links()
                .unwrap()
                .into_iter()
                .map(|l| format!("link {} {:?} mtu {} up {}", l.name, l.kind, l.mtu, l.up))
                .collect();
            v.extend(nl.routes(false).unwrap().into_iter().map(|r| {
                format!(
                    "route {} table {} via {:?} dev {:?}",
                    r.dst, r.table, r.gateway, r.oif
                )
            }));
            v.extend(nl.rules(false).unwrap().into_iter().map(|r| {
                format!(
                    "rule {} from {:?} to {:?} fwmark {:?} lookup {}",
                    r.priority, r.from, r.to, r.fwmark, r.table
                )
            }));
            v
        })
        .unwrap();
    let nft = super::vpc::sh_ok(netns, "nft list ruleset");
    out.extend(nft.lines().map(|l| format!("nft {}", l.trim())));
    out.sort();
    out
}

/// The lines of `after` not in `before`, and of `before` not in `after`.
pub fn diff(before: &[String], after: &[String]) -> (Vec<String>, Vec<String>) {
    let added = after
        .iter()
        .filter(|l| !before.contains(l))
        .cloned()
        .collect();
    let removed = before
        .iter()
        .filter(|l| !after.contains(l))
        .cloned()
        .collect();
    (added, removed)
}

/// An empty network namespace of this test process, deleted when it drops; named like the
/// emulated VPC's (`pv` + pid in base 36 + `_`), so that the leftovers of a dead run are
/// removed at the next start, which this does first.
pub struct ScratchNs {
    pub name: String,
    pub ns: NetNs,
}

impl ScratchNs {
    pub fn new(tag: &str) -> Self {
        prefixd::mock::vpc::remove_leftovers();
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
        let name = format!("pv{}_{tag}", String::from_utf8_lossy(&digits));
        let ns = NetNs::create(&name).expect("a scratch namespace (root)");
        Self { name, ns }
    }
}

impl Drop for ScratchNs {
    fn drop(&mut self) {
        let _ = NetNs::delete(&self.name);
    }
}
