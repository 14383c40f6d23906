//! `papo bench`: a blocking load generator for any server that speaks the
//! seed's protocols, and the TCP floor to compare them with. One OS thread
//! per connection, like the server; every reply is checked. A tool of the
//! `papo` binary, not part of the server library.

mod fanout;
mod idle;
mod json;
mod lean_ws;
mod load;
mod resume;

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use papo::client::ClientTls;
use papo::config::{CliError, Command, Flag, Values};

pub use fanout::Fanout;
pub use idle::Idle;
pub use load::{ConnectLoad, GrpcLoad, TcpEchoServer, TcpLoad, WsLoad};
pub use resume::Resume;

/// Stack of each bench client thread.
const CLIENT_STACK: usize = 256 << 10;

// The flags of every mode.

const WS_URL: Flag = Flag::text(
    "url",
    "URL",
    "ws://127.0.0.1:8080/ws",
    "Endpoint replying 'Recebido: <msg>'",
);
const CONNS: Flag = Flag::count("conns", "N", "1", "Connections, one thread each");
const MSGS: Flag = Flag::count("msgs", "M", "1000", "Messages per connection");
const SIZE: Flag = Flag::size("size", "BYTES", "32", "Message size");
const INFLIGHT: Flag = Flag::count(
    "inflight",
    "P",
    "1",
    "Messages in flight per connection (1: ping-pong)",
);
const GRPC_ADDR: Flag = Flag::text("addr", "ADDR", "127.0.0.1:50051", "gRPC server");
const CONC: Flag = Flag::count("conc", "C", "1", "Concurrent callers, one thread each");
const REQS: Flag = Flag::count("reqs", "R", "1000", "Requests in all");
const TEXT_SIZE: Flag = Flag::size("size", "BYTES", "32", "Text size");
const CHANNELS: Flag = Flag::count(
    "channels",
    "K",
    "1",
    "Channels (connections) the callers share",
);
const TCP_ADDR: Flag = Flag::text("addr", "ADDR", "127.0.0.1:9000", "TCP echo server");
const LISTEN_ADDR: Flag = Flag::text(
    "addr",
    "ADDR",
    "127.0.0.1:9000",
    "Listen address (port 0 picks one)",
);
const CHAT_URL: Flag = Flag::text("url", "URL", "ws://127.0.0.1:8080/chat", "Chat endpoint");
const MEMBERS: Flag = Flag::count(
    "members",
    "N",
    "100",
    "Members in the room, read by two epoll threads",
);
const SECOND_URL: Flag = Flag::optional(
    "second-url",
    "URL",
    "Another instance's chat endpoint (same Redis): every other member joins there",
);
const FANOUT_MSGS: Flag = Flag::count("msgs", "M", "20", "Messages sent");
const FANOUT_INTERVAL: Flag = Flag::duration("interval", "20ms", "Pause between messages");
const IDLE_URL: Flag = Flag::text(
    "url",
    "URL",
    "ws://127.0.0.1:8080/ws",
    "ws://HOST:PORT/PATH (WebSocket), grpc://HOST:PORT (a gRPC channel each) or tcp://HOST:PORT",
);
const IDLE_CONNS: Flag = Flag::count("conns", "N", "1000", "Idle connections");
const PID: Flag = Flag::count("pid", "PID", "0", "The server's process id");
const CA: Flag = Flag::optional(
    "ca",
    "FILE",
    "PEM CA to trust for wss:// and --tls (default: the system's)",
);
const TLS: Flag = Flag::switch("tls", "Speak TLS to the gRPC server");
const HOLD: Flag = Flag::duration(
    "hold",
    "5s",
    "How long to hold them idle while measuring CPU",
);

