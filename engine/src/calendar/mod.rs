//! Business calendars and SLA clocks: when a support team is at work, and how much of a
//! service-level target has been used.
//!
//! A calendar is read from `workflows/calendars/<name>.yaml` ([`read()`]): an IANA time zone,
//! weekly working intervals in local wall-clock time, and holidays. Instants are UTC epoch
//! milliseconds everywhere, as in the rest of the engine; the zone is only used to turn each
//! day's local intervals into UTC ([`time`]), so DST changes and past offsets come from the
//! tz database rather than from today's offset.
//!
//! [`sla::SlaClock`] is the pure, serialisable SLA state; [`functions`] exposes the
//! arithmetic to rules through a [`SharedCalendars`] handle that the loader fills.

pub mod functions;
pub mod history;
pub mod read;
pub mod schema;
pub mod sla;
pub mod time;

pub use read::read;
pub use time::TimeError;

use crate::diagnostic::{did_you_mean, Diagnostic, Span};
use chrono::NaiveDate;
use chrono_tz::Tz;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Seconds in a day; shift times are seconds after the local midnight of the day they start.
pub const DAY_SECONDS: u32 = 86_400;

/// One working interval in local time. `end` is after `start` and at most a day later;
/// past [`DAY_SECONDS`] the shift runs into the next day (it still belongs to the day it starts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Shift {
    pub start: u32,
    pub end: u32,
}

/// A day off: one date, or the same month and day every year.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HolidayDate {
    On(NaiveDate),
    Yearly { month: u32, day: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holiday {
    pub date: HolidayDate,
    pub name: Option<String>,
}

/// A business calendar, ready for arithmetic.
#[derive(Clone, Debug, PartialEq)]
pub struct Calendar {
    pub name: String,
    /// The file it came from, for messages.
    pub file: String,
    pub description: Option<String>,
    pub zone: Tz,
    /// Shifts by weekday, Monday first, sorted by start.
    pub week: [Vec<Shift>; 7],
    pub holidays: Vec<Holiday>,
    /// Dates whose hours differ from the week (e.g. 24 December 08:00–12:00), sorted by
    /// start; a date given both as one day and every year takes the one day.
    pub dates: BTreeMap<HolidayDate, Vec<Shift>>,
    dates_off: BTreeSet<NaiveDate>,
    yearly_off: BTreeSet<(u32, u32)>,
    /// What the file said, and its [`history::version_of`], so a daemon can keep the
    /// version after the file changes; empty for a calendar built in code.
    pub source: String,
    pub version: String,
    /// When this version came into effect; before then [`Calendar::before`] counts (if
    /// there is none, this version counts for all earlier time too).
    pub effective_from: i64,
    pub before: Option<Arc<Calendar>>,
}

impl Calendar {
    /// A calendar from parts; [`read()`] is the usual way in, with checks and positions.
    ///
    /// Shifts must not overlap (the reader rejects files where they do); each day's are sorted here.
    pub fn new(name: &str, zone: Tz, mut week: [Vec<Shift>; 7], holidays: Vec<Holiday>) -> Self {
        for day in &mut week {
            day.sort();
        }
        let mut dates_off = BTreeSet::new();
        let mut yearly_off = BTreeSet::new();
        for h in &holidays {
            match h.date {
                HolidayDate::On(d) => {
                    dates_off.insert(d);
                }
                HolidayDate::Yearly { month, day } => {
                    yearly_off.insert((month, day));
                }
            }
        }
        Calendar {
            name: name.to_string(),
            file: String::new(),
            description: None,
            zone,
            week,
            holidays,
            dates: BTreeMap::new(),
            dates_off,
            yearly_off,
            source: String::new(),
            version: String::new(),
            effective_from: i64::MIN,
            before: None,
        }
    }

    /// Versions this one replaced, newest first.
    pub fn earlier_versions(&self) -> impl Iterator<Item = &Calendar> {
        std::iter::successors(self.before.as_deref(), |c| c.before.as_deref())
    }

    /// Every day, all day (holidays still apply).
    pub fn always(name: &str, zone: Tz, holidays: Vec<Holiday>) -> Self {
        let all = || {
            vec![Shift {
                start: 0,
                end: DAY_SECONDS,
            }]
        };
        Calendar::new(
            name,
            zone,
            [all(), all(), all(), all(), all(), all(), all()],
            holidays,
        )
    }

    /// The same calendar with its own hours on some dates (each date's shifts must not
    /// overlap or run past midnight; the reader checks that).
    pub fn with_dates(mut self, dates: BTreeMap<HolidayDate, Vec<Shift>>) -> Self {
        self.dates = dates;
        for shifts in self.dates.values_mut() {
            shifts.sort();
        }
        self
    }

    pub fn is_holiday(&self, date: NaiveDate) -> bool {
        use chrono::Datelike;
        self.dates_off.contains(&date) || self.yearly_off.contains(&(date.month(), date.day()))
    }

    /// The shifts that start on `date`: none on a holiday, the date's own hours if it has
    /// them, else its weekday's.
    pub fn shifts_on(&self, date: NaiveDate) -> &[Shift] {
        use chrono::Datelike;
        if self.is_holiday(date) {
            return &[];
        }
        let yearly = HolidayDate::Yearly {
            month: date.month(),
            day: date.day(),
        };
        self.dates
            .get(&HolidayDate::On(date))
            .or_else(|| self.dates.get(&yearly))
            .map_or_else(
                || self.week[date.weekday().num_days_from_monday() as usize].as_slice(),
                Vec::as_slice,
            )
    }
}

/// The calendars known to the engine, by name.
#[derive(Clone, Debug, Default)]
pub struct Calendars {
    by_name: BTreeMap<String, Arc<Calendar>>,
    /// Calendar files that did not load, so a rule naming one of them gets a useful message.
    failed_files: Vec<String>,
}

/// A rule or clock named a calendar that is not loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct UnknownCalendar {
    pub name: String,
    pub known: Vec<String>,
    pub failed_files: Vec<String>,
}

