//! papo: a blocking WebSocket + gRPC chat server.
//!
//! `ws` is a thread-per-connection tungstenite server on `std::net`, `grpc` a
//! gRPC C-core server; both answer through the transport-free `chat` core,
//! and `server` runs them together in one process.
//!
//! The core first, as the servers drive it: a [`chat::Hub`] holds rooms, a
//! member joins one with a [`chat::Subscriber`] (its way out: the servers'
//! wrap a socket's queue or a stream's, this one a list), and what a member
//! says is numbered and handed to every member, the speaker included, in
//! one order, on the speaker's own thread, before `say` returns.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//!
//! use papo::chat::{Delivery, Hub, Refusal, SendError, Subscriber};
//! use papo::config::ServeConfig;
//!
//! /// A member in memory: what the room hands it, in the order it came.
//! #[derive(Default)]
//! struct Inbox(Mutex<Vec<(u64, String, String)>>);
//!
//! impl Subscriber for Inbox {
//!     fn deliver(&self, delivery: &Arc<Delivery>) -> Result<(), SendError> {
//!         let m = &delivery.message;
//!         let mut seen = self.0.lock().unwrap();
//!         seen.push((m.seq, m.sender.clone(), m.text.clone()));
//!         Ok(())
//!     }
//!
//!     /// Never: this queue is never full.
//!     fn evicted(&self) {}
//! }
//!
//! let hub = Hub::new(ServeConfig::default().chat);
//! let (ana, bob) = (Arc::new(Inbox::default()), Arc::new(Inbox::default()));
//! let ana_member = hub.join("geral", "ana", ana.clone())?;
//! let bob_member = hub.join("geral", "bob", bob.clone())?;
//! ana_member.say("oi, bob")?;
//! bob_member.say("oi, ana")?;
//!
//! // Ana saw her JOIN, Bob's, then both messages; Bob from his JOIN on.
//! // A JOIN is a message with no text, numbered like the rest.
//! let said = |inbox: &Inbox| inbox.0.lock().unwrap().clone();
//! let room = [
//!     (1, "ana".to_owned(), String::new()),
//!     (2, "bob".to_owned(), String::new()),
//!     (3, "ana".to_owned(), "oi, bob".to_owned()),
//!     (4, "bob".to_owned(), "oi, ana".to_owned()),
//! ];
//! assert_eq!(said(&ana), room);
//! assert_eq!(said(&bob), room[1..]);
//!
//! // Leaving is dropping the member: Ana hears it.
//! drop(bob_member);
//! assert_eq!(said(&ana)[4], (5, "bob".to_owned(), String::new()));
//! # Ok::<(), Refusal>(())
//! ```
//!
//! The README's "A way in" names every thread and the files to read in
//! order.

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
