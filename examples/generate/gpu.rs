//! The language model on a CUDA device: the host [`Model`]'s weights
//! uploaded once, dense projections through cuBLAS, attention, norms and
//! RoPE through `dropless::cuda::lm`, every MoE layer through
//! `dropless::cuda::moe::forward_train`, a device KV cache, and greedy
//! decoding (`device.rs`) whose argmax runs on the device.

use std::sync::Arc;

use dropless::config::{MoeConfig, MoeWeights};
use dropless::cuda::gemm::{matmul, matmul_into};
use dropless::cuda::lm::{
    add, add_bias, attention_cached, clamp, embedding, rms_norm, rope, sigmoid_scale, silu_mul,
    write_kv,
};
use dropless::cuda::moe::{forward_train, DeviceMoeWeights};
use dropless::cuda::{CudaBackend, DeviceTensor};
use dropless::topology::DEFAULT_BLOCK_SIZE;

use crate::config::{ModelConfig, QkNorm};
use crate::device::{matrix, vector, CacheFill, DeviceModel, GpuElement};
use crate::error::{ModelError, Result};
use crate::model::{Attention, DenseMlp, Ffn, Layer, Linear, Model, MoeFfn, SharedExpert};

/// The block size of the GPU MoE kernels.
const GPU_BLOCK_SIZE: usize = DEFAULT_BLOCK_SIZE;

/// Checks that `config` fits the GPU kernels: the expert FFN size must be a
/// multiple of the block size and the hidden size a multiple of 8.
pub fn check_supported(config: &ModelConfig) -> Result<()> {
    if !config.sparse_layers.iter().any(|&s| s) {
        return Ok(());
    }
    if config.moe_ffn == 0 || !config.moe_ffn.is_multiple_of(GPU_BLOCK_SIZE) {
        return Err(ModelError::config(
            config.moe_ffn_field(),
            format!(
                "the GPU MoE kernels need the expert FFN size to be a multiple of their block size {GPU_BLOCK_SIZE}, found {}; \
                 this model runs on the CPU only (so do the tiny committed test fixtures, ffn 32): use --device cpu",
                config.moe_ffn
            ),
        ));
    }
    if !config.hidden_size.is_multiple_of(8) {
        return Err(ModelError::config(
            "hidden_size",
            format!(
                "the GPU MoE kernels need a multiple of 8, found {}; this model runs on the CPU only: use --device cpu",
                config.hidden_size
            ),
        ));
    }
    Ok(())
}

/// A linear layer on the device (`weight` is `[out, in]`).
struct GpuLinear<T> {
    weight: DeviceTensor<T>,
    bias: Option<DeviceTensor<T>>,
}

impl<T: GpuElement> GpuLinear<T> {
    fn upload(backend: &CudaBackend, host: Linear<T>) -> Result<Self> {
        Ok(GpuLinear {
            weight: matrix(backend, host.weight)?,
            bias: host.bias.map(|b| vector(backend, b)).transpose()?,
        })
    }

    /// `x · weightᵀ (+ bias)`.
    fn forward(&self, backend: &CudaBackend, x: &DeviceTensor<T>) -> Result<DeviceTensor<T>> {
        let y = matmul(backend, x, false, &self.weight, true)?;
        Ok(match &self.bias {
            Some(bias) => add_bias(backend, &y, bias)?,
            None => y,
        })
    }
}

/// A dense GLU MLP on the device: `down(silu(gate(x)) ⊙ up(x))`.
struct GpuMlp<T> {
    gate: DeviceTensor<T>,
    up: DeviceTensor<T>,
    down: DeviceTensor<T>,
}

impl<T: GpuElement> GpuMlp<T> {
    fn upload(backend: &CudaBackend, host: DenseMlp<T>) -> Result<Self> {
        Ok(GpuMlp {
            gate: matrix(backend, host.gate)?,
            up: matrix(backend, host.up)?,
            down: matrix(backend, host.down)?,
        })
    }

    fn forward(&self, backend: &CudaBackend, x: &DeviceTensor<T>) -> Result<DeviceTensor<T>> {
        let g = matmul(backend, x, false, &self.gate, true)?;
        let u = matmul(backend, x, false, &self.up, true)?;
        let h = silu_mul(backend, &g, &u)?;
        Ok(matmul(backend, &h, false, &self.down, true)?)
    }
}

/// Qwen2-MoE's shared expert and its sigmoid gate (`[1, hidden]`).
struct GpuShared<T> {
    mlp: GpuMlp<T>,
    gate: DeviceTensor<T>,
}

/// A dropless MoE layer on the device (block size 128).
struct GpuMoe<T> {
    config: MoeConfig,
    weights: DeviceMoeWeights<T>,
    shared: Option<GpuShared<T>>,
}

/// The feed-forward block of a layer on the device.
enum GpuFfn<T> {
    /// A dropless MoE layer.
    Moe(Box<GpuMoe<T>>),
    /// A dense MLP layer.
    Dense(Box<GpuMlp<T>>),
}

