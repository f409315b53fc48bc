//! Helpers shared by the broker's integration tests: executors, batches, temp directories, and
//! [`BrokerProcess`], the harness for tests that run a real `sluice-broker` process.
#![allow(dead_code)]

pub mod clients;
pub mod cluster;
pub mod netns;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_protocol::batch::stamp;
use sluice_protocol::{BatchBuilder, BatchOptions};

/// Runs `future` on a fresh glommio executor thread, made as a broker shard's is.
pub fn run<F, Fut, T>(make: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    sluice_broker::shard::spawn_executor(glommio::LocalExecutorBuilder::default(), "test", make)
        .expect("spawn executor")
        .join()
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Where a broker process's stderr goes: `path`, appended to across restarts, so a failed test
/// can show what the broker saw ([`print_log_tail`]).
pub fn broker_log(path: &Path) -> std::process::Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(std::process::Stdio::from)
        .unwrap_or_else(|e| panic!("broker log {}: {e}", path.display()))
}

/// Prints the end of a broker's log (from [`broker_log`]) to the test's output.
pub fn print_log_tail(label: &str, path: &Path) {
    const TAIL_BYTES_MAX: usize = 24 * 1024;
    let log = std::fs::read(path).unwrap_or_default();
    let tail = &log[log.len().saturating_sub(TAIL_BYTES_MAX)..];
    eprintln!(
        "----- {label} log (last {} bytes) -----\n{}",
        tail.len(),
        String::from_utf8_lossy(tail)
    );
}

/// A directory on the real disk (O_DIRECT does not work on tmpfs), removed on drop.
pub fn test_dir(name: &str) -> tempfile::TempDir {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root).expect("target tmpdir");
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(root)
        .expect("tempdir")
}

/// A batch of `records` records with values of `value_len` bytes, tagged by `tag`.
pub fn batch(tag: u64, records: u32, value_len: usize, timestamp: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::new(BatchOptions::default());
    for i in 0..records {
        let key = format!("k{tag}-{i}");
        let mut value = format!("v{tag}-{i}-").into_bytes();
        value.resize(value_len.max(value.len()), b'x' + (tag % 3) as u8);
        builder.push(
            timestamp + i64::from(i),
            Some(key.as_bytes()),
            Some(&value),
            &[],
        );
    }
    builder.finish()
}

/// `batch` as the log stores it: stamped with its offset and epoch.
pub fn stamped(mut bytes: Vec<u8>, base_offset: u64, epoch: u32) -> Vec<u8> {
    stamp(&mut bytes, base_offset, epoch);
    bytes
}

/// A free TCP port on 127.0.0.1 below the kernel's ephemeral range (which starts at 32768), so
/// no client socket of a parallel test can take it between a broker's stop and its restart.
/// Spread by process id so test binaries running at once rarely try the same ports.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 11_000 + (seed.wrapping_add(n.wrapping_mul(7_919)) % 9_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Set in the environment of a test binary re-run as a broker (see [`broker_command`]).
const BROKER_CHILD_ENV: &str = "SLUICE_TEST_RUN_BROKER";

/// The command that starts a broker: `sluice-broker` in the broker's own tests, which cargo
/// builds for them; in another crate's tests (the `sluice` CLI's), the test binary itself run
/// again as a broker, whose `main` calls [`run_broker_if_child`] first. Either way the broker
/// is `sluice_broker::cli::run`, so the harness is the same.
pub fn broker_command() -> Command {
    match option_env!("CARGO_BIN_EXE_sluice-broker") {
        Some(exe) => Command::new(exe),
        None => {
            let mut command = Command::new(std::env::current_exe().expect("the test binary"));
            command.env(BROKER_CHILD_ENV, "1");
            command
        }
    }
}

/// In a test binary started by [`broker_command`] as a broker: runs the broker with this
/// process's arguments and returns its exit code. `None` in a test binary run as tests.
pub fn run_broker_if_child() -> Option<std::process::ExitCode> {
    std::env::var_os(BROKER_CHILD_ENV)?;
    Some(sluice_broker::cli::run(std::env::args_os().collect()))
}

