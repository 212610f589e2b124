//! ModuleFormer's routers, MLP MoE and mixture-of-attention layer against an
//! independent per-token formulation (plain loops, probability-space
//! stick-breaking, no shared code), in f32 on random shapes and weights; KV
//! cache decoding against the full forward; typed errors for bad configs.

use dropless::reference::moa::{
    moa_forward, moe_mlp, Activation, MoaConfig, MoaWeights, MoeMlpConfig, MoeMlpWeights,
    Projection, Router,
};
use dropless::Error;
use half::bf16;
use ndarray::{s, Array1, Array2, Array3, ArrayView1};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn value(rng: &mut StdRng, scale: f32) -> f32 {
    let m = rng.gen_range(0.05f32..=1.0) * scale;
    if rng.gen::<bool>() {
        m
    } else {
        -m
    }
}

fn mat(rng: &mut StdRng, r: usize, c: usize, scale: f32) -> Array2<f32> {
    Array2::from_shape_simple_fn((r, c), || value(rng, scale))
}

fn cube(rng: &mut StdRng, d: (usize, usize, usize), scale: f32) -> Array3<f32> {
    Array3::from_shape_simple_fn(d, || value(rng, scale))
}

fn router(rng: &mut StdRng, mlp: bool, hidden: usize, experts: usize) -> Router<f32> {
    if mlp {
        let gating = rng.gen_range(1..12);
        Router::Mlp {
            w1: mat(rng, gating, hidden, 1.0),
            b1: Array1::from_shape_simple_fn(gating, || value(rng, 0.3)),
            w2: mat(rng, experts, gating, 2.0),
        }
    } else {
        Router::Linear {
            w: mat(rng, experts, hidden, 2.0),
        }
    }
}

// ------------------------------------------------------------ naive model

fn naive_erf(x: f64) -> f64 {
    // Maclaurin series for |x| <= 5 (cancellation stays below 1e-6 there),
    // ±1 beyond.
    if x.abs() > 5.0 {
        return x.signum();
    }
    let mut sum = 0.0;
    let mut term = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
    }
    2.0 / std::f64::consts::PI.sqrt() * sum
}

fn naive_act(a: Activation, x: f64) -> f64 {
    match a {
        Activation::GeluTanh => {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }
        Activation::GeluErf => 0.5 * x * (1.0 + naive_erf(x / 2f64.sqrt())),
        Activation::Relu => x.max(0.0),
        Activation::Silu => x / (1.0 + (-x).exp()),
    }
}

/// One token's router logits, and each logit's terms: the sum of the
/// magnitudes it adds up (with the MLP router's hidden values widened by
/// their own terms), the scale of its f32 rounding.
fn naive_logits(r: &Router<f32>, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let dot = |w: ArrayView1<f32>, x: &[f64]| -> (f64, f64) {
        let value = x.iter().zip(w).map(|(a, &b)| a * b as f64).sum();
        (
            value,
            x.iter().zip(w).map(|(a, &b)| (a * b as f64).abs()).sum(),
        )
    };
    match r {
        Router::Mlp { w1, b1, w2 } => {
            // |gelu'| stays below 1.2.
            let (h, spread): (Vec<f64>, Vec<f64>) = (0..w1.nrows())
                .map(|g| {
                    let (z, z_terms) = dot(w1.row(g), x);
                    let z = z + b1[g] as f64;
                    let h = naive_act(Activation::GeluErf, z);
                    (h, h.abs() + 1.2 * (z_terms + (b1[g] as f64).abs()))
                })
                .unzip();
            (0..w2.nrows())
                .map(|e| (dot(w2.row(e), &h).0, dot(w2.row(e), &spread).1))
                .unzip()
        }
        Router::Linear { w } => (0..w.nrows()).map(|e| dot(w.row(e), x)).unzip(),
    }
}

