//! End-to-end MoE language model: loads a Hugging Face checkpoint folder
//! (Mixtral, Qwen3-MoE, OLMoE, Qwen2-MoE), runs the prompt forward and greedy
//! generation with a KV cache; every MoE layer goes through `dropless`.
//!
//! ```text
//! cargo run --release --example generate -- [--model DIR] [--prompt-ids 1,2,3 [--prompt-ids 4,5,6 ...]]
//!     [--prompt TEXT] [--max-new-tokens N] [--device auto|cpu|cuda] [--dtype f32|bf16|f16]
//!     [--logits-out FILE.npy]
//! ```
//!
//! Without `--model` a built-in demo model (small Mixtral-like config, seeded
//! random weights) runs. `--prompt-ids` repeats for a batch of equal-length
//! sequences; `--prompt` needs `tokenizer.json` in the model folder.
//! `--logits-out` writes the prompt forward's logits (no cache) as a
//! `[batch, seq, vocab]` little-endian f32 `.npy`. Generation always produces
//! `--max-new-tokens` tokens (no stop on end-of-sequence).

mod checkpoint;
mod config;
mod demo;
mod error;
mod model;
mod npy;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use dropless::{DType, Element};
use half::{bf16, f16};

use crate::checkpoint::{Checkpoint, TensorSource};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::Model;

/// The `--device` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

/// The device the model runs on. The CUDA backend slots in as a second
/// variant once the GPU attention, norm and RoPE kernels exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Device {
    /// The ndarray CPU reference.
    Cpu,
}

impl Device {
    /// The CUDA device, or why it cannot be used.
    fn cuda() -> Result<Device, String> {
        dropless::cuda::CudaBackend::try_new().map_err(|e| e.to_string())?;
        Err("the generate example's CUDA path is not wired yet (it needs the GPU attention, RMSNorm and RoPE ops)".into())
    }

    /// Resolves the `--device` choice: `auto` falls back to the CPU, saying why.
    fn select(choice: DeviceChoice) -> Result<Device> {
        match choice {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda => Device::cuda()
                .map_err(|e| ModelError::Input(format!("--device cuda: {e}; use --device cpu"))),
            DeviceChoice::Auto => Device::cuda().or_else(|e| {
                eprintln!("--device auto: {e}; falling back to the CPU");
                Ok(Device::Cpu)
            }),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu (dropless CPU reference)"),
        }
    }
}

/// The parsed command line.
struct Args {
    model: Option<PathBuf>,
    prompt_ids: Vec<Vec<u32>>,
    prompt: Option<String>,
    max_new_tokens: usize,
    device: DeviceChoice,
    dtype: DType,
    logits_out: Option<PathBuf>,
}

const USAGE: &str = "usage: generate [--model DIR] [--prompt-ids 1,2,3 [--prompt-ids 4,5,6 ...]] \
[--prompt TEXT] [--max-new-tokens N] [--device auto|cpu|cuda] [--dtype f32|bf16|f16] [--logits-out FILE.npy]";

/// Parses `1,2,3` into token ids.
fn parse_ids(v: &str) -> Result<Vec<u32>> {
    v.split(',')
        .map(|t| {
            t.trim().parse::<u32>().map_err(|_| {
                ModelError::Input(format!(
                    "--prompt-ids takes comma-separated token ids, found `{t}` in `{v}`"
                ))
            })
        })
        .collect()
}

fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Args> {
    let mut args = Args {
        model: None,
        prompt_ids: Vec::new(),
        prompt: None,
        max_new_tokens: 16,
        device: DeviceChoice::Auto,
        dtype: DType::F32,
        logits_out: None,
    };
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| ModelError::Input(format!("{flag} needs a value ({USAGE})")))
        };
        match flag.as_str() {
            "--model" => args.model = Some(PathBuf::from(value()?)),
            "--prompt-ids" => args.prompt_ids.push(parse_ids(&value()?)?),
            "--prompt" => args.prompt = Some(value()?),
            "--max-new-tokens" => {
                let v = value()?;
                args.max_new_tokens = v.parse().map_err(|_| {
                    ModelError::Input(format!(
                        "--max-new-tokens takes a non-negative integer, found {v}"
                    ))
                })?;
            }
            "--device" => {
                args.device = match value()?.as_str() {
                    "auto" => DeviceChoice::Auto,
                    "cpu" => DeviceChoice::Cpu,
                    "cuda" => DeviceChoice::Cuda,
                    v => {
                        return Err(ModelError::Input(format!(
                            "--device takes auto, cpu or cuda, found {v}"
                        )))
                    }
                }
            }
            "--dtype" => {
                args.dtype = match value()?.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    v => {
                        return Err(ModelError::Input(format!(
                            "--dtype takes f32, bf16 or f16, found {v}"
                        )))
                    }
                }
            }
            "--logits-out" => args.logits_out = Some(PathBuf::from(value()?)),
            "-h" | "--help" => return Err(ModelError::Input(USAGE.into())),
            other => return Err(ModelError::Input(format!("unknown flag {other} ({USAGE})"))),
        }
    }
    if args.prompt.is_some() && !args.prompt_ids.is_empty() {
        return Err(ModelError::Input(
            "pass either --prompt or --prompt-ids, not both".into(),
        ));
    }
    Ok(args)
}

