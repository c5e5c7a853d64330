//! Callbacks through the real server, on both stores: a job queued with `X-Callback-Url` is
//! POSTed, signed, to a receiver the test runs; a receiver that fails is retried; a target
//! outside `CALLBACK_ALLOW` is refused when the job is queued, and a name that resolves outside
//! it is refused at delivery.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::Duration,
};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::{
    mongo_server::MongoServer,
    support::{wait_for, App, Setup, SECRET_KEY},
};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A receiver on `address`: answers the statuses in `answers` in turn (then 200) and keeps what
/// it got. It stops with the test process.
fn receiver(address: &str, answers: &[u16]) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind(format!("{address}:0")).unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let kept = got.clone();
    let mut answers = Vec::from(answers).into_iter();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut line = String::new();
            reader.read_line(&mut line).ok();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.trim_end().split_once(':') {
                    headers.push((name.to_owned(), value.trim().to_owned()));
                }
            }
            let length = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body).ok();
            kept.lock().unwrap().push(Received { headers, body });
            let status = answers.next().unwrap_or(200);
            let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            stream.write_all(answer.as_bytes()).ok();
        }
    });
    (url, got)
}

/// What the test expects in `X-Plughost-Signature`, computed from `SECRET_KEY` as the README
/// tells receivers to.
fn expected_signature(t: &str, body: &[u8]) -> String {
    let key = callback_key();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn callback_key() -> Vec<u8> {
    let secret = hex::decode(SECRET_KEY).unwrap();
    let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(&secret).unwrap();
    derive.update(b"plughost callbacks v1");
    derive.finalize().into_bytes().to_vec()
}

fn setup() -> Setup {
    Setup::default()
        .plugins(&["flaky"])
        .env("JOB_BACKOFF_MS", "50")
        .env("JOBS_POLL_MS", "100")
        .env("CALLBACK_ALLOW", "127.0.0.2, localhost")
}

fn queue(app: &App, path: &str, body: &Value, callback: &str) -> crate::support::Reply {
    app.with_headers(
        "POST",
        path,
        &[("Prefer", "respond-async"), ("X-Callback-Url", callback)],
        Some(body),
    )
}

fn exercise(app: &App) {
    // The receiver fails once (503): the callback is retried, then delivered, signed.
    let (url, got) = receiver("127.0.0.2", &[503]);
    let queued = queue(app, "/rest/services/flaky/flaky/", &json!({"key": "cb", "fails": 1}), &url);
    assert_eq!(queued.status, 202, "{}", queued.text());
    let id = queued.json()["id"].as_str().unwrap().to_owned();
    let delivered = wait_for(Duration::from_secs(20), || got.lock().unwrap().len() >= 2);
    assert!(delivered.is_some(), "two deliveries expected: {:?}", got.lock().unwrap());
    let last = got.lock().unwrap()[1].clone();
    assert_eq!(last.header("x-plughost-job-id"), Some(id.as_str()));
    assert_eq!(last.header("content-type"), Some("application/json"));
    let signature = last.header("x-plughost-signature").unwrap();
    let t = signature.strip_prefix("t=").and_then(|s| s.split(',').next()).unwrap();
    assert_eq!(signature, expected_signature(t, &last.body));
    let sent = t.parse::<u64>().unwrap();
    assert!(sent.abs_diff(crate::support::now()) < 60, "t={sent}");
    let record: Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(record["id"], id.as_str());
    assert_eq!(record["state"], "succeeded");
    assert_eq!(record["attempts"], 2, "{record}");
    assert_eq!(record["result"]["status"], 200);
    assert_eq!(record["result"]["body"]["calls"], 2, "{record}");
    // A forged or altered body does not verify.
    assert_ne!(expected_signature(t, b"{\"state\":\"failed\"}"), signature);

    // A job that ends dead is called back too, once.
    let (url, dead_got) = receiver("127.0.0.2", &[]);
    let queued = queue(app, "/rest/services/flaky/broken/", &json!({}), &url);
    assert_eq!(queued.status, 202, "{}", queued.text());
    let delivered = wait_for(Duration::from_secs(20), || !dead_got.lock().unwrap().is_empty());
    assert!(delivered.is_some(), "no callback for a dead job");
    let record: Value = serde_json::from_slice(&dead_got.lock().unwrap()[0].body).unwrap();
    assert_eq!((record["state"].clone(), record["attempts"].clone()), (json!("dead"), json!(3)));

    // Refused when queued: an address outside the list, another scheme, credentials. Nothing queued.
    for (target, reason) in [
        ("http://127.0.0.1:9/hook", "not allowed by CALLBACK_ALLOW"),
        ("http://10.0.0.8/hook", "not allowed by CALLBACK_ALLOW"),
        ("http://hooks.example.com/", "not allowed by CALLBACK_ALLOW"),
        ("file:///etc/passwd", "must be http or https"),
        ("http://me:pw@localhost/", "must not carry credentials"),
        ("not a url", "is not a URL"),
    ] {
        let refused = queue(app, "/rest/services/flaky/broken/", &json!({}), target);
        let body = refused.error(422, "CALLBACK_REFUSED");
        assert!(body["error_description"].as_str().unwrap().contains(reason), "{target}: {body}");
    }
    let listed = app.admin("GET", "/rest/admin/jobs?limit=100", None).json();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 2, "{listed}");

    // `localhost` is allowed by name, but resolves to loopback, which is not in the list:
    // refused at delivery, once, and the receiver on 127.0.0.1 gets nothing.
    let (url, local_got) = receiver("127.0.0.1", &[]);
    let url = url.replace("127.0.0.1", "localhost");
    let queued = queue(app, "/rest/services/flaky/flaky/", &json!({"key": "l", "fails": 0}), &url);
    assert_eq!(queued.status, 202, "{}", queued.text());
    let mut metrics = String::new();
    let refused = wait_for(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(50));
        metrics = app.admin("GET", "/metrics", None).text();
        metrics.lines().any(|l| l == "plughost_callbacks_total{outcome=\"refused\"} 1")
    });
    assert!(refused.is_some(), "the delivery to localhost was not refused:\n{metrics}");
    assert!(local_got.lock().unwrap().is_empty(), "{:?}", local_got.lock().unwrap());
    for line in [
        "plughost_callbacks_total{outcome=\"delivered\"} 2",
        "plughost_callbacks_total{outcome=\"retried\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }
    assert!(app.logs().contains("not public and not in CALLBACK_ALLOW"), "{}", app.logs());
}

#[test]
fn callbacks_on_the_embedded_store() {
    let app = setup().start();
    exercise(&app);
    // The key receivers verify with, from the CLI beside the server.
    let printed = app.cli(&["callback-key"]);
    assert!(printed.status.success(), "{printed:?}");
    assert_eq!(String::from_utf8_lossy(&printed.stdout).trim(), hex::encode(callback_key()));
}

#[test]
fn callbacks_on_mongodb() {
    let server = MongoServer::start();
    let app = setup()
        .env("MONGODB_URI", &server.uri())
        .env("MONGODB_DATABASE", "callbacks_e2e")
        .start();
    exercise(&app);
}

#[test]
fn callbacks_off_and_a_bad_list_are_explained() {
    let (status, said) = Setup::default()
        .env("CALLBACK_ALLOW", "hooks.example.com, not_a host")
        .start_and_fail();
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(said.contains("CALLBACK_ALLOW") && said.contains("not_a host"), "{said}");
}
