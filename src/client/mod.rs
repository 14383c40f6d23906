//! papo's clients: the seed's two, which print exactly what the seed's Go
//! clients print, and `papo chat`. Failures come back as one-line errors for
//! `main` to report.
//!
//! | file | concern |
//! |---|---|
//! | `connect` | reaching a server: WebSocket, gRPC channels, TLS, errors |
//! | `seed` | `papo ws-client` and `papo grpc-client`, the seed's clients |
//! | `chat` | `papo chat`, a member in a terminal |

mod chat;
mod connect;
mod seed;

pub use chat::{chat_client, format_chat_line, visible, ChatClientConfig, Via};
pub use connect::{describe, grpc_channel, grpc_tls, ws_connect, ClientTls, WsConn};
pub use seed::{grpc_client, ws_client, GrpcClientConfig, WsClientConfig};
