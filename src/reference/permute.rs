//! Permutation of tokens into expert order: the histogram, the stable sort by
//! expert, the (padded) bins, and the padded gather / scatter between token
//! order and the padded expert-sorted layout.
//!
//! An assignment is a (token, slot) pair with flat index `a = t * top_k + j`.
//! Sorted entry `i` of expert `e` (`bins[e-1] <= i < bins[e]`) lives in row
//! `padded_bins[e-1] + (i - bins[e-1])` of the padded layout; the rows of an
//! expert's group past its count are padding.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use rayon::prelude::*;

use crate::checks::{check_nonempty, check_top_k};
use crate::dtype::Element;
use crate::error::{check_i32, product, Error, Result};
use crate::topology::CPU_BLOCK_SIZES;

/// Checks a `[tokens, top_k]` matrix of expert ids: non-empty, i32-indexable,
/// every id in `0..num_experts` (the error names the flat assignment index).
fn check_expert_ids(
    op: &'static str,
    expert_ids: ArrayView2<i32>,
    num_experts: usize,
) -> Result<()> {
    let (tokens, top_k) = expert_ids.dim();
    check_nonempty(op, "the number of tokens", tokens)?;
    check_nonempty(op, "the number of experts", num_experts)?;
    check_top_k(top_k, num_experts)?;
    check_i32("tokens x top_k", product(&[tokens, top_k]))?;
    check_i32("num_experts", num_experts as u128)?;
    for (index, &expert) in expert_ids.iter().enumerate() {
        if expert < 0 || expert as usize >= num_experts {
            return Err(Error::ExpertOutOfRange {
                index,
                expert: i64::from(expert),
                num_experts,
            });
        }
    }
    Ok(())
}

/// Checks that no token lists one expert in two of its slots (ids already
/// checked to lie in `0..num_experts`); the error names the token, the
/// expert and both slots.
fn check_distinct(expert_ids: ArrayView2<i32>, num_experts: usize) -> Result<()> {
    // Per expert, the last (token, slot) that named it.
    let mut last = vec![(usize::MAX, 0usize); num_experts];
    for (token, row) in expert_ids.rows().into_iter().enumerate() {
        for (slot, &expert) in row.iter().enumerate() {
            let seen = &mut last[expert as usize];
            if seen.0 == token {
                return Err(Error::DuplicateExpert {
                    token,
                    expert: i64::from(expert),
                    first: seen.1,
                    second: slot,
                });
            }
            *seen = (token, slot);
        }
    }
    Ok(())
}

/// Number of assignments routed to each expert.
///
/// `expert_ids` is `[tokens, top_k]`; returns `[num_experts]` counts that sum
/// to `tokens * top_k`.
///
/// Errors: [`Error::Empty`] for zero tokens or experts, [`Error::InvalidTopK`]
/// unless `1 <= top_k <= num_experts`, [`Error::ExpertOutOfRange`] for an id
/// outside `0..num_experts`, [`Error::IndexOverflow`] past i32.
pub fn histogram(expert_ids: ArrayView2<i32>, num_experts: usize) -> Result<Array1<i32>> {
    check_expert_ids("histogram", expert_ids, num_experts)?;
    let mut counts = Array1::<i32>::zeros(num_experts);
    for &e in expert_ids.iter() {
        counts[e as usize] += 1;
    }
    Ok(counts)
}

/// Stable sort of the flat assignments by expert id.
///
/// Returns `(indices, bin_ids)`, both `[tokens * top_k]`: `indices[i]` is the
/// flat assignment `t * top_k + j` of the i-th sorted assignment and
/// `bin_ids[i]` its expert. Assignments of one expert keep their flat order.
/// A token's slots must name distinct experts, as a router's top-k does.
///
/// Errors: as [`histogram`], plus [`Error::DuplicateExpert`] for a token that
/// lists one expert twice.
pub fn sort_by_expert(
    expert_ids: ArrayView2<i32>,
    num_experts: usize,
) -> Result<(Array1<i32>, Array1<i32>)> {
    check_expert_ids("sort_by_expert", expert_ids, num_experts)?;
    check_distinct(expert_ids, num_experts)?;
    let n = expert_ids.len();
    let mut next = vec![0usize; num_experts + 1];
    for &e in expert_ids.iter() {
        next[e as usize + 1] += 1;
    }
    for e in 0..num_experts {
        next[e + 1] += next[e];
    }
    let mut indices = Array1::<i32>::zeros(n);
    let mut bin_ids = Array1::<i32>::zeros(n);
    for (a, &e) in expert_ids.iter().enumerate() {
        let slot = &mut next[e as usize];
        indices[*slot] = a as i32;
        bin_ids[*slot] = e;
        *slot += 1;
    }
    Ok((indices, bin_ids))
}

