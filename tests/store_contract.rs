//! One contract suite for every `Store`: the same test functions run against
//! `MemoryStore`, `SledStore::temporary()` and `PgStore` (a fresh database per test on the
//! server `CASEWORK_TEST_POSTGRES` names; start it with `bash tests/postgres.sh`). If that
//! server cannot be reached the PostgreSQL tests fail, saying so: they never skip.
//!
//! Writes are followed by `flush`, as the driver does (for sled and memory a write is
//! durable only after it; for PostgreSQL it is a no-op).

use casework::runtime::Event;
use casework::runtime::Record;
use casework::store::memory::MemoryStore;
use casework::store::postgres::PgStore;
use casework::store::seal::{JournalKey, KeySource};
use casework::store::sled::SledStore;
use casework::store::{
    Batch, CalendarVersion, Claim, Created, Error, Fence, InboxBounds, Inboxed, InstanceMeta, Mail,
    Ownership, Searched, Stamp, Store, StoredDefinition, Timer, Wait,
};
use serde_json::json;
use std::sync::{Arc, Barrier};
use support::postgres::TestDb;

mod support {
    pub mod postgres;
}

fn key() -> (JournalKey, KeySource) {
    let k = JournalKey::random().expect("a random key");
    (k.clone(), KeySource::Explicit(k))
}

/// A store under test, and what must live as long as it (the test database).
struct Fixture {
    store: Arc<dyn Store>,
    db: Option<TestDb>,
}

impl std::ops::Deref for Fixture {
    type Target = dyn Store;
    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

fn memory() -> Fixture {
    Fixture {
        store: Arc::new(MemoryStore::new()),
        db: None,
    }
}

fn sled() -> Fixture {
    Fixture {
        store: Arc::new(SledStore::temporary().expect("a temporary sled store")),
        db: None,
    }
}

fn postgres() -> Fixture {
    let db = TestDb::new();
    let store = PgStore::open(db.url(), key().1).expect("open the PostgreSQL store");
    Fixture {
        store: Arc::new(store),
        db: Some(db),
    }
}

fn meta(id: &str, status: &str) -> InstanceMeta {
    InstanceMeta {
        id: id.into(),
        workflow: "refund".into(),
        version: 3,
        hash: "h1".into(),
        status: status.into(),
        created_at: 10,
        updated_at: 20,
        parent: None,
        search: Default::default(),
    }
}

fn rec(reason: &str, at: i64) -> Record {
    Record::Cancelled {
        reason: reason.into(),
        at,
    }
}

fn timer(at: i64, instance: &str, frame: u32) -> Timer {
    Timer {
        at,
        instance: instance.into(),
        frame,
    }
}

fn wait(key: &str, instance: &str, frame: u32) -> Wait {
    Wait {
        event_type: "approved".into(),
        key: key.into(),
        instance: instance.into(),
        frame,
    }
}

fn claim(key: &str) -> Claim {
    Claim::idempotency("refund", key)
}

fn first(id: &str, status: &str) -> Batch {
    Batch {
        instance: id.into(),
        records: vec![rec("first", 1)],
        meta: Some(meta(id, status)),
        ..Batch::default()
    }
}

/// Create `id` owned by `daemon`, returning its fence.
fn create(s: &Fixture, id: &str, status: &str, daemon: &str) -> Fence {
    match s.create(&first(id, status), &[], daemon).unwrap() {
        Created::New(f) => {
            s.flush().unwrap();
            assert_eq!(f.daemon, daemon);
            f
        }
        other => panic!("{id} was not created: {other:?}"),
    }
}

fn write(s: &Fixture, b: Batch) {
    s.write(&b).unwrap();
    s.flush().unwrap();
}

fn ids(v: Vec<InstanceMeta>) -> Vec<String> {
    v.into_iter().map(|m| m.id).collect()
}

// ---- the contract ----

fn journal_order_and_reads(s: &Fixture) {
    let f = create(s, "i1", "running", "d1");
    write(
        s,
        Batch {
            instance: "i1".into(),
            first_seq: 1,
            records: vec![rec("two", 2), rec("three", 3)],
            meta: Some(InstanceMeta {
                updated_at: 30,
                ..meta("i1", "parked")
            }),
            fence: Some(f.clone()),
            ..Batch::default()
        },
    );
    write(
        s,
        Batch {
            instance: "i1".into(),
            first_seq: 3,
            records: vec![rec("four", 4)],
            fence: Some(f),
            ..Batch::default()
        },
    );
    assert_eq!(
        s.journal("i1").unwrap(),
        vec![
            rec("first", 1),
            rec("two", 2),
            rec("three", 3),
            rec("four", 4)
        ]
    );
    assert_eq!(s.journal("i").unwrap(), vec![], "no prefix match");
    assert_eq!(s.journal("nope").unwrap(), vec![]);
    let m = s.instance("i1").unwrap().unwrap();
    assert_eq!(
        m,
        InstanceMeta {
            updated_at: 30,
            ..meta("i1", "parked")
        }
    );
    assert_eq!(s.instance("nope").unwrap(), None);
    // A parent survives the round trip.
    let child = InstanceMeta {
        parent: Some("i1".into()),
        ..meta("c1", "running")
    };
    write(
        s,
        Batch {
            instance: "c1".into(),
            meta: Some(child.clone()),
            ..Batch::default()
        },
    );
    assert_eq!(s.instance("c1").unwrap(), Some(child));
}

fn instances_page_in_id_order(s: &Fixture) {
    for id in ["0b", "0d", "0a", "0c", "0e"] {
        write(
            s,
            Batch {
                instance: id.into(),
                meta: Some(meta(id, "completed")),
                ..Batch::default()
            },
        );
    }
    assert_eq!(ids(s.instances(None, 2).unwrap()), ["0a", "0b"]);
    assert_eq!(ids(s.instances(Some("0b"), 2).unwrap()), ["0c", "0d"]);
    assert_eq!(ids(s.instances(Some("0d"), 10).unwrap()), ["0e"]);
    assert!(s.instances(Some("0e"), 10).unwrap().is_empty());
    assert_eq!(ids(s.instances(Some("0"), 1).unwrap()), ["0a"]);
    assert!(s.instances(None, 0).unwrap().is_empty());
}

fn runnable_lists_running_and_compensating(s: &Fixture) {
    for (id, status) in [
        ("a", "running"),
        ("b", "parked"),
        ("c", "completed"),
        ("d", "compensating"),
        ("e", "failed"),
        ("f", "cancelled"),
    ] {
        write(
            s,
            Batch {
                instance: id.into(),
                meta: Some(meta(id, status)),
                ..Batch::default()
            },
        );
    }
    assert_eq!(ids(s.runnable().unwrap()), ["a", "d"]);
}

fn definitions_round_trip(s: &Fixture) {
    let def = StoredDefinition {
        name: "refund".into(),
        version: 2,
        file: "workflows/refund.yaml".into(),
        source: "workflow: refund\n".into(),
    };
    assert_eq!(s.definition("h").unwrap(), None);
    s.put_definition("h", &def).unwrap();
    s.flush().unwrap();
    assert_eq!(s.definition("h").unwrap(), Some(def.clone()));
    let newer = StoredDefinition { version: 3, ..def };
    s.put_definition("h", &newer).unwrap();
    s.flush().unwrap();
    assert_eq!(s.definition("h").unwrap(), Some(newer.clone()));
    // Every version pinned, each once, for checking `migrate:` rules against.
    let other = StoredDefinition {
        name: "escalation".into(),
        ..newer.clone()
    };
    s.put_definition("g", &other).unwrap();
    s.flush().unwrap();
    let mut all = s.definitions().unwrap();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        all,
        vec![("g".to_string(), other), ("h".to_string(), newer)]
    );
}

