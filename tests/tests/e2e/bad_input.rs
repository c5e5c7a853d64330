//! Malformed paths, bodies and headers get a clear JSON error, never a crash or a hang.

use serde_json::json;

use crate::support::{examples, Setup};

#[test]
fn malformed_json_is_400_and_other_bodies_are_handled_by_type() {
    let app = examples();
    let client = crate::support::App::client();
    let post = |content_type: &str, body: &'static str| {
        crate::support::Reply::from(
            client
                .post(app.url("/rest/services/sample-one/?q=1"))
                .header("content-type", content_type)
                .body(body)
                .send()
                .unwrap(),
        )
    };
    let body = post("application/json", "{\"args\": [1,").error(400, "INVALID_JSON");
    assert!(body["error_description"].as_str().unwrap().contains("not valid JSON"));
    assert_eq!(post("application/json", "[1, 2, 3]").json()["kwargs"], json!({"q": "1"}));
    assert_eq!(post("application/json; charset=utf-8", "  ").json()["kwargs"], json!({"q": "1"}));
    assert_eq!(post("text/plain", "{\"not\": \"parsed\"}").json()["kwargs"], json!({"q": "1"}));
    assert_eq!(
        post("application/x-www-form-urlencoded", "name=Ada+L&q=body").json()["kwargs"],
        json!({"q": "1", "name": "Ada L"})
    );
    post("application/json", "{\"__map__\": \"parm_1\"}").error(400, "INVALID_MAP");
    post("application/json", "{\"__map__\": {\"parm_1\": \"not-a-name\"}}").error(400, "INVALID_MAP");
}

#[test]
fn body_limit_applies_to_declared_and_chunked_bodies_but_not_to_bodiless_requests() {
    let app = Setup::default().plugins(&["module1"]).env("MAX_BODY_BYTES", "1024").start();
    let big = format!("{{\"x\": \"{}\"}}", "a".repeat(2000));
    let declared = format!(
        "POST /rest/services/sample-one/ HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
        big.len()
    );
    app.raw(declared.as_bytes()).error(413, "PAYLOAD_TOO_LARGE");
    let mut chunked = String::from("POST /rest/services/sample-one/ HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    for piece in big.as_bytes().chunks(500) {
        chunked.push_str(&format!("{:x}\r\n{}\r\n", piece.len(), String::from_utf8_lossy(piece)));
    }
    chunked.push_str("0\r\n\r\n");
    app.raw(chunked.as_bytes()).error(413, "PAYLOAD_TOO_LARGE");
    let small = "POST /rest/services/sample-one/ HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7\r\n{\"a\": 1\r\n1\r\n}\r\n0\r\n\r\n";
    assert_eq!(app.raw(small.as_bytes()).json()["kwargs"], json!({"a": 1}));
    for method in ["GET /rest/services/hello-world/x/", "DELETE /rest/services/sample-one2a/x/"] {
        let request = format!("{method} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let reply = app.raw(request.as_bytes());
        assert_eq!(reply.status, 200, "{method}: {}", reply.text());
        assert_eq!(reply.json()["kwargs"], json!({"parm_1": "x"}));
    }
}

#[test]
fn odd_paths_get_clear_errors() {
    let app = examples();
    let get = |path: &str| app.raw(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes());
    for path in [
        "/rest/services/hello-world/../x/",
        "/rest/services/hello-world/%2e%2e/",
        "/rest/services/hello-world/%00/",
        "/rest/services/hello-world/%FF%FE/",
        "/rest/services/hello-world//x/",
    ] {
        get(path).error(400, "BAD_PATH");
    }
    get(&format!("/rest/services/hello-world/{}/", "x".repeat(5000))).error(414, "URI_TOO_LONG");
    let unicode = get("/rest/services/hello-world/%E2%9C%93%F0%9F%A6%80/");
    assert_eq!(unicode.json()["kwargs"], json!({"parm_1": "✓🦀"}));
    get("/etc/passwd").error(404, "ROUTE_NOT_FOUND");
    get("/rest/services/hello-world/a?%ZZ=%").json();
    // The server is still fine.
    assert_eq!(app.get("/ping").json(), json!({}));
}

#[test]
fn huge_headers_are_431_json() {
    let app = examples();
    let request = format!(
        "GET /ping HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "y".repeat(100 * 1024)
    );
    let reply = app.raw(request.as_bytes());
    let body = reply.error(431, "HEADERS_TOO_LARGE");
    assert!(body["error_description"].as_str().unwrap().contains("MAX_HEADER_BYTES"));
    assert_eq!(app.get("/ping").status, 200);
}

#[test]
fn garbage_on_the_socket_does_not_hurt_the_server() {
    let app = examples();
    for junk in [
        &b"\x00\x01\x02 garbage\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"POST /rest/services/sample-one/ HTTP/1.1\r\nContent-Length: 10\r\n\r\nab",
    ] {
        let mut stream = std::net::TcpStream::connect(app.addr).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        std::io::Write::write_all(&mut stream, junk).unwrap();
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut sink);
    }
    assert_eq!(app.get("/rest/services/bar-none/").status, 200);
}

#[test]
fn built_ins_refuse_other_methods() {
    let app = examples();
    let reply = app.send("POST", "/ping", None);
    reply.error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    app.send("DELETE", "/health", None).error(405, "METHOD_NOT_ALLOWED");
}
