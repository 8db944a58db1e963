//! [`Ec2`] straight on an [`Account`]: no HTTP and no XML, but the same model (subnet
//! accounting, limits, fragmentation), the same control (EC2's token buckets, latency, faults)
//! and the same call path as the HTTP server; around each call, what the SDK does (its retry
//! policy) and the agent's client-side limiter. The simulator's virtual nodes and the tests that
//! run the agent on paused time use it.

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use super::ApiError;
use super::account::Account;
use super::actions::attach_status;
use super::model::{Eni, IpRequest, Ipv6Request, Model};
use crate::core::backoff::{Backoff, Jitter};
use crate::core::rng::XorShift64;
use crate::core::{EniId, InstanceId, Prefix28, Prefix80, SubnetId, instance_types};
use crate::ec2::limiter::Limiter;
use crate::ec2::{
    Action, Ec2, Ec2Error, EniInfo, ErrorClass, InstanceInfo, NewEni, RetryPolicy, SubnetInfo,
    TypeLimits, tags,
};

/// One node's EC2 client.
pub struct DirectEc2 {
    account: Arc<Account>,
    limiter: Option<Limiter>,
    retry: RetryPolicy,
    rng: Mutex<XorShift64>,
}

fn convert(action: Action, e: ApiError) -> Ec2Error {
    Ec2Error::classified(action, e.code, Some(e.status), e.message)
}

fn info(e: &Eni, now_ms: u64) -> EniInfo {
    let att = e.attachment.as_ref();
    EniInfo {
        id: e.id.parse().expect("the model makes valid ENI ids"),
        subnet: e.subnet.parse().expect("the model makes valid subnet ids"),
        status: e.status().to_owned(),
        device_index: att.map(|a| a.device_index),
        attachment_id: att.map(|a| a.id.clone()),
        attachment_status: att.map(|a| attach_status(a.ready_at_ms, now_ms).to_owned()),
        primary_ip: Some(e.primary_ip),
        mac: e.mac.clone(),
        secondary_ips: e.secondary.clone(),
        prefixes: e.prefixes.clone(),
        ipv6_prefixes: e.ipv6_prefixes.clone(),
        tags: e.tags.clone(),
    }
}

impl DirectEc2 {
    /// A client for one node: `limiter` for mutating calls (None: no client-side limit),
    /// `seed` for the retry jitter.
    pub fn new(
        account: Arc<Account>,
        limiter: Option<Limiter>,
        retry: RetryPolicy,
        seed: u64,
    ) -> Self {
        Self {
            account,
            limiter,
            retry,
            rng: Mutex::new(XorShift64::new(seed)),
        }
    }

