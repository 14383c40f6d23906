//! One chat, two protocols: WebSocket `/chat` members and gRPC streams in
//! the same rooms, against a real `papo serve`.

mod common;

use common::{
    chat_client, client_frame, close_of, connect, eventually, kind, messages, next_within, papo,
    raw_upgrade, serve, serve_logging, ws_next, OutputWithin, SOON,
};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use grpcio::{ClientDuplexReceiver, RpcStatusCode, WriteFlags};
use papo::executor::block_on;
use papo::proto::chat::message::Kind;
use papo::proto::chat::{Message as ChatMessage, Response, SubscribeRequest};
use papo::proto::chat_grpc::ChatServiceClient;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

type Ws = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

/// A `/chat` member, returned once it is in the room: the 101 comes before
/// the server thread joins, so its own JOIN is what says it is there.
fn ws_member(addr: &str, room: &str, name: &str) -> Ws {
    let (mut ws, _) = connect(format!("ws://{addr}/chat?room={room}&name={name}")).unwrap();
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let joined = ws_next(&mut ws);
    assert_eq!((kind(&joined), joined.sender.as_str()), (Kind::JOIN, name));
    assert!(joined.members.iter().any(|m| m == name), "{joined:?}");
    ws
}

fn grpc_next(rx: &mut ClientDuplexReceiver<ChatMessage>) -> ChatMessage {
    next_within(rx, "a chat message")
        .expect("stream open")
        .expect("message")
}

/// `SendMessage` of `text` to `room`, as the service "svc".
fn post(client: &ChatServiceClient, room: &str, text: &str) -> grpcio::Result<Response> {
    let request = ChatMessage {
        sender: "svc".into(),
        room: room.into(),
        text: text.into(),
        ..Default::default()
    };
    client.send_message(&request)
}

#[test]
fn browsers_and_services_share_a_room_in_one_order() {
    let server = serve(&[]);
    let (ws_addr, grpc_addr) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());

    let mut ana = ws_member(&ws_addr, "sala", "ana");

    let client = chat_client(&grpc_addr);
    let (mut bob_tx, mut bob_rx) = client.chat().unwrap();
    let hello = ChatMessage {
        room: "sala".into(),
        sender: "bob".into(),
        ..Default::default()
    };
    block_on(bob_tx.send((hello, WriteFlags::default()))).unwrap();
    let joined = grpc_next(&mut bob_rx);
    assert_eq!(
        (kind(&joined), joined.members.clone()),
        (Kind::JOIN, vec!["ana".to_owned(), "bob".to_owned()])
    );
    let seen_by_ana = ws_next(&mut ana);
    assert_eq!(
        (kind(&seen_by_ana), seen_by_ana.seq),
        (Kind::JOIN, joined.seq)
    );

    // Each side talks, and the seed's client publishes into the room too.
    let text = |t: &str| ChatMessage {
        text: t.into(),
        ..Default::default()
    };
    block_on(bob_tx.send((text("oi do serviço"), WriteFlags::default()))).unwrap();
    ana.send(Message::text(r#"{"text": "oi do navegador"}"#))
        .unwrap();
    let out = papo()
        .args(["grpc-client", "--addr", &grpc_addr, "--room", "sala"])
        .output_within();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Resposta do servidor: Mensagem recebida: Olá, gRPC!\n"
    );

    let ana_saw = messages(|| ws_next(&mut ana), 3);
    let bob_saw = messages(|| grpc_next(&mut bob_rx), 3);
    assert_eq!(ana_saw, bob_saw, "both protocols see one order");
    let mut texts: Vec<_> = ana_saw
        .iter()
        .map(|(_, who, t)| format!("{who}: {t}"))
        .collect();
    texts.sort();
    assert_eq!(
        texts,
        [
            "Alice: Olá, gRPC!",
            "ana: oi do navegador",
            "bob: oi do serviço"
        ]
    );
    assert!(
        ana_saw.windows(2).all(|w| w[1].0 > w[0].0),
        "numbers increase: {ana_saw:?}"
    );

    // Bob leaves by closing his side; Ana is told. (grpcio reports
    // RpcFinished(None) when the server ends the call, as it should, before
    // the close is acknowledged: that is success too.)
    match block_on(bob_tx.close()) {
        Ok(()) | Err(grpcio::Error::RpcFinished(None)) => {}
        Err(e) => panic!("close failed: {e}"),
    }
    let left = ws_next(&mut ana);
    assert_eq!((kind(&left), left.sender.as_str()), (Kind::LEAVE, "bob"));
}

