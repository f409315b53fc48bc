//! A leader's view of its followers (pure): what each follower has fetched and made durable,
//! and the rules that follow from it — the high watermark, who is caught up, who leaves and who
//! joins the in-sync set. No I/O and no clock: fetches and time come in as arguments, so the
//! rules are tested alone and the replica fetch handler only calls them.
//!
//! - **High watermark**: the smallest *durable* end over the in-sync set, the leader included.
//!   Every record below it is fsynced on every in-sync replica, so an `acks=all` acknowledgement
//!   (sent once the batch is below it) survives the loss of every replica but one, and even a
//!   power cut of the whole cluster. It never moves back while the leader leads.
//! - **Caught up** (Kafka's rule): a follower is caught up at a fetch that asks for the leader's
//!   log end, or for at least the log end the leader had at the follower's previous fetch (it
//!   has everything that existed then).
//! - **Leaving**: an in-sync follower not caught up for longer than `replica_lag_time_max`
//!   leaves the set.
//! - **Joining**: a follower out of the set joins once its durable end reaches the high
//!   watermark and the start of the leader's current epoch (so it holds everything
//!   acknowledged, and nothing of an older leader's divergent tail).

use std::collections::BTreeMap;

use crate::metadata::NodeId;

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerProgress {
    /// The next offset the follower asked for.
    pub fetch_offset: u64,
    /// Offsets below this are durable on the follower.
    pub durable_end: u64,
    /// When the follower was last caught up (ms).
    pub caught_up_ms: u64,
    /// When it last fetched, and the leader's log end then.
    pub last_fetch_ms: u64,
    pub leader_end_at_last_fetch: u64,
}

/// The leader's replication state for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderState {
    pub leader: NodeId,
    /// All replicas' brokers, the leader included.
    pub replicas: Vec<NodeId>,
    /// The in-sync set as the metadata last said (the leader included).
    pub in_sync: Vec<NodeId>,
    /// The first offset of the leader's current epoch.
    pub epoch_start_offset: u64,
    followers: BTreeMap<NodeId, FollowerProgress>,
    high_watermark: u64,
}

/// An in-sync change the leader should propose to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InSyncChange {
    pub in_sync: Vec<NodeId>,
}

impl LeaderState {
    /// A leader taking over at `now_ms`, with its log's high watermark (from before it led) and
    /// the first offset of its new epoch. Followers count as caught up at the start, so none
    /// leaves the set before it had `replica_lag_time_max` to fetch.
    pub fn new(
        leader: NodeId,
        replicas: Vec<NodeId>,
        in_sync: Vec<NodeId>,
        epoch_start_offset: u64,
        high_watermark: u64,
        now_ms: u64,
    ) -> LeaderState {
        let followers = replicas
            .iter()
            .filter(|&&b| b != leader)
            .map(|&b| {
                (
                    b,
                    FollowerProgress {
                        fetch_offset: 0,
                        durable_end: 0,
                        caught_up_ms: now_ms,
                        last_fetch_ms: now_ms,
                        leader_end_at_last_fetch: 0,
                    },
                )
            })
            .collect();
        LeaderState {
            leader,
            replicas,
            in_sync,
            epoch_start_offset,
            followers,
            high_watermark,
        }
    }

    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    pub fn follower(&self, broker: NodeId) -> Option<&FollowerProgress> {
        self.followers.get(&broker)
    }

    /// Whether `broker` is a follower of this partition (a fetch from anyone else is refused).
    pub fn is_follower(&self, broker: NodeId) -> bool {
        self.followers.contains_key(&broker)
    }

    /// Records a follower's fetch at `now_ms`, when the leader's log ends at `leader_end`.
    pub fn on_fetch(
        &mut self,
        broker: NodeId,
        fetch_offset: u64,
        durable_end: u64,
        leader_end: u64,
        now_ms: u64,
    ) {
        let Some(progress) = self.followers.get_mut(&broker) else {
            return;
        };
        if fetch_offset >= leader_end {
            progress.caught_up_ms = now_ms;
        } else if fetch_offset >= progress.leader_end_at_last_fetch {
            progress.caught_up_ms = progress.caught_up_ms.max(progress.last_fetch_ms);
        }
        progress.fetch_offset = fetch_offset;
        progress.durable_end = durable_end.min(fetch_offset);
        progress.last_fetch_ms = now_ms;
        progress.leader_end_at_last_fetch = leader_end;
    }

