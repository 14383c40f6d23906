//! The memory bound, as a property: the attacks that once grew papo without
//! limit, run together against a release server with default flags, must
//! keep its peak RSS under the bound the README documents for them, and
//! the server must answer a fresh client afterwards.
//!
//! `PAPO_SERVE_BIN=path/to/an/older/papo cargo test --release --test memory
//! -- --nocapture` holds another build to the same attacks and prints its peak.
//! The attacks run against a plaintext server and against a TLS one.

mod common;

use common::{connect, serve, status_kib, upgrade_request, SOON};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use grpcio::{ChannelBuilder, EnvBuilder};
use papo::proto::chat::{Message as ChatMessage, SubscribeRequest};
use papo::proto::chat_grpc::ChatServiceClient;
use papo::proto::health::HealthCheckRequest;
use papo::proto::health_grpc::HealthClient;
use tungstenite::Message;

const MIB: u64 = 1 << 20;

/// `papo serve`'s defaults that the bound is made of.
const MAX_MESSAGE: usize = 4 << 20;
const INBOUND_BUDGET: u64 = 256 * MIB;
const HISTORY_BUDGET: u64 = 64 * MIB;

/// The attacks' scale.
const UNFINISHED_WS: usize = 80;
const AMPLIFYING_WS: usize = 32;
const STUCK_SUBSCRIBERS: usize = 22;
const FLOOD_SENDERS: usize = 3;
const FLOOD_MESSAGES: usize = 60;
const FORGED_GRPC: usize = 8;
const IDLE_GRPC_CONNECTIONS: usize = 200;
const STREAMS_PER_CONNECTION: usize = 5;
const GZIP_BOMBS: usize = 2;
const SILENT_MEMBERS: usize = 20;
const NEW_ROOMS: usize = 2000;
const REJOINS: usize = 300;

/// A masked client frame of any length.
fn frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x37u8, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// The server under attack: its ports, and the CA that signed its
/// certificate when it speaks TLS.
#[derive(Clone)]
struct Target {
    ws: SocketAddr,
    grpc: String,
    ca: Option<PathBuf>,
}

/// A WebSocket client's socket, plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl Target {
    /// A raw WebSocket on `path`, past its `101` (`None`: refused).
    fn upgrade(&self, path: &str) -> Option<Stream> {
        let socket = TcpStream::connect(self.ws).ok()?;
        socket.set_read_timeout(Some(SOON)).ok()?;
        let mut stream = match &self.ca {
            None => Stream::Plain(socket),
            Some(ca) => {
                let config = papo::tls::client_config(Some(ca)).ok()?;
                let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
                let session = rustls::ClientConnection::new(config, name).ok()?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(session, socket)))
            }
        };
        stream.write_all(upgrade_request(path).as_bytes()).ok()?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).ok()? == 1 {
            head.push(byte[0]);
        }
        head.starts_with(b"HTTP/1.1 101").then_some(stream)
    }

    /// A gRPC client on a connection of its own, whose window stays small.
    fn channel(&self) -> grpcio::Channel {
        let env = Arc::new(EnvBuilder::new().cq_count(1).build());
        let builder = ChannelBuilder::new(env)
            .use_local_subchannel_pool(true)
            .http2_bdp_probe(false)
            .stream_initial_window_size(64 << 10)
            .max_receive_message_len(64 << 20)
            .max_send_message_len(-1);
        self.secured(builder).connect(&self.grpc)
    }

    fn secured(&self, builder: ChannelBuilder) -> ChannelBuilder {
        let tls = papo::client::ClientTls {
            grpc: self.ca.is_some(),
            ca: self.ca.clone(),
            identity: None,
        };
        papo::client::grpc_tls(builder, &tls).expect("the CA")
    }
}

