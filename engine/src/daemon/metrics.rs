//! Counters and histograms for `GET /metrics`, written in the Prometheus text format
//! (version 0.0.4) by hand: a few families, no registry needed.
//!
//! The driver records step durations (journal time), plugin call durations, rule errors
//! and journal flush latency; the HTTP layer records requests. Instance counts by status
//! and reload counters are read when the page is rendered.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Step durations span milliseconds (rules) to days (waits on people).
const STEP_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 3_600.0, 21_600.0, 86_400.0, 604_800.0,
];
/// Plugin calls: milliseconds to the longest timeouts.
const CALL_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// API requests: a cached read to a long poll's 60 s.
const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0, 60.0,
];
/// Journal flushes (one fsync shared by a group of writers).
const FLUSH_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Clone, Debug)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Histogram {
        Histogram {
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, bounds: &[f64], v: f64) {
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// A histogram per combination of label values.
struct HistogramFamily {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    bounds: &'static [f64],
    series: Mutex<BTreeMap<Vec<String>, Histogram>>,
}

impl HistogramFamily {
    const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Self {
        HistogramFamily {
            name,
            help,
            labels,
            bounds,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    fn observe(&self, values: &[&str], seconds: f64) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series
            .entry(values.iter().map(|v| v.to_string()).collect())
            .or_insert_with(|| Histogram::new(self.bounds))
            .observe(self.bounds, seconds);
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for (values, h) in series.iter() {
            let labels = label_text(self.labels, values);
            let sep = if labels.is_empty() { "" } else { "," };
            let mut cumulative = 0;
            for (i, bound) in self.bounds.iter().enumerate() {
                cumulative += h.counts[i];
                let _ = writeln!(
                    out,
                    "{}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}",
                    self.name
                );
            }
            let _ = writeln!(
                out,
                "{}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
                self.name, h.count
            );
            let braces = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            let _ = writeln!(out, "{}_sum{braces} {}", self.name, h.sum);
            let _ = writeln!(out, "{}_count{braces} {}", self.name, h.count);
        }
    }
}

/// A counter per combination of label values.
struct CounterFamily {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl CounterFamily {
    const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        CounterFamily {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    fn add(&self, values: &[&str], n: u64) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        *series
            .entry(values.iter().map(|v| v.to_string()).collect())
            .or_default() += n;
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for (values, n) in series.iter() {
            let _ = writeln!(
                out,
                "{}{{{}}} {n}",
                self.name,
                label_text(self.labels, values)
            );
        }
    }
}

fn label_text(names: &[&str], values: &[String]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

// Statuses always shown, so a dashboard sees zeros rather than gaps.
use crate::runtime::INDEX_STATUSES as STATUSES;

/// Everything the daemon measures as it runs.
pub struct Metrics {
    steps: HistogramFamily,
    calls: HistogramFamily,
    flushes: HistogramFamily,
    rule_errors: CounterFamily,
    http: CounterFamily,
    http_latency: HistogramFamily,
    inbox: CounterFamily,
    /// Starts, events and retries refused because the work in hand was at `max_pending`.
    overloaded: std::sync::atomic::AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            steps: HistogramFamily::new(
                "casework_step_duration_seconds",
                "Time from entering a step to its end, in journal time (waits and retries included).",
                &["workflow", "step", "outcome"],
                STEP_BUCKETS,
            ),
            calls: HistogramFamily::new(
                "casework_plugin_call_duration_seconds",
                "Wall time of one plugin call attempt.",
                &["plugin", "action", "outcome"],
                CALL_BUCKETS,
            ),
            flushes: HistogramFamily::new(
                "casework_journal_flush_duration_seconds",
                "Time to make a group of journal writes durable (one shared fsync).",
                &[],
                FLUSH_BUCKETS,
            ),
            rule_errors: CounterFamily::new(
                "casework_rule_errors_total",
                "Steps that failed because a rule or template failed to evaluate.",
                &["workflow"],
            ),
            http: CounterFamily::new(
                "casework_http_requests_total",
                "HTTP requests answered, by route and status.",
                &["method", "route", "status"],
            ),
            http_latency: HistogramFamily::new(
                "casework_http_request_duration_seconds",
                "Time from a request's arrival to its answer, by route (a waited start or long poll includes its wait).",
                &["method", "route"],
                HTTP_BUCKETS,
            ),
            inbox: CounterFamily::new(
                "casework_inbox_events_total",
                "Events that came before their wait, by what became of them: buffered, handed_over (to a wait that began later), returned (to the inbox by an instance that no longer waited), expired, purged, refused (inbox full).",
                &["outcome"],
            ),
            overloaded: Default::default(),
        }
    }
}

/// Point-in-time values the renderer is handed (read from the store and the reloader).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub instances_by_status: BTreeMap<String, u64>,
    pub workflows_loaded: usize,
    pub journal_records: i64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub ready: bool,
    /// Rule output dropped by its budgets (`compile::rule_output`): bytes, lines.
    pub rule_output_dropped: (u64, u64),
}

impl Metrics {
    pub fn step(&self, workflow: &str, step: &str, ok: bool, millis: i64) {
        let outcome = if ok { "completed" } else { "failed" };
        self.steps
            .observe(&[workflow, step, outcome], millis.max(0) as f64 / 1000.0);
    }

    /// `outcome`: `ok`, `error` or `timeout`.
    pub fn plugin_call(&self, plugin: &str, action: &str, outcome: &str, took: Duration) {
        self.calls
            .observe(&[plugin, action, outcome], took.as_secs_f64());
    }

    pub fn flush(&self, took: Duration) {
        self.flushes.observe(&[], took.as_secs_f64());
    }

    pub fn overloaded(&self) {
        self.overloaded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn rule_error(&self, workflow: &str) {
        self.rule_errors.inc(&[workflow]);
    }

    /// `outcome`: buffered, handed_over, returned, expired, purged or refused.
    pub fn inbox(&self, outcome: &str, n: u64) {
        self.inbox.add(&[outcome], n);
    }

    pub fn http_request(&self, method: &str, route: &str, status: u16) {
        self.http.inc(&[method, route, &status.to_string()]);
    }

    pub fn http_latency(&self, method: &str, route: &str, took: Duration) {
        self.http_latency
            .observe(&[method, route], took.as_secs_f64());
    }

    /// The whole page.
    pub fn render(&self, s: &Snapshot) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
        };
        let _ = writeln!(
            out,
            "# HELP casework_instances Instances in the store, by status."
        );
        let _ = writeln!(out, "# TYPE casework_instances gauge");
        for status in STATUSES {
            let n = s.instances_by_status.get(status).copied().unwrap_or(0);
            let _ = writeln!(out, "casework_instances{{status=\"{status}\"}} {n}");
        }
        for (status, n) in &s.instances_by_status {
            if !STATUSES.contains(&status.as_str()) {
                let _ = writeln!(
                    out,
                    "casework_instances{{status=\"{}\"}} {n}",
                    escape(status)
                );
            }
        }
        gauge(
            &mut out,
            "casework_ready",
            "1 once workflows are loaded and instances resumed.",
            u8::from(s.ready).to_string(),
        );
        gauge(
            &mut out,
            "casework_workflows_loaded",
            "Workflows that accept new instances.",
            s.workflows_loaded.to_string(),
        );
        counter(
            &mut out,
            "casework_journal_records_total",
            "Journal records written.",
            s.journal_records.to_string(),
        );
        counter(
            &mut out,
            "casework_reloads_total",
            "Reloads of the workflow folder (at start and on change).",
            s.reloads.to_string(),
        );
        counter(
            &mut out,
            "casework_reload_failures_total",
            "Reloads that rejected at least one file.",
            s.reload_failures.to_string(),
        );
        counter(
            &mut out,
            "casework_overloaded_total",
            "Starts, events and retries refused with 503 because the work in hand was at max_pending.",
            self.overloaded
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        );
        counter(
            &mut out,
            "casework_rule_output_dropped_bytes_total",
            "Bytes that rules printed beyond their output budgets and were not logged.",
            s.rule_output_dropped.0.to_string(),
        );
        counter(
            &mut out,
            "casework_rule_output_dropped_lines_total",
            "Rule print/debug lines dropped whole by the output budgets.",
            s.rule_output_dropped.1.to_string(),
        );
        if let Some(u) = super::process::usage("self") {
            counter(
                &mut out,
                "process_cpu_seconds_total",
                "User and system CPU time of the daemon.",
                u.cpu_seconds.to_string(),
            );
            gauge(
                &mut out,
                "process_resident_memory_bytes",
                "Resident memory of the daemon.",
                u.resident_bytes.to_string(),
            );
            gauge(
                &mut out,
                "process_threads",
                "Threads of the daemon.",
                u.threads.to_string(),
            );
            if let Some(fds) = u.open_fds {
                gauge(
                    &mut out,
                    "process_open_fds",
                    "Open file descriptors of the daemon.",
                    fds.to_string(),
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP casework_build_info The running build: always 1, with its version."
        );
        let _ = writeln!(out, "# TYPE casework_build_info gauge");
        let _ = writeln!(
            out,
            "casework_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        self.steps.render(&mut out);
        self.calls.render(&mut out);
        self.rule_errors.render(&mut out);
        self.flushes.render(&mut out);
        self.http.render(&mut out);
        self.http_latency.render(&mut out);
        self.inbox.render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let m = Metrics::default();
        m.flush(Duration::from_micros(300));
        m.flush(Duration::from_millis(2));
        m.flush(Duration::from_secs(5));
        let page = m.render(&Snapshot::default());
        assert!(page.contains("casework_journal_flush_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(page.contains("casework_journal_flush_duration_seconds_bucket{le=\"0.0025\"} 2\n"));
        assert!(page.contains("casework_journal_flush_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(page.contains("casework_journal_flush_duration_seconds_count 3\n"));
    }

    #[test]
    fn labels_are_escaped_and_every_family_has_help_and_type() {
        let m = Metrics::default();
        m.step("refund", "say \"hi\"\\", true, 1500);
        m.plugin_call("payments", "refund", "ok", Duration::from_millis(20));
        m.rule_error("refund");
        m.http_request("GET", "/v1/instances/{id}", 404);
        let mut snap = Snapshot::default();
        snap.instances_by_status.insert("failed".into(), 2);
        snap.rule_output_dropped = (5908, 1);
        let page = m.render(&snap);
        assert!(page.contains("casework_rule_output_dropped_bytes_total 5908\n"));
        assert!(page.contains("casework_rule_output_dropped_lines_total 1\n"));
        assert!(page.contains(
            "casework_step_duration_seconds_bucket{workflow=\"refund\",step=\"say \\\"hi\\\"\\\\\",outcome=\"completed\",le=\"10\"} 1"
        ), "{page}");
        assert!(page.contains("casework_instances{status=\"failed\"} 2\n"));
        assert!(page.contains("casework_instances{status=\"running\"} 0\n"));
        assert!(page.contains(
            "casework_http_requests_total{method=\"GET\",route=\"/v1/instances/{id}\",status=\"404\"} 1\n"
        ));
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                page.contains(&format!("# TYPE {family} ")),
                "{family} has no TYPE"
            );
            assert!(
                page.contains(&format!("# HELP {family} ")),
                "{family} has no HELP"
            );
        }
    }
}
