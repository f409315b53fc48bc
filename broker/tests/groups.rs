//! Consumer groups against real broker processes: publish-subscribe and point-to-point, offsets
//! surviving a restart and the SIGKILL of the coordinator's broker, static members, fencing of
//! stale epochs, bad input, and churn of member *processes* (SIGKILL) checked by an oracle for
//! exclusive ownership and for the at-least-once and at-most-once guarantees.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_client::{
    Admin, ClientConfig, Consumer, ConsumerConfig, DeliveryGuarantee, Error, ErrorCode,
    OffsetReset, Producer, ProducerConfig, ProducerRecord, RebalanceListener, Subscription,
    TopicPartition,
};
use sluice_protocol::group_api::{
    FindCoordinatorRequest, FindCoordinatorResponse, GroupHeartbeatRequest, GroupHeartbeatResponse,
    GroupPartition, OffsetCommitPartition, OffsetCommitRequest, OffsetCommitResponse,
    Subscription as WireSubscription,
};
use sluice_protocol::native::{
    decode_control, encode_control, encode_request, split_response, ApiKey, DecodeControl,
    EncodeControl,
};

use common::clients::{create_topic, create_topic_on, ClientOf};
use common::BrokerProcess as Broker;

/// Group tests heartbeat fast so that rebalances settle in well under a second.
const BROKER_ARGS: &[&str] = &["--group-heartbeat-interval-ms", "100"];

fn start_broker() -> Broker {
    Broker::start("groups", 2, BROKER_ARGS)
}

fn consumer_config(config: ClientConfig) -> ConsumerConfig {
    ConsumerConfig::new(config)
        .auto_offset_reset(OffsetReset::Earliest)
        .fetch_wait_max(Duration::from_millis(50))
        .group_session_timeout(Duration::from_secs(6))
        .auto_commit_interval(Duration::from_millis(100))
}

async fn produce(config: ClientConfig, topic: &str, from: u64, count: u64) {
    let producer = Producer::new(ProducerConfig::new(config)).await.unwrap();
    let mut deliveries = Vec::new();
    for i in from..from + count {
        let record = ProducerRecord::new(topic)
            .key(format!("key-{}", i % 97))
            .value(i.to_string());
        deliveries.push(producer.send(record).await.unwrap());
    }
    for d in deliveries {
        d.await.unwrap();
    }
    producer.close().await.unwrap();
}

fn value_of(record: &sluice_client::ConsumerRecord) -> u64 {
    std::str::from_utf8(record.value.as_ref().unwrap())
        .unwrap()
        .parse()
        .unwrap()
}

/// A request straight to an address, for what the client never sends (stale epochs, bad ids).
fn raw_call<Req: EncodeControl, Resp: DecodeControl>(
    address: &str,
    api: ApiKey,
    request: &Req,
) -> Resp {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .write_all(&encode_request(api, 0, 1, &encode_control(request), 0))
        .unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut frame = vec![0u8; u32::from_le_bytes(len) as usize];
    stream.read_exact(&mut frame).unwrap();
    decode_control(split_response(&frame).unwrap().control).unwrap()
}

