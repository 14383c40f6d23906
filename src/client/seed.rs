//! The seed's two clients, which print exactly what the seed's Go clients
//! print.

use std::io::Write;
use std::thread;
use std::time::Duration;

use grpcio::CallOption;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use super::connect::{closed_by_server, describe, grpc_channel, ws_connect, ClientTls, WsConn};
use crate::proto::chat::Message as ChatMessage;
use crate::proto::chat_grpc::ChatServiceClient;

/// `papo ws-client`: the seed's WebSocket client.
#[derive(Debug, Clone)]
pub struct WsClientConfig {
    pub url: String,
    pub count: u32,
    pub interval: Duration,
    pub tls: ClientTls,
}

/// Sends `Mensagem 1` … `Mensagem N`, printing each reply as the seed does,
/// then closes with 1000 (Normal).
pub fn ws_client(config: &WsClientConfig, out: &mut impl Write) -> Result<(), String> {
    let mut ws = ws_connect(&config.url, &config.tls)?;
    for i in 1..=config.count {
        ws.send(Message::text(format!("Mensagem {i}")))
            .map_err(|e| format!("send failed: {e}"))?;
        let reply = read_data(&mut ws)?;
        writeln!(out, "Resposta do servidor: {reply}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        if i < config.count {
            thread::sleep(config.interval);
        }
    }
    let normal = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    ws.close(Some(normal))
        .map_err(|e| format!("close failed: {e}"))?;
    // Wait for the server's close frame so the close handshake completes.
    while ws.read().is_ok() {}
    Ok(())
}

/// Reads the next data message as text (binary replies shown lossily).
fn read_data(ws: &mut WsConn) -> Result<String, String> {
    loop {
        match ws
            .read()
            .map_err(|e| format!("no reply from the server: {e}"))?
        {
            Message::Text(text) => return Ok(text.as_str().to_owned()),
            Message::Binary(data) => return Ok(String::from_utf8_lossy(&data).into_owned()),
            Message::Close(frame) => return Err(closed_by_server(frame)),
            _ => continue,
        }
    }
}

/// `papo grpc-client`: the seed's gRPC client.
#[derive(Debug, Clone)]
pub struct GrpcClientConfig {
    pub addr: String,
    pub sender: String,
    pub text: String,
    pub room: String,
    pub timeout: Duration,
    pub tls: ClientTls,
}

/// Calls `SendMessage` once and prints the reply as the seed does.
pub fn grpc_client(config: &GrpcClientConfig, out: &mut impl Write) -> Result<(), String> {
    let client = ChatServiceClient::new(grpc_channel(&config.addr, &config.tls)?);
    let request = ChatMessage {
        sender: config.sender.clone(),
        text: config.text.clone(),
        room: config.room.clone(),
        ..Default::default()
    };
    let response = client
        .send_message_opt(&request, CallOption::default().timeout(config.timeout))
        .map_err(|e| format!("SendMessage to {} failed: {}", config.addr, describe(&e)))?;
    writeln!(out, "Resposta do servidor: {}", response.reply).map_err(|e| e.to_string())?;
    Ok(())
}
