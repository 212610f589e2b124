//! The generate example's ModuleFormer / MoLM model on the CPU against IBM's
//! own code: float32 logits and greedy tokens on the committed tiny random
//! checkpoints in tests/fixtures/moduleformer* (how they were made:
//! tests/fixtures/moduleformer/README.md); KV-cache decoding against the
//! full forward; bf16 and f16 runs; config errors.

#[allow(dead_code)]
#[path = "../examples/generate/checkpoint.rs"]
mod checkpoint;
#[allow(dead_code)]
#[path = "../examples/generate/config.rs"]
mod config;
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
#[path = "../examples/generate/model.rs"]
mod model;
#[allow(dead_code)]
#[path = "../examples/generate/moduleformer/mod.rs"]
mod moduleformer;

use std::path::{Path, PathBuf};

use dropless::Element;
use half::{bf16, f16};
use ndarray::{concatenate, Array3, Axis};
use serde_json::Value;

use checkpoint::Checkpoint;
use decoding::HostModel;
use moduleformer::config::MolmConfig;
use moduleformer::model::{MolmCache, MolmModel};

const FIXTURES: [&str; 3] = ["moduleformer", "moduleformer_linear", "moduleformer_heads"];

fn dir(name: &str) -> PathBuf {
    Path::new("tests/fixtures").join(name)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load<T: Element>(name: &str) -> MolmModel<T> {
    let d = dir(name);
    let config = MolmConfig::from_json(&json(&d.join("config.json"))).unwrap();
    MolmModel::load(config, &Checkpoint::open(&d).unwrap())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn prompt(name: &str) -> Vec<Vec<u32>> {
    serde_json::from_value(json(&dir(name).join("prompt.json"))).unwrap()
}

/// A little-endian f32 `[a, b, c]` .npy file.
fn read_npy(path: &Path) -> Array3<f32> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'<f4'") && header.contains("'fortran_order': False"));
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array3::from_shape_vec((shape[0], shape[1], shape[2]), data).unwrap()
}

fn max_err(a: &Array3<f32>, b: &Array3<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter()
        .zip(b.iter())
        .fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn f32_logits_and_greedy_tokens_match_ibm() {
    for name in FIXTURES {
        let model = load::<f32>(name);
        let ids = prompt(name);
        let expect = read_npy(&dir(name).join("logits.npy"));
        let got = model.forward(&ids, None).unwrap();
        let err = max_err(&got, &expect);
        eprintln!("{name}: max |logit error| vs IBM {err:e}");
        assert!(err <= 1e-4, "{name}: logits differ from IBM's by {err}");
        let greedy: Vec<Vec<u32>> =
            serde_json::from_value(json(&dir(name).join("greedy.json"))).unwrap();
        let new = greedy[0].len() - ids[0].len();
        let generation = model.generate(&ids, new).unwrap();
        assert_eq!(generation.tokens, greedy, "{name}: greedy tokens");
    }
}

#[test]
fn cached_decoding_matches_the_full_forward() {
    for name in FIXTURES {
        let model = load::<f32>(name);
        let ids = prompt(name);
        let full = model.forward(&ids, None).unwrap();
        let mut cache = MolmCache::new(&model, ids.len());
        let head: Vec<Vec<u32>> = ids.iter().map(|s| s[..3].to_vec()).collect();
        let mut parts = vec![model.forward(&head, Some(&mut cache)).unwrap()];
        for t in 3..ids[0].len() {
            let step: Vec<Vec<u32>> = ids.iter().map(|s| vec![s[t]]).collect();
            parts.push(model.forward(&step, Some(&mut cache)).unwrap());
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        let cached = concatenate(Axis(1), &views).unwrap();
        let err = max_err(&cached, &full);
        assert!(err <= 1e-5, "{name}: cached vs full {err}");
    }
}

#[test]
fn bf16_and_f16_runs_stay_close_to_f32() {
    for name in FIXTURES {
        let ids = prompt(name);
        let reference = load::<f32>(name).forward(&ids, None).unwrap();
        let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let bf = load::<bf16>(name).forward(&ids, None).unwrap();
        let hf = load::<f16>(name).forward(&ids, None).unwrap();
        let (eb, eh) = (max_err(&bf, &reference), max_err(&hf, &reference));
        eprintln!("{name}: bf16 {eb:e}, f16 {eh:e} (logit scale {scale})");
        assert!(eb <= 0.1 * scale.max(1.0), "{name}: bf16 error {eb}");
        assert!(eh <= 0.02 * scale.max(1.0), "{name}: f16 error {eh}");
        let generation = load::<bf16>(name).generate(&ids, 2).unwrap();
        assert_eq!(generation.tokens[0].len(), ids[0].len() + 2);
    }
}

#[test]
fn bad_configs_name_the_field() {
    let base = json(&dir("moduleformer").join("config.json"));
    let err = |edit: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        edit(&mut v);
        MolmConfig::from_json(&v).unwrap_err().to_string()
    };
    assert!(err(&|v| v["k_att"] = 9.into()).contains("k_att"));
    assert!(err(&|v| v["att_hidden"] = 15.into()).contains("att_hidden"));
    assert!(err(&|v| v["gate_type"] = "gmm".into()).contains("gate_type"));
    assert!(err(&|v| v["activation_function"] = "tanh".into()).contains("activation_function"));
    assert!(err(&|v| v["n_embd"] = Value::Null).contains("n_embd"));
}

#[test]
fn the_molm_demo_loads_and_generates_deterministically() {
    assert_eq!(demo::DemoSize::parse("molm"), Some(demo::DemoSize::Molm));
    let json = demo::config_json(demo::DemoSize::Molm);
    assert!(moduleformer::config::is_moduleformer(&json));
    let config = MolmConfig::from_json(&json).unwrap();
    let src = moduleformer::demo::weights(&config, 7);
    let model = MolmModel::<f32>::load(config.clone(), &src).unwrap();
    let ids = vec![vec![1u32, 2, 3, 4]];
    let a = model.generate(&ids, 3).unwrap().tokens;
    let again = MolmModel::<f32>::load(
        config,
        &moduleformer::demo::weights(&MolmConfig::from_json(&json).unwrap(), 7),
    )
    .unwrap()
    .generate(&ids, 3)
    .unwrap()
    .tokens;
    assert_eq!(a, again);
    assert_eq!(a[0].len(), 7);
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named() {
    let mut json = demo::config_json(demo::DemoSize::Molm);
    json["gate_type"] = "linear".into();
    let linear = MolmConfig::from_json(&json).unwrap();
    let src = moduleformer::demo::weights(&linear, 1);
    let mlp = MolmConfig::from_json(&demo::config_json(demo::DemoSize::Molm)).unwrap();
    let err = match MolmModel::<f32>::load(mlp, &src) {
        Ok(_) => panic!("a linear router cannot load as an mlp one"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("transformer.h.0.attn.q_proj.gate.w_gate.0.weight")
            && err.contains("[64, 128]"),
        "{err}"
    );
}
