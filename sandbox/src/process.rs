//! One worker process as the host sees it: started and loaded, its two pipes (blocking while it
//! loads, then async), a batch of calls written and answered, its end and how it ended.

use std::{
    collections::VecDeque,
    fs,
    io::{BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{atomic::Ordering, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::{
    cgroup,
    error::SpawnError,
    job::{Failure, Job},
    launcher::{Launcher, UidLease},
    lock,
    observer::Observer,
    output::{log_line, log_output, Label, LogBudget},
    protocol::{encode_frame, read_frame, read_frame_async, write_frame, FrameError, HostMsg, Layer, Rlimits, WorkerMsg, PROTOCOL_VERSION},
    settings::Limits,
};

/// How long a worker may take to confine itself, load its library and answer.
pub(crate) const LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Room for headers beyond a response body in a reply frame.
pub(crate) const FRAME_OVERHEAD: u64 = 1 << 20;

/// How long a worker told goodbye may take to exit before it is killed.
pub(crate) const GOODBYE_GRACE: Duration = Duration::from_secs(1);

/// Workers told goodbye, and when: reaped once they exit, killed after [`GOODBYE_GRACE`].
#[derive(Default)]
pub(crate) struct Retiring {
    workers: Mutex<Vec<(Worker, Instant)>>,
}

impl Retiring {
    /// Says goodbye to a healthy worker; the maintenance thread reaps it.
    pub(crate) fn retire(&self, mut worker: Worker) {
        worker.goodbye();
        lock(&self.workers).push((worker, Instant::now()));
    }

    /// Reaps retired workers that have exited; kills those that outstay [`GOODBYE_GRACE`].
    pub(crate) fn reap(&self) {
        let mut retiring = lock(&self.workers);
        retiring.retain_mut(|(worker, since)| !matches!(worker.child.try_wait(), Ok(Some(_))) && since.elapsed() < GOODBYE_GRACE);
    }
}

/// A worker's two pipes: blocking while it loads (on a thread of its own), then driven by tokio
/// for calls.
pub(crate) enum Channel {
    Blocking {
        input: ChildStdin,
        output: BufReader<DeadlineReader>,
    },
    Async {
        input: tokio::net::unix::pipe::Sender,
        output: tokio::net::unix::pipe::Receiver,
        /// Bytes read past the last frame.
        buffer: Vec<u8>,
    },
    /// Lost in a failed conversion; the worker is then treated as crashed.
    Gone,
}

/// How an asynchronous call ended before it became a [`Failure`].
pub(crate) enum CallEnd {
    Closed,
    SendFailed(std::io::Error),
    Failed(Failure),
}

/// One worker process and its channels.
pub(crate) struct Worker {
    pub(crate) child: Child,
    pub(crate) channel: Channel,
    pub(crate) pid: u32,
    pub(crate) calls: u64,
    pub(crate) rss_base: Option<u64>,
    /// `calls` when the growth was last checked.
    pub(crate) rss_checked: u64,
    pub(crate) last_used: Instant,
    pub(crate) output_log: Option<thread::JoinHandle<bool>>,
    pub(crate) dir: PathBuf,
    /// Dropped after the process has been reaped (fields drop after `Drop::drop`).
    pub(crate) cgroup: Option<cgroup::WorkerCgroup>,
    pub(crate) uid: Option<UidLease>,
    pub(crate) log_budget: LogBudget,
    pub(crate) observer: Arc<dyn Observer>,
}

impl Worker {
    /// Starts a worker, has it confine itself and load `library`; returns it with the layers it
    /// reported and the plugin's manifest.
    pub(crate) fn spawn(
        launcher: &Launcher,
        library: Option<&Path>,
        limits: &Limits,
        tenant: Option<&str>,
        module: &str,
    ) -> Result<(Worker, Vec<Layer>, Option<plugin_api::abi::Manifest>), SpawnError> {
        let started = Instant::now();
        let id = launcher.sequence.fetch_add(1, Ordering::Relaxed);
        let dir = launcher.run_dir.join(format!("w{id}"));
        let mut child = start(launcher, &dir)?;
        let pid = child.id();
        // Into its memory cgroup before it is told what to load.
        let (cgroup, cgroup_layer) = place_in_cgroup(launcher, id, pid, limits);
        let (Some(input), Some(output), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the worker's pipes were not set up".into());
        };
        let label = (tenant.unwrap_or("admin").to_owned(), module.to_owned());
        let output_log = thread::Builder::new()
            .name("sandbox-output".into())
            .spawn(move || log_output(stderr, &label.0, &label.1))
            .ok();
        launcher.observer.worker_spawned();
        let mut worker = Worker {
            child,
            channel: Channel::Blocking {
                input,
                output: BufReader::new(DeadlineReader {
                    pipe: output,
                    deadline: None,
                }),
            },
            pid,
            calls: 0,
            rss_base: None,
            rss_checked: 0,
            last_used: Instant::now(),
            output_log,
            dir,
            cgroup,
            uid: launcher.allocate_uid(),
            log_budget: LogBudget::default(),
            observer: Arc::clone(&launcher.observer),
        };
        let load = HostMsg::Load {
            protocol: PROTOCOL_VERSION,
            library: library.map(|p| p.to_string_lossy().into_owned()),
            module: module.to_owned(),
            rlimits: Rlimits {
                address_space_bytes: limits.memory_bytes,
                cpu_seconds: launcher.settings.cpu_seconds,
                open_files: launcher.settings.open_files,
                uid: worker.uid.as_ref().map(|lease| lease.uid),
            },
        };
        let (mut layers, manifest) = worker.load(&load, started + LOAD_TIMEOUT)?;
        layers.push(cgroup_layer);
        let took = started.elapsed();
        launcher.observer.worker_loaded(took);
        tracing::debug!(module, pid, elapsed_ms = took.as_secs_f64() * 1000.0, "sandbox worker ready");
        Ok((worker, layers, manifest))
    }

    /// Sends the load message and waits, until `deadline`, for the worker to say it confined
    /// itself and loaded the library: the layers it reported and the plugin's manifest.
    fn load(&mut self, load: &HostMsg, deadline: Instant) -> Result<(Vec<Layer>, Option<plugin_api::abi::Manifest>), SpawnError> {
        let Channel::Blocking { input, output } = &mut self.channel else {
            return Err("a new worker's channel is not blocking".into());
        };
        write_frame(input, load, &[]).map_err(|e| format!("the worker did not take its load message: {e}"))?;
        output.get_mut().deadline = Some(deadline);
        let loaded = read_frame::<WorkerMsg>(output, 64 << 20);
        output.get_mut().deadline = None;
        match loaded {
            Ok((WorkerMsg::Loaded { protocol, .. }, _)) if protocol != PROTOCOL_VERSION => {
                Err(format!("the worker speaks protocol {protocol}, the host {PROTOCOL_VERSION}").into())
            }
            Ok((WorkerMsg::Loaded { error: Some(error), .. }, _)) => Err(error.into()),
            Ok((WorkerMsg::Loaded { layers, manifest, .. }, _)) => Ok((layers, manifest)),
            Ok((other, _)) => Err(format!("the worker answered its load message with {other:?}").into()),
            Err(FrameError::Closed) => Err(format!("the worker died while loading: {}", self.exit_status()).into()),
            Err(FrameError::Io(err)) if err.kind() == std::io::ErrorKind::TimedOut => {
                Err(format!("the worker did not answer within {} s", LOAD_TIMEOUT.as_secs()).into())
            }
            Err(err) => Err(format!("the worker's answer was unreadable: {err}").into()),
        }
    }

    /// Sends `batch` in one write and answers its calls as their replies come, in order. On a
    /// failure, returns the call it struck; the calls after it stay in `batch`.
    ///
    /// A call's deadline counts from when the worker could start it (the reply before it), not
    /// from when it was queued: a call queued behind one that turned slow is delayed, not failed.
    pub(crate) async fn run_batch(&mut self, batch: &mut VecDeque<Job>, limits: &Limits, label: Label<'_>) -> Result<(), (Job, Failure)> {
        let (limit, timeout) = (limits.max_response_bytes as u64 + FRAME_OVERHEAD, limits.call_timeout);
        let Some(first_deadline) = batch.front().map(|job| job.deadline) else {
            return Ok(());
        };
        let fail = |batch: &mut VecDeque<Job>, failure: Failure| match batch.pop_front() {
            Some(job) => Err((job, failure)),
            None => Ok(()),
        };
        if let Err(err) = self.make_async() {
            let failure = self.crashed(format!("its channel could not be handed to the async runtime ({err})"));
            return fail(batch, failure);
        }
        let Channel::Async { input, output, buffer } = &mut self.channel else {
            let failure = self.crashed("its channel was lost".to_owned());
            return fail(batch, failure);
        };
        self.calls += batch.len() as u64;
        let mut frames = Vec::with_capacity(batch.iter().map(|job| job.frame.len()).sum());
        for job in batch.iter() {
            frames.extend_from_slice(&job.frame);
        }
        let sent = tokio::time::timeout_at(first_deadline.into(), tokio::io::AsyncWriteExt::write_all(input, &frames)).await;
        let mut startable = Instant::now();
        let end = match sent {
            Err(_) => Some(CallEnd::Failed(Failure::TimedOut)),
            Ok(Err(err)) => Some(CallEnd::SendFailed(err)),
            Ok(Ok(())) => loop {
                let Some(job) = batch.front() else { break None };
                let deadline = job.deadline.max(startable + timeout);
                let read = tokio::time::timeout_at(deadline.into(), read_frame_async::<WorkerMsg, _>(output, buffer, limit)).await;
                match read {
                    Err(_) => break Some(CallEnd::Failed(Failure::TimedOut)),
                    // The worker's word on which call a line belongs to is not taken: the line is
                    // the call's in progress, the first unanswered one.
                    Ok(Ok((WorkerMsg::Log { level, message, .. }, _))) => self
                        .log_budget
                        .spend(message.len(), || log_line(level, &message, &job.request_id, label)),
                    Ok(Ok((
                        WorkerMsg::Reply {
                            id: answered,
                            outcome,
                            micros,
                        },
                        raw,
                    ))) if answered == job.id => {
                        startable = Instant::now();
                        self.log_budget.end_call(label, &job.request_id);
                        if let Some(job) = batch.pop_front() {
                            let _ = job.answer.send(Ok((outcome, raw, micros)));
                        }
                    }
                    Ok(Ok((other, _))) => {
                        break Some(CallEnd::Failed(Failure::Broken(format!(
                            "the worker broke the protocol: {other:?}"
                        ))))
                    }
                    Ok(Err(FrameError::Closed)) => break Some(CallEnd::Closed),
                    Ok(Err(FrameError::TooLarge(size, _))) => {
                        break Some(CallEnd::Failed(Failure::TooLarge(size.saturating_sub(FRAME_OVERHEAD))))
                    }
                    Ok(Err(err)) => break Some(CallEnd::Failed(Failure::Broken(format!("the worker broke the protocol: {err}")))),
                }
            },
        };
        match end {
            None => Ok(()),
            Some(CallEnd::Closed) => {
                let failure = self.crashed(String::new());
                fail(batch, failure)
            }
            Some(CallEnd::SendFailed(err)) => {
                let failure = self.crashed(format!("the request could not be sent ({err})"));
                fail(batch, failure)
            }
            Some(CallEnd::Failed(failure)) => fail(batch, failure),
        }
    }

    /// Hands the pipes to tokio (once, at the first call), keeping what was read ahead.
    pub(crate) fn make_async(&mut self) -> std::io::Result<()> {
        if !matches!(self.channel, Channel::Blocking { .. }) {
            return Ok(());
        }
        let Channel::Blocking { input, output } = std::mem::replace(&mut self.channel, Channel::Gone) else {
            return Ok(());
        };
        let buffer = output.buffer().to_vec();
        let output = output.into_inner().pipe;
        let input = tokio::net::unix::pipe::Sender::from_owned_fd(std::os::fd::OwnedFd::from(input))?;
        let output = tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(output))?;
        self.channel = Channel::Async { input, output, buffer };
        Ok(())
    }

    /// Tells the worker to exit (it is idle: the pipe has room for this small frame).
    pub(crate) fn goodbye(&mut self) {
        match &mut self.channel {
            Channel::Blocking { input, .. } => {
                let _ = write_frame(input, &HostMsg::Goodbye, &[]);
            }
            Channel::Async { input, .. } => {
                if let Ok(frame) = encode_frame(&HostMsg::Goodbye, &[]) {
                    let _ = input.try_write(&frame);
                }
            }
            Channel::Gone => {}
        }
    }

    /// The worker died: how, and whether it ran out of memory.
    pub(crate) fn crashed(&mut self, context: String) -> Failure {
        // The host's child outlives the worker in its PID namespace by the moment it takes to
        // pass on how the worker ended; a worker that closed its channel but runs on is ended
        // after that moment, so that waiting for its status cannot hang.
        let ending = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && ending.elapsed() < Duration::from_millis(100) {
            thread::sleep(Duration::from_micros(200));
        }
        let _ = self.child.kill();
        let status = self.exit_status();
        let reported = self.output_log.take().and_then(|h| h.join().ok()).unwrap_or(false);
        let out_of_memory = reported || self.cgroup.as_ref().is_some_and(cgroup::WorkerCgroup::oom_killed);
        let status = if context.is_empty() {
            status
        } else {
            format!("{status}; {context}")
        };
        Failure::Crashed { status, out_of_memory }
    }

    pub(crate) fn exit_status(&mut self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match self.child.wait() {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => format!("the worker exited with status {code}"),
                (None, Some(signal)) => format!("the worker was killed by signal {signal} ({})", signal_name(signal)),
                _ => format!("the worker ended ({status})"),
            },
            Err(err) => format!("the worker's end could not be read: {err}"),
        }
    }

    /// Resident memory, from `/proc`.
    /// The resident memory of the process that runs the plugin: in a PID namespace, the host's
    /// child waits outside it while its two children (the namespace's init and the worker) run
    /// inside; the init's few pages count too, which does not change the growth measured.
    pub(crate) fn rss(&self) -> Option<u64> {
        let statm = |pid: &str| -> Option<u64> {
            let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
            let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
            Some(pages * 4096)
        };
        let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid)).unwrap_or_default();
        if children.trim().is_empty() {
            return statm(&self.pid.to_string());
        }
        children.split_whitespace().map(statm).sum()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(handle) = self.output_log.take() {
            let _ = handle.join();
        }
        let _ = fs::remove_dir_all(&self.dir);
        self.observer.worker_gone();
    }
}

