//! An exact soft-float core shared by the arithmetic and the conversions:
//! IEEE binary formats unpacked into exact values, exact sums, products,
//! quotients and square roots (with a sticky bit where bits must be
//! dropped), and one rounding routine that packs an exact value back per
//! [`Rounding`] with correct subnormals and overflow.
//!
//! Every NaN result is the format's canonical NaN (all bits but the sign
//! set: `0x7fff`, `0x7fffffff`, `0x7fffffffffffffff`), as the PTX ISA
//! names it for the instructions built on this module.

use super::Rounding;
use std::cmp::Ordering;

/// An IEEE binary interchange format, by its field widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Format {
    exp_bits: u32,
    frac_bits: u32,
}

/// IEEE binary16 (`.f16`).
pub(crate) const F16: Format = Format {
    exp_bits: 5,
    frac_bits: 10,
};
/// bfloat16 (`.bf16`).
pub(crate) const BF16: Format = Format {
    exp_bits: 8,
    frac_bits: 7,
};
/// IEEE binary32 (`.f32`).
pub(crate) const F32: Format = Format {
    exp_bits: 8,
    frac_bits: 23,
};
/// IEEE binary64 (`.f64`).
pub(crate) const F64: Format = Format {
    exp_bits: 11,
    frac_bits: 52,
};

impl Format {
    fn bias(self) -> i32 {
        (1 << (self.exp_bits - 1)) - 1
    }

    /// The exponent of the smallest normal number.
    fn emin(self) -> i32 {
        1 - self.bias()
    }

    /// The exponent of the largest finite number.
    fn emax(self) -> i32 {
        self.bias()
    }

    /// Significand bits, the hidden one included.
    fn precision(self) -> i32 {
        self.frac_bits as i32 + 1
    }

    fn exp_field_max(self) -> u64 {
        (1 << self.exp_bits) - 1
    }

    fn frac_mask(self) -> u64 {
        (1 << self.frac_bits) - 1
    }

    /// The sign bit of the format.
    pub(crate) fn sign_bit(self) -> u64 {
        1 << (self.exp_bits + self.frac_bits)
    }

    /// The canonical NaN: every bit but the sign set.
    pub(crate) fn nan(self) -> u64 {
        self.sign_bit() - 1
    }

    /// Infinity of the given sign.
    pub(crate) fn inf(self, neg: bool) -> u64 {
        self.signed(neg, self.exp_field_max() << self.frac_bits)
    }

    /// Zero of the given sign.
    pub(crate) fn zero(self, neg: bool) -> u64 {
        self.signed(neg, 0)
    }

    fn max_finite(self, neg: bool) -> u64 {
        self.signed(neg, self.inf(false) - 1)
    }

    fn signed(self, neg: bool, magnitude: u64) -> u64 {
        if neg {
            magnitude | self.sign_bit()
        } else {
            magnitude
        }
    }

    /// Whether `bits` is a NaN of this format.
    pub(crate) fn is_nan(self, bits: u64) -> bool {
        bits & (self.sign_bit() - 1) > self.inf(false)
    }

    /// Whether `bits` is a subnormal (nonzero, exponent field zero).
    pub(crate) fn is_subnormal(self, bits: u64) -> bool {
        let magnitude = bits & (self.sign_bit() - 1);
        magnitude != 0 && magnitude >> self.frac_bits == 0
    }

    /// `.ftz`: a subnormal becomes the zero of its sign; anything else is kept.
    pub(crate) fn flush(self, bits: u64) -> u64 {
        if self.is_subnormal(bits) {
            bits & self.sign_bit()
        } else {
            bits
        }
    }

    /// The bit pattern of `1.0`.
    pub(crate) fn one(self) -> u64 {
        (self.bias() as u64) << self.frac_bits
    }
}

/// A finite nonzero value `(-1)^neg * mant * 2^exp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Finite {
    pub(crate) neg: bool,
    pub(crate) exp: i32,
    pub(crate) mant: u64,
}

