//! Start-up, configuration errors, built-ins and graceful shutdown.

use std::time::Duration;

use serde_json::json;

use crate::support::{examples, Setup};

#[test]
fn builtins_answer() {
    let app = examples();
    assert_eq!(app.get("/ping").json(), json!({}));
    let version = app.get("/version").json();
    assert_eq!(version["name"], "plughost");
    assert_eq!(version["abi_version"], 1);
    assert!(version["version"].is_string());
    // Anonymous callers learn the status and the version; the detail is the admin's.
    let anonymous = app.get("/health").json();
    assert_eq!(anonymous, json!({"status": "ok", "version": version["version"]}));
    let health = app.admin("GET", "/health", None).json();
    assert_eq!(health["plugins"]["loaded"], 5);
    assert_eq!(health["plugins"]["failed"], 0);
}

#[test]
fn bad_configuration_is_reported_all_at_once() {
    let (status, stderr) = Setup::default()
        .env("NUM_URL_PARMS", "three")
        .env("URL_PARM1", "bad-name")
        .env("MAX_BODY_BYTES", "-1")
        .env("LOG_FORMAT", "xml")
        .start_and_fail();
    assert_eq!(status.code(), Some(2), "{stderr}");
    for needle in ["NUM_URL_PARMS=three", "MAX_BODY_BYTES=-1", "LOG_FORMAT=xml"] {
        assert!(stderr.contains(needle), "{needle} not reported:\n{stderr}");
    }
    let (status, stderr) = Setup::default().env("PLUGINS_DIR", "/no/such/folder").start_and_fail();
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("PLUGINS_DIR=/no/such/folder is not a folder"), "{stderr}");
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let app = examples();
    let (status, stderr) = Setup::default().env("BIND", &app.addr.to_string()).start_and_fail();
    assert!(!status.success());
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits_zero() {
    let mut app = Setup::default().plugins(&["sleepy"]).start();
    let url = app.url("/rest/services/nap/?ms=1500");
    let in_flight = std::thread::spawn(move || crate::support::App::client().get(url).send().map(|r| r.status().as_u16()));
    std::thread::sleep(Duration::from_millis(400));
    let addr = app.addr;
    let status = app.terminate(Duration::from_secs(20)).expect("exited after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert_eq!(in_flight.join().unwrap().expect("the in-flight request was answered"), 200);
    assert!(std::net::TcpStream::connect(addr).is_err(), "the listener is closed");
}
