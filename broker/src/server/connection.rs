//! One client connection on a shard: reading frames, dispatching requests, writing responses in
//! request order.
//!
//! The reader handles frames one after another. Produce appends happen in the reader (so a
//! connection's batches reach each log in the order they were sent, and a full write buffer
//! stops the reader: backpressure reaches the producer as a socket that is not read). Waiting for
//! durability, long-poll fetches and everything else run as tasks whose responses a writer task
//! sends back in request order. At most `IN_FLIGHT_REQUESTS_MAX` requests are in flight per
//! connection, and the bytes of frames being handled count against the shard's
//! `SHARD_BUFFERED_BYTES_MAX`.

use std::os::fd::AsRawFd;
use std::rc::Rc;

use futures_lite::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use futures_lite::FutureExt;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use glommio::task::JoinHandle;
use sluice_protocol::native::{split_request, ApiKey, FrameError};
use std::time::Instant;

use super::api::{dispatch, DispatchError};
use super::context::{frame_error, Response, ResponsePart, ShardContext};
use super::socket::Watch;
use crate::limits::{FRAME_BYTES_MAX, IN_FLIGHT_REQUESTS_MAX};
use crate::notify::Listener;
use crate::storage::SendChunk;

/// A request being handled: the task that yields its response, the API it asked for (when
/// its frame could be read) and when its frame arrived.
pub(crate) struct Pending {
    pub task: JoinHandle<Option<Response>>,
    /// The API, for the request metrics.
    pub api: Option<RequestApi>,
    pub started: Instant,
}

/// Which protocol's API a request asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RequestApi {
    /// A native API's raw key.
    Native(u16),
    Kafka(kafka_protocol::messages::ApiKey),
}

fn frame_error_name(code: FrameError) -> &'static str {
    match code {
        FrameError::None => "None",
        FrameError::UnsupportedApi => "UnsupportedApi",
        FrameError::UnsupportedVersion => "UnsupportedVersion",
        FrameError::MalformedControl => "MalformedControl",
        FrameError::FrameTooLarge => "FrameTooLarge",
        FrameError::Throttled => "Throttled",
    }
}

/// A connection set up for serving: its read half and watchdog, where its requests go, and
/// the task that writes their responses in order.
pub(crate) struct Opened {
    pub reader: ReadHalf<TcpStream>,
    pub watch: Watch,
    pub pending: LocalSender<Pending>,
    pub writer: JoinHandle<()>,
}

/// Sets up an accepted connection (no Nagle, a non-blocking socket under the watchdog, the
/// response writer); `None` if the socket cannot be used. Shared by both listeners.
pub(crate) fn open(ctx: &Rc<ShardContext>, stream: TcpStream) -> Option<Opened> {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "set_nodelay");
    }
    let watch = Watch::new(
        stream.as_raw_fd(),
        ctx.socket_watch,
        Rc::clone(&ctx.watch_stats),
    );
    if let Err(error) = watch.set_nonblocking() {
        tracing::debug!(%error, "cannot make the socket non-blocking");
        return None;
    }
    let (reader, writer) = futures_lite::io::split(stream);
    let (pending, pending_rx) = local_channel::new_bounded::<Pending>(IN_FLIGHT_REQUESTS_MAX);
    let writer = spawn_writer(Rc::clone(ctx), watch.clone(), writer, pending_rx);
    Some(Opened {
        reader,
        watch,
        pending,
        writer,
    })
}