fn calendar(version: &str, from: i64) -> CalendarVersion {
    CalendarVersion {
        name: "support-hours".into(),
        version: version.into(),
        from,
        source: format!("calendar: support-hours # {version}\n"),
    }
}

fn calendar_versions_are_kept_in_order(s: &Fixture) {
    let first = s.add_calendar_version(&calendar("a", 100)).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].from,
        i64::MIN,
        "the first version counts for all time"
    );
    assert_eq!(
        s.add_calendar_version(&calendar("a", 200)).unwrap(),
        first,
        "loading the newest version again adds nothing"
    );
    let two = s.add_calendar_version(&calendar("b", 300)).unwrap();
    assert_eq!(
        two.iter()
            .map(|v| (v.version.as_str(), v.from))
            .collect::<Vec<_>>(),
        [("a", i64::MIN), ("b", 300)]
    );
    assert_eq!(two[1].source, "calendar: support-hours # b\n");
    // Back to the first version is an edit too, and never in effect before the last one.
    let three = s.add_calendar_version(&calendar("a", 250)).unwrap();
    assert_eq!(three.len(), 3);
    assert_eq!(three[2].from, 300);
    // Another calendar has its own history.
    let other = CalendarVersion {
        name: "emea".into(),
        ..calendar("x", 1)
    };
    assert_eq!(s.add_calendar_version(&other).unwrap().len(), 1);
    assert_eq!(s.add_calendar_version(&calendar("a", 400)).unwrap(), three);
}

/// Daemons loading at once: each version is recorded once, in one order all of them see.
fn racing_calendar_loads_record_each_version_once(s: &Fixture) {
    let store = s.store.clone();
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                // Two daemons per version: four versions, each loaded twice at once.
                let v = calendar(&format!("v{}", i % 4), 1_000 + i);
                store.add_calendar_version(&v).unwrap()
            })
        })
        .collect();
    let answers: Vec<Vec<CalendarVersion>> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let last = store.add_calendar_version(&calendar("end", 5_000)).unwrap();
    let history = &last[..last.len() - 1];
    assert!(
        (4..=8).contains(&history.len()),
        "{history:?}: each racer adds its version unless it is the newest already"
    );
    for w in history.windows(2) {
        assert_ne!(w[0].version, w[1].version, "{history:?}");
        assert!(w[0].from <= w[1].from, "{history:?}");
    }
    for answer in &answers {
        assert!(
            history.starts_with(answer),
            "every racer's answer is a prefix of the one history: {answer:?} of {history:?}"
        );
    }
}

fn searched(s: &Fixture, attribute: &str, value: &str, instance: &str) -> Searched {
    Searched {
        workflow: "escalation".into(),
        attribute: attribute.into(),
        id: s.search_id(attribute, value),
        instance: instance.into(),
    }
}

fn search_entries_are_found_by_value_in_id_order(s: &Fixture) {
    // Ids are keyed hashes: stable, distinct per attribute and value, and not the value.
    assert_eq!(
        s.search_id("ticket_id", "T-1"),
        s.search_id("ticket_id", "T-1")
    );
    assert_ne!(
        s.search_id("ticket_id", "T-1"),
        s.search_id("ticket_id", "T-2")
    );
    assert_ne!(
        s.search_id("ticket_id", "T-1"),
        s.search_id("customer_id", "T-1")
    );
    assert!(!s.search_id("ticket_id", "T-1").contains("T-1"));
    let mut fences = Vec::new();
    for (id, ticket) in [("i3", "T-1"), ("i1", "T-1"), ("i2", "T-2"), ("i4", "T-1")] {
        let f = create(s, id, "parked", "d1");
        write(
            s,
            Batch {
                instance: id.into(),
                search_add: vec![searched(s, "ticket_id", ticket, id)],
                meta: Some(InstanceMeta {
                    search: [("ticket_id".to_string(), s.search_id("ticket_id", ticket))].into(),
                    ..meta(id, "parked")
                }),
                fence: Some(f.clone()),
                ..Batch::default()
            },
        );
        fences.push(f);
    }
    let t1 = s.search_id("ticket_id", "T-1");
    let find = |after: Option<&str>, limit| {
        s.search("escalation", "ticket_id", &t1, after, limit)
            .unwrap()
    };
    assert_eq!(find(None, 10), ["i1", "i3", "i4"]);
    assert_eq!(find(None, 2), ["i1", "i3"]);
    assert_eq!(find(Some("i3"), 10), ["i4"]);
    assert_eq!(find(Some("i4"), 10), Vec::<String>::new());
    assert!(
        s.search("refund", "ticket_id", &t1, None, 10)
            .unwrap()
            .is_empty(),
        "per workflow"
    );
    assert!(
        s.search("escalation", "customer_id", &t1, None, 10)
            .unwrap()
            .is_empty(),
        "per attribute"
    );
    assert_eq!(
        s.instance("i1").unwrap().unwrap().search.get("ticket_id"),
        Some(&t1),
        "the instance entry keeps its attributes' ids"
    );
    // A changed value moves the entry.
    write(
        s,
        Batch {
            instance: "i3".into(),
            search_add: vec![searched(s, "ticket_id", "T-2", "i3")],
            search_remove: vec![searched(s, "ticket_id", "T-1", "i3")],
            fence: Some(fences[0].clone()),
            ..Batch::default()
        },
    );
    assert_eq!(find(None, 10), ["i1", "i4"]);
    let t2 = s.search_id("ticket_id", "T-2");
    assert_eq!(
        s.search("escalation", "ticket_id", &t2, None, 10).unwrap(),
        ["i2", "i3"]
    );
}

fn timers_come_due_in_order(s: &Fixture) {
    assert_eq!(s.next_timer().unwrap(), None);
    write(
        s,
        Batch {
            instance: "x".into(),
            timers_add: vec![
                timer(300, "c", 1),
                timer(-5, "a", 1),
                timer(100, "b", 2),
                timer(100, "b", 1),
                timer(100, "a", 9),
            ],
            ..Batch::default()
        },
    );
    assert_eq!(s.next_timer().unwrap(), Some(-5));
    assert_eq!(
        s.due_timers(200, 10).unwrap(),
        vec![
            timer(-5, "a", 1),
            timer(100, "a", 9),
            timer(100, "b", 1),
            timer(100, "b", 2)
        ]
    );
    assert_eq!(s.due_timers(200, 1).unwrap(), vec![timer(-5, "a", 1)]);
    assert_eq!(s.due_timers(-6, 10).unwrap(), vec![]);
    assert_eq!(s.due_timers(-5, 10).unwrap(), vec![timer(-5, "a", 1)]);
    // Adding a timer twice keeps one.
    write(
        s,
        Batch {
            instance: "x".into(),
            timers_add: vec![timer(-5, "a", 1)],
            timers_remove: vec![timer(100, "a", 9)],
            ..Batch::default()
        },
    );
    assert_eq!(s.due_timers(100, 10).unwrap().len(), 3);
    write(
        s,
        Batch {
            instance: "x".into(),
            timers_remove: vec![timer(-5, "a", 1), timer(100, "b", 1), timer(100, "b", 2)],
            ..Batch::default()
        },
    );
    assert_eq!(s.next_timer().unwrap(), Some(300));
    assert_eq!(s.due_timers(1000, 10).unwrap(), vec![timer(300, "c", 1)]);
}

