//! `prefixd-cni`: the CNI plugin. The runtime runs it with `CNI_COMMAND` and the network config
//! on stdin; it asks the agent over the Unix socket, wires the pod (as the main plugin) or only
//! hands out the address (as the IPAM of another main plugin), and prints a result, or a CNI
//! error (`{"cniVersion","code","msg","details"}`) with a non-zero exit.
//!
//! Blocking and runtime-free: one process start, one round trip, a few netlink calls.
//! Everything here is a function of (env, stdin, [`host::Host`]) so that tests and the fuzz
//! test feed it directly.
//!
//! The parts: [`conf`] (the network config, the two roles and their settings), [`error`] (CNI
//! error codes and JSON), `command` (what both roles share, and the dispatch), `ipam` (the IPAM
//! role), `wire` (the main role), [`host`] (the agent and the kernel, as a trait).

mod command;
pub mod conf;
pub mod error;
pub mod host;
mod ipam;
mod wire;

use serde_json::{Value, json};

use command::execute;
use conf::NetConf;
pub use conf::check_conflist;
use error::fail;
pub use error::{CniError, code};
use host::{Host, System};

/// Spec versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// Largest stdin accepted.
pub const MAX_STDIN: usize = 1 << 20;
/// Default socket.
pub const DEFAULT_SOCKET: &str = "/run/prefixd/agent.sock";

/// What a run prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Standard output (a result, a CNI error, or nothing).
    pub stdout: String,
    /// Exit status.
    pub exit: i32,
}

pub(crate) fn version_parts(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// One invocation: `env` looks up CNI_* variables, `stdin` is the config.
pub fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8], host: &dyn Host) -> Output {
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
    match execute(&command, &conf, env, host) {
        Ok(stdout) => Output { stdout, exit: 0 },
        Err(e) => e.render(&version),
    }
}

/// What the environment lookup gives for a variable that is not UTF-8 (a NUL, which no real
/// environment value holds), so that it is named as such rather than "not set".
pub(crate) const NOT_UTF8: &str = "\0not UTF-8";

