//! The one owner of pool state: it holds the durable datastore and takes commands. Everything
//! queued when it wakes is applied as one batch with one checkpoint write (group commit), so a
//! burst of ADDs costs one fsync, not one each.
//!
//! An ADD that finds no free address waits here (bounded by its timeout) and counts as
//! pending; the pool loop is woken at once so that the wait is one EC2 call, not a timer tick.
//!
//! The agent runs the owner on its own thread with the checkpoint file; the simulator runs it
//! inline on the caller's task with an in-memory checkpoint (thousands of virtual nodes on one
//! thread). Either way its clock is tokio's, counted from a Unix epoch, so that cooldowns follow
//! virtual time where tokio's clock is paused. Only [`PoolHandle`] leaves this module's parent:
//! how the owner runs is the agent builder's choice.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::core::checkpoint::{CheckpointError, LoadReport};
use crate::core::config::Families;
use crate::core::datastore::{BlockId, Datastore};
use crate::core::inventory::{Inventory, Totals};
use crate::core::journal::{Journal, MemoryJournal};
use crate::core::planner::{Limits, PoolSnapshot};
use crate::core::pool6::Pool6Error;
use crate::core::store::{Assigned, Released};
use crate::core::{
    Change, DatastoreError, EniId, Outcome, PodInfo, PodKey, Store, StoreError, UnixMillis,
};
use crate::metrics::Metrics;

use super::status::Status;

/// How often a failing checkpoint is tried again while nothing else writes it (readiness
/// returns once a write succeeds).
const CHECKPOINT_PROBE: Duration = Duration::from_secs(1);

/// Why a pool request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    /// No address became free within the request's timeout.
    #[error("no address became free within {0:?}; the pool is growing or at capacity")]
    Timeout(Duration),
    /// The datastore or its checkpoint refused the change.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The owner has stopped (shutdown).
    #[error("the pool owner has stopped")]
    Stopped,
    /// A DEL of the same attachment arrived while the ADD waited: the pod is gone.
    #[error("cancelled by a DEL of the same attachment")]
    Cancelled,
}

enum Cmd {
    Allocate {
        key: PodKey,
        pod: PodInfo,
        deadline: Instant,
        timeout: Duration,
        reply: oneshot::Sender<Result<Leased, PoolError>>,
    },
    Release {
        key: PodKey,
        reply: oneshot::Sender<Result<Option<Released>, PoolError>>,
    },
    Gc {
        network: String,
        keep: HashSet<PodKey>,
        reply: oneshot::Sender<Result<Collected, PoolError>>,
    },
    Check {
        key: PodKey,
        reply: oneshot::Sender<Option<Leased>>,
    },
    Apply {
        changes: Vec<Change>,
        reply: oneshot::Sender<Vec<Result<Outcome, StoreError>>>,
    },
    TakeFreeSecondary {
        eni: EniId,
        count: u32,
        reply: oneshot::Sender<Vec<Ipv4Addr>>,
    },
    Snapshot {
        limits: Limits,
        reply: oneshot::Sender<PoolSnapshot>,
    },
    Inventory {
        reply: oneshot::Sender<Inventory>,
    },
    Flush {
        reply: oneshot::Sender<Result<(), CheckpointError>>,
    },
}

/// The datastore's clock: `epoch` plus the tokio time elapsed since `origin`. With tokio's clock
/// running this is wall time without its jumps; paused (the simulator), it is virtual time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    origin: Instant,
    epoch: UnixMillis,
}

impl Clock {
    /// A clock that reads `epoch` now.
    pub(super) fn starting_at(epoch: UnixMillis) -> Self {
        Self {
            origin: Instant::now(),
            epoch,
        }
    }

    /// Now, in ms since the Unix epoch.
    pub(super) fn now(&self) -> UnixMillis {
        UnixMillis(self.epoch.0 + Instant::now().duration_since(self.origin).as_millis() as u64)
    }
}

/// How a handle reaches the owner.
#[derive(Clone)]
enum Link {
    /// The owner thread's channel (the agent).
    Thread(mpsc::Sender<Cmd>),
    /// The owner itself, run on the caller's task (the simulator: no thread, virtual time).
    Inline(Arc<Mutex<Owner>>),
}

