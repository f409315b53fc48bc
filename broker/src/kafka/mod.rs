//! The Kafka-protocol listener: Kafka clients (librdkafka, the Java client, kafka-python,
//! aiokafka, …) served by the same shards, logs and coordinators as native clients.
//!
//! Every shard accepts Kafka connections on the main `--kafka-listen` address and on its own
//! port, and every shard is a Kafka *node* of its own ([`metadata::node_id`]): the metadata a
//! Kafka client gets points it at the shard that leads each partition, as the native metadata
//! does, so the data path never hops between shards.
//!
//! Requests and responses are encoded by the `kafka-protocol` crate (generated from Kafka's
//! message schemas); record batches pass through as bytes, because Sluice's batch is Kafka's
//! RecordBatch v2: a produced batch is appended as sent, and a fetch sends stored batches from
//! the tail cache or with `sendfile` from sealed segments, between response bytes the crate
//! encodes ([`frame::records_response`]).
//!
//! - [`connection`]: one connection: frames in, responses out in request order;
//! - [`frame`]: request headers, response framing;
//! - [`versions`]: the APIs and versions served, and ApiVersions;
//! - [`errors`]: Sluice's error codes as Kafka's;
//! - [`metadata`]: node ids and addresses, topic ids, Metadata and DescribeCluster;
//! - [`produce`], [`fetch`], [`offsets`] (ListOffsets);
//! - [`admin`]: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs, InitProducerId;
//! - [`groups`]: FindCoordinator, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups and
//!   the KIP-848 ConsumerGroupHeartbeat, on the shard's group coordinator;
//! - [`classic`]: the classic group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) on
//!   the same coordinator.
//!
//! **Architecture invariant:** the Kafka layer translates; it holds no state of its own. Every
//! handler calls the native handler's logic (`server::api`) or the coordinator, so a topic, an
//! offset or a group is the same thing whichever protocol touches it.

pub mod admin;
pub mod classic;
pub mod connection;
pub mod errors;
pub mod fetch;
pub mod frame;
pub mod groups;
pub mod metadata;
pub mod offsets;
pub mod produce;
pub mod versions;

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use glommio::task::JoinHandle;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::Decodable;

use crate::server::context::{Response, ShardContext};
use frame::RequestFrame;

/// Where the Kafka listener listens and what it advertises (`--kafka-listen`,
/// `--kafka-shard-ports`, `--advertise`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaListeners {
    /// The main Kafka address: every shard accepts here.
    pub listen: SocketAddr,
    /// Each shard's own Kafka address, by shard index.
    pub shard_listen: Vec<SocketAddr>,
    /// Each shard's Kafka address as clients are told it, by shard index.
    pub advertised_shards: Vec<String>,
}

/// Why a connection is closed instead of answered, as Kafka brokers do for requests they
/// cannot parse.
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    #[error("unknown api key {0}")]
    UnknownApi(i16),
    #[error("api key {api} version {version} is not served")]
    UnsupportedVersion { api: i16, version: i16 },
    #[error("malformed request header: {0}")]
    Header(String),
    #[error("malformed {api:?} v{version} request: {error}")]
    Body {
        api: ApiKey,
        version: i16,
        error: String,
    },
}

/// What a request turned into: the task that yields its response (`None`: no response, a
/// produce with acks=0).
pub type Handled = JoinHandle<Option<Response>>;

/// A response that is ready now.
pub(crate) fn ready(response: Response) -> Handled {
    glommio::spawn_local(async move { Some(response) }).detach()
}

/// Decodes a request body of the frame's API and version.
pub(crate) fn decode<T: Decodable>(frame: &mut RequestFrame) -> Result<T, CloseReason> {
    T::decode(&mut frame.body, frame.version).map_err(|error| CloseReason::Body {
        api: frame.api,
        version: frame.version,
        error: format!("{error:#}"),
    })
}

/// The connection a request came on: its peer host, as Kafka shows it in group descriptions
/// (`/127.0.0.1`).
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub host: String,
}

/// Parses a frame and starts its handler; returns it with the request's API (for the request
/// metrics). Produce appends here, in the connection's reader, so a connection's batches reach
/// each log in order.
pub async fn dispatch(
    ctx: &Rc<ShardContext>,
    client: &Client,
    frame: Bytes,
) -> Result<(ApiKey, Handled), CloseReason> {
    let frame = match frame::parse(frame)? {
        frame::Parsed::Request(frame) => frame,
        frame::Parsed::ApiVersionsFallback { correlation_id } => {
            return Ok((
                ApiKey::ApiVersions,
                ready(versions::unsupported_version(correlation_id)),
            ))
        }
    };
    let api = frame.api;
    Ok((api, handle(ctx, client, frame).await?))
}

