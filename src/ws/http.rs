//! The HTTP side of the WebSocket port: reading a request head within its
//! size and time bounds, routing it, plain responses, and the origin policy.
//!
//! papo reads the head itself rather than inside tungstenite so that it can
//! answer plain HTTP (`/metrics`, `404`, `426`, …) and bound the head before
//! anything is upgraded.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use tungstenite::handshake::server::Request;
use tungstenite::http::Version;

use super::error::ConnError;
use super::front::Front;
use super::{MAX_REQUEST_HEAD, MAX_REQUEST_HEADERS};
use crate::auth::Identity;
use crate::chat;

/// The first byte of a TLS handshake record: a ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Answered with plain HTTP.
    Http(HttpRoute),
    /// Upgraded to a WebSocket.
    WebSocket(Endpoint),
}

/// The plain-HTTP routes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HttpRoute {
    /// `/`: the chat page.
    ChatPage,
    /// `/metrics`: Prometheus text.
    Metrics,
}

/// The WebSocket endpoints.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// `/ws`: the seed's server, replying `Recebido: <msg>`.
    Reply,
    /// `/echo`: exact echo, for conformance tools.
    Echo,
    /// `/chat?room=R&name=N[&since=S&epoch=E]`: a member of room R, JSON in
    /// and out, resuming after message S of epoch E if it says so.
    Chat {
        room: String,
        name: String,
        resume: Option<chat::Resume>,
        /// Who its token says it is, when tokens are required.
        identity: Option<Identity>,
    },
}

/// An HTTP status and the plain-text body that explains it.
pub type HttpError = (u16, String);

/// Routes a request target.
pub fn route(target: &str) -> Result<Route, HttpError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/ws" => Ok(Route::WebSocket(Endpoint::Reply)),
        "/echo" => Ok(Route::WebSocket(Endpoint::Echo)),
        "/chat" => {
            let bad = |e: String| (400, format!("{e}\n"));
            let room = query_param(query, "room").map_err(bad)?;
            let name = query_param(query, "name").map_err(bad)?;
            let room = chat::room_name(&room).map_err(bad)?.to_owned();
            let name = chat::member_name(&name).map_err(bad)?.to_owned();
            let since = query_param(query, "since").map_err(bad)?;
            let resume = match since.as_str() {
                "" => None,
                since => Some(chat::Resume {
                    since: since
                        .parse()
                        .map_err(|_| bad(format!("since must be a message number: {since:?}")))?,
                    epoch: query_param(query, "epoch").map_err(bad)?,
                }),
            };
            Ok(Route::WebSocket(Endpoint::Chat {
                room,
                name,
                resume,
                identity: None,
            }))
        }
        "/" | "/index.html" => Ok(Route::Http(HttpRoute::ChatPage)),
        "/metrics" => Ok(Route::Http(HttpRoute::Metrics)),
        _ => Err((
            404,
            "not found: try / (chat page), /chat, /ws, /echo or /metrics\n".into(),
        )),
    }
}

/// A query parameter, percent-decoded (`+` is a space, as forms send it);
/// empty when absent. A malformed escape or bytes that are not UTF-8 are an
/// error, never guessed at.
pub fn query_param(query: &str, key: &str) -> Result<String, String> {
    query
        .split('&')
        .find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then(|| percent_decode(v))
        })
        .unwrap_or_else(|| Ok(String::new()))
        .map_err(|why| format!("query parameter '{key}': {why}"))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let mut bytes = s.bytes();
    let mut out = Vec::with_capacity(s.len());
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hex = [bytes.next(), bytes.next()];
                let digit = |d: Option<u8>| d.and_then(|d| char::from(d).to_digit(16));
                match hex.map(digit) {
                    [Some(high), Some(low)] => (high * 16 + low) as u8,
                    _ => return Err("a '%' not followed by two hex digits".into()),
                }
            }
            b => b,
        });
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded".into())
}

/// A request head as read: parsed, with the bytes that came after it, or
/// answered with an HTTP error.
pub enum Head {
    Request(Box<Request>, Vec<u8>),
    Invalid(u16, &'static str),
}

/// Reads an HTTP request head, returning it with any bytes read past its end.
/// The whole head must arrive before `deadline`, however slowly it dribbles.
pub fn read_request_head(stream: &mut Front, deadline: Instant) -> Result<Head, ConnError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnError::HandshakeTimeout);
        }
        stream.socket().set_read_timeout(Some(left))?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ConnError::HandshakeTimeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.starts_with(&[TLS_HANDSHAKE_RECORD]) && matches!(stream, Front::Plain(_)) {
            return Ok(Head::Invalid(
                400,
                "TLS sent to a plaintext port: use ws:// or http://\n",
            ));
        }
        match parse_head(&buf) {
            Ok(Some((len, request))) => {
                return Ok(Head::Request(Box::new(request), buf.split_off(len)))
            }
            Ok(None) if buf.len() >= MAX_REQUEST_HEAD => {
                return Ok(Head::Invalid(431, "request head too large\n"))
            }
            Ok(None) => {}
            Err((status, why)) => return Ok(Head::Invalid(status, why)),
        }
    }
}

