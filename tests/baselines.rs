//! The CPU reference of the capacity-factor MoE baseline: with enough capacity
//! it equals the dropless forward; with too little it drops exactly the
//! assignments an independent count says it should (token-order priority),
//! and the dropped ones contribute nothing.

use dropless::config::{MlpKind, MoeConfig, MoeWeights};
use dropless::reference::activation::{gelu, silu};
use dropless::reference::capacity::{expert_capacity, forward, forward_routed};
use dropless::reference::moe;
use dropless::reference::routing::Routing;
use dropless::{Element, Error};
use half::bf16;
use ndarray::{array, Array2, ArrayView2};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A `[rows, cols]` matrix with values in ±[0.05, 1] (never zero).
fn random_matrix<T: Element>(seed: u64, rows: usize, cols: usize) -> Array2<T> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((rows, cols), || {
        let m = rng.gen_range(0.05f32..=1.0);
        T::from_f32(if rng.gen() { m } else { -m })
    })
}

fn config(hidden: usize, experts: usize, top_k: usize, mlp: MlpKind, renorm: bool) -> MoeConfig {
    MoeConfig {
        hidden,
        ffn: 16,
        num_experts: experts,
        top_k,
        mlp,
        renormalize: renorm,
        block_size: 16,
    }
}

/// Asserts `got ≈ want` elementwise, relative to each element's magnitude
/// plus the largest magnitude of `want`.
fn assert_close<T: Element>(got: ArrayView2<T>, want: ArrayView2<f32>, tol: f32, what: &str) {
    assert_eq!(got.dim(), want.dim(), "{what}: shapes");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for ((idx, &g), &w) in got.indexed_iter().zip(want.iter()) {
        let g = g.to_f32();
        assert!(
            (g - w).abs() <= tol * (w.abs() + scale),
            "{what}{idx:?}: got {g}, want {w}"
        );
    }
}

/// One token's expert MLP output, computed directly in f32 (no rounding), and
/// each output's terms: `sum_r |w2[r, c]| (|act_r| + d_r)`, `d_r` a bound on
/// how far `act_r` moves with its projections' rounding (each within
/// f32's tolerance of the sum of its terms' magnitudes), so that outputs
/// that cancel to far below their terms are compared at the terms' scale.
fn naive_expert(
    config: &MoeConfig,
    w: &MoeWeights<f32>,
    e: usize,
    x: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let f = config.ffn;
    // A projection and the sum of its terms' magnitudes.
    let project = |m: &Array2<f32>, r: usize| -> (f32, f32) {
        let row = m.row(e * f + r);
        let value = row.iter().zip(x).map(|(a, b)| a * b).sum();
        (value, row.iter().zip(x).map(|(a, b)| (a * b).abs()).sum())
    };
    // |gelu'| and |silu'| stay below 1.2.
    let (act, spread): (Vec<f32>, Vec<f32>) = (0..f)
        .map(|r| {
            let (g, g_terms) = project(&w.w1, r);
            match config.mlp {
                MlpKind::Plain => (gelu(g), 1.2 * g_terms),
                MlpKind::Glu => {
                    let (u, u_terms) = project(w.w3.as_ref().unwrap(), r);
                    let a = silu(g) * u;
                    (a, 1.2 * g_terms * u.abs() + silu(g).abs() * u_terms)
                }
            }
        })
        .unzip();
    (0..config.hidden)
        .map(|c| {
            let w2 = |r: usize| w.w2[[e * f + r, c]];
            let y: f32 = (0..f).map(|r| act[r] * w2(r)).sum();
            let terms: f32 = (0..f)
                .map(|r| w2(r).abs() * (act[r].abs() + spread[r]))
                .sum();
            (y, terms)
        })
        .unzip()
}

