//! One EC2 account and region: the model, its control (throttling, faults, latency, counts) and
//! its clock, and the one path every call takes — admit (buckets, faults) → latency → model →
//! count — whether it came over HTTP ([`super::server`]) or straight from a virtual node
//! ([`super::direct`]).
//!
//! The model and control sit behind plain mutexes that are never held across an `.await`.
//! Every change to the model is announced on a watch channel ([`Account::changes`]), so that a
//! follower such as the emulated VPC data plane can reconcile with it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::ApiError;
use super::control::{Control, Stats};
use super::model::Model;
use crate::ec2::Action;

/// An account: model, control, clock.
pub struct Account {
    model: Mutex<Model>,
    control: Mutex<Control>,
    origin: Instant,
    changed: watch::Sender<u64>,
}

impl Account {
    /// An account whose clock starts now.
    pub fn new(model: Model, control: Control) -> Self {
        Self {
            model: Mutex::new(model),
            control: Mutex::new(control),
            origin: Instant::now(),
            changed: watch::channel(0).0,
        }
    }

    /// Mock time in ms since the account was made, scaled by the control's time scale
    /// (attachment states, and everything the model times).
    pub fn now_ms(&self) -> u64 {
        let scale = self.with_control(|c| c.time_scale);
        // Exact for whole milliseconds: an integral number of ns divided by 1e6 rounds right.
        (Instant::now().duration_since(self.origin).as_nanos() as f64 * scale / 1e6) as u64
    }

    /// Reads the model.
    pub fn read<R>(&self, f: impl FnOnce(&Model) -> R) -> R {
        f(&self.model.lock().expect("model lock"))
    }

    /// Changes the model directly (scenarios, tests, admin calls); followers are told.
    pub fn with_model<R>(&self, f: impl FnOnce(&mut Model) -> R) -> R {
        let r = f(&mut self.model.lock().expect("model lock"));
        self.changed.send_modify(|g| *g += 1);
        r
    }

    /// Reads or changes throttling, faults, latency.
    pub fn with_control<R>(&self, f: impl FnOnce(&mut Control) -> R) -> R {
        f(&mut self.control.lock().expect("control lock"))
    }

    /// Call statistics so far.
    pub fn stats(&self) -> Stats {
        self.with_control(|c| c.stats.clone())
    }

    /// A receiver that sees a new value whenever the model may have changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// One call: EC2's bucket for `action` and any armed fault or error rate decide first;
    /// then the action's latency passes; then `f` runs on the model at the mock's time; an
    /// error `f` returns is counted. `unfiltered` marks a read EC2 meters more tightly.
    pub async fn call<T>(
        &self,
        action: Action,
        unfiltered: bool,
        f: impl FnOnce(&mut Model, u64) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let delay = self.with_control(|c| c.admit(action, unfiltered, Instant::now()))?;
        if delay > Duration::ZERO {
            tokio::time::sleep(delay).await;
        }
        let now_ms = self.now_ms();
        let r = {
            let mut m = self.model.lock().expect("model lock");
            f(&mut m, now_ms)
        };
        match &r {
            Ok(_) if action.is_mutating() => self.changed.send_modify(|g| *g += 1),
            Ok(_) => {}
            Err(e) => self.with_control(|c| c.count_error(action, &e.code)),
        }
        r
    }
}
