//! allocate+release throughput: in memory, and through the journal (one log append and
//! fdatasync per commit, one commit per change or per group of 32), against the floor of the
//! same append without the store (a frame's worth of bytes written into a preallocated file and
//! fdatasync'd), and the old design's floor (rewrite the whole file: write, fsync, rename, fsync
//! the directory).
//!
//! Run: `cargo bench --bench datastore` (`BENCH_DIR` picks the file system; default `.`).

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prefixd::core::wal::{self, Record};
use prefixd::core::{
    Change, Datastore, EniId, FileJournal, PodInfo, PodKey, Prefix28, Snapshot, Store, UnixMillis,
};

/// A node like an m5.large's primary ENI: 9 prefixes, 144 addresses, 100 pods running.
fn pool(cooldown: Duration) -> (Datastore, Vec<PodKey>) {
    let mut ds = Datastore::new(cooldown);
    let eni: EniId = "eni-0123456789abcdef0".parse().unwrap();
    ds.add_eni(eni.clone(), 0, true).unwrap();
    for i in 0..9u32 {
        let p = Prefix28::new(std::net::Ipv4Addr::from(0x0a00_1000 + i * 16)).unwrap();
        ds.add_prefix(&eni, p).unwrap();
    }
    for i in 0..100 {
        ds.allocate(
            PodKey::new("aws-cni", format!("running{i:04}"), "eth0").unwrap(),
            PodInfo::default(),
            UnixMillis(0),
        )
        .unwrap();
    }
    let keys = (0..1024)
        .map(|i| PodKey::new("aws-cni", format!("{i:064x}"), "eth0").unwrap())
        .collect();
    (ds, keys)
}

fn in_memory(c: &mut Criterion) {
    let mut g = c.benchmark_group("in_memory");
    g.throughput(Throughput::Elements(1));
    let (mut ds, keys) = pool(Duration::from_millis(1));
    let pod = PodInfo {
        namespace: "default".into(),
        name: "web-7d9f8c6b5-x2x4q".into(),
    };
    let mut i = 0usize;
    let mut now = 1u64;
    g.bench_function("allocate_release_pair", |b| {
        b.iter(|| {
            let k = &keys[i % keys.len()];
            i += 1;
            now += 1; // every release's cooldown is over by the next allocate
            let a = ds
                .allocate(k.clone(), pod.clone(), UnixMillis(now))
                .unwrap();
            ds.release(k, UnixMillis(now)).unwrap();
            a
        })
    });
    g.finish();
}

fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap()
}

/// A store on files holding [`pool`].
fn durable_store(dir: &std::path::Path, name: &str) -> (Store<FileJournal>, Vec<PodKey>) {
    let (ds, keys) = pool(Duration::from_millis(1));
    let (mut store, _) = Store::open(
        &dir.join(name),
        Duration::from_millis(1),
        false,
        UnixMillis(0),
    )
    .unwrap();
    let eni = ds.enis().keys().next().unwrap().clone();
    let mut changes = vec![Change::AddEni {
        id: eni.clone(),
        device_index: 0,
        primary: true,
    }];
    changes.extend(ds.enis()[&eni].prefixes.iter().map(|p| Change::AddPrefix {
        eni: eni.clone(),
        prefix: *p,
    }));
    changes.extend(ds.allocations().map(|(k, _)| Change::Allocate {
        key: k.clone(),
        pod: PodInfo::default(),
    }));
    for r in store.apply_batch(changes, UnixMillis(0)) {
        r.unwrap();
    }
    (store, keys)
}

