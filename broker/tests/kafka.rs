//! The Kafka listener against real Kafka clients and hand-made bad input.
//!
//! The client tests run confluent-kafka (librdkafka), kafka-python and aiokafka from PyPI,
//! installed by the test itself into a virtualenv under `target/` (`kafka/clients.py` is the
//! scenario each runs). A machine where they cannot be installed (no `python3`, no package
//! registry) skips those tests and says why on stderr; every other test here speaks the Kafka
//! protocol itself through the `kafka-protocol` crate.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_client::{ConsumerConfig, OffsetReset, ProducerConfig, ProducerRecord};

use common::clients::{create_topic, ClientOf};
use common::BrokerProcess;

/// The client versions installed: the newest each registry listing here had when written.
const PYTHON_CLIENTS: &[&str] = &[
    "confluent-kafka==2.16.1",
    "kafka-python==3.0.12",
    "aiokafka==0.14.0",
];

fn start_broker(prefix: &str) -> BrokerProcess {
    BrokerProcess::start(prefix, 2, &[])
}

fn kafka_address(broker: &BrokerProcess) -> String {
    broker.kafka.clone()
}

// ------------------------------------------------------------------------- the raw protocol

/// A Kafka connection speaking through the `kafka-protocol` crate.
struct KafkaConnection {
    stream: TcpStream,
    next_id: i32,
}

impl KafkaConnection {
    fn connect(address: &str) -> KafkaConnection {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match TcpStream::connect(address) {
                Ok(stream) => {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    return KafkaConnection { stream, next_id: 1 };
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("connect {address}: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("connect {address}: {e}"),
            }
        }
    }

    fn send_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(frame.len() + 4);
        out.extend_from_slice(&(frame.len() as i32).to_be_bytes());
        out.extend_from_slice(frame);
        self.stream.write_all(&out)
    }

    fn request_bytes<T: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &T,
    ) -> (i32, Vec<u8>) {
        let id = self.next_id;
        self.next_id += 1;
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from_static_str("sluice-test")))
            .encode(&mut buf, api.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        (id, buf.to_vec())
    }

    /// A whole response frame, or `None` when the broker closed the connection.
    fn read_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).ok()?;
        let mut frame = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut frame).ok()?;
        Some(Bytes::from(frame))
    }

    fn call<T: Encodable, R: Decodable>(&mut self, api: ApiKey, version: i16, body: &T) -> R {
        let (id, frame) = self.request_bytes(api, version, body);
        self.send_frame(&frame).unwrap();
        let mut response = self.read_frame().expect("a response");
        let header =
            ResponseHeader::decode(&mut response, api.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, id);
        let decoded = R::decode(&mut response, version).unwrap();
        assert!(
            !response.has_remaining(),
            "{api:?} v{version}: bytes left over"
        );
        decoded
    }

    /// Whether the broker closed the connection (a read sees its end).
    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
            || matches!(self.stream.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

/// Metadata of every topic: a null list (an empty one at v0).
fn metadata_all(connection: &mut KafkaConnection, version: i16) -> MetadataResponse {
    let topics = if version == 0 { Some(Vec::new()) } else { None };
    connection.call(
        ApiKey::Metadata,
        version,
        &MetadataRequest::default().with_topics(topics),
    )
}

#[test]
fn api_versions_lists_what_is_served_at_every_version() {
    let broker = start_broker("kafka-versions");
    let mut connection = KafkaConnection::connect(&kafka_address(&broker));
    for version in 0..=3 {
        let answer: ApiVersionsResponse = connection.call(
            ApiKey::ApiVersions,
            version,
            &ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("test"))
                .with_client_software_version(StrBytes::from_static_str("1")),
        );
        assert_eq!(answer.error_code, 0);
        let keys: Vec<i16> = answer.api_keys.iter().map(|k| k.api_key).collect();
        for api in [
            ApiKey::Produce,
            ApiKey::Fetch,
            ApiKey::Metadata,
            ApiKey::FindCoordinator,
        ] {
            assert!(keys.contains(&(api as i16)), "{api:?} advertised");
        }
        for api in [
            ApiKey::EndTxn,
            ApiKey::SaslHandshake,
            ApiKey::AddPartitionsToTxn,
        ] {
            assert!(!keys.contains(&(api as i16)), "{api:?} not advertised");
        }
    }
    // A version beyond what is served: UNSUPPORTED_VERSION with the listing, in a v0 answer.
    let (id, mut frame) =
        connection.request_bytes(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    frame[2..4].copy_from_slice(&77i16.to_be_bytes());
    connection.send_frame(&frame).unwrap();
    let mut response = connection.read_frame().unwrap();
    let header = ResponseHeader::decode(&mut response, 0).unwrap();
    assert_eq!(header.correlation_id, id);
    let answer = ApiVersionsResponse::decode(&mut response, 0).unwrap();
    assert_eq!(answer.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(!answer.api_keys.is_empty());
    // The five requests are in the Kafka request metrics (counted once each response is
    // written, so just after the client has it), latency histogram included.
    let series = |name: &str| {
        let (_, body) = common::http_get(&broker.metrics, "/metrics");
        body.lines()
            .filter(|l| l.starts_with(name) && l.contains("api=\"ApiVersions\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    common::cluster::wait_until("five ApiVersions counted", Duration::from_secs(10), || {
        series("sluice_kafka_requests_total{") == 5.0
    });
    assert_eq!(series("sluice_kafka_request_duration_seconds_count{"), 5.0);
}

#[test]
fn metadata_makes_every_shard_a_node_and_points_at_the_leading_shard() {
    let broker = start_broker("kafka-metadata");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(create_topic(&broker, "shards", 4));
    let mut connection = KafkaConnection::connect(&kafka_address(&broker));
    for version in [0, 1, 4, 9, 12] {
        let answer = metadata_all(&mut connection, version);
        let mut ports: Vec<i32> = answer.brokers.iter().map(|b| b.port).collect();
        ports.sort();
        let mut expected: Vec<i32> = broker
            .kafka_shard_ports
            .iter()
            .map(|&p| i32::from(p))
            .collect();
        expected.sort();
        assert_eq!(ports, expected, "v{version}: one node per shard");
        let topic = answer
            .topics
            .iter()
            .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some("shards"))
            .expect("the topic");
        assert_eq!(topic.partitions.len(), 4);
        let leaders: std::collections::BTreeSet<i32> =
            topic.partitions.iter().map(|p| p.leader_id.0).collect();
        assert_eq!(
            leaders.len(),
            2,
            "v{version}: partitions spread over both shards"
        );
        for p in &topic.partitions {
            assert!(answer.brokers.iter().any(|b| b.node_id == p.leader_id));
        }
        if version >= 10 {
            assert!(!topic.topic_id.is_nil(), "topic ids from v10");
        }
    }
    // An unknown topic is named, not created.
    let answer: MetadataResponse = connection.call(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default().with_name(
                Some(kafka_protocol::messages::TopicName(
                    StrBytes::from_static_str("nope"),
                )),
            ),
        ])),
    );
    assert_eq!(answer.topics[0].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
}

