//! The dMoE layer (forward, and forward + backward) against the three
//! baselines, bf16, for layer shapes named after real models, at 4096 and
//! 16384 tokens. All timed with CUDA events in one run:
//! - dense FFN of the same active FLOPs (`tokens x top_k*ffn`, cuBLAS),
//! - capacity-factor MoE (capacity factor 1.0, strided-batched cuBLAS),
//! - a per-expert loop of cuBLAS GEMMs (reads the counts back to the host).
//!
//! A summary table (milliseconds, TFLOP/s of useful work, ratios to the
//! dropless forward) is printed after criterion's lines.
//!
//! Then a MoLM-350M-4B-shaped ModuleFormer layer (n_embd 1024; mixture of 16
//! attention experts, top 2, 8 heads of 64 (att_hidden 512, the defaults of
//! IBM's `configuration_moduleformer.py`), stick-breaking attention over
//! sequences of 1024 tokens (history_length + block_size); MLP MoE of 32
//! experts, top 2, ffd_hidden 2048, GeLU), bf16, forward, at 4096 and 16384
//! tokens: the block-sparse map / reduce (`cuda::expert_map`) against the
//! same layer computed densely per expert for every token (the loop a naive
//! port does: each expert's query projection, attention and output
//! projection, and each MLP expert, over all tokens; the gate-weighted
//! combine is left out, so the loop's time is a lower bound). Both use a
//! linear router.

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use dropless::config::{AuxLossCoefficients, MlpKind, MoeConfig};
use dropless::cuda::baselines::{capacity_moe, dense_ffn, expert_loop, route_tokens};
use dropless::cuda::elementwise::gelu_in_place;
use dropless::cuda::expert_map::{map, plan, reduce};
use dropless::cuda::gemm::{matmul, matmul_into};
use dropless::cuda::moe::{backward, forward_train, DeviceMoeWeights};
use dropless::cuda::routing::route;
use dropless::cuda::stick_breaking::stick_breaking_cached;
use dropless::cuda::{CudaBackend, DeviceTensor};
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

/// The MoLM-350M-4B-shaped layer's sizes.
const MOLM_HIDDEN: usize = 1024;
const MOLM_HEADS: usize = 8;
const MOLM_HEAD_SIZE: usize = 64;
const MOLM_ATT_EXPERTS: usize = 16;
const MOLM_MLP_EXPERTS: usize = 32;
const MOLM_K: usize = 2;
const MOLM_FFD: usize = 2048;
const MOLM_SEQ: usize = 1024;

/// Top-k routing of `x` through a linear router `[experts, hidden]`.
fn molm_route(
    b: &CudaBackend,
    x: &DeviceTensor<bf16>,
    router: &DeviceTensor<bf16>,
) -> dropless::Result<dropless::cuda::routing::DeviceRouting> {
    let mut logits = DeviceTensor::<f32>::zeros(b, &[x.shape()[0], router.shape()[0]])?;
    matmul_into(b, x, false, router, true, &mut logits, false)?;
    route(b, &logits, MOLM_K, false)
}

