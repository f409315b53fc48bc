//! One consumer group's membership and assignment (pure): the state machine of KIP-848's
//! consumer protocol, without I/O or clocks (time comes in as `now_ms`).
//!
//! - **Epochs.** The *group epoch* increases whenever membership, a subscription or a subscribed
//!   topic's partition count changes; the coordinator then computes a new *target assignment*
//!   with the group's assignor. Each member has a *member epoch*: the group epoch whose target
//!   it has reconciled to. A heartbeat or commit carrying another epoch is fenced.
//! - **Reconciliation.** A member moves toward its target in two steps: first it gives up what
//!   the target takes away (it keeps those partitions, and may commit for them, until a
//!   heartbeat reports it no longer owns them), then it receives what the target adds, each
//!   partition only once no other member holds it. So a partition is never held by two members
//!   at once, and members whose target did not change keep consuming through a rebalance.
//! - **Sessions.** Every heartbeat extends the member's session; a member whose session
//!   expires is removed. A static member (`instance_id`) that rejoins takes over its previous
//!   member's assignment with no rebalance.
//!
//! Invariant (asserted after every change and checked by the model test): no partition is in
//! two members' `held` sets.

use std::collections::{BTreeMap, BTreeSet};

use super::assign::{AssignorKind, MemberSpec, TopicPartition};
use crate::limits::{GROUP_ID_BYTES_MAX, GROUP_MEMBERS_MAX};

/// Why the coordinator refused a request. Each maps to a Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("group id is empty or longer than {GROUP_ID_BYTES_MAX} bytes")]
    InvalidGroupId,
    #[error("member {0} is not in the group")]
    UnknownMember(String),
    #[error("member epoch {got} is fenced: the member is at epoch {current}")]
    FencedMemberEpoch { current: u32, got: i32 },
    #[error("the group has its maximum of {max} members")]
    GroupFull { max: usize },
    #[error("{topic}/{partition} is not assigned to this member")]
    NotAssigned { topic: String, partition: u32 },
}

/// A member of the group as the coordinator knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub member_epoch: u32,
    /// The epoch before the last advance: a heartbeat from it whose answer was lost is not
    /// fenced.
    pub previous_epoch: u32,
    pub topics: BTreeSet<String>,
    /// What the coordinator has given this member and not yet seen it release.
    pub held: BTreeSet<TopicPartition>,
    /// Of `held`, what the member has been asked to release.
    pub revoking: BTreeSet<TopicPartition>,
    pub session_deadline_ms: u64,
}

/// What a heartbeat says. `member_id: None` with epoch 0 joins.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heartbeat {
    pub member_id: Option<String>,
    /// 0 to join, -1 to leave, -2 for a static member's temporary leave, else the member epoch.
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    /// The subscription, when it changed (always on join).
    pub topics: Option<BTreeSet<String>>,
    /// What the member owns now, when it changed.
    pub owned: Option<BTreeSet<TopicPartition>>,
}

/// The coordinator's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    pub member_id: String,
    /// -1 after a leave.
    pub member_epoch: i32,
    /// What the member should own now (absent after a leave).
    pub assignment: BTreeSet<TopicPartition>,
}

/// A group's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupConfig {
    pub session_timeout_ms: u64,
    pub assignor: AssignorKind,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            session_timeout_ms: 45_000,
            assignor: AssignorKind::Sticky,
        }
    }
}

/// One group's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    group_id: String,
    config: GroupConfig,
    group_epoch: u32,
    target: BTreeMap<String, BTreeSet<TopicPartition>>,
    /// The partition counts the target was computed for.
    target_partitions: BTreeMap<String, u32>,
    members: BTreeMap<String, Member>,
    next_member: u64,
    /// Part of every member id this incarnation issues (not persisted): a coordinator that
    /// reloads the group after a failover may have lost the record of the last joins, so it
    /// must not issue the same ids again.
    incarnation: u64,
}

