//! Memory instructions of a warp: loads, stores, atomics, `cp.async`,
//! `ldmatrix`, and `mma` (which needs the whole warp's registers).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::cta::Cx;
use super::global::NcConflict;
use super::inst::{Access, Addr, AtomOp, MemSpace, Op, Slot, NO_SLOT};
use super::profile::Class;
use super::shared::{AccessKind, Accessor, SharedFault, SyncView};
use super::warp::{lanes, PendingCopy, Warp};
use super::{LaunchError, LaunchErrorKind};
use crate::numeric::float::{self, F32Mods, F32Op};
use crate::numeric::tensor::{self, MmaType};
use crate::numeric::Rounding;

/// Reads one little-endian element of `width` bytes at `p`.
///
/// # Safety
/// `p` must be valid for reading `width` bytes.
#[inline]
unsafe fn read_elem(p: *const u8, width: u8) -> u64 {
    // SAFETY: the caller guarantees `width` readable bytes; unaligned reads
    // are allowed.
    unsafe {
        match width {
            1 => *p as u64,
            2 => u16::from_le(std::ptr::read_unaligned(p as *const u16)) as u64,
            4 => u32::from_le(std::ptr::read_unaligned(p as *const u32)) as u64,
            _ => u64::from_le(std::ptr::read_unaligned(p as *const u64)),
        }
    }
}

/// Writes the low `width` bytes of `v` at `p`, little-endian.
///
/// # Safety
/// `p` must be valid for writing `width` bytes.
#[inline]
unsafe fn write_elem(p: *mut u8, width: u8, v: u64) {
    // SAFETY: the caller guarantees `width` writable bytes; unaligned writes
    // are allowed.
    unsafe {
        match width {
            1 => *p = v as u8,
            2 => std::ptr::write_unaligned(p as *mut u16, (v as u16).to_le()),
            4 => std::ptr::write_unaligned(p as *mut u32, (v as u32).to_le()),
            _ => std::ptr::write_unaligned(p as *mut u64, v.to_le()),
        }
    }
}

/// Reads `width` little-endian bytes.
fn read_le(bytes: &[u8]) -> u64 {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= (*b as u64) << (8 * i);
    }
    v
}

/// Writes the low `out.len()` bytes of `v`, little-endian.
fn write_le(out: &mut [u8], v: u64) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = (v >> (8 * i)) as u8;
    }
}

impl Warp {
    /// The address a lane computes for `addr`.
    #[inline]
    fn address(&self, addr: Addr, lane: usize) -> u64 {
        let base = if addr.base == NO_SLOT {
            0
        } else {
            self.reg(addr.base, lane)
        };
        base.wrapping_add(addr.offset as u64)
    }

