//! `plughost serve` runs as a small supervisor: it owns the listening socket and keeps one worker
//! process (the same binary) serving on it. Recycling starts a fresh worker on the same socket,
//! waits until it is ready, then asks the old one to drain and exit: no connection is refused and
//! the memory of unloadable old plugin images goes away with the old process. A worker that dies
//! is replaced. The supervisor's PID stays the same throughout, so init systems and containers see
//! one long-lived process; its PID is in `DATA_DIR/plughost.pid`.
//!
//! Signals: SIGTERM/SIGINT stop (workers drain first); SIGHUP recycles (also `plughost recycle`).
//! Workers tell the supervisor they are ready with SIGUSR1, and ask for a recycle with SIGUSR2
//! when their leaked images pass `RELOAD_LEAK_BUDGET_MB`.

use std::{
    ffi::OsString,
    net::{SocketAddr, TcpListener},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use command_fds::{CommandFdExt, FdMapping};
use rustix::process::{kill_process, Pid, Signal};
use tokio::{
    process::{Child, Command},
    signal::unix::{signal, SignalKind},
    task::JoinHandle,
};

/// How long a new worker may take to load its plugins and say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The file descriptor the listening socket has in a worker (the systemd convention).
const LISTEN_FD: i32 = 3;

/// How to start a worker: the program, its arguments, and extra environment.
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
}

/// In a worker: the listening socket the supervisor handed over, if any.
pub fn inherited_listener() -> anyhow::Result<Option<TcpListener>> {
    listenfd::ListenFd::from_env()
        .take_tcp_listener(0)
        .context("the inherited socket (LISTEN_FDS) is not a TCP listener")
}

/// In a worker: die with the supervisor, whatever kills it.
pub fn die_with_parent() {
    if let Err(err) = rustix::process::set_parent_process_death_signal(Some(Signal::TERM)) {
        tracing::warn!("cannot tie this worker's life to its supervisor's: {err}");
    }
}

/// In a worker: tell the supervisor this worker is serving.
pub fn signal_ready() {
    signal_parent(Signal::USR1);
}

/// In a worker: ask the supervisor for a fresh worker.
pub fn request_recycle() {
    signal_parent(Signal::USR2);
}

fn signal_parent(signal: Signal) {
    match rustix::process::getppid() {
        Some(parent) => {
            if let Err(err) = kill_process(parent, signal) {
                tracing::warn!("cannot signal the supervisor (pid {}): {err}", parent.as_raw_nonzero());
            }
        }
        None => tracing::warn!("this worker has no supervisor to signal"),
    }
}

/// Where the supervisor's PID is written.
pub fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join("plughost.pid")
}

/// `plughost recycle`: sends SIGHUP to the supervisor named in the PID file.
pub fn send_recycle(data_dir: &Path) -> anyhow::Result<u32> {
    let path = pid_file(data_dir);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no PID file at {}: is plughost serving with this DATA_DIR?", path.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a PID", path.display()))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains("plughost") {
        anyhow::bail!(
            "{} names pid {pid}, which is not a running plughost: the file is stale",
            path.display()
        );
    }
    let target = Pid::from_raw(pid).context("the PID file holds an invalid PID")?;
    kill_process(target, Signal::HUP).with_context(|| format!("cannot signal pid {pid}"))?;
    Ok(pid as u32)
}

struct Worker {
    child: Child,
    pid: u32,
    started: Instant,
}

