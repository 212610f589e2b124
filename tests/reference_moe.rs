//! The CPU reference of routing, permutation, losses, activations and the dMoE
//! forward: properties of each op on random inputs, hand-derived values, and
//! the forward against an independent per-token naive formulation.

#[path = "common/skew.rs"]
mod skew;

use dropless::config::{MlpKind, MoeConfig, MoeWeights};
use dropless::reference::activation::{gelu, gelu_grad, silu, silu_grad};
use dropless::reference::loss::{load_balancing_loss, router_z_loss};
use dropless::reference::moe::{forward, forward_train};
use dropless::reference::permute::{
    histogram, inclusive_cumsum, padded_bins, padded_gather, padded_scatter,
    padded_scatter_weight_grad, sort_by_expert,
};
use dropless::reference::routing::route;
use dropless::reference::{dsd, sdd};
use dropless::{DType, Element};
use half::{bf16, f16};
use ndarray::{array, Array1, Array2, ArrayView2};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use skew::skew_to_expert0;

// ---------------------------------------------------------------- helpers

/// One value uniform in ±[0.05, 1] (never zero).
fn random_value(rng: &mut StdRng) -> f32 {
    let magnitude = rng.gen_range(0.05f32..=1.0);
    if rng.gen::<bool>() {
        magnitude
    } else {
        -magnitude
    }
}

/// A random `[rows, cols]` f32 matrix with values in ±[0.05, 1].
fn random_matrix(rng: &mut StdRng, rows: usize, cols: usize) -> Array2<f32> {
    Array2::from_shape_simple_fn((rows, cols), || random_value(rng))
}

/// Random expert ids `[tokens, top_k]` in `0..experts`, distinct within each
/// token (as a router's top-k).
fn random_ids(rng: &mut StdRng, tokens: usize, top_k: usize, experts: usize) -> Array2<i32> {
    let mut ids = Array2::zeros((tokens, top_k));
    for mut row in ids.rows_mut() {
        let chosen = rand::seq::index::sample(rng, experts, top_k);
        for (slot, e) in row.iter_mut().zip(chosen.iter()) {
            *slot = e as i32;
        }
    }
    ids
}

/// Random routing weights `[tokens, top_k]` in [0.1, 1].
fn random_weights(rng: &mut StdRng, tokens: usize, top_k: usize) -> Array2<f32> {
    Array2::from_shape_simple_fn((tokens, top_k), || rng.gen_range(0.1f32..=1.0))
}

/// Asserts `|a - b| <= tol * (|b| + scale)` elementwise, `scale` the largest
/// magnitude of `b` (at least 1e-3).
fn assert_close(a: ArrayView2<f32>, b: ArrayView2<f32>, tol: f32, what: &str) {
    assert_eq!(a.dim(), b.dim(), "{what}: shapes differ");
    let scale = b.iter().fold(1e-3f32, |m, &v| m.max(v.abs()));
    for ((idx, &x), &y) in a.indexed_iter().zip(b.iter()) {
        assert!(
            (x - y).abs() <= tol * (y.abs() + scale),
            "{what} at {idx:?}: {x} vs {y} (tolerance {tol}, scale {scale})"
        );
    }
}

/// The layout arrays of random ids: (indices, bins, padded_bins).
fn layout(
    ids: ArrayView2<i32>,
    experts: usize,
    block: usize,
) -> (Array1<i32>, Array1<i32>, Array1<i32>) {
    let counts = histogram(ids, experts).unwrap();
    let (indices, _) = sort_by_expert(ids, experts).unwrap();
    let bins = inclusive_cumsum(counts.view()).unwrap();
    let padded = padded_bins(counts.view(), block).unwrap();
    (indices, bins, padded)
}

/// The padded row of every flat assignment, recomputed from the layout.
fn rows_of(indices: &Array1<i32>, bins: &Array1<i32>, padded: &Array1<i32>) -> Vec<usize> {
    let mut row_of = vec![usize::MAX; indices.len()];
    let (mut start, mut padded_start) = (0usize, 0usize);
    for (&end, &padded_end) in bins.iter().zip(padded) {
        for i in start..end as usize {
            row_of[indices[i] as usize] = padded_start + i - start;
        }
        (start, padded_start) = (end as usize, padded_end as usize);
    }
    row_of
}

