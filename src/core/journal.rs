//! Where the store makes changes durable: a snapshot plus an append-only log.
//!
//! Files, for a checkpoint at `PATH`: the snapshot `PATH` (JSON, [`Snapshot`]), its log
//! `PATH.log` (see [`super::wal`]), and, during a compaction, `PATH.tmp` and `PATH.log.tmp`.
//!
//! - **Commit** (every acknowledged batch): one frame written at the log's end into space that
//!   was zero-filled when the log was made, then one `fdatasync`. The file's size and extents do
//!   not change, so the sync writes data only.
//! - **Compaction** (the log is full, a write failed, start-up, shutdown): a new log with the
//!   next generation, zero-filled and synced, as `PATH.log.tmp`; the snapshot of that generation
//!   written, synced and renamed over `PATH`; the directory synced; `PATH.log.tmp` renamed over
//!   `PATH.log`; the directory synced. A crash between the two renames leaves a snapshot newer
//!   than its log: the log is stale (everything in it is in the snapshot) and is ignored.
//! - **Recovery**: the snapshot, then the log's batches replayed when its header names the same
//!   store and generation. A torn last frame is discarded and counted; damage before the tail,
//!   a log of another store or of a newer generation, a missing log or a log without a snapshot
//!   stop the agent with a message naming the file and `--discard-checkpoint`. A version 1
//!   checkpoint (a snapshot rewritten on every change, no log) is read and migrated.
//!
//! After a failed append the log's end is unknown, so the next commit compacts instead: a
//! snapshot of memory, which the store has already rolled back, replaces the log whole.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::checkpoint::{
    CHECKPOINT_V1, CheckpointError, LoadReport, MAX_CHECKPOINT_BYTES, Snapshot,
};
use super::datastore::Datastore;
use super::types::UnixMillis;
use super::wal::{self, HEADER_LEN, LogHeader, Record};

/// Size of a new log: the space appends use before a compaction. At about 200 bytes a
/// change, some five thousand changes between compactions.
pub const LOG_CAPACITY: usize = 1 << 20;

/// Where changes go. The store calls `commit` before it tells any caller about them.
pub trait Journal {
    /// Makes the batch `records` durable; `state` is the pool after it (a journal may write it
    /// whole instead).
    fn commit(&mut self, records: &[Record], state: &Datastore) -> Result<(), CheckpointError>;
    /// Writes `state` whole and starts a new log (compaction).
    fn snapshot(&mut self, state: &Datastore) -> Result<(), CheckpointError>;
}

impl<T: Journal + ?Sized> Journal for Box<T> {
    fn commit(&mut self, records: &[Record], state: &Datastore) -> Result<(), CheckpointError> {
        (**self).commit(records, state)
    }
    fn snapshot(&mut self, state: &Datastore) -> Result<(), CheckpointError> {
        (**self).snapshot(state)
    }
}

/// A datastore rebuilt from a snapshot and its log.
#[derive(Debug)]
pub struct Recovered {
    /// The pool.
    pub ds: Datastore,
    /// What was found.
    pub report: LoadReport,
    /// The store's id and the generation recovered (0 when starting fresh or from version 1).
    pub header: LogHeader,
}

