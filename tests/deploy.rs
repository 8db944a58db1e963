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
    let used: std::collections::BTreeSet<String> = prefixd::ec2::Action::AGENT
        .iter()
        .map(|a| a.name().to_owned())
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
    // Every action the SDK adapter names is in Action::AGENT (and so in the policy), and it
    // names them all.
    let src = std::fs::read_to_string("src/ec2/sdk.rs").unwrap();
    let mut named = std::collections::BTreeSet::new();
    for part in src.split("Action::").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let action: prefixd::ec2::Action = name.parse().unwrap();
        assert!(
            prefixd::ec2::Action::AGENT.contains(&action),
            "{name} is called but not in Action::AGENT"
        );
        named.insert(action);
    }
    for a in prefixd::ec2::Action::AGENT {
        // CreateTags is never called itself: tagging on create (TagSpecification) needs it.
        assert!(
            named.contains(a) || *a == prefixd::ec2::Action::CreateTags,
            "Action::AGENT lists {a}, the adapter never calls it"
        );
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

/// The symbols of a binary, demangled (binutils' nm).
fn symbols(binary: &str) -> String {
    let out = std::process::Command::new("nm")
        .args(["-C", binary])
        .output()
        .expect("nm (binutils) lists a binary's symbols");
    assert!(out.status.success(), "nm {binary} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_plugin_links_no_async_runtime_no_aws_sdk_and_no_http_stack() {
    // prefixd-cni is exec'd for every pod: it carries the socket client, the CNI logic and the
    // kernel calls, nothing of the agent's runtime. The agent binary is the control: the same
    // check finds those crates there.
    let plugin = symbols(env!("CARGO_BIN_EXE_prefixd-cni"));
    let agent = symbols(env!("CARGO_BIN_EXE_prefixd"));
    for krate in [
        "tokio::",
        "aws_sdk_ec2::",
        "aws_smithy",
        "hyper::",
        "axum::",
    ] {
        assert!(agent.contains(krate), "the control: prefixd links {krate}");
        assert!(
            !plugin.contains(krate),
            "prefixd-cni links {krate}, which it does not use"
        );
    }
}

#[test]
fn the_node_image_is_built_without_the_test_bench() {
    let dockerfile = std::fs::read_to_string("deploy/Dockerfile").unwrap();
    assert!(
        dockerfile.contains("cargo build --release --locked --bins --no-default-features"),
        "{dockerfile}"
    );
    // The plugin as nodes run it: static (scripts/test-all builds and checks it that way too).
    assert!(
        dockerfile.contains("./scripts/build-cni --no-default-features"),
        "{dockerfile}"
    );
    // And that build works: scripts/test-all checks it (`cargo check --no-default-features`).
    let test_all = std::fs::read_to_string("scripts/test-all").unwrap();
    assert!(test_all.contains("cargo check --locked --bins --no-default-features"));
}

#[test]
fn the_daemonset_grants_exactly_what_the_data_plane_needs() {
    let ds = std::fs::read_to_string("deploy/base/daemonset.yaml").unwrap();
    // The agent: NET_ADMIN over nothing (links, routes, rules, its nftables table).
    assert!(
        ds.contains("drop: [\"ALL\"]\n              add: [\"NET_ADMIN\"]"),
        "{ds}"
    );
    // The sysctls: set once by the init container, the only privileged one.
    assert!(ds.contains("\"install-cni\", \"--node-sysctls\""), "{ds}");
    assert_eq!(ds.matches("privileged: true").count(), 1, "{ds}");
    // The agent applies its table with nft: the image has it.
    let dockerfile = std::fs::read_to_string("deploy/Dockerfile").unwrap();
    assert!(dockerfile.contains("install -y --no-install-recommends nftables"));
    // And the conflist makes prefixd-cni the main plugin, portmap after it.
    let list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/10-prefixd.conflist").unwrap())
            .unwrap();
    assert_eq!(list["plugins"][0]["type"], "prefixd-cni");
    assert_eq!(list["plugins"][1]["type"], "portmap");
}

#[test]
fn the_reports_policy_grants_exactly_what_their_adapter_calls() {
    // deploy/iam-reports-policy.json = ec2::read::ACTIONS = the actions src/ec2/sdk_read.rs
    // names (tests/reports.rs also runs both reports under that policy alone and sees every
    // action used and none refused).
    let policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/iam-reports-policy.json").unwrap())
            .unwrap();
    let mut granted = std::collections::BTreeSet::new();
    for st in policy["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow");
        assert_eq!(
            st["Resource"], "*",
            "EC2's Describe calls take no resource ARNs"
        );
        for a in st["Action"].as_array().unwrap() {
            let a = a
                .as_str()
                .unwrap()
                .strip_prefix("ec2:")
                .expect("only ec2 actions");
            let action: prefixd::ec2::Action = a.parse().unwrap();
            assert!(
                !action.is_mutating(),
                "{a} changes EC2: the reports only read"
            );
            granted.insert(action);
        }
    }
    let declared: std::collections::BTreeSet<_> =
        prefixd::ec2::read::ACTIONS.iter().copied().collect();
    assert_eq!(granted, declared);
    let src = std::fs::read_to_string("src/ec2/sdk_read.rs").unwrap();
    let named: std::collections::BTreeSet<prefixd::ec2::Action> = src
        .split("Action::")
        .skip(1)
        .map(|part| {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            name.parse().unwrap()
        })
        .collect();
    assert_eq!(
        named, declared,
        "the reports' adapter calls what ACTIONS lists"
    );
}