    /// The accessor record of `lane` for the shared-memory checks.
    fn accessor(&self, cx: &Cx, lane: usize, pc: u32) -> Accessor<'_> {
        Accessor {
            tid: self.index as u32 * 32 + lane as u32,
            pc,
            bar_gen: cx.bar_gen,
            sync: SyncView {
                warp: self.index,
                sync_seen: &self.sync_seen,
                sync_gen: self.sync_gen,
            },
        }
    }

    /// Checks a shared access of `lane`, turning a fault into the report.
    fn check_shared(
        &self,
        cx: &mut Cx,
        kind: AccessKind,
        addr: u64,
        len: u64,
        lane: usize,
        pc: u32,
    ) -> Result<(), LaunchError> {
        if !addr.is_multiple_of(len.min(16)) {
            return Err(cx.fault(
                LaunchErrorKind::Misaligned,
                self,
                lane as u32,
                pc,
                format!(
                    "shared address {addr:#x} is not aligned to the access size of {len} bytes"
                ),
            ));
        }
        let who = self.accessor(cx, lane, pc);
        match cx.shared.check(kind, addr, len, &who) {
            Ok(()) => Ok(()),
            Err(f) => Err(cx.shared_fault(self, lane as u32, pc, f, addr, len, kind)),
        }
    }

    /// Checks a global access of `lane` and returns the host pointer.
    fn check_global(
        &self,
        cx: &mut Cx,
        addr: u64,
        len: u64,
        align: u64,
        lane: usize,
        pc: u32,
    ) -> Result<*mut u8, LaunchError> {
        if !addr.is_multiple_of(align) {
            return Err(cx.fault(
                LaunchErrorKind::Misaligned,
                self,
                lane as u32,
                pc,
                format!(
                    "global address {addr:#x} is not aligned to the access size of {align} bytes"
                ),
            ));
        }
        match cx.global.region(pc as usize, addr, len) {
            Some(r) => Ok(r.ptr_at(addr)),
            None => Err(cx.fault(
                LaunchErrorKind::IllegalAddress,
                self,
                lane as u32,
                pc,
                format!(
                    "global access of {len} bytes at {addr:#x} is outside every live allocation"
                ),
            )),
        }
    }

    /// Records an `.nc` read or a write for the `.nc` check.
    fn track_nc(
        &self,
        cx: &mut Cx,
        addr: u64,
        len: u64,
        nc: bool,
        lane: usize,
        pc: u32,
    ) -> Result<(), LaunchError> {
        let Some(r) = cx.global.region(pc as usize, addr, len) else {
            return Ok(());
        };
        match cx.global.track(pc as usize, &r, addr, len, nc) {
            Ok(()) => Ok(()),
            Err(c) => {
                let msg = match c {
                    NcConflict::WriteAfterNcRead => format!(
                        "store to {addr:#x} ({len} bytes), which this launch read through ld.global.nc (the .nc path may not see writes made during the launch)"
                    ),
                    NcConflict::NcReadAfterWrite => format!(
                        "ld.global.nc of {addr:#x} ({len} bytes), which this launch wrote (the .nc path may not see writes made during the launch)"
                    ),
                };
                Err(cx.fault(LaunchErrorKind::CheckFailed, self, lane as u32, pc, msg))
            }
        }
    }

    /// `ld.global` / `ld.shared`.
    pub(crate) fn load(
        &mut self,
        cx: &mut Cx,
        acc: &Access,
        pc: u32,
        act: u32,
    ) -> Result<(), LaunchError> {
        let width = acc.width as u64;
        let total = width * acc.count as u64;
        let profiling = cx.profile.is_some();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        lanes!(act, |l| {
            let addr = self.address(acc.addr, l);
            let src: *const u8 = match acc.space {
                MemSpace::Global => {
                    let ptr = self.check_global(cx, addr, total, total, l, pc)?;
                    if cx.checks && acc.nc {
                        self.track_nc(cx, addr, total, true, l, pc)?;
                    }
                    ptr
                }
                MemSpace::Shared => {
                    self.check_shared(cx, AccessKind::Read, addr, total, l, pc)?;
                    cx.shared.bytes[addr as usize..(addr + total) as usize].as_ptr()
                }
            };
            for k in 0..acc.count as usize {
                // SAFETY: `[addr, addr + total)` was checked to lie in a live
                // allocation (kept alive by the launch's view) or in the shared
                // window; element `k` lies inside it.
                let raw = unsafe { read_elem(src.add(k * width as usize), acc.width) };
                let v = if acc.signed {
                    super::alu::sext(raw, acc.width as u32 * 8)
                } else {
                    raw
                };
                let s = acc.regs[k];
                if s != NO_SLOT {
                    self.regs[s as usize * 32 + l] = v & acc.dst_mask;
                }
            }
            if profiling {
                ranges.push((addr, total));
            }
        });
        if let Some(p) = cx.profile.as_mut() {
            p.memory(
                acc.space == MemSpace::Shared,
                false,
                act.count_ones(),
                total,
                Some(&ranges),
            );
        }
        Ok(())
    }

    /// `st.global` / `st.shared`.
    pub(crate) fn store(
        &mut self,
        cx: &mut Cx,
        acc: &Access,
        pc: u32,
        act: u32,
    ) -> Result<(), LaunchError> {
        let width = acc.width as u64;
        let total = width * acc.count as u64;
        let profiling = cx.profile.is_some();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        lanes!(act, |l| {
            let addr = self.address(acc.addr, l);
            let dst: *mut u8 = match acc.space {
                MemSpace::Global => {
                    let ptr = self.check_global(cx, addr, total, total, l, pc)?;
                    if cx.checks {
                        self.track_nc(cx, addr, total, false, l, pc)?;
                    }
                    ptr
                }
                MemSpace::Shared => {
                    self.check_shared(cx, AccessKind::Write, addr, total, l, pc)?;
                    cx.shared.bytes[addr as usize..(addr + total) as usize].as_mut_ptr()
                }
            };
            for k in 0..acc.count as usize {
                let v = self.reg(acc.regs[k], l);
                // SAFETY: as in `load`, for writing.
                unsafe { write_elem(dst.add(k * width as usize), acc.width, v) };
            }
            if profiling {
                ranges.push((addr, total));
            }
        });
        if let Some(p) = cx.profile.as_mut() {
            p.memory(
                acc.space == MemSpace::Shared,
                true,
                act.count_ones(),
                total,
                Some(&ranges),
            );
        }
        Ok(())
    }

    /// `atom` / `red`.
    pub(crate) fn atom(
        &mut self,
        cx: &mut Cx,
        op: &Op,
        pc: u32,
        act: u32,
    ) -> Result<(), LaunchError> {
        let Op::Atom {
            space,
            op,
            wide,
            d,
            addr,
            b,
            c,
        } = *op
        else {
            return Ok(());
        };
        let size = if wide { 8 } else { 4 };
        lanes!(act, |l| {
            let a = self.address(addr, l);
            let bv = self.reg(b, l);
            let cv = if c == NO_SLOT { 0 } else { self.reg(c, l) };
            let old = match space {
                MemSpace::Global => {
                    let ptr = self.check_global(cx, a, size, size, l, pc)?;
                    if cx.checks {
                        self.track_nc(cx, a, size, false, l, pc)?;
                    }
                    if wide {
                        // SAFETY: `ptr` is 8-byte aligned (checked) and inside a live
                        // allocation for the launch; other launches never touch it
                        // through non-atomic accesses concurrently with this one.
                        let cell = unsafe { AtomicU64::from_ptr(ptr as *mut u64) };
                        rmw64(cell, op, bv, cv)
                    } else {
                        // SAFETY: as above, 4-byte aligned.
                        let cell = unsafe { AtomicU32::from_ptr(ptr as *mut u32) };
                        rmw32(cell, op, bv as u32, cv as u32) as u64
                    }
                }
                MemSpace::Shared => {
                    self.check_shared(cx, AccessKind::Atomic, a, size, l, pc)?;
                    let at = a as usize;
                    let bytes = &mut cx.shared.bytes[at..at + size as usize];
                    let old = read_le(bytes);
                    let new = if wide {
                        apply64(op, old, bv, cv)
                    } else {
                        apply32(op, old as u32, bv as u32, cv as u32) as u64
                    };
                    write_le(bytes, new);
                    old
                }
            };
            if d != NO_SLOT {
                self.regs[d as usize * 32 + l] = old;
            }
        });
        if let Some(p) = cx.profile.as_mut() {
            p.memory(
                space == MemSpace::Shared,
                true,
                act.count_ones(),
                size,
                None,
            );
        }
        Ok(())
    }

    /// `cp.async`: checks both sides now, queues the copy on the thread.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cp_async(
        &mut self,
        cx: &mut Cx,
        dst: Addr,
        src: Addr,
        size: u8,
        src_size: Slot,
        pc: u32,
        act: u32,
    ) -> Result<(), LaunchError> {
        let profiling = cx.profile.is_some();
        let mut ranges = Vec::new();
        lanes!(act, |l| {
            let d = self.address(dst, l);
            let s = self.address(src, l);
            let n = if src_size == NO_SLOT {
                size as u64
            } else {
                self.reg(src_size, l) & 0xffff_ffff
            };
            if n > size as u64 {
                return Err(cx.fault(
                    LaunchErrorKind::Trap,
                    self,
                    l as u32,
                    pc,
                    format!("cp.async src-size {n} is larger than cp-size {size} (undefined)"),
                ));
            }
            if !d.is_multiple_of(size as u64) {
                return Err(cx.fault(
                    LaunchErrorKind::Misaligned,
                    self,
                    l as u32,
                    pc,
                    format!("cp.async shared destination {d:#x} is not aligned to {size} bytes"),
                ));
            }
            if !cx.shared.in_window(d, size as u64) {
                return Err(cx.shared_fault(
                    self,
                    l as u32,
                    pc,
                    SharedFault::OutOfWindow,
                    d,
                    size as u64,
                    AccessKind::Write,
                ));
            }
            // src-size 0 reads nothing: the source address is not checked.
            if n > 0 {
                self.check_global(cx, s, n, size as u64, l, pc)?;
            }
            cx.shared.mark_pending(d, size as u64);
            self.copies[l].push(PendingCopy {
                dst: d,
                src: s,
                size,
                src_size: n as u8,
                group: self.open_group[l],
                pc,
            });
            if profiling {
                ranges.push((s, n));
            }
        });
        if let Some(p) = cx.profile.as_mut() {
            let n = act.count_ones();
            p.count(Class::CpAsync, n);
            p.cp_async_bytes += size as u64 * n as u64;
            p.global_request(&ranges);
        }
        Ok(())
    }

    /// Whether the whole warp executes this `.aligned` instruction together.
    pub(crate) fn check_aligned(
        &self,
        cx: &Cx,
        pc: u32,
        act: u32,
        full_warp: bool,
    ) -> Result<(), LaunchError> {
        let live = self.live();
        if act == live && self.gmask == live && (!full_warp || live == u32::MAX) {
            return Ok(());
        }
        let mut elsewhere = Vec::new();
        for l in 0..32 {
            if live & (1 << l) != 0 && act & (1 << l) == 0 {
                let at = if self.gmask & (1 << l) != 0 {
                    pc
                } else {
                    self.pc[l]
                };
                elsewhere.push(format!("lane {l} at PTX line {}", cx.line(at)));
            }
        }
        let msg = if elsewhere.is_empty() {
            format!("this .aligned instruction needs all 32 threads of the warp; only lanes {live:#010x} exist or have not exited")
        } else {
            format!(
                ".aligned instruction executed by lanes {act:#010x} while other non-exited lanes are elsewhere: {}",
                elsewhere.join(", ")
            )
        };
        Err(cx.fault(
            LaunchErrorKind::CheckFailed,
            self,
            act.trailing_zeros(),
            pc,
            msg,
        ))
    }

    /// `ldmatrix`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ldmatrix(
        &mut self,
        cx: &mut Cx,
        num: u8,
        trans: bool,
        d: [Slot; 4],
        addr: Addr,
        pc: u32,
        act: u32,
    ) -> Result<(), LaunchError> {
        self.check_aligned(cx, pc, act, true)?;
        let mut rows = [0u32; 32];
        let mut ranges = Vec::new();
        for (l, r) in rows.iter_mut().enumerate().take(8 * num as usize) {
            let a = self.address(addr, l);
            self.check_shared(cx, AccessKind::Read, a, 16, l, pc)?;
            *r = a as u32;
            ranges.push((a, 16));
        }
        let bytes = &cx.shared.bytes;
        let out = tensor::ldmatrix(num as usize, trans, &rows, |a| {
            let mut row = [0u8; 16];
            let at = a as usize;
            if let Some(src) = bytes.get(at..at + 16) {
                row.copy_from_slice(src);
            }
            row
        });
        for (l, regs) in out.iter().enumerate() {
            for (k, &slot) in d.iter().enumerate().take(num as usize) {
                self.set_reg(slot, l, regs[k] as u64);
            }
        }
        if let Some(p) = cx.profile.as_mut() {
            p.count(Class::Ldmatrix, 32);
            p.shared_load_bytes += 16 * 8 * num as u64;
            p.shared_request(&ranges);
        }
        Ok(())
    }

    /// `mma.sync.aligned.m16n8k16`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mma(
        &mut self,
        cx: &mut Cx,
        ty: MmaType,
        d: [Slot; 4],
        a: [Slot; 4],
        b: [Slot; 2],
        c: [Slot; 4],
        pc: u32,
        act: u32,
    ) -> Result<(), LaunchError> {
        self.check_aligned(cx, pc, act, true)?;
        let mut av = [[0u32; 4]; 32];
        let mut bv = [[0u32; 2]; 32];
        let mut cv = [[0u32; 4]; 32];
        for l in 0..32 {
            for k in 0..4 {
                av[l][k] = self.reg(a[k], l) as u32;
                cv[l][k] = self.reg(c[k], l) as u32;
            }
            for k in 0..2 {
                bv[l][k] = self.reg(b[k], l) as u32;
            }
        }
        let out = tensor::mma_m16n8k16(ty, &av, &bv, &cv);
        for (l, regs) in out.iter().enumerate() {
            for (&slot, &v) in d.iter().zip(regs) {
                self.set_reg(slot, l, v as u64);
            }
        }
        if let Some(p) = cx.profile.as_mut() {
            p.count(Class::Mma, 32);
        }
        Ok(())
    }
}

