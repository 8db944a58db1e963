//! Warm-pool settings: the VPC CNI's env var names, their defaults, and one parser that every
//! entry point (env vars, flags, tests) goes through. A bad value stops start-up with a message
//! naming the variable; nothing is replaced by a default in silence.

use std::time::Duration;

use serde::Serialize;

/// Env var names, as the VPC CNI spells them.
pub mod env {
    /// Wholly free prefixes to keep (prefix mode, when WARM_IP_TARGET is unset).
    pub const WARM_PREFIX_TARGET: &str = "WARM_PREFIX_TARGET";
    /// Free addresses to keep; 0 = unset.
    pub const WARM_IP_TARGET: &str = "WARM_IP_TARGET";
    /// Floor on the total addresses; 0 = unset.
    pub const MINIMUM_IP_TARGET: &str = "MINIMUM_IP_TARGET";
    /// ENIs' worth of free addresses to keep (secondary-IP mode).
    pub const WARM_ENI_TARGET: &str = "WARM_ENI_TARGET";
    /// Cap on ENIs; -1 = the instance type's limit.
    pub const MAX_ENI: &str = "MAX_ENI";
    /// Prefix mode (true) or secondary-IP mode (false).
    pub const ENABLE_PREFIX_DELEGATION: &str = "ENABLE_PREFIX_DELEGATION";
    /// How long a released address waits before reuse.
    pub const IP_COOLDOWN_PERIOD: &str = "IP_COOLDOWN_PERIOD";
}

/// Defaults, as text (they are also clap's `default_value`s, shown in `--help`).
pub mod defaults {
    /// WARM_PREFIX_TARGET.
    pub const WARM_PREFIX_TARGET: &str = "1";
    /// WARM_IP_TARGET (unset).
    pub const WARM_IP_TARGET: &str = "0";
    /// MINIMUM_IP_TARGET (unset).
    pub const MINIMUM_IP_TARGET: &str = "0";
    /// WARM_ENI_TARGET.
    pub const WARM_ENI_TARGET: &str = "1";
    /// MAX_ENI (the instance limit).
    pub const MAX_ENI: &str = "-1";
    /// ENABLE_PREFIX_DELEGATION: prefixd is a prefix-delegation manager.
    pub const ENABLE_PREFIX_DELEGATION: &str = "true";
    /// IP_COOLDOWN_PERIOD.
    pub const IP_COOLDOWN_PERIOD: &str = "30s";
}

/// Upper bounds: far above any instance's capacity, low enough to catch a typo.
const MAX_WARM_PREFIXES: u32 = 4_096;
const MAX_ADDRESSES: u32 = 65_536;
const MAX_ENIS: u32 = 128;
const MAX_COOLDOWN: Duration = Duration::from_secs(3_600);

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is invalid: {why}")]
pub struct ConfigError {
    /// The env var (or flag) name.
    pub var: &'static str,
    /// What it was set to.
    pub value: String,
    /// What is wrong and what is accepted.
    pub why: String,
}

/// How the pool grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// /28 prefixes (ENABLE_PREFIX_DELEGATION=true).
    Prefix,
    /// /32 secondary addresses (prefix delegation off, or the fallback).
    SecondaryIp,
}

/// The warm targets, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Targets {
    /// WARM_PREFIX_TARGET.
    pub warm_prefix_target: u32,
    /// WARM_IP_TARGET; 0 = unset.
    pub warm_ip_target: u32,
    /// MINIMUM_IP_TARGET; 0 = unset.
    pub minimum_ip_target: u32,
    /// WARM_ENI_TARGET.
    pub warm_eni_target: u32,
    /// MAX_ENI when set (≥ 1).
    pub max_eni: Option<u32>,
}

impl Default for Targets {
    fn default() -> Self {
        Self {
            warm_prefix_target: 1,
            warm_ip_target: 0,
            minimum_ip_target: 0,
            warm_eni_target: 1,
            max_eni: None,
        }
    }
}

/// Everything the pool needs from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolConfig {
    /// The warm targets.
    pub targets: Targets,
    /// ENABLE_PREFIX_DELEGATION.
    pub prefix_delegation: bool,
    /// IP_COOLDOWN_PERIOD.
    #[serde(serialize_with = "ser_duration")]
    pub cooldown: Duration,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

impl PoolConfig {
    /// The mode the planner starts in.
    pub fn mode(&self) -> Mode {
        if self.prefix_delegation {
            Mode::Prefix
        } else {
            Mode::SecondaryIp
        }
    }

    /// Reads every pool setting through `lookup` (the process environment, clap's values, or a
    /// test's map). Absent names take their defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |var: &'static str, default: &str| {
            let v = lookup(var).unwrap_or_else(|| default.to_owned());
            (var, v)
        };
        let (var, v) = get(env::WARM_PREFIX_TARGET, defaults::WARM_PREFIX_TARGET);
        let warm_prefix_target = parse_count(var, &v, MAX_WARM_PREFIXES)?;
        let (var, v) = get(env::WARM_IP_TARGET, defaults::WARM_IP_TARGET);
        let warm_ip_target = parse_count(var, &v, MAX_ADDRESSES)?;
        let (var, v) = get(env::MINIMUM_IP_TARGET, defaults::MINIMUM_IP_TARGET);
        let minimum_ip_target = parse_count(var, &v, MAX_ADDRESSES)?;
        let (var, v) = get(env::WARM_ENI_TARGET, defaults::WARM_ENI_TARGET);
        let warm_eni_target = parse_count(var, &v, MAX_ENIS)?;
        let (var, v) = get(env::MAX_ENI, defaults::MAX_ENI);
        let max_eni = parse_max_eni(var, &v)?;
        let (var, v) = get(
            env::ENABLE_PREFIX_DELEGATION,
            defaults::ENABLE_PREFIX_DELEGATION,
        );
        let prefix_delegation = parse_bool(var, &v)?;
        let (var, v) = get(env::IP_COOLDOWN_PERIOD, defaults::IP_COOLDOWN_PERIOD);
        let cooldown = parse_duration(var, &v)?;
        if cooldown > MAX_COOLDOWN {
            return Err(ConfigError {
                var,
                value: v,
                why: "must be at most 1h".into(),
            });
        }
        Ok(Self {
            targets: Targets {
                warm_prefix_target,
                warm_ip_target,
                minimum_ip_target,
                warm_eni_target,
                max_eni,
            },
            prefix_delegation,
            cooldown,
        })
    }
}

