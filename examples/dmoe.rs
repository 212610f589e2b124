//! Runs one dropless MoE layer forward and prints its throughput.
//!
//! ```text
//! cargo run --release --example dmoe -- [--device auto|cpu|cuda] [--dtype f32|bf16|f16]
//!     [--tokens N] [--hidden H] [--ffn F] [--experts E] [--top-k K] [--glu] [--iters N]
//! ```
//!
//! `--device auto` (the default) uses the GPU when one works and falls back to
//! the CPU reference otherwise, saying why.

use std::process::ExitCode;
use std::time::Instant;

use dropless::reference::moe::{forward, MlpKind, MoeConfig, MoeWeights};
use dropless::{DType, Element};
use half::{bf16, f16};
use ndarray::Array2;

#[derive(Debug, Clone, Copy, PartialEq)]
enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

struct Args {
    device: DeviceChoice,
    dtype: DType,
    tokens: usize,
    config: MoeConfig,
    iters: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        device: DeviceChoice::Auto,
        dtype: DType::F32,
        tokens: 512,
        config: MoeConfig {
            hidden: 512,
            ffn: 1024,
            num_experts: 8,
            top_k: 2,
            mlp: MlpKind::Glu,
            renormalize: true,
            block_size: dropless::DEFAULT_BLOCK_SIZE,
        },
        iters: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag} takes a positive integer, found {v}"))
        };
        match flag.as_str() {
            "--device" => {
                args.device = match value()?.as_str() {
                    "auto" => DeviceChoice::Auto,
                    "cpu" => DeviceChoice::Cpu,
                    "cuda" => DeviceChoice::Cuda,
                    v => return Err(format!("--device takes auto, cpu or cuda, found {v}")),
                }
            }
            "--dtype" => {
                args.dtype = match value()?.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    v => return Err(format!("--dtype takes f32, bf16 or f16, found {v}")),
                }
            }
            "--tokens" => args.tokens = number(value()?)?,
            "--hidden" => args.config.hidden = number(value()?)?,
            "--ffn" => args.config.ffn = number(value()?)?,
            "--experts" => args.config.num_experts = number(value()?)?,
            "--top-k" => args.config.top_k = number(value()?)?,
            "--iters" => args.iters = number(value()?)?.max(1),
            "--glu" => args.config.mlp = MlpKind::Glu,
            "--plain" => args.config.mlp = MlpKind::Plain,
            "-h" | "--help" => {
                return Err(
                    "usage: dmoe [--device auto|cpu|cuda] [--dtype f32|bf16|f16] \
                     [--tokens N] [--hidden H] [--ffn F] [--experts E] [--top-k K] \
                     [--glu|--plain] [--iters N]"
                        .into(),
                )
            }
            other => return Err(format!("unknown flag {other} (try --help)")),
        }
    }
    Ok(args)
}

/// Useful FLOPs of one forward: per assignment, one (plain) or two (GLU)
/// up-projections and one down-projection of `hidden x ffn`.
fn forward_flops(config: &MoeConfig, tokens: usize) -> f64 {
    let mats = match config.mlp {
        MlpKind::Plain => 2.0,
        MlpKind::Glu => 3.0,
    };
    2.0 * mats * (tokens * config.top_k) as f64 * (config.hidden * config.ffn) as f64
}

fn run_cpu<T: Element>(args: &Args) -> Result<(), String> {
    let config = &args.config;
    let weights = MoeWeights::<T>::random(config, 7).map_err(|e| e.to_string())?;
    let x = Array2::from_shape_fn((args.tokens, config.hidden), |(t, h)| {
        T::from_f32((((t * 31 + h * 17) % 101) as f32 / 50.0 - 1.0) * 0.5)
    });
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..args.iters {
        let start = Instant::now();
        out = Some(forward(config, &weights, x.view()).map_err(|e| e.to_string())?);
        best = best.min(start.elapsed().as_secs_f64());
    }
    let out = out.expect("at least one iteration");
    let checksum: f64 = out.output.iter().map(|v| v.to_f32() as f64).sum();
    println!(
        "tokens per expert: {:?}; load-balancing loss {:.4}, z-loss {:.4}, output checksum {checksum:.6}",
        out.tokens_per_expert.to_vec(),
        out.load_balancing_loss,
        out.z_loss
    );
    println!(
        "device cpu (reference), dtype {}: {} tokens in {:.3} ms: {:.0} tokens/s, {:.2} GFLOP/s",
        T::DTYPE,
        args.tokens,
        best * 1e3,
        args.tokens as f64 / best,
        forward_flops(config, args.tokens) / best / 1e9
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let c = &args.config;
    println!(
        "dMoE layer: hidden {}, ffn {}, experts {}, top-{}, {:?} MLP, {} tokens",
        c.hidden, c.ffn, c.num_experts, c.top_k, c.mlp, args.tokens
    );
    if args.device != DeviceChoice::Cpu {
        match dropless::cuda::CudaBackend::try_new() {
            Ok(_) if !dropless::cuda::KERNELS_BUILT => {
                eprintln!("{}", dropless::Error::KernelsNotBuilt)
            }
            Ok(_) => eprintln!(
                "a CUDA device is present; the GPU layer path is not wired into this example yet"
            ),
            Err(e) => eprintln!("GPU unavailable ({e}); running on the CPU"),
        }
        if args.device == DeviceChoice::Cuda {
            return ExitCode::FAILURE;
        }
    }
    let result = match args.dtype {
        DType::F32 => run_cpu::<f32>(&args),
        DType::BF16 => run_cpu::<bf16>(&args),
        DType::F16 => run_cpu::<f16>(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
