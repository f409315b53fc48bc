//! Every fixed maximum of the broker, in one place, with the reason for its value.

/// Alignment of O_DIRECT writes and of every DMA buffer. 4 KiB covers the logical block size of
/// every device we target (512 B and 4 KiB sectors).
pub const DMA_ALIGNMENT: u64 = 4096;

/// Largest batch the broker ever accepts, whatever a topic configures: 64 MiB keeps one request's
/// memory bounded and fits comfortably in a write buffer.
pub const BATCH_BYTES_MAX: usize = 64 << 20;

/// Largest write buffer a log may configure. Two per partition are live at most.
pub const WRITE_BUFFER_BYTES_MAX: usize = 256 << 20;

/// Largest segment: offset-index positions are stored as u32, so a segment stays below 4 GiB.
pub const SEGMENT_BYTES_MAX: u64 = (u32::MAX as u64) - (1 << 20);

/// Bytes read from disk at once while scanning a segment (recovery, truncation, tools).
pub const SCAN_CHUNK_BYTES: usize = 8 << 20;

/// Most segments one partition may hold open; beyond it retention or larger segments are needed.
pub const SEGMENTS_PER_PARTITION_MAX: usize = 100_000;

/// Keys one compaction pass holds in its key → latest-offset map. Each entry is a 16-byte
/// digest of the key and an 8-byte offset (about 40 bytes with the hash table's overhead), so a
/// pass needs at most ~40 MiB; a log with more live keys is cleaned over several passes, each
/// covering as many segments as the map holds keys for. Kafka's cleaner defaults to 128 MiB of
/// such entries shared by its threads.
pub const COMPACTION_KEYS_MAX: usize = 1 << 20;

/// Bytes of cleaned batches a compaction pass buffers before one DMA write of the new segment.
pub const COMPACTION_WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Largest records section a compaction pass decompresses (to filter a compressed batch): a
/// batch whose records would inflate past this is kept whole rather than held in memory.
pub const COMPACTION_DECOMPRESSED_BYTES_MAX: usize = 64 << 20;

/// Idempotent producers whose last batch a compaction pass tracks (Kafka keeps every
/// producer's last batch so its sequence state can be rebuilt from the log). Beyond it the pass
/// keeps the header of every idempotent batch it empties: more bytes, never a lost sequence.
pub const COMPACTION_PRODUCERS_MAX: usize = PRODUCERS_PER_PARTITION_MAX;

/// Longest topic name, as in Kafka: leaves room in a 255-byte file name for the partition suffix.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Most partitions one topic may have: bounds a create request and the placement work it causes.
pub const TOPIC_PARTITIONS_MAX: u32 = 10_000;

/// Largest metadata frame (Raft RPCs, snapshots, admin requests) accepted on the metadata port.
pub const METADATA_FRAME_BYTES_MAX: usize = 256 << 20;

/// Connections the metadata listener serves at once.
pub const METADATA_CONNECTIONS_MAX: usize = 256;

/// Largest native-protocol frame: one produce request of maximal batches plus its control part.
pub const FRAME_BYTES_MAX: usize = BATCH_BYTES_MAX + (1 << 20);

/// Requests in flight on one connection (read but not yet answered). The reader stops reading
/// the socket beyond it: that is the per-connection backpressure.
pub const IN_FLIGHT_REQUESTS_MAX: usize = 32;

/// Bytes of request frames being handled on one shard at once, across its connections.
pub const SHARD_BUFFERED_BYTES_MAX: u64 = 512 << 20;

/// Connections one shard serves at once; more wait in the listen backlog.
pub const CONNECTIONS_PER_SHARD_MAX: usize = 4096;

/// Admin requests queued from the shards to the metadata thread.
pub const ADMIN_QUEUE_MAX: usize = 1024;

/// Snapshot requests queued for one shard: scrapes run one at a time, so one is waiting at
/// most; a second slot lets a scrape whose predecessor gave up on a slow shard still ask.
pub const METRICS_SNAPSHOT_QUEUE_MAX: usize = 2;

