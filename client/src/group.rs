//! Consumer-group membership: the heartbeat task that keeps a consumer in its group, and the
//! coordinator calls (offset commit and fetch) the consumer makes.
//!
//! The coordinator assigns partitions (server-side assignment, the shape of Kafka's KIP-848):
//! every heartbeat reports the subscription and what the consumer owns, and its answer says
//! what the consumer should own. The consumer's `poll` reconciles: it commits and releases
//! what the answer no longer lists (after the listener's `revoked`), then takes what is new,
//! starting from the group's committed offsets. The coordinator hands a partition to its new
//! owner only after the old owner reported it released (or its session ended), so no two
//! members consume a partition at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_protocol::group_api::{
    FindCoordinatorRequest, FindCoordinatorResponse, GroupHeartbeatRequest, GroupHeartbeatResponse,
    GroupPartition, OffsetCommitPartition, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, Subscription as WireSubscription, JOIN_EPOCH,
    LEAVE_EPOCH, STATIC_LEAVE_EPOCH,
};
use sluice_protocol::native::{ApiKey, ErrorCode};
use tokio::sync::Notify;

use crate::cluster::Cluster;
use crate::connection::Connection;
use crate::consumer::TopicPartition;
use crate::error::{Error, Result};

/// What a group member subscribes to.
///
/// ```
/// use sluice_client::Subscription;
///
/// let by_name = Subscription::from(["orders", "payments"]);
/// let by_pattern = Subscription::pattern("orders-.*");
/// assert_ne!(by_name, by_pattern);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// These topics.
    Topics(Vec<String>),
    /// Every topic whose whole name matches this regular expression, including topics created
    /// later.
    Pattern(String),
}

impl Subscription {
    pub fn pattern(pattern: impl Into<String>) -> Subscription {
        Subscription::Pattern(pattern.into())
    }

    fn to_wire(&self) -> WireSubscription {
        match self {
            Subscription::Topics(topics) => WireSubscription::Topics(topics.clone()),
            Subscription::Pattern(p) => WireSubscription::Pattern(p.clone()),
        }
    }
}

impl<S: Into<String>, const N: usize> From<[S; N]> for Subscription {
    fn from(topics: [S; N]) -> Subscription {
        Subscription::Topics(topics.into_iter().map(Into::into).collect())
    }
}

impl From<Vec<String>> for Subscription {
    fn from(topics: Vec<String>) -> Subscription {
        Subscription::Topics(topics)
    }
}

impl From<&str> for Subscription {
    fn from(topic: &str) -> Subscription {
        Subscription::Topics(vec![topic.to_string()])
    }
}

/// When a group member's offsets are committed, which decides what a crash costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryGuarantee {
    /// Offsets are committed before `poll` hands records out: a crash loses the records
    /// handed out and not yet processed, but no record is ever handed out twice.
    AtMostOnce,
    /// Offsets are committed after the application had the records: automatically, at the
    /// next `poll` (every `auto_commit_interval`), before a partition is released and on
    /// `close`; or explicitly with `commit` when `auto_commit` is off. A crash repeats the
    /// records handed out since the last commit, but never loses one.
    #[default]
    AtLeastOnce,
}

/// Told when the group moves partitions to or from this consumer. Called from `poll`.
pub trait RebalanceListener: Send {
    /// Partitions this consumer now owns (positions start at the group's committed offsets).
    fn assigned(&mut self, _partitions: &[TopicPartition]) {}
    /// Partitions being released to another member. With at-least-once auto-commit, their
    /// positions were committed just before this call.
    fn revoked(&mut self, _partitions: &[TopicPartition]) {}
    /// Partitions lost without an orderly release (the session ended or the member was
    /// fenced): another member may already consume them; commits for them are refused.
    fn lost(&mut self, _partitions: &[TopicPartition]) {}
}

/// What the heartbeat task and the consumer share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub member_id: Option<String>,
    pub member_epoch: i32,
    /// What the coordinator last said this member should own.
    pub target: Option<BTreeSet<TopicPartition>>,
    /// What the consumer owns (reported in every heartbeat).
    pub owned: BTreeSet<TopicPartition>,
    /// The coordinator no longer knows this member: the consumer drops everything, rejoins.
    pub fenced: bool,
    /// An error the application must see (bad group id, bad subscription, group full).
    pub fatal: Option<Error>,
    pub closing: bool,
    /// The coordinator shard's address, once found.
    pub coordinator: Option<String>,
    /// When the application last called `poll`.
    pub last_poll: Option<std::time::Instant>,
    /// The member left because the application did not poll within `max_poll_interval`; it
    /// joins again at the next poll.
    pub poll_expired: bool,
}

