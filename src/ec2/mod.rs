//! The EC2 seam: our verbs, our types, and errors classified once.
//!
//! The agent reaches EC2 only through [`Ec2`]. [`sdk::SdkEc2`] implements it with aws-sdk-ec2
//! (the `aws` part of the crate); its errors are sorted into an [`ErrorClass`] in one place, so
//! that no other code matches on error strings. [`Action`] names every call; [`limiter`] is the
//! client-side token bucket on mutating calls, with its settings. The reports read EC2 through
//! their own read-only seam, [`read::Ec2Read`] ([`sdk_read::SdkRead`] over aws-sdk-ec2).

pub mod action;
pub mod limiter;
pub mod read;
pub mod sdk;
pub mod sdk_read;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;

pub use action::{Action, BucketSpec};

use crate::core::{EniId, InstanceId, Prefix28, Prefix80, SubnetId};

/// How the SDK client retries a call by itself (aws-smithy's retry settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts, the first included.
    pub max_attempts: u32,
    /// Full-jitter backoff: retry n waits random(0, 1) × min(initial × 2^(n−1), max).
    pub initial_backoff: std::time::Duration,
    /// The cap.
    pub max_backoff: std::time::Duration,
}

impl RetryPolicy {
    /// The SDKs' `standard` mode: 3 attempts, 1 s initial backoff, 20 s cap.
    pub const STANDARD: Self = Self {
        max_attempts: 3,
        initial_backoff: std::time::Duration::from_secs(1),
        max_backoff: std::time::Duration::from_secs(20),
    };

    /// prefixd's: the SDK does not retry; the agent does, once per error class (the pool
    /// loop's jittered backoff, start-up's retries). Retries inside the SDK would add two
    /// RequestLimitExceeded per throttled call across a fleet and gain nothing the loop's
    /// backoff does not (`prefixd simulate --profile fleet` shows it).
    pub const AGENT: Self = Self {
        max_attempts: 1,
        initial_backoff: std::time::Duration::from_secs(1),
        max_backoff: std::time::Duration::from_secs(20),
    };
}

/// Tag keys the agent puts on the ENIs it creates (the VPC CNI's names).
pub mod tags {
    /// The instance the ENI was made for.
    pub const INSTANCE_ID: &str = "node.k8s.amazonaws.com/instance_id";
    /// When it was made (RFC 3339).
    pub const CREATED_AT: &str = "node.k8s.amazonaws.com/createdAt";
    /// CLUSTER_NAME, when set.
    pub const CLUSTER_NAME: &str = "cluster.k8s.amazonaws.com/name";
    /// An attached ENI with this tag set to `true` is left alone (the VPC CNI's name).
    pub const NO_MANAGE: &str = "node.k8s.amazonaws.com/no_manage";
}

/// Tags for an ENI the agent creates for `instance`, made `now`.
pub fn eni_tags(
    instance: &InstanceId,
    cluster: Option<&str>,
    now: std::time::SystemTime,
) -> BTreeMap<String, String> {
    let mut t = BTreeMap::new();
    t.insert(tags::INSTANCE_ID.to_owned(), instance.to_string());
    t.insert(
        tags::CREATED_AT.to_owned(),
        humantime::format_rfc3339_seconds(now).to_string(),
    );
    if let Some(c) = cluster {
        t.insert(tags::CLUSTER_NAME.to_owned(), c.to_owned());
    }
    t
}

/// What kind of failure an EC2 error is; the loop decides on this alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// RequestLimitExceeded: back off and retry.
    Throttled,
    /// InsufficientCidrBlocks: no free aligned /28 in the subnet.
    InsufficientCidr,
    /// InsufficientFreeAddressesInSubnet: no free address at all.
    InsufficientAddresses,
    /// PrivateIpAddressLimitExceeded / AttachmentLimitExceeded: local state is stale; resync.
    LimitExceeded,
    /// An id EC2 does not know (or does not know yet: eventual consistency); resync.
    NotFound,
    /// The IAM policy lacks the action.
    Unauthorized,
    /// Network trouble, timeouts, 5xx: retry with backoff.
    Transient,
    /// Anything else: a bug or bad input; surfaced, not retried blindly.
    Fatal,
}

