//! The CUDA router, expert sort, bins, topology construction and padded
//! gather / scatter against the CPU reference, on random inputs (the shapes
//! drawn by proptest). Every device output is poisoned (NaN or -1) before the
//! launch, so an element the kernel fails to write fails the comparison.
//!
//! Tolerances: integer outputs (ids, indices, bins, topology) are exact; the
//! router's probabilities and weights use f32's 1e-5 relative tolerance (the
//! GPU's expf and reduction order differ from the host's); gather and scatter
//! use `DType::rel_tolerance` of the element type (f32 1e-5, f16 5e-3, bf16
//! 1e-2), relative to each element's magnitude plus the tensor's largest one;
//! the weight gradient is held to the same tolerance relative to
//! `sum |g| |y|` of its dot product.

#[path = "common/gpu.rs"]
mod gpu;

use dropless::cuda::histogram::histogram;
use dropless::cuda::permute::{
    inclusive_cumsum_into, padded_bins_into, padded_gather_into, padded_scatter,
    padded_scatter_into, padded_scatter_weight_grad_into, sort_by_expert, sort_by_expert_into,
};
use dropless::cuda::routing::{route, route_into, DeviceRouting};
use dropless::cuda::topology_build::topology;
use dropless::cuda::{max_padded_tokens, DeviceElement, DeviceTensor};
use dropless::reference::permute as rp;
use dropless::reference::routing as rr;
use dropless::{Element, Error, Topology};
use half::{bf16, f16};
use ndarray::{s, Array1, Array2, ArrayView2};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use gpu::{backend, filled, signed_value, tokens_strategy, upload, upload2};

const BLOCK: usize = 128;

fn upload1(a: &Array1<i32>) -> DeviceTensor<i32> {
    upload(&[a.len()], a.as_slice().unwrap())
}

/// A value uniform in ±[0.05, 1] (never zero).
fn matrix<T: Element>(rng: &mut StdRng, rows: usize, cols: usize) -> Array2<T> {
    Array2::from_shape_simple_fn((rows, cols), || T::from_f32(signed_value(rng)))
}

/// Router logits: discrete (multiples of 1/4 in [-4, 4], so exact ties occur
/// and distinct values are far apart) or continuous in [-4, 4].
fn logits(rng: &mut StdRng, tokens: usize, experts: usize, discrete: bool) -> Array2<f32> {
    Array2::from_shape_simple_fn((tokens, experts), || {
        if discrete {
            rng.gen_range(-16i32..=16) as f32 * 0.25
        } else {
            rng.gen_range(-4.0f32..4.0)
        }
    })
}

/// Expert ids `[tokens, top_k]` drawn from a random subset of at least
/// `top_k` experts, so some experts get no tokens; distinct within each
/// token, as a router's top-k.
fn expert_ids(rng: &mut StdRng, tokens: usize, top_k: usize, experts: usize) -> Array2<i32> {
    let mut active: Vec<i32> = (0..experts as i32).filter(|_| rng.gen_bool(0.7)).collect();
    for e in 0..experts as i32 {
        if active.len() >= top_k {
            break;
        }
        if !active.contains(&e) {
            active.push(e);
        }
    }
    let mut ids = Array2::zeros((tokens, top_k));
    for mut row in ids.rows_mut() {
        let chosen = rand::seq::index::sample(rng, active.len(), top_k);
        for (slot, i) in row.iter_mut().zip(chosen.iter()) {
            *slot = active[i];
        }
    }
    ids
}

/// Asserts `|got - want| <= tol * (|want| + scale)` elementwise, `scale` the
/// largest magnitude of `want`.
fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(1e-6f32, |m, &v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (w.abs() + scale),
            "{what}[{i}]: {g} vs {w} (tolerance {tol}, scale {scale})"
        );
    }
}

fn widen<T: Element>(v: impl IntoIterator<Item = T>) -> Vec<f32> {
    v.into_iter().map(Element::to_f32).collect()
}

/// The reference layout of `ids`: (indices, bins, padded_bins, counts).
fn reference_layout(
    ids: ArrayView2<i32>,
    experts: usize,
) -> (Array1<i32>, Array1<i32>, Array1<i32>, Array1<i32>) {
    let counts = rp::histogram(ids, experts).unwrap();
    let (indices, _) = rp::sort_by_expert(ids, experts).unwrap();
    let bins = rp::inclusive_cumsum(counts.view()).unwrap();
    let padded = rp::padded_bins(counts.view(), BLOCK).unwrap();
    (indices, bins, padded, counts)
}