/// A3: most of a largest message, fragmented, never finished; kept alive
/// with unsolicited pongs until `done`.
fn hold_unfinished_message(target: &Target, done: &AtomicBool) {
    let Some(mut stream) = target.upgrade("/ws") else {
        return;
    };
    let chunk = vec![b'x'; 64 << 10];
    let frames = MAX_MESSAGE / chunk.len() - 1;
    for n in 0..frames {
        let opcode = if n == 0 { 0x01 } else { 0x00 };
        if stream.write_all(&frame(opcode, &chunk)).is_err() {
            return; // closed: the budget said no
        }
    }
    while !done.load(Ordering::Relaxed) {
        if stream.write_all(&frame(0x8a, b"alive")).is_err() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A4: one largest message of `{"members": ["", "", …]}` into a room.
fn send_amplifying_json(target: &Target, n: usize) {
    let path = format!("/chat?room=amp&name=a{n}");
    let Some(mut stream) = target.upgrade(&path) else {
        return;
    };
    let mut json = String::from(r#"{"members":["""#);
    while json.len() < MAX_MESSAGE - 16 {
        json.push_str(r#","""#);
    }
    json.push_str("]}");
    let _ = stream.write_all(&frame(0x81, json.as_bytes()));
    // Whatever the answer (1007, or 1013 from the budget), read it.
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// A client on a connection of its own, whose window stays small.
fn narrow_channel(addr: &str) -> grpcio::Channel {
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    ChannelBuilder::new(env)
        .use_local_subchannel_pool(true)
        .http2_bdp_probe(false)
        .stream_initial_window_size(64 << 10)
        .max_receive_message_len(64 << 20)
        .max_send_message_len(64 << 20)
        .connect(addr)
}

#[test]
fn the_attacks_together_stay_under_the_documented_bound() {
    attacks_together(false);
}

#[test]
fn the_attacks_together_over_tls_stay_under_the_documented_bound() {
    attacks_together(true);
}

/// One attack at a time: each measures its own server's peak, and two at
/// once would starve each other of the machine's cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn attacks_together(tls: bool) {
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = std::env::temp_dir().join(format!("papo-memory-tls-{}", std::process::id()));
    let files = tls.then(|| papo::devcert::write(&dir, &[]).expect("dev-cert"));
    let args: Vec<String> = match &files {
        Some(f) => [
            "--tls-cert",
            f.cert.to_str().unwrap(),
            "--tls-key",
            f.key.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec(),
        None => Vec::new(),
    };
    let server = serve(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let pid = server.child.id();
    let target = Target {
        ws: server.ws.as_deref().unwrap().parse().unwrap(),
        grpc: server.grpc.clone().unwrap(),
        ca: files.as_ref().map(|f| f.ca.clone()),
    };
    let baseline = status_kib(pid, "VmRSS:") * 1024;
    let done = Arc::new(AtomicBool::new(false));
    let mut holders = Vec::new();

    // A1: gRPC members that stop reading, then a flood into their room.
    let subscribers: Vec<_> = (0..STUCK_SUBSCRIBERS)
        .map(|n| {
            let client = ChatServiceClient::new(target.channel());
            let request = SubscribeRequest {
                room: "heavy".into(),
                name: format!("stuck{n}"),
                ..Default::default()
            };
            let mut stream = client.subscribe(&request).unwrap();
            assert!(common::next_within(&mut stream, "a JOIN").is_some());
            (client, stream)
        })
        .collect();
    // A2: idle connections with open streams.
    let idle: Vec<_> = (0..IDLE_GRPC_CONNECTIONS)
        .map(|_| {
            let client = HealthClient::new(target.channel());
            let watches: Vec<_> = (0..STREAMS_PER_CONNECTION)
                .filter_map(|_| client.watch(&HealthCheckRequest::default()).ok())
                .collect();
            (client, watches)
        })
        .collect();
    // A6: chat members that stop reading, for a text of control
    // characters (six times its size as JSON) said in their room.
    let silent: Vec<_> = (0..SILENT_MEMBERS)
        .map(|n| target.upgrade(&format!("/chat?room=ctl&name=s{n}")))
        .collect();
    let start = Arc::new(Barrier::new(
        UNFINISHED_WS + AMPLIFYING_WS + FLOOD_SENDERS + FORGED_GRPC + GZIP_BOMBS + 4,
    ));
    for _ in 0..UNFINISHED_WS {
        let (done, start, target) = (Arc::clone(&done), Arc::clone(&start), target.clone());
        holders.push(thread::spawn(move || {
            start.wait();
            hold_unfinished_message(&target, &done);
        }));
    }
    let mut attackers = Vec::new();
    for n in 0..AMPLIFYING_WS {
        let (start, target) = (Arc::clone(&start), target.clone());
        attackers.push(thread::spawn(move || {
            start.wait();
            send_amplifying_json(&target, n);
        }));
    }
    for _ in 0..FLOOD_SENDERS {
        let (target, start) = (target.clone(), Arc::clone(&start));
        attackers.push(thread::spawn(move || {
            let client = ChatServiceClient::new(target.channel());
            let text = "x".repeat(MIB as usize);
            start.wait();
            for _ in 0..FLOOD_MESSAGES {
                let message = ChatMessage {
                    sender: "flood".into(),
                    room: "heavy".into(),
                    text: text.clone(),
                    ..Default::default()
                };
                let _ = client.send_message(&message);
            }
        }));
    }
    for _ in 0..FORGED_GRPC {
        let (target, start) = (target.clone(), Arc::clone(&start));
        attackers.push(thread::spawn(move || {
            let client = ChatServiceClient::new(target.channel());
            let forged = ChatMessage {
                sender: "svc".into(),
                members: vec![String::new(); MAX_MESSAGE / 2 - 64],
                ..Default::default()
            };
            start.wait();
            let _ = client.send_message(&forged);
        }));
    }
    // A5: messages that inflate a thousandfold, compressed.
    for _ in 0..GZIP_BOMBS {
        let (target, start) = (target.clone(), Arc::clone(&start));
        attackers.push(thread::spawn(move || {
            let env = Arc::new(EnvBuilder::new().cq_count(1).build());
            let builder = ChannelBuilder::new(env)
                .max_send_message_len(-1)
                .default_compression_algorithm(grpcio::CompressionAlgorithms::GRPC_COMPRESS_GZIP);
            let channel = target.secured(builder).connect(&target.grpc);
            let bomb = ChatMessage {
                sender: "bomb".into(),
                room: "heavy".into(),
                text: "a".repeat(100 << 20),
                ..Default::default()
            };
            start.wait();
            assert!(ChatServiceClient::new(channel).send_message(&bomb).is_err());
        }));
    }
    {
        let (target, start) = (target.clone(), Arc::clone(&start));
        attackers.push(thread::spawn(move || {
            let client = ChatServiceClient::new(target.channel());
            let control = ChatMessage {
                sender: "svc".into(),
                room: "ctl".into(),
                text: "\u{1}".repeat(MAX_MESSAGE / 6 - 1024),
                ..Default::default()
            };
            start.wait();
            client
                .send_message(&control)
                .expect("a text whose JSON fits");
        }));
    }
    // A7: many new rooms, each kept for the history TTL.
    {
        let (target, start) = (target.clone(), Arc::clone(&start));
        attackers.push(thread::spawn(move || {
            let client = ChatServiceClient::new(target.channel());
            start.wait();
            for n in 0..NEW_ROOMS {
                let message = ChatMessage {
                    sender: "svc".into(),
                    room: format!("new{n}"),
                    text: "oi".into(),
                    ..Default::default()
                };
                let _ = client.send_message(&message);
            }
        }));
    }
    // A8: a member that reconnects in a loop.
    {
        let (start, target) = (Arc::clone(&start), target.clone());
        attackers.push(thread::spawn(move || {
            start.wait();
            for _ in 0..REJOINS {
                drop(target.upgrade("/chat?room=heavy&name=churn"));
            }
        }));
    }
    start.wait();
    let began = Instant::now();
    for attacker in attackers {
        attacker.join().unwrap();
    }
    // The holders are all in (or refused) once their bytes are sent.
    thread::sleep(Duration::from_millis(500));
    let peak = status_kib(pid, "VmHWM:") * 1024;
    let grown = peak.saturating_sub(baseline);
    println!(
        "{}: baseline RSS {} MiB, peak RSS {} MiB (+{} MiB) after {:?}",
        if tls { "TLS" } else { "plaintext" },
        baseline / MIB,
        peak / MIB,
        grown / MIB,
        began.elapsed()
    );

    // The bound the README documents for these attacks: the inbound budget,
    // the rooms' logs' budget, the largest messages in hand at once (every attacking sender's, on
    // either protocol, as received and as parsed), each room's shared queue
    // bytes, and a fixed cost per connection.
    let senders = (AMPLIFYING_WS + FLOOD_SENDERS + FORGED_GRPC + GZIP_BOMBS + 2) as u64;
    let connections = (UNFINISHED_WS
        + AMPLIFYING_WS
        + STUCK_SUBSCRIBERS
        + FLOOD_SENDERS
        + FORGED_GRPC
        + IDLE_GRPC_CONNECTIONS
        + GZIP_BOMBS
        + SILENT_MEMBERS
        + 2) as u64;
    let per_connection = 256 << 10;
    // Two rooms' shared queue bytes (the flood's and the control text's),
    // and what each new room costs besides its log.
    let rooms = 2 * 2 * (MAX_MESSAGE as u64 + 1024) + NEW_ROOMS as u64 * 1024;
    let bound = INBOUND_BUDGET
        + HISTORY_BUDGET
        + senders * 2 * MAX_MESSAGE as u64
        + rooms
        + connections * per_connection;
    assert!(
        grown <= bound,
        "peak RSS grew {} MiB, over the bound of {} MiB",
        grown / MIB,
        bound / MIB
    );

    // Still serving: a fresh client on each protocol.
    let mut fresh = match &target.ca {
        None => {
            connect(format!("ws://{}/ws", target.ws))
                .expect("a fresh WebSocket client")
                .0
        }
        Some(ca) => {
            let tls = papo::client::ClientTls {
                grpc: false,
                ca: Some(ca.clone()),
                identity: None,
            };
            papo::client::ws_connect(&format!("wss://localhost:{}/ws", target.ws.port()), &tls)
                .expect("a fresh wss client")
        }
    };
    fresh.send(Message::text("ainda aí?")).unwrap();
    assert!(matches!(fresh.read(), Ok(Message::Text(t)) if t.as_str() == "Recebido: ainda aí?"));
    let reply = ChatServiceClient::new(target.channel())
        .send_message(&ChatMessage {
            sender: "Alice".into(),
            text: "Olá".into(),
            ..Default::default()
        })
        .expect("a fresh gRPC client");
    assert_eq!(reply.reply, "Mensagem recebida: Olá");

    done.store(true, Ordering::Relaxed);
    for holder in holders {
        holder.join().unwrap();
    }
    drop((subscribers, idle, silent));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn grpc_members_share_one_copy_of_each_message() {
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // No room log: only what the members hold is measured.
    let server = serve(&["--history", "0"]);
    let pid = server.child.id();
    let grpc = server.grpc.clone().unwrap();
    const MEMBERS: usize = 20;
    const MESSAGES: usize = 3;
    const SIZE: usize = 3_000_000;
    let members: Vec<_> = (0..MEMBERS)
        .map(|n| {
            let client = ChatServiceClient::new(narrow_channel(&grpc));
            let request = SubscribeRequest {
                room: "shared".into(),
                name: format!("m{n}"),
                ..Default::default()
            };
            let mut stream = client.subscribe(&request).unwrap();
            assert!(common::next_within(&mut stream, "a JOIN").is_some());
            (client, stream)
        })
        .collect();
    let before = status_kib(pid, "VmRSS:") * 1024;
    let sender = ChatServiceClient::new(narrow_channel(&grpc));
    for _ in 0..MESSAGES {
        let message = ChatMessage {
            sender: "svc".into(),
            room: "shared".into(),
            text: "x".repeat(SIZE),
            ..Default::default()
        };
        sender.send_message(&message).unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    let grown = (status_kib(pid, "VmHWM:") * 1024).saturating_sub(before);
    println!(
        "{MEMBERS} members x {MESSAGES} x {SIZE} bytes: +{} MiB",
        grown / MIB
    );
    // Each message as published and as encoded once for every member, one
    // in hand (as received and as stored), and what each connection costs:
    // never a copy per member.
    let bound = (2 * MESSAGES * SIZE + 2 * MAX_MESSAGE + (MEMBERS + 1) * (256 << 10)) as u64;
    assert!(
        grown <= bound,
        "grew {} MiB for {MESSAGES} messages of {SIZE} bytes, over {} MiB",
        grown / MIB,
        bound / MIB
    );
    drop(members);
}