fn waits_are_found_by_type_and_key(s: &Fixture) {
    write(
        s,
        Batch {
            instance: "x".into(),
            waits_add: vec![
                wait("jane@example.com", "b", 1),
                wait("jane@example.com", "a", 2),
                wait("jane@example.com", "a", 1),
                wait("john@example.com", "c", 1),
            ],
            ..Batch::default()
        },
    );
    assert_eq!(
        s.waiters("approved", "jane@example.com").unwrap(),
        vec![
            wait("jane@example.com", "a", 1),
            wait("jane@example.com", "a", 2),
            wait("jane@example.com", "b", 1)
        ]
    );
    assert_eq!(
        s.waiters("approved", "john@example.com").unwrap(),
        vec![wait("john@example.com", "c", 1)]
    );
    assert!(s
        .waiters("rejected", "jane@example.com")
        .unwrap()
        .is_empty());
    assert!(s.waiters("approved", "jane").unwrap().is_empty());
    write(
        s,
        Batch {
            instance: "x".into(),
            waits_remove: vec![wait("jane@example.com", "a", 2)],
            ..Batch::default()
        },
    );
    assert_eq!(s.waiters("approved", "jane@example.com").unwrap().len(), 2);
}

fn event_answers_are_kept(s: &Fixture) {
    assert_eq!(s.event_answer("evt-1").unwrap(), None);
    s.put_event_answer("evt-1", &json!({"started": ["i1"]}))
        .unwrap();
    s.flush().unwrap();
    assert_eq!(
        s.event_answer("evt-1").unwrap(),
        Some(json!({"started": ["i1"]}))
    );
    assert_eq!(s.event_answer("evt-2").unwrap(), None);
    s.put_event_answer("evt-1", &json!(null)).unwrap();
    s.flush().unwrap();
    assert_eq!(s.event_answer("evt-1").unwrap(), Some(json!(null)));
}

/// What a windowed trigger counts with: racing read-modify-writes of one slot each take
/// effect once, none lost, and what each saw is what it wrote over.
fn racing_updates_of_an_event_answer_each_count_once(s: &Fixture) {
    const THREADS: usize = 8;
    const EACH: usize = 25;
    let first = s
        .update_event_answer("slot", &mut |old| {
            assert_eq!(old, None, "an unwritten slot is empty");
            json!(0)
        })
        .unwrap();
    assert_eq!(first, json!(0));
    let barrier = Barrier::new(THREADS);
    let seen: Vec<i64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    (0..EACH)
                        .map(|_| {
                            let next = s
                                .update_event_answer("slot", &mut |old| {
                                    json!(old.and_then(|v| v.as_i64()).unwrap_or(-1000) + 1)
                                })
                                .unwrap();
                            next.as_i64().unwrap()
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
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    let expected: Vec<i64> = (1..=(THREADS * EACH) as i64).collect();
    assert_eq!(sorted, expected, "every update took effect once");
    assert_eq!(
        s.event_answer("slot").unwrap(),
        Some(json!((THREADS * EACH) as i64))
    );
    assert_eq!(s.event_answer("other").unwrap(), None);
}

fn create_new_existing_and_key_held(s: &Fixture) {
    let b = Batch {
        timers_add: vec![timer(50, "c1", 0)],
        waits_add: vec![wait("k", "c1", 0)],
        ..first("c1", "parked")
    };
    let Created::New(f) = s.create(&b, &[claim("key-1")], "d1").unwrap() else {
        panic!("a new instance")
    };
    s.flush().unwrap();
    assert_eq!(f.daemon, "d1");
    assert_eq!(s.instance("c1").unwrap(), Some(meta("c1", "parked")));
    assert_eq!(s.journal("c1").unwrap(), vec![rec("first", 1)]);
    assert_eq!(s.due_timers(50, 10).unwrap(), vec![timer(50, "c1", 0)]);
    assert_eq!(
        s.waiters("approved", "k").unwrap(),
        vec![wait("k", "c1", 0)]
    );
    assert_eq!(s.key_holder("refund", "key-1").unwrap(), Some("c1".into()));
    assert_eq!(s.key_holder("refund", "key-2").unwrap(), None);
    assert_eq!(s.key_holder("other", "key-1").unwrap(), None);
    // The same instance again: nothing written.
    let again = Batch {
        records: vec![rec("again", 9)],
        ..first("c1", "running")
    };
    assert_eq!(
        s.create(&again, &[], "d2").unwrap(),
        Created::Existing("c1".into())
    );
    assert_eq!(s.journal("c1").unwrap(), vec![rec("first", 1)]);
    assert_eq!(s.instance("c1").unwrap().unwrap().status, "parked");
    // Another instance with the held key: nothing written, the holder named.
    let loser = Batch {
        timers_add: vec![timer(60, "c2", 0)],
        ..first("c2", "running")
    };
    assert_eq!(
        s.create(&loser, &[claim("key-1")], "d2").unwrap(),
        Created::Existing("c1".into())
    );
    s.flush().unwrap();
    assert_eq!(s.instance("c2").unwrap(), None);
    assert!(s.journal("c2").unwrap().is_empty());
    assert_eq!(s.next_timer().unwrap(), Some(50));
    assert_eq!(s.due_timers(100, 10).unwrap().len(), 1);
    // The key of another workflow is another key.
    let other = Claim::idempotency("other", "key-1");
    assert!(matches!(
        s.create(&first("c3", "running"), &[other], "d2").unwrap(),
        Created::New(_)
    ));
    // Both creators own their instance, under different epochs.
    let Ownership::Mine(f1) = s.claim("c1", "d1", 0).unwrap() else {
        panic!("c1 is d1's")
    };
    assert_eq!(f1, f);
    let Ownership::Mine(f3) = s.claim("c3", "d2", 0).unwrap() else {
        panic!("c3 is d2's")
    };
    assert_ne!(f3.epoch, f.epoch);
}

fn concurrent_duplicate_creates_make_one_instance(s: &Fixture) {
    const N: usize = 16;
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let store = s.store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let id = format!("r{i:02}");
                barrier.wait();
                let out = store
                    .create(&first(&id, "running"), &[claim("dup")], &format!("d{i}"))
                    .unwrap();
                store.flush().unwrap();
                (id, out)
            })
        })
        .collect();
    let results: Vec<(String, Created)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<&String> = results
        .iter()
        .filter(|(_, c)| matches!(c, Created::New(_)))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one New: {results:?}");
    let winner = winners[0].clone();
    for (id, c) in &results {
        if *id != winner {
            assert_eq!(*c, Created::Existing(winner.clone()), "{id}");
            assert_eq!(s.instance(id).unwrap(), None, "{id} wrote nothing");
            assert!(s.journal(id).unwrap().is_empty(), "{id} wrote nothing");
        }
    }
    assert_eq!(s.key_holder("refund", "dup").unwrap(), Some(winner.clone()));
    assert_eq!(ids(s.instances(None, 100).unwrap()), [winner]);
}

/// Finish `id` as `status` (its index entry is what the stores look at).
fn finish(s: &Fixture, id: &str, fence: &Fence, status: &str) {
    write(
        s,
        Batch {
            instance: id.into(),
            first_seq: 1,
            records: vec![rec(status, 2)],
            meta: Some(meta(id, status)),
            fence: Some(fence.clone()),
            ..Batch::default()
        },
    );
}

