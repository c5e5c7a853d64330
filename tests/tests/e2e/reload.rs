//! Hot plugging: files added, replaced (by `cp` and by `mv`), broken, deleted and re-added while
//! the server runs; many at once; under load, with swaps and recycles and no failed request.

use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use crate::support::{many, plugin_file, rss_kib, status_of, wait_for, write_by_rename, App, Setup};

const SOON: Duration = Duration::from_secs(10);

fn mark(app: &App, module: &str) -> Option<String> {
    let reply = app.get(&format!("/rest/services/{module}/which/"));
    (reply.status == 200).then(|| reply.json()["mark"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn add_replace_break_delete_and_readd_while_serving() {
    let app = Setup::default().plugins(&["module1"]).start();
    let dir = app.plugins_dir();

    // Added by a plain copy.
    std::fs::write(dir.join("libswap.so"), many("swap_one", 'A')).unwrap();
    wait_for(SOON, || mark(&app, "swap_one").as_deref() == Some("mark-A")).expect("a new file is served");

    // Replaced in place by cp (the file is truncated and rewritten).
    std::fs::write(dir.join("libswap.so"), many("swap_one", 'B')).unwrap();
    wait_for(SOON, || mark(&app, "swap_one").as_deref() == Some("mark-B")).expect("cp over the file swaps the version");

    // Replaced by mv of a finished file.
    write_by_rename(&dir, "libswap.so", &many("swap_one", 'C'));
    wait_for(SOON, || mark(&app, "swap_one").as_deref() == Some("mark-C")).expect("mv over the file swaps the version");
    let status = status_of(&app, "libswap.so");
    assert_eq!(status["state"], "loaded");
    assert_eq!(status["reload_count"], 2);

    // A corrupt file and a wrong-ABI build: the old version keeps serving, the failure is recorded.
    std::fs::write(dir.join("libswap.so"), b"\\x7fELF but not really").unwrap();
    wait_for(SOON, || status_of(&app, "libswap.so")["error"].is_string()).expect("the failure is recorded");
    assert_eq!(mark(&app, "swap_one").as_deref(), Some("mark-C"));
    let status = status_of(&app, "libswap.so");
    assert_eq!(status["state"], "loaded", "{status}");
    assert!(status["error"].as_str().unwrap().contains("not a shared library"), "{status}");

    std::fs::copy(plugin_file("wrong_abi"), dir.join("libswap.so")).unwrap();
    wait_for(SOON, || {
        status_of(&app, "libswap.so")["error"]
            .as_str()
            .is_some_and(|e| e.contains("incompatible plugin-api"))
    })
    .expect("wrong ABI recorded");
    assert_eq!(mark(&app, "swap_one").as_deref(), Some("mark-C"));
    assert!(app.logs().contains("the previous one keeps serving"));

    // Deleted: unrouted. Re-added: served again.
    std::fs::remove_file(dir.join("libswap.so")).unwrap();
    wait_for(SOON, || app.get("/rest/services/swap_one/which/").status == 404).expect("a deleted file is unrouted");
    assert_eq!(status_of(&app, "libswap.so")["state"], "removed");
    write_by_rename(&dir, "libswap.so", &many("swap_one", 'D'));
    wait_for(SOON, || mark(&app, "swap_one").as_deref() == Some("mark-D")).expect("a re-added file is served");
    assert_eq!(
        app.get("/rest/services/v1/bar-none/").status,
        200,
        "the other plugin was never disturbed"
    );
    assert!(app.logs().contains("new version served"), "reload latency is logged");
}

#[test]
fn a_half_written_file_is_never_loaded_as_final() {
    let app = Setup::default().env("RELOAD_DEBOUNCE_MS", "20").start();
    let dir = app.plugins_dir();
    let bytes = many("halfdone", 'A');
    let mut file = std::fs::File::create(dir.join("libhalf.so")).unwrap();
    std::io::Write::write_all(&mut file, &bytes[..bytes.len() / 2]).unwrap();
    wait_for(SOON, || {
        status_of(&app, "libhalf.so")["error"]
            .as_str()
            .is_some_and(|e| e.contains("incomplete"))
    })
    .expect("the half file is refused");
    assert_eq!(app.get("/rest/services/halfdone/which/").status, 404);
    std::io::Write::write_all(&mut file, &bytes[bytes.len() / 2..]).unwrap();
    drop(file);
    wait_for(SOON, || mark(&app, "halfdone").as_deref() == Some("mark-A")).expect("served once complete");
}

#[test]
fn a_collision_is_refused_and_retried_when_the_name_is_freed() {
    let app = Setup::default().plugins(&["module1"]).start();
    let dir = app.plugins_dir();
    std::fs::copy(plugin_file("alias_clash"), dir.join("libalias_clash.so")).unwrap();
    wait_for(SOON, || {
        status_of(&app, "libalias_clash.so")["error"]
            .as_str()
            .is_some_and(|e| e.contains("collides"))
    })
    .expect("collision recorded");
    assert_eq!(app.get("/rest/services/v1/hello-world/").json()["response"], "hello-world");
    std::fs::remove_file(dir.join("libmodule1.so")).unwrap();
    wait_for(SOON, || app.get("/rest/services/v1/clash/").status == 200).expect("the refused module loads once the alias is free");
}

#[test]
fn twenty_plugins_changed_at_once() {
    let app = Setup::default().start();
    let dir = app.plugins_dir();
    let names: Vec<String> = (0..20).map(|i| format!("many_{i:03}")).collect();
    for (round, letter) in ['A', 'B'].into_iter().enumerate() {
        let files: Vec<Vec<u8>> = names.iter().map(|n| many(n, letter)).collect();
        std::thread::scope(|s| {
            for (name, bytes) in names.iter().zip(&files) {
                let dir = &dir;
                s.spawn(move || {
                    if round == 0 {
                        std::fs::write(dir.join(format!("lib{name}.so")), bytes).unwrap()
                    } else {
                        write_by_rename(dir, &format!("lib{name}.so"), bytes)
                    }
                });
            }
        });
        let want = format!("mark-{letter}");
        wait_for(SOON, || names.iter().all(|n| mark(&app, n).as_deref() == Some(want.as_str())))
            .unwrap_or_else(|| panic!("all 20 serve {want}"));
    }
    for name in &names {
        std::fs::remove_file(dir.join(format!("lib{name}.so"))).unwrap();
    }
    wait_for(SOON, || {
        names.iter().all(|n| app.get(&format!("/rest/services/{n}/which/")).status == 404)
    })
    .expect("all 20 unrouted");
}

#[test]
fn a_recreated_plugins_folder_is_watched_again() {
    let app = Setup::default().env("RESCAN_INTERVAL_MS", "200").start();
    let dir = app.plugins_dir();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(dir.join("libback.so"), many("back_000", 'A')).unwrap();
    wait_for(SOON, || mark(&app, "back_000").as_deref() == Some("mark-A")).expect("served from the recreated folder");
}

#[test]
fn swaps_and_recycles_under_load_fail_no_request() {
    let app = Setup::default().plugins(&["module1"]).start();
    let dir = app.plugins_dir();
    write_by_rename(&dir, "libswap.so", &many("swap_two", 'A'));
    wait_for(SOON, || mark(&app, "swap_two").is_some()).expect("served");
    let first_worker = app.worker_pid();

    let stop = AtomicBool::new(false);
    let ok = AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let client = App::client();
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    for path in ["/rest/services/swap_two/which/", "/rest/services/v1/hello-world/x/"] {
                        match client.get(app.url(path)).send() {
                            Ok(r) if r.status() == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failures.lock().unwrap().push(format!("{path}: status {}", r.status())),
                            Err(e) => failures.lock().unwrap().push(format!("{path}: {e}")),
                        }
                    }
                }
            });
        }
        for i in 0..50 {
            let letter = if i % 2 == 0 { 'B' } else { 'A' };
            write_by_rename(&dir, "libswap.so", &many("swap_two", letter));
            let want = format!("mark-{letter}");
            wait_for(SOON, || mark(&app, "swap_two").as_deref() == Some(want.as_str())).expect("swap served");
            if i % 10 == 9 {
                let before = app.worker_pid();
                let out = std::process::Command::new("kill")
                    .arg("-HUP")
                    .arg(app.pid().to_string())
                    .status()
                    .unwrap();
                assert!(out.success());
                wait_for(SOON, || app.worker_pid() != before).expect("a fresh worker serves after SIGHUP");
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests of {}: {:?}",
        failures.len(),
        ok.load(Ordering::Relaxed) + failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok.load(Ordering::Relaxed) > 200, "the load ran");
    eprintln!(
        "under load: {} requests answered 200, {} failed, across 50 swaps and 5 recycles",
        ok.load(Ordering::Relaxed),
        failures.len()
    );
    assert_ne!(app.worker_pid(), first_worker);
}

