//! `papo`: the command line. Parses flags, then hands over to the library.

use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::thread;

use log::{info, warn};

use papo::bench;
use papo::chat::Hub;
use papo::client;
use papo::config::{self, CliError, ServeConfig, COMMANDS};
use papo::grpc::GrpcServer;
use papo::metrics::Metrics;
use papo::signals::{self, ShutdownSignals};
use papo::ws::WsServer;

/// How a run ended other than by doing its work: help was asked for (exit 0),
/// wrong usage (exit 2) or a failure at run time (exit 1).
enum Failure {
    Help(String),
    Usage(String),
    Runtime(String),
}

impl From<CliError> for Failure {
    fn from(e: CliError) -> Self {
        match e {
            CliError::Help(text) => Failure::Help(text),
            CliError::Usage(msg) => Failure::Usage(msg),
        }
    }
}

fn main() -> ExitCode {
    // Quiet by default: start-up lines and warnings; gRPC C-core's own info
    // chatter (poller names, connect back-offs) only when asked for.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,grpcio=warn"))
        .init();
    // gRPC C-core logs through `log` too, at the level RUST_LOG allows.
    grpcio::redirect_log();
    let args: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect();
    let result = match args {
        Ok(args) => run(&args),
        Err(bad) => Err(Failure::Usage(format!(
            "argument {bad:?} is not valid UTF-8"
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Help(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("papo: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("papo: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), Failure> {
    let Some((name, rest)) = args.split_first() else {
        return Err(Failure::Usage(format!(
            "a command is required\n\n{}",
            usage()
        )));
    };
    match name.as_str() {
        "-h" | "--help" | "help" => return Err(Failure::Help(usage())),
        "-V" | "--version" => {
            println!("papo {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        _ => {}
    }
    // `papo bench MODE …` names a command of two words.
    let (name, rest) = match (name.as_str(), rest.split_first()) {
        ("bench", Some((mode, rest))) => (format!("bench {mode}"), rest),
        _ => (name.clone(), rest),
    };
    let Some(cmd) = COMMANDS.iter().find(|c| c.name == name) else {
        return Err(Failure::Usage(format!(
            "unknown command '{name}'\n\n{}",
            usage()
        )));
    };
    let values = config::parse(cmd, rest, |k| std::env::var(k).ok())?;
    let stdout = &mut io::stdout().lock();
    match cmd.name {
        "serve" => serve(ServeConfig::from_values(&values)?),
        "ws-client" => {
            client::ws_client(&config::ws_client_config(&values)?, stdout).map_err(Failure::Runtime)
        }
        "grpc-client" => client::grpc_client(&config::grpc_client_config(&values)?, stdout)
            .map_err(Failure::Runtime),
        "chat" => client::chat_client(&config::chat_client_config(&values)?, stdout)
            .map_err(Failure::Runtime),
        bench_mode if bench_mode.starts_with("bench ") => run_bench(bench_mode, &values, stdout),
        other => Err(Failure::Usage(format!("unknown command '{other}'"))),
    }
}

fn run_bench(mode: &str, v: &config::Values, out: &mut impl Write) -> Result<(), Failure> {
    // A report, and the replies it found wrong or missing.
    let report = |r: bench::Report| {
        let mut r = r;
        (r.render(), r.errors)
    };
    let result = match mode {
        "bench ws" => bench::ws(
            &v.string("url").unwrap_or_default(),
            v.parsed("conns")?,
            v.parsed("msgs")?,
            v.size("size")?,
            v.parsed("inflight")?,
        )
        .map(report),
        "bench grpc" => bench::grpc(
            &v.string("addr").unwrap_or_default(),
            v.parsed("conc")?,
            v.parsed("reqs")?,
            v.size("size")?,
            v.parsed("channels")?,
        )
        .map(report),
        "bench tcp" => bench::tcp(
            &v.string("addr").unwrap_or_default(),
            v.parsed("conns")?,
            v.parsed("msgs")?,
            v.size("size")?,
        )
        .map(report),
        "bench tcp-echo-server" => bench::tcp_echo_server(&v.string("addr").unwrap_or_default())
            .map(|()| (String::new(), 0)),
        "bench fanout" => bench::fanout(
            &v.string("url").unwrap_or_default(),
            v.parsed("members")?,
            v.parsed("msgs")?,
            v.duration("interval")?,
        )
        .map(report),
        "bench idle" => {
            // One descriptor per connection, as many as the server holds.
            let _ = signals::raise_fd_limit();
            bench::idle(
                &v.string("url").unwrap_or_default(),
                v.parsed("conns")?,
                v.parsed("pid")?,
                v.duration("hold")?,
            )
            .map(|text| (text, 0))
        }
        other => return Err(Failure::Usage(format!("unknown command '{other}'"))),
    };
    let (text, errors) = result.map_err(Failure::Runtime)?;
    out.write_all(text.as_bytes())
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    match errors {
        0 => Ok(()),
        n => Err(Failure::Runtime(format!(
            "{n} replies were wrong or missing"
        ))),
    }
}

fn usage() -> String {
    let mut out = String::from(
        "papo: a blocking WebSocket + gRPC chat server\n\nUsage: papo <COMMAND> [FLAGS]\n\nCommands:\n",
    );
    for cmd in COMMANDS {
        out.push_str(&format!("  {:<12} {}\n", cmd.name, cmd.about));
    }
    out.push_str(
        "\nEvery flag --some-flag can also be set as PAPO_SOME_FLAG.\n\
         Run 'papo <COMMAND> --help' for its flags. Logs: RUST_LOG=debug.\n",
    );
    out
}

/// What the main thread waits for while the servers run.
enum Event {
    Signal(i32),
    WsStopped(io::Result<()>),
}

/// Runs both servers: gRPC on its completion-queue threads, WebSocket on an
/// accept thread plus one thread per connection. The main thread waits for a
/// shutdown signal, then drains both.
fn serve(config: ServeConfig) -> Result<(), Failure> {
    // Before any thread exists, so that every thread inherits the mask.
    let signals = ShutdownSignals::block()
        .map_err(|e| Failure::Runtime(format!("cannot block shutdown signals: {e}")))?;
    match signals::raise_fd_limit() {
        Ok(limit) if config.ws_addr.is_some() && limit < config.ws.max_connections as u64 + 64 => {
            warn!(
                "open-file limit {limit} is below --max-connections {} plus headroom: \
             connections past it will fail to be accepted",
                config.ws.max_connections
            )
        }
        Ok(_) => {}
        Err(e) => warn!("cannot raise the open-file limit: {e}"),
    }
    let metrics = Arc::new(Metrics::new());
    // One hub: browsers and services meet in the same rooms.
    let hub = Hub::new();
    let grpc = match &config.grpc_addr {
        Some(addr) => Some(
            GrpcServer::start(addr, &config.grpc, Arc::clone(&metrics), Arc::clone(&hub))
                .map_err(Failure::Runtime)?,
        ),
        None => None,
    };
    let (events, next_event) = mpsc::channel();
    let mut ws = None;
    if let Some(addr) = &config.ws_addr {
        let server = WsServer::bind(addr, config.ws.clone(), Arc::clone(&metrics), hub)
            .map_err(|e| Failure::Runtime(format!("cannot listen for WebSocket on {addr}: {e}")))?;
        let handle = server.handle();
        let events = events.clone();
        let accept = thread::Builder::new()
            .name("ws-accept".into())
            .spawn(move || {
                let _ = events.send(Event::WsStopped(server.run()));
            })
            .map_err(|e| Failure::Runtime(format!("cannot start the WebSocket thread: {e}")))?;
        ws = Some((handle, accept));
    }
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let first = signals.wait();
            let _ = events.send(Event::Signal(first));
            let second = signals.wait();
            warn!("{} again: exiting at once", signals::name(second));
            std::process::exit(128 + second);
        })
        .map_err(|e| Failure::Runtime(format!("cannot start the signal thread: {e}")))?;

    match next_event.recv() {
        Ok(Event::Signal(signal)) => info!(
            "{}: shutting down (again to exit at once), draining for up to {:?}",
            signals::name(signal),
            config.drain_timeout
        ),
        Ok(Event::WsStopped(Err(e))) => {
            return Err(Failure::Runtime(format!("WebSocket server failed: {e}")))
        }
        Ok(Event::WsStopped(Ok(()))) | Err(_) => {}
    }
    let drain = config.drain_timeout;
    thread::scope(|scope| {
        if let Some(grpc) = grpc {
            scope.spawn(move || grpc.shutdown(drain));
        }
        if let Some((handle, accept)) = ws {
            let open = handle.shutdown(drain);
            if open > 0 {
                warn!("{open} WebSocket connections still open after {drain:?}");
            }
            let _ = accept.join();
        }
    });
    info!("shutdown complete");
    Ok(())
}
