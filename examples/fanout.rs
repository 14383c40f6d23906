//! Measures chat fan-out against a running `papo serve`: N WebSocket members
//! in one room, one more member sending; reports the delivery latency from
//! send to each member's receipt (p50/p99/max), then the server's CPU while
//! the N members sit idle.
//!
//!     cargo run --release --example fanout -- ws://127.0.0.1:8080/chat PID [members] [messages] [idle-secs]

use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::stream::MaybeTlsStream;
use tungstenite::{connect, Message};

type Ws = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

fn member(url: &str, name: &str) -> Ws {
    connect(format!("{url}?room=fanout&name={name}"))
        .expect("connect")
        .0
}

/// Reads until the JOIN of `name`: the backlog of earlier joins is behind us.
fn wait_for_join(ws: &mut Ws, name: &str) {
    let marker = format!("\"sender\": \"{name}\"");
    while let Ok(message) = ws.read() {
        if let Message::Text(json) = message {
            if json.as_str().contains(&marker) && json.as_str().contains("JOIN") {
                return;
            }
        }
    }
}

/// The text of the next chat message (JOIN/LEAVE events carry none).
fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.read().ok()? {
            Message::Text(json) => {
                let json = json.as_str();
                if let Some(at) = json
                    .find("\"text\": \"")
                    .or_else(|| json.find("\"text\":\""))
                {
                    let rest = &json[at..];
                    let start = rest
                        .find(": \"")
                        .map(|i| i + 3)
                        .or_else(|| rest.find(":\"").map(|i| i + 2))?;
                    let end = rest[start..].find('"')?;
                    return Some(rest[start..start + end].to_owned());
                }
            }
            _ => continue,
        }
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/chat".into());
    let pid: u32 = args
        .get(2)
        .and_then(|p| p.parse().ok())
        .expect("server PID");
    let members: usize = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1000);
    let messages: usize = args.get(4).and_then(|n| n.parse().ok()).unwrap_or(50);
    let idle_secs: u64 = args.get(5).and_then(|n| n.parse().ok()).unwrap_or(60);

    let epoch = Instant::now();
    let ready = Arc::new(Barrier::new(members + 1));
    let (latencies, collected) = mpsc::channel::<Vec<u64>>();
    let mut sockets = Vec::new();
    for i in 0..members {
        let mut ws = member(&url, &format!("m{i}"));
        let ready = Arc::clone(&ready);
        let latencies = latencies.clone();
        let (keep_tx, keep_rx) = mpsc::channel::<()>();
        sockets.push(keep_rx);
        thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || {
                // Reading from the start: a member that does not read is
                // (rightly) dropped by the server once its queue fills.
                wait_for_join(&mut ws, "sender");
                ready.wait();
                let mut seen = Vec::with_capacity(messages);
                while seen.len() < messages {
                    let Some(text) = next_text(&mut ws) else {
                        break;
                    };
                    if let Ok(sent) = text.parse::<u64>() {
                        seen.push(epoch.elapsed().as_micros() as u64 - sent);
                    }
                }
                let _ = latencies.send(seen);
                let _ = keep_tx.send(());
                // Idle, like an open browser tab: blocked in read, answering
                // the server's keepalive pings, until the process ends.
                while ws.read().is_ok() {}
            })
            .expect("spawn");
    }
    drop(latencies);
    let mut sender = member(&url, "sender");
    // Every member has read its backlog of joins.
    ready.wait();
    // The sender joins last and sends fewer messages than its queue holds, so
    // it need not read.
    for _ in 0..messages {
        let sent = epoch.elapsed().as_micros();
        sender
            .send(Message::text(format!("{{\"text\":\"{sent}\"}}")))
            .expect("send");
        thread::sleep(Duration::from_millis(20));
    }
    let mut all: Vec<u64> = collected.iter().take(members).flatten().collect();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "fan-out to {members} WebSocket members, {messages} messages: {} deliveries, p50 {} us, p99 {} us, max {} us",
        all.len(),
        pct(0.50),
        pct(0.99),
        all.last().copied().unwrap_or(0)
    );
    let open: Vec<()> = sockets.iter().filter_map(|r| r.recv().ok()).collect();
    let before = cpu_ticks(pid);
    thread::sleep(Duration::from_secs(idle_secs));
    let ticks = cpu_ticks(pid) - before;
    println!(
        "{} idle members for {idle_secs} s: server CPU {ticks} ticks ({:.2} s)",
        open.len(),
        ticks as f64 / 100.0
    );
}
