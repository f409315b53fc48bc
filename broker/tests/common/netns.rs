//! Real network partitions for cluster tests: each broker in a network namespace of its own,
//! linked by a veth pair to a hub namespace that routes between them, and where the test itself
//! runs (so it reaches every broker, on either side of a partition).
//!
//! Layout, for brokers 1..=n (names carry the test process's id, so suites running at once
//! never share one):
//!
//! ```text
//!   sl<pid>-b1  [10.77.1.2] ──veth── [10.77.1.1]
//!   sl<pid>-b2  [10.77.2.2] ──veth── [10.77.2.1]  sl<pid>-hub (forwards; the test's thread)
//!   sl<pid>-b3  [10.77.3.2] ──veth── [10.77.3.1]
//! ```
//!
//! A partition is a pair of `blackhole` policy rules in the hub per broker pair: packets between
//! the two sides are dropped silently (as a cut cable would), while the hub (the test's clients)
//! still reaches everyone. Nothing is created in the host's own namespace. Needs root and
//! `iproute2`; [`Netns::create`] says why it cannot when it cannot, and the test then skips.
//! Everything is deleted on drop, panics included.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::process::Command;

/// The namespaces of one test, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    prefix: String,
    brokers: u64,
    created: Vec<String>,
    /// Broker pairs currently cut apart (smaller id first).
    cut: std::cell::RefCell<BTreeSet<(u64, u64)>>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates the hub and one namespace per broker, linked and routed. `Err` says why it could
    /// not (not root, no `ip`, no namespace support); whatever was made is removed again.
    pub fn create(brokers: u64) -> Result<Netns, String> {
        let mut net = Netns {
            prefix: format!("sl{}", std::process::id()),
            brokers,
            created: Vec::new(),
            cut: Default::default(),
        };
        net.build()?;
        Ok(net)
    }

    fn build(&mut self) -> Result<(), String> {
        let hub = self.hub();
        let all: Vec<String> = std::iter::once(hub.clone())
            .chain((1..=self.brokers).map(|id| self.broker(id)))
            .collect();
        for ns in all {
            ip(&["netns", "add", &ns])?;
            self.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        for id in 1..=self.brokers {
            let ns = self.broker(id);
            let (hub_end, broker_end) = (format!("{}-h{id}", self.prefix), ns.clone());
            ip(&[
                "link",
                "add",
                &hub_end,
                "netns",
                &hub,
                "type",
                "veth",
                "peer",
                "name",
                &broker_end,
                "netns",
                &ns,
            ])?;
            ip(&[
                "-n",
                &hub,
                "addr",
                "add",
                &format!("10.77.{id}.1/24"),
                "dev",
                &hub_end,
            ])?;
            ip(&["-n", &hub, "link", "set", &hub_end, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.ip(id)),
                "dev",
                &broker_end,
            ])?;
            ip(&["-n", &ns, "link", "set", &broker_end, "up"])?;
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.77.{id}.1"),
            ])?;
        }
        let forward = Command::new("ip")
            .args([
                "netns",
                "exec",
                &hub,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()
            .map_err(|e| format!("cannot run sysctl in the hub: {e}"))?;
        if !forward.success() {
            return Err("cannot enable forwarding in the hub namespace".into());
        }
        Ok(())
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// The namespace broker `id` runs in.
    pub fn broker(&self, id: u64) -> String {
        format!("{}-b{id}", self.prefix)
    }

    /// Broker `id`'s address.
    pub fn ip(&self, id: u64) -> String {
        format!("10.77.{id}.2")
    }

    /// Moves the calling thread into the hub: its sockets, and every thread it starts from now
    /// on (a tokio runtime's workers), reach each broker by its address. For the rest of the
    /// thread's life (a test's thread ends with the test).
    pub fn enter_hub(&self) -> Result<(), String> {
        let path = format!("/run/netns/{}", self.hub());
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: setns(2) on a namespace file we hold open; it only changes this thread.
        let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if entered != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn rules(&self, a: u64, b: u64, verb: &str) {
        for (from, to) in [(a, b), (b, a)] {
            ip(&[
                "-n",
                &self.hub(),
                "rule",
                verb,
                "from",
                &format!("10.77.{from}.0/24"),
                "to",
                &format!("10.77.{to}.0/24"),
                "blackhole",
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Cuts broker `id` off from every other broker (the hub still reaches it).
    pub fn isolate(&self, id: u64) {
        for other in (1..=self.brokers).filter(|&o| o != id) {
            let pair = (id.min(other), id.max(other));
            if self.cut.borrow_mut().insert(pair) {
                self.rules(pair.0, pair.1, "add");
            }
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        let cut: Vec<(u64, u64)> = std::mem::take(&mut *self.cut.borrow_mut())
            .into_iter()
            .collect();
        for (a, b) in cut {
            self.rules(a, b, "del");
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace takes its veth ends and rules with it; processes still inside
        // (brokers not yet reaped) keep it alive until they exit.
        for ns in self.created.iter().rev() {
            if let Err(error) = ip(&["netns", "del", ns]) {
                eprintln!("netns cleanup: {error}");
            }
        }
    }
}
