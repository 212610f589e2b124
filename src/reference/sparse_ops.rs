//! The block-sparse matrix products of a dMoE layer (as `stk.ops`): `sdd`
//! (dense x dense -> sparse), `dsd` (sparse x dense -> dense) and `dds`
//! (dense x sparse -> dense), with the sparse operand optionally transposed.
//!
//! Operands are prepared once per panel (f32, or bf16 for the AVX512-BF16
//! dot-product kernel), every block product accumulates in f32 (in the
//! topology's block order, which is fixed), and each output value is rounded
//! to `T` once on store. Transposed operands are never
//! materialised: the ops walk the topology's transpose metadata.

use std::any::Any;
use std::sync::Arc;

use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis, ShapeBuilder, Slice};
use rayon::prelude::*;

use crate::checks::check_nonempty;
use crate::dtype::Element;
use crate::error::{check_i32, product, Error, Result};
use crate::reference::gemm::{self, Order};
use crate::reference::operand::{bf16_kernel, multiply, Lhs, LhsView, Rhs};
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
    sdd_live(a, b, trans_b, topology, None)
}

/// [`sdd`], with the rows of each block row of `A` past `live` taken as zero
/// (their block rows are zero and not computed). Errors: [`sdd`]'s.
pub(crate) fn sdd_live<T: Element>(
    a: ArrayView2<T>,
    b: ArrayView2<T>,
    trans_b: bool,
    topology: &Arc<Topology>,
    live: LiveRows,
) -> Result<BlockSparse<T>> {
    sdd_tiles(a, [b], trans_b, topology, live, |[tile], out| {
        out.iter_mut()
            .zip(tile.iter())
            .for_each(|(o, &v)| *o = T::from_f32(v));
    })
}

/// The leading rows of each block row of a product's dense operand that hold
/// data: `live[r]` rows of block row `r` (at most the block size); the rows
/// past them are padding known to be zero, so their products are zero and
/// are not computed. `None`: every row is live.
pub(crate) type LiveRows<'a> = Option<&'a [usize]>;

/// The live rows of block row `r` (all `bs` when `live` is `None`).
fn live_rows(live: LiveRows, r: usize, bs: usize) -> usize {
    live.map_or(bs, |l| l[r].min(bs))
}

/// The `sdd` products `A · op(B_i)` of every stored block with each of the
/// `N` right-hand operands `b[i]` (each as [`sdd`]'s `b`), as f32 `bs x bs`
/// tiles (row-major `bs * bs` slices) handed to `store(tiles, block)`, which
/// writes the block's `bs * bs` row-major values. Rows of A past `live` are
/// taken as zero (their tile rows are zero and not computed).
///
/// Errors: as [`sdd`], for each operand.
pub(crate) fn sdd_tiles<T: Element, const N: usize>(
    a: ArrayView2<T>,
    b: [ArrayView2<T>; N],
    trans_b: bool,
    topology: &Arc<Topology>,
    live: LiveRows,
    store: impl Fn([&[f32]; N], &mut [T]) + Sync,
) -> Result<BlockSparse<T>> {
    for b in &b {
        check_sdd(a, *b, trans_b, topology)?;
    }
    let bs = topology.block_size();
    // op(B)'s column panels, `[k, bs]` each.
    let op_b = b.map(|b| if trans_b { b.reversed_axes() } else { b });
    let b_uses = panel_uses(topology, live, true);
    let b_panels = op_b.map(|b| panels(b, Axis(1), &b_uses, Rhs::new));
    let order = lhs_order(&op_b);
    let a_uses = panel_uses(topology, None, false);
    let a_panels = panels(a, Axis(0), &a_uses, |p, _| Lhs::new(p, order));

    // One rayon task per stored block (`N` products of `bs x bs x k` each).
    let mut data = vec![T::default(); topology.num_elements()];
    data.par_chunks_mut(bs * bs)
        .zip(topology.row_indices().par_iter())
        .zip(topology.column_indices().par_iter())
        .for_each_init(
            || Tiles::<N>::new(order, bs),
            |tiles, ((out, &r), &c)| {
                let live = live_rows(live, r as usize, bs);
                let lhs = panel(&a_panels, r as usize).view().rows(0..live);
                tiles.multiply(lhs, &b_panels, c as usize, live);
                store(tiles.row_major(live), out);
            },
        );
    BlockSparse::new(Arc::clone(topology), data)
}

