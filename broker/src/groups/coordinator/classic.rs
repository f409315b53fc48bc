//! The coordinator's side of classic groups (Kafka's JoinGroup, SyncGroup, Heartbeat and
//! LeaveGroup): runs [`crate::groups::classic::ClassicGroup`] for the groups of this shard's
//! slots, persists a group when it comes to rest (its leader's assignment, a group left empty),
//! and long-polls: a JoinGroup is answered when its join phase ends, a SyncGroup when the
//! leader's assignment is durable on the offsets log's in-sync replicas.

use std::time::Duration;

use futures_lite::FutureExt;
use sluice_protocol::native::ErrorCode;

use super::{group_entry, group_refusal, incarnation, refuse, Coordinator, Refusal, Slot};
use crate::groups::classic::{
    ClassicDescription, ClassicGroup, ClassicHeartbeat, ClassicMemberDescription, JoinRequest,
    JoinResponse, JoinStep, LeaveRequest, LeaveResponse, SyncRequest, SyncResponse, SyncStep,
};
use crate::server::partitions::now_ms;

/// Added to a member's rebalance timeout for the longest a JoinGroup or SyncGroup waits: the
/// join phase ends at the rebalance deadline (on the coordinator's tick), so a wait this long
/// means the coordinator is stuck or moved.
const CLASSIC_WAIT_MARGIN: Duration = Duration::from_secs(5);

impl Coordinator {
    /// A JoinGroup: answered once the member's join phase ends (or at once, for a member that
    /// gets its id first or rejoins a stable group unchanged).
    pub async fn classic_join(&self, request: JoinRequest) -> JoinResponse {
        match self.classic_join_inner(&request).await {
            Ok(response) => response,
            Err((error, message)) => {
                tracing::debug!(group = %request.group, ?error, %message, "join refused");
                JoinResponse::refused(error, &request.member_id)
            }
        }
    }

    async fn classic_join_inner(&self, request: &JoinRequest) -> Result<JoinResponse, Refusal> {
        let (owned, slot) = self.slot_for(&request.group).await?;
        let permit = slot.write_step().await?;
        let bounds = (
            self.config.session_timeout_min.as_millis() as u64,
            self.config.session_timeout_max.as_millis() as u64,
        );
        let (step, write) = {
            let mut groups = slot.groups.borrow_mut();
            let entry =
                group_entry(&mut groups, &request.group, incarnation()).map_err(group_refusal)?;
            if !entry.group.members().is_empty() {
                return Err(refuse(
                    ErrorCode::InconsistentGroupProtocol,
                    "the group has members of the consumer protocol (KIP-848)",
                ));
            }
            if entry.classic.is_none() {
                let mut classic =
                    ClassicGroup::new(&request.group).map_err(|e| refuse(e, "bad group id"))?;
                classic.set_incarnation(incarnation());
                entry.classic = Some(classic);
            }
            let classic = entry.classic.as_mut().expect("made above");
            let step = classic.join(request, now_ms(), bounds);
            (step, entry.classic_write(&request.group))
        };
        slot.changed.notify();
        if let Some(record) = write {
            let appended = self.append(&owned, &slot, &[record]).await?;
            drop(permit);
            self.committed(&owned, &slot, appended).await?;
        } else {
            drop(permit);
        }
        match step {
            JoinStep::Answer(response) => Ok(response),
            JoinStep::Wait {
                member_id,
                generation,
            } => {
                let wait = Duration::from_millis(u64::from(request.rebalance_timeout_ms))
                    + CLASSIC_WAIT_MARGIN;
                self.classic_wait(&slot, &request.group, wait, |c| {
                    c.join_answer(&member_id, generation)
                })
                .await?
                .ok_or_else(|| refuse(ErrorCode::UnknownMemberId, "the group is gone"))
            }
        }
    }