fn an_open_claim_is_held_until_its_holder_finishes(s: &Fixture) {
    let open = |k: &str| Claim::open("refund", k);
    let Created::New(f1) = s
        .create(&first("o1", "running"), &[open("T-1")], "d1")
        .unwrap()
    else {
        panic!("o1 is new")
    };
    s.flush().unwrap();
    // While o1 is open (running, then parked or paused) the key is its.
    for status in ["running", "parked", "paused"] {
        if status != "running" {
            write(
                s,
                Batch {
                    instance: "o1".into(),
                    meta: Some(meta("o1", status)),
                    fence: Some(f1.clone()),
                    ..Batch::default()
                },
            );
        }
        assert_eq!(
            s.create(&first("o2", "running"), &[open("T-1")], "d2")
                .unwrap(),
            Created::Open("o1".into()),
            "while o1 is {status}"
        );
        assert_eq!(
            s.instance("o2").unwrap(),
            None,
            "the refused start wrote nothing"
        );
    }
    // The open scope and the idempotency scope are separate name spaces.
    assert_eq!(s.key_holder("refund", "T-1").unwrap(), None);
    assert!(matches!(
        s.create(&first("i1", "running"), &[claim("T-1")], "d2")
            .unwrap(),
        Created::New(_)
    ));
    // Another key, or the same key of another workflow, is free.
    assert!(matches!(
        s.create(&first("o3", "running"), &[open("T-2")], "d2")
            .unwrap(),
        Created::New(_)
    ));
    assert!(matches!(
        s.create(
            &first("o4", "running"),
            &[Claim::open("other", "T-1")],
            "d2"
        )
        .unwrap(),
        Created::New(_)
    ));
    // An idempotency key held is named first; a refused start takes neither claim.
    assert_eq!(
        s.create(&first("o5", "running"), &[claim("T-1"), open("T-9")], "d2")
            .unwrap(),
        Created::Existing("i1".into())
    );
    assert_eq!(
        s.create(&first("o5", "running"), &[claim("K-5"), open("T-1")], "d2")
            .unwrap(),
        Created::Open("o1".into())
    );
    assert_eq!(
        s.key_holder("refund", "K-5").unwrap(),
        None,
        "K-5 was not taken"
    );
    // Once o1 has finished, the next start takes the key over, and holds it.
    finish(s, "o1", &f1, "completed");
    let Created::New(_) = s
        .create(&first("o6", "running"), &[claim("K-6"), open("T-1")], "d2")
        .unwrap()
    else {
        panic!("T-1 is free once o1 completed")
    };
    s.flush().unwrap();
    assert_eq!(s.key_holder("refund", "K-6").unwrap(), Some("o6".into()));
    assert_eq!(
        s.create(&first("o7", "running"), &[open("T-1")], "d1")
            .unwrap(),
        Created::Open("o6".into())
    );
    // Failed and cancelled are finished too.
    for (i, status) in ["failed", "cancelled"].into_iter().enumerate() {
        let holder = if i == 0 { "o6" } else { "o8" };
        let f = s.claim(holder, "d2", 0).unwrap();
        let Ownership::Mine(f) = f else {
            panic!("{holder} is d2's: {f:?}")
        };
        finish(s, holder, &f, status);
        let next = if i == 0 { "o8" } else { "o9" };
        assert!(
            matches!(
                s.create(&first(next, "running"), &[open("T-1")], "d2")
                    .unwrap(),
                Created::New(_)
            ),
            "T-1 is free once {holder} is {status}"
        );
        s.flush().unwrap();
    }
}

fn concurrent_starts_for_one_open_key_make_one_instance(s: &Fixture) {
    const N: usize = 16;
    // Twice: first with the key never used, then after its holder has finished.
    let mut previous: Option<(String, Fence)> = None;
    for round in 0..2 {
        if let Some((id, fence)) = &previous {
            finish(s, id, fence, "completed");
        }
        let barrier = Arc::new(Barrier::new(N));
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let store = s.store.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let id = format!("q{round}-{i:02}");
                    barrier.wait();
                    // Each start has its own idempotency key, as distinct requests do.
                    let claims = [
                        Claim::idempotency("refund", &id),
                        Claim::open("refund", "ticket-7"),
                    ];
                    let out = store
                        .create(&first(&id, "running"), &claims, &format!("d{i}"))
                        .unwrap();
                    store.flush().unwrap();
                    (id, out)
                })
            })
            .collect();
        let results: Vec<(String, Created)> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<(&String, &Fence)> = results
            .iter()
            .filter_map(|(id, c)| match c {
                Created::New(f) => Some((id, f)),
                _ => None,
            })
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: one New: {results:?}");
        let (winner, fence) = (winners[0].0.clone(), winners[0].1.clone());
        for (id, c) in &results {
            if *id != winner {
                assert_eq!(*c, Created::Open(winner.clone()), "{id}");
                assert_eq!(s.instance(id).unwrap(), None, "{id} wrote nothing");
                assert_eq!(
                    s.key_holder("refund", id).unwrap(),
                    None,
                    "{id} took no key"
                );
            }
        }
        previous = Some((winner, fence));
    }
}

/// A failed instance's retry, as the driver writes it: running again, its key taken back.
fn reopened(id: &str, fence: &Fence) -> Batch {
    Batch {
        instance: id.into(),
        first_seq: 2,
        records: vec![rec("retry", 3)],
        meta: Some(meta(id, "running")),
        fence: Some(fence.clone()),
        ..Batch::default()
    }
}

fn a_reopen_takes_its_key_back_unless_another_holds_it_open(s: &Fixture) {
    let open = |k: &str| Claim::open("refund", k);
    let Created::New(f1) = s
        .create(&first("r1", "running"), &[open("T-1")], "d1")
        .unwrap()
    else {
        panic!("r1 is new")
    };
    s.flush().unwrap();
    // Still its own key (nobody took it after it failed): taken back, written.
    finish(s, "r1", &f1, "failed");
    assert_eq!(
        s.reopen(&reopened("r1", &f1), &[open("T-1")]).unwrap(),
        None
    );
    s.flush().unwrap();
    assert_eq!(s.instance("r1").unwrap().unwrap().status, "running");
    assert_eq!(s.journal("r1").unwrap().len(), 3);
    assert_eq!(
        s.create(&first("r2", "running"), &[open("T-1")], "d2")
            .unwrap(),
        Created::Open("r1".into()),
        "the reopened instance holds its key"
    );
    // Failed again, and another start took the key: a reopen writes nothing, names it.
    let f1 = {
        let b = Batch {
            instance: "r1".into(),
            first_seq: 3,
            records: vec![rec("failed", 4)],
            meta: Some(meta("r1", "failed")),
            fence: Some(f1.clone()),
            ..Batch::default()
        };
        write(s, b);
        f1
    };
    let Created::New(f2) = s
        .create(&first("r2", "running"), &[open("T-1")], "d2")
        .unwrap()
    else {
        panic!("T-1 is free once r1 failed")
    };
    s.flush().unwrap();
    let mut again = reopened("r1", &f1);
    again.first_seq = 4;
    assert_eq!(s.reopen(&again, &[open("T-1")]).unwrap(), Some("r2".into()));
    assert_eq!(s.instance("r1").unwrap().unwrap().status, "failed");
    assert_eq!(s.journal("r1").unwrap().len(), 4, "nothing was written");
    // Once that one has finished, the reopen takes the key over.
    finish(s, "r2", &f2, "completed");
    assert_eq!(s.reopen(&again, &[open("T-1")]).unwrap(), None);
    s.flush().unwrap();
    assert_eq!(
        s.create(&first("r3", "running"), &[open("T-1")], "d2")
            .unwrap(),
        Created::Open("r1".into())
    );
    // A reopen is a fenced write: a stale fence writes nothing, takes no key.
    let stale = Fence {
        daemon: "d1".into(),
        epoch: f1.epoch + 100,
    };
    let mut fenced = reopened("r1", &stale);
    fenced.first_seq = 5;
    assert!(matches!(
        s.reopen(&fenced, &[open("T-5")]),
        Err(casework::store::Error::Fenced { .. })
    ));
    assert!(matches!(
        s.create(&first("r4", "running"), &[open("T-5")], "d2")
            .unwrap(),
        Created::New(_)
    ));
}

