//! What the suite reads from /proc: a process's CPU time and resident memory, the kernel's
//! TCP memory and slab.

use std::time::Duration;

/// Clock ticks a second of /proc/PID/stat (CLK_TCK; 100 on Linux).
const TICKS: u64 = 100;

/// A process's user+system CPU time, all its threads, from `/proc/PID/stat`.
pub fn cpu(pid: u32) -> Duration {
    cpu_times(pid).total
}

/// A process's CPU time, all its threads: in all, and the user-space part alone (what its own
/// code costs, without the kernel's work on its behalf).
#[derive(Clone, Copy, Default)]
pub struct CpuTime {
    pub total: Duration,
    pub user: Duration,
}

impl CpuTime {
    /// The time spent since `earlier`.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            total: self.total.saturating_sub(earlier.total),
            user: self.user.saturating_sub(earlier.user),
        }
    }
}

/// Both figures of [`CpuTime`] from one read of `/proc/PID/stat` (zeros if the process is
/// gone). The kernel splits a process's time between user and system by sampling at each
/// tick, so a window of a few seconds (hundreds of ticks) is what makes the split steady.
pub fn cpu_times(pid: u32) -> CpuTime {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the command.
    let user = f.get(11).copied().unwrap_or(0);
    let system = f.get(12).copied().unwrap_or(0);
    CpuTime {
        total: ticks_to_time(user + system),
        user: ticks_to_time(user),
    }
}

fn ticks_to_time(ticks: u64) -> Duration {
    Duration::from_micros(ticks * 1_000_000 / TICKS)
}

/// Read and write system calls a process made so far (`syscr`, `syscw` of `/proc/PID/io`):
/// readv/writev/recv/send count as one each.
pub fn syscalls(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("syscr:"), field("syscw:"))
}

/// A field of `/proc/PID/status` in its first unit (KiB for memory).
pub fn status_field(pid: u32, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Resident memory in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// Threads of a process.
pub fn threads(pid: u32) -> Option<u64> {
    status_field(pid, "Threads:")
}

/// Voluntary plus involuntary context switches of all of a process's threads.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut total = 0;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in text.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// The kernel's memory for sockets: TCP buffer pages (`/proc/net/sockstat`, "mem", in
/// 4 KiB pages) and the slab (`/proc/meminfo`, KiB), and the TCP sockets in use.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel {
    pub tcp_mem_kib: u64,
    pub slab_kib: u64,
    pub tcp_inuse: u64,
}

pub fn kernel() -> Kernel {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let tcp: Vec<&str> = sockstat
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let field = |name: &str| {
        tcp.iter()
            .position(|w| *w == name)
            .and_then(|i| tcp.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let slab = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Kernel {
        tcp_mem_kib: field("mem") * 4,
        slab_kib: slab,
        tcp_inuse: field("inuse"),
    }
}

/// The `p` quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_read_gives_user_time_within_the_total_and_a_gone_process_zeros() {
        // Burn some CPU so that a tick or more is counted.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let me = cpu_times(std::process::id());
        assert!(me.total > Duration::ZERO && me.user <= me.total);
        let gone = cpu_times(u32::MAX);
        assert_eq!((gone.total, gone.user), (Duration::ZERO, Duration::ZERO));
        // A window never goes negative, even against a later reading.
        let back = gone.since(me);
        assert_eq!((back.total, back.user), (Duration::ZERO, Duration::ZERO));
    }
}
