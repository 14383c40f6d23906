//! Helpers shared by the integration tests: servers on free ports, raw
//! WebSocket frames, gRPC clients, and waits that fail instead of hanging.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::pin;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use grpcio::{Channel, ChannelBuilder, EnvBuilder};
use papo::chat::Hub;
use papo::config::ServeConfig;
use papo::executor::block_on_until;
use papo::grpc::{GrpcConfig, GrpcServer};
use papo::metrics::Metrics;
use papo::proto::chat::message::Kind;
use papo::proto::chat::Message as ChatMessage;
use papo::proto::chat_grpc::ChatServiceClient;
use papo::proto::health_grpc::HealthClient;
use papo::ws::{WsConfig, WsHandle, WsServer};

/// How long any single wait in a test may take before the test fails.
pub const SOON: Duration = Duration::from_secs(10);
/// How long a `papo` command run by a test may take (a bench runs longest).
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

/// A client WebSocket as the tests open them.
pub type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

/// `tungstenite::connect`, with reads that fail after [`SOON`] instead of
/// hanging a test on a server that never answers.
pub fn connect(
    url: impl tungstenite::client::IntoClientRequest,
) -> tungstenite::Result<(Ws, tungstenite::handshake::client::Response)> {
    let (ws, response) = tungstenite::connect(url)?;
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(SOON))?;
    }
    Ok((ws, response))
}

/// `Command::output` with a deadline: a command still running after
/// [`RUN_LIMIT`] is killed and fails the test.
pub trait OutputWithin {
    fn output_within(&mut self) -> std::process::Output;
}

