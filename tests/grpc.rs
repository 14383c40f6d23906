//! The gRPC server through a real channel: the seed's reply, the size limit,
//! health, deadlines, stream caps and keepalive.

mod common;

use common::{chat_client, health_client, next_within};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::SinkExt;
use grpcio::{CallOption, ChannelBuilder, EnvBuilder, RpcStatusCode, WriteFlags};
use papo::chat::Hub;
use papo::config::ServeConfig;
use papo::executor::block_on;
use papo::grpc::GrpcConfig;
use papo::grpc::GrpcServer;
use papo::metrics::Metrics;
use papo::proto::chat::{Message, SubscribeRequest};
use papo::proto::chat_grpc::ChatServiceClient;
use papo::proto::health::health_check_response::ServingStatus;
use papo::proto::health::{HealthCheckRequest, HealthCheckResponse};
use papo::proto::health_grpc::HealthClient;

fn send(client: &ChatServiceClient, sender: &str, text: &str) -> grpcio::Result<String> {
    let msg = Message {
        sender: sender.into(),
        text: text.into(),
        ..Default::default()
    };
    let opt = CallOption::default().timeout(Duration::from_secs(10));
    client.send_message_opt(&msg, opt).map(|r| r.reply)
}

#[test]
fn send_message_replies_like_the_seed() {
    let server = common::grpc_server();
    let client = chat_client(server.addr());
    for text in ["Olá, gRPC!", "", "日本語 🎉", &"x".repeat(100_000)] {
        assert_eq!(
            send(&client, "Alice", text).unwrap(),
            format!("Mensagem recebida: {text}")
        );
    }
    assert_eq!(
        send(&client, "", "sem remetente").unwrap(),
        "Mensagem recebida: sem remetente"
    );
}

