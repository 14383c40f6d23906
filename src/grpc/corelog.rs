//! gRPC C-core's own log lines, through `log` under the target `grpc_core`
//! and rate-limited: C-core logs some refusals a peer can cause (a
//! compression papo does not take, a malformed frame) once per call, at
//! ERROR.

use std::sync::Mutex;
use std::time::Instant;

use log::{log, log_enabled, warn, Level};

use crate::throttle::INTERVAL;
use crate::{lock, sys};

/// Lines shown per interval; the rest are counted and the count is said.
const LINES_PER_INTERVAL: u32 = 10;

/// The current interval: when it began, lines shown and lines held back.
static WINDOW: Mutex<(Option<Instant>, u32, u64)> = Mutex::new((None, 0, 0));

/// Sends C-core's log lines to `log` from now on.
pub fn redirect() {
    sys::redirect_grpc_log(line);
}

fn line(level: Level, file: &str, line: u32, message: &str) {
    if !log_enabled!(target: "grpc_core", level) {
        return;
    }
    {
        let mut window = lock(&WINDOW);
        let (began, shown, held) = &mut *window;
        if began.is_none_or(|t| t.elapsed() >= INTERVAL) {
            if *held > 0 {
                warn!(
                    target: "grpc_core",
                    "{held} more gRPC C-core lines in the last {}s not shown",
                    INTERVAL.as_secs()
                );
            }
            *window = (Some(Instant::now()), 0, 0);
        } else if *shown >= LINES_PER_INTERVAL {
            *held += 1;
            return;
        }
        window.1 += 1;
    }
    // Escaped: a line may quote what a peer sent.
    log!(target: "grpc_core", level, "{} ({file}:{line})", message.escape_debug());
}