/// The admitted flags of each assignment `[tokens, top_k]`, counted per
/// expert in token order, and the number dropped.
fn admitted(routing: &Routing, experts: usize, capacity: usize) -> (Array2<bool>, usize) {
    let mut seen = vec![0usize; experts];
    let mut flags = Array2::from_elem(routing.expert_ids.dim(), false);
    for ((t, j), &e) in routing.expert_ids.indexed_iter() {
        seen[e as usize] += 1;
        flags[[t, j]] = seen[e as usize] <= capacity;
    }
    let dropped = flags.iter().filter(|&&ok| !ok).count();
    (flags, dropped)
}

/// The capacity MoE from scratch: per token, the sum over its admitted
/// choices of weight times the naive expert MLP; and the same sum of the
/// outputs' terms (see [`naive_expert`]).
fn naive_capacity(
    config: &MoeConfig,
    w: &MoeWeights<f32>,
    x: ArrayView2<f32>,
    routing: &Routing,
    flags: &Array2<bool>,
) -> (Array2<f32>, Array2<f32>) {
    let mut out = Array2::<f32>::zeros((x.nrows(), config.hidden));
    let mut terms = out.clone();
    for t in 0..x.nrows() {
        let row: Vec<f32> = x.row(t).to_vec();
        for j in 0..config.top_k {
            if flags[[t, j]] {
                let e = routing.expert_ids[[t, j]] as usize;
                let weight = routing.weights[[t, j]];
                let (y, y_terms) = naive_expert(config, w, e, &row);
                for ((o, v), (s, m)) in out
                    .row_mut(t)
                    .iter_mut()
                    .zip(y)
                    .zip(terms.row_mut(t).iter_mut().zip(y_terms))
                {
                    *o += weight * v;
                    *s += weight * m;
                }
            }
        }
    }
    (out, terms)
}

/// Asserts `|got - want| <= tol * terms` elementwise (f32 outputs whose
/// terms [`naive_capacity`] gives).
fn assert_close_to_terms(
    got: ArrayView2<f32>,
    want: ArrayView2<f32>,
    terms: ArrayView2<f32>,
    tol: f32,
    what: &str,
) {
    assert_eq!(got.dim(), want.dim(), "{what}: shapes");
    for (((idx, &g), &w), &m) in got.indexed_iter().zip(want.iter()).zip(terms.iter()) {
        assert!(
            (g - w).abs() <= tol * m,
            "{what}{idx:?}: got {g}, want {w} (terms {m})"
        );
    }
}

/// (experts, top_k, tokens, hidden, glu, renormalize, seed).
fn shapes() -> impl Strategy<Value = (usize, usize, usize, usize, bool, bool, u64)> {
    (1usize..=8, 1usize..=40, 1usize..=24).prop_flat_map(|(experts, tokens, hidden)| {
        (
            Just(experts),
            1usize..=experts,
            Just(tokens),
            Just(hidden),
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
        )
    })
}

