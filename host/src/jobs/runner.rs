//! The runner: claims jobs from the store while this replica has a free worker, runs each under
//! a lease it renews, and records how the attempt ended (a retry after back-off, or the end).
//!
//! Fairness: while the workers are busy, a principal already holding half of them is skipped
//! in claims, so that one tenant flooding the queue delays the others by at most one call.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use plughost_tenancy::jobs::{Claim, JobEnd, JobRecord, JobState};

use super::{lock, now_ms, Answer, Jobs, StoredCall};

/// Makes a job's call: resolves the function for the job's owner and calls it within `deadline`.
#[async_trait::async_trait]
pub(crate) trait Executor: Send + Sync {
    async fn execute(&self, job: &JobRecord, call: plughost_runtime::call::CallInput, deadline: Duration) -> Answer;
}

/// How often ended jobs past their retention are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(60);

impl Jobs {
    /// Starts the claim loop and the purge.
    pub(crate) fn start(self: &Arc<Self>, executor: Arc<dyn Executor>) {
        let jobs = self.clone();
        tokio::spawn(async move { jobs.claim_loop(executor).await });
        let jobs = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(PURGE_EVERY);
            loop {
                ticks.tick().await;
                let Some(jobs) = jobs.upgrade() else { return };
                let now = now_ms();
                match jobs.store.purge_jobs(now - jobs.settings.retention.as_millis() as i64, now).await {
                    Ok(0) => {}
                    Ok(purged) => tracing::info!(purged, "ended jobs past JOB_RETENTION_SECS deleted"),
                    Err(err) => tracing::warn!("jobs past their retention not deleted yet: {err}"),
                }
            }
        });
    }

    async fn claim_loop(self: Arc<Self>, executor: Arc<dyn Executor>) {
        let mut failing = false;
        while !self.stopping.load(Ordering::Relaxed) {
            if self.active.load(Ordering::Relaxed) >= self.settings.concurrency {
                self.idle().await;
                continue;
            }
            match self.claim().await {
                Ok(Some(job)) => {
                    failing = false;
                    self.begin(&job);
                    let (jobs, executor) = (self.clone(), executor.clone());
                    tokio::spawn(async move { jobs.run(job, executor).await });
                }
                Ok(None) => self.idle().await,
                Err(err) => {
                    if !failing {
                        tracing::warn!("cannot claim jobs: {err}; trying again every JOBS_POLL_MS");
                    }
                    failing = true;
                    self.idle().await;
                }
            }
        }
    }

    /// Waits for a wake-up (a job queued here, a worker freed) or the poll interval.
    async fn idle(&self) {
        let _ = tokio::time::timeout(self.settings.poll, self.wake.notified()).await;
    }

    /// The next job: first among principals holding less than half the workers, then any.
    async fn claim(&self) -> Result<Option<JobRecord>, plughost_tenancy::StoreError> {
        let now = now_ms();
        let share = (self.settings.concurrency / 2).max(1);
        let skip: Vec<Option<String>> = if self.settings.concurrency > 1 {
            lock(&self.running)
                .iter()
                .filter(|(_, n)| **n >= share)
                .map(|(o, _)| o.clone())
                .collect()
        } else {
            Vec::new()
        };
        let mut claim = Claim {
            replica: self.replica.clone(),
            now,
            lease_until: now + self.settings.lease.as_millis() as i64,
            skip_owners: skip,
        };
        if let Some(job) = self.store.claim_job(&claim).await? {
            return Ok(Some(job));
        }
        if claim.skip_owners.is_empty() {
            return Ok(None);
        }
        claim.skip_owners.clear();
        self.store.claim_job(&claim).await
    }

    fn begin(&self, job: &JobRecord) {
        self.active.fetch_add(1, Ordering::Relaxed);
        crate::metrics::METRICS.jobs_running.inc();
        *lock(&self.running).entry(job.owner.clone()).or_default() += 1;
        lock(&self.in_flight).insert(job.id.clone());
    }

    fn finish(&self, job: &JobRecord) {
        lock(&self.in_flight).remove(&job.id);
        let mut running = lock(&self.running);
        if let Some(n) = running.get_mut(&job.owner) {
            *n -= 1;
            if *n == 0 {
                running.remove(&job.owner);
            }
        }
        drop(running);
        self.active.fetch_sub(1, Ordering::Relaxed);
        crate::metrics::METRICS.jobs_running.dec();
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>, job: JobRecord, executor: Arc<dyn Executor>) {
        let end = self.attempt(&job, executor).await;
        let outcome = match end.state {
            JobState::Queued => "retried",
            state => state.as_str(),
        };
        crate::metrics::METRICS
            .job_attempts
            .get_or_create(&crate::metrics::OutcomeLabels { outcome })
            .inc();
        match self.store.end_job(&job.id, &self.replica, &end).await {
            Ok(true) => {
                tracing::debug!(job = %job.id, state = end.state.as_str(), "job attempt ended");
                if end.state.is_final() && job.callback_url.is_some() {
                    match self.store.job(&job.id).await {
                        Ok(Some(ended)) => self.deliver_callback(ended),
                        Ok(None) => {}
                        Err(err) => tracing::warn!(job = %job.id, "the callback is not sent: the ended job could not be read ({err})"),
                    }
                }
            }
            Ok(false) => tracing::warn!(job = %job.id, "the job's lease was lost while it ran; another replica has it"),
            Err(err) => {
                tracing::warn!(job = %job.id, "how the job ended could not be recorded ({err}); it runs again once its lease expires")
            }
        }
        self.finish(&job);
    }

    /// One attempt, its lease renewed while the call runs.
    async fn attempt(&self, job: &JobRecord, executor: Arc<dyn Executor>) -> JobEnd {
        let now = now_ms();
        if job.attempts > job.max_attempts {
            // Claimed again after its replica was lost on the last attempt.
            return JobEnd {
                state: JobState::Dead,
                now,
                run_after: now,
                result: None,
                error: Some(format!(
                    "the replica running attempt {} of {} was lost",
                    job.max_attempts, job.max_attempts
                )),
            };
        }
        let input = match StoredCall::from_json(&job.request).and_then(|call| call.input(&job.id, job.attempts)) {
            Ok(input) => input,
            Err(why) => {
                return JobEnd {
                    state: JobState::Failed,
                    now,
                    run_after: now,
                    result: None,
                    error: Some(why),
                }
            }
        };
        let renewing = self.renew_while_running(job.id.clone());
        let answer = executor.execute(job, input, self.settings.timeout).await;
        renewing.abort();
        self.end_of(job, answer)
    }

    fn renew_while_running(&self, id: String) -> tokio::task::JoinHandle<()> {
        let (store, replica, lease) = (self.store.clone(), self.replica.clone(), self.settings.lease);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                match store.renew_job(&id, &replica, now_ms() + lease.as_millis() as i64).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(err) => tracing::warn!(job = %id, "the job's lease could not be renewed: {err}"),
                }
            }
        })
    }

    /// What an answer makes of the job: ended, or queued again after back-off with jitter.
    fn end_of(&self, job: &JobRecord, answer: Answer) -> JobEnd {
        let now = now_ms();
        let error = (answer.status >= 400).then(|| format!("attempt {} answered {}", job.attempts, answer.status));
        let state = if answer.status < 400 {
            JobState::Succeeded
        } else if !answer.retryable() {
            JobState::Failed
        } else if job.attempts < job.max_attempts {
            JobState::Queued
        } else {
            JobState::Dead
        };
        let run_after = if state == JobState::Queued {
            now + backoff(self.settings.backoff, job.attempts).as_millis() as i64
        } else {
            now
        };
        JobEnd {
            state,
            now,
            run_after,
            result: Some(answer.to_json()),
            error,
        }
    }

    /// Stops claiming, lets running jobs finish within `grace`, and gives back the rest.
    pub(crate) async fn stop(&self, grace: Duration) {
        self.stopping.store(true, Ordering::Relaxed);
        self.wake.notify_waiters();
        let deadline = tokio::time::Instant::now() + grace;
        while self.active.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left: Vec<String> = lock(&self.in_flight).iter().cloned().collect();
        for id in left {
            match self.store.release_job(&id, &self.replica).await {
                Ok(_) => tracing::info!(job = %id, "job given back to the queue: this replica stops"),
                Err(err) => tracing::warn!(job = %id, "job not given back ({err}); another replica takes it when its lease expires"),
            }
        }
    }
}

/// `base × 2^(attempt−1)`, capped at an hour, with ±25% jitter so that retries spread out.
pub(crate) fn backoff(base: Duration, attempt: i64) -> Duration {
    let exponent = attempt.clamp(1, 20) as u32 - 1;
    let plain = base.saturating_mul(1 << exponent).min(Duration::from_secs(3600));
    let jitter = 0.75 + fastrand_unit() * 0.5;
    plain.mul_f64(jitter)
}

/// A number in [0, 1) that need not be unpredictable.
fn fastrand_unit() -> f64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_jitter_and_is_capped() {
        let base = Duration::from_millis(1000);
        for attempt in 1..=4 {
            let plain = 1000.0 * f64::from(1u32 << (attempt - 1));
            for _ in 0..50 {
                let wait = backoff(base, i64::from(attempt)).as_millis() as f64;
                assert!(wait >= plain * 0.75 - 1.0 && wait <= plain * 1.25 + 1.0, "{attempt}: {wait}");
            }
        }
        assert!(backoff(base, 60) <= Duration::from_secs(4500));
    }
}
