//! Global-memory accesses of one launch: the bounds check against the
//! allocation map (with a per-instruction cache of the last allocation
//! hit), and the `.nc` check: bytes a launch reads through `ld.global.nc`
//! must not be written by the same launch, in either order (tracked per
//! 4-byte granule, per allocation).

use std::collections::HashMap;

use crate::memory::{MemoryView, Region};

/// Per allocation: the granules read with `.nc` and the granules written.
struct Granules {
    nc_read: Vec<u64>,
    written: Vec<u64>,
}

impl Granules {
    fn new(size: u64) -> Self {
        let words = (size.div_ceil(4)).div_ceil(64) as usize;
        Granules {
            nc_read: vec![0; words],
            written: vec![0; words],
        }
    }
}

/// A `.nc` conflict: which side came first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NcConflict {
    /// A store to bytes an earlier `ld.global.nc` read.
    WriteAfterNcRead,
    /// An `ld.global.nc` of bytes an earlier store wrote.
    NcReadAfterWrite,
}

/// The global memory of one launch, as kernels see it.
pub struct GlobalMem<'v> {
    view: &'v MemoryView<'v>,
    cache: Vec<Option<Region<'v>>>,
    /// Per instruction: the allocation and index into `granules` of its
    /// last `.nc` tracking.
    track_cache: Vec<Option<(u64, usize)>>,
    granules: Vec<Granules>,
    granule_index: HashMap<u64, usize>,
    track_nc: bool,
}

impl<'v> GlobalMem<'v> {
    /// A launch's view with one cache entry per instruction.
    pub fn new(view: &'v MemoryView<'v>, instructions: usize, track_nc: bool) -> Self {
        GlobalMem {
            view,
            cache: vec![None; instructions],
            track_cache: vec![None; instructions],
            granules: Vec::new(),
            granule_index: HashMap::new(),
            track_nc,
        }
    }

    /// The allocation holding all of `[addr, addr + len)` for the
    /// instruction at `pc`, or `None` when no live allocation does.
    #[inline]
    pub fn region(&mut self, pc: usize, addr: u64, len: u64) -> Option<Region<'v>> {
        if let Some(r) = self.cache[pc] {
            if r.contains(addr, len) {
                return Some(r);
            }
        }
        let r = self.view.checked(addr, len).ok()?;
        self.cache[pc] = Some(r);
        Some(r)
    }

    /// Records a `.nc` read (`nc`) or a write of `[addr, addr + len)` in
    /// `region` by the instruction at `pc`, and reports a conflict with the
    /// other kind.
    pub fn track(
        &mut self,
        pc: usize,
        region: &Region,
        addr: u64,
        len: u64,
        nc: bool,
    ) -> Result<(), NcConflict> {
        if !self.track_nc {
            return Ok(());
        }
        let at = match self.track_cache[pc] {
            Some((base, i)) if base == region.base => i,
            _ => {
                let next = self.granules.len();
                let i = *self.granule_index.entry(region.base).or_insert(next);
                if i == next {
                    self.granules.push(Granules::new(region.size));
                }
                self.track_cache[pc] = Some((region.base, i));
                i
            }
        };
        let g = &mut self.granules[at];
        let first = (addr - region.base) / 4;
        let last = (addr + len - 1 - region.base) / 4;
        for k in first..=last {
            let (w, b) = ((k / 64) as usize, 1u64 << (k % 64));
            if nc {
                if g.written[w] & b != 0 {
                    return Err(NcConflict::NcReadAfterWrite);
                }
                g.nc_read[w] |= b;
            } else {
                if g.nc_read[w] & b != 0 {
                    return Err(NcConflict::WriteAfterNcRead);
                }
                g.written[w] |= b;
            }
        }
        Ok(())
    }
}
