//! Scenario files: a VPC, subnets, reservations, instances, throttling, latency and faults, set up
//! in one step. JSON; every field is checked and an error names the field.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::actions::ACTIONS;
use super::addr::ReservationKind;
use super::control::{Control, ErrorRateSpec, FaultSpec};
use super::model::{Model, Tags};
use crate::core::config::parse_duration;
use crate::core::instance_types;
use crate::ec2::Action;

/// The embedded default: one VPC, one subnet, one m5.large named `node`.
pub const DEFAULT_SCENARIO: &str = include_str!("default-scenario.json");

/// A scenario that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scenario {source_name}: {field}: {why}")]
pub struct ScenarioError {
    /// The file (or "default").
    pub source_name: String,
    /// The field's path, e.g. `vpcs[0].subnets[1].cidr`.
    pub field: String,
    /// What is wrong.
    pub why: String,
}

/// A scenario file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Region name.
    #[serde(default = "default_region")]
    pub region: String,
    /// VPCs with their subnets.
    #[serde(default)]
    pub vpcs: Vec<VpcSpec>,
    /// Instances.
    #[serde(default)]
    pub instances: Vec<InstanceSpec>,
    /// Throttling.
    #[serde(default)]
    pub throttling: ThrottlingSpec,
    /// Latency model.
    #[serde(default)]
    pub latency: LatencySpec,
    /// Faults armed at start.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// Error rates.
    #[serde(default)]
    pub error_rates: Vec<ErrorRateSpec>,
    /// The instance (by name) whose metadata IMDS serves; default the first.
    #[serde(default)]
    pub imds_instance: Option<String>,
    /// Seed of the error-rate generator.
    #[serde(default)]
    pub seed: u64,
    /// The emulated VPC data plane's settings (used with `--dataplane`).
    #[serde(default)]
    pub dataplane: super::vpc::DataplaneSpec,
    /// How EC2 picks addresses nobody named: `lowest` (default) or `scattered`.
    #[serde(default)]
    pub addresses: super::addr::AddressChoice,
    /// Other accounts: access key id → 12-digit account id. A request signed with one of these
    /// keys acts in that account; any other key acts in the default account (123456789012).
    #[serde(default)]
    pub accounts: BTreeMap<String, String>,
}

fn default_region() -> String {
    "us-west-2".into()
}

/// A VPC.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpcSpec {
    /// Its name (the `Name` tag).
    #[serde(default)]
    pub name: Option<String>,
    /// Its CIDR, e.g. `10.0.0.0/16`.
    pub cidr: String,
    /// Secondary IPv4 CIDRs (AssociateVpcCidrBlock).
    #[serde(default)]
    pub secondary_cidrs: Vec<String>,
    /// The account that owns it (default: the default account).
    #[serde(default)]
    pub account: Option<String>,
    /// An Amazon-provided IPv6 /56 too (`AmazonProvidedIpv6CidrBlock`).
    #[serde(default)]
    pub ipv6: bool,
    /// Its subnets.
    #[serde(default)]
    pub subnets: Vec<SubnetSpec>,
}

/// A subnet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetSpec {
    /// Name other fields refer to (also its `Name` tag).
    pub name: String,
    /// Its CIDR.
    pub cidr: String,
    /// Availability zone; default the region's `a`.
    #[serde(default)]
    pub az: Option<String>,
    /// CIDR reservations.
    #[serde(default)]
    pub reservations: Vec<ReservationSpec>,
    /// Scatter used addresses so that no /28 is free.
    #[serde(default)]
    pub fragment: bool,
    /// An IPv6 /64 too: the n-th /64 of the VPC's /56 for the VPC's n-th subnet (the VPC
    /// needs `ipv6`).
    #[serde(default)]
    pub ipv6: bool,
    /// Unattached ENIs holding named addresses and prefixes (what other tenants of a subnet
    /// hold: load balancers, endpoints, other clusters' nodes).
    #[serde(default)]
    pub enis: Vec<EniSpec>,
}

/// An ENI made with the subnet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EniSpec {
    /// Its addresses: the first is its primary, the rest secondary.
    pub addresses: Vec<String>,
    /// Its /28 prefixes.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Its description.
    #[serde(default)]
    pub description: String,
}

