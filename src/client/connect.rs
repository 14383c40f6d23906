//! How papo's clients reach a server: WebSocket connections and gRPC
//! channels, over TLS when asked (a CA of the user's, or the system's), and
//! gRPC errors as one readable line.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use grpcio::{Channel, ChannelBuilder, ChannelCredentialsBuilder, EnvBuilder};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, WebSocket};

use crate::tls;

/// A client WebSocket connection, as every papo client and the bench open it.
pub type WsConn = WebSocket<MaybeTlsStream<TcpStream>>;

/// How a client speaks TLS: to `wss://` URLs always, to gRPC with `grpc`.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub grpc: bool,
    /// The CAs to trust (default: the system's).
    pub ca: Option<PathBuf>,
    /// A certificate and key to show a server that asks (mutual TLS).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Connects to a WebSocket URL with a 4 KiB read buffer: tungstenite zeroes
/// its default 128 KiB before every read, which would make a bench client,
/// not the server, the bottleneck (see the README's benchmarks). A `wss://`
/// URL is reached over TLS, trusting `tls.ca`.
pub fn ws_connect(url: &str, tls: &ClientTls) -> Result<WsConn, String> {
    let config = WebSocketConfig::default().read_buffer_size(4 << 10);
    let fail = |e: &dyn std::fmt::Display| format!("cannot connect to {url}: {e}");
    if !url.starts_with("wss://") {
        return tungstenite::client::connect_with_config(url, Some(config), 3)
            .map(|(ws, _)| ws)
            .map_err(|e| fail(&e));
    }
    let trust = tls::client_config(tls.ca.as_deref()).map_err(|e| fail(&e))?;
    let request = url.into_client_request().map_err(|e| fail(&e))?;
    let host = request.uri().host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = request.uri().port_u16().unwrap_or(443);
    let socket = TcpStream::connect((host, port)).map_err(|e| fail(&e))?;
    socket.set_nodelay(true).map_err(|e| fail(&e))?;
    let connector = Connector::Rustls(trust);
    tungstenite::client_tls_with_config(request, socket, Some(config), Some(connector))
        .map(|(ws, _)| ws)
        .map_err(|e| fail(&e))
}

/// `builder` set up for TLS when `tls.grpc` is set.
pub fn grpc_tls(builder: ChannelBuilder, tls: &ClientTls) -> Result<ChannelBuilder, String> {
    if !tls.grpc {
        return Ok(builder);
    }
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let mut credentials =
        ChannelCredentialsBuilder::new().root_cert(read(&tls::trusted_cas(tls.ca.as_deref()))?);
    if let Some((cert, key)) = &tls.identity {
        credentials = credentials.cert(read(cert)?, read(key)?);
    }
    Ok(builder.set_credentials(credentials.build()))
}

/// A gRPC channel to `addr`, over TLS when `tls.grpc` is set.
pub fn grpc_channel(addr: &str, tls: &ClientTls) -> Result<Channel, String> {
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    Ok(grpc_tls(ChannelBuilder::new(env), tls)?.connect(addr))
}

/// A gRPC error as one readable line.
pub fn describe(error: &grpcio::Error) -> String {
    match error {
        grpcio::Error::RpcFailure(status) if status.message().is_empty() => {
            format!("{:?}", status.code())
        }
        grpcio::Error::RpcFailure(status) => format!("{:?}: {}", status.code(), status.message()),
        other => other.to_string(),
    }
}

/// The server's close frame as one line.
pub(super) fn closed_by_server(frame: Option<CloseFrame>) -> String {
    match frame {
        Some(f) => format!(
            "the server closed the connection: {} {}",
            u16::from(f.code),
            f.reason
        ),
        None => "the server closed the connection".to_owned(),
    }
}
