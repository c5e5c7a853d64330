//! Asynchronous jobs through the real server, on both stores: `Prefer: respond-async`, polling,
//! results, retries and dead letters, idempotency keys, delays and cancelling, bad input,
//! who may see a job, and (on MongoDB) a replica killed while it runs a job.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    auth::{rest_tenant, settle_step, token},
    mongo_server::MongoServer,
    support::{code_at, now, wait_for, App, Reply, Setup},
};

const ASYNC: (&str, &str) = ("Prefer", "respond-async");

fn setup() -> Setup {
    Setup::default()
        .plugins(&["flaky", "secure"])
        .env("JOB_BACKOFF_MS", "50")
        .env("JOBS_POLL_MS", "100")
}

fn queue(app: &App, path: &str, body: Option<&Value>, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![ASYNC];
    headers.extend_from_slice(extra);
    app.with_headers("POST", path, &headers, body)
}

/// Queues and checks the acknowledgement; returns the job id.
fn queued(app: &App, path: &str, body: Option<&Value>, extra: &[(&str, &str)]) -> String {
    let reply = queue(app, path, body, extra);
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(reply.header("preference-applied"), Some("respond-async"));
    let job = reply.json();
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(reply.header("location"), Some(format!("/rest/jobs/{id}").as_str()));
    assert_eq!(job["status_url"], format!("/rest/jobs/{id}"));
    assert!(uuid::Uuid::parse_str(&id).is_ok_and(|u| u.get_version_num() == 4), "{id}");
    id
}

/// Polls the job until it is in `state` (at most 20 s); returns its record.
fn until(app: &App, id: &str, state: &str, headers: &[(&str, &str)]) -> Value {
    let mut last = Value::Null;
    let reached = wait_for(Duration::from_secs(20), || {
        last = app.with_headers("GET", &format!("/rest/jobs/{id}"), headers, None).json();
        last["state"] == state
    });
    assert!(reached.is_some(), "job {id} never became {state}: {last}");
    last
}

