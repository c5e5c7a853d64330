//! What a worker says besides replies: its log lines (budgeted and escaped), its stdout and
//! stderr, and the response headers a tenant may set.

use std::io::{BufRead, BufReader, Read};

/// Plugin output logged per worker before the rest is dropped (counted).
pub(crate) const OUTPUT_BUDGET: usize = 64 * 1024;

/// Most response headers a tenant's function may set, and their total size.
pub(crate) const MAX_RESPONSE_HEADERS: usize = 64;
pub(crate) const MAX_RESPONSE_HEADER_BYTES: usize = 16 * 1024;

/// Whether a tenant's function may set a response header: those describing its own response, and
/// its own `x-` headers. Not cookies, HSTS, authentication challenges, CORS (the host's), or
/// anything about the connection or the host.
pub(crate) fn tenant_may_set(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "cache-control"
            | "content-disposition"
            | "content-encoding"
            | "content-language"
            | "content-location"
            | "etag"
            | "expires"
            | "last-modified"
            | "link"
            | "location"
            | "pragma"
            | "retry-after"
            | "vary"
    ) || (name.starts_with("x-") && !name.starts_with("x-plughost-") && name != "x-request-id")
}

/// A tenant's response headers through [`tenant_may_set`] and the bounds; what is dropped is logged.
pub(crate) fn response_headers(headers: Vec<(String, String)>, module: &str) -> Vec<(String, String)> {
    let offered = headers.len();
    let mut bytes = 0;
    let kept: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(name, _)| tenant_may_set(name))
        .take(MAX_RESPONSE_HEADERS)
        .take_while(|(name, value)| {
            bytes += name.len() + value.len();
            bytes <= MAX_RESPONSE_HEADER_BYTES
        })
        .collect();
    if kept.len() < offered {
        tracing::warn!(
            module,
            offered,
            kept = kept.len(),
            "a tenant's function set response headers that are not its to set, or too many: the rest were dropped"
        );
    }
    kept
}

/// Log bytes a plugin may send through the protocol in one call, and in one worker's life.
pub(crate) const LOG_BUDGET_PER_CALL: usize = 16 * 1024;
pub(crate) const LOG_BUDGET_PER_WORKER: usize = 1 << 20;

/// What a worker's plugin has logged: lines past either budget are dropped and counted.
#[derive(Debug, Default)]
pub(crate) struct LogBudget {
    pub(crate) worker: usize,
    pub(crate) call: usize,
    pub(crate) dropped: u64,
}

impl LogBudget {
    /// Logs with `write` if the line fits in both budgets.
    pub(crate) fn spend(&mut self, len: usize, write: impl FnOnce()) {
        if self.call + len <= LOG_BUDGET_PER_CALL && self.worker + len <= LOG_BUDGET_PER_WORKER {
            self.call += len;
            self.worker += len;
            write();
        } else {
            self.dropped += 1;
        }
    }

    /// A call was answered: says how many of its lines were dropped, and starts the next call's budget.
    pub(crate) fn end_call(&mut self, label: Label<'_>, request_id: &str) {
        if self.dropped > 0 {
            tracing::warn!(
                target: "plugin",
                tenant = label.tenant,
                module = label.module,
                request_id,
                dropped_lines = self.dropped,
                "the plugin logged more than {LOG_BUDGET_PER_CALL} bytes in one call or {LOG_BUDGET_PER_WORKER} bytes in its worker's life; the rest was dropped"
            );
        }
        self.call = 0;
        self.dropped = 0;
    }
}

/// A plugin's text with control characters escaped (`\n`, `\u{1b}`…), so that it cannot end a
/// log line and forge one that looks like the host's, nor drive a terminal.
pub fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// Whose worker a line comes from: its tenant (`admin` for the admin's modules) and module.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Label<'a> {
    pub(crate) tenant: &'a str,
    pub(crate) module: &'a str,
}

/// Writes a plugin's log line, tagged with its tenant and module.
pub(crate) fn log_line(level: u8, message: &str, request_id: &str, label: Label<'_>) {
    use plugin_api::abi::LogLevel;
    let Label { tenant, module } = label;
    let request_id = if request_id.is_empty() { "-" } else { request_id };
    let message = escape_control(message);
    match crate::worker::level_from_wire(level) {
        LogLevel::Error => tracing::error!(target: "plugin", tenant, module, request_id, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "plugin", tenant, module, request_id, "{message}"),
        LogLevel::Info => tracing::info!(target: "plugin", tenant, module, request_id, "{message}"),
        LogLevel::Debug => tracing::debug!(target: "plugin", tenant, module, request_id, "{message}"),
        LogLevel::Trace => tracing::trace!(target: "plugin", tenant, module, request_id, "{message}"),
    }
}

/// Logs what a worker prints (its stdout and stderr), line by line, up to [`OUTPUT_BUDGET`]
/// bytes; the rest is counted and dropped. Returns whether the worker reported an allocation
/// failure (the memory limit).
pub(crate) fn log_output(stderr: std::process::ChildStderr, tenant: &str, module: &str) -> bool {
    let mut reader = BufReader::new(stderr);
    let mut logged = 0usize;
    let mut dropped = 0u64;
    let mut out_of_memory = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        // Lines are cut at 4 KiB so that one endless line cannot grow this buffer.
        match reader.by_ref().take(4096).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(&line);
                let text = escape_control(text.trim_end());
                let text = text.as_ref();
                if text.starts_with("memory allocation of") && text.ends_with("failed") {
                    out_of_memory = true;
                }
                if logged < OUTPUT_BUDGET {
                    logged += n;
                    tracing::info!(target: "plugin", tenant, module, stream = "output", "{text}");
                } else {
                    dropped += n as u64;
                }
            }
        }
    }
    if dropped > 0 {
        tracing::warn!(target: "plugin", tenant, module, dropped_bytes = dropped, "the worker printed more than {OUTPUT_BUDGET} bytes; the rest was dropped");
    }
    out_of_memory
}
