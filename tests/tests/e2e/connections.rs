//! Connections as an outsider can hold them: idle, half-sent, too large, in numbers. The server
//! keeps answering others, frees what they hold, and answers what a client can read.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use crate::support::Setup;

/// Whether the server closed `stream` (a read returns end of file or a reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_and_slow_connections_cannot_take_the_server() {
    let app = Setup::default()
        .plugins(&["hello"])
        .soft_file_limit(256)
        .env("HEADER_READ_TIMEOUT_MS", "1500")
        .env("BODY_READ_TIMEOUT_MS", "1500")
        .start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", app.worker_pid())).unwrap();
    let files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_owned();
    assert!(!files.contains(" 256 "), "the soft file limit was not raised: {files}");
    // 300 anonymous sockets that never send a byte: more than the 256 descriptors it started with.
    let mut idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(app.addr).unwrap()).collect();
    let reply = app.get("/rest/services/hello/greet/?name=still-here");
    assert_eq!(reply.status, 200, "the server stopped answering: {}", reply.text());
    // They are closed once the header timeout passes.
    let started = Instant::now();
    let all_closed = idle.iter_mut().all(|s| closed_within(s, Duration::from_secs(5)));
    assert!(all_closed, "idle connections were kept");
    eprintln!("300 idle connections closed after {:?}", started.elapsed());

    // A keep-alive connection that goes quiet after a request is closed too.
    let mut kept = TcpStream::connect(app.addr).unwrap();
    kept.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 1024];
    assert!(kept.read(&mut buf).unwrap() > 0);
    assert!(
        closed_within(&mut kept, Duration::from_secs(5)),
        "an idle keep-alive connection was kept"
    );

    // Headers trickled a byte at a time (slowloris) never make a request: closed too.
    let mut trickle = TcpStream::connect(app.addr).unwrap();
    trickle.write_all(b"GET /ping HTTP/1.1\r\n").unwrap();
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(8) {
        if trickle.write_all(b"X").is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut trickle, Duration::from_millis(400)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "a connection trickling its headers was kept for {:?}", started.elapsed());
    eprintln!("a trickling connection was closed after {:?}", started.elapsed());

    // A body that stops half-way gets 408, and its connection goes.
    let mut slow = TcpStream::connect(app.addr).unwrap();
    slow.write_all(
        b"POST /rest/services/hello/greet/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"name\":",
    )
    .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("BODY_TIMEOUT"), "{answer}");
}

#[test]
fn a_client_that_writes_its_whole_body_first_reads_the_413() {
    let app = Setup::default().plugins(&["hello"]).env("MAX_BODY_BYTES", "1048576").start();
    for chunked in [false, true] {
        let mut stream = TcpStream::connect(app.addr).unwrap();
        let body = vec![b'x'; 3 << 20];
        let head = if chunked {
            "POST /rest/services/hello/greet/ HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_owned()
        } else {
            format!(
                "POST /rest/services/hello/greet/ HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
        };
        stream.write_all(head.as_bytes()).unwrap();
        if chunked {
            for piece in body.chunks(64 * 1024) {
                stream.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).unwrap();
                stream.write_all(piece).unwrap();
                stream.write_all(b"\r\n").unwrap();
            }
            stream.write_all(b"0\r\n\r\n").unwrap();
        } else {
            // As Python's http.client does: every byte written before anything is read.
            stream
                .write_all(&body)
                .expect("the server reset the connection while the body was sent");
        }
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = vec![0u8; 8192];
        let n = stream.read(&mut answer).expect("no answer could be read");
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "chunked={chunked}: {answer}");
        assert!(answer.contains("PAYLOAD_TOO_LARGE"), "chunked={chunked}: {answer}");
    }
}
