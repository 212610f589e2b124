//! GPU language-model ops (`dropless::cuda::lm`) against the CPU reference
//! (`dropless::reference::lm`) and the generate example's formulas, on random
//! inputs: proptest-driven small shapes (both the 16-byte-pack and the scalar
//! kernel paths) plus realistic ones (head_dim 64/128/256, GQA ratios 1/4/8,
//! Tq = 1 decode with kv_len up to 300, prefill with Tq = kv_len).
//!
//! Tolerance: |got - want| <= tol * max(|want|, 1) with tol =
//! `DType::rel_tolerance()` (f32 1e-5, f16 5e-3, bf16 1e-2); copies, clamp and
//! additions are compared exactly. No op has an `_into` form, so every output
//! element is checked to be finite (where the reference is) and correct; the
//! KV caches are poisoned with NaN past `kv_len`, so reading them would show.

use std::sync::OnceLock;

use dropless::cuda::lm::{
    add, add_bias, argmax_rows, attention_cached, clamp, embedding, layer_norm, rms_norm, rope,
    sigmoid_scale, silu_mul, take_rows, write_kv,
};
use dropless::cuda::{CudaBackend, DeviceElement, DeviceTensor};
use dropless::reference::lm as reference;
use dropless::{Element, Error};
use half::{bf16, f16};
use ndarray::{s, Array2};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn backend() -> &'static CudaBackend {
    static BACKEND: OnceLock<CudaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| CudaBackend::try_new().expect("these tests need a CUDA device"))
}

/// A deterministic stream of uniform values in `[-scale, scale)`.
fn random_f32(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            scale * (2.0 * u - 1.0)
        })
        .collect()
}

fn random<T: Element>(rows: usize, cols: usize, seed: u64, scale: f32) -> Array2<T> {
    let v = random_f32(rows * cols, seed, scale)
        .into_iter()
        .map(T::from_f32)
        .collect();
    Array2::from_shape_vec((rows, cols), v).unwrap()
}

fn upload<T: DeviceElement + Element>(a: &Array2<T>) -> DeviceTensor<T> {
    DeviceTensor::from_array(backend(), a.view()).unwrap()
}

fn upload_i32(v: &[i32]) -> DeviceTensor<i32> {
    DeviceTensor::from_host(backend(), &[v.len()], v).unwrap()
}

fn download<T: DeviceElement + Element>(t: &DeviceTensor<T>) -> Array2<T> {
    t.to_array2(backend()).unwrap()
}

/// Every element within the dtype's tolerance of the reference, and finite
/// wherever the reference is.
fn assert_close<T: Element>(got: &Array2<T>, want: &Array2<T>, what: &str) {
    assert_eq!(got.dim(), want.dim(), "{what}: shape");
    let tol = T::DTYPE.rel_tolerance();
    for ((idx, &g), &w) in got.indexed_iter().zip(want.iter()) {
        let (g, w) = (g.to_f32(), w.to_f32());
        assert!(
            g.is_finite() || !w.is_finite(),
            "{what}{idx:?}: got {g}, want {w} ({})",
            T::DTYPE
        );
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}{idx:?}: got {g}, want {w} ({})",
            T::DTYPE
        );
    }
}

/// Bitwise equality (NaN equal to NaN), for ops that round exactly like the
/// reference.
fn assert_exact<T: Element>(got: &Array2<T>, want: &Array2<T>, what: &str) {
    assert_eq!(got.dim(), want.dim(), "{what}: shape");
    for ((idx, &g), &w) in got.indexed_iter().zip(want.iter()) {
        let (g, w) = (g.to_f32(), w.to_f32());
        assert!(
            g == w || (g.is_nan() && w.is_nan()),
            "{what}{idx:?}: got {g}, want {w} ({})",
            T::DTYPE
        );
    }
}

// ------------------------------------------------------------------ gathers

fn check_gathers<T: DeviceElement + Element>(vocab: usize, hidden: usize, n: usize, seed: u64) {
    let table = random::<T>(vocab, hidden, seed, 3.0);
    let mut rng = seed;
    let mut ids: Vec<i32> = (0..n)
        .map(|_| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((rng >> 33) % vocab as u64) as i32
        })
        .collect();
    let in_range: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    let want = reference::embedding(table.view(), &in_range).unwrap();
    let got = download(&embedding(backend(), &upload(&table), &upload_i32(&ids)).unwrap());
    assert_exact(&got, &want, "embedding");
    let got = download(&take_rows(backend(), &upload(&table), &upload_i32(&ids)).unwrap());
    assert_exact(&got, &want, "take_rows");

    // Out-of-range ids read zero rows.
    ids[0] = -1;
    ids[n - 1] = vocab as i32;
    let mut want = want;
    want.row_mut(0).fill(T::from_f32(0.0));
    want.row_mut(n - 1).fill(T::from_f32(0.0));
    let got = download(&embedding(backend(), &upload(&table), &upload_i32(&ids)).unwrap());
    assert_exact(&got, &want, "embedding (out-of-range ids)");
}

