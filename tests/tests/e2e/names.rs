//! Names: a tenant cannot capture the admin's URLs, squat the admin's names, or make a name
//! ambiguous for anyone but itself; what a tenant's code receives from the admin and what it may
//! answer with; and what callers learn about modules and functions they may not call.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    sandbox::Tenant,
    support::{plugin_file, wait_for, write_by_rename, App, Setup},
};

fn server(plugins: &[&str]) -> App {
    Setup::default().plugins(plugins).env("RESCAN_INTERVAL_MS", "200").start()
}

/// The admin's status entry of a tenant's file, once `done` holds for it.
fn tenant_file(app: &App, tenant: &Tenant, file: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = wait_for(Duration::from_secs(20), || {
        let plugins = app.admin("GET", "/rest/admin/plugins", None).json();
        last = plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["file"] == file && f["tenant"] == tenant.uuid.as_str())
            .cloned()
            .unwrap_or(Value::Null);
        done(&last)
    });
    assert!(found.is_some(), "{file}: {last}\n{}", app.logs());
    last
}

#[test]
fn a_tenant_module_named_like_an_admins_function_cannot_capture_its_url() {
    let app = server(&["module1"]);
    let tenant = Tenant::add(&app, "squatter");
    write_by_rename(
        &tenant.folder(&app),
        "libsquatter.so",
        &std::fs::read(plugin_file("squatter")).unwrap(),
    );
    let status = tenant_file(&app, &tenant, "libsquatter.so", |f| f["state"] == "failed");
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("'sample-one' is the name of one of its functions"), "{error}");
    // The admin's own call reaches the admin's function, with its body and identity.
    let reply = app.admin("POST", "/rest/services/sample-one/42/", Some(&json!({"a": 1})));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["response"], "sample-one", "{}", reply.text());
    assert!(!reply.text().contains("captured"));
}

#[test]
fn unqualified_names_are_unique_per_caller_and_the_admins_files_win() {
    let app = server(&["product_v2", "secure"]);
    let owner = Tenant::add(&app, "owner");
    let other = Tenant::add(&app, "other");
    // The tenant's product_v1 exports api-name, as the admin's product_v2 does.
    owner.install(
        &app,
        "libproduct_v1.so",
        &std::fs::read(plugin_file("product_v1")).unwrap(),
        "/rest/services/product_v1/api-name/",
    );
    // Nobody but the owner (and the admin, who may call both) sees a second api-name.
    assert_eq!(app.get("/rest/services/api-name/").status, 200);
    assert_eq!(other.get(&app, "/rest/services/api-name/").status, 200);
    let conflict = owner.get(&app, "/rest/services/api-name/").error(409, "AMBIGUOUS_FUNCTION");
    assert!(conflict["error_description"]
        .as_str()
        .unwrap()
        .contains("/rest/services/product_v1/api-name/"));
    let conflict = app.admin("GET", "/rest/services/api-name/", None).error(409, "AMBIGUOUS_FUNCTION");
    assert!(conflict["error_description"].as_str().unwrap().contains("product_v1"));
    // An anonymous caller's 409s never name a tenant's module: there is none for it.
    assert!(!app.get("/rest/services/api-name/").text().contains("product_v1"));
    // OpenAPI and __dir__ agree: the unqualified path is the other tenant's, not the owner's.
    let openapi = other.get(&app, "/openapi.json").json();
    assert!(openapi["paths"]["/rest/services/api-name/"].is_object());
    let dir = owner.get(&app, "/rest/services/product_v1/__dir__/").json();
    assert_eq!(dir["functions"][0]["unqualified_path"], Value::Null, "{dir}");

    // The admin deploys a product_v1 of their own: the admin's file wins at once, the tenant's
    // is unrouted with a status that says so.
    write_by_rename(
        &app.plugins_dir(),
        "libproduct_v1.so",
        &std::fs::read(plugin_file("product_v1")).unwrap(),
    );
    let status = tenant_file(&app, &owner, "libproduct_v1.so", |f| f["state"] == "unrouted");
    assert!(status["error"].as_str().unwrap().contains("the admin's module"), "{status}");
    let admins = |app: &App| app.get("/rest/services/product_v1/__dir__/").json();
    assert_eq!(admins(&app)["owner"], "admin");
    assert_eq!(owner.get(&app, "/rest/services/product_v1/__dir__/").json()["owner"], "admin");
    // After a restart of the server process, still the admin's.
    let server = app.worker_pid();
    let _ = std::process::Command::new("kill").args(["-KILL", &server.to_string()]).status();
    let back = wait_for(Duration::from_secs(30), || {
        app.get("/rest/services/product_v1/__dir__/").status == 200 && app.worker_pid() != server
    });
    assert!(back.is_some(), "{}", app.logs());
    assert_eq!(admins(&app)["owner"], "admin");
    tenant_file(&app, &owner, "libproduct_v1.so", |f| f["state"] != "loaded");
    // The admin's file goes: the tenant's module is served again.
    std::fs::remove_file(app.plugins_dir().join("libproduct_v1.so")).unwrap();
    tenant_file(&app, &owner, "libproduct_v1.so", |f| f["state"] == "loaded");
    assert_eq!(owner.get(&app, "/rest/services/product_v1/__dir__/").json()["owner"], "tenant");
}

