//! A mock EC2 with real prefix-delegation semantics, speaking the EC2 Query protocol over HTTP so
//! that aws-sdk-ec2 and the aws CLI work against it unchanged; plus IMDSv2 and an admin API.
//! Part of the test bench (cargo feature `testbench`): the node image does not carry it.
//!
//! Endpoints (one listener, [`server`]):
//! * `POST /` — the EC2 Query API (`Action=…&Version=2016-11-15`), XML answers, EC2 error XML.
//! * `PUT /latest/api/token`, `GET /latest/meta-data/…` — IMDSv2 for one instance (the
//!   scenario's `imds_instance`, or `POST /_mock/imds`).
//! * `/_mock/…` — admin, outside the EC2 path: `GET stats`, `GET names`, `POST faults`,
//!   `POST error-rates`, `POST fragment`, `POST throttling`, `POST latency`, `POST imds`.
//!
//! The parts: [`model`] (EC2 state and rules, no I/O), [`account`] (model + control + clock and
//! the one call path), [`control`] (throttling, faults, latency, counts), [`actions`] (Query API
//! → model → XML), [`wire`] (parameters and XML), [`imds`], [`scenario`] (JSON set-ups),
//! [`direct`] (the agent's EC2 trait straight on an account, for the simulator and paused-time
//! tests), [`vpc`] (the emulated VPC data plane in network namespaces, `--dataplane`).

pub mod account;
pub mod actions;
pub mod addr;
pub mod addr6;
pub mod control;
pub mod direct;
pub mod iam;
pub mod imds;
pub mod model;
pub mod scenario;
pub mod server;
pub mod vpc;
pub mod wire;

pub use account::Account;
pub use direct::DirectEc2;
pub use scenario::Scenario;
pub use server::MockServer;

/// An error answer of the mock's EC2 API: HTTP status, EC2 code and message (what the adapter
/// will classify as an [`crate::ec2::Ec2Error`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// EC2 error code, e.g. `InsufficientCidrBlocks`.
    pub code: String,
    /// Message.
    pub message: String,
}

impl ApiError {
    /// An error with an explicit status.
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// A client error (HTTP 400).
    pub fn client(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// An error with the status EC2 uses for `code`: 503 for throttling and unavailability,
    /// 500 for internal errors, 403 for authorization failures, 400 otherwise.
    pub fn with_default_status(code: &str, message: impl Into<String>) -> Self {
        let status = match code {
            "RequestLimitExceeded" | "ServiceUnavailable" | "Unavailable" => 503,
            "InternalError" | "InternalFailure" => 500,
            "UnauthorizedOperation" | "AuthFailure" | "Blocked" => 403,
            _ => 400,
        };
        Self::new(status, code, message)
    }
}
