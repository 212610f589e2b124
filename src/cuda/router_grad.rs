//! The router's backward and the auxiliary router losses on the device: the
//! counterparts of [`crate::reference::router_grad::route_backward`] and of
//! [`crate::reference::loss::load_balancing_loss`] /
//! [`crate::reference::loss::router_z_loss`].
//!
//! The losses are deterministic two-pass reductions (per-CTA partials in a
//! fixed order, then one CTA sums them in a fixed order): the same inputs give
//! bitwise the same loss on every run. Nothing here synchronises the host, so
//! non-finite inputs are not rejected: they propagate as NaN (check the logits
//! with [`super::routing::DeviceRouting::check_finite`]).

use cudarc::driver::PushKernelArg;

use super::kernels::{launch_1d, ROUTER_GRAD};
use super::routing::{lane_variant, DeviceRouting, MAX_ROUTER_EXPERTS};
use super::{CudaBackend, DeviceTensor};
use crate::checks::{check_router_dims, check_top_k};
use crate::config::AuxLossCoefficients;
use crate::error::{check_i32, product, Error, Result};

/// Threads per CTA of every kernel here (8 warps).
const THREADS: u32 = 256;

/// Tokens per CTA of the backward kernel (one warp each).
const TOKENS_PER_CTA: usize = 8;

/// Most CTAs (and so partial sums) of a loss reduction.
const MAX_LOSS_CTAS: usize = 1024;

/// How far past the last token the kernels' i32 token index may step: one
/// grid-stride of the largest loss grid.
const TOKEN_SLACK: usize = TOKENS_PER_CTA * MAX_LOSS_CTAS;

/// The shapes of a [`route_backward`] call, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BackwardDims {
    tokens: usize,
    experts: usize,
    top_k: usize,
}

/// Rejects a shape that is not `want`.
fn expect_shape(op: &'static str, name: &str, found: &[usize], want: &[usize]) -> Result<()> {
    if found != want {
        return Err(Error::ShapeMismatch {
            op,
            message: format!("{name} must be {want:?}, found {found:?}"),
        });
    }
    Ok(())
}

/// Checks a `[tokens, experts]` router matrix: 2-D, non-empty, i32-indexable.
fn check_router_matrix(op: &'static str, name: &str, shape: &[usize]) -> Result<(usize, usize)> {
    let [tokens, experts] = shape[..] else {
        return Err(Error::ShapeMismatch {
            op,
            message: format!("{name} must be [tokens, experts], found {shape:?}"),
        });
    };
    check_router_dims(op, tokens, experts)?;
    // The kernels' token index runs up to `tokens + TOKEN_SLACK` before it
    // stops.
    check_i32("tokens + 8192", tokens as u128 + TOKEN_SLACK as u128)?;
    Ok((tokens, experts))
}

/// Checks the operands of [`route_backward`] (shapes in argument order) and
/// returns the dimensions.
fn check_backward_shapes(
    logits: &[usize],
    probs: &[usize],
    expert_ids: &[usize],
    weights: &[usize],
    grad_weights: &[usize],
    tokens_per_expert: &[usize],
) -> Result<BackwardDims> {
    const OP: &str = "route_backward";
    let (tokens, experts) = check_router_matrix(OP, "logits", logits)?;
    if experts > MAX_ROUTER_EXPERTS {
        return Err(Error::InvalidConfig(format!(
            "the CUDA router backward supports at most {MAX_ROUTER_EXPERTS} experts, found {experts}"
        )));
    }
    expect_shape(OP, "routing.probs", probs, &[tokens, experts])?;
    let top_k = match expert_ids[..] {
        [rows, k] if rows == tokens => k,
        _ => {
            return Err(Error::ShapeMismatch {
                op: OP,
                message: format!(
                    "routing.expert_ids must be [tokens, top_k] = [{tokens}, top_k], found {expert_ids:?}"
                ),
            })
        }
    };
    check_top_k(top_k, experts)?;
    check_i32("tokens x top_k", product(&[tokens, top_k]))?;
    expect_shape(OP, "routing.weights", weights, &[tokens, top_k])?;
    expect_shape(OP, "grad_weights", grad_weights, &[tokens, top_k])?;
    expect_shape(OP, "tokens_per_expert", tokens_per_expert, &[experts])?;
    Ok(BackwardDims {
        tokens,
        experts,
        top_k,
    })
}

