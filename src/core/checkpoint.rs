//! The snapshot: the whole pool as versioned JSON, the base that the change log (see
//! [`super::wal`] and [`super::journal`]) continues; and the errors of reading and writing both.
//!
//! Read: at most [`MAX_CHECKPOINT_BYTES`]; an unknown version, bad JSON or contradictory content
//! (one address held twice) is an error that names the file and [`DISCARD_FLAG`], never a silent
//! reset that could hand one address to two pods. Version 1 (a snapshot with no log, written by
//! earlier prefixd) is read and migrated; version 2 names the store and generation its log
//! continues.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::datastore::{Allocation, Datastore, PodInfo};
use super::pool6::Allocation6;
use super::types::{EniId, PodKey, Prefix28, Prefix80, UnixMillis};

/// The snapshot format this build writes.
pub const CHECKPOINT_VERSION: u32 = 2;
/// The snapshot format of earlier prefixd: the whole pool rewritten on every change, no log.
/// Read and migrated.
pub const CHECKPOINT_V1: u32 = 1;
/// Largest checkpoint read; a bigger file is refused rather than read into memory.
pub const MAX_CHECKPOINT_BYTES: u64 = 64 << 20;
/// The flag that starts the agent without its checkpoint; named in every load error.
pub const DISCARD_FLAG: &str = "--discard-checkpoint";

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file system call failed.
    #[error("checkpoint {path}: {op} failed: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("write", "fsync", "rename"...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error(
        "checkpoint {path} is corrupt ({source}); refusing to start, since starting empty could \
         give one address to two pods. Inspect or move the file, or start once with {DISCARD_FLAG} \
         to throw it away"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The content parses but contradicts itself.
    #[error(
        "checkpoint {path} is inconsistent: {why}; refusing to start. Inspect or move the file, \
         or start once with {DISCARD_FLAG} to throw it away"
    )]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Written by a newer (or unknown) prefixd.
    #[error(
        "checkpoint {path} has version {version}, but this prefixd reads only versions \
         {CHECKPOINT_V1} and {CHECKPOINT_VERSION}; run the prefixd that wrote it, or start once with {DISCARD_FLAG} \
         to throw it away"
    )]
    UnknownVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u64,
    },
    /// Larger than [`MAX_CHECKPOINT_BYTES`].
    #[error(
        "checkpoint {path} is {size} bytes, more than the {MAX_CHECKPOINT_BYTES} a checkpoint can \
         be; inspect it, or start once with {DISCARD_FLAG} to throw it away"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// A log record before the tail is damaged (a torn last record is not an error).
    #[error(
        "checkpoint log {path}: {why}; refusing to start, since the changes after it would be \
         lost. Inspect or move the file, or start once with {DISCARD_FLAG} to throw the \
         checkpoint and its log away"
    )]
    LogCorrupt {
        /// The log.
        path: PathBuf,
        /// What is wrong, and where.
        why: String,
    },
    /// The log does not continue the snapshot beside it (another store's, a newer generation,
    /// missing, or without a snapshot).
    #[error(
        "checkpoint log {path} does not belong to its snapshot: {why}; refusing to start. \
         Inspect or move the files, or start once with {DISCARD_FLAG} to throw them away"
    )]
    LogMismatch {
        /// The log.
        path: PathBuf,
        /// How it differs.
        why: String,
    },
    /// Injected by a test sink.
    #[error("checkpoint write failed: {0}")]
    Injected(String),
}

impl CheckpointError {
    /// Whether the file was read and cannot be used (corrupt, contradictory, of an unknown
    /// version, too large): the only case the discard flag acts on. A file that could not be
    /// read at all (permissions, I/O) is not discarded: that is the machine's problem.
    pub fn is_unreadable(&self) -> bool {
        matches!(
            self,
            Self::Corrupt { .. }
                | Self::Inconsistent { .. }
                | Self::UnknownVersion { .. }
                | Self::TooLarge { .. }
                | Self::LogCorrupt { .. }
                | Self::LogMismatch { .. }
        )
    }
}

/// The snapshot (versions 1 and 2; version 1 has no store or generation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// [`CHECKPOINT_VERSION`] when written by this build.
    pub version: u32,
    /// Random id of the store, repeated in its log's header (0 in version 1).
    #[serde(default)]
    pub store: u64,
    /// Bumped by every snapshot; the log that continues it carries the same (0 in version 1).
    #[serde(default)]
    pub generation: u64,
    /// The ENIs and what was attached to them when it was written (EC2 stays the authority).
    pub enis: Vec<EniRecord>,
    /// Who holds which address.
    pub allocations: Vec<AllocationRecord>,
    /// Addresses cooling down, with the end of their cooldown.
    pub cooldowns: Vec<CooldownRecord>,
    /// The IPv6 pool; absent on a node that never had a /80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Section>,
}