/// A cheap, cloneable way to talk to the owner: the agent's socket server, its loop, its HTTP
/// endpoints, and the simulator's workload all hold one.
#[derive(Clone)]
pub struct PoolHandle {
    link: Link,
    counters: Arc<Counters>,
}

/// What the owner publishes without being asked.
#[derive(Debug, Default)]
struct Counters {
    pending: AtomicU32,
    stranded: AtomicU32,
    writes: AtomicU64,
}

struct Waiter {
    key: PodKey,
    pod: PodInfo,
    deadline: Instant,
    timeout: Duration,
    reply: oneshot::Sender<Result<Leased, PoolError>>,
}

/// The addresses handed out to one attachment, and the routing table of the ENI that carries
/// the IPv4 one (the /80 is always the primary ENI's: main).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leased {
    /// The IPv4 address (ENABLE_IPv4).
    pub address: Option<Ipv4Addr>,
    /// The IPv6 address (ENABLE_IPv6).
    pub address6: Option<Ipv6Addr>,
    /// The ENI's routing table (main for the primary ENI).
    pub table: u32,
}

/// What a GC did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    /// Allocations released.
    pub released: u32,
    /// Every address still allocated, of both families.
    pub kept: Vec<IpAddr>,
}

/// The lease of `v4` and `v6` in `ds`: the IPv4 address's ENI's table.
fn leased(ds: &Datastore, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Leased {
    let table = v4
        .and_then(|a| ds.eni_of(a))
        .map_or(crate::hostnet::netlink::TABLE_MAIN, |(_, e)| {
            crate::hostnet::config::table_of(e.primary, e.device_index, 0)
        });
    Leased {
        address: v4,
        address6: v6,
        table,
    }
}

/// What `key` holds in `ds`, if anything.
fn lease_of(ds: &Datastore, key: &PodKey) -> Option<Leased> {
    let v4 = ds.get(key).map(|a| a.address);
    let v6 = ds.v6().get(key).map(|a| a.address);
    (v4.is_some() || v6.is_some()).then(|| leased(ds, v4, v6))
}

/// The checkpoint the threaded pool opens, and how.
pub(super) struct Checkpoint<'a> {
    /// CHECKPOINT_PATH.
    pub path: &'a Path,
    /// DISCARD_CHECKPOINT.
    pub discard: bool,
}

/// Opens the checkpoint and starts the owner thread. `wake` is notified whenever an ADD starts
/// waiting for an address.
pub(super) fn start_threaded(
    checkpoint: Checkpoint<'_>,
    families: Families,
    cooldown: Duration,
    clock: Clock,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
) -> Result<(PoolHandle, LoadReport), CheckpointError> {
    let (mut store, report) =
        Store::open(checkpoint.path, cooldown, checkpoint.discard, clock.now())?;
    store.set_families(families);
    metrics.stranded(report.stranded.len() as u64);
    metrics.torn_tail(report.torn_tail_bytes as u64);
    let (tx, rx) = mpsc::channel();
    let counters = Arc::new(Counters::default());
    let owner = Owner::new(
        store.boxed(),
        counters.clone(),
        wake,
        metrics,
        clock,
        status,
    );
    std::thread::Builder::new()
        .name("prefixd-pool".into())
        .spawn(move || owner.run(rx))
        .map_err(|source| CheckpointError::Io {
            path: checkpoint.path.to_owned(),
            op: "start the pool thread for",
            source,
        })?;
    Ok((
        PoolHandle {
            link: Link::Thread(tx),
            counters,
        },
        report,
    ))
}

/// A pool with no thread and no file: each request is handled on the caller's task, with an
/// in-memory checkpoint.
pub(super) fn start_inline(
    families: Families,
    cooldown: Duration,
    clock: Clock,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
) -> PoolHandle {
    let counters = Arc::new(Counters::default());
    let mut store = Store::new(
        Datastore::new(cooldown),
        Box::new(MemoryJournal::default()) as Box<dyn Journal + Send>,
    );
    store.set_families(families);
    let owner = Owner::new(store, counters.clone(), wake, metrics, clock, status);
    PoolHandle {
        link: Link::Inline(Arc::new(Mutex::new(owner))),
        counters,
    }
}