/// What is persisted of a group in the offsets log. Session deadlines are not: a coordinator
/// that loads a group gives every member a fresh session.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct GroupSnapshot {
    pub group_id: String,
    pub session_timeout_ms: u64,
    pub assignor: String,
    pub group_epoch: u32,
    pub next_member: u64,
    pub target: Vec<(String, Vec<TopicPartition>)>,
    pub target_partitions: Vec<(String, u32)>,
    pub members: Vec<MemberSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MemberSnapshot {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub member_epoch: u32,
    pub previous_epoch: u32,
    pub topics: Vec<String>,
    pub held: Vec<TopicPartition>,
    pub revoking: Vec<TopicPartition>,
}

pub const LEAVE_EPOCH: i32 = -1;
pub const STATIC_LEAVE_EPOCH: i32 = -2;

impl Group {
    pub fn new(group_id: &str, config: GroupConfig) -> Result<Group, GroupError> {
        if group_id.is_empty() || group_id.len() > GROUP_ID_BYTES_MAX {
            return Err(GroupError::InvalidGroupId);
        }
        Ok(Group {
            group_id: group_id.to_string(),
            config,
            group_epoch: 0,
            target: BTreeMap::new(),
            target_partitions: BTreeMap::new(),
            members: BTreeMap::new(),
            next_member: 0,
            incarnation: 0,
        })
    }

    /// Sets the part of member ids that tells this coordinator incarnation's apart.
    pub fn set_incarnation(&mut self, incarnation: u64) {
        self.incarnation = incarnation;
    }

    /// Changes the session timeout; only while the group has no members (the first member to
    /// join an empty group sets it).
    pub fn set_session_timeout(&mut self, session_timeout_ms: u64) {
        if self.members.is_empty() {
            self.config.session_timeout_ms = session_timeout_ms;
        }
    }

    /// Changes the assignor; only while the group has no members.
    pub fn set_assignor(&mut self, assignor: AssignorKind) {
        if self.members.is_empty() {
            self.config.assignor = assignor;
        }
    }

    pub fn config(&self) -> GroupConfig {
        self.config
    }

    /// The persisted form (see [`GroupSnapshot`]).
    pub fn snapshot(&self) -> GroupSnapshot {
        GroupSnapshot {
            group_id: self.group_id.clone(),
            session_timeout_ms: self.config.session_timeout_ms,
            assignor: self.config.assignor.name().to_string(),
            group_epoch: self.group_epoch,
            next_member: self.next_member,
            target: self
                .target
                .iter()
                .map(|(m, tps)| (m.clone(), tps.iter().cloned().collect()))
                .collect(),
            target_partitions: self
                .target_partitions
                .iter()
                .map(|(t, n)| (t.clone(), *n))
                .collect(),
            members: self
                .members
                .values()
                .map(|m| MemberSnapshot {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    member_epoch: m.member_epoch,
                    previous_epoch: m.previous_epoch,
                    topics: m.topics.iter().cloned().collect(),
                    held: m.held.iter().cloned().collect(),
                    revoking: m.revoking.iter().cloned().collect(),
                })
                .collect(),
        }
    }

    /// A group from its persisted form; every member's session starts at `now_ms`.
    pub fn restore(snapshot: GroupSnapshot, now_ms: u64) -> Result<Group, GroupError> {
        let config = GroupConfig {
            session_timeout_ms: snapshot.session_timeout_ms,
            assignor: AssignorKind::from_name(&snapshot.assignor).unwrap_or_default(),
        };
        let mut group = Group::new(&snapshot.group_id, config)?;
        group.group_epoch = snapshot.group_epoch;
        group.next_member = snapshot.next_member;
        group.target = snapshot
            .target
            .into_iter()
            .map(|(m, tps)| (m, tps.into_iter().collect()))
            .collect();
        group.target_partitions = snapshot.target_partitions.into_iter().collect();
        group.members = snapshot
            .members
            .into_iter()
            .map(|m| {
                let member = Member {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id,
                    member_epoch: m.member_epoch,
                    previous_epoch: m.previous_epoch,
                    topics: m.topics.into_iter().collect(),
                    held: m.held.into_iter().collect(),
                    revoking: m.revoking.into_iter().collect(),
                    session_deadline_ms: now_ms + config.session_timeout_ms,
                };
                (m.member_id, member)
            })
            .collect();
        group.check_invariant();
        Ok(group)
    }

    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    pub fn group_epoch(&self) -> u32 {
        self.group_epoch
    }

