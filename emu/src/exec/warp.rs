//! One warp: registers laid out `[slot][lane]`, predicates as lane masks,
//! a PC per lane (independent thread scheduling), and the step loop.
//!
//! Scheduling within a warp: among the lanes that can run (present, not
//! exited, not waiting at a collective or barrier) the lowest PC is chosen
//! and that instruction runs for every runnable lane at that PC (the
//! group). Structured code reconverges by this rule. While the group stays
//! together and ahead of no other lane, it runs without looking at the
//! per-lane PCs (the converged fast path).

use super::cta::Cx;
use super::decode::{DecodedKernel, SlotInit, Special};
use super::inst::{Clock, Compare, Inst, Op, PredSrc, NO_SLOT};
use super::profile::Class;
use super::LaunchError;
use super::LaunchErrorKind;
use crate::numeric::{approx, convert, float};

/// A copy `cp.async` queued on one thread.
#[derive(Debug, Clone, Copy)]
pub struct PendingCopy {
    /// The shared destination.
    pub dst: u64,
    /// The global source.
    pub src: u64,
    /// Bytes written to shared memory.
    pub size: u8,
    /// Bytes read from global memory (the rest is zero-filled).
    pub src_size: u8,
    /// The group it belongs to (the thread's open group when issued).
    pub group: u32,
    /// The issuing instruction.
    pub pc: u32,
}

/// A warp waiting at a CTA barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarrierWait {
    /// The barrier (0..16).
    pub id: u32,
    /// The thread count (`None`: all threads of the CTA).
    pub count: Option<u32>,
    /// The lanes whose `bar.red` predicate was true.
    pub red_bits: u32,
    /// The instruction.
    pub pc: u32,
}

/// What ended a [`Warp::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// No lane can run (all exited, or waiting).
    Stalled,
    /// The instruction budget ran out.
    Yielded,
}

/// What an instruction did to the group.
pub(crate) enum Flow {
    /// Every lane of the group goes to the next instruction.
    Next,
    /// `taken` lanes go to `target`, the rest of the group to the next.
    Jump { taken: u32, target: u32 },
    /// `lanes` exited; the rest of the group goes on.
    Exit(u32),
    /// `lanes` wait here (a collective or barrier); the rest go on.
    Wait(u32),
}

/// One warp's state.
pub struct Warp {
    /// Its index in the CTA.
    pub index: usize,
    /// `[slot][lane]` values.
    pub regs: Vec<u64>,
    /// Predicate lane masks.
    pub preds: Vec<u32>,
    /// Each lane's PC (stale for lanes of the current group).
    pub pc: [u32; 32],
    /// Lanes that exist (the last warp of a CTA may be partial).
    pub present: u32,
    /// Lanes that exited.
    pub exited: u32,
    /// Lanes waiting at a warp collective.
    pub waiting: u32,
    /// The membermask each waiting lane gave.
    pub coll_mask: [u32; 32],
    /// Lanes waiting at a CTA barrier.
    pub at_barrier: u32,
    /// The barrier they wait at.
    pub barrier: Option<BarrierWait>,
    /// The group's PC.
    pub gpc: u32,
    /// The group's lanes (0: no group chosen).
    pub gmask: u32,
    /// The lowest PC of runnable lanes outside the group (`u32::MAX`: none).
    pub other_min: u32,
    /// Each lane's queued `cp.async` copies.
    pub copies: Vec<Vec<PendingCopy>>,
    /// Each lane's open `cp.async` group number.
    pub open_group: [u32; 32],
    /// Warp-collective generation (completed collectives).
    pub sync_gen: u32,
    /// The generation each lane last completed a collective in.
    pub sync_seen: [u32; 32],
    /// Each lane's thread index `(x, y, z)` in the CTA.
    pub tid: [[u32; 3]; 32],
}

macro_rules! lanes {
    ($act:expr, |$l:ident| $body:block) => {{
        let act: u32 = $act;
        if act == u32::MAX {
            #[allow(clippy::needless_range_loop)]
            for $l in 0..32usize $body
        } else {
            let mut m = act;
            while m != 0 {
                let $l = m.trailing_zeros() as usize;
                m &= m - 1;
                $body
            }
        }
    }};
}
pub(crate) use lanes;

