//! SLA clocks: a business-time target on a calendar that can be paused (e.g. while waiting on
//! the customer) and resumed with the time that was left.
//!
//! Every change is an [`SlaEvent`] carrying what was decided when it happened, including the
//! business time a run used; [`SlaClock::apply`] folds events without consulting calendars, so
//! a journal of events rebuilds the same clock even after a calendar file changes. Queries
//! (deadline, warning time, state) use the calendars as they are now.

use super::time::{format_ms, TimeError};
use super::{Calendars, UnknownCalendar};
use crate::definition::duration::MAX_MS;
use serde::{Deserialize, Serialize};

/// One change to an SLA clock, in the form a journal records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "sla", rename_all = "snake_case")]
pub enum SlaEvent {
    Started {
        at: i64,
        calendar: String,
        target_ms: i64,
    },
    /// `used_ms`: business time counted by the run this pause ends.
    Paused {
        at: i64,
        reason: String,
        used_ms: i64,
    },
    Resumed {
        at: i64,
    },
    /// A new calendar or target from now on; time already used stays as it was counted.
    /// `used_ms`: business time of the run this change ends (0 while paused).
    PolicyChanged {
        at: i64,
        calendar: String,
        target_ms: i64,
        used_ms: i64,
    },
}

impl SlaEvent {
    pub fn at(&self) -> i64 {
        match self {
            SlaEvent::Started { at, .. }
            | SlaEvent::Paused { at, .. }
            | SlaEvent::Resumed { at }
            | SlaEvent::PolicyChanged { at, .. } => *at,
        }
    }
}

/// A span during which the clock ran on one calendar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub calendar: String,
    pub from: i64,
    pub until: Option<i64>,
    /// Business time counted, fixed when the run ends.
    pub used_ms: i64,
}

/// A span during which the clock was stopped, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub from: i64,
    pub until: Option<i64>,
    pub reason: String,
}

/// The state of one SLA clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaClock {
    /// The calendar the next run counts on.
    pub calendar: String,
    pub target_ms: i64,
    pub started_at: i64,
    /// Oldest first; only the last may be open, and then the clock is running.
    pub runs: Vec<Run>,
    /// Oldest first; only the last may be open, and then the clock is paused.
    pub pauses: Vec<Pause>,
    /// When the clock last changed; later changes and queries may not be earlier.
    pub changed_at: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlaState {
    Running,
    /// Stopped before the target was used up.
    Paused,
    /// Running, with at least the warning share of the target used.
    Warned,
    /// The target is used up; this stays so even if the clock is paused afterwards.
    Breached,
}

