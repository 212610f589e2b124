//! GPU block-sparse products (SDD, DSD, DDS, every transpose, bf16 and f16)
//! against the CPU reference on random topologies and operands. Outputs are
//! poisoned with NaN before each launch, so an element the kernel fails to
//! write fails the comparison.

use std::sync::Arc;

use dropless::cuda::sparse_ops::{dds_into, dsd_into, sdd_into, MmaElement};
use dropless::cuda::{dds, dsd, sdd, CudaBackend, DeviceBlockSparse, DeviceTensor, DeviceTopology};
use dropless::{reference, BlockSparse, Element, Topology};
use half::{bf16, f16};
use ndarray::Array2;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BLOCK: usize = 128;
/// Largest number of multiply-adds of one product, to keep the CPU reference quick.
const BUDGET: usize = 1 << 28;
/// Random cases per test.
const CASES: u32 = 12;

/// One random dMoE-shaped problem.
#[derive(Debug, Clone)]
struct Case {
    tokens_per_expert: Vec<usize>,
    ffn_per_expert: usize,
    hidden: usize,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    let hidden = prop::sample::select(vec![128usize, 136, 264, 1000, 2048, 4096]);
    let ffn = prop::sample::select(vec![128usize, 256, 384, 1024, 4096]);
    (hidden, ffn)
        .prop_filter("one block row of one expert stays moderate", |&(h, f)| {
            h * f <= 1 << 21
        })
        .prop_flat_map(|(hidden, ffn_per_expert)| {
            // One padded block row of one expert costs BLOCK * ffn * hidden.
            let max_block_rows = (BUDGET / (BLOCK * ffn_per_expert * hidden)).max(1);
            (1..=max_block_rows.min(128)).prop_flat_map(move |experts| {
                let max_tokens = ((max_block_rows / experts).max(1) * BLOCK).min(400);
                let count = prop_oneof![Just(0usize), Just(1usize), 0..=max_tokens];
                (prop::collection::vec(count, experts), any::<u64>()).prop_map(
                    move |(mut tokens_per_expert, seed)| {
                        if tokens_per_expert.iter().all(|&t| t == 0) {
                            tokens_per_expert[0] = 1;
                        }
                        Case {
                            tokens_per_expert,
                            ffn_per_expert,
                            hidden,
                            seed,
                        }
                    },
                )
            })
        })
}

fn random<T: Element>(rng: &mut StdRng, n: usize) -> Vec<T> {
    (0..n)
        .map(|_| T::from_f32(rng.gen_range(-1.0f32..1.0)))
        .collect()
}

fn random_array<T: Element>(rng: &mut StdRng, shape: (usize, usize)) -> Array2<T> {
    Array2::from_shape_vec(shape, random(rng, shape.0 * shape.1)).expect("shape matches")
}

/// The host topology of a case and its device copy.
fn topologies(backend: &CudaBackend, case: &Case) -> (Arc<Topology>, Arc<DeviceTopology>) {
    let topo =
        Topology::from_tokens_per_expert(&case.tokens_per_expert, case.ffn_per_expert, BLOCK)
            .expect("valid topology");
    let dev = DeviceTopology::from_host(backend, &topo).expect("upload topology");
    (Arc::new(topo), Arc::new(dev))
}

/// A random sparse matrix on the topology, on the host and on the device.
fn random_sparse<T: MmaElement>(
    backend: &CudaBackend,
    rng: &mut StdRng,
    topo: &Arc<Topology>,
    dev_topo: &Arc<DeviceTopology>,
) -> (BlockSparse<T>, DeviceBlockSparse<T>) {
    let values = random::<T>(rng, topo.num_elements());
    let dev = DeviceTensor::from_host(backend, &[values.len()], &values).expect("upload values");
    (
        BlockSparse::new(Arc::clone(topo), values).expect("host sparse"),
        DeviceBlockSparse::new(Arc::clone(dev_topo), dev).expect("device sparse"),
    )
}

fn nan<T: Element>() -> T {
    T::from_f32(f32::NAN)
}