impl OutputWithin for Command {
    fn output_within(&mut self) -> std::process::Output {
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let drain = |mut pipe: Box<dyn Read + Send>| {
            thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        };
        let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
        let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
        let status = exit_within(&mut child, RUN_LIMIT);
        let output = std::process::Output {
            status: status.unwrap_or_else(|| child.wait().expect("wait")),
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        };
        assert!(
            status.is_some(),
            "{self:?} did not exit within {RUN_LIMIT:?}; it printed\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

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
    let hub = Hub::new(ServeConfig::default().chat);
    let server = WsServer::bind("127.0.0.1:0", config, Arc::clone(&metrics), hub, None, None)
        .expect("bind ws");
    let addr = server.local_addr().expect("local addr");
    let handle = server.handle().expect("handle");
    thread::spawn(move || server.run());
    TestWs {
        addr,
        handle,
        metrics,
    }
}

/// Starts an in-process gRPC server on a free port.
pub fn grpc_server() -> GrpcServer {
    grpc_server_with(ServeConfig::default().grpc)
}

pub fn grpc_server_with(config: GrpcConfig) -> GrpcServer {
    let hub = Hub::new(ServeConfig::default().chat);
    GrpcServer::start(
        "127.0.0.1:0",
        &config,
        Arc::new(Metrics::new()),
        hub,
        None,
        None,
    )
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

/// A kibibyte figure from `/proc/PID/status` (`VmRSS:`, `VmHWM:`, …).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
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

/// Waits for a child to exit, for at most `limit`; then kills it and fails.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    exit_within(child, limit).unwrap_or_else(|| panic!("process did not exit within {limit:?}"))
}

/// Waits for a child to exit, for at most `limit`; then kills it (`None`).
fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Path of the `papo` binary built for these tests.
pub fn papo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_papo"))
}

/// A `papo serve` child process, the addresses it logged, and every line
/// it logged so far.
pub struct ServeProcess {
    pub child: Child,
    pub ws: Option<String>,
    pub grpc: Option<String>,
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary `serve` runs: this build's `papo`, or another named by
/// `PAPO_SERVE_BIN` (to hold an older build to the same tests).
fn serve_binary() -> Command {
    match std::env::var_os("PAPO_SERVE_BIN") {
        Some(bin) => Command::new(bin),
        None => papo(),
    }
}

/// Runs `papo serve ARGS` on free ports and waits for its "listening" lines.
pub fn serve(args: &[&str]) -> ServeProcess {
    serve_logging(args, "info")
}

/// [`serve`] with `RUST_LOG` set to `level`.
pub fn serve_logging(args: &[&str], level: &str) -> ServeProcess {
    let mut child = serve_binary()
        .arg("serve")
        .args(["--ws-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", level)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn papo serve");
    let stderr = child.stderr.take().expect("stderr");
    let want_ws = !args.contains(&"--no-ws");
    let want_grpc = !args.contains(&"--no-grpc");
    let (tx, rx) = mpsc::channel();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = Arc::clone(&log);
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut lines) = lines.lock() {
                lines.push(line.clone());
            }
            if let Some(rest) = line.split("ws listening on ").nth(1) {
                let rest = rest.split("://").nth(1).unwrap_or(rest);
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
        log,
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

/// A channel to a gRPC server, allowed to send more than any server accepts.
pub fn channel(addr: &str) -> Channel {
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    ChannelBuilder::new(env)
        .max_send_message_len(64 << 20)
        .connect(addr)
}

pub fn chat_client(addr: &str) -> ChatServiceClient {
    ChatServiceClient::new(channel(addr))
}

pub fn health_client(addr: &str) -> HealthClient {
    HealthClient::new(channel(addr))
}

/// The next item of a gRPC stream (`None`: it ended), failing the test if
/// none comes within [`SOON`].
pub fn next_within<S: Stream + Unpin>(stream: &mut S, what: &str) -> Option<S::Item> {
    let mut next = pin!(stream.next());
    block_on_until(next.as_mut(), Some(Instant::now() + SOON))
        .unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// Completes a raw handshake on `path` with extra header lines; returns the
/// socket (reads time out after [`SOON`]) and the response's status line.
pub fn raw_upgrade(addr: SocketAddr, path: &str, extra: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(SOON)).expect("timeout");
    let request = upgrade_request(path).replacen("\r\n\r\n", &format!("\r\n{extra}\r\n"), 1);
    stream.write_all(request.as_bytes()).expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.lines().next().unwrap_or_default().to_owned();
    (stream, status)
}

/// A raw WebSocket on `/ws`, past its `101`.
pub fn raw_websocket(addr: SocketAddr) -> TcpStream {
    let (stream, status) = raw_upgrade(addr, "/ws", "");
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    stream
}

/// A client frame of up to 64 KiB; `mask` false makes it illegal.
pub fn client_frame(first_byte: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let key = [0x12u8, 0x34, 0x56, 0x78];
    let mask_bit = if mask { 0x80 } else { 0 };
    let mut out = vec![first_byte];
    match u16::try_from(payload.len()) {
        Ok(len) if len < 126 => out.push(len as u8 | mask_bit),
        Ok(len) => {
            out.push(126 | mask_bit);
            out.extend_from_slice(&len.to_be_bytes());
        }
        Err(_) => panic!("client_frame takes up to 64 KiB"),
    }
    if mask {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads the server's next frame and returns its close code, if it is a
/// close frame.
pub fn read_close_code(stream: &mut TcpStream) -> Option<u16> {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).ok()?;
    let len = (header[1] & 0x7f) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).ok()?;
    (header[0] & 0x0f == 0x8 && len >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

/// Frames that break RFC 6455, and the close code each must get.
pub fn protocol_violations() -> [(&'static str, Vec<u8>, u16); 4] {
    [
        (
            "invalid UTF-8 in text",
            client_frame(0x81, b"\xff\xfe", true),
            1007,
        ),
        (
            "an unmasked client frame",
            client_frame(0x81, b"hi", false),
            1002,
        ),
        ("a reserved opcode", client_frame(0x83, b"", true), 1002),
        ("a fragmented ping", client_frame(0x09, b"", true), 1002),
    ]
}

/// A valid WebSocket upgrade request for `path`.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A `papo chat` process with its stdin and stdout piped.
pub struct Terminal {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Terminal {
    pub fn start(args: &[&str]) -> Terminal {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = papo()
            .arg("chat")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Terminal { child, lines }
    }

    pub fn say(&mut self, text: &str) {
        use std::io::Write;
        writeln!(self.child.stdin.as_mut().unwrap(), "{text}").unwrap();
    }

    /// Waits for a printed line ending with `suffix`.
    pub fn expect(&self, suffix: &str) {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.ends_with(suffix) => return,
                Ok(_) => continue,
                Err(_) => panic!("never printed a line ending with {suffix:?}"),
            }
        }
    }
}

/// A `redis-server` of the tests' own, on a free loopback port, persistence
/// off; killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Persistence: off, or an append-only file in this directory.
    persistence: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(vec![
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ])
    }

    /// A server that writes every change to an append-only file in `dir`
    /// before answering (`appendfsync always`): a restart loses nothing.
    pub fn start_persistent(dir: &std::path::Path) -> RedisServer {
        let dir = dir.to_str().expect("UTF-8 path").to_owned();
        let args = [
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            &dir,
        ];
        RedisServer::start_with(args.iter().map(|a| a.to_string()).collect())
    }

    /// A server that writes its data to `dir` only when told ([`Self::save`]):
    /// a restart comes back with what the last save had.
    pub fn start_with_dumps(dir: &std::path::Path) -> RedisServer {
        let dir = dir.to_str().expect("UTF-8 path").to_owned();
        let args = ["--save", "", "--appendonly", "no", "--dir", &dir];
        RedisServer::start_with(args.iter().map(|a| a.to_string()).collect())
    }

    /// A replica of `primary`, persistence off.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let of = format!("127.0.0.1 {}", primary.port);
        RedisServer::start_with(vec![
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--replicaof".into(),
            of,
        ])
    }

    /// How many replicas are connected to this server and caught up enough
    /// to be counted (`INFO replication`'s `connected_slaves`).
    pub fn replicas_online(&self) -> usize {
        let info = self.call(&["INFO", "replication"]);
        let info = info.as_str().unwrap_or_default().to_owned();
        info.lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .count()
    }

    /// One command, answered.
    pub fn call(&self, args: &[&str]) -> papo::redis::resp::Value {
        let address = self.url().parse().expect("the test's own URL");
        let mut connection =
            papo::redis::resp::Connection::open(&address, Duration::from_secs(5), 1 << 26)
                .expect("connect to redis");
        connection.call(args).expect("the command's reply")
    }

    /// The keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.call(&["KEYS", pattern])
            .into_array()
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect()
    }

    /// `SAVE`: a dump of everything now, which a restart loads.
    pub fn save(&self) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        s.write_all(b"SAVE\r\n").expect("SAVE");
        let mut ok = [0; 5];
        s.read_exact(&mut ok).expect("SAVE's answer");
        assert_eq!(&ok, b"+OK\r\n", "SAVE");
    }