/// Checks a per-expert count vector: non-empty, no negative count.
fn check_counts(op: &'static str, counts: ArrayView1<i32>) -> Result<()> {
    if counts.is_empty() {
        return Err(Error::Empty {
            op,
            what: "the number of experts",
        });
    }
    if let Some((e, &c)) = counts.indexed_iter().find(|(_, &c)| c < 0) {
        return Err(Error::InvalidConfig(format!(
            "{op}: tokens_per_expert[{e}] = {c} is negative; counts come from `histogram`"
        )));
    }
    Ok(())
}

/// Inclusive cumulative sum of per-expert counts: `bins[e]` is one past the
/// last sorted assignment of expert `e`.
///
/// Errors: [`Error::Empty`] for no experts, [`Error::InvalidConfig`] for a
/// negative count, [`Error::IndexOverflow`] when the total exceeds i32.
pub fn inclusive_cumsum(counts: ArrayView1<i32>) -> Result<Array1<i32>> {
    const OP: &str = "inclusive_cumsum";
    check_counts(OP, counts)?;
    let mut total = 0u128;
    let mut bins = Array1::<i32>::zeros(counts.len());
    for (b, &c) in bins.iter_mut().zip(counts.iter()) {
        total += c as u128;
        check_i32("tokens x top_k", total)?;
        *b = total as i32;
    }
    Ok(bins)
}

/// Inclusive cumulative sum of the per-expert counts, each rounded up to
/// `block_size`: `padded_bins[e]` is one past the last padded row of expert
/// `e`, and `padded_bins[E-1]` the number of padded rows.
///
/// Errors: [`Error::UnsupportedBlockSize`] unless `block_size` is one of
/// [`CPU_BLOCK_SIZES`], otherwise as [`inclusive_cumsum`].
pub fn padded_bins(tokens_per_expert: ArrayView1<i32>, block_size: usize) -> Result<Array1<i32>> {
    const OP: &str = "padded_bins";
    if !CPU_BLOCK_SIZES.contains(&block_size) {
        return Err(Error::UnsupportedBlockSize {
            block_size,
            backend: "the CPU reference",
            supported: CPU_BLOCK_SIZES,
        });
    }
    check_counts(OP, tokens_per_expert)?;
    let mut total = 0u128;
    let mut bins = Array1::<i32>::zeros(tokens_per_expert.len());
    for (b, &c) in bins.iter_mut().zip(tokens_per_expert.iter()) {
        total += (c as u128).div_ceil(block_size as u128) * block_size as u128;
        check_i32("padded tokens", total)?;
        *b = total as i32;
    }
    Ok(bins)
}

/// The live rows of each block row of the padded expert layout: `bs` for an
/// expert's full blocks, the remainder for its last one.
pub(crate) fn live_rows(tokens_per_expert: &[usize], bs: usize) -> Vec<usize> {
    tokens_per_expert
        .iter()
        .flat_map(|&c| {
            let rem = (c % bs != 0).then_some(c % bs);
            std::iter::repeat_n(bs, c / bs).chain(rem)
        })
        .collect()
}

/// The padded layout described by `(indices, bins, padded_bins, top_k)`,
/// checked for consistency.
struct Layout {
    tokens: usize,
    top_k: usize,
    padded: usize,
    /// Padded row of each flat assignment.
    row_of: Vec<usize>,
}

