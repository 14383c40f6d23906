//! Command-line and environment configuration.
//!
//! Every flag `--some-flag` has an environment twin `PAPO_SOME_FLAG`; a flag on
//! the command line wins over the environment, which wins over the default.
//! The parser is small and table-driven so that `--help` is generated from the
//! same table that parses, and can never drift from it.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::client::{ChatClientConfig, GrpcClientConfig, WsClientConfig};
use crate::grpc::GrpcConfig;
use crate::ws::WsConfig;

/// One flag of a subcommand.
pub struct Flag {
    pub name: &'static str,
    /// Placeholder for the value (`ADDR`, `SIZE`…); `None` makes it a switch.
    pub value: Option<&'static str>,
    pub default: Option<&'static str>,
    pub help: &'static str,
    /// May be given more than once; the values are joined with commas.
    pub repeat: bool,
}

impl Flag {
    /// A flag that takes a value, with its default.
    pub const fn value(
        name: &'static str,
        value: &'static str,
        default: &'static str,
        help: &'static str,
    ) -> Flag {
        Flag {
            name,
            value: Some(value),
            default: Some(default),
            help,
            repeat: false,
        }
    }

    /// An on/off flag, off by default.
    pub const fn switch(name: &'static str, help: &'static str) -> Flag {
        Flag {
            name,
            value: None,
            default: None,
            help,
            repeat: false,
        }
    }

    /// A repeatable flag collecting a comma-separated list, empty by default.
    pub const fn list(name: &'static str, value: &'static str, help: &'static str) -> Flag {
        Flag {
            name,
            value: Some(value),
            default: None,
            help,
            repeat: true,
        }
    }
}

/// A subcommand: its name, one-line summary and flags.
pub struct Command {
    pub name: &'static str,
    pub about: &'static str,
    pub flags: &'static [Flag],
}

/// Why parsing stopped: the user asked for help, or got something wrong.
#[derive(Debug, PartialEq)]
pub enum CliError {
    Help(String),
    Usage(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Help(text) | CliError::Usage(text) => f.write_str(text),
        }
    }
}

