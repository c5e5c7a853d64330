//! The host is several crates (plughost, plughost_sandbox, plughost_tenancy, …), each logging
//! under its own target: a `RUST_LOG` filter on `plughost` still reaches every one of them, and
//! a filter that names none of them silences them.

use std::time::Duration;

use serde_json::Value;

use crate::{
    sandbox::Tenant,
    support::{plugin_file, wait_for, App, Setup},
};

fn json_lines(app: &App) -> Vec<Value> {
    app.logs().lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

fn message(line: &Value) -> &str {
    line["message"].as_str().or(line["fields"]["message"].as_str()).unwrap_or_default()
}

/// A server whose tenant's worker crashes once: a sandbox line at WARN.
fn crash_and_damage(filter: &str) -> App {
    let app = Setup::default()
        .plugins(&["hello"])
        .env("RUST_LOG", filter)
        .env("LOG_FORMAT", "json")
        .env("RESCAN_INTERVAL_MS", "200")
        .start();
    let tenant = Tenant::add(&app, "crasher");
    tenant.install(
        &app,
        "librogue.so",
        &std::fs::read(plugin_file("rogue")).unwrap(),
        "/rest/services/rogue/hello/",
    );
    tenant.get(&app, "/rest/services/rogue/segfault/").error(502, "WORKER_CRASHED");
    app
}

#[test]
fn a_filter_on_plughost_reaches_the_sandbox_crate() {
    let app = crash_and_damage("error,plughost=warn");
    let found = wait_for(Duration::from_secs(10), || {
        json_lines(&app).iter().any(|line| message(line).contains("sandbox worker failed"))
    });
    assert!(found.is_some(), "no sandbox line:\n{}", app.logs());
    let lines = json_lines(&app);
    let line = lines.iter().find(|line| message(line).contains("sandbox worker failed")).unwrap();
    let target = line["target"].as_str().unwrap();
    assert!(target.starts_with("plughost_sandbox"), "the sandbox logs under {target}");
    assert_eq!(line["level"], "WARN");
}

#[test]
fn a_filter_that_names_another_crate_silences_the_sandbox() {
    let app = crash_and_damage("error,plughost::access=info");
    // The access line of the crash is written: the filter is in force and the log is flowing.
    let flowing = wait_for(Duration::from_secs(10), || {
        json_lines(&app)
            .iter()
            .any(|line| line["target"] == "plughost::access" && line["status"] == 502)
    });
    assert!(flowing.is_some(), "{}", app.logs());
    assert!(
        !json_lines(&app).iter().any(|line| message(line).contains("sandbox worker failed")),
        "a WARN line passed a filter of error:\n{}",
        app.logs()
    );
}

#[test]
fn a_filter_on_plughost_reaches_the_tenancy_crate() {
    let app = Setup::default()
        .plugins(&["secure"])
        .env("RUST_LOG", "off,plughost=error")
        .env("LOG_FORMAT", "json")
        .root_file("data/plughost.sqlite3", "this is not an SQLite database, it was damaged")
        .start();
    let found = wait_for(Duration::from_secs(10), || {
        json_lines(&app)
            .iter()
            .any(|line| message(line).contains("the embedded store cannot be opened"))
    });
    assert!(found.is_some(), "no store line:\n{}", app.logs());
}
