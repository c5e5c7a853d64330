//! The quick-call policy, one rule for both tiers: a function whose latest [`QUICK_STREAK`]
//! calls each took at most `quick_max` is quick. In this process a quick function is called
//! inline on the async thread; in the sandbox its calls are batched. Its first slower call (or
//! failure) makes it slow again until it has proven quick anew.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

/// Quick calls in a row before a function counts as quick.
pub const QUICK_STREAK: u32 = 32;

/// A function's streak of quick calls, and the bound a call must keep to count (`None`: never
/// quick).
#[derive(Clone, Copy)]
pub struct Pace<'a> {
    pub streak: &'a AtomicU32,
    pub quick_max: Option<Duration>,
}

impl Pace<'_> {
    /// Whether the function is quick now.
    pub fn is_quick(&self) -> bool {
        self.quick_max.is_some() && self.streak.load(Ordering::Relaxed) >= QUICK_STREAK
    }

    /// Counts a call that took `took` (`None`: it failed). Once quick, a quick call only reads
    /// the streak.
    pub fn record(&self, took: Option<Duration>) {
        match (took, self.quick_max) {
            (Some(took), Some(max)) if took <= max => {
                if self.streak.load(Ordering::Relaxed) < QUICK_STREAK {
                    self.streak.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => self.streak.store(0, Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_turns_quick_after_its_streak_and_slow_at_its_first_slow_call() {
        let streak = AtomicU32::new(0);
        let pace = Pace {
            streak: &streak,
            quick_max: Some(Duration::from_micros(500)),
        };
        for _ in 0..QUICK_STREAK {
            assert!(!pace.is_quick());
            pace.record(Some(Duration::from_micros(100)));
        }
        assert!(pace.is_quick());
        pace.record(Some(Duration::from_micros(100)));
        assert_eq!(streak.load(Ordering::Relaxed), QUICK_STREAK, "the streak stops counting once quick");
        pace.record(Some(Duration::from_micros(501)));
        assert!(!pace.is_quick());
        pace.record(Some(Duration::from_micros(100)));
        pace.record(None);
        assert_eq!(streak.load(Ordering::Relaxed), 0, "a failure ends the streak");
    }

    #[test]
    fn without_a_bound_nothing_is_quick() {
        let streak = AtomicU32::new(QUICK_STREAK);
        let pace = Pace {
            streak: &streak,
            quick_max: None,
        };
        assert!(!pace.is_quick());
        pace.record(Some(Duration::ZERO));
        assert_eq!(streak.load(Ordering::Relaxed), 0);
    }
}
