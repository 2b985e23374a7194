//! Calendar versions over time: an edited calendar counts from the moment it is loaded,
//! and time before that keeps counting on the version that was in effect then.
//!
//! Without this, adding a holiday for *today* while an SLA clock runs would recount the
//! clock's running stretch on the new calendar and drop the time it had already used. A
//! clock's open run is measured with [`Calendar::between`] from when it began, so the
//! calendar must answer for the past as it was: each [`Calendar`] keeps the version it
//! replaced ([`Calendar::before`]) and the instant it came into effect, and the arithmetic
//! walks each version's shifts only while that version was in effect.
//!
//! The daemon records every version in its store when it loads it
//! ([`crate::store::Store::add_calendar_version`]), with the source, so a restart rebuilds
//! the same history after the file has changed. A calendar's first recorded version counts
//! for all earlier time. At most [`MAX_VERSIONS`] are kept per calendar; past that the
//! oldest is dropped, and the oldest kept then counts for the time before it.

use super::{read, Calendar, Calendars};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Versions kept per calendar.
pub const MAX_VERSIONS: usize = 64;

/// One version of a calendar as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalendarVersion {
    pub name: String,
    /// [`version_of`] the source.
    pub version: String,
    /// When it came into effect (UTC epoch ms); `i64::MIN` for a calendar's first version.
    pub from: i64,
    pub source: String,
}