/// Max-abs error relative to the reference's max-abs value, within the dtype's
/// tolerance; every value must be finite (no NaN poison left).
fn assert_close<T: Element>(got: &[T], want: &[T], what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{}: lengths", what);
    let scale = want
        .iter()
        .map(|v| v.to_f32().abs())
        .fold(0.0f32, f32::max)
        .max(f32::MIN_POSITIVE);
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.to_f32(), w.to_f32());
        prop_assert!(
            g.is_finite(),
            "{}[{}] = {} (unwritten or overflowed), want {}",
            what,
            i,
            g,
            w
        );
        let err = (g - w).abs();
        if err > worst.0 {
            worst = (err, i);
        }
    }
    let tol = T::DTYPE.rel_tolerance();
    prop_assert!(
        worst.0 / scale <= tol,
        "{} ({}): max error {} at {} (got {:?}, want {:?}) exceeds {} x max |want| = {}",
        what,
        T::DTYPE,
        worst.0,
        worst.1,
        got[worst.1],
        want[worst.1],
        tol,
        scale
    );
    Ok(())
}

fn run_sdd<T: MmaElement>(
    backend: &CudaBackend,
    case: &Case,
    trans_b: bool,
) -> Result<(), TestCaseError> {
    let (topo, dev_topo) = topologies(backend, case);
    let mut rng = StdRng::seed_from_u64(case.seed);
    let k = case.hidden;
    let a = random_array::<T>(&mut rng, (topo.rows(), k));
    let b_shape = if trans_b {
        (topo.cols(), k)
    } else {
        (k, topo.cols())
    };
    let b = random_array::<T>(&mut rng, b_shape);
    let want = reference::sdd(a.view(), b.view(), trans_b, &topo).expect("reference sdd");

    let da = DeviceTensor::from_array(backend, a.view()).expect("upload a");
    let db = DeviceTensor::from_array(backend, b.view()).expect("upload b");
    let mut out =
        DeviceBlockSparse::filled(backend, Arc::clone(&dev_topo), nan::<T>()).expect("alloc");
    sdd_into(backend, &da, &db, trans_b, &mut out).expect("sdd_into");
    let got = out.data().to_host(backend).expect("download");
    assert_close(&got, want.data(), "sdd")?;

    let plain = sdd(backend, &da, &db, trans_b, &dev_topo).expect("sdd");
    prop_assert!(
        plain.data().to_host(backend).expect("download") == got,
        "sdd and sdd_into differ"
    );
    Ok(())
}

fn run_dsd<T: MmaElement>(
    backend: &CudaBackend,
    case: &Case,
    transposed: bool,
) -> Result<(), TestCaseError> {
    let (topo, dev_topo) = topologies(backend, case);
    let mut rng = StdRng::seed_from_u64(case.seed);
    let (s, ds) = random_sparse::<T>(backend, &mut rng, &topo, &dev_topo);
    let (view, dview) = if transposed {
        (s.t(), ds.t())
    } else {
        (s.view(), ds.view())
    };
    let (m, n) = view.dim();
    let h = case.hidden;
    let b = random_array::<T>(&mut rng, (n, h));
    let want = reference::dsd(view, b.view()).expect("reference dsd");

    let db = DeviceTensor::from_array(backend, b.view()).expect("upload b");
    let mut out = DeviceTensor::filled(backend, &[m, h], nan::<T>()).expect("alloc");
    dsd_into(backend, dview, &db, &mut out).expect("dsd_into");
    let got = out.to_host(backend).expect("download");
    let want: Vec<T> = want.iter().copied().collect();
    assert_close(&got, &want, "dsd")?;

    let plain = dsd(backend, dview, &db).expect("dsd");
    prop_assert!(
        plain.to_host(backend).expect("download") == got,
        "dsd and dsd_into differ"
    );
    Ok(())
}

