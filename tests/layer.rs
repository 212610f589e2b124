//! The layer API on the CPU backend: it is the reference forward and backward,
//! and misuse returns typed errors.

use dropless::config::{AuxLossCoefficients, MlpKind, MoeConfig, MoeWeights};
use dropless::layer::{Backend, DroplessMoe, Tensor};
use dropless::reference::backward::backward;
use dropless::reference::moe::forward_train;
use dropless::Error;
use ndarray::{Array2, Ix2};

fn config(mlp: MlpKind) -> MoeConfig {
    MoeConfig {
        hidden: 32,
        ffn: 32,
        num_experts: 4,
        top_k: 2,
        mlp,
        renormalize: true,
        block_size: 16,
    }
}

fn input(tokens: usize, hidden: usize) -> Array2<f32> {
    Array2::from_shape_fn((tokens, hidden), |(t, h)| {
        ((t * 37 + h * 11) % 19) as f32 / 9.5 - 1.0 + 0.013
    })
}

fn as2(t: &Tensor<f32>, layer: &DroplessMoe<f32>) -> Array2<f32> {
    layer
        .download(t)
        .unwrap()
        .into_dimensionality::<Ix2>()
        .unwrap()
}

#[test]
fn cpu_layer_is_the_reference_forward_and_backward() {
    for mlp in [MlpKind::Plain, MlpKind::Glu] {
        let cfg = config(mlp);
        let weights = MoeWeights::<f32>::random(&cfg, 3).unwrap();
        let x = input(45, cfg.hidden);
        let aux = AuxLossCoefficients {
            load_balancing: 0.01,
            z_loss: 0.001,
        };
        let layer = DroplessMoe::new(cfg, weights.clone(), Backend::Cpu).unwrap();
        let out = layer.forward(&layer.upload(x.view()).unwrap()).unwrap();
        let dy = input(45, cfg.hidden).mapv(|v| v * 0.5 + 0.1);
        let grads = layer
            .backward(&layer.upload(dy.view()).unwrap(), aux)
            .unwrap();

        let (want, saved) = forward_train(&cfg, &weights, x.view()).unwrap();
        let want_grads = backward(&cfg, &weights, &saved, dy.view(), aux).unwrap();
        assert_eq!(as2(&out.output, &layer), want.output);
        assert_eq!(
            layer.download(&out.expert_ids).unwrap(),
            want.routing.expert_ids.into_dyn()
        );
        assert_eq!(
            layer.download(&out.tokens_per_expert).unwrap(),
            want.tokens_per_expert.into_dyn()
        );
        assert_eq!(
            layer.download(&out.load_balancing_loss).unwrap()[[0]],
            want.load_balancing_loss
        );
        assert_eq!(layer.download(&out.z_loss).unwrap()[[0]], want.z_loss);
        assert_eq!(as2(&grads.x, &layer), want_grads.x);
        assert_eq!(as2(&grads.router, &layer), want_grads.router);
        assert_eq!(as2(&grads.w1, &layer), want_grads.w1);
        assert_eq!(as2(&grads.w2, &layer), want_grads.w2);
        assert_eq!(grads.w3.is_some(), mlp == MlpKind::Glu);
    }
}

#[test]
fn backward_before_forward_is_an_error() {
    let cfg = config(MlpKind::Glu);
    let layer = DroplessMoe::new(
        cfg,
        MoeWeights::<f32>::random(&cfg, 1).unwrap(),
        Backend::Cpu,
    )
    .unwrap();
    let dy = layer.upload(input(4, cfg.hidden).view()).unwrap();
    assert!(matches!(
        layer.backward(&dy, AuxLossCoefficients::default()),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn wrong_shapes_are_errors() {
    let cfg = config(MlpKind::Plain);
    let layer = DroplessMoe::new(
        cfg,
        MoeWeights::<f32>::random(&cfg, 1).unwrap(),
        Backend::Cpu,
    )
    .unwrap();
    let bad = layer.upload(input(4, cfg.hidden + 1).view()).unwrap();
    assert!(matches!(
        layer.forward(&bad),
        Err(Error::ShapeMismatch { .. })
    ));
    let x = layer.upload(input(4, cfg.hidden).view()).unwrap();
    layer.forward(&x).unwrap();
    let bad_grad = layer.upload(input(5, cfg.hidden).view()).unwrap();
    assert!(matches!(
        layer.backward(&bad_grad, AuxLossCoefficients::default()),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn weights_that_do_not_fit_the_config_are_rejected() {
    let cfg = config(MlpKind::Glu);
    let mut weights = MoeWeights::<f32>::random(&cfg, 1).unwrap();
    weights.w3 = None;
    assert!(matches!(
        DroplessMoe::new(cfg, weights, Backend::Cpu),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn forward_and_download_in_one_line() {
    // forward takes &self, so the common one-liner borrows cleanly.
    let cfg = config(MlpKind::Glu);
    let layer = DroplessMoe::new(
        cfg,
        MoeWeights::<f32>::random(&cfg, 2).unwrap(),
        Backend::Cpu,
    )
    .unwrap();
    let x = layer.upload(input(9, cfg.hidden).view()).unwrap();
    let y = layer.download(&layer.forward(&x).unwrap().output).unwrap();
    assert_eq!(y.shape(), &[9, cfg.hidden]);
    // What download returns uploads again (e.g. as the upstream gradient).
    let grads = layer
        .backward(
            &layer.upload(y.view()).unwrap(),
            AuxLossCoefficients::default(),
        )
        .unwrap();
    assert_eq!(as2(&grads.x, &layer).dim(), (9, cfg.hidden));
}

#[test]
fn backward_says_whether_every_gradient_is_finite() {
    let cfg = config(MlpKind::Glu);
    let layer = DroplessMoe::new(
        cfg,
        MoeWeights::<f32>::random(&cfg, 4).unwrap(),
        Backend::Cpu,
    )
    .unwrap();
    let aux = AuxLossCoefficients {
        load_balancing: 0.01,
        z_loss: 0.001,
    };
    layer
        .forward(&layer.upload(input(12, cfg.hidden).view()).unwrap())
        .unwrap();
    let dy = input(12, cfg.hidden);
    let grads = layer
        .backward(&layer.upload(dy.view()).unwrap(), aux)
        .unwrap();
    assert!(grads.finite.all_finite(layer.backend()).unwrap());
    grads.finite.check(layer.backend()).unwrap();

    // A NaN in the upstream gradient poisons the gradients: the batch is
    // flagged (GLaM skips its update), with the first tensor named.
    let mut bad = dy.clone();
    bad[[5, 3]] = f32::NAN;
    let grads = layer
        .backward(&layer.upload(bad.view()).unwrap(), aux)
        .unwrap();
    assert!(!grads.finite.all_finite(layer.backend()).unwrap());
    let err = grads.finite.check(layer.backend()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonFinite {
                what: "the input gradient (dx)",
                row: 5,
                ..
            }
        ),
        "{err}"
    );
}
