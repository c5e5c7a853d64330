//! `plughost new` → `cargo build` → `plughost check` → drop into a running server → call.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::support::{plughost_bin, wait_for, Setup};

#[test]
fn a_new_plugin_builds_checks_and_serves() {
    let work = tempfile::tempdir().unwrap();
    let crate_dir = work.path().join("orders_v1");
    let out = Command::new(plughost_bin())
        .args(["new", "orders_v1", "--path"])
        .arg(&crate_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in ["Cargo.toml", "src/lib.rs", "README.md"] {
        assert!(crate_dir.join(file).is_file(), "{file} missing");
    }
    let again = Command::new(plughost_bin())
        .args(["new", "orders_v1", "--path"])
        .arg(&crate_dir)
        .output()
        .unwrap();
    assert!(!again.status.success(), "an existing folder is never overwritten");
    assert!(!Command::new(plughost_bin())
        .args(["new", "Bad-Name"])
        .current_dir(work.path())
        .output()
        .unwrap()
        .status
        .success());

    // Offline: every dependency is already in the local registry cache from the workspace build.
    let target = work.path().join("target");
    let mut build = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = build.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = build.kill();
            panic!("cargo build of the new plugin took over 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(build.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "the generated crate does not build:\n{stderr}");
    let library = target.join("debug/liborders_v1.so");

    let check = Command::new(plughost_bin()).arg("check").arg(&library).output().unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{report}");
    assert!(report.contains("/rest/services/orders_v1/add/"), "{report}");

    let app = Setup::default().start();
    std::fs::copy(&library, app.plugins_dir().join("liborders_v1.so")).unwrap();
    wait_for(Duration::from_secs(10), || {
        app.get("/rest/services/orders_v1/add/?a=2&b=40").status == 200
    })
    .expect("dropped in and served");
    assert_eq!(app.get("/rest/services/orders_v1/add/?a=2&b=40").json(), json!({"sum": 42}));
    app.get("/rest/services/add/?b=1").error(422, "MISSING_PARAMETER");
}
