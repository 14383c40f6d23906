//! Helpers shared by the integration tests. Every server binds port 0.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use papo::grpc::{GrpcConfig, GrpcServer};
use papo::ws::{WsConfig, WsServer};

/// Starts an in-process WebSocket server on a free port.
pub fn ws_server(config: WsConfig) -> SocketAddr {
    let server = WsServer::bind("127.0.0.1:0", config).expect("bind ws");
    let addr = server.local_addr().expect("local addr");
    thread::spawn(move || server.run());
    addr
}

/// Starts an in-process gRPC server on a free port.
pub fn grpc_server() -> GrpcServer {
    GrpcServer::start("127.0.0.1:0", &GrpcConfig::default()).expect("start grpc")
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
