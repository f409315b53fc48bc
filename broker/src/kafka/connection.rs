//! One Kafka client connection on a shard: frames in, responses out in request order.
//!
//! Like the native connection (`server::connection`), whose response writer it shares: the
//! reader handles frames one after another (a produce appends in it, so backpressure reaches
//! the client as a socket that is not read), every other request runs as a task, and at most
//! `IN_FLIGHT_REQUESTS_MAX` requests are in flight. A frame that is too short or too long, a
//! header or body that does not decode, an unknown API or a version not served closes the
//! connection, as a Kafka broker does (only ApiVersions answers a version it does not serve);
//! the responses to the requests before it are still sent.

use std::rc::Rc;
use std::time::Instant;

use futures_lite::FutureExt;
use glommio::net::TcpStream;

use crate::limits::{KAFKA_FRAME_BYTES_MAX, KAFKA_FRAME_BYTES_MIN};
use crate::notify::Listener;
use crate::server::connection::{open, Opened, Pending, RequestApi};
use crate::server::context::ShardContext;

/// Serves one Kafka connection until the client closes it, a frame is refused, or the shard
/// stops.
pub async fn serve(ctx: Rc<ShardContext>, stream: TcpStream) {
    let client = super::Client {
        host: stream
            .peer_addr()
            .map_or(String::new(), |peer| format!("/{}", peer.ip())),
    };
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
        let (api, task) = match super::dispatch(&ctx, &client, bytes::Bytes::from(frame)).await {
            Ok(handled) => handled,
            Err(reason) => {
                tracing::debug!(%reason, "kafka: refused request; closing");
                ctx.metrics.error(None, "KafkaMalformedRequest");
                break;
            }
        };
        drop(permit);
        let pending = Pending {
            task,
            api: Some(RequestApi::Kafka(api)),
            started,
        };
        if pending_tx.send(pending).await.is_err() {
            break;
        }
    }
    drop(pending_tx);
    let _ = writer_task.await;
}