fn check_write_kv<T: DeviceElement + Element>(
    batch: usize,
    tmax: usize,
    tq: usize,
    start: usize,
    cols: usize,
    seed: u64,
) {
    let cache = random::<T>(batch * tmax, cols, seed, 3.0);
    let new = random::<T>(batch * tq, cols, seed + 1, 3.0);
    let mut dev = upload(&cache);
    write_kv(backend(), &mut dev, &upload(&new), start, batch).unwrap();
    let mut want = cache;
    for b in 0..batch {
        want.slice_mut(s![b * tmax + start..b * tmax + start + tq, ..])
            .assign(&new.slice(s![b * tq..(b + 1) * tq, ..]));
    }
    assert_exact(&download(&dev), &want, "write_kv");
    let err = write_kv(backend(), &mut dev, &upload(&new), tmax - tq + 1, batch);
    assert!(matches!(err, Err(Error::ShapeMismatch { .. })), "{err:?}");
}

fn gathers<T: DeviceElement + Element>() {
    let mut runner = TestRunner::new(Config::with_cases(24));
    runner
        .run(
            &(1usize..60, 1usize..80, 1usize..40, any::<u64>()),
            |(vocab, hidden, n, seed)| {
                check_gathers::<T>(vocab, hidden, n, seed);
                Ok(())
            },
        )
        .unwrap();
    runner
        .run(
            &(1usize..4, 1usize..20, 1usize..40, any::<u64>()),
            |(batch, tq, cols, seed)| {
                for start in [0, 3] {
                    check_write_kv::<T>(batch, start + tq + 2, tq, start, cols, seed);
                }
                Ok(())
            },
        )
        .unwrap();
    check_gathers::<T>(32000, 2048, 7, 1);
    check_write_kv::<T>(2, 512, 1, 300, 8 * 128, 2);
    check_write_kv::<T>(3, 512, 300, 0, 4 * 64, 3);
}

// ------------------------------------------------------------------ RMSNorm

fn check_rms_norm<T: DeviceElement + Element>(rows: usize, dim: usize, eps: f32, seed: u64) {
    let x = random::<T>(rows, dim, seed, 3.0);
    let w = random::<T>(1, dim, seed + 1, 2.0).row(0).to_owned();
    let want = reference::rms_norm(x.view(), w.view(), eps).unwrap();
    let dw = DeviceTensor::from_host(backend(), &[dim], w.as_slice().unwrap()).unwrap();
    let got = download(&rms_norm(backend(), &upload(&x), &dw, eps).unwrap());
    assert_close(&got, &want, "rms_norm");
}

fn rms_norms<T: DeviceElement + Element>() {
    let mut runner = TestRunner::new(Config::with_cases(24));
    runner
        .run(
            &(1usize..40, 1usize..1200, any::<u64>()),
            |(rows, dim, seed)| {
                check_rms_norm::<T>(rows, dim, 1e-6, seed);
                Ok(())
            },
        )
        .unwrap();
    check_rms_norm::<T>(3, 4096, 1e-5, 1);
    check_rms_norm::<T>(37, 2048, 1e-6, 2);
    check_rms_norm::<T>(5, 1027, 1e-6, 3);
    check_rms_norm::<T>(300 * 32, 128, 1e-6, 4);
}

// ---------------------------------------------------------------- LayerNorm

fn check_layer_norm<T: DeviceElement + Element>(rows: usize, dim: usize, eps: f32, seed: u64) {
    // Rows off-centre (mean up to ±2), so the mean subtraction matters.
    let shift = random_f32(rows, seed + 2, 2.0);
    let mut x = random::<T>(rows, dim, seed, 3.0);
    for (mut row, s) in x.rows_mut().into_iter().zip(shift) {
        row.mapv_inplace(|v| T::from_f32(v.to_f32() + s));
    }
    let w = random::<T>(1, dim, seed + 1, 2.0).row(0).to_owned();
    let bias = random::<T>(1, dim, seed + 3, 0.5).row(0).to_owned();
    let want = reference::layer_norm(x.view(), w.view(), bias.view(), eps).unwrap();
    let dw = DeviceTensor::from_host(backend(), &[dim], w.as_slice().unwrap()).unwrap();
    let db = DeviceTensor::from_host(backend(), &[dim], bias.as_slice().unwrap()).unwrap();
    let got = download(&layer_norm(backend(), &upload(&x), &dw, &db, eps).unwrap());
    assert_close(&got, &want, "layer_norm");
}