fn a_reopen_racing_creates_for_its_key_leaves_one_open(s: &Fixture) {
    const N: usize = 8;
    for round in 0..6 {
        let failed = format!("f{round}");
        let key = format!("race-{round}");
        let Created::New(fence) = s
            .create(
                &first(&failed, "running"),
                &[Claim::open("refund", &key)],
                "d0",
            )
            .unwrap()
        else {
            panic!("{failed} is new")
        };
        s.flush().unwrap();
        finish(s, &failed, &fence, "failed");
        let barrier = Arc::new(Barrier::new(N));
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let (store, barrier) = (s.store.clone(), barrier.clone());
                let (failed, key, fence) = (failed.clone(), key.clone(), fence.clone());
                std::thread::spawn(move || {
                    let claims = [Claim::open("refund", &key)];
                    barrier.wait();
                    let out = if i == 0 {
                        match store.reopen(&reopened(&failed, &fence), &claims).unwrap() {
                            None => Created::New(fence),
                            Some(holder) => Created::Open(holder),
                        }
                    } else {
                        let id = format!("s{round}-{i}");
                        store.create(&first(&id, "running"), &claims, "d1").unwrap()
                    };
                    store.flush().unwrap();
                    out
                })
            })
            .collect();
        let results: Vec<Created> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let ids: Vec<String> = (0..N)
            .map(|i| {
                if i == 0 {
                    failed.clone()
                } else {
                    format!("s{round}-{i}")
                }
            })
            .collect();
        let open: Vec<&String> = ids
            .iter()
            .filter(|id| {
                s.instance(id)
                    .unwrap()
                    .is_some_and(|m| m.status == "running")
            })
            .collect();
        assert_eq!(open.len(), 1, "round {round}: one open: {results:?}");
        for (id, out) in ids.iter().zip(&results) {
            if id != open[0] {
                assert_eq!(*out, Created::Open(open[0].clone()), "{id}: {results:?}");
            }
        }
    }
}

fn a_key_with_places_holds_an_open_instance_at_each(s: &Fixture) {
    let at = |place: u32| Claim::open_at("refund", "T-4", place);
    let new =
        |id: &str, place: u32| match s.create(&first(id, "running"), &[at(place)], "d1").unwrap() {
            Created::New(f) => {
                s.flush().unwrap();
                f
            }
            other => panic!("{id} at place {place}: {other:?}"),
        };
    let fa = new("pa", 0);
    let fb = new("pb", 1);
    // Each place is claimed on its own: place 0's holder does not hold place 1.
    assert_eq!(
        s.create(&first("px", "running"), &[at(0)], "d1").unwrap(),
        Created::Open("pa".into())
    );
    assert_eq!(
        s.create(&first("px", "running"), &[at(1)], "d1").unwrap(),
        Created::Open("pb".into())
    );
    finish(s, "pa", &fa, "failed");
    finish(s, "pb", &fb, "failed");
    new("pc", 0);
    let places = [at(0), at(1)];
    // pb takes back the place it still holds, not the first one.
    assert_eq!(s.reopen(&reopened("pb", &fb), &places).unwrap(), None);
    s.flush().unwrap();
    assert_eq!(
        s.create(&first("px", "running"), &[at(1)], "d1").unwrap(),
        Created::Open("pb".into())
    );
    // Every place held open: the first place's holder is named, nothing written.
    assert_eq!(
        s.reopen(&reopened("pa", &fa), &places).unwrap(),
        Some("pc".into())
    );
    assert_eq!(s.instance("pa").unwrap().unwrap().status, "failed");
    // A place whose holder finished is taken.
    let Ownership::Mine(fc) = s.claim("pc", "d1", 0).unwrap() else {
        panic!("pc is d1's")
    };
    finish(s, "pc", &fc, "completed");
    assert_eq!(s.reopen(&reopened("pa", &fa), &places).unwrap(), None);
    s.flush().unwrap();
    assert_eq!(
        s.create(&first("px", "running"), &[at(0)], "d1").unwrap(),
        Created::Open("pa".into())
    );
}

fn a_stale_fence_is_refused_whole(s: &Fixture) {
    let f1 = create(s, "x", "running", "d1");
    s.heartbeat("d1", 100).unwrap();
    write(
        s,
        Batch {
            instance: "x".into(),
            first_seq: 1,
            records: vec![rec("by d1", 2)],
            fence: Some(f1.clone()),
            ..Batch::default()
        },
    );
    // d1 lapses at 100; d2 takes x over.
    let Ownership::Mine(f2) = s.claim("x", "d2", 100).unwrap() else {
        panic!("a lapsed owner's instance is claimed")
    };
    assert!(f2.epoch > f1.epoch);
    let stale = Batch {
        instance: "x".into(),
        first_seq: 2,
        records: vec![rec("stale", 3)],
        meta: Some(meta("x", "completed")),
        timers_add: vec![timer(5, "x", 1)],
        waits_add: vec![wait("k", "x", 1)],
        fence: Some(f1.clone()),
        ..Batch::default()
    };
    let err = s.write(&stale).unwrap_err();
    assert!(
        matches!(&err, Error::Fenced { instance, epoch } if instance == "x" && *epoch == f1.epoch),
        "{err:?}"
    );
    s.flush().unwrap();
    assert_eq!(
        s.journal("x").unwrap(),
        vec![rec("first", 1), rec("by d1", 2)]
    );
    assert_eq!(s.instance("x").unwrap().unwrap().status, "running");
    assert_eq!(s.next_timer().unwrap(), None);
    assert!(s.waiters("approved", "k").unwrap().is_empty());
    // d1 renewing its lease gives it back nothing.
    s.heartbeat("d1", 1000).unwrap();
    assert!(matches!(s.write(&stale), Err(Error::Fenced { .. })));
    // The new owner writes.
    write(
        s,
        Batch {
            fence: Some(f2),
            ..stale
        },
    );
    assert_eq!(s.journal("x").unwrap().len(), 3);
    assert_eq!(s.instance("x").unwrap().unwrap().status, "completed");
    // A fence for an instance nobody created is refused too.
    let ghost = Batch {
        instance: "ghost".into(),
        records: vec![rec("ghost", 1)],
        fence: Some(Fence {
            daemon: "d1".into(),
            epoch: 1,
        }),
        ..Batch::default()
    };
    assert!(matches!(s.write(&ghost), Err(Error::Fenced { .. })));
    assert!(s.journal("ghost").unwrap().is_empty());
}

fn claims_follow_heartbeats_and_epochs_grow(s: &Fixture) {
    assert_eq!(s.claim("nope", "d1", 0).unwrap(), Ownership::Unknown);
    let f1 = create(s, "x", "running", "d1");
    s.heartbeat("d1", 100).unwrap();
    s.heartbeat("d2", 100).unwrap();
    assert_eq!(s.claim("x", "d1", 10).unwrap(), Ownership::Mine(f1.clone()));
    assert_eq!(
        s.claim("x", "d2", 99).unwrap(),
        Ownership::Held {
            daemon: "d1".into()
        }
    );
    // A heartbeat never shortens a lease.
    s.heartbeat("d1", 200).unwrap();
    s.heartbeat("d1", 50).unwrap();
    assert_eq!(
        s.claim("x", "d2", 199).unwrap(),
        Ownership::Held {
            daemon: "d1".into()
        }
    );
    let Ownership::Mine(f2) = s.claim("x", "d2", 200).unwrap() else {
        panic!("d1 lapsed at 200")
    };
    assert_eq!(f2.daemon, "d2");
    assert!(f2.epoch > f1.epoch);
    assert_eq!(
        s.claim("x", "d2", 500).unwrap(),
        Ownership::Mine(f2.clone())
    );
    // d2 lapsed at 100 already: d1, alive again, takes it back with a newer epoch.
    s.heartbeat("d1", 1000).unwrap();
    let Ownership::Mine(f3) = s.claim("x", "d1", 300).unwrap() else {
        panic!("d2 lapsed")
    };
    assert!(f3.epoch > f2.epoch);
    // Released, then claimed again: a newer epoch still.
    assert!(s.release("x", &f3).unwrap());
    let Ownership::Mine(f4) = s.claim("x", "d1", 300).unwrap() else {
        panic!("a released instance is free")
    };
    assert!(f4.epoch > f3.epoch);
    // A daemon that never sent a heartbeat is not alive.
    let f5 = create(s, "y", "running", "d9");
    let Ownership::Mine(f6) = s.claim("y", "d1", 0).unwrap() else {
        panic!("d9 never sent a heartbeat")
    };
    assert!(f6.epoch > f5.epoch);
}