/// An unpacked floating-point datum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value {
    Nan,
    Inf(bool),
    Zero(bool),
    Finite(Finite),
}

/// Splits `bits` (the low bits of the format's width) into its exact value.
pub(crate) fn unpack(f: Format, bits: u64) -> Value {
    let neg = bits & f.sign_bit() != 0;
    let exp_field = (bits >> f.frac_bits) & f.exp_field_max();
    let frac = bits & f.frac_mask();
    if exp_field == f.exp_field_max() {
        if frac == 0 {
            Value::Inf(neg)
        } else {
            Value::Nan
        }
    } else if exp_field == 0 {
        if frac == 0 {
            Value::Zero(neg)
        } else {
            Value::Finite(Finite {
                neg,
                exp: f.emin() - f.frac_bits as i32,
                mant: frac,
            })
        }
    } else {
        Value::Finite(Finite {
            neg,
            exp: exp_field as i32 - f.bias() - f.frac_bits as i32,
            mant: frac | (1 << f.frac_bits),
        })
    }
}

/// `mant >> shift` rounded per `mode` for a value of sign `neg`.
/// Returns the rounded quotient and whether any bit was dropped.
fn shift_round(mant: u128, shift: u32, neg: bool, mode: Rounding) -> (u128, bool) {
    if shift == 0 {
        return (mant, false);
    }
    let (kept, halfway) = match shift {
        1..=127 => {
            let rem = mant & ((1u128 << shift) - 1);
            (mant >> shift, rem.cmp(&(1u128 << (shift - 1))))
        }
        128 => (0, mant.cmp(&(1u128 << 127))),
        _ => (
            0,
            if mant == 0 {
                Ordering::Equal
            } else {
                Ordering::Less
            },
        ),
    };
    let dropped = match shift {
        1..=127 => mant & ((1u128 << shift) - 1) != 0,
        _ => mant != 0,
    };
    let up = dropped
        && match mode {
            Rounding::Nearest => {
                halfway == Ordering::Greater || (halfway == Ordering::Equal && kept & 1 == 1)
            }
            Rounding::Zero => false,
            Rounding::Down => neg,
            Rounding::Up => !neg,
        };
    (kept + u128::from(up), dropped)
}

/// Rounds the exact value `(-1)^neg * mant * 2^exp` to the format per
/// `mode`, with gradual underflow and IEEE overflow (to infinity or to the
/// largest finite value, by the direction of rounding).
///
/// `mant` may carry a sticky bit in its lowest place (the OR of bits the
/// caller dropped), provided that place lies at least two places below the
/// format's rounding place.
pub(crate) fn round(f: Format, neg: bool, exp: i32, mant: u128, mode: Rounding) -> u64 {
    if mant == 0 {
        return f.zero(neg);
    }
    let p = f.precision();
    let len = 128 - mant.leading_zeros() as i32;
    let lead = exp + len - 1;
    let mut quantum = (lead - (p - 1)).max(f.emin() - (p - 1));
    let shift = quantum - exp;
    let mut m = if shift <= 0 {
        mant << (-shift) as u32
    } else {
        shift_round(mant, shift as u32, neg, mode).0
    };
    if m == 1u128 << p {
        m >>= 1;
        quantum += 1;
    }
    let hidden = 1u128 << (p - 1);
    if m < hidden {
        return f.signed(neg, m as u64);
    }
    let e = quantum + p - 1;
    if e > f.emax() {
        let to_inf = match mode {
            Rounding::Nearest => true,
            Rounding::Zero => false,
            Rounding::Down => neg,
            Rounding::Up => !neg,
        };
        return if to_inf {
            f.inf(neg)
        } else {
            f.max_finite(neg)
        };
    }
    let field = (e + f.bias()) as u64;
    f.signed(neg, (field << f.frac_bits) | (m - hidden) as u64)
}

