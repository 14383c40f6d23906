//! papo's commands and flags: each flag's name, default and help, written
//! once. What they resolve to is `resolve`'s.

use super::{Command, Flag};
use crate::chat::DEFAULT_ROOM;

// `papo serve`

pub const WS_ADDR: Flag = Flag::text(
    "ws-addr",
    "ADDR",
    "127.0.0.1:8080",
    "WebSocket listen address (0.0.0.0:8080: all interfaces; port 0 picks one)",
);
pub const GRPC_ADDR: Flag = Flag::text(
    "grpc-addr",
    "ADDR",
    "127.0.0.1:50051",
    "gRPC listen address (0.0.0.0:50051: all interfaces; port 0 picks one)",
);
pub const NO_WS: Flag = Flag::switch("no-ws", "Do not run the WebSocket server");
pub const NO_GRPC: Flag = Flag::switch("no-grpc", "Do not run the gRPC server");
pub const MAX_CONNECTIONS: Flag = Flag::count(
    "max-connections",
    "N",
    "10000",
    "WebSocket connections served at once; one more is answered 503",
);
pub const MAX_MESSAGE_SIZE: Flag = Flag::size(
    "max-message-size",
    "SIZE",
    "4MiB",
    "Largest message, both protocols (WebSocket close 1009, gRPC RESOURCE_EXHAUSTED)",
);
pub const HANDSHAKE_TIMEOUT: Flag = Flag::duration(
    "handshake-timeout",
    "5s",
    "Time a new connection has to send its request head (WebSocket), or its TLS handshake and HTTP/2 preface and settings (gRPC)",
);
pub const PING_INTERVAL: Flag = Flag::duration(
    "ping-interval",
    "30s",
    "Ping a WebSocket peer after this long without hearing from it (0: never)",
);
pub const PONG_TIMEOUT: Flag = Flag::duration(
    "pong-timeout",
    "10s",
    "Drop a WebSocket peer that stays silent this long after a ping",
);
pub const WRITE_TIMEOUT: Flag = Flag::duration(
    "write-timeout",
    "10s",
    "Drop a WebSocket peer or gRPC stream that accepts no data for this long (0: never)",
);
pub const STACK_SIZE: Flag = Flag::size(
    "stack-size",
    "SIZE",
    "64KiB",
    "Stack size of each WebSocket connection thread",
);
pub const INBOUND_BUDGET: Flag = Flag::size(
    "inbound-budget",
    "SIZE",
    "256MiB",
    "Bytes all WebSocket peers together may hold in unfinished messages; past it, 1013 (0: no limit)",
);
pub const SEND_QUEUE: Flag = Flag::count(
    "send-queue",
    "N",
    "256",
    "Messages queued for a slow peer or stream before it is dropped (1008 / RESOURCE_EXHAUSTED)",
);
pub const HISTORY: Flag = Flag::count(
    "history",
    "N",
    "1000",
    "Messages each room keeps for members who resume (0: none; rooms then end with their last member)",
);
pub const HISTORY_TTL: Flag = Flag::duration(
    "history-ttl",
    "1h",
    "How long a room without members keeps its log after its last message",
);
pub const HISTORY_BUDGET: Flag = Flag::size(
    "history-budget",
    "SIZE",
    "64MiB",
    "Bytes all rooms' logs together may hold; past it a room forgets its oldest messages",
);
pub const MAX_ROOMS: Flag = Flag::count(
    "max-rooms",
    "N",
    "100000",
    "Rooms held at once (with members, or keeping a log); a new room past it is refused",
);
pub const JOIN_RATE_LIMIT: Flag = Flag::count(
    "join-rate-limit",
    "N",
    "10",
    "With tokens: chat joins per second by one token's sub (0: no limit); past it, HTTP 429 / RESOURCE_EXHAUSTED",
);
pub const JOIN_BURST: Flag = Flag::count(
    "join-burst",
    "N",
    "20",
    "Chat joins one sub may make at once before --join-rate-limit applies",
);
pub const ADDRESS_JOIN_RATE_LIMIT: Flag = Flag::count(
    "address-join-rate-limit",
    "N",
    "100",
    "Chat joins per second from one client address (0: no limit); past it, HTTP 429 / RESOURCE_EXHAUSTED",
);
pub const ADDRESS_JOIN_BURST: Flag = Flag::count(
    "address-join-burst",
    "N",
    "2000",
    "Chat joins one address may make at once before --address-join-rate-limit applies",
);
pub const REDIS: Flag = Flag::optional(
    "redis",
    "URL",
    "Share rooms with every instance pointed at this Redis: redis://[:PASSWORD@]HOST[:PORT][/DB], or the primary Sentinels name: redis+sentinel://[:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/MASTER[/DB] (default: rooms in memory)",
);
pub const PRESENCE_TTL: Flag = Flag::duration(
    "presence-ttl",
    "15s",
    "With --redis: how long a member's presence lasts unless its instance renews it (a dead instance's members leave then)",
);
pub const REDIS_PENDING: Flag = Flag::size(
    "redis-pending",
    "SIZE",
    "64MiB",
    "With --redis: bytes of messages waiting for Redis; past it, new ones are refused as unavailable",
);
pub const REDIS_MAX_REPLY: Flag = Flag::size(
    "redis-max-reply",
    "SIZE",
    "64MiB",
    "With --redis: the most memory one reply from Redis may take; past it the connection is made anew",
);
pub const REDIS_DURABILITY: Flag = Flag::text(
    "redis-durability",
    "LEVEL",
    "memory",
    "With --redis: when a message is acknowledged: memory (once Redis's primary has it) or replica (once --redis-replicas replicas have it too; else it is answered as not confirmed)",
);
pub const REDIS_REPLICAS: Flag = Flag::count(
    "redis-replicas",
    "N",
    "1",
    "With --redis-durability replica: replicas that must have a message before it is acknowledged",
);
pub const REDIS_WAIT_TIMEOUT: Flag = Flag::duration(
    "redis-wait-timeout",
    "1s",
    "With --redis-durability replica: how long to wait for the replicas before a message is answered as not confirmed",
);
pub const AUTH_SECRET_FILE: Flag = Flag::optional(
    "auth-secret-file",
    "FILE",
    "HMAC-SHA256 secret (at least 32 bytes) for HS256 tokens: chat then needs a signed token (see papo token)",
);
pub const AUTH_PUBLIC_KEY: Flag = Flag::optional(
    "auth-public-key",
    "FILE",
    "PEM Ed25519 public key for EdDSA tokens: chat then needs a signed token",
);
pub const AUTH_LEEWAY: Flag = Flag::duration(
    "auth-leeway",
    "5s",
    "How far a token's exp and nbf may be off, for clocks that disagree",
);
pub const RATE_LIMIT: Flag = Flag::count(
    "rate-limit",
    "N",
    "100",
    "Messages a chat member may send per second (0: no limit)",
);
pub const RATE_BURST: Flag = Flag::count(
    "rate-burst",
    "N",
    "200",
    "Messages a chat member (or SendMessage connection) may send at once before its limit applies",
);
pub const SEND_RATE_LIMIT: Flag = Flag::count(
    "send-rate-limit",
    "N",
    "0",
    "SendMessage calls a gRPC connection may make per second (0: no limit)",
);
pub const LISTEN_BACKLOG: Flag = Flag::count(
    "listen-backlog",
    "N",
    "4096",
    "Connections the kernel queues for each accept loop (WebSocket and gRPC)",
);
pub const ALLOWED_ORIGIN: Flag = Flag::list(
    "allowed-origin",
    "ORIGIN",
    "Browser origin allowed besides the server's own host ('*': any)",
);
pub const PUBLIC_HOST: Flag = Flag::list(
    "public-host",
    "NAME",
    "Host name this server is reached by: its pages are same-origin (IP literals and localhost always are)",
);
pub const GRPC_THREADS: Flag = Flag::count(
    "grpc-threads",
    "N",
    "0",
    "gRPC completion-queue threads (0: half the CPU cores, at least one)",
);
pub const GRPC_MAX_CONNECTIONS: Flag = Flag::count(
    "grpc-max-connections",
    "N",
    "1000",
    "gRPC client connections served at once; one more is closed at once",
);
pub const GRPC_MAX_STREAMS: Flag = Flag::count(
    "grpc-max-streams",
    "N",
    "100",
    "Concurrent gRPC calls per client connection",
);
pub const GRPC_MEMORY: Flag = Flag::size(
    "grpc-memory",
    "SIZE",
    "256MiB",
    "Memory gRPC C-core may take for all connections together (what calls send before papo reads it); past it, calls are cancelled RESOURCE_EXHAUSTED",
);
pub const GRPC_KEEPALIVE_TIME: Flag = Flag::duration(
    "grpc-keepalive-time",
    "60s",
    "Ping a gRPC client connection after this long without activity",
);
pub const GRPC_KEEPALIVE_TIMEOUT: Flag = Flag::duration(
    "grpc-keepalive-timeout",
    "20s",
    "Close a gRPC client connection whose ping is not answered in time",
);
pub const TLS_CERT: Flag = Flag::optional(
    "tls-cert",
    "FILE",
    "PEM certificate chain: both ports speak TLS only (wss://, https://, gRPC over TLS); with --tls-key",
);
pub const TLS_KEY: Flag = Flag::optional(
    "tls-key",
    "FILE",
    "PEM private key of --tls-cert (PKCS#8, RSA or SEC1)",
);
pub const GRPC_CLIENT_CA: Flag = Flag::optional(
    "grpc-client-ca",
    "FILE",
    "PEM CA: gRPC clients must present a certificate it signed (mutual TLS; needs --tls-cert)",
);
pub const DRAIN_TIMEOUT: Flag = Flag::duration(
    "drain-timeout",
    "5s",
    "On SIGINT/SIGTERM, how long in-flight gRPC calls and closing WebSocket peers may take",
);

