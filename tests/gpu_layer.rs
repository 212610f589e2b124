//! The dMoE layer on the GPU against the same layer on the CPU reference, for
//! bf16 and f16, forward and backward. Tolerances: the dtype's relative
//! tolerance on each tensor's max-abs scale (both sides round every stored
//! intermediate to the dtype; accumulation order differs).

use dropless::config::{AuxLossCoefficients, MlpKind, MoeConfig, MoeWeights};
use dropless::layer::{Backend, DroplessMoe, LayerElement, Tensor};
use dropless::Element;
use half::{bf16, f16};
use ndarray::{Array2, ArrayD};

fn input<T: Element>(tokens: usize, hidden: usize, salt: usize) -> Array2<T> {
    Array2::from_shape_fn((tokens, hidden), |(t, h)| {
        let v = ((t * 131 + h * 71 + salt * 17) % 97) as f32 / 48.5 - 1.0;
        T::from_f32(if v == 0.0 { 0.37 } else { v })
    })
}

fn assert_close<T: Element>(got: &ArrayD<T>, want: &ArrayD<T>, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes");
    let scale = want
        .iter()
        .fold(0f32, |m, v| m.max(v.to_f32().abs()))
        .max(1e-6);
    let tol = 2.0 * T::DTYPE.rel_tolerance() * scale;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.to_f32(), w.to_f32());
        assert!(
            g.is_finite() && (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (scale {scale}, {})",
            T::DTYPE
        );
    }
}

fn run<T: LayerElement>(config: MoeConfig, tokens: usize) {
    let Backend::Cuda(device) = Backend::auto().0 else {
        panic!("a CUDA device with the kernels built is required");
    };
    let weights = MoeWeights::<T>::random(&config, 11).unwrap();
    let x = input::<T>(tokens, config.hidden, 1);
    let dy = input::<T>(tokens, config.hidden, 2);
    let aux = AuxLossCoefficients {
        load_balancing: 0.01,
        z_loss: 0.001,
    };

    let cpu = DroplessMoe::new(config, weights.clone(), Backend::Cpu).unwrap();
    let gpu = DroplessMoe::new(config, weights, Backend::Cuda(device)).unwrap();
    let cpu_out = cpu.forward(&cpu.upload(x.view()).unwrap()).unwrap();
    let gpu_out = gpu.forward(&gpu.upload(x.view()).unwrap()).unwrap();
    let cpu_grads = cpu.backward(&cpu.upload(dy.view()).unwrap(), aux).unwrap();
    let gpu_grads = gpu.backward(&gpu.upload(dy.view()).unwrap(), aux).unwrap();

    let ids_cpu = cpu.download(&cpu_out.expert_ids).unwrap();
    let ids_gpu = gpu.download(&gpu_out.expert_ids).unwrap();
    assert_eq!(
        ids_gpu, ids_cpu,
        "routing must agree (f32 logits on both sides)"
    );
    assert_eq!(
        gpu.download(&gpu_out.tokens_per_expert).unwrap(),
        cpu.download(&cpu_out.tokens_per_expert).unwrap()
    );
    let get = |layer: &DroplessMoe<T>, t: &Tensor<T>| layer.download(t).unwrap();
    assert_close(
        &get(&gpu, &gpu_out.output),
        &get(&cpu, &cpu_out.output),
        "output",
    );
    for (name, g, c) in [
        (
            "lbl",
            &gpu_out.load_balancing_loss,
            &cpu_out.load_balancing_loss,
        ),
        ("z", &gpu_out.z_loss, &cpu_out.z_loss),
    ] {
        let (g, c) = (gpu.download(g).unwrap()[[0]], cpu.download(c).unwrap()[[0]]);
        assert!(
            (g - c).abs() <= 1e-4 * c.abs().max(1.0),
            "{name}: {g} vs {c}"
        );
    }
    assert_close(&get(&gpu, &gpu_grads.x), &get(&cpu, &cpu_grads.x), "dx");
    assert_close(
        &get(&gpu, &gpu_grads.router),
        &get(&cpu, &cpu_grads.router),
        "drouter",
    );
    assert_close(&get(&gpu, &gpu_grads.w1), &get(&cpu, &cpu_grads.w1), "dw1");
    assert_close(&get(&gpu, &gpu_grads.w2), &get(&cpu, &cpu_grads.w2), "dw2");
    if let (Some(g), Some(c)) = (&gpu_grads.w3, &cpu_grads.w3) {
        assert_close(&get(&gpu, g), &get(&cpu, c), "dw3");
    }
}

fn configs() -> Vec<(MoeConfig, usize)> {
    let base = MoeConfig {
        hidden: 256,
        ffn: 256,
        num_experts: 8,
        top_k: 2,
        mlp: MlpKind::Glu,
        renormalize: true,
        block_size: 128,
    };
    vec![
        (base, 300),
        (
            MoeConfig {
                mlp: MlpKind::Plain,
                renormalize: false,
                ..base
            },
            129,
        ),
        (
            MoeConfig {
                num_experts: 16,
                top_k: 4,
                hidden: 384,
                ..base
            },
            1,
        ),
    ]
}

