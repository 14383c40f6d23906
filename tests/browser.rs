//! The chat page in a real browser: headless Chromium, driven over the
//! DevTools protocol with tungstenite, against a real `papo serve`.
//!
//! Needs Debian's `chromium` (installed by `make test-prereqs`); set
//! `CHROMIUM` to use another binary.

mod common;

use common::{chat_client, connect, next_within, papo, serve, OutputWithin};

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use papo::proto::chat::message::Kind;
use papo::proto::chat::SubscribeRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn launch(url: &str, extra: &[String]) -> (Browser, u16) {
    let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    // Tests run in parallel: each browser needs its own profile, or the
    // second Chromium hands its page to the first and exits.
    static LAUNCHED: AtomicUsize = AtomicUsize::new(0);
    let profile = std::env::temp_dir().join(format!(
        "papo-chromium-{}-{}",
        std::process::id(),
        LAUNCHED.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::create_dir_all(&profile).unwrap();
    let child = Command::new(&binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1000,640",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {binary} ({e}): install Debian's chromium (make test-prereqs)")
        });
    let browser = Browser { child, profile };
    // Chromium writes the port it picked to DevToolsActivePort.
    let start = Instant::now();
    let port = loop {
        if let Ok(text) = std::fs::read_to_string(browser.profile.join("DevToolsActivePort")) {
            if let Some(port) = text.lines().next().and_then(|l| l.parse().ok()) {
                break port;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "chromium did not open its DevTools port"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    (browser, port)
}

/// Reads a JSON string literal starting at `s` (just after its opening quote).
fn json_string(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(
                        u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .unwrap_or('?'),
                    );
                }
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    out
}

/// The string value of `"key": "…"` in a JSON text.
fn field(json: &str, key: &str) -> Option<String> {
    let at = json.find(&format!("\"{key}\""))?;
    let rest = &json[at + key.len() + 2..];
    let quote = rest.find('"')?;
    Some(json_string(&rest[quote + 1..]))
}

/// A DevTools session on one page.
struct DevTools {
    ws: tungstenite::WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl DevTools {
    fn attach(port: u16) -> DevTools {
        let start = Instant::now();
        let target = loop {
            let mut answer = Vec::new();
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                use std::io::Write;
                // DevTools answers HTTP/1.1 only, and keeps the connection open.
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                // The Host header is where Chromium points the page's WebSocket URL.
                let request = format!("GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
                let _ = s.write_all(request.as_bytes());
                let _ = s.read_to_end(&mut answer);
            }
            let list = String::from_utf8_lossy(&answer);
            let page = list.split('{').find(|t| t.contains("\"type\": \"page\""));
            if let Some(url) = page.and_then(|t| field(t, "webSocketDebuggerUrl")) {
                break url;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no page target: {list}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let (ws, _) = connect(target.as_str()).expect("devtools websocket");
        DevTools { ws, next_id: 0 }
    }

    /// Sends a command and returns its response's JSON text.
    fn call(&mut self, method: &str, params: &str) -> String {
        self.next_id += 1;
        let id = self.next_id;
        let command = format!(r#"{{"id":{id},"method":"{method}","params":{params}}}"#);
        self.ws.send(Message::text(command)).unwrap();
        let marker = format!("\"id\":{id},");
        loop {
            if let Message::Text(text) = self.ws.read().unwrap() {
                if text.as_str().starts_with(&format!("{{{marker}"))
                    || text.as_str().contains(&marker)
                {
                    return text.as_str().to_owned();
                }
            }
        }
    }

    /// Evaluates a JavaScript expression that yields a string.
    fn eval(&mut self, expression: &str) -> String {
        let expression = expression.replace('\\', "\\\\").replace('"', "\\\"");
        let reply = self.call(
            "Runtime.evaluate",
            &format!(r#"{{"expression":"{expression}","returnByValue":true}}"#),
        );
        field(&reply, "value").unwrap_or_default()
    }

    fn wait_for(&mut self, what: &str, expression: &str, expected: impl Fn(&str) -> bool) {
        let start = Instant::now();
        loop {
            let value = self.eval(expression);
            if expected(&value) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what}: page shows {value:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `text` into the message box and sends it with Enter.
    fn type_and_send(&mut self, text: &str) {
        self.eval("document.getElementById('text').focus(), 'ok'");
        self.call("Input.insertText", &format!(r#"{{"text":"{text}"}}"#));
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                &format!(r#"{{"type":"{kind}","key":"Enter","code":"Enter","windowsVirtualKeyCode":13,"text":"\r"}}"#),
            );
        }
    }

    fn screenshot(&mut self, path: &PathBuf) -> usize {
        let reply = self.call("Page.captureScreenshot", r#"{"format":"png"}"#);
        let png = base64_decode(&field(&reply, "data").expect("screenshot data"));
        std::fs::write(path, &png).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        png.len()
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .map(value)
        .collect();
    digits
        .chunks(4)
        .flat_map(|c| {
            let n = c
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &d)| n | (u32::from(d) << (18 - 6 * i)));
            let bytes = n.to_be_bytes();
            bytes[1..c.len()].to_vec()
        })
        .collect()
}

#[test]
fn the_chat_page_talks_with_grpc_in_a_real_browser() {
    let server = serve(&[]);
    let (ws, grpc) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    let client = chat_client(&grpc);
    let request = SubscribeRequest {
        room: "web".into(),
        name: "observador".into(),
        ..Default::default()
    };
    let mut observer = client.subscribe(&request).unwrap();

    let (_browser, port) = launch(&format!("http://{ws}/?room=web&name=Navegador"), &[]);
    let mut page = DevTools::attach(port);
    page.wait_for(
        "connected",
        "document.getElementById('state').textContent",
        |s| s == "conectado",
    );
    page.wait_for(
        "members listed",
        "document.getElementById('members').innerText",
        |s| s.contains("Navegador") && s.contains("observador"),
    );

    // A message from the seed's gRPC client shows up in the page.
    let out = papo()
        .args([
            "grpc-client",
            "--addr",
            &grpc,
            "--room",
            "web",
            "--text",
            "Olá do gRPC",
        ])
        .output_within();
    assert!(out.status.success());
    page.wait_for(
        "gRPC message shown",
        "document.getElementById('log').innerText",
        |s| s.contains("Alice") && s.contains("Olá do gRPC"),
    );

    // A message typed into the page, sent with Enter, reaches the gRPC subscriber.
    page.type_and_send("Olá do navegador");
    let start = Instant::now();
    loop {
        let m = next_within(&mut observer, "the page's message on gRPC")
            .expect("stream open")
            .expect("message");
        if m.kind.enum_value_or_default() == Kind::MESSAGE && m.sender == "Navegador" {
            assert_eq!(m.text, "Olá do navegador");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20));
    }
    page.wait_for(
        "own message shown",
        "document.getElementById('log').innerText",
        |s| s.contains("Olá do navegador"),
    );

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let desktop = dir.join("chat-page.png");
    assert!(page.screenshot(&desktop) > 5_000, "screenshot nearly empty");
    page.call(
        "Emulation.setDeviceMetricsOverride",
        r#"{"width":390,"height":740,"deviceScaleFactor":1,"mobile":true}"#,
    );
    assert!(page.screenshot(&dir.join("chat-page-phone.png")) > 5_000);
    eprintln!("screenshots in {}", dir.display());

    // Reloaded, the page opens with the room's recent history.
    page.eval("location.reload(), 'ok'");
    page.wait_for(
        "the history shown after a reload",
        "document.getElementById('state').textContent + ' ' + document.getElementById('log').innerText",
        |s| s.starts_with("conectado") && s.contains("Olá do gRPC") && s.contains("Olá do navegador"),
    );

    // The connection drops; what is said meanwhile arrives on reconnecting.
    page.eval("ws.close(), 'ok'");
    page.wait_for(
        "disconnected",
        "document.getElementById('state').textContent",
        |s| s.starts_with("desconectado"),
    );
    let out = papo()
        .args(["grpc-client", "--addr", &grpc, "--room", "web"])
        .args(["--text", "Dito durante a queda"])
        .output_within();
    assert!(out.status.success());
    page.wait_for(
        "the message said while away",
        "document.getElementById('log').innerText",
        |s| s.contains("Dito durante a queda"),
    );

    // The server ends the connection (a message past --max-message-size
    // gets 1009): the page comes back, and hears what was said meanwhile.
    page.eval("ws.send(JSON.stringify({text: 'x'.repeat(5 << 20)})), 'ok'");
    page.wait_for(
        "closed by the server",
        "document.getElementById('state').textContent",
        |s| s.starts_with("desconectado"),
    );
    let out = papo()
        .args(["grpc-client", "--addr", &grpc, "--room", "web"])
        .args(["--text", "Dito depois do fechamento"])
        .output_within();
    assert!(out.status.success());
    page.wait_for(
        "the message said while closed",
        "document.getElementById('state').textContent + ' ' + document.getElementById('log').innerText",
        |s| s.starts_with("conectado") && s.contains("Dito depois do fechamento"),
    );

    // Two members of one name are two members, and one leaving leaves one.
    let twin = ws_member(&ws, "Navegador");
    page.wait_for(
        "a second Navegador counted",
        "document.getElementById('count').textContent",
        |s| s == "3 na sala",
    );
    drop(twin);
    page.wait_for(
        "one Navegador left",
        "document.getElementById('count').textContent",
        |s| s == "2 na sala",
    );
    // A name the server refuses: its reason is shown, and no retrying.
    let state = "document.getElementById('state').textContent";
    page.eval(&format!(
        "location.href = 'http://{ws}/?room=web&name=%E2%80%AEnimda', 'ok'"
    ));
    page.wait_for("the server's refusal shown", state, |s| {
        s.starts_with("recusado") && s.contains("U+202E")
    });
    // A name too long in bytes (64 characters, 128 bytes) is refused at once.
    let long = "%C3%A3".repeat(64);
    page.eval(&format!(
        "location.href = 'http://{ws}/?room=web&name={long}', 'ok'"
    ));
    page.wait_for("a long name refused", state, |s| s.contains("64 bytes"));
}

/// A WebSocket member of room `web`, once its own JOIN has come.
fn ws_member(addr: &str, name: &str) -> common::Ws {
    let (mut ws, _) = connect(format!("ws://{addr}/chat?room=web&name={name}")).unwrap();
    loop {
        if let Message::Text(json) = ws.read().expect("own JOIN") {
            if json.contains("JOIN") {
                return ws;
            }
        }
    }
}

/// The base64 SHA-256 of a certificate's public key (its SPKI), as
/// Chromium's `--ignore-certificate-errors-spki-list` takes it.
fn spki_pin(cert: &std::path::Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der \
         | openssl dgst -sha256 -binary | base64",
        cert.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output_within();
    assert!(out.status.success(), "openssl: {:?}", out);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_chat_page_talks_over_wss_with_a_grpc_over_tls_member() {
    let dir = std::env::temp_dir().join(format!("papo-browser-tls-{}", std::process::id()));
    let files = papo::devcert::write(&dir, &[]).unwrap();
    let (cert, key, ca) = (
        files.cert.to_str().unwrap(),
        files.key.to_str().unwrap(),
        files.ca.to_str().unwrap(),
    );
    let server = serve(&["--tls-cert", cert, "--tls-key", key]);
    let (ws, grpc) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    let tls = papo::client::ClientTls {
        grpc: true,
        ca: Some(files.ca.clone()),
        identity: None,
    };
    let client = papo::proto::chat_grpc::ChatServiceClient::new(
        papo::client::grpc_channel(&grpc, &tls).unwrap(),
    );
    let request = SubscribeRequest {
        room: "tls".into(),
        name: "servico".into(),
        ..Default::default()
    };
    let mut observer = client.subscribe(&request).unwrap();
    let pin = format!(
        "--ignore-certificate-errors-spki-list={}",
        spki_pin(&files.cert)
    );
    let (_browser, port) = launch(&format!("https://{ws}/?room=tls&name=Navegador"), &[pin]);
    let mut page = DevTools::attach(port);
    page.wait_for(
        "connected over wss",
        "location.protocol + ' ' + document.getElementById('state').textContent",
        |s| s == "https: conectado",
    );
    let out = papo()
        .args(["grpc-client", "--addr", &grpc, "--tls", "--ca", ca])
        .args(["--room", "tls", "--text", "Olá por TLS"])
        .output_within();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    page.wait_for(
        "the gRPC-over-TLS message shown",
        "document.getElementById('log').innerText",
        |s| s.contains("Olá por TLS"),
    );
    page.type_and_send("Olá do navegador seguro");
    let start = Instant::now();
    loop {
        let m = next_within(&mut observer, "the page's message over gRPC with TLS")
            .expect("stream open")
            .expect("message");
        if m.kind.enum_value_or_default() == Kind::MESSAGE && m.sender == "Navegador" {
            assert_eq!(m.text, "Olá do navegador seguro");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20));
    }
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chat-page-tls.png");
    assert!(page.screenshot(&shot) > 5_000, "screenshot nearly empty");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_page_joins_with_a_token_from_its_address_and_keeps_it_out_of_sight() {
    let secret = std::env::temp_dir().join(format!("papo-browser-secret-{}", std::process::id()));
    std::fs::write(
        &secret,
        "the browser test's secret, thirty-two bytes or more",
    )
    .unwrap();
    let secret = secret.to_str().unwrap();
    let server = serve(&["--auth-secret-file", secret]);
    let (ws, grpc) = (server.ws.clone().unwrap(), server.grpc.clone().unwrap());
    let minted = papo()
        .args([
            "token",
            "--secret-file",
            secret,
            "--sub",
            "João",
            "--rooms",
            "web",
        ])
        .output_within();
    assert!(minted.status.success());
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let (_browser, port) = launch(&format!("http://{ws}/?room=web&token={token}"), &[]);
    let mut page = DevTools::attach(port);
    // Joined under the token's name; the token is neither in the address
    // bar nor anywhere on the page.
    page.wait_for(
        "joined as the token's sub",
        "document.getElementById('state').textContent + ' | ' + document.getElementById('members').innerText",
        |s| s.starts_with("conectado") && s.contains("João"),
    );
    page.wait_for("the token out of the address bar", "location.href", |s| {
        !s.contains("token") && s.contains("name=Jo")
    });
    page.wait_for(
        "the token nowhere on the page",
        "document.body.innerText",
        |s| !s.contains(&token[..20]),
    );
    // What it says reaches the room under that name.
    let client = papo::proto::chat_grpc::ChatServiceClient::new(common::channel(&grpc));
    let mut headers = grpcio::MetadataBuilder::new();
    let admin = papo()
        .args([
            "token",
            "--secret-file",
            secret,
            "--sub",
            "svc",
            "--read-only",
        ])
        .output_within();
    let admin = String::from_utf8(admin.stdout).unwrap().trim().to_owned();
    headers
        .add_str("authorization", &format!("Bearer {admin}"))
        .unwrap();
    let request = SubscribeRequest {
        room: "web".into(),
        ..Default::default()
    };
    let option = grpcio::CallOption::default().headers(headers.build());
    let mut observer = client.subscribe_opt(&request, option).unwrap();
    page.type_and_send("Olá com token");
    loop {
        let m = next_within(&mut observer, "the page's message")
            .expect("stream open")
            .expect("message");
        if m.kind.enum_value_or_default() == Kind::MESSAGE {
            assert_eq!(
                (m.sender.as_str(), m.text.as_str()),
                ("João", "Olá com token")
            );
            break;
        }
    }
}
