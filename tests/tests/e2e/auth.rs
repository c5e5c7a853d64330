//! Identity end to end on the embedded store: enrolment by CLI and REST, codes, tokens, replay,
//! skew, disable/rotate/remove, rate limits, visibility, and malformed credentials.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{code_at, now, wait_for, App, Reply, Setup, ADMIN_SECRET, ADMIN_UUID};

/// Waits until the current 30 s step has a few seconds left, so that ±1-step cases are stable.
pub fn settle_step() {
    while now() % 30 >= 26 || now() % 30 < 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn with_code(app: &App, path: &str, uuid: &str, code: &str) -> Reply {
    app.with_headers("GET", path, &[("X-Plughost-UUID", uuid), ("X-Plughost-TOTP", code)], None)
}

pub fn bearer(app: &App, path: &str, token: &str) -> Reply {
    app.with_headers("GET", path, &[("Authorization", &format!("Bearer {token}"))], None)
}

pub fn token(app: &App, uuid: &str, code: &str) -> Reply {
    app.send("POST", "/rest/auth/token", Some(&json!({"uuid": uuid, "totp": code})))
}

/// Adds a tenant through the REST API; returns `(uuid, secret)`.
pub fn rest_tenant(app: &App, name: &str) -> (String, String) {
    let reply = app.admin("POST", "/rest/admin/tenants", Some(&json!({"name": name})));
    assert_eq!(reply.status, 201, "{}", reply.text());
    let body = reply.json();
    assert!(body["otpauth_uri"].as_str().unwrap().starts_with("otpauth://totp/"), "{body}");
    (
        body["uuid"].as_str().unwrap().to_owned(),
        body["secret"].as_str().unwrap().to_owned(),
    )
}

fn secure() -> App {
    Setup::default().plugins(&["secure", "module1"]).start()
}

#[test]
fn enrol_by_cli_and_rest_and_call_with_a_code_and_a_token() {
    settle_step();
    let app = secure();
    // By CLI, beside the running server.
    let out = app.cli(&["tenant", "add", "Acme Corp", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let enrolled: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (uuid, secret) = (
        enrolled["uuid"].as_str().unwrap().to_owned(),
        enrolled["secret"].as_str().unwrap().to_owned(),
    );
    assert_eq!(enrolled["name"], "Acme Corp");
    assert!(enrolled["otpauth_uri"].as_str().unwrap().contains("secret="));

    let who = with_code(&app, "/rest/services/secure/whoami/", &uuid, &code_at(&secret, now()));
    assert_eq!(who.status, 200, "{}", who.text());
    assert_eq!(who.json(), json!({"kind": "tenant", "uuid": uuid}));

    let reply = token(&app, &uuid, &code_at(&secret, now() + 30));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["token_type"], "Bearer");
    let tok = body["token"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(bearer(&app, "/rest/services/whoami/", &tok).json()["uuid"], uuid.as_str());
    }

    // By REST.
    let (beta, beta_secret) = rest_tenant(&app, "beta");
    assert_eq!(
        with_code(&app, "/rest/services/whoami/", &beta, &code_at(&beta_secret, now())).json()["uuid"],
        beta.as_str()
    );
    let listed = app.admin("GET", "/rest/admin/tenants", None).json();
    assert_eq!(listed["tenants"].as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains(&beta_secret), "secrets are never listed");
    let audit = app.admin("GET", "/rest/admin/audit", None).json();
    assert!(audit.to_string().contains("tenant.add"), "{audit}");
}

#[test]
fn visibility_decides_who_may_call_and_what_dir_shows() {
    settle_step();
    let app = secure();
    let (uuid, secret) = rest_tenant(&app, "t");
    let tenant = token(&app, &uuid, &code_at(&secret, now())).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = app.admin_token();

    assert_eq!(app.get("/rest/services/secure/status/").json(), json!({"status": "ok"}));
    app.get("/rest/services/secure/whoami/").error(401, "AUTHORIZATION_HEADER_MISSING");
    assert_eq!(
        bearer(&app, "/rest/services/secure/whoami/", &admin).json(),
        json!({"kind": "admin", "uuid": ADMIN_UUID})
    );
    bearer(&app, "/rest/services/secure/admin-stats/", &tenant).error(403, "FORBIDDEN");
    // A client cannot pose as someone else to a plugin by sending the host's caller headers.
    let spoofed = app.with_headers(
        "GET",
        "/rest/services/secure/whoami/",
        &[
            ("Authorization", &format!("Bearer {tenant}")),
            ("X-Plughost-Caller-Kind", "admin"),
            ("X-Plughost-Caller-Uuid", ADMIN_UUID),
        ],
        None,
    );
    assert_eq!(spoofed.json(), json!({"kind": "tenant", "uuid": uuid}));
    assert_eq!(bearer(&app, "/rest/services/secure/admin-stats/", &admin).status, 200);
    bearer(&app, "/rest/admin/tenants", &tenant).error(403, "FORBIDDEN");
    app.get("/rest/admin/plugins").error(401, "AUTHORIZATION_HEADER_MISSING");

    let names = |reply: Reply| -> Vec<String> {
        let body = reply.json();
        body["functions"]
            .as_array()
            .map(|fs| {
                fs.iter()
                    .map(|f| f["api"].as_str().or(f["name"].as_str()).unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(names(app.get("/rest/services/secure/__dir__/")), vec!["status"]);
    assert_eq!(
        names(bearer(&app, "/rest/services/secure/__dir__/", &tenant)),
        vec!["status", "whoami", "echo"]
    );
    assert_eq!(
        names(bearer(&app, "/rest/services/secure/__dir__/", &admin)),
        vec!["status", "whoami", "admin-stats", "echo"]
    );
    // The public examples stay public.
    assert_eq!(app.get("/rest/services/v1/hello-world/").status, 200);
}

#[test]
fn a_code_works_once_within_one_step_of_skew() {
    settle_step();
    let app = secure();
    let (uuid, secret) = rest_tenant(&app, "skew");
    let path = "/rest/services/whoami/";
    with_code(&app, path, &uuid, &code_at(&secret, now() + 60)).error(401, "TOTP_INVALID");
    with_code(&app, path, &uuid, &code_at(&secret, now() - 60)).error(401, "TOTP_INVALID");
    let code = code_at(&secret, now());
    assert_eq!(with_code(&app, path, &uuid, &code).status, 200);
    let body = with_code(&app, path, &uuid, &code).error(401, "TOTP_REPLAYED");
    assert!(body["error_description"].as_str().unwrap().contains("single-use"));
    token(&app, &uuid, &code).error(401, "TOTP_REPLAYED");
    assert_eq!(
        with_code(&app, path, &uuid, &code_at(&secret, now() - 30)).status,
        200,
        "one step back"
    );
    assert_eq!(
        with_code(&app, path, &uuid, &code_at(&secret, now() + 30)).status,
        200,
        "one step ahead"
    );
}

#[test]
fn disable_rotate_and_remove_end_codes_and_tokens() {
    settle_step();
    let app = secure();
    let (uuid, secret) = rest_tenant(&app, "doomed");
    let tok = token(&app, &uuid, &code_at(&secret, now())).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(bearer(&app, "/rest/services/whoami/", &tok).status, 200);

    assert_eq!(
        app.admin("POST", &format!("/rest/admin/tenants/{uuid}/disable"), None).json()["status"],
        "disabled"
    );
    wait_for(Duration::from_secs(3), || {
        bearer(&app, "/rest/services/whoami/", &tok).status != 200
    })
    .expect("token refused after disable");
    let refused = bearer(&app, "/rest/services/whoami/", &tok);
    assert!(refused.status == 401 || refused.status == 403, "{}", refused.text());
    with_code(&app, "/rest/services/whoami/", &uuid, &code_at(&secret, now() + 30)).error(403, "FORBIDDEN");

    assert_eq!(
        app.admin("POST", &format!("/rest/admin/tenants/{uuid}/enable"), None).json()["status"],
        "active"
    );
    let tok = token(&app, &uuid, &code_at(&secret, now() - 30)).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(bearer(&app, "/rest/services/whoami/", &tok).status, 200);

    let rotated = app.admin("POST", &format!("/rest/admin/tenants/{uuid}/rotate-totp"), None).json();
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    wait_for(Duration::from_secs(3), || {
        bearer(&app, "/rest/services/whoami/", &tok).status == 401
    })
    .expect("token refused after rotation");
    bearer(&app, "/rest/services/whoami/", &tok).error(401, "TOKEN_INVALID");
    // The steps before and now were used (a step is accepted once per principal); the next one works.
    let reply = token(&app, &uuid, &code_at(&new_secret, now() + 30));
    assert_eq!(reply.status, 200, "the new secret works: {}", reply.text());
    let tok = reply.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(app.admin("DELETE", &format!("/rest/admin/tenants/{uuid}"), None).status, 200);
    wait_for(Duration::from_secs(3), || {
        bearer(&app, "/rest/services/whoami/", &tok).status == 401
    })
    .expect("token refused after removal");
    app.admin("GET", &format!("/rest/admin/tenants/{uuid}"), None)
        .error(404, "TENANT_NOT_FOUND");
}

#[test]
fn repeated_failures_are_rate_limited_then_released() {
    settle_step();
    let app = Setup::default()
        .plugins(&["secure"])
        .env("AUTH_MAX_FAILURES", "3")
        .env("AUTH_LOCKOUT_SECS", "2")
        .start();
    let (uuid, secret) = rest_tenant(&app, "guess");
    for _ in 0..3 {
        with_code(&app, "/rest/services/whoami/", &uuid, "000000").error(401, "TOTP_INVALID");
    }
    let limited = with_code(&app, "/rest/services/whoami/", &uuid, &code_at(&secret, now()));
    limited.error(429, "TOO_MANY_ATTEMPTS");
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(
        with_code(&app, "/rest/services/whoami/", &uuid, &code_at(&secret, now())).status,
        200,
        "released"
    );
}

#[test]
fn malformed_credentials_get_the_right_401() {
    let app = secure();
    let path = "/rest/services/secure/whoami/";
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("Authorization", "")], "AUTHORIZATION_HEADER_MISSING"),
        (&[("Authorization", "Bearer")], "TOKEN_INVALID"),
        (&[("Authorization", "Bearer a b")], "TOKEN_INVALID"),
        (&[("Authorization", "Basic dXNlcjpwYXNz")], "TOKEN_INVALID"),
        (&[("Authorization", "Bearer not-a-token")], "TOKEN_INVALID"),
        (&[("Authorization", "Bearer e30.e30")], "TOKEN_INVALID"),
        (&[("X-Plughost-UUID", "not-a-uuid"), ("X-Plughost-TOTP", "123456")], "TOTP_INVALID"),
        (&[("X-Plughost-UUID", ADMIN_UUID), ("X-Plughost-TOTP", "abcdef")], "TOTP_INVALID"),
        (&[("X-Plughost-UUID", ADMIN_UUID), ("X-Plughost-TOTP", "1234567")], "TOTP_INVALID"),
        (&[("X-Plughost-UUID", ADMIN_UUID)], "AUTHORIZATION_HEADER_MISSING"),
        (&[("X-Plughost-TOTP", "123456")], "AUTHORIZATION_HEADER_MISSING"),
    ];
    for (headers, code) in cases {
        let reply = app.with_headers("GET", path, headers, None);
        reply.error(401, code);
        assert!(reply.header("www-authenticate").is_some());
    }
    // An unknown UUID and a wrong code look the same.
    let unknown = with_code(&app, path, "11111111-2222-4333-8444-555555555555", "123456").error(401, "TOTP_INVALID");
    let wrong = with_code(&app, path, ADMIN_UUID, "000000").error(401, "TOTP_INVALID");
    assert_eq!(unknown["error_description"], wrong["error_description"]);
    for body in [
        json!("x"),
        json!({}),
        json!({"uuid": ADMIN_UUID}),
        json!({"uuid": 5, "totp": "123456"}),
    ] {
        assert_eq!(app.send("POST", "/rest/auth/token", Some(&body)).status, 400, "{body}");
    }
    assert_eq!(
        app.raw(b"POST /rest/auth/token HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{oops")
            .status,
        400
    );
    app.send("GET", "/rest/auth/token", None).error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(app.get("/ping").status, 200);
}

#[test]
fn tokens_expire() {
    settle_step();
    let app = Setup::default().plugins(&["secure"]).env("TOKEN_TTL_SECS", "1").start();
    let tok = token(&app, ADMIN_UUID, &code_at(ADMIN_SECRET, now())).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Used once, so that the server remembers it as verified: expiry still applies.
    assert_eq!(bearer(&app, "/rest/services/whoami/", &tok).status, 200);
    // A token that differs from a remembered one by one character is checked afresh.
    let last = if tok.ends_with('A') { "B" } else { "A" };
    let tampered = format!("{}{last}", &tok[..tok.len() - 1]);
    bearer(&app, "/rest/services/whoami/", &tampered).error(401, "TOKEN_INVALID");
    std::thread::sleep(Duration::from_millis(2100));
    bearer(&app, "/rest/services/whoami/", &tok).error(401, "TOKEN_EXPIRED");
}

#[test]
fn operator_commands() {
    settle_step();
    let app = secure();
    let out = app.cli(&["totp", ADMIN_UUID]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(code.len(), 6);
    assert_eq!(token(&app, ADMIN_UUID, &code).status, 200, "the printed code works");

    let png = tempfile::NamedTempFile::new().unwrap();
    let out = app.cli(&["tenant", "add", "printer", "--png", png.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("otpauth://totp/") && text.contains('█'),
        "QR code in the terminal: {text}"
    );
    assert_eq!(&std::fs::read(png.path()).unwrap()[..4], b"\x89PNG");
    let uuid = text.lines().find_map(|l| l.strip_prefix("uuid")).unwrap().trim().to_owned();

    let list = app.cli(&["tenant", "list", "--json"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&uuid));
    assert!(app.cli(&["tenant", "disable", &uuid]).status.success());
    assert_eq!(
        app.admin("GET", &format!("/rest/admin/tenants/{uuid}"), None).json()["status"],
        "disabled"
    );
    assert!(app.cli(&["tenant", "enable", &uuid]).status.success());
    assert!(app.cli(&["tenant", "rotate-totp", &uuid, "--json"]).status.success());
    assert!(app.cli(&["tenant", "remove", &uuid]).status.success());
    let missing = app.cli(&["tenant", "show", &uuid]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no tenant has UUID"));
    let keygen = app.cli(&["keygen"]);
    assert_eq!(String::from_utf8_lossy(&keygen.stdout).trim().len(), 64);
}

#[test]
fn the_admin_identity_is_required() {
    let (status, stderr) = Setup::default()
        .env("ADMIN_UUID", "")
        .env("ADMIN_TOTP_SECRET", "tooshort")
        .start_and_fail();
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("ADMIN_UUID is missing"), "{stderr}");
    assert!(stderr.contains("ADMIN_TOTP_SECRET"), "{stderr}");
}

/// A client bound to another loopback address, as an attacker elsewhere on the network.
fn from_address(ip: [u8; 4]) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[test]
fn someone_elses_failures_never_lock_the_owner_out() {
    settle_step();
    let app = Setup::default()
        .plugins(&["secure"])
        .env("AUTH_MAX_FAILURES", "3")
        .env("AUTH_LOCKOUT_SECS", "60")
        .start();
    let (uuid, secret) = rest_tenant(&app, "victim");
    let url = app.url("/rest/services/whoami/");
    // Attackers on 20 addresses spend their budgets, and the UUID's, on wrong codes.
    let mut statuses = std::collections::BTreeMap::new();
    for n in 0..20u8 {
        let attacker = from_address([127, 0, 1, 10 + n]);
        for _ in 0..5 {
            let status = attacker
                .get(&url)
                .header("X-Plughost-UUID", &uuid)
                .header("X-Plughost-TOTP", "000000")
                .send()
                .unwrap()
                .status()
                .as_u16();
            *statuses.entry(status).or_insert(0) += 1;
        }
    }
    eprintln!("attackers' answers: {statuses:?}");
    assert!(
        statuses.get(&429).is_some_and(|&n| n >= 40),
        "attackers were not slowed: {statuses:?}"
    );
    // An attacker that failed gets 429 even with the right code: its guesses stop counting.
    let attacker = from_address([127, 0, 1, 10]);
    let refused = attacker
        .get(&url)
        .header("X-Plughost-UUID", &uuid)
        .header("X-Plughost-TOTP", code_at(&secret, now()))
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    // Its failures are for the victim's UUID only: the same address is heard for another one.
    let other = attacker
        .post(app.url("/rest/auth/token"))
        .json(&json!({"uuid": ADMIN_UUID, "totp": code_at(ADMIN_SECRET, now() + 30)}))
        .send()
        .unwrap();
    assert_eq!(other.status().as_u16(), 200, "an address was locked out of every UUID");
    // The owner, from its own address, is heard and let in at once.
    let reply = with_code(&app, "/rest/services/whoami/", &uuid, &code_at(&secret, now()));
    assert_eq!(reply.status, 200, "the owner was locked out by someone else: {}", reply.text());
    assert_eq!(reply.json()["uuid"], uuid.as_str());
}
