//! The generate example on the CPU: tiny random checkpoints in each family's
//! real tensor names (written here with the `safetensors` crate), single,
//! sharded, fused and bf16; KV-cache decoding against the full forward; bad
//! folders; and parity with Hugging Face transformers' float32 logits on the
//! committed fixtures in tests/fixtures (scripts/make-hf-fixtures.py).

#[allow(dead_code)]
#[path = "../examples/generate/checkpoint.rs"]
mod checkpoint;
#[allow(dead_code)]
#[path = "../examples/generate/cli.rs"]
mod cli;
#[allow(dead_code)]
#[path = "../examples/generate/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "common/decode.rs"]
mod decode;
#[allow(dead_code)]
#[path = "../examples/generate/decoding.rs"]
mod decoding;
#[allow(dead_code)]
#[path = "../examples/generate/demo.rs"]
mod demo;
#[allow(dead_code)]
#[path = "../examples/generate/device.rs"]
mod device;
#[allow(dead_code)]
#[path = "../examples/generate/error.rs"]
mod error;
#[allow(dead_code)]
#[path = "../examples/generate/memory.rs"]
mod memory;
#[allow(dead_code)]
#[path = "../examples/generate/model.rs"]
mod model;
#[allow(dead_code)]
#[path = "../examples/generate/moduleformer/mod.rs"]
mod moduleformer;
#[allow(dead_code)]
#[path = "../examples/generate/npy.rs"]
mod npy;
#[allow(dead_code)]
#[path = "common/checkpoint.rs"]
mod writer;

use std::path::Path;

use half::bf16;
use ndarray::Array3;
use safetensors::tensor::Dtype;
use serde_json::{json, Value};

use checkpoint::Checkpoint;
use config::ModelConfig;
use decode::{decode_step_by_step, prompts};
use decoding::HostModel;
use model::{KvCache, Model};
use writer::{fuse_experts, temp_dir, tiny_config, tiny_tensors, write_checkpoint, Tensors, TINY};

/// Loads a checkpoint folder as an f32 model.
fn load(dir: &Path) -> error::Result<Model<f32>> {
    let text = std::fs::read_to_string(dir.join("config.json"))
        .map_err(|e| error::ModelError::file(dir, e))?;
    let config = ModelConfig::from_json(&serde_json::from_str(&text).unwrap())?;
    Model::load(config, &Checkpoint::open(dir)?)
}