/// The memory order of `sdd`'s left-hand panels (and of its tiles) for the
/// right-hand operands `op_b`: the gemm packs an operand pair that is
/// contiguous along k on both sides (A's rows and op(B)'s columns, the
/// `x · Wᵀ` of a linear layer) slowly for `bs`-sized products, so A's panels
/// are then copied once into column order, and the tiles are column-major to
/// match. (The bf16 kernel reads A as it is and writes row-major tiles.)
fn lhs_order<T: Element, const N: usize>(op_b: &[ArrayView2<T>; N]) -> Order {
    if !bf16_kernel::<T>() && op_b.first().is_some_and(|b| b.strides()[0] == 1) {
        Order::ColumnMajor
    } else {
        Order::AsIs
    }
}

/// One task's `N` f32 `bs x bs` product tiles, in the order the products
/// write fastest, and row-major copies of them when that order is not.
struct Tiles<const N: usize> {
    tiles: [Array2<f32>; N],
    row_major: [Array2<f32>; N],
}

impl<const N: usize> Tiles<N> {
    /// Zeroed tiles in `order`.
    fn new(order: Order, bs: usize) -> Self {
        let tile = || match order {
            Order::ColumnMajor => Array2::zeros((bs, bs).f()),
            Order::AsIs => Array2::zeros((bs, bs)),
        };
        let copy = || match order {
            Order::ColumnMajor => Array2::zeros((bs, bs)),
            Order::AsIs => Array2::zeros((0, 0)),
        };
        Tiles {
            tiles: std::array::from_fn(|_| tile()),
            row_major: std::array::from_fn(|_| copy()),
        }
    }

    /// Rows `..live` of each tile = `lhs · op(B_i)` for block column `c`
    /// (`lhs` holds the `live` rows of the block row's panel).
    fn multiply<T: Element>(
        &mut self,
        lhs: LhsView,
        b_panels: &[Vec<Option<Rhs<T>>>; N],
        c: usize,
        live: usize,
    ) {
        for (tile, b_panels) in self.tiles.iter_mut().zip(b_panels) {
            let rows = tile.slice_mut(s![..live, ..]);
            multiply(lhs, panel(b_panels, c), rows, false);
        }
    }

    /// The tiles as row-major `bs * bs` slices, their rows past `live` zero.
    fn row_major(&mut self, live: usize) -> [&[f32]; N] {
        for (tile, copy) in self.tiles.iter_mut().zip(&mut self.row_major) {
            tile.slice_mut(s![live.., ..]).fill(0.0);
            if !tile.is_standard_layout() {
                copy.assign(tile);
            }
        }
        std::array::from_fn(|i| {
            let (tile, copy) = (&self.tiles[i], &self.row_major[i]);
            tile.as_slice()
                .or(copy.as_slice())
                .expect("a tile or its row-major copy is contiguous")
        })
    }

    /// The tiles in their own memory order (the `order` of [`Tiles::new`]),
    /// only the rows [`Tiles::multiply`] wrote meaningful.
    fn in_order(&self) -> [&[f32]; N] {
        std::array::from_fn(|i| {
            self.tiles[i]
                .as_slice_memory_order()
                .expect("a tile is contiguous")
        })
    }

    /// Hands `store` the tiles' entries of their first `live` rows and the
    /// same entries of `block` (`bs * bs` values in the tiles' memory
    /// order), as contiguous runs: one per column of column-major tiles, one
    /// in all for row-major ones.
    fn store_live<T>(
        &self,
        order: Order,
        live: usize,
        block: &mut [T],
        store: &impl Fn([&[f32]; N], &mut [T]),
    ) {
        let bs = self.tiles[0].nrows();
        let (stride, len) = match order {
            Order::ColumnMajor => (bs, live),
            Order::AsIs => (bs * bs, live * bs),
        };
        let tiles = self.in_order();
        for (i, out) in block.chunks_mut(stride).enumerate() {
            let start = i * stride;
            store(tiles.map(|t| &t[start..start + len]), &mut out[..len]);
        }
    }
}

/// Checks one `sdd` operand pair against the topology (see [`sdd`]'s errors).
fn check_sdd<T>(
    a: ArrayView2<T>,
    b: ArrayView2<T>,
    trans_b: bool,
    topology: &Topology,
) -> Result<()> {
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
    Ok(())
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
    dsd_live(s, b, None)
}

