//! Support metrics from what the journal records, per workflow: instances by outcome,
//! time to first response and to resolution, SLA attainment and survey scores.
//!
//! A workflow marks what it measures in `vars.report` (see docs/workflows.md, "Support
//! metrics"): `first_response_at` and `resolved_at` (instants), `sla_met` (true/false),
//! and survey answers under `survey` (e.g. `{csat: 5, nps: 9}`). Nothing else is
//! inferred, so a report never guesses what a step meant.

use super::registry::Registry;
use crate::compile::rules::Rules;
use crate::runtime::Millis;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Percentiles of a duration, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durations {
    pub count: u64,
    pub p50_ms: i64,
    pub p90_ms: i64,
    pub max_ms: i64,
}

/// How often the SLA was met among instances that recorded it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attainment {
    pub measured: u64,
    pub met: u64,
    /// Whole percent, rounded down.
    pub percent: u64,
}

/// One survey question's answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Survey {
    pub answers: u64,
    /// The mean as text with two decimals (integer arithmetic, no float rounding drift).
    pub average: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowReport {
    pub workflow: String,
    pub instances: u64,
    pub by_status: BTreeMap<String, u64>,
    pub first_response: Option<Durations>,
    pub resolution: Option<Durations>,
    pub sla: Option<Attainment>,
    pub surveys: BTreeMap<String, Survey>,
    /// The same measures week by week (by when instances started), oldest first; the
    /// latest [`MAX_WEEKS`] weeks that had instances.
    #[serde(default)]
    pub by_week: Vec<Week>,
}

/// Weeks a report gives at most in `by_week`.
pub const MAX_WEEKS: usize = 52;

/// One week of a workflow's report: the instances that started in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Week {
    /// The Monday it starts on (00:00 UTC), as a date such as `2026-11-30`.
    pub week: String,
    pub instances: u64,
    pub first_response: Option<Durations>,
    pub resolution: Option<Durations>,
    pub sla: Option<Attainment>,
}

/// What instances recorded in `vars.report`, gathered.
#[derive(Default)]
struct Measures {
    instances: u64,
    first_response: Vec<i64>,
    resolution: Vec<i64>,
    sla_measured: u64,
    sla_met: u64,
}

impl Measures {
    fn add(&mut self, report: Option<&Value>, created_at: Millis) {
        self.instances += 1;
        let Some(report) = report else { return };
        if let Some(t) = report.get("first_response_at").and_then(instant) {
            self.first_response.push(t - created_at);
        }
        if let Some(t) = report.get("resolved_at").and_then(instant) {
            self.resolution.push(t - created_at);
        }
        if let Some(met) = report.get("sla_met").and_then(Value::as_bool) {
            self.sla_measured += 1;
            self.sla_met += u64::from(met);
        }
    }

    fn attainment(&self) -> Option<Attainment> {
        (self.sla_measured > 0).then(|| Attainment {
            measured: self.sla_measured,
            met: self.sla_met,
            percent: self.sla_met * 100 / self.sla_measured,
        })
    }
}

/// The Monday (00:00 UTC) of the week holding `t`, in epoch milliseconds.
fn week_of(t: Millis) -> Millis {
    const DAY: i64 = 86_400_000;
    let day = t.div_euclid(DAY);
    // Day 0 (1970-01-01) was a Thursday: three days after a Monday.
    (day - (day + 3).rem_euclid(7)) * DAY
}

#[derive(Default)]
struct Tally {
    by_status: BTreeMap<String, u64>,
    all: Measures,
    weeks: BTreeMap<Millis, Measures>,
    surveys: BTreeMap<String, (u64, i64)>,
}

fn instant(v: &Value) -> Option<Millis> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_millis())
        .or_else(|| v.as_i64())
}

fn durations(mut v: Vec<i64>) -> Option<Durations> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |p: usize| v[(v.len() - 1) * p / 100];
    Some(Durations {
        count: v.len() as u64,
        p50_ms: at(50),
        p90_ms: at(90),
        max_ms: v[v.len() - 1],
    })
}

fn average(sum: i64, n: u64) -> String {
    let hundredths = sum * 100 / n as i64;
    format!("{}.{:02}", hundredths / 100, (hundredths % 100).abs())
}

