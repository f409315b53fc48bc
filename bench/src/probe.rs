//! The machine-limits probe: raw O_DIRECT disk and loopback TCP, measured in the same run as a
//! benchmark so its results can be reported as ratios to what the hardware does.
//!
//! - write: sequential 1 MiB O_DIRECT writes to a new file, fdatasync after each (the durable
//!   write ceiling for a log that syncs every MiB);
//! - read: sequential 1 MiB O_DIRECT reads of that file (nothing comes from the page cache);
//! - TCP: one stream over 127.0.0.1, 1 MiB writes, measured on the receiver;
//! - durable 4 KiB writes: `O_DIRECT | O_DSYNC` writes of one 4 KiB block at a time (queue depth
//!   1), each over zero-filled blocks of a preallocated file, paced at a rate when one is given:
//!   what latency mode's broker asks of the device for each small flush, so the broker's own
//!   produce latency can be held against it;
//! - small writes per second ([`small_writes_per_second`]): `O_DIRECT` writes of a few KiB,
//!   no sync, from many threads at once into many preallocated files: the ceiling of a broker
//!   whose every partition's flush is a small write of its own.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

const ALIGNMENT: usize = 4096;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProbeConfig {
    pub dir: PathBuf,
    pub write_bytes: u64,
    pub read_bytes: u64,
    pub tcp_bytes: u64,
    pub block_bytes: usize,
    /// Durable 4 KiB writes timed, one at a time.
    pub dsync_writes: u64,
    /// Their pace in writes per second; `None` for back to back.
    pub dsync_rate: Option<u64>,
}

impl ProbeConfig {
    /// A short probe: 256 MiB of disk writes and reads, 1 GiB over TCP, 1 MiB blocks.
    pub fn quick(dir: PathBuf) -> Self {
        ProbeConfig {
            dir,
            write_bytes: 256 << 20,
            read_bytes: 256 << 20,
            tcp_bytes: 1 << 30,
            block_bytes: 1 << 20,
            dsync_writes: DSYNC_WRITES_DEFAULT,
            dsync_rate: None,
        }
    }

    /// Paces the durable 4 KiB probe at `rate` writes a second (a scenario's own rate), for
    /// about `DSYNC_PACED_SECONDS`.
    pub fn dsync_paced(&mut self, rate: u64) {
        self.dsync_rate = Some(rate.max(1));
        self.dsync_writes = (rate * DSYNC_PACED_SECONDS).clamp(DSYNC_WRITES_DEFAULT, 100_000);
    }
}

/// Durable 4 KiB writes timed back to back (about half a second here).
const DSYNC_WRITES_DEFAULT: u64 = 4_000;
/// Seconds a paced durable 4 KiB probe lasts: as long as a latency run measures, since the
/// device stalls for 0.1 – 0.5 s a few times a minute (a block trace shows no completion at
/// all meanwhile) and a shorter probe misses them.
const DSYNC_PACED_SECONDS: u64 = 10;
/// The probe's preallocated region for durable 4 KiB writes; it wraps around.
const DSYNC_REGION_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProbeResult {
    /// O_DIRECT sequential writes of `block_bytes`, fdatasync after each.
    pub disk_write_fdatasync_mb_s: f64,
    /// p99 of one (write + fdatasync) of `block_bytes`, in µs.
    pub disk_write_fdatasync_p99_us: u64,
    /// O_DIRECT sequential reads of the file just written.
    pub disk_read_mb_s: f64,
    /// One TCP stream over loopback.
    pub tcp_loopback_mb_s: f64,
    /// The file system of `dir`.
    pub fs_type: String,
    /// One `O_DIRECT | O_DSYNC` 4 KiB write at queue depth 1, in µs (absent in older files).
    #[serde(default)]
    pub disk_dsync_4k_p50_us: u64,
    #[serde(default)]
    pub disk_dsync_4k_p99_us: u64,
    #[serde(default)]
    pub disk_dsync_4k_p999_us: u64,
    #[serde(default)]
    pub disk_dsync_4k_writes: u64,
    /// Their pace, writes per second; null when back to back.
    #[serde(default)]
    pub disk_dsync_4k_rate: Option<u64>,
    /// Paced only: each write's latency from the time it was due (not from when it could
    /// start), p99 and p99.9 in µs: what a paced producer sees of the device. A device stall
    /// delays one write at depth 1 but every write due during it, as it delays every record.
    #[serde(default)]
    pub disk_dsync_4k_open_loop_p99_us: Option<u64>,
    #[serde(default)]
    pub disk_dsync_4k_open_loop_p999_us: Option<u64>,
    /// The longest single write, µs.
    #[serde(default)]
    pub disk_dsync_4k_max_us: u64,
}

/// An aligned, zero-initialised buffer for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> std::io::Result<AlignedBuf> {
        let layout = Layout::from_size_align(len.max(ALIGNMENT), ALIGNMENT)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                "aligned allocation failed",
            ));
        }
        Ok(AlignedBuf { ptr, layout })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// Removes the probe file however the probe ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn fs_type(dir: &std::path::Path) -> String {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return "unknown".into();
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 3).then(|| (fields[1].to_string(), fields[2].to_string()))
        })
        .filter(|(mount, _)| dir.starts_with(mount))
        .max_by_key(|(mount, _)| mount.len())
        .map_or_else(|| "unknown".into(), |(_, kind)| kind)
}

