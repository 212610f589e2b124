//! The CUDA router backward and auxiliary losses against the CPU reference,
//! on random inputs (shapes drawn by proptest). Device outputs are poisoned
//! with NaN before each launch, so an element the kernel fails to write fails
//! the comparison.
//!
//! The routing is computed once by the device router and downloaded for the
//! reference, so both sides see bitwise the same probabilities, ids and
//! weights. Tolerances are f32's 1e-5 relative:
//! - the logits gradient, relative to each row's scale
//!   `max_e p_e (|dp|_e + sum_e' p_e' |dp|_e') + |z-loss term| max_e p_e`, the
//!   magnitudes of the terms the softmax backward cancels (`|dp|` is `dp`
//!   built from absolute values);
//! - the losses, relative to `max(|loss|, 1)` (sums of non-negative terms).

#[path = "common/gpu.rs"]
mod gpu;

use dropless::config::AuxLossCoefficients;
use dropless::cuda::histogram::histogram;
use dropless::cuda::router_grad::{
    load_balancing_loss, load_balancing_loss_into, route_backward, route_backward_into,
    router_z_loss, router_z_loss_into,
};
use dropless::cuda::routing::{route, DeviceRouting};
use dropless::cuda::DeviceTensor;
use dropless::reference::loss as rl;
use dropless::reference::router_grad as rg;
use dropless::reference::routing::Routing;
use dropless::{Element, Error};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use gpu::{backend, filled, signed_value, tokens_strategy, upload, upload2};

fn tolerance() -> f32 {
    f32::DTYPE.rel_tolerance()
}

/// Router logits, continuous in [-4, 4].
fn logits(rng: &mut StdRng, tokens: usize, experts: usize) -> Array2<f32> {
    Array2::from_shape_simple_fn((tokens, experts), || rng.gen_range(-4.0f32..4.0))
}

/// A gradient value uniform in ±[0.05, 1] (never zero).
/// Non-zero auxiliary loss coefficients.
fn coefficients(rng: &mut StdRng) -> AuxLossCoefficients {
    AuxLossCoefficients {
        load_balancing: rng.gen_range(0.01f32..=1.0),
        z_loss: rng.gen_range(1e-3f32..=0.1),
    }
}

/// A routing on the device and its download for the reference.
struct Routed {
    device: DeviceRouting,
    host: Routing,
    counts: DeviceTensor<i32>,
}

/// Routes `x` on the device, checks it is finite, and counts the experts.
fn route_on_device(x: &Array2<f32>, top_k: usize, renormalize: bool) -> Routed {
    let b = backend();
    let device = route(b, &upload2(x.view()), top_k, renormalize).unwrap();
    device.check_finite(b).unwrap();
    let counts = histogram(b, &device.expert_ids, x.ncols()).unwrap();
    let host = Routing {
        probs: device.probs.to_array2(b).unwrap(),
        expert_ids: device.expert_ids.to_array2(b).unwrap(),
        weights: device.weights.to_array2(b).unwrap(),
    };
    Routed {
        device,
        host,
        counts,
    }
}

/// Uploads a host routing (e.g. with repeated ids) and its expert counts.
fn upload_routing(host: Routing, experts: usize) -> Routed {
    let counts = dropless::reference::permute::histogram(host.expert_ids.view(), experts).unwrap();
    let device = DeviceRouting {
        probs: upload2(host.probs.view()),
        expert_ids: upload2(host.expert_ids.view()),
        weights: upload2(host.weights.view()),
        status: upload(&[2], &[0, 0]),
    };
    Routed {
        device,
        host,
        counts: upload(&[experts], counts.as_slice().unwrap()),
    }
}

fn logsumexp(row: ArrayView1<f32>) -> f32 {
    let max = row.fold(f32::NEG_INFINITY, |m, &l| m.max(l));
    max + row.fold(0.0f32, |s, &l| s + (l - max).exp()).ln()
}

