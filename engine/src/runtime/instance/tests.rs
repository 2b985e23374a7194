//! Unit tests of the state machine: retry of failed instances, replay of the resulting
//! journal, and step timings.

use super::*;
use crate::compile::rules::Rules;
use crate::runtime::{Event, Input, Reply, Step};
use serde_json::json;

fn compile(src: &str) -> CompiledWorkflow {
    let (wf, diags) = crate::compile::load("t.yaml", src, &Default::default(), &Rules::shared());
    wf.unwrap_or_else(|| panic!("{diags:#?}"))
}

const PAY: &str = r#"
workflow: pay
version: 1
steps:
  - id: prepare
    set: { tries: 1 }
    next: charge
  - id: charge
    call: payments.charge
    next: done
  - id: done
    complete: { output: { paid: true } }
"#;

/// The call in flight: its frame, attempt and idempotency key.
fn call_key(inst: &Instance) -> (u32, u32, String) {
    inst.frames
        .iter()
        .find_map(|(&id, f)| match &f.state {
            FrameState::Calling { attempt, key, .. } => Some((id, *attempt, key.clone())),
            _ => None,
        })
        .expect("a call in flight")
}

#[test]
fn a_failed_step_is_retried_from_where_it_failed_and_replays_the_same() {
    let wf = compile(PAY);
    let start = Instance::start_record(&wf, json!({}), None, None, 1_000);
    let mut inst = Instance::start("i1", &wf, start.clone());
    let mut journal = vec![start];
    journal.extend(inst.advance(&wf, 1_000));
    let (frame, attempt, key) = call_key(&inst);
    assert_eq!((attempt, key.as_str()), (1, "i1:charge:1"));
    journal.extend(inst.on_call_result(
        &wf,
        frame,
        attempt,
        Err(StepError::new("card_declined", "declined")),
        2_000,
    ));
    journal.extend(inst.advance(&wf, 2_000));
    assert_eq!(inst.status, Status::Failed);

    let retried = inst.retry(&wf, 3_000).unwrap();
    assert_eq!(
        retried,
        vec![Record::RetryRequested {
            step: "charge".into(),
            at: 3_000
        }]
    );
    journal.extend(retried);
    assert_eq!(inst.status, Status::Running);
    assert_eq!(inst.error, None);
    journal.extend(inst.advance(&wf, 3_000));
    // A new visit of the step: a new idempotency key, so the provider does not
    // answer with the cached failure.
    let (frame, attempt, key) = call_key(&inst);
    assert_eq!((attempt, key.as_str()), (1, "i1:charge:2"));
    assert_eq!(inst.vars["tries"], json!(1), "variables are kept");
    journal.extend(inst.on_call_result(&wf, frame, attempt, Ok(json!({"id": "ch_1"})), 4_000));
    journal.extend(inst.advance(&wf, 4_000));
    assert_eq!(inst.status, Status::Completed);
    assert_eq!(inst.output, Some(json!({"paid": true})));

    let replayed = Instance::replay("i1", &wf, &journal);
    assert_eq!(replayed.status, Status::Completed);
    assert_eq!(replayed.records, inst.records);
    assert_eq!(replayed.records, journal.len() as u64);
    let back: Vec<Record> = journal
        .iter()
        .map(|r| serde_json::from_value(serde_json::to_value(r).unwrap()).unwrap())
        .collect();
    assert_eq!(back, journal, "the new record round-trips through JSON");
}

#[test]
fn only_failed_instances_whose_step_failed_can_be_retried() {
    let wf = compile(PAY);
    let start = Instance::start_record(&wf, json!({}), None, None, 0);
    let mut running = Instance::start("i2", &wf, start);
    running.advance(&wf, 0);
    assert_eq!(
        running.retry(&wf, 1),
        Err(RetryRefused::NotFailed("running"))
    );

    let compensated = compile(
        r#"
workflow: comp
version: 1
steps:
  - id: reserve
    call: stock.reserve
    compensate: release
    next: ship
  - id: ship
    call: shipping.send
compensations:
  - id: release
    set: { released: true }
"#,
    );
    let start = Instance::start_record(&compensated, json!({}), None, None, 0);
    let mut inst = Instance::start("i3", &compensated, start);
    inst.advance(&compensated, 0);
    let (f, a, _) = call_key(&inst);
    inst.on_call_result(&compensated, f, a, Ok(json!({})), 1);
    inst.advance(&compensated, 1);
    let (f, a, _) = call_key(&inst);
    inst.on_call_result(&compensated, f, a, Err(StepError::new("down", "down")), 2);
    inst.advance(&compensated, 2);
    assert_eq!(inst.status, Status::Failed);
    assert!(matches!(
        inst.retry(&compensated, 3),
        Err(RetryRefused::NotRetryable(m)) if m.contains("compensations")
    ));
}

