//! The sandbox tier: tenants' modules in confined worker processes. Every misbehaviour of the
//! `rogue` fixture gets its documented answer, the host and other plugins keep serving, the
//! attempt is denied (checked through what the operating system answered), and the module's
//! next call is served again.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use std::process::Command;

use serde_json::{json, Value};

use crate::support::{
    code_at, now, plugin_file, plugin_processes, sandbox_processes, status_where, wait_for, write_by_rename, App, Reply, Setup,
};

/// A tenant of a test server, with a bearer token.
pub struct Tenant {
    pub uuid: String,
    pub token: String,
}

impl Tenant {
    pub fn add(app: &App, name: &str) -> Tenant {
        let created = app.admin("POST", "/rest/admin/tenants", Some(&json!({"name": name})));
        assert_eq!(created.status, 201, "{}", created.text());
        let body = created.json();
        let uuid = body["uuid"].as_str().unwrap().to_owned();
        let secret = body["secret"].as_str().unwrap().to_owned();
        for offset in [0, 30] {
            let reply = app.send(
                "POST",
                "/rest/auth/token",
                Some(&json!({"uuid": uuid, "totp": code_at(&secret, now() + offset)})),
            );
            if reply.status == 200 {
                let token = reply.json()["token"].as_str().unwrap().to_owned();
                return Tenant { uuid, token };
            }
        }
        panic!("no token for tenant {name}:\n{}", app.logs());
    }

    pub fn folder(&self, app: &App) -> PathBuf {
        let folder = app.plugins_dir().join("tenants").join(&self.uuid);
        std::fs::create_dir_all(&folder).unwrap();
        folder
    }

    /// Puts `bytes` into this tenant's folder as `name` and waits until `module` answers `probe`.
    pub fn install(&self, app: &App, name: &str, bytes: &[u8], probe: &str) {
        write_by_rename(&self.folder(app), name, bytes);
        let served = wait_for(Duration::from_secs(20), || self.get(app, probe).status == 200);
        assert!(served.is_some(), "{probe} was not served:\n{}", app.logs());
    }

    pub fn get(&self, app: &App, path: &str) -> Reply {
        app.with_headers("GET", path, &[("authorization", &format!("Bearer {}", self.token))], None)
    }
}

/// A server with the admin's `hello` in-process and quick rescans, plus `env`.
fn server(env: &[(&str, &str)]) -> App {
    let mut setup = Setup::default()
        .plugins(&["hello"])
        .env("RESCAN_INTERVAL_MS", "200")
        .root_file(".env", "HOST_SECRET_FOR_TESTS=do-not-leak\n");
    for (key, value) in env {
        setup = setup.env(key, value);
    }
    setup.start()
}

