//! The on-disk checkpoint: its versioned JSON format, and writing it so that a crash at any
//! instant leaves either the old file or the new one, whole.
//!
//! Write: serialize, write `PATH.tmp`, fsync it, rename it over `PATH`, fsync the directory.
//! Read: at most [`MAX_CHECKPOINT_BYTES`]; an unknown version, bad JSON or contradictory content
//! (one address held twice) is an error that names the file and [`DISCARD_FLAG`], never a silent
//! reset that could hand one address to two pods.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::datastore::{Allocation, Datastore, PodInfo};
use super::types::{EniId, PodKey, Prefix28, UnixMillis};

/// The format version this build writes and reads.
pub const CHECKPOINT_VERSION: u32 = 1;
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
        "checkpoint {path} has version {version}, but this prefixd reads only version \
         {CHECKPOINT_VERSION}; run the prefixd that wrote it, or start once with {DISCARD_FLAG} \
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
        )
    }
}

/// Version 1 of the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointV1 {
    /// Always 1.
    pub version: u32,
    /// The ENIs and what was attached to them when it was written (EC2 stays the authority).
    pub enis: Vec<EniRecord>,
    /// Who holds which address.
    pub allocations: Vec<AllocationRecord>,
    /// Addresses cooling down, with the end of their cooldown.
    pub cooldowns: Vec<CooldownRecord>,
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
}

impl CheckpointV1 {
    /// The checkpoint of a datastore, in a stable order (so equal states write equal bytes).
    pub fn of(ds: &Datastore) -> Self {
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
        Self {
            version: CHECKPOINT_VERSION,
            enis,
            allocations,
            cooldowns,
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
        Ok((ds, report))
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
        if v.version != u64::from(CHECKPOINT_VERSION) {
            return Err(CheckpointError::UnknownVersion {
                path: path.to_owned(),
                version: v.version,
            });
        }
        serde_json::from_slice(bytes).map_err(corrupt)
    }
}

/// Where checkpoints go. The store calls `write` before it tells a caller about a change.
pub trait CheckpointSink {
    /// Makes `cp` durable, replacing the previous one.
    fn write(&mut self, cp: &CheckpointV1) -> Result<(), CheckpointError>;
}

impl<T: CheckpointSink + ?Sized> CheckpointSink for Box<T> {
    fn write(&mut self, cp: &CheckpointV1) -> Result<(), CheckpointError> {
        (**self).write(cp)
    }
}

/// A checkpoint in a file, replaced atomically.
#[derive(Debug)]
pub struct FileCheckpoint {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
    /// Kept open so that each write's directory fsync costs no open(2).
    dir_handle: Option<File>,
    buf: Vec<u8>,
}

impl FileCheckpoint {
    /// A checkpoint at `path`; its directory is created if missing.
    pub fn new(path: impl Into<PathBuf>) -> Result<Self, CheckpointError> {
        let path = path.into();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(|source| CheckpointError::Io {
            path: dir.clone(),
            op: "create directory",
            source,
        })?;
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        Ok(Self {
            path,
            tmp: tmp.into(),
            dir,
            dir_handle: None,
            buf: Vec::with_capacity(4096),
        })
    }