/// Entry point of the `prefixd-cni` binary.
pub fn main() -> std::process::ExitCode {
    use std::io::{Read, Write};
    let mut stdin = Vec::new();
    // Read one byte past the limit so that an oversized config is detected, not truncated.
    let _ = std::io::stdin()
        .lock()
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut stdin);
    let env = |k: &str| match std::env::var(k) {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => Some(NOT_UTF8.to_owned()),
    };
    let out = run(&env, &stdin, &System);
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
    use crate::core::PodKey;
    use crate::ipc::{ClientError, ErrorKind, Op, Reply};
    use host::AgentOnly;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::Duration;

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
        let out = run(&add_env(), CONF.as_bytes(), &AgentOnly(t));
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
                &AgentOnly(ok_transport(Ipv4Addr::new(10, 0, 0, 1))),
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
            let o = run(env, stdin, &AgentOnly(&t));
            assert_eq!(o.exit, 1);
            let v: Value = serde_json::from_str(&o.stdout).unwrap();
            assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()));
            v["code"].as_u64().unwrap()
        };
        assert_eq!(code_of(&env_of(&[]), CONF.as_bytes()), 4);
        assert_eq!(
            code_of(&env_of(&[("CNI_COMMAND", "FROB")]), CONF.as_bytes()),
            4
        );
        assert_eq!(code_of(&add_env(), b"{not json"), 6);
        assert_eq!(
            code_of(&add_env(), CONF.replace("1.0.0", "9.9.9").as_bytes()),
            1
        );
        assert_eq!(code_of(&add_env(), &vec![b' '; MAX_STDIN + 1]), 7);
        assert_eq!(
            code_of(
                &add_env(),
                br#"{"cniVersion":"1.0.0","name":"net","type":"ptp"}"#
            ),
            7
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
            4
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
            4
        );
        let bad_args = env_of(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
            ("CNI_ARGS", "nonsense"),
        ]);
        assert_eq!(code_of(&bad_args, CONF.as_bytes()), 4);
        let gc = env_of(&[("CNI_COMMAND", "GC")]);
        assert_eq!(code_of(&gc, CONF.as_bytes()), 1, "GC needs 1.1.0");
        let unreachable = |_: &std::path::Path, _: Op, _: Duration| -> Result<Reply, ClientError> {
            Err(ClientError::Connect {
                path: "/x".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        };
        let o = run(&add_env(), CONF.as_bytes(), &AgentOnly(&unreachable));
        assert!(o.stdout.contains("\"code\":11"), "{}", o.stdout);
        let status = env_of(&[("CNI_COMMAND", "STATUS")]);
        let o = run(
            &status,
            CONF.replace("1.0.0", "1.1.0").as_bytes(),
            &AgentOnly(&unreachable),
        );
        assert!(o.stdout.contains("\"code\":50"), "{}", o.stdout);
        let timeout = |_: &std::path::Path, _: Op, _: Duration| {
            Ok(Reply::error(ErrorKind::Timeout, "no address"))
        };
        let o = run(&add_env(), CONF.as_bytes(), &AgentOnly(timeout));
        assert!(o.stdout.contains("\"code\":11"), "{}", o.stdout);
    }

    #[test]
    fn bad_input_is_refused_before_anything_is_allocated() {
        let called = Mutex::new(0u32);
        let t = |_: &std::path::Path, _: Op, _: Duration| {
            *called.lock().unwrap() += 1;
            Ok(Reply {
                v: 1,
                address: Some(Ipv4Addr::new(10, 0, 0, 17)),
                ..Reply::default()
            })
        };
        let code = |out: &Output| -> (u64, String) {
            let v: Value = serde_json::from_str(&out.stdout).unwrap();
            (
                v["code"].as_u64().unwrap(),
                v["msg"].as_str().unwrap().to_owned(),
            )
        };
        // A route gateway that is no address.
        let bad_gw = CONF.replace(
            r#""socket":"/tmp/x.sock""#,
            r#""socket":"/tmp/x.sock","routes":[{"dst":"0.0.0.0/0","gw":"router"}]"#,
        );
        let out = run(&add_env(), bad_gw.as_bytes(), &AgentOnly(t));
        assert_eq!(code(&out).0, 7, "{}", out.stdout);
        // A variable that is not UTF-8 is named as such, not "not set".
        let mut env: HashMap<String, String> = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", NOT_UTF8),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/var/run/netns/x"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let lookup = |k: &str| env.get(k).cloned();
        let out = run(&lookup, CONF.as_bytes(), &AgentOnly(t));
        let (c, msg) = code(&out);
        assert_eq!(c, 4, "{msg}");
        assert!(msg.contains("CNI_CONTAINERID is not valid UTF-8"), "{msg}");
        assert_eq!(*called.lock().unwrap(), 0, "the agent was asked");
        // CHECK: prevResult missing, malformed, or with another address.
        env.insert("CNI_COMMAND".into(), "CHECK".into());
        env.insert("CNI_CONTAINERID".into(), "abc".into());
        let lookup = |k: &str| env.get(k).cloned();
        let with_prev = |prev: &str| {
            CONF.replace(
                r#""type":"ptp","#,
                &format!(r#""type":"ptp","prevResult":{prev},"#),
            )
        };
        for (conf, want, says) in [
            (CONF.to_owned(), 7, "there is none"),
            (with_prev(r#"{"ips":"x"}"#), 7, "no \"ips\" list"),
            (with_prev(r#"{"ips":[{"address":"10.0.0.17"}]}"#), 7, "CIDR"),
            (
                with_prev(r#"{"ips":[{"address":"10.0.0.18/32"}]}"#),
                3,
                "not the address",
            ),
        ] {
            let out = run(&lookup, conf.as_bytes(), &AgentOnly(t));
            let (c, msg) = code(&out);
            assert_eq!(c, want, "{msg}");
            assert!(msg.contains(says), "{msg}");
        }
        // Negative control: the right prevResult passes.
        let conf = with_prev(r#"{"ips":[{"address":"10.0.0.17/32"}]}"#);
        let out = run(&lookup, conf.as_bytes(), &AgentOnly(t));
        assert_eq!(out.exit, 0, "{}", out.stdout);
    }

    #[test]
    fn version_needs_no_agent() {
        let o = run(
            &env_of(&[("CNI_COMMAND", "VERSION")]),
            b"",
            &AgentOnly(ok_transport(Ipv4Addr::LOCALHOST)),
        );
        assert_eq!(o.exit, 0);
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
    }
}
