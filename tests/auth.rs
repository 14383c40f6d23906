//! Signed tokens: `papo serve --auth-secret-file` against tokens minted by
//! `papo token`, on both protocols, with every refusal's exact answer.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    chat_client, close_of, connect, kind, next_within, papo, raw_upgrade, serve, ws_next,
    OutputWithin, ServeProcess, Ws, SOON,
};
use futures_util::SinkExt;
use grpcio::{CallOption, MetadataBuilder, RpcStatusCode, WriteFlags};
use papo::executor::block_on;
use papo::proto::chat::message::Kind;
use papo::proto::chat::{Message as ChatMessage, SubscribeRequest};
use papo::proto::chat_grpc::ChatServiceClient;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

const SECRET: &str = "the tests' HS256 secret, at least thirty-two bytes long";

/// A secret file of this test's own.
fn secret_file(test: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("papo-auth-{test}-{}", std::process::id()));
    std::fs::write(&path, format!("{SECRET}\n")).expect("write the secret");
    path
}

fn server(secret: &Path) -> ServeProcess {
    serve(&["--auth-secret-file", secret.to_str().unwrap()])
}

/// `papo token ARGS` with the secret.
fn token(secret: &Path, args: &[&str]) -> String {
    let out = papo()
        .args(["token", "--secret-file", secret.to_str().unwrap()])
        .args(args)
        .output_within();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The status line of a `/chat` upgrade with `extra` header lines.
fn upgrade_status(addr: &str, path: &str, extra: &str) -> String {
    raw_upgrade(addr.parse().unwrap(), path, extra).1
}

/// A `/chat` member with its token in the `Authorization` header.
fn ws_with_header(addr: &str, query: &str, token: &str) -> Ws {
    let mut request = format!("ws://{addr}/chat?{query}")
        .into_client_request()
        .unwrap();
    let value = format!("Bearer {token}").parse().unwrap();
    request.headers_mut().insert("Authorization", value);
    let (ws, _) = connect(request).expect("upgrade with a token");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(SOON)).unwrap();
    }
    ws
}

fn own_join(ws: &mut Ws) -> ChatMessage {
    loop {
        let m = ws_next(ws);
        if kind(&m) == Kind::JOIN && !m.members.is_empty() {
            return m;
        }
    }
}

/// A call option carrying `authorization: Bearer <token>`.
fn bearer(token: &str) -> CallOption {
    let mut headers = MetadataBuilder::new();
    headers
        .add_str("authorization", &format!("Bearer {token}"))
        .unwrap();
    CallOption::default().headers(headers.build())
}

fn post(
    client: &ChatServiceClient,
    sender: &str,
    room: &str,
    token: Option<&str>,
) -> Option<RpcStatusCode> {
    let m = ChatMessage {
        sender: sender.into(),
        room: room.into(),
        text: "oi".into(),
        ..Default::default()
    };
    let option = token.map_or_else(CallOption::default, bearer);
    client.send_message_opt(&m, option).err().map(|e| match e {
        grpcio::Error::RpcFailure(status) => status.code(),
        other => panic!("{other:?}"),
    })
}

