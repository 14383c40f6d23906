//! `bench fanout`: one sender, N WebSocket members in one room; the latency
//! from each send to each member's receipt.

use std::io;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use papo::client::{ws_connect, ClientTls, WsConn};
use papo::sys::Epoll;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

use super::json;
use super::lean_ws::LeanWs;
use super::{process_cpu, Report, Samples};

/// Threads that read the fan-out bench's members.
const FANOUT_READERS: usize = 2;
/// How long the fan-out bench waits without any delivery before it counts
/// the missing ones as errors.
const FANOUT_STALL: Duration = Duration::from_secs(10);

/// `bench fanout`: one sender, `members` WebSocket members in a room;
/// latency from send to each member's receipt.
///
/// The members are read by two epoll threads, not a thread each. On one
/// machine, loopback delivers a message inside the server's `send`, and with
/// a thread per member each send also paid for waking that thread, a large
/// share of the server's time (the README's benchmarks say how much). A
/// member on another machine costs the server no such wake-up.
pub struct Fanout {
    /// The chat endpoint.
    pub url: String,
    /// Another instance's, where every other member joins.
    pub second_url: Option<String>,
    pub members: usize,
    /// Messages sent.
    pub msgs: usize,
    /// Pause between messages.
    pub interval: Duration,
}

impl Fanout {
    pub fn run(self) -> Result<Report, String> {
        let Fanout {
            url,
            second_url,
            members,
            msgs,
            interval,
        } = self;
        fanout(&url, second_url.as_deref(), members, msgs, interval)
    }
}

