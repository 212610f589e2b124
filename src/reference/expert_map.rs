//! The MoE "map" and "reduce" ops: a token batch through the experts' first
//! and second linear maps, with the intermediate kept per (token, slot).
//!
//! An [`ExpertPlan`] is built once per routing decision from the expert ids
//! `[tokens, top_k]` and the experts' intermediate width; [`map`] and
//! [`reduce`] share it:
//!
//! - [`map`]`(plan, x, w)`: `x` `[tokens, in]`, `w` `[experts, in, width]`
//!   (the checkpoint layout, used as `x · W`) → `[tokens * top_k, width]` in
//!   (token, slot) order: row `t * top_k + s` is `x[t] · W[e(t, s)]`.
//! - [`reduce`]`(plan, h, v, gates)`: `h` `[tokens * top_k, width]` in
//!   (token, slot) order, `v` `[experts, width, out]`, `gates`
//!   `[tokens, top_k]` f32 → `[tokens, out]`:
//!   `Σ_s gates[t, s] · (h[t * top_k + s] · V[e(t, s)])`.
//!
//! Both are composed from the existing reference ops exactly as a GPU
//! composition of the same kernels runs them, so their rounding points
//! match:
//!
//! - map: [`padded_gather`] of `x` into the padded expert-sorted layout,
//!   [`sdd`](crate::reference::sdd) with the experts' W side by side
//!   (`[in, experts * width]`) on the plan's block-diagonal topology (f32
//!   accumulation, one rounding to `T`; the padding rows of each expert's
//!   last block are not computed),
//!   then a permutation of the padded rows back to (token, slot) order
//!   ([`padded_scatter`] with `top_k = 1`, an exact copy).
//! - reduce: the same row permutation into the padded layout
//!   ([`padded_gather`] with `top_k = 1`), [`dsd`](crate::reference::dsd)
//!   with the experts' V stacked (`[experts * width, out]`, one rounding to
//!   `T`), then [`padded_scatter`]
//!   weighted by the gates (f32 accumulation over the slots, one rounding).
//!
//! A width that is not a multiple of the block size is zero-padded up to one
//! inside the ops (the padding columns of W and rows of V are zero, so the
//! result is unchanged).

use std::sync::Arc;

use ndarray::{s, Array1, Array2, ArrayView2, ArrayView3};

use crate::checks::check_nonempty;
use crate::dtype::Element;
use crate::error::{check_i32, product, Error, Result};
use crate::reference::permute::{
    histogram, inclusive_cumsum, live_rows, padded_bins, padded_gather, padded_scatter,
    sort_by_expert,
};
use crate::reference::sparse_ops::{dsd_live, sdd_live};
use crate::sparse::BlockSparse;
use crate::topology::Topology;

/// The permutation and block-sparse layout that [`map`] and [`reduce`]
/// share: one routing decision, one expert width.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertPlan {
    tokens: usize,
    top_k: usize,
    num_experts: usize,
    width: usize,
    padded_width: usize,
    tokens_per_expert: Array1<i32>,
    indices: Array1<i32>,
    bins: Array1<i32>,
    padded_bins: Array1<i32>,
    topology: Arc<Topology>,
    /// The live (non-padding) rows of each block row of the padded layout.
    live: Vec<usize>,
}

impl ExpertPlan {
    /// Plans the map/reduce of `expert_ids` (`[tokens, top_k]`, distinct
    /// experts within a token, as a router's top-k) over `num_experts`
    /// experts whose intermediate is `width` wide, in blocks of `block_size`
    /// rows (one of [`crate::topology::CPU_BLOCK_SIZES`]).
    ///
    /// Errors: [`Error::Empty`] for zero tokens, experts or width,
    /// [`Error::InvalidTopK`] unless `1 <= top_k <= num_experts`,
    /// [`Error::ExpertOutOfRange`], [`Error::DuplicateExpert`],
    /// [`Error::UnsupportedBlockSize`], [`Error::IndexOverflow`].
    pub fn new(
        expert_ids: ArrayView2<i32>,
        num_experts: usize,
        width: usize,
        block_size: usize,
    ) -> Result<Self> {
        const OP: &str = "ExpertPlan::new";
        check_nonempty(OP, "the expert width", width)?;
        let (tokens, top_k) = expert_ids.dim();
        let tokens_per_expert = histogram(expert_ids, num_experts)?;
        let (indices, _bin_ids) = sort_by_expert(expert_ids, num_experts)?;
        let bins = inclusive_cumsum(tokens_per_expert.view())?;
        let padded = padded_bins(tokens_per_expert.view(), block_size)?;
        let padded_width = width.div_ceil(block_size) * block_size;
        let counts: Vec<usize> = tokens_per_expert.iter().map(|&c| c as usize).collect();
        let topology = Arc::new(Topology::from_tokens_per_expert(
            &counts,
            padded_width,
            block_size,
        )?);
        Ok(ExpertPlan {
            tokens,
            top_k,
            num_experts,
            width,
            padded_width,
            tokens_per_expert,
            indices,
            bins,
            padded_bins: padded,
            topology,
            live: live_rows(&counts, block_size),
        })
    }