/// Runs the router into poisoned outputs.
fn route_poisoned(x: &Array2<f32>, top_k: usize, renormalize: bool) -> DeviceRouting {
    let (tokens, experts) = x.dim();
    let mut out = DeviceRouting {
        probs: filled(&[tokens, experts], f32::NAN),
        expert_ids: filled(&[tokens, top_k], -1),
        weights: filled(&[tokens, top_k], f32::NAN),
        status: filled(&[2], -1),
    };
    route_into(backend(), &upload2(x.view()), top_k, renormalize, &mut out).unwrap();
    out
}

fn check_route(
    tokens: usize,
    experts: usize,
    top_k: usize,
    renormalize: bool,
    discrete: bool,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = logits(&mut rng, tokens, experts, discrete);
    let want = rr::route(x.view(), top_k, renormalize).unwrap();
    let got = route_poisoned(&x, top_k, renormalize);
    got.check_finite(backend()).unwrap();
    let probs = got.probs.to_array2(backend()).unwrap();
    let ids = got.expert_ids.to_array2(backend()).unwrap();
    let weights = got.weights.to_array2(backend()).unwrap();
    let tol = f32::DTYPE.rel_tolerance();
    for t in 0..tokens {
        let (p, wp) = (probs.row(t), want.probs.row(t));
        for e in 0..experts {
            assert!(
                (p[e] - wp[e]).abs() <= tol * wp[e] + 1e-9,
                "probs[{t}, {e}]: {} vs {}",
                p[e],
                wp[e]
            );
        }
        for j in 0..top_k {
            let g = ids[[t, j]];
            assert!((0..experts as i32).contains(&g), "id {g} out of range");
            assert!(!ids.row(t).iter().take(j).any(|&o| o == g), "repeated id");
            if discrete {
                assert_eq!(g, want.expert_ids[[t, j]], "expert_ids[{t}, {j}]");
            } else {
                // Near-ties may swap: the chosen expert's probability must
                // equal the reference's j-th largest.
                let (pg, pj) = (wp[g as usize], wp[want.expert_ids[[t, j]] as usize]);
                assert!((pg - pj).abs() <= tol * pj + 1e-9, "slot {j} of token {t}");
            }
            let (w, ww) = (weights[[t, j]], want.weights[[t, j]]);
            assert!(
                (w - ww).abs() <= tol * ww + 1e-9,
                "weights[{t}, {j}]: {w} vs {ww}"
            );
        }
    }
}

/// A shape with tokens not a multiple of 128, possibly one token.
fn experts_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![1..=8usize, 9..=128usize, Just(128usize)]
}