fn concurrent_claims_of_a_lapsed_instance_have_one_winner(s: &Fixture) {
    const N: usize = 8;
    let f0 = create(s, "x", "running", "d-old");
    s.heartbeat("d-old", 10).unwrap();
    for i in 0..N {
        s.heartbeat(&format!("d{i}"), 1000).unwrap();
    }
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let store = s.store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let daemon = format!("d{i}");
                barrier.wait();
                (daemon.clone(), store.claim("x", &daemon, 100).unwrap())
            })
        })
        .collect();
    let results: Vec<(String, Ownership)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<&Fence> = results
        .iter()
        .filter_map(|(_, o)| match o {
            Ownership::Mine(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = winners[0].clone();
    assert!(winner.epoch > f0.epoch);
    for (daemon, o) in &results {
        if *daemon != winner.daemon {
            assert_eq!(
                *o,
                Ownership::Held {
                    daemon: winner.daemon.clone()
                }
            );
        }
    }
    // Only the winner's fence writes.
    assert!(matches!(
        s.write(&Batch {
            instance: "x".into(),
            first_seq: 1,
            records: vec![rec("old", 2)],
            fence: Some(f0),
            ..Batch::default()
        }),
        Err(Error::Fenced { .. })
    ));
    write(
        s,
        Batch {
            instance: "x".into(),
            first_seq: 1,
            records: vec![rec("new", 2)],
            fence: Some(winner),
            ..Batch::default()
        },
    );
    assert_eq!(
        s.journal("x").unwrap(),
        vec![rec("first", 1), rec("new", 2)]
    );
}

fn release_is_refused_while_mail_waits(s: &Fixture) {
    let f1 = create(s, "x", "parked", "d1");
    s.heartbeat("d1", 1000).unwrap();
    s.post("x", &Mail::Retry).unwrap();
    s.flush().unwrap();
    assert!(!s.release("x", &f1).unwrap(), "mail waits");
    assert_eq!(
        s.claim("x", "d2", 10).unwrap(),
        Ownership::Held {
            daemon: "d1".into()
        },
        "the claim is kept"
    );
    let mail = s.mail("x", 10).unwrap();
    assert_eq!(mail.len(), 1);
    write(
        s,
        Batch {
            instance: "x".into(),
            first_seq: 1,
            records: vec![rec("handled", 2)],
            mail_done: vec![mail[0].0],
            fence: Some(f1.clone()),
            ..Batch::default()
        },
    );
    assert!(s.mail("x", 10).unwrap().is_empty());
    assert!(s.release("x", &f1).unwrap());
    // Released: anyone may claim it, and a stale release changes nothing.
    let Ownership::Mine(f2) = s.claim("x", "d2", 10).unwrap() else {
        panic!("released")
    };
    assert!(s.release("x", &f1).unwrap(), "nothing to give up");
    assert_eq!(s.claim("x", "d2", 10).unwrap(), Ownership::Mine(f2.clone()));
    // After a release the old fence writes nothing.
    assert!(s.release("x", &f2).unwrap());
    assert!(matches!(
        s.write(&Batch {
            instance: "x".into(),
            first_seq: 2,
            records: vec![rec("late", 3)],
            fence: Some(f2),
            ..Batch::default()
        }),
        Err(Error::Fenced { .. })
    ));
}

fn mail_comes_in_order_and_leaves_with_its_batch(s: &Fixture) {
    let f = create(s, "x", "running", "d1");
    let posted = [
        Mail::Cancel {
            reason: "one".into(),
        },
        Mail::Retry,
        Mail::ChildFinished {
            child: "c1".into(),
            result: Ok(json!({"ok": 1})),
        },
    ];
    s.post("x", &posted[0]).unwrap();
    s.post("y", &Mail::Retry).unwrap();
    s.post("x", &posted[1]).unwrap();
    s.post("x", &posted[2]).unwrap();
    s.flush().unwrap();
    let got = s.mail("x", 10).unwrap();
    assert_eq!(
        got.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
        posted.to_vec()
    );
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "{got:?}");
    assert_eq!(s.mail("x", 2).unwrap(), got[..2].to_vec());
    assert_eq!(s.mail("y", 10).unwrap().len(), 1);
    assert!(s.mail("z", 10).unwrap().is_empty());
    // Handled in a batch: gone with it; a refused batch removes nothing.
    let stale = Batch {
        instance: "x".into(),
        mail_done: vec![got[0].0, got[1].0],
        fence: Some(Fence {
            daemon: "d1".into(),
            epoch: f.epoch + 1000,
        }),
        ..Batch::default()
    };
    assert!(matches!(s.write(&stale), Err(Error::Fenced { .. })));
    assert_eq!(s.mail("x", 10).unwrap().len(), 3);
    write(
        s,
        Batch {
            fence: Some(f),
            ..stale
        },
    );
    assert_eq!(s.mail("x", 10).unwrap(), got[2..].to_vec());
    assert_eq!(
        s.mail("y", 10).unwrap().len(),
        1,
        "other instances' mail stays"
    );
}

fn orphans_are_runnable_instances_nobody_alive_owns(s: &Fixture) {
    s.heartbeat("alive", 1000).unwrap();
    s.heartbeat("dead", 50).unwrap();
    create(s, "a", "running", "alive");
    create(s, "b", "running", "dead");
    create(s, "c", "parked", "dead");
    let fe = create(s, "e", "compensating", "alive");
    assert!(s.release("e", &fe).unwrap());
    create(s, "f", "completed", "dead");
    // Written without ever being created or claimed: nobody owns it.
    write(
        s,
        Batch {
            instance: "d".into(),
            meta: Some(meta("d", "running")),
            ..Batch::default()
        },
    );
    assert_eq!(s.orphans(100, 10).unwrap(), ["b", "d", "e"]);
    assert_eq!(s.orphans(100, 2).unwrap(), ["b", "d"]);
    // Before "dead" lapsed it owned b.
    assert_eq!(s.orphans(10, 10).unwrap(), ["d", "e"]);
    // Once claimed by a live daemon, b is no orphan.
    assert!(matches!(
        s.claim("b", "alive", 100).unwrap(),
        Ownership::Mine(_)
    ));
    assert_eq!(s.orphans(100, 10).unwrap(), ["d", "e"]);
    assert_eq!(s.orphans(2000, 10).unwrap(), ["a", "b", "d", "e"]);
}

fn mailed_lists_own_and_orphaned_mail(s: &Fixture) {
    s.heartbeat("d1", 1000).unwrap();
    s.heartbeat("d2", 1000).unwrap();
    s.heartbeat("d3", 50).unwrap();
    create(s, "x", "parked", "d1");
    create(s, "y", "parked", "d2");
    create(s, "z", "parked", "d3");
    let fr = create(s, "r", "parked", "d2");
    assert!(s.release("r", &fr).unwrap());
    for i in ["z", "x", "y", "w", "x", "r"] {
        s.post(i, &Mail::Retry).unwrap();
    }
    s.flush().unwrap();
    // w has no instance: nobody owns it, so anyone finds its mail.
    assert_eq!(s.mailed("d1", 100, 10).unwrap(), ["r", "w", "x", "z"]);
    assert_eq!(s.mailed("d2", 100, 10).unwrap(), ["r", "w", "y", "z"]);
    assert_eq!(s.mailed("d1", 100, 2).unwrap(), ["r", "w"]);
    // Before d3 lapsed, z's mail was d3's alone.
    assert_eq!(s.mailed("d1", 10, 10).unwrap(), ["r", "w", "x"]);
    assert_eq!(s.mailed("d3", 10, 10).unwrap(), ["r", "w", "z"]);
    // At 2000 everyone has lapsed: all of it is orphaned.
    assert_eq!(s.mailed("d9", 2000, 10).unwrap(), ["r", "w", "x", "y", "z"]);
}

// ---- The inbox ----

const ROOMY: InboxBounds = InboxBounds {
    per_key: 100,
    total: 1000,
};

fn event(event_type: &str, key: &str, n: i64) -> Event {
    Event {
        event_type: event_type.into(),
        key: key.into(),
        data: json!({"n": n}),
        id: None,
    }
}

fn kept(out: Inboxed) -> u64 {
    match out {
        Inboxed::Kept(seq) => seq,
        full => panic!("expected the event kept, got {full:?}"),
    }
}

fn numbers(events: &[casework::store::Buffered]) -> Vec<i64> {
    events
        .iter()
        .map(|b| b.event.data["n"].as_i64().unwrap())
        .collect()
}

fn inbox_keeps_events_in_arrival_order_until_they_expire(s: &Fixture) {
    let a = kept(
        s.buffer(&event("approved", "ORD-1", 1), 100, 1_000, ROOMY)
            .unwrap(),
    );
    let b = kept(
        s.buffer(&event("approved", "ORD-2", 2), 110, 1_000, ROOMY)
            .unwrap(),
    );
    let c = kept(
        s.buffer(&event("approved", "ORD-1", 3), 120, 500, ROOMY)
            .unwrap(),
    );
    s.flush().unwrap();
    assert!(a < b && b < c, "numbers grow with arrival: {a} {b} {c}");
    assert_eq!(
        numbers(&s.buffered("approved", "ORD-1", 0, 10).unwrap()),
        [1, 3]
    );
    assert_eq!(
        numbers(&s.buffered("approved", "ORD-2", 0, 10).unwrap()),
        [2]
    );
    assert!(s.buffered("rejected", "ORD-1", 0, 10).unwrap().is_empty());
    assert_eq!(
        numbers(&s.buffered("approved", "ORD-1", 0, 1).unwrap()),
        [1]
    );
    // Past its time an event is no longer handed out, before and after it is dropped.
    assert_eq!(
        numbers(&s.buffered("approved", "ORD-1", 600, 10).unwrap()),
        [1]
    );
    let all = s.inbox(None, 10).unwrap();
    assert_eq!(numbers(&all), [1, 2, 3]);
    assert_eq!(
        all[0].stamp,
        Stamp {
            seq: a,
            arrived: 100,
            until: 1_000
        }
    );
    assert_eq!(numbers(&s.inbox(Some(a), 10).unwrap()), [2, 3]);
    assert_eq!(numbers(&s.inbox(None, 2).unwrap()), [1, 2]);
    // Expiry goes in arrival order and stops at the first event still alive.
    assert_eq!(s.expire(1_001, 10).unwrap(), 3);
    s.flush().unwrap();
    assert!(s.inbox(None, 10).unwrap().is_empty());
    assert!(s.buffered("approved", "ORD-1", 0, 10).unwrap().is_empty());
    let d = kept(
        s.buffer(&event("approved", "ORD-1", 4), 2_000, 3_000, ROOMY)
            .unwrap(),
    );
    assert_eq!(s.expire(2_500, 10).unwrap(), 0);
    assert!(s.purge(d).unwrap());
    assert!(!s.purge(d).unwrap(), "a second purge finds nothing");
    assert!(s.inbox(None, 10).unwrap().is_empty());
}

fn inbox_bounds_refuse_and_keep_nothing(s: &Fixture) {
    let tight = InboxBounds {
        per_key: 2,
        total: 3,
    };
    kept(s.buffer(&event("approved", "A", 1), 1, 100, tight).unwrap());
    kept(s.buffer(&event("approved", "A", 2), 2, 100, tight).unwrap());
    assert_eq!(
        s.buffer(&event("approved", "A", 3), 3, 100, tight).unwrap(),
        Inboxed::Full {
            per_key: true,
            limit: 2
        }
    );
    kept(s.buffer(&event("approved", "B", 4), 4, 100, tight).unwrap());
    assert_eq!(
        s.buffer(&event("approved", "C", 5), 5, 100, tight).unwrap(),
        Inboxed::Full {
            per_key: false,
            limit: 3
        }
    );
    s.flush().unwrap();
    assert_eq!(numbers(&s.inbox(None, 10).unwrap()), [1, 2, 4]);
    // Taking one out makes room again.
    let first = s.buffered("approved", "A", 0, 1).unwrap()[0].stamp.seq;
    create(s, "i1", "parked", "d1");
    assert!(s.hand_over(first, "i1").unwrap());
    kept(s.buffer(&event("approved", "C", 6), 6, 100, tight).unwrap());
    assert_eq!(numbers(&s.inbox(None, 10).unwrap()), [2, 4, 6]);
}

/// Eight instances race to take one buffered event: one gets it, as mail, and the inbox
/// no longer has it; given back, it returns to its place in arrival order.
fn one_of_many_racing_takers_gets_a_buffered_event(s: &Fixture) {
    const N: usize = 8;
    for i in 0..N {
        create(s, &format!("t{i}"), "parked", "d1");
    }
    let early = kept(
        s.buffer(&event("approved", "K", 1), 1, 1_000, ROOMY)
            .unwrap(),
    );
    let later = kept(
        s.buffer(&event("approved", "K", 2), 2, 1_000, ROOMY)
            .unwrap(),
    );
    s.flush().unwrap();
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let store = s.store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let id = format!("t{i}");
                barrier.wait();
                let got = store.hand_over(early, &id).unwrap();
                store.flush().unwrap();
                (id, got)
            })
        })
        .collect();
    let results: Vec<(String, bool)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<&String> = results.iter().filter(|(_, g)| *g).map(|(i, _)| i).collect();
    assert_eq!(winners.len(), 1, "exactly one taker: {results:?}");
    let winner = winners[0].clone();
    for (id, _) in &results {
        let mail = s.mail(id, 10).unwrap();
        if *id == winner {
            assert_eq!(mail.len(), 1, "{id}");
            match &mail[0].1 {
                Mail::Event { event, buffered } => {
                    assert_eq!(event.data, json!({"n": 1}));
                    assert_eq!(buffered.map(|b| b.seq), Some(early));
                }
                other => panic!("{other:?}"),
            }
        } else {
            assert!(mail.is_empty(), "{id} got nothing");
        }
    }
    assert_eq!(numbers(&s.inbox(None, 10).unwrap()), [2]);
    // The winner did not wait for it after all: back to its place, before the later one.
    let (mail_seq, letter) = s.mail(&winner, 1).unwrap().remove(0);
    let Mail::Event { event, buffered } = letter else {
        unreachable!()
    };
    let back = s
        .hand_back(&winner, mail_seq, &event, buffered.unwrap())
        .unwrap();
    s.flush().unwrap();
    assert_eq!(back, Some(early));
    assert!(s.mail(&winner, 10).unwrap().is_empty());
    assert_eq!(numbers(&s.inbox(None, 10).unwrap()), [1, 2]);
    assert_eq!(
        s.hand_back(&winner, mail_seq, &event, buffered.unwrap())
            .unwrap(),
        None,
        "a second hand-back finds no mail and keeps nothing twice"
    );
    assert_eq!(numbers(&s.inbox(None, 10).unwrap()), [1, 2]);
    // An event that never was in the inbox gets a fresh number, after the others.
    s.post(
        "t0",
        &Mail::Event {
            event: event.clone(),
            buffered: None,
        },
    )
    .unwrap();
    let (m, _) = s.mail("t0", 1).unwrap().remove(0);
    let fresh = s
        .hand_back(
            "t0",
            m,
            &event,
            Stamp {
                seq: 0,
                arrived: 5,
                until: 1_000,
            },
        )
        .unwrap()
        .unwrap();
    assert!(fresh > later, "{fresh} after {later}");
    assert_eq!(numbers(&s.inbox(None, 10).unwrap()), [1, 2, 1]);
    assert!(!s.hand_over(u64::MAX / 2, "t0").unwrap(), "no such event");
}

