//! Integration tests of the broker's data plane: a real `sluice-broker` process, real TCP, the
//! native protocol spoken by a minimal synchronous client defined here.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_protocol::batch::BatchHeader;
use sluice_protocol::native::{
    decode_control, encode_control, encode_request, split_response, Acks, ApiKey,
    CreateTopicRequest, DecodeControl, EncodeControl, ErrorCode, FetchPartition, FetchRequest,
    FetchResponse, FrameError, ListOffsetsPartition, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, OffsetQuery, ProducePartition, ProduceRequest,
    ProduceResponse, TopicResponse,
};
use sluice_protocol::{BatchBuilder, BatchIter, BatchOptions, RecordIter, BATCH_HEADER_BYTES};

use common::BrokerProcess as Broker;

/// A broker process with two shards (the shared harness), once its metadata lists both shards.
fn start_broker() -> Broker {
    start_broker_with(&[])
}

fn start_broker_with(args: &[&str]) -> Broker {
    let broker = Broker::start("dataplane", 2, args);
    wait_ready(&broker);
    broker
}

/// Restarts a stopped broker on its ports and waits until it is ready.
fn restart(broker: &mut Broker) {
    broker.spawn(false);
    wait_ready(broker);
}

fn wait_ready(broker: &Broker) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Client::connect(&broker.listen).is_ok_and(|mut c| c.ready()) {
        assert!(Instant::now() < deadline, "broker did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Client {
    stream: TcpStream,
    next_id: u32,
}

impl Client {
    fn connect(address: &str) -> std::io::Result<Client> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client { stream, next_id: 1 })
    }

    fn send<T: EncodeControl>(&mut self, api: ApiKey, request: &T, data: &[u8]) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let control = encode_control(request);
        let mut frame = encode_request(api, 0, id, &control, data.len());
        frame.extend_from_slice(data);
        self.stream.write_all(&frame).unwrap();
        id
    }

    /// Whether the broker answers metadata with both shards' addresses, and they accept
    /// connections (errors mean not yet): a fresh broker lists itself once it has registered.
    fn ready(&mut self) -> bool {
        self.send(ApiKey::Metadata, &MetadataRequest { topics: None }, &[]);
        match self.receive() {
            Ok((_, 0, control, _)) => decode_control::<MetadataResponse>(&control).is_ok_and(|m| {
                m.brokers.iter().any(|b| {
                    b.shard_addresses.len() == 2
                        && b.shard_addresses
                            .iter()
                            .all(|a| TcpStream::connect(a).is_ok())
                })
            }),
            _ => false,
        }
    }

    /// Reads one response frame: (correlation id, frame error, control, data).
    fn receive(&mut self) -> std::io::Result<(u32, u16, Vec<u8>, Vec<u8>)> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let mut frame = vec![0u8; u32::from_le_bytes(len) as usize];
        self.stream.read_exact(&mut frame)?;
        let parsed = split_response(&frame).unwrap();
        Ok((
            parsed.correlation_id,
            parsed.frame_error,
            parsed.control.to_vec(),
            parsed.data.to_vec(),
        ))
    }

    fn call<T: EncodeControl, R: DecodeControl>(
        &mut self,
        api: ApiKey,
        request: &T,
        data: &[u8],
    ) -> (u16, Option<R>) {
        let (response, _) = self.call_with_data(api, request, data);
        response
    }

    fn call_with_data<T: EncodeControl, R: DecodeControl>(
        &mut self,
        api: ApiKey,
        request: &T,
        data: &[u8],
    ) -> ((u16, Option<R>), Vec<u8>) {
        let id = self.send(api, request, data);
        let (got, error, control, data) = self.receive().unwrap();
        assert_eq!(
            got, id,
            "responses come back in order with their correlation id"
        );
        if error != 0 {
            return ((error, None), data);
        }
        ((0, Some(decode_control::<R>(&control).unwrap())), data)
    }
}

fn batch(tag: &str, records: u32) -> Vec<u8> {
    let mut builder = BatchBuilder::new(BatchOptions::default());
    for i in 0..records {
        builder.push(
            1_700_000_000_000 + i64::from(i),
            Some(tag.as_bytes()),
            Some(format!("{tag}-{i}").as_bytes()),
            &[],
        );
    }
    builder.finish()
}