/// The coordinator's address of `group`, retried while the offsets log is being created.
fn coordinator(any: &str, group: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response: FindCoordinatorResponse = raw_call(
            any,
            ApiKey::FindCoordinator,
            &FindCoordinatorRequest {
                group: group.into(),
            },
        );
        if response.error == ErrorCode::None {
            return response.address;
        }
        assert!(Instant::now() < deadline, "no coordinator: {response:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn heartbeat(address: &str, request: &GroupHeartbeatRequest) -> GroupHeartbeatResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response: GroupHeartbeatResponse = raw_call(address, ApiKey::GroupHeartbeat, request);
        // Right after the offsets log is made, its partitions take a moment to be led and
        // loaded.
        let settling = matches!(
            response.error,
            ErrorCode::CoordinatorLoadInProgress | ErrorCode::NotCoordinator
        );
        if !settling {
            return response;
        }
        assert!(
            Instant::now() < deadline,
            "coordinator not ready: {response:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until `done` holds of everything read so far.
async fn poll_until(
    consumer: &mut Consumer,
    seen: &mut Vec<u64>,
    what: &str,
    done: impl Fn(&[u64]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(seen) {
        assert!(Instant::now() < deadline, "{what}: read {}", seen.len());
        for r in consumer.poll(Duration::from_millis(100)).await.unwrap() {
            seen.push(value_of(&r));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_see_every_record_and_one_group_splits_the_work() {
    let broker = start_broker();
    create_topic(&broker, "orders", 8).await;
    const RECORDS: u64 = 2_000;
    produce(broker.config(), "orders", 0, RECORDS).await;

    // Group "audit": one member reads everything.
    let mut audit = Consumer::new(consumer_config(broker.config())).unwrap();
    audit.subscribe("audit", ["orders"]).unwrap();
    // Group "billing": four members share the work, each record read by exactly one.
    let seen: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let mut members = Vec::new();
    let stop = Arc::new(tokio::sync::Notify::new());
    let assignments: Arc<Mutex<HashMap<usize, Vec<TopicPartition>>>> = Arc::default();
    for m in 0..4 {
        let config = consumer_config(broker.config());
        let seen = Arc::clone(&seen);
        let stop = Arc::clone(&stop);
        let assignments = Arc::clone(&assignments);
        members.push(tokio::spawn(async move {
            let mut consumer = Consumer::new(config).unwrap();
            consumer.subscribe("billing", ["orders"]).unwrap();
            loop {
                tokio::select! {
                    _ = stop.notified() => break,
                    polled = consumer.poll(Duration::from_millis(100)) => {
                        for r in polled.unwrap() {
                            seen.lock().unwrap().push((m, value_of(&r)));
                        }
                        assignments.lock().unwrap().insert(m, consumer.assignment());
                    }
                }
            }
            consumer.close().await.unwrap();
        }));
    }
    let mut all = Vec::new();
    poll_until(&mut audit, &mut all, "audit group", |s| {
        s.len() as u64 >= RECORDS
    })
    .await;
    all.sort_unstable();
    assert_eq!(
        all,
        (0..RECORDS).collect::<Vec<_>>(),
        "audit saw each record once"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    while (seen.lock().unwrap().len() as u64) < RECORDS {
        assert!(
            Instant::now() < deadline,
            "billing read {}",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settled: each member owns two of the eight partitions.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let owned = assignments.lock().unwrap().clone();
        let counts: Vec<usize> = (0..4).map(|m| owned.get(&m).map_or(0, Vec::len)).collect();
        let union: BTreeSet<TopicPartition> = owned.values().flatten().cloned().collect();
        if counts == [2, 2, 2, 2] && union.len() == 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "billing did not settle: {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let mut values: Vec<u64> = seen.iter().map(|(_, v)| *v).collect();
    values.sort_unstable();
    assert_eq!(
        values,
        (0..RECORDS).collect::<Vec<_>>(),
        "billing read each record once"
    );
    let workers: HashSet<usize> = seen.iter().map(|(m, _)| *m).collect();
    assert_eq!(
        workers.len(),
        4,
        "every billing member did some of the work"
    );

    stop.notify_waiters();
    for m in members {
        m.await.unwrap();
    }
    audit.close().await.unwrap();
    let admin = Admin::new(broker.config()).unwrap();
    let groups = admin.list_groups().await.unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, ["audit", "billing"]);
    let billing = admin.describe_group("billing").await.unwrap();
    assert_eq!(billing.state, "Empty", "{billing:?}");
    assert_eq!(billing.offsets.len(), 8);
    assert!(
        billing.offsets.iter().all(|o| o.lag == Some(0)),
        "{billing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_broker_restart_and_resume_the_group() {
    let mut broker = start_broker();
    create_topic(&broker, "resume", 3).await;
    produce(broker.config(), "resume", 0, 300).await;

    let mut consumer = Consumer::new(consumer_config(broker.config()).auto_commit(false)).unwrap();
    consumer.subscribe("resumers", ["resume"]).unwrap();
    let mut seen = Vec::new();
    poll_until(&mut consumer, &mut seen, "first read", |s| s.len() >= 300).await;
    consumer.commit().await.unwrap();
    for p in 0..3 {
        let tp = TopicPartition::new("resume", p);
        assert_eq!(
            consumer.committed(&tp).await.unwrap(),
            consumer.position(&tp).unwrap()
        );
    }
    drop(consumer); // No leave: the session would still hold the partitions...

    broker.kill();
    broker.spawn(false);
    produce(broker.config(), "resume", 300, 100).await;
    // ... but a restarted coordinator gives fresh sessions; a new member with a short wait
    // for the old one's session to end gets the partitions and resumes where it committed.
    let mut consumer = Consumer::new(consumer_config(broker.config())).unwrap();
    consumer.subscribe("resumers", ["resume"]).unwrap();
    let mut seen = Vec::new();
    poll_until(&mut consumer, &mut seen, "resumed read", |s| s.len() >= 100).await;
    seen.sort_unstable();
    assert_eq!(
        seen,
        (300..400).collect::<Vec<_>>(),
        "resumed exactly after the commit"
    );
    consumer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epochs_unknown_members_and_bad_input_are_refused() {
    let broker = start_broker();
    create_topic(&broker, "fence", 2).await;
    let address = coordinator(&broker.listen, "fenced");
    let join = |instance: Option<&str>| GroupHeartbeatRequest {
        group: "fenced".into(),
        member_id: None,
        member_epoch: 0,
        instance_id: instance.map(String::from),
        session_timeout_ms: 30_000,
        assignor: None,
        subscription: Some(WireSubscription::Topics(vec!["fence".into()])),
        owned: Some(Vec::new()),
    };
    let a = heartbeat(&address, &join(None));
    assert_eq!(a.error, ErrorCode::None, "{a:?}");
    assert_eq!(a.assignment.len(), 2);
    let stale_epoch = a.member_epoch;
    // A second member joins: the group epoch moves; a's next heartbeat (owning both) is asked
    // to release one.
    let b = heartbeat(&address, &join(None));
    assert_eq!(b.error, ErrorCode::None);
    let owned: Vec<GroupPartition> = a.assignment.clone();
    let a2 = heartbeat(
        &address,
        &GroupHeartbeatRequest {
            member_id: Some(a.member_id.clone()),
            member_epoch: a.member_epoch,
            owned: Some(owned.clone()),
            ..join(None)
        },
    );
    assert_eq!(a2.error, ErrorCode::None);
    assert_eq!(a2.assignment.len(), 1, "asked to release one: {a2:?}");
    // a releases; its epoch advances.
    let a3 = heartbeat(
        &address,
        &GroupHeartbeatRequest {
            member_id: Some(a.member_id.clone()),
            member_epoch: a2.member_epoch,
            owned: Some(a2.assignment.clone()),
            ..join(None)
        },
    );
    assert_eq!(a3.error, ErrorCode::None);
    assert!(a3.member_epoch > stale_epoch, "{a3:?}");
    let commit = |member: &str, epoch: i32, p: &GroupPartition| OffsetCommitRequest {
        group: "fenced".into(),
        member_id: Some(member.into()),
        member_epoch: epoch,
        partitions: vec![OffsetCommitPartition {
            topic: p.topic.clone(),
            partition: p.partition,
            offset: 1,
            metadata: String::new(),
        }],
    };
    // A commit from the stale epoch (a zombie of a's older generation) is refused.
    let refused: OffsetCommitResponse = raw_call(
        &address,
        ApiKey::OffsetCommit,
        &commit(&a.member_id, stale_epoch, &a3.assignment[0]),
    );
    assert_eq!(refused.error, ErrorCode::FencedMemberEpoch, "{refused:?}");
    // At the current epoch, the partition it holds commits; the one it released does not.
    let ok: OffsetCommitResponse = raw_call(
        &address,
        ApiKey::OffsetCommit,
        &commit(&a.member_id, a3.member_epoch, &a3.assignment[0]),
    );
    assert_eq!(ok.error, ErrorCode::None);
    assert_eq!(ok.partitions[0].error, ErrorCode::None);
    let released = owned.iter().find(|p| !a3.assignment.contains(p)).unwrap();
    let not_assigned: OffsetCommitResponse = raw_call(
        &address,
        ApiKey::OffsetCommit,
        &commit(&a.member_id, a3.member_epoch, released),
    );
    assert_eq!(
        not_assigned.partitions[0].error,
        ErrorCode::PartitionNotAssigned
    );
    // Unknown members, commits from outside a non-empty group, bad group ids, bad patterns.
    let unknown: OffsetCommitResponse = raw_call(
        &address,
        ApiKey::OffsetCommit,
        &commit("nobody", 1, released),
    );
    assert_eq!(unknown.error, ErrorCode::UnknownMemberId);
    let outside: OffsetCommitResponse = raw_call(
        &address,
        ApiKey::OffsetCommit,
        &OffsetCommitRequest {
            member_id: None,
            member_epoch: -1,
            ..commit("x", 0, released)
        },
    );
    assert_eq!(outside.error, ErrorCode::NonEmptyGroup);
    for group in [String::new(), "g".repeat(256)] {
        let bad: FindCoordinatorResponse = raw_call(
            &broker.listen,
            ApiKey::FindCoordinator,
            &FindCoordinatorRequest { group },
        );
        assert_eq!(bad.error, ErrorCode::InvalidGroupId);
    }
    let bad_pattern = heartbeat(
        &address,
        &GroupHeartbeatRequest {
            subscription: Some(WireSubscription::Pattern("(".into())),
            ..join(None)
        },
    );
    assert_eq!(bad_pattern.error, ErrorCode::InvalidSubscription);
    let bad_assignor = heartbeat(
        &address,
        &GroupHeartbeatRequest {
            assignor: Some("nope".into()),
            ..join(None)
        },
    );
    assert_eq!(bad_assignor.error, ErrorCode::UnsupportedAssignor);
    // The first member of an empty group chooses its assignor.
    let ranged = coordinator(&broker.listen, "ranged");
    let first = heartbeat(
        &ranged,
        &GroupHeartbeatRequest {
            group: "ranged".into(),
            assignor: Some("range".into()),
            ..join(None)
        },
    );
    assert_eq!(first.error, ErrorCode::None);
    let described = Admin::new(broker.config())
        .unwrap()
        .describe_group("ranged")
        .await
        .unwrap();
    assert_eq!(described.assignor, "range");
    // A request for a group this shard does not coordinate names the error to retry on.
    let other = broker
        .shard_addresses()
        .into_iter()
        .find(|a| *a != address)
        .unwrap();
    let elsewhere: GroupHeartbeatResponse = raw_call(&other, ApiKey::GroupHeartbeat, &join(None));
    assert_eq!(elsewhere.error, ErrorCode::NotCoordinator);
    // The group is full at the member limit.
    let full_group = |i: usize| GroupHeartbeatRequest {
        group: "crowd".into(),
        instance_id: Some(format!("i{i}")),
        ..join(None)
    };
    let crowd = coordinator(&broker.listen, "crowd");
    for i in 0..200 {
        assert_eq!(heartbeat(&crowd, &full_group(i)).error, ErrorCode::None);
    }
    assert_eq!(
        heartbeat(&crowd, &full_group(200)).error,
        ErrorCode::GroupMaxSizeReached
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_that_restarts_within_its_session_causes_no_rebalance() {
    let broker = start_broker();
    create_topic(&broker, "static", 4).await;
    let config = |instance: &str| {
        consumer_config(broker.config())
            .group_instance_id(instance)
            .group_session_timeout(Duration::from_secs(20))
    };
    let mut a = Consumer::new(config("a")).unwrap();
    a.subscribe("statics", ["static"]).unwrap();
    let mut b = Consumer::new(config("b")).unwrap();
    b.subscribe("statics", ["static"]).unwrap();
    let admin = Admin::new(broker.config()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(a.assignment().len() == 2 && b.assignment().len() == 2) {
        assert!(Instant::now() < deadline, "no balance");
        a.poll(Duration::from_millis(20)).await.unwrap();
        b.poll(Duration::from_millis(20)).await.unwrap();
    }
    let before = admin.describe_group("statics").await.unwrap();
    let owned_by_b = b.assignment();
    b.close().await.unwrap(); // A static member's leave keeps its assignment.
    let mut b = Consumer::new(config("b")).unwrap();
    b.subscribe("statics", ["static"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.assignment() != owned_by_b {
        assert!(
            Instant::now() < deadline,
            "b did not get its partitions back"
        );
        b.poll(Duration::from_millis(20)).await.unwrap();
        a.poll(Duration::from_millis(1)).await.unwrap();
    }
    let after = admin.describe_group("statics").await.unwrap();
    assert_eq!(after.group_epoch, before.group_epoch, "no rebalance");
    assert_eq!(a.assignment().len(), 2);
    a.close().await.unwrap();
}

/// A member whose application stops calling `poll` (its heartbeats go on) leaves the group
/// after `max_poll_interval`, so the other member takes its partitions; its next `poll` reports
/// them lost and joins again, and the two share the topic once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_polling_gives_its_partitions_up_and_rejoins_at_its_next_poll() {
    let broker = start_broker();
    create_topic(&broker, "stuck", 4).await;
    let config = || {
        consumer_config(broker.config())
            .group_session_timeout(Duration::from_secs(30))
            .max_poll_interval(Duration::from_secs(1))
    };
    let mut a = Consumer::new(config()).unwrap();
    a.subscribe("stuck-group", ["stuck"]).unwrap();
    let lost = Arc::new(Mutex::new(Vec::new()));
    struct Lost(Arc<Mutex<Vec<TopicPartition>>>);
    impl RebalanceListener for Lost {
        fn lost(&mut self, partitions: &[TopicPartition]) {
            self.0.lock().unwrap().extend_from_slice(partitions);
        }
    }
    a.set_rebalance_listener(Lost(Arc::clone(&lost)));
    let mut b = Consumer::new(config()).unwrap();
    b.subscribe("stuck-group", ["stuck"]).unwrap();
    let balanced =
        |a: &Consumer, b: &Consumer| a.assignment().len() == 2 && b.assignment().len() == 2;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !balanced(&a, &b) {
        assert!(Instant::now() < deadline, "no balance");
        a.poll(Duration::from_millis(20)).await.unwrap();
        b.poll(Duration::from_millis(20)).await.unwrap();
    }
    let owned_by_a = a.assignment();
    // a's application is stuck: only b polls. Within the session timeout, only a's missed
    // polls can move its partitions.
    let stuck_at = Instant::now();
    while b.assignment().len() < 4 {
        assert!(
            stuck_at.elapsed() < Duration::from_secs(20),
            "b never got a's partitions"
        );
        b.poll(Duration::from_millis(50)).await.unwrap();
    }
    assert!(lost.lock().unwrap().is_empty());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !balanced(&a, &b) {
        assert!(Instant::now() < deadline, "a did not join again");
        a.poll(Duration::from_millis(20)).await.unwrap();
        b.poll(Duration::from_millis(20)).await.unwrap();
    }
    let mut reported = lost.lock().unwrap().clone();
    reported.sort();
    let mut expected = owned_by_a.clone();
    expected.sort();
    assert_eq!(
        reported, expected,
        "a's next poll reports its partitions lost"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_subscriptions_pick_up_new_topics_and_resets_need_an_empty_group() {
    let broker = start_broker();
    create_topic(&broker, "metrics-cpu", 1).await;
    let mut consumer = Consumer::new(consumer_config(broker.config())).unwrap();
    consumer
        .subscribe("watchers", Subscription::pattern("metrics-.*"))
        .unwrap();
    produce(broker.config(), "metrics-cpu", 0, 10).await;
    let mut seen = Vec::new();
    poll_until(&mut consumer, &mut seen, "first topic", |s| s.len() >= 10).await;
    create_topic(&broker, "metrics-disk", 2).await;
    create_topic(&broker, "other", 1).await;
    produce(broker.config(), "metrics-disk", 10, 10).await;
    produce(broker.config(), "other", 100, 10).await;
    poll_until(&mut consumer, &mut seen, "new topic", |s| s.len() >= 20).await;
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    assert_eq!(consumer.assignment().len(), 3);
    consumer.commit().await.unwrap();

    let admin = Admin::new(broker.config()).unwrap();
    let rewind = [(TopicPartition::new("metrics-cpu", 0), 5)];
    let refused = admin.reset_offsets("watchers", &rewind).await.unwrap_err();
    assert!(
        matches!(
            refused,
            Error::Broker {
                code: ErrorCode::NonEmptyGroup,
                ..
            }
        ),
        "{refused}"
    );
    consumer.close().await.unwrap();
    admin.reset_offsets("watchers", &rewind).await.unwrap();
    let mut consumer = Consumer::new(consumer_config(broker.config())).unwrap();
    consumer
        .subscribe("watchers", Subscription::pattern("metrics-.*"))
        .unwrap();
    let mut again = Vec::new();
    poll_until(&mut consumer, &mut again, "after reset", |s| s.len() >= 5).await;
    again.sort_unstable();
    assert_eq!(again, (5..10).collect::<Vec<_>>());
    consumer.close().await.unwrap();
    let refused = admin.delete_group("nobody").await.unwrap_err();
    assert!(matches!(
        refused,
        Error::Broker {
            code: ErrorCode::GroupIdNotFound,
            ..
        }
    ));
    admin.delete_group("watchers").await.unwrap();
    assert!(admin.list_groups().await.unwrap().is_empty());
}

/// Bytes of the offsets log's segment files under a broker's data directory.
fn offsets_log_bytes(dir: &std::path::Path) -> u64 {
    let topics = dir.join("topics");
    let mut total = 0;
    for entry in std::fs::read_dir(&topics).unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("__consumer_offsets-")
        {
            continue;
        }
        for file in std::fs::read_dir(entry.path()).unwrap().flatten() {
            if file.file_name().to_string_lossy().ends_with(".log") {
                total += file.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_offsets_log_bounded_after_100_000_commits() {
    const SEGMENT: u64 = 1 << 20;
    let segment = SEGMENT.to_string();
    let mut args = BROKER_ARGS.to_vec();
    args.extend([
        "--offsets-partitions",
        "1",
        "--offsets-segment-bytes",
        &segment,
        "--log-retention-check-interval-ms",
        "200",
    ]);
    let mut broker = Broker::start("groups", 2, &args);
    create_topic(&broker, "busy", 10).await;
    // 10 groups × 10 partitions: 100 keys, each committed 1,000 times (10,000 requests of 10
    // offsets: 100,000 commits).
    let mut committers = Vec::new();
    for g in 0..10 {
        let admin = Admin::new(broker.config()).unwrap();
        committers.push(tokio::spawn(async move {
            for round in 0..1_000u64 {
                let offsets: Vec<(TopicPartition, u64)> = (0..10)
                    .map(|p| (TopicPartition::new("busy", p), round))
                    .collect();
                admin
                    .reset_offsets(&format!("g{g}"), &offsets)
                    .await
                    .unwrap();
            }
        }));
    }
    for c in committers {
        c.await.unwrap();
    }
    // Uncompacted, the log holds every commit (several MiB); compacted, the newest record per
    // key plus the batch headers compaction keeps, beside the active segment.
    let bound = SEGMENT + (256 << 10);
    let dir = broker.dir.path().to_path_buf();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut largest = 0;
    loop {
        let bytes = offsets_log_bytes(&dir);
        largest = largest.max(bytes);
        if bytes <= bound {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "offsets log still {bytes} bytes (bound {bound})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("offsets log: {largest} bytes at most seen, bounded by {bound}");
    // It did take every commit: 100,000 records, each at least 40 bytes (key and value of
    // about 20 each), more than three times the bound had nothing been removed.
    let end = Admin::new(broker.config())
        .unwrap()
        .offset(
            &TopicPartition::new("__consumer_offsets", 0),
            sluice_client::Seek::Latest,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(end >= 100_000, "the offsets log ends at {end}");
    assert!(end * 40 > 3 * bound);
    // The groups' state is rebuilt from the compacted log.
    broker.kill();
    broker.spawn(false);
    let admin = Admin::new(broker.config()).unwrap();
    for g in 0..10 {
        let described = admin.describe_group(&format!("g{g}")).await.unwrap();
        assert_eq!(described.offsets.len(), 10);
        assert!(
            described.offsets.iter().all(|o| o.committed == 999),
            "{described:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Churn of member processes, with an oracle.

/// Environment variable that turns this test binary into a group member process (see
/// [`member_process`]).
const MEMBER_ENV: &str = "SLUICE_GROUP_MEMBER";

/// Monotonic nanoseconds, comparable between processes on this machine.
fn mono_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Marks the member's event lines in its stdout.
const EVENT: &str = "@@event ";

/// Prints one event line for the parent: `A|R|L <ns> <partition>` (assigned, revoked, lost)
/// and `M <partition> <value>` per record.
struct Reporter;

impl RebalanceListener for Reporter {
    fn assigned(&mut self, partitions: &[TopicPartition]) {
        report('A', partitions);
    }
    fn revoked(&mut self, partitions: &[TopicPartition]) {
        report('R', partitions);
    }
    fn lost(&mut self, partitions: &[TopicPartition]) {
        report('L', partitions);
    }
}

fn report(kind: char, partitions: &[TopicPartition]) {
    let mut out = std::io::stdout().lock();
    for tp in partitions {
        writeln!(out, "{EVENT}{kind} {} {}", mono_ns(), tp.partition).unwrap();
    }
    out.flush().unwrap();
}

/// The body of a member process: subscribes, reports its events on stdout, and leaves in
/// order when its stdin closes. Run by [`churn`] through this test binary; a no-op in the
/// normal test run (the variable is unset).
#[test]
fn member_process() {
    let Ok(spec) = std::env::var(MEMBER_ENV) else {
        return;
    };
    let mut parts = spec.split(',');
    let (address, group, topic, mode) = (
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
    );
    let delivery = match mode.as_str() {
        "most" => DeliveryGuarantee::AtMostOnce,
        _ => DeliveryGuarantee::AtLeastOnce,
    };
    let config = consumer_config(
        ClientConfig::new([address])
            .request_timeout(Duration::from_secs(10))
            .retry_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
    .delivery(delivery)
    .group_session_timeout(Duration::from_secs(3));
    let stdin_closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let closed = Arc::clone(&stdin_closed);
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            closed.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    let mut consumer = sluice_client::blocking::Consumer::new(config).unwrap();
    consumer.subscribe(&group, [topic.as_str()]).unwrap();
    consumer.set_rebalance_listener(Reporter);
    while !stdin_closed.load(std::sync::atomic::Ordering::SeqCst) {
        // A poll can fail for a while (a commit the coordinator could not confirm in time on a
        // loaded machine): nothing is handed out then, and the next poll tries again.
        let records = match consumer.poll(Duration::from_millis(50)) {
            Ok(records) => records,
            Err(error) => {
                eprintln!("member {}: poll: {error}", std::process::id());
                continue;
            }
        };
        let mut out = std::io::stdout().lock();
        for r in records {
            writeln!(out, "{EVENT}M {} {}", r.partition, value_of(&r)).unwrap();
        }
        out.flush().unwrap();
    }
    // Ownership ends here: nothing is read after this, and the leave frees the partitions.
    report('R', &consumer.assignment());
    consumer.close().unwrap();
}

/// A member process and what it reported.
struct Member {
    child: Child,
    events: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// When it was killed (ns), if it was.
    killed_at: Option<u128>,
}

/// Member processes' stderr, appended to one file (printed when a churn test fails).
fn member_log() -> Stdio {
    let path =
        std::env::temp_dir().join(format!("sluice-group-members-{}.log", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    Stdio::from(file)
}

fn spawn_member(spec: &str) -> Member {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "member_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(MEMBER_ENV, spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(member_log())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let reader = {
        let events = Arc::clone(&events);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The test harness prints around the member's output, sometimes on the same
                // line (its `test member_process ... ` has no newline before the test runs).
                if let Some(at) = line.find(EVENT) {
                    events
                        .lock()
                        .unwrap()
                        .push(line[at + EVENT.len()..].to_string());
                }
            }
        })
    };
    Member {
        child,
        events,
        reader: Some(reader),
        killed_at: None,
    }
}

impl Member {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.killed_at = Some(mono_ns());
    }

    /// Closes its stdin: it leaves the group in order and exits.
    fn stop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }

    fn finish(&mut self) -> Vec<String> {
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.events.lock().unwrap().clone()
    }
}

/// One member's ownership of a partition: [from, to), and whether it ended by a loss.
#[derive(Debug, Clone)]
struct Ownership {
    member: usize,
    from: u128,
    to: u128,
    lost: bool,
}

fn churn(mode: &str, seed: u64) {
    let broker = start_broker();
    const PARTITIONS: u32 = 6;
    const RECORDS: u64 = 3_000;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let topic = format!("churn-{mode}");
    runtime.block_on(create_topic(&broker, &topic, PARTITIONS));
    let spec = format!("{},churners-{mode},{topic},{mode}", broker.listen);
    let mut rng = common::Rng(seed);
    eprintln!("churn {mode}: seed {seed} (SLUICE_GROUPS_SEED reproduces it)");

    // Records go in while members come, go and die.
    let producing = {
        let config = broker.config();
        let topic = topic.clone();
        runtime.spawn(async move {
            for chunk in 0..30 {
                produce(config.clone(), &topic, chunk * 100, 100).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut members: Vec<Member> = (0..3).map(|_| spawn_member(&spec)).collect();
    let mut live: Vec<usize> = (0..3).collect();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(rng.range(300, 1_200)));
        match rng.range(0, 3) {
            0 if live.len() > 1 => {
                let victim = live.remove(rng.range(0, live.len() as u64 - 1) as usize);
                members[victim].kill();
            }
            1 if live.len() > 1 => {
                let leaver = live.remove(rng.range(0, live.len() as u64 - 1) as usize);
                members[leaver].stop();
            }
            _ => {
                members.push(spawn_member(&spec));
                live.push(members.len() - 1);
            }
        }
    }
    runtime.block_on(producing).unwrap();

    // Settled: every record seen (at least once) or, at most once, nothing seen twice and the
    // live members own every partition exactly once.
    let seen_values = |members: &[Member]| -> Vec<u64> {
        members
            .iter()
            .flat_map(|m| m.events.lock().unwrap().clone())
            .filter_map(|l| {
                l.strip_prefix("M ")
                    .map(|r| r.split(' ').nth(1).unwrap().parse().unwrap())
            })
            .collect()
    };
    let owners = |members: &[Member]| -> BTreeMap<u32, Vec<usize>> {
        let mut owned: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for &m in &live {
            let mut mine = BTreeSet::new();
            for line in members[m].events.lock().unwrap().iter() {
                let mut f = line.split(' ');
                let (kind, _, p) = (f.next().unwrap(), f.next(), f.next());
                let p: u32 = match p.map(str::parse) {
                    Some(Ok(p)) => p,
                    _ => continue,
                };
                match kind {
                    "A" => {
                        mine.insert(p);
                    }
                    "R" | "L" => {
                        mine.remove(&p);
                    }
                    _ => {}
                }
            }
            for p in mine {
                owned.entry(p).or_default().push(m);
            }
        }
        owned
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for &m in &live {
            if let Ok(Some(status)) = members[m].child.try_wait() {
                panic!("member {m} exited on its own ({status}); its stderr is in the member log");
            }
        }
        let values: HashSet<u64> = seen_values(&members).into_iter().collect();
        let owned = owners(&members);
        let settled = owned.len() == PARTITIONS as usize && owned.values().all(|o| o.len() == 1);
        let complete = mode == "most" || values.len() as u64 == RECORDS;
        if settled && complete {
            break;
        }
        if Instant::now() > deadline {
            let admin = Admin::new(broker.config()).unwrap();
            let described = runtime.block_on(admin.describe_group(&format!("churners-{mode}")));
            for (i, m) in members.iter().enumerate() {
                let events: Vec<String> = m
                    .events
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|l| !l.starts_with('M'))
                    .cloned()
                    .collect();
                eprintln!("member {i} (live {}): {events:?}", live.contains(&i));
            }
            panic!(
                "group did not settle: {} of {RECORDS} records seen, owners {owned:?}; {described:#?}",
                values.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for &m in &live {
        members[m].stop();
    }
    let end = mono_ns();
    let events: Vec<Vec<String>> = members.iter_mut().map(Member::finish).collect();

    // The oracle: per partition, the ownership intervals of different members never overlap.
    let mut intervals: BTreeMap<u32, Vec<Ownership>> = BTreeMap::new();
    for (m, lines) in events.iter().enumerate() {
        let mut open: HashMap<u32, u128> = HashMap::new();
        for line in lines {
            let mut f = line.split(' ');
            let kind = f.next().unwrap();
            if kind == "M" {
                continue;
            }
            let t: u128 = f.next().unwrap().parse().unwrap();
            let p: u32 = f.next().unwrap().parse().unwrap();
            match kind {
                "A" => {
                    open.insert(p, t);
                }
                _ => {
                    if let Some(from) = open.remove(&p) {
                        intervals.entry(p).or_default().push(Ownership {
                            member: m,
                            from,
                            to: t,
                            lost: kind == "L",
                        });
                    }
                }
            }
        }
        let ended = members[m].killed_at.unwrap_or(end);
        for (p, from) in open {
            intervals.entry(p).or_default().push(Ownership {
                member: m,
                from,
                to: ended,
                lost: false,
            });
        }
    }
    let mut losses = 0;
    for (p, mut list) in intervals {
        list.sort_by_key(|o| o.from);
        for pair in list.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.member != b.member && b.from < a.to {
                // A member that lost its session (fenced) may still read until it learns of
                // it; Kafka's semantics too. Anything else is a double owner.
                assert!(
                    a.lost,
                    "partition {p} owned by members {} and {} at once: {a:?} {b:?}",
                    a.member, b.member
                );
                losses += 1;
            }
        }
    }
    let values = seen_values(&members);
    let distinct: HashSet<u64> = values.iter().copied().collect();
    match mode {
        "least" => assert_eq!(
            distinct.len() as u64,
            RECORDS,
            "at least once: every record seen"
        ),
        _ => assert_eq!(
            values.len(),
            distinct.len(),
            "at most once: no record seen twice"
        ),
    }
    eprintln!(
        "churn {mode}: {} members over the run, {} records seen ({} distinct), {losses} overlaps after a lost session",
        members.len(),
        values.len(),
        distinct.len()
    );
}

fn churn_seed() -> u64 {
    std::env::var("SLUICE_GROUPS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| mono_ns() as u64)
}

#[test]
fn churn_of_member_processes_at_least_once() {
    churn("least", churn_seed());
}

#[test]
fn churn_of_member_processes_at_most_once() {
    churn("most", churn_seed());
}

// ---------------------------------------------------------------------------------------------
// Coordinator failover.

#[test]
fn offsets_and_groups_survive_the_sigkill_of_the_coordinators_broker() {
    let _serial = common::cluster::serial();
    let mut cluster = common::cluster::Cluster::new(3, 1_000);
    cluster.wait_for_controller(&[1, 2, 3]);
    let addresses: Vec<String> = (1..=3)
        .map(|id| cluster.broker(id).process.listen.clone())
        .collect();
    let config = ClientConfig::new(addresses.clone())
        .request_timeout(Duration::from_secs(10))
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(500));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(create_topic_on(config.clone(), "durable", 4, 3));
    runtime.block_on(produce(config.clone(), "durable", 0, 200));
    let mut consumer = Consumer::new(consumer_config(config.clone()).auto_commit(false)).unwrap();
    runtime.block_on(async {
        consumer.subscribe("survivors", ["durable"]).unwrap();
        let mut seen = Vec::new();
        poll_until(&mut consumer, &mut seen, "first read", |s| s.len() >= 200).await;
        consumer.commit().await.unwrap();
        consumer.close().await.unwrap();
    });

    // Two members resume the group; a third joins, and the coordinator's broker is killed in
    // the middle of that rebalance.
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let owned: Arc<Mutex<HashMap<usize, Vec<TopicPartition>>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let member = |m: usize| {
        let (seen, owned, stop) = (Arc::clone(&seen), Arc::clone(&owned), Arc::clone(&stop));
        let config = consumer_config(config.clone());
        runtime.spawn(async move {
            let mut consumer = Consumer::new(config).unwrap();
            consumer.subscribe("survivors", ["durable"]).unwrap();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match consumer.poll(Duration::from_millis(50)).await {
                    Ok(records) => seen.lock().unwrap().extend(records.iter().map(value_of)),
                    Err(e) => eprintln!("member {m}: {e} (retrying)"),
                }
                owned.lock().unwrap().insert(m, consumer.assignment());
            }
            let _ = consumer.close().await;
        })
    };
    let mut members = vec![member(0), member(1)];
    common::cluster::wait_until(
        "two members share the group",
        Duration::from_secs(60),
        || {
            let owned = owned.lock().unwrap();
            owned.len() == 2 && owned.values().all(|o| o.len() == 2)
        },
    );
    let coordinator_address = coordinator(&addresses[0], "survivors");
    let victim = (1..=3u64)
        .find(|id| {
            cluster
                .broker(*id)
                .process
                .shard_addresses()
                .contains(&coordinator_address)
        })
        .unwrap();
    members.push(member(2));
    cluster.broker(victim).kill9();
    let survivors: Vec<String> = (1..=3u64)
        .filter(|id| *id != victim)
        .map(|id| cluster.broker(id).process.listen.clone())
        .collect();
    let config = ClientConfig::new(survivors)
        .request_timeout(Duration::from_secs(10))
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(500));
    runtime.block_on(produce(config.clone(), "durable", 200, 50));
    // The group settles on the new coordinator: three members, every partition owned once,
    // every record after the commit read, nothing before it.
    common::cluster::wait_until(
        "the group settles on the new coordinator",
        Duration::from_secs(90),
        || {
            let owned = owned.lock().unwrap();
            let all: Vec<&TopicPartition> = owned.values().flatten().collect();
            let distinct: BTreeSet<&TopicPartition> = all.iter().copied().collect();
            let read: HashSet<u64> = seen.lock().unwrap().iter().copied().collect();
            owned.len() == 3
                && owned.values().all(|o| !o.is_empty())
                && all.len() == 4
                && distinct.len() == 4
                && (200..250).all(|v| read.contains(&v))
        },
    );
    let earliest = seen.lock().unwrap().iter().copied().min();
    assert_eq!(earliest, Some(200), "resumed at the committed offsets");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for m in members {
        runtime.block_on(m).unwrap();
    }
}
