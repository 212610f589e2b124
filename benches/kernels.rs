//! Block-sparse kernels against cuBLAS dense GEMM of the same useful FLOPs,
//! measured in the same run with CUDA events, bf16.
//!
//! Shapes: a Mixtral-like layer (tokens 16384, hidden 4096, ffn 14336, 8
//! experts, top-2: 32768 assignments, 4096 per expert) and a smaller one.
//! Each sparse op multiplies `P x hidden x ffn` useful multiply-adds (P the
//! padded assignments); its cuBLAS yardstick is the dense GEMM of those three
//! dimensions in the same operand layout. A summary table with TFLOP/s and the
//! ratio to cuBLAS is printed after criterion's own lines.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dropless::cuda::gemm::matmul_into;
use dropless::cuda::{
    dds_into, dsd_into, sdd_into, CudaBackend, DeviceBlockSparse, DeviceTensor, DeviceTopology,
};
use dropless::Topology;
use half::bf16;

struct Shape {
    name: &'static str,
    tokens: usize,
    hidden: usize,
    ffn: usize,
    experts: usize,
    top_k: usize,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "mixtral_t16384",
        tokens: 16384,
        hidden: 4096,
        ffn: 14336,
        experts: 8,
        top_k: 2,
    },
    Shape {
        name: "small_t4096",
        tokens: 4096,
        hidden: 1024,
        ffn: 2048,
        experts: 8,
        top_k: 2,
    },
];

type Run<'a> = Box<dyn FnMut() -> dropless::Result<()> + 'a>;

struct Case<'a> {
    op: &'static str,
    sparse: Run<'a>,
    dense: Run<'a>,
}

/// Operands of one shape: uniform routing (each expert gets T*k/E tokens).
struct Operands {
    x: DeviceTensor<bf16>,
    w: DeviceTensor<bf16>,
    s: DeviceBlockSparse<bf16>,
    sdd_out: DeviceBlockSparse<bf16>,
    dsd_out: DeviceTensor<bf16>,
    dsd_t_out: DeviceTensor<bf16>,
    dds_a: DeviceTensor<bf16>,
    dds_t_a: DeviceTensor<bf16>,
    dds_out: DeviceTensor<bf16>,
    dds_t_out: DeviceTensor<bf16>,
    // Dense yardsticks: [P, h] x [ffn, h]^T -> [P, ffn] and friends.
    d_a: DeviceTensor<bf16>,
    d_w: DeviceTensor<bf16>,
    d_c: DeviceTensor<bf16>,
    d_s: DeviceTensor<bf16>,
    d_out_h: DeviceTensor<bf16>,
    d_out_w: DeviceTensor<bf16>,
    d_a_hf: DeviceTensor<bf16>,
    d_out_hf: DeviceTensor<bf16>,
    d_out_hp: DeviceTensor<bf16>,
    padded: usize,
}

fn operands(b: &CudaBackend, s: &Shape) -> Operands {
    let per_expert = s.tokens * s.top_k / s.experts;
    let counts = vec![per_expert; s.experts];
    let host = Topology::from_tokens_per_expert(&counts, s.ffn, 128).unwrap();
    let padded = host.rows();
    let topo = std::sync::Arc::new(DeviceTopology::from_host(b, &host).unwrap());
    let rnd = |shape: &[usize], seed| common::random_tensor::<bf16>(b, shape, seed, 0.05);
    let cols = s.experts * s.ffn;
    let s_data = rnd(&[topo.max_blocks() * 128 * 128], 3);
    Operands {
        x: rnd(&[padded, s.hidden], 1),
        w: rnd(&[cols, s.hidden], 2),
        s: DeviceBlockSparse::new(topo.clone(), s_data).unwrap(),
        sdd_out: DeviceBlockSparse::zeros(b, topo.clone()).unwrap(),
        dsd_out: DeviceTensor::zeros(b, &[padded, s.hidden]).unwrap(),
        dsd_t_out: DeviceTensor::zeros(b, &[cols, s.hidden]).unwrap(),
        dds_a: rnd(&[s.hidden, padded], 4),
        dds_t_a: rnd(&[s.hidden, cols], 5),
        dds_out: DeviceTensor::zeros(b, &[s.hidden, cols]).unwrap(),
        dds_t_out: DeviceTensor::zeros(b, &[s.hidden, padded]).unwrap(),
        d_a: rnd(&[padded, s.hidden], 6),
        d_w: rnd(&[s.ffn, s.hidden], 7),
        d_c: DeviceTensor::zeros(b, &[padded, s.ffn]).unwrap(),
        d_s: rnd(&[padded, s.ffn], 8),
        d_out_h: DeviceTensor::zeros(b, &[padded, s.hidden]).unwrap(),
        d_out_w: DeviceTensor::zeros(b, &[s.ffn, s.hidden]).unwrap(),
        d_a_hf: rnd(&[s.hidden, s.ffn], 9),
        d_out_hf: DeviceTensor::zeros(b, &[s.hidden, s.ffn]).unwrap(),
        d_out_hp: DeviceTensor::zeros(b, &[s.hidden, padded]).unwrap(),
        padded,
    }
}