    pub fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    pub fn target(&self) -> &BTreeMap<String, BTreeSet<TopicPartition>> {
        &self.target
    }

    /// Whether every member holds exactly its target (nothing moving).
    pub fn is_stable(&self) -> bool {
        self.members
            .values()
            .all(|m| m.revoking.is_empty() && self.target.get(&m.member_id) == Some(&m.held))
    }

    /// Serves one heartbeat at `now_ms`. `partitions` is the partition count of every existing
    /// topic (what subscriptions resolve against).
    pub fn heartbeat(
        &mut self,
        request: Heartbeat,
        now_ms: u64,
        partitions: &BTreeMap<String, u32>,
    ) -> Result<HeartbeatAnswer, GroupError> {
        let member_id = match (request.member_epoch, &request.member_id) {
            (0, _) => self.join(&request, now_ms)?,
            (LEAVE_EPOCH | STATIC_LEAVE_EPOCH, Some(id)) => {
                return self.leave(id, request.member_epoch, now_ms, partitions);
            }
            (_, Some(id)) => {
                // A session that ended is over even if the timer has not reaped it yet.
                self.expire(now_ms, partitions);
                let member = self
                    .members
                    .get(id)
                    .ok_or_else(|| GroupError::UnknownMember(id.clone()))?;
                let epoch = request.member_epoch;
                let current = i64::from(member.member_epoch) == i64::from(epoch);
                // A lost answer: the member still at the previous epoch, owning nothing new.
                let lost_answer = i64::from(member.previous_epoch) == i64::from(epoch)
                    && request
                        .owned
                        .as_ref()
                        .is_some_and(|owned| owned.is_subset(&member.held));
                if !current && !lost_answer {
                    return Err(GroupError::FencedMemberEpoch {
                        current: member.member_epoch,
                        got: epoch,
                    });
                }
                id.clone()
            }
            (_, None) => return Err(GroupError::UnknownMember(String::new())),
        };
        let member = self
            .members
            .get_mut(&member_id)
            .expect("member just found or made");
        member.session_deadline_ms = now_ms + self.config.session_timeout_ms;
        let mut changed = false;
        if let Some(topics) = request.topics {
            changed |= member.topics != topics;
            member.topics = topics;
        }
        if let Some(owned) = &request.owned {
            // Released: held partitions the member no longer owns.
            member.held.retain(|tp| owned.contains(tp));
            member.revoking.retain(|tp| owned.contains(tp));
        }
        if changed || *partitions != self.target_partitions {
            self.bump(partitions);
        }
        self.reconcile(&member_id);
        self.check_invariant();
        let member = &self.members[&member_id];
        Ok(HeartbeatAnswer {
            member_id: member_id.clone(),
            member_epoch: member.member_epoch as i32,
            assignment: member.held.difference(&member.revoking).cloned().collect(),
        })
    }