/// [`check_backward_shapes`] of the device operands of [`route_backward`].
fn backward_dims(
    logits: &DeviceTensor<f32>,
    routing: &DeviceRouting,
    grad_weights: &DeviceTensor<f32>,
    tokens_per_expert: &DeviceTensor<i32>,
) -> Result<BackwardDims> {
    check_backward_shapes(
        logits.shape(),
        routing.probs.shape(),
        routing.expert_ids.shape(),
        routing.weights.shape(),
        grad_weights.shape(),
        tokens_per_expert.shape(),
    )
}

/// Checks that the auxiliary loss coefficients are finite.
fn check_coefficients(aux: &AuxLossCoefficients) -> Result<()> {
    for (name, value) in [
        ("load_balancing", aux.load_balancing),
        ("z_loss", aux.z_loss),
    ] {
        if !value.is_finite() {
            return Err(Error::InvalidConfig(format!(
                "the auxiliary loss coefficient {name} must be finite, found {value}"
            )));
        }
    }
    Ok(())
}

/// The kernel's scales `(lb_scale, z_scale)`: the gradient of
/// `load_balancing * E * sum_e f_e P_e` w.r.t. `probs[t, e]` is
/// `lb_scale * count_e`, that of `z_loss * mean_t lse_t^2` w.r.t.
/// `logits[t, e]` is `z_scale * lse_t * probs[t, e]`. Computed in f64.
fn backward_scales(dims: BackwardDims, aux: &AuxLossCoefficients) -> (f32, f32) {
    let (t, e, k) = (dims.tokens as f64, dims.experts as f64, dims.top_k as f64);
    let lb = f64::from(aux.load_balancing) * e / (t * t * k);
    let z = 2.0 * f64::from(aux.z_loss) / t;
    (lb as f32, z as f32)
}

/// The gradient of the router logits (`[tokens, experts]` f32) from the
/// gradient of the routing weights, plus the gradients of the auxiliary
/// losses scaled by `aux`; see
/// [`crate::reference::router_grad::route_backward`].
///
/// `routing` is the forward's [`DeviceRouting`] of `logits` (its `probs`,
/// `expert_ids` and `weights` are read), `grad_weights` is `[tokens, top_k]`
/// f32. Unlike the CPU reference, the device needs `tokens_per_expert`
/// (`[experts]` i32, the histogram of `routing.expert_ids`, as returned by
/// [`super::histogram::histogram`]) for the load-balancing term, because it
/// does not recount on the host. `renormalize` must be the forward's.
///
/// Expert ids outside `0..experts` contribute nothing (the device router never
/// writes them); `logits` is only read when `aux.z_loss != 0`.
///
/// Errors: [`Error::ShapeMismatch`], [`Error::Empty`], [`Error::InvalidTopK`],
/// [`Error::InvalidConfig`] past [`MAX_ROUTER_EXPERTS`] experts or for a
/// non-finite coefficient, [`Error::IndexOverflow`].
pub fn route_backward(
    backend: &CudaBackend,
    logits: &DeviceTensor<f32>,
    routing: &DeviceRouting,
    grad_weights: &DeviceTensor<f32>,
    tokens_per_expert: &DeviceTensor<i32>,
    renormalize: bool,
    aux: AuxLossCoefficients,
) -> Result<DeviceTensor<f32>> {
    let dims = backward_dims(logits, routing, grad_weights, tokens_per_expert)?;
    let mut out = DeviceTensor::zeros(backend, &[dims.tokens, dims.experts])?;
    route_backward_into(
        backend,
        logits,
        routing,
        grad_weights,
        tokens_per_expert,
        renormalize,
        aux,
        &mut out,
    )?;
    Ok(out)
}

