//! Copies and fills: `cuMemcpy{HtoD,DtoH,DtoD}` (and their async forms),
//! `cuMemcpyPeerAsync`, `cuMemsetD{8,16,32}`. Every device range is checked
//! against the allocation map of the device that holds it; a range outside
//! every allocation is `CUDA_ERROR_INVALID_VALUE` with its addresses.

use std::ffi::c_void;

use super::allocation::mem_failure;
use super::failure::{guard, Failure, Outcome};
use super::state::{driver, Driver};
use super::status::{CUresult, CUDA_ERROR_INVALID_VALUE};
use super::{CUcontext, CUdeviceptr, CUstream};
use crate::memory::{DeviceMemory, MemError};

/// The memory that holds `[addr, addr + len)`.
fn holder(driver: &Driver, addr: u64, len: usize) -> Outcome<&DeviceMemory> {
    driver.memory_of(addr).map(|c| &c.memory).ok_or_else(|| {
        mem_failure(MemError::OutOfBounds {
            addr,
            len: len as u64,
        })
    })
}

/// Copies `len` bytes between two device addresses (devices may differ).
fn device_copy(driver: &Driver, dst: u64, src: u64, len: usize) -> Outcome {
    let from = holder(driver, src, len)?;
    let to = holder(driver, dst, len)?;
    if std::ptr::eq(from, to) {
        return to.copy(dst, src, len as u64).map_err(mem_failure);
    }
    let mut staged = vec![0u8; len];
    from.read_into(src, &mut staged).map_err(mem_failure)?;
    to.write(dst, &staged).map_err(mem_failure)
}

/// Host to device. A "host" pointer inside a device allocation (device
/// pointers are host addresses here) is copied as device memory.
///
/// # Safety
///
/// `src` must be valid for reads of `len` bytes unless it lies in a device
/// allocation.
unsafe fn htod(dst: CUdeviceptr, src: *const c_void, len: usize) -> Outcome {
    let driver = driver()?;
    if len == 0 {
        return Ok(());
    }
    if src.is_null() {
        return Err(Failure::new(
            CUDA_ERROR_INVALID_VALUE,
            "the host source is null",
        ));
    }
    if driver.memory_of(src as u64).is_some() {
        return device_copy(driver, dst, src as u64, len);
    }
    let to = holder(driver, dst, len)?;
    // SAFETY: a host buffer of `len` bytes per the caller's contract, outside
    // every device allocation (checked above).
    let host = unsafe { std::slice::from_raw_parts(src.cast::<u8>(), len) };
    to.write(dst, host).map_err(mem_failure)
}

/// Device to host (see [`htod`] for a "host" pointer in device memory).
///
/// # Safety
///
/// `dst` must be valid for writes of `len` bytes unless it lies in a device
/// allocation.
unsafe fn dtoh(dst: *mut c_void, src: CUdeviceptr, len: usize) -> Outcome {
    let driver = driver()?;
    if len == 0 {
        return Ok(());
    }
    if dst.is_null() {
        return Err(Failure::new(
            CUDA_ERROR_INVALID_VALUE,
            "the host destination is null",
        ));
    }
    if driver.memory_of(dst as u64).is_some() {
        return device_copy(driver, dst as u64, src, len);
    }
    let from = holder(driver, src, len)?;
    // SAFETY: a host buffer of `len` bytes per the caller's contract, outside
    // every device allocation (checked above).
    let host = unsafe { std::slice::from_raw_parts_mut(dst.cast::<u8>(), len) };
    from.read_into(src, host).map_err(mem_failure)
}

/// Device to device.
fn dtod(dst: CUdeviceptr, src: CUdeviceptr, len: usize) -> Outcome {
    let driver = driver()?;
    if len == 0 {
        return Ok(());
    }
    device_copy(driver, dst, src, len)
}

/// Fills `count` elements of `pattern` (1, 2 or 4 bytes) at `dst`.
fn fill(dst: CUdeviceptr, pattern: &[u8], count: usize) -> Outcome {
    let driver = driver()?;
    if count == 0 {
        return Ok(());
    }
    if !dst.is_multiple_of(pattern.len() as u64) {
        return Err(Failure::new(
            CUDA_ERROR_INVALID_VALUE,
            format!(
                "{dst:#x} is not aligned to the {}-byte elements set",
                pattern.len()
            ),
        ));
    }
    let len = count.saturating_mul(pattern.len());
    holder(driver, dst, len)?
        .fill(dst, pattern, count as u64)
        .map_err(mem_failure)
}

/// Checks that `stream` names a live stream.
fn check_stream(stream: CUstream) -> Outcome {
    driver()?.stream(stream as usize).map(drop)
}

