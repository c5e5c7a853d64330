//! The access log: one line per request, written straight into the log buffer in the format the
//! rest of the log uses (`LOG_FORMAT`), and filtered like any other target (`plughost::access`).
//!
//! It does not go through `tracing`'s formatter: counted with `bench/instructions.py`, that
//! formatter spent about 16,000 instructions on this line (a field visitor and style wrappers
//! per field), more than routing and calling a plugin together; this writes it in about 2,000.

use std::{cell::RefCell, fmt::Write as _, future::Future, sync::Arc, time::Duration};

use crate::config::LogFormat;

tokio::task_local! {
    /// The request id, and the client's address.
    static TASK_REQUEST: (Arc<str>, std::net::IpAddr);
}

thread_local! {
    static THREAD_REQUEST_ID: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// Runs `work` (a request's handling) with `id` as the current request id. Log lines written
/// meanwhile (errors, plugin lines) carry it as `request_id`. This is a task-local rather than a
/// `tracing` span: a span entered on every poll cost more than the access line itself.
pub(crate) async fn scope<F: Future>(id: Arc<str>, peer: std::net::IpAddr, work: F) -> F::Output {
    TASK_REQUEST.scope((id, peer), work).await
}

/// The address of the client whose request is being handled (for the failure budget of
/// credentials), if any.
pub(crate) fn current_peer() -> Option<std::net::IpAddr> {
    TASK_REQUEST.try_with(|(_, peer)| *peer).ok()
}

/// Runs `work` on this thread (a plugin call on the blocking pool) with `id` as the current
/// request id.
pub(crate) fn on_thread<R>(id: &Arc<str>, work: impl FnOnce() -> R) -> R {
    let previous = THREAD_REQUEST_ID.with(|cell| cell.replace(Some(id.clone())));
    let result = work();
    THREAD_REQUEST_ID.with(|cell| *cell.borrow_mut() = previous);
    result
}

/// The id of the request being handled here, if any.
pub(crate) fn current_request_id() -> Option<Arc<str>> {
    TASK_REQUEST
        .try_with(|(id, _)| id.clone())
        .ok()
        .or_else(|| THREAD_REQUEST_ID.with(|cell| cell.borrow().clone()))
}

/// What one access line says.
pub(crate) struct Entry<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub module: &'a str,
    pub function: &'a str,
    pub caller: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub peer: &'a str,
}

/// Whether access lines are wanted (`RUST_LOG` lets `plughost::access` through at INFO).
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: "plughost::access", tracing::Level::INFO)
}

/// Writes the line to the log buffer, or as a `tracing` event when there is none (tests).
pub(crate) fn log(format: LogFormat, entry: &Entry<'_>) {
    let line = render(format, entry, std::time::SystemTime::now());
    if !crate::logwriter::write_line(line.as_bytes()) {
        tracing::info!(target: "plughost::access", "{}", line.trim_end());
    }
}