    /// The checkpoint's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the checkpoint; `None` when there is none yet (a node's first start).
    pub fn load(&self) -> Result<Option<CheckpointV1>, CheckpointError> {
        let io = |op, source| CheckpointError::Io {
            path: self.path.clone(),
            op,
            source,
        };
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open", e)),
        };
        let size = file.metadata().map_err(|e| io("stat", e))?.len();
        if size > MAX_CHECKPOINT_BYTES {
            return Err(CheckpointError::TooLarge {
                path: self.path.clone(),
                size,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(MAX_CHECKPOINT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io("read", e))?;
        CheckpointV1::from_slice(&bytes, &self.path).map(Some)
    }

    /// Moves the checkpoint aside as `PATH.discarded-<ms>` (what the discard flag does), so
    /// that nothing is deleted by a flag; returns the new name, or `None` if there was none.
    pub fn discard(&self, now: UnixMillis) -> Result<Option<PathBuf>, CheckpointError> {
        if !self.path.exists() {
            return Ok(None);
        }
        let mut aside = self.path.clone().into_os_string();
        aside.push(format!(".discarded-{}", now.0));
        let aside = PathBuf::from(aside);
        fs::rename(&self.path, &aside).map_err(|source| CheckpointError::Io {
            path: self.path.clone(),
            op: "rename aside",
            source,
        })?;
        Ok(Some(aside))
    }

    fn write_bytes(&mut self) -> Result<(), CheckpointError> {
        let io = |path: &Path, op, source| CheckpointError::Io {
            path: path.to_owned(),
            op,
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.tmp)
            .map_err(|e| io(&self.tmp, "create", e))?;
        f.write_all(&self.buf)
            .map_err(|e| io(&self.tmp, "write", e))?;
        f.sync_all().map_err(|e| io(&self.tmp, "fsync", e))?;
        drop(f);
        fs::rename(&self.tmp, &self.path).map_err(|e| io(&self.path, "rename", e))?;
        if self.dir_handle.is_none() {
            self.dir_handle = Some(File::open(&self.dir).map_err(|e| io(&self.dir, "open", e))?);
        }
        let dir = self.dir_handle.as_ref().expect("opened above");
        dir.sync_all()
            .map_err(|e| io(&self.dir, "fsync directory", e))?;
        Ok(())
    }
}

impl CheckpointSink for FileCheckpoint {
    fn write(&mut self, cp: &CheckpointV1) -> Result<(), CheckpointError> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, cp).expect("checkpoint serializes");
        self.buf.push(b'\n');
        let r = self.write_bytes();
        if r.is_err() {
            // The directory may have been replaced; reopen it next time.
            self.dir_handle = None;
        }
        r
    }
}

/// A sink that keeps the last checkpoint in memory as bytes: for tests and benchmarks of the
/// in-memory path. `fail_next` makes the next writes fail.
#[derive(Debug, Default)]
pub struct MemoryCheckpoint {
    /// The last checkpoint written, serialized as the file would be.
    pub bytes: Vec<u8>,
    /// Writes so far.
    pub writes: u64,
    /// How many of the next writes fail.
    pub fail_next: u32,
}

impl CheckpointSink for MemoryCheckpoint {
    fn write(&mut self, cp: &CheckpointV1) -> Result<(), CheckpointError> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return Err(CheckpointError::Injected("injected by a test".into()));
        }
        self.bytes.clear();
        serde_json::to_writer(&mut self.bytes, cp).expect("checkpoint serializes");
        self.writes += 1;
        Ok(())
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
    fn file_round_trip_restores_equal_datastore() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/checkpoint.json");
        let mut f = FileCheckpoint::new(&path).unwrap();
        assert!(f.load().unwrap().is_none());
        let ds = sample();
        f.write(&CheckpointV1::of(&ds)).unwrap();
        assert!(!dir.path().join("sub/checkpoint.json.tmp").exists());
        let cp = f.load().unwrap().unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\":1"), "{text}");
        assert!(text.contains("\"pod_name\":\"web-1\""), "{text}");
        assert!(text.contains("\"until_ms\":30006"), "{text}");
        let (back, report) = cp.restore(Duration::from_secs(30), &path).unwrap();
        assert_eq!(back, ds);
        back.check_invariants().unwrap();
        assert_eq!(report.restored, 2);
        assert!(report.stranded.is_empty());
    }

    #[test]
    fn corrupt_and_unknown_version_name_the_file_and_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let f = FileCheckpoint::new(&path).unwrap();

        fs::write(&path, b"{\"version\":1,\"enis\":[").unwrap();
        let e = f.load().unwrap_err();
        assert!(matches!(e, CheckpointError::Corrupt { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains(path.to_str().unwrap()) && msg.contains(DISCARD_FLAG),
            "{msg}"
        );

        fs::write(&path, b"{\"version\":7,\"whatever\":true}").unwrap();
        let e = f.load().unwrap_err();
        assert!(matches!(
            e,
            CheckpointError::UnknownVersion { version: 7, .. }
        ));
        assert!(e.to_string().contains(DISCARD_FLAG));

        fs::write(&path, b"").unwrap();
        assert!(matches!(f.load(), Err(CheckpointError::Corrupt { .. })));

        fs::write(
            &path,
            b"{\"version\":1,\"enis\":[],\"allocations\":[],\"cooldowns\":[],\"x\":1}",
        )
        .unwrap();
        assert!(matches!(f.load(), Err(CheckpointError::Corrupt { .. })));
    }

    #[test]
    fn address_held_twice_is_inconsistent_not_silently_fixed() {
        let mut cp = CheckpointV1::of(&sample());
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
        let mut cp = CheckpointV1::of(&sample());
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
        let (mut again, r2) = CheckpointV1::of(&ds)
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

    #[test]
    fn oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let file = File::create(&path).unwrap();
        file.set_len(MAX_CHECKPOINT_BYTES + 1).unwrap();
        let e = FileCheckpoint::new(&path).unwrap().load().unwrap_err();
        assert!(matches!(e, CheckpointError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn write_into_missing_directory_fails_with_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d/cp.json");
        let mut f = FileCheckpoint::new(&path).unwrap();
        fs::remove_dir(dir.path().join("d")).unwrap();
        let e = f.write(&CheckpointV1::of(&sample())).unwrap_err();
        assert!(e.to_string().contains("cp.json.tmp"), "{e}");
    }

    #[test]
    fn discard_moves_the_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        fs::write(&path, b"garbage").unwrap();
        let f = FileCheckpoint::new(&path).unwrap();
        let aside = f.discard(UnixMillis(42)).unwrap().unwrap();
        assert!(aside.to_str().unwrap().ends_with("cp.json.discarded-42"));
        assert!(f.load().unwrap().is_none());
        assert_eq!(fs::read(aside).unwrap(), b"garbage");
    }
}