// ---------------------------------------------------------------- routing

/// Softmax of one row in f64.
fn softmax64(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let exps: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn routing_properties(
        tokens in 1usize..24,
        experts in 1usize..=8,
        k_frac in 0.0f64..1.0,
        renormalize: bool,
        seed: u64,
    ) {
        let top_k = 1 + ((experts as f64 * k_frac) as usize).min(experts - 1);
        let mut rng = StdRng::seed_from_u64(seed);
        let logits = random_matrix(&mut rng, tokens, experts).mapv(|v| 4.0 * v);
        let r = route(logits.view(), top_k, renormalize).unwrap();
        prop_assert_eq!(r.probs.dim(), (tokens, experts));
        prop_assert_eq!(r.expert_ids.dim(), (tokens, top_k));
        prop_assert_eq!(r.weights.dim(), (tokens, top_k));
        for t in 0..tokens {
            let p = r.probs.row(t);
            let want = softmax64(logits.row(t).as_slice().unwrap());
            for (e, (&got, &w)) in p.iter().zip(&want).enumerate() {
                prop_assert!((got as f64 - w).abs() <= 1e-6, "prob [{t}, {e}]: {got} vs {w}");
            }
            prop_assert!((p.sum() - 1.0).abs() <= 1e-5);
            let ids = r.expert_ids.row(t).to_vec();
            let chosen_probs: Vec<f32> = ids.iter().map(|&e| p[e as usize]).collect();
            // Distinct, descending, and no unchosen expert beats the last chosen.
            for j in 1..top_k {
                prop_assert!(chosen_probs[j - 1] >= chosen_probs[j]);
                prop_assert!(ids[..j].iter().all(|&e| e != ids[j]));
            }
            let last = chosen_probs[top_k - 1];
            for e in 0..experts as i32 {
                if !ids.contains(&e) {
                    prop_assert!(p[e as usize] <= last);
                }
            }
            let w = r.weights.row(t);
            for j in 1..top_k {
                prop_assert!(w[j - 1] >= w[j], "weights not descending: {w:?}");
            }
            if renormalize {
                prop_assert!((w.sum() - 1.0).abs() <= 1e-5, "weights sum {}", w.sum());
                let norm: f32 = chosen_probs.iter().sum();
                for j in 0..top_k {
                    prop_assert!((w[j] - chosen_probs[j] / norm).abs() <= 1e-6);
                }
            } else {
                for j in 0..top_k {
                    prop_assert_eq!(w[j], chosen_probs[j]);
                }
            }
        }
    }
}

#[test]
fn routing_ties_take_the_lower_expert_first() {
    let logits = array![[0.5f32, 0.5, 0.5, 0.5], [1.0, 2.0, 2.0, 1.0]];
    let r = route(logits.view(), 3, false).unwrap();
    assert_eq!(r.expert_ids, array![[0, 1, 2], [1, 2, 0]]);
    assert_eq!(r.weights.row(0).to_vec(), vec![0.25f32; 3]);
}

#[test]
fn routing_with_all_experts_renormalised_keeps_the_probabilities() {
    let logits = array![[0.1f32, -0.3, 0.7]];
    let r = route(logits.view(), 3, true).unwrap();
    assert_eq!(r.expert_ids, array![[2, 0, 1]]);
    for (j, &e) in r.expert_ids.row(0).iter().enumerate() {
        assert!((r.weights[[0, j]] - r.probs[[0, e as usize]]).abs() <= 1e-6);
    }
}

