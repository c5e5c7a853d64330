//! A real MongoDB wire-protocol server for tests: `nx-27017` (PyPI), installed if missing and run
//! on a free loopback port with its data in a temporary folder. Stopped (by its PID) when dropped.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const LAUNCH: &str = "import sys; from nx_27017.nx_27017 import main; sys.exit(main())";

fn ensure_installed() {
    crate::support::ensure_python_module("nx_27017.nx_27017", "nx-27017");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct MongoServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl MongoServer {
    pub fn start() -> MongoServer {
        ensure_installed();
        let mut server = MongoServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        server.resume();
        server
    }

    pub fn uri(&self) -> String {
        format!(
            "mongodb://127.0.0.1:{}/?serverSelectionTimeoutMS=1500&connectTimeoutMS=1500",
            self.port
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Stops the server (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn resume(&mut self) {
        let log = std::fs::File::create(self.path("stdout.log")).unwrap();
        let child = Command::new("python3")
            .args(["-c", LAUNCH, "--host", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("--db")
            .arg(self.path("nx.db"))
            .arg("--pid-file")
            .arg(self.path("nx.pid"))
            .arg("--log-file")
            .arg(self.path("nx.log"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nx-27017");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nx-27017 did not listen: {}",
                std::fs::read_to_string(self.path("stdout.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.stop();
    }
}
