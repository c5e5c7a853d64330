//! Hostile tenants against each other and against the server: each probe of the `rogue` fixture
//! is run as a tenant, with the server as root and as an unprivileged uid (as containers run it),
//! and the victim is checked (another tenant's worker, the server, the supervisor), not only the
//! answer the attacker got.

use std::time::Duration;

use serde_json::Value;

use crate::{
    sandbox::Tenant,
    support::{alive, plugin_file, plugin_processes, sandbox_processes, wait_for, App, Setup},
};

/// A server with the admin's `hello`, an attacking tenant running `rogue` and a victim tenant
/// running `module2`, both sandboxed and warm. `.env` holds a secret the attacker must not read,
/// and the server is started with a descriptor open on it, as a careless init system might.
pub(crate) struct Scene {
    pub app: App,
    pub attacker: Tenant,
    pub victim: Tenant,
}

impl Scene {
    pub(crate) fn start(user: Option<u32>) -> Scene {
        let mut setup = Setup::default()
            .plugins(&["hello"])
            .env("RESCAN_INTERVAL_MS", "200")
            .env("SANDBOX_QUARANTINE_CRASHES", "1000")
            .root_file(".env", "HOST_SECRET_FOR_TESTS=do-not-leak\n")
            .inherit_root_file(".env");
        if let Some(uid) = user {
            setup = setup.run_as(uid);
        }
        let app = setup.start();
        let attacker = Tenant::add(&app, "attacker");
        let victim = Tenant::add(&app, "victim");
        attacker.install(
            &app,
            "librogue.so",
            &std::fs::read(plugin_file("rogue")).unwrap(),
            "/rest/services/rogue/hello/",
        );
        victim.install(
            &app,
            "libmodule2.so",
            &std::fs::read(plugin_file("module2")).unwrap(),
            "/rest/services/module2/hello-world2/",
        );
        Scene { app, attacker, victim }
    }

    fn attack(&self, path: &str) -> Value {
        let reply = self.attacker.get(&self.app, &format!("/rest/services/rogue/{path}"));
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        reply.json()
    }

    /// The attack was refused by the operating system.
    fn denied(&self, path: &str) -> String {
        let body = self.attack(path);
        assert_eq!(body["denied"], true, "{path} was not denied: {body}");
        body["error"].as_str().unwrap_or_default().to_owned()
    }

    /// The attacker's own pid, as it sees it.
    fn attacker_own_pid(&self) -> u32 {
        self.attack("hello")["pid"].as_u64().unwrap() as u32
    }

    /// The one process running the plugin in `file`, as the host sees it.
    fn plugin_process(&self, file: &str) -> u32 {
        let workers = plugin_processes(self.app.worker_pid(), file);
        assert_eq!(workers.len(), 1, "expected one worker running {file}, found {workers:?}");
        workers[0]
    }

    /// The victim tenant's worker.
    fn victim_pid(&self) -> u32 {
        assert_eq!(self.victim.get(&self.app, "/rest/services/module2/hello-world2/").status, 200);
        self.plugin_process("libmodule2.so")
    }

    fn attacker_pid(&self) -> u32 {
        assert_eq!(self.attack("hello")["hello"], "from the sandbox");
        self.plugin_process("librogue.so")
    }
}

