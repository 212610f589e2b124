//! The model configuration, parsed from a Hugging Face `config.json`.

use serde_json::Value;

use crate::error::{ModelError, Result};

/// The supported model families, by `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `mixtral` (`MixtralForCausalLM`).
    Mixtral,
    /// `qwen3_moe` (`Qwen3MoeForCausalLM`): RMSNorm per head on q and k.
    Qwen3Moe,
    /// `olmoe` (`OlmoeForCausalLM`): RMSNorm over the whole q and k projections.
    Olmoe,
    /// `qwen2_moe` (`Qwen2MoeForCausalLM`): a shared expert behind a sigmoid gate.
    Qwen2Moe,
}

/// Where the attention normalises q and k before RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    /// No q/k normalisation.
    None,
    /// RMSNorm over each head (`q_norm.weight` is `[head_dim]`).
    PerHead,
    /// RMSNorm over the whole projection (`q_norm.weight` is `[heads * head_dim]`).
    Whole,
}

/// Everything the model needs from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The family, from `model_type`.
    pub family: Family,
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `num_hidden_layers`.
    pub num_layers: usize,
    /// `num_attention_heads`.
    pub num_heads: usize,
    /// `num_key_value_heads` (defaults to the attention heads).
    pub num_kv_heads: usize,
    /// `head_dim` (null or absent: hidden / heads).
    pub head_dim: usize,
    /// `rms_norm_eps`.
    pub rms_norm_eps: f32,
    /// `rope_theta` or `rope_parameters.rope_theta`.
    pub rope_theta: f32,
    /// `tie_word_embeddings`: the LM head reuses the embedding table.
    pub tie_word_embeddings: bool,
    /// Whether q, k and v projections have biases.
    pub qkv_bias: bool,
    /// Whether the output projection has a bias.
    pub o_bias: bool,
    /// The q/k normalisation of the family.
    pub qk_norm: QkNorm,
    /// OLMoE's `clip_qkv`: q, k and v are clamped to `[-c, c]`.
    pub clip_qkv: Option<f32>,
    /// Attention window, when the config sets one.
    pub sliding_window: Option<usize>,
    /// Routed experts per MoE layer.
    pub num_experts: usize,
    /// `num_experts_per_tok`.
    pub top_k: usize,
    /// FFN size of each routed expert.
    pub moe_ffn: usize,
    /// Whether the top-k routing weights are renormalised to sum to 1.
    pub renormalize: bool,
    /// Per layer: true for a MoE layer, false for a dense MLP.
    pub sparse_layers: Vec<bool>,
    /// FFN size of the dense MLP layers (`intermediate_size`).
    pub dense_ffn: usize,
    /// Qwen2-MoE's `shared_expert_intermediate_size`.
    pub shared_expert_ffn: Option<usize>,
    /// `max_position_embeddings`: the longest sequence the model was made
    /// for, when the config sets it.
    pub max_position_embeddings: Option<usize>,
}

/// Reads a required non-negative integer field.
fn usize_field(v: &Value, field: &str) -> Result<usize> {
    match v.get(field) {
        None | Some(Value::Null) => Err(ModelError::config(field, "is required but missing")),
        Some(x) => x.as_u64().map(|n| n as usize).ok_or_else(|| {
            ModelError::config(field, format!("must be a non-negative integer, found {x}"))
        }),
    }
}

/// Reads an optional non-negative integer field (absent or null: `None`).
fn opt_usize(v: &Value, field: &str) -> Result<Option<usize>> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => usize_field(v, field).map(Some),
    }
}

/// Reads an optional number field (absent or null: `None`).
fn opt_f32(v: &Value, field: &str) -> Result<Option<f32>> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(|n| Some(n as f32))
            .ok_or_else(|| ModelError::config(field, format!("must be a number, found {x}"))),
    }
}

/// Reads an optional boolean field (absent or null: `default`).
fn bool_field(v: &Value, field: &str, default: bool) -> Result<bool> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_bool()
            .ok_or_else(|| ModelError::config(field, format!("must be true or false, found {x}"))),
    }
}

/// Reads an optional string field.
fn opt_str<'a>(v: &'a Value, field: &str) -> Result<Option<&'a str>> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_str()
            .map(Some)
            .ok_or_else(|| ModelError::config(field, format!("must be a string, found {x}"))),
    }
}

