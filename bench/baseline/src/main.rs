//! The baseline plughost is measured against: a hand-written warp 0.4 handler doing what a call to
//! `module1`'s `hello-world` asks of plughost, and nothing else. It parses
//! `/rest/services/<alias>/<function>/<p1>/…/?query` (the alias optional), merges a JSON object
//! body, the query string and the positional segments (named `parm_1`, `parm_2`, …) into kwargs,
//! and answers `{"response": <function>, "kwargs": {…}}`.
//!
//!     bench-baseline [ADDR]     (default 127.0.0.1:0; prints "listening on http://ADDR")

use std::net::SocketAddr;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use warp::{http::StatusCode, reply::Response, Filter};

/// The alias of the module whose functions the benchmark calls.
const ALIAS: &str = "v1";

fn kwargs(tail: &str, query: &str, body: &[u8]) -> Result<(String, Map<String, Value>), &'static str> {
    let mut segments = tail.split('/').filter(|s| !s.is_empty());
    let mut first = segments.next().ok_or("no function")?;
    if first == ALIAS {
        first = segments.next().ok_or("no function")?;
    }
    let function = first.to_owned();
    let mut kwargs = match body.iter().all(u8::is_ascii_whitespace) {
        true => Map::new(),
        false => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => map,
            Ok(_) => Map::new(),
            Err(_) => return Err("invalid JSON"),
        },
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        kwargs.entry(key.into_owned()).or_insert(Value::String(value.into_owned()));
    }
    for (i, segment) in segments.enumerate() {
        kwargs.entry(format!("parm_{}", i + 1)).or_insert(Value::String(segment.to_owned()));
    }
    Ok((function, kwargs))
}

fn answer(tail: warp::path::Tail, query: String, body: Bytes) -> Response {
    let (status, value) = match kwargs(tail.as_str(), &query, &body) {
        Ok((function, kwargs)) => (StatusCode::OK, json!({"response": function, "kwargs": kwargs})),
        Err(why) => (StatusCode::BAD_REQUEST, json!({"error": why})),
    };
    // `to_vec` writes straight into a buffer, as `warp::reply::json` does; `Value`'s `Display`
    // would go through the formatter for every token and make the baseline slower than it need be.
    let body = serde_json::to_vec(&value).unwrap_or_default();
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", warp::http::HeaderValue::from_static("application/json"));
    response
}

#[tokio::main]
async fn main() {
    let addr: SocketAddr = match std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".to_owned()).parse() {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("bench-baseline: not an address: {err}");
            std::process::exit(2);
        }
    };
    let routes = warp::path("rest")
        .and(warp::path("services"))
        .and(warp::path::tail())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::body::bytes())
        .map(answer);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("bench-baseline: cannot listen on {addr}: {err}");
            std::process::exit(1);
        }
    };
    match listener.local_addr() {
        Ok(local) => println!("listening on http://{local}"),
        Err(err) => eprintln!("bench-baseline: {err}"),
    }
    warp::serve(routes).incoming(listener).run().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_kwargs_as_the_echo_example() {
        let (function, kwargs) = kwargs("v1/hello-world/a/b/", "x=1", b"").unwrap();
        assert_eq!(function, "hello-world");
        assert_eq!(Value::Object(kwargs), json!({"parm_1": "a", "parm_2": "b", "x": "1"}));
        let (_, kwargs) = kwargs_of_body();
        assert_eq!(Value::Object(kwargs), json!({"a": [1, 2], "x": "body wins"}));
    }

    fn kwargs_of_body() -> (String, Map<String, Value>) {
        kwargs("hello-world/", "x=1", br#"{"a": [1, 2], "x": "body wins"}"#).unwrap()
    }
}
