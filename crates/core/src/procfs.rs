//! Process memory as the kernel sees it (/proc/self/status), for bench and metrics.

/// Peak resident set size (VmHWM) in bytes, if the kernel reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident set size (VmRSS) in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib(&status, key)
}

fn parse_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_status_lines() {
        let s = "Name:\tx\nVmHWM:\t   51234 kB\nVmRSS:\t  4000 kB\n";
        assert_eq!(super::parse_kib(s, "VmHWM:"), Some(51234));
        assert_eq!(super::parse_kib(s, "VmSwap:"), None);
        assert!(super::peak_rss_bytes().unwrap_or(0) > 0 || cfg!(not(target_os = "linux")));
    }
}
