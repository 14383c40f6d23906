//! Several `papo serve --redis` instances on one Redis: one room, one order,
//! members across instances, failover without loss, Redis going away.
//! Each test starts its own `redis-server` on a free port, persistence off.

mod common;

use std::collections::HashSet;
use std::thread;
use std::time::Duration;

use common::{chat_client, connect, next_within, serve, RedisServer, ServeProcess, Ws};
use futures_util::SinkExt;
use grpcio::WriteFlags;
use papo::executor::block_on;
use papo::proto::chat::message::Kind;
use papo::proto::chat::{Message as ChatMessage, SubscribeRequest};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

/// An instance on `redis`, without a rate limit (these tests say a lot).
fn instance(redis: &RedisServer, extra: &[&str]) -> ServeProcess {
    let url = redis.url();
    let mut args = vec!["--redis", &url, "--rate-limit", "0", "--send-queue", "4096"];
    args.extend_from_slice(extra);
    serve(&args)
}

fn kind(m: &ChatMessage) -> Kind {
    m.kind.enum_value_or_default()
}

/// A `/chat` connection (its JOIN not read yet).
fn ws_open(addr: &str, query: &str) -> Ws {
    let (ws, _) = connect(format!("ws://{addr}/chat?{query}")).expect("connect");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
    }
    ws
}

/// The next chat message on a WebSocket, decoded from JSON.
fn ws_next(ws: &mut Ws) -> ChatMessage {
    loop {
        match ws.read().expect("ws read") {
            Message::Text(json) => {
                return protobuf_json_mapping::parse_from_str(json.as_str()).expect("JSON")
            }
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

fn ws_say(ws: &mut Ws, text: &str) {
    ws.send(Message::text(format!(r#"{{"text":"{text}"}}"#)))
        .expect("ws send");
}

/// Reads until `name`'s own JOIN; returns it.
fn own_join(mut next: impl FnMut() -> ChatMessage, name: &str) -> ChatMessage {
    loop {
        let m = next();
        if kind(&m) == Kind::JOIN && m.sender == name && !m.members.is_empty() {
            return m;
        }
    }
}

/// Reads until `name`'s JOIN, as the others see it.
fn next_join(mut next: impl FnMut() -> ChatMessage, name: &str) -> ChatMessage {
    loop {
        let m = next();
        if kind(&m) == Kind::JOIN && m.sender == name {
            return m;
        }
    }
}

/// (seq, sender, text) of the next `count` chat messages (not events).
fn said(mut next: impl FnMut() -> ChatMessage, count: usize) -> Vec<(u64, String, String)> {
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        let m = next();
        if kind(&m) == Kind::MESSAGE {
            seen.push((m.seq, m.sender, m.text));
        }
    }
    seen
}

#[test]
fn three_instances_share_a_room_in_one_order_across_protocols() {
    let redis = RedisServer::start();
    let (a, b, c) = (
        instance(&redis, &[]),
        instance(&redis, &[]),
        instance(&redis, &[]),
    );
    let (a_ws, b_grpc, c_grpc) = (
        a.ws.clone().unwrap(),
        b.grpc.clone().unwrap(),
        c.grpc.clone().unwrap(),
    );

    // A WebSocket member on A, a `Chat` member on B, a `Subscribe` on C.
    let mut ana = ws_open(&a_ws, "room=sala&name=ana");
    let joined = own_join(|| ws_next(&mut ana), "ana");
    assert_eq!(joined.members, ["ana"]);

    let on_b = chat_client(&b_grpc);
    let (mut bob_tx, mut bob_rx) = on_b.chat().expect("Chat");
    let hello = ChatMessage {
        sender: "bob".into(),
        room: "sala".into(),
        ..Default::default()
    };
    block_on(bob_tx.send((hello, WriteFlags::default()))).expect("first message");
    let bob_next = |rx: &mut grpcio::ClientDuplexReceiver<ChatMessage>| {
        next_within(rx, "bob's stream")
            .expect("open")
            .expect("message")
    };
    let joined = own_join(|| bob_next(&mut bob_rx), "bob");
    assert_eq!(
        joined.members,
        ["ana", "bob"],
        "the member list spans instances"
    );

    let on_c = chat_client(&c_grpc);
    let request = SubscribeRequest {
        room: "sala".into(),
        name: "cris".into(),
        ..Default::default()
    };
    let mut cris = on_c.subscribe(&request).expect("Subscribe");
    let joined = own_join(|| next_within(&mut cris, "cris").unwrap().unwrap(), "cris");
    assert_eq!(joined.members, ["ana", "bob", "cris"]);
    // Everyone hears about the others, whichever instance they are on.
    let heard = next_join(|| ws_next(&mut ana), "cris");
    assert_eq!(heard.seq, joined.seq);

    // 1,000 messages from all three instances at once.
    const EACH: usize = 334;
    let ana_sends = thread::spawn({
        let mut ana = ana;
        move || {
            for n in 0..EACH {
                ws_say(&mut ana, &format!("a{n}"));
            }
            ana
        }
    });
    let bob_sends = thread::spawn(move || {
        for n in 0..EACH {
            let m = ChatMessage {
                text: format!("b{n}"),
                ..Default::default()
            };
            block_on(bob_tx.send((m, WriteFlags::default()))).expect("bob says");
        }
        bob_tx
    });
    for n in 0..1000 - 2 * EACH {
        let m = ChatMessage {
            sender: "svc".into(),
            room: "sala".into(),
            text: format!("c{n}"),
            ..Default::default()
        };
        on_c.send_message(&m).expect("SendMessage on C");
    }
    let mut ana = ana_sends.join().unwrap();
    let _bob_tx = bob_sends.join().unwrap();

    let on_a = said(|| ws_next(&mut ana), 1000);
    let on_b = said(|| bob_next(&mut bob_rx), 1000);
    let on_c = said(|| next_within(&mut cris, "cris").unwrap().unwrap(), 1000);
    assert_eq!(on_a, on_b, "A and B saw one sequence");
    assert_eq!(on_a, on_c, "A and C saw one sequence");
    let seqs: Vec<u64> = on_a.iter().map(|(seq, _, _)| *seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "numbers increase");
    let texts: HashSet<&str> = on_a.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(texts.len(), 1000, "each message once");
    // Every sender's own messages in the order it said them.
    for (sender, prefix) in [("ana", "a"), ("bob", "b"), ("svc", "c")] {
        let own: Vec<&str> = on_a
            .iter()
            .filter(|(_, s, _)| s == sender)
            .map(|(_, _, t)| t.as_str())
            .collect();
        let expected: Vec<String> = (0..own.len()).map(|n| format!("{prefix}{n}")).collect();
        assert_eq!(own, expected, "{sender}'s messages in order");
    }
    drop((a, b, c));
}
