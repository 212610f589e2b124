//! The fused router on the device: softmax over all experts, top-k of the
//! probabilities and optional renormalisation, in one kernel (one warp per
//! token). The device counterpart of [`crate::reference::routing::route`].

use cudarc::driver::PushKernelArg;

use super::finite::{class_value, decode_status, Flagged};
use super::kernels::{launch_1d, ROUTING};
use super::{CudaBackend, DeviceTensor};
use crate::checks::{check_nonempty, check_top_k};
use crate::error::{check_i32, product, Error, Result};

/// Largest number of experts the router kernel holds in registers
/// (32 lanes x 32 values).
pub const MAX_ROUTER_EXPERTS: usize = 1024;

/// Tokens per 256-thread CTA (one warp each).
const TOKENS_PER_CTA: usize = 8;

/// The routing decision of a batch on the device.
#[derive(Debug)]
pub struct DeviceRouting {
    /// `[tokens, experts]` f32: softmax of the logits over all experts, 0
    /// for an expert masked by a `-inf` logit (NaN rows for the tokens the
    /// status flags).
    pub probs: DeviceTensor<f32>,
    /// `[tokens, top_k]` i32: chosen experts by descending probability (ties:
    /// lower id first), never a masked one. Always in `0..experts`, also for
    /// flagged rows (which get `0..top_k`).
    pub expert_ids: DeviceTensor<i32>,
    /// `[tokens, top_k]` f32: the chosen probabilities, renormalised to sum 1
    /// when asked (NaN for flagged rows).
    pub weights: DeviceTensor<f32>,
    /// `[2]` i32, one little-endian 64-bit word: 0 when every token was
    /// routed, else `((0x7fffffff - flat) << 2) | class` for the first bad
    /// token: class 0 / 1 a NaN / `+inf` logit at `flat = token * experts +
    /// expert` (its first), class 2 fewer than `top_k` experts above `-inf`
    /// at `flat = token * experts + routable`. Read it with
    /// [`DeviceRouting::check_finite`].
    pub status: DeviceTensor<i32>,
}

impl DeviceRouting {
    /// Zero-filled outputs for `tokens` tokens, `num_experts` experts and
    /// `top_k` slots (for [`route_into`]).
    pub fn zeros(
        backend: &CudaBackend,
        tokens: usize,
        num_experts: usize,
        top_k: usize,
    ) -> Result<Self> {
        Ok(DeviceRouting {
            probs: DeviceTensor::zeros(backend, &[tokens, num_experts])?,
            expert_ids: DeviceTensor::zeros(backend, &[tokens, top_k])?,
            weights: DeviceTensor::zeros(backend, &[tokens, top_k])?,
            status: DeviceTensor::zeros(backend, &[2])?,
        })
    }

    /// Reads the status word (the one documented host synchronisation of the
    /// routing path): [`Error::NonFinite`] naming the first NaN or `+inf`
    /// logit, or [`Error::TooFewExperts`] for the first token with fewer
    /// than `top_k` experts above `-inf`, whichever token comes first.
    pub fn check_finite(&self, backend: &CudaBackend) -> Result<()> {
        let words = self.status.to_host(backend)?;
        let num_experts = self.probs.shape().get(1).copied().unwrap_or(1);
        let top_k = self.expert_ids.shape().get(1).copied().unwrap_or(1);
        match decode_status(&words)? {
            None => Ok(()),
            Some(flagged) => Err(router_error(flagged, num_experts, top_k)),
        }
    }
}

/// The error of a router status word: class 0 / 1 is a NaN / `+inf` logit
/// at `flat = token * experts + expert`, class 2 a token with too few
/// routable experts at `flat = token * experts + routable`.
pub(crate) fn router_error(flagged: Flagged, num_experts: usize, top_k: usize) -> Error {
    let experts = num_experts.max(1);
    let (row, col) = (flagged.flat / experts, flagged.flat % experts);
    match flagged.class {
        2 => Error::TooFewExperts {
            token: row,
            routable: col,
            needed: top_k,
        },
        class => Error::NonFinite {
            what: "the router logits",
            row,
            col,
            value: class_value(class),
        },
    }
}

