//! Starting, running and stopping the shards: one pinned glommio executor each.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::FutureExt;
use glommio::net::TcpListener;
use glommio::sync::Semaphore;
use glommio::{Latency, Placement, Shares, TaskQueueHandle};

use super::connection::serve;
use super::context::ShardContext;
use super::partitions::Partitions;
use super::{MetadataLink, Mode, ShardConfig};
use crate::limits::{
    CONNECTIONS_PER_SHARD_MAX, LISTEN_FREED_WAIT, LISTEN_RETRY_INTERVAL, SHARD_BUFFERED_BYTES_MAX,
    SHARD_SERVING_LATENCY, SHARD_SHARES_BULK_LATENCY, SHARD_SHARES_MAINTENANCE,
    SHARD_SHARES_SERVING, SOCKET_WATCH_LATENCY, SOCKET_WATCH_THROUGHPUT,
};
use crate::metrics::snapshot::SnapshotRequest;
use crate::metrics::ShardMetrics;
use crate::notify::Latch;

/// How long a stopping shard waits for its connections to finish in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A shard's thread: its executor could not be made (outer error), or the shard's own outcome.
pub type ShardThread = std::thread::JoinHandle<Result<Result<(), String>, String>>;

/// The running shards of a broker.
#[derive(Debug)]
pub struct Shards {
    /// Each shard's own native-protocol address, by shard index.
    pub addresses: Vec<String>,
    /// Where to ask each shard for a metrics snapshot, by shard index.
    pub snapshots: Vec<flume::Sender<SnapshotRequest>>,
    stops: Vec<flume::Sender<()>>,
    threads: Vec<ShardThread>,
}