impl PoolHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, PoolError> {
        let (tx, rx) = oneshot::channel();
        match &self.link {
            Link::Thread(t) => t.send(make(tx)).map_err(|_| PoolError::Stopped)?,
            Link::Inline(o) => {
                let mut o = o.lock().map_err(|_| PoolError::Stopped)?;
                o.handle(vec![make(tx)]);
            }
        }
        rx.await.map_err(|_| PoolError::Stopped)
    }

    /// ADDs waiting for an address.
    pub fn pending(&self) -> u32 {
        self.counters.pending.load(Ordering::Relaxed)
    }

    /// Allocations stranded now (their pods live; EC2 no longer lists their blocks).
    pub fn stranded(&self) -> u32 {
        self.counters.stranded.load(Ordering::Relaxed)
    }

    /// Checkpoint writes since start.
    pub fn checkpoint_writes(&self) -> u64 {
        self.counters.writes.load(Ordering::Relaxed)
    }

    /// An address for `key`, waiting up to `timeout` for one to be free.
    pub async fn allocate(
        &self,
        key: PodKey,
        pod: PodInfo,
        timeout: Duration,
    ) -> Result<Leased, PoolError> {
        let deadline = Instant::now() + timeout;
        self.ask(|reply| Cmd::Allocate {
            key,
            pod,
            deadline,
            timeout,
            reply,
        })
        .await?
    }

    /// Releases `key`'s addresses; `None` when it held none.
    pub async fn release(&self, key: PodKey) -> Result<Option<Released>, PoolError> {
        self.ask(|reply| Cmd::Release { key, reply }).await?
    }

    /// Releases every allocation of `network` not in `keep`; returns how many, and what is left.
    pub async fn gc(&self, network: String, keep: HashSet<PodKey>) -> Result<Collected, PoolError> {
        self.ask(|reply| Cmd::Gc {
            network,
            keep,
            reply,
        })
        .await?
    }

    /// The address `key` holds.
    pub async fn check(&self, key: PodKey) -> Result<Option<Leased>, PoolError> {
        self.ask(|reply| Cmd::Check { key, reply }).await
    }

    /// Applies structural changes (ENIs, prefixes, addresses) as one batch.
    pub async fn apply(
        &self,
        changes: Vec<Change>,
    ) -> Result<Vec<Result<Outcome, StoreError>>, PoolError> {
        self.ask(|reply| Cmd::Apply { changes, reply }).await
    }

    /// Removes up to `count` free secondary addresses of `eni` from the datastore and returns
    /// them (to be unassigned in EC2).
    pub async fn take_free_secondary(
        &self,
        eni: EniId,
        count: u32,
    ) -> Result<Vec<Ipv4Addr>, PoolError> {
        self.ask(|reply| Cmd::TakeFreeSecondary { eni, count, reply })
            .await
    }

    /// The planner's view.
    pub async fn snapshot(&self, limits: Limits) -> Result<PoolSnapshot, PoolError> {
        self.ask(|reply| Cmd::Snapshot { limits, reply }).await
    }

    /// Every ENI, block and allocation, typed.
    pub async fn inventory(&self) -> Result<Inventory, PoolError> {
        self.ask(|reply| Cmd::Inventory { reply }).await
    }

    /// Writes the checkpoint now (shutdown).
    pub async fn flush(&self) -> Result<(), PoolError> {
        self.ask(|reply| Cmd::Flush { reply })
            .await?
            .map_err(|e| PoolError::Store(StoreError::Checkpoint(Arc::new(e))))
    }
}

struct Owner {
    store: Store<Box<dyn Journal + Send>>,
    waiters: VecDeque<Waiter>,
    counters: Arc<Counters>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    clock: Clock,
    status: Arc<Status>,
    /// The last checkpoint write failed (and nothing has been written since).
    failing: bool,
    /// Allocations made for ADDs whose caller had gone by the time the answer was ready:
    /// released in the next batch, so that nothing is held for a pod that never got it.
    orphans: Vec<PodKey>,
}

