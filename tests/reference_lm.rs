//! The language-model reference ops (`dropless::reference::lm`) against
//! direct f64 formulas on random inputs, and their errors.

use dropless::reference::lm::{add, attention, embedding, rms_norm, rope};
use dropless::Error;
use half::bf16;
use ndarray::{s, Array1, Array2};
use rand::{Rng, SeedableRng};

fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((rows, cols), || rng.gen_range(-1.0f32..1.0))
}

fn assert_close(what: &str, got: &Array2<f32>, want: &Array2<f64>, tol: f64) {
    assert_eq!(got.dim(), want.dim(), "{what}");
    for ((idx, &g), &w) in got.indexed_iter().zip(want.iter()) {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: at {idx:?} got {g}, want {w}"
        );
    }
}

#[test]
fn embedding_copies_rows_and_rejects_bad_ids() {
    let table = random(10, 6, 1);
    let out = embedding(table.view(), &[3, 0, 9, 3]).unwrap();
    for (i, id) in [3usize, 0, 9, 3].into_iter().enumerate() {
        assert_eq!(out.row(i), table.row(id));
    }
    assert!(
        matches!(embedding(table.view(), &[1, 10]), Err(Error::InvalidConfig(m)) if m.contains("10"))
    );
    assert!(matches!(
        embedding(table.view(), &[]),
        Err(Error::Empty { .. })
    ));
}

#[test]
fn rms_norm_matches_the_formula() {
    let x = random(7, 24, 2);
    let w = Array1::from_iter((0..24).map(|i| 0.5 + i as f32 / 24.0));
    let eps = 1e-5;
    let got = rms_norm(x.view(), w.view(), eps).unwrap();
    let want = Array2::from_shape_fn((7, 24), |(r, c)| {
        let ms = x.row(r).iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 24.0;
        x[[r, c]] as f64 / (ms + eps as f64).sqrt() * w[c] as f64
    });
    assert_close("rms_norm f32", &got, &want, 1e-5);
    let xb = x.mapv(bf16::from_f32);
    let got = rms_norm(xb.view(), w.mapv(bf16::from_f32).view(), eps).unwrap();
    assert_close("rms_norm bf16", &got.mapv(f32::from), &want, 2e-2);
    assert!(matches!(
        rms_norm(x.view(), w.slice(s![..20]), eps),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        rms_norm(x.view(), w.view(), -1.0),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn rope_rotates_half_split_pairs() {
    let (heads, d, theta) = (3, 8, 10000.0f32);
    let x = random(5, heads * d, 3);
    let positions = [0usize, 1, 2, 7, 31];
    let got = rope(x.view(), &positions, d, theta).unwrap();
    let want = Array2::from_shape_fn(x.dim(), |(t, c)| {
        let (base, j) = (c - c % d, c % d);
        let i = j % (d / 2);
        let f = positions[t] as f64 / (theta as f64).powf(2.0 * i as f64 / d as f64);
        let a = x[[t, base + i]] as f64;
        let b = x[[t, base + d / 2 + i]] as f64;
        if j < d / 2 {
            a * f.cos() - b * f.sin()
        } else {
            b * f.cos() + a * f.sin()
        }
    });
    assert_close("rope", &got, &want, 1e-5);
    assert_eq!(got.row(0), x.row(0), "position 0 is the identity");
    assert!(matches!(
        rope(x.view(), &positions, 7, theta),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        rope(x.view(), &positions[..4], d, theta),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        rope(x.view(), &positions, 16, theta),
        Err(Error::ShapeMismatch { .. })
    ));
}

/// Causal GQA attention in f64, by the definition.
#[allow(clippy::too_many_arguments)]
fn naive_attention(
    q: &Array2<f32>,
    k: &Array2<f32>,
    v: &Array2<f32>,
    batch: usize,
    hq: usize,
    hkv: usize,
    d: usize,
) -> Array2<f64> {
    let (tq, tk) = (q.nrows() / batch, k.nrows() / batch);
    let mut out = Array2::<f64>::zeros(q.dim());
    for b in 0..batch {
        for i in 0..tq {
            for h in 0..hq {
                let kh = h / (hq / hkv);
                let scores: Vec<f64> = (0..=tk - tq + i)
                    .map(|j| {
                        (0..d)
                            .map(|c| {
                                q[[b * tq + i, h * d + c]] as f64
                                    * k[[b * tk + j, kh * d + c]] as f64
                            })
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = exp.iter().sum();
                for c in 0..d {
                    out[[b * tq + i, h * d + c]] = exp
                        .iter()
                        .enumerate()
                        .map(|(j, e)| e * v[[b * tk + j, kh * d + c]] as f64)
                        .sum::<f64>()
                        / sum;
                }
            }
        }
    }
    out
}

#[test]
fn attention_is_causal_gqa_softmax() {
    let (batch, hq, hkv, d, tk) = (2, 4, 2, 8, 6);
    let k = random(batch * tk, hkv * d, 5);
    let v = random(batch * tk, hkv * d, 6);
    for tq in [tk, 2, 1] {
        let q = random(batch * tq, hq * d, 4 + tq as u64);
        let got = attention(q.view(), k.view(), v.view(), batch, hq, hkv, d).unwrap();
        assert_close(
            &format!("attention tq={tq}"),
            &got,
            &naive_attention(&q, &k, &v, batch, hq, hkv, d),
            1e-5,
        );
    }
    // A decode step (tq = 1) is the last row of the full causal pass.
    let q = random(batch * tk, hq * d, 9);
    let full = attention(q.view(), k.view(), v.view(), batch, hq, hkv, d).unwrap();
    let last_q = ndarray::concatenate(
        ndarray::Axis(0),
        &[
            q.slice(s![tk - 1..tk, ..]),
            q.slice(s![2 * tk - 1..2 * tk, ..]),
        ],
    )
    .unwrap();
    let step = attention(last_q.view(), k.view(), v.view(), batch, hq, hkv, d).unwrap();
    assert_eq!(step.row(0), full.row(tk - 1));
    assert_eq!(step.row(1), full.row(2 * tk - 1));
    // The first position sees only itself: its output is its value row.
    for h in 0..hq {
        let kh = h / 2;
        for c in 0..d {
            assert!((full[[0, h * d + c]] - v[[0, kh * d + c]]).abs() < 1e-6);
        }
    }
}

#[test]
fn attention_rejects_bad_shapes() {
    let q = random(4, 32, 1);
    let k = random(4, 16, 2);
    let v = random(4, 16, 3);
    assert!(matches!(
        attention(q.view(), k.view(), v.view(), 1, 4, 3, 8),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        attention(q.view(), k.view(), v.view(), 0, 4, 2, 8),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        attention(q.view(), k.view(), v.view(), 3, 4, 2, 8),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        attention(q.view(), k.view(), k.slice(s![..2, ..]), 1, 4, 2, 8),
        Err(Error::ShapeMismatch { .. })
    ));
    let long_q = random(6, 32, 4);
    assert!(matches!(
        attention(long_q.view(), k.view(), v.view(), 1, 4, 2, 8),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn add_is_elementwise() {
    let a = random(3, 5, 1);
    let b = random(3, 5, 2);
    assert_eq!(add(a.view(), b.view()).unwrap(), &a + &b);
    assert!(matches!(
        add(a.view(), b.slice(s![..2, ..])),
        Err(Error::ShapeMismatch { .. })
    ));
}
