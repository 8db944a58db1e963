//! `prefixd-cni`: a CNI IPAM plugin. The runtime (or a main plugin such as ptp) runs it with
//! `CNI_COMMAND` and the network config on stdin; it asks the agent over the Unix socket and
//! prints a result, or a CNI error (`{"cniVersion","code","msg","details"}`) with a non-zero exit.
//!
//! Blocking and runtime-free: one process start, one round trip. Everything here is a function
//! of (env, stdin, transport) so that tests and the fuzz test feed it directly.
//!
//! Config (`ipam` section): `socket` (default /run/prefixd/agent.sock), `timeout` (how long an
//! ADD waits for the pool to grow, default `30s`), `gateway` (default 169.254.1.1, the address
//! ptp gives the host end of the veth), `routes` (default `[{"dst":"0.0.0.0/0"}]`),
//! `prefix_length` (default 32).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::core::PodKey;
use crate::ipc::{self, ClientError, ErrorKind, Op, Reply};

/// Spec versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// Largest stdin accepted.
pub const MAX_STDIN: usize = 1 << 20;
/// Default socket.
pub const DEFAULT_SOCKET: &str = "/run/prefixd/agent.sock";

/// CNI error codes (the spec's numbers).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid environment variables.
    pub const INVALID_ENV: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// The plugin is not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
}

/// What a run prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Standard output (a result, a CNI error, or nothing).
    pub stdout: String,
    /// Exit status.
    pub exit: i32,
}

/// A CNI error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// Code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// More.
    pub details: String,
}

fn fail(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError {
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

impl CniError {
    fn render(&self, version: &str) -> Output {
        let mut v = json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        Output {
            stdout: v.to_string(),
            exit: 1,
        }
    }
}

/// The `ipam` section.
#[derive(Debug, Clone, Deserialize)]
struct Ipam {
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    gateway: Option<Ipv4Addr>,
    #[serde(default)]
    routes: Option<Vec<Value>>,
    #[serde(default)]
    prefix_length: Option<u8>,
}

/// The network config fields the plugin reads (others are ignored, as CNI asks).
#[derive(Debug, Clone, Deserialize)]
struct NetConf {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    name: String,
    #[serde(default)]
    ipam: Option<Ipam>,
    #[serde(rename = "prevResult", default)]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Deserialize)]
struct Attachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// Sends a request to the agent.
pub type Transport<'a> = &'a dyn Fn(&std::path::Path, Op, Duration) -> Result<Reply, ClientError>;

fn version_parts(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// One invocation: `env` looks up CNI_* variables, `stdin` is the config.
pub fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8], transport: Transport) -> Output {
    // Errors before the config is read are reported in the newest version we speak.
    let fallback_version = "1.1.0";
    let Some(command) = env("CNI_COMMAND") else {
        return fail(
            code::INVALID_ENV,
            "CNI_COMMAND is not set",
            "the container runtime sets it; to try the plugin by hand, set CNI_COMMAND=VERSION",
        )
        .render(fallback_version);
    };
    if stdin.len() > MAX_STDIN {
        return fail(
            code::INVALID_CONFIG,
            "network config on stdin is larger than 1 MiB",
            "",
        )
        .render(fallback_version);
    }
    if command == "VERSION" {
        let v = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|c| c["cniVersion"].as_str().map(str::to_owned))
            .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| fallback_version.to_owned());
        return Output {
            stdout: json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS }).to_string(),
            exit: 0,
        };
    }
    if !matches!(command.as_str(), "ADD" | "DEL" | "CHECK" | "GC" | "STATUS") {
        return fail(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {command:?}"),
            "expected ADD, DEL, CHECK, GC, STATUS or VERSION",
        )
        .render(fallback_version);
    }
    let conf: NetConf = match serde_json::from_slice(stdin) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                code::DECODE,
                "cannot decode the network config on stdin",
                e.to_string(),
            )
            .render(fallback_version);
        }
    };
    let version = conf.cni_version.clone();
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return fail(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {version:?} is not supported"),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        )
        .render(fallback_version);
    }
    match execute(&command, &conf, env, transport) {
        Ok(stdout) => Output { stdout, exit: 0 },
        Err(e) => e.render(&version),
    }
}

