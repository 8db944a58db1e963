//! `prefixd agent` settings: the agent's own table of env vars (each also a flag) and
//! [`AgentConfig::from_lookup`], which reads them — with the warm-pool settings of
//! [`crate::core::config`] and the EC2 limiter's of [`crate::ec2::limiter`] — into one typed
//! config before anything starts. A bad value stops start-up with a message naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::core::config::{ENABLE_IPV4, ENABLE_IPV6, Families, PoolConfig};
use crate::core::settings::{ConfigError, Setting, Values, ser_duration};
use crate::core::{InstanceId, SubnetId};
use crate::ec2::limiter::{self, LimiterConfig};
use crate::hostnet::config::HostConfig;

/// INSTANCE_ID.
pub const INSTANCE_ID: Setting = Setting::optional(
    "INSTANCE_ID",
    "from IMDS",
    "the node's instance id; set it where there is no IMDS (LocalStack)",
);
/// MAX_PODS.
pub const MAX_PODS: Setting =
    Setting::optional("MAX_PODS", "EKS formula", "pod cap; growth stops there");
/// POD_SUBNET_IDS.
pub const POD_SUBNET_IDS: Setting = Setting::optional(
    "POD_SUBNET_IDS",
    "node subnet",
    "subnets for new ENIs, comma-separated; the one with most free addresses first",
);
/// SECONDARY_IP_FALLBACK.
pub const SECONDARY_IP_FALLBACK: Setting = Setting::new(
    "SECONDARY_IP_FALLBACK",
    "true",
    "/32 addresses when no /28 can be had (fragmented subnet, no prefix support)",
);
/// DISABLE_NETWORK_RESOURCE_PROVISIONING.
pub const DISABLE_NETWORK_RESOURCE_PROVISIONING: Setting = Setting::new(
    "DISABLE_NETWORK_RESOURCE_PROVISIONING",
    "false",
    "never change EC2; hand out only what is attached",
);
/// RECONCILE_INTERVAL.
pub const RECONCILE_INTERVAL: Setting = Setting::new(
    "RECONCILE_INTERVAL",
    "60s",
    "full resync with EC2 this often",
);
/// RELEASE_DELAY.
pub const RELEASE_DELAY: Setting = Setting::new(
    "RELEASE_DELAY",
    "30s",
    "excess must last this long before it is released",
);
/// INSUFFICIENT_CIDR_COOLDOWN.
pub const INSUFFICIENT_CIDR_COOLDOWN: Setting = Setting::new(
    "INSUFFICIENT_CIDR_COOLDOWN",
    "120s",
    "no prefixes from a subnet for this long after InsufficientCidrBlocks",
);
/// POOL_TICK.
pub const POOL_TICK: Setting = Setting::new(
    "POOL_TICK",
    "1s",
    "pool loop tick (an ADD that finds no address wakes it at once)",
);
/// LEAK_SWEEP_INTERVAL.
pub const LEAK_SWEEP_INTERVAL: Setting = Setting::new(
    "LEAK_SWEEP_INTERVAL",
    "5m",
    "look for leaked ENIs (tagged, available) this often",
);
/// LEAKED_ENI_AGE.
pub const LEAKED_ENI_AGE: Setting = Setting::new(
    "LEAKED_ENI_AGE",
    "5m",
    "another node's detached tagged ENI is a leak once this old",
);
/// CLUSTER_NAME.
pub const CLUSTER_NAME: Setting = Setting::optional(
    "CLUSTER_NAME",
    "unset",
    "tag ENIs with the cluster; sweep only its leaks",
);
/// CHECKPOINT_PATH.
pub const CHECKPOINT_PATH: Setting = Setting::new(
    "CHECKPOINT_PATH",
    "/var/lib/prefixd/checkpoint.json",
    "the datastore's checkpoint",
);
/// DISCARD_CHECKPOINT.
pub const DISCARD_CHECKPOINT: Setting = Setting::new(
    "DISCARD_CHECKPOINT",
    "false",
    "move a checkpoint that cannot be used (corrupt, of another version) aside and start empty; a readable one is always kept",
);
/// SOCKET_PATH.
pub const SOCKET_PATH: Setting = Setting::new(
    "SOCKET_PATH",
    "/run/prefixd/agent.sock",
    "the CNI plugin's socket (mode 0600, root peers only)",
);
/// INTROSPECTION_BIND_ADDRESS.
pub const INTROSPECTION_BIND_ADDRESS: Setting = Setting::new(
    "INTROSPECTION_BIND_ADDRESS",
    "127.0.0.1:61679",
    "introspection and health: /v1/pool, /v1/enis, /v1/allocations, /v1/config, /healthz, /readyz",
);
/// METRICS_BIND_ADDRESS.
pub const METRICS_BIND_ADDRESS: Setting = Setting::new(
    "METRICS_BIND_ADDRESS",
    "127.0.0.1:61678",
    "Prometheus metrics: /metrics",
);

