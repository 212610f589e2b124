//! CPU bench of the reference dMoE forward, so the CPU path has numbers too.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dropless::config::{MlpKind, MoeConfig, MoeWeights};
use dropless::reference::moe::forward;
use ndarray::Array2;

fn bench_reference_forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_reference_forward");
    group.sample_size(10);
    for (name, mlp) in [("glu", MlpKind::Glu), ("plain", MlpKind::Plain)] {
        let config = MoeConfig {
            hidden: 256,
            ffn: 512,
            num_experts: 8,
            top_k: 2,
            mlp,
            renormalize: true,
            block_size: 128,
        };
        let tokens = 256;
        let weights = MoeWeights::<f32>::random(&config, 1).expect("valid config");
        let x = Array2::from_shape_fn((tokens, config.hidden), |(t, h)| {
            ((t * 7 + h * 13) % 23) as f32 / 11.5 - 1.0
        });
        group.throughput(Throughput::Elements(tokens as u64));
        group.bench_function(format!("{name}_h256_f512_e8_k2_t256_f32"), |b| {
            b.iter(|| forward(&config, &weights, x.view()).expect("forward"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_reference_forward);
criterion_main!(benches);