/// Frames that break the protocol close their own connection; nothing else is disturbed.
#[test]
fn bad_frames_close_their_connection_and_leave_others_alone() {
    let broker = start_broker("kafka-bad");
    let address = kafka_address(&broker);
    let mut bystander = KafkaConnection::connect(&address);
    let check_bystander = |bystander: &mut KafkaConnection| {
        let answer = metadata_all(bystander, 12);
        assert_eq!(answer.brokers.len(), 2);
    };
    check_bystander(&mut bystander);

    // An unknown API key.
    let mut c = KafkaConnection::connect(&address);
    let (_, mut frame) = c.request_bytes(ApiKey::Metadata, 12, &MetadataRequest::default());
    frame[0..2].copy_from_slice(&999i16.to_be_bytes());
    c.send_frame(&frame).unwrap();
    assert!(c.read_frame().is_none(), "unknown api key: closed");

    // A known API at a version not served.
    let mut c = KafkaConnection::connect(&address);
    let (_, mut frame) = c.request_bytes(ApiKey::Metadata, 12, &MetadataRequest::default());
    frame[2..4].copy_from_slice(&99i16.to_be_bytes());
    c.send_frame(&frame).unwrap();
    assert!(c.read_frame().is_none(), "unsupported version: closed");

    // A length above the limit, and a negative one.
    for len in [i32::MAX, -5, 3] {
        let mut c = KafkaConnection::connect(&address);
        c.stream.write_all(&len.to_be_bytes()).unwrap();
        assert!(c.closed(), "length {len}: closed");
    }

    // A request that answers first, then garbage on the same connection: the answer comes,
    // then the close.
    let mut c = KafkaConnection::connect(&address);
    let (id, good) = c.request_bytes(ApiKey::Metadata, 12, &MetadataRequest::default());
    c.send_frame(&good).unwrap();
    let (_, mut bad) = c.request_bytes(ApiKey::Metadata, 12, &MetadataRequest::default());
    bad.truncate(bad.len() - 1); // the body ends early: it does not decode
    c.send_frame(&bad).unwrap();
    let mut first = c.read_frame().expect("the good request's answer");
    assert_eq!(first.get_i32(), id);
    assert!(c.read_frame().is_none(), "the bad one closes");

    // Every served API with a body of garbage: the broker answers or closes, never dies.
    let mut rng = common::Rng(0x5eed_ca11);
    for &(api, min, max) in sluice_broker::kafka::versions::SERVED {
        for version in [min, max] {
            let mut c = KafkaConnection::connect(&address);
            let mut frame = BytesMut::new();
            RequestHeader::default()
                .with_request_api_key(api as i16)
                .with_request_api_version(version)
                .with_correlation_id(1)
                .encode(&mut frame, api.request_header_version(version))
                .unwrap();
            let mut frame = frame.to_vec();
            let len = rng.range(0, 64) as usize;
            frame.extend((0..len).map(|_| rng.next_u64() as u8));
            c.send_frame(&frame).unwrap();
            let _ = c.read_frame();
        }
    }

    // A truncated frame: the length promises more than ever comes; the client gives up.
    let mut c = KafkaConnection::connect(&address);
    c.stream.write_all(&100i32.to_be_bytes()).unwrap();
    c.stream.write_all(&[0, 3, 0, 12]).unwrap();
    drop(c);

    check_bystander(&mut bystander);
    let mut fresh = KafkaConnection::connect(&address);
    check_bystander(&mut fresh);
}