    /// The replica set changed (a reassignment started or completed): followers added start
    /// out of the set, as caught up at `now_ms` (they get `replica_lag_time_max` like any new
    /// follower); removed ones are forgotten.
    pub fn set_replicas(&mut self, replicas: Vec<NodeId>, now_ms: u64) {
        self.followers.retain(|broker, _| replicas.contains(broker));
        for &broker in &replicas {
            if broker != self.leader {
                self.followers.entry(broker).or_insert(FollowerProgress {
                    fetch_offset: 0,
                    durable_end: 0,
                    caught_up_ms: now_ms,
                    last_fetch_ms: now_ms,
                    leader_end_at_last_fetch: 0,
                });
            }
        }
        self.replicas = replicas;
    }

    /// The in-sync set changed (the controller applied a change, or a new one came with the
    /// metadata).
    pub fn set_in_sync(&mut self, in_sync: Vec<NodeId>) {
        self.in_sync = in_sync;
    }

    /// Recomputes the high watermark from the leader's durable end and the in-sync followers'
    /// durable ends; returns it. It never moves back.
    pub fn update_high_watermark(&mut self, leader_durable_end: u64) -> u64 {
        let candidate = self
            .in_sync
            .iter()
            .filter(|&&b| b != self.leader)
            .map(|b| self.followers.get(b).map_or(0, |f| f.durable_end))
            .fold(leader_durable_end, u64::min);
        self.high_watermark = self.high_watermark.max(candidate);
        self.high_watermark
    }