impl Shards {
    /// Starts `count` shards, pinned to cores round-robin, each listening on the main address
    /// and on its own address (`config.shard_listen`, one per shard). A port already in use is
    /// an error naming it, never a silent fallback.
    pub fn start(config: ShardConfig, count: u32, link: MetadataLink) -> Result<Shards, String> {
        let main: SocketAddr = config
            .listen
            .parse()
            .map_err(|e| format!("--listen {:?} is not host:port: {e}", config.listen))?;
        if config.shard_listen.len() != count as usize {
            return Err(format!(
                "{count} shards need {count} shard ports, {} given",
                config.shard_listen.len()
            ));
        }
        // One socket for the main address, shared by every shard (each accepts on a duplicate
        // of its descriptor), bound without SO_REUSEPORT: with it, a second broker could share
        // the port unnoticed, and a broker restarted at once would join the listen group of
        // its killed predecessor's sockets while those linger (see `LISTEN_FREED_WAIT`),
        // where connections wait in a backlog nobody will accept from.
        let main_listener =
            bind_freed(main).map_err(|e| format!("cannot listen on {main} (--listen): {e}"))?;
        // The Kafka listener's main address, shared the same way.
        let kafka_main = match &config.kafka {
            None => None,
            Some(kafka) => {
                if kafka.shard_listen.len() != count as usize {
                    return Err(format!(
                        "{count} shards need {count} Kafka shard ports, {} given",
                        kafka.shard_listen.len()
                    ));
                }
                Some(bind_freed(kafka.listen).map_err(|e| {
                    format!("cannot listen on {} (--kafka-listen): {e}", kafka.listen)
                })?)
            }
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut shards = Shards {
            addresses: Vec::new(),
            snapshots: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for shard in 0..count {
            let main = main_listener
                .try_clone()
                .map_err(|e| format!("cannot share the listener on {main}: {e}"))?;
            let kafka_main = kafka_main
                .as_ref()
                .map(|l| l.try_clone())
                .transpose()
                .map_err(|e| format!("cannot share the Kafka listener: {e}"))?;
            let (address_tx, address_rx) = std::sync::mpsc::channel::<Result<String, String>>();
            let (stop_tx, stop_rx) = flume::bounded::<()>(1);
            let (snapshot_tx, snapshot_rx) =
                flume::bounded::<SnapshotRequest>(crate::limits::METRICS_SNAPSHOT_QUEUE_MAX);
            let config = config.clone();
            let link = link.clone();
            let thread = crate::shard::spawn_executor(
                crate::shard::executor_builder(Placement::Fixed(shard as usize % cpus)),
                &format!("shard-{shard}"),
                move || {
                    run(
                        config,
                        ShardLinks {
                            shard,
                            main,
                            kafka_main,
                            link,
                            address_tx,
                            stop_rx,
                            snapshot_rx,
                        },
                    )
                },
            )
            .map_err(|e| format!("cannot start shard {shard}: {e}"))?
            .into_thread();
            let address = match address_rx.recv() {
                Ok(address) => address?,
                // The executor could not be made: the thread says why.
                Err(_) => {
                    return Err(match thread.join() {
                        Ok(Err(error)) | Ok(Ok(Err(error))) => error,
                        Ok(Ok(Ok(()))) => format!("shard {shard} stopped during start-up"),
                        Err(panic) => format!(
                            "shard {shard} panicked during start-up: {}",
                            crate::shard::panic_message(&panic)
                        ),
                    })
                }
            };
            shards.addresses.push(address);
            shards.snapshots.push(snapshot_tx);
            shards.stops.push(stop_tx);
            shards.threads.push(thread);
        }
        Ok(shards)
    }

    /// Splits the running shards into what stops them and their threads, so a supervisor can
    /// watch the threads while the stopper stays usable.
    pub fn split(self) -> (ShardStopper, Vec<ShardThread>) {
        (ShardStopper { stops: self.stops }, self.threads)
    }
}

/// Stops shards whose threads are joined elsewhere.
#[derive(Debug, Clone)]
pub struct ShardStopper {
    stops: Vec<flume::Sender<()>>,
}

impl ShardStopper {
    /// Asks every shard to stop: stop accepting, finish in-flight requests, flush and close logs.
    pub fn stop(&self) {
        for stop in &self.stops {
            let _ = stop.try_send(());
        }
    }
}

/// What a shard's thread is handed at start.
struct ShardLinks {
    shard: u32,
    main: std::net::TcpListener,
    /// The Kafka listener's main socket (a duplicate of it), when it is on.
    kafka_main: Option<std::net::TcpListener>,
    link: MetadataLink,
    address_tx: std::sync::mpsc::Sender<Result<String, String>>,
    stop_rx: flume::Receiver<()>,
    snapshot_rx: flume::Receiver<SnapshotRequest>,
}

async fn run(config: ShardConfig, links: ShardLinks) -> Result<(), String> {
    let ShardLinks {
        shard,
        main,
        kafka_main,
        link,
        address_tx,
        stop_rx,
        snapshot_rx,
    } = links;
    let topics_dir = config.data_dir.join("topics");
    let started = async {
        crate::shard::prime_dma_io(&topics_dir)
            .await
            .map_err(|e| e.to_string())?;
        // SAFETY: `main` is a bound, listening TCP socket (a duplicate descriptor of the main
        // listener, this shard's own); the glommio listener takes sole ownership of it.
        let main_listener = unsafe { TcpListener::from_raw_fd(main.into_raw_fd()) };
        let own_listener = bind_exclusive(config.shard_listen[shard as usize]).map_err(|e| {
            format!(
                "shard {shard} cannot listen on {} (--shard-ports): {e}",
                config.shard_listen[shard as usize]
            )
        })?;
        let own = own_listener.local_addr().map_err(|e| e.to_string())?;
        let kafka = match (kafka_main, &config.kafka) {
            (Some(main), Some(kafka)) => {
                let address = kafka.shard_listen[shard as usize];
                // SAFETY: as for `main` above: a duplicate of the bound, listening Kafka socket.
                let main = unsafe { TcpListener::from_raw_fd(main.into_raw_fd()) };
                let own = bind_exclusive(address).map_err(|e| {
                    format!("shard {shard} cannot listen on {address} (--kafka-shard-ports): {e}")
                })?;
                Some((main, own))
            }
            _ => None,
        };
        Ok::<_, String>((main_listener, own_listener, own, kafka))
    }
    .await;
    let (main_listener, own_listener, own, kafka_listeners) = match started {
        Ok(started) => started,
        Err(error) => {
            let _ = address_tx.send(Err(error.clone()));
            return Err(error);
        }
    };
    let _ = address_tx.send(Ok(own.to_string()));

    let queues = TaskQueues::create(config.mode);
    let metrics = Rc::new(ShardMetrics::default());
    let partitions = Rc::new(Partitions::new(config.clone(), shard, Rc::clone(&metrics)));
    let ctx = Rc::new(ShardContext {
        node_id: config.node_id,
        shard,
        topic_defaults: config.topic_defaults.clone(),
        partitions: Rc::clone(&partitions),
        link: link.clone(),
        buffered: Rc::new(Semaphore::new(SHARD_BUFFERED_BYTES_MAX)),
        stop: Latch::new(),
        storage_failed: Latch::new(),
        producer_ids: std::cell::Cell::new((0, 0)),
        kafka_addresses: config
            .kafka
            .as_ref()
            .map_or(Vec::new(), |k| k.advertised_shards.clone()),
        socket_watch: match config.mode {
            Mode::Latency => SOCKET_WATCH_LATENCY,
            Mode::Throughput => SOCKET_WATCH_THROUGHPUT,
        },
        watch_stats: Rc::new(super::socket::WatchStats::for_shard(shard)),
        bulk: queues.bulk,
        retention_check_interval: config.retention_check_interval,
        groups: Rc::new(crate::groups::coordinator::Coordinator::new(
            config.groups.clone(),
            Rc::clone(&partitions),
            link.clone(),
        )),
        metrics,
    });

    // The coordinator's timer: session expiry and offsets retention.
    {
        let ctx = Rc::clone(&ctx);
        queues
            .spawn(queues.serving, async move {
                loop {
                    glommio::timer::sleep(crate::limits::GROUP_TICK).await;
                    ctx.groups.tick().await;
                }
            })
            .detach();
    }

    // Follow the metadata: open and close this shard's partitions.
    let failure: Rc<Cell<Option<String>>> = Rc::new(Cell::new(None));
    let reconcile = {
        let ctx = Rc::clone(&ctx);
        let failure = Rc::clone(&failure);
        let mut state = link.state.clone();
        // In the serving queue: the logs it opens spawn their flushers into the same queue.
        queues
            .spawn(queues.serving, async move {
                loop {
                    let current = state.borrow_and_update().clone();
                    if let Err(error) = ctx.partitions.reconcile(&current).await {
                        failure.set(Some(format!("shard {shard}: {error}")));
                        ctx.storage_failed.fire();
                        return;
                    }
                    if state.changed().await.is_err() {
                        return;
                    }
                }
            })
            .detach()
    };
    let retention = {
        let ctx = Rc::clone(&ctx);
        let failure = Rc::clone(&failure);
        queues
            .spawn(queues.maintenance, async move {
                loop {
                    glommio::timer::sleep(ctx.retention_check_interval).await;
                    if let Err(error) = ctx.partitions.enforce_retention().await {
                        if error.is_environmental() {
                            failure.set(Some(format!("shard {shard}: retention: {error}")));
                            ctx.storage_failed.fire();
                            return;
                        }
                    }
                }
            })
            .detach()
    };

    let high_watermarks = {
        let ctx = Rc::clone(&ctx);
        let failure = Rc::clone(&failure);
        queues
            .spawn(queues.maintenance, async move {
                loop {
                    glommio::timer::sleep(crate::limits::HIGH_WATERMARK_CHECKPOINT_INTERVAL).await;
                    if let Err(error) = ctx.partitions.checkpoint_high_watermarks().await {
                        if error.is_environmental() {
                            failure.set(Some(format!(
                                "shard {shard}: high watermark checkpoint: {error}"
                            )));
                            ctx.storage_failed.fire();
                            return;
                        }
                    }
                }
            })
            .detach()
    };
    // Metrics: answer scrapes with a snapshot of this shard's counters.
    let snapshots = queues
        .spawn(
            queues.maintenance,
            crate::metrics::snapshot::serve_snapshots(Rc::clone(&ctx), snapshot_rx),
        )
        .detach();

    // Replication: fetch what this shard follows; as a leader, keep the in-sync sets right.
    let fetchers = queues
        .spawn(queues.serving, super::fetcher::run(Rc::clone(&ctx)))
        .detach();
    let in_sync = queues
        .spawn(queues.maintenance, super::in_sync::run(Rc::clone(&ctx)))
        .detach();

    let connections = Rc::new(Semaphore::new(CONNECTIONS_PER_SHARD_MAX as u64));
    let accept = |listener: TcpListener, protocol: Protocol| {
        let ctx = Rc::clone(&ctx);
        let connections = Rc::clone(&connections);
        let mut state = link.state.clone();
        // Connections and every task they spawn (but fetches) run in the serving queue.
        queues
            .spawn(queues.serving, async move {
                // Not before the first metadata: an empty state would tell clients that their
                // topics do not exist. Connections wait in the listen backlog meanwhile (a
                // restarted broker has its state back from its own Raft log within
                // milliseconds).
                let stop = ctx.stop.listen();
                let has_metadata = async {
                    while state.borrow_and_update().version == 0 {
                        if state.changed().await.is_err() {
                            return false;
                        }
                    }
                    true
                }
                .or(async {
                    stop.await;
                    false
                });
                if !has_metadata.await {
                    return;
                }
                loop {
                    let Ok(permit) = connections.acquire_static_permit(1).await else {
                        return;
                    };
                    let stop = ctx.stop.listen();
                    let accepted = async { Some(listener.accept().await) }.or(async {
                        stop.await;
                        None
                    });
                    match accepted.await {
                        None => return,
                        Some(Ok(stream)) => {
                            let ctx = Rc::clone(&ctx);
                            glommio::spawn_local(async move {
                                ctx.metrics.connection_opened();
                                match protocol {
                                    Protocol::Native => serve(Rc::clone(&ctx), stream).await,
                                    Protocol::Kafka => {
                                        crate::kafka::connection::serve(Rc::clone(&ctx), stream)
                                            .await
                                    }
                                }
                                ctx.metrics.connection_closed();
                                drop(permit);
                            })
                            .detach();
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%error, shard, "accept failed");
                            glommio::timer::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
            .detach()
    };
    let mut accepting = vec![
        accept(main_listener, Protocol::Native),
        accept(own_listener, Protocol::Native),
    ];
    if let Some((main, own)) = kafka_listeners {
        accepting.push(accept(main, Protocol::Kafka));
        accepting.push(accept(own, Protocol::Kafka));
    }

    // Run until asked to stop or until storage fails.
    let storage_failed = ctx.storage_failed.listen();
    async {
        let _ = stop_rx.recv_async().await;
    }
    .or(storage_failed)
    .await;
    ctx.stop.fire();
    for task in accepting {
        let _ = task.await;
    }
    // Wait for connections to finish what they have in flight.
    let drained = async {
        let _ = connections.acquire(CONNECTIONS_PER_SHARD_MAX as u64).await;
        true
    }
    .or(async {
        glommio::timer::sleep(DRAIN_TIMEOUT).await;
        false
    })
    .await;
    if !drained {
        tracing::warn!(shard, "connections still busy after the drain timeout");
    }
    let (reads, writes) = (
        ctx.watch_stats.reads_recovered.get(),
        ctx.watch_stats.writes_recovered.get(),
    );
    if reads + writes > 0 {
        tracing::info!(
            shard,
            reads,
            writes,
            "lost socket readiness events recovered by the watchdog"
        );
    }
    reconcile.cancel();
    retention.cancel();
    high_watermarks.cancel();
    fetchers.cancel();
    in_sync.cancel();
    snapshots.cancel();
    if let Some(error) = failure.take() {
        return Err(error);
    }
    partitions
        .close_all()
        .await
        .map_err(|e| format!("shard {shard}: closing logs: {e}"))
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Native,
    Kafka,
}

/// A listener on `address` without SO_REUSEPORT (glommio's `bind` sets it), so a port another
/// process listens on is refused (`EADDRINUSE`) instead of shared. Retried for
/// `LISTEN_FREED_WAIT`: the port may still be held for a moment by the broker this one replaces.
fn bind_freed(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let deadline = std::time::Instant::now() + LISTEN_FREED_WAIT;
    let listener = loop {
        match std::net::TcpListener::bind(address) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(LISTEN_RETRY_INTERVAL);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{e}; is another broker running there?"),
                ))
            }
            other => break other?,
        }
    };
    // glommio tries a plain `accept` before it queues one on io_uring: it must not block.
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// [`bind_freed`] for a shard's own port, as a glommio listener of the calling shard.
fn bind_exclusive(address: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = bind_freed(address)?;
    // SAFETY: the descriptor is a bound, listening TCP socket that `into_raw_fd` gives up;
    // the glommio listener takes sole ownership of it.
    Ok(unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) })
}

/// A shard's task queues. glommio runs one queue at a time and switches between them by shares
/// (and, for a `Latency::Matters` queue, within its latency bound when it has work waiting).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskQueues {
    /// Connections, produce, acknowledgements and the logs' flushers.
    pub serving: TaskQueueHandle,
    /// Fetch handling: disk reads, CRC checks, response assembly.
    pub bulk: TaskQueueHandle,
    /// Retention.
    pub maintenance: TaskQueueHandle,
}