/// The agent's own settings (the warm-pool and limiter settings have their own tables).
pub const SETTINGS: &[Setting] = &[
    ENABLE_IPV4,
    ENABLE_IPV6,
    INSTANCE_ID,
    MAX_PODS,
    POD_SUBNET_IDS,
    SECONDARY_IP_FALLBACK,
    DISABLE_NETWORK_RESOURCE_PROVISIONING,
    RECONCILE_INTERVAL,
    RELEASE_DELAY,
    INSUFFICIENT_CIDR_COOLDOWN,
    POOL_TICK,
    LEAK_SWEEP_INTERVAL,
    LEAKED_ENI_AGE,
    CLUSTER_NAME,
    CHECKPOINT_PATH,
    DISCARD_CHECKPOINT,
    SOCKET_PATH,
    INTROSPECTION_BIND_ADDRESS,
    METRICS_BIND_ADDRESS,
];

/// Every table `prefixd agent` reads, in the order `--help` lists them.
pub const TABLES: &[&[Setting]] = &[
    crate::core::config::SETTINGS,
    SETTINGS,
    crate::hostnet::config::SETTINGS,
    limiter::SETTINGS,
];

/// Validated agent settings.
#[derive(Debug, Clone, Serialize)]
pub struct AgentConfig {
    /// Warm targets, mode, cooldown.
    pub pool: PoolConfig,
    /// ENABLE_IPv4, ENABLE_IPv6.
    pub families: Families,
    /// EC2_API_QPS, EC2_API_BURST.
    pub limiter: LimiterConfig,
    /// The node's data plane: ENABLE_HOST_NETWORKING, MTUs, SNAT...
    pub host: HostConfig,
    /// INSTANCE_ID.
    pub instance_id: Option<InstanceId>,
    /// MAX_PODS.
    pub max_pods: Option<u32>,
    /// POD_SUBNET_IDS.
    pub pod_subnet_ids: Vec<SubnetId>,
    /// SECONDARY_IP_FALLBACK.
    pub secondary_ip_fallback: bool,
    /// DISABLE_NETWORK_RESOURCE_PROVISIONING.
    pub disable_provisioning: bool,
    /// RECONCILE_INTERVAL.
    #[serde(serialize_with = "ser_duration")]
    pub reconcile_interval: Duration,
    /// RELEASE_DELAY.
    #[serde(serialize_with = "ser_duration")]
    pub release_delay: Duration,
    /// INSUFFICIENT_CIDR_COOLDOWN.
    #[serde(serialize_with = "ser_duration")]
    pub insufficient_cidr_cooldown: Duration,
    /// POOL_TICK.
    #[serde(serialize_with = "ser_duration")]
    pub pool_tick: Duration,
    /// LEAK_SWEEP_INTERVAL.
    #[serde(serialize_with = "ser_duration")]
    pub leak_sweep_interval: Duration,
    /// LEAKED_ENI_AGE.
    #[serde(serialize_with = "ser_duration")]
    pub leaked_eni_age: Duration,
    /// CLUSTER_NAME.
    pub cluster_name: Option<String>,
    /// CHECKPOINT_PATH.
    pub checkpoint_path: PathBuf,
    /// DISCARD_CHECKPOINT.
    pub discard_checkpoint: bool,
    /// SOCKET_PATH.
    pub socket_path: PathBuf,
    /// INTROSPECTION_BIND_ADDRESS.
    pub introspection_bind_address: SocketAddr,
    /// METRICS_BIND_ADDRESS.
    pub metrics_bind_address: SocketAddr,
}

/// Longest Unix socket path (`sun_path` holds 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

fn kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a regular file"
    }
}

