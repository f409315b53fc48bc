//! The leader side's periodic duty: for every partition this shard leads, ask the in-sync rules
//! (`replication::isr`) whether the in-sync set should change, and propose the change to the
//! controller (`AdminRequest::AlterInSync`, fenced by the leader and partition epochs). The
//! new set reaches the shard with the metadata, like every other change.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::FutureExt;

use super::context::ShardContext;
use super::partitions::now_ms;
use crate::limits::{IN_SYNC_CHECK_INTERVAL, IN_SYNC_RETRY_AFTER_REFUSAL};
use crate::metadata::{AdminReply, AdminRequest};

pub async fn run(ctx: Rc<ShardContext>) {
    // A partition whose proposal failed waits before proposing again (the controller may be
    // moving, or the change already happened another way, e.g. a lease expiry).
    let mut refused: HashMap<(String, u32), Instant> = HashMap::new();
    loop {
        let stop = ctx.stop.listen();
        let go_on = async {
            glommio::timer::sleep(IN_SYNC_CHECK_INTERVAL).await;
            true
        }
        .or(async {
            stop.await;
            false
        });
        if !go_on.await {
            return;
        }
        refused.retain(|_, at| at.elapsed() < IN_SYNC_RETRY_AFTER_REFUSAL);
        // Only partitions with more than one replica can change their in-sync set; a leader
        // alone has its high watermark follow its durable end from the moment it leads.
        let leaders = ctx.partitions.replicated_leaders();
        for ((topic, partition), owned) in leaders.iter() {
            let partition = *partition;
            let Some(followers) = owned.followers.as_ref() else {
                continue;
            };
            if !refused.is_empty() && refused.contains_key(&(topic.clone(), partition)) {
                continue;
            }
            // Judge against the high watermark as of now (a leader alone in its set publishes its
            // durable end without a fetch to recompute it).
            owned.refresh_high_watermark(ctx.node_id);
            let Some(change) = followers
                .borrow()
                .proposed_change(now_ms(), owned.replica_lag_time_max_ms)
            else {
                continue;
            };
            tracing::info!(%topic, partition, from = ?owned.info.in_sync, to = ?change.in_sync, "proposing an in-sync change");
            let outcome = ctx
                .link
                .call(AdminRequest::AlterInSync {
                    topic: topic.clone(),
                    partition,
                    leader: ctx.node_id,
                    leader_epoch: owned.leader_epoch,
                    partition_epoch: owned.info.partition_epoch,
                    in_sync: change.in_sync,
                })
                .await;
            match outcome {
                Ok(AdminReply::Done { version }) => {
                    // Wait until this shard has the change, so the next round judges the new set.
                    let mut state = ctx.link.state.clone();
                    let applied = async {
                        while state.borrow_and_update().version < version {
                            if state.changed().await.is_err() {
                                return;
                            }
                        }
                    }
                    .or(async {
                        glommio::timer::sleep(IN_SYNC_CHECK_INTERVAL * 4).await;
                    });
                    applied.await;
                }
                Ok(other) => tracing::debug!(?other, "unexpected in-sync reply"),
                Err(error) => {
                    tracing::debug!(%topic, partition, %error, "in-sync change refused");
                    refused.insert((topic.clone(), partition), Instant::now());
                }
            }
            glommio::yield_if_needed().await;
        }
    }
}
