//! Initialisation, devices, primary contexts and the current context.

use std::ffi::{c_char, c_int, c_uint};

use super::attributes::device_attribute;
use super::failure::{guard, put, Failure};
use super::state::{driver, init, set_current};
use super::status::{CUresult, CUDA_ERROR_INVALID_CONTEXT, CUDA_ERROR_INVALID_VALUE};
use super::{CUcontext, CUdevice, CUuuid};

/// The device name every emulated device reports: benchmarks run on it must
/// be recognisable as not measured on a GPU.
pub const DEVICE_NAME: &str = "dropless-emu PTX emulator (CPU, not a GPU)";

/// The driver API version reported (CUDA 13.0).
pub const DRIVER_VERSION: c_int = 13000;

/// `cuInit`: initialises the driver (`flags` must be 0).
///
/// # Safety
///
/// Callable from any thread; takes no pointers.
#[no_mangle]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    guard("cuInit", || {
        if flags != 0 {
            return Err(Failure::new(
                CUDA_ERROR_INVALID_VALUE,
                format!("flags must be 0, found {flags}"),
            ));
        }
        init();
        Ok(())
    })
}

/// `cuDriverGetVersion`: 13000.
///
/// # Safety
///
/// `version` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    // SAFETY: per this function's contract.
    guard("cuDriverGetVersion", || unsafe {
        put(version, DRIVER_VERSION, "version")
    })
}

/// `cuDeviceGetCount`: the devices of `DROPLESS_EMU_DEVICES`.
///
/// # Safety
///
/// `count` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    guard("cuDeviceGetCount", || {
        let n = driver()?.device_count() as c_int;
        // SAFETY: per this function's contract.
        unsafe { put(count, n, "count") }
    })
}

/// `cuDeviceGet`: the device of ordinal `ordinal` (a device is its ordinal).
///
/// # Safety
///
/// `device` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresult {
    guard("cuDeviceGet", || {
        driver()?.device(ordinal)?;
        // SAFETY: per this function's contract.
        unsafe { put(device, ordinal, "device") }
    })
}

/// `cuDeviceGetName`: [`DEVICE_NAME`], truncated to `len - 1` bytes.
///
/// # Safety
///
/// `name` must be null or valid for writes of `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    guard("cuDeviceGetName", || {
        driver()?.device(dev)?;
        let len = usize::try_from(len).unwrap_or(0);
        if name.is_null() || len == 0 {
            return Err(Failure::new(
                CUDA_ERROR_INVALID_VALUE,
                "the name buffer is null or empty",
            ));
        }
        let n = DEVICE_NAME.len().min(len - 1);
        // SAFETY: `name` holds `len > n` bytes per this function's contract.
        unsafe {
            std::ptr::copy_nonoverlapping(DEVICE_NAME.as_ptr().cast(), name, n);
            name.add(n).write(0);
        }
        Ok(())
    })
}

/// `cuDeviceGetAttribute`: see [`super::attributes`].
///
/// # Safety
///
/// `value` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    value: *mut c_int,
    attribute: c_int,
    dev: CUdevice,
) -> CUresult {
    guard("cuDeviceGetAttribute", || {
        let ctx = driver()?.device(dev)?;
        let v = device_attribute(attribute, ctx.ordinal).ok_or_else(|| {
            Failure::new(
                CUDA_ERROR_INVALID_VALUE,
                format!("{attribute} is not a device attribute"),
            )
        })?;
        // SAFETY: per this function's contract.
        unsafe { put(value, v, "value") }
    })
}

/// `cuDeviceTotalMem_v2`: the memory size of `DROPLESS_EMU_MEMORY_MIB`.
///
/// # Safety
///
/// `bytes` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    guard("cuDeviceTotalMem_v2", || {
        let total = driver()?.device(dev)?.memory.capacity();
        // SAFETY: per this function's contract.
        unsafe { put(bytes, total as usize, "bytes") }
    })
}

/// `cuDeviceComputeCapability`: 8.0.
///
/// # Safety
///
/// `major` and `minor` must be null or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceComputeCapability(
    major: *mut c_int,
    minor: *mut c_int,
    dev: CUdevice,
) -> CUresult {
    guard("cuDeviceComputeCapability", || {
        driver()?.device(dev)?;
        // SAFETY: per this function's contract.
        unsafe {
            put(major, 8, "major")?;
            put(minor, 0, "minor")
        }
    })
}

/// The UUID of device `dev`: `dropless-emu` and the ordinal.
fn uuid(dev: CUdevice) -> CUuuid {
    let mut bytes = [0 as c_char; 16];
    for (b, s) in bytes.iter_mut().zip(b"dropless-emu") {
        *b = *s as c_char;
    }
    bytes[12..16].copy_from_slice(&dev.to_be_bytes().map(|b| b as c_char));
    CUuuid { bytes }
}

