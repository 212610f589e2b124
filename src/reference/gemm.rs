//! The CPU reference's f32 products, f32 accumulation on the `gemm` crate
//! (pure Rust, SIMD kernels chosen at run time, rayon threads), plus the
//! conversions between `T` and f32 around them. The other two product
//! kernels are [`crate::reference::gemm_bf16`] (bf16 operands on a CPU with
//! AVX512-BF16) and [`crate::reference::few_rows`] (a decode step's handful
//! of rows against a stored bf16 or f16 weight); the block-sparse ops choose
//! between the three through [`crate::reference::operand`].
//!
//! f32 operands are used in place; f16 and bf16 operands are widened to f32
//! a whole matrix (or panel) at a time, in parallel over rows, and results
//! are rounded to `T` once on store.

use std::any::TypeId;

use gemm::Parallelism;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, CowArray, Ix2, ShapeBuilder};
use rayon::prelude::*;

use crate::dtype::Element;
use crate::reference::few_rows;

/// Rows per rayon task when converting a matrix between `T` and f32.
const CONVERT_ROWS: usize = 64;

/// Multiply-adds below which a [`Threads::All`] product stays on the calling
/// thread (thread hand-off costs more than it saves on small products such as
/// a decode step's projections).
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// Whether a product may use every rayon thread or runs on the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// Single-threaded: the caller already runs in a rayon task.
    One,
    /// Every thread of the rayon pool.
    All,
}