/// [`dsd`], with the rows of each block row of `op(S)` past `live` taken as
/// zero (their output rows are zero and not computed). Errors: [`dsd`]'s.
pub(crate) fn dsd_live<T: Element>(
    s: SparseView<T>,
    b: ArrayView2<T>,
    live: LiveRows,
) -> Result<Array2<T>> {
    let (m, n) = s.dim();
    let h = b.ncols();
    check_dsd((m, n), s.transposed, b)?;

    let topo = s.matrix.topology();
    let bs = topo.block_size();
    let blocks = Lhs::new(block_rows(s.matrix)?, Order::AsIs);
    // The row panels of B that op(S)'s stored blocks reach: rows of S's
    // block rows when transposed, else of its block columns.
    let b_panels = panels(b, Axis(0), &panel_uses(topo, live, !s.transposed), Rhs::new);
    let block = |blk: usize| blocks.view().rows(blk * bs..(blk + 1) * bs);
    let mut out = Array2::<f32>::zeros((m, h));
    // One rayon task per output block row (disjoint rows of `out`).
    let rows = out
        .as_slice_mut()
        .expect("a new array is contiguous")
        .par_chunks_mut(bs * h.max(1));
    rows.enumerate().for_each(|(r, acc)| {
        let live = live_rows(live, r, bs);
        let mut acc = ArrayViewMut2::from_shape((bs, h), acc).expect("bs x h chunk");
        let mut accumulate = false;
        let mut step = |lhs: LhsView, o: usize| {
            let rows = acc.slice_mut(s![..live, ..]);
            multiply(lhs.rows(0..live), panel(&b_panels, o), rows, accumulate);
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

/// Checks `dsd`'s dense operand `b` against `op(S)`'s shape `[m, n]` (see
/// [`dsd`]'s errors).
fn check_dsd<T>((m, n): (usize, usize), transposed: bool, b: ArrayView2<T>) -> Result<()> {
    const OP: &str = "dsd";
    let h = b.ncols();
    if b.nrows() != n {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "op(S) is [{m}, {n}] (transposed: {transposed}), so B must be [{n}, h], found {:?}",
                b.dim()
            ),
        });
    }
    check_nonempty(OP, "the inner dimension (columns of op(S))", n)?;
    check_i32("dsd: elements of B", product(&[n, h]))?;
    check_i32("dsd: elements of the output", product(&[m, h]))
}

/// `dsd(S, w)` of the `S` that [`sdd_tiles`]`(a, b, trans_b, topology, live,
/// store)` makes, in one pass: one rayon task per block row, which makes the
/// row's blocks one at a time (the `N` tiles, then `store` writes the
/// block's `T` values) and multiplies each into that block row of the output
/// as it is made, so `S` is never stored whole. The values are those of the
/// two ops in turn (the same products, accumulated block by block in the
/// same order), up to the summation order inside each product: the blocks
/// are in the tiles' memory order, for which the gemm may choose another
/// kernel.
///
/// `store` must work elementwise: it gets runs of the tiles' entries and the
/// same entries of the block, in the tiles' memory order (column-major where
/// [`lhs_order`] says so), covering the block's first `live` rows (the only
/// ones used).
///
/// Errors: [`sdd`]'s for each `b`, then [`dsd`]'s for `w`.
pub(crate) fn sdd_dsd<T: Element, const N: usize>(
    a: ArrayView2<T>,
    b: [ArrayView2<T>; N],
    trans_b: bool,
    w: ArrayView2<T>,
    topology: &Arc<Topology>,
    live: LiveRows,
    store: impl Fn([&[f32]; N], &mut [T]) + Sync,
) -> Result<Array2<T>> {
    for b in &b {
        check_sdd(a, *b, trans_b, topology)?;
    }
    let (rows, cols) = (topology.rows(), topology.cols());
    check_dsd((rows, cols), false, w)?;
    let (bs, h) = (topology.block_size(), w.ncols());
    let b_uses = panel_uses(topology, live, true);
    let op_b = b.map(|b| if trans_b { b.reversed_axes() } else { b });
    let b_panels = op_b.map(|b| panels(b, Axis(1), &b_uses, Rhs::new));
    let order = lhs_order(&op_b);
    let a_uses = panel_uses(topology, None, false);
    let a_panels = panels(a, Axis(0), &a_uses, |p, _| Lhs::new(p, order));
    let w_panels = panels(w, Axis(0), &b_uses, Rhs::new);

    let mut out = Array2::<f32>::zeros((rows, h));
    out.as_slice_mut()
        .expect("a new array is contiguous")
        .par_chunks_mut(bs * h.max(1))
        .enumerate()
        .for_each_init(
            || (Tiles::<N>::new(order, bs), vec![T::default(); bs * bs]),
            |(tiles, block), (r, acc)| {
                let live = live_rows(live, r, bs);
                let lhs = panel(&a_panels, r).view().rows(0..live);
                let mut acc = ArrayViewMut2::from_shape((bs, h), acc).expect("bs x h chunk");
                for (i, (_, c)) in row_blocks(topology, r).enumerate() {
                    // The block is made and used in the tiles' memory order.
                    tiles.multiply(lhs, &b_panels, c, live);
                    tiles.store_live(order, live, block, &store);
                    let shape = match order {
                        Order::ColumnMajor => (bs, bs).f(),
                        Order::AsIs => (bs, bs).into_shape_with_order(),
                    };
                    let block = ArrayView2::from_shape(shape, &block[..]).expect("bs x bs");
                    let block = Lhs::new(block.slice_move(s![..live, ..]), Order::AsIs);
                    let rows = acc.slice_mut(s![..live, ..]);
                    multiply(block.view(), panel(&w_panels, c), rows, i > 0);
                }
            },
        );
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
    // Each block is the right operand of every DDS_ROWS-row chunk: prepared
    // once (transposed when op(S) is).
    let blocks: Vec<Rhs<T>> = (0..topo.num_blocks())
        .into_par_iter()
        .map(|blk| {
            let block = blocks.slice(s![blk * bs..(blk + 1) * bs, ..]);
            let block = if s.transposed {
                block.reversed_axes()
            } else {
                block
            };
            Rhs::new(block, m)
        })
        .collect();
    // The column panels of A that op(S)'s stored blocks reach: S's block
    // columns when transposed, else its block rows.
    let a_uses = panel_uses(topo, None, s.transposed);
    let a_panels = panels(a, Axis(1), &a_uses, |p, _| Lhs::new(p, Order::AsIs));
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
            let mut step = |blk: usize, o: usize| {
                let lhs = panel(&a_panels, o).view().rows(r0..r0 + rows);
                multiply(lhs, &blocks[blk], acc.view_mut(), accumulate);
                accumulate = true;
            };
            if s.transposed {
                // Block column `oc` of Sᵀ is block row `oc` of S.
                for (blk, o) in row_blocks(topo, oc) {
                    step(blk, o);
                }
            } else {
                for (blk, o) in column_blocks(topo, oc) {
                    step(blk, o);
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

/// Which panels the stored blocks reach, and how many left-operand rows use
/// each (`None`: no block reaches it). Panels are the topology's block
/// columns when `by_column`, else its block rows; stored block `(r, c)` adds
/// the live rows of the other index (`r` when `by_column`, else `c`).
fn panel_uses(topo: &Topology, live: LiveRows, by_column: bool) -> Vec<Option<usize>> {
    let bs = topo.block_size();
    let count = if by_column {
        topo.block_cols()
    } else {
        topo.block_rows()
    };
    let mut uses = vec![None; count];
    for (&r, &c) in topo.row_indices().iter().zip(topo.column_indices()) {
        let (r, c) = (r as usize, c as usize);
        let (panel, other) = if by_column { (c, r) } else { (r, c) };
        if let Some(u) = uses.get_mut(panel) {
            *u = Some(u.unwrap_or(0) + live_rows(live, other, bs));
        }
    }
    uses
}

/// The panels `bs = len / uses.len()` wide along `axis` of `x` that `uses`
/// marks (`None` for the others), each made ready by `prepare(panel, rows)`
/// (an [`Lhs`] or [`Rhs`]) in parallel, so that only the rows or columns a
/// topology reaches (the experts a batch routes to) are converted.
fn panels<'a, T: Element, P: Send>(
    x: ArrayView2<'a, T>,
    axis: Axis,
    uses: &[Option<usize>],
    prepare: impl Fn(ArrayView2<'a, T>, usize) -> P + Sync,
) -> Vec<Option<P>> {
    let bs = x.len_of(axis) / uses.len().max(1);
    uses.par_iter()
        .enumerate()
        .map(|(p, &rows)| {
            rows.map(|rows| {
                prepare(
                    x.slice_axis_move(axis, Slice::from(p * bs..(p + 1) * bs)),
                    rows,
                )
            })
        })
        .collect()
}

/// Panel `p` of [`panels`]'s result (which marks every panel a block uses).
fn panel<P>(panels: &[Option<P>], p: usize) -> &P {
    panels[p]
        .as_ref()
        .expect("every panel a stored block uses was prepared")
}

/// The sparse operand's block values viewed as `[num_blocks * bs, bs]`
/// (block `b` is rows `b * bs..(b + 1) * bs`).
fn block_rows<T: Element>(m: &BlockSparse<T>) -> Result<ArrayView2<'_, T>> {
    let bs = m.topology().block_size();
    let view =
        ArrayView2::from_shape((m.topology().num_blocks() * bs, bs), m.data()).map_err(|e| {
            Error::ShapeMismatch {
                op: "block-sparse operand",
                message: format!("the block values do not match the topology: {e}"),
            }
        })?;
    Ok(view)
}

/// Rounds an f32 result to `T` once (moved, not copied, when `T` is f32).
fn narrow<T: Element>(x: Array2<f32>) -> Array2<T> {
    match (Box::new(x) as Box<dyn Any>).downcast::<Array2<T>>() {
        Ok(same) => *same,
        Err(x) => gemm::narrow(
            x.downcast_ref::<Array2<f32>>()
                .expect("the box holds the f32 result")
                .view(),
        ),
    }
}
