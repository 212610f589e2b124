//! `cvt` of `numeric::convert` against independent references, per the PTX
//! ISA's `cvt` rules.
//!
//! - Round-to-nearest-even into f16/bf16 is checked bit for bit against the
//!   `half` crate, over a strided sweep of all f32 patterns plus every
//!   rounding boundary (each f16/bf16 midpoint and its neighbours).
//! - Every mode (and f64 sources) is checked against an exact reference
//!   that brackets the value between consecutive destination patterns by
//!   binary search (patterns are ordered like their values; all the values
//!   and midpoints involved are exact in f64) and picks per IEEE 754's
//!   rounding-direction attributes, infinity standing for `2^(emax+1)`.
//! - Float-to-int is checked against f64 `round_ties_even/trunc/floor/ceil`
//!   with saturation and NaN to 0; int-to-float against Rust's casts (which
//!   round to nearest-even) adjusted to a neighbour for directed modes.

use dropless_emu::numeric::convert::{
    bf16_to_f32, convert, f16_to_f32, f32_to_bf16, f32_to_f16, pack_x2, CvtMods,
};
use dropless_emu::numeric::{Rounding, Scalar};
use half::{bf16, f16};
use proptest::prelude::*;
use std::cmp::Ordering;

const MODES: [Rounding; 4] = [
    Rounding::Nearest,
    Rounding::Zero,
    Rounding::Down,
    Rounding::Up,
];

/// A float format whose values and midpoints are exact in f64.
#[derive(Clone, Copy, Debug)]
struct Fmt {
    exp_bits: u32,
    frac_bits: u32,
}

const F16: Fmt = Fmt {
    exp_bits: 5,
    frac_bits: 10,
};
const BF16: Fmt = Fmt {
    exp_bits: 8,
    frac_bits: 7,
};
const F32: Fmt = Fmt {
    exp_bits: 8,
    frac_bits: 23,
};

impl Fmt {
    fn sign(self) -> u64 {
        1 << (self.exp_bits + self.frac_bits)
    }
    fn inf(self) -> u64 {
        ((1 << self.exp_bits) - 1) << self.frac_bits
    }
    fn nan(self) -> u64 {
        self.sign() - 1
    }
    fn bias(self) -> i32 {
        (1 << (self.exp_bits - 1)) - 1
    }

    /// The value of a positive pattern; infinity stands for `2^(emax+1)`.
    fn value(self, p: u64) -> f64 {
        let field = (p >> self.frac_bits) as i32;
        let frac = (p & ((1 << self.frac_bits) - 1)) as f64;
        let scale = |e: i32| 2f64.powi(e);
        if field == 0 {
            frac * scale(1 - self.bias() - self.frac_bits as i32)
        } else {
            (frac + scale(self.frac_bits as i32))
                * scale(field - self.bias() - self.frac_bits as i32)
        }
    }