fn create_topic(client: &mut Client, name: &str, partitions: u32) -> ErrorCode {
    let (error, response): (u16, Option<TopicResponse>) = client.call(
        ApiKey::CreateTopic,
        &CreateTopicRequest {
            name: name.into(),
            partitions,
            replication_factor: 1,
        },
        &[],
    );
    assert_eq!(error, 0);
    response.unwrap().error
}

/// Shard address owning each partition of a topic.
fn owners(client: &mut Client, topic: &str) -> Vec<String> {
    let (_, meta): (u16, Option<MetadataResponse>) = client.call(
        ApiKey::Metadata,
        &MetadataRequest {
            topics: Some(vec![topic.into()]),
        },
        &[],
    );
    let meta = meta.unwrap();
    let broker = &meta.brokers[0];
    meta.topics[0]
        .partitions
        .iter()
        .map(|p| broker.shard_addresses[p.shard as usize].clone())
        .collect()
}

fn produce(
    client: &mut Client,
    topic: &str,
    partition: u32,
    bytes: &[u8],
    acks: Acks,
) -> (ErrorCode, u64) {
    let request = ProduceRequest {
        acks,
        timeout_ms: 10_000,
        partitions: vec![ProducePartition {
            topic: topic.into(),
            partition,
            batch_len: bytes.len() as u32,
        }],
    };
    let (error, response): (u16, Option<ProduceResponse>) =
        client.call(ApiKey::Produce, &request, bytes);
    assert_eq!(error, 0);
    let p = &response.unwrap().partitions[0];
    (p.error, p.base_offset)
}

/// Produces, retrying while the new partition's log is being opened on its shard.
fn produce_ready(client: &mut Client, topic: &str, partition: u32, bytes: &[u8]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match produce(client, topic, partition, bytes, Acks::Leader) {
            (ErrorCode::None, offset) => return offset,
            (ErrorCode::NotLeaderOrWrongShard, _) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            (error, _) => panic!("produce failed: {error:?}"),
        }
    }
}

fn fetch(
    client: &mut Client,
    topic: &str,
    partition: u32,
    offset: u64,
    wait_ms: u32,
) -> (FetchResponse, Vec<u8>) {
    let request = FetchRequest {
        max_wait_ms: wait_ms,
        min_bytes: 1,
        max_bytes: 4 << 20,
        partitions: vec![FetchPartition {
            topic: topic.into(),
            partition,
            offset,
            max_bytes: 4 << 20,
        }],
    };
    let ((error, response), data) =
        client.call_with_data::<_, FetchResponse>(ApiKey::Fetch, &request, &[]);
    assert_eq!(error, 0);
    (response.unwrap(), data)
}

/// Values of every record from `offset` to the end of the partition.
fn read_all(client: &mut Client, topic: &str, partition: u32) -> Vec<(u64, String)> {
    let mut offset = 0;
    let mut out = Vec::new();
    loop {
        let (response, data) = fetch(client, topic, partition, offset, 0);
        assert_eq!(response.partitions[0].error, ErrorCode::None);
        if data.is_empty() {
            return out;
        }
        for item in BatchIter::new(&data) {
            let (header, bytes) = item.unwrap();
            for record in RecordIter::new(&header, &bytes[BATCH_HEADER_BYTES..]) {
                let record = record.unwrap();
                out.push((
                    header.base_offset + u64::from(record.offset_delta),
                    String::from_utf8(record.value.unwrap().to_vec()).unwrap(),
                ));
            }
            offset = header.next_offset();
        }
    }
}

