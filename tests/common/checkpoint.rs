//! Tiny random Hugging Face checkpoints for the generate example's tests:
//! each family's `config.json` and real tensor names, written with the
//! `safetensors` crate (single file or sharded, f32 or bf16, per-expert or
//! transformers-5 fused experts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::bf16;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};

/// The sizes of a tiny model (two layers; Qwen3-MoE's layer 1 is dense).
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub vocab: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub experts: usize,
    pub ffn: usize,
    pub dense_ffn: usize,
}

/// The CPU tests' sizes: expert ffn 32 (divisible by the CPU block size 16).
pub const TINY: Dims = Dims {
    vocab: 40,
    hidden: 32,
    heads: 4,
    kv_heads: 2,
    head_dim: 8,
    experts: 4,
    ffn: 32,
    dense_ffn: 48,
};

/// The number of layers of every tiny model.
pub const LAYERS: usize = 2;

/// A checkpoint under construction: tensors by name, as f32.
pub struct Tensors(pub BTreeMap<String, (Vec<usize>, Vec<f32>)>);

impl Tensors {
    /// Adds a random tensor: norm weights around 1, matrices and biases
    /// uniform in `±1/sqrt(fan_in)`.
    pub fn add(&mut self, rng: &mut rand::rngs::StdRng, name: String, shape: &[usize]) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if shape.len() == 1 && !name.ends_with("bias") {
            (0..n).map(|_| 1.0 + rng.gen_range(-0.2..0.2)).collect()
        } else {
            let scale = 1.0 / (*shape.last().unwrap() as f32).sqrt();
            (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
        };
        self.0.insert(name, (shape.to_vec(), data));
    }
}

/// A tiny config.json of `family` with sizes `d`.
pub fn tiny_config(family: &str, d: &Dims) -> Value {
    let mut c = json!({
        "model_type": family,
        "vocab_size": d.vocab,
        "hidden_size": d.hidden,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "head_dim": d.head_dim,
        "num_experts_per_tok": 2,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}
    });
    let (e, i, dense) = (d.experts, d.ffn, d.dense_ffn);
    let extra = match family {
        "mixtral" => {
            assert_eq!(d.hidden, d.heads * d.head_dim, "mixtral derives head_dim");
            json!({"num_local_experts": e, "intermediate_size": i, "head_dim": null})
        }
        "qwen3_moe" => {
            json!({"num_experts": e, "moe_intermediate_size": i, "intermediate_size": dense,
                   "norm_topk_prob": true, "mlp_only_layers": [1], "decoder_sparse_step": 1})
        }
        "olmoe" => {
            json!({"num_experts": e, "intermediate_size": i, "norm_topk_prob": false, "clip_qkv": 1.5})
        }
        "qwen2_moe" => {
            json!({"num_experts": e, "moe_intermediate_size": i, "intermediate_size": dense,
                   "shared_expert_intermediate_size": dense, "norm_topk_prob": false})
        }
        other => panic!("no tiny config for {other}"),
    };
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// Random weights in `family`'s real tensor names for `tiny_config(family, d)`.
pub fn tiny_tensors(family: &str, d: &Dims, seed: u64) -> Tensors {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut t = Tensors(BTreeMap::new());
    let (v, h, hd, hq, hkv, e, i, dense) = (
        d.vocab,
        d.hidden,
        d.head_dim,
        d.heads,
        d.kv_heads,
        d.experts,
        d.ffn,
        d.dense_ffn,
    );
    t.add(&mut rng, "model.embed_tokens.weight".into(), &[v, h]);
    t.add(&mut rng, "lm_head.weight".into(), &[v, h]);
    t.add(&mut rng, "model.norm.weight".into(), &[h]);
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        t.add(&mut rng, format!("{p}.input_layernorm.weight"), &[h]);
        t.add(
            &mut rng,
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
        );
        for (name, rows) in [
            ("q_proj", hq * hd),
            ("k_proj", hkv * hd),
            ("v_proj", hkv * hd),
        ] {
            t.add(&mut rng, format!("{p}.self_attn.{name}.weight"), &[rows, h]);
            if family == "qwen2_moe" {
                t.add(&mut rng, format!("{p}.self_attn.{name}.bias"), &[rows]);
            }
        }
        t.add(
            &mut rng,
            format!("{p}.self_attn.o_proj.weight"),
            &[h, hq * hd],
        );
        match family {
            "qwen3_moe" => {
                t.add(&mut rng, format!("{p}.self_attn.q_norm.weight"), &[hd]);
                t.add(&mut rng, format!("{p}.self_attn.k_norm.weight"), &[hd]);
            }
            "olmoe" => {
                t.add(&mut rng, format!("{p}.self_attn.q_norm.weight"), &[hq * hd]);
                t.add(
                    &mut rng,
                    format!("{p}.self_attn.k_norm.weight"),
                    &[hkv * hd],
                );
            }
            _ => {}
        }
        if family == "qwen3_moe" && l == 1 {
            t.add(&mut rng, format!("{p}.mlp.gate_proj.weight"), &[dense, h]);
            t.add(&mut rng, format!("{p}.mlp.up_proj.weight"), &[dense, h]);
            t.add(&mut rng, format!("{p}.mlp.down_proj.weight"), &[h, dense]);
            continue;
        }
        let (m, gate, up, down) = match family {
            "mixtral" => (format!("{p}.block_sparse_moe"), "w1", "w3", "w2"),
            _ => (format!("{p}.mlp"), "gate_proj", "up_proj", "down_proj"),
        };
        t.add(&mut rng, format!("{m}.gate.weight"), &[e, h]);
        for x in 0..e {
            t.add(&mut rng, format!("{m}.experts.{x}.{gate}.weight"), &[i, h]);
            t.add(&mut rng, format!("{m}.experts.{x}.{up}.weight"), &[i, h]);
            t.add(&mut rng, format!("{m}.experts.{x}.{down}.weight"), &[h, i]);
        }
        if family == "qwen2_moe" {
            t.add(
                &mut rng,
                format!("{m}.shared_expert.gate_proj.weight"),
                &[dense, h],
            );
            t.add(
                &mut rng,
                format!("{m}.shared_expert.up_proj.weight"),
                &[dense, h],
            );
            t.add(
                &mut rng,
                format!("{m}.shared_expert.down_proj.weight"),
                &[h, dense],
            );
            t.add(&mut rng, format!("{m}.shared_expert_gate.weight"), &[1, h]);
        }
    }
    t
}