// ---------------------------------------------------------------- permutation

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sort_and_histogram(
        tokens in 1usize..40,
        experts in 1usize..=8,
        k_frac in 0.0f64..1.0,
        seed: u64,
    ) {
        let top_k = 1 + ((experts as f64 * k_frac) as usize).min(experts - 1);
        let mut rng = StdRng::seed_from_u64(seed);
        let ids = random_ids(&mut rng, tokens, top_k, experts);
        let flat: Vec<i32> = ids.iter().copied().collect();
        let n = tokens * top_k;

        let counts = histogram(ids.view(), experts).unwrap();
        prop_assert_eq!(counts.sum() as usize, n);
        for e in 0..experts {
            prop_assert_eq!(counts[e] as usize, flat.iter().filter(|&&v| v == e as i32).count());
        }

        let (indices, bin_ids) = sort_by_expert(ids.view(), experts).unwrap();
        let mut seen = indices.to_vec();
        seen.sort_unstable();
        prop_assert_eq!(seen, (0..n as i32).collect::<Vec<_>>());
        for i in 0..n {
            prop_assert_eq!(bin_ids[i], flat[indices[i] as usize]);
            if i > 0 {
                prop_assert!(bin_ids[i - 1] <= bin_ids[i]);
                if bin_ids[i - 1] == bin_ids[i] {
                    prop_assert!(indices[i - 1] < indices[i], "sort is not stable");
                }
            }
        }

        let bins = inclusive_cumsum(counts.view()).unwrap();
        let mut total = 0;
        for e in 0..experts {
            total += counts[e];
            prop_assert_eq!(bins[e], total);
        }
        for block in [16usize, 32, 64, 128] {
            let padded = padded_bins(counts.view(), block).unwrap();
            let mut start = 0;
            for e in 0..experts {
                let size = padded[e] - start;
                prop_assert_eq!(size as usize % block, 0);
                prop_assert!(size >= counts[e] && size < counts[e] + block as i32);
                start = padded[e];
            }
        }
    }

    #[test]
    fn gather_and_scatter(
        tokens in 1usize..40,
        hidden in 1usize..20,
        experts in 1usize..=6,
        k_frac in 0.0f64..1.0,
        block_index in 0usize..4,
        seed: u64,
    ) {
        let top_k = 1 + ((experts as f64 * k_frac) as usize).min(experts - 1);
        let block = [16usize, 32, 64, 128][block_index];
        let mut rng = StdRng::seed_from_u64(seed);
        let ids = random_ids(&mut rng, tokens, top_k, experts);
        let x = random_matrix(&mut rng, tokens, hidden);
        let w = random_weights(&mut rng, tokens, top_k);
        let (indices, bins, padded) = layout(ids.view(), experts, block);
        let row_of = rows_of(&indices, &bins, &padded);
        let p = padded[experts - 1] as usize;

        let g = padded_gather(x.view(), indices.view(), bins.view(), padded.view(), None, top_k)
            .unwrap();
        prop_assert_eq!(g.dim(), (p, hidden));
        let mut used = vec![false; p];
        for (a, &row) in row_of.iter().enumerate() {
            used[row] = true;
            prop_assert_eq!(g.row(row), x.row(a / top_k));
        }
        for (row, &u) in used.iter().enumerate() {
            if !u {
                prop_assert!(g.row(row).iter().all(|&v| v == 0.0), "padding row {row} not zero");
            }
        }

        // Weighted gather: each row scaled by its weight, padding still zero.
        let gw = padded_gather(
            x.view(), indices.view(), bins.view(), padded.view(), Some(w.view()), top_k,
        ).unwrap();
        for (a, &row) in row_of.iter().enumerate() {
            let (t, j) = (a / top_k, a % top_k);
            prop_assert_eq!(gw.row(row), x.row(t).mapv(|v| w[[t, j]] * v));
        }
        for (row, &u) in used.iter().enumerate() {
            if !u {
                prop_assert!(gw.row(row).iter().all(|&v| v == 0.0));
            }
        }

        // Scatter of a random padded y, by the definition.
        let y = random_matrix(&mut rng, p, hidden);
        let s = padded_scatter(
            y.view(), indices.view(), bins.view(), padded.view(), Some(w.view()), top_k,
        ).unwrap();
        let mut want = Array2::<f32>::zeros((tokens, hidden));
        for t in 0..tokens {
            for j in 0..top_k {
                let row = y.row(row_of[t * top_k + j]);
                let mut out = want.row_mut(t);
                out.zip_mut_with(&row, |o, &v| *o += w[[t, j]] * v);
            }
        }
        prop_assert_eq!(&s, &want);

        // Adjointness: <gather_w(x), y> == <x, scatter_w(y)>.
        let lhs: f64 = gw.iter().zip(y.iter()).map(|(&a, &b)| a as f64 * b as f64).sum();
        let rhs: f64 = x.iter().zip(s.iter()).map(|(&a, &b)| a as f64 * b as f64).sum();
        prop_assert!((lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()), "{lhs} vs {rhs}");

        // Weight gradient: dw[t, j] = <grad_out[t], y[row(t, j)]>, within
        // f32's tolerance of sum |grad_out| |y| (the dot product may cancel
        // to far below its terms, and the two sum in different orders).
        let grad_out = random_matrix(&mut rng, tokens, hidden);
        let dw = padded_scatter_weight_grad(
            grad_out.view(), y.view(), indices.view(), bins.view(), padded.view(), top_k,
        ).unwrap();
        for t in 0..tokens {
            for j in 0..top_k {
                let y_row = y.row(row_of[t * top_k + j]);
                let want = grad_out.row(t).dot(&y_row);
                let terms = grad_out.row(t).mapv(f32::abs).dot(&y_row.mapv(f32::abs));
                prop_assert!(
                    (dw[[t, j]] - want).abs() <= 1e-5 * terms,
                    "weight grad at ({}, {}): {} vs {} (terms {})", t, j, dw[[t, j]], want, terms
                );
            }
        }
    }

    #[test]
    fn gather_then_scatter_is_identity_for_top1(
        tokens in 1usize..60,
        hidden in 1usize..20,
        experts in 1usize..=8,
        block_index in 0usize..4,
        seed: u64,
    ) {
        let block = [16usize, 32, 64, 128][block_index];
        let mut rng = StdRng::seed_from_u64(seed);
        let ids = random_ids(&mut rng, tokens, 1, experts);
        let x = random_matrix(&mut rng, tokens, hidden);
        let (indices, bins, padded) = layout(ids.view(), experts, block);
        let g = padded_gather(x.view(), indices.view(), bins.view(), padded.view(), None, 1)
            .unwrap();
        let back = padded_scatter(g.view(), indices.view(), bins.view(), padded.view(), None, 1)
            .unwrap();
        prop_assert_eq!(back, x);
    }
}