/// An SLA clock as seen at one instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaStatus {
    pub state: SlaState,
    pub used_ms: i64,
    /// Negative once breached and still running.
    pub remaining_ms: i64,
    /// None while paused before the target is used up.
    pub deadline: Option<i64>,
    pub warn_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlaError {
    #[error(transparent)]
    UnknownCalendar(#[from] UnknownCalendar),
    #[error(transparent)]
    Time(#[from] TimeError),
    #[error("the SLA clock is already paused (since {0})")]
    AlreadyPaused(String),
    #[error("the SLA clock is not paused")]
    NotPaused,
    #[error("{at} is before the SLA clock's last change at {last}")]
    OutOfOrder { at: String, last: String },
    #[error("an SLA target must be more than zero and at most ten years, not {0} ms")]
    BadTarget(i64),
    #[error("a warning share must be 0 to 100 percent, not {0}")]
    BadPercent(u32),
    #[error("an SLA clock's history must begin with `started`, and only once")]
    BadHistory,
}

type Result<T> = std::result::Result<T, SlaError>;

impl SlaClock {
    /// Start a clock at `at` with `target_ms` of business time on `calendar`.
    pub fn start(
        calendars: &Calendars,
        calendar: &str,
        at: i64,
        target_ms: i64,
    ) -> Result<(SlaClock, SlaEvent)> {
        calendars.get(calendar)?;
        check_target(target_ms)?;
        let ev = SlaEvent::Started {
            at,
            calendar: calendar.to_string(),
            target_ms,
        };
        Ok((SlaClock::replay(std::slice::from_ref(&ev))?, ev))
    }

    /// Rebuild a clock from its events, oldest first.
    pub fn replay(events: &[SlaEvent]) -> Result<SlaClock> {
        let Some((
            SlaEvent::Started {
                at,
                calendar,
                target_ms,
            },
            rest,
        )) = events.split_first()
        else {
            return Err(SlaError::BadHistory);
        };
        let mut clock = SlaClock {
            calendar: calendar.clone(),
            target_ms: *target_ms,
            started_at: *at,
            runs: vec![Run {
                calendar: calendar.clone(),
                from: *at,
                until: None,
                used_ms: 0,
            }],
            pauses: Vec::new(),
            changed_at: *at,
        };
        for ev in rest {
            clock.apply(ev)?;
        }
        Ok(clock)
    }

    /// Fold one event into the clock. Needs no calendar: the event carries what was counted.
    pub fn apply(&mut self, ev: &SlaEvent) -> Result<()> {
        self.not_before(ev.at())?;
        match ev {
            SlaEvent::Started { .. } => return Err(SlaError::BadHistory),
            SlaEvent::Paused {
                at,
                reason,
                used_ms,
            } => {
                self.close_run(*at, *used_ms)?;
                self.pauses.push(Pause {
                    from: *at,
                    until: None,
                    reason: reason.clone(),
                });
            }
            SlaEvent::Resumed { at } => {
                let pause = self
                    .pauses
                    .last_mut()
                    .filter(|p| p.until.is_none())
                    .ok_or(SlaError::NotPaused)?;
                pause.until = Some(*at);
                self.open_run(*at);
            }
            SlaEvent::PolicyChanged {
                at,
                calendar,
                target_ms,
                used_ms,
            } => {
                check_target(*target_ms)?;
                let running = !self.is_paused();
                if running {
                    self.close_run(*at, *used_ms)?;
                }
                self.calendar = calendar.clone();
                self.target_ms = *target_ms;
                if running {
                    self.open_run(*at);
                }
            }
        }
        self.changed_at = ev.at();
        Ok(())
    }

    /// Stop the clock at `at`; returns the event to record.
    pub fn pause(&mut self, calendars: &Calendars, at: i64, reason: &str) -> Result<SlaEvent> {
        self.not_before(at)?;
        let used_ms = match self.open_run_ref() {
            Some(run) => calendars.get(&run.calendar)?.between(run.from, at)?,
            None => return Err(self.already_paused()),
        };
        let ev = SlaEvent::Paused {
            at,
            reason: reason.to_string(),
            used_ms,
        };
        self.apply(&ev)?;
        Ok(ev)
    }

    /// Start the clock again at `at` with the time that was left; returns the event to record.
    pub fn resume(&mut self, at: i64) -> Result<SlaEvent> {
        let ev = SlaEvent::Resumed { at };
        self.apply(&ev)?;
        Ok(ev)
    }

    /// Count on `calendar` towards `target_ms` from `at` on (e.g. the customer changed plan).
    pub fn change_policy(
        &mut self,
        calendars: &Calendars,
        at: i64,
        calendar: &str,
        target_ms: i64,
    ) -> Result<SlaEvent> {
        self.not_before(at)?;
        calendars.get(calendar)?;
        let used_ms = match self.open_run_ref() {
            Some(run) => calendars.get(&run.calendar)?.between(run.from, at)?,
            None => 0,
        };
        let ev = SlaEvent::PolicyChanged {
            at,
            calendar: calendar.to_string(),
            target_ms,
            used_ms,
        };
        self.apply(&ev)?;
        Ok(ev)
    }

    pub fn is_paused(&self) -> bool {
        self.open_run_ref().is_none()
    }

    /// Business time used by `at` (not before the last change).
    pub fn used(&self, calendars: &Calendars, at: i64) -> Result<i64> {
        self.not_before(at)?;
        let mut used = 0;
        for run in &self.runs {
            used += match run.until {
                Some(_) => run.used_ms,
                None => calendars.get(&run.calendar)?.between(run.from, at)?,
            };
        }
        Ok(used)
    }

    /// When the target is (or was) used up; None while paused with time left.
    pub fn deadline(&self, calendars: &Calendars) -> Result<Option<i64>> {
        self.when_used(calendars, self.target_ms)
    }

    /// When `percent` of the target is (or was) used; None while paused before then.
    pub fn warn_at(&self, calendars: &Calendars, percent: u32) -> Result<Option<i64>> {
        if percent > 100 {
            return Err(SlaError::BadPercent(percent));
        }
        // Integer share, rounded down, so a warning never comes later than the policy says.
        self.when_used(calendars, self.target_ms * i64::from(percent) / 100)
    }

    /// The clock at `at`, warning at `warn_percent` of the target.
    pub fn status(&self, calendars: &Calendars, at: i64, warn_percent: u32) -> Result<SlaStatus> {
        let used_ms = self.used(calendars, at)?;
        let warn_at = self.warn_at(calendars, warn_percent)?;
        let state = if used_ms >= self.target_ms {
            SlaState::Breached
        } else if self.is_paused() {
            SlaState::Paused
        } else if used_ms >= self.target_ms * i64::from(warn_percent) / 100 {
            SlaState::Warned
        } else {
            SlaState::Running
        };
        Ok(SlaStatus {
            state,
            used_ms,
            remaining_ms: self.target_ms - used_ms,
            deadline: self.deadline(calendars)?,
            warn_at,
        })
    }

    /// The instant at which `amount` of business time was or will be used.
    fn when_used(&self, calendars: &Calendars, amount: i64) -> Result<Option<i64>> {
        let mut before = 0;
        for run in &self.runs {
            let fits = match run.until {
                Some(_) => amount - before <= run.used_ms,
                None => true,
            };
            if fits {
                let cal = calendars.get(&run.calendar)?;
                return Ok(Some(cal.add(run.from, amount - before)?));
            }
            before += run.used_ms;
        }
        Ok(None)
    }

    fn open_run_ref(&self) -> Option<&Run> {
        self.runs.last().filter(|r| r.until.is_none())
    }

    fn open_run(&mut self, at: i64) {
        self.runs.push(Run {
            calendar: self.calendar.clone(),
            from: at,
            until: None,
            used_ms: 0,
        });
    }

    fn close_run(&mut self, at: i64, used_ms: i64) -> Result<()> {
        let err = self.already_paused();
        let run = self
            .runs
            .last_mut()
            .filter(|r| r.until.is_none())
            .ok_or(err)?;
        run.until = Some(at);
        run.used_ms = used_ms;
        Ok(())
    }

    fn already_paused(&self) -> SlaError {
        let since = self.pauses.last().map_or(self.changed_at, |p| p.from);
        SlaError::AlreadyPaused(format_ms(since))
    }

    fn not_before(&self, at: i64) -> Result<()> {
        if at < self.changed_at {
            return Err(SlaError::OutOfOrder {
                at: format_ms(at),
                last: format_ms(self.changed_at),
            });
        }
        Ok(())
    }
}

fn check_target(target_ms: i64) -> Result<()> {
    if target_ms <= 0 || target_ms > MAX_MS as i64 {
        return Err(SlaError::BadTarget(target_ms));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{read, Calendars};
    use super::*;

    const H: i64 = 3_600_000;
    const M: i64 = 60_000;

    fn ms(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    fn calendars() -> Calendars {
        let office = read(
            "office.yaml",
            "calendar: office\ntimezone: Europe/London\nhours: { weekdays: 08:00-18:00 }\nholidays: [2026-05-04]\n",
        )
        .0
        .unwrap();
        let always = read(
            "always.yaml",
            "calendar: always\ntimezone: UTC\nhours: always\n",
        )
        .0
        .unwrap();
        Calendars::new([office, always])
    }

    #[test]
    fn pause_keeps_the_remaining_time() {
        let cals = calendars();
        // Monday 09:00 BST, a 4-hour target.
        let (mut clock, _) =
            SlaClock::start(&cals, "office", ms("2026-04-27T08:00:00Z"), 4 * H).unwrap();
        assert_eq!(
            clock.deadline(&cals).unwrap(),
            Some(ms("2026-04-27T12:00:00Z"))
        );
        // Waiting on the customer from 10:00 Monday to Wednesday 14:00: one hour used.
        let ev = clock
            .pause(&cals, ms("2026-04-27T09:00:00Z"), "waiting on customer")
            .unwrap();
        assert_eq!(
            ev,
            SlaEvent::Paused {
                at: ms("2026-04-27T09:00:00Z"),
                reason: "waiting on customer".into(),
                used_ms: H
            }
        );
        let paused = clock.status(&cals, ms("2026-04-28T12:00:00Z"), 75).unwrap();
        assert_eq!(paused.state, SlaState::Paused);
        assert_eq!(
            (paused.used_ms, paused.remaining_ms, paused.deadline),
            (H, 3 * H, None)
        );
        clock.resume(ms("2026-04-29T13:00:00Z")).unwrap();
        // Three hours left: Wednesday 14:00 to 17:00 BST.
        assert_eq!(
            clock.deadline(&cals).unwrap(),
            Some(ms("2026-04-29T16:00:00Z"))
        );
        // 75% is 3h used: one before the pause, two after it.
        assert_eq!(
            clock.warn_at(&cals, 75).unwrap(),
            Some(ms("2026-04-29T15:00:00Z"))
        );
        assert_eq!(
            clock.pauses,
            [Pause {
                from: ms("2026-04-27T09:00:00Z"),
                until: Some(ms("2026-04-29T13:00:00Z")),
                reason: "waiting on customer".into()
            }]
        );
    }

    #[test]
    fn reopening_after_long_pending_does_not_breach() {
        let cals = calendars();
        let (mut clock, _) =
            SlaClock::start(&cals, "office", ms("2026-04-27T08:00:00Z"), 4 * H).unwrap();
        // 3h50m used, then pending for a month.
        clock
            .pause(&cals, ms("2026-04-27T11:50:00Z"), "pending")
            .unwrap();
        let reopened = ms("2026-05-27T10:00:00Z");
        clock.resume(reopened).unwrap();
        let s = clock.status(&cals, reopened, 75).unwrap();
        assert_eq!(s.state, SlaState::Warned);
        assert_eq!(s.remaining_ms, 10 * M);
        assert_eq!(s.deadline, Some(reopened + 10 * M));
        // The warning time is in the past (before the pause), and stays there.
        assert_eq!(s.warn_at, Some(ms("2026-04-27T11:00:00Z")));
        let later = clock.status(&cals, reopened + 10 * M, 75).unwrap();
        assert_eq!(later.state, SlaState::Breached);
    }

    #[test]
    fn a_breach_survives_a_pause() {
        let cals = calendars();
        let (mut clock, _) =
            SlaClock::start(&cals, "office", ms("2026-04-30T16:00:00Z"), H).unwrap();
        // Thursday 17:00 BST + 1h = 18:00; paused the next Tuesday (Monday is a bank holiday).
        clock
            .pause(&cals, ms("2026-05-05T10:00:00Z"), "pending")
            .unwrap();
        let s = clock.status(&cals, ms("2026-05-06T10:00:00Z"), 75).unwrap();
        assert_eq!(s.state, SlaState::Breached);
        assert_eq!(s.deadline, Some(ms("2026-04-30T17:00:00Z")));
        // Thursday 1h, Friday 10h, Tuesday 3h.
        assert_eq!(s.used_ms, 14 * H);
        assert_eq!(s.remaining_ms, -13 * H);
    }

    #[test]
    fn a_policy_change_keeps_used_time_and_pause_history() {
        let cals = calendars();
        let (mut clock, start) =
            SlaClock::start(&cals, "office", ms("2026-04-27T08:00:00Z"), 8 * H).unwrap();
        let p = clock
            .pause(&cals, ms("2026-04-27T10:00:00Z"), "pending")
            .unwrap();
        let r = clock.resume(ms("2026-04-27T12:00:00Z")).unwrap();
        // At 13:00 BST (3h used) the customer upgrades to 24/7 with a 4h target.
        let c = clock
            .change_policy(&cals, ms("2026-04-27T13:00:00Z"), "always", 4 * H)
            .unwrap();
        assert_eq!(
            clock.used(&cals, ms("2026-04-27T13:00:00Z")).unwrap(),
            3 * H
        );
        assert_eq!(clock.pauses.len(), 1);
        // One hour left, counted around the clock now.
        assert_eq!(
            clock.deadline(&cals).unwrap(),
            Some(ms("2026-04-27T14:00:00Z"))
        );
        // The journal rebuilds the same clock, also after a round trip through JSON.
        let events = vec![start, p, r, c];
        let json = serde_json::to_string(&events).unwrap();
        assert!(json.contains(r#""sla":"policy_changed""#), "{json}");
        let back: Vec<SlaEvent> = serde_json::from_str(&json).unwrap();
        assert_eq!(SlaClock::replay(&back).unwrap(), clock);
        let state: SlaClock =
            serde_json::from_str(&serde_json::to_string(&clock).unwrap()).unwrap();
        assert_eq!(state, clock);
    }

    #[test]
    fn misuse_is_refused() {
        let cals = calendars();
        let t = ms("2026-04-27T08:00:00Z");
        let err = SlaClock::start(&cals, "ofice", t, H).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown calendar `ofice` (did you mean `office`?); known calendars: always, office"
        );
        assert_eq!(
            SlaClock::start(&cals, "office", t, 0).unwrap_err(),
            SlaError::BadTarget(0)
        );
        let (mut clock, _) = SlaClock::start(&cals, "office", t, H).unwrap();
        assert_eq!(clock.resume(t + H), Err(SlaError::NotPaused));
        clock.pause(&cals, t + H, "pending").unwrap();
        assert_eq!(
            clock
                .pause(&cals, t + 2 * H, "again")
                .unwrap_err()
                .to_string(),
            "the SLA clock is already paused (since 2026-04-27T09:00:00.000Z)"
        );
        assert!(matches!(clock.resume(t), Err(SlaError::OutOfOrder { .. })));
        assert_eq!(clock.warn_at(&cals, 120), Err(SlaError::BadPercent(120)));
        assert_eq!(SlaClock::replay(&[]), Err(SlaError::BadHistory));
    }
}
