//! Identity on MongoDB (nx-27017): two plughost processes sharing one store agree on used codes
//! and disabled tenants, and an unreachable store fails closed and recovers by itself.

use std::time::Duration;

use serde_json::json;

use crate::{
    auth::{bearer, rest_tenant, settle_step, token, with_code},
    mongo_server::MongoServer,
    support::{code_at, now, wait_for, Setup},
};

fn on(server: &MongoServer, database: &str) -> Setup {
    Setup::default()
        .plugins(&["secure"])
        .env("MONGODB_URI", &server.uri())
        .env("MONGODB_DATABASE", database)
}

#[test]
fn two_processes_sharing_mongodb_agree_on_codes_and_disabled_tenants() {
    settle_step();
    let server = MongoServer::start();
    let a = on(&server, "shared").start();
    let b = on(&server, "shared").start();
    let (uuid, secret) = rest_tenant(&a, "shared tenant");

    let code = code_at(&secret, now());
    assert_eq!(with_code(&a, "/rest/services/whoami/", &uuid, &code).status, 200);
    with_code(&b, "/rest/services/whoami/", &uuid, &code).error(401, "TOTP_REPLAYED");

    let tok = token(&b, &uuid, &code_at(&secret, now() + 30)).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        bearer(&a, "/rest/services/whoami/", &tok).json(),
        json!({"kind": "tenant", "uuid": uuid}),
        "a token from one process works on the other"
    );

    assert_eq!(a.admin("POST", &format!("/rest/admin/tenants/{uuid}/disable"), None).status, 200);
    let refused = wait_for(Duration::from_secs(5), || bearer(&b, "/rest/services/whoami/", &tok).status != 200)
        .expect("the other process refuses within seconds");
    eprintln!("disabled on A, refused on B after {refused:?}");
    with_code(&b, "/rest/services/whoami/", &uuid, &code_at(&secret, now() - 30)).error(403, "FORBIDDEN");
    let listed = b.admin("GET", "/rest/admin/tenants", None).json();
    assert_eq!(listed["tenants"][0]["status"], "disabled");
    assert_eq!(b.admin("GET", "/health", None).json()["store"]["kind"], "mongodb");
}

#[test]
fn an_unreachable_store_fails_closed_and_recovers() {
    settle_step();
    let mut server = MongoServer::start();
    let app = on(&server, "outage").start();
    let (uuid, secret) = rest_tenant(&app, "patient");
    let tok = token(&app, &uuid, &code_at(&secret, now())).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(bearer(&app, "/rest/services/whoami/", &tok).status, 200);
    assert_eq!(app.get("/health").status, 200);

    server.stop();
    wait_for(Duration::from_secs(10), || {
        bearer(&app, "/rest/services/whoami/", &tok).status == 503
    })
    .expect("authentication fails closed");
    bearer(&app, "/rest/services/whoami/", &tok).error(503, "STORE_UNAVAILABLE");
    with_code(&app, "/rest/services/whoami/", &uuid, &code_at(&secret, now() + 30)).error(503, "STORE_UNAVAILABLE");
    assert_eq!(
        app.get("/rest/services/secure/status/").json(),
        json!({"status": "ok"}),
        "public functions keep working"
    );
    let health = app.get("/health");
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["status"], "degraded");

    server.resume();
    let back = wait_for(Duration::from_secs(20), || {
        bearer(&app, "/rest/services/whoami/", &tok).status == 200
    })
    .expect("service recovers by itself");
    eprintln!("store back; authentication recovered after {back:?}");
    assert_eq!(app.get("/health").status, 200);
}
