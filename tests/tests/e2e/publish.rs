//! Plugins published through the store: checked before anything is stored, synced into every
//! replica's plugins folder and served there, removed when unpublished; two replicas sharing
//! MongoDB (nx-27017) serve what was published on either, even under load.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{
    mongo_server::MongoServer,
    support::{plugin_file, wait_for, App, Reply, Setup},
};

fn put(app: &App, path: &str, token: Option<&str>, bytes: Vec<u8>) -> Reply {
    let mut request = App::client().put(app.url(path)).body(bytes);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Reply::from(request.send().expect("request"))
}

fn published(app: &App) -> Vec<Value> {
    app.admin("GET", "/rest/admin/published", None).json()["plugins"]
        .as_array()
        .unwrap()
        .clone()
}

/// A tenant and its bearer token.
fn tenant(app: &App, name: &str) -> (String, String) {
    let tenant = crate::sandbox::Tenant::add(app, name);
    (tenant.uuid, tenant.token)
}

fn serves(app: &App, path: &str, token: Option<&str>) -> bool {
    let headers: Vec<(&str, String)> = token.map(|t| ("authorization", format!("Bearer {t}"))).into_iter().collect();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    app.with_headers("GET", path, &headers, None).status == 200
}

#[test]
fn published_plugins_are_checked_served_and_unpublished() {
    let hello = std::fs::read(plugin_file("hello")).unwrap();
    let rogue = std::fs::read(plugin_file("rogue")).unwrap();
    let limit = hello.len().max(rogue.len()) + 64 * 1024;
    let app = Setup::default()
        .env("PUBLISH_SYNC_MS", "200")
        .env("RESCAN_INTERVAL_MS", "200")
        .env("PUBLISH_MAX_BYTES", &limit.to_string())
        .start();
    let admin = app.admin_token();

    // Refused before anything is stored: credentials, names, size, and files that are no plugin.
    // (Refusals that come before the body is read get a small one: the server does not read on.)
    put(&app, "/rest/admin/plugins/hello", None, b"x".to_vec()).error(401, "AUTHORIZATION_HEADER_MISSING");
    put(&app, "/rest/admin/plugins/Hello.so", Some(&admin), b"x".to_vec()).error(422, "INVALID_PLUGIN");
    // Refused on its Content-Length, before the body is read.
    let oversized = format!(
        "PUT /rest/admin/plugins/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        limit + 1
    );
    let too_large = app.raw(oversized.as_bytes()).error(413, "PAYLOAD_TOO_LARGE");
    assert!(
        too_large["error_description"].as_str().unwrap().contains("PUBLISH_MAX_BYTES"),
        "{too_large}"
    );
    put(&app, "/rest/admin/plugins/junk", Some(&admin), b"not a shared object".to_vec()).error(422, "PLUGIN_REFUSED");
    put(&app, "/rest/admin/plugins/half", Some(&admin), hello[..hello.len() / 2].to_vec()).error(422, "PLUGIN_REFUSED");
    let wrong = std::fs::read(plugin_file("wrong_abi")).unwrap();
    let refused = put(&app, "/rest/admin/plugins/wrong", Some(&admin), wrong).error(422, "PLUGIN_REFUSED");
    assert!(refused["error_description"].as_str().unwrap().contains("plugin-api"), "{refused}");
    assert!(published(&app).is_empty(), "a refused upload was stored");

    // Published: synced into the folder and served within seconds.
    let started = Instant::now();
    let reply = put(&app, "/rest/admin/plugins/hello", Some(&admin), hello.clone());
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.json()["module"], "hello");
    let served = wait_for(Duration::from_secs(15), || serves(&app, "/rest/services/hello/greet/", None));
    assert!(served.is_some(), "{}", app.logs());
    eprintln!("published → served after {:?}", started.elapsed());
    assert!(app.plugins_dir().join("hello.so").exists());
    assert_eq!(published(&app)[0]["key"], "admin/hello");

    // A file dropped by hand is left alone by sync.
    std::fs::copy(plugin_file("module2"), app.plugins_dir().join("libmodule2.so")).unwrap();
    assert!(wait_for(Duration::from_secs(15), || serves(
        &app,
        "/rest/services/module2/hello-world2/",
        None
    ))
    .is_some());

    // Tenants publish into their own namespace only; their modules run sandboxed.
    let (owner, owner_token) = tenant(&app, "publisher");
    let (other, other_token) = tenant(&app, "bystander");
    // The routes are in each caller's OpenAPI document: the admin's and the tenant's own.
    let paths = |token: &str| {
        let doc = app
            .with_headers("GET", "/openapi.json", &[("authorization", &format!("Bearer {token}"))], None)
            .json();
        doc["paths"].as_object().unwrap().keys().cloned().collect::<Vec<String>>()
    };
    let admin_paths = paths(&admin);
    for path in [
        "/rest/admin/plugins/{name}",
        "/rest/admin/tenants/{uuid}/plugins/{name}",
        "/rest/admin/published",
        "/rest/admin/tenants/{uuid}/limits",
    ] {
        assert!(admin_paths.iter().any(|p| p == path), "{path} not in {admin_paths:?}");
    }
    let tenant_paths = paths(&owner_token);
    assert!(tenant_paths.iter().any(|p| p == "/rest/tenant/plugins/{name}"), "{tenant_paths:?}");
    assert!(!tenant_paths.iter().any(|p| p.starts_with("/rest/admin")), "{tenant_paths:?}");
    put(
        &app,
        &format!("/rest/admin/tenants/{other}/plugins/rogue"),
        Some(&owner_token),
        b"x".to_vec(),
    )
    .error(403, "FORBIDDEN");
    put(&app, "/rest/admin/plugins/rogue", Some(&owner_token), b"x".to_vec()).error(403, "FORBIDDEN");
    let reply = put(&app, "/rest/tenant/plugins/rogue", Some(&owner_token), rogue.clone());
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.json()["tenant"], owner.as_str());
    assert!(wait_for(Duration::from_secs(15), || serves(
        &app,
        "/rest/services/rogue/hello/",
        Some(&owner_token)
    ))
    .is_some());
    assert!(app.plugins_dir().join("tenants").join(&owner).join("rogue.so").exists());
    assert!(!serves(&app, "/rest/services/rogue/hello/", Some(&other_token)));
    let mine = app.with_headers(
        "GET",
        "/rest/tenant/plugins",
        &[("authorization", &format!("Bearer {owner_token}"))],
        None,
    );
    assert_eq!(mine.json()["plugins"].as_array().unwrap().len(), 1);
    let theirs = app.with_headers(
        "GET",
        "/rest/tenant/plugins",
        &[("authorization", &format!("Bearer {other_token}"))],
        None,
    );
    assert_eq!(theirs.json()["plugins"], json!([]));

    // Unpublished: the synced files go, the routes with them; the hand-dropped file stays.
    assert_eq!(app.admin("DELETE", "/rest/admin/plugins/hello", None).status, 200);
    app.admin("DELETE", "/rest/admin/plugins/hello", None)
        .error(404, "PLUGIN_NOT_FOUND");
    let gone = wait_for(Duration::from_secs(15), || !serves(&app, "/rest/services/hello/greet/", None));
    assert!(gone.is_some(), "{}", app.logs());
    assert!(!app.plugins_dir().join("hello.so").exists());
    assert!(serves(&app, "/rest/services/module2/hello-world2/", None));
    let removed = app.with_headers(
        "DELETE",
        "/rest/tenant/plugins/rogue",
        &[("authorization", &format!("Bearer {owner_token}"))],
        None,
    );
    assert_eq!(removed.status, 200, "{}", removed.text());
    assert!(wait_for(Duration::from_secs(15), || !serves(
        &app,
        "/rest/services/rogue/hello/",
        Some(&owner_token)
    ))
    .is_some());
}