/// Parses a request head: `None` while it is incomplete. HTTP/1.0 and 1.1
/// are read alike (the upgrade itself then insists on 1.1); only `GET` is
/// served.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Request)>, (u16, &'static str)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let len = match head.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err((431, "too many header lines\n")),
        Err(_) => return Err((400, "malformed HTTP request\n")),
    };
    if head.method != Some("GET") {
        return Err((405, "only GET is served here\n"));
    }
    let version = match head.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let request = head
        .headers
        .iter()
        .fold(Request::builder(), |request, h| {
            request.header(h.name, h.value)
        })
        .method("GET")
        .uri(head.path.unwrap_or("/"))
        .version(version)
        .body(())
        .map_err(|_| (400, "malformed HTTP request\n"))?;
    Ok(Some((len, request)))
}

/// A request header's value, if it is text.
pub fn header<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Answers with an HTTP error and ends the connection.
pub fn reject<T>(
    stream: &mut Front,
    status: u16,
    body: &str,
    headers: &str,
) -> Result<T, ConnError> {
    stream.write_all(&response(status, body, headers))?;
    stream.end();
    Err(ConnError::Rejected(status))
}

/// The chat page: one self-contained file, embedded in the binary.
const CHAT_PAGE: &str = include_str!("../page.html");

/// Answers a plain-HTTP route.
pub fn serve_http(
    stream: &mut Front,
    route: HttpRoute,
    metrics: &crate::metrics::Metrics,
) -> io::Result<()> {
    let page = match route {
        HttpRoute::ChatPage => ok("text/html; charset=utf-8", CHAT_PAGE),
        HttpRoute::Metrics => ok(
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics.render(),
        ),
    };
    stream.write_all(&page)?;
    stream.end();
    Ok(())
}

fn ok(content_type: &str, body: &str) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body.as_bytes());
    response
}

/// A plain-text response with `status`; `headers` are extra header lines.
pub fn response(status: u16, body: &str, headers: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The origin policy. Requests without `Origin` come from non-browser clients
/// and are accepted. A browser always sends it, and accepting any origin
/// would let every web page a user visits open a WebSocket to this server
/// with the user's cookies and network position (cross-site WebSocket
/// hijacking): so a browser must come from a page of this server's own host,
/// or from an origin explicitly allowed.
///
/// "This server's own host" is checked against names papo is known by, not
/// just the `Host` header: a page on a domain that an attacker re-points at
/// a loopback or LAN address (DNS rebinding) sends a matching `Host` and
/// `Origin` of its own. Known are IP literals, `localhost`, and the names
/// given as public hosts.
pub struct OriginPolicy<'a> {
    /// Origins allowed besides the server's own host; `*` allows all.
    pub allowed: &'a [String],
    /// Host names this server is reached by.
    pub public_hosts: &'a [String],
}

impl OriginPolicy<'_> {
    /// Whether a request with these `Origin` and `Host` headers (absent:
    /// `None`; present but not visible ASCII: `Some(None)`) may upgrade.
    pub fn allows(&self, origin: Option<Option<&str>>, host: Option<&str>) -> bool {
        let origin = match origin {
            None => return true,
            Some(None) => return false,
            Some(Some(origin)) => origin.trim().trim_end_matches('/'),
        };
        if self
            .allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
        {
            return true;
        }
        let Some(host) = host.map(str::trim) else {
            return false;
        };
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        origin_host.eq_ignore_ascii_case(host) && self.known(host)
    }

    /// Whether `host` (`name[:port]`) names this server.
    fn known(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // An IPv6 literal, `[::1]:8080`.
            Some(rest) => {
                return rest
                    .split(']')
                    .next()
                    .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok())
            }
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        name.eq_ignore_ascii_case("localhost")
            || name.parse::<Ipv4Addr>().is_ok()
            || self
                .public_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
    }
}