fn bench_molm_layer(c: &mut Criterion) {
    let Some(backend) = common::gpu_or_skip("layer/molm") else {
        return;
    };
    let b = &backend;
    let att = MOLM_HEADS * MOLM_HEAD_SIZE;
    let s_h = 1.0 / (MOLM_HIDDEN as f32).sqrt();
    let t = |shape: &[usize], seed: u64, scale: f32| {
        common::random_tensor::<bf16>(b, shape, seed, scale)
    };
    let att_router = t(&[MOLM_ATT_EXPERTS, MOLM_HIDDEN], 11, s_h);
    let mlp_router = t(&[MOLM_MLP_EXPERTS, MOLM_HIDDEN], 12, s_h);
    let wq = t(&[MOLM_ATT_EXPERTS * MOLM_HIDDEN, att], 13, s_h);
    let wo = t(
        &[MOLM_ATT_EXPERTS * att, MOLM_HIDDEN],
        14,
        1.0 / (att as f32).sqrt(),
    );
    let wk = t(&[MOLM_HIDDEN, att], 15, s_h);
    let wv = t(&[MOLM_HIDDEN, att], 16, s_h);
    let w1 = t(&[MOLM_MLP_EXPERTS * MOLM_HIDDEN, MOLM_FFD], 17, s_h);
    let w2 = t(
        &[MOLM_MLP_EXPERTS * MOLM_FFD, MOLM_HIDDEN],
        18,
        1.0 / (MOLM_FFD as f32).sqrt(),
    );
    // The naive port's per-expert matrices.
    let per = |n: usize, shape: [usize; 2], seed: u64, scale: f32| -> Vec<DeviceTensor<bf16>> {
        (0..n).map(|e| t(&shape, seed + e as u64, scale)).collect()
    };
    let dq = per(MOLM_ATT_EXPERTS, [MOLM_HIDDEN, att], 100, s_h);
    let do_ = per(MOLM_ATT_EXPERTS, [att, MOLM_HIDDEN], 200, 0.04);
    let d1 = per(MOLM_MLP_EXPERTS, [MOLM_HIDDEN, MOLM_FFD], 300, s_h);
    let d2 = per(MOLM_MLP_EXPERTS, [MOLM_FFD, MOLM_HIDDEN], 400, 0.02);

    let mut rows = Vec::new();
    for &tokens in TOKENS {
        let batch = tokens / MOLM_SEQ;
        let x = t(&[tokens, MOLM_HIDDEN], 19, 1.0);
        let mut sparse = || -> dropless::Result<()> {
            let r = molm_route(b, &x, &att_router)?;
            let p = plan(b, &r.expert_ids, MOLM_ATT_EXPERTS, 128)?;
            let q = map(b, &p, &x, &wq)?.reshape(&[tokens, MOLM_K * att])?;
            let k = matmul(b, &x, false, &wk, false)?;
            let v = matmul(b, &x, false, &wv, false)?;
            let y =
                stick_breaking_cached(b, &q, &k, &v, MOLM_SEQ, batch, MOLM_HEADS, MOLM_HEAD_SIZE)?
                    .reshape(&[tokens * MOLM_K, att])?;
            let a = reduce(b, &p, &y, &wo, &r.weights)?;
            let r = molm_route(b, &a, &mlp_router)?;
            let p = plan(b, &r.expert_ids, MOLM_MLP_EXPERTS, 128)?;
            let mut h = map(b, &p, &a, &w1)?;
            gelu_in_place(b, &mut h.slice_mut().slice_mut(..))?;
            reduce(b, &p, &h, &w2, &r.weights).map(drop)
        };
        let mut dense = || -> dropless::Result<()> {
            let k = matmul(b, &x, false, &wk, false)?;
            let v = matmul(b, &x, false, &wv, false)?;
            let mut a = None;
            for (wq_e, wo_e) in dq.iter().zip(&do_) {
                let q = matmul(b, &x, false, wq_e, false)?;
                let y = stick_breaking_cached(
                    b,
                    &q,
                    &k,
                    &v,
                    MOLM_SEQ,
                    batch,
                    MOLM_HEADS,
                    MOLM_HEAD_SIZE,
                )?;
                a = Some(matmul(b, &y, false, wo_e, false)?);
            }
            let a = a.expect("at least one attention expert");
            for (w1_e, w2_e) in d1.iter().zip(&d2) {
                let mut h = matmul(b, &a, false, w1_e, false)?;
                gelu_in_place(b, &mut h.slice_mut().slice_mut(..))?;
                matmul(b, &h, false, w2_e, false)?;
            }
            Ok(())
        };
        let name = format!("layer/molm_350m_4b_t{tokens}");
        let mut group = c.benchmark_group(&name);
        group.sample_size(10);
        let mut medians = Vec::new();
        let cases: [(&str, &mut dyn FnMut() -> dropless::Result<()>); 2] = [
            ("dropless_forward", &mut sparse),
            ("dense_per_expert_forward", &mut dense),
        ];
        for (case, f) in cases {
            group.bench_function(case, |bencher| {
                bencher.iter_custom(|iters| common::time_gpu(b, iters, &mut *f))
            });
            medians.push((case, common::median_ms(b, 5, &mut *f)));
        }
        group.finish();
        rows.push((name, medians));
    }
    println!("\nMoLM-350M-4B-shaped layer, ms per forward (bf16)");
    for (name, medians) in rows {
        let fwd = medians[0].1;
        println!("{name}: dropless fwd {fwd:.3} ms");
        for (case, ms) in &medians[1..] {
            println!(
                "    {case:<28} {ms:>9.3} ms   x{:.2} of dropless fwd",
                ms / fwd
            );
        }
    }
}

criterion_group!(benches, bench_layer, bench_molm_layer);
criterion_main!(benches);