fn layer_norms<T: DeviceElement + Element>() {
    let mut runner = TestRunner::new(Config::with_cases(24));
    runner
        .run(
            &(1usize..40, 1usize..1200, any::<u64>()),
            |(rows, dim, seed)| {
                check_layer_norm::<T>(rows, dim, 1e-5, seed);
                Ok(())
            },
        )
        .unwrap();
    check_layer_norm::<T>(3, 4096, 1e-5, 1);
    check_layer_norm::<T>(5, 1027, 1e-5, 3);
    check_layer_norm::<T>(300, 128, 1e-5, 4);
    let x = DeviceTensor::<T>::zeros(backend(), &[4, 8]).unwrap();
    let w = DeviceTensor::<T>::zeros(backend(), &[8]).unwrap();
    let short = DeviceTensor::<T>::zeros(backend(), &[7]).unwrap();
    assert!(matches!(
        layer_norm(backend(), &x, &w, &short, 1e-5),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        layer_norm(backend(), &x, &short, &w, 1e-5),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        layer_norm(backend(), &x, &w, &w, -1.0),
        Err(Error::InvalidConfig(_))
    ));
}

// --------------------------------------------------------------------- RoPE

fn check_rope<T: DeviceElement + Element>(
    rows: usize,
    heads: usize,
    head_dim: usize,
    theta: f32,
    max_pos: usize,
    seed: u64,
) {
    let x = random::<T>(rows, heads * head_dim, seed, 3.0);
    let positions: Vec<usize> = random_f32(rows, seed + 1, 1.0)
        .iter()
        .map(|u| ((u.abs() * max_pos as f32) as usize).min(max_pos))
        .collect();
    let want = reference::rope(x.view(), &positions, head_dim, theta).unwrap();
    let pos: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
    let got = download(&rope(backend(), &upload(&x), &upload_i32(&pos), head_dim, theta).unwrap());
    assert_close(&got, &want, "rope");
}

fn ropes<T: DeviceElement + Element>() {
    let mut runner = TestRunner::new(Config::with_cases(24));
    runner
        .run(
            &(1usize..20, 1usize..5, 1usize..40, any::<u64>()),
            |(rows, heads, half, seed)| {
                check_rope::<T>(rows, heads, 2 * half, 10000.0, 5000, seed);
                Ok(())
            },
        )
        .unwrap();
    check_rope::<T>(300, 32, 128, 1_000_000.0, 4096, 1);
    check_rope::<T>(64, 8, 64, 10000.0, 300, 2);
    check_rope::<T>(16, 4, 256, 500_000.0, 32768, 3);
}

// ---------------------------------------------------------------- attention

