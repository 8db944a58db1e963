//! The network config the runtime hands the plugin on stdin, and the settings read from it.
//!
//! Two roles, told apart by the entry's `type`:
//! * **main** (`"type": "prefixd-cni"`): the plugin wires the pod itself (veth, routes, rules);
//!   settings at the top level: `socket`, `timeout`, `vethPrefix` (used only when DEL must find
//!   the host end without the agent; default `eni`).
//! * **IPAM** (`"ipam": {"type": "prefixd-cni"}` under another main plugin such as ptp): the
//!   plugin only hands out the address; settings in the `ipam` section: `socket`, `timeout`,
//!   `gateway`, `routes`, `prefix_length`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{CniError, code, fail};
use super::{DEFAULT_SOCKET, SUPPORTED_VERSIONS};

/// The plugin's name in a config.
pub const PLUGIN: &str = "prefixd-cni";

/// The `ipam` section.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Ipam {
    #[serde(default)]
    pub(super) socket: Option<PathBuf>,
    #[serde(default)]
    pub(super) timeout: Option<String>,
    #[serde(default)]
    pub(super) gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub(super) routes: Option<Vec<Value>>,
    #[serde(default)]
    pub(super) prefix_length: Option<u8>,
}

/// The network config fields the plugin reads (others are ignored, as CNI asks).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct NetConf {
    #[serde(rename = "cniVersion")]
    pub(super) cni_version: String,
    pub(super) name: String,
    #[serde(rename = "type", default)]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) socket: Option<PathBuf>,
    #[serde(default)]
    pub(super) timeout: Option<String>,
    #[serde(rename = "vethPrefix", default)]
    pub(super) veth_prefix: Option<String>,
    #[serde(default)]
    pub(super) ipam: Option<Ipam>,
    #[serde(rename = "prevResult", default)]
    pub(super) prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub(super) valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Attachment {
    #[serde(rename = "containerID")]
    pub(super) container_id: String,
    pub(super) ifname: String,
}

/// The IPAM role's settings.
pub(super) struct IpamSettings {
    pub(super) gateway: Ipv4Addr,
    pub(super) routes: Vec<Value>,
    pub(super) prefix_length: u8,
}

/// The main role's settings.
pub(super) struct MainSettings {
    /// The host-side veth prefix to look for when the agent cannot say.
    pub(super) veth_prefix: String,
}

/// What the plugin is in this config.
pub(super) enum Role {
    /// It wires the pod.
    Main(MainSettings),
    /// It hands out the address under another main plugin.
    Ipam(IpamSettings),
}

/// Settings of both roles.
pub(super) struct Settings {
    pub(super) socket: PathBuf,
    pub(super) timeout: Duration,
    pub(super) role: Role,
}

fn timeout(field: &str, t: Option<&String>) -> Result<Duration, CniError> {
    match t {
        None => Ok(Duration::from_secs(30)),
        Some(t) => crate::core::config::parse_duration(field, t)
            .map_err(|e| fail(code::INVALID_CONFIG, format!("invalid {field}"), e.why)),
    }
}

pub(super) fn settings(conf: &NetConf) -> Result<Settings, CniError> {
    if conf.kind == PLUGIN {
        let prefix = conf.veth_prefix.clone().unwrap_or_else(|| "eni".into());
        if prefix.is_empty()
            || prefix.len() > 4
            || !prefix.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(fail(
                code::INVALID_CONFIG,
                "invalid vethPrefix",
                "1 to 4 letters or digits",
            ));
        }
        return Ok(Settings {
            socket: conf
                .socket
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            timeout: timeout("timeout", conf.timeout.as_ref())?,
            role: Role::Main(MainSettings {
                veth_prefix: prefix,
            }),
        });
    }
    let ipam = conf.ipam.clone().ok_or_else(|| {
        fail(
            code::INVALID_CONFIG,
            "the network config has no ipam section",
            "use \"type\": \"prefixd-cni\" as the main plugin, or add \"ipam\": {\"type\": \"prefixd-cni\"} under another",
        )
    })?;
    let prefix_length = ipam.prefix_length.unwrap_or(32);
    if !(1..=32).contains(&prefix_length) {
        return Err(fail(
            code::INVALID_CONFIG,
            "invalid ipam.prefix_length",
            "must be 1 to 32",
        ));
    }
    for r in ipam.routes.iter().flatten() {
        let dst = r["dst"].as_str().unwrap_or_default();
        if dst.parse::<ipnet::IpNet>().is_err() {
            return Err(fail(
                code::INVALID_CONFIG,
                "invalid ipam.routes",
                format!("route {r} needs a dst CIDR"),
            ));
        }
        // Checked before anything is allocated: a bad gateway found after the ADD would
        // leave an address held for a pod that never gets it.
        match r.get("gw") {
            None | Some(serde_json::Value::Null) => {}
            Some(g)
                if g.as_str()
                    .is_some_and(|g| g.parse::<std::net::IpAddr>().is_ok()) => {}
            Some(g) => {
                return Err(fail(
                    code::INVALID_CONFIG,
                    "invalid ipam.routes",
                    format!("route {r}: gw {g} is not an IP address"),
                ));
            }
        }
    }
    Ok(Settings {
        socket: ipam
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
        timeout: timeout("ipam.timeout", ipam.timeout.as_ref())?,
        role: Role::Ipam(IpamSettings {
            gateway: ipam.gateway.unwrap_or(Ipv4Addr::new(169, 254, 1, 1)),
            routes: ipam
                .routes
                .unwrap_or_else(|| vec![json!({"dst": "0.0.0.0/0"})]),
            prefix_length,
        }),
    })
}

/// Checks a node's conflist as a runtime would hand it to this plugin: every plugin entry that
/// uses it (as the main plugin, or as the IPAM of another) gets the list's `cniVersion` and
/// `name` and must parse, with valid settings. Returns how many entries use the plugin.
pub fn check_conflist(bytes: &[u8]) -> Result<usize, CniError> {
    let list: Value = serde_json::from_slice(bytes)
        .map_err(|e| fail(code::DECODE, "cannot decode the conflist", e.to_string()))?;
    let version = list["cniVersion"].as_str().unwrap_or_default();
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(fail(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {version:?} is not supported"),
            "",
        ));
    }
    let mut n = 0;
    for p in list["plugins"].as_array().into_iter().flatten() {
        if p["type"] != PLUGIN && p["ipam"]["type"] != PLUGIN {
            continue;
        }
        let mut conf = p.clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        let parsed: NetConf = serde_json::from_value(conf)
            .map_err(|e| fail(code::INVALID_CONFIG, "invalid plugin entry", e.to_string()))?;
        settings(&parsed)?;
        n += 1;
    }
    Ok(n)
}
