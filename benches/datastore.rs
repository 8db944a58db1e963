//! allocate+release throughput: in memory, and through the checkpoint (one fsync'd write per
//! change, and group commit of a batch of changes into one write).
//!
//! Run: `cargo bench --bench datastore`

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prefixd::core::checkpoint::FileCheckpoint;
use prefixd::core::{Change, Datastore, EniId, PodInfo, PodKey, Prefix28, Store, UnixMillis};

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

fn checkpointed(c: &mut Criterion) {
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let mut g = c.benchmark_group("checkpointed");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    let pod = PodInfo::default();
    for batch in [1usize, 8, 32] {
        let (ds, keys) = pool(Duration::from_millis(1));
        let sink = FileCheckpoint::new(dir.path().join(format!("cp-{batch}.json"))).unwrap();
        let mut store = Store::new(ds, sink);
        let mut now = 1u64;
        let mut i = 0usize;
        // Each iteration: `batch` allocations in one write, then their releases in one write.
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

/// The floor: the same file operations as one checkpoint write (write a temp file of the same
/// size, fsync it, rename it, fsync the directory) without building the JSON.
fn fsync_floor(c: &mut Criterion) {
    use std::io::Write;
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let (ds, _) = pool(Duration::from_millis(1));
    let bytes = serde_json::to_vec(&prefixd::core::CheckpointV1::of(&ds)).unwrap();
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

criterion_group!(benches, in_memory, checkpointed, fsync_floor);
criterion_main!(benches);
