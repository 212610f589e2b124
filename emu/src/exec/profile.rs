//! The dynamic profile of a launch: thread-instructions by class, bytes
//! moved, shared-memory wavefronts (per warp-level request: the most
//! distinct 4-byte words any one of the 32 banks is asked for) and global
//! sectors (distinct 32-byte sectors per warp-level request).

use std::fmt;

/// The class of an instruction, for the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `mma`
    Mma,
    /// `ldmatrix`
    Ldmatrix,
    /// shared loads
    SharedLoad,
    /// shared stores (and shared atomics)
    SharedStore,
    /// global loads
    GlobalLoad,
    /// global stores (and global atomics)
    GlobalStore,
    /// `cp.async` and its commit/wait
    CpAsync,
    /// CTA barriers
    Barrier,
    /// integer and bit arithmetic, moves, predicates, `cvt` between integers
    IntAlu,
    /// float arithmetic and conversions
    FloatAlu,
    /// branches, exits
    Control,
    /// everything else (warp collectives, parameter loads, clocks)
    Other,
}

/// The number of classes.
pub const CLASSES: usize = 12;

const CLASS_NAMES: [&str; CLASSES] = [
    "mma",
    "ldmatrix",
    "shared load",
    "shared store",
    "global load",
    "global store",
    "cp.async",
    "barrier",
    "integer ALU",
    "float ALU",
    "control",
    "other",
];

/// The dynamic profile of one launch (instruction counts by class, bytes
/// moved, shared-memory wavefronts, global sectors); `Display` prints it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// Thread-instructions executed (an `mma` counts once per lane).
    pub thread_instructions: u64,
    /// Warp-level instructions executed.
    pub warp_instructions: u64,
    /// Thread-instructions per [`Class`] (indexed by `Class as usize`).
    pub by_class: [u64; CLASSES],
    /// Bytes read from shared memory (loads, `ldmatrix`).
    pub shared_load_bytes: u64,
    /// Bytes written to shared memory.
    pub shared_store_bytes: u64,
    /// Bytes read from global memory.
    pub global_load_bytes: u64,
    /// Bytes written to global memory.
    pub global_store_bytes: u64,
    /// Bytes copied by `cp.async`.
    pub cp_async_bytes: u64,
    /// Warp-level shared-memory requests.
    pub shared_requests: u64,
    /// Their wavefronts.
    pub shared_wavefronts: u64,
    /// The fewest wavefronts those requests could take: per request, its
    /// distinct 4-byte words over the 32 banks, rounded up. Equal to
    /// `shared_wavefronts` when no request has a bank conflict.
    pub shared_ideal_wavefronts: u64,
    /// Warp-level global requests.
    pub global_requests: u64,
    /// Their 32-byte sectors.
    pub global_sectors: u64,
    /// CTAs run.
    pub ctas: u64,
}

impl Profile {
    /// Counts one warp-level instruction of `class` executed by `lanes` threads.
    #[inline]
    pub fn count(&mut self, class: Class, lanes: u32) {
        self.warp_instructions += 1;
        self.thread_instructions += lanes as u64;
        self.by_class[class as usize] += lanes as u64;
    }

    /// Counts one warp-level load or store (atomics count as stores) of
    /// `bytes` per lane by `lanes` threads, to shared or global memory, and,
    /// given the byte ranges it touched, the request's wavefronts or sectors.
    pub fn memory(
        &mut self,
        shared: bool,
        store: bool,
        lanes: u32,
        bytes: u64,
        ranges: Option<&[(u64, u64)]>,
    ) {
        let moved = bytes * lanes as u64;
        let (class, total) = match (shared, store) {
            (false, false) => (Class::GlobalLoad, &mut self.global_load_bytes),
            (false, true) => (Class::GlobalStore, &mut self.global_store_bytes),
            (true, false) => (Class::SharedLoad, &mut self.shared_load_bytes),
            (true, true) => (Class::SharedStore, &mut self.shared_store_bytes),
        };
        *total += moved;
        self.count(class, lanes);
        match ranges {
            Some(r) if shared => self.shared_request(r),
            Some(r) => self.global_request(r),
            None => {}
        }
    }

