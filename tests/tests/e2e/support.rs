//! Starting the real `plughost` binary on port 0 with real plugin files, and talking HTTP to it.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The admin identity every test server gets.
pub const ADMIN_UUID: &str = "0b6f6b8e-4b3a-4f8e-9a57-3f1a2c9d7e10";
pub const ADMIN_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
pub const SECRET_KEY: &str = "6a1f3c5e7b9d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a";

/// The TOTP code of `secret` at `unix_secs`.
pub fn code_at(secret: &str, unix_secs: u64) -> String {
    let totp = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).expect("base32 secret"))
        .build()
        .expect("TOTP");
    totp.generate(unix_secs).to_string()
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The example plugins every routing test loads.
pub const EXAMPLES: &[&str] = &["module1", "module2", "product_v1", "product_v2", "hello"];

/// `target/debug` (or wherever this test binary was built).
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// A plugin `.so` built by `cargo build --workspace`.
pub fn plugin_file(name: &str) -> PathBuf {
    let path = build_dir().join(format!("lib{name}.so"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (scripts/test does)",
        path.display()
    );
    path
}

pub fn plughost_bin() -> PathBuf {
    let path = build_dir().join("plughost");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (scripts/test does)",
        path.display()
    );
    path
}

/// How to start a server.
#[derive(Default)]
pub struct Setup {
    plugins: Vec<String>,
    files: Vec<(String, Vec<u8>)>,
    env: Vec<(String, String)>,
    /// Files in the server's working directory (such as `.env`).
    root_files: Vec<(String, String)>,
    /// Run the server as this uid and gid instead of the test's own.
    user: Option<u32>,
    /// Root files the server inherits an open descriptor on (fd 9 onwards), without close-on-exec.
    inherited: Vec<String>,
    /// Start the server with this soft limit on open files (its hard limit unchanged).
    soft_file_limit: Option<u64>,
}

impl Setup {
    pub fn plugins(mut self, names: &[&str]) -> Self {
        self.plugins.extend(names.iter().map(|n| n.to_string()));
        self
    }

    /// A file written into the plugins folder as it is.
    pub fn file(mut self, name: &str, bytes: &[u8]) -> Self {
        self.files.push((name.to_owned(), bytes.to_vec()));
        self
    }

    /// A file in the server's working directory, such as `.env` or `.env.prod`.
    pub fn root_file(mut self, name: &str, text: &str) -> Self {
        self.root_files.push((name.to_owned(), text.to_owned()));
        self
    }

    /// Runs the server as `uid` (gid alike, no supplementary groups), through util-linux's
    /// `setpriv`, as containers run it; its folder is handed to that user.
    pub fn run_as(mut self, uid: u32) -> Self {
        self.user = Some(uid);
        self
    }

    /// Starts the server with a descriptor open on this root file, as a careless parent might
    /// leave one: nothing the server starts must be able to read it.
    pub fn inherit_root_file(mut self, name: &str) -> Self {
        self.inherited.push(name.to_owned());
        self
    }