/// Starts the worker program in its own empty working folder, with piped stdio and no
/// environment.
fn start(launcher: &Launcher, dir: &Path) -> Result<Child, SpawnError> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create its working folder {}: {e}", dir.display()))?;
    let mut command = Command::new(&launcher.program);
    command
        .arg("worker")
        .env_clear()
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    launcher.spawner.spawn(command).map_err(|e| {
        let _ = fs::remove_dir(dir);
        format!("cannot start {} worker: {e}", launcher.program.display()).into()
    })
}

/// The worker's own memory cgroup, and the layer it makes (inactive, with the reason, when
/// cgroups are unavailable).
fn place_in_cgroup(launcher: &Launcher, id: u64, pid: u32, limits: &Limits) -> (Option<cgroup::WorkerCgroup>, Layer) {
    let placed = match &launcher.cgroups {
        Ok(cgroups) => cgroups.place(id, pid, limits.memory_bytes),
        Err(why) => return (None, unavailable_cgroup(why)),
    };
    match placed {
        Ok(cgroup) => (
            Some(cgroup),
            Layer {
                name: "memory_cgroup".into(),
                active: true,
                detail: format!(
                    "memory (resident and cache) limited to {} MiB by its own cgroup",
                    limits.memory_bytes >> 20
                ),
            },
        ),
        Err(why) => (None, unavailable_cgroup(&why)),
    }
}

