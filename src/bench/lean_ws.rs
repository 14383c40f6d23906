//! The bench's WebSocket client: the handshake and frames written and parsed
//! here, with one `send` and, as a rule, one `recv` per message, as lean as
//! the floor's TCP client. Client and server share the machine's cores, so a
//! heavier client would lower the WebSocket rows for reasons of its own: this
//! way the ratios to the floor measure the server.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

const TEXT: OpCode = OpCode::Data(Data::Text);
const BINARY: OpCode = OpCode::Data(Data::Binary);
const CONTINUATION: OpCode = OpCode::Data(Data::Continue);

/// The connection under the frames: TCP, or TLS over it for `wss://`.
enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    fn socket(&self) -> &TcpStream {
        match self {
            Conn::Plain(socket) => socket,
            Conn::Tls(tls) => tls.get_ref(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(socket) => socket.read(buf),
            Conn::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(socket) => socket.write(buf),
            Conn::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(socket) => socket.flush(),
            Conn::Tls(tls) => tls.flush(),
        }
    }
}

/// A client connection that sends one fixed text message, again and again.
pub struct LeanWs {
    stream: Conn,
    payload: Vec<u8>,
    /// The outgoing frame; its mask and masked payload change per send.
    frame: Vec<u8>,
    /// Received bytes not yet parsed: `inbuf[start..end]`.
    inbuf: Vec<u8>,
    start: usize,
    end: usize,
    /// A fragmented message being put together.
    fragments: Vec<u8>,
    /// xorshift state for the masks (RFC 6455 wants them unpredictable to
    /// intermediaries, not cryptographically strong).
    rng: u64,
}

/// One parsed frame: its FIN bit, opcode, and where its payload lies.
#[derive(Debug, PartialEq)]
pub struct FrameAt {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: std::ops::Range<usize>,
}

/// Parses the server frame at the start of `buf` with tungstenite's header
/// parser: `Ok(None)` while it is incomplete.
pub fn parse_frame(buf: &[u8]) -> Result<Option<FrameAt>, String> {
    let mut cursor = io::Cursor::new(buf);
    let Some((header, len)) = FrameHeader::parse(&mut cursor).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    if header.mask.is_some() {
        return Err("the server sent a masked frame".into());
    }
    let start = cursor.position() as usize;
    let len = usize::try_from(len).map_err(|_| "a frame too large for this machine")?;
    if buf.len() - start < len {
        return Ok(None);
    }
    Ok(Some(FrameAt {
        fin: header.is_final,
        opcode: header.opcode,
        payload: start..start + len,
    }))
}

/// Frames `payload` as a client frame (masked with `mask`) into `out`.
pub fn client_frame(opcode: OpCode, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.clear();
    let header = FrameHeader {
        opcode,
        mask: Some(mask),
        ..FrameHeader::default()
    };
    // Formatting into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

/// `ws://host:port/path?query` (or `wss://`) as (`host:port`,
/// `/path?query`, whether it is TLS).
fn split_url(url: &str) -> Result<(&str, &str, bool), String> {
    let (rest, tls) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err(format!("{url}: only ws:// and wss:// URLs are supported")),
    };
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..], tls),
        None => (rest, "/", tls),
    })
}

/// TLS to `authority`'s host, trusting `ca` (or the system's CAs).
fn tls_over(socket: TcpStream, authority: &str, ca: Option<&Path>) -> Result<Conn, String> {
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))?;
    let config = papo::tls::client_config(ca).map_err(|e| e.to_string())?;
    let session = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    Ok(Conn::Tls(Box::new(StreamOwned::new(session, socket))))
}

