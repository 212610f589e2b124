//! The capacity-factor MoE (GShard, Switch Transformer, fairseq): the baseline
//! the dropless layer is compared against. Each expert gets a fixed number of
//! slots, `capacity = ceil(capacity_factor * tokens * top_k / num_experts)`;
//! assignments beyond an expert's capacity are dropped (they contribute
//! nothing and the surviving weights are not renormalised), and the experts
//! run as dense MLPs on `[num_experts, capacity, hidden]` slot buffers whose
//! unused slots are zero.
//!
//! Priority: an expert admits its assignments in the order of the stable sort
//! by expert ([`crate::reference::permute::sort_by_expert`]), i.e. in token
//! order (the first tokens of the batch win), whichever of its k choices the
//! assignment is. This is fairseq's / Switch's batch-order priority, not
//! GShard's choice-major priority (all first choices before any second one).
//!
//! Same router, expert MLP and roundings as [`crate::reference::moe::forward`]:
//! with a capacity of at least `tokens` nothing is dropped and both agree.

use ndarray::{s, Array1, Array2, Array3, ArrayView2};

use crate::checks::{check_nonempty, check_top_k};
use crate::config::{MlpKind, MoeConfig, MoeWeights};
use crate::dtype::Element;
use crate::error::{check_i32, product, Error, Result};
use crate::reference::activation::{gelu, silu};
use crate::reference::gemm::{gemm_into, Threads};
use crate::reference::moe::{check_input, router_logits};
use crate::reference::permute::{histogram, inclusive_cumsum, sort_by_expert};
use crate::reference::routing::{route, Routing};

/// The result of a capacity-factor MoE forward.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityOutput<T> {
    /// `[tokens, hidden]`: the layer's output (dropped assignments add zero).
    pub output: Array2<T>,
    /// Fraction of the `tokens * top_k` assignments that were dropped.
    pub dropped_fraction: f32,
    /// Slots per expert.
    pub capacity: usize,
    /// `[num_experts]`: assignments routed to each expert, before dropping
    /// (expert `e` admits `min(tokens_per_expert[e], capacity)`).
    pub tokens_per_expert: Array1<i32>,
}

/// Slots per expert: `ceil(capacity_factor * tokens * top_k / num_experts)`,
/// computed in f64 from the f32 factor (at least 1 for any positive factor).
///
/// Errors: [`Error::InvalidConfig`] unless the factor is finite and positive,
/// [`Error::Empty`] for zero tokens or experts, [`Error::InvalidTopK`],
/// [`Error::IndexOverflow`] when the capacity does not fit i32.
pub fn expert_capacity(
    capacity_factor: f32,
    tokens: usize,
    top_k: usize,
    num_experts: usize,
) -> Result<usize> {
    const OP: &str = "expert_capacity";
    if !(capacity_factor.is_finite() && capacity_factor > 0.0) {
        return Err(Error::InvalidConfig(format!(
            "capacity factor {capacity_factor} must be finite and positive (1.0 gives each \
             expert its even share of the assignments; >= num_experts / top_k drops nothing)"
        )));
    }
    check_nonempty(OP, "the number of tokens", tokens)?;
    check_nonempty(OP, "the number of experts", num_experts)?;
    check_top_k(top_k, num_experts)?;
    let assignments = product(&[tokens, top_k]);
    check_i32("tokens x top_k", assignments)?;
    let capacity = (f64::from(capacity_factor) * assignments as f64 / num_experts as f64).ceil();
    if capacity > i32::MAX as f64 {
        return Err(Error::IndexOverflow {
            what: "expert capacity",
            value: capacity as u128,
            max: i32::MAX as u128,
        });
    }
    Ok(capacity as usize)
}

/// The slot of each flat assignment `t * top_k + j`: `e * capacity + rank`
/// when its rank among expert `e`'s assignments (token order) is below
/// `capacity`, else `None` (dropped).
fn assign_slots(
    expert_ids: ArrayView2<i32>,
    num_experts: usize,
    capacity: usize,
) -> Result<Vec<Option<usize>>> {
    let (indices, bin_ids) = sort_by_expert(expert_ids, num_experts)?;
    let counts = histogram(expert_ids, num_experts)?;
    let bins = inclusive_cumsum(counts.view())?;
    let mut slots = vec![None; indices.len()];
    for (p, (&a, &e)) in indices.iter().zip(bin_ids.iter()).enumerate() {
        let e = e as usize;
        let start = if e == 0 { 0 } else { bins[e - 1] as usize };
        let rank = p - start;
        if rank < capacity {
            slots[a as usize] = Some(e * capacity + rank);
        }
    }
    Ok(slots)
}

