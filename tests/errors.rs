//! Every bad input to the CPU reference returns the typed error that names it,
//! never a panic: one test per kind of bad input.

use dropless::reference::loss::{load_balancing_loss, router_z_loss};
use dropless::reference::moe::{forward, MlpKind, MoeConfig, MoeWeights};
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
    for value in [f32::INFINITY, f32::NEG_INFINITY] {
        let mut logits = input(3, 4);
        logits[[2, 0]] = value;
        let err = route(logits.view(), 1, true).unwrap_err();
        assert!(
            matches!(err, Error::NonFinite { row: 2, col: 0, value: v, .. } if v == value),
            "{err}"
        );
        let err = router_z_loss(logits.view()).unwrap_err();
        assert!(
            matches!(err, Error::NonFinite { row: 2, col: 0, .. }),
            "{err}"
        );
    }
    let mut probs = Array2::from_elem((2, 2), 0.5f32);
    probs[[0, 1]] = f32::INFINITY;
    let err = load_balancing_loss(probs.view(), array![[0], [1]].view(), 2).unwrap_err();
    assert!(
        matches!(err, Error::NonFinite { row: 0, col: 1, .. }),
        "{err}"
    );
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
