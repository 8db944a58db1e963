//! Simulation profiles: the fleet, the workload phases and the policies to compare, as JSON
//! files (`prefixd simulate --profile FILE`) or built in (`--profile churn`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::config::parse_duration;

pub use crate::core::policy::{AgentKind, PolicySpec};

/// A workload phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Phase {
    /// Every node gets `pods_per_node` more pods at once (a deployment scale-up); they live
    /// until the end.
    ScaleUp {
        /// When, e.g. `2m`.
        at: String,
        /// Pods added on each node.
        pods_per_node: u32,
    },
    /// Every node runs `pods_per_node` pods, each replaced when it ends; lifetimes are
    /// exponential with mean `mean_lifetime`. Ends at `until`.
    Churn {
        /// Start.
        at: String,
        /// End.
        until: String,
        /// Pods kept on each node.
        pods_per_node: u32,
        /// Mean pod lifetime.
        mean_lifetime: String,
    },
    /// `nodes` nodes are drained: their pods are deleted and as many are created on the
    /// other nodes, round robin.
    Drain {
        /// When.
        at: String,
        /// Nodes drained (the last ones).
        nodes: u32,
    },
}

impl Phase {
    /// Its start.
    pub fn at(&self) -> &str {
        match self {
            Self::ScaleUp { at, .. } | Self::Churn { at, .. } | Self::Drain { at, .. } => at,
        }
    }

    /// Its kind's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ScaleUp { .. } => "scale_up",
            Self::Churn { .. } => "churn",
            Self::Drain { .. } => "drain",
        }
    }
}

fn d_instance_type() -> String {
    "m5.large".into()
}
fn d_subnet() -> String {
    "10.0.0.0/16".into()
}
fn d_boot() -> String {
    "60s".into()
}
fn d_true() -> bool {
    true
}

/// A simulation: fleet, EC2 models, workload, policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Virtual nodes.
    pub nodes: u32,
    /// Their instance type.
    #[serde(default = "d_instance_type")]
    pub instance_type: String,
    /// The one subnet (a /16 at most).
    #[serde(default = "d_subnet")]
    pub subnet_cidr: String,
    /// Simulated time.
    pub duration: String,
    /// Seed: same seed, same numbers.
    #[serde(default)]
    pub seed: u64,
    /// Agents start spread evenly over this window (boot); phases should start after it.
    #[serde(default = "d_boot")]
    pub boot_spread: String,
    /// EC2's per-action token buckets.
    #[serde(default = "d_true")]
    pub throttling: bool,
    /// The mock's realistic latency model (calls take 80 ms to 800 ms, attachments 2 s).
    #[serde(default = "d_true")]
    pub latency: bool,
    /// Fragment the subnet so that no /28 is free (InsufficientCidrBlocks).
    #[serde(default)]
    pub fragment: bool,
    /// A mock EC2 scenario (the file `prefixd mock-ec2 --scenario` takes; relative to the
    /// profile's directory) whose account the fleet joins, with what other tenants already
    /// hold; `subnet` names the subnet the nodes launch in. `subnet_cidr` is then not used.
    #[serde(default)]
    pub scenario: Option<String>,
    /// The scenario's subnet (by name) the nodes launch in.
    #[serde(default)]
    pub subnet: Option<String>,
    /// Launch each node's instance when it boots (its primary address taken then, as an
    /// autoscaler's launches do), instead of all before the run.
    #[serde(default)]
    pub launch_at_boot: bool,
    /// How EC2 picks addresses nobody named: `lowest` or `scattered` (default: the scenario's,
    /// else lowest).
    #[serde(default)]
    pub addresses: Option<crate::mock::addr::AddressChoice>,
    /// Where the profile was read from (scenario paths are relative to it).
    #[serde(skip)]
    pub source_dir: Option<std::path::PathBuf>,
    /// The workload.
    pub phases: Vec<Phase>,
    /// Policies compared on the same workload.
    pub policies: Vec<PolicySpec>,
}

/// Why a profile cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Not JSON of the profile's shape.
    #[error(
        "{path}: not a simulation profile: {source} (see `prefixd simulate --list` and README)"
    )]
    Json {
        /// The file.
        path: String,
        /// Where and why.
        source: serde_path_to_error::Error<serde_json::Error>,
    },
    /// A value is out of range.
    #[error("profile {profile}: {what}")]
    Invalid {
        /// The profile.
        profile: String,
        /// What is wrong and what to do.
        what: String,
    },
    /// Not a built-in name and not a readable file.
    #[error(
        "no built-in profile {0:?} and no such file; built in: churn, burst, drain, fleet, targets, fragmented"
    )]
    Unknown(String),
}

const BUILTIN: &[(&str, &str)] = &[
    ("churn", include_str!("profiles/churn.json")),
    ("burst", include_str!("profiles/burst.json")),
    ("drain", include_str!("profiles/drain.json")),
    ("fleet", include_str!("profiles/fleet.json")),
    ("targets", include_str!("profiles/targets.json")),
    ("fragmented", include_str!("profiles/fragmented.json")),
];

/// Built-in profile names and descriptions.
pub fn builtins() -> Vec<(&'static str, String)> {
    BUILTIN
        .iter()
        .map(|(n, j)| {
            (
                *n,
                serde_json::from_str::<Profile>(j)
                    .map(|p| p.description)
                    .unwrap_or_default(),
            )
        })
        .collect()
}

