//! Every step kind, run through the real driver on a temporary sled store with a virtual clock.

use casework::clock::ManualClock;
use casework::compile::{self, rules::Rules};
use casework::daemon::Driver;
use casework::plugin_host::{CallContext, CallFuture, PluginError, PluginHost};
use casework::runtime::{Event, Instance, Status};
use casework::store::sled::SledStore;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A test integration: answers by action, records calls, tracks how many run at once.
#[derive(Default)]
struct Host {
    calls: Mutex<Vec<(String, Value, CallContext)>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl PluginHost for Host {
    fn call<'a>(
        &'a self,
        plugin: &'a str,
        action: &'a str,
        input: Value,
        ctx: CallContext,
    ) -> CallFuture<'a> {
        Box::pin(async move {
            self.calls.lock().unwrap().push((
                format!("{plugin}.{action}"),
                input.clone(),
                ctx.clone(),
            ));
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            match action {
                "flaky" if ctx.attempt < 3 => Err(PluginError {
                    code: "unavailable".into(),
                    message: "try later".into(),
                    retryable: true,
                }),
                "broken" => Err(PluginError {
                    code: "card_declined".into(),
                    message: "declined".into(),
                    retryable: false,
                }),
                "hang" => std::future::pending().await,
                _ => Ok(json!({"ok": true, "echo": input, "attempt": ctx.attempt})),
            }
        })
    }
}

struct Run {
    driver: Driver,
    host: Arc<Host>,
}

fn setup(sources: &[&str]) -> Run {
    let host = Arc::new(Host::default());
    let store = Arc::new(SledStore::temporary().unwrap());
    let driver = Driver::new(
        store,
        host.clone(),
        Arc::new(ManualClock::new(1_767_225_600_000)),
        None,
    );
    for src in sources {
        let (wf, diags) = compile::load("t.yaml", src, &Default::default(), &Rules::shared());
        let wf = wf.unwrap_or_else(|| panic!("{diags:#?}"));
        driver.install(wf).unwrap();
    }
    Run { driver, host }
}

impl Run {
    async fn start(&self, name: &str, input: Value) -> String {
        self.driver.start(name, input, None).await.unwrap().id
    }

    async fn settle(&self, id: &str) -> Instance {
        let id2 = id.to_string();
        let d = self.driver.clone();
        self.driver
            .run_virtual(move || d.snapshot(&id2).is_none_or(|i| i.status().is_final()))
            .await
            .unwrap();
        self.driver.snapshot(id).unwrap()
    }

    fn called(&self) -> Vec<String> {
        self.host
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.0.clone())
            .collect()
    }
}