macro_rules! contract {
    ($store:ident: $($test:ident),* $(,)?) => {
        mod $store {
            $(
                #[test]
                fn $test() {
                    let fixture = super::$store();
                    super::$test(&fixture);
                }
            )*
        }
    };
}

macro_rules! suite {
    ($($store:ident),*) => {
        $(
            contract!($store:
                journal_order_and_reads,
                instances_page_in_id_order,
                runnable_lists_running_and_compensating,
                definitions_round_trip,
                calendar_versions_are_kept_in_order,
                racing_calendar_loads_record_each_version_once,
                search_entries_are_found_by_value_in_id_order,
                timers_come_due_in_order,
                waits_are_found_by_type_and_key,
                event_answers_are_kept,
                racing_updates_of_an_event_answer_each_count_once,
                create_new_existing_and_key_held,
                concurrent_duplicate_creates_make_one_instance,
                an_open_claim_is_held_until_its_holder_finishes,
                concurrent_starts_for_one_open_key_make_one_instance,
                a_reopen_takes_its_key_back_unless_another_holds_it_open,
                a_reopen_racing_creates_for_its_key_leaves_one_open,
                a_key_with_places_holds_an_open_instance_at_each,
                a_stale_fence_is_refused_whole,
                claims_follow_heartbeats_and_epochs_grow,
                concurrent_claims_of_a_lapsed_instance_have_one_winner,
                release_is_refused_while_mail_waits,
                mail_comes_in_order_and_leaves_with_its_batch,
                orphans_are_runnable_instances_nobody_alive_owns,
                mailed_lists_own_and_orphaned_mail,
                inbox_keeps_events_in_arrival_order_until_they_expire,
                inbox_bounds_refuse_and_keep_nothing,
                one_of_many_racing_takers_gets_a_buffered_event,
            );
        )*
    };
}