/// A subnet CIDR reservation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationSpec {
    /// The range.
    pub cidr: String,
    /// `prefix` or `explicit`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// An instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Name (also its `Name` tag).
    pub name: String,
    /// Instance type, e.g. `m5.large`.
    #[serde(rename = "type")]
    pub itype: String,
    /// Subnet name.
    pub subnet: String,
    /// Security groups; default the VPC's default group.
    #[serde(default)]
    pub security_groups: Vec<String>,
}

/// Throttling.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottlingSpec {
    /// EC2's token buckets on.
    #[serde(default)]
    pub enabled: bool,
    /// Mock time per real time (refills and delays run this much faster).
    #[serde(default = "one")]
    pub time_scale: f64,
}

impl Default for ThrottlingSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            time_scale: 1.0,
        }
    }
}

fn one() -> f64 {
    1.0
}

/// Latency model: durations like `200ms`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencySpec {
    /// Delay before answering, per action.
    #[serde(default)]
    pub actions: BTreeMap<String, String>,
    /// How long a new attachment shows `attaching`.
    #[serde(default)]
    pub attach: Option<String>,
}

impl LatencySpec {
    /// The model of EC2 as seen in practice (../shared/reference/ec2.md): Assign well under a
    /// second, Create + Attach until usable a few seconds.
    pub fn realistic() -> Self {
        let mut actions = BTreeMap::new();
        for (a, d) in [
            ("AssignPrivateIpAddresses", "300ms"),
            ("UnassignPrivateIpAddresses", "200ms"),
            ("CreateNetworkInterface", "800ms"),
            ("AttachNetworkInterface", "500ms"),
            ("ModifyNetworkInterfaceAttribute", "150ms"),
            ("DeleteNetworkInterface", "300ms"),
            ("DetachNetworkInterface", "300ms"),
            ("DescribeNetworkInterfaces", "100ms"),
            ("DescribeInstances", "100ms"),
            ("DescribeInstanceTypes", "100ms"),
            ("DescribeSubnets", "80ms"),
            ("CreateTags", "100ms"),
        ] {
            actions.insert(a.to_owned(), d.to_owned());
        }
        Self {
            actions,
            attach: Some("2s".into()),
        }
    }
}

/// A built scenario: the model, the controls, and the ids behind the names.
pub struct Built {
    /// EC2 state.
    pub model: Model,
    /// Throttling, faults, latency.
    pub control: Control,
    /// Name → id, for subnets, VPCs and instances.
    pub names: BTreeMap<String, String>,
    /// The instance IMDS answers for.
    pub imds_instance: Option<String>,
}

impl Scenario {
    /// Parses scenario JSON; `source_name` is only for messages.
    pub fn parse(json: &str, source_name: &str) -> Result<Self, ScenarioError> {
        let de = &mut serde_json::Deserializer::from_str(json);
        serde_path_to_error::deserialize(de).map_err(|e| ScenarioError {
            source_name: source_name.to_owned(),
            field: match e.path().to_string() {
                p if p == "." => "(top level)".into(),
                p => p,
            },
            why: e.inner().to_string(),
        })
    }

    /// The embedded default scenario.
    pub fn default_scenario() -> Self {
        Self::parse(DEFAULT_SCENARIO, "default").expect("the embedded scenario is valid")
    }

