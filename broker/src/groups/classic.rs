//! One classic consumer group (Kafka's JoinGroup / SyncGroup protocol), pure: the state
//! machine Kafka clients that predate KIP-848 (and the Kafka listener's clients by default)
//! speak, without I/O or clocks (time comes in as `now_ms`).
//!
//! - **Rebalance.** A join, a leave, an expired session or a changed subscription moves the
//!   group to `PreparingRebalance`: every member must join again. The join phase ends when
//!   every member has (or at the rebalance deadline, without those that did not): the
//!   generation increases, a protocol every member supports is chosen, a leader is picked
//!   (the previous one if it rejoined), and the group waits for the leader's assignment
//!   (`CompletingRebalance`). The leader computes it client-side and sends it with its
//!   SyncGroup; once it is durable the group is `Stable` and every member gets its part.
//! - **Fencing.** Heartbeats, syncs and commits carry the generation; another generation is
//!   `IllegalGeneration`. A static member (`instance_id`) that rejoins with a new member id
//!   replaces its old id, and the old id is fenced (`FencedInstanceId`).
//! - **New members** get an id first (`MemberIdRequired`, JoinGroup v4+) and join with it, so a
//!   client that loses the answer does not leave a ghost member for a whole session.
//!
//! Invariant (asserted after every change): the leader, when there is one, is a member, and
//! `Stable` or `CompletingRebalance` groups have a protocol every member supports.

use std::collections::BTreeMap;

use crate::limits::{GROUP_ID_BYTES_MAX, GROUP_MEMBERS_MAX};
use sluice_protocol::native::ErrorCode;

/// A JoinGroup request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinRequest {
    pub group: String,
    /// Empty for a new member.
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: String,
    /// (name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Vec<u8>)>,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    pub client_id: String,
    pub client_host: String,
    /// JoinGroup v4+: a new member first gets its id (`MemberIdRequired`) and joins with it.
    pub require_known_member_id: bool,
}

/// A member as the leader sees it in its JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResponse {
    pub error: ErrorCode,
    /// -1 on error.
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata for the chosen protocol: the leader's answer only.
    pub members: Vec<JoinedMember>,
}

impl JoinResponse {
    pub fn refused(error: ErrorCode, member_id: &str) -> JoinResponse {
        JoinResponse {
            error,
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

/// A SyncGroup request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncRequest {
    pub group: String,
    pub generation_id: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// (member id, assignment): the leader's, empty from the others.
    pub assignments: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResponse {
    pub error: ErrorCode,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Vec<u8>,
}

impl SyncResponse {
    pub fn refused(error: ErrorCode) -> SyncResponse {
        SyncResponse {
            error,
            protocol_type: None,
            protocol_name: None,
            assignment: Vec::new(),
        }
    }
}

/// A classic Heartbeat request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClassicHeartbeat {
    pub group: String,
    pub generation_id: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
}

/// A LeaveGroup request: (member id, instance id) of each leaving member (v3+ batches them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaveRequest {
    pub group: String,
    pub members: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveResponse {
    pub error: ErrorCode,
    pub members: Vec<(String, Option<String>, ErrorCode)>,
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicMemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Vec<u8>,
    pub assignment: Vec<u8>,
}

/// A group as Kafka's DescribeGroups shows it (KIP-848 groups too, without the bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicDescription {
    /// `Empty`, `PreparingRebalance`, `CompletingRebalance` or `Stable`.
    pub state: String,
    pub protocol_type: String,
    pub protocol_name: String,
    pub members: Vec<ClassicMemberDescription>,
}

/// Where the group is in its rebalance cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::PreparingRebalance => "PreparingRebalance",
            Phase::CompletingRebalance => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    pub protocols: Vec<(String, Vec<u8>)>,
    pub assignment: Vec<u8>,
    session_deadline_ms: u64,
    /// Joined in the current join phase (its JoinGroup waits for the phase to end).
    joined: bool,
}

impl ClassicMember {
    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(name, _)| name == protocol)
    }

    fn metadata(&self, protocol: &str) -> Vec<u8> {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// What a join did, for the coordinator: answer now, or wait for the join phase to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinStep {
    Answer(JoinResponse),
    /// The member is in the join phase of `generation + 1`: wait for the generation to pass
    /// `generation` and ask [`ClassicGroup::join_answer`].
    Wait {
        member_id: String,
        generation: i32,
    },
}

/// What a sync did: answer now, or wait until the assignment of the generation is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncStep {
    Answer(SyncResponse),
    /// The leader's assignment was taken: persist the group, then call
    /// [`ClassicGroup::assignment_durable`].
    Persist,
    /// Wait for the leader's assignment to become durable, then ask
    /// [`ClassicGroup::sync_answer`].
    Wait,
}

/// What is persisted of a classic group (when it is `Stable` or `Empty`).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ClassicSnapshot {
    pub group_id: String,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub next_member: u64,
    pub members: Vec<ClassicMemberSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ClassicMemberSnapshot {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    pub protocols: Vec<(String, Vec<u8>)>,
    pub assignment: Vec<u8>,
}