#[test]
fn scatter_ignores_rows_past_the_padded_count() {
    let ids = array![[1i32], [0], [1]];
    let (indices, bins, padded) = layout(ids.view(), 2, 16);
    let x = array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]];
    let mut g = padded_gather(
        x.view(),
        indices.view(),
        bins.view(),
        padded.view(),
        None,
        1,
    )
    .unwrap();
    assert_eq!(g.nrows(), 32);
    // A larger buffer, as the GPU path allocates: extra rows hold garbage.
    g.push_row(ndarray::aview1(&[f32::NAN, f32::NAN])).unwrap();
    let back = padded_scatter(
        g.view(),
        indices.view(),
        bins.view(),
        padded.view(),
        None,
        1,
    )
    .unwrap();
    assert_eq!(back, x);
}

// ---------------------------------------------------------------- losses

#[test]
fn load_balancing_loss_of_a_uniform_router_is_one() {
    let mut rng = StdRng::seed_from_u64(1);
    for (tokens, experts, top_k) in [(1, 1, 1), (7, 4, 1), (9, 4, 2), (5, 8, 8), (33, 6, 3)] {
        let probs = Array2::from_elem((tokens, experts), 1.0 / experts as f32);
        let ids = random_ids(&mut rng, tokens, top_k, experts);
        let loss = load_balancing_loss(probs.view(), ids.view(), experts).unwrap();
        assert!(
            (loss - 1.0).abs() <= 1e-5,
            "{tokens}x{experts} k={top_k}: {loss}"
        );
    }
}

#[test]
fn load_balancing_loss_of_a_balanced_routing_is_one() {
    // 4 tokens, 4 experts, top-2: each expert gets exactly 2 of 8 assignments.
    let ids = array![[0, 1], [2, 3], [1, 0], [3, 2]];
    let mut rng = StdRng::seed_from_u64(2);
    let raw = random_matrix(&mut rng, 4, 4).mapv(f32::abs);
    let probs = &raw / &raw.sum_axis(ndarray::Axis(1)).insert_axis(ndarray::Axis(1));
    let loss = load_balancing_loss(probs.view(), ids.view(), 4).unwrap();
    assert!((loss - 1.0).abs() <= 1e-5, "{loss}");
}