    /// Builds the model. Every reference and value is checked; errors name the field.
    pub fn build(&self, source_name: &str) -> Result<Built, ScenarioError> {
        let err = |field: String, why: String| ScenarioError {
            source_name: source_name.to_owned(),
            field,
            why,
        };
        let cidr = |field: String, v: &str| -> Result<Ipv4Net, ScenarioError> {
            v.parse::<Ipv4Net>()
                .map_err(|_| err(field, format!("{v:?} is not an IPv4 CIDR like 10.0.0.0/16")))
        };
        let dur = |field: String, v: &str| -> Result<Duration, ScenarioError> {
            let d = parse_duration("latency", v).map_err(|e| err(field.clone(), e.why))?;
            if d > crate::mock::server::MAX_MOCK_DELAY {
                return Err(err(field, "longer than the mock allows (1h)".into()));
            }
            Ok(d)
        };
        let action = |field: String, a: &str| -> Result<Action, ScenarioError> {
            match a.parse::<Action>() {
                Ok(a) if ACTIONS.contains(&a) => Ok(a),
                _ => Err(err(
                    field,
                    format!(
                        "{a:?} is not an action the mock implements ({})",
                        ACTIONS
                            .iter()
                            .map(|a| a.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        };
        let mut model = Model::new(&self.region);
        model.set_address_choice(self.addresses, self.seed);
        let mut control = Control::new(self.seed);
        let mut names = BTreeMap::new();
        for (i, v) in self.vpcs.iter().enumerate() {
            let net = cidr(format!("vpcs[{i}].cidr"), &v.cidr)?;
            let mut tags = Tags::new();
            if let Some(n) = &v.name {
                tags.insert("Name".into(), n.clone());
            }
            let owner = match &v.account {
                Some(a) if a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()) => a.clone(),
                Some(a) => {
                    return Err(err(
                        format!("vpcs[{i}].account"),
                        format!("{a:?} is not a 12-digit account id"),
                    ));
                }
                None => model.account.clone(),
            };
            let vpc = model
                .create_vpc_for(&owner, net, tags)
                .map_err(|e| err(format!("vpcs[{i}].cidr"), e.message))?;
            for (k, c) in v.secondary_cidrs.iter().enumerate() {
                let f = format!("vpcs[{i}].secondary_cidrs[{k}]");
                let net = cidr(f.clone(), c)?;
                model
                    .associate_vpc_cidr(&vpc, net)
                    .map_err(|e| err(f, e.message))?;
            }
            if let Some(n) = &v.name {
                names.insert(n.clone(), vpc.clone());
            }
            let vpc6 = if v.ipv6 {
                Some(
                    model
                        .associate_vpc_ipv6(&vpc)
                        .map_err(|e| err(format!("vpcs[{i}].ipv6"), e.message))?
                        .1,
                )
            } else {
                None
            };
            for (j, s) in v.subnets.iter().enumerate() {
                let f = |k: &str| format!("vpcs[{i}].subnets[{j}].{k}");
                if names.contains_key(&s.name) {
                    return Err(err(f("name"), format!("{:?} is used twice", s.name)));
                }
                let net = cidr(f("cidr"), &s.cidr)?;
                let tags = Tags::from([("Name".to_owned(), s.name.clone())]);
                let subnet = model
                    .create_subnet(&vpc, net, s.az.clone(), tags)
                    .map_err(|e| err(f("cidr"), e.message))?;
                for (k, r) in s.reservations.iter().enumerate() {
                    let rf = |x: &str| format!("vpcs[{i}].subnets[{j}].reservations[{k}].{x}");
                    let kind = match r.kind.as_str() {
                        "prefix" => ReservationKind::Prefix,
                        "explicit" => ReservationKind::Explicit,
                        other => {
                            return Err(err(
                                rf("type"),
                                format!("{other:?} is not prefix or explicit"),
                            ));
                        }
                    };
                    let net = cidr(rf("cidr"), &r.cidr)?;
                    model
                        .create_reservation(&subnet, net, kind, r.description.clone())
                        .map_err(|e| err(rf("cidr"), e.message))?;
                }
                for (k, e) in s.enis.iter().enumerate() {
                    let ef = |x: &str| format!("vpcs[{i}].subnets[{j}].enis[{k}].{x}");
                    let mut addrs = Vec::new();
                    for a in &e.addresses {
                        addrs.push(a.parse::<std::net::Ipv4Addr>().map_err(|_| {
                            err(ef("addresses"), format!("{a:?} is not an IPv4 address"))
                        })?);
                    }
                    let Some((&primary, secondary)) = addrs.split_first() else {
                        return Err(err(ef("addresses"), "give at least the primary".into()));
                    };
                    let req = super::model::IpRequest {
                        ips: secondary.to_vec(),
                        ..Default::default()
                    };
                    let eni = model
                        .create_eni(
                            &subnet,
                            vec![],
                            e.description.clone(),
                            Some(primary),
                            req,
                            Tags::new(),
                        )
                        .map_err(|x| err(ef("addresses"), x.message))?;
                    if !e.prefixes.is_empty() {
                        let req = super::model::IpRequest {
                            prefixes: e.prefixes.clone(),
                            ..Default::default()
                        };
                        model
                            .assign(&eni, req)
                            .map_err(|x| err(ef("prefixes"), x.message))?;
                    }
                }
                if s.fragment {
                    model.fragment_subnet(&subnet).expect("subnet exists");
                }
                if s.ipv6 {
                    let Some(net) = vpc6 else {
                        return Err(err(
                            f("ipv6"),
                            format!("vpcs[{i}] has no IPv6 block: set its \"ipv6\": true"),
                        ));
                    };
                    let block = net
                        .subnets(64)
                        .ok()
                        .and_then(|mut it| it.nth(j))
                        .ok_or_else(|| err(f("ipv6"), "more subnets than /64s in a /56".into()))?;
                    model
                        .associate_subnet_ipv6(&subnet, block)
                        .map_err(|e| err(f("ipv6"), e.message))?;
                }
                names.insert(s.name.clone(), subnet);
            }
        }
        for (i, inst) in self.instances.iter().enumerate() {
            let f = |k: &str| format!("instances[{i}].{k}");
            if names.contains_key(&inst.name) {
                return Err(err(f("name"), format!("{:?} is used twice", inst.name)));
            }
            if instance_types::lookup(&inst.itype).is_none() {
                return Err(err(
                    f("type"),
                    format!("{:?} is not a known instance type", inst.itype),
                ));
            }
            let subnet = names
                .get(&inst.subnet)
                .filter(|id| id.starts_with("subnet-"))
                .ok_or_else(|| err(f("subnet"), format!("no subnet is named {:?}", inst.subnet)))?
                .clone();
            let id = model
                .run_instance(
                    &inst.itype,
                    &subnet,
                    inst.security_groups.clone(),
                    "ami-0123456789abcdef0".into(),
                    0,
                )
                .map_err(|e| err(f("subnet"), e.message))?;
            model
                .create_tags(
                    std::slice::from_ref(&id),
                    &Tags::from([("Name".to_owned(), inst.name.clone())]),
                )
                .expect("instance exists");
            names.insert(inst.name.clone(), id);
        }
        control.throttling = self.throttling.enabled;
        if !(self.throttling.time_scale > 0.0 && self.throttling.time_scale.is_finite()) {
            return Err(err(
                "throttling.time_scale".into(),
                "must be a positive number".into(),
            ));
        }
        control.time_scale = self.throttling.time_scale;
        for (a, d) in &self.latency.actions {
            let parsed = action(format!("latency.actions.{a}"), a)?;
            control
                .latency
                .insert(parsed, dur(format!("latency.actions.{a}"), d)?);
        }
        if let Some(d) = &self.latency.attach {
            let d = dur("latency.attach".into(), d)?;
            if d > crate::mock::server::MAX_MOCK_DELAY {
                return Err(err(
                    "latency.attach".into(),
                    "longer than the mock allows (1h)".into(),
                ));
            }
            model.attach_delay_ms = d.as_millis() as u64;
        }
        for (i, f) in self.faults.iter().enumerate() {
            action(format!("faults[{i}].action"), f.action.name())?;
            if f.code.is_empty() {
                return Err(err(
                    format!("faults[{i}].code"),
                    "must name an EC2 error code".into(),
                ));
            }
            control.add_fault(f.clone());
        }
        for (i, r) in self.error_rates.iter().enumerate() {
            action(format!("error_rates[{i}].action"), r.action.name())?;
            if !(0.0..=1.0).contains(&r.rate) {
                return Err(err(
                    format!("error_rates[{i}].rate"),
                    "must be from 0 to 1".into(),
                ));
            }
            control.set_error_rate(r.clone());
        }
        let imds_instance = match &self.imds_instance {
            Some(n) => Some(
                names
                    .get(n)
                    .filter(|id| id.starts_with("i-"))
                    .ok_or_else(|| {
                        err(
                            "imds_instance".into(),
                            format!("no instance is named {n:?}"),
                        )
                    })?
                    .clone(),
            ),
            None => self.instances.first().map(|i| names[&i.name].clone()),
        };
        for (k, a) in &self.accounts {
            if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(
                    format!("accounts.{k}"),
                    format!("{a:?} is not a 12-digit account id"),
                ));
            }
            model.access_keys.insert(k.clone(), a.clone());
        }
        Ok(Built {
            model,
            control,
            names,
            imds_instance,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_scenario_builds_one_node() {
        let b = Scenario::default_scenario().build("default").unwrap();
        assert_eq!(b.model.instances.len(), 1);
        let node = &b.names["node"];
        assert_eq!(b.imds_instance.as_ref(), Some(node));
        assert_eq!(b.model.instances[node].itype.name, "m5.large");
    }

    #[test]
    fn ipv6_subnets_take_the_vpcs_slash64s_in_order() {
        let json = r#"{"vpcs":[{"cidr":"10.0.0.0/16","ipv6":true,"subnets":[
            {"name":"a","cidr":"10.0.0.0/24","ipv6":true},
            {"name":"b","cidr":"10.0.1.0/24"},
            {"name":"c","cidr":"10.0.2.0/24","ipv6":true}]}]}"#;
        let b = Scenario::parse(json, "t.json")
            .unwrap()
            .build("t.json")
            .unwrap();
        let vpc = b.model.vpcs.values().next().unwrap();
        let net = vpc.ipv6.as_ref().unwrap().1;
        assert_eq!(net.prefix_len(), 56);
        let six = |n: &str| {
            b.model.subnets[&b.names[n]]
                .ipv6
                .as_ref()
                .map(|(_, s)| s.net())
        };
        let all: Vec<_> = net.subnets(64).unwrap().collect();
        assert_eq!(six("a"), Some(all[0]));
        assert_eq!(six("b"), None);
        assert_eq!(six("c"), Some(all[2]));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"vpcs":[{"cidr":"10.0.0.0/16","subnets":[{"name":"a","cidr":"10.1.0.0/24"}]}]}"#,
                "vpcs[0].subnets[0].cidr",
            ),
            (r#"{"vpcs":[{"cidr":"banana"}]}"#, "vpcs[0].cidr"),
            (
                r#"{"vpcs":[{"cidr":"10.0.0.0/16","subnets":[{"name":"a","cidr":"10.0.0.0/24"}]}],"instances":[{"name":"n","type":"m5.huge","subnet":"a"}]}"#,
                "instances[0].type",
            ),
            (
                r#"{"instances":[{"name":"n","type":"m5.large","subnet":"zz"}]}"#,
                "instances[0].subnet",
            ),
            (
                r#"{"faults":[{"action":"Launch","fail_next":1,"code":"X"}]}"#,
                "faults[0].action",
            ),
            (
                r#"{"error_rates":[{"action":"CreateTags","rate":2,"code":"X"}]}"#,
                "error_rates[0].rate",
            ),
            (
                r#"{"latency":{"actions":{"CreateTags":"fast"}}}"#,
                "latency.actions.CreateTags",
            ),
            (
                r#"{"throttling":{"enabled":true,"time_scale":0}}"#,
                "throttling.time_scale",
            ),
            (
                r#"{"vpcs":[{"cidr":"10.0.0.0/16","subnets":[{"name":"a","cidr":"10.0.0.0/24","ipv6":true}]}]}"#,
                "vpcs[0].subnets[0].ipv6",
            ),
        ];
        for (json, field) in cases {
            let e = Scenario::parse(json, "t.json")
                .and_then(|s| s.build("t.json").map(|_| ()))
                .unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
            assert!(e.to_string().starts_with("scenario t.json: "));
        }
        let e = Scenario::parse(r#"{"vpcs":[{"cidr":"10.0.0.0/16","subnet":[]}]}"#, "t.json")
            .unwrap_err();
        assert!(e.field.starts_with("vpcs[0]"), "{e}");
        assert!(e.why.contains("unknown field"), "{e}");
    }
}
