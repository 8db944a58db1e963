//! CNI errors: the spec's codes, the error JSON, and how agent failures map onto them.

use serde_json::json;

use super::Output;
use crate::ipc::{self, ClientError, ErrorKind};

/// CNI error codes (the spec's numbers).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid network config (libcni's ErrInvalidNetworkConfig).
    pub const INVALID_CONFIG: u32 = 7;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid environment variables (libcni's ErrInvalidEnvironmentVariables).
    pub const INVALID_ENV: u32 = 4;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// The plugin is not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
}

/// A CNI error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// Code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// More.
    pub details: String,
}

pub(super) fn fail(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError {
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

impl CniError {
    pub(super) fn render(&self, version: &str) -> Output {
        let mut v = json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        Output {
            stdout: v.to_string(),
            exit: 1,
        }
    }
}

pub(super) fn agent_error(e: ClientError) -> CniError {
    match e {
        ClientError::Connect { .. } => fail(
            code::TRY_AGAIN,
            "the prefixd agent is unreachable",
            e.to_string(),
        ),
        ClientError::Io(_) => fail(
            code::TRY_AGAIN,
            "the prefixd agent did not answer in time",
            e.to_string(),
        ),
        ClientError::BadReply(_) => fail(
            code::IO_FAILURE,
            "the prefixd agent sent a bad reply",
            e.to_string(),
        ),
    }
}

pub(super) fn reply_error(e: &ipc::ReplyError) -> CniError {
    let c = match e.kind {
        ErrorKind::Timeout | ErrorKind::NotReady => code::TRY_AGAIN,
        ErrorKind::NotFound => code::UNKNOWN_CONTAINER,
        ErrorKind::BadRequest => code::INVALID_CONFIG,
        ErrorKind::Internal => code::IO_FAILURE,
    };
    fail(c, e.message.clone(), "")
}