    fn start_with(persistence: Vec<String>) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = RedisServer {
            port,
            child: None,
            persistence,
        };
        redis.restart();
        redis
    }

    /// `redis://…` for `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would: `SIGKILL`).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port (empty, unless persistent), and
    /// waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--protected-mode", "no"])
            .args(&self.persistence)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian: apt-get install redis-server; `make test` installs it)");
        self.child = Some(child);
        eventually(SOON, "redis-server to answer", || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
                return false;
            };
            let mut pong = [0; 7];
            s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut pong).is_ok()
                && &pong == b"+PONG\r\n"
        });
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The kind of a chat message.
pub fn kind(m: &ChatMessage) -> Kind {
    m.kind.enum_value_or_default()
}

/// The next chat message a WebSocket member receives, decoded from JSON.
pub fn ws_next(ws: &mut Ws) -> ChatMessage {
    loop {
        match ws.read().expect("ws read") {
            tungstenite::Message::Text(json) => {
                return protobuf_json_mapping::parse_from_str(json.as_str()).expect("JSON")
            }
            tungstenite::Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

/// (seq, sender, text) of the next `count` chat messages (not events).
pub fn messages(mut next: impl FnMut() -> ChatMessage, count: usize) -> Vec<(u64, String, String)> {
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        let m = next();
        if kind(&m) == Kind::MESSAGE {
            seen.push((m.seq, m.sender, m.text));
        }
    }
    seen
}

/// The close frame the server ends `ws` with, skipping what comes before it.
pub fn close_of(ws: &mut Ws) -> Option<tungstenite::protocol::CloseFrame> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(frame)) => return frame,
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}
