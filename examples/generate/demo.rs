//! The built-in demo model: a small Mixtral-like configuration with seeded
//! random weights, held in memory under Mixtral's real tensor names so it
//! goes through the same loader as a checkpoint.

use serde_json::{json, Value};

use crate::checkpoint::MemorySource;
use crate::config::ModelConfig;

/// The size of the built-in demo model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoSize {
    /// Vocab 512, hidden 128, 4 layers, 8 experts (ffn 256), top-2: runs in
    /// well under a second on a CPU.
    Small,
    /// Two Mixtral-8x7B-shaped layers (vocab 32000, hidden 4096, 32 heads / 8
    /// KV heads, 8 experts of ffn 14336, top-2): a size that fills a GPU. Its
    /// random weights take about 13 GB of host memory while they load.
    Mixtral2L,
    /// A small ModuleFormer / MoLM-shaped model (vocab 512, n_embd 128, 4
    /// layers, 8 attention experts of 2 heads, 8 MLP experts of 256, top-2
    /// of each, "mlp" routers): see `moduleformer::demo`.
    Molm,
}

impl DemoSize {
    /// Parses `small`, `mixtral-2l` or `molm`.
    pub fn parse(v: &str) -> Option<DemoSize> {
        match v {
            "small" => Some(DemoSize::Small),
            "mixtral-2l" => Some(DemoSize::Mixtral2L),
            "molm" => Some(DemoSize::Molm),
            _ => None,
        }
    }

    /// The name `--demo` takes.
    pub fn name(self) -> &'static str {
        match self {
            DemoSize::Small => "small",
            DemoSize::Mixtral2L => "mixtral-2l",
            DemoSize::Molm => "molm",
        }
    }
}

/// The demo model's `config.json`.
pub fn config_json(size: DemoSize) -> Value {
    let (vocab, hidden, layers, heads, kv_heads, ffn, positions) = match size {
        DemoSize::Small => (512, 128, 4, 8, 4, 256, 4096),
        DemoSize::Mixtral2L => (32000, 4096, 2, 32, 8, 14336, 32768),
        DemoSize::Molm => return crate::moduleformer::demo::config_json(),
    };
    json!({
        "model_type": "mixtral",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": null,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "intermediate_size": ffn,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1e6,
        "max_position_embeddings": positions,
        "hidden_act": "silu",
        "tie_word_embeddings": false
    })
}

/// splitmix64: deterministic values without a `rand` dependency.
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    /// Uniform in `[-1, 1)`.
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// `n` values uniform in `[-scale, scale)`.
    pub(crate) fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.next()).collect()
    }
}

/// Random Mixtral-named weights for `config` (a Mixtral config), the same for
/// the same `seed`: matrices uniform in `±sqrt(3 / fan_in)`, norm weights
/// around 1.
pub fn weights(config: &ModelConfig, seed: u64) -> MemorySource {
    let mut rng = SplitMix(seed);
    let mut src = MemorySource::default();
    let (h, d, e, i) = (
        config.hidden_size,
        config.head_dim,
        config.num_experts,
        config.moe_ffn,
    );
    let mut matrix = |src: &mut MemorySource, name: String, rows: usize, cols: usize| {
        let scale = (3.0 / cols as f32).sqrt();
        src.insert(name, vec![rows, cols], rng.values(rows * cols, scale));
    };
    matrix(
        &mut src,
        "model.embed_tokens.weight".into(),
        config.vocab_size,
        h,
    );
    matrix(&mut src, "lm_head.weight".into(), config.vocab_size, h);
    for l in 0..config.num_layers {
        let a = format!("model.layers.{l}.self_attn");
        matrix(
            &mut src,
            format!("{a}.q_proj.weight"),
            config.num_heads * d,
            h,
        );
        matrix(
            &mut src,
            format!("{a}.k_proj.weight"),
            config.num_kv_heads * d,
            h,
        );
        matrix(
            &mut src,
            format!("{a}.v_proj.weight"),
            config.num_kv_heads * d,
            h,
        );
        matrix(
            &mut src,
            format!("{a}.o_proj.weight"),
            h,
            config.num_heads * d,
        );
        let m = format!("model.layers.{l}.block_sparse_moe");
        matrix(&mut src, format!("{m}.gate.weight"), e, h);
        for x in 0..e {
            matrix(&mut src, format!("{m}.experts.{x}.w1.weight"), i, h);
            matrix(&mut src, format!("{m}.experts.{x}.w3.weight"), i, h);
            matrix(&mut src, format!("{m}.experts.{x}.w2.weight"), h, i);
        }
    }
    let mut norm_rng = SplitMix(seed ^ 0x5EED);
    let mut norm = |name: String| {
        let values = norm_rng
            .values(h, 0.1)
            .into_iter()
            .map(|v| 1.0 + v)
            .collect();
        src.insert(name, vec![h], values);
    };
    for l in 0..config.num_layers {
        norm(format!("model.layers.{l}.input_layernorm.weight"));
        norm(format!("model.layers.{l}.post_attention_layernorm.weight"));
    }
    norm("model.norm.weight".into());
    src
}
