//! The operator console at `/ui` against the real daemon. One test drives a real headless
//! Chromium (chromedriver, WebDriver protocol): sign in, filter the list, open a refund
//! waiting for approval with its SLA clock, deliver the approval from the page and watch
//! it complete, retry a failed instance, see that a read token cannot act, and come back
//! after a restart with other tokens. Screenshots of each page are kept in
//! `target/tmp/console-screenshots/`. The other tests check what a browser hides: the
//! cookies, CSRF, security headers, escaping, redaction and two confirmations racing.

use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use support::browser::Browser;
use support::daemon::{self, Daemon};

mod support {
    pub mod browser;
    pub mod daemon;
}

/// A refund that waits for a lead's approval under a 4-hour approval SLA, then pays
/// (a rule that refuses amounts over 1,000.00, so a large refund fails and can be retried).
const REFUND: &str = r#"workflow: refund-approval
version: 1
description: A refund that waits for a lead's approval.
input:
  order_id: { type: string, required: true }
  amount_minor: { type: integer, required: true }
  customer_email: { type: string, sensitive: true }
search:
  order_id: input.order_id
steps:
  - id: open
    rule: |
      vars.approval_sla = sla_start("always", now, "4h");
      vars.contact = input.customer_email;
    next: approval
  - id: approval
    wait: { event: refund.approved, key: input.order_id, timeout: 2d, on_timeout: expired }
    save_as: approval
    next: pay
  - id: pay
    rule: |
      if input.amount_minor > 100000 { throw "the amount is over the 1,000.00 a lead may approve"; }
      vars.approved_by = vars.approval.data.by;
      vars.report = #{ resolved_at: now, sla_met: sla_status(vars.approval_sla, now, 75) != "breached" };
    next: done
  - id: done
    complete: { output: { approved_by: "${vars.approved_by}" } }
  - id: expired
    complete: { output: { approved_by: nobody } }
"#;

const ALWAYS: &str = "calendar: always\ntimezone: UTC\nhours: always\n";

const ADMIN: &str = "console-admin-secret-0123456789";
const READER: &str = "console-read-secret-0123456789";
const EMAIL: &str = "jo.customer@example.com";

fn setup(dir: &Path) {
    let wf = dir.join("workflows");
    std::fs::create_dir_all(wf.join("calendars")).unwrap();
    std::fs::write(wf.join("refund-approval.yaml"), REFUND).unwrap();
    std::fs::write(wf.join("calendars/always.yaml"), ALWAYS).unwrap();
}

fn spawn(dir: &Path, tokens: &[String]) -> Daemon {
    let port = daemon::free_port();
    let mut c = daemon::command(dir, port);
    c.arg("--no-reload");
    for t in tokens {
        c.args(["--token", t]);
    }
    daemon::start(c, port)
}

fn usual_tokens() -> Vec<String> {
    vec![
        format!("ops:admin:{ADMIN}"),
        format!("viewer:read:{READER}"),
    ]
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn api(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN}");
    let a = agent();
    let resp = match (method, body) {
        ("GET", _) => a.get(url).header("authorization", &auth).call(),
        (_, Some(b)) => a.post(url).header("authorization", &auth).send_json(b),
        (_, None) => a.post(url).header("authorization", &auth).send_empty(),
    };
    let mut resp = resp.unwrap();
    (
        resp.status().as_u16(),
        resp.body_mut().read_json().unwrap_or(Value::Null),
    )
}

fn start(addr: &str, order: &str, amount: i64) -> String {
    let (s, b) = api(
        "POST",
        &format!("{addr}/v1/workflows/refund-approval/instances"),
        Some(json!({"order_id": order, "amount_minor": amount, "customer_email": EMAIL})),
    );
    assert_eq!(s, 201, "{b}");
    b["id"].as_str().unwrap().to_string()
}

