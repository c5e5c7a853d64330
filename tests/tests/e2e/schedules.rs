//! Schedules through the real server: created, checked and refused as calls are, firing jobs
//! each tick, paused, resumed and removed, reporting a function that went away; and on two
//! replicas sharing one MongoDB, one job per tick, none doubled, none missed, across a restart.

use std::{collections::BTreeSet, time::Duration};

use serde_json::{json, Value};

use crate::{
    auth::{rest_tenant, settle_step, token},
    mongo_server::MongoServer,
    support::{code_at, now, wait_for, App, Setup},
};

fn setup() -> Setup {
    Setup::default()
        .plugins(&["flaky", "secure"])
        .env("JOB_BACKOFF_MS", "50")
        .env("JOBS_POLL_MS", "100")
}

fn every_second(name: &str, log: &str) -> Value {
    json!({
        "name": name,
        "cron": "* * * * * *",
        "path": "/rest/services/flaky/tally/",
        "method": "POST",
        "body": {"log": log},
    })
}

/// The jobs a schedule made, as the admin lists them.
fn jobs_of(app: &App, name: &str) -> Vec<Value> {
    let listed = app
        .admin("GET", &format!("/rest/admin/jobs?schedule={name}&limit=100"), None)
        .json();
    listed["jobs"].as_array().cloned().unwrap_or_default()
}

/// The tick each job is for (`scheduled_for`, on a whole second), checked distinct.
fn ticks(jobs: &[Value]) -> Vec<i64> {
    let mut ticks: Vec<i64> = jobs
        .iter()
        .map(|j| {
            let at = chrono_like_millis(j["scheduled_for"].as_str().unwrap());
            assert_eq!(at % 1000, 0, "a tick is on a whole second: {j}");
            at
        })
        .collect();
    ticks.sort();
    let distinct: BTreeSet<i64> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick was fired twice: {ticks:?}");
    ticks
}

/// Milliseconds of an RFC 3339 time as the API writes it.
fn chrono_like_millis(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text).unwrap().timestamp_millis()
}