/// The IPv6 pool in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipv6Section {
    /// The node's /80.
    pub prefix: Option<Prefix80>,
    /// Who holds which /128 (stranded ones included).
    pub allocations: Vec<Allocation6Record>,
    /// Addresses cooling down.
    pub cooldowns: Vec<Cooldown6Record>,
}

/// One IPv6 allocation in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allocation6Record {
    /// The CNI attachment.
    pub key: PodKey,
    /// Its address.
    pub address: Ipv6Addr,
    /// K8S_POD_NAMESPACE.
    pub pod_namespace: String,
    /// K8S_POD_NAME.
    pub pod_name: String,
    /// When it was handed out, in ms since the epoch.
    pub allocated_at_ms: UnixMillis,
}

/// One cooling IPv6 address in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cooldown6Record {
    /// The address.
    pub address: Ipv6Addr,
    /// End of its cooldown, in ms since the epoch.
    pub until_ms: UnixMillis,
}

/// One ENI in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EniRecord {
    /// The ENI.
    pub id: EniId,
    /// Its device index.
    pub device_index: u32,
    /// Whether it is the primary ENI.
    pub primary: bool,
    /// Attached prefixes.
    pub prefixes: Vec<Prefix28>,
    /// Attached secondary addresses.
    #[serde(default)]
    pub secondary_ips: Vec<Ipv4Addr>,
}

/// One allocation in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationRecord {
    /// The CNI attachment.
    pub key: PodKey,
    /// Its address.
    pub address: Ipv4Addr,
    /// K8S_POD_NAMESPACE.
    pub pod_namespace: String,
    /// K8S_POD_NAME.
    pub pod_name: String,
    /// When it was handed out, in ms since the epoch.
    pub allocated_at_ms: UnixMillis,
}

/// One cooling address in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CooldownRecord {
    /// The address.
    pub address: Ipv4Addr,
    /// End of its cooldown, in ms since the epoch.
    pub until_ms: UnixMillis,
}

/// What loading a checkpoint found and left out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Allocations restored.
    pub restored: usize,
    /// Allocations whose address lies in no attached block: kept stranded until their DEL.
    pub stranded: Vec<(PodKey, Ipv4Addr)>,
    /// Cooldowns outside every attached block: dropped.
    pub dropped_cooldowns: usize,
    /// Log records (batches) replayed onto the snapshot.
    pub replayed_batches: usize,
    /// Bytes of a torn last log record, discarded: a crash during an append never acknowledged.
    pub torn_tail_bytes: usize,
    /// The snapshot was version 1, migrated.
    pub migrated_v1: bool,
    /// A log older than its snapshot (a compaction interrupted after the snapshot) was ignored.
    pub stale_log: bool,
}

impl Snapshot {
    /// The snapshot of a datastore, in a stable order (so equal states write equal bytes).
    pub fn of(ds: &Datastore, store: u64, generation: u64) -> Self {
        let enis = ds
            .enis()
            .iter()
            .map(|(id, e)| EniRecord {
                id: id.clone(),
                device_index: e.device_index,
                primary: e.primary,
                prefixes: e.prefixes.iter().copied().collect(),
                secondary_ips: e.secondary_ips.iter().copied().collect(),
            })
            .collect();
        // Stranded allocations are written as any other: a restore strands them again, since no
        // attached block holds them.
        let mut allocations: Vec<AllocationRecord> = ds
            .allocations()
            .chain(ds.stranded())
            .map(|(k, a)| AllocationRecord {
                key: k.clone(),
                address: a.address,
                pod_namespace: a.pod.namespace.clone(),
                pod_name: a.pod.name.clone(),
                allocated_at_ms: a.allocated_at,
            })
            .collect();
        allocations.sort_by_key(|a| a.address);
        let mut cooldowns: Vec<CooldownRecord> = ds
            .cooling()
            .map(|(address, until_ms)| CooldownRecord { address, until_ms })
            .collect();
        cooldowns.sort_by_key(|c| c.address);
        let v6 = ds.v6();
        let ipv6 = (!v6.is_empty()).then(|| {
            let mut allocations: Vec<Allocation6Record> = v6
                .allocations()
                .map(|(k, a)| Allocation6Record {
                    key: k.clone(),
                    address: a.address,
                    pod_namespace: a.pod.namespace.clone(),
                    pod_name: a.pod.name.clone(),
                    allocated_at_ms: a.allocated_at,
                })
                .collect();
            allocations.sort_by(|a, b| (a.address, &a.key).cmp(&(b.address, &b.key)));
            Ipv6Section {
                prefix: v6.prefix(),
                allocations,
                cooldowns: v6
                    .cooling()
                    .map(|(address, until_ms)| Cooldown6Record { address, until_ms })
                    .collect(),
            }
        });
        Self {
            version: CHECKPOINT_VERSION,
            store,
            generation,
            enis,
            allocations,
            cooldowns,
            ipv6,
        }
    }