impl Layout {
    fn new(
        op: &'static str,
        indices: ArrayView1<i32>,
        bins: ArrayView1<i32>,
        padded_bins: ArrayView1<i32>,
        top_k: usize,
    ) -> Result<Self> {
        let n = indices.len();
        let experts = bins.len();
        check_nonempty(op, "the number of assignments", n)?;
        check_nonempty(op, "the number of experts", experts)?;
        check_top_k(top_k, experts)?;
        check_i32("tokens x top_k", n as u128)?;
        let mismatch = |message: String| Error::ShapeMismatch { op, message };
        if !n.is_multiple_of(top_k) {
            return Err(mismatch(format!(
                "{n} sorted assignments is not a multiple of top_k = {top_k}"
            )));
        }
        if padded_bins.len() != experts {
            return Err(mismatch(format!(
                "bins has {experts} experts, padded_bins has {}",
                padded_bins.len()
            )));
        }
        let mut row_of = vec![usize::MAX; n];
        let (mut start, mut padded_start) = (0usize, 0usize);
        for e in 0..experts {
            let (end, padded_end) = (bins[e], padded_bins[e]);
            if end < start as i32 || padded_end < padded_start as i32 {
                return Err(mismatch(format!(
                    "bins and padded_bins must be non-decreasing, expert {e} is not"
                )));
            }
            let (end, padded_end) = (end as usize, padded_end as usize);
            if end > n || end - start > padded_end - padded_start {
                return Err(mismatch(format!(
                    "expert {e} holds sorted entries {start}..{end} of {n} in padded rows \
                     {padded_start}..{padded_end}: use `inclusive_cumsum` and `padded_bins` \
                     of the same counts"
                )));
            }
            for i in start..end {
                let a = indices[i];
                if a < 0 || a as usize >= n || row_of[a as usize] != usize::MAX {
                    return Err(mismatch(format!(
                        "indices must be a permutation of 0..{n}; indices[{i}] = {a} is not"
                    )));
                }
                row_of[a as usize] = padded_start + (i - start);
            }
            (start, padded_start) = (end, padded_end);
        }
        if start != n {
            return Err(mismatch(format!(
                "bins end at {start}, the number of sorted assignments is {n}"
            )));
        }
        Ok(Layout {
            tokens: n / top_k,
            top_k,
            padded: padded_start,
            row_of,
        })
    }

