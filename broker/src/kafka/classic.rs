//! The classic group protocol (client-side assignment): JoinGroup (with KIP-394's
//! MEMBER_ID_REQUIRED two-step from v4), SyncGroup, Heartbeat and LeaveGroup, on the
//! coordinator's classic groups (`groups::classic`). The member metadata and assignments are
//! the clients' own bytes, stored and handed back as they are.

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    ApiKey, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::native::ErrorCode;

use super::{errors, frame};
use crate::groups::classic::{ClassicHeartbeat, JoinRequest, LeaveRequest, SyncRequest};
use crate::server::context::{Response, ShardContext};

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn optional(s: Option<String>) -> Option<StrBytes> {
    s.map(text)
}

/// Who is joining: the request header's client id and the connection's peer host.
#[derive(Debug, Clone, Default)]
pub struct Member {
    pub client_id: String,
    pub client_host: String,
}

/// JoinGroup: waits (in the coordinator) until the join phase ends; the leader's answer
/// lists every member with its metadata.
pub async fn join_group(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    member: Member,
    request: JoinGroupRequest,
) -> Response {
    let session_timeout_ms = u32::try_from(request.session_timeout_ms).unwrap_or(0);
    let answer = ctx
        .groups
        .classic_join(JoinRequest {
            group: request.group_id.0.to_string(),
            member_id: request.member_id.to_string(),
            instance_id: request.group_instance_id.map(|i| i.to_string()),
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata.to_vec()))
                .collect(),
            session_timeout_ms,
            // v0 has no rebalance timeout: the session timeout stands in.
            rebalance_timeout_ms: if version >= 1 {
                u32::try_from(request.rebalance_timeout_ms).unwrap_or(session_timeout_ms)
            } else {
                session_timeout_ms
            },
            client_id: member.client_id,
            client_host: member.client_host,
            require_known_member_id: version >= 4,
        })
        .await;
    let mut body = JoinGroupResponse::default()
        .with_error_code(errors::code(answer.error))
        .with_generation_id(answer.generation_id)
        .with_protocol_name(optional(answer.protocol_name))
        .with_leader(text(answer.leader))
        .with_member_id(text(answer.member_id))
        .with_members(
            answer
                .members
                .into_iter()
                .map(|m| {
                    let member = JoinGroupResponseMember::default()
                        .with_member_id(text(m.member_id))
                        .with_metadata(m.metadata.into());
                    if version >= 5 {
                        member.with_group_instance_id(optional(m.instance_id))
                    } else {
                        member
                    }
                })
                .collect(),
        );
    if version >= 7 {
        body = body.with_protocol_type(optional(answer.protocol_type));
    } else if body.protocol_name.is_none() {
        // Up to v6 the protocol name is a plain string.
        body = body.with_protocol_name(Some(text("")));
    }
    frame::response(ApiKey::JoinGroup, version, id, &body)
}

/// SyncGroup: the leader hands in every member's assignment; each member gets its own once
/// it is durable.
pub async fn sync_group(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: SyncGroupRequest,
) -> Response {
    let answer = ctx
        .groups
        .classic_sync(SyncRequest {
            group: request.group_id.0.to_string(),
            generation_id: request.generation_id,
            member_id: request.member_id.to_string(),
            instance_id: request.group_instance_id.map(|i| i.to_string()),
            protocol_type: request.protocol_type.map(|p| p.to_string()),
            protocol_name: request.protocol_name.map(|p| p.to_string()),
            assignments: request
                .assignments
                .into_iter()
                .map(|a| (a.member_id.to_string(), a.assignment.to_vec()))
                .collect(),
        })
        .await;
    let mut body = SyncGroupResponse::default()
        .with_error_code(errors::code(answer.error))
        .with_assignment(answer.assignment.into());
    if version >= 5 {
        body = body
            .with_protocol_type(optional(answer.protocol_type))
            .with_protocol_name(optional(answer.protocol_name));
    }
    frame::response(ApiKey::SyncGroup, version, id, &body)
}

/// Heartbeat: REBALANCE_IN_PROGRESS tells the member to join again.
pub async fn heartbeat(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: HeartbeatRequest,
) -> Response {
    let error = ctx
        .groups
        .classic_heartbeat(ClassicHeartbeat {
            group: request.group_id.0.to_string(),
            generation_id: request.generation_id,
            member_id: request.member_id.to_string(),
            instance_id: request.group_instance_id.map(|i| i.to_string()),
        })
        .await;
    let body = HeartbeatResponse::default().with_error_code(errors::code(error));
    frame::response(ApiKey::Heartbeat, version, id, &body)
}

/// LeaveGroup: one member (up to v2) or a batch of members (from v3).
pub async fn leave_group(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: LeaveGroupRequest,
) -> Response {
    let members = if version >= 3 {
        request
            .members
            .into_iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let answer = ctx
        .groups
        .classic_leave(LeaveRequest {
            group: request.group_id.0.to_string(),
            members,
        })
        .await;
    let mut error = answer.error;
    if version < 3 && error == ErrorCode::None {
        // One member: its own outcome is the answer's.
        if let Some((.., member_error)) = answer.members.first() {
            error = *member_error;
        }
    }
    let mut body = LeaveGroupResponse::default().with_error_code(errors::code(error));
    if version >= 3 {
        body = body.with_members(
            answer
                .members
                .into_iter()
                .map(|(member_id, instance_id, error)| {
                    MemberResponse::default()
                        .with_member_id(text(member_id))
                        .with_group_instance_id(optional(instance_id))
                        .with_error_code(errors::code(error))
                })
                .collect(),
        );
    }
    frame::response(ApiKey::LeaveGroup, version, id, &body)
}
