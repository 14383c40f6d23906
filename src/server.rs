//! `papo serve`: both servers in one process, until a signal drains them.
//!
//! gRPC runs on its completion-queue threads, WebSocket on an accept thread
//! plus one thread per connection. Shutdown signals are blocked in every
//! thread and taken by one `signals` thread with `sigwait`, so shutdown is
//! ordinary code on the main thread: stop accepting, close, drain.

use std::fmt;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;

use log::{info, warn};

use crate::auth::Verifier;
use crate::ceiling::Readings;
use crate::chat::{Engine, Hub, Memory};
use crate::config::ServeConfig;
use crate::grpc::{GrpcServer, StartError};
use crate::metrics::Metrics;
use crate::redis::Redis;
use crate::sys::{self, SignalSet};
use crate::tls::{Tls, TlsError};
use crate::ws::WsServer;

/// Why `papo serve` stopped other than by a signal, or could not start.
#[derive(Debug)]
pub enum ServeError {
    /// Shutdown signals could not be blocked.
    Signals(io::Error),
    Grpc(StartError),
    /// The WebSocket port could not be bound.
    WsBind(String, io::Error),
    /// The WebSocket server's accept loop failed.
    WsFailed(io::Error),
    /// A thread of the server could not be started.
    Thread(&'static str, io::Error),
    /// The TLS certificate or key cannot be used.
    Tls(TlsError),
    /// A token key cannot be used.
    Auth(String),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Signals(e) => write!(f, "cannot block shutdown signals: {e}"),
            ServeError::Grpc(e) => write!(f, "{e}"),
            ServeError::WsBind(addr, e) => write!(f, "cannot listen for WebSocket on {addr}: {e}"),
            ServeError::WsFailed(e) => write!(f, "WebSocket server failed: {e}"),
            ServeError::Thread(name, e) => write!(f, "cannot start the {name} thread: {e}"),
            ServeError::Tls(e) => write!(f, "{e}"),
            ServeError::Auth(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// What the main thread waits for while the servers run.
enum Event {
    Signal(i32),
    WsStopped(io::Result<()>),
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// The WebSocket connections this process can hold: `max`, or fewer when a
/// limit on threads or descriptors binds first, which is said in one line
/// with how to raise it. Past the ceiling, connections are answered `503`:
/// past some limits (the map count) a thread that starts aborts the process.
fn thread_ceiling(max: usize) -> usize {
    let Some(binding) = Readings::now().binding() else {
        return max;
    };
    let room = usize::try_from(binding.connections).unwrap_or(usize::MAX);
    if room >= max {
        info!(
            "room for {room} WebSocket connection threads here ({} {} binds first)",
            binding.name, binding.value
        );
        return max;
    }
    warn!(
        "{} ({}) allows about {room} WebSocket connections, fewer than --max-connections {max}: \
         past {room} they are answered 503; to raise it: {}",
        binding.name,
        binding.value,
        binding.raise_for(max as u64)
    );
    room
}

/// Runs both servers until SIGINT or SIGTERM, then drains them. A second
/// signal during the drain exits at once with status 128 + its number.
/// SIGHUP reloads the TLS certificate.
pub fn serve(config: ServeConfig) -> Result<(), ServeError> {
    // Before any thread exists, so that every thread inherits the mask.
    let signals = SignalSet::block(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
        .map_err(ServeError::Signals)?;
    let tls = match &config.tls {
        Some(files) => Some(Tls::load(files.clone()).map_err(ServeError::Tls)?),
        None => None,
    };
    if let Err(e) = sys::raise_fd_limit() {
        warn!("cannot raise the open-file limit: {e}");
    }
    let mut ws_config = config.ws.clone();
    if config.ws_addr.is_some() {
        ws_config.max_connections = thread_ceiling(ws_config.max_connections);
    }
    let metrics = Arc::new(Metrics::new());
    // One hub: browsers and services meet in the same rooms, kept in this
    // process or, shared with other instances, in Redis.
    let redis = match &config.redis {
        Some(redis) => {
            info!("rooms live in {}", redis.target);
            let engine = Redis::start(redis.clone()).map_err(|e| ServeError::Thread("redis", e))?;
            let gauge = Arc::clone(&metrics);
            engine.watch(move |up| gauge.engine_up.store(u64::from(up), Ordering::Relaxed));
            Some(engine)
        }
        None => None,
    };
    let auth = match &config.auth {
        Some(files) => {
            let verifier = Verifier::load(files).map_err(ServeError::Auth)?;
            info!("chat needs a signed token (see papo token)");
            Some(Arc::new(verifier))
        }
        None => {
            info!(
                "chat is open: anyone may join as any name \
                 (--auth-secret-file or --auth-public-key require tokens)"
            );
            None
        }
    };
    let engine: Arc<dyn Engine> = match &redis {
        Some(engine) => Arc::clone(engine) as Arc<dyn Engine>,
        None => Arc::new(Memory {
            history_ttl: config.chat.history_ttl,
        }),
    };
    let hub = Hub::with_engine(config.chat.clone(), engine);
    let grpc = match &config.grpc_addr {
        Some(addr) => Some(
            GrpcServer::start(
                addr,
                &config.grpc,
                Arc::clone(&metrics),
                Arc::clone(&hub),
                tls.clone(),
                auth.clone(),
            )
            .map_err(ServeError::Grpc)?,
        ),
        None => None,
    };
    if let (Some(engine), Some(grpc)) = (&redis, &grpc) {
        engine.watch(grpc.engine_watcher());
    }
    let (events, next_event) = mpsc::channel();
    let mut ws = None;
    if let Some(addr) = &config.ws_addr {
        let listening = |e: io::Error| ServeError::WsBind(addr.clone(), e);
        let server = WsServer::bind(
            addr,
            ws_config,
            Arc::clone(&metrics),
            hub,
            tls.clone(),
            auth,
        )
        .map_err(listening)?;
        let handle = server.handle().map_err(listening)?;
        let events = events.clone();
        let accept = thread::Builder::new()
            .name("ws-accept".into())
            .spawn(move || {
                let _ = events.send(Event::WsStopped(server.run()));
            })
            .map_err(|e| ServeError::Thread("ws-accept", e))?;
        ws = Some((handle, accept));
    }
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            loop {
                let signal = signals.wait();
                if signal == libc::SIGHUP {
                    match &tls {
                        Some(tls) => {
                            tls.reload();
                        }
                        None => info!("SIGHUP: no TLS certificate to reload"),
                    }
                } else if stopping {
                    warn!("{} again: exiting at once", signal_name(signal));
                    std::process::exit(128 + signal);
                } else {
                    stopping = true;
                    let _ = events.send(Event::Signal(signal));
                }
            }
        })
        .map_err(|e| ServeError::Thread("signals", e))?;

    match next_event.recv() {
        Ok(Event::Signal(signal)) => info!(
            "{}: shutting down (again to exit at once), draining for up to {:?}",
            signal_name(signal),
            config.drain_timeout
        ),
        Ok(Event::WsStopped(Err(e))) => return Err(ServeError::WsFailed(e)),
        Ok(Event::WsStopped(Ok(()))) | Err(_) => {}
    }
    let drain = config.drain_timeout;
    thread::scope(|scope| {
        if let Some(grpc) = grpc {
            scope.spawn(move || grpc.shutdown(drain));
        }
        if let Some((handle, accept)) = ws {
            let open = handle.shutdown(drain);
            if open > 0 {
                warn!("{open} WebSocket connections still open after {drain:?}");
            }
            let _ = accept.join();
        }
    });
    info!("shutdown complete");
    Ok(())
}
