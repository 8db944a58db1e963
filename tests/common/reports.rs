//! The reports' scenarios, set up with the aws CLI against any EC2 endpoint (the mock or
//! LocalStack), and `prefixd` run against it.

use std::process::Command;

use serde_json::Value;

use super::awscli::Aws;

/// A finished `prefixd` run.
pub struct Run {
    /// Its exit code.
    pub code: i32,
    /// Its stdout.
    pub out: String,
    /// Its stderr.
    pub err: String,
}

impl Run {
    /// Its stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.out)
            .unwrap_or_else(|e| panic!("{e}: {}\nstderr: {}", self.out, self.err))
    }
}

/// Runs `prefixd ARGS…` against the EC2 at `endpoint` with the default account's credentials
/// (`test`), the process environment cleared but for PATH and `env`.
pub fn prefixd(endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prefixd"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-west-2")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run prefixd");
    Run {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The string at `path` in `v`.
pub fn id(v: &Value, path: &[&str]) -> String {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_str()
        .unwrap_or_else(|| panic!("{path:?} in {v}"))
        .to_owned()
}

/// Three accounts. The cluster's (default): VPC 10.0.0.0/16 with 100.64.0.0/16 added, a
/// cluster subnet 10.0.0.0/20 on its own route table and a pod subnet 100.64.0.0/20 on the
/// main one, both tagged for the cluster. The peer account: 172.20.0.0/16 (peered, routed)
/// and 10.99.0.0/16 (peered, routed, then the peering deleted: a blackhole). The other account:
/// 172.17.0.0/16 (peered, not routed). A prefix list `onprem` (100.64.0.0/10, 192.168.0.0/16)
/// routed to a transit gateway, and the internet through an internet gateway.
pub struct Peered {
    pub vpc: String,
    pub cluster_subnet: String,
    pub pod_subnet: String,
    pub table: String,
    pub main_table: String,
    pub pcx_b: String,
    pub pcx_c: String,
    pub pcx_d: String,
    pub tgw: String,
    pub pl: String,
}

/// Sets it up with the aws CLI as `a` (the cluster's account), `b` (account `b_id`) and `c`
/// (account `c_id`), the subnets tagged for cluster `cluster`.
pub fn peered_accounts(
    a: &Aws,
    (b, b_id): (&Aws, &str),
    (c, c_id): (&Aws, &str),
    cluster: &str,
) -> Peered {
    let tags =
        format!("ResourceType=subnet,Tags=[{{Key=kubernetes.io/cluster/{cluster},Value=owned}}]");
    let vpc = id(
        &a.ok(&["create-vpc", "--cidr-block", "10.0.0.0/16"]),
        &["Vpc", "VpcId"],
    );
    a.ok(&[
        "associate-vpc-cidr-block",
        "--vpc-id",
        &vpc,
        "--cidr-block",
        "100.64.0.0/16",
    ]);
    let cluster_subnet = id(
        &a.ok(&[
            "create-subnet",
            "--vpc-id",
            &vpc,
            "--cidr-block",
            "10.0.0.0/20",
            "--tag-specifications",
            &tags,
        ]),
        &["Subnet", "SubnetId"],
    );
    let pod_subnet = id(
        &a.ok(&[
            "create-subnet",
            "--vpc-id",
            &vpc,
            "--cidr-block",
            "100.64.0.0/20",
            "--tag-specifications",
            &tags,
        ]),
        &["Subnet", "SubnetId"],
    );
    let vpc_b = id(
        &b.ok(&["create-vpc", "--cidr-block", "172.20.0.0/16"]),
        &["Vpc", "VpcId"],
    );
    let vpc_d = id(
        &b.ok(&["create-vpc", "--cidr-block", "10.99.0.0/16"]),
        &["Vpc", "VpcId"],
    );
    let vpc_c = id(
        &c.ok(&["create-vpc", "--cidr-block", "172.17.0.0/16"]),
        &["Vpc", "VpcId"],
    );
    let peer = |to: &str, owner: &str, accepter: &Aws| {
        let p = id(
            &a.ok(&[
                "create-vpc-peering-connection",
                "--vpc-id",
                &vpc,
                "--peer-vpc-id",
                to,
                "--peer-owner-id",
                owner,
            ]),
            &["VpcPeeringConnection", "VpcPeeringConnectionId"],
        );
        accepter.ok(&[
            "accept-vpc-peering-connection",
            "--vpc-peering-connection-id",
            &p,
        ]);
        p
    };
    let pcx_b = peer(&vpc_b, b_id, b);
    let pcx_c = peer(&vpc_c, c_id, c);
    let pcx_d = peer(&vpc_d, b_id, b);
    let table = id(
        &a.ok(&["create-route-table", "--vpc-id", &vpc]),
        &["RouteTable", "RouteTableId"],
    );
    a.ok(&[
        "associate-route-table",
        "--route-table-id",
        &table,
        "--subnet-id",
        &cluster_subnet,
    ]);
    let main_table = id(
        &a.ok(&[
            "describe-route-tables",
            "--filters",
            &format!("Name=vpc-id,Values={vpc}"),
            "Name=association.main,Values=true",
        ])["RouteTables"][0],
        &["RouteTableId"],
    );
    let tgw = id(
        &a.ok(&["create-transit-gateway"]),
        &["TransitGateway", "TransitGatewayId"],
    );
    let pl = id(
        &a.ok(&[
            "create-managed-prefix-list",
            "--prefix-list-name",
            "onprem",
            "--address-family",
            "IPv4",
            "--max-entries",
            "5",
            "--entries",
            "Cidr=100.64.0.0/10,Description=branch offices",
            "Cidr=192.168.0.0/16,Description=datacenter",
        ]),
        &["PrefixList", "PrefixListId"],
    );
    a.ok(&[
        "create-route",
        "--route-table-id",
        &table,
        "--destination-cidr-block",
        "172.20.0.0/16",
        "--vpc-peering-connection-id",
        &pcx_b,
    ]);
    a.ok(&[
        "create-route",
        "--route-table-id",
        &table,
        "--destination-cidr-block",
        "10.99.0.0/16",
        "--vpc-peering-connection-id",
        &pcx_d,
    ]);
    a.ok(&[
        "create-route",
        "--route-table-id",
        &table,
        "--destination-prefix-list-id",
        &pl,
        "--transit-gateway-id",
        &tgw,
    ]);
    let igw = id(
        &a.ok(&["create-internet-gateway"]),
        &["InternetGateway", "InternetGatewayId"],
    );
    a.ok(&[
        "attach-internet-gateway",
        "--internet-gateway-id",
        &igw,
        "--vpc-id",
        &vpc,
    ]);
    a.ok(&[
        "create-route",
        "--route-table-id",
        &main_table,
        "--destination-cidr-block",
        "0.0.0.0/0",
        "--gateway-id",
        &igw,
    ]);
    b.ok(&[
        "delete-vpc-peering-connection",
        "--vpc-peering-connection-id",
        &pcx_d,
    ]);
    Peered {
        vpc,
        cluster_subnet,
        pod_subnet,
        table,
        main_table,
        pcx_b,
        pcx_c,
        pcx_d,
        tgw,
        pl,
    }
}