/// The RoPE base: `rope_theta`, else `rope_parameters.rope_theta`, else
/// `default`. Scaled RoPE variants are rejected.
fn rope_theta(v: &Value, default: f32) -> Result<f32> {
    for field in ["rope_scaling", "rope_parameters"] {
        let Some(params) = v.get(field).filter(|p| !p.is_null()) else {
            continue;
        };
        let kind = opt_str(params, "rope_type")?.or(opt_str(params, "type")?);
        if let Some(kind) = kind.filter(|k| *k != "default") {
            return Err(ModelError::config(
                &format!("{field}.rope_type"),
                format!("`{kind}` RoPE scaling is not supported; only the default RoPE is"),
            ));
        }
        if let Some(factor) = opt_f32(params, "partial_rotary_factor")?.filter(|f| *f != 1.0) {
            return Err(ModelError::config(
                &format!("{field}.partial_rotary_factor"),
                format!("{factor} is not supported; only full rotary (1.0) is"),
            ));
        }
    }
    let theta = match opt_f32(v, "rope_theta")? {
        Some(t) => t,
        None => match v.get("rope_parameters").filter(|p| !p.is_null()) {
            Some(p) => opt_f32(p, "rope_theta")?.unwrap_or(default),
            None => default,
        },
    };
    if theta > 0.0 && theta.is_finite() {
        Ok(theta)
    } else {
        Err(ModelError::config(
            "rope_theta",
            format!("must be positive, found {theta}"),
        ))
    }
}

/// Per layer, whether it is a MoE layer (Qwen's `decoder_sparse_step` and
/// `mlp_only_layers`; every layer for the other families).
fn sparse_layers(v: &Value, family: Family, num_layers: usize) -> Result<Vec<bool>> {
    if matches!(family, Family::Mixtral | Family::Olmoe) {
        return Ok(vec![true; num_layers]);
    }
    let step = opt_usize(v, "decoder_sparse_step")?.unwrap_or(1);
    if step == 0 {
        return Err(ModelError::config(
            "decoder_sparse_step",
            "must be at least 1",
        ));
    }
    let mut dense = vec![false; num_layers];
    if let Some(list) = v.get("mlp_only_layers").filter(|l| !l.is_null()) {
        let list = list.as_array().ok_or_else(|| {
            ModelError::config("mlp_only_layers", "must be a list of layer indices")
        })?;
        for item in list {
            match item.as_u64().map(|i| i as usize) {
                Some(i) if i < num_layers => dense[i] = true,
                _ => {
                    return Err(ModelError::config(
                        "mlp_only_layers",
                        format!(
                            "{item} is not a layer index below num_hidden_layers = {num_layers}"
                        ),
                    ))
                }
            }
        }
    }
    Ok((0..num_layers)
        .map(|l| !dense[l] && (l + 1) % step == 0)
        .collect())
}

