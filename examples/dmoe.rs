//! Runs one dropless MoE layer forward and prints its throughput.
//!
//! ```text
//! cargo run --release --example dmoe -- [--device auto|cpu|cuda] [--dtype f32|bf16|f16]
//!     [--tokens N] [--hidden H] [--ffn F] [--experts E] [--top-k K] [--glu] [--iters N]
//! ```
//!
//! `--dtype` defaults to bf16 on the GPU and f32 on the CPU.
//! `--device auto` (the default) uses the GPU when one works and falls back to
//! the CPU reference otherwise, saying why. The GPU runs bf16 or f16 (f32 is
//! CPU-only); `--dtype` picks the type.

use std::process::ExitCode;
use std::time::Instant;

use dropless::config::{MlpKind, MoeConfig, MoeWeights};
use dropless::layer::{Backend, DroplessMoe, LayerElement};
use dropless::memory::{available_host_memory, check_fits};
use dropless::DType;
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
    dtype: Option<DType>,
    tokens: usize,
    config: MoeConfig,
    iters: usize,
}

const USAGE: &str = "usage: dmoe [--device auto|cpu|cuda] [--dtype f32|bf16|f16] \
                     [--tokens N] [--hidden H] [--ffn F] [--experts E] [--top-k K] \
                     [--glu|--plain] [--iters N]";

/// The parsed command line, or `None` for `--help`.
fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        device: DeviceChoice::Auto,
        dtype: None,
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
                    "f32" => Some(DType::F32),
                    "bf16" => Some(DType::BF16),
                    "f16" => Some(DType::F16),
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
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown flag {other} (try --help)")),
        }
    }
    Ok(Some(args))
}

/// Refuses a run that cannot fit, before anything is allocated: the host
/// holds the weights and the input (and on the CPU the whole forward), the
/// GPU the weights and the forward. Names the need, what is available, and
/// the largest `--tokens` that fits.
fn check_memory(args: &Args, backend: &Backend, dtype: DType) -> Result<(), String> {
    let c = &args.config;
    let need = |tokens: usize| c.weight_bytes(dtype) + c.forward_activation_bytes(tokens, dtype);
    let (memory, available) = match backend {
        Backend::Cpu => ("host", available_host_memory()),
        Backend::Cuda(gpu) => {
            if let Some(host) = available_host_memory() {
                let input = (args.tokens * c.hidden * dtype.size_in_bytes()) as u128;
                check_fits(
                    "the weights and the input",
                    "host",
                    c.weight_bytes(dtype) + input,
                    host,
                    || "pass a smaller --tokens or --hidden".into(),
                )
                .map_err(|e| e.to_string())?;
            }
            let (free, _) = gpu.memory_info().map_err(|e| e.to_string())?;
            ("device", Some(free))
        }
    };
    let Some(available) = available else {
        return Ok(());
    };
    let what = format!("a dMoE forward of {} tokens ({dtype})", args.tokens);
    check_fits(&what, memory, need(args.tokens), available, || {
        let fits = c.max_forward_tokens(available, dtype);
        if fits == 0 {
            "even one token does not fit: pass a smaller --hidden, --ffn or --experts".into()
        } else {
            format!("pass --tokens {fits} or fewer")
        }
    })
    .map_err(|e| e.to_string())
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

fn run<T: LayerElement>(args: &Args, backend: Backend) -> Result<(), String> {
    let config = &args.config;
    let weights = MoeWeights::<T>::random(config, 7).map_err(|e| e.to_string())?;
    let x = Array2::from_shape_fn((args.tokens, config.hidden), |(t, h)| {
        T::from_f32((((t * 31 + h * 17) % 101) as f32 / 50.0 - 1.0) * 0.5)
    });
    let device = backend.clone();
    let layer = DroplessMoe::new(*config, weights, backend).map_err(|e| e.to_string())?;
    let x = layer.upload(x.view()).map_err(|e| e.to_string())?;
    let mut out = layer.forward(&x).map_err(|e| e.to_string())?;
    let seconds = match &device {
        Backend::Cuda(gpu) => {
            // Warm-up done above; CUDA events time the queued forwards.
            let ms = gpu
                .time_ms(args.iters, || {
                    out = layer.forward(&x)?;
                    Ok(())
                })
                .map_err(|e| e.to_string())?;
            ms / 1e3
        }
        Backend::Cpu => {
            let mut best = f64::INFINITY;
            for _ in 0..args.iters {
                let start = Instant::now();
                out = layer.forward(&x).map_err(|e| e.to_string())?;
                best = best.min(start.elapsed().as_secs_f64());
            }
            best
        }
    };
    let read = |e: dropless::Error| e.to_string();
    let output = layer.download(&out.output).map_err(read)?;
    let checksum: f64 = output.iter().map(|v| v.to_f32() as f64).sum();
    let tokens_per_expert = layer.download(&out.tokens_per_expert).map_err(read)?;
    let lbl = layer.download(&out.load_balancing_loss).map_err(read)?[[0]];
    let z = layer.download(&out.z_loss).map_err(read)?[[0]];
    println!(
        "tokens per expert: {:?}; load-balancing loss {lbl:.4}, z-loss {z:.4}, output checksum {checksum:.6}",
        tokens_per_expert.iter().collect::<Vec<_>>(),
    );
    println!(
        "device {}, dtype {}: {} tokens in {:.3} ms: {:.0} tokens/s, {:.1} GFLOP/s",
        match &device {
            Backend::Cuda(gpu) => format!(
                "cuda ({})",
                gpu.context()
                    .name()
                    .unwrap_or_else(|_| "unnamed GPU".into())
            ),
            Backend::Cpu => device.name().to_string(),
        },
        T::DTYPE,
        args.tokens,
        seconds * 1e3,
        args.tokens as f64 / seconds,
        forward_flops(config, args.tokens) / seconds / 1e9
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
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
    let backend = match args.device {
        DeviceChoice::Cpu => Backend::Cpu,
        DeviceChoice::Auto | DeviceChoice::Cuda => match Backend::auto() {
            (Backend::Cuda(gpu), _) => Backend::Cuda(gpu),
            (cpu, why) => {
                let why = why.map(|e| e.to_string()).unwrap_or_default();
                if args.device == DeviceChoice::Cuda {
                    eprintln!("error: --device cuda, but the GPU is unavailable: {why}");
                    return ExitCode::FAILURE;
                }
                eprintln!("GPU unavailable ({why}); running on the CPU reference");
                cpu
            }
        },
    };
    let dtype = match (&backend, args.dtype) {
        (Backend::Cuda(_), Some(DType::F32)) => {
            eprintln!("the GPU kernels take bf16 or f16; running bf16 (pass --dtype f16 for f16)");
            DType::BF16
        }
        (Backend::Cuda(_), None) => DType::BF16,
        (Backend::Cpu, None) => DType::F32,
        (_, Some(d)) => d,
    };
    if let Err(msg) = check_memory(&args, &backend, dtype) {
        eprintln!("error: {msg}");
        return ExitCode::FAILURE;
    }
    let result = match dtype {
        DType::F32 => run::<f32>(&args, backend),
        DType::BF16 => run::<bf16>(&args, backend),
        DType::F16 => run::<f16>(&args, backend),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
