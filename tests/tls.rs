//! TLS on both ports, against a live `papo serve --tls-cert … --tls-key …`
//! with a throwaway CA from `papo dev-cert`: `wss://` and `https://`, gRPC
//! over TLS with and without client certificates, bad input at the TLS
//! layer, reloading on SIGHUP, and the TLS split under fan-out.

mod common;

use common::{papo, serve, OutputWithin, ServeProcess, SOON};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use papo::client::{grpc_channel, ws_connect, ClientTls};
use papo::devcert;
use papo::proto::chat::Message as ChatMessage;
use papo::proto::chat_grpc::ChatServiceClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tungstenite::Message;

/// A fresh directory for one test's certificates.
fn cert_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("papo-tls-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn serve_tls(dir: &Path, extra: &[&str]) -> (ServeProcess, devcert::DevCert) {
    let files = devcert::write(dir, &[]).expect("dev-cert");
    let (cert, key) = (files.cert.to_str().unwrap(), files.key.to_str().unwrap());
    let mut args = vec!["--tls-cert", cert, "--tls-key", key];
    args.extend_from_slice(extra);
    (serve(&args), files)
}

fn trusting(files: &devcert::DevCert) -> ClientTls {
    ClientTls {
        grpc: true,
        ca: Some(files.ca.clone()),
        identity: None,
    }
}

/// The certificate a TLS server presents on `addr`, as DER.
fn presented_certificate(addr: SocketAddr, ca: &Path) -> Vec<u8> {
    let config = papo::tls::client_config(Some(ca)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut session = rustls::ClientConnection::new(config, name).unwrap();
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(SOON)).unwrap();
    while session.is_handshaking() {
        session.complete_io(&mut socket).unwrap();
    }
    session.peer_certificates().unwrap()[0].to_vec()
}