impl Ec2Error {
    /// An error of `action` with EC2's `code` (and HTTP status, when known), classified.
    pub fn classified(
        action: Action,
        code: impl Into<String>,
        status: Option<u16>,
        message: impl Into<String>,
    ) -> Self {
        let code = code.into();
        Self {
            action,
            class: ErrorClass::of(&code, status),
            code,
            message: message.into(),
        }
    }
}

impl ErrorClass {
    /// Sorts an EC2 error code (and HTTP status, when known) into a class.
    pub fn of(code: &str, status: Option<u16>) -> Self {
        match code {
            "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => Self::Throttled,
            "InsufficientCidrBlocks" => Self::InsufficientCidr,
            "InsufficientFreeAddressesInSubnet" => Self::InsufficientAddresses,
            "PrivateIpAddressLimitExceeded" | "AttachmentLimitExceeded" => Self::LimitExceeded,
            c if c.ends_with(".NotFound") => Self::NotFound,
            "UnauthorizedOperation" | "AuthFailure" | "Blocked" => Self::Unauthorized,
            "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => {
                Self::Transient
            }
            _ if status.is_some_and(|s| s >= 500) => Self::Transient,
            _ => Self::Fatal,
        }
    }

    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::InsufficientCidr => "insufficient_cidr",
            Self::InsufficientAddresses => "insufficient_addresses",
            Self::LimitExceeded => "limit_exceeded",
            Self::NotFound => "not_found",
            Self::Unauthorized => "unauthorized",
            Self::Transient => "transient",
            Self::Fatal => "fatal",
        }
    }
}

/// A failed EC2 call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("EC2 {action} failed ({code}, {}): {message}", class.as_str())]
pub struct Ec2Error {
    /// The action.
    pub action: Action,
    /// Its class.
    pub class: ErrorClass,
    /// EC2's code (or a transport error's kind).
    pub code: String,
    /// The message.
    pub message: String,
}

/// An ENI as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniInfo {
    /// Its id.
    pub id: EniId,
    /// Its subnet.
    pub subnet: SubnetId,
    /// `available` or `in-use`.
    pub status: String,
    /// Device index, when attached.
    pub device_index: Option<u32>,
    /// Attachment id, when attached.
    pub attachment_id: Option<String>,
    /// `attaching`, `attached`...
    pub attachment_status: Option<String>,
    /// Primary address.
    pub primary_ip: Option<Ipv4Addr>,
    /// MAC address (`0a:1b:...`): how the node finds the ENI's link.
    pub mac: String,
    /// Secondary addresses.
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Prefixes.
    pub prefixes: Vec<Prefix28>,
    /// IPv6 /80 prefixes.
    pub ipv6_prefixes: Vec<Prefix80>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// The node's instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// Id.
    pub id: InstanceId,
    /// Instance type.
    pub instance_type: String,
    /// Subnet of the primary ENI.
    pub subnet: SubnetId,
    /// VPC.
    pub vpc: String,
    /// Security groups of the primary ENI.
    pub security_groups: Vec<String>,
    /// The primary ENI.
    pub primary_eni: EniId,
}

/// A subnet's free space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetInfo {
    /// Id.
    pub id: SubnetId,
    /// CIDR.
    pub cidr: String,
    /// AvailableIpAddressCount.
    pub available: u32,
    /// Its associated IPv6 CIDR blocks (a /64 when it has one).
    pub ipv6_cidrs: Vec<ipnet::Ipv6Net>,
}

/// An instance type's network limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeLimits {
    /// MaximumNetworkInterfaces.
    pub max_enis: u32,
    /// Ipv4AddressesPerInterface.
    pub ipv4_per_eni: u32,
    /// Nitro or bare metal.
    pub supports_prefixes: bool,
    /// Default vCPUs (for max pods), when known.
    pub vcpus: u32,
}

/// A CreateNetworkInterface request.
#[derive(Debug, Clone)]
pub struct NewEni {
    /// Subnet.
    pub subnet: SubnetId,
    /// Security groups.
    pub security_groups: Vec<String>,
    /// Description.
    pub description: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Ipv4PrefixCount.
    pub prefixes: u32,
    /// SecondaryPrivateIpAddressCount.
    pub secondary_ips: u32,
}