    /// The number of tokens.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
    /// The experts per token.
    pub fn top_k(&self) -> usize {
        self.top_k
    }
    /// The number of experts.
    pub fn num_experts(&self) -> usize {
        self.num_experts
    }
    /// The experts' intermediate width (map's output, reduce's input).
    pub fn width(&self) -> usize {
        self.width
    }
    /// `[num_experts]`: assignments routed to each expert.
    pub fn tokens_per_expert(&self) -> &Array1<i32> {
        &self.tokens_per_expert
    }
    /// `[tokens * top_k]`: the flat assignments `t * top_k + s` sorted by
    /// expert (stable).
    pub fn indices(&self) -> &Array1<i32> {
        &self.indices
    }
    /// `[num_experts]`: inclusive cumsum of the tokens per expert.
    pub fn bins(&self) -> &Array1<i32> {
        &self.bins
    }
    /// `[num_experts]`: inclusive cumsum of the block-padded tokens per expert.
    pub fn padded_bins(&self) -> &Array1<i32> {
        &self.padded_bins
    }
    /// The block-diagonal topology `[padded rows, num_experts * padded width]`.
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }
    /// The live (non-padding) rows of each block row of the padded layout.
    pub(crate) fn live(&self) -> &[usize] {
        &self.live
    }
}

/// The experts' first linear map: row `t * top_k + s` of the result is
/// `x[t] · w[e(t, s)]`, accumulated in f32 and rounded to `T` once.
///
/// `x` is `[tokens, in]`, `w` is `[experts, in, width]`; returns
/// `[tokens * top_k, width]` in (token, slot) order.
///
/// Errors: [`Error::ShapeMismatch`] when `x` has not the plan's tokens or `w`
/// is not `[experts, in, width]`, [`Error::Empty`] for `in == 0`,
/// [`Error::IndexOverflow`] past i32.
pub fn map<T: Element>(plan: &ExpertPlan, x: ArrayView2<T>, w: ArrayView3<T>) -> Result<Array2<T>> {
    const OP: &str = "expert_map::map";
    let (tokens, input) = x.dim();
    if tokens != plan.tokens {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "x has {tokens} rows, the plan routes {} tokens",
                plan.tokens
            ),
        });
    }
    if w.dim() != (plan.num_experts, input, plan.width) {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "x is [tokens, {input}] and the plan has {} experts of width {}, so w must be \
                 [experts, in, width] = [{}, {input}, {}] (checkpoint layout, used as x · W), found {:?}",
                plan.num_experts,
                plan.width,
                plan.num_experts,
                plan.width,
                w.dim()
            ),
        });
    }
    check_nonempty(OP, "the input width", input)?;
    check_i32("tokens x in", product(&[tokens, input]))?;
    let (e_count, pw, width) = (plan.num_experts, plan.padded_width, plan.width);
    check_i32("in x experts x width", product(&[input, e_count, pw]))?;

    // The experts' W side by side: b[i, e * pw + o] = w[e, i, o], zero padding.
    let mut b = Array2::from_elem((input, e_count * pw), T::from_f32(0.0));
    for e in 0..e_count {
        b.slice_mut(s![.., e * pw..e * pw + width])
            .assign(&w.slice(s![e, .., ..]));
    }
    let gathered = padded_gather(
        x,
        plan.indices.view(),
        plan.bins.view(),
        plan.padded_bins.view(),
        None,
        plan.top_k,
    )?;
    let live = Some(plan.live.as_slice());
    let hidden = sdd_live(gathered.view(), b.view(), false, &plan.topology, live)?;
    let padded_rows = expert_rows(&hidden, plan);
    let in_order = padded_scatter(
        padded_rows.view(),
        plan.indices.view(),
        plan.bins.view(),
        plan.padded_bins.view(),
        None,
        1,
    )?;
    Ok(in_order.slice(s![.., ..width]).to_owned())
}

