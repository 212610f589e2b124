//! The CPU reference backward of the dMoE layer and of the router: against
//! central finite differences of an independent per-token f64 formulation of
//! the loss, against an independent per-token f64 analytic gradient, bf16
//! against f32, and the errors.

#[path = "common/skew.rs"]
mod skew;

use dropless::config::{AuxLossCoefficients, MlpKind, MoeConfig, MoeWeights};
use dropless::error::Error;
use dropless::reference::backward::{backward, MoeGradients};
use dropless::reference::moe::{forward, forward_train};
use dropless::reference::router_grad::route_backward;
use dropless::reference::routing::route;
use half::bf16;
use ndarray::{Array2, ArrayView2};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use skew::skew_to_expert0;

// ---------------------------------------------------------------- helpers

/// A random `[rows, cols]` matrix with values in ±[0.05, 1] (never zero).
fn random_matrix(rng: &mut StdRng, rows: usize, cols: usize) -> Array2<f32> {
    Array2::from_shape_simple_fn((rows, cols), || {
        let magnitude = rng.gen_range(0.05f32..=1.0);
        if rng.gen::<bool>() {
            magnitude
        } else {
            -magnitude
        }
    })
}

/// Widens to f64.
fn to64(a: &Array2<f32>) -> Array2<f64> {
    a.mapv(f64::from)
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

/// Asserts `|a - b| <= tol * scale` elementwise, `scale` the largest
/// magnitude of `b` (at least 1e-6).
fn assert_close(a: ArrayView2<f32>, b: ArrayView2<f64>, tol: f64, what: &str) {
    assert_eq!(a.dim(), b.dim(), "{what}: shapes differ");
    let scale = b.iter().fold(1e-6f64, |m, &v| m.max(v.abs()));
    for ((idx, &x), &y) in a.indexed_iter().zip(b.iter()) {
        assert!(
            (x as f64 - y).abs() <= tol * scale,
            "{what} at {idx:?}: {x} vs {y} (tolerance {tol}, scale {scale})"
        );
    }
}

// ---------------------------------------------------------------- naive f64 layer

/// The layer's weights in f64.
#[derive(Clone)]
struct Layer64 {
    router: Array2<f64>,
    w1: Array2<f64>,
    w3: Option<Array2<f64>>,
    w2: Array2<f64>,
}

impl Layer64 {
    fn new(w: &MoeWeights<f32>) -> Self {
        Layer64 {
            router: to64(&w.router),
            w1: to64(&w.w1),
            w3: w.w3.as_ref().map(to64),
            w2: to64(&w.w2),
        }
    }
}

/// The f64 gradients of every tensor.
struct Grads64 {
    x: Array2<f64>,
    router: Array2<f64>,
    w1: Array2<f64>,
    w3: Option<Array2<f64>>,
    w2: Array2<f64>,
}

const GELU_C: f64 = 0.797_884_560_802_865_4;

fn gelu64(u: f64) -> f64 {
    0.5 * u * (1.0 + (GELU_C * (u + 0.044715 * u * u * u)).tanh())
}

fn gelu_grad64(u: f64) -> f64 {
    let th = (GELU_C * (u + 0.044715 * u * u * u)).tanh();
    0.5 * (1.0 + th) + 0.5 * u * (1.0 - th * th) * GELU_C * (1.0 + 3.0 * 0.044715 * u * u)
}

fn sigmoid64(u: f64) -> f64 {
    1.0 / (1.0 + (-u).exp())
}

/// One token's routing in f64.
struct TokenRoute {
    probs: Vec<f64>,
    lse: f64,
    ids: Vec<usize>,
    weights: Vec<f64>,
    /// Logit gap between the k-th and the (k+1)-th expert (infinite when k = E).
    gap: f64,
}

/// Softmax, top-k (ties: lower id first) and optional renormalisation.
fn route64(layer: &Layer64, x: &[f64], top_k: usize, renormalize: bool) -> TokenRoute {
    let logits: Vec<f64> = layer
        .router
        .rows()
        .into_iter()
        .map(|r| r.iter().zip(x).map(|(&a, &b)| a * b).sum())
        .collect();
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp()).sum();
    let lse = max + sum.ln();
    let probs: Vec<f64> = logits.iter().map(|&l| (l - lse).exp()).collect();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap());
    let gap = if top_k < order.len() {
        logits[order[top_k - 1]] - logits[order[top_k]]
    } else {
        f64::INFINITY
    };
    order.truncate(top_k);
    let norm: f64 = if renormalize {
        order.iter().map(|&e| probs[e]).sum()
    } else {
        1.0
    };
    let weights = order.iter().map(|&e| probs[e] / norm).collect();
    TokenRoute {
        probs,
        lse,
        ids: order,
        weights,
        gap,
    }
}