/// EC2 as the agent uses it. Every method is one API call (paginated Describes aside).
pub trait Ec2: Send + Sync + 'static {
    /// DescribeInstances for one instance.
    fn describe_instance(
        &self,
        id: &InstanceId,
    ) -> impl Future<Output = Result<InstanceInfo, Ec2Error>> + Send;
    /// DescribeInstanceTypes for one type.
    fn describe_instance_type(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<TypeLimits, Ec2Error>> + Send;
    /// DescribeSubnets.
    fn describe_subnets(
        &self,
        ids: &[SubnetId],
    ) -> impl Future<Output = Result<Vec<SubnetInfo>, Ec2Error>> + Send;
    /// DescribeVpcs for one VPC: its associated IPv4 CIDR blocks (the primary and any
    /// secondary ones), which pod traffic reaches without SNAT.
    fn describe_vpc_cidrs(
        &self,
        vpc: &str,
    ) -> impl Future<Output = Result<Vec<ipnet::Ipv4Net>, Ec2Error>> + Send;
    /// DescribeNetworkInterfaces attached to `instance`, every page.
    fn describe_node_enis(
        &self,
        instance: &InstanceId,
    ) -> impl Future<Output = Result<Vec<EniInfo>, Ec2Error>> + Send;
    /// DescribeNetworkInterfaces that are `available` and carry the agent's instance tag.
    fn describe_detached_tagged_enis(
        &self,
        cluster: Option<&str>,
    ) -> impl Future<Output = Result<Vec<EniInfo>, Ec2Error>> + Send;
    /// AssignPrivateIpAddresses with Ipv4PrefixCount.
    fn assign_prefixes(
        &self,
        eni: &EniId,
        count: u32,
    ) -> impl Future<Output = Result<Vec<Prefix28>, Ec2Error>> + Send;
    /// AssignPrivateIpAddresses with SecondaryPrivateIpAddressCount.
    fn assign_secondary_ips(
        &self,
        eni: &EniId,
        count: u32,
    ) -> impl Future<Output = Result<Vec<Ipv4Addr>, Ec2Error>> + Send;
    /// AssignIpv6Addresses with Ipv6PrefixCount=1: the node's /80.
    fn assign_ipv6_prefix(
        &self,
        eni: &EniId,
    ) -> impl Future<Output = Result<Vec<Prefix80>, Ec2Error>> + Send;
    /// UnassignPrivateIpAddresses.
    fn unassign(
        &self,
        eni: &EniId,
        prefixes: &[Prefix28],
        ips: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    /// CreateNetworkInterface.
    fn create_eni(&self, req: &NewEni) -> impl Future<Output = Result<EniInfo, Ec2Error>> + Send;
    /// AttachNetworkInterface (network card 0); returns the attachment id.
    fn attach_eni(
        &self,
        eni: &EniId,
        instance: &InstanceId,
        device_index: u32,
    ) -> impl Future<Output = Result<String, Ec2Error>> + Send;
    /// ModifyNetworkInterfaceAttribute Attachment.DeleteOnTermination=true.
    fn set_delete_on_termination(
        &self,
        eni: &EniId,
        attachment_id: &str,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    /// DetachNetworkInterface.
    fn detach_eni(&self, attachment_id: &str) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    /// DeleteNetworkInterface.
    fn delete_eni(&self, eni: &EniId) -> impl Future<Output = Result<(), Ec2Error>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(
            ErrorClass::of("RequestLimitExceeded", Some(503)),
            ErrorClass::Throttled
        );
        assert_eq!(
            ErrorClass::of("InsufficientCidrBlocks", Some(400)),
            ErrorClass::InsufficientCidr
        );
        assert_eq!(
            ErrorClass::of("PrivateIpAddressLimitExceeded", None),
            ErrorClass::LimitExceeded
        );
        assert_eq!(
            ErrorClass::of("InvalidNetworkInterfaceID.NotFound", None),
            ErrorClass::NotFound
        );
        assert_eq!(
            ErrorClass::of("UnauthorizedOperation", Some(403)),
            ErrorClass::Unauthorized
        );
        assert_eq!(ErrorClass::of("Whatever", Some(502)), ErrorClass::Transient);
        assert_eq!(
            ErrorClass::of("InvalidParameterValue", Some(400)),
            ErrorClass::Fatal
        );
    }
}
