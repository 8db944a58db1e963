//! The operators' reports: `prefixd capacity` (how many more nodes fit in the cluster's subnets
//! under given warm targets, which subnet runs out first and when, and what a `prefix`
//! reservation would win) and `prefixd ranges` (every range the cluster can meet, where each
//! came from, and which collide — routed or not).
//!
//! Read-only: EC2 is read through [`crate::ec2::read::Ec2Read`] (its IAM policy is
//! deploy/iam-reports-policy.json). The arithmetic is pure and tested on its own:
//! [`subnet_map`] (the /28 map of a subnet), [`fit`] (a node's steady state under a policy, by
//! the agent's own planner or the VPC CNI's rule, and how many nodes fit), [`trend`] (the
//! consumption rate over earlier reports), [`overlap`] (the range inventory's collisions and
//! free candidates). [`capacity`] and [`ranges`] gather and render; [`picture`] draws the maps.
//!
//! Exit codes for CI: 0 clean, 1 findings, 2 could not read (EC2 refused or failed, bad input).

pub mod capacity;
pub mod fit;
pub mod overlap;
pub mod picture;
pub mod ranges;
pub mod select;
pub mod subnet_map;
pub mod table;
pub mod trend;

use serde::{Deserialize, Serialize};

use crate::ec2::{Ec2Error, ErrorClass};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Needs action: traffic will go wrong, or nodes cannot start.
    Error,
    /// Worth knowing before it bites.
    Warning,
}

impl Severity {
    /// The name in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
        }
    }
}

/// One finding of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// A stable name for machines (`no-free-28`, `overlap-routed`, `blackhole`...).
    pub kind: String,
    /// What and where, for people.
    pub message: String,
}

/// Exit code: nothing found.
pub const EXIT_CLEAN: u8 = 0;
/// Exit code: findings.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: the report could not be made.
pub const EXIT_UNREADABLE: u8 = 2;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// EC2 refused the call for lack of a permission.
    #[error(
        "EC2 refused {action} ({code}): the credentials lack the permission ec2:{action}; \
         deploy/iam-reports-policy.json grants every permission the reports need"
    )]
    Permission {
        /// The action.
        action: crate::ec2::Action,
        /// EC2's code.
        code: String,
    },
    /// EC2 throttled the call, after the SDK's retries.
    #[error(
        "EC2 throttled {action} ({code}) after 3 attempts: the account's other EC2 clients are \
         using its {action} budget; run the report again later"
    )]
    Throttled {
        /// The action.
        action: crate::ec2::Action,
        /// EC2's code.
        code: String,
    },
    /// Any other EC2 failure.
    #[error("{0}")]
    Ec2(Ec2Error),
    /// The input does not make sense (a subnet that does not exist, subnets of two VPCs...).
    #[error("{0}")]
    Input(String),
    /// A file could not be read or written.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What failed.
        why: String,
    },
}

impl From<Ec2Error> for ReportError {
    fn from(e: Ec2Error) -> Self {
        if e.code == "CredentialsNotLoaded" {
            return Self::Input(
                "no AWS credentials were found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, or run where an instance or pod role provides them"
                    .into(),
            );
        }
        match e.class {
            ErrorClass::Unauthorized => Self::Permission {
                action: e.action,
                code: e.code,
            },
            ErrorClass::Throttled => Self::Throttled {
                action: e.action,
                code: e.code,
            },
            _ => Self::Ec2(e),
        }
    }
}

/// The EKS default service range for a VPC with these IPv4 CIDRs (capacity.md): 172.20.0.0/16
/// when one of them lies in 10.0.0.0/8, else 10.100.0.0/16.
pub fn eks_default_service_range(vpc_cidrs: &[ipnet::Ipv4Net]) -> ipnet::Ipv4Net {
    let ten: ipnet::Ipv4Net = "10.0.0.0/8".parse().expect("valid");
    if vpc_cidrs.iter().any(|c| ten.contains(c)) {
        "172.20.0.0/16".parse().expect("valid")
    } else {
        "10.100.0.0/16".parse().expect("valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::Action;

    #[test]
    fn errors_name_the_permission() {
        let e: ReportError = Ec2Error::classified(
            Action::DescribeRouteTables,
            "UnauthorizedOperation",
            Some(403),
            "no",
        )
        .into();
        assert!(e.to_string().contains("ec2:DescribeRouteTables"), "{e}");
        let t: ReportError = Ec2Error::classified(
            Action::DescribeNetworkInterfaces,
            "RequestLimitExceeded",
            Some(503),
            "slow down",
        )
        .into();
        assert!(matches!(t, ReportError::Throttled { .. }), "{t}");
    }

    #[test]
    fn service_range_default_follows_eks() {
        let c = |s: &str| s.parse::<ipnet::Ipv4Net>().unwrap();
        assert_eq!(
            eks_default_service_range(&[c("10.1.0.0/16")]),
            c("172.20.0.0/16")
        );
        assert_eq!(
            eks_default_service_range(&[c("192.168.0.0/16"), c("100.64.0.0/16")]),
            c("10.100.0.0/16")
        );
    }
}
