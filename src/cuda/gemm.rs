//! Dense row-major matrix products through cuBLAS: the router projection, the
//! dense baselines, and the yardstick the block-sparse kernels are measured by.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};

use super::{CudaBackend, DeviceElement, DeviceTensor};
use crate::dtype::Element;
use crate::error::{check_i32, Error, Result};

/// An element type cuBLAS multiplies (f32, f16, bf16; f16/bf16 accumulate in f32).
pub trait GemmElement: DeviceElement + Element
where
    cudarc::cublas::CudaBlas: Gemm<Self>,
{
}

impl GemmElement for f32 {}
impl GemmElement for half::f16 {}
impl GemmElement for half::bf16 {}

/// Shape of `op(X)` for a 2-D row-major `shape`.
fn op_dims(op: &'static str, name: &str, shape: &[usize], trans: bool) -> Result<(usize, usize)> {
    let [r, c] = shape[..] else {
        return Err(Error::ShapeMismatch {
            op,
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
    const OP: &str = "matmul";
    let (m, k) = op_dims(OP, "A", a_shape, trans_a)?;
    let (kb, n) = op_dims(OP, "B", b_shape, trans_b)?;
    if k != kb {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "op(A) is [{m}, {k}] but op(B) is [{kb}, {n}]: inner dimensions differ"
            ),
        });
    }
    if m == 0 || n == 0 || k == 0 {
        return Err(Error::Empty {
            op: OP,
            what: "a matrix dimension",
        });
    }
    for v in [m, n, k] {
        check_i32("matmul dimension", v as u128)?;
    }
    Ok((m, n, k))
}

/// `op(A)·op(B)` into a new `[m, n]` tensor (row-major operands).
pub fn matmul<T: GemmElement>(
    backend: &CudaBackend,
    a: &DeviceTensor<T>,
    trans_a: bool,
    b: &DeviceTensor<T>,
    trans_b: bool,
) -> Result<DeviceTensor<T>>
where
    cudarc::cublas::CudaBlas: Gemm<T>,
{
    let (m, n, _) = check_matmul(a.shape(), trans_a, b.shape(), trans_b)?;
    let mut out = DeviceTensor::zeros(backend, &[m, n])?;
    matmul_into(backend, a, trans_a, b, trans_b, &mut out, false)?;
    Ok(out)
}

/// `out = op(A)·op(B)`, or `out += op(A)·op(B)` when `accumulate`.
pub fn matmul_into<T: GemmElement>(
    backend: &CudaBackend,
    a: &DeviceTensor<T>,
    trans_a: bool,
    b: &DeviceTensor<T>,
    trans_b: bool,
    out: &mut DeviceTensor<T>,
    accumulate: bool,
) -> Result<()>
where
    cudarc::cublas::CudaBlas: Gemm<T>,
{
    let (m, n, k) = check_matmul(a.shape(), trans_a, b.shape(), trans_b)?;
    if out.shape() != [m, n] {
        return Err(Error::ShapeMismatch {
            op: "matmul",
            message: format!("out must be [{m}, {n}], found {:?}", out.shape()),
        });
    }
    let blas = backend.blas()?;
    // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, and the
    // column-major view of a row-major [r, c] matrix is its transpose (ld = c).
    let (b_cols, a_cols) = (b.shape()[1], a.shape()[1]);
    let op = |t: bool| {
        if t {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        }
    };
    let cfg = GemmConfig {
        transa: op(trans_b),
        transb: op(trans_a),
        m: n as i32,
        n: m as i32,
        k: k as i32,
        alpha: T::from_f32(1.0),
        lda: b_cols as i32,
        ldb: a_cols as i32,
        beta: T::from_f32(if accumulate { 1.0 } else { 0.0 }),
        ldc: n as i32,
    };
    // SAFETY: cuBLAS reads op(B)ᵀ as an n x k column-major matrix with leading
    // dimension b_cols (B holds b_rows * b_cols elements), op(A)ᵀ as k x m with
    // leading dimension a_cols, and writes n x m with ldc = n into `out`, which
    // holds m * n elements; check_matmul verified these shapes and i32 limits.
    unsafe { blas.gemm(cfg, b.slice(), a.slice(), out.slice_mut()) }?;
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