/// [`route_backward`] into a caller-provided `[tokens, experts]` f32 output
/// (e.g. poisoned in tests); every element is written.
#[allow(clippy::too_many_arguments)]
pub fn route_backward_into(
    backend: &CudaBackend,
    logits: &DeviceTensor<f32>,
    routing: &DeviceRouting,
    grad_weights: &DeviceTensor<f32>,
    tokens_per_expert: &DeviceTensor<i32>,
    renormalize: bool,
    aux: AuxLossCoefficients,
    out: &mut DeviceTensor<f32>,
) -> Result<()> {
    let dims = backward_dims(logits, routing, grad_weights, tokens_per_expert)?;
    check_coefficients(&aux)?;
    expect_shape(
        "route_backward",
        "the output",
        out.shape(),
        &[dims.tokens, dims.experts],
    )?;
    let (lb_scale, z_scale) = backward_scales(dims, &aux);
    let func = backend.function(
        ROUTER_GRAD,
        &lane_variant("dl_route_backward", dims.experts),
    )?;
    let cfg = launch_1d(dims.tokens.div_ceil(TOKENS_PER_CTA), THREADS, 0);
    let (t_i32, e_i32, k_i32, renorm) = (
        dims.tokens as i32,
        dims.experts as i32,
        dims.top_k as i32,
        i32::from(renormalize),
    );
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(logits.slice())
        .arg(routing.probs.slice())
        .arg(routing.expert_ids.slice())
        .arg(routing.weights.slice())
        .arg(grad_weights.slice())
        .arg(tokens_per_expert.slice())
        .arg(&t_i32)
        .arg(&e_i32)
        .arg(&k_i32)
        .arg(&renorm)
        .arg(&lb_scale)
        .arg(&z_scale)
        .arg(out.slice_mut());
    // SAFETY: dl_route_backward_vN(const float* logits, const float* probs,
    // const i32* expert_ids, const float* weights, const float* grad_weights,
    // const i32* counts, i32 tokens, i32 E, i32 k, i32 renormalize,
    // float lb_scale, float z_scale, float* dlogits) reads logits / probs
    // [0..tokens*E), expert_ids / weights / grad_weights [0..tokens*k),
    // counts [0..E), probs[t*E + id] only for ids in [0, E), and writes
    // dlogits [0..tokens*E): every buffer was checked to have exactly its
    // shape. 1 <= k <= E <= 32 * N is guaranteed by the checks and
    // `lane_variant`; tokens * E and tokens * k fit i32. The grid
    // covers ceil(tokens / 8) CTAs of 8 warps, no dynamic shared memory.
    unsafe { launch.launch(cfg) }?;
    Ok(())
}

/// Number of CTAs (= partial sums) of a loss reduction over `tokens` tokens.
fn loss_ctas(tokens: usize) -> usize {
    tokens.div_ceil(TOKENS_PER_CTA).clamp(1, MAX_LOSS_CTAS)
}

/// Checks the operands of [`load_balancing_loss`]; returns `(tokens, experts)`.
fn check_load_balancing_shapes(
    probs: &[usize],
    tokens_per_expert: &[usize],
    top_k: usize,
) -> Result<(usize, usize)> {
    const OP: &str = "load_balancing_loss";
    let (tokens, experts) = check_router_matrix(OP, "probs", probs)?;
    expect_shape(OP, "tokens_per_expert", tokens_per_expert, &[experts])?;
    check_top_k(top_k, experts)?;
    check_i32("tokens x top_k", product(&[tokens, top_k]))?;
    Ok((tokens, experts))
}

/// Checks a `[1]` f32 loss output.
fn check_loss_output(op: &'static str, out: &[usize]) -> Result<()> {
    expect_shape(op, "the output", out, &[1])
}

