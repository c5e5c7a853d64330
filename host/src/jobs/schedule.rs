//! Schedules: cron expressions whose ticks queue asynchronous jobs, fired once across all
//! replicas.
//!
//! Every replica polls the store for the schedules due first (one indexed query) and sleeps
//! until the earliest next tick or `JOBS_POLL_MS`. A tick is fired by queueing its job under an
//! id derived from the schedule and the tick time, so that two replicas firing the same tick
//! queue one job; the schedule then moves on by a compare-and-set on the tick it was due at.
//! A tick more than [`MISSED_AFTER`] late was missed (no replica ran): `catch_up: false` skips
//! such ticks with one log line, `true` runs the latest of them once.

use std::{sync::Arc, time::Duration};

use chrono::{TimeZone, Utc};
use croner::{
    parser::{CronParser, Seconds, Year},
    Cron,
};
use plughost_tenancy::schedules::{Advance, ScheduleRecord};

use super::{now_ms, Jobs, NewJob, StoredCall};

/// How late a tick may be and still run: later than this, it was missed.
pub(crate) const MISSED_AFTER: Duration = Duration::from_secs(10);
/// Schedules read per poll.
const UPCOMING: usize = 32;
/// `next_run` of a schedule that has no tick left.
pub(crate) const NEVER: i64 = i64::MAX;

/// A cron expression with its time zone.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    cron: Cron,
    zone: chrono_tz::Tz,
}

impl Spec {
    /// Five fields (minute hour day month weekday) or six (seconds first); UTC unless a time
    /// zone is named. The error says what is wrong in words.
    pub(crate) fn parse(expression: &str, timezone: Option<&str>) -> Result<Spec, String> {
        let fields = expression.split_whitespace().count();
        if !expression.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "'{expression}' has {fields} fields: a cron expression has 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|err| format!("'{expression}' is not a cron expression: {err}"))?;
        let zone = match timezone {
            None => chrono_tz::UTC,
            Some(name) => name
                .parse::<chrono_tz::Tz>()
                .map_err(|_| format!("'{name}' is not a time zone: use an IANA name such as Europe/Paris or UTC"))?,
        };
        let spec = Spec { cron, zone };
        if spec.after(now_ms()) == NEVER {
            return Err(format!("'{expression}' never matches a future time"));
        }
        Ok(spec)
    }

    /// The first tick strictly after `ms` ([`NEVER`] if there is none).
    pub(crate) fn after(&self, ms: i64) -> i64 {
        self.find(ms, false, true).unwrap_or(NEVER)
    }

    /// The last tick at or before `ms`.
    fn at_or_before(&self, ms: i64) -> Option<i64> {
        self.find(ms, true, false)
    }

    fn find(&self, ms: i64, inclusive: bool, forward: bool) -> Option<i64> {
        let start = Utc.timestamp_millis_opt(ms).single()?.with_timezone(&self.zone);
        let found = if forward {
            self.cron.find_next_occurrence(&start, inclusive)
        } else {
            self.cron.find_previous_occurrence(&start, inclusive)
        };
        found.ok().map(|t| t.timestamp_millis())
    }
}

/// What to do with a schedule due at `due`, seen at `now`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    /// The tick to run now.
    pub fire: Option<i64>,
    /// The first and last ticks missed, when some were.
    pub missed: Option<(i64, i64)>,
    /// Where the schedule moves on to.
    pub next: i64,
}

pub(crate) fn plan(spec: &Spec, due: i64, now: i64, catch_up: bool, grace: i64) -> Plan {
    if now - due <= grace {
        return Plan {
            fire: Some(due),
            missed: None,
            next: spec.after(due),
        };
    }
    let cutoff = now - grace;
    let latest = spec.at_or_before(cutoff).filter(|t| *t >= due).unwrap_or(due);
    Plan {
        fire: catch_up.then_some(latest),
        missed: Some((due, latest)),
        next: spec.after(cutoff),
    }
}

/// The id of the job a tick queues: the same on every replica.
pub(crate) fn tick_job_id(schedule: &ScheduleRecord, tick: i64) -> String {
    let namespace = uuid::Uuid::parse_str(&schedule.id).unwrap_or(uuid::Uuid::NAMESPACE_OID);
    uuid::Uuid::new_v5(&namespace, tick.to_string().as_bytes()).to_string()
}