/// Expert `e`'s MLP on one token, with its dense weights sliced out of the
/// concatenated matrices: (pre-activation 1, pre-activation 3, h, y).
fn expert64(
    cfg: &MoeConfig,
    layer: &Layer64,
    e: usize,
    x: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = e * cfg.ffn..(e + 1) * cfg.ffn;
    let dot =
        |m: &Array2<f64>, r: usize| -> f64 { m.row(r).iter().zip(x).map(|(&a, &b)| a * b).sum() };
    let a1: Vec<f64> = rows.clone().map(|r| dot(&layer.w1, r)).collect();
    let a3: Vec<f64> = match &layer.w3 {
        Some(w3) => rows.clone().map(|r| dot(w3, r)).collect(),
        None => Vec::new(),
    };
    let h: Vec<f64> = match cfg.mlp {
        MlpKind::Plain => a1.iter().map(|&u| gelu64(u)).collect(),
        MlpKind::Glu => a1
            .iter()
            .zip(&a3)
            .map(|(&u, &v)| u * sigmoid64(u) * v)
            .collect(),
    };
    let y = (0..cfg.hidden)
        .map(|c| {
            rows.clone()
                .zip(&h)
                .map(|(r, &hv)| hv * layer.w2[[r, c]])
                .sum()
        })
        .collect();
    (a1, a3, h, y)
}

/// All tokens' routings, and the smallest top-k logit gap.
fn route_all(cfg: &MoeConfig, layer: &Layer64, x: &Array2<f64>) -> (Vec<TokenRoute>, f64) {
    let routes: Vec<TokenRoute> = x
        .rows()
        .into_iter()
        .map(|r| route64(layer, r.as_slice().unwrap(), cfg.top_k, cfg.renormalize))
        .collect();
    let gap = routes.iter().map(|r| r.gap).fold(f64::INFINITY, f64::min);
    (routes, gap)
}

/// The per-expert assignment counts of the routings.
fn counts_of(routes: &[TokenRoute], experts: usize) -> Vec<f64> {
    let mut counts = vec![0.0; experts];
    for r in routes {
        for &e in &r.ids {
            counts[e] += 1.0;
        }
    }
    counts
}

/// The whole training loss in f64, token by token:
/// `<dout, output> + lb * E * sum_e f_e P_e + z * mean_t lse_t^2`.
fn naive_loss(
    cfg: &MoeConfig,
    layer: &Layer64,
    x: &Array2<f64>,
    dout: &Array2<f64>,
    aux: AuxLossCoefficients,
) -> f64 {
    let (tokens, experts) = (x.nrows(), cfg.num_experts);
    let (routes, _) = route_all(cfg, layer, x);
    let mut loss = 0.0;
    for (t, r) in routes.iter().enumerate() {
        let xt = x.row(t).to_vec();
        for (&e, &w) in r.ids.iter().zip(&r.weights) {
            let (_, _, _, y) = expert64(cfg, layer, e, &xt);
            loss += w * y.iter().zip(dout.row(t)).map(|(&a, &b)| a * b).sum::<f64>();
        }
    }
    let counts = counts_of(&routes, experts);
    let assignments = (tokens * cfg.top_k) as f64;
    let lbl: f64 = (0..experts)
        .map(|e| {
            let mean_p: f64 = routes.iter().map(|r| r.probs[e]).sum::<f64>() / tokens as f64;
            counts[e] / assignments * mean_p
        })
        .sum::<f64>()
        * experts as f64;
    let z: f64 = routes.iter().map(|r| r.lse * r.lse).sum::<f64>() / tokens as f64;
    loss + aux.load_balancing as f64 * lbl + aux.z_loss as f64 * z
}