/// Rebuilds the pool from the bytes of a snapshot and of its log (either may be missing).
/// `snapshot_path` and `log_path` are for messages.
pub fn recover(
    snapshot: Option<&[u8]>,
    log: Option<&[u8]>,
    cooldown: Duration,
    snapshot_path: &Path,
    log_path: &Path,
) -> Result<Recovered, CheckpointError> {
    let mismatch = |why: String| CheckpointError::LogMismatch {
        path: log_path.to_owned(),
        why,
    };
    let Some(snapshot) = snapshot else {
        if log.is_some() {
            return Err(mismatch(format!(
                "there is no snapshot {}",
                snapshot_path.display()
            )));
        }
        return Ok(Recovered {
            ds: Datastore::new(cooldown),
            report: LoadReport::default(),
            header: LogHeader {
                store: new_store_id(),
                generation: 0,
            },
        });
    };
    let snap = Snapshot::from_slice(snapshot, snapshot_path)?;
    let (mut ds, mut report) = snap.restore(cooldown, snapshot_path)?;
    if snap.version == CHECKPOINT_V1 {
        // Earlier prefixd wrote no log: the snapshot is the whole truth.
        report.migrated_v1 = true;
        return Ok(Recovered {
            ds,
            report,
            header: LogHeader {
                store: new_store_id(),
                generation: 0,
            },
        });
    }
    let header = LogHeader {
        store: snap.store,
        generation: snap.generation,
    };
    let Some(log) = log else {
        return Err(mismatch(format!(
            "the log is missing, so the changes made since the snapshot {} are unknown",
            snapshot_path.display()
        )));
    };
    let found = LogHeader::decode(log).map_err(|why| CheckpointError::LogCorrupt {
        path: log_path.to_owned(),
        why: format!("header: {why}"),
    })?;
    if found.store != header.store {
        return Err(mismatch(format!(
            "it belongs to store {:016x}, the snapshot to store {:016x}",
            found.store, header.store
        )));
    }
    if found.generation > header.generation {
        return Err(mismatch(format!(
            "it continues generation {}, newer than the snapshot's {}",
            found.generation, header.generation
        )));
    }
    if found.generation < header.generation {
        report.stale_log = true;
        return Ok(Recovered { ds, report, header });
    }
    let scan =
        wal::scan(&log[HEADER_LEN..], HEADER_LEN).map_err(|e| CheckpointError::LogCorrupt {
            path: log_path.to_owned(),
            why: e.to_string(),
        })?;
    for (i, batch) in scan.batches.iter().enumerate() {
        for record in batch {
            record
                .replay(&mut ds)
                .map_err(|why| CheckpointError::Inconsistent {
                    path: log_path.to_owned(),
                    why: format!("record {i} of the log ({record:?}) contradicts the pool: {why}"),
                })?;
        }
    }
    report.replayed_batches = scan.batches.len();
    report.torn_tail_bytes = scan.torn_bytes;
    Ok(Recovered { ds, report, header })
}

/// A fresh random store id (the clock's nanoseconds and the pid, mixed).
fn new_store_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    // splitmix64's finalizer
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (x ^ (x >> 31)).max(1)
}

/// The files of one checkpoint.
#[derive(Debug, Clone)]
struct Paths {
    snapshot: PathBuf,
    snapshot_tmp: PathBuf,
    log: PathBuf,
    log_tmp: PathBuf,
    dir: PathBuf,
}

impl Paths {
    fn new(path: &Path) -> Self {
        let with = |suffix: &str| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            PathBuf::from(p)
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        Self {
            snapshot: path.to_owned(),
            snapshot_tmp: with(".tmp"),
            log: with(".log"),
            log_tmp: with(".log.tmp"),
            dir,
        }
    }
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

/// Reads a whole file, at most `limit` bytes; `None` when it does not exist.
fn read_file(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, CheckpointError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, "open")(e)),
    };
    let size = file.metadata().map_err(io(path, "stat"))?.len();
    if size > limit {
        return Err(CheckpointError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path, "read"))?;
    Ok(Some(bytes))
}

/// The checkpoint's files: a snapshot and its log.
#[derive(Debug)]
pub struct FileJournal {
    paths: Paths,
    /// Kept open so that a compaction's directory syncs cost no open(2).
    dir_handle: Option<File>,
    /// The log appends go to; `None` until the first compaction and after a failed write.
    log: Option<File>,
    header: LogHeader,
    /// Where the next frame goes.
    end: usize,
    capacity: usize,
    next_capacity: usize,
    buf: Vec<u8>,
    compactions: u64,
}