type ApplyReply = oneshot::Sender<Vec<Result<Outcome, StoreError>>>;

/// Where a batch result goes.
enum Route {
    Allocate(Waiter),
    Release(oneshot::Sender<Result<Option<Released>, PoolError>>),
    Gc,
    /// The release of an allocation nobody took.
    Orphan(PodKey),
    Apply(usize),
}

impl Owner {
    fn new(
        store: Store<Box<dyn Journal + Send>>,
        counters: Arc<Counters>,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
        clock: Clock,
        status: Arc<Status>,
    ) -> Self {
        Self {
            store,
            waiters: VecDeque::new(),
            counters,
            wake,
            metrics,
            clock,
            status,
            failing: false,
            orphans: Vec::new(),
        }
    }

    /// Answers an ADD; an answer nobody takes (the caller went away) is undone, when the
    /// allocation is new.
    fn answer_add(&mut self, w: Waiter, a: Assigned) {
        let lease = leased(self.store.datastore(), a.v4, a.v6);
        if w.reply.send(Ok(lease)).is_err() && a.new {
            tracing::info!(pod.key = %w.key, address = ?a.v4, address6 = ?a.v6, "the ADD's caller went away: releasing its address");
            self.orphans.push(w.key);
        }
    }

    /// Records whether the checkpoint can be written, for readiness and ADDs.
    fn checkpoint_health(&mut self, error: Option<&StoreError>) {
        let failing = error.is_some();
        if failing != self.failing {
            self.failing = failing;
            let why = error.map(|e| e.to_string());
            self.status.update(|s| s.checkpoint_error = why);
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut last_probe = std::time::Instant::now();
        loop {
            let first = if self.waiters.is_empty() && !self.failing && self.orphans.is_empty() {
                match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => break,
                }
            } else {
                let wait = if self.failing {
                    CHECKPOINT_PROBE
                } else {
                    Duration::from_millis(50)
                };
                match rx.recv_timeout(wait) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut cmds: Vec<Cmd> = first.into_iter().collect();
            while cmds.len() < 512 {
                match rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(_) => break,
                }
            }
            // Commands keep coming (the loop's queries): probe by the clock, not on silence.
            if self.failing && last_probe.elapsed() >= CHECKPOINT_PROBE {
                last_probe = std::time::Instant::now();
                self.probe();
            }
            self.handle(cmds);
        }
        for w in self.waiters.drain(..) {
            let _ = w.reply.send(Err(PoolError::Stopped));
        }
    }

    /// Tries the failing checkpoint again.
    fn probe(&mut self) {
        match self.store.flush() {
            Ok(()) => {
                tracing::info!("the checkpoint can be written again");
                self.checkpoint_health(None);
            }
            Err(e) => tracing::debug!(error = %e, "checkpoint still cannot be written"),
        }
    }

