//! Random stdin and env into the plugin's parsing: never a panic, always either a result or a
//! CNI error JSON with a code and a message, and a non-zero exit with every error.

use std::net::Ipv4Addr;
use std::time::Duration;

use prefixd::cni::host::AgentOnly;
use prefixd::cni::run;
use prefixd::ipc::{ClientError, Op, Reply};
use proptest::prelude::*;
use serde_json::Value;

fn transport(_: &std::path::Path, op: Op, _: Duration) -> Result<Reply, ClientError> {
    Ok(match op {
        Op::Add { .. } | Op::Check { .. } => Reply {
            v: 1,
            address: Some(Ipv4Addr::new(10, 0, 0, 9)),
            ..Reply::default()
        },
        _ => Reply {
            v: 1,
            released: Some(1),
            ..Reply::default()
        },
    })
}

fn env_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
    let names = prop::sample::select(vec![
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_IFNAME",
        "CNI_NETNS",
        "CNI_ARGS",
        "CNI_PATH",
    ]);
    let values = prop_oneof![
        prop::sample::select(vec![
            "ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "add", ""
        ])
        .prop_map(String::from),
        "[a-zA-Z0-9_./=;:-]{0,40}",
        any::<String>(),
    ];
    prop::collection::vec((names.prop_map(String::from), values), 0..8)
}

fn stdin_strategy() -> impl Strategy<Value = Vec<u8>> {
    let version = prop::sample::select(vec![
        "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "2.0.0", "", "1",
    ]);
    let structured = (version, "[a-z-]{0,12}", any::<bool>(), "[0-9a-z]{0,6}", any::<Option<u8>>()).prop_map(
        |(v, name, ipam, timeout, plen)| {
            let mut c = serde_json::json!({"cniVersion": v, "name": name, "type": "ptp"});
            if ipam {
                c["ipam"] = serde_json::json!({"type": "prefixd-cni", "timeout": timeout, "prefix_length": plen});
            }
            c.to_string().into_bytes()
        },
    );
    prop_oneof![structured, prop::collection::vec(any::<u8>(), 0..300)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parsing_never_panics_and_errors_are_cni_json(env in env_strategy(), stdin in stdin_strategy()) {
        let lookup = |k: &str| env.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let out = run(&lookup, &stdin, &AgentOnly(transport));
        if out.exit == 0 {
            if !out.stdout.is_empty() {
                let v: Value = serde_json::from_str(&out.stdout).expect("a result is JSON");
                prop_assert!(v.get("cniVersion").is_some());
            }
        } else {
            let v: Value = serde_json::from_str(&out.stdout).expect("an error is JSON");
            prop_assert!(v["code"].as_u64().is_some_and(|c| c > 0));
            prop_assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()));
            prop_assert!(v["cniVersion"].as_str().is_some());
        }
    }
}
