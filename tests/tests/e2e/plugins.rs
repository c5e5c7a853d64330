//! Bad plugin files never take the server down; each is skipped with one short reason.

use std::process::Command;

use serde_json::{json, Value};

use crate::support::{plughost_bin, plugin_file, Setup};

#[test]
fn bad_files_are_skipped_with_a_short_reason_and_the_rest_is_served() {
    let app = Setup::default()
        .plugins(&["module1", "wrong_abi", "not_a_plugin", "alias_clash"])
        .file("libgarbage.so", b"this is not a shared library at all")
        .file("libempty.so", b"")
        .file("README.txt", b"not a plugin file; ignored")
        .start();
    assert_eq!(app.get("/rest/services/v1/hello-world/").json()["response"], "hello-world");
    app.get("/rest/services/clash/").error(404, "FUNCTION_NOT_FOUND");

    let health = app.admin("GET", "/health", None).json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["plugins"]["loaded"], 1);
    assert_eq!(health["plugins"]["failed"], 5);
    let files = health["plugins"]["files"].as_array().unwrap();
    let reason = |file: &str| -> String {
        let entry: &Value = files
            .iter()
            .find(|f| f["file"] == file)
            .unwrap_or_else(|| panic!("{file} not in {files:?}"));
        assert_eq!(entry["state"], "failed", "{entry}");
        entry["error"].as_str().unwrap().to_owned()
    };
    assert!(reason("libwrong_abi.so").contains("incompatible plugin-api"));
    assert!(reason("libnot_a_plugin.so").contains("not a plughost plugin"));
    assert!(reason("libgarbage.so").contains("not a shared library"));
    assert!(reason("libempty.so").contains("not a shared library"));
    assert!(reason("libalias_clash.so").contains("collides with 'module1'"));
    let loaded = files.iter().find(|f| f["file"] == "libmodule1.so").unwrap();
    assert_eq!(loaded["state"], "loaded");
    assert_eq!(loaded["module"], "module1");
    assert_eq!(loaded["sha256"].as_str().unwrap().len(), 64);
    assert!(files.iter().all(|f| f["file"] != "README.txt"));

    let logs = app.logs();
    for line in logs.lines().filter(|l| l.contains("plugin not loaded")) {
        assert!(line.len() < 500, "log lines about bad plugins stay short: {line}");
    }
    assert_eq!(logs.lines().filter(|l| l.contains("plugin not loaded")).count(), 5, "{logs}");
}

#[test]
fn plugin_log_lines_come_out_of_the_host_logger_tagged_with_the_module() {
    let app = Setup::default().plugins(&["hello"]).start();
    assert_eq!(app.get("/rest/services/greet/?name=Logan").status, 200);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let logs = app.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("greeting Logan"))
        .unwrap_or_else(|| panic!("no plugin log line in:\n{logs}"));
    assert!(line.contains("module=\"hello\""), "{line}");
}

#[test]
fn check_validates_a_plugin_offline() {
    let ok = Command::new(plughost_bin())
        .arg("check")
        .arg(plugin_file("module1"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{out}");
    assert!(out.contains("module module1 1.0.0"), "{out}");
    assert!(out.contains("/rest/services/v1/hello-world/"), "{out}");
    assert!(!out.contains("__private"), "{out}");
    let bad = Command::new(plughost_bin())
        .arg("check")
        .arg(plugin_file("wrong_abi"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("incompatible plugin-api"));
    // Output cut short, as `| head -1` does (`:` reads nothing and exits at once): a quiet end,
    // not a panic about a broken pipe.
    let cut = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" check \"$1\" | :")
        .arg(plughost_bin())
        .arg(plugin_file("module1"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&cut.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let app = Setup::default().plugins(&["module1"]).env("LOG_FORMAT", "json").start();
    assert_eq!(app.get("/rest/services/bar-none/").json(), json!("bar-none again"));
    std::thread::sleep(std::time::Duration::from_millis(100));
    let logs = app.logs();
    let access = logs
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .find(|v| v["target"] == "plughost::access")
        .expect("an access log line");
    assert_eq!(access["status"], 200);
    assert_eq!(access["method"], "GET");
    assert!(access["request_id"].is_string(), "{access}");
}

/// `plughost check` reads a plugin in a confined sandbox worker: its constructors never run in
/// the command's own process (as root, in a CI), and what it prints of the manifest is escaped.
#[test]
fn check_inspects_a_plugin_in_a_sandbox_worker_and_escapes_what_it_prints() {
    let check = Command::new(plughost_bin())
        .arg("check")
        .arg(plugin_file("slow_load"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The manifest takes 3 s to build: look at the processes meanwhile, for as long as the
    // command runs (under a loaded machine the worker may take seconds to start).
    let parent = check.id().to_string();
    let mut worker = false;
    crate::support::wait_for(std::time::Duration::from_secs(30), || {
        let ended = std::fs::read_to_string(format!("/proc/{}/stat", check.id())).map_or(true, |stat| {
            stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) == Some("Z")
        });
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", check.id())).unwrap_or_default();
        assert!(
            !maps.contains("slow_load") && !maps.contains("memfd:plughost"),
            "plughost check mapped the plugin itself"
        );
        // Its child (from any of its threads) that runs `plughost worker`.
        worker = std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
            let pid = entry.file_name().to_string_lossy().into_owned();
            let child_of_check = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)) == Some(parent.as_str()));
            child_of_check && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"worker"))
        });
        ended || worker
    });
    assert!(worker, "no sandbox worker under plughost check");
    let output = check.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("module slow_load") && stdout.contains("/rest/services/slow_load/ready/"),
        "{stdout}"
    );
    assert!(!stdout.contains('\u{1b}'), "a terminal escape from the manifest was printed");
    assert!(stdout.contains("\\u{1b}[2J"), "{stdout}");
}