impl FileJournal {
    /// Reads the checkpoint at `path` (creating its directory if missing) and rebuilds the pool.
    /// Nothing is written: the caller compacts ([`Journal::snapshot`]) before the first change.
    pub fn open(path: &Path, cooldown: Duration) -> Result<(Self, Recovered), CheckpointError> {
        let paths = Paths::new(path);
        fs::create_dir_all(&paths.dir).map_err(io(&paths.dir, "create directory"))?;
        let snapshot = read_file(&paths.snapshot, MAX_CHECKPOINT_BYTES)?;
        let mut log_path = &paths.log;
        let mut log = read_file(&paths.log, MAX_CHECKPOINT_BYTES)?;
        if log.is_none() && snapshot.is_some() {
            // The first compaction stopped between its renames: the new log, empty, is here.
            log = read_file(&paths.log_tmp, MAX_CHECKPOINT_BYTES)?;
            log_path = &paths.log_tmp;
        }
        let recovered = recover(
            snapshot.as_deref(),
            log.as_deref(),
            cooldown,
            &paths.snapshot,
            log_path,
        )?;
        let journal = Self {
            header: recovered.header,
            paths,
            dir_handle: None,
            log: None,
            end: HEADER_LEN,
            capacity: LOG_CAPACITY,
            next_capacity: LOG_CAPACITY,
            buf: Vec::with_capacity(4096),
            compactions: 0,
        };
        Ok((journal, recovered))
    }

    /// Moves the snapshot and its log aside as `NAME.discarded-<ms>` (what the discard flag
    /// does), so that nothing is deleted by a flag; returns the new names.
    pub fn discard(path: &Path, now: UnixMillis) -> Result<Vec<PathBuf>, CheckpointError> {
        let paths = Paths::new(path);
        let mut moved = Vec::new();
        for p in [&paths.snapshot, &paths.log] {
            let mut aside = p.as_os_str().to_owned();
            aside.push(format!(".discarded-{}", now.0));
            let aside = PathBuf::from(aside);
            match fs::rename(p, &aside) {
                Ok(()) => moved.push(aside),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(p, "rename aside")(e)),
            }
        }
        Ok(moved)
    }

    /// The snapshot's path.
    pub fn path(&self) -> &Path {
        &self.paths.snapshot
    }

    /// The log's path.
    pub fn log_path(&self) -> &Path {
        &self.paths.log
    }

    /// Compactions made.
    pub fn compactions(&self) -> u64 {
        self.compactions
    }

    /// The size of logs made from now on (tests use small ones to compact often).
    pub fn set_log_capacity(&mut self, bytes: usize) {
        self.next_capacity = bytes.max(HEADER_LEN + 64);
    }

    fn sync_dir(&mut self) -> Result<(), CheckpointError> {
        if self.dir_handle.is_none() {
            self.dir_handle =
                Some(File::open(&self.paths.dir).map_err(io(&self.paths.dir, "open"))?);
        }
        let dir = self.dir_handle.as_ref().expect("opened above");
        dir.sync_all()
            .map_err(io(&self.paths.dir, "fsync directory"))
    }

    fn compact(&mut self, state: &Datastore) -> Result<(), CheckpointError> {
        // Generations never repeat, even across failed attempts.
        self.header.generation += 1;
        let header = self.header;
        let capacity = self.next_capacity;
        let p = self.paths.clone();
        let mut log = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p.log_tmp)
            .map_err(io(&p.log_tmp, "create"))?;
        // Zero-filled in chunks, so that a compaction does not grow the agent's peak memory.
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        log.write_all(&header.encode())
            .map_err(io(&p.log_tmp, "write"))?;
        let mut left = capacity - HEADER_LEN;
        while left > 0 {
            let n = left.min(ZEROS.len());
            log.write_all(&ZEROS[..n])
                .map_err(io(&p.log_tmp, "write"))?;
            left -= n;
        }
        log.sync_all().map_err(io(&p.log_tmp, "fsync"))?;

        let bytes = Snapshot::of(state, header.store, header.generation).to_bytes();
        let mut snap = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p.snapshot_tmp)
            .map_err(io(&p.snapshot_tmp, "create"))?;
        snap.write_all(&bytes)
            .map_err(io(&p.snapshot_tmp, "write"))?;
        snap.sync_all().map_err(io(&p.snapshot_tmp, "fsync"))?;
        drop(snap);
        fs::rename(&p.snapshot_tmp, &p.snapshot).map_err(io(&p.snapshot, "rename"))?;
        self.sync_dir()?;
        fs::rename(&p.log_tmp, &p.log).map_err(io(&p.log, "rename"))?;
        self.sync_dir()?;
        self.log = Some(log);
        self.end = HEADER_LEN;
        self.capacity = capacity;
        self.compactions += 1;
        Ok(())
    }

    fn append(&mut self) -> Result<(), CheckpointError> {
        let log = self.log.as_ref().expect("checked by the caller");
        log.write_all_at(&self.buf, self.end as u64)
            .map_err(io(&self.paths.log, "append"))?;
        log.sync_data().map_err(io(&self.paths.log, "fdatasync"))?;
        self.end += self.buf.len();
        Ok(())
    }
}

