//! cuBLAS handles: each is bound to the device of the context current when
//! it was created, and holds its stream, pointer mode and math mode.

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::{Mutex, OnceLock};

use super::cublasHandle_t;
use super::status::{
    cublasStatus_t, CUBLAS_STATUS_INTERNAL_ERROR, CUBLAS_STATUS_INVALID_VALUE,
    CUBLAS_STATUS_NOT_INITIALIZED,
};
use crate::driver::failure::{guard_with, put, Failure, Outcome};
use crate::driver::state::{driver, lock};
use crate::driver::CUstream;

/// `CUBLAS_POINTER_MODE_HOST`: alpha and beta are host pointers.
pub const POINTER_MODE_HOST: c_int = 0;
/// `CUBLAS_POINTER_MODE_DEVICE`: alpha and beta are device pointers.
pub const POINTER_MODE_DEVICE: c_int = 1;
/// The cuBLAS version reported (13.0.0).
pub const VERSION: c_int = 130_000;

/// The state of one handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    /// The device whose memory the handle's GEMMs use.
    pub ordinal: usize,
    /// The stream handle set by `cublasSetStream_v2` (0: default).
    pub stream: usize,
    /// `CUBLAS_POINTER_MODE_*`.
    pub pointer_mode: c_int,
    /// `cublasMath_t` (every mode computes in f32 here).
    pub math_mode: c_int,
}

struct Handles {
    next: usize,
    map: HashMap<usize, Handle>,
}

fn handles() -> &'static Mutex<Handles> {
    static HANDLES: OnceLock<Mutex<Handles>> = OnceLock::new();
    HANDLES.get_or_init(|| {
        Mutex::new(Handles {
            next: 0xB1A5_0000,
            map: HashMap::new(),
        })
    })
}

/// Runs the body of cuBLAS entry point `entry` (a panic is
/// `CUBLAS_STATUS_INTERNAL_ERROR`).
pub fn guard(entry: &str, body: impl FnOnce() -> Outcome) -> cublasStatus_t {
    guard_with(entry, CUBLAS_STATUS_INTERNAL_ERROR, body)
}

/// The state of `handle`.
pub fn handle(handle: cublasHandle_t) -> Outcome<Handle> {
    lock(handles())
        .map
        .get(&(handle as usize))
        .copied()
        .ok_or_else(|| {
            Failure::new(
                CUBLAS_STATUS_NOT_INITIALIZED,
                format!("{handle:?} is not a live cuBLAS handle (cublasCreate_v2)"),
            )
        })
}

/// Changes the state of `handle`.
fn update(handle: cublasHandle_t, change: impl FnOnce(&mut Handle)) -> Outcome {
    let mut all = lock(handles());
    let state = all.map.get_mut(&(handle as usize)).ok_or_else(|| {
        Failure::new(
            CUBLAS_STATUS_NOT_INITIALIZED,
            format!("{handle:?} is not a live cuBLAS handle (cublasCreate_v2)"),
        )
    })?;
    change(state);
    Ok(())
}

/// A driver failure as a cuBLAS status.
fn not_initialized(f: Failure) -> Failure {
    Failure::new(CUBLAS_STATUS_NOT_INITIALIZED, f.message)
}

/// `cublasCreate_v2`: a handle on the current context's device.
///
/// # Safety
///
/// `out` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cublasCreate_v2(out: *mut cublasHandle_t) -> cublasStatus_t {
    guard("cublasCreate_v2", || {
        let ordinal = driver()
            .and_then(|d| d.current().map(|c| c.ordinal))
            .map_err(not_initialized)?;
        if out.is_null() {
            return Err(Failure::new(
                CUBLAS_STATUS_INVALID_VALUE,
                "handle is a null pointer",
            ));
        }
        let mut all = lock(handles());
        let id = all.next;
        all.next += 0x10;
        all.map.insert(
            id,
            Handle {
                ordinal,
                stream: 0,
                pointer_mode: POINTER_MODE_HOST,
                math_mode: 0,
            },
        );
        // SAFETY: non-null, valid per this function's contract.
        unsafe { put(out, id as cublasHandle_t, "handle") }
    })
}

/// `cublasDestroy_v2`.
///
/// # Safety
///
/// Takes a handle, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cublasDestroy_v2(handle: cublasHandle_t) -> cublasStatus_t {
    guard("cublasDestroy_v2", || {
        lock(handles())
            .map
            .remove(&(handle as usize))
            .map(drop)
            .ok_or_else(|| {
                Failure::new(
                    CUBLAS_STATUS_NOT_INITIALIZED,
                    format!("{handle:?} is not a live cuBLAS handle"),
                )
            })
    })
}

