//! The WebSocket server as it meets the open internet: keepalive, the write
//! deadline, the origin policy, metrics, and bad input (protocol violations,
//! garbage, resets, floods) that must not hurt anyone else.

mod common;

use common::{
    client_frame, connect, eventually, protocol_violations, raw_exchange, raw_upgrade,
    raw_websocket, read_close_code, serve, serve_logging, thread_names, threads, upgrade_request,
    ws_server_with, SOON,
};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use papo::config::ServeConfig;
use papo::ws::WsConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

fn echo(addr: SocketAddr) -> bool {
    let Ok((mut ws, _)) = connect(format!("ws://{addr}/ws")) else {
        return false;
    };
    ws.send(Message::text("ping?")).is_ok()
        && matches!(ws.read(), Ok(Message::Text(t)) if t.as_str() == "Recebido: ping?")
}

fn set_read_timeout(
    ws: &mut tungstenite::WebSocket<MaybeTlsStream<TcpStream>>,
    timeout: Option<Duration>,
) {
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(timeout).unwrap();
    }
}

#[test]
fn silent_peers_are_pinged_and_dropped_live_ones_kept() {
    let server = ws_server_with(WsConfig {
        ping_interval: Some(Duration::from_millis(200)),
        pong_timeout: Duration::from_millis(300),
        ..ServeConfig::default().ws
    });
    // A raw peer that never answers: it sees a ping (opcode 9), then EOF.
    let (mut silent, status) = raw_upgrade(server.addr, "/ws", "");
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let start = Instant::now();
    let mut received = Vec::new();
    let _ = silent.read_to_end(&mut received);
    assert_eq!(
        received.first().map(|b| b & 0x0f),
        Some(0x9),
        "expected a ping first"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    eventually(SOON, "pong timeout counted", || {
        server
            .metrics
            .render()
            .contains("reason=\"pong_timeout\"} 1")
    });

    // A tungstenite client answers pings by itself and stays connected.
    let (mut live, _) = connect(format!("ws://{}/ws", server.addr)).unwrap();
    set_read_timeout(&mut live, Some(Duration::from_millis(100)));
    let until = Instant::now() + Duration::from_millis(1200);
    let mut pings = 0;
    while Instant::now() < until {
        match live.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(_)) => {}
            Err(e) => panic!("live peer dropped: {e}"),
        }
    }
    assert!(pings >= 2, "only {pings} pings");
    set_read_timeout(&mut live, None);
    live.send(Message::text("still")).unwrap();
    loop {
        match live.read().unwrap() {
            Message::Text(t) => break assert_eq!(t.as_str(), "Recebido: still"),
            _ => continue,
        }
    }
}

#[test]
fn a_peer_that_stops_reading_is_dropped_at_the_write_deadline() {
    let server = ws_server_with(WsConfig {
        write_timeout: Some(Duration::from_millis(300)),
        ping_interval: None,
        ..ServeConfig::default().ws
    });
    let (mut stuck, status) = raw_upgrade(server.addr, "/echo", "");
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    // Masked 60 KiB binary frames, sent and never read back: the echoes fill
    // both socket buffers until the server's write blocks.
    let payload = vec![0u8; 60 * 1024];
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]); // zero mask: payload unchanged
    frame.extend_from_slice(&payload);
    stuck
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    while stuck.write_all(&frame).is_ok() && start.elapsed() < SOON {}
    eventually(SOON, "stuck peer dropped", || {
        server.metrics.ws_active.load(Ordering::Relaxed) == 0
    });
    assert!(server.metrics.render().contains("reason=\"io_error\"} 1"));
    assert!(echo(server.addr));
}

