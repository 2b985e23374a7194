//! Business-time functions for rules: `business_add`, `business_sub`, `business_between`,
//! `within_hours`, `next_open`, and by whole days `business_days_add`, `is_business_day`,
//! `next_business_day`, `days_to_next_business_day`.
//!
//! Instants may be RFC 3339 text (like `now`) or epoch milliseconds; a function answers in
//! the form it was given. Calendars are looked up by name on every call, because calendar
//! files are loaded after the shared rule engine is built (and may be reloaded).

use super::time::format_ms;
use super::{Calendar, SharedCalendars};
use crate::definition::Duration;
use rhai::{Engine, EvalAltResult, Position, INT};

type Res<T> = Result<T, Box<EvalAltResult>>;

fn fail<T>(msg: impl ToString) -> Res<T> {
    Err(Box::new(EvalAltResult::ErrorRuntime(
        msg.to_string().into(),
        Position::NONE,
    )))
}

fn instant(s: &str) -> Res<i64> {
    match chrono::DateTime::parse_from_rfc3339(s) {
        Ok(t) => Ok(t.timestamp_millis()),
        Err(_) => fail(format!(
            "`{s}` is not a time; write it like 2026-03-06T16:00:00Z"
        )),
    }
}

fn duration(d: &str) -> Res<i64> {
    Duration::parse(d)
        .map(|d| d.as_millis() as i64)
        .or_else(fail)
}

/// Run `f` on the named calendar, turning a missing calendar or a time error into a rule error.
fn with<T, E: ToString>(
    calendars: &SharedCalendars,
    name: &str,
    f: impl FnOnce(&Calendar) -> Result<T, E>,
) -> Res<T> {
    let set = calendars.get();
    let cal = set.get(name).or_else(fail)?;
    f(cal).or_else(fail)
}

/// `name(calendar, instant, duration)` for every form of instant and duration.
fn register_shift(
    engine: &mut Engine,
    calendars: &SharedCalendars,
    name: &str,
    f: fn(&Calendar, i64, i64) -> Result<i64, super::TimeError>,
) {
    let c = calendars.clone();
    engine.register_fn(name, move |cal: &str, t: &str, d: &str| -> Res<String> {
        let (t, d) = (instant(t)?, duration(d)?);
        with(&c, cal, |k| f(k, t, d)).map(format_ms)
    });
    let c = calendars.clone();
    engine.register_fn(name, move |cal: &str, t: &str, d: INT| -> Res<String> {
        let t = instant(t)?;
        with(&c, cal, |k| f(k, t, d)).map(format_ms)
    });
    let c = calendars.clone();
    engine.register_fn(name, move |cal: &str, t: INT, d: &str| -> Res<INT> {
        let d = duration(d)?;
        with(&c, cal, |k| f(k, t, d))
    });
    let c = calendars.clone();
    engine.register_fn(name, move |cal: &str, t: INT, d: INT| -> Res<INT> {
        with(&c, cal, |k| f(k, t, d))
    });
}

/// An instant as RFC 3339 text or epoch ms, or a date `YYYY-MM-DD`, as a local date.
fn date_of(cal: &Calendar, t: &str) -> Res<chrono::NaiveDate> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return super::time::check_date(d).or_else(fail);
    }
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(i) => cal.date_of(i.timestamp_millis()).or_else(fail),
        Err(_) => fail(format!(
            "`{t}` is not a time or a date; write it like 2026-03-06T16:00:00Z or 2026-03-06"
        )),
    }
}

