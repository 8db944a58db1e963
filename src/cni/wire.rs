//! The main role: the plugin wires the pod itself ([`crate::hostnet::pod`]), with the address,
//! routing table, MTU and veth prefix the agent gives. An ADD whose wiring fails undoes it and
//! gives the address back: no address is handed out to a pod that cannot route. DEL detaches
//! the pod (rules, route) with what the pod's namespace and prevResult say, so that it works
//! while the agent is down; releases the address and hands the veth's deletion (tens of
//! milliseconds of RCU grace period) to the agent, which does it after answering; when the
//! agent cannot be reached, it deletes the veth itself and the release waits in
//! [`crate::ipc::pending`], surviving the agent's downtime without the runtime's retries.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::command::Call;
use super::conf::Role;
use super::error::{CniError, code, fail};
use crate::hostnet::netlink::mac_text;
use crate::hostnet::pod::{GATEWAY, GATEWAY6, PodSpec, host_net, host_veth_name};
use crate::ipc::{ClientError, HostEnd, Op, PodNet, Reply, pending};

fn wiring_failed(what: &str, e: impl std::fmt::Display) -> CniError {
    fail(code::IO_FAILURE, format!("{what} failed"), e.to_string())
}

fn pod_net(net: Option<PodNet>) -> Result<PodNet, CniError> {
    net.ok_or_else(|| {
        fail(
            code::IO_FAILURE,
            "the agent did not say how to wire the pod",
            "the agent is older than this plugin: upgrade them together",
        )
    })
}

/// The host end named in prevResult (the interface without a sandbox).
fn prev_host_veth(c: &Call) -> Option<String> {
    c.conf.prev_result.as_ref()?["interfaces"]
        .as_array()?
        .iter()
        .find(|i| {
            i.get("sandbox")
                .is_none_or(|s| s.as_str().is_none_or(str::is_empty))
        })
        .and_then(|i| i["name"].as_str())
        .map(str::to_owned)
}

fn result(c: &Call, spec: &PodSpec, host_mac: &str, pod_mac: &str) -> Value {
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for a in spec.addresses() {
        let (gw, default, version) = match a {
            IpAddr::V4(_) => (IpAddr::V4(GATEWAY), "0.0.0.0/0", "4"),
            IpAddr::V6(_) => (IpAddr::V6(GATEWAY6), "::/0", "6"),
        };
        let mut ip = json!({
            "address": host_net(a).to_string(),
            "interface": 1,
            "gateway": gw.to_string(),
        });
        if c.v < (1, 0, 0) {
            ip["version"] = json!(version);
        }
        ips.push(ip);
        routes.push(json!({ "dst": default, "gw": gw.to_string() }));
    }
    json!({
        "cniVersion": c.conf.cni_version,
        "interfaces": [
            { "name": spec.host_veth, "mac": host_mac },
            { "name": spec.ifname, "mac": pod_mac, "sandbox": spec.netns.display().to_string() },
        ],
        "ips": ips,
        "routes": routes,
        "dns": {},
    })
}

/// What ADD wires and CHECK checks, from the agent's answer.
fn pod_spec<'a>(
    netns: &'a str,
    ifname: &'a str,
    host_veth: &'a str,
    r: &Reply,
    net: &PodNet,
) -> PodSpec<'a> {
    PodSpec {
        netns: Path::new(netns),
        ifname,
        host_veth,
        address: r.address,
        address6: r.address6,
        egress4: net.egress4,
        mtu: net.mtu,
        table: net.table,
    }
}

