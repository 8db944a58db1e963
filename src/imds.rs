//! The instance metadata service (IMDSv2), as the agent reads it: which instance and region it
//! runs on. aws-config's IMDS client does the token dance; its endpoint is
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` when set (the mock's, in tests and in the emulated VPC's
//! instance namespaces), and IMDS is off with `AWS_EC2_METADATA_DISABLED=true`.

use crate::core::InstanceId;

/// Why IMDS could not say who we are.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// AWS_EC2_METADATA_SERVICE_ENDPOINT is not a URL.
    #[error("AWS_EC2_METADATA_SERVICE_ENDPOINT={endpoint:?} is not a URL: {why}")]
    BadEndpoint {
        /// The value.
        endpoint: String,
        /// The parser's complaint.
        why: String,
    },
    /// IMDS is turned off and nothing else says who we are.
    #[error(
        "IMDS is disabled (AWS_EC2_METADATA_DISABLED=true) and INSTANCE_ID is not set; set INSTANCE_ID (and AWS_REGION), or AWS_EC2_METADATA_SERVICE_ENDPOINT"
    )]
    Disabled,
    /// IMDS did not answer.
    #[error(
        "IMDS did not give the instance id ({0}); where there is no IMDS (LocalStack), set INSTANCE_ID and AWS_REGION"
    )]
    Unreachable(String),
    /// IMDS answered nonsense.
    #[error("IMDS gave a bad instance id: {0}")]
    BadInstanceId(String),
}

/// Who we are, by IMDS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `meta-data/instance-id`.
    pub instance: InstanceId,
    /// `meta-data/placement/region`, when IMDS gives it.
    pub region: Option<String>,
}

/// Asks IMDSv2 for the instance id and region.
pub async fn identify() -> Result<Identity, ImdsError> {
    let mut b = aws_config::imds::Client::builder();
    if let Ok(ep) = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
        b = b
            .endpoint(ep.as_str())
            .map_err(|e| ImdsError::BadEndpoint {
                endpoint: ep.clone(),
                why: e.to_string(),
            })?;
    } else if std::env::var("AWS_EC2_METADATA_DISABLED")
        .is_ok_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Err(ImdsError::Disabled);
    }
    let imds = b.build();
    let id = imds
        .get("/latest/meta-data/instance-id")
        .await
        .map_err(|e| ImdsError::Unreachable(e.to_string()))?;
    let region = imds
        .get("/latest/meta-data/placement/region")
        .await
        .ok()
        .map(String::from)
        .filter(|r| r.len() <= MAX_ANSWER && !r.is_empty());
    let id = String::from(id);
    if id.len() > MAX_ANSWER {
        return Err(ImdsError::BadInstanceId(shown(&id)));
    }
    let instance = id
        .parse()
        .map_err(|e: crate::core::types::TypeError| ImdsError::BadInstanceId(e.to_string()))?;
    Ok(Identity { instance, region })
}

/// Longest IMDS answer taken as an instance id or region; longer ones are not ids.
const MAX_ANSWER: usize = 64;

/// An untrusted answer as an error message shows it: its start and its size, never all of it.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(MAX_ANSWER).collect();
    format!("{cut:?}... ({} bytes)", s.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_huge_answer_is_shown_by_its_start_and_size() {
        let big = "i-".to_owned() + &"f".repeat(10 << 20);
        let s = super::shown(&big);
        assert!(s.len() < 100 && s.contains("10485762 bytes"), "{s}");
    }
}
