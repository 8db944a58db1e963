//! IMDSv2 for the mock's instances: `PUT /latest/api/token`, then `GET /latest/meta-data/…`
//! with the token, answering from the live state of the instance's ENIs.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::model::Model;

/// Tokens handed out, and which instance this endpoint speaks for.
#[derive(Debug, Default)]
pub struct ImdsState {
    /// The instance whose metadata is served.
    pub instance: Option<String>,
    tokens: HashMap<String, Instant>,
    issued: u64,
}

/// An IMDS answer: status and body.
pub type Answer = (u16, String);

impl ImdsState {
    /// Serves `instance`'s metadata.
    pub fn for_instance(instance: Option<String>) -> Self {
        Self {
            instance,
            ..Self::default()
        }
    }

    /// `PUT /latest/api/token` with the TTL header's value.
    pub fn issue(&mut self, ttl_header: Option<&str>, now: Instant) -> Answer {
        let Some(ttl) = ttl_header.and_then(|v| v.trim().parse::<u64>().ok()) else {
            return (
                400,
                "missing or invalid X-aws-ec2-metadata-token-ttl-seconds".into(),
            );
        };
        if !(1..=21_600).contains(&ttl) {
            return (
                400,
                "X-aws-ec2-metadata-token-ttl-seconds must be 1 to 21600".into(),
            );
        }
        self.issued += 1;
        let token = format!(
            "mock-imds-token-{:016x}",
            self.issued.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        );
        self.tokens
            .insert(token.clone(), now + Duration::from_secs(ttl));
        (200, token)
    }

    /// Whether `token` is valid at `now`.
    pub fn valid(&self, token: Option<&str>, now: Instant) -> bool {
        token
            .and_then(|t| self.tokens.get(t))
            .is_some_and(|exp| *exp > now)
    }
}

/// `GET /latest/meta-data/{path}` for `instance`.
pub fn metadata(model: &Model, instance: &str, path: &str) -> Answer {
    match lookup(model, instance, path.trim_start_matches('/')) {
        Some(body) => (200, body),
        None => (404, "Not Found".into()),
    }
}

fn lookup(model: &Model, instance: &str, path: &str) -> Option<String> {
    let inst = model.instances.get(instance).filter(|i| i.running)?;
    let enis = model.enis_of(instance);
    let primary = model.enis.get(&inst.primary_eni)?;
    Some(match path {
        "" => "instance-id\ninstance-type\nmac\nnetwork/\nplacement/".into(),
        "instance-id" => inst.id.clone(),
        "instance-type" => inst.itype.name.clone(),
        "mac" => primary.mac.clone(),
        "placement/" | "placement" => "availability-zone\nregion".into(),
        "placement/availability-zone" => inst.az.clone(),
        "placement/region" => model.region.clone(),
        "network/" | "network" => "interfaces/".into(),
        "network/interfaces/" | "network/interfaces" => "macs/".into(),
        "network/interfaces/macs/" | "network/interfaces/macs" => enis
            .iter()
            .map(|e| format!("{}/", e.mac))
            .collect::<Vec<_>>()
            .join("\n"),
        p => {
            let rest = p.strip_prefix("network/interfaces/macs/")?;
            let (mac, key) = rest.split_once('/').unwrap_or((rest, ""));
            let e = enis.iter().find(|e| e.mac == mac)?;
            let att = e.attachment.as_ref()?;
            let subnet = model.subnets.get(&e.subnet)?;
            let vpc = model.vpcs.get(&e.vpc)?;
            match key {
                "" => {
                    let mut keys = vec!["device-number", "interface-id", "ipv4-prefix"];
                    if !e.ipv6_prefixes.is_empty() {
                        keys.push("ipv6-prefix");
                    }
                    if !e.ipv6_addresses.is_empty() {
                        keys.push("ipv6s");
                    }
                    keys.extend([
                        "local-ipv4s",
                        "mac",
                        "network-card",
                        "security-group-ids",
                        "subnet-id",
                        "subnet-ipv4-cidr-block",
                    ]);
                    if subnet.ipv6.is_some() {
                        keys.push("subnet-ipv6-cidr-blocks");
                    }
                    keys.extend(["vpc-id", "vpc-ipv4-cidr-blocks"]);
                    if vpc.ipv6.is_some() {
                        keys.push("vpc-ipv6-cidr-blocks");
                    }
                    keys.join("\n")
                }
                "interface-id" => e.id.clone(),
                "device-number" => att.device_index.to_string(),
                "network-card" if att.card_index == 0 => return None,
                "network-card" => att.card_index.to_string(),
                "mac" => e.mac.clone(),
                "subnet-id" => e.subnet.clone(),
                "vpc-id" => e.vpc.clone(),
                "security-group-ids" => e.sgs.join("\n"),
                "local-ipv4s" => std::iter::once(e.primary_ip)
                    .chain(e.secondary.iter().copied())
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
                "ipv4-prefix" if e.prefixes.is_empty() => return None,
                "ipv4-prefix" => e
                    .prefixes
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
                "subnet-ipv4-cidr-block" => subnet.space.net().to_string(),
                "ipv6-prefix" if e.ipv6_prefixes.is_empty() => return None,
                "ipv6-prefix" => lines(&e.ipv6_prefixes),
                "ipv6s" if e.ipv6_addresses.is_empty() => return None,
                "ipv6s" => lines(&e.ipv6_addresses),
                "subnet-ipv6-cidr-blocks" => subnet.ipv6.as_ref()?.1.net().to_string(),
                "vpc-ipv6-cidr-blocks" => vpc.ipv6.as_ref()?.1.to_string(),
                "vpc-ipv4-cidr-blocks" => lines(&vpc.cidrs().collect::<Vec<_>>()),
                _ => return None,
            }
        }
    })
}

fn lines<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}