impl<T: GpuElement> GpuFfn<T> {
    fn upload(backend: &CudaBackend, host: Ffn<T>) -> Result<Self> {
        match host {
            Ffn::Dense(mlp) => Ok(GpuFfn::Dense(Box::new(GpuMlp::upload(backend, mlp)?))),
            Ffn::Moe(layer) => {
                let MoeFfn {
                    config,
                    weights,
                    shared,
                } = *layer;
                let config = MoeConfig {
                    block_size: GPU_BLOCK_SIZE,
                    ..config
                };
                weights.check(&config)?;
                let MoeWeights { router, w1, w3, w2 } = weights;
                let weights = DeviceMoeWeights {
                    router: matrix(backend, router)?,
                    w1: matrix(backend, w1)?,
                    w3: w3.map(|w| matrix(backend, w)).transpose()?,
                    w2: matrix(backend, w2)?,
                };
                let shared = match shared {
                    Some(SharedExpert { mlp, gate }) => Some(GpuShared {
                        mlp: GpuMlp::upload(backend, mlp)?,
                        gate: matrix(backend, gate)?,
                    }),
                    None => None,
                };
                Ok(GpuFfn::Moe(Box::new(GpuMoe {
                    config,
                    weights,
                    shared,
                })))
            }
        }
    }

    fn forward(&self, backend: &CudaBackend, x: &DeviceTensor<T>) -> Result<DeviceTensor<T>> {
        match self {
            GpuFfn::Dense(mlp) => mlp.forward(backend, x),
            GpuFfn::Moe(layer) => {
                let (out, _saved) = forward_train(backend, &layer.config, &layer.weights, x)?;
                let Some(shared) = &layer.shared else {
                    return Ok(out.output);
                };
                let s = shared.mlp.forward(backend, x)?;
                let gate = matmul(backend, x, false, &shared.gate, true)?;
                let gated = sigmoid_scale(backend, &s, &gate)?;
                Ok(add(backend, &out.output, &gated)?)
            }
        }
    }
}

/// One decoder layer on the device.
struct GpuLayer<T> {
    input_norm: DeviceTensor<T>,
    q: GpuLinear<T>,
    k: GpuLinear<T>,
    v: GpuLinear<T>,
    o: GpuLinear<T>,
    q_norm: Option<DeviceTensor<T>>,
    k_norm: Option<DeviceTensor<T>>,
    post_norm: DeviceTensor<T>,
    ffn: GpuFfn<T>,
}

impl<T: GpuElement> GpuLayer<T> {
    fn upload(backend: &CudaBackend, host: Layer<T>) -> Result<Self> {
        let Layer {
            input_norm,
            attention,
            post_norm,
            ffn,
        } = host;
        let Attention {
            q,
            k,
            v,
            o,
            q_norm,
            k_norm,
        } = attention;
        Ok(GpuLayer {
            input_norm: vector(backend, input_norm)?,
            q: GpuLinear::upload(backend, q)?,
            k: GpuLinear::upload(backend, k)?,
            v: GpuLinear::upload(backend, v)?,
            o: GpuLinear::upload(backend, o)?,
            q_norm: q_norm.map(|w| vector(backend, w)).transpose()?,
            k_norm: k_norm.map(|w| vector(backend, w)).transpose()?,
            post_norm: vector(backend, post_norm)?,
            ffn: GpuFfn::upload(backend, ffn)?,
        })
    }
}

/// The keys and values of the tokens seen so far, per layer, on the device:
/// `[batch * capacity, kv_heads * head_dim]` each, sequence `b` in rows
/// `b * capacity ..`, keys after RoPE.
pub struct GpuKvCache<T> {
    layers: Vec<(DeviceTensor<T>, DeviceTensor<T>)>,
    fill: CacheFill,
}