/// The sign of an exact zero sum of operands of differing signs: `-0` when
/// rounding down, `+0` otherwise (IEEE 754, 6.3).
fn zero_sum(f: Format, mode: Rounding) -> u64 {
    f.zero(mode == Rounding::Down)
}

fn reencode(f: Format, v: Finite) -> u64 {
    round(f, v.neg, v.exp, u128::from(v.mant), Rounding::Nearest)
}

/// One exact term of a sum: `(-1)^neg * mant * 2^exp`, `mant < 2^107`.
#[derive(Clone, Copy)]
struct Term {
    neg: bool,
    exp: i32,
    mant: u128,
}

impl Term {
    /// The same value with its leading bit moved to bit 126.
    fn normalized(self) -> Term {
        let shift = self.mant.leading_zeros() as i32 - 1;
        Term {
            neg: self.neg,
            exp: self.exp - shift,
            mant: self.mant << shift,
        }
    }
}

fn shift_right_jam(mant: u128, shift: u32) -> u128 {
    match shift {
        0 => mant,
        1..=127 => (mant >> shift) | u128::from(mant & ((1u128 << shift) - 1) != 0),
        _ => u128::from(mant != 0),
    }
}

/// `x + y` rounded once. Both terms are normalized to bit 126, so the
/// smaller one loses bits only when it lies more than 20 places below the
/// larger (the terms have at most 106 significant bits); then at most one
/// bit cancels and the sticky bit stays far below the rounding place.
fn sum(f: Format, x: Term, y: Term, mode: Rounding) -> u64 {
    let (x, y) = (x.normalized(), y.normalized());
    let (big, small) = if x.exp >= y.exp { (x, y) } else { (y, x) };
    let gap = (i64::from(big.exp) - i64::from(small.exp)).min(200) as u32;
    let s = shift_right_jam(small.mant, gap);
    if big.neg == small.neg {
        round(f, big.neg, big.exp, big.mant + s, mode)
    } else {
        match big.mant.cmp(&s) {
            Ordering::Equal => zero_sum(f, mode),
            Ordering::Greater => round(f, big.neg, big.exp, big.mant - s, mode),
            Ordering::Less => round(f, small.neg, big.exp, s - big.mant, mode),
        }
    }
}

fn term(v: Finite) -> Term {
    Term {
        neg: v.neg,
        exp: v.exp,
        mant: u128::from(v.mant),
    }
}

/// `a + b` rounded per `mode` (IEEE 754 addition).
pub(crate) fn add(f: Format, a: u64, b: u64, mode: Rounding) -> u64 {
    match (unpack(f, a), unpack(f, b)) {
        (Value::Nan, _) | (_, Value::Nan) => f.nan(),
        (Value::Inf(x), Value::Inf(y)) => {
            if x == y {
                f.inf(x)
            } else {
                f.nan()
            }
        }
        (Value::Inf(x), _) | (_, Value::Inf(x)) => f.inf(x),
        (Value::Zero(x), Value::Zero(y)) => {
            if x == y {
                f.zero(x)
            } else {
                zero_sum(f, mode)
            }
        }
        (Value::Zero(_), Value::Finite(v)) | (Value::Finite(v), Value::Zero(_)) => reencode(f, v),
        (Value::Finite(x), Value::Finite(y)) => sum(f, term(x), term(y), mode),
    }
}

