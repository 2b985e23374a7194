//! Business-time arithmetic on UTC epoch milliseconds.
//!
//! Each local day's shifts are turned into UTC with that day's own offsets and walked in
//! order. A local wall-clock time becomes the first instant at which the clock shows that
//! time or later: on a spring-forward day a shift starting inside the skipped hour starts
//! when the clocks jump (01:00–05:00 in London is 3 hours), and on a fall-back day a
//! repeated time means its first occurrence (01:00–05:00 is 5 hours). That mapping never
//! goes backwards, so shifts that do not overlap on paper never overlap in UTC.

use super::Calendar;
use crate::definition::duration::MAX_MS;
use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeZone,
};
use std::collections::VecDeque;

const DAY_MS: i64 = 86_400_000;
/// How far ahead a search looks: ten years of durations plus room for closed stretches.
const HORIZON_DAYS: i64 = 4_020;
/// Instants that RFC 3339 can write: years 0001 to 9999.
const MIN_MS: i64 = -62_135_596_800_000;
const MAX_INSTANT_MS: i64 = 253_402_300_799_999;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("calendar `{calendar}` has no working time in the eleven years after {from}")]
    NoWorkingTime { calendar: String, from: String },
    #[error("calendar `{calendar}` does not have {days} business days {direction} {from} within eleven years")]
    NoBusinessDay {
        calendar: String,
        days: u64,
        direction: &'static str,
        from: NaiveDate,
    },
    #[error("calendar `{calendar}` does not have that much working time in the eleven years before {before}")]
    NotEnoughTime { calendar: String, before: String },
    #[error("{0} is not a date between the years 1 and 9999")]
    DateOutOfRange(NaiveDate),
    #[error("{0} ms is not a time between the years 1 and 9999")]
    OutOfRange(i64),
    #[error("business time can be measured over at most ten years")]
    TooLong,
    #[error("a business duration cannot be negative ({0} ms)")]
    Negative(i64),
}

fn check(t: i64) -> Result<i64, TimeError> {
    if (MIN_MS..=MAX_INSTANT_MS).contains(&t) {
        Ok(t)
    } else {
        Err(TimeError::OutOfRange(t))
    }
}

