//! The ModuleFormer / MoLM language model on the CPU: token embedding,
//! `n_layer` blocks `x + attn(ln_1(x))`, `x + mlpf(ln_2(x))` (LayerNorm with
//! weight and bias, eps 1e-5 whatever the config says, as IBM's code), final
//! LayerNorm and an untied `lm_head`. The attention is
//! `dropless::reference::moa::moa_forward` per sequence (with a KV cache),
//! the MLP `dropless::reference::moa::moe_mlp` over the whole batch. The
//! weights are plain arrays so a GPU model can upload them.

use dropless::reference::lm::{self as lm, add, embedding, linear};
use dropless::reference::moa::{
    moa_forward, moe_mlp, MoaConfig, MoaWeights, MoeMlpConfig, MoeMlpWeights, Projection, Router,
};
use dropless::Element;
use ndarray::{concatenate, s, Array1, Array2, Array3, ArrayView2, Axis};

use super::config::{GateType, MolmConfig};
use crate::checkpoint::TensorSource;
use crate::decoding::{batch_shape, HostModel};
use crate::error::{ModelError, Result};

/// IBM's `nn.LayerNorm` default, used whatever `layer_norm_epsilon` says.
pub const LN_EPS: f32 = 1e-5;
/// The block size of the CPU expert plans.
const BLOCK: usize = 16;

/// A LayerNorm's weight and bias.
pub struct LayerNorm<T> {
    /// `[n_embd]`.
    pub weight: Array1<T>,
    /// `[n_embd]`.
    pub bias: Array1<T>,
}

impl<T: Element> LayerNorm<T> {
    /// Normalises each row in f32 (biased variance), rounded to `T`
    /// (`dropless::reference::lm::layer_norm`).
    fn forward(&self, x: ArrayView2<T>) -> Result<Array2<T>> {
        Ok(lm::layer_norm(
            x,
            self.weight.view(),
            self.bias.view(),
            LN_EPS,
        )?)
    }
}

/// One ModuleFormer block.
pub struct MolmLayer<T> {
    /// `ln_1`.
    pub ln_1: LayerNorm<T>,
    /// The mixture of attention (`attn`).
    pub attn: MoaWeights<T>,
    /// `ln_2`.
    pub ln_2: LayerNorm<T>,
    /// The MLP mixture of experts (`mlpf`).
    pub mlp: MoeMlpWeights<T>,
}

/// Per layer and sequence, the keys and values seen so far
/// (`[tokens, n_head, head_size]`).
pub struct MolmCache<T> {
    layers: Vec<Vec<(Array3<T>, Array3<T>)>>,
    len: usize,
}

impl<T: Element> MolmCache<T> {
    /// An empty cache for `batch` sequences of `model`.
    pub fn new(model: &MolmModel<T>, batch: usize) -> Self {
        let c = &model.config;
        let shape = (0, c.n_head, c.head_size());
        let empty = (Array3::default(shape), Array3::default(shape));
        MolmCache {
            layers: vec![vec![empty; batch]; c.n_layer],
            len: 0,
        }
    }
}

/// A ModuleFormer model with weights of type `T`.
pub struct MolmModel<T> {
    /// The configuration it was built from.
    pub config: MolmConfig,
    /// `transformer.wte.weight` `[vocab, n_embd]`.
    pub wte: Array2<T>,
    /// The blocks.
    pub layers: Vec<MolmLayer<T>>,
    /// `transformer.ln_f`.
    pub ln_f: LayerNorm<T>,
    /// `lm_head.weight` `[vocab, n_embd]`.
    pub lm_head: Array2<T>,
}

fn tensor<T: Element, S: TensorSource, D: ndarray::Dimension>(
    src: &S,
    name: &str,
    shape: D,
) -> Result<ndarray::Array<T, D>> {
    let dims = shape.slice().to_vec();
    let data = src.get::<T>(name, &dims)?;
    ndarray::Array::from_shape_vec(shape, data).map_err(|e| ModelError::tensor(name, e.to_string()))
}