/// The experts' second linear map and the gate-weighted sum over the slots:
/// `out[t] = Σ_s gates[t, s] · (h[t * top_k + s] · v[e(t, s)])`; each product
/// is accumulated in f32 and rounded to `T`, the weighted sum over the slots
/// (in slot order) accumulated in f32 and rounded once.
///
/// `h` is `[tokens * top_k, width]` in (token, slot) order, `v` is
/// `[experts, width, out]`, `gates` is `[tokens, top_k]`; returns
/// `[tokens, out]`.
///
/// Errors: [`Error::ShapeMismatch`] for shapes that disagree with the plan,
/// [`Error::Empty`] for `out == 0`, [`Error::IndexOverflow`] past i32.
pub fn reduce<T: Element>(
    plan: &ExpertPlan,
    h: ArrayView2<T>,
    v: ArrayView3<T>,
    gates: ArrayView2<f32>,
) -> Result<Array2<T>> {
    const OP: &str = "expert_map::reduce";
    let (k, width) = (plan.top_k, plan.width);
    if h.dim() != (plan.tokens * k, width) {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "h must be [tokens * top_k, width] = [{}, {width}] in (token, slot) order, found {:?}",
                plan.tokens * k,
                h.dim()
            ),
        });
    }
    if gates.dim() != (plan.tokens, k) {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "gates must be [tokens, top_k] = [{}, {k}], found {:?}",
                plan.tokens,
                gates.dim()
            ),
        });
    }
    let (experts, v_in, out) = v.dim();
    if (experts, v_in) != (plan.num_experts, width) {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "v must be [experts, width, out] = [{}, {width}, out] (checkpoint layout, used as h · V), found {:?}",
                plan.num_experts,
                v.dim()
            ),
        });
    }
    check_nonempty(OP, "the output width", out)?;
    let (e_count, pw) = (plan.num_experts, plan.padded_width);
    check_i32("experts x width x out", product(&[e_count, pw, out]))?;

    // The experts' V stacked: b[e * pw + i, o] = v[e, i, o], zero padding.
    let mut b = Array2::from_elem((e_count * pw, out), T::from_f32(0.0));
    for e in 0..e_count {
        b.slice_mut(s![e * pw..e * pw + width, ..])
            .assign(&v.slice(s![e, .., ..]));
    }
    let mut h_padded = Array2::from_elem((h.nrows(), pw), T::from_f32(0.0));
    h_padded.slice_mut(s![.., ..width]).assign(&h);
    let rows = padded_gather(
        h_padded.view(),
        plan.indices.view(),
        plan.bins.view(),
        plan.padded_bins.view(),
        None,
        1,
    )?;
    let sparse = expert_blocks(rows.view(), plan)?;
    let y = dsd_live(sparse.view(), b.view(), Some(plan.live.as_slice()))?;
    padded_scatter(
        y.view(),
        plan.indices.view(),
        plan.bins.view(),
        plan.padded_bins.view(),
        Some(gates),
        k,
    )
}

/// The dense `[padded rows, padded width]` rows of a block-diagonal sparse
/// matrix: row `p` holds its expert's columns (the blocks of its block row).
fn expert_rows<T: Element>(m: &BlockSparse<T>, plan: &ExpertPlan) -> Array2<T> {
    let topo = m.topology();
    let bs = topo.block_size();
    let per_row = plan.padded_width / bs;
    let mut out = Array2::from_elem((topo.rows(), plan.padded_width), T::from_f32(0.0));
    for r in 0..topo.block_rows() {
        let first = topo.offsets()[r] as usize;
        for c in 0..per_row {
            let block = m.block(first + c);
            for i in 0..bs {
                out.slice_mut(s![r * bs + i, c * bs..(c + 1) * bs])
                    .assign(&ndarray::ArrayView1::from(&block[i * bs..(i + 1) * bs]));
            }
        }
    }
    out
}

/// The inverse of [`expert_rows`]: dense `[padded rows, padded width]` rows
/// as the blocks of the plan's topology.
fn expert_blocks<T: Element>(rows: ArrayView2<T>, plan: &ExpertPlan) -> Result<BlockSparse<T>> {
    let topo = &plan.topology;
    let bs = topo.block_size();
    let per_row = plan.padded_width / bs;
    let mut data = Vec::with_capacity(topo.num_elements());
    for r in 0..topo.block_rows() {
        for c in 0..per_row {
            for i in 0..bs {
                data.extend(rows.slice(s![r * bs + i, c * bs..(c + 1) * bs]).iter());
            }
        }
    }
    BlockSparse::new(Arc::clone(topo), data)
}