pub(crate) fn unavailable_cgroup(why: &crate::cgroup::CgroupError) -> Layer {
    Layer {
        name: "memory_cgroup".into(),
        active: false,
        detail: format!("{why}; memory is bounded by RLIMIT_AS alone"),
    }
}

pub(crate) fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGSEGV => "SIGSEGV, a memory fault",
        libc::SIGABRT => "SIGABRT, an abort",
        libc::SIGKILL => "SIGKILL",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGSYS => "SIGSYS, a forbidden system call",
        libc::SIGXCPU => "SIGXCPU, CPU time limit",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// A worker's reply pipe whose reads fail with `TimedOut` once `deadline` has passed, so that a
/// worker that stalls, even in the middle of a frame, cannot hold its caller.
pub(crate) struct DeadlineReader {
    pub(crate) pipe: ChildStdout,
    pub(crate) deadline: Option<Instant>,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        if let Some(deadline) = self.deadline {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the worker's deadline passed"));
                }
                let mut fds = [PollFd::new(&self.pipe, PollFlags::IN)];
                let wait = Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                };
                match poll(&mut fds, Some(&wait)) {
                    Ok(0) => continue,
                    Ok(_) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(err) => return Err(err.into()),
                }
            }
        }
        self.pipe.read(buf)
    }
}
