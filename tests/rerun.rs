//! Running an ended instance again from a step against the real daemon: the new instance
//! begins there with the old one's input and variables (with the operator's edits), both
//! journals name each other, a rerun and a retry of one failed instance never both run it,
//! reruns asked at once with one key make one instance, a SIGKILL between the link and the
//! new instance leaves no link without its instance once asked again, and bad requests get
//! clear errors.

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::daemon::{self, Daemon};
use support::http::{call, ended};

mod support {
    pub mod daemon;
    pub mod http;
}

const REFUND: &str = r#"workflow: refund
version: 1
input:
  order: { type: string, required: true }
  amount_minor: { type: integer, required: true }
steps:
  - id: take
    set: { amount_minor: "${input.amount_minor}" }
    next: route
  - id: route
    switch:
      - when: vars.amount_minor > 1000
        goto: too_much
    default: done
  - id: too_much
    fail: { code: over_limit, message: "over the limit" }
  - id: done
    complete: { output: { refunded: "${vars.amount_minor}", order: "${input.order}" } }
"#;

const WAITER: &str = r#"workflow: waiter
version: 1
input:
  key: { type: string, required: true }
steps:
  - id: hold
    parallel:
      branches:
        - id: one
          steps:
            - { id: inner, wait: { event: go, key: input.key } }
    next: done
  - id: done
    complete: {}
"#;

fn spawn(dir: &Path) -> Daemon {
    let wf = dir.join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::write(wf.join("refund.yaml"), REFUND).unwrap();
    std::fs::write(wf.join("waiter.yaml"), WAITER).unwrap();
    let port = daemon::free_port();
    let mut c = daemon::command(dir, port);
    c.arg("--no-reload");
    daemon::start(c, port)
}

/// A refund over the limit, failed.
fn failed_refund(addr: &str, order: &str) -> String {
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/workflows/refund/instances"),
        Some(&json!({"order": order, "amount_minor": 5000})),
    );
    assert_eq!(s, 201, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(ended(addr, &id)["status"], "failed");
    id
}

fn rerun(addr: &str, id: &str, body: Value) -> (u16, Value) {
    call(
        "POST",
        &format!("{addr}/v1/instances/{id}/rerun"),
        Some(&body),
    )
}

fn journal(addr: &str, id: &str) -> Vec<Value> {
    let (_, v) = call("GET", &format!("{addr}/v1/instances/{id}"), None);
    v["journal"].as_array().unwrap().clone()
}

fn links(addr: &str, id: &str) -> Vec<String> {
    journal(addr, id)
        .iter()
        .filter(|r| r["record"] == "rerun_as")
        .map(|r| r["instance"].as_str().unwrap().to_string())
        .collect()
}

/// Every instance of `refund` whose journal says it runs `old` again.
fn reruns_of(addr: &str, old: &str) -> Vec<String> {
    let (_, list) = call(
        "GET",
        &format!("{addr}/v1/instances?workflow=refund&limit=1000"),
        None,
    );
    list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .filter(|id| {
            journal(addr, id)
                .get(1)
                .is_some_and(|r| r["record"] == "rerun_of" && r["instance"] == old)
        })
        .collect()
}

