//! The router: softmax over the experts and top-k selection, in f32.

use ndarray::{Array2, ArrayView2};

use crate::checks::{check_router_dims, check_top_k};
use crate::error::{check_i32, product, Error, Result};

/// The routing decision of a batch of tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// `[tokens, experts]`: softmax of the router logits over all experts.
    pub probs: Array2<f32>,
    /// `[tokens, top_k]`: the chosen experts of each token, by descending
    /// probability (ties: lower expert id first).
    pub expert_ids: Array2<i32>,
    /// `[tokens, top_k]`: the weight of each chosen expert: its probability,
    /// or its probability divided by the sum of the token's k probabilities
    /// when the routing renormalises.
    pub weights: Array2<f32>,
}

/// Checks that every value of `m` is finite, naming the first one that is not.
pub(crate) fn check_finite(what: &'static str, m: ArrayView2<f32>) -> Result<()> {
    match m.indexed_iter().find(|(_, v)| !v.is_finite()) {
        Some(((row, col), &value)) => Err(Error::NonFinite {
            what,
            row,
            col,
            value,
        }),
        None => Ok(()),
    }
}

/// Checks router logits row by row: a NaN or `+inf` is [`Error::NonFinite`]
/// (the first of its row); `-inf` masks an expert ("never route here"), and a
/// row with fewer than `needed` experts above `-inf` is
/// [`Error::TooFewExperts`]. The error names the first bad token, as the
/// device router's status word does.
pub(crate) fn check_router_logits(logits: ArrayView2<f32>, needed: usize) -> Result<()> {
    for (token, row) in logits.rows().into_iter().enumerate() {
        let mut routable = 0;
        for (col, &value) in row.iter().enumerate() {
            if value.is_nan() || value == f32::INFINITY {
                return Err(Error::NonFinite {
                    what: "the router logits",
                    row: token,
                    col,
                    value,
                });
            }
            routable += usize::from(value != f32::NEG_INFINITY);
        }
        if routable < needed {
            return Err(Error::TooFewExperts {
                token,
                routable,
                needed,
            });
        }
    }
    Ok(())
}

/// Checks that a `[tokens, experts]` matrix of router logits (or
/// probabilities) is non-empty and indexable with i32.
pub(crate) fn check_router_matrix(op: &'static str, m: ArrayView2<f32>) -> Result<()> {
    let (tokens, experts) = m.dim();
    check_router_dims(op, tokens, experts)
}

/// Softmax of one row of logits, in f32 (max subtracted first).
fn softmax_row(logits: impl Iterator<Item = f32> + Clone, out: &mut [f32]) {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for (o, l) in out.iter_mut().zip(logits) {
        *o = (l - max).exp();
        sum += *o;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

/// Routes each token to its `top_k` most probable experts.
///
/// `logits` is `[tokens, experts]`. The softmax runs over all experts in f32;
/// the k largest probabilities are taken in descending order (ties: lower
/// expert id first); with `renormalize` the k weights are divided by their
/// sum so they add up to 1. A logit of `-inf` masks its expert (a pruned or
/// disabled one): probability 0, never chosen.
///
/// Errors: [`Error::Empty`] for zero tokens or experts,
/// [`Error::InvalidTopK`] unless `1 <= top_k <= experts`,
/// [`Error::IndexOverflow`] when `tokens * experts` or `tokens * top_k` does
/// not fit i32, [`Error::NonFinite`] for a NaN or `+inf` logit,
/// [`Error::TooFewExperts`] for a token with fewer than `top_k` experts
/// above `-inf`.
pub fn route(logits: ArrayView2<f32>, top_k: usize, renormalize: bool) -> Result<Routing> {
    const OP: &str = "route";
    check_router_matrix(OP, logits)?;
    let (tokens, experts) = logits.dim();
    check_top_k(top_k, experts)?;
    check_i32("tokens x top_k", product(&[tokens, top_k]))?;
    check_router_logits(logits, top_k)?;

    let mut probs = Array2::<f32>::zeros((tokens, experts));
    let mut expert_ids = Array2::<i32>::zeros((tokens, top_k));
    let mut weights = Array2::<f32>::zeros((tokens, top_k));
    let mut order: Vec<usize> = Vec::with_capacity(experts);
    let mut row = vec![0.0f32; experts];
    for t in 0..tokens {
        softmax_row(logits.row(t).iter().copied(), &mut row);
        order.clear();
        order.extend((0..experts).filter(|&e| logits[[t, e]] != f32::NEG_INFINITY));
        // Stable sort: equal probabilities keep the lower expert id first.
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let norm = if renormalize {
            order[..top_k].iter().map(|&e| row[e]).sum::<f32>()
        } else {
            1.0
        };
        for (j, &e) in order[..top_k].iter().enumerate() {
            expert_ids[[t, j]] = e as i32;
            weights[[t, j]] = row[e] / norm;
        }
        probs
            .row_mut(t)
            .assign(&ndarray::ArrayView1::from(&row[..]));
    }
    Ok(Routing {
        probs,
        expert_ids,
        weights,
    })
}
