//! Write-only values: the fields of an event's `data` that a workflow's wait declares
//! `write_only` (a one-time code the customer typed). Such a value is sealed the moment
//! the event reaches the driver, before anything is written, and travels as a token
//! through the inbox, the mail, the journal and `vars`:
//!
//! ```json
//! {"$write_only": "<hex of the sealed value and its expiry>"}
//! ```
//!
//! Nothing shows what is inside: views, `inspect`, the console, test recordings and logs
//! show `"[write-only]"` (see [`redact`]), rules see only the token, templates copy the
//! token. The one place it is opened is a plugin call, for an input field that the
//! plugin's published schema marks sensitive (`x-casework-sensitive` or `writeOnly`), and
//! only until [`OPEN_FOR_MS`] after it arrived: after that, or in any other field, the
//! call fails with a code the workflow can handle (`write_only_expired`,
//! `write_only_refused`) and the plugin is not called. A call repeated after a crash opens
//! the same token again (same input, same idempotency key) while it is young enough.
//!
//! The token is sealed under the journal key (a key of the process in the memory store),
//! so any daemon of a cluster can open it for its plugin; clients cannot make one (a
//! start or event that carries the marker is refused at the API, see [`carries_marker`]).

use crate::compile::{CompiledWorkflow, Kind};
use crate::runtime::{Millis, StepError};
use crate::store::seal::Sealer;
use crate::store::Store;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// The key of a token object.
pub const MARKER: &str = "$write_only";

/// How a token is shown anywhere but to a plugin.
pub const SHOWN_AS: &str = "[write-only]";

/// How long after it arrived a write-only value can still be given to a plugin: longer
/// than any one-time code lives, short enough that an old journal opens no code.
pub const OPEN_FOR_MS: i64 = 30 * 60 * 1000;

/// The store slot that keeps the fields of `event_type` ever declared write-only (NUL
/// starts the engine's own slots: no client event id has one).
fn slot(event_type: &str) -> String {
    format!("\u{0}write_only\u{0}{event_type}")
}

/// Record in the store the write-only fields `wf` declares, added to those any workflow
/// declared before, by any daemon. A declaration is never taken back: an event is sealed
/// for as long as any version that ever waited for it might still (a parked instance of
/// an older version, or a daemon with older files), deny by default.
pub fn declare(store: &dyn Store, wf: &CompiledWorkflow) -> Result<(), String> {
    let mut by_type: std::collections::BTreeMap<&str, BTreeSet<String>> = Default::default();
    for s in &wf.steps {
        if let Kind::Wait {
            events, write_only, ..
        } = &s.kind
        {
            for e in events.iter().filter(|_| !write_only.is_empty()) {
                by_type
                    .entry(e)
                    .or_default()
                    .extend(write_only.iter().cloned());
            }
        }
    }
    for (event_type, fields) in by_type {
        let known = declared(store, event_type).map_err(|e| e.to_string())?;
        if fields.is_subset(&known) {
            continue;
        }
        store
            .update_event_answer(&slot(event_type), &mut |old| {
                let mut all: BTreeSet<String> = old
                    .and_then(|v| serde_json::from_value(v["fields"].clone()).ok())
                    .unwrap_or_default();
                all.extend(fields.iter().cloned());
                json!({ "fields": all })
            })
            .map_err(|e| format!("cannot record the write-only fields of `{event_type}`: {e}"))?;
    }
    Ok(())
}

/// The fields of `event_type` any workflow ever declared write-only on this store.
pub fn declared(store: &dyn Store, event_type: &str) -> crate::store::Result<BTreeSet<String>> {
    Ok(store
        .event_answer(&slot(event_type))?
        .and_then(|v| serde_json::from_value(v["fields"].clone()).ok())
        .unwrap_or_default())
}