/// The gradient of the routing part of the loss with respect to one token's
/// logits, by explicit Jacobians: `dL/dp_i = sum_j dw_j dw_j/dp_i` (with
/// `dw_j/dp_i = (δ_ij S - p_j) / S^2` when renormalising), plus the
/// load-balancing term, through `dp_e/dl_c = p_e (δ_ec - p_c)`, plus the z-loss
/// term `2 lse / T * dlse/dl_c`, `dlse/dl_c = p_c`.
fn naive_logit_grad(
    r: &TokenRoute,
    dw: &[f64],
    renormalize: bool,
    lbl_grad: &[f64],
    z_coeff: f64,
    tokens: usize,
) -> Vec<f64> {
    let experts = r.probs.len();
    let mut dp = lbl_grad.to_vec();
    let sum: f64 = r.ids.iter().map(|&e| r.probs[e]).sum();
    for (i, &ei) in r.ids.iter().enumerate() {
        for (j, &ej) in r.ids.iter().enumerate() {
            let jac = if !renormalize {
                if i == j {
                    1.0
                } else {
                    0.0
                }
            } else {
                let delta = if i == j { sum } else { 0.0 };
                (delta - r.probs[ej]) / (sum * sum)
            };
            dp[ei] += dw[j] * jac;
        }
    }
    (0..experts)
        .map(|c| {
            let softmax: f64 = (0..experts)
                .map(|e| {
                    let delta = if e == c { 1.0 } else { 0.0 };
                    dp[e] * r.probs[e] * (delta - r.probs[c])
                })
                .sum();
            softmax + z_coeff * 2.0 * r.lse / tokens as f64 * r.probs[c]
        })
        .collect()
}

/// The analytic gradient of [`naive_loss`], token by token in f64.
fn naive_grads(
    cfg: &MoeConfig,
    layer: &Layer64,
    x: &Array2<f64>,
    dout: &Array2<f64>,
    aux: AuxLossCoefficients,
) -> Grads64 {
    let (tokens, experts) = (x.nrows(), cfg.num_experts);
    let (routes, _) = route_all(cfg, layer, x);
    let counts = counts_of(&routes, experts);
    let lbl_grad: Vec<f64> = counts
        .iter()
        .map(|&c| {
            aux.load_balancing as f64 * experts as f64 * c
                / (tokens * cfg.top_k) as f64
                / tokens as f64
        })
        .collect();
    let mut g = Grads64 {
        x: Array2::zeros(x.dim()),
        router: Array2::zeros(layer.router.dim()),
        w1: Array2::zeros(layer.w1.dim()),
        w3: layer.w3.as_ref().map(|w| Array2::zeros(w.dim())),
        w2: Array2::zeros(layer.w2.dim()),
    };
    for (t, r) in routes.iter().enumerate() {
        let xt = x.row(t).to_vec();
        let mut dw = vec![0.0; cfg.top_k];
        for (j, (&e, &w)) in r.ids.iter().zip(&r.weights).enumerate() {
            let (a1, a3, h, y) = expert64(cfg, layer, e, &xt);
            dw[j] = y.iter().zip(dout.row(t)).map(|(&a, &b)| a * b).sum();
            let dy: Vec<f64> = dout.row(t).iter().map(|&d| w * d).collect();
            for f in 0..cfg.ffn {
                let row = e * cfg.ffn + f;
                let mut dh = 0.0;
                for (c, &d) in dy.iter().enumerate() {
                    g.w2[[row, c]] += h[f] * d;
                    dh += d * layer.w2[[row, c]];
                }
                let (da1, da3) = match cfg.mlp {
                    MlpKind::Plain => (dh * gelu_grad64(a1[f]), 0.0),
                    MlpKind::Glu => {
                        let s = sigmoid64(a1[f]);
                        (dh * a3[f] * s * (1.0 + a1[f] * (1.0 - s)), dh * a1[f] * s)
                    }
                };
                for (c, &xc) in xt.iter().enumerate() {
                    g.w1[[row, c]] += da1 * xc;
                    g.x[[t, c]] += da1 * layer.w1[[row, c]];
                    if let (Some(gw3), Some(w3)) = (g.w3.as_mut(), layer.w3.as_ref()) {
                        gw3[[row, c]] += da3 * xc;
                        g.x[[t, c]] += da3 * w3[[row, c]];
                    }
                }
            }
        }
        let dl = naive_logit_grad(
            r,
            &dw,
            cfg.renormalize,
            &lbl_grad,
            aux.z_loss as f64,
            tokens,
        );
        for (e, &d) in dl.iter().enumerate() {
            for (c, &xc) in xt.iter().enumerate() {
                g.router[[e, c]] += d * xc;
                g.x[[t, c]] += d * layer.router[[e, c]];
            }
        }
    }
    g
}

