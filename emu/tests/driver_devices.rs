//! Several emulated devices (`DROPLESS_EMU_DEVICES=2`, one test so that the
//! setting is read after it is set): each has its own memory and primary
//! context, copies between them go through either pointer, and a cuBLAS
//! handle works on the device of the context it was created in.

mod driver_support;

use std::ffi::c_int;
use std::ptr::null_mut;

use driver_support::{alloc, buffer, context, download, expect, ok};
use dropless_emu::cublas::gemm_api::cublasSgemm_v2;
use dropless_emu::cublas::handle::{cublasCreate_v2, cublasDestroy_v2};
use dropless_emu::cublas::status::CUBLAS_STATUS_EXECUTION_FAILED;
use dropless_emu::driver::allocation::cuMemGetInfo_v2;
use dropless_emu::driver::device::{cuDeviceGetAttribute, cuDeviceGetCount, cuDeviceTotalMem_v2};
use dropless_emu::driver::transfer::{cuMemcpyDtoD_v2, cuMemcpyPeerAsync};

#[test]
fn devices_have_their_own_memory_and_contexts() {
    // SAFETY: no other thread of this test binary reads the environment.
    unsafe {
        std::env::set_var("DROPLESS_EMU_DEVICES", "2");
        std::env::set_var("DROPLESS_EMU_MEMORY_MIB", "8");
    }
    let ctx0 = context(0);
    let (mut count, mut total, mut bus): (c_int, usize, c_int) = (0, 0, -1);
    // SAFETY: valid out-parameters.
    unsafe {
        ok(cuDeviceGetCount(&mut count));
        ok(cuDeviceTotalMem_v2(&mut total, 1));
        ok(cuDeviceGetAttribute(&mut bus, 33, 1));
    }
    assert_eq!((count, total, bus), (2, 8 << 20, 1));

    let on0 = buffer(&[1.0f32, 2.0, 3.0, 4.0]);

    let ctx1 = context(1);
    assert_ne!(ctx0, ctx1);
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: valid out-parameters.
    ok(unsafe { cuMemGetInfo_v2(&mut free, &mut total) });
    assert_eq!(
        (free, total),
        (8 << 20, 8 << 20),
        "device 1 holds nothing yet"
    );
    let on1 = alloc(16);
    // SAFETY: device addresses and handles, all checked.
    unsafe {
        ok(cuMemcpyPeerAsync(on1, ctx1, on0, ctx0, 16, null_mut()));
        ok(cuMemcpyDtoD_v2(on1, on0, 8));
    }
    assert_eq!(download::<f32>(on1, 4), [1.0, 2.0, 3.0, 4.0]);

    // A cuBLAS handle of device 1 multiplies device 1 matrices and refuses
    // device 0's.
    let mut h = null_mut();
    // SAFETY: a valid out-parameter.
    ok(unsafe { cublasCreate_v2(&mut h) });
    let (alpha, beta) = (1.0f32, 0.0f32);
    let c1 = alloc(16);
    // SAFETY: host scalars; device matrices are checked.
    unsafe {
        ok(cublasSgemm_v2(
            h,
            0,
            0,
            2,
            2,
            2,
            &alpha,
            on1 as *const f32,
            2,
            on1 as *const f32,
            2,
            &beta,
            c1 as *mut f32,
            2,
        ));
        expect(
            cublasSgemm_v2(
                h,
                0,
                0,
                2,
                2,
                2,
                &alpha,
                on0 as *const f32,
                2,
                on1 as *const f32,
                2,
                &beta,
                c1 as *mut f32,
                2,
            ),
            CUBLAS_STATUS_EXECUTION_FAILED,
        );
        ok(cublasDestroy_v2(h));
    }
    // Column-major [[1, 3], [2, 4]] squared: [[7, 15], [10, 22]].
    assert_eq!(download::<f32>(c1, 4), [7.0, 10.0, 15.0, 22.0]);
}