struct Attn {
    batch: usize,
    tq: usize,
    kv_len: usize,
    tmax: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

fn check_attention<T: DeviceElement + Element>(a: &Attn, seed: u64) {
    let q = random::<T>(a.batch * a.tq, a.num_heads * a.head_dim, seed, 2.0);
    let kv_cols = a.num_kv_heads * a.head_dim;
    let mut k_cache = random::<T>(a.batch * a.tmax, kv_cols, seed + 1, 2.0);
    let mut v_cache = random::<T>(a.batch * a.tmax, kv_cols, seed + 2, 3.0);
    for b in 0..a.batch {
        let past = s![b * a.tmax + a.kv_len..(b + 1) * a.tmax, ..];
        k_cache.slice_mut(past).fill(T::from_f32(f32::NAN));
        v_cache.slice_mut(past).fill(T::from_f32(f32::NAN));
    }
    let rows = |c: &Array2<T>| {
        let parts: Vec<_> = (0..a.batch)
            .map(|b| c.slice(s![b * a.tmax..b * a.tmax + a.kv_len, ..]))
            .collect();
        ndarray::concatenate(ndarray::Axis(0), &parts).unwrap()
    };
    let want = reference::attention(
        q.view(),
        rows(&k_cache).view(),
        rows(&v_cache).view(),
        a.batch,
        a.num_heads,
        a.num_kv_heads,
        a.head_dim,
    )
    .unwrap();
    let got = attention_cached(
        backend(),
        &upload(&q),
        &upload(&k_cache),
        &upload(&v_cache),
        a.kv_len,
        a.batch,
        a.num_heads,
        a.num_kv_heads,
        a.head_dim,
    )
    .unwrap();
    assert_close(&download(&got), &want, "attention_cached");
}

fn attentions<T: DeviceElement + Element>() {
    let mut runner = TestRunner::new(Config::with_cases(32));
    let head_dim = prop_oneof![1usize..40, (1usize..=32).prop_map(|k| 8 * k)];
    runner
        .run(
            &(
                (
                    1usize..4,
                    1usize..4,
                    prop_oneof![Just(1usize), Just(2), Just(4)],
                ),
                head_dim,
                (1usize..70, 0usize..4, any::<prop::sample::Index>()),
                any::<u64>(),
            ),
            |((batch, num_kv_heads, group), head_dim, (kv_len, extra, tq), seed)| {
                let a = Attn {
                    batch,
                    tq: tq.index(kv_len) + 1,
                    kv_len,
                    tmax: kv_len + extra,
                    num_heads: num_kv_heads * group,
                    num_kv_heads,
                    head_dim,
                };
                check_attention::<T>(&a, seed);
                Ok(())
            },
        )
        .unwrap();
    let realistic = [
        // Decode, GQA ratio 1 / 4 / 8, kv_len past one 256-key chunk.
        (2, 1, 300, 512, 8, 8, 64),
        (1, 1, 257, 300, 32, 8, 128),
        (3, 1, 300, 300, 16, 2, 128),
        (2, 1, 1, 16, 8, 1, 128),
        // Prefill (tq = kv_len) and a chunked prefill onto a cache.
        (2, 300, 300, 320, 16, 2, 128),
        (1, 200, 200, 256, 8, 8, 64),
        (2, 64, 64, 64, 8, 1, 256),
        (1, 37, 290, 512, 4, 1, 80),
    ];
    for (i, &(batch, tq, kv_len, tmax, num_heads, num_kv_heads, head_dim)) in
        realistic.iter().enumerate()
    {
        let a = Attn {
            batch,
            tq,
            kv_len,
            tmax,
            num_heads,
            num_kv_heads,
            head_dim,
        };
        check_attention::<T>(&a, 100 + i as u64);
    }
}

// -------------------------------------------------------------- elementwise

fn check_elementwise<T: DeviceElement + Element>(rows: usize, cols: usize, seed: u64) {
    let r = |t: f32| T::from_f32(t);
    let a = random::<T>(rows, cols, seed, 6.0);
    let b = random::<T>(rows, cols, seed + 1, 6.0);
    let bias = random::<T>(1, cols, seed + 2, 2.0);
    let logits = random::<T>(rows, 1, seed + 3, 6.0);
    let (da, db) = (upload(&a), upload(&b));

    let want = reference::add(a.view(), b.view()).unwrap();
    assert_exact(&download(&add(backend(), &da, &db).unwrap()), &want, "add");

    let want = Array2::from_shape_fn((rows, cols), |(i, j)| {
        r(a[[i, j]].to_f32() + bias[[0, j]].to_f32())
    });
    let dbias = DeviceTensor::from_host(backend(), &[cols], bias.as_slice().unwrap()).unwrap();
    let got = download(&add_bias(backend(), &da, &dbias).unwrap());
    assert_exact(&got, &want, "add_bias");

    // NaN stays NaN, like f32::clamp.
    let mut with_nan = a.clone();
    with_nan[[rows - 1, cols - 1]] = r(f32::NAN);
    for limit in [0.0f32, 1.5, f32::INFINITY] {
        let want = with_nan.mapv(|e| r(e.to_f32().clamp(-limit, limit)));
        let got = download(&clamp(backend(), &upload(&with_nan), limit).unwrap());
        assert_exact(&got, &want, "clamp");
    }

    let want = Array2::from_shape_fn((rows, cols), |(i, j)| {
        let (g, u) = (a[[i, j]].to_f32(), b[[i, j]].to_f32());
        r(g / (1.0 + (-g).exp()) * u)
    });
    assert_close(
        &download(&silu_mul(backend(), &da, &db).unwrap()),
        &want,
        "silu_mul",
    );

    let want = Array2::from_shape_fn((rows, cols), |(i, j)| {
        let g = r(1.0 / (1.0 + (-logits[[i, 0]].to_f32()).exp())).to_f32();
        r(g * a[[i, j]].to_f32())
    });
    let got = download(&sigmoid_scale(backend(), &da, &upload(&logits)).unwrap());
    assert_close(&got, &want, "sigmoid_scale");
}

fn elementwise<T: DeviceElement + Element>() {
    let mut runner = TestRunner::new(Config::with_cases(24));
    runner
        .run(
            &(1usize..30, 1usize..100, any::<u64>()),
            |(rows, cols, seed)| {
                check_elementwise::<T>(rows, cols, seed);
                Ok(())
            },
        )
        .unwrap();
    check_elementwise::<T>(300, 4096, 1);
    check_elementwise::<T>(7, 1408, 2);
}

macro_rules! per_dtype {
    ($name:ident, $body:ident) => {
        mod $name {
            use super::*;

            #[test]
            #[ignore = "requires a CUDA device"]
            fn f32() {
                $body::<f32>();
            }

            #[test]
            #[ignore = "requires a CUDA device"]
            fn bf16() {
                $body::<bf16>();
            }

            #[test]
            #[ignore = "requires a CUDA device"]
            fn f16() {
                $body::<f16>();
            }
        }
    };
}

per_dtype!(embedding_take_rows_write_kv, gathers);
per_dtype!(rms_norm_matches_reference, rms_norms);
per_dtype!(layer_norm_matches_reference, layer_norms);
per_dtype!(rope_matches_reference, ropes);
per_dtype!(attention_cached_matches_reference, attentions);
per_dtype!(elementwise_ops_match_reference, elementwise);

// ------------------------------------------------------------------- argmax

/// The generate example's greedy rule: the first index of the largest value;
/// `None` for a row with a non-finite value.
fn cpu_argmax(row: &[f32]) -> Option<i32> {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if !v.is_finite() {
            return None;
        }
        if v > row[best] {
            best = i;
        }
    }
    Some(best as i32)
}