/// Serves one connection until the client closes it, the framing breaks, or the shard stops.
pub async fn serve(ctx: Rc<ShardContext>, stream: TcpStream) {
    let Some(Opened {
        mut reader,
        watch,
        pending: pending_tx,
        writer: writer_task,
    }) = open(&ctx, stream)
    else {
        return;
    };
    loop {
        let stop: Listener = ctx.stop.listen();
        let mut len_bytes = [0u8; 4];
        let read = async { Some(watch.read_exact(&mut reader, &mut len_bytes).await) }.or(async {
            stop.await;
            None
        });
        match read.await {
            Some(Ok(())) => {}
            Some(Err(_)) | None => break,
        }
        let started = Instant::now();
        let frame_len = u32::from_le_bytes(len_bytes) as usize;
        if !(12..=FRAME_BYTES_MAX).contains(&frame_len) {
            // The framing itself is broken: say so and close.
            ctx.metrics.error(None, "FrameTooLarge");
            let task =
                glommio::spawn_local(
                    async move { Some(frame_error(0, FrameError::FrameTooLarge)) },
                )
                .detach();
            let _ = pending_tx
                .send(Pending {
                    task,
                    api: None,
                    started,
                })
                .await;
            break;
        }
        let Ok(permit) = ctx.buffered.acquire_static_permit(frame_len as u64).await else {
            break;
        };
        let mut frame = vec![0u8; frame_len];
        if watch.read_exact(&mut reader, &mut frame).await.is_err() {
            break;
        }
        let mut api_key = None;
        let task = match split_request(&frame) {
            Err(_) => {
                ctx.metrics.error(None, "MalformedControl");
                glommio::spawn_local(
                    async move { Some(frame_error(0, FrameError::MalformedControl)) },
                )
                .detach()
            }
            Ok(parsed) => {
                let header = parsed.header;
                api_key = Some(header.api_key);
                match dispatch(&ctx, header, parsed.control, parsed.data).await {
                    Ok(task) => task,
                    Err(error) => {
                        let code = match error {
                            DispatchError::UnsupportedApi => FrameError::UnsupportedApi,
                            DispatchError::UnsupportedVersion => FrameError::UnsupportedVersion,
                            DispatchError::Malformed(error) => {
                                tracing::debug!(%error, "malformed request");
                                FrameError::MalformedControl
                            }
                        };
                        ctx.metrics
                            .error(ApiKey::from_u16(header.api_key), frame_error_name(code));
                        let id = header.correlation_id;
                        glommio::spawn_local(async move { Some(frame_error(id, code)) }).detach()
                    }
                }
            }
        };
        drop(frame);
        drop(permit);
        let pending = Pending {
            task,
            api: api_key.map(RequestApi::Native),
            started,
        };
        if pending_tx.send(pending).await.is_err() {
            break;
        }
    }
    drop(pending_tx);
    let _ = writer_task.await;
}

/// Starts the task that sends a connection's responses in request order: it awaits each
/// pending request's task in turn and writes its head, then its data chunks (memory chunks as
/// they are, file spans with `sendfile`). Shared by the native and the Kafka listeners.
fn spawn_writer(
    ctx: Rc<ShardContext>,
    watch: Watch,
    mut writer: WriteHalf<TcpStream>,
    pending_rx: LocalReceiver<Pending>,
) -> JoinHandle<()> {
    glommio::spawn_local(async move {
        let metrics = &ctx.metrics;
        while let Some(pending) = pending_rx.recv().await {
            let Some(Some(response)) = pending.task.await else {
                // No response (a produce with acks = None): done when handled.
                if let Some(api) = pending.api {
                    metrics.request_done(api, pending.started);
                }
                continue;
            };
            let (mut memory, mut file) = (response.head.len() as u64, 0u64);
            if watch.write_all(&mut writer, &response.head).await.is_err() {
                return;
            }
            for chunk in &response.data {
                let sent = match chunk {
                    ResponsePart::Bytes(bytes) => {
                        memory += bytes.len() as u64;
                        watch.write_all(&mut writer, bytes).await
                    }
                    ResponsePart::Send(SendChunk::Memory(bytes)) => {
                        memory += bytes.as_bytes().len() as u64;
                        watch.write_all(&mut writer, bytes.as_bytes()).await
                    }
                    ResponsePart::Send(SendChunk::File(range)) => {
                        file += range.len as u64;
                        watch
                            .send_file(range.file.as_raw_fd(), range.position, range.len)
                            .await
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
            if writer.flush().await.is_err() {
                return;
            }
            metrics.sent(memory, file);
            if let Some(api) = pending.api {
                metrics.request_done(api, pending.started);
            }
        }
        let _ = writer.close().await;
    })
    .detach()
}