/// `|aux.load_balancing| * E * f_e / T` for each expert `e`.
fn load_balancing_grad(routing: &Routing, aux: AuxLossCoefficients) -> Vec<f32> {
    let (tokens, experts) = routing.probs.dim();
    let top_k = routing.expert_ids.ncols();
    let counts =
        dropless::reference::permute::histogram(routing.expert_ids.view(), experts).unwrap();
    counts
        .iter()
        .map(|&c| {
            let f = c as f32 / (tokens * top_k) as f32;
            aux.load_balancing.abs() * experts as f32 * f / tokens as f32
        })
        .collect()
}

/// The scale of row `t` of the logits gradient (see the module docs);
/// `lb_grad` is [`load_balancing_grad`].
fn row_scale(
    x: ArrayView2<f32>,
    routing: &Routing,
    grad_weights: ArrayView2<f32>,
    renormalize: bool,
    aux: AuxLossCoefficients,
    lb_grad: &[f32],
    t: usize,
) -> f32 {
    let tokens = x.nrows();
    let top_k = routing.expert_ids.ncols();
    let p = routing.probs.row(t);
    let ids = routing.expert_ids.row(t);
    let dw = grad_weights.row(t);
    let mut dp = lb_grad.to_vec();
    if renormalize {
        let sum: f32 = ids.iter().map(|&e| p[e as usize]).sum();
        let dot: f32 = (0..top_k)
            .map(|j| (dw[j] * routing.weights[[t, j]]).abs())
            .sum();
        for (&e, &g) in ids.iter().zip(dw) {
            dp[e as usize] += (g.abs() + dot) / sum;
        }
    } else {
        for (&e, &g) in ids.iter().zip(dw) {
            dp[e as usize] += g.abs();
        }
    }
    let mean: f32 = p.iter().zip(&dp).map(|(&pe, &d)| pe * d).sum();
    let pmax = p.fold(0.0f32, |m, &v| m.max(v));
    let softmax = p
        .iter()
        .zip(&dp)
        .fold(0.0f32, |m, (&pe, &d)| m.max(pe * (d + mean)));
    let z = (aux.z_loss * 2.0 * logsumexp(x.row(t)) / tokens as f32).abs() * pmax;
    softmax + z
}

/// Runs the device backward into a NaN-poisoned output and compares it with
/// the reference; returns the device result.
fn check_backward(
    x: &Array2<f32>,
    routed: &Routed,
    grad_weights: &Array2<f32>,
    renormalize: bool,
    aux: AuxLossCoefficients,
) -> Vec<f32> {
    let b = backend();
    let (tokens, experts) = x.dim();
    let want = rg::route_backward(
        x.view(),
        &routed.host,
        grad_weights.view(),
        renormalize,
        aux,
    )
    .unwrap();
    let mut out = filled(&[tokens, experts], f32::NAN);
    route_backward_into(
        b,
        &upload2(x.view()),
        &routed.device,
        &upload2(grad_weights.view()),
        &routed.counts,
        renormalize,
        aux,
        &mut out,
    )
    .unwrap();
    let got = out.to_array2(b).unwrap();
    let tol = tolerance();
    let lb_grad = load_balancing_grad(&routed.host, aux);
    for t in 0..tokens {
        let scale = row_scale(
            x.view(),
            &routed.host,
            grad_weights.view(),
            renormalize,
            aux,
            &lb_grad,
            t,
        );
        for e in 0..experts {
            let (g, w) = (got[[t, e]], want[[t, e]]);
            assert!(
                (g - w).abs() <= tol * (w.abs() + scale),
                "dlogits[{t}, {e}]: {g} vs {w} (scale {scale}, {tokens}x{experts}, \
                 k {}, renormalize {renormalize}, {aux:?})",
                routed.host.expert_ids.ncols()
            );
        }
    }
    got.into_raw_vec_and_offset().0
}

