//! Confinement of a sandbox worker, applied in order before the tenant's library is mapped (its
//! constructors run at `dlopen`). Each layer is reported as in force or not, with the reason, so
//! that an operator sees what protects them on this kernel.

use rustix::process::{Resource, Rlimit};

use super::protocol::{Layer, Rlimits};

/// The uid and gid a worker drops to when the host runs as root (`nobody` on Debian and most
/// distributions).
const NOBODY: u32 = 65534;

/// Applies every layer; a layer that cannot be applied is reported, never fatal (the host decides
/// what to accept). The memory cgroup is the host's to set up, before it sends the library.
pub fn apply(rlimits: &Rlimits) -> Vec<Layer> {
    let root = rustix::process::geteuid().is_root();
    let mut layers = vec![environment(), working_dir()];
    layers.push(network_namespace(root));
    layers.push(limits(rlimits));
    layers.push(unprivileged(root));
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

fn unprivileged(root: bool) -> Layer {
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
        rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(NOBODY)).map_err(|e| format!("setgid: {e}"))?;
        rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(NOBODY)).map_err(|e| format!("setuid: {e}"))?;
        // Changing uid makes /proc/self root-owned; the library is opened through /proc/self/fd.
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::Dumpable).map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
        // Changing uid also clears the death signal: ask again to die with the host.
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
        Ok(format!("runs as uid and gid {NOBODY} (nobody), with no supplementary groups"))
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
/// new processes, tracing, mounts, namespaces, kernel modules and the like. `clone3` answers
/// ENOSYS so that the C library falls back to `clone`, whose flags the filter can inspect.
fn seccomp() -> Layer {
    let result = seccomp_filters().and_then(|(deny, nosys)| {
        seccompiler::apply_filter_all_threads(&nosys).map_err(|e| format!("installing the filter: {e}"))?;
        seccompiler::apply_filter_all_threads(&deny).map_err(|e| format!("installing the filter: {e}"))?;
        Ok("denies sockets, exec, fork and new processes, ptrace, mount, namespaces, kernel modules, bpf, keyrings".to_owned())
    });
    layer("seccomp", result)
}

type Filters = (seccompiler::BpfProgram, seccompiler::BpfProgram);

fn seccomp_filters() -> Result<Filters, String> {
    use std::collections::BTreeMap;

    use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule};
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp is not supported on {}: {e:?}", std::env::consts::ARCH))?;
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
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_setgroups,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_syslog,
    ];
    #[cfg(target_arch = "x86_64")]
    denied.extend([libc::SYS_fork, libc::SYS_vfork, libc::SYS_iopl, libc::SYS_ioperm]);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = denied.into_iter().map(|nr| (nr, Vec::new())).collect();
    // clone without CLONE_THREAD makes a process.
    let not_a_thread = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64), 0)
        .map_err(|e| e.to_string())?;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![not_a_thread]).map_err(|e| e.to_string())?],
    );
    let deny =
        SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch).map_err(|e| e.to_string())?;
    let nosys = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    Ok((
        deny.try_into().map_err(|e: seccompiler::BackendError| e.to_string())?,
        nosys.try_into().map_err(|e: seccompiler::BackendError| e.to_string())?,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_seccomp_filters_compile_for_this_machine() {
        let (deny, nosys) = super::seccomp_filters().unwrap();
        assert!(deny.len() > 50 && !nosys.is_empty());
    }
}
