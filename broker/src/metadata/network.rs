//! Raft RPCs to other brokers over TCP, one lazily opened connection per peer; and what they
//! learn of peers whose metadata port refuses connections (a process that is gone), which the
//! controller uses to declare a killed broker dead before its lease runs out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use tokio::net::TcpStream;

use super::types::{NodeId, TypeConfig};
use super::wire::{read_frame, write_frame, WireError, WireRequest, WireResponse};

/// Peers whose metadata port refused a connection, since when (cleared by the next exchange
/// that succeeds). A refusal is the kernel saying nothing listens there: the broker process is
/// gone (killed, crashed, stopped), unlike a timeout, which a pause or a partition also gives.
#[derive(Debug, Clone, Default)]
pub struct Refusals(Arc<Mutex<HashMap<NodeId, Instant>>>);

impl Refusals {
    fn refused(&self, peer: NodeId) {
        self.lock().entry(peer).or_insert_with(Instant::now);
    }

    /// `peer` answered (a Raft exchange, or a registration or heartbeat reached the controller):
    /// whatever refused before, it listens now.
    pub fn answered(&self, peer: NodeId) {
        self.lock().remove(&peer);
    }

    /// Peers refusing connections, with nothing answered since, for at least `for_at_least`.
    pub fn refusing(&self, for_at_least: Duration) -> Vec<NodeId> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= for_at_least)
            .map(|(peer, _)| *peer)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Instant>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Creates [`PeerClient`]s for openraft.
#[derive(Debug, Clone, Default)]
pub struct Network {
    pub local: NodeId,
    pub refusals: Refusals,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            local: self.local,
            target,
            address: node.addr.clone(),
            stream: None,
            refusals: self.refusals.clone(),
        }
    }
}

/// The connection to one peer.
#[derive(Debug)]
pub struct PeerClient {
    local: NodeId,
    target: NodeId,
    address: String,
    stream: Option<TcpStream>,
    refusals: Refusals,
}

enum CallError {
    Unreachable(std::io::Error),
    Timeout,
    Protocol(String),
}

impl PeerClient {
    async fn call(
        &mut self,
        request: &WireRequest,
        ttl: Duration,
    ) -> Result<WireResponse, CallError> {
        let exchange = async {
            if self.stream.is_none() {
                let stream = match TcpStream::connect(&self.address).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        if e.kind() == std::io::ErrorKind::ConnectionRefused {
                            self.refusals.refused(self.target);
                        }
                        return Err(CallError::Unreachable(e));
                    }
                };
                stream.set_nodelay(true).map_err(CallError::Unreachable)?;
                self.stream = Some(stream);
            }
            let Some(stream) = self.stream.as_mut() else {
                return Err(CallError::Protocol("no connection".into()));
            };
            write_frame(stream, request).await.map_err(wire_to_call)?;
            match read_frame::<_, WireResponse>(stream)
                .await
                .map_err(wire_to_call)?
            {
                Some(response) => Ok(response),
                None => Err(CallError::Unreachable(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "peer closed the connection",
                ))),
            }
        };
        let outcome = match tokio::time::timeout(ttl, exchange).await {
            Ok(outcome) => outcome,
            Err(_) => Err(CallError::Timeout),
        };
        if outcome.is_err() {
            self.stream = None;
        } else {
            self.refusals.answered(self.target);
        }
        outcome
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        error: CallError,
        ttl: Duration,
        action: openraft::network::RPCTypes,
    ) -> RPCError<NodeId, BasicNode, E> {
        match error {
            CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Timeout => RPCError::Timeout(Timeout {
                action,
                id: self.local,
                target: self.target,
                timeout: ttl,
            }),
            CallError::Protocol(message) => {
                RPCError::Network(NetworkError::new(&std::io::Error::other(message)))
            }
        }
    }
}

fn wire_to_call(error: WireError) -> CallError {
    match error {
        WireError::Io(e) => CallError::Unreachable(e),
        other => CallError::Protocol(other.to_string()),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let ttl = option.hard_ttl();
        match self.call(&WireRequest::AppendEntries(rpc), ttl).await {
            Ok(WireResponse::AppendEntries(Ok(response))) => Ok(response),
            Ok(WireResponse::AppendEntries(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(self.rpc_error(
                CallError::Protocol(format!("unexpected reply {other:?}")),
                ttl,
                openraft::network::RPCTypes::AppendEntries,
            )),
            Err(e) => Err(self.rpc_error(e, ttl, openraft::network::RPCTypes::AppendEntries)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let ttl = option.hard_ttl();
        match self.call(&WireRequest::InstallSnapshot(rpc), ttl).await {
            Ok(WireResponse::InstallSnapshot(Ok(response))) => Ok(response),
            Ok(WireResponse::InstallSnapshot(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(self.rpc_error(
                CallError::Protocol(format!("unexpected reply {other:?}")),
                ttl,
                openraft::network::RPCTypes::InstallSnapshot,
            )),
            Err(e) => Err(self.rpc_error(e, ttl, openraft::network::RPCTypes::InstallSnapshot)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let ttl = option.hard_ttl();
        match self.call(&WireRequest::Vote(rpc), ttl).await {
            Ok(WireResponse::Vote(Ok(response))) => Ok(response),
            Ok(WireResponse::Vote(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(self.rpc_error(
                CallError::Protocol(format!("unexpected reply {other:?}")),
                ttl,
                openraft::network::RPCTypes::Vote,
            )),
            Err(e) => Err(self.rpc_error(e, ttl, openraft::network::RPCTypes::Vote)),
        }
    }
}
