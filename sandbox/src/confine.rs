//! Confinement of a sandbox worker, applied in order before the tenant's library is mapped (its
//! constructors run at `dlopen`). Each layer is reported as in force or not, with the reason, so
//! that an operator sees what protects them on this kernel.

use std::os::fd::IntoRawFd;

use rustix::process::{Resource, Rlimit};

use super::protocol::{Layer, Rlimits};

/// The uid and gid a worker drops to when the host runs as root and did not choose one
/// (`nobody` on Debian and most distributions).
const NOBODY: u32 = 65534;

/// Applies every layer; a layer that cannot be applied is reported, never fatal (the host decides
/// what to accept). The memory cgroup is the host's to set up, before it sends the library.
pub fn apply(rlimits: &Rlimits) -> Vec<Layer> {
    let root = rustix::process::geteuid().is_root();
    let mut layers = vec![environment(), working_dir()];
    layers.push(network_namespace(root));
    layers.push(ipc_namespace());
    layers.push(pid_namespace());
    layers.push(limits(rlimits));
    layers.push(unprivileged(root, rlimits.uid.unwrap_or(NOBODY)));
    layers.push(no_new_privs());
    layers.push(landlock());
    layers.push(seccomp());
    layers
}

fn layer(name: &str, result: Result<String, String>) -> Layer {
    let (active, detail) = match result {
        Ok(detail) => (true, detail),
        Err(why) => (false, why),
    };
    Layer {
        name: name.into(),
        active,
        detail,
    }
}

fn environment() -> Layer {
    let count = std::env::vars_os().count();
    layer(
        "clean_environment",
        if count == 0 {
            Ok("no environment variables: none of the host's settings or secrets".into())
        } else {
            Err(format!("{count} environment variables are set"))
        },
    )
}

fn working_dir() -> Layer {
    let result = std::env::current_dir()
        .map_err(|e| format!("no working folder: {e}"))
        .and_then(|dir| match std::fs::read_dir(&dir).map(|mut entries| entries.next().is_none()) {
            Ok(true) => Ok("an empty private working folder".to_owned()),
            Ok(false) => Err(format!("the working folder {} is not empty", dir.display())),
            Err(err) => Err(format!("the working folder {} cannot be read: {err}", dir.display())),
        });
    layer("private_working_dir", result)
}

fn network_namespace(root: bool) -> Layer {
    use rustix::thread::UnshareFlags;
    let flags = if root {
        UnshareFlags::NEWNET
    } else {
        UnshareFlags::NEWUSER | UnshareFlags::NEWNET
    };
    // SAFETY: the worker is single-threaded here, and these flags unshare no file descriptor table.
    #[allow(unsafe_code)]
    let result = unsafe { rustix::thread::unshare_unsafe(flags) };
    layer(
        "network_namespace",
        result
            .map(|()| "a private network namespace with no interface up: nothing to connect to".to_owned())
            .map_err(|e| format!("the kernel refused a private network namespace ({e})")),
    )
}

/// A private SysV IPC namespace: no shared memory, semaphores or queues of anyone else (seccomp
/// also denies those calls). Root may unshare it; an unprivileged host's worker may, within the
/// user namespace it made for its network namespace.
fn ipc_namespace() -> Layer {
    use rustix::thread::UnshareFlags;
    // SAFETY: the worker is single-threaded here, and this flag unshares no file descriptor table.
    #[allow(unsafe_code)]
    let result = unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWIPC) };
    layer(
        "ipc_namespace",
        result
            .map(|()| "a private IPC namespace: no other process's shared memory, semaphores or message queues".to_owned())
            .map_err(|e| format!("the kernel refused a private IPC namespace ({e}); seccomp still denies SysV and POSIX IPC")),
    )
}

