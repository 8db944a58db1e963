//! Instance actions: DescribeInstances, DescribeInstanceTypes, RunInstances,
//! TerminateInstances.

use super::eni::eni_xml;
use super::{
    FieldFn, check_known, matches_all, missing, next_token, one, paginate, select, state_xml,
    tag_field, tags_xml, time,
};
use crate::core::instance_types::{self, InstanceTypeInfo};
use crate::mock::ApiError;
use crate::mock::model::{Instance, Model};
use crate::mock::wire::{Params, Xml};

fn instance_field<'a>(i: &'a Instance, model: &'a Model) -> Box<FieldFn<'a>> {
    Box::new(move |name: &str| {
        if let Some(t) = tag_field(&i.tags, name) {
            return t;
        }
        match name {
            "instance-id" => one(&i.id),
            "instance-state-name" => one(if i.running { "running" } else { "terminated" }),
            "instance-type" => one(&i.itype.name),
            "subnet-id" => one(&i.subnet),
            "vpc-id" => one(&i.vpc),
            "availability-zone" => one(&i.az),
            "network-interface.network-interface-id" => {
                Some(model.enis_of(&i.id).iter().map(|e| e.id.clone()).collect())
            }
            _ => None,
        }
    })
}

fn instance_xml(x: &mut Xml, i: &Instance, model: &Model, now_ms: u64) {
    let primary_ip = model.enis.get(&i.primary_eni).map(|e| e.primary_ip);
    x.leaf("instanceId", &i.id).leaf("imageId", &i.image);
    state_xml(x, "instanceState", i.running);
    x.leaf("reason", "")
        .leaf("amiLaunchIndex", 0)
        .leaf("instanceType", &i.itype.name)
        .leaf("launchTime", time(i.launched))
        .node("placement", |x| {
            x.leaf("availabilityZone", &i.az).leaf("tenancy", "default");
        })
        .node("monitoring", |x| {
            x.leaf("state", "disabled");
        });
    if i.running {
        x.leaf("subnetId", &i.subnet).leaf("vpcId", &i.vpc);
        if let Some(ip) = primary_ip {
            x.leaf("privateIpAddress", ip);
        }
    }
    x.leaf("sourceDestCheck", true);
    x.set("groupSet", &i.sgs, |x, g| {
        x.leaf("groupId", g).leaf("groupName", g);
    });
    x.leaf("architecture", "x86_64")
        .leaf("rootDeviceType", "ebs")
        .leaf("virtualizationType", "hvm");
    let account = &model.account;
    x.set("networkInterfaceSet", model.enis_of(&i.id), |x, e| {
        eni_xml(x, e, account, now_ms)
    });
    tags_xml(x, &i.tags);
}

pub(super) fn describe(
    model: &Model,
    caller: &str,
    p: &Params,
    x: &mut Xml,
    now_ms: u64,
) -> Result<(), ApiError> {
    let ids = p.list("InstanceId");
    check_known(&ids, "i-", "InvalidInstanceID", "instance", |id| {
        model.instances.contains_key(id)
    })?;
    let (page, next) = select(
        p,
        model
            .instances
            .values()
            .filter(|i| model.owner_of(&i.vpc) == caller),
        &ids,
        |i| &i.id,
        |i| instance_field(i, model),
    )?;
    x.set("reservationSet", page, |x, i| {
        x.leaf("reservationId", format!("r-{}", &i.id[2..]))
            .leaf("ownerId", caller)
            .open("groupSet")
            .close("groupSet");
        x.set("instancesSet", [i], |x, i| {
            instance_xml(x, i, model, now_ms)
        });
    });
    next_token(x, next);
    Ok(())
}