fn hidden_strategy() -> impl Strategy<Value = usize> {
    // Multiples of 8 take the 16-byte path for every dtype; 132 only for f32;
    // 130 and 1000 + 2 the scalar path.
    prop::sample::select(vec![128usize, 130, 132, 200, 1002, 1024, 4096])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    #[ignore = "requires a CUDA device"]
    fn route_matches_reference(
        tokens in tokens_strategy(),
        experts in prop_oneof![experts_strategy(), 129..=1024usize],
        k in 1..=8usize,
        renormalize in any::<bool>(),
        discrete in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let tokens = tokens.min(4_000_000 / experts).max(1);
        check_route(tokens, experts, k.min(experts), renormalize, discrete, seed);
    }

    #[test]
    #[ignore = "requires a CUDA device"]
    fn sort_matches_reference(
        tokens in tokens_strategy(),
        experts in experts_strategy(),
        k in 1..=8usize,
        seed in any::<u64>(),
    ) {
        let k = k.min(experts);
        let mut rng = StdRng::seed_from_u64(seed);
        let ids = expert_ids(&mut rng, tokens, k, experts);
        let (want_idx, want_bins) = rp::sort_by_expert(ids.view(), experts).unwrap();
        let mut idx = filled(&[tokens * k], -1);
        let mut bin_ids = filled(&[tokens * k], -1);
        sort_by_expert_into(backend(), &upload2(ids.view()), experts, &mut idx, &mut bin_ids).unwrap();
        prop_assert_eq!(idx.to_host(backend()).unwrap(), want_idx.to_vec());
        prop_assert_eq!(bin_ids.to_host(backend()).unwrap(), want_bins.to_vec());
    }

    #[test]
    #[ignore = "requires a CUDA device"]
    fn bins_match_reference(
        experts in prop_oneof![experts_strategy(), 129..=1535usize],
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let counts: Vec<i32> = (0..experts)
            .map(|_| if rng.gen_bool(0.3) { 0 } else { rng.gen_range(1..=600) })
            .collect();
        let counts = Array1::from(counts);
        let dev = upload1(&counts);
        let mut bins = filled(&[experts], -1);
        inclusive_cumsum_into(backend(), &dev, &mut bins).unwrap();
        prop_assert_eq!(bins.to_host(backend()).unwrap(), rp::inclusive_cumsum(counts.view()).unwrap().to_vec());
        let mut padded = filled(&[experts], -1);
        padded_bins_into(backend(), &dev, BLOCK, &mut padded).unwrap();
        prop_assert_eq!(padded.to_host(backend()).unwrap(), rp::padded_bins(counts.view(), BLOCK).unwrap().to_vec());
    }

    #[test]
    #[ignore = "requires a CUDA device"]
    fn topology_matches_reference(
        tokens in tokens_strategy(),
        experts in experts_strategy(),
        k in 1..=8usize,
        ffn_blocks in 1..=4usize,
        seed in any::<u64>(),
    ) {
        let k = k.min(experts);
        let mut rng = StdRng::seed_from_u64(seed);
        let ids = expert_ids(&mut rng, tokens, k, experts);
        let (_, _, padded, counts) = reference_layout(ids.view(), experts);
        let ffn = ffn_blocks * BLOCK;
        let dev = topology(backend(), &upload1(&padded), tokens, k, ffn, BLOCK).unwrap();
        let counts: Vec<usize> = counts.iter().map(|&c| c as usize).collect();
        let want = Topology::from_tokens_per_expert(&counts, ffn, BLOCK).unwrap();
        prop_assert_eq!(dev.to_host(backend()).unwrap(), want);
        prop_assert_eq!(dev.rows(), max_padded_tokens(tokens, k, experts, BLOCK).unwrap());
    }

    #[test]
    #[ignore = "requires a CUDA device"]
    fn gather_scatter_match_reference(
        tokens in tokens_strategy(),
        experts in experts_strategy(),
        k in 1..=8usize,
        hidden in hidden_strategy(),
        weighted in any::<bool>(),
        seed in any::<u64>(),
    ) {
        // Keep the host reference cheap: the padded operand has up to
        // tokens * k + experts * 127 rows.
        let tokens = tokens.min((1 << 20) / hidden).max(1);
        let experts = if hidden >= 1024 { experts.min(32) } else { experts };
        let k = k.min(experts);
        check_permute::<f32>(tokens, experts, k, hidden, weighted, seed);
        check_permute::<f16>(tokens, experts, k, hidden, weighted, seed);
        check_permute::<bf16>(tokens, experts, k, hidden, weighted, seed);
    }
}