/// A private PID namespace: the worker sees no other process, and no call that takes a pid can
/// name one outside. The process the host started stays outside it: it starts the namespace's
/// first process (its init, which only waits), then the worker, which returns from here and goes
/// on confining itself; it then waits for the worker and ends exactly as the worker ended, so
/// the host reads the same exit status as without the namespace. The worker is not the init
/// itself because an init ignores the signals it sends itself, so its own `abort()` would end
/// as a memory fault instead. When the host's process dies (the server killed it, or died), the
/// init sees its pipe close and exits, and the kernel kills the rest of the namespace.
fn pid_namespace() -> Layer {
    use rustix::thread::UnshareFlags;
    // SAFETY: the worker is single-threaded here, and this flag unshares no file descriptor table.
    #[allow(unsafe_code)]
    if let Err(e) = unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWPID) } {
        return layer(
            "pid_namespace",
            Err(format!(
                "the kernel refused a private PID namespace ({e}); seccomp still limits pid-taking calls to the worker itself"
            )),
        );
    }
    let refused = |what: &str, e: std::io::Error| {
        layer(
            "pid_namespace",
            Err(format!("{what} ({e}); seccomp still limits pid-taking calls to the worker itself")),
        )
    };
    // The init reads this pipe until every writer, that is the outside process, is gone.
    let (alive_read, alive_write) = match rustix::pipe::pipe() {
        Ok(ends) => ends,
        Err(e) => return refused("no pipe for the namespace's init", e.into()),
    };
    let (alive_read, alive_write) = (alive_read.into_raw_fd(), alive_write.into_raw_fd());
    let close_pipe = || {
        // SAFETY: closing this process's copies of the pipe, which it does not use.
        #[allow(unsafe_code)]
        unsafe {
            libc::close(alive_read);
            libc::close(alive_write);
        }
    };
    let init = match fork() {
        Err(e) => {
            close_pipe();
            return refused("cannot start the namespace's init", e);
        }
        Ok(0) => namespace_init(alive_read, alive_write),
        Ok(pid) => pid,
    };
    match fork() {
        Err(e) => {
            // SAFETY: plain system calls on a child of this process.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(init, libc::SIGKILL);
                libc::waitpid(init, std::ptr::null_mut(), 0);
            }
            close_pipe();
            refused("cannot start the worker in its namespace", e)
        }
        Ok(0) => {
            close_pipe();
            layer(
                "pid_namespace",
                Ok("a private PID namespace: no other process is visible or reachable by pid".to_owned()),
            )
        }
        Ok(worker) => outside(worker, init, alive_write),
    }
}

fn fork() -> std::io::Result<libc::pid_t> {
    // SAFETY: the process is single-threaded (no thread has been started yet), so the child may
    // go on running Rust code.
    #[allow(unsafe_code)]
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}

/// Closes every descriptor above stderr but `keep`.
fn close_above_stderr_but(keep: i32) {
    // SAFETY: no memory arguments; the caller keeps nothing else above stderr.
    #[allow(unsafe_code)]
    unsafe {
        if keep > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, (keep - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
    }
}

/// The namespace's first process: holds the namespace open while the outside process lives.
fn namespace_init(alive_read: i32, alive_write: i32) -> ! {
    // SAFETY: plain system calls; the buffer outlives the read.
    #[allow(unsafe_code)]
    unsafe {
        libc::close(alive_write);
        close_above_stderr_but(alive_read);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        let mut byte = 0u8;
        // Nothing is ever written: the read ends when the last writer is gone.
        while libc::read(alive_read, std::ptr::addr_of_mut!(byte).cast(), 1) != 0 {
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        libc::_exit(0)
    }
}

/// The host's own child, outside the namespace: waits for the worker, ends its init, and ends
/// as the worker did (the same exit code, or the same signal).
fn outside(worker: libc::pid_t, init: libc::pid_t, alive_write: i32) -> ! {
    // The channels and the library belong to the worker.
    close_above_stderr_but(alive_write);
    let mut status = 0;
    // SAFETY: plain system calls on this process's children and its own signal state.
    #[allow(unsafe_code)]
    unsafe {
        while libc::waitpid(worker, &mut status, 0) < 0 {
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                libc::_exit(70);
            }
        }
        libc::kill(init, libc::SIGKILL);
        libc::waitpid(init, std::ptr::null_mut(), 0);
        if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(signal, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), signal);
            libc::_exit(128 + signal)
        }
        libc::_exit(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 70 })
    }
}

