//! The block-sparse matrix products of a dMoE layer (as `stk.ops`): `sdd`
//! (dense x dense -> sparse), `dsd` (sparse x dense -> dense) and `dds`
//! (dense x sparse -> dense), with the sparse operand optionally transposed.
//!
//! Operands are widened to f32 on load, every block product accumulates in
//! f32 (in the topology's block order, which is fixed), and each output value
//! is rounded to `T` once on store. Transposed operands are never
//! materialised: the ops walk the topology's transpose metadata.

use std::sync::Arc;

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, Array3, ArrayView2, Axis};

use crate::checks::check_nonempty;
use crate::dtype::Element;
use crate::error::{check_i32, product, Error, Result};
use crate::sparse::{BlockSparse, SparseView};
use crate::topology::Topology;

/// `A · op(B)` computed only on the topology's blocks.
///
/// - `a`: `[rows, k]`, with `rows = topology.rows()`.
/// - `b`: `[cols, k]` when `trans_b` (the product is `A · Bᵀ`), else
///   `[k, cols]`, with `cols = topology.cols()`.
/// - Returns the `[rows, cols]` block-sparse result on `topology`.
///
/// Errors: [`Error::ShapeMismatch`] when the shapes disagree with each other
/// or with the topology, [`Error::Empty`] when `k == 0`,
/// [`Error::IndexOverflow`] when an operand exceeds the kernels' i32 indexing.
pub fn sdd<T: Element>(
    a: ArrayView2<T>,
    b: ArrayView2<T>,
    trans_b: bool,
    topology: &Arc<Topology>,
) -> Result<BlockSparse<T>> {
    const OP: &str = "sdd";
    let (rows, cols) = (topology.rows(), topology.cols());
    let k = a.ncols();
    if a.nrows() != rows {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "A must be [rows, k] with rows = {rows} (the topology's rows), found {:?}",
                a.dim()
            ),
        });
    }
    let want_b = if trans_b { (cols, k) } else { (k, cols) };
    if b.dim() != want_b {
        let layout = if trans_b { "[cols, k]" } else { "[k, cols]" };
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "A is {:?} and the topology has {cols} columns, so B must be {layout} = {want_b:?}, found {:?}",
                a.dim(),
                b.dim()
            ),
        });
    }
    check_nonempty(OP, "the inner dimension k", k)?;
    check_i32("sdd: elements of A", product(&[rows, k]))?;
    check_i32("sdd: elements of B", product(&[cols, k]))?;

    let a32 = widen(a);
    // op(B) as a [k, cols] view; matrixmultiply handles either stride order.
    let b32 = widen(b);
    let b_op = if trans_b { b32.t() } else { b32.view() };

    let bs = topology.block_size();
    let mut data = Vec::with_capacity(topology.num_elements());
    let mut tile = Array2::<f32>::zeros((bs, bs));
    for (&r, &c) in topology.row_indices().iter().zip(topology.column_indices()) {
        let (r0, c0) = (r as usize * bs, c as usize * bs);
        general_mat_mul(
            1.0,
            &a32.slice(s![r0..r0 + bs, ..]),
            &b_op.slice(s![.., c0..c0 + bs]),
            0.0,
            &mut tile,
        );
        data.extend(tile.iter().map(|&v| T::from_f32(v)));
    }
    BlockSparse::new(Arc::clone(topology), data)
}

/// `op(S) · B`, with `op(S) = Sᵀ` when `s.transposed`.
///
/// - `s`: the sparse operand; `op(S)` is `[m, n]` (`s.dim()`).
/// - `b`: `[n, h]`.
/// - Returns the dense `[m, h]` product.
///
/// Untransposed, each output block row walks its stored blocks through
/// `offsets` / `column_indices`; transposed, output block row `c` walks block
/// column `c` of `S` through `offsets_t` / `column_indices_t` /
/// `block_offsets_t`.
///
/// Errors: [`Error::ShapeMismatch`] when `B` has not `n` rows, [`Error::Empty`]
/// when `n == 0`, [`Error::IndexOverflow`] when an operand exceeds the
/// kernels' i32 indexing.
pub fn dsd<T: Element>(s: SparseView<T>, b: ArrayView2<T>) -> Result<Array2<T>> {
    const OP: &str = "dsd";
    let (m, n) = s.dim();
    let h = b.ncols();
    if b.nrows() != n {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "op(S) is [{m}, {n}] (transposed: {}), so B must be [{n}, h], found {:?}",
                s.transposed,
                b.dim()
            ),
        });
    }
    check_nonempty(OP, "the inner dimension (columns of op(S))", n)?;
    check_i32("dsd: elements of B", product(&[n, h]))?;
    check_i32("dsd: elements of the output", product(&[m, h]))?;

    let topo = s.matrix.topology();
    let bs = topo.block_size();
    let blocks = widen_blocks(s.matrix);
    let b32 = widen(b);
    let mut out = Array2::<f32>::zeros((m, h));
    if s.transposed {
        // Block row `c` of Sᵀ is block column `c` of S.
        for c in 0..topo.block_cols() {
            let mut acc = out.slice_mut(s![c * bs..(c + 1) * bs, ..]);
            for (blk, r) in column_blocks(topo, c) {
                let block = blocks.index_axis(Axis(0), blk);
                let rhs = b32.slice(s![r * bs..(r + 1) * bs, ..]);
                general_mat_mul(1.0, &block.t(), &rhs, 1.0, &mut acc);
            }
        }
    } else {
        for r in 0..topo.block_rows() {
            let mut acc = out.slice_mut(s![r * bs..(r + 1) * bs, ..]);
            for (blk, c) in row_blocks(topo, r) {
                let block = blocks.index_axis(Axis(0), blk);
                let rhs = b32.slice(s![c * bs..(c + 1) * bs, ..]);
                general_mat_mul(1.0, &block, &rhs, 1.0, &mut acc);
            }
        }
    }
    Ok(narrow(out))
}

