//! Health and quarantine: crashes counted in a window, the growing delay before a restart, and
//! the quarantine that stops a module whose workers keep crashing.

use std::{
    collections::VecDeque,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use crate::{lock, pool::Pool};

/// Crashes and the state they led to.
#[derive(Debug, Default)]
pub(crate) struct Health {
    pub(crate) crashes: VecDeque<Instant>,
    pub(crate) consecutive: u32,
    pub(crate) backoff_until: Option<Instant>,
    pub(crate) quarantined: Option<String>,
}

impl Pool {
    pub(crate) fn record_crash(&self, why: &str) {
        self.crashes.fetch_add(1, Ordering::Relaxed);
        self.sandbox.observer.worker_crashed();
        let settings = &self.sandbox.settings;
        let now = Instant::now();
        let mut health = lock(&self.health);
        self.troubled.store(true, Ordering::Release);
        health.crashes.push_back(now);
        while health
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > settings.quarantine_window)
        {
            health.crashes.pop_front();
        }
        health.consecutive += 1;
        // Straight back after one crash; then 100 ms, 200 ms, … up to 5 s.
        let delay = match health.consecutive {
            0 | 1 => Duration::ZERO,
            n => Duration::from_millis(100u64.saturating_mul(1 << (n - 2).min(6))).min(Duration::from_secs(5)),
        };
        health.backoff_until = Some(now + delay);
        tracing::warn!(module = %self.module, tenant = self.owner.as_deref().unwrap_or("-"), "sandbox worker failed: {why}");
        if health.quarantined.is_none() && health.crashes.len() >= settings.quarantine_crashes as usize {
            let reason = format!(
                "its workers crashed {} times within {} s (last: {why})",
                health.crashes.len(),
                settings.quarantine_window.as_secs()
            );
            tracing::error!(module = %self.module, tenant = self.owner.as_deref().unwrap_or("-"), "module quarantined: {reason}");
            self.sandbox.observer.module_quarantined();
            health.quarantined = Some(reason);
            drop(health);
            let idle = std::mem::take(&mut *lock(&self.idle));
            idle.into_iter().for_each(|w| self.sandbox.retire(w));
        }
    }

    /// Lifts a quarantine; returns whether there was one.
    pub fn release(&self) -> bool {
        let mut health = lock(&self.health);
        let was = health.quarantined.take().is_some();
        health.crashes.clear();
        health.consecutive = 0;
        health.backoff_until = None;
        self.troubled.store(false, Ordering::Release);
        was
    }

    /// Why the module is quarantined, if it is.
    pub fn quarantined(&self) -> Option<String> {
        lock(&self.health).quarantined.clone()
    }
}