/// `cuMemcpyHtoD_v2`.
///
/// # Safety
///
/// `src` must be valid for reads of `bytes` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    bytes: usize,
) -> CUresult {
    // SAFETY: per this function's contract.
    guard("cuMemcpyHtoD_v2", || unsafe { htod(dst, src, bytes) })
}

/// `cuMemcpyHtoDAsync_v2`: at once.
///
/// # Safety
///
/// `src` must be valid for reads of `bytes` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    bytes: usize,
    stream: CUstream,
) -> CUresult {
    guard("cuMemcpyHtoDAsync_v2", || {
        check_stream(stream)?;
        // SAFETY: per this function's contract.
        unsafe { htod(dst, src, bytes) }
    })
}

/// `cuMemcpyDtoH_v2`.
///
/// # Safety
///
/// `dst` must be valid for writes of `bytes` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    bytes: usize,
) -> CUresult {
    // SAFETY: per this function's contract.
    guard("cuMemcpyDtoH_v2", || unsafe { dtoh(dst, src, bytes) })
}

/// `cuMemcpyDtoHAsync_v2`: at once.
///
/// # Safety
///
/// `dst` must be valid for writes of `bytes` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    bytes: usize,
    stream: CUstream,
) -> CUresult {
    guard("cuMemcpyDtoHAsync_v2", || {
        check_stream(stream)?;
        // SAFETY: per this function's contract.
        unsafe { dtoh(dst, src, bytes) }
    })
}

/// `cuMemcpyDtoD_v2` (ranges may overlap).
///
/// # Safety
///
/// Takes device addresses only, checked against the allocation map.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    bytes: usize,
) -> CUresult {
    guard("cuMemcpyDtoD_v2", || dtod(dst, src, bytes))
}

/// `cuMemcpyDtoDAsync_v2`: at once.
///
/// # Safety
///
/// Takes device addresses only, checked against the allocation map.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    bytes: usize,
    stream: CUstream,
) -> CUresult {
    guard("cuMemcpyDtoDAsync_v2", || {
        check_stream(stream)?;
        dtod(dst, src, bytes)
    })
}

/// `cuMemcpyPeerAsync`: a copy between two devices' memory, at once.
///
/// # Safety
///
/// Takes handles and device addresses only, all checked.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyPeerAsync(
    dst: CUdeviceptr,
    dst_ctx: CUcontext,
    src: CUdeviceptr,
    src_ctx: CUcontext,
    bytes: usize,
    stream: CUstream,
) -> CUresult {
    guard("cuMemcpyPeerAsync", || {
        let driver = driver()?;
        driver.context(dst_ctx as usize)?;
        driver.context(src_ctx as usize)?;
        check_stream(stream)?;
        dtod(dst, src, bytes)
    })
}

/// `cuMemsetD8_v2`: `count` bytes of `value`.
///
/// # Safety
///
/// Takes a device address only, checked against the allocation map.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, value: u8, count: usize) -> CUresult {
    guard("cuMemsetD8_v2", || fill(dst, &[value], count))
}

/// `cuMemsetD8Async`: at once.
///
/// # Safety
///
/// Takes a device address only, checked against the allocation map.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8Async(
    dst: CUdeviceptr,
    value: u8,
    count: usize,
    stream: CUstream,
) -> CUresult {
    guard("cuMemsetD8Async", || {
        check_stream(stream)?;
        fill(dst, &[value], count)
    })
}

/// `cuMemsetD16_v2`: `count` 16-bit elements of `value` (`dst` 2-aligned).
///
/// # Safety
///
/// Takes a device address only, checked against the allocation map.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD16_v2(dst: CUdeviceptr, value: u16, count: usize) -> CUresult {
    guard("cuMemsetD16_v2", || fill(dst, &value.to_le_bytes(), count))
}

/// `cuMemsetD16Async`: at once.
///
/// # Safety
///
/// Takes a device address only, checked against the allocation map.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD16Async(
    dst: CUdeviceptr,
    value: u16,
    count: usize,
    stream: CUstream,
) -> CUresult {
    guard("cuMemsetD16Async", || {
        check_stream(stream)?;
        fill(dst, &value.to_le_bytes(), count)
    })
}

/// `cuMemsetD32_v2`: `count` 32-bit elements of `value` (`dst` 4-aligned).
///
/// # Safety
///
/// Takes a device address only, checked against the allocation map.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32_v2(dst: CUdeviceptr, value: u32, count: usize) -> CUresult {
    guard("cuMemsetD32_v2", || fill(dst, &value.to_le_bytes(), count))
}

/// `cuMemsetD32Async`: at once.
///
/// # Safety
///
/// Takes a device address only, checked against the allocation map.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32Async(
    dst: CUdeviceptr,
    value: u32,
    count: usize,
    stream: CUstream,
) -> CUresult {
    guard("cuMemsetD32Async", || {
        check_stream(stream)?;
        fill(dst, &value.to_le_bytes(), count)
    })
}
