//! Every system call papo makes that std does not wrap, behind safe
//! functions. This is the only file with `unsafe` in the crate: each block
//! says why it is sound, and `clippy::undocumented_unsafe_blocks` keeps it so.

use std::io;
use std::mem::MaybeUninit;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use grpcio::GrpcSlice;

/// Turns a `-1` return into the thread's `errno` as an error.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    match rc {
        -1 => Err(io::Error::last_os_error()),
        rc => Ok(rc),
    }
}

// ---------------------------------------------------------------------------
// Signals

/// A set of signals blocked in every thread, so that only [`SignalSet::wait`]
/// receives them: signal handling as ordinary code on an ordinary thread.
pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    /// Blocks `signals` in the calling thread and in every thread it starts
    /// afterwards (they inherit the mask): call it first in `main`.
    pub fn block(signals: &[libc::c_int]) -> io::Result<SignalSet> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set before anything reads it.
        let mut set = unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            set.assume_init()
        };
        for &signal in signals {
            // SAFETY: `set` is an initialised sigset_t owned by this frame.
            check(unsafe { libc::sigaddset(&mut set, signal) })?;
        }
        // SAFETY: `set` is initialised; a null old-mask pointer is allowed.
        match unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } {
            0 => Ok(SignalSet(set)),
            err => Err(io::Error::from_raw_os_error(err)),
        }
    }

    /// Waits for the next signal of the set and returns its number.
    pub fn wait(&self) -> libc::c_int {
        loop {
            let mut signal = 0;
            // SAFETY: both pointers are to live values of the right types.
            if unsafe { libc::sigwait(&self.0, &mut signal) } == 0 {
                return signal;
            }
        }
    }
}

/// Raises the open-file limit to its hard maximum, as a server that holds
/// one descriptor per connection needs, and returns the limit now in force.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the local struct only.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the local struct only.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) })?;
    }
    Ok(limit.rlim_cur)
}

/// The soft `RLIMIT_NPROC` and `RLIMIT_NOFILE` (`None`: unlimited or
/// unknown).
pub fn thread_and_file_limits() -> (Option<u64>, Option<u64>) {
    let soft = |resource| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the local struct only.
        let rc = unsafe { libc::getrlimit(resource, &mut limit) };
        (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
    };
    (soft(libc::RLIMIT_NPROC), soft(libc::RLIMIT_NOFILE))
}

/// Whether the process runs as root (which `RLIMIT_NPROC` does not bind).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------
// Sockets

/// Resizes a listener's accept queue: std listens with a backlog of 128, and
/// Linux lets a second `listen(2)` change it (capped at `net.core.somaxconn`).
pub fn set_listen_backlog(listener: &TcpListener, backlog: u32) -> io::Result<()> {
    let backlog = libc::c_int::try_from(backlog).unwrap_or(libc::c_int::MAX);
    // SAFETY: listen(2) on a descriptor `listener` keeps open; no memory involved.
    check(unsafe { libc::listen(listener.as_raw_fd(), backlog) }).map(drop)
}

/// Wakes every thread blocked in `accept` on `listener` (it then fails at
/// once) without closing the descriptor: std has no `shutdown` for listeners.
pub fn shutdown_listener(listener: &TcpListener) -> io::Result<()> {
    // SAFETY: shutdown(2) on a descriptor `listener` keeps open; it neither
    // closes the descriptor nor touches memory.
    check(unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) }).map(drop)
}

/// One non-blocking `send(2)`: what the socket takes now. `MSG_NOSIGNAL`
/// turns a closed peer into an error instead of SIGPIPE.
pub fn send_nonblocking(socket: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    if bytes.is_empty() {
        return Ok(0);
    }
    // SAFETY: the pointer and length describe `bytes`, alive for the call.
    let n = unsafe {
        libc::send(
            socket.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    match usize::try_from(n) {
        Ok(n) => Ok(n),
        Err(_) => match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            e => Err(e),
        },
    }
}

/// A descriptor to wait on with [`poll`].
pub type PollFd = libc::pollfd;

/// Reads and drops what has already arrived on `socket`, without waiting,
/// up to a few buffers: a socket closed with unread input sends a reset.
pub fn discard_pending(socket: &TcpStream) {
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        // SAFETY: the pointer and length describe `sink`, alive for the call.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                sink.as_mut_ptr().cast(),
                sink.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            return;
        }
    }
}

/// A [`PollFd`] asking whether `fd` is readable (`out` false) or writable.
pub fn poll_fd(fd: RawFd, out: bool) -> PollFd {
    PollFd {
        fd,
        events: if out { libc::POLLOUT } else { libc::POLLIN },
        revents: 0,
    }
}

/// Whether [`poll`] found anything (readiness, an error or a hang-up) on `fd`.
pub fn is_ready(fd: &PollFd) -> bool {
    fd.revents != 0
}