/// Runs `forward_train` and `backward` in f32.
fn analytic(
    cfg: &MoeConfig,
    weights: &MoeWeights<f32>,
    x: &Array2<f32>,
    dout: &Array2<f32>,
    aux: AuxLossCoefficients,
) -> MoeGradients<f32> {
    let (_, saved) = forward_train(cfg, weights, x.view()).unwrap();
    backward(cfg, weights, &saved, dout.view(), aux).unwrap()
}

/// Compares every gradient with its f64 counterpart.
fn assert_grads_close(got: &MoeGradients<f32>, want: &Grads64, tol: f64, what: &str) {
    assert_close(got.x.view(), want.x.view(), tol, &format!("{what}: dx"));
    assert_close(
        got.router.view(),
        want.router.view(),
        tol,
        &format!("{what}: drouter"),
    );
    assert_close(got.w1.view(), want.w1.view(), tol, &format!("{what}: dw1"));
    assert_close(got.w2.view(), want.w2.view(), tol, &format!("{what}: dw2"));
    match (&got.w3, &want.w3) {
        (Some(a), Some(b)) => assert_close(a.view(), b.view(), tol, &format!("{what}: dw3")),
        (None, None) => {}
        _ => panic!("{what}: dw3 present in one gradient only"),
    }
}

/// Non-trivial auxiliary-loss coefficients.
const AUX: AuxLossCoefficients = AuxLossCoefficients {
    load_balancing: 0.3,
    z_loss: 0.05,
};

// ---------------------------------------------------------------- finite differences

/// A tensor the loss depends on.
#[derive(Clone, Copy)]
enum Param {
    X,
    Router,
    W1,
    W3,
    W2,
}

/// The tensor `p` of the layer or the input.
fn param_mut<'a>(p: Param, layer: &'a mut Layer64, x: &'a mut Array2<f64>) -> &'a mut Array2<f64> {
    match p {
        Param::X => x,
        Param::Router => &mut layer.router,
        Param::W1 => &mut layer.w1,
        Param::W3 => layer.w3.as_mut().expect("a GLU layer has w3"),
        Param::W2 => &mut layer.w2,
    }
}

/// Central differences of [`naive_loss`] with respect to every entry of `p`.
fn central_differences(
    p: Param,
    cfg: &MoeConfig,
    layer: &Layer64,
    x: &Array2<f64>,
    dout: &Array2<f64>,
    eps: f64,
) -> Array2<f64> {
    let (mut l, mut xx) = (layer.clone(), x.clone());
    let mut grad = Array2::zeros(param_mut(p, &mut l, &mut xx).dim());
    for ((i, j), g) in grad.indexed_iter_mut() {
        let orig = param_mut(p, &mut l, &mut xx)[[i, j]];
        param_mut(p, &mut l, &mut xx)[[i, j]] = orig + eps;
        let plus = naive_loss(cfg, &l, &xx, dout, AUX);
        param_mut(p, &mut l, &mut xx)[[i, j]] = orig - eps;
        let minus = naive_loss(cfg, &l, &xx, dout, AUX);
        param_mut(p, &mut l, &mut xx)[[i, j]] = orig;
        *g = (plus - minus) / (2.0 * eps);
    }
    grad
}

/// Random weights, input and output gradient whose top-k choices have a
/// logit gap of at least `min_gap` for every token (reseeding until so).
fn well_separated(
    cfg: &MoeConfig,
    tokens: usize,
    min_gap: f64,
    seed: u64,
) -> (MoeWeights<f32>, Array2<f32>, Array2<f32>) {
    for attempt in 0..1000u64 {
        let s = seed.wrapping_add(attempt.wrapping_mul(0x9E37_79B9));
        let weights = MoeWeights::<f32>::random(cfg, s).unwrap();
        let mut rng = StdRng::seed_from_u64(s ^ 0xbac4);
        let x = random_matrix(&mut rng, tokens, cfg.hidden);
        let dout = random_matrix(&mut rng, tokens, cfg.hidden);
        let (_, gap) = route_all(cfg, &Layer64::new(&weights), &to64(&x));
        if gap >= min_gap {
            return (weights, x, dout);
        }
    }
    panic!("no seed with a top-k logit gap of {min_gap}");
}

