//! Batching and requeue: quick calls queue and are sent to one worker together; when one call of
//! a batch fails, the calls after it (not started) go back to the queue.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use plughost_runtime::call::PluginReply;
use plugin_api::ErrorKind;
use tokio::sync::oneshot;

use crate::{
    lock,
    output::response_headers,
    pool::{Failure, Pool},
    protocol::{encode_frame, CallHead, HostMsg, Outcome},
    settings::Limits,
    SandboxError,
};

/// How quick a function has been, which decides how it is called: a function whose latest
/// calls each ran within `quick_max` (as its worker measured them) may share a worker with other
/// quick calls.
pub struct Pace<'a> {
    pub streak: &'a AtomicU32,
    pub quick_max: Option<Duration>,
}

/// Quick calls in a row before a function's calls are batched.
pub(crate) const QUICK_STREAK: u32 = 32;
/// Most calls sent to a worker in one write.
pub(crate) const MAX_BATCH: usize = 64;
/// Most request bytes sent to a worker in one write (a call larger than this goes alone). Below
/// a pipe's 64 KiB, so that the write never waits for the worker, which may be waiting for its
/// replies to be read.
pub(crate) const MAX_BATCH_BYTES: usize = 60 * 1024;

/// What a worker answered to one call: the outcome, the body, and how long the plugin took (µs).
pub(crate) type Answered = Result<(Outcome, Vec<u8>, u64), Failure>;

/// A quick call waiting in its pool's queue for a worker.
pub(crate) struct Job {
    pub(crate) id: u64,
    /// The host's request id, which the plugin's log lines for this call carry.
    pub(crate) request_id: String,
    pub(crate) frame: Vec<u8>,
    pub(crate) deadline: Instant,
    pub(crate) answer: oneshot::Sender<Answered>,
}

/// The answer a runner sends back for a job.
pub(crate) async fn answer_of(answered: oneshot::Receiver<Answered>) -> Answered {
    answered
        .await
        .unwrap_or_else(|_| Err(Failure::Broken("the worker's runner ended without an answer".to_owned())))
}

impl Pool {
    /// A call as a job: its frame, under an id unique in this host, and where its answer goes.
    pub(crate) fn job(
        &self,
        mut head: CallHead<'_>,
        body: &[u8],
        deadline: Instant,
    ) -> Result<(Job, oneshot::Receiver<Answered>), Failure> {
        let id = self.sandbox.sequence.fetch_add(1, Ordering::Relaxed);
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
        self.batched.fetch_add(1, Ordering::Relaxed);
        lock(&self.queue).push_back(job);
        if self.claim_runner(limits) {
            tokio::spawn(Arc::clone(self).run_queue());
        }
        answer_of(answered).await
    }

    /// Counts one more runner if there are fewer than the CPUs this process may use.
    pub(crate) fn claim_runner(&self, limits: &Limits) -> bool {
        let most = self.sandbox.cpus.min(limits.max_concurrency.max(1));
        self.runners
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < most).then_some(n + 1))
            .is_ok()
    }

    /// Takes queued calls for one write; answers those whose deadline passed while they waited.
    pub(crate) fn take_batch(&self) -> VecDeque<Job> {
        let mut queue = lock(&self.queue);
        let mut batch = VecDeque::new();
        let mut bytes = 0;
        let now = Instant::now();
        while batch.len() < MAX_BATCH {
            let Some(next) = queue.front() else { break };
            if !batch.is_empty() && bytes + next.frame.len() > MAX_BATCH_BYTES {
                break;
            }
            let Some(job) = queue.pop_front() else { break };
            if job.deadline <= now {
                let _ = job.answer.send(Err(Failure::TimedOut));
                continue;
            }
            bytes += job.frame.len();
            batch.push_back(job);
        }
        batch
    }

    /// A runner: takes a worker and feeds it batches until the queue is empty.
    pub(crate) async fn run_queue(self: Arc<Self>) {
        loop {
            let mut batch = self.take_batch();
            if batch.is_empty() {
                self.runners.fetch_sub(1, Ordering::AcqRel);
                // A call queued after the batch was taken but before the count dropped would
                // otherwise wait for the next call to start a runner.
                if lock(&self.queue).is_empty() || !self.claim_runner(&self.limits()) {
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
            match worker.run_batch(&mut batch, &limits, &self).await {
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
                        self.requeued.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        // They have not started: a full deadline from now, as anywhere else.
                        let fresh = Instant::now() + limits.call_timeout;
                        let mut queue = lock(&self.queue);
                        while let Some(mut job) = batch.pop_back() {
                            job.deadline = job.deadline.max(fresh);
                            queue.push_front(job);
                        }
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
                if self.troubled.load(Ordering::Acquire) {
                    let mut health = lock(&self.health);
                    health.consecutive = 0;
                    if health.quarantined.is_none() {
                        self.troubled.store(false, Ordering::Release);
                    }
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
                self.sandbox.observer.call_timed_out();
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
}