    /// Starts the server with a low soft limit on open files, as some systems set by default.
    pub fn soft_file_limit(mut self, limit: u64) -> Self {
        self.soft_file_limit = Some(limit);
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts the server and waits for its "listening" line.
    pub fn start(self) -> App {
        match self.launch() {
            Launch::Running(app) => app,
            Launch::Exited { status, stderr } => panic!("plughost exited with {status}:\n{stderr}"),
        }
    }

    /// Starts the server, expecting it to refuse to start.
    pub fn start_and_fail(self) -> (ExitStatus, String) {
        match self.launch() {
            Launch::Running(app) => panic!("plughost started on {} but was expected to fail", app.addr),
            Launch::Exited { status, stderr } => (status, stderr),
        }
    }

    fn launch(self) -> Launch {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins_dir = dir.path().join("plugins");
        std::fs::create_dir(&plugins_dir).expect("plugins dir");
        for (name, text) in &self.root_files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).expect("root file's folder");
            std::fs::write(path, text).expect("write root file");
        }
        // Files get increasing modification times in the order given: the server loads the
        // oldest first, so that the first of two colliding modules wins.
        let base = std::time::SystemTime::now() - Duration::from_secs(3600);
        let mut written = Vec::new();
        for name in &self.plugins {
            let path = plugins_dir.join(format!("lib{name}.so"));
            std::fs::copy(plugin_file(name), &path).expect("copy plugin");
            written.push(path);
        }
        for (name, bytes) in &self.files {
            let path = plugins_dir.join(name);
            std::fs::write(&path, bytes).expect("write file");
            written.push(path);
        }
        for (i, path) in written.iter().enumerate() {
            let file = std::fs::File::options().write(true).open(path).expect("open");
            file.set_modified(base + Duration::from_secs(i as u64)).expect("set mtime");
        }
        let mut command = match (self.user, self.soft_file_limit) {
            (None, Some(limit)) => {
                let mut command = Command::new("prlimit");
                command.arg(format!("--nofile={limit}:")).arg("--").arg(plughost_bin());
                command
            }
            (None, None) => Command::new(plughost_bin()),
            (Some(uid), _) => {
                // The binary must be reachable by that user: a copy when a folder on its way is not.
                let mut program = plughost_bin();
                let open_to_all = program.ancestors().skip(1).all(|folder| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::metadata(folder).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
                });
                if !open_to_all {
                    let copy = dir.path().join("plughost");
                    std::fs::copy(&program, &copy).expect("copy plughost");
                    program = copy;
                }
                give_to(dir.path(), uid);
                let mut command = Command::new("setpriv");
                let id = uid.to_string();
                command.args(["--reuid", &id, "--regid", &id, "--clear-groups"]).arg(program);
                command
            }
        };
        command
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env("PLUGINS_DIR", &plugins_dir)
            .env("DATA_DIR", dir.path().join("data"))
            .env("BIND", "127.0.0.1:0")
            .env("ADMIN_UUID", ADMIN_UUID)
            .env("ADMIN_TOTP_SECRET", ADMIN_SECRET)
            .env("SECRET_KEY", SECRET_KEY)
            .env_remove("MONGODB_URI")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let mappings = self
            .inherited
            .iter()
            .enumerate()
            .map(|(i, name)| command_fds::FdMapping {
                parent_fd: std::fs::File::open(dir.path().join(name)).expect("open inherited file").into(),
                child_fd: 9 + i as i32,
            })
            .collect();
        command_fds::CommandFdExt::fd_mappings(&mut command, mappings).expect("inherited descriptors");
        let mut env: Vec<(String, String)> = vec![
            ("PLUGINS_DIR".into(), plugins_dir.display().to_string()),
            ("DATA_DIR".into(), dir.path().join("data").display().to_string()),
            ("ADMIN_UUID".into(), ADMIN_UUID.into()),
            ("ADMIN_TOTP_SECRET".into(), ADMIN_SECRET.into()),
            ("SECRET_KEY".into(), SECRET_KEY.into()),
        ];
        env.extend(self.env.iter().cloned());
        let mut child = command.spawn().expect("spawn plughost");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stall = stalled.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                // A stalled log collector: the pipe is kept open and not read.
                if stall.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                let Ok(n) = err_pipe.read(&mut buf) else { break };
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
                let addr = line
                    .rsplit("http://")
                    .next()
                    .and_then(|a| a.trim().parse().ok())
                    .unwrap_or_else(|| panic!("unexpected stdout line: {line}"));
                return Launch::Running(App {
                    child,
                    addr,
                    stderr,
                    stalled,
                    _dir: dir,
                    admin_token: std::sync::OnceLock::new(),
                    env,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Launch::Exited {
                    status,
                    stderr: stderr.lock().unwrap().clone(),
                };
            }
            assert!(
                Instant::now() < deadline,
                "plughost did not start within 60 s:\n{}",
                stderr.lock().unwrap()
            );
        }
    }
}

/// Hands `path` and everything under it to `uid`.
fn give_to(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown");
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read dir").flatten() {
            give_to(&entry.path(), uid);
        }
    }
}

