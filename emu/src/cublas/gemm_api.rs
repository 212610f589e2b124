//! The GEMM entry points: `cublasGemmEx`, `cublasGemmStridedBatchedEx`
//! (f32, f16 and bf16 operands, `CUBLAS_COMPUTE_32F*`), `cublasSgemm_v2` and
//! `cublasSgemmStridedBatched`. Alpha and beta are f32, read from the host
//! or from device memory per the handle's pointer mode.

// The entry points have the C API's signatures.
#![allow(clippy::too_many_arguments)]

use std::ffi::{c_int, c_longlong, c_void};

use super::cublasHandle_t;
use super::gemm::{Elem, Gemm, Matrix, Op};
use super::handle::{guard, handle, Handle, POINTER_MODE_DEVICE};
use super::status::{
    cublasStatus_t, CUBLAS_STATUS_EXECUTION_FAILED, CUBLAS_STATUS_INVALID_VALUE,
    CUBLAS_STATUS_NOT_INITIALIZED, CUBLAS_STATUS_NOT_SUPPORTED,
};
use crate::driver::failure::{Failure, Outcome};
use crate::driver::state::driver;
use crate::memory::DeviceMemory;

/// `CUBLAS_COMPUTE_32F` and `CUBLAS_COMPUTE_32F_PEDANTIC`: every type pair.
const COMPUTE_32F: [c_int; 2] = [68, 69];
/// `CUBLAS_COMPUTE_32F_FAST_16F`, `_FAST_16BF`, `_FAST_TF32`: f32 operands
/// only (computed exactly in f32 here, which their contract allows).
const COMPUTE_32F_FAST: [c_int; 3] = [74, 75, 77];

/// The arguments of one GEMM call, as the C API passes them.
struct Call {
    transa: c_int,
    transb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const c_void,
    a: (*const c_void, c_int, c_int, c_longlong),
    b: (*const c_void, c_int, c_int, c_longlong),
    beta: *const c_void,
    c: (*mut c_void, c_int, c_int, c_longlong),
    batch: c_int,
    compute: c_int,
}

/// The device memory of the handle's device.
fn memory_of(state: &Handle) -> Outcome<&'static DeviceMemory> {
    driver()
        .and_then(|d| d.device(state.ordinal as i32))
        .map(|c| &c.memory)
        .map_err(|f| Failure::new(CUBLAS_STATUS_NOT_INITIALIZED, f.message))
}

/// Alpha or beta: an f32 on the host or in device memory.
///
/// # Safety
///
/// In host pointer mode, `p` must be null or valid for a read of an f32.
unsafe fn scalar(
    state: &Handle,
    memory: &DeviceMemory,
    p: *const c_void,
    name: &str,
) -> Outcome<f32> {
    if p.is_null() {
        return Err(Failure::new(
            CUBLAS_STATUS_INVALID_VALUE,
            format!("{name} is a null pointer"),
        ));
    }
    if state.pointer_mode == POINTER_MODE_DEVICE {
        let mut bytes = [0u8; 4];
        memory.read_into(p as u64, &mut bytes).map_err(|e| {
            Failure::new(
                CUBLAS_STATUS_EXECUTION_FAILED,
                format!("{name} (device pointer mode): {e}"),
            )
        })?;
        return Ok(f32::from_le_bytes(bytes));
    }
    // SAFETY: a host f32 per the caller's contract.
    Ok(unsafe { p.cast::<f32>().read_unaligned() })
}

/// Checks that the compute type takes these operand types.
fn check_types(compute: c_int, a: Elem, b: Elem, c: Elem) -> Outcome {
    let pair_ok = a == b && (c == a || c == Elem::F32);
    let ok = if COMPUTE_32F.contains(&compute) {
        pair_ok
    } else if COMPUTE_32F_FAST.contains(&compute) {
        [a, b, c] == [Elem::F32; 3]
    } else {
        return Err(Failure::new(
            CUBLAS_STATUS_NOT_SUPPORTED,
            format!("compute type {compute} is not emulated (CUBLAS_COMPUTE_32F* only)"),
        ));
    };
    if ok {
        Ok(())
    } else {
        Err(Failure::new(
            CUBLAS_STATUS_NOT_SUPPORTED,
            format!("A {a:?}, B {b:?}, C {c:?} under compute type {compute} is not a cuBLAS combination"),
        ))
    }
}

/// Runs one call on `handle`.
///
/// # Safety
///
/// In host pointer mode, `call.alpha` and `call.beta` must be null or
/// valid for a read of an f32.
unsafe fn gemm(handle_ptr: cublasHandle_t, call: Call) -> Outcome {
    let state = handle(handle_ptr)?;
    let memory = memory_of(&state)?;
    let op = |v: c_int, name: &str| {
        Op::from_cublas(v).ok_or_else(|| {
            Failure::new(
                CUBLAS_STATUS_INVALID_VALUE,
                format!("{name} = {v} is not CUBLAS_OP_N, _T or _C"),
            )
        })
    };
    let elem = |t: c_int, name: &str| {
        Elem::from_cuda(t).ok_or_else(|| {
            Failure::new(
                CUBLAS_STATUS_NOT_SUPPORTED,
                format!("{name} = {t}: only CUDA_R_32F, CUDA_R_16F and CUDA_R_16BF are emulated"),
            )
        })
    };
    let (ta, tb) = (op(call.transa, "transa")?, op(call.transb, "transb")?);
    let (ea, eb, ec) = (
        elem(call.a.1, "Atype")?,
        elem(call.b.1, "Btype")?,
        elem(call.c.1, "Ctype")?,
    );
    check_types(call.compute, ea, eb, ec)?;
    // SAFETY: per this function's contract.
    let alpha = unsafe { scalar(&state, memory, call.alpha, "alpha")? };
    // SAFETY: as above.
    let beta = unsafe { scalar(&state, memory, call.beta, "beta")? };
    Gemm {
        transa: ta,
        transb: tb,
        m: call.m.into(),
        n: call.n.into(),
        k: call.k.into(),
        alpha,
        beta,
        a: Matrix {
            addr: call.a.0 as u64,
            elem: ea,
            ld: call.a.2.into(),
            stride: call.a.3,
        },
        b: Matrix {
            addr: call.b.0 as u64,
            elem: eb,
            ld: call.b.2.into(),
            stride: call.b.3,
        },
        c: Matrix {
            addr: call.c.0 as u64,
            elem: ec,
            ld: call.c.2.into(),
            stride: call.c.3,
        },
        batch: call.batch.into(),
    }
    .run(memory)
}

