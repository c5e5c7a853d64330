//! Browser-facing settings: CORS from `.env`, and stages layering `.env.<stage>` over `.env`.

use serde_json::json;

use crate::support::Setup;

fn preflight(app: &crate::support::App, origin: &str) -> crate::support::Reply {
    app.with_headers(
        "OPTIONS",
        "/rest/services/hello-world/",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization, content-type"),
        ],
        None,
    )
}

#[test]
fn cors_answers_preflights_and_decorates_allowed_origins_only() {
    let app = Setup::default()
        .plugins(&["module1"])
        .env("CORS_ALLOW_ORIGIN", "https://app.example, http://localhost:3000")
        .env("CORS_ALLOW_CREDENTIALS", "true")
        .env("CORS_MAX_AGE", "120")
        .start();
    let ok = preflight(&app, "https://app.example");
    assert_eq!(ok.status, 204);
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(ok.header("access-control-max-age"), Some("120"));
    assert!(ok.header("access-control-allow-methods").unwrap().contains("POST"));
    assert!(ok.header("access-control-allow-headers").unwrap().contains("authorization"));
    assert!(ok.header("vary").unwrap().contains("Origin"));
    assert_eq!(
        ok.headers.iter().filter(|(n, _)| n == "vary").count(),
        1,
        "one Vary on a preflight answer"
    );

    let refused = preflight(&app, "https://evil.example");
    refused.error(403, "CORS_ORIGIN_REFUSED");
    assert!(refused.header("access-control-allow-origin").is_none());

    let simple = app.with_headers("GET", "/rest/services/bar-none/", &[("Origin", "http://localhost:3000")], None);
    assert_eq!(simple.json(), json!("bar-none again"));
    assert_eq!(simple.header("access-control-allow-origin"), Some("http://localhost:3000"));
    assert_eq!(simple.header("access-control-expose-headers"), Some("x-request-id"));
    assert!(simple.header("vary").unwrap().contains("Origin"));
    let other = app.with_headers("GET", "/rest/services/bar-none/", &[("Origin", "https://evil.example")], None);
    assert_eq!(other.status, 200, "served; the browser withholds it");
    assert!(other.header("access-control-allow-origin").is_none());
    // Without CORS headers in the request, OPTIONS still answers Allow.
    assert_eq!(app.send("OPTIONS", "/rest/services/hello-world/", None).status, 204);
}

/// A preflight names the function's own methods and only the requested headers that are
/// allowed, as the Fetch standard's CORS check reads them.
#[test]
fn cors_preflights_name_the_functions_methods_and_the_allowed_requested_headers() {
    let app = Setup::default()
        .plugins(&["module1"])
        .env("CORS_ALLOW_ORIGIN", "https://app.example")
        .start();
    let ask = |path: &str, method: &str, headers: &str| {
        app.with_headers(
            "OPTIONS",
            path,
            &[
                ("Origin", "https://app.example"),
                ("Access-Control-Request-Method", method),
                ("Access-Control-Request-Headers", headers),
            ],
            None,
        )
    };
    let echo = ask("/rest/services/hello-world/", "PUT", "Content-Type, X-Not-Allowed");
    assert_eq!(echo.status, 204);
    assert_eq!(echo.header("access-control-allow-methods"), Some("GET, HEAD, POST, PUT, OPTIONS"));
    assert_eq!(echo.header("access-control-allow-headers"), Some("content-type"));
    // bar-none answers GET only: a preflight for DELETE gets no DELETE.
    let get_only = ask("/rest/services/bar-none/", "DELETE", "authorization");
    assert_eq!(get_only.header("access-control-allow-methods"), Some("GET, HEAD, OPTIONS"));
    assert_eq!(get_only.header("access-control-allow-headers"), Some("authorization"));
    // The token route is POST.
    let token = ask("/rest/auth/token", "POST", "content-type");
    assert_eq!(token.header("access-control-allow-methods"), Some("POST, OPTIONS"));
    // A path no anonymous caller may know of: only the requested method, nothing about the route.
    let unknown = ask("/rest/services/no-such/", "PATCH", "");
    assert_eq!(unknown.header("access-control-allow-methods"), Some("PATCH"));
    assert!(unknown.header("access-control-allow-headers").is_none());
}

#[test]
fn cors_star_with_credentials_is_refused_at_start_up() {
    let (status, stderr) = Setup::default()
        .env("CORS_ALLOW_ORIGIN", "*")
        .env("CORS_ALLOW_CREDENTIALS", "true")
        .start_and_fail();
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("CORS_ALLOW_ORIGIN=* with CORS_ALLOW_CREDENTIALS=true"), "{stderr}");
    let app = Setup::default().plugins(&["module1"]).env("CORS_ALLOW_ORIGIN", "*").start();
    let reply = app.with_headers("GET", "/rest/services/bar-none/", &[("Origin", "https://anyone.example")], None);
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn a_stage_layers_its_env_file_over_env() {
    let base = "NUM_URL_PARMS=2\nURL_PARM1=id\nURL_PARM2=slug\n";
    let app = Setup::default()
        .plugins(&["module1"])
        .root_file(".env", &format!("{base}PLUGHOST_STAGE=prod\n"))
        .root_file(".env.prod", "URL_PARM1=product_id\n")
        .start();
    assert_eq!(
        app.get("/rest/services/hello-world/7/intro/").json()["kwargs"],
        json!({"product_id": "7", "slug": "intro"})
    );
    assert_eq!(app.get("/version").json()["stage"], "prod");

    let plain = Setup::default()
        .plugins(&["module1"])
        .root_file(".env", base)
        .root_file(".env.prod", "URL_PARM1=product_id\n")
        .start();
    assert_eq!(plain.get("/rest/services/hello-world/7/").json()["kwargs"], json!({"id": "7"}));
    assert_eq!(plain.get("/version").json()["stage"], serde_json::Value::Null);

    let (status, stderr) = Setup::default()
        .root_file(".env", base)
        .env("PLUGHOST_STAGE", "staging")
        .start_and_fail();
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("PLUGHOST_STAGE=staging but") && stderr.contains(".env.staging does not exist"),
        "{stderr}"
    );
}
