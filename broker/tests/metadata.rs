//! Integration tests of the metadata shard: real `sluice-broker` processes on 127.0.0.1, killed
//! with SIGKILL, talking Raft over TCP.

mod common;

use std::time::{Duration, Instant};

use sluice_broker::metadata::types::BrokerState;
use sluice_broker::metadata::{AdminClient, AdminReply, AdminRequest, ClusterView, MetadataError};

/// Generous for a loaded 2-core CI machine running debug builds: shorter timeouts make elections
/// churn there while heartbeats queue behind other work.
const ELECTION_MS: u64 = 1_000;
const LEASE_MS: u64 = 2_000;

/// Cluster tests run one at a time: each starts up to four broker processes.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One member of a test cluster: the shared broker-process harness with the member's id.
struct Broker {
    id: u64,
    process: common::BrokerProcess,
}

impl Broker {
    /// A member on its own ports (native 20_000 + 100 × id, its shards the 10 above), started
    /// later with [`Broker::start`].
    fn new(id: u64, address: String, membership: &[&str], snapshot_logs: u64) -> Broker {
        let listen = 20_000 + 100 * id as u16;
        let mut args = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--election-timeout-ms".into(),
            ELECTION_MS.to_string(),
            "--lease-ms".into(),
            LEASE_MS.to_string(),
            "--snapshot-logs".into(),
            snapshot_logs.to_string(),
            "--log".into(),
            "info,openraft=info".into(),
        ];
        args.extend(membership.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Broker {
            id,
            process: common::BrokerProcess::prepare(
                &format!("meta-{id}-"),
                &format!("127.0.0.1:{listen}"),
                &address,
                &[listen + 10, listen + 11],
                &args,
            ),
        }
    }

    /// Starts the process; it serves once the cluster has metadata, so nothing waits here.
    fn start(&mut self) {
        self.process.spawn_detached();
    }

    /// The metadata address.
    fn address(&self) -> &str {
        &self.process.metadata
    }

    fn dir(&self) -> &std::path::Path {
        self.process.dir.path()
    }

    fn kill9(&mut self) {
        self.process.kill_if_running();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        self.process.terminate()
    }
}

struct Cluster {
    brokers: Vec<Broker>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Each broker's log follows, from the harness, as its process is dropped.
            for broker in &mut self.brokers {
                eprintln!("broker {}: {:?}", broker.id, broker.process.try_wait());
                broker.kill9();
            }
        }
    }
}

impl Cluster {
    fn new(size: u64, snapshot_logs: u64) -> Cluster {
        let addresses: Vec<String> = (0..size)
            .map(|_| format!("127.0.0.1:{}", common::free_port()))
            .collect();
        let peers = if size == 1 {
            String::new()
        } else {
            addresses
                .iter()
                .enumerate()
                .map(|(i, a)| format!("{}={a}", i + 1))
                .collect::<Vec<_>>()
                .join(",")
        };
        let membership: Vec<&str> = if peers.is_empty() {
            Vec::new()
        } else {
            vec!["--peers", &peers]
        };
        let brokers = (0..size)
            .map(|i| {
                Broker::new(
                    i + 1,
                    addresses[i as usize].clone(),
                    &membership,
                    snapshot_logs,
                )
            })
            .collect();
        let mut cluster = Cluster { brokers };
        for broker in &mut cluster.brokers {
            broker.start();
        }
        cluster
    }

    fn broker(&mut self, id: u64) -> &mut Broker {
        &mut self.brokers[id as usize - 1]
    }

    fn client(&self) -> AdminClient {
        AdminClient::new(
            self.brokers
                .iter()
                .map(|b| b.address().to_owned())
                .collect(),
        )
        .with_timeout(Duration::from_secs(20))
    }

    fn describe(&self, id: u64) -> Option<ClusterView> {
        let client = AdminClient::new(vec![]).with_timeout(Duration::from_secs(2));
        match client.request_to_blocking(
            self.brokers[id as usize - 1].address(),
            AdminRequest::Describe,
        ) {
            Ok(AdminReply::Cluster(view)) => Some(*view),
            _ => None,
        }
    }

    /// Waits until every listed broker answers and agrees on one controller.
    fn wait_for_controller(&self, among: &[u64]) -> u64 {
        let mut found = None;
        wait_until(
            "a controller everyone agrees on",
            Duration::from_secs(20),
            || {
                let views: Vec<Option<u64>> = among
                    .iter()
                    .map(|&id| self.describe(id).and_then(|v| v.controller))
                    .collect();
                match views.first().copied().flatten() {
                    Some(leader)
                        if views.iter().all(|v| *v == Some(leader)) && among.contains(&leader) =>
                    {
                        found = Some(leader);
                        true
                    }
                    _ => false,
                }
            },
        );
        found.expect("controller")
    }

    fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        rf: u32,
    ) -> Result<AdminReply, MetadataError> {
        self.client().request_blocking(AdminRequest::CreateTopic {
            name: name.into(),
            partitions,
            replication_factor: rf,
            config: None,
        })
    }
}

fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

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
    let mut placements = Vec::new();
    wait_until("the topic everywhere", Duration::from_secs(10), || {
        placements = (1..=3)
            .filter_map(|id| cluster.describe(id))
            .filter_map(|v| v.state.topics.get("events").cloned())
            .collect();
        placements.len() == 3
    });
    assert!(
        placements.windows(2).all(|w| w[0] == w[1]),
        "identical placement everywhere"
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
    // Partition data is not replicated yet, so the victim's followers are not in sync: its
    // partitions go offline (never to a replica with an empty log), the others keep leaders.
    wait_until(
        "the victim marked dead, its partitions offline",
        Duration::from_secs(15),
        || {
            cluster.describe(controller).is_some_and(|v| {
                let partitions = &v.state.topics["leases"].partitions;
                v.state.brokers[&victim].state == BrokerState::Dead
                    && partitions.iter().all(|p| p.leader != Some(victim))
                    && partitions.iter().filter(|p| p.leader.is_none()).count() == led_before
                    && partitions
                        .iter()
                        .all(|p| p.leader.is_some() || p.in_sync == [victim])
            })
        },
    );
    cluster.broker(victim).start();
    wait_until(
        "the victim alive again, leading its partitions",
        Duration::from_secs(15),
        || {
            cluster.describe(controller).is_some_and(|v| {
                v.state.brokers[&victim].state == BrokerState::Alive
                    && v.state.topics["leases"]
                        .partitions
                        .iter()
                        .filter(|p| p.leader == Some(victim))
                        .count()
                        == led_before
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
