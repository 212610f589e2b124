//! The dMoE layer forward on the CPU, composed from the reference ops as the
//! GPU path composes its kernels: route, sort by expert, gather into the
//! padded layout, block-sparse expert FFN, scatter back with the routing
//! weights. Intermediates are rounded to `T` wherever a kernel stores them.
//!
//! [`forward_train`] also returns the [`MoeSaved`] state that
//! [`crate::reference::backward::backward`] needs. [`forward`] computes the
//! same values without keeping it: the expert FFN in one pass per block row
//! (each block's activation multiplied into the output as it is made). Both
//! skip the padding rows of each expert's last block (zero rows, whose
//! products are zero).

use std::sync::Arc;

use ndarray::{s, Array1, Array2, ArrayView2};
use rayon::prelude::*;

use crate::checks::check_nonempty;
use crate::config::{MlpKind, MoeConfig, MoeWeights};
use crate::dtype::Element;
use crate::error::{check_i32, product, Error, Result};
use crate::reference::activation::{gelu, silu};
use crate::reference::expert_map::ExpertPlan;
use crate::reference::loss::{load_balancing_loss, router_z_loss};
use crate::reference::permute::{padded_gather, padded_scatter};
use crate::reference::routing::{route, Routing};
use crate::reference::sparse_ops::{dsd_live, sdd_dsd, sdd_live, LiveRows};
use crate::reference::vectorize::wide;
use crate::sparse::BlockSparse;
use crate::topology::Topology;

/// The result of a dMoE forward.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeOutput<T> {
    /// `[tokens, hidden]`: the layer's output.
    pub output: Array2<T>,
    /// The router's decision.
    pub routing: Routing,
    /// `[num_experts]`: assignments routed to each expert.
    pub tokens_per_expert: Array1<i32>,
    /// The load-balancing loss of this batch (unscaled).
    pub load_balancing_loss: f32,
    /// The router z-loss of this batch (unscaled).
    pub z_loss: f32,
}

/// Experts whose router logits are summed side by side (one SIMD register).
const LOGIT_LANES: usize = 16;

/// Router logits `x · routerᵀ`, accumulated in f32 in order of the hidden axis.
///
/// Up to [`LOGIT_LANES`] experts are summed side by side in registers, one
/// hidden index at a time, so the sums vectorise across experts while each
/// keeps its order.
pub(crate) fn router_logits<T: Element>(x: ArrayView2<T>, router: ArrayView2<T>) -> Array2<f32> {
    let experts = router.nrows();
    let mut logits = Array2::<f32>::zeros((x.nrows(), experts));
    if experts == 0 {
        return logits;
    }
    // `[hidden, groups * LOGIT_LANES]`, zero-padded: row `h` holds every
    // expert's weight for hidden index `h`.
    let groups = experts.div_ceil(LOGIT_LANES);
    let mut router_t = Array2::<f32>::zeros((router.ncols(), groups * LOGIT_LANES));
    router_t
        .slice_mut(s![.., ..experts])
        .assign(&router.t().mapv(|v| v.to_f32()));
    let router_t = router_t.as_slice().expect("a new array is contiguous");
    let data = logits.as_slice_mut().expect("a new array is contiguous");
    data.par_chunks_mut(experts)
        .enumerate()
        .for_each(|(t, row)| {
            let xt: Vec<f32> = x.row(t).iter().map(|v| v.to_f32()).collect();
            for (g, out) in row.chunks_mut(LOGIT_LANES).enumerate() {
                let mut acc = [0.0f32; LOGIT_LANES];
                for (&v, r) in xt.iter().zip(router_t.chunks_exact(groups * LOGIT_LANES)) {
                    let r = &r[g * LOGIT_LANES..(g + 1) * LOGIT_LANES];
                    for (a, &w) in acc.iter_mut().zip(r) {
                        *a += v * w;
                    }
                }
                out.copy_from_slice(&acc[..out.len()]);
            }
        });
    logits
}

/// Elements per rayon task when applying the activation.
const ACTIVATION_CHUNK: usize = 1 << 14;