const WS: Command = Command {
    name: "bench ws",
    about: "Load a /ws-style endpoint: N connections x M messages, every reply checked.",
    flags: &[&WS_URL, &CONNS, &MSGS, &SIZE, &INFLIGHT, &CA],
};
const GRPC: Command = Command {
    name: "bench grpc",
    about:
        "Load ChatService.SendMessage: C concurrent callers, R requests in all, replies checked.",
    flags: &[&GRPC_ADDR, &CONC, &REQS, &TEXT_SIZE, &CHANNELS, &TLS, &CA],
};
const TCP: Command = Command {
    name: "bench tcp",
    about: "The floor: the same ping-pong over raw TCP against 'papo bench tcp-echo-server'.",
    flags: &[&TCP_ADDR, &CONNS, &MSGS, &SIZE],
};
const TCP_ECHO: Command = Command {
    name: "bench tcp-echo-server",
    about: "A minimal std::net thread-per-connection TCP echo server (the floor).",
    flags: &[&LISTEN_ADDR],
};
const FANOUT: Command = Command {
    name: "bench fanout",
    about: "One sender, N WebSocket members in a room: latency from send to each receipt.",
    flags: &[
        &CHAT_URL,
        &SECOND_URL,
        &MEMBERS,
        &FANOUT_MSGS,
        &FANOUT_INTERVAL,
    ],
};
const RESUME_MSGS: Flag = Flag::count("msgs", "M", "1000", "Messages missed, replayed each round");
const ROUNDS: Flag = Flag::count("rounds", "N", "20", "Reconnections timed");
const RESUME: Command = Command {
    name: "bench resume",
    about: "A member misses M messages, then reconnects with since and epoch: time until the replay is in.",
    flags: &[&CHAT_URL, &RESUME_MSGS, &ROUNDS],
};
const CONNECT_URL: Flag = Flag::text(
    "url",
    "URL",
    "ws://127.0.0.1:8080/ws",
    "Endpoint replying 'Recebido: <msg>' (wss:// for TLS handshakes)",
);
const CONNECT_COUNT: Flag = Flag::count("count", "N", "1000", "Connections in all");
const CONNECT: Command = Command {
    name: "bench connect",
    about: "Open N connections, each a full handshake and one reply: connections/s and server CPU each.",
    flags: &[&CONNECT_URL, &CONNS, &CONNECT_COUNT, &CA, &PID],
};
const IDLE: Command = Command {
    name: "bench idle",
    about: "Open N idle connections and read the server's RSS, threads and CPU from /proc.",
    flags: &[&IDLE_URL, &IDLE_CONNS, &PID, &HOLD, &CA],
};

/// Every bench mode, in the order `papo --help` lists them.
pub const COMMANDS: &[&Command] = &[
    &WS, &GRPC, &TCP, &TCP_ECHO, &FANOUT, &RESUME, &CONNECT, &IDLE,
];

/// A bench mode with its settings, resolved from its flags.
pub enum Mode {
    Ws(WsLoad),
    Grpc(GrpcLoad),
    Tcp(TcpLoad),
    TcpEchoServer(TcpEchoServer),
    Fanout(Fanout),
    Resume(Resume),
    Connect(ConnectLoad),
    Idle(Idle),
}

