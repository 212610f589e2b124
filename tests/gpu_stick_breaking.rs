//! GPU stick-breaking attention (`dropless::cuda::stick_breaking`) against the
//! CPU reference (`dropless::reference::stick_breaking`) on random inputs:
//! proptest-driven batches, head sizes, grouped kv heads and lengths (the
//! 16-query and 32-key tiles' non-multiples included), prefill (tq = kv_len)
//! and decode / chunked prefill onto a cache, in f32, f16 and bf16.
//!
//! Tolerance: |got - want| <= tol * max(|want|, 1), tol =
//! `DType::rel_tolerance()` (f32 1e-5, f16 5e-3, bf16 1e-2). The caches are
//! poisoned with NaN past `kv_len`, so reading those rows would show.

use std::sync::OnceLock;

use dropless::cuda::stick_breaking::stick_breaking_cached;
use dropless::cuda::{CudaBackend, DeviceElement, DeviceTensor};
use dropless::reference::stick_breaking::stick_breaking;
use dropless::Element;
use half::{bf16, f16};
use ndarray::{s, Array2, Array3};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rand::{Rng, SeedableRng};

fn backend() -> &'static CudaBackend {
    static BACKEND: OnceLock<CudaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| CudaBackend::try_new().expect("these tests need a CUDA device"))
}

/// Uniform values in `[-scale, scale)`, never exactly zero.
fn random<T: Element>(rows: usize, cols: usize, seed: u64, scale: f32) -> Array2<T> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((rows, cols), || {
        let m = rng.gen_range(0.01f32..=scale);
        T::from_f32(if rng.gen() { m } else { -m })
    })
}

struct Case {
    batch: usize,
    tq: usize,
    kv_len: usize,
    tmax: usize,
    q_heads: usize,
    kv_heads: usize,
    head_size: usize,
}

fn check<T: DeviceElement + Element>(c: &Case, seed: u64) {
    let d = c.head_size;
    let q = random::<T>(c.batch * c.tq, c.q_heads * d, seed, 2.0);
    let mut k = random::<T>(c.batch * c.tmax, c.kv_heads * d, seed + 1, 2.0);
    let mut v = random::<T>(c.batch * c.tmax, c.kv_heads * d, seed + 2, 3.0);
    for b in 0..c.batch {
        let past = s![b * c.tmax + c.kv_len..(b + 1) * c.tmax, ..];
        k.slice_mut(past).fill(T::from_f32(f32::NAN));
        v.slice_mut(past).fill(T::from_f32(f32::NAN));
    }
    let got = stick_breaking_cached(
        backend(),
        &DeviceTensor::from_array(backend(), q.view()).unwrap(),
        &DeviceTensor::from_array(backend(), k.view()).unwrap(),
        &DeviceTensor::from_array(backend(), v.view()).unwrap(),
        c.kv_len,
        c.batch,
        c.kv_heads,
        d,
    )
    .unwrap()
    .to_array2(backend())
    .unwrap();
    let tol = T::DTYPE.rel_tolerance();
    let to3 = |a: ndarray::ArrayView2<T>, heads: usize| -> Array3<T> {
        a.to_owned()
            .into_shape_with_order((a.nrows(), heads, d))
            .unwrap()
    };
    for b in 0..c.batch {
        let rows = s![b * c.tmax..b * c.tmax + c.kv_len, ..];
        let want = stick_breaking(
            to3(q.slice(s![b * c.tq..(b + 1) * c.tq, ..]), c.q_heads).view(),
            to3(k.slice(rows), c.kv_heads).view(),
            to3(v.slice(rows), c.kv_heads).view(),
        )
        .unwrap();
        let got = got.slice(s![b * c.tq..(b + 1) * c.tq, ..]);
        for ((i, x), &w) in got.indexed_iter().zip(want.iter()) {
            let (g, w) = (x.to_f32(), w.to_f32());
            assert!(
                (g - w).abs() <= tol * w.abs().max(1.0),
                "sequence {b} at {i:?}: got {g}, want {w} ({})",
                T::DTYPE
            );
        }
    }
}

fn cases<T: DeviceElement + Element>() {
    let mut runner = TestRunner::new(Config::with_cases(24));
    runner
        .run(
            &(
                (
                    1usize..3,
                    1usize..4,
                    prop_oneof![Just(1usize), Just(2), Just(4)],
                ),
                prop_oneof![1usize..20, (1usize..=16).prop_map(|k| 8 * k)],
                (1usize..80, 0usize..4, any::<prop::sample::Index>()),
                any::<u64>(),
            ),
            |((batch, kv_heads, group), head_size, (kv_len, extra, tq), seed)| {
                let c = Case {
                    batch,
                    tq: tq.index(kv_len) + 1,
                    kv_len,
                    tmax: kv_len + extra,
                    q_heads: kv_heads * group,
                    kv_heads,
                    head_size,
                };
                check::<T>(&c, seed);
                Ok(())
            },
        )
        .unwrap();
    // (batch, tq, kv_len, tmax, q_heads, kv_heads, head_size): prefill,
    // decode against a long cache, chunked prefill, MoLM's 2 slots x heads.
    let fixed = [
        (2, 100, 100, 100, 8, 4, 64),
        (1, 1, 200, 256, 4, 1, 128),
        (3, 2, 97, 120, 2, 1, 32),
        (1, 33, 130, 130, 4, 2, 64),
    ];
    for (i, &(batch, tq, kv_len, tmax, q_heads, kv_heads, head_size)) in fixed.iter().enumerate() {
        let c = Case {
            batch,
            tq,
            kv_len,
            tmax,
            q_heads,
            kv_heads,
            head_size,
        };
        check::<T>(&c, 1000 + i as u64);
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn f32_matches_reference() {
    cases::<f32>();
}

#[test]
#[ignore = "requires a CUDA device"]
fn f16_matches_reference() {
    cases::<f16>();
}

#[test]
#[ignore = "requires a CUDA device"]
fn bf16_matches_reference() {
    cases::<bf16>();
}
