//! Warp collectives (`shfl.sync`, `vote.sync`, `match.sync`, `redux.sync`,
//! `bar.warp.sync`) and arrival at CTA barriers.
//!
//! Collectives (PTX ISA, sm_70+): a lane that reaches one waits until every
//! non-exited lane of its membermask has arrived at a collective with the
//! same membermask; then they all complete together, each lane using the
//! operands of its own instruction (lanes at different PCs must be at the
//! same kind of collective with the same mode, else the check fails). A
//! lane not in its own membermask is undefined behaviour and reported.
//!
//! Values read from lanes that do not take part (outside the membermask,
//! or exited): the ISA leaves them undefined; the emulator gives the
//! reading lane its own value (for `shfl`: as if the source lane were out
//! of range, but with the predicate the ISA's range rule gives).

use super::cta::Cx;
use super::inst::{BarRed, Op, ReduxOp, ShflMode, VoteMode, NO_SLOT};
use super::profile::Class;
use super::warp::{lanes, BarrierWait, Flow, Warp};
use super::{LaunchError, LaunchErrorKind};

impl Warp {
    /// A group arrives at a collective: its lanes wait (they complete in
    /// [`Warp::try_collectives`], at once when the whole membermask is here).
    pub(crate) fn arrive_collective(
        &mut self,
        cx: &mut Cx,
        mask: u32,
        pc: u32,
        act: u32,
    ) -> Result<Flow, LaunchError> {
        let mut bad = None;
        lanes!(act, |l| {
            let m = self.reg(mask, l) as u32;
            if m & (1 << l) == 0 {
                bad = Some((l, m));
            }
            self.coll_mask[l] = m;
        });
        if let Some((l, m)) = bad {
            return Err(cx.fault(
                LaunchErrorKind::CheckFailed,
                self,
                l as u32,
                pc,
                format!("lane {l} is not in its own membermask {m:#010x} (undefined behaviour)"),
            ));
        }
        self.waiting |= act;
        Ok(Flow::Wait(act))
    }

    /// Completes every collective whose membermask has fully arrived.
    pub(crate) fn try_collectives(&mut self, cx: &mut Cx) -> Result<(), LaunchError> {
        let mut pending = self.waiting;
        while pending != 0 {
            let first = pending.trailing_zeros() as usize;
            let m = self.coll_mask[first];
            let mut same = 0u32;
            lanes!(pending, |l| {
                if self.coll_mask[l] == m {
                    same |= 1 << l;
                }
            });
            pending &= !same;
            let required = m & self.live();
            if required & !same == 0 {
                self.complete(cx, same)?;
            }
        }
        Ok(())
    }