/// A loss reduction over the `[tokens, experts]` f32 `x`: the partials kernel
/// `kernel` (one f32 per CTA; it takes the `[experts]` i32 `counts` after `x`
/// when given), then `out[0] = scale * sum(partials)` (see [`finish_loss`]).
fn reduce_loss(
    backend: &CudaBackend,
    kernel: &str,
    x: &DeviceTensor<f32>,
    counts: Option<&DeviceTensor<i32>>,
    (tokens, experts): (usize, usize),
    scale: f32,
    out: &mut DeviceTensor<f32>,
) -> Result<()> {
    let ctas = loss_ctas(tokens);
    let mut partials = DeviceTensor::<f32>::zeros(backend, &[ctas])?;
    let (t_i32, e_i32) = (tokens as i32, experts as i32);
    let func = backend.function(ROUTER_GRAD, kernel)?;
    let mut launch = backend.stream().launch_builder(&func);
    launch.arg(x.slice());
    if let Some(counts) = counts {
        launch.arg(counts.slice());
    }
    launch.arg(&t_i32).arg(&e_i32).arg(partials.slice_mut());
    // SAFETY: dl_load_balancing_loss_partials(const float* probs,
    // const i32* counts, i32 tokens, i32 E, float* partials) (given counts)
    // and dl_router_z_loss_partials(const float* logits, i32 tokens, i32 E,
    // float* partials) read x[0..tokens*E) and counts[0..E) (shapes checked by
    // the callers, tokens * E fits i32) and write partials[blockIdx.x] for a
    // grid of exactly partials.len() CTAs of 256 threads; static shared memory
    // only.
    unsafe { launch.launch(launch_1d(ctas, THREADS, 0)) }?;
    finish_loss(backend, &partials, scale, out)
}

/// Writes `out[0] = scale * sum(partials)`, summed in a fixed order.
fn finish_loss(
    backend: &CudaBackend,
    partials: &DeviceTensor<f32>,
    scale: f32,
    out: &mut DeviceTensor<f32>,
) -> Result<()> {
    let func = backend.function(ROUTER_GRAD, "dl_loss_finish")?;
    let cfg = launch_1d(1, THREADS, 0);
    let n = partials.len() as i32;
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(partials.slice())
        .arg(&n)
        .arg(&scale)
        .arg(out.slice_mut());
    // SAFETY: dl_loss_finish(const float* partials, i32 n, float scale,
    // float* out) reads partials[0..n) (n = the tensor's length, 1..=1024,
    // from `reduce_loss`) and writes out[0] (the callers checked out is
    // [1]); one CTA of 256 threads, static shared memory only.
    unsafe { launch.launch(cfg) }?;
    Ok(())
}

/// The load-balancing loss `E * sum_e f_e * P_e` as a `[1]` f32 tensor on the
/// device; see [`crate::reference::loss::load_balancing_loss`].
///
/// `probs` is `[tokens, experts]` f32 (the router's softmax); the device takes
/// the expert counts `tokens_per_expert` (`[experts]` i32, the histogram of
/// the `[tokens, top_k]` expert ids) and `top_k` instead of the ids, so
/// `f_e = tokens_per_expert[e] / (tokens * top_k)`.
///
/// Errors: [`Error::ShapeMismatch`], [`Error::Empty`], [`Error::InvalidTopK`],
/// [`Error::IndexOverflow`].
pub fn load_balancing_loss(
    backend: &CudaBackend,
    probs: &DeviceTensor<f32>,
    tokens_per_expert: &DeviceTensor<i32>,
    top_k: usize,
) -> Result<DeviceTensor<f32>> {
    check_load_balancing_shapes(probs.shape(), tokens_per_expert.shape(), top_k)?;
    let mut out = DeviceTensor::zeros(backend, &[1])?;
    load_balancing_loss_into(backend, probs, tokens_per_expert, top_k, &mut out)?;
    Ok(out)
}

/// [`load_balancing_loss`] into a caller-provided `[1]` f32 output.
pub fn load_balancing_loss_into(
    backend: &CudaBackend,
    probs: &DeviceTensor<f32>,
    tokens_per_expert: &DeviceTensor<i32>,
    top_k: usize,
    out: &mut DeviceTensor<f32>,
) -> Result<()> {
    const OP: &str = "load_balancing_loss";
    let (tokens, experts) =
        check_load_balancing_shapes(probs.shape(), tokens_per_expert.shape(), top_k)?;
    check_loss_output(OP, out.shape())?;
    // E * sum_e (c_e / (T k)) * (sum_t p[t, e] / T) = scale * sum_t sum_e p[t, e] c_e.
    let (t, e, k) = (tokens as f64, experts as f64, top_k as f64);
    let scale = (e / (t * t * k)) as f32;
    reduce_loss(
        backend,
        "dl_load_balancing_loss_partials",
        probs,
        Some(tokens_per_expert),
        (tokens, experts),
        scale,
        out,
    )
}

