//! The stick-breaking attention reference
//! (`dropless::reference::stick_breaking`) against a naive probability-space
//! formulation in f64 (β and the products of (1 − β) as plain loops), and its
//! errors.

use dropless::reference::stick_breaking::stick_breaking;
use dropless::Error;
use half::{bf16, f16};
use ndarray::{Array3, ArrayView3};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

fn random(shape: (usize, usize, usize), scale: f32, seed: u64) -> Array3<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Array3::from_shape_simple_fn(shape, || rng.gen_range(-scale..scale))
}

/// w_ij = β_ij · Π_{j < l <= p} (1 − β_il), computed in probability space.
fn naive(q: ArrayView3<f32>, k: ArrayView3<f32>, v: ArrayView3<f32>) -> Array3<f64> {
    let (q_len, q_heads, d) = q.dim();
    let (kv_len, kv_heads, _) = k.dim();
    let mut out = Array3::<f64>::zeros((q_len, q_heads, d));
    for i in 0..q_len {
        let p = kv_len - q_len + i;
        for h in 0..q_heads {
            let g = h % kv_heads;
            let beta: Vec<f64> = (0..=p)
                .map(|j| {
                    let mut z = 0.0f64;
                    for c in 0..d {
                        z += q[[i, h, c]] as f64 * k[[j, g, c]] as f64;
                    }
                    1.0 / (1.0 + (-z / (d as f64).sqrt()).exp())
                })
                .collect();
            for j in 0..=p {
                let mut w = beta[j];
                for b in &beta[j + 1..=p] {
                    w *= 1.0 - b;
                }
                for c in 0..d {
                    out[[i, h, c]] += w * v[[j, g, c]] as f64;
                }
            }
        }
    }
    out
}

fn assert_close(what: &str, got: &Array3<f32>, want: &Array3<f64>, tol: f64) {
    assert_eq!(got.dim(), want.dim(), "{what}");
    for ((idx, &g), &w) in got.indexed_iter().zip(want.iter()) {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: at {idx:?} got {g}, want {w}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn matches_the_probability_space_loops(
        kv_len in 1usize..40,
        q_back in 0usize..40,
        kv_heads in 1usize..4,
        group in 1usize..4,
        head_size in 1usize..20,
        scale in 0.5f32..4.0,
        seed in any::<u64>(),
    ) {
        let q_len = kv_len - q_back.min(kv_len - 1);
        let q_heads = kv_heads * group;
        let q = random((q_len, q_heads, head_size), scale, seed);
        let k = random((kv_len, kv_heads, head_size), scale, seed ^ 1);
        let v = random((kv_len, kv_heads, head_size), 1.0, seed ^ 2);
        let want = naive(q.view(), k.view(), v.view());
        let got = stick_breaking(q.view(), k.view(), v.view()).unwrap();
        assert_close("f32", &got, &want, 1e-5);
    }
}

#[test]
fn decode_rows_equal_the_full_forward() {
    let (len, heads, d) = (17, 4, 8);
    let q = random((len, heads, d), 2.0, 7);
    let k = random((len, 2, d), 2.0, 8);
    let v = random((len, 2, d), 1.0, 9);
    let full = stick_breaking(q.view(), k.view(), v.view()).unwrap();
    for t in 1..=len {
        let step = stick_breaking(
            q.slice(ndarray::s![t - 1..t, .., ..]),
            k.slice(ndarray::s![..t, .., ..]),
            v.slice(ndarray::s![..t, .., ..]),
        )
        .unwrap();
        assert_eq!(
            step.slice(ndarray::s![0, .., ..]),
            full.slice(ndarray::s![t - 1, .., ..])
        );
    }
}

#[test]
fn half_precision_rounds_once() {
    let q = random((9, 4, 16), 2.0, 11);
    let k = random((12, 2, 16), 2.0, 12);
    let v = random((12, 2, 16), 1.0, 13);
    let (qb, kb, vb) = (
        q.mapv(bf16::from_f32),
        k.mapv(bf16::from_f32),
        v.mapv(bf16::from_f32),
    );
    let want = naive(
        qb.mapv(f32::from).view(),
        kb.mapv(f32::from).view(),
        vb.mapv(f32::from).view(),
    );
    let got = stick_breaking(qb.view(), kb.view(), vb.view()).unwrap();
    assert_close("bf16", &got.mapv(f32::from), &want, 1e-2);
    let (qh, kh, vh) = (
        q.mapv(f16::from_f32),
        k.mapv(f16::from_f32),
        v.mapv(f16::from_f32),
    );
    let want = naive(
        qh.mapv(f32::from).view(),
        kh.mapv(f32::from).view(),
        vh.mapv(f32::from).view(),
    );
    let got = stick_breaking(qh.view(), kh.view(), vh.view()).unwrap();
    assert_close("f16", &got.mapv(f32::from), &want, 2e-3);
}

#[test]
fn large_logits_stay_finite() {
    let q = random((6, 2, 4), 60.0, 21);
    let k = random((6, 2, 4), 60.0, 22);
    let v = random((6, 2, 4), 1.0, 23);
    let got = stick_breaking(q.view(), k.view(), v.view()).unwrap();
    assert!(got.iter().all(|x| x.is_finite()));
    assert_close(
        "large logits",
        &got,
        &naive(q.view(), k.view(), v.view()),
        1e-5,
    );
}

#[test]
fn bad_shapes_are_typed_errors() {
    let q = random((3, 4, 8), 1.0, 1);
    let k = random((5, 2, 8), 1.0, 2);
    let ok = |q: &Array3<f32>, k: &Array3<f32>, v: &Array3<f32>| {
        stick_breaking(q.view(), k.view(), v.view())
    };
    assert!(ok(&q, &k, &k).is_ok());
    assert!(matches!(
        ok(&q, &k, &random((5, 2, 7), 1.0, 3)),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        ok(&q, &random((5, 3, 8), 1.0, 3), &random((5, 3, 8), 1.0, 3)),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        ok(&random((6, 4, 8), 1.0, 3), &k, &k),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        ok(&random((3, 4, 4), 1.0, 3), &k, &k),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        ok(&random((0, 4, 8), 1.0, 3), &k, &k),
        Err(Error::Empty { .. })
    ));
}