    /// The in-sync set the leader should propose now, if it should change: in-sync followers
    /// lagging for longer than `lag_max_ms` leave; followers caught up to the high watermark
    /// and the start of the current epoch join. `None` when the set is right as it is.
    pub fn proposed_change(&self, now_ms: u64, lag_max_ms: u64) -> Option<InSyncChange> {
        let join_from = self.high_watermark.max(self.epoch_start_offset);
        let mut in_sync: Vec<NodeId> = Vec::with_capacity(self.replicas.len());
        for &broker in &self.replicas {
            if broker == self.leader {
                in_sync.push(broker);
                continue;
            }
            let Some(progress) = self.followers.get(&broker) else {
                continue;
            };
            let lagging = now_ms.saturating_sub(progress.caught_up_ms) > lag_max_ms;
            let keep = if self.in_sync.contains(&broker) {
                !lagging
            } else {
                !lagging && progress.durable_end >= join_from
            };
            if keep {
                in_sync.push(broker);
            }
        }
        let mut current = self.in_sync.clone();
        current.sort_unstable();
        let mut proposed = in_sync.clone();
        proposed.sort_unstable();
        (current != proposed).then_some(InSyncChange { in_sync })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LAG: u64 = 10_000;

    fn leader() -> LeaderState {
        LeaderState::new(1, vec![1, 2, 3], vec![1, 2, 3], 0, 0, 0)
    }

    #[test]
    fn the_high_watermark_is_the_smallest_durable_end_of_the_in_sync_set() {
        let mut state = leader();
        state.on_fetch(2, 100, 90, 100, 1);
        state.on_fetch(3, 80, 70, 100, 1);
        assert_eq!(state.update_high_watermark(100), 70);
        // A follower's durable end counts, not how far it fetched.
        state.on_fetch(3, 100, 95, 100, 2);
        assert_eq!(state.update_high_watermark(100), 90);
        // The leader's own durable end bounds it too.
        assert_eq!(state.update_high_watermark(85), 90, "never back");
        // Out of the set, a follower no longer holds it back.
        state.on_fetch(2, 100, 100, 120, 3);
        state.set_in_sync(vec![1, 2]);
        assert_eq!(state.update_high_watermark(120), 100);
    }

    #[test]
    fn a_lagging_follower_leaves_and_a_caught_up_one_joins() {
        let mut state = leader();
        assert_eq!(
            state.proposed_change(LAG, LAG),
            None,
            "everyone starts caught up"
        );
        // 2 keeps up; 3 stops fetching.
        for t in 1..=12u64 {
            state.on_fetch(2, t * 10, t * 10, t * 10, t * 1000);
        }
        let change = state.proposed_change(12_000, LAG).expect("3 lags");
        assert_eq!(change.in_sync, vec![1, 2]);
        state.set_in_sync(change.in_sync);
        state.update_high_watermark(120);
        // 3 comes back, fetches up to the end, but joins only once durable up to the high
        // watermark.
        state.on_fetch(3, 120, 60, 120, 13_000);
        assert_eq!(state.proposed_change(13_000, LAG), None);
        state.on_fetch(3, 120, 120, 120, 13_100);
        assert_eq!(
            state.proposed_change(13_100, LAG).unwrap().in_sync,
            vec![1, 2, 3]
        );
    }

    #[test]
    fn a_follower_behind_an_end_that_keeps_growing_is_caught_up_by_kafkas_rule() {
        let mut state = leader();
        // Each fetch asks for what the leader had at the previous fetch, never its current end.
        let mut end = 10;
        for t in 1..=30u64 {
            let previous_end = end;
            end += 10;
            state.on_fetch(2, previous_end, previous_end, end, t * 1000);
            state.on_fetch(3, end, end, end, t * 1000);
        }
        assert_eq!(state.proposed_change(30_000, LAG), None, "2 stays in sync");
    }

    /// A replica added to a partition whose leader was alone (a reassignment) joins only once
    /// durable up to everything the leader had published, not at once from an empty log.
    #[test]
    fn an_added_replica_joins_only_once_it_has_the_leaders_data() {
        let mut state = LeaderState::new(1, vec![1], vec![1], 0, 0, 0);
        // Alone, the leader publishes its durable end.
        assert_eq!(state.update_high_watermark(5_000), 5_000);
        state.set_replicas(vec![1, 2], 100);
        assert!(state.is_follower(2));
        assert_eq!(state.proposed_change(100, LAG), None, "2 has nothing yet");
        state.on_fetch(2, 0, 0, 5_000, 200);
        assert_eq!(state.proposed_change(200, LAG), None);
        state.on_fetch(2, 5_000, 4_000, 5_000, 300);
        assert_eq!(
            state.proposed_change(300, LAG),
            None,
            "not durable up to it yet"
        );
        state.on_fetch(2, 5_000, 5_000, 5_000, 400);
        assert_eq!(state.proposed_change(400, LAG).unwrap().in_sync, vec![1, 2]);
        // Removed again: forgotten.
        state.set_replicas(vec![1], 500);
        assert!(!state.is_follower(2));
    }

    #[test]
    fn a_new_leader_waits_for_followers_past_its_epoch_start() {
        let mut state = LeaderState::new(2, vec![1, 2, 3], vec![2], 500, 400, 0);
        state.on_fetch(1, 450, 450, 520, 10);
        state.update_high_watermark(520);
        assert_eq!(
            state.high_watermark(),
            520,
            "alone in the set: its own durable end"
        );
        assert_eq!(
            state.proposed_change(10, LAG),
            None,
            "450 is before the epoch start"
        );
        state.on_fetch(1, 520, 520, 520, 20);
        assert_eq!(state.proposed_change(20, LAG).unwrap().in_sync, vec![1, 2]);
        assert!(!state.is_follower(7));
    }

    proptest! {
        /// Whatever the fetches, the high watermark never exceeds the durable end of an
        /// in-sync replica and never goes back; the leader always stays in a proposed set.
        #[test]
        fn high_watermark_bounds(fetches in proptest::collection::vec((2u64..4, 0u64..200, 0u64..200, 0u64..100), 1..60)) {
            let mut state = leader();
            let mut leader_end = 0u64;
            let mut last_hw = 0;
            for (t, (broker, offset, durable, grow)) in fetches.into_iter().enumerate() {
                leader_end += grow;
                let offset = offset.min(leader_end);
                state.on_fetch(broker, offset, durable, leader_end, t as u64 * 100);
                let hw = state.update_high_watermark(leader_end);
                prop_assert!(hw >= last_hw);
                prop_assert!(hw <= leader_end);
                if hw > last_hw {
                    // A rise is backed by every in-sync replica's durable end.
                    for b in state.in_sync.iter().filter(|&&b| b != 1) {
                        let f = state.follower(*b).unwrap();
                        prop_assert!(hw <= f.durable_end, "hw {hw} past {b}'s {}", f.durable_end);
                    }
                }
                last_hw = hw;
                if let Some(change) = state.proposed_change(t as u64 * 100, 1000) {
                    prop_assert!(change.in_sync.contains(&1));
                    state.set_in_sync(change.in_sync);
                }
            }
        }
    }
}