/// The confinement layers the server reports in `/health`, by name.
fn layers(app: &App) -> HashMap<String, bool> {
    let health = app.admin("GET", "/health", None).json();
    health["sandbox"]["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("no sandbox layers in /health: {health}"))
        .iter()
        .map(|l| (l["name"].as_str().unwrap().to_owned(), l["active"].as_bool().unwrap()))
        .collect()
}

/// Calls `path` while another thread calls the admin's in-process `hello`, which must keep
/// answering 200 throughout.
fn with_bystander(app: &App, call: impl FnOnce() -> Reply) -> Reply {
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let url = app.url("/rest/services/hello/greet/?name=bystander");
    let (flag, count) = (stop.clone(), served.clone());
    let bystander = thread::spawn(move || {
        let client = App::client();
        loop {
            let status = client.get(&url).send().map(|r| r.status().as_u16()).unwrap_or(0);
            assert_eq!(status, 200, "the host stopped serving other plugins");
            count.fetch_add(1, Ordering::Relaxed);
            if flag.load(Ordering::Relaxed) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    });
    let reply = call();
    stop.store(true, Ordering::Relaxed);
    bystander.join().expect("the bystander saw a failure");
    assert!(served.load(Ordering::Relaxed) >= 1);
    reply
}

/// The entry of `module` in the admin's status list of plugins.
fn listed(app: &App, module: &str) -> Value {
    let status = status_where(app, "module", module);
    assert!(!status.is_null(), "{module} is not listed:\n{}", app.logs());
    status
}

fn denied(reply: &Reply, what: &str) -> String {
    assert_eq!(reply.status, 200, "{what}: {}", reply.text());
    let body = reply.json();
    assert_eq!(body["denied"], true, "{what} was not denied: {body}");
    body["error"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn misbehaving_tenant_plugins_are_contained_and_the_worker_comes_back() {
    let app = server(&[
        ("CALL_TIMEOUT_MS", "1500"),
        ("SANDBOX_QUARANTINE_CRASHES", "1000"),
        ("SANDBOX_MEMORY_MB", "256"),
        ("MAX_RESPONSE_BYTES", "8388608"),
    ]);
    let layers = layers(&app);
    eprintln!("confinement layers on this machine: {layers:?}");
    for layer in ["clean_environment", "private_working_dir", "rlimits", "no_new_privs"] {
        assert_eq!(layers.get(layer), Some(&true), "layer {layer} should be active everywhere");
    }
    let tenant = Tenant::add(&app, "rogue-owner");
    tenant.install(
        &app,
        "librogue.so",
        &std::fs::read(plugin_file("rogue")).unwrap(),
        "/rest/services/rogue/hello/",
    );
    let call = |path: &str| with_bystander(&app, || tenant.get(&app, &format!("/rest/services/rogue/{path}")));
    let back = || {
        let reply = tenant.get(&app, "/rest/services/rogue/hello/");
        assert_eq!(reply.status, 200, "the module did not come back: {}", reply.text());
        reply.json()["worker"].as_str().unwrap().to_owned()
    };
    let first_worker = back();
    let hello = tenant.get(&app, "/rest/services/rogue/hello/").json();
    assert_eq!(
        hello["host_allocator"], true,
        "a sandboxed plugin allocates through the worker's allocator: {hello}"
    );
    if layers.get("memory_cgroup") == Some(&true) {
        let workers = plugin_processes(app.worker_pid(), "librogue.so");
        assert!(!workers.is_empty());
        for pid in workers {
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            assert!(cgroup.contains("/plughost-"), "the worker is not in its memory cgroup: {cgroup}");
        }
        eprintln!("the worker runs in its own memory cgroup; layer checked: memory_cgroup");
    } else {
        eprintln!("memory_cgroup is unavailable here; RLIMIT_AS alone bounds memory");
    }

    // Crashes of every kind: a panic is the plugin's error; the rest kill the worker.
    let panic = call("panic").error(500, "PLUGIN_PANICKED");
    assert!(
        !panic["error_description"].as_str().unwrap().contains("on purpose"),
        "panic text leaked: {panic}"
    );
    assert_eq!(back(), first_worker, "a caught panic keeps its worker");
    for (function, cause) in [("segfault", "signal 11"), ("abort", "signal 6"), ("exit", "status 3")] {
        let body = call(function).error(502, "WORKER_CRASHED");
        assert!(body["error_description"].as_str().unwrap().contains(cause), "{function}: {body}");
        back();
    }
    // An endless loop and a sleep past the deadline: the worker is killed at the deadline.
    for function in ["spin", "sleep/?ms=60000"] {
        let started = std::time::Instant::now();
        call(function).error(504, "CALL_TIMEOUT");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{function} was not cut at its deadline"
        );
        back();
    }
    // Memory far beyond the limit.
    call("hog/?mib=2048").error(502, "MEMORY_LIMIT_EXCEEDED");
    back();
    // A huge body.
    call("huge/?mib=20").error(502, "RESPONSE_TOO_LARGE");
    back();

    // Attempts the confinement must deny, checked through what the system answered.
    let checked = |layer: &str, what: &str, error: String| eprintln!("{what}: denied ({error}); layer checked: {layer}");
    checked("seccomp", "fork", denied(&call("fork"), "fork"));
    let exec = denied(&call("exec"), "exec /bin/sh");
    checked("landlock + seccomp", "exec /bin/sh", exec);
    checked("rlimits (RLIMIT_NPROC=0)", "a thread", denied(&call("thread"), "a thread"));
    let port = app.addr.port();
    checked(
        "seccomp + network_namespace",
        "TCP to the host",
        denied(&call(&format!("connect/?port={port}")), "connect"),
    );
    checked(
        "landlock",
        "/etc/shadow",
        denied(&call("read/?path=/etc/shadow"), "read /etc/shadow"),
    );
    let env_file = app.plugins_dir().parent().unwrap().join(".env");
    assert!(env_file.exists());
    checked(
        "landlock",
        "the host's .env",
        denied(&call(&format!("read/?path={}", env_file.display())), "read the host's .env"),
    );
    let target = app.plugins_dir().parent().unwrap().join("written-by-tenant.txt");
    checked(
        "landlock + rlimits",
        "a file write",
        denied(&call(&format!("write/?path={}", target.display())), "write"),
    );
    assert!(!target.exists(), "the tenant wrote a file");
    checked(
        "landlock scope + uid",
        "a signal to the host",
        denied(&call("kill_parent"), "kill the host"),
    );
    let env = call("env").json();
    assert_eq!(env["variables"], json!([]), "the worker sees variables: {env}");
    checked("clean_environment", "the host's variables", "none visible".into());

    // Megabytes on stdout: the protocol survives and the log keeps a bounded part.
    let shout = call("shout/?mib=4");
    assert_eq!(shout.status, 200, "{}", shout.text());
    assert_eq!(back(), back());
    let logs = app.logs();
    assert!(
        logs.contains("stream=\"output\"") || logs.contains("stream=output"),
        "plugin output not logged"
    );
    assert!(
        logs.len() < 2 << 20,
        "the log took all of the plugin's output ({} bytes)",
        logs.len()
    );
    assert!(!logs.contains("do-not-leak"));

    // The whole story is in the status list.
    let rogue = listed(&app, "rogue");
    assert_eq!(rogue["tenant"], tenant.uuid.as_str());
    let sandbox = &rogue["sandbox"];
    assert!(sandbox["crashes"].as_u64().unwrap() >= 4, "{sandbox}");
    assert!(sandbox["timeouts"].as_u64().unwrap() >= 2, "{sandbox}");
    assert!(sandbox["layers"].as_array().is_some_and(|l| l.len() >= 8), "{sandbox}");
}

#[test]
fn a_tenants_module_is_its_own_and_the_admins_only() {
    let app = server(&[]);
    let owner = Tenant::add(&app, "owner");
    let other = Tenant::add(&app, "other");
    owner.install(
        &app,
        "librogue.so",
        &std::fs::read(plugin_file("rogue")).unwrap(),
        "/rest/services/rogue/hello/",
    );

    // The owner sees and calls it; so does the admin; the other tenant and anonymous callers do not.
    let listed = |reply: Reply| reply.json()["modules"].as_array().unwrap().iter().any(|m| m["name"] == "rogue");
    assert!(listed(owner.get(&app, "/rest/services/__dir__/")));
    assert!(listed(app.admin("GET", "/rest/services/__dir__/", None)));
    assert!(!listed(other.get(&app, "/rest/services/__dir__/")));
    assert!(!listed(app.get("/rest/services/__dir__/")));
    other.get(&app, "/rest/services/rogue/hello/").error(404, "FUNCTION_NOT_FOUND");
    other.get(&app, "/rest/services/rogue/__dir__/").error(404, "FUNCTION_NOT_FOUND");
    other.get(&app, "/rest/services/rogue/nothing/").error(404, "FUNCTION_NOT_FOUND");
    // Without credentials, a tenant's module does not exist: a 401 would tell that it does.
    app.get("/rest/services/rogue/hello/").error(404, "FUNCTION_NOT_FOUND");
    assert_eq!(app.admin("GET", "/rest/services/rogue/hello/", None).status, 200);
    let openapi = other.get(&app, "/openapi.json").text();
    assert!(
        !openapi.contains("/rest/services/rogue/"),
        "another tenant's module is in its OpenAPI"
    );
    // A tenant calls the admin's modules as usual.
    assert_eq!(other.get(&app, "/rest/services/hello/greet/").status, 200);
    // The directory says where it runs.
    let module = owner.get(&app, "/rest/services/rogue/__dir__/").json();
    assert_eq!(module["isolation"], "sandbox", "{module}");
    assert_eq!(module["tenant"], owner.uuid.as_str());

    // The server process never maps a tenant's library, not even to read its manifest.
    for pid in [app.pid() as u64, app.worker_pid()] {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(
            !maps.contains("rogue") && !maps.contains("memfd:plughost-plugin"),
            "pid {pid} mapped the tenant's library"
        );
    }
    // A tenant's module whose name is taken is refused as usual (the admin's files win).
    write_by_rename(&other.folder(&app), "libhello.so", &std::fs::read(plugin_file("hello")).unwrap());
    let collided = wait_for(Duration::from_secs(20), || {
        let plugins = app.admin("GET", "/rest/admin/plugins", None).json();
        plugins["plugins"].as_array().unwrap().iter().any(|f| {
            f["tenant"] == other.uuid.as_str() && f["state"] == "failed" && f["error"].as_str().is_some_and(|e| e.contains("collides"))
        })
    });
    assert!(collided.is_some(), "{}", app.logs());
    assert_eq!(app.get("/rest/services/hello/greet/").status, 200);

    // A library that is not a plugin is refused with its reason, by the worker.
    write_by_rename(
        &other.folder(&app),
        "libwrong.so",
        &std::fs::read(plugin_file("wrong_abi")).unwrap(),
    );
    let refused = wait_for(Duration::from_secs(20), || {
        let plugins = app.admin("GET", "/rest/admin/plugins", None).json();
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["file"] == "libwrong.so" && f["state"] == "failed")
    });
    assert!(refused.is_some(), "{}", app.logs());

    // A disabled tenant's modules are unrouted, and come back when it is enabled.
    assert_eq!(
        app.admin("POST", &format!("/rest/admin/tenants/{}/disable", owner.uuid), None)
            .status,
        200
    );
    let gone = wait_for(Duration::from_secs(20), || {
        app.admin("GET", "/rest/services/rogue/hello/", None).status == 404
    });
    assert!(gone.is_some(), "{}", app.logs());
    assert_eq!(
        app.admin("POST", &format!("/rest/admin/tenants/{}/enable", owner.uuid), None)
            .status,
        200
    );
    let back = wait_for(Duration::from_secs(20), || {
        app.admin("GET", "/rest/services/rogue/hello/", None).status == 200
    });
    assert!(back.is_some(), "{}", app.logs());
}

#[test]
fn quarantine_engages_after_repeated_crashes_and_clears() {
    let app = server(&[("SANDBOX_QUARANTINE_CRASHES", "3"), ("SANDBOX_QUARANTINE_WINDOW_SECS", "120")]);
    let tenant = Tenant::add(&app, "crashy");
    let library = std::fs::read(plugin_file("rogue")).unwrap();
    tenant.install(&app, "librogue.so", &library, "/rest/services/rogue/hello/");
    let crash_until_quarantined = || {
        for _ in 0..3 {
            tenant.get(&app, "/rest/services/rogue/segfault/").error(502, "WORKER_CRASHED");
        }
        let reply = tenant.get(&app, "/rest/services/rogue/hello/");
        let body = reply.error(503, "MODULE_QUARANTINED");
        assert!(reply.header("retry-after").is_some());
        assert!(body["error_description"].as_str().unwrap().contains("release"), "{body}");
        // Other modules do not notice.
        assert_eq!(tenant.get(&app, "/rest/services/hello/greet/").status, 200);
    };
    crash_until_quarantined();
    let released = app.admin("POST", "/rest/admin/plugins/rogue/release", None);
    assert_eq!(released.status, 200, "{}", released.text());
    assert_eq!(released.json()["was_quarantined"], true);
    assert_eq!(tenant.get(&app, "/rest/services/rogue/hello/").status, 200);
    app.admin("POST", "/rest/admin/plugins/hello/release", None)
        .error(409, "NOT_SANDBOXED");

    // A new version of the file clears it too.
    crash_until_quarantined();
    let mut changed = library.clone();
    changed.extend_from_slice(b"\0new build");
    tenant.install(&app, "librogue.so", &changed, "/rest/services/rogue/hello/");
}

#[test]
fn concurrency_beyond_the_limit_is_refused_with_retry_after() {
    let app = server(&[("SANDBOX_MAX_CONCURRENCY", "1")]);
    let tenant = Tenant::add(&app, "busy");
    tenant.install(
        &app,
        "librogue.so",
        &std::fs::read(plugin_file("rogue")).unwrap(),
        "/rest/services/rogue/hello/",
    );
    thread::scope(|scope| {
        let slow = scope.spawn(|| tenant.get(&app, "/rest/services/rogue/sleep/?ms=1500"));
        thread::sleep(Duration::from_millis(400));
        let refused = tenant.get(&app, "/rest/services/rogue/hello/");
        refused.error(429, "TOO_MANY_REQUESTS");
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert_eq!(slow.join().unwrap().status, 200);
    });
    assert_eq!(tenant.get(&app, "/rest/services/rogue/hello/").status, 200);

    // The tenant's own limits apply to its loaded module at once.
    let path = format!("/rest/admin/tenants/{}/limits", tenant.uuid);
    let set = app.admin("PUT", &path, Some(&json!({"call_timeout_ms": 300, "max_concurrency": 2})));
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(set.json()["limits"]["call_timeout_ms"], 300);
    let cut = wait_for(Duration::from_secs(10), || {
        tenant.get(&app, "/rest/services/rogue/sleep/?ms=1000").status == 504
    });
    assert!(cut.is_some(), "the new deadline did not apply:\n{}", app.logs());
    app.admin("PUT", &path, Some(&json!({"memory_mb": "lots"})))
        .error(422, "INVALID_TENANT");
    app.admin("PUT", &path, Some(&json!({"cpu": 1}))).error(422, "INVALID_TENANT");
    app.admin("PUT", &path, Some(&json!([1]))).error(422, "INVALID_TENANT");
    // The CLI changes one limit and keeps the others; --reset goes back to the defaults.
    let out = app.cli(&["tenant", "limits", &tenant.uuid, "--memory-mb", "128"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        shown["limits"],
        json!({"call_timeout_ms": 300, "max_concurrency": 2, "memory_mb": 128})
    );
    let out = app.cli(&["tenant", "limits", &tenant.uuid, "--reset"]);
    assert!(out.status.success());
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["limits"], json!({}));
}

#[test]
fn a_tenant_module_swapped_under_load_fails_no_request() {
    let app = server(&[("SANDBOX_MAX_CONCURRENCY", "8")]);
    let tenant = Tenant::add(&app, "swapper");
    let library = std::fs::read(plugin_file("rogue")).unwrap();
    tenant.install(&app, "librogue.so", &library, "/rest/services/rogue/hello/");
    let stop = AtomicBool::new(false);
    let (served, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let reply = tenant.get(&app, "/rest/services/rogue/hello/");
                    if reply.status == 200 {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed during a swap: {} {}", reply.status, reply.text());
                    }
                }
            });
        }
        // Stops the callers even if an assertion below fails, so that the scope can end.
        let _stop = StopOnDrop(&stop);
        for version in 0..5u8 {
            let mut bytes = library.clone();
            bytes.extend_from_slice(&[0, version]);
            write_by_rename(&tenant.folder(&app), "librogue.so", &bytes);
            let swapped = wait_for(Duration::from_secs(20), || {
                let plugins = app.admin("GET", "/rest/admin/plugins", None).json();
                plugins["plugins"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f["module"] == "rogue" && f["reload_count"] == u64::from(version) + 1)
            });
            assert!(swapped.is_some(), "swap {version} was not served:\n{}", app.logs());
        }
    });
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(served.load(Ordering::Relaxed) > 20);
}

