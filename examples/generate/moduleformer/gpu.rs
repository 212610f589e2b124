//! The ModuleFormer / MoLM language model on a CUDA device: the host
//! [`MolmModel`]'s weights uploaded once, LayerNorms through
//! `dropless::cuda::lm::layer_norm`, the mixture of attention and the MLP MoE
//! through `dropless::cuda::moa`, a device KV cache per layer, and greedy
//! decoding (`device.rs`) whose argmax runs on the device. bf16 or f16; f32
//! is CPU-only.

use std::sync::Arc;

use dropless::cuda::expert_map::upload_expert_weights;
use dropless::cuda::gemm::matmul_into;
use dropless::cuda::lm::{add, embedding, layer_norm};
use dropless::cuda::moa::{attention, mlp_moe, DeviceGate, DeviceMoaCache, DeviceMoaWeights};
use dropless::cuda::{CudaBackend, DeviceTensor};
use dropless::reference::moa::{Activation, MoaWeights, MoeMlpWeights, Projection, Router};
use dropless::topology::DEFAULT_BLOCK_SIZE;
use ndarray::Array3;

use super::config::MolmConfig;
use super::model::{LayerNorm, MolmLayer, MolmModel, LN_EPS};
use crate::device::{matrix, vector, CacheFill, DeviceModel, GpuElement};
use crate::error::{ModelError, Result};

/// The block size of the GPU expert plans.
const GPU_BLOCK_SIZE: usize = DEFAULT_BLOCK_SIZE;

/// Checks that `config` fits the GPU kernels: `gelu_new` experts (the
/// device MLP MoE applies the tanh GeLU) and `n_embd`, `att_hidden` and
/// `ffd_hidden` multiples of 8 (the expert products' output widths).
pub fn check_supported(config: &MolmConfig) -> Result<()> {
    if config.activation != Activation::GeluTanh {
        return Err(ModelError::config(
            "activation_function",
            format!(
                "the GPU MLP MoE applies gelu_new (tanh) only, found {:?}; this model runs on the CPU only: use --device cpu",
                config.activation
            ),
        ));
    }
    for (field, value) in [
        ("n_embd", config.n_embd),
        ("att_hidden", config.att_hidden),
        ("ffd_hidden", config.ffd_hidden),
    ] {
        if value % 8 != 0 {
            return Err(ModelError::config(
                field,
                format!("the GPU expert products need a multiple of 8, found {value}; this model runs on the CPU only: use --device cpu"),
            ));
        }
    }
    Ok(())
}

/// Uploads stacked expert weights `[experts, in, out]` padded as
/// `dropless::cuda::moa` takes them.
fn experts<T: GpuElement>(backend: &CudaBackend, w: Array3<T>) -> Result<DeviceTensor<T>> {
    Ok(upload_expert_weights(backend, w.view(), GPU_BLOCK_SIZE)?)
}

fn gate<T: GpuElement>(backend: &CudaBackend, router: Router<T>) -> Result<DeviceGate<T>> {
    Ok(match router {
        Router::Mlp { w1, b1, w2 } => DeviceGate::Mlp {
            w1: matrix(backend, w1)?,
            b1: vector(backend, b1)?,
            w2: matrix(backend, w2)?,
        },
        Router::Linear { w } => DeviceGate::Linear {
            w: matrix(backend, w)?,
        },
    })
}

fn projection<T: GpuElement>(
    backend: &CudaBackend,
    p: Projection<T>,
) -> Result<(DeviceTensor<T>, DeviceTensor<T>)> {
    Ok((matrix(backend, p.weight)?, vector(backend, p.bias)?))
}

/// A LayerNorm's weight and bias on the device.
struct GpuLayerNorm<T> {
    weight: DeviceTensor<T>,
    bias: DeviceTensor<T>,
}

impl<T: GpuElement> GpuLayerNorm<T> {
    fn upload(backend: &CudaBackend, host: LayerNorm<T>) -> Result<Self> {
        Ok(GpuLayerNorm {
            weight: vector(backend, host.weight)?,
            bias: vector(backend, host.bias)?,
        })
    }

    fn forward(&self, backend: &CudaBackend, x: &DeviceTensor<T>) -> Result<DeviceTensor<T>> {
        Ok(layer_norm(backend, x, &self.weight, &self.bias, LN_EPS)?)
    }
}

/// One ModuleFormer block on the device.
struct GpuMolmLayer<T> {
    ln_1: GpuLayerNorm<T>,
    attn: DeviceMoaWeights<T>,
    ln_2: GpuLayerNorm<T>,
    mlp_gate: DeviceGate<T>,
    /// `[experts * padded n_embd, ffd_hidden]`.
    mlp_w: DeviceTensor<T>,
    /// `[experts * padded ffd_hidden, n_embd]`.
    mlp_v: DeviceTensor<T>,
}