#[test]
fn load_balancing_loss_hand_values() {
    // Top-1, everything on expert 0: E * f_0 * P_0 = 2 * 1 * mean(0.7, 0.6).
    let probs = array![[0.7f32, 0.3], [0.6, 0.4]];
    let loss = load_balancing_loss(probs.view(), array![[0], [0]].view(), 2).unwrap();
    assert!((loss - 1.3).abs() <= 1e-6, "{loss}");

    // Top-2 of 3 experts, 2 tokens: counts (2, 1, 1) of 4 assignments,
    // P = (0.35, 0.4, 0.25): loss = 3 * (0.5*0.35 + 0.25*0.4 + 0.25*0.25).
    let probs = array![[0.5f32, 0.3, 0.2], [0.2, 0.5, 0.3]];
    let ids = array![[0, 1], [1, 2]];
    let counts = [1.0f32, 2.0, 1.0];
    let p_mean = [0.35f32, 0.4, 0.25];
    let want = 3.0
        * counts
            .iter()
            .zip(p_mean)
            .map(|(c, p)| c / 4.0 * p)
            .sum::<f32>();
    let loss = load_balancing_loss(probs.view(), ids.view(), 3).unwrap();
    assert!((loss - want).abs() <= 1e-6, "{loss} vs {want}");
}

#[test]
fn router_z_loss_hand_values() {
    // Zero logits: logsumexp = ln E.
    let z = router_z_loss(Array2::<f32>::zeros((3, 5)).view()).unwrap();
    assert!((z - 5f32.ln().powi(2)).abs() <= 1e-6, "{z}");
    // logsumexp(0, ln 3) = ln 4; logsumexp(10, 10) = 10 + ln 2.
    let logits = array![[0.0f32, 3f32.ln()], [10.0, 10.0]];
    let want = (4f32.ln().powi(2) + (10.0 + 2f32.ln()).powi(2)) / 2.0;
    let z = router_z_loss(logits.view()).unwrap();
    assert!((z - want).abs() <= 1e-4 * want, "{z} vs {want}");
    // Large logits do not overflow.
    let z = router_z_loss(array![[100.0f32, 100.0]].view()).unwrap();
    assert!((z - (100.0 + 2f32.ln()).powi(2)).abs() <= 1e-2, "{z}");
}

// ---------------------------------------------------------------- activations

#[test]
fn activation_values() {
    // torch.nn.functional.gelu(x, approximate="tanh") and silu at 1 and -2.
    assert!((gelu(1.0) - 0.841_192).abs() <= 1e-6);
    assert!((gelu(-2.0) - (-0.045_402_3)).abs() <= 1e-6);
    assert!((silu(1.0) - 0.731_058_6).abs() <= 1e-6);
    assert!((silu(-2.0) - (-0.238_405_84)).abs() <= 1e-6);
    assert_eq!((gelu(0.0), silu(0.0)), (0.0, 0.0));
    assert_eq!((gelu_grad(0.0), silu_grad(0.0)), (0.5, 0.5));
    // Saturation without NaN.
    assert_eq!(gelu(-100.0), 0.0);
    assert_eq!(gelu(100.0), 100.0);
    assert_eq!(silu(100.0), 100.0);
    assert!(silu(-100.0).abs() < 1e-30 && !silu(-200.0).is_nan());
}

proptest! {
    #[test]
    fn activation_derivatives_match_central_differences(x in -8.0f32..8.0) {
        let h = 1e-2f32;
        for (name, f, df) in [
            ("gelu", gelu as fn(f32) -> f32, gelu_grad as fn(f32) -> f32),
            ("silu", silu, silu_grad),
        ] {
            let numeric = (f(x + h) - f(x - h)) / (2.0 * h);
            let analytic = df(x);
            prop_assert!(
                (numeric - analytic).abs() <= 2e-3 * (1.0 + analytic.abs()),
                "{name}'({x}): analytic {analytic}, numeric {numeric}"
            );
        }
    }
}

// ---------------------------------------------------------------- dMoE forward

/// Router logits with the hidden axis summed in order, in f32 (the order the
/// reference uses, so the top-k choices agree bit for bit).
fn naive_logits(x: ArrayView2<f32>, router: ArrayView2<f32>) -> Array2<f32> {
    Array2::from_shape_fn((x.nrows(), router.nrows()), |(t, e)| {
        let mut acc = 0.0f32;
        for (&a, &b) in x.row(t).iter().zip(router.row(e)) {
            acc += a * b;
        }
        acc
    })
}

