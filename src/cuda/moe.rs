//! The dMoE layer forward and backward on the device, composed from the
//! kernels exactly as [`crate::reference::moe`] composes the CPU ops, with no
//! host synchronisation: every buffer whose size depends on the routing is
//! sized by the bound `P <= tokens * top_k + experts * (block - 1)` and the
//! kernels read the true sizes from device memory.
//!
//! Forward: `logits = x·routerᵀ` (cuBLAS, f32 out) → [`route`] → histogram →
//! stable sort → bins, padded bins → device topology → padded gather →
//! `sdd(x_g, W1ᵀ)` (and W3) → GeLU or SiLU-gate on the blocks → `dsd(h, W2)`
//! → padded scatter weighted by the routing; the losses stay on the device.
//!
//! Backward: `dw = scatter_weight_grad(dy, y)`, `dy_g = gather(dy, w)`,
//! `dW2 = dsd(hᵀ, dy_g)`, `dh = sdd(dy_g, W2ᵀ)`, activation backward on the
//! blocks, `dW1 = dsd(da1ᵀ, x_g)` (and W3), `dx_g = dsd(da1, W1)` (+ W3),
//! `dx = scatter(dx_g)`, router backward to `dlogits`, `dRouter = dlogitsᵀ·x`,
//! `dx += dlogits·router`. No dense `[tokens, E*ffn]` intermediate anywhere.

use std::sync::Arc;

use super::activation::{gelu, gelu_backward, silu_mul, silu_mul_backward};
use super::elementwise::{add_assign, cast_from_f32};
use super::gemm::{matmul, matmul_into, GemmElement};
use super::histogram::histogram;
use super::permute::{
    inclusive_cumsum, padded_bins, padded_gather, padded_scatter, padded_scatter_weight_grad,
    sort_by_expert,
};
use super::router_grad::{load_balancing_loss, route_backward, router_z_loss};
use super::routing::{route, DeviceRouting};
use super::sparse_ops::{dsd, sdd, MmaElement};
use super::topology_build::topology;
use super::{check_block_size, CudaBackend, DeviceBlockSparse, DeviceTensor, DeviceTopology};
use crate::config::{AuxLossCoefficients, MlpKind, MoeConfig, MoeWeights};
use crate::error::{Error, Result};

/// The weights of a dMoE layer on the device (same layout as [`MoeWeights`]).
#[derive(Debug)]
pub struct DeviceMoeWeights<T> {
    /// `[num_experts, hidden]`.
    pub router: DeviceTensor<T>,
    /// `[num_experts * ffn, hidden]`.
    pub w1: DeviceTensor<T>,
    /// `[num_experts * ffn, hidden]`, GLU only.
    pub w3: Option<DeviceTensor<T>>,
    /// `[num_experts * ffn, hidden]`.
    pub w2: DeviceTensor<T>,
}

impl<T: MmaElement + GemmElement> DeviceMoeWeights<T> {
    /// Uploads host weights after checking `config` against the kernels
    /// (its block size first: [`Error::UnsupportedBlockSize`]), the weights
    /// against `config`, and that every weight is finite
    /// ([`MoeWeights::check_finite`]: [`Error::NonFinite`] naming the
    /// tensor, row and column).
    pub fn from_host(
        backend: &CudaBackend,
        config: &MoeConfig,
        weights: &MoeWeights<T>,
    ) -> Result<Self> {
        check_block_size(config.block_size)?;
        weights.check(config)?;
        weights.check_finite()?;
        let up = |m: &ndarray::Array2<T>| DeviceTensor::from_array(backend, m.view());
        Ok(DeviceMoeWeights {
            router: up(&weights.router)?,
            w1: up(&weights.w1)?,
            w3: weights.w3.as_ref().map(up).transpose()?,
            w2: up(&weights.w2)?,
        })
    }
}

/// The result of a device forward; every field stays on the device.
#[derive(Debug)]
pub struct DeviceMoeOutput<T> {
    /// `[tokens, hidden]`.
    pub output: DeviceTensor<T>,
    /// `[num_experts]` i32: assignments routed to each expert.
    pub tokens_per_expert: DeviceTensor<i32>,
    /// `[1]` f32: the load-balancing loss (unscaled).
    pub load_balancing_loss: DeviceTensor<f32>,
    /// `[1]` f32: the router z-loss (unscaled).
    pub z_loss: DeviceTensor<f32>,
}

