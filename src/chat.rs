//! The chat core shared by both transports, free of sockets so that unit
//! tests exercise it directly. For now it holds the seed's replies.

/// Prefix of every reply on the seed's WebSocket endpoint.
pub const WS_REPLY_PREFIX: &str = "Recebido: ";

/// The seed's WebSocket reply to a text message: `Recebido: <msg>`.
pub fn ws_reply_text(text: &str) -> String {
    let mut reply = String::with_capacity(WS_REPLY_PREFIX.len() + text.len());
    reply.push_str(WS_REPLY_PREFIX);
    reply.push_str(text);
    reply
}

/// The seed's WebSocket reply to a binary message: the same prefix, as bytes.
pub fn ws_reply_binary(data: &[u8]) -> Vec<u8> {
    let mut reply = Vec::with_capacity(WS_REPLY_PREFIX.len() + data.len());
    reply.extend_from_slice(WS_REPLY_PREFIX.as_bytes());
    reply.extend_from_slice(data);
    reply
}

/// The seed's gRPC reply to `SendMessage`: `Mensagem recebida: <text>`.
pub fn grpc_reply(text: &str) -> String {
    format!("Mensagem recebida: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_replies() {
        assert_eq!(
            ws_reply_text("Olá, WebSocket!"),
            "Recebido: Olá, WebSocket!"
        );
        assert_eq!(ws_reply_text(""), "Recebido: ");
        assert_eq!(ws_reply_binary(&[0, 255]), b"Recebido: \x00\xff");
        assert_eq!(grpc_reply("Olá, gRPC!"), "Mensagem recebida: Olá, gRPC!");
    }
}
