//! The ModuleFormer (MoLM) MoE layers on the device, forward only: the
//! routers ("mlp" and "linear" gates), the MLP MoE and the mixture of
//! attention heads with stick-breaking attention over a KV cache. Composed
//! from [`super::expert_map`], [`super::stick_breaking`], the router kernel
//! and cuBLAS, with no host synchronisation.
//!
//! Layouts are the checkpoint's: the gates' `nn.Linear` weights `[out, in]`
//! (used as `x · Wᵀ`), the expert weights stacked `[experts, in, out]` and
//! passed flattened as `[experts * in, out]` (used as `x · W`), `k_proj` /
//! `v_proj` `[att_hidden, hidden]` with a bias.
//!
//! Rounding points: the router's hidden layer is an f32 product, plus bias
//! and exact GeLU in f32, rounded once to `T`; the router logits are f32;
//! softmax and top-k in f32 with **no renormalisation** of the k gates; the
//! expert products round as in [`super::expert_map`]; the MLP activation
//! (`gelu_new`, tanh) rounds once; keys and values are rounded once after
//! their bias.

use cudarc::driver::PushKernelArg;

use super::elementwise::gelu_in_place;
use super::expert_map::{map, plan, reduce};
use super::gemm::{matmul, matmul_into};
use super::kernels::{launch_1d, MOA};
use super::lm::{add_bias, write_kv};
use super::routing::{route, DeviceRouting};
use super::sparse_ops::MmaElement;
use super::stick_breaking::stick_breaking_cached;
use super::{CudaBackend, DeviceTensor};
use crate::error::{check_i32, Error, Result};

/// Threads per block of `dl_moa_bias_gelu_erf_*` (`kThreads`).
const THREADS: u32 = 256;

/// A MoE router (IBM's `top_k_gating`).
#[derive(Debug)]
pub enum DeviceGate<T> {
    /// `gate_type: "mlp"`: Linear(hidden → gating, bias) → exact GeLU →
    /// Linear(gating → experts, no bias).
    Mlp {
        /// `[gating, hidden]`.
        w1: DeviceTensor<T>,
        /// `[gating]`.
        b1: DeviceTensor<T>,
        /// `[experts, gating]`.
        w2: DeviceTensor<T>,
    },
    /// `gate_type: "linear"`: one Linear(hidden → experts, no bias).
    Linear {
        /// `[experts, hidden]`.
        w: DeviceTensor<T>,
    },
}

impl<T: MmaElement + super::gemm::GemmElement> DeviceGate<T> {
    /// The number of experts the gate scores.
    pub fn num_experts(&self) -> usize {
        match self {
            DeviceGate::Mlp { w2, .. } => w2.shape()[0],
            DeviceGate::Linear { w } => w.shape()[0],
        }
    }

    /// The router logits `[tokens, experts]` f32 of `x` `[tokens, hidden]`.
    ///
    /// Errors: [`Error::ShapeMismatch`] for weights that do not chain with
    /// `x`, and those of the products.
    pub fn logits(&self, backend: &CudaBackend, x: &DeviceTensor<T>) -> Result<DeviceTensor<f32>> {
        let tokens = x.shape()[0];
        let last = match self {
            DeviceGate::Linear { w } => w,
            DeviceGate::Mlp { w1, b1, w2 } => {
                let gating = w1.shape()[0];
                if b1.shape() != [gating] {
                    return Err(Error::ShapeMismatch {
                        op: "moa::gate",
                        message: format!(
                            "the gate's bias must be [gating = {gating}], found {:?}",
                            b1.shape()
                        ),
                    });
                }
                let mut pre = DeviceTensor::<f32>::zeros(backend, &[tokens, gating])?;
                matmul_into(backend, x, false, w1, true, &mut pre, false)?;
                let hidden = bias_gelu_erf(backend, &pre, b1)?;
                let mut logits = DeviceTensor::<f32>::zeros(backend, &[tokens, w2.shape()[0]])?;
                matmul_into(backend, &hidden, false, w2, true, &mut logits, false)?;
                return Ok(logits);
            }
        };
        let mut logits = DeviceTensor::<f32>::zeros(backend, &[tokens, last.shape()[0]])?;
        matmul_into(backend, x, false, last, true, &mut logits, false)?;
        Ok(logits)
    }