    /// Checks a `[tokens, top_k]` weight matrix against the layout.
    fn check_weights(&self, op: &'static str, weights: Option<ArrayView2<f32>>) -> Result<()> {
        match weights {
            Some(w) if w.dim() != (self.tokens, self.top_k) => Err(Error::ShapeMismatch {
                op,
                message: format!(
                    "weights must be [tokens, top_k] = [{}, {}], found {:?}",
                    self.tokens,
                    self.top_k,
                    w.dim()
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Checks a `[padded, h]` operand (at least `padded` rows; more are ignored).
    fn check_padded(&self, op: &'static str, rows: usize) -> Result<()> {
        if rows < self.padded {
            return Err(Error::ShapeMismatch {
                op,
                message: format!(
                    "the padded operand has {rows} rows, the layout needs {}",
                    self.padded
                ),
            });
        }
        Ok(())
    }

    /// Checks a `[tokens, h]` operand.
    fn check_tokens(&self, op: &'static str, rows: usize) -> Result<()> {
        if rows != self.tokens {
            return Err(Error::ShapeMismatch {
                op,
                message: format!(
                    "the token operand has {rows} rows, the layout has {} tokens ({} assignments / top_k {})",
                    self.tokens,
                    self.tokens * self.top_k,
                    self.top_k
                ),
            });
        }
        Ok(())
    }
}

/// Gathers token rows into the padded expert-sorted layout.
///
/// `x` is `[tokens, h]`; `indices` comes from [`sort_by_expert`], `bins` from
/// [`inclusive_cumsum`] and `padded_bins` from [`padded_bins`] of the same
/// counts. Returns `[padded_bins[E-1], h]`: the row of assignment
/// `a = t * top_k + j` holds `x[t]`, times `weights[t, j]` when weights are
/// given (computed in f32, rounded once); padding rows are zero.
///
/// Errors: [`Error::ShapeMismatch`] for inconsistent shapes or layout arrays,
/// [`Error::Empty`], [`Error::InvalidTopK`], [`Error::IndexOverflow`].
pub fn padded_gather<T: Element>(
    x: ArrayView2<T>,
    indices: ArrayView1<i32>,
    bins: ArrayView1<i32>,
    padded_bins: ArrayView1<i32>,
    weights: Option<ArrayView2<f32>>,
    top_k: usize,
) -> Result<Array2<T>> {
    const OP: &str = "padded_gather";
    let layout = Layout::new(OP, indices, bins, padded_bins, top_k)?;
    layout.check_tokens(OP, x.nrows())?;
    layout.check_weights(OP, weights)?;
    let h = x.ncols();
    check_i32("padded tokens x hidden", product(&[layout.padded, h]))?;
    let mut out = Array2::from_elem((layout.padded, h), T::from_f32(0.0));
    if h == 0 {
        return Ok(out);
    }
    // The assignment each padded row holds (`None`: padding).
    let mut assignment_of = vec![None; layout.padded];
    for (a, &row) in layout.row_of.iter().enumerate() {
        assignment_of[row] = Some(a);
    }
    out.as_slice_mut()
        .expect("a new array is contiguous")
        .par_chunks_mut(h)
        .zip(assignment_of.par_iter())
        .for_each(|(dst, a)| {
            let Some(a) = *a else { return };
            let (t, j) = (a / top_k, a % top_k);
            let src = x.row(t);
            match weights {
                Some(w) => {
                    let w = w[[t, j]];
                    for (d, &s) in dst.iter_mut().zip(src.iter()) {
                        *d = T::from_f32(w * s.to_f32());
                    }
                }
                None => dst.iter_mut().zip(src.iter()).for_each(|(d, &s)| *d = s),
            }
        });
    Ok(out)
}

/// Scatters padded expert-sorted rows back to token order, combining each
/// token's `top_k` rows.
///
/// `y` is `[P, h]` with `P >= padded_bins[E-1]` (rows past the padded count
/// are ignored). Returns `[tokens, h]`, `tokens = indices.len() / top_k`:
/// `out[t] = sum over j = 0..top_k, in slot order, of w[t, j] * y[row(t, j)]`
/// (`w = 1` without weights), accumulated in f32 and rounded once.
///
/// Errors: as [`padded_gather`].
pub fn padded_scatter<T: Element>(
    y: ArrayView2<T>,
    indices: ArrayView1<i32>,
    bins: ArrayView1<i32>,
    padded_bins: ArrayView1<i32>,
    weights: Option<ArrayView2<f32>>,
    top_k: usize,
) -> Result<Array2<T>> {
    const OP: &str = "padded_scatter";
    let layout = Layout::new(OP, indices, bins, padded_bins, top_k)?;
    layout.check_padded(OP, y.nrows())?;
    layout.check_weights(OP, weights)?;
    let h = y.ncols();
    check_i32("tokens x hidden", product(&[layout.tokens, h]))?;
    let mut out = Array2::from_elem((layout.tokens, h), T::from_f32(0.0));
    if h == 0 {
        return Ok(out);
    }
    // One rayon task per token row (disjoint rows of `out`).
    out.as_slice_mut()
        .expect("a new array is contiguous")
        .par_chunks_mut(h)
        .enumerate()
        .for_each_init(
            || vec![0.0f32; h],
            |acc, (t, dst)| {
                acc.fill(0.0);
                for j in 0..top_k {
                    let w = weights.map_or(1.0, |w| w[[t, j]]);
                    let src = y.row(layout.row_of[t * top_k + j]);
                    for (a, &s) in acc.iter_mut().zip(src.iter()) {
                        *a += w * s.to_f32();
                    }
                }
                for (d, &a) in dst.iter_mut().zip(acc.iter()) {
                    *d = T::from_f32(a);
                }
            },
        );
    Ok(out)
}

/// Gradient of [`padded_scatter`] with respect to its weights:
/// `dw[t, j] = <grad_out[t], y[row(t, j)]>` in f32.
///
/// `grad_out` is `[tokens, h]`, `y` is `[P, h]` as in [`padded_scatter`];
/// returns `[tokens, top_k]`.
///
/// Errors: as [`padded_gather`], plus [`Error::ShapeMismatch`] when the
/// operands' widths differ.
pub fn padded_scatter_weight_grad<T: Element>(
    grad_out: ArrayView2<T>,
    y: ArrayView2<T>,
    indices: ArrayView1<i32>,
    bins: ArrayView1<i32>,
    padded_bins: ArrayView1<i32>,
    top_k: usize,
) -> Result<Array2<f32>> {
    const OP: &str = "padded_scatter_weight_grad";
    let layout = Layout::new(OP, indices, bins, padded_bins, top_k)?;
    layout.check_tokens(OP, grad_out.nrows())?;
    layout.check_padded(OP, y.nrows())?;
    if grad_out.ncols() != y.ncols() {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "grad_out has {} columns, y has {}",
                grad_out.ncols(),
                y.ncols()
            ),
        });
    }
    let mut dw = Array2::<f32>::zeros((layout.tokens, top_k));
    for ((t, j), d) in dw.indexed_iter_mut() {
        let src = y.row(layout.row_of[t * top_k + j]);
        *d = grad_out
            .row(t)
            .iter()
            .zip(src.iter())
            .fold(0.0f32, |acc, (&g, &s)| acc + g.to_f32() * s.to_f32());
    }
    Ok(dw)
}
