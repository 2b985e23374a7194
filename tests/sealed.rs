//! Encryption at rest: secrets given to an instance (sensitive inputs, plugin outputs, event
//! data, correlation keys, event ids, search attribute values) never appear in the data directory's files, and the
//! instance still resumes after a restart and reads back through `casework inspect`.

use casework::clock::ManualClock;
use casework::compile::{self, rules::Rules};
use casework::daemon::Driver;
use casework::plugin_host::{CallContext, CallFuture, PluginHost};
use casework::runtime::{Event, Status};
use casework::store::seal::{JournalKey, KeySource};
use casework::store::sled::SledStore;
use casework::store::{Error, Store};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

const CARD: &str = "4111111111111111";
const EMAIL: &str = "jane.doe.sealed@example.com";
const OTP: &str = "918273";
const TOKEN: &str = "tok_live_Zq8YxWv3";
const EVENT_ID: &str = "evt-otp-for-jane-doe";

const WORKFLOW: &str = r#"
workflow: verify
version: 1
input:
  card: { type: string, sensitive: true, required: true }
  email: { type: string, sensitive: true, required: true }
search:
  customer: input.email
  code: vars.otp.data.code
steps:
  - id: charge
    call: payments.charge
    with: { card: "${input.card}" }
    save_as: charge
    next: otp
  - id: otp
    wait: { event: otp_entered, key: input.email }
    save_as: otp
    next: done
  - id: done
    complete: { output: { code: "${vars.otp.data.code}", token: "${vars.charge.token}" } }
"#;

/// A payments fake whose answer holds secrets too (a token and the card it was given).
struct Payments;

impl PluginHost for Payments {
    fn call<'a>(
        &'a self,
        _plugin: &'a str,
        _action: &'a str,
        input: Value,
        _ctx: CallContext,
    ) -> CallFuture<'a> {
        Box::pin(async move { Ok(json!({"token": TOKEN, "card": input["card"]})) })
    }
}

const START: i64 = 1_767_225_600_000;

fn driver(store: SledStore) -> Driver {
    let d = Driver::new(
        Arc::new(store),
        Arc::new(Payments),
        Arc::new(ManualClock::new(START)),
        None,
    );
    let (wf, diags) = compile::load(
        "verify.yaml",
        WORKFLOW,
        &Default::default(),
        &Rules::shared(),
    );
    d.install(wf.unwrap_or_else(|| panic!("{diags:#?}")))
        .unwrap();
    d
}

/// Run `f` on its own runtime, so every task (and with them the store) is gone afterwards.
/// Opens the store again after the previous life's driver was dropped. sled gives up its
/// directory lock when its last handle is gone, which its own background flush thread may
/// still hold for a moment after the runtime that ran the driver has stopped.
fn reopen(data: &Path) -> SledStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open(data) {
            Err(casework::store::Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other.unwrap(),
        }
    }
}

fn with_runtime<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Every occurrence of each needle in the raw bytes of every file under `dir`.
fn found_on_disk(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut paths = Vec::new();
    files(dir, &mut paths);
    assert!(!paths.is_empty());
    let mut hits = Vec::new();
    for p in paths {
        let bytes = std::fs::read(&p).unwrap();
        for n in needles {
            if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                hits.push(format!("{n} in {}", p.display()));
            }
        }
    }
    hits
}