#[test]
fn oversized_message_is_resource_exhausted_and_the_server_goes_on() {
    let server = common::grpc_server();
    let client = chat_client(server.addr());
    match send(&client, "Alice", &"x".repeat(5 << 20)) {
        Err(grpcio::Error::RpcFailure(status)) => {
            assert_eq!(status.code(), RpcStatusCode::RESOURCE_EXHAUSTED)
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    assert_eq!(
        send(&client, "Alice", "ok").unwrap(),
        "Mensagem recebida: ok"
    );
}

/// What a call's result says, as a status code.
fn code_of<T: std::fmt::Debug>(result: grpcio::Result<T>) -> RpcStatusCode {
    match result {
        Err(grpcio::Error::RpcFailure(status)) => status.code(),
        other => panic!("expected a failed call, got {other:?}"),
    }
}

#[test]
fn every_method_refuses_a_request_past_the_size_limit() {
    let server = common::grpc_server_with(GrpcConfig {
        max_message_size: 64 << 10,
        ..ServeConfig::default().grpc
    });
    let chat = chat_client(server.addr());
    let huge = "x".repeat(65 << 10);
    let exhausted = RpcStatusCode::RESOURCE_EXHAUSTED;
    assert_eq!(code_of(send(&chat, "Alice", &huge)), exhausted);
    let request = SubscribeRequest {
        room: huge.clone(),
        ..Default::default()
    };
    let mut stream = chat.subscribe(&request).unwrap();
    match next_within(&mut stream, "the refusal") {
        Some(Err(grpcio::Error::RpcFailure(status))) => assert_eq!(status.code(), exhausted),
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    let (mut tx, mut rx) = chat.chat().unwrap();
    let first = Message {
        text: huge.clone(),
        ..Default::default()
    };
    let _ = block_on(tx.send((first, WriteFlags::default())));
    match next_within(&mut rx, "the refusal") {
        Some(Err(grpcio::Error::RpcFailure(status))) => assert_eq!(status.code(), exhausted),
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    let health = health_client(server.addr());
    assert_eq!(code_of(health.check(&health_request(&huge))), exhausted);
    // Just under the limit is read, and the server goes on.
    let fits = "y".repeat(60 << 10);
    assert_eq!(
        send(&chat, "Alice", &fits).unwrap(),
        format!("Mensagem recebida: {fits}")
    );
    assert_eq!(
        code_of(health.check(&health_request(&fits))),
        RpcStatusCode::NOT_FOUND
    );
}

fn health_request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
        ..Default::default()
    }
}

fn status_of(r: HealthCheckResponse) -> ServingStatus {
    r.status.enum_value_or(ServingStatus::UNKNOWN)
}

#[test]
fn health_check_knows_the_services() {
    let server = common::grpc_server();
    let client = health_client(server.addr());
    for service in ["", "chat.ChatService", "grpc.health.v1.Health"] {
        let reply = client.check(&health_request(service)).unwrap();
        assert_eq!(status_of(reply), ServingStatus::SERVING, "{service:?}");
    }
    match client.check(&health_request("nope.Service")) {
        Err(grpcio::Error::RpcFailure(status)) => {
            assert_eq!(status.code(), RpcStatusCode::NOT_FOUND)
        }
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
}

#[test]
fn watchers_see_not_serving_while_the_server_drains() {
    let server = common::grpc_server();
    let client = health_client(server.addr());
    let mut watch = client.watch(&health_request("")).unwrap();
    let first = next_within(&mut watch, "a health status").unwrap().unwrap();
    assert_eq!(status_of(first), ServingStatus::SERVING);
    // The open Watch holds the drain until the deadline, then is cancelled.
    let started = Instant::now();
    let drained = thread::spawn(move || server.shutdown(Duration::from_millis(500)));
    let update = next_within(&mut watch, "a health status").unwrap().unwrap();
    assert_eq!(status_of(update), ServingStatus::NOT_SERVING);
    assert!(
        !drained.join().unwrap(),
        "a watch was still running: drain must report it"
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(next_within(&mut watch, "a health status").is_none_or(|end| end.is_err()));
}

#[test]
fn deadlines_are_honoured() {
    let server = common::grpc_server();
    let client = health_client(server.addr());
    // Connected first: the deadline is the call's, not the connection's
    // setup on a loaded machine.
    client.check(&health_request("")).unwrap();
    let opt = CallOption::default().timeout(Duration::from_millis(300));
    let mut watch = client.watch_opt(&health_request(""), opt).unwrap();
    assert!(next_within(&mut watch, "a health status").unwrap().is_ok());
    match next_within(&mut watch, "a health status") {
        Some(Err(grpcio::Error::RpcFailure(status))) => {
            assert_eq!(status.code(), RpcStatusCode::DEADLINE_EXCEEDED)
        }
        other => panic!("expected DEADLINE_EXCEEDED, got {other:?}"),
    }
}

#[test]
fn concurrent_streams_per_connection_are_capped() {
    let server = common::grpc_server_with(GrpcConfig {
        max_streams: 1,
        ..ServeConfig::default().grpc
    });
    let client = health_client(server.addr());
    let mut watch = client.watch(&health_request("")).unwrap();
    assert!(next_within(&mut watch, "a health status").unwrap().is_ok());
    // The one stream is taken: a second call on the connection waits, and
    // its deadline passes.
    let opt = CallOption::default().timeout(Duration::from_millis(500));
    match client.check_opt(&health_request(""), opt) {
        Err(grpcio::Error::RpcFailure(status)) => {
            assert_eq!(status.code(), RpcStatusCode::DEADLINE_EXCEEDED)
        }
        other => panic!("expected DEADLINE_EXCEEDED, got {other:?}"),
    }
    drop(watch);
}

/// A client on a connection of its own (C-core otherwise shares one
/// connection between channels to the same address).
fn own_connection(addr: &str) -> HealthClient {
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    let channel = ChannelBuilder::new(env)
        .use_local_subchannel_pool(true)
        .connect(addr);
    HealthClient::new(channel)
}

fn check(client: &HealthClient) -> Result<(), RpcStatusCode> {
    let opt = CallOption::default().timeout(Duration::from_secs(5));
    match client.check_opt(&health_request(""), opt) {
        Ok(_) => Ok(()),
        Err(grpcio::Error::RpcFailure(status)) => Err(status.code()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn client_connections_are_capped() {
    let config = GrpcConfig {
        max_connections: 3,
        ..ServeConfig::default().grpc
    };
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(ServeConfig::default().chat);
    let server = GrpcServer::start(
        "127.0.0.1:0",
        &config,
        Arc::clone(&metrics),
        hub,
        None,
        None,
    )
    .unwrap();
    let mut clients: Vec<_> = (0..3).map(|_| own_connection(server.addr())).collect();
    for client in &clients {
        assert_eq!(check(client), Ok(()));
    }
    // A fourth connection is closed as soon as it is accepted.
    let fourth = own_connection(server.addr());
    assert_eq!(check(&fourth), Err(RpcStatusCode::UNAVAILABLE));
    assert!(metrics.grpc_refused.load(Ordering::Relaxed) >= 1);
    assert_eq!(metrics.grpc_active.load(Ordering::Relaxed), 3);
    // The three are still served; when one goes, its slot is free again.
    assert_eq!(check(&clients[0]), Ok(()));
    drop(clients.pop());
    common::eventually(common::SOON, "a connection's slot freed", || {
        metrics.grpc_active.load(Ordering::Relaxed) == 2
    });
    assert_eq!(check(&own_connection(server.addr())), Ok(()));
}

#[test]
fn idle_connections_get_keepalive_pings_and_are_closed_when_silent() {
    let server = common::grpc_server_with(GrpcConfig {
        keepalive_time: Duration::from_millis(300),
        keepalive_timeout: Duration::from_millis(300),
        ..ServeConfig::default().grpc
    });
    // A raw HTTP/2 client that never acknowledges pings.
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap(); // empty SETTINGS
    let start = Instant::now();
    let mut saw_ping = false;
    loop {
        let mut header = [0u8; 9];
        if stream.read_exact(&mut header).is_err() {
            break; // the server closed the connection
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).is_err() {
            break;
        }
        match header[3] {
            0x4 if header[4] & 1 == 0 => stream.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).unwrap(),
            0x6 if header[4] & 1 == 0 => saw_ping = true,
            _ => {}
        }
    }
    assert!(saw_ping, "no keepalive ping");
    assert!(start.elapsed() < Duration::from_secs(5));
}