    /// Executes the collective the `lanes` wait at.
    fn complete(&mut self, cx: &mut Cx, set: u32) -> Result<(), LaunchError> {
        let k = cx.k;
        let first = set.trailing_zeros() as usize;
        let lead = &k.code[self.pc[first] as usize].op;
        let mut mismatch = None;
        lanes!(set, |l| {
            let op = &k.code[self.pc[l] as usize].op;
            if !same_collective(lead, op) {
                mismatch = Some(l);
            }
        });
        if let Some(l) = mismatch {
            return Err(cx.fault(
                LaunchErrorKind::CheckFailed,
                self,
                l as u32,
                self.pc[l],
                format!(
                    "lanes with membermask {:#010x} wait at different collectives (PTX lines {} and {})",
                    self.coll_mask[first],
                    cx.line(self.pc[first]),
                    cx.line(self.pc[l])
                ),
            ));
        }
        let op_at = |w: &Warp, l: usize| &k.code[w.pc[l] as usize].op;
        match *lead {
            Op::Shfl { mode, .. } => {
                let mut src = [0u64; 32];
                lanes!(set, |l| {
                    if let Op::Shfl { a, .. } = *op_at(self, l) {
                        src[l] = self.reg(a, l);
                    }
                });
                lanes!(set, |l| {
                    if let Op::Shfl { d, p, b, c, .. } = *op_at(self, l) {
                        let (j, pval) = shfl_source(
                            mode,
                            l as u32,
                            self.reg(b, l) as u32,
                            self.reg(c, l) as u32,
                        );
                        let j = if pval { j as usize } else { l };
                        let v = if set & (1 << j) != 0 { src[j] } else { src[l] };
                        self.set_reg(d, l, v);
                        if let Some(p) = p {
                            self.set_pred(p, 1 << l, if pval { u32::MAX } else { 0 });
                        }
                    }
                });
            }
            Op::Vote { mode, .. } => {
                let mut bits = 0u32;
                lanes!(set, |l| {
                    if let Op::Vote { a, .. } = *op_at(self, l) {
                        bits |= self.pred_mask(a) & (1 << l);
                    }
                });
                lanes!(set, |l| {
                    if let Op::Vote { d_pred, d_slot, .. } = *op_at(self, l) {
                        let r = match mode {
                            VoteMode::All => bits == set,
                            VoteMode::Any => bits != 0,
                            VoteMode::Uni => bits == 0 || bits == set,
                            VoteMode::Ballot => {
                                self.set_reg(d_slot, l, bits as u64);
                                continue;
                            }
                        };
                        self.set_pred(d_pred, 1 << l, if r { u32::MAX } else { 0 });
                    }
                });
            }
            Op::Match { all, wide, .. } => {
                let mut vals = [0u64; 32];
                lanes!(set, |l| {
                    if let Op::Match { a, .. } = *op_at(self, l) {
                        let v = self.reg(a, l);
                        vals[l] = if wide { v } else { v & 0xffff_ffff };
                    }
                });
                let v0 = vals[first];
                let mut all_equal = true;
                lanes!(set, |l| {
                    all_equal &= vals[l] == v0;
                });
                lanes!(set, |l| {
                    if let Op::Match { d, p, .. } = *op_at(self, l) {
                        if all {
                            self.set_reg(d, l, if all_equal { set as u64 } else { 0 });
                            if let Some(p) = p {
                                self.set_pred(p, 1 << l, if all_equal { u32::MAX } else { 0 });
                            }
                        } else {
                            let mut eq = 0u32;
                            lanes!(set, |j| {
                                if vals[j] == vals[l] {
                                    eq |= 1 << j;
                                }
                            });
                            self.set_reg(d, l, eq as u64);
                        }
                    }
                });
            }
            Op::Redux { op, .. } => {
                let mut acc: Option<u32> = None;
                lanes!(set, |l| {
                    if let Op::Redux { a, .. } = *op_at(self, l) {
                        let v = self.reg(a, l) as u32;
                        acc = Some(match acc {
                            None => v,
                            Some(x) => redux(op, x, v),
                        });
                    }
                });
                let r = acc.unwrap_or(0) as u64;
                lanes!(set, |l| {
                    if let Op::Redux { d, .. } = *op_at(self, l) {
                        self.set_reg(d, l, r);
                    }
                });
            }
            _ => {}
        }
        self.sync_gen += 1;
        let g = self.sync_gen;
        lanes!(set, |l| {
            self.pc[l] += 1;
            self.sync_seen[l] = g;
        });
        self.waiting &= !set;
        Ok(())
    }

    /// A group arrives at a CTA barrier (`bar.sync`, `barrier.sync`,
    /// `bar.red`, `bar.arrive`).
    ///
    /// The ISA (`barrier`): the instruction makes the executing thread wait
    /// for all non-exited threads of its warp, marks the warp's arrival, and
    /// (`.sync`, `.red`) waits for the non-exited threads of all other warps
    /// taking part; exited threads do not hold a barrier up. `bar.*` is the
    /// `.aligned` form: every non-exited thread of the warp must execute the
    /// same instruction together (checked). With a thread count, each warp
    /// arriving counts as 32 threads (barriers count warps; the count must be
    /// a multiple of the warp size).
    pub(crate) fn arrive_barrier(
        &mut self,
        cx: &mut Cx,
        op: &Op,
        pc: u32,
        act: u32,
    ) -> Result<Flow, LaunchError> {
        let Op::Bar {
            id,
            count,
            aligned,
            arrive,
            red,
        } = *op
        else {
            return Ok(Flow::Next);
        };
        if aligned {
            self.check_aligned(cx, pc, act, false)?;
        }
        let l0 = act.trailing_zeros() as usize;
        let idv = self.reg(id, l0);
        let countv = if count == NO_SLOT {
            None
        } else {
            Some(self.reg(count, l0) as u32)
        };
        let mut nonuniform = false;
        lanes!(act, |l| {
            nonuniform |= self.reg(id, l) != idv
                || (count != NO_SLOT && Some(self.reg(count, l) as u32) != countv);
        });
        if idv >= 16 || nonuniform {
            return Err(cx.fault(
                LaunchErrorKind::CheckFailed,
                self,
                l0 as u32,
                pc,
                format!("barrier id {idv} (must be 0..15 and the same for the whole warp; count {countv:?} likewise)"),
            ));
        }
        if let Some(c) = countv {
            if c == 0 || c % 32 != 0 {
                return Err(cx.fault(
                    LaunchErrorKind::CheckFailed,
                    self,
                    l0 as u32,
                    pc,
                    format!("barrier thread count {c} is not a positive multiple of the warp size"),
                ));
            }
        }
        if let Some(p) = cx.profile.as_mut() {
            p.count(Class::Barrier, act.count_ones());
        }
        if arrive {
            cx.arrivals[idv as usize] += 1;
            cx.barrier_dirty = true;
            return Ok(Flow::Next);
        }
        if let Some(prev) = self.barrier {
            if prev.id != idv as u32 {
                return Err(cx.fault(
                    LaunchErrorKind::CheckFailed,
                    self,
                    l0 as u32,
                    pc,
                    format!(
                        "lanes of one warp wait at different barriers ({} and {idv})",
                        prev.id
                    ),
                ));
            }
        }
        let red_bits = match red {
            Some((_, c)) => self.pred_mask(c) & act,
            None => 0,
        };
        let prev_bits = self.barrier.map_or(0, |b| b.red_bits);
        self.barrier = Some(BarrierWait {
            id: idv as u32,
            count: countv,
            red_bits: prev_bits | red_bits,
            pc,
        });
        self.at_barrier |= act;
        cx.barrier_dirty = true;
        Ok(Flow::Wait(act))
    }

