//! Modules and launches through the driver API: images of each kind, kernel
//! lookup, parameter buffers (`kernelParams` and `extra`), the launch limits
//! (`.maxntid`, dynamic shared memory and its attribute), and failures that
//! stay pending on their stream until a synchronisation returns them.

mod driver_support;

use std::ffi::{c_void, CString};
use std::ptr::null_mut;

use driver_support::{alloc, buffer, context, download, expect, free, module, ok};
use dropless_emu::driver::device::cuCtxSynchronize;
use dropless_emu::driver::launch::cuLaunchKernel;
use dropless_emu::driver::module::*;
use dropless_emu::driver::status::*;
use dropless_emu::driver::streams::*;
use dropless_emu::driver::{CUdeviceptr, CUevent, CUfunction, CUmodule, CUstream};

/// `add_one(float *data, u32 n)`: `data[i] += 1` for `i < n`, one thread
/// each; `store_at(u32 *data, u64 index)`: `data[index] = 7` from thread 0,
/// unchecked; `small(u32 *out)` with `.maxntid 64`; `dyn_shared(u32 *out)`
/// writes its thread index through dynamic shared memory.
const KERNELS: &str = r#"
.extern .shared .align 4 .b8 dyn[];

.visible .entry add_one(
    .param .u64 add_one_data,
    .param .u32 add_one_n
)
{
    .reg .pred %p<2>;
    .reg .b32 %r<6>;
    .reg .f32 %f<3>;
    .reg .b64 %rd<5>;

    ld.param.u64 %rd1, [add_one_data];
    ld.param.u32 %r1, [add_one_n];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.s32 %r5, %r2, %r3, %r4;
    setp.ge.u32 %p1, %r5, %r1;
    @%p1 bra DONE;
    cvta.to.global.u64 %rd2, %rd1;
    mul.wide.u32 %rd3, %r5, 4;
    add.s64 %rd4, %rd2, %rd3;
    ld.global.f32 %f1, [%rd4];
    add.f32 %f2, %f1, 0f3F800000;
    st.global.f32 [%rd4], %f2;
DONE:
    ret;
}

.visible .entry store_at(
    .param .u64 store_at_data,
    .param .u64 store_at_index
)
{
    .reg .b32 %r<2>;
    .reg .b64 %rd<5>;

    ld.param.u64 %rd1, [store_at_data];
    ld.param.u64 %rd2, [store_at_index];
    cvta.to.global.u64 %rd3, %rd1;
    shl.b64 %rd4, %rd2, 2;
    add.s64 %rd3, %rd3, %rd4;
    mov.u32 %r1, 7;
    st.global.u32 [%rd3], %r1;
    ret;
}

.visible .entry small(
    .param .u64 small_out
)
.maxntid 64, 1, 1
{
    ret;
}

.visible .entry dyn_shared(
    .param .u64 dyn_shared_out
)
{
    .reg .b32 %r<4>;
    .reg .b64 %rd<6>;

    ld.param.u64 %rd1, [dyn_shared_out];
    cvta.to.global.u64 %rd2, %rd1;
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, dyn;
    mul.wide.u32 %rd3, %r1, 4;
    cvt.u64.u32 %rd4, %r2;
    add.s64 %rd4, %rd4, %rd3;
    st.shared.u32 [%rd4], %r1;
    bar.sync 0;
    ld.shared.u32 %r3, [%rd4];
    add.s64 %rd5, %rd2, %rd3;
    st.global.u32 [%rd5], %r3;
    ret;
}
"#;

fn load(text: &str) -> CUmodule {
    let mut m: CUmodule = null_mut();
    // SAFETY: `text` is NUL-terminated PTX.
    ok(unsafe { cuModuleLoadData(&mut m, text.as_ptr().cast()) });
    m
}

