//! Releases the agent has not been told of yet. A DEL that cannot reach the agent (stopped,
//! restarting) has already removed the pod's network; it records the attachment here — one
//! small file, written whole and renamed into place, next to the socket — and succeeds, so that
//! neither the runtime's retries nor the agent's downtime decide whether the address comes
//! back. The agent releases what it finds here before it serves its first request, and then
//! every few seconds.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::core::{PodKey, sha1};

/// The directory next to `socket`: `<socket's dir>/pending-release`.
pub fn dir_of(socket: &Path) -> PathBuf {
    socket
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("pending-release")
}

/// Records `key` for release. Durable against the plugin's own crash: the file appears whole
/// or not at all.
pub fn record(dir: &Path, key: &PodKey) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec(key).expect("a key serializes");
    let name = sha1::hex(&json);
    let path = dir.join(format!("{name}.json"));
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// What is recorded: each file with its key, or with why it cannot be read (such a file is
/// left for an operator, and named in the agent's log).
pub fn list(dir: &Path) -> Vec<(PathBuf, Result<PodKey, String>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let key = std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<PodKey>(&b).map_err(|e| e.to_string()));
            (p, key)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_keys_are_listed_once_and_bad_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let dir = dir_of(&d.path().join("agent.sock"));
        assert!(list(&dir).is_empty(), "no directory yet");
        let k = PodKey::new("net", "c1", "eth0").unwrap();
        let p = record(&dir, &k).unwrap();
        assert_eq!(record(&dir, &k).unwrap(), p, "the same key, the same file");
        std::fs::write(dir.join("junk.json"), b"{").unwrap();
        let l = list(&dir);
        assert_eq!(l.len(), 2);
        assert!(l.iter().any(|(_, r)| r.as_ref() == Ok(&k)));
        assert!(l.iter().any(|(_, r)| r.is_err()));
        assert!(
            !std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".tmp")),
            "no temporary file is left"
        );
    }
}