/// The bytes of address space this process has mapped (`VmSize`).
fn own_address_space() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmSize:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no VmSize line"))?;
    Ok(kib * 1024)
}

fn limits(rlimits: &Rlimits) -> Layer {
    let set = |resource, soft: u64, hard: u64| {
        rustix::process::setrlimit(
            resource,
            Rlimit {
                current: Some(soft),
                maximum: Some(hard),
            },
        )
        .map_err(|e| format!("{resource:?}: {e}"))
    };
    let result = (|| {
        // The limit is on what the plugin adds: the worker's own mappings (its binary, and the
        // address space its allocator reserved up front) are already there and cost no memory.
        let own = own_address_space().map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
        let address_space = own.saturating_add(rlimits.address_space_bytes);
        set(Resource::As, address_space, address_space)?;
        // SIGXCPU at the soft limit, SIGKILL a second later.
        set(Resource::Cpu, rlimits.cpu_seconds, rlimits.cpu_seconds + 1)?;
        set(Resource::Nofile, rlimits.open_files, rlimits.open_files)?;
        set(Resource::Fsize, 0, 0)?;
        set(Resource::Nproc, 0, 0)?;
        set(Resource::Core, 0, 0)?;
        Ok(format!(
            "address space {} MiB beyond the worker's own, CPU {} s, {} open files, no file writes, no new processes or threads, no core dumps",
            rlimits.address_space_bytes >> 20,
            rlimits.cpu_seconds,
            rlimits.open_files
        ))
    })();
    layer("rlimits", result)
}

fn unprivileged(root: bool, uid: u32) -> Layer {
    if !root {
        return layer(
            "unprivileged_uid",
            Ok(format!(
                "runs as the host's own unprivileged uid (seen as {} inside the worker's user namespace): the host does not run as root",
                rustix::process::getuid().as_raw()
            )),
        );
    }
    // Per thread, as the raw system calls are: this worker has one thread.
    let result = (|| {
        rustix::thread::set_thread_groups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(uid)).map_err(|e| format!("setgid: {e}"))?;
        rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(uid)).map_err(|e| format!("setuid: {e}"))?;
        // Changing uid makes /proc/self root-owned; the library is opened through /proc/self/fd.
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::Dumpable).map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
        // Changing uid also clears the death signal: ask again to die with the host.
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
        Ok(format!(
            "runs as uid and gid {uid}, a uid of its own that no other worker or tenant shares, with no supplementary groups"
        ))
    })();
    layer("unprivileged_uid", result)
}

fn no_new_privs() -> Layer {
    layer(
        "no_new_privs",
        rustix::thread::set_no_new_privs(true)
            .map(|()| "set: no set-uid or file capability can raise privileges".to_owned())
            .map_err(|e| format!("PR_SET_NO_NEW_PRIVS failed: {e}")),
    )
}

/// Read access only to the shared libraries a plugin links against (the plugin itself is already
/// in memory); no writes anywhere; no TCP; no signals or abstract sockets outside the worker.
fn landlock() -> Layer {
    use landlock::{path_beneath_rules, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI};
    let abi = ABI::V6;
    let system = ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/etc/ld.so.cache"];
    let result = (|| -> Result<String, landlock::RulesetError> {
        let created = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))?
            .handle_access(AccessNet::from_all(abi))?
            .scope(Scope::from_all(abi))?
            .create()?
            .add_rules(path_beneath_rules(system, AccessFs::from_read(abi)))?;
        let status = created.restrict_self()?;
        Ok(match status.ruleset {
            RulesetStatus::FullyEnforced => {
                "read-only access to system libraries, no writes, no TCP, no signals outside the worker".to_owned()
            }
            RulesetStatus::PartiallyEnforced => "partly enforced: this kernel lacks some Landlock access rights".to_owned(),
            RulesetStatus::NotEnforced => "NOT_ENFORCED".to_owned(),
        })
    })();
    match result {
        Ok(detail) if detail == "NOT_ENFORCED" => layer("landlock", Err("this kernel does not enforce Landlock".to_owned())),
        Ok(detail) => layer("landlock", Ok(detail)),
        Err(err) => layer("landlock", Err(format!("not applied: {err}"))),
    }
}