#[test]
fn backward_matches_central_differences() {
    const EPS: f64 = 1e-4;
    // (hidden, experts, top_k, mlp, renormalize, tokens); ffn = block = 16.
    let shapes = [
        (12, 4, 2, MlpKind::Plain, false, 10),
        (12, 4, 2, MlpKind::Plain, true, 11),
        (8, 3, 1, MlpKind::Glu, false, 9),
        (16, 4, 2, MlpKind::Glu, true, 10),
        (8, 3, 3, MlpKind::Glu, true, 7),
        (10, 3, 1, MlpKind::Plain, true, 12),
    ];
    for (seed, &(hidden, experts, k, mlp, renorm, tokens)) in shapes.iter().enumerate() {
        let cfg = config(hidden, 16, experts, k, mlp, renorm, 16);
        // Perturbations move a logit by at most EPS * 1 << 1e-2: no top-k flips.
        let (weights, x, dout) = well_separated(&cfg, tokens, 1e-2, seed as u64);
        let got = analytic(&cfg, &weights, &x, &dout, AUX);
        let (layer, x64, dout64) = (Layer64::new(&weights), to64(&x), to64(&dout));
        let fd = |p| central_differences(p, &cfg, &layer, &x64, &dout64, EPS);
        let want = Grads64 {
            x: fd(Param::X),
            router: fd(Param::Router),
            w1: fd(Param::W1),
            w3: layer.w3.as_ref().map(|_| fd(Param::W3)),
            w2: fd(Param::W2),
        };
        assert_grads_close(&got, &want, 1e-3, &format!("{cfg:?}"));
    }
}

// ---------------------------------------------------------------- naive analytic gradient

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn backward_matches_the_naive_gradient(
        tokens in 1usize..40,
        hidden in 1usize..20,
        experts in 1usize..=6,
        k_frac in 0.0f64..1.0,
        block_index in 0usize..2,
        ffn_blocks in 1usize..=2,
        glu: bool,
        renormalize: bool,
        skew: bool,
        lb in 0.0f32..1.0,
        z in 0.0f32..0.1,
        seed: u64,
    ) {
        let top_k = 1 + ((experts as f64 * k_frac) as usize).min(experts - 1);
        let block = [16usize, 32][block_index];
        let mlp = if glu { MlpKind::Glu } else { MlpKind::Plain };
        let cfg = config(hidden, block * ffn_blocks, experts, top_k, mlp, renormalize, block);
        let mut weights = MoeWeights::<f32>::random(&cfg, seed).unwrap();
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut x = random_matrix(&mut rng, tokens, hidden);
        let dout = random_matrix(&mut rng, tokens, hidden);
        if skew {
            skew_to_expert0(&mut weights, &mut x, 3.0);
        }
        let (layer, x64) = (Layer64::new(&weights), to64(&x));
        // The f32 and f64 routers must pick the same experts.
        let (_, gap) = route_all(&cfg, &layer, &x64);
        prop_assume!(gap > 1e-3);
        let aux = AuxLossCoefficients { load_balancing: lb, z_loss: z };
        let got = analytic(&cfg, &weights, &x, &dout, aux);
        let want = naive_grads(&cfg, &layer, &x64, &to64(&dout), aux);
        assert_grads_close(&got, &want, 1e-4, &format!("{cfg:?}"));
    }
}