/// Everything the backward needs from a forward, as the GPU path keeps it:
/// the input, the router's logits and decision, the padded layout, the
/// gathered input, the expert MLP's pre-activations and activations on the
/// topology's blocks, and the padded expert output.
///
/// Only [`forward_train`] builds one; read it through the accessors.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeSaved<T> {
    config: MoeConfig,
    x: Array2<T>,
    logits: Array2<f32>,
    routing: Routing,
    plan: ExpertPlan,
    x_gathered: Array2<T>,
    pre_w1: BlockSparse<T>,
    pre_w3: Option<BlockSparse<T>>,
    hidden: BlockSparse<T>,
    y: Array2<T>,
}

impl<T> MoeSaved<T> {
    /// The configuration of the forward that saved this state.
    pub fn config(&self) -> &MoeConfig {
        &self.config
    }
    /// `[tokens, hidden]`: the layer's input.
    pub fn x(&self) -> &Array2<T> {
        &self.x
    }
    /// `[tokens, num_experts]` f32: the router logits `x · routerᵀ`.
    pub fn logits(&self) -> &Array2<f32> {
        &self.logits
    }
    /// The router's decision.
    pub fn routing(&self) -> &Routing {
        &self.routing
    }
    /// `[num_experts]`: assignments routed to each expert.
    pub fn tokens_per_expert(&self) -> &Array1<i32> {
        self.plan.tokens_per_expert()
    }
    /// `[tokens * top_k]`: the flat assignments sorted by expert.
    pub fn indices(&self) -> &Array1<i32> {
        self.plan.indices()
    }
    /// `[num_experts]`: inclusive cumsum of the tokens per expert.
    pub fn bins(&self) -> &Array1<i32> {
        self.plan.bins()
    }
    /// `[num_experts]`: inclusive cumsum of the block-padded tokens per expert.
    pub fn padded_bins(&self) -> &Array1<i32> {
        self.plan.padded_bins()
    }
    /// The block-sparse topology of the expert MLP, `[padded, num_experts * ffn]`.
    pub fn topology(&self) -> &Arc<Topology> {
        self.plan.topology()
    }
    /// `[padded, hidden]`: the input gathered into the padded expert layout.
    pub fn x_gathered(&self) -> &Array2<T> {
        &self.x_gathered
    }
    /// `x_gathered · W1ᵀ` on the topology's blocks (pre-activation).
    pub fn pre_w1(&self) -> &BlockSparse<T> {
        &self.pre_w1
    }
    /// `x_gathered · W3ᵀ` on the topology's blocks; GLU only.
    pub fn pre_w3(&self) -> Option<&BlockSparse<T>> {
        self.pre_w3.as_ref()
    }
    /// The activations `h` on the topology's blocks (GeLU, or SiLU-gate).
    pub fn hidden(&self) -> &BlockSparse<T> {
        &self.hidden
    }
    /// `[padded, hidden]`: the expert output `h · W2` in the padded layout.
    pub fn y(&self) -> &Array2<T> {
        &self.y
    }
}

/// The GLU layer's `w3`, or the error that says it is missing.
pub(crate) fn require_w3<T>(weights: &MoeWeights<T>) -> Result<&Array2<T>> {
    weights.w3.as_ref().ok_or_else(|| {
        Error::InvalidConfig("a GLU layer needs w3; pass it or use MlpKind::Plain".into())
    })
}

/// The expert MLP's pre-activations `(x_g · W1ᵀ, x_g · W3ᵀ)` on the
/// topology's blocks (the second for GLU only) and its activations, each
/// rounded to `T`.
type ExpertHidden<T> = (BlockSparse<T>, Option<BlockSparse<T>>, BlockSparse<T>);

/// `v` rounded to `T` and back, as a kernel that stores `v` and reloads it.
fn rounded<T: Element>(v: f32) -> f32 {
    T::from_f32(v).to_f32()
}

