//! Calendar YAML → [`Calendar`], reporting every problem with its position, like workflow files.
//!
//! ```yaml
//! calendar: support-hours
//! timezone: Europe/London
//! hours:
//!   weekdays: [08:00-12:30, 13:30-18:00]
//!   sat: 09:00-13:00
//! holidays:
//!   - 2026-12-25
//!   - { date: 01-01, name: New Year's Day }
//! ```

use super::{Calendar, Holiday, HolidayDate, Shift, DAY_SECONDS};
use crate::definition::yaml::{self, Key, Node, Value};
use crate::diagnostic::{did_you_mean, Diagnostic, Span};
use chrono::NaiveDate;
use chrono_tz::Tz;
use std::collections::BTreeMap;

pub(crate) const CALENDAR_FIELDS: &[&str] = &[
    "calendar",
    "description",
    "timezone",
    "hours",
    "dates",
    "holidays",
];
pub(crate) const HOLIDAY_FIELDS: &[&str] = &["date", "name"];
/// Keys under `hours:`; a single day overrides `weekdays`/`weekend`, which override `daily`.
pub(crate) const DAY_KEYS: &[&str] = &[
    "mon", "tue", "wed", "thu", "fri", "sat", "sun", "weekdays", "weekend", "daily",
];
const DAY_NAMES: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const RANGE_HINT: &str =
    "write `HH:MM-HH:MM` (or `HH:MM:SS`), e.g. `09:00-17:30`; for a shift that runs past midnight add `+1`, e.g. `22:00-06:00+1`";
const DATE_HINT: &str =
    "write a date as YYYY-MM-DD (e.g. 2026-12-25), or MM-DD (e.g. 12-25) for every year";

/// Read a calendar file. Returns the calendar if it has no errors, and every problem found.
pub fn read(file: &str, text: &str) -> (Option<Calendar>, Vec<Diagnostic>) {
    let mut r = Reader {
        file,
        diags: Vec::new(),
    };
    let Some(root) = yaml::parse_file(file, text, &mut r.diags) else {
        return (None, r.diags);
    };
    let cal = r.calendar(&root);
    let ok = !r.diags.iter().any(Diagnostic::is_error);
    (cal.filter(|_| ok), r.diags)
}

struct Reader<'a> {
    file: &'a str,
    diags: Vec<Diagnostic>,
}

/// One time range as written, placed on the weekday it applies to.
#[derive(Clone)]
struct Placed {
    day: usize,
    shift: Shift,
    text: String,
    span: Span,
}