fn apply32(op: AtomOp, old: u32, b: u32, c: u32) -> u32 {
    match op {
        AtomOp::Add => old.wrapping_add(b),
        AtomOp::AddF32 => float::f32_binary(
            F32Op::Add,
            old,
            b,
            F32Mods {
                rounding: Some(Rounding::Nearest),
                ftz: true,
                sat: false,
            },
        ),
        AtomOp::MinU => old.min(b),
        AtomOp::MinS => (old as i32).min(b as i32) as u32,
        AtomOp::MaxU => old.max(b),
        AtomOp::MaxS => (old as i32).max(b as i32) as u32,
        AtomOp::And => old & b,
        AtomOp::Or => old | b,
        AtomOp::Xor => old ^ b,
        AtomOp::Exch => b,
        AtomOp::Cas => {
            if old == b {
                c
            } else {
                old
            }
        }
        AtomOp::Inc => {
            if old >= b {
                0
            } else {
                old + 1
            }
        }
        AtomOp::Dec => {
            if old == 0 || old > b {
                b
            } else {
                old - 1
            }
        }
    }
}

fn apply64(op: AtomOp, old: u64, b: u64, c: u64) -> u64 {
    match op {
        AtomOp::Add => old.wrapping_add(b),
        AtomOp::MinU => old.min(b),
        AtomOp::MinS => (old as i64).min(b as i64) as u64,
        AtomOp::MaxU => old.max(b),
        AtomOp::MaxS => (old as i64).max(b as i64) as u64,
        AtomOp::And => old & b,
        AtomOp::Or => old | b,
        AtomOp::Xor => old ^ b,
        AtomOp::Exch => b,
        AtomOp::Cas => {
            if old == b {
                c
            } else {
                old
            }
        }
        // The decoder allows .inc/.dec/.add.f32 on 32 bits only.
        AtomOp::Inc | AtomOp::Dec | AtomOp::AddF32 => old,
    }
}

