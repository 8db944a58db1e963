//! deploy/ checked offline: the conflist parsed by the plugin's own config parser.

#[test]
fn conflist_is_parsed_by_the_plugins_own_parser() {
    let bytes = std::fs::read("deploy/10-prefixd.conflist").unwrap();
    assert_eq!(prefixd::cni::check_conflist(&bytes).unwrap(), 1);
    // And it would refuse a broken one.
    let broken = String::from_utf8(bytes)
        .unwrap()
        .replace("\"30s\"", "\"soon\"");
    assert!(prefixd::cni::check_conflist(broken.as_bytes()).is_err());
}

#[test]
fn iam_policy_grants_exactly_the_actions_the_adapter_calls() {
    let policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/iam-policy.json").unwrap()).unwrap();
    let mut granted = std::collections::BTreeSet::new();
    for st in policy["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow");
        let actions: Vec<&str> = match &st["Action"] {
            serde_json::Value::String(a) => vec![a.as_str()],
            serde_json::Value::Array(a) => a.iter().map(|v| v.as_str().unwrap()).collect(),
            other => panic!("bad Action {other}"),
        };
        for a in actions {
            granted.insert(a.strip_prefix("ec2:").expect("only ec2 actions").to_owned());
        }
    }
    let used: std::collections::BTreeSet<String> = prefixd::ec2::ACTIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let missing: Vec<_> = used.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&used).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    // Mutating actions on ENIs the agent creates are conditioned on its tag.
    let text = policy.to_string();
    assert!(text.contains("aws:RequestTag/node.k8s.amazonaws.com/instance_id"));
    assert!(text.contains("ec2:ResourceTag/node.k8s.amazonaws.com/instance_id"));
}

#[test]
fn the_adapter_calls_only_listed_actions() {
    // Every action named in the SDK adapter is in ACTIONS (and so in the policy).
    let src = std::fs::read_to_string("src/ec2/sdk.rs").unwrap();
    for line in src.lines() {
        for quoted in line.split('"').skip(1).step_by(2) {
            if quoted
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_uppercase())
                && quoted.chars().all(|c| c.is_ascii_alphanumeric())
                && [
                    "Describe", "Create", "Attach", "Detach", "Delete", "Modify", "Assign",
                    "Unassign",
                ]
                .iter()
                .any(|p| quoted.starts_with(p))
            {
                assert!(
                    prefixd::ec2::ACTIONS.contains(&quoted),
                    "{quoted} is called but not in ACTIONS"
                );
            }
        }
    }
}

#[test]
fn install_cni_copies_plugin_and_conflist_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prefixd"))
        .args(["install-cni", "--bin-dir"])
        .arg(dir.path().join("bin"))
        .arg("--conf-dir")
        .arg(dir.path().join("net.d"))
        .arg("--plugin")
        .arg(env!("CARGO_BIN_EXE_prefixd-cni"))
        .args(["--conflist", "deploy/10-prefixd.conflist"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugin = dir.path().join("bin/prefixd-cni");
    let conf = dir.path().join("net.d/10-prefixd.conflist");
    assert!(plugin.exists() && conf.exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&plugin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let v = std::process::Command::new(&plugin)
        .env("CNI_COMMAND", "VERSION")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains("supportedVersions"));
    // A broken conflist is refused before anything is written.
    std::fs::write(dir.path().join("bad.conflist"), b"{\"cniVersion\":\"9\"}").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prefixd"))
        .args(["install-cni", "--bin-dir"])
        .arg(dir.path().join("bin2"))
        .arg("--conf-dir")
        .arg(dir.path().join("net2"))
        .arg("--conflist")
        .arg(dir.path().join("bad.conflist"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!dir.path().join("net2").exists());
}