#[test]
fn secrets_never_reach_the_data_directory_in_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    // First life: start, run the call, park on the wait; the process then stops.
    let id = with_runtime(async {
        let d = driver(SledStore::open(&data).unwrap());
        let id = d
            .start(
                "verify",
                json!({"card": CARD, "email": EMAIL}),
                Some(format!("idem-{EMAIL}")),
            )
            .await
            .unwrap()
            .id;
        d.wait_idle().await;
        let inst = d.snapshot(&id).unwrap();
        assert!(inst.is_parked(), "{:?}", inst.status());
        id
    });

    // Second life: the event resumes the parked instance from its sealed journal.
    with_runtime(async {
        let d = driver(reopen(&data));
        d.resume_all().unwrap();
        let woken = d
            .deliver(Event {
                event_type: "otp_entered".into(),
                key: EMAIL.into(),
                data: json!({"code": OTP}),
                id: Some(EVENT_ID.into()),
            })
            .await
            .unwrap();
        assert_eq!(woken, vec![id.clone()]);
        let d2 = d.clone();
        let id2 = id.clone();
        d.run_virtual(move || d2.snapshot(&id2).is_some_and(|i| i.status().is_final()))
            .await
            .unwrap();
        let inst = d.snapshot(&id).unwrap();
        assert_eq!(inst.status(), Status::Completed);
        assert_eq!(inst.output(), Some(&json!({"code": OTP, "token": TOKEN})));
        // A repeated event id is answered from the (sealed) dedup entry.
        let again = d
            .deliver(Event {
                event_type: "otp_entered".into(),
                key: EMAIL.into(),
                data: json!({"code": "000000"}),
                id: Some(EVENT_ID.into()),
            })
            .await
            .unwrap();
        assert_eq!(again, vec![id.clone()]);
    });

    // The raw files: the instance id is there in clear (the scan does see stored bytes),
    // no secret is.
    let control = found_on_disk(&data, &[&id]);
    assert!(
        !control.is_empty(),
        "the scan found nothing at all: is anything stored?"
    );
    let hits = found_on_disk(&data, &[CARD, EMAIL, OTP, TOKEN, EVENT_ID, "jane.doe"]);
    assert!(hits.is_empty(), "plaintext on disk: {hits:?}");

    // The journal still reads back in full with the key.
    let store = reopen(&data);
    // Search attributes are indexed by keyed hashes of their values, found by the value.
    for (attribute, value) in [("customer", EMAIL), ("code", OTP)] {
        let found = store
            .search(
                "verify",
                attribute,
                &store.search_id(attribute, value),
                None,
                10,
            )
            .unwrap();
        assert_eq!(found, vec![id.clone()], "{attribute}");
    }
    let journal = serde_json::to_string(&store.journal(&id).unwrap()).unwrap();
    for secret in [CARD, EMAIL, OTP, TOKEN] {
        assert!(
            journal.contains(secret),
            "{secret} missing from the journal"
        );
    }
    drop(store);

    // `casework inspect` opens the store with the same key source, and redacts.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_casework"))
        .args(["inspect", &id, "--json", "--data"])
        .arg(&data)
        .env_remove("CASEWORK_JOURNAL_KEY")
        .env_remove("CASEWORK_JOURNAL_KEY_FILE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(view["status"], "completed");
    assert!(!stdout.contains(CARD), "inspect printed the card: {stdout}");

    // The key in the environment works the same as the file, and wins over it.
    let key = JournalKey::from_file(&data.join("journal.key")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_casework"))
        .args(["inspect", &id, "--json", "--data"])
        .arg(&data)
        .env("CASEWORK_JOURNAL_KEY", key.to_hex())
        .env_remove("CASEWORK_JOURNAL_KEY_FILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_wrong_key_is_a_clear_error_not_garbage() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let right = JournalKey::random().unwrap();
    with_runtime(async {
        let d = driver(SledStore::open_with(&data, KeySource::Explicit(right.clone())).unwrap());
        d.start("verify", json!({"card": CARD, "email": EMAIL}), None)
            .await
            .unwrap();
        d.wait_idle().await;
    });
    let wrong = JournalKey::random().unwrap();
    match SledStore::open_with(&data, KeySource::Explicit(wrong.clone())) {
        Err(e @ Error::WrongKey { .. }) => assert!(
            e.to_string()
                .contains("journal key does not match this data directory"),
            "{e}"
        ),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a wrong key opened the store"),
    }
    // Without the key (no key file was ever made for an explicit key): a clear error too.
    let err = SledStore::open(&data).err().expect("no key must not open");
    assert!(
        err.to_string().contains("no journal key was given"),
        "{err}"
    );
    // Through the command line: a non-zero exit with the message, never a panic or a secret.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_casework"))
        .args(["inspect", "whatever", "--data"])
        .arg(&data)
        .env("CASEWORK_JOURNAL_KEY", wrong.to_hex())
        .env_remove("CASEWORK_JOURNAL_KEY_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("journal key does not match this data directory"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains(&wrong.to_hex()), "{stderr}");
    // The right key still opens it.
    assert!(SledStore::open_with(&data, KeySource::Explicit(right)).is_ok());
}
