//! A cluster of real `sluice-broker` processes on 127.0.0.1 for tests: members with fixed
//! ports (on the shared [`super::BrokerProcess`] harness), a metadata admin client, and
//! condition waits. Used by the metadata and replication tests.

use std::time::{Duration, Instant};

use sluice_broker::metadata::{AdminClient, AdminReply, AdminRequest, ClusterView, MetadataError};

/// Generous for a loaded 2-core CI machine running debug builds: shorter timeouts make elections
/// churn there while heartbeats queue behind other work.
pub const ELECTION_MS: u64 = 1_000;
pub const LEASE_MS: u64 = 2_000;

/// Cluster tests run one at a time: each starts up to four broker processes.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn port_base() -> u16 {
    std::env::var("SLUICE_TEST_PORT_BASE")
        .ok()
        .and_then(|base| base.parse().ok())
        .unwrap_or(20_000)
}

/// One member of a test cluster: the shared broker-process harness with the member's id.
pub struct Broker {
    pub id: u64,
    pub process: super::BrokerProcess,
}

impl Broker {
    /// A member on its own ports (native base + 100 × id, its shards the 10 above), started
    /// later with [`Broker::start`]. The base is 20,000, or `SLUICE_TEST_PORT_BASE` so that
    /// suites run at once from several checkouts keep out of each other's ports.
    pub fn new(id: u64, address: String, membership: &[&str], snapshot_logs: u64) -> Broker {
        let listen = port_base() + 100 * id as u16;
        Broker::on_host(id, "127.0.0.1", listen, address, membership, snapshot_logs)
    }

    /// A member listening on `host`, native port `listen` and its shards the 10 above.
    pub fn on_host(
        id: u64,
        host: &str,
        listen: u16,
        address: String,
        membership: &[&str],
        snapshot_logs: u64,
    ) -> Broker {
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
            process: super::BrokerProcess::prepare(
                &format!("meta-{id}-"),
                &format!("{host}:{listen}"),
                &address,
                &[listen + 10, listen + 11],
                &args,
            ),
        }
    }

    /// Starts the process; it serves once the cluster has metadata, so nothing waits here.
    pub fn start(&mut self) {
        self.process.spawn_detached();
    }

    /// The metadata address.
    pub fn address(&self) -> &str {
        &self.process.metadata
    }

    pub fn dir(&self) -> &std::path::Path {
        self.process.dir.path()
    }

    pub fn kill9(&mut self) {
        self.process.kill_if_running();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.process.terminate()
    }
}

pub struct Cluster {
    pub brokers: Vec<Broker>,
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
    pub fn new(size: u64, snapshot_logs: u64) -> Cluster {
        let addresses: Vec<String> = (0..size)
            .map(|_| format!("127.0.0.1:{}", super::free_port()))
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

    /// A cluster of `size` brokers, each in its own network namespace of `net` (see
    /// [`super::netns`]); call from a thread that has entered `net`'s hub.
    pub fn in_namespaces(net: &super::netns::Netns, size: u64, snapshot_logs: u64) -> Cluster {
        const LISTEN: u16 = 9490;
        const METADATA: u16 = 9492;
        let peers = (1..=size)
            .map(|id| format!("{id}={}:{METADATA}", net.ip(id)))
            .collect::<Vec<_>>()
            .join(",");
        let membership = ["--peers", peers.as_str()];
        let brokers = (1..=size)
            .map(|id| {
                let mut broker = Broker::on_host(
                    id,
                    &net.ip(id),
                    LISTEN,
                    format!("{}:{METADATA}", net.ip(id)),
                    &membership,
                    snapshot_logs,
                );
                broker.process.netns = Some(net.broker(id));
                broker
            })
            .collect();
        let mut cluster = Cluster { brokers };
        for broker in &mut cluster.brokers {
            broker.start();
        }
        cluster
    }

    pub fn broker(&mut self, id: u64) -> &mut Broker {
        &mut self.brokers[id as usize - 1]
    }

    pub fn client(&self) -> AdminClient {
        AdminClient::new(
            self.brokers
                .iter()
                .map(|b| b.address().to_owned())
                .collect(),
        )
        .with_timeout(Duration::from_secs(20))
    }

    pub fn describe(&self, id: u64) -> Option<ClusterView> {
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
    pub fn wait_for_controller(&self, among: &[u64]) -> u64 {
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

    pub fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        rf: u32,
    ) -> Result<AdminReply, MetadataError> {
        self.create_topic_with(name, partitions, rf, None)
    }

    pub fn create_topic_with(
        &self,
        name: &str,
        partitions: u32,
        rf: u32,
        config: Option<sluice_broker::metadata::types::TopicConfig>,
    ) -> Result<AdminReply, MetadataError> {
        self.client().request_blocking(AdminRequest::CreateTopic {
            name: name.into(),
            partitions,
            replication_factor: rf,
            config,
        })
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}