impl Mode {
    /// The mode `command` names (one of [`COMMANDS`]), from its flag values.
    pub fn from_values(command: &Command, v: &Values) -> Result<Mode, CliError> {
        Ok(match command.name {
            "bench ws" => Mode::Ws(WsLoad {
                url: v.string(&WS_URL)?,
                conns: v.parsed(&CONNS)?,
                msgs: v.parsed(&MSGS)?,
                size: v.size(&SIZE)?,
                inflight: v.parsed(&INFLIGHT)?,
                ca: v.optional(&CA)?.map(PathBuf::from),
            }),
            "bench grpc" => Mode::Grpc(GrpcLoad {
                addr: v.string(&GRPC_ADDR)?,
                conc: v.parsed(&CONC)?,
                reqs: v.parsed(&REQS)?,
                size: v.size(&TEXT_SIZE)?,
                channels: v.parsed(&CHANNELS)?,
                tls: ClientTls {
                    grpc: v.switch(&TLS)?,
                    ca: v.optional(&CA)?.map(PathBuf::from),
                    identity: None,
                },
            }),
            "bench tcp" => Mode::Tcp(TcpLoad {
                addr: v.string(&TCP_ADDR)?,
                conns: v.parsed(&CONNS)?,
                msgs: v.parsed(&MSGS)?,
                size: v.size(&SIZE)?,
            }),
            "bench tcp-echo-server" => Mode::TcpEchoServer(TcpEchoServer {
                addr: v.string(&LISTEN_ADDR)?,
            }),
            "bench fanout" => Mode::Fanout(Fanout {
                url: v.string(&CHAT_URL)?,
                second_url: v.optional(&SECOND_URL)?,
                members: v.parsed(&MEMBERS)?,
                msgs: v.parsed(&FANOUT_MSGS)?,
                interval: v.duration(&FANOUT_INTERVAL)?,
            }),
            "bench resume" => Mode::Resume(Resume {
                url: v.string(&CHAT_URL)?,
                msgs: v.parsed(&RESUME_MSGS)?,
                rounds: v.parsed(&ROUNDS)?,
            }),
            "bench connect" => Mode::Connect(ConnectLoad {
                url: v.string(&CONNECT_URL)?,
                conns: v.parsed(&CONNS)?,
                count: v.parsed(&CONNECT_COUNT)?,
                ca: v.optional(&CA)?.map(PathBuf::from),
                pid: v.parsed(&PID)?,
            }),
            "bench idle" => Mode::Idle(Idle {
                url: v.string(&IDLE_URL)?,
                conns: v.parsed(&IDLE_CONNS)?,
                pid: v.parsed(&PID)?,
                hold: v.duration(&HOLD)?,
                ca: v.optional(&CA)?.map(PathBuf::from),
            }),
            other => return Err(CliError::Usage(format!("unknown command '{other}'"))),
        })
    }

    /// Runs the mode and writes its report to `out`; fails when it could not
    /// run, or when any reply was wrong or missing.
    pub fn run(self, out: &mut impl Write) -> Result<(), String> {
        let (text, errors) = match self {
            Mode::Ws(load) => load.run()?.render(),
            Mode::Grpc(load) => load.run()?.render(),
            Mode::Tcp(load) => load.run()?.render(),
            Mode::TcpEchoServer(server) => (server.run().map(|()| String::new())?, 0),
            Mode::Fanout(fanout) => fanout.run()?.render(),
            Mode::Resume(resume) => resume.run()?.render(),
            Mode::Connect(load) => load.run()?.render(),
            Mode::Idle(idle) => (idle.run()?, 0),
        };
        out.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
        match errors {
            0 => Ok(()),
            n => Err(format!("{n} replies were wrong or missing")),
        }
    }
}

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
    /// The server's CPU over the run, when its pid was given.
    pub server_cpu: Option<Duration>,
}

impl Report {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A table for people and one JSON line for programs, and the replies
    /// found wrong or missing.
    pub fn render(mut self) -> (String, u64) {
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
        let server_cpu = self.server_cpu.map_or(String::new(), |cpu| {
            let per_op = cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64;
            let _ = writeln!(
                out,
                "server cpu  {:.2} s = {per_op:.0} us per op",
                cpu.as_secs_f64()
            );
            format!(
                ",\"server_cpu_s\":{:.3},\"server_cpu_us_per_op\":{per_op:.1}",
                cpu.as_secs_f64()
            )
        });
        let _ = writeln!(
            out,
            "{{\"mode\":\"{}\",\"target\":\"{}\",\"conns\":{},\"ops\":{},\"errors\":{},\"seconds\":{:.3},\
             \"ops_per_sec\":{:.1},\"p50_us\":{p50:.1},\"p90_us\":{p90:.1},\"p99_us\":{p99:.1},\"max_us\":{max:.1},\
             \"client_cpu_s\":{:.3}{server_cpu}}}",
            self.mode,
            self.target.replace('"', "'"),
            self.conns,
            self.ops,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.ops_per_sec(),
            self.client_cpu.as_secs_f64()
        );
        (out, self.errors)
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
    Duration::from_millis(ticks * 1000 / papo::sys::clock_ticks_per_second())
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
                .stack_size(CLIENT_STACK)
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
        server_cpu: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_resolves_from_its_defaults() {
        for command in COMMANDS {
            let values = papo::config::parse(command, &[], |_| None).unwrap();
            assert!(
                Mode::from_values(command, &values).is_ok(),
                "{}",
                command.name
            );
        }
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
