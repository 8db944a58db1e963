//! `prefixd mock-ec2` as its own process, driven by a client written by others: the aws CLI
//! (from `scripts/test-all`'s PREFIXD_AWS_CLI, else PATH; without it the test fails and says how
//! to get it), signing as any account's access key.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// A running `prefixd mock-ec2`, killed when dropped.
pub struct MockProcess {
    child: Child,
    /// Its EC2 endpoint.
    pub endpoint: String,
    /// Its start line (names → ids).
    pub start: Value,
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MockProcess {
    /// Starts the mock on an ephemeral loopback port, with `scenario` when given.
    pub fn start(scenario: Option<&Path>) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_prefixd"));
        cmd.args(["mock-ec2", "--listen", "127.0.0.1:0"]);
        if let Some(s) = scenario {
            cmd.arg("--scenario").arg(s);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prefixd mock-ec2");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let start: Value =
            serde_json::from_str(&line).expect("mock-ec2 prints its endpoint as JSON");
        Self {
            child,
            endpoint: start["endpoint"].as_str().unwrap().to_owned(),
            start,
        }
    }

    /// Its listening address (for the admin API).
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.trim_start_matches("http://").parse().unwrap()
    }

    /// POSTs JSON to an admin endpoint (`/_mock/…`) and checks it was taken.
    pub fn admin(&self, path: &str, body: &Value) {
        let (status, text) = super::http(self.addr(), "POST", path, &[], &body.to_string());
        assert_eq!(status, 200, "{path}: {text}");
    }

    /// The mock's call counts.
    pub fn stats(&self) -> Value {
        let (status, text) = super::http(self.addr(), "GET", "/_mock/stats", &[], "");
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// The aws CLI against this mock, as the default account.
    pub fn aws(&self) -> Aws {
        Aws {
            bin: aws_binary(),
            endpoint: self.endpoint.clone(),
            key: "test".into(),
        }
    }
}

/// The aws CLI binary.
pub fn aws_binary() -> String {
    if let Ok(p) = std::env::var("PREFIXD_AWS_CLI") {
        return p;
    }
    let found = Command::new("aws").arg("--version").output();
    match found {
        Ok(o) if o.status.success() => "aws".into(),
        _ => panic!(
            "the aws CLI is needed for this test and was not found: run ./scripts/test-all \
             (it installs it into ~/.cache/prefixd-awscli), or set PREFIXD_AWS_CLI"
        ),
    }
}

/// The aws CLI, signing with one access key.
#[derive(Clone)]
pub struct Aws {
    /// The binary.
    pub bin: String,
    /// The endpoint.
    pub endpoint: String,
    /// AWS_ACCESS_KEY_ID.
    pub key: String,
}

impl Aws {
    /// The same CLI signing with `key` (another account, when the mock maps it to one).
    pub fn as_key(&self, key: &str) -> Self {
        Self {
            key: key.into(),
            ..self.clone()
        }
    }

    /// `aws ec2 ARGS…` → its JSON, or its stderr.
    pub fn run(&self, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(&self.bin)
            .args(["--endpoint-url", &self.endpoint, "--output", "json", "ec2"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &self.key)
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-west-2")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_MAX_ATTEMPTS", "1")
            .output()
            .expect("run the aws CLI");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    }

    /// `aws ec2 ARGS…`, which must succeed.
    pub fn ok(&self, args: &[&str]) -> Value {
        self.run(args)
            .unwrap_or_else(|e| panic!("aws ec2 {}: {e}", args.join(" ")))
    }
}
