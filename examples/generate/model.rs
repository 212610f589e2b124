//! The decoder-only MoE language model on the CPU: weights loaded from a
//! [`TensorSource`] and a forward pass with an optional KV cache (its
//! [`HostModel`] impl, which also gives greedy generation). Attention, norms and RoPE are `dropless::reference::lm`; every
//! MoE layer is `dropless::reference::moe::forward`. The layer structs are
//! `pub(crate)` so that the GPU model (`gpu.rs`) can take their arrays over.

use dropless::config::{MlpKind, MoeConfig, MoeWeights};
use dropless::reference::lm::{self, add, attention, embedding, rms_norm, rope};
use dropless::reference::moe;
use dropless::topology::CPU_BLOCK_SIZES;
use dropless::Element;
use ndarray::{concatenate, s, Array1, Array2, Array3, Axis};

use crate::checkpoint::TensorSource;
use crate::config::{Family, ModelConfig, QkNorm};
use crate::decoding::{batch_shape, HostModel};
use crate::error::{ModelError, Result};

/// `x · weightᵀ (+ bias)` in f32 (`weight` is `[out, in]`), unrounded.
fn matmul_t<T: Element>(
    x: &Array2<T>,
    weight: &Array2<T>,
    bias: Option<&Array1<T>>,
) -> Array2<f32> {
    // The checkpoint loader checks every weight's shape against the config.
    let mut y =
        lm::linear(x.view(), weight.view()).expect("weights are loaded with matching shapes");
    if let Some(b) = bias {
        for mut row in y.rows_mut() {
            row.iter_mut()
                .zip(b.iter())
                .for_each(|(v, &b)| *v += b.to_f32());
        }
    }
    y
}

/// Rounds an f32 result to `T`, as a kernel storing it would.
fn round<T: Element>(a: Array2<f32>) -> Array2<T> {
    a.mapv(T::from_f32)
}

/// A linear layer: `weight` is `[out, in]` (Hugging Face layout).
pub(crate) struct Linear<T> {
    pub(crate) weight: Array2<T>,
    pub(crate) bias: Option<Array1<T>>,
}

impl<T: Element> Linear<T> {
    fn forward(&self, x: &Array2<T>) -> Array2<T> {
        round(matmul_t(x, &self.weight, self.bias.as_ref()))
    }
}

/// A dense GLU MLP: `down(silu(gate(x)) ⊙ up(x))`.
pub(crate) struct DenseMlp<T> {
    pub(crate) gate: Array2<T>,
    pub(crate) up: Array2<T>,
    pub(crate) down: Array2<T>,
}

impl<T: Element> DenseMlp<T> {
    fn forward(&self, x: &Array2<T>) -> Array2<T> {
        let g = matmul_t(x, &self.gate, None);
        let u = matmul_t(x, &self.up, None);
        let h: Array2<T> = ndarray::Zip::from(&g)
            .and(&u)
            .map_collect(|&g, &u| T::from_f32(g / (1.0 + (-g).exp()) * u));
        round(matmul_t(&h, &self.down, None))
    }
}

/// Qwen2-MoE's shared expert and its sigmoid gate (`[1, hidden]`).
pub(crate) struct SharedExpert<T> {
    pub(crate) mlp: DenseMlp<T>,
    pub(crate) gate: Array2<T>,
}

/// A dropless MoE layer, with Qwen2-MoE's shared expert when present.
pub(crate) struct MoeFfn<T> {
    pub(crate) config: MoeConfig,
    pub(crate) weights: MoeWeights<T>,
    pub(crate) shared: Option<SharedExpert<T>>,
}

/// The feed-forward block of a layer.
pub(crate) enum Ffn<T> {
    /// A dropless MoE layer.
    Moe(Box<MoeFfn<T>>),
    /// A dense MLP layer (Qwen's `mlp_only_layers` / `decoder_sparse_step`).
    Dense(DenseMlp<T>),
}