/// Runs the supervisor until SIGTERM or SIGINT; the listening address is printed on stdout once
/// the first worker is ready.
pub async fn run(bind: SocketAddr, data_dir: &Path, grace: Duration, command: WorkerCommand) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut ready = signal(SignalKind::user_defined1())?;
    let mut recycle = signal(SignalKind::user_defined2())?;

    let listener = TcpListener::bind(bind).with_context(|| format!("cannot listen on {bind} (BIND): is another process using it?"))?;
    let addr = listener.local_addr()?;
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create DATA_DIR {}", data_dir.display()))?;
    let pid_path = pid_file(data_dir);
    std::fs::write(&pid_path, format!("{}\n", std::process::id())).with_context(|| format!("cannot write {}", pid_path.display()))?;

    let mut current = start(&command, &listener, &mut ready)
        .await
        .context("the first worker did not start")?;
    println!("plughost listening on http://{addr}");
    tracing::info!(%addr, supervisor = std::process::id(), worker = current.pid, "serving");

    let mut retiring: Vec<JoinHandle<()>> = Vec::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => current = replace(current, &command, &listener, &mut ready, &mut retiring, "SIGHUP").await,
            _ = recycle.recv() => current = replace(current, &command, &listener, &mut ready, &mut retiring, "leak budget").await,
            status = current.child.wait() => {
                let status = describe(status);
                end_group(current.pid);
                tracing::error!(worker = current.pid, "worker exited unexpectedly ({status}); starting another");
                if current.started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(100);
                }
                // Until a replacement serves, keep trying, and keep answering SIGTERM and SIGINT.
                let replacement = loop {
                    tokio::select! {
                        _ = term.recv() => break None,
                        _ = int.recv() => break None,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    tokio::select! {
                        _ = term.recv() => break None,
                        _ = int.recv() => break None,
                        started = start(&command, &listener, &mut ready) => match started {
                            Ok(worker) => break Some(worker),
                            Err(err) => tracing::error!("a replacement worker did not start: {err:#}; retrying in {backoff:?}"),
                        },
                    }
                };
                match replacement {
                    Some(worker) => {
                        tracing::info!(worker = worker.pid, "worker serving");
                        current = worker;
                    }
                    None => {
                        tracing::info!("stopping while no worker serves");
                        for handle in retiring {
                            let _ = handle.await;
                        }
                        let _ = std::fs::remove_file(&pid_path);
                        return Ok(());
                    }
                }
            }
        }
    }

    tracing::info!(worker = current.pid, "stopping: the worker drains its requests");
    retiring.push(retire(current, grace));
    for handle in retiring {
        let _ = handle.await;
    }
    let _ = std::fs::remove_file(&pid_path);
    Ok(())
}

/// Starts a fresh worker; on success the old one is asked to drain and exit.
async fn replace(
    old: Worker,
    command: &WorkerCommand,
    listener: &TcpListener,
    ready: &mut tokio::signal::unix::Signal,
    retiring: &mut Vec<JoinHandle<()>>,
    why: &str,
) -> Worker {
    tracing::info!(worker = old.pid, reason = why, "recycling: starting a fresh worker");
    match start(command, listener, ready).await {
        Ok(new) => {
            tracing::info!(
                worker = new.pid,
                retiring = old.pid,
                "recycled: the fresh worker serves; the old one drains"
            );
            retiring.retain(|handle| !handle.is_finished());
            retiring.push(retire(old, Duration::from_secs(3600)));
            new
        }
        Err(err) => {
            tracing::error!(worker = old.pid, "recycle failed, the current worker keeps serving: {err:#}");
            old
        }
    }
}

/// Spawns a worker on the shared socket and waits for its SIGUSR1.
async fn start(command: &WorkerCommand, listener: &TcpListener, ready: &mut tokio::signal::unix::Signal) -> anyhow::Result<Worker> {
    let socket: OwnedFd = listener.try_clone().context("cannot share the listening socket")?.into();
    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args)
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null())
        .fd_mappings(vec![FdMapping {
            parent_fd: socket,
            child_fd: LISTEN_FD,
        }])
        .context("cannot map the listening socket")?;
    // A process group of its own, which its sandbox workers join and may not leave (seccomp): when
    // the worker ends, whatever it started ends with it (see `end_group`).
    cmd.process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("cannot start {}", command.program.display()))?;
    let pid = child.id().unwrap_or(0);
    tokio::select! {
        _ = ready.recv() => Ok(Worker { child, pid, started: Instant::now() }),
        status = child.wait() => anyhow::bail!("worker {pid} exited before it was ready ({})", describe(status)),
        () = tokio::time::sleep(READY_TIMEOUT) => {
            let _ = child.kill().await;
            anyhow::bail!("worker {pid} was not ready within {READY_TIMEOUT:?}")
        }
    }
}

/// Asks a worker to drain and exit (SIGTERM), and kills it if it outlives `grace` and a margin.
fn retire(mut worker: Worker, grace: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Some(pid) = Pid::from_raw(worker.pid as i32) {
            let _ = kill_process(pid, Signal::TERM);
        }
        match tokio::time::timeout(grace + Duration::from_secs(5), worker.child.wait()).await {
            Ok(status) => tracing::info!(worker = worker.pid, "worker exited ({})", describe(status)),
            Err(_) => {
                tracing::warn!(worker = worker.pid, "worker did not exit in time; killing it");
                let _ = worker.child.kill().await;
            }
        }
        end_group(worker.pid);
    })
}

/// Kills what is left of an ended worker's process group: sandbox workers whose server died
/// before it could stop them (they also die with their parent, but a mechanism in the
/// supervisor's hands does not depend on what runs inside them).
fn end_group(pid: u32) {
    if let Some(group) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        // ESRCH (nothing left) is the usual answer.
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(err) => format!("unknown status: {err}"),
    }
}