/// `a * b` rounded per `mode`.
pub(crate) fn mul(f: Format, a: u64, b: u64, mode: Rounding) -> u64 {
    match (unpack(f, a), unpack(f, b)) {
        (Value::Nan, _) | (_, Value::Nan) => f.nan(),
        (Value::Inf(_), Value::Zero(_)) | (Value::Zero(_), Value::Inf(_)) => f.nan(),
        (Value::Inf(x), Value::Inf(y))
        | (Value::Inf(x), Value::Finite(Finite { neg: y, .. }))
        | (Value::Finite(Finite { neg: x, .. }), Value::Inf(y)) => f.inf(x != y),
        (Value::Zero(x), Value::Zero(y))
        | (Value::Zero(x), Value::Finite(Finite { neg: y, .. }))
        | (Value::Finite(Finite { neg: x, .. }), Value::Zero(y)) => f.zero(x != y),
        (Value::Finite(x), Value::Finite(y)) => round(
            f,
            x.neg != y.neg,
            x.exp + y.exp,
            u128::from(x.mant) * u128::from(y.mant),
            mode,
        ),
    }
}

fn sign_of(v: Value) -> bool {
    match v {
        Value::Nan => false,
        Value::Inf(n) | Value::Zero(n) => n,
        Value::Finite(x) => x.neg,
    }
}

/// `a * b + c` with a single rounding per `mode` (IEEE 754 fusedMultiplyAdd).
pub(crate) fn fma(f: Format, a: u64, b: u64, c: u64, mode: Rounding) -> u64 {
    let (ua, ub, uc) = (unpack(f, a), unpack(f, b), unpack(f, c));
    if ua == Value::Nan || ub == Value::Nan || uc == Value::Nan {
        return f.nan();
    }
    let product_neg = sign_of(ua) != sign_of(ub);
    let product_inf = matches!(ua, Value::Inf(_)) || matches!(ub, Value::Inf(_));
    let product_zero = matches!(ua, Value::Zero(_)) || matches!(ub, Value::Zero(_));
    if product_inf && product_zero {
        return f.nan();
    }
    if product_inf {
        return match uc {
            Value::Inf(n) if n != product_neg => f.nan(),
            _ => f.inf(product_neg),
        };
    }
    match (ua, ub, uc) {
        (_, _, Value::Inf(n)) => f.inf(n),
        _ if product_zero => match uc {
            Value::Zero(n) if n == product_neg => f.zero(n),
            Value::Finite(v) => reencode(f, v),
            _ => zero_sum(f, mode),
        },
        (Value::Finite(x), Value::Finite(y), Value::Zero(_)) => round(
            f,
            product_neg,
            x.exp + y.exp,
            u128::from(x.mant) * u128::from(y.mant),
            mode,
        ),
        (Value::Finite(x), Value::Finite(y), Value::Finite(z)) => {
            let product = Term {
                neg: product_neg,
                exp: x.exp + y.exp,
                mant: u128::from(x.mant) * u128::from(y.mant),
            };
            sum(f, product, term(z), mode)
        }
        _ => f.nan(),
    }
}

/// `a / b` rounded per `mode`.
pub(crate) fn div(f: Format, a: u64, b: u64, mode: Rounding) -> u64 {
    let (ua, ub) = (unpack(f, a), unpack(f, b));
    let neg = sign_of(ua) != sign_of(ub);
    match (ua, ub) {
        (Value::Nan, _) | (_, Value::Nan) => f.nan(),
        (Value::Inf(_), Value::Inf(_)) | (Value::Zero(_), Value::Zero(_)) => f.nan(),
        (Value::Inf(_), _) | (Value::Finite(_), Value::Zero(_)) => f.inf(neg),
        (_, Value::Inf(_)) | (Value::Zero(_), _) => f.zero(neg),
        (Value::Finite(x), Value::Finite(y)) => {
            let (xs, ys) = (x.mant.leading_zeros(), y.mant.leading_zeros());
            let num = u128::from(x.mant << xs) << 64;
            let den = u128::from(y.mant << ys);
            let (q, r) = (num / den, num % den);
            let exp = (x.exp - xs as i32) - (y.exp - ys as i32) - 65;
            round(f, neg, exp, (q << 1) | u128::from(r != 0), mode)
        }
    }
}

