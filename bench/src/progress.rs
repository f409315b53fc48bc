//! The live progress line shown on a terminal while a scenario's measured phase runs, and the
//! throughput time series sampled with it: both come from a thread of their own that only reads
//! counters, so the measured loop pays for nothing but its relaxed atomic additions.
//!
//! The line (on stderr, redrawn every [`REDRAW_INTERVAL`], and only when stderr is a terminal)
//! shows the elapsed and total seconds (the total estimated from the share done when the
//! scenario runs to a byte or record count), and the MB/s and records/s of the last interval.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the progress line is redrawn.
pub const REDRAW_INTERVAL: Duration = Duration::from_millis(500);
/// The shortest interval between two points of a time series (a finer one would mostly show
/// the sampler's own scheduling on a busy machine).
pub const SERIES_INTERVAL_MIN: Duration = Duration::from_millis(50);
/// Erases from the cursor to the end of the line (ANSI), so a shorter line leaves no tail.
const ERASE_TO_END: &str = "\x1b[K";

/// Counters that one shard (or task) adds to as its work completes. Aligned to a cache line pair
/// of its own, so meters updated from different cores never share one; the sampler only reads.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Meter {
    messages: AtomicU64,
    bytes: AtomicU64,
    done: AtomicBool,
}

impl Meter {
    /// Counts `messages` records of `bytes` bytes in all as done.
    pub fn add(&self, messages: u64, bytes: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Marks this meter's share of the measured phase as finished.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    /// The sum of some meters; done when all of them are.
    pub fn sum(meters: &[Meter]) -> Sample {
        meters.iter().fold(
            Sample {
                done: true,
                ..Sample::default()
            },
            |sum, m| Sample {
                messages: sum.messages + m.messages.load(Ordering::Relaxed),
                bytes: sum.bytes + m.bytes.load(Ordering::Relaxed),
                done: sum.done && m.done.load(Ordering::Relaxed),
            },
        )
    }
}

/// What a scenario has done so far in its measured phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub messages: u64,
    pub bytes: u64,
    /// The measured phase is over: the sampler stops.
    pub done: bool,
}

/// What ends a scenario's measured phase, for the line's total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    Seconds(f64),
    Bytes(u64),
    Messages(u64),
}

/// How to sample one measured phase.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// The scenario's name, the line's prefix.
    pub label: String,
    pub goal: Goal,
    /// When the measured phase starts; before it, the line counts the warm-up down and no
    /// point is recorded.
    pub measure_from: Instant,
    /// The warm-up's length, for the line.
    pub warmup: Duration,
    /// One time-series point per this interval (at least [`SERIES_INTERVAL_MIN`]).
    pub series_interval: Duration,
    /// Draw the line; see [`stderr_is_terminal`].
    pub show: bool,
}

/// Whether stderr is a terminal: the progress line is shown only then, so that logs and CI
/// output get no carriage returns.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// The sampling thread of one measured phase.
#[derive(Debug)]
pub struct Monitor {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<Vec<f64>>>,
}

