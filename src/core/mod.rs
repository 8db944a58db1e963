//! The pure core: identifiers, the address datastore and its checkpoint, the warm-pool planner
//! and its settings. Nothing here does network I/O or needs an async runtime; the checkpoint is
//! the only file I/O.

pub mod checkpoint;
pub mod config;
pub mod datastore;
pub mod instance_types;
pub mod planner;
pub mod rng;
pub mod store;
pub mod types;

pub use checkpoint::{CheckpointError, CheckpointV1, FileCheckpoint, LoadReport};
pub use config::{Mode, PoolConfig, Targets};
pub use datastore::{Allocated, Allocation, BlockId, Datastore, DatastoreError, PodInfo};
pub use planner::{Limits, Plan, PoolSnapshot, plan};
pub use store::{Change, Outcome, Store, StoreError};
pub use types::{EniId, InstanceId, PodKey, Prefix28, SubnetId, UnixMillis};