fn run_dds<T: MmaElement>(
    backend: &CudaBackend,
    case: &Case,
    transposed: bool,
) -> Result<(), TestCaseError> {
    let (topo, dev_topo) = topologies(backend, case);
    let mut rng = StdRng::seed_from_u64(case.seed);
    let (s, ds) = random_sparse::<T>(backend, &mut rng, &topo, &dev_topo);
    let (view, dview) = if transposed {
        (s.t(), ds.t())
    } else {
        (s.view(), ds.view())
    };
    let (k, n) = view.dim();
    // Rows of A need not be a multiple of 8 (nor of the tile).
    let m = case.hidden - (case.seed % 8) as usize;
    let a = random_array::<T>(&mut rng, (m, k));
    let want = reference::dds(a.view(), view).expect("reference dds");

    let da = DeviceTensor::from_array(backend, a.view()).expect("upload a");
    let mut out = DeviceTensor::filled(backend, &[m, n], nan::<T>()).expect("alloc");
    dds_into(backend, &da, dview, &mut out).expect("dds_into");
    let got = out.to_host(backend).expect("download");
    let want: Vec<T> = want.iter().copied().collect();
    assert_close(&got, &want, "dds")?;

    let plain = dds(backend, &da, dview).expect("dds");
    prop_assert!(
        plain.to_host(backend).expect("download") == got,
        "dds and dds_into differ"
    );
    Ok(())
}

/// Runs `check` on random cases with one backend.
fn property(check: impl Fn(&CudaBackend, &Case) -> Result<(), TestCaseError>) {
    let backend = CudaBackend::try_new().expect("a CUDA device");
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    runner
        .run(&case(), |case| check(&backend, &case))
        .unwrap_or_else(|e| panic!("{e}"));
}

macro_rules! gpu_tests {
    ($($name:ident: $run:ident::<$t:ty>($flag:expr);)*) => {$(
        #[test]
        #[ignore = "requires a CUDA device"]
        fn $name() {
            property(|backend, case| $run::<$t>(backend, case, $flag));
        }
    )*};
}

gpu_tests! {
    sdd_nt_bf16: run_sdd::<bf16>(true);
    sdd_nt_f16: run_sdd::<f16>(true);
    sdd_nn_bf16: run_sdd::<bf16>(false);
    sdd_nn_f16: run_sdd::<f16>(false);
    dsd_bf16: run_dsd::<bf16>(false);
    dsd_f16: run_dsd::<f16>(false);
    dsd_t_bf16: run_dsd::<bf16>(true);
    dsd_t_f16: run_dsd::<f16>(true);
    dds_bf16: run_dds::<bf16>(false);
    dds_f16: run_dds::<f16>(false);
    dds_t_bf16: run_dds::<bf16>(true);
    dds_t_f16: run_dds::<f16>(true);
}

/// Edge shapes the random cases rarely hit: one token, hidden = 8 (and rows
/// of A down to 7), a single expert, dense dims just past or short of a tile.
#[test]
#[ignore = "requires a CUDA device"]
fn edge_shapes() {
    let backend = CudaBackend::try_new().expect("a CUDA device");
    for (tokens_per_expert, ffn_per_expert, hidden) in [
        (vec![1], 128, 8),
        (vec![0, 1, 0], 128, 136),
        (vec![129, 0, 255], 256, 8),
        (vec![128], 128, 4096),
        (vec![300, 5], 384, 120),
    ] {
        for seed in 0..2 {
            let case = Case {
                tokens_per_expert: tokens_per_expert.clone(),
                ffn_per_expert,
                hidden,
                seed,
            };
            for flag in [false, true] {
                let fail = |e: TestCaseError| panic!("{case:?} flag {flag}: {e}");
                run_sdd::<bf16>(&backend, &case, flag).unwrap_or_else(fail);
                run_sdd::<f16>(&backend, &case, flag).unwrap_or_else(fail);
                run_dsd::<bf16>(&backend, &case, flag).unwrap_or_else(fail);
                run_dsd::<f16>(&backend, &case, flag).unwrap_or_else(fail);
                run_dds::<bf16>(&backend, &case, flag).unwrap_or_else(fail);
                run_dds::<f16>(&backend, &case, flag).unwrap_or_else(fail);
            }
        }
    }
}
