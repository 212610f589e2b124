//! Running a grid: the launch context, one CTA at a time, warp scheduling
//! (fixed or seeded), CTA barriers, deadlock detection, and the reports.

use super::decode::DecodedKernel;
use super::global::GlobalMem;
use super::profile::Profile;
use super::shared::{AccessKind, Accessor, SharedFault, SharedMem, SyncView};
use super::warp::{lanes, Warp};
use super::{LaunchError, LaunchErrorKind};

/// The state of one launch that every warp uses.
pub struct Cx<'a> {
    /// The kernel.
    pub k: &'a DecodedKernel,
    /// The parameter buffer.
    pub params: &'a [u8],
    /// Global memory.
    pub global: GlobalMem<'a>,
    /// The current CTA's shared window.
    pub shared: SharedMem,
    /// Whether the sanitizer checks run.
    pub checks: bool,
    /// The profile, when asked for.
    pub profile: Option<Profile>,
    /// The clock special registers' counter.
    pub clock: u64,
    /// The current CTA.
    pub cta: [u32; 3],
    /// Completed CTA barriers in this CTA.
    pub bar_gen: u32,
    /// Set when a warp arrived at a barrier or threads exited.
    pub barrier_dirty: bool,
    /// Warps that passed `bar.arrive` per barrier since it last completed.
    pub arrivals: [u32; 16],
    /// The block dimensions.
    pub block: [u32; 3],
}

