//! One TCP connection to a broker (or one of its shards), multiplexing pipelined requests.
//!
//! A writer task sends frames in the order callers queued them; a reader task matches responses
//! to requests (the broker answers in request order) and hands each to its caller. A semaphore
//! bounds the requests in flight. Any I/O error, a response out of order or a request timeout
//! closes the connection and fails everything pending on it: with ordered responses there is no
//! way to resynchronize, and the pool opens a fresh connection on the next request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_protocol::native::{
    decode_control, encode_control, encode_request, split_response, ApiKey, ApiVersionsRequest,
    ApiVersionsResponse, DecodeControl, EncodeControl, FrameError, FRAME_HEADER_BYTES,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};
use crate::limits::{RESPONSE_FRAME_BYTES_MAX, WRITE_BUFFER_BYTES};

/// A decoded response frame: the control part is decoded by the caller, the data part (record
/// batches of a fetch) is kept as one shared buffer so records can be sliced out of it.
#[derive(Debug)]
pub(crate) struct Response {
    frame: Bytes,
    control: std::ops::Range<usize>,
    data: std::ops::Range<usize>,
}

impl Response {
    pub(crate) fn control<T: DecodeControl>(&self, address: &str) -> Result<T> {
        decode_control(&self.frame[self.control.clone()]).map_err(|e| Error::Protocol {
            address: address.to_owned(),
            reason: e.to_string(),
        })
    }

    pub(crate) fn data(&self) -> Bytes {
        self.frame.slice(self.data.clone())
    }
}

/// A frame waiting for the writer task.
struct Outgoing {
    head: Vec<u8>,
    data: Vec<Bytes>,
    /// Told when the frame has been handed to the socket (for requests without a response).
    written: Option<oneshot::Sender<()>>,
    /// The in-flight slot of a request without a response, held until it is written (a request
    /// with a response holds its slot in `pending` until the response arrives).
    _slot: Option<OwnedSemaphorePermit>,
}

struct Pending {
    correlation_id: u32,
    reply: oneshot::Sender<Result<Response>>,
    _permit: OwnedSemaphorePermit,
}

struct State {
    next_correlation_id: u32,
    pending: VecDeque<Pending>,
    /// Why the connection closed, once it has.
    closed: Option<Error>,
}

/// A shared, pipelined connection. Cheap to clone through `Arc`.
#[derive(Debug)]
pub(crate) struct Connection {
    address: String,
    /// The broker and shard serving this connection (from the handshake).
    pub(crate) broker_id: u64,
    pub(crate) shard: u32,
    inner: Arc<Inner>,
}

struct Inner {
    address: String,
    state: Mutex<State>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    in_flight: Arc<Semaphore>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue half-updated in a way that
        // matters more than the panic itself; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connection: fails every pending request with `error` and stops the tasks.
    fn close(&self, error: Error) {
        let pending = {
            let mut state = self.lock();
            if state.closed.is_none() {
                state.closed = Some(error.clone());
            }
            std::mem::take(&mut state.pending)
        };
        for p in pending {
            let _ = p.reply.send(Err(error.clone()));
        }
        self.in_flight.close();
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.inner.close(Error::Connection {
            address: self.address.clone(),
            reason: "connection dropped by the client".into(),
        });
    }
}

fn io_error(address: &str, what: &str, error: std::io::Error) -> Error {
    Error::Connection {
        address: address.to_owned(),
        reason: format!("{what}: {error}"),
    }
}

