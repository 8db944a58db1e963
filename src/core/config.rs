//! Warm-pool settings: the VPC CNI's env var names, their defaults, and the one reader that
//! every entry point (the CLI, the demo, the simulator, tests) goes through
//! ([`PoolConfig::from_lookup`]). A bad value stops start-up with a message naming the variable.

use std::time::Duration;

use serde::Serialize;

pub use super::settings::{ConfigError, parse_bool, parse_count, parse_duration};
use super::settings::{Setting, Values, ser_duration};

/// WARM_PREFIX_TARGET.
pub const WARM_PREFIX_TARGET: Setting = Setting::new(
    "WARM_PREFIX_TARGET",
    "1",
    "wholly free /28 prefixes to keep (when WARM_IP_TARGET is 0)",
);
/// WARM_IP_TARGET.
pub const WARM_IP_TARGET: Setting =
    Setting::new("WARM_IP_TARGET", "0", "free addresses to keep (0 = unset)");
/// MINIMUM_IP_TARGET.
pub const MINIMUM_IP_TARGET: Setting = Setting::new(
    "MINIMUM_IP_TARGET",
    "0",
    "floor on addresses held (0 = unset); never stops other growth",
);
/// WARM_ENI_TARGET.
pub const WARM_ENI_TARGET: Setting = Setting::new(
    "WARM_ENI_TARGET",
    "1",
    "secondary-IP mode: ENIs' worth of free addresses",
);
/// MAX_ENI.
pub const MAX_ENI: Setting = Setting::new("MAX_ENI", "-1", "cap on ENIs (-1 = instance limit)");
/// ENABLE_PREFIX_DELEGATION: prefixd is a prefix-delegation manager.
pub const ENABLE_PREFIX_DELEGATION: Setting = Setting::new(
    "ENABLE_PREFIX_DELEGATION",
    "true",
    "/28 prefixes (true) or /32 secondary addresses (false)",
);
/// IP_COOLDOWN_PERIOD.
pub const IP_COOLDOWN_PERIOD: Setting = Setting::new(
    "IP_COOLDOWN_PERIOD",
    "30s",
    "released addresses wait this long before reuse",
);

/// The warm-pool settings.
pub const SETTINGS: &[Setting] = &[
    WARM_PREFIX_TARGET,
    WARM_IP_TARGET,
    MINIMUM_IP_TARGET,
    WARM_ENI_TARGET,
    MAX_ENI,
    ENABLE_PREFIX_DELEGATION,
    IP_COOLDOWN_PERIOD,
];

/// Upper bounds: far above any instance's capacity, low enough to catch a typo.
const MAX_WARM_PREFIXES: u32 = 4_096;
const MAX_ADDRESSES: u32 = 65_536;
const MAX_ENIS: u32 = 128;
const MAX_COOLDOWN: Duration = Duration::from_secs(3_600);

/// ENABLE_IPv4 (the VPC CNI's name).
pub const ENABLE_IPV4: Setting = Setting::new(
    "ENABLE_IPv4",
    "true",
    "pods get an IPv4 address from the /28 pool",
);
/// ENABLE_IPv6 (the VPC CNI's name).
pub const ENABLE_IPV6: Setting = Setting::new(
    "ENABLE_IPv6",
    "false",
    "pods get a /128 from the node's /80 (with ENABLE_IPv4 too: dual-stack pods)",
);

/// Which address families pods get: ENABLE_IPv4 and ENABLE_IPv6 (the VPC CNI's names; it
/// refuses both at once, prefixd gives dual-stack pods one address of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Families {
    /// ENABLE_IPv4: an address from the /28 pool.
    pub ipv4: bool,
    /// ENABLE_IPv6: a /128 from the node's /80.
    pub ipv6: bool,
}

impl Families {
    /// IPv4 only: the default.
    pub const V4: Self = Self {
        ipv4: true,
        ipv6: false,
    };
    /// IPv6 only, as EKS runs IPv6 clusters.
    pub const V6: Self = Self {
        ipv4: false,
        ipv6: true,
    };
    /// Both.
    pub const DUAL: Self = Self {
        ipv4: true,
        ipv6: true,
    };

    /// ENABLE_IPv4 and ENABLE_IPv6 from `v`; both off is refused.
    pub fn from_lookup(v: &Values) -> Result<Self, ConfigError> {
        let f = Self {
            ipv4: v.bool(&ENABLE_IPV4)?,
            ipv6: v.bool(&ENABLE_IPV6)?,
        };
        if !f.ipv4 && !f.ipv6 {
            return Err(ConfigError::new(
                ENABLE_IPV4.var,
                "false",
                "with ENABLE_IPv6=false too pods would get no address: enable one family or both",
            ));
        }
        Ok(f)
    }

    /// "ipv4", "ipv6" or "dual".
    pub fn as_str(self) -> &'static str {
        match (self.ipv4, self.ipv6) {
            (true, true) => "dual",
            (false, true) => "ipv6",
            _ => "ipv4",
        }
    }
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

impl PoolConfig {
    /// The mode the planner starts in.
    pub fn mode(&self) -> Mode {
        if self.prefix_delegation {
            Mode::Prefix
        } else {
            Mode::SecondaryIp
        }
    }

    /// Reads every pool setting from `v`; absent names take their defaults.
    pub fn from_lookup(v: &Values) -> Result<Self, ConfigError> {
        let cooldown = v.duration(&IP_COOLDOWN_PERIOD)?;
        if cooldown > MAX_COOLDOWN {
            return Err(ConfigError::new(
                IP_COOLDOWN_PERIOD.var,
                v.value(&IP_COOLDOWN_PERIOD).unwrap_or_default(),
                "must be at most 1h",
            ));
        }
        Ok(Self {
            targets: Targets {
                warm_prefix_target: v.count(&WARM_PREFIX_TARGET, MAX_WARM_PREFIXES)?,
                warm_ip_target: v.count(&WARM_IP_TARGET, MAX_ADDRESSES)?,
                minimum_ip_target: v.count(&MINIMUM_IP_TARGET, MAX_ADDRESSES)?,
                warm_eni_target: v.count(&WARM_ENI_TARGET, MAX_ENIS)?,
                max_eni: parse_max_eni(v.value(&MAX_ENI).unwrap_or_default())?,
            },
            prefix_delegation: v.bool(&ENABLE_PREFIX_DELEGATION)?,
            cooldown,
        })
    }
}

fn parse_max_eni(value: &str) -> Result<Option<u32>, ConfigError> {
    let var = MAX_ENI.var;
    if value.trim() == "-1" {
        return Ok(None);
    }
    let n = parse_count(var, value, MAX_ENIS).map_err(|mut e| {
        e.why = format!("set -1 for the instance type's limit, or 1 to {MAX_ENIS}");
        e
    })?;
    if n == 0 {
        return Err(ConfigError::new(
            var,
            value,
            format!(
                "0 ENIs leaves no primary ENI; set -1 for the instance type's limit, or 1 to {MAX_ENIS}"
            ),
        ));
    }
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<PoolConfig, ConfigError> {
        PoolConfig::from_lookup(&Values::from_pairs(
            pairs.iter().copied(),
            &[SETTINGS],
            "pool",
        )?)
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
}