/// A request header: `None` when absent, `Some(None)` when present but not
/// visible ASCII (which must not count as absent).
pub fn raw_header<'r>(request: &'r Request, name: &str) -> Option<Option<&'r str>> {
    request.headers().get(name).map(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(room: &str, name: &str) -> Result<Route, HttpError> {
        Ok(Route::WebSocket(Endpoint::Chat {
            room: room.into(),
            name: name.into(),
            resume: None,
            identity: None,
        }))
    }

    #[test]
    fn routes() {
        assert_eq!(route("/ws"), Ok(Route::WebSocket(Endpoint::Reply)));
        assert_eq!(route("/echo"), Ok(Route::WebSocket(Endpoint::Echo)));
        assert_eq!(route("/metrics"), Ok(Route::Http(HttpRoute::Metrics)));
        assert_eq!(route("/"), Ok(Route::Http(HttpRoute::ChatPage)));
        assert_eq!(route("/chat"), chat("geral", ""));
        assert_eq!(
            route("/chat?name=Jo%C3%A3o+Silva&room=sala%201"),
            chat("sala 1", "João Silva")
        );
        // Resuming: since (a number) and its epoch.
        assert_eq!(
            route("/chat?room=r&name=n&since=7&epoch=e1"),
            Ok(Route::WebSocket(Endpoint::Chat {
                room: "r".into(),
                name: "n".into(),
                resume: Some(chat::Resume {
                    since: 7,
                    epoch: "e1".into()
                }),
                identity: None,
            }))
        );
        assert_eq!(route("/chat?room=r&since=x").map_err(|e| e.0), Err(400));
        // Malformed escapes, bytes that are not UTF-8, control characters.
        for bad in ["%zz", "%+1", "%4", "%FF", "a%1Bb", "%E2%80%AE"] {
            let target = format!("/chat?room={bad}");
            assert_eq!(route(&target).map_err(|e| e.0), Err(400), "{target}");
        }
        assert_eq!(
            route(&format!("/chat?room={}", "x".repeat(65))).map_err(|e| e.0),
            Err(400)
        );
        assert_eq!(route("/ws/").map_err(|e| e.0), Err(404));
    }

    #[test]
    fn heads_parse_strictly() {
        let get = |text: &str| parse_head(text.as_bytes()).map(|r| r.map(|(_, r)| r));
        let ok = get("GET /metrics HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(
            (ok.uri().path(), ok.version()),
            ("/metrics", Version::HTTP_10)
        );
        let ok = get("GET /ws HTTP/1.1\r\nHost: x\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(header(&ok, "host"), Some("x"));
        assert!(get("GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        assert_eq!(get("POST / HTTP/1.1\r\n\r\n").unwrap_err().0, 405);
        assert_eq!(get("GET / HTTP/2.0\r\n\r\n").unwrap_err().0, 400);
        let many: String = (0..=MAX_REQUEST_HEADERS)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert_eq!(
            get(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err().0,
            431
        );
    }

    #[test]
    fn responses_are_well_formed() {
        let text = String::from_utf8(response(404, "nope\n", "")).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.ends_with("\r\n\r\nnope\n"));
    }

    #[test]
    fn origin_policy() {
        let none: &[String] = &[];
        let policy = OriginPolicy {
            allowed: none,
            public_hosts: none,
        };
        let allows = |origin: &str, host: &str| policy.allows(Some(Some(origin)), Some(host));
        // Non-browser clients send no Origin.
        assert!(policy.allows(None, Some("127.0.0.1:8080")));
        // Same host, any scheme, when the host is one papo is known by.
        assert!(allows("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(allows("https://LOCALHOST:8080", "localhost:8080"));
        assert!(allows("http://[::1]:8080", "[::1]:8080"));
        // Another site, another port, an opaque origin, no Host.
        assert!(!allows("http://evil.example", "127.0.0.1:8080"));
        assert!(!allows("http://127.0.0.1:9090", "127.0.0.1:8080"));
        assert!(!allows("null", "127.0.0.1:8080"));
        assert!(!policy.allows(Some(Some("http://127.0.0.1:8080")), None));
        // DNS rebinding: a matching Host and Origin of an unknown name.
        assert!(!allows("http://evil.example:8080", "evil.example:8080"));
        // An Origin that is not visible ASCII is refused, not ignored.
        assert!(!policy.allows(Some(None), Some("127.0.0.1:8080")));
        // Known by a public name.
        let public = ["chat.example".to_owned()];
        let named = OriginPolicy {
            allowed: none,
            public_hosts: &public,
        };
        assert!(named.allows(
            Some(Some("https://CHAT.example:8080")),
            Some("chat.example:8080")
        ));
        assert!(!named.allows(Some(Some("http://evil.example")), Some("evil.example")));
        // Allowed explicitly, or all.
        let allowed = ["https://app.example".to_owned()];
        let listed = OriginPolicy {
            allowed: &allowed,
            public_hosts: none,
        };
        assert!(listed.allows(Some(Some("https://app.example")), Some("x")));
        assert!(!listed.allows(Some(Some("http://app.example")), Some("x")));
        let any = ["*".to_owned()];
        let open = OriginPolicy {
            allowed: &any,
            public_hosts: none,
        };
        assert!(open.allows(Some(Some("null")), Some("x")));
    }

    mod arbitrary {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_heads_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
                if let Ok(Some((len, _))) = parse_head(&bytes) {
                    prop_assert!(len <= bytes.len());
                }
            }

            #[test]
            fn mutated_heads_parse_or_are_refused(
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            ) {
                let mut head = b"GET /chat?room=sala&name=ana&since=4&epoch=e HTTP/1.1\r\n\
                    Host: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                    .to_vec();
                for (at, byte) in flips {
                    let at = at % head.len();
                    head[at] = byte;
                }
                let _ = parse_head(&head);
            }

            #[test]
            fn arbitrary_targets_route_or_are_refused(target in any::<String>(), key in "[a-z]{1,6}") {
                let _ = route(&target);
                if let Ok(value) = query_param(&target, &key) {
                    prop_assert!(value.len() <= target.len());
                }
            }
        }
    }
}