#[test]
fn an_ended_instance_runs_again_from_a_step_with_edited_variables_linked_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let d = spawn(dir.path());
    let old = failed_refund(&d.addr, "ORD-1");
    let out = Command::new(env!("CARGO_BIN_EXE_casework"))
        .args([
            "rerun",
            &old,
            "--from",
            "route",
            "--set",
            "amount_minor=900",
        ])
        .args([
            "--reason",
            "customer agreed to a partial refund",
            "--url",
            &d.addr,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = text.split_whitespace().next().unwrap().to_string();
    assert!(
        text.contains(&format!("runs {old} again from step route")),
        "{text}"
    );
    let v = ended(&d.addr, &new);
    assert_eq!(v["status"], "completed", "{v}");
    // The input is the old one's; the edited variable is used; `take` did not run again.
    assert_eq!(
        v["output"],
        json!({"refunded": 900, "order": "ORD-1"}),
        "{v}"
    );
    let j = journal(&d.addr, &new);
    assert_eq!(j[1]["record"], "rerun_of", "{v}");
    assert_eq!(j[1]["instance"], json!(old));
    assert_eq!(j[1]["step"], "route");
    assert_eq!(j[1]["reason"], "customer agreed to a partial refund");
    assert!(j.iter().all(|r| r["step"] != "take"), "{v}");
    assert_eq!(links(&d.addr, &old), vec![new.clone()]);
    // The old instance stays as it ended, and is not retried on top of its rerun.
    let (_, o) = call("GET", &format!("{}/v1/instances/{old}", d.addr), None);
    assert_eq!(o["status"], "failed", "{o}");
    let (s, r) = call(
        "POST",
        &format!("{}/v1/instances/{old}/retry", d.addr),
        None,
    );
    assert_eq!(s, 409, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("it runs again as instance {new}")),
        "{r}"
    );
    // A completed one runs again too, and a null removes a variable.
    let (s, b) = rerun(
        &d.addr,
        &new,
        json!({"from": "done", "vars": {"amount_minor": null}, "reason": "check"}),
    );
    assert_eq!(s, 201, "{b}");
    let again = ended(&d.addr, b["id"].as_str().unwrap());
    assert_eq!(again["output"]["order"], "ORD-1", "{again}");
    assert_eq!(again["vars"].get("amount_minor"), None, "{again}");
}

