//! The IPAM role, under another main plugin (ptp, bridge): the address from the agent, and the
//! gateway and routes of the config; the main plugin does the wiring.

use std::time::Duration;

use serde_json::{Value, json};

use super::command::Call;
use super::conf::Role;
use super::error::{CniError, code, fail};
use crate::ipc::Op;

pub(super) fn execute(command: &str, c: &Call) -> Result<String, CniError> {
    let Role::Ipam(s) = &c.s.role else {
        unreachable!("dispatched by role")
    };
    match command {
        "ADD" => {
            c.need("CNI_NETNS").map_err(|_| {
                fail(
                    code::INVALID_ENV,
                    "CNI_NETNS is not set",
                    "ADD needs the container's network namespace",
                )
            })?;
            let r = c.agent(c.add_op()?, c.add_timeout())?;
            let addr = r.address.ok_or_else(|| match r.address6 {
                Some(six) => fail(
                    code::INVALID_CONFIG,
                    format!(
                        "the agent gave {six}, an IPv6 address, and the IPAM role serves IPv4 only"
                    ),
                    "on an IPv6 node use prefixd-cni as the main plugin (it wires the pod itself)",
                ),
                None => fail(
                    code::IO_FAILURE,
                    "the agent answered ADD without an address",
                    "",
                ),
            })?;
            let mut ip = json!({
                "address": format!("{addr}/{}", s.prefix_length),
                "gateway": s.gateway.to_string(),
            });
            if c.v < (1, 0, 0) {
                ip["version"] = json!("4");
            }
            let out: Value = json!({
                "cniVersion": c.conf.cni_version,
                "ips": [ip],
                "routes": s.routes,
                "dns": {},
            });
            Ok(out.to_string())
        }
        "DEL" => {
            c.agent(
                Op::Del {
                    key: c.key()?,
                    unlink: None,
                },
                Duration::from_secs(10),
            )?;
            Ok(String::new())
        }
        "CHECK" => {
            let key = c.key()?;
            c.checked(&key)?;
            Ok(String::new())
        }
        "GC" => {
            let keep = c.gc_keep()?;
            c.agent(
                Op::Gc {
                    network: c.conf.name.clone(),
                    keep,
                },
                Duration::from_secs(30),
            )?;
            Ok(String::new())
        }
        _ => unreachable!("commands are checked in run"),
    }
}
