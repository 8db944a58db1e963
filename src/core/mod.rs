//! The pure core: identifiers, the address datastore and its checkpoint, the warm-pool planner
//! and the resync diff, settings and backoff. Nothing here does network I/O, needs an async
//! runtime or names an AWS crate; the checkpoint (snapshot and log) is the only file I/O.

pub mod backoff;
pub mod checkpoint;
pub mod config;
pub mod crc32c;
pub mod datastore;
pub mod instance_types;
pub mod inventory;
pub mod journal;
pub mod planner;
pub mod policy;
pub mod pool6;
pub mod resync;
pub mod rng;
pub mod settings;
pub mod sha1;
pub mod store;
pub mod types;
pub mod vpccni;
pub mod wal;

pub use checkpoint::{CheckpointError, LoadReport, Snapshot};
pub use config::{Mode, PoolConfig, Targets};
pub use datastore::{Allocated, Allocation, BlockId, Datastore, DatastoreError, PodInfo};
pub use inventory::Inventory;
pub use journal::{FileJournal, Journal, MemoryJournal};
pub use planner::{Limits, Plan, PoolSnapshot, plan};
pub use pool6::{Allocation6, Pool6, Pool6Error};
pub use store::{Assigned, Change, Outcome, Released, Store, StoreError};
pub use types::{EniId, InstanceId, PodKey, Prefix28, Prefix80, SubnetId, UnixMillis};
