//! A module version's pool of workers: a call's checkout and settlement, idle workers, retirement
//! and the pool's status.

use std::{
    collections::VecDeque,
    fs,
    path::PathBuf,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use plughost_runtime::call::PluginReply;
use serde::Serialize;

use crate::{
    batch::{answer_of, Job, Pace, QUICK_STREAK},
    health::Health,
    lock,
    process::Worker,
    protocol::{CallHead, Layer},
    sandbox::Sandbox,
    settings::Limits,
    SandboxError,
};

/// The workers of one module version.
pub struct Pool {
    pub(crate) sandbox: Arc<Sandbox>,
    pub owner: Option<String>,
    pub module: String,
    pub(crate) library: PathBuf,
    pub(crate) limits: Mutex<Limits>,
    pub(crate) in_flight: AtomicU32,
    pub(crate) idle: Mutex<Vec<Worker>>,
    pub(crate) health: Mutex<Health>,
    /// Set while `health` has something to say (crashes, backoff, quarantine): calls skip its
    /// lock otherwise.
    pub(crate) troubled: std::sync::atomic::AtomicBool,
    pub(crate) layers: Mutex<Vec<Layer>>,
    pub(crate) calls: AtomicU64,
    pub(crate) crashes: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) started: AtomicU64,
    /// Quick calls waiting for a runner, and the runners feeding them to workers.
    pub(crate) queue: Mutex<VecDeque<Job>>,
    pub(crate) runners: AtomicU32,
    pub(crate) batched: AtomicU64,
    pub(crate) requeued: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("module", &self.module)
            .field("owner", &self.owner)
            .finish()
    }
}

/// What operators see of a pool.
#[derive(Debug, Serialize)]
pub struct PoolStatus {
    pub tenant: Option<String>,
    pub workers_idle: usize,
    pub workers_busy: usize,
    pub workers_started: u64,
    pub calls: u64,
    /// Calls of quick functions, sent to workers in batches.
    pub calls_batched: u64,
    /// Batched calls sent again to another worker because one before them failed.
    pub calls_requeued: u64,
    pub crashes: u64,
    pub timeouts: u64,
    pub quarantined: Option<String>,
    pub limits: Limits,
    pub layers: Vec<Layer>,
}

/// A call counted in flight until it ends.
pub(crate) struct InFlight<'a>(pub(crate) &'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a call through a worker failed, before it becomes a [`SandboxError`].
pub(crate) enum Failure {
    TimedOut,
    Crashed { status: String, out_of_memory: bool },
    TooLarge(u64),
    Broken(String),
}