impl<T: GpuElement> GpuMolmLayer<T> {
    fn upload(backend: &CudaBackend, host: MolmLayer<T>) -> Result<Self> {
        let MolmLayer {
            ln_1,
            attn,
            ln_2,
            mlp,
        } = host;
        let MoaWeights { router, q, o, kv } = attn;
        let (k, v) = match kv {
            Some((k, v)) => (Some(projection(backend, k)?), Some(projection(backend, v)?)),
            None => (None, None),
        };
        let attn = DeviceMoaWeights {
            gate: gate(backend, router)?,
            q: experts(backend, q)?,
            o: experts(backend, o)?,
            k,
            v,
        };
        let MoeMlpWeights { router, w, v } = mlp;
        Ok(GpuMolmLayer {
            ln_1: GpuLayerNorm::upload(backend, ln_1)?,
            attn,
            ln_2: GpuLayerNorm::upload(backend, ln_2)?,
            mlp_gate: gate(backend, router)?,
            mlp_w: experts(backend, w)?,
            mlp_v: experts(backend, v)?,
        })
    }
}

/// The keys and values of the tokens seen so far, per layer, on the device,
/// for `batch` sequences of up to `capacity` tokens.
pub struct GpuMolmCache<T> {
    layers: Vec<DeviceMoaCache<T>>,
    fill: CacheFill,
}

impl<T: GpuElement> GpuMolmCache<T> {
    /// An empty cache for `batch` sequences of up to `capacity` tokens each.
    pub fn new(model: &GpuMolmModel<T>, batch: usize, capacity: usize) -> Result<Self> {
        let fill = CacheFill::new(batch, capacity)?;
        let c = &model.config;
        let layers = (0..c.n_layer)
            .map(|_| {
                Ok(DeviceMoaCache::new(
                    &model.backend,
                    batch,
                    capacity,
                    c.att_hidden,
                )?)
            })
            .collect::<Result<_>>()?;
        Ok(GpuMolmCache { layers, fill })
    }
}

/// A ModuleFormer model on a CUDA device, with weights of type `T` (bf16 or
/// f16).
pub struct GpuMolmModel<T> {
    backend: Arc<CudaBackend>,
    /// The configuration it was built from.
    pub config: MolmConfig,
    wte: DeviceTensor<T>,
    layers: Vec<GpuMolmLayer<T>>,
    ln_f: GpuLayerNorm<T>,
    lm_head: DeviceTensor<T>,
}

impl<T: GpuElement> GpuMolmModel<T> {
    /// Uploads the weights of `model`, consuming it (each host array is
    /// dropped once it is on the device).
    ///
    /// Errors: those of [`check_supported`] and of the uploads.
    pub fn upload(backend: Arc<CudaBackend>, model: MolmModel<T>) -> Result<Self> {
        check_supported(&model.config)?;
        let MolmModel {
            config,
            wte,
            layers,
            ln_f,
            lm_head,
        } = model;
        let b = &*backend;
        let layers = layers
            .into_iter()
            .map(|layer| GpuMolmLayer::upload(b, layer))
            .collect::<Result<_>>()?;
        let wte = matrix(b, wte)?;
        let ln_f = GpuLayerNorm::upload(b, ln_f)?;
        let lm_head = matrix(b, lm_head)?;
        Ok(GpuMolmModel {
            backend,
            config,
            wte,
            layers,
            ln_f,
            lm_head,
        })
    }
}

impl<T: GpuElement> DeviceModel<T> for GpuMolmModel<T> {
    type Cache = GpuMolmCache<T>;

    fn backend(&self) -> &CudaBackend {
        &self.backend
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn new_cache(&self, batch: usize, capacity: usize) -> Result<GpuMolmCache<T>> {
        GpuMolmCache::new(self, batch, capacity)
    }

    fn hidden(
        &self,
        ids: &DeviceTensor<i32>,
        batch: usize,
        tq: usize,
        cache: &mut GpuMolmCache<T>,
    ) -> Result<DeviceTensor<T>> {
        let (b, c) = (&*self.backend, &self.config);
        cache.fill.room_for(batch, tq)?;
        let mut x = embedding(b, &self.wte, ids)?;
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = layer.ln_1.forward(b, &x)?;
            let a = attention(
                b,
                &layer.attn,
                &h,
                kv,
                batch,
                c.n_head,
                c.k_att,
                GPU_BLOCK_SIZE,
            )?;
            x = add(b, &x, &a)?;
            let h = layer.ln_2.forward(b, &x)?;
            let m = mlp_moe(
                b,
                &layer.mlp_gate,
                &layer.mlp_w,
                &layer.mlp_v,
                &h,
                c.k_mlp,
                GPU_BLOCK_SIZE,
            )?;
            x = add(b, &x, &m)?;
        }
        cache.fill.advance(tq);
        self.ln_f.forward(b, &x)
    }

    fn logits(&self, x: &DeviceTensor<T>) -> Result<DeviceTensor<f32>> {
        let b = &*self.backend;
        let mut logits = DeviceTensor::<f32>::zeros(b, &[x.shape()[0], self.config.vocab_size])?;
        matmul_into(b, x, false, &self.lm_head, true, &mut logits, false)?;
        Ok(logits)
    }
}
