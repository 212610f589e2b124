//! The generate example's GPU path against its CPU path, on tiny random
//! checkpoints of each family written here (expert ffn 128 and hidden 128,
//! the smallest sizes the GPU MoE kernels take): bf16 logits on the GPU vs
//! f32 logits on the CPU, greedy tokens, KV-cache decoding vs the full
//! forward on the GPU, and input errors.
//!
//! Tolerance: bf16 keeps 8 significant bits (a rounding error up to 2^-9 ≈
//! 0.2%), and the forward rounds every stored activation (projections,
//! norms, RoPE, attention, experts, residuals) over two layers. On these
//! models the CPU's own bf16 run differs from its f32 run by 0.6-1.5% of the
//! largest |logit|, so the GPU bf16 logits must lie within [`LOGIT_TOL`] = 4%
//! of the largest |logit| of the f32 reference, everywhere. The router
//! weights are scaled up 8x so that no token's top-k choice hangs on a
//! near-tie of router logits (such a flip changes a token's output by far
//! more than rounding; the seeds below have none under the CPU's bf16 run).

#[allow(dead_code)]
#[path = "../examples/generate/checkpoint.rs"]
mod checkpoint;
#[allow(dead_code)]
#[path = "../examples/generate/config.rs"]
mod config;
#[path = "common/decode.rs"]
mod decode;
#[allow(dead_code)]
#[path = "../examples/generate/decoding.rs"]
mod decoding;
#[allow(dead_code)]
#[path = "../examples/generate/device.rs"]
mod device;
#[allow(dead_code)]
#[path = "../examples/generate/error.rs"]
mod error;
#[allow(dead_code)]
#[path = "../examples/generate/gpu.rs"]
mod gpu;
#[allow(dead_code)]
#[path = "../examples/generate/model.rs"]
mod model;
#[allow(dead_code)]
#[path = "common/checkpoint.rs"]
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dropless::cuda::CudaBackend;
use dropless::Element;
use half::bf16;
use ndarray::{s, Array3, Axis};
use safetensors::tensor::Dtype;

use checkpoint::Checkpoint;
use config::ModelConfig;
use decode::{decode_step_by_step, prompts, PROMPTS};
use decoding::HostModel;
use device::DeviceModel;
use gpu::{GpuKvCache, GpuModel};
use model::Model;
use writer::{temp_dir, tiny_config, tiny_tensors, write_checkpoint, Dims, TINY};

/// The GPU tests' sizes: expert ffn and hidden 128.
const GPU: Dims = Dims {
    vocab: 64,
    hidden: 128,
    heads: 4,
    kv_heads: 2,
    head_dim: 32,
    experts: 4,
    ffn: 128,
    dense_ffn: 96,
};

/// Each family with a seed whose greedy top-1 margins are large (0.11 to
/// 0.26 over four steps, against bf16 logit errors near 0.02).
const FAMILIES: [(&str, u64); 4] = [
    ("mixtral", 34),
    ("qwen3_moe", 35),
    ("olmoe", 36),
    ("qwen2_moe", 31),
];

/// Largest |GPU bf16 - CPU f32| logit error, as a fraction of the largest
/// |logit| of the reference (see the module docs).
const LOGIT_TOL: f32 = 0.04;

/// Greedy steps generated in the tests.
const STEPS: usize = 4;

fn backend() -> Arc<CudaBackend> {
    Arc::new(CudaBackend::try_new().expect("a CUDA device"))
}

/// Writes `family`'s GPU-sized checkpoint (router weights scaled 8x) into a
/// fresh folder.
fn write_model(family: &str, seed: u64) -> PathBuf {
    let mut tensors = tiny_tensors(family, &GPU, seed);
    for (name, (_, data)) in tensors.0.iter_mut() {
        if name.ends_with(".gate.weight") {
            data.iter_mut().for_each(|v| *v *= 8.0);
        }
    }
    let dir = temp_dir(&format!("gpu-{family}"));
    write_checkpoint(&dir, &tiny_config(family, &GPU), &tensors, Dtype::F32, 1);
    dir
}

/// Loads a checkpoint folder as a host model of `T`.
fn load<T: Element>(dir: &Path) -> Model<T> {
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = ModelConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
    Model::load(config, &Checkpoint::open(dir).unwrap()).unwrap()
}

/// Loads a checkpoint folder as a bf16 model on the GPU.
fn load_gpu(dir: &Path) -> GpuModel<bf16> {
    GpuModel::upload(backend(), load::<bf16>(dir)).unwrap()
}

