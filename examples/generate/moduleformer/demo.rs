//! The `--demo molm` model: a small ModuleFormer-shaped configuration with
//! seeded random weights under IBM's tensor names, loaded through the same
//! loader as a checkpoint.

use serde_json::{json, Value};

use super::config::{GateType, MolmConfig};
use crate::checkpoint::MemorySource;
use crate::demo::SplitMix;

/// The demo's `config.json`.
pub fn config_json() -> Value {
    json!({
        "model_type": "moduleformer",
        "vocab_size": 512,
        "n_embd": 128,
        "n_layer": 4,
        "n_head": 2,
        "att_hidden": 64,
        "ffd_hidden": 256,
        "n_att_experts": 8,
        "k_att": 2,
        "n_mlp_experts": 8,
        "k_mlp": 2,
        "gating_size": 64,
        "gate_type": "mlp",
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "block_size": 512,
        "history_length": 512
    })
}

/// Random weights for `config`, the same for the same `seed`: matrices
/// uniform in `±sqrt(3 / fan_in)`, LayerNorm weights around 1, biases small.
pub fn weights(config: &MolmConfig, seed: u64) -> MemorySource {
    let mut rng = SplitMix(seed);
    let mut src = MemorySource::default();
    let c = config;
    let (h, a, f, g) = (c.n_embd, c.att_hidden, c.ffd_hidden, c.gating_size);
    let mut put = |src: &mut MemorySource, name: String, shape: Vec<usize>, fan_in: usize| {
        let n = shape.iter().product();
        let scale = (3.0 / fan_in as f32).sqrt();
        src.insert(name, shape, rng.values(n, scale));
    };
    put(
        &mut src,
        "transformer.wte.weight".into(),
        vec![c.vocab_size, h],
        h,
    );
    put(&mut src, "lm_head.weight".into(), vec![c.vocab_size, h], h);
    for l in 0..c.n_layer {
        let p = format!("transformer.h.{l}");
        for (moe, experts, width) in [
            ("attn.q_proj", c.n_att_experts, a),
            ("mlpf", c.n_mlp_experts, f),
        ] {
            let q = format!("{p}.{moe}");
            put(
                &mut src,
                format!("{q}.experts.weight"),
                vec![experts, h, width],
                h,
            );
            put(
                &mut src,
                format!("{q}.output_experts.weight"),
                vec![experts, width, h],
                width,
            );
            match c.gate_type {
                GateType::Mlp => {
                    put(&mut src, format!("{q}.gate.w_gate.0.weight"), vec![g, h], h);
                    put(
                        &mut src,
                        format!("{q}.gate.w_gate.0.bias"),
                        vec![g],
                        100 * h,
                    );
                    put(
                        &mut src,
                        format!("{q}.gate.w_gate.3.weight"),
                        vec![experts, g],
                        g,
                    );
                }
                GateType::Linear => put(
                    &mut src,
                    format!("{q}.gate.w_gate.0.weight"),
                    vec![experts, h],
                    h,
                ),
            }
        }
        if !c.identity_kv() {
            for kv in ["k_proj", "v_proj"] {
                put(&mut src, format!("{p}.attn.{kv}.weight"), vec![a, h], h);
                put(&mut src, format!("{p}.attn.{kv}.bias"), vec![a], 100 * h);
            }
        }
    }
    let mut norm_rng = SplitMix(seed ^ 0x5EED);
    let mut norm = |name: &str| {
        let w = norm_rng
            .values(h, 0.1)
            .into_iter()
            .map(|v| 1.0 + v)
            .collect();
        src.insert(format!("{name}.weight"), vec![h], w);
        src.insert(format!("{name}.bias"), vec![h], norm_rng.values(h, 0.05));
    };
    for l in 0..c.n_layer {
        norm(&format!("transformer.h.{l}.ln_1"));
        norm(&format!("transformer.h.{l}.ln_2"));
    }
    norm("transformer.ln_f");
    src
}