    /// Waits until `answer` gives one for the group (looked at after every change of the slot),
    /// `None` if the group is gone; `Err` if the slot moved or the wait timed out.
    async fn classic_wait<T>(
        &self,
        slot: &Slot,
        group: &str,
        timeout: Duration,
        answer: impl Fn(&ClassicGroup) -> Option<T>,
    ) -> Result<Option<T>, Refusal> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let changed = slot.changed.listen();
            if slot.failed.get() {
                return Err(refuse(ErrorCode::NotCoordinator, "the coordinator moved"));
            }
            {
                let groups = slot.groups.borrow();
                let Some(classic) = groups.get(group).and_then(|e| e.classic.as_ref()) else {
                    return Ok(None);
                };
                if let Some(answer) = answer(classic) {
                    return Ok(Some(answer));
                }
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let woke = async {
                changed.await;
                true
            }
            .or(async {
                glommio::timer::sleep(left).await;
                false
            })
            .await;
            if !woke {
                return Err(refuse(
                    ErrorCode::RebalanceInProgress,
                    "the rebalance did not end in time",
                ));
            }
        }
    }

    /// A SyncGroup: the leader's assignment is persisted before anyone gets their part.
    pub async fn classic_sync(&self, request: SyncRequest) -> SyncResponse {
        match self.classic_sync_inner(&request).await {
            Ok(response) => response,
            Err((error, message)) => {
                tracing::debug!(group = %request.group, ?error, %message, "sync refused");
                SyncResponse::refused(error)
            }
        }
    }

    async fn classic_sync_inner(&self, request: &SyncRequest) -> Result<SyncResponse, Refusal> {
        let (owned, slot) = self.slot_for(&request.group).await?;
        let permit = slot.write_step().await?;
        let (step, write, timeout) = {
            let mut groups = slot.groups.borrow_mut();
            let Some(entry) = groups.get_mut(&request.group) else {
                return Err(refuse(ErrorCode::UnknownMemberId, "no such group"));
            };
            let Some(classic) = entry.classic.as_mut() else {
                return Err(refuse(ErrorCode::UnknownMemberId, "no classic member"));
            };
            let step = classic.sync(request, now_ms());
            let timeout = classic
                .members()
                .get(&request.member_id)
                .map_or(0, |m| u64::from(m.rebalance_timeout_ms));
            let write = match step {
                SyncStep::Persist => entry.classic_write(&request.group),
                _ => None,
            };
            (
                step,
                write,
                Duration::from_millis(timeout) + CLASSIC_WAIT_MARGIN,
            )
        };
        match step {
            SyncStep::Answer(response) => return Ok(response),
            SyncStep::Wait => drop(permit),
            SyncStep::Persist => {
                let outcome = match write {
                    Some(record) => match self.append(&owned, &slot, &[record]).await {
                        Ok(appended) => {
                            drop(permit);
                            self.committed(&owned, &slot, appended).await
                        }
                        Err(refusal) => Err(refusal),
                    },
                    None => {
                        drop(permit);
                        Ok(())
                    }
                };
                if let Some(classic) = slot
                    .groups
                    .borrow_mut()
                    .get_mut(&request.group)
                    .and_then(|e| e.classic.as_mut())
                {
                    match &outcome {
                        Ok(()) => classic.assignment_durable(request.generation_id),
                        Err(_) => classic.assignment_failed(request.generation_id, now_ms()),
                    }
                }
                slot.changed.notify();
                outcome?;
            }
        }
        self.classic_wait(&slot, &request.group, timeout, |c| {
            c.sync_answer(&request.member_id, request.generation_id)
        })
        .await?
        .ok_or_else(|| refuse(ErrorCode::UnknownMemberId, "the group is gone"))
    }

    /// A classic Heartbeat: extends the member's session; `RebalanceInProgress` asks it to join
    /// again.
    pub async fn classic_heartbeat(&self, request: ClassicHeartbeat) -> ErrorCode {
        let slot = match self.slot_for(&request.group).await {
            Ok((_, slot)) => slot,
            Err((error, _)) => return error,
        };
        let mut groups = slot.groups.borrow_mut();
        match groups
            .get_mut(&request.group)
            .and_then(|e| e.classic.as_mut())
        {
            Some(classic) => classic.heartbeat(&request, now_ms()),
            None => ErrorCode::UnknownMemberId,
        }
    }

    /// A LeaveGroup: the members go, and the others join again.
    pub async fn classic_leave(&self, request: LeaveRequest) -> LeaveResponse {
        match self.classic_leave_inner(&request).await {
            Ok(response) => response,
            Err((error, _)) => LeaveResponse {
                error,
                members: Vec::new(),
            },
        }
    }

    async fn classic_leave_inner(&self, request: &LeaveRequest) -> Result<LeaveResponse, Refusal> {
        let (owned, slot) = self.slot_for(&request.group).await?;
        let permit = slot.write_step().await?;
        let (response, write) = {
            let mut groups = slot.groups.borrow_mut();
            let Some(entry) = groups.get_mut(&request.group) else {
                return Err(refuse(ErrorCode::UnknownMemberId, "no such group"));
            };
            let Some(classic) = entry.classic.as_mut() else {
                return Err(refuse(ErrorCode::UnknownMemberId, "no classic member"));
            };
            let response = classic.leave(&request.members, now_ms());
            (response, entry.classic_write(&request.group))
        };
        slot.changed.notify();
        if let Some(record) = write {
            let appended = self.append(&owned, &slot, &[record]).await?;
            drop(permit);
            self.committed(&owned, &slot, appended).await?;
        }
        Ok(response)
    }

    /// Kafka's DescribeGroups of any group: classic groups with their members' metadata and
    /// assignments, KIP-848 groups with their members (no bytes). `None`: no such group.
    pub async fn classic_describe(
        &self,
        group: &str,
    ) -> Result<Option<ClassicDescription>, ErrorCode> {
        let (_, slot) = self.slot_for(group).await.map_err(|(code, _)| code)?;
        let groups = slot.groups.borrow();
        let Some(entry) = groups.get(group) else {
            return Ok(None);
        };
        if let Some(classic) = entry.classic.as_ref().filter(|_| entry.is_classic()) {
            return Ok(Some(classic.describe()));
        }
        Ok(Some(ClassicDescription {
            state: entry.state_name().to_string(),
            protocol_type: "consumer".into(),
            protocol_name: entry.group.config().assignor.name().to_string(),
            members: entry
                .group
                .members()
                .values()
                .map(|m| ClassicMemberDescription {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: String::new(),
                    client_host: String::new(),
                    metadata: Vec::new(),
                    assignment: Vec::new(),
                })
                .collect(),
        }))
    }
}