fn function(m: CUmodule, name: &str) -> CUfunction {
    let mut f: CUfunction = null_mut();
    let name = CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name and a valid out-parameter.
    ok(unsafe { cuModuleGetFunction(&mut f, m, name.as_ptr()) });
    f
}

/// Launches `f` over `grid` x `block` threads with `shared` dynamic bytes.
fn launch(
    f: CUfunction,
    grid: u32,
    block: u32,
    shared: u32,
    stream: CUstream,
    args: &mut [*mut c_void],
) -> i32 {
    // SAFETY: `args` holds one pointer per kernel parameter, to its bytes.
    unsafe {
        cuLaunchKernel(
            f,
            grid,
            1,
            1,
            block,
            1,
            1,
            shared,
            stream,
            args.as_mut_ptr(),
            null_mut(),
        )
    }
}

fn arg<T>(v: &mut T) -> *mut c_void {
    (v as *mut T).cast()
}

#[test]
fn a_kernel_runs_with_its_parameters() {
    context(0);
    let m = load(&module(KERNELS));
    let f = function(m, "add_one");
    let data: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let mut p: CUdeviceptr = buffer(&data);
    let mut n: u32 = 90;
    ok(launch(
        f,
        4,
        32,
        0,
        null_mut(),
        &mut [arg(&mut p), arg(&mut n)],
    ));
    let back = download::<f32>(p, 100);
    for (i, v) in back.iter().enumerate() {
        let want = if i < 90 { i as f32 + 1.0 } else { i as f32 };
        assert_eq!(*v, want, "element {i}");
    }
    // The same parameters packed in one buffer through `extra`.
    let mut packed = [0u8; 12];
    packed[..8].copy_from_slice(&p.to_le_bytes());
    packed[8..].copy_from_slice(&100u32.to_le_bytes());
    let mut size = packed.len();
    let mut extra = [
        std::ptr::without_provenance_mut(1),
        packed.as_mut_ptr().cast(),
        std::ptr::without_provenance_mut(2),
        arg(&mut size),
        null_mut(),
    ];
    // SAFETY: `extra` is END-terminated and its buffer holds the parameters.
    ok(unsafe {
        cuLaunchKernel(
            f,
            1,
            1,
            1,
            128,
            1,
            1,
            0,
            null_mut(),
            null_mut(),
            extra.as_mut_ptr(),
        )
    });
    assert_eq!(download::<f32>(p, 100)[95], 96.0);
    // Missing parameters are refused.
    // SAFETY: null parameter lists are refused before any read.
    expect(
        unsafe { cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, null_mut(), null_mut(), null_mut()) },
        CUDA_ERROR_INVALID_VALUE,
    );
    free(p);
    // SAFETY: handles are looked up, not followed.
    unsafe {
        ok(cuModuleUnload(m));
        expect(cuModuleUnload(m), CUDA_ERROR_INVALID_HANDLE);
    }
    expect(
        launch(f, 1, 32, 0, null_mut(), &mut [arg(&mut p), arg(&mut n)]),
        CUDA_ERROR_INVALID_HANDLE,
    );
}

#[test]
fn kernels_are_looked_up_by_name() {
    context(0);
    let m = load(&module(KERNELS));
    let (a, b) = (function(m, "add_one"), function(m, "add_one"));
    assert_eq!(a, b, "one handle per kernel");
    let mut f: CUfunction = null_mut();
    let missing = CString::new("nope").unwrap();
    // SAFETY: NUL-terminated names and valid out-parameters.
    unsafe {
        expect(
            cuModuleGetFunction(&mut f, m, missing.as_ptr()),
            CUDA_ERROR_NOT_FOUND,
        );
        expect(
            cuModuleGetFunction(&mut f, 0x5555_0000usize as CUmodule, missing.as_ptr()),
            CUDA_ERROR_INVALID_HANDLE,
        );
        ok(cuModuleUnload(m));
    }
}