fn check_argmax(rows: usize, cols: usize, levels: u32, seed: u64) {
    // Few distinct values, so ties are common.
    let mut x = random_f32(rows * cols, seed, 1.0);
    x.iter_mut().for_each(|v| *v = (*v * levels as f32).round());
    if rows > 1 {
        x[cols / 2] = f32::NAN;
        x[2 * cols - 1] = f32::NEG_INFINITY;
    }
    let dx = DeviceTensor::from_host(backend(), &[rows, cols], &x).unwrap();
    let got = argmax_rows(backend(), &dx)
        .unwrap()
        .to_host(backend())
        .unwrap();
    for (r, row) in x.chunks(cols).enumerate() {
        let want = cpu_argmax(row).unwrap_or(-1);
        assert_eq!(got[r], want, "argmax row {r} of [{rows}, {cols}]");
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn argmax_rows_first_max_and_nonfinite() {
    let mut runner = TestRunner::new(Config::with_cases(32));
    runner
        .run(
            &(1usize..8, 1usize..3000, 1u32..50, any::<u64>()),
            |(rows, cols, levels, seed)| {
                check_argmax(rows, cols, levels, seed);
                Ok(())
            },
        )
        .unwrap();
    check_argmax(4, 151_936, 1000, 1);
    check_argmax(3, 32_001, 3, 2);
}

#[test]
#[ignore = "requires a CUDA device"]
fn reshape_keeps_the_buffer() {
    let data: Vec<f32> = random_f32(24, 1, 1.0);
    let t = DeviceTensor::from_host(backend(), &[4, 6], &data).unwrap();
    let t = t.reshape(&[2, 12]).unwrap();
    assert_eq!(t.shape(), &[2, 12]);
    assert_eq!(t.to_host(backend()).unwrap(), data);
    let err = t.reshape(&[5, 5]).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
}

#[test]
#[ignore = "requires a CUDA device"]
fn shape_errors_before_launch() {
    let b = backend();
    let x = DeviceTensor::<f32>::filled(b, &[4, 8], 1.0).unwrap();
    let w = DeviceTensor::<f32>::filled(b, &[7], 1.0).unwrap();
    assert!(matches!(
        rms_norm(b, &x, &w, 1e-6),
        Err(Error::ShapeMismatch { .. })
    ));
    let pos = upload_i32(&[0, 1, 2]);
    assert!(matches!(
        rope(b, &x, &pos, 4, 1e4),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        attention_cached(b, &x, &x, &x, 5, 1, 2, 2, 4),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        clamp(b, &x, f32::NAN),
        Err(Error::InvalidConfig(_))
    ));
}