/// One durable change (an allocation or a release, alternating) against the same append done
/// bare: the acceptance figure is the ratio of the two.
fn durable_change(c: &mut Criterion) {
    let dir = bench_dir();
    let mut g = c.benchmark_group("durable");
    g.sample_size(60).measurement_time(Duration::from_secs(10));
    let pod = PodInfo {
        namespace: "default".into(),
        name: "web-7d9f8c6b5-x2x4q".into(),
    };
    let (mut store, keys) = durable_store(dir.path(), "one.json");
    let (mut i, mut now, mut held) = (0usize, 1u64, None::<PodKey>);
    g.bench_function("one_change", |b| {
        b.iter(|| {
            now += 2;
            match held.take() {
                Some(k) => {
                    store.release(&k, UnixMillis(now)).unwrap();
                }
                None => {
                    let k = keys[i % keys.len()].clone();
                    i += 1;
                    store
                        .allocate(k.clone(), pod.clone(), UnixMillis(now))
                        .unwrap();
                    held = Some(k);
                }
            }
        })
    });
    // The floor: a frame of the same size written where the log's next frame would go, into a
    // zero-filled file, and fdatasync'd.
    let mut frame = Vec::new();
    wal::encode_frame(
        &[Record::Assign {
            key: keys[0].clone(),
            address: std::net::Ipv4Addr::new(10, 0, 16, 1),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            at: UnixMillis(1),
        }],
        &mut frame,
    );
    let f = std::fs::File::create(dir.path().join("bare.log")).unwrap();
    {
        use std::io::Write;
        (&f).write_all(&vec![0u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
    }
    let mut at = 64u64;
    g.bench_function("bare_append_fdatasync", |b| {
        b.iter(|| {
            use std::os::unix::fs::FileExt;
            if at + frame.len() as u64 > 1 << 20 {
                at = 64;
            }
            f.write_all_at(&frame, at).unwrap();
            f.sync_data().unwrap();
            at += frame.len() as u64;
        })
    });
    g.finish();
}

fn checkpointed(c: &mut Criterion) {
    let dir = bench_dir();
    let mut g = c.benchmark_group("checkpointed");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    let pod = PodInfo::default();
    for batch in [1usize, 8, 32] {
        let (mut store, keys) = durable_store(dir.path(), &format!("cp-{batch}.json"));
        let mut now = 1u64;
        let mut i = 0usize;
        // Each iteration: `batch` allocations in one commit, then their releases in one commit.
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("allocate_release_pairs_batch_{batch}"), |b| {
            b.iter_batched(
                || {
                    let ks: Vec<PodKey> = (0..batch)
                        .map(|j| keys[(i + j) % keys.len()].clone())
                        .collect();
                    i += batch;
                    ks
                },
                |ks| {
                    now += 1;
                    let allocs: Vec<Change> = ks
                        .iter()
                        .map(|k| Change::Allocate {
                            key: k.clone(),
                            pod: pod.clone(),
                        })
                        .collect();
                    for r in store.apply_batch(allocs, UnixMillis(now)) {
                        r.unwrap();
                    }
                    let rels: Vec<Change> =
                        ks.into_iter().map(|key| Change::Release { key }).collect();
                    for r in store.apply_batch(rels, UnixMillis(now)) {
                        r.unwrap();
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// The old design's floor: the file operations of one whole-checkpoint rewrite (write a temp
/// file of the snapshot's size, fsync it, rename it, fsync the directory), without the JSON.
fn fsync_floor(c: &mut Criterion) {
    use std::io::Write;
    let dir = bench_dir();
    let (ds, _) = pool(Duration::from_millis(1));
    let bytes = Snapshot::of(&ds, 1, 1).to_bytes();
    let (tmp, path) = (dir.path().join("f.tmp"), dir.path().join("f.json"));
    let dirf = std::fs::File::open(dir.path()).unwrap();
    let mut g = c.benchmark_group("checkpointed");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    g.bench_function("floor_write_fsync_rename_fsync_dir", |b| {
        b.iter(|| {
            let mut f = std::fs::File::create(&tmp).unwrap();
            f.write_all(&bytes).unwrap();
            f.sync_all().unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            dirf.sync_all().unwrap();
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    in_memory,
    durable_change,
    checkpointed,
    fsync_floor
);
criterion_main!(benches);