#[test]
fn backward_with_empty_experts_and_one_token() {
    for mlp in [MlpKind::Plain, MlpKind::Glu] {
        for (tokens, renorm) in [(1, true), (1, false), (5, true)] {
            let cfg = config(6, 32, 5, 2, mlp, renorm, 16);
            let mut weights = MoeWeights::<f32>::random(&cfg, 7).unwrap();
            let mut rng = StdRng::seed_from_u64(11);
            let mut x = random_matrix(&mut rng, tokens, 6);
            let dout = random_matrix(&mut rng, tokens, 6);
            skew_to_expert0(&mut weights, &mut x, 3.0);
            let out = forward(&cfg, &weights, x.view()).unwrap();
            assert!(out.tokens_per_expert.iter().any(|&c| c == 0));
            let got = analytic(&cfg, &weights, &x, &dout, AUX);
            let want = naive_grads(&cfg, &Layer64::new(&weights), &to64(&x), &to64(&dout), AUX);
            assert_grads_close(&got, &want, 1e-4, &format!("{cfg:?}, {tokens} tokens"));
            // Experts without tokens get no expert-weight gradient.
            for (e, &c) in out.tokens_per_expert.iter().enumerate() {
                if c == 0 {
                    let rows = e * cfg.ffn..(e + 1) * cfg.ffn;
                    assert!(got
                        .w1
                        .slice(ndarray::s![rows.clone(), ..])
                        .iter()
                        .all(|&v| v == 0.0));
                    assert!(got
                        .w2
                        .slice(ndarray::s![rows, ..])
                        .iter()
                        .all(|&v| v == 0.0));
                }
            }
        }
    }
}

#[test]
fn auxiliary_losses_change_the_router_gradient() {
    let cfg = config(8, 16, 4, 2, MlpKind::Plain, false, 16);
    let (weights, x, dout) = well_separated(&cfg, 9, 1e-3, 3);
    let with = analytic(&cfg, &weights, &x, &dout, AUX);
    let without = analytic(&cfg, &weights, &x, &dout, AuxLossCoefficients::default());
    assert_ne!(with.router, without.router);
    assert_ne!(with.x, without.x);
    assert_eq!(with.w1, without.w1);
    assert_eq!(with.w2, without.w2);
}

// ---------------------------------------------------------------- route_backward

/// The routing part of the loss in f64 from logits, with the assignment
/// counts `counts` held constant.
fn routing_loss(
    logits: &Array2<f64>,
    grad_weights: &Array2<f64>,
    top_k: usize,
    renormalize: bool,
    counts: &[f64],
    aux: AuxLossCoefficients,
) -> f64 {
    let (tokens, experts) = logits.dim();
    let mut loss = 0.0;
    let mut mean_p = vec![0.0; experts];
    let mut z = 0.0;
    for t in 0..tokens {
        let row = logits.row(t);
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|&l| (l - max).exp()).sum::<f64>().ln();
        let p: Vec<f64> = row.iter().map(|&l| (l - lse).exp()).collect();
        let mut order: Vec<usize> = (0..experts).collect();
        order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap());
        let norm: f64 = if renormalize {
            order[..top_k].iter().map(|&e| p[e]).sum()
        } else {
            1.0
        };
        for (j, &e) in order[..top_k].iter().enumerate() {
            loss += grad_weights[[t, j]] * p[e] / norm;
        }
        for (m, &pe) in mean_p.iter_mut().zip(&p) {
            *m += pe / tokens as f64;
        }
        z += lse * lse / tokens as f64;
    }
    let lbl: f64 = counts
        .iter()
        .zip(&mean_p)
        .map(|(&c, &m)| c / (tokens * top_k) as f64 * m)
        .sum::<f64>()
        * experts as f64;
    loss + aux.load_balancing as f64 * lbl + aux.z_loss as f64 * z
}