/// One classic group's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicGroup {
    group_id: String,
    phase: Phase,
    generation_id: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, ClassicMember>,
    /// Ids handed out by `MemberIdRequired`, not yet joined with: id → deadline.
    pending: BTreeMap<String, u64>,
    /// When the current join phase (or the wait for the leader's assignment) gives up.
    rebalance_deadline_ms: u64,
    /// The leader's assignment of the current generation was taken and is being persisted.
    assigned: bool,
    next_member: u64,
    incarnation: u64,
}

impl ClassicGroup {
    pub fn new(group_id: &str) -> Result<ClassicGroup, ErrorCode> {
        if group_id.is_empty() || group_id.len() > GROUP_ID_BYTES_MAX {
            return Err(ErrorCode::InvalidGroupId);
        }
        Ok(ClassicGroup {
            group_id: group_id.to_string(),
            phase: Phase::Empty,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            rebalance_deadline_ms: 0,
            assigned: false,
            next_member: 0,
            incarnation: 0,
        })
    }

    /// Sets the part of member ids that tells this coordinator incarnation's apart.
    pub fn set_incarnation(&mut self, incarnation: u64) {
        self.incarnation = incarnation;
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn generation(&self) -> i32 {
        self.generation_id
    }

    pub fn members(&self) -> &BTreeMap<String, ClassicMember> {
        &self.members
    }

    pub fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    pub fn protocol_name(&self) -> Option<&str> {
        self.protocol_name.as_deref()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member += 1;
        format!(
            "{}-{:x}-{}",
            if client_id.is_empty() {
                "member"
            } else {
                client_id
            },
            self.incarnation,
            self.next_member
        )
    }

    /// A JoinGroup. `session_bounds` are the coordinator's (min, max) session timeouts.
    pub fn join(
        &mut self,
        request: &JoinRequest,
        now_ms: u64,
        session_bounds: (u64, u64),
    ) -> JoinStep {
        let refused = |error| JoinStep::Answer(JoinResponse::refused(error, &request.member_id));
        let session = u64::from(request.session_timeout_ms);
        if session < session_bounds.0 || session > session_bounds.1 {
            return refused(ErrorCode::InvalidSessionTimeout);
        }
        if request.protocol_type.is_empty() || request.protocols.is_empty() {
            return refused(ErrorCode::InconsistentGroupProtocol);
        }
        if !self.members.is_empty() {
            let same_type = self.protocol_type.as_deref() == Some(request.protocol_type.as_str());
            // Members other than this one (a rejoining member may change its protocols).
            let others: Vec<&ClassicMember> = self
                .members
                .values()
                .filter(|m| m.member_id != request.member_id)
                .collect();
            let common = request
                .protocols
                .iter()
                .any(|(name, _)| others.iter().all(|m| m.supports(name)));
            if !same_type || !common {
                return refused(ErrorCode::InconsistentGroupProtocol);
            }
        }
        let step = if request.member_id.is_empty() {
            self.join_new(request, now_ms)
        } else {
            self.join_known(request, now_ms)
        };
        self.check();
        step
    }

    fn join_new(&mut self, request: &JoinRequest, now_ms: u64) -> JoinStep {
        if let Some(instance) = &request.instance_id {
            let previous = self
                .members
                .values()
                .find(|m| m.instance_id.as_ref() == Some(instance))
                .map(|m| m.member_id.clone());
            if let Some(previous) = previous {
                return self.replace_static(&previous, request, now_ms);
            }
        }
        if self.members.len() + self.pending.len() >= GROUP_MEMBERS_MAX {
            return JoinStep::Answer(JoinResponse::refused(
                ErrorCode::GroupMaxSizeReached,
                &request.member_id,
            ));
        }
        let member_id = self.new_member_id(&request.client_id);
        if request.require_known_member_id && request.instance_id.is_none() {
            self.pending.insert(
                member_id.clone(),
                now_ms + u64::from(request.session_timeout_ms),
            );
            return JoinStep::Answer(JoinResponse::refused(
                ErrorCode::MemberIdRequired,
                &member_id,
            ));
        }
        self.add_member(member_id, request, now_ms)
    }

    fn join_known(&mut self, request: &JoinRequest, now_ms: u64) -> JoinStep {
        if self.pending.remove(&request.member_id).is_some() {
            return self.add_member(request.member_id.clone(), request, now_ms);
        }
        let Some(member) = self.members.get(&request.member_id) else {
            return JoinStep::Answer(JoinResponse::refused(
                ErrorCode::UnknownMemberId,
                &request.member_id,
            ));
        };
        if request.instance_id.is_some() && member.instance_id != request.instance_id {
            return JoinStep::Answer(JoinResponse::refused(
                ErrorCode::FencedInstanceId,
                &request.member_id,
            ));
        }
        let changed = member.protocols != request.protocols;
        let is_leader = self.leader.as_deref() == Some(request.member_id.as_str());
        let Some(member) = self.members.get_mut(&request.member_id) else {
            unreachable!("looked up above");
        };
        member.session_deadline_ms = now_ms + u64::from(request.session_timeout_ms);
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        member.protocols = request.protocols.clone();
        match self.phase {
            Phase::PreparingRebalance => {
                member.joined = true;
                self.wait_or_complete(&request.member_id, now_ms)
            }
            // The member lost its answer: the same generation again, unless something changed
            // (then everyone joins again).
            Phase::CompletingRebalance | Phase::Stable if !changed && !is_leader => {
                JoinStep::Answer(self.join_answer_of(&request.member_id))
            }
            Phase::CompletingRebalance | Phase::Stable => {
                self.prepare_rebalance(now_ms, Some(&request.member_id));
                self.wait_or_complete(&request.member_id, now_ms)
            }
            Phase::Empty => unreachable!("an empty group has no members"),
        }
    }

    /// A static member back with a new member id: it takes its old place (and assignment); the
    /// old id is fenced. A stable group with the same protocols does not rebalance.
    fn replace_static(&mut self, previous: &str, request: &JoinRequest, now_ms: u64) -> JoinStep {
        let Some(mut member) = self.members.remove(previous) else {
            return JoinStep::Answer(JoinResponse::refused(
                ErrorCode::UnknownMemberId,
                &request.member_id,
            ));
        };
        let member_id = self.new_member_id(&request.client_id);
        let changed = member.protocols != request.protocols;
        member.member_id = member_id.clone();
        member.client_id = request.client_id.clone();
        member.client_host = request.client_host.clone();
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        member.session_deadline_ms = now_ms + u64::from(request.session_timeout_ms);
        member.protocols = request.protocols.clone();
        self.members.insert(member_id.clone(), member);
        if self.leader.as_deref() == Some(previous) {
            self.leader = Some(member_id.clone());
        }
        match self.phase {
            Phase::Stable if !changed => JoinStep::Answer(self.join_answer_of(&member_id)),
            Phase::PreparingRebalance => {
                self.mark_joined(&member_id);
                self.wait_or_complete(&member_id, now_ms)
            }
            _ => {
                self.prepare_rebalance(now_ms, Some(&member_id));
                self.wait_or_complete(&member_id, now_ms)
            }
        }
    }

    fn add_member(&mut self, member_id: String, request: &JoinRequest, now_ms: u64) -> JoinStep {
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        self.members.insert(
            member_id.clone(),
            ClassicMember {
                member_id: member_id.clone(),
                instance_id: request.instance_id.clone(),
                client_id: request.client_id.clone(),
                client_host: request.client_host.clone(),
                session_timeout_ms: request.session_timeout_ms,
                rebalance_timeout_ms: request.rebalance_timeout_ms,
                protocols: request.protocols.clone(),
                assignment: Vec::new(),
                session_deadline_ms: now_ms + u64::from(request.session_timeout_ms),
                joined: true,
            },
        );
        if self.phase != Phase::PreparingRebalance {
            self.prepare_rebalance(now_ms, Some(&member_id));
        } else {
            self.extend_rebalance(now_ms);
        }
        self.wait_or_complete(&member_id, now_ms)
    }

    fn mark_joined(&mut self, member_id: &str) {
        if let Some(member) = self.members.get_mut(member_id) {
            member.joined = true;
        }
    }

    fn wait_or_complete(&mut self, member_id: &str, now_ms: u64) -> JoinStep {
        let generation = self.generation_id;
        self.maybe_complete_join(now_ms);
        JoinStep::Wait {
            member_id: member_id.to_string(),
            generation,
        }
    }

    /// Starts a join phase: every member must join again (but `joining`, joining now).
    fn prepare_rebalance(&mut self, now_ms: u64, joining: Option<&str>) {
        self.phase = Phase::PreparingRebalance;
        self.assigned = false;
        for member in self.members.values_mut() {
            member.joined = Some(member.member_id.as_str()) == joining;
        }
        self.rebalance_deadline_ms = 0;
        self.extend_rebalance(now_ms);
    }

    fn extend_rebalance(&mut self, now_ms: u64) {
        let timeout = self
            .members
            .values()
            .map(|m| u64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0);
        self.rebalance_deadline_ms = self.rebalance_deadline_ms.max(now_ms + timeout);
    }

    /// Ends the join phase if every member joined (and no new member is on its way).
    fn maybe_complete_join(&mut self, now_ms: u64) -> bool {
        if self.phase == Phase::PreparingRebalance
            && self.pending.is_empty()
            && self.members.values().all(|m| m.joined)
        {
            self.complete_join(now_ms);
            return true;
        }
        false
    }

    /// Ends the join phase: members that did not join are removed, the generation advances.
    fn complete_join(&mut self, now_ms: u64) {
        self.members.retain(|_, m| m.joined);
        self.generation_id = self.generation_id.wrapping_add(1).max(1);
        self.assigned = false;
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.protocol_type = None;
            self.protocol_name = None;
            self.leader = None;
            return;
        }
        self.protocol_name = Some(self.select_protocol());
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        for member in self.members.values_mut() {
            member.assignment.clear();
            member.session_deadline_ms = now_ms + u64::from(member.session_timeout_ms);
        }
        self.phase = Phase::CompletingRebalance;
        self.rebalance_deadline_ms = now_ms
            + self
                .members
                .values()
                .map(|m| u64::from(m.rebalance_timeout_ms))
                .max()
                .unwrap_or(0);
    }

