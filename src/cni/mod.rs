//! The `prefixd-cni` plugin. This build answers VERSION; ADD, DEL, CHECK, GC and STATUS need the
//! agent socket (issue 5) and answer with a CNI error until then, never a panic.

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

/// Spec versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
const OUR_VERSION: &str = "1.1.0";

/// A CNI error, printed on stdout as the spec asks.
#[derive(Debug, Serialize)]
pub struct CniError {
    /// Spec version of the message.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Error code (1 incompatible version, 4 invalid config, 7 invalid env, 11 try again later).
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// Runs one plugin invocation with the given `CNI_COMMAND`; returns (stdout JSON, success).
pub fn run(command: Option<&str>) -> (String, bool) {
    match command {
        Some("VERSION") => (
            serde_json::json!({
                "cniVersion": OUR_VERSION,
                "supportedVersions": SUPPORTED_VERSIONS,
            })
            .to_string(),
            true,
        ),
        Some(cmd @ ("ADD" | "DEL" | "CHECK" | "GC" | "STATUS")) => error(
            11,
            format!(
                "prefixd-cni: {cmd} needs the prefixd agent socket, which this build does not have yet"
            ),
            String::new(),
        ),
        Some(other) => error(
            4,
            format!("prefixd-cni: unknown CNI_COMMAND {other:?}"),
            "expected ADD, DEL, CHECK, GC, STATUS or VERSION".into(),
        ),
        None => error(
            7,
            "prefixd-cni: CNI_COMMAND is not set".into(),
            "the container runtime sets it; to try the plugin by hand, set CNI_COMMAND=VERSION"
                .into(),
        ),
    }
}

fn error(code: u32, msg: String, details: String) -> (String, bool) {
    let e = CniError {
        cni_version: OUR_VERSION.into(),
        code,
        msg,
        details,
    };
    (serde_json::to_string(&e).expect("error serializes"), false)
}

/// Entry point of the `prefixd-cni` binary.
pub fn main() -> ExitCode {
    let cmd = std::env::var("CNI_COMMAND").ok();
    let (out, ok) = run(cmd.as_deref());
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{out}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lists_supported_versions() {
        let (out, ok) = run(Some("VERSION"));
        assert!(ok);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn other_commands_are_cni_errors() {
        for (cmd, code) in [(Some("ADD"), 11), (Some("BOGUS"), 4), (None, 7)] {
            let (out, ok) = run(cmd);
            assert!(!ok);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["code"], code);
        }
    }
}
