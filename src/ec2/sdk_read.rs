//! [`Ec2Read`] over aws-sdk-ec2, for the reports: one-shot read-only tools, so the SDK's
//! `standard` retries are on (3 attempts with backoff: a throttled Describe is retried before
//! it is reported), every Describe is paged to its end, and errors are classified by the same
//! function as the agent's ([`super::sdk::classify`]).

use std::future::Future;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{InstanceType, Route, RouteTable, Subnet, VpcPeeringConnectionVpcInfo};

use super::read::{
    Ec2Read, EniRecord, PeerSide, PeeringRecord, PrefixListRecord, ReservationRecord,
    ReservationType, RouteDestination, RouteRecord, RouteTableRecord, SubnetQuery, SubnetRecord,
    TargetKind, VpcCidr, VpcRecord,
};
use super::sdk::{bad_response, classify, filter, instance_info, type_limits};
use super::{Action, Ec2Error, InstanceInfo, RetryPolicy, TypeLimits};
use crate::core::{InstanceId, SubnetId};

/// The reports' EC2 client.
#[derive(Clone)]
pub struct SdkRead {
    client: aws_sdk_ec2::Client,
}

impl SdkRead {
    /// A client from aws-config's environment (AWS_REGION, credentials, AWS_ENDPOINT_URL...),
    /// retrying as the SDKs' `standard` mode does.
    pub async fn from_env() -> Self {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        Self::new(aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&conf)
                .retry_config(super::sdk::retry_config(RetryPolicy::STANDARD))
                .build(),
        ))
    }

    /// Wraps a client.
    pub fn new(client: aws_sdk_ec2::Client) -> Self {
        Self { client }
    }
}

async fn call<T, E, Fut>(action: Action, fut: Fut) -> Result<T, Ec2Error>
where
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let r = fut.await.map_err(|e| classify(action, e));
    if let Err(e) = &r {
        tracing::debug!(%action, code = %e.code, class = e.class.as_str(), "EC2 read failed");
    }
    r
}