impl Cx<'_> {
    /// The PTX line of instruction `pc`.
    pub fn line(&self, pc: u32) -> u32 {
        self.k.lines.get(pc as usize).copied().unwrap_or(0)
    }

    /// A failure report about `lane` of `warp` at `pc`.
    pub fn fault(
        &self,
        kind: LaunchErrorKind,
        warp: &Warp,
        lane: u32,
        pc: u32,
        msg: String,
    ) -> LaunchError {
        let lane = lane.min(31) as usize;
        let t = warp.tid[lane];
        let what = match kind {
            LaunchErrorKind::InvalidConfig => "invalid launch",
            LaunchErrorKind::IllegalAddress => "illegal address",
            LaunchErrorKind::Misaligned => "misaligned address",
            LaunchErrorKind::CheckFailed => "check failed",
            LaunchErrorKind::Deadlock => "deadlock",
            LaunchErrorKind::Trap => "trap",
        };
        let text = self.k.texts.get(pc as usize).map_or("", |s| s.as_str());
        LaunchError {
            kind,
            report: format!(
                "dropless-emu: {what} in kernel {}: {msg}\n  CTA ({}, {}, {}), thread ({}, {}, {}) (warp {}, lane {lane})\n  PTX line {}: {text}",
                self.k.info.name,
                self.cta[0],
                self.cta[1],
                self.cta[2],
                t[0],
                t[1],
                t[2],
                warp.index,
                self.line(pc)
            ),
        }
    }

    /// The report of a failed shared-memory check.
    #[allow(clippy::too_many_arguments)]
    pub fn shared_fault(
        &self,
        warp: &Warp,
        lane: u32,
        pc: u32,
        f: SharedFault,
        addr: u64,
        len: u64,
        kind: AccessKind,
    ) -> LaunchError {
        let verb = match kind {
            AccessKind::Read => "read",
            AccessKind::Write => "write",
            AccessKind::Atomic => "atomic",
        };
        let (k, msg) = match f {
            SharedFault::OutOfWindow => (
                LaunchErrorKind::IllegalAddress,
                format!(
                    "shared {verb} of {len} bytes at {addr:#x} is outside the CTA's {}-byte shared window",
                    self.shared.len()
                ),
            ),
            SharedFault::Uninitialised => (
                LaunchErrorKind::CheckFailed,
                format!("shared {verb} of {len} bytes at {addr:#x} reads memory no thread of this CTA wrote"),
            ),
            SharedFault::PendingCpAsync => (
                LaunchErrorKind::CheckFailed,
                format!("shared {verb} of {len} bytes at {addr:#x}: cp.async destination read before cp.async.wait_group"),
            ),
            SharedFault::Race { other_tid, other_pc, other_wrote } => {
                let block = [self.block[0], self.block[1]];
                let o = [other_tid % block[0], (other_tid / block[0]) % block[1], other_tid / (block[0] * block[1])];
                (
                    LaunchErrorKind::CheckFailed,
                    format!(
                        "shared-memory race: {verb} of {len} bytes at {addr:#x} and an earlier {} by thread ({}, {}, {}) at PTX line {} ({}) with no barrier or warp synchronisation between them",
                        if other_wrote { "write" } else { "read" },
                        o[0],
                        o[1],
                        o[2],
                        self.line(other_pc),
                        self.k.texts.get(other_pc as usize).map_or("", |s| s.as_str()),
                    ),
                )
            }
        };
        self.fault(k, warp, lane, pc, msg)
    }

    /// `width` bytes of the parameter buffer at `offset` (in range: the
    /// decoder checked the offset against the layout and the launch checked
    /// the buffer size).
    pub fn param(&self, offset: u32, width: u8, signed: bool) -> u64 {
        let at = offset as usize;
        let mut v = 0u64;
        for (i, b) in self.params.iter().skip(at).take(width as usize).enumerate() {
            v |= (*b as u64) << (8 * i);
        }
        if signed {
            super::alu::sext(v, width as u32 * 8)
        } else {
            v
        }
    }

    /// Performs queued copies of `lanes` (all of them, at exit).
    pub fn finish_copies(&mut self, warp: &mut Warp, lanes: u32) -> Result<(), LaunchError> {
        self.wait_copies(warp, lanes, 0, true)
    }

    /// `cp.async.wait_group n` (`all`: `wait_all`) for the `act` lanes.
    pub fn wait_copies(
        &mut self,
        warp: &mut Warp,
        act: u32,
        n: u32,
        all: bool,
    ) -> Result<(), LaunchError> {
        lanes!(act, |l| {
            if warp.copies[l].is_empty() {
                continue;
            }
            let open = warp.open_group[l];
            let mut i = 0;
            while i < warp.copies[l].len() {
                let c = warp.copies[l][i];
                // Committed groups are numbered below `open`; all but the
                // `n` most recent complete.
                let done = all || (c.group < open && open - c.group > n);
                if !done {
                    i += 1;
                    continue;
                }
                warp.copies[l].remove(i);
                let mut data = [0u8; 16];
                if c.src_size > 0 {
                    let Some(r) = self.global.region(c.pc as usize, c.src, c.src_size as u64)
                    else {
                        return Err(self.fault(
                            LaunchErrorKind::IllegalAddress,
                            warp,
                            l as u32,
                            c.pc,
                            format!(
                                "cp.async source {:#x} is no longer inside a live allocation",
                                c.src
                            ),
                        ));
                    };
                    // SAFETY: `region` proved `[src, src + src_size)` lies in a live
                    // allocation kept alive by the launch's view; `data` holds 16 bytes
                    // and src_size <= size <= 16.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            r.ptr_at(c.src),
                            data.as_mut_ptr(),
                            c.src_size as usize,
                        )
                    };
                }
                let who = Accessor {
                    tid: warp.index as u32 * 32 + l as u32,
                    pc: c.pc,
                    bar_gen: self.bar_gen,
                    sync: SyncView {
                        warp: warp.index,
                        sync_seen: &warp.sync_seen,
                        sync_gen: warp.sync_gen,
                    },
                };
                if let Err(f) = self
                    .shared
                    .complete_cp(c.dst, &data[..c.size as usize], &who)
                {
                    return Err(self.shared_fault(
                        warp,
                        l as u32,
                        c.pc,
                        f,
                        c.dst,
                        c.size as u64,
                        AccessKind::Write,
                    ));
                }
            }
        });
        Ok(())
    }
}

/// A small deterministic PRNG (splitmix64) for the seeded schedule.
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Shuffles `v` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// The order CTAs run in: `i -> (a * i + b) mod n` with `a` coprime to
/// `n` (a bijection), `a = 1, b = 0` for the fixed order.
pub struct CtaOrder {
    n: u64,
    a: u64,
    b: u64,
}

impl CtaOrder {
    /// CTAs in linear order.
    pub fn linear(n: u64) -> Self {
        CtaOrder { n, a: 1, b: 0 }
    }

    /// A pseudo-random order of `n` CTAs drawn from `rng`.
    pub fn shuffled(n: u64, rng: &mut SplitMix) -> Self {
        if n < 2 {
            return Self::linear(n);
        }
        let gcd = |mut x: u64, mut y: u64| {
            while y != 0 {
                (x, y) = (y, x % y);
            }
            x
        };
        let mut a = 1 + rng.next_u64() % (n - 1);
        while gcd(a, n) != 1 {
            a = 1 + rng.next_u64() % (n - 1);
        }
        CtaOrder {
            n,
            a,
            b: rng.next_u64() % n,
        }
    }

