//! End-to-end MoE language model: loads a Hugging Face checkpoint folder
//! (Mixtral, Qwen3-MoE, OLMoE, Qwen2-MoE), runs the prompt forward and greedy
//! generation with a KV cache; every MoE layer goes through `dropless`.
//!
//! ```text
//! cargo run --release --example generate -- [--model DIR] [--prompt-ids 1,2,3 [--prompt-ids 4,5,6 ...]]
//!     [--prompt TEXT] [--max-new-tokens N] [--device auto|cpu|cuda] [--dtype f32|bf16|f16]
//!     [--logits-out FILE.npy] [--random-prompt BATCH,LEN] [--demo small|mixtral-2l]
//! ```
//!
//! Without `--model` a built-in demo model (small Mixtral-like config, seeded
//! random weights) runs; `--demo mixtral-2l` makes it two Mixtral-8x7B-shaped
//! layers instead, a size that fills a GPU, and `--random-prompt BATCH,LEN`
//! feeds it deterministic pseudo-random prompts of that shape. `--prompt-ids` repeats for a batch of equal-length
//! sequences; `--prompt` needs `tokenizer.json` in the model folder.
//! `--device auto` (the default) takes the GPU when one works and the model
//! fits the GPU kernels (expert FFN a multiple of 128, hidden a multiple of
//! 8), else the CPU. The CPU runs f32 by default, the GPU bf16 (f16 on
//! request; f32 is CPU-only).
//! `--logits-out` writes the prompt forward's logits (no cache) as a
//! `[batch, seq, vocab]` little-endian f32 `.npy`. Generation always produces
//! `--max-new-tokens` tokens (no stop on end-of-sequence).

mod checkpoint;
mod config;
mod demo;
mod error;
mod gpu;
mod model;
mod npy;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use demo::DemoSize;
use dropless::cuda::CudaBackend;
use dropless::layer::Backend;
use dropless::{DType, Element};
use half::{bf16, f16};
use ndarray::Array3;

use crate::checkpoint::{Checkpoint, TensorSource};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gpu::{GpuElement, GpuModel};
use crate::model::{Generation, Model};

/// The `--device` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

/// The device the model runs on.
#[derive(Debug, Clone)]
enum Device {
    /// The ndarray CPU reference (f32, bf16 or f16; f32 by default).
    Cpu,
    /// The CUDA kernels (bf16 or f16; bf16 by default).
    Cuda(Arc<CudaBackend>),
}

impl Device {
    /// Resolves the `--device` choice for the `--dtype` asked for: `auto`
    /// takes the GPU when one works and the dtype allows it, else the CPU,
    /// saying why.
    fn select(choice: DeviceChoice, dtype: Option<DType>) -> Result<Device> {
        const F32_CPU_ONLY: &str =
            "--dtype f32 runs on the CPU only; the GPU path runs bf16 (its default) or f16";
        match choice {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda if dtype == Some(DType::F32) => Err(ModelError::Input(format!(
                "--device cuda: {F32_CPU_ONLY}: drop --dtype f32, or use --device cpu"
            ))),
            DeviceChoice::Auto if dtype == Some(DType::F32) => {
                eprintln!("--device auto: {F32_CPU_ONLY}; running on the CPU");
                Ok(Device::Cpu)
            }
            DeviceChoice::Cuda | DeviceChoice::Auto => match (Backend::auto(), choice) {
                ((Backend::Cuda(backend), _), _) => Ok(Device::Cuda(backend)),
                ((Backend::Cpu, why), DeviceChoice::Cuda) => Err(ModelError::Input(format!(
                    "--device cuda: no usable GPU ({}); use --device cpu",
                    why.map_or_else(|| "unknown reason".to_string(), |e| e.to_string())
                ))),
                ((Backend::Cpu, why), _) => {
                    if let Some(why) = why {
                        eprintln!("--device auto: no usable GPU ({why}); falling back to the CPU");
                    }
                    Ok(Device::Cpu)
                }
            },
        }
    }