impl LeanWs {
    /// Opens a connection to `url` that will send `payload` as text.
    pub fn connect(
        url: &str,
        payload: &[u8],
        seed: u64,
        ca: Option<&Path>,
    ) -> Result<LeanWs, String> {
        let (authority, path, tls) = split_url(url)?;
        let socket =
            TcpStream::connect(authority).map_err(|e| format!("cannot connect to {url}: {e}"))?;
        socket.set_nodelay(true).map_err(|e| e.to_string())?;
        let stream = match tls {
            true => tls_over(socket, authority, ca)?,
            false => Conn::Plain(socket),
        };
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut ws = LeanWs {
            stream,
            payload: payload.to_vec(),
            frame: Vec::with_capacity(payload.len() + 14),
            inbuf: vec![0; 64 << 10],
            start: 0,
            end: 0,
            fragments: Vec::new(),
            rng: (clock ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1,
        };
        ws.handshake(authority, path)
            .map_err(|e| format!("{url}: {e}"))?;
        Ok(ws)
    }

    /// The opening handshake; bytes the server sends right after its
    /// response (a chat room's JOIN) stay in the buffer.
    fn handshake(&mut self, authority: &str, path: &str) -> Result<(), String> {
        let key = tungstenite::handshake::client::generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        self.stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let head_end = loop {
            if let Some(i) = self.inbuf[..self.end]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
            {
                break i + 4;
            }
            if self.end == self.inbuf.len() {
                return Err("response head too large".into());
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.inbuf[..head_end]);
        let status = head.lines().next().unwrap_or("");
        if !status.starts_with("HTTP/1.1 101") {
            return Err(format!("no upgrade: {status}"));
        }
        let accept = derive_accept_key(key.as_bytes());
        if !head.lines().any(|l| {
            l.to_ascii_lowercase()
                == format!("sec-websocket-accept: {}", accept.to_ascii_lowercase())
        }) {
            return Err("wrong Sec-WebSocket-Accept".into());
        }
        self.start = head_end;
        Ok(())
    }

    pub fn fd(&self) -> RawFd {
        self.stream.socket().as_raw_fd()
    }

    pub fn set_nonblocking(&self) -> Result<(), String> {
        self.stream
            .socket()
            .set_nonblocking(true)
            .map_err(|e| e.to_string())
    }

    fn mask(&mut self) -> [u8; 4] {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng as u32).to_le_bytes()
    }

    /// Sends the message once.
    pub fn send(&mut self) -> io::Result<()> {
        let mask = self.mask();
        client_frame(TEXT, &self.payload, mask, &mut self.frame);
        self.stream.write_all(&self.frame)
    }

    /// Blocks for the next data message and tells whether it equals
    /// `expected`.
    pub fn receive(&mut self, expected: &[u8]) -> Result<bool, String> {
        loop {
            if let Some(same) = self.next_message(|m| m == expected)? {
                return Ok(same);
            }
            self.fill()?;
        }
    }

    /// Hands every data message that has arrived to `each`, reading until
    /// the (non-blocking) socket has no more.
    pub fn drain(&mut self, mut each: impl FnMut(&[u8])) -> Result<(), String> {
        loop {
            while self.next_message(&mut each)?.is_some() {}
            if !self.fill()? {
                return Ok(());
            }
        }
    }

    /// The next whole data message in the buffer, given to `f`; `None` when
    /// more bytes are needed. Pings are answered; a close frame is an error.
    fn next_message<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, String> {
        loop {
            let Some(frame) = parse_frame(&self.inbuf[self.start..self.end])? else {
                return Ok(None);
            };
            let payload = self.start + frame.payload.start..self.start + frame.payload.end;
            self.start = payload.end;
            match frame.opcode {
                TEXT | BINARY if frame.fin && self.fragments.is_empty() => {
                    return Ok(Some(f(&self.inbuf[payload])))
                }
                TEXT | BINARY | CONTINUATION => {
                    self.fragments.extend_from_slice(&self.inbuf[payload]);
                    if frame.fin {
                        let result = f(&self.fragments);
                        self.fragments.clear();
                        return Ok(Some(result));
                    }
                }
                OpCode::Control(Control::Ping) => {
                    let mask = self.mask();
                    let mut pong = Vec::with_capacity(payload.len() + 6);
                    client_frame(
                        OpCode::Control(Control::Pong),
                        &self.inbuf[payload],
                        mask,
                        &mut pong,
                    );
                    self.stream
                        .write_all(&pong)
                        .map_err(|e| format!("send: {e}"))?;
                }
                OpCode::Control(Control::Pong) => {}
                OpCode::Control(Control::Close) => {
                    return Err("the server closed the connection".into())
                }
                op => return Err(format!("the server sent a frame with opcode {op}")),
            }
        }
    }

    /// Reads more bytes, first making room by moving the unparsed rest (or
    /// growing for a frame larger than the buffer). `false`: none yet on a
    /// non-blocking socket.
    fn fill(&mut self) -> Result<bool, String> {
        if self.start > 0 {
            self.inbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.inbuf.len() {
            self.inbuf.resize(self.inbuf.len() * 2, 0);
        }
        match self.stream.read(&mut self.inbuf[self.end..]) {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(n) => {
                self.end += n;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// Sends a close frame (1000) and ends the connection.
    pub fn close(mut self) {
        let mask = self.mask();
        let mut close = Vec::with_capacity(8);
        client_frame(
            OpCode::Control(Control::Close),
            &1000u16.to_be_bytes(),
            mask,
            &mut close,
        );
        let _ = self.stream.write_all(&close);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_tungstenite() {
        use tungstenite::protocol::frame::FrameHeader;
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload = vec![b'x'; len];
            let mut out = Vec::new();
            client_frame(TEXT, &payload, [1, 2, 3, 4], &mut out);
            let mut cursor = io::Cursor::new(&out[..]);
            let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert_eq!(length as usize, len);
            assert_eq!(header.mask, Some([1, 2, 3, 4]));
            let mut body = out[cursor.position() as usize..].to_vec();
            for (i, b) in body.iter_mut().enumerate() {
                *b ^= [1, 2, 3, 4][i % 4];
            }
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn parses_server_frames() {
        // Text "hi", FIN.
        assert_eq!(
            parse_frame(&[0x81, 2, b'h', b'i']).unwrap(),
            Some(FrameAt {
                fin: true,
                opcode: TEXT,
                payload: 2..4
            })
        );
        // Incomplete header, payload and extended length.
        assert_eq!(parse_frame(&[0x81]).unwrap(), None);
        assert_eq!(parse_frame(&[0x81, 3, b'h']).unwrap(), None);
        assert_eq!(parse_frame(&[0x82, 126, 1]).unwrap(), None);
        // 16-bit length.
        let mut long = vec![0x02, 126, 0x01, 0x00];
        long.resize(4 + 256, 0);
        assert_eq!(
            parse_frame(&long).unwrap(),
            Some(FrameAt {
                fin: false,
                opcode: BINARY,
                payload: 4..260
            })
        );
        // A masked frame from a server is a protocol error.
        assert!(parse_frame(&[0x81, 0x82, 0, 0, 0, 0, 1, 2]).is_err());
    }

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("ws://127.0.0.1:80/chat?room=a").unwrap(),
            ("127.0.0.1:80", "/chat?room=a", false)
        );
        assert_eq!(split_url("ws://h:1").unwrap(), ("h:1", "/", false));
        assert_eq!(split_url("wss://h:1/ws").unwrap(), ("h:1", "/ws", true));
        assert!(split_url("http://h:1/ws").is_err());
    }
}