#[test]
fn images_that_are_not_runnable_ptx_are_refused() {
    context(0);
    let mut m: CUmodule = null_mut();
    let bad_ptx = module("this is not ptx;\n");
    let junk = [0xde_u8, 0xad, 0xbe, 0xef, 0xff, 0];
    // An ELF header: a cubin holds SASS only.
    let mut elf = [0u8; 64];
    elf[..9].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0x41, 8]);
    elf[48..52].copy_from_slice(&0x0600_5004u32.to_le_bytes());
    // SAFETY: each image is whole (NUL-terminated text, or an ELF header).
    unsafe {
        expect(
            cuModuleLoadData(&mut m, bad_ptx.as_ptr().cast()),
            CUDA_ERROR_INVALID_PTX,
        );
        expect(
            cuModuleLoadData(&mut m, junk.as_ptr().cast()),
            CUDA_ERROR_INVALID_IMAGE,
        );
        expect(
            cuModuleLoadData(&mut m, elf.as_ptr().cast()),
            CUDA_ERROR_NO_BINARY_FOR_GPU,
        );
        expect(
            cuModuleLoadData(&mut m, std::ptr::null()),
            CUDA_ERROR_INVALID_VALUE,
        );
    }
}

#[test]
fn launch_limits_follow_the_kernel_and_its_attributes() {
    context(0);
    let m = load(&module(KERNELS));
    let small = function(m, "small");
    let mut out: CUdeviceptr = alloc(4096);
    let mut threads = -1;
    // SAFETY: valid out-parameter.
    ok(unsafe { cuFuncGetAttribute(&mut threads, 0, small) });
    assert_eq!(threads, 64);
    ok(launch(small, 1, 64, 0, null_mut(), &mut [arg(&mut out)]));
    expect(
        launch(small, 1, 65, 0, null_mut(), &mut [arg(&mut out)]),
        CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
    );
    expect(
        launch(small, 0, 32, 0, null_mut(), &mut [arg(&mut out)]),
        CUDA_ERROR_INVALID_VALUE,
    );

    let f = function(m, "dyn_shared");
    let mut limit = 0;
    // SAFETY: valid out-parameter.
    ok(unsafe { cuFuncGetAttribute(&mut limit, 8, f) });
    assert_eq!(limit, 48 * 1024);
    let big = 64 * 1024;
    expect(
        launch(f, 1, 256, big, null_mut(), &mut [arg(&mut out)]),
        CUDA_ERROR_INVALID_VALUE,
    );
    // SAFETY: handles are looked up.
    unsafe {
        expect(cuFuncSetAttribute(f, 8, 166_913), CUDA_ERROR_INVALID_VALUE);
        expect(cuFuncSetAttribute(f, 8, -1), CUDA_ERROR_INVALID_VALUE);
        expect(cuFuncSetAttribute(f, 0, 32), CUDA_ERROR_INVALID_VALUE);
        ok(cuFuncSetAttribute(f, 8, big as i32));
        ok(cuFuncGetAttribute(&mut limit, 8, f));
    }
    assert_eq!(limit, big as i32);
    ok(launch(f, 1, 256, big, null_mut(), &mut [arg(&mut out)]));
    assert_eq!(download::<u32>(out, 256), (0..256).collect::<Vec<u32>>());
    free(out);
    // SAFETY: a handle, looked up.
    ok(unsafe { cuModuleUnload(m) });
}

