//! The block-sparse matrix products of a dMoE layer (as `stk.ops`): `sdd`
//! (dense x dense -> sparse), `dsd` (sparse x dense -> dense) and `dds`
//! (dense x sparse -> dense), with the sparse operand optionally transposed.
//!
//! Operands are widened to f32 on load, every block product accumulates in
//! f32 (in the topology's block order, which is fixed), and each output value
//! is rounded to `T` once on store. Transposed operands are never
//! materialised: the ops walk the topology's transpose metadata.

use std::sync::Arc;

use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis, CowArray, Ix2, Slice};
use rayon::prelude::*;

use crate::checks::check_nonempty;
use crate::dtype::Element;
use crate::error::{check_i32, product, Error, Result};
use crate::reference::gemm::{self, as_f32, gemm_into, Threads};
use crate::sparse::{BlockSparse, SparseView};
use crate::topology::Topology;

/// Rows of the output per rayon task in [`dds`].
const DDS_ROWS: usize = 64;

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

    let bs = topology.block_size();
    let a_panels = panels(a, Axis(0), &used(topology.row_indices(), rows / bs));
    // op(B)'s column panels: rows of B when `trans_b`, else its columns.
    let b_axis = Axis(if trans_b { 0 } else { 1 });
    let b_panels = panels(b, b_axis, &used(topology.column_indices(), cols / bs));
    let b_panel = |c: usize| {
        let p = panel(&b_panels, c);
        if trans_b {
            p.reversed_axes()
        } else {
            p
        }
    };

    // One rayon task per stored block (a `bs x bs x k` product each).
    let mut data = vec![T::default(); topology.num_elements()];
    data.par_chunks_mut(bs * bs)
        .zip(topology.row_indices().par_iter())
        .zip(topology.column_indices().par_iter())
        .for_each_init(
            || Array2::<f32>::zeros((bs, bs)),
            |tile, ((out, &r), &c)| {
                gemm_into(
                    panel(&a_panels, r as usize),
                    b_panel(c as usize),
                    tile.view_mut(),
                    false,
                    Threads::One,
                );
                out.iter_mut()
                    .zip(tile.iter())
                    .for_each(|(o, &v)| *o = T::from_f32(v));
            },
        );
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
    let blocks = block_rows(s.matrix)?;
    // The row panels of B that op(S)'s stored blocks reach.
    let reached = if s.transposed {
        topo.row_indices()
    } else {
        topo.column_indices()
    };
    let b_panels = panels(b, Axis(0), &used(reached, n / bs));
    let block = |blk: usize| blocks.slice(s![blk * bs..(blk + 1) * bs, ..]);
    let mut out = Array2::<f32>::zeros((m, h));
    // One rayon task per output block row (disjoint rows of `out`).
    let rows = out
        .as_slice_mut()
        .expect("a new array is contiguous")
        .par_chunks_mut(bs * h.max(1));
    rows.enumerate().for_each(|(r, acc)| {
        let mut acc = ArrayViewMut2::from_shape((bs, h), acc).expect("bs x h chunk");
        let mut accumulate = false;
        let mut step = |lhs: ArrayView2<f32>, o: usize| {
            gemm_into(
                lhs,
                panel(&b_panels, o),
                acc.view_mut(),
                accumulate,
                Threads::One,
            );
            accumulate = true;
        };
        if s.transposed {
            // Block row `r` of Sᵀ is block column `r` of S.
            for (blk, o) in column_blocks(topo, r) {
                step(block(blk).t(), o);
            }
        } else {
            for (blk, o) in row_blocks(topo, r) {
                step(block(blk), o);
            }
        }
    });
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
    let blocks = block_rows(s.matrix)?;
    // The column panels of A that op(S)'s stored blocks reach.
    let reached = if s.transposed {
        topo.column_indices()
    } else {
        topo.row_indices()
    };
    let a_panels = panels(a, Axis(1), &used(reached, k / bs));
    let block = |blk: usize| blocks.slice(s![blk * bs..(blk + 1) * bs, ..]);
    let out_blocks = n / bs;
    let mut out = Array2::<f32>::zeros((m, n));
    // One rayon task per DDS_ROWS rows of `out` (disjoint), each walking
    // every output block column.
    let chunks = out
        .as_slice_mut()
        .expect("a new array is contiguous")
        .par_chunks_mut(DDS_ROWS * n.max(1));
    chunks.enumerate().for_each(|(chunk, acc)| {
        let r0 = chunk * DDS_ROWS;
        let rows = acc.len() / n.max(1);
        let mut acc = ArrayViewMut2::from_shape((rows, n), acc).expect("rows x n chunk");
        for oc in 0..out_blocks {
            let mut acc = acc.slice_mut(s![.., oc * bs..(oc + 1) * bs]);
            let mut accumulate = false;
            let mut step = |rhs: ArrayView2<f32>, o: usize| {
                let lhs = panel(&a_panels, o).slice_move(s![r0..r0 + rows, ..]);
                gemm_into(lhs, rhs, acc.view_mut(), accumulate, Threads::One);
                accumulate = true;
            };
            if s.transposed {
                // Block column `oc` of Sᵀ is block row `oc` of S.
                for (blk, o) in row_blocks(topo, oc) {
                    step(block(blk).t(), o);
                }
            } else {
                for (blk, o) in column_blocks(topo, oc) {
                    step(block(blk), o);
                }
            }
        }
    });
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

/// Which of `count` panels the block indices `reached` touch.
fn used(reached: &[i32], count: usize) -> Vec<bool> {
    let mut used = vec![false; count];
    for &i in reached {
        if let Some(u) = used.get_mut(i as usize) {
            *u = true;
        }
    }
    used
}

/// The f32 panels `bs = len / needed.len()` wide along `axis` of `x` that
/// `needed` marks (`None` for the others): views when `T` is f32, copies
/// widened in parallel otherwise, so that only the rows or columns a
/// topology reaches (the experts a batch routes to) are converted.
fn panels<'a, T: Element>(
    x: ArrayView2<'a, T>,
    axis: Axis,
    needed: &[bool],
) -> Vec<Option<CowArray<'a, f32, Ix2>>> {
    let bs = x.len_of(axis) / needed.len().max(1);
    needed
        .par_iter()
        .enumerate()
        .map(|(p, &need)| {
            need.then(|| as_f32(x.slice_axis_move(axis, Slice::from(p * bs..(p + 1) * bs))))
        })
        .collect()
}

/// Panel `p` of [`panels`]'s result (which marks every panel a block uses).
fn panel<'p>(panels: &'p [Option<CowArray<'_, f32, Ix2>>], p: usize) -> ArrayView2<'p, f32> {
    panels[p]
        .as_ref()
        .expect("every panel a stored block uses was converted")
        .view()
}

/// The sparse operand's block values as f32, viewed as `[num_blocks * bs, bs]`
/// (block `b` is rows `b * bs..(b + 1) * bs`).
fn block_rows<T: Element>(m: &BlockSparse<T>) -> Result<CowArray<'_, f32, Ix2>> {
    let bs = m.topology().block_size();
    let view =
        ArrayView2::from_shape((m.topology().num_blocks() * bs, bs), m.data()).map_err(|e| {
            Error::ShapeMismatch {
                op: "block-sparse operand",
                message: format!("the block values do not match the topology: {e}"),
            }
        })?;
    Ok(as_f32(view))
}

/// Rounds an f32 result to `T` once.
fn narrow<T: Element>(x: Array2<f32>) -> Array2<T> {
    gemm::narrow(x.view())
}
