//! Lock-free counters and fixed-bucket histograms for the server's
//! metrics, cheap enough to update on every write.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A histogram over fixed upper bounds (cumulative when rendered, as
/// Prometheus expects); values above the last bound count only in `+Inf`.
pub struct Histogram {
    bounds: &'static [u64],
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

/// Latency bounds in microseconds: 100 µs to 10 s.
pub const LATENCY_MICROS: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    10_000_000,
];

/// Batch-size bounds.
pub const BATCH_SIZES: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: u64) {
        if let Some(index) = self.bounds.iter().position(|bound| value <= *bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The sum of what was observed (with `count`, the mean).
    pub fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }

    /// Appends the histogram in Prometheus text format; `scale` divides
    /// bounds and sum (1e6 turns microseconds into seconds).
    pub fn render(&self, name: &str, help: &str, scale: u64, out: &mut String) {
        let unit = |value: u64| {
            if scale == 1 {
                value.to_string()
            } else {
                let whole = value / scale;
                let fraction = value % scale;
                let digits = scale.to_string().len() - 1;
                let text = format!("{whole}.{fraction:0digits$}");
                text.trim_end_matches('0').trim_end_matches('.').to_string()
            }
        };
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            out.push_str(&format!(
                "{name}_bucket{{le=\"{}\"}} {cumulative}\n",
                unit(*bound)
            ));
        }
        let count = self.count();
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {count}\n"));
        out.push_str(&format!(
            "{name}_sum {}\n{name}_count {count}\n",
            unit(self.sum.load(Ordering::Relaxed))
        ));
    }
}

/// Committed ledger rows of one kind: how many and their signed sum.
#[derive(Default)]
pub struct KindTotals {
    pub count: AtomicU64,
    pub sum_micros: AtomicI64,
}

impl KindTotals {
    pub fn add(&self, amount_micros: i64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(amount_micros, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets_in_seconds() {
        let histogram = Histogram::new(&[1_000, 250_000]);
        histogram.observe(500);
        histogram.observe(200_000);
        histogram.observe(3_000_000);
        let mut out = String::new();
        histogram.render("ack_seconds", "Ack latency.", 1_000_000, &mut out);
        assert_eq!(
            out,
            "# HELP ack_seconds Ack latency.\n# TYPE ack_seconds histogram\n\
             ack_seconds_bucket{le=\"0.001\"} 1\nack_seconds_bucket{le=\"0.25\"} 2\n\
             ack_seconds_bucket{le=\"+Inf\"} 3\nack_seconds_sum 3.2005\nack_seconds_count 3\n"
        );
    }
}