/// `c = a · b` (or `c += a · b` when `accumulate`), f32 accumulation.
///
/// `a` is `[m, k]`, `b` is `[k, n]`, `c` is `[m, n]`; any strides (a
/// transposed view is a transposed operand). Panics if the shapes disagree:
/// every caller checks its inputs first, so a mismatch is a bug here.
pub(crate) fn gemm_into(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    mut c: ArrayViewMut2<f32>,
    accumulate: bool,
    threads: Threads,
) {
    let (m, k) = a.dim();
    let n = b.ncols();
    assert_eq!(b.nrows(), k, "gemm_into: inner dimensions differ");
    assert_eq!(c.dim(), (m, n), "gemm_into: output shape differs");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let parallelism = match threads {
        Threads::All if m * n * k >= PARALLEL_MIN_MACS => Parallelism::Rayon(0),
        _ => Parallelism::None,
    };
    let (a_rs, a_cs) = (a.strides()[0], a.strides()[1]);
    let (b_rs, b_cs) = (b.strides()[0], b.strides()[1]);
    let (c_rs, c_cs) = (c.strides()[0], c.strides()[1]);
    // SAFETY: the three pointers and their strides come from live ndarray
    // views of the asserted shapes `[m, k]`, `[k, n]` and `[m, n]`, so every
    // element gemm reads or writes is inside its view; `c` is borrowed
    // mutably and cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs,
            c_rs,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `a · b` as a new `[m, n]` f32 matrix, on every rayon thread.
pub(crate) fn matmul(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
    let mut c = Array2::<f32>::zeros((a.nrows(), b.ncols()));
    gemm_into(a, b, c.view_mut(), false, Threads::All);
    c
}

/// `a · b` for `T` operands, unrounded f32 result: widened to f32 once, or,
/// for a bf16 or f16 `b` and few rows of `a` (a decode step), with `b` read
/// as stored ([`few_rows::matmul`]).
pub(crate) fn matmul_t<T: Element>(a: ArrayView2<T>, b: ArrayView2<T>) -> Array2<f32> {
    if few_rows::reads_as_stored::<T>(a.nrows()) {
        return few_rows::matmul(as_f32(a).view(), b);
    }
    matmul(as_f32(a).view(), as_f32(b).view())
}

/// `x` as f32: the same view when `T` is f32 (and its strides are not
/// negative), else a widened copy (converted in parallel over rows).
pub(crate) fn as_f32<T: Element>(x: ArrayView2<'_, T>) -> CowArray<'_, f32, Ix2> {
    let strides = x.strides();
    if TypeId::of::<T>() == TypeId::of::<f32>() && !x.is_empty() && strides.iter().all(|&s| s >= 0)
    {
        let shape = x.dim().strides((strides[0] as usize, strides[1] as usize));
        // SAFETY: `T` is `f32` (same TypeId), so the pointer, shape and
        // (non-negative) strides of the non-empty `x` describe the same live
        // f32 elements, borrowed for the same lifetime.
        let view = unsafe { ArrayView2::from_shape_ptr(shape, x.as_ptr().cast::<f32>()) };
        return CowArray::from(view);
    }
    CowArray::from(widen(x))
}

/// The memory order of an f32 operand from [`to_f32`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// As given when `T` is f32 (a view), else a standard-layout copy.
    AsIs,
    /// Contiguous along the first axis (column-major): a view when `T` is
    /// f32 and `x` already is, else a converted copy in that order.
    ColumnMajor,
}

/// `x` as f32 in `order`.
pub(crate) fn to_f32<T: Element>(x: ArrayView2<'_, T>, order: Order) -> CowArray<'_, f32, Ix2> {
    let is_f32 = TypeId::of::<T>() == TypeId::of::<f32>();
    match order {
        Order::ColumnMajor if !(is_f32 && x.strides()[0] == 1) => {
            CowArray::from(widen(x.reversed_axes()).reversed_axes())
        }
        _ => as_f32(x),
    }
}

/// An f32 copy of `x` in standard layout, converted in parallel over rows.
pub(crate) fn widen<T: Element>(x: ArrayView2<T>) -> Array2<f32> {
    convert(x, T::to_f32)
}

/// `x` rounded to `T` once, converted in parallel.
pub(crate) fn narrow<T: Element>(x: ArrayView2<f32>) -> Array2<T> {
    convert(x, T::from_f32)
}

/// `f` of every element of `x`, in a standard-layout array, in parallel over
/// [`CONVERT_ROWS`]-row chunks.
fn convert<A: Copy + Sync, B: Copy + Default + Send>(
    x: ArrayView2<A>,
    f: impl Fn(A) -> B + Sync,
) -> Array2<B> {
    let (rows, cols) = x.dim();
    let mut data = vec![B::default(); rows * cols];
    if cols > 0 {
        data.par_chunks_mut(cols * CONVERT_ROWS)
            .enumerate()
            .for_each(|(chunk, out)| {
                for (i, row) in out.chunks_mut(cols).enumerate() {
                    let src = x.row(chunk * CONVERT_ROWS + i);
                    row.iter_mut().zip(src.iter()).for_each(|(o, &v)| *o = f(v));
                }
            });
    }
    Array2::from_shape_vec((rows, cols), data).expect("rows * cols elements")
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;
    use ndarray::Array2;

    fn naive(a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        Array2::from_shape_fn((a.nrows(), b.ncols()), |(i, j)| {
            (0..a.ncols()).map(|p| a[(i, p)] * b[(p, j)]).sum()
        })
    }

    fn close(x: &Array2<f32>, y: &Array2<f32>) -> bool {
        x.iter()
            .zip(y.iter())
            .all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs()))
    }

    #[test]
    fn products_match_naive_on_strided_views() {
        let a = Array2::from_shape_fn((37, 53), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let b = Array2::from_shape_fn((29, 53), |(i, j)| ((i * 5 + j) % 13) as f32 / 3.0 - 2.0);
        let want = naive(&a, &b.t().to_owned());
        assert!(close(&matmul(a.view(), b.t()), &want));
        let mut c = Array2::<f32>::ones((37, 29));
        gemm_into(a.view(), b.t(), c.view_mut(), true, Threads::One);
        assert!(close(&c, &want.mapv(|v| v + 1.0)));
    }

    #[test]
    fn widening_round_trips() {
        let a = Array2::from_shape_fn((130, 7), |(i, j)| bf16::from_f32(i as f32 - j as f32));
        let w = widen(a.t());
        assert_eq!(w.dim(), (7, 130));
        assert_eq!(narrow::<bf16>(w.view()), a.t());
        let f = a.mapv(bf16::to_f32);
        assert_eq!(as_f32(f.t()).view(), f.t());
    }
}