    /// Counts one warp-level shared request touching the given byte ranges.
    pub fn shared_request(&mut self, ranges: &[(u64, u64)]) {
        let mut words: Vec<u64> = Vec::with_capacity(ranges.len() * 4);
        for &(a, len) in ranges {
            let mut w = a / 4;
            while w * 4 < a + len {
                words.push(w);
                w += 1;
            }
        }
        words.sort_unstable();
        words.dedup();
        let mut per_bank = [0u32; 32];
        for w in &words {
            per_bank[(w % 32) as usize] += 1;
        }
        self.shared_requests += 1;
        self.shared_wavefronts += per_bank.iter().copied().max().unwrap_or(0).max(1) as u64;
        self.shared_ideal_wavefronts += words.len().div_ceil(32).max(1) as u64;
    }

    /// Counts one warp-level global request touching the given byte ranges.
    pub fn global_request(&mut self, ranges: &[(u64, u64)]) {
        let mut sectors: Vec<u64> = Vec::with_capacity(ranges.len());
        for &(a, len) in ranges {
            let mut s = a / 32;
            while s * 32 < a + len {
                sectors.push(s);
                s += 1;
            }
        }
        sectors.sort_unstable();
        sectors.dedup();
        self.global_requests += 1;
        self.global_sectors += sectors.len() as u64;
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} thread-instructions ({} warp-level) in {} CTAs",
            self.thread_instructions, self.warp_instructions, self.ctas
        )?;
        for (name, n) in CLASS_NAMES.iter().zip(self.by_class) {
            if n > 0 {
                writeln!(f, "  {name:<13} {n:>14}")?;
            }
        }
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        writeln!(
            f,
            "  shared: {} B loaded, {} B stored, {} requests, {} wavefronts ({:.2} per request; \
             {} without bank conflicts, {:.2}x)",
            self.shared_load_bytes,
            self.shared_store_bytes,
            self.shared_requests,
            self.shared_wavefronts,
            ratio(self.shared_wavefronts, self.shared_requests),
            self.shared_ideal_wavefronts,
            ratio(self.shared_wavefronts, self.shared_ideal_wavefronts)
        )?;
        writeln!(
            f,
            "  global: {} B loaded, {} B stored, {} requests, {} sectors ({:.2} per request)",
            self.global_load_bytes,
            self.global_store_bytes,
            self.global_requests,
            self.global_sectors,
            ratio(self.global_sectors, self.global_requests)
        )?;
        write!(f, "  cp.async: {} B", self.cp_async_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(stride: u64, width: u64) -> Vec<(u64, u64)> {
        (0..32).map(|l| (l * stride, width)).collect()
    }

    #[test]
    fn shared_wavefronts_follow_the_bank_rule() {
        let mut p = Profile::default();
        // 32 consecutive words: one per bank.
        p.shared_request(&lanes(4, 4));
        assert_eq!((p.shared_wavefronts, p.shared_ideal_wavefronts), (1, 1));
        // Stride of 32 words: every lane in bank 0, a 32-way conflict.
        let mut p = Profile::default();
        p.shared_request(&lanes(128, 4));
        assert_eq!((p.shared_wavefronts, p.shared_ideal_wavefronts), (32, 1));
        // Every lane the same word: a broadcast, no conflict.
        let mut p = Profile::default();
        p.shared_request(&lanes(0, 4));
        assert_eq!((p.shared_wavefronts, p.shared_ideal_wavefronts), (1, 1));
        // 16 bytes per lane, consecutive: 512 bytes take 4 wavefronts at best.
        let mut p = Profile::default();
        p.shared_request(&lanes(16, 16));
        assert_eq!((p.shared_wavefronts, p.shared_ideal_wavefronts), (4, 4));
        // Stride 2 words: 32 words over the 16 even banks, 2-way.
        let mut p = Profile::default();
        p.shared_request(&lanes(8, 4));
        assert_eq!((p.shared_wavefronts, p.shared_ideal_wavefronts), (2, 1));
    }

    #[test]
    fn global_sectors_are_distinct_32_byte_sectors() {
        let mut p = Profile::default();
        p.global_request(&lanes(4, 4));
        assert_eq!(p.global_sectors, 4);
        p.global_request(&lanes(32, 4));
        assert_eq!(p.global_sectors, 4 + 32);
        // Misaligned by 4 bytes: 128 bytes straddle 5 sectors.
        let mut p = Profile::default();
        p.global_request(&(0..32).map(|l| (4 + 4 * l, 4)).collect::<Vec<_>>());
        assert_eq!((p.global_requests, p.global_sectors), (1, 5));
    }
}