/// Whether the k-th and (k+1)-th largest logits of a token are so close
/// (within 1e-4 of the largest terms) that f32 rounding may pick either:
/// the naive loop and the layer may then route differently.
fn near_tie(r: &Router<f32>, x: ArrayView1<f32>, k: usize) -> bool {
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let (mut logits, terms) = naive_logits(r, &x);
    if k >= logits.len() {
        return false;
    }
    logits.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let scale = terms.iter().cloned().fold(0.0f64, f64::max);
    logits[k - 1] - logits[k] <= 1e-4 * scale
}

/// (expert, gate) pairs of one token: softmax, top-k, no renormalisation.
fn naive_route(r: &Router<f32>, x: &[f64], k: usize) -> Vec<(usize, f64)> {
    let (logits, _) = naive_logits(r, x);
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
    let mut p: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(e, l)| (e, (l - max).exp() / z))
        .collect();
    p.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    p.truncate(k);
    p
}

fn naive_mlp(c: &MoeMlpConfig, w: &MoeMlpWeights<f32>, x: &Array2<f32>) -> Array2<f64> {
    let mut out = Array2::zeros((x.nrows(), c.hidden));
    for t in 0..x.nrows() {
        let xt: Vec<f64> = x.row(t).iter().map(|&v| v as f64).collect();
        for (e, g) in naive_route(&w.router, &xt, c.top_k) {
            let h: Vec<f64> = (0..c.ffn)
                .map(|f| {
                    let z: f64 = (0..c.hidden).map(|i| xt[i] * w.w[[e, i, f]] as f64).sum();
                    naive_act(c.activation, z)
                })
                .collect();
            for o in 0..c.hidden {
                let y: f64 = (0..c.ffn).map(|f| h[f] * w.v[[e, f, o]] as f64).sum();
                out[[t, o]] += g * y;
            }
        }
    }
    out
}