#[test]
fn a_failure_handled_by_the_workflow_handler_retries_the_step_that_failed() {
    let wf = compile(
        r#"
workflow: handled
version: 1
on_error: notify
steps:
  - id: charge
    call: payments.charge
    next: done
  - id: done
    complete: {}
  - id: notify
    fail: { code: gave_up, message: "charge failed" }
"#,
    );
    let start = Instance::start_record(&wf, json!({}), None, None, 0);
    let mut inst = Instance::start("i4", &wf, start);
    inst.advance(&wf, 0);
    let (f, a, _) = call_key(&inst);
    inst.on_call_result(&wf, f, a, Err(StepError::new("declined", "no")), 1);
    inst.advance(&wf, 1);
    assert_eq!(inst.status, Status::Failed);
    assert_eq!(inst.error.as_ref().unwrap().code, "gave_up");
    let r = inst.retry(&wf, 2).unwrap();
    assert!(matches!(&r[0], Record::RetryRequested { step, .. } if step == "charge"));
}

#[test]
fn step_durations_are_collected_in_journal_time_only_on_request() {
    let wf = compile(PAY);
    let start = Instance::start_record(&wf, json!({}), None, None, 0);
    let mut inst = Instance::start("i5", &wf, start);
    inst.advance(&wf, 0);
    assert_eq!(inst.timings, None);
    inst.timings = Some(Vec::new());
    let (f, a, _) = call_key(&inst);
    inst.on_call_result(&wf, f, a, Ok(json!({})), 250);
    inst.advance(&wf, 250);
    let timings = inst.timings.take().unwrap();
    assert_eq!(
        timings[0],
        StepTiming {
            step: "charge".into(),
            millis: 250,
            ok: true
        }
    );
}

#[test]
fn waiting_tells_the_events_and_deadline_of_a_wait_and_the_end_of_a_sleep() {
    let wf = compile(
        r#"
workflow: w
version: 1
steps:
  - id: hold
    wait: { event: [go, stop], key: '"K-1"', timeout: 1h, on_timeout: nap }
    next: nap
  - id: nap
    sleep: 30m
    next: done
  - id: done
    complete: {}
"#,
    );
    let start = Instance::start_record(&wf, json!({}), None, None, 1_000);
    let mut inst = Instance::start("i1", &wf, start);
    inst.advance(&wf, 1_000);
    assert_eq!(
        inst.waiting(&wf),
        vec![Waiting {
            step: "hold".into(),
            events: vec!["go".into(), "stop".into()],
            until: Some(1_000 + 3_600_000),
        }]
    );
    inst.on_timer(&wf, 0, 3_601_000);
    inst.advance(&wf, 3_601_000);
    assert_eq!(
        inst.waiting(&wf),
        vec![Waiting {
            step: "nap".into(),
            events: vec![],
            until: Some(3_601_000 + 1_800_000),
        }]
    );
}

const NAP_THEN_WAIT: &str = r#"
workflow: hold
version: 1
steps:
  - id: nap
    sleep: 10m
    next: ask
  - id: ask
    wait: { event: go, key: input.key, timeout: 1h, on_timeout: late }
    save_as: got
    next: done
  - id: done
    complete: { output: "${vars.got.data.by}" }
  - id: late
    complete: { output: late }
"#;

fn step(inst: &mut Instance, wf: &CompiledWorkflow, input: Input, now: Millis) -> Step {
    inst.step(wf, input, &[], now)
}

