//! Request-reply load: `/ws`-style WebSocket endpoints, gRPC `SendMessage`,
//! and the same ping-pong over raw TCP against a minimal echo server (the
//! floor no WebSocket or gRPC server can beat on the same machine).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use grpcio::{CallOption, ChannelBuilder, EnvBuilder};
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
}

impl WsLoad {
    pub fn run(self) -> Result<Report, String> {
        let WsLoad {
            url,
            conns,
            msgs,
            size,
            inflight,
        } = self;
        let payload = "x".repeat(size);
        let expected = papo::chat::ws_reply_text(&payload);
        let target = url.clone();
        let inflight = inflight.max(1);
        run_workers("ws", target, conns, move |i, start_line| {
            let connected = LeanWs::connect(&url, payload.as_bytes(), i as u64);
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

/// `bench grpc`: unary `SendMessage`, `conc` callers over `channels` channels.
pub struct GrpcLoad {
    pub addr: String,
    /// Concurrent callers.
    pub conc: usize,
    /// Requests in all.
    pub reqs: usize,
    pub size: usize,
    pub channels: usize,
}

impl GrpcLoad {
    pub fn run(self) -> Result<Report, String> {
        let GrpcLoad {
            addr,
            conc,
            reqs,
            size,
            channels,
        } = self;
        let env = Arc::new(EnvBuilder::new().cq_count(channels.clamp(1, 4)).build());
        let clients: Vec<ChatServiceClient> = (0..channels.max(1))
            .map(|i| ChatServiceClient::new(distinct_channel(&env, i).connect(&addr)))
            .collect();
        let clients = Arc::new(clients);
        let text = "x".repeat(size);
        let expected = papo::chat::grpc_reply(&text);
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