/// Checks the router's shapes; returns `(tokens, experts)`.
fn check_route_shapes(logits: &[usize], top_k: usize) -> Result<(usize, usize)> {
    const OP: &str = "route";
    let [tokens, experts] = logits[..] else {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!("logits must be [tokens, experts], found {logits:?}"),
        });
    };
    check_nonempty(OP, "the number of tokens", tokens)?;
    check_nonempty(OP, "the number of experts", experts)?;
    check_top_k(top_k, experts)?;
    if experts > MAX_ROUTER_EXPERTS {
        return Err(Error::InvalidConfig(format!(
            "the CUDA router supports at most {MAX_ROUTER_EXPERTS} experts, found {experts}"
        )));
    }
    check_i32("tokens x experts", product(&[tokens, experts]))?;
    check_i32("tokens x top_k", product(&[tokens, top_k]))?;
    // The kernel's token index runs up to one CTA (8 tokens) past the last.
    check_i32("tokens (+ one CTA)", (tokens + TOKENS_PER_CTA) as u128)?;
    Ok((tokens, experts))
}

/// Checks that `out` has the shapes of routing `tokens x experts` with `top_k`.
fn check_route_outputs(
    out: &DeviceRouting,
    tokens: usize,
    experts: usize,
    top_k: usize,
) -> Result<()> {
    let want: [(&str, &[usize], Vec<usize>); 4] = [
        ("probs", out.probs.shape(), vec![tokens, experts]),
        ("expert_ids", out.expert_ids.shape(), vec![tokens, top_k]),
        ("weights", out.weights.shape(), vec![tokens, top_k]),
        ("status", out.status.shape(), vec![2]),
    ];
    for (name, found, expected) in want {
        if found != expected.as_slice() {
            return Err(Error::ShapeMismatch {
                op: "route",
                message: format!("output {name} must be {expected:?}, found {found:?}"),
            });
        }
    }
    Ok(())
}

/// The instantiation `{stem}_vN` of a router kernel that holds `experts`
/// values in registers, `N` (1, 2, 4, 8, 16 or 32) per lane of the warp.
pub(super) fn lane_variant(stem: &str, experts: usize) -> String {
    let per_lane = experts.div_ceil(32).next_power_of_two().min(32);
    format!("{stem}_v{per_lane}")
}

/// Routes each token of `logits` (`[tokens, experts]` f32) to its `top_k`
/// most probable experts; see [`crate::reference::routing::route`].
///
/// A logit of `-inf` masks its expert (probability 0, never chosen), as in
/// the reference. NaN or `+inf` logits and tokens with fewer than `top_k`
/// routable experts do not fail here (that would need a host sync): call
/// [`DeviceRouting::check_finite`] when the check is wanted.
///
/// Errors: [`Error::ShapeMismatch`] unless logits are 2-D, [`Error::Empty`],
/// [`Error::InvalidTopK`], [`Error::InvalidConfig`] past
/// [`MAX_ROUTER_EXPERTS`], [`Error::IndexOverflow`].
pub fn route(
    backend: &CudaBackend,
    logits: &DeviceTensor<f32>,
    top_k: usize,
    renormalize: bool,
) -> Result<DeviceRouting> {
    let (tokens, experts) = check_route_shapes(logits.shape(), top_k)?;
    let mut out = DeviceRouting::zeros(backend, tokens, experts, top_k)?;
    route_into(backend, logits, top_k, renormalize, &mut out)?;
    Ok(out)
}

