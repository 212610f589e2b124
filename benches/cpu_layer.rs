//! CPU bench of the reference dMoE forward on the shapes of issue 11: one
//! layer, top-2 of 8 experts, GLU, block size 128. Prints the median time and
//! GFLOP/s over the useful FLOPs `6 * tokens * top_k * hidden * ffn` (the
//! three expert projections), the count `scripts/bench-torch-moe.py` uses.
//!
//! `cargo bench --bench cpu_layer [-- ITERS] [DTYPE]` (default 5 timed runs
//! after one warm-up; `f32` or `bf16` runs only the rows of that dtype).

use std::time::Instant;

use dropless::config::{MlpKind, MoeConfig, MoeWeights};
use dropless::reference::moe::forward;
use dropless::Element;
use half::bf16;
use ndarray::Array2;

/// One timed shape: `(tokens, hidden, ffn)`.
type Shape = (usize, usize, usize);

/// Median seconds of `iters` forwards of the layer `shape` in `T`.
fn time_layer<T: Element>(shape: Shape, iters: usize) -> f64 {
    let (tokens, hidden, ffn) = shape;
    let config = MoeConfig {
        hidden,
        ffn,
        num_experts: 8,
        top_k: 2,
        mlp: MlpKind::Glu,
        renormalize: true,
        block_size: 128,
    };
    let weights = MoeWeights::<T>::random(&config, 1).expect("valid config");
    let x = Array2::from_shape_fn((tokens, hidden), |(t, h)| {
        T::from_f32(((t * 7 + h * 13) % 23) as f32 / 11.5 - 1.0)
    });
    forward(&config, &weights, x.view()).expect("forward");
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(forward(&config, &weights, x.view()).expect("forward"));
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let iters = args
        .iter()
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(5)
        .max(1);
    let only = args.iter().find(|a| *a == "f32" || *a == "bf16");
    println!(
        "dropless CPU reference dMoE forward, top-2 of 8, GLU, {} rayon threads, median of {iters}",
        rayon::current_num_threads()
    );
    println!("| tokens | hidden | ffn | dtype | ms | GFLOP/s |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let runs: [(Shape, &str); 3] = [
        ((512, 512, 1024), "f32"),
        ((2048, 1024, 2048), "f32"),
        ((2048, 1024, 2048), "bf16"),
    ];
    for (shape, dtype) in runs {
        if only.is_some_and(|d| d != dtype) {
            continue;
        }
        let secs = match dtype {
            "f32" => time_layer::<f32>(shape, iters),
            _ => time_layer::<bf16>(shape, iters),
        };
        let (t, h, f) = shape;
        let flops = 6.0 * (t * 2) as f64 * h as f64 * f as f64;
        println!(
            "| {t} | {h} | {f} | {dtype} | {:.1} | {:.1} |",
            secs * 1e3,
            flops / secs / 1e9
        );
    }
}
