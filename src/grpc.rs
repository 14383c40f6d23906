//! The gRPC server: gRPC C-core through grpcio. Handlers run on grpcio's
//! completion-queue threads, so they only compute and hand the reply back;
//! nothing here blocks.

use std::sync::Arc;

use grpcio::{
    ChannelBuilder, Environment, RpcContext, ServerBuilder, ServerCredentials, UnarySink,
};
use log::{debug, info};

use crate::chat;
use crate::proto::chat::{Message, Response};
use crate::proto::chat_grpc::{self, ChatService};

/// Limits of the gRPC server.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// Completion-queue (poll) threads.
    pub threads: usize,
    /// Largest message received or sent; larger ones fail with RESOURCE_EXHAUSTED.
    pub max_message_size: usize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_message_size: 4 << 20,
        }
    }
}

/// The seed's `ChatService`.
#[derive(Clone, Default)]
pub struct ChatServer;

impl ChatService for ChatServer {
    fn send_message(&mut self, ctx: RpcContext, msg: Message, sink: UnarySink<Response>) {
        debug!(
            "grpc SendMessage from {:?}, {} bytes",
            msg.sender,
            msg.text.len()
        );
        let reply = Response {
            reply: chat::grpc_reply(&msg.text),
            ..Default::default()
        };
        let sent = sink.success(reply);
        ctx.spawn(async move {
            if let Err(e) = sent.await {
                debug!("grpc SendMessage reply not delivered: {e}");
            }
        });
    }
}

/// A started gRPC server; dropping it shuts the server down.
pub struct GrpcServer {
    /// Held for its `Drop`, which shuts the server down.
    _server: grpcio::Server,
    addr: String,
}

impl GrpcServer {
    /// Binds `addr` (`host:port`, port 0 picks a free one) and starts serving.
    pub fn start(addr: &str, config: &GrpcConfig) -> Result<GrpcServer, String> {
        let (host, _) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("invalid gRPC address '{addr}': expected HOST:PORT"))?;
        let env = Arc::new(Environment::new(config.threads.max(1)));
        let max_len = i32::try_from(config.max_message_size).unwrap_or(i32::MAX);
        // C-core sets SO_REUSEPORT by default, which would let a second papo
        // silently share a port that is already in use.
        let args = ChannelBuilder::new(Arc::clone(&env))
            .reuse_port(false)
            .max_receive_message_len(max_len)
            .max_send_message_len(max_len)
            .build_args();
        let mut server = ServerBuilder::new(env)
            .channel_args(args)
            .register_service(chat_grpc::create_chat_service(ChatServer))
            .build()
            .map_err(|e| format!("cannot create the gRPC server: {e}"))?;
        let port = server
            .add_listening_port(addr, ServerCredentials::insecure())
            .map_err(|_| {
                format!("cannot listen for gRPC on {addr}: address in use or not available")
            })?;
        server.start();
        let addr = format!("{host}:{port}");
        info!("grpc listening on {addr}");
        Ok(GrpcServer {
            _server: server,
            addr,
        })
    }

    /// The bound address, with the port the system picked for port 0.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}
