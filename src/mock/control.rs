//! What the mock does to a call before the model sees it: EC2's per-action token buckets
//! (throttling), injected faults and error rates, per-action latency; and the call statistics.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::ApiError;
use crate::core::rng::XorShift64;
use crate::ec2::{Action, BucketSpec};

#[derive(Debug, Clone)]
struct Bucket {
    spec: BucketSpec,
    tokens: f64,
    last: Instant,
}

/// A fault armed for the next calls of an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// The action, e.g. `AttachNetworkInterface`.
    pub action: Action,
    /// How many of its next calls fail.
    pub fail_next: u32,
    /// The EC2 error code they fail with.
    pub code: String,
    /// The message (a default names the injection).
    #[serde(default)]
    pub message: Option<String>,
}

/// A fixed error rate for an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRateSpec {
    /// The action.
    pub action: Action,
    /// Fraction of calls that fail, 0 to 1.
    pub rate: f64,
    /// The EC2 error code.
    pub code: String,
}

/// Calls seen, by action and outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Calls received, by action.
    pub calls: BTreeMap<Action, u64>,
    /// Calls answered RequestLimitExceeded, by action.
    pub throttled: BTreeMap<Action, u64>,
    /// Error answers by action and code (throttling included).
    pub errors: BTreeMap<Action, BTreeMap<String, u64>>,
}

impl Stats {
    /// Calls of one action.
    pub fn calls_of(&self, action: Action) -> u64 {
        self.calls.get(&action).copied().unwrap_or(0)
    }
    /// Error answers of one action with one code.
    pub fn errors_of(&self, action: Action, code: &str) -> u64 {
        self.errors
            .get(&action)
            .and_then(|m| m.get(code))
            .copied()
            .unwrap_or(0)
    }
    /// Calls of `action` that succeeded.
    pub fn ok_calls(&self, action: Action) -> u64 {
        let errors: u64 = self.errors.get(&action).map_or(0, |m| m.values().sum());
        self.calls_of(action).saturating_sub(errors)
    }
    /// All calls.
    pub fn total_calls(&self) -> u64 {
        self.calls.values().sum()
    }
    /// Mutating calls (everything but Describe* and Get*).
    pub fn mutating_calls(&self) -> u64 {
        self.calls
            .iter()
            .filter(|(a, _)| a.is_mutating())
            .map(|(_, n)| n)
            .sum()
    }
}

/// Throttling, faults, latency and statistics for one mock.
#[derive(Debug)]
pub struct Control {
    /// Whether token buckets apply.
    pub throttling: bool,
    /// Mock time runs this many times faster than real time (refills and delays scale with it).
    pub time_scale: f64,
    buckets: HashMap<(Action, bool), Bucket>,
    /// Per-action delay before answering (mock time).
    pub latency: HashMap<Action, Duration>,
    faults: HashMap<Action, Vec<FaultSpec>>,
    rates: HashMap<Action, ErrorRateSpec>,
    rng: XorShift64,
    /// An IAM policy every call must be allowed by (none: everything is).
    pub iam: Option<super::iam::Policy>,
    /// What happened.
    pub stats: Stats,
}

impl Control {
    /// No throttling, no faults, no latency.
    pub fn new(seed: u64) -> Self {
        Self {
            throttling: false,
            time_scale: 1.0,
            buckets: HashMap::new(),
            latency: HashMap::new(),
            faults: HashMap::new(),
            rates: HashMap::new(),
            rng: XorShift64::new(seed ^ 0x5DEE_CE66_D1CE_4E5B),
            iam: None,
            stats: Stats::default(),
        }
    }

    /// Arms a fault.
    pub fn add_fault(&mut self, f: FaultSpec) {
        self.faults.entry(f.action).or_default().push(f);
    }

    /// Sets (or, with rate 0, clears) an action's error rate.
    pub fn set_error_rate(&mut self, r: ErrorRateSpec) {
        if r.rate <= 0.0 {
            self.rates.remove(&r.action);
        } else {
            self.rates.insert(r.action, r);
        }
    }

    /// Decides the fate of one call at `now`: `Err` to answer with an error before the model
    /// sees it, else the delay to wait before answering.
    pub fn admit(
        &mut self,
        action: Action,
        unfiltered: bool,
        now: Instant,
    ) -> Result<Duration, ApiError> {
        *self.stats.calls.entry(action).or_default() += 1;
        let r = self.admit_inner(action, unfiltered, now);
        if let Err(e) = &r {
            self.count_error(action, &e.code);
            if e.code == "RequestLimitExceeded" {
                *self.stats.throttled.entry(action).or_default() += 1;
            }
        }
        r
    }