/// The environment variable twin of a flag: `ws-addr` -> `PAPO_WS_ADDR`.
pub fn env_name(flag: &str) -> String {
    format!("PAPO_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// Resolved flag values of one subcommand, as strings until asked for a type.
#[derive(Debug)]
pub struct Values {
    command: &'static str,
    values: HashMap<&'static str, String>,
}

impl Values {
    fn raw(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn invalid(&self, name: &str, value: &str, why: impl fmt::Display) -> CliError {
        CliError::Usage(format!(
            "invalid value '{value}' for --{name} ({}): {why}",
            env_name(name)
        ))
        .in_command(self.command)
    }

    /// A flag's value; flags with a default always have one.
    pub fn string(&self, name: &str) -> Option<String> {
        self.raw(name).map(str::to_owned)
    }

    pub fn switch(&self, name: &str) -> bool {
        self.raw(name).is_some()
    }

    /// A repeatable flag's values, split on commas, empty items dropped.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.raw(name)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn parsed<T: std::str::FromStr>(&self, name: &str) -> Result<T, CliError>
    where
        T::Err: fmt::Display,
    {
        let raw = self.raw(name).unwrap_or_default();
        raw.parse().map_err(|e| self.invalid(name, raw, e))
    }

    pub fn size(&self, name: &str) -> Result<usize, CliError> {
        let raw = self.raw(name).unwrap_or_default();
        parse_size(raw).map_err(|e| self.invalid(name, raw, e))
    }

    pub fn duration(&self, name: &str) -> Result<Duration, CliError> {
        let raw = self.raw(name).unwrap_or_default();
        parse_duration(raw).map_err(|e| self.invalid(name, raw, e))
    }
}

impl CliError {
    fn in_command(self, command: &str) -> CliError {
        match self {
            CliError::Usage(msg) => {
                CliError::Usage(format!("{msg}\nRun 'papo {command} --help' for usage."))
            }
            help => help,
        }
    }
}

/// Parses `args` (after the subcommand name) against `cmd`'s flags, filling
/// the gaps from the environment (`env`) and then from the defaults.
pub fn parse(
    cmd: &Command,
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Values, CliError> {
    let usage = |msg: String| CliError::Usage(msg).in_command(cmd.name);
    let mut values = HashMap::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "-h" || arg == "--help" {
            return Err(CliError::Help(help(cmd)));
        }
        let Some(body) = arg.strip_prefix("--") else {
            return Err(usage(format!("unexpected argument '{arg}'")));
        };
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (body, None),
        };
        let Some(flag) = cmd.flags.iter().find(|f| f.name == name) else {
            return Err(usage(format!("unknown flag '--{name}'")));
        };
        let value = match (flag.value, inline) {
            (None, None) => String::new(),
            (None, Some(_)) => return Err(usage(format!("--{name} takes no value"))),
            (Some(_), Some(value)) => value,
            (Some(_), None) => match rest.next() {
                Some(value) => value.clone(),
                None => return Err(usage(format!("--{name} needs a value"))),
            },
        };
        match values.get_mut(flag.name) {
            Some(list) if flag.repeat => {
                let list: &mut String = list;
                list.push(',');
                list.push_str(&value);
            }
            _ => {
                values.insert(flag.name, value);
            }
        }
    }
    for flag in cmd.flags {
        if values.contains_key(flag.name) {
            continue;
        }
        let var = env_name(flag.name);
        let from_env = env(&var).filter(|v| !v.is_empty());
        match (flag.value, from_env) {
            (None, Some(v)) => match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => {
                    values.insert(flag.name, String::new());
                }
                "0" | "false" | "no" | "off" => {}
                _ => return Err(usage(format!("{var}={v}: expected true or false"))),
            },
            (Some(_), Some(v)) => {
                values.insert(flag.name, v);
            }
            (_, None) => {
                if let Some(default) = flag.default {
                    values.insert(flag.name, default.to_owned());
                }
            }
        }
    }
    Ok(Values {
        command: cmd.name,
        values,
    })
}

/// The `--help` text of a subcommand, generated from its flag table.
pub fn help(cmd: &Command) -> String {
    let mut out = format!(
        "{}\n\nUsage: papo {} [FLAGS]\n\nFlags:\n",
        cmd.about, cmd.name
    );
    for flag in cmd.flags {
        let left = match flag.value {
            Some(v) => format!("--{} {v}", flag.name),
            None => format!("--{}", flag.name),
        };
        out.push_str(&format!("  {left:<28} {}\n", flag.help));
        let mut detail = format!("env {}", env_name(flag.name));
        if flag.repeat {
            detail.push_str(", repeatable, comma-separated in the env");
        }
        if let Some(default) = flag.default {
            detail.push_str(&format!(", default {default}"));
        }
        out.push_str(&format!("  {:<28} [{detail}]\n", ""));
    }
    out.push_str(&format!("  {:<28} Print this help\n", "-h, --help"));
    out
}

/// Parses a byte size: `4096`, `64KiB`, `4MiB`, `1GiB` (also `K`, `M`, `G`).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| "expected a size like 4096, 64KiB or 4MiB".to_owned())?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit '{other}' (use B, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| "size too large".to_owned())
}

/// Parses a duration: `250ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| "expected a duration like 500ms, 5s or 2m".to_owned())?;
    let millis = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        other => {
            return Err(format!(
                "unknown duration unit '{other}' (use ms, s, m or h)"
            ))
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| "duration too large".to_owned())
}

// ---------------------------------------------------------------------------
// The subcommands and their flags.

pub const SERVE: Command = Command {
    name: "serve",
    about: "Run the WebSocket and gRPC servers in one process, each on its own threads.",
    flags: &[
        Flag::value(
            "ws-addr",
            "ADDR",
            "127.0.0.1:8080",
            "WebSocket listen address (0.0.0.0:8080: all interfaces; port 0 picks one)",
        ),
        Flag::value(
            "grpc-addr",
            "ADDR",
            "127.0.0.1:50051",
            "gRPC listen address (0.0.0.0:50051: all interfaces; port 0 picks one)",
        ),
        Flag::switch("no-ws", "Do not run the WebSocket server"),
        Flag::switch("no-grpc", "Do not run the gRPC server"),
        Flag::value(
            "max-connections",
            "N",
            "10000",
            "WebSocket connections served at once; one more is answered 503",
        ),
        Flag::value(
            "max-message-size",
            "SIZE",
            "4MiB",
            "Largest message, both protocols (WebSocket close 1009, gRPC RESOURCE_EXHAUSTED)",
        ),
        Flag::value(
            "handshake-timeout",
            "DURATION",
            "5s",
            "Time a new WebSocket connection has to send its whole request head",
        ),
        Flag::value(
            "ping-interval",
            "DURATION",
            "30s",
            "Ping a WebSocket peer after this long without hearing from it",
        ),
        Flag::value(
            "pong-timeout",
            "DURATION",
            "10s",
            "Drop a WebSocket peer that stays silent this long after a ping",
        ),
        Flag::value(
            "write-timeout",
            "DURATION",
            "10s",
            "Drop a WebSocket peer that accepts no data for this long",
        ),
        Flag::value(
            "stack-size",
            "SIZE",
            "64KiB",
            "Stack size of each WebSocket connection thread",
        ),
        Flag::value(
            "send-queue",
            "N",
            "256",
            "Messages queued for a slow peer or stream before it is dropped (1008 / RESOURCE_EXHAUSTED)",
        ),
        Flag::value(
            "listen-backlog",
            "N",
            "4096",
            "Connections the kernel queues for the WebSocket accept loop",
        ),
        Flag::list(
            "allowed-origin",
            "ORIGIN",
            "Browser origin allowed besides the server's own host ('*': any)",
        ),
        Flag::value(
            "grpc-threads",
            "N",
            "0",
            "gRPC completion-queue threads (0: half the CPU cores, at least one)",
        ),
        Flag::value(
            "grpc-max-streams",
            "N",
            "100",
            "Concurrent gRPC calls per client connection",
        ),
        Flag::value(
            "grpc-keepalive-time",
            "DURATION",
            "60s",
            "Ping a gRPC client connection after this long without activity",
        ),
        Flag::value(
            "grpc-keepalive-timeout",
            "DURATION",
            "20s",
            "Close a gRPC client connection whose ping is not answered in time",
        ),
        Flag::value(
            "drain-timeout",
            "DURATION",
            "5s",
            "On SIGINT/SIGTERM, how long in-flight gRPC calls may take to finish",
        ),
    ],
};

