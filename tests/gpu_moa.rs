//! The GPU ModuleFormer MoE layers (`dropless::cuda::moa`) against a CPU
//! composition of the reference ops (`reference::expert_map`,
//! `reference::stick_breaking`, `reference::activation::gelu`) on random
//! inputs, bf16 and f16: the "mlp" and "linear" router logits (against host
//! loops with an independent erf), the MLP MoE, and the mixture of attention
//! in a prefill then KV-cached decode steps, with the routing the device chose
//! (so near-ties between experts cannot flip the comparison).
//!
//! Tolerance: |got - want| <= tol * max(|want|, 1), tol = 2 x
//! `DType::rel_tolerance()` (the layers chain several rounded ops).

use std::sync::OnceLock;

use dropless::cuda::gemm::GemmElement;
use dropless::cuda::moa::{attention, mlp_moe, DeviceGate, DeviceMoaCache, DeviceMoaWeights};
use dropless::cuda::sparse_ops::MmaElement;
use dropless::cuda::{CudaBackend, DeviceTensor};
use dropless::reference::activation::gelu;
use dropless::reference::expert_map::{map, reduce, ExpertPlan};
use dropless::reference::stick_breaking::stick_breaking;
use dropless::Element;
use half::{bf16, f16};
use ndarray::{s, Array1, Array2};
use rand::{Rng, SeedableRng};

fn backend() -> &'static CudaBackend {
    static BACKEND: OnceLock<CudaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| CudaBackend::try_new().expect("these tests need a CUDA device"))
}

fn random<T: Element>(rows: usize, cols: usize, rng: &mut impl Rng, scale: f32) -> Array2<T> {
    Array2::from_shape_simple_fn((rows, cols), || {
        let m = rng.gen_range(0.05f32..=1.0) * scale;
        T::from_f32(if rng.gen() { m } else { -m })
    })
}

fn up<T: dropless::cuda::DeviceElement>(a: &Array2<T>) -> DeviceTensor<T> {
    DeviceTensor::from_array(backend(), a.view()).unwrap()
}

fn up1<T: dropless::cuda::DeviceElement>(a: &Array1<T>) -> DeviceTensor<T> {
    DeviceTensor::from_host(backend(), &[a.len()], a.as_slice().unwrap()).unwrap()
}

fn f32s<T: Element>(a: &Array2<T>) -> Array2<f32> {
    a.mapv(|v| v.to_f32())
}

fn assert_close(got: &Array2<f32>, want: &Array2<f32>, tol: f32, what: &str) {
    assert_eq!(got.dim(), want.dim(), "{what}: shape");
    for ((idx, &g), &w) in got.indexed_iter().zip(want.iter()) {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}{idx:?}: got {g}, want {w}"
        );
    }
}

/// erf by Abramowitz and Stegun 7.1.26 (|error| < 1.5e-7).
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * x.abs() as f64);
    let poly = t
        * (0.254829592
            + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let y = 1.0 - poly * (-(x as f64) * x as f64).exp();
    (y as f32).copysign(x)
}

/// `a · bᵀ` in f32 over widened operands.
fn mul_t<T: Element>(a: &Array2<T>, b: &Array2<T>) -> Array2<f32> {
    f32s(a).dot(&f32s(b).t())
}

struct Gate<T> {
    host: HostGate<T>,
    device: DeviceGate<T>,
}

enum HostGate<T> {
    Mlp(Array2<T>, Array1<T>, Array2<T>),
    Linear(Array2<T>),
}

fn gate<T: MmaElement + GemmElement>(
    mlp: bool,
    hidden: usize,
    experts: usize,
    rng: &mut impl Rng,
) -> Gate<T> {
    if mlp {
        let gating = 16;
        let w1 = random::<T>(gating, hidden, rng, 0.3);
        let b1 = Array1::from_iter((0..gating).map(|i| T::from_f32(0.1 * i as f32 - 0.5)));
        let w2 = random::<T>(experts, gating, rng, 0.5);
        let device = DeviceGate::Mlp {
            w1: up(&w1),
            b1: up1(&b1),
            w2: up(&w2),
        };
        Gate {
            host: HostGate::Mlp(w1, b1, w2),
            device,
        }
    } else {
        let w = random::<T>(experts, hidden, rng, 0.3);
        Gate {
            device: DeviceGate::Linear { w: up(&w) },
            host: HostGate::Linear(w),
        }
    }
}

