//! Counters for `GET /metrics`, in the Prometheus text format.
//!
//! Every number is a counter the servers bump where the event happens (or a
//! gauge kept exactly), never an estimate. Relaxed atomics: each counter is
//! independent and only ever read for display.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Why a WebSocket connection ended, as counted in
/// `papo_ws_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Close handshake completed, or the peer went away cleanly.
    Normal,
    /// Answered with an HTTP error instead of an upgrade.
    Rejected,
    HandshakeTimeout,
    /// Sent a frame that broke RFC 6455, bad UTF-8 or an oversized message.
    ProtocolError,
    /// Did not answer a ping in time.
    PongTimeout,
    /// Stopped accepting data, or the socket failed.
    IoError,
    /// Closed by the server shutting down (1001).
    Shutdown,
    /// Closed because the server was at a memory bound (1013).
    Overloaded,
}

impl CloseReason {
    const ALL: [CloseReason; 8] = [
        CloseReason::Normal,
        CloseReason::Rejected,
        CloseReason::HandshakeTimeout,
        CloseReason::ProtocolError,
        CloseReason::PongTimeout,
        CloseReason::IoError,
        CloseReason::Shutdown,
        CloseReason::Overloaded,
    ];

    fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::Rejected => "rejected",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::PongTimeout => "pong_timeout",
            CloseReason::IoError => "io_error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Overloaded => "overloaded",
        }
    }
}

/// Message and byte counters of one protocol, bumped by every connection
/// thread on every message. One shared counter would bounce its cache line
/// between cores on each bump (measured: the hottest instructions of the
/// message loop); so each CPU bumps its own stripe, and reading sums them.
#[derive(Default)]
pub struct Traffic {
    stripes: [Stripe; STRIPES],
}

/// Stripes per counter: CPUs beyond this share them.
const STRIPES: usize = 16;