impl Monitor {
    /// Starts sampling `source` (called from the monitor's thread: it must only read).
    pub fn start(
        config: MonitorConfig,
        source: impl FnMut() -> Sample + Send + 'static,
    ) -> Result<Monitor, String> {
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bench-monitor".into())
            .spawn(move || sample(&config, source, &stopped))
            .map_err(|e| format!("start the progress thread: {e}"))?;
        Ok(Monitor {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops sampling (if the source has not said it is done), clears the line and returns the
    /// time series: MB/s over each whole interval of the measured phase, in order.
    pub fn finish(mut self) -> Vec<f64> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> Vec<f64> {
        drop(self.stop.take());
        self.thread
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Sleeps until `deadline`; false if the monitor was told to stop meanwhile.
fn sleep_until(stopped: &mpsc::Receiver<()>, deadline: Instant) -> bool {
    let wait = deadline.saturating_duration_since(Instant::now());
    matches!(stopped.recv_timeout(wait), Err(RecvTimeoutError::Timeout))
}

/// The monitor thread's body: returns the series.
fn sample(
    config: &MonitorConfig,
    mut source: impl FnMut() -> Sample,
    stopped: &mpsc::Receiver<()>,
) -> Vec<f64> {
    let mut line = Line::new(config.show);
    let mut series = Vec::new();
    // Warm-up: only the countdown.
    let warmup_started = config.measure_from.checked_sub(config.warmup);
    while Instant::now() < config.measure_from {
        if let Some(started) = warmup_started {
            line.draw(&warmup_line(
                &config.label,
                started.elapsed(),
                config.warmup,
            ));
        }
        let next = (Instant::now() + REDRAW_INTERVAL).min(config.measure_from);
        if !sleep_until(stopped, next) {
            line.clear();
            return series;
        }
    }

    let interval = config.series_interval.max(SERIES_INTERVAL_MIN);
    // A phase of known length ends by itself, on time, with its last whole interval counted.
    let end = match config.goal {
        Goal::Seconds(total) if total.is_finite() && total >= 0.0 => {
            Some(config.measure_from + Duration::from_secs_f64(total))
        }
        _ => None,
    };
    let (mut point_from, mut point_at) = (source(), Instant::now());
    let (mut drawn_from, mut drawn_at) = (point_from, point_at);
    let mut next_point = config.measure_from + interval;
    let mut next_draw = config.measure_from + REDRAW_INTERVAL;
    loop {
        let mut deadline = next_point;
        if config.show {
            deadline = deadline.min(next_draw);
        }
        if let Some(end) = end {
            deadline = deadline.min(end);
        }
        let running = sleep_until(stopped, deadline);
        let now_sample = source();
        let now = Instant::now();
        // A point is taken when its interval is complete, also at the end of a phase of known
        // length. Once the source says it is done, the interval that holds its end is partial
        // (work stopped somewhere inside it): it is not a point, it would understate the rate.
        if now >= next_point && !now_sample.done {
            let seconds = now.duration_since(point_at).as_secs_f64().max(1e-9);
            series.push(now_sample.bytes.saturating_sub(point_from.bytes) as f64 / 1e6 / seconds);
            (point_from, point_at) = (now_sample, now);
            while next_point <= now {
                next_point += interval;
            }
        }
        if !running || now_sample.done || end.is_some_and(|end| now >= end) {
            break;
        }
        if config.show && now >= next_draw {
            let seconds = now.duration_since(drawn_at).as_secs_f64().max(1e-9);
            let rate = Rate {
                mb_s: now_sample.bytes.saturating_sub(drawn_from.bytes) as f64 / 1e6 / seconds,
                records_s: now_sample.messages.saturating_sub(drawn_from.messages) as f64 / seconds,
            };
            line.draw(&progress_line(
                &config.label,
                config.goal,
                now.saturating_duration_since(config.measure_from),
                now_sample,
                rate,
            ));
            (drawn_from, drawn_at) = (now_sample, now);
            while next_draw <= now {
                next_draw += REDRAW_INTERVAL;
            }
        }
    }
    line.clear();
    series
}

/// Throughput over the last redraw interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub mb_s: f64,
    pub records_s: f64,
}

/// The line during the warm-up.
pub fn warmup_line(label: &str, elapsed: Duration, warmup: Duration) -> String {
    format!(
        "{label}: warming up {:.1} / {:.1} s",
        elapsed.as_secs_f64().min(warmup.as_secs_f64()),
        warmup.as_secs_f64()
    )
}

/// The line during the measured phase: elapsed / total seconds (estimated from the share done
/// for byte and record goals), the share done for those, then the last interval's rates.
pub fn progress_line(
    label: &str,
    goal: Goal,
    elapsed: Duration,
    done: Sample,
    rate: Rate,
) -> String {
    let elapsed_s = elapsed.as_secs_f64();
    let share = match goal {
        Goal::Seconds(_) => None,
        Goal::Bytes(total) => Some(done.bytes as f64 / total.max(1) as f64),
        Goal::Messages(total) => Some(done.messages as f64 / total.max(1) as f64),
    };
    let mut line = format!("{label}: {elapsed_s:.1} / ");
    match (goal, share) {
        (Goal::Seconds(total), _) => {
            let _ = write!(line, "{total:.1} s");
        }
        (_, Some(share)) if share > 0.0 => {
            let _ = write!(
                line,
                "~{:.1} s ({:.0} %)",
                elapsed_s / share.min(1.0),
                share.min(1.0) * 100.0
            );
        }
        _ => line.push_str("? s"),
    }
    let _ = write!(
        line,
        "  {:.1} MB/s  {} records/s",
        rate.mb_s,
        thousands(rate.records_s)
    );
    line
}

/// A non-negative number rounded, with thousands separators.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The progress line on stderr, redrawn in place; a no-op unless shown.
#[derive(Debug)]
struct Line {
    show: bool,
    drawn: bool,
}

impl Line {
    fn new(show: bool) -> Line {
        Line { show, drawn: false }
    }

    fn draw(&mut self, text: &str) {
        if self.show {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{text}{ERASE_TO_END}");
            let _ = err.flush();
            self.drawn = true;
        }
    }

    fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{ERASE_TO_END}");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn meters_sum_and_are_done_together() {
        let meters: Vec<Meter> = (0..3).map(|_| Meter::default()).collect();
        assert_eq!(std::mem::align_of::<Meter>(), 128);
        meters[0].add(16, 16_000);
        meters[2].add(1, 10);
        meters[2].add(1, 10);
        assert_eq!(
            Meter::sum(&meters),
            Sample {
                messages: 18,
                bytes: 16_020,
                done: false
            }
        );
        meters.iter().take(2).for_each(Meter::finish);
        assert!(!Meter::sum(&meters).done);
        meters[2].finish();
        assert!(Meter::sum(&meters).done);
        assert!(Meter::sum(&[]).done);
    }

    #[test]
    fn lines_show_elapsed_total_and_rates() {
        let rate = Rate {
            mb_s: 1234.56,
            records_s: 1_205_625.4,
        };
        let seconds = progress_line(
            "produce",
            Goal::Seconds(10.0),
            Duration::from_millis(3500),
            Sample::default(),
            rate,
        );
        assert_eq!(
            seconds,
            "produce: 3.5 / 10.0 s  1234.6 MB/s  1,205,625 records/s"
        );
        let bytes = progress_line(
            "storage",
            Goal::Bytes(2000),
            Duration::from_secs(1),
            Sample {
                bytes: 500,
                ..Sample::default()
            },
            rate,
        );
        assert!(
            bytes.starts_with("storage: 1.0 / ~4.0 s (25 %)  1234.6 MB/s"),
            "{bytes}"
        );
        let nothing_yet = progress_line(
            "produce",
            Goal::Messages(100),
            Duration::from_millis(100),
            Sample::default(),
            Rate {
                mb_s: 0.0,
                records_s: 0.0,
            },
        );
        assert_eq!(nothing_yet, "produce: 0.1 / ? s  0.0 MB/s  0 records/s");
        let over = progress_line(
            "produce",
            Goal::Messages(100),
            Duration::from_secs(2),
            Sample {
                messages: 150,
                ..Sample::default()
            },
            rate,
        );
        assert!(over.starts_with("produce: 2.0 / ~2.0 s (100 %)"), "{over}");
        assert_eq!(
            warmup_line(
                "produce",
                Duration::from_millis(2500),
                Duration::from_secs(2)
            ),
            "produce: warming up 2.0 / 2.0 s"
        );
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(-5.0), "0");
    }

    #[test]
    fn the_series_has_one_point_per_whole_interval_until_done() {
        let meter = Arc::new(Meter::default());
        let source = {
            let meter = Arc::clone(&meter);
            move || Meter::sum(std::slice::from_ref(&*meter))
        };
        let start = Instant::now();
        let monitor = Monitor::start(
            MonitorConfig {
                label: "test".into(),
                goal: Goal::Seconds(1.0),
                measure_from: start,
                warmup: Duration::ZERO,
                series_interval: SERIES_INTERVAL_MIN,
                show: false,
            },
            source,
        )
        .unwrap();
        // 1 MB per millisecond for about 4 intervals, then done.
        while start.elapsed() < SERIES_INTERVAL_MIN * 4 + SERIES_INTERVAL_MIN / 2 {
            meter.add(1, 1_000_000);
            std::thread::sleep(Duration::from_millis(1));
        }
        meter.finish();
        // The thread stops by itself once the source is done.
        let series = monitor.finish();
        assert!((3..=5).contains(&series.len()), "{series:?}");
        // Rates are positive and bounded by 1 MB per ms = 1000 MB/s (sleeps only add time).
        assert!(
            series.iter().all(|&mb_s| mb_s > 0.0 && mb_s <= 1100.0),
            "{series:?}"
        );
    }

    #[test]
    fn a_phase_of_known_length_ends_itself_with_its_last_point() {
        let start = Instant::now();
        let monitor = Monitor::start(
            MonitorConfig {
                label: "test".into(),
                goal: Goal::Seconds(SERIES_INTERVAL_MIN.as_secs_f64() * 4.0),
                measure_from: start,
                warmup: Duration::ZERO,
                series_interval: SERIES_INTERVAL_MIN,
                show: false,
            },
            || Sample {
                messages: 1,
                bytes: 1,
                done: false,
            },
        )
        .unwrap();
        // Finishing late loses nothing: the thread already stopped at the phase's end.
        std::thread::sleep(SERIES_INTERVAL_MIN * 8);
        let series = monitor.finish();
        // Four points, fewer only if this busy machine kept the sampler asleep past a point.
        assert!((2..=4).contains(&series.len()), "{series:?}");
        assert!(series.iter().all(|&mb_s| mb_s == 0.0), "{series:?}");
    }

    #[test]
    fn finishing_during_the_warm_up_returns_at_once_with_no_points() {
        let start = Instant::now();
        let monitor = Monitor::start(
            MonitorConfig {
                label: "test".into(),
                goal: Goal::Seconds(1.0),
                measure_from: start + Duration::from_secs(60),
                warmup: Duration::from_secs(60),
                series_interval: Duration::from_secs(1),
                show: false,
            },
            Sample::default,
        )
        .unwrap();
        assert!(monitor.finish().is_empty());
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
