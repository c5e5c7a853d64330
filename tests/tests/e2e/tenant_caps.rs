//! Per-tenant totals: modules served, bytes published, responses held for slow clients, and the
//! size of a manifest. One tenant reaching its cap is told so and costs nobody else anything.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use serde_json::Value;

use crate::{
    sandbox::Tenant,
    support::{plugin_file, wait_for, write_by_rename, App, Setup},
};

fn status(app: &App, tenant: &Tenant, file: &str) -> Value {
    let plugins = app.admin("GET", "/rest/admin/plugins", None).json();
    plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == file && f["tenant"] == tenant.uuid.as_str())
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn a_tenant_is_held_to_its_module_cap_and_a_bloated_manifest_is_refused() {
    let app = Setup::default()
        .plugins(&["hello"])
        .env("RESCAN_INTERVAL_MS", "200")
        .env("TENANT_MAX_MODULES", "2")
        .start();
    let greedy = Tenant::add(&app, "greedy");
    let other = Tenant::add(&app, "other");
    greedy.install(
        &app,
        "librogue.so",
        &std::fs::read(plugin_file("rogue")).unwrap(),
        "/rest/services/rogue/hello/",
    );
    greedy.install(
        &app,
        "libmodule2.so",
        &std::fs::read(plugin_file("module2")).unwrap(),
        "/rest/services/module2/hello-world2/",
    );
    write_by_rename(
        &greedy.folder(&app),
        "libproduct_v1.so",
        &std::fs::read(plugin_file("product_v1")).unwrap(),
    );
    let refused = wait_for(Duration::from_secs(20), || {
        status(&app, &greedy, "libproduct_v1.so")["error"]
            .as_str()
            .is_some_and(|e| e.contains("TENANT_MAX_MODULES"))
    });
    assert!(refused.is_some(), "{}", status(&app, &greedy, "libproduct_v1.so"));
    // Another tenant is not held to the first one's count.
    other.install(
        &app,
        "libproduct_v1.so",
        &std::fs::read(plugin_file("product_v1")).unwrap(),
        "/rest/services/product_v1/api-name/",
    );
    // One of the greedy tenant's modules goes: the waiting one is served... under the name the
    // other tenant now holds, so it is refused for that instead.
    std::fs::remove_file(greedy.folder(&app).join("libmodule2.so")).unwrap();
    let retried = wait_for(Duration::from_secs(20), || {
        status(&app, &greedy, "libproduct_v1.so")["error"]
            .as_str()
            .is_some_and(|e| e.contains("collides"))
    });
    assert!(retried.is_some(), "{}", status(&app, &greedy, "libproduct_v1.so"));

    // A manifest of 300 functions with 4 KiB docs is refused with the reason.
    write_by_rename(
        &other.folder(&app),
        "libbloated.so",
        &std::fs::read(plugin_file("bloated")).unwrap(),
    );
    let bloated = wait_for(Duration::from_secs(20), || {
        status(&app, &other, "libbloated.so")["error"]
            .as_str()
            .is_some_and(|e| e.contains("at most 256"))
    });
    assert!(bloated.is_some(), "{}", status(&app, &other, "libbloated.so"));
    let openapi = app.admin("GET", "/openapi.json", None).text();
    assert!(openapi.len() < 1 << 20, "the admin's OpenAPI document is {} bytes", openapi.len());
}

#[test]
fn a_tenant_cannot_publish_past_its_storage() {
    let rogue = std::fs::read(plugin_file("rogue")).unwrap();
    let mib = (rogue.len() >> 20) as u64 + 1;
    let app = Setup::default()
        .plugins(&["hello"])
        .env("TENANT_MAX_STORED_MB", &(mib * 3).to_string())
        .env("TENANT_MAX_MODULES", "2")
        .start();
    let tenant = Tenant::add(&app, "hoarder");
    let put = |name: &str, bytes: &[u8]| {
        App::client()
            .put(app.url(&format!("/rest/tenant/plugins/{name}")))
            .bearer_auth(&tenant.token)
            .body(bytes.to_vec())
            .send()
            .unwrap()
    };
    let first = put("rogue", &rogue);
    assert_eq!(first.status().as_u16(), 201, "{}", first.text().unwrap());
    // The same name again replaces it: still within the cap.
    assert_eq!(put("rogue", &rogue).status().as_u16(), 201);
    // Bytes past the storage cap: 413.
    let mut big = rogue.clone();
    big.extend(std::iter::repeat_n(0u8, (mib as usize * 2) << 20));
    let second = put("rogue-big", &big);
    assert_eq!(second.status().as_u16(), 413);
    let body: Value = second.json().unwrap();
    assert_eq!(body["error"], "TENANT_STORAGE_FULL", "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("TENANT_MAX_STORED_MB"));
    // Plugins past the module cap: 429.
    assert_eq!(put("rogue-two", &rogue).status().as_u16(), 201);
    let third = put("rogue-three", &rogue);
    assert_eq!(third.status().as_u16(), 429);
    let body: Value = third.json().unwrap();
    assert_eq!(body["error"], "TOO_MANY_PLUGINS", "{body}");
}

#[test]
fn a_tenants_responses_held_for_slow_clients_are_bounded() {
    let app = Setup::default()
        .plugins(&["hello"])
        .env("TENANT_MAX_BUFFERED_MB", "1")
        .env("MAX_RESPONSE_BYTES", "67108864")
        .env("SANDBOX_MAX_CONCURRENCY", "8")
        .start();
    let tenant = Tenant::add(&app, "slow-reader");
    tenant.install(
        &app,
        "librogue.so",
        &std::fs::read(plugin_file("rogue")).unwrap(),
        "/rest/services/rogue/hello/",
    );
    // A client asks for 32 MiB and does not read it: the response stays in the server.
    let mut slow = TcpStream::connect(app.addr).unwrap();
    write!(
        slow,
        "GET /rest/services/rogue/huge/?mib=32 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        tenant.token
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let refused = tenant.get(&app, "/rest/services/rogue/huge/?mib=1");
    refused.error(503, "TENANT_BUFFER_FULL");
    assert!(refused.header("retry-after").is_some());
    // Other tenants' and the admin's plugins do not notice.
    assert_eq!(app.get("/rest/services/hello/greet/").status, 200);
    // Once the slow client has read its answer, the tenant is served again.
    slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    while total < 32 << 20 {
        match slow.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(total >= 32 << 20, "read {total} bytes");
    let served = wait_for(Duration::from_secs(5), || {
        tenant.get(&app, "/rest/services/rogue/huge/?mib=1").status == 200
    });
    assert!(served.is_some(), "{}", app.logs());
}
