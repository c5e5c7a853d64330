//! What operators and tool chains read: Prometheus metrics, JSON access logs, and the OpenAPI
//! document (validated against the OpenAPI 3.1 schema by `openapi-spec-validator` from PyPI).

use std::{process::Command, time::Duration};

use serde_json::{json, Value};

use crate::{
    auth::{rest_tenant, token},
    support::{code_at, ensure_python_module, now, plugin_file, wait_for, write_by_rename, App, Setup, EXAMPLES},
};

/// The value of the series whose line starts with `prefix` (name and labels), if present.
fn series(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn scrape(app: &App) -> String {
    let reply = app.admin("GET", "/metrics", None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.header("content-type").unwrap().starts_with("application/openmetrics-text"));
    reply.text()
}

#[test]
fn metrics_move_with_traffic_plugins_and_auth_failures() {
    let app = Setup::default().plugins(&["hello", "secure"]).start();
    let greet = r#"plughost_http_requests_total{route="/rest/services/{module}/{function}/",module="hello",function="greet",method="GET",status="200"}"#;
    let before = scrape(&app);
    assert_eq!(series(&before, greet), None);
    assert_eq!(series(&before, "plughost_plugins_loaded "), Some(2.0));
    assert_eq!(series(&before, "plughost_plugin_loads_total "), Some(2.0));

    for _ in 0..3 {
        assert_eq!(app.get("/rest/services/hello/greet/?name=ops").status, 200);
    }
    // Refused credentials, by reason.
    assert_eq!(token(&app, crate::support::ADMIN_UUID, "000000").status, 401);
    assert_eq!(app.get("/rest/services/secure/whoami/").status, 401);
    // Paths that match nothing must not become labels.
    for i in 0..5 {
        assert_eq!(app.get(&format!("/rest/services/no-such-thing-{i}/")).status, 404);
        assert_eq!(app.get(&format!("/elsewhere-{i}")).status, 404);
    }
    // A plugin load, a replacement and a failed load.
    write_by_rename(&app.plugins_dir(), "libmodule2.so", &std::fs::read(plugin_file("module2")).unwrap());
    write_by_rename(
        &app.plugins_dir(),
        "libhello.so",
        &std::fs::read(plugin_file("product_v1")).unwrap(),
    );
    write_by_rename(&app.plugins_dir(), "libbroken.so", b"\x7fELF not really");
    wait_for(Duration::from_secs(20), || {
        let text = scrape(&app);
        series(&text, "plughost_plugin_load_failures_total ") == Some(1.0) && series(&text, "plughost_plugin_reloads_total ") == Some(1.0)
    })
    .expect("the plugin counters moved");

    let after = scrape(&app);
    assert_eq!(series(&after, greet), Some(3.0), "{after}");
    assert_eq!(series(&after, "plughost_plugin_loads_total "), Some(3.0));
    assert_eq!(series(&after, "plughost_plugins_loaded "), Some(3.0));
    assert_eq!(
        series(&after, "plughost_plugin_images_leaked "),
        Some(1.0),
        "the old hello image stays mapped"
    );
    assert!(series(&after, "plughost_plugin_images_leaked_bytes ").unwrap() > 100_000.0);
    assert!(series(&after, r#"plughost_auth_failures_total{reason="totp_invalid"}"#).unwrap() >= 1.0);
    assert!(series(&after, r#"plughost_auth_failures_total{reason="missing"}"#).unwrap() >= 1.0);
    assert!(
        series(
            &after,
            r#"plughost_http_request_duration_seconds_count{route="/rest/services/{module}/{function}/",module="hello",function="greet"}"#
        ) == Some(3.0)
    );
    assert!(
        series(&after, "plughost_http_requests_in_flight ").unwrap() >= 1.0,
        "the scrape itself is in flight"
    );
    assert!(
        series(
            &after,
            r#"plughost_store_operation_duration_seconds_count{store="sqlite",operation="get",outcome="ok"}"#
        )
        .unwrap()
            >= 1.0,
        "{after}"
    );
    assert!(
        !after.contains("no-such-thing") && !after.contains("elsewhere"),
        "raw paths leaked into labels"
    );
    assert!(after.contains(r#"route="unmatched""#));
    assert!(!after.contains(crate::support::ADMIN_UUID), "caller UUIDs are never labels");

    // Only the admin may scrape on the main port.
    app.get("/metrics").error(401, "AUTHORIZATION_HEADER_MISSING");
    let (tenant, secret) = rest_tenant(&app, "ops");
    let tenant_token = token(&app, &tenant, &code_at(&secret, now())).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let as_tenant = crate::auth::bearer(&app, "/metrics", &tenant_token);
    as_tenant.error(403, "FORBIDDEN");
}

#[test]
fn metrics_bind_serves_metrics_alone_without_credentials() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let app = Setup::default()
        .plugins(&["hello"])
        .env("METRICS_BIND", &format!("127.0.0.1:{port}"))
        .start();
    assert_eq!(app.get("/rest/services/greet/").status, 200);
    let client = App::client();
    let url = format!("http://127.0.0.1:{port}");
    let scraped = wait_for(Duration::from_secs(10), || {
        client.get(format!("{url}/metrics")).send().is_ok_and(|r| r.status() == 200)
    });
    assert!(scraped.is_some(), "no answer on METRICS_BIND");
    let text = client.get(format!("{url}/metrics")).send().unwrap().text().unwrap();
    assert!(text.contains(r#"function="greet""#), "{text}");
    assert!(text.ends_with("# EOF\n"));
    let other = client.get(format!("{url}/rest/services/greet/")).send().unwrap();
    assert_eq!(other.status(), 404, "the metrics address serves nothing else");
    let post = client.post(format!("{url}/metrics")).send().unwrap();
    assert_eq!(post.status(), 405);
}

#[test]
fn metrics_off_and_bad_metrics_settings() {
    let app = Setup::default().plugins(&["hello"]).env("METRICS", "off").start();
    app.admin("GET", "/metrics", None).error(404, "METRICS_OFF");

    let (status, stderr) = Setup::default().env("METRICS", "sometimes").start_and_fail();
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("METRICS=sometimes is not a metrics mode"), "{stderr}");
    let (status, stderr) = Setup::default()
        .env("METRICS", "off")
        .env("METRICS_BIND", "127.0.0.1:9")
        .start_and_fail();
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("METRICS=off"), "{stderr}");
    let (status, stderr) = Setup::default().env("METRICS_BIND", "localhost-ish").start_and_fail();
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("METRICS_BIND=localhost-ish is not an address"), "{stderr}");
}

#[test]
fn a_json_access_log_line_carries_the_request_id_of_the_response() {
    let app = Setup::default().plugins(&["hello", "secure"]).env("LOG_FORMAT", "json").start();
    let reply = app.get("/rest/services/hello/greet/?name=log");
    let id = reply.header("x-request-id").expect("x-request-id").to_owned();
    let chosen = app.with_headers("GET", "/rest/services/secure/whoami/", &[("X-Request-Id", "trace-me-42")], None);
    assert_eq!(chosen.header("x-request-id"), Some("trace-me-42"));

    let find = |id: &str| -> Option<Value> {
        app.logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|v| v["target"] == "plughost::access" && v["request_id"] == id)
    };
    wait_for(Duration::from_secs(10), || find(&id).is_some() && find("trace-me-42").is_some()).expect("access lines logged");
    let line = find(&id).unwrap();
    assert_eq!(line["method"], "GET");
    assert_eq!(line["route"], "/rest/services/{module}/{function}/");
    assert_eq!(line["module"], "hello");
    assert_eq!(line["function"], "greet");
    assert_eq!(line["caller"], "none");
    assert_eq!(line["status"], 200);
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(line["level"], "INFO");
    // The plugin's own line (hello logs each greeting) carries the request id and its module.
    let plugin_line = app
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|v| v["target"] == "plugin" && v["request_id"] == id.as_str())
        .expect("the plugin's log line, with the request id");
    assert_eq!(plugin_line["module"], "hello");
    let refused = find("trace-me-42").unwrap();
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["function"], "whoami");
    // The error line of that request carries the same id.
    let error_line = app
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|v| v["error"] == "AUTHORIZATION_HEADER_MISSING")
        .expect("an error line");
    assert_eq!(error_line["request_id"], "trace-me-42");
    assert_eq!(error_line["error_id"], chosen.json()["error_id"]);
}

/// Validates `document` with `openapi-spec-validator` (installed from PyPI if missing).
fn assert_valid_openapi(document: &Value) {
    ensure_python_module("openapi_spec_validator", "openapi-spec-validator");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, document.to_string()).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys; from openapi_spec_validator import validate; from openapi_spec_validator.validation import OpenAPIV31SpecValidator; validate(json.load(open(sys.argv[1])), cls=OpenAPIV31SpecValidator); print('valid')",
        ])
        .arg(&file)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the document is not valid OpenAPI 3.1:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn openapi_describes_what_the_caller_may_call_and_follows_hot_swaps() {
    let mut names: Vec<&str> = EXAMPLES.to_vec();
    names.push("secure");
    let app = Setup::default().plugins(&names).start();
    let public = app.get("/openapi.json").json();
    assert_eq!(public["openapi"], "3.1.0");
    assert_valid_openapi(&public);
    let paths = public["paths"].as_object().unwrap();
    let greet = &paths["/rest/services/hello/greet/"]["get"];
    assert_eq!(greet["parameters"][0]["name"], "name");
    assert_eq!(greet["parameters"][1]["schema"]["type"], "integer");
    assert!(paths.contains_key("/rest/services/greet/"), "unique names get an unqualified path");
    assert!(paths.contains_key("/rest/services/secure/status/"));
    assert!(
        !paths.contains_key("/rest/services/secure/whoami/"),
        "tenant functions are hidden from anonymous callers"
    );
    assert!(!paths.contains_key("/metrics") && !paths.contains_key("/rest/admin/tenants"));
    for builtin in ["/ping", "/version", "/health", "/rest/auth/token", "/rest/services/__dir__/"] {
        assert!(paths.contains_key(builtin), "{builtin} missing");
    }
    assert!(public["components"]["schemas"]["Error"]["required"]
        .to_string()
        .contains("error_id"));
    assert!(public["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer");
    // A name exported by two modules has no unqualified path.
    assert!(paths.contains_key("/rest/services/product_v1/api-name/") && !paths.contains_key("/rest/services/api-name/"));

    let admin = app.admin("GET", "/openapi.json", None).json();
    assert_valid_openapi(&admin);
    let admin_paths = admin["paths"].as_object().unwrap();
    let whoami = &admin_paths["/rest/services/secure/whoami/"]["get"];
    assert_eq!(whoami["security"], json!([{"bearer": []}, {"uuid": [], "totp": []}]));
    assert!(admin_paths.contains_key("/rest/services/secure/admin-stats/"));
    assert!(admin_paths.contains_key("/metrics") && admin_paths.contains_key("/rest/admin/tenants/{uuid}"));

    // Hot swap: remove product_v2 (api-name becomes unique), add nothing else.
    std::fs::remove_file(app.plugins_dir().join("libproduct_v2.so")).unwrap();
    wait_for(Duration::from_secs(20), || {
        app.get("/openapi.json").json()["paths"]
            .as_object()
            .unwrap()
            .contains_key("/rest/services/api-name/")
    })
    .expect("the document follows the removal");
    let after = app.get("/openapi.json").json();
    assert!(!after["paths"]
        .as_object()
        .unwrap()
        .contains_key("/rest/services/product_v2/api-name/"));
    assert_valid_openapi(&after);
}
