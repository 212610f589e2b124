//! Emulated device memory: allocations with exact sizes, the map that every
//! access is checked against, and the copies the driver API makes.
//!
//! A device pointer is the host address of its allocation's buffer (aligned
//! to 256 bytes, as `cuMemAlloc` guarantees), so cuBLAS and the driver can
//! copy without translation while every kernel access is still checked
//! against the map. New allocations are filled with `0xFF` bytes (NaN in
//! every float type, -1 in every signed integer type), so a kernel that
//! reads memory nobody wrote shows it instead of reading zeros.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{RwLock, RwLockReadGuard};

/// The alignment of every allocation (what `cuMemAlloc` guarantees).
pub const ALLOC_ALIGN: usize = 256;

/// The byte new allocations are filled with.
pub const POISON: u8 = 0xFF;

/// Why a memory operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemError {
    /// More than the device's memory is allocated.
    OutOfMemory {
        /// Bytes asked for.
        requested: u64,
        /// Bytes still free.
        free: u64,
    },
    /// A zero-byte allocation (the driver refuses it too).
    ZeroSize,
    /// `[addr, addr + len)` is not inside one live allocation.
    OutOfBounds {
        /// The first byte.
        addr: u64,
        /// The length.
        len: u64,
    },
    /// `free` of an address that is not the start of a live allocation.
    NotAllocated(u64),
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemError::OutOfMemory { requested, free } => write!(
                f,
                "out of device memory: {requested} bytes requested, {free} free"
            ),
            MemError::ZeroSize => write!(f, "a zero-byte allocation"),
            MemError::OutOfBounds { addr, len } => write!(
                f,
                "[{addr:#x}, {:#x}) is not inside one live device allocation",
                addr.wrapping_add(*len)
            ),
            MemError::NotAllocated(addr) => {
                write!(f, "{addr:#x} is not the start of a live device allocation")
            }
        }
    }
}

impl std::error::Error for MemError {}

/// One live allocation: its buffer is owned here and freed on drop.
struct Allocation {
    size: u64,
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the buffer is plain bytes owned by the allocation; every access
// goes through `DeviceMemory`, whose lock keeps the buffer alive while a
// `MemoryView` or a copy uses it.
unsafe impl Send for Allocation {}
// SAFETY: as above; shared access only reads the pointer, and concurrent
// writes to the bytes are the emulated program's own (device) data races.
unsafe impl Sync for Allocation {}

impl Drop for Allocation {
    fn drop(&mut self) {
        // SAFETY: `ptr` was returned by `std::alloc::alloc` with `layout` and
        // is freed exactly once, here.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// The memory of one emulated device.
pub struct DeviceMemory {
    capacity: u64,
    allocations: RwLock<BTreeMap<u64, Allocation>>,
}

impl fmt::Debug for DeviceMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceMemory")
            .field("capacity", &self.capacity)
            .field("used", &self.used())
            .finish()
    }
}

impl DeviceMemory {
    /// A device with `capacity` bytes of memory.
    pub fn new(capacity: u64) -> Self {
        DeviceMemory {
            capacity,
            allocations: RwLock::new(BTreeMap::new()),
        }
    }

    /// The device's memory size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes allocated now.
    pub fn used(&self) -> u64 {
        self.read().values().map(|a| a.size).sum()
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Allocation>> {
        // A panic while holding the lock leaves the map itself consistent
        // (every mutation is a single insert or remove), so poisoning is ignored.
        self.allocations.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates `size` bytes (256-byte aligned, filled with [`POISON`]) and
    /// returns the device pointer.
    pub fn alloc(&self, size: u64) -> Result<u64, MemError> {
        if size == 0 {
            return Err(MemError::ZeroSize);
        }
        let mut map = self.allocations.write().unwrap_or_else(|e| e.into_inner());
        let used: u64 = map.values().map(|a| a.size).sum();
        let free = self.capacity.saturating_sub(used);
        if size > free {
            return Err(MemError::OutOfMemory {
                requested: size,
                free,
            });
        }
        let oom = MemError::OutOfMemory {
            requested: size,
            free,
        };
        let len = usize::try_from(size).map_err(|_| oom.clone())?;
        let layout = Layout::from_size_align(len, ALLOC_ALIGN).map_err(|_| oom.clone())?;
        // SAFETY: `layout` has a non-zero size (checked above).
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            return Err(oom);
        }
        // SAFETY: `ptr` points to `len` writable bytes just allocated.
        unsafe { std::ptr::write_bytes(ptr, POISON, len) };
        let addr = ptr as u64;
        map.insert(addr, Allocation { size, ptr, layout });
        Ok(addr)
    }

    /// Frees the allocation that starts at `addr`.
    pub fn free(&self, addr: u64) -> Result<(), MemError> {
        let mut map = self.allocations.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&addr)
            .map(drop)
            .ok_or(MemError::NotAllocated(addr))
    }

    /// A read view of the allocation map for the length of a launch or a
    /// copy: while it lives, no allocation can be freed.
    pub fn view(&self) -> MemoryView<'_> {
        MemoryView { map: self.read() }
    }

    /// Copies host bytes to `dst`.
    pub fn write(&self, dst: u64, src: &[u8]) -> Result<(), MemError> {
        let view = self.view();
        let region = view.checked(dst, src.len() as u64)?;
        // SAFETY: `checked` proved `[dst, dst + len)` lies in a live
        // allocation, kept alive by `view`; host and device bytes never overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), region.ptr_at(dst), src.len()) };
        Ok(())
    }