    /// The protocol every member supports that most members prefer (Kafka's vote: each member
    /// votes for its first choice among the candidates; ties go to the first candidate).
    fn select_protocol(&self) -> String {
        let first = self.members.values().next().expect("members");
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| self.members.values().all(|m| m.supports(n)))
            .collect();
        let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(&n))
            {
                *votes.entry(name).or_default() += 1;
            }
        }
        let best = candidates
            .iter()
            .max_by_key(|c| (votes.get(*c).copied().unwrap_or(0), std::cmp::Reverse(*c)))
            .expect("a join is refused without a common protocol");
        (*best).clone()
    }

    /// The answer of a member waiting since `generation`: `None` while it must still wait.
    pub fn join_answer(&self, member_id: &str, generation: i32) -> Option<JoinResponse> {
        if self.phase == Phase::PreparingRebalance && self.generation_id == generation {
            return if self.members.contains_key(member_id) {
                None
            } else {
                Some(JoinResponse::refused(ErrorCode::UnknownMemberId, member_id))
            };
        }
        if !self.members.contains_key(member_id) {
            return Some(JoinResponse::refused(ErrorCode::UnknownMemberId, member_id));
        }
        if self.phase == Phase::PreparingRebalance {
            // A later join phase began: join again.
            return Some(JoinResponse::refused(
                ErrorCode::RebalanceInProgress,
                member_id,
            ));
        }
        Some(self.join_answer_of(member_id))
    }

    fn join_answer_of(&self, member_id: &str) -> JoinResponse {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        JoinResponse {
            error: ErrorCode::None,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            members: if leader == member_id {
                self.members
                    .values()
                    .map(|m| JoinedMember {
                        member_id: m.member_id.clone(),
                        instance_id: m.instance_id.clone(),
                        metadata: m.metadata(&protocol),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            leader,
            member_id: member_id.to_string(),
        }
    }

    fn validate(
        &self,
        member_id: &str,
        instance_id: &Option<String>,
        generation_id: i32,
    ) -> Result<&ClassicMember, ErrorCode> {
        let Some(member) = self.members.get(member_id) else {
            // An old id of a static member that rejoined since: fenced.
            let replaced = instance_id.as_ref().is_some_and(|i| {
                self.members
                    .values()
                    .any(|m| m.instance_id.as_ref() == Some(i))
            });
            return Err(if replaced {
                ErrorCode::FencedInstanceId
            } else {
                ErrorCode::UnknownMemberId
            });
        };
        if instance_id.is_some() && member.instance_id != *instance_id {
            return Err(ErrorCode::FencedInstanceId);
        }
        if generation_id != self.generation_id {
            return Err(ErrorCode::IllegalGeneration);
        }
        Ok(member)
    }

    /// A SyncGroup.
    pub fn sync(&mut self, request: &SyncRequest, now_ms: u64) -> SyncStep {
        let refused = |error| SyncStep::Answer(SyncResponse::refused(error));
        if let Err(error) = self.validate(
            &request.member_id,
            &request.instance_id,
            request.generation_id,
        ) {
            return refused(error);
        }
        let mismatch = |asked: &Option<String>, ours: &Option<String>| {
            asked.as_ref().is_some_and(|a| Some(a) != ours.as_ref())
        };
        if mismatch(&request.protocol_type, &self.protocol_type)
            || mismatch(&request.protocol_name, &self.protocol_name)
        {
            return refused(ErrorCode::InconsistentGroupProtocol);
        }
        if let Some(member) = self.members.get_mut(&request.member_id) {
            member.session_deadline_ms = now_ms + u64::from(member.session_timeout_ms);
        }
        match self.phase {
            Phase::PreparingRebalance => refused(ErrorCode::RebalanceInProgress),
            Phase::Stable => SyncStep::Answer(self.sync_answer_of(&request.member_id)),
            Phase::CompletingRebalance => {
                let leads = self.leader.as_deref() == Some(request.member_id.as_str());
                if leads && !self.assigned {
                    let given: BTreeMap<&String, &Vec<u8>> =
                        request.assignments.iter().map(|(m, a)| (m, a)).collect();
                    for member in self.members.values_mut() {
                        member.assignment = given
                            .get(&member.member_id)
                            .map(|a| (*a).clone())
                            .unwrap_or_default();
                    }
                    self.assigned = true;
                    SyncStep::Persist
                } else {
                    SyncStep::Wait
                }
            }
            Phase::Empty => refused(ErrorCode::UnknownMemberId),
        }
    }

    /// The leader's assignment of `generation` is durable: the group is stable.
    pub fn assignment_durable(&mut self, generation: i32) {
        if self.phase == Phase::CompletingRebalance
            && self.generation_id == generation
            && self.assigned
        {
            self.phase = Phase::Stable;
        }
        self.check();
    }

    /// The answer of a member waiting for its assignment: `None` while it must still wait.
    pub fn sync_answer(&self, member_id: &str, generation: i32) -> Option<SyncResponse> {
        if !self.members.contains_key(member_id) {
            return Some(SyncResponse::refused(ErrorCode::UnknownMemberId));
        }
        if self.generation_id != generation {
            return Some(SyncResponse::refused(ErrorCode::IllegalGeneration));
        }
        match self.phase {
            Phase::Stable => Some(self.sync_answer_of(member_id)),
            Phase::CompletingRebalance => None,
            _ => Some(SyncResponse::refused(ErrorCode::RebalanceInProgress)),
        }
    }

    fn sync_answer_of(&self, member_id: &str) -> SyncResponse {
        SyncResponse {
            error: ErrorCode::None,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    /// A Heartbeat: extends the member's session; `RebalanceInProgress` asks it to rejoin.
    pub fn heartbeat(&mut self, request: &ClassicHeartbeat, now_ms: u64) -> ErrorCode {
        if self.phase == Phase::Empty {
            return ErrorCode::UnknownMemberId;
        }
        if let Err(error) = self.validate(
            &request.member_id,
            &request.instance_id,
            request.generation_id,
        ) {
            return error;
        }
        if let Some(member) = self.members.get_mut(&request.member_id) {
            member.session_deadline_ms = now_ms + u64::from(member.session_timeout_ms);
        }
        match self.phase {
            Phase::PreparingRebalance => ErrorCode::RebalanceInProgress,
            _ => ErrorCode::None,
        }
    }

    /// A LeaveGroup.
    pub fn leave(&mut self, members: &[(String, Option<String>)], now_ms: u64) -> LeaveResponse {
        let mut results = Vec::with_capacity(members.len());
        let mut left = false;
        for (member_id, instance_id) in members {
            // A static member may leave by its instance id alone.
            let id = if member_id.is_empty() {
                instance_id.as_ref().and_then(|i| {
                    self.members
                        .values()
                        .find(|m| m.instance_id.as_ref() == Some(i))
                        .map(|m| m.member_id.clone())
                })
            } else {
                Some(member_id.clone())
            };
            let known = id.and_then(|id| self.members.get(&id)).map(|m| {
                let fenced = instance_id.is_some() && m.instance_id != *instance_id;
                (m.member_id.clone(), fenced)
            });
            let error = match known {
                None if self.pending.remove(member_id).is_some() => ErrorCode::None,
                None => ErrorCode::UnknownMemberId,
                Some((_, true)) => ErrorCode::FencedInstanceId,
                Some((id, false)) => {
                    self.members.remove(&id);
                    left = true;
                    ErrorCode::None
                }
            };
            results.push((member_id.clone(), instance_id.clone(), error));
        }
        if left {
            self.members_changed(now_ms);
        }
        self.check();
        LeaveResponse {
            error: ErrorCode::None,
            members: results,
        }
    }

    /// After members were removed: a join phase that may now be complete ends; otherwise
    /// everyone joins again.
    fn members_changed(&mut self, now_ms: u64) {
        match self.phase {
            Phase::PreparingRebalance => {
                self.maybe_complete_join(now_ms);
            }
            _ if self.members.is_empty() => self.complete_join_empty(),
            _ => self.prepare_rebalance(now_ms, None),
        }
    }

    fn complete_join_empty(&mut self) {
        self.generation_id = self.generation_id.wrapping_add(1).max(1);
        self.phase = Phase::Empty;
        self.protocol_type = None;
        self.protocol_name = None;
        self.leader = None;
        self.assigned = false;
    }

    /// Time passes: ids handed out and never used expire, a join phase ends at its deadline,
    /// a leader that does not assign in time starts another, sessions end. Returns whether
    /// anything changed (waiters should look again).
    pub fn tick(&mut self, now_ms: u64) -> bool {
        let before = (
            self.phase,
            self.generation_id,
            self.members.len(),
            self.pending.len(),
        );
        self.pending.retain(|_, deadline| *deadline >= now_ms);
        match self.phase {
            Phase::PreparingRebalance if now_ms >= self.rebalance_deadline_ms => {
                self.pending.clear();
                self.complete_join(now_ms);
            }
            Phase::PreparingRebalance => {
                self.maybe_complete_join(now_ms);
            }
            Phase::CompletingRebalance
                if !self.assigned && now_ms >= self.rebalance_deadline_ms =>
            {
                // The leader did not send its assignment in time: members that are not
                // heartbeating go at the next step, everyone joins again.
                self.prepare_rebalance(now_ms, None);
            }
            Phase::CompletingRebalance | Phase::Stable => {
                let before = self.members.len();
                self.members.retain(|_, m| m.session_deadline_ms >= now_ms);
                if self.members.len() != before {
                    self.members_changed(now_ms);
                }
            }
            _ => {}
        }
        self.check();
        before
            != (
                self.phase,
                self.generation_id,
                self.members.len(),
                self.pending.len(),
            )
    }

    /// Whether `member_id` at `generation_id` may commit offsets (Kafka's rule: during the join
    /// phase members still commit what they consumed, at their generation; while the leader's
    /// assignment is awaited nobody does).
    pub fn check_commit(&self, member_id: &str, generation_id: i32) -> Result<(), ErrorCode> {
        if self.phase == Phase::CompletingRebalance {
            return Err(ErrorCode::RebalanceInProgress);
        }
        if !self.members.contains_key(member_id) {
            return Err(ErrorCode::UnknownMemberId);
        }
        if generation_id != self.generation_id {
            return Err(ErrorCode::IllegalGeneration);
        }
        Ok(())
    }

    /// The leader's assignment of `generation` could not be made durable: everyone joins
    /// again.
    pub fn assignment_failed(&mut self, generation: i32, now_ms: u64) {
        if self.phase == Phase::CompletingRebalance && self.generation_id == generation {
            self.prepare_rebalance(now_ms, None);
        }
        self.check();
    }

    /// The persisted form, when the group is at rest (`Stable`, `Empty`, or its assignment
    /// taken and on its way to the log); `None` in the middle of a rebalance.
    pub fn snapshot(&self) -> Option<ClassicSnapshot> {
        let at_rest = matches!(self.phase, Phase::Stable | Phase::Empty)
            || (self.phase == Phase::CompletingRebalance && self.assigned);
        at_rest.then(|| ClassicSnapshot {
            group_id: self.group_id.clone(),
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone(),
            next_member: self.next_member,
            members: self
                .members
                .values()
                .map(|m| ClassicMemberSnapshot {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocols: m.protocols.clone(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// A group read back from the log: `Stable` with its members (with fresh sessions), or
    /// `Empty`.
    pub fn restore(snapshot: ClassicSnapshot, now_ms: u64) -> Result<ClassicGroup, ErrorCode> {
        let mut group = ClassicGroup::new(&snapshot.group_id)?;
        group.generation_id = snapshot.generation_id;
        group.next_member = snapshot.next_member;
        group.members = snapshot
            .members
            .into_iter()
            .map(|m| {
                (
                    m.member_id.clone(),
                    ClassicMember {
                        member_id: m.member_id,
                        instance_id: m.instance_id,
                        client_id: m.client_id,
                        client_host: m.client_host,
                        session_timeout_ms: m.session_timeout_ms,
                        rebalance_timeout_ms: m.rebalance_timeout_ms,
                        protocols: m.protocols,
                        assignment: m.assignment,
                        session_deadline_ms: now_ms + u64::from(m.session_timeout_ms),
                        joined: false,
                    },
                )
            })
            .collect();
        if !group.members.is_empty() {
            group.phase = Phase::Stable;
            group.protocol_type = snapshot.protocol_type;
            group.protocol_name = snapshot.protocol_name;
            group.leader = snapshot
                .leader
                .filter(|l| group.members.contains_key(l))
                .or_else(|| group.members.keys().next().cloned());
        }
        group.check();
        Ok(group)
    }

    /// The group as DescribeGroups shows it.
    pub fn describe(&self) -> ClassicDescription {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        ClassicDescription {
            state: self.phase.name().to_string(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol_name: protocol.clone(),
            members: self
                .members
                .values()
                .map(|m| ClassicMemberDescription {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    fn check(&self) {
        if let Some(leader) = &self.leader {
            assert!(
                self.members.contains_key(leader) || self.phase == Phase::PreparingRebalance,
                "classic group {}: leader {leader} is not a member",
                self.group_id
            );
        }
        if matches!(self.phase, Phase::Stable | Phase::CompletingRebalance) {
            let protocol = self.protocol_name.as_deref().unwrap_or_default();
            assert!(
                self.members.values().all(|m| m.supports(protocol)),
                "classic group {}: a member does not support {protocol}",
                self.group_id
            );
        }
        match self.phase {
            Phase::Empty => assert!(
                self.members.is_empty(),
                "classic group {}: empty with members",
                self.group_id
            ),
            Phase::Stable | Phase::CompletingRebalance => assert!(
                !self.members.is_empty(),
                "classic group {}: {:?} without members",
                self.group_id,
                self.phase
            ),
            // Possibly no member yet: new members with ids handed out are on their way.
            Phase::PreparingRebalance => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BOUNDS: (u64, u64) = (100, 60_000);

    fn join(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            group: "g".into(),
            member_id: member_id.into(),
            instance_id: None,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), p.as_bytes().to_vec()))
                .collect(),
            session_timeout_ms: 1_000,
            rebalance_timeout_ms: 5_000,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            require_known_member_id: true,
        }
    }

    /// Joins a new member in two steps; returns its id and its step.
    fn join_new(g: &mut ClassicGroup, now: u64) -> (String, JoinStep) {
        let JoinStep::Answer(first) = g.join(&join("", &["range"]), now, BOUNDS) else {
            panic!("a new member gets its id first");
        };
        assert_eq!(first.error, ErrorCode::MemberIdRequired);
        let step = g.join(&join(&first.member_id, &["range"]), now, BOUNDS);
        (first.member_id, step)
    }

    fn answer(g: &ClassicGroup, step: &JoinStep) -> Option<JoinResponse> {
        match step {
            JoinStep::Answer(a) => Some(a.clone()),
            JoinStep::Wait {
                member_id,
                generation,
            } => g.join_answer(member_id, *generation),
        }
    }

    fn sync(member_id: &str, generation: i32, assignments: &[(&str, &[u8])]) -> SyncRequest {
        SyncRequest {
            group: "g".into(),
            generation_id: generation,
            member_id: member_id.into(),
            instance_id: None,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            assignments: assignments
                .iter()
                .map(|(m, a)| (m.to_string(), a.to_vec()))
                .collect(),
        }
    }

    fn heartbeat(member_id: &str, generation: i32) -> ClassicHeartbeat {
        ClassicHeartbeat {
            group: "g".into(),
            generation_id: generation,
            member_id: member_id.into(),
            instance_id: None,
        }
    }

    /// A group of one stable member `a` at generation 1.
    fn stable_one() -> (ClassicGroup, String) {
        let mut g = ClassicGroup::new("g").unwrap();
        let (a, step) = join_new(&mut g, 0);
        let joined = answer(&g, &step).expect("a lone member completes the join phase");
        assert_eq!(joined.generation_id, 1);
        assert_eq!(joined.leader, a);
        assert_eq!(joined.members.len(), 1);
        assert_eq!(g.sync(&sync(&a, 1, &[(&a, b"A")]), 0), SyncStep::Persist);
        assert!(g.snapshot().is_some(), "an assigned group persists");
        g.assignment_durable(1);
        assert_eq!(g.phase(), Phase::Stable);
        assert_eq!(g.sync_answer(&a, 1).unwrap().assignment, b"A");
        (g, a)
    }

    #[test]
    fn a_second_member_makes_everyone_join_again_and_the_leader_assigns() {
        let (mut g, a) = stable_one();
        let (b, b_step) = join_new(&mut g, 10);
        assert_eq!(g.phase(), Phase::PreparingRebalance);
        assert!(answer(&g, &b_step).is_none(), "b waits for a");
        assert!(g.snapshot().is_none(), "nothing persists mid-rebalance");
        assert_eq!(
            g.heartbeat(&heartbeat(&a, 1), 20),
            ErrorCode::RebalanceInProgress
        );
        let a_step = g.join(&join(&a, &["range"]), 30, BOUNDS);
        let (ja, jb) = (answer(&g, &a_step).unwrap(), answer(&g, &b_step).unwrap());
        assert_eq!((ja.generation_id, jb.generation_id), (2, 2));
        assert_eq!(ja.leader, a, "the previous leader leads again");
        assert_eq!(ja.members.len(), 2);
        assert!(jb.members.is_empty(), "only the leader sees the members");
        assert_eq!(ja.protocol_name.as_deref(), Some("range"));
        assert_eq!(g.sync(&sync(&b, 2, &[]), 40), SyncStep::Wait);
        assert!(g.sync_answer(&b, 2).is_none());
        assert_eq!(
            g.sync(&sync(&a, 2, &[(&a, b"A2"), (&b, b"B2")]), 50),
            SyncStep::Persist
        );
        g.assignment_durable(2);
        assert_eq!(g.sync_answer(&b, 2).unwrap().assignment, b"B2");
        assert_eq!(g.sync_answer(&a, 2).unwrap().assignment, b"A2");
        assert_eq!(
            g.heartbeat(&heartbeat(&a, 1), 60),
            ErrorCode::IllegalGeneration
        );
        assert_eq!(g.heartbeat(&heartbeat(&b, 2), 60), ErrorCode::None);
        assert_eq!(
            g.heartbeat(&heartbeat("x", 2), 60),
            ErrorCode::UnknownMemberId
        );
    }

    #[test]
    fn a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_deadline() {
        let (mut g, a) = stable_one();
        let (b, b_step) = join_new(&mut g, 0);
        assert!(!g.tick(4_999));
        assert!(answer(&g, &b_step).is_none());
        assert!(g.tick(5_000));
        let jb = answer(&g, &b_step).unwrap();
        assert_eq!(jb.generation_id, 2);
        assert_eq!(jb.leader, b, "the old leader is gone");
        assert!(!g.members().contains_key(&a));
        assert_eq!(g.check_commit(&a, 1), Err(ErrorCode::RebalanceInProgress));
    }

    #[test]
    fn sessions_end_and_the_last_leave_empties_the_group() {
        let (mut g, a) = stable_one();
        assert!(!g.tick(1_000));
        assert!(g.tick(1_001), "a's session (1 s) ended");
        assert_eq!(g.phase(), Phase::Empty);
        assert_eq!(g.generation(), 2);
        let (mut g, a2) = stable_one();
        assert_ne!(a, String::new());
        let left = g.leave(&[(a2.clone(), None), ("nobody".into(), None)], 10);
        assert_eq!(left.members[0].2, ErrorCode::None);
        assert_eq!(left.members[1].2, ErrorCode::UnknownMemberId);
        assert_eq!(g.phase(), Phase::Empty);
        let snapshot = g.snapshot().expect("an empty group persists");
        assert!(snapshot.members.is_empty());
    }

    #[test]
    fn a_lost_answer_is_given_again_and_a_leader_rejoin_rebalances() {
        let (mut g, a) = stable_one();
        let (b, _) = join_new(&mut g, 0);
        let _ = g.join(&join(&a, &["range"]), 0, BOUNDS);
        g.sync(&sync(&a, 2, &[(&a, b"A"), (&b, b"B")]), 0);
        g.assignment_durable(2);
        // b lost its join answer and joins again unchanged: same generation, no rebalance.
        let again = answer(&g, &g.clone().join(&join(&b, &["range"]), 0, BOUNDS)).unwrap();
        assert_eq!(again.generation_id, 2);
        // The leader rejoining means it wants to assign again.
        let step = g.join(&join(&a, &["range"]), 0, BOUNDS);
        assert_eq!(g.phase(), Phase::PreparingRebalance);
        assert!(answer(&g, &step).is_none());
    }

    #[test]
    fn protocols_must_be_shared_and_the_vote_picks_the_preferred() {
        let (mut g, a) = stable_one();
        let mut other = join("", &["roundrobin"]);
        other.require_known_member_id = false;
        let JoinStep::Answer(refused) = g.join(&other, 0, BOUNDS) else {
            panic!("refused at once")
        };
        assert_eq!(refused.error, ErrorCode::InconsistentGroupProtocol);
        let mut typed = join("", &["range"]);
        typed.protocol_type = "connect".into();
        let JoinStep::Answer(refused) = g.join(&typed, 0, BOUNDS) else {
            panic!("refused at once")
        };
        assert_eq!(refused.error, ErrorCode::InconsistentGroupProtocol);
        let mut bad = join("", &["range"]);
        bad.session_timeout_ms = 10;
        let JoinStep::Answer(refused) = g.join(&bad, 0, BOUNDS) else {
            panic!("refused at once")
        };
        assert_eq!(refused.error, ErrorCode::InvalidSessionTimeout);
        // Both now prefer roundrobin and support range: roundrobin wins the vote.
        let mut b = join("", &["roundrobin", "range"]);
        b.require_known_member_id = false;
        let b_step = g.join(&b, 0, BOUNDS);
        let a_step = g.join(&join(&a, &["roundrobin", "range"]), 0, BOUNDS);
        let ja = answer(&g, &a_step).unwrap();
        assert_eq!(ja.protocol_name.as_deref(), Some("roundrobin"));
        assert_eq!(answer(&g, &b_step).unwrap().generation_id, 2);
        assert_eq!(
            ja.members
                .iter()
                .find(|m| m.member_id == a)
                .unwrap()
                .metadata,
            b"roundrobin"
        );
    }

    #[test]
    fn a_static_member_comes_back_without_a_rebalance_and_fences_its_old_id() {
        let mut g = ClassicGroup::new("g").unwrap();
        let mut first = join("", &["range"]);
        first.instance_id = Some("i-1".into());
        let step = g.join(&first, 0, BOUNDS);
        let joined = answer(&g, &step).expect("static members skip the id step");
        let old = joined.member_id.clone();
        g.sync(&sync(&old, 1, &[(&old, b"A")]), 0);
        g.assignment_durable(1);
        let JoinStep::Answer(back) = g.join(&first, 100, BOUNDS) else {
            panic!("a stable group answers a returning static member at once");
        };
        assert_eq!(back.generation_id, 1);
        assert_ne!(back.member_id, old);
        assert_eq!(g.phase(), Phase::Stable);
        assert_eq!(g.sync_answer(&back.member_id, 1).unwrap().assignment, b"A");
        let mut stale = heartbeat(&old, 1);
        stale.instance_id = Some("i-1".into());
        assert_eq!(g.heartbeat(&stale, 100), ErrorCode::FencedInstanceId);
    }

    #[test]
    fn commits_follow_kafkas_rules() {
        let (mut g, a) = stable_one();
        assert_eq!(g.check_commit(&a, 1), Ok(()));
        assert_eq!(g.check_commit(&a, 0), Err(ErrorCode::IllegalGeneration));
        assert_eq!(g.check_commit("x", 1), Err(ErrorCode::UnknownMemberId));
        let _ = join_new(&mut g, 0);
        // Preparing: members commit what they consumed before they join again.
        assert_eq!(g.check_commit(&a, 1), Ok(()));
    }

    #[test]
    fn a_restored_group_is_stable_with_its_assignment() {
        let (g, a) = stable_one();
        let restored = ClassicGroup::restore(g.snapshot().unwrap(), 500).unwrap();
        assert_eq!(restored.phase(), Phase::Stable);
        assert_eq!(restored.generation(), 1);
        assert_eq!(restored.sync_answer(&a, 1).unwrap().assignment, b"A");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Join(usize),
        Sync(usize),
        Heartbeat(usize),
        Leave(usize),
        Tick(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize).prop_map(Op::Join),
            (0..4usize).prop_map(Op::Sync),
            (0..4usize).prop_map(Op::Heartbeat),
            (0..4usize).prop_map(Op::Leave),
            (0..3_000u64).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// Random joins, syncs, heartbeats, leaves and time: the state machine's assertions
        /// hold, a stable group's members all got an assignment from one leader's sync, and
        /// the generation never goes back.
        #[test]
        fn random_histories_keep_the_invariants(ops in proptest::collection::vec(op(), 1..120)) {
            let mut g = ClassicGroup::new("g").unwrap();
            let mut ids: [String; 4] = Default::default();
            let mut now = 0u64;
            let mut generation = 0;
            for op in ops {
                match op {
                    Op::Join(i) => {
                        if let JoinStep::Answer(a) = g.join(&join(&ids[i], &["range"]), now, BOUNDS) {
                            if a.error == ErrorCode::MemberIdRequired {
                                ids[i] = a.member_id;
                            } else if a.error == ErrorCode::UnknownMemberId {
                                ids[i].clear();
                            }
                        }
                    }
                    Op::Sync(i) => {
                        let all: Vec<(String, Vec<u8>)> = g
                            .members()
                            .keys()
                            .map(|m| (m.clone(), m.as_bytes().to_vec()))
                            .collect();
                        let mut request = sync(&ids[i], g.generation(), &[]);
                        request.assignments = all;
                        if g.sync(&request, now) == SyncStep::Persist {
                            g.assignment_durable(g.generation());
                        }
                    }
                    Op::Heartbeat(i) => {
                        let _ = g.heartbeat(&heartbeat(&ids[i], g.generation()), now);
                    }
                    Op::Leave(i) => {
                        let _ = g.leave(&[(ids[i].clone(), None)], now);
                    }
                    Op::Tick(dt) => {
                        now += dt;
                        let _ = g.tick(now);
                    }
                }
                prop_assert!(g.generation() >= generation);
                generation = g.generation();
                if g.phase() == Phase::Stable {
                    for (id, m) in g.members() {
                        prop_assert_eq!(&m.assignment, &id.as_bytes().to_vec());
                    }
                }
            }
        }
    }
}