// ------------------------------------------------------------------------- real clients

/// The virtualenv's python with the clients installed, or why there is none.
fn python() -> Result<&'static Path, &'static str> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(install_clients)
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(String::as_str)
}

fn install_clients() -> Result<PathBuf, String> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/tmp has a parent")
        .to_path_buf();
    let venv = target.join("kafka-venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join("sluice-clients.txt");
    let wanted = PYTHON_CLIENTS.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    let run = |command: &mut Command, what: &str| -> Result<(), String> {
        let output = command
            .output()
            .map_err(|e| format!("{what}: cannot run: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ))
        }
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PYTHON_CLIENTS),
        "pip install",
    )?;
    std::fs::write(&stamp, wanted).map_err(|e| e.to_string())?;
    Ok(python)
}

/// Runs `clients.py` and returns its JSON line; `None` when the clients are not installed.
fn run_client(
    client: &str,
    scenario: &str,
    bootstrap: &str,
    topic: &str,
    extra: &[&str],
) -> Option<serde_json::Value> {
    let python = match python() {
        Ok(python) => python,
        Err(reason) => {
            eprintln!(
                "SKIPPED {client} {scenario}: the Python Kafka clients are not installed: {reason}"
            );
            return None;
        }
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/clients.py");
    let output = Command::new(python)
        .arg(script)
        .args([
            client,
            scenario,
            bootstrap,
            topic,
            &format!("{topic}-group"),
        ])
        .args(extra)
        .output()
        .expect("run clients.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{client} {scenario}: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{client} {scenario}: {stdout}");
    Some(serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON"))
}

fn round_trip(client: &str) {
    let broker = start_broker(&format!("kafka-{client}"));
    let topic = format!("rt-{}", client.replace('-', ""));
    if let Some(result) = run_client(client, "round-trip", &kafka_address(&broker), &topic, &[]) {
        assert_eq!(result["consumed"], 200);
        assert_eq!(result["resumed"], 50);
        // The same group, seen through the native protocol (as `sluice group describe` does):
        // the offsets the Kafka client committed.
        let admin = sluice_client::blocking::Admin::new(broker.config()).unwrap();
        let group = admin.describe_group(&format!("{topic}-group")).unwrap();
        let committed: u64 = group.offsets.iter().map(|o| o.committed).sum();
        assert_eq!(committed, 200, "{client}: {:?}", group.offsets);
    }
}

#[test]
fn confluent_kafka_round_trip() {
    round_trip("confluent");
}

#[test]
fn kafka_python_round_trip() {
    round_trip("kafka-python");
}

#[test]
fn aiokafka_round_trip() {
    round_trip("aiokafka");
}

/// Two members of one group share a topic: KIP-848's ConsumerGroupHeartbeat (librdkafka's
/// `group.protocol=consumer`) on Sluice's coordinator.
#[test]
fn confluent_kafka_group_members_split_a_topic() {
    let broker = start_broker("kafka-split");
    if let Some(result) = run_client("confluent", "split", &kafka_address(&broker), "split", &[]) {
        assert_eq!(result["a"].as_array().unwrap().len(), 1);
        assert_eq!(result["b"].as_array().unwrap().len(), 1);
    }
}

/// Two members of one group share a topic with the classic protocol (JoinGroup/SyncGroup,
/// the assignment made by the clients' leader): librdkafka, kafka-python, aiokafka.
#[test]
fn classic_group_members_split_a_topic() {
    let broker = start_broker("kafka-classic");
    for client in ["confluent-classic", "kafka-python", "aiokafka"] {
        let topic = format!("classic-{}", client.replace('-', ""));
        if let Some(result) = run_client(client, "split", &kafka_address(&broker), &topic, &[]) {
            assert_eq!(result["a"].as_array().unwrap().len(), 1, "{client}");
            assert_eq!(result["b"].as_array().unwrap().len(), 1, "{client}");
        }
    }
}

#[test]
fn confluent_kafka_classic_group_round_trip() {
    round_trip("confluent-classic");
}

/// A Kafka producer's batches read by the native consumer, and the native producer's read by
/// a Kafka consumer: one batch format.
#[test]
fn kafka_and_native_clients_read_each_others_records() {
    let broker = start_broker("kafka-native");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(create_topic(&broker, "from-kafka", 2));
    runtime.block_on(create_topic(&broker, "from-native", 2));
    drop(runtime);
    let bootstrap = kafka_address(&broker);
    // Kafka producer → native consumer.
    if run_client("confluent", "produce", &bootstrap, "from-kafka", &["100"]).is_some() {
        let mut consumer = sluice_client::blocking::Consumer::new(
            ConsumerConfig::new(broker.config()).auto_offset_reset(OffsetReset::Earliest),
        )
        .unwrap();
        consumer.assign((0..2).map(|p| sluice_client::TopicPartition::new("from-kafka", p)));
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.len() < 100 && Instant::now() < deadline {
            for r in consumer.poll(Duration::from_millis(500)).unwrap() {
                let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
                let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                assert!(value.starts_with(&format!("{key}:")), "{key} {value}");
                seen.push(value);
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 100, "every Kafka-produced record, once");
    }
    // Native producer → Kafka consumer.
    let producer =
        sluice_client::blocking::Producer::new(ProducerConfig::new(broker.config())).unwrap();
    let handles: Vec<_> = (0..100)
        .map(|i| {
            producer
                .send(
                    ProducerRecord::new("from-native")
                        .key(format!("n{}", i % 4))
                        .value(format!("native-{i}")),
                )
                .unwrap()
        })
        .collect();
    for h in handles {
        h.wait().unwrap();
    }
    producer.close().unwrap();
    if let Some(result) = run_client(
        "confluent",
        "consume",
        &bootstrap,
        "from-native",
        &["100", "2"],
    ) {
        let mut values: Vec<String> = result["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[3].as_str().unwrap().to_string())
            .collect();
        values.sort();
        let mut expected: Vec<String> = (0..100).map(|i| format!("native-{i}")).collect();
        expected.sort();
        assert_eq!(values, expected);
    }
}

/// Fetches of batches that are only on disk: a topic of 1 MiB segments (created through the
/// Kafka CreateTopics with a Kafka-named setting) filled with 3 MiB by a Kafka producer, the
/// broker restarted so nothing is cached, then read back by a Kafka consumer: the sealed
/// segments go out with `sendfile` between the response bytes, and every record arrives.
#[test]
fn kafka_fetches_send_sealed_segments_from_disk() {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, TopicName};
    let mut broker = start_broker("kafka-cold");
    let mut connection = KafkaConnection::connect(&kafka_address(&broker));
    let created: CreateTopicsResponse = connection.call(
        ApiKey::CreateTopics,
        5,
        &CreateTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("cold")))
                .with_num_partitions(1)
                .with_replication_factor(1)
                .with_configs(vec![CreatableTopicConfig::default()
                    .with_name(StrBytes::from_static_str("segment.bytes"))
                    .with_value(Some(StrBytes::from_static_str("1048576")))])]),
    );
    assert_eq!(created.topics[0].error_code, 0, "{:?}", created.topics[0]);
    assert_eq!(created.topics[0].num_partitions, 1);
    drop(connection);
    const RECORDS: usize = 300;
    if run_client(
        "confluent",
        "produce",
        &kafka_address(&broker),
        "cold",
        &["300", "10000"],
    )
    .is_none()
    {
        return;
    }
    let status = broker.terminate();
    assert!(status.success(), "clean stop: {status}");
    broker.spawn(false);
    let sendfile_before = sendfile_bytes(&broker);
    let result = run_client(
        "confluent",
        "consume",
        &kafka_address(&broker),
        "cold",
        &["300", "1"],
    )
    .expect("installed a moment ago");
    let records = result["records"].as_array().unwrap();
    assert_eq!(records.len(), RECORDS);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r[1].as_u64(), Some(i as u64), "offsets in order");
        assert_eq!(r[4].as_u64(), Some(10_000), "whole values");
    }
    let sent = sendfile_bytes(&broker) - sendfile_before;
    assert!(
        sent >= 1 << 20,
        "at least a sealed segment went out with sendfile: {sent} bytes"
    );
}

