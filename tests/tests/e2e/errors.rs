//! Plugin failures: panics, errors, slow calls, huge replies; the server keeps serving.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{App, Setup};

#[test]
fn a_panic_is_a_500_for_that_call_only() {
    let app = Setup::default().plugins(&["panicky", "module1"]).start();
    let reply = app.get("/rest/services/boom/?what=dinner");
    let body = reply.error(500, "PLUGIN_PANICKED");
    assert!(
        !reply.text().contains("secret internal detail"),
        "panic message leaked: {}",
        reply.text()
    );
    let error_id = body["error_id"].as_str().unwrap().to_owned();
    // Many panics, concurrently, and the server still answers everything else.
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..5 {
                    assert_eq!(app.get("/rest/services/panicky/boom/").status, 500);
                }
            });
        }
    });
    assert_eq!(app.get("/rest/services/fine/").json(), json!({"still": "alive"}));
    assert_eq!(app.get("/rest/services/v1/bar-none/").status, 200);
    let logs = app.logs();
    assert!(
        logs.contains("secret internal detail: exploded on dinner"),
        "the panic message belongs in the log:\n{logs}"
    );
    assert!(logs.contains(&error_id), "the error id belongs in the log:\n{logs}");
}

#[test]
fn plugin_errors_keep_their_status_code_and_message() {
    let app = Setup::default().plugins(&["panicky"]).start();
    let body = app.get("/rest/services/refuse/").error(404, "WIDGET_MISSING");
    assert_eq!(body["error_description"], "no widget 42");
}

#[test]
fn a_slow_call_gets_504_on_time_and_others_are_served_meanwhile() {
    let app = Setup::default()
        .plugins(&["sleepy", "module1"])
        .env("CALL_TIMEOUT_MS", "300")
        .start();
    let started = Instant::now();
    std::thread::scope(|s| {
        let slow = s.spawn(|| app.get("/rest/services/nap/?ms=3000"));
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..5 {
            assert_eq!(app.get("/rest/services/bar-none/").status, 200);
        }
        let reply = slow.join().unwrap();
        let body = reply.error(504, "CALL_TIMEOUT");
        assert!(body["error_description"].as_str().unwrap().contains("300 ms"), "{body}");
    });
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "504 came after {:?}",
        started.elapsed()
    );
    assert_eq!(app.get("/rest/services/nap/?ms=10").json(), json!({"slept_ms": 10}));
    let missing = app.get("/rest/services/nap/").error(422, "MISSING_PARAMETER");
    assert!(missing["error_description"].as_str().unwrap().contains("'ms'"));
}

#[test]
fn large_bodies_arrive_whole_and_the_response_limit_holds() {
    let app = Setup::default().plugins(&["big_body"]).env("MAX_RESPONSE_BYTES", "4194304").start();
    let reply = app.get("/rest/services/big/?kib=3072");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), 3072 * 1024);
    assert_eq!(reply.header("x-body-len"), Some("3145728"));
    assert_eq!(reply.header("content-type"), Some("application/octet-stream"));
    assert!(
        reply.body.iter().enumerate().all(|(i, b)| *b == b'a' + (i % 26) as u8),
        "body corrupted"
    );
    let body = app.get("/rest/services/big/?kib=8192").error(502, "RESPONSE_TOO_LARGE");
    assert!(body["error_description"].as_str().unwrap().contains("MAX_RESPONSE_BYTES"));
    assert_eq!(app.get("/rest/services/big/?kib=1").body.len(), 1024);
}

#[test]
fn request_ids_are_echoed_when_sane_and_made_up_otherwise() {
    let app = Setup::default().plugins(&["module1"]).start();
    let client = App::client();
    let reply = client
        .get(app.url("/rest/services/bar-none/"))
        .header("X-Request-Id", "trace-abc.123")
        .send()
        .unwrap();
    assert_eq!(reply.headers()["x-request-id"], "trace-abc.123");
    let reply = client
        .get(app.url("/ping"))
        .header("X-Request-Id", "<script>alert(1)</script>")
        .send()
        .unwrap();
    let id = reply.headers()["x-request-id"].to_str().unwrap().to_owned();
    uuid::Uuid::parse_str(&id).expect("a fresh UUID replaces an insane id");
    let reply = client.get(app.url("/nowhere")).send().unwrap();
    assert!(reply.headers().contains_key("x-request-id"));
}

#[test]
fn a_plugin_that_kills_its_process_costs_one_request_and_the_worker_is_replaced() {
    let app = Setup::default().plugins(&["panicky", "module1"]).start();
    let first = app.worker_pid();
    let crashed = App::client().get(app.url("/rest/services/crash/")).send();
    assert!(crashed.is_err(), "the connection of the crashing call is lost: {crashed:?}");
    let back = crate::support::wait_for(Duration::from_secs(20), || {
        App::client()
            .get(app.url("/rest/services/fine/"))
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
    assert!(back.is_some(), "a fresh worker serves again:\n{}", app.logs());
    assert_ne!(app.worker_pid(), first);
    assert!(app.logs().contains("worker exited unexpectedly"));
}

#[test]
fn plugins_allocate_through_the_hosts_allocator() {
    // plugin_api::alloc: the plugin finds the table plughost exports and uses it from its first
    // allocation; its own unit tests (no host) use the system allocator.
    let app = Setup::default().plugins(&["panicky"]).start();
    let reply = app.get("/rest/services/panicky/allocator/");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["host_allocator"], true, "{}", reply.text());
}