/// The integer square root: the largest `r` with `r * r <= n`.
fn isqrt(n: u128) -> u128 {
    if n == 0 {
        return 0;
    }
    // Start above the root (the f64 estimate is within 2^13 of it for any
    // n < 2^128), then Newton's iteration decreases monotonically to it.
    let mut x = ((n as f64).sqrt() as u128) + (1 << 14);
    loop {
        let y = (x + n / x) / 2;
        if y >= x {
            break;
        }
        x = y;
    }
    while x.checked_mul(x).is_none_or(|sq| sq > n) {
        x -= 1;
    }
    x
}

/// `sqrt(a)` rounded per `mode` (`sqrt(-0) = -0`, negative operands NaN).
pub(crate) fn sqrt(f: Format, a: u64, mode: Rounding) -> u64 {
    match unpack(f, a) {
        Value::Nan | Value::Inf(true) => f.nan(),
        Value::Finite(x) if x.neg => f.nan(),
        Value::Inf(false) => f.inf(false),
        Value::Zero(n) => f.zero(n),
        Value::Finite(x) => {
            let lz = x.mant.leading_zeros();
            let e = x.exp - lz as i32;
            let m = u128::from(x.mant << lz);
            // value = m * 2^e with m in [2^63, 2^64); make the exponent even.
            let (radicand, e) = if (e - 64) % 2 == 0 {
                (m << 64, e - 64)
            } else {
                (m << 63, e - 63)
            };
            let r = isqrt(radicand);
            let sticky = u128::from(r * r != radicand);
            round(f, false, e / 2 - 1, (r << 1) | sticky, mode)
        }
    }
}

/// Converts between formats, rounding per `mode` (exact when widening).
pub(crate) fn convert(from: Format, to: Format, bits: u64, mode: Rounding) -> u64 {
    match unpack(from, bits) {
        Value::Nan => to.nan(),
        Value::Inf(n) => to.inf(n),
        Value::Zero(n) => to.zero(n),
        Value::Finite(v) => round(to, v.neg, v.exp, u128::from(v.mant), mode),
    }
}

/// The integer `v` in the format, rounded per `mode`.
pub(crate) fn from_int(f: Format, v: i128, mode: Rounding) -> u64 {
    round(f, v < 0, 0, v.unsigned_abs(), mode)
}

/// A magnitude beyond every integer type, for saturating conversions.
const HUGE: i128 = 1 << 100;

/// The value rounded to an integer per `mode`, clamped to `±2^100`
/// (beyond every PTX integer type); `None` for NaN.
pub(crate) fn to_int(f: Format, bits: u64, mode: Rounding) -> Option<i128> {
    match unpack(f, bits) {
        Value::Nan => None,
        Value::Inf(n) => Some(if n { -HUGE } else { HUGE }),
        Value::Zero(_) => Some(0),
        Value::Finite(v) => {
            let magnitude = if v.exp >= 0 {
                let len = 64 - v.mant.leading_zeros() as i32;
                if len + v.exp > 100 {
                    HUGE
                } else {
                    i128::from(v.mant) << v.exp
                }
            } else {
                let shift = v.exp.unsigned_abs();
                shift_round(u128::from(v.mant), shift, v.neg, mode).0 as i128
            };
            Some(if v.neg { -magnitude } else { magnitude })
        }
    }
}

/// The value rounded to an integral value in the same format per `mode`
/// (IEEE roundToIntegral: the sign of a zero result is the operand's).
pub(crate) fn round_integral(f: Format, bits: u64, mode: Rounding) -> u64 {
    match unpack(f, bits) {
        Value::Nan => f.nan(),
        Value::Inf(_) | Value::Zero(_) => bits,
        Value::Finite(v) if v.exp >= 0 => bits,
        Value::Finite(v) => {
            let (i, _) = shift_round(u128::from(v.mant), v.exp.unsigned_abs(), v.neg, mode);
            round(f, v.neg, 0, i, Rounding::Nearest)
        }
    }
}
