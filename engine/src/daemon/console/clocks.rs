//! The SLA clocks of an instance as the console shows them: every variable that is an
//! SLA clock (made by `sla_start` in a rule), read at the daemon's now on the calendars
//! loaded now, so used, remaining and state are in business time.

use crate::calendar::sla::{SlaClock, SlaState};
use crate::calendar::Calendars;
use serde_json::Value;

/// The share of a target after which a running clock shows as warned, when the
/// workflow does not say (rules pass their own share to `sla_status`).
pub const WARN_PERCENT: u32 = 75;

/// The longest target `sla_start` accepts: ten years.
const MAX_TARGET_MS: i64 = 10 * 366 * 86_400_000;

/// One clock, read at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockView {
    /// The variable that holds it (`vars.first_response`).
    pub name: String,
    pub calendar: String,
    pub target_ms: i64,
    pub started_at: i64,
    /// `None` when the clock's calendar is not loaded (the error says so).
    pub reading: Result<Reading, String>,
    /// Each pause: from, until (open while `None`), why.
    pub pauses: Vec<(i64, Option<i64>, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub state: SlaState,
    pub used_ms: i64,
    pub remaining_ms: i64,
    pub deadline: Option<i64>,
    pub warn_at: Option<i64>,
}

/// The SLA clocks among an instance's variables (top level), by name.
pub fn of_vars(vars: &Value, calendars: &Calendars, now: i64) -> Vec<ClockView> {
    let Some(vars) = vars.as_object() else {
        return Vec::new();
    };
    vars.iter()
        .filter_map(|(name, v)| {
            // Only maps shaped like a clock, with a target sla_start could have made (a rule
            // can write any map into a variable).
            let clock: SlaClock = serde_json::from_value(v.clone()).ok()?;
            if !(1..=MAX_TARGET_MS).contains(&clock.target_ms) {
                return None;
            }
            let reading = clock
                .status(calendars, now.max(clock.changed_at), WARN_PERCENT)
                .map(|s| Reading {
                    state: s.state,
                    used_ms: s.used_ms,
                    remaining_ms: s.remaining_ms,
                    deadline: s.deadline,
                    warn_at: s.warn_at,
                })
                .map_err(|e| e.to_string());
            Some(ClockView {
                name: name.clone(),
                calendar: clock.calendar.clone(),
                target_ms: clock.target_ms,
                started_at: clock.started_at,
                reading,
                pauses: clock
                    .pauses
                    .iter()
                    .map(|p| (p.from, p.until, p.reason.clone()))
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::read;

    fn weekdays() -> Calendars {
        let (cal, d) = read(
            "desk.yaml",
            "calendar: desk\ntimezone: Europe/London\nhours: { weekdays: 09:00-17:00 }\n",
        );
        Calendars::new([cal.unwrap_or_else(|| panic!("{d:?}"))])
    }

    fn ms(t: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn a_clock_in_the_variables_is_read_in_business_time() {
        let cals = weekdays();
        // Friday 16:00 London with 4 business hours: due Monday 12:00.
        let (mut clock, _) =
            SlaClock::start(&cals, "desk", ms("2026-11-27T16:00:00Z"), 4 * 3_600_000).unwrap();
        clock
            .pause(&cals, ms("2026-11-27T16:30:00Z"), "waiting on customer")
            .unwrap();
        let vars = serde_json::json!({
            "plan": "pro",
            "first_response": serde_json::to_value(&clock).unwrap(),
        });
        let shown = of_vars(&vars, &cals, ms("2026-11-30T10:00:00Z"));
        assert_eq!(shown.len(), 1, "only the clock: {shown:?}");
        let c = &shown[0];
        assert_eq!(c.name, "first_response");
        let r = c.reading.as_ref().unwrap();
        assert_eq!(r.state, SlaState::Paused);
        assert_eq!(r.used_ms, 30 * 60_000, "half an hour ran before the pause");
        assert_eq!(r.remaining_ms, 3 * 3_600_000 + 30 * 60_000);
        assert_eq!(c.pauses.len(), 1);
        assert_eq!(c.pauses[0].2, "waiting on customer");
    }

    #[test]
    fn a_clock_on_a_calendar_no_longer_loaded_says_so() {
        let cals = weekdays();
        let (clock, _) =
            SlaClock::start(&cals, "desk", ms("2026-11-27T10:00:00Z"), 3_600_000).unwrap();
        let vars = serde_json::json!({ "c": serde_json::to_value(&clock).unwrap() });
        let shown = of_vars(&vars, &Calendars::new([]), ms("2026-11-27T10:30:00Z"));
        let e = shown[0].reading.as_ref().unwrap_err();
        assert!(e.contains("desk"), "{e}");
    }
}