impl TaskQueues {
    /// Creates the queues on the current executor: in latency mode serving work preempts the
    /// others within `SHARD_SERVING_LATENCY` and bulk reads get a quarter of its shares; in
    /// throughput mode serving and bulk share the core equally.
    fn create(mode: Mode) -> TaskQueues {
        let executor = glommio::executor();
        let (serving_latency, bulk_shares) = match mode {
            Mode::Latency => (
                Latency::Matters(SHARD_SERVING_LATENCY),
                SHARD_SHARES_BULK_LATENCY,
            ),
            Mode::Throughput => (Latency::NotImportant, SHARD_SHARES_SERVING),
        };
        TaskQueues {
            serving: executor.create_task_queue(
                Shares::Static(SHARD_SHARES_SERVING),
                serving_latency,
                "serving",
            ),
            bulk: executor.create_task_queue(
                Shares::Static(bulk_shares),
                Latency::NotImportant,
                "bulk",
            ),
            maintenance: executor.create_task_queue(
                Shares::Static(SHARD_SHARES_MAINTENANCE),
                Latency::NotImportant,
                "maintenance",
            ),
        }
    }

    fn spawn<T: 'static>(
        &self,
        queue: TaskQueueHandle,
        future: impl std::future::Future<Output = T> + 'static,
    ) -> glommio::Task<T> {
        spawn_into(queue, future)
    }
}

/// Spawns `future` into `queue`, one of this shard's own queues.
pub(crate) fn spawn_into<T: 'static>(
    queue: TaskQueueHandle,
    future: impl std::future::Future<Output = T> + 'static,
) -> glommio::Task<T> {
    glommio::spawn_local_into(future, queue)
        .expect("invariant: a shard spawns only into the task queues it created")
}
