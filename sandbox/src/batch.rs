//! Batching and requeue: quick calls queue, and a runner sends what is queued to one worker in
//! one write; when one call of a batch fails, the calls after it (not started) go back to the
//! front of the queue. The queue's bookkeeping is here; the pool runs the runners. Which calls
//! are quick is [`plughost_runtime::pace`]'s rule.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Mutex,
    },
    time::Instant,
};

use crate::{
    job::{Failure, Job},
    lock,
};

/// Most calls sent to a worker in one write.
pub(crate) const MAX_BATCH: usize = 64;
/// Most request bytes sent to a worker in one write (a call larger than this goes alone). Below
/// a pipe's 64 KiB, so that the write never waits for the worker, which may be waiting for its
/// replies to be read.
pub(crate) const MAX_BATCH_BYTES: usize = 60 * 1024;

/// A pool's quick calls waiting for a runner, and the runners feeding them to workers.
#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) jobs: Mutex<VecDeque<Job>>,
    pub(crate) runners: AtomicU32,
    /// Calls that went through the queue, and those sent again after a failure before them.
    pub(crate) batched: AtomicU64,
    pub(crate) requeued: AtomicU64,
}

impl Queue {
    pub(crate) fn push(&self, job: Job) {
        self.batched.fetch_add(1, Ordering::Relaxed);
        lock(&self.jobs).push_back(job);
    }

    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.jobs).is_empty()
    }

    /// Counts one more runner if there are fewer than `most`.
    pub(crate) fn claim_runner(&self, most: u32) -> bool {
        self.runners
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < most).then_some(n + 1))
            .is_ok()
    }

    pub(crate) fn end_runner(&self) {
        self.runners.fetch_sub(1, Ordering::AcqRel);
    }

    /// Takes queued calls for one write: at most [`MAX_BATCH`] calls and [`MAX_BATCH_BYTES`]
    /// (the first call goes whatever its size); answers those whose deadline passed at `now`.
    pub(crate) fn take_batch(&self, now: Instant) -> VecDeque<Job> {
        let mut queue = lock(&self.jobs);
        let mut batch = VecDeque::new();
        let mut bytes = 0;
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

    /// Puts the calls of a batch that never started back at the front of the queue, in their
    /// order, each with at least a full deadline from now (`fresh`).
    pub(crate) fn requeue(&self, batch: &mut VecDeque<Job>, fresh: Instant) {
        self.requeued.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut queue = lock(&self.jobs);
        while let Some(mut job) = batch.pop_back() {
            job.deadline = job.deadline.max(fresh);
            queue.push_front(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;
    use crate::job::Answered;

    fn job(id: u64, bytes: usize, deadline: Instant) -> (Job, oneshot::Receiver<Answered>) {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            id,
            request_id: format!("r{id}"),
            frame: vec![0; bytes],
            deadline,
            answer,
        };
        (job, answered)
    }

    fn ids(batch: &VecDeque<Job>) -> Vec<u64> {
        batch.iter().map(|j| j.id).collect()
    }

    #[test]
    fn a_batch_stops_at_the_call_count_and_at_the_byte_budget() {
        let later = Instant::now() + Duration::from_secs(10);
        let queue = Queue::default();
        let mut answers = Vec::new();
        for id in 0..100 {
            let (job, answered) = job(id, 10, later);
            queue.push(job);
            answers.push(answered);
        }
        assert_eq!(ids(&queue.take_batch(Instant::now())), (0..64).collect::<Vec<_>>());
        assert_eq!(queue.take_batch(Instant::now()).len(), 36);
        assert!(queue.is_empty());
        assert_eq!(queue.batched.load(Ordering::Relaxed), 100);

        // 25 KiB calls: two fit under 60 KiB, the third waits; one call over the budget goes alone.
        for id in 0..3 {
            let (job, answered) = job(id, 25 * 1024, later);
            queue.push(job);
            answers.push(answered);
        }
        assert_eq!(ids(&queue.take_batch(Instant::now())), [0, 1]);
        let (big, _answered) = job(9, 100 * 1024, later);
        queue.push(big);
        assert_eq!(ids(&queue.take_batch(Instant::now())), [2]);
        assert_eq!(ids(&queue.take_batch(Instant::now())), [9]);
    }

    #[test]
    fn calls_past_their_deadline_are_answered_with_a_timeout_and_left_out() {
        let now = Instant::now();
        let queue = Queue::default();
        let (late, mut late_answer) = job(1, 10, now);
        let (fine, _fine_answer) = job(2, 10, now + Duration::from_secs(5));
        queue.push(late);
        queue.push(fine);
        assert_eq!(ids(&queue.take_batch(now)), [2]);
        assert!(matches!(late_answer.try_recv(), Ok(Err(Failure::TimedOut))));
    }

    #[test]
    fn a_requeued_batch_goes_back_in_front_in_order_with_a_fresh_deadline() {
        let now = Instant::now();
        let queue = Queue::default();
        let mut answers = Vec::new();
        for id in [7, 8] {
            let (job, answered) = job(id, 10, now + Duration::from_secs(1));
            queue.push(job);
            answers.push(answered);
        }
        let mut failed = VecDeque::new();
        for id in [3, 4] {
            let (job, answered) = job(id, 10, now + Duration::from_millis(1));
            failed.push_back(job);
            answers.push(answered);
        }
        let fresh = now + Duration::from_secs(30);
        queue.requeue(&mut failed, fresh);
        assert!(failed.is_empty());
        assert_eq!(queue.requeued.load(Ordering::Relaxed), 2);
        let batch = queue.take_batch(now);
        assert_eq!(ids(&batch), [3, 4, 7, 8]);
        assert!(batch.iter().all(|j| j.deadline >= now + Duration::from_secs(1)));
        assert_eq!(batch[0].deadline, fresh);
    }

    #[test]
    fn runners_are_capped() {
        let queue = Queue::default();
        assert!(queue.claim_runner(2));
        assert!(queue.claim_runner(2));
        assert!(!queue.claim_runner(2));
        queue.end_runner();
        assert!(queue.claim_runner(2));
    }
}
