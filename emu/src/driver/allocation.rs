//! Device memory allocation: `cuMemAlloc`, `cuMemAllocAsync`, the frees and
//! `cuMemGetInfo`. Allocations are exact-sized and poisoned (see
//! [`crate::memory`]); the stream-ordered forms run at once.

use super::failure::{guard, put, Failure, Outcome};
use super::state::driver;
use super::status::{CUresult, CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_OUT_OF_MEMORY};
use super::{CUdeviceptr, CUstream};
use crate::memory::MemError;

/// The `CUresult` of a refused memory operation.
pub fn mem_failure(e: MemError) -> Failure {
    let code = match e {
        MemError::OutOfMemory { .. } => CUDA_ERROR_OUT_OF_MEMORY,
        _ => CUDA_ERROR_INVALID_VALUE,
    };
    Failure::new(code, e.to_string())
}

/// Allocates `bytes` on the current context's device into `dptr`.
///
/// # Safety
///
/// `dptr` must be null or valid for a write.
unsafe fn alloc(dptr: *mut CUdeviceptr, bytes: usize) -> Outcome {
    let ctx = driver()?.current()?;
    if dptr.is_null() {
        return Err(Failure::new(
            CUDA_ERROR_INVALID_VALUE,
            "dptr is a null pointer",
        ));
    }
    let addr = ctx.memory.alloc(bytes as u64).map_err(mem_failure)?;
    // SAFETY: non-null, valid per the caller's contract.
    unsafe { put(dptr, addr, "dptr") }
}

/// Frees the allocation starting at `dptr`, on whichever device holds it
/// (0 is a no-op).
fn free(dptr: CUdeviceptr) -> Outcome {
    let driver = driver()?;
    if dptr == 0 {
        return Ok(());
    }
    let ctx = driver
        .memory_of(dptr)
        .ok_or_else(|| mem_failure(MemError::NotAllocated(dptr)))?;
    ctx.memory.free(dptr).map_err(mem_failure)
}

/// `cuMemAlloc_v2`: `bytes` (non-zero) of device memory.
///
/// # Safety
///
/// `dptr` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) -> CUresult {
    // SAFETY: per this function's contract.
    guard("cuMemAlloc_v2", || unsafe { alloc(dptr, bytes) })
}

/// `cuMemAllocAsync`: as [`cuMemAlloc_v2`], at once.
///
/// # Safety
///
/// `dptr` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    stream: CUstream,
) -> CUresult {
    guard("cuMemAllocAsync", || {
        driver()?.stream(stream as usize)?;
        // SAFETY: per this function's contract.
        unsafe { alloc(dptr, bytes) }
    })
}

/// `cuMemFree_v2`: frees an allocation (its start address).
///
/// # Safety
///
/// Takes a device address, checked against the allocation map.
#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    guard("cuMemFree_v2", || free(dptr))
}

/// `cuMemFreeAsync`: as [`cuMemFree_v2`], at once.
///
/// # Safety
///
/// Takes a device address, checked against the allocation map.
#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    guard("cuMemFreeAsync", || {
        driver()?.stream(stream as usize)?;
        free(dptr)
    })
}

/// `cuMemGetInfo_v2`: free and total memory of the current context's device.
///
/// # Safety
///
/// `free` and `total` must be null or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    guard("cuMemGetInfo_v2", || {
        let memory = &driver()?.current()?.memory;
        let capacity = memory.capacity();
        let available = capacity.saturating_sub(memory.used());
        // SAFETY: per this function's contract.
        unsafe {
            put(free, available as usize, "free")?;
            put(total, capacity as usize, "total")
        }
    })
}