/// What the kernel says of a process: its limits file, its nice value, its policy, its CPUs.
fn vitals(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    // After the command: state is field 3, nice 19, policy 41 (1-based); here 0-based from state.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let cpus = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list"))
        .unwrap_or_default()
        .to_owned();
    format!("{limits}\nnice {} policy {}\n{cpus}", fields[16], fields[38])
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn processes_and_ipc_are_out_of_reach(user: Option<u32>) {
    let scene = Scene::start(user);
    let app = &scene.app;
    let victim = scene.victim_pid();
    let attacker = scene.attacker_pid();
    let server = app.worker_pid() as u32;
    let supervisor = app.pid();
    if user.is_none() {
        assert_ne!(uid_of(victim), uid_of(attacker), "two tenants' workers share a uid");
        assert_ne!(uid_of(attacker), 0);
    }
    // In its PID namespace the attacker is process 2 (1 is the namespace's init) and sees no
    // other: every pid outside is out of reach, whatever the call.
    let own = scene.attacker_own_pid();
    let hello = scene.attack("hello");
    eprintln!("the attacker sees itself as pid {own}, its parent as {}", hello["ppid"]);
    assert_eq!(own, 2, "the worker is not in a PID namespace of its own: {hello}");
    assert_eq!(hello["ppid"], 0, "the worker sees its parent: {hello}");
    let before: Vec<String> = [victim, server, supervisor].iter().map(|&pid| vitals(pid)).collect();
    for target in [victim, server, supervisor, 1] {
        for probe in ["prlimit", "prlimit_files", "renice", "reschedule", "pin"] {
            let error = scene.denied(&format!("{probe}/?pid={target}"));
            eprintln!("{probe} on pid {target}: denied ({error})");
        }
    }
    let after: Vec<String> = [victim, server, supervisor].iter().map(|&pid| vitals(pid)).collect();
    assert_eq!(before, after, "a tenant changed another process's limits or scheduling");
    // Its own limits it may read and set (the C library does).
    let own = scene.attack(&format!("renice/?pid={own}"));
    assert_eq!(own["denied"], false, "a plugin may lower its own priority: {own}");
    // The process group, SysV and POSIX IPC, leaving the group, clearing the death signal.
    for probe in ["kill_group", "shm/?key=4242", "shm/?key=0", "mqueue", "setsid", "orphan"] {
        let error = scene.denied(probe);
        eprintln!("{probe}: denied ({error})");
    }
    // Nothing the attacker inherited leads to the host's files.
    let fds = scene.attack("descriptors");
    assert!(
        !fds.to_string().contains("do-not-leak"),
        "a tenant read the host's .env through an inherited descriptor"
    );
    // The one readable descriptor is the worker's copy of the plugin's own library.
    for found in fds["readable"].as_array().unwrap() {
        let text = found["text"].as_str().unwrap();
        assert!(
            text.starts_with("\u{7f}ELF"),
            "descriptor {} holds {:?}",
            found["fd"],
            &text[..text.len().min(80)]
        );
    }
    // No watch on the tenants' folder, which would name every tenant.
    let tenants = app.plugins_dir().join("tenants");
    let error = scene.denied(&format!("watch/?path={}", tenants.display()));
    eprintln!("inotify on the tenants' folder: denied ({error})");
    if user.is_none() {
        // A root host keeps its folders unsearchable to workers' uids: stat finds nothing.
        let victim_file = tenants.join(&scene.victim.uuid).join("libmodule2.so");
        assert!(victim_file.exists());
        let error = scene.denied(&format!("stat/?path={}", victim_file.display()));
        eprintln!("stat of another tenant's file: denied ({error})");
        let pid_file = app.plugins_dir().parent().unwrap().join("data").join("plughost.pid");
        assert!(pid_file.exists());
        scene.denied(&format!("stat/?path={}", pid_file.display()));
    }
    // The victim and the server still serve.
    assert_eq!(scene.victim.get(app, "/rest/services/module2/hello-world2/").status, 200);
    assert_eq!(app.get("/rest/services/hello/greet/").status, 200);
    assert_eq!(vitals(victim), before[0]);

    // The attacker asked to outlive its server (refused above); kill the server hard: every
    // worker goes with it, and the supervisor starts a fresh server that serves.
    let workers = sandbox_processes(u64::from(server));
    assert!(workers.contains(&attacker) && workers.contains(&victim), "{workers:?}");
    let _ = std::process::Command::new("kill").args(["-KILL", &server.to_string()]).status();
    let all_gone = wait_for(Duration::from_secs(10), || workers.iter().all(|&pid| !alive(pid)));
    assert!(all_gone.is_some(), "sandbox workers outlived their server: {workers:?}");
    let back = wait_for(Duration::from_secs(30), || app.get("/rest/services/hello/greet/").status == 200);
    assert!(back.is_some(), "the supervisor did not bring the server back:\n{}", app.logs());
}

#[test]
fn tenants_cannot_reach_other_processes_or_ipc_with_a_root_host() {
    processes_and_ipc_are_out_of_reach(None);
}

#[test]
fn tenants_cannot_reach_other_processes_or_ipc_with_an_unprivileged_host() {
    processes_and_ipc_are_out_of_reach(Some(10001));
}

#[test]
fn plugin_log_lines_are_budgeted_escaped_and_carry_the_hosts_request_id() {
    let scene = Scene::start(None);
    let app = &scene.app;
    let reply = app.with_headers(
        "GET",
        "/rest/services/rogue/flood/?lines=5000&kib=16",
        &[
            ("authorization", &format!("Bearer {}", scene.attacker.token)),
            ("x-request-id", "flood-call-1"),
        ],
        None,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The log is written by its own thread: wait for the report of what was dropped.
    let reported = wait_for(Duration::from_secs(10), || app.logs().contains("dropped_lines"));
    assert!(reported.is_some(), "the drop was not reported");
    let logs = app.logs();
    let flood_lines = logs.lines().filter(|l| l.contains("yyyyyyyy")).count();
    assert!(flood_lines <= 2, "{flood_lines} lines of 16 KiB logged from one call");
    assert!(
        !logs.lines().any(|l| l.trim_start().starts_with("2026-01-01T00:00:00.000000Z")),
        "a plugin forged a log line"
    );
    assert!(!logs.contains('\u{1b}'), "a plugin sent a terminal escape to the log");
    let line = logs.lines().find(|l| l.contains("first line")).expect("the plugin's first line");
    assert!(
        line.contains("flood-call-1"),
        "the line does not carry the host's request id: {line}"
    );
    assert!(line.contains("\\n"), "the newline was not escaped: {line}");
}

/// The supervisor answers SIGTERM even while it cannot start a server.
#[test]
fn the_supervisor_stops_on_sigterm_while_it_cannot_start_a_server() {
    let mut app = Setup::default().plugins(&["hello"]).start();
    let data = app.plugins_dir().parent().unwrap().join("data");
    // The next server cannot start: its DATA_DIR is a file.
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::write(&data, b"not a folder").unwrap();
    let server = app.worker_pid();
    let _ = std::process::Command::new("kill").args(["-KILL", &server.to_string()]).status();
    let failing = wait_for(Duration::from_secs(10), || app.logs().contains("did not start"));
    assert!(failing.is_some(), "{}", app.logs());
    let status = app.terminate(Duration::from_secs(10));
    assert!(status.is_some(), "the supervisor ignored SIGTERM:\n{}", app.logs());
}