pub fn register(engine: &mut Engine, calendars: SharedCalendars) {
    register_shift(engine, &calendars, "business_add", Calendar::add);
    register_shift(engine, &calendars, "business_sub", Calendar::sub);
    let c = calendars.clone();
    engine.register_fn(
        "business_days_add",
        move |cal: &str, t: &str, n: INT| -> Res<String> {
            let t = instant(t)?;
            with(&c, cal, |k| k.add_business_days(t, n)).map(format_ms)
        },
    );
    let c = calendars.clone();
    engine.register_fn(
        "business_days_add",
        move |cal: &str, t: INT, n: INT| -> Res<INT> {
            with(&c, cal, |k| k.add_business_days(t, n))
        },
    );
    let c = calendars.clone();
    engine.register_fn("is_business_day", move |cal: &str, t: &str| -> Res<bool> {
        with(&c, cal, |k| date_of(k, t).map(|d| k.is_business_day(d)))
    });
    let c = calendars.clone();
    engine.register_fn("is_business_day", move |cal: &str, t: INT| -> Res<bool> {
        with(&c, cal, |k| k.date_of(t).map(|d| k.is_business_day(d)))
    });
    let c = calendars.clone();
    engine.register_fn(
        "next_business_day",
        move |cal: &str, t: &str| -> Res<String> {
            with(&c, cal, |k| {
                let next = k.next_business_day(date_of(k, t)?).or_else(fail)?;
                Ok::<_, Box<EvalAltResult>>(next.to_string())
            })
        },
    );
    let c = calendars.clone();
    engine.register_fn(
        "next_business_day",
        move |cal: &str, t: INT| -> Res<String> {
            with(&c, cal, |k| {
                let next = k.next_business_day(k.date_of(t)?)?;
                Ok::<_, super::TimeError>(next.to_string())
            })
        },
    );
    let c = calendars.clone();
    engine.register_fn(
        "days_to_next_business_day",
        move |cal: &str, t: INT| -> Res<INT> {
            with(&c, cal, |k| {
                let from = k.date_of(t)?;
                Ok::<_, super::TimeError>((k.next_business_day(from)? - from).num_days())
            })
        },
    );
    let c = calendars.clone();
    engine.register_fn(
        "days_to_next_business_day",
        move |cal: &str, t: &str| -> Res<INT> {
            with(&c, cal, |k| {
                let from = date_of(k, t)?;
                let next = k.next_business_day(from).or_else(fail)?;
                Ok::<_, Box<EvalAltResult>>((next - from).num_days())
            })
        },
    );
    let c = calendars.clone();
    engine.register_fn(
        "business_between",
        move |cal: &str, a: &str, b: &str| -> Res<INT> {
            let (a, b) = (instant(a)?, instant(b)?);
            with(&c, cal, |k| k.between(a, b))
        },
    );
    let c = calendars.clone();
    engine.register_fn(
        "business_between",
        move |cal: &str, a: INT, b: INT| -> Res<INT> { with(&c, cal, |k| k.between(a, b)) },
    );
    let c = calendars.clone();
    engine.register_fn("within_hours", move |cal: &str, t: &str| -> Res<bool> {
        let t = instant(t)?;
        with(&c, cal, |k| k.is_open(t))
    });
    let c = calendars.clone();
    engine.register_fn("within_hours", move |cal: &str, t: INT| -> Res<bool> {
        with(&c, cal, |k| k.is_open(t))
    });
    let c = calendars.clone();
    engine.register_fn("next_open", move |cal: &str, t: &str| -> Res<String> {
        let t = instant(t)?;
        with(&c, cal, |k| k.next_open(t)).map(format_ms)
    });
    let c = calendars;
    engine.register_fn("next_open", move |cal: &str, t: INT| -> Res<INT> {
        with(&c, cal, |k| k.next_open(t))
    });
}