impl Reader<'_> {
    fn err(&mut self, span: Span, msg: impl Into<String>, hint: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(self.file, span, msg).with_hint(hint));
    }

    /// The entries of a mapping, with unknown keys reported.
    fn fields<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        allowed: &[&str],
    ) -> Option<&'n [(Key, Node)]> {
        yaml::fields(self.file, node, what, allowed, &mut self.diags).map(|f| f.entries)
    }

    fn calendar(&mut self, root: &Node) -> Option<Calendar> {
        let entries = self.fields(root, "the calendar file", CALENDAR_FIELDS)?;
        let get = |name: &str| entries.iter().find(|(k, _)| k.name == name).map(|(_, v)| v);
        let name = match get("calendar") {
            Some(n) => self.name(n),
            None => {
                self.err(
                    root.span,
                    "missing `calendar:` (the calendar's name)",
                    "add e.g. `calendar: support-hours` at the top; rules use this name",
                );
                None
            }
        };
        let zone = match get("timezone") {
            Some(n) => self.zone(n),
            None => {
                self.err(
                    root.span,
                    "missing `timezone:`",
                    "add the IANA name of the team's time zone, e.g. `timezone: Europe/London`",
                );
                None
            }
        };
        let week = match get("hours") {
            Some(n) => self.hours(n),
            None => {
                self.err(
                    root.span,
                    "missing `hours:`",
                    "add e.g. `hours: { weekdays: 09:00-17:30 }`, or `hours: always` for 24/7",
                );
                None
            }
        };
        let holidays = get("holidays")
            .map(|n| self.holidays(n))
            .unwrap_or_default();
        let dates = get("dates")
            .map(|n| self.dates(n, &holidays))
            .unwrap_or_default();
        let description = get("description").and_then(|n| n.as_str().map(str::to_string));
        let mut cal = Calendar::new(&name?, zone?, week?, holidays).with_dates(dates);
        cal.file = self.file.to_string();
        cal.description = description;
        Some(cal)
    }

    fn name(&mut self, node: &Node) -> Option<String> {
        crate::definition::value::name(self.file, node, "`calendar`", &mut self.diags)
    }

    fn zone(&mut self, node: &Node) -> Option<Tz> {
        let Some(text) = node.as_str() else {
            self.err(
                node.span,
                format!(
                    "`timezone` must be a time zone name, found {}",
                    node.kind_name()
                ),
                "use an IANA name such as `Europe/London`, `America/New_York` or `UTC`",
            );
            return None;
        };
        if let Ok(tz) = text.parse::<Tz>() {
            return Some(tz);
        }
        let names = chrono_tz::TZ_VARIANTS.iter().map(|t| t.name());
        let exact_but_case = chrono_tz::TZ_VARIANTS
            .iter()
            .map(|t| t.name())
            .find(|n| n.eq_ignore_ascii_case(text));
        let hint = match exact_but_case.or_else(|| did_you_mean(text, names)) {
            Some(s) => format!("did you mean `{s}`?"),
            None => "use an IANA name such as `Europe/London`, `America/New_York` or `UTC` (offsets like `+01:00` do not follow DST)".into(),
        };
        self.err(node.span, format!("unknown time zone `{text}`"), hint);
        None
    }

    fn hours(&mut self, node: &Node) -> Option<[Vec<Shift>; 7]> {
        if node.as_str() == Some("always") {
            return Some(std::array::from_fn(|_| {
                vec![Shift {
                    start: 0,
                    end: DAY_SECONDS,
                }]
            }));
        }
        if node.as_map().is_none() {
            self.err(
                node.span,
                format!(
                    "`hours` must map days to working times, found {}",
                    node.kind_name()
                ),
                "for example `hours: { weekdays: 09:00-17:30 }`, or `hours: always` for 24/7",
            );
            return None;
        }
        let entries = self.fields(node, "`hours`", DAY_KEYS)?;
        // A misspelled day was reported already; an empty week would only repeat it.
        let misspelled = entries
            .iter()
            .any(|(k, _)| !DAY_KEYS.contains(&k.name.as_str()));
        let mut ok = true;
        // For each weekday, the ranges of the most specific key that mentions it.
        let mut chosen: [(u8, Vec<Placed>); 7] = Default::default();
        for (key, value) in entries {
            let (rank, days): (u8, Vec<usize>) = match key.name.as_str() {
                "daily" => (1, (0..7).collect()),
                "weekdays" => (2, (0..5).collect()),
                "weekend" => (2, vec![5, 6]),
                other => match DAY_KEYS[..7].iter().position(|d| *d == other) {
                    Some(d) => (3, vec![d]),
                    None => continue,
                },
            };
            let Some(ranges) = self.ranges(value, &key.name) else {
                ok = false;
                continue;
            };
            for d in days {
                if chosen[d].0 < rank {
                    chosen[d] = (
                        rank,
                        ranges
                            .iter()
                            .map(|(shift, text, span)| Placed {
                                day: d,
                                shift: *shift,
                                text: text.clone(),
                                span: *span,
                            })
                            .collect(),
                    );
                }
            }
        }
        if !ok {
            return None;
        }
        let placed: Vec<Placed> = chosen.into_iter().flat_map(|(_, p)| p).collect();
        if placed.is_empty() {
            if misspelled {
                return None;
            }
            self.err(
                node.span,
                "the calendar has no working hours",
                "give at least one day a time range, e.g. `weekdays: 09:00-17:30`, or write `hours: always` for 24/7",
            );
            return None;
        }
        if !self.no_overlaps(&placed) {
            return None;
        }
        let mut week: [Vec<Shift>; 7] = Default::default();
        for p in placed {
            week[p.day].push(p.shift);
        }
        Some(week)
    }

    /// The ranges of one `hours` entry: a range, a list of ranges, or `closed`.
    fn ranges(&mut self, node: &Node, key: &str) -> Option<Vec<(Shift, String, Span)>> {
        let items: Vec<&Node> = match &node.value {
            Value::Str(s, _) if s.trim() == "closed" => return Some(Vec::new()),
            Value::Str(..) => vec![node],
            Value::Seq(items) => items.iter().collect(),
            _ => {
                self.err(
                    node.span,
                    format!(
                        "`{key}` must be a time range, a list of them, or `closed`, found {}",
                        node.kind_name()
                    ),
                    RANGE_HINT,
                );
                return None;
            }
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            let Some(text) = item.as_str() else {
                self.err(
                    item.span,
                    format!(
                        "a working time must be a range like `09:00-17:30`, found {}",
                        item.kind_name()
                    ),
                    RANGE_HINT,
                );
                ok = false;
                continue;
            };
            match parse_range(text) {
                Ok(shift) => out.push((shift, text.trim().to_string(), item.span)),
                Err(RangeError::Syntax) => {
                    self.err(
                        item.span,
                        format!("`{text}` is not a time range"),
                        RANGE_HINT,
                    );
                    ok = false;
                }
                Err(RangeError::EndBeforeStart) => {
                    self.err(
                        item.span,
                        format!("`{text}` ends before it starts"),
                        "swap the times; for a shift that runs past midnight add `+1` to the end, e.g. `22:00-06:00+1`",
                    );
                    ok = false;
                }
                Err(RangeError::Empty) => {
                    self.err(
                        item.span,
                        format!("`{text}` is empty"),
                        "a working time must end after it starts; for a 24-hour day write `00:00-24:00`",
                    );
                    ok = false;
                }
                Err(RangeError::LongerThanDay) => {
                    self.err(
                        item.span,
                        format!("`{text}` is longer than a day"),
                        "with `+1` the end must be at or before the start time of the next day",
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn no_overlaps(&mut self, placed: &[Placed]) -> bool {
        const WEEK: u32 = 7 * DAY_SECONDS;
        let at = |p: &Placed| {
            let base = p.day as u32 * DAY_SECONDS;
            (base + p.shift.start, base + p.shift.end)
        };
        let mut seen: Vec<(Span, Span)> = Vec::new();
        let mut ok = true;
        for (i, a) in placed.iter().enumerate() {
            for b in &placed[i + 1..] {
                let (a0, a1) = at(a);
                let (b0, b1) = at(b);
                // Sunday's late shifts run into Monday: compare on a circular week.
                let overlap = |x0: u32, x1: u32, y0: u32, y1: u32| x0 < y1 && y0 < x1;
                let hit = overlap(a0, a1, b0, b1)
                    || overlap(a0 + WEEK, a1 + WEEK, b0, b1)
                    || overlap(a0, a1, b0 + WEEK, b1 + WEEK);
                if !hit {
                    continue;
                }
                // Report at whichever was written later; a `weekdays:` range can clash on several days.
                let (first, later) = if a.span <= b.span { (a, b) } else { (b, a) };
                if seen.contains(&(first.span, later.span)) {
                    continue;
                }
                seen.push((first.span, later.span));
                let msg = if first.day == later.day {
                    format!(
                        "`{}` overlaps `{}` on {}",
                        later.text, first.text, DAY_NAMES[later.day]
                    )
                } else {
                    format!(
                        "`{}` on {} overlaps `{}` from {}",
                        later.text, DAY_NAMES[later.day], first.text, DAY_NAMES[first.day]
                    )
                };
                self.err(
                    later.span,
                    msg,
                    "working times must not overlap; merge them into one range or shorten one",
                );
                ok = false;
            }
        }
        ok
    }

    /// `dates:`: hours of their own on some dates, e.g. `12-24: 08:00-12:00`.
    fn dates(&mut self, node: &Node, holidays: &[Holiday]) -> BTreeMap<HolidayDate, Vec<Shift>> {
        let mut out = BTreeMap::new();
        let Some(entries) = node.as_map() else {
            self.err(
                node.span,
                format!("`dates` must map dates to working times, found {}", node.kind_name()),
                "for example:\n    dates:\n      12-24: 08:00-12:00\n      2026-12-31: [08:00-12:00, 13:00-15:00]",
            );
            return out;
        };
        for (key, value) in entries {
            let Some(date) = parse_holiday(key.name.trim()) else {
                self.err(key.span, format!("`{}` is not a date", key.name), DATE_HINT);
                continue;
            };
            // Closed by a holiday every time it comes round: its hours could never apply.
            let closed = holidays.iter().any(|h| match (h.date, date) {
                (a, b) if a == b => true,
                (HolidayDate::Yearly { month, day }, HolidayDate::On(d)) => {
                    use chrono::Datelike;
                    d.month() == month && d.day() == day
                }
                _ => false,
            });
            if closed {
                self.err(
                    key.span,
                    format!("`{}` is a holiday and also has hours of its own", key.name),
                    "keep it in one place: remove it from `holidays` to open with these hours, or from `dates` to close",
                );
                continue;
            }
            let Some(ranges) = self.ranges(value, &key.name) else {
                continue;
            };
            let mut shifts: Vec<(Shift, String, Span)> = ranges;
            shifts.sort_by_key(|(s, _, _)| *s);
            let mut ok = true;
            for (shift, text, span) in &shifts {
                if shift.end > DAY_SECONDS {
                    self.err(
                        *span,
                        format!("`{text}` runs past midnight"),
                        "hours on one date end by 24:00; give the next date hours of its own for the rest",
                    );
                    ok = false;
                }
            }
            for pair in shifts.windows(2) {
                if pair[1].0.start < pair[0].0.end {
                    self.err(
                        pair[1].2,
                        format!("`{}` overlaps `{}` on {}", pair[1].1, pair[0].1, key.name),
                        "working times must not overlap; merge them into one range or shorten one",
                    );
                    ok = false;
                }
            }
            if ok
                && out
                    .insert(date, shifts.into_iter().map(|(s, _, _)| s).collect())
                    .is_some()
            {
                self.diags.push(Diagnostic::warning(
                    self.file,
                    key.span,
                    "this date is listed twice; the last one counts",
                ));
            }
        }
        out
    }

    fn holidays(&mut self, node: &Node) -> Vec<Holiday> {
        let Value::Seq(items) = &node.value else {
            self.err(
                node.span,
                format!("`holidays` must be a list of dates, found {}", node.kind_name()),
                "for example:\n    holidays:\n      - 2026-12-25\n      - { date: 01-01, name: New Year's Day }",
            );
            return Vec::new();
        };
        let mut out: Vec<Holiday> = Vec::new();
        for item in items {
            let (date_node, name) = match &item.value {
                Value::Map(_) => {
                    let Some(entries) = self.fields(item, "a holiday", HOLIDAY_FIELDS) else {
                        continue;
                    };
                    let get = |k: &str| entries.iter().find(|(e, _)| e.name == k).map(|(_, v)| v);
                    let Some(d) = get("date") else {
                        self.err(
                            item.span,
                            "holiday has no `date`",
                            "write e.g. `{ date: 2026-12-25, name: Christmas Day }`",
                        );
                        continue;
                    };
                    (d, get("name").and_then(|n| n.as_str()).map(str::to_string))
                }
                _ => (item, None),
            };
            let Some(date) = self.holiday_date(date_node) else {
                continue;
            };
            if out.iter().any(|h| h.date == date) {
                self.diags.push(Diagnostic::warning(
                    self.file,
                    date_node.span,
                    "this holiday is listed twice",
                ));
                continue;
            }
            out.push(Holiday { date, name });
        }
        out
    }

    fn holiday_date(&mut self, node: &Node) -> Option<HolidayDate> {
        let parsed = node.as_str().and_then(|s| parse_holiday(s.trim()));
        if parsed.is_none() {
            let shown = match &node.value {
                Value::Str(s, _) => format!("`{s}` is not a date"),
                _ => format!("a holiday must be a date, found {}", node.kind_name()),
            };
            self.err(node.span, shown, DATE_HINT);
        }
        parsed
    }
}

enum RangeError {
    Syntax,
    EndBeforeStart,
    Empty,
    LongerThanDay,
}

/// `HH:MM-HH:MM` (seconds optional), optionally `+1` after the end for a shift that runs past midnight.
fn parse_range(text: &str) -> Result<Shift, RangeError> {
    let text = text.trim();
    let (body, next_day) = match text.strip_suffix("+1") {
        Some(b) => (b.trim_end(), true),
        None => (text, false),
    };
    let (a, b) = body.split_once('-').ok_or(RangeError::Syntax)?;
    let start = parse_clock(a.trim()).ok_or(RangeError::Syntax)?;
    let end = parse_clock(b.trim()).ok_or(RangeError::Syntax)?;
    if start >= DAY_SECONDS {
        return Err(RangeError::Syntax);
    }
    if next_day {
        if end >= DAY_SECONDS {
            return Err(RangeError::Syntax);
        }
        if end > start {
            return Err(RangeError::LongerThanDay);
        }
        return Ok(Shift {
            start,
            end: end + DAY_SECONDS,
        });
    }
    match end.cmp(&start) {
        std::cmp::Ordering::Less => Err(RangeError::EndBeforeStart),
        std::cmp::Ordering::Equal => Err(RangeError::Empty),
        std::cmp::Ordering::Greater => Ok(Shift { start, end }),
    }
}

/// `HH:MM` or `HH:MM:SS` as seconds after midnight; `24:00` is allowed (the end of the day).
fn parse_clock(s: &str) -> Option<u32> {
    let mut parts = s.split(':');
    let (h, m, sec) = (parts.next()?, parts.next()?, parts.next());
    if parts.next().is_some() {
        return None;
    }
    let digits = |x: &str, lens: std::ops::RangeInclusive<usize>| {
        lens.contains(&x.len()) && x.chars().all(|c| c.is_ascii_digit())
    };
    if !digits(h, 1..=2) || !digits(m, 2..=2) || sec.is_some_and(|x| !digits(x, 2..=2)) {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    let sec: u32 = sec.map_or(Some(0), |x| x.parse().ok())?;
    let seconds = h * 3_600 + m * 60 + sec;
    (m < 60 && sec < 60 && seconds <= DAY_SECONDS).then_some(seconds)
}

/// `YYYY-MM-DD` (one day) or `MM-DD` (that day every year).
fn parse_holiday(s: &str) -> Option<HolidayDate> {
    let parts: Vec<&str> = s.split('-').collect();
    let num = |p: &str, len: usize| {
        (p.len() == len && p.chars().all(|c| c.is_ascii_digit()))
            .then(|| p.parse::<u32>().ok())
            .flatten()
    };
    match parts.as_slice() {
        [y, m, d] => {
            let date = NaiveDate::from_ymd_opt(num(y, 4)? as i32, num(m, 2)?, num(d, 2)?)?;
            Some(HolidayDate::On(date))
        }
        [m, d] => {
            let (month, day) = (num(m, 2)?, num(d, 2)?);
            // A leap year, so that 02-29 is accepted (it applies in leap years only).
            NaiveDate::from_ymd_opt(2000, month, day)?;
            Some(HolidayDate::Yearly { month, day })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let (cal, diags) = read("c.yaml", text);
        assert!(cal.is_none(), "expected errors for:\n{text}");
        diags.iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn reads_split_shifts_groups_and_holidays() {
        let (cal, diags) = read(
            "support.yaml",
            "calendar: support\ntimezone: Europe/London\nhours:\n  weekdays: [09:00-12:00, 13:00-17:30]\n  fri: 09:00-16:00\n  sat: closed\nholidays:\n  - 2026-12-25\n  - { date: 01-01, name: New Year }\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let cal = cal.unwrap();
        assert_eq!(cal.zone, chrono_tz::Europe::London);
        assert_eq!(
            cal.week[0],
            vec![
                Shift {
                    start: 32400,
                    end: 43200
                },
                Shift {
                    start: 46800,
                    end: 63000
                }
            ]
        );
        // The single day overrides the group.
        assert_eq!(
            cal.week[4],
            vec![Shift {
                start: 32400,
                end: 57600
            }]
        );
        assert!(cal.week[5].is_empty() && cal.week[6].is_empty());
        assert!(cal.is_holiday(NaiveDate::from_ymd_opt(2026, 12, 25).unwrap()));
        assert!(cal.is_holiday(NaiveDate::from_ymd_opt(2031, 1, 1).unwrap()));
        assert!(!cal.is_holiday(NaiveDate::from_ymd_opt(2027, 12, 25).unwrap()));
        assert_eq!(cal.holidays[1].name.as_deref(), Some("New Year"));
    }

    #[test]
    fn overnight_shift_and_always() {
        let (cal, _) = read(
            "n.yaml",
            "calendar: nights\ntimezone: UTC\nhours: { daily: 22:00-06:00+1 }\n",
        );
        assert_eq!(
            cal.unwrap().week[3],
            vec![Shift {
                start: 79200,
                end: 108000
            }]
        );
        let (cal, _) = read("a.yaml", "calendar: always\ntimezone: UTC\nhours: always\n");
        assert_eq!(
            cal.unwrap().week[6],
            vec![Shift {
                start: 0,
                end: 86400
            }]
        );
    }

    #[test]
    fn dates_and_seconds_are_checked_where_written() {
        let e = errors(
            "calendar: c\ntimezone: UTC\nhours: { weekdays: 08:30:30-17:00:60 }\ndates:\n  12-32: 08:00-12:00\n  12-25: 08:00-12:00\n  12-24: 22:00-02:00+1\n  12-31: [08:00-12:00, 11:00-13:00]\nholidays: [12-25]\n",
        );
        let expect = [
            "c.yaml:3:20: error: `08:30:30-17:00:60` is not a time range",
            "c.yaml:5:3: error: `12-32` is not a date",
            "c.yaml:6:3: error: `12-25` is a holiday and also has hours of its own",
            "c.yaml:7:10: error: `22:00-02:00+1` runs past midnight",
            "c.yaml:8:24: error: `11:00-13:00` overlaps `08:00-12:00` on 12-31",
        ];
        assert_eq!(e.len(), expect.len(), "{e:#?}");
        for (got, want) in e.iter().zip(expect) {
            assert!(got.starts_with(want), "{got}\n  wanted {want}");
        }
        let e = errors("calendar: c\ntimezone: UTC\nhours: { weekdays: 08:00-17:00 }\ndates:\n  2027-12-25: 08:00-12:00\nholidays: [12-25]\n");
        assert!(
            e[0].starts_with(
                "c.yaml:5:3: error: `2027-12-25` is a holiday and also has hours of its own"
            ),
            "{e:?}"
        );
        // A holiday on one date wins over a yearly entry that year.
        let (cal, diags) = read("c.yaml", "calendar: c\ntimezone: UTC\nhours: { weekdays: 08:00-17:00 }\ndates:\n  12-24: 08:00-12:00\nholidays: [2026-12-24]\n");
        assert!(diags.is_empty(), "{diags:?}");
        let cal = cal.unwrap();
        assert!(cal
            .shifts_on(NaiveDate::from_ymd_opt(2026, 12, 24).unwrap())
            .is_empty());
        assert_eq!(
            cal.shifts_on(NaiveDate::from_ymd_opt(2027, 12, 24).unwrap())
                .len(),
            1
        );
        assert_eq!(parse_clock("08:30:30"), Some(8 * 3_600 + 30 * 60 + 30));
        assert_eq!(parse_clock("24:00"), Some(DAY_SECONDS));
        assert_eq!(parse_clock("24:00:01"), None);
        assert_eq!(parse_clock("8:3"), None);
    }

    #[test]
    fn misspellings_get_suggestions() {
        let e = errors(
            "calendar: c\ntimezone: Europe/Londn\nhours: { weekdays: 09:00-17:00 }\nholidyas: []\n",
        );
        assert_eq!(
            e,
            [
                "c.yaml:4:1: error: unknown field `holidyas` in the calendar file\n  hint: did you mean `holidays`?",
                "c.yaml:2:11: error: unknown time zone `Europe/Londn`\n  hint: did you mean `Europe/London`?",
            ]
        );
        let e = errors("calendar: c\ntimezone: america/new_york\nhours:\n  wekdays: 09:00-17:00\n");
        // Only the two mistakes: an unknown day does not also report an empty week.
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("did you mean `America/New_York`?"), "{e:?}");
        assert!(
            e[1].contains("unknown field `wekdays` in `hours`")
                && e[1].contains("did you mean `weekdays`?"),
            "{e:?}"
        );
    }

    #[test]
    fn bad_ranges_are_explained() {
        let e = errors("calendar: c\ntimezone: UTC\nhours:\n  mon: 17:00-09:00\n  tue: 9-17\n  wed: 10:00-10:00\n  thu: 10:00-11:00+1\n");
        assert!(
            e[0].starts_with("c.yaml:4:8: error: `17:00-09:00` ends before it starts"),
            "{e:?}"
        );
        assert!(e[0].contains("+1"));
        assert!(
            e[1].starts_with("c.yaml:5:8: error: `9-17` is not a time range"),
            "{e:?}"
        );
        assert!(e[2].contains("`10:00-10:00` is empty"), "{e:?}");
        assert!(
            e[3].contains("`10:00-11:00+1` is longer than a day"),
            "{e:?}"
        );
    }

    #[test]
    fn overlaps_are_found_within_and_across_days() {
        let e = errors("calendar: c\ntimezone: UTC\nhours:\n  mon: [09:00-14:00, 13:00-17:30]\n");
        assert_eq!(e, ["c.yaml:4:22: error: `13:00-17:30` overlaps `09:00-14:00` on Monday\n  hint: working times must not overlap; merge them into one range or shorten one"]);
        // Sunday night runs into Monday morning.
        let e = errors(
            "calendar: c\ntimezone: UTC\nhours:\n  sun: 22:00-06:00+1\n  weekdays: 05:00-09:00\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("`05:00-09:00` on Monday overlaps `22:00-06:00+1` from Sunday"),
            "{e:?}"
        );
        // Adjacent ranges are fine.
        assert!(read(
            "c.yaml",
            "calendar: c\ntimezone: UTC\nhours:\n  mon: [09:00-12:00, 12:00-17:00]\n"
        )
        .0
        .is_some());
    }

    #[test]
    fn bad_dates_and_missing_parts() {
        let e = errors("calendar: c\ntimezone: UTC\nhours: { weekdays: 09:00-17:00 }\nholidays: [2026-02-30, 13-01, { name: x }, 20261225]\n");
        assert!(e[0].contains("`2026-02-30` is not a date"), "{e:?}");
        assert!(e[1].contains("`13-01` is not a date"), "{e:?}");
        assert!(e[2].contains("holiday has no `date`"), "{e:?}");
        assert!(
            e[3].contains("a holiday must be a date, found an integer"),
            "{e:?}"
        );
        let e = errors("description: x\n");
        assert_eq!(e.len(), 3, "{e:?}");
        let e = errors("calendar: c\ntimezone: UTC\nhours: { sat: closed }\n");
        assert!(e[0].contains("no working hours"), "{e:?}");
    }
}
