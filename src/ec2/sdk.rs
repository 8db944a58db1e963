//! [`Ec2`] over aws-sdk-ec2: region, credentials and endpoint from aws-config, no SDK retries
//! ([`RetryPolicy::AGENT`]: the agent's loop retries), a client-side limiter on mutating calls,
//! metrics for every call, and errors classified here, once.

use ipnet::Ipv4Net;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::assign_private_ip_addresses::AssignPrivateIpAddressesOutput as AssignOutput;
use aws_sdk_ec2::operation::assign_private_ip_addresses::builders::AssignPrivateIpAddressesFluentBuilder as AssignBuilder;
use aws_sdk_ec2::types::{
    Filter, InstanceType, NetworkInterface, NetworkInterfaceAttachmentChanges, ResourceType, Tag,
    TagSpecification,
};

use super::limiter::Limiter;
use super::{
    Action, Ec2, Ec2Error, EniInfo, ErrorClass, InstanceInfo, NewEni, RetryPolicy, SubnetInfo,
    TypeLimits, tags,
};
use crate::core::{EniId, InstanceId, Prefix28, Prefix80, SubnetId};
use crate::metrics::Metrics;

/// An EC2 client from `conf` that retries as [`RetryPolicy::AGENT`] says (not at all: the
/// agent's own backoff does).
pub fn client(conf: &aws_config::SdkConfig) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(conf)
            .retry_config(retry_config(RetryPolicy::AGENT))
            .build(),
    )
}

/// The SDK's retry settings for `p`.
pub fn retry_config(p: RetryPolicy) -> aws_sdk_ec2::config::retry::RetryConfig {
    aws_sdk_ec2::config::retry::RetryConfig::standard()
        .with_max_attempts(p.max_attempts)
        .with_initial_backoff(p.initial_backoff)
        .with_max_backoff(p.max_backoff)
}

/// The SDK-backed EC2 client.
#[derive(Clone)]
pub struct SdkEc2 {
    client: aws_sdk_ec2::Client,
    limiter: Arc<Limiter>,
    metrics: Arc<Metrics>,
}

pub(super) fn classify<E>(action: Action, e: SdkError<E, HttpResponse>) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = e
        .message()
        .map(str::to_owned)
        .unwrap_or_else(|| DisplayErrorContext(&e).to_string());
    let (class, code) = match &e {
        SdkError::ServiceError(_) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            return Ec2Error::classified(action, e.code().unwrap_or("Unknown"), status, message);
        }
        SdkError::TimeoutError(_) => (ErrorClass::Transient, "Timeout"),
        // No credentials is not a network fault: nothing comes of retrying it.
        SdkError::DispatchFailure(_) if message.contains("CredentialsNotLoaded") => {
            (ErrorClass::Unauthorized, "CredentialsNotLoaded")
        }
        SdkError::DispatchFailure(_) => (ErrorClass::Transient, "DispatchFailure"),
        SdkError::ResponseError(_) => (ErrorClass::Transient, "ResponseError"),
        _ => (ErrorClass::Fatal, "ConstructionFailure"),
    };
    Ec2Error {
        action,
        class,
        code: code.into(),
        message,
    }
}

pub(super) fn bad_response(action: Action, what: &str) -> Ec2Error {
    Ec2Error {
        action,
        class: ErrorClass::Fatal,
        code: "BadResponse".into(),
        message: format!("EC2 answered without a valid {what}"),
    }
}

fn eni_info(n: &NetworkInterface) -> Option<EniInfo> {
    let att = n.attachment();
    Some(EniInfo {
        id: n.network_interface_id()?.parse().ok()?,
        subnet: n.subnet_id()?.parse().ok()?,
        status: n
            .status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        device_index: att.and_then(|a| a.device_index()).map(|d| d as u32),
        attachment_id: att.and_then(|a| a.attachment_id()).map(str::to_owned),
        attachment_status: att.and_then(|a| a.status()).map(|s| s.as_str().to_owned()),
        primary_ip: n.private_ip_address().and_then(|a| a.parse().ok()),
        mac: n.mac_address().unwrap_or_default().to_owned(),
        secondary_ips: n
            .private_ip_addresses()
            .iter()
            .filter(|p| p.primary() != Some(true))
            .filter_map(|p| p.private_ip_address()?.parse().ok())
            .collect(),
        prefixes: n
            .ipv4_prefixes()
            .iter()
            .filter_map(|p| p.ipv4_prefix()?.parse().ok())
            .collect(),
        ipv6_prefixes: n
            .ipv6_prefixes()
            .iter()
            .filter_map(|p| p.ipv6_prefix()?.parse().ok())
            .collect(),
        tags: n
            .tag_set()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
            .collect(),
    })
}