/// A whole number from 0 to `max`.
pub fn parse_count(var: &'static str, value: &str, max: u32) -> Result<u32, ConfigError> {
    let err = |why: String| ConfigError {
        var,
        value: value.to_owned(),
        why,
    };
    let t = value.trim();
    if t.is_empty() {
        return Err(err(format!(
            "it is empty; set a whole number from 0 to {max}, or remove it for the default"
        )));
    }
    if t.starts_with('-') && t[1..].bytes().all(|b| b.is_ascii_digit()) && t.len() > 1 {
        return Err(err(format!(
            "it is negative; set a whole number from 0 to {max}"
        )));
    }
    let n: u64 = t
        .parse()
        .map_err(|_| err(format!("not a whole number; set one from 0 to {max}")))?;
    if n > u64::from(max) {
        return Err(err(format!(
            "out of range; set a whole number from 0 to {max}"
        )));
    }
    Ok(n as u32)
}

fn parse_max_eni(var: &'static str, value: &str) -> Result<Option<u32>, ConfigError> {
    if value.trim() == "-1" {
        return Ok(None);
    }
    let n = parse_count(var, value, MAX_ENIS).map_err(|mut e| {
        e.why = format!("set -1 for the instance type's limit, or 1 to {MAX_ENIS}");
        e
    })?;
    if n == 0 {
        return Err(ConfigError {
            var,
            value: value.to_owned(),
            why: format!(
                "0 ENIs leaves no primary ENI; set -1 for the instance type's limit, or 1 to {MAX_ENIS}"
            ),
        });
    }
    Ok(Some(n))
}

/// `true` or `false` (any case).
pub fn parse_bool(var: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ConfigError {
            var,
            value: value.to_owned(),
            why: "set true or false".into(),
        }),
    }
}

/// A duration: `500ms`, `30s`, `2m`, `1h`, or bare seconds (`30`).
pub fn parse_duration(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let err = || ConfigError {
        var,
        value: value.to_owned(),
        why: "not a duration; write it as 500ms, 30s, 2m, 1h or bare seconds".into(),
    };
    let t = value.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(err());
    }
    let n: u64 = num.parse().map_err(|_| err())?;
    let ms = match unit {
        "" | "s" => n.checked_mul(1_000),
        "ms" => Some(n),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(err)?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<PoolConfig, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PoolConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.targets, Targets::default());
        assert!(c.prefix_delegation);
        assert_eq!(c.cooldown, Duration::from_secs(30));
        assert_eq!(c.mode(), Mode::Prefix);
    }

    #[test]
    fn values_are_read() {
        let c = cfg(&[
            ("WARM_PREFIX_TARGET", "0"),
            ("WARM_IP_TARGET", "5"),
            ("MINIMUM_IP_TARGET", "30"),
            ("WARM_ENI_TARGET", "2"),
            ("MAX_ENI", "2"),
            ("ENABLE_PREFIX_DELEGATION", "FALSE"),
            ("IP_COOLDOWN_PERIOD", "500ms"),
        ])
        .unwrap();
        assert_eq!(
            c.targets,
            Targets {
                warm_prefix_target: 0,
                warm_ip_target: 5,
                minimum_ip_target: 30,
                warm_eni_target: 2,
                max_eni: Some(2)
            }
        );
        assert_eq!(c.mode(), Mode::SecondaryIp);
        assert_eq!(c.cooldown, Duration::from_millis(500));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, val) in [
            ("WARM_PREFIX_TARGET", "-1"),
            ("WARM_PREFIX_TARGET", "one"),
            ("WARM_PREFIX_TARGET", ""),
            ("WARM_PREFIX_TARGET", "1.5"),
            ("WARM_IP_TARGET", "99999999999"),
            ("MINIMUM_IP_TARGET", "-3"),
            ("WARM_ENI_TARGET", "500"),
            ("MAX_ENI", "0"),
            ("MAX_ENI", "-2"),
            ("ENABLE_PREFIX_DELEGATION", "yes"),
            ("IP_COOLDOWN_PERIOD", "30x"),
            ("IP_COOLDOWN_PERIOD", "2h"),
            ("IP_COOLDOWN_PERIOD", "s"),
        ] {
            let e = cfg(&[(var, val)]).unwrap_err();
            assert_eq!(e.var, var, "{var}={val}");
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("{var}=")), "{msg}");
        }
        assert!(
            cfg(&[("WARM_PREFIX_TARGET", "-1")])
                .unwrap_err()
                .why
                .contains("negative")
        );
    }

    #[test]
    fn durations() {
        let d = |s| parse_duration("X", s).unwrap();
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("2m"), Duration::from_secs(120));
        assert_eq!(d("45"), Duration::from_secs(45));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert!(parse_duration("X", "").is_err());
        assert!(parse_duration("X", "-1s").is_err());
        assert!(parse_duration("X", "99999999999999999999s").is_err());
    }
}