impl Journal for FileJournal {
    fn commit(&mut self, records: &[Record], state: &Datastore) -> Result<(), CheckpointError> {
        if records.is_empty() {
            return Ok(());
        }
        if self.log.is_some() {
            self.buf.clear();
            wal::encode_frame(records, &mut self.buf);
            if self.end + self.buf.len() <= self.capacity {
                let r = self.append();
                if r.is_err() {
                    // Where the log ends is now unknown: the next commit replaces it.
                    self.log = None;
                }
                return r;
            }
        }
        self.snapshot(state)
    }

    fn snapshot(&mut self, state: &Datastore) -> Result<(), CheckpointError> {
        self.log = None;
        let r = self.compact(state);
        if r.is_err() {
            // The directory may have been replaced; reopen it next time.
            self.dir_handle = None;
        }
        r
    }
}

/// A journal in memory, with the same formats and the same recovery as the files: for the
/// simulator, tests and benchmarks. `fail_next` makes the next writes fail.
#[derive(Debug)]
pub struct MemoryJournal {
    /// The snapshot's bytes (empty before the first).
    pub snapshot: Vec<u8>,
    /// The log's bytes: header and frames (no zero padding).
    pub log: Vec<u8>,
    /// Log size that makes the next commit a compaction.
    pub capacity: usize,
    /// Commits and snapshots so far.
    pub writes: u64,
    /// Snapshots so far.
    pub compactions: u64,
    /// How many of the next writes fail.
    pub fail_next: u32,
    header: LogHeader,
    broken: bool,
}

impl Default for MemoryJournal {
    fn default() -> Self {
        Self::with_capacity(LOG_CAPACITY)
    }
}

impl MemoryJournal {
    /// An empty journal whose log compacts past `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            snapshot: Vec::new(),
            log: Vec::new(),
            capacity,
            writes: 0,
            compactions: 0,
            fail_next: 0,
            header: LogHeader {
                store: 1,
                generation: 0,
            },
            broken: true,
        }
    }

    /// Rebuilds the pool from the bytes, as a restart would.
    pub fn recover(&self, cooldown: Duration) -> Result<Recovered, CheckpointError> {
        recover(
            (!self.snapshot.is_empty()).then_some(&self.snapshot[..]),
            (!self.log.is_empty()).then_some(&self.log[..]),
            cooldown,
            Path::new("memory"),
            Path::new("memory.log"),
        )
    }

    /// A journal continuing from `snapshot` and `log` bytes (after [`Self::recover`]).
    pub fn resume(snapshot: Vec<u8>, log: Vec<u8>, capacity: usize) -> Self {
        let mut j = Self::with_capacity(capacity);
        if let Ok(h) = LogHeader::decode(&log) {
            j.header = h;
        }
        j.snapshot = snapshot;
        j.log = log;
        // Whatever the log's tail holds, a resumed journal compacts first, as the files do.
        j.broken = true;
        j
    }

    fn fail(&mut self) -> Result<(), CheckpointError> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            self.broken = true;
            return Err(CheckpointError::Injected("injected by a test".into()));
        }
        Ok(())
    }
}

impl Journal for MemoryJournal {
    fn commit(&mut self, records: &[Record], state: &Datastore) -> Result<(), CheckpointError> {
        if records.is_empty() {
            return Ok(());
        }
        self.fail()?;
        if self.broken {
            return self.snapshot(state);
        }
        let before = self.log.len();
        wal::encode_frame(records, &mut self.log);
        if self.log.len() > self.capacity {
            self.log.truncate(before);
            return self.snapshot(state);
        }
        self.writes += 1;
        Ok(())
    }