impl<T: Element> Ffn<T> {
    fn forward(&self, x: &Array2<T>) -> Result<Array2<T>> {
        match self {
            Ffn::Dense(mlp) => Ok(mlp.forward(x)),
            Ffn::Moe(layer) => {
                let routed = moe::forward(&layer.config, &layer.weights, x.view())?.output;
                let Some(shared) = &layer.shared else {
                    return Ok(routed);
                };
                let s = shared.mlp.forward(x);
                let gate = matmul_t(x, &shared.gate, None);
                let mut out = Array2::<T>::default(routed.dim());
                for (t, mut row) in out.rows_mut().into_iter().enumerate() {
                    let g = T::from_f32(1.0 / (1.0 + (-gate[[t, 0]]).exp())).to_f32();
                    for (c, o) in row.iter_mut().enumerate() {
                        let gated = T::from_f32(g * s[[t, c]].to_f32()).to_f32();
                        *o = T::from_f32(routed[[t, c]].to_f32() + gated);
                    }
                }
                Ok(out)
            }
        }
    }
}

/// The self-attention block of a layer.
pub(crate) struct Attention<T> {
    pub(crate) q: Linear<T>,
    pub(crate) k: Linear<T>,
    pub(crate) v: Linear<T>,
    pub(crate) o: Linear<T>,
    pub(crate) q_norm: Option<Array1<T>>,
    pub(crate) k_norm: Option<Array1<T>>,
}

/// One decoder layer.
pub(crate) struct Layer<T> {
    pub(crate) input_norm: Array1<T>,
    pub(crate) attention: Attention<T>,
    pub(crate) post_norm: Array1<T>,
    pub(crate) ffn: Ffn<T>,
}

/// The keys and values of the tokens seen so far, per layer and sequence
/// (`[tokens, kv_heads * head_dim]`, keys after RoPE).
pub struct KvCache<T> {
    layers: Vec<Vec<(Array2<T>, Array2<T>)>>,
    len: usize,
}

impl<T: Element> KvCache<T> {
    /// An empty cache for `batch` sequences of `model`.
    pub fn new(model: &Model<T>, batch: usize) -> Self {
        let width = model.config.num_kv_heads * model.config.head_dim;
        let empty = (Array2::default((0, width)), Array2::default((0, width)));
        KvCache {
            layers: vec![vec![empty; batch]; model.config.num_layers],
            len: 0,
        }
    }
}

/// A decoder-only MoE language model with weights of type `T`.
pub struct Model<T> {
    /// The configuration it was built from.
    pub config: ModelConfig,
    pub(crate) embed: Array2<T>,
    pub(crate) layers: Vec<Layer<T>>,
    pub(crate) norm: Array1<T>,
    /// `None` when tied to the embedding table.
    pub(crate) lm_head: Option<Array2<T>>,
}