    /// Rebuilds a datastore. `path` is only for error messages.
    pub fn restore(
        &self,
        cooldown: std::time::Duration,
        path: &Path,
    ) -> Result<(Datastore, LoadReport), CheckpointError> {
        let bad = |why: String| CheckpointError::Inconsistent {
            path: path.to_owned(),
            why,
        };
        let mut ds = Datastore::new(cooldown);
        for e in &self.enis {
            ds.add_eni(e.id.clone(), e.device_index, e.primary)
                .map_err(|err| bad(err.to_string()))?;
            for p in &e.prefixes {
                ds.add_prefix(&e.id, *p)
                    .map_err(|err| bad(err.to_string()))?;
            }
            for a in &e.secondary_ips {
                ds.add_secondary_ip(&e.id, *a)
                    .map_err(|err| bad(err.to_string()))?;
            }
        }
        let mut report = LoadReport::default();
        for a in &self.allocations {
            let alloc = Allocation {
                address: a.address,
                pod: PodInfo {
                    namespace: a.pod_namespace.clone(),
                    name: a.pod_name.clone(),
                },
                allocated_at: a.allocated_at_ms,
            };
            if ds.restore_allocation(a.key.clone(), alloc).map_err(bad)? {
                report.restored += 1;
            } else {
                report.stranded.push((a.key.clone(), a.address));
            }
        }
        for c in &self.cooldowns {
            if !ds.restore_cooldown(c.address, c.until_ms).map_err(bad)? {
                report.dropped_cooldowns += 1;
            }
        }
        if let Some(v6) = &self.ipv6 {
            let pool = ds.v6_mut();
            if let Some(p) = v6.prefix {
                pool.set_prefix(p, true).map_err(|e| bad(e.to_string()))?;
            }
            for a in &v6.allocations {
                let alloc = Allocation6 {
                    address: a.address,
                    pod: PodInfo {
                        namespace: a.pod_namespace.clone(),
                        name: a.pod_name.clone(),
                    },
                    allocated_at: a.allocated_at_ms,
                };
                pool.restore(a.key.clone(), alloc).map_err(bad)?;
                report.restored += 1;
            }
            for c in &v6.cooldowns {
                if !pool.restore_cooldown(c.address, c.until_ms).map_err(bad)? {
                    report.dropped_cooldowns += 1;
                }
            }
        }
        Ok((ds, report))
    }