/// How long a scrape waits for one shard's snapshot. A snapshot of 10,000 partitions takes a
/// few milliseconds; a shard that does not answer in 5 s is stuck, and the scrape reports it
/// (`sluice_scrape_shards_missing`) instead of hanging Prometheus's scrape (10 s by default).
pub const METRICS_SHARD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Bytes of an HTTP request head the metrics endpoint reads; `GET /metrics` needs ~100.
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 * 1024;

/// How long the metrics endpoint waits for a request head before closing the connection.
pub const METRICS_REQUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Metrics connections served at once; more wait in the listen backlog (a scraper or two, and
/// an operator's curl, are the expected clients).
pub const METRICS_CONNECTIONS_MAX: usize = 16;

/// Producer ids a shard asks the controller for at once: one Raft commit per this many
/// idempotent producers.
pub const PRODUCER_ID_BLOCK_MAX: u64 = 1000;

/// Batches remembered per producer and partition to answer retries: a producer may have this
/// many batches of one partition in flight and still have any retry recognised. Kafka uses 5;
/// here an acknowledgement waits for a group commit (about 5 ms), so a single producer needs a
/// deeper pipeline: measured with one producer on one partition, 5 in flight reached 0.6-0.75
/// of the single-connection limit and 16 reached it. 16 × 24 bytes per producer and partition.
pub const PRODUCER_BATCHES_REMEMBERED: usize = 16;

/// How much a rebuild of a partition's producer sequences reads before it stops reaching
/// further back than the newest two segments for a producer with fewer than
/// `PRODUCER_BATCHES_REMEMBERED` batches in them. Large batches in small segments need more
/// than two segments for the batches a retry may reach back to; with the default 1 GiB
/// segments the newest two rarely hold less than this, so start-up reads no more.
pub const PRODUCER_REBUILD_EXTEND_BYTES_MAX: u64 = 64 << 20;

/// Idempotent producers tracked per partition; the least recently active is forgotten beyond it.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;

/// Registered (pinned) memory each shard's io_uring gets for DMA buffers. Write buffers come from
/// it; when it is exhausted glommio falls back to the system allocator, which costs a fresh
/// mapping per flush: measured here, 8 MiB flush buffers reach 2.7 GB/s from this pool and 0.85
/// GB/s without it. 128 MiB covers eight partitions writing at full speed per shard.
pub const SHARD_IO_MEMORY_BYTES: usize = 128 << 20;

/// Bytes of write buffers waiting for their flush that one shard's active segments hold at once
/// at their preferred size (`storage/buffers.rs`). A log's buffer grows to its configured
/// `write_buffer_bytes` (8 MiB in throughput mode) only while the shard's held buffers stay
/// under this; beyond it a log gets a buffer just big enough for the batch in hand, so 10,000
/// partitions written at once cost the bytes written, not 10,000 × 8 MiB. 64 MiB is eight
/// partitions at full speed, half of the shard's registered memory
/// (`SHARD_IO_MEMORY_BYTES`); the other half is for flushes under way and the tail cache.
pub const SHARD_WRITE_BUFFER_BYTES_MAX: usize = 64 << 20;

/// The smallest write buffer a log takes: a few small batches. A quiet log holds none.
pub const WRITE_BUFFER_BYTES_MIN: usize = 64 << 10;

/// Bytes of recently written batches one shard keeps for tail reads, across all its logs
/// (`storage/cache.rs`): the chunks written longest ago are evicted first, whichever log holds
/// them. 64 MiB is what one log could keep before the budget was per shard: a consumer up to
/// 64 MiB behind the writers is served from memory; idle partitions' chunks age out.
pub const SHARD_CACHE_BYTES_MAX: usize = 64 << 20;

/// Bytes of unused small-flush copies (`storage/cache.rs`, `CopiedBytes`) one shard keeps to
/// reuse instead of returning them to the allocator: 2 MiB is a thousand 2 KiB flushes, more
/// than a shard's evictions run ahead of its new copies.
pub const SHARD_COPY_POOL_BYTES_MAX: usize = 2 << 20;

/// Sealed segments whose descriptor a shard keeps open (`storage/files.rs`); the least recently
/// read beyond it are closed and reopened on demand. Active segments stay open (one descriptor
/// per partition), so a broker needs about partitions + shards × this + connections
/// descriptors (plus `SMALL_FILE_OPS_CONCURRENT` and `SEALS_CONCURRENT` per shard for a
/// moment): 10,000 partitions on 2 shards fit in 16,384 with room for 3,000 connections.
/// Opening a file costs ~10 µs here, against a cold read of at least a few hundred µs.
pub const SEALED_FILES_OPEN_MAX: usize = 1024;

/// Logs a stopping shard closes at once. Each close ends with a truncate and a sync of its
/// active segment (a journal commit on ext4); the file system merges concurrent commits, so
/// 10,000 partitions stop in seconds rather than in 10,000 device round trips one after another
/// (`SHARD_STOP_WAIT_MAX` bounds the whole stop).
pub const LOG_CLOSES_CONCURRENT: usize = 256;

/// Small files (checkpoints, index files, directories to sync) a shard has open at once: 10,000
/// partitions whose first flush each writes an epoch checkpoint would otherwise need 10,000
/// descriptors more than their segments for a moment. 64 keeps io_uring busy (these are
/// mostly syncs, which the device serves a few at a time).
pub const SMALL_FILE_OPS_CONCURRENT: usize = 64;

/// Log flushes in one sync round (`storage/sync.rs`) from which the round is one `syncfs` of
/// their file system rather than an fdatasync per file. Below it the fdatasyncs run side by
/// side (the journal merges their commits) and leave the rest of the file system alone; from
/// it on, one journal commit and one cache flush beat as many device round trips as files.
pub const SHARED_SYNC_FILES_MIN: usize = 8;

/// Rolls a shard runs at once; each holds the previous segment's descriptor until its
/// background seal ends.
pub const SEALS_CONCURRENT: usize = 64;

/// Logs a shard opens at once when the metadata places many partitions on it (start-up, a
/// topic of 10,000 partitions): their recoveries' small reads and syncs overlap in io_uring
/// instead of running one after another.
pub const LOG_OPENS_CONCURRENT: usize = 64;

/// How often a shard's executor checks whether a task has run too long and another queue (or
/// the I/O reactor) should run.
pub const SHARD_PREEMPT_MS: u64 = 1;

/// How far ahead of its data a latency-mode (`FlushPolicy::Always`) active segment is extended
/// with written zeros. A direct write that extends the file cannot be issued without blocking
/// (ext4 punts it to an io_uring worker thread and completes it synchronously there), and the
/// fdatasync after it must also write the inode for the new size: measured here, about 3
/// device round trips and 2 worker-thread hand-offs per small flush instead of 2 and 1. Zeros
/// written ahead make every flush an overwrite. 1 MiB costs one extra ~1 MiB write per MiB of
/// small appends (latency mode's rates are low) and adds under 1 ms to one flush in that MiB.
/// It also bounds how far ahead a throughput-mode segment is allocated
/// ([`SEGMENT_ALLOCATE_AHEAD_MIN`]).
pub const SEGMENT_PREALLOCATE_BYTES: u64 = 1 << 20;

/// The least a throughput-mode active segment is allocated ahead of its data with
/// `fallocate(2)` (`storage::segment::ExtendBy::Allocation`); a log allocates 16 × its last
/// flush's new bytes ahead, rounded up to a power of two, within this and
/// [`SEGMENT_PREALLOCATE_BYTES`]. Without it every flush grows the file, which ext4 cannot do
/// from io_uring's submitting thread: each became a hand-off to an io_uring worker thread
/// (measured: those workers took ~38 % of the broker's CPU over 1,000 partitions; allocating
/// ahead moved 20–35 % more MB/s there). The bound keeps the space allocated and unused small,
/// a busy log at most 1 MiB; and a segment is allocated ahead only from its second flush, so
/// partitions written once hold none.
pub const SEGMENT_ALLOCATE_AHEAD_MIN: u64 = 64 << 10;

/// How long a connection waits on its socket in latency mode before trying the `recv` (or
/// re-trying the `send`) itself: glommio 0.9 sometimes never reports a socket ready
/// (`server/socket.rs`), and this bounds what such a lost event costs. One timer per wait.
pub const SOCKET_WATCH_LATENCY: std::time::Duration = std::time::Duration::from_millis(2);

/// The same in throughput mode.
pub const SOCKET_WATCH_THROUGHPUT: std::time::Duration = std::time::Duration::from_millis(10);

/// Shares of a shard's *serving* task queue (connections, produce, acknowledgements, flushes)
/// against its *bulk* queue (fetch handling: cold reads, CRC checks, copies) and its
/// *maintenance* queue (retention). Shares only matter when the shard is saturated: then
/// producers' work gets most of the core, consumers catching up get a fixed slice and are never
/// starved, and retention runs in the gaps.
pub const SHARD_SHARES_SERVING: usize = 1000;
/// See `SHARD_SHARES_SERVING`. In throughput mode bulk reads share the core equally instead.
pub const SHARD_SHARES_BULK_LATENCY: usize = 250;
/// See `SHARD_SHARES_SERVING`.
pub const SHARD_SHARES_MAINTENANCE: usize = 50;
/// In latency mode the serving queue is `Latency::Matters` with this bound: a long-running
/// task of another queue is preempted within it when serving work is waiting.
pub const SHARD_SERVING_LATENCY: std::time::Duration = std::time::Duration::from_micros(500);

/// A socket wait that keeps expiring without data doubles its watchdog period up to this many
/// times the first: an idle connection costs a few timer wake-ups a second, not hundreds, while
/// a busy one (where the lost events were seen) is still checked after the first period.
pub const SOCKET_WATCH_BACKOFF_MAX: u32 = 64;

/// Largest `sendfile` one call on a shard's blocking-thread pool makes (`server/socket.rs`).
pub const SENDFILE_CALL_BYTES_MAX: usize = 4 << 20;

/// How long one such call waits, in all, for a full socket to drain before it returns what it
/// sent: the pool has one thread per shard, and other connections' cold reads wait behind it.
pub const SENDFILE_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(2);

/// First back-off, on timers, after a `sendfile` call that sent nothing; it doubles up to the
/// connection's watchdog period.
pub const SENDFILE_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_micros(200);

/// Shard `i`'s own port is the `--listen` port plus this plus `i`, unless `--shard-ports` gives
/// them: the next two ports stay free for the HTTP metrics (9491) and metadata (9492) defaults,
/// and brokers laid out 100 ports apart (9490, 9590, …, as in the README) have room for 90
/// shards each. Fixed ports survive a restart, so clients' metadata stays right.
pub const SHARD_PORT_OFFSET: u16 = 10;

/// How long a starting broker waits for a port to be freed before it gives up with an error. A
/// broker killed with SIGKILL keeps its listening sockets open, accepting into their backlogs,
/// for a moment after its process has been reaped (5–12 ms measured here, idle), while the
/// kernel tears down its io_uring rings, whose pending accepts hold the sockets; a broker
/// restarted at once must wait for that rather than fail, or share the port with them. 3 s is
/// hundreds of times the measured linger and still a prompt error for a port truly in use.
pub const LISTEN_FREED_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// How often a start-up bind is tried again while it waits for the port.
pub const LISTEN_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Most members of one consumer group (Kafka's `group.consumer.max.size` default): every
/// membership change recomputes the group's assignment over all members and partitions.
pub const GROUP_MEMBERS_MAX: usize = 200;

/// Most `sluice_group_committed_offset` (and `sluice_group_lag`) series one shard shows per
/// scrape. A group's committed offsets are one series per partition it ever committed, so a
/// few groups on topics with thousands of partitions would otherwise grow a scrape without
/// bound; 10,000 is the partition count the scrape cost was measured with (ARCHITECTURE.md,
/// *Metrics*). Series beyond it are left out (in group and partition order) and counted in
/// `sluice_group_offsets_omitted`. Per-group series (members, rebalances) are bounded by the
/// groups a shard coordinates, each of which costs more memory than its two series.
pub const GROUP_OFFSET_SERIES_MAX: usize = 10_000;

/// Longest consumer group id: ids are keys of the offsets log and names in every group request.
pub const GROUP_ID_BYTES_MAX: usize = 255;

/// Longest metadata string of a committed offset (Kafka's `offset.metadata.max.bytes`): it is
/// kept in memory for every committed partition of every group a coordinator serves.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;

/// How often a coordinator looks for expired sessions: a member is removed at most this long
/// after its session ends.
pub const GROUP_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Longest a leader holds a follower's fetch when it has nothing new (long poll): short enough
/// that a follower reports its durable end (what the high watermark counts) promptly when the
/// leader is idle, long enough that idle partitions cost a request per half second.
pub const REPLICA_FETCH_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(500);

/// Most bytes one replica fetch asks for (per partition and per request): 8 MiB is a few
/// group commits of a busy partition, and bounds the follower's memory per leader it follows.
pub const REPLICA_FETCH_BYTES_MAX: u32 = 8 << 20;

/// Longest pause between a follower's attempts to reach its leader after a failure.
pub const REPLICA_FETCH_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a leader shard checks whether its partitions' in-sync sets should change. A
/// follower that caught up joins within about this long; one that lags leaves within
/// `replica_lag_time_max` plus this.
pub const IN_SYNC_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// How long a leader waits before proposing an in-sync change again for a partition whose last
/// proposal failed: the controller may be changing hands, or the change already happened by
/// another way (a lease expiry); retrying every check would flood the controller.
pub const IN_SYNC_RETRY_AFTER_REFUSAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest a broker stopping on SIGTERM waits for the controller to move its leaderships before
/// it stops anyway: long enough for a follower that is a few seconds behind to catch up and
/// take over, short enough that an orchestrator's grace period (30 s in Kubernetes) still covers
/// the shards' own flush and close.
pub const CONTROLLED_SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a stopping broker asks the controller again while leaderships are left to move.
pub const CONTROLLED_SHUTDOWN_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// How often a shard writes the high watermark of each replicated log it holds to the log's
/// checkpoint file (when it moved). Kafka's default, 5 s: a lagging checkpoint after a crash only
/// makes consumers wait for the leader's next fetch answer, never shows them too much.
pub const HIGH_WATERMARK_CHECKPOINT_INTERVAL: std::time::Duration =
    std::time::Duration::from_secs(5);

/// Longest pause between two rounds of the controller's duties (lease expiry, refused peers,
/// reassignments ready to complete); a quarter lease when that is shorter.
pub const CONTROLLER_TICK_MAX: std::time::Duration = std::time::Duration::from_millis(100);

/// A broker whose metadata port has refused connections this long, with no exchange answered
/// since, is marked dead without waiting for its lease: nothing listens there, so its process is
/// gone (a paused or partitioned broker times out instead, and keeps its lease). Long enough for
/// a few Raft heartbeats (a ninth of the election timeout apart) to have been refused too.
pub const REFUSED_DEAD_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// Longest a stopping broker waits for its shards to finish their requests, flush and close
/// their logs (the connections' own drain is 10 s of it) before it exits with an error instead:
/// a stuck shard must not keep the process alive for ever, and everything acknowledged is
/// already durable.
pub const SHARD_STOP_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest Kafka-protocol request frame: like the native [`FRAME_BYTES_MAX`], one produce
/// request of maximal batches plus its headers (Kafka's own `socket.request.max.bytes` is 100
/// MiB; a frame above this is a broken or hostile client and its connection is closed).
pub const KAFKA_FRAME_BYTES_MAX: usize = FRAME_BYTES_MAX;

/// A Kafka request frame holds at least its header's api key, version and correlation id.
pub const KAFKA_FRAME_BYTES_MIN: usize = 8;

/// Kafka clients know one node per address, so every shard of a broker is a Kafka node of its
/// own: node id = broker id × this + shard. 1,000 leaves room for far more shards than cores
/// (the native shard ports leave room for 90) and for broker ids up to 2,147,482 in Kafka's
/// 32-bit node ids.
pub const KAFKA_NODE_IDS_PER_BROKER: i32 = 1_000;