/// `A · op(S)`, with `op(S) = Sᵀ` when `s.transposed`.
///
/// - `a`: `[m, k]`.
/// - `s`: the sparse operand; `op(S)` is `[k, n]` (`s.dim()`).
/// - Returns the dense `[m, n]` product.
///
/// Untransposed, output block column `c` walks block column `c` of `S`
/// through the transpose metadata; transposed, output block column `r` walks
/// block row `r` of `S` through `offsets` / `column_indices`.
///
/// Errors: [`Error::ShapeMismatch`] when `A` has not `k` columns,
/// [`Error::Empty`] when `k == 0`, [`Error::IndexOverflow`] when an operand
/// exceeds the kernels' i32 indexing.
pub fn dds<T: Element>(a: ArrayView2<T>, s: SparseView<T>) -> Result<Array2<T>> {
    const OP: &str = "dds";
    let (k, n) = s.dim();
    let m = a.nrows();
    if a.ncols() != k {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "op(S) is [{k}, {n}] (transposed: {}), so A must be [m, {k}], found {:?}",
                s.transposed,
                a.dim()
            ),
        });
    }
    check_nonempty(OP, "the inner dimension (rows of op(S))", k)?;
    check_i32("dds: elements of A", product(&[m, k]))?;
    check_i32("dds: elements of the output", product(&[m, n]))?;

    let topo = s.matrix.topology();
    let bs = topo.block_size();
    let blocks = widen_blocks(s.matrix);
    let a32 = widen(a);
    let mut out = Array2::<f32>::zeros((m, n));
    if s.transposed {
        // Block column `r` of Sᵀ is block row `r` of S.
        for r in 0..topo.block_rows() {
            let mut acc = out.slice_mut(s![.., r * bs..(r + 1) * bs]);
            for (blk, c) in row_blocks(topo, r) {
                let block = blocks.index_axis(Axis(0), blk);
                let lhs = a32.slice(s![.., c * bs..(c + 1) * bs]);
                general_mat_mul(1.0, &lhs, &block.t(), 1.0, &mut acc);
            }
        }
    } else {
        for c in 0..topo.block_cols() {
            let mut acc = out.slice_mut(s![.., c * bs..(c + 1) * bs]);
            for (blk, r) in column_blocks(topo, c) {
                let block = blocks.index_axis(Axis(0), blk);
                let lhs = a32.slice(s![.., r * bs..(r + 1) * bs]);
                general_mat_mul(1.0, &lhs, &block, 1.0, &mut acc);
            }
        }
    }
    Ok(narrow(out))
}

/// The stored blocks of block row `r`: (storage index, block column), in
/// increasing column order (`offsets` / `column_indices`).
fn row_blocks(topo: &Topology, r: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let (lo, hi) = (topo.offsets()[r] as usize, topo.offsets()[r + 1] as usize);
    (lo..hi)
        .zip(&topo.column_indices()[lo..hi])
        .map(|(b, &c)| (b, c as usize))
}

/// The stored blocks of block column `c`: (storage index, block row), in
/// increasing row order (`offsets_t` / `block_offsets_t` / `column_indices_t`).
fn column_blocks(topo: &Topology, c: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let (lo, hi) = (
        topo.offsets_t()[c] as usize,
        topo.offsets_t()[c + 1] as usize,
    );
    topo.block_offsets_t()[lo..hi]
        .iter()
        .zip(&topo.column_indices_t()[lo..hi])
        .map(|(&b, &r)| (b as usize, r as usize))
}

/// An f32 copy of a dense operand.
fn widen<T: Element>(x: ArrayView2<T>) -> Array2<f32> {
    x.mapv(T::to_f32)
}

/// An f32 copy of a sparse operand's block values, `[num_blocks, bs, bs]`.
fn widen_blocks<T: Element>(m: &BlockSparse<T>) -> Array3<f32> {
    let bs = m.topology().block_size();
    let data = m.data();
    Array3::from_shape_fn((m.topology().num_blocks(), bs, bs), |(b, i, j)| {
        data[(b * bs + i) * bs + j].to_f32()
    })
}

/// Rounds an f32 result to `T` once.
fn narrow<T: Element>(x: Array2<f32>) -> Array2<T> {
    x.mapv(T::from_f32)
}