/// Builds the report over every top-level instance in the store, optionally one
/// workflow's, started at or after `since`.
pub fn build(
    store: &dyn Store,
    rules: &Arc<Rules>,
    workflow: Option<&str>,
    since: Option<Millis>,
) -> Result<Vec<WorkflowReport>, String> {
    let registry = Registry::default();
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .instances(after.as_deref(), 500)
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for meta in page {
            if meta.parent.is_some()
                || workflow.is_some_and(|w| w != meta.workflow)
                || since.is_some_and(|s| meta.created_at < s)
            {
                continue;
            }
            let tally = tallies.entry(meta.workflow.clone()).or_default();
            *tally.by_status.entry(meta.status.clone()).or_default() += 1;
            let (inst, _) = registry.replay(store, &meta, rules)?;
            let report = inst.vars().get("report");
            tally.all.add(report, meta.created_at);
            tally
                .weeks
                .entry(week_of(meta.created_at))
                .or_default()
                .add(report, meta.created_at);
            let Some(report) = report else {
                continue;
            };
            if let Some(Value::Object(answers)) = report.get("survey") {
                for (question, score) in answers {
                    if let Some(score) = score.as_i64() {
                        let entry = tally.surveys.entry(question.clone()).or_default();
                        entry.0 += 1;
                        entry.1 += score;
                    }
                }
            }
        }
    }
    Ok(tallies
        .into_iter()
        .map(|(workflow, t)| WorkflowReport {
            instances: t.by_status.values().sum(),
            workflow,
            by_status: t.by_status,
            sla: t.all.attainment(),
            first_response: durations(t.all.first_response),
            resolution: durations(t.all.resolution),
            by_week: {
                let skip = t.weeks.len().saturating_sub(MAX_WEEKS);
                t.weeks
                    .into_iter()
                    .skip(skip)
                    .map(|(start, m)| Week {
                        week: chrono::DateTime::from_timestamp_millis(start)
                            .map(|d| d.format("%Y-%m-%d").to_string())
                            .unwrap_or_default(),
                        instances: m.instances,
                        sla: m.attainment(),
                        first_response: durations(m.first_response),
                        resolution: durations(m.resolution),
                    })
                    .collect()
            },
            surveys: t
                .surveys
                .into_iter()
                .map(|(q, (n, sum))| {
                    (
                        q,
                        Survey {
                            answers: n,
                            average: average(sum, n),
                        },
                    )
                })
                .collect(),
        })
        .collect())
}

/// The report as text for a terminal.
pub fn render(reports: &[WorkflowReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if reports.is_empty() {
        out.push_str("no instances yet\n");
    }
    let human = |ms: i64| crate::definition::Duration::from_millis(ms.max(0) as u64).to_string();
    for r in reports {
        let _ = writeln!(out, "{} — {} instance(s)", r.workflow, r.instances);
        let statuses: Vec<String> = r
            .by_status
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        let _ = writeln!(out, "  outcomes: {}", statuses.join(", "));
        for (label, d) in [
            ("first response", &r.first_response),
            ("resolution", &r.resolution),
        ] {
            if let Some(d) = d {
                let _ = writeln!(
                    out,
                    "  {label}: p50 {}, p90 {}, max {} ({} measured)",
                    human(d.p50_ms),
                    human(d.p90_ms),
                    human(d.max_ms),
                    d.count
                );
            }
        }
        if let Some(s) = &r.sla {
            let _ = writeln!(
                out,
                "  SLA met: {}% ({} of {})",
                s.percent, s.met, s.measured
            );
        }
        for (q, s) in &r.surveys {
            let _ = writeln!(
                out,
                "  survey {q}: average {} ({} answers)",
                s.average, s.answers
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_start_on_monday_at_midnight_utc() {
        let ms = |t: &str| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .timestamp_millis()
        };
        let monday = ms("2026-11-30T00:00:00Z");
        for t in [
            "2026-11-30T00:00:00Z",
            "2026-12-02T13:00:00Z",
            "2026-12-06T23:59:59Z",
        ] {
            assert_eq!(week_of(ms(t)), monday, "{t}");
        }
        assert_eq!(
            week_of(ms("2026-11-29T23:59:59Z")),
            ms("2026-11-23T00:00:00Z")
        );
        assert_eq!(
            week_of(ms("1969-12-31T12:00:00Z")),
            ms("1969-12-29T00:00:00Z")
        );
    }

    #[test]
    fn averages_use_integer_arithmetic() {
        assert_eq!(average(14, 3), "4.66");
        assert_eq!(average(10, 2), "5.00");
        assert_eq!(average(-3, 2), "-1.50");
    }

    #[test]
    fn percentiles_come_from_the_sorted_values() {
        let d = durations(vec![50, 10, 40, 20, 30]).unwrap();
        assert_eq!((d.count, d.p50_ms, d.p90_ms, d.max_ms), (5, 30, 40, 50));
        assert_eq!(durations(vec![]), None);
    }
}