impl Warp {
    /// Warp `index` of a CTA of `block` threads, ready for
    /// [`Warp::start`].
    pub fn new(k: &DecodedKernel, index: usize, block: [u32; 3]) -> Self {
        let threads = block[0] * block[1] * block[2];
        let first = index as u32 * 32;
        let n = threads.saturating_sub(first).min(32);
        let present = if n == 32 { u32::MAX } else { (1u32 << n) - 1 };
        let mut tid = [[0u32; 3]; 32];
        for (l, t) in tid.iter_mut().enumerate() {
            let lin = first + l as u32;
            *t = [
                lin % block[0],
                (lin / block[0]) % block[1],
                lin / (block[0] * block[1]),
            ];
        }
        Warp {
            index,
            regs: vec![0; k.num_slots * 32],
            preds: vec![0; k.num_preds],
            pc: [0; 32],
            present,
            exited: !present,
            waiting: 0,
            coll_mask: [0; 32],
            at_barrier: 0,
            barrier: None,
            gpc: 0,
            gmask: 0,
            other_min: u32::MAX,
            copies: vec![Vec::new(); 32],
            open_group: [0; 32],
            sync_gen: 0,
            sync_seen: [0; 32],
            tid,
        }
    }

    /// Resets the warp to the start of the kernel in CTA `cta` (registers
    /// zeroed, then the constant and special slots filled), reusing its
    /// buffers.
    pub fn start(&mut self, k: &DecodedKernel, block: [u32; 3], grid: [u32; 3], cta: [u32; 3]) {
        self.regs.fill(0);
        self.preds.fill(0);
        self.pc = [0; 32];
        self.exited = !self.present;
        self.waiting = 0;
        self.at_barrier = 0;
        self.barrier = None;
        self.gpc = 0;
        self.gmask = 0;
        self.other_min = u32::MAX;
        for c in &mut self.copies {
            c.clear();
        }
        self.open_group = [0; 32];
        self.sync_gen = 0;
        self.sync_seen = [0; 32];
        let nwarps = (block[0] * block[1] * block[2]).div_ceil(32);
        let index = self.index as u32;
        for &(slot, init) in &k.init {
            let base = slot as usize * 32;
            for (l, t) in self.tid.iter().enumerate() {
                self.regs[base + l] = match init {
                    SlotInit::Const(v) => v,
                    SlotInit::Special(sp) => {
                        special_value(sp, l as u32, index, nwarps, t, block, grid, cta)
                    }
                };
            }
        }
    }

    /// Lanes that have not exited.
    #[inline]
    pub fn live(&self) -> u32 {
        self.present & !self.exited
    }

    /// Lanes that can run now.
    #[inline]
    pub fn runnable(&self) -> u32 {
        self.live() & !self.waiting & !self.at_barrier
    }

    /// Whether every lane exited.
    pub fn done(&self) -> bool {
        self.live() == 0
    }

    /// Writes the group's PC into the per-lane PCs and forgets the group.
    pub fn flush_group(&mut self) {
        let (pc, m) = (self.gpc, self.gmask);
        lanes!(m, |l| {
            self.pc[l] = pc;
        });
        self.gmask = 0;
    }

    /// Chooses the group: the runnable lanes at the lowest PC.
    fn regroup(&mut self) -> bool {
        self.flush_group();
        let r = self.runnable();
        if r == 0 {
            return false;
        }
        let mut min = u32::MAX;
        lanes!(r, |l| {
            min = min.min(self.pc[l]);
        });
        let mut g = 0u32;
        let mut other = u32::MAX;
        lanes!(r, |l| {
            if self.pc[l] == min {
                g |= 1 << l;
            } else {
                other = other.min(self.pc[l]);
            }
        });
        self.gpc = min;
        self.gmask = g;
        self.other_min = other;
        true
    }

    /// The lanes of the group for which the guard holds.
    #[inline]
    fn active(&self, guard: Option<PredSrc>) -> u32 {
        match guard {
            None => self.gmask,
            Some(g) => {
                let p = self.preds[g.pred as usize];
                self.gmask & if g.negated { !p } else { p }
            }
        }
    }

