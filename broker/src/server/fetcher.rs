//! The follower side of replication: on each shard, one fetcher task per leader (broker,
//! shard) that this shard follows partitions of, over one connection carrying all of them.
//!
//! A round: ask for every followed partition from its log end, with the epoch of its last
//! batch and its durable end; truncate where the leader says the logs diverge; append the
//! batches as the leader stored them (`PartitionLog::append_replica`); wait until they are
//! durable here, so the next request reports the new durable end (what the leader's high
//! watermark counts); take the leader's high watermark. Errors that mean the metadata is moving
//! (not the leader, a fenced or unknown epoch) wait briefly for it; connection failures
//! reconnect with a backoff. The fetcher of a leader stops when this shard follows nothing of
//! it any more.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::FutureExt;
use glommio::net::TcpStream;
use glommio::task::JoinHandle;
use sluice_protocol::native::{
    decode_control, encode_control, encode_request, split_response, ApiKey, ErrorCode,
    ReplicaFetchPartition, ReplicaFetchRequest, ReplicaFetchResponse,
};
use sluice_protocol::BatchIter;

use super::context::ShardContext;
use super::partitions::{LeaderShard, OwnedPartition};
use super::socket::Watch;
use crate::limits::{
    FRAME_BYTES_MAX, REPLICA_FETCH_BACKOFF_MAX, REPLICA_FETCH_BYTES_MAX, REPLICA_FETCH_WAIT_MAX,
};
use crate::storage::{Appended, EpochEnd, StorageError};

/// Keeps one fetcher task per followed leader shard, as the metadata changes.
pub async fn run(ctx: Rc<ShardContext>) {
    let mut tasks: HashMap<LeaderShard, (JoinHandle<()>, Rc<Cell<bool>>)> = HashMap::new();
    let mut state = ctx.link.state.clone();
    loop {
        let wanted: HashSet<LeaderShard> = ctx.partitions.followed().keys().copied().collect();
        tasks.retain(|leader, (task, finished)| {
            let keep = wanted.contains(leader) && !finished.get();
            if !keep {
                task.cancel();
            }
            keep
        });
        for leader in wanted {
            tasks.entry(leader).or_insert_with(|| {
                let ctx = Rc::clone(&ctx);
                let finished = Rc::new(Cell::new(false));
                let done = Rc::clone(&finished);
                let task = glommio::spawn_local(async move {
                    fetch_from(ctx, leader).await;
                    done.set(true);
                })
                .detach();
                (task, finished)
            });
        }
        // The partitions follow the metadata a moment after it changes: look again on each
        // change and every second.
        let stop = ctx.stop.listen();
        let changed = async { state.changed().await.is_ok() }
            .or(async {
                glommio::timer::sleep(Duration::from_secs(1)).await;
                true
            })
            .or(async {
                stop.await;
                false
            });
        if !changed.await {
            for (task, _) in tasks.values() {
                task.cancel();
            }
            return;
        }
    }
}