pub const SERVE: Command = Command {
    name: "serve",
    about: "Run the WebSocket and gRPC servers in one process, each on its own threads.",
    flags: &[
        &WS_ADDR,
        &GRPC_ADDR,
        &NO_WS,
        &NO_GRPC,
        &MAX_CONNECTIONS,
        &MAX_MESSAGE_SIZE,
        &HANDSHAKE_TIMEOUT,
        &PING_INTERVAL,
        &PONG_TIMEOUT,
        &WRITE_TIMEOUT,
        &STACK_SIZE,
        &INBOUND_BUDGET,
        &SEND_QUEUE,
        &HISTORY,
        &HISTORY_TTL,
        &HISTORY_BUDGET,
        &MAX_ROOMS,
        &JOIN_RATE_LIMIT,
        &JOIN_BURST,
        &ADDRESS_JOIN_RATE_LIMIT,
        &ADDRESS_JOIN_BURST,
        &REDIS,
        &PRESENCE_TTL,
        &REDIS_PENDING,
        &REDIS_MAX_REPLY,
        &REDIS_DURABILITY,
        &REDIS_REPLICAS,
        &REDIS_WAIT_TIMEOUT,
        &AUTH_SECRET_FILE,
        &AUTH_PUBLIC_KEY,
        &AUTH_LEEWAY,
        &RATE_LIMIT,
        &RATE_BURST,
        &SEND_RATE_LIMIT,
        &LISTEN_BACKLOG,
        &ALLOWED_ORIGIN,
        &PUBLIC_HOST,
        &GRPC_THREADS,
        &GRPC_MAX_CONNECTIONS,
        &GRPC_MAX_STREAMS,
        &GRPC_MEMORY,
        &GRPC_KEEPALIVE_TIME,
        &GRPC_KEEPALIVE_TIMEOUT,
        &TLS_CERT,
        &TLS_KEY,
        &GRPC_CLIENT_CA,
        &DRAIN_TIMEOUT,
    ],
};

