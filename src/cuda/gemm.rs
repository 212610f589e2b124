//! Dense row-major matrix products through cuBLAS (`cublasGemmEx`, f32
//! accumulation): the router projection, the dense baselines, and the
//! yardstick the block-sparse kernels are measured by.

use cudarc::cublas::result::gemm_ex;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::{CudaBackend, DeviceElement, DeviceTensor};
use crate::dtype::{DType, Element};
use crate::error::{check_i32, Error, Result};

/// An element type cuBLAS multiplies (f32, f16, bf16; always f32 accumulation).
pub trait GemmElement: DeviceElement + Element {}

impl GemmElement for f32 {}
impl GemmElement for half::f16 {}
impl GemmElement for half::bf16 {}

fn cuda_type(dtype: DType) -> cudaDataType {
    match dtype {
        DType::F32 => cudaDataType::CUDA_R_32F,
        DType::F16 => cudaDataType::CUDA_R_16F,
        DType::BF16 => cudaDataType::CUDA_R_16BF,
    }
}

/// Shape of `op(X)` for a 2-D row-major `shape`.
fn op_dims(name: &str, shape: &[usize], trans: bool) -> Result<(usize, usize)> {
    let [r, c] = shape[..] else {
        return Err(Error::ShapeMismatch {
            op: "matmul",
            message: format!("{name} must be 2-D, found shape {shape:?}"),
        });
    };
    Ok(if trans { (c, r) } else { (r, c) })
}

/// Checks `op(A)·op(B)` shapes and returns `(m, n, k)`.
pub fn check_matmul(
    a_shape: &[usize],
    trans_a: bool,
    b_shape: &[usize],
    trans_b: bool,
) -> Result<(usize, usize, usize)> {
    let (m, k) = op_dims("A", a_shape, trans_a)?;
    let (kb, n) = op_dims("B", b_shape, trans_b)?;
    if k != kb {
        return Err(Error::ShapeMismatch {
            op: "matmul",
            message: format!(
                "op(A) is [{m}, {k}] but op(B) is [{kb}, {n}]: inner dimensions differ"
            ),
        });
    }
    if m == 0 || n == 0 || k == 0 {
        return Err(Error::Empty {
            op: "matmul",
            what: "a matrix dimension",
        });
    }
    for v in [m, n, k] {
        check_i32("matmul dimension", v as u128)?;
    }
    Ok((m, n, k))
}

/// `op(A)·op(B)` into a new `[m, n]` tensor of the operands' type.
pub fn matmul<T: GemmElement>(
    backend: &CudaBackend,
    a: &DeviceTensor<T>,
    trans_a: bool,
    b: &DeviceTensor<T>,
    trans_b: bool,
) -> Result<DeviceTensor<T>> {
    let (m, n, _) = check_matmul(a.shape(), trans_a, b.shape(), trans_b)?;
    let mut out = DeviceTensor::zeros(backend, &[m, n])?;
    matmul_into(backend, a, trans_a, b, trans_b, &mut out, false)?;
    Ok(out)
}

/// `out = op(A)·op(B)`, or `out += op(A)·op(B)` when `accumulate`. `out` may
/// be of the operands' type or f32 (e.g. f32 router logits from bf16 inputs).
pub fn matmul_into<T: GemmElement, O: GemmElement>(
    backend: &CudaBackend,
    a: &DeviceTensor<T>,
    trans_a: bool,
    b: &DeviceTensor<T>,
    trans_b: bool,
    out: &mut DeviceTensor<O>,
    accumulate: bool,
) -> Result<()> {
    let (m, n, k) = check_matmul(a.shape(), trans_a, b.shape(), trans_b)?;
    if out.shape() != [m, n] {
        return Err(Error::ShapeMismatch {
            op: "matmul",
            message: format!("out must be [{m}, {n}], found {:?}", out.shape()),
        });
    }
    if O::DTYPE != T::DTYPE && O::DTYPE != DType::F32 {
        return Err(Error::DTypeMismatch {
            op: "matmul",
            expected: format!("{} or f32 output", T::DTYPE),
            found: O::DTYPE.to_string(),
        });
    }
    let blas = backend.blas()?;
    let stream = backend.stream();
    let op = |t: bool| {
        if t {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        }
    };
    let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
    let (a_ptr, _a_sync) = a.slice().device_ptr(stream);
    let (b_ptr, _b_sync) = b.slice().device_ptr(stream);
    let (c_ptr, _c_sync) = out.slice_mut().device_ptr_mut(stream);
    // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, and the
    // column-major view of a row-major [r, c] matrix is its transpose (ld = c).
    //
    // SAFETY: cublasGemmEx reads op(B)ᵀ as n x k column-major with leading
    // dimension b.shape[1] (B holds its whole 2-D shape), op(A)ᵀ as k x m with
    // leading dimension a.shape[1], and writes n x m with ldc = n into `out`,
    // which holds m * n elements; check_matmul verified the shapes and the i32
    // limits, the data types match the buffers' element types, and alpha/beta
    // are f32 as CUBLAS_COMPUTE_32F requires.
    unsafe {
        gemm_ex(
            *blas.handle(),
            op(trans_b),
            op(trans_a),
            n as i32,
            m as i32,
            k as i32,
            (&alpha) as *const f32 as *const _,
            b_ptr as *const _,
            cuda_type(T::DTYPE),
            b.shape()[1] as i32,
            a_ptr as *const _,
            cuda_type(T::DTYPE),
            a.shape()[1] as i32,
            (&beta) as *const f32 as *const _,
            c_ptr as *mut _,
            cuda_type(O::DTYPE),
            n as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_shapes_are_checked() {
        assert_eq!(check_matmul(&[4, 3], false, &[3, 5], false), Ok((4, 5, 3)));
        assert_eq!(check_matmul(&[3, 4], true, &[5, 3], true), Ok((4, 5, 3)));
        assert!(matches!(
            check_matmul(&[4, 3], false, &[4, 5], false),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            check_matmul(&[4, 3, 1], false, &[3, 5], false),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            check_matmul(&[0, 3], false, &[3, 5], false),
            Err(Error::Empty { .. })
        ));
    }
}