    /// The correctly rounded pattern of a nonzero real `X` of sign `neg`,
    /// given `cmp_to(v) = |X|.cmp(v)`.
    fn round(self, neg: bool, cmp_to: &dyn Fn(f64) -> Ordering, mode: Rounding) -> u64 {
        let max = self.inf() - 1;
        let mut lo = 0u64;
        if cmp_to(self.value(max)) != Ordering::Less {
            lo = max;
        } else {
            let mut hi = max;
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if cmp_to(self.value(mid)) == Ordering::Less {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
        }
        let sign = if neg { self.sign() } else { 0 };
        if cmp_to(self.value(lo)) == Ordering::Equal {
            return sign | lo;
        }
        let hi = lo + 1;
        let away = matches!((mode, neg), (Rounding::Down, true) | (Rounding::Up, false));
        let pick = match mode {
            Rounding::Nearest => match cmp_to((self.value(lo) + self.value(hi)) / 2.0) {
                Ordering::Less => lo,
                Ordering::Greater => hi,
                Ordering::Equal if lo & 1 == 0 => lo,
                Ordering::Equal => hi,
            },
            _ if away => hi,
            _ => lo,
        };
        sign | pick
    }

    /// The reference rounding of a (finite, infinite or NaN) f64 value.
    fn round_f64(self, x: f64, mode: Rounding) -> u64 {
        if x.is_nan() {
            self.nan()
        } else if x.is_infinite() || x == 0.0 {
            let sign = if x.is_sign_negative() { self.sign() } else { 0 };
            sign | if x == 0.0 { 0 } else { self.inf() }
        } else {
            self.round(x < 0.0, &|v| x.abs().total_cmp(&v), mode)
        }
    }
}

fn mods(rounding: Rounding) -> CvtMods {
    CvtMods {
        rounding: Some(rounding),
        ..Default::default()
    }
}

/// f32 patterns worth converting to a 16-bit format: each pattern's
/// neighbourhood and the midpoints towards the next pattern.
fn boundaries(f: Fmt) -> Vec<u32> {
    let mut out = Vec::new();
    for p in 0..f.inf() {
        let here = f.value(p) as f32;
        let mid = ((f.value(p) + f.value(p + 1)) / 2.0) as f32;
        for base in [here, mid] {
            let b = base.to_bits();
            for d in 0..4u32 {
                out.push(b.wrapping_add(d));
                out.push(b.wrapping_sub(d));
            }
        }
    }
    let negated: Vec<u32> = out.iter().map(|b| b | 0x8000_0000).collect();
    out.extend(negated);
    out
}

/// Every 2^k-th f32 pattern (k small enough to sample every exponent
/// densely) plus NaNs, infinities and subnormals.
fn sweep() -> impl Iterator<Item = u32> {
    (0..=u32::MAX / 251).map(|i| i * 251).chain([
        0x7f80_0000,
        0xff80_0000,
        0x7f80_0001,
        0xffc0_0000,
        1,
        0x8000_0001,
    ])
}

#[test]
fn f32_to_f16_nearest_matches_half() {
    for a in sweep().chain(boundaries(F16)) {
        let got = f32_to_f16(a, Rounding::Nearest);
        let x = f32::from_bits(a);
        if x.is_nan() {
            assert_eq!(got, 0x7fff, "NaN {a:#x}");
        } else {
            assert_eq!(got, f16::from_f32(x).to_bits(), "f32 {a:#x}");
        }
    }
}

#[test]
fn f32_to_bf16_nearest_matches_half() {
    for a in sweep().chain(boundaries(BF16)) {
        let got = f32_to_bf16(a, Rounding::Nearest);
        let x = f32::from_bits(a);
        if x.is_nan() {
            assert_eq!(got, 0x7fff, "NaN {a:#x}");
        } else {
            assert_eq!(got, bf16::from_f32(x).to_bits(), "f32 {a:#x}");
        }
    }
}

#[test]
fn f32_to_16_bit_every_mode_matches_exact_reference() {
    let samples: Vec<u32> = (0..=u32::MAX / 65521).map(|i| i * 65521).collect();
    for (f, dst) in [(F16, Scalar::F16), (BF16, Scalar::Bf16)] {
        for a in samples.iter().copied().chain(boundaries(f)) {
            let x = f64::from(f32::from_bits(a));
            for mode in MODES {
                let want = f.round_f64(x, mode);
                let got = if dst == Scalar::F16 {
                    f32_to_f16(a, mode)
                } else {
                    f32_to_bf16(a, mode)
                };
                assert_eq!(u64::from(got), want, "{dst:?} {mode:?} of {a:#x}");
                let via_cvt = convert(dst, Scalar::F32, u64::from(a), mods(mode));
                assert_eq!(via_cvt, Some(want), "cvt {dst:?} {mode:?} of {a:#x}");
            }
        }
    }
}

#[test]
fn f16_to_f32_is_exact_for_all_patterns() {
    for h in 0..=u16::MAX {
        let want = f16::from_bits(h).to_f32().to_bits();
        assert_eq!(f16_to_f32(h), want, "f16 {h:#x}");
        let via_cvt = convert(Scalar::F32, Scalar::F16, u64::from(h), CvtMods::default());
        let want_cvt = if f16::from_bits(h).is_nan() {
            0x7fff_ffff
        } else {
            want
        };
        assert_eq!(via_cvt, Some(u64::from(want_cvt)), "cvt.f32.f16 {h:#x}");
        let as_f64 = convert(Scalar::F64, Scalar::F16, u64::from(h), CvtMods::default());
        let want64 = if f16::from_bits(h).is_nan() {
            0x7fff_ffff_ffff_ffff
        } else {
            f16::from_bits(h).to_f64().to_bits()
        };
        assert_eq!(as_f64, Some(want64), "cvt.f64.f16 {h:#x}");
    }
}

#[test]
fn bf16_to_f32_is_exact_for_all_patterns() {
    for h in 0..=u16::MAX {
        let b = bf16::from_bits(h);
        if !b.is_nan() {
            assert_eq!(bf16_to_f32(h), b.to_f32().to_bits(), "bf16 {h:#x}");
        }
    }
}

/// f64 operands: raw patterns and values close to f32/f16 boundaries.
fn f64_operands() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        // An f32 (or its midpoint) nudged by a few f64 ulps.
        (any::<u32>(), any::<bool>(), -3i64..=3).prop_map(|(b, mid, d)| {
            let x = f64::from(f32::from_bits(b));
            let x = if mid {
                (x + f64::from(f32::from_bits(b.wrapping_add(1)))) / 2.0
            } else {
                x
            };
            x.to_bits().wrapping_add(d as u64)
        }),
        // Around the f16 range: exponent field 1000..1040.
        (1000u64..1040, any::<u64>(), any::<bool>(), -3i64..=3).prop_map(|(e, m, s, d)| {
            let bits = (e << 52) | (m & ((1 << 52) - 1) & !((1 << 40) - 1));
            (bits | (u64::from(s) << 63)).wrapping_add(d as u64)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn f64_narrowing_every_mode(a in f64_operands(), m in 0usize..4) {
        let mode = MODES[m];
        let x = f64::from_bits(a);
        for (f, dst) in [(F32, Scalar::F32), (F16, Scalar::F16), (BF16, Scalar::Bf16)] {
            let want = f.round_f64(x, mode);
            let got = convert(dst, Scalar::F64, a, mods(mode));
            prop_assert_eq!(got, Some(want), "{:?} {:?} of {:#x}", dst, mode, a);
        }
        if mode == Rounding::Nearest && !x.is_nan() {
            let got = convert(Scalar::F32, Scalar::F64, a, mods(mode));
            prop_assert_eq!(got, Some(u64::from((x as f32).to_bits())));
        }
    }

    #[test]
    fn float_to_int_rounds_and_saturates(a in f64_operands(), m in 0usize..4, d in 0usize..8) {
        let mode = MODES[m];
        let dst = INTS[d];
        let x = f64::from_bits(a);
        let sources = [
            (Scalar::F64, a, x),
            (Scalar::F32, u64::from((x as f32).to_bits()), f64::from(x as f32)),
            (Scalar::F16, u64::from(f16::from_f64(x).to_bits()), f16::from_f64(x).to_f64()),
        ];
        for (src, bits, value) in sources {
            let want = int_reference(dst, value, mode);
            let got = convert(dst, src, bits, CvtMods { integer_rounding: Some(mode), ..Default::default() });
            prop_assert_eq!(got, Some(want), "{:?}.{:?} {:?} of {}", dst, src, mode, value);
        }
    }

    #[test]
    fn int_to_float_every_mode(v in any::<i64>(), shift in 0u32..64, m in 0usize..4, s in 0usize..8) {
        let mode = MODES[m];
        let src = INTS[s];
        let raw = (v >> shift) as u64;
        let (bits, signed) = int_shape(src);
        let mask = u64::MAX >> (64 - bits);
        let value: i128 = if signed {
            i128::from(((raw << (64 - bits)) as i64) >> (64 - bits))
        } else {
            i128::from(raw & mask)
        };
        for (f, dst) in [(F32, Scalar::F32), (F16, Scalar::F16), (BF16, Scalar::Bf16)] {
            let want = if value == 0 {
                0
            } else {
                f.round(value < 0, &|w| cmp_int(value.abs(), w), mode)
            };
            let got = convert(dst, src, raw, mods(mode));
            prop_assert_eq!(got, Some(want), "{:?}.{:?} {:?} of {}", dst, src, mode, value);
        }
        let got = convert(Scalar::F64, src, raw, mods(mode));
        prop_assert_eq!(got, Some(f64_of_int(value, mode)), "f64.{:?} {:?} of {}", src, mode, value);
    }
}

const INTS: [Scalar; 8] = [
    Scalar::U8,
    Scalar::U16,
    Scalar::U32,
    Scalar::U64,
    Scalar::S8,
    Scalar::S16,
    Scalar::S32,
    Scalar::S64,
];

fn int_shape(s: Scalar) -> (u32, bool) {
    match s {
        Scalar::U8 => (8, false),
        Scalar::U16 => (16, false),
        Scalar::U32 => (32, false),
        Scalar::U64 => (64, false),
        Scalar::S8 => (8, true),
        Scalar::S16 => (16, true),
        Scalar::S32 => (32, true),
        Scalar::S64 => (64, true),
        _ => unreachable!("not an integer type"),
    }
}

fn int_range(s: Scalar) -> (i128, i128) {
    let (bits, signed) = int_shape(s);
    if signed {
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    } else {
        (0, (1 << bits) - 1)
    }
}

/// `cvt.irnd.dst.f64`: round, saturate, NaN to 0; the pattern masked.
fn int_reference(dst: Scalar, x: f64, mode: Rounding) -> u64 {
    if x.is_nan() {
        return 0;
    }
    let r = match mode {
        Rounding::Nearest => x.round_ties_even(),
        Rounding::Zero => x.trunc(),
        Rounding::Down => x.floor(),
        Rounding::Up => x.ceil(),
    };
    let (lo, hi) = int_range(dst);
    let v = (r as i128).clamp(lo, hi);
    (v as u64) & (u64::MAX >> (64 - int_shape(dst).0))
}

/// `n.cmp(w)` for an integer `n >= 1` and a float value `w`, exactly.
fn cmp_int(n: i128, w: f64) -> Ordering {
    let floor = w.floor();
    if floor >= 2f64.powi(100) {
        return Ordering::Less;
    }
    match n.cmp(&(floor as i128)) {
        Ordering::Equal if w != floor => Ordering::Less,
        other => other,
    }
}

/// The f64 of an integer per mode: Rust's cast (nearest-even), then the
/// neighbour on the side the mode asks for when the cast was inexact.
fn f64_of_int(v: i128, mode: Rounding) -> u64 {
    let rn = v as f64;
    let back = rn as i128; // exact: every f64 of this size is an integer
    let step_down = |x: f64| {
        f64::from_bits(if x > 0.0 {
            x.to_bits() - 1
        } else {
            x.to_bits() + 1
        })
    };
    let step_up = |x: f64| {
        f64::from_bits(if x > 0.0 {
            x.to_bits() + 1
        } else {
            x.to_bits() - 1
        })
    };
    let r = match mode {
        Rounding::Nearest => rn,
        Rounding::Down | Rounding::Zero if back > v && (mode == Rounding::Down || v > 0) => {
            step_down(rn)
        }
        Rounding::Up | Rounding::Zero if back < v && (mode == Rounding::Up || v < 0) => step_up(rn),
        _ => rn,
    };
    r.to_bits()
}

#[test]
fn float_to_int_edge_values() {
    let irnd = |m| CvtMods {
        integer_rounding: Some(m),
        ..Default::default()
    };
    let f = |x: f32| u64::from(x.to_bits());
    let s32 = |x: f32, m| convert(Scalar::S32, Scalar::F32, f(x), irnd(m)).map(|v| v as u32 as i32);
    assert_eq!(s32(2.5, Rounding::Nearest), Some(2));
    assert_eq!(s32(3.5, Rounding::Nearest), Some(4));
    assert_eq!(s32(-2.5, Rounding::Nearest), Some(-2));
    assert_eq!(s32(-2.5, Rounding::Zero), Some(-2));
    assert_eq!(s32(-2.5, Rounding::Down), Some(-3));
    assert_eq!(s32(-2.5, Rounding::Up), Some(-2));
    assert_eq!(s32(3e9, Rounding::Zero), Some(i32::MAX));
    assert_eq!(s32(-3e9, Rounding::Zero), Some(i32::MIN));
    assert_eq!(s32(f32::INFINITY, Rounding::Zero), Some(i32::MAX));
    assert_eq!(s32(f32::NAN, Rounding::Zero), Some(0));
    let u8_of = |x: f32| convert(Scalar::U8, Scalar::F32, f(x), irnd(Rounding::Nearest));
    assert_eq!(u8_of(-7.0), Some(0));
    assert_eq!(u8_of(300.0), Some(255));
    // cvt.rzi.s64.f64 (the kernels' form).
    let d = |x: f64| convert(Scalar::S64, Scalar::F64, x.to_bits(), irnd(Rounding::Zero));
    assert_eq!(d(-1.9e18), Some((-1_900_000_000_000_000_000i64) as u64));
    assert_eq!(d(1e300), Some(i64::MAX as u64));
    // .ftz: a positive subnormal rounds up to 1 only without .ftz.
    let sub = 1u64;
    let rpi = irnd(Rounding::Up);
    assert_eq!(convert(Scalar::S32, Scalar::F32, sub, rpi), Some(1));
    assert_eq!(
        convert(Scalar::S32, Scalar::F32, sub, CvtMods { ftz: true, ..rpi }),
        Some(0)
    );
}

#[test]
fn float_to_same_float_integral_rounding() {
    let irnd = |m| CvtMods {
        integer_rounding: Some(m),
        ..Default::default()
    };
    for x in [
        0.5f64,
        1.5,
        2.5,
        -0.5,
        -1.5,
        -0.4,
        0.4,
        1e20,
        -3.75,
        4503599627370495.5,
        0.0,
        -0.0,
    ] {
        for mode in MODES {
            let want = match mode {
                Rounding::Nearest => x.round_ties_even(),
                Rounding::Zero => x.trunc(),
                Rounding::Down => x.floor(),
                Rounding::Up => x.ceil(),
            };
            let got = convert(Scalar::F64, Scalar::F64, x.to_bits(), irnd(mode));
            assert_eq!(got, Some(want.to_bits()), "f64 {x} {mode:?}");
            let x32 = x as f32;
            let want32 = (f64::from(x32)).round_ties_even();
            let want32 = match mode {
                Rounding::Nearest => want32,
                Rounding::Zero => f64::from(x32).trunc(),
                Rounding::Down => f64::from(x32).floor(),
                Rounding::Up => f64::from(x32).ceil(),
            };
            let got32 = convert(
                Scalar::F32,
                Scalar::F32,
                u64::from(x32.to_bits()),
                irnd(mode),
            );
            assert_eq!(
                got32,
                Some(u64::from((want32 as f32).to_bits())),
                "f32 {x32} {mode:?}"
            );
        }
    }
    // cvt.rni.f16.f16: 2.5 -> 2, -0.5 -> -0.
    let h = |x: f32| u64::from(f16::from_f32(x).to_bits());
    let rni = irnd(Rounding::Nearest);
    assert_eq!(convert(Scalar::F16, Scalar::F16, h(2.5), rni), Some(h(2.0)));
    assert_eq!(
        convert(Scalar::F16, Scalar::F16, h(-0.5), rni),
        Some(h(-0.0))
    );
}

#[test]
fn int_to_int_extends_truncates_and_saturates() {
    let plain = CvtMods::default();
    let sat = CvtMods {
        sat: true,
        ..Default::default()
    };
    // Sign- or zero-extension by the source type; the result zero-extended.
    assert_eq!(
        convert(Scalar::S64, Scalar::S32, 0xffff_fffe, plain),
        Some(u64::MAX - 1)
    );
    assert_eq!(
        convert(Scalar::U64, Scalar::S32, 0xffff_fffe, plain),
        Some(u64::MAX - 1)
    );
    assert_eq!(
        convert(Scalar::S64, Scalar::U32, 0xffff_fffe, plain),
        Some(0xffff_fffe)
    );
    assert_eq!(
        convert(Scalar::S32, Scalar::S8, 0x80, plain),
        Some(0xffff_ff80)
    );
    assert_eq!(
        convert(Scalar::U32, Scalar::U16, 0xdead_8001, plain),
        Some(0x8001)
    );
    // Truncation (high bits of the source register ignored too).
    assert_eq!(
        convert(Scalar::U16, Scalar::U32, 0x1234_5678, plain),
        Some(0x5678)
    );
    assert_eq!(
        convert(Scalar::S8, Scalar::S32, 0x0000_01ff, plain),
        Some(0xff)
    );
    assert_eq!(
        convert(Scalar::U32, Scalar::U64, 0x1_0000_0002, plain),
        Some(2)
    );
    // .sat clamps to the destination's range.
    assert_eq!(convert(Scalar::U32, Scalar::S32, 0xffff_ffff, sat), Some(0));
    assert_eq!(
        convert(Scalar::S32, Scalar::U32, 0xffff_ffff, sat),
        Some(0x7fff_ffff)
    );
    assert_eq!(convert(Scalar::U8, Scalar::U32, 300, sat), Some(255));
    assert_eq!(
        convert(Scalar::S8, Scalar::S32, (-300i32) as u32 as u64, sat),
        Some(0x80)
    );
    assert_eq!(convert(Scalar::S8, Scalar::U8, 0xff, sat), Some(0x7f));
    assert_eq!(convert(Scalar::U16, Scalar::S8, 0x80, sat), Some(0));
    assert_eq!(
        convert(Scalar::S32, Scalar::S64, 1 << 40, sat),
        Some(0x7fff_ffff)
    );
}

#[test]
fn legality_follows_the_isa() {
    use Rounding::*;
    use Scalar::*;
    let m = |rounding: Option<Rounding>, integer_rounding: Option<Rounding>| CvtMods {
        rounding,
        integer_rounding,
        ..Default::default()
    };
    let defined = |d, s, mods| convert(d, s, 0, mods).is_some();
    // Rounding: required for int<->float and narrowing, refused when widening.
    assert!(defined(F32, S32, m(Some(Nearest), None)));
    assert!(!defined(F32, S32, m(None, None)));
    assert!(!defined(F32, S32, m(None, Some(Zero))));
    assert!(defined(S32, F32, m(None, Some(Zero))));
    assert!(!defined(S32, F32, m(None, None)));
    assert!(!defined(S32, F32, m(Some(Zero), None)));
    assert!(defined(F16, F32, m(Some(Down), None)));
    assert!(!defined(F16, F32, m(None, None)));
    assert!(defined(F32, F64, m(Some(Up), None)));
    assert!(!defined(F32, F64, m(None, None)));
    assert!(defined(F64, F32, m(None, None)));
    assert!(!defined(F64, F32, m(Some(Nearest), None)));
    assert!(defined(F32, F16, m(None, None)));
    assert!(defined(F32, F32, m(None, None)));
    assert!(defined(F32, F32, m(None, Some(Nearest))));
    assert!(!defined(F32, F32, m(Some(Nearest), None)));
    assert!(!defined(F32, F64, m(None, Some(Nearest))));
    assert!(defined(F32, Bf16, m(None, None)));
    assert!(defined(F32, Bf16, m(Some(Zero), None)));
    assert!(defined(Bf16, F16, m(None, None)));
    assert!(defined(S8, Bf16, m(None, Some(Up))));
    assert!(defined(U32, S64, m(None, None)));
    assert!(!defined(U32, S64, m(Some(Nearest), None)));
    assert!(!defined(F32, S32, m(Some(Nearest), Some(Nearest))));
    // .sat on int-to-int only where the range can be exceeded.
    let sat = |d, s| {
        convert(
            d,
            s,
            0,
            CvtMods {
                sat: true,
                ..Default::default()
            },
        )
        .is_some()
    };
    assert!(sat(U32, S32));
    assert!(sat(S32, U32));
    assert!(sat(U8, U32));
    assert!(sat(U16, S8));
    assert!(!sat(S64, S32));
    assert!(!sat(U64, U32));
    assert!(!sat(S32, S32));
    assert!(!sat(S16, S8));
    // .ftz needs an f32 operand or result; .relu an f16/bf16 result of f32 under .rn/.rz.
    let ftz = |d, s, r, i| {
        convert(
            d,
            s,
            0,
            CvtMods {
                ftz: true,
                ..m(r, i)
            },
        )
        .is_some()
    };
    assert!(ftz(S32, F32, None, Some(Zero)));
    assert!(ftz(F64, F32, None, None));
    assert!(ftz(F32, S32, Some(Nearest), None));
    assert!(!ftz(S32, F64, None, Some(Zero)));
    assert!(!ftz(F16, F16, None, None));
    let relu = |d, s, r| {
        convert(
            d,
            s,
            0,
            CvtMods {
                relu: true,
                ..m(Some(r), None)
            },
        )
        .is_some()
    };
    assert!(relu(F16, F32, Nearest));
    assert!(relu(Bf16, F32, Zero));
    assert!(!relu(Bf16, F32, Up));
    assert!(!relu(F16, F64, Nearest));
    assert!(!relu(F32, F64, Nearest));
}

#[test]
fn sat_relu_and_ftz_on_float_results() {
    let f = |x: f32| u64::from(x.to_bits());
    let sat = CvtMods {
        sat: true,
        ..Default::default()
    };
    // cvt.sat.f32.f32 (the kernels' form).
    let s = |x: u64| convert(Scalar::F32, Scalar::F32, x, sat);
    assert_eq!(s(f(0.25)), Some(f(0.25)));
    assert_eq!(s(f(2.0)), Some(f(1.0)));
    assert_eq!(s(f(-2.0)), Some(0));
    assert_eq!(s(f(-0.0)), Some(0));
    assert_eq!(s(0x7fc0_0000), Some(0));
    assert_eq!(s(f(f32::INFINITY)), Some(f(1.0)));
    // cvt.rn.sat.f32.s32 clamps too.
    let sat_rn = CvtMods {
        rounding: Some(Rounding::Nearest),
        ..sat
    };
    assert_eq!(convert(Scalar::F32, Scalar::S32, 7, sat_rn), Some(f(1.0)));
    // .relu: negatives to +0, NaN to the canonical NaN.
    let relu = CvtMods {
        rounding: Some(Rounding::Nearest),
        relu: true,
        ..Default::default()
    };
    let h = |x: f32| u64::from(f16::from_f32(x).to_bits());
    assert_eq!(convert(Scalar::F16, Scalar::F32, f(-3.0), relu), Some(0));
    assert_eq!(
        convert(Scalar::F16, Scalar::F32, f(3.0), relu),
        Some(h(3.0))
    );
    assert_eq!(
        convert(Scalar::F16, Scalar::F32, 0xffc0_0001, relu),
        Some(0x7fff)
    );
    assert_eq!(convert(Scalar::Bf16, Scalar::F32, f(-0.0), relu), Some(0));
    // NaN results are canonical; infinities survive narrowing.
    let rn = mods(Rounding::Nearest);
    assert_eq!(
        convert(Scalar::F16, Scalar::F32, 0xffc0_0001, rn),
        Some(0x7fff)
    );
    assert_eq!(
        convert(Scalar::F32, Scalar::F64, 0xfff8_0000_0000_0001, rn),
        Some(0x7fff_ffff)
    );
    assert_eq!(convert(Scalar::F16, Scalar::F32, f(1e6), rn), Some(0x7c00));
    assert_eq!(
        convert(Scalar::F16, Scalar::F32, f(-1e6), mods(Rounding::Zero)),
        Some(0xfbff)
    );
    // .ftz flushes an f32 subnormal source and an f32 subnormal result.
    let ftz_rn = CvtMods { ftz: true, ..rn };
    assert_eq!(
        convert(
            Scalar::F64,
            Scalar::F32,
            0x8000_0001,
            CvtMods {
                ftz: true,
                ..Default::default()
            }
        ),
        Some(1 << 63)
    );
    assert_eq!(
        convert(Scalar::F16, Scalar::F32, 0x0000_0001, ftz_rn),
        Some(0)
    );
    assert_eq!(
        convert(Scalar::F32, Scalar::F64, 1e-40f64.to_bits(), ftz_rn),
        Some(0)
    );
    assert_eq!(
        convert(Scalar::F32, Scalar::F64, 1e-40f64.to_bits(), rn),
        Some(u64::from((1e-40f64 as f32).to_bits()))
    );
}

#[test]
fn pack_x2_puts_a_high_and_b_low() {
    let rn = mods(Rounding::Nearest);
    let (a, b) = (1.5f32.to_bits(), (-2.25f32).to_bits());
    let h = |x: f32| u32::from(f16::from_f32(x).to_bits());
    let g = |x: f32| u32::from(bf16::from_f32(x).to_bits());
    assert_eq!(pack_x2(Scalar::F16, a, b, rn), (h(1.5) << 16) | h(-2.25));
    assert_eq!(pack_x2(Scalar::Bf16, a, b, rn), (g(1.5) << 16) | g(-2.25));
    let relu = CvtMods { relu: true, ..rn };
    assert_eq!(pack_x2(Scalar::Bf16, a, b, relu), g(1.5) << 16);
    // Rounding per half: 1 + 2^-8 is a bf16 tie (to even: 1.0); a little
    // above it rounds up under .rn and down under .rz.
    let tie = (1.0f32 + 2f32.powi(-8)).to_bits();
    assert_eq!(pack_x2(Scalar::Bf16, tie, tie, rn), (g(1.0) << 16) | g(1.0));
    let above = (1.0f32 + 2f32.powi(-8) + 2f32.powi(-12)).to_bits();
    let rz = mods(Rounding::Zero);
    assert_eq!(pack_x2(Scalar::Bf16, above, above, rn), 0x3f81_3f81);
    assert_eq!(pack_x2(Scalar::Bf16, above, above, rz), 0x3f80_3f80);
}