#[test]
fn produce_and_fetch_across_shards_keep_order_and_survive_restart() {
    let mut broker = start_broker();
    let mut admin = Client::connect(&broker.listen).unwrap();
    assert_eq!(create_topic(&mut admin, "orders", 4), ErrorCode::None);
    assert_eq!(
        create_topic(&mut admin, "orders", 4),
        ErrorCode::TopicExists
    );
    assert_eq!(
        create_topic(&mut admin, "bad name", 1),
        ErrorCode::InvalidTopic
    );
    let owners = owners(&mut admin, "orders");
    assert!(
        owners
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 2,
        "partitions spread over both shards"
    );
    let mut clients: Vec<Client> = owners.iter().map(|a| Client::connect(a).unwrap()).collect();
    for round in 0..30u32 {
        for partition in 0..4u32 {
            let tag = format!("p{partition}-r{round}");
            let offset = produce_ready(
                &mut clients[partition as usize],
                "orders",
                partition,
                &batch(&tag, 3),
            );
            assert_eq!(
                offset,
                u64::from(round) * 3,
                "offsets are assigned in order per partition"
            );
        }
    }
    for partition in 0..4u32 {
        let records = read_all(&mut clients[partition as usize], "orders", partition);
        assert_eq!(records.len(), 90);
        for (i, (offset, value)) in records.iter().enumerate() {
            assert_eq!(*offset, i as u64);
            assert_eq!(*value, format!("p{partition}-r{}-{}", i / 3, i % 3));
        }
    }
    // A request for a partition owned by the other shard says so.
    let wrong = (1..4).find(|&p| owners[p] != owners[0]).unwrap() as u32;
    assert_eq!(
        produce(
            &mut clients[0],
            "orders",
            wrong,
            &batch("x", 1),
            Acks::Leader
        )
        .0,
        ErrorCode::NotLeaderOrWrongShard
    );

    drop(clients);
    let status = broker.terminate();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    restart(&mut broker);
    let mut admin = Client::connect(&broker.listen).unwrap();
    let owners = self::owners(&mut admin, "orders");
    for partition in 0..4u32 {
        let mut client = Client::connect(&owners[partition as usize]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (response, _) = fetch(&mut client, "orders", partition, 0, 0);
            if response.partitions[0].error == ErrorCode::None || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            read_all(&mut client, "orders", partition).len(),
            90,
            "data intact after restart"
        );
    }
}

#[test]
fn long_poll_fetch_is_woken_by_produce() {
    let broker = start_broker();
    let mut admin = Client::connect(&broker.listen).unwrap();
    assert_eq!(create_topic(&mut admin, "tail", 1), ErrorCode::None);
    let owner = owners(&mut admin, "tail")[0].clone();
    let mut producer = Client::connect(&owner).unwrap();
    produce_ready(&mut producer, "tail", 0, &batch("first", 1));
    let consumer_address = owner.clone();
    let waiter = std::thread::spawn(move || {
        let mut consumer = Client::connect(&consumer_address).unwrap();
        let started = Instant::now();
        let (response, data) = fetch(&mut consumer, "tail", 0, 1, 20_000);
        (started.elapsed(), response, data)
    });
    std::thread::sleep(Duration::from_millis(300));
    produce_ready(&mut producer, "tail", 0, &batch("second", 2));
    let (elapsed, response, data) = waiter.join().unwrap();
    assert!(!data.is_empty(), "the waiting fetch returned the new batch");
    assert!(
        elapsed < Duration::from_secs(15),
        "woken by the append, not by the 20 s deadline"
    );
    assert_eq!(response.partitions[0].high_watermark, 3);
    let header = BatchHeader::parse(&data).unwrap();
    assert_eq!(header.base_offset, 1);
}

