//! Every bad input to the CPU reference returns the typed error that names it,
//! never a panic: one test per kind of bad input.

use dropless::config::{MlpKind, MoeConfig, MoeWeights};
use dropless::reference::loss::{load_balancing_loss, router_z_loss};
use dropless::reference::moe::forward;
use dropless::reference::permute::{
    histogram, inclusive_cumsum, padded_bins, padded_gather, padded_scatter,
    padded_scatter_weight_grad, sort_by_expert,
};
use dropless::reference::routing::route;
use dropless::{Error, Topology};
use ndarray::{array, Array1, Array2};

/// A small valid configuration.
fn config() -> MoeConfig {
    MoeConfig {
        hidden: 8,
        ffn: 16,
        num_experts: 4,
        top_k: 2,
        mlp: MlpKind::Glu,
        renormalize: true,
        block_size: 16,
    }
}

/// A `[tokens, hidden]` input with non-zero values.
fn input(tokens: usize, hidden: usize) -> Array2<f32> {
    Array2::from_shape_fn((tokens, hidden), |(t, h)| {
        ((t * 7 + h * 3) % 11) as f32 * 0.1 - 0.45
    })
}

/// Layout arrays of a valid 3-token, top-1, 2-expert routing with block 16.
fn valid_layout() -> (Array1<i32>, Array1<i32>, Array1<i32>) {
    let ids = array![[1i32], [0], [1]];
    let counts = histogram(ids.view(), 2).unwrap();
    let (indices, _) = sort_by_expert(ids.view(), 2).unwrap();
    (
        indices,
        inclusive_cumsum(counts.view()).unwrap(),
        padded_bins(counts.view(), 16).unwrap(),
    )
}

#[test]
fn shape_mismatch_in_the_forward_input() {
    let cfg = config();
    let w = MoeWeights::<f32>::random(&cfg, 1).unwrap();
    let err = forward(&cfg, &w, input(5, 7).view()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                op: "moe::forward",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn shape_mismatch_in_the_weights() {
    let cfg = config();
    let mut w = MoeWeights::<f32>::random(&cfg, 1).unwrap();
    w.w2 = Array2::from_elem((4 * 16, 9), 0.1);
    let err = forward(&cfg, &w, input(5, 8).view()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}

#[test]
fn glu_without_w3_is_an_invalid_config() {
    let cfg = config();
    let mut w = MoeWeights::<f32>::random(&cfg, 1).unwrap();
    w.w3 = None;
    let err = w.check(&cfg).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
}

#[test]
fn shape_mismatch_between_probs_and_expert_ids() {
    let probs = Array2::from_elem((3, 4), 0.25f32);
    let err = load_balancing_loss(probs.view(), array![[0], [1]].view(), 4).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let err = load_balancing_loss(probs.view(), array![[0], [1], [2]].view(), 5).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}

#[test]
fn shape_mismatch_in_gather_and_scatter() {
    let (indices, bins, padded) = valid_layout();
    // x has 4 rows, the layout 3 tokens.
    let err = padded_gather(
        input(4, 2).view(),
        indices.view(),
        bins.view(),
        padded.view(),
        None,
        1,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                op: "padded_gather",
                ..
            }
        ),
        "{err}"
    );
    // Weights must be [tokens, top_k].
    let w = Array2::from_elem((3, 2), 0.5f32);
    let err = padded_gather(
        input(3, 2).view(),
        indices.view(),
        bins.view(),
        padded.view(),
        Some(w.view()),
        1,
    )
    .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // y has fewer rows than the 32 padded rows.
    let err = padded_scatter(
        input(31, 2).view(),
        indices.view(),
        bins.view(),
        padded.view(),
        None,
        1,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                op: "padded_scatter",
                ..
            }
        ),
        "{err}"
    );
    // grad_out and y widths differ.
    let err = padded_scatter_weight_grad(
        input(3, 2).view(),
        input(32, 3).view(),
        indices.view(),
        bins.view(),
        padded.view(),
        1,
    )
    .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}

