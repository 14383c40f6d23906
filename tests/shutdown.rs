//! Graceful shutdown of `papo serve` on SIGINT/SIGTERM.

mod common;

use common::{connect, health_client, next_within, serve, signal, wait_exit};

use std::net::TcpStream;
use std::time::{Duration, Instant};

use grpcio::ClientSStreamReceiver;
use papo::proto::health::health_check_response::ServingStatus;
use papo::proto::health::{HealthCheckRequest, HealthCheckResponse};
use papo::proto::health_grpc::HealthClient;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

/// Opens a health `Watch` and checks its first answer is SERVING.
fn watch(addr: &str) -> (HealthClient, ClientSStreamReceiver<HealthCheckResponse>) {
    let client = health_client(addr);
    let mut stream = client.watch(&HealthCheckRequest::default()).unwrap();
    assert_eq!(next_status(&mut stream), Some(ServingStatus::SERVING));
    (client, stream)
}

fn next_status(stream: &mut ClientSStreamReceiver<HealthCheckResponse>) -> Option<ServingStatus> {
    match next_within(stream, "a health status") {
        Some(Ok(r)) => Some(r.status.enum_value_or(ServingStatus::UNKNOWN)),
        _ => None,
    }
}

#[test]
fn sigterm_sends_1001_reports_not_serving_and_exits_0() {
    let mut server = serve(&["--drain-timeout", "1s"]);
    let ws_addr = server.ws.clone().unwrap();
    let mut peers: Vec<_> = (0..3)
        .map(|_| connect(format!("ws://{ws_addr}/ws")).unwrap().0)
        .collect();
    for peer in &mut peers {
        peer.send(Message::text("oi")).unwrap();
        assert_eq!(peer.read().unwrap(), Message::text("Recebido: oi"));
    }
    let (_client, mut watch) = watch(server.grpc.as_deref().unwrap());

    let start = Instant::now();
    signal(&server.child, libc::SIGTERM);
    for peer in &mut peers {
        let close = loop {
            match peer.read() {
                Ok(Message::Close(frame)) => break frame.map(|f| f.code),
                Ok(_) => continue,
                Err(e) => panic!("no close frame: {e}"),
            }
        };
        assert_eq!(close, Some(CloseCode::Away));
    }
    assert_eq!(next_status(&mut watch), Some(ServingStatus::NOT_SERVING));
    let status = wait_exit(&mut server.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    // The open Watch held the drain for its whole second, no longer.
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(
        TcpStream::connect(&ws_addr).is_err(),
        "still accepting after exit"
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut server = serve(&["--drain-timeout", "60s"]);
    let (_client, mut watch) = watch(server.grpc.as_deref().unwrap());
    signal(&server.child, libc::SIGINT);
    // Draining has begun: the watch is told, and holds the drain open.
    assert_eq!(next_status(&mut watch), Some(ServingStatus::NOT_SERVING));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "exited before the drain ended"
    );
    let start = Instant::now();
    signal(&server.child, libc::SIGTERM);
    let status = wait_exit(&mut server.child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(start.elapsed() < Duration::from_secs(2));
}