/// Fetches from one leader shard until this shard follows nothing of it.
async fn fetch_from(ctx: Rc<ShardContext>, leader: LeaderShard) {
    let mut backoff = Duration::from_millis(20);
    loop {
        if ctx
            .partitions
            .followed()
            .get(&leader)
            .is_none_or(|f| f.partitions.is_empty())
        {
            return;
        }
        let address = {
            let state = ctx.link.state.borrow();
            state
                .brokers
                .get(&leader.0)
                .and_then(|b| b.shard_addresses.get(leader.1 as usize).cloned())
        };
        let started = std::time::Instant::now();
        let outcome = match address {
            Some(address) => session(&ctx, leader, &address).await,
            None => Err(format!(
                "broker {} has no address for shard {}",
                leader.0, leader.1
            )),
        };
        if let Err(error) = outcome {
            tracing::debug!(leader = leader.0, shard = leader.1, %error, "replica fetch session ended");
        }
        if started.elapsed() > REPLICA_FETCH_BACKOFF_MAX {
            backoff = Duration::from_millis(20);
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(REPLICA_FETCH_BACKOFF_MAX);
    }
}

/// One connection to the leader shard: rounds until an error or nothing left to follow.
async fn session(ctx: &ShardContext, leader: LeaderShard, address: &str) -> Result<(), String> {
    let stream = TcpStream::connect(address)
        .or(async {
            glommio::timer::sleep(Duration::from_secs(2)).await;
            Err(glommio::GlommioError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            )))
        })
        .await
        .map_err(|e| format!("connect {address}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let watch = Watch::new(
        stream.as_raw_fd(),
        ctx.socket_watch,
        Rc::clone(&ctx.watch_stats),
    );
    watch.set_nonblocking().map_err(|e| e.to_string())?;
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let mut correlation = 0u32;
    loop {
        let Some(followed) = ctx.partitions.followed().get(&leader).cloned() else {
            return Ok(());
        };
        let partitions = &followed.partitions;
        if partitions.is_empty() {
            return Ok(());
        }
        let request = ReplicaFetchRequest {
            replica_id: ctx.node_id,
            max_wait_ms: REPLICA_FETCH_WAIT_MAX.as_millis() as u32,
            min_bytes: 1,
            max_bytes: REPLICA_FETCH_BYTES_MAX,
            partitions: partitions
                .iter()
                .map(|(topic, partition, owned)| ReplicaFetchPartition {
                    topic: topic.clone(),
                    partition: *partition,
                    fetch_offset: owned.log.next_offset(),
                    last_fetched_epoch: owned.log.latest_epoch(),
                    durable_end: owned.log.durable_end(),
                    leader_epoch: owned.leader_epoch,
                    max_bytes: REPLICA_FETCH_BYTES_MAX,
                })
                .collect(),
        };
        correlation = correlation.wrapping_add(1);
        let round_started = std::time::Instant::now();
        let control = encode_control(&request);
        let frame = encode_request(ApiKey::ReplicaFetch, 0, correlation, &control, 0);
        watch
            .write_all(&mut writer, &frame)
            .await
            .map_err(|e| format!("send: {e}"))?;
        futures_lite::io::AsyncWriteExt::flush(&mut writer)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let stop = ctx.stop.listen();
        let answer = async { Some(read_response(&watch, &mut reader).await) }
            .or(async {
                stop.await;
                None
            })
            .or(async {
                glommio::timer::sleep(REPLICA_FETCH_WAIT_MAX * 4).await;
                Some(Err("no answer in time".to_string()))
            })
            .await;
        let Some(frame) = answer else {
            return Ok(());
        };
        let frame = frame?;
        let answered_ms = round_started.elapsed().as_millis() as u64;
        let parsed = split_response(&frame).map_err(|e| e.to_string())?;
        if parsed.correlation_id != correlation || parsed.frame_error != 0 {
            return Err(format!(
                "answer {} (frame error {}) to request {correlation}",
                parsed.correlation_id, parsed.frame_error
            ));
        }
        let response: ReplicaFetchResponse =
            decode_control(parsed.control).map_err(|e| e.to_string())?;
        let mut at = 0usize;
        let mut moving = false;
        for answer in &response.partitions {
            let len = answer.bytes_len as usize;
            let Some(data) = parsed.data.get(at..at + len) else {
                return Err("data shorter than the answer says".into());
            };
            at += len;
            let Some(owned) = followed.get(&answer.topic, answer.partition) else {
                continue;
            };
            let still_following = || {
                ctx.partitions
                    .get(&answer.topic, answer.partition)
                    .is_some_and(|now| !now.leader && now.leader_epoch == owned.leader_epoch)
            };
            match answer.error {
                ErrorCode::None => {}
                ErrorCode::OffsetOutOfRange if answer.log_start > owned.log.next_offset() => {
                    // Behind the leader's log start (retention deleted what comes next there):
                    // nothing here can be continued; start again, empty, at its log start.
                    tracing::warn!(topic = %answer.topic, partition = answer.partition,
                        from = owned.log.next_offset(), to = answer.log_start,
                        "behind the leader's log start: restarting the replica there");
                    if let Err(error) = owned
                        .producers
                        .restart(&owned.log, answer.log_start, still_following)
                        .await
                    {
                        ctx.report_storage(&error);
                        if error.is_environmental() {
                            return Err(error.to_string());
                        }
                    }
                    continue;
                }
                ErrorCode::NotLeaderOrWrongShard
                | ErrorCode::FencedLeaderEpoch
                | ErrorCode::UnknownLeaderEpoch
                | ErrorCode::NotReplica
                | ErrorCode::UnknownTopicOrPartition => {
                    moving = true;
                    continue;
                }
                other => {
                    tracing::warn!(topic = %answer.topic, partition = answer.partition, error = ?other, "replica fetch refused");
                    moving = true;
                    continue;
                }
            }
            if let Err(error) = apply(
                owned,
                answer.diverging,
                answer.high_watermark,
                data,
                still_following,
            )
            .await
            {
                if error.is_environmental() {
                    ctx.report_storage(&error);
                    return Err(error.to_string());
                }
                tracing::warn!(topic = %answer.topic, partition = answer.partition, %error, "replica append refused");
                moving = true;
            }
        }
        tracing::trace!(
            leader = leader.0,
            bytes = parsed.data.len(),
            answered_ms = answered_ms,
            round_ms = round_started.elapsed().as_millis() as u64,
            "replica fetch round"
        );
        if moving {
            // The metadata is moving (a leader change on its way): give it a moment.
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Applies one partition's answer to the follower's log, batch by batch while this replica
/// still follows at the epoch it asked with.
async fn apply(
    owned: &OwnedPartition,
    diverging: Option<sluice_protocol::native::DivergingEpoch>,
    high_watermark: u64,
    data: &[u8],
    still_following: impl Fn() -> bool,
) -> Result<(), StorageError> {
    let log = &owned.log;
    if let Some(diverging) = diverging {
        // Cut at the smaller of where the leader's epoch ends and where ours does.
        let mut cut = diverging.end_offset.min(log.next_offset());
        if let EpochEnd::Found { end_offset, .. } = log.end_of_epoch(diverging.epoch) {
            cut = cut.min(end_offset);
        }
        let cut = cut.max(log.log_start());
        tracing::info!(dir = %log.dir().display(), cut, epoch = diverging.epoch, "truncating a divergent tail");
        owned.producers.truncate(log, cut, &still_following).await?;
        return Ok(());
    }
    let mut last: Option<Appended> = None;
    for item in BatchIter::new(data) {
        let (header, batch) = item?;
        if header.next_offset() <= log.next_offset() {
            continue;
        }
        match owned
            .producers
            .append_replica(log, batch, &still_following)
            .await?
        {
            Some(appended) => last = Some(appended),
            None => break,
        }
    }
    if let Some(appended) = last {
        log.wait_durable(appended).await?;
    }
    if still_following() {
        log.set_high_watermark(high_watermark.min(log.durable_end()));
    }
    Ok(())
}

/// Reads one response frame (without its length field), bounded by the frame limit.
async fn read_response<R: futures_lite::io::AsyncRead + Unpin>(
    watch: &Watch,
    reader: &mut R,
) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    watch
        .read_exact(reader, &mut len)
        .await
        .map_err(|e| format!("receive: {e}"))?;
    let len = u32::from_le_bytes(len) as usize;
    if !(12..=FRAME_BYTES_MAX).contains(&len) {
        return Err(format!("answer frame of {len} bytes"));
    }
    let mut frame = vec![0u8; len];
    watch
        .read_exact(reader, &mut frame)
        .await
        .map_err(|e| format!("receive: {e}"))?;
    Ok(frame)
}