pub const WS_CLIENT: Command = Command {
    name: "ws-client",
    about: "The seed's WebSocket client: send 'Mensagem 1'..'Mensagem N', print each reply.",
    flags: &[
        Flag::value("url", "URL", "ws://127.0.0.1:8080/ws", "Server URL"),
        Flag::value("count", "N", "5", "Messages to send"),
        Flag::value("interval", "DURATION", "1s", "Pause between messages"),
    ],
};

pub const GRPC_CLIENT: Command = Command {
    name: "grpc-client",
    about: "The seed's gRPC client: call ChatService.SendMessage once, print the reply.",
    flags: &[
        Flag::value("addr", "ADDR", "127.0.0.1:50051", "Server address"),
        Flag::value("sender", "NAME", "Alice", "Message sender"),
        Flag::value("text", "TEXT", "Olá, gRPC!", "Message text"),
        Flag::value(
            "room",
            "ROOM",
            "geral",
            "Chat room the message is also published to",
        ),
        Flag::value("timeout", "DURATION", "5s", "Deadline of the call"),
    ],
};

pub const CHAT: Command = Command {
    name: "chat",
    about: "Join a chat room from the terminal: typed lines are sent, the room's messages printed.",
    flags: &[
        Flag::value("room", "ROOM", "geral", "Room to join"),
        Flag::value("name", "NAME", "terminal", "Your name in the room"),
        Flag::value(
            "via",
            "PROTOCOL",
            "grpc",
            "grpc (ChatService.Chat) or ws (/chat)",
        ),
        Flag::value(
            "addr",
            "ADDR",
            "127.0.0.1:50051",
            "gRPC server address (--via grpc)",
        ),
        Flag::value(
            "url",
            "URL",
            "ws://127.0.0.1:8080/chat",
            "WebSocket chat URL (--via ws)",
        ),
    ],
};

pub const BENCH_WS: Command = Command {
    name: "bench ws",
    about: "Load a /ws-style endpoint: N connections x M messages, every reply checked.",
    flags: &[
        Flag::value(
            "url",
            "URL",
            "ws://127.0.0.1:8080/ws",
            "Endpoint replying 'Recebido: <msg>'",
        ),
        Flag::value("conns", "N", "1", "Connections, one thread each"),
        Flag::value("msgs", "M", "1000", "Messages per connection"),
        Flag::value("size", "BYTES", "32", "Message size"),
        Flag::value(
            "inflight",
            "P",
            "1",
            "Messages in flight per connection (1: ping-pong)",
        ),
    ],
};

pub const BENCH_GRPC: Command = Command {
    name: "bench grpc",
    about:
        "Load ChatService.SendMessage: C concurrent callers, R requests in all, replies checked.",
    flags: &[
        Flag::value("addr", "ADDR", "127.0.0.1:50051", "gRPC server"),
        Flag::value("conc", "C", "1", "Concurrent callers, one thread each"),
        Flag::value("reqs", "R", "1000", "Requests in all"),
        Flag::value("size", "BYTES", "32", "Text size"),
        Flag::value(
            "channels",
            "K",
            "1",
            "Channels (connections) the callers share",
        ),
    ],
};