/// A calendar file's version: the start of the SHA-256 of its text.
pub fn version_of(source: &str) -> String {
    let digest = Sha256::digest(source.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The history after loading `v` at `v.from`: unchanged if `v` is already the newest
/// version; otherwise `v` appended (never earlier than the version before it, so clocks
/// that disagree between daemons cannot reorder versions) and the oldest dropped past
/// [`MAX_VERSIONS`]. Every store applies this under its own lock.
pub fn append(mut history: Vec<CalendarVersion>, mut v: CalendarVersion) -> Vec<CalendarVersion> {
    match history.last() {
        Some(last) if last.version == v.version => return history,
        Some(last) => v.from = v.from.max(last.from),
        None => v.from = i64::MIN,
    }
    history.push(v);
    let extra = history.len().saturating_sub(MAX_VERSIONS);
    history.drain(..extra);
    history
}

/// `current` with each calendar's earlier versions behind it, from `histories` (oldest
/// first, by name, each ending with the version loaded now). A calendar without a history
/// counts on its current version for all time. Returns what could not be used: an old
/// version that no longer reads is left out, and the one before it counts in its place.
pub fn chain(
    current: Calendars,
    histories: &BTreeMap<String, Vec<CalendarVersion>>,
) -> (Calendars, Vec<String>) {
    let mut problems = Vec::new();
    let set = current.map(|cal| {
        let Some(history) = histories.get(&cal.name) else {
            return cal;
        };
        let Some((newest, older)) = history.split_last() else {
            return cal;
        };
        if newest.version != cal.version {
            problems.push(format!(
                "calendar `{}`: the stored history ends with version {}, not the loaded {}; \
                 counting on the loaded version only",
                cal.name, newest.version, cal.version
            ));
            return cal;
        }
        let mut before: Option<Arc<Calendar>> = None;
        for v in older {
            let file = format!("{} (version {})", cal.file, v.version);
            let (old, _) = read(&file, &v.source);
            let Some(mut old) = old.filter(|c| c.name == cal.name) else {
                problems.push(format!(
                    "calendar `{}`: stored version {} no longer reads; the version before it counts in its place",
                    cal.name, v.version
                ));
                continue;
            };
            old.file = cal.file.clone();
            old.version = v.version.clone();
            old.effective_from = v.from;
            old.before = before.take();
            before = Some(Arc::new(old));
        }
        let mut cal = Arc::unwrap_or_clone(cal);
        cal.effective_from = newest.from;
        cal.before = before;
        Arc::new(cal)
    });
    (set, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const WEEKDAYS: &str =
        "calendar: support\ntimezone: Europe/London\nhours: { weekdays: 08:00-18:00 }\n";

    fn ms(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    fn version(source: &str, from: i64) -> CalendarVersion {
        CalendarVersion {
            name: "support".into(),
            version: version_of(source),
            from,
            source: source.into(),
        }
    }

    fn loaded(source: &str, history: &[CalendarVersion]) -> Arc<Calendar> {
        let (mut cal, d) = read("support.yaml", source);
        assert!(d.is_empty(), "{d:?}");
        let mut cal = cal.take().unwrap();
        cal.version = version_of(source);
        cal.source = source.into();
        let histories = BTreeMap::from([("support".to_string(), history.to_vec())]);
        let (set, problems) = chain(Calendars::new([cal]), &histories);
        assert!(problems.is_empty(), "{problems:?}");
        set.get("support").unwrap().clone()
    }

    #[test]
    fn a_holiday_added_for_today_keeps_the_morning_already_worked() {
        // Monday 2026-06-01: the morning until 11:00 BST (10:00 UTC) was worked; then a
        // holiday for today is loaded.
        let edited = format!("{WEEKDAYS}holidays: [2026-06-01]\n");
        let edit = ms("2026-06-01T10:00:00Z");
        let history = append(
            append(Vec::new(), version(WEEKDAYS, ms("2026-05-01T00:00:00Z"))),
            version(&edited, edit),
        );
        let cal = loaded(&edited, &history);
        let opened = ms("2026-06-01T07:00:00Z");
        // 3 hours counted before the edit, none after it today.
        assert_eq!(
            cal.between(opened, ms("2026-06-01T16:00:00Z")).unwrap(),
            3 * H
        );
        // The rest of a 4-hour target is Tuesday's first hour.
        assert_eq!(cal.add(opened, 4 * H).unwrap(), ms("2026-06-02T08:00:00Z"));
        assert!(!cal.is_open(ms("2026-06-01T12:00:00Z")).unwrap());
        assert!(cal.is_open(ms("2026-06-01T09:00:00Z")).unwrap());
        assert_eq!(
            cal.next_open(ms("2026-06-01T11:00:00Z")).unwrap(),
            ms("2026-06-02T07:00:00Z")
        );
        // Without the history, the morning would count for nothing.
        let (alone, _) = read("support.yaml", &edited);
        assert_eq!(
            alone
                .unwrap()
                .between(opened, ms("2026-06-01T16:00:00Z"))
                .unwrap(),
            0
        );
    }

    #[test]
    fn hours_extended_from_an_instant_count_from_then_on() {
        let longer = WEEKDAYS.replace("08:00-18:00", "08:00-20:00");
        // Loaded on Tuesday at 12:00 UTC; Monday keeps its old closing time.
        let edit = ms("2026-06-02T12:00:00Z");
        let history = append(
            append(Vec::new(), version(WEEKDAYS, 0)),
            version(&longer, edit),
        );
        let cal = loaded(&longer, &history);
        assert_eq!(
            cal.between(ms("2026-06-01T07:00:00Z"), ms("2026-06-03T07:00:00Z"))
                .unwrap(),
            10 * H + 12 * H
        );
        assert_eq!(cal.earlier_versions().count(), 1);
    }

    #[test]
    fn append_keeps_the_newest_version_once_and_in_order() {
        let a = version(WEEKDAYS, 5);
        let h = append(Vec::new(), a.clone());
        assert_eq!(h[0].from, i64::MIN, "the first version counts for all time");
        assert_eq!(
            append(h.clone(), a.clone()),
            h,
            "loading it again adds nothing"
        );
        let b = version(&format!("{WEEKDAYS}# edited\n"), 100);
        let h = append(h, b.clone());
        let c = version(WEEKDAYS, 50);
        let h = append(h, c);
        assert_eq!(h.len(), 3);
        assert_eq!(
            h[2].from, 100,
            "a version never comes into effect before the last"
        );
        let mut long = Vec::new();
        for i in 0..(MAX_VERSIONS as i64 + 10) {
            long = append(long, version(&format!("{WEEKDAYS}# {i}\n"), i));
        }
        assert_eq!(long.len(), MAX_VERSIONS);
        assert_eq!(long.last().unwrap().from, MAX_VERSIONS as i64 + 9);
    }

    #[test]
    fn a_stored_version_that_no_longer_reads_is_named_and_skipped() {
        let edited = format!("{WEEKDAYS}holidays: [2026-06-01]\n");
        let broken = version("calendar: support\ntimezone: Nowhere/Else\n", 1);
        let history = vec![
            version(WEEKDAYS, i64::MIN),
            broken,
            version(&edited, ms("2026-06-01T10:00:00Z")),
        ];
        let (mut cal, _) = read("support.yaml", &edited);
        let mut cal = cal.take().unwrap();
        cal.version = version_of(&edited);
        let histories = BTreeMap::from([("support".to_string(), history)]);
        let (set, problems) = chain(Calendars::new([cal]), &histories);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("no longer reads"), "{problems:?}");
        let cal = set.get("support").unwrap();
        assert_eq!(cal.earlier_versions().count(), 1);
        assert_eq!(
            cal.between(ms("2026-06-01T07:00:00Z"), ms("2026-06-01T16:00:00Z"))
                .unwrap(),
            3 * H
        );
    }
}
