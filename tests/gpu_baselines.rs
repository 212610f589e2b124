//! The GPU baselines against the CPU references, on random shapes drawn by
//! proptest: the dense FFN against a CPU dense computation, the capacity MoE
//! against `reference::capacity::forward_routed`, the expert loop against
//! `reference::moe::forward`, and the router logits against an f32 host
//! product. The routing is computed once on the host and uploaded, so every
//! comparison isolates the baseline from the router.
//!
//! Tolerances: `DType::rel_tolerance` of the element type (f32 1e-5, f16
//! 5e-3, bf16 1e-2) relative to each element's magnitude plus the largest
//! magnitude of the expected tensor (intermediates are rounded to `T` on both
//! sides, but cuBLAS sums in another order, so a rounding can flip by one
//! ulp). Counts are exact. The baselines allocate their outputs themselves,
//! so instead of poisoning them the tests use data whose expected outputs
//! are non-zero wherever anything was computed.

use std::sync::OnceLock;

use dropless::config::{MlpKind, MoeConfig, MoeWeights};
use dropless::cuda::baselines::{
    capacity_moe, dense_ffn, expert_loop, route_tokens, router_logits,
};
use dropless::cuda::gemm::GemmElement;
use dropless::cuda::moe::DeviceMoeWeights;
use dropless::cuda::routing::DeviceRouting;
use dropless::cuda::{CudaBackend, DeviceTensor};
use dropless::reference::activation::{gelu, silu};
use dropless::reference::capacity::forward_routed;
use dropless::reference::moe;
use dropless::reference::routing::Routing;
use dropless::{Element, Error};
use half::{bf16, f16};
use ndarray::{Array2, ArrayView2};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn backend() -> &'static CudaBackend {
    static BACKEND: OnceLock<CudaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| CudaBackend::try_new().expect("these tests need a CUDA device"))
}

/// A `[rows, cols]` matrix with values in ±[lo, hi] (never zero).
fn random_matrix<T: Element>(seed: u64, rows: usize, cols: usize, lo: f32, hi: f32) -> Array2<T> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((rows, cols), || {
        let m = rng.gen_range(lo..=hi);
        T::from_f32(if rng.gen() { m } else { -m })
    })
}

fn upload<T: GemmElement>(a: &Array2<T>) -> DeviceTensor<T> {
    DeviceTensor::from_array(backend(), a.view()).unwrap()
}

fn upload_weights<T: GemmElement>(w: &MoeWeights<T>) -> DeviceMoeWeights<T> {
    DeviceMoeWeights {
        router: upload(&w.router),
        w1: upload(&w.w1),
        w3: w.w3.as_ref().map(upload),
        w2: upload(&w.w2),
    }
}

fn upload_routing(r: &Routing) -> DeviceRouting {
    DeviceRouting {
        probs: upload(&r.probs),
        expert_ids: DeviceTensor::from_array(backend(), r.expert_ids.view()).unwrap(),
        weights: upload(&r.weights),
        status: DeviceTensor::zeros(backend(), &[2]).unwrap(),
    }
}

fn download<T: GemmElement>(t: &DeviceTensor<T>) -> Array2<f32> {
    t.to_array2(backend()).unwrap().mapv(T::to_f32)
}

/// Asserts `got ≈ want` within `tol` relative to each element's magnitude
/// plus the largest magnitude of `want`.
fn assert_close(got: ArrayView2<f32>, want: ArrayView2<f32>, tol: f32, what: &str) {
    assert_eq!(got.dim(), want.dim(), "{what}: shapes");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: the expected tensor is all zero");
    for ((idx, &g), &w) in got.indexed_iter().zip(want.iter()) {
        assert!(
            (g - w).abs() <= tol * (w.abs() + scale),
            "{what}{idx:?}: got {g}, want {w}"
        );
    }
}

fn mlp(glu: bool) -> MlpKind {
    if glu {
        MlpKind::Glu
    } else {
        MlpKind::Plain
    }
}

/// The dense FFN on the host, rounding to `T` where the device stores.
fn dense_ffn_ref<T: Element>(
    x: &Array2<T>,
    w1: &Array2<T>,
    w3: Option<&Array2<T>>,
    w2: &Array2<T>,
) -> Array2<f32> {
    let f = |m: &Array2<T>| m.mapv(T::to_f32);
    let round = |v: f32| T::from_f32(v).to_f32();
    let (x, w1, w2) = (f(x), f(w1), f(w2));
    let h1 = x.dot(&w1.t()).mapv(round);
    let act = match w3 {
        None => h1.mapv(|v| round(gelu(v))),
        Some(w3) => {
            let h3 = x.dot(&f(w3).t()).mapv(round);
            ndarray::Zip::from(&h1)
                .and(&h3)
                .map_collect(|&g, &u| round(silu(g) * u))
        }
    };
    act.dot(&w2).mapv(round)
}

