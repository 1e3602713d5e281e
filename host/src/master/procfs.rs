//! Resource use of a process, measured by Linux from outside it (`/proc`).

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, fixed at 100 in the
/// Linux user-space ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// Resident memory of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Proportional set size of `pid` in bytes: its resident memory with every page shared
/// with other processes counted as its share. Summed over a group of processes (a
/// browser's) it counts shared pages once, as RSS would not.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Every process whose ancestry leads to `root` (not `root` itself), as found now.
pub fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((pid, parent(pid)?))
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent_pid) = frontier.pop() {
        for &(pid, _) in parents.iter().filter(|(_, ppid)| *ppid == parent_pid) {
            found.push(pid);
            frontier.push(pid);
        }
    }
    found
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split_whitespace().nth(1)?.parse().ok()
}

/// CPU time `pid` has used so far (user + system), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// Memory this machine has, in bytes.
pub fn total_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_this_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 1 << 20);
        // Burn a little CPU so the figure cannot be zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(me).unwrap() > 0.0);
        assert!(total_memory_bytes().unwrap() > 1 << 28);
        assert_eq!(rss_bytes(u32::MAX), None);
        let pss = pss_bytes(me).unwrap();
        assert!(pss > 0 && pss <= rss_bytes(me).unwrap() + (1 << 20));
    }

    #[test]
    fn finds_grandchildren() {
        use std::io::BufRead as _;
        // The shell prints its background child's pid once it has forked it.
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(shell.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let sleeper: u32 = line.trim().parse().unwrap();
        let found = descendants(std::process::id());
        let below_shell = descendants(shell.id());
        let _ = std::process::Command::new("kill").arg(sleeper.to_string()).status();
        let _ = shell.kill();
        let _ = shell.wait();
        assert!(found.contains(&shell.id()) && found.contains(&sleeper), "{found:?}");
        assert_eq!(below_shell, vec![sleeper]);
    }
}
