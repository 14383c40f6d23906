//! `grpc.health.v1.Health`, from the standard health proto: `Check`, and
//! `Watch` streams told when the server stops serving.

use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::{SinkExt, StreamExt};
use grpcio::{
    RpcContext, RpcStatus, RpcStatusCode, ServerStreamingSink, Service, ServiceBuilder, UnarySink,
    WriteFlags,
};

use super::codec::{self, Checked};
use super::reply::{finish, refuse_stream};
use crate::metrics::Metrics;
use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};
use crate::queue;

/// Services `grpc.health.v1.Health` reports on; `""` is the whole server.
const HEALTH_SERVICES: [&str; 3] = ["", "chat.ChatService", "grpc.health.v1.Health"];
/// Status updates a watcher may fall behind by before it is dropped.
const WATCH_QUEUE: usize = 8;

/// Serving status and the `Watch` streams to tell when it changes.
pub struct Health {
    state: Mutex<HealthState>,
}

struct HealthState {
    serving: bool,
    /// The server is stopping: NOT_SERVING whatever the engine says.
    stopping: bool,
    watchers: Vec<(String, queue::Sender<HealthCheckResponse>)>,
}

fn health_response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status.into(),
        ..Default::default()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            state: Mutex::new(HealthState {
                serving: true,
                stopping: false,
                watchers: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HealthState> {
        crate::lock(&self.state)
    }

    fn status(serving: bool, service: &str) -> Option<ServingStatus> {
        HEALTH_SERVICES.contains(&service).then_some(if serving {
            ServingStatus::SERVING
        } else {
            ServingStatus::NOT_SERVING
        })
    }

    /// The server is stopping: NOT_SERVING from now on.
    pub fn set_stopping(&self) {
        self.lock().stopping = true;
        self.set_serving(false);
    }

    /// Whether the chat engine is up: NOT_SERVING while it is not.
    pub fn set_engine_up(&self, up: bool) {
        let stopping = self.lock().stopping;
        self.set_serving(up && !stopping);
    }

    /// Sets the status of every service and tells every watcher (of a change).
    fn set_serving(&self, serving: bool) {
        let mut state = self.lock();
        if state.serving == serving {
            return;
        }
        state.serving = serving;
        state
            .watchers
            .retain(|(service, tx)| match Health::status(serving, service) {
                Some(status) => tx.try_send(health_response(status)).is_ok(),
                None => !tx.is_gone(),
            });
    }
}

/// `grpc.health.v1.Health`, from the standard health proto.
#[derive(Clone)]
pub struct HealthServer {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

impl HealthServer {
    /// The service, registered by hand with the size-checking codec.
    pub fn service(self) -> Service {
        let (check, watch) = (self.clone(), self);
        ServiceBuilder::new()
            .add_unary_handler(&codec::HEALTH_CHECK, move |ctx, req, sink| {
                check.check(ctx, req, sink)
            })
            .add_server_streaming_handler(&codec::HEALTH_WATCH, move |ctx, req, sink| {
                watch.watch(ctx, req, sink)
            })
            .build()
    }

    fn check(
        &self,
        ctx: RpcContext,
        req: Checked<HealthCheckRequest>,
        sink: UnarySink<HealthCheckResponse>,
    ) {
        let req = match req.0 {
            Ok(req) => req,
            Err(status) => return finish(&ctx, sink, Err(status), &self.metrics),
        };
        let serving = self.health.lock().serving;
        let reply = match Health::status(serving, &req.service) {
            Some(status) => Ok(health_response(status)),
            None => Err(RpcStatus::with_message(
                RpcStatusCode::NOT_FOUND,
                // Cut, as trailers must stay small whatever a client sent.
                format!(
                    "unknown service {:?}",
                    req.service.chars().take(64).collect::<String>()
                ),
            )),
        };
        finish(&ctx, sink, reply, &self.metrics);
    }

    fn watch(
        &self,
        ctx: RpcContext,
        req: Checked<HealthCheckRequest>,
        mut sink: ServerStreamingSink<HealthCheckResponse>,
    ) {
        let req = match req.0 {
            Ok(req) => req,
            Err(status) => return refuse_stream(&ctx, sink, status, &self.metrics),
        };
        let (tx, rx) = queue::bounded(WATCH_QUEUE);
        {
            let mut state = self.health.lock();
            let first = Health::status(state.serving, &req.service)
                .unwrap_or(ServingStatus::SERVICE_UNKNOWN);
            // A fresh queue has room for the first status.
            let _ = tx.try_send(health_response(first));
            state.watchers.retain(|(_, tx)| !tx.is_gone());
            state.watchers.push((req.service, tx));
        }
        let metrics = Arc::clone(&self.metrics);
        ctx.spawn(async move {
            let mut updates = rx.map(|status| Ok((status, WriteFlags::default())));
            let ended = match sink.send_all(&mut updates).await {
                Ok(()) => sink.close().await,
                Err(e) => Err(e),
            };
            let code = match ended {
                Ok(()) => RpcStatusCode::OK,
                Err(grpcio::Error::RpcFinished(Some(status))) => status.code(),
                Err(_) => RpcStatusCode::CANCELLED,
            };
            metrics.grpc_call(code.into());
        });
    }
}