impl SdkEc2 {
    /// A client from aws-config's environment (AWS_REGION, credentials, AWS_ENDPOINT_URL...).
    pub async fn from_env(limiter: Limiter, metrics: Arc<Metrics>) -> Self {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        Self::new(client(&conf), limiter, metrics)
    }

    /// Wraps a client.
    pub fn new(client: aws_sdk_ec2::Client, limiter: Limiter, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            limiter: Arc::new(limiter),
            metrics,
        }
    }

    async fn call<T, E, Fut>(
        &self,
        action: Action,
        fut: impl FnOnce() -> Fut,
    ) -> Result<T, Ec2Error>
    where
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        if action.is_mutating() {
            let waited = self.limiter.acquire().await;
            if !waited.is_zero() {
                tracing::debug!(
                    %action,
                    waited_ms = waited.as_millis() as u64,
                    "EC2 call waited for the client-side limiter"
                );
            }
        }
        let start = Instant::now();
        let r = fut().await.map_err(|e| classify(action, e));
        let class = r.as_ref().err().map(|e| e.class);
        self.metrics.ec2_call(action, class, start.elapsed());
        if let Err(e) = &r {
            tracing::warn!(%action, code = %e.code, class = e.class.as_str(), message = %e.message, "EC2 call failed");
        }
        r
    }

    /// AssignPrivateIpAddresses on `eni`, with what `what` asks for.
    async fn assign(
        &self,
        eni: &EniId,
        what: impl Fn(AssignBuilder) -> AssignBuilder,
    ) -> Result<AssignOutput, Ec2Error> {
        self.call(Action::AssignPrivateIpAddresses, || {
            what(
                self.client
                    .assign_private_ip_addresses()
                    .network_interface_id(eni.as_str()),
            )
            .send()
        })
        .await
    }

    async fn describe_enis(&self, filters: Vec<Filter>) -> Result<Vec<EniInfo>, Ec2Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call(Action::DescribeNetworkInterfaces, || {
                    self.client
                        .describe_network_interfaces()
                        .set_filters(Some(filters.clone()))
                        .max_results(1000)
                        .set_next_token(token.clone())
                        .send()
                })
                .await?;
            out.extend(page.network_interfaces().iter().filter_map(eni_info));
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
        }
    }
}

/// The instance `id` of a DescribeInstances answer.
pub(super) fn instance_info(
    id: &InstanceId,
    r: &aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput,
) -> Result<InstanceInfo, Ec2Error> {
    const A: Action = Action::DescribeInstances;
    let inst = r
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .ok_or_else(|| bad_response(A, "instance"))?;
    let primary = inst
        .network_interfaces()
        .iter()
        .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
        .ok_or_else(|| bad_response(A, "primary network interface"))?;
    Ok(InstanceInfo {
        id: id.clone(),
        instance_type: inst
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .ok_or_else(|| bad_response(A, "instance type"))?,
        subnet: inst
            .subnet_id()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad_response(A, "subnet id"))?,
        vpc: inst.vpc_id().unwrap_or_default().to_owned(),
        security_groups: primary
            .groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_owned))
            .collect(),
        primary_eni: primary
            .network_interface_id()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad_response(A, "primary ENI id"))?,
    })
}

/// The first type's limits in a DescribeInstanceTypes answer.
pub(super) fn type_limits(
    r: &aws_sdk_ec2::operation::describe_instance_types::DescribeInstanceTypesOutput,
) -> Result<TypeLimits, Ec2Error> {
    const A: Action = Action::DescribeInstanceTypes;
    let t = r
        .instance_types()
        .first()
        .ok_or_else(|| bad_response(A, "instance type"))?;
    let net = t
        .network_info()
        .ok_or_else(|| bad_response(A, "network info"))?;
    Ok(TypeLimits {
        max_enis: net
            .maximum_network_interfaces()
            .ok_or_else(|| bad_response(A, "MaximumNetworkInterfaces"))? as u32,
        ipv4_per_eni: net
            .ipv4_addresses_per_interface()
            .ok_or_else(|| bad_response(A, "Ipv4AddressesPerInterface"))?
            as u32,
        supports_prefixes: t.bare_metal() == Some(true)
            || t.hypervisor().is_some_and(|h| h.as_str() == "nitro"),
        vcpus: t.v_cpu_info().and_then(|v| v.default_v_cpus()).unwrap_or(0) as u32,
    })
}

pub(super) fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

impl Ec2 for SdkEc2 {
    async fn describe_instance(&self, id: &InstanceId) -> Result<InstanceInfo, Ec2Error> {
        let r = self
            .call(Action::DescribeInstances, || {
                self.client
                    .describe_instances()
                    .instance_ids(id.as_str())
                    .send()
            })
            .await?;
        instance_info(id, &r)
    }