fn layer_norm<T: Element, S: TensorSource>(src: &S, p: &str, n: usize) -> Result<LayerNorm<T>> {
    Ok(LayerNorm {
        weight: tensor(src, &format!("{p}.weight"), ndarray::Ix1(n))?,
        bias: tensor(src, &format!("{p}.bias"), ndarray::Ix1(n))?,
    })
}

fn router<T: Element, S: TensorSource>(
    src: &S,
    c: &MolmConfig,
    p: &str,
    experts: usize,
) -> Result<Router<T>> {
    let h = c.n_embd;
    Ok(match c.gate_type {
        GateType::Mlp => Router::Mlp {
            w1: tensor(
                src,
                &format!("{p}.w_gate.0.weight"),
                ndarray::Ix2(c.gating_size, h),
            )?,
            b1: tensor(
                src,
                &format!("{p}.w_gate.0.bias"),
                ndarray::Ix1(c.gating_size),
            )?,
            w2: tensor(
                src,
                &format!("{p}.w_gate.3.weight"),
                ndarray::Ix2(experts, c.gating_size),
            )?,
        },
        GateType::Linear => Router::Linear {
            w: tensor(
                src,
                &format!("{p}.w_gate.0.weight"),
                ndarray::Ix2(experts, h),
            )?,
        },
    })
}

impl<T: Element> MolmModel<T> {
    /// The mixture-of-attention shape of a layer.
    pub fn moa_config(&self) -> MoaConfig {
        moa_config(&self.config)
    }

    /// The MLP MoE shape of a layer.
    pub fn mlp_config(&self) -> MoeMlpConfig {
        mlp_config(&self.config)
    }

    /// Loads the weights `save_pretrained` writes (the unused `attn.mask`
    /// and `attn.cum_weight` buffers are skipped).
    pub fn load<S: TensorSource>(config: MolmConfig, src: &S) -> Result<Self> {
        let c = &config;
        let (h, a, f) = (c.n_embd, c.att_hidden, c.ffd_hidden);
        let mut layers = Vec::with_capacity(c.n_layer);
        for l in 0..c.n_layer {
            let p = format!("transformer.h.{l}");
            let kv = if c.identity_kv() {
                None
            } else {
                let proj = |name: &str| -> Result<Projection<T>> {
                    Ok(Projection {
                        weight: tensor(
                            src,
                            &format!("{p}.attn.{name}.weight"),
                            ndarray::Ix2(a, h),
                        )?,
                        bias: tensor(src, &format!("{p}.attn.{name}.bias"), ndarray::Ix1(a))?,
                    })
                };
                Some((proj("k_proj")?, proj("v_proj")?))
            };
            let attn = MoaWeights {
                router: router(src, c, &format!("{p}.attn.q_proj.gate"), c.n_att_experts)?,
                q: tensor(
                    src,
                    &format!("{p}.attn.q_proj.experts.weight"),
                    ndarray::Ix3(c.n_att_experts, h, a),
                )?,
                o: tensor(
                    src,
                    &format!("{p}.attn.q_proj.output_experts.weight"),
                    ndarray::Ix3(c.n_att_experts, a, h),
                )?,
                kv,
            };
            attn.check(&moa_config(c))?;
            let mlp = MoeMlpWeights {
                router: router(src, c, &format!("{p}.mlpf.gate"), c.n_mlp_experts)?,
                w: tensor(
                    src,
                    &format!("{p}.mlpf.experts.weight"),
                    ndarray::Ix3(c.n_mlp_experts, h, f),
                )?,
                v: tensor(
                    src,
                    &format!("{p}.mlpf.output_experts.weight"),
                    ndarray::Ix3(c.n_mlp_experts, f, h),
                )?,
            };
            mlp.check(&mlp_config(c))?;
            layers.push(MolmLayer {
                ln_1: layer_norm(src, &format!("{p}.ln_1"), h)?,
                attn,
                ln_2: layer_norm(src, &format!("{p}.ln_2"), h)?,
                mlp,
            });
        }
        Ok(MolmModel {
            wte: tensor(src, "transformer.wte.weight", ndarray::Ix2(c.vocab_size, h))?,
            layers,
            ln_f: layer_norm(src, "transformer.ln_f", h)?,
            lm_head: tensor(src, "lm_head.weight", ndarray::Ix2(c.vocab_size, h))?,
            config,
        })
    }
}