#[test]
fn the_admin_may_isolate_their_own_plugins() {
    let app = server(&[("ADMIN_ISOLATION", "process")]);
    let module: Value = app.get("/rest/services/hello/__dir__/").json();
    assert_eq!(module["isolation"], "sandbox", "{module}");
    assert_eq!(module["owner"], "admin");
    let reply = app.get("/rest/services/hello/greet/?name=isolated");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.text().contains("isolated"));
    assert_eq!(app.admin("GET", "/health", None).json()["sandbox"]["admin_isolation"], "process");
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn workers_are_retired_after_their_call_budget_and_leave_by_themselves() {
    let app = server(&[("SANDBOX_MAX_CALLS", "3")]);
    let tenant = Tenant::add(&app, "budget");
    tenant.install(
        &app,
        "librogue.so",
        &std::fs::read(plugin_file("rogue")).unwrap(),
        "/rest/services/rogue/hello/",
    );
    let worker = |reply: Reply| reply.json()["worker"].as_str().unwrap().to_owned();
    let mut workers = vec![worker(tenant.get(&app, "/rest/services/rogue/hello/"))];
    let first = sandbox_processes(app.worker_pid());
    assert!(!first.is_empty());
    for _ in 0..6 {
        workers.push(worker(tenant.get(&app, "/rest/services/rogue/hello/")));
    }
    workers.dedup();
    assert!(workers.len() >= 3, "workers were not retired after 3 calls: {workers:?}");
    // A retired worker is told goodbye and exits, with every process of its namespace; it is
    // reaped within a second or two.
    let gone = wait_for(Duration::from_secs(5), || {
        first.iter().all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    });
    assert!(gone.is_some(), "retired worker {first:?} is still there");
    let plugins = app.admin("GET", "/rest/admin/plugins", None).json();
    let rogue = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["module"] == "rogue")
        .unwrap()
        .clone();
    assert_eq!(rogue["sandbox"]["crashes"], 0, "{rogue}");
    assert!(rogue["sandbox"]["workers_started"].as_u64().unwrap() >= 3, "{rogue}");
}

