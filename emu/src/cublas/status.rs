//! `cublasStatus_t` values (only those cudarc 0.19's enum lists are
//! returned), `cublasGetStatusName` and `cublasGetStatusString`.

use std::ffi::{c_char, CStr};

/// A cuBLAS result code.
pub type cublasStatus_t = i32;

/// Success.
pub const CUBLAS_STATUS_SUCCESS: cublasStatus_t = 0;
/// A null or destroyed handle, or no current context at creation.
pub const CUBLAS_STATUS_NOT_INITIALIZED: cublasStatus_t = 1;
/// An argument out of range (dimensions, leading dimensions, operations).
pub const CUBLAS_STATUS_INVALID_VALUE: cublasStatus_t = 7;
/// A matrix outside the device's allocations.
pub const CUBLAS_STATUS_EXECUTION_FAILED: cublasStatus_t = 13;
/// A panic inside the emulator.
pub const CUBLAS_STATUS_INTERNAL_ERROR: cublasStatus_t = 14;
/// A type combination or entry point the emulator does not implement.
pub const CUBLAS_STATUS_NOT_SUPPORTED: cublasStatus_t = 15;

/// Every status: value, name, description.
const STATUSES: &[(cublasStatus_t, &CStr, &CStr)] = &[
    (0, c"CUBLAS_STATUS_SUCCESS", c"success"),
    (
        1,
        c"CUBLAS_STATUS_NOT_INITIALIZED",
        c"the library was not initialized",
    ),
    (
        3,
        c"CUBLAS_STATUS_ALLOC_FAILED",
        c"the resource allocation failed",
    ),
    (
        7,
        c"CUBLAS_STATUS_INVALID_VALUE",
        c"an invalid numeric value was used as an argument",
    ),
    (
        8,
        c"CUBLAS_STATUS_ARCH_MISMATCH",
        c"an absent device architectural feature is required",
    ),
    (
        11,
        c"CUBLAS_STATUS_MAPPING_ERROR",
        c"an access to GPU memory space failed",
    ),
    (
        13,
        c"CUBLAS_STATUS_EXECUTION_FAILED",
        c"the GPU program failed to execute",
    ),
    (
        14,
        c"CUBLAS_STATUS_INTERNAL_ERROR",
        c"an internal operation failed",
    ),
    (
        15,
        c"CUBLAS_STATUS_NOT_SUPPORTED",
        c"the functionality requested is not supported",
    ),
    (
        16,
        c"CUBLAS_STATUS_LICENSE_ERROR",
        c"an error was detected when checking the current licensing",
    ),
];

/// The entry of `status`, or the "unknown" strings.
fn entry(status: cublasStatus_t) -> (&'static CStr, &'static CStr) {
    STATUSES
        .iter()
        .find(|s| s.0 == status)
        .map_or((c"CUBLAS_STATUS_UNKNOWN", c"unknown error"), |s| (s.1, s.2))
}

/// `cublasGetStatusName`: the name of `status`.
#[no_mangle]
pub extern "C" fn cublasGetStatusName(status: cublasStatus_t) -> *const c_char {
    entry(status).0.as_ptr()
}

/// `cublasGetStatusString`: the description of `status`.
#[no_mangle]
pub extern "C" fn cublasGetStatusString(status: cublasStatus_t) -> *const c_char {
    entry(status).1.as_ptr()
}