/// Reads a `[rows, cols]` matrix.
fn matrix<T: Element, S: TensorSource>(
    src: &S,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Array2<T>> {
    let data = src.get::<T>(name, &[rows, cols])?;
    Array2::from_shape_vec((rows, cols), data).map_err(|e| ModelError::tensor(name, e.to_string()))
}

/// Reads a `[len]` vector.
fn vector<T: Element, S: TensorSource>(src: &S, name: &str, len: usize) -> Result<Array1<T>> {
    Ok(Array1::from_vec(src.get::<T>(name, &[len])?))
}

/// Reads `{prefix}.weight` (and `{prefix}.bias` when `bias`).
fn linear<T: Element, S: TensorSource>(
    src: &S,
    prefix: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Result<Linear<T>> {
    Ok(Linear {
        weight: matrix(src, &format!("{prefix}.weight"), out, inp)?,
        bias: if bias {
            Some(vector(src, &format!("{prefix}.bias"), out)?)
        } else {
            None
        },
    })
}

/// Reads a dense GLU MLP under `prefix` (`gate_proj`, `up_proj`, `down_proj`).
fn dense_mlp<T: Element, S: TensorSource>(
    src: &S,
    prefix: &str,
    hidden: usize,
    ffn: usize,
) -> Result<DenseMlp<T>> {
    Ok(DenseMlp {
        gate: matrix(src, &format!("{prefix}.gate_proj.weight"), ffn, hidden)?,
        up: matrix(src, &format!("{prefix}.up_proj.weight"), ffn, hidden)?,
        down: matrix(src, &format!("{prefix}.down_proj.weight"), hidden, ffn)?,
    })
}

/// The largest CPU block size that divides the expert FFN size.
fn block_size_for(config: &ModelConfig) -> Result<usize> {
    CPU_BLOCK_SIZES
        .iter()
        .rev()
        .copied()
        .find(|b| config.moe_ffn.is_multiple_of(*b))
        .ok_or_else(|| {
            ModelError::config(
                config.moe_ffn_field(),
                format!(
                    "the expert FFN size {} must be a multiple of one of the CPU block sizes {CPU_BLOCK_SIZES:?}",
                    config.moe_ffn
                ),
            )
        })
}

/// Reads the routed experts under `prefix` (per-expert tensors, or the
/// transformers-5 fused `gate_up_proj` / `down_proj`) into dropless's
/// concatenated layout: W1 = gate, W3 = up, W2 rows = downᵀ.
fn experts<T: Element, S: TensorSource>(
    src: &S,
    config: &ModelConfig,
    prefix: &str,
) -> Result<(Array2<T>, Array2<T>, Array2<T>)> {
    let (e, i, h) = (config.num_experts, config.moe_ffn, config.hidden_size);
    let mut w1 = Array2::<T>::default((e * i, h));
    let mut w3 = Array2::<T>::default((e * i, h));
    let mut w2 = Array2::<T>::default((e * i, h));
    let fused = format!("{prefix}.experts.gate_up_proj");
    if src.contains(&fused) {
        let gate_up = src.get::<T>(&fused, &[e, 2 * i, h])?;
        let gate_up = Array3::from_shape_vec((e, 2 * i, h), gate_up)
            .map_err(|err| ModelError::tensor(&fused, err.to_string()))?;
        let down_name = format!("{prefix}.experts.down_proj");
        let down = src.get::<T>(&down_name, &[e, h, i])?;
        let down = Array3::from_shape_vec((e, h, i), down)
            .map_err(|err| ModelError::tensor(&down_name, err.to_string()))?;
        for x in 0..e {
            let rows = s![x * i..(x + 1) * i, ..];
            w1.slice_mut(rows).assign(&gate_up.slice(s![x, ..i, ..]));
            w3.slice_mut(rows).assign(&gate_up.slice(s![x, i.., ..]));
            w2.slice_mut(rows).assign(&down.slice(s![x, .., ..]).t());
        }
        return Ok((w1, w3, w2));
    }
    let (gate, up, down) = match config.family {
        Family::Mixtral => ("w1", "w3", "w2"),
        _ => ("gate_proj", "up_proj", "down_proj"),
    };
    for x in 0..e {
        let rows = s![x * i..(x + 1) * i, ..];
        let p = format!("{prefix}.experts.{x}");
        w1.slice_mut(rows)
            .assign(&matrix::<T, S>(src, &format!("{p}.{gate}.weight"), i, h)?);
        w3.slice_mut(rows)
            .assign(&matrix::<T, S>(src, &format!("{p}.{up}.weight"), i, h)?);
        w2.slice_mut(rows)
            .assign(&matrix::<T, S>(src, &format!("{p}.{down}.weight"), h, i)?.t());
    }
    Ok((w1, w3, w2))
}

impl<T: Element> Model<T> {
    /// Loads every weight of `config`'s model from `src`, converted to `T`.
    ///
    /// Errors name the missing or misshapen tensor, or the config field that
    /// makes the model unsupported.
    pub fn load<S: TensorSource>(config: ModelConfig, src: &S) -> Result<Self> {
        let c = &config;
        let (h, d) = (c.hidden_size, c.head_dim);
        let (q_width, kv_width) = (c.num_heads * d, c.num_kv_heads * d);
        let block_size = if c.sparse_layers.iter().any(|&s| s) {
            block_size_for(c)?
        } else {
            CPU_BLOCK_SIZES[0]
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            let a = format!("{p}.self_attn");
            let (q_norm_len, k_norm_len) = match c.qk_norm {
                QkNorm::None => (0, 0),
                QkNorm::PerHead => (d, d),
                QkNorm::Whole => (q_width, kv_width),
            };
            let norm = |name: &str, len: usize| -> Result<Option<Array1<T>>> {
                if len == 0 {
                    Ok(None)
                } else {
                    vector(src, &format!("{a}.{name}.weight"), len).map(Some)
                }
            };
            let attention = Attention {
                q: linear(src, &format!("{a}.q_proj"), q_width, h, c.qkv_bias)?,
                k: linear(src, &format!("{a}.k_proj"), kv_width, h, c.qkv_bias)?,
                v: linear(src, &format!("{a}.v_proj"), kv_width, h, c.qkv_bias)?,
                o: linear(src, &format!("{a}.o_proj"), h, q_width, c.o_bias)?,
                q_norm: norm("q_norm", q_norm_len)?,
                k_norm: norm("k_norm", k_norm_len)?,
            };
            let ffn = if c.sparse_layers[l] {
                let m = match c.family {
                    Family::Mixtral
                        if src.contains(&format!("{p}.block_sparse_moe.gate.weight")) =>
                    {
                        format!("{p}.block_sparse_moe")
                    }
                    _ => format!("{p}.mlp"),
                };
                let moe_config = MoeConfig {
                    hidden: h,
                    ffn: c.moe_ffn,
                    num_experts: c.num_experts,
                    top_k: c.top_k,
                    mlp: MlpKind::Glu,
                    renormalize: c.renormalize,
                    block_size,
                };
                let (w1, w3, w2) = experts(src, c, &m)?;
                let weights = MoeWeights {
                    router: matrix(src, &format!("{m}.gate.weight"), c.num_experts, h)?,
                    w1,
                    w3: Some(w3),
                    w2,
                };
                weights.check(&moe_config)?;
                let shared = match c.shared_expert_ffn {
                    Some(ffn) => Some(SharedExpert {
                        mlp: dense_mlp(src, &format!("{m}.shared_expert"), h, ffn)?,
                        gate: matrix(src, &format!("{m}.shared_expert_gate.weight"), 1, h)?,
                    }),
                    None => None,
                };
                Ffn::Moe(Box::new(MoeFfn {
                    config: moe_config,
                    weights,
                    shared,
                }))
            } else {
                Ffn::Dense(dense_mlp(src, &format!("{p}.mlp"), h, c.dense_ffn)?)
            };
            layers.push(Layer {
                input_norm: vector(src, &format!("{p}.input_layernorm.weight"), h)?,
                attention,
                post_norm: vector(src, &format!("{p}.post_attention_layernorm.weight"), h)?,
                ffn,
            });
        }
        let embed = matrix(src, "model.embed_tokens.weight", c.vocab_size, h)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(matrix(src, "lm_head.weight", c.vocab_size, h)?)
        };
        let norm = vector(src, "model.norm.weight", h)?;
        Ok(Model {
            config,
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// RMSNorm of q or k per the family: per head or over the whole projection.
    fn qk_norm(&self, x: Array2<T>, weight: Option<&Array1<T>>) -> Result<Array2<T>> {
        let eps = self.config.rms_norm_eps;
        match (self.config.qk_norm, weight) {
            (QkNorm::PerHead, Some(w)) => {
                let (rows, cols) = x.dim();
                let d = self.config.head_dim;
                let per_head = x
                    .into_shape_with_order((rows * cols / d, d))
                    .map_err(|e| ModelError::Input(e.to_string()))?;
                let normed = rms_norm(per_head.view(), w.view(), eps)?;
                normed
                    .into_shape_with_order((rows, cols))
                    .map_err(|e| ModelError::Input(e.to_string()))
            }
            (QkNorm::Whole, Some(w)) => Ok(rms_norm(x.view(), w.view(), eps)?),
            _ => Ok(x),
        }
    }

    /// The attention block on `x` (`[batch * tq, hidden]`).
    fn attention(
        &self,
        layer: usize,
        x: &Array2<T>,
        positions: &[usize],
        batch: usize,
        cache: Option<&mut KvCache<T>>,
    ) -> Result<Array2<T>> {
        let c = &self.config;
        let attn = &self.layers[layer].attention;
        let mut q = self.qk_norm(attn.q.forward(x), attn.q_norm.as_ref())?;
        let mut k = self.qk_norm(attn.k.forward(x), attn.k_norm.as_ref())?;
        let mut v = attn.v.forward(x);
        if let Some(clip) = c.clip_qkv {
            for m in [&mut q, &mut k, &mut v] {
                m.mapv_inplace(|e| T::from_f32(e.to_f32().clamp(-clip, clip)));
            }
        }
        let q = rope(q.view(), positions, c.head_dim, c.rope_theta)?;
        let k = rope(k.view(), positions, c.head_dim, c.rope_theta)?;
        let (k, v) = match cache {
            None => (k, v),
            Some(cache) => {
                let tq = x.nrows() / batch;
                let seqs = &mut cache.layers[layer];
                for (b, (ck, cv)) in seqs.iter_mut().enumerate() {
                    let rows = s![b * tq..(b + 1) * tq, ..];
                    *ck = concatenate(Axis(0), &[ck.view(), k.slice(rows)])
                        .map_err(|e| ModelError::Input(e.to_string()))?;
                    *cv = concatenate(Axis(0), &[cv.view(), v.slice(rows)])
                        .map_err(|e| ModelError::Input(e.to_string()))?;
                }
                let ks: Vec<_> = seqs.iter().map(|(k, _)| k.view()).collect();
                let vs: Vec<_> = seqs.iter().map(|(_, v)| v.view()).collect();
                (
                    concatenate(Axis(0), &ks).map_err(|e| ModelError::Input(e.to_string()))?,
                    concatenate(Axis(0), &vs).map_err(|e| ModelError::Input(e.to_string()))?,
                )
            }
        };
        if let Some(window) = c.sliding_window {
            let tk = k.nrows() / batch;
            if tk > window {
                return Err(ModelError::config(
                    "sliding_window",
                    format!("{tk} tokens exceed the attention window {window}, which this example does not implement; use shorter sequences"),
                ));
            }
        }
        let out = attention(
            q.view(),
            k.view(),
            v.view(),
            batch,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
        )?;
        Ok(attn.o.forward(&out))
    }
}

impl<T: Element> HostModel for Model<T> {
    type Cache = KvCache<T>;

    fn empty_cache(&self, batch: usize) -> KvCache<T> {
        KvCache::new(self, batch)
    }

    /// The forward pass over `ids` (one row per sequence, equal lengths).
    /// With a cache the tokens continue the cached ones (positions from
    /// `cache.len()`) and their keys and values are appended to it. Returns
    /// the logits `[batch, tokens, vocab]` in f32.
    fn forward(&self, ids: &[Vec<u32>], mut cache: Option<&mut KvCache<T>>) -> Result<Array3<f32>> {
        let c = &self.config;
        let (batch, tq) = batch_shape(ids)?;
        let past = match &cache {
            Some(cache) if cache.layers.first().is_some_and(|l| l.len() != batch) => {
                return Err(ModelError::Input(format!(
                    "the KV cache holds {} sequences, the batch has {batch}",
                    cache.layers[0].len()
                )))
            }
            Some(cache) => cache.len,
            None => 0,
        };
        let positions: Vec<usize> = (0..batch).flat_map(|_| past..past + tq).collect();
        let flat: Vec<u32> = ids.concat();
        let mut x = embedding(self.embed.view(), &flat)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(x.view(), layer.input_norm.view(), c.rms_norm_eps)?;
            let a = self.attention(l, &h, &positions, batch, cache.as_deref_mut())?;
            x = add(x.view(), a.view())?;
            let h = rms_norm(x.view(), layer.post_norm.view(), c.rms_norm_eps)?;
            let f = layer.ffn.forward(&h)?;
            x = add(x.view(), f.view())?;
        }
        if let Some(cache) = cache {
            cache.len += tq;
        }
        let x = rms_norm(x.view(), self.norm.view(), c.rms_norm_eps)?;
        let logits = matmul_t(&x, self.lm_head.as_ref().unwrap_or(&self.embed), None);
        let logits = logits.mapv(|v| T::from_f32(v).to_f32());
        logits
            .into_shape_with_order((batch, tq, c.vocab_size))
            .map_err(|e| ModelError::Input(e.to_string()))
    }
}
