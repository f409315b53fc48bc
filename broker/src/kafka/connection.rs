//! One Kafka client connection on a shard: frames in, responses out in request order.
//!
//! Like the native connection (`server::connection`), whose response writer it shares: the
//! reader handles frames one after another (a produce appends in it, so backpressure reaches
//! the client as a socket that is not read), every other request runs as a task, and at most
//! `IN_FLIGHT_REQUESTS_MAX` requests are in flight. A frame that is too short or too long, a
//! header or body that does not decode, an unknown API or a version not served closes the
//! connection, as a Kafka broker does (only ApiVersions answers a version it does not serve);
//! the responses to the requests before it are still sent.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::FutureExt;
use glommio::channels::local_channel;
use glommio::net::TcpStream;

use crate::limits::{IN_FLIGHT_REQUESTS_MAX, KAFKA_FRAME_BYTES_MAX, KAFKA_FRAME_BYTES_MIN};
use crate::notify::Listener;
use crate::server::connection::{spawn_writer, Pending};
use crate::server::context::ShardContext;
use crate::server::socket::Watch;

/// Serves one Kafka connection until the client closes it, a frame is refused, or the shard
/// stops.
pub async fn serve(ctx: Rc<ShardContext>, stream: TcpStream) {
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
        return;
    }
    let (mut reader, writer) = futures_lite::io::split(stream);
    let (pending_tx, pending_rx) = local_channel::new_bounded::<Pending>(IN_FLIGHT_REQUESTS_MAX);
    let writer_task = spawn_writer(Rc::clone(&ctx), watch.clone(), writer, pending_rx);
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
        let frame_len = i32::from_be_bytes(len_bytes);
        let Some(frame_len) = usize::try_from(frame_len)
            .ok()
            .filter(|len| (KAFKA_FRAME_BYTES_MIN..=KAFKA_FRAME_BYTES_MAX).contains(len))
        else {
            tracing::debug!(frame_len, "kafka: frame length out of bounds; closing");
            ctx.metrics.error(None, "KafkaFrameLength");
            break;
        };
        let Ok(permit) = ctx.buffered.acquire_static_permit(frame_len as u64).await else {
            break;
        };
        let mut frame = vec![0u8; frame_len];
        if watch.read_exact(&mut reader, &mut frame).await.is_err() {
            break;
        }
        let task = match super::dispatch(&ctx, bytes::Bytes::from(frame)).await {
            Ok(task) => task,
            Err(reason) => {
                tracing::debug!(%reason, "kafka: refused request; closing");
                ctx.metrics.error(None, "KafkaMalformedRequest");
                break;
            }
        };
        drop(permit);
        let pending = Pending {
            task,
            api_key: None,
            started,
        };
        if pending_tx.send(pending).await.is_err() {
            break;
        }
    }
    drop(pending_tx);
    let _ = writer_task.await;
}
