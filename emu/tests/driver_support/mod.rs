//! Helpers shared by the driver and cuBLAS shim tests: a current context,
//! device buffers through the driver API, and checked calls.

#![allow(dead_code)]

use std::ffi::c_void;

use dropless_emu::driver::allocation::{cuMemAlloc_v2, cuMemFree_v2};
use dropless_emu::driver::device::{cuCtxSetCurrent, cuDevicePrimaryCtxRetain, cuInit};
use dropless_emu::driver::status::name;
use dropless_emu::driver::transfer::{cuMemcpyDtoH_v2, cuMemcpyHtoD_v2};
use dropless_emu::driver::{CUcontext, CUdeviceptr};

/// Asserts that a driver call returned `want`, naming both codes.
#[track_caller]
pub fn expect(got: i32, want: i32) {
    let show = |c: i32| name(c).map_or_else(|| c.to_string(), |n| n.to_string_lossy().into_owned());
    assert_eq!(got, want, "returned {}, expected {}", show(got), show(want));
}

/// Asserts success.
#[track_caller]
pub fn ok(got: i32) {
    expect(got, 0);
}

/// Initialises the driver and makes device `ordinal`'s primary context
/// current on this thread.
pub fn context(ordinal: i32) -> CUcontext {
    let mut ctx: CUcontext = std::ptr::null_mut();
    // SAFETY: out-parameters are valid locals.
    unsafe {
        ok(cuInit(0));
        ok(cuDevicePrimaryCtxRetain(&mut ctx, ordinal));
        ok(cuCtxSetCurrent(ctx));
    }
    ctx
}

/// A device allocation of `bytes`.
pub fn alloc(bytes: usize) -> CUdeviceptr {
    let mut p = 0;
    // SAFETY: a valid out-parameter.
    ok(unsafe { cuMemAlloc_v2(&mut p, bytes) });
    p
}

/// Frees `p`.
pub fn free(p: CUdeviceptr) {
    // SAFETY: takes a device address only.
    ok(unsafe { cuMemFree_v2(p) });
}

/// Copies the bytes of `data` to `dst`.
pub fn upload<T: Copy>(dst: CUdeviceptr, data: &[T]) {
    // SAFETY: `data` is readable for its size in bytes.
    ok(unsafe { cuMemcpyHtoD_v2(dst, data.as_ptr().cast::<c_void>(), size_of_val(data)) });
}

/// A new allocation holding `data`.
pub fn buffer<T: Copy>(data: &[T]) -> CUdeviceptr {
    let p = alloc(size_of_val(data).max(1));
    upload(p, data);
    p
}

/// Reads `n` values of `T` at `src`.
pub fn download<T: Copy + Default>(src: CUdeviceptr, n: usize) -> Vec<T> {
    let mut out = vec![T::default(); n];
    // SAFETY: `out` is writable for its size in bytes.
    ok(unsafe {
        cuMemcpyDtoH_v2(
            out.as_mut_ptr().cast::<c_void>(),
            src,
            size_of_val(&out[..]),
        )
    });
    out
}

/// The module header of every test kernel.
pub fn module(body: &str) -> String {
    format!(".version 8.0\n.target sm_80\n.address_size 64\n\n{body}\0")
}
