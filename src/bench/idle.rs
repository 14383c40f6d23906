//! `bench idle`: what an idle connection costs a server, read from its
//! `/proc` entries while this process holds the connections open.

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use grpcio::EnvBuilder;
use papo::client::{ws_connect, ClientTls};
use papo::executor::block_on;

use super::cpu_of;
use super::load::distinct_channel;

/// Time a gRPC channel has to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the server gets to settle after the last connection opened.
const SETTLE: Duration = Duration::from_secs(1);
/// Stack of each thread that holds a WebSocket open.
const READER_STACK: usize = 64 << 10;

/// The server's cost per idle connection: WebSocket (`ws://`), gRPC
/// (`grpc://`, one channel and so one HTTP/2 connection each) or raw TCP
/// (`tcp://`, for the floor's echo server).
pub struct Idle {
    pub url: String,
    pub conns: usize,
    /// The server's process id.
    pub pid: u32,
    /// How long to hold the connections idle while measuring CPU.
    pub hold: Duration,
    /// The CA to trust for `wss://` (default: the system's).
    pub ca: Option<PathBuf>,
}

impl Idle {
    /// Opens the connections, measures, and returns the report.
    pub fn run(self) -> Result<String, String> {
        let Idle {
            url,
            conns,
            pid,
            hold,
            ca,
        } = self;
        let tls = ClientTls {
            ca,
            ..ClientTls::default()
        };
        let url = url.as_str();
        // One descriptor per connection, as many as the server holds.
        let _ = papo::sys::raise_fd_limit();
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
                let stream = TcpStream::connect(addr)
                    .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
                held.push(Box::new(stream));
            }
        } else if let Some(addr) = url.strip_prefix("grpc://") {
            let env = Arc::new(EnvBuilder::new().cq_count(1).build());
            for i in 0..conns {
                let channel = distinct_channel(&env, i).connect(addr);
                if !block_on(channel.wait_for_connected(CONNECT_TIMEOUT)) {
                    return Err(format!("cannot connect to {addr}"));
                }
                held.push(Box::new(channel));
            }
            held.push(Box::new(env));
        } else {
            for _ in 0..conns {
                let mut ws = ws_connect(url, &tls)?;
                // Idle like a browser tab: blocked in read, answering keepalive
                // pings; the connections close when this process ends.
                thread::Builder::new()
                    .stack_size(READER_STACK)
                    .spawn(move || while ws.read().is_ok() {})
                    .map_err(|e| format!("cannot start a reader thread: {e}"))?;
            }
        }
        thread::sleep(SETTLE);
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
}
