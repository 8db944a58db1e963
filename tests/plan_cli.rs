//! `prefixd plan` as an operator runs it: the real binary, a snapshot file, targets from env.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn plan(snapshot: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.json");
    std::fs::write(&path, snapshot).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prefixd"));
    cmd.arg("plan").arg("--state").arg(&path);
    for var in [
        "WARM_PREFIX_TARGET",
        "WARM_IP_TARGET",
        "MINIMUM_IP_TARGET",
        "WARM_ENI_TARGET",
        "MAX_ENI",
        "ENABLE_PREFIX_DELEGATION",
        "IP_COOLDOWN_PERIOD",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

const EXAMPLE: &str = include_str!("../examples/pool.json");
const BUSY: &str = include_str!("../examples/pool-busy.json");

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn example_snapshot_gets_one_prefix_on_the_primary() {
    let v = json(&plan(EXAMPLE, &[]));
    assert_eq!(
        v["assign"],
        serde_json::json!([{"eni": "eni-1", "prefixes": 1}])
    );
    for empty in [
        "create_enis",
        "release_prefixes",
        "release_enis",
        "release_secondary_ips",
    ] {
        assert_eq!(v[empty], serde_json::json!([]), "{empty} must print as []");
    }
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("WARM_PREFIX_TARGET 1")
    );
}

#[test]
fn targets_come_from_the_environment() {
    // Default WPT=1: three wholly free prefixes, keep one, release the newest ENI's two and it.
    let v = json(&plan(BUSY, &[]));
    assert_eq!(
        v["release_prefixes"],
        serde_json::json!(["10.0.0.80/28", "10.0.0.64/28"])
    );
    assert_eq!(
        v["release_enis"],
        serde_json::json!(["eni-0f1e2d3c4b5a69788"])
    );
    // WARM_PREFIX_TARGET=3 keeps all three.
    let v = json(&plan(BUSY, &[("WARM_PREFIX_TARGET", "3")]));
    assert_eq!(v["release_prefixes"], serde_json::json!([]));
    // WARM_IP_TARGET=40: 53 free, need 40 → no release of a 16; 60 → grow 1.
    let v = json(&plan(BUSY, &[("WARM_IP_TARGET", "40")]));
    assert_eq!(v["release_prefixes"], serde_json::json!([]));
    assert_eq!(v["assign"], serde_json::json!([]));
    let v = json(&plan(BUSY, &[("WARM_IP_TARGET", "60")]));
    assert_eq!(
        v["assign"],
        serde_json::json!([{"eni": "eni-0a1b2c3d4e5f60718", "prefixes": 1}])
    );
}

#[test]
fn flags_work_like_env_vars() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.json");
    std::fs::write(&path, BUSY).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_prefixd"))
        .args(["plan", "--warm-prefix-target", "3", "--state"])
        .arg(&path)
        .env_remove("WARM_PREFIX_TARGET")
        .output()
        .unwrap();
    assert_eq!(json(&out)["release_prefixes"], serde_json::json!([]));
}

#[test]
fn snapshot_from_stdin() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_prefixd"))
        .args(["plan", "--state", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(EXAMPLE.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(json(&out)["assign"][0]["prefixes"], 1);
}

#[test]
fn bad_input_is_a_clear_error_with_nonzero_exit() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("{\"limits\":", &[], "is not a pool snapshot"),
        (
            "{\"limits\":{\"max_enis\":3,\"slots_per_eni\":9,\"max_pods\":110},\"enis\":[{\"id\":\"eni-1\",\"device_index\":0,\"prefixes\":[{\"cidr\":\"10.0.0.5/28\",\"assigned\":0,\"cooling\":0}]}]}",
            &[],
            "aligned",
        ),
        (
            "{\"limits\":{\"max_enis\":3,\"slots_per_eni\":9,\"max_pods\":110},\"enis\":[],\"bogus\":1}",
            &[],
            "unknown field",
        ),
        (
            "{\"limits\":{\"max_enis\":3,\"slots_per_eni\":9,\"max_pods\":110},\"enis\":[{\"id\":\"eni-1\",\"device_index\":0,\"prefixes\":[{\"cidr\":\"10.0.0.16/28\",\"assigned\":12,\"cooling\":5}]}]}",
            &[],
            "enis[0].prefixes[0]",
        ),
        (
            EXAMPLE,
            &[("WARM_PREFIX_TARGET", "-1")],
            "WARM_PREFIX_TARGET",
        ),
        (EXAMPLE, &[("WARM_IP_TARGET", "lots")], "WARM_IP_TARGET"),
        (EXAMPLE, &[("MAX_ENI", "0")], "MAX_ENI"),
    ];
    for (snapshot, env, needle) in cases {
        let out = plan(snapshot, env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{needle}: succeeded");
        assert!(err.contains(needle), "{needle}: stderr was {err}");
        assert!(out.stdout.is_empty());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_prefixd"))
        .args(["plan", "--state", "/nonexistent/pool.json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/pool.json"));
}
