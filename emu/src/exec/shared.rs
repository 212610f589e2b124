//! One CTA's shared-memory window, and (when checks are on) its shadow:
//! per 4-byte word, who last wrote it and who last read it (thread, CTA
//! barrier generation, warp-collective generation, instruction), which bytes
//! were ever written, and which bytes are the destination of a `cp.async`
//! not yet completed.
//!
//! Ordering rule (the sanitizer's): two accesses by different threads are
//! ordered when a CTA barrier completed between them, or, for two threads
//! of one warp, when both took part in a warp collective (`bar.warp.sync`,
//! `shfl`, `vote`, `match`, `redux`) after the earlier access. Any barrier
//! completion counts for the whole CTA (a named barrier with a thread
//! count orders more than it should, so some races behind partial barriers
//! are missed; none is reported falsely). A write unordered with another
//! thread's access to the same bytes is a race; atomics among themselves
//! are not.

/// Who touched a word: thread (linear id + 1; 0: nobody), byte mask,
/// generations, instruction.
#[derive(Debug, Clone, Copy, Default)]
struct Touch {
    tid: u16,
    bytes: u8,
    atomic: bool,
    bar_gen: u32,
    sync_gen: u32,
    pc: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Word {
    written: u8,
    pending_cp: u8,
    write: Touch,
    read: [Touch; 2],
}

/// The warp-collective state of the accessing thread's warp.
#[derive(Debug, Clone, Copy)]
pub struct SyncView<'a> {
    /// The warp's index in the CTA.
    pub warp: usize,
    /// The generation each lane last completed a collective in.
    pub sync_seen: &'a [u32; 32],
    /// The warp's current collective generation.
    pub sync_gen: u32,
}

/// The accessor of a shared access.
#[derive(Debug, Clone, Copy)]
pub struct Accessor<'a> {
    /// Linear thread id in the CTA.
    pub tid: u32,
    /// The instruction.
    pub pc: u32,
    /// The CTA's barrier generation now.
    pub bar_gen: u32,
    /// The warp's collective state.
    pub sync: SyncView<'a>,
}

/// A shared-memory check that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedFault {
    /// Outside the window.
    OutOfWindow,
    /// A race with another thread's access.
    Race {
        /// The other thread (linear id).
        other_tid: u32,
        /// Its instruction.
        other_pc: u32,
        /// Whether the other access was a write.
        other_wrote: bool,
    },
    /// A read of bytes never written in this CTA.
    Uninitialised,
    /// A read of bytes a `cp.async` has not yet written.
    PendingCpAsync,
}

/// The kind of a shared access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    /// A load.
    Read,
    /// A store.
    Write,
    /// An atomic read-modify-write.
    Atomic,
}

/// One CTA's window.
pub struct SharedMem {
    /// The bytes.
    pub bytes: Vec<u8>,
    shadow: Vec<Word>,
    checks: bool,
}

impl SharedMem {
    /// A window of `size` bytes (zeroed; reads before writes are reported
    /// when `checks`).
    pub fn new(size: usize, checks: bool) -> Self {
        let mut s = SharedMem {
            bytes: Vec::new(),
            shadow: Vec::new(),
            checks,
        };
        s.reset(size);
        s
    }

    /// Clears the window for the next CTA.
    pub fn reset(&mut self, size: usize) {
        self.bytes.clear();
        self.bytes.resize(size, 0);
        if self.checks {
            self.shadow.clear();
            self.shadow.resize(size.div_ceil(4), Word::default());
        }
    }

    /// The window size.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether `[addr, addr + len)` lies in the window.
    pub fn in_window(&self, addr: u64, len: u64) -> bool {
        addr.checked_add(len)
            .is_some_and(|e| e <= self.bytes.len() as u64)
    }

    /// Checks (and records in the shadow) an access of `len` bytes at
    /// `addr`, which must lie in the window.
    pub fn check(
        &mut self,
        kind: AccessKind,
        addr: u64,
        len: u64,
        who: &Accessor,
    ) -> Result<(), SharedFault> {
        if !self.in_window(addr, len) {
            return Err(SharedFault::OutOfWindow);
        }
        if !self.checks {
            return Ok(());
        }
        let mut a = addr;
        let end = addr + len;
        while a < end {
            let w = (a / 4) as usize;
            let lo = (a % 4) as u32;
            let hi = ((end - (a - lo as u64)).min(4)) as u32;
            let bytes = (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u8;
            check_word(&mut self.shadow[w], kind, bytes, who)?;
            a = (a - lo as u64) + 4;
        }
        Ok(())
    }

    /// Marks `[addr, addr + len)` as the destination of a pending `cp.async`.
    pub fn mark_pending(&mut self, addr: u64, len: u64) {
        if self.checks {
            for a in addr..addr + len {
                self.shadow[(a / 4) as usize].pending_cp |= 1 << (a % 4);
            }
        }
    }

    /// Completes a `cp.async` into `[addr, addr + len)`: records the write
    /// by the issuing thread and clears the pending mark.
    pub fn complete_cp(
        &mut self,
        addr: u64,
        data: &[u8],
        who: &Accessor,
    ) -> Result<(), SharedFault> {
        if self.checks {
            for a in addr..addr + data.len() as u64 {
                self.shadow[(a / 4) as usize].pending_cp &= !(1 << (a % 4));
            }
            self.check(AccessKind::Write, addr, data.len() as u64, who)?;
        }
        let at = addr as usize;
        self.bytes[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// Whether an earlier access `t` is ordered before the current one.
fn ordered(t: &Touch, who: &Accessor) -> bool {
    if t.tid == 0 || t.tid as u32 == who.tid + 1 {
        return true;
    }
    if who.bar_gen > t.bar_gen {
        return true;
    }
    let other = t.tid as u32 - 1;
    if other as usize / 32 == who.sync.warp {
        let seen = who.sync.sync_seen;
        return seen[other as usize % 32] > t.sync_gen && seen[who.tid as usize % 32] > t.sync_gen;
    }
    false
}

fn check_word(
    w: &mut Word,
    kind: AccessKind,
    bytes: u8,
    who: &Accessor,
) -> Result<(), SharedFault> {
    let me = Touch {
        tid: (who.tid + 1) as u16,
        bytes,
        atomic: kind == AccessKind::Atomic,
        bar_gen: who.bar_gen,
        sync_gen: who.sync.sync_gen,
        pc: who.pc,
    };
    let race = |t: &Touch, wrote: bool| SharedFault::Race {
        other_tid: t.tid as u32 - 1,
        other_pc: t.pc,
        other_wrote: wrote,
    };
    if kind != AccessKind::Write {
        if w.pending_cp & bytes != 0 {
            return Err(SharedFault::PendingCpAsync);
        }
        if w.written & bytes != bytes {
            return Err(SharedFault::Uninitialised);
        }
    }
    // Against the last write: any access (atomic pairs excepted).
    let t = w.write;
    if t.bytes & bytes != 0 && !(t.atomic && me.atomic) && !ordered(&t, who) {
        return Err(race(&t, true));
    }
    if kind != AccessKind::Read {
        for t in w.read.iter() {
            if t.bytes & bytes != 0 && !(t.atomic && me.atomic) && !ordered(t, who) {
                return Err(race(t, false));
            }
        }
        w.written |= bytes;
        w.write = me;
    }
    if kind != AccessKind::Write {
        // Keep the two most recent readers that are different threads.
        if w.read[0].tid != me.tid {
            w.read[1] = w.read[0];
        }
        w.read[0] = me;
    }
    Ok(())
}