    /// Reads a predicate source as a lane mask.
    #[inline]
    pub fn pred_mask(&self, p: PredSrc) -> u32 {
        let v = self.preds[p.pred as usize];
        if p.negated {
            !v
        } else {
            v
        }
    }

    /// Sets predicate `p` to `value` in the `act` lanes.
    #[inline]
    pub fn set_pred(&mut self, p: u32, act: u32, value: u32) {
        let r = &mut self.preds[p as usize];
        *r = (*r & !act) | (value & act);
    }

    /// Register `slot` of `lane`.
    #[inline]
    pub fn reg(&self, slot: u32, lane: usize) -> u64 {
        self.regs[slot as usize * 32 + lane]
    }

    /// Sets register `slot` of `lane` (a sink slot is ignored).
    #[inline]
    pub fn set_reg(&mut self, slot: u32, lane: usize, v: u64) {
        if slot != NO_SLOT {
            self.regs[slot as usize * 32 + lane] = v;
        }
    }

    /// Runs until no lane can run or `budget` warp-instructions ran.
    pub fn run(&mut self, cx: &mut Cx, mut budget: u64) -> Result<RunEnd, LaunchError> {
        let k = cx.k;
        let code = &k.code;
        loop {
            if self.gmask == 0 && !self.regroup() {
                return Ok(RunEnd::Stalled);
            }
            if budget == 0 {
                return Ok(RunEnd::Yielded);
            }
            budget -= 1;
            let pc = self.gpc;
            let Some(inst) = code.get(pc as usize) else {
                return Err(cx.fault(
                    LaunchErrorKind::Trap,
                    self,
                    self.gmask.trailing_zeros(),
                    pc,
                    "ran past the end of the kernel".into(),
                ));
            };
            let act = self.active(inst.guard);
            let flow = if act == 0 {
                Flow::Next
            } else {
                self.exec(cx, inst, pc, act)?
            };
            match flow {
                Flow::Next => {
                    self.gpc = pc + 1;
                    if self.gpc >= self.other_min {
                        self.regroup();
                    }
                }
                Flow::Jump { taken, target } => {
                    if taken == self.gmask {
                        self.gpc = target;
                        if target >= self.other_min {
                            self.regroup();
                        }
                    } else if taken == 0 {
                        self.gpc = pc + 1;
                        if self.gpc >= self.other_min {
                            self.regroup();
                        }
                    } else {
                        let g = self.gmask;
                        lanes!(g, |l| {
                            self.pc[l] = if taken & (1 << l) != 0 {
                                target
                            } else {
                                pc + 1
                            };
                        });
                        self.gmask = 0;
                        self.regroup();
                    }
                }
                Flow::Exit(lanes) => {
                    cx.finish_copies(self, lanes)?;
                    self.exited |= lanes;
                    self.gmask &= !lanes;
                    self.gpc = pc + 1;
                    self.regroup();
                    if self.waiting != 0 {
                        self.try_collectives(cx)?;
                    }
                    cx.barrier_dirty = true;
                }
                Flow::Wait(lanes) => {
                    let g = self.gmask;
                    lanes!(g, |l| {
                        self.pc[l] = if lanes & (1 << l) != 0 { pc } else { pc + 1 };
                    });
                    self.gmask = 0;
                    if self.waiting != 0 {
                        self.try_collectives(cx)?;
                    }
                    self.regroup();
                }
            }
        }
    }

