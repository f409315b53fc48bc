//! Integration tests of the metadata shard: real `sluice-broker` processes on 127.0.0.1, killed
//! with SIGKILL, talking Raft over TCP.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{serial, wait_until, Broker, Cluster};
use sluice_broker::metadata::types::BrokerState;
use sluice_broker::metadata::{AdminClient, AdminRequest, ClusterView, MetadataError};

#[test]
fn single_broker_keeps_metadata_across_restart() {
    let _serial = serial();
    let mut cluster = Cluster::new(1, 1_000);
    assert_eq!(cluster.wait_for_controller(&[1]), 1);
    wait_until("the broker registers", Duration::from_secs(10), || {
        cluster
            .describe(1)
            .is_some_and(|v| v.state.brokers.contains_key(&1))
    });
    cluster.create_topic("orders", 8, 1).expect("create");
    assert_eq!(
        cluster.create_topic("orders", 8, 1).unwrap_err(),
        MetadataError::TopicExists("orders".into())
    );
    assert!(matches!(
        cluster.create_topic("a b", 1, 1),
        Err(MetadataError::InvalidTopicName { .. })
    ));
    assert!(matches!(
        cluster.create_topic("zero", 0, 1),
        Err(MetadataError::InvalidPartitionCount { .. })
    ));
    assert!(matches!(
        cluster.create_topic("wide", 1, 2),
        Err(MetadataError::ReplicationFactorTooLarge {
            requested: 2,
            live: 1
        })
    ));
    assert!(matches!(
        cluster
            .client()
            .request_blocking(AdminRequest::DeleteTopic {
                name: "nope".into()
            }),
        Err(MetadataError::UnknownTopic(_))
    ));
    let before = cluster.describe(1).expect("describe").state;
    assert_eq!(before.topics["orders"].partitions.len(), 8);
    assert!(!before.topics.contains_key("zero"), "nothing half-applied");

    let status = cluster.broker(1).terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    cluster.broker(1).start();
    cluster.wait_for_controller(&[1]);
    let after = cluster.describe(1).expect("describe").state;
    assert_eq!(after.topics, before.topics);
    assert!(after.version >= before.version);
}

#[test]
fn three_brokers_replicate_fail_over_and_catch_up() {
    let _serial = serial();
    let mut cluster = Cluster::new(3, 1_000);
    let controller = cluster.wait_for_controller(&[1, 2, 3]);
    wait_until("all brokers registered", Duration::from_secs(10), || {
        cluster
            .describe(controller)
            .is_some_and(|v| v.state.brokers.len() == 3)
    });
    // A non-controller answers with where the controller is.
    let follower = (1..=3).find(|&id| id != controller).expect("follower");
    let direct = AdminClient::new(vec![]).request_to_blocking(
        cluster.brokers[follower as usize - 1].address(),
        AdminRequest::CreateTopic {
            name: "direct".into(),
            partitions: 1,
            replication_factor: 1,
            config: None,
        },
    );
    match direct {
        Err(MetadataError::NotController {
            controller: Some((id, address)),
        }) => {
            assert_eq!(id, controller);
            assert_eq!(address, cluster.brokers[controller as usize - 1].address());
        }
        other => panic!("expected NotController, got {other:?}"),
    }
    // Created through any broker (the client follows the redirect), visible on all three.
    let client = AdminClient::new(vec![cluster.brokers[follower as usize - 1]
        .address()
        .to_owned()]);
    client
        .request_blocking(AdminRequest::CreateTopic {
            name: "events".into(),
            partitions: 6,
            replication_factor: 3,
            config: None,
        })
        .expect("create via follower");
    // Each broker applies the metadata log at its own pace, and the topic keeps changing after
    // its creation (in-sync sets grow as followers catch up): the views agree once all three
    // have applied the same entries.
    let mut placements = Vec::new();
    wait_until(
        "the topic everywhere, identical placement",
        Duration::from_secs(10),
        || {
            placements = (1..=3)
                .filter_map(|id| cluster.describe(id))
                .filter_map(|v| v.state.topics.get("events").cloned())
                .collect();
            placements.len() == 3 && placements.windows(2).all(|w| w[0] == w[1])
        },
    );
    for partition in &placements[0].partitions {
        let mut brokers: Vec<u64> = partition.replicas.iter().map(|r| r.broker).collect();
        brokers.sort_unstable();
        assert_eq!(brokers, vec![1, 2, 3]);
    }

    // Kill the controller: a new one is elected and serves a topic creation.
    let killed_at = Instant::now();
    cluster.broker(controller).kill9();
    let survivors: Vec<u64> = (1..=3).filter(|&id| id != controller).collect();
    let new_controller = cluster.wait_for_controller(&survivors);
    assert_ne!(new_controller, controller);
    cluster
        .create_topic("after-failover", 3, 2)
        .expect("create after failover");
    eprintln!(
        "failover: new controller serving after {:?}",
        killed_at.elapsed()
    );

    // A fourth broker joins the running cluster: learner first, then voter.
    let joiner_address = format!("127.0.0.1:{}", common::free_port());
    let join = survivors
        .iter()
        .map(|&id| cluster.brokers[id as usize - 1].address().to_owned())
        .collect::<Vec<_>>()
        .join(",");
    cluster
        .brokers
        .push(Broker::new(4, joiner_address, &["--join", &join], 1_000));
    cluster.broker(4).start();
    wait_until(
        "broker 4 is a voter with the metadata",
        Duration::from_secs(20),
        || {
            cluster.describe(4).is_some_and(|v| {
                v.voters.contains(&4)
                    && v.state.topics.contains_key("after-failover")
                    && v.state.brokers.contains_key(&4)
            })
        },
    );

    // The killed broker comes back and catches up to the same version.
    cluster.broker(controller).start();
    wait_until(
        "the restarted broker catches up",
        Duration::from_secs(20),
        || {
            let views: Vec<ClusterView> = (1..=3).filter_map(|id| cluster.describe(id)).collect();
            views.len() == 3
                && views
                    .iter()
                    .all(|v| v.state.topics.contains_key("after-failover"))
                && views.windows(2).all(|w| w[0].state == w[1].state)
        },
    );
}

