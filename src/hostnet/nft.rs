//! nftables through the `nft` command: a script applied atomically (`nft -f -`, one
//! transaction), and JSON listings read back. Run in a namespace by running it from a thread in
//! that namespace ([`super::netns::NetNs::run`]): the child process inherits it.

use std::io::Write;
use std::process::{Command, Stdio};

/// `nft` failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` is not installed.
    #[error("nft (nftables) is not installed; install the nftables package")]
    Missing,
    /// `nft` could not be run.
    #[error("running nft: {0}")]
    Spawn(#[source] std::io::Error),
    /// `nft` refused the script or the command.
    #[error("nft {what} failed: {stderr}")]
    Refused {
        /// What was asked.
        what: String,
        /// What nft said.
        stderr: String,
    },
    /// Its JSON could not be read.
    #[error("nft {what} printed JSON that could not be read: {why}")]
    Json {
        /// What was asked.
        what: String,
        /// Where and what.
        why: String,
    },
}

fn run(args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NftError::Missing
            } else {
                NftError::Spawn(e)
            }
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if !out.status.success() {
        return Err(NftError::Refused {
            what: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies `script` as one transaction (all of it or none).
pub fn apply(script: &str) -> Result<(), NftError> {
    run(&["-f", "-"], Some(script)).map(drop)
}

/// `nft -j ARGS`, parsed.
pub fn list_json(args: &[&str]) -> Result<serde_json::Value, NftError> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let text = run(&all, None)?;
    serde_json::from_str(&text).map_err(|e| NftError::Json {
        what: args.join(" "),
        why: e.to_string(),
    })
}

/// `nft ARGS` as text.
pub fn list_text(args: &[&str]) -> Result<String, NftError> {
    run(args, None)
}

/// Whether `nft` can be run at all.
pub fn available() -> Result<(), NftError> {
    run(&["--version"], None).map(drop)
}

/// The named counters of table `family name`: name → (packets, bytes). A missing table has
/// none.
pub fn counters(family: &str, table: &str) -> Result<Vec<(String, u64, u64)>, NftError> {
    let v = match list_json(&["list", "counters", "table", family, table]) {
        Ok(v) => v,
        Err(NftError::Refused { stderr, .. }) if stderr.contains("No such file") => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    Ok(v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| {
            let c = o.get("counter")?;
            Some((
                c["name"].as_str()?.to_owned(),
                c["packets"].as_u64().unwrap_or(0),
                c["bytes"].as_u64().unwrap_or(0),
            ))
        })
        .collect())
}

/// Whether table `family name` exists.
pub fn has_table(family: &str, table: &str) -> Result<bool, NftError> {
    match run(&["list", "table", family, table], None) {
        Ok(_) => Ok(true),
        Err(NftError::Refused { stderr, .. }) if stderr.contains("No such file") => Ok(false),
        Err(e) => Err(e),
    }
}