#[test]
fn swaps_keep_being_served_while_workers_are_recycled() {
    // A 1 MiB budget: nearly every reload recycles the worker, so new versions arrive while an
    // old worker drains and a fresh one loads the same files (they once raced on shadow copies).
    let app = Setup::default().env("RELOAD_LEAK_BUDGET_MB", "1").start();
    let dir = app.plugins_dir();
    let first = app.worker_pid();
    for (i, letter) in ('A'..='L').enumerate() {
        write_by_rename(&dir, "libswap.so", &many("swap_rec", letter));
        let wanted = format!("mark-{letter}");
        wait_for(SOON, || mark(&app, "swap_rec").as_deref() == Some(wanted.as_str()))
            .unwrap_or_else(|| panic!("version {i} ({wanted}) not served:\n{}", app.logs()));
        std::thread::sleep(Duration::from_millis(50 * (i as u64 % 4)));
    }
    assert_ne!(app.worker_pid(), first, "workers were recycled meanwhile");
    assert!(!app.logs().contains("cannot open shared object file"), "{}", app.logs());
}

#[test]
fn the_leak_budget_recycles_the_worker_and_memory_comes_back() {
    let app = Setup::default().env("RELOAD_LEAK_BUDGET_MB", "40").start();
    let dir = app.plugins_dir();
    write_by_rename(&dir, "libswap.so", &many("swap_mem", 'A'));
    wait_for(SOON, || mark(&app, "swap_mem").is_some()).expect("served");
    let first = app.worker_pid();
    let start_rss = rss_kib(first);
    let mut peak_rss = start_rss;
    // Each distinct version is a new image that can never be unmapped. Stop writing once the
    // budget (40 MiB) is passed, so that the fresh worker starts from the last version.
    let mut last = String::from("swap_mem");
    let mut reloads = 0u32;
    loop {
        let images = app.admin("GET", "/health", None).json()["plugins"]["images"].clone();
        if images["leaked_bytes"].as_u64().unwrap() > 40 * 1024 * 1024 {
            break;
        }
        assert_eq!(images["leaked"].as_u64().unwrap(), u64::from(reloads), "{images}");
        assert!(reloads < 40, "the budget was never passed: {images}");
        last = format!("swp{reloads:05}");
        write_by_rename(&dir, "libswap.so", &many(&last, 'B'));
        wait_for(SOON, || mark(&app, &last).is_some()).expect("served");
        peak_rss = peak_rss.max(rss_kib(first));
        reloads += 1;
    }
    wait_for(SOON, || app.worker_pid() != first).expect("the worker is recycled once the budget is passed");
    let second = app.worker_pid();
    assert!(app.logs().contains("reload leak budget exceeded"));
    assert_eq!(
        mark(&app, &last).as_deref(),
        Some("mark-B"),
        "the fresh worker serves the current version"
    );
    let health = app.admin("GET", "/health", None).json();
    assert_eq!(health["plugins"]["images"]["leaked"], 0, "{health}");
    assert_eq!(health["plugins"]["images"]["mapped"], 1, "{health}");
    let after_rss = rss_kib(second);
    assert!(peak_rss > start_rss, "reloads grew the old worker: {start_rss} → {peak_rss} KiB");
    assert!(
        after_rss < peak_rss,
        "the fresh worker ({after_rss} KiB) is smaller than the old one at its peak ({peak_rss} KiB)"
    );
    eprintln!("RSS: start {start_rss} KiB, peak {peak_rss} KiB after {reloads} reloads, fresh worker {after_rss} KiB");
}