fn check_dense<T: GemmElement>(tokens: usize, hidden: usize, ffn: usize, glu: bool, seed: u64) {
    let scale = 1.0 / (hidden as f32).sqrt();
    let x = random_matrix::<T>(seed, tokens, hidden, 0.05, 1.0);
    let w1 = random_matrix::<T>(seed + 1, ffn, hidden, 0.25 * scale, scale);
    let w3 = glu.then(|| random_matrix::<T>(seed + 2, ffn, hidden, 0.25 * scale, scale));
    let w2 = random_matrix::<T>(seed + 3, ffn, hidden, 0.25 * scale, scale);
    let d3 = w3.as_ref().map(upload);
    let got = dense_ffn(
        backend(),
        &upload(&x),
        &upload(&w1),
        d3.as_ref(),
        &upload(&w2),
        mlp(glu),
    )
    .unwrap();
    let want = dense_ffn_ref(&x, &w1, w3.as_ref(), &w2);
    assert_close(
        download(&got).view(),
        want.view(),
        T::DTYPE.rel_tolerance(),
        &format!("dense_ffn {} [{tokens}, {hidden}] x {ffn}", T::DTYPE),
    );
}

/// A config, weights, input and host routing for one case.
struct Case<T> {
    config: MoeConfig,
    weights: MoeWeights<T>,
    x: Array2<T>,
    routing: Routing,
}

fn case<T: Element>(
    experts: usize,
    top_k: usize,
    tokens: usize,
    hidden: usize,
    glu: bool,
    seed: u64,
) -> Case<T> {
    let config = MoeConfig {
        hidden,
        ffn: 32,
        num_experts: experts,
        top_k,
        mlp: mlp(glu),
        renormalize: seed.is_multiple_of(2),
        block_size: 16,
    };
    let weights = MoeWeights::<T>::random(&config, seed).unwrap();
    let x = random_matrix::<T>(seed ^ 0xabc, tokens, hidden, 0.05, 1.0);
    let routing = moe::forward(&config, &weights, x.view()).unwrap().routing;
    Case {
        config,
        weights,
        x,
        routing,
    }
}

fn check_capacity<T: GemmElement>(c: &Case<T>, capacity_factor: f32) {
    let want = forward_routed(
        &c.config,
        &c.weights,
        c.x.view(),
        &c.routing,
        capacity_factor,
    )
    .unwrap();
    let got = capacity_moe(
        backend(),
        &c.config,
        &upload_weights(&c.weights),
        &upload(&c.x),
        &upload_routing(&c.routing),
        capacity_factor,
    )
    .unwrap();
    let what = format!(
        "capacity_moe {} cf {capacity_factor} {:?} tokens {}",
        T::DTYPE,
        c.config,
        c.x.nrows()
    );
    assert_eq!(got.capacity, want.capacity, "{what}: capacity");
    let counts = got.tokens_per_expert.to_host(backend()).unwrap();
    assert_eq!(counts, want.tokens_per_expert.to_vec(), "{what}: counts");
    let dropped = got.dropped_fraction.to_host(backend()).unwrap();
    assert!(
        (dropped[0] - want.dropped_fraction).abs() <= 1e-6,
        "{what}: dropped {} vs {}",
        dropped[0],
        want.dropped_fraction
    );
    let want_out = want.output.mapv(T::to_f32);
    if want_out.iter().any(|&v| v != 0.0) {
        assert_close(
            download(&got.output).view(),
            want_out.view(),
            T::DTYPE.rel_tolerance(),
            &what,
        );
    } else {
        assert!(download(&got.output).iter().all(|&v| v == 0.0), "{what}");
    }
}

fn check_expert_loop<T: GemmElement>(c: &Case<T>) {
    let want = moe::forward(&c.config, &c.weights, c.x.view()).unwrap();
    let got = expert_loop(
        backend(),
        &c.config,
        &upload_weights(&c.weights),
        &upload(&c.x),
        &upload_routing(&c.routing),
    )
    .unwrap();
    assert_close(
        download(&got).view(),
        want.output.mapv(T::to_f32).view(),
        T::DTYPE.rel_tolerance(),
        &format!("expert_loop {} {:?}", T::DTYPE, c.config),
    );
}