impl<T: Element> HostModel for MolmModel<T> {
    type Cache = MolmCache<T>;

    fn empty_cache(&self, batch: usize) -> MolmCache<T> {
        MolmCache::new(self, batch)
    }

    /// The forward pass over `ids` (one row per sequence, equal lengths).
    /// With a cache the tokens continue the cached ones and their keys and
    /// values are appended to it. Returns the logits `[batch, tokens, vocab]`.
    fn forward(
        &self,
        ids: &[Vec<u32>],
        mut cache: Option<&mut MolmCache<T>>,
    ) -> Result<Array3<f32>> {
        let c = &self.config;
        let (batch, tq) = batch_shape(ids)?;
        if let Some(cache) = &cache {
            if cache.layers.first().is_some_and(|l| l.len() != batch) {
                return Err(ModelError::Input(format!(
                    "the KV cache holds {} sequences, the batch has {batch}",
                    cache.layers[0].len()
                )));
            }
        }
        let (moa, mlp) = (self.moa_config(), self.mlp_config());
        let mut x = embedding(self.wte.view(), &ids.concat())?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.ln_1.forward(x.view())?;
            let mut parts = Vec::with_capacity(batch);
            for b in 0..batch {
                let rows = h.slice(s![b * tq..(b + 1) * tq, ..]);
                let out = match cache.as_deref_mut() {
                    Some(cache) => {
                        let (pk, pv) = &mut cache.layers[l][b];
                        let out =
                            moa_forward(&moa, &layer.attn, rows, Some((pk.view(), pv.view())))?;
                        *pk = concatenate(Axis(0), &[pk.view(), out.keys.view()])
                            .map_err(|e| ModelError::Input(e.to_string()))?;
                        *pv = concatenate(Axis(0), &[pv.view(), out.values.view()])
                            .map_err(|e| ModelError::Input(e.to_string()))?;
                        out.output
                    }
                    None => moa_forward(&moa, &layer.attn, rows, None)?.output,
                };
                parts.push(out);
            }
            let views: Vec<_> = parts.iter().map(Array2::view).collect();
            let a = concatenate(Axis(0), &views).map_err(|e| ModelError::Input(e.to_string()))?;
            x = add(x.view(), a.view())?;
            let h = layer.ln_2.forward(x.view())?;
            let m = moe_mlp(&mlp, &layer.mlp, h.view())?;
            x = add(x.view(), m.view())?;
        }
        if let Some(cache) = cache {
            cache.len += tq;
        }
        let x = self.ln_f.forward(x.view())?;
        let logits = linear(x.view(), self.lm_head.view())?.mapv(|v| T::from_f32(v).to_f32());
        logits
            .into_shape_with_order((batch, tq, c.vocab_size))
            .map_err(|e| ModelError::Input(e.to_string()))
    }
}

/// The mixture-of-attention shape of `c`'s layers.
fn moa_config(c: &MolmConfig) -> MoaConfig {
    MoaConfig {
        hidden: c.n_embd,
        n_head: c.n_head,
        head_size: c.head_size(),
        num_experts: c.n_att_experts,
        top_k: c.k_att,
        block_size: BLOCK,
    }
}

/// The MLP MoE shape of `c`'s layers.
fn mlp_config(c: &MolmConfig) -> MoeMlpConfig {
    MoeMlpConfig {
        hidden: c.n_embd,
        ffn: c.ffd_hidden,
        num_experts: c.n_mlp_experts,
        top_k: c.k_mlp,
        activation: c.activation,
        block_size: BLOCK,
    }
}
