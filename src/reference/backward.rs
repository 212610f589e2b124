//! The dMoE layer backward on the CPU, composed from the reference ops exactly
//! as the GPU path composes its kernels. From the forward's [`MoeSaved`] state
//! and `dout = dL/d output` (`[tokens, hidden]`):
//!
//! 1. `d_routing_weights = padded_scatter_weight_grad(dout, y)` (f32,
//!    `[tokens, top_k]`);
//! 2. `dy = padded_gather(dout, weights = routing weights)` (`[padded, hidden]`);
//! 3. `dW2 = dsd(hᵀ, dy)`;
//! 4. `dh = sdd(dy, W2, trans_b = true, topology)`;
//! 5. activation backward on the topology's blocks: GeLU gives `d(a1)`,
//!    SiLU-gate gives `d(a1)` and `d(a3)` (`a1 = x_g · W1ᵀ`, `a3 = x_g · W3ᵀ`);
//! 6. `dW1 = dsd(d(a1)ᵀ, x_g)`, and `dW3 = dsd(d(a3)ᵀ, x_g)` for GLU;
//! 7. `dx_g = dsd(d(a1), W1)` (`+ dsd(d(a3), W3)` for GLU, the two summed in
//!    f32 and rounded once, as an elementwise add kernel does);
//! 8. `dx = padded_scatter(dx_g, weights = None)`;
//! 9. `dlogits = route_backward(logits, routing, d_routing_weights, ...)`
//!    with the auxiliary-loss coefficients (f32);
//! 10. `dlogits` rounded to `T` (cuBLAS takes operands of one type), then
//!     `d_router = dlogitsᵀ · x` and `dx += dlogits · router` (accumulated in
//!     f32 onto the stored `dx`, rounded once).
//!
//! Every intermediate a kernel stores is rounded to `T`; every product
//! accumulates in f32. No dense `[tokens, experts * ffn]` matrix is built:
//! the expert MLP's gradients live on the topology's blocks only.

use std::sync::Arc;

use ndarray::{Array2, ArrayView2, Zip};

use crate::config::{AuxLossCoefficients, MlpKind, MoeConfig, MoeWeights};
use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::reference::activation::{gelu_grad, silu, silu_grad};
use crate::reference::gemm;
use crate::reference::moe::{require_w3, MoeSaved};
use crate::reference::permute::{padded_gather, padded_scatter, padded_scatter_weight_grad};
use crate::reference::router_grad::route_backward;
use crate::reference::sparse_ops::{dsd, sdd};
use crate::sparse::BlockSparse;

/// The gradients of a dMoE layer's loss, each shaped as its tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeGradients<T> {
    /// `[tokens, hidden]`: with respect to the input.
    pub x: Array2<T>,
    /// `[num_experts, hidden]`: with respect to the router.
    pub router: Array2<T>,
    /// `[num_experts * ffn, hidden]`: with respect to W1.
    pub w1: Array2<T>,
    /// `[num_experts * ffn, hidden]`: with respect to W3; GLU only.
    pub w3: Option<Array2<T>>,
    /// `[num_experts * ffn, hidden]`: with respect to W2.
    pub w2: Array2<T>,
}