/// Reads and parses `dir/config.json`.
fn read_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::file(&path, e))?;
    let json = serde_json::from_str(&text)
        .map_err(|e| ModelError::file(&path, format!("invalid JSON: {e}")))?;
    ModelConfig::from_json(&json)
}

/// Loads `dir/tokenizer.json`.
fn tokenizer(dir: Option<&Path>) -> Result<tokenizers::Tokenizer> {
    let dir = dir.ok_or_else(|| ModelError::Input("--prompt needs --model DIR with a tokenizer.json (the demo model has none; use --prompt-ids)".into()))?;
    let path = dir.join("tokenizer.json");
    tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| ModelError::file(&path, format!("cannot load the tokenizer: {e}")))
}

/// Loads the model as `T`, runs the prompts and prints the results.
fn run<T: Element, S: TensorSource>(
    args: &Args,
    device: Device,
    config: ModelConfig,
    src: &S,
) -> Result<()> {
    let model = Model::<T>::load(config, src)?;
    let tok = match &args.prompt {
        Some(_) => Some(tokenizer(args.model.as_deref())?),
        None => None,
    };
    let prompts = match (&args.prompt, &tok) {
        (Some(text), Some(tok)) => {
            let enc = tok
                .encode(text.as_str(), true)
                .map_err(|e| ModelError::Input(format!("cannot tokenize --prompt: {e}")))?;
            vec![enc.get_ids().to_vec()]
        }
        _ if args.prompt_ids.is_empty() => vec![(1..=8).collect()],
        _ => args.prompt_ids.clone(),
    };
    if let Some(path) = &args.logits_out {
        let logits = model.forward(&prompts, None)?;
        npy::write(path, &logits)?;
    }
    let generation = model.generate(&prompts, args.max_new_tokens)?;
    for (b, seq) in generation.tokens.iter().enumerate() {
        let ids: Vec<String> = seq.iter().map(u32::to_string).collect();
        println!("sequence {b}: {}", ids.join(" "));
        if let Some(tok) = &tok {
            let text = tok
                .decode(seq, true)
                .map_err(|e| ModelError::Input(format!("cannot decode: {e}")))?;
            println!("text {b}: {text}");
        }
    }
    let batch = prompts.len();
    let prefill_tokens = batch * prompts[0].len();
    let decode_tokens = batch * args.max_new_tokens.saturating_sub(1);
    let rate = |n: usize, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    println!(
        "prefill: {prefill_tokens} tokens in {:.3} s, {:.1} tokens/s",
        generation.prefill_secs,
        rate(prefill_tokens, generation.prefill_secs)
    );
    println!(
        "decode: {decode_tokens} tokens in {:.3} s, {:.1} tokens/s",
        generation.decode_secs,
        rate(decode_tokens, generation.decode_secs)
    );
    println!("device: {device}, dtype {}", T::DTYPE);
    Ok(())
}

/// Dispatches on the run dtype.
fn run_dtype<S: TensorSource>(
    args: &Args,
    device: Device,
    config: ModelConfig,
    src: &S,
) -> Result<()> {
    match args.dtype {
        DType::F32 => run::<f32, S>(args, device, config, src),
        DType::BF16 => run::<bf16, S>(args, device, config, src),
        DType::F16 => run::<f16, S>(args, device, config, src),
    }
}

fn main_inner() -> Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let device = Device::select(args.device)?;
    match &args.model {
        Some(dir) => {
            let config = read_config(dir)?;
            let src = Checkpoint::open(dir)?;
            run_dtype(&args, device, config, &src)
        }
        None => {
            let config = ModelConfig::from_json(&demo::config_json())?;
            let src = demo::weights(&config, 0x00D1_5EA5);
            run_dtype(&args, device, config, &src)
        }
    }
}

fn main() -> ExitCode {
    match main_inner() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
