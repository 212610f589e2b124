//! End-to-end MoE language model: loads a Hugging Face checkpoint folder
//! (Mixtral, Qwen3-MoE, OLMoE, Qwen2-MoE, and IBM's ModuleFormer / MoLM with
//! `model_type: "moduleformer"`), runs the prompt forward and greedy
//! generation with a KV cache; every MoE layer goes through `dropless`.
//!
//! ```text
//! cargo run --release --example generate -- [--model DIR] [--prompt-ids 1,2,3 [--prompt-ids 4,5,6 ...]]
//!     [--prompt TEXT] [--max-new-tokens N] [--device auto|cpu|cuda] [--dtype f32|bf16|f16]
//!     [--logits-out FILE.npy] [--random-prompt BATCH,LEN] [--demo small|mixtral-2l|molm]
//! ```
//!
//! Without `--model` a built-in demo model (small Mixtral-like config, seeded
//! random weights) runs; `--demo mixtral-2l` makes it two Mixtral-8x7B-shaped
//! layers instead, a size that fills a GPU, and `--random-prompt BATCH,LEN`
//! feeds it deterministic pseudo-random prompts of that shape; `--demo molm` is a
//! small ModuleFormer-shaped random model. `--prompt-ids` repeats for a batch of equal-length
//! sequences; `--prompt` needs `tokenizer.json` in the model folder.
//! `--device auto` (the default) takes the GPU when one works and the model
//! fits the GPU kernels (expert FFN a multiple of 128, hidden a multiple of
//! 8), else the CPU. The CPU runs f32 by default, the GPU bf16 (f16 on
//! request; f32 is CPU-only).
//! `--logits-out` writes the prompt forward's logits (no cache) as a
//! `[batch, seq, vocab]` little-endian f32 `.npy`. Generation always produces
//! `--max-new-tokens` tokens (no stop on end-of-sequence).

mod checkpoint;
mod cli;
mod config;
mod decoding;
mod demo;
mod device;
mod error;
mod gpu;
mod memory;
mod model;
mod moduleformer;
mod npy;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use demo::DemoSize;
use dropless::cuda::CudaBackend;
use dropless::layer::Backend;
use dropless::memory::available_host_memory;
use dropless::{DType, Element};
use half::{bf16, f16};
use ndarray::Array3;

use crate::checkpoint::{Checkpoint, TensorSource};
use crate::cli::{
    check_positions, decode_note, header_lines, parse_args, random_prompts, sequence_line, Args,
    Command, DeviceChoice, USAGE,
};
use crate::config::ModelConfig;
use crate::decoding::{Generation, HostModel};
use crate::device::{DeviceModel, GpuElement};
use crate::error::{ModelError, Result};
use crate::gpu::GpuModel;
use crate::model::Model;
use crate::moduleformer::config::{is_moduleformer, MolmConfig};
use crate::moduleformer::gpu::GpuMolmModel;
use crate::moduleformer::model::MolmModel;

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
        HostModel::generate(self, prompts, max_new_tokens)
    }
}

impl<T: Element> LanguageModel for MolmModel<T> {
    fn logits(&self, prompts: &[Vec<u32>]) -> Result<Array3<f32>> {
        self.forward(prompts, None)
    }
    fn generate(&self, prompts: &[Vec<u32>], max_new_tokens: usize) -> Result<Generation> {
        HostModel::generate(self, prompts, max_new_tokens)
    }
}

impl<T: GpuElement> LanguageModel for GpuMolmModel<T> {
    fn logits(&self, prompts: &[Vec<u32>]) -> Result<Array3<f32>> {
        self.forward(prompts, None)
    }
    fn generate(&self, prompts: &[Vec<u32>], max_new_tokens: usize) -> Result<Generation> {
        DeviceModel::generate(self, prompts, max_new_tokens)
    }
}

impl<T: GpuElement> LanguageModel for GpuModel<T> {
    fn logits(&self, prompts: &[Vec<u32>]) -> Result<Array3<f32>> {
        self.forward(prompts, None)
    }
    fn generate(&self, prompts: &[Vec<u32>], max_new_tokens: usize) -> Result<Generation> {
        DeviceModel::generate(self, prompts, max_new_tokens)
    }
}