/// Gather, scatter and the weight gradient of one random layout in `T`.
fn check_permute<T: DeviceElement + Element>(
    tokens: usize,
    experts: usize,
    k: usize,
    hidden: usize,
    weighted: bool,
    seed: u64,
) {
    let b = backend();
    let tol = T::DTYPE.rel_tolerance();
    let mut rng = StdRng::seed_from_u64(seed);
    let ids = expert_ids(&mut rng, tokens, k, experts);
    let (indices, bins, padded, _) = reference_layout(ids.view(), experts);
    let w = Array2::from_shape_simple_fn((tokens, k), || rng.gen_range(0.1f32..=1.0));
    let weights = weighted.then(|| w.view());
    let x: Array2<T> = matrix(&mut rng, tokens, hidden);
    let rows = max_padded_tokens(tokens, k, experts, BLOCK).unwrap();
    let true_rows = padded[experts - 1] as usize;
    let (d_idx, d_bins, d_pad) = (upload1(&indices), upload1(&bins), upload1(&padded));
    let d_w = upload2(w.view());
    let d_weights = weighted.then_some(&d_w);

    // Gather: rows past the true padded count must be written as zeros.
    let want = rp::padded_gather(
        x.view(),
        indices.view(),
        bins.view(),
        padded.view(),
        weights,
        k,
    )
    .unwrap();
    let mut got = filled(&[rows, hidden], T::from_f32(f32::NAN));
    padded_gather_into(
        b,
        &upload2(x.view()),
        &d_idx,
        &d_bins,
        &d_pad,
        d_weights,
        k,
        &mut got,
    )
    .unwrap();
    let got = got.to_array2(b).unwrap();
    assert_close(
        &widen(got.slice(s![..true_rows, ..]).iter().copied()),
        &widen(want.iter().copied()),
        tol,
        "padded_gather",
    );
    assert!(
        widen(got.slice(s![true_rows.., ..]).iter().copied())
            .iter()
            .all(|&v| v == 0.0),
        "padded_gather: rows past the padded count must be zero"
    );

    // Scatter of a [rows, hidden] operand (random past the true count too).
    let y: Array2<T> = matrix(&mut rng, rows, hidden);
    let d_y = upload2(y.view());
    let want = rp::padded_scatter(
        y.view(),
        indices.view(),
        bins.view(),
        padded.view(),
        weights,
        k,
    )
    .unwrap();
    let mut got = filled(&[tokens, hidden], T::from_f32(f32::NAN));
    padded_scatter_into(b, &d_y, &d_idx, &d_bins, &d_pad, d_weights, k, &mut got).unwrap();
    assert_close(
        &widen(got.to_host(b).unwrap()),
        &widen(want.iter().copied()),
        tol,
        "padded_scatter",
    );

    // Weight gradient: tolerance relative to sum |g| |y| of each dot product.
    let g: Array2<T> = matrix(&mut rng, tokens, hidden);
    let want = rp::padded_scatter_weight_grad(
        g.view(),
        y.view(),
        indices.view(),
        bins.view(),
        padded.view(),
        k,
    )
    .unwrap();
    let mut got = filled(&[tokens, k], f32::NAN);
    padded_scatter_weight_grad_into(
        b,
        &upload2(g.view()),
        &d_y,
        &d_idx,
        &d_bins,
        &d_pad,
        k,
        &mut got,
    )
    .unwrap();
    let got = got.to_array2(b).unwrap();
    let scatter_ids = gpu_rows(&indices, &bins, &padded, tokens * k);
    for t in 0..tokens {
        for j in 0..k {
            let row = scatter_ids[t * k + j];
            let mag: f32 = g
                .row(t)
                .iter()
                .zip(y.row(row))
                .map(|(a, c)| (a.to_f32() * c.to_f32()).abs())
                .sum();
            let (gv, wv) = (got[[t, j]], want[[t, j]]);
            assert!(
                (gv - wv).abs() <= f32::DTYPE.rel_tolerance() * mag + 1e-6,
                "weight grad [{t}, {j}]: {gv} vs {wv} (sum |g||y| {mag})"
            );
        }
    }
}

/// Padded row of each assignment, from the host layout.
fn gpu_rows(
    indices: &Array1<i32>,
    bins: &Array1<i32>,
    padded: &Array1<i32>,
    n: usize,
) -> Vec<usize> {
    let mut rows = vec![usize::MAX; n];
    let (mut start, mut pstart) = (0usize, 0usize);
    for e in 0..bins.len() {
        for i in start..bins[e] as usize {
            rows[indices[i] as usize] = pstart + i - start;
        }
        (start, pstart) = (bins[e] as usize, padded[e] as usize);
    }
    rows
}