/// Calls `page(token)` until EC2 gives no next token; `items` takes a page apart into its
/// items and next token.
async fn paged<T, P, Fut>(
    mut page: impl FnMut(Option<String>) -> Fut,
    mut items: impl FnMut(P) -> (Vec<T>, Option<String>),
) -> Result<Vec<T>, Ec2Error>
where
    Fut: Future<Output = Result<P, Ec2Error>>,
{
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let (mut got, next) = items(page(token).await?);
        out.append(&mut got);
        match next.filter(|t| !t.is_empty()) {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

fn next(t: Option<&str>) -> Option<String> {
    t.map(str::to_owned)
}

fn subnet_record(s: &Subnet) -> Option<SubnetRecord> {
    Some(SubnetRecord {
        id: s.subnet_id()?.parse().ok()?,
        vpc: s.vpc_id().unwrap_or_default().to_owned(),
        cidr: s.cidr_block()?.parse().ok()?,
        az: s.availability_zone().unwrap_or_default().to_owned(),
        available: s.available_ip_address_count().unwrap_or(0).max(0) as u32,
        name: s
            .tags()
            .iter()
            .find(|t| t.key() == Some("Name"))
            .and_then(|t| t.value())
            .map(str::to_owned),
    })
}

fn peer_side(v: Option<&VpcPeeringConnectionVpcInfo>) -> PeerSide {
    let mut cidrs: Vec<ipnet::Ipv4Net> = v
        .map(|v| {
            v.cidr_block_set()
                .iter()
                .filter_map(|c| c.cidr_block()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if let Some(c) = v.and_then(|v| v.cidr_block()?.parse().ok())
        && !cidrs.contains(&c)
    {
        cidrs.insert(0, c);
    }
    PeerSide {
        vpc: v.and_then(|v| v.vpc_id()).unwrap_or_default().to_owned(),
        owner: v.and_then(|v| v.owner_id()).unwrap_or_default().to_owned(),
        region: v.and_then(|v| v.region()).unwrap_or_default().to_owned(),
        cidrs,
        ipv6: v
            .map(|v| {
                v.ipv6_cidr_block_set()
                    .iter()
                    .filter_map(|c| c.ipv6_cidr_block()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn route_record(r: &Route) -> Option<RouteRecord> {
    let destination = if let Some(c) = r.destination_cidr_block() {
        RouteDestination::Cidr(c.parse().ok()?)
    } else if let Some(c) = r.destination_ipv6_cidr_block() {
        RouteDestination::Ipv6(c.parse().ok()?)
    } else {
        RouteDestination::PrefixList(r.destination_prefix_list_id()?.to_owned())
    };
    let (target_kind, target) = if let Some(g) = r.gateway_id() {
        let kind = match g {
            "local" => TargetKind::Local,
            g if g.starts_with("igw-") => TargetKind::InternetGateway,
            g if g.starts_with("vgw-") => TargetKind::VpnGateway,
            _ => TargetKind::Other,
        };
        (kind, g)
    } else if let Some(p) = r.vpc_peering_connection_id() {
        (TargetKind::Peering, p)
    } else if let Some(t) = r.transit_gateway_id() {
        (TargetKind::TransitGateway, t)
    } else if let Some(n) = r.nat_gateway_id() {
        (TargetKind::NatGateway, n)
    } else if let Some(e) = r.network_interface_id().or(r.instance_id()) {
        (TargetKind::Interface, e)
    } else {
        let other = r
            .local_gateway_id()
            .or(r.carrier_gateway_id())
            .or(r.core_network_arn())
            .or(r.egress_only_internet_gateway_id())
            .unwrap_or("unknown");
        (TargetKind::Other, other)
    };
    Some(RouteRecord {
        destination,
        target_kind,
        target: target.to_owned(),
        state: r
            .state()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|| "active".into()),
    })
}

fn route_table_record(t: &RouteTable) -> Option<RouteTableRecord> {
    Some(RouteTableRecord {
        id: t.route_table_id()?.to_owned(),
        vpc: t.vpc_id().unwrap_or_default().to_owned(),
        main: t.associations().iter().any(|a| a.main() == Some(true)),
        subnets: t
            .associations()
            .iter()
            .filter(|a| {
                a.association_state()
                    .and_then(|s| s.state())
                    .is_none_or(|s| matches!(s.as_str(), "associated" | "associating"))
            })
            .filter_map(|a| a.subnet_id()?.parse().ok())
            .collect(),
        routes: t.routes().iter().filter_map(route_record).collect(),
    })
}

impl Ec2Read for SdkRead {
    async fn instance(&self, id: &InstanceId) -> Result<InstanceInfo, Ec2Error> {
        let r = call(
            Action::DescribeInstances,
            self.client
                .describe_instances()
                .instance_ids(id.as_str())
                .send(),
        )
        .await?;
        instance_info(id, &r)
    }

    async fn instance_type(&self, name: &str) -> Result<TypeLimits, Ec2Error> {
        let r = call(
            Action::DescribeInstanceTypes,
            self.client
                .describe_instance_types()
                .instance_types(InstanceType::from(name))
                .send(),
        )
        .await?;
        type_limits(&r)
    }

    async fn subnets(&self, q: &SubnetQuery) -> Result<Vec<SubnetRecord>, Ec2Error> {
        const A: Action = Action::DescribeSubnets;
        if let SubnetQuery::Ids(ids) = q {
            // Ids and MaxResults do not go together; EC2 answers every named one at once.
            let r = call(
                A,
                self.client
                    .describe_subnets()
                    .set_subnet_ids(Some(ids.iter().map(|s| s.to_string()).collect()))
                    .send(),
            )
            .await?;
            return Ok(r.subnets().iter().filter_map(subnet_record).collect());
        }
        let f = match q {
            SubnetQuery::TagKey(k) => filter("tag-key", k),
            SubnetQuery::Vpc(v) => filter("vpc-id", v),
            SubnetQuery::Ids(_) => unreachable!("handled above"),
        };
        paged(
            |token| {
                call(
                    A,
                    self.client
                        .describe_subnets()
                        .filters(f.clone())
                        .max_results(1000)
                        .set_next_token(token)
                        .send(),
                )
            },
            |p| {
                (
                    p.subnets().iter().filter_map(subnet_record).collect(),
                    next(p.next_token()),
                )
            },
        )
        .await
        .map(|v: Vec<SubnetRecord>| match q {
            SubnetQuery::Vpc(vpc) => v.into_iter().filter(|s| &s.vpc == vpc).collect(),
            _ => v,
        })
    }

    async fn reservations(&self, subnet: &SubnetId) -> Result<Vec<ReservationRecord>, Ec2Error> {
        const A: Action = Action::GetSubnetCidrReservations;
        paged(
            |token| {
                call(
                    A,
                    self.client
                        .get_subnet_cidr_reservations()
                        .subnet_id(subnet.as_str())
                        .max_results(1000)
                        .set_next_token(token)
                        .send(),
                )
            },
            |p| {
                let items = p
                    .subnet_ipv4_cidr_reservations()
                    .iter()
                    .filter_map(|r| {
                        Some(ReservationRecord {
                            id: r
                                .subnet_cidr_reservation_id()
                                .unwrap_or_default()
                                .to_owned(),
                            cidr: r.cidr()?.parse().ok()?,
                            kind: match r.reservation_type()?.as_str() {
                                "prefix" => ReservationType::Prefix,
                                _ => ReservationType::Explicit,
                            },
                        })
                    })
                    .collect();
                (items, next(p.next_token()))
            },
        )
        .await
    }

    async fn subnet_enis(&self, subnet: &SubnetId) -> Result<Vec<EniRecord>, Ec2Error> {
        const A: Action = Action::DescribeNetworkInterfaces;
        paged(
            |token| {
                call(
                    A,
                    self.client
                        .describe_network_interfaces()
                        .filters(filter("subnet-id", subnet.as_str()))
                        .max_results(1000)
                        .set_next_token(token)
                        .send(),
                )
            },
            |p| {
                let items = p
                    .network_interfaces()
                    .iter()
                    .filter_map(|n| {
                        let mut addresses: Vec<std::net::Ipv4Addr> = n
                            .private_ip_addresses()
                            .iter()
                            .filter_map(|a| a.private_ip_address()?.parse().ok())
                            .collect();
                        if let Some(a) = n.private_ip_address().and_then(|a| a.parse().ok())
                            && !addresses.contains(&a)
                        {
                            addresses.insert(0, a);
                        }
                        Some(EniRecord {
                            id: n.network_interface_id()?.parse().ok()?,
                            subnet: n.subnet_id()?.parse().ok()?,
                            addresses,
                            prefixes: n
                                .ipv4_prefixes()
                                .iter()
                                .filter_map(|p| p.ipv4_prefix()?.parse().ok())
                                .collect(),
                            instance: n
                                .attachment()
                                .and_then(|a| a.instance_id())
                                .and_then(|i| i.parse().ok()),
                            interface_type: n
                                .interface_type()
                                .map(|t| t.as_str().to_owned())
                                .unwrap_or_else(|| "interface".into()),
                            requester_managed: n.requester_managed() == Some(true),
                            description: n.description().unwrap_or_default().to_owned(),
                        })
                    })
                    .collect();
                (items, next(p.next_token()))
            },
        )
        .await
        .map(|v: Vec<EniRecord>| v.into_iter().filter(|e| &e.subnet == subnet).collect())
    }

    async fn vpcs(&self, ids: &[String]) -> Result<Vec<VpcRecord>, Ec2Error> {
        const A: Action = Action::DescribeVpcs;
        let r = call(
            A,
            self.client
                .describe_vpcs()
                .set_vpc_ids(Some(ids.to_vec()))
                .send(),
        )
        .await?;
        r.vpcs()
            .iter()
            .map(|v| {
                let primary: ipnet::Ipv4Net = v
                    .cidr_block()
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| bad_response(A, "CidrBlock"))?;
                let mut cidrs: Vec<VpcCidr> = v
                    .cidr_block_association_set()
                    .iter()
                    .filter_map(|a| {
                        Some(VpcCidr {
                            cidr: a.cidr_block()?.parse().ok()?,
                            state: a
                                .cidr_block_state()
                                .and_then(|s| s.state())
                                .map(|s| s.as_str().to_owned())
                                .unwrap_or_else(|| "associated".into()),
                        })
                    })
                    .collect();
                if !cidrs.iter().any(|c| c.cidr == primary) {
                    cidrs.insert(
                        0,
                        VpcCidr {
                            cidr: primary,
                            state: "associated".into(),
                        },
                    );
                }
                Ok(VpcRecord {
                    id: v.vpc_id().unwrap_or_default().to_owned(),
                    owner: v.owner_id().unwrap_or_default().to_owned(),
                    primary,
                    cidrs,
                    ipv6: v
                        .ipv6_cidr_block_association_set()
                        .iter()
                        .filter_map(|a| a.ipv6_cidr_block()?.parse().ok())
                        .collect(),
                })
            })
            .collect()
    }

    async fn peerings(&self, vpc: &str) -> Result<Vec<PeeringRecord>, Ec2Error> {
        const A: Action = Action::DescribeVpcPeeringConnections;
        let mut out: Vec<PeeringRecord> = Vec::new();
        for side in ["requester-vpc-info.vpc-id", "accepter-vpc-info.vpc-id"] {
            let got = paged(
                |token| {
                    call(
                        A,
                        self.client
                            .describe_vpc_peering_connections()
                            .filters(filter(side, vpc))
                            .max_results(1000)
                            .set_next_token(token)
                            .send(),
                    )
                },
                |p| {
                    let items = p
                        .vpc_peering_connections()
                        .iter()
                        .filter_map(|c| {
                            Some(PeeringRecord {
                                id: c.vpc_peering_connection_id()?.to_owned(),
                                status: c
                                    .status()
                                    .and_then(|s| s.code())
                                    .map(|s| s.as_str().to_owned())
                                    .unwrap_or_default(),
                                requester: peer_side(c.requester_vpc_info()),
                                accepter: peer_side(c.accepter_vpc_info()),
                            })
                        })
                        .collect();
                    (items, next(p.next_token()))
                },
            )
            .await?;
            for p in got {
                let ours = p.requester.vpc == vpc || p.accepter.vpc == vpc;
                if ours && !out.iter().any(|o| o.id == p.id) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    async fn route_tables(&self, vpc: &str) -> Result<Vec<RouteTableRecord>, Ec2Error> {
        paged(
            |token| {
                call(
                    Action::DescribeRouteTables,
                    self.client
                        .describe_route_tables()
                        .filters(filter("vpc-id", vpc))
                        .max_results(100)
                        .set_next_token(token)
                        .send(),
                )
            },
            |p| {
                (
                    p.route_tables()
                        .iter()
                        .filter_map(route_table_record)
                        .filter(|t| t.vpc == vpc)
                        .collect(),
                    next(p.next_token()),
                )
            },
        )
        .await
    }

    async fn prefix_list(&self, id: &str) -> Result<PrefixListRecord, Ec2Error> {
        const D: Action = Action::DescribeManagedPrefixLists;
        let r = call(
            D,
            self.client
                .describe_managed_prefix_lists()
                .prefix_list_ids(id)
                .send(),
        )
        .await?;
        let name = r
            .prefix_lists()
            .first()
            .ok_or_else(|| bad_response(D, "prefix list"))?
            .prefix_list_name()
            .unwrap_or_default()
            .to_owned();
        let entries = paged(
            |token| {
                call(
                    Action::GetManagedPrefixListEntries,
                    self.client
                        .get_managed_prefix_list_entries()
                        .prefix_list_id(id)
                        .max_results(100)
                        .set_next_token(token)
                        .send(),
                )
            },
            |p| {
                (
                    p.entries()
                        .iter()
                        .filter_map(|e| e.cidr()?.parse().ok())
                        .collect(),
                    next(p.next_token()),
                )
            },
        )
        .await?;
        Ok(PrefixListRecord {
            id: id.to_owned(),
            name,
            entries,
        })
    }
}