    /// One call as the SDK makes it: the limiter (mutating calls), then up to
    /// `max_attempts` tries along the account's call path, with the SDK's full-jitter backoff
    /// between them.
    async fn call<T>(
        &self,
        action: Action,
        mut f: impl FnMut(&mut Model, u64) -> Result<T, ApiError>,
    ) -> Result<T, Ec2Error> {
        if action.is_mutating()
            && let Some(l) = &self.limiter
        {
            l.acquire().await;
        }
        let backoff = Backoff::new(
            self.retry.initial_backoff,
            self.retry.max_backoff,
            Jitter::Full,
        );
        let mut attempt = 1;
        loop {
            let e = match self.account.call(action, false, |m, now| f(m, now)).await {
                Ok(v) => return Ok(v),
                Err(e) => convert(action, e),
            };
            if attempt >= self.retry.max_attempts
                || !matches!(e.class, ErrorClass::Throttled | ErrorClass::Transient)
            {
                return Err(e);
            }
            let wait = backoff.delay(attempt - 1, &mut self.rng.lock().expect("rng lock"));
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

impl Ec2 for DirectEc2 {
    async fn describe_instance(&self, id: &InstanceId) -> Result<InstanceInfo, Ec2Error> {
        self.call(Action::DescribeInstances, |m, _| {
            let i = m.instances.get(id.as_str()).ok_or_else(|| {
                ApiError::client(
                    "InvalidInstanceID.NotFound",
                    format!("The instance ID '{id}' does not exist"),
                )
            })?;
            Ok(InstanceInfo {
                id: id.clone(),
                instance_type: i.itype.name.clone(),
                subnet: i.subnet.parse().expect("valid subnet id"),
                vpc: i.vpc.clone(),
                security_groups: i.sgs.clone(),
                primary_eni: i.primary_eni.parse().expect("valid ENI id"),
            })
        })
        .await
    }

    async fn describe_instance_type(&self, name: &str) -> Result<TypeLimits, Ec2Error> {
        self.call(Action::DescribeInstanceTypes, |_, _| {
            let t = instance_types::lookup(name).ok_or_else(|| {
                ApiError::client(
                    "InvalidInstanceType",
                    format!("The following supplied instance types do not exist: [{name}]"),
                )
            })?;
            Ok(TypeLimits {
                max_enis: t.max_enis,
                ipv4_per_eni: t.ipv4_per_eni,
                supports_prefixes: t.supports_prefixes(),
                vcpus: t.vcpus,
            })
        })
        .await
    }

    async fn describe_subnets(&self, ids: &[SubnetId]) -> Result<Vec<SubnetInfo>, Ec2Error> {
        self.call(Action::DescribeSubnets, |m, _| {
            ids.iter()
                .map(|id| {
                    let s = m.subnets.get(id.as_str()).ok_or_else(|| {
                        ApiError::client(
                            "InvalidSubnetID.NotFound",
                            format!("The subnet ID '{id}' does not exist"),
                        )
                    })?;
                    Ok(SubnetInfo {
                        id: id.clone(),
                        cidr: s.space.net().to_string(),
                        available: m.available_in(s),
                        ipv6_cidrs: s.ipv6.iter().map(|(_, sp)| sp.net()).collect(),
                    })
                })
                .collect()
        })
        .await
    }

    async fn describe_vpc_cidrs(&self, vpc: &str) -> Result<Vec<Ipv4Net>, Ec2Error> {
        self.call(Action::DescribeVpcs, |m, _| {
            let v = m.vpcs.get(vpc).ok_or_else(|| {
                ApiError::client(
                    "InvalidVpcID.NotFound",
                    format!("The vpc ID '{vpc}' does not exist"),
                )
            })?;
            Ok(v.cidrs().collect())
        })
        .await
    }

    async fn describe_node_enis(&self, instance: &InstanceId) -> Result<Vec<EniInfo>, Ec2Error> {
        self.call(Action::DescribeNetworkInterfaces, |m, now| {
            Ok(m.enis_of(instance.as_str())
                .into_iter()
                .map(|e| info(e, now))
                .collect())
        })
        .await
    }

    async fn describe_detached_tagged_enis(
        &self,
        cluster: Option<&str>,
    ) -> Result<Vec<EniInfo>, Ec2Error> {
        self.call(Action::DescribeNetworkInterfaces, |m, now| {
            Ok(m.enis
                .values()
                .filter(|e| e.attachment.is_none() && e.tags.contains_key(tags::INSTANCE_ID))
                .filter(|e| {
                    cluster.is_none_or(|c| {
                        e.tags.get(tags::CLUSTER_NAME).map(String::as_str) == Some(c)
                    })
                })
                .map(|e| info(e, now))
                .collect())
        })
        .await
    }

    async fn assign_ipv6_prefix(&self, eni: &EniId) -> Result<Vec<Prefix80>, Ec2Error> {
        self.call(Action::AssignIpv6Addresses, |m, _| {
            m.assign_ipv6(
                eni.as_str(),
                Ipv6Request {
                    prefix_count: 1,
                    ..Ipv6Request::default()
                },
            )
            .map(|(p, _)| p)
        })
        .await
    }

    async fn assign_prefixes(&self, eni: &EniId, count: u32) -> Result<Vec<Prefix28>, Ec2Error> {
        self.call(Action::AssignPrivateIpAddresses, |m, _| {
            m.assign(
                eni.as_str(),
                IpRequest {
                    prefix_count: count,
                    ..IpRequest::default()
                },
            )
            .map(|(p, _)| p)
        })
        .await
    }

    async fn assign_secondary_ips(
        &self,
        eni: &EniId,
        count: u32,
    ) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        self.call(Action::AssignPrivateIpAddresses, |m, _| {
            m.assign(
                eni.as_str(),
                IpRequest {
                    ip_count: count,
                    ..IpRequest::default()
                },
            )
            .map(|(_, a)| a)
        })
        .await
    }

    async fn unassign(
        &self,
        eni: &EniId,
        prefixes: &[Prefix28],
        ips: &[Ipv4Addr],
    ) -> Result<(), Ec2Error> {
        let ps: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        self.call(Action::UnassignPrivateIpAddresses, |m, _| {
            m.unassign(eni.as_str(), &ps, ips)
        })
        .await
    }

    async fn create_eni(&self, req: &NewEni) -> Result<EniInfo, Ec2Error> {
        self.call(Action::CreateNetworkInterface, |m, now| {
            let id = m.create_eni(
                req.subnet.as_str(),
                req.security_groups.clone(),
                req.description.clone(),
                None,
                IpRequest {
                    prefix_count: req.prefixes,
                    ip_count: req.secondary_ips,
                    ..IpRequest::default()
                },
                req.tags.clone(),
            )?;
            Ok(info(&m.enis[&id], now))
        })
        .await
    }

    async fn attach_eni(
        &self,
        eni: &EniId,
        instance: &InstanceId,
        device_index: u32,
    ) -> Result<String, Ec2Error> {
        self.call(Action::AttachNetworkInterface, |m, now| {
            m.attach(eni.as_str(), instance.as_str(), device_index, 0, now)
        })
        .await
    }

    async fn set_delete_on_termination(
        &self,
        eni: &EniId,
        attachment_id: &str,
    ) -> Result<(), Ec2Error> {
        self.call(Action::ModifyNetworkInterfaceAttribute, |m, _| {
            m.set_delete_on_termination(eni.as_str(), attachment_id, true)
        })
        .await
    }

    async fn detach_eni(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        self.call(Action::DetachNetworkInterface, |m, _| {
            m.detach(attachment_id)
        })
        .await
    }

    async fn delete_eni(&self, eni: &EniId) -> Result<(), Ec2Error> {
        self.call(Action::DeleteNetworkInterface, |m, _| {
            m.delete_eni(eni.as_str())
        })
        .await
    }
}
