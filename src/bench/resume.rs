//! `bench resume`: what it costs a member to come back. It misses M
//! messages, then reconnects with `since` and `epoch`; timed from the
//! connect until its own JOIN, which comes after the whole replay.

use std::time::Instant;

use papo::client::{ws_connect, ClientTls, WsConn};
use papo::proto::chat::message::Kind;
use papo::proto::chat::Message as ChatMessage;
use tungstenite::Message;

use super::{process_cpu, Report, Samples};

/// Messages the speaker sends before reading its own back.
const SPEAKER_BATCH: usize = 100;

pub struct Resume {
    /// The chat endpoint.
    pub url: String,
    /// Messages missed, and replayed, each round.
    pub msgs: usize,
    pub rounds: usize,
}

impl Resume {
    pub fn run(self) -> Result<Report, String> {
        let room = format!("resume-{}", std::process::id());
        let cpu_before = process_cpu();
        // A member says the messages the other will miss.
        let join = |name: &str, query: &str| -> Result<(WsConn, ChatMessage), String> {
            let url = format!("{}?room={room}&name={name}{query}", self.url);
            let mut ws = ws_connect(&url, &ClientTls::default())?;
            let joined = until(&mut ws, |m| is_join_of(m, name))?;
            Ok((ws, joined))
        };
        let (mut speaker, _) = join("speaker", "")?;
        let mut samples = Samples::default();
        let mut errors = 0;
        let started = Instant::now();
        for _ in 0..self.rounds {
            // It stops at its own JOIN.
            let (away, last) = join("away", "")?;
            drop(away);
            until(&mut speaker, |m| {
                m.kind.enum_value_or_default() == Kind::LEAVE && m.sender == "away"
            })?;
            // In batches the speaker's own queue holds.
            for batch in (0..self.msgs).collect::<Vec<_>>().chunks(SPEAKER_BATCH) {
                for n in batch {
                    send(&mut speaker, &format!("m{n}"))?;
                }
                let said = format!("m{}", batch[batch.len() - 1]);
                until(&mut speaker, |m| m.text == said)?;
            }
            let query = format!("&since={}&epoch={}", last.seq, last.epoch);
            let start = Instant::now();
            let url = format!("{}?room={room}&name=away{query}", self.url);
            let mut back = ws_connect(&url, &ClientTls::default())?;
            let mut replayed = 0;
            let joined = until(&mut back, |m| {
                replayed += usize::from(m.kind.enum_value_or_default() == Kind::MESSAGE);
                is_join_of(m, "away")
            })?;
            samples.record(start.elapsed());
            if replayed < self.msgs || !joined.recovered {
                errors += 1;
            }
        }
        Ok(Report {
            mode: "resume",
            target: format!("{} ({} messages replayed)", self.url, self.msgs),
            conns: 1,
            ops: self.rounds as u64,
            errors,
            elapsed: started.elapsed(),
            samples,
            client_cpu: process_cpu().saturating_sub(cpu_before),
            server_cpu: None,
        })
    }
}

/// A member's own JOIN (the one with the member list).
fn is_join_of(m: &ChatMessage, name: &str) -> bool {
    m.kind.enum_value_or_default() == Kind::JOIN && m.sender == name && !m.members.is_empty()
}

fn send(ws: &mut WsConn, text: &str) -> Result<(), String> {
    ws.send(Message::text(format!("{{\"text\":\"{text}\"}}")))
        .map_err(|e| format!("send: {e}"))
}

/// Reads chat messages until one satisfies `done`; returns it.
fn until(
    ws: &mut WsConn,
    mut done: impl FnMut(&ChatMessage) -> bool,
) -> Result<ChatMessage, String> {
    loop {
        match ws.read().map_err(|e| format!("read: {e}"))? {
            Message::Text(json) => {
                let m: ChatMessage = protobuf_json_mapping::parse_from_str(json.as_str())
                    .map_err(|e| format!("not a chat message: {e}"))?;
                if done(&m) {
                    return Ok(m);
                }
            }
            Message::Close(frame) => return Err(format!("closed: {frame:?}")),
            _ => {}
        }
    }
}