/// Projection of token row `x` with `nn.Linear` weight `[out, in]` and bias.
fn naive_linear(w: &Array2<f32>, b: &Array1<f32>, x: &[f64]) -> Vec<f64> {
    (0..w.nrows())
        .map(|o| (0..x.len()).map(|i| x[i] * w[[o, i]] as f64).sum::<f64>() + b[o] as f64)
        .collect()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The layer's output, and beside it the scale of the error that rounding
/// the intermediates (queries, keys, values, attention output) leaves in each
/// output: the output projection's sum over the absolute values of its terms,
/// each attention output taken at the largest value it averages. An output
/// that cancels (a sum of large terms ending near zero) is held to its terms,
/// not to its small value.
fn naive_moa(c: &MoaConfig, w: &MoaWeights<f32>, x: &Array2<f32>) -> (Array2<f64>, Array2<f64>) {
    let (n, hs, nh) = (x.nrows(), c.head_size, c.n_head);
    let rows: Vec<Vec<f64>> = x
        .rows()
        .into_iter()
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    let (keys, vals): (Vec<Vec<f64>>, Vec<Vec<f64>>) = match &w.kv {
        Some((k, v)) => rows
            .iter()
            .map(|r| {
                (
                    naive_linear(&k.weight, &k.bias, r),
                    naive_linear(&v.weight, &v.bias, r),
                )
            })
            .unzip(),
        None => (rows.clone(), rows.clone()),
    };
    let mut out = Array2::zeros((n, c.hidden));
    let mut terms = Array2::zeros((n, c.hidden));
    for t in 0..n {
        let largest: Vec<f64> = (0..nh * hs)
            .map(|a| vals[..=t].iter().fold(0.0f64, |m, v| m.max(v[a].abs())))
            .collect();
        for (e, g) in naive_route(&w.router, &rows[t], c.top_k) {
            let q: Vec<f64> = (0..nh * hs)
                .map(|a| {
                    (0..c.hidden)
                        .map(|i| rows[t][i] * w.q[[e, i, a]] as f64)
                        .sum()
                })
                .collect();
            let mut y = vec![0.0f64; nh * hs];
            for h in 0..nh {
                let beta: Vec<f64> = (0..=t)
                    .map(|j| {
                        let z: f64 = (0..hs).map(|d| q[h * hs + d] * keys[j][h * hs + d]).sum();
                        sigmoid(z / (hs as f64).sqrt())
                    })
                    .collect();
                for j in 0..=t {
                    let mut wgt = beta[j];
                    for b in &beta[j + 1..=t] {
                        wgt *= 1.0 - b;
                    }
                    for d in 0..hs {
                        y[h * hs + d] += wgt * vals[j][h * hs + d];
                    }
                }
            }
            for o in 0..c.hidden {
                let p: f64 = (0..nh * hs).map(|a| y[a] * w.o[[e, a, o]] as f64).sum();
                out[[t, o]] += g * p;
                let m: f64 = (0..nh * hs)
                    .map(|a| largest[a] * (w.o[[e, a, o]] as f64).abs())
                    .sum();
                terms[[t, o]] += g * m;
            }
        }
    }
    (out, terms)
}

fn assert_close(a: &Array2<f32>, b: &Array2<f64>, tol: f64, what: &str) {
    assert_eq!(a.dim(), b.dim(), "{what}: shapes");
    let scale = b.iter().fold(1e-3f64, |m, &v| m.max(v.abs()));
    for ((idx, &x), &y) in a.indexed_iter().zip(b.iter()) {
        assert!(
            (x as f64 - y).abs() <= tol * (y.abs() + scale),
            "{what} at {idx:?}: {x} vs {y}"
        );
    }
}

/// `a` within `tol` of `b` relative to each output's terms (see
/// [`naive_moa`]).
fn assert_close_to_terms(a: &Array2<f32>, b: &Array2<f64>, terms: &Array2<f64>, tol: f64) {
    assert_eq!(a.dim(), b.dim(), "shapes");
    for (((idx, &x), &y), &m) in a.indexed_iter().zip(b.iter()).zip(terms.iter()) {
        assert!(
            (x as f64 - y).abs() <= tol * (y.abs() + m),
            "moa bf16 at {idx:?}: {x} vs {y} (terms {m})"
        );
    }
}

fn router_bf16(r: &Router<f32>) -> Router<bf16> {
    match r {
        Router::Mlp { w1, b1, w2 } => Router::Mlp {
            w1: w1.mapv(bf16::from_f32),
            b1: b1.mapv(bf16::from_f32),
            w2: w2.mapv(bf16::from_f32),
        },
        Router::Linear { w } => Router::Linear {
            w: w.mapv(bf16::from_f32),
        },
    }
}

/// The layer's weights rounded to bf16, and those values back in f32.
fn moa_bf16(w: &MoaWeights<f32>) -> (MoaWeights<bf16>, MoaWeights<f32>) {
    let b = |p: &Projection<f32>| Projection {
        weight: p.weight.mapv(bf16::from_f32),
        bias: p.bias.mapv(bf16::from_f32),
    };
    let low = MoaWeights {
        router: router_bf16(&w.router),
        q: w.q.mapv(bf16::from_f32),
        o: w.o.mapv(bf16::from_f32),
        kv: w.kv.as_ref().map(|(k, v)| (b(k), b(v))),
    };
    let wide = |p: &Projection<bf16>| Projection {
        weight: p.weight.mapv(f32::from),
        bias: p.bias.mapv(f32::from),
    };
    let back = MoaWeights {
        router: match &low.router {
            Router::Mlp { w1, b1, w2 } => Router::Mlp {
                w1: w1.mapv(f32::from),
                b1: b1.mapv(f32::from),
                w2: w2.mapv(f32::from),
            },
            Router::Linear { w } => Router::Linear {
                w: w.mapv(f32::from),
            },
        },
        q: low.q.mapv(f32::from),
        o: low.o.mapv(f32::from),
        kv: low.kv.as_ref().map(|(k, v)| (wide(k), wide(v))),
    };
    (low, back)
}

fn activation(i: usize) -> Activation {
    [
        Activation::GeluTanh,
        Activation::GeluErf,
        Activation::Relu,
        Activation::Silu,
    ][i % 4]
}

fn moa_case(
    rng: &mut StdRng,
    hidden: usize,
    n_head: usize,
    head_size: usize,
    experts: usize,
    k: usize,
    mlp_gate: bool,
) -> (MoaConfig, MoaWeights<f32>) {
    let config = MoaConfig {
        hidden,
        n_head,
        head_size,
        num_experts: experts,
        top_k: k,
        block_size: 16,
    };
    let a = config.att_hidden();
    let kv = (!config.identity_kv()).then(|| {
        let mut p = || Projection {
            weight: mat(rng, a, hidden, 0.7),
            bias: Array1::from_shape_simple_fn(a, || value(rng, 0.2)),
        };
        (p(), p())
    });
    let weights = MoaWeights {
        router: router(rng, mlp_gate, hidden, experts),
        q: cube(rng, (experts, hidden, a), 0.7),
        o: cube(rng, (experts, a, hidden), 0.5),
        kv,
    };
    (config, weights)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn moe_mlp_matches_the_naive_loop(
        tokens in 1usize..20,
        hidden in 1usize..20,
        ffn in 1usize..36,
        experts in 1usize..6,
        k_frac in 0.0f64..1.0,
        mlp_gate: bool,
        act in 0usize..4,
        seed: u64,
    ) {
        let k = 1 + ((experts as f64 * k_frac) as usize).min(experts - 1);
        let mut rng = StdRng::seed_from_u64(seed);
        let config = MoeMlpConfig { hidden, ffn, num_experts: experts, top_k: k, activation: activation(act), block_size: 16 };
        let weights = MoeMlpWeights {
            router: router(&mut rng, mlp_gate, hidden, experts),
            w: cube(&mut rng, (experts, hidden, ffn), 0.7),
            v: cube(&mut rng, (experts, ffn, hidden), 0.5),
        };
        let x = mat(&mut rng, tokens, hidden, 1.0);
        prop_assume!(x.rows().into_iter().all(|r| !near_tie(&weights.router, r, k)));
        let got = moe_mlp(&config, &weights, x.view()).unwrap();
        assert_close(&got, &naive_mlp(&config, &weights, &x), 1e-5, "moe_mlp");
    }

    #[test]
    fn moa_matches_the_naive_loop_and_the_cache(
        tokens in 1usize..14,
        hidden in 1usize..20,
        n_head in 1usize..4,
        head_size in 1usize..9,
        identity: bool,
        experts in 1usize..6,
        k_frac in 0.0f64..1.0,
        mlp_gate: bool,
        split_frac in 0.0f64..1.0,
        seed: u64,
    ) {
        let k = 1 + ((experts as f64 * k_frac) as usize).min(experts - 1);
        let (hidden, n_head, head_size) = if identity { (hidden, 1, hidden) } else { (hidden, n_head, head_size) };
        let mut rng = StdRng::seed_from_u64(seed);
        let (config, weights) = moa_case(&mut rng, hidden, n_head, head_size, experts, k, mlp_gate);
        let x = mat(&mut rng, tokens, hidden, 1.0);
        prop_assume!(x.rows().into_iter().all(|r| !near_tie(&weights.router, r, k)));
        let full = moa_forward(&config, &weights, x.view(), None).unwrap();
        assert_close(&full.output, &naive_moa(&config, &weights, &x).0, 1e-5, "moa");

        // Prefill `split` tokens, then decode the rest one at a time.
        let split = ((tokens as f64 * split_frac) as usize).clamp(1, tokens);
        let first = moa_forward(&config, &weights, x.slice(s![..split, ..]), None).unwrap();
        let (mut ks, mut vs) = (first.keys, first.values);
        let mut rows = vec![first.output];
        for t in split..tokens {
            let step = moa_forward(&config, &weights, x.slice(s![t..t + 1, ..]), Some((ks.view(), vs.view()))).unwrap();
            ks = ndarray::concatenate(ndarray::Axis(0), &[ks.view(), step.keys.view()]).unwrap();
            vs = ndarray::concatenate(ndarray::Axis(0), &[vs.view(), step.values.view()]).unwrap();
            rows.push(step.output);
        }
        let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
        let cached = ndarray::concatenate(ndarray::Axis(0), &views).unwrap();
        let diff = cached.iter().zip(full.output.iter()).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        prop_assert!(diff <= 1e-5, "cache vs full: {diff}");
    }

    #[test]
    fn moa_in_bf16_stays_close_to_the_naive_loop(
        tokens in 1usize..10,
        hidden in 1usize..16,
        n_head in 1usize..3,
        head_size in 1usize..8,
        experts in 2usize..5,
        seed: u64,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        // A linear router whose logits are far apart (inputs positive, so the
        // last expert always wins), so bf16 rounding cannot flip the choice;
        // routing itself is held to the naive loop in f32 above.
        let (config, mut weights) = moa_case(&mut rng, hidden, n_head, head_size, experts, 1, false);
        weights.router = Router::Linear {
            w: Array2::from_shape_fn((experts, hidden), |(e, _)| 4.0 * e as f32),
        };
        let x = Array2::from_shape_simple_fn((tokens, hidden), || rng.gen_range(0.1f32..1.0));
        let (low, back) = moa_bf16(&weights);
        let xb = x.mapv(bf16::from_f32);
        let got = moa_forward(&config, &low, xb.view(), None).unwrap().output.mapv(f32::from);
        let (want, terms) = naive_moa(&config, &back, &xb.mapv(f32::from));
        assert_close_to_terms(&got, &want, &terms, 1e-2);
    }
}

#[test]
fn bad_configs_are_typed_errors() {
    let mut rng = StdRng::seed_from_u64(7);
    let (config, weights) = moa_case(&mut rng, 8, 2, 4, 3, 2, true);
    let x = mat(&mut rng, 4, 8, 1.0);
    assert!(moa_forward(&config, &weights, x.view(), None).is_ok());
    let too_many = MoaConfig { top_k: 4, ..config };
    assert!(matches!(
        moa_forward(&too_many, &weights, x.view(), None),
        Err(Error::InvalidTopK { .. })
    ));
    let heads = MoaConfig {
        head_size: 3,
        ..config
    };
    assert!(matches!(
        moa_forward(&heads, &weights, x.view(), None),
        Err(Error::ShapeMismatch { .. })
    ));
    let no_kv = MoaWeights {
        kv: None,
        ..weights.clone()
    };
    assert!(matches!(
        moa_forward(&config, &no_kv, x.view(), None),
        Err(Error::InvalidConfig(_))
    ));
    let wide = mat(&mut rng, 4, 9, 1.0);
    assert!(matches!(
        moa_forward(&config, &weights, wide.view(), None),
        Err(Error::ShapeMismatch { .. })
    ));
    let bad_past = Array3::<f32>::zeros((3, 2, 5));
    assert!(matches!(
        moa_forward(
            &config,
            &weights,
            x.view(),
            Some((bad_past.view(), bad_past.view()))
        ),
        Err(Error::ShapeMismatch { .. })
    ));
    let mlp = MoeMlpConfig {
        hidden: 8,
        ffn: 4,
        num_experts: 2,
        top_k: 3,
        activation: Activation::Relu,
        block_size: 16,
    };
    let mw = MoeMlpWeights {
        router: router(&mut rng, false, 8, 2),
        w: cube(&mut rng, (2, 8, 4), 1.0),
        v: cube(&mut rng, (2, 4, 8), 1.0),
    };
    assert!(matches!(
        moe_mlp(&mlp, &mw, x.view()),
        Err(Error::InvalidTopK { .. })
    ));
    assert_eq!(
        Activation::from_hf_name("gelu_new"),
        Some(Activation::GeluTanh)
    );
    assert_eq!(Activation::from_hf_name("gelu"), Some(Activation::GeluErf));
    assert_eq!(Activation::from_hf_name("tanh"), None);
}
