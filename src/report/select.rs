//! Which subnets are the cluster's: the ones given, the ones tagged for a cluster
//! (`kubernetes.io/cluster/NAME`), or — on a node — the node's own and POD_SUBNET_IDS.

use super::ReportError;
use crate::core::{InstanceId, SubnetId};
use crate::ec2::read::{Ec2Read, SubnetQuery, SubnetRecord};

/// How the subnets are chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// `--subnet ID`, repeatable.
    Given(Vec<SubnetId>),
    /// `--cluster NAME`: the subnets tagged `kubernetes.io/cluster/NAME`.
    Cluster(String),
    /// The node's own subnet (its instance from INSTANCE_ID, else IMDS) and POD_SUBNET_IDS.
    Node {
        /// INSTANCE_ID, when set.
        instance: Option<InstanceId>,
        /// POD_SUBNET_IDS.
        pod_subnets: Vec<SubnetId>,
    },
}

/// The chosen subnets, with how they were found and the node's instance type when known.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// The subnets, in the order given (or EC2's).
    pub subnets: Vec<SubnetRecord>,
    /// Pod subnets among them (POD_SUBNET_IDS).
    pub pod_subnets: Vec<SubnetId>,
    /// How they were found, for the report.
    pub how: String,
    /// The node's instance type, when the selection came from a node.
    pub node_type: Option<String>,
}

/// Reads the subnets `sel` names.
pub async fn subnets<E: Ec2Read>(ec2: &E, sel: &Selection) -> Result<Chosen, ReportError> {
    let (query, how, pod_subnets, node_type) = match sel {
        Selection::Given(ids) => (
            SubnetQuery::Ids(ids.clone()),
            "--subnet".to_owned(),
            Vec::new(),
            None,
        ),
        Selection::Cluster(name) => (
            SubnetQuery::TagKey(format!("kubernetes.io/cluster/{name}")),
            format!("tagged kubernetes.io/cluster/{name}"),
            Vec::new(),
            None,
        ),
        Selection::Node {
            instance,
            pod_subnets,
        } => {
            let id =
                match instance {
                    Some(i) => i.clone(),
                    None => crate::imds::identify()
                        .await
                        .map_err(|e| {
                            ReportError::Input(format!(
                                "no subnets given and the node is unknown: {e}; give --subnet or \
                             --cluster, or run on a node"
                            ))
                        })?
                        .instance,
                };
            let inst = ec2.instance(&id).await?;
            let mut ids = vec![inst.subnet.clone()];
            ids.extend(pod_subnets.iter().filter(|s| **s != inst.subnet).cloned());
            (
                SubnetQuery::Ids(ids),
                format!("node {id} and POD_SUBNET_IDS"),
                pod_subnets.clone(),
                Some(inst.instance_type),
            )
        }
    };
    let mut subnets = ec2.subnets(&query).await?;
    if let SubnetQuery::Ids(ids) = &query {
        subnets.sort_by_key(|s| ids.iter().position(|i| *i == s.id));
    }
    if subnets.is_empty() {
        return Err(ReportError::Input(match sel {
            Selection::Cluster(name) => format!(
                "no subnet is tagged kubernetes.io/cluster/{name}: tag the cluster's subnets, or \
                 give them with --subnet"
            ),
            _ => "EC2 knows none of the subnets given".to_owned(),
        }));
    }
    Ok(Chosen {
        subnets,
        pod_subnets,
        how,
        node_type,
    })
}
