//! Hostile tenants' jobs: an asynchronous call runs through the same sandbox as a synchronous
//! one. The `rogue` fixture, queued as jobs by an attacking tenant, with the server as root and
//! as an unprivileged uid: it reads nothing of the host's, reaches nothing, signals nothing; a
//! job that spins is cut at the tenant's own call deadline (not JOB_TIMEOUT_MS) and one that
//! crashes its worker is retried until dead; the victim tenant and the server serve throughout,
//! and the victim cannot see the attacker's jobs.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{
    isolation::Scene,
    sandbox::Tenant,
    support::{wait_for, App},
};

fn as_tenant(tenant: &Tenant) -> String {
    format!("Bearer {}", tenant.token)
}

/// Queues `path` as `tenant`'s job; waits until it ended; returns its record.
fn job(app: &App, tenant: &Tenant, path: &str) -> Value {
    let auth = as_tenant(tenant);
    let headers = [("Prefer", "respond-async"), ("Authorization", auth.as_str())];
    let queued = app.with_headers("GET", &format!("/rest/services/rogue/{path}"), &headers, None);
    assert_eq!(queued.status, 202, "{path}: {}", queued.text());
    let id = queued.json()["id"].as_str().unwrap().to_owned();
    let mut record = Value::Null;
    let ended = wait_for(Duration::from_secs(60), || {
        record = app
            .with_headers("GET", &format!("/rest/jobs/{id}"), &[("Authorization", auth.as_str())], None)
            .json();
        matches!(record["state"].as_str(), Some("succeeded" | "failed" | "dead"))
    });
    assert!(ended.is_some(), "{path} never ended: {record}");
    record
}

/// The job ran and the operating system refused what it tried.
fn denied(app: &App, tenant: &Tenant, path: &str) -> Value {
    let record = job(app, tenant, path);
    assert_eq!(record["state"], "succeeded", "{path}: {record}");
    let body = record["result"]["body"].clone();
    assert_eq!(body["denied"], true, "{path} was not denied: {body}");
    body
}

fn hostile_jobs(user: Option<u32>) {
    let Scene { app, attacker, victim } = Scene::start(user);
    let limits = app.admin(
        "PUT",
        &format!("/rest/admin/tenants/{}/limits", attacker.uuid),
        Some(&json!({"call_timeout_ms": 1000})),
    );
    assert_eq!(limits.status, 200, "{}", limits.text());
    let root = app.plugins_dir().parent().unwrap().to_path_buf();
    let port = app.url("/").rsplit(':').next().unwrap().trim_end_matches('/').to_owned();

    // Nothing of the host's: its .env, its environment, its port, its process.
    let env_file = root.join(".env");
    assert!(env_file.exists());
    let read = denied(&app, &attacker, &format!("read/?path={}", env_file.display()));
    assert!(!read.to_string().contains("do-not-leak"), "{read}");
    let vars = job(&app, &attacker, "env");
    assert_eq!(vars["result"]["body"]["variables"], json!([]), "{vars}");
    denied(&app, &attacker, &format!("connect/?port={port}"));
    denied(&app, &attacker, &format!("write/?path={}", root.join("planted").display()));
    assert!(!root.join("planted").exists());
    denied(&app, &attacker, "kill_parent");
    denied(&app, &attacker, &format!("prlimit/?pid={}", app.worker_pid()));
    assert_eq!(app.get("/rest/services/hello/greet/").status, 200);

    // A job that spins is cut at the tenant's deadline (1 s), each attempt, then dead: far from
    // JOB_TIMEOUT_MS's 15 minutes. The victim is served meanwhile.
    let started = Instant::now();
    let auth = as_tenant(&attacker);
    let spin = app.with_headers(
        "GET",
        "/rest/services/rogue/spin/",
        &[("Prefer", "respond-async"), ("Authorization", auth.as_str())],
        None,
    );
    assert_eq!(spin.status, 202, "{}", spin.text());
    let spin = spin.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(victim.get(&app, "/rest/services/module2/hello-world2/").status, 200);
    let mut record = Value::Null;
    let dead = wait_for(Duration::from_secs(60), || {
        record = app.admin("GET", &format!("/rest/jobs/{spin}"), None).json();
        record["state"] == "dead"
    });
    assert!(dead.is_some(), "the spinning job did not end: {record}");
    assert_eq!(record["attempts"], 3, "{record}");
    assert!(record["result"]["status"].as_u64().unwrap() >= 500, "{record}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());

    // A job that crashes its worker is retried (a crash may be transient), then dead; the
    // server and the victim go on.
    let crash = job(&app, &attacker, "segfault");
    assert_eq!(
        (crash["state"].clone(), crash["attempts"].clone()),
        (json!("dead"), json!(3)),
        "{crash}"
    );
    assert_eq!(victim.get(&app, "/rest/services/module2/hello-world2/").status, 200);
    assert_eq!(app.get("/rest/services/hello/greet/").status, 200);

    // The victim sees none of the attacker's jobs.
    let seen = app
        .with_headers("GET", "/rest/jobs/", &[("Authorization", &as_tenant(&victim))], None)
        .json();
    assert_eq!(seen["jobs"], json!([]), "{seen}");
    app.with_headers(
        "GET",
        &format!("/rest/jobs/{spin}"),
        &[("Authorization", &as_tenant(&victim))],
        None,
    )
    .error(404, "JOB_NOT_FOUND");
}

#[test]
fn hostile_tenant_jobs_are_confined_with_a_root_host() {
    hostile_jobs(None);
}

#[test]
fn hostile_tenant_jobs_are_confined_with_an_unprivileged_host() {
    hostile_jobs(Some(10001));
}