    /// Whether the warp has fully arrived at barrier `id`.
    pub(crate) fn arrived_at(&self, id: u32) -> bool {
        self.barrier.is_some_and(|b| b.id == id)
            && self.live() & !self.at_barrier == 0
            && self.live() != 0
    }

    /// Releases the warp from its barrier, writing `bar.red` results.
    pub(crate) fn release(&mut self, cx: &Cx, red_total: (u32, u32, u32)) {
        let Some(b) = self.barrier.take() else { return };
        let (popc, all, any) = red_total;
        if let Op::Bar {
            red: Some((r, _)), ..
        } = cx.k.code[b.pc as usize].op
        {
            let m = self.at_barrier;
            match r {
                BarRed::Popc(d) => lanes!(m, |l| {
                    self.set_reg(d, l, popc as u64);
                }),
                BarRed::And(p) => self.set_pred(p, m, if all != 0 { u32::MAX } else { 0 }),
                BarRed::Or(p) => self.set_pred(p, m, if any != 0 { u32::MAX } else { 0 }),
            }
        }
        let m = self.at_barrier;
        lanes!(m, |l| {
            self.pc[l] = b.pc + 1;
        });
        self.at_barrier = 0;
    }
}

/// Whether two waiting lanes' instructions are the same collective.
fn same_collective(a: &Op, b: &Op) -> bool {
    match (a, b) {
        (Op::Shfl { mode: x, .. }, Op::Shfl { mode: y, .. }) => x == y,
        (Op::Vote { mode: x, .. }, Op::Vote { mode: y, .. }) => x == y,
        (
            Op::Match {
                all: x, wide: xw, ..
            },
            Op::Match {
                all: y, wide: yw, ..
            },
        ) => x == y && xw == yw,
        (Op::Redux { op: x, .. }, Op::Redux { op: y, .. }) => x == y,
        (Op::WarpSync { .. }, Op::WarpSync { .. }) => true,
        _ => false,
    }
}

/// The source lane and predicate of `shfl.sync` (PTX ISA pseudocode):
/// `c` packs the clamp value (bits 0-4) and the segment mask (bits 8-12).
pub fn shfl_source(mode: ShflMode, lane: u32, b: u32, c: u32) -> (u32, bool) {
    let bval = (b & 0x1f) as i32;
    let cval = (c & 0x1f) as i32;
    let segmask = ((c >> 8) & 0x1f) as i32;
    let lane = lane as i32;
    let max_lane = (lane & segmask) | (cval & !segmask);
    let min_lane = lane & segmask;
    let (j, p) = match mode {
        ShflMode::Up => {
            let j = lane - bval;
            (j, j >= max_lane)
        }
        ShflMode::Down => {
            let j = lane + bval;
            (j, j <= max_lane)
        }
        ShflMode::Bfly => {
            let j = lane ^ bval;
            (j, j <= max_lane)
        }
        ShflMode::Idx => {
            let j = min_lane | (bval & !segmask);
            (j, j <= max_lane)
        }
    };
    if p {
        (j as u32, true)
    } else {
        (lane as u32, false)
    }
}

fn redux(op: ReduxOp, x: u32, v: u32) -> u32 {
    match op {
        ReduxOp::Add => x.wrapping_add(v),
        ReduxOp::MinU => x.min(v),
        ReduxOp::MinS => (x as i32).min(v as i32) as u32,
        ReduxOp::MaxU => x.max(v),
        ReduxOp::MaxS => (x as i32).max(v as i32) as u32,
        ReduxOp::And => x & v,
        ReduxOp::Or => x | v,
        ReduxOp::Xor => x ^ v,
    }
}