/// Denies (EPERM) the system calls a plugin has no business making: networking, running programs,
/// new processes, tracing, mounts, namespaces, kernel modules, SysV and POSIX IPC, file watches and
/// the like; and the calls that act on another process (limits, priorities, scheduling, signals,
/// memory policy) unless they name this one. `clone3` answers ENOSYS so that the C library falls
/// back to `clone`, whose flags the filter can inspect.
fn seccomp() -> Layer {
    let result = seccomp_filters(std::process::id()).and_then(|(deny, nosys)| {
        seccompiler::apply_filter_all_threads(&nosys).map_err(|e| format!("installing the filter: {e}"))?;
        seccompiler::apply_filter_all_threads(&deny).map_err(|e| format!("installing the filter: {e}"))?;
        Ok("denies sockets, exec, fork and new processes, ptrace, mount, namespaces, kernel modules, bpf, keyrings, SysV and POSIX IPC, inotify and fanotify, clearing the parent-death signal, leaving the process group; limits, priorities, scheduling and signals only on the worker itself".to_owned())
    });
    layer("seccomp", result)
}

type Filters = (seccompiler::BpfProgram, seccompiler::BpfProgram);

/// System calls no plugin needs, denied whatever their arguments.
fn always_denied() -> Vec<i64> {
    let mut denied: Vec<i64> = vec![
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_process_madvise,
        libc::SYS_process_mrelease,
        libc::SYS_pidfd_open,
        libc::SYS_pidfd_getfd,
        libc::SYS_pidfd_send_signal,
        libc::SYS_kcmp,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_setgroups,
        libc::SYS_setfsuid,
        libc::SYS_setfsgid,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_syslog,
        libc::SYS_vhangup,
        // Leaving the process group would escape the kill that ends a dead server's workers.
        libc::SYS_setsid,
        libc::SYS_setpgid,
        // SysV IPC outlives its processes and is shared by every process of a uid.
        libc::SYS_shmget,
        libc::SYS_shmat,
        libc::SYS_shmdt,
        libc::SYS_shmctl,
        libc::SYS_semget,
        libc::SYS_semop,
        libc::SYS_semtimedop,
        libc::SYS_semctl,
        libc::SYS_msgget,
        libc::SYS_msgsnd,
        libc::SYS_msgrcv,
        libc::SYS_msgctl,
        libc::SYS_mq_open,
        libc::SYS_mq_unlink,
        libc::SYS_mq_timedsend,
        libc::SYS_mq_timedreceive,
        libc::SYS_mq_notify,
        libc::SYS_mq_getsetattr,
        // Landlock governs opens, not watches: a watch would tell which files come and go.
        libc::SYS_inotify_init1,
        libc::SYS_inotify_add_watch,
        libc::SYS_fanotify_init,
        libc::SYS_fanotify_mark,
    ];
    #[cfg(target_arch = "x86_64")]
    denied.extend([
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_inotify_init,
        libc::SYS_uselib,
    ]);
    denied
}

/// `prctl` options a plugin may not use: clearing or changing its parent-death signal (it would
/// outlive its server), letting another process trace it, rewriting its memory map's bounds.
const DENIED_PRCTL: [u64; 3] = [libc::PR_SET_PDEATHSIG as u64, libc::PR_SET_PTRACER as u64, libc::PR_SET_MM as u64];