    fn handle(&mut self, cmds: Vec<Cmd>) {
        let now = self.clock.now();
        let mut changes = Vec::new();
        let mut routes = Vec::new();
        for key in std::mem::take(&mut self.orphans) {
            changes.push(Change::Release { key: key.clone() });
            routes.push(Route::Orphan(key));
        }
        let mut applies: Vec<(ApplyReply, Vec<Result<Outcome, StoreError>>)> = Vec::new();
        let mut gcs = Vec::new();
        let mut queries = Vec::new();
        for c in cmds {
            match c {
                Cmd::Allocate {
                    key,
                    pod,
                    deadline,
                    timeout,
                    reply,
                } => {
                    if reply.is_closed() {
                        // The plugin went away before its turn (the runtime killed it).
                        tracing::debug!(pod.key = %key, "the ADD's caller went away: not allocating");
                        continue;
                    }
                    changes.push(Change::Allocate {
                        key: key.clone(),
                        pod: pod.clone(),
                    });
                    routes.push(Route::Allocate(Waiter {
                        key,
                        pod,
                        deadline,
                        timeout,
                        reply,
                    }));
                }
                Cmd::Release { key, reply } => {
                    // An ADD of the same attachment still waiting is for a pod that is gone.
                    let mut i = 0;
                    while i < self.waiters.len() {
                        if self.waiters[i].key == key {
                            let w = self.waiters.remove(i).expect("in range");
                            tracing::info!(pod.key = %key, "a DEL cancelled the waiting ADD");
                            let _ = w.reply.send(Err(PoolError::Cancelled));
                        } else {
                            i += 1;
                        }
                    }
                    changes.push(Change::Release { key });
                    routes.push(Route::Release(reply));
                }
                Cmd::Gc {
                    network,
                    keep,
                    reply,
                } => {
                    let ds = self.store.datastore();
                    let doomed: std::collections::BTreeSet<PodKey> = ds
                        .allocations()
                        .chain(ds.stranded())
                        .map(|(k, _)| k)
                        .chain(ds.v6().allocations().map(|(k, _)| k))
                        .filter(|k| k.network() == network && !keep.contains(*k))
                        .cloned()
                        .collect();
                    let n = doomed.len() as u32;
                    for key in doomed {
                        changes.push(Change::Release { key });
                        routes.push(Route::Gc);
                    }
                    gcs.push((reply, n));
                }
                Cmd::Apply { changes: c, reply } => {
                    let idx = applies.len();
                    applies.push((reply, Vec::new()));
                    for ch in c {
                        changes.push(ch);
                        routes.push(Route::Apply(idx));
                    }
                }
                other => queries.push(other),
            }
        }
        let mut gc_failed: Option<StoreError> = None;
        if !changes.is_empty() {
            let results = self.apply(changes, now);
            for (route, r) in routes.into_iter().zip(results) {
                match route {
                    // An ADD whose caller is gone before it is tried is not tried: undone
                    // below if it was (the caller left during the batch).
                    Route::Allocate(w) => match r {
                        Ok(Outcome::Allocated(a)) => self.answer_add(w, a),
                        Err(
                            StoreError::Datastore(DatastoreError::NoFreeAddress)
                            | StoreError::Pool6(Pool6Error::NoPrefix),
                        ) => {
                            tracing::debug!(pod.key = %w.key, "no free address: waiting for the pool to grow");
                            self.waiters.push_back(w);
                            self.wake.notify_one();
                        }
                        Err(e) => {
                            let _ = w.reply.send(Err(e.into()));
                        }
                        Ok(o) => unreachable!("allocate gave {o:?}"),
                    },
                    Route::Release(reply) => {
                        let _ = reply.send(match r {
                            Ok(Outcome::Released(a)) => Ok(Some(a)),
                            Err(StoreError::Datastore(DatastoreError::NotFound(_))) => Ok(None),
                            Err(e) => Err(e.into()),
                            Ok(o) => unreachable!("release gave {o:?}"),
                        });
                    }
                    Route::Orphan(key) => match r {
                        Err(StoreError::Checkpoint(_)) => self.orphans.push(key),
                        Err(e) => {
                            tracing::debug!(pod.key = %key, error = %e, "orphan already gone")
                        }
                        Ok(_) => {}
                    },
                    Route::Gc => {
                        if let Err(e) = r
                            && !matches!(e, StoreError::Datastore(DatastoreError::NotFound(_)))
                        {
                            gc_failed = Some(e);
                        }
                    }
                    Route::Apply(i) => applies[i].1.push(r),
                }
            }
        }
        if !gcs.is_empty() {
            let ds = self.store.datastore();
            let kept: Vec<IpAddr> = ds
                .allocations()
                .map(|(_, a)| IpAddr::V4(a.address))
                .chain(ds.v6().allocations().map(|(_, a)| IpAddr::V6(a.address)))
                .collect();
            for (reply, n) in gcs {
                let _ = reply.send(match &gc_failed {
                    Some(e) => Err(e.clone().into()),
                    None => Ok(Collected {
                        released: n,
                        kept: kept.clone(),
                    }),
                });
            }
        }
        for (reply, results) in applies {
            let _ = reply.send(results);
        }
        self.retry_waiters();
        for q in queries {
            self.answer(q);
        }
        self.publish();
    }