pub const BENCH_TCP: Command = Command {
    name: "bench tcp",
    about: "The floor: the same ping-pong over raw TCP against 'papo bench tcp-echo-server'.",
    flags: &[
        Flag::value("addr", "ADDR", "127.0.0.1:9000", "TCP echo server"),
        Flag::value("conns", "N", "1", "Connections, one thread each"),
        Flag::value("msgs", "M", "1000", "Messages per connection"),
        Flag::value("size", "BYTES", "32", "Message size"),
    ],
};

pub const BENCH_TCP_ECHO: Command = Command {
    name: "bench tcp-echo-server",
    about: "A minimal std::net thread-per-connection TCP echo server (the floor).",
    flags: &[Flag::value(
        "addr",
        "ADDR",
        "127.0.0.1:9000",
        "Listen address (port 0 picks one)",
    )],
};

pub const BENCH_FANOUT: Command = Command {
    name: "bench fanout",
    about: "One sender, N WebSocket members in a room: latency from send to each receipt.",
    flags: &[
        Flag::value("url", "URL", "ws://127.0.0.1:8080/chat", "Chat endpoint"),
        Flag::value(
            "members",
            "N",
            "100",
            "Members in the room, one thread each",
        ),
        Flag::value("msgs", "M", "20", "Messages sent"),
        Flag::value("interval", "DURATION", "20ms", "Pause between messages"),
    ],
};

pub const BENCH_IDLE: Command = Command {
    name: "bench idle",
    about: "Open N idle connections and read the server's RSS, threads and CPU from /proc.",
    flags: &[
        Flag::value(
            "url",
            "URL",
            "ws://127.0.0.1:8080/ws",
            "ws://HOST:PORT/PATH (WebSocket), grpc://HOST:PORT (a gRPC channel each) or tcp://HOST:PORT",
        ),
        Flag::value("conns", "N", "1000", "Idle connections"),
        Flag::value("pid", "PID", "0", "The server's process id"),
        Flag::value(
            "hold",
            "DURATION",
            "5s",
            "How long to hold them idle while measuring CPU",
        ),
    ],
};

/// Every subcommand, in the order `papo --help` lists them.
pub const COMMANDS: &[&Command] = &[
    &SERVE,
    &WS_CLIENT,
    &GRPC_CLIENT,
    &CHAT,
    &BENCH_WS,
    &BENCH_GRPC,
    &BENCH_TCP,
    &BENCH_TCP_ECHO,
    &BENCH_FANOUT,
    &BENCH_IDLE,
];

/// `papo serve`, resolved.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub ws_addr: Option<String>,
    pub grpc_addr: Option<String>,
    pub ws: WsConfig,
    pub grpc: GrpcConfig,
    /// How long shutdown waits for in-flight gRPC calls and closing peers.
    pub drain_timeout: Duration,
}

impl ServeConfig {
    pub fn from_values(v: &Values) -> Result<ServeConfig, CliError> {
        let max_message_size = v.size("max-message-size")?;
        let max_connections = v.parsed("max-connections")?;
        let ws = WsConfig {
            max_connections,
            max_message_size,
            handshake_timeout: v.duration("handshake-timeout")?,
            ping_interval: v.duration("ping-interval")?,
            pong_timeout: v.duration("pong-timeout")?,
            write_timeout: v.duration("write-timeout")?,
            stack_size: v.size("stack-size")?,
            allowed_origins: v.list("allowed-origin"),
            listen_backlog: v.parsed("listen-backlog")?,
            send_queue: v.parsed("send-queue")?,
        };
        let mut grpc = GrpcConfig {
            max_message_size,
            max_streams: v.parsed("grpc-max-streams")?,
            keepalive_time: v.duration("grpc-keepalive-time")?,
            keepalive_timeout: v.duration("grpc-keepalive-timeout")?,
            send_queue: ws.send_queue,
            ..GrpcConfig::default()
        };
        match v.parsed::<usize>("grpc-threads")? {
            0 => {}
            n => grpc.threads = n,
        }
        let config = ServeConfig {
            ws_addr: (!v.switch("no-ws")).then(|| v.string("ws-addr")).flatten(),
            grpc_addr: (!v.switch("no-grpc"))
                .then(|| v.string("grpc-addr"))
                .flatten(),
            ws,
            grpc,
            drain_timeout: v.duration("drain-timeout")?,
        };
        if config.ws_addr.is_none() && config.grpc_addr.is_none() {
            return Err(CliError::Usage(
                "nothing to serve: both --no-ws and --no-grpc given".into(),
            )
            .in_command(SERVE.name));
        }
        Ok(config)
    }
}