/// The filters for worker `pid`: calls that name a process are allowed only when they name this
/// one (as 0, or as its own pid).
fn seccomp_filters(pid: u32) -> Result<Filters, String> {
    use std::collections::BTreeMap;

    use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule};
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp is not supported on {}: {e:?}", std::env::consts::ARCH))?;
    fn err(e: impl std::fmt::Display) -> String {
        e.to_string()
    }
    let condition = |arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64| SeccompCondition::new(arg, len, op, value).map_err(err);
    let rule = |conditions: Vec<SeccompCondition>| SeccompRule::new(conditions).map_err(err);
    // A pid argument that is neither 0 (this process) nor this process's own pid.
    let another = |arg: u8| -> Result<SeccompRule, String> {
        rule(vec![
            condition(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, 0)?,
            condition(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, u64::from(pid))?,
        ])
    };
    // A pid argument other than this process's own pid (0 means the process group for kill).
    let not_self =
        |arg: u8| -> Result<SeccompRule, String> { rule(vec![condition(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, u64::from(pid))?]) };

    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = always_denied().into_iter().map(|nr| (nr, Vec::new())).collect();
    // clone without CLONE_THREAD makes a process.
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![condition(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            0,
        )?])?],
    );
    // Calls whose first argument is a pid: only this process.
    for nr in [
        libc::SYS_prlimit64,
        libc::SYS_sched_setscheduler,
        libc::SYS_sched_setparam,
        libc::SYS_sched_setaffinity,
        libc::SYS_sched_setattr,
        libc::SYS_sched_getscheduler,
        libc::SYS_sched_getparam,
        libc::SYS_sched_getaffinity,
        libc::SYS_sched_getattr,
        libc::SYS_sched_rr_get_interval,
        libc::SYS_migrate_pages,
        libc::SYS_move_pages,
        libc::SYS_get_robust_list,
        libc::SYS_getpgid,
        libc::SYS_getsid,
    ] {
        rules.insert(nr, vec![another(0)?]);
    }
    // (which, who, …): only PRIO_PROCESS / IOPRIO_WHO_PROCESS of this process.
    let process_self = |which: u64| -> Result<Vec<SeccompRule>, String> {
        Ok(vec![
            rule(vec![condition(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, which)?])?,
            another(1)?,
        ])
    };
    rules.insert(libc::SYS_setpriority, process_self(libc::PRIO_PROCESS as u64)?);
    rules.insert(libc::SYS_getpriority, process_self(libc::PRIO_PROCESS as u64)?);
    rules.insert(libc::SYS_ioprio_set, process_self(1)?);
    rules.insert(libc::SYS_ioprio_get, process_self(1)?);
    // Signals: to this process only (not to its process group, which is the server's).
    rules.insert(libc::SYS_kill, vec![not_self(0)?]);
    rules.insert(libc::SYS_tgkill, vec![not_self(0)?]);
    rules.insert(libc::SYS_tkill, vec![not_self(0)?]);
    rules.insert(libc::SYS_rt_sigqueueinfo, vec![not_self(0)?]);
    rules.insert(libc::SYS_rt_tgsigqueueinfo, vec![not_self(0)?]);
    rules.insert(
        libc::SYS_prctl,
        DENIED_PRCTL
            .iter()
            .map(|&option| rule(vec![condition(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, option)?]))
            .collect::<Result<_, _>>()?,
    );
    let deny = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch).map_err(err)?;
    let nosys = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?;
    Ok((
        deny.try_into().map_err(|e: seccompiler::BackendError| e.to_string())?,
        nosys.try_into().map_err(|e: seccompiler::BackendError| e.to_string())?,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_seccomp_filters_compile_for_this_machine() {
        let (deny, nosys) = super::seccomp_filters(std::process::id()).unwrap();
        assert!(deny.len() > 50 && !nosys.is_empty());
    }
}