/// Waits until one of `fds` is ready or `timeout` passes (`None`: forever).
pub fn poll(fds: &mut [PollFd], timeout: Option<Duration>) {
    let ms = timeout.map_or(-1, |d| {
        // Rounded up: a deadline is never polled for too early.
        libc::c_int::try_from(d.as_millis() + 1).unwrap_or(libc::c_int::MAX)
    });
    // SAFETY: `fds` is a live, writable slice of pollfd of the length passed.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

/// An epoll instance: how one thread watches a thousand sockets for input.
pub struct Epoll(OwnedFd);

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for input; its events carry `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) })
            .map(drop)
    }

    /// Watches `fd` for input, edge-triggered: an event when more comes,
    /// not while what came waits unread.
    pub fn add_edge(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) })
            .map(drop)
    }

    /// Watches `fd` for hang-up and errors only (reported whatever the
    /// mask): the socket shut down both ways, or reset.
    pub fn add_for_hangup(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: 0,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) })
            .map(drop)
    }

    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        let null = std::ptr::null_mut();
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, null) })
            .map(drop)
    }

    /// Waits up to `timeout` for ready descriptors; returns their tokens.
    pub fn wait(&self, tokens: &mut Vec<u64>, timeout: Duration) -> io::Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        tokens.clear();
        // SAFETY: `events` is a writable array of the length passed.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                ms,
            )
        };
        match check(n) {
            Ok(n) => tokens.extend(events[..n as usize].iter().map(|e| e.u64)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Threads and CPUs

/// The CPU this thread runs on now (0 if the kernel will not say).
pub fn current_cpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions; glibc reads it from the
    // thread's rseq area without a system call.
    usize::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0)
}

/// Clock ticks per second, the unit of CPU times in `/proc/PID/stat`.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).map_or(100, |hz| hz.max(1))
}

/// Returns to the kernel the pages of this thread's stack below the
/// caller's frame: whatever deeper calls touched before (a handshake, a burst
/// of messages) stops costing memory while the thread sits blocked; whatever
/// later runs that deep faults in fresh zeroed pages.
///
/// Never inlined: it must have a frame of its own, below the caller's, or the
/// range it releases could include the caller's live locals.
#[inline(never)]
pub fn release_stack_below_here() {
    const PAGE: usize = 4096;
    let mut attr = MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: pthread_getattr_np initialises `attr` when it returns 0.
    if unsafe { libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) } != 0 {
        return;
    }
    let mut low: *mut libc::c_void = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: `attr` was initialised above and is destroyed right after use;
    // the out-pointers are to live locals.
    let got = unsafe {
        let got = libc::pthread_attr_getstack(attr.as_ptr(), &mut low, &mut size);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        got
    };
    let here = std::ptr::addr_of!(attr) as usize;
    let low = (low as usize).next_multiple_of(PAGE);
    // Below `here`: the rest of this frame, then madvise's, each with at
    // most a 128-byte red zone.
    let high = here.saturating_sub(512) & !(PAGE - 1);
    if got == 0 && high > low {
        // SAFETY: the range lies within this thread's own stack, below the
        // page holding this frame's deepest live local; nothing lives there.
        unsafe { libc::madvise(low as *mut libc::c_void, high - low, libc::MADV_DONTNEED) };
    }
}

// ---------------------------------------------------------------------------
// gRPC C-core

/// A C-core slice over `bytes` that shares them instead of copying: C-core
/// holds a reference to the `Arc` until it has written the last byte, so a
/// message fanned out to many gRPC members exists once, however many of
/// them have it in flight.
pub fn shared_slice(bytes: Arc<[u8]>) -> GrpcSlice {
    /// C-core's destructor for the slice: drops the reference it held.
    unsafe extern "C" fn release(user_data: *mut libc::c_void) {
        // SAFETY: `user_data` is the `Box<Arc<[u8]>>` leaked below, and
        // C-core calls this exactly once, when the slice's last ref goes.
        drop(unsafe { Box::from_raw(user_data.cast::<Arc<[u8]>>()) });
    }
    let (data, len) = (bytes.as_ptr().cast_mut(), bytes.len());
    let owner = Box::into_raw(Box::new(bytes)).cast::<libc::c_void>();
    let mut slice = GrpcSlice::default();
    // SAFETY: `data..data+len` stays valid and unchanged while `owner` lives
    // (an `Arc<[u8]>` is immutable), and `owner` lives until `release`.
    // C-core only reads through `data`. The empty slice overwritten holds
    // no reference, so nothing leaks.
    unsafe {
        *slice.as_mut_ptr() =
            grpcio_sys::grpc_slice_new_with_user_data(data.cast(), len, Some(release), owner);
    }
    slice
}

/// Hands an accepted connection to the gRPC server, which serves it as if
/// its own listener had accepted it, and returns a watch on it: a second
/// descriptor of the same socket, for [`Epoll::add_for_hangup`] to tell
/// when C-core is done with it (it shuts a connection down both ways
/// before closing it).
pub fn hand_to_grpc(server: &mut grpcio::Server, socket: TcpStream) -> io::Result<OwnedFd> {
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    let watch = OwnedFd::from(socket.try_clone()?);
    let fd = std::os::fd::IntoRawFd::into_raw_fd(socket);
    // SAFETY: `fd` is a connected stream socket whose ownership moves to
    // C-core here: nothing else reads, writes, shuts down or closes it. The
    // watch is another descriptor: it is only polled for hang-up, and
    // closing it does not touch C-core's.
    unsafe { server.add_channel_from_fd(fd) };
    Ok(watch)
}

/// Hands one end of a socket pair to C-core, to serve as a connection (the
/// plaintext side of a TLS connection papo terminates).
pub fn hand_stream_to_grpc(server: &mut grpcio::Server, socket: UnixStream) -> io::Result<()> {
    socket.set_nonblocking(true)?;
    let fd = std::os::fd::IntoRawFd::into_raw_fd(socket);
    // SAFETY: `fd` is a connected stream socket whose ownership moves to
    // C-core here: nothing else reads, writes, shuts down or closes it.
    unsafe { server.add_channel_from_fd(fd) };
    Ok(())
}

// ---------------------------------------------------------------------------
// gRPC C-core's log

/// Where C-core's log lines go: `(level, file, line, message)`.
static GRPC_LOG: OnceLock<fn(log::Level, &str, u32, &str)> = OnceLock::new();

unsafe extern "C" fn grpc_log(args: *mut grpcio_sys::gpr_log_func_args) {
    let Some(handler) = GRPC_LOG.get() else {
        return;
    };
    // SAFETY: C-core passes a valid struct whose strings, NUL-terminated,
    // live for the call; none of them is kept.
    let (file, line, severity, message) = unsafe {
        let args = &*args;
        let text = |p: *const libc::c_char| match p.is_null() {
            true => std::borrow::Cow::Borrowed(""),
            false => std::ffi::CStr::from_ptr(p).to_string_lossy(),
        };
        (
            text(args.file),
            args.line,
            args.severity,
            text(args.message),
        )
    };
    let level = match severity {
        grpcio_sys::gpr_log_severity::GPR_LOG_SEVERITY_ERROR => log::Level::Error,
        grpcio_sys::gpr_log_severity::GPR_LOG_SEVERITY_INFO => log::Level::Info,
        grpcio_sys::gpr_log_severity::GPR_LOG_SEVERITY_DEBUG => log::Level::Debug,
    };
    handler(level, &file, u32::try_from(line).unwrap_or(0), &message);
}

/// Sends gRPC C-core's log lines to `handler`, at the verbosity `log` is
/// set to.
pub fn redirect_grpc_log(handler: fn(log::Level, &str, u32, &str)) {
    let _ = GRPC_LOG.set(handler);
    let verbosity = match log::max_level() {
        log::LevelFilter::Off | log::LevelFilter::Error | log::LevelFilter::Warn => {
            grpcio_sys::gpr_log_severity::GPR_LOG_SEVERITY_ERROR
        }
        log::LevelFilter::Info => grpcio_sys::gpr_log_severity::GPR_LOG_SEVERITY_INFO,
        log::LevelFilter::Debug | log::LevelFilter::Trace => {
            grpcio_sys::gpr_log_severity::GPR_LOG_SEVERITY_DEBUG
        }
    };
    // SAFETY: both only store their argument; `grpc_log` is a function
    // with the signature C-core calls.
    unsafe {
        grpcio_sys::gpr_set_log_verbosity(verbosity);
        grpcio_sys::gpr_set_log_function(Some(grpc_log));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn releasing_the_stack_keeps_live_frames() {
        // Deep frames below, live frames above: after the release, the
        // caller's locals are intact and the released depth works again.
        fn deep(n: u32) -> u64 {
            let block = [u64::from(n); 64];
            if n == 0 {
                return block.iter().sum();
            }
            std::hint::black_box(&block);
            deep(n - 1) + block[7]
        }
        let result = thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                let live = std::hint::black_box([7u8; 2048]);
                let first = deep(200);
                release_stack_below_here();
                let again = deep(200);
                (
                    first,
                    again,
                    live.iter().map(|&b| u64::from(b)).sum::<u64>(),
                )
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(result.0, result.1);
        assert_eq!(result.2, 7 * 2048);
    }

    #[test]
    fn poll_and_epoll_see_a_readable_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let epoll = Epoll::new().unwrap();
        epoll.add(server.as_raw_fd(), 7).unwrap();
        let mut tokens = Vec::new();
        epoll.wait(&mut tokens, Duration::from_millis(10)).unwrap();
        assert!(tokens.is_empty());
        assert_eq!(send_nonblocking(&client, b"x").unwrap(), 1);
        epoll.wait(&mut tokens, Duration::from_secs(5)).unwrap();
        assert_eq!(tokens, [7]);
        epoll.remove(server.as_raw_fd()).unwrap();
        let mut fds = [poll_fd(server.as_raw_fd(), false)];
        poll(&mut fds, Some(Duration::from_secs(5)));
        assert!(is_ready(&fds[0]));
    }
}