    /// Copies device bytes at `src` to the host.
    pub fn read_into(&self, src: u64, dst: &mut [u8]) -> Result<(), MemError> {
        let view = self.view();
        let region = view.checked(src, dst.len() as u64)?;
        // SAFETY: as in `write`, with the roles swapped.
        unsafe { std::ptr::copy_nonoverlapping(region.ptr_at(src), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies `len` bytes from device `src` to device `dst` (ranges may overlap).
    pub fn copy(&self, dst: u64, src: u64, len: u64) -> Result<(), MemError> {
        let view = self.view();
        let from = view.checked(src, len)?;
        let to = view.checked(dst, len)?;
        // SAFETY: both ranges lie in live allocations kept alive by `view`;
        // `copy` allows overlap.
        unsafe { std::ptr::copy(from.ptr_at(src), to.ptr_at(dst), len as usize) };
        Ok(())
    }

    /// Fills `count` elements of `pattern.len()` bytes (1, 2 or 4) at `dst`.
    pub fn fill(&self, dst: u64, pattern: &[u8], count: u64) -> Result<(), MemError> {
        let width = pattern.len() as u64;
        let len = count.checked_mul(width).ok_or(MemError::OutOfBounds {
            addr: dst,
            len: u64::MAX,
        })?;
        let view = self.view();
        let region = view.checked(dst, len)?;
        // SAFETY: `[dst, dst + len)` lies in a live allocation kept alive by `view`.
        let bytes = unsafe { std::slice::from_raw_parts_mut(region.ptr_at(dst), len as usize) };
        for chunk in bytes.chunks_exact_mut(pattern.len().max(1)) {
            chunk.copy_from_slice(pattern);
        }
        Ok(())
    }
}

/// The allocation map, locked for reading: what a launch checks its
/// accesses against. Allocations cannot be freed while it lives.
pub struct MemoryView<'a> {
    map: RwLockReadGuard<'a, BTreeMap<u64, Allocation>>,
}

impl<'a> MemoryView<'a> {
    /// The live allocation that contains `addr`, if any.
    pub fn region(&self, addr: u64) -> Option<Region<'_>> {
        let (&base, a) = self.map.range(..=addr).next_back()?;
        (addr - base < a.size).then_some(Region {
            base,
            size: a.size,
            ptr: a.ptr,
            _view: PhantomData,
        })
    }

    /// The allocation that contains all of `[addr, addr + len)`, or the error
    /// that names the range (a zero-length range must still start inside one).
    pub fn checked(&self, addr: u64, len: u64) -> Result<Region<'_>, MemError> {
        self.region(addr)
            .filter(|r| r.contains(addr, len))
            .ok_or(MemError::OutOfBounds { addr, len })
    }
}

/// One live allocation seen through a [`MemoryView`]: valid while the view is.
#[derive(Clone, Copy)]
pub struct Region<'v> {
    /// The device address of the first byte.
    pub base: u64,
    /// The size in bytes.
    pub size: u64,
    ptr: *mut u8,
    _view: PhantomData<&'v ()>,
}

impl fmt::Debug for Region<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Region[{:#x}, +{}]", self.base, self.size)
    }
}

impl Region<'_> {
    /// Whether `[addr, addr + len)` lies inside this allocation.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.base
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.base + self.size)
    }

    /// The host pointer of device address `addr`.
    ///
    /// The pointer is valid for reads and writes of the bytes up to the end
    /// of the allocation, while the view this region came from lives; the
    /// caller must have checked `addr` with [`Region::contains`].
    pub fn ptr_at(&self, addr: u64) -> *mut u8 {
        self.ptr.wrapping_add((addr - self.base) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_poisoned_and_bounded() {
        let mem = DeviceMemory::new(1 << 20);
        let a = mem.alloc(10).unwrap();
        assert_eq!(a % ALLOC_ALIGN as u64, 0);
        let mut back = [0u8; 10];
        mem.read_into(a, &mut back).unwrap();
        assert_eq!(back, [POISON; 10]);
        mem.write(a + 2, &[1, 2, 3]).unwrap();
        mem.read_into(a, &mut back).unwrap();
        assert_eq!(&back[..5], &[POISON, POISON, 1, 2, 3]);
        assert_eq!(
            mem.write(a + 8, &[0; 3]),
            Err(MemError::OutOfBounds {
                addr: a + 8,
                len: 3
            })
        );
        assert!(mem.view().checked(a + 10, 0).is_err());
        mem.free(a).unwrap();
        assert_eq!(mem.free(a), Err(MemError::NotAllocated(a)));
        assert!(mem.read_into(a, &mut back).is_err());
    }

    #[test]
    fn capacity_and_zero_size_are_refused() {
        let mem = DeviceMemory::new(1000);
        assert_eq!(mem.alloc(0), Err(MemError::ZeroSize));
        let a = mem.alloc(600).unwrap();
        assert!(matches!(
            mem.alloc(600),
            Err(MemError::OutOfMemory { free: 400, .. })
        ));
        mem.fill(a, &[1, 0, 0, 0], 150).unwrap();
        assert!(mem.fill(a, &[1, 0], 301).is_err());
        mem.copy(a + 4, a, 8).unwrap();
        let mut back = [0u8; 12];
        mem.read_into(a, &mut back).unwrap();
        assert_eq!(back, [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(mem.used(), 600);
    }
}
