//! The WebSocket server against real sockets: the seed's replies, exact echo,
//! HTTP errors and limits. Protocol violations: `hardening.rs`.

mod common;

use common::{connect, raw_exchange, upgrade_request, ws_server};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use papo::config::ServeConfig;
use papo::ws::WsConfig;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

type Client = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn client(addr: SocketAddr, path: &str) -> Client {
    connect(format!("ws://{addr}{path}")).expect("connect").0
}

fn roundtrip(ws: &mut Client, message: Message) -> Message {
    ws.send(message).expect("send");
    loop {
        match ws.read().expect("read") {
            m @ (Message::Text(_) | Message::Binary(_) | Message::Close(_)) => return m,
            _ => continue,
        }
    }
}

fn close_code(message: Message) -> Option<CloseCode> {
    match message {
        Message::Close(Some(frame)) => Some(frame.code),
        _ => None,
    }
}

#[test]
fn ws_replies_like_the_seed_for_text_binary_empty_and_utf8() {
    let addr = ws_server(ServeConfig::default().ws);
    let mut ws = client(addr, "/ws");
    let cases = [
        (
            Message::text("Olá, WebSocket!"),
            Message::text("Recebido: Olá, WebSocket!"),
        ),
        (Message::text(""), Message::text("Recebido: ")),
        (
            Message::text("日本語 🎉"),
            Message::text("Recebido: 日本語 🎉"),
        ),
        (
            Message::binary(vec![0u8, 1, 2, 255]),
            Message::binary(b"Recebido: \x00\x01\x02\xff".to_vec()),
        ),
        (
            Message::binary(Vec::new()),
            Message::binary(b"Recebido: ".to_vec()),
        ),
    ];
    for (sent, expected) in cases {
        assert_eq!(roundtrip(&mut ws, sent), expected);
    }
}

#[test]
fn ws_handles_one_mib_messages() {
    let addr = ws_server(ServeConfig::default().ws);
    let mut ws = client(addr, "/ws");
    let text = "á".repeat(512 * 1024); // 1 MiB of two-byte characters
    assert_eq!(
        roundtrip(&mut ws, Message::text(text.clone())),
        Message::text(format!("Recebido: {text}"))
    );
    let data: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8).collect();
    let mut expected = b"Recebido: ".to_vec();
    expected.extend_from_slice(&data);
    assert_eq!(
        roundtrip(&mut ws, Message::binary(data)),
        Message::binary(expected)
    );
}

#[test]
fn echo_endpoint_echoes_exactly() {
    let addr = ws_server(ServeConfig::default().ws);
    let mut ws = client(addr, "/echo");
    for message in [
        Message::text("Olá"),
        Message::text(""),
        Message::binary(vec![9u8; 70_000]),
    ] {
        assert_eq!(roundtrip(&mut ws, message.clone()), message);
    }
}

#[test]
fn fifty_concurrent_connections_each_get_their_own_replies() {
    let addr = ws_server(ServeConfig::default().ws);
    let all_open = Arc::new(Barrier::new(50));
    let threads: Vec<_> = (0..50)
        .map(|id| {
            let all_open = Arc::clone(&all_open);
            thread::spawn(move || {
                let mut ws = client(addr, "/ws");
                all_open.wait();
                for n in 0..20 {
                    let text = format!("client {id} message {n}");
                    assert_eq!(
                        roundtrip(&mut ws, Message::text(text.clone())),
                        Message::text(format!("Recebido: {text}"))
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

#[test]
fn other_paths_get_404_and_no_upgrade() {
    let addr = ws_server(ServeConfig::default().ws);
    let answer = raw_exchange(addr, upgrade_request("/nope").as_bytes());
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    let answer = raw_exchange(
        addr,
        b"GET /favicon.ico HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
}

#[test]
fn plain_http_on_a_websocket_path_gets_426() {
    let addr = ws_server(ServeConfig::default().ws);
    let answer = raw_exchange(addr, b"GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{answer}"
    );
    assert!(answer.contains("Upgrade: websocket\r\n"), "{answer}");
}

#[test]
fn malformed_requests_get_4xx() {
    let addr = ws_server(ServeConfig::default().ws);
    let answer = raw_exchange(
        addr,
        b"POST /ws HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
    let answer = raw_exchange(addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let huge = format!("GET /ws HTTP/1.1\r\nX-Filler: {}\r\n", "a".repeat(9000));
    let answer = raw_exchange(addr, huge.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    // Too many header lines, each small, are too large a head as well.
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw_exchange(addr, format!("GET /ws HTTP/1.1\r\n{many}\r\n").as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    // Plain HTTP/1.0 gets plain answers; a WebSocket needs HTTP/1.1.
    let answer = raw_exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let answer = raw_exchange(addr, b"GET /nope HTTP/1.0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    let answer = raw_exchange(
        addr,
        upgrade_request("/ws")
            .replacen("HTTP/1.1", "HTTP/1.0", 1)
            .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
    // The server still serves everyone else.
    let mut ws = client(addr, "/ws");
    assert_eq!(
        roundtrip(&mut ws, Message::text("ok")),
        Message::text("Recebido: ok")
    );
}

#[test]
fn oversized_message_is_closed_with_1009_and_others_carry_on() {
    let addr = ws_server(WsConfig {
        max_message_size: 1024,
        ..ServeConfig::default().ws
    });
    let mut other = client(addr, "/ws");
    let mut ws = client(addr, "/ws");
    let reply = roundtrip(&mut ws, Message::binary(vec![1u8; 2048]));
    assert_eq!(close_code(reply), Some(CloseCode::Size));
    assert_eq!(
        roundtrip(&mut other, Message::text("still here")),
        Message::text("Recebido: still here")
    );
}

#[test]
fn connections_past_the_limit_get_503_until_one_leaves() {
    let addr = ws_server(WsConfig {
        max_connections: 2,
        ..ServeConfig::default().ws
    });
    let first = client(addr, "/ws");
    let _second = client(addr, "/ws");
    let answer = raw_exchange(addr, upgrade_request("/ws").as_bytes());
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    drop(first);
    let start = Instant::now();
    loop {
        if let Ok((mut ws, _)) = connect(format!("ws://{addr}/ws")) {
            assert_eq!(
                roundtrip(&mut ws, Message::text("in")),
                Message::text("Recebido: in")
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "slot never freed");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn silent_and_dribbling_peers_are_dropped_at_the_handshake_deadline() {
    let addr = ws_server(WsConfig {
        handshake_timeout: Duration::from_millis(300),
        ..ServeConfig::default().ws
    });
    let mut silent = TcpStream::connect(addr).expect("connect");
    let mut dribbling = TcpStream::connect(addr).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let start = Instant::now();
    let dribbler = thread::spawn(move || {
        for byte in b"GET /ws HTTP/1.1\r\nHost: x\r\n".iter().cycle().take(40) {
            if dribbling.write_all(&[*byte]).is_err() {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    });
    let mut buf = [0u8; 16];
    assert_eq!(silent.read(&mut buf).expect("server closes"), 0);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(
        dribbler.join().expect("dribbler"),
        "dribbling peer was never dropped"
    );
}
