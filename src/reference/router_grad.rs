//! The router's backward in f32: from the gradient of the routing weights
//! (and the coefficients of the auxiliary losses) to the gradient of the
//! router logits. The CUDA router-gradient kernels are held to this.

use ndarray::{Array2, ArrayView2};

use crate::checks::check_top_k;
use crate::config::AuxLossCoefficients;
use crate::error::{Error, Result};
use crate::reference::permute::histogram;
use crate::reference::routing::{check_router_logits, check_router_matrix, Routing};

/// Gradient of `L = <grad_weights, weights> + aux.load_balancing * LBL +
/// aux.z_loss * Z` with respect to the router logits `[tokens, experts]`.
///
/// `weights`, `expert_ids` and `probs` are `routing`, the result of
/// `route(logits, top_k, renormalize)`; `grad_weights` is `[tokens, top_k]`.
/// `LBL = E * sum_e f_e * P_e` with `f_e = count_e / (tokens * top_k)` a
/// constant and `P_e` the mean of `probs[.., e]`; `Z` is the mean over tokens
/// of `logsumexp(logits[t])^2`. Per token, in f32:
///
/// 1. `dp[e_j] = dw_j`, or with renormalisation (`w_j = p_{e_j} / S`,
///    `S = sum_j p_{e_j}`) `dp[e_j] = (dw_j - sum_i dw_i w_i) / S`; zero for
///    experts not chosen;
/// 2. `dp[e] += aux.load_balancing * E * f_e / tokens`;
/// 3. `dlogits = p ⊙ (dp - sum_e p_e dp_e)` (softmax backward);
/// 4. `dlogits[e] += aux.z_loss * 2 * lse / tokens * p_e`.
///
/// Errors: [`Error::Empty`] for zero tokens or experts,
/// [`Error::InvalidTopK`], [`Error::ShapeMismatch`] when `routing` or
/// `grad_weights` disagree with `logits`, [`Error::ExpertOutOfRange`],
/// [`Error::IndexOverflow`], [`Error::NonFinite`] for a NaN or `+inf` logit,
/// [`Error::TooFewExperts`] for a token with fewer than `top_k` experts
/// above `-inf` (masked experts, probability 0, get gradient 0).
pub fn route_backward(
    logits: ArrayView2<f32>,
    routing: &Routing,
    grad_weights: ArrayView2<f32>,
    renormalize: bool,
    aux: AuxLossCoefficients,
) -> Result<Array2<f32>> {
    const OP: &str = "route_backward";
    check_router_matrix(OP, logits)?;
    let (tokens, experts) = logits.dim();
    let top_k = routing.expert_ids.ncols();
    check_top_k(top_k, experts)?;
    let mismatch = |what: &str, found: (usize, usize), want: (usize, usize)| Error::ShapeMismatch {
        op: OP,
        message: format!(
            "{what} must be {want:?} to match logits {:?} and top_k {top_k}, found {found:?}; \
             pass the routing of these logits",
            logits.dim()
        ),
    };
    let checks = [
        ("routing.probs", routing.probs.dim(), (tokens, experts)),
        (
            "routing.expert_ids",
            routing.expert_ids.dim(),
            (tokens, top_k),
        ),
        ("routing.weights", routing.weights.dim(), (tokens, top_k)),
        ("grad_weights", grad_weights.dim(), (tokens, top_k)),
    ];
    if let Some(&(what, found, want)) = checks.iter().find(|(_, found, want)| found != want) {
        return Err(mismatch(what, found, want));
    }
    check_router_logits(logits, top_k)?;
    let counts = histogram(routing.expert_ids.view(), experts)?;

    let inv_tokens = 1.0 / tokens as f32;
    let assignments = (tokens * top_k) as f32;
    // d(aux.load_balancing * LBL) / d probs[t, e], the same for every token.
    let lbl_grad: Vec<f32> = counts
        .iter()
        .map(|&c| aux.load_balancing * experts as f32 * (c as f32 / assignments) * inv_tokens)
        .collect();

    let mut dlogits = Array2::<f32>::zeros((tokens, experts));
    let mut dp = vec![0.0f32; experts];
    for t in 0..tokens {
        let p = routing.probs.row(t);
        let ids = routing.expert_ids.row(t);
        let dw = grad_weights.row(t);
        dp.copy_from_slice(&lbl_grad);
        if renormalize {
            let sum: f32 = ids.iter().map(|&e| p[e as usize]).sum();
            let dot: f32 = dw
                .iter()
                .zip(routing.weights.row(t))
                .map(|(&g, &w)| g * w)
                .sum();
            for (&e, &g) in ids.iter().zip(dw) {
                dp[e as usize] += (g - dot) / sum;
            }
        } else {
            for (&e, &g) in ids.iter().zip(dw) {
                dp[e as usize] += g;
            }
        }
        let mean: f32 = p.iter().zip(&dp).map(|(&pe, &d)| pe * d).sum();
        let row = logits.row(t);
        let max = row.fold(f32::NEG_INFINITY, |m, &l| m.max(l));
        let lse = max + row.fold(0.0f32, |s, &l| s + (l - max).exp()).ln();
        let z_grad = aux.z_loss * 2.0 * lse * inv_tokens;
        for ((out, &pe), &d) in dlogits.row_mut(t).iter_mut().zip(p).zip(&dp) {
            *out = pe * (d - mean) + z_grad * pe;
        }
    }
    Ok(dlogits)
}