    /// Softmax over the experts and top `k` of the probabilities, not
    /// renormalised: `weights` are the chosen experts' probabilities.
    ///
    /// Errors: those of [`DeviceGate::logits`] and [`route`].
    pub fn route(
        &self,
        backend: &CudaBackend,
        x: &DeviceTensor<T>,
        k: usize,
    ) -> Result<DeviceRouting> {
        route(backend, &self.logits(backend, x)?, k, false)
    }
}

/// `gelu_erf(x + bias)` of an f32 `x` `[rows, d]` and a bias `[d]`, rounded
/// once to `T`.
fn bias_gelu_erf<T: MmaElement>(
    backend: &CudaBackend,
    x: &DeviceTensor<f32>,
    bias: &DeviceTensor<T>,
) -> Result<DeviceTensor<T>> {
    let d = bias.len();
    let n = x.len();
    check_i32("the gate's hidden elements", n as u128)?;
    let mut out = DeviceTensor::<T>::zeros(backend, x.shape())?;
    let func = backend.function(MOA, &format!("dl_moa_bias_gelu_erf_{}", T::SUFFIX))?;
    let (n_i, d_i) = (n as i32, d as i32);
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(x.slice())
        .arg(bias.slice())
        .arg(out.slice_mut())
        .arg(&n_i)
        .arg(&d_i);
    // SAFETY: dl_moa_bias_gelu_erf_T(const float* x, const T* bias, T* out,
    // i32 n, i32 d) runs one thread per element i < n of x and out (both n
    // elements, n within i32) and reads bias[i % d] (bias holds d values; x's
    // last dimension is d, checked by the caller's shapes).
    unsafe { launch.launch(launch_1d(n.div_ceil(THREADS as usize), THREADS, 0)) }?;
    Ok(out)
}

/// The MLP MoE (IBM's `mlpf`): `Σ_s g[t, s] · gelu_new(x[t] · W[e]) · V[e]`
/// over the token's top `k` experts, `x` `[tokens, hidden]`, `w`
/// `[experts * hidden, ffd]`, `v` `[experts * ffd, hidden]`.
///
/// Errors: those of the gate, [`plan`], [`map`] and [`reduce`].
pub fn mlp_moe<T: MmaElement + super::gemm::GemmElement>(
    backend: &CudaBackend,
    gate: &DeviceGate<T>,
    w: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    x: &DeviceTensor<T>,
    k: usize,
    block_size: usize,
) -> Result<DeviceTensor<T>> {
    let routing = gate.route(backend, x, k)?;
    let p = plan(backend, &routing.expert_ids, gate.num_experts(), block_size)?;
    let mut h = map(backend, &p, x, w)?;
    gelu_in_place(backend, &mut h.slice_mut().slice_mut(..))?;
    reduce(backend, &p, &h, v, &routing.weights)
}

/// The weights of a mixture-of-attention layer on the device.
#[derive(Debug)]
pub struct DeviceMoaWeights<T> {
    /// The router over the attention experts.
    pub gate: DeviceGate<T>,
    /// `[experts * hidden, att_hidden]`: the experts' query projections.
    pub q: DeviceTensor<T>,
    /// `[experts * att_hidden, hidden]`: the experts' output projections.
    pub o: DeviceTensor<T>,
    /// `k_proj` (`[att_hidden, hidden]`, bias `[att_hidden]`), or `None` for
    /// the identity (att_hidden == hidden and one head).
    pub k: Option<(DeviceTensor<T>, DeviceTensor<T>)>,
    /// `v_proj`, like `k`.
    pub v: Option<(DeviceTensor<T>, DeviceTensor<T>)>,
}