impl Profile {
    /// A built-in profile by name, else a JSON file at that path.
    pub fn load(name_or_path: &str) -> Result<Self, ProfileError> {
        let (path, text) = match BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            Some((n, j)) => (format!("built-in profile {n}"), (*j).to_owned()),
            None => match std::fs::read_to_string(name_or_path) {
                Ok(t) => (name_or_path.to_owned(), t),
                Err(_) => return Err(ProfileError::Unknown(name_or_path.to_owned())),
            },
        };
        let mut p = Self::parse(&path, &text)?;
        if !BUILTIN.iter().any(|(n, _)| *n == name_or_path) {
            p.source_dir = std::path::Path::new(name_or_path)
                .parent()
                .map(|d| d.to_path_buf());
        }
        Ok(p)
    }

    /// The scenario file, resolved against the profile's directory.
    pub fn scenario_path(&self) -> Option<std::path::PathBuf> {
        let s = std::path::Path::new(self.scenario.as_ref()?);
        Some(match &self.source_dir {
            Some(d) if s.is_relative() => d.join(s),
            _ => s.to_path_buf(),
        })
    }

    /// Parses and validates a profile.
    pub fn parse(path: &str, text: &str) -> Result<Self, ProfileError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let p: Profile =
            serde_path_to_error::deserialize(de).map_err(|source| ProfileError::Json {
                path: path.to_owned(),
                source,
            })?;
        p.validate()?;
        Ok(p)
    }

    fn invalid(&self, what: impl Into<String>) -> ProfileError {
        ProfileError::Invalid {
            profile: self.name.clone(),
            what: what.into(),
        }
    }

    fn dur(&self, field: &str, v: &str) -> Result<Duration, ProfileError> {
        parse_duration("duration", v).map_err(|_| {
            self.invalid(format!(
                "{field} {v:?} is not a duration; write e.g. 90s, 5m or 500ms"
            ))
        })
    }

    /// Checks every value, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), ProfileError> {
        if self.nodes == 0 || self.nodes > 10_000 {
            return Err(self.invalid(format!("nodes is {}; set 1 to 10000", self.nodes)));
        }
        if crate::core::instance_types::lookup(&self.instance_type).is_none() {
            return Err(self.invalid(format!(
                "instance_type {:?} is not in the instance-type table (data/instance-types.csv)",
                self.instance_type
            )));
        }
        let net: ipnet::Ipv4Net = self.subnet_cidr.parse().map_err(|_| {
            self.invalid(format!(
                "subnet_cidr {:?} is not an IPv4 CIDR such as 10.0.0.0/16",
                self.subnet_cidr
            ))
        })?;
        if !(16..=28).contains(&net.prefix_len()) {
            return Err(self.invalid(format!(
                "subnet_cidr {} must be a /16 to a /28 (EC2's range)",
                self.subnet_cidr
            )));
        }
        if self.scenario.is_some() != self.subnet.is_some() {
            return Err(self.invalid(
                "scenario and subnet go together: the scenario's account, and the subnet (by \
                 name) in it where the nodes launch",
            ));
        }
        let duration = self.dur("duration", &self.duration)?;
        if duration.is_zero() || duration > Duration::from_secs(24 * 3600) {
            return Err(self.invalid("duration must be above 0 and at most 24h"));
        }
        self.dur("boot_spread", &self.boot_spread)?;
        for (i, ph) in self.phases.iter().enumerate() {
            let at = self.dur(&format!("phases[{i}].at"), ph.at())?;
            if at >= duration {
                return Err(self.invalid(format!(
                    "phases[{i}] starts at {} but the run lasts {}",
                    ph.at(),
                    self.duration
                )));
            }
            match ph {
                Phase::Churn {
                    until,
                    mean_lifetime,
                    ..
                } => {
                    let u = self.dur(&format!("phases[{i}].until"), until)?;
                    if u <= at {
                        return Err(self.invalid(format!("phases[{i}].until must be after at")));
                    }
                    if self
                        .dur(&format!("phases[{i}].mean_lifetime"), mean_lifetime)?
                        .is_zero()
                    {
                        return Err(
                            self.invalid(format!("phases[{i}].mean_lifetime must be above 0"))
                        );
                    }
                }
                Phase::Drain { nodes, .. } if *nodes >= self.nodes => {
                    return Err(self.invalid(format!(
                        "phases[{i}] drains {nodes} of {} nodes; leave at least one",
                        self.nodes
                    )));
                }
                _ => {}
            }
        }
        if self.policies.is_empty() {
            return Err(self.invalid("no policies: add at least one to compare"));
        }
        Ok(())
    }

    /// A duration field known to be valid.
    pub fn duration_of(&self, v: &str) -> Duration {
        parse_duration("duration", v).expect("validated")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_validate() {
        for (name, _) in BUILTIN {
            let p = Profile::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!p.description.is_empty(), "{name} has a description");
        }
    }

    #[test]
    fn bad_profiles_name_the_field() {
        let e = Profile::parse(
            "x.json",
            r#"{"name":"x","nodes":1,"duration":"1m","phases":[],"policies":[],"bogus":1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Profile::parse("x.json", r#"{"name":"x","nodes":1,"duration":"1m","phases":[{"kind":"scale_up","at":"2m","pods_per_node":1}],"policies":[{"agent":"prefixd"}]}"#).unwrap_err();
        assert!(e.to_string().contains("phases[0] starts at 2m"), "{e}");
        let e = Profile::parse("x.json", r#"{"name":"x","nodes":1,"duration":"soon","phases":[],"policies":[{"agent":"prefixd"}]}"#).unwrap_err();
        assert!(e.to_string().contains("duration \"soon\""), "{e}");
        let e = Profile::parse("x.json", r#"{"name":"x","nodes":1,"instance_type":"m9.huge","duration":"1m","phases":[],"policies":[{"agent":"prefixd"}]}"#).unwrap_err();
        assert!(e.to_string().contains("m9.huge"), "{e}");
        assert!(matches!(
            Profile::load("no-such"),
            Err(ProfileError::Unknown(_))
        ));
    }
}