struct Settings {
    socket: PathBuf,
    timeout: Duration,
    gateway: Ipv4Addr,
    routes: Vec<Value>,
    prefix_length: u8,
}

fn settings(conf: &NetConf) -> Result<Settings, CniError> {
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

/// `K8S_POD_NAMESPACE=..;K8S_POD_NAME=..` → (namespace, name).
fn pod_identity(args: Option<String>) -> Result<(String, String), CniError> {
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

fn attachment_key(
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

fn agent_error(e: ClientError) -> CniError {
    match e {
        ClientError::Connect { .. } => fail(
            code::TRY_AGAIN,
            "the prefixd agent is unreachable",
            e.to_string(),
        ),
        ClientError::Io(_) => fail(
            code::TRY_AGAIN,
            "the prefixd agent did not answer in time",
            e.to_string(),
        ),
        ClientError::BadReply(_) => fail(
            code::IO_FAILURE,
            "the prefixd agent sent a bad reply",
            e.to_string(),
        ),
    }
}

fn reply_error(e: &ipc::ReplyError) -> CniError {
    let c = match e.kind {
        ErrorKind::Timeout | ErrorKind::NotReady => code::TRY_AGAIN,
        ErrorKind::NotFound => code::UNKNOWN_CONTAINER,
        ErrorKind::BadRequest => code::INVALID_CONFIG,
        ErrorKind::Internal => code::IO_FAILURE,
    };
    fail(c, e.message.clone(), "")
}

fn execute(
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

fn result(conf: &NetConf, s: &Settings, addr: Ipv4Addr, v: (u32, u32, u32)) -> Value {
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

/// Entry point of the `prefixd-cni` binary.
pub fn main() -> std::process::ExitCode {
    use std::io::{Read, Write};
    let mut stdin = Vec::new();
    // Read one byte past the limit so that an oversized config is detected, not truncated.
    let _ = std::io::stdin()
        .lock()
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut stdin);
    let env = |k: &str| std::env::var(k).ok();
    let out = run(&env, &stdin, &|p, op, t| ipc::call(p, op, t));
    let mut stdout = std::io::stdout().lock();
    if !out.stdout.is_empty() {
        let _ = writeln!(stdout, "{}", out.stdout);
    }
    if out.exit == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"net","type":"ptp","ipam":{"type":"prefixd-cni","socket":"/tmp/x.sock"}}"#;

    fn ok_transport(
        addr: Ipv4Addr,
    ) -> impl Fn(&std::path::Path, Op, Duration) -> Result<Reply, ClientError> {
        move |_, _, _| {
            Ok(Reply {
                v: 1,
                address: Some(addr),
                ..Reply::default()
            })
        }
    }

    fn add_env() -> impl Fn(&str) -> Option<String> {
        env_of(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/var/run/netns/x"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1",
            ),
        ])
    }

    #[test]
    fn add_prints_a_result_in_the_asked_version() {
        let seen = Mutex::new(None);
        let t = |p: &std::path::Path, op: Op, _t: Duration| {
            *seen.lock().unwrap() = Some((p.to_owned(), op));
            Ok(Reply {
                v: 1,
                address: Some(Ipv4Addr::new(10, 0, 0, 17)),
                ..Reply::default()
            })
        };
        let out = run(&add_env(), CONF.as_bytes(), &t);
        assert_eq!(out.exit, 0, "{}", out.stdout);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["ips"][0]["address"], "10.0.0.17/32");
        assert_eq!(v["ips"][0]["gateway"], "169.254.1.1");
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["routes"][0]["dst"], "0.0.0.0/0");
        let (path, op) = seen.lock().unwrap().clone().unwrap();
        assert_eq!(path, PathBuf::from("/tmp/x.sock"));
        match op {
            Op::Add {
                key,
                pod_namespace,
                pod_name,
                timeout_ms,
            } => {
                assert_eq!(key, PodKey::new("net", "abc", "eth0").unwrap());
                assert_eq!(
                    (pod_namespace.as_str(), pod_name.as_str(), timeout_ms),
                    ("default", "web-1", 30_000)
                );
            }
            other => panic!("{other:?}"),
        }
        let old = CONF.replace("1.0.0", "0.3.1");
        let v: Value = serde_json::from_str(
            &run(
                &add_env(),
                old.as_bytes(),
                &ok_transport(Ipv4Addr::new(10, 0, 0, 1)),
            )
            .stdout,
        )
        .unwrap();
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["cniVersion"], "0.3.1");
    }

    #[test]
    fn errors_carry_the_spec_codes() {
        let t = ok_transport(Ipv4Addr::new(10, 0, 0, 1));
        let code_of = |env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]| {
            let o = run(env, stdin, &t);
            assert_eq!(o.exit, 1);
            let v: Value = serde_json::from_str(&o.stdout).unwrap();
            assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()));
            v["code"].as_u64().unwrap()
        };
        assert_eq!(code_of(&env_of(&[]), CONF.as_bytes()), 7);
        assert_eq!(
            code_of(&env_of(&[("CNI_COMMAND", "FROB")]), CONF.as_bytes()),
            7
        );
        assert_eq!(code_of(&add_env(), b"{not json"), 6);
        assert_eq!(
            code_of(&add_env(), CONF.replace("1.0.0", "9.9.9").as_bytes()),
            1
        );
        assert_eq!(code_of(&add_env(), &vec![b' '; MAX_STDIN + 1]), 4);
        assert_eq!(
            code_of(
                &add_env(),
                br#"{"cniVersion":"1.0.0","name":"net","type":"ptp"}"#
            ),
            4
        );
        assert_eq!(
            code_of(
                &env_of(&[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x")
                ]),
                CONF.as_bytes()
            ),
            7
        );
        assert_eq!(
            code_of(
                &env_of(&[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0")
                ]),
                CONF.as_bytes()
            ),
            7
        );
        let bad_args = env_of(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
            ("CNI_ARGS", "nonsense"),
        ]);
        assert_eq!(code_of(&bad_args, CONF.as_bytes()), 7);
        let gc = env_of(&[("CNI_COMMAND", "GC")]);
        assert_eq!(code_of(&gc, CONF.as_bytes()), 1, "GC needs 1.1.0");
        let unreachable = |_: &std::path::Path, _: Op, _: Duration| -> Result<Reply, ClientError> {
            Err(ClientError::Connect {
                path: "/x".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        };
        let o = run(&add_env(), CONF.as_bytes(), &unreachable);
        assert!(o.stdout.contains("\"code\":11"), "{}", o.stdout);
        let status = env_of(&[("CNI_COMMAND", "STATUS")]);
        let o = run(
            &status,
            CONF.replace("1.0.0", "1.1.0").as_bytes(),
            &unreachable,
        );
        assert!(o.stdout.contains("\"code\":50"), "{}", o.stdout);
        let timeout = |_: &std::path::Path, _: Op, _: Duration| {
            Ok(Reply::error(ErrorKind::Timeout, "no address"))
        };
        let o = run(&add_env(), CONF.as_bytes(), &timeout);
        assert!(o.stdout.contains("\"code\":11"), "{}", o.stdout);
    }

    #[test]
    fn version_needs_no_agent() {
        let o = run(
            &env_of(&[("CNI_COMMAND", "VERSION")]),
            b"",
            &ok_transport(Ipv4Addr::LOCALHOST),
        );
        assert_eq!(o.exit, 0);
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
    }
}