fn disk(config: &ProbeConfig) -> std::io::Result<(f64, u64, f64)> {
    let block = config.block_bytes.max(ALIGNMENT) / ALIGNMENT * ALIGNMENT;
    let path = config
        .dir
        .join(format!(".sluice-probe-{}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "{} does not support O_DIRECT (tmpfs?)",
                        config.dir.display()
                    ),
                )
            } else {
                e
            }
        })?;
    let _cleanup = TempFile(path);
    let mut buf = AlignedBuf::new(block)?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in buf.as_mut_slice().chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let blocks = (config.write_bytes / block as u64).max(1);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let started = Instant::now();
    for i in 0..blocks {
        let t0 = Instant::now();
        file.write_all_at(buf.as_slice(), i * block as u64)?;
        file.sync_data()?;
        let _ = histogram.record((t0.elapsed().as_micros() as u64).max(1));
    }
    let write_seconds = started.elapsed().as_secs_f64();
    let written = blocks * block as u64;

    let read_blocks = (config.read_bytes / block as u64).clamp(1, blocks);
    let started = Instant::now();
    for i in 0..read_blocks {
        let n = read_exact_at(&file, buf.as_mut_slice(), i * block as u64)?;
        if n != block {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "short O_DIRECT read",
            ));
        }
    }
    let read_seconds = started.elapsed().as_secs_f64();
    Ok((
        written as f64 / 1e6 / write_seconds.max(1e-9),
        histogram.value_at_quantile(0.99),
        (read_blocks * block as u64) as f64 / 1e6 / read_seconds.max(1e-9),
    ))
}

/// Durable 4 KiB writes, one at a time.
struct Dsync4k {
    /// p50, p99, p99.9 and max of each write, µs.
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    /// Paced only: p99 and p99.9 from each write's due time, µs.
    open_loop: Option<(u64, u64)>,
}

fn dsync_4k(config: &ProbeConfig) -> std::io::Result<Dsync4k> {
    let path = config
        .dir
        .join(format!(".sluice-probe-dsync-{}", std::process::id()));
    // Zero-filled first with plain writes, so every timed write overwrites allocated blocks
    // (as the broker's zero-filled active segment makes its small flushes).
    std::fs::write(&path, vec![0u8; DSYNC_REGION_BYTES as usize])?;
    let _cleanup = TempFile(path.clone());
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(&path)?;
    file.sync_all()?;
    let mut buf = AlignedBuf::new(ALIGNMENT)?;
    buf.as_mut_slice().fill(0xa5);
    let new_histogram = || {
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .map_err(|e| std::io::Error::other(e.to_string()))
    };
    let mut histogram = new_histogram()?;
    let mut open_loop = new_histogram()?;
    let interval = config
        .dsync_rate
        .map(|rate| Duration::from_secs_f64(1.0 / rate as f64));
    // SAFETY: sets this thread's own timer slack (paced sleeps as exact as the kernel can).
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    let blocks = DSYNC_REGION_BYTES / ALIGNMENT as u64;
    let started = Instant::now();
    for i in 0..config.dsync_writes.max(1) {
        let due = interval.map(|interval| started + interval * i as u32);
        if let Some(wait) = due.and_then(|due| due.checked_duration_since(Instant::now())) {
            std::thread::sleep(wait);
        }
        let t0 = Instant::now();
        file.write_all_at(buf.as_slice(), (i % blocks) * ALIGNMENT as u64)?;
        let _ = histogram.record((t0.elapsed().as_micros() as u64).max(1));
        if let Some(due) = due {
            let _ = open_loop.record((due.elapsed().as_micros() as u64).max(1));
        }
    }
    Ok(Dsync4k {
        p50: histogram.value_at_quantile(0.5),
        p99: histogram.value_at_quantile(0.99),
        p999: histogram.value_at_quantile(0.999),
        max: histogram.max(),
        open_loop: interval.map(|_| {
            (
                open_loop.value_at_quantile(0.99),
                open_loop.value_at_quantile(0.999),
            )
        }),
    })
}

fn read_exact_at(file: &File, buf: &mut [u8], position: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], position + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

fn tcp(config: &ProbeConfig) -> std::io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let total = config.tcp_bytes.max(1);
    let receiver = std::thread::spawn(move || -> std::io::Result<f64> {
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut received = 0u64;
        let mut started = None;
        while received < total {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            started.get_or_insert_with(Instant::now);
            received += n as u64;
        }
        let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        Ok(received as f64 / 1e6 / seconds.max(1e-9))
    });
    let mut stream = TcpStream::connect(address)?;
    let block = vec![0x5au8; config.block_bytes.max(1)];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(block.len() as u64) as usize;
        stream.write_all(&block[..n])?;
        sent += n as u64;
    }
    drop(stream);
    receiver
        .join()
        .map_err(|_| std::io::Error::other("TCP probe receiver panicked"))?
}

