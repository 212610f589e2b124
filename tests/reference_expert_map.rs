//! The MoE map / reduce reference against a naive per-token loop, in f32 and
//! bf16, on random shapes (widths on and off the block size), plus its
//! shape errors.

use dropless::reference::expert_map::{map, reduce, ExpertPlan};
use dropless::Error;
use half::bf16;
use ndarray::{Array2, Array3};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One value uniform in ±[0.05, 1] (never zero).
fn value(rng: &mut StdRng) -> f32 {
    let m = rng.gen_range(0.05f32..=1.0);
    if rng.gen::<bool>() {
        m
    } else {
        -m
    }
}

/// Random expert ids `[tokens, k]`, distinct within a token.
fn ids(rng: &mut StdRng, tokens: usize, k: usize, experts: usize) -> Array2<i32> {
    let mut out = Array2::zeros((tokens, k));
    for mut row in out.rows_mut() {
        for (slot, e) in row
            .iter_mut()
            .zip(rand::seq::index::sample(rng, experts, k).iter())
        {
            *slot = e as i32;
        }
    }
    out
}

/// The naive map: one dot product per (token, slot, column), in f32.
fn naive_map(x: &Array2<f32>, w: &Array3<f32>, ids: &Array2<i32>) -> Array2<f32> {
    let (tokens, k) = ids.dim();
    let width = w.dim().2;
    let mut out = Array2::zeros((tokens * k, width));
    for t in 0..tokens {
        for s in 0..k {
            let e = ids[[t, s]] as usize;
            for o in 0..width {
                let mut acc = 0.0f32;
                for i in 0..x.ncols() {
                    acc += x[[t, i]] * w[[e, i, o]];
                }
                out[[t * k + s, o]] = acc;
            }
        }
    }
    out
}

/// The naive reduce: per token, the gate-weighted sum of each slot's product.
fn naive_reduce(
    h: &Array2<f32>,
    v: &Array3<f32>,
    gates: &Array2<f32>,
    ids: &Array2<i32>,
) -> Array2<f32> {
    let (tokens, k) = ids.dim();
    let (_, width, out_w) = v.dim();
    let mut out = Array2::zeros((tokens, out_w));
    for t in 0..tokens {
        for s in 0..k {
            let e = ids[[t, s]] as usize;
            for o in 0..out_w {
                let mut acc = 0.0f32;
                for i in 0..width {
                    acc += h[[t * k + s, i]] * v[[e, i, o]];
                }
                out[[t, o]] += gates[[t, s]] * acc;
            }
        }
    }
    out
}

