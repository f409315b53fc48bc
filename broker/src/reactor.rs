//! The reactor watchdog: wakes a shard whose executor sleeps through its own timers.
//!
//! glommio 0.9 sleeps in `io_uring_enter` on its main ring, and learns of everything else
//! (timers, the latency ring, wake-ups from other threads) through one `POLL_ADD` that links
//! the rings. On this machine class that link's completion sometimes never arrives: the
//! thread then sleeps until some I/O completes on the main ring itself. At start-up, before a
//! shard listens on anything, there is no such I/O, and about one broker start in fifty hung
//! for good with a shard asleep before its first task ran (seen with `gdb` and
//! `/proc/<pid>/fdinfo`; attaching `strace`, which interrupts the wait, let it go on).
//!
//! So each executor beats: its reactor tick (`SHARD_REACTOR_TICK`) bumps a counter. A watchdog
//! thread (one per broker for all its shards; one per executor made by `shard::spawn_watched`)
//! reads the counters once a tick, and when an executor has missed `REACTOR_WATCH_TICKS_MAX`
//! ticks it sends that thread a signal whose handler does nothing. The signal ends the
//! `io_uring_enter` wait with `EINTR`, which glommio treats as a wake-up: it drains every ring,
//! finds its timers due and carries on. Other system calls on the thread restart
//! (`SA_RESTART`). An executor that is merely busy gets a signal it does not notice.
//!
//! Architecture invariant: a signal goes only to a thread that is registered, and a shard
//! unregisters (under the same lock) before its thread can end, so no signal ever targets a
//! thread that has exited.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use crate::limits::{REACTOR_WATCH_TICKS_MAX, SHARD_REACTOR_TICK};

/// The signal that interrupts a sleeping shard. Its default action is to be ignored, so a
/// signal that arrived before the handler was installed could not stop the process.
const WAKE_SIGNAL: libc::c_int = libc::SIGURG;

/// One shard's heartbeat, shared between the shard and the watchdog.
#[derive(Debug, Default)]
pub struct Pulse {
    beats: AtomicU64,
    /// Times the watchdog had to wake this shard.
    wakes: AtomicU64,
    /// The shard's thread while it runs; `None` before it registers and after it leaves.
    thread: Mutex<Option<libc::pthread_t>>,
}

impl Pulse {
    /// Records one reactor tick.
    pub fn beat(&self) {
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times the watchdog has woken this shard.
    pub fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Relaxed)
    }

    /// Makes the calling thread the one to wake; it stays registered until the guard drops,
    /// which must happen on the same thread before it ends. Registering counts as a beat: the
    /// time before a shard's thread existed is not time it slept through.
    pub fn register(self: &Arc<Self>) -> Registration {
        install_handler();
        self.beat();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(me);
        Registration {
            pulse: Arc::clone(self),
        }
    }

    /// Sends the wake signal if a thread is registered; true if one was sent.
    fn wake(&self) -> bool {
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        let Some(thread) = *thread else {
            return false;
        };
        // SAFETY: the thread is registered, and it unregisters under this lock before it can
        // end, so `thread` names a live thread while the lock is held.
        let sent = unsafe { libc::pthread_kill(thread, WAKE_SIGNAL) } == 0;
        if sent {
            self.wakes.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }
}

/// Keeps a thread registered with its [`Pulse`]; unregisters it on drop.
#[derive(Debug)]
pub struct Registration {
    pulse: Arc<Pulse>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        *self.pulse.thread.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Decides, one check per tick, when a shard has gone quiet for too long.
#[derive(Debug, Default)]
struct Staleness {
    last_beats: u64,
    quiet_checks: u32,
}

impl Staleness {
    /// Takes the beat counter seen at this check; true when the shard should be woken.
    fn check(&mut self, beats: u64) -> bool {
        if beats != self.last_beats {
            self.last_beats = beats;
            self.quiet_checks = 0;
            return false;
        }
        self.quiet_checks += 1;
        self.quiet_checks >= REACTOR_WATCH_TICKS_MAX
    }
}

/// The watchdog thread of one process; stops when dropped.
#[derive(Debug)]
pub struct ReactorWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReactorWatch {
    /// Starts watching `pulses` (shard index = position), checking once per reactor tick.
    pub fn start(pulses: Vec<Arc<Pulse>>) -> std::io::Result<ReactorWatch> {
        ReactorWatch::start_every(pulses, SHARD_REACTOR_TICK)
    }

