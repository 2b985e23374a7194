//! Triggers: event triggers with filters and idempotent delivery, and durable
//! schedules on a virtual clock — a missed schedule fires once after downtime, not
//! once per missed occurrence, and a restart does not fire it again.

use casework::clock::{Clock, ManualClock};
use casework::compile::{self, rules::Rules};
use casework::daemon::triggers::{fire_due_schedules, start_for_event};
use casework::daemon::Driver;
use casework::plugin_host::NoPlugins;
use casework::runtime::Event;
use casework::store::sled::SledStore;
use casework::store::Store;
use serde_json::json;
use std::sync::Arc;

const EMERGENCY: &str = r#"
workflow: emergency
version: 1
input:
  ticket_id: { type: string, required: true }
  priority: { type: string, required: true }
triggers:
  - event: ticket.created
    when: event.data.priority == "urgent"
    input:
      ticket_id: ${event.key}
      priority: ${event.data.priority}
steps:
  - id: done
    complete: { output: { ticket: "${input.ticket_id}" } }
"#;

const SWEEP: &str = r#"
workflow: sweep
version: 1
input:
  at: { type: string, required: true }
triggers:
  - schedule: "0 9 * * MON-FRI"
    timezone: Europe/London
    input: { at: "${schedule.at}" }
steps:
  - id: done
    complete: { output: { at: "${input.at}" } }
"#;

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

fn driver(store: Arc<dyn Store>, clock: Arc<ManualClock>) -> Driver {
    let d = Driver::new(store, Arc::new(NoPlugins), clock, None);
    for src in [EMERGENCY, SWEEP] {
        let (wf, diags) = compile::load("t.yaml", src, &Default::default(), &Rules::shared());
        d.install(wf.unwrap_or_else(|| panic!("{diags:#?}")))
            .unwrap();
    }
    d
}

fn ticket(key: &str, priority: &str, id: Option<&str>) -> Event {
    Event {
        event_type: "ticket.created".into(),
        key: key.into(),
        data: json!({"priority": priority}),
        id: id.map(str::to_string),
    }
}

#[tokio::test]
async fn an_event_starts_only_workflows_whose_filter_matches() {
    let clock = Arc::new(ManualClock::new(ms("2026-03-02T10:00:00Z")));
    let d = driver(Arc::new(SledStore::temporary().unwrap()), clock);

    let low = start_for_event(&d, &ticket("T-1", "low", None)).await;
    assert!(low.started.is_empty(), "{low:?}");

    let urgent = start_for_event(&d, &ticket("T-2", "urgent", None)).await;
    assert_eq!(urgent.started.len(), 1, "{urgent:?}");
    assert_eq!(urgent.started[0].workflow, "emergency");
    d.wait_idle().await;
    let inst = d.snapshot(&urgent.started[0].id).unwrap();
    assert_eq!(
        inst.input(),
        &json!({"ticket_id": "T-2", "priority": "urgent"})
    );
    assert_eq!(inst.output(), Some(&json!({"ticket": "T-2"})));
}

#[tokio::test]
async fn a_redelivered_event_id_starts_the_workflow_once() {
    let clock = Arc::new(ManualClock::new(ms("2026-03-02T10:00:00Z")));
    let d = driver(Arc::new(SledStore::temporary().unwrap()), clock);
    let first = start_for_event(&d, &ticket("T-3", "urgent", Some("evt-9"))).await;
    let again = start_for_event(&d, &ticket("T-3", "urgent", Some("evt-9"))).await;
    assert!(first.started[0].created);
    assert!(!again.started[0].created, "{again:?}");
    assert_eq!(first.started[0].id, again.started[0].id);
}

#[tokio::test]
async fn a_failing_filter_is_reported_not_swallowed() {
    let clock = Arc::new(ManualClock::new(ms("2026-03-02T10:00:00Z")));
    let d = driver(Arc::new(SledStore::temporary().unwrap()), clock);
    let mut event = ticket("T-4", "urgent", None);
    event.data = json!("not a map");
    let outcome = start_for_event(&d, &event).await;
    assert!(outcome.started.is_empty());
    assert_eq!(outcome.failed.len(), 1, "{outcome:?}");
    assert!(outcome.failed[0].message.contains("when"), "{outcome:?}");
}