    /// Removes members whose session ended before `now_ms`; returns their ids.
    pub fn expire(&mut self, now_ms: u64, partitions: &BTreeMap<String, u32>) -> Vec<String> {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.session_deadline_ms < now_ms)
            .map(|m| m.member_id.clone())
            .collect();
        for id in &gone {
            self.members.remove(id);
        }
        if !gone.is_empty() {
            self.bump(partitions);
        }
        gone
    }

    /// Whether `member_id` at `member_epoch` may commit an offset for `tp`: it must be the
    /// member's current epoch and the partition must be held (a partition being revoked counts:
    /// a member commits before it releases).
    pub fn check_commit(
        &self,
        member_id: &str,
        member_epoch: i32,
        tp: &TopicPartition,
    ) -> Result<(), GroupError> {
        let member = self
            .members
            .get(member_id)
            .ok_or_else(|| GroupError::UnknownMember(member_id.to_string()))?;
        if i64::from(member.member_epoch) != i64::from(member_epoch) {
            return Err(GroupError::FencedMemberEpoch {
                current: member.member_epoch,
                got: member_epoch,
            });
        }
        if !member.held.contains(tp) {
            return Err(GroupError::NotAssigned {
                topic: tp.0.clone(),
                partition: tp.1,
            });
        }
        Ok(())
    }

    fn join(&mut self, request: &Heartbeat, now_ms: u64) -> Result<String, GroupError> {
        // A static member coming back replaces its previous incarnation, keeping its
        // assignment and epoch: no rebalance.
        if let Some(instance) = &request.instance_id {
            let previous = self
                .members
                .values()
                .find(|m| m.instance_id.as_ref() == Some(instance))
                .map(|m| m.member_id.clone());
            if let Some(previous) = previous {
                let mut member = self.members.remove(&previous).expect("found above");
                let member_id = self.new_member_id();
                member.member_id = member_id.clone();
                member.session_deadline_ms = now_ms + self.config.session_timeout_ms;
                if let Some(target) = self.target.remove(&previous) {
                    self.target.insert(member_id.clone(), target);
                }
                self.members.insert(member_id.clone(), member);
                return Ok(member_id);
            }
        }
        if self.members.len() >= GROUP_MEMBERS_MAX {
            return Err(GroupError::GroupFull {
                max: GROUP_MEMBERS_MAX,
            });
        }
        let member_id = self.new_member_id();
        self.members.insert(
            member_id.clone(),
            Member {
                member_id: member_id.clone(),
                instance_id: request.instance_id.clone(),
                member_epoch: 0,
                previous_epoch: 0,
                topics: BTreeSet::new(),
                held: BTreeSet::new(),
                revoking: BTreeSet::new(),
                session_deadline_ms: now_ms + self.config.session_timeout_ms,
            },
        );
        Ok(member_id)
    }

    fn leave(
        &mut self,
        member_id: &str,
        epoch: i32,
        now_ms: u64,
        partitions: &BTreeMap<String, u32>,
    ) -> Result<HeartbeatAnswer, GroupError> {
        let member = self
            .members
            .get_mut(member_id)
            .ok_or_else(|| GroupError::UnknownMember(member_id.to_string()))?;
        if epoch == STATIC_LEAVE_EPOCH && member.instance_id.is_some() {
            // A static member shutting down for a restart keeps its assignment until its
            // session ends; its partitions are not consumed meanwhile.
            member.session_deadline_ms = member
                .session_deadline_ms
                .min(now_ms + self.config.session_timeout_ms);
        } else {
            self.members.remove(member_id);
            self.bump(partitions);
        }
        Ok(HeartbeatAnswer {
            member_id: member_id.to_string(),
            member_epoch: LEAVE_EPOCH,
            assignment: BTreeSet::new(),
        })
    }

    fn new_member_id(&mut self) -> String {
        self.next_member += 1;
        format!("m{:x}-{}", self.incarnation, self.next_member)
    }

    /// A new group epoch: the target is recomputed from the members' subscriptions, keeping
    /// what each holds where the assignor can.
    fn bump(&mut self, partitions: &BTreeMap<String, u32>) {
        self.group_epoch += 1;
        let specs: Vec<MemberSpec> = self
            .members
            .values()
            .map(|m| MemberSpec {
                member_id: m.member_id.clone(),
                topics: m.topics.clone(),
                owned: m.held.difference(&m.revoking).cloned().collect(),
            })
            .collect();
        self.target = self.config.assignor.assign(&specs, partitions);
        self.target_partitions = partitions.clone();
    }

    /// Moves one member toward its target: asks it to release what the target takes away;
    /// once nothing is left to release, advances its epoch and gives it what the target adds
    /// and nobody else holds.
    fn reconcile(&mut self, member_id: &str) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let held_elsewhere: BTreeSet<TopicPartition> = self
            .members
            .values()
            .filter(|m| m.member_id != member_id)
            .flat_map(|m| m.held.iter().cloned())
            .collect();
        let group_epoch = self.group_epoch;
        let member = self
            .members
            .get_mut(member_id)
            .expect("reconciling a member");
        member.revoking = member.held.difference(&target).cloned().collect();
        if !member.revoking.is_empty() {
            return;
        }
        if member.member_epoch != group_epoch {
            member.previous_epoch = member.member_epoch;
            member.member_epoch = group_epoch;
        }
        for tp in target.difference(&member.held.clone()) {
            if !held_elsewhere.contains(tp) {
                member.held.insert(tp.clone());
            }
        }
    }

    /// No partition is held by two members.
    fn check_invariant(&self) {
        let mut seen = BTreeSet::new();
        for member in self.members.values() {
            for tp in &member.held {
                assert!(
                    seen.insert(tp),
                    "group {}: {tp:?} held by two members",
                    self.group_id
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn topics(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
        list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn subscribe(names: &[&str]) -> Option<BTreeSet<String>> {
        Some(names.iter().map(|t| t.to_string()).collect())
    }

    /// A well-behaved client: reports what it owns, takes what it is given.
    #[derive(Debug, Clone)]
    struct Client {
        member_id: Option<String>,
        epoch: i32,
        instance_id: Option<String>,
        topics: BTreeSet<String>,
        owned: BTreeSet<TopicPartition>,
        /// When the last heartbeat succeeded: a client that has not heard from the coordinator
        /// for a session timeout gives its partitions up (Kafka's "partitions lost").
        last_ok: u64,
    }

    impl Client {
        fn new(topics: &[&str], instance_id: Option<&str>) -> Client {
            Client {
                member_id: None,
                epoch: 0,
                instance_id: instance_id.map(str::to_string),
                topics: subscribe(topics).unwrap(),
                owned: BTreeSet::new(),
                last_ok: 0,
            }
        }

        /// The client's own session timer.
        fn check_session(&mut self, now: u64, session_timeout_ms: u64) {
            if now >= self.last_ok + session_timeout_ms {
                self.owned.clear();
            }
        }

        /// Beats; on any refusal, drops everything and becomes a fresh joiner.
        fn beat_or_rejoin(
            &mut self,
            group: &mut Group,
            now: u64,
            partitions: &BTreeMap<String, u32>,
        ) {
            if self.beat(group, now, partitions).is_err() {
                let mut fresh = Client::new(&[], self.instance_id.as_deref());
                fresh.topics = self.topics.clone();
                *self = fresh;
            }
        }

        fn beat(
            &mut self,
            group: &mut Group,
            now: u64,
            partitions: &BTreeMap<String, u32>,
        ) -> Result<(), GroupError> {
            let answer = group.heartbeat(
                Heartbeat {
                    member_id: self.member_id.clone(),
                    member_epoch: self.epoch,
                    instance_id: self.instance_id.clone(),
                    topics: Some(self.topics.clone()),
                    owned: Some(self.owned.clone()),
                },
                now,
                partitions,
            )?;
            self.member_id = Some(answer.member_id);
            self.epoch = answer.member_epoch;
            self.owned = answer.assignment;
            self.last_ok = now;
            Ok(())
        }
    }

    fn settle(
        group: &mut Group,
        clients: &mut [Client],
        now: u64,
        partitions: &BTreeMap<String, u32>,
    ) {
        for _ in 0..6 {
            for client in clients.iter_mut() {
                client.beat(group, now, partitions).unwrap();
            }
        }
        assert!(group.is_stable(), "{group:#?}");
    }

    #[test]
    fn a_join_moves_partitions_only_after_their_owner_released_them() {
        let parts = topics(&[("t", 4)]);
        let mut group = Group::new("g", GroupConfig::default()).unwrap();
        let mut a = Client::new(&["t"], None);
        a.beat(&mut group, 0, &parts).unwrap();
        assert_eq!(a.owned.len(), 4, "alone, a takes everything");
        let mut b = Client::new(&["t"], None);
        b.beat(&mut group, 1, &parts).unwrap();
        assert!(b.owned.is_empty(), "b waits: a still holds the partitions");
        // a's next heartbeat asks it to give two up; it still holds them until it reports so.
        let before = a.owned.clone();
        a.beat(&mut group, 2, &parts).unwrap();
        assert_eq!(a.owned.len(), 2);
        b.beat(&mut group, 3, &parts).unwrap();
        assert!(b.owned.is_empty(), "a has not confirmed the release yet");
        // a's heartbeat after releasing: now b gets them.
        a.beat(&mut group, 4, &parts).unwrap();
        b.beat(&mut group, 5, &parts).unwrap();
        assert_eq!(b.owned.len(), 2);
        assert!(b.owned.is_subset(&before));
        assert!(group.is_stable());
    }

    #[test]
    fn stale_epochs_and_unknown_members_are_fenced() {
        let parts = topics(&[("t", 2)]);
        let mut group = Group::new("g", GroupConfig::default()).unwrap();
        let mut a = Client::new(&["t"], None);
        a.beat(&mut group, 0, &parts).unwrap();
        let stale = Heartbeat {
            member_id: a.member_id.clone(),
            member_epoch: a.epoch + 5,
            ..Heartbeat::default()
        };
        assert!(matches!(
            group.heartbeat(stale, 1, &parts),
            Err(GroupError::FencedMemberEpoch { .. })
        ));
        let unknown = Heartbeat {
            member_id: Some("nobody".into()),
            member_epoch: 3,
            ..Heartbeat::default()
        };
        assert!(matches!(
            group.heartbeat(unknown, 1, &parts),
            Err(GroupError::UnknownMember(_))
        ));
        let id = a.member_id.clone().unwrap();
        assert_eq!(group.check_commit(&id, a.epoch, &("t".into(), 0)), Ok(()));
        assert!(matches!(
            group.check_commit(&id, a.epoch - 1, &("t".into(), 0)),
            Err(GroupError::FencedMemberEpoch { .. })
        ));
        assert!(matches!(
            group.check_commit(&id, a.epoch, &("t".into(), 7)),
            Err(GroupError::NotAssigned { .. })
        ));
        assert_eq!(
            Group::new("", GroupConfig::default()),
            Err(GroupError::InvalidGroupId)
        );
    }

    #[test]
    fn an_expired_session_frees_the_members_partitions() {
        let parts = topics(&[("t", 4)]);
        let config = GroupConfig {
            session_timeout_ms: 100,
            ..GroupConfig::default()
        };
        let mut group = Group::new("g", config).unwrap();
        let mut clients = vec![Client::new(&["t"], None), Client::new(&["t"], None)];
        settle(&mut group, &mut clients, 0, &parts);
        // The second client dies; the first keeps beating.
        clients[0].beat(&mut group, 90, &parts).unwrap();
        assert_eq!(group.expire(150, &parts).len(), 1);
        let survivor = &mut clients[..1];
        settle(&mut group, survivor, 160, &parts);
        assert_eq!(survivor[0].owned.len(), 4);
    }

    #[test]
    fn a_static_member_restarting_gets_its_partitions_back_without_a_rebalance() {
        let parts = topics(&[("t", 6)]);
        let mut group = Group::new("g", GroupConfig::default()).unwrap();
        let mut clients = vec![
            Client::new(&["t"], Some("host-a")),
            Client::new(&["t"], Some("host-b")),
        ];
        settle(&mut group, &mut clients, 0, &parts);
        let epoch = group.group_epoch();
        let held = clients[1].owned.clone();
        // host-b restarts: a new process, same instance id.
        let mut restarted = Client::new(&["t"], Some("host-b"));
        restarted.beat(&mut group, 10, &parts).unwrap();
        assert_eq!(restarted.owned, held);
        assert_eq!(group.group_epoch(), epoch, "no rebalance");
        // The old incarnation is fenced.
        assert!(clients[1].beat(&mut group, 11, &parts).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Join(u8),
        Beat(usize),
        /// A heartbeat that reaches the coordinator but whose answer is lost.
        LostAnswer(usize),
        Leave(usize),
        Crash(usize),
        Resubscribe(usize, u8),
        AddPartitions(usize, u32),
        Tick(u64),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            prop_oneof![
                2 => (0u8..4).prop_map(Op::Join),
                8 => any::<usize>().prop_map(Op::Beat),
                1 => any::<usize>().prop_map(Op::LostAnswer),
                1 => any::<usize>().prop_map(Op::Leave),
                1 => any::<usize>().prop_map(Op::Crash),
                1 => (any::<usize>(), 0u8..4).prop_map(|(i, s)| Op::Resubscribe(i, s)),
                1 => (0usize..3, 1u32..3).prop_map(|(t, n)| Op::AddPartitions(t, n)),
                2 => (1u64..60).prop_map(Op::Tick),
            ],
            1..120,
        )
    }

    const TOPICS: [&str; 3] = ["a", "b", "c"];

    fn subscription(which: u8) -> BTreeSet<String> {
        match which {
            0 => subscribe(&["a"]),
            1 => subscribe(&["a", "b"]),
            2 => subscribe(&["b", "c"]),
            _ => subscribe(&TOPICS),
        }
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Random joins, heartbeats, lost answers, leaves, crashes, subscription and topic
        /// changes and time: no partition is ever owned by two live clients, and once the
        /// churn stops the group settles with every subscribed partition owned.
        #[test]
        fn no_partition_is_ever_owned_twice_and_the_group_settles(ops in ops()) {
            let config = GroupConfig { session_timeout_ms: 100, ..GroupConfig::default() };
            let mut group = Group::new("g", config).unwrap();
            let mut partitions = topics(&[("a", 3), ("b", 2), ("c", 4)]);
            let mut clients: Vec<Client> = Vec::new();
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Join(s) => {
                        let mut client = Client::new(&[], None);
                        client.topics = subscription(s);
                        if client.beat(&mut group, now, &partitions).is_ok() {
                            clients.push(client);
                        }
                    }
                    Op::Beat(i) if !clients.is_empty() => {
                        let i = i % clients.len();
                        // Fenced or expired: the client drops everything and rejoins.
                        clients[i].beat_or_rejoin(&mut group, now, &partitions);
                    }
                    Op::LostAnswer(i) if !clients.is_empty() => {
                        let i = i % clients.len();
                        let mut copy = clients[i].clone();
                        let _ = copy.beat(&mut group, now, &partitions);
                        // The client never saw the answer (keeps its old state), but it
                        // released nothing it still owns, so nothing it owns was reassigned.
                    }
                    Op::Leave(i) if !clients.is_empty() => {
                        let client = clients.remove(i % clients.len());
                        if let Some(id) = client.member_id {
                            let _ = group.heartbeat(
                                Heartbeat { member_id: Some(id), member_epoch: LEAVE_EPOCH, ..Heartbeat::default() },
                                now,
                                &partitions,
                            );
                        }
                    }
                    Op::Crash(i) if !clients.is_empty() => {
                        // The process is gone, its partitions with it; its session will end.
                        clients.remove(i % clients.len());
                    }
                    Op::Resubscribe(i, s) if !clients.is_empty() => {
                        let i = i % clients.len();
                        clients[i].topics = subscription(s);
                    }
                    Op::AddPartitions(t, n) => {
                        *partitions.get_mut(TOPICS[t]).unwrap() += n;
                    }
                    Op::Tick(ms) => {
                        now += ms;
                        for client in clients.iter_mut() {
                            client.check_session(now, config.session_timeout_ms);
                        }
                        group.expire(now, &partitions);
                    }
                    _ => {}
                }
                // The real property: what live clients own never overlaps. (A crashed client
                // owns nothing any more; a fenced one dropped what it had.)
                let mut seen = BTreeSet::new();
                for client in &clients {
                    for tp in &client.owned {
                        prop_assert!(seen.insert(tp.clone()), "{tp:?} owned twice");
                    }
                }
            }
            // Churn stops: the dead expire, the living settle.
            now += 1000;
            for client in clients.iter_mut() {
                client.check_session(now, config.session_timeout_ms);
            }
            group.expire(now, &partitions);
            for _ in 0..8 {
                for client in clients.iter_mut() {
                    client.beat_or_rejoin(&mut group, now, &partitions);
                }
            }
            prop_assert!(group.is_stable());
            let owned: BTreeSet<TopicPartition> =
                clients.iter().flat_map(|c| c.owned.iter().cloned()).collect();
            let subscribed: BTreeSet<TopicPartition> = clients
                .iter()
                .flat_map(|c| c.topics.iter())
                .flat_map(|t| (0..partitions[t]).map(move |p| (t.clone(), p)))
                .collect();
            prop_assert_eq!(owned, subscribed);
        }
    }
}
