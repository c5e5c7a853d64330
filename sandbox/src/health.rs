//! Health and quarantine: crashes counted in a window, the growing delay before a restart, and
//! the quarantine that stops a module whose workers keep crashing. Pure bookkeeping: the pool
//! acts on what it says.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Crashes and the state they led to.
#[derive(Debug, Default)]
pub(crate) struct Health {
    pub(crate) crashes: VecDeque<Instant>,
    pub(crate) consecutive: u32,
    pub(crate) backoff_until: Option<Instant>,
    pub(crate) quarantined: Option<String>,
}

/// The wait before a new worker starts after `consecutive` crashes in a row: straight back after
/// one; then 100 ms, 200 ms, … up to 5 s.
pub(crate) fn restart_delay(consecutive: u32) -> Duration {
    match consecutive {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(100u64.saturating_mul(1 << (n - 2).min(6))).min(Duration::from_secs(5)),
    }
}

impl Health {
    /// Counts a crash at `now` among those of the last `window`, and delays the next start.
    /// Returns the reason when this crash, the `most`-th in the window, quarantines the module.
    pub(crate) fn crashed(&mut self, now: Instant, why: &str, window: Duration, most: u32) -> Option<String> {
        self.crashes.push_back(now);
        while self.crashes.front().is_some_and(|t| now.duration_since(*t) > window) {
            self.crashes.pop_front();
        }
        self.consecutive += 1;
        self.backoff_until = Some(now + restart_delay(self.consecutive));
        if self.quarantined.is_some() || self.crashes.len() < most as usize {
            return None;
        }
        let reason = format!(
            "its workers crashed {} times within {} s (last: {why})",
            self.crashes.len(),
            window.as_secs()
        );
        self.quarantined = Some(reason.clone());
        Some(reason)
    }

    /// A call succeeded: crashes are no longer in a row. Returns whether there is still
    /// something to watch (a quarantine).
    pub(crate) fn succeeded(&mut self) -> bool {
        self.consecutive = 0;
        self.quarantined.is_some()
    }

    /// Lifts a quarantine and forgets the crashes; returns whether there was one.
    pub(crate) fn release(&mut self) -> bool {
        let was = self.quarantined.take().is_some();
        self.crashes.clear();
        self.consecutive = 0;
        self.backoff_until = None;
        was
    }

    /// Whether a new worker must not start now (quarantined, or waiting out a restart delay).
    pub(crate) fn holds_back(&self, now: Instant) -> bool {
        self.quarantined.is_some() || self.backoff_until.is_some_and(|t| t > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn the_restart_delay_doubles_from_the_second_crash_up_to_five_seconds() {
        let delays: Vec<u64> = (0..10).map(|n| restart_delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [0, 0, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn the_nth_crash_within_the_window_quarantines_once() {
        let start = Instant::now();
        let mut health = Health::default();
        assert_eq!(health.crashed(start, "a", WINDOW, 3), None);
        assert_eq!(health.crashed(start + Duration::from_secs(1), "b", WINDOW, 3), None);
        let reason = health.crashed(start + Duration::from_secs(2), "signal 11", WINDOW, 3);
        assert_eq!(reason.as_deref(), Some("its workers crashed 3 times within 60 s (last: signal 11)"));
        // Already quarantined: a further crash says nothing new.
        assert_eq!(health.crashed(start + Duration::from_secs(3), "d", WINDOW, 3), None);
        assert!(health.holds_back(start + Duration::from_secs(3)));
    }

    #[test]
    fn crashes_older_than_the_window_do_not_count() {
        let start = Instant::now();
        let mut health = Health::default();
        health.crashed(start, "a", WINDOW, 2);
        let later = start + WINDOW + Duration::from_secs(1);
        assert_eq!(health.crashed(later, "b", WINDOW, 2), None, "the first crash left the window");
        assert_eq!(health.crashes.len(), 1);
    }

    #[test]
    fn a_success_ends_the_streak_and_a_release_lifts_the_quarantine() {
        let start = Instant::now();
        let mut health = Health::default();
        health.crashed(start, "a", WINDOW, 10);
        health.crashed(start, "b", WINDOW, 10);
        assert_eq!(health.backoff_until, Some(start + Duration::from_millis(100)));
        assert!(health.holds_back(start));
        assert!(!health.holds_back(start + Duration::from_millis(101)));
        assert!(!health.succeeded());
        assert_eq!(health.consecutive, 0);
        health.crashed(start, "c", WINDOW, 3);
        assert!(health.quarantined.is_some());
        assert!(health.succeeded(), "a quarantine outlasts a success");
        assert!(health.release());
        assert!(!health.release(), "nothing left to release");
        assert!(!health.holds_back(start));
    }
}
