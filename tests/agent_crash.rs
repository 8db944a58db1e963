//! Crash safety with real processes: `prefixd mock-ec2` and `prefixd agent` as children, an
//! ADD/DEL storm through the socket, and SIGKILL of the agent at random moments, repeatedly.
//! After every restart:
//! * every ADD the storm was told succeeded (and did not DEL) still holds the same address;
//! * no address is held by two keys;
//! * after one resync, EC2 holds nothing the agent does not know about (ENIs and prefixes of the
//!   node match, and no detached ENI of the node is left);
//!
//! and a final SIGTERM drains, writes the checkpoint and exits 0.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prefixd::core::PodKey;
use prefixd::ipc::{self, Op};
use serde_json::Value;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_owned()))
}

fn start_mock() -> (Proc, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_prefixd"))
        .args(["mock-ec2", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    (
        Proc(child),
        v["endpoint"].as_str().unwrap().to_owned(),
        v["names"]["node"].as_str().unwrap().to_owned(),
    )
}

fn start_agent(endpoint: &str, node: &str, dir: &Path, intro: SocketAddr) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_prefixd"))
        .arg("agent")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("INSTANCE_ID", node)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", "us-west-2")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("ENABLE_HOST_NETWORKING", "false")
        .env("CHECKPOINT_PATH", dir.join("checkpoint.json"))
        .env("SOCKET_PATH", dir.join("agent.sock"))
        .env("INTROSPECTION_BIND_ADDRESS", intro.to_string())
        .env("METRICS_BIND_ADDRESS", "127.0.0.1:0")
        .env("POOL_TICK", "50ms")
        .env("EC2_API_QPS", "100")
        .env("IP_COOLDOWN_PERIOD", "1s")
        .env("RELEASE_DELAY", "500ms")
        .env("WARM_PREFIX_TARGET", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, _)) = get(intro, "/readyz") {
            return p;
        }
        assert!(Instant::now() < deadline, "the agent did not get ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn key(i: u64) -> PodKey {
    PodKey::new("net", format!("c{i}"), "eth0").unwrap()
}

#[derive(Default)]
struct Ledger {
    /// Told: key holds address.
    held: BTreeMap<u64, Ipv4Addr>,
    /// Outcome unknown (the agent died mid-request).
    unsure: HashSet<u64>,
}

fn storm(socket: PathBuf, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>, seed: u64, keys: u64) {
    let mut x = seed | 1;
    while !stop.load(Ordering::Relaxed) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = x % keys;
        let holds = ledger.lock().unwrap().held.contains_key(&k);
        if ledger.lock().unwrap().unsure.contains(&k) {
            continue;
        }
        let op = if holds {
            Op::Del {
                key: key(k),
                unlink: None,
            }
        } else {
            Op::Add {
                key: key(k),
                pod_namespace: "ns".into(),
                pod_name: format!("p{k}"),
                timeout_ms: 5_000,
            }
        };
        ledger.lock().unwrap().unsure.insert(k);
        let r = ipc::call(&socket, op, Duration::from_secs(10));
        let mut l = ledger.lock().unwrap();
        match r {
            Ok(reply) if reply.error.is_none() => {
                l.unsure.remove(&k);
                if holds {
                    l.held.remove(&k);
                } else {
                    l.held
                        .insert(k, reply.address.expect("ADD answers an address"));
                }
            }
            // A clear refusal (timeout, not ready): nothing changed for this key... unless the
            // agent died between doing it and answering: keep it unsure only on I/O errors.
            Ok(_) => {
                l.unsure.remove(&k);
            }
            Err(_) => {
                drop(l);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Resolves unsure keys by asking the restarted agent, then checks every invariant.
fn verify(socket: &Path, intro: SocketAddr, ledger: &Mutex<Ledger>, mock_ep: &str, node: &str) {
    let mut l = ledger.lock().unwrap();
    // A key whose DEL was in flight when the agent died is unsure, not told: skip it here.
    for (k, addr) in l.held.iter().filter(|(k, _)| !l.unsure.contains(k)) {
        let r = ipc::call(socket, Op::Check { key: key(*k) }, Duration::from_secs(5)).unwrap();
        assert_eq!(
            r.address,
            Some(*addr),
            "pod c{k} was told {addr} and lost it"
        );
    }
    let unsure: Vec<u64> = l.unsure.drain().collect();
    for k in unsure {
        let r = ipc::call(socket, Op::Check { key: key(k) }, Duration::from_secs(5)).unwrap();
        if let Some(a) = r.address {
            l.held.insert(k, a);
        } else {
            l.held.remove(&k);
        }
    }
    let (s, body) = get(intro, "/v1/allocations").unwrap();
    assert_eq!(s, 200);
    let allocs: Vec<Value> = serde_json::from_str(&body).unwrap();
    let mut by_addr = HashMap::new();
    for a in &allocs {
        let addr = a["address"].as_str().unwrap().to_owned();
        assert!(
            by_addr.insert(addr.clone(), a["key"].clone()).is_none(),
            "{addr} is held twice"
        );
    }
    assert_eq!(
        allocs.len(),
        l.held.len(),
        "the agent holds allocations nobody was told about"
    );

    // EC2 against the agent, after one resync (the agent resynced at start).
    let ep: SocketAddr = mock_ep.trim_start_matches("http://").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ours = agent_prefixes(intro);
        let theirs = ec2_prefixes(ep, node);
        if ours == theirs && theirs.2 == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "EC2 and the agent disagree: agent {ours:?} / EC2 {theirs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn agent_prefixes(intro: SocketAddr) -> (Vec<String>, Vec<String>, usize) {
    let (_, body) = get(intro, "/v1/enis").unwrap();
    let enis: Vec<Value> = serde_json::from_str(&body).unwrap();
    let mut ids: Vec<String> = enis
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let mut prefixes: Vec<String> = enis
        .iter()
        .flat_map(|e| {
            e["prefixes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["cidr"].as_str().unwrap().to_owned())
        })
        .collect();
    ids.sort();
    prefixes.sort();
    (ids, prefixes, 0)
}

/// The node's ENIs and prefixes as EC2 lists them, and how many detached ENIs exist.
fn ec2_prefixes(ep: SocketAddr, node: &str) -> (Vec<String>, Vec<String>, usize) {
    let post = |body: String| -> String {
        let mut s = TcpStream::connect(ep).unwrap();
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let grab = |xml: &str, tag: &str| -> Vec<String> {
        xml.split(&format!("<{tag}>"))
            .skip(1)
            .map(|s| s.split(&format!("</{tag}>")).next().unwrap().to_owned())
            .collect()
    };
    let attached = post(format!(
        "Action=DescribeNetworkInterfaces&Version=2016-11-15&Filter.1.Name=attachment.instance-id&Filter.1.Value.1={node}"
    ));
    let mut ids = grab(&attached, "networkInterfaceId");
    let mut prefixes = grab(&attached, "ipv4Prefix");
    ids.sort();
    prefixes.sort();
    let detached = post("Action=DescribeNetworkInterfaces&Version=2016-11-15&Filter.1.Name=status&Filter.1.Value.1=available".into());
    (ids, prefixes, grab(&detached, "networkInterfaceId").len())
}

#[test]
fn sigkill_during_an_add_del_storm_loses_nothing() {
    let (_mock, endpoint, node) = start_mock();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let intro: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut agent = start_agent(&endpoint, &node, dir.path(), intro);
    for round in 0..6u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (s, l, st) = (socket.clone(), ledger.clone(), stop.clone());
                std::thread::spawn(move || storm(s, l, st, round * 31 + w * 7 + 1, 120))
            })
            .collect();
        // Let the storm run a while, then SIGKILL the agent mid-flight.
        std::thread::sleep(Duration::from_millis(300 + (round * 137) % 500));
        agent.0.kill().unwrap(); // SIGKILL
        agent.0.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        drop(agent);
        agent = start_agent(&endpoint, &node, dir.path(), intro);
        verify(&socket, intro, &ledger, &endpoint, &node);
        let held = ledger.lock().unwrap().held.len();
        eprintln!("round {round}: {held} pods hold addresses after the restart");
    }
    assert!(
        !ledger.lock().unwrap().held.is_empty(),
        "the storm allocated nothing"
    );

    // SIGTERM: drains, writes the checkpoint, exits 0.
    let pid = agent.0.id();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = agent.0.wait().unwrap();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    let cp: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("checkpoint.json")).unwrap())
            .unwrap();
    assert_eq!(cp["version"], 2);
    assert_eq!(
        cp["allocations"].as_array().unwrap().len(),
        ledger.lock().unwrap().held.len()
    );
    assert!(
        !socket.exists(),
        "the socket file is removed on a clean exit"
    );
}

/// Discovery through IMDSv2 as on a real node: no INSTANCE_ID and no AWS_REGION, IMDS pointed
/// at the mock's loopback listener; aws-config's IMDS client finds the instance and region.
#[test]
fn discovers_the_node_through_imds() {
    let (_mock, endpoint, node) = start_mock();
    let dir = tempfile::tempdir().unwrap();
    let intro: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_prefixd"))
        .arg("agent")
        .env_clear()
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("ENABLE_HOST_NETWORKING", "false")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("CHECKPOINT_PATH", dir.path().join("checkpoint.json"))
        .env("SOCKET_PATH", dir.path().join("agent.sock"))
        .env("INTROSPECTION_BIND_ADDRESS", intro.to_string())
        .env("METRICS_BIND_ADDRESS", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _agent = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(get(intro, "/readyz"), Some((200, _))) {
        assert!(
            Instant::now() < deadline,
            "the agent did not get ready through IMDS"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, cfg) = get(intro, "/v1/config").unwrap();
    let v: Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(v["node"]["instance"], node.as_str());
    assert_eq!(v["node"]["instance_type"], "m5.large");
}
