//! The worker side: `plughost worker`, started by the host with a clean environment in an empty
//! private folder. It takes its two channels off stdin and stdout, confines itself, and only then
//! maps the tenant's library; from there on it answers calls one at a time until the host says
//! goodbye or closes the channel.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Write},
    path::Path,
    process::ExitCode,
    sync::{Mutex, OnceLock},
};

use abi_stable::std_types::{RResult, RStr};
use plugin_api::abi::{HostServices, HostServicesRef, LogLevel};

use super::{
    confine,
    protocol::{read_frame, write_frame, CallHead, FrameError, HostMsg, Layer, Outcome, Rlimits, WorkerMsg, PROTOCOL_VERSION},
};

/// Largest frame the worker accepts from the host (a request body is capped by MAX_BODY_BYTES).
const MAX_REQUEST_FRAME: u64 = u32::MAX as u64;

/// The reply channel, shared with the logging callback the plugin calls.
static REPLIES: OnceLock<Mutex<BufWriter<File>>> = OnceLock::new();
/// The request id of the call in progress, for the plugin's log lines.
static REQUEST_ID: Mutex<String> = Mutex::new(String::new());

/// Runs a worker; returns when the host is done with it.
pub fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("plughost sandbox worker: {err}");
            ExitCode::from(70)
        }
    }
}

fn run() -> Result<(), String> {
    // If the host dies, so does this worker (seccomp later denies undoing this).
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let mut requests = take_channels()?;
    let (library, module, rlimits) = receive_load(&mut requests)?;
    // Read into an anonymous memory file before confinement, then mapped from there: nothing on
    // disk needs to stay reachable (the folders above the library may be private to the host's
    // user), and the image cannot change between checks and mapping.
    let file = match library.as_deref().map(|path| in_memory(path, &module)).transpose() {
        Ok(file) => file,
        Err(err) => return send(&loaded(Vec::new(), None, Some(format!("cannot open the library: {err}")))),
    };
    let layers = confine::apply(&rlimits);
    let Some(file) = file else {
        // A probe: report the layers and leave.
        return send(&loaded(layers, None, None));
    };
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
    match plughost_runtime::library::open_plugin(Path::new(&path), services()) {
        Ok((root, manifest)) => {
            send(&loaded(layers, Some(manifest), None))?;
            serve(root, &mut requests)
        }
        Err(err) => send(&loaded(layers, None, Some(err.to_string()))),
    }
}

/// Takes the two channels, then points stdin at /dev/null and stdout at stderr, so that nothing
/// the plugin reads or prints touches them; returns the request channel (the reply channel is
/// [`REPLIES`]).
fn take_channels() -> Result<BufReader<File>, String> {
    // Descriptors the server inherited without close-on-exec reach this process too: an open
    // `.env` would be readable whatever Landlock says, since Landlock governs opens. Keep only
    // the channels (stdin, stdout) and stderr.
    close_inherited_descriptors()?;
    let requests = rustix::io::dup(std::io::stdin()).map_err(|e| format!("cannot take stdin: {e}"))?;
    let replies = rustix::io::dup(std::io::stdout()).map_err(|e| format!("cannot take stdout: {e}"))?;
    let null = File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
    rustix::stdio::dup2_stdin(&null).map_err(|e| format!("cannot redirect stdin: {e}"))?;
    rustix::stdio::dup2_stdout(std::io::stderr()).map_err(|e| format!("cannot redirect stdout: {e}"))?;
    let _ = REPLIES.set(Mutex::new(BufWriter::new(File::from(replies))));
    // Room for a whole batch of calls (the host sends up to 60 KiB at once) in one read.
    Ok(BufReader::with_capacity(64 * 1024, File::from(requests)))
}

/// The host's first message: what to load, and the limits to confine this process with.
fn receive_load(requests: &mut BufReader<File>) -> Result<(Option<String>, String, Rlimits), String> {
    match read_frame::<HostMsg>(requests, 1 << 20) {
        Ok((
            HostMsg::Load {
                protocol,
                library,
                module,
                rlimits,
            },
            _,
        )) if protocol == PROTOCOL_VERSION => Ok((library, module, rlimits)),
        Ok((HostMsg::Load { protocol, .. }, _)) => {
            let error = format!("the host speaks protocol {protocol}, this worker {PROTOCOL_VERSION}: they are different builds");
            send(&loaded(Vec::new(), None, Some(error.clone())))?;
            Err(error)
        }
        Ok((other, _)) => Err(format!("expected a load message first, got {other:?}")),
        Err(err) => Err(format!("no load message: {err}")),
    }
}

/// The answer to the load message.
fn loaded(layers: Vec<Layer>, manifest: Option<plugin_api::abi::Manifest>, error: Option<String>) -> WorkerMsg {
    WorkerMsg::Loaded {
        protocol: PROTOCOL_VERSION,
        layers,
        manifest,
        error,
    }
}

