//! `papo bench`, every mode for a moment against live servers: the report is
//! well formed and error-free (a smoke test, not a timing assertion).

mod common;

use common::{papo, serve, OutputWithin};

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

/// Runs `papo bench ARGS` and returns its JSON line.
fn bench(args: &[&str]) -> String {
    let out = papo().arg("bench").args(args).output_within();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line:\n{stdout}"));
    assert!(json.ends_with('}'), "{json}");
    json.to_owned()
}

/// The number after `"key":` in a JSON line.
fn number(json: &str, key: &str) -> f64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} missing: {json}"));
    let rest = &json[at + key.len() + 3..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} not a number: {json}"))
}

fn check(json: &str, ops: f64) {
    assert_eq!(number(json, "errors"), 0.0, "{json}");
    assert_eq!(number(json, "ops"), ops, "{json}");
    let (p50, p99, max) = (
        number(json, "p50_us"),
        number(json, "p99_us"),
        number(json, "max_us"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{json}");
    assert!(number(json, "ops_per_sec") > 0.0);
}

#[test]
fn every_bench_mode_reports_cleanly() {
    // Load from few connections: no rate limit here.
    let server = serve(&["--rate-limit", "0"]);
    let (ws, grpc) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());

    check(
        &bench(&[
            "ws",
            "--url",
            &format!("ws://{ws}/ws"),
            "--conns",
            "4",
            "--msgs",
            "200",
        ]),
        800.0,
    );
    check(
        &bench(&[
            "ws",
            "--url",
            &format!("ws://{ws}/ws"),
            "--msgs",
            "200",
            "--inflight",
            "8",
            "--size",
            "1KiB",
        ]),
        200.0,
    );
    check(
        &bench(&[
            "grpc",
            "--addr",
            &grpc,
            "--conc",
            "4",
            "--reqs",
            "400",
            "--channels",
            "2",
        ]),
        400.0,
    );
    check(
        &bench(&[
            "fanout",
            "--url",
            &format!("ws://{ws}/chat"),
            "--members",
            "20",
            "--msgs",
            "5",
        ]),
        100.0,
    );

    // The TCP floor and its echo server.
    let mut echo = papo()
        .args(["bench", "tcp-echo-server", "--addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = echo.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("tcp-echo listening on ").nth(1) {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let echo_addr = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    check(
        &bench(&["tcp", "--addr", &echo_addr, "--conns", "4", "--msgs", "200"]),
        800.0,
    );
    let _ = echo.kill();
    let _ = echo.wait();

    let pid = server.child.id().to_string();
    let idle = bench(&[
        "idle",
        "--url",
        &format!("ws://{ws}/ws"),
        "--conns",
        "50",
        "--pid",
        &pid,
        "--hold",
        "1s",
    ]);
    let per_thread = number(&idle, "threads_per_conn");
    assert!(
        (0.9..=1.1).contains(&per_thread),
        "one thread per idle connection: {idle}"
    );
    assert!(number(&idle, "rss_kib_per_conn") > 0.0, "{idle}");

    // A gRPC connection costs no thread of its own.
    let idle = bench(&[
        "idle",
        "--url",
        &format!("grpc://{grpc}"),
        "--conns",
        "20",
        "--pid",
        &pid,
        "--hold",
        "1s",
    ]);
    // (C-core's own pool may add a thread meanwhile, not one per connection.)
    assert!(number(&idle, "threads_per_conn") < 0.5, "{idle}");
}

#[test]
fn bench_modes_speak_tls() {
    let dir = std::env::temp_dir().join(format!("papo-bench-tls-{}", std::process::id()));
    let files = papo::devcert::write(&dir, &[]).unwrap();
    let (cert, key, ca) = (
        files.cert.to_str().unwrap(),
        files.key.to_str().unwrap(),
        files.ca.to_str().unwrap(),
    );
    let server = serve(&["--rate-limit", "0", "--tls-cert", cert, "--tls-key", key]);
    let (ws, grpc) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    let wss = format!("wss://{ws}/ws");
    check(
        &bench(&[
            "ws", "--url", &wss, "--conns", "2", "--msgs", "200", "--ca", ca,
        ]),
        400.0,
    );
    check(
        &bench(&[
            "grpc", "--addr", &grpc, "--tls", "--ca", ca, "--reqs", "200",
        ]),
        200.0,
    );
    let pid = server.child.id().to_string();
    let connect = bench(&[
        "connect", "--url", &wss, "--count", "50", "--ca", ca, "--pid", &pid,
    ]);
    check(&connect, 50.0);
    assert!(number(&connect, "server_cpu_us_per_op") > 0.0, "{connect}");
    let idle = bench(&[
        "idle", "--url", &wss, "--conns", "20", "--pid", &pid, "--hold", "1s", "--ca", ca,
    ]);
    assert!(number(&idle, "threads_per_conn") > 0.9, "{idle}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_fails_clearly_against_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = papo()
        .args(["bench", "ws", "--url", &format!("ws://127.0.0.1:{port}/ws")])
        .output_within();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
    assert_eq!(
        papo().args(["bench", "nope"]).output_within().status.code(),
        Some(2)
    );
}

#[test]
fn bench_counts_wrong_replies_and_fails() {
    // `/echo` answers `x…` where the seed's server answers `Recebido: x…`.
    let server = serve(&[]);
    let out = papo()
        .args(["bench", "ws", "--url"])
        .arg(format!("ws://{}/echo", server.ws.clone().unwrap()))
        .args(["--conns", "2", "--msgs", "50"])
        .output_within();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout.lines().find(|l| l.starts_with('{')).unwrap();
    assert_eq!(number(json, "errors"), 100.0, "{json}");
    assert_eq!(number(json, "ops"), 0.0, "{json}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("100 replies were wrong"));
}
