//! A memory cgroup per sandbox worker, when the host may create cgroups (cgroup v1's memory
//! controller, under the host's own cgroup). The host puts each worker into its cgroup before the
//! worker loads anything, and reads its OOM count when the worker dies.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Why a worker gets no memory cgroup.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CgroupError {
    /// This host has no memory cgroups to give (the reason in words).
    #[error("{0}")]
    Unavailable(String),
    /// A cgroup file could not be written.
    #[error("cannot {action} {path} ({cause})")]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: String,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |err| CgroupError::Io {
        action,
        path: path.to_owned(),
        cause: err.to_string(),
    }
}

/// Where this process creates its workers' cgroups: `<own memory cgroup>/plughost-<pid>`.
#[derive(Debug)]
pub struct MemoryCgroups {
    base: PathBuf,
}

impl MemoryCgroups {
    /// Sets up the parent cgroup, or says why there can be none.
    pub fn detect() -> Result<MemoryCgroups, CgroupError> {
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| CgroupError::Unavailable(format!("/proc/self/cgroup is unreadable ({e})")))?;
        let Some(path) = own.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers.split(',').any(|c| c == "memory").then(|| path.to_owned())
        }) else {
            return Err(CgroupError::Unavailable(
                "no cgroup v1 memory controller (a cgroup v2 host needs a delegated subtree)".to_owned(),
            ));
        };
        let parent = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
        if !parent.join("memory.limit_in_bytes").exists() {
            return Err(CgroupError::Unavailable(format!(
                "the memory controller is not mounted at {}",
                parent.display()
            )));
        }
        remove_stale(&parent);
        let base = parent.join(format!("plughost-{}", std::process::id()));
        fs::create_dir_all(&base).map_err(io("create", &base))?;
        Ok(MemoryCgroups { base })
    }

    /// A cgroup limited to `limit_bytes`, holding process `pid`.
    pub fn place(&self, worker: u64, pid: u32, limit_bytes: u64) -> Result<WorkerCgroup, CgroupError> {
        let dir = self.base.join(format!("w{worker}"));
        fs::create_dir(&dir).map_err(io("create", &dir))?;
        let cgroup = WorkerCgroup { dir };
        let write = |file: &str, value: String| {
            let path = cgroup.dir.join(file);
            fs::write(&path, value).map_err(io("write", &path))
        };
        write("memory.limit_in_bytes", limit_bytes.to_string())?;
        write("cgroup.procs", pid.to_string())?;
        Ok(cgroup)
    }
}

/// Removes the cgroups of plughost processes that are gone.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("plughost-").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(children) = fs::read_dir(entry.path()) {
            for child in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = fs::remove_dir(child.path());
            }
        }
        let _ = fs::remove_dir(entry.path());
    }
}

/// One worker's cgroup; removed when dropped (after the worker has ended).
#[derive(Debug)]
pub struct WorkerCgroup {
    dir: PathBuf,
}

impl WorkerCgroup {
    /// Whether the kernel killed a process of this cgroup for passing its limit.
    pub fn oom_killed(&self) -> bool {
        fs::read_to_string(self.dir.join("memory.oom_control"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok()))
            })
            .is_some_and(|kills| kills > 0)
    }
}

impl Drop for WorkerCgroup {
    fn drop(&mut self) {
        // The worker's own processes (in its PID namespace) may still be leaving when the host's
        // child has been reaped: the kernel refuses to remove a cgroup that holds a process.
        for _ in 0..20 {
            match fs::remove_dir(&self.dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(std::time::Duration::from_millis(1)),
                _ => return,
            }
        }
    }
}