async fn handle(
    ctx: &Rc<ShardContext>,
    client: &Client,
    mut frame: RequestFrame,
) -> Result<Handled, CloseReason> {
    let ctx = Rc::clone(ctx);
    let (version, id) = (frame.version, frame.correlation_id);
    Ok(match frame.api {
        ApiKey::ApiVersions => {
            let request = decode(&mut frame)?;
            ready(versions::api_versions(version, id, request))
        }
        ApiKey::Metadata => {
            let request = decode(&mut frame)?;
            ready(metadata::metadata(&ctx, version, id, request))
        }
        ApiKey::DescribeCluster => {
            let request = decode(&mut frame)?;
            ready(metadata::describe_cluster(&ctx, version, id, request))
        }
        ApiKey::Produce => {
            let request = decode(&mut frame)?;
            produce::produce(ctx, version, id, request).await
        }
        ApiKey::Fetch => {
            let request = decode(&mut frame)?;
            let bulk = ctx.bulk;
            crate::server::shard::spawn_into(bulk, async move {
                Some(fetch::fetch(&ctx, version, id, request).await)
            })
            .detach()
        }
        ApiKey::ListOffsets => {
            let request = decode(&mut frame)?;
            glommio::spawn_local(async move {
                Some(offsets::list_offsets(&ctx, version, id, request).await)
            })
            .detach()
        }
        ApiKey::InitProducerId => {
            let request = decode(&mut frame)?;
            glommio::spawn_local(async move {
                Some(admin::init_producer_id(&ctx, version, id, request).await)
            })
            .detach()
        }
        ApiKey::CreateTopics => {
            let request = decode(&mut frame)?;
            glommio::spawn_local(async move {
                Some(admin::create_topics(&ctx, version, id, request).await)
            })
            .detach()
        }
        ApiKey::DeleteTopics => {
            let request = decode(&mut frame)?;
            glommio::spawn_local(async move {
                Some(admin::delete_topics(&ctx, version, id, request).await)
            })
            .detach()
        }
        ApiKey::CreatePartitions => {
            let request = decode(&mut frame)?;
            glommio::spawn_local(async move {
                Some(admin::create_partitions(&ctx, version, id, request).await)
            })
            .detach()
        }
        ApiKey::DescribeConfigs => {
            let request = decode(&mut frame)?;
            ready(admin::describe_configs(&ctx, version, id, request))
        }
        ApiKey::FindCoordinator => {
            let request = decode(&mut frame)?;
            glommio::spawn_local(async move {
                Some(groups::find_coordinator(&ctx, version, id, request).await)
            })
            .detach()
        }
        ApiKey::OffsetCommit => {
            let request = decode(&mut frame)?;
            glommio::spawn_local(async move {
                Some(groups::offset_commit(&ctx, version, id, request).await)
            })
            .detach()
        }
        ApiKey::OffsetFetch => {
            let request = decode(&mut frame)?;
            glommio::spawn_local(async move {
                Some(groups::offset_fetch(&ctx, version, id, request).await)
            })
            .detach()
        }
        ApiKey::ListGroups => {
            let request = decode(&mut frame)?;
            glommio::spawn_local(async move {
                Some(groups::list_groups(&ctx, version, id, request).await)
            })
            .detach()
        }
        ApiKey::DescribeGroups => {
            let request = decode(&mut frame)?;
            glommio::spawn_local(async move {
                Some(groups::describe_groups(&ctx, version, id, request).await)
            })
            .detach()
        }
        ApiKey::ConsumerGroupHeartbeat => {
            let request = decode(&mut frame)?;
            glommio::spawn_local(async move {
                Some(groups::consumer_group_heartbeat(&ctx, version, id, request).await)
            })
            .detach()
        }
        ApiKey::JoinGroup => {
            let request = decode(&mut frame)?;
            let client = classic::Member {
                client_id: frame
                    .client_id
                    .as_ref()
                    .map_or(String::new(), |c| c.to_string()),
                client_host: client.host.clone(),
            };
            glommio::spawn_local(async move {
                Some(classic::join_group(&ctx, version, id, client, request).await)
            })
            .detach()
        }
        ApiKey::SyncGroup => {
            let request = decode(&mut frame)?;
            glommio::spawn_local(async move {
                Some(classic::sync_group(&ctx, version, id, request).await)
            })
            .detach()
        }
        ApiKey::Heartbeat => {
            let request = decode(&mut frame)?;
            glommio::spawn_local(async move {
                Some(classic::heartbeat(&ctx, version, id, request).await)
            })
            .detach()
        }
        ApiKey::LeaveGroup => {
            let request = decode(&mut frame)?;
            glommio::spawn_local(async move {
                Some(classic::leave_group(&ctx, version, id, request).await)
            })
            .detach()
        }
        // `frame::parse` lets through only what `versions::SERVED` lists.
        other => {
            return Err(CloseReason::UnsupportedVersion {
                api: other as i16,
                version,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::*;
    use proptest::prelude::*;

    use super::*;

    /// Decodes a frame's body as the dispatcher would, for every API served.
    fn decode_body(frame: &mut RequestFrame) -> Result<(), CloseReason> {
        match frame.api {
            ApiKey::ApiVersions => decode::<ApiVersionsRequest>(frame).map(drop),
            ApiKey::Metadata => decode::<MetadataRequest>(frame).map(drop),
            ApiKey::DescribeCluster => decode::<DescribeClusterRequest>(frame).map(drop),
            ApiKey::Produce => decode::<ProduceRequest>(frame).map(drop),
            ApiKey::Fetch => decode::<FetchRequest>(frame).map(drop),
            ApiKey::ListOffsets => decode::<ListOffsetsRequest>(frame).map(drop),
            ApiKey::InitProducerId => decode::<InitProducerIdRequest>(frame).map(drop),
            ApiKey::CreateTopics => decode::<CreateTopicsRequest>(frame).map(drop),
            ApiKey::DeleteTopics => decode::<DeleteTopicsRequest>(frame).map(drop),
            ApiKey::CreatePartitions => decode::<CreatePartitionsRequest>(frame).map(drop),
            ApiKey::DescribeConfigs => decode::<DescribeConfigsRequest>(frame).map(drop),
            ApiKey::FindCoordinator => decode::<FindCoordinatorRequest>(frame).map(drop),
            ApiKey::OffsetCommit => decode::<OffsetCommitRequest>(frame).map(drop),
            ApiKey::OffsetFetch => decode::<OffsetFetchRequest>(frame).map(drop),
            ApiKey::ListGroups => decode::<ListGroupsRequest>(frame).map(drop),
            ApiKey::DescribeGroups => decode::<DescribeGroupsRequest>(frame).map(drop),
            ApiKey::ConsumerGroupHeartbeat => {
                decode::<ConsumerGroupHeartbeatRequest>(frame).map(drop)
            }
            ApiKey::JoinGroup => decode::<JoinGroupRequest>(frame).map(drop),
            ApiKey::SyncGroup => decode::<SyncGroupRequest>(frame).map(drop),
            ApiKey::Heartbeat => decode::<HeartbeatRequest>(frame).map(drop),
            ApiKey::LeaveGroup => decode::<LeaveGroupRequest>(frame).map(drop),
            other => panic!("{other:?} is served but not decoded here"),
        }
    }

    fn served_api() -> impl Strategy<Value = (ApiKey, i16)> {
        (0..versions::SERVED.len(), any::<u8>()).prop_map(|(i, v)| {
            let (api, min, max) = versions::SERVED[i];
            (api, min + (i16::from(v) % (max - min + 1)))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]

        /// Any bytes after a valid prefix (api key, version, correlation id) are a request or
        /// a typed refusal, never a panic; so are frames of entirely arbitrary bytes.
        #[test]
        fn the_decoder_never_panics(
            (api, version) in served_api(),
            tail in proptest::collection::vec(any::<u8>(), 0..256),
            whole in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&(api as i16).to_be_bytes());
            bytes.extend_from_slice(&version.to_be_bytes());
            bytes.extend_from_slice(&7i32.to_be_bytes());
            bytes.extend_from_slice(&tail);
            for frame in [bytes, whole] {
                if let Ok(frame::Parsed::Request(mut request)) = frame::parse(Bytes::from(frame)) {
                    let _ = decode_body(&mut request);
                }
            }
        }
    }

    /// A few bytes that declare an array of two billion elements are refused before anything
    /// is allocated (the vendored codec's fix: see `protocol/vendor/README.md`); before the
    /// fix this aborted the broker on a 167 GB allocation.
    #[test]
    fn huge_declared_arrays_are_refused_without_allocating() {
        for (api, version, header_tail) in [
            (ApiKey::Metadata, 0i16, &[0xff, 0xff][..]),
            (ApiKey::Produce, 3, &[0xff, 0xff][..]),
        ] {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&(api as i16).to_be_bytes());
            bytes.extend_from_slice(&version.to_be_bytes());
            bytes.extend_from_slice(&7i32.to_be_bytes());
            bytes.extend_from_slice(header_tail); // a null client id
            if api == ApiKey::Produce {
                bytes.extend_from_slice(&[0xff, 0xff, 0, 1, 0, 0, 0, 10]); // txn id, acks, timeout
            }
            bytes.extend_from_slice(&i32::MAX.to_be_bytes());
            let frame::Parsed::Request(mut request) = frame::parse(Bytes::from(bytes)).unwrap()
            else {
                panic!("served");
            };
            assert!(decode_body(&mut request).is_err(), "{api:?}");
        }
    }

    /// Every API served decodes a request the crate encodes at each served version.
    #[test]
    fn every_served_version_decodes_an_encoded_request() {
        use kafka_protocol::protocol::Encodable;
        for &(api, min, max) in versions::SERVED {
            for version in min..=max {
                let mut buf = bytes::BytesMut::new();
                RequestHeader::default()
                    .with_request_api_key(api as i16)
                    .with_request_api_version(version)
                    .with_correlation_id(3)
                    .encode(&mut buf, api.request_header_version(version))
                    .unwrap();
                let body = match api {
                    ApiKey::ApiVersions => ApiVersionsRequest::default().encode(&mut buf, version),
                    ApiKey::Metadata => MetadataRequest::default().encode(&mut buf, version),
                    ApiKey::DescribeCluster => {
                        DescribeClusterRequest::default().encode(&mut buf, version)
                    }
                    ApiKey::Produce => ProduceRequest::default().encode(&mut buf, version),
                    ApiKey::Fetch => FetchRequest::default().encode(&mut buf, version),
                    ApiKey::ListOffsets => ListOffsetsRequest::default().encode(&mut buf, version),
                    ApiKey::InitProducerId => {
                        InitProducerIdRequest::default().encode(&mut buf, version)
                    }
                    ApiKey::CreateTopics => {
                        CreateTopicsRequest::default().encode(&mut buf, version)
                    }
                    ApiKey::DeleteTopics => {
                        DeleteTopicsRequest::default().encode(&mut buf, version)
                    }
                    ApiKey::CreatePartitions => {
                        CreatePartitionsRequest::default().encode(&mut buf, version)
                    }
                    ApiKey::DescribeConfigs => {
                        DescribeConfigsRequest::default().encode(&mut buf, version)
                    }
                    ApiKey::FindCoordinator => {
                        FindCoordinatorRequest::default().encode(&mut buf, version)
                    }
                    ApiKey::OffsetCommit => {
                        OffsetCommitRequest::default().encode(&mut buf, version)
                    }
                    ApiKey::OffsetFetch => OffsetFetchRequest::default().encode(&mut buf, version),
                    ApiKey::ListGroups => ListGroupsRequest::default().encode(&mut buf, version),
                    ApiKey::DescribeGroups => {
                        DescribeGroupsRequest::default().encode(&mut buf, version)
                    }
                    ApiKey::ConsumerGroupHeartbeat => {
                        ConsumerGroupHeartbeatRequest::default().encode(&mut buf, version)
                    }
                    ApiKey::JoinGroup => JoinGroupRequest::default().encode(&mut buf, version),
                    ApiKey::SyncGroup => SyncGroupRequest::default().encode(&mut buf, version),
                    ApiKey::Heartbeat => HeartbeatRequest::default().encode(&mut buf, version),
                    ApiKey::LeaveGroup => LeaveGroupRequest::default().encode(&mut buf, version),
                    other => panic!("{other:?}"),
                };
                body.unwrap();
                let frame::Parsed::Request(mut request) = frame::parse(buf.freeze()).unwrap()
                else {
                    panic!("{api:?} v{version} is served");
                };
                assert_eq!(request.correlation_id, 3);
                decode_body(&mut request).unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
            }
        }
    }
}
