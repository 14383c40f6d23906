//! `papo`: the command line. Parses flags, then hands over to the library
//! (or, for `papo bench`, to the bench tool of this binary).

mod bench;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use papo::client::{self, ChatClientConfig, GrpcClientConfig, WsClientConfig};
use papo::config::{self, CliError, Command, ServeConfig};
use papo::devcert;
use papo::server::ServeError;

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
    // rustls warns of what a peer sends (an IP address as SNI, which gRPC
    // clients send), once per connection: its errors only, unless RUST_LOG
    // names rustls itself.
    env_logger::Builder::new()
        .filter_module("rustls", log::LevelFilter::Error)
        .parse_env(env_logger::Env::default().default_filter_or("info,grpcio=warn,grpc_core=warn"))
        .init();
    // gRPC C-core logs through `log` too (target `grpc_core`), at the level
    // RUST_LOG allows.
    papo::grpc::redirect_core_log();
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

/// Every command, in the order `papo --help` lists them.
fn commands() -> impl Iterator<Item = &'static Command> {
    config::COMMANDS.iter().chain(bench::COMMANDS).copied()
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
    let Some(cmd) = commands().find(|c| c.name == name) else {
        return Err(Failure::Usage(format!(
            "unknown command '{name}'\n\n{}",
            usage()
        )));
    };
    let values = config::parse(cmd, rest, |k| std::env::var(k).ok())?;
    let stdout = &mut io::stdout().lock();
    let done = match cmd.name {
        "serve" => {
            return papo::server::serve(ServeConfig::from_values(&values)?).map_err(|e| match e {
                // Files given on the command line that cannot be used: usage.
                ServeError::Tls(_) | ServeError::Auth(_) => Failure::Usage(e.to_string()),
                e => Failure::Runtime(e.to_string()),
            });
        }
        "dev-cert" => dev_cert(&values, stdout),
        "token" => {
            let (secret, request) = config::token_request(&values)?;
            papo::auth::mint(&secret, &request)
                .and_then(|token| writeln!(stdout, "{token}").map_err(|e| e.to_string()))
        }
        "ws-client" => client::ws_client(&WsClientConfig::from_values(&values)?, stdout),
        "grpc-client" => client::grpc_client(&GrpcClientConfig::from_values(&values)?, stdout),
        "chat" => client::chat_client(&ChatClientConfig::from_values(&values)?, stdout),
        _ => bench::Mode::from_values(cmd, &values)?.run(stdout),
    };
    done.map_err(Failure::Runtime)
}

/// `papo dev-cert`: writes the files and says what to do with them.
fn dev_cert(values: &config::Values, out: &mut impl Write) -> Result<(), String> {
    let dir = PathBuf::from(
        values
            .string(&config::DEV_CERT_OUT)
            .map_err(|e| e.to_string())?,
    );
    let hosts = values
        .list(&config::DEV_CERT_HOST)
        .map_err(|e| e.to_string())?;
    let files = devcert::write(&dir, &hosts)?;
    let shown = |p: &Path| p.display().to_string();
    let _ = writeln!(
        out,
        "wrote {}, {} and {}\n\
         serve:  papo serve --tls-cert {} --tls-key {}\n\
         trust:  {} (the CA: a client's --ca, Python's ssl cafile=, or a browser's authorities)",
        shown(&files.ca),
        shown(&files.cert),
        shown(&files.key),
        shown(&files.cert),
        shown(&files.key),
        shown(&files.ca)
    );
    Ok(())
}

fn usage() -> String {
    let mut out = String::from(
        "papo: a blocking WebSocket + gRPC chat server\n\nUsage: papo <COMMAND> [FLAGS]\n\nCommands:\n",
    );
    let width = commands().map(|c| c.name.len()).max().unwrap_or(0);
    for cmd in commands() {
        out.push_str(&format!("  {:<width$}  {}\n", cmd.name, cmd.about));
    }
    out.push_str(
        "\nEvery flag --some-flag can also be set as PAPO_SOME_FLAG.\n\
         Run 'papo <COMMAND> --help' for its flags. Logs: RUST_LOG=debug.\n",
    );
    out
}