/// `cublasSetStream_v2`: a stream of the handle's device (null: default).
///
/// # Safety
///
/// Takes handles, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cublasSetStream_v2(
    handle: cublasHandle_t,
    stream: CUstream,
) -> cublasStatus_t {
    guard("cublasSetStream_v2", || {
        let state = self::handle(handle)?;
        let raw = stream as usize;
        if raw != 0 {
            let s = driver()
                .and_then(|d| d.stream(raw))
                .map_err(|f| Failure::new(CUBLAS_STATUS_INVALID_VALUE, f.message))?;
            if s.ordinal != state.ordinal {
                return Err(Failure::new(
                    CUBLAS_STATUS_INVALID_VALUE,
                    format!(
                        "the stream belongs to device {}, the handle to device {}",
                        s.ordinal, state.ordinal
                    ),
                ));
            }
        }
        update(handle, |h| h.stream = raw)
    })
}

/// `cublasGetStream_v2`.
///
/// # Safety
///
/// `out` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cublasGetStream_v2(
    handle: cublasHandle_t,
    out: *mut CUstream,
) -> cublasStatus_t {
    guard("cublasGetStream_v2", || {
        let stream = self::handle(handle)?.stream;
        // SAFETY: per this function's contract.
        unsafe { put(out, stream as CUstream, "streamId") }.map_err(invalid)
    })
}

/// A null out-parameter as a cuBLAS status.
fn invalid(f: Failure) -> Failure {
    Failure::new(CUBLAS_STATUS_INVALID_VALUE, f.message)
}

/// `cublasSetPointerMode_v2`: host (0) or device (1) alpha and beta.
///
/// # Safety
///
/// Takes a handle, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cublasSetPointerMode_v2(
    handle: cublasHandle_t,
    mode: c_int,
) -> cublasStatus_t {
    guard("cublasSetPointerMode_v2", || {
        if mode != POINTER_MODE_HOST && mode != POINTER_MODE_DEVICE {
            return Err(Failure::new(
                CUBLAS_STATUS_INVALID_VALUE,
                format!("pointer mode {mode}: 0 (host) or 1 (device)"),
            ));
        }
        update(handle, |h| h.pointer_mode = mode)
    })
}

/// `cublasGetPointerMode_v2`.
///
/// # Safety
///
/// `out` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cublasGetPointerMode_v2(
    handle: cublasHandle_t,
    out: *mut c_int,
) -> cublasStatus_t {
    guard("cublasGetPointerMode_v2", || {
        let mode = self::handle(handle)?.pointer_mode;
        // SAFETY: per this function's contract.
        unsafe { put(out, mode, "mode") }.map_err(invalid)
    })
}

/// `cublasSetMathMode`: recorded; every mode computes in f32.
///
/// # Safety
///
/// Takes a handle, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cublasSetMathMode(handle: cublasHandle_t, mode: c_int) -> cublasStatus_t {
    guard("cublasSetMathMode", || {
        update(handle, |h| h.math_mode = mode)
    })
}

/// `cublasGetMathMode`.
///
/// # Safety
///
/// `out` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cublasGetMathMode(
    handle: cublasHandle_t,
    out: *mut c_int,
) -> cublasStatus_t {
    guard("cublasGetMathMode", || {
        let mode = self::handle(handle)?.math_mode;
        // SAFETY: per this function's contract.
        unsafe { put(out, mode, "mode") }.map_err(invalid)
    })
}

/// `cublasSetWorkspace_v2`: accepted (the CPU GEMMs need no workspace).
///
/// # Safety
///
/// Takes a handle and a device address, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cublasSetWorkspace_v2(
    handle: cublasHandle_t,
    workspace: *mut c_void,
    bytes: usize,
) -> cublasStatus_t {
    let _ = (workspace, bytes);
    guard("cublasSetWorkspace_v2", || self::handle(handle).map(drop))
}

/// `cublasGetVersion_v2`: [`VERSION`].
///
/// # Safety
///
/// `out` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cublasGetVersion_v2(
    handle: cublasHandle_t,
    out: *mut c_int,
) -> cublasStatus_t {
    guard("cublasGetVersion_v2", || {
        self::handle(handle)?;
        // SAFETY: per this function's contract.
        unsafe { put(out, VERSION, "version") }.map_err(invalid)
    })
}

/// `cublasGetCudartVersion`: the CUDA runtime version the shim stands for
/// (13.0; this entry returns a `size_t`, not a status).
#[no_mangle]
pub extern "C" fn cublasGetCudartVersion() -> usize {
    13_000
}