/// Whether a process is gone (or a zombie nobody reaped yet).
fn gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[test]
fn workers_outlive_idle_pool_threads_and_die_with_the_host() {
    // Every call on the blocking pool, whose idle threads end after 10 s.
    let app = server(&[("INLINE_CALL_MAX_US", "0"), ("SANDBOX_MAX_CONCURRENCY", "8")]);
    let tenant = Tenant::add(&app, "patient");
    tenant.install(
        &app,
        "librogue.so",
        &std::fs::read(plugin_file("rogue")).unwrap(),
        "/rest/services/rogue/hello/",
    );
    let burst = |path: &str| {
        thread::scope(|scope| {
            let calls: Vec<_> = (0..4).map(|_| scope.spawn(|| tenant.get(&app, path))).collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect::<Vec<Reply>>()
        })
    };
    for reply in burst("/rest/services/rogue/sleep/?ms=300") {
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    thread::sleep(Duration::from_secs(12));
    for reply in burst("/rest/services/rogue/sleep/?ms=300") {
        assert_eq!(
            reply.status,
            200,
            "a worker died with the pool thread that started it: {}",
            reply.text()
        );
    }
    for reply in burst("/rest/services/rogue/hello/") {
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // The server process dies hard: its workers go with it, with their namespaces.
    let server = app.worker_pid();
    let workers: Vec<u64> = sandbox_processes(server).into_iter().map(u64::from).collect();
    assert!(workers.len() >= 3, "{workers:?}");
    let _ = Command::new("kill").args(["-KILL", &server.to_string()]).status();
    let all_gone = wait_for(Duration::from_secs(10), || workers.iter().all(|pid| gone(*pid)));
    assert!(all_gone.is_some(), "sandbox workers outlived their server: {workers:?}");
}

/// Containers run plughost as an unprivileged user (the image's uid 10001): the sandbox still
/// confines, with the layers that need root reported unavailable, and a relative DATA_DIR works.
#[test]
fn a_host_that_is_not_root_still_sandboxes() {
    let app = Setup::default()
        .plugins(&["hello", "rogue"])
        .env("ADMIN_ISOLATION", "process")
        .env("DATA_DIR", "data")
        .run_as(10001)
        .start();
    let uid = std::fs::read_to_string(format!("/proc/{}/status", app.pid())).unwrap();
    assert!(uid.lines().any(|l| l.starts_with("Uid:\t10001")), "{uid}");
    let reply = app.get("/rest/services/hello/greet/?name=unprivileged");
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), app.logs());
    let active = layers(&app);
    for layer in [
        "clean_environment",
        "network_namespace",
        "ipc_namespace",
        "pid_namespace",
        "rlimits",
        "no_new_privs",
        "landlock",
        "seccomp",
    ] {
        assert_eq!(active.get(layer), Some(&true), "{layer}: {active:?}");
    }
    eprintln!("layers of an unprivileged host: {active:?}");
    let call = |path: &str| app.admin("GET", &format!("/rest/services/rogue/{path}"), None);
    denied(&call("fork"), "fork");
    denied(&call("exec"), "exec /bin/sh");
    denied(&call("read/?path=/etc/shadow"), "read /etc/shadow");
    let crashed = call("segfault");
    assert_eq!(crashed.status, 502, "{}", crashed.text());
    assert_eq!(app.get("/rest/services/hello/greet/").status, 200);
}