    /// Executes `inst` for the `act` lanes of the group.
    fn exec(&mut self, cx: &mut Cx, inst: &Inst, pc: u32, act: u32) -> Result<Flow, LaunchError> {
        let n = act.count_ones();
        macro_rules! prof {
            ($class:expr) => {
                if let Some(p) = cx.profile.as_mut() {
                    p.count($class, n);
                }
            };
        }
        macro_rules! map1 {
            ($d:expr, $a:expr, |$x:ident| $e:expr) => {{
                let (d, a) = ($d as usize * 32, $a as usize * 32);
                lanes!(act, |l| {
                    let $x = self.regs[a + l];
                    self.regs[d + l] = $e;
                });
            }};
        }
        macro_rules! map2 {
            ($d:expr, $a:expr, $b:expr, |$x:ident, $y:ident| $e:expr) => {{
                let (d, a, b) = ($d as usize * 32, $a as usize * 32, $b as usize * 32);
                lanes!(act, |l| {
                    let ($x, $y) = (self.regs[a + l], self.regs[b + l]);
                    self.regs[d + l] = $e;
                });
            }};
        }
        macro_rules! map3 {
            ($d:expr, $a:expr, $b:expr, $c:expr, |$x:ident, $y:ident, $z:ident| $e:expr) => {{
                let (d, a, b, c) = ($d as usize * 32, $a as usize * 32, $b as usize * 32, $c as usize * 32);
                lanes!(act, |l| {
                    let ($x, $y, $z) = (self.regs[a + l], self.regs[b + l], self.regs[c + l]);
                    self.regs[d + l] = $e;
                });
            }};
        }
        match inst.op {
            Op::Mov { d, a, mask } => {
                prof!(Class::IntAlu);
                map1!(d, a, |x| x & mask)
            }
            Op::Int1 { f, d, a } => {
                prof!(Class::IntAlu);
                map1!(d, a, |x| f(x))
            }
            Op::Int2 { f, d, a, b } => {
                prof!(Class::IntAlu);
                map2!(d, a, b, |x, y| f(x, y))
            }
            Op::Int3 { f, d, a, b, c } => {
                prof!(Class::IntAlu);
                map3!(d, a, b, c, |x, y, z| f(x, y, z))
            }
            Op::Bfi {
                wide,
                d,
                a,
                b,
                pos,
                len,
            } => {
                prof!(Class::IntAlu);
                let bits = if wide { 64 } else { 32 };
                lanes!(act, |l| {
                    let v = super::alu::bfi(
                        self.reg(a, l),
                        self.reg(b, l),
                        self.reg(pos, l),
                        self.reg(len, l),
                        bits,
                    );
                    self.set_reg(d, l, v);
                });
            }
            Op::Selp { d, a, b, p } => {
                prof!(Class::IntAlu);
                let pm = self.pred_mask(p);
                let (d, a, b) = (d as usize * 32, a as usize * 32, b as usize * 32);
                lanes!(act, |l| {
                    self.regs[d + l] = if pm & (1 << l) != 0 {
                        self.regs[a + l]
                    } else {
                        self.regs[b + l]
                    };
                });
            }
            Op::Setp {
                cmp,
                p,
                q,
                a,
                b,
                combine,
            } => {
                let mut r = 0u32;
                let (ab, bb) = (a as usize * 32, b as usize * 32);
                match cmp {
                    Compare::Int(f) => {
                        prof!(Class::IntAlu);
                        lanes!(act, |l| {
                            r |= (f(self.regs[ab + l], self.regs[bb + l]) as u32) << l;
                        });
                    }
                    Compare::F32(c, ftz) => {
                        prof!(Class::FloatAlu);
                        lanes!(act, |l| {
                            let v = float::f32_compare(
                                c,
                                self.regs[ab + l] as u32,
                                self.regs[bb + l] as u32,
                                ftz,
                            );
                            r |= (v as u32) << l;
                        });
                    }
                    Compare::F64(c) => {
                        prof!(Class::FloatAlu);
                        lanes!(act, |l| {
                            r |= (float::f64_compare(c, self.regs[ab + l], self.regs[bb + l])
                                as u32)
                                << l;
                        });
                    }
                }
                let (pv, qv) = match combine {
                    None => (r, !r),
                    Some((op, c)) => {
                        let cm = self.pred_mask(c);
                        (op.apply(r, cm), op.apply(!r, cm))
                    }
                };
                self.set_pred(p, act, pv);
                if let Some(q) = q {
                    self.set_pred(q, act, qv);
                }
            }
            Op::PredLogic { op, d, a, b } => {
                prof!(Class::IntAlu);
                let v = op.apply(self.pred_mask(a), self.pred_mask(b));
                self.set_pred(d, act, v);
            }
            Op::PredMov { d, a } => {
                prof!(Class::IntAlu);
                let v = self.pred_mask(a);
                self.set_pred(d, act, v);
            }
            Op::PredConst { d, value } => {
                prof!(Class::IntAlu);
                self.set_pred(d, act, if value { u32::MAX } else { 0 });
            }
            Op::Pack {
                d,
                parts,
                count,
                bits,
            } => {
                prof!(Class::IntAlu);
                let m = super::alu::mask(bits as u32);
                lanes!(act, |l| {
                    let mut v = 0u64;
                    for (k, &s) in parts[..count as usize].iter().enumerate() {
                        v |= (self.reg(s, l) & m) << (k as u32 * bits as u32);
                    }
                    self.set_reg(d, l, v);
                });
            }
            Op::Unpack {
                parts,
                count,
                bits,
                a,
            } => {
                prof!(Class::IntAlu);
                let m = super::alu::mask(bits as u32);
                lanes!(act, |l| {
                    let v = self.reg(a, l);
                    for (k, &s) in parts[..count as usize].iter().enumerate() {
                        self.set_reg(s, l, (v >> (k as u32 * bits as u32)) & m);
                    }
                });
            }
            Op::ReadClock { d, clock } => {
                prof!(Class::Other);
                cx.clock += 1;
                let t = cx.clock;
                let v = match clock {
                    Clock::Clock32 => t & 0xffff_ffff,
                    Clock::Clock64 => t,
                    Clock::GlobalTimer => t * 1000,
                };
                lanes!(act, |l| {
                    self.set_reg(d, l, v);
                });
            }
            Op::F32Bin { op, mods, d, a, b } => {
                prof!(Class::FloatAlu);
                map2!(
                    d,
                    a,
                    b,
                    |x, y| float::f32_binary(op, x as u32, y as u32, mods) as u64
                )
            }
            Op::F32Fma { mods, d, a, b, c } => {
                prof!(Class::FloatAlu);
                map3!(
                    d,
                    a,
                    b,
                    c,
                    |x, y, z| float::f32_fma(x as u32, y as u32, z as u32, mods) as u64
                )
            }
            Op::F32Un { op, mods, d, a } => {
                prof!(Class::FloatAlu);
                map1!(d, a, |x| float::f32_unary(op, x as u32, mods) as u64)
            }
            Op::F32Approx { op, ftz, d, a } => {
                prof!(Class::FloatAlu);
                map1!(d, a, |x| approx::f32_approx(op, x as u32, ftz) as u64)
            }
            Op::F32DivApprox { ftz, d, a, b } => {
                prof!(Class::FloatAlu);
                map2!(
                    d,
                    a,
                    b,
                    |x, y| approx::f32_div_approx(x as u32, y as u32, ftz) as u64
                )
            }
            Op::F32Copysign { d, a, b } => {
                prof!(Class::FloatAlu);
                map2!(d, a, b, |x, y| float::f32_copysign(x as u32, y as u32)
                    as u64)
            }
            Op::F64Bin { op, rnd, d, a, b } => {
                prof!(Class::FloatAlu);
                map2!(d, a, b, |x, y| float::f64_binary(op, x, y, rnd))
            }
            Op::F64Fma { rnd, d, a, b, c } => {
                prof!(Class::FloatAlu);
                map3!(d, a, b, c, |x, y, z| float::f64_fma(x, y, z, rnd))
            }
            Op::F64Un { op, rnd, d, a } => {
                prof!(Class::FloatAlu);
                map1!(d, a, |x| float::f64_unary(op, x, rnd))
            }
            Op::F64RcpApprox { d, a } => {
                prof!(Class::FloatAlu);
                map1!(d, a, |x| approx::f64_rcp_approx_ftz(x))
            }
            Op::Cvt {
                dst,
                src,
                mods,
                d,
                a,
            } => {
                prof!(Class::FloatAlu);
                let mut bad = None;
                lanes!(act, |l| {
                    match convert::convert(dst, src, self.reg(a, l), mods) {
                        Some(v) => self.set_reg(d, l, v),
                        None => bad = Some(l),
                    }
                });
                if let Some(l) = bad {
                    return Err(cx.fault(
                        LaunchErrorKind::Trap,
                        self,
                        l as u32,
                        pc,
                        "cvt of an undefined combination".into(),
                    ));
                }
            }
            Op::CvtPack { dst, mods, d, a, b } => {
                prof!(Class::FloatAlu);
                map2!(
                    d,
                    a,
                    b,
                    |x, y| convert::pack_x2(dst, x as u32, y as u32, mods) as u64
                )
            }
            Op::LdParam {
                d,
                offset,
                width,
                signed,
                dst_mask,
            } => {
                prof!(Class::Other);
                let v = cx.param(offset, width, signed) & dst_mask;
                lanes!(act, |l| {
                    self.set_reg(d, l, v);
                });
            }
            Op::Ld(ref acc) => return self.load(cx, acc, pc, act).map(|_| Flow::Next),
            Op::St(ref acc) => return self.store(cx, acc, pc, act).map(|_| Flow::Next),
            Op::Atom { .. } => return self.atom(cx, &inst.op, pc, act).map(|_| Flow::Next),
            Op::CpAsync {
                dst,
                src,
                size,
                src_size,
            } => {
                return self
                    .cp_async(cx, dst, src, size, src_size, pc, act)
                    .map(|_| Flow::Next)
            }
            Op::CpAsyncCommit => {
                prof!(Class::CpAsync);
                lanes!(act, |l| {
                    self.open_group[l] += 1;
                });
            }
            Op::CpAsyncWait { n, all } => {
                prof!(Class::CpAsync);
                cx.wait_copies(self, act, n, all)?;
            }
            Op::Ldmatrix {
                num,
                trans,
                d,
                addr,
            } => {
                return self
                    .ldmatrix(cx, num, trans, d, addr, pc, act)
                    .map(|_| Flow::Next)
            }
            Op::Mma { ty, d, a, b, c } => {
                return self.mma(cx, ty, d, a, b, c, pc, act).map(|_| Flow::Next)
            }
            Op::Shfl { mask, .. }
            | Op::Vote { mask, .. }
            | Op::Match { mask, .. }
            | Op::Redux { mask, .. }
            | Op::WarpSync { mask } => {
                prof!(Class::Other);
                return self.arrive_collective(cx, mask, pc, act);
            }
            Op::Bar { .. } => return self.arrive_barrier(cx, &inst.op, pc, act),
            Op::Bra { target } => {
                prof!(Class::Control);
                return Ok(Flow::Jump { taken: act, target });
            }
            Op::Exit => {
                prof!(Class::Control);
                return Ok(Flow::Exit(act));
            }
            Op::Trap => {
                return Err(cx.fault(
                    LaunchErrorKind::Trap,
                    self,
                    act.trailing_zeros(),
                    pc,
                    "trap executed".into(),
                ))
            }
            Op::Nop => prof!(Class::Other),
        }
        Ok(Flow::Next)
    }
}

/// The value of a special register for one lane.
#[allow(clippy::too_many_arguments)]
fn special_value(
    sp: Special,
    lane: u32,
    warp: u32,
    nwarps: u32,
    tid: &[u32; 3],
    block: [u32; 3],
    grid: [u32; 3],
    cta: [u32; 3],
) -> u64 {
    let below = if lane == 0 {
        0
    } else {
        u32::MAX >> (32 - lane)
    };
    (match sp {
        Special::Tid(d) => tid[d as usize],
        Special::Ntid(d) => block[d as usize],
        Special::Ctaid(d) => cta[d as usize],
        Special::Nctaid(d) => grid[d as usize],
        Special::LaneId => lane,
        Special::WarpId => warp,
        Special::NWarpId => nwarps,
        Special::LanemaskEq => 1 << lane,
        Special::LanemaskLt => below,
        Special::LanemaskLe => below | (1 << lane),
        Special::LanemaskGt => !(below | (1 << lane)),
        Special::LanemaskGe => !below,
        Special::SmId => 0,
        Special::NSmId => 1,
    }) as u64
}