/// The router z-loss, the mean over tokens of `logsumexp(logits[t])^2`, as a
/// `[1]` f32 tensor on the device; see
/// [`crate::reference::loss::router_z_loss`]. `logits` is `[tokens, experts]`.
///
/// Errors: [`Error::ShapeMismatch`], [`Error::Empty`], [`Error::IndexOverflow`].
pub fn router_z_loss(
    backend: &CudaBackend,
    logits: &DeviceTensor<f32>,
) -> Result<DeviceTensor<f32>> {
    check_router_matrix("router_z_loss", "logits", logits.shape())?;
    let mut out = DeviceTensor::zeros(backend, &[1])?;
    router_z_loss_into(backend, logits, &mut out)?;
    Ok(out)
}

/// [`router_z_loss`] into a caller-provided `[1]` f32 output.
pub fn router_z_loss_into(
    backend: &CudaBackend,
    logits: &DeviceTensor<f32>,
    out: &mut DeviceTensor<f32>,
) -> Result<()> {
    const OP: &str = "router_z_loss";
    let (tokens, experts) = check_router_matrix(OP, "logits", logits.shape())?;
    check_loss_output(OP, out.shape())?;
    let scale = (1.0 / tokens as f64) as f32;
    reduce_loss(
        backend,
        "dl_router_z_loss_partials",
        logits,
        None,
        (tokens, experts),
        scale,
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aux(load_balancing: f32, z_loss: f32) -> AuxLossCoefficients {
        AuxLossCoefficients {
            load_balancing,
            z_loss,
        }
    }

    #[test]
    fn backward_shapes_are_checked() {
        let ok = check_backward_shapes(&[5, 8], &[5, 8], &[5, 2], &[5, 2], &[5, 2], &[8]);
        assert_eq!(
            ok.unwrap(),
            BackwardDims {
                tokens: 5,
                experts: 8,
                top_k: 2
            }
        );
        let cases: [[&[usize]; 6]; 8] = [
            [&[5], &[5, 8], &[5, 2], &[5, 2], &[5, 2], &[8]],
            [&[5, 8], &[5, 7], &[5, 2], &[5, 2], &[5, 2], &[8]],
            [&[5, 8], &[5, 8], &[4, 2], &[5, 2], &[5, 2], &[8]],
            [&[5, 8], &[5, 8], &[5, 2, 1], &[5, 2], &[5, 2], &[8]],
            [&[5, 8], &[5, 8], &[5, 2], &[5, 3], &[5, 2], &[8]],
            [&[5, 8], &[5, 8], &[5, 2], &[5, 2], &[2, 5], &[8]],
            [&[5, 8], &[5, 8], &[5, 2], &[5, 2], &[5, 2], &[7]],
            [&[5, 8], &[5, 8], &[5, 2], &[5, 2], &[5, 2], &[8, 1]],
        ];
        for [l, p, i, w, g, c] in cases {
            assert!(
                matches!(
                    check_backward_shapes(l, p, i, w, g, c),
                    Err(Error::ShapeMismatch { .. })
                ),
                "{l:?} {p:?} {i:?} {w:?} {g:?} {c:?}"
            );
        }
        assert!(matches!(
            check_backward_shapes(&[0, 8], &[0, 8], &[0, 2], &[0, 2], &[0, 2], &[8]),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            check_backward_shapes(&[5, 0], &[5, 0], &[5, 1], &[5, 1], &[5, 1], &[0]),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            check_backward_shapes(&[5, 8], &[5, 8], &[5, 0], &[5, 0], &[5, 0], &[8]),
            Err(Error::InvalidTopK { .. })
        ));
        assert!(matches!(
            check_backward_shapes(&[5, 8], &[5, 8], &[5, 9], &[5, 9], &[5, 9], &[8]),
            Err(Error::InvalidTopK { .. })
        ));
        assert!(matches!(
            check_backward_shapes(&[5, 1025], &[5, 1025], &[5, 2], &[5, 2], &[5, 2], &[1025]),
            Err(Error::InvalidConfig(_))
        ));
        assert!(check_backward_shapes(
            &[3, 1024],
            &[3, 1024],
            &[3, 1024],
            &[3, 1024],
            &[3, 1024],
            &[1024]
        )
        .is_ok());
        let t = 1 << 22;
        assert!(matches!(
            check_backward_shapes(&[t, 1024], &[t, 1024], &[t, 8], &[t, 8], &[t, 8], &[1024]),
            Err(Error::IndexOverflow { .. })
        ));
    }

    #[test]
    fn coefficients_must_be_finite() {
        assert!(check_coefficients(&aux(0.01, 1e-3)).is_ok());
        assert!(check_coefficients(&aux(0.0, 0.0)).is_ok());
        for bad in [aux(f32::NAN, 0.0), aux(0.0, f32::INFINITY)] {
            assert!(matches!(
                check_coefficients(&bad),
                Err(Error::InvalidConfig(_))
            ));
        }
    }

    #[test]
    fn scales_match_the_loss_gradients() {
        let dims = BackwardDims {
            tokens: 10,
            experts: 4,
            top_k: 2,
        };
        let (lb, z) = backward_scales(dims, &aux(0.5, 0.25));
        // d/dp[t, e] of 0.5 * E * sum_e (c_e / (T k)) (sum_t p / T).
        assert!((lb - 0.5 * 4.0 / (10.0 * 10.0 * 2.0)).abs() < 1e-9);
        assert!((z - 2.0 * 0.25 / 10.0).abs() < 1e-9);
        assert_eq!(backward_scales(dims, &aux(0.0, 0.0)), (0.0, 0.0));
    }

    #[test]
    fn backward_kernel_covers_the_experts() {
        for (experts, vpt) in [
            (1, 1),
            (32, 1),
            (33, 2),
            (64, 2),
            (65, 4),
            (128, 4),
            (129, 8),
            (256, 8),
            (257, 16),
            (512, 16),
            (513, 32),
            (1024, 32),
        ] {
            let name = lane_variant("dl_route_backward", experts);
            assert_eq!(
                name,
                format!("dl_route_backward_v{vpt}"),
                "{experts} experts"
            );
            assert!(experts <= 32 * vpt);
        }
    }

    #[test]
    fn loss_shapes_are_checked() {
        assert_eq!(
            check_load_balancing_shapes(&[5, 8], &[8], 2).unwrap(),
            (5, 8)
        );
        assert!(matches!(
            check_load_balancing_shapes(&[5, 8], &[7], 2),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            check_load_balancing_shapes(&[40], &[8], 2),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            check_load_balancing_shapes(&[0, 8], &[8], 2),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            check_load_balancing_shapes(&[5, 8], &[8], 0),
            Err(Error::InvalidTopK { .. })
        ));
        assert!(matches!(
            check_load_balancing_shapes(&[5, 8], &[8], 9),
            Err(Error::InvalidTopK { .. })
        ));
        assert!(matches!(
            check_router_matrix("router_z_loss", "logits", &[1 << 16, 1 << 16]),
            Err(Error::IndexOverflow { .. })
        ));
        assert!(matches!(
            check_router_matrix("router_z_loss", "logits", &[i32::MAX as usize - 8000, 1]),
            Err(Error::IndexOverflow { .. })
        ));
        let most = i32::MAX as usize - TOKEN_SLACK;
        assert!(check_router_matrix("router_z_loss", "logits", &[most, 1]).is_ok());
        assert!(check_loss_output("router_z_loss", &[1]).is_ok());
        assert!(matches!(
            check_loss_output("router_z_loss", &[1, 1]),
            Err(Error::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn loss_grid_is_bounded() {
        assert_eq!(loss_ctas(1), 1);
        assert_eq!(loss_ctas(8), 1);
        assert_eq!(loss_ctas(9), 2);
        assert_eq!(loss_ctas(8 * 1024), 1024);
        assert_eq!(loss_ctas(1 << 30), MAX_LOSS_CTAS);
    }
}
