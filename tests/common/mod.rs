//! Helpers shared by the integration tests. Every server binds port 0.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use std::sync::Arc;
use std::time::Instant;

use papo::chat::Hub;
use papo::grpc::{GrpcConfig, GrpcServer};
use papo::metrics::Metrics;
use papo::ws::{WsConfig, WsHandle, WsServer};

/// An in-process WebSocket server.
pub struct TestWs {
    pub addr: SocketAddr,
    pub handle: WsHandle,
    pub metrics: Arc<Metrics>,
}

/// Starts an in-process WebSocket server on a free port.
pub fn ws_server(config: WsConfig) -> SocketAddr {
    ws_server_with(config).addr
}

/// Starts an in-process WebSocket server on a free port, with its handle and counters.
pub fn ws_server_with(config: WsConfig) -> TestWs {
    let metrics = Arc::new(Metrics::new());
    let server =
        WsServer::bind("127.0.0.1:0", config, Arc::clone(&metrics), Hub::new()).expect("bind ws");
    let addr = server.local_addr().expect("local addr");
    let handle = server.handle();
    thread::spawn(move || server.run());
    TestWs {
        addr,
        handle,
        metrics,
    }
}

/// Starts an in-process gRPC server on a free port.
pub fn grpc_server() -> GrpcServer {
    grpc_server_with(GrpcConfig::default())
}

pub fn grpc_server_with(config: GrpcConfig) -> GrpcServer {
    GrpcServer::start("127.0.0.1:0", &config, Arc::new(Metrics::new()), Hub::new())
        .expect("start grpc")
}

/// Polls `check` until it holds, failing the test after `limit`.
pub fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// The number of threads of process `pid`.
pub fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("Threads line")
}

/// The names of the threads of process `pid`, for failure messages.
pub fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) with the pid of a child this test owns.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// Waits for a child to exit, for at most `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "process did not exit within {limit:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Path of the `papo` binary built for these tests.
pub fn papo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_papo"))
}

/// A `papo serve` child process and the addresses it logged.
pub struct ServeProcess {
    pub child: Child,
    pub ws: Option<String>,
    pub grpc: Option<String>,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `papo serve ARGS` on free ports and waits for its "listening" lines.
pub fn serve(args: &[&str]) -> ServeProcess {
    let mut child = papo()
        .arg("serve")
        .args(["--ws-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn papo serve");
    let stderr = child.stderr.take().expect("stderr");
    let want_ws = !args.contains(&"--no-ws");
    let want_grpc = !args.contains(&"--no-grpc");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("ws listening on ws://").nth(1) {
                let _ = tx.send(("ws", rest.trim_end_matches("/ws").to_owned()));
            } else if let Some(rest) = line.split("grpc listening on ").nth(1) {
                let _ = tx.send(("grpc", rest.to_owned()));
            }
        }
    });
    let mut process = ServeProcess {
        child,
        ws: None,
        grpc: None,
    };
    while (want_ws && process.ws.is_none()) || (want_grpc && process.grpc.is_none()) {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(("ws", addr)) => process.ws = Some(addr),
            Ok((_, addr)) => process.grpc = Some(addr),
            Err(_) => panic!("papo serve did not report its addresses"),
        }
    }
    process
}

/// Sends raw bytes and returns everything the server answers until it closes.
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A valid WebSocket upgrade request for `path`.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}