    fn start_every(pulses: Vec<Arc<Pulse>>, period: Duration) -> std::io::Result<ReactorWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("reactor-watch".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || watch(&pulses, period, &stop)
            })?;
        Ok(ReactorWatch {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ReactorWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn watch(pulses: &[Arc<Pulse>], period: Duration, stop: &AtomicBool) {
    let mut staleness: Vec<Staleness> = pulses.iter().map(|_| Staleness::default()).collect();
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(period);
        for (shard, (pulse, staleness)) in pulses.iter().zip(&mut staleness).enumerate() {
            if !staleness.check(pulse.beats.load(Ordering::Relaxed)) || !pulse.wake() {
                continue;
            }
            if pulse.wakes() == 1 {
                tracing::warn!(
                    shard,
                    quiet_ms = (period * REACTOR_WATCH_TICKS_MAX).as_millis() as u64,
                    "shard missed its reactor ticks; woke it with a signal"
                );
            } else {
                tracing::debug!(shard, wakes = pulse.wakes(), "woke a quiet shard again");
            }
        }
    }
}

extern "C" fn on_wake_signal(_: libc::c_int) {}

/// Installs the do-nothing handler for [`WAKE_SIGNAL`], once per process.
fn install_handler() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting value; the handler is async-signal-safe
        // (it does nothing), and SA_RESTART keeps every restartable call on the thread unaware.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_wake_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            let installed = libc::sigaction(WAKE_SIGNAL, &action, std::ptr::null_mut());
            assert_eq!(
                installed,
                0,
                "cannot install the reactor wake-up handler: {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_wakes_only_after_enough_quiet_checks_and_resets_on_a_beat() {
        let mut staleness = Staleness::default();
        let mut beats = 0;
        for round in 0..3 {
            for check in 1..REACTOR_WATCH_TICKS_MAX {
                assert!(!staleness.check(beats), "round {round}, check {check}");
            }
            assert!(staleness.check(beats), "round {round}: quiet long enough");
            assert!(staleness.check(beats), "still quiet, still due");
            beats += 1;
            assert!(!staleness.check(beats), "a beat resets it");
        }
    }

    /// A thread blocked in a wait that a signal interrupts (as `io_uring_enter` is) and that
    /// never beats is woken; the process is unharmed, and a thread that left is left alone.
    #[test]
    fn a_quiet_registered_thread_is_interrupted() {
        let pulse = Arc::new(Pulse::default());
        let (registered_tx, registered_rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn({
            let pulse = Arc::clone(&pulse);
            move || {
                let registration = pulse.register();
                registered_tx.send(()).expect("send");
                // epoll_wait on an empty set blocks until its timeout or a signal, and is never
                // restarted after a handler: EINTR shows the wake-up reached this thread.
                // SAFETY: plain system calls on a descriptor this thread owns.
                let interrupted = unsafe {
                    let epoll = libc::epoll_create1(libc::EPOLL_CLOEXEC);
                    assert!(epoll >= 0);
                    let mut event: libc::epoll_event = std::mem::zeroed();
                    let result = libc::epoll_wait(epoll, &mut event, 1, 60_000);
                    let errno = std::io::Error::last_os_error().raw_os_error();
                    libc::close(epoll);
                    result == -1 && errno == Some(libc::EINTR)
                };
                drop(registration);
                interrupted
            }
        });
        registered_rx.recv().expect("registered");
        let watch = ReactorWatch::start_every(vec![Arc::clone(&pulse)], Duration::from_millis(5))
            .expect("start");
        assert!(sleeper.join().expect("join"), "the wait ended with EINTR");
        assert!(pulse.wakes() >= 1);
        // Unregistered: later checks find no thread and send nothing.
        let wakes = pulse.wakes();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(pulse.wakes(), wakes);
        drop(watch);
    }
}