#[test]
fn an_idle_loader_does_no_work() {
    let app = Setup::default()
        .plugins(&["module1", "hello"])
        .env("RESCAN_INTERVAL_MS", "100")
        .start();
    let rounds = || {
        app.admin("GET", "/rest/admin/plugins", None).json()["load_rounds"]
            .as_u64()
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(300));
    let before = rounds();
    // Reading the plugins (as the loader and any backup tool do) is not a change.
    for _ in 0..5 {
        for entry in std::fs::read_dir(app.plugins_dir()).unwrap() {
            let _ = std::fs::read(entry.unwrap().path()).unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rounds(), before, "nothing changed, yet the loader applied changes");
    std::fs::write(app.plugins_dir().join("libnew.so"), many("idle_new", 'A')).unwrap();
    wait_for(SOON, || rounds() > before).expect("a real change is applied");
}

#[test]
fn poll_mode_sees_changes_without_file_events() {
    let app = Setup::default().env("WATCH_MODE", "poll").env("RESCAN_INTERVAL_MS", "300").start();
    let dir = app.plugins_dir();
    write_by_rename(&dir, "libmany_000.so", &many("many_000", 'A'));
    let added = wait_for(Duration::from_secs(10), || mark(&app, "many_000").as_deref() == Some("mark-A"));
    assert!(added.is_some(), "{}", app.logs());
    write_by_rename(&dir, "libmany_000.so", &many("many_000", 'B'));
    let replaced = wait_for(Duration::from_secs(10), || mark(&app, "many_000").as_deref() == Some("mark-B"));
    assert!(replaced.is_some(), "{}", app.logs());
    std::fs::remove_file(dir.join("libmany_000.so")).unwrap();
    assert!(wait_for(Duration::from_secs(10), || mark(&app, "many_000").is_none()).is_some());
    // No inotify watch was set up.
    let pid = app.worker_pid();
    let watches = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy().contains("inotify")))
        .count();
    assert_eq!(watches, 0, "poll mode still watches with inotify");
    Setup::default().env("WATCH_MODE", "sometimes").start_and_fail();
}
