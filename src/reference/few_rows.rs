//! Products whose left operand has few rows (a decode step's tokens), with a
//! bf16 or f16 right operand read as stored and widened in registers: for a
//! handful of rows, converting or packing a weight costs more than the
//! product itself.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use crate::dtype::{DType, Element};

/// Left-operand rows at or below which a product with a non-f32 right
/// operand reads that operand as stored.
pub(crate) const FEW_ROWS: usize = 8;

/// Output columns per rayon task in [`matmul`].
const COLUMNS_PER_TASK: usize = 64;

/// Whether a product with `rows` left-operand rows and a `T` right operand
/// reads the right operand as stored.
pub(crate) fn reads_as_stored<T: Element>(rows: usize) -> bool {
    T::DTYPE != DType::F32 && rows <= FEW_ROWS
}

/// `c = a · b` (`c += a · b` when `accumulate`) on the calling thread, f32
/// accumulation in order of the inner axis: `a` is `[m, k]` f32, `b` is
/// `[k, n]` with any strides (contiguous columns, as `Wᵀ` of a row-major
/// weight, or contiguous rows, are the fast cases).
pub(crate) fn product_into<T: Element>(
    a: ArrayView2<f32>,
    b: ArrayView2<T>,
    mut c: ArrayViewMut2<f32>,
    accumulate: bool,
) {
    assert_eq!(a.ncols(), b.nrows(), "few_rows: inner dimensions differ");
    assert_eq!(
        c.dim(),
        (a.nrows(), b.ncols()),
        "few_rows: output shape differs"
    );
    if !accumulate {
        c.fill(0.0);
    }
    let a = a.as_standard_layout();
    let rows: Vec<&[f32]> = a
        .rows()
        .into_iter()
        .map(|r| r.to_slice().expect("a standard-layout row is contiguous"))
        .collect();
    if b.strides()[0] == 1 || b.nrows() <= 1 {
        // Column j of b is contiguous: one dot product per output.
        for (j, col) in b.columns().into_iter().enumerate() {
            let col = col
                .to_slice()
                .expect("a column of unit stride is contiguous");
            for (i, row) in rows.iter().enumerate() {
                c[(i, j)] += dot(row, col);
            }
        }
    } else {
        // Row p of b is scaled into each output row.
        for (i, row) in rows.iter().enumerate() {
            let mut out = c.row_mut(i);
            for (&av, brow) in row.iter().zip(b.rows()) {
                out.iter_mut()
                    .zip(brow.iter())
                    .for_each(|(o, &w)| *o += av * w.to_f32());
            }
        }
    }
}

/// `a · b` as a new `[m, n]` f32 matrix, parallel over output columns.
pub(crate) fn matmul<T: Element>(a: ArrayView2<f32>, b: ArrayView2<T>) -> Array2<f32> {
    let (m, n) = (a.nrows(), b.ncols());
    // Built transposed (`[n, m]`) so that each task's columns are contiguous.
    let mut ct = Array2::<f32>::zeros((n, m));
    if m > 0 {
        ct.as_slice_mut()
            .expect("a new array is contiguous")
            .par_chunks_mut(COLUMNS_PER_TASK * m)
            .enumerate()
            .for_each(|(t, out)| {
                let j0 = t * COLUMNS_PER_TASK;
                let cols = out.len() / m;
                let b = b.slice(ndarray::s![.., j0..j0 + cols]);
                let out = ArrayViewMut2::from_shape((cols, m), out).expect("cols x m chunk");
                product_into(a, b, out.reversed_axes(), false);
            });
    }
    ct.reversed_axes().as_standard_layout().into_owned()
}

/// Lanes of independent partial sums in [`dot`].
const LANES: usize = 16;

/// `Σ a[p] · b[p]` in f32, in [`LANES`] partial sums (a SIMD register's
/// worth) reduced at the end.
fn dot<T: Element>(a: &[f32], b: &[T]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(&x, &w)| x * w.to_f32())
        .sum();
    for (x, w) in a_chunks.zip(b_chunks) {
        for ((s, &x), &w) in acc.iter_mut().zip(x).zip(w) {
            *s += x * w.to_f32();
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn naive(a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        Array2::from_shape_fn((a.nrows(), b.ncols()), |(i, j)| {
            (0..a.ncols()).map(|p| a[(i, p)] * b[(p, j)]).sum()
        })
    }

    fn value(i: usize, j: usize, salt: usize) -> f32 {
        ((i * 7 + j * 13 + salt) % 29) as f32 / 14.5 - 1.0 + 0.01
    }

    fn check<T: Element>() {
        for (m, k, n) in [(1, 1, 1), (1, 37, 70), (3, 100, 129), (8, 16, 5)] {
            let a = Array2::from_shape_fn((m, k), |(i, j)| value(i, j, 1));
            let w = Array2::from_shape_fn((n, k), |(i, j)| T::from_f32(value(i, j, 2)));
            let want = naive(&a, &w.t().mapv(|v| v.to_f32()));
            let close = |c: &Array2<f32>| {
                c.iter()
                    .zip(want.iter())
                    .all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs()))
            };
            // Contiguous columns (Wᵀ), and contiguous rows (a row-major copy).
            assert!(close(&matmul(a.view(), w.t())));
            let b = w.t().as_standard_layout().into_owned();
            let mut c = Array2::<f32>::ones((m, n));
            product_into(a.view(), b.view(), c.view_mut(), true);
            assert!(close(&c.mapv(|v| v - 1.0)));
        }
    }

    #[test]
    fn products_match_naive_in_every_dtype() {
        check::<f32>();
        check::<bf16>();
        check::<f16>();
    }
}
