//! The ModuleFormer / MoLM language model on a CUDA device: the host
//! [`MolmModel`]'s weights uploaded once, LayerNorms through
//! `dropless::cuda::lm::layer_norm`, the mixture of attention and the MLP MoE
//! through `dropless::cuda::moa`, a device KV cache per layer, and greedy
//! decoding whose argmax runs on the device (per step only the chosen ids
//! come back to the host). bf16 or f16; f32 is CPU-only.

use std::sync::Arc;
use std::time::Instant;

use dropless::cuda::expert_map::upload_expert_weights;
use dropless::cuda::gemm::{matmul_into, GemmElement};
use dropless::cuda::lm::{add, argmax_rows, embedding, layer_norm, take_rows};
use dropless::cuda::moa::{attention, mlp_moe, DeviceGate, DeviceMoaCache, DeviceMoaWeights};
use dropless::cuda::sparse_ops::MmaElement;
use dropless::cuda::{CudaBackend, DeviceTensor};
use dropless::reference::moa::{Activation, MoaWeights, MoeMlpWeights, Projection, Router};
use dropless::topology::DEFAULT_BLOCK_SIZE;
use ndarray::{Array1, Array2, Array3};

use super::config::MolmConfig;
use super::model::{LayerNorm, MolmLayer, MolmModel, LN_EPS};
use crate::error::{ModelError, Result};
use crate::model::Generation;

/// An element type the GPU model runs in: bf16 or f16 (as the Mixtral
/// family's `gpu::GpuElement`, restated so this module stands alone).
pub trait GpuElement: MmaElement + GemmElement {}

impl<T: MmaElement + GemmElement> GpuElement for T {}

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

/// Uploads a matrix.
fn matrix<T: GpuElement>(backend: &CudaBackend, a: Array2<T>) -> Result<DeviceTensor<T>> {
    let shape = [a.nrows(), a.ncols()];
    let t = match a.as_slice() {
        Some(data) => DeviceTensor::from_host(backend, &shape, data),
        None => DeviceTensor::from_array(backend, a.view()),
    };
    Ok(t?)
}

/// Uploads a vector as a `[len]` tensor.
fn vector<T: GpuElement>(backend: &CudaBackend, v: Array1<T>) -> Result<DeviceTensor<T>> {
    Ok(DeviceTensor::from_host(backend, &[v.len()], &v.to_vec())?)
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
    batch: usize,
    capacity: usize,
    len: usize,
}

