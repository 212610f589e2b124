//! The command line of the generate example, and the lines it prints
//! around the generated ids.

use std::path::PathBuf;

use dropless::DType;

use crate::config::ModelConfig;
use crate::demo::DemoSize;
use crate::error::{ModelError, Result};

/// The `--device` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The GPU when one works and the model fits its kernels, else the CPU.
    Auto,
    /// The CPU reference.
    Cpu,
    /// The GPU, or an error.
    Cuda,
}

/// The parsed command line.
#[derive(Debug)]
pub struct Args {
    /// `--model DIR`; `None` runs the built-in demo model.
    pub model: Option<PathBuf>,
    /// `--prompt-ids`, one sequence each.
    pub prompt_ids: Vec<Vec<u32>>,
    /// `--prompt TEXT` (needs the model's tokenizer).
    pub prompt: Option<String>,
    /// `--max-new-tokens`.
    pub max_new_tokens: usize,
    /// `--device`.
    pub device: DeviceChoice,
    /// `None`: f32 on the CPU, bf16 on the GPU.
    pub dtype: Option<DType>,
    /// `--logits-out FILE.npy`.
    pub logits_out: Option<PathBuf>,
    /// `--demo`.
    pub demo: DemoSize,
    /// `--random-prompt BATCH,LEN`: deterministic pseudo-random prompts.
    pub random_prompt: Option<(usize, usize)>,
}

/// The usage line `--help` prints.
pub const USAGE: &str = "usage: generate [--model DIR] [--prompt-ids 1,2,3 [--prompt-ids 4,5,6 ...]] \
[--prompt TEXT] [--random-prompt BATCH,LEN] [--max-new-tokens N] [--device auto|cpu|cuda] [--dtype f32|bf16|f16] \
[--logits-out FILE.npy] [--demo small|mixtral-2l|molm]";

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

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// `-h` / `--help`: print [`USAGE`] and exit successfully.
    Help,
    /// Run the model.
    Run(Args),
}

/// Parses the command line (without the program name).
pub fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Command> {
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
                    ModelError::Input(format!("--demo takes small, mixtral-2l or molm, found {v}"))
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
            "-h" | "--help" => return Ok(Command::Help),
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
    Ok(Command::Run(args))
}

/// `batch` prompts of `len` ids in `1..vocab`, the same on every run.
pub fn random_prompts(batch: usize, len: usize, vocab: usize) -> Vec<Vec<u32>> {
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

/// Refuses a run whose sequences would outgrow the model's positions: a
/// prompt of `prompt_len` tokens and `max_new_tokens` new ones hold
/// `prompt_len + max_new_tokens` tokens, which must not exceed
/// `max_position_embeddings` when `config.json` sets it.
pub fn check_positions(
    config: &ModelConfig,
    prompt_len: usize,
    max_new_tokens: usize,
) -> Result<()> {
    let Some(max) = config.max_position_embeddings else {
        return Ok(());
    };
    let total = prompt_len + max_new_tokens;
    if total <= max {
        return Ok(());
    }
    let fix = if prompt_len < max {
        format!("pass --max-new-tokens {} or fewer", max - prompt_len)
    } else {
        format!("shorten the prompt below {max} tokens")
    };
    Err(ModelError::Input(format!(
        "a prompt of {prompt_len} tokens plus --max-new-tokens {max_new_tokens} makes sequences of \
         {total} tokens, past the model's max_position_embeddings = {max} (config.json): {fix}"
    )))
}

/// The line of sequence `b`: all its ids, prompt first (scripts read it;
/// keep the format).
pub fn sequence_line(b: usize, ids: &[u32]) -> String {
    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
    format!("sequence {b}: {}", ids.join(" "))
}

/// The lines printed before the sequences: what the model is (the demo's
/// ids are noise) and which ids are the prompt and which were generated.
pub fn header_lines(
    demo: Option<DemoSize>,
    prompt_len: usize,
    max_new_tokens: usize,
) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(size) = demo {
        lines.push(format!(
            "model: the built-in demo ({}), seeded random weights, no training: its ids are noise, \
             not text (pass --model DIR for a real checkpoint)",
            size.name()
        ));
    }
    lines.push(format!(
        "ids: each sequence is its {prompt_len} prompt ids, then {max_new_tokens} generated ids"
    ));
    lines
}

/// The line after the decode timing: why it counts one token fewer than
/// were generated.
pub fn decode_note(max_new_tokens: usize) -> Option<String> {
    (max_new_tokens > 0).then(|| {
        format!(
            "note: the first of the {max_new_tokens} new tokens comes from the prefill's logits, so \
             decoding runs {} steps",
            max_new_tokens - 1
        )
    })
}