    /// The linear index of the `i`-th CTA to run.
    pub fn at(&self, i: u64) -> u64 {
        ((self.a as u128 * i as u128 + self.b as u128) % self.n as u128) as u64
    }
}

/// Runs one CTA to completion.
pub fn run_cta(
    cx: &mut Cx,
    warps: &mut [Warp],
    rng: &mut Option<SplitMix>,
) -> Result<(), LaunchError> {
    let mut order: Vec<usize> = (0..warps.len()).collect();
    if let Some(r) = rng.as_mut() {
        r.shuffle(&mut order);
    }
    loop {
        let mut ran = false;
        for &w in &order {
            if warps[w].runnable() == 0 {
                continue;
            }
            let budget = match rng.as_mut() {
                Some(r) => 1 + r.next_u64() % 64,
                None => u64::MAX,
            };
            warps[w].run(cx, budget)?;
            ran = true;
            if cx.barrier_dirty {
                cx.barrier_dirty = false;
                check_barriers(cx, warps);
            }
        }
        if warps.iter().all(|w| w.done()) {
            return Ok(());
        }
        if !ran {
            check_barriers(cx, warps);
            if warps.iter().all(|w| w.runnable() == 0) {
                return Err(deadlock(cx, warps));
            }
        }
    }
}

/// Completes every barrier that all its threads have reached.
fn check_barriers(cx: &mut Cx, warps: &mut [Warp]) {
    for id in 0..16u32 {
        let arrived: Vec<usize> = (0..warps.len())
            .filter(|&w| warps[w].arrived_at(id))
            .collect();
        if arrived.is_empty() {
            continue;
        }
        let count = warps[arrived[0]].barrier.and_then(|b| b.count);
        let complete = match count {
            None => warps
                .iter()
                .enumerate()
                .all(|(i, w)| w.live() == 0 || arrived.contains(&i)),
            Some(c) => (arrived.len() as u64 + cx.arrivals[id as usize] as u64) * 32 >= c as u64,
        };
        if !complete {
            continue;
        }
        let mut popc = 0u32;
        let mut all = 1u32;
        let mut any = 0u32;
        for &w in &arrived {
            let b = warps[w].barrier.map_or(0, |b| b.red_bits);
            popc += b.count_ones();
            any |= b;
            if b != warps[w].at_barrier {
                all = 0;
            }
        }
        for &w in &arrived {
            warps[w].release(cx, (popc, all, (any != 0) as u32));
        }
        cx.arrivals[id as usize] = 0;
        cx.bar_gen += 1;
    }
}

/// The report of a CTA whose threads all wait.
fn deadlock(cx: &Cx, warps: &[Warp]) -> LaunchError {
    let mut lines = Vec::new();
    for w in warps {
        let live = w.live();
        if live == 0 {
            continue;
        }
        let mut l = 0;
        while l < 32 {
            if live & (1 << l) == 0 {
                l += 1;
                continue;
            }
            let pc = w.pc[l];
            let what = if w.at_barrier & (1 << l) != 0 {
                "at a barrier".to_string()
            } else if w.waiting & (1 << l) != 0 {
                format!(
                    "at a warp collective with membermask {:#010x}",
                    w.coll_mask[l]
                )
            } else {
                "runnable".to_string()
            };
            let mut end = l;
            while end + 1 < 32
                && live & (1 << (end + 1)) != 0
                && w.pc[end + 1] == pc
                && (w.at_barrier >> (end + 1)) & 1 == (w.at_barrier >> l) & 1
                && (w.waiting >> (end + 1)) & 1 == (w.waiting >> l) & 1
            {
                end += 1;
            }
            let t0 = w.tid[l];
            let t1 = w.tid[end];
            lines.push(format!(
                "  threads ({}, {}, {})..({}, {}, {}) (warp {}, lanes {l}-{end}) wait {what} at PTX line {}: {}",
                t0[0],
                t0[1],
                t0[2],
                t1[0],
                t1[1],
                t1[2],
                w.index,
                cx.line(pc),
                cx.k.texts.get(pc as usize).map_or("", |s| s.as_str())
            ));
            l = end + 1;
        }
    }
    LaunchError {
        kind: LaunchErrorKind::Deadlock,
        report: format!(
            "dropless-emu: deadlock in kernel {}, CTA ({}, {}, {}): every thread that has not exited waits\n{}",
            cx.k.info.name,
            cx.cta[0],
            cx.cta[1],
            cx.cta[2],
            lines.join("\n")
        ),
    }
}
