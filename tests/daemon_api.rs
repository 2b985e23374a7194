//! The HTTP API against the real daemon process on 127.0.0.1: every endpoint and its
//! error cases, idempotent start, retry of a failed instance, auth scopes, the rate
//! limit, /metrics and /readyz, and configuration errors that stop the daemon before it
//! opens its store.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Waits on an event keyed by its input; `note` is sensitive.
const HOLD: &str = r#"workflow: hold
version: 1
description: Waits for a go, then completes.
input:
  key: { type: string, required: true }
  amount: { type: integer, required: true }
  note: { type: string, sensitive: true }
steps:
  - id: hold
    wait: { event: go, key: input.key }
    next: done
  - id: done
    complete: { output: { ok: true } }
"#;

/// One plugin call; in these tests the ledger fake answers it.
const PAY: &str = r#"workflow: pay
version: 1
steps:
  - id: charge
    call: payments.charge
    retry: { max_attempts: 1 }
    next: done
  - id: done
    complete: { output: { paid: true } }
"#;

/// A rule that prints 5000 bytes (904 over its budget), then fails.
const OOPS: &str = r#"workflow: oops
version: 1
steps:
  - id: boom
    rule: |
      let s = ""; s.pad(5000, 'x'); print(s);
      throw "no luck";
    next: done
  - id: done
    complete: {}
"#;