/// `cuDeviceGetUuid`: see [`cuDeviceGetUuid_v2`].
///
/// # Safety
///
/// `out` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid(out: *mut CUuuid, dev: CUdevice) -> CUresult {
    guard("cuDeviceGetUuid", || {
        driver()?.device(dev)?;
        // SAFETY: per this function's contract.
        unsafe { put(out, uuid(dev), "uuid") }
    })
}

/// `cuDeviceGetUuid_v2`: `dropless-emu` followed by the ordinal.
///
/// # Safety
///
/// `out` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(out: *mut CUuuid, dev: CUdevice) -> CUresult {
    guard("cuDeviceGetUuid_v2", || {
        driver()?.device(dev)?;
        // SAFETY: per this function's contract.
        unsafe { put(out, uuid(dev), "uuid") }
    })
}

/// `cuDevicePrimaryCtxRetain`: the device's primary context, one more
/// reference held.
///
/// # Safety
///
/// `ctx` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    guard("cuDevicePrimaryCtxRetain", || {
        let context = driver()?.device(dev)?;
        // SAFETY: per this function's contract.
        unsafe { put(ctx, context.handle as CUcontext, "ctx")? };
        context.retain();
        Ok(())
    })
}

/// `cuDevicePrimaryCtxRelease_v2`: drops one reference. The context and
/// its memory stay (the emulator keeps one context per device for the
/// process); releasing more than was retained is an error.
///
/// # Safety
///
/// Takes no pointers.
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    guard("cuDevicePrimaryCtxRelease_v2", || {
        if driver()?.device(dev)?.release() {
            Ok(())
        } else {
            Err(Failure::new(
                CUDA_ERROR_INVALID_CONTEXT,
                format!("the primary context of device {dev} is released more than retained"),
            ))
        }
    })
}

/// `cuDevicePrimaryCtxGetState`: flags 0, active while retained.
///
/// # Safety
///
/// `flags` and `active` must be null or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxGetState(
    dev: CUdevice,
    flags: *mut c_uint,
    active: *mut c_int,
) -> CUresult {
    guard("cuDevicePrimaryCtxGetState", || {
        let context = driver()?.device(dev)?;
        // SAFETY: per this function's contract.
        unsafe {
            put(flags, 0, "flags")?;
            put(active, c_int::from(context.active()), "active")
        }
    })
}

/// `cuCtxSetCurrent`: makes `ctx` this thread's current context (null: none).
///
/// # Safety
///
/// Takes a handle, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: CUcontext) -> CUresult {
    guard("cuCtxSetCurrent", || {
        let driver = driver()?;
        if ctx.is_null() {
            set_current(None);
        } else {
            set_current(Some(driver.context(ctx as usize)?.ordinal));
        }
        Ok(())
    })
}

/// `cuCtxGetCurrent`: this thread's current context, or null.
///
/// # Safety
///
/// `ctx` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut CUcontext) -> CUresult {
    guard("cuCtxGetCurrent", || {
        let handle = driver()?.current_handle().unwrap_or(0);
        // SAFETY: per this function's contract.
        unsafe { put(ctx, handle as CUcontext, "ctx") }
    })
}

/// `cuCtxGetDevice`: the device of the current context.
///
/// # Safety
///
/// `device` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(device: *mut CUdevice) -> CUresult {
    guard("cuCtxGetDevice", || {
        let ordinal = driver()?.current()?.ordinal as CUdevice;
        // SAFETY: per this function's contract.
        unsafe { put(device, ordinal, "device") }
    })
}

/// `cuCtxSynchronize`: returns (and clears) the earliest launch failure
/// pending on any stream of the current context.
///
/// # Safety
///
/// Takes no pointers.
#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    guard("cuCtxSynchronize", || {
        let driver = driver()?;
        let ordinal = driver.current()?.ordinal;
        let first = driver
            .streams_of(ordinal)
            .iter()
            .filter_map(|s| s.take())
            .min_by_key(|p| p.id);
        match first {
            None => Ok(()),
            Some(p) => Err(Failure::new(
                p.code,
                "an earlier launch in this context failed (reported above)",
            )),
        }
    })
}

/// `cuCtxGetStreamPriorityRange`: least 0, greatest -5 (as compute 8.0);
/// priorities do not change the (synchronous) order of work.
///
/// # Safety
///
/// `least` and `greatest` must each be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetStreamPriorityRange(
    least: *mut c_int,
    greatest: *mut c_int,
) -> CUresult {
    guard("cuCtxGetStreamPriorityRange", || {
        driver()?.current()?;
        // SAFETY: per this function's contract; null is allowed here.
        unsafe {
            if !least.is_null() {
                least.write(0);
            }
            if !greatest.is_null() {
                greatest.write(-5);
            }
        }
        Ok(())
    })
}