#[test]
fn expired_lease_moves_leadership_and_heartbeat_revives() {
    let _serial = serial();
    let mut cluster = Cluster::new(3, 1_000);
    let controller = cluster.wait_for_controller(&[1, 2, 3]);
    wait_until("all brokers registered", Duration::from_secs(10), || {
        cluster
            .describe(controller)
            .is_some_and(|v| v.state.brokers.len() == 3)
    });
    cluster.create_topic("leases", 6, 2).expect("create");
    // The followers replicate the (empty) logs and join the in-sync sets.
    wait_until("every follower in sync", Duration::from_secs(15), || {
        cluster.describe(controller).is_some_and(|v| {
            v.state.topics["leases"]
                .partitions
                .iter()
                .all(|p| p.in_sync.len() == 2)
        })
    });
    let victim = (1..=3)
        .find(|&id| id != controller)
        .expect("non-controller");
    let led_before = cluster.describe(controller).expect("describe").state.topics["leases"]
        .partitions
        .iter()
        .filter(|p| p.leader == Some(victim))
        .count();
    assert!(led_before > 0, "the victim leads some partitions");
    cluster.broker(victim).kill9();
    // Its partitions move to their in-sync followers (epoch + 1); it leaves the sets.
    wait_until(
        "the victim marked dead, its partitions led by in-sync followers",
        Duration::from_secs(15),
        || {
            cluster.describe(controller).is_some_and(|v| {
                let partitions = &v.state.topics["leases"].partitions;
                v.state.brokers[&victim].state == BrokerState::Dead
                    && partitions
                        .iter()
                        .all(|p| p.leader.is_some() && p.leader != Some(victim))
                    && partitions.iter().all(|p| !p.in_sync.contains(&victim))
            })
        },
    );
    cluster.broker(victim).start();
    // Back, it follows, catches up and rejoins every in-sync set.
    wait_until(
        "the victim alive again and in sync",
        Duration::from_secs(20),
        || {
            cluster.describe(controller).is_some_and(|v| {
                v.state.brokers[&victim].state == BrokerState::Alive
                    && v.state.topics["leases"]
                        .partitions
                        .iter()
                        .all(|p| p.in_sync.len() == 2)
            })
        },
    );
}

#[test]
fn snapshots_bound_the_log_and_a_fresh_follower_installs_one() {
    let _serial = serial();
    let mut cluster = Cluster::new(3, 20);
    let controller = cluster.wait_for_controller(&[1, 2, 3]);
    wait_until("all brokers registered", Duration::from_secs(10), || {
        cluster
            .describe(controller)
            .is_some_and(|v| v.state.brokers.len() == 3)
    });
    let fresh = (1..=3).find(|&id| id != controller).expect("follower");
    cluster.broker(fresh).kill9();
    let _ = std::fs::remove_dir_all(cluster.broker(fresh).dir());
    for i in 0..120 {
        cluster
            .create_topic(&format!("t{i}"), 2, 2)
            .expect("create");
    }
    let view = cluster.describe(controller).expect("describe");
    assert!(view.snapshot_index.is_some(), "snapshots were taken");
    assert!(
        view.log_entries < 60,
        "the log is compacted behind snapshots: {} entries",
        view.log_entries
    );
    // A follower with an empty data directory can only catch up from a snapshot.
    cluster.broker(fresh).start();
    wait_until(
        "the fresh follower catches up",
        Duration::from_secs(20),
        || {
            let leader = cluster.describe(controller);
            let follower = cluster.describe(fresh);
            matches!((leader, follower), (Some(l), Some(f)) if f.state.topics.len() == 120 && l.state.topics == f.state.topics)
        },
    );
    let follower = cluster.describe(fresh).expect("describe");
    assert!(
        follower.snapshot_index.is_some(),
        "the follower installed a snapshot"
    );
}