#[test]
fn schedules_fire_pause_resume_and_are_refused_as_calls_are() {
    let app = setup().start();
    let log = tempfile::NamedTempFile::new().unwrap();
    let path = log.path().to_string_lossy().into_owned();
    let created = app.admin("POST", "/rest/admin/schedules", Some(&every_second("beat", &path)));
    assert_eq!(created.status, 201, "{}", created.text());
    let view = created.json();
    assert_eq!((view["timezone"].clone(), view["status"].clone()), (json!("UTC"), json!("ok")));
    assert_eq!(view["body"], json!({"log": path}));
    assert!(view["next_run"].as_str().is_some(), "{view}");

    // Ticks queue jobs of the schedule's owner, which run.
    let fired = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(log.path()).unwrap_or_default().lines().count() >= 3
    });
    assert!(fired.is_some(), "three ticks expected: {:?}", jobs_of(&app, "beat"));
    let shown = app.admin("GET", "/rest/admin/schedules/beat", None).json();
    assert!(
        shown["last_run"].as_str().is_some() && shown["last_job"].as_str().is_some(),
        "{shown}"
    );
    let job = app
        .admin("GET", &format!("/rest/jobs/{}", shown["last_job"].as_str().unwrap()), None)
        .json();
    assert_eq!(
        (job["schedule"].clone(), job["caller"].clone()),
        (json!("beat"), json!("admin")),
        "{job}"
    );
    let listed = app.cli(&["job", "list", "--schedule", "beat", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(listed["jobs"].as_array().unwrap().len() >= 3, "{listed}");

    // Paused: no tick; resumed: ticks again, from the next one on.
    let paused = app.admin("POST", "/rest/admin/schedules/beat/pause", None).json();
    assert_eq!((paused["paused"].clone(), paused["next_run"].clone()), (json!(true), Value::Null));
    std::thread::sleep(Duration::from_millis(1500));
    let before = ticks(&jobs_of(&app, "beat")).len();
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(ticks(&jobs_of(&app, "beat")).len(), before, "a paused schedule fired");
    let resumed = app.admin("POST", "/rest/admin/schedules/beat/resume", None);
    assert_eq!(resumed.json()["paused"], false);
    let more = wait_for(Duration::from_secs(10), || ticks(&jobs_of(&app, "beat")).len() >= before + 2);
    assert!(more.is_some(), "no tick after resuming");
    let listed = app.admin("GET", "/rest/admin/schedules", None).json();
    assert_eq!(listed["schedules"].as_array().unwrap().len(), 1, "{listed}");

    // Checked as the call would be: each refusal names what is wrong; nothing is stored.
    let bad = |change: Value| {
        let mut body = every_second("bad", &path);
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        app.admin("POST", "/rest/admin/schedules", Some(&body))
    };
    bad(json!({"cron": "* * *"})).error(400, "BAD_CRON");
    bad(json!({"cron": "61 * * * *"})).error(400, "BAD_CRON");
    bad(json!({"timezone": "Mars/Olympus"})).error(400, "BAD_TIMEZONE");
    bad(json!({"name": "no spaces"})).error(400, "BAD_SCHEDULE_NAME");
    bad(json!({"method": "BREW"})).error(400, "BAD_METHOD");
    bad(json!({"body": [1, 2]})).error(400, "INVALID_JSON");
    bad(json!({"path": "/etc/passwd"})).error(400, "BAD_PATH");
    bad(json!({"path": "/rest/services/flaky/nope/"})).error(404, "FUNCTION_NOT_FOUND");
    bad(json!({"method": "PUT"})).error(405, "METHOD_NOT_ALLOWED");
    bad(json!({"body": {}})).error(422, "MISSING_PARAMETER");
    bad(json!({"name": "beat"})).error(409, "SCHEDULE_EXISTS");
    let unknown = bad(json!({"every": "day"})).error(400, "INVALID_JSON");
    assert!(unknown["error_description"].as_str().unwrap().contains("every"), "{unknown}");
    app.send("POST", "/rest/admin/schedules", Some(&every_second("x", &path)))
        .error(401, "AUTHORIZATION_HEADER_MISSING");
    app.admin("GET", "/rest/admin/schedules/nope", None)
        .error(404, "SCHEDULE_NOT_FOUND");
    app.admin("PUT", "/rest/admin/schedules/beat", None)
        .error(405, "METHOD_NOT_ALLOWED");
    let listed = app.admin("GET", "/rest/admin/schedules", None).json();
    assert_eq!(listed["schedules"].as_array().unwrap().len(), 1, "{listed}");

    // A tenant's schedules are its own: it may not schedule what it may not call, and another
    // tenant does not see them.
    settle_step();
    let (alice, alice_secret) = rest_tenant(&app, "alice");
    let (bob, bob_secret) = rest_tenant(&app, "bob");
    let bearer = |uuid: &str, secret: &str| {
        let tok = token(&app, uuid, &code_at(secret, now())).json()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        format!("Bearer {tok}")
    };
    let (as_alice, as_bob) = (bearer(&alice, &alice_secret), bearer(&bob, &bob_secret));
    let send = |who: &str, method: &str, path: &str, body: Option<&Value>| app.with_headers(method, path, &[("Authorization", who)], body);
    let echo = json!({"name": "mine", "cron": "*/2 * * * * *", "path": "secure/echo/", "method": "POST", "body": {"n": 1}});
    let made = send(&as_alice, "POST", "/rest/tenant/schedules", Some(&echo));
    assert_eq!(made.status, 201, "{}", made.text());
    assert_eq!(made.json()["jobs_url"], "/rest/jobs?schedule=mine");
    let admin_only = json!({"name": "sneaky", "cron": "* * * * *", "path": "secure/admin_stats/", "method": "GET"});
    let refused = send(&as_alice, "POST", "/rest/tenant/schedules", Some(&admin_only));
    assert!(matches!(refused.status, 403 | 404), "{}", refused.text());
    send(&as_bob, "GET", "/rest/tenant/schedules/mine", None).error(404, "SCHEDULE_NOT_FOUND");
    assert_eq!(send(&as_bob, "GET", "/rest/tenant/schedules", None).json()["schedules"], json!([]));
    let mine = wait_for(Duration::from_secs(10), || {
        let jobs = send(&as_alice, "GET", "/rest/jobs?schedule=mine", None).json();
        jobs["jobs"].as_array().is_some_and(|j| j.iter().any(|j| j["state"] == "succeeded"))
    });
    assert!(mine.is_some(), "the tenant's schedule ran no job");
    app.admin("POST", "/rest/tenant/schedules", Some(&echo)).error(403, "FORBIDDEN");
    assert_eq!(
        app.admin("GET", "/rest/admin/schedules", None).json()["schedules"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A function that goes away is reported in the schedule's status, and no job is made.
    std::fs::remove_file(app.plugins_dir().join("libflaky.so")).unwrap();
    let reported = wait_for(Duration::from_secs(15), || {
        let status = app.admin("GET", "/rest/admin/schedules/beat", None).json()["status"].clone();
        status.as_str().is_some_and(|s| s.contains("FUNCTION_NOT_FOUND"))
    });
    assert!(
        reported.is_some(),
        "{}",
        app.admin("GET", "/rest/admin/schedules/beat", None).text()
    );

    // Removed: gone, and no more ticks.
    let removed = app.admin("DELETE", "/rest/admin/schedules/beat", None);
    assert_eq!(removed.status, 200, "{}", removed.text());
    app.admin("GET", "/rest/admin/schedules/beat", None)
        .error(404, "SCHEDULE_NOT_FOUND");
    assert_eq!(send(&as_alice, "DELETE", "/rest/tenant/schedules/mine", None).status, 200);
}

#[test]
fn the_schedule_cli_works_beside_the_server() {
    let app = setup().start();
    let log = tempfile::NamedTempFile::new().unwrap();
    let path = log.path().to_string_lossy().into_owned();
    let body = json!({"log": path}).to_string();
    let out = app.cli(&[
        "schedule",
        "add",
        "nightly",
        "--cron",
        "0 3 * * *",
        "--timezone",
        "Europe/Paris",
        "--path",
        "/rest/services/flaky/tally/",
        "--method",
        "POST",
        "--body",
        &body,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = app.admin("GET", "/rest/admin/schedules/nightly", None).json();
    assert_eq!(
        (shown["cron"].clone(), shown["timezone"].clone()),
        (json!("0 3 * * *"), json!("Europe/Paris"))
    );
    let table = String::from_utf8(app.cli(&["schedule", "list"]).stdout).unwrap();
    assert!(
        table.starts_with("NAME ") && table.contains("nightly") && table.contains("0 3 * * *"),
        "{table}"
    );
    let listed: Value = serde_json::from_slice(&app.cli(&["schedule", "list", "--json"]).stdout).unwrap();
    assert_eq!(listed["schedules"][0]["name"], "nightly");
    assert!(app.cli(&["schedule", "pause", "nightly"]).status.success());
    assert_eq!(app.admin("GET", "/rest/admin/schedules/nightly", None).json()["paused"], true);
    assert!(app.cli(&["schedule", "resume", "nightly"]).status.success());
    assert_eq!(app.admin("GET", "/rest/admin/schedules/nightly", None).json()["paused"], false);
    let out = app.cli(&[
        "schedule",
        "add",
        "broken",
        "--cron",
        "every day",
        "--path",
        "flaky/tally/",
        "--method",
        "POST",
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("fields"), "{said}");
    assert!(app.cli(&["schedule", "remove", "nightly"]).status.success());
    app.admin("GET", "/rest/admin/schedules/nightly", None)
        .error(404, "SCHEDULE_NOT_FOUND");
    let out = app.cli(&["schedule", "remove", "nightly"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no schedule"),
        "{out:?}"
    );
}

/// Two replicas on one MongoDB: a schedule firing every second for 20 s runs once per tick,
/// none doubled, none missed; both replicas restarted keep the schedule and a queued job.
#[test]
fn two_replicas_fire_each_tick_once_and_keep_schedules_across_a_restart() {
    let server = MongoServer::start();
    let on = || {
        setup()
            .env("MONGODB_URI", &server.uri())
            .env("MONGODB_DATABASE", "schedules_e2e")
            .env("JOBS_POLL_MS", "500")
    };
    let (mut a, mut b) = (on().start(), on().start());
    // One admin token for all four servers: each code is single-use across the shared store.
    let bearer = format!("Bearer {}", a.admin_token());
    let admin = |app: &App, method: &str, path: &str| app.with_headers(method, path, &[("Authorization", &bearer)], None);
    let jobs_of = |app: &App, name: &str| {
        let listed = admin(app, "GET", &format!("/rest/admin/jobs?schedule={name}&limit=100")).json();
        listed["jobs"].as_array().cloned().unwrap_or_default()
    };
    let log = tempfile::NamedTempFile::new().unwrap();
    let path = log.path().to_string_lossy().into_owned();
    let created = a.admin("POST", "/rest/admin/schedules", Some(&every_second("pulse", &path)));
    assert_eq!(created.status, 201, "{}", created.text());
    std::thread::sleep(Duration::from_secs(20));
    let jobs = jobs_of(&b, "pulse");
    let fired = ticks(&jobs);
    assert!(fired.len() >= 19, "20 s of ticks, got {}: {fired:?}", fired.len());
    assert!(fired.windows(2).all(|w| w[1] - w[0] == 1000), "a tick was missed: {fired:?}");
    // Every job ran once (the tally logs each execution's job id).
    let settled = wait_for(Duration::from_secs(10), || {
        jobs_of(&a, "pulse")
            .iter()
            .all(|j| j["state"] == "succeeded" || j["state"] == "queued" || j["state"] == "running")
    });
    assert!(settled.is_some());
    std::thread::sleep(Duration::from_secs(1));
    let ran: Vec<String> = std::fs::read_to_string(log.path()).unwrap().lines().map(str::to_owned).collect();
    let distinct: BTreeSet<&String> = ran.iter().collect();
    assert_eq!(distinct.len(), ran.len(), "a tick's job ran twice");

    // Both replicas stop; a job queued for later and the schedule outlive them.
    let later = a.with_headers(
        "POST",
        "/rest/services/flaky/tally/",
        &[("Prefer", "respond-async"), ("X-Plughost-Delay-Secs", "3")],
        Some(&json!({"log": path})),
    );
    assert_eq!(later.status, 202, "{}", later.text());
    let later = later.json()["id"].as_str().unwrap().to_owned();
    admin(&a, "POST", "/rest/admin/schedules/pulse/pause");
    for app in [&mut a, &mut b] {
        let status = app.terminate(Duration::from_secs(15)).expect("stops within its grace");
        assert!(status.success(), "{status:?}");
    }
    let (a, b) = (on().start(), on().start());
    let kept = admin(&b, "GET", "/rest/admin/schedules/pulse").json();
    assert_eq!((kept["paused"].clone(), kept["cron"].clone()), (json!(true), json!("* * * * * *")));
    let done = wait_for(Duration::from_secs(20), || {
        a.get(&format!("/rest/jobs/{later}")).json()["state"] == "succeeded"
    });
    assert!(
        done.is_some(),
        "the queued job did not survive: {}",
        a.get(&format!("/rest/jobs/{later}")).text()
    );
    let before = ticks(&jobs_of(&a, "pulse")).len();
    admin(&a, "POST", "/rest/admin/schedules/pulse/resume");
    let resumed = wait_for(Duration::from_secs(10), || ticks(&jobs_of(&b, "pulse")).len() >= before + 3);
    assert!(resumed.is_some(), "the schedule did not fire after the restart");
}