#[test]
fn a_paused_instance_runs_nothing_and_its_due_timer_fires_once_on_resume() {
    let wf = compile(NAP_THEN_WAIT);
    let start = Instance::start_record(&wf, json!({"key": "k"}), None, None, 0);
    let (mut inst, first) = Instance::create("i1", &wf, start.clone(), 0);
    let mut journal = vec![start];
    journal.extend(first.records);
    let nap = first.index.timers_add.clone();
    assert_eq!(nap.len(), 1, "the nap's timer");
    let held = step(
        &mut inst,
        &wf,
        Input::Pause {
            by: "token:ops".into(),
            reason: "customer asked".into(),
        },
        1_000,
    );
    assert_eq!(held.reply, Reply::Held(Ok(true)));
    assert_eq!(
        held.index.timers_remove, nap,
        "no timer wakes a held instance"
    );
    assert_eq!(held.index.status, "paused");
    assert!(inst.is_parked());
    journal.extend(held.records);
    // Paused twice: nothing new.
    let again = step(
        &mut inst,
        &wf,
        Input::Pause {
            by: "token:ops".into(),
            reason: "again".into(),
        },
        2_000,
    );
    assert_eq!(
        (again.reply, again.records.len()),
        (Reply::Held(Ok(false)), 0)
    );
    // The nap ends long before the resume: its timer comes back due and fires then, once.
    let resumed = step(
        &mut inst,
        &wf,
        Input::Unpause {
            by: "token:ops".into(),
            reason: "go ahead".into(),
        },
        3_600_000,
    );
    assert_eq!(resumed.reply, Reply::Held(Ok(true)));
    assert_eq!(resumed.index.timers_add, nap);
    assert_eq!(resumed.index.status, "parked");
    journal.extend(resumed.records);
    let fired = step(&mut inst, &wf, Input::Timer(nap[0].clone()), 3_600_001);
    journal.extend(fired.records.clone());
    assert!(fired
        .records
        .iter()
        .any(|r| matches!(r, Record::WaitStarted { .. })));
    // While held the wait is out of the index, and comes back on resume.
    let held = step(
        &mut inst,
        &wf,
        Input::Pause {
            by: "token:ops".into(),
            reason: "hold the wait".into(),
        },
        3_600_002,
    );
    assert_eq!(held.index.waits_remove.len(), 1);
    journal.extend(held.records);
    let resumed = step(
        &mut inst,
        &wf,
        Input::Unpause {
            by: "token:ops".into(),
            reason: "go".into(),
        },
        3_600_003,
    );
    assert_eq!(resumed.index.waits_add.len(), 1);
    journal.extend(resumed.records);
    let event = Event {
        event_type: "go".into(),
        key: "k".into(),
        data: json!({"by": "ann"}),
        id: None,
    };
    let woke = step(&mut inst, &wf, Input::Event(event), 3_600_004);
    journal.extend(woke.records);
    assert_eq!(inst.status, Status::Completed);
    assert_eq!(inst.output, Some(json!("ann")));
    // The journal says all of it: a replay ends the same.
    let replayed = Instance::replay("i1", &wf, &journal);
    assert_eq!(replayed.status, Status::Completed);
    assert_eq!(replayed.hold(), None);
    // Ended: neither pause nor resume is taken.
    let late = step(
        &mut inst,
        &wf,
        Input::Pause {
            by: "token:ops".into(),
            reason: "too late".into(),
        },
        3_600_005,
    );
    assert_eq!(
        late.reply,
        Reply::Held(Err(HoldRefused::Ended("completed")))
    );
}

#[test]
fn a_cancel_ends_a_paused_instance() {
    let wf = compile(NAP_THEN_WAIT);
    let start = Instance::start_record(&wf, json!({}), None, None, 0);
    let (mut inst, _) = Instance::create("i1", &wf, start, 0);
    step(
        &mut inst,
        &wf,
        Input::Pause {
            by: "token:ops".into(),
            reason: "check".into(),
        },
        1,
    );
    let cancelled = step(
        &mut inst,
        &wf,
        Input::Cancel {
            reason: "duplicate ticket".into(),
        },
        2,
    );
    assert_eq!(cancelled.reply, Reply::Cancelled(true));
    assert_eq!(inst.status, Status::Cancelled);
}

const ASK_V1: &str = r#"
workflow: ask
version: 1
steps:
  - id: charge
    call: payments.charge
    compensate: refund
    next: ask
  - id: ask
    wait: { event: approve, key: '"k"', timeout: 1h }
    next: done
  - id: done
    complete: { output: 1 }
compensations:
  - id: refund
    call: payments.refund
"#;