#[test]
fn malformed_json_closes_that_member_with_1007_only() {
    let server = serve(&["--no-grpc"]);
    let ws_addr = server.ws.clone().unwrap();
    let mut good = ws_member(&ws_addr, "r", "good");
    let mut bad = ws_member(&ws_addr, "r", "bad");
    bad.send(Message::text("{not json")).unwrap();
    let code = close_of(&mut bad).map(|f| f.code);
    assert_eq!(code, Some(CloseCode::Invalid));
    good.send(Message::text(r#"{"text":"still here"}"#))
        .unwrap();
    let saw = messages(|| ws_next(&mut good), 1);
    assert_eq!(saw[0].2, "still here");
}

#[test]
fn a_message_written_as_the_protos_json_is_said_under_the_connections_name() {
    let server = serve(&["--no-grpc"]);
    let ws_addr = server.ws.clone().unwrap();
    let mut listener = ws_member(&ws_addr, "r", "ouvinte");
    let mut speaker = ws_member(&ws_addr, "r", "m");
    let joined = ws_next(&mut listener);
    assert_eq!((kind(&joined), joined.sender.as_str()), (Kind::JOIN, "m"));
    speaker
        .send(Message::text(
            r#"{"sender":"bench","text":"oi","room":"r"}"#,
        ))
        .unwrap();
    let said = ws_next(&mut listener);
    assert_eq!((said.sender.as_str(), said.text.as_str()), ("m", "oi"));
    // Another room's name is refused: a connection speaks in its own.
    speaker
        .send(Message::text(r#"{"text":"oi","room":"outra"}"#))
        .unwrap();
    let code = close_of(&mut speaker).map(|f| f.code);
    assert_eq!(code, Some(CloseCode::Invalid));
}

#[test]
fn a_text_taken_in_always_fits_out_and_a_longer_one_is_never_published() {
    let server = serve(&["--max-message-size", "64KiB"]);
    let (ws_addr, grpc_addr) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    let client = chat_client(&grpc_addr);
    let request = SubscribeRequest {
        room: "big".into(),
        name: "listener".into(),
        ..Default::default()
    };
    let mut listener = client.subscribe(&request).unwrap();
    let mut next = || {
        next_within(&mut listener, "a message")
            .expect("stream open")
            .expect("message")
    };
    assert_eq!(kind(&next()), Kind::JOIN);
    // The longest text: the largest message less 1 KiB for its envelope.
    let longest = (64 << 10) - 1024;
    let mut ws = ws_member(&ws_addr, "big", "ana");
    assert_eq!(kind(&next()), Kind::JOIN);
    let text = "x".repeat(longest);
    ws.send(Message::text(format!(r#"{{"text":"{text}"}}"#)))
        .unwrap();
    assert_eq!(messages(&mut next, 1)[0].2.len(), longest);
    let send = |text: String| post(&client, "big", &text);
    let reply = send("y".repeat(longest)).expect("SendMessage answered");
    assert_eq!(reply.reply.len(), "Mensagem recebida: ".len() + longest);
    assert_eq!(messages(&mut next, 1)[0].2.len(), longest);
    // One byte more: refused, and nothing published.
    match send("z".repeat(longest + 1)) {
        Err(grpcio::Error::RpcFailure(s)) => {
            assert_eq!(s.code(), RpcStatusCode::RESOURCE_EXHAUSTED)
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    send("after".into()).unwrap();
    assert_eq!(messages(&mut next, 1)[0].2, "after");
    // And a WebSocket member gets 1009 for it.
    ws.send(Message::text(format!(
        r#"{{"text":"{}"}}"#,
        "z".repeat(longest + 1)
    )))
    .unwrap();
    let code = close_of(&mut ws).map(|f| f.code);
    assert_eq!(code, Some(CloseCode::Size));
}

#[test]
fn send_message_is_not_held_to_a_members_rate_by_default() {
    // A service posts many calls over one connection: only
    // --send-rate-limit limits it.
    let server = serve(&["--rate-limit", "1", "--rate-burst", "5"]);
    let client = chat_client(server.grpc.as_deref().unwrap());
    for n in 0..50 {
        let posted = post(&client, "rate", &n.to_string());
        assert!(posted.is_ok(), "call {n}: {posted:?}");
    }
}

#[test]
fn a_member_over_the_rate_limit_is_refused_on_each_protocol() {
    let server = serve(&[
        "--rate-limit",
        "1",
        "--rate-burst",
        "5",
        "--send-rate-limit",
        "1",
    ]);
    let (ws_addr, grpc_addr) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    // WebSocket: the sixth message at once closes the member with 1008.
    let mut ws = ws_member(&ws_addr, "rate", "ana");
    for n in 0..6 {
        ws.send(Message::text(format!(r#"{{"text":"{n}"}}"#)))
            .unwrap();
    }
    assert_eq!(messages(|| ws_next(&mut ws), 5).len(), 5);
    let close = close_of(&mut ws);
    let close = close.expect("a close frame with a code");
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::Policy, "rate limit")
    );
    // SendMessage: limited per connection, nothing published past it.
    let client = chat_client(&grpc_addr);
    let codes: Vec<_> = (0..6)
        .map(|_| match post(&client, "rate", "x") {
            Ok(_) => RpcStatusCode::OK,
            Err(grpcio::Error::RpcFailure(s)) => s.code(),
            Err(e) => panic!("{e}"),
        })
        .collect();
    assert_eq!(codes[..5], [RpcStatusCode::OK; 5]);
    assert_eq!(codes[5], RpcStatusCode::RESOURCE_EXHAUSTED);
    // Chat stream: ends RESOURCE_EXHAUSTED.
    let (mut tx, mut rx) = client.chat().unwrap();
    for n in 0..7 {
        let m = ChatMessage {
            room: "rate".into(),
            sender: "bob".into(),
            text: n.to_string(),
            ..Default::default()
        };
        if block_on(tx.send((m, WriteFlags::default()))).is_err() {
            break;
        }
    }
    let end = loop {
        match next_within(&mut rx, "the stream's end") {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the stream ended OK"),
        }
    };
    match end {
        grpcio::Error::RpcFailure(s) => assert_eq!(s.code(), RpcStatusCode::RESOURCE_EXHAUSTED),
        other => panic!("{other}"),
    }
    let metrics = common::raw_exchange(
        ws_addr.parse().unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    for line in [
        "papo_rate_limited_total{protocol=\"ws\"} 1",
        "papo_rate_limited_total{protocol=\"grpc\"} 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from\n{metrics}"
        );
    }
}

#[test]
fn a_grpc_member_that_does_not_read_holds_two_messages_worth_not_its_whole_queue() {
    let server = serve(&["--max-message-size", "256KiB", "--rate-limit", "0"]);
    let client = chat_client(server.grpc.as_deref().unwrap());
    let request = SubscribeRequest {
        room: "heavy".into(),
        name: "stuck".into(),
        ..Default::default()
    };
    let mut stuck = client.subscribe(&request).unwrap();
    assert!(matches!(next_within(&mut stuck, "its JOIN"), Some(Ok(_))));
    // 100 texts of 255 KiB: well under --send-queue's 256 messages, far over
    // two messages' worth of bytes.
    let sender = chat_client(server.grpc.as_deref().unwrap());
    let text = "x".repeat((256 << 10) - 1024);
    for _ in 0..100 {
        post(&sender, "heavy", &text).unwrap();
    }
    let mut received = 0;
    let end = loop {
        match next_within(&mut stuck, "the stuck member's end") {
            Some(Ok(_)) => received += 1,
            Some(Err(e)) => break e,
            None => panic!("ended OK after {received}"),
        }
    };
    match end {
        grpcio::Error::RpcFailure(s) => assert_eq!(s.code(), RpcStatusCode::RESOURCE_EXHAUSTED),
        other => panic!("{other}"),
    }
    assert!(received < 100, "all {received} were held for it");
}

#[test]
fn a_grpc_member_that_accepts_nothing_for_the_write_timeout_is_dropped() {
    let server = serve(&["--write-timeout", "1s", "--rate-limit", "0"]);
    let (ws_addr, grpc_addr) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    // A client whose HTTP/2 window stays at its initial 64 KiB: one that
    // does not read, seen from the server, once that much is in flight.
    let env = Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
    let narrow = grpcio::ChannelBuilder::new(env)
        .http2_bdp_probe(false)
        .stream_initial_window_size(64 << 10)
        .max_receive_message_len(8 << 20)
        .connect(&grpc_addr);
    let client = ChatServiceClient::new(narrow);
    let request = SubscribeRequest {
        room: "stall".into(),
        name: "stuck".into(),
        ..Default::default()
    };
    let mut stuck = client.subscribe(&request).unwrap();
    assert!(matches!(next_within(&mut stuck, "its JOIN"), Some(Ok(_))));
    let mut watcher = ws_member(&ws_addr, "stall", "watcher");
    // 3 MiB in all: over what that window lets through unread, under two
    // messages' worth of queue, so only the deadline can end it.
    let sender = chat_client(&grpc_addr);
    let text = "x".repeat(1 << 20);
    for _ in 0..3 {
        post(&sender, "stall", &text).unwrap();
    }
    let left = loop {
        let m = ws_next(&mut watcher);
        if kind(&m) == Kind::LEAVE {
            break m.sender;
        }
    };
    assert_eq!(left, "stuck");
    // Read now, the stream ends with why.
    let end = loop {
        match next_within(&mut stuck, "the stalled stream's end") {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the stream ended OK"),
        }
    };
    match end {
        grpcio::Error::RpcFailure(s) => {
            assert_eq!(
                s.code(),
                RpcStatusCode::RESOURCE_EXHAUSTED,
                "{}",
                s.message()
            )
        }
        other => panic!("{other}"),
    }
}

#[test]
fn members_send_strict_json_with_only_what_a_client_may_set() {
    let server = serve(&["--no-grpc"]);
    let ws_addr = server.ws.clone().unwrap();
    let mut ana = ws_member(&ws_addr, "strict", "ana");
    // Surrogate-pair escapes, as Python's json.dumps writes them.
    ana.send(Message::text(r#"{"text": "\ud83d\ude00 ol\u00e1"}"#))
        .unwrap();
    assert_eq!(messages(|| ws_next(&mut ana), 1)[0].2, "😀 olá");
    // What the server sets is refused, never taken.
    for bad in [
        r#"{"members": ["", "", ""]}"#,
        r#"{"text": "oi", "seq": "7"}"#,
        r#"{'text': 'single quotes'}"#,
    ] {
        let mut ws = ws_member(&ws_addr, "strict", "bob");
        ws.send(Message::text(bad)).unwrap();
        let code = close_of(&mut ws).map(|f| f.code);
        assert_eq!(code, Some(CloseCode::Invalid), "{bad}");
    }
}

#[test]
fn grpc_clients_may_not_send_what_the_server_sets() {
    let server = serve(&[]);
    let client = chat_client(server.grpc.as_deref().unwrap());
    let status_of = |result: grpcio::Result<Response>| match result {
        Err(grpcio::Error::RpcFailure(s)) => (s.code(), s.message().to_owned()),
        other => panic!("expected a refusal, got {other:?}"),
    };
    // A million empty `members` is 2 MB on the wire, refused unread.
    let forged = ChatMessage {
        sender: "svc".into(),
        text: "oi".into(),
        members: vec![String::new(); 1 << 20],
        ..Default::default()
    };
    let (code, why) = status_of(client.send_message(&forged));
    assert_eq!(code, RpcStatusCode::INVALID_ARGUMENT);
    assert_eq!(why, "members is set by the server, not sent");
    // A Chat stream's first message with a forged seq: refused, never joined.
    let (mut tx, mut rx) = client.chat().unwrap();
    let first = ChatMessage {
        sender: "bob".into(),
        seq: 99,
        ..Default::default()
    };
    // The refusal can end the call before the send has even completed.
    let refusal = match block_on(tx.send((first, WriteFlags::default()))) {
        Err(grpcio::Error::RpcFinished(Some(status))) => Some(status),
        Ok(()) => match next_within(&mut rx, "the refusal") {
            Some(Err(grpcio::Error::RpcFailure(status))) => Some(status),
            _ => None,
        },
        Err(_) => None,
    };
    let status = refusal.expect("the stream ended with a status");
    assert_eq!(status.code(), RpcStatusCode::INVALID_ARGUMENT);
    assert_eq!(status.message(), "seq is set by the server, not sent");
    // What a client may send is still taken.
    assert!(post(&client, "geral", "oi").is_ok());
}

#[test]
fn names_that_could_forge_or_hide_are_refused_on_both_protocols() {
    let server = serve(&[]);
    let ws = server.ws.as_deref().unwrap().parse().unwrap();
    for name in [
        "a%1B%5B2Jb",
        "%E2%80%AEnimda",
        "%E2%80%8B",
        "x%0A%5BWARN%5D",
        "%FF",
    ] {
        let (_, status) = raw_upgrade(ws, &format!("/chat?room=r&name={name}"), "");
        assert!(status.starts_with("HTTP/1.1 400"), "{name}: {status}");
        let (_, status) = raw_upgrade(ws, &format!("/chat?room={name}&name=ok"), "");
        assert!(status.starts_with("HTTP/1.1 400"), "room {name}: {status}");
    }
    let client = chat_client(server.grpc.as_deref().unwrap());
    let request = SubscribeRequest {
        room: "r".into(),
        name: "\u{202E}nimda".into(),
        ..Default::default()
    };
    let mut stream = client.subscribe(&request).unwrap();
    match next_within(&mut stream, "the refusal") {
        Some(Err(grpcio::Error::RpcFailure(status))) => {
            assert_eq!(status.code(), RpcStatusCode::INVALID_ARGUMENT);
            assert!(status.message().contains("U+202E"), "{}", status.message());
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[test]
fn what_a_peer_sends_cannot_forge_a_log_line() {
    let server = serve_logging(&["--no-grpc"], "debug");
    let mut ws = ws_member(server.ws.as_deref().unwrap(), "r", "logs");
    // The parser's complaint quotes the key, newline and all.
    ws.send(Message::text("{\"x\\n[FORGED] admin logged in\": 1}"))
        .unwrap();
    while ws.read().is_ok() {}
    eventually(SOON, "the refusal logged", || {
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("FORGED"))
    });
    // Every line is a record of papo's own, starting with its timestamp.
    let log = server.log.lock().unwrap();
    let own = |l: &String| l.starts_with('[') && l[1..].starts_with(|c: char| c.is_ascii_digit());
    assert!(log.iter().all(own), "a forged line:\n{}", log.join("\n"));
}

#[test]
fn a_long_refusal_still_fits_a_close_frame() {
    let server = serve(&["--no-grpc"]);
    let addr = server.ws.as_deref().unwrap().parse().unwrap();
    let (mut raw, status) = raw_upgrade(addr, "/chat?room=r&name=long", "");
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    // An unknown 200-character field: the parser's complaint quotes it.
    let json = format!("{{\"{}\": 1}}", "a".repeat(200));
    raw.write_all(&client_frame(0x81, json.as_bytes(), true))
        .unwrap();
    // Skip the member's own JOIN, then read the close frame's header.
    loop {
        let mut head = [0u8; 2];
        raw.read_exact(&mut head).expect("a frame");
        let len = usize::from(head[1] & 0x7f);
        if head[0] & 0x0f == 0x8 {
            assert!(
                len <= 125,
                "close payload of {len} bytes (length byte {})",
                head[1]
            );
            let mut payload = vec![0u8; len];
            raw.read_exact(&mut payload).unwrap();
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1007);
            assert!(std::str::from_utf8(&payload[2..]).is_ok());
            break;
        }
        let len = match len {
            126 => {
                let mut ext = [0u8; 2];
                raw.read_exact(&mut ext).unwrap();
                usize::from(u16::from_be_bytes(ext))
            }
            len => len,
        };
        raw.read_exact(&mut vec![0u8; len]).unwrap();
    }
}

#[test]
fn slow_members_are_dropped_and_the_room_carries_on_in_order() {
    // One service sends 2,000 messages at once: no rate limit here.
    let server = serve(&["--send-queue", "8", "--rate-limit", "0"]);
    let (ws_addr, grpc_addr) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    let mut fast = ws_member(&ws_addr, "busy", "fast");
    let mut stuck_ws = ws_member(&ws_addr, "busy", "stuck-ws");
    let client = chat_client(&grpc_addr);
    let request = SubscribeRequest {
        room: "busy".into(),
        name: "stuck-grpc".into(),
        ..Default::default()
    };
    let mut stuck_grpc = client.subscribe(&request).unwrap();

    // Neither stuck member reads while 2,000 messages of 4 KiB flow.
    let sender = chat_client(&grpc_addr);
    let payload = "x".repeat(4096);
    let reader = std::thread::spawn(move || {
        let mut texts = Vec::new();
        while texts.len() < 2000 {
            let m = ws_next(&mut fast);
            match kind(&m) {
                Kind::MESSAGE => texts.push(m.seq),
                Kind::LEAVE => assert!(m.sender.starts_with("stuck"), "{m:?}"),
                Kind::JOIN => {}
                Kind::ERROR => panic!("{m:?}"),
            }
        }
        texts
    });
    for _ in 0..2000 {
        post(&sender, "busy", &payload).unwrap();
    }
    let seqs = reader.join().unwrap();
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "the fast member sees them in order"
    );

    // The stuck WebSocket member finds, after what it had buffered, a 1008 close.
    let code = close_of(&mut stuck_ws).map(|f| f.code);
    assert_eq!(code, Some(CloseCode::Policy));
    // The stuck gRPC subscriber's stream ends RESOURCE_EXHAUSTED.
    let end = loop {
        match next_within(&mut stuck_grpc, "the stuck stream's end") {
            Some(Ok(_)) => continue,
            Some(Err(grpcio::Error::RpcFailure(status))) => break status.code(),
            other => panic!("unexpected end: {other:?}"),
        }
    };
    assert_eq!(end, RpcStatusCode::RESOURCE_EXHAUSTED);
}

#[test]
fn terminal_clients_talk_across_protocols() {
    let server = serve(&[]);
    let ws_url = format!("ws://{}/chat", server.ws.as_deref().unwrap());
    let grpc = server.grpc.clone().unwrap();
    let mut via_ws = common::Terminal::start(&[
        "--via", "ws", "--url", &ws_url, "--room", "term", "--name", "ana",
    ]);
    via_ws.expect("* ana entrou (na sala: ana)");
    let mut via_grpc =
        common::Terminal::start(&["--addr", &grpc, "--room", "term", "--name", "bob"]);
    via_grpc.expect("* bob entrou (na sala: ana, bob)");
    via_ws.expect("* bob entrou");
    via_ws.say("olá, bob");
    via_grpc.expect("] ana: olá, bob");
    via_grpc.say("olá, ana");
    via_ws.expect("] bob: olá, ana");
    // The end of stdin leaves the room and exits cleanly.
    drop(via_grpc.child.stdin.take());
    via_ws.expect("* bob saiu");
    assert!(common::wait_exit(&mut via_grpc.child, Duration::from_secs(10)).success());
    drop(via_ws.child.stdin.take());
    assert!(common::wait_exit(&mut via_ws.child, Duration::from_secs(10)).success());
}

#[test]
fn a_member_that_reconnects_with_since_and_epoch_misses_nothing() {
    let server = serve(&[]);
    let (ws_addr, grpc_addr) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    let mut ana = ws_member(&ws_addr, "resume", "ana");
    let (mut bob, _) = connect(format!("ws://{ws_addr}/chat?room=resume&name=bob")).unwrap();
    let joined = ws_next(&mut bob);
    let (since, epoch) = (joined.seq, joined.epoch.clone());
    assert!(!epoch.is_empty(), "{joined:?}");
    drop(bob); // the phone loses signal
               // Once the server has noticed (ana hears him leave), the room goes on.
    loop {
        let m = ws_next(&mut ana);
        if kind(&m) == Kind::LEAVE && m.sender == "bob" {
            break;
        }
    }
    for n in 1..=3 {
        ana.send(Message::text(format!(r#"{{"text":"m{n}"}}"#)))
            .unwrap();
    }
    assert_eq!(messages(|| ws_next(&mut ana), 3).len(), 3);
    let url = format!("ws://{ws_addr}/chat?room=resume&name=bob&since={since}&epoch={epoch}");
    let (mut bob, _) = connect(url).unwrap();
    let mut got = Vec::new();
    let own_join = loop {
        let m = ws_next(&mut bob);
        if kind(&m) == Kind::JOIN && m.sender == "bob" {
            break m;
        }
        got.push((m.seq, kind(&m), m.text));
    };
    // His own LEAVE, then the three he missed, in order, none twice.
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0].1, Kind::LEAVE);
    assert_eq!(
        got[1..].iter().map(|m| m.2.as_str()).collect::<Vec<_>>(),
        ["m1", "m2", "m3"]
    );
    assert!(got.windows(2).all(|w| w[1].0 == w[0].0 + 1) && got[0].0 == since + 1);
    assert!(own_join.recovered, "{own_join:?}");
    assert_eq!(own_join.seq, since + 5);
    // Then live.
    ana.send(Message::text(r#"{"text":"m4"}"#)).unwrap();
    assert_eq!(messages(|| ws_next(&mut bob), 1)[0].2, "m4");
    // A gRPC subscriber asking for everything kept (since 0) sees it all.
    let client = chat_client(&grpc_addr);
    let request = SubscribeRequest {
        room: "resume".into(),
        name: "svc".into(),
        since: Some(0),
        ..Default::default()
    };
    let mut stream = client.subscribe(&request).unwrap();
    let mut texts = Vec::new();
    loop {
        let m = next_within(&mut stream, "the replay").unwrap().unwrap();
        if kind(&m) == Kind::JOIN && m.sender == "svc" {
            assert!(m.recovered);
            break;
        }
        if kind(&m) == Kind::MESSAGE {
            texts.push(m.text);
        }
    }
    assert_eq!(texts, ["m1", "m2", "m3", "m4"]);
}

#[test]
fn papo_chat_reconnects_and_resumes_where_it_stopped() {
    // One message a second: ana's quick second line gets her closed (1008),
    // and papo chat comes back, resuming where it stopped.
    let server = serve_logging(&["--rate-limit", "1", "--rate-burst", "1"], "debug");
    let ws_url = format!("ws://{}/chat", server.ws.as_deref().unwrap());
    let grpc = server.grpc.clone().unwrap();
    let mut ana = common::Terminal::start(&[
        "--via", "ws", "--url", &ws_url, "--room", "volta", "--name", "ana",
    ]);
    ana.expect("* ana entrou (na sala: ana)");
    ana.say("um");
    ana.say("dois");
    eventually(SOON, "ana closed for her rate", || {
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("rate limit"))
    });
    // Said while she is away: she gets it when she is back.
    let client = chat_client(&grpc);
    post(&client, "volta", "dito na ausência").unwrap();
    ana.expect("] svc: dito na ausência");
    drop(ana.child.stdin.take());
    assert!(common::wait_exit(&mut ana.child, SOON).success());
}

#[test]
fn papo_chat_via_grpc_reconnects_and_resumes_where_it_stopped() {
    // As over WebSocket: ana's quick second line ends her stream
    // (RESOURCE_EXHAUSTED), and papo chat comes back, resuming.
    let server = serve_logging(&["--rate-limit", "1", "--rate-burst", "1"], "debug");
    let grpc = server.grpc.clone().unwrap();
    let mut ana = common::Terminal::start(&[
        "--via", "grpc", "--addr", &grpc, "--room", "volta", "--name", "ana",
    ]);
    ana.expect("* ana entrou (na sala: ana)");
    ana.say("um");
    let client = chat_client(&grpc);
    let request = SubscribeRequest {
        room: "volta".into(),
        name: "eva".into(),
        ..Default::default()
    };
    let mut watcher = client.subscribe(&request).unwrap();
    ana.expect("* eva entrou");
    ana.say("dois");
    loop {
        let m = next_within(&mut watcher, "ana's LEAVE").unwrap().unwrap();
        if kind(&m) == Kind::LEAVE && m.sender == "ana" {
            break;
        }
    }
    // Said while she is away: she gets it when she is back.
    post(&client, "volta", "dito na ausência").unwrap();
    ana.expect("] svc: dito na ausência");
    drop(ana.child.stdin.take());
    assert!(common::wait_exit(&mut ana.child, SOON).success());
}

/// A `papo_message_bytes_total` line of `/metrics`.
fn bytes_total(metrics: &str, protocol: &str, direction: &str) -> u64 {
    let key =
        format!("papo_message_bytes_total{{protocol=\"{protocol}\",direction=\"{direction}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&key))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing from\n{metrics}"))
}

#[test]
fn bytes_out_are_each_protocols_message_without_its_framing() {
    use protobuf::Message as _;
    let server = serve(&[]);
    let (ws_addr, grpc_addr) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    let (mut ana, _) = connect(format!("ws://{ws_addr}/chat?room=bytes&name=ana")).unwrap();
    let mut ana_read = 0;
    let mut ana_next = || match ana.read().unwrap() {
        Message::Text(json) => {
            ana_read += json.len() as u64;
            let message: ChatMessage =
                protobuf_json_mapping::parse_from_str(json.as_str()).unwrap();
            message
        }
        other => panic!("not a text message: {other:?}"),
    };
    assert_eq!(kind(&ana_next()), Kind::JOIN);

    let client = chat_client(&grpc_addr);
    let request = SubscribeRequest {
        room: "bytes".into(),
        name: "bob".into(),
        ..Default::default()
    };
    let mut bob = client.subscribe(&request).unwrap();
    let mut bob_read = 0;
    let mut bob_next = || {
        let message = next_within(&mut bob, "bob's message").unwrap().unwrap();
        bob_read += message.compute_size();
        message
    };
    assert_eq!(kind(&bob_next()), Kind::JOIN);
    assert_eq!(kind(&ana_next()), Kind::JOIN);
    let response = post(&client, "bytes", "olá, bytes").unwrap();
    assert_eq!(bob_next().text, "olá, bytes");
    assert_eq!(ana_next().text, "olá, bytes");

    let addr = ws_addr.parse().unwrap();
    let metrics = common::raw_exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(bytes_total(&metrics, "ws", "out"), ana_read);
    assert_eq!(
        bytes_total(&metrics, "grpc", "out"),
        bob_read + response.compute_size()
    );
}
