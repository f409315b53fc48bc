//! Fixed-rate pacing without coordinated omission: the intended send time of every message, and
//! latency measured from it.
//!
//! A paced sender sends message `i` at `start + i × interval`, however late the previous
//! messages went out. After a stall (the broker, the network or the sender itself paused), every
//! message whose time has passed is due at once, and each one's latency still counts from its
//! intended time, so the stall shows in the percentiles instead of being hidden by a sender that
//! politely waited (Gil Tene's "coordinated omission").

use std::time::{Duration, Instant};

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// The schedule of one paced sender. Times are computed from the start each time (exact rational
/// arithmetic in nanoseconds), so the schedule does not drift however long it runs.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start: Instant,
    /// The interval between sends is `interval_numerator / records_per_second` nanoseconds.
    interval_numerator: u128,
    records_per_second: u128,
}

impl Pacer {
    /// The schedule of one of `senders` senders that together send `records_per_second`
    /// records, `records_per_send` at a time, starting at `start`: one send every
    /// `records_per_send × senders / records_per_second` seconds. `None` if any argument is 0.
    pub fn new(
        start: Instant,
        records_per_second: u64,
        records_per_send: u64,
        senders: u64,
    ) -> Option<Pacer> {
        if records_per_second == 0 || records_per_send == 0 || senders == 0 {
            return None;
        }
        Some(Pacer {
            start,
            interval_numerator: u128::from(records_per_send)
                * u128::from(senders)
                * NANOS_PER_SECOND,
            records_per_second: u128::from(records_per_second),
        })
    }

    /// When send `i` (counting from 0) is meant to happen.
    pub fn intended(&self, i: u64) -> Instant {
        let nanos = u128::from(i) * self.interval_numerator / self.records_per_second;
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How long to wait at `now` before send `i`; `None` when it is due (or overdue: a sender
    /// behind its schedule sends at once, without skipping or rebasing the schedule).
    pub fn wait(&self, i: u64, now: Instant) -> Option<Duration> {
        let intended = self.intended(i);
        (intended > now).then(|| intended - now)
    }
}

/// The latency of a message meant to be sent at `intended` and completed at `done`, in whole
/// microseconds, at least 1 (histograms start at 1). For a paced sender `intended` is
/// [`Pacer::intended`], not the moment the send actually happened.
pub fn latency_micros(intended: Instant, done: Instant) -> u64 {
    let micros = done.saturating_duration_since(intended).as_micros();
    u64::try_from(micros).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn intended_times_are_exact() {
        let start = Instant::now();
        // 5,000 records/s over 4 connections, 1 record per request: every 800 µs.
        let pacer = Pacer::new(start, 5000, 1, 4).unwrap();
        assert_eq!(pacer.intended(0), start);
        assert_eq!(pacer.intended(1), start + Duration::from_micros(800));
        assert_eq!(pacer.intended(1250), start + Duration::from_secs(1));
        // A million sends later the schedule has not drifted by a nanosecond.
        assert_eq!(
            pacer.intended(1_250_000_000),
            start + Duration::from_secs(1_000_000)
        );
        // An interval that is not a whole number of nanoseconds (1/3 s) still lands exactly on
        // the second every third send, and rounds down in between.
        let thirds = Pacer::new(start, 3, 1, 1).unwrap();
        assert_eq!(
            thirds.intended(1),
            start + Duration::from_nanos(333_333_333)
        );
        assert_eq!(
            thirds.intended(2),
            start + Duration::from_nanos(666_666_666)
        );
        assert_eq!(thirds.intended(3), start + Duration::from_secs(1));
        assert_eq!(
            thirds.intended(3_000_000),
            start + Duration::from_secs(1_000_000)
        );
        // Batches: 64-record requests at 6,400 records/s on one connection = 100 per second.
        let batched = Pacer::new(start, 6400, 64, 1).unwrap();
        assert_eq!(batched.intended(100), start + Duration::from_secs(1));
        assert!(Pacer::new(start, 0, 1, 1).is_none());
        assert!(Pacer::new(start, 1, 0, 1).is_none());
        assert!(Pacer::new(start, 1, 1, 0).is_none());
    }

    #[test]
    fn waits_until_the_intended_time() {
        let start = Instant::now();
        let pacer = Pacer::new(start, 1000, 1, 1).unwrap();
        assert_eq!(pacer.wait(0, start), None);
        assert_eq!(pacer.wait(5, start), Some(5 * MS));
        assert_eq!(pacer.wait(5, start + 2 * MS), Some(3 * MS));
        assert_eq!(pacer.wait(5, start + 5 * MS), None);
    }

    #[test]
    fn after_a_stall_sends_at_once_but_latency_counts_from_the_intended_time() {
        let start = Instant::now();
        let pacer = Pacer::new(start, 1000, 1, 1).unwrap();
        // Sends 0..=9 went out on time; then the sender stalled for 50 ms before send 10.
        let resumed = pacer.intended(10) + 50 * MS;
        // Every send whose time has passed is due at once: none is skipped or waited for.
        let mut overdue = 0;
        let mut i = 10;
        while pacer.wait(i, resumed).is_none() {
            overdue += 1;
            i += 1;
        }
        assert_eq!(overdue, 51, "sends 10..=60 are due when the sender resumes");
        // The schedule was not rebased on the stall: send 61 is still at 61 ms.
        assert_eq!(pacer.wait(61, resumed), Some(MS));
        // Say each overdue send is acknowledged 1 ms after it finally went out: its latency
        // includes the time it waited for the stall, not just the 1 ms round trip.
        let acked = resumed + MS;
        assert_eq!(latency_micros(pacer.intended(10), acked), 51_000);
        assert_eq!(latency_micros(pacer.intended(35), acked), 26_000);
        assert_eq!(latency_micros(pacer.intended(60), acked), 1_000);
        // Measured from the actual send instead, all 51 would wrongly look like 1 ms.
        assert_eq!(latency_micros(resumed, acked), 1_000);
    }

    #[test]
    fn latency_is_at_least_one_microsecond() {
        let now = Instant::now();
        assert_eq!(latency_micros(now, now), 1);
        // A completion observed "before" the intended time (clock granularity) is not negative.
        assert_eq!(latency_micros(now + MS, now), 1);
        assert_eq!(latency_micros(now, now + Duration::from_micros(1500)), 1500);
    }
}
