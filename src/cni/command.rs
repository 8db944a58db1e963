//! What each CNI_COMMAND does: ADD, DEL, CHECK, GC and STATUS, over the agent socket.

use std::time::Duration;

use super::conf::{NetConf, settings};
use super::error::{CniError, agent_error, code, fail, reply_error};
use super::result::result;
use super::{Transport, version_parts};
use crate::core::PodKey;
use crate::ipc::{Op, Reply};

/// `K8S_POD_NAMESPACE=..;K8S_POD_NAME=..` → (namespace, name).
pub(super) fn pod_identity(args: Option<String>) -> Result<(String, String), CniError> {
    let (mut ns, mut name) = (String::new(), String::new());
    for part in args
        .iter()
        .flat_map(|a| a.split(';'))
        .filter(|p| !p.is_empty())
    {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            fail(
                code::INVALID_ENV,
                "invalid CNI_ARGS",
                format!("{part:?} is not KEY=VALUE"),
            )
        })?;
        match k {
            "K8S_POD_NAMESPACE" => ns = v.to_owned(),
            "K8S_POD_NAME" => name = v.to_owned(),
            _ => {}
        }
    }
    Ok((ns, name))
}

pub(super) fn attachment_key(
    conf: &NetConf,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PodKey, CniError> {
    let need = |var: &str| {
        env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
            fail(
                code::INVALID_ENV,
                format!("{var} is not set"),
                "the container runtime must set it",
            )
        })
    };
    let container = need("CNI_CONTAINERID")?;
    let ifname = need("CNI_IFNAME")?;
    PodKey::new(conf.name.clone(), container, ifname).map_err(|e| {
        let c = if e.to_string().contains("network name") {
            code::INVALID_CONFIG
        } else {
            code::INVALID_ENV
        };
        fail(c, "invalid attachment", e.to_string())
    })
}

pub(super) fn execute(
    command: &str,
    conf: &NetConf,
    env: &dyn Fn(&str) -> Option<String>,
    transport: Transport,
) -> Result<String, CniError> {
    let s = settings(conf)?;
    let rpc_timeout = s.timeout + Duration::from_secs(5);
    let call = |op: Op, t: Duration| -> Result<Reply, CniError> {
        let r = transport(&s.socket, op, t).map_err(agent_error)?;
        match &r.error {
            Some(e) => Err(reply_error(e)),
            None => Ok(r),
        }
    };
    let v = version_parts(&conf.cni_version).unwrap_or((1, 1, 0));
    match command {
        "ADD" => {
            if env("CNI_NETNS").is_none_or(|n| n.is_empty()) {
                return Err(fail(
                    code::INVALID_ENV,
                    "CNI_NETNS is not set",
                    "ADD needs the container's network namespace",
                ));
            }
            let key = attachment_key(conf, env)?;
            let (ns, name) = pod_identity(env("CNI_ARGS"))?;
            let r = call(
                Op::Add {
                    key,
                    pod_namespace: ns,
                    pod_name: name,
                    timeout_ms: s.timeout.as_millis() as u64,
                },
                rpc_timeout,
            )?;
            let addr = r.address.ok_or_else(|| {
                fail(
                    code::IO_FAILURE,
                    "the agent answered ADD without an address",
                    "",
                )
            })?;
            Ok(result(conf, &s, addr, v).to_string())
        }
        "DEL" => {
            let key = attachment_key(conf, env)?;
            call(Op::Del { key }, Duration::from_secs(10))?;
            Ok(String::new())
        }
        "CHECK" => {
            let key = attachment_key(conf, env)?;
            let r = call(Op::Check { key: key.clone() }, Duration::from_secs(10))?;
            let held = r.address.ok_or_else(|| {
                fail(
                    code::UNKNOWN_CONTAINER,
                    format!("no address is allocated to {key}"),
                    "",
                )
            })?;
            if let Some(prev) = &conf.prev_result {
                let ips: Vec<String> = prev["ips"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| {
                        i["address"]
                            .as_str()
                            .map(|a| a.split('/').next().unwrap_or("").to_owned())
                    })
                    .collect();
                if !ips.is_empty() && !ips.contains(&held.to_string()) {
                    return Err(fail(
                        code::INVALID_CONFIG,
                        format!("{key} holds {held}, not the address in prevResult"),
                        format!("prevResult addresses: {}", ips.join(", ")),
                    ));
                }
            }
            Ok(String::new())
        }
        "GC" => {
            if v < (1, 1, 0) {
                return Err(fail(
                    code::INCOMPATIBLE_VERSION,
                    "GC needs cniVersion 1.1.0",
                    "",
                ));
            }
            let mut keep = Vec::new();
            for a in conf.valid_attachments.iter().flatten() {
                let k = PodKey::new(conf.name.clone(), a.container_id.clone(), a.ifname.clone())
                    .map_err(|e| {
                        fail(
                            code::INVALID_CONFIG,
                            "invalid cni.dev/valid-attachments entry",
                            e.to_string(),
                        )
                    })?;
                keep.push(k);
            }
            call(
                Op::Gc {
                    network: conf.name.clone(),
                    keep,
                },
                Duration::from_secs(30),
            )?;
            Ok(String::new())
        }
        "STATUS" => {
            if v < (1, 1, 0) {
                return Err(fail(
                    code::INCOMPATIBLE_VERSION,
                    "STATUS needs cniVersion 1.1.0",
                    "",
                ));
            }
            match transport(&s.socket, Op::Status, Duration::from_secs(5)) {
                Ok(r) if r.error.is_none() => Ok(String::new()),
                Ok(r) => Err(fail(
                    code::NOT_AVAILABLE,
                    "the prefixd agent cannot hand out addresses",
                    r.error.map(|e| e.message).unwrap_or_default(),
                )),
                Err(e) => Err(fail(
                    code::NOT_AVAILABLE,
                    "the prefixd agent is unreachable",
                    e.to_string(),
                )),
            }
        }
        _ => unreachable!("commands are checked in run"),
    }
}