#[test]
fn inconsistent_layout_arrays_are_a_shape_mismatch() {
    let (indices, bins, padded) = valid_layout();
    let x = input(3, 2);
    // Not a permutation.
    let dup = array![1i32, 1, 2];
    let err = padded_gather(x.view(), dup.view(), bins.view(), padded.view(), None, 1).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // Bins that do not end at the number of assignments.
    let short = array![1i32, 2];
    let err = padded_gather(
        x.view(),
        indices.view(),
        short.view(),
        padded.view(),
        None,
        1,
    )
    .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // A padded group smaller than its expert's count.
    let tight = array![1i32, 2];
    let err =
        padded_gather(x.view(), indices.view(), bins.view(), tight.view(), None, 1).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}

#[test]
fn expert_id_out_of_range() {
    // Flat assignment 3 = token 1, slot 1 holds expert 4 of 4.
    let ids = array![[0i32, 1], [2, 4]];
    let err = histogram(ids.view(), 4).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ExpertOutOfRange {
                index: 3,
                expert: 4,
                num_experts: 4
            }
        ),
        "{err}"
    );
    let negative = array![[0i32, -1]];
    let err = sort_by_expert(negative.view(), 4).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ExpertOutOfRange {
                index: 1,
                expert: -1,
                ..
            }
        ),
        "{err}"
    );
    let probs = Array2::from_elem((2, 4), 0.25f32);
    let err = load_balancing_loss(probs.view(), ids.view(), 4).unwrap_err();
    assert!(
        matches!(err, Error::ExpertOutOfRange { index: 3, .. }),
        "{err}"
    );
}

#[test]
fn top_k_zero() {
    let err = route(input(3, 4).view(), 0, false).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidTopK {
                top_k: 0,
                num_experts: 4
            }
        ),
        "{err}"
    );
    let cfg = MoeConfig {
        top_k: 0,
        ..config()
    };
    let err = cfg.validate().unwrap_err();
    assert!(matches!(err, Error::InvalidTopK { top_k: 0, .. }), "{err}");
    let empty_slots = Array2::<i32>::zeros((3, 0));
    let err = histogram(empty_slots.view(), 4).unwrap_err();
    assert!(matches!(err, Error::InvalidTopK { top_k: 0, .. }), "{err}");
}

#[test]
fn top_k_above_the_number_of_experts() {
    let err = route(input(3, 4).view(), 5, true).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidTopK {
                top_k: 5,
                num_experts: 4
            }
        ),
        "{err}"
    );
    let cfg = MoeConfig {
        top_k: 5,
        ..config()
    };
    let w = MoeWeights::<f32>::random(&config(), 1).unwrap();
    let err = forward(&cfg, &w, input(2, 8).view()).unwrap_err();
    assert!(matches!(err, Error::InvalidTopK { top_k: 5, .. }), "{err}");
    let (indices, bins, padded) = valid_layout();
    let err = padded_scatter(
        input(32, 2).view(),
        indices.view(),
        bins.view(),
        padded.view(),
        None,
        3,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidTopK {
                top_k: 3,
                num_experts: 2
            }
        ),
        "{err}"
    );
}

#[test]
fn empty_batch() {
    let err = route(Array2::<f32>::zeros((0, 4)).view(), 1, false).unwrap_err();
    assert!(matches!(err, Error::Empty { op: "route", .. }), "{err}");
    let err = histogram(Array2::<i32>::zeros((0, 2)).view(), 4).unwrap_err();
    assert!(matches!(err, Error::Empty { .. }), "{err}");
    let err = router_z_loss(Array2::<f32>::zeros((0, 4)).view()).unwrap_err();
    assert!(matches!(err, Error::Empty { .. }), "{err}");
    let cfg = config();
    let w = MoeWeights::<f32>::random(&cfg, 1).unwrap();
    let err = forward(&cfg, &w, Array2::<f32>::zeros((0, 8)).view()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Empty {
                op: "moe::forward",
                ..
            }
        ),
        "{err}"
    );
    let empty = Array1::<i32>::zeros(0);
    let err = inclusive_cumsum(empty.view()).unwrap_err();
    assert!(matches!(err, Error::Empty { .. }), "{err}");
    let err = padded_gather(
        Array2::<f32>::zeros((0, 2)).view(),
        empty.view(),
        array![0i32].view(),
        array![0i32].view(),
        None,
        1,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Empty { .. }), "{err}");
}

