//! GPU activations on sparse blocks against the CPU reference activations.

use std::sync::Arc;

use dropless::cuda::activation::{gelu, gelu_backward, silu_mul, silu_mul_backward};
use dropless::cuda::{CudaBackend, DeviceBlockSparse, DeviceElement, DeviceTensor, DeviceTopology};
use dropless::reference::activation::{gelu as gelu_ref, gelu_grad, silu, silu_grad};
use dropless::{Element, Topology};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn random_values<T: Element>(n: usize, seed: u64) -> Vec<T> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            T::from_f32(6.0 * u - 3.0)
        })
        .collect()
}

fn upload<T: DeviceElement + Element>(
    backend: &CudaBackend,
    topo: &Arc<DeviceTopology>,
    values: &[T],
) -> DeviceBlockSparse<T> {
    let data = DeviceTensor::from_host(backend, &[values.len()], values).unwrap();
    DeviceBlockSparse::new(topo.clone(), data).unwrap()
}

fn assert_close<T: Element>(got: &[T], want: &[f32], what: &str) {
    let tol = T::DTYPE.rel_tolerance();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g.to_f32();
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w} ({})",
            T::DTYPE
        );
    }
}

fn check<T: DeviceElement + Element>(backend: &CudaBackend, counts: &[usize], seed: u64) {
    let topo = Topology::from_tokens_per_expert(counts, 256, 128).unwrap();
    let dev_topo = Arc::new(DeviceTopology::from_host(backend, &topo).unwrap());
    let n = topo.num_elements();
    let (a, b, dy) = (
        random_values::<T>(n, seed),
        random_values::<T>(n, seed + 1),
        random_values::<T>(n, seed + 2),
    );
    let (da, db, ddy) = (
        upload(backend, &dev_topo, &a),
        upload(backend, &dev_topo, &b),
        upload(backend, &dev_topo, &dy),
    );
    let f = |v: &[T]| v.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
    let (fa, fb, fdy) = (f(&a), f(&b), f(&dy));

    let got = gelu(backend, &da).unwrap().data().to_host(backend).unwrap();
    let want: Vec<f32> = fa.iter().map(|&x| gelu_ref(x)).collect();
    assert_close(&got, &want, "gelu");

    let got = gelu_backward(backend, &ddy, &da)
        .unwrap()
        .data()
        .to_host(backend)
        .unwrap();
    let want: Vec<f32> = fa
        .iter()
        .zip(&fdy)
        .map(|(&x, &g)| g * gelu_grad(x))
        .collect();
    assert_close(&got, &want, "gelu_backward");

    let got = silu_mul(backend, &da, &db)
        .unwrap()
        .data()
        .to_host(backend)
        .unwrap();
    let want: Vec<f32> = fa.iter().zip(&fb).map(|(&g, &u)| silu(g) * u).collect();
    assert_close(&got, &want, "silu_mul");

    let (gg, gu) = silu_mul_backward(backend, &ddy, &da, &db).unwrap();
    let (gg, gu) = (
        gg.data().to_host(backend).unwrap(),
        gu.data().to_host(backend).unwrap(),
    );
    let want_g: Vec<f32> = (0..n).map(|i| fdy[i] * fb[i] * silu_grad(fa[i])).collect();
    let want_u: Vec<f32> = (0..n).map(|i| fdy[i] * silu(fa[i])).collect();
    assert_close(&gg, &want_g, "silu_mul_backward (gate)");
    assert_close(&gu, &want_u, "silu_mul_backward (up)");
}

fn run_all<T: DeviceElement + Element>() {
    let backend = CudaBackend::try_new().expect("a CUDA device");
    let mut runner = TestRunner::new(Config::with_cases(8));
    runner
        .run(
            &(prop::collection::vec(0usize..300, 1..6), any::<u64>()),
            |(counts, seed)| {
                if counts.iter().sum::<usize>() > 0 {
                    check::<T>(&backend, &counts, seed);
                }
                Ok(())
            },
        )
        .unwrap();
}

#[test]
#[ignore = "requires a CUDA device"]
fn activations_match_reference_f32() {
    run_all::<f32>();
}

#[test]
#[ignore = "requires a CUDA device"]
fn activations_match_reference_bf16() {
    run_all::<bf16>();
}

#[test]
#[ignore = "requires a CUDA device"]
fn activations_match_reference_f16() {
    run_all::<f16>();
}
