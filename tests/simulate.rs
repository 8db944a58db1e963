//! `prefixd simulate`: deterministic runs of the real agent loop (and the VPC CNI baseline) on
//! virtual time against the mock EC2's model.

use std::process::Command;

use prefixd::sim::profile::{AgentKind, PolicySpec, Profile};
use prefixd::sim::{self, SimError};

fn profile(json: &str) -> Profile {
    Profile::parse("test", json).expect("valid profile")
}

fn policy<'a>(r: &'a sim::report::Report, label: &str) -> &'a sim::report::PolicyReport {
    r.policies
        .iter()
        .find(|p| p.policy == label)
        .unwrap_or_else(|| panic!("no policy {label}"))
}

const MIXED: &str = r#"{
  "name": "mixed", "nodes": 6, "duration": "9m", "seed": 7, "boot_spread": "30s",
  "phases": [
    { "kind": "scale_up", "at": "60s", "pods_per_node": 25 },
    { "kind": "churn", "at": "90s", "until": "7m", "pods_per_node": 8, "mean_lifetime": "40s" },
    { "kind": "drain", "at": "5m", "nodes": 2 }
  ],
  "policies": [
    { "agent": "prefixd", "env": { "WARM_PREFIX_TARGET": "1" } },
    { "agent": "vpc-cni", "env": { "WARM_PREFIX_TARGET": "1" } }
  ]
}"#;

#[test]
fn same_seed_same_numbers_other_seed_other_numbers() {
    let p = profile(MIXED);
    let a = sim::run(&p).unwrap();
    let b = sim::run(&p).unwrap();
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap(),
        "two runs of one profile and seed differ"
    );
    // Something happened: pods from every phase, EC2 calls, drained pods moved.
    for r in &a.policies {
        assert!(r.pods > 6 * 25, "{}: {} pods", r.policy, r.pods);
        assert_eq!(r.phases.len(), 3);
        assert!(r.phases[2].pods > 0, "{}: the drain moved no pod", r.policy);
        assert!(
            r.calls
                .get("AssignPrivateIpAddresses")
                .copied()
                .unwrap_or(0)
                > 6
        );
        assert!(r.held_avg >= r.used_avg && r.used_avg > 0.0, "{r:?}");
    }
    let mut q = p.clone();
    q.seed = 8;
    let c = sim::run(&q).unwrap();
    assert_ne!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&c).unwrap(),
        "the seed changes nothing"
    );
}

#[test]
fn baseline_freezes_with_minimum_ip_target_and_prefixd_does_not() {
    // The VPC CNI's #3685: MINIMUM_IP_TARGET without WARM_IP_TARGET holds ⌈M/16⌉ prefixes
    // whatever the pods need; prefixd grows for pending pods.
    let p = profile(
        r#"{
      "name": "freeze", "nodes": 3, "duration": "4m", "boot_spread": "10s",
      "phases": [ { "kind": "scale_up", "at": "30s", "pods_per_node": 40 } ],
      "policies": [
        { "agent": "prefixd", "env": { "MINIMUM_IP_TARGET": "20" } },
        { "agent": "vpc-cni", "env": { "MINIMUM_IP_TARGET": "20" } }
      ]
    }"#,
    );
    let r = sim::run(&p).unwrap();
    let ours = policy(&r, "prefixd MINIMUM_IP_TARGET=20");
    let theirs = policy(&r, "vpc-cni MINIMUM_IP_TARGET=20");
    assert_eq!(ours.unserved, 0, "{ours:?}");
    assert_eq!(ours.failed_adds, 0, "{ours:?}");
    assert!(ours.wait_max_ms < 5_000, "{ours:?}");
    // 2 prefixes = 32 addresses for 40 pods: 8 per node never start.
    assert_eq!(theirs.unserved, 3 * 8, "{theirs:?}");
    assert!(theirs.failed_adds > 0);
}

#[test]
fn churn_fails_adds_under_the_baseline_only() {
    // The VPC CNI's #2896: cooling addresses count as available, so under churn ADDs fail and
    // kubelet retries; prefixd counts them as unavailable and grows instead.
    let p = profile(
        r#"{
      "name": "churn", "nodes": 4, "duration": "8m", "boot_spread": "10s", "seed": 3,
      "phases": [ { "kind": "churn", "at": "30s", "until": "7m", "pods_per_node": 14, "mean_lifetime": "20s" } ],
      "policies": [
        { "agent": "prefixd", "env": { "WARM_PREFIX_TARGET": "0", "WARM_IP_TARGET": "2" } },
        { "agent": "vpc-cni", "env": { "WARM_PREFIX_TARGET": "0", "WARM_IP_TARGET": "2" } }
      ]
    }"#,
    );
    let r = sim::run(&p).unwrap();
    let ours = policy(&r, "prefixd WARM_IP_TARGET=2 WARM_PREFIX_TARGET=0");
    let theirs = policy(&r, "vpc-cni WARM_IP_TARGET=2 WARM_PREFIX_TARGET=0");
    assert!(ours.pods > 4 * 14 * 10, "{ours:?}");
    assert_eq!(ours.failed_adds, 0, "{ours:?}");
    assert!(ours.wait_p99_ms < 2_000, "{ours:?}");
    assert!(theirs.failed_adds > 10, "{theirs:?}");
    assert!(
        theirs.wait_p99_ms >= 10_000,
        "kubelet's backoff shows: {theirs:?}"
    );
}