/// SLA clocks for rules. A clock is a plain map kept in `vars` (so every start, pause
/// and resume is journaled with the step that made it, and replays exactly):
///
/// ```text
/// vars.first_response = sla_start("support-hours", now, "4h");
/// vars.first_response = sla_pause(vars.first_response, now, "waiting on customer");
/// vars.first_response = sla_resume(vars.first_response, now);
/// sla_deadline(vars.first_response)        // RFC 3339, or () while paused
/// sla_warn_at(vars.first_response, 75)      // when 75% of the target is used
/// sla_status(vars.first_response, now, 75)  // "running" | "paused" | "warned" | "breached"
/// ```
pub fn register_sla(engine: &mut Engine, calendars: SharedCalendars) {
    use super::sla::{SlaClock, SlaState};
    use rhai::{Dynamic, Map};

    fn clock(m: &Map) -> Res<SlaClock> {
        rhai::serde::from_dynamic(&Dynamic::from_map(m.clone())).or_else(|_| {
            fail("this is not an SLA clock; make one with sla_start(calendar, now, \"4h\")")
        })
    }
    fn map(c: &SlaClock) -> Res<Map> {
        let d = rhai::serde::to_dynamic(c).or_else(fail)?;
        d.try_cast::<Map>()
            .ok_or_else(|| fail::<()>("SLA clock did not serialise").unwrap_err())
    }
    fn percent(p: INT) -> Res<u32> {
        u32::try_from(p).ok().filter(|p| *p <= 100).map_or_else(
            || fail(format!("a warning percent must be 0 to 100, not {p}")),
            Ok,
        )
    }
    fn time_or_unit(t: Option<i64>) -> Dynamic {
        t.map_or(Dynamic::UNIT, |t| Dynamic::from(format_ms(t)))
    }

    let c = calendars.clone();
    engine.register_fn(
        "sla_start",
        move |cal: &str, at: &str, target: &str| -> Res<Map> {
            let (at, target) = (instant(at)?, duration(target)?);
            let (clock, _) = SlaClock::start(&c.get(), cal, at, target).or_else(fail)?;
            map(&clock)
        },
    );
    let c = calendars.clone();
    engine.register_fn(
        "sla_pause",
        move |m: Map, at: &str, reason: &str| -> Res<Map> {
            let mut k = clock(&m)?;
            k.pause(&c.get(), instant(at)?, reason).or_else(fail)?;
            map(&k)
        },
    );
    engine.register_fn("sla_resume", move |m: Map, at: &str| -> Res<Map> {
        let mut k = clock(&m)?;
        k.resume(instant(at)?).or_else(fail)?;
        map(&k)
    });
    let c = calendars.clone();
    engine.register_fn(
        "sla_change",
        move |m: Map, at: &str, cal: &str, target: &str| -> Res<Map> {
            let mut k = clock(&m)?;
            k.change_policy(&c.get(), instant(at)?, cal, duration(target)?)
                .or_else(fail)?;
            map(&k)
        },
    );
    let c = calendars.clone();
    engine.register_fn("sla_deadline", move |m: Map| -> Res<Dynamic> {
        Ok(time_or_unit(clock(&m)?.deadline(&c.get()).or_else(fail)?))
    });
    let c = calendars.clone();
    engine.register_fn("sla_warn_at", move |m: Map, p: INT| -> Res<Dynamic> {
        let p = percent(p)?;
        Ok(time_or_unit(clock(&m)?.warn_at(&c.get(), p).or_else(fail)?))
    });
    let c = calendars.clone();
    engine.register_fn(
        "sla_status",
        move |m: Map, at: &str, p: INT| -> Res<String> {
            let s = clock(&m)?
                .status(&c.get(), instant(at)?, percent(p)?)
                .or_else(fail)?;
            Ok(match s.state {
                SlaState::Running => "running",
                SlaState::Paused => "paused",
                SlaState::Warned => "warned",
                SlaState::Breached => "breached",
            }
            .to_string())
        },
    );
    let c = calendars;
    engine.register_fn("sla_used", move |m: Map, at: &str| -> Res<INT> {
        clock(&m)?.used(&c.get(), instant(at)?).or_else(fail)
    });
}

#[cfg(test)]
mod tests {
    use super::super::{read, Calendars};
    use super::*;

    fn engine() -> (Engine, SharedCalendars) {
        let shared = SharedCalendars::default();
        let mut e = Engine::new();
        register(&mut e, shared.clone());
        (e, shared)
    }

    fn support() -> Calendars {
        let (cal, d) = read(
            "support-hours.yaml",
            "calendar: support-hours\ntimezone: Europe/London\nhours: { weekdays: 08:00-18:00 }\n",
        );
        Calendars::new([cal.unwrap_or_else(|| panic!("{d:?}"))])
    }