// The clients

pub const WS_CLIENT_URL: Flag = Flag::text("url", "URL", "ws://127.0.0.1:8080/ws", "Server URL");
pub const COUNT: Flag = Flag::count("count", "N", "5", "Messages to send");
pub const INTERVAL: Flag = Flag::duration("interval", "1s", "Pause between messages");

// TLS for the clients: wss:// URLs always, gRPC with --tls.
pub const CA: Flag = Flag::optional(
    "ca",
    "FILE",
    "PEM CA to trust for wss:// and --tls (default: the system's, or SSL_CERT_FILE)",
);
pub const TLS: Flag = Flag::switch("tls", "Speak TLS to the gRPC server");
pub const CLIENT_CERT: Flag = Flag::optional(
    "cert",
    "FILE",
    "PEM certificate to show a gRPC server that asks for one (mutual TLS), with --key",
);
pub const CLIENT_KEY: Flag = Flag::optional("key", "FILE", "PEM private key of --cert");

pub const WS_CLIENT: Command = Command {
    name: "ws-client",
    about: "The seed's WebSocket client: send 'Mensagem 1'..'Mensagem N', print each reply.",
    flags: &[&WS_CLIENT_URL, &COUNT, &INTERVAL, &CA],
};

pub const GRPC_SERVER: Flag = Flag::text("addr", "ADDR", "127.0.0.1:50051", "Server address");
pub const SENDER: Flag = Flag::text("sender", "NAME", "Alice", "Message sender");
pub const TEXT: Flag = Flag::text("text", "TEXT", "Olá, gRPC!", "Message text");
pub const ROOM_TOO: Flag = Flag::text(
    "room",
    "ROOM",
    DEFAULT_ROOM,
    "Chat room the message is also published to",
);
pub const TIMEOUT: Flag = Flag::duration("timeout", "5s", "Deadline of the call");