/// Rewrites the per-expert tensors of every MoE layer into the
/// transformers-5 fused layout under `mlp.experts.{gate_up_proj, down_proj}`.
pub fn fuse_experts(t: &Tensors, family: &str, d: &Dims) -> Tensors {
    let (e, i, h) = (d.experts, d.ffn, d.hidden);
    let (old_block, gate, up, down) = match family {
        "mixtral" => ("block_sparse_moe", "w1", "w3", "w2"),
        _ => ("mlp", "gate_proj", "up_proj", "down_proj"),
    };
    let mut out = BTreeMap::new();
    for (name, value) in &t.0 {
        if !name.contains(".experts.") {
            out.insert(name.replace(old_block, "mlp"), value.clone());
        }
    }
    for l in 0..LAYERS {
        let m = format!("model.layers.{l}.{old_block}");
        if !t.0.contains_key(&format!("{m}.gate.weight")) {
            continue;
        }
        let mut gate_up = Vec::with_capacity(e * 2 * i * h);
        let mut down_all = Vec::with_capacity(e * h * i);
        for x in 0..e {
            gate_up.extend_from_slice(&t.0[&format!("{m}.experts.{x}.{gate}.weight")].1);
            gate_up.extend_from_slice(&t.0[&format!("{m}.experts.{x}.{up}.weight")].1);
            down_all.extend_from_slice(&t.0[&format!("{m}.experts.{x}.{down}.weight")].1);
        }
        let f = format!("model.layers.{l}.mlp.experts");
        out.insert(format!("{f}.gate_up_proj"), (vec![e, 2 * i, h], gate_up));
        out.insert(format!("{f}.down_proj"), (vec![e, h, i], down_all));
    }
    Tensors(out)
}

/// A fresh empty folder under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    // Tests of one binary run in parallel threads of one process: a counter
    // keeps two calls with the same tag from sharing (and deleting) a folder.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "dropless-generate-{tag}-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes config.json and the tensors (as `dtype`, in `shards` files with an
/// index when `shards > 1`) into `dir`.
pub fn write_checkpoint(dir: &Path, config: &Value, t: &Tensors, dtype: Dtype, shards: usize) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        t.0.iter()
            .map(|(name, (shape, data))| {
                let b = match dtype {
                    Dtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    Dtype::BF16 => data
                        .iter()
                        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                        .collect(),
                    other => panic!("unsupported test dtype {other:?}"),
                };
                (name.clone(), shape.clone(), b)
            })
            .collect();
    let per_shard = bytes.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (s, chunk) in bytes.chunks(per_shard).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", s + 1, shards)
        };
        let views: Vec<(String, TensorView)> = chunk
            .iter()
            .map(|(n, shape, b)| (n.clone(), TensorView::new(dtype, shape.clone(), b).unwrap()))
            .collect();
        for (n, _, _) in chunk {
            weight_map.insert(n.clone(), Value::String(file.clone()));
        }
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
    }
    if shards > 1 {
        let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
}
