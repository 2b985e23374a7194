//! Counters and histograms for `GET /metrics`, in the Prometheus text format (version
//! 0.0.4), written by `prometheus-client`.
//!
//! The driver records step durations (journal time), plugin call durations, rule errors
//! and journal flush latency; the HTTP layer records requests. Values that live
//! elsewhere (instance counts by status, reload counters, process usage) are read when
//! the page is rendered and registered beside the live families for that one page.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::time::Duration;

/// The `Content-Type` of the page.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    workflow: String,
    step: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: String,
    action: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkflowLabel {
    workflow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// A histogram family; its constructor gives each new series the family's bounds.
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn histograms<L: Clone + std::hash::Hash + Eq>(new: fn() -> Histogram) -> Histograms<L> {
    Family::new_with_constructor(new)
}

// Statuses always shown, so a dashboard sees zeros rather than gaps.
use crate::runtime::INDEX_STATUSES as STATUSES;

/// Everything the daemon measures as it runs. Every family is shared with the page's
/// registry (the handles are reference-counted), so recording never waits for a render.
pub struct Metrics {
    steps: Histograms<StepLabels>,
    calls: Histograms<CallLabels>,
    flushes: Histogram,
    rule_errors: Family<WorkflowLabel, Counter>,
    http: Family<RequestLabels, Counter>,
    http_latency: Histograms<RouteLabels>,
    inbox: Family<OutcomeLabel, Counter>,
    /// Starts, events and retries refused because the work in hand was at `max_pending`.
    overloaded: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            steps: histograms(|| Histogram::new(STEP_BUCKETS.iter().copied())),
            calls: histograms(|| Histogram::new(CALL_BUCKETS.iter().copied())),
            flushes: Histogram::new(FLUSH_BUCKETS.iter().copied()),
            rule_errors: Family::default(),
            http: Family::default(),
            http_latency: histograms(|| Histogram::new(HTTP_BUCKETS.iter().copied())),
            inbox: Family::default(),
            overloaded: Counter::default(),
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
        let labels = StepLabels {
            workflow: workflow.to_string(),
            step: step.to_string(),
            outcome,
        };
        self.steps
            .get_or_create(&labels)
            .observe(millis.max(0) as f64 / 1000.0);
    }

    /// `outcome`: `ok`, `error` or `timeout`.
    pub fn plugin_call(&self, plugin: &str, action: &str, outcome: &str, took: Duration) {
        let labels = CallLabels {
            plugin: plugin.to_string(),
            action: action.to_string(),
            outcome: outcome.to_string(),
        };
        self.calls
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn flush(&self, took: Duration) {
        self.flushes.observe(took.as_secs_f64());
    }

    pub fn overloaded(&self) {
        self.overloaded.inc();
    }

    pub fn rule_error(&self, workflow: &str) {
        let labels = WorkflowLabel {
            workflow: workflow.to_string(),
        };
        self.rule_errors.get_or_create(&labels).inc();
    }

    /// `outcome`: buffered, handed_over, returned, expired, purged or refused.
    pub fn inbox(&self, outcome: &str, n: u64) {
        let labels = OutcomeLabel {
            outcome: outcome.to_string(),
        };
        self.inbox.get_or_create(&labels).inc_by(n);
    }

    pub fn http_request(&self, method: &str, route: &str, status: u16) {
        let labels = RequestLabels {
            method: method.to_string(),
            route: route.to_string(),
            status,
        };
        self.http.get_or_create(&labels).inc();
    }

    pub fn http_latency(&self, method: &str, route: &str, took: Duration) {
        let labels = RouteLabels {
            method: method.to_string(),
            route: route.to_string(),
        };
        self.http_latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The whole page. Help texts carry no final period: the encoder adds one.
    pub fn render(&self, s: &Snapshot) -> Result<String, std::fmt::Error> {
        let mut r = Registry::default();
        let by_status = Family::<StatusLabel, Gauge<i64>>::default();
        for status in STATUSES {
            // A zero for every status, so a dashboard sees zeros rather than gaps.
            by_status
                .get_or_create(&StatusLabel {
                    status: (*status).to_string(),
                })
                .set(0);
        }
        for (status, n) in &s.instances_by_status {
            let labels = StatusLabel {
                status: status.clone(),
            };
            by_status
                .get_or_create(&labels)
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        r.register(
            "casework_instances",
            "Instances in the store, by status",
            by_status,
        );
        r.register(
            "casework_ready",
            "1 once workflows are loaded and instances resumed",
            ConstGauge::new(i64::from(s.ready)),
        );
        r.register(
            "casework_workflows_loaded",
            "Workflows that accept new instances",
            ConstGauge::new(s.workflows_loaded as i64),
        );
        r.register(
            "casework_journal_records",
            "Journal records written",
            ConstCounter::new(u64::try_from(s.journal_records).unwrap_or(0)),
        );
        r.register(
            "casework_reloads",
            "Reloads of the workflow folder (at start and on change)",
            ConstCounter::new(s.reloads),
        );
        r.register(
            "casework_reload_failures",
            "Reloads that rejected at least one file",
            ConstCounter::new(s.reload_failures),
        );
        r.register(
            "casework_overloaded",
            "Starts, events and retries refused with 503 because the work in hand was at max_pending",
            self.overloaded.clone(),
        );
        r.register(
            "casework_rule_output_dropped_bytes",
            "Bytes that rules printed beyond their output budgets and were not logged",
            ConstCounter::new(s.rule_output_dropped.0),
        );
        r.register(
            "casework_rule_output_dropped_lines",
            "Rule print/debug lines dropped whole by the output budgets",
            ConstCounter::new(s.rule_output_dropped.1),
        );
        if let Some(u) = super::process::usage("self") {
            r.register(
                "process_cpu_seconds",
                "User and system CPU time of the daemon",
                ConstCounter::new(u.cpu_seconds),
            );
            r.register(
                "process_resident_memory_bytes",
                "Resident memory of the daemon",
                ConstGauge::new(u.resident_bytes as i64),
            );
            r.register(
                "process_threads",
                "Threads of the daemon",
                ConstGauge::new(u.threads as i64),
            );
            if let Some(fds) = u.open_fds {
                r.register(
                    "process_open_fds",
                    "Open file descriptors of the daemon",
                    ConstGauge::new(fds as i64),
                );
            }
        }
        r.register(
            "casework_build",
            "The running build: always 1, with its version",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "casework_step_duration_seconds",
            "Time from entering a step to its end, in journal time (waits and retries included)",
            self.steps.clone(),
        );
        r.register(
            "casework_plugin_call_duration_seconds",
            "Wall time of one plugin call attempt",
            self.calls.clone(),
        );
        r.register(
            "casework_rule_errors",
            "Steps that failed because a rule or template failed to evaluate",
            self.rule_errors.clone(),
        );
        r.register(
            "casework_journal_flush_duration_seconds",
            "Time to make a group of journal writes durable (one shared fsync)",
            self.flushes.clone(),
        );
        r.register(
            "casework_http_requests",
            "HTTP requests answered, by route and status",
            self.http.clone(),
        );
        r.register(
            "casework_http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route (a waited start or long poll includes its wait)",
            self.http_latency.clone(),
        );
        r.register(
            "casework_inbox_events",
            "Events that came before their wait, by what became of them: buffered, handed_over (to a wait that began later), returned (to the inbox by an instance that no longer waited), expired, purged, refused (inbox full)",
            self.inbox.clone(),
        );
        let mut out = String::new();
        prometheus_text::encode(&mut out, &r)?;
        Ok(out)
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
        let page = m.render(&Snapshot::default()).unwrap();
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
        let page = m.render(&snap).unwrap();
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