#[test]
fn without_a_write_timeout_a_briefly_full_peer_is_kept() {
    let server = ws_server_with(WsConfig {
        write_timeout: None,
        ping_interval: None,
        ..ServeConfig::default().ws
    });
    let (mut slow, status) = raw_upgrade(server.addr, "/echo", "");
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    // A small receive buffer: the echoes back up into the server's queue.
    let small: libc::c_int = 64 << 10;
    // SAFETY: setsockopt on a socket this test owns, with a live int.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&slow),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &small as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let payload = vec![7u8; 60 * 1024];
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]); // zero mask: payload unchanged
    frame.extend_from_slice(&payload);
    let frames = 110; // 6.6 MiB: more than the sockets hold, less than the queue
    for _ in 0..frames {
        slow.write_all(&frame).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    // "0: no limit" means the peer waits for the reader, not an instant cut.
    for n in 0..frames {
        // A binary frame with a 16-bit length: 60 KiB.
        let mut head = [0u8; 4];
        slow.read_exact(&mut head)
            .unwrap_or_else(|e| panic!("echo {n} of {frames}: {e}"));
        assert_eq!(head, [0x82, 126, 0xf0, 0x00], "echo {n}");
        let mut body = vec![0u8; payload.len()];
        slow.read_exact(&mut body).unwrap();
        assert!(body == payload, "echo {n} differs");
    }
    assert_eq!(server.metrics.ws_active.load(Ordering::Relaxed), 1);
}

/// The status line of an upgrade to `/ws` with these `Host` and extra lines.
fn upgrade_status(addr: SocketAddr, host: &str, extra: &str) -> String {
    let request = upgrade_request("/ws").replace("Host: localhost", &format!("Host: {host}"));
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("{extra}\r\n")
    };
    let request = request.replacen("\r\n\r\n", &format!("\r\n{extra}\r\n"), 1);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(SOON)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn cross_site_browsers_get_403_same_site_and_allowed_ones_upgrade() {
    let server = ws_server_with(WsConfig {
        allowed_origins: vec!["https://app.example".into()],
        public_hosts: vec!["chat.example".into()],
        ..ServeConfig::default().ws
    });
    let own = server.addr.to_string();
    let port = server.addr.port();
    let cases = [
        (
            own.clone(),
            "Origin: http://evil.example".to_owned(),
            "HTTP/1.1 403",
        ),
        (own.clone(), format!("Origin: http://{own}"), "HTTP/1.1 101"),
        (
            own.clone(),
            "Origin: https://app.example".to_owned(),
            "HTTP/1.1 101",
        ),
        (own.clone(), String::new(), "HTTP/1.1 101"),
        // DNS rebinding: a domain re-pointed at this address.
        (
            format!("evil.example:{port}"),
            format!("Origin: http://evil.example:{port}"),
            "HTTP/1.1 403",
        ),
        // A name this server is known by.
        (
            format!("chat.example:{port}"),
            format!("Origin: https://chat.example:{port}"),
            "HTTP/1.1 101",
        ),
        // An Origin that is not ASCII is refused, not taken as absent.
        (
            own.clone(),
            "Origin: http://\u{e9}vil.example".to_owned(),
            "HTTP/1.1 403",
        ),
    ];
    for (host, origin, expected) in cases {
        assert_eq!(
            upgrade_status(server.addr, &host, &origin),
            expected,
            "{host} {origin:?}"
        );
    }
}

#[test]
fn a_refused_browser_is_logged_with_how_to_allow_it() {
    let server = serve_logging(&["--no-grpc"], "info");
    let addr: SocketAddr = server.ws.as_deref().unwrap().parse().unwrap();
    let status = upgrade_status(addr, &addr.to_string(), "Origin: https://page.example");
    assert_eq!(status, "HTTP/1.1 403");
    eventually(SOON, "a warning naming the origin and the flag", || {
        server.log.lock().unwrap().iter().any(|l| {
            l.contains("WARN")
                && l.contains("\"https://page.example\"")
                && l.contains("--allowed-origin")
        })
    });
}

