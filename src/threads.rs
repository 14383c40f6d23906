//! What papo's own threads have in common: the small stack of a helper
//! thread, and how an accept loop waits out a failing `accept`.

use std::io;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Stack of papo's helper threads (keepalive, flusher, deadlines, a gRPC
/// TLS relay), which run shallow.
pub const HELPER_STACK: usize = 64 << 10;

/// How long an accept loop backs off when `accept` fails (out of
/// descriptors or memory) instead of spinning.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Starts a helper thread named `name` on a [`HELPER_STACK`].
pub fn spawn_helper<T: Send + 'static>(
    name: &str,
    run: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    thread::Builder::new()
        .name(name.into())
        .stack_size(HELPER_STACK)
        .spawn(run)
}