pub const GRPC_CLIENT: Command = Command {
    name: "grpc-client",
    about: "The seed's gRPC client: call ChatService.SendMessage once, print the reply.",
    flags: &[
        &GRPC_SERVER,
        &SENDER,
        &TEXT,
        &ROOM_TOO,
        &TIMEOUT,
        &TLS,
        &CA,
        &CLIENT_CERT,
        &CLIENT_KEY,
    ],
};

pub const ROOM: Flag = Flag::text("room", "ROOM", DEFAULT_ROOM, "Room to join");
pub const NAME: Flag = Flag::text("name", "NAME", "terminal", "Your name in the room");
pub const VIA: Flag = Flag::text(
    "via",
    "PROTOCOL",
    "grpc",
    "grpc (ChatService.Chat) or ws (/chat)",
);
pub const CHAT_GRPC_ADDR: Flag = Flag::text(
    "addr",
    "ADDR",
    "127.0.0.1:50051",
    "gRPC server address (--via grpc)",
);
pub const CHAT_URL: Flag = Flag::text(
    "url",
    "URL",
    "ws://127.0.0.1:8080/chat",
    "WebSocket chat URL (--via ws)",
);

pub const CHAT: Command = Command {
    name: "chat",
    about: "Join a chat room from the terminal: typed lines are sent, the room's messages printed.",
    flags: &[
        &ROOM,
        &NAME,
        &VIA,
        &CHAT_GRPC_ADDR,
        &CHAT_URL,
        &TLS,
        &CA,
        &CLIENT_CERT,
        &CLIENT_KEY,
    ],
};

pub const DEV_CERT_OUT: Flag = Flag::text("out", "DIR", "dev-cert", "Directory to write into");
pub const DEV_CERT_HOST: Flag = Flag::list(
    "host",
    "NAME",
    "Another name the certificate is for, besides localhost, 127.0.0.1 and ::1",
);

pub const TOKEN_SECRET_FILE: Flag = Flag::text(
    "secret-file",
    "FILE",
    "",
    "The HMAC-SHA256 secret papo serve's --auth-secret-file names",
);
pub const TOKEN_SUB: Flag = Flag::text("sub", "NAME", "", "The member's name");
pub const TOKEN_ROOMS: Flag = Flag::list(
    "rooms",
    "PATTERN",
    "Rooms it may join: names, or prefixes ending in * (default: every room)",
);
pub const TOKEN_TTL: Flag = Flag::duration("ttl", "1h", "How long the token is good for");
pub const TOKEN_READ_ONLY: Flag =
    Flag::switch("read-only", "It may listen, not speak (pub: false)");

pub const TOKEN: Command = Command {
    name: "token",
    about: "Print an HS256 token for a chat member, signed with the server's secret (for development and scripts).",
    flags: &[
        &TOKEN_SECRET_FILE,
        &TOKEN_SUB,
        &TOKEN_ROOMS,
        &TOKEN_TTL,
        &TOKEN_READ_ONLY,
    ],
};

pub const DEV_CERT: Command = Command {
    name: "dev-cert",
    about: "Write a throwaway CA and a certificate it signs (ca.pem, cert.pem, key.pem) for TLS on this machine.",
    flags: &[&DEV_CERT_OUT, &DEV_CERT_HOST],
};

/// The library's commands, in the order `papo --help` lists them.
pub const COMMANDS: &[&Command] = &[&SERVE, &WS_CLIENT, &GRPC_CLIENT, &CHAT, &TOKEN, &DEV_CERT];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_names_are_unique_within_a_command() {
        for cmd in COMMANDS {
            let mut names: Vec<_> = cmd.flags.iter().map(|f| f.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), cmd.flags.len(), "papo {}", cmd.name);
        }
    }
}