impl<T: GpuElement> GpuMolmCache<T> {
    /// An empty cache for `batch` sequences of up to `capacity` tokens each.
    pub fn new(model: &GpuMolmModel<T>, batch: usize, capacity: usize) -> Result<Self> {
        if batch == 0 || capacity == 0 {
            return Err(ModelError::Input(format!(
                "a KV cache needs at least one sequence of at least one token, found {batch} x {capacity}"
            )));
        }
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
        Ok(GpuMolmCache {
            layers,
            batch,
            capacity,
            len: 0,
        })
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

    /// The final hidden states (after `ln_f`, `[batch * tq, n_embd]`) of the
    /// token ids `ids` (`[batch * tq]` on the device), which continue the
    /// cached tokens; their keys and values join the cache.
    fn hidden(
        &self,
        ids: &DeviceTensor<i32>,
        batch: usize,
        tq: usize,
        cache: &mut GpuMolmCache<T>,
    ) -> Result<DeviceTensor<T>> {
        let (b, c) = (&*self.backend, &self.config);
        if cache.batch != batch {
            return Err(ModelError::Input(format!(
                "the KV cache holds {} sequences, the batch has {batch}",
                cache.batch
            )));
        }
        if cache.len + tq > cache.capacity {
            return Err(ModelError::Input(format!(
                "the KV cache has room for {} tokens per sequence: {} cached + {tq} new exceed it",
                cache.capacity, cache.len
            )));
        }
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
        cache.len += tq;
        self.ln_f.forward(b, &x)
    }

    /// The LM head on hidden states `[rows, n_embd]`: f32 logits `[rows, vocab]`.
    fn logits(&self, x: &DeviceTensor<T>) -> Result<DeviceTensor<f32>> {
        let b = &*self.backend;
        let mut logits = DeviceTensor::<f32>::zeros(b, &[x.shape()[0], self.config.vocab_size])?;
        matmul_into(b, x, false, &self.lm_head, true, &mut logits, false)?;
        Ok(logits)
    }

    /// Checks a batch of equal-length sequences of in-vocabulary ids and
    /// uploads it flat; returns it with the batch size and length.
    fn upload_ids(&self, ids: &[Vec<u32>]) -> Result<(DeviceTensor<i32>, usize, usize)> {
        let batch = ids.len();
        let tq = ids.first().map_or(0, Vec::len);
        if batch == 0 || tq == 0 {
            return Err(ModelError::Input(
                "the batch needs at least one sequence of at least one token".into(),
            ));
        }
        if let Some(i) = ids.iter().position(|s| s.len() != tq) {
            return Err(ModelError::Input(format!(
                "all sequences of a batch must have one length: sequence 0 has {tq} tokens, sequence {i} has {}",
                ids[i].len()
            )));
        }
        let vocab = self.config.vocab_size;
        let flat: Vec<i32> = ids
            .concat()
            .into_iter()
            .enumerate()
            .map(|(i, id)| match i32::try_from(id) {
                Ok(v) if (id as usize) < vocab => Ok(v),
                _ => Err(ModelError::Input(format!(
                    "token id {id} at position {i} is out of range: the vocabulary has {vocab} tokens (ids 0..{vocab})"
                ))),
            })
            .collect::<Result<_>>()?;
        let dev = DeviceTensor::from_host(&self.backend, &[flat.len()], &flat)?;
        Ok((dev, batch, tq))
    }

    /// The forward pass over `ids` (one row per sequence, equal lengths).
    /// With a cache the tokens continue the cached ones and their keys and
    /// values are appended to it. Returns the logits `[batch, tokens, vocab]`
    /// in f32 (the LM head accumulates in f32 and is not rounded to `T`).
    pub fn forward(
        &self,
        ids: &[Vec<u32>],
        cache: Option<&mut GpuMolmCache<T>>,
    ) -> Result<Array3<f32>> {
        let (dev_ids, batch, tq) = self.upload_ids(ids)?;
        let mut own;
        let cache = match cache {
            Some(cache) => cache,
            None => {
                own = GpuMolmCache::new(self, batch, tq)?;
                &mut own
            }
        };
        let x = self.hidden(&dev_ids, batch, tq, cache)?;
        let logits = self.logits(&x)?.to_host(&self.backend)?;
        Array3::from_shape_vec((batch, tq, self.config.vocab_size), logits)
            .map_err(|e| ModelError::Input(e.to_string()))
    }

    /// Greedy decoding of `max_new_tokens` tokens after each prompt: one
    /// prefill over the prompts, then one cached step per token. The argmax
    /// runs on the device and its ids feed the next step directly; only they
    /// are copied to the host.
    pub fn generate(&self, prompts: &[Vec<u32>], max_new_tokens: usize) -> Result<Generation> {
        let b = &*self.backend;
        let (mut ids, batch, tq) = self.upload_ids(prompts)?;
        let mut tokens = prompts.to_vec();
        let (mut prefill_secs, mut decode_secs) = (0.0, 0.0);
        if max_new_tokens == 0 {
            return Ok(Generation {
                tokens,
                prefill_secs,
                decode_secs,
            });
        }
        let mut cache = GpuMolmCache::new(self, batch, tq + max_new_tokens)?;
        let last_rows: Vec<i32> = (0..batch)
            .map(|s| i32::try_from((s + 1) * tq - 1))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| ModelError::Input("the prompt batch exceeds the i32 range".into()))?;
        let last_rows = DeviceTensor::from_host(b, &[batch], &last_rows)?;
        let mut step_len = tq;
        for step in 0..max_new_tokens {
            let start = Instant::now();
            let x = self.hidden(&ids, batch, step_len, &mut cache)?;
            let last = if step_len > 1 {
                take_rows(b, &x, &last_rows)?
            } else {
                x
            };
            ids = argmax_rows(b, &self.logits(&last)?)?;
            let next = ids.to_host(b)?;
            let elapsed = start.elapsed().as_secs_f64();
            if step == 0 {
                prefill_secs = elapsed;
            } else {
                decode_secs += elapsed;
            }
            for (sequence, (seq, &id)) in tokens.iter_mut().zip(&next).enumerate() {
                // The device argmax marks a row holding NaN or inf with -1.
                let id = u32::try_from(id)
                    .ok()
                    .filter(|&id| (id as usize) < self.config.vocab_size)
                    .ok_or_else(|| {
                        ModelError::Input(format!(
                            "non-finite logits for sequence {sequence} (device argmax {id}): the weights or the dtype overflowed"
                        ))
                    })?;
                seq.push(id);
            }
            step_len = 1;
        }
        Ok(Generation {
            tokens,
            prefill_secs,
            decode_secs,
        })
    }
}