/// The backward of the dMoE layer (see the module documentation for its
/// steps): the gradients of `L = <grad_output, output> + aux.load_balancing *
/// LBL + aux.z_loss * Z` with respect to the input and every weight, where
/// `output`, `LBL` and `Z` are the forward's output and auxiliary losses.
///
/// `saved` comes from [`crate::reference::moe::forward_train`] with the same
/// `config` and `weights`; `grad_output` is `[tokens, hidden]`.
///
/// Errors: the config's and weights' checks, [`Error::InvalidConfig`] when
/// `saved` comes from a forward with another configuration,
/// [`Error::ShapeMismatch`] when `grad_output` is not `[tokens, hidden]` of
/// the saved forward, and the errors of the ops it composes.
pub fn backward<T: Element>(
    config: &MoeConfig,
    weights: &MoeWeights<T>,
    saved: &MoeSaved<T>,
    grad_output: ArrayView2<T>,
    aux: AuxLossCoefficients,
) -> Result<MoeGradients<T>> {
    const OP: &str = "moe::backward";
    weights.check(config)?;
    if saved.config() != config {
        return Err(Error::InvalidConfig(format!(
            "the saved state comes from a forward with {:?}, the backward was given {config:?}; \
             pass the state of a forward of this layer",
            saved.config()
        )));
    }
    if grad_output.dim() != saved.x().dim() {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!(
                "grad_output must be [tokens, hidden] = {:?} like the forward's output, found {:?}",
                saved.x().dim(),
                grad_output.dim()
            ),
        });
    }
    let k = config.top_k;
    let routing = saved.routing();
    let (indices, bins, padded) = (
        saved.indices().view(),
        saved.bins().view(),
        saved.padded_bins().view(),
    );

    let d_routing_weights =
        padded_scatter_weight_grad(grad_output, saved.y().view(), indices, bins, padded, k)?;
    let dy = padded_gather(
        grad_output,
        indices,
        bins,
        padded,
        Some(routing.weights.view()),
        k,
    )?;
    let w2 = dsd(saved.hidden().t(), dy.view())?;
    let dh = sdd(dy.view(), weights.w2.view(), true, saved.topology())?;

    let x_g = saved.x_gathered().view();
    let (w1, w3, dx_g) = match config.mlp {
        MlpKind::Plain => {
            let da1 = gelu_backward(&dh, saved.pre_w1())?;
            let dx_g = dsd(da1.view(), weights.w1.view())?;
            (dsd(da1.t(), x_g)?, None, dx_g)
        }
        MlpKind::Glu => {
            let pre_w3 = saved.pre_w3().ok_or_else(|| {
                Error::InvalidConfig(
                    "the saved state of a GLU layer has no W3 pre-activation; \
                     pass the state of a forward of this layer"
                        .into(),
                )
            })?;
            let (da1, da3) = silu_mul_backward(&dh, saved.pre_w1(), pre_w3)?;
            let dx_g1 = dsd(da1.view(), weights.w1.view())?;
            let dx_g3 = dsd(da3.view(), require_w3(weights)?.view())?;
            let dx_g = Zip::from(&dx_g1)
                .and(&dx_g3)
                .map_collect(|&a, &b| T::from_f32(a.to_f32() + b.to_f32()));
            (dsd(da1.t(), x_g)?, Some(dsd(da3.t(), x_g)?), dx_g)
        }
    };
    let dx = padded_scatter(dx_g.view(), indices, bins, padded, None, k)?;

    let dlogits = route_backward(
        saved.logits().view(),
        routing,
        d_routing_weights.view(),
        config.renormalize,
        aux,
    )?
    .mapv(T::from_f32);
    let router = gemm::matmul_t(dlogits.t(), saved.x().view()).mapv(T::from_f32);
    let dx_router = gemm::matmul_t(dlogits.view(), weights.router.view());
    let x = Zip::from(&dx)
        .and(&dx_router)
        .map_collect(|&a, &b| T::from_f32(a.to_f32() + b));
    Ok(MoeGradients {
        x,
        router,
        w1,
        w3,
        w2,
    })
}

/// `grad_y ⊙ gelu'(x)` on the blocks (both on the saved topology), rounded to `T`.
fn gelu_backward<T: Element>(
    grad_y: &BlockSparse<T>,
    x: &BlockSparse<T>,
) -> Result<BlockSparse<T>> {
    let data = grad_y
        .data()
        .iter()
        .zip(x.data())
        .map(|(&g, &a)| T::from_f32(g.to_f32() * gelu_grad(a.to_f32())))
        .collect();
    BlockSparse::new(Arc::clone(grad_y.topology()), data)
}

/// Gradients of `silu(gate) ⊙ up` on the blocks (all on the saved
/// topology): `(grad_gate, grad_up)`, each rounded to `T`.
fn silu_mul_backward<T: Element>(
    grad_y: &BlockSparse<T>,
    gate: &BlockSparse<T>,
    up: &BlockSparse<T>,
) -> Result<(BlockSparse<T>, BlockSparse<T>)> {
    let n = grad_y.data().len();
    let (mut d_gate, mut d_up) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for ((&g, &a), &b) in grad_y.data().iter().zip(gate.data()).zip(up.data()) {
        let (g, a, b) = (g.to_f32(), a.to_f32(), b.to_f32());
        d_gate.push(T::from_f32(g * b * silu_grad(a)));
        d_up.push(T::from_f32(g * silu(a)));
    }
    let topology = grad_y.topology();
    Ok((
        BlockSparse::new(Arc::clone(topology), d_gate)?,
        BlockSparse::new(Arc::clone(topology), d_up)?,
    ))
}