pub(super) fn run(model: &mut Model, p: &Params, x: &mut Xml, now_ms: u64) -> Result<(), ApiError> {
    let itype = p.get("InstanceType").unwrap_or("m5.large");
    let subnet = p.required("SubnetId")?;
    let image = p.get("ImageId").unwrap_or("ami-00000000").to_owned();
    let min = p.int("MinCount")?.unwrap_or(1);
    let max = p.int("MaxCount")?.unwrap_or(min).max(min);
    if min == 0 || max > 100 {
        return Err(ApiError::client(
            "InvalidParameterValue",
            "MinCount must be at least 1 and MaxCount at most 100 in the mock.",
        ));
    }
    let sgs = p.list("SecurityGroupId");
    let mut ids = Vec::new();
    for _ in 0..max {
        ids.push(model.run_instance(itype, subnet, sgs.clone(), image.clone(), now_ms)?);
    }
    let tags = p.tag_specs("instance")?;
    if !tags.is_empty() {
        model.create_tags(&ids, &tags)?;
    }
    let rid = model.next_id("r-");
    x.leaf("reservationId", rid)
        .leaf("ownerId", &model.account)
        .open("groupSet")
        .close("groupSet");
    let insts: Vec<&Instance> = ids.iter().map(|i| &model.instances[i]).collect();
    x.set("instancesSet", insts, |x, i| {
        instance_xml(x, i, model, now_ms)
    });
    Ok(())
}

pub(super) fn describe_types(p: &Params, x: &mut Xml) -> Result<(), ApiError> {
    let names = p.list("InstanceType");
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| instance_types::lookup(n).is_none())
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::client(
            "InvalidInstanceType",
            format!(
                "The following supplied instance types do not exist: [{}]",
                unknown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let filters = p.filters()?;
    let mut all: Vec<&InstanceTypeInfo> = if names.is_empty() {
        instance_types::all().values().collect()
    } else {
        names
            .iter()
            .filter_map(|n| instance_types::lookup(n))
            .collect()
    };
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    for t in all {
        let field = |name: &str| match name {
            "instance-type" => one(&t.name),
            "hypervisor" => one(&t.hypervisor),
            "bare-metal" => one(t.bare_metal),
            _ => None,
        };
        if matches_all(&filters, field)? {
            out.push(t);
        }
    }
    // DescribeInstanceTypes pages 5 to 100 (EC2's service model: DITMaxResults).
    let (page, next) = paginate(p, out, false, (5, 100))?;
    x.set("instanceTypeSet", page, |x, t| {
        x.leaf("instanceType", &t.name)
            .leaf("currentGeneration", true)
            .leaf("bareMetal", t.bare_metal);
        if !t.hypervisor.is_empty() {
            x.leaf("hypervisor", &t.hypervisor);
        }
        x.node("vCpuInfo", |x| {
            x.leaf("defaultVCpus", t.vcpus);
        });
        x.node("networkInfo", |x| {
            x.leaf("maximumNetworkInterfaces", t.max_enis)
                .leaf("maximumNetworkCards", t.max_cards)
                .leaf("defaultNetworkCardIndex", 0);
            let per_card = t.max_enis / t.max_cards.max(1);
            x.set("networkCards", 0..t.max_cards, |x, c| {
                x.leaf("networkCardIndex", c)
                    .leaf("maximumNetworkInterfaces", per_card);
            });
            x.leaf("ipv4AddressesPerInterface", t.ipv4_per_eni)
                .leaf("ipv6AddressesPerInterface", t.ipv6_per_eni)
                .leaf("ipv6Supported", true);
        });
    });
    next_token(x, next);
    Ok(())
}

pub(super) fn terminate(model: &mut Model, p: &Params, x: &mut Xml) -> Result<(), ApiError> {
    let ids = p.list("InstanceId");
    if ids.is_empty() {
        return Err(missing("InstanceId"));
    }
    let done = model.terminate(&ids)?;
    x.set("instancesSet", done, |x, (id, was_running)| {
        x.leaf("instanceId", id);
        state_xml(x, "currentState", false);
        state_xml(x, "previousState", was_running);
    });
    Ok(())
}
