//! Search attributes against the real daemon: instances are found by the business values
//! their workflow declares, as those values change, with starts and events sent at once,
//! across a SIGKILL; paging, bulk actions and bad filters.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use support::daemon::{self, Daemon};
use support::http::call;

mod support {
    pub mod daemon;
    pub mod http;
}

const CASE: &str = r#"workflow: case
version: 1
input:
  ticket_id: { type: string, required: true }
  customer: { type: string, required: true, sensitive: true }
search:
  ticket_id: input.ticket_id
  customer: input.customer
  tier: vars.tier
steps:
  - id: classify
    rule: |
      vars.tier = "basic";
    next: upgrade
  - id: upgrade
    wait: { event: upgrade, key: input.ticket_id }
    save_as: up
    next: apply
  - id: apply
    rule: |
      vars.tier = vars.up.data.tier;
    next: close
  - id: close
    wait: { event: close, key: input.ticket_id }
    next: done
  - id: done
    complete: { output: { tier: "${vars.tier}" } }
"#;

fn spawn(dir: &Path) -> Daemon {
    let wf = dir.join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::write(wf.join("case.yaml"), CASE).unwrap();
    let port = daemon::free_port();
    let mut c = daemon::command(dir, port);
    c.arg("--no-reload");
    daemon::start(c, port)
}

/// Every instance id the list gives for `query`, following cursors `limit` at a time.
fn found(d: &Daemon, query: &str, limit: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut url = format!("{}/v1/instances?{query}&limit={limit}", d.addr);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (s, v) = call("GET", &url, None);
        assert_eq!(s, 200, "{query}: {v}");
        let page = v["instances"].as_array().unwrap();
        assert!(page.len() <= limit, "{query}: a page longer than its limit");
        for i in page {
            assert!(
                ids.insert(i["id"].as_str().unwrap().to_string()),
                "{query}: {i} twice"
            );
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return ids,
        }
    }
    panic!("{query}: the cursor never ended");
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn event(d: &Daemon, event_type: &str, ticket: &str, data: Value) {
    let (s, v) = call(
        "POST",
        &format!("{}/v1/events", d.addr),
        Some(
            &json!({"type": event_type, "key": ticket, "data": data, "id": format!("{event_type}-{ticket}")}),
        ),
    );
    assert_eq!(s, 200, "{v}");
}

fn ticket(i: usize) -> String {
    format!("T-{i:02}")
}

fn customer(i: usize) -> String {
    format!("c-{}@example.com", i % 4)
}