#[test]
fn quick_calls_share_workers_and_a_bad_call_costs_only_itself() {
    let app = server(&[
        ("CALL_TIMEOUT_MS", "1500"),
        ("SANDBOX_MAX_CONCURRENCY", "64"),
        ("SANDBOX_QUARANTINE_CRASHES", "1000"),
        // "Quick" generously: a debug build on a busy machine must still count as quick.
        ("INLINE_CALL_MAX_US", "100000"),
    ]);
    let tenant = Arc::new(Tenant::add(&app, "batch-owner"));
    tenant.install(
        &app,
        "librogue.so",
        &std::fs::read(plugin_file("rogue")).unwrap(),
        "/rest/services/rogue/hello/",
    );
    let app = Arc::new(app);
    let warm = || {
        // Quick calls in a row make the function's calls go through the pool's queue.
        for n in 0..40 {
            let reply = tenant.get(&app, &format!("/rest/services/rogue/echo/?n={n}"));
            assert_eq!(reply.status, 200, "{}", reply.text());
        }
    };
    // Many calls at once, each with its own kwargs, and maybe one bad call among them; every
    // good call must get its own answer.
    let burst = |bad: Option<&'static str>| -> Option<Reply> {
        let mut threads = Vec::new();
        for n in 0..30 {
            let (a, t) = (app.clone(), tenant.clone());
            threads.push(thread::spawn(move || {
                let reply = t.get(&a, &format!("/rest/services/rogue/echo/?n={n}"));
                assert_eq!(reply.status, 200, "call {n}: {}", reply.text());
                assert_eq!(reply.json()["kwargs"]["n"], n.to_string(), "call {n} got another call's answer");
                None
            }));
            if let (10, Some(bad)) = (n, bad) {
                let (a, t) = (app.clone(), tenant.clone());
                threads.push(thread::spawn(move || Some(t.get(&a, &format!("/rest/services/rogue/echo/?{bad}")))));
            }
        }
        threads.into_iter().filter_map(|t| t.join().expect("a good call failed")).next()
    };
    warm();
    assert!(burst(None).is_none());
    let slow = burst(Some("sleep_ms=5000")).unwrap();
    slow.error(504, "CALL_TIMEOUT");
    warm();
    let fatal = burst(Some("abort=true")).unwrap();
    fatal.error(502, "WORKER_CRASHED");
    warm();
    let sandbox = listed(&app, "rogue")["sandbox"].clone();
    eprintln!("pool after the bursts: {sandbox}");
    assert!(sandbox["calls_batched"].as_u64().unwrap() >= 60, "{sandbox}");
    assert_eq!(sandbox["timeouts"], 1, "{sandbox}");
}