#[test]
fn a_tenants_code_gets_no_admin_identity_and_sets_no_host_headers() {
    let app = server(&["hello"]);
    let tenant = Tenant::add(&app, "headers");
    tenant.install(
        &app,
        "libsquatter.so",
        &std::fs::read(plugin_file("squatter")).unwrap(),
        "/rest/services/sample-one/42/",
    );
    let token = app.admin_token();
    let reply = app.with_headers(
        "GET",
        "/rest/services/sample-one/42/",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("cookie", "admin_session=secret"),
            ("proxy-authorization", "Basic c2VjcmV0"),
        ],
        None,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = reply.json();
    let headers = &seen["headers"];
    assert_eq!(headers["x-plughost-caller-kind"], "admin", "{seen}");
    assert_eq!(headers["x-plughost-caller-uuid"], "", "the admin's UUID reached a tenant: {seen}");
    for header in ["cookie", "proxy-authorization", "authorization"] {
        assert!(headers[header].is_null(), "{header} reached a tenant's code: {seen}");
    }
    assert!(!reply.text().contains(crate::support::ADMIN_UUID));
    // Its own caller is told to it in full.
    let own = tenant.get(&app, "/rest/services/sample-one/42/").json();
    assert_eq!(own["headers"]["x-plughost-caller-uuid"], tenant.uuid.as_str());

    let reply = tenant.get(&app, "/rest/services/sample-one/headers/");
    assert_eq!(reply.status, 200, "{}", reply.text());
    for header in [
        "set-cookie",
        "strict-transport-security",
        "www-authenticate",
        "access-control-allow-origin",
    ] {
        assert!(reply.header(header).is_none(), "a tenant's function set {header}");
    }
    assert_eq!(reply.header("x-tenant-header"), Some("kept"));
    let padding = (0..200).filter(|n| reply.header(&format!("x-pad-{n}")).is_some()).count();
    assert!(padding < 64, "{padding} padding headers passed");
}

#[test]
fn callers_learn_nothing_of_what_they_may_not_call() {
    let app = server(&["secure", "hello"]);
    let tenant = Tenant::add(&app, "hidden");
    tenant.install(
        &app,
        "librogue.so",
        &std::fs::read(plugin_file("rogue")).unwrap(),
        "/rest/services/rogue/hello/",
    );
    // A tenant's function and a function that does not exist look alike to anyone else.
    let existing = app.get("/rest/services/rogue/hello/");
    let missing = app.get("/rest/services/rogue/nothing-here/");
    assert_eq!((existing.status, missing.status), (404, 404));
    assert_eq!(
        existing.json()["error_description"],
        missing.json()["error_description"],
        "an existing tenant function answers otherwise than a missing one"
    );
    // A 404 in an admin's module names only the functions this caller may call.
    let unknown = app.get("/rest/services/secure/nothing/").error(404, "FUNCTION_NOT_FOUND");
    let text = unknown["error_description"].as_str().unwrap();
    assert!(
        text.contains("status") && !text.contains("admin-stats") && !text.contains("whoami"),
        "{text}"
    );
    // Methods are told only to who may call: an anonymous wrong method on a tenant-only function
    // is a 401, with no Allow header.
    let reply = app.send("DELETE", "/rest/services/secure/admin-stats/", None);
    reply.error(401, "AUTHORIZATION_HEADER_MISSING");
    assert!(reply.header("allow").is_none());
    // /health: status and version for everyone; the detail for the admin.
    let health = app.get("/health").json();
    let keys: Vec<&String> = health.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["status", "version"], "{health}");
    assert!(!app.get("/health").text().contains(&tenant.uuid));
    assert!(app.admin("GET", "/health", None).text().contains(&tenant.uuid));
}