    async fn describe_instance_type(&self, name: &str) -> Result<TypeLimits, Ec2Error> {
        let r = self
            .call(Action::DescribeInstanceTypes, || {
                self.client
                    .describe_instance_types()
                    .instance_types(InstanceType::from(name))
                    .send()
            })
            .await?;
        type_limits(&r)
    }

    async fn describe_subnets(&self, ids: &[SubnetId]) -> Result<Vec<SubnetInfo>, Ec2Error> {
        let r = self
            .call(Action::DescribeSubnets, || {
                self.client
                    .describe_subnets()
                    .set_subnet_ids(Some(ids.iter().map(|s| s.as_str().to_owned()).collect()))
                    .send()
            })
            .await?;
        Ok(r.subnets()
            .iter()
            .filter_map(|s| {
                Some(SubnetInfo {
                    id: s.subnet_id()?.parse().ok()?,
                    cidr: s.cidr_block().unwrap_or_default().to_owned(),
                    available: s.available_ip_address_count().unwrap_or(0).max(0) as u32,
                    ipv6_cidrs: s
                        .ipv6_cidr_block_association_set()
                        .iter()
                        .filter(|a| {
                            a.ipv6_cidr_block_state()
                                .and_then(|s| s.state())
                                .is_none_or(|s| matches!(s.as_str(), "associated" | "associating"))
                        })
                        .filter_map(|a| a.ipv6_cidr_block()?.parse().ok())
                        .collect(),
                })
            })
            .collect())
    }

    async fn describe_vpc_cidrs(&self, vpc: &str) -> Result<Vec<Ipv4Net>, Ec2Error> {
        const A: Action = Action::DescribeVpcs;
        let r = self
            .call(A, || self.client.describe_vpcs().vpc_ids(vpc).send())
            .await?;
        let v = r.vpcs().first().ok_or_else(|| bad_response(A, "VPC"))?;
        let mut out: Vec<Ipv4Net> = v
            .cidr_block_association_set()
            .iter()
            .filter(|a| {
                a.cidr_block_state()
                    .and_then(|s| s.state())
                    .is_none_or(|s| s.as_str() == "associated")
            })
            .filter_map(|a| a.cidr_block()?.parse().ok())
            .collect();
        if let Some(c) = v.cidr_block().and_then(|c| c.parse().ok())
            && !out.contains(&c)
        {
            out.insert(0, c);
        }
        if out.is_empty() {
            return Err(bad_response(A, "CIDR block"));
        }
        Ok(out)
    }

    async fn describe_node_enis(&self, instance: &InstanceId) -> Result<Vec<EniInfo>, Ec2Error> {
        self.describe_enis(vec![filter("attachment.instance-id", instance.as_str())])
            .await
    }

    async fn describe_detached_tagged_enis(
        &self,
        cluster: Option<&str>,
    ) -> Result<Vec<EniInfo>, Ec2Error> {
        let mut f = vec![
            filter("status", "available"),
            filter("tag-key", tags::INSTANCE_ID),
        ];
        if let Some(c) = cluster {
            f.push(filter(&format!("tag:{}", tags::CLUSTER_NAME), c));
        }
        self.describe_enis(f).await
    }

    async fn assign_prefixes(&self, eni: &EniId, count: u32) -> Result<Vec<Prefix28>, Ec2Error> {
        let r = self
            .assign(eni, |b| b.ipv4_prefix_count(count as i32))
            .await?;
        let got: Vec<Prefix28> = r
            .assigned_ipv4_prefixes()
            .iter()
            .filter_map(|p| p.ipv4_prefix()?.parse().ok())
            .collect();
        tracing::info!(action = "AssignPrivateIpAddresses", eni.id = %eni, asked = count, prefixes = ?got.iter().map(|p| p.to_string()).collect::<Vec<_>>(), "assigned prefixes");
        Ok(got)
    }