fn exercise(app: &App) {
    // Fails twice (503), then succeeds: three attempts, each told its job and attempt.
    let id = queued(app, "/rest/services/flaky/flaky/", Some(&json!({"key": "a", "fails": 2})), &[]);
    let job = until(app, &id, "succeeded", &[]);
    assert_eq!(job["attempts"], 3, "{job}");
    assert_eq!(job["caller"], "none");
    assert_eq!(job["result"]["status"], 200, "{job}");
    assert_eq!(job["result"]["body"], json!({"key": "a", "calls": 3, "job": id, "attempt": 3}));
    let result = app.get(&format!("/rest/jobs/{id}/result"));
    assert_eq!(result.status, 200);
    assert_eq!(result.header("x-fixture"), Some("flaky"));
    assert!(result.header("content-type").unwrap().starts_with("application/json"));
    assert_eq!(result.json()["attempt"], 3);

    // Always a 500: dead after JOB_MAX_ATTEMPTS; the admin sees it and requeues it.
    let dead = queued(app, "/rest/services/flaky/broken/", None, &[]);
    let job = until(app, &dead, "dead", &[]);
    assert_eq!(job["attempts"], 3, "{job}");
    assert_eq!(job["result"]["status"], 500, "{job}");
    let listed = app.admin("GET", "/rest/admin/jobs?state=dead", None).json();
    assert!(
        listed["jobs"].as_array().unwrap().iter().any(|j| j["id"] == dead.as_str()),
        "{listed}"
    );
    let requeued = app.admin("POST", &format!("/rest/admin/jobs/{dead}/requeue"), None);
    assert_eq!(requeued.status, 200, "{}", requeued.text());
    until(app, &dead, "dead", &[]);
    app.admin("POST", &format!("/rest/admin/jobs/{id}/requeue"), None)
        .error(409, "JOB_NOT_ENDED");
    // The result of a failed job is the function's own error answer.
    let result = app.get(&format!("/rest/jobs/{dead}/result"));
    assert_eq!(result.status, 500);
    assert_eq!(result.json()["error"], "PLUGIN_ERROR");

    // A 4xx is final: one attempt.
    let refused = queued(app, "/rest/services/flaky/refuse/", None, &[]);
    let job = until(app, &refused, "failed", &[]);
    assert_eq!(
        (job["attempts"].clone(), job["result"]["status"].clone()),
        (json!(1), json!(400)),
        "{job}"
    );

    // The same idempotency key from the same caller: the same job, queued once.
    let key = [("Idempotency-Key", "order-17")];
    let first = queued(app, "/rest/services/flaky/flaky/", Some(&json!({"key": "b", "fails": 0})), &key);
    let second = queued(app, "/rest/services/flaky/flaky/", Some(&json!({"key": "b", "fails": 0})), &key);
    assert_eq!(first, second);
    let job = until(app, &first, "succeeded", &[]);
    assert_eq!(job["result"]["body"]["calls"], 1, "run once: {job}");

    // Delayed, then cancelled before it starts; too late to cancel twice; no result.
    let later = queued(
        app,
        "/rest/services/flaky/flaky/",
        Some(&json!({"key": "c", "fails": 0})),
        &[("X-Plughost-Delay-Secs", "30")],
    );
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(app.get(&format!("/rest/jobs/{later}")).json()["state"], "queued");
    let cancelled = app.send("DELETE", &format!("/rest/jobs/{later}"), None);
    assert_eq!((cancelled.status, cancelled.json()["state"].clone()), (200, json!("cancelled")));
    app.send("DELETE", &format!("/rest/jobs/{later}"), None).error(409, "JOB_STARTED");
    app.get(&format!("/rest/jobs/{later}/result")).error(409, "JOB_NOT_FINISHED");
    app.send("DELETE", &format!("/rest/jobs/{id}"), None).error(409, "JOB_STARTED");

    // Checked as a synchronous call is, and the job's own headers, before anything is queued.
    queue(app, "/rest/services/flaky/nope/", None, &[]).error(404, "FUNCTION_NOT_FOUND");
    queue(app, "/rest/services/flaky/flaky/", Some(&json!({"fails": 1})), &[]).error(422, "MISSING_PARAMETER");
    queue(app, "/rest/services/whoami/", None, &[]).error(401, "AUTHORIZATION_HEADER_MISSING");
    queue(app, "/rest/services/flaky/broken/", None, &[("X-Plughost-Delay-Secs", "soon")]).error(400, "BAD_DELAY");
    queue(app, "/rest/services/flaky/broken/", None, &[("X-Plughost-Delay-Secs", "999999999")]).error(400, "BAD_DELAY");
    queue(app, "/rest/services/flaky/broken/", None, &[("Idempotency-Key", "")]).error(400, "BAD_IDEMPOTENCY_KEY");
    queue(
        app,
        "/rest/services/flaky/broken/",
        None,
        &[("X-Callback-Url", "http://127.0.0.1:9/")],
    )
    .error(422, "CALLBACK_REFUSED");
    app.get("/rest/jobs/not-a-uuid").error(400, "BAD_JOB_ID");
    app.get("/rest/jobs/6f1c1f6e-8d4a-4c4e-9a53-2a8f3c1b0d77")
        .error(404, "JOB_NOT_FOUND");
    app.get("/rest/jobs/").error(401, "AUTHORIZATION_HEADER_MISSING");
    app.admin("GET", "/rest/admin/jobs?state=asleep", None).error(400, "BAD_STATE");
    app.send("PUT", &format!("/rest/jobs/{id}"), None).error(405, "METHOD_NOT_ALLOWED");
    // A client cannot pass itself off as a job.
    let sync = app.with_headers(
        "POST",
        "/rest/services/flaky/flaky/",
        &[("X-Plughost-Job-Id", "forged"), ("X-Plughost-Attempt", "9")],
        Some(&json!({"key": "d", "fails": 0})),
    );
    assert_eq!(
        (sync.json()["job"].clone(), sync.json()["attempt"].clone()),
        (Value::Null, Value::Null)
    );

    // A tenant's job is its own and the admin's: another tenant and anonymous callers get 404.
    settle_step();
    let (alice, alice_secret) = rest_tenant(app, "alice");
    let (bob, bob_secret) = rest_tenant(app, "bob");
    let alice_token = token(app, &alice, &code_at(&alice_secret, now())).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob_token = token(app, &bob, &code_at(&bob_secret, now())).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let as_alice = format!("Bearer {alice_token}");
    let as_bob = format!("Bearer {bob_token}");
    let mine = queued(
        app,
        "/rest/services/secure/echo/",
        Some(&json!({"n": 1})),
        &[("Authorization", &as_alice)],
    );
    let job = until(app, &mine, "succeeded", &[("Authorization", &as_alice)]);
    assert_eq!(job["caller"], "tenant");
    assert_eq!(job["result"]["body"], json!({"response": "echo", "kwargs": {"n": 1}}));
    app.with_headers("GET", &format!("/rest/jobs/{mine}"), &[("Authorization", &as_bob)], None)
        .error(404, "JOB_NOT_FOUND");
    app.get(&format!("/rest/jobs/{mine}")).error(404, "JOB_NOT_FOUND");
    app.with_headers("DELETE", &format!("/rest/jobs/{mine}"), &[("Authorization", &as_bob)], None)
        .error(404, "JOB_NOT_FOUND");
    assert_eq!(app.admin("GET", &format!("/rest/jobs/{mine}"), None).status, 200);
    let alices = app.with_headers("GET", "/rest/jobs/", &[("Authorization", &as_alice)], None).json();
    let ids: Vec<&str> = alices["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [mine.as_str()]);
    let bobs = app.with_headers("GET", "/rest/jobs/", &[("Authorization", &as_bob)], None).json();
    assert_eq!(bobs["jobs"], json!([]));

    // Pages: newest first, with a cursor.
    let page = app.admin("GET", "/rest/admin/jobs?limit=2", None).json();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap();
    let rest = app.admin("GET", &format!("/rest/admin/jobs?limit=100&before={next}"), None).json();
    let seen: Vec<&Value> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["jobs"].as_array().unwrap())
        .collect();
    assert_eq!(seen.len(), 6, "every job queued, once");
    assert!(seen.windows(2).all(|w| w[0]["created_at"].as_str() >= w[1]["created_at"].as_str()));
    // The runner in /health, the queue in /metrics.
    let health = app.admin("GET", "/health", None).json();
    assert!(health["jobs"]["concurrency"].as_u64().unwrap() >= 1, "{health}");
    assert_eq!(health["jobs"]["claiming"], true);
    let metrics = app.admin("GET", "/metrics", None).text();
    for line in [
        "plughost_jobs{state=\"dead\"} 1",
        "plughost_jobs{state=\"cancelled\"} 1",
        "plughost_jobs{state=\"failed\"} 1",
        "plughost_job_attempts_total{outcome=\"retried\"} 6",
        "plughost_job_attempts_total{outcome=\"dead\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }
    // Each execution has an access-log line carrying the job id.
    assert!(
        wait_for(Duration::from_secs(5), || app.logs().contains(&mine)).is_some(),
        "no access line for job {mine}:\n{}",
        app.logs()
    );
}

#[test]
fn jobs_on_the_embedded_store() {
    let app = setup().env("RUST_LOG", "warn,plughost::access=info").start();
    exercise(&app);
    // The CLI, beside the running server, on the same store.
    let listed = app.cli(&["job", "list", "--state", "dead", "--json"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let dead = listed["jobs"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1, "{listed}");
    let shown = app.cli(&["job", "show", &dead]);
    assert_eq!(serde_json::from_slice::<Value>(&shown.stdout).unwrap()["state"], "dead");
    let table = String::from_utf8(app.cli(&["job", "list"]).stdout).unwrap();
    assert!(table.starts_with("ID ") && table.contains(&format!("{dead}  dead")), "{table}");
    let later = queued(&app, "/rest/services/flaky/broken/", None, &[("X-Plughost-Delay-Secs", "60")]);
    let out = app.cli(&["job", "requeue", &later]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("only failed, dead or cancelled"), "{out:?}");
    assert!(app.cli(&["job", "cancel", &later]).status.success());
    assert_eq!(app.get(&format!("/rest/jobs/{later}")).json()["state"], "cancelled");
    assert!(app.cli(&["job", "requeue", &later]).status.success());
    assert_ne!(app.get(&format!("/rest/jobs/{later}")).json()["state"], "cancelled");
    let out = app.cli(&["job", "show", "nope"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not a job id"),
        "{out:?}"
    );
}

#[test]
fn jobs_on_mongodb() {
    let server = MongoServer::start();
    let app = setup()
        .env("MONGODB_URI", &server.uri())
        .env("MONGODB_DATABASE", "jobs_e2e")
        .env("RUST_LOG", "warn,plughost::access=info")
        .start();
    exercise(&app);
}

/// A replica on `server`'s database `database`, with one more setting.
fn replica(server: &MongoServer, database: &str, setting: (&str, &str)) -> Setup {
    setup()
        .env("MONGODB_URI", &server.uri())
        .env("MONGODB_DATABASE", database)
        .env(setting.0, setting.1)
}

/// Starts a replica and queues a `tally` call of `ms` milliseconds writing to a fresh log;
/// returns the replica, the job id and the log (kept while the test runs).
fn running_tally(start: &dyn Fn() -> Setup, ms: u64) -> (App, String, tempfile::NamedTempFile) {
    let app = start().start();
    let log = tempfile::NamedTempFile::new().unwrap();
    let path = log.path().to_string_lossy().into_owned();
    let id = queued(&app, "/rest/services/flaky/tally/", Some(&json!({"log": path, "ms": ms})), &[]);
    until(&app, &id, "running", &[]);
    (app, id, log)
}

/// A replica killed while it runs a job: another finishes it once the lease expires, and the
/// job shows both attempts.
#[test]
fn a_job_of_a_killed_replica_is_finished_by_another() {
    let server = MongoServer::start();
    let on = || replica(&server, "jobs_failover", ("JOB_LEASE_MS", "1000"));
    // The call takes 4 s and writes only at its end: killed while running, it never writes.
    let (mut first, id, log) = running_tally(&on, 4000);
    let worker = first.worker_pid();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &first.pid().to_string(), &worker.to_string()])
        .status();
    first.terminate(Duration::from_secs(5));
    let second = on().start();
    let job = until(&second, &id, "succeeded", &[]);
    assert_eq!(job["attempts"], 2, "{job}");
    let executions = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(
        executions.lines().collect::<Vec<_>>(),
        [id.as_str()],
        "only the second attempt finished"
    );
}

/// A replica told to stop claims no more, and gives back what it could not finish within its
/// grace: another replica runs it, and the interrupted attempt is not counted.
#[test]
fn a_stopping_replica_gives_its_unfinished_job_back() {
    let server = MongoServer::start();
    let on = || replica(&server, "jobs_drain", ("SHUTDOWN_GRACE_MS", "1000"));
    let (mut first, id, _log) = running_tally(&on, 5000);
    let status = first
        .terminate(Duration::from_secs(10))
        .expect("the replica stops within its grace");
    assert!(status.success(), "{status:?}");
    let second = on().start();
    let job = until(&second, &id, "succeeded", &[]);
    // Given back, not left to its lease (15 s, and a second attempt counted).
    assert_eq!(job["attempts"], 1, "the interrupted attempt is not counted: {job}");
}

/// Two replicas on one MongoDB: 1,000 jobs queued through both are each run exactly once.
#[test]
fn two_replicas_run_a_thousand_jobs_exactly_once() {
    let server = MongoServer::start();
    let on = || replica(&server, "jobs_thousand", ("JOBS_CONCURRENCY", "4"));
    let (a, b) = (on().start(), on().start());
    let log = tempfile::NamedTempFile::new().unwrap();
    let path = log.path().to_string_lossy().into_owned();
    let mut ids: Vec<String> = (0..1000)
        .map(|n| {
            let through = if n % 2 == 0 { &a } else { &b };
            queued(through, "/rest/services/flaky/tally/", Some(&json!({"log": path})), &[])
        })
        .collect();
    let done = wait_for(Duration::from_secs(240), || {
        std::fs::read_to_string(log.path()).unwrap_or_default().lines().count() >= 1000
    });
    assert!(done.is_some(), "not every job ran");
    // Settled: nothing runs a second time afterwards.
    std::thread::sleep(Duration::from_millis(500));
    let mut ran: Vec<String> = std::fs::read_to_string(log.path()).unwrap().lines().map(str::to_owned).collect();
    ran.sort();
    ids.sort();
    assert_eq!(ran.len(), 1000, "a job ran twice");
    assert_eq!(ran, ids, "each queued job ran, once");
    let page = a.admin("GET", "/rest/admin/jobs?state=succeeded&limit=100", None).json();
    assert!(page["jobs"].as_array().unwrap().iter().all(|j| j["attempts"] == 1), "{page}");
}

/// One principal flooding the queue does not starve another: with two workers, the newcomer's
/// job starts as soon as one frees, long before the flood is drained.
#[test]
fn a_flood_from_one_caller_does_not_starve_another() {
    settle_step();
    let app = setup().env("JOBS_CONCURRENCY", "2").start();
    let (uuid, secret) = rest_tenant(&app, "patient");
    let tok = token(&app, &uuid, &code_at(&secret, now())).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth = format!("Bearer {tok}");
    let log = tempfile::NamedTempFile::new().unwrap();
    let path = log.path().to_string_lossy().into_owned();
    // 20 calls of 2 s on two workers: 20 s to drain, however slowly they are queued.
    let flood: Vec<String> = (0..20)
        .map(|_| queued(&app, "/rest/services/flaky/tally/", Some(&json!({"log": path, "ms": 2000})), &[]))
        .collect();
    let mine = queued(
        &app,
        "/rest/services/flaky/tally/",
        Some(&json!({"log": path, "ms": 0})),
        &[("Authorization", &auth)],
    );
    let done = until(&app, &mine, "succeeded", &[("Authorization", &auth)]);
    let states: Vec<String> = flood
        .iter()
        .map(|id| {
            app.get(&format!("/rest/jobs/{id}")).json()["state"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        })
        .collect();
    let waiting = states.iter().filter(|s| *s == "queued").count();
    let last = app.get(&format!("/rest/jobs/{}", flood[19])).json();
    assert!(waiting >= 10, "the tenant's job waited for the flood: {states:?}\n{done}\n{last}");
}

/// The store unreachable while a job is queued: 503, and nothing half-written (once it is back,
/// only the jobs acknowledged exist). An oversized body is refused before anything is queued.
#[test]
fn a_store_outage_or_an_oversized_body_queues_nothing() {
    let mut server = MongoServer::start();
    let app = replica(&server, "jobs_outage", ("MAX_BODY_BYTES", "1024")).start();
    let bearer = format!("Bearer {}", app.admin_token());
    let as_admin = [("Authorization", bearer.as_str())];
    let big = json!({"key": "x".repeat(2048), "fails": 0});
    queue(&app, "/rest/services/flaky/flaky/", Some(&big), &[]).error(413, "PAYLOAD_TOO_LARGE");

    server.stop();
    let refused = wait_for(Duration::from_secs(10), || {
        queue(&app, "/rest/services/flaky/flaky/", Some(&json!({"key": "o", "fails": 0})), &[]).status == 503
    });
    assert!(refused.is_some(), "queueing did not fail closed");
    queue(&app, "/rest/services/flaky/flaky/", Some(&json!({"key": "o", "fails": 0})), &[]).error(503, "STORE_UNAVAILABLE");
    let schedule = json!({"name": "s", "cron": "* * * * *", "path": "flaky/broken/", "method": "GET"});
    app.with_headers("POST", "/rest/admin/schedules", &as_admin, Some(&schedule))
        .error(503, "STORE_UNAVAILABLE");

    server.resume();
    let back = wait_for(Duration::from_secs(20), || {
        queue(&app, "/rest/services/flaky/flaky/", Some(&json!({"key": "b", "fails": 0})), &[]).status == 202
    });
    assert!(back.is_some(), "queueing did not recover");
    let listed = app.with_headers("GET", "/rest/admin/jobs", &as_admin, None).json();
    assert_eq!(
        listed["jobs"].as_array().unwrap().len(),
        1,
        "only the acknowledged job exists: {listed}"
    );
    let schedules = app.with_headers("GET", "/rest/admin/schedules", &as_admin, None).json();
    assert_eq!(schedules["schedules"], json!([]));
}
