//! What a process uses, read from Linux's `/proc`: resident memory, CPU time, open file
//! descriptors and threads. `/metrics` reports the daemon's own; `casework bench` reads
//! its daemon child's the same way. Elsewhere (no `/proc`) nothing is reported.

/// One reading of a process's use of the machine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub resident_bytes: u64,
    /// User plus system time.
    pub cpu_seconds: f64,
    pub threads: u64,
    /// `None` when the descriptors cannot be listed (another user's process).
    pub open_fds: Option<u64>,
}

/// Clock ticks per second of `/proc/*/stat` times: USER_HZ, 100 on every Linux
/// architecture the engine builds for (the kernel's ABI, not the configured HZ).
const USER_HZ: f64 = 100.0;

/// `pid` is a process id or `self`.
pub fn usage(pid: &str) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    // The fields after the command name, which may hold spaces and parentheses itself.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    // Fields 14 (utime), 15 (stime) and 20 (num_threads) of proc(5), counted from the
    // state, which is field 3.
    let cpu_seconds = (field(11)? + field(12)?) / USER_HZ;
    let threads = field(17)? as u64;
    let resident_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())?;
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64);
    Some(Usage {
        resident_bytes: resident_kib * 1024,
        cpu_seconds,
        threads,
        open_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_measured() {
        let before = usage("self").expect("/proc/self is readable");
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        // Burn some CPU so the time can only grow.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = usage("self").unwrap();
        assert!(after.resident_bytes > 1024 * 1024, "{after:?}");
        assert!(after.threads >= 1, "{after:?}");
        assert!(
            after.cpu_seconds >= before.cpu_seconds,
            "{before:?} {after:?}"
        );
        assert!(
            after.open_fds.unwrap() >= before.open_fds.unwrap(),
            "an open file counts: {before:?} {after:?}"
        );
        drop(file);
        assert_eq!(usage("0"), None, "no such process");
    }
}