/// [`route`] into caller-provided outputs (e.g. poisoned in tests); resets
/// `out.status` before the launch.
pub fn route_into(
    backend: &CudaBackend,
    logits: &DeviceTensor<f32>,
    top_k: usize,
    renormalize: bool,
    out: &mut DeviceRouting,
) -> Result<()> {
    let (tokens, experts) = check_route_shapes(logits.shape(), top_k)?;
    check_route_outputs(out, tokens, experts, top_k)?;
    backend.stream().memset_zeros(out.status.slice_mut())?;
    let func = backend.function(ROUTING, &lane_variant("dl_route", experts))?;
    let cfg = launch_1d(tokens.div_ceil(TOKENS_PER_CTA), 256, 0);
    let (t_i32, e_i32, k_i32, renorm) = (
        tokens as i32,
        experts as i32,
        top_k as i32,
        i32::from(renormalize),
    );
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(logits.slice())
        .arg(&t_i32)
        .arg(&e_i32)
        .arg(&k_i32)
        .arg(&renorm)
        .arg(out.probs.slice_mut())
        .arg(out.expert_ids.slice_mut())
        .arg(out.weights.slice_mut())
        .arg(out.status.slice_mut());
    // SAFETY: dl_route_vN(const float* logits, i32 tokens, i32 E, i32 k,
    // i32 renormalize, float* probs, i32* expert_ids, float* weights,
    // u64* status) reads logits[0..tokens*E) and writes probs[0..tokens*E),
    // expert_ids / weights [0..tokens*k) and the 8-byte status: all buffers
    // were checked to have exactly these shapes (status is two i32 words, and
    // device allocations are 256-byte aligned). 1 <= k <= E <= 32 * N is
    // guaranteed by the checks and `lane_variant`; tokens * E and tokens * k fit
    // i32. The grid covers ceil(tokens / 8) CTAs of 8 warps, no shared memory.
    unsafe { launch.launch(cfg) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked() {
        assert_eq!(check_route_shapes(&[5, 8], 2).unwrap(), (5, 8));
        assert!(matches!(
            check_route_shapes(&[5], 1),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            check_route_shapes(&[0, 8], 1),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            check_route_shapes(&[3, 0], 1),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            check_route_shapes(&[3, 8], 0),
            Err(Error::InvalidTopK { .. })
        ));
        assert!(matches!(
            check_route_shapes(&[3, 8], 9),
            Err(Error::InvalidTopK { .. })
        ));
        assert!(matches!(
            check_route_shapes(&[3, 1025], 2),
            Err(Error::InvalidConfig(_))
        ));
        assert_eq!(check_route_shapes(&[3, 1024], 1024).unwrap(), (3, 1024));
        assert!(matches!(
            check_route_shapes(&[1 << 22, 1024], 8),
            Err(Error::IndexOverflow { .. })
        ));
    }

    #[test]
    fn kernel_covers_the_experts() {
        for (experts, name) in [
            (1, "dl_route_v1"),
            (32, "dl_route_v1"),
            (33, "dl_route_v2"),
            (64, "dl_route_v2"),
            (65, "dl_route_v4"),
            (128, "dl_route_v4"),
            (129, "dl_route_v8"),
            (256, "dl_route_v8"),
            (257, "dl_route_v16"),
            (512, "dl_route_v16"),
            (513, "dl_route_v32"),
            (1024, "dl_route_v32"),
        ] {
            assert_eq!(lane_variant("dl_route", experts), name, "{experts} experts");
        }
    }

    #[test]
    fn status_names_the_token() {
        // flat 19 = token 2, expert 3 with 8 experts; class 1 = +inf.
        let err = router_error(Flagged { flat: 19, class: 1 }, 8, 2);
        assert!(matches!(
            err,
            Error::NonFinite { row: 2, col: 3, value, .. } if value == f32::INFINITY
        ));
        let err = router_error(Flagged { flat: 21, class: 0 }, 8, 2);
        assert!(matches!(err, Error::NonFinite { row: 2, col: 5, value, .. } if value.is_nan()));
        // Class 2: token 2 has 1 routable expert, top_k 2.
        let err = router_error(Flagged { flat: 17, class: 2 }, 8, 2);
        assert_eq!(
            err,
            Error::TooFewExperts {
                token: 2,
                routable: 1,
                needed: 2
            }
        );
    }
}
