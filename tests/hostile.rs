//! What a hostile peer tries on the surfaces added since 0.6 (tokens, TLS,
//! history, Redis, the gRPC listener, the thread ceiling), each answered
//! with a refusal while the server goes on serving everyone else.

mod common;

use std::path::PathBuf;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{chat_client, kind, raw_upgrade, serve, ws_next, Ws, SOON};
use grpcio::{CallOption, MetadataBuilder, RpcStatusCode};
use papo::proto::chat::message::Kind;
use papo::proto::chat::Message as ChatMessage;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

const SECRET: &str = "the hostile tests' HS256 secret, thirty-two bytes or more";

fn secret_file(test: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("papo-hostile-{test}-{}", std::process::id()));
    std::fs::write(&path, SECRET).expect("write the secret");
    path
}

/// `papo serve ARGS` over TLS with a dev certificate of this test's own;
/// the certificate's files and their directory.
fn serve_tls(test: &str, args: &[&str]) -> (common::ServeProcess, papo::devcert::DevCert, PathBuf) {
    let dir = std::env::temp_dir().join(format!("papo-hostile-{test}-tls-{}", std::process::id()));
    let files = papo::devcert::write(&dir, &[]).expect("dev-cert");
    let (cert, key) = (files.cert.to_str().unwrap(), files.key.to_str().unwrap());
    let mut all = vec!["--tls-cert", cert, "--tls-key", key];
    all.extend_from_slice(args);
    (serve(&all), files, dir)
}

/// A token of `header` and `claims`, signed HS256 with the tests' secret.
fn signed(header: &str, claims: &str) -> String {
    let body = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, body.as_bytes());
    format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// A header, a claim set and a signature of the right shapes, the header
/// nested `depth` arrays deep.
fn nested_token(depth: usize) -> String {
    let header = format!(r#"{{"a":{}"#, "[".repeat(depth));
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(r#"{"sub":"ana","exp":1}"#),
        URL_SAFE_NO_PAD.encode([0u8; 32])
    )
}

fn bearer(token: &str) -> CallOption {
    let mut headers = MetadataBuilder::new();
    headers
        .add_str("authorization", &format!("Bearer {token}"))
        .unwrap();
    CallOption::default().headers(headers.build())
}

fn post_with(addr: &str, token: &str) -> Option<RpcStatusCode> {
    let m = ChatMessage {
        sender: "ana".into(),
        room: "geral".into(),
        text: "oi".into(),
        ..Default::default()
    };
    let client = chat_client(addr);
    client
        .send_message_opt(&m, bearer(token))
        .err()
        .map(|e| match e {
            grpcio::Error::RpcFailure(status) => status.code(),
            other => panic!("{other:?}"),
        })
}

fn ws_member(addr: &str, token: &str) -> Ws {
    let url = format!("ws://{addr}/chat?room=geral&token={token}");
    let (ws, _) = common::connect(url.as_str()).expect("upgrade with a token");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(SOON)).unwrap();
    }
    ws
}

