//! SIGINT and SIGTERM, received synchronously by one thread with `sigwait`
//! instead of in an async handler, so shutdown is ordinary code.

use std::io;
use std::mem::MaybeUninit;

/// The shutdown signals, blocked in every thread so that only
/// [`ShutdownSignals::wait`] receives them.
pub struct ShutdownSignals {
    set: libc::sigset_t,
}

impl ShutdownSignals {
    /// Blocks SIGINT and SIGTERM in the calling thread and in every thread it
    /// starts afterwards (they inherit the mask): call it first in `main`.
    pub fn block() -> io::Result<ShutdownSignals> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set before anything reads it;
        // the calls only touch that local set and this thread's signal mask.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            let mut set = set.assume_init();
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
                0 => Ok(ShutdownSignals { set }),
                err => Err(io::Error::from_raw_os_error(err)),
            }
        }
    }

    /// Waits for the next SIGINT or SIGTERM and returns its number.
    pub fn wait(&self) -> i32 {
        loop {
            let mut signal = 0;
            // SAFETY: both pointers are to live locals of the right types.
            if unsafe { libc::sigwait(&self.set, &mut signal) } == 0 {
                return signal;
            }
        }
    }
}

pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// Raises the open-file limit to its hard maximum, as a server that holds
/// one descriptor per connection needs, and returns the limit now in force.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the local struct only.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}