/// The broker's `sluice_sendfile_bytes`, summed over its shards.
fn sendfile_bytes(broker: &BrokerProcess) -> u64 {
    let mut stream = TcpStream::connect(&broker.metrics).expect("metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .lines()
        .filter(|l| l.starts_with("sluice_sendfile_bytes"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// acks=0: no response at all, yet the records are stored; the next request on the same
/// connection is answered (responses stay in request order with the gap).
#[test]
fn produce_with_acks_zero_gets_no_response() {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    use sluice_protocol::{BatchBuilder, BatchOptions};
    let broker = start_broker("kafka-acks0");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(create_topic(&broker, "fire", 1));
    drop(runtime);
    // The partition's leading shard, from the Kafka metadata.
    let mut bootstrap = KafkaConnection::connect(&kafka_address(&broker));
    let metadata = metadata_all(&mut bootstrap, 12);
    let topic = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some("fire"))
        .unwrap();
    let leader = metadata
        .brokers
        .iter()
        .find(|b| b.node_id == topic.partitions[0].leader_id)
        .unwrap();
    let mut connection =
        KafkaConnection::connect(&format!("{}:{}", leader.host.as_str(), leader.port));
    for i in 0..10 {
        let mut builder = BatchBuilder::new(BatchOptions::default());
        builder.push(0, Some(b"k"), Some(format!("v{i}").as_bytes()), &[]);
        let request = ProduceRequest::default()
            .with_acks(0)
            .with_timeout_ms(5_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("fire")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(Bytes::from(builder.finish())))])]);
        let (_, frame) = connection.request_bytes(ApiKey::Produce, 9, &request);
        connection.send_frame(&frame).unwrap();
    }
    // The first answer on the connection is the metadata's: no produce answered.
    let answer = metadata_all(&mut connection, 12);
    assert_eq!(answer.brokers.len(), 2);
    let admin = sluice_client::blocking::Admin::new(broker.config()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let tp = sluice_client::TopicPartition::new("fire", 0);
    while admin.offset(&tp, sluice_client::Seek::Latest).unwrap() != Some(10) {
        assert!(Instant::now() < deadline, "ten records stored");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// In a cluster every broker registers its shards' Kafka addresses: the Kafka metadata any
/// broker gives lists every shard of every broker as a node, and names the leading shard (on
/// whichever broker) of every partition.
#[test]
fn every_broker_of_a_cluster_advertises_its_shards_as_kafka_nodes() {
    let _serial = common::cluster::serial();
    let mut cluster = common::cluster::Cluster::new(3, 1_000);
    cluster.wait_for_controller(&[1, 2, 3]);
    let mut expected: Vec<i32> = (1..=3)
        .flat_map(|id| cluster.broker(id).process.kafka_shard_ports.clone())
        .map(i32::from)
        .collect();
    expected.sort();
    let config = sluice_client::ClientConfig::new(
        (1..=3)
            .map(|id| cluster.broker(id).process.listen.clone())
            .collect::<Vec<_>>(),
    )
    .request_timeout(Duration::from_secs(10));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(common::clients::create_topic_on(config, "spread", 6, 3));
    drop(runtime);
    for id in 1..=3 {
        let address = cluster.broker(id).process.kafka.clone();
        let mut connection = KafkaConnection::connect(&address);
        common::cluster::wait_until(
            &format!("broker {id}'s Kafka metadata lists every shard and leader"),
            Duration::from_secs(30),
            || {
                let answer = metadata_all(&mut connection, 12);
                let mut ports: Vec<i32> = answer.brokers.iter().map(|b| b.port).collect();
                ports.sort();
                let topic = answer
                    .topics
                    .iter()
                    .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some("spread"));
                ports == expected
                    && topic.is_some_and(|t| {
                        t.partitions.len() == 6
                            && t.partitions.iter().all(|p| {
                                p.replica_nodes.len() == 3
                                    && answer.brokers.iter().any(|b| b.node_id == p.leader_id)
                            })
                    })
            },
        );
    }
}
