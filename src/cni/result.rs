//! The ADD result, in the shape of the config's spec version (0.3/0.4 ips carry `version`).

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::conf::{NetConf, Settings};

pub(super) fn result(conf: &NetConf, s: &Settings, addr: Ipv4Addr, v: (u32, u32, u32)) -> Value {
    let mut ip = json!({
        "address": format!("{addr}/{}", s.prefix_length),
        "gateway": s.gateway.to_string(),
    });
    if v < (1, 0, 0) {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": conf.cni_version,
        "ips": [ip],
        "routes": s.routes,
        "dns": {},
    })
}