/// `|a - b| <= tol * (|b| + max|b|)` elementwise.
fn assert_close(a: &Array2<f32>, b: &Array2<f32>, tol: f32, what: &str) {
    assert_eq!(a.dim(), b.dim(), "{what}: shapes");
    let scale = b.iter().fold(1e-3f32, |m, &v| m.max(v.abs()));
    for ((idx, &x), &y) in a.indexed_iter().zip(b.iter()) {
        assert!(
            (x - y).abs() <= tol * (y.abs() + scale),
            "{what} at {idx:?}: {x} vs {y}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn map_and_reduce_match_the_naive_loop(
        tokens in 1usize..40,
        experts in 1usize..=6,
        k_frac in 0.0f64..1.0,
        input in 1usize..24,
        width in 1usize..40,
        out_w in 1usize..24,
        block in prop::sample::select(vec![16usize, 32]),
        seed: u64,
    ) {
        let k = 1 + ((experts as f64 * k_frac) as usize).min(experts - 1);
        let mut rng = StdRng::seed_from_u64(seed);
        let ids = ids(&mut rng, tokens, k, experts);
        let x = Array2::from_shape_simple_fn((tokens, input), || value(&mut rng));
        let w = Array3::from_shape_simple_fn((experts, input, width), || value(&mut rng));
        let v = Array3::from_shape_simple_fn((experts, width, out_w), || value(&mut rng));
        let h = Array2::from_shape_simple_fn((tokens * k, width), || value(&mut rng));
        let gates = Array2::from_shape_simple_fn((tokens, k), || rng.gen_range(0.05f32..1.0));
        let plan = ExpertPlan::new(ids.view(), experts, width, block).unwrap();

        let mapped = map(&plan, x.view(), w.view()).unwrap();
        assert_close(&mapped, &naive_map(&x, &w, &ids), 1e-5, "map f32");
        let reduced = reduce(&plan, h.view(), v.view(), gates.view()).unwrap();
        assert_close(&reduced, &naive_reduce(&h, &v, &gates, &ids), 1e-5, "reduce f32");

        let xb = x.mapv(bf16::from_f32);
        let wb = w.mapv(bf16::from_f32);
        let mapped_b = map(&plan, xb.view(), wb.view()).unwrap().mapv(f32::from);
        let want = naive_map(&xb.mapv(f32::from), &wb.mapv(f32::from), &ids);
        assert_close(&mapped_b, &want, 1e-2, "map bf16");
        let hb = h.mapv(bf16::from_f32);
        let vb = v.mapv(bf16::from_f32);
        let reduced_b = reduce(&plan, hb.view(), vb.view(), gates.view()).unwrap().mapv(f32::from);
        let want = naive_reduce(&hb.mapv(f32::from), &vb.mapv(f32::from), &gates, &ids);
        assert_close(&reduced_b, &want, 2e-2, "reduce bf16");
    }
}

#[test]
fn bad_shapes_are_typed_errors() {
    let ids = ndarray::array![[0, 1], [1, 2], [2, 0]];
    let plan = ExpertPlan::new(ids.view(), 3, 8, 16).unwrap();
    assert_eq!((plan.tokens(), plan.top_k(), plan.width()), (3, 2, 8));
    let x = Array2::<f32>::ones((3, 4));
    let shape = |r: Result<Array2<f32>, Error>| matches!(r, Err(Error::ShapeMismatch { .. }));
    assert!(shape(map(&plan, x.view(), Array3::ones((3, 4, 7)).view())));
    assert!(shape(map(&plan, x.view(), Array3::ones((2, 4, 8)).view())));
    assert!(shape(map(&plan, x.view(), Array3::ones((3, 5, 8)).view())));
    assert!(shape(map(
        &plan,
        Array2::ones((2, 4)).view(),
        Array3::ones((3, 4, 8)).view()
    )));
    let gates = Array2::<f32>::ones((3, 2));
    let v = Array3::<f32>::ones((3, 8, 4));
    assert!(shape(reduce(
        &plan,
        Array2::ones((6, 7)).view(),
        v.view(),
        gates.view()
    )));
    assert!(shape(reduce(
        &plan,
        Array2::ones((5, 8)).view(),
        v.view(),
        gates.view()
    )));
    assert!(shape(reduce(
        &plan,
        Array2::ones((6, 8)).view(),
        Array3::ones((3, 7, 4)).view(),
        gates.view()
    )));
    assert!(shape(reduce(
        &plan,
        Array2::ones((6, 8)).view(),
        v.view(),
        Array2::ones((3, 1)).view()
    )));
    assert!(matches!(
        ExpertPlan::new(ids.view(), 2, 8, 16),
        Err(Error::ExpertOutOfRange { .. })
    ));
    assert!(matches!(
        ExpertPlan::new(ndarray::array![[1, 1]].view(), 3, 8, 16),
        Err(Error::DuplicateExpert { .. })
    ));
    assert!(matches!(
        ExpertPlan::new(ids.view(), 3, 8, 24),
        Err(Error::UnsupportedBlockSize { .. })
    ));
    assert!(matches!(
        ExpertPlan::new(ids.view(), 3, 0, 16),
        Err(Error::Empty { .. })
    ));
}