/// A path whose parent, when it exists, is a directory: the start refuses what could only
/// hang (a FIFO opened for reading) or fail later (a directory), naming the setting.
fn checked_path(v: &Values, s: &Setting) -> Result<PathBuf, ConfigError> {
    let text = v.value(s).unwrap_or_default();
    if text.trim().is_empty() {
        return Err(ConfigError::new(s.var, text, "it is empty; set a path"));
    }
    let path = PathBuf::from(text);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(m) = std::fs::metadata(dir)
        && !m.is_dir()
    {
        return Err(ConfigError::new(
            s.var,
            text,
            format!(
                "its parent {} is {}, not a directory",
                dir.display(),
                kind(&m)
            ),
        ));
    }
    Ok(path)
}

/// A regular file's path (absent is fine: it is created).
fn file_path(v: &Values, s: &Setting) -> Result<PathBuf, ConfigError> {
    let path = checked_path(v, s)?;
    if let Ok(m) = std::fs::symlink_metadata(&path)
        && !m.is_file()
    {
        return Err(ConfigError::new(
            s.var,
            &path.display().to_string(),
            format!("it is {}; set the path of a regular file", kind(&m)),
        ));
    }
    Ok(path)
}

/// SOCKET_PATH: short enough for a Unix socket, and a socket when it exists (a stale one is
/// replaced; anything else is never removed).
fn socket_path(v: &Values) -> Result<PathBuf, ConfigError> {
    let path = checked_path(v, &SOCKET_PATH)?;
    let shown = path.display().to_string();
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(ConfigError::new(
            SOCKET_PATH.var,
            &shown,
            format!(
                "it is {} bytes; a Unix socket path holds at most {MAX_SOCKET_PATH}",
                path.as_os_str().len()
            ),
        ));
    }
    if let Ok(m) = std::fs::symlink_metadata(&path)
        && !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())
    {
        return Err(ConfigError::new(
            SOCKET_PATH.var,
            &shown,
            format!(
                "it is {}, not a socket; remove it or set another path",
                kind(&m)
            ),
        ));
    }
    Ok(path)
}

const ZERO: Duration = Duration::ZERO;
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

impl AgentConfig {
    /// Reads every setting of [`TABLES`] from `v`; absent names take their defaults.
    pub fn from_lookup(v: &Values) -> Result<Self, ConfigError> {
        let address = "an address and port, e.g. 127.0.0.1:61679";
        let max_pods = match v.value(&MAX_PODS) {
            None => None,
            Some(_) => Some(v.positive_count(&MAX_PODS, crate::ipc::MAX_ATTACHMENTS)?),
        };
        let pool = PoolConfig::from_lookup(v)?;
        let families = Families::from_lookup(v)?;
        if families.ipv6 && pool.mode() != crate::core::Mode::Prefix {
            return Err(ConfigError::new(
                ENABLE_IPV6.var,
                "true",
                "IPv6 is prefix delegation of one /80 and cannot run in secondary IP mode: \
                 set ENABLE_PREFIX_DELEGATION=true",
            ));
        }
        Ok(Self {
            pool,
            families,
            limiter: LimiterConfig::from_lookup(v)?,
            host: HostConfig::from_lookup(v)?,
            instance_id: v.optional(&INSTANCE_ID, "an instance id, i- and hex")?,
            max_pods,
            pod_subnet_ids: v.list(&POD_SUBNET_IDS, "subnet ids, subnet- and hex")?,
            secondary_ip_fallback: v.bool(&SECONDARY_IP_FALLBACK)?,
            disable_provisioning: v.bool(&DISABLE_NETWORK_RESOURCE_PROVISIONING)?,
            reconcile_interval: v.duration_in(&RECONCILE_INTERVAL, SECOND, DAY)?,
            release_delay: v.duration_in(&RELEASE_DELAY, ZERO, DAY)?,
            insufficient_cidr_cooldown: v.duration_in(&INSUFFICIENT_CIDR_COOLDOWN, ZERO, DAY)?,
            pool_tick: v.duration_in(&POOL_TICK, Duration::from_millis(10), MINUTE * 10)?,
            leak_sweep_interval: v.duration_in(&LEAK_SWEEP_INTERVAL, SECOND, DAY)?,
            leaked_eni_age: v.duration_in(&LEAKED_ENI_AGE, ZERO, DAY * 7)?,
            cluster_name: v
                .value(&CLUSTER_NAME)
                .map(str::to_owned)
                .filter(|c| !c.is_empty()),
            checkpoint_path: file_path(v, &CHECKPOINT_PATH)?,
            discard_checkpoint: v.bool(&DISCARD_CHECKPOINT)?,
            socket_path: socket_path(v)?,
            introspection_bind_address: v.parsed(&INTROSPECTION_BIND_ADDRESS, address)?,
            metrics_bind_address: v.parsed(&METRICS_BIND_ADDRESS, address)?,
        })
    }