    /// The snapshot as the bytes of its file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec(self).expect("snapshot serializes");
        b.push(b'\n');
        b
    }

    /// Parses checkpoint bytes, checking the version before the shape.
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Self, CheckpointError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u64,
        }
        let corrupt = |source| CheckpointError::Corrupt {
            path: path.to_owned(),
            source,
        };
        let v: VersionOnly = serde_json::from_slice(bytes).map_err(corrupt)?;
        if v.version != u64::from(CHECKPOINT_VERSION) && v.version != u64::from(CHECKPOINT_V1) {
            return Err(CheckpointError::UnknownVersion {
                path: path.to_owned(),
                version: v.version,
            });
        }
        serde_json::from_slice(bytes).map_err(corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> Datastore {
        let mut ds = Datastore::new(Duration::from_secs(30));
        let eni: EniId = "eni-1".parse().unwrap();
        ds.add_eni(eni.clone(), 0, true).unwrap();
        ds.add_prefix(&eni, "10.0.0.16/28".parse().unwrap())
            .unwrap();
        ds.add_secondary_ip(&eni, Ipv4Addr::new(10, 0, 5, 5))
            .unwrap();
        let pod = PodInfo {
            namespace: "default".into(),
            name: "web-1".into(),
        };
        for c in ["a", "b", "c"] {
            ds.allocate(
                PodKey::new("net", c, "eth0").unwrap(),
                pod.clone(),
                UnixMillis(5),
            )
            .unwrap();
        }
        ds.release(&PodKey::new("net", "b", "eth0").unwrap(), UnixMillis(6))
            .unwrap();
        ds
    }

    #[test]
    fn corrupt_and_unknown_version_name_the_file_and_flag() {
        let path = Path::new("/var/lib/prefixd/cp.json");
        let load = |b: &[u8]| Snapshot::from_slice(b, path);
        let e = load(b"{\"version\":2,\"enis\":[").unwrap_err();
        assert!(matches!(e, CheckpointError::Corrupt { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains(path.to_str().unwrap()) && msg.contains(DISCARD_FLAG),
            "{msg}"
        );
        let e = load(b"{\"version\":7,\"whatever\":true}").unwrap_err();
        assert!(matches!(
            e,
            CheckpointError::UnknownVersion { version: 7, .. }
        ));
        assert!(e.to_string().contains(DISCARD_FLAG));
        assert!(matches!(load(b""), Err(CheckpointError::Corrupt { .. })));
        let extra = b"{\"version\":1,\"enis\":[],\"allocations\":[],\"cooldowns\":[],\"x\":1}";
        assert!(matches!(load(extra), Err(CheckpointError::Corrupt { .. })));
        // Both versions read; equal states write equal bytes.
        let v1 = load(b"{\"version\":1,\"enis\":[],\"allocations\":[],\"cooldowns\":[]}").unwrap();
        assert_eq!((v1.store, v1.generation), (0, 0));
        let s = Snapshot::of(&sample(), 7, 3);
        assert_eq!(load(&s.to_bytes()).unwrap(), s);
        assert_eq!(s.to_bytes(), Snapshot::of(&sample(), 7, 3).to_bytes());
    }

    #[test]
    fn address_held_twice_is_inconsistent_not_silently_fixed() {
        let mut cp = Snapshot::of(&sample(), 1, 1);
        let mut dup = cp.allocations[0].clone();
        dup.key = PodKey::new("net", "zzz", "eth0").unwrap();
        cp.allocations.push(dup);
        let e = cp
            .restore(Duration::from_secs(30), Path::new("/x/cp.json"))
            .unwrap_err();
        assert!(matches!(e, CheckpointError::Inconsistent { .. }), "{e}");
        assert!(e.to_string().contains("held twice"), "{e}");
    }

    #[test]
    fn allocations_outside_attached_blocks_are_stranded_kept_and_reported() {
        let mut cp = Snapshot::of(&sample(), 1, 1);
        cp.allocations.push(AllocationRecord {
            key: PodKey::new("net", "lost", "eth0").unwrap(),
            address: Ipv4Addr::new(10, 9, 9, 9),
            pod_namespace: "ns".into(),
            pod_name: "p".into(),
            allocated_at_ms: UnixMillis(1),
        });
        cp.cooldowns.push(CooldownRecord {
            address: Ipv4Addr::new(10, 9, 9, 10),
            until_ms: UnixMillis(1),
        });
        let (ds, report) = cp
            .restore(Duration::from_secs(30), Path::new("cp"))
            .unwrap();
        assert_eq!(report.restored, 2);
        assert_eq!(
            report.stranded,
            vec![(
                PodKey::new("net", "lost", "eth0").unwrap(),
                Ipv4Addr::new(10, 9, 9, 9)
            )]
        );
        assert_eq!(report.dropped_cooldowns, 1);
        assert_ne!(ds, sample(), "the stranded allocation is kept");
        assert_eq!(ds.stranded().count(), 1);
        ds.check_invariants().unwrap();
        // Written again, it stays stranded; its DEL ends it.
        let (mut again, r2) = Snapshot::of(&ds, 1, 1)
            .restore(Duration::from_secs(30), Path::new("cp"))
            .unwrap();
        assert_eq!(again, ds);
        assert_eq!(r2.stranded.len(), 1);
        let lost = PodKey::new("net", "lost", "eth0").unwrap();
        assert_eq!(
            again.release(&lost, UnixMillis(2)).unwrap().address,
            Ipv4Addr::new(10, 9, 9, 9)
        );
        assert_eq!(again, sample());
    }
}
