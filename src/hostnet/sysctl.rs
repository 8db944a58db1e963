//! Kernel settings under `/proc/sys`. The `net.*` ones belong to the network namespace of the
//! thread that opens the file, so set them from a thread in the namespace.

use std::path::PathBuf;

/// A sysctl could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("sysctl {key}: {source}{}", hint(source))]
pub struct SysctlError {
    /// The key, e.g. `net.ipv4.ip_forward`.
    pub key: String,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

fn hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
            " (/proc/sys is read-only in an unprivileged container: the DaemonSet's privileged \
             init container sets it with `prefixd install-cni --node-sysctls`)"
        }
        _ => "",
    }
}

/// Sets `key` to `value` unless it has it already (a read-only /proc/sys with the right
/// value is no error). Returns whether it wrote.
pub fn ensure(key: &str, value: &str) -> Result<bool, SysctlError> {
    if get(key)? == value {
        return Ok(false);
    }
    set(key, value)?;
    Ok(true)
}

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Sets `key` (dotted, e.g. `net.ipv4.conf.eth0.rp_filter`; an interface name with dots is not
/// supported) to `value`.
pub fn set(key: &str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(path(key), value).map_err(|source| SysctlError {
        key: key.to_owned(),
        source,
    })
}

/// Reads `key`.
pub fn get(key: &str) -> Result<String, SysctlError> {
    std::fs::read_to_string(path(key))
        .map(|s| s.trim().to_owned())
        .map_err(|source| SysctlError {
            key: key.to_owned(),
            source,
        })
}
