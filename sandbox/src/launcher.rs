//! Where workers come from: the program and folders they run in, the thread that forks them, a
//! uid of their own when the host is root, their memory cgroups, and the observer told of them.

use std::{
    path::PathBuf,
    process::{Child, Command},
    sync::{atomic::AtomicU64, Arc, Mutex},
    thread,
};

use crate::{cgroup, lock, observer::Observer, settings::Settings};

/// What every worker of a sandbox is started from.
pub(crate) struct Launcher {
    pub(crate) program: PathBuf,
    pub(crate) run_dir: PathBuf,
    pub(crate) settings: Settings,
    /// Numbers workers, calls and library copies, unique in this process.
    pub(crate) sequence: AtomicU64,
    /// The CPUs this process may run on: how many runners feed a pool's quick calls to workers.
    pub(crate) cpus: u32,
    /// Where workers' memory cgroups go, or why there are none.
    pub(crate) cgroups: Result<cgroup::MemoryCgroups, cgroup::CgroupError>,
    pub(crate) spawner: Spawner,
    /// The uids of this process's live workers, when the host is root and gives each its own.
    pub(crate) uids: Arc<Mutex<std::collections::HashSet<u32>>>,
    pub(crate) observer: Arc<dyn Observer>,
}

impl Launcher {
    pub(crate) fn new(program: PathBuf, run_dir: PathBuf, settings: Settings, observer: Arc<dyn Observer>) -> std::io::Result<Launcher> {
        Ok(Launcher {
            program,
            run_dir,
            settings,
            sequence: AtomicU64::new(0),
            cpus: thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
            cgroups: cgroup::MemoryCgroups::detect(),
            spawner: Spawner::start()?,
            uids: Arc::default(),
            observer,
        })
    }

    /// A uid no live worker of this process has, when the host is root (`None` otherwise). Drawn
    /// at random from [`WORKER_UIDS`], so that another server process on this machine (a
    /// recycled one draining) is as unlikely to hold it: about one in a billion per pair.
    pub(crate) fn allocate_uid(&self) -> Option<UidLease> {
        if !rustix::process::geteuid().is_root() {
            return None;
        }
        let mut uids = lock(&self.uids);
        let span = WORKER_UIDS.end - WORKER_UIDS.start;
        loop {
            let uid = WORKER_UIDS.start + random_u32() % span;
            if uids.insert(uid) {
                return Some(UidLease {
                    uid,
                    taken: Arc::clone(&self.uids),
                });
            }
        }
    }
}

pub(crate) fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // The kernel's generator does not fail once the system has booted; zero would only make the
    // draw less random, never unsafe (uids in use are skipped).
    let _ = getrandom::fill(&mut bytes);
    u32::from_le_bytes(bytes)
}

/// The range of uids workers get when the host runs as root: above every ordinary and system
/// account, below the 32-bit values that mean "no uid".
pub(crate) const WORKER_UIDS: std::ops::Range<u32> = 0x4000_0000..0x7fff_0000;

/// Starts worker processes from one long-lived thread. A worker asks to die with its parent, and
/// Linux sends that signal when the *thread* that forked it ends: a blocking-pool thread retired
/// after idling would take its workers with it.
pub(crate) struct Spawner {
    pub(crate) requests: Mutex<std::sync::mpsc::Sender<(Command, std::sync::mpsc::Sender<std::io::Result<Child>>)>>,
}

impl Spawner {
    pub(crate) fn start() -> std::io::Result<Spawner> {
        let (tx, rx) = std::sync::mpsc::channel::<(Command, std::sync::mpsc::Sender<std::io::Result<Child>>)>();
        thread::Builder::new().name("sandbox-spawner".into()).spawn(move || {
            for (mut command, reply) in rx {
                let _ = reply.send(command.spawn());
            }
        })?;
        Ok(Spawner { requests: Mutex::new(tx) })
    }

    pub(crate) fn spawn(&self, command: Command) -> std::io::Result<Child> {
        let (tx, rx) = std::sync::mpsc::channel();
        lock(&self.requests)
            .send((command, tx))
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        rx.recv().map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }
}

/// A worker's own uid, given back when the worker is dropped (after it was reaped).
#[derive(Debug)]
pub(crate) struct UidLease {
    pub(crate) uid: u32,
    pub(crate) taken: Arc<Mutex<std::collections::HashSet<u32>>>,
}

impl Drop for UidLease {
    fn drop(&mut self) {
        lock(&self.taken).remove(&self.uid);
    }
}
