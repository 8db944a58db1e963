//! The `prefixd` binary's help and start-up refusals.

use std::process::Command;

fn prefixd(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_prefixd"))
        .args(args)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn help_lists_every_env_var_with_its_default() {
    let top = String::from_utf8(prefixd(&["--help"], &[]).stdout).unwrap();
    let agent = String::from_utf8(prefixd(&["agent", "--help"], &[]).stdout).unwrap();
    for var in [
        "WARM_PREFIX_TARGET",
        "WARM_IP_TARGET",
        "MINIMUM_IP_TARGET",
        "WARM_ENI_TARGET",
        "MAX_ENI",
        "ENABLE_PREFIX_DELEGATION",
        "IP_COOLDOWN_PERIOD",
        "MAX_PODS",
        "POD_SUBNET_IDS",
        "SECONDARY_IP_FALLBACK",
        "DISABLE_NETWORK_RESOURCE_PROVISIONING",
        "RECONCILE_INTERVAL",
        "RELEASE_DELAY",
        "INSUFFICIENT_CIDR_COOLDOWN",
        "CLUSTER_NAME",
        "EC2_API_QPS",
        "EC2_API_BURST",
        "CHECKPOINT_PATH",
        "SOCKET_PATH",
        "INTROSPECTION_BIND_ADDRESS",
        "METRICS_BIND_ADDRESS",
        "INSTANCE_ID",
        "ENABLE_HOST_NETWORKING",
        "AWS_VPC_ENI_MTU",
        "POD_MTU",
        "AWS_VPC_K8S_CNI_VETHPREFIX",
        "AWS_VPC_K8S_CNI_EXTERNALSNAT",
        "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
        "AWS_VPC_K8S_CNI_RANDOMIZESNAT",
        "AWS_VPC_K8S_CNI_CONNMARK",
        "AWS_VPC_CNI_NODE_PORT_SUPPORT",
        "AWS_EXTERNAL_SERVICE_CIDRS",
    ] {
        assert!(top.contains(var), "prefixd --help lacks {var}");
        assert!(
            agent.contains(&format!("[env: {var}=")),
            "prefixd agent --help lacks {var}"
        );
    }
    assert!(agent.contains("[default: 127.0.0.1:61679]"));
    assert!(agent.contains("[default: /var/lib/prefixd/checkpoint.json]"));
}

#[test]
fn bad_settings_stop_the_agent_naming_the_variable() {
    for (var, val) in [
        ("WARM_PREFIX_TARGET", "-1"),
        ("WARM_IP_TARGET", "ten"),
        ("MAX_PODS", "0"),
        ("EC2_API_QPS", "0"),
        ("RELEASE_DELAY", "soon"),
        ("POD_SUBNET_IDS", "subnet-1,vpc-2"),
        ("SECONDARY_IP_FALLBACK", "maybe"),
        ("INSTANCE_ID", "x-123"),
        ("AWS_VPC_ENI_MTU", "65536"),
        ("AWS_VPC_K8S_CNI_VETHPREFIX", "calico"),
        ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "10.0.0.0/8,nonsense"),
    ] {
        let out = prefixd(&["agent"], &[(var, val)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={val}: {err}");
        assert!(err.contains(var), "{var}={val}: {err}");
    }
    let out = prefixd(&["agent"], &[("INTROSPECTION_BIND_ADDRESS", "localhost")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("INTROSPECTION_BIND_ADDRESS"));
}

#[test]
fn no_imds_and_no_instance_id_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = prefixd(
        &["agent"],
        &[
            (
                "CHECKPOINT_PATH",
                dir.path().join("cp.json").to_str().unwrap(),
            ),
            ("SOCKET_PATH", dir.path().join("s.sock").to_str().unwrap()),
            ("INTROSPECTION_BIND_ADDRESS", "127.0.0.1:0"),
            ("METRICS_BIND_ADDRESS", "127.0.0.1:0"),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INSTANCE_ID"), "{err}");
}

#[test]
fn corrupt_checkpoint_stops_the_agent_naming_file_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    let cp = dir.path().join("checkpoint.json");
    std::fs::write(&cp, b"{\"version\":1,\"enis\":[{\"id\":").unwrap();
    let env = |discard: &'static str| {
        vec![
            ("CHECKPOINT_PATH", cp.to_str().unwrap().to_owned()),
            (
                "SOCKET_PATH",
                dir.path().join("s.sock").to_str().unwrap().to_owned(),
            ),
            ("INTROSPECTION_BIND_ADDRESS", "127.0.0.1:0".into()),
            ("METRICS_BIND_ADDRESS", "127.0.0.1:0".into()),
            ("INSTANCE_ID", "i-0123456789abcdef0".into()),
            ("AWS_REGION", "us-west-2".into()),
            ("AWS_ACCESS_KEY_ID", "x".into()),
            ("AWS_SECRET_ACCESS_KEY", "x".into()),
            // Nothing listens there: the agent must stop on the checkpoint before EC2.
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9".into()),
            ("DISCARD_CHECKPOINT", discard.into()),
        ]
    };
    let run = |discard: &'static str| {
        Command::new(env!("CARGO_BIN_EXE_prefixd"))
            .arg("agent")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env(discard))
            .output()
            .unwrap()
    };
    let out = run("false");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(cp.to_str().unwrap()) && err.contains("--discard-checkpoint"),
        "{err}"
    );
    assert!(cp.exists(), "never a silent reset");
    // With the flag the file is moved aside, a fresh empty checkpoint is written in its place,
    // and start-up goes on to EC2 (not there: stop it).
    let corrupt = std::fs::read(&cp).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_prefixd"))
        .arg("agent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env("true"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let aside = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("checkpoint.json.discarded-")
            })
            .map(|e| e.path())
    };
    let fresh = || {
        std::fs::read(&cp)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(|v| v["version"] == 2)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while (aside().is_none() || fresh().is_none()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let aside = aside().expect("the discarded checkpoint is kept aside");
    assert_eq!(std::fs::read(aside).unwrap(), corrupt);
    let fresh = fresh().expect("a fresh checkpoint in its place");
    assert_eq!(fresh["allocations"].as_array().unwrap().len(), 0);
}

#[test]
fn log_format_json_gives_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_prefixd"))
        .arg("agent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("LOG_FORMAT", "json")
        .env("CHECKPOINT_PATH", dir.path().join("cp.json"))
        .env("SOCKET_PATH", dir.path().join("s.sock"))
        .env("INTROSPECTION_BIND_ADDRESS", "127.0.0.1:0")
        .env("METRICS_BIND_ADDRESS", "127.0.0.1:0")
        .env("INSTANCE_ID", "i-0123456789abcdef0")
        .env("AWS_REGION", "us-west-2")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(
        v["level"].is_string() && v["fields"]["message"].is_string(),
        "{v}"
    );
}