    /// The tokens in `action`'s (filtered) bucket at `now`: its capacity when untouched.
    pub fn tokens(&self, action: Action, now: Instant) -> f64 {
        let spec = action.bucket(false);
        match self.buckets.get(&(action, false)) {
            None => spec.capacity,
            Some(b) => {
                let elapsed = now.saturating_duration_since(b.last).as_secs_f64() * self.time_scale;
                (b.tokens + elapsed * b.spec.refill).min(b.spec.capacity)
            }
        }
    }

    /// Counts an error answered by the model.
    pub fn count_error(&mut self, action: Action, code: &str) {
        *self
            .stats
            .errors
            .entry(action)
            .or_default()
            .entry(code.to_owned())
            .or_default() += 1;
    }

    fn admit_inner(
        &mut self,
        action: Action,
        unfiltered: bool,
        now: Instant,
    ) -> Result<Duration, ApiError> {
        // EC2 authorizes before it meters.
        if let Some(p) = &self.iam
            && !p.allows(action)
        {
            return Err(super::iam::Policy::refusal(action));
        }
        if self.throttling {
            let spec = action.bucket(unfiltered);
            let scale = self.time_scale;
            let b = self.buckets.entry((action, unfiltered)).or_insert(Bucket {
                spec,
                tokens: spec.capacity,
                last: now,
            });
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64() * scale;
            b.tokens = (b.tokens + elapsed * b.spec.refill).min(b.spec.capacity);
            b.last = now;
            if b.tokens < 1.0 {
                return Err(ApiError::new(
                    503,
                    "RequestLimitExceeded",
                    "Request limit exceeded.",
                ));
            }
            b.tokens -= 1.0;
        }
        if let Some(list) = self.faults.get_mut(&action)
            && let Some(f) = list.first_mut()
        {
            let e = ApiError::with_default_status(
                &f.code,
                f.message
                    .clone()
                    .unwrap_or_else(|| format!("Injected fault for {action}.")),
            );
            f.fail_next -= 1;
            if f.fail_next == 0 {
                list.remove(0);
            }
            return Err(e);
        }
        if let Some(r) = self.rates.get(&action).cloned()
            && self.rng.next_f64() < r.rate
        {
            return Err(ApiError::with_default_status(
                &r.code,
                format!("Injected error (rate {}) for {action}.", r.rate),
            ));
        }
        let delay = self.latency.get(&action).copied().unwrap_or_default();
        Ok(delay.div_f64(self.time_scale.max(1e-9)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_drains_and_refills_with_ec2_rates() {
        let mut c = Control::new(1);
        c.throttling = true;
        let t0 = Instant::now();
        for _ in 0..100 {
            c.admit(Action::AssignPrivateIpAddresses, false, t0)
                .unwrap();
        }
        let e = c
            .admit(Action::AssignPrivateIpAddresses, false, t0)
            .unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (503, "RequestLimitExceeded"));
        // Another action has its own bucket.
        c.admit(Action::AttachNetworkInterface, false, t0).unwrap();
        // 5 per second refill.
        let t1 = t0 + Duration::from_millis(1_000);
        for _ in 0..5 {
            c.admit(Action::AssignPrivateIpAddresses, false, t1)
                .unwrap();
        }
        assert!(
            c.admit(Action::AssignPrivateIpAddresses, false, t1)
                .is_err()
        );
        assert_eq!(c.stats.throttled[&Action::AssignPrivateIpAddresses], 2);
        // Time scale 10: 1 s of real time refills 50.
        c.time_scale = 10.0;
        let t2 = t1 + Duration::from_secs(1);
        for _ in 0..50 {
            c.admit(Action::AssignPrivateIpAddresses, false, t2)
                .unwrap();
        }
        assert!(
            c.admit(Action::AssignPrivateIpAddresses, false, t2)
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn faults_fire_n_times_then_clear() {
        let mut c = Control::new(1);
        c.add_fault(FaultSpec {
            action: Action::AttachNetworkInterface,
            fail_next: 2,
            code: "InternalError".into(),
            message: None,
        });
        let now = Instant::now();
        assert_eq!(
            c.admit(Action::AttachNetworkInterface, false, now)
                .unwrap_err()
                .status,
            500
        );
        assert!(c.admit(Action::AttachNetworkInterface, false, now).is_err());
        assert!(c.admit(Action::AttachNetworkInterface, false, now).is_ok());
        assert_eq!(
            c.stats
                .errors_of(Action::AttachNetworkInterface, "InternalError"),
            2
        );
    }

    #[tokio::test(start_paused = true)]
    async fn error_rate_is_roughly_the_rate_and_deterministic() {
        let run = || {
            let mut c = Control::new(7);
            c.set_error_rate(ErrorRateSpec {
                action: Action::CreateTags,
                rate: 0.25,
                code: "InternalError".into(),
            });
            let now = Instant::now();
            (0..2000)
                .map(|_| c.admit(Action::CreateTags, false, now).is_err())
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let fails = a.iter().filter(|f| **f).count();
        assert!((400..600).contains(&fails), "{fails}");
    }
}