#[test]
fn websocket_members_need_a_valid_token_for_their_room_and_take_its_name() {
    let secret = secret_file("ws");
    let server = server(&secret);
    let ws = server.ws.clone().unwrap();
    let ana = token(&secret, &["--sub", "ana", "--rooms", "geral,dev-*"]);
    let forged = {
        let other = std::env::temp_dir().join(format!("papo-auth-other-{}", std::process::id()));
        std::fs::write(&other, "another secret, also thirty-two bytes or more").unwrap();
        token(&other, &["--sub", "ana"])
    };
    let none = {
        // alg none: a header and claims, and an empty signature.
        let b64 = |s: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        format!(
            "{}.{}.",
            b64(r#"{"alg":"none"}"#),
            b64(r#"{"sub":"ana","exp":99999999999}"#)
        )
    };
    let cases = [
        ("/chat?room=geral", String::new(), "401"),
        (
            "/chat?room=geral",
            format!("Authorization: Bearer {forged}"),
            "401",
        ),
        (
            "/chat?room=geral",
            format!("Authorization: Bearer {none}"),
            "401",
        ),
        (
            "/chat?room=geral",
            "Authorization: Bearer not.a.token".into(),
            "401",
        ),
        (
            "/chat?room=ops",
            format!("Authorization: Bearer {ana}"),
            "403",
        ),
        (
            "/chat?room=geral&name=bob",
            format!("Authorization: Bearer {ana}"),
            "403",
        ),
        (
            &*format!("/chat?room=dev-x&token={ana}"),
            String::new(),
            "101",
        ),
        (
            "/chat?room=geral&name=ana",
            format!("Authorization: Bearer {ana}"),
            "101",
        ),
    ];
    for (path, header, status) in &cases {
        let line = upgrade_status(
            &ws,
            path,
            &format!("{header}\r\n").replace("\r\n\r\n", "\r\n"),
        );
        assert!(line.contains(status), "{path} {header}: {line}");
    }
    // The seed's /ws needs no token.
    assert!(upgrade_status(&ws, "/ws", "").contains("101"));
    // No name given: the token's sub is the name.
    let mut member = ws_with_header(&ws, "room=geral", &ana);
    let joined = own_join(&mut member);
    assert_eq!(
        (joined.sender.as_str(), joined.members.clone()),
        ("ana", vec!["ana".to_owned()])
    );
    let metrics = common::raw_exchange(
        ws.parse().unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    for (reason, at_least) in [
        ("missing", 1),
        ("bad_signature", 1),
        ("algorithm", 1),
        ("malformed", 1),
        ("forbidden", 2),
    ] {
        let line = format!("papo_auth_failures_total{{reason=\"{reason}\"}} ");
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(count >= at_least, "{reason}: {count}");
    }
}

#[test]
fn a_read_only_member_hears_but_cannot_speak_on_either_protocol() {
    let secret = secret_file("ro");
    let server = server(&secret);
    let (ws, grpc) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    let reader = token(&secret, &["--sub", "leitor", "--read-only"]);
    let speaker = token(&secret, &["--sub", "ana"]);
    let mut listener = ws_with_header(&ws, "room=geral", &reader);
    own_join(&mut listener);
    let client = chat_client(&grpc);
    assert_eq!(post(&client, "ana", "geral", Some(&speaker)), None);
    let heard = loop {
        let m = ws_next(&mut listener);
        if kind(&m) == Kind::MESSAGE {
            break m;
        }
    };
    assert_eq!((heard.sender.as_str(), heard.text.as_str()), ("ana", "oi"));
    // Speaking: closed 1008 over WebSocket, PERMISSION_DENIED over gRPC.
    listener
        .send(Message::text(r#"{"text":"posso?"}"#))
        .unwrap();
    let close = close_of(&mut listener).expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy);
    assert!(close.reason.contains("read-only"), "{close:?}");
    assert_eq!(
        post(&client, "leitor", "geral", Some(&reader)),
        Some(RpcStatusCode::PERMISSION_DENIED)
    );
    let (mut tx, mut rx) = client.chat_opt(bearer(&reader)).unwrap();
    let hello = ChatMessage {
        room: "geral".into(),
        text: "e agora?".into(),
        ..Default::default()
    };
    block_on(tx.send((hello, WriteFlags::default()))).unwrap();
    let ended = loop {
        match next_within(&mut rx, "the read-only stream's end") {
            Some(Ok(_)) => continue,
            Some(Err(grpcio::Error::RpcFailure(status))) => break status.code(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(ended, RpcStatusCode::PERMISSION_DENIED);
}

#[test]
fn grpc_calls_need_a_token_whose_sub_is_the_sender() {
    let secret = secret_file("grpc");
    let server = server(&secret);
    let client = chat_client(&server.grpc.clone().unwrap());
    let ana = token(&secret, &["--sub", "ana", "--rooms", "geral"]);
    assert_eq!(
        post(&client, "ana", "geral", None),
        Some(RpcStatusCode::UNAUTHENTICATED)
    );
    assert_eq!(
        post(&client, "ana", "geral", Some("x.y.z")),
        Some(RpcStatusCode::UNAUTHENTICATED)
    );
    assert_eq!(
        post(&client, "bob", "geral", Some(&ana)),
        Some(RpcStatusCode::PERMISSION_DENIED),
        "a forged sender"
    );
    assert_eq!(
        post(&client, "ana", "ops", Some(&ana)),
        Some(RpcStatusCode::PERMISSION_DENIED)
    );
    assert_eq!(post(&client, "ana", "geral", Some(&ana)), None);
    let request = SubscribeRequest {
        room: "ops".into(),
        ..Default::default()
    };
    let mut refused = client.subscribe_opt(&request, bearer(&ana)).unwrap();
    match next_within(&mut refused, "the refusal") {
        Some(Err(grpcio::Error::RpcFailure(status))) => {
            assert_eq!(status.code(), RpcStatusCode::PERMISSION_DENIED)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_member_is_ended_when_its_token_expires() {
    let secret = secret_file("exp");
    let server = serve(&[
        "--auth-secret-file",
        secret.to_str().unwrap(),
        "--auth-leeway",
        "0s",
    ]);
    let short = token(&secret, &["--sub", "ana", "--ttl", "2s"]);
    let mut member = ws_with_header(&server.ws.clone().unwrap(), "room=geral", &short);
    own_join(&mut member);
    let start = Instant::now();
    let close = close_of(&mut member).expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy);
    assert_eq!(close.reason.as_str(), "token expired");
    assert!(
        start.elapsed() <= Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );

    let short = token(&secret, &["--sub", "bob", "--ttl", "2s"]);
    let client = chat_client(&server.grpc.clone().unwrap());
    let request = SubscribeRequest {
        room: "geral".into(),
        ..Default::default()
    };
    let mut stream = client.subscribe_opt(&request, bearer(&short)).unwrap();
    let ended = loop {
        match next_within(&mut stream, "the stream's end at expiry") {
            Some(Ok(_)) => continue,
            Some(Err(grpcio::Error::RpcFailure(status))) => break status,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(ended.code(), RpcStatusCode::UNAUTHENTICATED);
    assert_eq!(ended.message(), "token expired");
}

#[test]
fn two_connections_of_one_sub_are_one_member() {
    let secret = secret_file("twice");
    let server = server(&secret);
    let ws = server.ws.clone().unwrap();
    let (ana, bob) = (
        token(&secret, &["--sub", "ana"]),
        token(&secret, &["--sub", "bob"]),
    );
    let mut watcher = ws_with_header(&ws, "room=geral", &bob);
    own_join(&mut watcher);
    let mut first = ws_with_header(&ws, "room=geral", &ana);
    own_join(&mut first);
    let mut second = ws_with_header(&ws, "room=geral", &ana);
    let joined = own_join(&mut second);
    assert_eq!(joined.members, ["ana", "bob"]);
    assert_eq!(
        joined.connections,
        [2, 1],
        "ana is one member with two connections"
    );
    // bob hears ana come once and go once, after her last connection.
    let client = chat_client(&server.grpc.clone().unwrap());
    let mut events = Vec::new();
    let until_said = |watcher: &mut Ws, events: &mut Vec<(Kind, String)>, text: &str| {
        assert_eq!(post_text(&client, &bob, text), None);
        loop {
            let m = ws_next(watcher);
            match kind(&m) {
                Kind::MESSAGE if m.text == text => break,
                Kind::MESSAGE => {}
                k => events.push((k, m.sender)),
            }
        }
    };
    close(second);
    until_said(&mut watcher, &mut events, "one left");
    close(first);
    common::eventually(SOON, "ana's last connection gone", || {
        until_said(&mut watcher, &mut events, "anyone?");
        events.iter().any(|(k, _)| *k == Kind::LEAVE)
    });
    until_said(&mut watcher, &mut events, "after");
    assert_eq!(
        events,
        [
            (Kind::JOIN, "ana".to_owned()),
            (Kind::LEAVE, "ana".to_owned())
        ]
    );
}

/// Closes a WebSocket and waits for the server's answer.
fn close(mut ws: Ws) {
    let _ = ws.close(None);
    while ws.read().is_ok() {}
}

/// `SendMessage` of `text` to `geral` as bob.
fn post_text(client: &ChatServiceClient, token: &str, text: &str) -> Option<RpcStatusCode> {
    let m = ChatMessage {
        sender: "bob".into(),
        room: "geral".into(),
        text: text.into(),
        ..Default::default()
    };
    client
        .send_message_opt(&m, bearer(token))
        .err()
        .map(|e| match e {
            grpcio::Error::RpcFailure(status) => status.code(),
            other => panic!("{other:?}"),
        })
}