impl UnknownCalendar {
    fn describe(&self) -> String {
        let mut s = if self.known.is_empty() {
            format!(
                "unknown calendar `{}`: no calendars are loaded (put them in workflows/calendars/)",
                self.name
            )
        } else {
            let mut s = format!("unknown calendar `{}`", self.name);
            if let Some(m) = did_you_mean(&self.name, self.known.iter().map(String::as_str)) {
                s.push_str(&format!(" (did you mean `{m}`?)"));
            }
            s.push_str(&format!("; known calendars: {}", self.known.join(", ")));
            s
        };
        if !self.failed_files.is_empty() {
            s.push_str(&format!(
                " ({} did not load; run `casework validate`)",
                self.failed_files.join(", ")
            ));
        }
        s
    }
}

impl Calendars {
    pub fn new(calendars: impl IntoIterator<Item = Calendar>) -> Self {
        Calendars {
            by_name: calendars
                .into_iter()
                .map(|c| (c.name.clone(), Arc::new(c)))
                .collect(),
            failed_files: Vec::new(),
        }
    }

    /// Every calendar, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Calendar>> {
        self.by_name.values()
    }

    /// Calendar files that did not load.
    pub fn failed_files(&self) -> &[String] {
        &self.failed_files
    }

    /// Adds `cal` unless a calendar of its name is loaded (e.g. the previous version of a
    /// file that no longer loads).
    pub fn keep(&mut self, cal: Arc<Calendar>) {
        self.by_name.entry(cal.name.clone()).or_insert(cal);
    }

    /// The same calendars with each one replaced by `f`'s answer (which keeps its name).
    pub fn map(self, mut f: impl FnMut(Arc<Calendar>) -> Arc<Calendar>) -> Self {
        Calendars {
            by_name: self
                .by_name
                .into_iter()
                .map(|(name, cal)| (name, f(cal)))
                .collect(),
            failed_files: self.failed_files,
        }
    }

    pub fn get(&self, name: &str) -> Result<&Arc<Calendar>, UnknownCalendar> {
        self.by_name.get(name).ok_or_else(|| UnknownCalendar {
            name: name.to_string(),
            known: self.by_name.keys().cloned().collect(),
            failed_files: self.failed_files.clone(),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The calendar set that rules read, replaced as a whole when calendar files are (re)loaded.
///
/// Rules are compiled once into a shared engine, so the helper functions hold this handle
/// rather than a calendar set of their own.
#[derive(Clone, Debug, Default)]
pub struct SharedCalendars(Arc<RwLock<Arc<Calendars>>>);

impl SharedCalendars {
    pub fn get(&self) -> Arc<Calendars> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, calendars: Calendars) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(calendars);
    }
}

/// Whether `path` is a calendar file: calendars live in a folder named `calendars`.
pub fn is_calendar_file(path: &Path) -> bool {
    path.parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "calendars")
}