/// The largest |value| of `a`.
fn scale(a: &Array3<f32>) -> f32 {
    a.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// The largest |a - b|; panics on a shape mismatch or a non-finite value.
fn max_error(what: &str, a: &Array3<f32>, b: &Array3<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim(), "{what}: shapes differ");
    assert!(a.iter().all(|v| v.is_finite()), "{what}: non-finite logits");
    a.iter()
        .zip(b.iter())
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Asserts `got` lies within `LOGIT_TOL` of the largest |logit| of `expect`.
fn assert_close(what: &str, got: &Array3<f32>, expect: &Array3<f32>) {
    let (err, s) = (max_error(what, got, expect), scale(expect));
    eprintln!(
        "{what}: max abs error {err:.4} ({:.2}% of the logit scale {s:.3})",
        100.0 * err / s
    );
    assert!(
        err <= LOGIT_TOL * s,
        "{what}: max abs error {err} exceeds {LOGIT_TOL} x {s} (errors far above ~1.5% usually mean \
         a routing flip on a near-tied router logit, or a kernel bug)"
    );
}

/// The smallest top-1 minus top-2 logit gap over positions `from..` of every
/// sequence.
fn min_margin(logits: &Array3<f32>, from: usize) -> f32 {
    let mut margin = f32::INFINITY;
    for seq in logits.axis_iter(Axis(0)) {
        for row in seq.slice(s![from.., ..]).rows() {
            let mut v = row.to_vec();
            v.sort_by(|a, b| b.total_cmp(a));
            margin = margin.min(v[0] - v[1]);
        }
    }
    margin
}

#[test]
#[ignore = "requires a CUDA device"]
fn gpu_bf16_logits_match_cpu_f32_for_every_family() {
    for (family, seed) in FAMILIES {
        let dir = write_model(family, seed);
        let expect = load::<f32>(&dir).forward(&prompts(), None).unwrap();
        let got = load_gpu(&dir).forward(&prompts(), None).unwrap();
        assert_close(&format!("{family} prompt logits"), &got, &expect);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn gpu_greedy_tokens_match_cpu_when_margins_are_clear() {
    for (family, seed) in FAMILIES {
        let dir = write_model(family, seed);
        let cpu = load::<f32>(&dir);
        let gpu = load_gpu(&dir);
        let expect = cpu.generate(&prompts(), STEPS).unwrap().tokens;
        // Every generated token is the argmax of the full forward over the
        // sequence so far: with a top-1 margin above twice the GPU's logit
        // error there, the GPU must choose the same token.
        let inputs: Vec<Vec<u32>> = expect.iter().map(|t| t[..t.len() - 1].to_vec()).collect();
        let from = PROMPTS[0].len() - 1;
        let cpu_logits = cpu.forward(&inputs, None).unwrap();
        let gpu_logits = gpu.forward(&inputs, None).unwrap();
        let margin = min_margin(&cpu_logits, from);
        let err = max_error(
            family,
            &gpu_logits.slice(s![.., from.., ..]).to_owned(),
            &cpu_logits.slice(s![.., from.., ..]).to_owned(),
        );
        eprintln!("{family}: smallest top-1 margin {margin:.4}, GPU logit error {err:.4}");
        assert!(
            margin >= 0.05 && margin > 2.0 * err,
            "{family} seed {seed}: top-1 margin {margin} is too small against the GPU error {err}; pick another seed"
        );
        let got = gpu.generate(&prompts(), STEPS).unwrap();
        assert_eq!(got.tokens, expect, "{family}: GPU greedy tokens differ");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn gpu_cached_decoding_matches_gpu_full_forward() {
    for (family, seed) in FAMILIES {
        let dir = write_model(family, seed);
        let gpu = load_gpu(&dir);
        // Room for exactly the tokens fed: the prompt and all but the last
        // generated token.
        let capacity = PROMPTS[0].len() + STEPS - 1;
        let mut cache = GpuKvCache::new(&gpu, PROMPTS.len(), capacity).unwrap();
        let decoded =
            decode_step_by_step(STEPS, |input| gpu.forward(input, Some(&mut cache)).unwrap());
        let generated = gpu.generate(&prompts(), STEPS).unwrap();
        assert_eq!(
            generated.tokens, decoded.seqs,
            "{family}: generate() differs from step-by-step decoding"
        );
        let full = gpu.forward(&decoded.full_input(), None).unwrap();
        for (step, got, expect) in decoded.step_pairs(&full) {
            assert_close(&format!("{family} cached step {step}"), &got, &expect);
        }
        // The cache is full: one more token must be refused, not overrun.
        let err = gpu
            .forward(&decoded.next_input, Some(&mut cache))
            .unwrap_err()
            .to_string();
        assert!(err.contains("KV cache"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn gpu_bad_inputs_give_errors() {
    let dir = write_model("mixtral", 1);
    let gpu = load_gpu(&dir);
    let err = gpu
        .forward(&[vec![1, 2, 600]], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("600") && err.contains("64"), "{err}");
    let err = gpu
        .forward(&[vec![1, 2], vec![3]], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("one length"), "{err}");
    let err = gpu.forward(&[], None).unwrap_err().to_string();
    assert!(err.contains("at least one"), "{err}");
    let mut cache = GpuKvCache::new(&gpu, 2, 8).unwrap();
    let err = gpu
        .forward(&[vec![1]], Some(&mut cache))
        .unwrap_err()
        .to_string();
    assert!(err.contains("KV cache"), "{err}");
    let none = gpu.generate(&[vec![1, 2]], 0).unwrap();
    assert_eq!(none.tokens, vec![vec![1, 2]]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn configs_outside_the_gpu_kernels_are_refused_naming_the_field() {
    for family in ["mixtral", "qwen3_moe", "olmoe", "qwen2_moe"] {
        let config = ModelConfig::from_json(&tiny_config(family, &TINY)).unwrap();
        let err = gpu::check_supported(&config).unwrap_err().to_string();
        assert!(
            err.contains(config.moe_ffn_field())
                && err.contains("128")
                && err.contains("--device cpu"),
            "{family}: {err}"
        );
        let config = ModelConfig::from_json(&tiny_config(family, &GPU)).unwrap();
        gpu::check_supported(&config).unwrap_or_else(|e| panic!("{family}: {e}"));
    }
    let odd = Dims { hidden: 132, ..GPU };
    let config = ModelConfig::from_json(&tiny_config("qwen3_moe", &odd)).unwrap();
    let err = gpu::check_supported(&config).unwrap_err().to_string();
    assert!(err.contains("hidden_size") && err.contains("132"), "{err}");
}