fn random_backward_case(
    tokens: usize,
    experts: usize,
    top_k: usize,
    renormalize: bool,
    aux: Option<AuxLossCoefficients>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = logits(&mut rng, tokens, experts);
    let aux = aux.unwrap_or_else(|| coefficients(&mut rng));
    let grad_weights = Array2::from_shape_simple_fn((tokens, top_k), || signed_value(&mut rng));
    let routed = route_on_device(&x, top_k, renormalize);
    check_backward(&x, &routed, &grad_weights, renormalize, aux);
}

/// Compares a device loss, written into a NaN-poisoned `[1]` output, with
/// the reference value.
fn assert_loss(got: &DeviceTensor<f32>, want: f32, what: &str) -> f32 {
    let got = got.to_host(backend()).unwrap();
    assert_eq!(got.len(), 1, "{what}: one value");
    let tol = tolerance();
    assert!(
        (got[0] - want).abs() <= tol * want.abs().max(1.0),
        "{what}: {} vs {want}",
        got[0]
    );
    got[0]
}

fn check_losses(tokens: usize, experts: usize, top_k: usize, seed: u64) {
    let b = backend();
    let mut rng = StdRng::seed_from_u64(seed);
    let x = logits(&mut rng, tokens, experts);
    let routed = route_on_device(&x, top_k, false);

    let want = rl::load_balancing_loss(
        routed.host.probs.view(),
        routed.host.expert_ids.view(),
        experts,
    )
    .unwrap();
    let mut out = filled(&[1], f32::NAN);
    load_balancing_loss_into(b, &routed.device.probs, &routed.counts, top_k, &mut out).unwrap();
    let first = assert_loss(&out, want, "load_balancing_loss");
    let again = load_balancing_loss(b, &routed.device.probs, &routed.counts, top_k).unwrap();
    assert_eq!(
        again.to_host(b).unwrap()[0].to_bits(),
        first.to_bits(),
        "load_balancing_loss is deterministic"
    );

    let want = rl::router_z_loss(x.view()).unwrap();
    let d_x = upload2(x.view());
    let mut out = filled(&[1], f32::NAN);
    router_z_loss_into(b, &d_x, &mut out).unwrap();
    let first = assert_loss(&out, want, "router_z_loss");
    let again = router_z_loss(b, &d_x).unwrap();
    assert_eq!(
        again.to_host(b).unwrap()[0].to_bits(),
        first.to_bits(),
        "router_z_loss is deterministic"
    );
}

