//! `GET /metrics`: the master's figures in the Prometheus text exposition format
//! (version 0.0.4), rendered from the same [`StatsView`] that `GET /stats` returns.
//!
//! It owns metric names, help texts, label escaping and number formatting. It must
//! never measure anything itself: every figure comes from the stats it is given, so the
//! JSON and the metrics never disagree.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::counters::{CounterMetric, Counters};
use crate::master::{StatsView, WorkerStats};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

/// Builds the exposition family by family: every family gets its `# HELP` and
/// `# TYPE` lines once, before its samples, as the format requires.
#[derive(Debug, Default)]
struct Exposition {
    text: String,
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

impl Exposition {
    fn family<'a>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: impl IntoIterator<Item = (Labels<'a>, f64)>,
    ) {
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.text.push_str(name);
            if !labels.is_empty() {
                self.text.push('{');
                for (i, (key, value)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.text.push(',');
                    }
                    let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
                }
                self.text.push('}');
            }
            let _ = writeln!(self.text, " {}", number(value));
        }
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help, [(Vec::new(), value)]);
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Prometheus spells infinities and not-a-number its own way.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        value.to_string()
    }
}

/// One sample per worker, labelled by its pid.
fn per_worker<'a>(
    workers: &'a BTreeMap<String, WorkerStats>,
    value: impl Fn(&WorkerStats) -> f64 + 'a,
) -> impl Iterator<Item = (Labels<'a>, f64)> + 'a {
    workers.iter().map(move |(pid, w)| (vec![("pid", pid.as_str())], value(w)))
}

/// The whole exposition for `stats`.
pub fn render(stats: &StatsView) -> String {
    let master = &stats.master;
    let mut out = Exposition::default();
    out.family(
        "superpeer_info",
        Kind::Gauge,
        "Always 1; the labels say which superpeer and which default policy run.",
        [(
            vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("policy", master.policy.meta.name.as_str()),
                ("policy_version", master.policy.meta.version.as_str()),
                ("policy_digest", master.policy.meta.digest.as_str()),
            ],
            1.0,
        )],
    );
    out.single(
        "superpeer_uptime_seconds",
        Kind::Gauge,
        "Seconds since the master started.",
        master.elapsed as f64,
    );
    out.single(
        "superpeer_master_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory of the master process.",
        master.memory as f64,
    );
    out.single(
        "superpeer_master_cpu_seconds_total",
        Kind::Counter,
        "CPU time of the master process.",
        master.cpu_seconds,
    );
    out.single(
        "superpeer_capacity_workers",
        Kind::Gauge,
        "Workers this machine takes, given cores, memory and the operator's limits.",
        master.capacity as f64,
    );
    out.single("superpeer_seeds", Kind::Gauge, "Channels asked to be seeded.", master.seeds as f64);
    out.single(
        "superpeer_workers",
        Kind::Gauge,
        "Worker processes, starting and stopping ones included.",
        stats.workers.len() as f64,
    );
    out.single(
        "superpeer_peers",
        Kind::Gauge,
        "Viewers connected to all workers.",
        master.peers as f64,
    );
    out.single(
        "superpeer_worker_restarts_total",
        Kind::Counter,
        "Times a worker died and was restarted.",
        master.worker_restarts as f64,
    );
    out.single(
        "superpeer_disk_cache_bytes",
        Kind::Gauge,
        "Bytes in the disk cache all workers share.",
        stats.workers.values().map(|w| w.disk_cache_size).max().unwrap_or(0) as f64,
    );
    for CounterMetric { name, help, get } in Counters::METRICS {
        out.single(
            &format!("superpeer_{name}"),
            Kind::Counter,
            &format!("{help} All workers since the master started, exited ones included."),
            get(&master.totals) as f64,
        );
    }

    let workers = &stats.workers;
    out.family(
        "superpeer_worker_info",
        Kind::Gauge,
        "Always 1 per worker; the labels say what it seeds and runs.",
        workers.iter().map(|(pid, w)| {
            let policy = w.policy.as_ref();
            (
                vec![
                    ("pid", pid.as_str()),
                    ("channel", w.channel_id.as_str()),
                    ("label", w.label.as_str()),
                    ("state", w.state),
                    ("policy", policy.map_or("", |p| p.name.as_str())),
                    ("policy_version", policy.map_or("", |p| p.version.as_str())),
                ],
                1.0,
            )
        }),
    );
    out.family(
        "superpeer_worker_peers",
        Kind::Gauge,
        "Viewers connected to the worker.",
        per_worker(workers, |w| f64::from(w.peers)),
    );
    for CounterMetric { name, help, get } in Counters::METRICS {
        out.family(
            &format!("superpeer_worker_{name}"),
            Kind::Counter,
            help,
            per_worker(workers, |w| get(&w.counters) as f64),
        );
    }
    out.family(
        "superpeer_worker_cpu_seconds_total",
        Kind::Counter,
        "CPU time of the worker process.",
        per_worker(workers, |w| w.cpu_seconds),
    );
    out.family(
        "superpeer_worker_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory of the worker process.",
        per_worker(workers, |w| w.memory as f64),
    );
    out.family(
        "superpeer_worker_memory_cache_bytes",
        Kind::Gauge,
        "Segment bytes the worker holds in memory.",
        per_worker(workers, |w| w.memory_cache_size as f64),
    );
    out.family(
        "superpeer_worker_trackers_open",
        Kind::Gauge,
        "Tracker connections the worker has open.",
        per_worker(workers, |w| f64::from(w.trackers)),
    );
    out.family(
        "superpeer_worker_seed_restarts_total",
        Kind::Counter,
        "Times this worker's seed had a worker die and restart.",
        per_worker(workers, |w| f64::from(w.restarts)),
    );
    out.text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("x\\y\nz \"q\""), "x\\\\y\\nz \"q\"");
    }

    #[test]
    fn numbers_are_spelled_as_prometheus_reads_them() {
        assert_eq!(number(1880.0), "1880");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
    }

    #[test]
    fn a_family_has_help_and_type_before_its_samples() {
        let mut out = Exposition::default();
        out.family(
            "x_total",
            Kind::Counter,
            "Things.",
            [(vec![("pid", "1"), ("channel", "a\"b")], 2.0), (vec![("pid", "2")], 3.0)],
        );
        assert_eq!(
            out.text,
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{pid=\"1\",channel=\"a\\\"b\"} 2\nx_total{pid=\"2\"} 3\n"
        );
    }
}
