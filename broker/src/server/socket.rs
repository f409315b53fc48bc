//! Socket reads and writes that do not depend on glommio delivering a readiness event.
//!
//! glommio 0.9 reads a socket with a non-blocking `recv` and, when that would block, arms an
//! io_uring `POLL_ADD` and waits for it; while that poll is armed it does not try `recv` again.
//! With one busy client we saw that poll never complete although the socket held megabytes of
//! unread data (the shard asleep, the `POLL_ADD` still pending in the kernel), which stalled the
//! connection until the client timed out 30 s later; under load, completions also arrive tens of
//! milliseconds late (`ARCHITECTURE.md`). Writes have the same shape (`POLLOUT`).
//!
//! So every wait on the socket is bounded by a watchdog period (doubling while the socket stays
//! quiet, up to `SOCKET_WATCH_BACKOFF_MAX` times): when it expires, the reader tries the `recv`
//! itself (`MSG_DONTWAIT`, on the raw descriptor) and the writer re-polls its write (glommio
//! retries `send` on every poll). A readiness event that does arrive still wakes
//! the task at once; the watchdog only bounds how long a lost one can hold a connection. Each
//! recovery is counted (`WatchStats`); the first one on a shard (debug) and the totals when the
//! shard stops (info) are logged, so the lost events stay visible instead of hidden. Not at warn
//! level: under load most are late events, which the default log should not shout about.

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_lite::FutureExt;

use crate::limits::{
    SENDFILE_BACKOFF_MIN, SENDFILE_CALL_BYTES_MAX, SENDFILE_WAIT_MAX, SOCKET_WATCH_BACKOFF_MAX,
};

/// Lost readiness events recovered on one shard.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Reads the watchdog completed with data glommio had not reported.
    pub reads_recovered: Cell<u64>,
    /// Writes the watchdog re-polled into progress while the socket was writable.
    pub writes_recovered: Cell<u64>,
    /// Whether the first recovery on this shard has been logged.
    logged: Cell<bool>,
    /// The shard these are of (for the log line).
    shard: u32,
}

impl WatchStats {
    pub fn for_shard(shard: u32) -> WatchStats {
        WatchStats {
            shard,
            ..WatchStats::default()
        }
    }
}

/// One connection's socket descriptor and watchdog period.
#[derive(Debug, Clone)]
pub struct Watch {
    fd: RawFd,
    period: Duration,
    stats: Rc<WatchStats>,
}

impl Watch {
    pub fn new(fd: RawFd, period: Duration, stats: Rc<WatchStats>) -> Watch {
        Watch { fd, period, stats }
    }

    fn recovered(&self, what: &'static str) {
        if !self.stats.logged.replace(true) {
            tracing::info!(
                shard = self.stats.shard,
                fd = self.fd,
                what,
                reads = self.stats.reads_recovered.get(),
                writes = self.stats.writes_recovered.get(),
                "socket readiness event not delivered; recovered by the watchdog \
                 (further ones are counted, not logged)"
            );
        }
    }

    /// Reads at least one byte into `buf` (0 only at end of stream).
    pub async fn read<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let mut period = self.period;
        loop {
            let polled = async { Some(reader.read(buf).await) }.or(async move {
                glommio::timer::sleep(period).await;
                None
            });
            period = (period * 2).min(self.period * SOCKET_WATCH_BACKOFF_MAX);
            if let Some(result) = polled.await {
                return result;
            }
            // SAFETY: `buf` is a valid, writable slice of `buf.len()` bytes for the call.
            let n = unsafe {
                libc::recv(
                    self.fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                let stats = &self.stats.reads_recovered;
                stats.set(stats.get() + 1);
                self.recovered("read");
                return Ok(n as usize);
            }
            if n == 0 {
                return Ok(0);
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => continue,
                _ => return Err(error),
            }
        }
    }

