//! Instances: RunInstances with a primary ENI, TerminateInstances.

use std::time::SystemTime;

use super::{Attachment, IpRequest, Model, Tags, check_id, not_found};
use crate::core::instance_types::{self, InstanceTypeInfo};
use crate::mock::ApiError;

/// An instance.
#[derive(Debug, Clone)]
pub struct Instance {
    /// i-…
    pub id: String,
    /// Its type's limits.
    pub itype: &'static InstanceTypeInfo,
    /// Subnet of the primary ENI.
    pub subnet: String,
    /// VPC.
    pub vpc: String,
    /// Availability zone.
    pub az: String,
    /// Security groups of the primary ENI.
    pub sgs: Vec<String>,
    /// running or terminated.
    pub running: bool,
    /// The primary ENI (device index 0).
    pub primary_eni: String,
    /// Launch time.
    pub launched: SystemTime,
    /// Image id.
    pub image: String,
    /// Tags.
    pub tags: Tags,
}

impl Model {
    // ---- instances -----------------------------------------------------------------------

    /// RunInstances for one instance: its primary ENI at device index 0.
    pub fn run_instance(
        &mut self,
        itype: &str,
        subnet: &str,
        sgs: Vec<String>,
        image: String,
        now_ms: u64,
    ) -> Result<String, ApiError> {
        let info = instance_types::lookup(itype).ok_or_else(|| {
            ApiError::client(
                "InvalidParameterValue",
                format!("Invalid value '{itype}' for InstanceType."),
            )
        })?;
        let (vpc, az) = {
            let s = self.subnet(subnet)?;
            (s.vpc.clone(), s.az.clone())
        };
        let sgs = if sgs.is_empty() {
            vec![self.vpcs[&vpc].default_sg.clone()]
        } else {
            sgs
        };
        let id = self.next_id("i-");
        let eni = self.create_eni(
            subnet,
            sgs.clone(),
            "Primary network interface".into(),
            None,
            IpRequest::default(),
            Tags::new(),
        )?;
        let att = self.next_id("eni-attach-");
        self.set_attachment(
            &eni,
            Some(Attachment {
                id: att,
                instance: id.clone(),
                device_index: 0,
                card_index: 0,
                attached_at_ms: now_ms,
                ready_at_ms: now_ms,
                attach_time: SystemTime::now(),
                delete_on_termination: true,
            }),
        );
        self.instances.insert(
            id.clone(),
            Instance {
                id: id.clone(),
                itype: info,
                subnet: subnet.to_owned(),
                vpc,
                az,
                sgs,
                running: true,
                primary_eni: eni,
                launched: SystemTime::now(),
                image,
                tags: Tags::new(),
            },
        );
        Ok(id)
    }

    pub(super) fn instance(&self, id: &str) -> Result<&Instance, ApiError> {
        check_id(id, "i-", "InvalidInstanceID.Malformed")?;
        self.instances
            .get(id)
            .ok_or_else(|| not_found("InvalidInstanceID.NotFound", "instance", id))
    }

    /// TerminateInstances: DeleteOnTermination ENIs are deleted, the others detached.
    pub fn terminate(&mut self, ids: &[String]) -> Result<Vec<(String, bool)>, ApiError> {
        for id in ids {
            self.instance(id)?;
        }
        let mut out = Vec::new();
        for id in ids {
            let was_running = self.instances[id].running;
            let attached: Vec<String> = self.enis_of(id).iter().map(|e| e.id.clone()).collect();
            for eni in attached {
                let delete = self.enis[&eni]
                    .attachment
                    .as_ref()
                    .is_some_and(|a| a.delete_on_termination);
                self.set_attachment(&eni, None);
                if delete {
                    self.delete_eni(&eni)?;
                }
            }
            self.instances.get_mut(id).expect("checked").running = false;
            out.push((id.clone(), was_running));
        }
        Ok(out)
    }
}