#[test]
fn nan_logits() {
    let mut logits = input(3, 4);
    logits[[1, 2]] = f32::NAN;
    let err = route(logits.view(), 2, false).unwrap_err();
    assert!(
        matches!(err, Error::NonFinite { row: 1, col: 2, value, .. } if value.is_nan()),
        "{err}"
    );
    let err = router_z_loss(logits.view()).unwrap_err();
    assert!(
        matches!(err, Error::NonFinite { row: 1, col: 2, .. }),
        "{err}"
    );
    // A NaN in the layer's input reaches the router logits.
    let cfg = config();
    let w = MoeWeights::<f32>::random(&cfg, 1).unwrap();
    let mut x = input(4, 8);
    x[[2, 5]] = f32::NAN;
    let err = forward(&cfg, &w, x.view()).unwrap_err();
    assert!(
        matches!(err, Error::NonFinite { row: 2, col: 0, .. }),
        "{err}"
    );
}

#[test]
fn inf_logits() {
    // +inf is an error; -inf masks an expert (see minus_inf_logits_mask_experts).
    let mut logits = input(3, 4);
    logits[[2, 0]] = f32::INFINITY;
    let err = route(logits.view(), 1, true).unwrap_err();
    assert!(
        matches!(err, Error::NonFinite { row: 2, col: 0, value, .. } if value == f32::INFINITY),
        "{err}"
    );
    let err = router_z_loss(logits.view()).unwrap_err();
    assert!(
        matches!(err, Error::NonFinite { row: 2, col: 0, .. }),
        "{err}"
    );
    let mut probs = Array2::from_elem((2, 2), 0.5f32);
    probs[[0, 1]] = f32::INFINITY;
    let err = load_balancing_loss(probs.view(), array![[0], [1]].view(), 2).unwrap_err();
    assert!(
        matches!(err, Error::NonFinite { row: 0, col: 1, .. }),
        "{err}"
    );
}

#[test]
fn minus_inf_logits_mask_experts() {
    // A logit of -inf means "never route here" (a pruned or disabled expert):
    // probability 0, never chosen, zero logit gradient; the other experts
    // route as if the masked one did not exist.
    let mut logits = input(5, 4);
    for t in 0..5 {
        logits[[t, 1]] = f32::NEG_INFINITY;
    }
    logits[[3, 2]] = f32::NEG_INFINITY;
    let routing = route(logits.view(), 2, true).unwrap();
    for t in 0..5 {
        assert_eq!(routing.probs[[t, 1]], 0.0);
        assert!(
            routing.expert_ids.row(t).iter().all(|&e| e != 1),
            "token {t}"
        );
    }
    assert_eq!(routing.probs[[3, 2]], 0.0);
    let mut row3: Vec<i32> = routing.expert_ids.row(3).to_vec();
    row3.sort_unstable();
    assert_eq!(
        row3,
        vec![0, 3],
        "token 3 keeps its only two routable experts"
    );
    // The same as routing over the unmasked experts alone (tokens 0..3, 4).
    let kept = [0usize, 2, 3];
    let sub = Array2::from_shape_fn((5, 3), |(t, i)| logits[[t, kept[i]]]);
    let sub_routing = route(sub.select(ndarray::Axis(0), &[0, 1, 2, 4]).view(), 2, true).unwrap();
    for (i, t) in [0usize, 1, 2, 4].into_iter().enumerate() {
        for j in 0..2 {
            assert_eq!(
                routing.expert_ids[[t, j]],
                kept[sub_routing.expert_ids[[i, j]] as usize] as i32
            );
            assert!((routing.weights[[t, j]] - sub_routing.weights[[i, j]]).abs() < 1e-6);
        }
    }
    let z = router_z_loss(logits.view()).unwrap();
    assert!(z.is_finite(), "{z}");
    let dlogits = dropless::reference::router_grad::route_backward(
        logits.view(),
        &routing,
        Array2::from_elem((5, 2), 0.3f32).view(),
        true,
        dropless::AuxLossCoefficients {
            load_balancing: 0.1,
            z_loss: 0.01,
        },
    )
    .unwrap();
    assert!(dlogits.iter().all(|v| v.is_finite()));
    for t in 0..5 {
        assert_eq!(dlogits[[t, 1]], 0.0, "a masked expert gets no gradient");
    }
}