#[test]
fn a_failed_connection_is_closed_within_a_second_however_the_peer_trickles() {
    let server = ws_server_with(ServeConfig::default().ws);
    let mut stream = raw_websocket(server.addr);
    let (_, bad, code) = protocol_violations().into_iter().next().unwrap();
    stream.write_all(&bad).unwrap();
    assert_eq!(read_close_code(&mut stream), Some(code));
    let start = Instant::now();
    // A byte every 100 ms keeps each of the server's reads busy.
    let mut trickle = stream.try_clone().unwrap();
    let trickler = std::thread::spawn(move || {
        while start.elapsed() < SOON && trickle.write_all(b"x").is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    eventually(SOON, "the connection closed", || {
        server.metrics.ws_active.load(Ordering::Relaxed) == 0
    });
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    drop(stream);
    let _ = trickler.join();
}

/// Sends 600 KiB of an unfinished text message, in 60 KiB fragments.
fn send_unfinished_message(stream: &mut TcpStream) -> std::io::Result<()> {
    let chunk = vec![b'x'; 60 << 10];
    for n in 0..10 {
        let opcode = if n == 0 { 0x01 } else { 0x00 };
        stream.write_all(&client_frame(opcode, &chunk, true))?;
    }
    Ok(())
}

#[test]
fn unfinished_messages_share_one_inbound_budget() {
    let server = ws_server_with(WsConfig {
        inbound_budget: 1 << 20,
        ..ServeConfig::default().ws
    });
    // A holds 600 KiB of a message, and a ping's answer says the server
    // has read it all. Unsolicited pongs do not make it forget.
    let mut a = raw_websocket(server.addr);
    send_unfinished_message(&mut a).unwrap();
    for _ in 0..50 {
        a.write_all(&client_frame(0x8a, b"keep", true)).unwrap();
    }
    a.write_all(&client_frame(0x89, b"p", true)).unwrap();
    let mut pong = [0u8; 3];
    a.read_exact(&mut pong).unwrap();
    assert_eq!(pong, [0x8a, 1, b'p']);
    // B's 600 KiB would make 1.2 MiB: B is told to come back later.
    let mut b = raw_websocket(server.addr);
    let _ = send_unfinished_message(&mut b);
    assert_eq!(read_close_code(&mut b), Some(1013));
    // A finishes its message and gets its reply; a newcomer is served.
    a.write_all(&client_frame(0x80, b"!", true)).unwrap();
    let mut header = [0u8; 10];
    a.read_exact(&mut header).unwrap();
    let len = u64::from_be_bytes(header[2..].try_into().unwrap());
    assert_eq!((header[0], header[1]), (0x81, 127));
    assert!(len > 600 << 10, "reply of {len} bytes");
    assert!(echo(server.addr));
    // Counted once B's connection has lingered for its close to be read.
    common::eventually(common::SOON, "B counted as overloaded", || {
        server
            .metrics
            .render()
            .contains("papo_ws_connections_closed_total{reason=\"overloaded\"} 1")
    });
}

#[test]
fn metrics_count_what_happened() {
    let server = ws_server_with(ServeConfig::default().ws);
    let (mut ws, _) = connect(format!("ws://{}/ws", server.addr)).unwrap();
    for text in ["a", "bb", "ccc"] {
        ws.send(Message::text(text)).unwrap();
        ws.read().unwrap();
    }
    raw_exchange(server.addr, b"GET /nope HTTP/1.1\r\n\r\n");
    // Its thread gives its slot back just after the peer sees the close.
    eventually(SOON, "the 404's connection counted closed", || {
        server.metrics.ws_active.load(Ordering::Relaxed) == 1
    });
    let answer = raw_exchange(server.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    for line in [
        "papo_messages_total{protocol=\"ws\",direction=\"in\"} 3",
        "papo_message_bytes_total{protocol=\"ws\",direction=\"in\"} 6",
        "papo_message_bytes_total{protocol=\"ws\",direction=\"out\"} 36",
        "papo_ws_connections_accepted_total 3",
        // The websocket and this very request are open.
        "papo_ws_connections_active 2",
    ] {
        assert!(
            answer.lines().any(|l| l == line),
            "{line} missing from\n{answer}"
        );
    }
    assert!(
        answer.contains("papo_ws_connections_closed_total{reason=\"rejected\"} 1"),
        "{answer}"
    );
}

/// Sends `bytes` on a fresh WebSocket and returns the close code the server sends.
fn close_code_after(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut stream = raw_websocket(addr);
    stream.write_all(bytes).ok()?;
    read_close_code(&mut stream)
}

#[test]
fn bad_input_never_hurts_others_and_threads_return_to_baseline() {
    let server = serve(&["--max-connections", "1200", "--handshake-timeout", "4s"]);
    let pid = server.child.id();
    let ws: SocketAddr = server.ws.as_deref().unwrap().parse().unwrap();
    let grpc = server.grpc.as_deref().unwrap().to_owned();
    assert!(echo(ws));
    // gRPC C-core's event-engine pool grows and shrinks on its own; every
    // other thread is papo's and must come back to exactly where it was.
    let own_threads = || {
        thread_names(pid)
            .into_iter()
            .filter(|n| n != "event_engine")
            .collect::<Vec<_>>()
    };
    eventually(SOON, "no connection threads", || {
        !own_threads().iter().any(|n| n == "ws-conn")
    });
    let baseline = own_threads();
    assert!(threads(pid) >= baseline.len());
    let settle = |what: &str| {
        assert!(echo(ws), "not served after {what}");
        let start = Instant::now();
        while own_threads() != baseline {
            let now = own_threads();
            assert!(
                start.elapsed() < SOON,
                "threads after {what}: {now:?}, baseline {baseline:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    // Garbage to each port.
    raw_exchange(ws, &[0xde, 0xad, 0xbe, 0xef, b'\r', b'\n', b'\r', b'\n']);
    let mut g = TcpStream::connect(&grpc).unwrap();
    g.set_read_timeout(Some(SOON)).unwrap();
    let _ = g.write_all(&[0x42; 4096]);
    let _ = g.read_to_end(&mut Vec::new());
    settle("garbage");

    // Protocol violations, each closed with the code RFC 6455 names.
    for (what, frame, code) in protocol_violations() {
        assert_eq!(close_code_after(ws, &frame), Some(code), "{what}");
        settle(what);
    }
    let answer = raw_exchange(ws, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
    settle("a plain HTTP request");

    // A 2 GiB length header: refused by size before any allocation.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(2u64 << 30).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(close_code_after(ws, &frame), Some(1009));
    settle("2 GiB header");

    // An abrupt reset in the middle of a frame.
    let (stream, _) = raw_upgrade(ws, "/ws", "");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this test owns, with a live struct.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    (&stream).write_all(&[0x81, 0x85, 1, 2, 3]).unwrap();
    drop(stream);
    settle("reset mid-frame");

    // 1,000 half-open handshakes, and a new client served within a second.
    let half_open: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = TcpStream::connect(ws).unwrap();
            let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n");
            s
        })
        .collect();
    let start = Instant::now();
    assert!(echo(ws), "not served beside 1,000 half-open handshakes");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "served after {:?}",
        start.elapsed()
    );
    drop(half_open);
    settle("1,000 half-open handshakes");

    // A flood past the connection limit: refused with 503, then served again.
    let flood: Vec<TcpStream> = (0..1300).map(|_| TcpStream::connect(ws).unwrap()).collect();
    let answer = raw_exchange(ws, upgrade_request("/ws").as_bytes());
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // The first 1,200 hold every slot; the last 100 were refused at once.
    for (i, mut s) in flood[1200..].iter().enumerate() {
        s.set_read_timeout(Some(SOON)).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 503", "flood connection {}", 1200 + i);
    }
    drop(flood);
    settle("a flood past the limit");
}
