//! `papo chat`: one member of a room in a terminal, over gRPC or
//! WebSocket, reconnecting where it stopped.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use grpcio::WriteFlags;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

use super::connect::{closed_by_server, describe, grpc_channel, ws_connect, ClientTls, WsConn};
use crate::executor::block_on;
use crate::proto::chat::message::Kind;
use crate::proto::chat::Message as ChatMessage;
use crate::proto::chat_grpc::ChatServiceClient;

/// The protocol `papo chat` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `ChatService.Chat`, a bidirectional stream.
    Grpc,
    /// The `/chat` WebSocket endpoint, JSON messages.
    Ws,
}

impl std::str::FromStr for Via {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Via, Self::Err> {
        match s {
            "grpc" => Ok(Via::Grpc),
            "ws" => Ok(Via::Ws),
            _ => Err("expected grpc or ws"),
        }
    }
}

/// `papo chat`: an interactive member of a room, over gRPC or WebSocket.
#[derive(Debug, Clone)]
pub struct ChatClientConfig {
    pub room: String,
    pub name: String,
    pub via: Via,
    pub addr: String,
    pub url: String,
    pub tls: ClientTls,
}

/// One line for a chat message or event: `[HH:MM:SS] who: text`, UTC.
/// What others wrote is shown with its control characters escaped, so no
/// message can start a line of its own, move the cursor or retitle the
/// terminal.
pub fn format_chat_line(m: &ChatMessage) -> String {
    let secs = m.timestamp_ms.div_euclid(1000).rem_euclid(86_400);
    let time = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    let who = visible(&m.sender);
    match m.kind.enum_value_or_default() {
        Kind::MESSAGE => format!("[{time}] {who}: {}", visible(&m.text)),
        Kind::JOIN if !m.members.is_empty() => {
            let members: Vec<String> = m.members.iter().map(|n| visible(n)).collect();
            format!("[{time}] * {who} entrou (na sala: {})", members.join(", "))
        }
        Kind::JOIN => format!("[{time}] * {who} entrou"),
        Kind::LEAVE => format!("[{time}] * {who} saiu"),
        Kind::ERROR => format!("[{time}] ! {}", visible(&m.text)),
    }
}