/// Runs the probe.
pub fn run(config: &ProbeConfig) -> std::io::Result<ProbeResult> {
    std::fs::create_dir_all(&config.dir)?;
    let (write, write_p99, read) = disk(config)?;
    let tcp = tcp(config)?;
    let dsync = dsync_4k(config)?;
    Ok(ProbeResult {
        disk_write_fdatasync_mb_s: write,
        disk_write_fdatasync_p99_us: write_p99,
        disk_read_mb_s: read,
        tcp_loopback_mb_s: tcp,
        fs_type: fs_type(&config.dir),
        disk_dsync_4k_p50_us: dsync.p50,
        disk_dsync_4k_p99_us: dsync.p99,
        disk_dsync_4k_p999_us: dsync.p999,
        disk_dsync_4k_writes: config.dsync_writes.max(1),
        disk_dsync_4k_rate: config.dsync_rate,
        disk_dsync_4k_open_loop_p99_us: dsync.open_loop.map(|(p99, _)| p99),
        disk_dsync_4k_open_loop_p999_us: dsync.open_loop.map(|(_, p999)| p999),
        disk_dsync_4k_max_us: dsync.max,
    })
}

/// Small direct writes at a high queue depth: `threads` threads each write `block_bytes` with
/// `O_DIRECT` (no sync), in turn over their share of `files` files allocated ahead with
/// `fallocate` (as the broker's active segments are), each file written front to back and
/// wrapping, for `duration`. Returns completed writes per second over all threads.
pub fn small_writes_per_second(
    dir: &std::path::Path,
    files: usize,
    threads: usize,
    block_bytes: usize,
    duration: Duration,
) -> std::io::Result<f64> {
    const FILE_BYTES: u64 = 1 << 20;
    let block = block_bytes.next_multiple_of(ALIGNMENT) as u64;
    let mut opened = Vec::with_capacity(files.max(1));
    let mut cleanup = Vec::with_capacity(files.max(1));
    for i in 0..files.max(1) {
        let path = dir.join(format!(".sluice-probe-small-{}-{i}", std::process::id()));
        cleanup.push(TempFile(path.clone()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        // SAFETY: a valid descriptor; mode 0 allocates the range and grows the file.
        let rc = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                0,
                FILE_BYTES as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        opened.push(file);
    }
    let opened = std::sync::Arc::new(opened);
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..threads.max(1))
        .map(|t| {
            let opened = std::sync::Arc::clone(&opened);
            std::thread::spawn(move || -> std::io::Result<u64> {
                let mut buf = AlignedBuf::new(block as usize)?;
                buf.as_mut_slice().fill(0xa5);
                let mine: Vec<&File> = opened.iter().skip(t).step_by(threads.max(1)).collect();
                if mine.is_empty() {
                    return Ok(0);
                }
                let mut positions = vec![0u64; mine.len()];
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let at = done as usize % mine.len();
                    mine[at].write_all_at(buf.as_slice(), positions[at])?;
                    positions[at] = (positions[at] + block) % FILE_BYTES;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut total = 0u64;
    for worker in workers {
        total += worker
            .join()
            .map_err(|_| std::io::Error::other("a probe thread panicked"))??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_small_write_probe_counts_writes_and_leaves_no_file() {
        let dir = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/probe-small"
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let per_second =
            small_writes_per_second(&dir, 5, 2, 8 << 10, Duration::from_millis(200)).unwrap();
        assert!(per_second.is_finite() && per_second > 0.0, "{per_second}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "files left");
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn a_tiny_probe_reports_finite_positive_figures() {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/probe-test"));
        let config = ProbeConfig {
            dir: dir.clone(),
            write_bytes: 8 << 20,
            read_bytes: 8 << 20,
            tcp_bytes: 16 << 20,
            block_bytes: 1 << 20,
            dsync_writes: 200,
            dsync_rate: Some(10_000),
        };
        let result = run(&config).unwrap();
        for figure in [
            result.disk_write_fdatasync_mb_s,
            result.disk_read_mb_s,
            result.tcp_loopback_mb_s,
        ] {
            assert!(figure.is_finite() && figure > 0.0, "{result:?}");
        }
        assert!(result.disk_write_fdatasync_p99_us > 0);
        assert!(result.disk_dsync_4k_p50_us > 0);
        assert!(result.disk_dsync_4k_p50_us <= result.disk_dsync_4k_p99_us);
        assert!(result.disk_dsync_4k_p99_us <= result.disk_dsync_4k_p999_us);
        assert_eq!(result.disk_dsync_4k_writes, 200);
        // Paced: the latency from each write's due time is at least its own.
        let open_loop_p99 = result.disk_dsync_4k_open_loop_p99_us.expect("paced");
        assert!(open_loop_p99 >= result.disk_dsync_4k_p50_us);
        assert!(result.disk_dsync_4k_max_us >= result.disk_dsync_4k_p999_us);
        let _ = std::fs::remove_dir_all(dir);
    }
}
