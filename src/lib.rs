//! papo: a blocking WebSocket + gRPC chat server.
//!
//! `ws` is a thread-per-connection tungstenite server on `std::net`, `grpc` a
//! gRPC C-core server; both answer through the transport-free `chat` core,
//! and `server` runs them together in one process.

pub mod auth;
pub mod ceiling;
pub mod chat;
pub mod client;
pub mod config;
pub mod devcert;
pub mod executor;
pub mod grpc;
mod json;
pub mod metrics;
pub mod proto;
pub mod redis;
pub mod server;
pub mod sys;
mod threads;
mod throttle;
pub mod tls;
pub mod ws;

mod peer;
mod queue;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a mutex, taking over its data even if a thread panicked while holding
/// it: every lock here guards plain bookkeeping that stays consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