/// A KV cache of one mixture-of-attention layer: `[batch * tmax, att_hidden]`
/// keys and values, sequence `b`'s rows `b * tmax ..`, `len` of them filled.
#[derive(Debug)]
pub struct DeviceMoaCache<T> {
    /// Keys.
    pub k: DeviceTensor<T>,
    /// Values.
    pub v: DeviceTensor<T>,
    /// Filled rows per sequence.
    pub len: usize,
}

impl<T: MmaElement> DeviceMoaCache<T> {
    /// An empty cache of `tmax` positions for `batch` sequences.
    ///
    /// Errors: those of the allocation.
    pub fn new(
        backend: &CudaBackend,
        batch: usize,
        tmax: usize,
        att_hidden: usize,
    ) -> Result<Self> {
        Ok(DeviceMoaCache {
            k: DeviceTensor::zeros(backend, &[batch * tmax, att_hidden])?,
            v: DeviceTensor::zeros(backend, &[batch * tmax, att_hidden])?,
            len: 0,
        })
    }
}

/// `x · Wᵀ + b`, or `x` itself for the identity projection.
fn project<T: MmaElement + super::gemm::GemmElement>(
    backend: &CudaBackend,
    x: &DeviceTensor<T>,
    proj: &Option<(DeviceTensor<T>, DeviceTensor<T>)>,
) -> Result<DeviceTensor<T>> {
    match proj {
        Some((w, b)) => add_bias(backend, &matmul(backend, x, false, w, true)?, b),
        None => x.try_clone(backend),
    }
}

/// The mixture of attention heads (IBM's `ModuleFormerAttention`) on `x`
/// `[batch * tq, hidden]` (the next `tq` positions of each of `batch`
/// sequences): the router picks `k` experts per token; their queries (each
/// `n_head` heads of `att_hidden / n_head`) attend by stick-breaking the
/// shared keys and values of the cache and of these positions (written into
/// `cache` at `cache.len`, which then grows by `tq`); each slot's output goes
/// through its expert's output projection, times its gate, summed over the
/// slots. Returns `[batch * tq, hidden]`.
///
/// Errors: [`Error::ShapeMismatch`] / [`Error::InvalidConfig`] for shapes
/// that do not fit (`att_hidden` not a multiple of `n_head`, a full cache),
/// and those of the ops composed.
#[allow(clippy::too_many_arguments)]
pub fn attention<T: MmaElement + super::gemm::GemmElement>(
    backend: &CudaBackend,
    weights: &DeviceMoaWeights<T>,
    x: &DeviceTensor<T>,
    cache: &mut DeviceMoaCache<T>,
    batch: usize,
    n_head: usize,
    k: usize,
    block_size: usize,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "moa::attention";
    let att = weights.q.shape().get(1).copied().unwrap_or(0);
    if n_head == 0 || att % n_head != 0 {
        return Err(Error::InvalidConfig(format!(
            "att_hidden ({att}) must be a positive multiple of n_head ({n_head})"
        )));
    }
    let rows = x.shape()[0];
    if batch == 0 || !rows.is_multiple_of(batch) {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!("x has {rows} rows, not a multiple of the batch {batch}"),
        });
    }
    let tq = rows / batch;
    let routing = weights.gate.route(backend, x, k)?;
    let p = plan(
        backend,
        &routing.expert_ids,
        weights.gate.num_experts(),
        block_size,
    )?;
    let q = map(backend, &p, x, &weights.q)?.reshape(&[rows, k * att])?;
    let keys = project(backend, x, &weights.k)?;
    let values = project(backend, x, &weights.v)?;
    write_kv(backend, &mut cache.k, &keys, cache.len, batch)?;
    write_kv(backend, &mut cache.v, &values, cache.len, batch)?;
    let kv_len = cache.len + tq;
    let y = stick_breaking_cached(
        backend,
        &q,
        &cache.k,
        &cache.v,
        kv_len,
        batch,
        n_head,
        att / n_head,
    )?
    .reshape(&[rows * k, att])?;
    cache.len = kv_len;
    reduce(backend, &p, &y, &weights.o, &routing.weights)
}