/// Waits (at most a minute) until the instance has `status`.
fn wait_status(addr: &str, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = api("GET", &format!("{addr}/v1/instances/{id}"), None);
        if v["status"] == json!(status) {
            return v;
        }
        assert!(Instant::now() < deadline, "never {status}: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn records(view: &Value, record: &str) -> usize {
    view["journal"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["record"] == json!(record))
        .count()
}

#[test]
fn an_operator_approves_a_refund_and_retries_a_failure_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let d = spawn(dir.path(), &usual_tokens());
    let small = start(&d.addr, "ORD-100", 25_000);
    let large = start(&d.addr, "ORD-200", 250_000);
    let third = start(&d.addr, "ORD-300", 5_000);
    for id in [&small, &large, &third] {
        wait_status(&d.addr, id, "parked");
    }
    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let b = Browser::start(shots);

    // Signing in: a page that is not the console's own sends there, and back after.
    b.goto(&format!("{}/ui/instances", d.addr));
    assert!(b.url().contains("/ui/sign-in"), "{}", b.url());
    b.screenshot("sign-in");
    b.fill("#token", "not-a-token");
    b.click("button[type=submit]");
    assert!(
        b.text("main").contains("accepts no such token"),
        "{}",
        b.text("main")
    );
    b.fill("#token", ADMIN);
    b.click("main button[type=submit]");
    assert!(b.url().ends_with("/ui/instances"), "{}", b.url());
    let list = b.text("main");
    for id in [&small, &large, &third] {
        assert!(
            list.contains(id.as_str()),
            "{id} missing from the list:\n{list}"
        );
    }
    let header = b.text("header");
    assert!(
        header.contains("signed in as ops (admin scope)"),
        "{header}"
    );
    b.screenshot("instances");

    // Filters: no instance has completed yet; three are parked.
    b.choose("#status", "completed");
    b.click("form.filters button");
    assert!(
        b.text("main").contains("No instance matches"),
        "{}",
        b.text("main")
    );
    b.choose("#workflow", "refund-approval");
    b.choose("#status", "parked");
    b.click("form.filters button");
    let list = b.text("main");
    assert!(
        list.contains(small.as_str()) && list.contains(large.as_str()),
        "{list}"
    );
    assert!(b.url().contains("status=parked"), "{}", b.url());

    // One refund waiting for approval: its wait, its SLA clock, its timeline.
    b.click(&format!("a[href='/ui/instances/{small}']"));
    let page = b.text("main");
    assert!(page.contains("waits for refund.approved"), "{page}");
    let sla = b.text("#sla + table");
    assert!(
        sla.contains("approval_sla") && sla.contains("always") && sla.contains("4h"),
        "{sla}"
    );
    assert!(sla.contains("running"), "{sla}");
    let timeline = b.text("table.timeline");
    assert!(
        timeline.contains("started") && timeline.contains("wait started"),
        "{timeline}"
    );
    assert!(
        !b.text("body").contains(EMAIL),
        "a sensitive input was shown"
    );
    b.screenshot("instance-waiting");

    // Deliver the approval from the page: a confirmation first, then the API.
    b.click("a[href$='/event?type=refund.approved']");
    assert!(
        b.text("h1").contains("Deliver an event"),
        "{}",
        b.text("h1")
    );
    b.fill("#data", "{\"by\": \"lead-2\"");
    b.click("form.card button[type=submit]");
    let refusal = b.text(".refusal");
    assert!(refusal.contains("not JSON"), "{refusal}");
    b.screenshot("confirm-refused");
    b.fill("#data", "{\"by\": \"lead-2\"}");
    b.click("form.card button[type=submit]");
    assert!(
        b.text("main").contains("Event delivered"),
        "{}",
        b.text("main")
    );
    let page = b.wait_for("#status", "completed");
    assert!(page.contains("event received"), "{page}");
    b.screenshot("instance-completed");
    let v = wait_status(&d.addr, &small, "completed");
    assert_eq!(v["output"]["approved_by"], json!("lead-2"));
    assert_eq!(records(&v, "event_received"), 1);

    // A refund over the limit fails after approval; retry it from the page.
    let (s, e) = api(
        "POST",
        &format!("{}/v1/events", d.addr),
        Some(json!({"type": "refund.approved", "key": "ORD-200", "data": {"by": "lead-3"}})),
    );
    assert_eq!(s, 200, "{e}");
    wait_status(&d.addr, &large, "failed");
    b.goto(&format!("{}/ui/instances/{large}", d.addr));
    assert!(
        b.text("main").contains("over the 1,000.00"),
        "{}",
        b.text("main")
    );
    b.click("a[href$='/retry']");
    b.click("form.card button[type=submit]");
    assert!(
        b.text("main").contains("Retry requested"),
        "{}",
        b.text("main")
    );
    b.wait_for("table.timeline", "retry requested");
    let v = wait_status(&d.addr, &large, "failed");
    assert_eq!(records(&v, "retry_requested"), 1, "one retry: {v}");
    assert_eq!(records(&v, "step_failed"), 2, "the step ran again: {v}");

    // The whole workflow paused and resumed from its page.
    b.goto(&format!("{}/ui/workflows", d.addr));
    b.click("a[href='/ui/workflows/refund-approval/pause']");
    b.fill("#reason", "checking a payment incident");
    b.click("form.card button[type=submit]");
    assert!(
        b.text("main").contains("Workflow paused"),
        "{}",
        b.text("main")
    );
    let (_, list) = api("GET", &format!("{}/v1/workflows", d.addr), None);
    assert_eq!(
        list["workflows"][0]["paused"]["reason"],
        json!("checking a payment incident")
    );
    assert_eq!(list["workflows"][0]["paused"]["by"], json!("token:ops"));
    wait_status(&d.addr, &third, "paused");
    b.click("a[href='/ui/workflows/refund-approval/resume']");
    b.fill("#reason", "incident over");
    b.click("form.card button[type=submit]");
    assert!(
        b.text("main").contains("Workflow resumed"),
        "{}",
        b.text("main")
    );
    wait_status(&d.addr, &third, "parked");

    // A read token looks but cannot act, even by going to the form directly.
    b.click("header form button");
    assert!(b.text("main").contains("signed out"), "{}", b.text("main"));
    b.fill("#token", READER);
    b.click("main button[type=submit]");
    b.goto(&format!("{}/ui/instances/{third}", d.addr));
    let page = b.text("main");
    assert!(page.contains("read scope"), "{page}");
    assert!(
        b.try_find("ul.actions").is_none(),
        "actions offered to a read token"
    );
    b.goto(&format!("{}/ui/instances/{third}/cancel", d.addr));
    b.fill("#reason", "customer withdrew");
    b.click("form.card button[type=submit]");
    let refusal = b.text(".refusal");
    assert!(
        refusal.contains("scope `read`") && refusal.contains("forbidden"),
        "{refusal}"
    );
    b.screenshot("read-token-refused");
    let v = wait_status(&d.addr, &third, "parked");
    assert_eq!(records(&v, "cancel_requested"), 0);

    // Unknown ids and pages get a page saying so.
    b.goto(&format!("{}/ui/instances/no-such-id", d.addr));
    assert!(
        b.text("main").contains("no instance `no-such-id`"),
        "{}",
        b.text("main")
    );
    b.goto(&format!("{}/ui/nothing-here", d.addr));
    assert!(
        b.text("main").contains("no such console page"),
        "{}",
        b.text("main")
    );

    // The workflows and reports pages load.
    b.goto(&format!("{}/ui/workflows", d.addr));
    let page = b.text("main");
    assert!(
        page.contains("refund-approval") && page.contains("always"),
        "{page}"
    );
    b.screenshot("workflows");
    b.goto(&format!("{}/ui/reports", d.addr));
    let page = b.text("main");
    assert!(page.contains("refund-approval by week"), "{page}");
    let weekly = b.text("section.weekly");
    assert!(weekly.contains("SLA met, percent"), "{weekly}");
    b.screenshot("reports");

    // A restart with other tokens while the page is open: the old token is refused and
    // the page asks to sign in again, then shows the same instance.
    drop(d);
    let other = "console-new-admin-secret-0123456789";
    let d2 = spawn(dir.path(), &[format!("ops2:admin:{other}")]);
    b.goto(&format!("{}/ui/instances/{third}", d2.addr));
    assert!(b.url().contains("/ui/sign-in"), "{}", b.url());
    assert!(
        b.text("main").contains("no longer accepted"),
        "{}",
        b.text("main")
    );
    b.fill("#token", other);
    b.click("main button[type=submit]");
    assert!(
        b.url().ends_with(&format!("/ui/instances/{third}")),
        "{}",
        b.url()
    );
    assert!(b.text("main").contains("waits for refund.approved"));
}