/// Calendar files (`*.yaml`/`*.yml`) in `dir`, sorted; none if the folder does not exist.
pub fn calendar_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Read a set of calendar files. Files with errors are left out (and remembered, for messages).
pub fn load_files(files: &[PathBuf]) -> (Calendars, Vec<Diagnostic>) {
    let mut set = Calendars::default();
    let mut diags = Vec::new();
    for f in files {
        let file = f.display().to_string();
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                diags.push(Diagnostic::error(
                    &file,
                    Span::default(),
                    format!("cannot read file: {e}"),
                ));
                set.failed_files.push(file);
                continue;
            }
        };
        let (cal, d) = read(&file, &text);
        diags.extend(d);
        let Some(mut cal) = cal else {
            set.failed_files.push(file);
            continue;
        };
        cal.version = history::version_of(&text);
        cal.source = text;
        if let Some(other) = set.by_name.get(&cal.name) {
            diags.push(
                Diagnostic::error(
                    &file,
                    Span::new(1, 1),
                    format!("calendar `{}` is also defined in {}", cal.name, other.file),
                )
                .with_hint("each calendar name must be used by one file; rename one of them"),
            );
            set.failed_files.push(file);
            continue;
        }
        set.by_name.insert(cal.name.clone(), Arc::new(cal));
    }
    (set, diags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::rules::{Bindings, Limits, Rules};
    use crate::daemon::registry;

    const SUPPORT_HOURS: &str = include_str!("../../../workflows/calendars/support-hours.yaml");
    const H: i64 = 3_600_000;

    fn ms(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn shipped_support_hours() {
        let (cal, diags) = read("support-hours.yaml", SUPPORT_HOURS);
        assert!(diags.is_empty(), "{diags:?}");
        let cal = cal.unwrap();
        // Friday 16:00 before the clocks go forward: 2h on Friday, 2h from Monday 08:00 BST.
        assert_eq!(
            cal.add(ms("2026-03-27T16:00:00Z"), 4 * H).unwrap(),
            ms("2026-03-30T09:00:00Z")
        );
        // Thursday 08:00 GMT before Easter 2027 to Tuesday 08:00 BST after it: only Thursday counts.
        assert_eq!(
            cal.between(ms("2027-03-25T08:00:00Z"), ms("2027-03-30T07:00:00Z"))
                .unwrap(),
            10 * H
        );
        // Christmas 2027 falls on a weekend; the substitute days close Monday and Tuesday.
        assert_eq!(
            cal.next_open(ms("2027-12-24T18:00:00Z")).unwrap(),
            ms("2027-12-29T08:00:00Z")
        );
    }

    #[test]
    fn a_workflow_folder_brings_its_calendars_to_rules() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("demo.yaml"),
            "workflow: demo\nversion: 1\nsteps:\n  - id: a\n    complete: {}\n",
        )
        .unwrap();
        let cals = dir.path().join("calendars");
        std::fs::create_dir(&cals).unwrap();
        std::fs::write(cals.join("support-hours.yaml"), SUPPORT_HOURS).unwrap();
        std::fs::write(
            cals.join("emea.yaml"),
            "calendar: emea\ntimezone: Europe/Pariss\nhours: always\n",
        )
        .unwrap();
        let files = registry::workflow_files(dir.path()).unwrap();
        let rules = Arc::new(Rules::new(Limits::default()));
        let (workflows, diags) = registry::load_files(&files, None, &rules);
        assert_eq!(workflows.len(), 1);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(
            diags[0]
                .to_string()
                .contains("unknown time zone `Europe/Pariss`"),
            "{}",
            diags[0]
        );
        assert_eq!(
            rules.calendars().names().collect::<Vec<_>>(),
            ["support-hours"]
        );

        let eval = |src: &str| {
            let ast = rules.compile_expression(src).unwrap();
            rules
                .eval(
                    &ast,
                    &Bindings {
                        input: &serde_json::json!({}),
                        vars: &serde_json::Map::new(),
                        locals: &serde_json::Map::new(),
                        now_ms: ms("2026-03-27T16:00:00Z"),
                        instance: None,
                    },
                )
                .map(|(v, _)| v)
        };
        assert_eq!(
            eval(r#"business_add("support-hours", now, "4h")"#).unwrap(),
            "2026-03-30T09:00:00.000Z"
        );
        let err = eval(r#"within_hours("emea", now)"#).unwrap_err();
        assert!(
            err.message
                .contains("unknown calendar `emea`; known calendars: support-hours")
                && err
                    .message
                    .contains("emea.yaml did not load; run `casework validate`"),
            "{err}"
        );
    }
}
