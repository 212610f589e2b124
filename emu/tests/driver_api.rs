//! The driver API shim without kernels: devices, contexts, memory, copies,
//! streams, events, error strings, refused handles and the stubs. Written
//! from the CUDA driver API's documented behaviour.

mod driver_support;

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::null_mut;

use driver_support::{alloc, buffer, context, download, expect, free, ok, upload};
use dropless_emu::driver::allocation::{
    cuMemAllocAsync, cuMemAlloc_v2, cuMemFreeAsync, cuMemFree_v2, cuMemGetInfo_v2,
};
use dropless_emu::driver::device::*;
use dropless_emu::driver::status::*;
use dropless_emu::driver::streams::*;
use dropless_emu::driver::transfer::*;
use dropless_emu::driver::{CUcontext, CUevent, CUstream};
use dropless_emu::memory::POISON;

#[test]
fn the_device_is_an_sm80_emulator_and_says_so() {
    context(0);
    let (mut count, mut version, mut dev) = (0, 0, -1);
    let mut name = [0 as c_char; 128];
    // SAFETY: every out-parameter is a valid local.
    unsafe {
        expect(cuInit(1), CUDA_ERROR_INVALID_VALUE);
        ok(cuDriverGetVersion(&mut version));
        ok(cuDeviceGetCount(&mut count));
        ok(cuDeviceGet(&mut dev, 0));
        expect(cuDeviceGet(&mut dev, count), CUDA_ERROR_INVALID_DEVICE);
        expect(cuDeviceGet(&mut dev, -1), CUDA_ERROR_INVALID_DEVICE);
        expect(cuDeviceGet(null_mut(), 0), CUDA_ERROR_INVALID_VALUE);
        ok(cuDeviceGetName(name.as_mut_ptr(), name.len() as c_int, 0));
    }
    assert_eq!((version, count, dev), (13000, 1, 0));
    // SAFETY: cuDeviceGetName NUL-terminates.
    let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_str().unwrap();
    assert!(
        name.contains("emulator") && name.contains("not a GPU"),
        "{name}"
    );

    let mut short = [1 as c_char; 5];
    // SAFETY: a 5-byte buffer, and its length.
    ok(unsafe { cuDeviceGetName(short.as_mut_ptr(), 5, 0) });
    assert_eq!(short[4], 0);

    let attribute = |a: c_int| {
        let mut v = -1;
        // SAFETY: a valid out-parameter.
        ok(unsafe { cuDeviceGetAttribute(&mut v, a, 0) });
        v
    };
    // Compute capability, warp size, threads, shared memory (default and
    // opt-in), memory pools (cudarc allocates stream-ordered with them).
    assert_eq!((attribute(75), attribute(76)), (8, 0));
    assert_eq!(attribute(10), 32);
    assert_eq!(attribute(1), 1024);
    assert_eq!(attribute(8), 48 * 1024);
    assert_eq!(attribute(97), 166_912);
    assert_eq!(attribute(115), 1);
    let mut v = 0;
    // SAFETY: valid out-parameters.
    unsafe {
        expect(cuDeviceGetAttribute(&mut v, 0, 0), CUDA_ERROR_INVALID_VALUE);
        expect(
            cuDeviceGetAttribute(&mut v, 10, 7),
            CUDA_ERROR_INVALID_DEVICE,
        );
    }
    let (mut major, mut minor, mut total) = (0, 0, 0);
    // SAFETY: valid out-parameters.
    unsafe {
        ok(cuDeviceComputeCapability(&mut major, &mut minor, 0));
        ok(cuDeviceTotalMem_v2(&mut total, 0));
    }
    assert_eq!((major, minor), (8, 0));
    assert_eq!(
        total as u64,
        dropless_emu::settings::Settings::global().memory_bytes
    );
}

