//! Request-reply load: `/ws`-style WebSocket endpoints, gRPC `SendMessage`,
//! and the same ping-pong over raw TCP against a minimal echo server (the
//! floor no WebSocket or gRPC server can beat on the same machine).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use grpcio::{CallOption, ChannelBuilder, EnvBuilder};
use papo::client::{grpc_tls, ClientTls};
use papo::proto::chat::Message as ChatMessage;
use papo::proto::chat_grpc::ChatServiceClient;

use super::lean_ws::LeanWs;
use super::{run_workers, Report, Samples};

/// Deadline of each bench gRPC call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Stack of each echo-server connection thread.
const ECHO_STACK: usize = 64 << 10;

/// `bench ws`: ping-pong (or `inflight` deep) against a `/ws`-style endpoint.
pub struct WsLoad {
    pub url: String,
    pub conns: usize,
    /// Messages per connection.
    pub msgs: usize,
    pub size: usize,
    /// Messages in flight per connection (1: ping-pong).
    pub inflight: usize,
    /// The CA to trust for `wss://` (default: the system's).
    pub ca: Option<PathBuf>,
}

impl WsLoad {
    pub fn run(self) -> Result<Report, String> {
        let WsLoad {
            url,
            conns,
            msgs,
            size,
            inflight,
            ca,
        } = self;
        let payload = "x".repeat(size);
        let expected = papo::ws::seed_reply(&payload);
        let target = url.clone();
        let inflight = inflight.max(1);
        run_workers("ws", target, conns, move |i, start_line| {
            let connected = LeanWs::connect(&url, payload.as_bytes(), i as u64, ca.as_deref());
            start_line.wait();
            let mut ws = connected?;
            let mut samples = Samples::default();
            let mut errors = 0;
            let mut sent_at = VecDeque::with_capacity(inflight);
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
}

/// `bench connect`: new connections as fast as `conns` threads open them,
/// each a full handshake (TCP, TLS for `wss://`, the upgrade) and one reply,
/// then a close: what a connection costs to start.
pub struct ConnectLoad {
    pub url: String,
    pub conns: usize,
    /// Connections in all.
    pub count: usize,
    pub ca: Option<PathBuf>,
    /// The server's process id, for its CPU per connection (0: not measured).
    pub pid: u32,
}

impl ConnectLoad {
    pub fn run(self) -> Result<Report, String> {
        let ConnectLoad {
            url,
            conns,
            count,
            ca,
            pid,
        } = self;
        let expected = papo::ws::seed_reply("x");
        let per_thread = count.div_ceil(conns.max(1));
        let server_cpu = || (pid != 0).then(|| super::cpu_of(&pid.to_string()));
        let before = server_cpu();
        let mut report = run_workers("connect", url.clone(), conns, move |i, start_line| {
            start_line.wait();
            let mut samples = Samples::default();
            let mut errors = 0;
            for n in 0..per_thread {
                let at = Instant::now();
                let seed = (i * per_thread + n) as u64;
                let mut ws = LeanWs::connect(&url, b"x", seed, ca.as_deref())?;
                ws.send().map_err(|e| format!("send: {e}"))?;
                match ws.receive(expected.as_bytes())? {
                    true => samples.record(at.elapsed()),
                    false => errors += 1,
                }
                ws.close();
            }
            Ok((samples, errors))
        })?;
        report.server_cpu = before.zip(server_cpu()).map(|(b, a)| a.saturating_sub(b));
        Ok(report)
    }
}

/// `bench grpc`: unary `SendMessage`, `conc` callers over `channels` channels.
pub struct GrpcLoad {
    pub addr: String,
    /// Concurrent callers.
    pub conc: usize,
    /// Requests in all.
    pub reqs: usize,
    pub size: usize,
    pub channels: usize,
    pub tls: ClientTls,
}

impl GrpcLoad {
    pub fn run(self) -> Result<Report, String> {
        let GrpcLoad {
            addr,
            conc,
            reqs,
            size,
            channels,
            tls,
        } = self;
        let env = Arc::new(EnvBuilder::new().cq_count(channels.clamp(1, 4)).build());
        let clients = (0..channels.max(1))
            .map(|i| {
                let builder = grpc_tls(distinct_channel(&env, i), &tls)?;
                Ok(ChatServiceClient::new(builder.connect(&addr)))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let clients = Arc::new(clients);
        let text = "x".repeat(size);
        let expected = papo::grpc::seed_reply(&text);
        let per_caller = reqs.div_ceil(conc.max(1));
        run_workers("grpc", addr.clone(), conc, move |i, start_line| {
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
                let call = CallOption::default().timeout(CALL_TIMEOUT);
                match client.send_message_opt(&request, call) {
                    Ok(r) if r.reply == expected => samples.record(at.elapsed()),
                    Ok(_) => errors += 1,
                    Err(e) => {
                        let why = papo::client::describe(&e);
                        return Err(format!("SendMessage to {addr}: {why}"));
                    }
                }
            }
            Ok((samples, errors))
        })
    }
}

/// A channel builder no other channel shares a connection with: C-core
/// shares one connection among channels that are configured alike.
pub fn distinct_channel(env: &Arc<grpcio::Environment>, i: usize) -> ChannelBuilder {
    ChannelBuilder::new(Arc::clone(env)).raw_cfg_int(
        std::ffi::CString::from(c"papo.bench.channel"),
        i32::try_from(i).unwrap_or(i32::MAX),
    )
}

/// `bench tcp`: the floor: the same ping-pong over raw TCP to an echo server.
pub struct TcpLoad {
    pub addr: String,
    pub conns: usize,
    /// Messages per connection.
    pub msgs: usize,
    pub size: usize,
}

impl TcpLoad {
    pub fn run(self) -> Result<Report, String> {
        let TcpLoad {
            addr,
            conns,
            msgs,
            size,
        } = self;
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
}

/// `bench tcp-echo-server`: a minimal thread-per-connection TCP echo.
pub struct TcpEchoServer {
    pub addr: String,
}

impl TcpEchoServer {
    /// Serves until the process ends.
    pub fn run(self) -> Result<(), String> {
        let addr = &self.addr;
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        log::info!("tcp-echo listening on {bound}");
        for conn in listener.incoming() {
            let Ok(mut stream) = conn else { continue };
            let _ = stream.set_nodelay(true);
            let _ = thread::Builder::new()
                .stack_size(ECHO_STACK)
                .spawn(move || {
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
}