impl Connection {
    /// Connects and runs the version handshake; fails if the broker lacks a needed API version.
    pub(crate) async fn open(
        address: &str,
        client_id: &str,
        in_flight_max: usize,
        timeout: Duration,
    ) -> Result<Connection> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| Error::Timeout {
                address: address.to_owned(),
                after: timeout,
            })?
            .map_err(|e| io_error(address, "connect", e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| io_error(address, "set TCP_NODELAY", e))?;
        let (read, write) = stream.into_split();
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            address: address.to_owned(),
            state: Mutex::new(State {
                next_correlation_id: 1,
                pending: VecDeque::new(),
                closed: None,
            }),
            outgoing,
            in_flight: Arc::new(Semaphore::new(in_flight_max.max(1))),
            tasks: Mutex::new(Vec::new()),
        });
        let writer = tokio::spawn(write_loop(Arc::downgrade(&inner), write, outgoing_rx));
        let reader = tokio::spawn(read_loop(Arc::downgrade(&inner), read));
        inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([writer, reader]);
        let mut connection = Connection {
            address: address.to_owned(),
            broker_id: 0,
            shard: 0,
            inner,
        };
        let versions: ApiVersionsResponse = connection
            .call(
                ApiKey::ApiVersions,
                &ApiVersionsRequest {
                    client_id: client_id.to_owned(),
                },
                timeout,
            )
            .await?;
        for api in [
            ApiKey::Metadata,
            ApiKey::Produce,
            ApiKey::Fetch,
            ApiKey::ListOffsets,
        ] {
            let ours = api.versions().1;
            let supported = versions
                .apis
                .iter()
                .any(|r| r.key == api as u16 && r.min <= ours && ours <= r.max);
            if !supported {
                return Err(Error::UnsupportedVersion {
                    address: address.to_owned(),
                    api: api_name(api),
                    version: ours,
                });
            }
        }
        connection.broker_id = versions.broker_id;
        connection.shard = versions.shard;
        Ok(connection)
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.lock().closed.is_some()
    }

    /// Waits for room for one more request in flight. Holding the permit reserves the slot;
    /// [`Connection::enqueue`] consumes it.
    pub(crate) async fn reserve(&self) -> Result<OwnedSemaphorePermit> {
        Arc::clone(&self.inner.in_flight)
            .acquire_owned()
            .await
            .map_err(|_| self.closed_error())
    }

    /// A slot for one more request, if one is free now.
    pub(crate) fn try_reserve(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.inner.in_flight).try_acquire_owned().ok()
    }

    fn closed_error(&self) -> Error {
        self.inner
            .lock()
            .closed
            .clone()
            .unwrap_or(Error::Connection {
                address: self.address.clone(),
                reason: "closed".into(),
            })
    }

    /// Queues a request frame without waiting: frames go out in the order `enqueue` is called.
    /// The returned receiver yields the response (or, when `expect_response` is false, nothing is
    /// returned and the permit is released once the frame is written).
    pub(crate) fn enqueue<T: EncodeControl>(
        &self,
        permit: OwnedSemaphorePermit,
        api: ApiKey,
        control: &T,
        data: Vec<Bytes>,
        expect_response: bool,
    ) -> Result<Enqueued> {
        let control = encode_control(control);
        let data_len: usize = data.iter().map(Bytes::len).sum();
        let mut state = self.inner.lock();
        if let Some(error) = &state.closed {
            return Err(error.clone());
        }
        let correlation_id = state.next_correlation_id;
        state.next_correlation_id = state.next_correlation_id.wrapping_add(1);
        let head = encode_request(api, api.versions().1, correlation_id, &control, data_len);
        if expect_response {
            let (reply, response) = oneshot::channel();
            state.pending.push_back(Pending {
                correlation_id,
                reply,
                _permit: permit,
            });
            self.send_outgoing(Outgoing {
                head,
                data,
                written: None,
                _slot: None,
            })?;
            Ok(Enqueued::Response(response))
        } else {
            let (written, done) = oneshot::channel();
            self.send_outgoing(Outgoing {
                head,
                data,
                written: Some(written),
                _slot: Some(permit),
            })?;
            Ok(Enqueued::Written(done))
        }
    }

    fn send_outgoing(&self, frame: Outgoing) -> Result<()> {
        self.inner
            .outgoing
            .send(frame)
            .map_err(|_| Error::Connection {
                address: self.address.clone(),
                reason: "writer stopped".into(),
            })
    }

    /// Sends one request and waits for its decoded response, closing the connection on timeout.
    pub(crate) async fn call<Req: EncodeControl, Resp: DecodeControl>(
        &self,
        api: ApiKey,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp> {
        let response = self.call_raw(api, request, Vec::new(), timeout).await?;
        response.control(&self.address)
    }

    /// Like [`Connection::call`], returning the whole response (control and data).
    pub(crate) async fn call_raw<Req: EncodeControl>(
        &self,
        api: ApiKey,
        request: &Req,
        data: Vec<Bytes>,
        timeout: Duration,
    ) -> Result<Response> {
        let permit = tokio::time::timeout(timeout, self.reserve())
            .await
            .map_err(|_| Error::Timeout {
                address: self.address.clone(),
                after: timeout,
            })??;
        match self.enqueue(permit, api, request, data, true)? {
            Enqueued::Response(response) => self.wait(response, timeout).await,
            Enqueued::Written(_) => unreachable!("a response was asked for"),
        }
    }

    /// Waits for a queued request's response, closing the connection if it does not come in time.
    pub(crate) async fn wait(
        &self,
        response: oneshot::Receiver<Result<Response>>,
        timeout: Duration,
    ) -> Result<Response> {
        wait_response(&self.inner, &self.address, response, timeout).await
    }
}

async fn wait_response(
    inner: &Inner,
    address: &str,
    response: oneshot::Receiver<Result<Response>>,
    timeout: Duration,
) -> Result<Response> {
    match tokio::time::timeout(timeout, response).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(Error::Connection {
            address: address.to_owned(),
            reason: "closed".into(),
        }),
        Err(_) => {
            let error = Error::Timeout {
                address: address.to_owned(),
                after: timeout,
            };
            inner.close(error.clone());
            Err(error)
        }
    }
}