/// The expert MLP on one expert's `[capacity, hidden]` slots (f32 values of
/// `T`), rounding to `T` wherever the dropless layer's kernels store.
fn expert_mlp<T: Element>(
    config: &MoeConfig,
    weights: &MoeWeights<T>,
    expert: usize,
    x: &Array2<f32>,
) -> Result<Array2<f32>> {
    let rows = expert * config.ffn..(expert + 1) * config.ffn;
    let widen = |m: &Array2<T>| m.slice(s![rows.clone(), ..]).mapv(T::to_f32);
    let round = |v: f32| T::from_f32(v).to_f32();
    let project = |w: &Array2<f32>| {
        let mut h = Array2::<f32>::zeros((x.nrows(), config.ffn));
        gemm_into(x.view(), w.t(), h.view_mut(), false, Threads::All);
        h.mapv(round)
    };
    let h1 = project(&widen(&weights.w1));
    let act = match config.mlp {
        MlpKind::Plain => h1.mapv(|v| round(gelu(v))),
        MlpKind::Glu => {
            let w3 = weights.w3.as_ref().ok_or_else(|| {
                Error::InvalidConfig("a GLU layer needs w3; pass it or use MlpKind::Plain".into())
            })?;
            let h3 = project(&widen(w3));
            ndarray::Zip::from(&h1)
                .and(&h3)
                .map_collect(|&g, &u| round(silu(g) * u))
        }
    };
    let mut y = Array2::<f32>::zeros((x.nrows(), config.hidden));
    gemm_into(
        act.view(),
        widen(&weights.w2).view(),
        y.view_mut(),
        false,
        Threads::All,
    );
    Ok(y.mapv(round))
}

/// The capacity-factor MoE forward for a given routing (see the module doc):
/// dispatch into `[num_experts, capacity, hidden]` slots, dense expert MLPs,
/// and the combine `out[t] = sum over admitted j, in slot order, of
/// weights[t, j] * y[slot(t, j)]`, accumulated in f32 and rounded once.
///
/// Errors: the config's and weights' checks, [`Error::ShapeMismatch`] when
/// `x` is not `[tokens, hidden]` or the routing not `[tokens, top_k]`,
/// [`Error::Empty`] for zero tokens, [`Error::ExpertOutOfRange`],
/// [`expert_capacity`]'s errors, [`Error::IndexOverflow`] when the slot
/// buffers exceed i32 indexing.
pub fn forward_routed<T: Element>(
    config: &MoeConfig,
    weights: &MoeWeights<T>,
    x: ArrayView2<T>,
    routing: &Routing,
    capacity_factor: f32,
) -> Result<CapacityOutput<T>> {
    const OP: &str = "capacity::forward_routed";
    let tokens = check_input(OP, config, weights, x)?;
    let (e, k, h) = (config.num_experts, config.top_k, config.hidden);
    let mismatch = |what: &str, found: (usize, usize)| Error::ShapeMismatch {
        op: OP,
        message: format!(
            "routing {what} must be [tokens, top_k] = [{tokens}, {k}], found {found:?}"
        ),
    };
    if routing.expert_ids.dim() != (tokens, k) {
        return Err(mismatch("expert_ids", routing.expert_ids.dim()));
    }
    if routing.weights.dim() != (tokens, k) {
        return Err(mismatch("weights", routing.weights.dim()));
    }
    let capacity = expert_capacity(capacity_factor, tokens, k, e)?;
    check_i32(
        "experts x capacity x hidden",
        product(&[e, capacity, h.max(config.ffn)]),
    )?;

    let tokens_per_expert = histogram(routing.expert_ids.view(), e)?;
    let slot_of = assign_slots(routing.expert_ids.view(), e, capacity)?;
    let mut slots = Array3::<f32>::zeros((e, capacity, h));
    for (a, slot) in slot_of.iter().enumerate() {
        if let Some(slot) = *slot {
            let row = x.row(a / k).mapv(T::to_f32);
            slots
                .slice_mut(s![slot / capacity, slot % capacity, ..])
                .assign(&row);
        }
    }
    let mut y = Array3::<f32>::zeros((e, capacity, h));
    for expert in 0..e {
        let x_e = slots.slice(s![expert, .., ..]).to_owned();
        let y_e = expert_mlp(config, weights, expert, &x_e)?;
        y.slice_mut(s![expert, .., ..]).assign(&y_e);
    }

    let mut output = Array2::from_elem((tokens, h), T::from_f32(0.0));
    let mut acc = vec![0.0f32; h];
    for t in 0..tokens {
        acc.fill(0.0);
        for j in 0..k {
            if let Some(slot) = slot_of[t * k + j] {
                let w = routing.weights[[t, j]];
                let src = y.slice(s![slot / capacity, slot % capacity, ..]);
                for (a, &v) in acc.iter_mut().zip(src.iter()) {
                    *a += w * v;
                }
            }
        }
        for (d, &a) in output.row_mut(t).iter_mut().zip(&acc) {
            *d = T::from_f32(a);
        }
    }
    let dropped = slot_of.iter().filter(|s| s.is_none()).count();
    Ok(CapacityOutput {
        output,
        dropped_fraction: dropped as f32 / slot_of.len() as f32,
        capacity,
        tokens_per_expert,
    })
}

/// The capacity-factor MoE forward: `x` is `[tokens, hidden]`; routes with
/// the dropless layer's router (f32 logits `x · routerᵀ`, softmax top-k) and
/// runs [`forward_routed`].
///
/// Errors: as [`forward_routed`], plus [`Error::NonFinite`] for non-finite
/// router logits.
pub fn forward<T: Element>(
    config: &MoeConfig,
    weights: &MoeWeights<T>,
    x: ArrayView2<T>,
    capacity_factor: f32,
) -> Result<CapacityOutput<T>> {
    let tokens = check_input("capacity::forward", config, weights, x)?;
    expert_capacity(capacity_factor, tokens, config.top_k, config.num_experts)?;
    let logits = router_logits(x, weights.router.view());
    let routing = route(logits.view(), config.top_k, config.renormalize)?;
    forward_routed(config, weights, x, &routing, capacity_factor)
}