#[test]
fn too_few_routable_experts() {
    // Token 1 keeps one routable expert but needs top_k = 2.
    let mut logits = input(3, 4);
    for e in [0, 2, 3] {
        logits[[1, e]] = f32::NEG_INFINITY;
    }
    let err = route(logits.view(), 2, false).unwrap_err();
    assert_eq!(
        err,
        Error::TooFewExperts {
            token: 1,
            routable: 1,
            needed: 2
        },
        "{err}"
    );
    assert!(err.to_string().contains("lower top_k"), "{err}");
    route(logits.view(), 1, false).unwrap();
    // A token with every expert masked has no logsumexp.
    logits.row_mut(2).fill(f32::NEG_INFINITY);
    let err = router_z_loss(logits.view()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooFewExperts {
                token: 2,
                routable: 0,
                needed: 1
            }
        ),
        "{err}"
    );
    // NaN and +inf are still errors, named for the first bad token.
    logits[[0, 3]] = f32::NAN;
    let err = route(logits.view(), 1, false).unwrap_err();
    assert!(
        matches!(err, Error::NonFinite { row: 0, col: 3, .. }),
        "{err}"
    );
}

#[test]
fn a_token_listing_an_expert_twice_is_refused_by_the_sort() {
    let ids = array![[0i32, 1], [2, 2], [1, 3]];
    let err = sort_by_expert(ids.view(), 4).unwrap_err();
    assert_eq!(
        err,
        Error::DuplicateExpert {
            token: 1,
            expert: 2,
            first: 0,
            second: 1
        },
        "{err}"
    );
    assert!(err.to_string().contains("distinct"), "{err}");
    let ids = array![[3i32, 0, 1, 3]];
    assert!(matches!(
        sort_by_expert(ids.view(), 4),
        Err(Error::DuplicateExpert {
            token: 0,
            expert: 3,
            first: 0,
            second: 3
        })
    ));
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    use dropless::layer::{Backend, DroplessMoe};
    let cfg = config();
    for (which, value) in [
        ("w2", f32::NAN),
        ("router", f32::INFINITY),
        ("w3", f32::NEG_INFINITY),
    ] {
        let mut w = MoeWeights::<f32>::random(&cfg, 1).unwrap();
        let m = match which {
            "w2" => &mut w.w2,
            "router" => &mut w.router,
            _ => w.w3.as_mut().unwrap(),
        };
        m[[3, 5]] = value;
        let err = w.check_finite().unwrap_err();
        match &err {
            Error::NonFinite {
                what,
                row: 3,
                col: 5,
                value: v,
            } if what.contains(which) && (v.is_nan() == value.is_nan()) => {}
            other => panic!("{which}: {other}"),
        }
        assert!(err.to_string().contains("row 3, column 5"), "{err}");
        let err = DroplessMoe::new(cfg, w, Backend::Cpu).err().unwrap();
        assert!(
            matches!(err, Error::NonFinite { row: 3, col: 5, .. }),
            "{err}"
        );
    }
    // bf16 weights too (a badly converted checkpoint).
    let mut w = MoeWeights::<half::bf16>::random(&cfg, 1).unwrap();
    w.w1[[0, 7]] = half::bf16::INFINITY;
    assert!(matches!(
        w.check_finite(),
        Err(Error::NonFinite { row: 0, col: 7, .. })
    ));
}

