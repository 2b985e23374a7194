//! Support metrics from the journal: outcomes, first response and resolution times,
//! SLA attainment and survey averages, per workflow.

use casework::clock::ManualClock;
use casework::compile::{self, rules::Rules};
use casework::daemon::report;
use casework::daemon::Driver;
use casework::plugin_host::NoPlugins;
use casework::store::sled::SledStore;
use casework::store::Store;
use serde_json::json;
use std::sync::Arc;

const TICKET: &str = r#"
workflow: ticket
version: 1
input:
  respond_after: { type: string, required: true }
  resolve_after: { type: string, required: true }
  sla_met: { type: boolean, required: true }
  csat: { type: integer, default: 0 }
  fail: { type: boolean, default: false }
steps:
  - id: respond
    sleep: { until: "add_duration(now, input.respond_after)" }
    next: mark_response
  - id: mark_response
    rule: |
      vars.report = #{ first_response_at: now };
    next: resolve
  - id: resolve
    sleep: { until: "add_duration(now, input.resolve_after)" }
    next: mark_resolved
  - id: mark_resolved
    rule: |
      vars.report.resolved_at = now;
      vars.report.sla_met = input.sla_met;
      if input.csat > 0 { vars.report.survey = #{ csat: input.csat }; }
    next: end
  - id: end
    switch:
      - when: input.fail
        goto: broken
    default: done
  - id: done
    complete: {}
  - id: broken
    fail: { code: gave_up, message: "could not resolve" }
"#;

#[tokio::test]
async fn report_counts_outcomes_times_sla_and_surveys() {
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let clock = Arc::new(ManualClock::new(1_767_225_600_000));
    let d = Driver::new(store.clone(), Arc::new(NoPlugins), clock, None);
    let (wf, diags) = compile::load("ticket.yaml", TICKET, &Default::default(), &Rules::shared());
    d.install(wf.unwrap_or_else(|| panic!("{diags:#?}")))
        .unwrap();
    let cases = [
        ("10m", "1h", true, 5, false),
        ("20m", "2h", true, 4, false),
        ("30m", "3h", false, 0, false),
        ("40m", "4h", true, 2, true),
    ];
    for (respond, resolve, met, csat, fail) in cases {
        d.start(
            "ticket",
            json!({"respond_after": respond, "resolve_after": resolve, "sla_met": met, "csat": csat, "fail": fail}),
            None,
        )
        .await
        .unwrap();
    }
    d.run_virtual(|| false).await.unwrap();

    let reports = report::build(store.as_ref(), &Rules::shared(), None, None).unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.workflow, "ticket");
    assert_eq!(r.instances, 4);
    assert_eq!(r.by_status["completed"], 3);
    assert_eq!(r.by_status["failed"], 1);
    let first = r.first_response.as_ref().unwrap();
    assert_eq!(
        (first.count, first.p50_ms, first.max_ms),
        (4, 20 * 60_000, 40 * 60_000)
    );
    let resolution = r.resolution.as_ref().unwrap();
    // Resolution counts from the start: response wait plus resolution wait.
    assert_eq!(resolution.p50_ms, 20 * 60_000 + 2 * 3_600_000);
    let sla = r.sla.as_ref().unwrap();
    assert_eq!((sla.measured, sla.met, sla.percent), (4, 3, 75));
    assert_eq!(r.surveys["csat"].answers, 3);
    assert_eq!(r.surveys["csat"].average, "3.66");

    let text = report::render(&reports);
    assert!(text.contains("SLA met: 75% (3 of 4)"), "{text}");
    assert!(
        text.contains("survey csat: average 3.66 (3 answers)"),
        "{text}"
    );

    let none = report::build(store.as_ref(), &Rules::shared(), Some("other"), None).unwrap();
    assert!(none.is_empty());
}
