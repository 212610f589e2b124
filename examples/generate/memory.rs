//! What a generate run needs in memory, estimated from the config before
//! anything is loaded, and the check that refuses a run that cannot fit
//! (naming the need, what is available and the flag that fits).

use dropless::config::{MlpKind, MoeConfig};
use dropless::memory::check_fits;
use dropless::{DType, DEFAULT_BLOCK_SIZE};

use crate::config::{ModelConfig, QkNorm};
use crate::error::Result;

/// The number of parameters of the model: every tensor the loader reads.
pub fn parameter_count(c: &ModelConfig) -> u128 {
    let (h, d) = (c.hidden_size as u128, c.head_dim as u128);
    let (q, kv) = (c.num_heads as u128 * d, c.num_kv_heads as u128 * d);
    let if_set = |on: bool, n: u128| if on { n } else { 0 };
    let attention = 2 * h * q
        + 2 * h * kv
        + if_set(c.qkv_bias, q + 2 * kv)
        + if_set(c.o_bias, h)
        + match c.qk_norm {
            QkNorm::None => 0,
            QkNorm::PerHead => 2 * d,
            QkNorm::Whole => q + kv,
        };
    let experts = c.num_experts as u128;
    let moe = experts * h
        + 3 * experts * c.moe_ffn as u128 * h
        + c.shared_expert_ffn.map_or(0, |f| 3 * h * f as u128 + h);
    let dense = 3 * h * c.dense_ffn as u128;
    let layers: u128 = c
        .sparse_layers
        .iter()
        .map(|&sparse| attention + 2 * h + if sparse { moe } else { dense })
        .sum();
    let vocab = c.vocab_size as u128 * h;
    layers + vocab + if_set(!c.tie_word_embeddings, vocab) + h
}

/// Bytes a run needs on the host and on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// Host bytes.
    pub host: u128,
    /// Device bytes (0 on the CPU).
    pub device: u128,
}

/// The shape of a run.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// The run dtype.
    pub dtype: DType,
    /// Whether the model runs on the GPU.
    pub on_gpu: bool,
    /// Bytes per parameter that the weight source holds while the model
    /// runs: 4 for the demo's in-memory f32 weights, 0 for a memory-mapped
    /// checkpoint (its pages can be dropped).
    pub source_bytes: u128,
    /// Sequences.
    pub batch: usize,
    /// Prompt tokens per sequence.
    pub prompt_len: usize,
    /// `--max-new-tokens`.
    pub max_new_tokens: usize,
}

/// The memory `run` needs for the model of `c`: the weights in the run dtype
/// (on the host while they load, then on the GPU), the source's own copy,
/// the KV cache, and the prefill's activations (the f32 logits and, per
/// MoE layer, the dMoE forward's bound from
/// [`MoeConfig::forward_activation_bytes`]).
pub fn estimate(c: &ModelConfig, run: &Run) -> Need {
    let s = run.dtype.size_in_bytes() as u128;
    let params = parameter_count(c);
    let model = params * s;
    let positions = (run.prompt_len + run.max_new_tokens) as u128;
    let kv_width = (c.num_kv_heads * c.head_dim) as u128;
    let kv_cache = 2 * c.num_layers as u128 * run.batch as u128 * positions * kv_width * s;
    let tokens = run.batch * run.prompt_len;
    let moe = MoeConfig {
        hidden: c.hidden_size,
        ffn: c.moe_ffn,
        num_experts: c.num_experts,
        top_k: c.top_k,
        mlp: MlpKind::Glu,
        renormalize: c.renormalize,
        block_size: DEFAULT_BLOCK_SIZE,
    };
    let activations = tokens as u128 * c.vocab_size as u128 * 4 * 2
        + tokens as u128 * c.hidden_size as u128 * s * 8
        + moe.forward_activation_bytes(tokens, run.dtype);
    let source = params * run.source_bytes;
    if run.on_gpu {
        Need {
            host: source + model,
            device: model + kv_cache + activations,
        }
    } else {
        Need {
            host: source + model + kv_cache + activations,
            device: 0,
        }
    }
}

/// Refuses `run` when its [`estimate`] exceeds the available host or device
/// memory (`None`: unknown, not checked). The hint names `--dtype bf16` when
/// an f32 run would fit in bf16, else a smaller demo or model.
pub fn check(
    c: &ModelConfig,
    run: &Run,
    host_available: Option<u64>,
    device_available: Option<u64>,
) -> Result<()> {
    let need = estimate(c, run);
    let what = format!(
        "the model ({} parameters in {}{})",
        parameter_count(c),
        run.dtype,
        if run.source_bytes > 0 {
            ", next to the demo's f32 weights"
        } else {
            ""
        }
    );
    let smaller = || {
        let half = Run {
            dtype: DType::BF16,
            ..*run
        };
        let fits = |n: Need| {
            host_available.is_none_or(|a| n.host <= u128::from(a))
                && device_available.is_none_or(|a| n.device <= u128::from(a))
        };
        if run.dtype == DType::F32 && fits(estimate(c, &half)) {
            "pass --dtype bf16 (half the memory per weight)".to_string()
        } else if run.source_bytes > 0 {
            "use --demo small, or a machine with more memory".to_string()
        } else {
            "use a smaller model, or a machine with more memory".to_string()
        }
    };
    if let Some(available) = host_available {
        check_fits(&what, "host", need.host, available, smaller)?;
    }
    if let Some(available) = device_available {
        check_fits(&what, "device", need.device, available, smaller)?;
    }
    Ok(())
}