#[test]
fn a_fragmented_subnet_still_starts_pods_with_prefixd_only() {
    // No free /28 (the VPC CNI's #2749): prefixd falls back to /32 addresses, on new ENIs too;
    // the baseline starts nothing.
    let mut p = Profile::load("fragmented").unwrap();
    p.nodes = 4;
    let r = sim::run(&p).unwrap();
    let ours = policy(&r, "prefixd WARM_PREFIX_TARGET=1");
    let theirs = policy(&r, "vpc-cni WARM_PREFIX_TARGET=1");
    assert!(ours.insufficient_cidr > 0, "{ours:?}");
    assert_eq!(ours.unserved, 0, "{ours:?}");
    assert!(ours.enis_peak > 4, "/32 addresses on new ENIs: {ours:?}");
    assert!(
        ours.calls
            .get("CreateNetworkInterface")
            .copied()
            .unwrap_or(0)
            >= 4
    );
    assert_eq!(theirs.unserved, theirs.pods, "{theirs:?}");
    assert!(theirs.insufficient_cidr > 0);
}

#[test]
fn a_fleet_scale_up_never_beats_the_bucket_bound_and_comes_close() {
    // 150 nodes each needing one AssignPrivateIpAddresses at once: the bucket (100, then 5/s)
    // allows them no faster than (150 − 100) / 5 = 10 s.
    let p = profile(
        r#"{
      "name": "fleet", "nodes": 150, "duration": "6m", "boot_spread": "60s",
      "phases": [ { "kind": "scale_up", "at": "90s", "pods_per_node": 20 } ],
      "policies": [ { "agent": "prefixd", "env": { "WARM_PREFIX_TARGET": "1" } } ]
    }"#,
    );
    let r = sim::run(&p).unwrap();
    let ours = &r.policies[0];
    let ph = &ours.phases[0];
    assert_eq!(ph.unserved, 0, "{ph:?}");
    let all = ph.all_served_s.expect("all served");
    let bound = ph.bucket_bound_s.expect("a bound");
    let assigns = ph.mutating_calls["AssignPrivateIpAddresses"];
    assert!(assigns >= 150, "{ph:?}");
    assert!(bound >= 9.0, "{ph:?}");
    assert!(all >= bound, "faster than EC2's bucket allows: {ph:?}");
    assert!(all <= 2.0 * bound + 5.0, "far from the bound: {ph:?}");
    assert!(ph.throttled_in_window > 0, "{ph:?}");
}

#[test]
fn policy_settings_are_checked_by_the_agents_rules() {
    let mut p = profile(MIXED);
    p.policies = vec![PolicySpec {
        agent: AgentKind::Prefixd,
        env: [("WARM_PREFIX_TARGT".to_owned(), "1".to_owned())].into(),
    }];
    let e = sim::run(&p).unwrap_err();
    assert!(matches!(e, SimError::Policy { .. }));
    assert!(
        e.to_string()
            .contains("WARM_PREFIX_TARGT is not an agent setting"),
        "{e}"
    );
    p.policies = vec![PolicySpec::parse("vpc-cni WARM_IP_TARGET=lots").unwrap()];
    let e = sim::run(&p).unwrap_err();
    assert!(e.to_string().contains("WARM_IP_TARGET"), "{e}");
    // The process environment is not read.
    let cfg = sim::agent_config(&PolicySpec::parse("prefixd POOL_TICK=2s").unwrap()).unwrap();
    assert_eq!(cfg.pool_tick, std::time::Duration::from_secs(2));
    assert_eq!(cfg.pool.targets.warm_prefix_target, 1);
}

fn prefixd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_prefixd"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run prefixd")
}

#[test]
fn cli_lists_runs_and_refuses_bad_input() {
    let out = prefixd(&["simulate", "--list"]);
    assert!(out.status.success());
    let list = String::from_utf8_lossy(&out.stdout);
    for name in ["churn", "burst", "drain", "fleet", "targets", "fragmented"] {
        assert!(list.contains(name), "{list}");
    }
    let out = prefixd(&[
        "simulate",
        "--profile",
        "burst",
        "--nodes",
        "2",
        "--policy",
        "prefixd WARM_PREFIX_TARGET=1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodes"], 2);
    assert_eq!(v["policies"][0]["pods"], 120);
    assert_eq!(v["policies"][0]["unserved"], 0);
    let out = prefixd(&["simulate", "--profile", "nope.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no built-in profile \"nope.json\""));
    let out = prefixd(&["simulate", "--policy", "calico X=1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`prefixd` or `vpc-cni`"));
}