/// Whether a broker serves `address`: it answers an ApiVersions request. (A port that merely
/// accepts connections is not enough: a broker killed a moment ago still accepts into its
/// listen backlog for a few milliseconds, and a starting one waits for its metadata before it
/// takes connections from the backlog.)
pub fn answers(address: &str) -> bool {
    use sluice_protocol::native::{
        encode_control, encode_request, split_response, ApiKey, ApiVersionsRequest,
    };
    use std::io::{Read, Write};
    let attempt = || -> std::io::Result<bool> {
        let address: std::net::SocketAddr = address.parse().expect("ip:port");
        let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let control = encode_control(&ApiVersionsRequest {
            client_id: "test-harness".into(),
        });
        let api = ApiKey::ApiVersions;
        stream.write_all(&encode_request(api, api.versions().1, 7, &control, 0))?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len)?;
        let mut frame = vec![0u8; u32::from_le_bytes(len) as usize];
        stream.read_exact(&mut frame)?;
        Ok(split_response(&frame).is_ok_and(|r| r.correlation_id == 7 && r.frame_error == 0))
    };
    attempt().unwrap_or(false)
}

/// A `sluice-broker` child process on a temporary data directory, with fixed ports: the main
/// address, the metadata address, one port per shard and the metrics endpoint (a free port of
/// its own, never the default 9491 that tests running at once would share), kept across
/// restarts. Killed (and its
/// log shown, if the test is failing) on drop.
#[derive(Debug)]
pub struct BrokerProcess {
    pub dir: tempfile::TempDir,
    pub listen: String,
    pub metadata: String,
    pub shard_ports: Vec<u16>,
    /// The metrics endpoint (`--metrics-listen`).
    pub metrics: String,
    /// The Kafka listener's main address (`--kafka-listen`) and each shard's Kafka port.
    pub kafka: String,
    pub kafka_shard_ports: Vec<u16>,
    child: Option<Child>,
    /// Flags added to every start.
    args: Vec<String>,
    /// The network namespace the process runs in (`ip netns exec`), if not the test's own.
    pub netns: Option<String>,
    /// `RLIMIT_NOFILE` (soft, hard) the process starts with, if not the test's own.
    pub open_files: Option<(u64, u64)>,
}

impl BrokerProcess {
    /// Starts a broker with `shards` shards and the extra flags `args`, and waits until it
    /// accepts connections.
    pub fn start(prefix: &str, shards: u32, args: &[&str]) -> BrokerProcess {
        let dir = test_dir(prefix);
        let mut broker = BrokerProcess {
            dir,
            listen: String::new(),
            metadata: String::new(),
            shard_ports: vec![0; shards as usize],
            metrics: String::new(),
            kafka: String::new(),
            kafka_shard_ports: vec![0; shards as usize],
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            netns: None,
            open_files: None,
        };
        broker.pick_ports();
        broker.spawn(true);
        broker
    }

    /// [`Self::start`] with the process's open-files limit (`RLIMIT_NOFILE`) set to `soft` and
    /// `hard` before it runs.
    pub fn start_with_open_files(
        prefix: &str,
        shards: u32,
        args: &[&str],
        soft: u64,
        hard: u64,
    ) -> BrokerProcess {
        let mut broker = BrokerProcess::prepare(prefix, "", "", &vec![0; shards as usize], args);
        broker.open_files = Some((soft, hard));
        broker.pick_ports();
        broker.spawn(true);
        broker
    }

    /// A broker not started yet, on the given ports (for clusters, whose members must know
    /// each other's metadata addresses before any starts); start it with [`Self::spawn`] or
    /// [`Self::spawn_detached`].
    pub fn prepare(
        prefix: &str,
        listen: &str,
        metadata: &str,
        shard_ports: &[u16],
        args: &[&str],
    ) -> BrokerProcess {
        BrokerProcess {
            dir: test_dir(prefix),
            listen: listen.to_owned(),
            metadata: metadata.to_owned(),
            shard_ports: shard_ports.to_vec(),
            metrics: format!("127.0.0.1:{}", free_port()),
            kafka: format!("127.0.0.1:{}", free_port()),
            kafka_shard_ports: shard_ports.iter().map(|_| free_port()).collect(),
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            netns: None,
            open_files: None,
        }
    }