/// `text` with control characters (C0, C1, DEL) and bidi controls shown as
/// `\u{..}` escapes.
pub fn visible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || crate::chat::is_bidi_control(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Lines typed on stdin are said in the room; the room's messages are
/// printed as they come. Ends at the end of stdin, leaving the room.
pub fn chat_client(config: &ChatClientConfig, out: &mut impl Write) -> Result<(), String> {
    let (lines_tx, lines) = mpsc::channel::<String>();
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    match config.via {
        Via::Grpc => chat_via_grpc(config, lines, out),
        Via::Ws => chat_via_ws(config, lines, out),
    }
}

fn chat_via_grpc(
    config: &ChatClientConfig,
    lines: mpsc::Receiver<String>,
    out: &mut impl Write,
) -> Result<(), String> {
    let input = Input {
        lines: Mutex::new(lines),
        unsent: Mutex::new(None),
        ended: AtomicBool::new(false),
    };
    let input = Arc::new(input);
    // Where the room's log stood when last heard: a reconnect resumes there.
    let mut last: Option<(u64, String)> = None;
    let mut failures = 0;
    loop {
        let lost = match grpc_session(config, &input, out, &mut last)? {
            None => return Ok(()),
            Some((lost, heard)) => {
                if heard {
                    failures = 0;
                }
                lost
            }
        };
        // Never joined, or it keeps failing: that is the answer.
        if last.is_none() || failures == RECONNECTS {
            return Err(lost);
        }
        thread::sleep(RECONNECT_BACKOFF * 2u32.pow(failures));
        failures += 1;
    }
}

/// Typed lines, shared by the `Chat` streams one after another: a line a
/// lost stream could not send is sent by the next.
struct Input {
    lines: Mutex<mpsc::Receiver<String>>,
    unsent: Mutex<Option<String>>,
    /// The input ended: a stream that ends now ends the chat.
    ended: AtomicBool,
}

impl Input {
    /// The next line to send, waiting for one (`None`: the input ended).
    fn next(&self) -> Option<String> {
        if let Some(text) = crate::lock(&self.unsent).take() {
            return Some(text);
        }
        let line = crate::lock(&self.lines).recv().ok();
        if line.is_none() {
            self.ended.store(true, Ordering::Release);
        }
        line
    }
}

/// One `Chat` stream's life: it joins (resuming from `last`), sends typed
/// lines from its own thread and prints the room's messages. `Ok(None)`: the
/// input ended; `Ok(Some)`: the stream was lost, why, and whether anything
/// was heard on it.
fn grpc_session(
    config: &ChatClientConfig,
    input: &Arc<Input>,
    out: &mut impl Write,
    last: &mut Option<(u64, String)>,
) -> Result<Option<(String, bool)>, String> {
    let client = ChatServiceClient::new(grpc_channel(&config.addr, &config.tls)?);
    let failed = |e: grpcio::Error| format!("chat with {} failed: {}", config.addr, describe(&e));
    let (mut tx, mut rx) = match client.chat() {
        Ok(call) => call,
        Err(e) => return Ok(Some((failed(e), false))),
    };
    let hello = ChatMessage {
        room: config.room.clone(),
        sender: config.name.clone(),
        since: last.as_ref().map(|(seq, _)| *seq),
        epoch: last.as_ref().map_or(String::new(), |(_, e)| e.clone()),
        ..Default::default()
    };
    if let Err(e) = block_on(tx.send((hello, WriteFlags::default()))) {
        return Ok(Some((failed(e), false)));
    }
    let typed = Arc::clone(input);
    // Set when this stream is over: a line its sender takes after that is
    // the next stream's to send.
    let over = Arc::new(AtomicBool::new(false));
    let stream_over = Arc::clone(&over);
    thread::Builder::new()
        .name("chat-send".into())
        .spawn(move || {
            while let Some(text) = typed.next() {
                if stream_over.load(Ordering::Acquire) {
                    *crate::lock(&typed.unsent) = Some(text);
                    return;
                }
                let m = ChatMessage {
                    text: text.clone(),
                    ..Default::default()
                };
                if block_on(tx.send((m, WriteFlags::default()))).is_err() {
                    *crate::lock(&typed.unsent) = Some(text);
                    return;
                }
            }
            let _ = block_on(tx.close());
        })
        .map_err(|e| e.to_string())?;
    let mut heard = false;
    while let Some(next) = block_on(rx.next()) {
        let m = match next {
            Ok(m) => m,
            Err(e) => {
                over.store(true, Ordering::Release);
                return Ok(Some((failed(e), heard)));
            }
        };
        heard = true;
        if m.seq > 0 {
            *last = Some((m.seq, m.epoch.clone()));
        }
        writeln!(out, "{}", format_chat_line(&m)).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    over.store(true, Ordering::Release);
    match input.ended.load(Ordering::Acquire) {
        true => Ok(None),
        false => Ok(Some((format!("chat with {} ended", config.addr), heard))),
    }
}

/// The WebSocket side: tungstenite's client cannot read and write from two
/// threads, so this loop reads with a short timeout and sends typed lines
/// between reads (a client-side compromise; the server never polls).
fn chat_via_ws(
    config: &ChatClientConfig,
    lines: mpsc::Receiver<String>,
    out: &mut impl Write,
) -> Result<(), String> {
    // Where the room's log stood when last heard: a reconnect resumes there.
    let mut last: Option<(u64, String)> = None;
    let mut failures = 0;
    loop {
        let resume = last.as_ref().map_or(String::new(), |(seq, epoch)| {
            format!("&since={seq}&epoch={}", percent_encode(epoch))
        });
        let url = format!(
            "{}?room={}&name={}{resume}",
            config.url,
            percent_encode(&config.room),
            percent_encode(&config.name)
        );
        let lost = match ws_connect(&url, &config.tls) {
            Ok(mut ws) => match ws_session(&mut ws, &lines, out, &mut last)? {
                None => return Ok(()),
                Some(lost) => {
                    failures = 0;
                    lost
                }
            },
            Err(e) => e,
        };
        // Never connected, or it keeps failing: that is the answer.
        if last.is_none() || failures == RECONNECTS {
            return Err(lost);
        }
        thread::sleep(RECONNECT_BACKOFF * 2u32.pow(failures));
        failures += 1;
    }
}

/// Consecutive failed reconnects before `papo chat` gives up.
const RECONNECTS: u32 = 5;
/// The first wait before reconnecting; it doubles with each failure.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(250);

/// One connection's life: typed lines out, the room's messages printed, the
/// log's position kept in `last`. `Ok(None)`: the input ended; `Ok(Some)`:
/// the connection was lost, and why.
fn ws_session(
    ws: &mut WsConn,
    lines: &mpsc::Receiver<String>,
    out: &mut impl Write,
    last: &mut Option<(u64, String)>,
) -> Result<Option<String>, String> {
    let socket = match ws.get_ref() {
        MaybeTlsStream::Plain(s) => Some(s),
        MaybeTlsStream::Rustls(tls) => Some(tls.get_ref()),
        _ => None,
    };
    if let Some(s) = socket {
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
    }
    loop {
        loop {
            match lines.try_recv() {
                Ok(text) => {
                    let m = ChatMessage {
                        text,
                        ..Default::default()
                    };
                    let json =
                        protobuf_json_mapping::print_to_string(&m).map_err(|e| e.to_string())?;
                    if let Err(e) = ws.send(Message::text(json)) {
                        return Ok(Some(format!("send failed: {e}")));
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    let _ = ws.close(None);
                    return Ok(None);
                }
            }
        }
        match ws.read() {
            Ok(Message::Text(json)) => {
                let m: ChatMessage = protobuf_json_mapping::parse_from_str(json.as_str())
                    .map_err(|e| e.to_string())?;
                if m.seq > 0 {
                    *last = Some((m.seq, m.epoch.clone()));
                }
                writeln!(out, "{}", format_chat_line(&m)).map_err(|e| e.to_string())?;
                out.flush().map_err(|e| e.to_string())?;
            }
            Ok(Message::Close(frame)) => return Ok(Some(closed_by_server(frame))),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Ok(Some(format!("connection lost: {e}"))),
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_lines_show_control_characters_escaped() {
        let m = ChatMessage {
            sender: "ana".into(),
            text: "oi\n[09:00:00] admin: run this\u{1b}]0;title\u{7}\u{202E}ok".into(),
            timestamp_ms: 3_600_000,
            ..Default::default()
        };
        let line = format_chat_line(&m);
        assert_eq!(
            line,
            "[01:00:00] ana: oi\\u{a}[09:00:00] admin: run this\\u{1b}]0;title\\u{7}\\u{202e}ok"
        );
        assert!(!line.chars().any(char::is_control));
        assert_eq!(visible("João 🎉"), "João 🎉");
    }
}
