//! How many connection threads this process can really have. Every
//! WebSocket connection is a thread and a descriptor, and the kernel caps
//! both in several places; past some of them (the map count) starting a
//! thread does not fail but aborts the process. So papo works the ceiling
//! out at start, says which limit binds, and refuses connections past it.

use std::fs;

/// Memory mappings one thread takes: its stack and guard page, and the
/// signal stack Rust gives every thread and its guard page.
pub const MAPS_PER_THREAD: u64 = 4;
/// Kept free of the map count for what else the process maps as it runs
/// (allocator arenas, gRPC, TLS).
const MAPS_HEADROOM: u64 = 1024;
/// Kept free of the thread and process counts for papo's own other threads
/// and whatever else the machine starts meanwhile.
const THREADS_HEADROOM: u64 = 64;
/// Descriptors kept free besides one per WebSocket connection: listeners,
/// gRPC connections, log files.
pub const FD_HEADROOM: u64 = 64;

/// One limit on connection threads, as read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// The limit, as its owner names it (`vm.max_map_count`, …).
    pub name: &'static str,
    /// Its value now.
    pub value: u64,
    /// How many more connections it allows this process.
    pub connections: u64,
    /// What it takes besides the connections (in use now, and headroom),
    /// and what each connection takes of it.
    taken: u64,
    per_connection: u64,
    /// How to set it, `{}` standing for the value.
    raise: &'static str,
}

impl Bound {
    fn new(name: &'static str, value: u64, taken: u64, per_connection: u64) -> Bound {
        Bound {
            name,
            value,
            connections: value.saturating_sub(taken) / per_connection,
            taken,
            per_connection,
            raise: "",
        }
    }

    fn raised_by(self, raise: &'static str) -> Bound {
        Bound { raise, ..self }
    }

    /// The value it needs for `connections`.
    pub fn needed_for(&self, connections: u64) -> u64 {
        connections
            .saturating_mul(self.per_connection)
            .saturating_add(self.taken)
    }

    /// The line that sets it high enough for `connections`.
    pub fn raise_for(&self, connections: u64) -> String {
        self.raise
            .replace("{}", &self.needed_for(connections).to_string())
    }
}

/// What the limits are read from: the kernel's numbers and what is in use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readings {
    pub max_map_count: Option<u64>,
    /// Mappings this process has now.
    pub maps: u64,
    pub threads_max: Option<u64>,
    pub pid_max: Option<u64>,
    /// Threads on the whole machine now.
    pub machine_threads: Option<u64>,
    /// The cgroup's `pids.max` (`None`: "max", or no pids controller) and
    /// its `pids.current`.
    pub cgroup_pids: Option<(u64, u64)>,
    /// `RLIMIT_NPROC`'s soft limit when it applies (not to root).
    pub nproc: Option<u64>,
    /// Threads of this process now.
    pub threads: u64,
    /// `RLIMIT_NOFILE`'s soft limit, and the descriptors open now.
    pub nofile: Option<u64>,
    pub open_fds: u64,
}

impl Readings {
    /// Reads this process's and this machine's numbers; what cannot be read
    /// is left out (the limit is then not known to bind).
    pub fn now() -> Readings {
        let number = |path: &str| {
            fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        let count = |path: &str| fs::read_dir(path).map_or(0, |d| d.count() as u64);
        let (nproc, nofile) = crate::sys::thread_and_file_limits();
        Readings {
            max_map_count: number("/proc/sys/vm/max_map_count"),
            maps: fs::read("/proc/self/maps")
                .map_or(0, |m| m.iter().filter(|&&b| b == b'\n').count() as u64),
            threads_max: number("/proc/sys/kernel/threads-max"),
            pid_max: number("/proc/sys/kernel/pid_max"),
            // The fourth field of loadavg: "running/total" scheduling entities.
            machine_threads: fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|l| l.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok()),
            cgroup_pids: cgroup_pids(),
            nproc: nproc.filter(|_| !crate::sys::is_root()),
            threads: count("/proc/self/task"),
            nofile,
            open_fds: count("/proc/self/fd"),
        }
    }

