//! [`Ec2`] straight on the mock's model, on virtual time: no HTTP and no XML, but the same
//! model (subnet accounting, limits, fragmentation), the same control (EC2's token buckets,
//! latency) and, around each call, what the SDK does: its standard retry mode.
//!
//! One [`Account`] is shared by every virtual node; each node has its own [`SimEc2`] with its
//! own client-side limiter (prefixd's EC2_API_QPS / EC2_API_BURST, or none), SDK retry policy
//! and retry jitter.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::core::rng::XorShift64;
use crate::core::{EniId, InstanceId, Prefix28, SubnetId, instance_types};
use crate::ec2::limiter::Limiter;
use crate::ec2::{
    Ec2, Ec2Error, EniInfo, ErrorClass, InstanceInfo, NewEni, RetryPolicy, SubnetInfo, TypeLimits,
    tags,
};
use crate::mock;
use crate::mock::actions::attach_status;
use crate::mock::control::Control;
use crate::mock::model::{Eni, IpRequest, Model};

/// One EC2 account and region: the model and its control, on the simulation's clock.
pub struct Account {
    /// EC2 state.
    pub model: Mutex<Model>,
    /// Buckets, latency, statistics.
    pub control: Mutex<Control>,
    origin: Instant,
}

impl Account {
    /// An account whose clock starts now.
    pub fn new(model: Model, control: Control) -> Self {
        Self {
            model: Mutex::new(model),
            control: Mutex::new(control),
            origin: Instant::now(),
        }
    }

    /// Mock time in ms (attachment states).
    pub fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.origin).as_millis() as u64
    }

    /// Runs `f` on the model.
    pub fn with_model<R>(&self, f: impl FnOnce(&mut Model) -> R) -> R {
        f(&mut self.model.lock().expect("model lock"))
    }

    /// Runs `f` on the control.
    pub fn with_control<R>(&self, f: impl FnOnce(&mut Control) -> R) -> R {
        f(&mut self.control.lock().expect("control lock"))
    }
}

/// One node's EC2 client.
pub struct SimEc2 {
    account: Arc<Account>,
    limiter: Option<Limiter>,
    retry: RetryPolicy,
    rng: Mutex<XorShift64>,
}

fn convert(action: &'static str, e: mock::Ec2Error) -> Ec2Error {
    Ec2Error {
        action,
        class: ErrorClass::of(&e.code, Some(e.status)),
        code: e.code,
        message: e.message,
    }
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
        secondary_ips: e.secondary.clone(),
        prefixes: e.prefixes.clone(),
        tags: e.tags.clone(),
    }
}

impl SimEc2 {
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

    fn jitter(&self) -> f64 {
        self.rng.lock().expect("rng lock").next_f64()
    }

    /// One call as the SDK makes it: the limiter (mutating calls), then up to
    /// `max_attempts` tries through EC2's buckets, latency and the model.
    async fn call<T>(
        &self,
        action: &'static str,
        unfiltered: bool,
        mut f: impl FnMut(&mut Model, u64) -> Result<T, mock::Ec2Error>,
    ) -> Result<T, Ec2Error> {
        let mutating = !action.starts_with("Describe");
        if mutating && let Some(l) = &self.limiter {
            l.acquire().await;
        }
        let mut attempt = 1;
        loop {
            let admitted = self
                .account
                .with_control(|c| c.admit(action, unfiltered, Instant::now()));
            let err = match admitted {
                Err(e) => e,
                Ok(delay) => {
                    if delay > Duration::ZERO {
                        tokio::time::sleep(delay).await;
                    }
                    let now_ms = self.account.now_ms();
                    match self.account.with_model(|m| f(m, now_ms)) {
                        Ok(v) => return Ok(v),
                        Err(e) => {
                            self.account
                                .with_control(|c| c.count_error(action, &e.code));
                            e
                        }
                    }
                }
            };
            let e = convert(action, err);
            if attempt >= self.retry.max_attempts
                || !matches!(e.class, ErrorClass::Throttled | ErrorClass::Transient)
            {
                return Err(e);
            }
            let bound = self
                .retry
                .initial_backoff
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(self.retry.max_backoff);
            tokio::time::sleep(bound.mul_f64(self.jitter())).await;
            attempt += 1;
        }
    }
}

impl Ec2 for SimEc2 {
    async fn describe_instance(&self, id: &InstanceId) -> Result<InstanceInfo, Ec2Error> {
        self.call("DescribeInstances", false, |m, _| {
            let i = m.instances.get(id.as_str()).ok_or_else(|| {
                mock::Ec2Error::client(
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
        self.call("DescribeInstanceTypes", false, |_, _| {
            let t = instance_types::lookup(name).ok_or_else(|| {
                mock::Ec2Error::client(
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
        self.call("DescribeSubnets", false, |m, _| {
            ids.iter()
                .map(|id| {
                    let s = m.subnets.get(id.as_str()).ok_or_else(|| {
                        mock::Ec2Error::client(
                            "InvalidSubnetID.NotFound",
                            format!("The subnet ID '{id}' does not exist"),
                        )
                    })?;
                    Ok(SubnetInfo {
                        id: id.clone(),
                        cidr: s.space.net().to_string(),
                        available: s.space.available(),
                    })
                })
                .collect()
        })
        .await
    }

    async fn describe_node_enis(&self, instance: &InstanceId) -> Result<Vec<EniInfo>, Ec2Error> {
        self.call("DescribeNetworkInterfaces", false, |m, now| {
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
        self.call("DescribeNetworkInterfaces", false, |m, now| {
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

    async fn assign_prefixes(&self, eni: &EniId, count: u32) -> Result<Vec<Prefix28>, Ec2Error> {
        self.call("AssignPrivateIpAddresses", false, |m, _| {
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
        self.call("AssignPrivateIpAddresses", false, |m, _| {
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
        self.call("UnassignPrivateIpAddresses", false, |m, _| {
            m.unassign(eni.as_str(), &ps, ips)
        })
        .await
    }

    async fn create_eni(&self, req: &NewEni) -> Result<EniInfo, Ec2Error> {
        self.call("CreateNetworkInterface", false, |m, now| {
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
        self.call("AttachNetworkInterface", false, |m, now| {
            m.attach(eni.as_str(), instance.as_str(), device_index, 0, now)
        })
        .await
    }

    async fn set_delete_on_termination(
        &self,
        eni: &EniId,
        attachment_id: &str,
    ) -> Result<(), Ec2Error> {
        self.call("ModifyNetworkInterfaceAttribute", false, |m, _| {
            m.set_delete_on_termination(eni.as_str(), attachment_id, true)
        })
        .await
    }

    async fn detach_eni(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        self.call("DetachNetworkInterface", false, |m, _| {
            m.detach(attachment_id)
        })
        .await
    }

    async fn delete_eni(&self, eni: &EniId) -> Result<(), Ec2Error> {
        self.call("DeleteNetworkInterface", false, |m, _| {
            m.delete_eni(eni.as_str())
        })
        .await
    }
}
