//! An IAM policy the mock enforces on every call, so that a least-privilege policy can be
//! proven sufficient (everything its users call is allowed) and a missing permission seen as
//! EC2 reports it: `UnauthorizedOperation`, HTTP 403. Only what decides EC2 actions is read:
//! statements' `Effect` and `Action` (strings or lists, `ec2:Describe*` wildcards, `*`);
//! resources and conditions are not evaluated.

use std::collections::BTreeSet;

use serde_json::Value;

use super::ApiError;
use crate::ec2::Action;

/// The EC2 actions a policy allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    allowed: BTreeSet<Action>,
}

/// A policy document the mock cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("IAM policy: {0}")]
pub struct PolicyError(String);

fn strings(v: &Value, what: &str) -> Result<Vec<String>, PolicyError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| PolicyError(format!("{what} must hold strings")))
            })
            .collect(),
        _ => Err(PolicyError(format!("{what} must be a string or a list"))),
    }
}

fn matching(pattern: &str) -> Vec<Action> {
    let p = pattern.to_ascii_lowercase();
    Action::ALL
        .iter()
        .copied()
        .filter(|a| {
            let full = format!("ec2:{}", a.name().to_ascii_lowercase());
            super::wire::glob(&p, &full) || p == "*"
        })
        .collect()
}

impl Policy {
    /// Reads an IAM policy document (`{"Version": …, "Statement": [...]}`).
    pub fn parse(doc: &Value) -> Result<Self, PolicyError> {
        let statements = match doc.get("Statement") {
            Some(Value::Array(a)) => a.clone(),
            Some(s @ Value::Object(_)) => vec![s.clone()],
            _ => return Err(PolicyError("no Statement list".into())),
        };
        let (mut allow, mut deny) = (BTreeSet::new(), BTreeSet::new());
        for (i, s) in statements.iter().enumerate() {
            let effect = s
                .get("Effect")
                .and_then(Value::as_str)
                .ok_or_else(|| PolicyError(format!("Statement[{i}] has no Effect")))?;
            let actions = strings(
                s.get("Action")
                    .ok_or_else(|| PolicyError(format!("Statement[{i}] has no Action")))?,
                &format!("Statement[{i}].Action"),
            )?;
            let set = match effect {
                "Allow" => &mut allow,
                "Deny" => &mut deny,
                other => {
                    return Err(PolicyError(format!(
                        "Statement[{i}].Effect {other:?} is not Allow or Deny"
                    )));
                }
            };
            for a in &actions {
                set.extend(matching(a));
            }
        }
        Ok(Self {
            allowed: allow.difference(&deny).copied().collect(),
        })
    }

    /// Whether `action` may be called.
    pub fn allows(&self, action: Action) -> bool {
        self.allowed.contains(&action)
    }

    /// EC2's answer to a call the policy does not allow.
    pub fn refusal(action: Action) -> ApiError {
        ApiError::new(
            403,
            "UnauthorizedOperation",
            format!(
                "You are not authorized to perform this operation. User: arn:aws:iam::123456789012:user/mock is not authorized to perform: ec2:{action} because no identity-based policy allows the ec2:{action} action"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_deny_and_wildcards() {
        let p = Policy::parse(&serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["ec2:Describe*", "ec2:GetSubnetCidrReservations"], "Resource": "*"},
                {"Effect": "Deny", "Action": "ec2:DescribeRouteTables", "Resource": "*"}
            ]
        }))
        .unwrap();
        assert!(p.allows(Action::DescribeVpcs));
        assert!(p.allows(Action::GetSubnetCidrReservations));
        assert!(!p.allows(Action::DescribeRouteTables));
        assert!(!p.allows(Action::AssignPrivateIpAddresses));
        assert!(!p.allows(Action::GetManagedPrefixListEntries));
        let r = Policy::refusal(Action::DescribeRouteTables);
        assert_eq!((r.status, r.code.as_str()), (403, "UnauthorizedOperation"));
        assert!(r.message.contains("ec2:DescribeRouteTables"));
        assert!(Policy::parse(&serde_json::json!({"Statement": [{"Action": "x"}]})).is_err());
    }
}