/// The expert MLP up to its activations, as [`ExpertHidden`]; rows of
/// `x_gathered` past `live` are padding (zero).
fn expert_hidden<T: Element>(
    config: &MoeConfig,
    weights: &MoeWeights<T>,
    x_gathered: ArrayView2<T>,
    topology: &Arc<Topology>,
    live: LiveRows,
) -> Result<ExpertHidden<T>> {
    let pre_w1 = sdd_live(x_gathered, weights.w1.view(), true, topology, live)?;
    let mut hidden = pre_w1.clone();
    let pre_w3 = match config.mlp {
        MlpKind::Plain => {
            hidden
                .data_mut()
                .par_chunks_mut(ACTIVATION_CHUNK)
                .for_each(|c| {
                    c.iter_mut()
                        .for_each(|a| *a = T::from_f32(gelu(a.to_f32())))
                });
            None
        }
        MlpKind::Glu => {
            let w3 = require_w3(weights)?.view();
            let pre_w3 = sdd_live(x_gathered, w3, true, topology, live)?;
            hidden
                .data_mut()
                .par_chunks_mut(ACTIVATION_CHUNK)
                .zip(pre_w3.data().par_chunks(ACTIVATION_CHUNK))
                .for_each(|(h, g)| {
                    for (a, &b) in h.iter_mut().zip(g) {
                        *a = T::from_f32(silu(a.to_f32()) * b.to_f32());
                    }
                });
            Some(pre_w3)
        }
    };
    Ok((pre_w1, pre_w3, hidden))
}

/// The expert output `h · W2` of [`expert_hidden`]'s activations `h`, in
/// one pass ([`sdd_dsd`]): each block's activation is applied to its f32
/// tiles as they are computed (the pre-activations rounded to `T` first), so
/// the values are those of [`expert_hidden`] then `dsd` up to the summation
/// order of the product kernels (the blocks are multiplied in the tiles'
/// memory order, for which the gemm may pick another kernel).
fn expert_output<T: Element>(
    config: &MoeConfig,
    weights: &MoeWeights<T>,
    x_gathered: ArrayView2<T>,
    topology: &Arc<Topology>,
    live: LiveRows,
) -> Result<Array2<T>> {
    let (w1, w2) = (weights.w1.view(), weights.w2.view());
    match config.mlp {
        MlpKind::Plain => sdd_dsd(x_gathered, [w1], true, w2, topology, live, |[a], out| {
            wide(|| {
                for (o, &a) in out.iter_mut().zip(a) {
                    *o = T::from_f32(gelu(rounded::<T>(a)));
                }
            });
        }),
        MlpKind::Glu => {
            let w3 = require_w3(weights)?.view();
            sdd_dsd(
                x_gathered,
                [w1, w3],
                true,
                w2,
                topology,
                live,
                |[a, b], out| {
                    wide(|| {
                        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                            *o = T::from_f32(silu(rounded::<T>(a)) * rounded::<T>(b));
                        }
                    });
                },
            )
        }
    }
}

/// The routing and padded expert layout of one forward: everything before
/// the expert MLP.
struct Dispatch<T> {
    logits: Array2<f32>,
    routing: Routing,
    load_balancing_loss: f32,
    z_loss: f32,
    plan: ExpertPlan,
    x_gathered: Array2<T>,
}

/// Routes `x` and gathers it into the padded expert layout. Errors:
/// [`forward`]'s.
fn dispatch<T: Element>(
    config: &MoeConfig,
    weights: &MoeWeights<T>,
    x: ArrayView2<T>,
) -> Result<Dispatch<T>> {
    check_input("moe::forward", config, weights, x)?;
    let (e, k) = (config.num_experts, config.top_k);

    let logits = router_logits(x, weights.router.view());
    let routing = route(logits.view(), k, config.renormalize)?;
    let z_loss = router_z_loss(logits.view())?;
    let load_balancing_loss =
        load_balancing_loss(routing.probs.view(), routing.expert_ids.view(), e)?;

    let plan = ExpertPlan::new(routing.expert_ids.view(), e, config.ffn, config.block_size)?;
    let x_gathered = padded_gather(
        x,
        plan.indices().view(),
        plan.bins().view(),
        plan.padded_bins().view(),
        None,
        k,
    )?;
    Ok(Dispatch {
        logits,
        routing,
        load_balancing_loss,
        z_loss,
        plan,
        x_gathered,
    })
}

