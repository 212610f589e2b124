//! Expert activations in f32: GeLU (tanh approximation, as MegaBlocks and
//! `F.gelu(approximate="tanh")`) and SiLU, with their derivatives; the exact
//! (erf) GeLU of `nn.GELU()`.

/// `sqrt(2 / pi)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh approximation.
const GELU_COEFF: f32 = 0.044_715;

/// GeLU, tanh approximation: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + GELU_COEFF * x * x * x);
    0.5 * x * (1.0 + u.tanh())
}

/// Derivative of [`gelu`] with respect to `x`.
pub fn gelu_grad(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + GELU_COEFF * x * x * x);
    let th = u.tanh();
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_COEFF * x * x);
    0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du
}

/// The logistic sigmoid `1 / (1 + exp(-x))`.
#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `e^x` within 2 ulp of the exact value for `x` in `[-87, 88]`, clamped to
/// that range outside it (so `exp(-100)` is `e^-87`, a value no sum of these
/// activations tells from 0, and `exp(100)` is finite); NaN stays NaN.
///
/// Branch-free and without library calls, so loops over it vectorise: Cody
/// and Waite's reduction `x = n ln 2 + r`, `|r| <= ln 2 / 2`, then Cephes'
/// degree-7 polynomial for `e^r`, scaled by `2^n` through the exponent bits.
#[inline]
fn exp(x: f32) -> f32 {
    /// 1.5 * 2^23: adding it rounds an f32 of magnitude below 2^22 to an
    /// integer, held in the low mantissa bits of the sum.
    const ROUND: f32 = 12_582_912.0;
    /// ln 2 in two parts, the first with few mantissa bits so that `n *
    /// LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // `clamp` passes NaN through, so NaN in is NaN out.
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // The low bits of `t` are `n` (in [-126, 127] after the clamp) plus
    // 2^22; rebuilt as the exponent field of 2^n.
    let n_bits = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits((n_bits.wrapping_add(127) as u32) << 23);
    e_r * scale
}

/// SiLU (swish): `x * sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// Derivative of [`silu`] with respect to `x`: `s (1 + x (1 - s))`, `s = sigmoid(x)`.
pub fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

/// The error function, from the Chebyshev fit of `erfc` (Numerical Recipes'
/// `erfcc`, fractional error below 1.2e-7) evaluated in f64.
pub fn erf(x: f32) -> f32 {
    let z = f64::from(x).abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    (if x >= 0.0 { 1.0 - erfc } else { erfc - 1.0 }) as f32
}

/// GeLU, exact form: `0.5 x (1 + erf(x / sqrt(2)))` (`nn.GELU()`).
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::exp;

    /// Distance in units in the last place between two positive f32.
    fn ulps(a: f32, b: f32) -> u32 {
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value() {
        let mut worst = (0, 0.0);
        for i in 0..=1_750_000 {
            let x = -87.0 + i as f32 * 1e-4;
            let err = ulps(exp(x), f64::from(x).exp() as f32);
            if err > worst.0 {
                worst = (err, x);
            }
        }
        assert!(worst.0 <= 2, "{} ulp at x = {}", worst.0, worst.1);
    }

    #[test]
    fn exp_clamps_its_range_and_keeps_nan() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(1000.0), exp(88.0));
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(88.0).is_finite() && exp(-87.0) > 0.0);
        assert!(exp(f32::NAN).is_nan());
    }
}