    fn apply(&mut self, changes: Vec<Change>, now: UnixMillis) -> Vec<Result<Outcome, StoreError>> {
        let writes = self.store.writes();
        let t = Instant::now();
        let r = self.store.apply_batch(changes, now);
        if self.store.writes() > writes {
            self.metrics.checkpoint_write(t.elapsed());
            self.checkpoint_health(None);
        } else if let Some(Err(e)) = r
            .iter()
            .find(|x| matches!(x, Err(StoreError::Checkpoint(_))))
        {
            self.checkpoint_health(Some(&e.clone()));
        }
        r
    }

    fn retry_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut live = VecDeque::new();
        for w in self.waiters.drain(..) {
            if w.reply.is_closed() {
                tracing::debug!(pod.key = %w.key, "the waiting ADD's caller went away: not allocating");
                continue;
            }
            if w.deadline <= now {
                let _ = w.reply.send(Err(PoolError::Timeout(w.timeout)));
                continue;
            }
            live.push_back(w);
        }
        if live.is_empty() {
            return;
        }
        let changes = live
            .iter()
            .map(|w| Change::Allocate {
                key: w.key.clone(),
                pod: w.pod.clone(),
            })
            .collect();
        let results = self.apply(changes, self.clock.now());
        for (w, r) in live.into_iter().zip(results) {
            match r {
                Ok(Outcome::Allocated(a)) => self.answer_add(w, a),
                Err(
                    StoreError::Datastore(DatastoreError::NoFreeAddress)
                    | StoreError::Pool6(Pool6Error::NoPrefix),
                ) => self.waiters.push_back(w),
                Err(e) => {
                    let _ = w.reply.send(Err(e.into()));
                }
                Ok(o) => unreachable!("allocate gave {o:?}"),
            }
        }
    }

    fn answer(&mut self, q: Cmd) {
        match q {
            Cmd::Check { key, reply } => {
                let ds = self.store.datastore();
                let _ = reply.send(lease_of(ds, &key));
            }
            Cmd::Snapshot { limits, reply } => {
                self.store.expire(self.clock.now());
                let _ = reply.send(PoolSnapshot::of(
                    self.store.datastore(),
                    limits,
                    self.waiters.len() as u32,
                ));
            }
            Cmd::Inventory { reply } => {
                self.store.expire(self.clock.now());
                let _ = reply.send(Inventory::of(self.store.datastore()));
            }
            Cmd::TakeFreeSecondary { eni, count, reply } => {
                self.store.expire(self.clock.now());
                let free: Vec<Ipv4Addr> = self
                    .store
                    .datastore()
                    .enis()
                    .get(&eni)
                    .map(|e| {
                        e.secondary_ips
                            .iter()
                            .rev()
                            .filter(|a| {
                                self.store
                                    .datastore()
                                    .usage(BlockId::Ip(**a))
                                    .is_some_and(|u| u.free == 1)
                            })
                            .take(count as usize)
                            .copied()
                            .collect()
                    })
                    .unwrap_or_default();
                let changes = free
                    .iter()
                    .map(|a| Change::RemoveSecondaryIp {
                        addr: *a,
                        force: false,
                    })
                    .collect();
                let results = self.apply(changes, self.clock.now());
                let taken = free
                    .into_iter()
                    .zip(results)
                    .filter(|(_, r)| r.is_ok())
                    .map(|(a, _)| a)
                    .collect();
                let _ = reply.send(taken);
            }
            Cmd::Flush { reply } => {
                let _ = reply.send(self.store.flush());
            }
            _ => unreachable!("only queries reach answer"),
        }
    }

    fn publish(&mut self) {
        let pending = self.waiters.len() as u32;
        self.counters.pending.store(pending, Ordering::Relaxed);
        self.counters
            .writes
            .store(self.store.writes(), Ordering::Relaxed);
        let ds = self.store.datastore();
        self.counters
            .stranded
            .store(ds.stranded().count() as u32, Ordering::Relaxed);
        self.metrics.pool(
            Totals::of(ds),
            ds.enis().len() as u32,
            pending,
            ds.stranded().count() as u32,
        );
    }
}