fn ask_v2(extra: &str) -> CompiledWorkflow {
    compile(&format!(
        r#"
workflow: ask
version: 2
migrate:
  - {{ from: 1, at: [ask], to: ask_lead, set: {{ tier: '"lead"' }} }}
steps:
  - id: ask_lead
    wait: {{ event: lead_approve, key: '"k"', timeout: 2h }}
    next: done
  - id: done
    complete: {{ output: "${{vars.tier}}" }}
{extra}"#
    ))
}

/// An instance parked at its wait, its charge done (with `refund` to undo it).
fn parked_at_ask(wf: &CompiledWorkflow) -> (Instance, Vec<Record>) {
    let start = Instance::start_record(wf, json!({}), None, None, 1_000);
    let (mut inst, step) = Instance::create("i1", wf, start, 1_000);
    let mut journal = step.records;
    let (frame, attempt, _) = call_key(&inst);
    let step = inst.step(
        wf,
        Input::CallResult {
            frame,
            attempt,
            result: Ok(json!({})),
        },
        &[],
        2_000,
    );
    journal.extend(step.records);
    assert!(inst.is_parked());
    (inst, journal)
}

#[test]
fn a_migrated_instance_goes_on_along_the_new_version_and_replays_across_both() {
    let v1 = std::sync::Arc::new(compile(ASK_V1));
    let v2 = std::sync::Arc::new(ask_v2(
        "compensations:\n  - id: refund\n    call: payments.refund\n",
    ));
    let (mut inst, mut journal) = parked_at_ask(&v1);
    let step = inst.migrate(&v1, &v2, "ops", "new tier", 3_000).unwrap();
    assert!(
        matches!(&step.records[0], Record::Migrated { from_step, to_step, .. } if from_step == "ask" && to_step == "ask_lead")
    );
    // The old wait leaves the index and the new one comes in, with a new deadline.
    assert_eq!(step.index.waits_remove.len(), 1);
    assert_eq!(step.index.waits_add[0].event_type, "lead_approve");
    assert_eq!(step.index.timers_add[0].at, 3_000 + 2 * 3_600_000);
    assert_eq!(inst.version(), 2);
    assert_eq!(inst.vars()["tier"], json!("lead"));
    journal.extend(step.records);
    // Moving again finds it there.
    assert_eq!(inst.migration(&v2, &v2).unwrap_err().code, "already_there");
    let step = inst.step(
        &v2,
        Input::Event(Event {
            event_type: "lead_approve".into(),
            key: "k".into(),
            data: json!({}),
            id: None,
        }),
        &[],
        4_000,
    );
    journal.extend(step.records);
    assert_eq!(inst.output(), Some(&json!("lead")));
    let (replayed, wf) = Instance::replay_pinned("i1", "", &journal, |h| {
        [&v1, &v2]
            .into_iter()
            .find(|w| w.hash == h)
            .cloned()
            .ok_or_else(|| h.to_string())
    })
    .unwrap();
    assert_eq!(wf.version, 2);
    assert_eq!(replayed.output(), inst.output());
    assert_eq!(replayed.records(), inst.records());
    assert_eq!(replayed.vars(), inst.vars());
}

#[test]
fn an_instance_moves_only_at_a_listed_wait_and_only_where_its_compensations_exist() {
    let v1 = compile(ASK_V1);
    // The new version cannot undo the charge: it has no `refund`.
    let v2 = ask_v2("");
    let (mut inst, _) = parked_at_ask(&v1);
    assert_eq!(
        inst.migration(&v1, &v2).unwrap_err().code,
        "compensation_missing"
    );
    let v2 = ask_v2("compensations:\n  - id: refund\n    call: payments.refund\n");
    assert!(inst.migration(&v1, &v2).is_ok());
    // Held by an operator: resume first.
    inst.step(
        &v1,
        Input::Pause {
            by: "ops".into(),
            reason: "r".into(),
        },
        &[],
        2_500,
    );
    assert_eq!(inst.migration(&v1, &v2).unwrap_err().code, "paused");
    // In the middle of its call, it is at no safe point.
    let start = Instance::start_record(&v1, json!({}), None, None, 1_000);
    let (calling, _) = Instance::create("i2", &v1, start, 1_000);
    assert_eq!(
        calling.migration(&v1, &v2).unwrap_err().code,
        "not_at_safe_point"
    );
    // A version with no rule for version 1 keeps it pinned.
    let v3 = compile(&ASK_V1.replace("version: 1", "version: 3"));
    assert_eq!(calling.migration(&v1, &v3).unwrap_err().code, "no_rule");
}
