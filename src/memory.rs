//! Memory limits, checked before a run allocates: how much memory is
//! available now (the host's `MemAvailable`; the device's free memory is
//! [`crate::cuda::CudaBackend::memory_info`]) and the check that refuses a
//! run whose estimated need exceeds it, saying what would fit. The layer's
//! own estimates are [`crate::MoeConfig::weight_bytes`] and
//! [`crate::MoeConfig::forward_activation_bytes`].

use crate::error::{Error, Result};

/// Bytes of host memory available now without swapping: Linux's
/// `MemAvailable` (from `/proc/meminfo`); `None` where that is unknown.
pub fn available_host_memory() -> Option<u64> {
    parse_mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// The `MemAvailable:  N kB` line of a `/proc/meminfo` text, in bytes.
fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let mut fields = line.split_whitespace();
    let kib: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

/// Refuses a run of `what` that needs `need` bytes of `memory` (`host` or
/// `device`) when only `available` bytes are: [`Error::OutOfMemory`] naming
/// both and `hint()`, what to change so that it fits.
pub fn check_fits(
    what: &str,
    memory: &'static str,
    need: u128,
    available: u64,
    hint: impl FnOnce() -> String,
) -> Result<()> {
    if need <= u128::from(available) {
        return Ok(());
    }
    Err(Error::OutOfMemory {
        what: what.to_string(),
        memory,
        need: u64::try_from(need).unwrap_or(u64::MAX),
        available,
        hint: hint(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_parses() {
        let text = "MemTotal:       131072000 kB\nMemFree:  1 kB\nMemAvailable:   16777216 kB\n";
        assert_eq!(parse_mem_available(text), Some(16 << 30));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: x kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: 5 MB\n"), None);
    }

    #[test]
    fn runs_that_do_not_fit_are_refused_with_the_hint() {
        check_fits("a run", "host", 10, 10, || unreachable!()).unwrap();
        let err = check_fits("a run", "host", 3 << 30, 1 << 30, || "use less".into()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a run needs about 3.0 GiB of host memory, but only 1.0 GiB is available: use less"
        );
    }
}
