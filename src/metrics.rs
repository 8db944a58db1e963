//! The agent's Prometheus metrics (prometheus-client), created once and passed to whoever
//! records them; served on METRICS_BIND_ADDRESS at /metrics.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ec2::ErrorClass;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionResult {
    action: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    addresses: Family<StateLabel, Gauge>,
    prefixes: Gauge,
    secondary_ips: Gauge,
    enis: Gauge,
    pending: Gauge,
    add_latency: Histogram,
    ec2_calls: Family<ActionResult, Counter>,
    ec2_latency: Family<ActionLabel, Histogram>,
    decisions: Family<DecisionLabel, Counter>,
    fallback: Gauge,
    prefix_unsupported: Gauge,
    checkpoint_latency: Histogram,
    dropped_allocations: Counter,
    leaked_enis_deleted: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under `prefixd_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("prefixd");
        let m = Self {
            addresses: Family::default(),
            prefixes: Gauge::default(),
            secondary_ips: Gauge::default(),
            enis: Gauge::default(),
            pending: Gauge::default(),
            add_latency: latency_histogram(),
            ec2_calls: Family::default(),
            ec2_latency: Family::new_with_constructor(latency_histogram),
            decisions: Family::default(),
            fallback: Gauge::default(),
            prefix_unsupported: Gauge::default(),
            checkpoint_latency: latency_histogram(),
            dropped_allocations: Counter::default(),
            leaked_enis_deleted: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "addresses",
            "Pod addresses by state (total, assigned, cooling, free)",
            m.addresses.clone(),
        );
        registry.register("prefixes", "Attached /28 prefixes", m.prefixes.clone());
        registry.register(
            "secondary_ips",
            "Attached secondary /32 addresses",
            m.secondary_ips.clone(),
        );
        registry.register("enis", "Attached ENIs", m.enis.clone());
        registry.register(
            "pending_adds",
            "ADD requests waiting for an address",
            m.pending.clone(),
        );
        registry.register(
            "add_latency_seconds",
            "Time from an ADD request to its answer",
            m.add_latency.clone(),
        );
        registry.register(
            "ec2_calls",
            "EC2 calls by action and result (ok or error class)",
            m.ec2_calls.clone(),
        );
        registry.register(
            "ec2_call_duration_seconds",
            "EC2 call latency by action",
            m.ec2_latency.clone(),
        );
        registry.register(
            "planner_decisions",
            "Planner decisions (grow, release, steady, at_capacity)",
            m.decisions.clone(),
        );
        registry.register(
            "fallback_active",
            "1 while secondary addresses are used because no prefix can be had",
            m.fallback.clone(),
        );
        registry.register(
            "prefix_delegation_unsupported",
            "1 when the EC2 endpoint assigned no prefix for an Assign that succeeded",
            m.prefix_unsupported.clone(),
        );
        registry.register(
            "checkpoint_write_seconds",
            "Checkpoint write latency (write, fsync, rename)",
            m.checkpoint_latency.clone(),
        );
        registry.register(
            "dropped_allocations",
            "Allocations dropped because their address left every attached prefix",
            m.dropped_allocations.clone(),
        );
        registry.register(
            "leaked_enis_deleted",
            "Leaked available ENIs deleted by the sweep",
            m.leaked_enis_deleted.clone(),
        );
        Self { registry, ..m }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    /// One EC2 call.
    pub fn ec2_call(&self, action: &str, error: Option<ErrorClass>, took: Duration) {
        let result = error.map_or("ok", ErrorClass::as_str).to_owned();
        self.ec2_calls
            .get_or_create(&ActionResult {
                action: action.to_owned(),
                result,
            })
            .inc();
        self.ec2_latency
            .get_or_create(&ActionLabel {
                action: action.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// The pool's sizes.
    #[allow(clippy::too_many_arguments)]
    pub fn pool(
        &self,
        total: u32,
        assigned: u32,
        cooling: u32,
        prefixes: u32,
        secondary: u32,
        enis: u32,
        pending: u32,
    ) {
        for (state, v) in [
            ("total", total),
            ("assigned", assigned),
            ("cooling", cooling),
            ("free", total.saturating_sub(assigned + cooling)),
        ] {
            self.addresses
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(i64::from(v));
        }
        self.prefixes.set(i64::from(prefixes));
        self.secondary_ips.set(i64::from(secondary));
        self.enis.set(i64::from(enis));
        self.pending.set(i64::from(pending));
    }

    /// One ADD answered after `took`.
    pub fn add_latency(&self, took: Duration) {
        self.add_latency.observe(took.as_secs_f64());
    }

    /// One planner decision.
    pub fn decision(&self, d: &str) {
        self.decisions
            .get_or_create(&DecisionLabel { decision: d.into() })
            .inc();
    }

    /// Fallback and prefix-support state.
    pub fn modes(&self, fallback: bool, unsupported: bool) {
        self.fallback.set(i64::from(fallback));
        self.prefix_unsupported.set(i64::from(unsupported));
    }

    /// One checkpoint write.
    pub fn checkpoint_write(&self, took: Duration) {
        self.checkpoint_latency.observe(took.as_secs_f64());
    }

    /// Allocations dropped on load or resync.
    pub fn dropped(&self, n: u64) {
        self.dropped_allocations.inc_by(n);
    }

    /// Leaked ENIs deleted.
    pub fn leaked_deleted(&self, n: u64) {
        self.leaked_enis_deleted.inc_by(n);
    }
}