    fn snapshot(&mut self, state: &Datastore) -> Result<(), CheckpointError> {
        self.fail()?;
        self.header.generation += 1;
        self.snapshot = Snapshot::of(state, self.header.store, self.header.generation).to_bytes();
        self.log.clear();
        self.log.extend_from_slice(&self.header.encode());
        self.broken = false;
        self.writes += 1;
        self.compactions += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::datastore::PodInfo;
    use crate::core::store::Store;
    use crate::core::store::tests::add_prefix_eni;
    use crate::core::types::PodKey;

    const COOLDOWN: Duration = Duration::from_secs(30);

    fn key(c: &str) -> PodKey {
        PodKey::new("net", c, "eth0").unwrap()
    }

    /// Opens at a time after every change the tests make (a reopen caps cooldowns at now).
    fn opened(path: &Path) -> (Store<FileJournal>, LoadReport) {
        Store::open(path, COOLDOWN, false, UnixMillis(100)).unwrap()
    }

    #[test]
    fn changes_are_appended_replayed_and_compacted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let (mut s, _) = opened(&path);
        add_prefix_eni(&mut s);
        let a = s
            .allocate(key("a"), PodInfo::default(), UnixMillis(1))
            .unwrap();
        s.allocate(key("b"), PodInfo::default(), UnixMillis(1))
            .unwrap();
        s.release(&key("b"), UnixMillis(2)).unwrap();
        assert_eq!(s.journal().compactions(), 1, "appends, not rewrites");
        let log_len = fs::metadata(dir.path().join("cp.json.log")).unwrap().len();
        assert_eq!(log_len as usize, LOG_CAPACITY, "the log is preallocated");
        let before = s.datastore().clone();
        drop(s);
        let (s, report) = opened(&path);
        assert_eq!(report.replayed_batches, 5);
        assert_eq!(report.torn_tail_bytes, 0);
        assert_eq!(s.datastore(), &before);
        assert_eq!(s.datastore().get(&key("a")).unwrap().address, a.v4());
        // Opening compacted: the snapshot holds everything, the new log nothing.
        drop(s);
        let (s, report) = opened(&path);
        assert_eq!(report.replayed_batches, 0);
        assert_eq!(s.datastore(), &before);
        let snap: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(snap["version"], 2);
        assert!(!dir.path().join("cp.json.tmp").exists());
        assert!(!dir.path().join("cp.json.log.tmp").exists());
    }