/// Item 1: a token nested deeply is a 401 / UNAUTHENTICATED, however deep,
/// and the server lives on.
#[test]
fn a_deeply_nested_token_is_refused_and_the_server_lives_on() {
    let secret = secret_file("nested");
    let mut server = serve(&["--auth-secret-file", secret.to_str().unwrap()]);
    let (ws, grpc) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    for depth in [50, 100, 3000] {
        let token = nested_token(depth);
        let (_, status) = raw_upgrade(
            ws.parse().unwrap(),
            &format!("/chat?room=geral&token={token}"),
            "",
        );
        assert!(
            status.starts_with("HTTP/1.1 401"),
            "depth {depth}: {status}"
        );
        let (_, status) = raw_upgrade(
            ws.parse().unwrap(),
            "/chat?room=geral",
            &format!("Authorization: Bearer {token}\r\n"),
        );
        assert!(
            status.starts_with("HTTP/1.1 401"),
            "depth {depth}: {status}"
        );
    }
    let deep = nested_token(3000);
    assert_eq!(
        post_with(&grpc, &deep),
        Some(RpcStatusCode::UNAUTHENTICATED)
    );
    assert!(server.child.try_wait().unwrap().is_none(), "papo died");
    // Still serving: a good token is taken on both protocols.
    let good = signed(r#"{"alg":"HS256"}"#, r#"{"sub":"ana","exp":4000000000}"#);
    assert_eq!(post_with(&grpc, &good), None);
    let mut member = ws_member(&ws, &good);
    assert_eq!(kind(&ws_next(&mut member)), Kind::JOIN);
}

/// Item 10: a token whose `exp` is past any clock's range is a token that
/// does not expire, on both protocols, and nothing panics.
#[test]
fn a_token_expiring_past_any_clock_is_taken_without_a_panic() {
    let secret = secret_file("far");
    let mut server = serve(&["--auth-secret-file", secret.to_str().unwrap()]);
    let (ws, grpc) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    for exp in ["1e19", "1e300", "18446744073709551615"] {
        let token = signed(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"sub":"ana","exp":{exp}}}"#),
        );
        let mut member = ws_member(&ws, &token);
        assert_eq!(kind(&ws_next(&mut member)), Kind::JOIN, "exp {exp}");
        member.send(Message::text(r#"{"text":"oi"}"#)).unwrap();
        let said = ws_next(&mut member);
        assert_eq!((kind(&said), said.text.as_str()), (Kind::MESSAGE, "oi"));
        assert_eq!(post_with(&grpc, &token), None, "exp {exp}");
    }
    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.contains("panicked"), "{log}");
    assert!(server.child.try_wait().unwrap().is_none(), "papo died");
}

/// Item 14: a member closed for its rate gets the close frame and its
/// reason, not a reset that destroys them, though its burst is unread.
#[test]
fn a_member_closed_for_its_rate_reads_the_close_frame() {
    use std::io::Write as _;
    let server = serve(&[]);
    let ws = server.ws.clone().unwrap();
    for round in 0..3 {
        let (mut member, _) =
            common::connect(format!("ws://{ws}/chat?room=burst&name=b{round}").as_str()).unwrap();
        // Sent one frame at a time, as a browser's burst would be: a
        // reset after papo's close fails the sends that follow.
        let frame = common::client_frame(0x81, br#"{"text":"a burst, far past the rate"}"#, true);
        for sent in 0..5000 {
            match member.get_mut() {
                MaybeTlsStream::Plain(s) => s
                    .write_all(&frame)
                    .unwrap_or_else(|e| panic!("round {round}: send {sent}: {e}")),
                _ => unreachable!(),
            }
        }
        let close = loop {
            match member.read() {
                Ok(Message::Close(frame)) => break frame,
                Ok(_) => continue,
                Err(e) => panic!("round {round}: {e} before the close frame"),
            }
        };
        let close = close.expect("a close frame with a code");
        assert_eq!(u16::from(close.code), 1008, "round {round}");
        assert_eq!(close.reason.as_str(), "rate limit", "round {round}");
    }
}

/// Item 13: at `--max-connections`, a TLS client reads a TLS alert, not a
/// plaintext `503` it takes for a broken record.
#[test]
fn a_tls_client_past_the_limit_reads_a_tls_refusal() {
    let (server, files, dir) = serve_tls("limit", &["--max-connections", "1"]);
    let addr: std::net::SocketAddr = server.ws.clone().unwrap().parse().unwrap();
    let _held = std::net::TcpStream::connect(addr).unwrap();
    let config = papo::tls::client_config(Some(&files.ca)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    // The held connection takes the one slot as soon as it is accepted.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut session = rustls::ClientConnection::new(config, name).unwrap();
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(SOON)).unwrap();
    let error = loop {
        match session.complete_io(&mut socket) {
            Ok(_) if session.is_handshaking() => continue,
            Ok(_) => panic!("a handshake past the limit"),
            Err(e) => break e,
        }
    };
    let alert = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned();
    assert_eq!(
        alert,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::InternalError
        )),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 2: a compressed message cannot inflate past the limit inside
/// C-core, and an uncompressed one past the limit is not held whole.
#[test]
fn a_grpc_message_past_the_limit_is_refused_before_it_is_held() {
    use grpcio::{ChannelBuilder, CompressionAlgorithms, EnvBuilder};
    let server = serve(&["--no-ws", "--grpc-memory", "32MiB"]);
    let (grpc, pid) = (server.grpc.clone().unwrap(), server.child.id());
    let before = common::status_kib(pid, "VmHWM:");
    let env = std::sync::Arc::new(EnvBuilder::new().cq_count(1).build());
    let post = |compressed: bool, len: usize| {
        let mut channel = ChannelBuilder::new(env.clone()).max_send_message_len(-1);
        if compressed {
            channel =
                channel.default_compression_algorithm(CompressionAlgorithms::GRPC_COMPRESS_GZIP);
        }
        let client = papo::proto::chat_grpc::ChatServiceClient::new(channel.connect(&grpc));
        let m = ChatMessage {
            sender: "bomb".into(),
            room: "geral".into(),
            text: "a".repeat(len),
            ..Default::default()
        };
        match client.send_message(&m) {
            Err(grpcio::Error::RpcFailure(status)) => status.code(),
            other => panic!("{other:?}"),
        }
    };
    // 200 MiB of text, a fraction of a megabyte on the wire.
    let code = post(true, 200 << 20);
    assert!(
        matches!(
            code,
            RpcStatusCode::UNIMPLEMENTED | RpcStatusCode::RESOURCE_EXHAUSTED
        ),
        "{code:?}"
    );
    // Each refusal is one C-core log line: a retry loop does not flood.
    for _ in 0..30 {
        assert_eq!(post(true, 10), RpcStatusCode::UNIMPLEMENTED);
    }
    let lines = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("gzip"))
        .count();
    assert!((1..=10).contains(&lines), "{lines} lines about gzip");
    let code = post(false, 128 << 20);
    assert_eq!(code, RpcStatusCode::RESOURCE_EXHAUSTED);
    let grown = common::status_kib(pid, "VmHWM:").saturating_sub(before) << 10;
    eprintln!("peak RSS grew {} MiB", grown >> 20);
    // The quota, and what the process allocates around it.
    assert!(grown < 48 << 20, "peak RSS grew {} MiB", grown >> 20);
    // Still serving, under the limit.
    let small = ChatMessage {
        sender: "ana".into(),
        room: "geral".into(),
        text: "oi".into(),
        ..Default::default()
    };
    assert!(chat_client(&grpc).send_message(&small).is_ok());
}