enum Launch {
    Running(App),
    Exited { status: ExitStatus, stderr: String },
}

/// A running server; killed (by its PID) when dropped.
pub struct App {
    child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    /// Set to stop reading the server's stderr (its pipe stays open).
    stalled: Arc<std::sync::atomic::AtomicBool>,
    _dir: tempfile::TempDir,
    admin_token: std::sync::OnceLock<String>,
    /// The variables the server was started with, for CLI commands on the same store.
    env: Vec<(String, String)>,
}

/// A server with the example plugins.
pub fn examples() -> App {
    Setup::default().plugins(EXAMPLES).start()
}

impl App {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn client() -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client")
    }

    pub fn get(&self, path: &str) -> Reply {
        Reply::from(Self::client().get(self.url(path)).send().expect("GET"))
    }

    pub fn send(&self, method: &str, path: &str, json: Option<&Value>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = Self::client().request(method, self.url(path));
        if let Some(body) = json {
            request = request.json(body);
        }
        Reply::from(request.send().expect("request"))
    }

    /// Sends raw bytes (for requests an HTTP client would tidy up) and reads the whole answer.
    pub fn raw(&self, request: &[u8]) -> Reply {
        let mut stream = TcpStream::connect(self.addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        stream.write_all(request).expect("write");
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        Reply::parse(&bytes)
    }

    /// A bearer token for the admin, exchanged once per server for a fresh code.
    pub fn admin_token(&self) -> String {
        self.admin_token
            .get_or_init(|| {
                // Try this step's code and the next (a code is single-use; ±1 step is accepted).
                for offset in [0, 30] {
                    let body = serde_json::json!({"uuid": ADMIN_UUID, "totp": code_at(ADMIN_SECRET, now() + offset)});
                    let reply = self.send("POST", "/rest/auth/token", Some(&body));
                    if reply.status == 200 {
                        return reply.json()["token"].as_str().expect("token").to_owned();
                    }
                }
                panic!("no admin token:\n{}", self.logs());
            })
            .clone()
    }

    /// A request with the admin's bearer token.
    pub fn admin(&self, method: &str, path: &str, json: Option<&Value>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = Self::client().request(method, self.url(path)).bearer_auth(self.admin_token());
        if let Some(body) = json {
            request = request.json(body);
        }
        Reply::from(request.send().expect("request"))
    }

    /// Runs `plughost ARGS…` with the server's configuration (same store); returns its output.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(plughost_bin())
            .args(args)
            .current_dir(self._dir.path())
            .env_remove("MONGODB_URI")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run plughost")
    }

    /// A request with extra headers.
    pub fn with_headers(&self, method: &str, path: &str, headers: &[(&str, &str)], json: Option<&Value>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = Self::client().request(method, self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = json {
            request = request.json(body);
        }
        Reply::from(request.send().expect("request"))
    }

    /// The plugins folder the server watches.
    pub fn plugins_dir(&self) -> PathBuf {
        self._dir.path().join("plugins")
    }

    /// The PID of the process serving requests (the worker under the supervisor).
    pub fn worker_pid(&self) -> u64 {
        self.admin("GET", "/health", None).json()["process"]["pid"]
            .as_u64()
            .expect("process.pid in /health")
    }

    /// The supervisor's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops reading the server's log, as a stalled collector would; `false` resumes.
    pub fn stall_log(&self, stalled: bool) {
        self.stalled.store(stalled, std::sync::atomic::Ordering::Relaxed);
    }

    /// Everything the server wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits (at most `within`) for the process to exit.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl From<reqwest::blocking::Response> for Reply {
    fn from(response: reqwest::blocking::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = response.bytes().expect("body").to_vec();
        Reply { status, headers, body }
    }
}