pub fn ws_client_config(v: &Values) -> Result<WsClientConfig, CliError> {
    Ok(WsClientConfig {
        url: v.string("url").unwrap_or_default(),
        count: v.parsed("count")?,
        interval: v.duration("interval")?,
    })
}

pub fn chat_client_config(v: &Values) -> Result<ChatClientConfig, CliError> {
    let via = v.string("via").unwrap_or_default();
    if via != "grpc" && via != "ws" {
        return Err(
            CliError::Usage(format!("--via {via}: expected grpc or ws")).in_command(CHAT.name)
        );
    }
    Ok(ChatClientConfig {
        room: v.string("room").unwrap_or_default(),
        name: v.string("name").unwrap_or_default(),
        via,
        addr: v.string("addr").unwrap_or_default(),
        url: v.string("url").unwrap_or_default(),
    })
}

pub fn grpc_client_config(v: &Values) -> Result<GrpcClientConfig, CliError> {
    Ok(GrpcClientConfig {
        addr: v.string("addr").unwrap_or_default(),
        sender: v.string("sender").unwrap_or_default(),
        text: v.string("text").unwrap_or_default(),
        room: v.string("room").unwrap_or_default(),
        timeout: v.duration("timeout")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: Command = Command {
        name: "demo",
        about: "A demo command.",
        flags: &[
            Flag::value("ws-addr", "ADDR", "127.0.0.1:8080", "Where to listen"),
            Flag::switch("no-ws", "Do not listen"),
            Flag::value("count", "N", "5", "How many"),
            Flag::list("origin", "ORIGIN", "Allowed origins"),
        ],
    };

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_then_env_then_flags() {
        let v = parse(&DEMO, &[], no_env).unwrap();
        assert_eq!(v.string("ws-addr").as_deref(), Some("127.0.0.1:8080"));
        assert!(!v.switch("no-ws"));

        let env = |k: &str| match k {
            "PAPO_WS_ADDR" => Some("0.0.0.0:1".to_owned()),
            "PAPO_NO_WS" => Some("true".to_owned()),
            _ => None,
        };
        let v = parse(&DEMO, &[], env).unwrap();
        assert_eq!(v.string("ws-addr").as_deref(), Some("0.0.0.0:1"));
        assert!(v.switch("no-ws"));

        let v = parse(&DEMO, &args(&["--ws-addr", "[::1]:2", "--count=7"]), env).unwrap();
        assert_eq!(v.string("ws-addr").as_deref(), Some("[::1]:2"));
        assert_eq!(v.parsed::<u32>("count").unwrap(), 7);
    }

    #[test]
    fn repeatable_flags_collect_lists() {
        assert!(parse(&DEMO, &[], no_env).unwrap().list("origin").is_empty());
        let v = parse(&DEMO, &args(&["--origin", "a", "--origin=b,c"]), no_env).unwrap();
        assert_eq!(v.list("origin"), ["a", "b", "c"]);
        let env = |k: &str| (k == "PAPO_ORIGIN").then(|| "x, y".to_owned());
        assert_eq!(parse(&DEMO, &[], env).unwrap().list("origin"), ["x", "y"]);
        // A single-valued flag given twice keeps the last value.
        let v = parse(&DEMO, &args(&["--count", "1", "--count", "2"]), no_env).unwrap();
        assert_eq!(v.parsed::<u32>("count").unwrap(), 2);
    }

    #[test]
    fn usage_errors_name_the_flag_and_its_env_twin() {
        let err = parse(&DEMO, &args(&["--count", "many"]), no_env)
            .unwrap()
            .parsed::<u32>("count")
            .unwrap_err();
        let CliError::Usage(msg) = err else {
            panic!("expected a usage error")
        };
        assert!(
            msg.contains("--count") && msg.contains("PAPO_COUNT"),
            "{msg}"
        );

        for bad in [&["--nope"][..], &["--ws-addr"], &["stray"], &["--no-ws=1"]] {
            assert!(matches!(
                parse(&DEMO, &args(bad), no_env),
                Err(CliError::Usage(_))
            ));
        }
        let env = |_: &str| Some("maybe".to_owned());
        assert!(matches!(parse(&DEMO, &[], env), Err(CliError::Usage(_))));
    }

    #[test]
    fn help_lists_every_flag_with_env_and_default() {
        let Err(CliError::Help(text)) = parse(&DEMO, &args(&["--help"]), no_env) else {
            panic!("expected help")
        };
        for needle in [
            "--ws-addr ADDR",
            "PAPO_WS_ADDR",
            "default 127.0.0.1:8080",
            "--no-ws",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