/// One rerun asked eight times at once (a client retrying with its `Idempotency-Key`, or
/// operators sharing one): one new instance, linked once.
#[test]
fn reruns_asked_at_once_make_one_instance_linked_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = spawn(dir.path());
    let old = failed_refund(&d.addr, "ORD-2");
    let addr = d.addr.clone();
    let answers: Vec<(u16, Value)> = (0..8)
        .map(|_| {
            let (addr, old) = (addr.clone(), old.clone());
            std::thread::spawn(move || {
                support::http::request(
                    "POST",
                    &format!("{addr}/v1/instances/{old}/rerun"),
                    Some(&json!({"from": "route", "vars": {"amount_minor": 10}, "reason": "r"})),
                    &[("Idempotency-Key", "partial-refund-ORD-2")],
                )
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let ids: std::collections::BTreeSet<&str> = answers
        .iter()
        .map(|(_, b)| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(
        answers.iter().filter(|(s, _)| *s == 201).count(),
        1,
        "{answers:?}"
    );
    let new = ids.into_iter().next().unwrap().to_string();
    assert_eq!(links(&d.addr, &old), vec![new.clone()]);
    assert_eq!(reruns_of(&d.addr, &old), vec![new.clone()]);
    // Once linked, the next request is a new rerun.
    let (s, b) = rerun(
        &d.addr,
        &old,
        json!({"from": "route", "vars": {"amount_minor": 20}, "reason": "r2"}),
    );
    assert_eq!(s, 201, "{b}");
    assert_ne!(b["id"], json!(new));
    assert_eq!(links(&d.addr, &old).len(), 2);
}

/// SIGKILL while reruns are being asked for, at three moments: after a restart and one
/// more request, every instance that runs the old one again is linked in its journal
/// exactly once, and each new instance finished.
#[test]
fn a_sigkill_during_reruns_leaves_every_new_instance_linked_once_asked_again() {
    for pause_ms in [2u64, 15, 60] {
        let dir = tempfile::tempdir().unwrap();
        let mut d = spawn(dir.path());
        let old = failed_refund(&d.addr, "ORD-3");
        let addr = d.addr.clone();
        let askers: Vec<_> = (0..6)
            .map(|n| {
                let (addr, old) = (addr.clone(), old.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(n * 3));
                    // Its connection dies with the daemon: the answer is not looked at.
                    let _ = ureq::post(&format!("{addr}/v1/instances/{old}/rerun")).send_json(
                        json!({"from": "route", "vars": {"amount_minor": n}, "reason": "r"}),
                    );
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(pause_ms));
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        for a in askers {
            let _ = a.join();
        }
        let d = spawn(dir.path());
        let (s, b) = rerun(
            &d.addr,
            &old,
            json!({"from": "route", "vars": {"amount_minor": 1}, "reason": "after the crash"}),
        );
        assert!(s == 201 || s == 200, "{b}");
        let mut linked = links(&d.addr, &old);
        let mut found = reruns_of(&d.addr, &old);
        linked.sort();
        found.sort();
        assert_eq!(
            linked, found,
            "pause {pause_ms} ms: every rerun linked exactly once"
        );
        let unique: std::collections::BTreeSet<_> = linked.iter().collect();
        assert_eq!(unique.len(), linked.len(), "{linked:?}");
        for id in &found {
            assert_eq!(ended(&d.addr, id)["status"], "completed");
        }
    }
}

/// A retry and a rerun of one failed refund sent at the same moment, 12 times over: the
/// old instance and a new one never both work on the case at once. Either the rerun is
/// refused (the retry came first and the instance runs), or the retry is (the rerun came
/// first), or the retried instance had ended again before the rerun was decided.
#[test]
fn a_retry_racing_a_rerun_never_has_two_instances_work_the_case_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = spawn(dir.path());
    for n in 0..12 {
        let old = failed_refund(&d.addr, &format!("ORD-R{n}"));
        let (addr, o) = (d.addr.clone(), old.clone());
        let rerunning = std::thread::spawn(move || {
            rerun(
                &addr,
                &o,
                json!({"from": "route", "vars": {"amount_minor": 5}, "reason": "r"}),
            )
        });
        let (retried, _) = call(
            "POST",
            &format!("{}/v1/instances/{old}/retry", d.addr),
            None,
        );
        let (reran, b) = rerunning.join().unwrap();
        ended(&d.addr, &old);
        let new_instances = reruns_of(&d.addr, &old).len();
        let kinds: Vec<String> = journal(&d.addr, &old)
            .iter()
            .map(|r| r["record"].as_str().unwrap().to_string())
            .collect();
        match (retried, reran) {
            (200, 409) => assert_eq!(new_instances, 0, "{b}"),
            (409, 201) => assert_eq!(new_instances, 1, "{b}"),
            (200, 201) => {
                // Both, one after the other: the retried run ended before the link.
                let retry = kinds.iter().position(|k| k == "retry_requested").unwrap();
                let link = kinds.iter().position(|k| k == "rerun_as").unwrap();
                assert!(
                    kinds[retry..link]
                        .iter()
                        .any(|k| k == "failed" || k == "completed"),
                    "round {n}: linked while the retry ran: {kinds:?}"
                );
            }
            other => panic!("round {n}: retry and rerun answered {other:?}: {b}"),
        }
    }
}

#[test]
fn bad_rerun_requests_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = spawn(dir.path());
    let old = failed_refund(&d.addr, "ORD-4");
    let (s, b) = rerun(&d.addr, &old, json!({"from": "nope", "reason": "r"}));
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("not_rerunnable")),
        "{b}"
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`nope` is not a top-level step of version 1 of `refund`; the top-level steps are: take, route, too_much, done"),
        "{b}"
    );
    let (s, b) = rerun(&d.addr, &old, json!({"from": "route"}));
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_body")),
        "{b}"
    );
    let (s, b) = rerun(&d.addr, "nobody", json!({"from": "route", "reason": "r"}));
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("instance_not_found")),
        "{b}"
    );
    // An open instance is retried or cancelled, not run twice; a nested step is no start.
    let (s, w) = call(
        "POST",
        &format!("{}/v1/workflows/waiter/instances", d.addr),
        Some(&json!({"key": "k"})),
    );
    assert_eq!(s, 201, "{w}");
    let open = w["id"].as_str().unwrap();
    let (s, b) = rerun(&d.addr, open, json!({"from": "hold", "reason": "r"}));
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("not_rerunnable")),
        "{b}"
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only an ended instance"),
        "{b}"
    );
    call(
        "POST",
        &format!("{}/v1/instances/{open}/cancel", d.addr),
        Some(&json!({"reason": "done"})),
    );
    ended(&d.addr, open);
    let (s, b) = rerun(&d.addr, open, json!({"from": "inner", "reason": "r"}));
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("not_rerunnable")),
        "{b}"
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the top-level steps are: hold, done"),
        "{b}"
    );
    assert!(links(&d.addr, &old).is_empty());
}