/// Reads `dir/config.json` as JSON.
fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::file(&path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::file(&path, format!("invalid JSON: {e}")))
}

/// Loads `dir/tokenizer.json`.
fn tokenizer(dir: Option<&Path>) -> Result<tokenizers::Tokenizer> {
    let dir = dir.ok_or_else(|| ModelError::Input("--prompt needs --model DIR with a tokenizer.json (the demo model has none; use --prompt-ids)".into()))?;
    let path = dir.join("tokenizer.json");
    tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| ModelError::file(&path, format!("cannot load the tokenizer: {e}")))
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

/// What a run feeds the model and how it reports, fixed before loading.
struct Job<'a> {
    args: &'a Args,
    prompts: Vec<Vec<u32>>,
    tokenizer: Option<tokenizers::Tokenizer>,
    /// The demo size when the built-in demo model runs.
    demo: Option<DemoSize>,
}

/// Runs the prompts through `model` and prints the results.
fn run(job: &Job, device: &Device, dtype: DType, model: &dyn LanguageModel) -> Result<()> {
    let (args, prompts) = (job.args, &job.prompts);
    if let Some(path) = &args.logits_out {
        npy::write(path, &model.logits(prompts)?)?;
    }
    let generation = model.generate(prompts, args.max_new_tokens)?;
    for line in header_lines(job.demo, prompts[0].len(), args.max_new_tokens) {
        println!("{line}");
    }
    for (b, seq) in generation.tokens.iter().enumerate() {
        println!("{}", sequence_line(b, seq));
        if let Some(tok) = &job.tokenizer {
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
    if let Some(note) = decode_note(args.max_new_tokens) {
        println!("{note}");
    }
    println!("device: {device}, dtype {dtype}");
    Ok(())
}

/// Loads the model as `T` on the CPU and runs it.
fn run_cpu<T: Element, S: TensorSource>(job: &Job, config: ModelConfig, src: &S) -> Result<()> {
    let model = Model::<T>::load(config, src)?;
    run(job, &Device::Cpu, T::DTYPE, &model)
}

/// Loads the model as `T`, uploads it to the GPU (dropping the host copy)
/// and runs it.
fn run_gpu<T: GpuElement, S: TensorSource>(
    job: &Job,
    backend: &Arc<CudaBackend>,
    config: ModelConfig,
    src: &S,
) -> Result<()> {
    let model = GpuModel::upload(Arc::clone(backend), Model::<T>::load(config, src)?)?;
    run(job, &Device::Cuda(Arc::clone(backend)), T::DTYPE, &model)
}

/// The run dtype on `device`: `--dtype`, else f32 on the CPU and bf16 on
/// the GPU (which takes no f32).
fn run_dtype(device: &Device, asked: Option<DType>) -> Result<DType> {
    match (device, asked) {
        (Device::Cpu, dtype) => Ok(dtype.unwrap_or(DType::F32)),
        (Device::Cuda(_), Some(DType::F32)) => Err(ModelError::Input(
            "--dtype f32 runs on the CPU only; use --dtype bf16 or --device cpu".into(),
        )),
        (Device::Cuda(_), dtype) => Ok(dtype.unwrap_or(DType::BF16)),
    }
}

/// Loads the model from `src` as `dtype` on `device` and runs `job`.
fn run_on<S: TensorSource>(
    job: &Job,
    device: Device,
    dtype: DType,
    config: ModelConfig,
    src: &S,
) -> Result<()> {
    match (device, dtype) {
        (Device::Cpu, DType::F32) => run_cpu::<f32, S>(job, config, src),
        (Device::Cpu, DType::BF16) => run_cpu::<bf16, S>(job, config, src),
        (Device::Cpu, DType::F16) => run_cpu::<f16, S>(job, config, src),
        (Device::Cuda(backend), DType::F16) => run_gpu::<f16, S>(job, &backend, config, src),
        (Device::Cuda(backend), _) => run_gpu::<bf16, S>(job, &backend, config, src),
    }
}

/// Loads a ModuleFormer model from `src` as `T` on `device` (uploading it to
/// the GPU there, dropping the host copy) and runs it.
fn run_molm<T: GpuElement, S: TensorSource>(
    job: &Job,
    device: &Device,
    config: MolmConfig,
    src: &S,
) -> Result<()> {
    let model = MolmModel::<T>::load(config, src)?;
    match device {
        Device::Cpu => run(job, device, T::DTYPE, &model),
        Device::Cuda(backend) => {
            let model = GpuMolmModel::upload(Arc::clone(backend), model)?;
            run(job, device, T::DTYPE, &model)
        }
    }
}

/// Loads a ModuleFormer model from `src` as `dtype` on `device` and runs
/// `job` (f32 on the CPU only).
fn run_molm_on<S: TensorSource>(
    job: &Job,
    device: &Device,
    dtype: DType,
    config: MolmConfig,
    src: &S,
) -> Result<()> {
    match dtype {
        DType::F32 => {
            let model = MolmModel::<f32>::load(config, src)?;
            run(job, &Device::Cpu, DType::F32, &model)
        }
        DType::BF16 => run_molm::<bf16, _>(job, device, config, src),
        DType::F16 => run_molm::<f16, _>(job, device, config, src),
    }
}

/// Runs a ModuleFormer checkpoint (or `--demo molm`) on `device`: the GPU
/// when the config fits its kernels (`auto` falls back to the CPU, saying
/// why; `cuda` fails naming the config field).
fn main_molm(args: &Args, device: Device, json: &serde_json::Value) -> Result<()> {
    let config = MolmConfig::from_json(json)?;
    let device = match (&device, moduleformer::gpu::check_supported(&config)) {
        (Device::Cuda(_), Err(e)) if args.device == DeviceChoice::Auto => {
            eprintln!("--device auto: {e}; falling back to the CPU");
            Device::Cpu
        }
        (Device::Cuda(_), Err(e)) => return Err(e),
        _ => device,
    };
    let dtype = run_dtype(&device, args.dtype)?;
    let (prompts, tokenizer) = prompts(args, config.vocab_size)?;
    let job = Job {
        args,
        prompts,
        tokenizer,
        demo: args.model.is_none().then_some(args.demo),
    };
    match &args.model {
        Some(dir) => run_molm_on(&job, &device, dtype, config, &Checkpoint::open(dir)?),
        None => {
            let src = moduleformer::demo::weights(&config, 0x00D1_5EA5);
            run_molm_on(&job, &device, dtype, config, &src)
        }
    }
}

/// Reads the command line, settles the prompts, the device and the dtype,
/// refuses runs that cannot work (too long for the model's positions, too
/// big for the memory) before loading anything, then loads and runs.
fn main_inner() -> Result<()> {
    let args = match parse_args(std::env::args().skip(1))? {
        Command::Help => {
            println!("{USAGE}");
            return Ok(());
        }
        Command::Run(args) => args,
    };
    let device = Device::select(args.device, args.dtype)?;
    let json = match &args.model {
        Some(dir) => read_config(dir)?,
        None => demo::config_json(args.demo),
    };
    if is_moduleformer(&json) {
        return main_molm(&args, device, &json);
    }
    let config = ModelConfig::from_json(&json)?;
    let (prompts, tokenizer) = prompts(&args, config.vocab_size)?;
    let prompt_len = prompts.first().map_or(0, Vec::len);
    check_positions(&config, prompt_len, args.max_new_tokens)?;
    let device = device.for_model(args.device, &config)?;
    let dtype = run_dtype(&device, args.dtype)?;
    let plan = memory::Run {
        dtype,
        on_gpu: matches!(device, Device::Cuda(_)),
        source_bytes: if args.model.is_none() { 4 } else { 0 },
        batch: prompts.len(),
        prompt_len,
        max_new_tokens: args.max_new_tokens,
    };
    let device_free = match &device {
        Device::Cuda(backend) => Some(backend.memory_info()?.0),
        Device::Cpu => None,
    };
    memory::check(&config, &plan, available_host_memory(), device_free)?;
    let job = Job {
        args: &args,
        prompts,
        tokenizer,
        demo: args.model.is_none().then_some(args.demo),
    };
    match &args.model {
        Some(dir) => run_on(&job, device, dtype, config, &Checkpoint::open(dir)?),
        None => {
            let src = demo::weights(&config, 0x00D1_5EA5);
            run_on(&job, device, dtype, config, &src)
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