fn host_logits<T: Element>(g: &HostGate<T>, x: &Array2<T>) -> Array2<f32> {
    match g {
        HostGate::Linear(w) => mul_t(x, w),
        HostGate::Mlp(w1, b1, w2) => {
            let mut pre = mul_t(x, w1);
            for ((_, c), v) in pre.indexed_iter_mut() {
                let u = *v + b1[c].to_f32();
                *v = T::from_f32(0.5 * u * (1.0 + erf(u / std::f32::consts::SQRT_2))).to_f32();
            }
            pre.dot(&f32s(w2).t())
        }
    }
}

/// The device's routing of `x` (ids, gates), after checking its logits and
/// gates against the host.
fn routing<T: MmaElement + GemmElement>(
    host: &HostGate<T>,
    device: &DeviceGate<T>,
    x: &Array2<T>,
    k: usize,
) -> (Array2<i32>, Array2<f32>) {
    let tol = 2.0 * T::DTYPE.rel_tolerance();
    let dx = up(x);
    let logits = device
        .logits(backend(), &dx)
        .unwrap()
        .to_array2(backend())
        .unwrap();
    assert_close(&logits, &host_logits(host, x), tol, "router logits");
    let r = device.route(backend(), &dx, k).unwrap();
    let ids = r.expert_ids.to_array2(backend()).unwrap();
    let gates = r.weights.to_array2(backend()).unwrap();
    for t in 0..x.nrows() {
        let row = logits.row(t);
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let denom: f32 = row.iter().map(|v| (v - max).exp()).sum();
        for s in 0..k {
            let p = (row[ids[[t, s]] as usize] - max).exp() / denom;
            assert!(
                (gates[[t, s]] - p).abs() <= 1e-5,
                "gate ({t}, {s}): {} vs {p}",
                gates[[t, s]]
            );
        }
    }
    (ids, gates)
}

fn check_mlp<T: MmaElement + GemmElement>(mlp_gate: bool, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (tokens, hidden, ffd, experts, k) = (37, 128, 128, 6, 2);
    let g = gate::<T>(mlp_gate, hidden, experts, &mut rng);
    let w = random::<T>(experts * hidden, ffd, &mut rng, 0.1);
    let v = random::<T>(experts * ffd, hidden, &mut rng, 0.1);
    let x = random::<T>(tokens, hidden, &mut rng, 1.0);
    let (ids, gates) = routing(&g.host, &g.device, &x, k);
    let got = mlp_moe(backend(), &g.device, &up(&w), &up(&v), &up(&x), k, 128)
        .unwrap()
        .to_array2(backend())
        .unwrap();
    let w3 = w
        .view()
        .into_shape_with_order((experts, hidden, ffd))
        .unwrap();
    let v3 = v
        .view()
        .into_shape_with_order((experts, ffd, hidden))
        .unwrap();
    let h = map(
        &ExpertPlan::new(ids.view(), experts, ffd, 128).unwrap(),
        x.view(),
        w3,
    )
    .unwrap();
    let h = h.mapv(|u| T::from_f32(gelu(u.to_f32())));
    let want = reduce(
        &ExpertPlan::new(ids.view(), experts, hidden, 128).unwrap(),
        h.view(),
        v3,
        gates.view(),
    )
    .unwrap();
    assert_close(
        &f32s(&got),
        &f32s(&want),
        2.0 * T::DTYPE.rel_tolerance(),
        "mlp_moe",
    );
}