#[test]
fn the_current_context_is_per_thread() {
    let ctx = context(0);
    let (mut seen, mut dev): (CUcontext, c_int) = (null_mut(), -1);
    // SAFETY: valid out-parameters; handles are looked up, not followed.
    unsafe {
        ok(cuCtxGetCurrent(&mut seen));
        ok(cuCtxGetDevice(&mut dev));
        expect(
            cuCtxSetCurrent(0xdead_0000usize as CUcontext),
            CUDA_ERROR_INVALID_CONTEXT,
        );
    }
    assert_eq!((seen, dev), (ctx, 0));
    let other = std::thread::spawn(|| {
        let mut seen: CUcontext = 1usize as CUcontext;
        let mut p = 0;
        // SAFETY: valid out-parameters.
        unsafe {
            ok(cuCtxGetCurrent(&mut seen));
            expect(cuMemAlloc_v2(&mut p, 16), CUDA_ERROR_INVALID_CONTEXT);
            expect(cuCtxSynchronize(), CUDA_ERROR_INVALID_CONTEXT);
        }
        seen as usize
    })
    .join()
    .unwrap();
    assert_eq!(other, 0, "a new thread has no current context");
    let (mut flags, mut active) = (9, 0);
    // SAFETY: valid out-parameters.
    ok(unsafe { cuDevicePrimaryCtxGetState(0, &mut flags, &mut active) });
    assert_eq!((flags, active), (0, 1));
}

#[test]
fn allocations_are_exact_poisoned_and_checked() {
    context(0);
    let p = alloc(10);
    assert_eq!(p % 256, 0);
    assert_eq!(download::<u8>(p, 10), vec![POISON; 10]);
    upload(p + 2, &[1u8, 2, 3]);
    assert_eq!(&download::<u8>(p, 5)[..], &[POISON, POISON, 1, 2, 3]);
    let mut host = [0u8; 4];
    // SAFETY: `host` is writable for 4 bytes; device ranges are checked.
    unsafe {
        expect(
            cuMemcpyDtoH_v2(host.as_mut_ptr().cast(), p + 8, 4),
            CUDA_ERROR_INVALID_VALUE,
        );
        expect(
            cuMemcpyHtoD_v2(p + 7, host.as_ptr().cast(), 4),
            CUDA_ERROR_INVALID_VALUE,
        );
        expect(
            cuMemcpyHtoD_v2(p, std::ptr::null(), 4),
            CUDA_ERROR_INVALID_VALUE,
        );
        ok(cuMemcpyHtoD_v2(p, std::ptr::null(), 0));
    }
    let mut q = 0;
    // SAFETY: valid out-parameters.
    unsafe {
        expect(cuMemAlloc_v2(&mut q, 0), CUDA_ERROR_INVALID_VALUE);
        expect(
            cuMemAlloc_v2(&mut q, usize::MAX / 2),
            CUDA_ERROR_OUT_OF_MEMORY,
        );
        expect(cuMemAlloc_v2(null_mut(), 16), CUDA_ERROR_INVALID_VALUE);
    }
    free(p);
    // SAFETY: device addresses only.
    unsafe {
        expect(cuMemFree_v2(p), CUDA_ERROR_INVALID_VALUE);
        expect(cuMemFree_v2(p + 1), CUDA_ERROR_INVALID_VALUE);
    }
    let mut host = [0u8; 1];
    // SAFETY: `host` is writable for 1 byte.
    let freed = unsafe { cuMemcpyDtoH_v2(host.as_mut_ptr().cast(), p, 1) };
    expect(freed, CUDA_ERROR_INVALID_VALUE);
}

#[test]
fn memory_info_counts_allocations() {
    context(0);
    let (mut free_bytes, mut total) = (0usize, 0usize);
    // SAFETY: valid out-parameters.
    ok(unsafe { cuMemGetInfo_v2(&mut free_bytes, &mut total) });
    assert_eq!(
        total as u64,
        dropless_emu::settings::Settings::global().memory_bytes
    );
    assert!(free_bytes <= total);
}