impl ModelConfig {
    /// The `config.json` field that holds the routed experts' FFN size.
    pub fn moe_ffn_field(&self) -> &'static str {
        match self.family {
            Family::Mixtral | Family::Olmoe => "intermediate_size",
            Family::Qwen3Moe | Family::Qwen2Moe => "moe_intermediate_size",
        }
    }

    /// Parses a `config.json` document.
    pub fn from_json(v: &Value) -> Result<Self> {
        let family = match opt_str(v, "model_type")? {
            Some("mixtral") => Family::Mixtral,
            Some("qwen3_moe") => Family::Qwen3Moe,
            Some("olmoe") => Family::Olmoe,
            Some("qwen2_moe") => Family::Qwen2Moe,
            Some(other) => {
                return Err(ModelError::config(
                    "model_type",
                    format!("unknown model_type `{other}`: supported are mixtral, qwen3_moe, olmoe, qwen2_moe"),
                ))
            }
            None => return Err(ModelError::config("model_type", "is required but missing")),
        };
        if let Some(act) = opt_str(v, "hidden_act")?.filter(|a| *a != "silu") {
            return Err(ModelError::config(
                "hidden_act",
                format!("`{act}` is not supported; the experts use silu"),
            ));
        }
        let hidden_size = usize_field(v, "hidden_size")?;
        let num_layers = usize_field(v, "num_hidden_layers")?;
        let num_heads = usize_field(v, "num_attention_heads")?;
        let num_kv_heads = opt_usize(v, "num_key_value_heads")?.unwrap_or(num_heads);
        let vocab_size = usize_field(v, "vocab_size")?;
        for (field, n) in [
            ("hidden_size", hidden_size),
            ("num_hidden_layers", num_layers),
            ("num_attention_heads", num_heads),
            ("num_key_value_heads", num_kv_heads),
            ("vocab_size", vocab_size),
        ] {
            if n == 0 {
                return Err(ModelError::config(field, "must be positive"));
            }
        }
        if num_heads % num_kv_heads != 0 {
            return Err(ModelError::config(
                "num_key_value_heads",
                format!("{num_kv_heads} must divide num_attention_heads = {num_heads}"),
            ));
        }
        let head_dim = match opt_usize(v, "head_dim")? {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(ModelError::config(
                    "head_dim",
                    format!("is null and hidden_size = {hidden_size} is not a multiple of num_attention_heads = {num_heads}"),
                ))
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(ModelError::config(
                "head_dim",
                format!("must be even and positive, found {head_dim}"),
            ));
        }
        let (expert_field, ffn_field, eps_default, theta_default) = match family {
            Family::Mixtral => ("num_local_experts", "intermediate_size", 1e-5, 1e6),
            Family::Olmoe => ("num_experts", "intermediate_size", 1e-5, 1e4),
            Family::Qwen3Moe => ("num_experts", "moe_intermediate_size", 1e-6, 1e4),
            Family::Qwen2Moe => ("num_experts", "moe_intermediate_size", 1e-6, 1e4),
        };
        // transformers 5 writes `num_local_experts` for every family.
        let num_experts = match opt_usize(v, expert_field)? {
            Some(n) => n,
            None => opt_usize(v, "num_local_experts")?
                .ok_or_else(|| ModelError::config(expert_field, "is required but missing"))?,
        };
        let top_k = usize_field(v, "num_experts_per_tok")?;
        if num_experts == 0 || top_k == 0 || top_k > num_experts {
            return Err(ModelError::config(
                "num_experts_per_tok",
                format!("{top_k} must lie in 1..={num_experts} ({expert_field})"),
            ));
        }
        let moe_ffn = usize_field(v, ffn_field)?;
        let sparse_layers = sparse_layers(v, family, num_layers)?;
        let dense_ffn = if sparse_layers.iter().all(|&s| s) {
            moe_ffn
        } else {
            usize_field(v, "intermediate_size")?
        };
        let attention_bias = bool_field(v, "attention_bias", false)?;
        let (qkv_bias, o_bias) = match family {
            Family::Mixtral => (false, false),
            Family::Qwen2Moe => (bool_field(v, "qkv_bias", true)?, false),
            Family::Qwen3Moe | Family::Olmoe => (attention_bias, attention_bias),
        };
        let sliding_window = match family {
            Family::Mixtral => opt_usize(v, "sliding_window")?,
            Family::Qwen3Moe | Family::Qwen2Moe if bool_field(v, "use_sliding_window", false)? => {
                return Err(ModelError::config(
                    "use_sliding_window",
                    "sliding-window attention is not supported for Qwen models; set it to false",
                ))
            }
            _ => None,
        };
        Ok(ModelConfig {
            family,
            vocab_size,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: opt_f32(v, "rms_norm_eps")?.unwrap_or(eps_default),
            rope_theta: rope_theta(v, theta_default)?,
            tie_word_embeddings: bool_field(v, "tie_word_embeddings", false)?,
            qkv_bias,
            o_bias,
            qk_norm: match family {
                Family::Qwen3Moe => QkNorm::PerHead,
                Family::Olmoe => QkNorm::Whole,
                Family::Mixtral | Family::Qwen2Moe => QkNorm::None,
            },
            clip_qkv: match family {
                Family::Olmoe => opt_f32(v, "clip_qkv")?,
                _ => None,
            },
            sliding_window,
            num_experts,
            top_k,
            moe_ffn,
            renormalize: match family {
                Family::Mixtral => true,
                _ => bool_field(v, "norm_topk_prob", false)?,
            },
            sparse_layers,
            dense_ffn,
            shared_expert_ffn: match family {
                Family::Qwen2Moe => Some(usize_field(v, "shared_expert_intermediate_size")?),
                _ => None,
            },
            max_position_embeddings: opt_usize(v, "max_position_embeddings")?,
        })
    }
}