    async fn assign_secondary_ips(
        &self,
        eni: &EniId,
        count: u32,
    ) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        let r = self
            .assign(eni, |b| b.secondary_private_ip_address_count(count as i32))
            .await?;
        let got: Vec<Ipv4Addr> = r
            .assigned_private_ip_addresses()
            .iter()
            .filter_map(|p| p.private_ip_address()?.parse().ok())
            .collect();
        tracing::info!(action = "AssignPrivateIpAddresses", eni.id = %eni, asked = count, addresses = ?got, "assigned secondary addresses");
        Ok(got)
    }

    async fn assign_ipv6_prefix(&self, eni: &EniId) -> Result<Vec<Prefix80>, Ec2Error> {
        const A: Action = Action::AssignIpv6Addresses;
        let r = self
            .call(A, || {
                self.client
                    .assign_ipv6_addresses()
                    .network_interface_id(eni.as_str())
                    .ipv6_prefix_count(1)
                    .send()
            })
            .await?;
        let got: Vec<Prefix80> = r
            .assigned_ipv6_prefixes()
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        tracing::info!(action = %A, eni.id = %eni, prefixes = ?got.iter().map(|p| p.to_string()).collect::<Vec<_>>(), "assigned the IPv6 prefix");
        Ok(got)
    }

    async fn unassign(
        &self,
        eni: &EniId,
        prefixes: &[Prefix28],
        ips: &[Ipv4Addr],
    ) -> Result<(), Ec2Error> {
        const A: Action = Action::UnassignPrivateIpAddresses;
        let p: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        let a: Vec<String> = ips.iter().map(|a| a.to_string()).collect();
        self.call(A, || {
            self.client
                .unassign_private_ip_addresses()
                .network_interface_id(eni.as_str())
                .set_ipv4_prefixes((!p.is_empty()).then(|| p.clone()))
                .set_private_ip_addresses((!a.is_empty()).then(|| a.clone()))
                .send()
        })
        .await?;
        tracing::info!(action = %A, eni.id = %eni, prefixes = ?p, addresses = ?a, "unassigned");
        Ok(())
    }

    async fn create_eni(&self, req: &NewEni) -> Result<EniInfo, Ec2Error> {
        const A: Action = Action::CreateNetworkInterface;
        let tags: Vec<Tag> = req
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let r = self
            .call(A, || {
                let mut b = self
                    .client
                    .create_network_interface()
                    .subnet_id(req.subnet.as_str())
                    .set_groups(Some(req.security_groups.clone()))
                    .description(&req.description)
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::NetworkInterface)
                            .set_tags(Some(tags.clone()))
                            .build(),
                    );
                if req.prefixes > 0 {
                    b = b.ipv4_prefix_count(req.prefixes as i32);
                }
                if req.secondary_ips > 0 {
                    b = b.secondary_private_ip_address_count(req.secondary_ips as i32);
                }
                b.send()
            })
            .await?;
        let info = r
            .network_interface()
            .and_then(eni_info)
            .ok_or_else(|| bad_response(A, "network interface"))?;
        tracing::info!(action = %A, eni.id = %info.id, subnet.id = %req.subnet, prefixes = info.prefixes.len(), addresses = info.secondary_ips.len(), "created ENI");
        Ok(info)
    }

    async fn attach_eni(
        &self,
        eni: &EniId,
        instance: &InstanceId,
        device_index: u32,
    ) -> Result<String, Ec2Error> {
        const A: Action = Action::AttachNetworkInterface;
        let r = self
            .call(A, || {
                self.client
                    .attach_network_interface()
                    .network_interface_id(eni.as_str())
                    .instance_id(instance.as_str())
                    .device_index(device_index as i32)
                    .network_card_index(0)
                    .send()
            })
            .await?;
        let id = r
            .attachment_id()
            .map(str::to_owned)
            .ok_or_else(|| bad_response(A, "attachment id"))?;
        tracing::info!(action = %A, eni.id = %eni, instance.id = %instance, device_index, attachment.id = %id, "attached ENI");
        Ok(id)
    }

    async fn set_delete_on_termination(
        &self,
        eni: &EniId,
        attachment_id: &str,
    ) -> Result<(), Ec2Error> {
        const A: Action = Action::ModifyNetworkInterfaceAttribute;
        self.call(A, || {
            self.client
                .modify_network_interface_attribute()
                .network_interface_id(eni.as_str())
                .attachment(
                    NetworkInterfaceAttachmentChanges::builder()
                        .attachment_id(attachment_id)
                        .delete_on_termination(true)
                        .build(),
                )
                .send()
        })
        .await?;
        tracing::info!(action = %A, eni.id = %eni, attachment.id = attachment_id, "set DeleteOnTermination");
        Ok(())
    }

    async fn detach_eni(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        const A: Action = Action::DetachNetworkInterface;
        self.call(A, || {
            self.client
                .detach_network_interface()
                .attachment_id(attachment_id)
                .send()
        })
        .await?;
        tracing::info!(action = %A, attachment.id = attachment_id, "detached ENI");
        Ok(())
    }

    async fn delete_eni(&self, eni: &EniId) -> Result<(), Ec2Error> {
        const A: Action = Action::DeleteNetworkInterface;
        self.call(A, || {
            self.client
                .delete_network_interface()
                .network_interface_id(eni.as_str())
                .send()
        })
        .await?;
        tracing::info!(action = %A, eni.id = %eni, "deleted ENI");
        Ok(())
    }
}