/// What a tick calls, made by the HTTP front: the schedule's path and method resolved and
/// checked for its owner as a call with `Prefer: respond-async` would be.
#[async_trait::async_trait]
pub(crate) trait Ticker: Send + Sync {
    /// The module, the function and the call; or why the tick cannot run, in words.
    async fn prepare(&self, schedule: &ScheduleRecord) -> Result<(String, String, StoredCall), String>;
}

impl Jobs {
    /// Starts this replica's scheduler.
    pub(crate) fn start_scheduler(self: &Arc<Self>, ticker: Arc<dyn Ticker>) {
        let jobs = self.clone();
        tokio::spawn(async move { jobs.schedule_loop(ticker).await });
    }

    /// Wakes the scheduler (a schedule was created or resumed here).
    pub(crate) fn schedules_changed(&self) {
        self.schedules_changed.notify_one();
    }

    async fn schedule_loop(self: Arc<Self>, ticker: Arc<dyn Ticker>) {
        use std::sync::atomic::Ordering;
        let mut failing = false;
        while !self.stopping.load(Ordering::Relaxed) {
            let mut wait = self.settings.poll;
            match self.store.upcoming_schedules(UPCOMING).await {
                Ok(upcoming) => {
                    failing = false;
                    let now = now_ms();
                    let mut progressed = false;
                    for schedule in &upcoming {
                        if schedule.next_run > now {
                            let until = Duration::from_millis((schedule.next_run - now) as u64);
                            wait = wait.min(until);
                            break;
                        }
                        progressed |= self.tick(schedule, now, ticker.as_ref()).await;
                    }
                    if progressed {
                        // Ticks may still be due (late ones, or more schedules than one read);
                        // a store that refuses the writes is tried again at the next poll.
                        wait = Duration::ZERO;
                    }
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!("cannot read the schedules: {err}; trying again every JOBS_POLL_MS");
                    }
                    failing = true;
                }
            }
            let _ = tokio::time::timeout(wait, self.schedules_changed.notified()).await;
        }
    }

    /// Handles one due schedule; `false` if the store could not record it.
    async fn tick(&self, schedule: &ScheduleRecord, now: i64, ticker: &dyn Ticker) -> bool {
        let key = &schedule.key;
        let spec = match Spec::parse(&schedule.cron, schedule.timezone.as_deref()) {
            Ok(spec) => spec,
            Err(why) => {
                let advance = Advance {
                    last_run: None,
                    next_run: NEVER,
                    last_job: None,
                    status: why,
                };
                tracing::warn!(schedule = %key, "the schedule stops: {}", advance.status);
                return self.store.fire_schedule(key, schedule.next_run, &advance, None).await.is_ok();
            }
        };
        let grace = MISSED_AFTER.max(self.settings.poll * 4).as_millis() as i64;
        let plan = plan(&spec, schedule.next_run, now, schedule.catch_up, grace);
        if let Some((first, last)) = plan.missed {
            let what = if schedule.catch_up {
                "the latest runs now (catch_up: true)"
            } else {
                "skipped (catch_up: false)"
            };
            tracing::warn!(
                schedule = %key,
                "ticks from {} to {} were missed while no replica ran; {what}",
                super::timestamp(first),
                super::timestamp(last)
            );
        }
        let Some(fired) = plan.fire else {
            let advance = Advance {
                last_run: None,
                next_run: plan.next,
                last_job: None,
                status: schedule.status.clone(),
            };
            if let Err(err) = self.store.fire_schedule(key, schedule.next_run, &advance, None).await {
                tracing::warn!(schedule = %key, "the schedule could not be moved on: {err}");
                return false;
            }
            return true;
        };
        let job = match ticker.prepare(schedule).await {
            Ok((module, function, call)) => {
                let kind = if schedule.owner_kind == "admin" { "admin" } else { "tenant" };
                let mut job = self.record(
                    NewJob {
                        owner: Some((schedule.owner.clone(), kind)),
                        module,
                        function,
                        call,
                        delay: Duration::ZERO,
                        idempotency_key: None,
                        callback_url: None,
                    },
                    now,
                );
                job.id = tick_job_id(schedule, fired);
                job.scheduled_for = Some(fired);
                job.schedule = Some(schedule.name.clone());
                Ok(job)
            }
            Err(why) => Err(why),
        };
        let advance = Advance {
            last_run: Some(fired),
            next_run: plan.next,
            last_job: job.as_ref().ok().map(|j| j.id.clone()),
            status: job.as_ref().err().cloned().unwrap_or_else(|| "ok".to_owned()),
        };
        if let Err(why) = &job {
            if *why != schedule.status {
                tracing::warn!(schedule = %key, "the tick queues no job: {why}");
            }
        }
        match self.store.fire_schedule(key, schedule.next_run, &advance, job.as_ref().ok()).await {
            Ok(true) => {
                let lag = (now_ms() - fired).max(0) as f64 / 1000.0;
                crate::metrics::METRICS.schedule_lag.set(lag);
                tracing::debug!(schedule = %key, tick = %super::timestamp(fired), "tick queued");
                self.wake.notify_one();
                true
            }
            Ok(false) => true,
            Err(err) => {
                tracing::warn!(schedule = %key, "the tick could not be queued: {err}; tried again at the next poll");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(text).map_or(0, |t| t.timestamp_millis())
    }

    #[test]
    fn five_or_six_fields_in_a_time_zone() {
        let every_second = Spec::parse("* * * * * *", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(every_second.after(at("2026-01-01T00:00:00.500Z")), at("2026-01-01T00:00:01Z"));
        assert_eq!(every_second.after(at("2026-01-01T00:00:01Z")), at("2026-01-01T00:00:02Z"));
        let nightly = Spec::parse("30 2 * * *", Some("Europe/Paris")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            nightly.after(at("2026-07-01T12:00:00Z")),
            at("2026-07-02T00:30:00Z"),
            "CEST is UTC+2"
        );
        assert_eq!(
            nightly.after(at("2026-12-01T12:00:00Z")),
            at("2026-12-02T01:30:00Z"),
            "CET is UTC+1"
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_explained() {
        for (cron, zone, says) in [
            ("* * * *", None, "has 4 fields"),
            ("* * * * * * 2030", None, "has 7 fields"),
            ("61 * * * *", None, "is not a cron expression"),
            ("every day", None, "has 2 fields"),
            ("* * * * *", Some("Mars/Olympus"), "is not a time zone"),
        ] {
            let err = Spec::parse(cron, zone).err().unwrap_or_default();
            assert!(err.contains(says), "{cron}: {err}");
        }
    }

    #[test]
    fn on_time_and_late_ticks_fire_missed_ones_are_skipped_or_caught_up_once() {
        let spec = Spec::parse("0 * * * * *", None).unwrap_or_else(|e| panic!("{e}"));
        let due = at("2026-01-01T10:00:00Z");
        let on_time = plan(&spec, due, due + 300, false, 10_000);
        assert_eq!(
            on_time,
            Plan {
                fire: Some(due),
                missed: None,
                next: at("2026-01-01T10:01:00Z")
            }
        );
        // Down from 10:00 to 10:05:30: ticks 10:00 … 10:05 missed.
        let now = at("2026-01-01T10:05:30Z");
        let skipped = plan(&spec, due, now, false, 10_000);
        assert_eq!(skipped.fire, None);
        assert_eq!(skipped.missed, Some((due, at("2026-01-01T10:05:00Z"))));
        assert_eq!(skipped.next, at("2026-01-01T10:06:00Z"));
        let caught_up = plan(&spec, due, now, true, 10_000);
        assert_eq!(caught_up.fire, Some(at("2026-01-01T10:05:00Z")), "the latest missed, once");
        assert_eq!(caught_up.next, at("2026-01-01T10:06:00Z"));
    }

    #[test]
    fn a_tick_job_id_is_the_same_everywhere_and_differs_per_tick() {
        let schedule = ScheduleRecord {
            key: "o/n".into(),
            id: "6f1c1f6e-8d4a-4c4e-9a53-2a8f3c1b0d77".into(),
            name: "n".into(),
            owner: "o".into(),
            owner_kind: "admin".into(),
            cron: "* * * * *".into(),
            timezone: None,
            path: "m/f/".into(),
            method: "GET".into(),
            body: None,
            catch_up: false,
            paused: false,
            created_at: 0,
            next_run: 0,
            last_run: None,
            last_job: None,
            status: "ok".into(),
        };
        assert_eq!(tick_job_id(&schedule, 60_000), tick_job_id(&schedule.clone(), 60_000));
        assert_ne!(tick_job_id(&schedule, 60_000), tick_job_id(&schedule, 120_000));
    }
}
