//! The network config the runtime hands the plugin on stdin, and the settings read from it.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{CniError, code, fail};
use super::{DEFAULT_SOCKET, SUPPORTED_VERSIONS};

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

pub(super) struct Settings {
    pub(super) socket: PathBuf,
    pub(super) timeout: Duration,
    pub(super) gateway: Ipv4Addr,
    pub(super) routes: Vec<Value>,
    pub(super) prefix_length: u8,
}

pub(super) fn settings(conf: &NetConf) -> Result<Settings, CniError> {
    let ipam = conf.ipam.clone().ok_or_else(|| {
        fail(
            code::INVALID_CONFIG,
            "the network config has no ipam section",
            "add \"ipam\": {\"type\": \"prefixd-cni\"}",
        )
    })?;
    let timeout = match &ipam.timeout {
        None => Duration::from_secs(30),
        Some(t) => crate::core::config::parse_duration("ipam.timeout", t)
            .map_err(|e| fail(code::INVALID_CONFIG, "invalid ipam.timeout", e.why))?,
    };
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
    }
    Ok(Settings {
        socket: ipam.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
        timeout,
        gateway: ipam.gateway.unwrap_or(Ipv4Addr::new(169, 254, 1, 1)),
        routes: ipam
            .routes
            .unwrap_or_else(|| vec![json!({"dst": "0.0.0.0/0"})]),
        prefix_length,
    })
}

/// Checks a node's conflist as a runtime would hand it to this plugin: every plugin entry whose
/// `ipam.type` is `prefixd-cni` gets the list's `cniVersion` and `name` and must parse, with
/// valid settings. Returns how many entries use the plugin.
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
        if p["ipam"]["type"] != "prefixd-cni" {
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