#[test]
fn two_replicas_sharing_mongodb_serve_what_either_publishes_even_under_load() {
    let mongo = MongoServer::start();
    let replica = || {
        Setup::default()
            .env("MONGODB_URI", &mongo.uri())
            .env("MONGODB_DATABASE", "published")
            .env("PUBLISH_SYNC_MS", "250")
            .start()
    };
    let (a, b) = (replica(), replica());
    let base = std::fs::read(plugin_file("many")).unwrap();
    let version = |mark: char| {
        let mut bytes = base.clone();
        let at = bytes.windows(6).position(|w| w == b"mark-A").unwrap();
        bytes[at..at + 6].copy_from_slice(format!("mark-{mark}").as_bytes());
        bytes
    };
    let mark = |app: &App| {
        let reply = app.get("/rest/services/many_000/which/");
        (reply.status == 200).then(|| reply.json()["mark"].as_str().unwrap_or_default().to_owned())
    };

    // Published on A: served by both.
    let started = Instant::now();
    assert_eq!(
        put(&a, "/rest/admin/plugins/many", Some(&a.admin_token()), version('A')).status,
        201
    );
    eprintln!("publishing {} bytes took {:?}", base.len(), started.elapsed());
    for app in [&a, &b] {
        let served = wait_for(Duration::from_secs(20), || mark(app).as_deref() == Some("mark-A"));
        assert!(served.is_some(), "{}", app.logs());
    }
    eprintln!("published on A → served by A and B after {:?}", started.elapsed());

    // A new version published on B while both are under load: no request fails.
    let stop = AtomicBool::new(false);
    let (served, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    thread::scope(|scope| {
        for app in [&a, &b] {
            let (stop, served, failed) = (&stop, &served, &failed);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match mark(app) {
                        Some(_) => served.fetch_add(1, Ordering::Relaxed),
                        None => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        let started = Instant::now();
        let reply = put(&b, "/rest/admin/plugins/many", Some(&b.admin_token()), version('B'));
        let both = wait_for(Duration::from_secs(20), || {
            mark(&a).as_deref() == Some("mark-B") && mark(&b).as_deref() == Some("mark-B")
        });
        stop.store(true, Ordering::Relaxed);
        assert_eq!(reply.status, 201, "{}", reply.text());
        assert!(both.is_some(), "the new version did not reach both replicas");
        eprintln!("new version on B → served by both after {:?}", started.elapsed());
    });
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during the swap");
    assert!(served.load(Ordering::Relaxed) > 10);

    // Unpublished on A: gone from both.
    assert_eq!(a.admin("DELETE", "/rest/admin/plugins/many", None).status, 200);
    for app in [&a, &b] {
        assert!(wait_for(Duration::from_secs(20), || mark(app).is_none()).is_some());
    }
}

#[test]
fn sync_survives_the_store_going_away_and_catches_up() {
    let mut mongo = MongoServer::start();
    let app = Setup::default()
        .env("MONGODB_URI", &mongo.uri())
        .env("MONGODB_DATABASE", "outage")
        .env("PUBLISH_SYNC_MS", "250")
        .start();
    let token = app.admin_token();
    assert_eq!(
        put(
            &app,
            "/rest/admin/plugins/hello",
            Some(&token),
            std::fs::read(plugin_file("hello")).unwrap()
        )
        .status,
        201
    );
    assert!(wait_for(Duration::from_secs(20), || serves(&app, "/rest/services/hello/greet/", None)).is_some());
    mongo.stop();
    thread::sleep(Duration::from_secs(2));
    // The store is down: what was synced keeps serving.
    assert!(serves(&app, "/rest/services/hello/greet/", None));
    mongo.resume();
    // Back: a new publication reaches the folder.
    let publish_again = wait_for(Duration::from_secs(30), || {
        put(
            &app,
            "/rest/admin/plugins/module2",
            Some(&token),
            std::fs::read(plugin_file("module2")).unwrap(),
        )
        .status
            == 201
    });
    assert!(publish_again.is_some(), "{}", app.logs());
    assert!(wait_for(Duration::from_secs(20), || serves(
        &app,
        "/rest/services/module2/hello-world2/",
        None
    ))
    .is_some());
    assert!(app.logs().contains("cannot sync published plugins"), "the outage was not logged");
}

/// The replica that takes an upload syncs at once; the others within `PUBLISH_SYNC_MS`.
#[test]
fn the_replica_that_takes_a_publish_serves_it_at_once() {
    let app = Setup::default().env("PUBLISH_SYNC_MS", "600000").start();
    let admin = app.admin_token();
    let started = Instant::now();
    let reply = put(
        &app,
        "/rest/admin/plugins/hello",
        Some(&admin),
        std::fs::read(plugin_file("hello")).unwrap(),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let served = wait_for(Duration::from_secs(10), || serves(&app, "/rest/services/hello/greet/", None));
    assert!(
        served.is_some(),
        "not served without waiting for the 10-minute sync:\n{}",
        app.logs()
    );
    eprintln!("published → served on the same replica after {:?}", started.elapsed());
    assert_eq!(app.admin("DELETE", "/rest/admin/plugins/hello", None).status, 200);
    let gone = wait_for(Duration::from_secs(10), || !serves(&app, "/rest/services/hello/greet/", None));
    assert!(gone.is_some(), "{}", app.logs());
}

#[test]
fn a_tenant_enrolled_on_one_replica_publishes_through_another_at_once() {
    let mongo = MongoServer::start();
    let replica = || {
        Setup::default()
            .env("MONGODB_URI", &mongo.uri())
            .env("MONGODB_DATABASE", "fresh_tenant")
            .env("PUBLISH_SYNC_MS", "250")
            .start()
    };
    let (a, b) = (replica(), replica());
    // Enrolled on A; B has not polled the tenants since, and must ask the store.
    let (uuid, token) = tenant(&a, "Enrolled on A");
    let reply = put(
        &b,
        "/rest/tenant/plugins/rogue",
        Some(&token),
        std::fs::read(plugin_file("rogue")).unwrap(),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.json()["tenant"], uuid.as_str());
    for app in [&a, &b] {
        let served = wait_for(Duration::from_secs(20), || serves(app, "/rest/services/rogue/hello/", Some(&token)));
        assert!(served.is_some(), "{}", app.logs());
    }
}
