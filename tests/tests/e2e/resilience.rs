//! The server against its own surroundings going wrong: a corrupt store, a plugins folder moved
//! away and back, a log collector that stops reading. It keeps serving what it can and recovers
//! by itself.

use std::time::Duration;

use crate::support::{many, wait_for, Setup};

#[test]
fn a_corrupt_store_starts_degraded_and_recovers_when_repaired() {
    let app = Setup::default()
        .plugins(&["secure"])
        .root_file("data/plughost.sqlite3", "this is not an SQLite database, it was damaged")
        .start();
    assert_eq!(
        app.get("/rest/services/secure/status/").status,
        200,
        "public functions keep working"
    );
    let health = app.get("/health");
    assert_eq!(health.status, 503, "{}", health.text());
    assert_eq!(health.json()["status"], "degraded");
    let token = app.send(
        "POST",
        "/rest/auth/token",
        Some(&serde_json::json!({"uuid": crate::support::ADMIN_UUID, "totp": "123456"})),
    );
    token.error(503, "STORE_UNAVAILABLE");
    let said = wait_for(Duration::from_secs(10), || {
        app.logs().contains("the embedded store cannot be opened")
    });
    assert!(said.is_some(), "{}", app.logs());
    // The operator moves the damaged file away: the store is made afresh and the admin recorded.
    let file = app.plugins_dir().parent().unwrap().join("data/plughost.sqlite3");
    std::fs::rename(&file, file.with_extension("damaged")).unwrap();
    let back = wait_for(Duration::from_secs(20), || app.get("/health").status == 200);
    assert!(back.is_some(), "{}", app.logs());
    // The admin is recorded again within the retry period (2 s).
    let recorded = wait_for(Duration::from_secs(20), || {
        app.logs().contains("the admin is recorded in the store")
    });
    assert!(recorded.is_some(), "{}", app.logs());
    assert_eq!(app.admin("GET", "/rest/admin/tenants", None).status, 200);
}

#[test]
fn a_plugins_folder_moved_away_and_back_is_served_again() {
    let app = Setup::default().env("RESCAN_INTERVAL_MS", "200").start();
    let dir = app.plugins_dir();
    std::fs::write(dir.join("libback.so"), many("back_001", 'A')).unwrap();
    let served = || app.get("/rest/services/back_001/which/").status == 200;
    wait_for(Duration::from_secs(10), served).expect("served");
    let aside = dir.with_extension("aside");
    std::fs::rename(&dir, &aside).unwrap();
    wait_for(Duration::from_secs(10), || !served()).expect("unrouted while the folder is away");
    std::fs::rename(&aside, &dir).unwrap();
    wait_for(Duration::from_secs(10), served).expect("the same file, moved back, is served again");
    // Restored from a copy that keeps times (cp -a): served again too.
    std::fs::rename(&dir, &aside).unwrap();
    wait_for(Duration::from_secs(10), || !served()).expect("unrouted");
    let status = std::process::Command::new("cp").arg("-a").arg(&aside).arg(&dir).status().unwrap();
    assert!(status.success());
    wait_for(Duration::from_secs(10), served).expect("a folder restored with cp -a is served again");
}

#[test]
fn a_log_nobody_reads_never_stalls_requests() {
    let app = Setup::default().plugins(&["hello"]).start();
    app.stall_log(true);
    let client = crate::support::App::client();
    let started = std::time::Instant::now();
    for n in 0..3000 {
        let reply = client
            .get(app.url(&format!("/rest/services/hello/greet/?name=n{n}")))
            .timeout(Duration::from_secs(5))
            .send();
        assert!(
            reply.is_ok_and(|r| r.status() == 200),
            "request {n} stalled behind the log after {:?}",
            started.elapsed()
        );
    }
    eprintln!("3000 requests with the log stalled took {:?}", started.elapsed());
    // The lines were queued meanwhile, not lost: they come out once the log is read again.
    app.stall_log(false);
    let caught_up = wait_for(Duration::from_secs(10), || app.logs().contains("greeting n2999"));
    assert!(caught_up.is_some(), "the queued lines did not come out");
}

#[test]
fn a_plugin_that_loads_slowly_holds_up_no_request() {
    let app = Setup::default().plugins(&["hello"]).start();
    let token = app.admin_token();
    crate::support::write_by_rename(
        &app.plugins_dir(),
        "libslow_load.so",
        &std::fs::read(crate::support::plugin_file("slow_load")).unwrap(),
    );
    // While it loads (3 s), the built-ins, the admin's status list and other plugins answer at once.
    let mut slowest = Duration::ZERO;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        for path in ["/ping", "/health", "/rest/admin/plugins", "/rest/services/hello/greet/"] {
            let asked = std::time::Instant::now();
            let reply = app.with_headers("GET", path, &[("authorization", &format!("Bearer {token}"))], None);
            assert_eq!(reply.status, 200, "{path}: {}", reply.text());
            slowest = slowest.max(asked.elapsed());
        }
    }
    eprintln!("slowest answer while a plugin loaded: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(1500),
        "a request waited {slowest:?} for a loading plugin"
    );
    let loaded = wait_for(Duration::from_secs(10), || app.get("/rest/services/slow_load/ready/").status == 200);
    assert!(loaded.is_some(), "{}", app.logs());
}