pub(super) fn execute(command: &str, c: &Call) -> Result<String, CniError> {
    let Role::Main(s) = &c.s.role else {
        unreachable!("dispatched by role")
    };
    match command {
        "ADD" => {
            let netns = c.need("CNI_NETNS").map_err(|_| {
                fail(
                    code::INVALID_ENV,
                    "CNI_NETNS is not set",
                    "ADD needs the container's network namespace",
                )
            })?;
            let ifname = c.need("CNI_IFNAME")?;
            let container = c.need("CNI_CONTAINERID")?;
            let (ns, name) = c.pod()?;
            let key = c.key()?;
            let r = c.agent(c.add_op()?, c.add_timeout())?;
            if r.address.is_none() && r.address6.is_none() {
                return Err(fail(
                    code::IO_FAILURE,
                    "the agent answered ADD without an address",
                    "",
                ));
            }
            let net = pod_net(r.pod_net.clone())?;
            let host_veth = host_veth_name(&net.veth_prefix, &ns, &name, &container);
            let spec = pod_spec(&netns, &ifname, &host_veth, &r, &net);
            let shown: Vec<String> = spec.addresses().iter().map(|a| a.to_string()).collect();
            match c.host.wire(&spec) {
                Ok(w) => {
                    Ok(result(c, &spec, &mac_text(&w.host_mac), &mac_text(&w.pod_mac)).to_string())
                }
                Err(e) => {
                    if let Ok(d) =
                        c.host
                            .detach(Some(spec.netns), &ifname, &host_veth, &spec.addresses())
                        && let Some((name, index)) = d.host_end
                    {
                        let _ = c.host.unlink(&name, index);
                    }
                    let _ = c.agent(Op::Del { key, unlink: None }, Duration::from_secs(10));
                    Err(wiring_failed(
                        &format!("wiring {} into the pod", shown.join(" and ")),
                        e,
                    ))
                }
            }
        }
        "DEL" => {
            let key = c.key()?;
            let ifname = c.need("CNI_IFNAME")?;
            let container = c.need("CNI_CONTAINERID")?;
            let (ns, name) = c.pod()?;
            let netns = c.var("CNI_NETNS")?.filter(|n| !n.is_empty());
            let host_veth = prev_host_veth(c)
                .unwrap_or_else(|| host_veth_name(&s.veth_prefix, &ns, &name, &container));
            let hints = c.prev_addresses();
            let d = c
                .host
                .detach(netns.as_deref().map(Path::new), &ifname, &host_veth, &hints)
                .map_err(|e| wiring_failed("removing the pod's network", e))?;
            let unlink = d.host_end.as_ref().map(|(name, index)| HostEnd {
                name: name.clone(),
                index: *index,
            });
            // The veth pair itself: the agent deletes it after answering when it can; here
            // otherwise (a veth's deletion waits for an RCU grace period).
            let unlink_here = |c: &Call| -> Result<(), CniError> {
                if let Some((name, index)) = &d.host_end {
                    c.host
                        .unlink(name, *index)
                        .map_err(|e| wiring_failed("removing the pod's veth", e))?;
                }
                Ok(())
            };
            match c.host.agent(
                &c.s.socket,
                Op::Del {
                    key: key.clone(),
                    unlink,
                },
                Duration::from_secs(10),
            ) {
                Ok(r) => match r.error {
                    None => {
                        if r.unlinking != Some(true) {
                            unlink_here(c)?;
                        }
                        Ok(String::new())
                    }
                    Some(e) => {
                        unlink_here(c)?;
                        Err(super::error::reply_error(&e))
                    }
                },
                // The agent is down or restarting: the pod's network goes here, and the release
                // waits for it on disk.
                Err(e @ (ClientError::Connect { .. } | ClientError::Io(_))) => {
                    unlink_here(c)?;
                    let dir = pending::dir_of(&c.s.socket);
                    c.host
                        .defer_release(&dir, &key)
                        .map(|_| String::new())
                        .map_err(|w| {
                            fail(
                                code::TRY_AGAIN,
                                "the pod's network is removed; its address could not be released",
                                format!("{e}; recording it in {} failed: {w}", dir.display()),
                            )
                        })
                }
                Err(e) => {
                    unlink_here(c)?;
                    Err(super::error::agent_error(e))
                }
            }
        }
        "CHECK" => {
            let key = c.key()?;
            let netns = c.need("CNI_NETNS")?;
            let ifname = c.need("CNI_IFNAME")?;
            let container = c.need("CNI_CONTAINERID")?;
            let (ns, name) = c.pod()?;
            let r = c.checked(&key)?;
            let net = pod_net(r.pod_net.clone())?;
            let host_veth = host_veth_name(&net.veth_prefix, &ns, &name, &container);
            c.host
                .check(&pod_spec(&netns, &ifname, &host_veth, &r, &net))
                .map_err(|e| {
                    fail(
                        code::IO_FAILURE,
                        "the pod's network is not as ADD made it",
                        e.to_string(),
                    )
                })?;
            Ok(String::new())
        }
        "GC" => {
            let keep = c.gc_keep()?;
            let r = c.agent(
                Op::Gc {
                    network: c.conf.name.clone(),
                    keep,
                },
                Duration::from_secs(30),
            )?;
            let prefix = r
                .pod_net
                .map(|n| n.veth_prefix)
                .unwrap_or_else(|| s.veth_prefix.clone());
            c.host
                .collect(&prefix, &r.kept.unwrap_or_default())
                .map_err(|e| wiring_failed("removing leftover host ends", e))?;
            Ok(String::new())
        }
        _ => unreachable!("commands are checked in run"),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use serde_json::Value;

    use super::super::host::Host;
    use super::super::run;
    use super::*;
    use crate::core::PodKey;
    use crate::hostnet::pod::{Detached, PodError, Wired};
    use crate::ipc::Reply;
    use std::net::Ipv4Addr;

    /// A host that records what the plugin asked of it; the agent answers `reply`, or is
    /// unreachable when `None`; wiring fails when `wire_fails`.
    struct Fake {
        reply: Option<Reply>,
        wire_fails: bool,
        calls: RefCell<Vec<String>>,
        ops: RefCell<Vec<Op>>,
    }

    impl Fake {
        fn new(reply: Option<Reply>) -> Self {
            Self {
                reply,
                wire_fails: false,
                calls: RefCell::new(Vec::new()),
                ops: RefCell::new(Vec::new()),
            }
        }
        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    impl Host for Fake {
        fn agent(&self, _: &Path, op: Op, _: Duration) -> Result<Reply, ClientError> {
            self.ops.borrow_mut().push(op);
            self.reply.clone().ok_or_else(|| ClientError::Connect {
                path: "/x".into(),
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            })
        }
        fn wire(&self, spec: &PodSpec) -> Result<Wired, PodError> {
            self.calls.borrow_mut().push(format!(
                "wire {} {} {} table {} mtu {}",
                spec.ifname,
                spec.host_veth,
                spec.addresses()[0],
                spec.table,
                spec.mtu
            ));
            if self.wire_fails {
                return Err(PodError::Missing("refused".into()));
            }
            Ok(Wired {
                host_mac: [2, 0, 0, 0, 0, 1],
                pod_mac: [2, 0, 0, 0, 0, 2],
            })
        }
        fn detach(
            &self,
            netns: Option<&Path>,
            ifname: &str,
            host_veth: &str,
            hints: &[IpAddr],
        ) -> Result<Detached, PodError> {
            let address = hints.first().copied();
            self.calls.borrow_mut().push(format!(
                "detach {:?} {ifname} {host_veth} {address:?}",
                netns.map(Path::to_path_buf)
            ));
            Ok(Detached {
                addresses: hints.to_vec(),
                host_end: Some((host_veth.to_owned(), 7)),
            })
        }
        fn unlink(&self, name: &str, index: u32) -> Result<bool, PodError> {
            self.calls
                .borrow_mut()
                .push(format!("unlink {name} {index}"));
            Ok(true)
        }
        fn check(&self, spec: &PodSpec) -> Result<(), PodError> {
            self.calls.borrow_mut().push(format!(
                "check {} table {}",
                spec.addresses()[0],
                spec.table
            ));
            Ok(())
        }
        fn collect(&self, prefix: &str, keep: &[IpAddr]) -> Result<Vec<String>, PodError> {
            self.calls
                .borrow_mut()
                .push(format!("collect {prefix} {keep:?}"));
            Ok(Vec::new())
        }
        fn defer_release(&self, dir: &Path, key: &PodKey) -> std::io::Result<()> {
            self.calls
                .borrow_mut()
                .push(format!("defer {} {key}", dir.display()));
            Ok(())
        }
    }

    const MAIN: &str = r#"{"cniVersion":"1.1.0","name":"prefixd","type":"prefixd-cni","socket":"/run/p/agent.sock"}"#;

    fn env(command: &str) -> impl Fn(&str) -> Option<String> {
        let command = command.to_owned();
        move |k: &str| {
            Some(match k {
                "CNI_COMMAND" => command.clone(),
                "CNI_CONTAINERID" => "c1".into(),
                "CNI_IFNAME" => "eth0".into(),
                "CNI_NETNS" => "/run/netns/pod".into(),
                "CNI_ARGS" => "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1".into(),
                _ => return None,
            })
        }
    }

    fn leased(table: u32) -> Reply {
        Reply {
            v: 1,
            address: Some(Ipv4Addr::new(10, 0, 32, 5)),
            pod_net: Some(PodNet {
                table,
                mtu: 1500,
                veth_prefix: "eni".into(),
                egress4: None,
            }),
            ..Reply::default()
        }
    }

    #[test]
    fn add_wires_the_pod_with_the_agents_table_and_prints_the_veth_pair() {
        let h = Fake::new(Some(leased(3)));
        let o = run(&env("ADD"), MAIN.as_bytes(), &h);
        assert_eq!(o.exit, 0, "{}", o.stdout);
        let veth = host_veth_name("eni", "default", "web-1", "c1");
        assert_eq!(
            h.calls(),
            [format!("wire eth0 {veth} 10.0.32.5 table 3 mtu 1500")]
        );
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["ips"][0]["address"], "10.0.32.5/32");
        assert_eq!(v["ips"][0]["gateway"], "169.254.1.1");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert_eq!(v["interfaces"][0]["name"], veth.as_str());
        assert!(v["interfaces"][0].get("sandbox").is_none());
        assert_eq!(v["interfaces"][1]["sandbox"], "/run/netns/pod");
        assert_eq!(v["interfaces"][1]["mac"], "02:00:00:00:00:02");
        assert_eq!(v["routes"][0]["gw"], "169.254.1.1");
    }

    #[test]
    fn a_failed_wiring_is_undone_and_the_address_given_back() {
        let mut h = Fake::new(Some(leased(2)));
        h.wire_fails = true;
        let o = run(&env("ADD"), MAIN.as_bytes(), &h);
        assert_eq!(o.exit, 1);
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["code"], code::IO_FAILURE);
        assert!(v["details"].as_str().unwrap().contains("refused"), "{v}");
        assert!(h.calls()[1].starts_with("detach"), "{:?}", h.calls());
        assert!(h.calls()[2].starts_with("unlink"), "{:?}", h.calls());
        assert!(
            matches!(h.ops.borrow().last(), Some(Op::Del { .. })),
            "the address went back: {:?}",
            h.ops.borrow()
        );
    }

    #[test]
    fn an_agent_without_pod_net_is_refused_before_any_wiring() {
        let mut r = leased(2);
        r.pod_net = None;
        let h = Fake::new(Some(r));
        let o = run(&env("ADD"), MAIN.as_bytes(), &h);
        assert_eq!(o.exit, 1);
        assert!(h.calls().is_empty());
    }

    #[test]
    fn del_unwires_without_the_agent_and_records_the_release() {
        let h = Fake::new(None);
        let prev = r#"{"cniVersion":"1.1.0","name":"prefixd","type":"prefixd-cni","socket":"/run/p/agent.sock",
            "prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"enicustom0000"},{"name":"eth0","sandbox":"/run/netns/pod"}],
            "ips":[{"address":"10.0.32.5/32","interface":1}]}}"#;
        let o = run(&env("DEL"), prev.as_bytes(), &h);
        assert_eq!(o.exit, 0, "{}", o.stdout);
        assert_eq!(
            h.calls(),
            [
                "detach Some(\"/run/netns/pod\") eth0 enicustom0000 Some(10.0.32.5)".to_owned(),
                "unlink enicustom0000 7".to_owned(),
                "defer /run/p/pending-release prefixd/c1/eth0".to_owned(),
            ]
        );
        // Without prevResult the name is computed, with the config's prefix; an agent that
        // takes the veth's deletion leaves the plugin nothing else to do.
        let h = Fake::new(Some(Reply {
            v: 1,
            released: Some(1),
            unlinking: Some(true),
            ..Reply::default()
        }));
        let conf = MAIN.replace("\"socket\"", "\"vethPrefix\":\"pod\",\"socket\"");
        assert_eq!(run(&env("DEL"), conf.as_bytes(), &h).exit, 0);
        let veth = host_veth_name("pod", "default", "web-1", "c1");
        assert!(h.calls()[0].contains(&veth), "{:?}", h.calls());
        assert_eq!(h.calls().len(), 1, "the agent unlinks; nothing recorded");
        assert!(
            matches!(&h.ops.borrow()[0], Op::Del { unlink: Some(e), .. } if e.name == veth && e.index == 7),
            "{:?}",
            h.ops.borrow()
        );
        // An agent that does not take it: the plugin deletes the veth itself.
        let h = Fake::new(Some(Reply {
            v: 1,
            released: Some(1),
            ..Reply::default()
        }));
        assert_eq!(run(&env("DEL"), conf.as_bytes(), &h).exit, 0);
        assert_eq!(h.calls()[1], format!("unlink {veth} 7"));
    }

    #[test]
    fn check_compares_the_wiring_and_gc_collects_leftover_host_ends() {
        let h = Fake::new(Some(leased(4)));
        let conf = MAIN.replace(
            "}",
            r#","prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.32.5/32"}]}}"#,
        );
        let o = run(&env("CHECK"), conf.as_bytes(), &h);
        assert_eq!(o.exit, 0, "{}", o.stdout);
        assert_eq!(h.calls(), ["check 10.0.32.5 table 4"]);
        // A prevResult with another address: refused before the kernel is looked at.
        let h = Fake::new(Some(leased(4)));
        let o = run(
            &env("CHECK"),
            conf.replace("10.0.32.5", "10.0.32.6").as_bytes(),
            &h,
        );
        assert_eq!(o.exit, 1);
        assert!(h.calls().is_empty());
        let mut r = leased(0);
        r.kept = Some(vec![IpAddr::V4(Ipv4Addr::new(10, 0, 32, 5))]);
        r.released = Some(2);
        let h = Fake::new(Some(r));
        let gc = MAIN.replace(
            "}",
            r#","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        );
        assert_eq!(run(&env("GC"), gc.as_bytes(), &h).exit, 0);
        assert_eq!(h.calls(), ["collect eni [10.0.32.5]"]);
    }
}