#[test]
fn overflowing_layer_outputs_are_errors_on_the_cpu() {
    use dropless::layer::{Backend, DroplessMoe};
    // Finite inputs whose products overflow f32: the forward's output (and
    // z-loss) would be inf; the CPU layer returns the error instead of Ok.
    let cfg = config();
    let layer = DroplessMoe::new(
        cfg,
        MoeWeights::<f32>::random(&cfg, 1).unwrap(),
        Backend::Cpu,
    )
    .unwrap();
    let x = Array2::from_elem((4, cfg.hidden), 1e30f32);
    let err = layer
        .forward(&layer.upload(x.view()).unwrap())
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            Error::NonFinite {
                what: "the layer output",
                ..
            }
        ),
        "{err}"
    );
    // A finite forward is Ok and flagged finite.
    let out = layer
        .forward(&layer.upload(input(4, cfg.hidden).view()).unwrap())
        .unwrap();
    out.finite.check(layer.backend()).unwrap();
}

#[test]
fn i32_overflow() {
    // Counts whose (padded) total exceeds i32::MAX.
    let huge = array![i32::MAX, 1];
    let err = padded_bins(huge.view(), 16).unwrap_err();
    assert!(
        matches!(
            err,
            Error::IndexOverflow {
                what: "padded tokens",
                ..
            }
        ),
        "{err}"
    );
    let err = padded_bins(array![i32::MAX - 3].view(), 128).unwrap_err();
    assert!(matches!(err, Error::IndexOverflow { .. }), "{err}");
    let err = inclusive_cumsum(huge.view()).unwrap_err();
    assert!(matches!(err, Error::IndexOverflow { .. }), "{err}");
    let err = Topology::from_tokens_per_expert(&[1 << 31, 5], 128, 128).unwrap_err();
    assert!(matches!(err, Error::IndexOverflow { .. }), "{err}");
    // Weights too large for i32 indexing (never allocated: validate runs first).
    let cfg = MoeConfig {
        hidden: 1 << 16,
        ffn: 1 << 12,
        num_experts: 1 << 4,
        ..config()
    };
    let err = cfg.validate().unwrap_err();
    assert!(matches!(err, Error::IndexOverflow { .. }), "{err}");
    // 2^31 tokens as a broadcast view of one element: rejected before any work.
    let one = Array2::<f32>::zeros((1, 1));
    let logits = one.broadcast((1 << 31, 1)).unwrap();
    let err = route(logits, 1, false).unwrap_err();
    assert!(matches!(err, Error::IndexOverflow { .. }), "{err}");
    let one_id = Array2::<i32>::zeros((1, 1));
    let ids = one_id.broadcast((1 << 30, 2)).unwrap();
    let err = histogram(ids, 2).unwrap_err();
    assert!(
        matches!(
            err,
            Error::IndexOverflow {
                what: "tokens x top_k",
                ..
            }
        ),
        "{err}"
    );
    let grad_ids = one_id.broadcast((1 << 30, 2)).unwrap();
    let err = sort_by_expert(grad_ids, 2).unwrap_err();
    assert!(matches!(err, Error::IndexOverflow { .. }), "{err}");
}

#[test]
fn negative_counts_are_an_invalid_config() {
    let err = padded_bins(array![3, -1].view(), 16).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
}

#[test]
fn unsupported_block_size() {
    let err = padded_bins(array![3, 1].view(), 8).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedBlockSize { block_size: 8, .. }),
        "{err}"
    );
    let cfg = MoeConfig {
        block_size: 48,
        ffn: 96,
        ..config()
    };
    let err = cfg.validate().unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedBlockSize { block_size: 48, .. }),
        "{err}"
    );
    let err = MoeWeights::<f32>::random(&cfg, 1).unwrap_err();
    assert!(matches!(err, Error::UnsupportedBlockSize { .. }), "{err}");
    let err = Topology::from_tokens_per_expert(&[3, 4], 256, 256).unwrap_err();
    assert!(matches!(err, Error::UnsupportedBlockSize { .. }), "{err}");
}