/// Answers calls, one at a time, until the host says goodbye or closes the channel.
fn serve(root: plugin_api::abi::PluginModRef, requests: &mut BufReader<File>) -> Result<(), String> {
    loop {
        match read_frame::<HostMsg>(requests, MAX_REQUEST_FRAME) {
            Ok((HostMsg::Call(head), body)) => {
                let started = std::time::Instant::now();
                let id = head.id;
                let (outcome, body) = call(root, head, body);
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                // Each reply goes out before the next call starts, even when the host sent
                // several at once: were that call to crash or hang, the host still has the
                // answers to those before it, and never runs a call twice.
                send_with(&WorkerMsg::Reply { id, outcome, micros }, &body)?;
            }
            Ok((HostMsg::Goodbye, _)) | Err(FrameError::Closed) => return Ok(()),
            Ok((HostMsg::Load { .. }, _)) => return Err("a second load message: one worker loads one library".to_owned()),
            Err(err) => return Err(format!("the request channel broke: {err}")),
        }
    }
}

/// Closes every descriptor above stderr.
fn close_inherited_descriptors() -> Result<(), String> {
    // SAFETY: no memory arguments; this process holds no descriptor above 2 it means to keep
    // (the standard library opens none before `main`).
    #[allow(unsafe_code)]
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if closed == 0 {
        return Ok(());
    }
    // Kernels before 5.9: close what /proc lists.
    let listed = std::fs::read_dir("/proc/self/fd").map_err(|e| format!("cannot list the inherited descriptors: {e}"))?;
    let fds: Vec<i32> = listed
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: closing a descriptor number; one already closed (the listing's own) fails harmlessly.
        #[allow(unsafe_code)]
        unsafe {
            libc::close(fd)
        };
    }
    Ok(())
}

/// The library at `path`, copied into a memory file named after the plugin's file.
fn in_memory(path: &str, module: &str) -> std::io::Result<File> {
    let mut source = File::open(path)?;
    // The kernel takes up to 249 bytes of name, without NUL.
    let name: String = format!("plughost:{module}").chars().filter(|&c| c != '\0').take(200).collect();
    let mut memory = File::from(rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?);
    std::io::copy(&mut source, &mut memory)?;
    Ok(memory)
}

fn call(root: plugin_api::abi::PluginModRef, mut head: CallHead<'static>, body: Vec<u8>) -> (Outcome, Vec<u8>) {
    set_request_id(&head.request_id);
    let input = head.take_input(body);
    let result = match plughost_runtime::call::invoke(root, head.target(), &input) {
        RResult::ROk(response) => {
            let reply = plughost_runtime::call::PluginReply::from(response);
            (
                Outcome::Ok {
                    status: reply.status,
                    content_type: reply.content_type,
                    headers: reply.headers,
                },
                reply.body,
            )
        }
        RResult::RErr(err) => (
            Outcome::Err {
                kind: err.kind,
                code: err.code.into_string(),
                message: err.message.into_string(),
            },
            Vec::new(),
        ),
    };
    set_request_id("");
    result
}

fn set_request_id(id: &str) {
    LOGGED.store(0, std::sync::atomic::Ordering::Relaxed);
    let mut current = REQUEST_ID.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    current.clear();
    current.push_str(id);
}

fn send(msg: &WorkerMsg) -> Result<(), String> {
    send_with(msg, &[])
}

/// Writes one frame to the host, at once.
fn send_with(msg: &WorkerMsg, raw: &[u8]) -> Result<(), String> {
    let Some(replies) = REPLIES.get() else {
        return Err("the reply channel is not set up".to_owned());
    };
    let mut out = replies.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    write_frame(&mut *out, msg, raw)
        .and_then(|()| out.flush())
        .map_err(|err| format!("the reply channel broke: {err}"))
}

fn services() -> HostServicesRef {
    use abi_stable::prefix_type::PrefixTypeTrait;
    HostServices { log: worker_log }.leak_into_prefix()
}

/// Log bytes sent to the host in the current call; the host keeps its own budget (it cannot trust
/// this process), this one only spares the pipe.
static LOGGED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A plugin's log line, sent to the host, which writes it tagged with tenant and module.
extern "C" fn worker_log(level: LogLevel, _module: RStr<'_>, message: RStr<'_>) {
    use std::sync::atomic::Ordering;
    let len = message.len().min(8192);
    if LOGGED.fetch_add(len, Ordering::Relaxed) > 64 * 1024 {
        return;
    }
    let request_id = REQUEST_ID.lock().map(|id| id.clone()).unwrap_or_default();
    let message: String = message.as_str().chars().take(8192).collect();
    let _ = send(&WorkerMsg::Log {
        level: level as u8,
        message,
        request_id,
    });
}

/// The numeric form of a log level on the wire, back to the level.
pub fn level_from_wire(level: u8) -> LogLevel {
    match level {
        0 => LogLevel::Error,
        1 => LogLevel::Warn,
        2 => LogLevel::Info,
        3 => LogLevel::Debug,
        _ => LogLevel::Trace,
    }
}