/// (experts, top_k, tokens, hidden, glu, seed).
fn moe_shapes() -> impl Strategy<Value = (usize, usize, usize, usize, bool, u64)> {
    (1usize..=8, 1usize..=300, 1usize..=12).prop_flat_map(|(experts, tokens, h8)| {
        (
            Just(experts),
            1usize..=experts,
            Just(tokens),
            prop_oneof![Just(h8 * 8), Just(h8 * 8 + 3)],
            any::<bool>(),
            any::<u64>(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    #[ignore = "requires a CUDA device"]
    fn dense_ffn_matches_cpu(tokens in 1usize..=200, hidden in 1usize..=96,
                             ffn in 1usize..=160, glu in any::<bool>(), seed in any::<u64>()) {
        check_dense::<bf16>(tokens, hidden, ffn, glu, seed);
        check_dense::<f16>(tokens, hidden, ffn, glu, seed);
        check_dense::<f32>(tokens, hidden, ffn, glu, seed);
    }

    #[test]
    #[ignore = "requires a CUDA device"]
    fn capacity_moe_matches_cpu((experts, top_k, tokens, hidden, glu, seed) in moe_shapes(),
                                small_cf in 0.1f32..1.3) {
        let enough = experts as f32 / top_k as f32;
        let c = case::<bf16>(experts, top_k, tokens, hidden, glu, seed);
        check_capacity(&c, small_cf);
        check_capacity(&c, enough);
        let c = case::<f16>(experts, top_k, tokens, hidden, glu, seed);
        check_capacity(&c, small_cf);
        let c = case::<f32>(experts, top_k, tokens, hidden, glu, seed);
        check_capacity(&c, small_cf);
        check_capacity(&c, enough);
    }

    #[test]
    #[ignore = "requires a CUDA device"]
    fn expert_loop_matches_cpu((experts, top_k, tokens, hidden, glu, seed) in moe_shapes()) {
        check_expert_loop(&case::<bf16>(experts, top_k, tokens, hidden, glu, seed));
        check_expert_loop(&case::<f16>(experts, top_k, tokens, hidden, glu, seed));
        check_expert_loop(&case::<f32>(experts, top_k, tokens, hidden, glu, seed));
    }
}

/// With enough capacity the capacity MoE and the expert loop agree on the
/// device, including through the device router.
#[test]
#[ignore = "requires a CUDA device"]
fn capacity_moe_with_enough_capacity_matches_expert_loop() {
    let c = case::<bf16>(8, 2, 333, 64, true, 7);
    let w = upload_weights(&c.weights);
    let x = upload(&c.x);
    let routing = route_tokens(backend(), &c.config, &w, &x).unwrap();
    routing.check_finite(backend()).unwrap();
    let looped = expert_loop(backend(), &c.config, &w, &x, &routing).unwrap();
    let cap = capacity_moe(backend(), &c.config, &w, &x, &routing, 4.0).unwrap();
    assert_eq!(cap.dropped_fraction.to_host(backend()).unwrap(), vec![0.0]);
    assert_close(
        download(&cap.output).view(),
        download(&looped).view(),
        1e-2,
        "capacity vs loop",
    );
}

/// The f32 router logits match the host's f32 product of the same values.
#[test]
#[ignore = "requires a CUDA device"]
fn router_logits_match_host() {
    let c = case::<bf16>(6, 2, 100, 72, false, 11);
    let got = router_logits(backend(), &upload(&c.x), &upload(&c.weights.router)).unwrap();
    let (x, r) = (c.x.mapv(bf16::to_f32), c.weights.router.mapv(bf16::to_f32));
    let want = x.dot(&r.t());
    let bound = x.mapv(f32::abs).dot(&r.mapv(f32::abs).t());
    let got = got.to_array2(backend()).unwrap();
    for ((idx, &g), (&w, &b)) in got.indexed_iter().zip(want.iter().zip(bound.iter())) {
        assert!(
            (g - w).abs() <= 1e-5 * b,
            "logits{idx:?}: got {g}, want {w}"
        );
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn bad_inputs_are_rejected() {
    let c = case::<bf16>(4, 2, 16, 32, false, 3);
    let (w, x, r) = (
        upload_weights(&c.weights),
        upload(&c.x),
        upload_routing(&c.routing),
    );
    for cf in [0.0, -0.5, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            capacity_moe(backend(), &c.config, &w, &x, &r, cf),
            Err(Error::InvalidConfig(_))
        ));
    }
    let glu = MoeConfig {
        mlp: MlpKind::Glu,
        ..c.config
    };
    assert!(matches!(
        expert_loop(backend(), &glu, &w, &x, &r),
        Err(Error::InvalidConfig(_))
    ));
    let narrow = upload(&random_matrix::<bf16>(1, 16, 31, 0.1, 1.0));
    assert!(matches!(
        capacity_moe(backend(), &c.config, &w, &narrow, &r, 1.0),
        Err(Error::ShapeMismatch { .. })
    ));
    let short = upload(&random_matrix::<bf16>(1, 15, 32, 0.1, 1.0));
    assert!(matches!(
        expert_loop(backend(), &c.config, &w, &short, &r),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        dense_ffn(backend(), &x, &w.w1, Some(&w.w1), &w.w2, MlpKind::Plain),
        Err(Error::InvalidConfig(_))
    ));
}