    fn pick_ports(&mut self) {
        self.listen = format!("127.0.0.1:{}", free_port());
        self.metadata = format!("127.0.0.1:{}", free_port());
        self.metrics = format!("127.0.0.1:{}", free_port());
        for port in self.shard_ports.iter_mut() {
            *port = free_port();
        }
        self.kafka = format!("127.0.0.1:{}", free_port());
        for port in self.kafka_shard_ports.iter_mut() {
            *port = free_port();
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// Each shard's address, as the broker advertises it (without `--advertise`).
    pub fn shard_addresses(&self) -> Vec<String> {
        self.shard_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// Starts the process and waits until its main address and every shard port answer
    /// requests ([`answers`]). A fresh broker (`may_move`) whose port something else took first exits at
    /// once and is started again on new ports; a restarted one keeps its ports (clients know
    /// them) and tries again while the old process's sockets linger.
    pub fn spawn(&mut self, may_move: bool) {
        assert!(self.child.is_none(), "the broker is running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = self.command();
            loop {
                let serving = std::iter::once(self.listen.clone())
                    .chain(self.shard_addresses())
                    .all(|a| answers(&a));
                if serving {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    print_log_tail("broker", &self.log_path());
                    panic!("broker did not come up");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if may_move {
                self.pick_ports();
            } else {
                if Instant::now() >= deadline {
                    print_log_tail("broker", &self.log_path());
                    panic!("broker could not restart on its ports");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The process, started with the harness's flags and then the broker's own (which win).
    fn command(&self) -> Child {
        let ports: Vec<String> = self.shard_ports.iter().map(u16::to_string).collect();
        let kafka_ports: Vec<String> = self.kafka_shard_ports.iter().map(u16::to_string).collect();
        // `SLUICE_TEST_BROKER_LOG=sluice_broker=debug` makes the log say more.
        let log = std::env::var("SLUICE_TEST_BROKER_LOG").unwrap_or("warn".into());
        // A test may have emptied the data directory (a broker that lost its disk).
        std::fs::create_dir_all(self.dir.path()).expect("data directory");
        // `ip netns exec` enters the namespace and execs the broker: the child is the broker.
        let mut command = match &self.netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]);
                command.arg(broker_command().get_program());
                for (key, value) in broker_command().get_envs() {
                    if let Some(value) = value {
                        command.env(key, value);
                    }
                }
                command
            }
            None => broker_command(),
        };
        if let Some((soft, hard)) = self.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec the closure only calls setrlimit, which is
            // async-signal-safe, on a struct on its own stack.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        command
            .args(["--data-dir", self.dir.path().to_str().unwrap()])
            .args([
                "--listen",
                &self.listen,
                "--metadata-listen",
                &self.metadata,
            ])
            .args(["--shards", &self.shard_ports.len().to_string()])
            .args(["--shard-ports", &ports.join(",")])
            .args(["--metrics-listen", &self.metrics])
            .args(["--kafka-listen", &self.kafka])
            .args(["--kafka-shard-ports", &kafka_ports.join(",")])
            .args(["--election-timeout-ms", "150", "--log", &log])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(broker_log(&self.log_path()))
            .spawn()
            .expect("spawn sluice-broker")
    }

    /// Starts the process without waiting for it to serve (a cluster member serves once the
    /// cluster has metadata, which needs the others).
    pub fn spawn_detached(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        self.child = Some(self.command());
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The process's exit status if it has ended; `None` while it runs or when not started.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kills the process with SIGKILL, if it runs, and waits for it.
    pub fn kill_if_running(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the broker is running");
        child.kill().expect("SIGKILL");
        child.wait().expect("wait for the broker");
    }

    /// Freezes the process with SIGSTOP (a stalled broker: alive, silent).
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused process go on with SIGCONT.
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&mut self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("the broker is running");
        // SAFETY: plain kill(2) on the child's pid, which we have not waited for yet.
        let sent = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(sent, 0, "signal {signal}");
    }

    /// Asks the process to stop with SIGTERM and waits for its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the broker is running");
        // SAFETY: plain kill(2) on the child's pid, which we have not waited for yet.
        let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM");
        child.wait().expect("wait for the broker")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            print_log_tail("broker", &self.log_path());
            // The whole log outlives the data directory.
            let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("failed-broker-{}.log", std::process::id()));
            if std::fs::copy(self.log_path(), &kept).is_ok() {
                eprintln!("whole broker log: {}", kept.display());
            }
        }
    }
}

/// splitmix64: small, seedable, good enough to pick timings, sizes and faults.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// One HTTP/1.1 request to a broker's metrics address: (status line, body).
pub fn http_get(address: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect to metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The sum over a broker's shards of a per-shard counter, read from its `/metrics`.
pub fn shard_counter_sum(metrics_address: &str, name: &str) -> f64 {
    let (_, body) = http_get(metrics_address, "/metrics");
    sluice_broker::metrics::exposition::counter_sum(&body, name)
}
