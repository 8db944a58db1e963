//! The agent's Prometheus metrics (prometheus-client), created once and passed to whoever
//! records them; served on METRICS_BIND_ADDRESS at /metrics.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::core::inventory::Totals;
use crate::ec2::{Action, ErrorClass};

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
struct RepairLabel {
    object: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: String,
}

/// Registers each `name => metric, help;` (a clone of the metric: they share their values).
macro_rules! register {
    ($registry:ident; $($name:literal => $metric:expr, $help:literal;)*) => {
        $( $registry.register($name, $help, $metric.clone()); )*
    };
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
    ipv6_unsupported: Gauge,
    checkpoint_latency: Histogram,
    stranded_total: Counter,
    torn_tail: Counter,
    stranded: Gauge,
    leaked_enis_deleted: Counter,
    host_repairs: Family<RepairLabel, Counter>,
    host_errors: Counter,
    missing_links: Gauge,
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
            ipv6_unsupported: Gauge::default(),
            checkpoint_latency: latency_histogram(),
            stranded_total: Counter::default(),
            torn_tail: Counter::default(),
            stranded: Gauge::default(),
            leaked_enis_deleted: Counter::default(),
            host_repairs: Family::default(),
            host_errors: Counter::default(),
            missing_links: Gauge::default(),
            registry: Registry::default(),
        };
        register!(registry;
            "addresses" => m.addresses, "Pod addresses by state (total, assigned, cooling, free)";
            "prefixes" => m.prefixes, "Attached /28 prefixes";
            "secondary_ips" => m.secondary_ips, "Attached secondary /32 addresses";
            "enis" => m.enis, "Attached ENIs";
            "pending_adds" => m.pending, "ADD requests waiting for an address";
            "add_latency_seconds" => m.add_latency, "Time from an ADD request to its answer";
            "ec2_calls" => m.ec2_calls, "EC2 calls by action and result (ok or error class)";
            "ec2_call_duration_seconds" => m.ec2_latency, "EC2 call latency by action";
            "planner_decisions" => m.decisions, "Planner decisions (grow, release, steady, at_capacity)";
            "fallback_active" => m.fallback, "1 while secondary addresses are used because no prefix can be had";
            "prefix_delegation_unsupported" => m.prefix_unsupported, "1 when the EC2 endpoint assigned no prefix for an Assign that succeeded";
            "ipv6_prefix_delegation_unsupported" => m.ipv6_unsupported, "1 when the EC2 endpoint assigned no IPv6 /80 for an AssignIpv6Addresses that succeeded";
            "checkpoint_write_seconds" => m.checkpoint_latency, "Checkpoint commit latency (a log append and its fdatasync, or a compaction)";
            "checkpoint_torn_tail_bytes" => m.torn_tail, "Bytes of a torn last checkpoint-log record discarded at start-up (a crash during a write never acknowledged)";
            "allocations_stranded" => m.stranded_total, "Allocations stranded because EC2 stopped listing their block while the pod lived (kept until its DEL or GC)";
            "stranded_allocations" => m.stranded, "Allocations stranded now: their pods live, their addresses are not attached, and no other pod gets them";
            "leaked_enis_deleted" => m.leaked_enis_deleted, "Leaked available ENIs deleted by the sweep";
            "host_repairs" => m.host_repairs, "Node data-plane objects (rule, route, nft, link) found missing and restored, or stale and removed";
            "host_errors" => m.host_errors, "Attempts to program the node's data plane that failed (retried)";
            "eni_links_missing" => m.missing_links, "Attached ENIs whose link has not appeared after the wait (their addresses are not handed out)";
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
    pub fn ec2_call(&self, action: Action, error: Option<ErrorClass>, took: Duration) {
        let result = error.map_or("ok", ErrorClass::as_str).to_owned();
        let action = action.name().to_owned();
        self.ec2_latency
            .get_or_create(&ActionLabel {
                action: action.clone(),
            })
            .observe(took.as_secs_f64());
        self.ec2_calls
            .get_or_create(&ActionResult { action, result })
            .inc();
    }

    /// The pool's sizes.
    pub fn pool(&self, t: Totals, enis: u32, pending: u32, stranded: u32) {
        self.stranded.set(i64::from(stranded));
        for (state, v) in [
            ("total", t.addresses),
            ("assigned", t.assigned),
            ("cooling", t.cooling),
            ("free", t.free()),
        ] {
            self.addresses
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(i64::from(v));
        }
        self.prefixes.set(i64::from(t.prefixes));
        self.secondary_ips.set(i64::from(t.secondary_ips));
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

    /// Whether the endpoint failed to delegate an IPv6 /80.
    pub fn ipv6_unsupported(&self, unsupported: bool) {
        self.ipv6_unsupported.set(i64::from(unsupported));
    }

    /// One checkpoint write.
    pub fn checkpoint_write(&self, took: Duration) {
        self.checkpoint_latency.observe(took.as_secs_f64());
    }

    /// A torn log tail discarded at start-up.
    pub fn torn_tail(&self, bytes: u64) {
        self.torn_tail.inc_by(bytes);
    }

    /// Allocations stranded on load or resync.
    pub fn stranded(&self, n: u64) {
        self.stranded_total.inc_by(n);
    }

    /// Leaked ENIs deleted.
    pub fn leaked_deleted(&self, n: u64) {
        self.leaked_enis_deleted.inc_by(n);
    }

    /// One repair of the node's data plane.
    pub fn host_repair(&self, object: &str, action: &str) {
        self.host_repairs
            .get_or_create(&RepairLabel {
                object: object.into(),
                action: action.into(),
            })
            .inc();
    }

    /// One failed attempt to program the node.
    pub fn host_error(&self) {
        self.host_errors.inc();
    }

    /// ENIs whose link is late.
    pub fn missing_links(&self, n: usize) {
        self.missing_links.set(n as i64);
    }
}