impl Reply {
    fn parse(bytes: &[u8]) -> Reply {
        let split = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(bytes)));
        let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = bytes[split + 4..].to_vec();
        if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
            body = dechunk(&body);
        }
        Reply { status, headers, body }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the status and the shape every error shares; returns the body.
    pub fn error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body = self.json();
        assert_eq!(body["status"], status, "{body}");
        assert_eq!(body["error"], code, "{body}");
        assert!(body["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
        let id = body["error_id"].as_str().expect("error_id");
        uuid::Uuid::parse_str(id).expect("error_id is a UUID");
        assert!(self.header("x-request-id").is_some(), "X-Request-Id missing");
        body
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

/// The ten positional segments of the reference framework's examples.
pub const TEN: &str = "1/2/3/4/5/6/7/8/9/10";
/// Its query string.
pub const ABCD: &str = "a=1&b=2&c=3&d=4";

/// Its JSON body.
pub fn reference_body() -> Value {
    serde_json::json!({"args": [1, 2, 3, 4, 5, 6], "name1": "one", "name2": "two", "name3": "three", "name4": "four"})
}

/// The `many` fixture with its module name (8 characters, like `many_000`) and its marker letter
/// patched in, making a distinct module or version from one build.
pub fn many(name: &str, mark: char) -> Vec<u8> {
    assert_eq!(name.len(), 8, "module names patched into `many` are 8 characters long");
    let mut bytes = std::fs::read(plugin_file("many")).expect("read libmany.so");
    let patch = |bytes: &mut Vec<u8>, from: &[u8], to: &[u8]| {
        let at = bytes.windows(from.len()).position(|w| w == from).expect("marker in libmany.so");
        bytes[at..at + to.len()].copy_from_slice(to);
    };
    patch(&mut bytes, b"many_000", name.as_bytes());
    patch(&mut bytes, b"mark-A", format!("mark-{mark}").as_bytes());
    bytes
}

/// Writes a file the way deploy tools do: a hidden temporary file, then a rename into place.
pub fn write_by_rename(dir: &Path, name: &str, bytes: &[u8]) {
    let temp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temp, bytes).expect("write temp");
    std::fs::rename(&temp, dir.join(name)).expect("rename into place");
}

/// The status record of one file in the plugins folder (`GET /rest/admin/plugins`); null if none.
pub fn status_of(app: &App, file: &str) -> Value {
    status_where(app, "file", file)
}

/// The first status record (`GET /rest/admin/plugins`) whose `key` is `value`; null if none.
pub fn status_where(app: &App, key: &str, value: &str) -> Value {
    let all = app.admin("GET", "/rest/admin/plugins", None).json();
    all["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[key] == value)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Polls `check` until it holds or `timeout` passes; returns how long it took.
pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Every process below `server` (at any depth) running `plughost worker`: with a PID namespace,
/// three per worker (the server's child, which waits outside the namespace, the namespace's init
/// and the worker itself).
pub fn sandbox_processes(server: u64) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let is_worker = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"worker"));
        if is_worker && descends_from(pid, server as u32) {
            found.push(pid);
        }
    }
    found
}

/// The processes below `server` that run the plugin in `file` (`librogue.so`): those that mapped
/// the worker's in-memory copy of the library, which the worker names `plughost:<file>`.
pub fn plugin_processes(server: u64, file: &str) -> Vec<u32> {
    let mark = format!("/memfd:plughost:{file} ");
    sandbox_processes(server)
        .into_iter()
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| maps.contains(&mark)))
        .collect()
}

/// A process's parent, as the host's namespace sees it.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
}

fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..8 {
        match parent_of(pid) {
            Some(parent) if parent == ancestor => return true,
            Some(parent) if parent > 1 => pid = parent,
            _ => return false,
        }
    }
    false
}

/// Whether a process is running (not gone, not a zombie nobody reaped yet).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A process's resident memory, in KiB.
pub fn rss_kib(pid: u64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Makes sure Python can import `module`, installing `package` from PyPI once if it cannot.
pub fn ensure_python_module(module: &str, package: &str) {
    static INSTALLED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut installed = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    if installed.iter().any(|m| m == module) {
        return;
    }
    let present = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", package])
            .status()
            .expect("run pip");
        assert!(
            status.success(),
            "could not install {package} from PyPI (python3 -m pip install {package})"
        );
    }
    installed.push(module.to_owned());
}
