//! The Kafka APIs and versions this listener serves, and ApiVersions. Only what is
//! implemented is advertised: a client that finds an API missing does not use it (there are no
//! transactions, SASL, quotas, ACLs or share groups).

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::ResponseError;

use super::frame;
use crate::server::context::Response;

/// Each API served, with the lowest and highest version. Chosen to cover what current clients
/// send (librdkafka 2.x, the Java client 3.x–4.x, kafka-python, aiokafka) and no version whose
/// semantics are not implemented: Produce stops before v12/13 (topic ids in produce),
/// ListOffsets before v7 (the max-timestamp query). ConsumerGroupHeartbeat v1 has clients make
/// their member ids; the coordinator issues its own on join and clients take the one answered
/// (librdkafka does; it needs v1).
pub const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 15),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
];

/// Whether `api` is served at `version`.
pub fn served(api: ApiKey, version: i16) -> bool {
    SERVED
        .iter()
        .any(|&(key, min, max)| key == api && (min..=max).contains(&version))
}

fn listing(error: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error)
        .with_api_keys(
            SERVED
                .iter()
                .map(|&(key, min, max)| {
                    ApiVersion::default()
                        .with_api_key(key as i16)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
}

/// ApiVersions. Its response header is v0 at every version (no tagged fields), so a client
/// can read the answer before it knows what the broker speaks.
pub fn api_versions(version: i16, id: i32, _request: ApiVersionsRequest) -> Response {
    frame::response(ApiKey::ApiVersions, version, id, &listing(0))
}

/// The answer to an ApiVersions request at a version not served: a v0 response with
/// `UNSUPPORTED_VERSION` and the listing, which the client retries against.
pub fn unsupported_version(id: i32) -> Response {
    frame::response(
        ApiKey::ApiVersions,
        0,
        id,
        &listing(ResponseError::UnsupportedVersion.code()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every version served is one the codec knows, so no request of it fails to decode for
    /// want of a schema.
    #[test]
    fn served_versions_are_within_the_codecs() {
        for &(key, min, max) in SERVED {
            let known = key.valid_versions();
            assert!(min <= max, "{key:?}");
            assert!(
                known.min <= min && max <= known.max,
                "{key:?} {min}..={max} outside {known}"
            );
        }
    }
}