/// `GET /metrics` over https, trusting `ca`: the whole answer.
fn https_metrics(addr: SocketAddr, ca: &Path) -> String {
    let config = papo::tls::client_config(Some(ca)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let session = rustls::ClientConnection::new(config, name).unwrap();
    let socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(SOON)).unwrap();
    let mut https = rustls::StreamOwned::new(session, socket);
    https
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = https.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn first_certificate(pem: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[test]
fn wss_and_https_serve_what_ws_and_http_do() {
    let dir = cert_dir("wss");
    let (server, files) = serve_tls(&dir, &[]);
    let ws = server.ws.clone().unwrap();
    let tls = trusting(&files);
    let mut echo = ws_connect(&format!("wss://{ws}/ws"), &tls).expect("wss");
    echo.send(Message::text("oi")).unwrap();
    match echo.read().unwrap() {
        Message::Text(t) => assert_eq!(t.as_str(), "Recebido: oi"),
        other => panic!("{other:?}"),
    }
    // The seed's client, over wss.
    let out = papo()
        .args([
            "ws-client",
            "--url",
            &format!("wss://{ws}/ws"),
            "--count",
            "2",
        ])
        .args(["--interval", "0s", "--ca", files.ca.to_str().unwrap()])
        .output_within();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Resposta do servidor: Recebido: Mensagem 1\nResposta do servidor: Recebido: Mensagem 2\n"
    );
    // A client that does not trust the CA: one line, exit 1.
    let other = cert_dir("wss-other");
    let stranger = devcert::write(&other, &[]).unwrap();
    let out = papo()
        .args(["ws-client", "--url", &format!("wss://{ws}/ws")])
        .args(["--ca", stranger.ca.to_str().unwrap()])
        .output_within();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    // /metrics over https.
    let answer = https_metrics(ws.parse().unwrap(), &files.ca);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("papo_tls_handshakes_failed_total"));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

#[test]
fn grpc_over_tls_and_mutual_tls() {
    let dir = cert_dir("grpc");
    let files = devcert::write(&dir, &[]).unwrap();
    let (cert, key, ca) = (
        files.cert.to_str().unwrap(),
        files.key.to_str().unwrap(),
        files.ca.to_str().unwrap(),
    );
    let server = serve(&["--tls-cert", cert, "--tls-key", key]);
    let grpc = server.grpc.clone().unwrap();
    let out = papo()
        .args(["grpc-client", "--addr", &grpc, "--tls", "--ca", ca])
        .output_within();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Resposta do servidor: Mensagem recebida: Olá, gRPC!\n"
    );
    // Plaintext to a TLS port fails, in one line.
    let out = papo()
        .args(["grpc-client", "--addr", &grpc, "--timeout", "3s"])
        .output_within();
    assert_eq!(out.status.code(), Some(1));
    drop(server);

    // Mutual TLS: no client certificate, no call; the dev certificate
    // (signed by the CA) is one.
    let server = serve(&["--tls-cert", cert, "--tls-key", key, "--grpc-client-ca", ca]);
    let grpc = server.grpc.clone().unwrap();
    let call = |tls: &ClientTls| {
        let client = ChatServiceClient::new(grpc_channel(&grpc, tls).unwrap());
        let request = ChatMessage {
            sender: "svc".into(),
            text: "oi".into(),
            ..Default::default()
        };
        let option = grpcio::CallOption::default().timeout(Duration::from_secs(5));
        client.send_message_opt(&request, option).map(|r| r.reply)
    };
    let anonymous = trusting(&files);
    assert!(call(&anonymous).is_err());
    let known = ClientTls {
        identity: Some((files.cert.clone(), files.key.clone())),
        ..anonymous
    };
    assert_eq!(call(&known).unwrap(), "Mensagem recebida: oi");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_tls_layer_refuses_what_it_must() {
    let dir = cert_dir("refuse");
    let (server, _files) = serve_tls(&dir, &["--handshake-timeout", "1s"]);
    let ws: SocketAddr = server.ws.as_deref().unwrap().parse().unwrap();
    // Plain HTTP to the TLS port: closed at once.
    let mut plain = TcpStream::connect(ws).unwrap();
    plain.set_read_timeout(Some(SOON)).unwrap();
    plain
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let start = Instant::now();
    let mut sink = Vec::new();
    let _ = plain.read_to_end(&mut sink);
    assert!(start.elapsed() < Duration::from_secs(2));
    // A stalled handshake is cut at the handshake deadline.
    let mut silent = TcpStream::connect(ws).unwrap();
    silent.set_read_timeout(Some(SOON)).unwrap();
    let start = Instant::now();
    let _ = silent.read_to_end(&mut sink);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // Both counted.
    let metrics = https_metrics(ws, &dir.join("ca.pem"));
    for line in [
        "papo_tls_handshakes_failed_total{reason=\"not_tls\"} 1",
        "papo_tls_handshakes_failed_total{reason=\"timeout\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    drop(server);

    // A ClientHello to a plaintext port: 400.
    let plain_server = serve(&["--no-grpc"]);
    let addr: SocketAddr = plain_server.ws.as_deref().unwrap().parse().unwrap();
    let mut hello = TcpStream::connect(addr).unwrap();
    hello.set_read_timeout(Some(SOON)).unwrap();
    hello
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0])
        .unwrap();
    let mut answer = String::new();
    let _ = hello.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // Files that cannot be used: one line, exit 2.
    let other = cert_dir("refuse-other");
    let stranger = devcert::write(&other, &[]).unwrap();
    let out = papo()
        .args([
            "serve",
            "--ws-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .args(["--tls-cert", dir.join("cert.pem").to_str().unwrap()])
        .args(["--tls-key", stranger.key.to_str().unwrap()])
        .output_within();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_only() {
    let dir = cert_dir("reload");
    let (server, files) = serve_tls(&dir, &[]);
    let ws: SocketAddr = server.ws.as_deref().unwrap().parse().unwrap();
    let tls = trusting(&files);
    let mut open = ws_connect(&format!("wss://{ws}/ws"), &tls).unwrap();
    let before = presented_certificate(ws, &files.ca);
    assert_eq!(before, first_certificate(&files.cert));
    // A file that does not parse is refused; the old certificate stays.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    common::signal(&server.child, libc::SIGHUP);
    common::eventually(SOON, "the failed reload logged", || {
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("reload failed"))
    });
    assert_eq!(presented_certificate(ws, &files.ca), before);
    // New files, same paths: new handshakes get the new certificate.
    let renewed = devcert::write(&dir, &[]).unwrap();
    let grpc_trusting_renewed = || {
        papo()
            .args([
                "grpc-client",
                "--addr",
                server.grpc.as_deref().unwrap(),
                "--tls",
            ])
            .args(["--ca", renewed.ca.to_str().unwrap(), "--timeout", "3s"])
            .output_within()
    };
    // Until the signal, both ports keep the old certificate.
    assert_eq!(grpc_trusting_renewed().status.code(), Some(1));
    common::signal(&server.child, libc::SIGHUP);
    common::eventually(SOON, "the reload logged", || {
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("certificate reloaded"))
    });
    let after = presented_certificate(ws, &renewed.ca);
    assert_eq!(after, first_certificate(&renewed.cert));
    assert_ne!(after, before);
    // The gRPC port serves it too: a client trusting only the new CA.
    let out = grpc_trusting_renewed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The connection opened before talks on.
    open.send(Message::text("ainda")).unwrap();
    match open.read().unwrap() {
        Message::Text(t) => assert_eq!(t.as_str(), "Recebido: ainda"),
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fan_out_across_the_tls_split_keeps_every_message_in_order() {
    let dir = cert_dir("split");
    let (server, files) = serve_tls(&dir, &["--rate-limit", "0"]);
    let ws = server.ws.clone().unwrap();
    let tls = Arc::new(trusting(&files));
    let url = |name: &str| format!("wss://{ws}/chat?room=split&name={name}");
    let mut member = ws_connect(&url("reader"), &tls).unwrap();
    const SENDERS: usize = 4;
    const EACH: usize = 250;
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (tls, url) = (Arc::clone(&tls), url(&format!("s{s}")));
            thread::spawn(move || {
                let mut ws = ws_connect(&url, &tls).unwrap();
                for n in 0..EACH {
                    ws.send(Message::text(format!(r#"{{"text":"{s}:{n}"}}"#)))
                        .unwrap();
                }
                // Stay until the reader has everything.
                thread::sleep(Duration::from_secs(3));
            })
        })
        .collect();
    // The reader talks while it reads: its own writes and the fan-out's
    // share the session.
    let mut next = [0usize; SENDERS];
    let mut seen = 0;
    let mut said = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen < SENDERS * EACH && Instant::now() < deadline {
        if said < 200 {
            member
                .send(Message::text(format!(r#"{{"text":"r{said}"}}"#)))
                .unwrap();
            said += 1;
        }
        let Message::Text(json) = member.read().unwrap() else {
            continue;
        };
        let m: ChatMessage = protobuf_json_mapping::parse_from_str(json.as_str()).unwrap();
        if let Some((s, n)) = m.text.split_once(':') {
            let (s, n): (usize, usize) = (s.parse().unwrap(), n.parse().unwrap());
            assert_eq!(n, next[s], "sender {s} out of order");
            next[s] += 1;
            seen += 1;
        }
    }
    assert_eq!(seen, SENDERS * EACH);
    for sender in senders {
        sender.join().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn terminal_clients_chat_over_tls() {
    let dir = cert_dir("terminal");
    let (server, files) = serve_tls(&dir, &[]);
    let url = format!("wss://{}/chat", server.ws.as_deref().unwrap());
    let grpc = server.grpc.clone().unwrap();
    let ca = files.ca.to_str().unwrap();
    let mut via_ws = common::Terminal::start(&[
        "--via", "ws", "--url", &url, "--ca", ca, "--room", "t", "--name", "ana",
    ]);
    via_ws.expect("* ana entrou (na sala: ana)");
    let mut via_grpc = common::Terminal::start(&[
        "--addr", &grpc, "--tls", "--ca", ca, "--room", "t", "--name", "bob",
    ]);
    via_grpc.expect("* bob entrou (na sala: ana, bob)");
    via_ws.say("olá, bob");
    via_grpc.expect("] ana: olá, bob");
    via_grpc.say("olá, ana");
    via_ws.expect("] bob: olá, ana");
    drop(via_grpc.child.stdin.take());
    drop(via_ws.child.stdin.take());
    assert!(common::wait_exit(&mut via_grpc.child, SOON).success());
    assert!(common::wait_exit(&mut via_ws.child, SOON).success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TLS client session trusting `ca`, for "localhost", and its socket
/// to `ws` (reads time out after [`SOON`]), before any handshake.
fn tls_client(ws: SocketAddr, ca: &std::path::Path) -> (rustls::ClientConnection, TcpStream) {
    let config = papo::tls::client_config(Some(ca)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let session = rustls::ClientConnection::new(config, name).unwrap();
    let socket = TcpStream::connect(ws).unwrap();
    socket.set_read_timeout(Some(SOON)).unwrap();
    (session, socket)
}

/// Everything the server says until it closes, as text.
fn read_all(https: &mut impl Read) -> String {
    let mut answer = Vec::new();
    let _ = https.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn a_client_that_pauses_after_the_handshake_is_still_answered() {
    let dir = cert_dir("pause");
    let (server, files) = serve_tls(&dir, &[]);
    let ws: SocketAddr = server.ws.as_deref().unwrap().parse().unwrap();
    for _ in 0..5 {
        let (mut session, mut socket) = tls_client(ws, &files.ca);
        while session.is_handshaking() {
            session.complete_io(&mut socket).unwrap();
        }
        // The server has its session tickets to send meanwhile.
        thread::sleep(Duration::from_millis(300));
        let mut https = rustls::StreamOwned::new(session, socket);
        https
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let answer = read_all(&mut https);
        assert!(answer.starts_with("HTTP/1.1 200"), "answered {answer:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_request_sent_with_the_clients_finished_is_answered() {
    let dir = cert_dir("coalesced");
    let (server, files) = serve_tls(&dir, &[]);
    let ws: SocketAddr = server.ws.as_deref().unwrap().parse().unwrap();
    for _ in 0..5 {
        let (mut session, mut socket) = tls_client(ws, &files.ca);
        // Handshake until the client's last flight is ready, then send it
        // and the request in one write: one TCP segment, as a fast client
        // (or Nagle's algorithm) often makes it.
        let mut flight = Vec::new();
        loop {
            while session.wants_write() {
                session.write_tls(&mut flight).unwrap();
            }
            if !session.is_handshaking() {
                break;
            }
            socket.write_all(&flight).unwrap();
            flight.clear();
            session.read_tls(&mut socket).unwrap();
            session.process_new_packets().unwrap();
        }
        session
            .writer()
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        while session.wants_write() {
            session.write_tls(&mut flight).unwrap();
        }
        socket.write_all(&flight).unwrap();
        let mut https = rustls::StreamOwned::new(session, socket);
        let answer = read_all(&mut https);
        assert!(answer.starts_with("HTTP/1.1 200"), "answered {answer:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