#[test]
fn instances_are_found_by_their_attributes_as_the_values_change() {
    let tmp = tempfile::tempdir().unwrap();
    let d = spawn(tmp.path());
    // 40 starts from 8 clients at once; the last 10 get their upgrade sent straight after
    // the start's answer, racing the step that comes to the wait (the inbox keeps it).
    let ids: Vec<(usize, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let d = &d;
                s.spawn(move || {
                    (0..5)
                        .map(|k| {
                            let i = t * 5 + k;
                            let (st, v) = call(
                                "POST",
                                &format!("{}/v1/workflows/case/instances", d.addr),
                                Some(&json!({"ticket_id": ticket(i), "customer": customer(i)})),
                            );
                            assert_eq!(st, 201, "{v}");
                            if i >= 30 {
                                event(d, "upgrade", &ticket(i), json!({"tier": "gold"}));
                            }
                            (i, v["id"].as_str().unwrap().to_string())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let id_of = |i: usize| ids.iter().find(|(n, _)| *n == i).unwrap().1.clone();
    let set = |ns: &mut dyn Iterator<Item = usize>| ns.map(id_of).collect::<BTreeSet<_>>();

    // Each ticket finds its one instance; each customer its ten, a page of 3 at a time.
    eventually("the first ten upgraded", || {
        found(&d, "workflow=case&tier=gold", 100).len() == 10
    });
    assert_eq!(
        found(&d, "workflow=case&ticket_id=T-07", 10),
        set(&mut [7].into_iter())
    );
    assert_eq!(
        found(&d, "workflow=case&customer=c-1@example.com", 3),
        set(&mut (0..40).filter(|i| i % 4 == 1))
    );
    assert_eq!(
        found(&d, "workflow=case&tier=basic&status=parked", 7).len(),
        30
    );

    // Upgrades for 0..10 sent at once move them from basic to gold.
    std::thread::scope(|s| {
        for i in 0..10 {
            let d = &d;
            s.spawn(move || event(d, "upgrade", &ticket(i), json!({"tier": "gold"})));
        }
    });
    let gold = set(&mut (0..10).chain(30..40));
    eventually("twenty are gold", || {
        found(&d, "workflow=case&tier=gold", 100) == gold
    });
    assert_eq!(
        found(&d, "workflow=case&tier=basic", 100),
        set(&mut (10..30)),
        "an upgraded instance is no longer found by its old tier"
    );
    assert_eq!(
        found(&d, "workflow=case&tier=gold&customer=c-1@example.com", 100),
        set(&mut [1, 5, 9, 33, 37].into_iter()),
        "two attributes together"
    );

    // The index is in the store: a SIGKILL loses none of it.
    drop(d);
    let d = spawn(tmp.path());
    assert_eq!(found(&d, "workflow=case&tier=gold", 100), gold);
    assert_eq!(
        found(&d, "workflow=case&ticket_id=T-12", 100),
        set(&mut [12].into_iter())
    );

    // The command line filters the same way.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_casework"))
            .args(args)
            .args(["--url", &d.addr])
            .output()
            .unwrap()
    };
    let out = cli(&[
        "list",
        "--workflow",
        "case",
        "--where",
        "tier=gold",
        "--where",
        "customer=c-1@example.com",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: BTreeSet<String> = listed["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, set(&mut [1, 5, 9, 33, 37].into_iter()));
    let out = cli(&["list", "--workflow", "case", "--where", "tier"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=VALUE"));
    let out = cli(&["list", "--workflow", "case", "--where", "plan=gold"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`plan` is not a search attribute"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A bulk action on a search: cancel every basic one still waiting.
    let (s, v) = call(
        "POST",
        &format!("{}/v1/bulk", d.addr),
        Some(
            &json!({"action": "cancel", "workflow": "case", "status": "parked",
                     "search": {"tier": "basic"}, "reason": "duplicates of the outage ticket"}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["done"].as_array().unwrap().len(), 20, "{v}");
    eventually("the basic ones cancelled", || {
        found(&d, "workflow=case&tier=basic&status=cancelled", 100).len() == 20
    });
    for i in (0..10).chain(30..40) {
        event(&d, "close", &ticket(i), json!({}));
    }
    eventually("the gold ones completed", || {
        found(&d, "workflow=case&tier=gold&status=completed", 100) == gold
    });
    // Time bounds: every instance started before now and none after.
    let now = chrono::Utc::now();
    let later =
        (now + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let earlier =
        (now - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        found(&d, &format!("workflow=case&started_after={later}"), 100).len(),
        0
    );
    assert_eq!(
        found(
            &d,
            &format!("workflow=case&tier=gold&started_after={earlier}&started_before={later}"),
            100
        ),
        gold
    );
}

#[test]
fn bad_search_filters_are_refused_saying_what_would_work() {
    let tmp = tempfile::tempdir().unwrap();
    let d = spawn(tmp.path());
    let refused = |query: &str| {
        let (s, v) = call("GET", &format!("{}/v1/instances?{query}", d.addr), None);
        assert_eq!(s, 400, "{query}: {v}");
        assert_eq!(v["error"]["code"], "invalid_query", "{query}: {v}");
        v["error"]["message"].as_str().unwrap().to_string()
    };
    let (s, v) = call("GET", &format!("{}/v1/workflows", d.addr), None);
    assert_eq!(s, 200);
    assert_eq!(
        v["workflows"][0]["search"],
        json!(["customer", "ticket_id", "tier"]),
        "{v}"
    );
    let m = refused("workflow=case&ticket=T-1");
    assert!(
        m.contains("`ticket` is not a search attribute of workflow `case`"),
        "{m}"
    );
    assert!(m.contains("customer, ticket_id, tier"), "{m}");
    let m = refused("ticket_id=T-1");
    assert!(m.contains("needs `workflow=`"), "{m}");
    let m = refused("workflow=case&started_after=yesterday");
    assert!(m.contains("RFC 3339"), "{m}");
    let m = refused("workflow=case&status=AAA");
    assert!(m.contains("status `AAA`"), "{m}");
    let m = refused("workflow=case&tier=1&tier=3");
    assert!(m.contains("`tier` is given twice"), "{m}");
    let m = refused("limit=many");
    assert!(m.contains("`limit` must be a whole number"), "{m}");
    let (s, v) = call(
        "POST",
        &format!("{}/v1/bulk", d.addr),
        Some(&json!({"action": "retry", "workflow": "case", "search": {"nope": "x"}})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_body")),
        "{v}"
    );
}