/// Tokens not a multiple of 128, possibly one token.
/// Experts up to 128, sometimes around 1000.
fn experts_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 1..=8usize,
        4 => 9..=128usize,
        1 => Just(128usize),
        1 => 990..=1024usize,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    #[ignore = "requires a CUDA device"]
    fn route_backward_matches_reference(
        tokens in tokens_strategy(),
        experts in experts_strategy(),
        k in 1..=8usize,
        renormalize in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let tokens = tokens.min(1_000_000 / experts).max(1);
        random_backward_case(tokens, experts, k.min(experts), renormalize, None, seed);
    }

    #[test]
    #[ignore = "requires a CUDA device"]
    fn losses_match_reference(
        tokens in tokens_strategy(),
        experts in experts_strategy(),
        k in 1..=8usize,
        seed in any::<u64>(),
    ) {
        let tokens = tokens.min(1_000_000 / experts).max(1);
        check_losses(tokens, experts, k.min(experts), seed);
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn route_backward_edge_shapes_and_coefficients() {
    let zero = AuxLossCoefficients::default();
    let lb_only = AuxLossCoefficients {
        load_balancing: 0.01,
        z_loss: 0.0,
    };
    let z_only = AuxLossCoefficients {
        load_balancing: 0.0,
        z_loss: 1e-3,
    };
    let both = AuxLossCoefficients {
        load_balancing: 0.5,
        z_loss: 0.1,
    };
    // (1, 1, 1): a single expert; k > 32 and k = E exercise the chunked
    // slot scatter; 1024 the largest register tile.
    for (tokens, experts, k) in [
        (1, 1, 1),
        (1, 128, 8),
        (7, 32, 32),
        (5, 33, 33),
        (130, 128, 8),
        (3, 1024, 40),
        (2, 1000, 1000),
        (257, 1000, 8),
    ] {
        for renormalize in [false, true] {
            for aux in [zero, lb_only, z_only, both] {
                random_backward_case(tokens, experts, k, renormalize, Some(aux), 7);
            }
        }
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn route_backward_accumulates_repeated_ids_and_is_deterministic() {
    let mut rng = StdRng::seed_from_u64(3);
    let (tokens, experts, k) = (37, 40, 6);
    let x = logits(&mut rng, tokens, experts);
    let mut host = dropless::reference::routing::route(x.view(), k, true).unwrap();
    // Repeat slot 0's expert in slots 2 and 5 of every other token.
    for t in (0..tokens).step_by(2) {
        let e = host.expert_ids[[t, 0]];
        host.expert_ids[[t, 2]] = e;
        host.expert_ids[[t, 5]] = e;
    }
    let routed = upload_routing(host, experts);
    let grad_weights = Array2::from_shape_simple_fn((tokens, k), || signed_value(&mut rng));
    let aux = coefficients(&mut rng);
    for renormalize in [false, true] {
        let first = check_backward(&x, &routed, &grad_weights, renormalize, aux);
        let again = route_backward(
            backend(),
            &upload2(x.view()),
            &routed.device,
            &upload2(grad_weights.view()),
            &routed.counts,
            renormalize,
            aux,
        )
        .unwrap()
        .to_host(backend())
        .unwrap();
        assert!(
            first
                .iter()
                .zip(&again)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "route_backward is deterministic"
        );
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn losses_over_many_ctas() {
    // 20000 tokens = 2500 warps' worth of CTAs, so the partials grid is capped
    // at 1024 CTAs and each warp loops over several tokens.
    for (tokens, experts, k, seed) in [(20_000, 8, 2, 1), (8 * 1024, 64, 4, 2), (1, 1, 1, 3)] {
        check_losses(tokens, experts, k, seed);
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn losses_of_uniform_router_and_balanced_routing() {
    // Uniform probabilities: the load-balancing loss is exactly 1 whatever
    // the counts sum to T * k; equal logits give lse = l + ln E.
    let b = backend();
    let (tokens, experts, k) = (96, 8, 2);
    let probs = Array2::from_elem((tokens, experts), 1.0f32 / experts as f32);
    let counts = Array1::from(vec![(tokens * k / experts) as i32; experts]);
    let loss = load_balancing_loss(
        b,
        &upload2(probs.view()),
        &upload(&[experts], counts.as_slice().unwrap()),
        k,
    )
    .unwrap();
    assert_loss(&loss, 1.0, "uniform load_balancing_loss");
    let x = Array2::from_elem((tokens, experts), 0.5f32);
    let lse = 0.5 + (experts as f32).ln();
    assert_loss(
        &router_z_loss(b, &upload2(x.view())).unwrap(),
        lse * lse,
        "constant router_z_loss",
    );
}

#[test]
#[ignore = "requires a CUDA device"]
fn bad_shapes_are_rejected_before_launch() {
    let b = backend();
    let mut rng = StdRng::seed_from_u64(1);
    let (tokens, experts, k) = (6, 8, 2);
    let x = logits(&mut rng, tokens, experts);
    let routed = route_on_device(&x, k, true);
    let d_x = upload2(x.view());
    let aux = AuxLossCoefficients::default();
    let gw = upload(&[tokens, k], &vec![0.5f32; tokens * k]);
    let bad_gw = upload(&[tokens, k + 1], &vec![0.5f32; tokens * (k + 1)]);
    assert!(matches!(
        route_backward(b, &d_x, &routed.device, &bad_gw, &routed.counts, true, aux),
        Err(Error::ShapeMismatch { .. })
    ));
    let bad_counts = upload(&[experts - 1], &vec![1i32; experts - 1]);
    assert!(matches!(
        route_backward(b, &d_x, &routed.device, &gw, &bad_counts, true, aux),
        Err(Error::ShapeMismatch { .. })
    ));
    let other_x = upload(
        &[tokens + 1, experts],
        &vec![0.0f32; (tokens + 1) * experts],
    );
    assert!(matches!(
        route_backward(b, &other_x, &routed.device, &gw, &routed.counts, true, aux),
        Err(Error::ShapeMismatch { .. })
    ));
    let nan_aux = AuxLossCoefficients {
        load_balancing: f32::NAN,
        z_loss: 0.0,
    };
    assert!(matches!(
        route_backward(b, &d_x, &routed.device, &gw, &routed.counts, true, nan_aux),
        Err(Error::InvalidConfig(_))
    ));
    let mut bad_out = filled(&[tokens, experts + 1], f32::NAN);
    assert!(matches!(
        route_backward_into(
            b,
            &d_x,
            &routed.device,
            &gw,
            &routed.counts,
            true,
            aux,
            &mut bad_out
        ),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        load_balancing_loss(b, &routed.device.probs, &routed.counts, 0),
        Err(Error::InvalidTopK { .. })
    ));
    assert!(matches!(
        load_balancing_loss(b, &routed.device.probs, &bad_counts, k),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut two = filled(&[2], f32::NAN);
    assert!(matches!(
        router_z_loss_into(b, &d_x, &mut two),
        Err(Error::ShapeMismatch { .. })
    ));
    let flat = upload(&[tokens * experts], &vec![0.0f32; tokens * experts]);
    assert!(matches!(
        router_z_loss(b, &flat),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
#[ignore = "requires a CUDA device"]
fn masked_experts_get_no_gradient_and_no_loss() {
    // A logit of -inf masks its expert: probability 0, never routed, zero
    // logit gradient; the z-loss and the load-balancing loss match the
    // reference, which treats -inf the same way.
    let b = backend();
    let (tokens, experts, top_k) = (70usize, 40usize, 4usize);
    let mut rng = StdRng::seed_from_u64(77);
    let mut x = logits(&mut rng, tokens, experts);
    for t in 0..tokens {
        for e in 0..experts {
            if (t + 3 * e) % 5 == 0 || e == 33 {
                x[[t, e]] = f32::NEG_INFINITY;
            }
        }
    }
    for renormalize in [false, true] {
        let routed = route_on_device(&x, top_k, renormalize);
        assert!(routed.host.expert_ids.iter().all(|&e| e != 33));
        let aux = coefficients(&mut rng);
        let grad_weights = Array2::from_shape_simple_fn((tokens, top_k), || signed_value(&mut rng));
        let got = check_backward(&x, &routed, &grad_weights, renormalize, aux);
        for t in 0..tokens {
            for e in 0..experts {
                if x[[t, e]] == f32::NEG_INFINITY {
                    assert_eq!(routed.host.probs[[t, e]], 0.0);
                    assert_eq!(got[t * experts + e], 0.0, "dlogits[{t}, {e}]");
                }
            }
        }
        let z = router_z_loss(b, &upload2(x.view())).unwrap();
        assert_loss(&z, rl::router_z_loss(x.view()).unwrap(), "masked z-loss");
        let lbl = load_balancing_loss(b, &routed.device.probs, &routed.counts, top_k).unwrap();
        let want = rl::load_balancing_loss(
            routed.host.probs.view(),
            routed.host.expert_ids.view(),
            experts,
        )
        .unwrap();
        assert_loss(&lbl, want, "masked load-balancing loss");
    }
}
