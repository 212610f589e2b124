//! The dMoE layer (forward, and forward + backward) against the three
//! baselines, bf16, for layer shapes named after real models, at 4096 and
//! 16384 tokens. All timed with CUDA events in one run:
//! - dense FFN of the same active FLOPs (`tokens x top_k*ffn`, cuBLAS),
//! - capacity-factor MoE (capacity factor 1.0, strided-batched cuBLAS),
//! - a per-expert loop of cuBLAS GEMMs (reads the counts back to the host).
//!
//! A summary table (milliseconds, TFLOP/s of useful work, ratios to the
//! dropless forward) is printed after criterion's lines.

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use dropless::config::{AuxLossCoefficients, MlpKind, MoeConfig};
use dropless::cuda::baselines::{capacity_moe, dense_ffn, expert_loop, route_tokens};
use dropless::cuda::moe::{backward, forward_train, DeviceMoeWeights};
use dropless::cuda::CudaBackend;
use half::bf16;

struct Model {
    name: &'static str,
    hidden: usize,
    ffn: usize,
    experts: usize,
    top_k: usize,
    mlp: MlpKind,
}

const MODELS: &[Model] = &[
    Model {
        name: "mixtral_8x7b",
        hidden: 4096,
        ffn: 14336,
        experts: 8,
        top_k: 2,
        mlp: MlpKind::Glu,
    },
    Model {
        name: "olmoe_1b_7b",
        hidden: 2048,
        ffn: 1024,
        experts: 64,
        top_k: 8,
        mlp: MlpKind::Glu,
    },
    Model {
        name: "qwen3_30b_a3b",
        hidden: 2048,
        ffn: 768,
        experts: 128,
        top_k: 8,
        mlp: MlpKind::Glu,
    },
    Model {
        name: "switch",
        hidden: 1024,
        ffn: 4096,
        experts: 64,
        top_k: 1,
        mlp: MlpKind::Plain,
    },
];

const TOKENS: &[usize] = &[4096, 16384];

fn weights(b: &CudaBackend, c: &MoeConfig) -> DeviceMoeWeights<bf16> {
    let rows = c.num_experts * c.ffn;
    let scale = 1.0 / (c.hidden as f32).sqrt();
    DeviceMoeWeights {
        router: common::random_tensor(b, &[c.num_experts, c.hidden], 1, scale),
        w1: common::random_tensor(b, &[rows, c.hidden], 2, scale),
        w3: (c.mlp == MlpKind::Glu).then(|| common::random_tensor(b, &[rows, c.hidden], 3, scale)),
        w2: common::random_tensor(b, &[rows, c.hidden], 4, 1.0 / (c.ffn as f32).sqrt()),
    }
}

/// Free device memory in bytes (for the memory column).
fn free_bytes() -> f64 {
    cudarc::driver::result::mem_get_info()
        .map(|(free, _)| free as f64)
        .unwrap_or(f64::NAN)
}

fn bench_layer(c: &mut Criterion) {
    let Some(backend) = common::gpu_or_skip("layer") else {
        return;
    };
    let b = &backend;
    let aux = AuxLossCoefficients {
        load_balancing: 0.01,
        z_loss: 0.001,
    };
    let mut rows = Vec::new();
    for model in MODELS {
        let config = MoeConfig {
            hidden: model.hidden,
            ffn: model.ffn,
            num_experts: model.experts,
            top_k: model.top_k,
            mlp: model.mlp,
            renormalize: true,
            block_size: 128,
        };
        let w = weights(b, &config);
        let mats = if model.mlp == MlpKind::Glu { 3.0 } else { 2.0 };
        for &tokens in TOKENS {
            let flops =
                2.0 * mats * (tokens * model.top_k) as f64 * (model.hidden * model.ffn) as f64;
            let x = common::random_tensor::<bf16>(b, &[tokens, model.hidden], 5, 1.0);
            let dy = common::random_tensor::<bf16>(b, &[tokens, model.hidden], 6, 1.0);
            let dense_rows = model.top_k * model.ffn;
            let dw1 = common::random_tensor::<bf16>(b, &[dense_rows, model.hidden], 7, 0.02);
            let dw3 = (model.mlp == MlpKind::Glu)
                .then(|| common::random_tensor::<bf16>(b, &[dense_rows, model.hidden], 8, 0.02));
            let dw2 = common::random_tensor::<bf16>(b, &[dense_rows, model.hidden], 9, 0.02);

            b.synchronize().unwrap();
            let before = free_bytes();
            let (_, saved) = forward_train(b, &config, &w, &x).unwrap();
            b.synchronize().unwrap();
            let saved_gib = (before - free_bytes()) / (1u64 << 30) as f64;
            drop(saved);

            let mut fwd = || forward_train(b, &config, &w, &x).map(drop);
            let mut fwd_bwd = || {
                let (_, saved) = forward_train(b, &config, &w, &x)?;
                backward(b, &config, &w, &saved, &dy, aux).map(drop)
            };
            let mut dense = || dense_ffn(b, &x, &dw1, dw3.as_ref(), &dw2, model.mlp).map(drop);
            let mut capacity = || {
                let routing = route_tokens(b, &config, &w, &x)?;
                capacity_moe(b, &config, &w, &x, &routing, 1.0).map(drop)
            };
            let mut looped = || {
                let routing = route_tokens(b, &config, &w, &x)?;
                expert_loop(b, &config, &w, &x, &routing).map(drop)
            };
            let name = format!("layer/{}_t{tokens}", model.name);
            let mut group = c.benchmark_group(&name);
            group.sample_size(10);
            let mut medians = Vec::new();
            let cases: [(&str, &mut dyn FnMut() -> dropless::Result<()>); 5] = [
                ("dropless_forward", &mut fwd),
                ("dropless_forward_backward", &mut fwd_bwd),
                ("dense_ffn_forward", &mut dense),
                ("capacity_cf1_forward", &mut capacity),
                ("expert_loop_forward", &mut looped),
            ];
            for (case, f) in cases {
                group.bench_function(case, |bencher| {
                    bencher.iter_custom(|iters| common::time_gpu(b, iters, &mut *f))
                });
                medians.push((case, common::median_ms(b, 5, &mut *f)));
            }
            group.finish();
            rows.push((name, flops, saved_gib, medians));
        }
    }
    println!("\nms per call (bf16); TFLOP/s = useful forward FLOPs / forward time");
    for (name, flops, saved_gib, medians) in rows {
        let fwd = medians[0].1;
        println!(
            "{name}: dropless fwd {fwd:.3} ms ({:.1} TFLOP/s), saved state {saved_gib:.2} GiB",
            flops / fwd / 1e9
        );
        for (case, ms) in &medians[1..] {
            println!(
                "    {case:<28} {ms:>9.3} ms   x{:.2} of dropless fwd",
                ms / fwd
            );
        }
    }
}

criterion_group!(benches, bench_layer);
criterion_main!(benches);