/// A consumer's membership of one group.
pub(crate) struct Membership {
    pub group: String,
    pub shared: Arc<Mutex<Shared>>,
    /// Wakes the heartbeat task (ownership changed, or closing).
    pub wake: Arc<Notify>,
    /// Wakes `poll` when the target assignment changed.
    pub changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("group", &self.group)
            .finish()
    }
}

/// Settings of a membership.
#[derive(Debug, Clone)]
pub(crate) struct MemberSettings {
    pub group: String,
    pub subscription: Subscription,
    pub instance_id: Option<String>,
    pub session_timeout: Duration,
    pub assignor: Option<String>,
    /// Longest time between two polls before the member leaves the group (Kafka's
    /// `max.poll.interval.ms`): a stuck application gives its partitions up.
    pub max_poll_interval: Duration,
}

impl Membership {
    pub fn start(cluster: Arc<Cluster>, settings: MemberSettings) -> Membership {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let wake = Arc::new(Notify::new());
        let changed = Arc::new(Notify::new());
        let task = tokio::spawn(heartbeat_loop(
            cluster,
            settings.clone(),
            Arc::clone(&shared),
            Arc::clone(&wake),
            Arc::clone(&changed),
        ));
        Membership {
            group: settings.group,
            shared,
            wake,
            changed,
            task,
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The application polls: a member that left for want of polls joins again.
    pub fn polled(&self) {
        let mut s = self.lock();
        s.last_poll = Some(std::time::Instant::now());
        if std::mem::take(&mut s.poll_expired) {
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Sets what the consumer owns and tells the coordinator at once.
    pub fn set_owned(&self, owned: BTreeSet<TopicPartition>) {
        self.lock().owned = owned;
        self.wake.notify_one();
    }

    /// Leaves the group (a static member leaves temporarily, keeping its assignment until its
    /// session ends) and stops heartbeating; waits at most `timeout`.
    pub async fn leave(mut self, timeout: Duration) {
        self.lock().closing = true;
        self.wake.notify_one();
        let _ = tokio::time::timeout(timeout, &mut self.task).await;
    }

    /// Commits offsets as this member (see [`commit_as_member`]).
    pub async fn commit(&self, cluster: &Cluster, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        commit_as_member(cluster, &self.shared, &self.group, offsets).await
    }

    /// The group's committed offsets of `partitions` (`None`: nothing committed).
    pub async fn committed(
        &self,
        cluster: &Cluster,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, Option<u64>>> {
        fetch_committed(cluster, &self.shared, &self.group, partitions).await
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // Dropped without `close`: stop heartbeating; the session ends on the coordinator.
        self.task.abort();
    }
}

/// Commits offsets as the member (its current id and epoch). A commit refused because the
/// member's epoch moved on meanwhile is sent again with the new epoch.
pub(crate) async fn commit_as_member(
    cluster: &Cluster,
    shared: &Mutex<Shared>,
    group: &str,
    offsets: &[(TopicPartition, u64)],
) -> Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (member_id, member_epoch) = {
            let shared = shared.lock().unwrap_or_else(|e| e.into_inner());
            (shared.member_id.clone(), shared.member_epoch)
        };
        if member_id.is_none() {
            return Err(Error::broker(
                ErrorCode::UnknownMemberId,
                format!("commit to group {:?}: not a member now", group),
            ));
        }
        let request = OffsetCommitRequest {
            group: group.to_string(),
            member_id,
            member_epoch,
            partitions: offsets
                .iter()
                .map(|(tp, offset)| OffsetCommitPartition {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: *offset,
                    metadata: String::new(),
                })
                .collect(),
        };
        let result: Result<OffsetCommitResponse> =
            coordinator_call(cluster, shared, group, ApiKey::OffsetCommit, &request).await;
        let retry = match result {
            Ok(response) if response.error == ErrorCode::None => {
                return match response
                    .partitions
                    .iter()
                    .find(|p| p.error != ErrorCode::None)
                {
                    None => Ok(()),
                    Some(p) => Err(Error::broker(
                        p.error,
                        format!("commit of {}/{} to group {:?}", p.topic, p.partition, group),
                    )),
                };
            }
            // The coordinator moved the member to a new epoch (a rebalance step) and the
            // heartbeat answer that says so may still be on its way: retry with the epoch it
            // brings. A member the coordinator no longer knows gets `UnknownMemberId` instead.
            Ok(response) if response.error == ErrorCode::FencedMemberEpoch => true,
            Ok(response) => {
                let error = Error::broker(
                    response.error,
                    format!("commit to group {:?}: {}", group, response.message),
                );
                error.is_retriable()
            }
            Err(error) => error.is_retriable(),
        };
        if !retry || attempt >= 10 {
            return Err(Error::broker(
                ErrorCode::Unavailable,
                format!(
                    "commit to group {:?} failed after {attempt} attempts",
                    group
                ),
            ));
        }
        tokio::time::sleep(cluster.config.backoff(attempt)).await;
    }
}

/// The committed offsets of `partitions` in `group`, retried while the coordinator moves.
pub(crate) async fn fetch_committed(
    cluster: &Cluster,
    shared: &Mutex<Shared>,
    group: &str,
    partitions: &[TopicPartition],
) -> Result<HashMap<TopicPartition, Option<u64>>> {
    let request = OffsetFetchRequest {
        group: group.to_string(),
        partitions: Some(
            partitions
                .iter()
                .map(|tp| GroupPartition {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                })
                .collect(),
        ),
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result: Result<OffsetFetchResponse> =
            coordinator_call(cluster, shared, group, ApiKey::OffsetFetch, &request).await;
        let error = match result {
            Ok(response) if response.error == ErrorCode::None => {
                return Ok(response
                    .partitions
                    .into_iter()
                    .map(|p| (TopicPartition::new(p.topic, p.partition), p.offset))
                    .collect());
            }
            Ok(response) => Error::broker(
                response.error,
                format!("offset fetch of group {group:?}: {}", response.message),
            ),
            Err(error) => error,
        };
        if !error.is_retriable() || attempt >= 10 {
            return Err(error);
        }
        tokio::time::sleep(cluster.config.backoff(attempt)).await;
    }
}

/// Sends a request to the group's coordinator, finding it first if needed. A refusal that
/// says the coordinator moved forgets it, so the next call finds it again.
pub(crate) async fn coordinator_call<Req, Resp>(
    cluster: &Cluster,
    shared: &Mutex<Shared>,
    group: &str,
    api: ApiKey,
    request: &Req,
) -> Result<Resp>
where
    Req: sluice_protocol::native::EncodeControl,
    Resp: sluice_protocol::native::DecodeControl + CoordinatorReply,
{
    let cached = shared
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .coordinator
        .clone();
    let address = match cached {
        Some(address) => address,
        None => {
            let address = find_coordinator(cluster, group).await?;
            shared.lock().unwrap_or_else(|e| e.into_inner()).coordinator = Some(address.clone());
            address
        }
    };
    let forget = || shared.lock().unwrap_or_else(|e| e.into_inner()).coordinator = None;
    let connection: Arc<Connection> = match cluster.connection(&address).await {
        Ok(c) => c,
        Err(e) => {
            forget();
            return Err(e);
        }
    };
    match connection
        .call::<Req, Resp>(api, request, cluster.config.request_timeout)
        .await
    {
        Ok(response) => {
            if matches!(
                response.error_code(),
                ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable
            ) {
                forget();
            }
            Ok(response)
        }
        Err(e) => {
            forget();
            Err(e)
        }
    }
}

/// Responses whose top-level error can say that the coordinator moved.
pub(crate) trait CoordinatorReply {
    fn error_code(&self) -> ErrorCode;
}

macro_rules! coordinator_reply {
    ($($t:ty),*) => {$(
        impl CoordinatorReply for $t {
            fn error_code(&self) -> ErrorCode {
                self.error
            }
        }
    )*};
}

coordinator_reply!(
    GroupHeartbeatResponse,
    OffsetCommitResponse,
    OffsetFetchResponse,
    sluice_protocol::group_api::DescribeGroupResponse,
    sluice_protocol::group_api::DeleteGroupResponse
);

/// The address of `group`'s coordinator shard, asked of any broker.
pub(crate) async fn find_coordinator(cluster: &Cluster, group: &str) -> Result<String> {
    let response: FindCoordinatorResponse = cluster
        .admin_call(
            ApiKey::FindCoordinator,
            &FindCoordinatorRequest {
                group: group.to_string(),
            },
        )
        .await?;
    if response.error != ErrorCode::None {
        return Err(Error::broker(
            response.error,
            format!(
                "finding the coordinator of group {group:?}: {}",
                response.message
            ),
        ));
    }
    Ok(response.address)
}

/// Heartbeats until closed: joins, keeps the session, reports ownership, learns the target.
async fn heartbeat_loop(
    cluster: Arc<Cluster>,
    settings: MemberSettings,
    shared: Arc<Mutex<Shared>>,
    wake: Arc<Notify>,
    changed: Arc<Notify>,
) {
    let lock = || shared.lock().unwrap_or_else(|e| e.into_inner());
    let mut interval = Duration::from_millis(500);
    let mut attempt = 0u32;
    loop {
        // Not polled within max_poll_interval: leave, and wait for the next poll to join again.
        let mut expiring = false;
        let wait_for_poll = {
            let mut s = lock();
            if !s.closing && !s.poll_expired && s.member_id.is_some() {
                if let Some(last) = s.last_poll {
                    if last.elapsed() > settings.max_poll_interval {
                        tracing::warn!(group = %settings.group,
                            max_poll_interval = ?settings.max_poll_interval,
                            "the application did not poll in time; leaving the group");
                        s.poll_expired = true;
                        expiring = true;
                    }
                }
            }
            s.poll_expired && !expiring && !s.closing
        };
        if wait_for_poll {
            wake.notified().await;
            continue;
        }
        let (request, closing) = {
            let s = lock();
            let closing = s.closing || expiring;
            let epoch = if closing {
                if s.member_id.is_none() {
                    return;
                }
                if settings.instance_id.is_some() {
                    STATIC_LEAVE_EPOCH
                } else {
                    LEAVE_EPOCH
                }
            } else if s.member_id.is_none() {
                JOIN_EPOCH
            } else {
                s.member_epoch
            };
            let request = GroupHeartbeatRequest {
                group: settings.group.clone(),
                member_id: s.member_id.clone(),
                member_epoch: epoch,
                instance_id: settings.instance_id.clone(),
                session_timeout_ms: settings.session_timeout.as_millis().min(u32::MAX as u128)
                    as u32,
                assignor: settings.assignor.clone(),
                subscription: Some(settings.subscription.to_wire()),
                owned: Some(
                    s.owned
                        .iter()
                        .map(|tp| GroupPartition {
                            topic: tp.topic.clone(),
                            partition: tp.partition,
                        })
                        .collect(),
                ),
            };
            (request, closing)
        };
        let result: Result<GroupHeartbeatResponse> = coordinator_call(
            &cluster,
            &shared,
            &settings.group,
            ApiKey::GroupHeartbeat,
            &request,
        )
        .await;
        let mut retry_soon = false;
        match result {
            Ok(response) if response.error == ErrorCode::None => {
                attempt = 0;
                interval = Duration::from_millis(u64::from(response.heartbeat_interval_ms.max(10)));
                if expiring {
                    let mut s = lock();
                    s.member_id = None;
                    s.member_epoch = JOIN_EPOCH;
                    s.fenced = true;
                    s.target = None;
                    drop(s);
                    changed.notify_one();
                    continue;
                }
                if closing {
                    return;
                }
                let target: BTreeSet<TopicPartition> = response
                    .assignment
                    .into_iter()
                    .map(|p| TopicPartition::new(p.topic, p.partition))
                    .collect();
                let mut s = lock();
                s.member_id = Some(response.member_id);
                s.member_epoch = response.member_epoch;
                if s.target.as_ref() != Some(&target) {
                    s.target = Some(target);
                    drop(s);
                    changed.notify_one();
                }
            }
            Ok(response) => match response.error {
                ErrorCode::UnknownMemberId | ErrorCode::FencedMemberEpoch => {
                    if closing && !expiring {
                        return;
                    }
                    tracing::info!(group = %settings.group, error = ?response.error,
                        "fenced by the coordinator; rejoining");
                    let mut s = lock();
                    s.member_id = None;
                    s.member_epoch = JOIN_EPOCH;
                    s.fenced = true;
                    s.target = None;
                    drop(s);
                    changed.notify_one();
                    retry_soon = true;
                }
                ErrorCode::InvalidGroupId
                | ErrorCode::UnsupportedAssignor
                | ErrorCode::InconsistentGroupProtocol
                | ErrorCode::InvalidSubscription
                | ErrorCode::GroupMaxSizeReached => {
                    lock().fatal = Some(Error::broker(
                        response.error,
                        format!("group {:?}: {}", settings.group, response.message),
                    ));
                    changed.notify_one();
                    return;
                }
                code => {
                    tracing::debug!(group = %settings.group, ?code, message = %response.message,
                        "heartbeat refused; retrying");
                    attempt += 1;
                    retry_soon = true;
                }
            },
            Err(error) => {
                tracing::debug!(group = %settings.group, %error, "heartbeat failed; retrying");
                attempt += 1;
                retry_soon = true;
            }
        }
        if closing && !expiring && attempt > 3 {
            return;
        }
        if expiring && lock().member_id.is_some() {
            // The leave did not go through: try it again.
            lock().poll_expired = false;
        }
        let wait = if retry_soon {
            cluster.config.backoff(attempt.max(1)).min(interval)
        } else {
            interval
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