fn rmw32(cell: &AtomicU32, op: AtomOp, b: u32, c: u32) -> u32 {
    match op {
        AtomOp::Add => cell.fetch_add(b, Ordering::SeqCst),
        AtomOp::MinU => cell.fetch_min(b, Ordering::SeqCst),
        AtomOp::MaxU => cell.fetch_max(b, Ordering::SeqCst),
        AtomOp::And => cell.fetch_and(b, Ordering::SeqCst),
        AtomOp::Or => cell.fetch_or(b, Ordering::SeqCst),
        AtomOp::Xor => cell.fetch_xor(b, Ordering::SeqCst),
        AtomOp::Exch => cell.swap(b, Ordering::SeqCst),
        AtomOp::Cas => match cell.compare_exchange(b, c, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(v) | Err(v) => v,
        },
        _ => match cell.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
            Some(apply32(op, old, b, c))
        }) {
            Ok(v) | Err(v) => v,
        },
    }
}

fn rmw64(cell: &AtomicU64, op: AtomOp, b: u64, c: u64) -> u64 {
    match op {
        AtomOp::Add => cell.fetch_add(b, Ordering::SeqCst),
        AtomOp::MinU => cell.fetch_min(b, Ordering::SeqCst),
        AtomOp::MaxU => cell.fetch_max(b, Ordering::SeqCst),
        AtomOp::And => cell.fetch_and(b, Ordering::SeqCst),
        AtomOp::Or => cell.fetch_or(b, Ordering::SeqCst),
        AtomOp::Xor => cell.fetch_xor(b, Ordering::SeqCst),
        AtomOp::Exch => cell.swap(b, Ordering::SeqCst),
        AtomOp::Cas => match cell.compare_exchange(b, c, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(v) | Err(v) => v,
        },
        _ => match cell.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
            Some(apply64(op, old, b, c))
        }) {
            Ok(v) | Err(v) => v,
        },
    }
}