/// Seal the `fields` of `data` (an event's data object) that are present, expiring
/// [`OPEN_FOR_MS`] after `now`. A field already holding `null` is left alone.
pub fn seal(
    data: &mut Value,
    fields: &BTreeSet<String>,
    sealer: &Sealer,
    now: Millis,
) -> crate::store::Result<()> {
    let Some(obj) = data.as_object_mut() else {
        return Ok(());
    };
    for f in fields {
        if let Some(v) = obj.get_mut(f) {
            if v.is_null() {
                continue;
            }
            let plain = serde_json::to_vec(&json!({"value": v, "until": now + OPEN_FOR_MS}))
                .map_err(|e| crate::store::Error::Io(format!("a write-only value: {e}")))?;
            let sealed = sealer.seal_write_only(&plain)?;
            *v = Value::Object(Map::from_iter([(
                MARKER.to_string(),
                Value::String(hex::encode(sealed)),
            )]));
        }
    }
    Ok(())
}

/// Whether `v` is a token.
pub fn is_token(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.get(MARKER).is_some_and(Value::is_string))
}

/// Whether `v` holds the marker anywhere: clients may not send one (a token copied from
/// elsewhere would be opened for this instance's plugin).
pub fn carries_marker(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.contains_key(MARKER) || o.values().any(carries_marker),
        Value::Array(a) => a.iter().any(carries_marker),
        _ => false,
    }
}

/// Replace every token in `v` by [`SHOWN_AS`]; a string with a token's text copied into
/// it (a template like `"code ${event.data.code}"`) is replaced whole.
pub fn redact(v: &mut Value) {
    if is_token(v) {
        *v = Value::String(SHOWN_AS.into());
        return;
    }
    match v {
        Value::Object(o) => o.values_mut().for_each(redact),
        Value::Array(a) => a.iter_mut().for_each(redact),
        Value::String(s) if s.contains(MARKER) => *s = SHOWN_AS.into(),
        _ => {}
    }
}

/// Whether any token is in `v`, at any depth.
fn holds_token(v: &Value) -> bool {
    match v {
        Value::Object(_) if is_token(v) => true,
        Value::Object(o) => o.values().any(holds_token),
        Value::Array(a) => a.iter().any(holds_token),
        Value::String(s) => s.contains(MARKER),
        _ => false,
    }
}

