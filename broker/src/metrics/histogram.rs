//! Fixed-bucket histograms for one thread: observing is two `Cell` updates (no lock, no atomic),
//! and a [`HistogramSnapshot`] (plain data, `Send`) is what leaves the shard at a scrape.

use std::cell::Cell;

/// Bucket upper bounds for latencies, in seconds: 50 µs to 10 s. The fdatasync here costs
/// 75 µs – 4 ms and a produce round trip 0.1 – 50 ms (`docs/benchmarks.md`), so the buckets are
/// densest there.
pub const LATENCY_BOUNDS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Bucket upper bounds for flush sizes, in bytes: one 4 KiB block to the 64 MiB largest batch.
pub const SIZE_BOUNDS_BYTES: &[f64] = &[
    4_096.0,
    16_384.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// A histogram owned by one thread.
#[derive(Debug)]
pub struct LocalHistogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is above every bound.
    counts: Box<[Cell<u64>]>,
    sum: Cell<f64>,
}

impl LocalHistogram {
    pub fn new(bounds: &'static [f64]) -> LocalHistogram {
        LocalHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| Cell::new(0)).collect(),
            sum: Cell::new(0.0),
        }
    }

    pub fn observe(&self, value: f64) {
        let bucket = self.bounds.partition_point(|b| *b < value);
        let cell = &self.counts[bucket];
        cell.set(cell.get() + 1);
        self.sum.set(self.sum.get() + value);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self.counts.iter().map(Cell::get).collect(),
            sum: self.sum.get(),
        }
    }
}

/// A histogram's state at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    /// Per bucket, not cumulative; one more than `bounds` (the last is `+Inf`).
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl HistogramSnapshot {
    pub fn empty(bounds: &'static [f64]) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s observations (same bounds) to this one's.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        assert_eq!(
            self.bounds, other.bounds,
            "merging histograms of other buckets"
        );
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
    }

    /// (upper bound, count in that bucket) with `f64::MAX` for the last: what the exposition
    /// encoder takes.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(self.counts.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = LocalHistogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0, 100.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.counts, vec![2, 1, 2]);
        assert_eq!(s.count(), 5);
        assert_eq!(s.sum, 106.0);
        let mut total = HistogramSnapshot::empty(&[1.0, 2.0]);
        total.merge(&s);
        total.merge(&s);
        assert_eq!(total.counts, vec![4, 2, 4]);
        assert_eq!(total.buckets().last(), Some(&(f64::MAX, 4)));
    }
}