/// The `Set-Cookie` values of an answer.
fn set_cookies(resp: &ureq::http::Response<ureq::Body>) -> Vec<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn cookie_value(set: &[String], name: &str) -> String {
    set.iter()
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .map(|c| c.split(';').next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no {name} cookie in {set:?}"))
}

/// The CSRF value a page's forms carry.
fn form_csrf(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF value");
    let rest = &html[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

fn form_post(url: &str, cookies: &str, form: &[(&str, &str)]) -> ureq::http::Response<ureq::Body> {
    agent()
        .post(url)
        .header("cookie", cookies)
        .send_form(form.iter().copied())
        .unwrap()
}

/// A console page's status and HTML.
fn page(url: &str, cookies: &str) -> (u16, String) {
    let mut r = agent().get(url).header("cookie", cookies).call().unwrap();
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}

#[test]
fn the_console_guards_what_a_browser_does_not_show() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let d = spawn(dir.path(), &usual_tokens());
    let id = start(&d.addr, "<script>alert(1)</script>", 1_000);
    let spare: Vec<String> = (0..2)
        .map(|i| start(&d.addr, &format!("ORD-S{i}"), 1_000))
        .collect();
    for i in spare.iter().chain([&id]) {
        wait_status(&d.addr, i, "parked");
    }

    // Not signed in: sent to sign in; every page forbids scripts, frames and caching.
    let resp = agent()
        .get(&format!("{}/ui/instances/{id}", d.addr))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let to = resp.headers()["location"].to_str().unwrap();
    assert!(
        to.starts_with("/ui/sign-in?next=%2Fui%2Finstances%2F"),
        "{to}"
    );
    let mut resp = agent()
        .get(&format!("{}/ui/sign-in", d.addr))
        .call()
        .unwrap();
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let set = set_cookies(&resp);
    let nonce = cookie_value(&set, "casework_csrf");
    assert!(
        set[0].contains("HttpOnly") && set[0].contains("SameSite=Strict"),
        "{set:?}"
    );
    assert!(!set[0].contains("Secure"), "plain HTTP: {set:?}");
    let csrf = form_csrf(&resp.body_mut().read_to_string().unwrap());
    assert_ne!(csrf, nonce, "the form's value is not the cookie's");
    // Behind a proxy that says HTTPS, cookies are Secure.
    let resp = agent()
        .get(&format!("{}/ui/sign-in", d.addr))
        .header("x-forwarded-proto", "https")
        .call()
        .unwrap();
    assert!(
        set_cookies(&resp)[0].contains("; Secure"),
        "{:?}",
        set_cookies(&resp)
    );

    // Sign-in needs the CSRF value and a real token, and goes back only to the console.
    let sign_in = format!("{}/ui/sign-in", d.addr);
    let jar = format!("casework_csrf={nonce}");
    let r = form_post(&sign_in, &jar, &[("token", ADMIN), ("csrf", &nonce)]);
    assert_eq!(
        r.status().as_u16(),
        403,
        "the cookie's own value is not the form's"
    );
    let r = form_post(&sign_in, &jar, &[("token", ADMIN)]);
    assert_eq!(r.status().as_u16(), 403, "no CSRF value at all");
    let r = form_post(&sign_in, &jar, &[("token", "guess"), ("csrf", &csrf)]);
    assert_eq!(r.status().as_u16(), 401);
    let r = form_post(
        &sign_in,
        &jar,
        &[
            ("token", ADMIN),
            ("csrf", &csrf),
            ("next", "https://evil.example/ui/"),
        ],
    );
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/ui/instances", "no open redirect");
    let set = set_cookies(&r);
    let token_cookie = set
        .iter()
        .find(|c| c.starts_with("casework_token="))
        .unwrap();
    assert!(
        token_cookie.contains("HttpOnly")
            && token_cookie.contains("SameSite=Strict")
            && token_cookie.contains("Path=/ui"),
        "{token_cookie}"
    );
    let jar = format!(
        "casework_csrf={nonce}; {}",
        token_cookie.split(';').next().unwrap()
    );

    // What a customer wrote is escaped; a sensitive input is never on the page; a signed-in
    // page has the same headers.
    let r = agent()
        .get(&format!("{}/ui/instances/{id}", d.addr))
        .header("cookie", &jar)
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for (h, v) in [
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(r.headers()[h], v, "{h}");
    }
    let (_, html) = page(&format!("{}/ui/instances/{id}", d.addr), &jar);
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "not escaped"
    );
    assert!(
        !html.contains("<script>"),
        "markup from an input reached the page"
    );
    assert!(
        !html.contains(EMAIL) && html.contains("[redacted]"),
        "sensitive input shown"
    );
    let csrf = form_csrf(&html); // signed in: keyed by the token now

    // The date range: a day after today shows nothing, an old one everything, and a range
    // that ends before it starts is refused.
    let list = |q: &str| page(&format!("{}/ui/instances?{q}", d.addr), &jar);
    assert!(list("from=2999-01-01").1.contains("No instance matches"));
    assert!(list("from=2000-01-01").1.contains(spare[0].as_str()));
    let (status, html) = list("from=2026-12-02&to=2026-12-01");
    assert_eq!(status, 400);
    assert!(html.contains("must be before"), "{html}");
    // A workflow's search attributes are filters of the list.
    let (status, html) = list("workflow=refund-approval&where.order_id=ORD-S1");
    assert_eq!(status, 200);
    assert!(html.contains(r#"name="where.order_id""#), "{html}");
    assert!(
        html.contains(spare[1].as_str()) && !html.contains(spare[0].as_str()),
        "{html}"
    );
    let (_, html) = page(&format!("{}/ui/workflows", d.addr), &jar);
    assert!(html.contains("Found by: order_id"), "{html}");

    // An action without this visitor's CSRF value, or from another site, does nothing.
    let cancel = format!("{}/ui/instances/{id}/cancel", d.addr);
    let r = form_post(&cancel, &jar, &[("reason", "forged"), ("csrf", &nonce)]);
    assert_eq!(r.status().as_u16(), 403);
    let r = agent()
        .post(&cancel)
        .header("cookie", &jar)
        .header("origin", "http://127.0.0.1:1")
        .send_form([("reason", "forged"), ("csrf", csrf.as_str())])
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "a post from another origin");
    let r = agent()
        .post(&cancel)
        .header("cookie", &jar)
        .header("sec-fetch-site", "same-site")
        .send_form([("reason", "forged"), ("csrf", csrf.as_str())])
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "a post from a sibling site");
    let v = wait_status(&d.addr, &id, "parked");
    assert_eq!(records(&v, "cancel_requested"), 0);

    // Two confirmations sent at once (a double click, two tabs): one cancels, the other
    // is told the instance is already being cancelled; the journal has one request.
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut r = agent()
                        .post(&cancel)
                        .header("cookie", &jar)
                        .header("origin", &d.addr)
                        .header("host", d.addr.trim_start_matches("http://"))
                        .send_form([("reason", "customer withdrew"), ("csrf", csrf.as_str())])
                        .unwrap();
                    (
                        r.status().as_u16(),
                        r.body_mut().read_to_string().unwrap_or_default(),
                    )
                })
            })
            .collect();
        tasks.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let done = answers.iter().filter(|(s, _)| *s == 303).count();
    assert_eq!(done, 1, "{answers:?}");
    let refused = answers
        .iter()
        .find(|(s, _)| *s == 409)
        .expect("one refused");
    assert!(
        refused.1.contains("already ended or is being cancelled"),
        "{}",
        refused.1
    );
    let v = wait_status(&d.addr, &id, "cancelled");
    assert_eq!(records(&v, "cancel_requested"), 1, "{v}");

    // A filter that does not read refuses the bulk action: dropping it would reach
    // every parked instance of the workflow.
    let (status, _) = page(
        &format!(
            "{}/ui/bulk?action=cancel&workflow=refund-approval&status=parked&where.order_id=ORD-S0&from=someday",
            d.addr
        ),
        &jar,
    );
    assert_eq!(status, 400);
    let r = form_post(
        &format!("{}/ui/bulk", d.addr),
        &jar,
        &[
            ("action", "cancel"),
            ("workflow", "refund-approval"),
            ("status", "parked"),
            ("where.order_id", "ORD-S0"),
            ("from", "someday"),
            ("reason", "duplicate order"),
            ("csrf", &csrf),
        ],
    );
    assert_eq!(r.status().as_u16(), 400);
    for i in &spare {
        assert_eq!(wait_status(&d.addr, i, "parked")["status"], "parked");
    }

    // A bulk action over a search: the one instance for order ORD-S0.
    let (status, html) = page(
        &format!(
            "{}/ui/bulk?action=cancel&workflow=refund-approval&status=parked&where.order_id=ORD-S0",
            d.addr
        ),
        &jar,
    );
    assert_eq!(status, 200);
    assert!(html.contains("<strong>1</strong> instance(s)"), "{html}");
    assert!(
        html.contains(r#"name="where.order_id" value="ORD-S0""#),
        "{html}"
    );
    let mut r = form_post(
        &format!("{}/ui/bulk", d.addr),
        &jar,
        &[
            ("action", "cancel"),
            ("workflow", "refund-approval"),
            ("status", "parked"),
            ("where.order_id", "ORD-S0"),
            ("reason", "duplicate order"),
            ("csrf", &csrf),
        ],
    );
    assert_eq!(r.status().as_u16(), 200);
    assert!(r
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("1 instance(s) done, 0 refused"));
    wait_status(&d.addr, &spare[0], "cancelled");
    assert_eq!(
        wait_status(&d.addr, &spare[1], "parked")["status"],
        "parked"
    );

    // Every parked instance of the workflow cancelled at once, from the list's filter.
    let (status, html) = page(
        &format!(
            "{}/ui/bulk?action=cancel&workflow=refund-approval&status=parked",
            d.addr
        ),
        &jar,
    );
    assert_eq!(status, 200);
    assert!(html.contains("<strong>1</strong> instance(s)"), "{html}");
    let mut r = form_post(
        &format!("{}/ui/bulk", d.addr),
        &jar,
        &[
            ("action", "cancel"),
            ("workflow", "refund-approval"),
            ("status", "parked"),
            ("reason", "duplicates"),
            ("csrf", &csrf),
        ],
    );
    assert_eq!(r.status().as_u16(), 200);
    assert!(r
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("1 instance(s) done, 0 refused"));
    for i in &spare {
        wait_status(&d.addr, i, "cancelled");
    }

    // Signing out needs no CSRF value and forgets the token.
    let r = form_post(&format!("{}/ui/sign-out", d.addr), &jar, &[]);
    assert_eq!(r.status().as_u16(), 303);
    assert!(set_cookies(&r)
        .iter()
        .any(|c| c.starts_with("casework_token=;") && c.contains("Max-Age=0")));
}

#[test]
fn an_open_console_answers_only_to_loopback_names() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let d = spawn(dir.path(), &[]);
    let port = d.addr.rsplit(':').next().unwrap().to_string();
    let get = |host: &str| {
        let mut r = agent()
            .get(&format!("{}/ui/instances", d.addr))
            .header("host", host)
            .call()
            .unwrap();
        (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        )
    };
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "[::1]".to_string(),
    ] {
        let (status, html) = get(&host);
        assert_eq!(status, 200, "{host}");
        assert!(html.contains("open console"), "{host}");
    }
    // A site that rebinds its own name to 127.0.0.1 gets nothing of the console.
    let (status, text) = get(&format!("casework.evil.example:{port}"));
    assert_eq!(status, 403);
    assert!(text.contains("loopback names"), "{text}");
}