    /// Keeps the GPU only when `config` fits its kernels: `auto` falls back
    /// to the CPU, saying why; `cuda` fails naming the config field.
    fn for_model(self, choice: DeviceChoice, config: &ModelConfig) -> Result<Device> {
        match (&self, gpu::check_supported(config)) {
            (Device::Cuda(_), Err(e)) if choice == DeviceChoice::Auto => {
                eprintln!("--device auto: {e}; falling back to the CPU");
                Ok(Device::Cpu)
            }
            (Device::Cuda(_), Err(e)) => Err(e),
            _ => Ok(self),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu (dropless CPU reference)"),
            Device::Cuda(backend) => {
                let name = backend
                    .context()
                    .name()
                    .unwrap_or_else(|_| "unnamed GPU".into());
                write!(
                    f,
                    "cuda {} ({name}, dropless CUDA kernels)",
                    backend.context().ordinal()
                )
            }
        }
    }
}

/// What the output needs from a model, on either device.
trait LanguageModel {
    /// The prompt forward's logits `[batch, seq, vocab]` (no cache).
    fn logits(&self, prompts: &[Vec<u32>]) -> Result<Array3<f32>>;
    /// Greedy generation with a KV cache.
    fn generate(&self, prompts: &[Vec<u32>], max_new_tokens: usize) -> Result<Generation>;
}

impl<T: Element> LanguageModel for Model<T> {
    fn logits(&self, prompts: &[Vec<u32>]) -> Result<Array3<f32>> {
        self.forward(prompts, None)
    }
    fn generate(&self, prompts: &[Vec<u32>], max_new_tokens: usize) -> Result<Generation> {
        Model::generate(self, prompts, max_new_tokens)
    }
}

impl<T: GpuElement> LanguageModel for GpuModel<T> {
    fn logits(&self, prompts: &[Vec<u32>]) -> Result<Array3<f32>> {
        self.forward(prompts, None)
    }
    fn generate(&self, prompts: &[Vec<u32>], max_new_tokens: usize) -> Result<Generation> {
        GpuModel::generate(self, prompts, max_new_tokens)
    }
}

/// The parsed command line.
struct Args {
    model: Option<PathBuf>,
    prompt_ids: Vec<Vec<u32>>,
    prompt: Option<String>,
    max_new_tokens: usize,
    device: DeviceChoice,
    /// `None`: f32 on the CPU, bf16 on the GPU.
    dtype: Option<DType>,
    logits_out: Option<PathBuf>,
    demo: DemoSize,
    /// `--random-prompt BATCH,LEN`: deterministic pseudo-random prompts.
    random_prompt: Option<(usize, usize)>,
}

const USAGE: &str = "usage: generate [--model DIR] [--prompt-ids 1,2,3 [--prompt-ids 4,5,6 ...]] \
[--prompt TEXT] [--random-prompt BATCH,LEN] [--max-new-tokens N] [--device auto|cpu|cuda] [--dtype f32|bf16|f16] \
[--logits-out FILE.npy] [--demo small|mixtral-2l]";

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
        dtype: None,
        logits_out: None,
        demo: DemoSize::Small,
        random_prompt: None,
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
                args.dtype = Some(match value()?.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    v => {
                        return Err(ModelError::Input(format!(
                            "--dtype takes f32, bf16 or f16, found {v}"
                        )))
                    }
                })
            }
            "--logits-out" => args.logits_out = Some(PathBuf::from(value()?)),
            "--demo" => {
                let v = value()?;
                args.demo = DemoSize::parse(&v).ok_or_else(|| {
                    ModelError::Input(format!("--demo takes small or mixtral-2l, found {v}"))
                })?;
            }
            "--random-prompt" => {
                let v = value()?;
                let shape = v
                    .split_once(',')
                    .and_then(|(b, l)| Some((b.trim().parse().ok()?, l.trim().parse().ok()?)))
                    .filter(|&(b, l): &(usize, usize)| b > 0 && l > 0);
                args.random_prompt = Some(shape.ok_or_else(|| {
                    ModelError::Input(format!(
                        "--random-prompt takes BATCH,LEN (positive integers), found {v}"
                    ))
                })?);
            }
            "-h" | "--help" => return Err(ModelError::Input(USAGE.into())),
            other => return Err(ModelError::Input(format!("unknown flag {other} ({USAGE})"))),
        }
    }
    let sources = [
        args.prompt.is_some(),
        !args.prompt_ids.is_empty(),
        args.random_prompt.is_some(),
    ];
    if sources.iter().filter(|&&s| s).count() > 1 {
        return Err(ModelError::Input(
            "pass one of --prompt, --prompt-ids or --random-prompt".into(),
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

/// `batch` prompts of `len` ids in `1..vocab`, the same on every run.
fn random_prompts(batch: usize, len: usize, vocab: usize) -> Vec<Vec<u32>> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..batch)
        .map(|_| {
            (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (1 + state % (vocab.max(2) as u64 - 1)) as u32
                })
                .collect()
        })
        .collect()
}