fn bench_kernels(c: &mut Criterion) {
    let Some(backend) = common::gpu_or_skip("kernels") else {
        return;
    };
    let b = &backend;
    let mut summary = Vec::new();
    for shape in SHAPES {
        let mut o = operands(b, shape);
        let flops = 2.0 * o.padded as f64 * shape.hidden as f64 * shape.ffn as f64;
        // Each closure borrows its own fields of `o`.
        let Operands {
            x,
            w,
            s,
            sdd_out,
            dsd_out,
            dsd_t_out,
            dds_a,
            dds_t_a,
            dds_out,
            dds_t_out,
            d_a,
            d_w,
            d_c,
            d_s,
            d_out_h,
            d_out_w,
            d_a_hf,
            d_out_hf,
            d_out_hp,
            padded: _,
        } = &mut o;
        let (x, w, s, d_a, d_w, d_s, d_a_hf) = (&*x, &*w, &*s, &*d_a, &*d_w, &*d_s, &*d_a_hf);
        let (dds_a, dds_t_a) = (&*dds_a, &*dds_t_a);
        let cases: Vec<Case> = vec![
            Case {
                op: "sdd_nt (x·W1ᵀ)",
                sparse: Box::new(move || sdd_into(b, x, w, true, sdd_out)),
                dense: Box::new(move || matmul_into(b, d_a, false, d_w, true, d_c, false)),
            },
            Case {
                op: "dsd_nn (h·W2)",
                sparse: Box::new(move || dsd_into(b, s.view(), w, dsd_out)),
                dense: Box::new(move || matmul_into(b, d_s, false, d_w, false, d_out_h, false)),
            },
            Case {
                op: "dsd_tn (hᵀ·dy)",
                sparse: Box::new(move || dsd_into(b, s.t(), x, dsd_t_out)),
                dense: Box::new(move || matmul_into(b, d_s, true, d_a, false, d_out_w, false)),
            },
            Case {
                op: "dds_nn (A·S)",
                sparse: Box::new(move || dds_into(b, dds_a, s.view(), dds_out)),
                dense: Box::new(move || matmul_into(b, dds_a, false, d_s, false, d_out_hf, false)),
            },
            Case {
                op: "dds_nt (A·Sᵀ)",
                sparse: Box::new(move || dds_into(b, dds_t_a, s.t(), dds_t_out)),
                dense: Box::new(move || matmul_into(b, d_a_hf, false, d_s, true, d_out_hp, false)),
            },
        ];
        let mut group = c.benchmark_group(format!("kernels/{}", shape.name));
        group.throughput(Throughput::Elements(flops as u64));
        group.sample_size(10);
        for mut case in cases {
            group.bench_function(case.op, |bencher| {
                bencher.iter_custom(|iters| common::time_gpu(b, iters, &mut case.sparse))
            });
            let sparse = common::median_ms(b, 7, &mut case.sparse);
            let dense = common::median_ms(b, 7, &mut case.dense);
            summary.push((shape.name, case.op, flops, sparse, dense));
        }
        group.finish();
    }
    println!(
        "\n{:<16} {:<16} {:>12} {:>14} {:>8}",
        "shape", "op", "TFLOP/s", "cuBLAS TFLOP/s", "ratio"
    );
    for (shape, op, flops, sparse, dense) in summary {
        let (ts, td) = (flops / sparse / 1e9, flops / dense / 1e9);
        println!(
            "{shape:<16} {op:<16} {ts:>12.1} {td:>14.1} {:>8.2}",
            ts / td
        );
    }
}

criterion_group!(benches, bench_kernels);
criterion_main!(benches);