/// What the backward needs from the forward.
#[derive(Debug)]
pub struct DeviceMoeSaved<T> {
    /// The forward's config (the backward must be given the same one).
    config: MoeConfig,
    x: DeviceTensor<T>,
    logits: DeviceTensor<f32>,
    /// The routing decision (probabilities, experts, weights).
    pub routing: DeviceRouting,
    tokens_per_expert: DeviceTensor<i32>,
    indices: DeviceTensor<i32>,
    bins: DeviceTensor<i32>,
    padded_bins: DeviceTensor<i32>,
    topology: Arc<DeviceTopology>,
    x_gathered: DeviceTensor<T>,
    a1: DeviceBlockSparse<T>,
    a3: Option<DeviceBlockSparse<T>>,
    h: DeviceBlockSparse<T>,
    y: DeviceTensor<T>,
}

/// Gradients of a device backward.
#[derive(Debug)]
pub struct DeviceMoeGradients<T> {
    /// `[tokens, hidden]`.
    pub x: DeviceTensor<T>,
    /// `[num_experts, hidden]`.
    pub router: DeviceTensor<T>,
    /// `[num_experts * ffn, hidden]`.
    pub w1: DeviceTensor<T>,
    /// `[num_experts * ffn, hidden]`, GLU only.
    pub w3: Option<DeviceTensor<T>>,
    /// `[num_experts * ffn, hidden]`.
    pub w2: DeviceTensor<T>,
}

/// Checks the config against the kernels and `x` against the config.
fn check_forward<T: MmaElement + GemmElement>(
    config: &MoeConfig,
    weights: &DeviceMoeWeights<T>,
    x: &DeviceTensor<T>,
) -> Result<usize> {
    const OP: &str = "cuda::moe::forward";
    config.validate()?;
    check_block_size(config.block_size)?;
    let rows = config.num_experts * config.ffn;
    let want = |name: &str, t: &DeviceTensor<T>, shape: [usize; 2]| {
        if t.shape() == shape {
            Ok(())
        } else {
            Err(Error::ShapeMismatch {
                op: OP,
                message: format!("{name} must be {shape:?}, found {:?}", t.shape()),
            })
        }
    };
    want(
        "router",
        &weights.router,
        [config.num_experts, config.hidden],
    )?;
    want("w1", &weights.w1, [rows, config.hidden])?;
    want("w2", &weights.w2, [rows, config.hidden])?;
    match (config.mlp, &weights.w3) {
        (MlpKind::Glu, Some(w3)) => want("w3", w3, [rows, config.hidden])?,
        (MlpKind::Plain, None) => {}
        (MlpKind::Glu, None) => {
            return Err(Error::InvalidConfig(
                "a GLU layer needs w3; pass it or use MlpKind::Plain".into(),
            ))
        }
        (MlpKind::Plain, Some(_)) => {
            return Err(Error::InvalidConfig(
                "a plain MLP layer takes no w3; drop it or use MlpKind::Glu".into(),
            ))
        }
    }
    match x.shape() {
        &[0, _] => Err(Error::Empty {
            op: OP,
            what: "the number of tokens",
        }),
        &[tokens, h] if h == config.hidden => Ok(tokens),
        other => Err(Error::ShapeMismatch {
            op: OP,
            message: format!("x must be [tokens, {}], found {other:?}", config.hidden),
        }),
    }
}

/// The dMoE forward on the device; also returns what [`backward`] needs.
/// Non-finite router logits are not detected here (that needs a host sync):
/// call `saved.routing.check_finite(backend)` where the check is wanted.
pub fn forward_train<T: MmaElement + GemmElement>(
    backend: &CudaBackend,
    config: &MoeConfig,
    weights: &DeviceMoeWeights<T>,
    x: &DeviceTensor<T>,
) -> Result<(DeviceMoeOutput<T>, DeviceMoeSaved<T>)> {
    let tokens = check_forward(config, weights, x)?;
    let (e, k) = (config.num_experts, config.top_k);

    let mut logits = DeviceTensor::<f32>::zeros(backend, &[tokens, e])?;
    matmul_into(backend, x, false, &weights.router, true, &mut logits, false)?;
    let routing = route(backend, &logits, k, config.renormalize)?;
    let tokens_per_expert = histogram(backend, &routing.expert_ids, e)?;
    let (indices, _bin_ids) = sort_by_expert(backend, &routing.expert_ids, e)?;
    let bins = inclusive_cumsum(backend, &tokens_per_expert)?;
    let padded = padded_bins(backend, &tokens_per_expert, config.block_size)?;
    let topo = topology(backend, &padded, tokens, k, config.ffn, config.block_size)?;

    let x_gathered = padded_gather(backend, x, &indices, &bins, &padded, None, k)?;
    let a1 = sdd(backend, &x_gathered, &weights.w1, true, &topo)?;
    let (a3, h) = match (&config.mlp, &weights.w3) {
        (MlpKind::Glu, Some(w3)) => {
            let a3 = sdd(backend, &x_gathered, w3, true, &topo)?;
            let h = silu_mul(backend, &a1, &a3)?;
            (Some(a3), h)
        }
        _ => (None, gelu(backend, &a1)?),
    };
    let y = dsd(backend, h.view(), &weights.w2)?;
    let output = padded_scatter(
        backend,
        &y,
        &indices,
        &bins,
        &padded,
        Some(&routing.weights),
        k,
    )?;
    let load_balancing = load_balancing_loss(backend, &routing.probs, &tokens_per_expert, k)?;
    let z_loss = router_z_loss(backend, &logits)?;

    let out = DeviceMoeOutput {
        output,
        tokens_per_expert: tokens_per_expert.try_clone(backend)?,
        load_balancing_loss: load_balancing,
        z_loss,
    };
    let saved = DeviceMoeSaved {
        config: *config,
        x: x.try_clone(backend)?,
        logits,
        routing,
        tokens_per_expert,
        indices,
        bins,
        padded_bins: padded,
        topology: topo,
        x_gathered,
        a1,
        a3,
        h,
        y,
    };
    Ok((out, saved))
}

