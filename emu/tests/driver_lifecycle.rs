//! The driver's life in one process, in order (one test, so that nothing
//! else initialises the driver first): calls before `cuInit` are refused,
//! primary-context references are counted, and a released context stays
//! usable by handles that were taken from it.

use std::ffi::c_int;
use std::ptr::null_mut;

use dropless_emu::driver::device::*;
use dropless_emu::driver::status::*;
use dropless_emu::driver::CUcontext;

#[track_caller]
fn expect(got: i32, want: i32) {
    assert_eq!(got, want);
}

#[test]
fn before_init_nothing_answers_and_references_are_counted() {
    let mut count: c_int = -1;
    let mut ctx: CUcontext = null_mut();
    let (mut flags, mut active) = (0, 1);
    // SAFETY: every out-parameter is a valid local; handles are looked up.
    unsafe {
        expect(cuDeviceGetCount(&mut count), CUDA_ERROR_NOT_INITIALIZED);
        expect(
            cuDevicePrimaryCtxRetain(&mut ctx, 0),
            CUDA_ERROR_NOT_INITIALIZED,
        );
        expect(cuCtxSynchronize(), CUDA_ERROR_NOT_INITIALIZED);
        expect(cuDriverGetVersion(&mut count), CUDA_SUCCESS);
        expect(cuInit(0), CUDA_SUCCESS);
        expect(cuInit(0), CUDA_SUCCESS);
        expect(
            cuDevicePrimaryCtxGetState(0, &mut flags, &mut active),
            CUDA_SUCCESS,
        );
        assert_eq!(active, 0);
        expect(cuDevicePrimaryCtxRelease_v2(0), CUDA_ERROR_INVALID_CONTEXT);
        expect(cuDevicePrimaryCtxRetain(&mut ctx, 0), CUDA_SUCCESS);
        let first = ctx;
        expect(cuDevicePrimaryCtxRetain(&mut ctx, 0), CUDA_SUCCESS);
        assert_eq!(ctx, first, "one primary context per device");
        expect(cuDevicePrimaryCtxRelease_v2(0), CUDA_SUCCESS);
        expect(
            cuDevicePrimaryCtxGetState(0, &mut flags, &mut active),
            CUDA_SUCCESS,
        );
        assert_eq!(active, 1);
        expect(cuDevicePrimaryCtxRelease_v2(0), CUDA_SUCCESS);
        expect(
            cuDevicePrimaryCtxGetState(0, &mut flags, &mut active),
            CUDA_SUCCESS,
        );
        assert_eq!(active, 0);
        expect(cuCtxSetCurrent(ctx), CUDA_SUCCESS);
        expect(cuCtxSynchronize(), CUDA_SUCCESS);
        expect(cuCtxSetCurrent(null_mut()), CUDA_SUCCESS);
        expect(cuCtxSynchronize(), CUDA_ERROR_INVALID_CONTEXT);
    }
}