#[test]
fn bad_input_gets_typed_errors_while_others_keep_working() {
    let broker = start_broker();
    let mut admin = Client::connect(&broker.listen).unwrap();
    assert_eq!(create_topic(&mut admin, "safe", 1), ErrorCode::None);
    let owner = owners(&mut admin, "safe")[0].clone();
    let mut good = Client::connect(&owner).unwrap();
    produce_ready(&mut good, "safe", 0, &batch("ok", 1));
    let mut bad = Client::connect(&owner).unwrap();

    // Unknown topic, partition out of range.
    assert_eq!(
        produce(&mut bad, "nope", 0, &batch("x", 1), Acks::Leader).0,
        ErrorCode::UnknownTopicOrPartition
    );
    assert_eq!(
        produce(&mut bad, "safe", 7, &batch("x", 1), Acks::Leader).0,
        ErrorCode::UnknownTopicOrPartition
    );
    // CRC mismatch.
    let mut flipped = batch("x", 1);
    let last = flipped.len() - 1;
    flipped[last] ^= 0x55;
    assert_eq!(
        produce(&mut bad, "safe", 0, &flipped, Acks::Leader).0,
        ErrorCode::CorruptBatch
    );
    // Oversized message (the topic's default limit is 1 MiB).
    let mut builder = BatchBuilder::new(BatchOptions::default());
    builder.push(1, None, Some(&vec![7u8; 2 << 20]), &[]);
    assert_eq!(
        produce(&mut bad, "safe", 0, &builder.finish(), Acks::Leader).0,
        ErrorCode::BatchTooLarge
    );
    // Empty and truncated batches.
    assert_eq!(
        produce(&mut bad, "safe", 0, &[0u8; 10], Acks::Leader).0,
        ErrorCode::InvalidBatch
    );
    // Fetch out of range.
    let (response, _) = fetch(&mut bad, "safe", 0, 99, 0);
    assert_eq!(response.partitions[0].error, ErrorCode::OffsetOutOfRange);
    // Malformed control part: a frame error, and the connection keeps working.
    let mut frame = encode_request(ApiKey::Produce, 0, 4242, &[1, 2, 3, 4, 5, 6, 7], 0);
    frame.extend_from_slice(&[]);
    bad.stream.write_all(&frame).unwrap();
    let (id, error, _, _) = bad.receive().unwrap();
    assert_eq!((id, error), (4242, FrameError::MalformedControl as u16));
    // Unknown API key and unsupported version.
    let frame = encode_request(
        ApiKey::Metadata,
        9,
        77,
        &encode_control(&MetadataRequest { topics: None }),
        0,
    );
    bad.stream.write_all(&frame).unwrap();
    assert_eq!(
        bad.receive().unwrap().1,
        FrameError::UnsupportedVersion as u16
    );
    let mut frame = encode_request(ApiKey::Metadata, 0, 78, &[], 0);
    frame[4] = 99;
    bad.stream.write_all(&frame).unwrap();
    assert_eq!(bad.receive().unwrap().1, FrameError::UnsupportedApi as u16);
    // The log is unchanged by all of it, and the good client carries on.
    let (_, offset) = produce(&mut good, "safe", 0, &batch("still", 1), Acks::Leader);
    assert_eq!(offset, 1);
    let (offsets, _) = {
        let request = ListOffsetsRequest {
            partitions: vec![ListOffsetsPartition {
                topic: "safe".into(),
                partition: 0,
                query: OffsetQuery::Latest,
            }],
        };
        let (error, response): (u16, Option<ListOffsetsResponse>) =
            good.call(ApiKey::ListOffsets, &request, &[]);
        (response.unwrap(), error)
    };
    assert_eq!(offsets.partitions[0].offset, Some(2));
    // Broken framing (an impossible length): answered, then the connection closes.
    bad.stream.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let (_, error, _, _) = bad.receive().unwrap();
    assert_eq!(error, FrameError::FrameTooLarge as u16);
    let mut rest = Vec::new();
    assert_eq!(
        bad.stream.read_to_end(&mut rest).unwrap_or(0),
        0,
        "connection closed"
    );
    assert_eq!(read_all(&mut good, "safe", 0).len(), 2);
}