    /// The settings a policy's env vars give (`prefixd WARM_IP_TARGET=5`: the simulator's and
    /// `prefixd capacity`'s policies), through [`TABLES`], their defaults and validation; the
    /// process environment is not read.
    pub fn from_pairs(
        pairs: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        Values::from_pairs(pairs, TABLES, "agent").and_then(|v| Self::from_lookup(&v))
    }

    /// The defaults, with `pairs` set (names from [`TABLES`]; others are refused).
    pub fn with<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        Self::from_lookup(&Values::from_pairs(pairs, TABLES, "agent")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bad_values() {
        let c = AgentConfig::with([]).unwrap();
        assert_eq!(c.reconcile_interval, Duration::from_secs(60));
        assert_eq!(c.limiter.burst, 40);
        assert_eq!(c.max_pods, None);
        assert_eq!(c.socket_path, PathBuf::from("/run/prefixd/agent.sock"));
        for (var, val) in [
            ("MAX_PODS", "0"),
            ("EC2_API_QPS", "0"),
            ("EC2_API_BURST", "0"),
            ("RELEASE_DELAY", "soon"),
            ("POOL_TICK", "0s"),
            ("RECONCILE_INTERVAL", "18446744073709551615s"),
            ("RECONCILE_INTERVAL", "5124095576030431h"),
            ("RECONCILE_INTERVAL", "2d"),
            ("RELEASE_DELAY", "25h"),
            ("LEAK_SWEEP_INTERVAL", "0s"),
            ("EC2_API_QPS", "1e-300"),
            ("EC2_API_QPS", "NaN"),
            ("EC2_API_QPS", "inf"),
            ("POD_SUBNET_IDS", "subnet-1,vpc-2"),
            ("SECONDARY_IP_FALLBACK", "maybe"),
            ("INSTANCE_ID", "x-123"),
            ("INTROSPECTION_BIND_ADDRESS", "localhost"),
        ] {
            let e = AgentConfig::with([(var, val)]).unwrap_err();
            assert_eq!(e.var, var, "{e}");
        }
        let c = AgentConfig::with([("POD_SUBNET_IDS", "subnet-1, subnet-2,"), ("MAX_PODS", "9")])
            .unwrap();
        assert_eq!(c.pod_subnet_ids.len(), 2);
        assert_eq!(c.max_pods, Some(9));
        assert!(AgentConfig::with([("WARM_PREFIX_TARGETS", "1")]).is_err());
    }

    #[test]
    fn paths_of_the_wrong_kind_are_refused_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fifo = d.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let file = d.join("file");
        std::fs::write(&file, b"x").unwrap();
        let long = d.join("s".repeat(120));
        let under_file = file.join("agent.sock");
        for (var, path, why) in [
            ("CHECKPOINT_PATH", d.to_path_buf(), "a directory"),
            ("CHECKPOINT_PATH", fifo.clone(), "a FIFO"),
            ("CHECKPOINT_PATH", under_file.clone(), "not a directory"),
            ("SOCKET_PATH", fifo.clone(), "a FIFO"),
            ("SOCKET_PATH", file.clone(), "not a socket"),
            ("SOCKET_PATH", long, "at most 107"),
            ("SOCKET_PATH", under_file, "not a directory"),
        ] {
            let p = path.display().to_string();
            let e = AgentConfig::with([(var, p.as_str())]).unwrap_err();
            assert_eq!(e.var, var, "{e}");
            assert!(e.to_string().contains(why), "{var}={p}: {e}");
        }
        // A regular checkpoint and an absent socket are fine.
        let p = file.display().to_string();
        AgentConfig::with([("CHECKPOINT_PATH", p.as_str())]).unwrap();
    }
}
