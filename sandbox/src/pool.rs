//! A module version's pool of workers: a call's way through it (a worker of its own, or the
//! queue of quick calls and its runners), checkout and checkin, crashes and quarantine as the
//! health rules decide, retirement, and the pool's status.

use std::{
    collections::VecDeque,
    fs,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use plughost_runtime::{
    call::{CallInput, PluginReply, Target},
    pace::Pace,
};
use plugin_api::ErrorKind;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::{
    batch::Queue,
    buffers::TenantBuffers,
    error::SpawnError,
    health::Health,
    job::{answer_of, Answered, Failure, Job},
    launcher::Launcher,
    lock,
    output::{response_headers, Label},
    process::{Retiring, Worker},
    protocol::{encode_frame, CallHead, HostMsg, Layer, Outcome},
    settings::Limits,
    SandboxError,
};

/// The workers of one module version.
pub struct Pool {
    pub(crate) launcher: Arc<Launcher>,
    pub(crate) retiring: Arc<Retiring>,
    pub(crate) buffers: Arc<TenantBuffers>,
    pub owner: Option<String>,
    pub module: String,
    /// The plugin's file name, which names its workers' copies of the library.
    pub(crate) file_label: String,
    pub(crate) library: PathBuf,
    pub(crate) limits: Mutex<Limits>,
    pub(crate) in_flight: AtomicU32,
    pub(crate) idle: Mutex<Vec<Worker>>,
    pub(crate) health: Mutex<Health>,
    /// Set while `health` has something to say (crashes, backoff, quarantine): calls skip its
    /// lock otherwise.
    pub(crate) troubled: AtomicBool,
    pub(crate) layers: Mutex<Vec<Layer>>,
    pub(crate) calls: AtomicU64,
    pub(crate) crashes: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) started: AtomicU64,
    pub(crate) queue: Queue,
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
    pub async fn call(self: &Arc<Self>, target: Target<'_>, input: &CallInput, pace: Pace<'_>) -> Result<PluginReply, SandboxError> {
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
        let quick = pace.is_quick();
        let result = match self.job(CallHead::of(target, input), &input.body, deadline) {
            Err(failure) => Err(failure),
            Ok((job, answered)) if quick => self.queued(job, answered, &limits).await,
            Ok((job, answered)) => {
                // A worker of its own: a batch of one.
                let mut worker = self.checkout(deadline).await?;
                let mut batch = VecDeque::from([job]);
                match worker.run_batch(&mut batch, &limits, self.label()).await {
                    Ok(()) => {
                        self.checkin(worker);
                        answer_of(answered).await
                    }
                    Err((_, failure)) => Err(failure),
                }
            }
        };
        pace.record(result.as_ref().ok().map(|(_, _, micros)| std::time::Duration::from_micros(*micros)));
        self.settle(result, &limits)
    }

    /// A call as a job: its frame, under an id unique in this host, and where its answer goes.
    pub(crate) fn job(
        &self,
        mut head: CallHead<'_>,
        body: &[u8],
        deadline: Instant,
    ) -> Result<(Job, oneshot::Receiver<Answered>), Failure> {
        let id = self.launcher.sequence.fetch_add(1, Ordering::Relaxed);
        head.id = id;
        let request_id = head.request_id.clone().into_owned();
        let frame =
            encode_frame(&HostMsg::Call(head), body).map_err(|err| Failure::Broken(format!("the request could not be encoded: {err}")))?;
        let (answer, answered) = oneshot::channel();
        Ok((
            Job {
                id,
                request_id,
                frame,
                deadline,
                answer,
            },
            answered,
        ))
    }

    /// Queues a quick call and waits for a runner to answer it.
    pub(crate) async fn queued(self: &Arc<Self>, job: Job, answered: oneshot::Receiver<Answered>, limits: &Limits) -> Answered {
        self.queue.push(job);
        if self.claim_runner(limits) {
            tokio::spawn(Arc::clone(self).run_queue());
        }
        answer_of(answered).await
    }

    /// Counts one more runner if there are fewer than the CPUs this process may use.
    fn claim_runner(&self, limits: &Limits) -> bool {
        self.queue.claim_runner(self.launcher.cpus.min(limits.max_concurrency.max(1)))
    }

    /// A runner: takes a worker and feeds it batches until the queue is empty.
    pub(crate) async fn run_queue(self: Arc<Self>) {
        loop {
            let mut batch = self.queue.take_batch(Instant::now());
            if batch.is_empty() {
                self.queue.end_runner();
                // A call queued after the batch was taken but before the count dropped would
                // otherwise wait for the next call to start a runner.
                if self.queue.is_empty() || !self.claim_runner(&self.limits()) {
                    return;
                }
                continue;
            }
            let deadline = batch.front().map_or_else(Instant::now, |job| job.deadline);
            let mut worker = match self.checkout(deadline).await {
                Ok(worker) => worker,
                Err(why) => {
                    for job in batch {
                        let _ = job.answer.send(Err(Failure::Broken(format!("no worker could start: {why}"))));
                    }
                    continue;
                }
            };
            let limits = self.limits();
            match worker.run_batch(&mut batch, &limits, self.label()).await {
                // Checked in after every batch, so that the call budget and the growth check
                // apply; the next batch takes the same (last idle) worker back.
                Ok(()) => self.checkin(worker),
                Err((job, failure)) => {
                    // The worker answers in order: the calls after the failed one never started
                    // when it hung, died, or is stuck writing a reply too large to be read (over
                    // a pipe's size, so it cannot have moved on); after a protocol error nothing
                    // is known.
                    let requeue = matches!(failure, Failure::TimedOut | Failure::Crashed { .. } | Failure::TooLarge(_));
                    let _ = job.answer.send(Err(failure));
                    if requeue {
                        // They have not started: a full deadline from now, as anywhere else.
                        self.queue.requeue(&mut batch, Instant::now() + limits.call_timeout);
                    } else {
                        for job in batch.drain(..) {
                            let _ = job.answer.send(Err(Failure::Broken(
                                "the worker failed on an earlier call of the same batch".to_owned(),
                            )));
                        }
                    }
                    drop(worker);
                }
            }
        }
    }

    /// A call's result, as the caller sees it; crashes and timeouts are counted.
    pub(crate) fn settle(&self, result: Answered, limits: &Limits) -> Result<PluginReply, SandboxError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok((outcome, body, _)) => {
                if self.troubled.load(Ordering::Acquire) && !lock(&self.health).succeeded() {
                    self.troubled.store(false, Ordering::Release);
                }
                match outcome {
                    Outcome::Ok {
                        status,
                        content_type,
                        headers,
                    } => Ok(PluginReply {
                        status,
                        content_type,
                        // A tenant's code answers on the host's origin: only headers that concern
                        // its own response pass.
                        headers: if self.owner.is_some() {
                            response_headers(headers, &self.module)
                        } else {
                            headers
                        },
                        body,
                    }),
                    Outcome::Err {
                        kind: ErrorKind::Panicked,
                        message,
                        ..
                    } => Err(SandboxError::Panicked(message)),
                    Outcome::Err { kind, code, message } => Err(SandboxError::Plugin { kind, code, message }),
                }
            }
            Err(Failure::TimedOut) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                self.launcher.observer.call_timed_out();
                tracing::warn!(module = %self.module, tenant = self.owner.as_deref().unwrap_or("-"), "a sandboxed call passed its deadline; its worker was killed");
                Err(SandboxError::Timeout(limits.call_timeout))
            }
            Err(Failure::TooLarge(size)) => Err(SandboxError::ResponseTooLarge(size)),
            Err(Failure::Broken(why)) => {
                self.record_crash(&why);
                Err(SandboxError::WorkerFailed(why))
            }
            Err(Failure::Crashed { status, out_of_memory }) => {
                self.record_crash(&status);
                if out_of_memory {
                    Err(SandboxError::OutOfMemory(limits.memory_bytes >> 20))
                } else {
                    Err(SandboxError::Crashed(status))
                }
            }
        }
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
    pub(crate) async fn checkout(self: &Arc<Self>, deadline: Instant) -> Result<Worker, SpawnError> {
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

    pub(crate) fn spawn_worker(&self) -> Result<Worker, SpawnError> {
        let (worker, layers, _) = Worker::spawn(
            &self.launcher,
            Some(&self.library),
            &self.limits(),
            self.owner.as_deref(),
            &self.file_label,
        )?;
        self.started.fetch_add(1, Ordering::Relaxed);
        *lock(&self.layers) = layers;
        Ok(worker)
    }

    /// Returns a worker after a call, or retires it when it has served enough or grown too much.
    pub(crate) fn checkin(&self, mut worker: Worker) {
        let settings = &self.launcher.settings;
        if worker.calls >= settings.max_calls {
            tracing::debug!(module = %self.module, calls = worker.calls, "worker retired after its call budget");
            return self.retiring.retire(worker);
        }
        if worker.calls >= worker.rss_checked + 16 {
            worker.rss_checked = worker.calls;
            if let (Some(base), Some(now)) = (worker.rss_base, worker.rss()) {
                if now.saturating_sub(base) > settings.max_growth_bytes {
                    tracing::info!(module = %self.module, grown_mb = (now - base) >> 20, "worker retired: it grew past SANDBOX_MAX_GROWTH_MB");
                    return self.retiring.retire(worker);
                }
            } else if worker.rss_base.is_none() {
                worker.rss_base = worker.rss();
            }
        }
        worker.last_used = Instant::now();
        lock(&self.idle).push(worker);
    }

    /// Charges a response body of this pool's tenant to its budget of bytes held for clients
    /// that have not read them; past the budget, the budget.
    pub fn hold_response(&self, tenant: &str, body: Vec<u8>) -> Result<bytes::Bytes, u64> {
        self.buffers.hold(tenant, body)
    }

    /// Whose workers these are, for their log lines.
    fn label(&self) -> Label<'_> {
        Label {
            tenant: self.owner.as_deref().unwrap_or("admin"),
            module: &self.module,
        }
    }

    pub(crate) fn record_crash(&self, why: &str) {
        self.crashes.fetch_add(1, Ordering::Relaxed);
        self.launcher.observer.worker_crashed();
        let settings = &self.launcher.settings;
        let mut health = lock(&self.health);
        self.troubled.store(true, Ordering::Release);
        let quarantine = health.crashed(Instant::now(), why, settings.quarantine_window, settings.quarantine_crashes);
        tracing::warn!(module = %self.module, tenant = self.owner.as_deref().unwrap_or("-"), "sandbox worker failed: {why}");
        if let Some(reason) = quarantine {
            tracing::error!(module = %self.module, tenant = self.owner.as_deref().unwrap_or("-"), "module quarantined: {reason}");
            self.launcher.observer.module_quarantined();
            drop(health);
            let idle = std::mem::take(&mut *lock(&self.idle));
            idle.into_iter().for_each(|w| self.retiring.retire(w));
        }
    }

    /// Lifts a quarantine; returns whether there was one.
    pub fn release(&self) -> bool {
        let was = lock(&self.health).release();
        self.troubled.store(false, Ordering::Release);
        was
    }

    /// Why the module is quarantined, if it is.
    pub fn quarantined(&self) -> Option<String> {
        lock(&self.health).quarantined.clone()
    }

    pub fn status(&self) -> PoolStatus {
        let idle = lock(&self.idle).len();
        PoolStatus {
            tenant: self.owner.clone(),
            workers_idle: idle,
            workers_busy: self.in_flight.load(Ordering::Relaxed) as usize,
            workers_started: self.started.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            calls_batched: self.queue.batched.load(Ordering::Relaxed),
            calls_requeued: self.queue.requeued.load(Ordering::Relaxed),
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
        if lock(&self.health).holds_back(Instant::now()) {
            return;
        }
        let settings = &self.launcher.settings;
        let busy = self.in_flight.load(Ordering::Relaxed) as usize;
        let idle_count = {
            let mut idle = lock(&self.idle);
            let keep = (settings.warm_workers as usize).saturating_sub(busy);
            let now = Instant::now();
            let mut i = 0;
            while idle.len() > keep && i < idle.len() {
                if now.duration_since(idle[i].last_used) > settings.idle_timeout {
                    self.retiring.retire(idle.remove(i));
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
        idle.into_iter().for_each(|w| self.retiring.retire(w));
        let _ = fs::remove_file(&self.library);
    }
}