/// The input `plugin.action` is given: each top-level field holding a token is opened
/// when `sensitive` (the fields the action's schema marks sensitive; `None` for a host
/// that cannot tell, such as the scripted host of `casework test`; asked only when the
/// input holds a token, so a plain call costs one scan) allows it. A token anywhere
/// else, or one past its time, fails the call before the plugin sees anything. Also the
/// opened values as text, for the host to scrub from whatever the plugin says back.
pub fn open(
    input: Value,
    (plugin, action): (&str, &str),
    sensitive: impl FnOnce() -> Option<BTreeSet<String>>,
    sealer: &Sealer,
    now: Millis,
) -> Result<(Value, Vec<String>), StepError> {
    if !holds_token(&input) {
        return Ok((input, Vec::new()));
    }
    let target = &format!("{plugin}.{action}");
    let sensitive = sensitive();
    let Value::Object(fields) = input else {
        return Err(refused(target, "its input"));
    };
    let mut out = Map::with_capacity(fields.len());
    let mut opened = Vec::new();
    for (name, v) in fields {
        if !is_token(&v) {
            if holds_token(&v) {
                return Err(refused(target, &format!("`{name}`")));
            }
            out.insert(name, v);
            continue;
        }
        if sensitive.as_ref().is_some_and(|s| !s.contains(&name)) {
            return Err(refused(target, &format!("`{name}`")));
        }
        let value = open_one(&v, target, sealer, now)?;
        opened.push(match &value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        out.insert(name, value);
    }
    Ok((Value::Object(out), opened))
}

fn open_one(token: &Value, target: &str, sealer: &Sealer, now: Millis) -> Result<Value, StepError> {
    let unreadable = || {
        StepError::new(
            "write_only_unreadable",
            format!(
                "a write-only value for `{target}` could not be opened (sealed under another journal key?); ask for it again"
            ),
        )
    };
    let sealed = token[MARKER]
        .as_str()
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(unreadable)?;
    let plain = sealer.open_write_only(&sealed).map_err(|_| unreadable())?;
    let mut opened: Value = serde_json::from_slice(&plain).map_err(|_| unreadable())?;
    let until = opened["until"].as_i64().ok_or_else(unreadable)?;
    if now > until {
        return Err(StepError::new(
            "write_only_expired",
            format!(
                "a write-only value (such as a one-time code) for `{target}` arrived more than {} minutes ago and can no longer be used; ask for it again",
                OPEN_FOR_MS / 60_000
            ),
        ));
    }
    Ok(opened["value"].take())
}

fn refused(target: &str, place: &str) -> StepError {
    StepError::new(
        "write_only_refused",
        format!(
            "{place} of `{target}` holds a write-only value, but the plugin does not mark that field sensitive; \
             pass a write-only value (such as a one-time code) only to a field the plugin's schema marks sensitive"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::seal::JournalKey;

    fn sealer() -> Sealer {
        Sealer::new(&JournalKey::random().unwrap())
    }

    fn fields(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_sealed_field_shows_nothing_of_its_value_and_opens_for_a_sensitive_field() {
        let s = sealer();
        let mut data = json!({"code": "493817", "session": "s-1"});
        seal(&mut data, &fields(&["code", "absent"]), &s, 1_000).unwrap();
        assert_eq!(data["session"], "s-1");
        assert!(is_token(&data["code"]));
        assert!(!data.to_string().contains("493817"));
        let mut shown = data.clone();
        redact(&mut shown);
        assert_eq!(shown, json!({"code": SHOWN_AS, "session": "s-1"}));

        let input = json!({"code": data["code"].clone(), "secret_ref": "totp_seed/c-1"});
        let (opened, plain) = open(
            input,
            ("identity", "verify_totp"),
            || Some(fields(&["code"])),
            &s,
            2_000,
        )
        .unwrap();
        assert_eq!(
            opened,
            json!({"code": "493817", "secret_ref": "totp_seed/c-1"})
        );
        assert_eq!(plain, ["493817"]);
    }

    #[test]
    fn a_token_in_a_field_not_marked_sensitive_or_nested_or_too_old_is_refused() {
        let s = sealer();
        let mut data = json!({"code": "493817"});
        seal(&mut data, &fields(&["code"]), &s, 0).unwrap();
        let token = data["code"].clone();
        let only_code = fields(&["code"]);
        for input in [
            json!({"text": token.clone()}),
            json!({"code": {"inner": token.clone()}}),
            json!({"text": format!("code {}", token)}),
            json!([token.clone()]),
        ] {
            let e = open(
                input,
                ("paging", "notify_slack"),
                || Some(only_code.clone()),
                &s,
                1,
            )
            .unwrap_err();
            assert_eq!(e.code, "write_only_refused");
            assert!(!e.message.contains("493817"));
        }
        let late = open(
            json!({"code": token.clone()}),
            ("x", "y"),
            || Some(only_code.clone()),
            &s,
            OPEN_FOR_MS + 1,
        )
        .unwrap_err();
        assert_eq!(late.code, "write_only_expired");
        // Another key (another cluster, a forged token) cannot open it.
        let e = open(json!({"code": token}), ("x", "y"), || None, &sealer(), 1).unwrap_err();
        assert_eq!(e.code, "write_only_unreadable");
    }

    #[test]
    fn the_marker_is_found_at_any_depth() {
        assert!(carries_marker(&json!({"a": [{"$write_only": "00"}]})));
        assert!(!carries_marker(&json!({"a": ["$write_only"]})));
    }
}
