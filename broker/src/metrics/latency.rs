//! Exact latency distributions of one shard: hdrhistograms (µs, 3 significant figures) where the
//! fixed buckets of [`super::histogram`] are too coarse to compare with a device's own latency.
//!
//! Two are kept per shard: each produce request's time in the broker (first byte of its frame
//! read → last byte of its response written; [`super::ShardMetrics::request_done`]) and each
//! flush's device time (recorded by the log's flusher through [`record_flush_device`]). A shard
//! is one thread, so the flush recorder is a thread-local: every log of the shard records into
//! it without a handle, and an idle log costs nothing. Both leave the shard as the non-empty
//! buckets of a DescribeLatency answer (`server/api/describe_latency.rs`) and as quantile gauges
//! in `/metrics`.

use std::cell::RefCell;
use std::time::Duration;

use hdrhistogram::Histogram;
use sluice_protocol::native::LatencyBucket;

/// Largest latency a recorder holds; longer samples count as this.
const LATENCY_RECORDED_MAX: Duration = Duration::from_secs(60);

/// One latency distribution owned by one thread.
#[derive(Debug)]
pub struct LatencyRecorder {
    histogram: RefCell<Histogram<u64>>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder::new()
    }
}

impl LatencyRecorder {
    pub fn new() -> LatencyRecorder {
        let histogram = Histogram::new_with_bounds(1, LATENCY_RECORDED_MAX.as_micros() as u64, 3)
            .expect("invariant: constant bounds are valid");
        LatencyRecorder {
            histogram: RefCell::new(histogram),
        }
    }

    pub fn record(&self, latency: Duration) {
        let us = (latency.as_micros() as u64).max(1);
        self.histogram.borrow_mut().saturating_record(us);
    }

    /// The non-empty buckets, ascending: what DescribeLatency carries.
    pub fn buckets(&self) -> Vec<LatencyBucket> {
        self.histogram
            .borrow()
            .iter_recorded()
            .map(|v| LatencyBucket {
                value_us: v.value_iterated_to(),
                count: v.count_at_value(),
            })
            .collect()
    }

    /// The values at `quantiles` (each in 0..=1), in seconds; zeros when nothing was recorded.
    pub fn quantiles_seconds(&self, quantiles: &[f64]) -> Vec<f64> {
        let histogram = self.histogram.borrow();
        quantiles
            .iter()
            .map(|q| {
                if histogram.is_empty() {
                    0.0
                } else {
                    histogram.value_at_quantile(*q) as f64 / 1e6
                }
            })
            .collect()
    }
}

thread_local! {
    /// This shard's flush device times (see the module's documentation).
    static FLUSH_DEVICE: LatencyRecorder = LatencyRecorder::new();
}

/// Records one flush's device time on the calling shard.
pub fn record_flush_device(latency: Duration) {
    FLUSH_DEVICE.with(|r| r.record(latency));
}

/// Calls `f` with the calling shard's flush device times.
pub fn with_flush_device<T>(f: impl FnOnce(&LatencyRecorder) -> T) -> T {
    FLUSH_DEVICE.with(f)
}

/// The quantiles `/metrics` shows for each distribution.
pub const EXPOSED_QUANTILES: [f64; 4] = [0.5, 0.99, 0.999, 1.0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_every_sample_at_three_significant_figures() {
        let r = LatencyRecorder::new();
        for us in [5, 5, 120, 2_500, 2_501, 90_000_000] {
            r.record(Duration::from_micros(us));
        }
        let buckets = r.buckets();
        assert_eq!(buckets.iter().map(|b| b.count).sum::<u64>(), 6);
        assert!(buckets.windows(2).all(|w| w[0].value_us < w[1].value_us));
        assert_eq!(
            buckets[0],
            LatencyBucket {
                value_us: 5,
                count: 2
            }
        );
        // Above 2,048 µs neighbours share a bucket; above the maximum, samples saturate.
        assert!(buckets.iter().any(|b| b.count == 2 && b.value_us >= 2_501));
        let last = buckets.last().unwrap();
        assert!(last.value_us >= 60_000_000 && last.value_us < 60_100_000);
        let q = r.quantiles_seconds(&[0.5, 1.0]);
        assert!((q[0] - 120e-6).abs() < 1e-9, "{q:?}");
        assert!(q[1] >= 60.0);
    }

    #[test]
    fn an_empty_recorder_reports_zeros_and_no_buckets() {
        let r = LatencyRecorder::new();
        assert!(r.buckets().is_empty());
        assert_eq!(r.quantiles_seconds(&EXPOSED_QUANTILES), vec![0.0; 4]);
    }

    #[test]
    fn the_flush_recorder_is_per_thread() {
        record_flush_device(Duration::from_micros(70));
        let here = with_flush_device(|r| r.buckets());
        assert!(here.iter().any(|b| b.value_us == 70));
        let there = std::thread::spawn(|| with_flush_device(|r| r.buckets()))
            .join()
            .unwrap();
        assert!(there.is_empty());
    }
}