impl Pool {
    /// Calls a function in a worker and waits for its reply or the module's deadline, which this
    /// call enforces itself: past it the worker is killed.
    ///
    /// A function that has proven quick is not given a worker of its own: its calls queue, and
    /// a runner task (one per CPU) sends everything queued to one worker in one write and reads
    /// the replies together. Under load a worker then answers many calls per pair of context
    /// switches instead of one. A worker answers in order, so when one call of a batch fails
    /// (deadline, crash), the calls after it have not started: they go back to the queue. Any
    /// other call takes a worker of its own and is sent as a batch of one, the same way; its
    /// deadline counts from when it is sent.
    pub async fn call(self: &Arc<Self>, head: CallHead<'_>, body: &[u8], pace: Pace<'_>) -> Result<PluginReply, SandboxError> {
        let started = Instant::now();
        if self.troubled.load(Ordering::Acquire) {
            if let Some(why) = lock(&self.health).quarantined.clone() {
                return Err(SandboxError::Quarantined(why));
            }
        }
        let limits = self.limits();
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= limits.max_concurrency {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(SandboxError::Busy(limits.max_concurrency));
        }
        let _in_flight = InFlight(&self.in_flight);
        let deadline = started + limits.call_timeout;
        let quick = pace.quick_max.is_some() && pace.streak.load(Ordering::Relaxed) >= QUICK_STREAK;
        let result = match self.job(head, body, deadline) {
            Err(failure) => Err(failure),
            Ok((job, answered)) if quick => self.queued(job, answered, &limits).await,
            Ok((job, answered)) => {
                // A worker of its own: a batch of one.
                let mut worker = self.checkout(deadline).await.map_err(SandboxError::WorkerFailed)?;
                let mut batch = VecDeque::from([job]);
                match worker.run_batch(&mut batch, &limits, self).await {
                    Ok(()) => {
                        self.checkin(worker);
                        answer_of(answered).await
                    }
                    Err((_, failure)) => Err(failure),
                }
            }
        };
        if let (Ok((_, _, micros)), Some(max)) = (&result, pace.quick_max) {
            if Duration::from_micros(*micros) <= max {
                let _ = pace
                    .streak
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_add(1)));
            } else {
                pace.streak.store(0, Ordering::Relaxed);
            }
        } else {
            pace.streak.store(0, Ordering::Relaxed);
        }
        self.settle(result, &limits)
    }

    /// The limits in force (a tenant's overrides can change while the module is loaded).
    pub fn limits(&self) -> Limits {
        lock(&self.limits).clone()
    }

    pub(crate) fn set_limits(&self, limits: Limits) {
        *lock(&self.limits) = limits;
    }

    /// An idle worker, or a new one once the crash backoff has passed (waiting at most until
    /// `deadline`).
    pub(crate) async fn checkout(self: &Arc<Self>, deadline: Instant) -> Result<Worker, String> {
        let idle = lock(&self.idle).pop();
        if let Some(worker) = idle {
            return Ok(worker);
        }
        let wait = lock(&self.health)
            .backoff_until
            .map(|until| until.saturating_duration_since(Instant::now()));
        if let Some(wait) = wait.filter(|w| !w.is_zero()) {
            tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        // Starting a process and loading the library blocks for milliseconds: not on this thread.
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || pool.spawn_worker())
            .await
            .map_err(|err| format!("the worker could not be started: {err}"))?
    }

    pub(crate) fn spawn_worker(&self) -> Result<Worker, String> {
        let (worker, layers, _) = Worker::spawn(
            &self.sandbox,
            Some(&self.library),
            &self.limits(),
            self.owner.as_deref(),
            &self.module,
        )?;
        self.started.fetch_add(1, Ordering::Relaxed);
        *lock(&self.layers) = layers;
        Ok(worker)
    }

    /// Returns a worker after a call, or retires it when it has served enough or grown too much.
    pub(crate) fn checkin(&self, mut worker: Worker) {
        let settings = &self.sandbox.settings;
        if worker.calls >= settings.max_calls {
            tracing::debug!(module = %self.module, calls = worker.calls, "worker retired after its call budget");
            return self.sandbox.retire(worker);
        }
        if worker.calls >= worker.rss_checked + 16 {
            worker.rss_checked = worker.calls;
            if let (Some(base), Some(now)) = (worker.rss_base, worker.rss()) {
                if now.saturating_sub(base) > settings.max_growth_bytes {
                    tracing::info!(module = %self.module, grown_mb = (now - base) >> 20, "worker retired: it grew past SANDBOX_MAX_GROWTH_MB");
                    return self.sandbox.retire(worker);
                }
            } else if worker.rss_base.is_none() {
                worker.rss_base = worker.rss();
            }
        }
        worker.last_used = Instant::now();
        lock(&self.idle).push(worker);
    }

    /// The sandbox this pool's workers come from.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    pub fn status(&self) -> PoolStatus {
        let idle = lock(&self.idle).len();
        PoolStatus {
            tenant: self.owner.clone(),
            workers_idle: idle,
            workers_busy: self.in_flight.load(Ordering::Relaxed) as usize,
            workers_started: self.started.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            calls_batched: self.batched.load(Ordering::Relaxed),
            calls_requeued: self.requeued.load(Ordering::Relaxed),
            crashes: self.crashes.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            quarantined: self.quarantined(),
            limits: self.limits(),
            layers: lock(&self.layers).clone(),
        }
    }

    /// Keeps `SANDBOX_WARM_WORKERS` ready and stops workers idle for longer than
    /// `SANDBOX_IDLE_SECS` beyond them.
    pub(crate) fn maintain(&self) {
        let health = lock(&self.health);
        if health.quarantined.is_some() || health.backoff_until.is_some_and(|t| t > Instant::now()) {
            return;
        }
        drop(health);
        let settings = &self.sandbox.settings;
        let busy = self.in_flight.load(Ordering::Relaxed) as usize;
        let idle_count = {
            let mut idle = lock(&self.idle);
            let keep = (settings.warm_workers as usize).saturating_sub(busy);
            let now = Instant::now();
            let mut i = 0;
            while idle.len() > keep && i < idle.len() {
                if now.duration_since(idle[i].last_used) > settings.idle_timeout {
                    self.sandbox.retire(idle.remove(i));
                } else {
                    i += 1;
                }
            }
            idle.len()
        };
        if idle_count + busy < settings.warm_workers as usize {
            match self.spawn_worker() {
                Ok(worker) => lock(&self.idle).push(worker),
                Err(err) => self.record_crash(&format!("a warm worker could not start: {err}")),
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *lock(&self.idle));
        idle.into_iter().for_each(|w| self.sandbox.retire(w));
        let _ = fs::remove_file(&self.library);
    }
}