/// The dMoE backward on the device: gradients of
/// `<grad_output, output> + aux.load_balancing * LBL + aux.z_loss * Z`.
pub fn backward<T: MmaElement + GemmElement>(
    backend: &CudaBackend,
    config: &MoeConfig,
    weights: &DeviceMoeWeights<T>,
    saved: &DeviceMoeSaved<T>,
    grad_output: &DeviceTensor<T>,
    aux: AuxLossCoefficients,
) -> Result<DeviceMoeGradients<T>> {
    let tokens = check_forward(config, weights, &saved.x)?;
    if saved.config != *config {
        return Err(Error::InvalidConfig(format!(
            "the saved state comes from a forward with {:?}, the backward was given {config:?}; \
             pass the state of a forward of this layer",
            saved.config
        )));
    }
    if grad_output.shape() != [tokens, config.hidden] {
        return Err(Error::ShapeMismatch {
            op: "cuda::moe::backward",
            message: format!(
                "grad_output must be the output's shape [{tokens}, {}], found {:?}",
                config.hidden,
                grad_output.shape()
            ),
        });
    }
    let k = config.top_k;
    let s = saved;

    let grad_weights = padded_scatter_weight_grad(
        backend,
        grad_output,
        &s.y,
        &s.indices,
        &s.bins,
        &s.padded_bins,
        k,
    )?;
    let dy = padded_gather(
        backend,
        grad_output,
        &s.indices,
        &s.bins,
        &s.padded_bins,
        Some(&s.routing.weights),
        k,
    )?;
    let w2 = dsd(backend, s.h.t(), &dy)?;
    let dh = sdd(backend, &dy, &weights.w2, true, &s.topology)?;
    let (da1, da3) = match (&s.a3, &weights.w3) {
        (Some(a3), Some(_)) => {
            let (da1, da3) = silu_mul_backward(backend, &dh, &s.a1, a3)?;
            (da1, Some(da3))
        }
        _ => (gelu_backward(backend, &dh, &s.a1)?, None),
    };
    let w1 = dsd(backend, da1.t(), &s.x_gathered)?;
    let mut dx_gathered = dsd(backend, da1.view(), &weights.w1)?;
    let w3 = match (&da3, &weights.w3) {
        (Some(da3), Some(w3)) => {
            add_assign(backend, &mut dx_gathered, &dsd(backend, da3.view(), w3)?)?;
            Some(dsd(backend, da3.t(), &s.x_gathered)?)
        }
        _ => None,
    };
    let mut x = padded_scatter(
        backend,
        &dx_gathered,
        &s.indices,
        &s.bins,
        &s.padded_bins,
        None,
        k,
    )?;

    let dlogits = route_backward(
        backend,
        &s.logits,
        &s.routing,
        &grad_weights,
        &s.tokens_per_expert,
        config.renormalize,
        aux,
    )?;
    let dlogits = cast_from_f32::<T>(backend, &dlogits)?;
    let router = matmul(backend, &dlogits, true, &s.x, false)?;
    matmul_into(
        backend,
        &dlogits,
        false,
        &weights.router,
        false,
        &mut x,
        true,
    )?;
    Ok(DeviceMoeGradients {
        x,
        router,
        w1,
        w3,
        w2,
    })
}