#[test]
fn ffn_not_a_multiple_of_the_block_size_is_an_invalid_config() {
    let cfg = MoeConfig {
        ffn: 24,
        ..config()
    };
    let err = cfg.validate().unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
}

#[test]
fn block_sizes_the_gpu_kernels_lack_are_refused_up_front() {
    // The check every CUDA entry point (DroplessMoe::new on a CUDA backend,
    // the device weights' upload, padded bins, topologies, the sparse
    // products) runs first; it needs no device.
    use dropless::cuda::{check_block_size, max_padded_tokens, CUDA_BLOCK_SIZES};
    use dropless::layer::Backend;
    assert_eq!(CUDA_BLOCK_SIZES, &[128]);
    check_block_size(128).unwrap();
    for block_size in [0, 16, 64, 256] {
        let err = check_block_size(block_size).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnsupportedBlockSize { block_size: b, supported: &[128], .. } if b == block_size
            ),
            "{err}"
        );
        assert!(err.to_string().contains("use one of [128]"), "{err}");
        let err = max_padded_tokens(4, 2, 8, block_size).unwrap_err();
        assert!(matches!(err, Error::UnsupportedBlockSize { .. }), "{err}");
    }
    // The CPU reference takes block size 16; the check is the CUDA one.
    let cfg = config();
    assert_eq!(cfg.block_size, 16);
    Backend::Cpu.check_config(&cfg).unwrap();
}

#[test]
fn layer_memory_is_estimated_before_allocating() {
    use dropless::memory::check_fits;
    use dropless::DType;
    // The dmoe example's default layer.
    let cfg = MoeConfig {
        hidden: 512,
        ffn: 1024,
        num_experts: 8,
        top_k: 2,
        mlp: MlpKind::Glu,
        renormalize: true,
        block_size: 128,
    };
    assert_eq!(
        cfg.weight_bytes(DType::F32),
        (8 * 512 + 3 * 8 * 1024 * 512) * 4
    );
    assert_eq!(
        cfg.weight_bytes(DType::BF16),
        (8 * 512 + 3 * 8 * 1024 * 512) * 2
    );
    // 100 tokens: x, its saved copy and the output; f32 logits and probs;
    // ids and weights; the padded bound 100 * 2 + 8 * 127 = 1216 rows of the
    // gathered input and expert output (hidden) and of the GLU's two
    // pre-activations and activations (ffn).
    let want =
        3 * 100 * 512 * 4 + 2 * 100 * 8 * 4 + 2 * 100 * 2 * 4 + 1216 * (2 * 512 + 3 * 1024) * 4;
    assert_eq!(cfg.forward_activation_bytes(100, DType::F32), want);
    // `dmoe --tokens 100000000` needs terabytes: refused, naming what fits.
    let need = cfg.weight_bytes(DType::F32) + cfg.forward_activation_bytes(100_000_000, DType::F32);
    assert!(need > 1 << 40, "{need}");
    let available = 16u64 << 30;
    let fits = cfg.max_forward_tokens(available, DType::F32);
    let at = |t: u128| {
        cfg.weight_bytes(DType::F32) + cfg.forward_activation_bytes(t as usize, DType::F32)
    };
    assert!(at(fits) <= u128::from(available) && at(fits + 1) > u128::from(available));
    let err = check_fits("a dMoE forward", "host", need, available, || {
        format!("pass --tokens {fits} or fewer")
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::OutOfMemory { memory: "host", available: a, .. } if a == available),
        "{err}"
    );
    assert!(
        err.to_string().contains("16.0 GiB") && err.to_string().contains("--tokens"),
        "{err}"
    );
    assert_eq!(
        cfg.max_forward_tokens(1 << 20, DType::F32),
        0,
        "the weights alone need 48 MiB"
    );
}