#[test]
fn route_backward_matches_central_differences() {
    const EPS: f64 = 1e-4;
    let mut checked = 0;
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (tokens, experts) = (rng.gen_range(1..9), rng.gen_range(1..7));
        let top_k = rng.gen_range(1..=experts);
        let renormalize = rng.gen::<bool>();
        let logits = random_matrix(&mut rng, tokens, experts).mapv(|v| 2.0 * v);
        let grad_weights = random_matrix(&mut rng, tokens, top_k);
        let aux = AuxLossCoefficients {
            load_balancing: rng.gen_range(0.0..1.0),
            z_loss: rng.gen_range(0.0..0.1),
        };
        let routing = route(logits.view(), top_k, renormalize).unwrap();
        // Skip near-ties: the top-k choice must not flip under the perturbation.
        let gap = logits.rows().into_iter().fold(f32::INFINITY, |m, row| {
            let mut sorted = row.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if top_k < experts {
                m.min(sorted[top_k - 1] - sorted[top_k])
            } else {
                m
            }
        });
        if gap < 1e-2 {
            continue;
        }
        let got = route_backward(
            logits.view(),
            &routing,
            grad_weights.view(),
            renormalize,
            aux,
        )
        .unwrap();
        let mut counts = vec![0.0; experts];
        for &e in routing.expert_ids.iter() {
            counts[e as usize] += 1.0;
        }
        let (mut l64, g64) = (to64(&logits), to64(&grad_weights));
        let mut want = Array2::<f64>::zeros((tokens, experts));
        for ((t, e), w) in want.indexed_iter_mut() {
            let orig = l64[[t, e]];
            l64[[t, e]] = orig + EPS;
            let plus = routing_loss(&l64, &g64, top_k, renormalize, &counts, aux);
            l64[[t, e]] = orig - EPS;
            let minus = routing_loss(&l64, &g64, top_k, renormalize, &counts, aux);
            l64[[t, e]] = orig;
            *w = (plus - minus) / (2.0 * EPS);
        }
        assert_close(
            got.view(),
            want.view(),
            1e-3,
            &format!("route_backward (seed {seed}, top_k {top_k}, renormalize {renormalize})"),
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} cases without near-ties");
}