/// The line, newline included. Built with `push_str` rather than `format!`: this runs for every
/// request.
pub(crate) fn render(format: LogFormat, entry: &Entry<'_>, now: std::time::SystemTime) -> String {
    let mut line = String::with_capacity(320);
    let micros = u64::try_from(entry.duration.as_micros()).unwrap_or(u64::MAX);
    let mut duration_ms = String::with_capacity(16);
    push_digits(&mut duration_ms, micros / 1000, 1);
    duration_ms.push('.');
    push_digits(&mut duration_ms, micros % 1000, 3);
    let mut status = String::with_capacity(3);
    push_digits(&mut status, u64::from(entry.status), 1);
    match format {
        LogFormat::Json => {
            line.push_str(r#"{"timestamp":""#);
            push_timestamp(&mut line, now);
            line.push_str(r#"","level":"INFO","message":"request","request_id":"#);
            json_string(&mut line, entry.request_id);
            line.push_str(r#","method":"#);
            json_string(&mut line, entry.method);
            line.push_str(r#","route":"#);
            json_string(&mut line, entry.route);
            line.push_str(r#","module":"#);
            json_string(&mut line, entry.module);
            line.push_str(r#","function":"#);
            json_string(&mut line, entry.function);
            line.push_str(r#","caller":"#);
            json_string(&mut line, entry.caller);
            line.push_str(r#","status":"#);
            line.push_str(&status);
            line.push_str(r#","duration_ms":"#);
            line.push_str(&duration_ms);
            line.push_str(r#","peer":"#);
            json_string(&mut line, entry.peer);
            line.push_str(",\"target\":\"plughost::access\"}\n");
        }
        LogFormat::Pretty => {
            push_timestamp(&mut line, now);
            line.push_str("  INFO plughost::access: request request_id=");
            for (text, next) in [
                (entry.request_id, " method="),
                (entry.method, " route="),
                (entry.route, " module="),
                (or_dash(entry.module), " function="),
                (or_dash(entry.function), " caller="),
                (entry.caller, " status="),
                (&status, " duration_ms="),
                (&duration_ms, " peer="),
                (entry.peer, "\n"),
            ] {
                line.push_str(text);
                line.push_str(next);
            }
        }
    }
    line
}

/// RFC 3339 with microseconds, UTC. The part up to the second is formatted once per second
/// per thread.
fn push_timestamp(line: &mut String, now: std::time::SystemTime) {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != since.as_secs() {
            let whole = std::time::UNIX_EPOCH + Duration::from_secs(since.as_secs());
            // "2026-11-26T09:59:43Z" without its "Z".
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            *cached = (since.as_secs(), text.trim_end_matches('Z').to_owned());
        }
        line.push_str(&cached.1);
    });
    line.push('.');
    push_digits(line, u64::from(since.subsec_micros()), 6);
    line.push('Z');
}

/// `n` in decimal, zero-padded to `width` digits (`core::fmt` costs more than the rest of the line).
fn push_digits(out: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = i.min(digits.len() - width.min(digits.len()));
    out.extend(digits[start..].iter().map(|&d| d as char));
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() {
        "-"
    } else {
        text
    }
}

/// `text` as a JSON string. Request ids, routes and names are plain ASCII already, but a method
/// is the client's, so everything is escaped.
fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            request_id: "abc-1",
            method: "GET",
            route: "/rest/services/{module}/{function}/",
            module: "hello",
            function: "greet",
            caller: "none",
            status: 200,
            duration: Duration::from_micros(1250),
            peer: "127.0.0.1:5000",
        }
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let line = render(LogFormat::Json, &entry(), at);
        assert!(line.ends_with("}\n"));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["timestamp"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(value["request_id"], "abc-1");
        assert_eq!(value["function"], "greet");
        assert_eq!(value["status"], 200);
        assert_eq!(value["duration_ms"], 1.25);
        let later = render(LogFormat::Json, &entry(), at + Duration::from_micros(1_000_042));
        assert!(later.starts_with(r#"{"timestamp":"2023-11-14T22:13:21.000042Z""#), "{later}");
        assert_eq!(value["target"], "plughost::access");
        let odd = Entry {
            method: "BR\"EW\u{1}",
            ..entry()
        };
        let value: serde_json::Value = serde_json::from_str(&render(LogFormat::Json, &odd, at)).unwrap();
        assert_eq!(value["method"], "BR\"EW\u{1}");
    }

    #[test]
    fn digits() {
        let render = |n, width| {
            let mut out = String::new();
            push_digits(&mut out, n, width);
            out
        };
        assert_eq!(render(0, 1), "0");
        assert_eq!(render(42, 6), "000042");
        assert_eq!(render(1234, 3), "1234");
        assert_eq!(render(u64::MAX, 1), u64::MAX.to_string());
    }

    #[test]
    fn pretty_lines_read_as_key_values() {
        let at = std::time::UNIX_EPOCH;
        let line = render(LogFormat::Pretty, &Entry { module: "", ..entry() }, at);
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000000Z  INFO plughost::access: request request_id=abc-1 method=GET route=/rest/services/{module}/{function}/ module=- function=greet caller=none status=200 duration_ms=1.250 peer=127.0.0.1:5000\n"
        );
    }
}