/// What [`Connection::enqueue`] hands back.
#[derive(Debug)]
pub(crate) enum Enqueued {
    Response(oneshot::Receiver<Result<Response>>),
    Written(oneshot::Receiver<()>),
}

async fn write_loop(
    inner: std::sync::Weak<Inner>,
    write: OwnedWriteHalf,
    mut frames: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write);
    let mut written = Vec::new();
    while let Some(frame) = frames.recv().await {
        let mut next = Some(frame);
        let mut result = Ok(());
        // Write everything queued, then flush once: many small requests share a syscall.
        while let Some(frame) = next.take() {
            result = write_frame(&mut writer, &frame).await;
            if result.is_err() {
                break;
            }
            written.extend(frame.written);
            next = frames.try_recv().ok();
        }
        if result.is_ok() {
            result = writer.flush().await;
        }
        for w in written.drain(..) {
            let _ = w.send(());
        }
        if let Err(error) = result {
            if let Some(inner) = inner.upgrade() {
                let address = inner.address.clone();
                inner.close(io_error(&address, "write", error));
            }
            return;
        }
    }
}

async fn write_frame(
    writer: &mut BufWriter<OwnedWriteHalf>,
    frame: &Outgoing,
) -> std::io::Result<()> {
    writer.write_all(&frame.head).await?;
    for part in &frame.data {
        writer.write_all(part).await?;
    }
    Ok(())
}

async fn read_loop(inner: std::sync::Weak<Inner>, mut read: OwnedReadHalf) {
    let error = loop {
        let frame = match read_frame(&mut read).await {
            Ok(frame) => frame,
            Err(reason) => break reason,
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let next = inner.lock().pending.pop_front();
        let Some(pending) = next else {
            break "a response nobody asked for".to_owned();
        };
        let decoded = decode_frame(&inner.address, frame);
        match decoded {
            Ok((correlation_id, response)) if correlation_id == pending.correlation_id => {
                let _ = pending.reply.send(response);
            }
            Ok((correlation_id, _)) => {
                let _ = pending.reply.send(Err(Error::Protocol {
                    address: inner.address.clone(),
                    reason: format!(
                        "response {correlation_id} out of order (expected {})",
                        pending.correlation_id
                    ),
                }));
                break "responses out of order".to_owned();
            }
            Err(error) => {
                let reason = error.to_string();
                let _ = pending.reply.send(Err(error));
                break reason;
            }
        }
    };
    if let Some(inner) = inner.upgrade() {
        let address = inner.address.clone();
        inner.close(Error::Connection {
            address,
            reason: error,
        });
    }
}

/// Reads one length-prefixed frame (the bytes after the length field).
async fn read_frame(read: &mut OwnedReadHalf) -> std::result::Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    read.read_exact(&mut len)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let len = u32::from_le_bytes(len) as usize;
    if len + 4 < FRAME_HEADER_BYTES || len > RESPONSE_FRAME_BYTES_MAX {
        return Err(format!("response frame of {len} bytes is out of bounds"));
    }
    let mut frame = vec![0u8; len];
    read.read_exact(&mut frame)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(frame)
}

/// Splits a frame into its parts: the correlation id and either the response or the
/// frame-level error the broker answered with.
fn decode_frame(address: &str, frame: Vec<u8>) -> Result<(u32, Result<Response>)> {
    let protocol = |reason: String| Error::Protocol {
        address: address.to_owned(),
        reason,
    };
    let (correlation_id, frame_error, control, data) = {
        let parts = split_response(&frame).map_err(|e| protocol(e.to_string()))?;
        let control_start = parts.control.as_ptr() as usize - frame.as_ptr() as usize;
        let data_start = parts.data.as_ptr() as usize - frame.as_ptr() as usize;
        (
            parts.correlation_id,
            parts.frame_error,
            control_start..control_start + parts.control.len(),
            data_start..data_start + parts.data.len(),
        )
    };
    let response = match FrameError::from_u16(frame_error) {
        Some(FrameError::None) => Ok(Response {
            frame: Bytes::from(frame),
            control,
            data,
        }),
        Some(FrameError::Throttled) => Err(Error::broker(
            sluice_protocol::native::ErrorCode::Unavailable,
            "request (throttled)",
        )),
        Some(error) => Err(protocol(format!("frame refused: {error:?}"))),
        None => Err(protocol(format!("unknown frame error {frame_error}"))),
    };
    Ok((correlation_id, response))
}

pub(crate) fn api_name(api: ApiKey) -> &'static str {
    api.name()
}