    #[test]
    fn a_full_log_compacts_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let (mut s, _) = opened(&path);
        s.journal_mut().set_log_capacity(600);
        s.flush().unwrap();
        add_prefix_eni(&mut s);
        for i in 0..40 {
            let k = key(&format!("k{}", i % 5));
            if s.datastore().get(&k).is_some() {
                s.release(&k, UnixMillis(i * 40_000)).unwrap();
            } else {
                s.allocate(k, PodInfo::default(), UnixMillis(i * 40_000))
                    .unwrap();
            }
        }
        assert!(
            s.journal().compactions() > 5,
            "{}",
            s.journal().compactions()
        );
        let before = s.datastore().clone();
        drop(s);
        let (s, _) = Store::open(&path, COOLDOWN, false, UnixMillis(40 * 40_000)).unwrap();
        assert_eq!(s.datastore(), &before);
    }

    #[test]
    fn version_1_is_migrated_and_a_stray_log_beside_it_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        fs::write(
            &path,
            br#"{"version":1,"enis":[{"id":"eni-1","device_index":0,"primary":true,"prefixes":["10.0.0.16/28"]}],
                "allocations":[{"key":{"network":"net","container_id":"a","ifname":"eth0"},"address":"10.0.0.16","pod_namespace":"ns","pod_name":"p","allocated_at_ms":1}],
                "cooldowns":[{"address":"10.0.0.17","until_ms":20000}]}"#,
        )
        .unwrap();
        fs::write(dir.path().join("cp.json.log"), b"junk from a downgrade").unwrap();
        let (s, report) = opened(&path);
        assert!(report.migrated_v1);
        assert_eq!(report.restored, 1);
        assert_eq!(s.datastore().cooling().count(), 1);
        let snap: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(snap["version"], 2, "migrated on open");
        assert_eq!(snap["allocations"][0]["pod_name"], "p");
    }

    #[test]
    fn a_log_that_does_not_belong_stops_recovery_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let log = dir.path().join("cp.json.log");
        let (mut s, _) = opened(&path);
        add_prefix_eni(&mut s);
        drop(s);
        // Another node's log.
        let other = tempfile::tempdir().unwrap();
        let (mut t, _) = opened(&other.path().join("cp.json"));
        add_prefix_eni(&mut t);
        drop(t);
        let ours = fs::read(&log).unwrap();
        fs::copy(other.path().join("cp.json.log"), &log).unwrap();
        let e = Store::open(&path, COOLDOWN, false, UnixMillis(0))
            .err()
            .unwrap();
        let msg = e.to_string();
        assert!(e.is_unreadable(), "{msg}");
        assert!(
            msg.contains("cp.json.log") && msg.contains("belongs to store"),
            "{msg}"
        );
        assert!(msg.contains("--discard-checkpoint"), "{msg}");
        // Missing.
        fs::remove_file(&log).unwrap();
        let e = Store::open(&path, COOLDOWN, false, UnixMillis(0))
            .err()
            .unwrap();
        assert!(e.to_string().contains("missing"), "{e}");
        // Damaged before its tail.
        let mut bad = ours.clone();
        bad[HEADER_LEN + 12] ^= 0x01;
        fs::write(&log, &bad).unwrap();
        let e = Store::open(&path, COOLDOWN, false, UnixMillis(0))
            .err()
            .unwrap();
        assert!(matches!(e, CheckpointError::LogCorrupt { .. }), "{e}");
        assert!(e.to_string().contains(&format!("byte {HEADER_LEN}")), "{e}");
        // With the flag both files are moved aside and the pool starts empty.
        let (s, _) = Store::open(&path, COOLDOWN, true, UnixMillis(9)).unwrap();
        assert_eq!(s.datastore().enis().len(), 0);
        assert!(dir.path().join("cp.json.discarded-9").exists());
        assert!(dir.path().join("cp.json.log.discarded-9").exists());
        // Negative control: our own log opens.
        drop(s);
        fs::remove_file(&log).unwrap();
        fs::rename(dir.path().join("cp.json.discarded-9"), &path).unwrap();
        fs::write(&log, &ours).unwrap();
        let (s, _) = opened(&path);
        assert_eq!(s.datastore().enis().len(), 1);
    }

    #[test]
    fn a_crash_between_the_renames_of_a_compaction_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let (mut s, _) = opened(&path);
        add_prefix_eni(&mut s);
        s.allocate(key("a"), PodInfo::default(), UnixMillis(1))
            .unwrap();
        let old_log = fs::read(dir.path().join("cp.json.log")).unwrap();
        s.allocate(key("b"), PodInfo::default(), UnixMillis(1))
            .unwrap();
        s.flush().unwrap();
        let before = s.datastore().clone();
        drop(s);
        // As if the log's rename had not happened: the new empty log is still `.tmp`, the old
        // one (a generation behind, holding only some of the changes) is in place.
        let new_log = fs::read(dir.path().join("cp.json.log")).unwrap();
        fs::write(dir.path().join("cp.json.log.tmp"), &new_log).unwrap();
        fs::write(dir.path().join("cp.json.log"), &old_log).unwrap();
        let (s, report) = opened(&path);
        assert!(report.stale_log);
        assert_eq!(s.datastore(), &before);
        drop(s);
        // The very first compaction: no log at all yet, only the new one as `.tmp`.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let (s, _) = opened(&path);
        drop(s);
        fs::rename(
            dir.path().join("cp.json.log"),
            dir.path().join("cp.json.log.tmp"),
        )
        .unwrap();
        opened(&path);
    }

    #[test]
    fn memory_journal_recovers_like_the_files() {
        let mut s = Store::new(Datastore::new(COOLDOWN), MemoryJournal::with_capacity(400));
        s.flush().unwrap();
        add_prefix_eni(&mut s);
        for i in 0..10 {
            s.allocate(key(&format!("k{i}")), PodInfo::default(), UnixMillis(i))
                .unwrap();
        }
        assert!(s.journal().compactions > 1);
        let back = s.journal().recover(COOLDOWN).unwrap();
        assert_eq!(&back.ds, s.datastore());
    }
}