/// f32 softmax and top-k (ties: lower id first) of one row of logits.
fn naive_route(
    logits: &[f32],
    top_k: usize,
    renormalize: bool,
) -> (Vec<f32>, Vec<usize>, Vec<f32>) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut probs: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = probs.iter().fold(0.0, |s, &p| s + p);
    probs.iter_mut().for_each(|p| *p /= sum);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| probs[b].partial_cmp(&probs[a]).unwrap());
    order.truncate(top_k);
    let norm: f32 = if renormalize {
        order.iter().map(|&e| probs[e]).sum()
    } else {
        1.0
    };
    let weights = order.iter().map(|&e| probs[e] / norm).collect();
    (probs, order, weights)
}

/// The expert MLP of expert `e` on one token, in f64, with its dense weights
/// sliced out of the concatenated matrices.
fn naive_expert(config: &MoeConfig, w: &MoeWeights<f32>, e: usize, x: &[f32]) -> Vec<f64> {
    let rows = e * config.ffn..(e + 1) * config.ffn;
    let w1 = w.w1.slice(ndarray::s![rows.clone(), ..]);
    let w2 = w.w2.slice(ndarray::s![rows.clone(), ..]);
    let dot = |m: ndarray::ArrayView1<f32>| -> f64 {
        m.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum()
    };
    let hidden_act: Vec<f64> = (0..config.ffn)
        .map(|f| {
            let u = dot(w1.row(f));
            match config.mlp {
                MlpKind::Plain => {
                    let c = (2.0 / std::f64::consts::PI).sqrt();
                    0.5 * u * (1.0 + (c * (u + 0.044715 * u * u * u)).tanh())
                }
                MlpKind::Glu => {
                    let w3 = w.w3.as_ref().unwrap().slice(ndarray::s![rows.clone(), ..]);
                    let v = dot(w3.row(f));
                    u / (1.0 + (-u).exp()) * v
                }
            }
        })
        .collect();
    (0..config.hidden)
        .map(|c| {
            (0..config.ffn)
                .map(|f| hidden_act[f] * w2[[f, c]] as f64)
                .sum()
        })
        .collect()
}

/// Runs the reference forward and compares it with the naive formulation.
fn check_forward(config: &MoeConfig, weights: &MoeWeights<f32>, x: ArrayView2<f32>) {
    let out = forward(config, weights, x).unwrap();
    let (tokens, experts, k) = (x.nrows(), config.num_experts, config.top_k);
    let logits = naive_logits(x, weights.router.view());
    let mut want = Array2::<f32>::zeros((tokens, config.hidden));
    let mut counts = vec![0i32; experts];
    let mut mean_probs = vec![0.0f64; experts];
    let mut z = 0.0f64;
    for t in 0..tokens {
        let row = logits.row(t).to_vec();
        let (probs, ids, w) = naive_route(&row, k, config.renormalize);
        for (e, &p) in probs.iter().enumerate() {
            assert!(
                (out.routing.probs[[t, e]] - p).abs() <= 1e-6,
                "probs [{t}, {e}]"
            );
            mean_probs[e] += p as f64 / tokens as f64;
        }
        let lse = row.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
        z += lse * lse / tokens as f64;
        let mut acc = vec![0.0f64; config.hidden];
        for j in 0..k {
            assert_eq!(
                out.routing.expert_ids[[t, j]],
                ids[j] as i32,
                "expert [{t}, {j}]"
            );
            assert!(
                (out.routing.weights[[t, j]] - w[j]).abs() <= 1e-6,
                "weight [{t}, {j}]"
            );
            counts[ids[j]] += 1;
            let y = naive_expert(config, weights, ids[j], x.row(t).as_slice().unwrap());
            for (a, v) in acc.iter_mut().zip(y) {
                *a += w[j] as f64 * v;
            }
        }
        want.row_mut(t)
            .assign(&Array1::from_iter(acc.iter().map(|&v| v as f32)));
    }
    assert_eq!(out.tokens_per_expert.to_vec(), counts);
    let lb: f64 = (0..experts)
        .map(|e| counts[e] as f64 / (tokens * k) as f64 * mean_probs[e])
        .sum::<f64>()
        * experts as f64;
    assert!(
        (out.load_balancing_loss as f64 - lb).abs() <= 1e-5 * (1.0 + lb),
        "lb loss"
    );
    assert!((out.z_loss as f64 - z).abs() <= 1e-5 * (1.0 + z), "z loss");
    assert_close(out.output.view(), want.view(), 1e-5, "dMoE output");
}