suite!(memory, sled, postgres);

// ---- PostgreSQL only: what is in the tables ----

const MARKER: &str = "MARKER-4111-1111-jane.doe";

#[test]
fn postgres_values_and_client_strings_are_not_stored_in_clear() {
    let s = postgres();
    let db = s.db.as_ref().unwrap();
    let f = match s
        .create(
            &Batch {
                records: vec![rec(MARKER, 1)],
                waits_add: vec![wait(MARKER, "i1", 0)],
                search_add: vec![searched(&s, "customer", MARKER, "i1")],
                meta: Some(InstanceMeta {
                    search: [("customer".to_string(), s.search_id("customer", MARKER))].into(),
                    ..meta("i1", "parked")
                }),
                ..first("i1", "parked")
            },
            &[claim(MARKER)],
            "d1",
        )
        .unwrap()
    {
        Created::New(f) => f,
        other => panic!("{other:?}"),
    };
    s.write(&Batch {
        instance: "i1".into(),
        first_seq: 1,
        records: vec![rec(MARKER, 2)],
        fence: Some(f),
        ..Batch::default()
    })
    .unwrap();
    s.post(
        "i1",
        &Mail::Cancel {
            reason: MARKER.into(),
        },
    )
    .unwrap();
    s.put_event_answer(MARKER, &json!({ "note": MARKER }))
        .unwrap();
    s.put_definition(
        "h1",
        &StoredDefinition {
            name: "refund".into(),
            version: 1,
            file: "refund.yaml".into(),
            source: MARKER.into(),
        },
    )
    .unwrap();
    // The store reads it all back.
    assert_eq!(
        s.journal("i1").unwrap(),
        vec![rec(MARKER, 1), rec(MARKER, 2)]
    );
    assert_eq!(s.waiters("approved", MARKER).unwrap().len(), 1);
    assert_eq!(s.key_holder("refund", MARKER).unwrap(), Some("i1".into()));
    assert_eq!(s.mail("i1", 10).unwrap().len(), 1);
    assert!(s.event_answer(MARKER).unwrap().is_some());
    let customer = s.search_id("customer", MARKER);
    assert_eq!(
        s.search("escalation", "customer", &customer, None, 10)
            .unwrap(),
        ["i1"]
    );
    // The raw tables do not show it.
    let marker = MARKER.as_bytes();
    let hidden = |what: &str, values: Vec<Vec<u8>>| {
        assert!(!values.is_empty(), "{what}: nothing stored");
        for v in values {
            assert!(
                !v.windows(marker.len()).any(|w| w == marker),
                "{what} holds the marker in clear"
            );
            assert!(
                !v.windows(4).any(|w| w == b"4111"),
                "{what} holds part of the marker in clear"
            );
        }
    };
    hidden(
        "casework_journal",
        db.raw_bytes("SELECT value FROM casework_journal"),
    );
    hidden(
        "casework_mail",
        db.raw_bytes("SELECT value FROM casework_mail"),
    );
    hidden(
        "casework_events",
        db.raw_bytes("SELECT id_hash || value FROM casework_events"),
    );
    hidden(
        "casework_definitions",
        db.raw_bytes("SELECT value FROM casework_definitions"),
    );
    hidden(
        "casework_waits",
        db.raw_bytes("SELECT convert_to(event_type, 'UTF8') || key_hash FROM casework_waits"),
    );
    hidden(
        "casework_search",
        db.raw_bytes("SELECT convert_to(attribute || value_id, 'UTF8') FROM casework_search"),
    );
    hidden(
        "casework_instances",
        db.raw_bytes("SELECT convert_to(search, 'UTF8') FROM casework_instances"),
    );
    hidden(
        "casework_idempotency",
        db.raw_bytes("SELECT convert_to(workflow, 'UTF8') || key_hash FROM casework_idempotency"),
    );
    // A sealed record moved to another row fails to open, naming no plaintext.
    db.execute(
        "INSERT INTO casework_journal (instance, seq, value) \
         SELECT 'i2', 0, value FROM casework_journal WHERE instance = 'i1' AND seq = 0",
    );
    let err = s.journal("i2").unwrap_err().to_string();
    assert!(err.contains("failed authentication"), "{err}");
    assert!(!err.contains(MARKER), "{err}");
}

#[test]
fn postgres_daemons_on_separate_connections_share_ownership() {
    // Two stores on one database, as two daemons would have.
    let db = TestDb::new();
    let (k, _) = key();
    let a = PgStore::open(db.url(), KeySource::Explicit(k.clone())).unwrap();
    let b = PgStore::open(db.url(), KeySource::Explicit(k)).unwrap();
    a.heartbeat("da", 100).unwrap();
    b.heartbeat("db", 1000).unwrap();
    let Created::New(fa) = a.create(&first("x", "running"), &[], "da").unwrap() else {
        panic!()
    };
    assert_eq!(
        b.claim("x", "db", 50).unwrap(),
        Ownership::Held {
            daemon: "da".into()
        }
    );
    b.post("x", &Mail::Retry).unwrap();
    assert_eq!(a.mailed("da", 50, 10).unwrap(), ["x"]);
    assert!(!a.release("x", &fa).unwrap());
    let Ownership::Mine(fb) = b.claim("x", "db", 100).unwrap() else {
        panic!("da lapsed")
    };
    assert!(matches!(
        a.write(&Batch {
            instance: "x".into(),
            first_seq: 1,
            records: vec![rec("a", 2)],
            fence: Some(fa),
            ..Batch::default()
        }),
        Err(Error::Fenced { .. })
    ));
    b.write(&Batch {
        instance: "x".into(),
        first_seq: 1,
        records: vec![rec("b", 2)],
        fence: Some(fb),
        ..Batch::default()
    })
    .unwrap();
    assert_eq!(a.journal("x").unwrap(), vec![rec("first", 1), rec("b", 2)]);
}
