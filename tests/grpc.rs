//! The gRPC server through a real channel: the seed's reply and the size limit.

mod common;

use std::sync::Arc;
use std::time::Duration;

use grpcio::{CallOption, ChannelBuilder, EnvBuilder, RpcStatusCode};
use papo::proto::chat::Message;
use papo::proto::chat_grpc::ChatServiceClient;

fn client(addr: &str) -> ChatServiceClient {
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    let channel = ChannelBuilder::new(env)
        .max_send_message_len(64 << 20)
        .connect(addr);
    ChatServiceClient::new(channel)
}

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
    let client = client(server.addr());
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
    let client = client(server.addr());
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