/// A config with the given shape.
fn config(
    hidden: usize,
    ffn: usize,
    num_experts: usize,
    top_k: usize,
    mlp: MlpKind,
    renormalize: bool,
    block_size: usize,
) -> MoeConfig {
    MoeConfig {
        hidden,
        ffn,
        num_experts,
        top_k,
        mlp,
        renormalize,
        block_size,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn forward_matches_the_naive_formulation(
        tokens in 1usize..48,
        hidden in 1usize..40,
        experts in 1usize..=6,
        k_frac in 0.0f64..1.0,
        block_index in 0usize..3,
        ffn_blocks in 1usize..=2,
        glu: bool,
        renormalize: bool,
        skew: bool,
        seed: u64,
    ) {
        let top_k = 1 + ((experts as f64 * k_frac) as usize).min(experts - 1);
        let block = [16usize, 32, 128][block_index];
        let ffn = if block == 128 { block } else { block * ffn_blocks };
        let mlp = if glu { MlpKind::Glu } else { MlpKind::Plain };
        let cfg = config(hidden, ffn, experts, top_k, mlp, renormalize, block);
        let mut weights = MoeWeights::<f32>::random(&cfg, seed).unwrap();
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut x = random_matrix(&mut rng, tokens, hidden);
        if skew {
            skew_to_expert0(&mut weights, &mut x, 4.0);
        }
        check_forward(&cfg, &weights, x.view());
    }
}

/// The forward's one-pass expert MLP against the unfused ops that
/// `forward_train` composes (and saves): the same routing exactly, the same
/// output up to the summation order of the product kernels (the fused pass
/// multiplies blocks in the tiles' memory order, and the gemm may pick
/// another kernel for another layout), one rounding of `T`.
fn check_fused_forward<T: Element>(cfg: &MoeConfig, seed: u64, tokens: usize) {
    let weights = MoeWeights::<T>::random(cfg, seed).unwrap();
    let x = random_matrix(&mut StdRng::seed_from_u64(seed ^ 0xf0), tokens, cfg.hidden)
        .mapv(T::from_f32);
    let out = forward(cfg, &weights, x.view()).unwrap();
    let (train, saved) = forward_train(cfg, &weights, x.view()).unwrap();
    let tol = if T::DTYPE == DType::F32 { 1e-5 } else { 1e-2 };
    let f32_of = |m: &Array2<T>| m.mapv(|v| v.to_f32());
    assert_close(
        f32_of(&out.output).view(),
        f32_of(&train.output).view(),
        tol,
        "output",
    );
    assert_eq!(out.routing, train.routing);
    assert_eq!(out.tokens_per_expert, train.tokens_per_expert);
    assert_eq!(
        (out.load_balancing_loss, out.z_loss),
        (train.load_balancing_loss, train.z_loss)
    );
    // The saved intermediates are the public ops' results on the whole
    // padded layout (padding rows included), up to the summation order of a
    // product kernel chosen for fewer rows (one rounding of `T`).
    let x_g = saved.x_gathered().view();
    let pre_w1 = sdd(x_g, weights.w1.view(), true, saved.topology()).unwrap();
    let (want, got) = (pre_w1.to_dense(), saved.pre_w1().to_dense());
    assert_close(f32_of(&got).view(), f32_of(&want).view(), tol, "x_g · W1ᵀ");
    if let (Some(w3), Some(got)) = (&weights.w3, saved.pre_w3()) {
        let pre_w3 = sdd(x_g, w3.view(), true, saved.topology()).unwrap();
        let (want, got) = (pre_w3.to_dense(), got.to_dense());
        assert_close(f32_of(&got).view(), f32_of(&want).view(), tol, "x_g · W3ᵀ");
    }
    let y = dsd(saved.hidden().view(), weights.w2.view()).unwrap();
    assert_close(f32_of(saved.y()).view(), f32_of(&y).view(), tol, "h · W2");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn fused_forward_equals_the_unfused_ops(
        tokens in 1usize..300,
        hidden in 1usize..48,
        experts in 1usize..=5,
        block_index in 0usize..3,
        glu: bool,
        dtype in 0usize..3,
        seed: u64,
    ) {
        let block = [16usize, 32, 128][block_index];
        let mlp = if glu { MlpKind::Glu } else { MlpKind::Plain };
        let top_k = experts.min(2);
        let cfg = config(hidden, 2 * block, experts, top_k, mlp, true, block);
        match dtype {
            0 => check_fused_forward::<f32>(&cfg, seed, tokens),
            1 => check_fused_forward::<bf16>(&cfg, seed, tokens),
            _ => check_fused_forward::<f16>(&cfg, seed, tokens),
        }
    }
}

#[test]
fn forward_one_token() {
    for mlp in [MlpKind::Plain, MlpKind::Glu] {
        for block in [16, 32, 128] {
            let cfg = config(24, block, 4, 2, mlp, true, block);
            let weights = MoeWeights::<f32>::random(&cfg, 7).unwrap();
            let x = random_matrix(&mut StdRng::seed_from_u64(8), 1, 24);
            check_forward(&cfg, &weights, x.view());
            // Two of the four experts get no token.
            let out = forward(&cfg, &weights, x.view()).unwrap();
            assert_eq!(out.tokens_per_expert.iter().filter(|&&c| c == 0).count(), 2);
        }
    }
}

#[test]
fn forward_all_tokens_on_one_expert() {
    for (mlp, block) in [
        (MlpKind::Plain, 16),
        (MlpKind::Glu, 32),
        (MlpKind::Glu, 128),
    ] {
        // 37 tokens: not a multiple of any block size.
        let cfg = config(20, block, 5, 1, mlp, false, block);
        let mut weights = MoeWeights::<f32>::random(&cfg, 11).unwrap();
        let mut x = random_matrix(&mut StdRng::seed_from_u64(12), 37, 20);
        skew_to_expert0(&mut weights, &mut x, 4.0);
        let out = forward(&cfg, &weights, x.view()).unwrap();
        assert_eq!(out.tokens_per_expert.to_vec(), vec![37, 0, 0, 0, 0]);
        assert!(
            (out.load_balancing_loss - 5.0 * out.routing.probs.column(0).mean().unwrap()).abs()
                <= 1e-5
        );
        check_forward(&cfg, &weights, x.view());
    }
}

#[test]
fn forward_output_is_not_trivial() {
    let cfg = config(16, 32, 4, 2, MlpKind::Glu, true, 16);
    let weights = MoeWeights::<f32>::random(&cfg, 3).unwrap();
    let x = random_matrix(&mut StdRng::seed_from_u64(4), 19, 16);
    let out = forward(&cfg, &weights, x.view()).unwrap();
    assert!(out.output.iter().all(|v| v.is_finite()));
    assert!(out.output.iter().filter(|&&v| v != 0.0).count() == out.output.len());
}

#[test]
fn random_weights_are_deterministic_nonzero_and_scaled() {
    let cfg = config(64, 32, 3, 2, MlpKind::Glu, false, 16);
    let a = MoeWeights::<f32>::random(&cfg, 42).unwrap();
    let b = MoeWeights::<f32>::random(&cfg, 42).unwrap();
    let c = MoeWeights::<f32>::random(&cfg, 43).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    a.check(&cfg).unwrap();
    let w3 = a.w3.as_ref().unwrap();
    for (m, fan_in) in [
        (&a.router, 64.0f32),
        (&a.w1, 64.0),
        (w3, 64.0),
        (&a.w2, 32.0),
    ] {
        let bound = 1.0 / fan_in.sqrt();
        assert!(m
            .iter()
            .all(|&v| v != 0.0 && v.abs() < bound && v.abs() >= bound / 4.0));
        // Both signs occur.
        assert!(m.iter().any(|&v| v > 0.0) && m.iter().any(|&v| v < 0.0));
    }
    let plain = config(64, 32, 3, 2, MlpKind::Plain, false, 16);
    assert!(MoeWeights::<f32>::random(&plain, 1).unwrap().w3.is_none());
    // Half-precision weights stay non-zero too.
    let h = MoeWeights::<half::f16>::random(&cfg, 5).unwrap();
    assert!(h.w2.iter().all(|v| v.to_f32() != 0.0));
}