#[test]
fn stream_ordered_allocation_runs_at_once() {
    context(0);
    let mut stream: CUstream = null_mut();
    let mut p = 0;
    // SAFETY: valid out-parameters; handles are looked up.
    unsafe {
        ok(cuStreamCreate(&mut stream, 1));
        ok(cuMemAllocAsync(&mut p, 64, stream));
        ok(cuMemsetD32Async(p, 0x0102_0304, 16, stream));
        ok(cuMemFreeAsync(p, stream));
        expect(cuMemFreeAsync(p, stream), CUDA_ERROR_INVALID_VALUE);
        expect(
            cuMemAllocAsync(&mut p, 64, 0x77_0000usize as CUstream),
            CUDA_ERROR_INVALID_HANDLE,
        );
        ok(cuStreamDestroy_v2(stream));
        expect(
            cuMemAllocAsync(&mut p, 64, stream),
            CUDA_ERROR_INVALID_HANDLE,
        );
    }
}

#[test]
fn copies_and_fills_follow_their_element_sizes() {
    context(0);
    let p = alloc(64);
    // SAFETY: device addresses only, all checked.
    unsafe {
        ok(cuMemsetD8_v2(p, 0xAB, 64));
        ok(cuMemsetD16_v2(p + 2, 0x1234, 3));
        ok(cuMemsetD32_v2(p + 8, 0xDEAD_BEEF, 2));
        expect(cuMemsetD32_v2(p + 2, 0, 1), CUDA_ERROR_INVALID_VALUE);
        expect(cuMemsetD16_v2(p + 1, 0, 1), CUDA_ERROR_INVALID_VALUE);
        expect(cuMemsetD8_v2(p + 60, 0, 5), CUDA_ERROR_INVALID_VALUE);
    }
    let bytes = download::<u8>(p, 20);
    assert_eq!(
        bytes,
        [
            0xAB, 0xAB, 0x34, 0x12, 0x34, 0x12, 0x34, 0x12, 0xEF, 0xBE, 0xAD, 0xDE, 0xEF, 0xBE,
            0xAD, 0xDE, 0xAB, 0xAB, 0xAB, 0xAB
        ]
    );
    // Device to device, overlapping ranges included.
    let q = buffer(&[1u32, 2, 3, 4, 5, 6, 7, 8]);
    // SAFETY: device addresses only.
    unsafe {
        ok(cuMemcpyDtoD_v2(q + 4, q, 16));
        expect(cuMemcpyDtoD_v2(q + 20, q, 16), CUDA_ERROR_INVALID_VALUE);
    }
    assert_eq!(download::<u32>(q, 8), [1, 1, 2, 3, 4, 6, 7, 8]);
    // A "host" pointer that is device memory is copied as device memory.
    // SAFETY: both addresses lie in device allocations.
    ok(unsafe { cuMemcpyHtoD_v2(p, q as *const c_void, 8) });
    assert_eq!(download::<u32>(p, 2), [1, 1]);
    free(p);
    free(q);
}