#[test]
fn graceful_shutdown_loses_no_acknowledged_message() {
    let mut broker = start_broker();
    let mut admin = Client::connect(&broker.listen).unwrap();
    assert_eq!(create_topic(&mut admin, "drain", 1), ErrorCode::None);
    let owner = owners(&mut admin, "drain")[0].clone();
    let mut producer = Client::connect(&owner).unwrap();
    produce_ready(&mut producer, "drain", 0, &batch("warm", 1));
    let acked = std::thread::spawn(move || {
        let mut acked = 1u64;
        loop {
            let request = ProduceRequest {
                acks: Acks::Leader,
                timeout_ms: 10_000,
                partitions: vec![ProducePartition {
                    topic: "drain".into(),
                    partition: 0,
                    batch_len: 0,
                }],
            };
            let bytes = batch(&format!("m{acked}"), 1);
            let request = ProduceRequest {
                partitions: vec![ProducePartition {
                    batch_len: bytes.len() as u32,
                    ..request.partitions[0].clone()
                }],
                ..request
            };
            producer.send(ApiKey::Produce, &request, &bytes);
            match producer.receive() {
                Ok((_, 0, control, _)) => {
                    let response: ProduceResponse = decode_control(&control).unwrap();
                    if response.partitions[0].error != ErrorCode::None {
                        return acked;
                    }
                    assert_eq!(response.partitions[0].base_offset, acked);
                    acked += 1;
                }
                _ => return acked,
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let status = broker.terminate();
    assert!(status.success());
    let acked = acked.join().unwrap();
    assert!(acked > 1);
    restart(&mut broker);
    let mut admin = Client::connect(&broker.listen).unwrap();
    let owner = owners(&mut admin, "drain")[0].clone();
    let mut client = Client::connect(&owner).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let (response, _) = fetch(&mut client, "drain", 0, 0, 0);
        if response.partitions[0].error == ErrorCode::None {
            break read_all(&mut client, "drain", 0);
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        records.len() as u64 >= acked,
        "every acknowledged message survived: {} < {acked}",
        records.len()
    );
}

#[test]
fn bad_flags_and_unusable_data_dirs_exit_2_and_config_files_yield_to_flags() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice-broker"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    for args in [
        &["--bogus"][..],
        &["--mode", "fast"],
        &["--peers", "1=nowhere"],
        &["--shards", "0"],
    ] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
    }
    let file = tempfile::Builder::new()
        .tempfile_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let output = run(&["--data-dir", file.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    // Settings from a TOML file, with a flag overriding one of them.
    let dir = tempfile::Builder::new()
        .prefix("config")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let (from_file, from_flag) = (
        format!("127.0.0.1:{}", common::free_port()),
        format!("127.0.0.1:{}", common::free_port()),
    );
    let shard_port = common::free_port();
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = {from_file:?}\nmetadata_listen = \"127.0.0.1:{}\"\nshards = 1\nmode = \"latency\"\nshard_ports = [{shard_port}]\nmetrics_listen = \"none\"\nkafka_listen = \"none\"\n",
            dir.path().join("data"),
            common::free_port()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-broker"))
        .args(["--config", config.to_str().unwrap(), "--listen", &from_flag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Client::connect(&from_flag).is_err() {
        assert!(Instant::now() < deadline, "the flag's address is served");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        Client::connect(&from_file).is_err(),
        "the file's address lost to the flag"
    );
    assert!(
        dir.path().join("data").join("metadata").exists(),
        "the file's data_dir is used"
    );
    // The shard listens on the file's `shard_ports` (and answers once it has metadata).
    while !common::answers(&format!("127.0.0.1:{shard_port}")) {
        assert!(Instant::now() < deadline, "the file's shard port is served");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second broker on ports in use: a start-up error naming the port, not a shared port.
    let other = tempfile::Builder::new()
        .prefix("config-other")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let metadata = format!("127.0.0.1:{}", common::free_port());
    let free = common::free_port().to_string();
    let in_use = shard_port.to_string();
    let data = other.path().to_str().unwrap();
    let start = |listen: &str, shard: &str| {
        let base = [
            "--data-dir",
            data,
            "--metadata-listen",
            &metadata,
            "--shards",
            "1",
        ];
        run(&[&base[..], &["--listen", listen, "--shard-ports", shard]].concat())
    };
    for (listen, shard, port) in [
        (from_flag.as_str(), free.as_str(), from_flag.clone()),
        (
            &format!("127.0.0.1:{}", common::free_port()),
            &in_use,
            in_use.clone(),
        ),
    ] {
        let output = start(listen, shard);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "a second broker on {port} started"
        );
        assert!(
            stderr.contains(&port) && stderr.contains("in use"),
            "the error names the port in use: {stderr}"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn idempotent_batch(producer_id: i64, base_sequence: i32, tag: &str) -> Vec<u8> {
    let mut builder = BatchBuilder::new(BatchOptions {
        producer_id,
        producer_epoch: 0,
        base_sequence,
    });
    builder.push(1, None, Some(tag.as_bytes()), &[]);
    builder.push(2, None, Some(tag.as_bytes()), &[]);
    builder.finish()
}

fn init_producer_id(client: &mut Client) -> i64 {
    use sluice_protocol::native::{InitProducerIdRequest, InitProducerIdResponse};
    let (error, response): (u16, Option<InitProducerIdResponse>) = client.call(
        ApiKey::InitProducerId,
        &InitProducerIdRequest {
            transactional_id: None,
        },
        &[],
    );
    assert_eq!(error, 0);
    let response = response.unwrap();
    assert_eq!(response.error, ErrorCode::None);
    response.producer_id
}

#[test]
fn idempotent_retries_are_written_once_even_across_a_restart() {
    let mut broker = start_broker();
    let mut admin = Client::connect(&broker.listen).unwrap();
    assert_eq!(create_topic(&mut admin, "once", 1), ErrorCode::None);
    let owner = owners(&mut admin, "once")[0].clone();
    let mut client = Client::connect(&owner).unwrap();
    let id = init_producer_id(&mut client);
    assert_ne!(id, init_producer_id(&mut client), "producer ids are unique");
    let first = idempotent_batch(id, 0, "a");
    assert_eq!(produce_ready(&mut client, "once", 0, &first), 0);
    // A retry after a lost response: the same offset, nothing written twice.
    assert_eq!(
        produce(&mut client, "once", 0, &first, Acks::Leader),
        (ErrorCode::None, 0)
    );
    assert_eq!(
        produce(
            &mut client,
            "once",
            0,
            &idempotent_batch(id, 2, "b"),
            Acks::Leader
        ),
        (ErrorCode::None, 2)
    );
    // A gap means a batch was lost in between: refused.
    assert_eq!(
        produce(
            &mut client,
            "once",
            0,
            &idempotent_batch(id, 9, "c"),
            Acks::Leader
        )
        .0,
        ErrorCode::OutOfOrderSequence
    );
    drop(client);
    assert!(broker.terminate().success());
    restart(&mut broker);
    let mut admin = Client::connect(&broker.listen).unwrap();
    let owner = owners(&mut admin, "once")[0].clone();
    let mut client = Client::connect(&owner).unwrap();
    // The producer state came back from the log: the retry is still recognized.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (error, offset) = loop {
        let outcome = produce(
            &mut client,
            "once",
            0,
            &idempotent_batch(id, 2, "b"),
            Acks::Leader,
        );
        if outcome.0 != ErrorCode::NotLeaderOrWrongShard || Instant::now() > deadline {
            break outcome;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((error, offset), (ErrorCode::None, 2));
    assert_eq!(
        produce(
            &mut client,
            "once",
            0,
            &idempotent_batch(id, 4, "d"),
            Acks::Leader
        ),
        (ErrorCode::None, 4)
    );
    let values: Vec<String> = read_all(&mut client, "once", 0)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values, ["a", "a", "b", "b", "d", "d"]);
    assert!(
        init_producer_id(&mut client) > id,
        "ids stay unique across restarts"
    );
}

/// One idempotent producer's batches sent on two connections at once, as when a producer
/// retries on a new connection while the broker still reads the old one. Segments of 1 MiB
/// make appends wait on rolls, so each connection's append of a batch can be in progress while
/// the other checks the same batch. Check, append and record of a sequence are one step per
/// partition: every batch is written once, both connections are answered with its offset,
/// and neither is refused as out of order (before, a batch could pass the check on both
/// connections and be written twice, and a record made out of order made the next batch look
/// like a gap).
#[test]
fn the_same_batches_on_two_connections_at_once_are_written_once() {
    const BATCHES: i32 = 48;
    const RECORDS: u32 = 32;
    let broker = start_broker_with(&["--segment-bytes", "1048576", "--mode", "latency"]);
    let mut admin = Client::connect(&broker.listen).unwrap();
    assert_eq!(create_topic(&mut admin, "twice", 1), ErrorCode::None);
    let owner = owners(&mut admin, "twice")[0].clone();
    let mut client = Client::connect(&owner).unwrap();
    let id = init_producer_id(&mut client);
    // The first batch makes sure the log is open before the race starts.
    let batch = |seq: i32| {
        let mut builder = BatchBuilder::new(BatchOptions {
            producer_id: id,
            producer_epoch: 0,
            base_sequence: seq * RECORDS as i32,
        });
        for r in 0..RECORDS {
            let mut value = format!("{seq}-{r}-").into_bytes();
            value.resize(8 << 10, b'v');
            builder.push(1, None, Some(&value), &[]);
        }
        builder.finish()
    };
    assert_eq!(produce_ready(&mut client, "twice", 0, &batch(0)), 0);
    let batches: Arc<Vec<Vec<u8>>> = Arc::new((1..BATCHES).map(batch).collect());
    // A producer has at most 16 batches of a partition in flight (what the broker remembers),
    // so both connections send the same windows of 16, each window at the same moment.
    let window = 16;
    let start = Arc::new(std::sync::Barrier::new(2));
    let connections: Vec<_> = (0..2)
        .map(|_| {
            let (owner, batches, start) = (owner.clone(), Arc::clone(&batches), Arc::clone(&start));
            std::thread::spawn(move || {
                let mut client = Client::connect(&owner).unwrap();
                let mut answers = Vec::new();
                for chunk in batches.chunks(window) {
                    start.wait();
                    // The whole window pipelined: the broker reads on while its appends wait.
                    let mut frames = Vec::new();
                    for bytes in chunk {
                        let request = ProduceRequest {
                            acks: Acks::Leader,
                            timeout_ms: 10_000,
                            partitions: vec![ProducePartition {
                                topic: "twice".into(),
                                partition: 0,
                                batch_len: bytes.len() as u32,
                            }],
                        };
                        let control = encode_control(&request);
                        frames.extend(encode_request(ApiKey::Produce, 0, 0, &control, bytes.len()));
                        frames.extend_from_slice(bytes);
                    }
                    client.stream.write_all(&frames).unwrap();
                    for _ in chunk {
                        let (_, error, control, _) = client.receive().unwrap();
                        assert_eq!(error, 0);
                        let response = decode_control::<ProduceResponse>(&control).unwrap();
                        let p = &response.partitions[0];
                        answers.push((p.error, p.base_offset));
                    }
                }
                answers
            })
        })
        .collect();
    let answers: Vec<Vec<(ErrorCode, u64)>> =
        connections.into_iter().map(|t| t.join().unwrap()).collect();
    for (i, (a, b)) in answers[0].iter().zip(&answers[1]).enumerate() {
        let expected = (ErrorCode::None, (i as u64 + 1) * u64::from(RECORDS));
        assert_eq!(*a, expected, "batch {} on the first connection", i + 1);
        assert_eq!(*b, expected, "batch {} on the second connection", i + 1);
    }
    let values = read_all(&mut client, "twice", 0);
    assert_eq!(
        values.len(),
        BATCHES as usize * RECORDS as usize,
        "each batch once"
    );
    for (i, (offset, value)) in values.iter().enumerate() {
        assert_eq!(*offset, i as u64);
        let expected = format!("{}-{}-", i / RECORDS as usize, i % RECORDS as usize);
        assert!(
            value.starts_with(&expected),
            "offset {i} holds {:?}",
            &value[..16]
        );
    }
}

/// Produce requests that carry five ~1 MiB batches for the same partition (idempotent, acks
/// all), with 8 MiB segments so that most requests roll the segment in the middle of their
/// batches: every request is answered in time, without errors, with contiguous offsets. First
/// with one request in flight (a producer that sends a partition's in-flight batches together),
/// then with five.
#[test]
fn several_batches_per_request_across_segment_rolls_are_all_acknowledged() {
    let broker = start_broker_with(&["--segment-bytes", "8388608"]);
    let mut admin = Client::connect(&broker.listen).unwrap();
    assert_eq!(create_topic(&mut admin, "rolls", 1), ErrorCode::None);
    let owner = owners(&mut admin, "rolls")[0].clone();
    let mut client = Client::connect(&owner).unwrap();
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let id = init_producer_id(&mut client);
    let records = 16i32;
    let mut template = BatchBuilder::new(BatchOptions::default());
    let value = vec![b'r'; 62_400];
    for i in 0..records {
        template.push(1_700_000_000_000 + i64::from(i), None, Some(&value), &[]);
    }
    let template = template.finish();
    let mut sequence = 0i32;
    let mut next_batch = || {
        let mut bytes = template.clone();
        sluice_protocol::set_producer(
            &mut bytes,
            BatchOptions {
                producer_id: id,
                producer_epoch: 0,
                base_sequence: sequence,
            },
        );
        sequence += records;
        bytes
    };
    // The first batch also waits until the new partition's log is open.
    assert_eq!(produce_ready(&mut client, "rolls", 0, &next_batch()), 0);
    let mut expected_offset = records as u64;
    let batches_per_request = 5usize;
    for in_flight in [1usize, 5] {
        let requests = 16usize;
        let (mut sent, mut answered) = (0usize, 0usize);
        while answered < requests {
            while sent < requests && sent - answered < in_flight {
                let mut data = Vec::new();
                let mut partitions = Vec::new();
                for _ in 0..batches_per_request {
                    let bytes = next_batch();
                    partitions.push(ProducePartition {
                        topic: "rolls".into(),
                        partition: 0,
                        batch_len: bytes.len() as u32,
                    });
                    data.extend_from_slice(&bytes);
                }
                let request = ProduceRequest {
                    acks: Acks::All,
                    timeout_ms: 10_000,
                    partitions,
                };
                client.send(ApiKey::Produce, &request, &data);
                sent += 1;
            }
            let (_, error, control, _) = client.receive().unwrap_or_else(|e| {
                panic!(
                    "request {answered} of {requests} ({batches_per_request} batches for one \
                     partition, {in_flight} in flight) not answered within 20 s: {e}"
                )
            });
            assert_eq!(error, 0);
            let response: ProduceResponse = decode_control(&control).unwrap();
            assert_eq!(response.partitions.len(), batches_per_request);
            for p in &response.partitions {
                assert_eq!(
                    (p.error, p.base_offset),
                    (ErrorCode::None, expected_offset),
                    "request {answered} ({in_flight} in flight)"
                );
                expected_offset += records as u64;
            }
            answered += 1;
        }
    }
    let topics = broker.dir.path().join("topics");
    let segments: usize = std::fs::read_dir(&topics)
        .unwrap()
        .map(|partition| {
            std::fs::read_dir(partition.unwrap().path())
                .unwrap()
                .filter(|f| f.as_ref().unwrap().path().extension() == Some("log".as_ref()))
                .count()
        })
        .sum();
    assert!(segments > 10, "the segments rolled: {segments} segments");
}

/// Cold reads of sealed segments go out with `sendfile` on the shard's blocking-thread pool. A
/// consumer that asks for a lot and stops reading fills its socket; that must not hold the pool
/// (or the shard) from serving another consumer's cold reads, and the stalled consumer still
/// gets every byte, intact, once it reads again.
#[test]
fn a_stalled_cold_reader_does_not_hold_up_other_cold_reads() {
    let mut broker = start_broker_with(&["--segment-bytes", "1048576"]);
    let mut admin = Client::connect(&broker.listen).unwrap();
    assert_eq!(create_topic(&mut admin, "cold", 1), ErrorCode::None);
    let owner = owners(&mut admin, "cold")[0].clone();
    let mut producer = Client::connect(&owner).unwrap();
    // About 6 MiB in batches of 200 records: several sealed 1 MiB segments.
    for round in 0..120u32 {
        produce_ready(
            &mut producer,
            "cold",
            0,
            &batch(&format!("r{round:03}-{}", "x".repeat(200)), 200),
        );
    }
    // Restart: an empty tail cache, so reads come from the segment files.
    assert!(broker.terminate().success());
    restart(&mut broker);
    let mut admin = Client::connect(&broker.listen).unwrap();
    let owner = owners(&mut admin, "cold")[0].clone();
    let mut probe = Client::connect(&owner).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetch(&mut probe, "cold", 0, 0, 0).0.partitions[0].error != ErrorCode::None {
        assert!(Instant::now() < deadline, "the partition reopens");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The stalled reader: many fetches of the first segment, none of the answers read.
    let mut stalled = Client::connect(&owner).unwrap();
    let request = FetchRequest {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 4 << 20,
        partitions: vec![FetchPartition {
            topic: "cold".into(),
            partition: 0,
            offset: 0,
            max_bytes: 4 << 20,
        }],
    };
    const STALLED_FETCHES: usize = 24;
    for _ in 0..STALLED_FETCHES {
        stalled.send(ApiKey::Fetch, &request, &[]);
    }
    // Another consumer on the same shard reads the whole partition from the start.
    let mut reader = Client::connect(&owner).unwrap();
    reader
        .stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let records = read_all(&mut reader, "cold", 0);
    assert_eq!(records.len(), 120 * 200);
    for (i, (offset, value)) in records.iter().enumerate() {
        assert_eq!(*offset, i as u64);
        assert!(value.starts_with(&format!("r{:03}-", i / 200)), "{value}");
    }
    // The stalled reader now reads: every answer whole, valid and the same.
    let mut first: Option<Vec<u8>> = None;
    for _ in 0..STALLED_FETCHES {
        let (_, error, control, data) = stalled.receive().unwrap();
        assert_eq!(error, 0);
        let response: FetchResponse = decode_control(&control).unwrap();
        assert_eq!(response.partitions[0].error, ErrorCode::None);
        assert!(data.len() > 512 << 10, "a segment's worth of batches");
        for item in BatchIter::new(&data) {
            item.unwrap();
        }
        match &first {
            None => first = Some(data),
            Some(f) => assert_eq!(*f, data),
        }
    }
}