/// A date in the years 1 to 9999, like the instants [`check`] accepts.
pub fn check_date(d: NaiveDate) -> Result<NaiveDate, TimeError> {
    if (1..=9999).contains(&d.year()) {
        Ok(d)
    } else {
        Err(TimeError::DateOutOfRange(d))
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC text, for messages.
pub fn format_ms(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

impl Calendar {
    /// `start` plus `duration_ms` of working time: the instant the last millisecond is worked.
    ///
    /// A deadline that uses up a shift exactly is the end of that shift, not the next opening.
    /// Adding nothing returns `start` unchanged, even out of hours.
    pub fn add(&self, start: i64, duration_ms: i64) -> Result<i64, TimeError> {
        check(start)?;
        if duration_ms < 0 {
            return Err(TimeError::Negative(duration_ms));
        }
        if duration_ms > MAX_MS as i64 {
            return Err(TimeError::TooLong);
        }
        if duration_ms == 0 {
            return Ok(start);
        }
        let mut left = duration_ms;
        for (s, e) in self.walk(start) {
            let s = s.max(start);
            if left <= e - s {
                return Ok(s + left);
            }
            left -= e - s;
        }
        Err(self.closed(start))
    }

    /// `end` minus `duration_ms` of working time: the instant the first millisecond is
    /// worked, so a start that uses a shift from its opening is the opening, not the close
    /// before it. Subtracting nothing returns `end` unchanged, even out of hours.
    pub fn sub(&self, end: i64, duration_ms: i64) -> Result<i64, TimeError> {
        check(end)?;
        if duration_ms < 0 {
            return Err(TimeError::Negative(duration_ms));
        }
        if duration_ms > MAX_MS as i64 {
            return Err(TimeError::TooLong);
        }
        if duration_ms == 0 {
            return Ok(end);
        }
        // The shifts walk forwards only: look back over a growing stretch until it holds
        // enough working time.
        let longest = (HORIZON_DAYS - 2) * DAY_MS;
        let mut span = (2 * duration_ms).max(7 * DAY_MS).min(longest);
        loop {
            let from = end.saturating_sub(span).max(MIN_MS);
            let shifts: Vec<(i64, i64)> = self
                .walk(from)
                .take_while(|(s, _)| *s < end)
                .map(|(s, e)| (s.max(from), e.min(end)))
                .collect();
            let mut left = duration_ms;
            for (s, e) in shifts.iter().rev() {
                if left <= e - s {
                    return Ok(e - left);
                }
                left -= e - s;
            }
            if span >= longest || from == MIN_MS {
                return Err(TimeError::NotEnoughTime {
                    calendar: self.name.clone(),
                    before: format_ms(end),
                });
            }
            span = (span * 4).min(longest);
        }
    }

    /// The version of this calendar in effect at `t`.
    fn version_at(&self, t: i64) -> &Calendar {
        let mut cal = self;
        while let Some(before) = cal.before.as_deref().filter(|_| t < cal.effective_from) {
            cal = before;
        }
        cal
    }

    /// Whether `date` (a local date) has working hours: not a holiday, and some shift
    /// starts that day, as the calendar was at that day's start.
    pub fn is_business_day(&self, date: NaiveDate) -> bool {
        if check_date(date).is_err() {
            return false;
        }
        let start = self.instant(date.and_time(NaiveTime::MIN));
        self.version_at(start)
            .shifts_on(date)
            .iter()
            .next()
            .is_some()
    }

    /// The local date of `t`.
    pub fn date_of(&self, t: i64) -> Result<NaiveDate, TimeError> {
        check(t)?;
        Ok(self.version_at(t).local_date(t))
    }

    /// The first business day after `date`.
    pub fn next_business_day(&self, date: NaiveDate) -> Result<NaiveDate, TimeError> {
        self.business_day_from(date, 1)
    }

    /// `t` moved by `days` business days (back when negative), keeping its local
    /// wall-clock time: Friday 15:00 plus one business day is Monday 15:00, and Saturday
    /// 10:00 plus one is Monday 10:00 (days are counted after `t`'s own date, which need
    /// not be a business day). A time the clocks skip that day becomes the instant they
    /// jump past it. Moving by 0 returns `t` unchanged.
    pub fn add_business_days(&self, t: i64, days: i64) -> Result<i64, TimeError> {
        check(t)?;
        if days == 0 {
            return Ok(t);
        }
        let cal = self.version_at(t);
        let utc = DateTime::from_timestamp_millis(t)
            .expect("checked range")
            .naive_utc();
        let local = cal.zone.from_utc_datetime(&utc).naive_local();
        let date = self.business_day_from(local.date(), days)?;
        Ok(self.version_at(t).instant(date.and_time(local.time())))
    }

    /// The `n`th business day after `from` (before it when `n` is negative).
    fn business_day_from(&self, from: NaiveDate, n: i64) -> Result<NaiveDate, TimeError> {
        check_date(from)?;
        let step = Duration::days(n.signum());
        let mut left = n.unsigned_abs();
        let mut date = from;
        for _ in 0..HORIZON_DAYS {
            date = date
                .checked_add_signed(step)
                .ok_or(TimeError::DateOutOfRange(date))?;
            if self.is_business_day(date) {
                left -= 1;
                if left == 0 {
                    return Ok(date);
                }
            }
        }
        Err(TimeError::NoBusinessDay {
            calendar: self.name.clone(),
            days: n.unsigned_abs(),
            direction: if n < 0 { "before" } else { "after" },
            from,
        })
    }

    /// Working time from `a` to `b`, in milliseconds; negative if `b` is before `a`.
    pub fn between(&self, a: i64, b: i64) -> Result<i64, TimeError> {
        check(a)?;
        check(b)?;
        if b < a {
            return self.between(b, a).map(|v| -v);
        }
        if b - a > MAX_MS as i64 {
            return Err(TimeError::TooLong);
        }
        let mut total = 0;
        for (s, e) in self.walk(a) {
            if s >= b {
                break;
            }
            total += e.min(b) - s.max(a);
        }
        Ok(total)
    }

    /// Whether `t` is inside working hours (a shift includes its start, not its end).
    pub fn is_open(&self, t: i64) -> Result<bool, TimeError> {
        check(t)?;
        Ok(self.walk(t).next().is_some_and(|(s, _)| s <= t))
    }

    /// `t` if it is inside working hours, otherwise the start of the next shift.
    pub fn next_open(&self, t: i64) -> Result<i64, TimeError> {
        check(t)?;
        match self.walk(t).next() {
            Some((s, _)) => Ok(s.max(t)),
            None => Err(self.closed(t)),
        }
    }

    fn closed(&self, from: i64) -> TimeError {
        TimeError::NoWorkingTime {
            calendar: self.name.clone(),
            from: format_ms(from),
        }
    }

    /// Shifts as UTC `[start, end)` that end after `t`, in order: each version's shifts
    /// while that version was in effect, so time before an edit counts as it did then.
    fn walk(&self, t: i64) -> Walk<'_> {
        let mut parts = Vec::new();
        let (mut cal, mut until) = (self, i64::MAX);
        loop {
            match &cal.before {
                Some(before) if t < cal.effective_from => {
                    parts.push((cal, cal.effective_from, until));
                    until = cal.effective_from;
                    cal = before;
                }
                // The oldest version kept counts for all time before it as well.
                Some(_) => {
                    parts.push((cal, cal.effective_from, until));
                    break;
                }
                None => {
                    parts.push((cal, i64::MIN, until));
                    break;
                }
            }
        }
        parts.reverse();
        Walk {
            parts,
            after: t,
            current: None,
        }
    }

    /// This version's shifts that end after `t`, in order, for about eleven years.
    fn days(&self, t: i64) -> Days<'_> {
        // From the day before, whose overnight shift may still be running at `t`.
        let first = self.local_date(t) - Duration::days(1);
        Days {
            cal: self,
            after: t,
            last_end: i64::MIN,
            next_day: first,
            last_day: first + Duration::days(HORIZON_DAYS),
            pending: VecDeque::new(),
        }
    }

    fn local_date(&self, t: i64) -> NaiveDate {
        let utc = DateTime::from_timestamp_millis(t)
            .expect("checked range")
            .naive_utc();
        self.zone.from_utc_datetime(&utc).date_naive()
    }

    /// Offset from UTC at instant `t`, in milliseconds.
    fn offset_ms(&self, t: i64) -> i64 {
        let utc = DateTime::from_timestamp_millis(t)
            .expect("checked range")
            .naive_utc();
        i64::from(
            self.zone
                .offset_from_utc_datetime(&utc)
                .fix()
                .local_minus_utc(),
        ) * 1_000
    }

    /// The first instant at which the wall clock shows `local` or later.
    fn instant(&self, local: NaiveDateTime) -> i64 {
        match self.zone.from_local_datetime(&local) {
            LocalResult::Single(t) => t.timestamp_millis(),
            LocalResult::Ambiguous(a, b) => a.timestamp_millis().min(b.timestamp_millis()),
            LocalResult::None => self.gap_end(local),
        }
    }

    /// For a local time the clocks skip: the instant they jump past it.
    fn gap_end(&self, local: NaiveDateTime) -> i64 {
        let naive = local.and_utc().timestamp_millis();
        // Offsets a day either side are the ones before and after the jump.
        let before = self.offset_ms(naive - DAY_MS);
        let after = self.offset_ms(naive + DAY_MS);
        // At `lo` the clock still shows less than `local`; at `hi` it shows more.
        let (mut lo, mut hi) = (naive - after, naive - before);
        if hi <= lo {
            return hi;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if mid + self.offset_ms(mid) >= naive {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }
}

/// Shifts across versions: `parts` are (version, from, until), oldest first.
struct Walk<'a> {
    parts: Vec<(&'a Calendar, i64, i64)>,
    after: i64,
    current: Option<Days<'a>>,
}

impl Iterator for Walk<'_> {
    type Item = (i64, i64);

    fn next(&mut self) -> Option<(i64, i64)> {
        loop {
            let (cal, from, until) = *self.parts.first()?;
            let after = self.after.max(from);
            let days = self.current.get_or_insert_with(|| cal.days(after));
            match days.next() {
                Some((s, e)) if s < until => {
                    let (s, e) = (s.max(from), e.min(until));
                    if e > s {
                        return Some((s, e));
                    }
                }
                _ => {
                    self.parts.remove(0);
                    self.current = None;
                }
            }
        }
    }
}

/// One version's shifts, day by day.
struct Days<'a> {
    cal: &'a Calendar,
    after: i64,
    /// The end of the last shift queued.
    last_end: i64,
    next_day: NaiveDate,
    last_day: NaiveDate,
    pending: VecDeque<(i64, i64)>,
}

impl Iterator for Days<'_> {
    type Item = (i64, i64);

    fn next(&mut self) -> Option<(i64, i64)> {
        loop {
            while let Some((s, e)) = self.pending.pop_front() {
                if e > self.after {
                    return Some((s, e));
                }
            }
            if self.next_day > self.last_day {
                return None;
            }
            let day = self.next_day;
            self.next_day = day + Duration::days(1);
            let midnight = day.and_time(NaiveTime::MIN);
            for shift in self.cal.shifts_on(day) {
                let s = self
                    .cal
                    .instant(midnight + Duration::seconds(i64::from(shift.start)));
                let e = self
                    .cal
                    .instant(midnight + Duration::seconds(i64::from(shift.end)));
                // A date with its own hours may start inside the night shift of the day
                // before: time is counted once.
                let s = s.max(self.last_end);
                // A shift entirely inside a skipped hour does not happen that day.
                if e > s {
                    self.pending.push_back((s, e));
                    self.last_end = e;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{read, Calendar, Holiday, HolidayDate, Shift};
    use super::*;
    use proptest::prelude::*;

    fn cal(yaml: &str) -> Calendar {
        let (c, d) = read("t.yaml", yaml);
        c.unwrap_or_else(|| panic!("{d:?}"))
    }

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    const H: i64 = 3_600_000;

    fn london() -> Calendar {
        cal("calendar: support\ntimezone: Europe/London\nhours: { weekdays: 08:00-18:00 }\nholidays: [2026-04-03, 2026-04-06, 12-25]\n")
    }

    #[test]
    fn friday_sla_over_spring_forward_weekend() {
        // Scenario: 4 business hours from Friday 16:00 before the clocks go forward.
        let c = london();
        let start = ms("2026-03-27T16:00:00Z"); // 16:00 GMT
                                                // 2h on Friday, then Monday 08:00 BST (07:00 UTC) + 2h.
        assert_eq!(c.add(start, 4 * H).unwrap(), ms("2026-03-30T09:00:00Z"));
        let ny =
            cal("calendar: ny\ntimezone: America/New_York\nhours: { weekdays: 09:00-17:00 }\n");
        // Friday 16:00 EST; Monday 09:00 EDT is 13:00 UTC.
        let deadline = ny.add(ms("2026-03-06T21:00:00Z"), 4 * H).unwrap();
        assert_eq!(deadline, ms("2026-03-09T16:00:00Z"));
    }

    #[test]
    fn deadlines_skip_holidays() {
        let c = london();
        // Thursday 17:00 before Easter: Good Friday and Easter Monday are off.
        let d = c.add(ms("2026-04-02T16:00:00Z"), 2 * H).unwrap();
        assert_eq!(d, ms("2026-04-07T08:00:00Z")); // Tuesday 09:00 BST
                                                   // Yearly 12-25 closes Christmas 2028, a Monday.
        assert_eq!(
            c.next_open(ms("2028-12-25T09:00:00Z")).unwrap(),
            ms("2028-12-26T08:00:00Z")
        );
    }

    #[test]
    fn a_deadline_can_be_closing_time() {
        let c = london();
        let d = c.add(ms("2026-03-27T16:00:00Z"), 2 * H).unwrap();
        assert_eq!(d, ms("2026-03-27T18:00:00Z"));
        assert!(!c.is_open(d).unwrap());
        assert!(c.is_open(d - 1).unwrap());
        // Out of hours, the clock starts at the next opening.
        let d = c.add(ms("2026-03-28T12:00:00Z"), H).unwrap();
        assert_eq!(d, ms("2026-03-30T08:00:00Z"));
    }

    #[test]
    fn dst_days_have_real_lengths() {
        for (zone, spring, autumn) in [
            ("Europe/London", "2026-03-29", "2026-10-25"),
            ("America/New_York", "2026-03-08", "2026-11-01"),
        ] {
            let c = cal(&format!(
                "calendar: night\ntimezone: {zone}\nhours: {{ daily: 01:00-05:00 }}\n"
            ));
            let day = |d: &str| {
                let midnight = NaiveDate::parse_from_str(d, "%Y-%m-%d")
                    .unwrap()
                    .and_time(NaiveTime::MIN);
                let start = c.instant(midnight);
                (start, c.instant(midnight + Duration::days(1)))
            };
            let (a, b) = day(spring);
            assert_eq!(c.between(a, b).unwrap(), 3 * H, "{zone} spring forward");
            let (a, b) = day(autumn);
            assert_eq!(c.between(a, b).unwrap(), 5 * H, "{zone} fall back");
        }
        // The shift starts when the clocks jump: 01:00 GMT becomes 02:00 BST.
        let c = cal("calendar: n\ntimezone: Europe/London\nhours: { daily: 01:30-05:00 }\n");
        assert_eq!(
            c.next_open(ms("2026-03-29T00:00:00Z")).unwrap(),
            ms("2026-03-29T01:00:00Z")
        );
    }

    #[test]
    fn past_dates_use_their_own_offsets() {
        // 2016: US DST began on March 13; a fixed "today" offset would be an hour off.
        let ny =
            cal("calendar: ny\ntimezone: America/New_York\nhours: { weekdays: 09:00-17:00 }\n");
        assert_eq!(
            ny.next_open(ms("2016-03-12T12:00:00Z")).unwrap(),
            ms("2016-03-14T13:00:00Z")
        );
        assert_eq!(
            ny.next_open(ms("2016-03-11T02:00:00Z")).unwrap(),
            ms("2016-03-11T14:00:00Z")
        );
    }

    #[test]
    fn split_and_overnight_shifts() {
        let c = cal("calendar: s\ntimezone: UTC\nhours:\n  mon: [09:00-12:00, 13:00-17:30]\n  fri: 22:00-06:00+1\nholidays: [2026-03-07]\n");
        // Monday 11:00 + 2h: one hour before lunch, one after.
        assert_eq!(
            c.add(ms("2026-03-02T11:00:00Z"), 2 * H).unwrap(),
            ms("2026-03-02T14:00:00Z")
        );
        assert!(!c.is_open(ms("2026-03-02T12:30:00Z")).unwrap());
        assert_eq!(
            c.between(ms("2026-03-02T00:00:00Z"), ms("2026-03-03T00:00:00Z"))
                .unwrap(),
            7 * H + 1_800_000
        );
        // Friday's night shift runs into Saturday, even though that Saturday is a holiday.
        assert!(c.is_open(ms("2026-03-07T03:00:00Z")).unwrap());
        assert_eq!(
            c.add(ms("2026-03-06T23:00:00Z"), 7 * H).unwrap(),
            ms("2026-03-07T06:00:00Z")
        );
        assert_eq!(
            c.next_open(ms("2026-03-07T06:00:00Z")).unwrap(),
            ms("2026-03-09T09:00:00Z")
        );
    }

    #[test]
    fn always_is_plain_time_except_holidays() {
        let a = cal("calendar: a\ntimezone: UTC\nhours: always\n");
        let t = ms("2026-12-24T20:00:00Z");
        assert_eq!(a.add(t, 10 * H).unwrap(), t + 10 * H);
        assert!(a.is_open(t).unwrap());
        let h = Calendar::always(
            "h",
            chrono_tz::UTC,
            vec![Holiday {
                date: HolidayDate::Yearly { month: 12, day: 25 },
                name: None,
            }],
        );
        assert_eq!(h.add(t, 10 * H).unwrap(), ms("2026-12-26T06:00:00Z"));
    }

    #[test]
    fn impossible_requests_are_errors() {
        let c = Calendar::new("closed", chrono_tz::UTC, Default::default(), Vec::new());
        let err = c.next_open(0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "calendar `closed` has no working time in the eleven years after 1970-01-01T00:00:00.000Z"
        );
        let l = london();
        assert_eq!(l.between(0, 20 * 366 * DAY_MS), Err(TimeError::TooLong));
        assert_eq!(l.add(0, -1), Err(TimeError::Negative(-1)));
        assert!(matches!(l.is_open(i64::MAX), Err(TimeError::OutOfRange(_))));
        assert_eq!(
            l.between(ms("2026-03-02T10:00:00Z"), ms("2026-03-02T08:00:00Z")),
            Ok(-2 * H)
        );
    }

    #[test]
    fn an_opening_inside_a_dst_gap_starts_when_the_clocks_jump() {
        // New York, 8 March 2026: 02:00 EST becomes 03:00 EDT, so there is no 02:30.
        let c = cal("calendar: ny\ntimezone: America/New_York\nhours: { daily: 02:30-06:00 }\n");
        let midnight = ms("2026-03-08T05:00:00Z");
        assert_eq!(c.next_open(midnight).unwrap(), ms("2026-03-08T07:00:00Z"));
        assert_eq!(c.between(midnight, midnight + DAY_MS).unwrap(), 3 * H);
        // The day before, 02:30 EST exists: 3.5 hours.
        assert_eq!(
            c.between(midnight - DAY_MS, midnight).unwrap(),
            3 * H + H / 2
        );
    }

    #[test]
    fn subtracting_finds_when_the_work_must_start() {
        let c = london();
        // Monday 09:00 BST minus 4h: Monday's first hour, then Friday 15:00-18:00 GMT.
        assert_eq!(
            c.sub(ms("2026-03-30T08:00:00Z"), 4 * H).unwrap(),
            ms("2026-03-27T15:00:00Z")
        );
        // A start that uses a day from its opening is the opening, not the close before.
        assert_eq!(
            c.sub(ms("2026-03-27T18:00:00Z"), 10 * H).unwrap(),
            ms("2026-03-27T08:00:00Z")
        );
        // Out of hours, counting back starts at the last close.
        let sunday = ms("2026-03-29T12:00:00Z");
        assert_eq!(c.sub(sunday, H).unwrap(), ms("2026-03-27T17:00:00Z"));
        assert_eq!(c.sub(sunday, 0).unwrap(), sunday, "nothing: unchanged");
        // Back over Easter Monday and Good Friday to Thursday 17:00 BST.
        assert_eq!(
            c.sub(ms("2026-04-07T08:00:00Z"), 2 * H).unwrap(),
            ms("2026-04-02T16:00:00Z")
        );
        // Far back: the look-back widens until it holds enough working time.
        let end = ms("2026-06-01T12:00:00Z");
        let start = c.sub(end, 900 * H).unwrap();
        assert_eq!(c.between(start, end).unwrap(), 900 * H);
        assert_eq!(c.sub(end, -1), Err(TimeError::Negative(-1)));
        let closed = Calendar::new("closed", chrono_tz::UTC, Default::default(), Vec::new());
        assert_eq!(
            closed.sub(end, H).unwrap_err().to_string(),
            "calendar `closed` does not have that much working time in the eleven years before 2026-06-01T12:00:00.000Z"
        );
        // The far ends of the calendar are errors, never a panic.
        let last = NaiveDate::from_ymd_opt(9999, 12, 31).unwrap();
        assert!(c.next_business_day(last).is_err());
        let beyond = NaiveDate::from_ymd_opt(262_142, 12, 31).unwrap();
        assert!(c.next_business_day(beyond).is_err());
        assert!(!c.is_business_day(beyond));
    }

    #[test]
    fn business_days_keep_the_wall_clock_time() {
        let c = london();
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        // Friday 15:00 GMT plus one business day is Monday 15:00 BST, across the change.
        assert_eq!(
            c.add_business_days(ms("2026-03-27T15:00:00Z"), 1).unwrap(),
            ms("2026-03-30T14:00:00Z")
        );
        // Counting starts after the start's own date, business day or not.
        assert_eq!(
            c.add_business_days(ms("2026-03-28T10:00:00Z"), 1).unwrap(),
            ms("2026-03-30T09:00:00Z")
        );
        // Over Easter, and back.
        let thursday = ms("2026-04-02T11:00:00Z");
        let tuesday = ms("2026-04-07T11:00:00Z");
        assert_eq!(c.add_business_days(thursday, 1).unwrap(), tuesday);
        assert_eq!(c.add_business_days(tuesday, -1).unwrap(), thursday);
        assert_eq!(c.add_business_days(tuesday, 0).unwrap(), tuesday);
        assert!(c.is_business_day(day(2026, 4, 2)));
        assert!(!c.is_business_day(day(2026, 4, 3)), "Good Friday");
        assert!(!c.is_business_day(day(2026, 4, 4)), "a Saturday");
        assert_eq!(
            c.next_business_day(day(2026, 4, 2)).unwrap(),
            day(2026, 4, 7)
        );
        // A wall-clock time the clocks skip becomes the jump.
        let daily = cal("calendar: d\ntimezone: Europe/London\nhours: { daily: 00:00-24:00 }\n");
        assert_eq!(
            daily
                .add_business_days(ms("2026-03-28T01:30:00Z"), 1)
                .unwrap(),
            ms("2026-03-29T01:00:00Z")
        );
        let closed = Calendar::new("closed", chrono_tz::UTC, Default::default(), Vec::new());
        assert_eq!(
            closed.add_business_days(0, -2).unwrap_err().to_string(),
            "calendar `closed` does not have 2 business days before 1970-01-01 within eleven years"
        );
        assert!(c.add_business_days(0, i64::MIN).is_err(), "never a panic");
    }

    #[test]
    fn dates_with_their_own_hours_and_times_with_seconds() {
        let c = cal("calendar: s\ntimezone: Europe/London\nhours: { weekdays: 08:30:30-17:00 }\ndates:\n  12-24: 08:00-12:00\n  2026-12-31: [08:00-10:00, 11:00-12:00]\nholidays: [12-25]\n");
        let day = |d: &str| {
            let a = ms(&format!("{d}T00:00:00Z"));
            c.between(a, a + DAY_MS).unwrap()
        };
        assert_eq!(day("2026-12-23"), 8 * H + 29 * 60_000 + 30_000);
        assert_eq!(day("2026-12-24"), 4 * H, "Christmas Eve closes at noon");
        assert_eq!(day("2026-12-25"), 0);
        assert_eq!(day("2026-12-31"), 3 * H, "with a break");
        assert!(!c.is_open(ms("2026-12-31T10:30:00Z")).unwrap());
        assert_eq!(
            c.next_open(ms("2026-12-23T08:30:00Z")).unwrap(),
            ms("2026-12-23T08:30:30Z")
        );
        // 24 December 2022 was a Saturday: its own hours make it a business day.
        assert!(c.is_business_day(NaiveDate::from_ymd_opt(2022, 12, 24).unwrap()));
        assert_eq!(day("2022-12-24"), 4 * H);
        // A date's hours that begin inside the night shift before count once.
        let nights = cal("calendar: n\ntimezone: UTC\nhours: { daily: 20:00-08:00+1 }\ndates:\n  2026-06-02: 06:00-10:00\n");
        assert_eq!(
            nights
                .between(ms("2026-06-01T20:00:00Z"), ms("2026-06-02T10:00:00Z"))
                .unwrap(),
            14 * H
        );
    }

    fn any_calendar() -> impl Strategy<Value = Calendar> {
        let shift = (0u32..48, 1u32..48).prop_map(|(s, len)| (s * 1_800, len * 1_800));
        let day = proptest::collection::vec(shift, 0..3).prop_map(|shifts| {
            // Keep a day's shifts apart and inside the day so they never overlap.
            let mut out: Vec<Shift> = Vec::new();
            for (s, len) in shifts {
                let start = out.last().map_or(s, |l| l.end.max(s));
                let end = (start + len).min(super::super::DAY_SECONDS);
                if end > start {
                    out.push(Shift { start, end });
                }
            }
            out
        });
        let zones = prop::sample::select(vec![
            chrono_tz::Europe::London,
            chrono_tz::America::New_York,
            chrono_tz::Australia::Lord_Howe,
            chrono_tz::Asia::Kolkata,
            chrono_tz::UTC,
        ]);
        (proptest::array::uniform7(day), zones).prop_map(|(mut week, zone)| {
            if week.iter().all(Vec::is_empty) {
                week[2].push(Shift {
                    start: 36_000,
                    end: 43_200,
                });
            }
            Calendar::new("p", zone, week, Vec::new())
        })
    }

    /// Any instant in 2025–2027, half of them within three days of a DST change.
    fn any_instant() -> impl Strategy<Value = i64> {
        let changes = prop::sample::select(vec![
            ms("2026-03-08T07:00:00Z"),
            ms("2026-03-29T01:00:00Z"),
            ms("2026-04-05T16:00:00Z"),
            ms("2026-10-04T15:30:00Z"),
            ms("2026-10-25T01:00:00Z"),
            ms("2026-11-01T06:00:00Z"),
        ]);
        prop_oneof![
            ms("2025-01-01T00:00:00Z")..ms("2028-01-01T00:00:00Z"),
            (changes, -3 * DAY_MS..3 * DAY_MS).prop_map(|(t, d)| t + d),
        ]
    }

    proptest! {
        // No regression files: the failing input is printed, and the tree stays clean.
        #![proptest_config(ProptestConfig {
            cases: 300,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn add_and_between_agree(
            c in any_calendar(),
            a in any_instant(),
            d in 0i64..(200 * H),
            e in 0i64..(50 * H),
        ) {
            agree(&c, a, d, e)?;
        }

        /// The same holds across an edit, and the time before it counts as it did then.
        #[test]
        fn an_edited_calendar_agrees_with_its_versions(
            old in any_calendar(),
            new in any_calendar(),
            edit in any_instant(),
            a in any_instant(),
            d in 0i64..(200 * H),
            e in 0i64..(50 * H),
        ) {
            let mut c = new.clone();
            c.effective_from = edit;
            c.before = Some(std::sync::Arc::new(old.clone()));
            agree(&c, a, d, e)?;
            let b = a.max(edit) + d;
            let split = if a < edit {
                old.between(a, edit).unwrap() + new.between(edit, b).unwrap()
            } else {
                new.between(a, b).unwrap()
            };
            prop_assert_eq!(c.between(a, b).unwrap(), split);
        }
    }

    fn agree(c: &Calendar, a: i64, d: i64, e: i64) -> Result<(), TestCaseError> {
        let end = c.add(a, d).unwrap();
        prop_assert!(end >= a);
        prop_assert_eq!(c.between(a, end).unwrap(), d);
        // More work never finishes earlier, and never sooner than plain time allows.
        let later = c.add(a, d + e).unwrap();
        prop_assert!(later >= end);
        prop_assert!(later - a >= d + e);
        // Work done in two parts ends where it ends done at once.
        prop_assert_eq!(c.add(end, e).unwrap(), later);
        // A deadline that consumed time lies within hours or at a shift's end.
        if d > 0 {
            prop_assert!(c.is_open(end - 1).unwrap());
        }
        let open = c.next_open(a).unwrap();
        prop_assert!(open >= a && c.is_open(open).unwrap());
        prop_assert_eq!(c.is_open(a).unwrap(), open == a);
        prop_assert_eq!(c.between(a, open).unwrap(), 0);
        // Counting back from the deadline finds when the work began.
        let begun = c.sub(end, d).unwrap();
        prop_assert!(begun >= a && begun <= end);
        prop_assert_eq!(c.between(begun, end).unwrap(), d);
        prop_assert_eq!(c.between(a, begun).unwrap(), 0);
        Ok(())
    }
}
