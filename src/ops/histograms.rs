//! Suture's histograms: fixed buckets of atomic counters, and the recorder that serves them
//! next to metrics-exporter-prometheus's counters and gauges.
//!
//! The exporter keeps every histogram sample in a lock-free queue (`AtomicBucket`) until an
//! upkeep or a scrape folds it into the buckets, and frees the queue's blocks through
//! crossbeam-epoch's deferred garbage. Measured under load (valgrind massif, 100 requests a
//! second, upkeep every 5 s): that garbage grew by about 400 bytes a second for as long as the
//! process ran (24 KiB a minute of RSS in `bench_scale.sh`'s soak), whatever the request rate.
//! Here a sample is one atomic add on its bucket, one on the count and one on the sum, and
//! nothing is allocated after a series is registered. The rendered text has the exporter's
//! shape: `_bucket{…,le="…"}` (cumulative), `_sum` and `_count`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};

/// One histogram series: a count per bucket (the last one is `+Inf`), the sum and the count.
#[derive(Debug)]
pub(crate) struct BucketHistogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    /// The sum of the samples, as `f64` bits.
    sum: AtomicU64,
}

impl BucketHistogram {
    fn new(bounds: &'static [f64]) -> BucketHistogram {
        BucketHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Cumulative counts per bound, then the total (the `+Inf` bucket), and the sum.
    fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut running = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                running += c.load(Ordering::Relaxed);
                running
            })
            .collect();
        (cumulative, f64::from_bits(self.sum.load(Ordering::Relaxed)))
    }
}

impl HistogramFn for BucketHistogram {
    fn record(&self, value: f64) {
        // Prometheus buckets are "less than or equal": the first bound at or above the value.
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        // Only a NaN could make this fail; its sum stays what it was.
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

/// The series of one histogram, by label set (`(name, value)` pairs in the order given).
type Series = BTreeMap<Vec<(String, String)>, Arc<BucketHistogram>>;

/// The histogram series by name, then by label set, with their HELP texts.
#[derive(Debug, Default)]
struct Families {
    series: BTreeMap<String, Series>,
    help: BTreeMap<String, String>,
}

/// What `/metrics` serves: the exporter's counters and gauges, then these histograms.
#[derive(Clone)]
pub struct MetricsHandle {
    prometheus: PrometheusHandle,
    families: Arc<Mutex<Families>>,
}

impl MetricsHandle {
    /// The Prometheus text of every series.
    pub fn render(&self) -> String {
        let mut out = self.prometheus.render();
        let families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        for (name, series) in &families.series {
            render_family(&mut out, name, families.help.get(name), series);
        }
        out
    }

    /// The exporter's housekeeping (idle series and the like); a no-op for the histograms here.
    pub fn run_upkeep(&self) {
        self.prometheus.run_upkeep();
    }
}

fn render_family(out: &mut String, name: &str, help: Option<&String>, series: &Series) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if let Some(help) = help {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    }
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (labels, histogram) in series {
        let base: String = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\",", escape_label(v)))
            .collect();
        let (cumulative, sum) = histogram.snapshot();
        for (bound, count) in histogram.bounds.iter().zip(&cumulative) {
            let _ = writeln!(out, "{name}_bucket{{{base}le=\"{bound}\"}} {count}");
        }
        let total = cumulative.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{base}le=\"+Inf\"}} {total}");
        let plain = base.trim_end_matches(',');
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(plain));
        let _ = writeln!(out, "{name}_count{} {total}", braces(plain));
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The global recorder: counters and gauges go to the Prometheus exporter, histograms here.
pub(crate) struct SutureRecorder {
    prometheus: PrometheusRecorder,
    bounds: &'static [f64],
    families: Arc<Mutex<Families>>,
}

impl SutureRecorder {
    pub(crate) fn new(prometheus: PrometheusRecorder, bounds: &'static [f64]) -> SutureRecorder {
        SutureRecorder {
            prometheus,
            bounds,
            families: Arc::default(),
        }
    }

    pub(crate) fn handle(&self) -> MetricsHandle {
        MetricsHandle {
            prometheus: self.prometheus.handle(),
            families: Arc::clone(&self.families),
        }
    }
}

impl Recorder for SutureRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        families
            .help
            .insert(key.as_str().to_owned(), description.into_owned());
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.prometheus.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.prometheus.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        let labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let series = families.series.entry(key.name().to_owned()).or_default();
        let histogram = series
            .entry(labels)
            .or_insert_with(|| Arc::new(BucketHistogram::new(self.bounds)));
        Histogram::from_arc(Arc::clone(histogram))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    const BOUNDS: [f64; 3] = [0.001, 0.01, 0.1];

    fn recorder() -> SutureRecorder {
        SutureRecorder::new(PrometheusBuilder::new().build_recorder(), &BOUNDS)
    }

    #[test]
    fn samples_land_in_le_buckets_cumulatively() {
        let r = recorder();
        metrics::with_local_recorder(&r, || {
            metrics::describe_histogram!("t_seconds", "Test latency");
            let h = metrics::histogram!("t_seconds", "pool" => "a");
            for v in [0.0005, 0.001, 0.002, 0.05, 0.5, 7.0] {
                h.record(v);
            }
            metrics::counter!("c_total").increment(3);
        });
        let text = r.handle().render();
        for line in [
            "# HELP t_seconds Test latency",
            "# TYPE t_seconds histogram",
            "t_seconds_bucket{pool=\"a\",le=\"0.001\"} 2",
            "t_seconds_bucket{pool=\"a\",le=\"0.01\"} 3",
            "t_seconds_bucket{pool=\"a\",le=\"0.1\"} 4",
            "t_seconds_bucket{pool=\"a\",le=\"+Inf\"} 6",
            "t_seconds_count{pool=\"a\"} 6",
            "c_total 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("t_seconds_sum{pool=\"a\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        assert!((sum - 7.5535).abs() < 1e-9, "sum {sum}");
    }

    #[test]
    fn a_series_without_labels_and_a_registered_empty_one() {
        let r = recorder();
        metrics::with_local_recorder(&r, || {
            metrics::histogram!("u_seconds").record(0.02);
            let _ = metrics::histogram!("v_seconds", "pool" => "q\"x");
        });
        let text = r.handle().render();
        assert!(
            text.contains("\nu_seconds_bucket{le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("\nu_seconds_count 1\n"), "{text}");
        assert!(
            text.contains("v_seconds_count{pool=\"q\\\"x\"} 0"),
            "escaped label, zero count: {text}"
        );
    }

    #[test]
    fn the_same_key_is_one_series() {
        let r = recorder();
        metrics::with_local_recorder(&r, || {
            metrics::histogram!("w_seconds", "protocol" => "mysql").record(0.5);
            metrics::histogram!("w_seconds", "protocol" => "mysql").record(0.5);
        });
        let text = r.handle().render();
        assert!(
            text.contains("w_seconds_count{protocol=\"mysql\"} 2"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE w_seconds histogram").count(), 1);
    }
}