#[test]
#[ignore = "requires a CUDA device"]
fn gpu_layer_matches_cpu_layer_bf16() {
    for (config, tokens) in configs() {
        run::<bf16>(config, tokens);
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn gpu_layer_matches_cpu_layer_f16() {
    for (config, tokens) in configs() {
        run::<f16>(config, tokens);
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn gpu_layer_refuses_block_sizes_the_kernels_lack() {
    let Backend::Cuda(device) = Backend::auto().0 else {
        panic!("a CUDA device with the kernels built is required");
    };
    let config = MoeConfig {
        hidden: 64,
        ffn: 128,
        num_experts: 4,
        top_k: 2,
        mlp: MlpKind::Glu,
        renormalize: true,
        block_size: 64,
    };
    let weights = MoeWeights::<bf16>::random(&config, 1).unwrap();
    let backend = Backend::Cuda(device);
    let err = backend.check_config(&config).unwrap_err();
    assert!(
        matches!(
            err,
            dropless::Error::UnsupportedBlockSize { block_size: 64, .. }
        ),
        "{err}"
    );
    let err = DroplessMoe::new(config, weights, backend)
        .err()
        .expect("block size 64 must be refused on CUDA");
    assert!(
        matches!(
            err,
            dropless::Error::UnsupportedBlockSize { block_size: 64, .. }
        ),
        "{err}"
    );
}

fn device() -> std::sync::Arc<dropless::cuda::CudaBackend> {
    let Backend::Cuda(device) = Backend::auto().0 else {
        panic!("a CUDA device with the kernels built is required");
    };
    device
}

fn small_config() -> MoeConfig {
    MoeConfig {
        hidden: 128,
        ffn: 128,
        num_experts: 4,
        top_k: 2,
        mlp: MlpKind::Glu,
        renormalize: true,
        block_size: 128,
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn gpu_layer_refuses_non_finite_weights_on_upload() {
    let config = small_config();
    let b = device();
    let mut weights = MoeWeights::<bf16>::random(&config, 3).unwrap();
    weights.w2[[130, 7]] = bf16::NAN;
    let err = dropless::cuda::moe::DeviceMoeWeights::from_host(&b, &config, &weights)
        .expect_err("NaN weights must be refused");
    assert!(
        matches!(&err, dropless::Error::NonFinite { what, row: 130, col: 7, .. } if what.contains("w2")),
        "{err}"
    );
    let err = DroplessMoe::new(config, weights, Backend::Cuda(b))
        .err()
        .expect("NaN weights must be refused");
    assert!(
        matches!(
            err,
            dropless::Error::NonFinite {
                row: 130,
                col: 7,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
#[ignore = "requires a CUDA device"]
fn gpu_layer_flags_non_finite_results_on_the_device() {
    let config = small_config();
    let layer = DroplessMoe::new(
        config,
        MoeWeights::<bf16>::random(&config, 5).unwrap(),
        Backend::Cuda(device()),
    )
    .unwrap();
    let aux = AuxLossCoefficients {
        load_balancing: 0.01,
        z_loss: 0.001,
    };
    // A finite batch: every flag reads finite.
    let x = input::<bf16>(40, config.hidden, 1);
    let out = layer.forward(&layer.upload(x.view()).unwrap()).unwrap();
    out.finite.check(layer.backend()).unwrap();
    let dy = input::<bf16>(40, config.hidden, 2);
    let grads = layer
        .backward(&layer.upload(dy.view()).unwrap(), aux)
        .unwrap();
    assert!(grads.finite.all_finite(layer.backend()).unwrap());

    // A NaN in the upstream gradient: the gradients are flagged.
    let mut bad = dy.clone();
    bad[[7, 3]] = bf16::NAN;
    let grads = layer
        .backward(&layer.upload(bad.view()).unwrap(), aux)
        .unwrap();
    assert!(!grads.finite.all_finite(layer.backend()).unwrap());
    assert!(matches!(
        grads.finite.check(layer.backend()).unwrap_err(),
        dropless::Error::NonFinite {
            what: "the input gradient (dx)",
            row: 7,
            ..
        }
    ));

    // Finite inputs whose products overflow: Ok from forward (no host
    // sync), and the flag names the output.
    let huge = Array2::from_elem((8, config.hidden), bf16::from_f32(1e30));
    let out = layer.forward(&layer.upload(huge.view()).unwrap()).unwrap();
    let err = out.finite.check(layer.backend()).unwrap_err();
    assert!(
        matches!(
            err,
            dropless::Error::NonFinite {
                what: "the layer output",
                ..
            }
        ),
        "{err}"
    );
}