#[tokio::test]
async fn schedules_fire_at_their_times_once_after_downtime_and_not_again_after_restart() {
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    // Monday 2 March 2026, 10:00 in London (GMT): today's 09:00 has passed already.
    let clock = Arc::new(ManualClock::new(ms("2026-03-02T10:00:00Z")));
    let d = driver(store.clone(), clock.clone());

    let (first, next) = fire_due_schedules(&d).await.unwrap();
    assert!(
        first.started.is_empty(),
        "first sight must not fire for the past: {first:?}"
    );
    assert_eq!(next, Some(ms("2026-03-03T09:00:00Z")));

    clock.advance_to(ms("2026-03-03T09:00:00Z"));
    let (tuesday, _) = fire_due_schedules(&d).await.unwrap();
    assert_eq!(tuesday.started.len(), 1, "{tuesday:?}");
    d.wait_idle().await;
    let inst = d.snapshot(&tuesday.started[0].id).unwrap();
    assert_eq!(
        inst.output(),
        Some(&json!({"at": "2026-03-03T09:00:00.000Z"}))
    );

    // Checking again at the same time fires nothing.
    let (same, _) = fire_due_schedules(&d).await.unwrap();
    assert!(same.started.is_empty(), "{same:?}");

    // Down from Tuesday to Saturday: Wednesday, Thursday and Friday were missed.
    drop(d);
    clock.advance_to(ms("2026-03-07T12:00:00Z"));
    let d = driver(store.clone(), clock.clone());
    let (after_downtime, next) = fire_due_schedules(&d).await.unwrap();
    assert_eq!(
        after_downtime.started.len(),
        1,
        "once, not three times: {after_downtime:?}"
    );
    d.wait_idle().await;
    let inst = d.snapshot(&after_downtime.started[0].id).unwrap();
    assert_eq!(
        inst.output(),
        Some(&json!({"at": "2026-03-06T09:00:00.000Z"}))
    );
    assert_eq!(next, Some(ms("2026-03-09T09:00:00Z")), "next is Monday");

    // A restart right away fires nothing more.
    drop(d);
    let d = driver(store, clock.clone());
    let (restart, _) = fire_due_schedules(&d).await.unwrap();
    assert!(restart.started.is_empty(), "{restart:?}");

    // Summer time: 09:00 in London is 08:00 UTC after 29 March 2026.
    clock.advance_to(ms("2026-03-30T08:00:00Z"));
    let (summer, _) = fire_due_schedules(&d).await.unwrap();
    d.wait_idle().await;
    let inst = d.snapshot(&summer.started[0].id).unwrap();
    assert_eq!(
        inst.output(),
        Some(&json!({"at": "2026-03-30T08:00:00.000Z"}))
    );
    assert_eq!(clock.now_ms(), ms("2026-03-30T08:00:00Z"));
}

/// Each occurrence of a schedule starts one instance even when many schedulers (here
/// two drivers on one store, as two daemons would be) fire it at the same moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schedule_occurrence_fired_by_racing_schedulers_starts_one_instance() {
    const OCCURRENCES: usize = 50;
    const RACERS: usize = 16;
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let clock = Arc::new(ManualClock::new(ms("2026-03-02T10:00:00Z")));
    let drivers = [
        driver(store.clone(), clock.clone()),
        driver(store.clone(), clock.clone()),
    ];
    let (_, mut next) = fire_due_schedules(&drivers[0]).await.unwrap();
    let mut instances = std::collections::BTreeSet::new();
    for occurrence in 0..OCCURRENCES {
        clock.advance_to(next.expect("a next occurrence"));
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|i| {
                let (d, barrier) = (drivers[i % 2].clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    fire_due_schedules(&d).await.unwrap()
                })
            })
            .collect();
        let mut created = 0;
        let mut named = std::collections::BTreeSet::new();
        for r in racers {
            let (outcome, n) = r.await.unwrap();
            next = n;
            for s in outcome.started {
                created += usize::from(s.created);
                named.insert(s.id);
            }
        }
        assert_eq!(created, 1, "occurrence {occurrence}: started {named:?}");
        assert_eq!(named.len(), 1, "occurrence {occurrence}: {named:?}");
        instances.extend(named);
    }
    for d in &drivers {
        d.wait_idle().await;
    }
    let all = store.instances(None, 10_000).unwrap();
    assert_eq!(all.len(), OCCURRENCES, "one instance per occurrence");
    assert_eq!(
        all.into_iter()
            .map(|m| m.id)
            .collect::<std::collections::BTreeSet<_>>(),
        instances
    );
}
