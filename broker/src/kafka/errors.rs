//! Sluice's error codes as Kafka's, in one place, so Kafka clients take their usual paths:
//! refresh metadata and retry on `NOT_LEADER_OR_FOLLOWER`, find the coordinator again on
//! `NOT_COORDINATOR`, rejoin on `FENCED_MEMBER_EPOCH`, and so on.

use kafka_protocol::ResponseError as K;
use sluice_protocol::native::ErrorCode;

/// The Kafka error code for a native one.
pub fn code(error: ErrorCode) -> i16 {
    kafka(error).map_or(0, |e| e.code())
}

/// The Kafka error for a native one; `None` for success.
pub fn kafka(error: ErrorCode) -> Option<K> {
    Some(match error {
        ErrorCode::None => return None,
        ErrorCode::UnknownTopicOrPartition => K::UnknownTopicOrPartition,
        ErrorCode::NotLeaderOrWrongShard | ErrorCode::NotReplica => K::NotLeaderOrFollower,
        ErrorCode::OffsetOutOfRange => K::OffsetOutOfRange,
        ErrorCode::CorruptBatch => K::CorruptMessage,
        ErrorCode::BatchTooLarge => K::MessageTooLarge,
        ErrorCode::InvalidBatch => K::InvalidRecord,
        ErrorCode::TopicExists => K::TopicAlreadyExists,
        ErrorCode::InvalidTopic => K::InvalidTopicException,
        ErrorCode::InvalidPartitions => K::InvalidPartitions,
        ErrorCode::InvalidReplicationFactor => K::InvalidReplicationFactor,
        ErrorCode::InvalidConfig => K::InvalidConfig,
        ErrorCode::NotController => K::NotController,
        ErrorCode::Timeout => K::RequestTimedOut,
        ErrorCode::StorageFailure => K::KafkaStorageError,
        // Retriable: the controller or a leader is not there at the moment.
        ErrorCode::Unavailable => K::LeaderNotAvailable,
        ErrorCode::OutOfOrderSequence => K::OutOfOrderSequenceNumber,
        // A batch of an older epoch of its producer id.
        ErrorCode::ProducerFenced => K::InvalidProducerEpoch,
        ErrorCode::NotEnoughReplicas => K::NotEnoughReplicas,
        ErrorCode::FencedLeaderEpoch => K::FencedLeaderEpoch,
        ErrorCode::UnknownLeaderEpoch => K::UnknownLeaderEpoch,
        ErrorCode::PreferredLeaderNotAvailable => K::PreferredLeaderNotAvailable,
        ErrorCode::ReassignmentInProgress => K::ReassignmentInProgress,
        ErrorCode::NotCoordinator => K::NotCoordinator,
        ErrorCode::CoordinatorLoadInProgress => K::CoordinatorLoadInProgress,
        ErrorCode::CoordinatorNotAvailable => K::CoordinatorNotAvailable,
        ErrorCode::InvalidGroupId => K::InvalidGroupId,
        ErrorCode::UnknownMemberId => K::UnknownMemberId,
        ErrorCode::FencedMemberEpoch => K::FencedMemberEpoch,
        ErrorCode::GroupMaxSizeReached => K::GroupMaxSizeReached,
        // A commit for a partition the member does not hold: its view of its assignment is
        // behind; KIP-848 clients refresh it on a stale epoch.
        ErrorCode::PartitionNotAssigned => K::StaleMemberEpoch,
        ErrorCode::NonEmptyGroup => K::NonEmptyGroup,
        ErrorCode::GroupIdNotFound => K::GroupIdNotFound,
        ErrorCode::InvalidSubscription => K::InvalidRequest,
        ErrorCode::OffsetMetadataTooLarge => K::OffsetMetadataTooLarge,
        ErrorCode::UnsupportedAssignor => K::UnsupportedAssignor,
        // The classic group protocol's own.
        ErrorCode::MemberIdRequired => K::MemberIdRequired,
        ErrorCode::RebalanceInProgress => K::RebalanceInProgress,
        ErrorCode::IllegalGeneration => K::IllegalGeneration,
        ErrorCode::InconsistentGroupProtocol => K::InconsistentGroupProtocol,
        ErrorCode::FencedInstanceId => K::FencedInstanceId,
        ErrorCode::InvalidSessionTimeout => K::InvalidSessionTimeout,
    })
}

/// The error's message for responses that carry one.
pub fn message(error: ErrorCode, detail: &str) -> Option<kafka_protocol::protocol::StrBytes> {
    match (error, detail) {
        (ErrorCode::None, _) => None,
        (_, "") => Some(error.name().to_string().into()),
        (_, detail) => Some(detail.to_string().into()),
    }
}