#[test]
fn events_measure_wall_clock_time() {
    context(0);
    let (mut start, mut end, mut untimed): (CUevent, CUevent, CUevent) =
        (null_mut(), null_mut(), null_mut());
    let mut ms = -1.0f32;
    // SAFETY: valid out-parameters; handles are looked up.
    unsafe {
        ok(cuEventCreate(&mut start, 0));
        ok(cuEventCreate(&mut end, 0));
        ok(cuEventCreate(&mut untimed, 2));
        expect(cuEventCreate(&mut untimed, 4), CUDA_ERROR_INVALID_VALUE);
        expect(
            cuEventElapsedTime_v2(&mut ms, start, end),
            CUDA_ERROR_INVALID_HANDLE,
        );
        ok(cuEventRecord(start, null_mut()));
        std::thread::sleep(std::time::Duration::from_millis(20));
        ok(cuEventRecord(end, null_mut()));
        ok(cuEventRecord(untimed, null_mut()));
        ok(cuEventSynchronize(end));
        ok(cuEventQuery(end));
        ok(cuEventElapsedTime_v2(&mut ms, start, end));
        expect(
            cuEventElapsedTime(&mut ms, start, untimed),
            CUDA_ERROR_INVALID_HANDLE,
        );
        ok(cuEventDestroy_v2(untimed));
        expect(
            cuEventRecord(untimed, null_mut()),
            CUDA_ERROR_INVALID_HANDLE,
        );
        expect(cuEventDestroy_v2(untimed), CUDA_ERROR_INVALID_HANDLE);
    }
    assert!((19.0..10_000.0).contains(&ms), "{ms} ms");
    let mut back = 0.0f32;
    // SAFETY: valid out-parameter.
    ok(unsafe { cuEventElapsedTime(&mut back, end, start) });
    assert!(back < 0.0);
}

#[test]
fn streams_are_checked_handles() {
    context(0);
    let mut s: CUstream = null_mut();
    let (mut least, mut greatest) = (9, 9);
    // SAFETY: valid out-parameters; handles are looked up.
    unsafe {
        expect(cuStreamCreate(&mut s, 2), CUDA_ERROR_INVALID_VALUE);
        expect(cuStreamCreate(null_mut(), 0), CUDA_ERROR_INVALID_VALUE);
        ok(cuStreamCreateWithPriority(&mut s, 0, -3));
        ok(cuStreamQuery(s));
        ok(cuStreamSynchronize(s));
        ok(cuStreamSynchronize(null_mut()));
        ok(cuStreamSynchronize(2usize as CUstream));
        ok(cuCtxGetStreamPriorityRange(&mut least, &mut greatest));
        ok(cuStreamDestroy_v2(s));
        expect(cuStreamSynchronize(s), CUDA_ERROR_INVALID_HANDLE);
        expect(cuStreamDestroy_v2(s), CUDA_ERROR_INVALID_HANDLE);
        expect(cuStreamDestroy_v2(null_mut()), CUDA_ERROR_INVALID_HANDLE);
    }
    assert_eq!((least, greatest), (0, -5));
}

#[test]
fn error_names_and_strings_cover_the_driver_api() {
    let mut s: *const c_char = std::ptr::null();
    let text = |p: *const c_char| {
        // SAFETY: the shim returns static NUL-terminated strings.
        unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()
    };
    // SAFETY: valid out-parameters.
    unsafe {
        ok(cuGetErrorName(700, &mut s));
        assert_eq!(text(s), "CUDA_ERROR_ILLEGAL_ADDRESS");
        ok(cuGetErrorString(700, &mut s));
        assert_eq!(text(s), "an illegal memory access was encountered");
        ok(cuGetErrorName(0, &mut s));
        assert_eq!(text(s), "CUDA_SUCCESS");
        expect(cuGetErrorName(12345, &mut s), CUDA_ERROR_INVALID_VALUE);
        expect(cuGetErrorString(0, null_mut()), CUDA_ERROR_INVALID_VALUE);
    }
    for code in [
        1, 2, 3, 101, 200, 201, 209, 218, 400, 500, 700, 701, 702, 715, 716, 719, 801, 999,
    ] {
        assert!(
            name(code).is_some() && description(code).is_some(),
            "{code}"
        );
    }
}

#[test]
fn entry_points_not_emulated_say_so() {
    use dropless_emu::driver::unsupported::{cuGraphCreate, cuMemAllocManaged, cuMemHostAlloc};
    expect(cuGraphCreate(), CUDA_ERROR_NOT_SUPPORTED);
    expect(cuMemAllocManaged(), CUDA_ERROR_NOT_SUPPORTED);
    expect(cuMemHostAlloc(), CUDA_ERROR_NOT_SUPPORTED);
}