/// One CPU's counters, alone on their cache lines.
#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Traffic {
    pub fn received(&self, bytes: usize) {
        let stripe = self.stripe();
        stripe.messages_in.fetch_add(1, Ordering::Relaxed);
        stripe.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn sent(&self, bytes: usize) {
        let stripe = self.stripe();
        stripe.messages_out.fetch_add(1, Ordering::Relaxed);
        stripe.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The stripe of the CPU this thread runs on (a thread moved meanwhile
    /// only shares a stripe for a moment: the counts stay exact).
    fn stripe(&self) -> &Stripe {
        &self.stripes[crate::sys::current_cpu() % STRIPES]
    }

    /// (messages in, messages out, bytes in, bytes out), summed.
    fn totals(&self) -> [u64; 4] {
        self.stripes.iter().fold([0; 4], |t, s| {
            [
                t[0] + get(&s.messages_in),
                t[1] + get(&s.messages_out),
                t[2] + get(&s.bytes_in),
                t[3] + get(&s.bytes_out),
            ]
        })
    }
}

/// gRPC status codes counted per call (the rest fall under `other`).
const GRPC_CODES: [(&str, i32); 6] = [
    ("OK", 0),
    ("CANCELLED", 1),
    ("INVALID_ARGUMENT", 3),
    ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5),
    ("RESOURCE_EXHAUSTED", 8),
];

/// All of papo's counters; one instance is shared by both servers.
#[derive(Default)]
pub struct Metrics {
    pub ws_active: AtomicU64,
    pub ws_accepted: AtomicU64,
    pub ws_refused: AtomicU64,
    ws_closed: [AtomicU64; CloseReason::ALL.len()],
    pub ws: Traffic,
    pub grpc: Traffic,
    /// Chat messages refused by the rate limit, per protocol.
    pub ws_rate_limited: AtomicU64,
    pub grpc_rate_limited: AtomicU64,
    grpc_calls: [AtomicU64; GRPC_CODES.len() + 1],
    pub grpc_active: AtomicU64,
    /// 1 while the chat engine takes messages (see [`Metrics::new`]).
    pub engine_up: AtomicU64,
    pub grpc_refused: AtomicU64,
    tls_failed: [AtomicU64; TLS_FAILURES.len()],
    auth_failed: [AtomicU64; AUTH_FAILURES.len()],
    /// Joins refused by the join rate limit: by address, by identity.
    joins_refused: [AtomicU64; 2],
}

/// Why a TLS handshake on the WebSocket port failed, as labelled.
const TLS_FAILURES: [&str; 5] = ["timeout", "not_tls", "incompatible", "alert", "other"];
/// Why a chat token was refused, as `papo_auth_failures_total` labels it.
const AUTH_FAILURES: [&str; 7] = [
    "missing",
    "malformed",
    "algorithm",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "forbidden",
];

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            engine_up: AtomicU64::new(1),
            ..Metrics::default()
        }
    }

    pub fn ws_closed(&self, reason: CloseReason) {
        self.ws_closed[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed TLS handshake, by one of [`TLS_FAILURES`].
    pub fn tls_handshake_failed(&self, reason: &str) {
        let slot = TLS_FAILURES
            .iter()
            .position(|&r| r == reason)
            .unwrap_or(TLS_FAILURES.len() - 1);
        self.tls_failed[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a chat token refused, by one of [`AUTH_FAILURES`].
    pub fn auth_failed(&self, reason: &str) {
        if let Some(slot) = AUTH_FAILURES.iter().position(|&r| r == reason) {
            self.auth_failed[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a join refused by its address's limit (`by_identity` false)
    /// or its identity's.
    pub fn join_refused(&self, by_identity: bool) {
        self.joins_refused[usize::from(by_identity)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a gRPC call that ended with `code` (a `grpc-status` number).
    pub fn grpc_call(&self, code: i32) {
        let slot = GRPC_CODES
            .iter()
            .position(|&(_, c)| c == code)
            .unwrap_or(GRPC_CODES.len());
        self.grpc_calls[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: u64| [(String::new(), v)];
        metric(
            "papo_ws_connections_active",
            "gauge",
            "WebSocket connections open now.",
            &one(get(&self.ws_active)),
        );
        metric(
            "papo_ws_connections_accepted_total",
            "counter",
            "TCP connections accepted on the WebSocket port.",
            &one(get(&self.ws_accepted)),
        );
        metric(
            "papo_ws_connections_refused_total",
            "counter",
            "Connections answered 503 at the connection limit.",
            &one(get(&self.ws_refused)),
        );
        let closed: Vec<_> = CloseReason::ALL
            .iter()
            .map(|r| {
                (
                    format!("{{reason=\"{}\"}}", r.label()),
                    get(&self.ws_closed[*r as usize]),
                )
            })
            .collect();
        metric(
            "papo_ws_connections_closed_total",
            "counter",
            "Connections ended, by reason.",
            &closed,
        );
        let mut messages = Vec::new();
        let mut bytes = Vec::new();
        for (proto, t) in [("ws", &self.ws), ("grpc", &self.grpc)] {
            let label = |dir: &str| format!("{{protocol=\"{proto}\",direction=\"{dir}\"}}");
            let [messages_in, messages_out, bytes_in, bytes_out] = t.totals();
            messages.push((label("in"), messages_in));
            messages.push((label("out"), messages_out));
            bytes.push((label("in"), bytes_in));
            bytes.push((label("out"), bytes_out));
        }
        metric(
            "papo_messages_total",
            "counter",
            "Chat messages by protocol and direction.",
            &messages,
        );
        metric(
            "papo_message_bytes_total",
            "counter",
            "Bytes of chat messages as their protocol carries them (a WebSocket frame's payload, a gRPC message), by protocol and direction.",
            &bytes,
        );
        metric(
            "papo_rate_limited_total",
            "counter",
            "Chat messages refused by the rate limit, by protocol.",
            &[
                ("{protocol=\"ws\"}".into(), get(&self.ws_rate_limited)),
                ("{protocol=\"grpc\"}".into(), get(&self.grpc_rate_limited)),
            ],
        );
        metric(
            "papo_engine_up",
            "gauge",
            "1 while the chat engine (in memory, or Redis) takes messages, 0 while it cannot.",
            &one(get(&self.engine_up)),
        );
        metric(
            "papo_grpc_connections_active",
            "gauge",
            "gRPC client connections open now.",
            &one(get(&self.grpc_active)),
        );
        metric(
            "papo_grpc_connections_refused_total",
            "counter",
            "gRPC connections closed at once at the connection limit.",
            &one(get(&self.grpc_refused)),
        );
        let failed: Vec<_> = TLS_FAILURES
            .iter()
            .zip(&self.tls_failed)
            .map(|(reason, c)| (format!("{{reason=\"{reason}\"}}"), get(c)))
            .collect();
        metric(
            "papo_tls_handshakes_failed_total",
            "counter",
            "TLS handshakes on the WebSocket port that failed, by reason.",
            &failed,
        );
        let refused: Vec<_> = AUTH_FAILURES
            .iter()
            .zip(&self.auth_failed)
            .map(|(reason, c)| (format!("{{reason=\"{reason}\"}}"), get(c)))
            .collect();
        metric(
            "papo_auth_failures_total",
            "counter",
            "Chat connections and calls refused for their token, by reason, both protocols.",
            &refused,
        );
        let joins: Vec<_> = ["address", "identity"]
            .iter()
            .zip(&self.joins_refused)
            .map(|(by, c)| (format!("{{by=\"{by}\"}}"), get(c)))
            .collect();
        metric(
            "papo_joins_refused_total",
            "counter",
            "Chat joins refused by the join rate limit, by what was over it, both protocols.",
            &joins,
        );
        let calls: Vec<_> = GRPC_CODES
            .iter()
            .map(|(name, _)| *name)
            .chain(["other"])
            .zip(&self.grpc_calls)
            .map(|(code, c)| (format!("{{code=\"{code}\"}}"), get(c)))
            .collect();
        metric(
            "papo_grpc_calls_total",
            "counter",
            "gRPC calls handled by papo, by final status.",
            &calls,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_in_prometheus_text() {
        let m = Metrics::new();
        m.ws_accepted.fetch_add(3, Ordering::Relaxed);
        m.ws_closed(CloseReason::PongTimeout);
        m.ws.received(10);
        m.grpc_call(0);
        m.grpc_call(8);
        m.grpc_call(13);
        let text = m.render();
        for line in [
            "papo_ws_connections_accepted_total 3",
            "papo_ws_connections_closed_total{reason=\"pong_timeout\"} 1",
            "papo_ws_connections_closed_total{reason=\"normal\"} 0",
            "papo_messages_total{protocol=\"ws\",direction=\"in\"} 1",
            "papo_message_bytes_total{protocol=\"ws\",direction=\"in\"} 10",
            "papo_grpc_calls_total{code=\"OK\"} 1",
            "papo_grpc_calls_total{code=\"RESOURCE_EXHAUSTED\"} 1",
            "papo_grpc_calls_total{code=\"other\"} 1",
            "# TYPE papo_ws_connections_active gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        // Each metric is declared once, as the format requires.
        let types: Vec<_> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(types.len(), unique.len());
    }
}