struct Daemon {
    child: Child,
    addr: String,
    stderr: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon's command in `dir`, with no CASEWORK_* variables from the caller.
fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_casework"));
    cmd.arg("serve").current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("CASEWORK_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary folder with `workflows/` holding these files.
fn folder(workflows: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    for (name, text) in workflows {
        std::fs::write(dir.path().join("workflows").join(name), text).unwrap();
    }
    dir
}

/// Starts the daemon on a free port and waits until `/readyz` says ready.
fn spawn(dir: &Path, extra: &[&str]) -> Daemon {
    let port = free_port();
    let stderr = dir.join(format!("stderr-{port}.log"));
    let child = command(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("CASEWORK_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let addr = format!("http://127.0.0.1:{port}");
    let mut d = Daemon {
        child,
        addr,
        stderr,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            panic!(
                "daemon exited with {status}: {}",
                std::fs::read_to_string(&d.stderr).unwrap_or_default()
            );
        }
        if call(&d, "GET", "/readyz", None, &[]).0 == 200 {
            return d;
        }
        assert!(Instant::now() < deadline, "daemon did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

enum Body<'a> {
    Json(Value),
    Raw(&'a [u8], Option<&'a str>),
}

/// One request; returns status, JSON body (Null if not JSON) and the raw response.
fn request(
    d: &Daemon,
    method: &str,
    path: &str,
    body: Option<Body>,
    headers: &[(&str, &str)],
) -> (u16, Value, String, Option<String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}{path}", d.addr);
    let result = match method {
        "GET" => {
            let mut r = agent.get(&url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        _ => {
            let mut r = match method {
                "POST" => agent.post(&url),
                "PUT" => agent.put(&url),
                other => panic!("method {other}"),
            };
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            match body {
                Some(Body::Json(v)) => r.send_json(&v),
                Some(Body::Raw(bytes, content_type)) => {
                    if let Some(ct) = content_type {
                        r = r.header("content-type", ct);
                    }
                    r.send(bytes)
                }
                None => r.send_empty(),
            }
        }
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => return (0, Value::Null, e.to_string(), None),
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        retry_after,
    )
}

fn call(
    d: &Daemon,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let (s, v, _, _) = request(d, method, path, body.map(Body::Json), headers);
    (s, v)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn status_of(d: &Daemon, id: &str, auth: &[(&str, &str)]) -> String {
    call(d, "GET", &format!("/v1/instances/{id}"), None, auth).1["status"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn every_endpoint_and_its_errors_on_an_open_loopback_daemon() {
    let dir = folder(&[
        ("hold.yaml", HOLD),
        ("pay.yaml", PAY),
        ("oops.yaml", OOPS),
        (
            "broken.yaml",
            "workflow: broken\nversion: 1\nsteps:\n  - id: a\n    wiat: {}\n",
        ),
    ]);
    // The ledger fake cannot write while its path is a folder: the charge fails.
    let ledger = dir.path().join("ledger");
    std::fs::create_dir(&ledger).unwrap();
    let d = spawn(
        dir.path(),
        &[
            "--test-ledger",
            ledger.to_str().unwrap(),
            "--max-body-bytes",
            "16384",
            "--no-reload",
        ],
    );

    // Every answer carries a request id, the client's own or a new one.
    let id_of = |r: &ureq::http::Response<ureq::Body>| {
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let url = format!("{}/healthz", d.addr);
    let mine = ureq::get(&url)
        .header("x-request-id", "req-7")
        .call()
        .unwrap();
    assert_eq!(id_of(&mine).as_deref(), Some("req-7"));
    let (a, b) = (
        ureq::get(&url).call().unwrap(),
        ureq::get(&url).call().unwrap(),
    );
    let (a, b) = (id_of(&a).unwrap_or_default(), id_of(&b).unwrap_or_default());
    assert!(a.len() == 36 && b.len() == 36 && a != b, "{a} {b}");

    // Probes and the API description.
    assert_eq!(
        call(&d, "GET", "/healthz", None, &[]),
        (200, json!({"status": "ok"}))
    );
    assert_eq!(
        call(&d, "GET", "/readyz", None, &[]),
        (200, json!({"status": "ready"}))
    );
    let (s, doc) = call(&d, "GET", "/openapi.json", None, &[]);
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["paths"]["/v1/instances/{id}/retry"]["post"].is_object());

    // Workflows: loaded ones with when, and the file that failed.
    let (s, wfs) = call(&d, "GET", "/v1/workflows", None, &[]);
    assert_eq!(s, 200);
    let names: Vec<&str> = wfs["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hold", "oops", "pay"]);
    let loaded_at = wfs["workflows"][0]["loaded_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(loaded_at).is_ok(),
        "{loaded_at}"
    );
    assert!(wfs["failed"][0]["file"]
        .as_str()
        .unwrap()
        .ends_with("broken.yaml"));
    let errors = wfs["failed"][0]["errors"].to_string();
    assert!(
        errors.contains("broken.yaml:5:5: error: unknown field `wiat`"),
        "{errors}"
    );

    // Start: unknown workflow, invalid input (every problem), idempotent start.
    let (s, e) = call(
        &d,
        "POST",
        "/v1/workflows/nope/instances",
        Some(json!({})),
        &[],
    );
    assert_eq!((s, code(&e)), (404, "workflow_not_found"));
    let (s, e) = call(
        &d,
        "POST",
        "/v1/workflows/hold/instances",
        Some(json!({"amount": "ten", "extra": 1})),
        &[],
    );
    assert_eq!((s, code(&e)), (422, "invalid_input"));
    let mut fields: Vec<&str> = e["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(fields, ["amount", "extra", "key"], "{e}");
    let input = json!({"key": "a", "amount": 10, "note": "secret-note-123"});
    let idem = [("Idempotency-Key", "order-a")];
    let (s, first) = call(
        &d,
        "POST",
        "/v1/workflows/hold/instances",
        Some(input.clone()),
        &idem,
    );
    assert_eq!(s, 201, "{first}");
    assert_eq!(first["created"], true);
    let (s, again) = call(
        &d,
        "POST",
        "/v1/workflows/hold/instances",
        Some(input.clone()),
        &idem,
    );
    assert_eq!(
        (s, &again["id"], &again["created"]),
        (200, &first["id"], &json!(false))
    );
    let a = first["id"].as_str().unwrap().to_string();

    // Bodies: unknown fields, not JSON, malformed, too large.
    let (s, e) = call(
        &d,
        "POST",
        "/v1/events",
        Some(json!({"type": "go", "key": "a", "colour": "red"})),
        &[],
    );
    assert_eq!((s, code(&e)), (400, "invalid_body"));
    assert!(
        e["error"]["message"].as_str().unwrap().contains("colour"),
        "{e}"
    );
    let (s, e, _, _) = request(
        &d,
        "POST",
        "/v1/events",
        Some(Body::Raw(br#"{"type":"go","key":"a"}"#, Some("text/plain"))),
        &[],
    );
    assert_eq!((s, code(&e)), (415, "unsupported_media_type"));
    let (s, e, _, _) = request(
        &d,
        "POST",
        "/v1/events",
        Some(Body::Raw(b"{\"type\":", Some("application/json"))),
        &[],
    );
    assert_eq!((s, code(&e)), (400, "invalid_body"));
    let big = format!(
        r#"{{"key":"b","amount":1,"note":"{}"}}"#,
        "x".repeat(40_000)
    );
    let (s, e, raw, _) = request(
        &d,
        "POST",
        "/v1/workflows/hold/instances",
        Some(Body::Raw(big.as_bytes(), Some("application/json"))),
        &[],
    );
    assert_eq!((s, code(&e)), (413, "body_too_large"), "{raw}");

    // Reading: one instance (sensitive input redacted), listing, pagination, errors.
    let (s, view) = call(&d, "GET", &format!("/v1/instances/{a}"), None, &[]);
    assert_eq!(s, 200);
    assert_eq!(view["current"][0]["step"], "hold");
    assert_eq!(view["input"]["note"], "[redacted]");
    let (s, e) = call(&d, "GET", "/v1/instances/nope", None, &[]);
    assert_eq!((s, code(&e)), (404, "instance_not_found"));
    let (_, list) = call(&d, "GET", "/v1/instances?workflow=hold&limit=1", None, &[]);
    assert_eq!(list["instances"][0]["id"], a.as_str());
    assert_eq!(list["next_cursor"], a.as_str());
    // Times in RFC 3339, as everywhere else in the API.
    for field in ["created_at", "updated_at"] {
        let t = list["instances"][0][field].as_str().unwrap_or_default();
        assert!(
            t.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(t).is_ok(),
            "{field}: {list}"
        );
    }
    let (_, rest) = call(
        &d,
        "GET",
        &format!("/v1/instances?workflow=hold&cursor={a}"),
        None,
        &[],
    );
    assert_eq!(rest["instances"], json!([]));
    let (s, e) = call(&d, "GET", "/v1/instances?colour=red", None, &[]);
    assert_eq!((s, code(&e)), (400, "invalid_query"));
    // A status no instance can have is refused, not answered with an empty page.
    let (s, e) = call(&d, "GET", "/v1/instances?status=AAA", None, &[]);
    assert_eq!((s, code(&e)), (400, "invalid_query"), "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("parked"),
        "{e}"
    );
    let (s, _) = call(&d, "GET", "/v1/instances?status=paused", None, &[]);
    assert_eq!(s, 200);
    // An event id may be left out but not sent as null.
    let (s, e) = call(
        &d,
        "POST",
        "/v1/events",
        Some(json!({"type": "go", "key": "zzz", "id": null})),
        &[],
    );
    assert_eq!((s, code(&e)), (400, "invalid_body"), "{e}");

    // Events wake only the matching instance.
    let (s, woke) = call(
        &d,
        "POST",
        "/v1/events",
        Some(json!({"type": "go", "key": "zzz"})),
        &[],
    );
    assert_eq!((s, &woke["woken"]), (200, &json!([])));
    let (_, woke) = call(
        &d,
        "POST",
        "/v1/events",
        Some(json!({"type": "go", "key": "a"})),
        &[],
    );
    assert_eq!(woke["woken"], json!([a]));
    eventually("a completes", || status_of(&d, &a, &[]) == "completed");

    // Cancel: once, twice, unknown, unknown body field.
    let (_, b) = call(
        &d,
        "POST",
        "/v1/workflows/hold/instances",
        Some(json!({"key": "b", "amount": 2})),
        &[],
    );
    let b = b["id"].as_str().unwrap().to_string();
    let cancel = format!("/v1/instances/{b}/cancel");
    let (s, e) = call(&d, "POST", &cancel, Some(json!({"why": "x"})), &[]);
    assert_eq!((s, code(&e)), (400, "invalid_body"));
    let (s, ok) = call(
        &d,
        "POST",
        &cancel,
        Some(json!({"reason": "duplicate ticket"})),
        &[],
    );
    assert_eq!((s, ok), (200, json!({"id": b, "cancelling": true})));
    eventually("b is cancelled", || status_of(&d, &b, &[]) == "cancelled");
    let (s, e) = call(&d, "POST", &cancel, None, &[]);
    assert_eq!((s, code(&e)), (409, "instance_finished"));
    let (s, e) = call(&d, "POST", "/v1/instances/nope/cancel", None, &[]);
    assert_eq!((s, code(&e)), (404, "instance_not_found"));

    // Retry: not failed, unknown, then a real failed instance.
    let (s, e) = call(&d, "POST", &format!("/v1/instances/{a}/retry"), None, &[]);
    assert_eq!((s, code(&e)), (409, "not_failed"));
    let (s, e) = call(&d, "POST", &format!("/v1/instances/{b}/retry"), None, &[]);
    assert_eq!((s, code(&e)), (409, "not_failed"));
    let (s, e) = call(&d, "POST", "/v1/instances/nope/retry", None, &[]);
    assert_eq!((s, code(&e)), (404, "instance_not_found"));
    let (s, p) = call(&d, "POST", "/v1/workflows/pay/instances", None, &[]);
    assert_eq!(s, 201, "{p}");
    let p = p["id"].as_str().unwrap().to_string();
    eventually("the charge fails", || status_of(&d, &p, &[]) == "failed");
    let (s, e) = call(
        &d,
        "POST",
        &format!("/v1/instances/{p}/retry"),
        Some(json!({"x": 1})),
        &[],
    );
    assert_eq!((s, code(&e)), (400, "invalid_body"));
    std::fs::remove_dir(&ledger).unwrap();
    let (s, ok) = call(&d, "POST", &format!("/v1/instances/{p}/retry"), None, &[]);
    assert_eq!((s, ok), (200, json!({"id": p, "retrying": true})));
    eventually("the retried charge completes", || {
        status_of(&d, &p, &[]) == "completed"
    });
    let (_, view) = call(&d, "GET", &format!("/v1/instances/{p}"), None, &[]);
    let kinds: Vec<&str> = view["journal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["record"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"retry_requested"), "{kinds:?}");
    let ledger_text = std::fs::read_to_string(&ledger).unwrap();
    assert!(
        ledger_text.starts_with(&format!("{p}:charge:2 1 payments.charge")),
        "a retried step is a new visit with a new idempotency key: {ledger_text}"
    );
    let (s, e) = call(&d, "POST", &format!("/v1/instances/{p}/retry"), None, &[]);
    assert_eq!((s, code(&e)), (409, "not_failed"));

    // A rule error, counted.
    let (_, o) = call(&d, "POST", "/v1/workflows/oops/instances", None, &[]);
    let o = o["id"].as_str().unwrap().to_string();
    eventually("oops fails", || status_of(&d, &o, &[]) == "failed");

    // Routes that do not exist.
    let (s, e) = call(&d, "GET", "/v2/anything", None, &[]);
    assert_eq!((s, code(&e)), (404, "route_not_found"));
    let (s, e) = call(&d, "PUT", "/v1/events", Some(json!({})), &[]);
    assert_eq!((s, code(&e)), (405, "method_not_allowed"));

    // Metrics after the traffic.
    let (s, _, page, _) = request(&d, "GET", "/metrics", None, &[]);
    assert_eq!(s, 200);
    for needle in [
        "casework_instances{status=\"completed\"} 2",
        "casework_instances{status=\"cancelled\"} 1",
        "casework_instances{status=\"failed\"} 1",
        "casework_ready 1",
        "casework_workflows_loaded 3",
        "casework_reloads_total 1",
        "casework_reload_failures_total 1",
        "casework_step_duration_seconds_bucket{workflow=\"hold\",step=\"hold\",outcome=\"completed\",le=",
        "casework_plugin_call_duration_seconds_count{plugin=\"payments\",action=\"charge\",outcome=\"error\"} 1",
        "casework_plugin_call_duration_seconds_count{plugin=\"payments\",action=\"charge\",outcome=\"ok\"} 1",
        "casework_rule_errors_total{workflow=\"oops\"} 1",
        "casework_rule_output_dropped_bytes_total 904\n",
        "casework_rule_output_dropped_lines_total 0\n",
        "casework_journal_flush_duration_seconds_count ",
        "\nprocess_cpu_seconds_total ",
        "\nprocess_resident_memory_bytes ",
        "\nprocess_open_fds ",
        "\nprocess_threads ",
        concat!("\ncasework_build_info{version=\"", env!("CARGO_PKG_VERSION"), "\"} 1\n"),
        "casework_http_request_duration_seconds_bucket{method=\"GET\",route=\"/healthz\",le=\"+Inf\"} 4\n",
        "casework_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/workflows/{name}/instances\"} ",
        "casework_journal_records_total ",
        "casework_http_requests_total{method=\"POST\",route=\"/v1/workflows/{name}/instances\",status=\"201\"} ",
        "casework_http_requests_total{method=\"POST\",route=\"/v1/workflows/{name}/instances\",status=\"422\"} 1",
        "casework_http_requests_total{method=\"GET\",route=\"(unmatched)\",status=\"404\"} 1",
    ] {
        assert!(page.contains(needle), "missing {needle}\n{page}");
    }
    let logs = std::fs::read_to_string(&d.stderr).unwrap();
    assert!(
        !logs.contains("secret-note-123"),
        "a sensitive input was logged"
    );
    assert!(
        logs.contains("rule output truncated: 904 bytes dropped, 0 lines not shown"),
        "{logs}"
    );
    assert!(
        !logs.contains(&"x".repeat(4097)),
        "more than the budget was logged"
    );
}

const READ: &str = "read-token-000000000000000000000001";
const START: &str = "start-token-00000000000000000000002";
const ADMIN: &str = "admin-token-00000000000000000000003";

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn tokens_scopes_and_settings_from_a_config_file() {
    use sha2::Digest;
    let dir = folder(&[("hold.yaml", HOLD)]);
    // The start token is given as its SHA-256; the file's listen address is overridden
    // by the --listen flag spawn() passes.
    let start_hash = hex::encode(sha2::Sha256::digest(START.as_bytes()));
    std::fs::write(
        dir.path().join("casework.toml"),
        format!(
            r#"listen = "127.0.0.1:1"
data = "state"
no_reload = true

[[tokens]]
name = "viewer"
scope = "read"
token = "{READ}"

[[tokens]]
name = "ticketing"
scope = "start"
sha256 = "{start_hash}"

[[tokens]]
name = "ops"
scope = "admin"
token = "{ADMIN}"
"#
        ),
    )
    .unwrap();
    let d = spawn(dir.path(), &[]);
    assert!(
        dir.path().join("state").is_dir(),
        "data = \"state\" from the file"
    );
    let (read, start, admin) = (bearer(READ), bearer(START), bearer(ADMIN));
    let as_read = [("authorization", read.as_str())];
    let as_start = [("authorization", start.as_str())];
    let as_admin = [("authorization", admin.as_str())];

    // Probes and the description stay open.
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(call(&d, "GET", path, None, &[]).0, 200, "{path}");
    }
    // No token, a wrong token, another scheme: 401.
    for h in [
        None,
        Some("Bearer not-a-token-at-all-0000000"),
        Some("Basic b3BzOm9wcw=="),
    ] {
        let headers: Vec<(&str, &str)> = h.map(|h| ("authorization", h)).into_iter().collect();
        let (s, e) = call(&d, "GET", "/v1/workflows", None, &headers);
        assert_eq!((s, code(&e)), (401, "unauthorized"), "{h:?}");
    }
    let (s, e) = call(
        &d,
        "POST",
        "/v1/workflows/hold/instances",
        Some(json!({})),
        &[],
    );
    assert_eq!((s, code(&e)), (401, "unauthorized"));

    // read: reads, cannot start or deliver.
    assert_eq!(call(&d, "GET", "/v1/workflows", None, &as_read).0, 200);
    assert_eq!(call(&d, "GET", "/v1/instances", None, &as_read).0, 200);
    assert_eq!(request(&d, "GET", "/metrics", None, &as_read).0, 200);
    assert_eq!(request(&d, "GET", "/metrics", None, &[]).0, 401);
    let input = json!({"key": "k", "amount": 1});
    let (s, e) = call(
        &d,
        "POST",
        "/v1/workflows/hold/instances",
        Some(input.clone()),
        &as_read,
    );
    assert_eq!((s, code(&e)), (403, "forbidden"));
    assert!(
        e["error"]["message"].as_str().unwrap().contains("`start`"),
        "{e}"
    );
    let (s, e) = call(
        &d,
        "POST",
        "/v1/events",
        Some(json!({"type": "go", "key": "k"})),
        &as_read,
    );
    assert_eq!((s, code(&e)), (403, "forbidden"));

    // start: starts and delivers, reads, cannot cancel or retry.
    let (s, started) = call(
        &d,
        "POST",
        "/v1/workflows/hold/instances",
        Some(input.clone()),
        &as_start,
    );
    assert_eq!(s, 201, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    assert_eq!(status_of(&d, &id, &as_start), "parked");
    let cancel = format!("/v1/instances/{id}/cancel");
    let (s, e) = call(&d, "POST", &cancel, None, &as_start);
    assert_eq!((s, code(&e)), (403, "forbidden"));
    let (s, e) = call(
        &d,
        "POST",
        &format!("/v1/instances/{id}/retry"),
        None,
        &as_start,
    );
    assert_eq!((s, code(&e)), (403, "forbidden"));
    // A backup holds every instance's data: admin only.
    let (s, e) = call(&d, "GET", "/v1/backup", None, &as_start);
    assert_eq!((s, code(&e)), (403, "forbidden"));
    assert_eq!(call(&d, "GET", "/v1/backup", None, &as_read).0, 403);
    assert_eq!(call(&d, "GET", "/v1/backup", None, &[]).0, 401);
    let (s, _) = call(
        &d,
        "POST",
        "/v1/events",
        Some(json!({"type": "other", "key": "k"})),
        &as_start,
    );
    assert_eq!(s, 200);

    // admin: everything.
    let mut r = ureq::get(&format!("{}/v1/backup", d.addr))
        .header("authorization", admin.as_str())
        .call()
        .unwrap();
    let file = r
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap();
    assert!(file.starts_with(b"CASEWORK-BACKUP 1\n"));
    let (s, _) = call(&d, "POST", &cancel, None, &as_admin);
    assert_eq!(s, 200);
    eventually("cancelled", || status_of(&d, &id, &as_admin) == "cancelled");
    let (s, e) = call(&d, "POST", &cancel, None, &as_admin);
    assert_eq!((s, code(&e)), (409, "instance_finished"));

    // Secrets never reach the logs.
    let (_, _, page, _) = request(&d, "GET", "/metrics", None, &as_admin);
    assert!(
        page.contains(
            "casework_http_requests_total{method=\"GET\",route=\"/v1/workflows\",status=\"401\"} 3"
        ),
        "{page}"
    );
    let logs = std::fs::read_to_string(&d.stderr).unwrap();
    for secret in [READ, START, ADMIN, start_hash.as_str()] {
        assert!(!logs.contains(secret), "a token is in the logs");
    }
}

#[test]
fn a_client_over_the_rate_limit_gets_429_with_retry_after() {
    let dir = folder(&[("hold.yaml", HOLD)]);
    let d = spawn(
        dir.path(),
        &["--rate-limit", "1", "--rate-burst", "3", "--no-reload"],
    );
    // spawn() polled /readyz, which is not limited. The burst passes, then a request
    // over the rate (1/s) is refused; a slow machine may let one more through first.
    for _ in 0..3 {
        assert_eq!(call(&d, "GET", "/v1/workflows", None, &[]).0, 200);
    }
    let limited = (0..10).find_map(|_| {
        let (s, e, _, retry_after) = request(&d, "GET", "/v1/instances", None, &[]);
        (s != 200).then_some((s, code(&e).to_string(), retry_after))
    });
    let (s, code, retry_after) = limited.expect("no request was limited");
    assert_eq!((s, code.as_str()), (429, "rate_limited"));
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&secs), "{secs}");
    assert_eq!(
        call(&d, "GET", "/healthz", None, &[]).0,
        200,
        "probes are not limited"
    );
}

/// Runs `serve` expecting it to stop at once; returns its stderr.
fn refused(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = command(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success(), "serve {args:?} did not fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn listening_beyond_loopback_without_tokens_is_refused() {
    let dir = folder(&[("hold.yaml", HOLD)]);
    let port = free_port().to_string();
    let err = refused(
        dir.path(),
        &["--listen", &format!("0.0.0.0:{port}"), "--data", "d"],
        &[],
    );
    assert!(
        err.contains("refusing to listen on 0.0.0.0:") && err.contains("without API tokens"),
        "{err}"
    );
    assert!(!dir.path().join("d").exists(), "the store was not opened");
}

#[test]
fn invalid_configuration_names_the_key_and_creates_nothing() {
    let dir = folder(&[("hold.yaml", HOLD)]);
    std::fs::write(
        dir.path().join("casework.toml"),
        "data = \"d\"\nlistn = \"127.0.0.1:7420\"\n",
    )
    .unwrap();
    let err = refused(dir.path(), &[], &[]);
    assert!(
        err.contains("casework.toml:2: key `listn` is unknown (did you mean `listen`?)"),
        "{err}"
    );
    assert!(
        !dir.path().join("d").exists(),
        "the data directory was not created"
    );

    std::fs::write(dir.path().join("casework.toml"), "data = \"d\"\n").unwrap();
    let err = refused(dir.path(), &[], &[("CASEWORK_MAX_BODY_BYTES", "lots")]);
    assert!(
        err.contains("CASEWORK_MAX_BODY_BYTES: `lots` is not a whole number"),
        "{err}"
    );
    let err = refused(dir.path(), &["--config", "missing.toml"], &[]);
    assert!(err.contains("missing.toml does not exist"), "{err}");
    let err = refused(dir.path(), &["--rate-limit", "many"], &[]);
    assert!(err.contains("--rate-limit"), "{err}");
    assert!(
        !dir.path().join("d").exists(),
        "the data directory was not created"
    );
}

#[test]
fn an_event_starts_a_triggered_workflow_once_per_event_id_and_wakes_only_its_key() {
    const EMERGENCY: &str = r#"
workflow: page
version: 1
input:
  ticket: { type: string, required: true }
triggers:
  - event: ticket.created
    when: event.data.priority == "urgent"
    input: { ticket: "${event.key}" }
steps:
  - id: wait_ack
    wait: { event: incident.acknowledged, key: input.ticket, timeout: 1h, on_timeout: unacked }
    next: acked
  - id: acked
    complete: { output: { acked: true } }
  - id: unacked
    complete: { output: { acked: false } }
"#;
    let dir = folder(&[("page.yaml", EMERGENCY)]);
    let d = spawn(dir.path(), &[]);
    let ticket = |key: &str, priority: &str, id: &str| json!({"type": "ticket.created", "key": key, "data": {"priority": priority}, "id": id});

    let (s, low) = call(
        &d,
        "POST",
        "/v1/events",
        Some(ticket("T-1", "low", "e1")),
        &[],
    );
    assert_eq!(s, 200, "{low}");
    assert_eq!(low["started"], json!([]), "{low}");

    let (_, urgent) = call(
        &d,
        "POST",
        "/v1/events",
        Some(ticket("T-2", "urgent", "e2")),
        &[],
    );
    let started = urgent["started"].as_array().cloned().unwrap_or_default();
    assert_eq!(started.len(), 1, "{urgent}");
    assert_eq!(started[0]["workflow"], "page");
    let id = started[0]["id"].as_str().unwrap().to_string();

    // The same event again (a retried webhook) starts nothing new.
    let (_, again) = call(
        &d,
        "POST",
        "/v1/events",
        Some(ticket("T-2", "urgent", "e2")),
        &[],
    );
    assert_eq!(again["started"][0]["id"], json!(id), "{again}");
    assert_eq!(again["started"][0]["created"], json!(false), "{again}");

    // An acknowledgement for another ticket wakes nothing; the right one completes it.
    let ack = |key: &str| json!({"type": "incident.acknowledged", "key": key});
    let (_, other) = call(&d, "POST", "/v1/events", Some(ack("T-9")), &[]);
    assert_eq!(other["woken"], json!([]), "{other}");
    eventually("the instance waits for its acknowledgement", || {
        status_of(&d, &id, &[]) == "parked"
    });
    let (_, mine) = call(&d, "POST", "/v1/events", Some(ack("T-2")), &[]);
    assert_eq!(mine["woken"], json!([id]), "{mine}");
    eventually("the instance completes", || {
        status_of(&d, &id, &[]) == "completed"
    });
    let (_, view) = call(&d, "GET", &format!("/v1/instances/{id}"), None, &[]);
    assert_eq!(view["output"], json!({"acked": true}), "{view}");
}

/// POST `body` to `path` with these `Idempotency-Key` headers given as raw bytes.
fn post_with_keys(d: &Daemon, path: &str, body: Value, keys: &[&[u8]]) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.post(format!("{}{path}", d.addr));
    for key in keys {
        let value = ureq::http::HeaderValue::from_bytes(key).expect("a header value");
        r = r.header("idempotency-key", value);
    }
    let mut resp = r.send_json(&body).expect("an answer");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A key with a byte outside visible ASCII was dropped silently, so a retried start with
/// `Idempotency-Key: refund:ORD-ü:1500` created a second instance.
#[test]
fn a_utf8_idempotency_key_is_honoured_and_an_unusable_one_is_refused_not_ignored() {
    let dir = folder(&[("hold.yaml", HOLD)]);
    let d = spawn(dir.path(), &[]);
    let start = "/v1/workflows/hold/instances";
    let input = json!({"key": "k", "amount": 1500});

    let key = "refund:ORD-ü:1500".as_bytes();
    let (s, first) = post_with_keys(&d, start, input.clone(), &[key]);
    assert_eq!((s, &first["created"]), (201, &json!(true)), "{first}");
    let (s, again) = post_with_keys(&d, start, input.clone(), &[key]);
    assert_eq!(
        (s, &again["created"], &again["id"]),
        (200, &json!(false), &first["id"]),
        "{again}"
    );
    // Compared byte for byte: `u` is not `ü`.
    let (s, other) = post_with_keys(&d, start, input.clone(), &[b"refund:ORD-u:1500"]);
    assert_eq!((s, &other["created"]), (201, &json!(true)), "{other}");
    assert_ne!(other["id"], first["id"]);

    let longest = "k".repeat(256);
    let (s, _) = post_with_keys(&d, start, input.clone(), &[longest.as_bytes()]);
    assert_eq!(s, 201, "a 256-byte key is accepted");
    let too_long = "k".repeat(257);
    let latin1 = b"refund:ORD-\xfc:1500";
    for (keys, why) in [
        (vec![&latin1[..]], "the Idempotency-Key is not UTF-8"),
        (vec![&b""[..]], "the Idempotency-Key is empty"),
        (
            vec![too_long.as_bytes()],
            "the Idempotency-Key is 257 bytes long",
        ),
        (
            vec![&b"a"[..], &b"b"[..]],
            "there is more than one Idempotency-Key header",
        ),
    ] {
        let (s, e) = post_with_keys(&d, start, input.clone(), &keys);
        assert_eq!(
            (s, code(&e)),
            (400, "invalid_idempotency_key"),
            "{why}: {e}"
        );
        assert_eq!(
            e["error"]["message"],
            format!("{why}; send one Idempotency-Key header of 1 to 256 bytes of UTF-8 text"),
        );
    }
    let (_, list) = call(&d, "GET", "/v1/instances?workflow=hold", None, &[]);
    assert_eq!(
        list["instances"].as_array().map(Vec::len),
        Some(3),
        "refused starts created nothing: {list}"
    );

    // Event ids: the same rules, in the body.
    let event = |id: &str| json!({"type": "go", "key": "nobody", "id": id});
    for (id, why) in [
        (String::new(), "is empty"),
        ("e".repeat(257), "is 257 bytes long"),
    ] {
        let (s, e) = call(&d, "POST", "/v1/events", Some(event(&id)), &[]);
        assert_eq!((s, code(&e)), (400, "invalid_event_id"), "{e}");
        assert_eq!(
            e["error"]["message"],
            format!("the event `id` {why}; an `id` is 1 to 256 bytes of text, or leave it out"),
        );
    }
    let (s, delivered) = call(&d, "POST", "/v1/events", Some(event("évt-ü-1")), &[]);
    assert_eq!(s, 200, "{delivered}");
}

/// A windowed trigger over HTTP: tickets about one component sent at once (each twice, as
/// a retrying webhook does) start one outage; the next ticket is given to it; a count
/// begun afterwards survives SIGKILL and finishes in the restarted daemon.
#[test]
fn a_burst_of_events_sent_at_once_starts_one_instance_and_its_count_survives_sigkill() {
    const OUTAGE: &str = r#"
workflow: outage
version: 1
input:
  component: { type: string, required: true }
  tickets: { type: integer, required: true }
triggers:
  - event: ticket.created
    key: event.data.component
    count: { at_least: 5, within: 15m }
    input: { component: "${window.key}", tickets: "${window.count}" }
steps:
  - id: next_ticket
    wait: { event: ticket.created, key: input.component, timeout: 1h }
    save_as: ticket
    next: resolved
  - id: resolved
    wait: { event: outage.resolved, key: input.component, timeout: 1h }
    next: done
  - id: done
    complete: { output: { heard: "${vars.ticket.data.n}" } }
"#;
    let dir = folder(&[("outage.yaml", OUTAGE)]);
    let mut d = spawn(dir.path(), &[]);
    let ticket = |n: usize| json!({"type": "ticket.created", "key": format!("T-{n}"), "id": format!("e-{n}"), "data": {"component": "db", "n": n}});
    const TICKETS: usize = 12;
    let answers: Vec<Value> = std::thread::scope(|s| {
        let d = &d;
        let handles: Vec<_> = (0..TICKETS * 2)
            .map(|i| {
                s.spawn(move || {
                    let (status, v) = call(d, "POST", "/v1/events", Some(ticket(i % TICKETS)), &[]);
                    assert_eq!(status, 200, "{v}");
                    v
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created: Vec<&Value> = answers
        .iter()
        .flat_map(|a| a["started"].as_array().unwrap())
        .filter(|s| s["created"] == json!(true))
        .collect();
    assert_eq!(created.len(), 1, "{answers:#?}");
    let id = created[0]["id"].as_str().unwrap().to_string();
    let named: std::collections::BTreeSet<&str> = answers
        .iter()
        .flat_map(|a| a["started"].as_array().unwrap())
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        named.len(),
        1,
        "every ticket after the count names the one outage"
    );
    eventually("the outage hears a later ticket", || {
        let (_, v) = call(&d, "GET", &format!("/v1/instances/{id}"), None, &[]);
        v.to_string().contains("outage.resolved")
    });
    let resolved = json!({"type": "outage.resolved", "key": "db"});
    let (_, woke) = call(&d, "POST", "/v1/events", Some(resolved), &[]);
    assert_eq!(woke["woken"], json!([id]), "{woke}");
    eventually("the outage completes", || {
        status_of(&d, &id, &[]) == "completed"
    });
    let (_, view) = call(&d, "GET", &format!("/v1/instances/{id}"), None, &[]);
    assert_eq!(view["input"]["tickets"], json!(5), "{view}");
    assert!(
        view["output"]["heard"].is_u64(),
        "a ticket after the count: {view}"
    );

    // A new count: two tickets, SIGKILL, a restart, three more start the next outage.
    for n in 100..102 {
        let (_, a) = call(&d, "POST", "/v1/events", Some(ticket(n)), &[]);
        assert_eq!(a["counted"][0]["count"], json!(n - 99), "{a}");
    }
    drop(d);
    d = spawn(dir.path(), &[]);
    for n in 102..104 {
        let (_, a) = call(&d, "POST", "/v1/events", Some(ticket(n)), &[]);
        assert_eq!(a["counted"][0]["count"], json!(n - 99), "{a}");
        assert_eq!(a["started"], json!([]), "{a}");
    }
    let (_, a) = call(&d, "POST", "/v1/events", Some(ticket(104)), &[]);
    assert_eq!(a["started"][0]["created"], json!(true), "{a}");
    assert_ne!(a["started"][0]["id"], json!(id));
}