#[test]
fn route_backward_rejects_bad_inputs() {
    let mut rng = StdRng::seed_from_u64(5);
    let logits = random_matrix(&mut rng, 4, 3);
    let routing = route(logits.view(), 2, true).unwrap();
    let dw = random_matrix(&mut rng, 4, 2);
    let aux = AuxLossCoefficients::default();
    let bad_dw = random_matrix(&mut rng, 4, 1);
    assert!(matches!(
        route_backward(logits.view(), &routing, bad_dw.view(), true, aux),
        Err(Error::ShapeMismatch { .. })
    ));
    let other_logits = random_matrix(&mut rng, 5, 3);
    assert!(matches!(
        route_backward(other_logits.view(), &routing, dw.view(), true, aux),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut nan_logits = logits.clone();
    nan_logits[[2, 1]] = f32::NAN;
    assert!(matches!(
        route_backward(nan_logits.view(), &routing, dw.view(), true, aux),
        Err(Error::NonFinite { row: 2, col: 1, .. })
    ));
    let mut bad_ids = routing.clone();
    bad_ids.expert_ids[[1, 0]] = 3;
    assert!(matches!(
        route_backward(logits.view(), &bad_ids, dw.view(), true, aux),
        Err(Error::ExpertOutOfRange { .. })
    ));
    let empty = Array2::<f32>::zeros((0, 3));
    assert!(matches!(
        route_backward(empty.view(), &routing, dw.view(), true, aux),
        Err(Error::Empty { .. })
    ));
}

// ---------------------------------------------------------------- bf16, errors

/// Rounds to bf16.
fn to_bf16(a: &Array2<f32>) -> Array2<bf16> {
    a.mapv(bf16::from_f32)
}

/// Asserts `|a - b| <= tol * scale` for bf16 `a` against f32 `b`.
fn assert_bf16_close(a: &Array2<bf16>, b: &Array2<f32>, tol: f64, what: &str) {
    assert_close(
        a.mapv(f32::from).view(),
        b.mapv(f64::from).view(),
        tol,
        what,
    );
}

#[test]
fn bf16_backward_agrees_with_f32() {
    for (mlp, renorm) in [(MlpKind::Plain, false), (MlpKind::Glu, true)] {
        let cfg = config(24, 32, 4, 2, mlp, renorm, 16);
        let w32 = MoeWeights::<f32>::random(&cfg, 21).unwrap();
        let w16 = MoeWeights::<bf16> {
            router: to_bf16(&w32.router),
            w1: to_bf16(&w32.w1),
            w3: w32.w3.as_ref().map(to_bf16),
            w2: to_bf16(&w32.w2),
        };
        // The f32 run sees exactly the bf16 values, so both route alike.
        let w32 = MoeWeights::<f32> {
            router: w16.router.mapv(f32::from),
            w1: w16.w1.mapv(f32::from),
            w3: w16.w3.as_ref().map(|w| w.mapv(f32::from)),
            w2: w16.w2.mapv(f32::from),
        };
        let mut rng = StdRng::seed_from_u64(22);
        let x16 = to_bf16(&random_matrix(&mut rng, 37, 24));
        let dout16 = to_bf16(&random_matrix(&mut rng, 37, 24));
        let (x32, dout32) = (x16.mapv(f32::from), dout16.mapv(f32::from));
        let want = analytic(&cfg, &w32, &x32, &dout32, AUX);
        let (_, saved) = forward_train(&cfg, &w16, x16.view()).unwrap();
        let got = backward(&cfg, &w16, &saved, dout16.view(), AUX).unwrap();
        // Several bf16 roundings in a row: twice the bf16 tolerance.
        const TOL: f64 = 2e-2;
        assert_bf16_close(&got.x, &want.x, TOL, "bf16 dx");
        assert_bf16_close(&got.router, &want.router, TOL, "bf16 drouter");
        assert_bf16_close(&got.w1, &want.w1, TOL, "bf16 dw1");
        assert_bf16_close(&got.w2, &want.w2, TOL, "bf16 dw2");
        if let (Some(a), Some(b)) = (&got.w3, &want.w3) {
            assert_bf16_close(a, b, TOL, "bf16 dw3");
        }
        assert_eq!(got.w3.is_some(), mlp == MlpKind::Glu);
    }
}

#[test]
fn forward_train_returns_the_forward_and_its_state() {
    let cfg = config(8, 32, 3, 2, MlpKind::Glu, true, 16);
    let weights = MoeWeights::<f32>::random(&cfg, 1).unwrap();
    let x = random_matrix(&mut StdRng::seed_from_u64(2), 13, 8);
    let out = forward(&cfg, &weights, x.view()).unwrap();
    let (out_train, saved) = forward_train(&cfg, &weights, x.view()).unwrap();
    assert_eq!(out, out_train);
    assert_eq!(saved.config(), &cfg);
    assert_eq!(saved.x(), &x);
    assert_eq!(saved.routing(), &out.routing);
    assert_eq!(saved.tokens_per_expert(), &out.tokens_per_expert);
    let padded = *saved.padded_bins().last().unwrap() as usize;
    assert_eq!(saved.x_gathered().dim(), (padded, 8));
    assert_eq!(saved.y().dim(), (padded, 8));
    assert_eq!(saved.topology().rows(), padded);
    assert_eq!(saved.topology().cols(), 3 * 32);
    assert!(saved.pre_w3().is_some());
    assert_eq!(saved.hidden().topology(), saved.topology());
}

#[test]
fn backward_rejects_bad_inputs() {
    let cfg = config(8, 16, 3, 2, MlpKind::Plain, false, 16);
    let weights = MoeWeights::<f32>::random(&cfg, 1).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let x = random_matrix(&mut rng, 6, 8);
    let (_, saved) = forward_train(&cfg, &weights, x.view()).unwrap();
    let aux = AuxLossCoefficients::default();

    for bad in [(5, 8), (6, 7), (7, 8)] {
        let dout = random_matrix(&mut rng, bad.0, bad.1);
        assert!(matches!(
            backward(&cfg, &weights, &saved, dout.view(), aux),
            Err(Error::ShapeMismatch { .. })
        ));
    }
    let dout = random_matrix(&mut rng, 6, 8);
    let other = MoeConfig {
        renormalize: true,
        ..cfg
    };
    assert!(matches!(
        backward(&other, &weights, &saved, dout.view(), aux),
        Err(Error::InvalidConfig(_))
    ));
    let glu = MoeConfig {
        mlp: MlpKind::Glu,
        ..cfg
    };
    let glu_weights = MoeWeights::<f32>::random(&glu, 1).unwrap();
    assert!(matches!(
        backward(&glu, &glu_weights, &saved, dout.view(), aux),
        Err(Error::InvalidConfig(_))
    ));
    let mut bad_weights = weights.clone();
    bad_weights.w2 = random_matrix(&mut rng, 48, 7);
    assert!(matches!(
        backward(&cfg, &bad_weights, &saved, dout.view(), aux),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(backward(&cfg, &weights, &saved, dout.view(), aux).is_ok());
}
