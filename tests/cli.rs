//! The `papo` binary as a user runs it: the seed's clients against
//! `papo serve`, byte for byte, clear failures, and a `--help` that the
//! README's flag table agrees with.

mod common;

use common::{papo, serve, OutputWithin};

use std::net::TcpListener;
use std::process::Output;
use std::thread;

use tungstenite::Message;

fn run(args: &[&str]) -> Output {
    papo().args(args).output_within()
}

fn stdout(out: &Output) -> &str {
    std::str::from_utf8(&out.stdout).expect("utf-8 stdout")
}

fn stderr(out: &Output) -> &str {
    std::str::from_utf8(&out.stderr).expect("utf-8 stderr")
}

/// A port nobody listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn seed_clients_get_seed_answers_from_one_process() {
    let server = serve(&[]);
    let ws = server.ws.as_deref().unwrap();
    let grpc = server.grpc.as_deref().unwrap();

    let out = run(&[
        "ws-client",
        "--url",
        &format!("ws://{ws}/ws"),
        "--interval",
        "0",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "Resposta do servidor: Recebido: Mensagem 1\n\
         Resposta do servidor: Recebido: Mensagem 2\n\
         Resposta do servidor: Recebido: Mensagem 3\n\
         Resposta do servidor: Recebido: Mensagem 4\n\
         Resposta do servidor: Recebido: Mensagem 5\n"
    );

    let out = run(&["grpc-client", "--addr", grpc]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "Resposta do servidor: Mensagem recebida: Olá, gRPC!\n"
    );

    let out = run(&[
        "grpc-client",
        "--addr",
        grpc,
        "--sender",
        "Bob",
        "--text",
        "",
    ]);
    assert_eq!(stdout(&out), "Resposta do servidor: Mensagem recebida: \n");
}

#[test]
fn flags_have_env_twins() {
    let server = serve(&["--no-grpc"]);
    let out = papo()
        .args(["ws-client", "--interval", "0"])
        .env(
            "PAPO_URL",
            format!("ws://{}/ws", server.ws.as_deref().unwrap()),
        )
        .env("PAPO_COUNT", "2")
        .output_within();
    assert_eq!(
        stdout(&out),
        "Resposta do servidor: Recebido: Mensagem 1\nResposta do servidor: Recebido: Mensagem 2\n"
    );
}

#[test]
fn ws_client_closes_with_1000() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept(stream).unwrap();
        loop {
            match ws.read().unwrap() {
                Message::Text(t) => ws.send(Message::text(format!("Recebido: {t}"))).unwrap(),
                Message::Close(frame) => return frame.map(|f| u16::from(f.code)),
                _ => {}
            }
        }
    });
    let out = run(&[
        "ws-client",
        "--url",
        &format!("ws://127.0.0.1:{port}/ws"),
        "--count",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.join().unwrap(), Some(1000));
}

#[test]
fn clients_fail_with_one_line_and_exit_1_when_the_server_is_down() {
    let port = closed_port();
    let out = run(&["ws-client", "--url", &format!("ws://127.0.0.1:{port}/ws")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("papo: cannot connect"),
        "{}",
        stderr(&out)
    );

    let out = run(&[
        "grpc-client",
        "--addr",
        &format!("127.0.0.1:{port}"),
        "--timeout",
        "2s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("SendMessage"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["serve", "--no-grpc", "--ws-addr", &addr]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot listen for WebSocket"),
        "{}",
        stderr(&out)
    );

    // gRPC C-core would share a port through SO_REUSEPORT: a second papo must fail.
    let first = serve(&["--no-ws"]);
    let out = run(&[
        "serve",
        "--no-ws",
        "--grpc-addr",
        first.grpc.as_deref().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot listen for gRPC"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn grpc_threads_sets_the_completion_queue_threads() {
    let server = serve(&["--no-ws", "--grpc-threads", "3"]);
    let names = common::thread_names(server.child.id());
    let pollers = names.iter().filter(|n| n.starts_with("grpc-poll")).count();
    assert_eq!(pollers, 3, "{names:?}");
}

#[test]
fn help_and_usage_errors() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    for cmd in ["serve", "ws-client", "grpc-client"] {
        assert!(stdout(&out).contains(cmd));
        let out = run(&[cmd, "--help"]);
        assert!(out.status.success());
        assert!(stdout(&out).contains("PAPO_"), "{}", stdout(&out));
    }
    let out = run(&["serve", "--max-connections", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--max-connections"),
        "{}",
        stderr(&out)
    );
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(run(&[]).status.code(), Some(2));
    assert_eq!(
        run(&["serve", "--no-ws", "--no-grpc"]).status.code(),
        Some(2)
    );
}

/// One flag as `papo serve --help` or the README's table shows it:
/// (`--flag VALUE`, env twin, default).
type FlagRow = (String, String, String);

fn help_rows() -> Vec<FlagRow> {
    let out = run(&["serve", "--help"]);
    let mut rows = Vec::new();
    let mut lines = stdout(&out).lines().peekable();
    while let Some(line) = lines.next() {
        let line = line.trim_start();
        if !line.starts_with("--") {
            continue;
        }
        let mut words = line.split_whitespace();
        let mut flag = words.next().unwrap_or_default().to_owned();
        if let Some(value) = words
            .next()
            .filter(|w| w.chars().all(|c| c.is_ascii_uppercase()))
        {
            flag = format!("{flag} {value}");
        }
        let detail = lines.next().unwrap_or_default().trim();
        let detail = detail.trim_start_matches('[').trim_end_matches(']');
        let env = detail
            .strip_prefix("env ")
            .and_then(|d| d.split(',').next())
            .unwrap_or_else(|| panic!("no env twin for {flag}: {detail}"))
            .to_owned();
        let default = detail
            .split(", ")
            .find_map(|part| part.strip_prefix("default "))
            .unwrap_or("")
            .to_owned();
        rows.push((flag, env, default));
    }
    rows
}

fn readme_rows() -> Vec<FlagRow> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let table = readme
        .split("`papo serve`, every limit with its default:")
        .nth(1)
        .expect("the README's serve flag table");
    let code = |cell: &str| cell.trim().trim_matches('`').to_owned();
    table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').collect();
            // `off` (a switch) and `none` (a list) have no default in --help.
            let default = match cells[3].trim() {
                "off" | "none" => String::new(),
                d => code(d.split(" (").next().unwrap_or(d)),
            };
            (code(cells[1]), code(cells[2]), default)
        })
        .collect()
}

#[test]
fn the_readme_flag_table_matches_serve_help() {
    let help = help_rows();
    assert!(help.len() > 10, "{help:?}");
    assert_eq!(readme_rows(), help);
}
