//! A policy: which agent, with which of its settings (`prefixd WARM_IP_TARGET=5`,
//! `vpc-cni WARM_PREFIX_TARGET=1`). The simulator's profiles and `--policy` flags and
//! `prefixd capacity --policy` write them the same way; the settings themselves are read by
//! the agent's own parser where they are used.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which agent runs a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentKind {
    /// prefixd's loop and planner (src/agent, src/core).
    Prefixd,
    /// The VPC CNI's ipamd policy (src/core/vpccni.rs).
    VpcCni,
}

impl AgentKind {
    /// The name in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prefixd => "prefixd",
            Self::VpcCni => "vpc-cni",
        }
    }
}

/// One policy: an agent and its env vars (the agent's names: WARM_PREFIX_TARGET, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The agent.
    pub agent: AgentKind,
    /// Settings, by env var name; unset ones take the agent's defaults.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl PolicySpec {
    /// `agent KEY=VALUE ...`, e.g. `prefixd WARM_IP_TARGET=5 MINIMUM_IP_TARGET=20`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut words = s.split_whitespace();
        let agent = match words.next() {
            Some("prefixd") => AgentKind::Prefixd,
            Some("vpc-cni") => AgentKind::VpcCni,
            other => {
                return Err(format!(
                    "policy {s:?}: starts with {other:?}; write `prefixd` or `vpc-cni`, then KEY=VALUE settings"
                ));
            }
        };
        let mut env = BTreeMap::new();
        for w in words {
            let (k, v) = w.split_once('=').ok_or_else(|| {
                format!("policy {s:?}: {w:?} is not KEY=VALUE (e.g. WARM_PREFIX_TARGET=1)")
            })?;
            env.insert(k.to_owned(), v.to_owned());
        }
        Ok(Self { agent, env })
    }

    /// `agent K=V ...` as the table shows it.
    pub fn label(&self) -> String {
        let mut s = self.agent.as_str().to_owned();
        for (k, v) in &self.env {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_strings() {
        let p = PolicySpec::parse("prefixd WARM_IP_TARGET=5 MINIMUM_IP_TARGET=20").unwrap();
        assert_eq!(p.agent, AgentKind::Prefixd);
        assert_eq!(p.env["WARM_IP_TARGET"], "5");
        assert_eq!(p.label(), "prefixd MINIMUM_IP_TARGET=20 WARM_IP_TARGET=5");
        assert!(
            PolicySpec::parse("calico X=1")
                .unwrap_err()
                .contains("calico")
        );
        assert!(
            PolicySpec::parse("vpc-cni WARM")
                .unwrap_err()
                .contains("KEY=VALUE")
        );
    }
}