#[test]
#[ignore = "requires a CUDA device"]
fn route_edge_shapes() {
    for (tokens, experts, k) in [
        (1, 1, 1),
        (1, 128, 8),
        (7, 32, 32),
        (5, 33, 33),
        (130, 128, 8),
        (3, 1024, 40),
        (2, 1000, 1000),
    ] {
        for renormalize in [false, true] {
            check_route(tokens, experts, k, renormalize, true, 11);
            check_route(tokens, experts, k, renormalize, false, 12);
        }
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn route_flags_the_first_non_finite_logit() {
    let mut rng = StdRng::seed_from_u64(5);
    let (tokens, experts, k) = (50, 64, 4);
    let mut x = logits(&mut rng, tokens, experts, true);
    x[[30, 0]] = f32::NEG_INFINITY;
    x[[7, 3]] = f32::NAN;
    x[[7, 1]] = f32::INFINITY;
    x[[41, 63]] = f32::NAN;
    let want = rr::route(x.view(), k, true).unwrap_err();
    assert!(matches!(
        want,
        Error::NonFinite { row: 7, col: 1, value, .. } if value == f32::INFINITY
    ));
    let got = route_poisoned(&x, k, true);
    let err = got.check_finite(backend()).unwrap_err();
    assert!(
        matches!(err, Error::NonFinite { row: 7, col: 1, value, .. } if value == f32::INFINITY),
        "{err:?}"
    );
    let ids = got.expert_ids.to_array2(backend()).unwrap();
    let weights = got.weights.to_array2(backend()).unwrap();
    assert!(ids.iter().all(|&e| (0..experts as i32).contains(&e)));
    let mut clean = x.clone();
    for bad in [7, 41] {
        clean.row_mut(bad).fill(0.0);
        assert!(weights.row(bad).iter().all(|w| w.is_nan()));
    }
    // Token 30's -inf only masks expert 0: it routes like the reference.
    let want = rr::route(clean.view(), k, true).unwrap();
    for t in (0..tokens).filter(|t| ![7, 41].contains(t)) {
        assert_eq!(ids.row(t), want.expert_ids.row(t), "token {t}");
    }
    assert!(ids.row(30).iter().all(|&e| e != 0));

    // A single NaN, and a clean batch afterwards on the same outputs.
    let mut x = logits(&mut rng, 3, 8, true);
    x[[2, 5]] = f32::NAN;
    let err = route_poisoned(&x, 2, false)
        .check_finite(backend())
        .unwrap_err();
    assert!(matches!(err, Error::NonFinite { row: 2, col: 5, value, .. } if value.is_nan()));
    x[[2, 5]] = 1.0;
    route(backend(), &upload2(x.view()), 2, false)
        .unwrap()
        .check_finite(backend())
        .unwrap();
}

#[test]
#[ignore = "requires a CUDA device"]
fn sort_spans_many_chunks_and_scan_tiles() {
    // 3001 * 8 assignments = 6 sort chunks; 1536 buckets x 6 chunks = 9216
    // counters, so the single-CTA scan runs over 3 tiles.
    let mut rng = StdRng::seed_from_u64(9);
    for (tokens, experts, k) in [(3001, 1535, 8), (4096, 4, 1), (1, 1535, 1), (2500, 64, 8)] {
        let ids = expert_ids(&mut rng, tokens, k, experts);
        let (want_idx, want_bins) = rp::sort_by_expert(ids.view(), experts).unwrap();
        let (idx, bin_ids) = sort_by_expert(backend(), &upload2(ids.view()), experts).unwrap();
        assert_eq!(idx.to_host(backend()).unwrap(), want_idx.to_vec());
        assert_eq!(bin_ids.to_host(backend()).unwrap(), want_bins.to_vec());
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn out_of_range_ids_sort_last() {
    let ids = ndarray::array![[2, 9], [-1, 0], [1, 2]];
    let (idx, bin_ids) = sort_by_expert(backend(), &upload2(ids.view()), 3).unwrap();
    assert_eq!(idx.to_host(backend()).unwrap(), vec![3, 4, 0, 5, 1, 2]);
    assert_eq!(
        bin_ids.to_host(backend()).unwrap(),
        vec![0, 1, 2, 2, -1, -1]
    );
}

/// route -> histogram -> sort -> bins -> topology -> gather -> scatter on the
/// device, each stage against the reference.
fn check_pipeline<T: DeviceElement + Element>(
    tokens: usize,
    experts: usize,
    k: usize,
    hidden: usize,
    seed: u64,
) {
    let b = backend();
    let tol = T::DTYPE.rel_tolerance();
    let mut rng = StdRng::seed_from_u64(seed);
    let x_logits = logits(&mut rng, tokens, experts, true);
    let x: Array2<T> = matrix(&mut rng, tokens, hidden);

    let want_route = rr::route(x_logits.view(), k, true).unwrap();
    let routing = route(b, &upload2(x_logits.view()), k, true).unwrap();
    let ids = routing.expert_ids.to_array2(b).unwrap();
    assert_eq!(ids, want_route.expert_ids);
    let (want_idx, _) = rp::sort_by_expert(ids.view(), experts).unwrap();
    let want_counts = rp::histogram(ids.view(), experts).unwrap();
    let want_bins = rp::inclusive_cumsum(want_counts.view()).unwrap();
    let want_padded = rp::padded_bins(want_counts.view(), BLOCK).unwrap();

    let counts = histogram(b, &routing.expert_ids, experts).unwrap();
    let (indices, _) = sort_by_expert(b, &routing.expert_ids, experts).unwrap();
    let bins = dropless::cuda::permute::inclusive_cumsum(b, &counts).unwrap();
    let padded = dropless::cuda::permute::padded_bins(b, &counts, BLOCK).unwrap();
    assert_eq!(counts.to_host(b).unwrap(), want_counts.to_vec());
    assert_eq!(indices.to_host(b).unwrap(), want_idx.to_vec());
    assert_eq!(bins.to_host(b).unwrap(), want_bins.to_vec());
    assert_eq!(padded.to_host(b).unwrap(), want_padded.to_vec());

    let ffn = 2 * BLOCK;
    let topo = topology(b, &padded, tokens, k, ffn, BLOCK).unwrap();
    let host_counts: Vec<usize> = want_counts.iter().map(|&c| c as usize).collect();
    assert_eq!(
        topo.to_host(b).unwrap(),
        Topology::from_tokens_per_expert(&host_counts, ffn, BLOCK).unwrap()
    );

    let gathered = dropless::cuda::permute::padded_gather(
        b,
        &upload2(x.view()),
        &indices,
        &bins,
        &padded,
        None,
        k,
    )
    .unwrap();
    assert_eq!(gathered.shape(), &[topo.rows(), hidden]);
    let want_gathered = rp::padded_gather(
        x.view(),
        want_idx.view(),
        want_bins.view(),
        want_padded.view(),
        None,
        k,
    )
    .unwrap();
    let true_rows = want_gathered.nrows();
    let got_gathered = gathered.to_array2(b).unwrap();
    assert_close(
        &widen(got_gathered.slice(s![..true_rows, ..]).iter().copied()),
        &widen(want_gathered.iter().copied()),
        0.0,
        "pipeline gather",
    );

    // Round trip: the weighted scatter of the gathered rows is
    // x[t] * sum_j w[t, j], which is x[t] when the weights are renormalised.
    let out = padded_scatter(
        b,
        &gathered,
        &indices,
        &bins,
        &padded,
        Some(&routing.weights),
        k,
    )
    .unwrap();
    let want_out = rp::padded_scatter(
        want_gathered.view(),
        want_idx.view(),
        want_bins.view(),
        want_padded.view(),
        Some(want_route.weights.view()),
        k,
    )
    .unwrap();
    let got_out = widen(out.to_host(b).unwrap());
    assert_close(
        &got_out,
        &widen(want_out.iter().copied()),
        tol,
        "pipeline scatter",
    );
    assert_close(
        &got_out,
        &widen(x.iter().copied()),
        2.0 * tol,
        "pipeline round trip",
    );
}

#[test]
#[ignore = "requires a CUDA device"]
fn full_pipeline_matches_reference() {
    for (tokens, experts, k, hidden, seed) in [
        (1, 1, 1, 128, 1),
        (333, 8, 2, 256, 2),
        (1000, 128, 8, 1024, 3),
        (77, 64, 4, 130, 4),
    ] {
        check_pipeline::<f32>(tokens, experts, k, hidden, seed);
        check_pipeline::<f16>(tokens, experts, k, hidden, seed);
        check_pipeline::<bf16>(tokens, experts, k, hidden, seed);
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn bad_shapes_are_rejected_before_launch() {
    let b = backend();
    let x = upload2(Array2::<f32>::ones((4, 8)).view());
    assert!(matches!(
        route(b, &x, 9, false),
        Err(Error::InvalidTopK { .. })
    ));
    let ids = upload(&[4, 2], &[0i32; 8]);
    assert!(matches!(
        sort_by_expert(b, &ids, 0),
        Err(Error::Empty { .. })
    ));
    let bins = upload(&[3], &[1i32, 2, 8]);
    assert!(matches!(
        dropless::cuda::permute::padded_bins(b, &bins, 64),
        Err(Error::UnsupportedBlockSize { .. })
    ));
    let idx = upload(&[8], &[0i32; 8]);
    let padded = upload(&[2], &[128i32, 256]);
    assert!(matches!(
        dropless::cuda::permute::padded_gather(b, &x, &idx, &bins, &padded, None, 2),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        topology(b, &padded, 4, 2, 100, BLOCK),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
#[ignore = "requires a CUDA device"]
fn out_of_range_ids_contribute_nothing() {
    // Ids uploaded from the host may lie outside 0..experts (the device
    // router never writes such ids; the reference rejects them with
    // ExpertOutOfRange). On the device they are not counted, sort past the
    // last bin, and the scatter and the weight gradient skip them: the
    // result is the reference's for the same batch with those slots given
    // weight 0, and their weight gradient is 0. (Before positions started at
    // -1, such a slot read padded row 0, expert 0's first token.)
    let b = backend();
    let (tokens, experts, k, hidden) = (37usize, 4usize, 2usize, 64usize);
    let mut ids = Array2::from_shape_fn((tokens, k), |(t, j)| ((t + j) % experts) as i32);
    let invalid = [(0, 1, -1), (5, 0, 4), (17, 1, i32::MAX), (36, 0, i32::MIN)];
    for &(t, j, id) in &invalid {
        ids[[t, j]] = id;
    }
    let is_invalid = |t: usize, j: usize| invalid.iter().any(|&(it, ij, _)| (it, ij) == (t, j));
    let mut rng = StdRng::seed_from_u64(31);
    let x: Array2<f32> = matrix(&mut rng, tokens, hidden);
    let g: Array2<f32> = matrix(&mut rng, tokens, hidden);
    let w = Array2::from_shape_simple_fn((tokens, k), || rng.gen_range(0.1f32..=1.0));

    // The reference batch: each invalid slot takes the valid expert that its
    // token's other slot does not hold, with weight 0.
    let mut ref_ids = ids.clone();
    let mut ref_w = w.clone();
    for &(t, j, _) in &invalid {
        let other = ids[[t, 1 - j]];
        ref_ids[[t, j]] = (0..experts as i32).find(|&e| e != other).unwrap();
        ref_w[[t, j]] = 0.0;
    }
    let (r_idx, r_bins, r_pad, _) = reference_layout(ref_ids.view(), experts);
    let r_gathered =
        rp::padded_gather(x.view(), r_idx.view(), r_bins.view(), r_pad.view(), None, k).unwrap();
    let want_out = rp::padded_scatter(
        r_gathered.view(),
        r_idx.view(),
        r_bins.view(),
        r_pad.view(),
        Some(ref_w.view()),
        k,
    )
    .unwrap();
    let want_dw = rp::padded_scatter_weight_grad(
        g.view(),
        r_gathered.view(),
        r_idx.view(),
        r_bins.view(),
        r_pad.view(),
        k,
    )
    .unwrap();

    let d_ids = upload2(ids.view());
    let counts = histogram(b, &d_ids, experts).unwrap();
    let valid: Vec<i32> = (0..experts as i32)
        .map(|e| ids.iter().filter(|&&id| id == e).count() as i32)
        .collect();
    assert_eq!(
        counts.to_host(b).unwrap(),
        valid,
        "invalid ids are not counted"
    );
    let (indices, bin_ids) = sort_by_expert(b, &d_ids, experts).unwrap();
    let bin_ids = bin_ids.to_host(b).unwrap();
    assert!(bin_ids[tokens * k - invalid.len()..]
        .iter()
        .all(|&e| e == -1));
    let bins = dropless::cuda::permute::inclusive_cumsum(b, &counts).unwrap();
    let padded = dropless::cuda::permute::padded_bins(b, &counts, BLOCK).unwrap();
    let gathered = dropless::cuda::permute::padded_gather(
        b,
        &upload2(x.view()),
        &indices,
        &bins,
        &padded,
        None,
        k,
    )
    .unwrap();
    let d_w = upload2(w.view());
    let mut out = filled(&[tokens, hidden], f32::NAN);
    padded_scatter_into(
        b,
        &gathered,
        &indices,
        &bins,
        &padded,
        Some(&d_w),
        k,
        &mut out,
    )
    .unwrap();
    assert_close(
        &out.to_host(b).unwrap(),
        want_out.as_slice().unwrap(),
        f32::DTYPE.rel_tolerance(),
        "scatter with out-of-range ids",
    );
    let mut dw = filled(&[tokens, k], f32::NAN);
    padded_scatter_weight_grad_into(
        b,
        &upload2(g.view()),
        &gathered,
        &indices,
        &bins,
        &padded,
        k,
        &mut dw,
    )
    .unwrap();
    let dw = dw.to_array2(b).unwrap();
    for t in 0..tokens {
        for j in 0..k {
            if is_invalid(t, j) {
                assert_eq!(dw[[t, j]], 0.0, "dw[{t}, {j}] of an out-of-range id");
            } else {
                let (gv, wv) = (dw[[t, j]], want_dw[[t, j]]);
                assert!(
                    (gv - wv).abs() <= 1e-4 * (wv.abs() + 1.0),
                    "dw[{t}, {j}]: {gv} vs {wv}"
                );
            }
        }
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn route_masks_minus_inf_and_flags_too_few_experts() {
    // -inf masks an expert on the device as in the reference: probability 0,
    // never chosen (also against an expert whose finite logit underflows to
    // probability 0), and a token with fewer than k routable experts is
    // flagged as the reference's TooFewExperts.
    let mut rng = StdRng::seed_from_u64(8);
    for (tokens, experts, k) in [(60, 8, 2), (33, 64, 4), (5, 300, 8)] {
        let mut x = logits(&mut rng, tokens, experts, true);
        for t in 0..tokens {
            for e in 0..experts {
                if (t * 7 + e * 3) % 4 == 0 && e >= k {
                    x[[t, e]] = f32::NEG_INFINITY;
                }
            }
        }
        // Token 0: expert 0 masked, expert 1 far below the rest (probability
        // 0 in f32) yet routable, the rest masked but k - 1 experts.
        x.row_mut(0).fill(f32::NEG_INFINITY);
        x[[0, 1]] = -200.0;
        for e in 2..=k {
            x[[0, e]] = 1.0;
        }
        for renormalize in [false, true] {
            check_route_logits(&x, k, renormalize);
            let ids = route_poisoned(&x, k, renormalize)
                .expert_ids
                .to_array2(backend())
                .unwrap();
            let mut row0: Vec<i32> = ids.row(0).to_vec();
            row0.sort_unstable();
            assert_eq!(row0, (1..=k as i32).collect::<Vec<_>>());
        }
        // Token 3 keeps k - 1 routable experts; the last token holds a NaN.
        x.row_mut(3).fill(f32::NEG_INFINITY);
        for e in 0..k - 1 {
            x[[3, e]] = 0.5;
        }
        x[[tokens - 1, 1]] = f32::NAN;
        let want = rr::route(x.view(), k, false).unwrap_err();
        assert_eq!(
            want,
            Error::TooFewExperts {
                token: 3,
                routable: k - 1,
                needed: k
            }
        );
        let got = route_poisoned(&x, k, false);
        assert_eq!(got.check_finite(backend()).unwrap_err(), want);
        let weights = got.weights.to_array2(backend()).unwrap();
        assert!(weights.row(3).iter().all(|w| w.is_nan()));
    }
}

/// The device router on `x` (which may hold -inf masks) against the
/// reference: exact ids (discrete logits), probabilities and weights to f32
/// tolerance.
fn check_route_logits(x: &Array2<f32>, top_k: usize, renormalize: bool) {
    let want = rr::route(x.view(), top_k, renormalize).unwrap();
    let got = route_poisoned(x, top_k, renormalize);
    got.check_finite(backend()).unwrap();
    let tol = f32::DTYPE.rel_tolerance();
    let probs = got.probs.to_array2(backend()).unwrap();
    for (g, w) in probs.iter().zip(&want.probs) {
        assert!((g - w).abs() <= tol * w + 1e-9, "probs: {g} vs {w}");
    }
    assert_eq!(
        got.expert_ids.to_array2(backend()).unwrap(),
        want.expert_ids
    );
    let weights = got.weights.to_array2(backend()).unwrap();
    for (g, w) in weights.iter().zip(&want.weights) {
        assert!((g - w).abs() <= tol * w + 1e-9, "weights: {g} vs {w}");
    }
}
