//! Auxiliary router losses: the load-balancing loss (Switch Transformer /
//! MegaBlocks, top-k aware) and the router z-loss (ST-MoE).

use ndarray::{ArrayView2, Axis};

use crate::error::{Error, Result};
use crate::reference::permute::histogram;
use crate::reference::routing::{check_finite, check_router_logits, check_router_matrix};

/// The load-balancing loss `E * sum_e f_e * P_e`, where `f_e` is the fraction
/// of the `tokens * top_k` assignments routed to expert `e` and `P_e` the mean
/// router probability of `e` over the tokens.
///
/// A uniform router (`P_e = 1/E`) and a perfectly balanced routing
/// (`f_e = 1/E`) both give 1.
///
/// `probs` is `[tokens, num_experts]`, `expert_ids` is `[tokens, top_k]`.
///
/// Errors: [`Error::ShapeMismatch`] when the shapes disagree, [`Error::Empty`],
/// [`Error::InvalidTopK`], [`Error::ExpertOutOfRange`],
/// [`Error::IndexOverflow`], [`Error::NonFinite`] for a non-finite probability.
pub fn load_balancing_loss(
    probs: ArrayView2<f32>,
    expert_ids: ArrayView2<i32>,
    num_experts: usize,
) -> Result<f32> {
    const OP: &str = "load_balancing_loss";
    check_router_matrix(OP, probs)?;
    let (tokens, experts) = probs.dim();
    if experts != num_experts || expert_ids.nrows() != tokens {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "probs must be [tokens, num_experts] = [{}, {num_experts}] to match expert ids {:?}, found {:?}",
                expert_ids.nrows(),
                expert_ids.dim(),
                probs.dim()
            ),
        });
    }
    let counts = histogram(expert_ids, num_experts)?;
    check_finite("the router probabilities", probs)?;
    let assignments = (tokens * expert_ids.ncols()) as f32;
    let sum: f32 = probs
        .sum_axis(Axis(0))
        .iter()
        .zip(counts.iter())
        .map(|(&p, &c)| (c as f32 / assignments) * (p / tokens as f32))
        .sum();
    Ok(num_experts as f32 * sum)
}

/// The router z-loss: the mean over tokens of `logsumexp(logits[t])^2`.
///
/// `logits` is `[tokens, experts]`.
///
/// A logit of `-inf` (a masked expert) adds nothing to its token's
/// logsumexp.
///
/// Errors: [`Error::Empty`], [`Error::IndexOverflow`], [`Error::NonFinite`]
/// for a NaN or `+inf` logit, [`Error::TooFewExperts`] for a token whose
/// logits are all `-inf`.
pub fn router_z_loss(logits: ArrayView2<f32>) -> Result<f32> {
    check_router_matrix("router_z_loss", logits)?;
    check_router_logits(logits, 1)?;
    let total: f32 = logits
        .rows()
        .into_iter()
        .map(|row| {
            let max = row.fold(f32::NEG_INFINITY, |m, &l| m.max(l));
            let lse = max + row.fold(0.0f32, |s, &l| s + (l - max).exp()).ln();
            lse * lse
        })
        .sum();
    Ok(total / logits.nrows() as f32)
}