/// The error message of a load that must fail.
fn load_err(dir: &Path) -> String {
    match load(dir) {
        Ok(_) => panic!("loading {} should have failed", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Asserts |a - b| <= atol + rtol |b| everywhere.
fn assert_close(what: &str, a: &Array3<f32>, b: &Array3<f32>, atol: f32, rtol: f32) {
    assert_eq!(a.dim(), b.dim(), "{what}: shapes differ");
    let mut worst = 0.0f32;
    for ((idx, &x), &y) in a.indexed_iter().zip(b.iter()) {
        let err = (x - y).abs();
        assert!(
            err <= atol + rtol * y.abs(),
            "{what}: at {idx:?} got {x}, expected {y}"
        );
        worst = worst.max(err);
    }
    assert!(a.iter().any(|v| *v != 0.0), "{what}: all-zero logits");
    eprintln!("{what}: max abs error {worst:e}");
}

/// Cached greedy decoding step by step must give the full forward's logits
/// at every position, and `generate` the same tokens.
fn check_kv_cache(model: &Model<f32>, what: &str) {
    let steps = 4;
    let mut cache = KvCache::new(model, 2);
    let decoded = decode_step_by_step(steps, |input| {
        model.forward(input, Some(&mut cache)).unwrap()
    });
    let gen = model.generate(&prompts(), steps).unwrap();
    assert_eq!(
        gen.tokens, decoded.seqs,
        "{what}: generate() differs from step-by-step decoding"
    );
    let full = model.forward(&decoded.full_input(), None).unwrap();
    for (step, got, expect) in decoded.step_pairs(&full) {
        assert_close(&format!("{what} step {step}"), &got, &expect, 1e-5, 1e-5);
    }
}

#[test]
fn every_family_loads_runs_and_cached_decoding_matches_full_forward() {
    for family in ["mixtral", "qwen3_moe", "olmoe", "qwen2_moe"] {
        let dir = temp_dir(family);
        write_checkpoint(
            &dir,
            &tiny_config(family, &TINY),
            &tiny_tensors(family, &TINY, 7),
            Dtype::F32,
            1,
        );
        let model = load(&dir).unwrap_or_else(|e| panic!("{family}: {e}"));
        let logits = model.forward(&prompts(), None).unwrap();
        assert_eq!(logits.dim(), (2, 5, 40));
        assert!(logits.iter().all(|v| v.is_finite()));
        check_kv_cache(&model, family);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn sharded_fused_and_bf16_checkpoints_load_the_same_weights() {
    for family in ["mixtral", "qwen3_moe"] {
        let config = tiny_config(family, &TINY);
        let tensors = tiny_tensors(family, &TINY, 11);
        let base = temp_dir(&format!("{family}-single"));
        write_checkpoint(&base, &config, &tensors, Dtype::F32, 1);
        let reference = load(&base).unwrap().forward(&prompts(), None).unwrap();

        let sharded = temp_dir(&format!("{family}-sharded"));
        write_checkpoint(&sharded, &config, &tensors, Dtype::F32, 3);
        assert!(!sharded.join("model.safetensors").exists());
        let got = load(&sharded).unwrap().forward(&prompts(), None).unwrap();
        assert_eq!(got, reference, "{family}: sharded checkpoint");

        let fused = temp_dir(&format!("{family}-fused"));
        write_checkpoint(
            &fused,
            &config,
            &fuse_experts(&tensors, family, &TINY),
            Dtype::F32,
            1,
        );
        let got = load(&fused).unwrap().forward(&prompts(), None).unwrap();
        assert_close(&format!("{family} fused"), &got, &reference, 1e-6, 1e-6);

        // bf16 on disk, f32 in memory: equal to the bf16-rounded weights as f32.
        let rounded = Tensors(
            tensors
                .0
                .iter()
                .map(|(n, (shape, d))| {
                    (
                        n.clone(),
                        (
                            shape.clone(),
                            d.iter().map(|v| bf16::from_f32(*v).to_f32()).collect(),
                        ),
                    )
                })
                .collect(),
        );
        let bf16_dir = temp_dir(&format!("{family}-bf16"));
        write_checkpoint(&bf16_dir, &config, &tensors, Dtype::BF16, 1);
        let rounded_dir = temp_dir(&format!("{family}-rounded"));
        write_checkpoint(&rounded_dir, &config, &rounded, Dtype::F32, 1);
        let got = load(&bf16_dir).unwrap().forward(&prompts(), None).unwrap();
        let expect = load(&rounded_dir)
            .unwrap()
            .forward(&prompts(), None)
            .unwrap();
        assert_eq!(got, expect, "{family}: bf16 checkpoint");

        // A bf16 run of the f32 checkpoint stays near the f32 run.
        let text = std::fs::read_to_string(base.join("config.json")).unwrap();
        let cfg = ModelConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        let half_model = Model::<bf16>::load(cfg, &Checkpoint::open(&base).unwrap()).unwrap();
        let got = half_model.forward(&prompts(), None).unwrap();
        assert_close(&format!("{family} bf16 run"), &got, &reference, 0.1, 0.1);

        for d in [base, sharded, fused, bf16_dir, rounded_dir] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}

/// Writes a mixtral checkpoint after `edit` changes its config or tensors,
/// and returns the load error.
fn broken(tag: &str, edit: impl FnOnce(&mut Value, &mut Tensors)) -> String {
    let mut config = tiny_config("mixtral", &TINY);
    let mut tensors = tiny_tensors("mixtral", &TINY, 3);
    edit(&mut config, &mut tensors);
    let dir = temp_dir(tag);
    write_checkpoint(&dir, &config, &tensors, Dtype::F32, 1);
    let err = load_err(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    err
}

#[test]
fn bad_folders_give_errors_naming_the_field_or_tensor() {
    let missing = "model.layers.1.block_sparse_moe.experts.2.w3.weight";
    let err = broken("missing", |_, t| {
        t.0.remove(missing);
    });
    assert!(err.contains(missing) && err.contains("missing"), "{err}");

    let wrong = "model.layers.0.self_attn.k_proj.weight";
    let err = broken("shape", |_, t| {
        t.0.insert(wrong.into(), (vec![8, 32], vec![0.5; 256]));
    });
    assert!(
        err.contains(wrong) && err.contains("[8, 32]") && err.contains("[16, 32]"),
        "{err}"
    );

    let err = broken("type", |c, _| c["model_type"] = json!("llama"));
    assert!(err.contains("model_type") && err.contains("llama"), "{err}");

    let err = broken("field", |c, _| {
        c.as_object_mut().unwrap().remove("num_local_experts");
    });
    assert!(err.contains("num_local_experts"), "{err}");

    let err = broken("rope", |c, _| {
        c["rope_parameters"] = json!({"rope_type": "yarn", "factor": 4.0})
    });
    assert!(
        err.contains("rope_parameters.rope_type") && err.contains("yarn"),
        "{err}"
    );

    let err = broken("act", |c, _| c["hidden_act"] = json!("gelu"));
    assert!(err.contains("hidden_act"), "{err}");

    let err = broken("ffn", |c, t| {
        c["intermediate_size"] = json!(24);
        for (name, (shape, data)) in t.0.iter_mut() {
            if name.contains(".experts.") {
                let w2 = name.ends_with("w2.weight");
                *shape = if w2 { vec![32, 24] } else { vec![24, 32] };
                data.truncate(24 * 32);
            }
        }
    });
    assert!(
        err.contains("intermediate_size") && err.contains("24"),
        "{err}"
    );

    let empty = temp_dir("empty");
    std::fs::write(
        empty.join("config.json"),
        tiny_config("mixtral", &TINY).to_string(),
    )
    .unwrap();
    let err = load_err(&empty);
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::write(empty.join("model.safetensors"), b"not a safetensors file").unwrap();
    let err = load_err(&empty);
    assert!(err.contains("safetensors"), "{err}");
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn bad_inputs_give_errors() {
    let config = ModelConfig::from_json(&demo::config_json(demo::DemoSize::Small)).unwrap();
    let model = Model::<f32>::load(
        config,
        &demo::weights(
            &ModelConfig::from_json(&demo::config_json(demo::DemoSize::Small)).unwrap(),
            1,
        ),
    )
    .unwrap();
    let err = model
        .forward(&[vec![1, 2, 600]], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("600") && err.contains("512"), "{err}");
    let err = model
        .forward(&[vec![1, 2], vec![3]], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("one length"), "{err}");
    let err = model.forward(&[], None).unwrap_err().to_string();
    assert!(err.contains("at least one"), "{err}");
    let mut cache = KvCache::new(&model, 2);
    let err = model
        .forward(&[vec![1]], Some(&mut cache))
        .unwrap_err()
        .to_string();
    assert!(err.contains("KV cache"), "{err}");
}

#[test]
fn demo_model_generates_deterministically() {
    let config = ModelConfig::from_json(&demo::config_json(demo::DemoSize::Small)).unwrap();
    let model = Model::<f32>::load(config.clone(), &demo::weights(&config, 5)).unwrap();
    let a = model.generate(&[vec![1, 2, 3, 4]], 6).unwrap();
    let b = model.generate(&[vec![1, 2, 3, 4]], 6).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.tokens[0].len(), 10);
    assert!(a.tokens[0]
        .iter()
        .all(|&t| (t as usize) < config.vocab_size));
}

#[test]
fn demo_sizes_parse_and_the_gpu_size_has_mixtral_8x7b_layer_shapes() {
    assert_eq!(demo::DemoSize::parse("small"), Some(demo::DemoSize::Small));
    assert_eq!(demo::DemoSize::parse("big"), None);
    let size = demo::DemoSize::parse("mixtral-2l").unwrap();
    let config = ModelConfig::from_json(&demo::config_json(size)).unwrap();
    assert_eq!(
        (
            config.hidden_size,
            config.moe_ffn,
            config.num_experts,
            config.num_layers
        ),
        (4096, 14336, 8, 2)
    );
}

/// Reads a little-endian f32 `.npy` of rank 3.
fn read_npy(path: &Path) -> Array3<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not an .npy file",
        path.display()
    );
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(
        header.contains("'<f4'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    assert_eq!(shape.len(), 3, "{header}");
    let data: Vec<f32> = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array3::from_shape_vec((shape[0], shape[1], shape[2]), data).unwrap()
}

#[test]
fn npy_output_round_trips() {
    let a = Array3::from_shape_fn((2, 3, 5), |(i, j, k)| (i * 100 + j * 10 + k) as f32 - 0.5);
    let path =
        std::env::temp_dir().join(format!("dropless-generate-npy-{}.npy", std::process::id()));
    npy::write(&path, &a).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        (bytes.len() - 4 * a.len()) % 64,
        0,
        "header must pad to 64 bytes"
    );
    assert_eq!(read_npy(&path), a);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn f32_logits_match_transformers_on_committed_fixtures() {
    let mut checked = 0;
    for family in ["mixtral", "qwen3_moe", "olmoe", "qwen2_moe"] {
        let dir = Path::new("tests/fixtures").join(family);
        if !dir.join("logits.npy").exists() {
            eprintln!(
                "skipping {family}: {} has no fixture (run scripts/make-hf-fixtures.py)",
                dir.display()
            );
            continue;
        }
        let prompt: Vec<Vec<u32>> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("prompt.json")).unwrap())
                .unwrap();
        let expect = read_npy(&dir.join("logits.npy"));
        let model = load(&dir).unwrap_or_else(|e| panic!("{family}: {e}"));
        let got = model.forward(&prompt, None).unwrap();
        assert_close(
            &format!("{family} vs transformers"),
            &got,
            &expect,
            1e-4,
            1e-4,
        );
        checked += 1;
    }
    eprintln!("{checked} families checked against transformers");
}

/// Runs the example's argument parser on `args`.
fn parse(args: &[&str]) -> error::Result<cli::Command> {
    cli::parse_args(args.iter().map(|a| a.to_string()))
}

#[test]
fn help_is_not_an_error() {
    for flag in ["--help", "-h"] {
        assert!(matches!(parse(&[flag]), Ok(cli::Command::Help)), "{flag}");
    }
    assert!(matches!(
        parse(&["--max-new-tokens", "3"]),
        Ok(cli::Command::Run(cli::Args {
            max_new_tokens: 3,
            ..
        }))
    ));
    let err = parse(&["--bogus"]).unwrap_err().to_string();
    assert!(err.contains("--bogus") && err.contains("usage"), "{err}");
}

#[test]
fn the_output_says_what_the_ids_are() {
    // Scripts read the sequence lines: all ids, prompt first, unchanged.
    assert_eq!(
        cli::sequence_line(0, &[1, 2, 3, 489]),
        "sequence 0: 1 2 3 489"
    );
    let demo = cli::header_lines(Some(demo::DemoSize::Small), 8, 16);
    assert_eq!(demo.len(), 2);
    assert!(
        demo[0].contains("demo") && demo[0].contains("seeded random") && demo[0].contains("noise"),
        "{}",
        demo[0]
    );
    assert!(
        demo[1].contains("8 prompt ids, then 16 generated ids"),
        "{}",
        demo[1]
    );
    let real = cli::header_lines(None, 5, 2);
    assert_eq!(real.len(), 1, "no demo line for a checkpoint");
    let note = cli::decode_note(16).unwrap();
    assert!(
        note.contains("prefill") && note.contains("15 steps"),
        "{note}"
    );
    assert_eq!(cli::decode_note(0), None);
}

#[test]
fn generation_past_the_model_positions_is_refused() {
    let config = ModelConfig::from_json(&demo::config_json(demo::DemoSize::Small)).unwrap();
    assert_eq!(config.max_position_embeddings, Some(4096));
    cli::check_positions(&config, 8, 4088).unwrap();
    let err = cli::check_positions(&config, 8, 4089)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_position_embeddings = 4096") && err.contains("--max-new-tokens 4088"),
        "{err}"
    );
    let err = cli::check_positions(&config, 5000, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shorten the prompt"), "{err}");
    let unbounded = ModelConfig {
        max_position_embeddings: None,
        ..config
    };
    cli::check_positions(&unbounded, 8, 1 << 20).unwrap();
}

#[test]
fn runs_too_big_for_memory_are_refused_before_loading() {
    const GIB: u64 = 1 << 30;
    let big = ModelConfig::from_json(&demo::config_json(demo::DemoSize::Mixtral2L)).unwrap();
    // Embedding and LM head, then per layer q, k, v, o, the router, 8
    // experts x 3 matrices and two norms, then the final norm.
    let per_layer = 2 * 4096 * 4096 + 2 * 1024 * 4096 + 8 * 4096 + 8 * 3 * 14336 * 4096 + 2 * 4096;
    assert_eq!(
        memory::parameter_count(&big),
        2 * 32000 * 4096 + 2 * per_layer + 4096
    );
    let run = memory::Run {
        dtype: dropless::DType::F32,
        on_gpu: false,
        source_bytes: 4,
        batch: 1,
        prompt_len: 8,
        max_new_tokens: 16,
    };
    // The f32 demo on the CPU holds the f32 source and the f32 model: 8
    // bytes per parameter, ~23.6 GiB (the 24 GB the kernel killed).
    let need = memory::estimate(&big, &run);
    let params = memory::parameter_count(&big);
    assert!(
        need.host >= 8 * params && need.host < 8 * params + (GIB as u128),
        "{need:?}"
    );
    let err = memory::check(&big, &run, Some(20 * GIB), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("host memory") && err.contains("20.0 GiB") && err.contains("--dtype bf16"),
        "{err}"
    );
    let err = memory::check(&big, &run, Some(12 * GIB), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--demo small"), "{err}");
    // On the GPU the device holds the bf16 model.
    let gpu = memory::Run {
        dtype: dropless::DType::BF16,
        on_gpu: true,
        ..run
    };
    let err = memory::check(&big, &gpu, Some(64 * GIB), Some(4 * GIB))
        .unwrap_err()
        .to_string();
    assert!(err.contains("device memory"), "{err}");
    memory::check(&big, &gpu, Some(64 * GIB), Some(80 * GIB)).unwrap();
    // The small demo fits anywhere.
    let small = ModelConfig::from_json(&demo::config_json(demo::DemoSize::Small)).unwrap();
    memory::check(&small, &run, Some(GIB), None).unwrap();
}

#[test]
fn non_finite_weights_are_refused_when_loaded() {
    let nan = "model.layers.1.block_sparse_moe.experts.2.w2.weight";
    let err = broken("nan", |_, t| {
        t.0.get_mut(nan).unwrap().1[3 * 32 + 5] = f32::NAN;
    });
    assert!(
        err.contains(nan) && err.contains("NaN") && err.contains("row 3, column 5"),
        "{err}"
    );
    // A value that overflows the run dtype: finite in f32, inf in f16.
    let config = tiny_config("mixtral", &TINY);
    let mut tensors = tiny_tensors("mixtral", &TINY, 3);
    tensors.0.get_mut("model.embed_tokens.weight").unwrap().1[7] = 1e6;
    let dir = temp_dir("overflow");
    write_checkpoint(&dir, &config, &tensors, Dtype::F32, 1);
    let parsed = ModelConfig::from_json(&config).unwrap();
    let src = Checkpoint::open(&dir).unwrap();
    Model::<f32>::load(parsed.clone(), &src).unwrap();
    let err = match Model::<half::f16>::load(parsed, &src) {
        Ok(_) => panic!("1e6 overflows f16"),
        Err(e) => e.to_string(),
    };
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        err.contains("model.embed_tokens.weight") && err.contains("f16") && err.contains("inf"),
        "{err}"
    );
}
