//! What each CNI_COMMAND does, by role: the parts both roles share (the attachment, the pod,
//! the agent call, GC's keys, STATUS) and the dispatch to [`super::ipam`] or [`super::wire`].

use std::net::IpAddr;
use std::time::Duration;

use super::conf::{NetConf, Role, Settings, settings};
use super::error::{CniError, agent_error, code, fail, reply_error};
use super::host::Host;
use super::version_parts;
use crate::core::PodKey;
use crate::ipc::{Op, Reply};

/// One invocation's context.
pub(super) struct Call<'a> {
    pub(super) conf: &'a NetConf,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) host: &'a dyn Host,
    pub(super) s: Settings,
    /// The config's spec version.
    pub(super) v: (u32, u32, u32),
}

impl Call<'_> {
    /// One request to the agent; an error answer is a CNI error.
    pub(super) fn agent(&self, op: Op, timeout: Duration) -> Result<Reply, CniError> {
        let r = self
            .host
            .agent(&self.s.socket, op, timeout)
            .map_err(agent_error)?;
        match &r.error {
            Some(e) => Err(reply_error(e)),
            None => Ok(r),
        }
    }

    /// How long an ADD may take: the wait for an address, and a margin.
    pub(super) fn add_timeout(&self) -> Duration {
        self.s.timeout + Duration::from_secs(5)
    }

    /// A CNI_* variable that must be set.
    pub(super) fn need(&self, var: &str) -> Result<String, CniError> {
        let v = self.var(var)?.filter(|v| !v.is_empty()).ok_or_else(|| {
            fail(
                code::INVALID_ENV,
                format!("{var} is not set"),
                "the container runtime must set it",
            )
        })?;
        Ok(v)
    }

    /// A CNI_* variable, `None` when unset; one that is not UTF-8 is named as such.
    pub(super) fn var(&self, var: &str) -> Result<Option<String>, CniError> {
        match (self.env)(var) {
            Some(v) if v == super::NOT_UTF8 => Err(fail(
                code::INVALID_ENV,
                format!("{var} is not valid UTF-8"),
                "the container runtime must pass it as UTF-8 text",
            )),
            v => Ok(v),
        }
    }

    /// The attachment: network, CNI_CONTAINERID, CNI_IFNAME.
    pub(super) fn key(&self) -> Result<PodKey, CniError> {
        let container = self.need("CNI_CONTAINERID")?;
        let ifname = self.need("CNI_IFNAME")?;
        PodKey::new(self.conf.name.clone(), container, ifname).map_err(|e| {
            let c = if e.to_string().contains("network name") {
                code::INVALID_CONFIG
            } else {
                code::INVALID_ENV
            };
            fail(c, "invalid attachment", e.to_string())
        })
    }

    /// `K8S_POD_NAMESPACE=..;K8S_POD_NAME=..` → (namespace, name).
    pub(super) fn pod(&self) -> Result<(String, String), CniError> {
        let (mut ns, mut name) = (String::new(), String::new());
        for part in self
            .var("CNI_ARGS")?
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

    /// The ADD request for this attachment.
    pub(super) fn add_op(&self) -> Result<Op, CniError> {
        let key = self.key()?;
        let (ns, name) = self.pod()?;
        Ok(Op::Add {
            key,
            pod_namespace: ns,
            pod_name: name,
            timeout_ms: self.s.timeout.as_millis() as u64,
        })
    }

    /// prevResult's IPv4 addresses, or what is wrong with it (missing, no `ips` list, an
    /// address not in CIDR form, no IPv4 address).
    fn prev_ips(&self) -> Result<Vec<IpAddr>, String> {
        let prev = self
            .conf
            .prev_result
            .as_ref()
            .ok_or_else(|| "there is none".to_owned())?;
        let ips = prev["ips"]
            .as_array()
            .ok_or_else(|| "it has no \"ips\" list".to_owned())?;
        let mut out = Vec::new();
        for ip in ips {
            let a = ip["address"]
                .as_str()
                .and_then(|a| a.parse::<ipnet::IpNet>().ok())
                .ok_or_else(|| format!("{ip} has no address in CIDR form"))?;
            out.push(a.addr());
        }
        if out.is_empty() {
            return Err("it lists no address".into());
        }
        Ok(out)
    }

    /// prevResult's addresses, for CHECK: it must be there and well formed.
    fn prev_required(&self) -> Result<Vec<IpAddr>, CniError> {
        self.prev_ips().map_err(|why| {
            fail(
                code::INVALID_CONFIG,
                format!("CHECK needs a well-formed prevResult: {why}"),
                "the runtime passes the result of the ADD as prevResult",
            )
        })
    }

    /// The addresses of prevResult, when it is well formed (a hint; none otherwise).
    pub(super) fn prev_addresses(&self) -> Vec<IpAddr> {
        self.prev_ips().unwrap_or_default()
    }

    /// CHECK's first half, both roles: the agent's allocation for `key` (error 3 when it has
    /// none), compared with prevResult's addresses. Returns the answer.
    pub(super) fn checked(&self, key: &PodKey) -> Result<Reply, CniError> {
        let r = self.agent(Op::Check { key: key.clone() }, Duration::from_secs(10))?;
        let held: Vec<IpAddr> = r
            .address
            .map(IpAddr::V4)
            .into_iter()
            .chain(r.address6.map(IpAddr::V6))
            .collect();
        if held.is_empty() {
            return Err(fail(
                code::UNKNOWN_CONTAINER,
                format!("no address is allocated to {key}"),
                "",
            ));
        }
        for a in held {
            self.check_prev(key, a)?;
        }
        Ok(r)
    }

    /// CHECK's comparison: an address the agent holds for the attachment against prevResult's.
    fn check_prev(&self, key: &PodKey, held: IpAddr) -> Result<(), CniError> {
        let prev = self.prev_required()?;
        if !prev.contains(&held) {
            let list: Vec<String> = prev.iter().map(|a| a.to_string()).collect();
            return Err(fail(
                code::UNKNOWN_CONTAINER,
                format!("{key} holds {held}, not the address in prevResult"),
                format!("prevResult addresses: {}", list.join(", ")),
            ));
        }
        Ok(())
    }

    /// GC's `cni.dev/valid-attachments`, as keys.
    pub(super) fn gc_keep(&self) -> Result<Vec<PodKey>, CniError> {
        if self.v < (1, 1, 0) {
            return Err(fail(
                code::INCOMPATIBLE_VERSION,
                "GC needs cniVersion 1.1.0",
                "",
            ));
        }
        let mut keep = Vec::new();
        for a in self.conf.valid_attachments.iter().flatten() {
            keep.push(
                PodKey::new(
                    self.conf.name.clone(),
                    a.container_id.clone(),
                    a.ifname.clone(),
                )
                .map_err(|e| {
                    fail(
                        code::INVALID_CONFIG,
                        "invalid cni.dev/valid-attachments entry",
                        e.to_string(),
                    )
                })?,
            );
        }
        Ok(keep)
    }

    fn status(&self) -> Result<String, CniError> {
        if self.v < (1, 1, 0) {
            return Err(fail(
                code::INCOMPATIBLE_VERSION,
                "STATUS needs cniVersion 1.1.0",
                "",
            ));
        }
        match self
            .host
            .agent(&self.s.socket, Op::Status, Duration::from_secs(5))
        {
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
}

/// Runs `command` for `conf`.
pub(super) fn execute(
    command: &str,
    conf: &NetConf,
    env: &dyn Fn(&str) -> Option<String>,
    host: &dyn Host,
) -> Result<String, CniError> {
    let call = Call {
        conf,
        env,
        host,
        s: settings(conf)?,
        v: version_parts(&conf.cni_version).unwrap_or((1, 1, 0)),
    };
    if command == "STATUS" {
        return call.status();
    }
    match &call.s.role {
        Role::Ipam(_) => super::ipam::execute(command, &call),
        Role::Main(_) => super::wire::execute(command, &call),
    }
}