#[tokio::test]
async fn rule_switch_set_and_complete() {
    let r = setup(&[r#"
workflow: w
version: 1
input: { amount: integer }
steps:
  - id: score
    rule: |
      vars.big = input.amount > 100;
      if vars.big { "big" } else { "small" }
    next: [big, small]
  - id: big
    set: { label: "large ${input.amount}" }
    next: route
  - id: small
    set: { label: small }
    next: route
  - id: route
    switch:
      - when: vars.label == "small"
        goto: done
    default: done
  - id: done
    complete: { output: { label: "${vars.label}", big: "${vars.big}" } }
"#]);
    let id = r.start("w", json!({"amount": 500})).await;
    let inst = r.settle(&id).await;
    assert_eq!(inst.status(), Status::Completed);
    assert_eq!(
        inst.output(),
        Some(&json!({"label": "large 500", "big": true}))
    );
}

#[tokio::test]
async fn retries_use_one_idempotency_key_then_succeed() {
    let r = setup(&[r#"
workflow: w
version: 1
steps:
  - id: pay
    call: payments.flaky
    retry: { max_attempts: 5, backoff: 1s }
    save_as: result
    next: done
  - id: done
    complete: { output: "${vars.result.attempt}" }
"#]);
    let id = r.start("w", json!({})).await;
    let inst = r.settle(&id).await;
    assert_eq!(inst.output(), Some(&json!(3)));
    let calls = r.host.calls.lock().unwrap();
    assert_eq!(calls.len(), 3);
    assert!(calls
        .iter()
        .all(|c| c.2.idempotency_key == calls[0].2.idempotency_key));
    assert_eq!(
        calls.iter().map(|c| c.2.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[tokio::test]
async fn permanent_error_goes_to_on_error_without_retry() {
    let r = setup(&[r#"
workflow: w
version: 1
steps:
  - id: pay
    call: payments.broken
    retry: { max_attempts: 5 }
    on_error: handle
  - id: handle
    complete: { output: "${vars.error.code}" }
"#]);
    let id = r.start("w", json!({})).await;
    let inst = r.settle(&id).await;
    assert_eq!(inst.output(), Some(&json!("card_declined")));
    assert_eq!(r.called().len(), 1, "non-retryable errors are not retried");
}

#[tokio::test]
async fn call_timeout_is_a_retryable_error() {
    let r = setup(&[r#"
workflow: w
version: 1
steps:
  - id: pay
    call: payments.hang
    timeout: 50ms
    retry: { max_attempts: 2, backoff: 1s }
"#]);
    let id = r.start("w", json!({})).await;
    let inst = r.settle(&id).await;
    assert_eq!(inst.status(), Status::Failed);
    assert_eq!(inst.error().unwrap().code, "timeout");
    assert_eq!(r.called().len(), 2);
}

#[tokio::test]
async fn compensations_run_in_reverse_order_on_failure() {
    let r = setup(&[r#"
workflow: w
version: 1
steps:
  - id: reserve
    call: stock.reserve
    compensate: release
    next: charge
  - id: charge
    call: payments.charge
    compensate: refund
    next: ship
  - id: ship
    call: shipping.broken
compensations:
  - id: release
    call: stock.release
  - id: refund
    call: payments.refund
"#]);
    let id = r.start("w", json!({})).await;
    let inst = r.settle(&id).await;
    assert_eq!(inst.status(), Status::Failed);
    assert_eq!(
        r.called(),
        vec![
            "stock.reserve",
            "payments.charge",
            "shipping.broken",
            "payments.refund",
            "stock.release"
        ]
    );
}

#[tokio::test]
async fn wait_wakes_only_on_matching_key_and_times_out_otherwise() {
    let src = r#"
workflow: w
version: 1
input: { order: string }
steps:
  - id: approval
    wait: { event: approved, key: input.order, timeout: 1h, on_timeout: expired }
    save_as: a
    next: ok
  - id: ok
    complete: { output: "${vars.a.data.by}" }
  - id: expired
    complete: { output: expired }
"#;
    let r = setup(&[src]);
    let one = r.start("w", json!({"order": "A"})).await;
    let two = r.start("w", json!({"order": "B"})).await;
    r.driver.wait_idle().await;
    let woken = r
        .driver
        .deliver(Event {
            event_type: "approved".into(),
            key: "A".into(),
            data: json!({"by": "lead"}),
            id: None,
        })
        .await
        .unwrap();
    assert_eq!(woken, vec![one.clone()]);
    assert_eq!(r.settle(&one).await.output(), Some(&json!("lead")));
    assert_eq!(r.settle(&two).await.output(), Some(&json!("expired")));
}

#[tokio::test]
async fn parallel_join_all_and_first() {
    let r = setup(&[
        r#"
workflow: all
version: 1
steps:
  - id: fan
    parallel:
      branches:
        - id: slack
          steps: [{ id: s1, call: chat.post }]
        - id: mail
          steps: [{ id: m1, call: mail.send }]
    save_as: out
    next: done
  - id: done
    complete: { output: "${vars.out.keys().len()}" }
"#,
        r#"
workflow: first
version: 1
steps:
  - id: race
    parallel:
      join: first
      branches:
        - id: quick
          steps: [{ id: q, set: { winner: quick } }]
        - id: slow
          steps: [{ id: z, sleep: 1h, next: z2 }, { id: z2, set: { winner: slow } }]
    save_as: out
    next: done
  - id: done
    complete: { output: "${vars.winner}" }
"#,
    ]);
    let a = r.start("all", json!({})).await;
    assert_eq!(r.settle(&a).await.output(), Some(&json!(2)));
    let f = r.start("first", json!({})).await;
    assert_eq!(r.settle(&f).await.output(), Some(&json!("quick")));
}

#[tokio::test]
async fn foreach_respects_its_concurrency_bound() {
    let r = setup(&[r#"
workflow: w
version: 1
steps:
  - id: page
    foreach:
      items: "[1, 2, 3, 4, 5, 6, 7]"
      as: n
      concurrency: 2
      steps:
        - id: notify
          call: paging.notify
          with: { n: "${n}" }
    save_as: results
    next: done
  - id: done
    complete: { output: "${vars.results.len()}" }
"#]);
    let id = r.start("w", json!({})).await;
    assert_eq!(r.settle(&id).await.output(), Some(&json!(7)));
    assert_eq!(r.called().len(), 7);
    assert_eq!(r.host.max_running.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn subworkflow_result_comes_back() {
    let r = setup(&[
        r#"
workflow: parent
version: 1
steps:
  - id: child
    subworkflow: child
    with: { x: 20 }
    save_as: c
    next: done
  - id: done
    complete: { output: "${vars.c.doubled}" }
"#,
        r#"
workflow: child
version: 1
input: { x: integer }
steps:
  - id: double
    complete: { output: { doubled: "${input.x * 2}" } }
"#,
    ]);
    let id = r.start("parent", json!({})).await;
    let d = r.driver.clone();
    let id2 = id.clone();
    r.driver
        .run_virtual(move || d.snapshot(&id2).is_some_and(|i| i.status().is_final()))
        .await
        .unwrap();
    assert_eq!(r.driver.snapshot(&id).unwrap().output(), Some(&json!(40)));
}

#[tokio::test]
async fn runaway_rule_fails_its_step_and_others_finish() {
    let r = setup(&[
        r#"
workflow: spin
version: 1
steps:
  - id: forever
    rule: "loop { }"
"#,
        r#"
workflow: fine
version: 1
steps:
  - id: ok
    complete: { output: fine }
"#,
    ]);
    let bad = r.start("spin", json!({})).await;
    let good = r.start("fine", json!({})).await;
    let inst = r.settle(&bad).await;
    assert_eq!(inst.status(), Status::Failed);
    assert!(inst.error().unwrap().message.contains("operations"));
    assert_eq!(r.settle(&good).await.output(), Some(&json!("fine")));
}

/// `sleep()` blocked a tokio worker (and with it every instance on that thread) and
/// `timestamp()` read the system clock; neither exists for rules, wherever they run.
#[tokio::test]
async fn sleep_and_timestamp_are_unknown_functions_in_rules_conditions_and_templates() {
    let r = setup(&[
        r#"
workflow: nap_in_rule
version: 1
steps:
  - id: nap
    rule: sleep(1)
"#,
        r#"
workflow: clock_in_switch
version: 1
steps:
  - id: route
    switch:
      - when: timestamp() == ()
        goto: done
    default: done
  - id: done
    complete: {}
"#,
        r#"
workflow: nap_in_template
version: 1
steps:
  - id: done
    complete: { output: { at: "${ sleep(1) }" } }
"#,
    ]);
    for (workflow, step, call) in [
        ("nap_in_rule", "nap", "sleep (i64)"),
        ("clock_in_switch", "route", "timestamp ()"),
        ("nap_in_template", "done", "sleep (i64)"),
    ] {
        let id = r.start(workflow, json!({})).await;
        let inst = r.settle(&id).await;
        assert_eq!(inst.status(), Status::Failed, "{workflow}");
        let error = inst.error().unwrap();
        assert_eq!(
            (error.code.as_str(), error.step.as_deref()),
            ("rule_error", Some(step)),
            "{workflow}: {error:?}"
        );
        assert!(
            error
                .message
                .starts_with(&format!("unknown function `{call}`")),
            "{workflow}: {}",
            error.message
        );
    }
}

#[tokio::test]
async fn sleep_advances_virtual_time() {
    let r = setup(&[r#"
workflow: w
version: 1
steps:
  - id: nap
    sleep: 2d
    next: done
  - id: done
    complete: { output: "${now}" }
"#]);
    let id = r.start("w", json!({})).await;
    assert_eq!(
        r.settle(&id).await.output(),
        Some(&json!("2026-01-03T00:00:00.000Z"))
    );
}

#[tokio::test]
async fn a_failure_on_the_workflow_handlers_path_ends_the_instance_instead_of_looping() {
    let r = setup(&[r#"
workflow: w
version: 1
on_error: tell_team
steps:
  - id: work
    fail: { code: broken, message: "the work failed" }
  - id: tell_team
    set: { told: true }
    next: give_up
  - id: give_up
    fail: { code: gave_up, message: "told the team about ${vars.error.code}" }
"#]);
    let id = r.start("w", json!({})).await;
    let inst = r.settle(&id).await;
    assert_eq!(inst.status(), Status::Failed);
    let error = inst.error().unwrap();
    assert_eq!(error.code, "gave_up");
    assert_eq!(error.message, "told the team about broken");
    let journal = r.driver.inner().store.journal(&id).unwrap();
    assert!(
        journal.len() < 10,
        "the handler ran more than once: {journal:#?}"
    );
}

#[tokio::test]
async fn join_first_cancels_the_other_branches_timers_and_calls() {
    let r = setup(&[r#"
workflow: race
version: 1
steps:
  - id: race
    parallel:
      join: first
      branches:
        - id: quick
          steps: [{ id: q, sleep: 1m, next: q2 }, { id: q2, set: { winner: quick } }]
        - id: slow
          steps: [{ id: z, sleep: 1h, next: z2 }, { id: z2, call: pager.page }]
    next: linger
  - id: linger
    sleep: 2h
    next: done
  - id: done
    complete: { output: "${vars.winner}" }
"#]);
    let id = r.start("race", json!({})).await;
    let inst = r.settle(&id).await;
    assert_eq!(inst.status(), Status::Completed);
    assert_eq!(inst.output(), Some(&json!("quick")));
    assert!(
        r.called().is_empty(),
        "the losing branch still paged: {:?}",
        r.called()
    );
}

#[tokio::test]
async fn decide_picks_a_row_and_the_journal_says_which() {
    let r = setup(&[r#"
workflow: w
version: 1
input: { amount: number, plan: string }
steps:
  - id: tier
    decide:
      inputs:
        amount: { type: integer, value: input.amount }
        plan: { type: string, value: input.plan }
      outputs: [tier, approvers]
      hit: unique
      rows:
        - { amount: "< 5000", tier: agent, approvers: 0 }
        - { amount: "5000..50000", tier: lead, approvers: 1 }
        - { amount: ">= 50000", plan: enterprise, tier: finance, approvers: 2 }
        - { amount: ">= 50000", plan: "not enterprise", tier: director, approvers: 2 }
    next: done
  - id: done
    complete: { output: { tier: "${vars.tier}", approvers: "${vars.approvers}" } }
"#]);
    let reason_of = |id: &str| {
        r.driver
            .inner()
            .store
            .journal(id)
            .unwrap()
            .into_iter()
            .find_map(|rec| match rec {
                casework::runtime::Record::StepCompleted { step, reason, .. } if step == "tier" => {
                    reason
                }
                _ => None,
            })
    };
    let id = r.start("w", json!({"amount": 7_500, "plan": "free"})).await;
    let inst = r.settle(&id).await;
    assert_eq!(
        inst.output(),
        Some(&json!({"tier": "lead", "approvers": 1}))
    );
    assert_eq!(reason_of(&id).as_deref(), Some("row 2 matched"));
    let id = r
        .start("w", json!({"amount": 90_000, "plan": "team"}))
        .await;
    let inst = r.settle(&id).await;
    assert_eq!(
        inst.output(),
        Some(&json!({"tier": "director", "approvers": 2}))
    );
    assert_eq!(reason_of(&id).as_deref(), Some("row 4 matched"));
    // A decimal amount is a clear failure of the step, not a wrong tier.
    let id = r.start("w", json!({"amount": 49.99, "plan": "free"})).await;
    let inst = r.settle(&id).await;
    assert_eq!(inst.status(), Status::Failed);
    let failed = serde_json::to_string(&r.driver.inner().store.journal(&id).unwrap()).unwrap();
    assert!(
        failed.contains("table_input")
            && failed.contains("column `amount` takes whole numbers, but its value is 49.99"),
        "{failed}"
    );
}