fn check_attention<T: MmaElement + GemmElement>(mlp_gate: bool, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (batch, prefill, steps, hidden, n_head, experts, k) = (2, 19, 3, 128, 2, 4, 2);
    let att = 128;
    let hs = att / n_head;
    let tmax = prefill + steps;
    let g = gate::<T>(mlp_gate, hidden, experts, &mut rng);
    let wq = random::<T>(experts * hidden, att, &mut rng, 0.15);
    let wo = random::<T>(experts * att, hidden, &mut rng, 0.15);
    let (wk, wv) = (
        random::<T>(att, hidden, &mut rng, 0.15),
        random::<T>(att, hidden, &mut rng, 0.15),
    );
    let bk = Array1::from_iter((0..att).map(|i| T::from_f32(0.01 * i as f32 - 0.6)));
    let bv = Array1::from_iter((0..att).map(|i| T::from_f32(0.3 - 0.005 * i as f32)));
    let x_all: Vec<Array2<T>> = (0..batch)
        .map(|_| random::<T>(tmax, hidden, &mut rng, 1.0))
        .collect();
    let Gate { host, device } = g;
    let weights = DeviceMoaWeights {
        gate: device,
        q: up(&wq),
        o: up(&wo),
        k: Some((up(&wk), up1(&bk))),
        v: Some((up(&wv), up1(&bv))),
    };
    let mut cache = DeviceMoaCache::<T>::new(backend(), batch, tmax, att).unwrap();
    let project = |x: &Array2<T>, w: &Array2<T>, b: &Array1<T>| {
        let mut p = mul_t(x, w);
        for ((_, c), v) in p.indexed_iter_mut() {
            *v = T::from_f32(T::from_f32(*v).to_f32() + b[c].to_f32()).to_f32();
        }
        p.mapv(T::from_f32)
    };
    let mut start = 0;
    for chunk in std::iter::once(prefill).chain(std::iter::repeat_n(1, steps)) {
        let rows: Vec<Array2<T>> = x_all
            .iter()
            .map(|x| x.slice(s![start..start + chunk, ..]).to_owned())
            .collect();
        let x = ndarray::concatenate(
            ndarray::Axis(0),
            &rows.iter().map(|r| r.view()).collect::<Vec<_>>(),
        )
        .unwrap();
        let (ids, gates) = routing(&host, &weights.gate, &x, k);
        let got = attention(
            backend(),
            &weights,
            &up(&x),
            &mut cache,
            batch,
            n_head,
            k,
            128,
        )
        .unwrap()
        .to_array2(backend())
        .unwrap();
        let wq3 = wq
            .view()
            .into_shape_with_order((experts, hidden, att))
            .unwrap();
        let q = map(
            &ExpertPlan::new(ids.view(), experts, att, 128).unwrap(),
            x.view(),
            wq3,
        )
        .unwrap();
        let mut y = Array2::<T>::default((batch * chunk * k, att));
        for (b, xb) in x_all.iter().enumerate() {
            let ctx = xb.slice(s![..start + chunk, ..]).to_owned();
            let keys = project(&ctx, &wk, &bk)
                .into_shape_with_order((start + chunk, n_head, hs))
                .unwrap();
            let values = project(&ctx, &wv, &bv)
                .into_shape_with_order((start + chunk, n_head, hs))
                .unwrap();
            let qb = q
                .slice(s![b * chunk * k..(b + 1) * chunk * k, ..])
                .to_owned()
                .into_shape_with_order((chunk, k * n_head, hs))
                .unwrap();
            let yb = stick_breaking(qb.view(), keys.view(), values.view()).unwrap();
            y.slice_mut(s![b * chunk * k..(b + 1) * chunk * k, ..])
                .assign(&yb.into_shape_with_order((chunk * k, att)).unwrap());
        }
        let wo3 = wo
            .view()
            .into_shape_with_order((experts, att, hidden))
            .unwrap();
        let want = reduce(
            &ExpertPlan::new(ids.view(), experts, att, 128).unwrap(),
            y.view(),
            wo3,
            gates.view(),
        )
        .unwrap();
        assert_close(
            &f32s(&got),
            &f32s(&want),
            2.0 * T::DTYPE.rel_tolerance(),
            &format!("attention at {start}+{chunk}"),
        );
        start += chunk;
    }
    assert_eq!(cache.len, tmax);
}

macro_rules! per_dtype {
    ($($name:ident: $t:ty, $mlp:expr;)*) => {$(
        #[test]
        #[ignore = "requires a CUDA device"]
        fn $name() {
            check_mlp::<$t>($mlp, 1);
            check_attention::<$t>($mlp, 2);
        }
    )*};
}

per_dtype! {
    bf16_mlp_gate: bf16, true;
    bf16_linear_gate: bf16, false;
    f16_mlp_gate: f16, true;
    f16_linear_gate: f16, false;
}