fn mlp(glu: bool) -> MlpKind {
    if glu {
        MlpKind::Glu
    } else {
        MlpKind::Plain
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A capacity of at least `tokens` drops nothing and equals the dropless
    /// forward (f32, 1e-5).
    #[test]
    fn enough_capacity_equals_dropless((experts, top_k, tokens, hidden, glu, renorm, seed) in shapes()) {
        let cfg = config(hidden, experts, top_k, mlp(glu), renorm);
        let w = MoeWeights::<f32>::random(&cfg, seed).unwrap();
        let x = random_matrix::<f32>(seed ^ 0x5eed, tokens, hidden);
        let dropless = moe::forward(&cfg, &w, x.view()).unwrap();
        let every = Array2::from_elem(dropless.routing.expert_ids.dim(), true);
        let (_, terms) = naive_capacity(&cfg, &w, x.view(), &dropless.routing, &every);
        for cf in [experts as f32 / top_k as f32, experts as f32 * 1.5] {
            let got = forward(&cfg, &w, x.view(), cf).unwrap();
            prop_assert!(got.capacity >= tokens, "capacity {} < tokens {tokens}", got.capacity);
            prop_assert_eq!(got.dropped_fraction, 0.0);
            prop_assert_eq!(&got.tokens_per_expert, &dropless.tokens_per_expert);
            assert_close_to_terms(got.output.view(), dropless.output.view(), terms.view(), 1e-5, "output");
        }
    }

    /// With a small capacity factor the dropped fraction matches an
    /// independent count (token-order priority) and the output equals the
    /// naive per-token sum over the admitted choices only, weights not
    /// renormalised.
    #[test]
    fn small_capacity_drops_exactly((experts, top_k, tokens, hidden, glu, renorm, seed) in shapes(),
                                    cf in 0.05f32..1.0) {
        let cfg = config(hidden, experts, top_k, mlp(glu), renorm);
        let w = MoeWeights::<f32>::random(&cfg, seed).unwrap();
        let x = random_matrix::<f32>(seed ^ 0x5eed, tokens, hidden);
        let routing = moe::forward(&cfg, &w, x.view()).unwrap().routing;
        let got = forward(&cfg, &w, x.view(), cf).unwrap();
        let capacity = expert_capacity(cf, tokens, top_k, experts).unwrap();
        prop_assert_eq!(got.capacity, capacity);
        let want_capacity = (f64::from(cf) * (tokens * top_k) as f64 / experts as f64).ceil();
        prop_assert_eq!(capacity as f64, want_capacity);
        let (flags, dropped) = admitted(&routing, experts, capacity);
        prop_assert_eq!(got.dropped_fraction, dropped as f32 / (tokens * top_k) as f32);
        let (want, terms) = naive_capacity(&cfg, &w, x.view(), &routing, &flags);
        assert_close_to_terms(got.output.view(), want.view(), terms.view(), 1e-5, "output");
        for t in 0..tokens {
            if flags.row(t).iter().all(|&ok| !ok) {
                prop_assert!(got.output.row(t).iter().all(|&v| v == 0.0), "token {t} dropped entirely");
            }
        }
    }
}

/// Priority is token order, whichever of its k choices an assignment is.
#[test]
fn priority_is_token_order() {
    let cfg = config(8, 2, 2, MlpKind::Plain, false);
    let w = MoeWeights::<f32>::random(&cfg, 3).unwrap();
    let x = random_matrix::<f32>(4, 2, 8);
    // Token 0 picks (1, 0), token 1 picks (0, 1): capacity ceil(0.5 * 4 / 2) = 1.
    let routing = Routing {
        probs: array![[0.3, 0.7], [0.6, 0.4]],
        expert_ids: array![[1, 0], [0, 1]],
        weights: array![[0.7, 0.3], [0.6, 0.4]],
    };
    let got = forward_routed(&cfg, &w, x.view(), &routing, 0.5).unwrap();
    assert_eq!(got.capacity, 1);
    assert_eq!(got.dropped_fraction, 0.5);
    assert_eq!(got.tokens_per_expert.to_vec(), vec![2, 2]);
    assert!(got.output.row(1).iter().all(|&v| v == 0.0));
    let flags = array![[true, true], [false, false]];
    let (want, terms) = naive_capacity(&cfg, &w, x.view(), &routing, &flags);
    assert_close_to_terms(got.output.view(), want.view(), terms.view(), 1e-5, "output");
}

/// One expert overflows: the later tokens routed to it are dropped, the
/// surviving weights are kept as they are.
#[test]
fn overflow_drops_later_tokens() {
    let cfg = config(5, 2, 1, MlpKind::Glu, false);
    let w = MoeWeights::<f32>::random(&cfg, 9).unwrap();
    let x = random_matrix::<f32>(10, 4, 5);
    let routing = Routing {
        probs: array![[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]],
        expert_ids: array![[0], [0], [1], [0]],
        weights: array![[0.9], [0.8], [0.7], [0.6]],
    };
    let got = forward_routed(&cfg, &w, x.view(), &routing, 1.0).unwrap();
    assert_eq!(got.capacity, 2);
    assert_eq!(got.dropped_fraction, 0.25);
    assert!(got.output.row(3).iter().all(|&v| v == 0.0));
    let flags = array![[true], [true], [true], [false]];
    let (want, terms) = naive_capacity(&cfg, &w, x.view(), &routing, &flags);
    assert_close_to_terms(got.output.view(), want.view(), terms.view(), 1e-5, "output");
}

/// bf16 operands: with enough capacity the baseline matches the dropless
/// forward within bf16's tolerance.
#[test]
fn bf16_enough_capacity_matches_dropless() {
    let cfg = config(32, 4, 2, MlpKind::Glu, true);
    let w = MoeWeights::<bf16>::random(&cfg, 21).unwrap();
    let x = random_matrix::<bf16>(22, 37, 32);
    let dropless = moe::forward(&cfg, &w, x.view()).unwrap();
    let got = forward(&cfg, &w, x.view(), 2.0).unwrap();
    assert_eq!(got.dropped_fraction, 0.0);
    let want = dropless.output.mapv(|v| v.to_f32());
    assert_close(got.output.view(), want.view(), 1e-2, "output");
}

#[test]
fn capacity_formula() {
    assert_eq!(expert_capacity(1.0, 8, 2, 4), Ok(4));
    assert_eq!(expert_capacity(1.25, 8, 2, 4), Ok(5));
    assert_eq!(expert_capacity(1e-6, 8, 2, 4), Ok(1));
    assert_eq!(expert_capacity(2.0, 7, 1, 2), Ok(7));
    assert!(matches!(
        expert_capacity(1e10, 1 << 20, 1, 1),
        Err(Error::IndexOverflow { .. })
    ));
    assert!(matches!(
        expert_capacity(1.0, 0, 1, 2),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        expert_capacity(1.0, 4, 3, 2),
        Err(Error::InvalidTopK { .. })
    ));
}

#[test]
fn bad_capacity_factors_are_rejected() {
    let cfg = config(8, 4, 2, MlpKind::Plain, false);
    let w = MoeWeights::<f32>::random(&cfg, 1).unwrap();
    let x = random_matrix::<f32>(2, 6, 8);
    for cf in [0.0, -1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert!(
            matches!(
                forward(&cfg, &w, x.view(), cf),
                Err(Error::InvalidConfig(_))
            ),
            "cf = {cf}"
        );
        assert!(matches!(
            expert_capacity(cf, 6, 2, 4),
            Err(Error::InvalidConfig(_))
        ));
    }
}

#[test]
fn bad_inputs_are_rejected() {
    let cfg = config(8, 4, 2, MlpKind::Plain, false);
    let w = MoeWeights::<f32>::random(&cfg, 1).unwrap();
    let x = random_matrix::<f32>(2, 6, 8);
    let empty = Array2::<f32>::zeros((0, 8));
    assert!(matches!(
        forward(&cfg, &w, empty.view(), 1.0),
        Err(Error::Empty { .. })
    ));
    let narrow = random_matrix::<f32>(2, 6, 7);
    assert!(matches!(
        forward(&cfg, &w, narrow.view(), 1.0),
        Err(Error::ShapeMismatch { .. })
    ));
    let glu = MoeConfig {
        mlp: MlpKind::Glu,
        ..cfg
    };
    assert!(matches!(
        forward(&glu, &w, x.view(), 1.0),
        Err(Error::InvalidConfig(_))
    ));
    let routing = moe::forward(&cfg, &w, x.view()).unwrap().routing;
    let short = Routing {
        expert_ids: routing.expert_ids.slice(ndarray::s![..5, ..]).to_owned(),
        ..routing.clone()
    };
    assert!(matches!(
        forward_routed(&cfg, &w, x.view(), &short, 1.0),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut bad = routing.clone();
    bad.expert_ids[[3, 1]] = 4;
    assert!(matches!(
        forward_routed(&cfg, &w, x.view(), &bad, 1.0),
        Err(Error::ExpertOutOfRange { .. })
    ));
    let mut nan_x = x.clone();
    nan_x[[1, 2]] = f32::NAN;
    assert!(matches!(
        forward(&cfg, &w, nan_x.view(), 1.0),
        Err(Error::NonFinite { .. })
    ));
}
