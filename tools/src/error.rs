//! The command line's errors: one line saying what went wrong and what to do about it.

use sluice_client::{Error, ErrorCode};

/// An error an online command ends with (exit status 1, or 2 for a bad argument found after
/// parsing).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The client failed; `doing` says what the command was doing.
    #[error("{doing}: {}", explain(.error))]
    Client { doing: String, error: Error },
    /// An argument that parsed but cannot be used.
    #[error("{0}")]
    Usage(String),
    /// Anything else, already phrased with its remedy.
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn client(doing: impl Into<String>) -> impl FnOnce(Error) -> CliError {
        let doing = doing.into();
        move |error| CliError::Client { doing, error }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// The client's error, with what an operator can do about it.
fn explain(error: &Error) -> String {
    match error {
        Error::NoBrokerReachable { tried, last } => format!(
            "no broker reachable at {tried} ({last}); is a broker running there? Pass its \
             address with --brokers or SLUICE_BROKERS"
        ),
        Error::Connection { address, reason } => format!(
            "connection to {address} failed ({reason}); check that the broker is running and \
             retry"
        ),
        Error::Timeout { address, after } => format!(
            "no answer from {address} within {after:?}; the broker may be overloaded or \
             partitioned: check `sluice cluster health` and retry"
        ),
        Error::UnknownTopic { topic } => format!(
            "unknown topic {topic:?}; list topics with `sluice topic list` or create it with \
             `sluice topic create {topic}`"
        ),
        Error::UnknownPartition {
            topic,
            partition,
            partitions,
        } => format!(
            "topic {topic:?} has partitions 0..{partitions}, not {partition}; pick one with \
             --partition"
        ),
        Error::Broker { code, what } => format!("{what}: {}", explain_code(*code)),
        Error::OffsetOutOfRange {
            topic,
            partition,
            offset,
            log_start,
            high_watermark,
        } => format!(
            "offset {offset} is outside {topic}/{partition}'s log ({log_start}..{high_watermark}); \
             pick an offset in that range or use --from beginning|end"
        ),
        Error::RecordTooLarge { bytes, max } => {
            format!("a record of {bytes} bytes is larger than the {max} bytes allowed; split it")
        }
        other => format!("{other}"),
    }
}

fn explain_code(code: ErrorCode) -> String {
    let remedy = match code {
        ErrorCode::UnknownTopicOrPartition => "no such topic; see `sluice topic list`",
        ErrorCode::TopicExists => "the topic already exists; see `sluice topic describe`",
        ErrorCode::InvalidTopic => "use ASCII letters, digits, '.', '_' and '-' only",
        ErrorCode::InvalidPartitions => "the partition count is 0 or too large",
        ErrorCode::InvalidReplicationFactor => {
            "more replicas than live brokers (see `sluice cluster info`)"
        }
        ErrorCode::InvalidConfig => "a setting is unknown or out of range",
        ErrorCode::NotController | ErrorCode::Unavailable | ErrorCode::Timeout => {
            "the cluster has no controller right now; retry in a moment"
        }
        ErrorCode::NotEnoughReplicas => {
            "too few in-sync replicas for acks=all; see `sluice cluster health` or use --acks leader"
        }
        ErrorCode::BatchTooLarge => "a record exceeds the topic's max.message.bytes",
        ErrorCode::StorageFailure => "the broker's storage failed; check its log",
        ErrorCode::GroupIdNotFound => "no such group; see `sluice group list`",
        ErrorCode::InvalidGroupId => "the group id is empty or too long",
        ErrorCode::NonEmptyGroup => {
            "the group has active members; stop its consumers (see `sluice group describe`) and retry"
        }
        ErrorCode::PreferredLeaderNotAvailable => {
            "the preferred replica (the first listed) is not alive and in sync; see `sluice topic describe`"
        }
        ErrorCode::ReassignmentInProgress => {
            "the partition is being moved already; wait until `sluice topic describe` shows the move done"
        }
        _ => "see the broker's log",
    };
    format!("{code:?} ({remedy})")
}
