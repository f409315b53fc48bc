//! The metrics endpoint: `GET /metrics` over HTTP/1.1 on the metadata thread's tokio runtime.
//! One request per connection (`Connection: close`), one scrape at a time; a request head is
//! read within `METRICS_REQUEST_WAIT` and at most `METRICS_REQUEST_BYTES_MAX` bytes long.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::exposition::Scrape;
use super::snapshot::{MetadataSnapshot, ShardSnapshot, SnapshotRequest};
use crate::limits::{
    METRICS_CONNECTIONS_MAX, METRICS_REQUEST_BYTES_MAX, METRICS_REQUEST_WAIT, METRICS_SHARD_WAIT,
};
use crate::metadata::{ClusterState, NodeId};
use crate::server::RaftStatus;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape reads: every shard's snapshot channel and the metadata watches.
#[derive(Debug, Clone)]
pub struct Scraper {
    pub node_id: NodeId,
    pub shards: Vec<flume::Sender<SnapshotRequest>>,
    pub state: watch::Receiver<Arc<ClusterState>>,
    pub raft: watch::Receiver<RaftStatus>,
}

impl Scraper {
    /// Gathers every shard's snapshot (asked all at once, each waited for at most
    /// `METRICS_SHARD_WAIT`) and the metadata's, and encodes them.
    pub async fn scrape(&self) -> String {
        let mut replies = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let (tx, rx) = flume::bounded::<ShardSnapshot>(1);
            if shard.try_send(tx).is_ok() {
                replies.push(rx);
            }
        }
        let mut shards = Vec::with_capacity(replies.len());
        for rx in replies {
            if let Ok(Ok(snapshot)) =
                tokio::time::timeout(METRICS_SHARD_WAIT, rx.recv_async()).await
            {
                shards.push(snapshot);
            }
        }
        shards.sort_by_key(|s| s.shard);
        let metadata = MetadataSnapshot::new(
            self.node_id,
            *self.raft.borrow(),
            &self.state.borrow().clone(),
        );
        Scrape {
            shards_missing: (self.shards.len() - shards.len()) as u64,
            shards,
            metadata,
        }
        .encode()
    }
}

/// Serves `/metrics` on `listener` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, scraper: Scraper) {
    let scraper = Arc::new(scraper);
    // One scrape at a time: a second waits rather than doubling the shards' work.
    let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    let connections = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS_MAX));
    loop {
        let Ok(permit) = Arc::clone(&connections).acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let scraper = Arc::clone(&scraper);
        let lock = Arc::clone(&one_at_a_time);
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &scraper, &lock).await {
                tracing::debug!(%error, "metrics: request failed");
            }
            drop(permit);
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

fn route(head: &[u8]) -> Route {
    let Ok(text) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Route::BadRequest;
    };
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics,
        ("GET", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    scraper: &Scraper,
    lock: &tokio::sync::Mutex<()>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > METRICS_REQUEST_BYTES_MAX {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(METRICS_REQUEST_WAIT, read).await {
        Ok(result) => result?,
        Err(_) => return Ok(()),
    }
    let (status, content_type, body) = match route(&head) {
        Route::Metrics => {
            let _one = lock.lock().await;
            ("200 OK", CONTENT_TYPE, scraper.scrape().await)
        }
        Route::NotFound => (
            "404 Not Found",
            "text/plain",
            "not found; metrics are at /metrics\n".into(),
        ),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET is served\n".into(),
        ),
        Route::BadRequest => ("400 Bad Request", "text/plain", "bad request\n".into()),
    };
    let response_head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response_head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"\xff\xfe"), Route::BadRequest);
        assert_eq!(route(b""), Route::BadRequest);
    }
}