    /// Every limit known, each with the connections it allows.
    pub fn bounds(&self) -> Vec<Bound> {
        let mut bounds = Vec::new();
        if let Some(max) = self.max_map_count {
            let taken = self.maps.saturating_add(MAPS_HEADROOM);
            bounds.push(
                Bound::new("vm.max_map_count", max, taken, MAPS_PER_THREAD)
                    .raised_by("sysctl -w vm.max_map_count={}"),
            );
        }
        if let Some(used) = self.machine_threads {
            let taken = used.saturating_add(THREADS_HEADROOM);
            if let Some(max) = self.threads_max {
                bounds.push(
                    Bound::new("kernel.threads-max", max, taken, 1)
                        .raised_by("sysctl -w kernel.threads-max={}"),
                );
            }
            if let Some(max) = self.pid_max {
                bounds.push(
                    Bound::new("kernel.pid_max", max, taken, 1)
                        .raised_by("sysctl -w kernel.pid_max={} (4194304 at most)"),
                );
            }
        }
        if let Some((max, used)) = self.cgroup_pids {
            let taken = used.saturating_add(THREADS_HEADROOM);
            bounds.push(
                Bound::new("the cgroup's pids.max", max, taken, 1)
                    .raised_by("TasksMax={} in the systemd unit (or the cgroup's pids.max)"),
            );
        }
        if let Some(max) = self.nproc {
            let taken = self.threads.saturating_add(THREADS_HEADROOM);
            bounds.push(
                Bound::new("RLIMIT_NPROC", max, taken, 1)
                    .raised_by("ulimit -u {} (LimitNPROC= in a systemd unit)"),
            );
        }
        if let Some(max) = self.nofile {
            let taken = self.open_fds.saturating_add(FD_HEADROOM);
            bounds.push(
                Bound::new("RLIMIT_NOFILE", max, taken, 1)
                    .raised_by("ulimit -n {} (LimitNOFILE= in a systemd unit)"),
            );
        }
        bounds
    }

    /// The limit that allows the fewest connections, if any is known.
    pub fn binding(&self) -> Option<Bound> {
        self.bounds().into_iter().min_by_key(|b| b.connections)
    }
}

/// The pids controller's `pids.max` and `pids.current` for this process's
/// cgroup (v2, or v1's pids hierarchy); `None` when unlimited or unknown.
fn cgroup_pids() -> Option<(u64, u64)> {
    let cgroups = fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let dir = match controllers {
            "" => format!("/sys/fs/cgroup{path}"),
            c if c.split(',').any(|c| c == "pids") => format!("/sys/fs/cgroup/pids{path}"),
            _ => continue,
        };
        let read = |file: &str| fs::read_to_string(format!("{dir}/{file}")).ok();
        let Some(max) = read("pids.max").and_then(|m| m.trim().parse().ok()) else {
            continue;
        };
        let current = read("pids.current")
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(0);
        return Some((max, current));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_allowing_fewest_connections_binds() {
        let readings = Readings {
            max_map_count: Some(65_530),
            maps: 530,
            threads_max: Some(192_739),
            pid_max: Some(32_768),
            machine_threads: Some(768),
            cgroup_pids: None,
            nproc: None,
            threads: 10,
            nofile: Some(20_000),
            open_fds: 36,
        };
        let binding = readings.binding().unwrap();
        assert_eq!(binding.name, "vm.max_map_count");
        assert_eq!(binding.connections, (65_530 - 530 - MAPS_HEADROOM) / 4);
        assert_eq!(
            binding.raise_for(18_000),
            format!(
                "sysctl -w vm.max_map_count={}",
                18_000 * 4 + 530 + MAPS_HEADROOM
            )
        );
        let few_fds = Readings {
            nofile: Some(1024),
            ..readings.clone()
        };
        assert_eq!(
            few_fds.binding().unwrap().connections,
            1024 - 36 - FD_HEADROOM
        );
        let cgroup = Readings {
            cgroup_pids: Some((500, 480)),
            ..readings
        };
        let binding = cgroup.binding().unwrap();
        assert_eq!(
            (binding.name, binding.connections),
            ("the cgroup's pids.max", 0)
        );
        assert!(Readings::default().binding().is_none());
    }

    #[test]
    fn this_machine_has_a_ceiling() {
        let binding = Readings::now().binding().expect("some limit is readable");
        assert!(binding.connections > 0, "{binding:?}");
    }
}