/// `CUDA_R_32F`.
const R_32F: c_int = 0;
/// `CUBLAS_COMPUTE_32F`.
const COMPUTE_32F_PLAIN: c_int = 68;

/// `cublasGemmEx`: `C = alpha op(A) op(B) + beta C` (`algo` is ignored).
///
/// # Safety
///
/// In host pointer mode, `alpha` and `beta` must be null or point to f32s;
/// the matrices are device addresses, checked.
#[no_mangle]
pub unsafe extern "C" fn cublasGemmEx(
    handle: cublasHandle_t,
    transa: c_int,
    transb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const c_void,
    a: *const c_void,
    a_type: c_int,
    lda: c_int,
    b: *const c_void,
    b_type: c_int,
    ldb: c_int,
    beta: *const c_void,
    c: *mut c_void,
    c_type: c_int,
    ldc: c_int,
    compute: c_int,
    algo: c_int,
) -> cublasStatus_t {
    let _ = algo;
    let call = Call {
        transa,
        transb,
        m,
        n,
        k,
        alpha,
        a: (a, a_type, lda, 0),
        b: (b, b_type, ldb, 0),
        beta,
        c: (c, c_type, ldc, 0),
        batch: 1,
        compute,
    };
    // SAFETY: per this function's contract.
    guard("cublasGemmEx", || unsafe { gemm(handle, call) })
}

/// `cublasGemmStridedBatchedEx`: `batch` products, operand `i` starting
/// `i * stride` elements in (`algo` is ignored).
///
/// # Safety
///
/// As [`cublasGemmEx`].
#[no_mangle]
pub unsafe extern "C" fn cublasGemmStridedBatchedEx(
    handle: cublasHandle_t,
    transa: c_int,
    transb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const c_void,
    a: *const c_void,
    a_type: c_int,
    lda: c_int,
    stride_a: c_longlong,
    b: *const c_void,
    b_type: c_int,
    ldb: c_int,
    stride_b: c_longlong,
    beta: *const c_void,
    c: *mut c_void,
    c_type: c_int,
    ldc: c_int,
    stride_c: c_longlong,
    batch: c_int,
    compute: c_int,
    algo: c_int,
) -> cublasStatus_t {
    let _ = algo;
    let call = Call {
        transa,
        transb,
        m,
        n,
        k,
        alpha,
        a: (a, a_type, lda, stride_a),
        b: (b, b_type, ldb, stride_b),
        beta,
        c: (c, c_type, ldc, stride_c),
        batch,
        compute,
    };
    // SAFETY: per this function's contract.
    guard("cublasGemmStridedBatchedEx", || unsafe {
        gemm(handle, call)
    })
}

/// `cublasSgemm_v2`: the f32 GEMM.
///
/// # Safety
///
/// As [`cublasGemmEx`].
#[no_mangle]
pub unsafe extern "C" fn cublasSgemm_v2(
    handle: cublasHandle_t,
    transa: c_int,
    transb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: *const f32,
    c: *mut f32,
    ldc: c_int,
) -> cublasStatus_t {
    let call = Call {
        transa,
        transb,
        m,
        n,
        k,
        alpha: alpha.cast(),
        a: (a.cast(), R_32F, lda, 0),
        b: (b.cast(), R_32F, ldb, 0),
        beta: beta.cast(),
        c: (c.cast(), R_32F, ldc, 0),
        batch: 1,
        compute: COMPUTE_32F_PLAIN,
    };
    // SAFETY: per this function's contract.
    guard("cublasSgemm_v2", || unsafe { gemm(handle, call) })
}

/// `cublasSgemmStridedBatched`: the strided batched f32 GEMM.
///
/// # Safety
///
/// As [`cublasGemmEx`].
#[no_mangle]
pub unsafe extern "C" fn cublasSgemmStridedBatched(
    handle: cublasHandle_t,
    transa: c_int,
    transb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const f32,
    a: *const f32,
    lda: c_int,
    stride_a: c_longlong,
    b: *const f32,
    ldb: c_int,
    stride_b: c_longlong,
    beta: *const f32,
    c: *mut f32,
    ldc: c_int,
    stride_c: c_longlong,
    batch: c_int,
) -> cublasStatus_t {
    let call = Call {
        transa,
        transb,
        m,
        n,
        k,
        alpha: alpha.cast(),
        a: (a.cast(), R_32F, lda, stride_a),
        b: (b.cast(), R_32F, ldb, stride_b),
        beta: beta.cast(),
        c: (c.cast(), R_32F, ldc, stride_c),
        batch,
        compute: COMPUTE_32F_PLAIN,
    };
    // SAFETY: per this function's contract.
    guard("cublasSgemmStridedBatched", || unsafe {
        gemm(handle, call)
    })
}