    /// Fills `buf` completely.
    pub async fn read_exact<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        buf: &mut [u8],
    ) -> io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(reader, &mut buf[filled..]).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => filled += n,
            }
        }
        Ok(())
    }

    /// Writes all of `buf`.
    pub async fn write_all<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        buf: &[u8],
    ) -> io::Result<()> {
        let mut written = 0;
        let mut period = self.period;
        while written < buf.len() {
            let polled = async { Some(writer.write(&buf[written..]).await) }.or(async move {
                glommio::timer::sleep(period).await;
                None
            });
            period = (period * 2).min(self.period * SOCKET_WATCH_BACKOFF_MAX);
            match polled.await {
                Some(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Some(Ok(n)) => written += n,
                Some(Err(error)) => return Err(error),
                None => {
                    // A client that does not read keeps the socket full, which is ordinary
                    // backpressure: only a writable socket means an event was lost.
                    if self.writable() {
                        let stats = &self.stats.writes_recovered;
                        stats.set(stats.get() + 1);
                        self.recovered("write");
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes the socket non-blocking for everyone (glommio's own calls pass `MSG_DONTWAIT`
    /// anyway), so `sendfile` on a helper thread returns instead of waiting for a slow reader.
    pub fn set_nonblocking(&self) -> io::Result<()> {
        // SAFETY: F_GETFL/F_SETFL on a descriptor this connection owns.
        let flags = unsafe { libc::fcntl(self.fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(self.fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends `len` bytes of `file` from `position` with `sendfile(2)`: file pages go to the
    /// socket without passing through this process. `sendfile` reads the file synchronously
    /// (through the page cache), which would stall the whole shard, so it runs
    /// on the executor's blocking-thread pool, on duplicated descriptors (the shard may close
    /// its own meanwhile; a duplicate keeps the same file open). One call sends at most
    /// `SENDFILE_CALL_BYTES_MAX` and waits at most `SENDFILE_WAIT_MAX` for a full socket, so other
    /// users of the pool wait little; a reader that stays slow is waited for here, on timers.
    pub async fn send_file(
        &self,
        file: RawFd,
        mut position: u64,
        mut len: usize,
    ) -> io::Result<()> {
        let mut period = SENDFILE_BACKOFF_MIN;
        while len > 0 {
            let chunk = len.min(SENDFILE_CALL_BYTES_MAX);
            let socket = Dup::of(self.fd)?;
            let source = Dup::of(file)?;
            let sent = glommio::executor()
                .spawn_blocking(move || send_file_blocking(&socket, &source, position, chunk))
                .await?;
            if sent == 0 {
                // The reader is not keeping up: back off on timers, not on the pool thread.
                glommio::timer::sleep(period).await;
                period = (period * 2).min(self.period.max(SENDFILE_BACKOFF_MIN));
                continue;
            }
            period = SENDFILE_BACKOFF_MIN;
            position += sent as u64;
            len -= sent;
        }
        Ok(())
    }

    fn writable(&self) -> bool {
        let mut pollfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout: never blocks.
        let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
        ready == 1 && pollfd.revents & libc::POLLOUT != 0
    }
}

/// A duplicated descriptor, closed on drop.
#[derive(Debug)]
struct Dup(RawFd);

impl Dup {
    fn of(fd: RawFd) -> io::Result<Dup> {
        // SAFETY: duplicating a descriptor we hold open; the copy is owned by the `Dup`.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Dup(copy))
    }
}

impl Drop for Dup {
    fn drop(&mut self) {
        // SAFETY: the `Dup` owns this descriptor and closes it once.
        unsafe { libc::close(self.0) };
    }
}

/// Runs on the blocking pool: sends up to `len` bytes from `position`, waiting at most
/// `SENDFILE_WAIT_MAX` in all for the socket to accept more. Returns the bytes sent.
fn send_file_blocking(socket: &Dup, file: &Dup, position: u64, len: usize) -> io::Result<usize> {
    // Segment files are open with O_DIRECT, which `sendfile` can only read in aligned blocks;
    // batches are not aligned. Reopen the same file (even if retention unlinked it meanwhile)
    // for ordinary page-cache reads. The kernel drops cached pages that a later direct write
    // overwrites, so the two views stay coherent.
    let buffered = std::fs::File::open(format!("/proc/self/fd/{}", file.0))?;
    let source = std::os::fd::AsRawFd::as_raw_fd(&buffered);
    // Start reading the whole span, and as much again after it (the next fetch of a consumer
    // reading on), in the background: the page cache's default readahead is 128 KiB, and
    // `sendfile` would otherwise wait for one such read after another.
    // SAFETY: advice on a valid descriptor; it reads nothing into our memory.
    unsafe {
        libc::posix_fadvise(
            source,
            position as libc::off_t,
            (2 * len) as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        )
    };
    let deadline = std::time::Instant::now() + SENDFILE_WAIT_MAX;
    let mut sent = 0usize;
    while sent < len {
        let mut offset = (position + sent as u64) as libc::off_t;
        // SAFETY: valid descriptors owned by the caller; `offset` is a valid pointer.
        let n = unsafe { libc::sendfile(socket.0, source, &mut offset, len - sent) };
        if n > 0 {
            sent += n as usize;
            continue;
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "segment file ended inside a located span",
            ));
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let mut pollfd = libc::pollfd {
                    fd: socket.0,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; bounded timeout.
                unsafe { libc::poll(&mut pollfd, 1, left.as_millis().max(1) as i32) };
            }
            _ => return Err(error),
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A reader whose readiness event is lost: it is never ready, and it never wakes anyone.
    struct LostEvent;

    impl AsyncRead for LostEvent {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            Poll::Pending
        }
    }

    fn on_glommio<T: Send + 'static>(
        f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
    ) -> T {
        crate::shard::spawn_executor(glommio::LocalExecutorBuilder::default(), "test", f)
            .expect("spawn executor")
            .join()
            .unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn a_lost_read_event_is_recovered_by_the_watchdog() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        client.write_all(b"hello, sluice").expect("write");
        let fd = server.as_raw_fd();
        let (got, stats) = on_glommio(move || {
            Box::pin(async move {
                let stats = Rc::new(WatchStats::default());
                let watch = Watch::new(fd, Duration::from_millis(1), Rc::clone(&stats));
                let mut buf = [0u8; 13];
                watch
                    .read_exact(&mut LostEvent, &mut buf)
                    .await
                    .expect("read");
                (buf, stats.reads_recovered.get())
            })
        });
        assert_eq!(&got, b"hello, sluice");
        assert!(stats >= 1, "the data came through the watchdog");
        drop(server);
    }

    #[test]
    fn a_closed_peer_reads_as_end_of_stream_through_the_watchdog() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        drop(client);
        let fd = server.as_raw_fd();
        let outcome = on_glommio(move || {
            Box::pin(async move {
                let watch = Watch::new(fd, Duration::from_millis(1), Rc::default());
                let mut buf = [0u8; 4];
                watch
                    .read_exact(&mut LostEvent, &mut buf)
                    .await
                    .map_err(|e| e.kind())
            })
        });
        assert_eq!(outcome, Err(io::ErrorKind::UnexpectedEof));
        drop(server);
    }

    #[test]
    fn reads_through_glommio_fill_the_buffer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr");
        let writer = std::thread::spawn(move || {
            let (mut server, _) = listener.accept().expect("accept");
            server.write_all(&[7u8; 100_000]).expect("write");
        });
        let total = on_glommio(move || {
            Box::pin(async move {
                let stream = glommio::net::TcpStream::connect(address)
                    .await
                    .expect("connect");
                let stats = Rc::new(WatchStats::default());
                let watch = Watch::new(
                    stream.as_raw_fd(),
                    Duration::from_secs(5),
                    Rc::clone(&stats),
                );
                let mut stream = stream;
                let mut buf = vec![0u8; 100_000];
                watch.read_exact(&mut stream, &mut buf).await.expect("read");
                buf.iter().map(|b| u64::from(*b)).sum::<u64>()
            })
        });
        writer.join().expect("writer");
        assert_eq!(total, 700_000);
    }
}