#[test]
fn a_failed_launch_stays_pending_until_synchronised() {
    context(0);
    let m = load(&module(KERNELS));
    let f = function(m, "store_at");
    let mut stream: CUstream = null_mut();
    let mut event: CUevent = null_mut();
    // SAFETY: valid out-parameters.
    unsafe {
        ok(cuStreamCreate(&mut stream, 0));
        ok(cuEventCreate(&mut event, 0));
    }
    let mut p: CUdeviceptr = alloc(16);
    let (mut inside, mut outside) = (3u64, 4u64);
    ok(launch(
        f,
        1,
        1,
        0,
        stream,
        &mut [arg(&mut p), arg(&mut inside)],
    ));
    assert_eq!(download::<u32>(p + 12, 1), [7]);

    // An access past the end: returned now and by the next synchronisation.
    expect(
        launch(f, 1, 1, 0, stream, &mut [arg(&mut p), arg(&mut outside)]),
        CUDA_ERROR_ILLEGAL_ADDRESS,
    );
    // SAFETY: handles are looked up.
    unsafe {
        expect(cuStreamQuery(stream), CUDA_ERROR_ILLEGAL_ADDRESS);
        expect(cuStreamSynchronize(stream), CUDA_ERROR_ILLEGAL_ADDRESS);
        ok(cuStreamSynchronize(stream));
    }

    // Through an event recorded after the failure, which also clears it.
    expect(
        launch(f, 1, 1, 0, stream, &mut [arg(&mut p), arg(&mut outside)]),
        CUDA_ERROR_ILLEGAL_ADDRESS,
    );
    // SAFETY: handles are looked up.
    unsafe {
        ok(cuEventRecord(event, stream));
        expect(cuEventSynchronize(event), CUDA_ERROR_ILLEGAL_ADDRESS);
        ok(cuEventSynchronize(event));
        ok(cuStreamSynchronize(stream));
    }

    // Through the context.
    expect(
        launch(f, 1, 1, 0, stream, &mut [arg(&mut p), arg(&mut outside)]),
        CUDA_ERROR_ILLEGAL_ADDRESS,
    );
    // SAFETY: no pointers.
    unsafe {
        expect(cuCtxSynchronize(), CUDA_ERROR_ILLEGAL_ADDRESS);
        ok(cuStreamSynchronize(stream));
    }

    // A stream that waits on an event recorded after a failure inherits it.
    let mut other: CUstream = null_mut();
    expect(
        launch(f, 1, 1, 0, stream, &mut [arg(&mut p), arg(&mut outside)]),
        CUDA_ERROR_ILLEGAL_ADDRESS,
    );
    // SAFETY: valid out-parameter; handles are looked up.
    unsafe {
        ok(cuStreamCreate(&mut other, 0));
        ok(cuEventRecord(event, stream));
        ok(cuStreamWaitEvent(other, event, 0));
        expect(cuStreamSynchronize(other), CUDA_ERROR_ILLEGAL_ADDRESS);
        expect(cuStreamSynchronize(stream), CUDA_ERROR_ILLEGAL_ADDRESS);
        ok(cuStreamDestroy_v2(other));
        ok(cuStreamDestroy_v2(stream));
        ok(cuEventDestroy_v2(event));
        ok(cuModuleUnload(m));
    }
    free(p);
}

#[test]
fn a_fatbin_image_loads_its_ptx() {
    context(0);
    let mut text = module(KERNELS).into_bytes();
    let padded = text.len().div_ceil(8) * 8;
    text.resize(padded, 0);
    let mut image = Vec::new();
    image.extend_from_slice(&0xBA55_ED50u32.to_le_bytes());
    image.extend_from_slice(&1u16.to_le_bytes());
    image.extend_from_slice(&16u16.to_le_bytes());
    image.extend_from_slice(&((64 + padded) as u64).to_le_bytes());
    let mut header = [0u8; 64];
    header[0] = 1;
    header[4] = 64;
    header[8..16].copy_from_slice(&(padded as u64).to_le_bytes());
    header[28] = 80;
    image.extend_from_slice(&header);
    image.extend_from_slice(&text);
    let mut m: CUmodule = null_mut();
    // SAFETY: a whole fatbin.
    ok(unsafe { cuModuleLoadData(&mut m, image.as_ptr().cast()) });
    function(m, "store_at");
    // SAFETY: a handle, looked up.
    ok(unsafe { cuModuleUnload(m) });
}