impl<T: GpuElement> GpuKvCache<T> {
    /// An empty cache for `batch` sequences of up to `capacity` tokens each.
    pub fn new(model: &GpuModel<T>, batch: usize, capacity: usize) -> Result<Self> {
        let fill = CacheFill::new(batch, capacity)?;
        let c = &model.config;
        let shape = [batch * capacity, c.num_kv_heads * c.head_dim];
        let layers = (0..c.num_layers)
            .map(|_| {
                Ok((
                    DeviceTensor::zeros(&model.backend, &shape)?,
                    DeviceTensor::zeros(&model.backend, &shape)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(GpuKvCache { layers, fill })
    }
}

/// A decoder-only MoE language model on a CUDA device, with weights of type
/// `T` (bf16 or f16).
pub struct GpuModel<T> {
    backend: Arc<CudaBackend>,
    /// The configuration it was built from.
    pub config: ModelConfig,
    embed: DeviceTensor<T>,
    layers: Vec<GpuLayer<T>>,
    norm: DeviceTensor<T>,
    /// `None` when tied to the embedding table.
    lm_head: Option<DeviceTensor<T>>,
}

impl<T: GpuElement> GpuModel<T> {
    /// Uploads the weights of `model`, consuming it: each host array is
    /// dropped as soon as it is on the device, so the host never holds a
    /// second copy of the weights.
    pub fn upload(backend: Arc<CudaBackend>, model: Model<T>) -> Result<Self> {
        check_supported(&model.config)?;
        let Model {
            config,
            embed,
            layers,
            norm,
            lm_head,
        } = model;
        let b = &*backend;
        let layers = layers
            .into_iter()
            .map(|layer| GpuLayer::upload(b, layer))
            .collect::<Result<_>>()?;
        let embed = matrix(b, embed)?;
        let norm = vector(b, norm)?;
        let lm_head = lm_head.map(|w| matrix(b, w)).transpose()?;
        Ok(GpuModel {
            backend,
            config,
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// RMSNorm of q or k per the family: per head or over the whole projection.
    fn qk_norm(
        &self,
        x: DeviceTensor<T>,
        weight: Option<&DeviceTensor<T>>,
    ) -> Result<DeviceTensor<T>> {
        let (b, c) = (&*self.backend, &self.config);
        match (c.qk_norm, weight) {
            (QkNorm::PerHead, Some(w)) => {
                let shape = x.shape().to_vec();
                let per_head = x.reshape(&[shape[0] * shape[1] / c.head_dim, c.head_dim])?;
                Ok(rms_norm(b, &per_head, w, c.rms_norm_eps)?.reshape(&shape)?)
            }
            (QkNorm::Whole, Some(w)) => Ok(rms_norm(b, &x, w, c.rms_norm_eps)?),
            _ => Ok(x),
        }
    }

    /// The attention block of `layer` on `x` (`[batch * tq, hidden]`): the
    /// new keys and values go into the cache at `cache.len`, the queries
    /// attend to every cached token.
    fn attention(
        &self,
        layer: &GpuLayer<T>,
        cache: &mut (DeviceTensor<T>, DeviceTensor<T>),
        x: &DeviceTensor<T>,
        positions: &DeviceTensor<i32>,
        past: usize,
        batch: usize,
    ) -> Result<DeviceTensor<T>> {
        let (b, c) = (&*self.backend, &self.config);
        let mut q = self.qk_norm(layer.q.forward(b, x)?, layer.q_norm.as_ref())?;
        let mut k = self.qk_norm(layer.k.forward(b, x)?, layer.k_norm.as_ref())?;
        let mut v = layer.v.forward(b, x)?;
        if let Some(clip) = c.clip_qkv {
            q = clamp(b, &q, clip)?;
            k = clamp(b, &k, clip)?;
            v = clamp(b, &v, clip)?;
        }
        let q = rope(b, &q, positions, c.head_dim, c.rope_theta)?;
        let k = rope(b, &k, positions, c.head_dim, c.rope_theta)?;
        write_kv(b, &mut cache.0, &k, past, batch)?;
        write_kv(b, &mut cache.1, &v, past, batch)?;
        let tq = x.shape()[0] / batch;
        let out = attention_cached(
            b,
            &q,
            &cache.0,
            &cache.1,
            past + tq,
            batch,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
        )?;
        layer.o.forward(b, &out)
    }
}

impl<T: GpuElement> DeviceModel<T> for GpuModel<T> {
    type Cache = GpuKvCache<T>;

    fn backend(&self) -> &CudaBackend {
        &self.backend
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn new_cache(&self, batch: usize, capacity: usize) -> Result<GpuKvCache<T>> {
        GpuKvCache::new(self, batch, capacity)
    }

    fn hidden(
        &self,
        ids: &DeviceTensor<i32>,
        batch: usize,
        tq: usize,
        cache: &mut GpuKvCache<T>,
    ) -> Result<DeviceTensor<T>> {
        let (b, c) = (&*self.backend, &self.config);
        let past = cache.fill.room_for(batch, tq)?;
        if let Some(window) = c.sliding_window.filter(|&w| past + tq > w) {
            return Err(ModelError::config(
                "sliding_window",
                format!("{} tokens exceed the attention window {window}, which this example does not implement; use shorter sequences", past + tq),
            ));
        }
        let positions: Vec<i32> = (0..batch)
            .flat_map(|_| past..past + tq)
            .map(|p| {
                i32::try_from(p)
                    .map_err(|_| ModelError::Input(format!("position {p} exceeds the i32 range")))
            })
            .collect::<Result<_>>()?;
        let positions = DeviceTensor::from_host(b, &[positions.len()], &positions)?;
        let mut x = embedding(b, &self.embed, ids)?;
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = rms_norm(b, &x, &layer.input_norm, c.rms_norm_eps)?;
            let a = self.attention(layer, kv, &h, &positions, past, batch)?;
            x = add(b, &x, &a)?;
            let h = rms_norm(b, &x, &layer.post_norm, c.rms_norm_eps)?;
            let f = layer.ffn.forward(b, &h)?;
            x = add(b, &x, &f)?;
        }
        cache.fill.advance(tq);
        Ok(rms_norm(b, &x, &self.norm, c.rms_norm_eps)?)
    }

    fn logits(&self, x: &DeviceTensor<T>) -> Result<DeviceTensor<f32>> {
        let b = &*self.backend;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut logits = DeviceTensor::<f32>::zeros(b, &[x.shape()[0], self.config.vocab_size])?;
        matmul_into(b, x, false, head, true, &mut logits, false)?;
        Ok(logits)
    }
}