impl<T: Element> Dispatch<T> {
    /// Scatters the padded expert output `y` back to token order, weighted
    /// by the routing weights.
    fn combine(&self, y: ArrayView2<T>, top_k: usize) -> Result<Array2<T>> {
        padded_scatter(
            y,
            self.plan.indices().view(),
            self.plan.bins().view(),
            self.plan.padded_bins().view(),
            Some(self.routing.weights.view()),
            top_k,
        )
    }

    /// The layer's output record around `output`.
    fn output(&self, output: Array2<T>) -> MoeOutput<T> {
        MoeOutput {
            output,
            routing: self.routing.clone(),
            tokens_per_expert: self.plan.tokens_per_expert().clone(),
            load_balancing_loss: self.load_balancing_loss,
            z_loss: self.z_loss,
        }
    }
}

/// Checks the config, the weights and that `x` is a non-empty
/// `[tokens, hidden]` input of `config`; returns the number of tokens.
pub(crate) fn check_input<T: Element>(
    op: &'static str,
    config: &MoeConfig,
    weights: &MoeWeights<T>,
    x: ArrayView2<T>,
) -> Result<usize> {
    weights.check(config)?;
    let (tokens, hidden) = x.dim();
    if hidden != config.hidden {
        return Err(Error::ShapeMismatch {
            op,
            message: format!(
                "x must be [tokens, hidden] with hidden = {}, found {:?}",
                config.hidden,
                x.dim()
            ),
        });
    }
    check_nonempty(op, "the number of tokens", tokens)?;
    check_i32("tokens x hidden", product(&[tokens, hidden]))?;
    Ok(tokens)
}

/// The dMoE forward: `x` is `[tokens, hidden]`.
///
/// Router logits `x · routerᵀ` in f32, softmax top-k routing, expert
/// histogram, stable sort by expert, padded gather, the block-sparse expert
/// MLP (`sdd` with W1 (and W3), activation, `dsd` with W2) and the padded
/// scatter weighted by the routing weights. Also returns the routing, the
/// tokens per expert and both auxiliary losses.
///
/// Errors: the config's and weights' checks ([`MoeConfig::validate`],
/// [`MoeWeights::check`]), [`Error::ShapeMismatch`] when `x` is not
/// `[tokens, hidden]`, [`Error::Empty`] for zero tokens,
/// [`Error::NonFinite`] for NaN or `+inf` router logits,
/// [`Error::TooFewExperts`] for a token with fewer than `top_k` logits above
/// `-inf`,
/// [`Error::IndexOverflow`] when a size exceeds i32.
pub fn forward<T: Element>(
    config: &MoeConfig,
    weights: &MoeWeights<T>,
    x: ArrayView2<T>,
) -> Result<MoeOutput<T>> {
    let d = dispatch(config, weights, x)?;
    let (live, topology) = (Some(d.plan.live()), d.plan.topology());
    let y = expert_output(config, weights, d.x_gathered.view(), topology, live)?;
    Ok(d.output(d.combine(y.view(), config.top_k)?))
}

/// [`forward`], also returning the [`MoeSaved`] state for
/// [`crate::reference::backward::backward`]. Same errors as [`forward`].
pub fn forward_train<T: Element>(
    config: &MoeConfig,
    weights: &MoeWeights<T>,
    x: ArrayView2<T>,
) -> Result<(MoeOutput<T>, MoeSaved<T>)> {
    let d = dispatch(config, weights, x)?;
    let (live, topology) = (Some(d.plan.live()), d.plan.topology());
    let (pre_w1, pre_w3, hidden) =
        expert_hidden(config, weights, d.x_gathered.view(), topology, live)?;
    let y = dsd_live(hidden.view(), weights.w2.view(), live)?;
    let output = d.output(d.combine(y.view(), config.top_k)?);
    let saved = MoeSaved {
        config: *config,
        x: x.to_owned(),
        logits: d.logits,
        routing: d.routing,
        plan: d.plan,
        x_gathered: d.x_gathered,
        pre_w1,
        pre_w3,
        hidden,
        y,
    };
    Ok((output, saved))
}