fn fanout(
    url: &str,
    second_url: Option<&str>,
    members: usize,
    msgs: usize,
    interval: Duration,
) -> Result<Report, String> {
    let epoch = Instant::now();
    let room = format!("bench-{}", std::process::id());
    let cpu_before = process_cpu();
    let mut groups: Vec<Vec<Member>> = (0..FANOUT_READERS).map(|_| Vec::new()).collect();
    for i in 0..members {
        let joins = match second_url {
            Some(second) if i % 2 == 1 => second,
            _ => url,
        };
        let ws = LeanWs::connect(
            &format!("{joins}?room={room}&name=m{i}"),
            b"",
            i as u64,
            None,
        )?;
        groups[i % FANOUT_READERS].push(Member {
            ws,
            present: 0,
            samples: Samples::default(),
        });
    }
    let (filled, room_full) = mpsc::channel();
    let readers: Vec<_> = groups
        .into_iter()
        .map(|group| {
            let filled = filled.clone();
            thread::Builder::new()
                .name("bench-members".into())
                .spawn(move || read_members(group, members, msgs, epoch, &filled))
                .map_err(|e| format!("cannot start a reader thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    // Every reader says its members are all in the room, or why not (a
    // reader that failed must not leave this thread waiting for it).
    for _ in 0..FANOUT_READERS {
        room_full
            .recv_timeout(FANOUT_STALL * 2)
            .map_err(|_| "the room did not fill in time".to_owned())??;
    }
    let started = Instant::now();
    let mut sender = ws_connect(&format!("{url}?room={room}&name="), &ClientTls::default())?;
    for _ in 0..msgs {
        let sent_us = epoch.elapsed().as_micros();
        sender
            .send(Message::text(format!("{{\"text\":\"{sent_us}\"}}")))
            .map_err(|e| format!("send: {e}"))?;
        // A drain of the sender's own copies keeps its queue short.
        while let Ok(Message::Text(_)) = read_nonblocking(&mut sender) {}
        thread::sleep(interval);
    }
    let mut samples = Samples::default();
    let mut errors = 0;
    for reader in readers {
        let (s, e) = reader
            .join()
            .map_err(|_| "a reader thread panicked".to_owned())??;
        samples.merge(s);
        errors += e;
    }
    Ok(Report {
        mode: "fanout",
        target: format!("{url} ({members} members)"),
        conns: members,
        ops: samples.len() as u64,
        errors,
        elapsed: started.elapsed(),
        samples,
        client_cpu: process_cpu().saturating_sub(cpu_before),
        server_cpu: None,
    })
}

/// A fan-out member: its connection, how many it knows in the room, and
/// its delivery latencies.
struct Member {
    ws: LeanWs,
    present: usize,
    samples: Samples,
}

/// One reader thread of the fan-out bench: waits until each of its members
/// sees all `total` in the room (connecting is not joining: a member's server
/// thread may join after the next member's), then records `msgs` deliveries
/// per member.
fn read_members(
    mut group: Vec<Member>,
    total: usize,
    msgs: usize,
    epoch: Instant,
    filled: &mpsc::Sender<Result<(), String>>,
) -> Result<(Samples, u64), String> {
    match fill_room(&mut group, total) {
        Ok(epoll) => {
            let _ = filled.send(Ok(()));
            measure(group, msgs, epoch, &epoll)
        }
        Err(e) => {
            let _ = filled.send(Err(e.clone()));
            Err(e)
        }
    }
}

/// Waits until each member of `group` sees all `total` in the room; returns
/// the epoll instance watching them.
fn fill_room(group: &mut [Member], total: usize) -> Result<Epoll, String> {
    let epoll = Epoll::new().map_err(|e| format!("epoll: {e}"))?;
    for (i, member) in group.iter().enumerate() {
        member.ws.set_nonblocking()?;
        epoll
            .add(member.ws.fd(), i as u64)
            .map_err(|e| format!("epoll: {e}"))?;
    }
    let mut ready = Vec::new();
    let mut filling = group.len();
    // A member's own JOIN lists who was there; later JOINs add one.
    let count_room = |member: &mut Member| {
        member.ws.drain(|json| {
            let json = std::str::from_utf8(json).unwrap_or_default();
            let listed = json::field(json, "members").and_then(json::array_len);
            match (json::field(json, "kind"), listed) {
                (Some("\"JOIN\""), Some(n)) if n > 0 => member.present = n,
                (Some("\"JOIN\""), _) => member.present += 1,
                (Some("\"LEAVE\""), _) => member.present = member.present.saturating_sub(1),
                _ => {}
            }
        })
    };
    // The handshake may have read a member's first frames along with the
    // 101: they are in its buffer already, and epoll will not announce them.
    for member in group.iter_mut() {
        count_room(member)?;
        if member.present >= total {
            filling -= 1;
        }
    }
    while filling > 0 {
        epoll
            .wait(&mut ready, FANOUT_STALL)
            .map_err(|e| format!("epoll: {e}"))?;
        if ready.is_empty() {
            return Err(format!(
                "the room did not fill: {filling} members still wait"
            ));
        }
        for &i in &ready {
            let member = &mut group[i as usize];
            let before = member.present >= total;
            count_room(member)?;
            if !before && member.present >= total {
                filling -= 1;
            }
        }
    }
    Ok(epoll)
}

/// Records `msgs` deliveries per member of `group`.
fn measure(
    mut group: Vec<Member>,
    msgs: usize,
    epoch: Instant,
    epoll: &Epoll,
) -> Result<(Samples, u64), String> {
    let mut ready = Vec::new();
    let mut waiting = group.len();
    let mut errors = 0;
    while waiting > 0 {
        epoll
            .wait(&mut ready, FANOUT_STALL)
            .map_err(|e| format!("epoll: {e}"))?;
        if ready.is_empty() {
            break;
        }
        for &i in &ready {
            let member = &mut group[i as usize];
            let samples = &mut member.samples;
            let drained = member.ws.drain(|json| {
                // A full JSON parse per delivery would make this client,
                // not the server, the bottleneck: read the one field.
                let sent_us = std::str::from_utf8(json)
                    .ok()
                    .and_then(|json| json::field(json, "text"))
                    .and_then(json::plain_string)
                    .and_then(|t| t.parse::<u64>().ok());
                if let Some(sent_us) = sent_us {
                    let now_us = epoch.elapsed().as_micros() as u64;
                    samples.record(Duration::from_micros(now_us.saturating_sub(sent_us)));
                }
            });
            if drained.is_err() || member.samples.len() >= msgs {
                // Done: stop watching it, or a closed socket stays ready.
                epoll
                    .remove(member.ws.fd())
                    .map_err(|e| format!("epoll: {e}"))?;
                waiting -= 1;
            }
        }
    }
    let mut samples = Samples::default();
    for member in group {
        errors += msgs.saturating_sub(member.samples.len()) as u64;
        samples.merge(member.samples);
    }
    Ok((samples, errors))
}

fn read_nonblocking(ws: &mut WsConn) -> io::Result<Message> {
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_nonblocking(true)?;
    }
    let result = ws.read().map_err(|e| io::Error::other(e.to_string()));
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_nonblocking(false)?;
    }
    result
}