/// A `wss` client whose socket's receive buffer is small, as a member on
/// a slow link has: what it does not read stays with the server.
fn small_buffered_wss(
    addr: &str,
    path: &str,
    ca: &std::path::Path,
) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>> {
    use socket2::{Domain, Socket, Type};
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: std::net::TcpStream = socket.into();
    let config = papo::tls::client_config(Some(ca)).unwrap();
    let request = format!("wss://localhost:{}{path}", addr.port());
    tungstenite::client_tls_with_config(
        request,
        stream,
        None,
        Some(tungstenite::Connector::Rustls(config)),
    )
    .unwrap()
    .0
}

/// Item 3: `wss` members that stop reading hold the message's one shared
/// frame, not an encrypted copy each; and a text whose JSON would be past
/// the limit is refused before it is published, on both protocols.
#[test]
fn wss_members_share_one_copy_and_json_past_the_limit_is_refused() {
    let (server, files, dir) = serve_tls("wss", &["--write-timeout", "0"]);
    let (ws, grpc, pid) = (
        server.ws.clone().unwrap(),
        server.grpc.clone().unwrap(),
        server.child.id(),
    );
    let tls = papo::client::ClientTls {
        grpc: true,
        ca: Some(files.ca.clone()),
        identity: None,
    };
    let env = std::sync::Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
    let builder = grpcio::ChannelBuilder::new(env).max_send_message_len(-1);
    let channel = papo::client::grpc_tls(builder, &tls)
        .unwrap()
        .connect(&grpc);
    let client = papo::proto::chat_grpc::ChatServiceClient::new(channel);
    let post = |text: String| {
        let m = ChatMessage {
            sender: "svc".into(),
            room: "wss".into(),
            text,
            ..Default::default()
        };
        client.send_message(&m).err().map(|e| match e {
            grpcio::Error::RpcFailure(status) => status.code(),
            other => panic!("{other:?}"),
        })
    };
    // 4,190,000 control characters are 25 MB as JSON: refused unpublished.
    assert_eq!(
        post("\u{1}".repeat(4_190_000)),
        Some(RpcStatusCode::RESOURCE_EXHAUSTED)
    );
    let mut speaker =
        papo::client::ws_connect(&format!("wss://{ws}/chat?room=wss&name=s"), &tls).unwrap();
    speaker
        // 3 MB in: a C1 control is two bytes raw and six as JSON.
        .send(Message::text(format!(
            r#"{{"text":"{}"}}"#,
            "\u{85}".repeat(1_500_000)
        )))
        .unwrap();
    let close = loop {
        match speaker.read() {
            Ok(Message::Close(frame)) => break frame.expect("a close code"),
            Ok(_) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(u16::from(close.code), 1009);

    let members: Vec<_> = (0..50)
        .map(|n| small_buffered_wss(&ws, &format!("/chat?room=wss&name=m{n}"), &files.ca))
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = common::status_kib(pid, "VmRSS:");
    assert_eq!(post("x".repeat(4_190_000)), None);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let grown = common::status_kib(pid, "VmHWM:").saturating_sub(before) << 10;
    eprintln!("peak RSS grew {} MiB", grown >> 20);
    // The text as published, its JSON frame and protobuf (one each, shared),
    // what is in hand, and 50 sessions of a record each.
    assert!(grown < 40 << 20, "peak RSS grew {} MiB", grown >> 20);
    drop(members);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 5: rooms are bounded: past `--max-rooms` a new room is refused,
/// with the limit named, on both protocols.
#[test]
fn rooms_past_the_limit_are_refused_on_both_protocols() {
    let server = serve(&["--max-rooms", "100"]);
    let (ws, grpc) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    let client = chat_client(&grpc);
    let post = |room: String| {
        let m = ChatMessage {
            sender: "svc".into(),
            room,
            text: "oi".into(),
            ..Default::default()
        };
        client.send_message(&m).err().map(|e| match e {
            grpcio::Error::RpcFailure(status) => (status.code(), status.message().to_owned()),
            other => panic!("{other:?}"),
        })
    };
    for n in 0..100 {
        assert_eq!(post(format!("r{n}")), None, "room {n}");
    }
    let (code, why) = post("one-more".into()).expect("refused");
    assert_eq!(code, RpcStatusCode::RESOURCE_EXHAUSTED);
    assert!(why.contains("at most 100 rooms"), "{why}");
    let (mut member, _) =
        common::connect(format!("ws://{ws}/chat?room=another&name=ana").as_str()).unwrap();
    let close = loop {
        match member.read() {
            Ok(Message::Close(frame)) => break frame.expect("a close code"),
            Ok(_) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(u16::from(close.code), 1013);
    assert!(
        close.reason.contains("at most 100 rooms"),
        "{}",
        close.reason
    );
    // The rooms held still take messages.
    assert_eq!(post("r7".into()), None);
}

/// Item 7: one token's holder reconnecting in a loop is held to its join
/// limit (HTTP 429, then RESOURCE_EXHAUSTED over gRPC), counted in
/// `/metrics`; its room hears a bounded number of JOINs.
#[test]
fn a_reconnect_loop_is_held_to_its_join_limit() {
    let secret = secret_file("churn");
    let server = serve(&["--auth-secret-file", secret.to_str().unwrap()]);
    let (ws, grpc) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    let token = signed(r#"{"alg":"HS256"}"#, r#"{"sub":"ana","exp":4000000000}"#);
    let mut watcher = ws_member(
        &ws,
        &signed(r#"{"alg":"HS256"}"#, r#"{"sub":"bob","exp":4000000000}"#),
    );
    assert_eq!(kind(&ws_next(&mut watcher)), Kind::JOIN);
    let (mut upgraded, mut limited) = (0usize, 0usize);
    let start = std::time::Instant::now();
    for _ in 0..200 {
        let (_, status) = raw_upgrade(
            ws.parse().unwrap(),
            &format!("/chat?room=geral&token={token}"),
            "",
        );
        match &status[..12] {
            "HTTP/1.1 101" => upgraded += 1,
            "HTTP/1.1 429" => limited += 1,
            other => panic!("{other}"),
        }
    }
    // The burst (20), and what the rate (10/s) refilled meanwhile.
    let refilled = (start.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        (20..=20 + refilled + 1).contains(&upgraded),
        "{upgraded} joined in {:?}",
        start.elapsed()
    );
    assert_eq!(upgraded + limited, 200);
    let request = papo::proto::chat::SubscribeRequest {
        room: "geral".into(),
        ..Default::default()
    };
    let client = chat_client(&grpc);
    let mut stream = client.subscribe_opt(&request, bearer(&token)).unwrap();
    match common::next_within(&mut stream, "the refusal") {
        Some(Err(grpcio::Error::RpcFailure(status))) => {
            assert_eq!(status.code(), RpcStatusCode::RESOURCE_EXHAUSTED);
            assert!(
                status.message().contains("join rate limit"),
                "{}",
                status.message()
            );
        }
        other => panic!("{other:?}"),
    }
    let metrics = common::raw_exchange(
        ws.parse().unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("papo_joins_refused_total{by=\"identity\"} "))
        .and_then(|n| n.parse::<usize>().ok());
    assert_eq!(refused, Some(limited + 1), "{metrics}");
    // The watcher heard at most one JOIN per join let in (fewer when a
    // connection of ana's came while the one before had not left yet: with
    // tokens, a name's connections are one member).
    if let MaybeTlsStream::Plain(s) = watcher.get_ref() {
        s.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
    }
    let mut joins = 0;
    while let Ok(Message::Text(json)) = watcher.read() {
        let m: ChatMessage = protobuf_json_mapping::parse_from_str(json.as_str()).unwrap();
        joins += usize::from(kind(&m) == Kind::JOIN);
    }
    assert!(
        (1..=upgraded).contains(&joins),
        "{joins} JOINs for {upgraded} joins"
    );
}

/// Item 9: a connection that never sends its HTTP/2 preface holds a place
/// for `--handshake-timeout` only: in plaintext papo closes it before C-core
/// sees it, over TLS C-core's handshake deadline does.
#[test]
fn silent_grpc_connections_are_closed_at_the_handshake_timeout() {
    use std::io::Read as _;
    let server = serve(&[
        "--no-ws",
        "--grpc-max-connections",
        "10",
        "--handshake-timeout",
        "1s",
    ]);
    let grpc = server.grpc.clone().unwrap();
    let mut silent: Vec<_> = (0..10)
        .map(|_| std::net::TcpStream::connect(&grpc).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The ten silent sockets hold every place: a client is refused…
    let small = ChatMessage {
        sender: "svc".into(),
        room: "geral".into(),
        text: "oi".into(),
        ..Default::default()
    };
    let option = CallOption::default().timeout(std::time::Duration::from_millis(500));
    assert!(chat_client(&grpc).send_message_opt(&small, option).is_err());
    // …until their time is up: each is closed, and the client is served.
    for socket in &mut silent {
        socket.set_read_timeout(Some(SOON)).unwrap();
        assert!(matches!(socket.read(&mut [0; 16]), Ok(0)), "closed");
    }
    assert!(chat_client(&grpc).send_message(&small).is_ok());

    let (tls, files, dir) = serve_tls(
        "grpc",
        &[
            "--no-ws",
            "--handshake-timeout",
            "1s",
            "--grpc-max-connections",
            "20",
        ],
    );
    let addr = tls.grpc.clone().unwrap();
    let start = std::time::Instant::now();
    let silent: Vec<_> = (0..20)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    for mut socket in silent {
        socket.set_read_timeout(Some(SOON)).unwrap();
        assert!(matches!(socket.read(&mut [0; 16]), Ok(0)), "closed");
    }
    assert!(
        start.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    // And the cap holds over TLS: twenty silent sockets fill it, the next
    // connection is closed at once, and a client is served once they are gone.
    let silent: Vec<_> = (0..20)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut past = std::net::TcpStream::connect(&addr).unwrap();
    past.set_read_timeout(Some(SOON)).unwrap();
    let refused_at = std::time::Instant::now();
    assert!(matches!(past.read(&mut [0; 16]), Ok(0)), "closed");
    assert!(refused_at.elapsed() < std::time::Duration::from_millis(500));
    drop(silent);
    let secure = papo::client::ClientTls {
        grpc: true,
        ca: Some(files.ca.clone()),
        identity: None,
    };
    let channel = papo::client::grpc_channel(&addr, &secure).unwrap();
    let client = papo::proto::chat_grpc::ChatServiceClient::new(channel);
    common::eventually(SOON, "a TLS client served", || {
        client.send_message(&small).is_ok()
    });
    // gRPC clients send an IP address as SNI: not a warning per connection.
    let log = tls.log.lock().unwrap().join("\n");
    assert!(!log.contains("SNI"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 16: while Redis is slow, queued joins weigh what they carry (a
/// 3 MB epoch is 3 MB) against `--redis-pending`.
#[test]
fn queued_joins_weigh_what_they_carry_against_the_pending_bound() {
    let redis = common::RedisServer::start();
    let server = serve(&[
        "--no-ws",
        "--redis",
        &redis.url(),
        "--redis-pending",
        "8MiB",
    ]);
    let (grpc, pid) = (server.grpc.clone().unwrap(), server.child.id());
    let client = chat_client(&grpc);
    let before = common::status_kib(pid, "VmHWM:");
    // Redis holds every client's commands for 1.5 s (below the writer's
    // I/O timeout): joins queue.
    let mut pause = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "CLIENT", "PAUSE", "1500"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-cli");
    assert!(pause.wait().unwrap().success());
    let mut streams = Vec::new();
    for n in 0..60 {
        let request = papo::proto::chat::SubscribeRequest {
            room: format!("r{n}"),
            since: Some(1),
            epoch: "e".repeat(3_000_000),
            ..Default::default()
        };
        streams.push(client.subscribe(&request).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Until the pause is over, and the writer through what it waited on.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let grown = common::status_kib(pid, "VmHWM:").saturating_sub(before) << 10;
    eprintln!("peak RSS grew {} MiB", grown >> 20);
    // The bound, and the few requests in hand as they are read.
    assert!(grown < 40 << 20, "peak RSS grew {} MiB", grown >> 20);
    drop(streams);
    assert!(server.child.id() > 0);
}

/// Item 17: a member whose instance stalled past `--presence-ttl` is
/// announced leaving by another instance, and joining again when its
/// instance comes back and renews it: presence and the room agree.
#[test]
fn a_member_back_after_its_instance_stalled_is_announced() {
    let redis = common::RedisServer::start();
    let url = redis.url();
    let a = serve(&["--redis", &url, "--presence-ttl", "2s"]);
    let b = serve(&["--redis", &url, "--presence-ttl", "2s"]);
    let (mut ana, _) = common::connect(
        format!("ws://{}/chat?room=stall&name=ana", a.ws.clone().unwrap()).as_str(),
    )
    .unwrap();
    assert_eq!(kind(&ws_next(&mut ana)), Kind::JOIN);
    let on_b = chat_client(&b.grpc.clone().unwrap());
    let request = papo::proto::chat::SubscribeRequest {
        room: "stall".into(),
        name: "watcher".into(),
        ..Default::default()
    };
    let mut watcher = on_b.subscribe(&request).unwrap();
    let mut next = || {
        common::next_within(&mut watcher, "the watcher's stream")
            .unwrap()
            .unwrap()
    };
    let own = loop {
        let m = next();
        if kind(&m) == Kind::JOIN && m.sender == "watcher" {
            break m;
        }
    };
    assert!(own.members.contains(&"ana".to_owned()), "{:?}", own.members);
    common::signal(&a.child, libc::SIGSTOP);
    let left = loop {
        let m = next();
        if kind(&m) == Kind::LEAVE {
            break m;
        }
    };
    assert_eq!(left.sender, "ana");
    common::signal(&a.child, libc::SIGCONT);
    let back = loop {
        let m = next();
        if kind(&m) != Kind::MESSAGE {
            break m;
        }
    };
    assert_eq!((kind(&back), back.sender.as_str()), (Kind::JOIN, "ana"));
    // And it still speaks, heard on B.
    ana.send(Message::text(r#"{"text":"de volta"}"#)).unwrap();
    let said = loop {
        let m = next();
        if kind(&m) == Kind::MESSAGE {
            break m;
        }
    };
    assert_eq!(
        (said.sender.as_str(), said.text.as_str()),
        ("ana", "de volta")
    );
}

/// Posts `count` texts of `len` bytes to `room`, each starting "N:".
fn post_numbered(grpc: &str, room: &str, count: usize, len: usize) {
    let client = chat_client(grpc);
    for n in 0..count {
        let m = ChatMessage {
            sender: "svc".into(),
            room: room.into(),
            text: format!("{n}:{}", "x".repeat(len)),
            ..Default::default()
        };
        client.send_message(&m).unwrap();
    }
}

/// The numbers of the messages a member is replayed, up to the message
/// that ends the replay (its own JOIN).
fn replay_then_join(member: &mut Ws) -> (Vec<String>, ChatMessage) {
    let mut replayed = Vec::new();
    loop {
        let m = ws_next(member);
        match kind(&m) {
            Kind::MESSAGE => replayed.push(m.text.split(':').next().unwrap_or_default().to_owned()),
            _ => return (replayed, m),
        }
    }
}

/// Item 6: a `since=0` join to a Redis room of large entries reads its
/// replay an entry at a time up to what the member takes at once: papo's
/// memory and Redis's time stay bounded, and the member is told where its
/// replay starts.
#[test]
fn a_redis_replay_is_read_within_what_the_member_takes() {
    let redis = common::RedisServer::start();
    let server = serve(&["--redis", &redis.url()]);
    let (ws, grpc, pid) = (
        server.ws.clone().unwrap(),
        server.grpc.clone().unwrap(),
        server.child.id(),
    );
    post_numbered(&grpc, "big", 40, 2_000_000);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = common::status_kib(pid, "VmHWM:");
    // Another client of Redis, pinging while the join runs.
    let port = redis.port;
    let pinger = std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        let mut redis = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut slowest = std::time::Duration::ZERO;
        for _ in 0..50 {
            let start = std::time::Instant::now();
            redis.write_all(b"PING\r\n").unwrap();
            let mut pong = [0u8; 7];
            redis.read_exact(&mut pong).unwrap();
            slowest = slowest.max(start.elapsed());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        slowest
    });
    let (mut member, _) =
        common::connect(format!("ws://{ws}/chat?room=big&name=ana&since=0").as_str()).unwrap();
    let note = ws_next(&mut member);
    let head: String = note.text.chars().take(80).collect();
    assert_eq!(kind(&note), Kind::ERROR, "{head}");
    assert!(
        note.text
            .contains("more than this connection takes at once"),
        "{head}"
    );
    let (replayed, own) = replay_then_join(&mut member);
    assert_eq!((kind(&own), own.recovered), (Kind::JOIN, false));
    // The newest part, in order, ending with the last said.
    assert!(!replayed.is_empty() && replayed.len() < 40, "{replayed:?}");
    assert_eq!(replayed.last().map(String::as_str), Some("39"));
    let grown = common::status_kib(pid, "VmHWM:").saturating_sub(before) << 10;
    let slowest = pinger.join().unwrap();
    eprintln!(
        "peak RSS grew {} MiB; slowest PING {slowest:?}",
        grown >> 20
    );
    assert!(grown < 48 << 20, "peak RSS grew {} MiB", grown >> 20);
    assert!(
        slowest < std::time::Duration::from_millis(500),
        "{slowest:?}"
    );
}

/// Seen in the code: nothing a member says once its token's `exp` has come
/// is published, whatever the timers that end its connection have done.
#[test]
fn nothing_said_after_a_tokens_expiry_is_published() {
    use std::io::Write as _;
    let secret = secret_file("expiry");
    let server = serve(&[
        "--auth-secret-file",
        secret.to_str().unwrap(),
        "--auth-leeway",
        "0s",
    ]);
    let ws = server.ws.clone().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = now + 2;
    let mut watcher = ws_member(
        &ws,
        &signed(r#"{"alg":"HS256"}"#, r#"{"sub":"bob","exp":4000000000}"#),
    );
    let short = signed(
        r#"{"alg":"HS256"}"#,
        &format!(r#"{{"sub":"ana","exp":{exp}}}"#),
    );
    let (mut ana, _) =
        common::connect(format!("ws://{ws}/chat?room=geral&token={short}").as_str()).unwrap();
    let frame = common::client_frame(0x81, br#"{"text":"oi"}"#, true);
    let start = std::time::Instant::now();
    // Written raw, so the talking goes on past the close, as a client
    // that does not read would.
    if let MaybeTlsStream::Plain(socket) = ana.get_mut() {
        while start.elapsed() < std::time::Duration::from_millis(3500) {
            if socket.write_all(&frame).is_err() {
                break;
            }
            // Within the rate limit (100 a second).
            std::thread::sleep(std::time::Duration::from_millis(12));
        }
    }
    if let MaybeTlsStream::Plain(s) = watcher.get_ref() {
        s.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
    }
    let mut said = 0;
    while let Ok(Message::Text(json)) = watcher.read() {
        let m: ChatMessage = protobuf_json_mapping::parse_from_str(json.as_str()).unwrap();
        if kind(&m) == Kind::MESSAGE && m.sender == "ana" {
            said += 1;
            assert!(
                m.timestamp_ms < exp as i64 * 1000,
                "published {} ms after exp",
                m.timestamp_ms - exp as i64 * 1000
            );
        }
    }
    assert!(said > 10, "{said} messages before the expiry");
}

/// Item 18: in memory, a `since=0` join to a room whose log is more than
/// the member's queue takes at once is handed the newest part, after a note
/// saying where it starts; never a silent cut.
#[test]
fn an_in_memory_replay_larger_than_the_queue_says_where_it_starts() {
    let server = serve(&["--history-budget", "256MiB"]);
    let (ws, grpc) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    post_numbered(&grpc, "log", 12, 1_000_000);
    let (mut member, _) =
        common::connect(format!("ws://{ws}/chat?room=log&name=ana&since=0").as_str()).unwrap();
    let note = ws_next(&mut member);
    let head: String = note.text.chars().take(80).collect();
    assert_eq!(kind(&note), Kind::ERROR, "{head}");
    let (replayed, own) = replay_then_join(&mut member);
    assert_eq!((kind(&own), own.recovered), (Kind::JOIN, false));
    assert_eq!(replayed.last().map(String::as_str), Some("11"));
    assert!(
        note.text
            .starts_with(&format!("replay from {}:", 13 - replayed.len())),
        "{head}"
    );
}

/// Item 12: a Redis (or a man in the middle) that answers with 96 MiB of
/// small integers is cut off at `--redis-max-reply`, weighed as held, and
/// papo's memory stays bounded.
#[test]
fn an_endless_redis_reply_is_cut_at_its_bound() {
    use std::io::{Read as _, Write as _};
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = fake.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in fake.incoming().flatten().take(4) {
            std::thread::spawn(move || {
                let mut ask = [0u8; 1024];
                let _ = conn.read(&mut ask);
                // A million arrays of 25 integers each: 96 MiB of them, every
                // array within the length papo takes, the whole not.
                let _ = conn.write_all(b"*1000000\r\n");
                let mut chunk = Vec::new();
                for _ in 0..1000 {
                    chunk.extend_from_slice(b"*25\r\n");
                    chunk.extend_from_slice(&b":1\r\n".repeat(25));
                }
                for _ in 0..1000 {
                    if conn.write_all(&chunk).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let server = serve(&["--no-ws", "--redis", &format!("redis://127.0.0.1:{port}")]);
    let pid = server.child.id();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let peak = common::status_kib(pid, "VmHWM:") << 10;
    eprintln!("peak RSS {} MiB", peak >> 20);
    // Two connections (the writer's and the reader's), each a reply of the
    // bound as weighed, up to twice that as its arrays grow.
    assert!(
        peak < (2 * 2 * 64 + 40) << 20,
        "peak RSS {} MiB",
        peak >> 20
    );
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("--redis-max-reply"), "{log}");
}

/// Warnings a peer can cause are rate-limited: twenty members that stop
/// reading and are dropped at the write deadline are one line, not twenty.
#[test]
fn peers_dropped_at_the_write_deadline_are_one_warning() {
    let server = serve(&["--write-timeout", "1s", "--rate-limit", "0"]);
    let ws: std::net::SocketAddr = server.ws.clone().unwrap().parse().unwrap();
    let stuck: Vec<_> = (0..20)
        .map(|n| raw_upgrade(ws, &format!("/chat?room=stuck&name=s{n}"), "").0)
        .collect();
    let client = chat_client(&server.grpc.clone().unwrap());
    for _ in 0..6 {
        let m = ChatMessage {
            sender: "svc".into(),
            room: "stuck".into(),
            text: "x".repeat(1_000_000),
            ..Default::default()
        };
        let _ = client.send_message(&m);
    }
    common::eventually(SOON, "the stuck members dropped", || {
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("took no data"))
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let lines = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("took no data"))
        .count();
    assert_eq!(lines, 1);
    drop(stuck);
}