    #[test]
    fn rules_do_business_time() {
        let (e, shared) = engine();
        shared.replace(support());
        let due: String = e
            .eval(r#"business_add("support-hours", "2026-03-27T16:00:00Z", "4h")"#)
            .unwrap();
        assert_eq!(due, "2026-03-30T09:00:00.000Z");
        let due_ms: INT = e
            .eval(r#"business_add("support-hours", 1774627200000, 4 * 3600000)"#)
            .unwrap();
        assert_eq!(format_ms(due_ms), "2026-03-30T09:00:00.000Z");
        let used: INT = e
            .eval(r#"business_between("support-hours", "2026-03-27T17:00:00Z", "2026-03-30T08:00:00Z")"#)
            .unwrap();
        assert_eq!(used, 2 * 3_600_000);
        assert!(!e
            .eval::<bool>(r#"within_hours("support-hours", "2026-03-28T10:00:00Z")"#)
            .unwrap());
        let open: String = e
            .eval(r#"next_open("support-hours", "2026-03-28T10:00:00Z")"#)
            .unwrap();
        assert_eq!(open, "2026-03-30T07:00:00.000Z");
    }

    #[test]
    fn rules_count_back_and_by_whole_days() {
        let (e, shared) = engine();
        shared.replace(support());
        let eval = |src: &str| e.eval::<rhai::Dynamic>(src).unwrap().to_string();
        // When must work have started to be done by Monday 09:00 BST with 4h of it?
        assert_eq!(
            eval(r#"business_sub("support-hours", "2026-03-30T08:00:00Z", "4h")"#),
            "2026-03-27T15:00:00.000Z"
        );
        assert_eq!(
            eval(r#"business_sub("support-hours", 1774857600000, "4h")"#),
            "1774623600000"
        );
        // Friday 15:00 GMT plus 3 business days: Wednesday 15:00 BST.
        assert_eq!(
            eval(r#"business_days_add("support-hours", "2026-03-27T15:00:00Z", 3)"#),
            "2026-04-01T14:00:00.000Z"
        );
        assert_eq!(
            eval(r#"business_days_add("support-hours", "2026-04-01T14:00:00Z", -3)"#),
            "2026-03-27T15:00:00.000Z"
        );
        assert_eq!(
            eval(r#"is_business_day("support-hours", "2026-03-28")"#),
            "false"
        );
        assert_eq!(
            eval(r#"is_business_day("support-hours", "2026-03-27T23:30:00Z")"#),
            "true"
        );
        assert_eq!(
            eval(r#"next_business_day("support-hours", "2026-03-27T12:00:00Z")"#),
            "2026-03-30"
        );
        assert_eq!(
            eval(r#"days_to_next_business_day("support-hours", "2026-03-27")"#),
            "3"
        );
        let err = e
            .eval::<rhai::Dynamic>(r#"is_business_day("support-hours", "Friday")"#)
            .unwrap_err();
        assert!(err.to_string().contains("`Friday` is not a time"), "{err}");
        // Dates chrono can write but the calendar cannot count: an error, never a panic.
        for far in ["+262142-12-31", "-262143-01-01", "+10000-01-01"] {
            let err = e
                .eval::<rhai::Dynamic>(&format!(r#"next_business_day("support-hours", "{far}")"#))
                .unwrap_err();
            assert!(
                err.to_string().contains("between the years 1 and 9999"),
                "{err}"
            );
        }
        assert_eq!(
            eval(r#"next_business_day("support-hours", 1774627200000)"#),
            "2026-03-30"
        );
    }

    #[test]
    fn unknown_calendars_and_bad_arguments_are_rule_errors() {
        let (e, shared) = engine();
        let err = e
            .eval::<bool>(r#"within_hours("support-hours", "2026-03-28T10:00:00Z")"#)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown calendar `support-hours`: no calendars are loaded"),
            "{err}"
        );
        shared.replace(support());
        let err = e
            .eval::<bool>(r#"within_hours("suport-hours", "2026-03-28T10:00:00Z")"#)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("did you mean `support-hours`?); known calendars: support-hours"),
            "{err}"
        );
        let err = e
            .eval::<String>(r#"business_add("support-hours", "tomorrow", "4h")"#)
            .unwrap_err();
        assert!(
            err.to_string().contains("`tomorrow` is not a time"),
            "{err}"
        );
        let err = e
            .eval::<String>(r#"business_add("support-hours", "2026-03-28T10:00:00Z", "4 hours")"#)
            .unwrap_err();
        assert!(err.to_string().contains("`4 hours` needs a unit"), "{err}");
    }
}
