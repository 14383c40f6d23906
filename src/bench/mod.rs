//! `papo bench`: a blocking load generator for any server that speaks the
//! seed's protocols, and the TCP floor to compare them with. One OS thread
//! per connection, like the server; every reply is checked.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

mod lean_ws;

use grpcio::{CallOption, ChannelBuilder, EnvBuilder};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

use crate::client::{ws_connect, WsConn};
use crate::proto::chat::Message as ChatMessage;
use crate::proto::chat_grpc::ChatServiceClient;
use lean_ws::{Epoll, LeanWs};

/// Latency samples in nanoseconds, reduced to percentiles.
#[derive(Default)]
pub struct Samples(Vec<u64>);

impl Samples {
    pub fn record(&mut self, d: Duration) {
        self.0.push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    fn merge(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    /// The `p`-quantile in microseconds (0 without samples).
    pub fn percentile_us(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let rank = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1] as f64 / 1_000.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One benchmark's result.
pub struct Report {
    pub mode: &'static str,
    pub target: String,
    pub conns: usize,
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub samples: Samples,
    pub client_cpu: Duration,
}

impl Report {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A table for people and one JSON line for programs.
    pub fn render(&mut self) -> String {
        let (p50, p90, p99, max) = (
            self.samples.percentile_us(0.50),
            self.samples.percentile_us(0.90),
            self.samples.percentile_us(0.99),
            self.samples.percentile_us(1.0),
        );
        let mut out = String::new();
        let _ = writeln!(out, "mode        {}  target {}", self.mode, self.target);
        let _ = writeln!(out, "conns       {}", self.conns);
        let _ = writeln!(
            out,
            "ops         {} in {:.2} s = {:.0} ops/s",
            self.ops,
            self.elapsed.as_secs_f64(),
            self.ops_per_sec()
        );
        let _ = writeln!(
            out,
            "latency us  p50 {p50:.1}  p90 {p90:.1}  p99 {p99:.1}  max {max:.1}"
        );
        let _ = writeln!(out, "errors      {}", self.errors);
        let _ = writeln!(out, "client cpu  {:.2} s", self.client_cpu.as_secs_f64());
        let _ = writeln!(
            out,
            "{{\"mode\":\"{}\",\"target\":\"{}\",\"conns\":{},\"ops\":{},\"errors\":{},\"seconds\":{:.3},\
             \"ops_per_sec\":{:.1},\"p50_us\":{p50:.1},\"p90_us\":{p90:.1},\"p99_us\":{p99:.1},\"max_us\":{max:.1},\
             \"client_cpu_s\":{:.3}}}",
            self.mode,
            self.target.replace('"', "'"),
            self.conns,
            self.ops,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.ops_per_sec(),
            self.client_cpu.as_secs_f64()
        );
        out
    }
}

/// CPU time (user + system) this process has used so far.
pub fn process_cpu() -> Duration {
    cpu_of("self")
}

fn cpu_of(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Runs `conns` workers at once (each returns its samples and error count)
/// and gathers their results into a report.
fn run_workers(
    mode: &'static str,
    target: String,
    conns: usize,
    worker: impl Fn(usize, &Barrier) -> Result<(Samples, u64), String> + Send + Sync + 'static,
) -> Result<Report, String> {
    let worker = Arc::new(worker);
    let start_line = Arc::new(Barrier::new(conns + 1));
    let cpu_before = process_cpu();
    let handles: Vec<_> = (0..conns)
        .map(|i| {
            let worker = Arc::clone(&worker);
            let start_line = Arc::clone(&start_line);
            thread::Builder::new()
                .name("bench".into())
                .stack_size(256 << 10)
                .spawn(move || worker(i, &start_line))
                .map_err(|e| format!("cannot start a bench thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    start_line.wait();
    let started = Instant::now();
    let mut samples = Samples::default();
    let mut errors = 0;
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok((s, e))) => {
                samples.merge(s);
                errors += e;
            }
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a bench thread panicked".into()),
        }
    }
    let elapsed = started.elapsed();
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Report {
        mode,
        target,
        conns,
        ops: samples.len() as u64,
        errors,
        elapsed,
        samples,
        client_cpu: process_cpu().saturating_sub(cpu_before),
    })
}

/// `bench ws`: ping-pong (or `inflight` deep) against a `/ws`-style endpoint.
pub fn ws(
    url: &str,
    conns: usize,
    msgs: usize,
    size: usize,
    inflight: usize,
) -> Result<Report, String> {
    let url = url.to_owned();
    let payload = "x".repeat(size);
    let expected = crate::chat::ws_reply_text(&payload);
    let target = url.clone();
    let inflight = inflight.max(1);
    run_workers("ws", target, conns, move |i, start_line| {
        let connected = LeanWs::connect(&url, payload.as_bytes(), i as u64);
        start_line.wait();
        let mut ws = connected?;
        let mut samples = Samples::default();
        let mut errors = 0;
        let mut sent_at = std::collections::VecDeque::with_capacity(inflight);
        let mut sent = 0;
        while samples.len() + (errors as usize) < msgs {
            while sent < msgs && sent_at.len() < inflight {
                sent_at.push_back(Instant::now());
                ws.send().map_err(|e| format!("send: {e}"))?;
                sent += 1;
            }
            let same = ws.receive(expected.as_bytes())?;
            let at = sent_at.pop_front().unwrap_or_else(Instant::now);
            if same {
                samples.record(at.elapsed());
            } else {
                errors += 1;
            }
        }
        ws.close();
        Ok((samples, errors))
    })
}

/// `bench grpc`: unary `SendMessage`, `conc` callers over `channels` channels.
pub fn grpc(
    addr: &str,
    conc: usize,
    reqs: usize,
    size: usize,
    channels: usize,
) -> Result<Report, String> {
    let env = Arc::new(EnvBuilder::new().cq_count(channels.clamp(1, 4)).build());
    let clients: Vec<ChatServiceClient> = (0..channels.max(1))
        .map(|i| {
            let channel = ChannelBuilder::new(Arc::clone(&env))
                .raw_cfg_int(std::ffi::CString::from(c"papo.bench.channel"), i as i32)
                .connect(addr);
            ChatServiceClient::new(channel)
        })
        .collect();
    let clients = Arc::new(clients);
    let text = "x".repeat(size);
    let expected = crate::chat::grpc_reply(&text);
    let per_caller = reqs.div_ceil(conc.max(1));
    let addr_owned = addr.to_owned();
    run_workers("grpc", addr_owned.clone(), conc, move |i, start_line| {
        let client = &clients[i % clients.len()];
        let request = ChatMessage {
            sender: "bench".into(),
            text: text.clone(),
            ..Default::default()
        };
        start_line.wait();
        let mut samples = Samples::default();
        let mut errors = 0;
        for _ in 0..per_caller {
            let at = Instant::now();
            match client.send_message_opt(
                &request,
                CallOption::default().timeout(Duration::from_secs(10)),
            ) {
                Ok(r) if r.reply == expected => samples.record(at.elapsed()),
                Ok(_) => errors += 1,
                Err(e) => {
                    return Err(format!(
                        "SendMessage to {addr_owned}: {}",
                        crate::client::describe(&e)
                    ))
                }
            }
        }
        Ok((samples, errors))
    })
}

/// `bench tcp`: the floor: the same ping-pong over raw TCP to an echo server.
pub fn tcp(addr: &str, conns: usize, msgs: usize, size: usize) -> Result<Report, String> {
    let addr = addr.to_owned();
    let target = addr.clone();
    run_workers("tcp", target, conns, move |_, start_line| {
        let connected = TcpStream::connect(&addr);
        start_line.wait();
        let mut stream = connected.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let payload = vec![b'x'; size.max(1)];
        let mut reply = vec![0u8; payload.len()];
        let mut samples = Samples::default();
        let mut errors = 0;
        for _ in 0..msgs {
            let at = Instant::now();
            stream
                .write_all(&payload)
                .map_err(|e| format!("write: {e}"))?;
            stream
                .read_exact(&mut reply)
                .map_err(|e| format!("read: {e}"))?;
            if reply == payload {
                samples.record(at.elapsed());
            } else {
                errors += 1;
            }
        }
        Ok((samples, errors))
    })
}

/// `bench tcp-echo-server`: a minimal thread-per-connection TCP echo, the
/// floor no WebSocket or gRPC server can beat on the same machine.
pub fn tcp_echo_server(addr: &str) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    log::info!("tcp-echo listening on {bound}");
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else { continue };
        let _ = stream.set_nodelay(true);
        let _ = thread::Builder::new().stack_size(64 << 10).spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

/// `bench idle`: the server's cost per idle connection: WebSocket
/// (`ws://`), gRPC (`grpc://`, one channel and so one HTTP/2 connection each)
/// or raw TCP (`tcp://`, for the floor's echo server).
pub fn idle(url: &str, conns: usize, pid: u32, hold: Duration) -> Result<String, String> {
    let status = |field: &str| -> Result<u64, String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("process {pid}: {e}"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
    };
    let (rss0, threads0) = (status("VmRSS:")?, status("Threads:")?);
    // Whatever keeps each connection open until this function returns.
    let mut held: Vec<Box<dyn Send>> = Vec::with_capacity(conns);
    if let Some(addr) = url.strip_prefix("tcp://") {
        for _ in 0..conns {
            let stream =
                TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            held.push(Box::new(stream));
        }
    } else if let Some(addr) = url.strip_prefix("grpc://") {
        let env = Arc::new(EnvBuilder::new().cq_count(1).build());
        for i in 0..conns {
            // A distinct argument per channel: C-core shares one connection
            // among channels that are configured alike.
            let channel = ChannelBuilder::new(Arc::clone(&env))
                .raw_cfg_int(std::ffi::CString::from(c"papo.bench.channel"), i as i32)
                .connect(addr);
            if !crate::grpc::block_on(channel.wait_for_connected(Duration::from_secs(10))) {
                return Err(format!("cannot connect to {addr}"));
            }
            held.push(Box::new(channel));
        }
        held.push(Box::new(env));
    } else {
        for _ in 0..conns {
            let mut ws = ws_connect(url)?;
            // Idle like a browser tab: blocked in read, answering keepalive
            // pings; the connections close when this process ends.
            thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || while ws.read().is_ok() {})
                .map_err(|e| format!("cannot start a reader thread: {e}"))?;
        }
    }
    thread::sleep(Duration::from_secs(1));
    let cpu0 = cpu_of(&pid.to_string());
    thread::sleep(hold);
    let cpu = cpu_of(&pid.to_string()).saturating_sub(cpu0);
    let (rss1, threads1) = (status("VmRSS:")?, status("Threads:")?);
    let per_kib = rss1.saturating_sub(rss0) as f64 / conns.max(1) as f64;
    let per_thread = threads1.saturating_sub(threads0) as f64 / conns.max(1) as f64;
    Ok(format!(
        "idle {conns} connections to {url}: RSS {rss0} -> {rss1} KiB, threads {threads0} -> {threads1}, \
         server CPU {:.2} s over {:.0} s\nper connection: {per_kib:.1} KiB RSS, {per_thread:.2} threads\n\
         {{\"mode\":\"idle\",\"conns\":{conns},\"rss_kib_per_conn\":{per_kib:.2},\"threads_per_conn\":{per_thread:.3},\
         \"server_cpu_s\":{:.3},\"seconds\":{:.1}}}\n",
        cpu.as_secs_f64(),
        hold.as_secs_f64(),
        cpu.as_secs_f64(),
        hold.as_secs_f64()
    ))
}

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
/// a thread per member each send also paid for waking that thread: measured,
/// 27% of the server's time went to waking the bench's own threads. A
/// member on another machine costs the server no such wake-up.
pub fn fanout(
    url: &str,
    members: usize,
    msgs: usize,
    interval: Duration,
) -> Result<Report, String> {
    let epoch = Instant::now();
    let room = format!("bench-{}", std::process::id());
    let cpu_before = process_cpu();
    let mut groups: Vec<Vec<Member>> = (0..FANOUT_READERS).map(|_| Vec::new()).collect();
    for i in 0..members {
        let ws = LeanWs::connect(&format!("{url}?room={room}&name=m{i}"), b"", i as u64)?;
        groups[i % FANOUT_READERS].push(Member {
            ws,
            present: 0,
            samples: Samples::default(),
        });
    }
    let joined = Arc::new(Barrier::new(FANOUT_READERS + 1));
    let readers: Vec<_> = groups
        .into_iter()
        .map(|group| {
            let joined = Arc::clone(&joined);
            thread::Builder::new()
                .name("bench-members".into())
                .spawn(move || read_members(group, members, msgs, epoch, &joined))
                .map_err(|e| format!("cannot start a reader thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    joined.wait();
    let started = Instant::now();
    let mut sender = ws_connect(&format!("{url}?room={room}&name="))?;
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
    joined: &Barrier,
) -> Result<(Samples, u64), String> {
    let epoll = Epoll::new()?;
    for (i, member) in group.iter().enumerate() {
        member.ws.set_nonblocking()?;
        epoll.add(member.ws.fd(), i as u64)?;
    }
    let mut ready = Vec::new();
    let mut filling = group.len();
    // A member's own JOIN lists who was there; later JOINs add one.
    let count_room = |member: &mut Member| {
        member.ws.drain(|json| {
            let json = String::from_utf8_lossy(json);
            if let Some(list) = json.split("\"members\": [").nth(1) {
                member.present = list.split(']').next().unwrap_or("").matches(',').count() + 1;
            } else if json.contains("\"JOIN\"") {
                member.present += 1;
            } else if json.contains("\"LEAVE\"") {
                member.present = member.present.saturating_sub(1);
            }
        })
    };
    while filling > 0 {
        epoll.wait(&mut ready, FANOUT_STALL)?;
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
    joined.wait();
    let mut waiting = group.len();
    let mut errors = 0;
    while waiting > 0 {
        epoll.wait(&mut ready, FANOUT_STALL)?;
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
                    .and_then(text_field)
                    .and_then(|t| t.parse::<u64>().ok());
                if let Some(sent_us) = sent_us {
                    let now_us = epoch.elapsed().as_micros() as u64;
                    samples.record(Duration::from_micros(now_us.saturating_sub(sent_us)));
                }
            });
            if drained.is_err() || member.samples.len() >= msgs {
                // Done: stop watching it, or a closed socket stays ready.
                epoll.remove(member.ws.fd())?;
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

/// The `text` field of a chat message as papo prints it (`"text": "…"`),
/// when it holds no escapes.
fn text_field(json: &str) -> Option<&str> {
    let start = json.find("\"text\": \"")? + 9;
    let len = json[start..].find('"')?;
    Some(&json[start..start + len])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_text_field() {
        assert_eq!(
            text_field(r#"{"sender": "a", "text": "123", "seq": "4"}"#),
            Some("123")
        );
        assert_eq!(text_field(r#"{"sender": "a"}"#), None);
    }

    #[test]
    fn percentiles() {
        let mut s = Samples::default();
        assert_eq!(s.percentile_us(0.5), 0.0);
        for us in 1..=100 {
            s.record(Duration::from_micros(us));
        }
        assert_eq!(s.percentile_us(0.50), 50.0);
        assert_eq!(s.percentile_us(0.99), 99.0);
        assert_eq!(s.percentile_us(1.0), 100.0);
    }
}