/// The prompts of the command line (tokenized `--prompt`, `--prompt-ids`,
/// `--random-prompt`, or `1..=8`) and the tokenizer when `--prompt` needs one.
fn prompts(args: &Args, vocab: usize) -> Result<(Vec<Vec<u32>>, Option<tokenizers::Tokenizer>)> {
    if let Some((batch, len)) = args.random_prompt {
        return Ok((random_prompts(batch, len, vocab), None));
    }
    let Some(text) = &args.prompt else {
        let prompts = if args.prompt_ids.is_empty() {
            vec![(1..=8).collect()]
        } else {
            args.prompt_ids.clone()
        };
        return Ok((prompts, None));
    };
    let tok = tokenizer(args.model.as_deref())?;
    let enc = tok
        .encode(text.as_str(), true)
        .map_err(|e| ModelError::Input(format!("cannot tokenize --prompt: {e}")))?;
    Ok((vec![enc.get_ids().to_vec()], Some(tok)))
}

/// Runs the prompts through `model` and prints the results.
fn run(
    args: &Args,
    device: &Device,
    dtype: DType,
    vocab: usize,
    model: &dyn LanguageModel,
) -> Result<()> {
    let (prompts, tok) = prompts(args, vocab)?;
    if let Some(path) = &args.logits_out {
        npy::write(path, &model.logits(&prompts)?)?;
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
    println!("device: {device}, dtype {dtype}");
    Ok(())
}

/// Loads the model as `T` on the CPU and runs it.
fn run_cpu<T: Element, S: TensorSource>(args: &Args, config: ModelConfig, src: &S) -> Result<()> {
    let vocab = config.vocab_size;
    let model = Model::<T>::load(config, src)?;
    run(args, &Device::Cpu, T::DTYPE, vocab, &model)
}

/// Loads the model as `T`, uploads it to the GPU (dropping the host copy)
/// and runs it.
fn run_gpu<T: GpuElement, S: TensorSource>(
    args: &Args,
    backend: &Arc<CudaBackend>,
    config: ModelConfig,
    src: &S,
) -> Result<()> {
    let vocab = config.vocab_size;
    let model = GpuModel::upload(Arc::clone(backend), Model::<T>::load(config, src)?)?;
    run(
        args,
        &Device::Cuda(Arc::clone(backend)),
        T::DTYPE,
        vocab,
        &model,
    )
}

/// Picks the device for `config` and dispatches on the run dtype.
fn run_on<S: TensorSource>(
    args: &Args,
    device: Device,
    config: ModelConfig,
    src: &S,
) -> Result<()> {
    match device.for_model(args.device, &config)? {
        Device::Cpu => match args.dtype.unwrap_or(DType::F32) {
            DType::F32 => run_cpu::<f32, S>(args, config, src),
            DType::BF16 => run_cpu::<bf16, S>(args, config, src),
            DType::F16 => run_cpu::<f16, S>(args, config, src),
        },
        Device::Cuda(backend) => match args.dtype.unwrap_or(DType::BF16) {
            DType::BF16 => run_gpu::<bf16, S>(args, &backend, config, src),
            DType::F16 => run_gpu::<f16, S>(args, &backend, config, src),
            DType::F32 => Err(ModelError::Input(
                "--dtype f32 runs on the CPU only; use --dtype bf16 or --device cpu".into(),
            )),
        },
    }
}

fn main_inner() -> Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let device = Device::select(args.device, args.dtype)?;
    match &args.model {
        Some(dir) => {
            let config = read_config(dir)?;
            let src = Checkpoint::open(dir)?;
            run_on(&args, device, config, &src)
        }
        None => {
            let config = ModelConfig::from_json(&demo::config_json(args.demo))?;
            let src = demo::weights(&config, 0x00D1_5EA5);
            run_on(&args, device, config, &src)
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
