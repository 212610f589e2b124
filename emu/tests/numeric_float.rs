//! f32/f64 arithmetic of `numeric::float` against an exact reference.
//!
//! The reference never rounds: every finite operand is an exact binary
//! rational (a big integer times a power of two), sums and products are
//! formed exactly, and quotients and square roots are compared through
//! cross-multiplication (`v <= a/b` iff `v*|b| <= |a|`, `v <= sqrt(a)` iff
//! `v*v <= a`). The correctly rounded result is then found by binary search
//! over the destination's bit patterns, which are ordered like their
//! values, and chosen per IEEE 754's rounding-direction attributes, with
//! infinity standing for `2^(emax+1)` (so that round-to-nearest overflows
//! exactly at the IEEE threshold). Special operands (infinities, NaN) use
//! the host's f64 arithmetic, whose results there are mode-independent.
//! Expectations come from the PTX ISA: canonical NaN, `.ftz` on inputs and
//! results, `.sat` to [0, 1] with NaN to +0, the `min`/`max` NaN rules.

use dropless_emu::numeric::float::{
    f32_binary, f32_compare, f32_copysign, f32_fma, f32_unary, f64_binary, f64_compare, f64_fma,
    f64_unary, F32Mods, F32Op, F32Unary, F64Op, F64Unary, FloatCmp,
};
use dropless_emu::numeric::Rounding;
use proptest::prelude::*;
use std::cmp::Ordering;

const MODES: [Rounding; 4] = [
    Rounding::Nearest,
    Rounding::Zero,
    Rounding::Down,
    Rounding::Up,
];

// ---------------------------------------------------------------------------
// Exact binary rationals: (-1)^neg * mag * 2^exp, mag a little-endian u32 big
// integer without leading zero limbs.

#[derive(Clone, Debug)]
struct Exact {
    neg: bool,
    mag: Vec<u32>,
    exp: i32,
}

fn trim(mut v: Vec<u32>) -> Vec<u32> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn mag_from(x: u128) -> Vec<u32> {
    trim((0..4).map(|i| (x >> (32 * i)) as u32).collect())
}

fn mag_shl(m: &[u32], n: u32) -> Vec<u32> {
    let (limbs, bits) = ((n / 32) as usize, n % 32);
    let mut out = vec![0u32; limbs];
    let mut carry = 0u32;
    for &x in m {
        if bits == 0 {
            out.push(x);
        } else {
            out.push((x << bits) | carry);
            carry = x >> (32 - bits);
        }
    }
    out.push(carry);
    trim(out)
}

fn mag_cmp(a: &[u32], b: &[u32]) -> Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.iter().rev().cmp(b.iter().rev()))
}

fn mag_add(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len().max(b.len()) + 1);
    let mut carry = 0u64;
    for i in 0..a.len().max(b.len()) {
        let s = u64::from(*a.get(i).unwrap_or(&0)) + u64::from(*b.get(i).unwrap_or(&0)) + carry;
        out.push(s as u32);
        carry = s >> 32;
    }
    out.push(carry as u32);
    trim(out)
}

/// `a - b` for `a >= b`.
fn mag_sub(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len());
    let mut borrow = 0i64;
    for (i, &x) in a.iter().enumerate() {
        let mut d = i64::from(x) - i64::from(*b.get(i).unwrap_or(&0)) - borrow;
        borrow = 0;
        if d < 0 {
            d += 1 << 32;
            borrow = 1;
        }
        out.push(d as u32);
    }
    trim(out)
}

fn mag_mul(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = vec![0u32; a.len() + b.len() + 1];
    for (i, &x) in a.iter().enumerate() {
        let mut carry = 0u64;
        for (j, &y) in b.iter().enumerate() {
            let t = u64::from(x) * u64::from(y) + u64::from(out[i + j]) + carry;
            out[i + j] = t as u32;
            carry = t >> 32;
        }
        let mut k = i + b.len();
        while carry != 0 {
            let t = u64::from(out[k]) + carry;
            out[k] = t as u32;
            carry = t >> 32;
            k += 1;
        }
    }
    trim(out)
}

impl Exact {
    fn new(neg: bool, mant: u128, exp: i32) -> Exact {
        Exact {
            neg,
            mag: mag_from(mant),
            exp,
        }
    }

    fn is_zero(&self) -> bool {
        self.mag.is_empty()
    }

    fn negated(&self) -> Exact {
        Exact {
            neg: !self.neg,
            ..self.clone()
        }
    }

    fn abs(&self) -> Exact {
        Exact {
            neg: false,
            ..self.clone()
        }
    }

    fn half(&self) -> Exact {
        Exact {
            exp: self.exp - 1,
            ..self.clone()
        }
    }

    fn mul(&self, o: &Exact) -> Exact {
        Exact {
            neg: self.neg != o.neg,
            mag: mag_mul(&self.mag, &o.mag),
            exp: self.exp + o.exp,
        }
    }

    fn add(&self, o: &Exact) -> Exact {
        if self.is_zero() {
            return o.clone();
        }
        if o.is_zero() {
            return self.clone();
        }
        let exp = self.exp.min(o.exp);
        let a = mag_shl(&self.mag, (self.exp - exp) as u32);
        let b = mag_shl(&o.mag, (o.exp - exp) as u32);
        if self.neg == o.neg {
            return Exact {
                neg: self.neg,
                mag: mag_add(&a, &b),
                exp,
            };
        }
        match mag_cmp(&a, &b) {
            Ordering::Equal => Exact::new(false, 0, 0),
            Ordering::Greater => Exact {
                neg: self.neg,
                mag: mag_sub(&a, &b),
                exp,
            },
            Ordering::Less => Exact {
                neg: o.neg,
                mag: mag_sub(&b, &a),
                exp,
            },
        }
    }

    fn cmp(&self, o: &Exact) -> Ordering {
        let d = self.add(&o.negated());
        if d.is_zero() {
            Ordering::Equal
        } else if d.neg {
            Ordering::Less
        } else {
            Ordering::Greater
        }
    }
}

// ---------------------------------------------------------------------------
// Binary formats in the reference.

#[derive(Clone, Copy, Debug)]
struct Fmt {
    exp_bits: u32,
    frac_bits: u32,
}

const F32: Fmt = Fmt {
    exp_bits: 8,
    frac_bits: 23,
};
const F64: Fmt = Fmt {
    exp_bits: 11,
    frac_bits: 52,
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
    fn is_subnormal(self, bits: u64) -> bool {
        let m = bits & (self.sign() - 1);
        m != 0 && m >> self.frac_bits == 0
    }
    fn flush(self, bits: u64) -> u64 {
        if self.is_subnormal(bits) {
            bits & self.sign()
        } else {
            bits
        }
    }

    /// The value of a pattern without its sign; the infinity pattern
    /// stands for `2^(emax+1)`.
    fn magnitude(self, p: u64) -> Exact {
        let field = (p >> self.frac_bits) as i32;
        let frac = p & ((1 << self.frac_bits) - 1);
        if field == 0 {
            Exact::new(
                false,
                u128::from(frac),
                1 - self.bias() - self.frac_bits as i32,
            )
        } else {
            let mant = u128::from(frac | (1 << self.frac_bits));
            Exact::new(false, mant, field - self.bias() - self.frac_bits as i32)
        }
    }

    /// The exact value of a finite pattern, `None` for infinities and NaN.
    fn decode(self, bits: u64) -> Option<Exact> {
        let m = bits & (self.sign() - 1);
        if m >= self.inf() {
            return None;
        }
        let mut v = self.magnitude(m);
        v.neg = bits & self.sign() != 0;
        Some(v)
    }

    /// The correctly rounded pattern of a nonzero real `X` of sign `neg`,
    /// given `cmp_to(v) = |X|.cmp(v)`.
    fn round(self, neg: bool, cmp_to: &dyn Fn(&Exact) -> Ordering, mode: Rounding) -> u64 {
        let max = self.inf() - 1;
        let mut lo = 0u64;
        if cmp_to(&self.magnitude(max)) != Ordering::Less {
            lo = max;
        } else {
            let mut hi = max;
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if cmp_to(&self.magnitude(mid)) == Ordering::Less {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
        }
        let sign = if neg { self.sign() } else { 0 };
        if cmp_to(&self.magnitude(lo)) == Ordering::Equal {
            return sign | lo;
        }
        let hi = lo + 1;
        let pick = match mode {
            Rounding::Zero => lo,
            Rounding::Down => {
                if neg {
                    hi
                } else {
                    lo
                }
            }
            Rounding::Up => {
                if neg {
                    lo
                } else {
                    hi
                }
            }
            Rounding::Nearest => {
                let mid = self.magnitude(lo).add(&self.magnitude(hi)).half();
                match cmp_to(&mid) {
                    Ordering::Less => lo,
                    Ordering::Greater => hi,
                    Ordering::Equal => {
                        if lo & 1 == 0 {
                            lo
                        } else {
                            hi
                        }
                    }
                }
            }
        };
        sign | pick
    }

    /// The sign of an exact zero sum whose terms are not both zeros of one
    /// sign (IEEE 754, 6.3).
    fn zero_sum(self, mode: Rounding) -> u64 {
        if mode == Rounding::Down {
            self.sign()
        } else {
            0
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Add,
    Sub,
    Mul,
    Fma,
    Div,
    Sqrt,
    Rcp,
}

/// The operation on the host in f64 (exact for f32 operands only in the
/// special cases it is used for).
fn host(f: Fmt, op: Op, x: &[u64]) -> u64 {
    let v: Vec<f64> = x
        .iter()
        .map(|&b| {
            if f.exp_bits == 8 {
                f64::from(f32::from_bits(b as u32))
            } else {
                f64::from_bits(b)
            }
        })
        .collect();
    let r = match op {
        Op::Add => v[0] + v[1],
        Op::Sub => v[0] - v[1],
        Op::Mul => v[0] * v[1],
        Op::Fma => v[0].mul_add(v[1], v[2]),
        Op::Div => v[0] / v[1],
        Op::Sqrt => v[0].sqrt(),
        Op::Rcp => 1.0 / v[0],
    };
    if r.is_nan() {
        f.nan()
    } else if f.exp_bits == 8 {
        u64::from((r as f32).to_bits())
    } else {
        r.to_bits()
    }
}

/// The exact sum of terms, with IEEE's sign for an exact zero.
fn sum_terms(f: Fmt, terms: &[Exact], mode: Rounding) -> u64 {
    let total = terms[0].add(&terms[1]);
    if total.is_zero() {
        let all_zero_same_sign = terms.iter().all(|t| t.is_zero()) && terms[0].neg == terms[1].neg;
        return if all_zero_same_sign {
            if terms[0].neg {
                f.sign()
            } else {
                0
            }
        } else {
            f.zero_sum(mode)
        };
    }
    f.round(total.neg, &|v| total.abs().cmp(v), mode)
}

/// The correctly rounded result of `op` per IEEE 754 with PTX's canonical NaN.
fn reference(f: Fmt, op: Op, x: &[u64], mode: Rounding) -> u64 {
    let Some(v) = x
        .iter()
        .map(|&b| f.decode(b))
        .collect::<Option<Vec<Exact>>>()
    else {
        return host(f, op, x);
    };
    match op {
        Op::Add => sum_terms(f, &[v[0].clone(), v[1].clone()], mode),
        Op::Sub => sum_terms(f, &[v[0].clone(), v[1].negated()], mode),
        Op::Mul => sum_terms(
            f,
            &[v[0].mul(&v[1]), Exact::new(v[0].neg != v[1].neg, 0, 0)],
            mode,
        ),
        Op::Fma => sum_terms(f, &[v[0].mul(&v[1]), v[2].clone()], mode),
        Op::Div | Op::Rcp => {
            let (a, b) = if op == Op::Div {
                (v[0].clone(), v[1].clone())
            } else {
                (Exact::new(false, 1, 0), v[0].clone())
            };
            if b.is_zero() || a.is_zero() {
                return host(f, op, x);
            }
            let (a_abs, b_abs) = (a.abs(), b.abs());
            f.round(a.neg != b.neg, &|w| a_abs.cmp(&w.mul(&b_abs)), mode)
        }
        Op::Sqrt => {
            let a = v[0].clone();
            if a.is_zero() || a.neg {
                return host(f, op, x);
            }
            f.round(false, &|w| a.cmp(&w.mul(w)), mode)
        }
    }
}

// ---------------------------------------------------------------------------
// The implementation under test, in a common shape.

fn imp32(op: Op, x: &[u64], mods: F32Mods) -> u64 {
    let a = x[0] as u32;
    let r = match op {
        Op::Add => f32_binary(F32Op::Add, a, x[1] as u32, mods),
        Op::Sub => f32_binary(F32Op::Sub, a, x[1] as u32, mods),
        Op::Mul => f32_binary(F32Op::Mul, a, x[1] as u32, mods),
        Op::Div => f32_binary(F32Op::Div, a, x[1] as u32, mods),
        Op::Fma => f32_fma(a, x[1] as u32, x[2] as u32, mods),
        Op::Sqrt => f32_unary(F32Unary::Sqrt, a, mods),
        Op::Rcp => f32_unary(F32Unary::Rcp, a, mods),
    };
    u64::from(r)
}

fn imp64(op: Op, x: &[u64], mode: Rounding) -> u64 {
    match op {
        Op::Add => f64_binary(F64Op::Add, x[0], x[1], mode),
        Op::Sub => f64_binary(F64Op::Sub, x[0], x[1], mode),
        Op::Mul => f64_binary(F64Op::Mul, x[0], x[1], mode),
        Op::Div => f64_binary(F64Op::Div, x[0], x[1], mode),
        Op::Fma => f64_fma(x[0], x[1], x[2], mode),
        Op::Sqrt => f64_unary(F64Unary::Sqrt, x[0], mode),
        Op::Rcp => f64_unary(F64Unary::Rcp, x[0], mode),
    }
}

fn arity(op: Op) -> usize {
    match op {
        Op::Sqrt | Op::Rcp => 1,
        Op::Fma => 3,
        _ => 2,
    }
}

/// `.sat` per the ISA: [0, 1], NaN to +0, and -0 to +0.
fn saturate32(bits: u64) -> u64 {
    let one = u64::from(1f32.to_bits());
    if bits & F32.sign() != 0 || bits > F32.inf() {
        0
    } else {
        bits.min(one)
    }
}

fn check32(op: Op, x: &[u64], mode: Rounding, ftz: bool, sat: bool) -> Result<(), TestCaseError> {
    let inputs: Vec<u64> = x
        .iter()
        .map(|&b| if ftz { F32.flush(b) } else { b })
        .collect();
    let mut want = reference(F32, op, &inputs, mode);
    if ftz {
        want = F32.flush(want);
    }
    if sat {
        want = saturate32(want);
    }
    let rounding = if mode == Rounding::Nearest && !sat {
        None
    } else {
        Some(mode)
    };
    let got = imp32(op, x, F32Mods { rounding, ftz, sat });
    prop_assert_eq!(
        got,
        want,
        "{:?}.{:?} ftz={} sat={} on {:x?}: got {:#x}, want {:#x}",
        op,
        mode,
        ftz,
        sat,
        x,
        got,
        want
    );
    Ok(())
}

fn check64(op: Op, x: &[u64], mode: Rounding) -> Result<(), TestCaseError> {
    let want = reference(F64, op, x, mode);
    let got = imp64(op, x, mode);
    prop_assert_eq!(
        got,
        want,
        "{:?}.{:?} on {:x?}: got {:#x}, want {:#x}",
        op,
        mode,
        x,
        got,
        want
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Operands: raw bit patterns, operands of nearby magnitude with sparse
// significands (ties, exact results, cancellation), and edge values.

fn edges(f: Fmt) -> Vec<u64> {
    let inf = f.inf();
    let min_normal = 1u64 << f.frac_bits;
    let one = (f.bias() as u64) << f.frac_bits;
    let mut v = vec![
        0,
        1,
        2,
        3,
        min_normal - 1,
        min_normal,
        min_normal + 1,
        one - 1,
        one,
        one + 1,
        one + (1 << (f.frac_bits - 1)),
        inf - 1,
        inf - 2,
        inf,
        inf + 1,
        f.nan(),
        (f.bias() as u64 + f.frac_bits as u64) << f.frac_bits,
    ];
    let negated: Vec<u64> = v.iter().map(|&b| b | f.sign()).collect();
    v.extend(negated);
    v
}

fn nearby(f: Fmt) -> impl Strategy<Value = Vec<u64>> {
    let ebits = f.exp_bits;
    let frac_bits = f.frac_bits;
    (
        0u64..(1 << ebits),
        proptest::collection::vec(
            (
                any::<bool>(),
                -(frac_bits as i64 + 3)..=(frac_bits as i64 + 3),
                any::<u64>(),
                0u32..=frac_bits,
            ),
            3,
        ),
    )
        .prop_map(move |(base, parts)| {
            parts
                .into_iter()
                .map(|(neg, delta, frac, keep)| {
                    let field = (base as i64 + delta).clamp(0, (1 << ebits) - 1) as u64;
                    // Keep only `keep` random low fraction bits set, often few.
                    let frac = (frac & ((1u64 << frac_bits) - 1)) >> (frac_bits - keep);
                    let frac = frac << ((frac_bits - keep) / 2);
                    let frac = frac & ((1u64 << frac_bits) - 1);
                    let bits = (field << frac_bits) | frac;
                    if neg {
                        bits | (1 << (ebits + frac_bits))
                    } else {
                        bits
                    }
                })
                .collect()
        })
}

fn operands(f: Fmt) -> impl Strategy<Value = Vec<u64>> {
    let mask = (f.sign() << 1).wrapping_sub(1);
    prop_oneof![
        proptest::collection::vec(any::<u64>().prop_map(move |b| b & mask), 3),
        nearby(f),
        nearby(f).prop_map(move |mut v| {
            // c close to -a*b for fma cancellation: take c = -(a rounded).
            v[2] = v[0] ^ f.sign();
            v
        }),
    ]
}

const OPS: [Op; 7] = [
    Op::Add,
    Op::Sub,
    Op::Mul,
    Op::Fma,
    Op::Div,
    Op::Sqrt,
    Op::Rcp,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn f32_ops_round_correctly(x in operands(F32), op in 0usize..7, m in 0usize..4,
                               ftz in any::<bool>(), sat in 0u8..4) {
        let op = OPS[op];
        check32(op, &x[..arity(op)], MODES[m], ftz, sat == 0)?;
    }

    #[test]
    fn f64_ops_round_correctly(x in operands(F64), op in 0usize..7, m in 0usize..4) {
        let op = OPS[op];
        check64(op, &x[..arity(op)], MODES[m])?;
    }
}

#[test]
fn f32_edge_operands_in_every_mode() {
    let e = edges(F32);
    for op in OPS {
        for mode in MODES {
            for &a in &e {
                for &b in &e {
                    let c_list: &[u64] = if op == Op::Fma {
                        &e[..e.len() / 2]
                    } else {
                        &[0]
                    };
                    for &c in c_list {
                        for (ftz, sat) in [(false, false), (true, false), (false, true)] {
                            check32(op, &[a, b, c][..arity(op)], mode, ftz, sat).unwrap();
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn f64_edge_operands_in_every_mode() {
    let e = edges(F64);
    for op in OPS {
        for mode in MODES {
            for &a in &e {
                for &b in &e {
                    let c_list: &[u64] = if op == Op::Fma {
                        &e[..e.len() / 2]
                    } else {
                        &[0]
                    };
                    for &c in c_list {
                        check64(op, &[a, b, c][..arity(op)], mode).unwrap();
                    }
                }
            }
        }
    }
}

#[test]
fn directed_rounding_examples() {
    // 1 + 2^-30 in f32: inexact, between 1 and 1+2^-23.
    let (one, tiny) = (1f32.to_bits(), 2f32.powi(-30).to_bits());
    let add = |m| {
        f32_binary(
            F32Op::Add,
            one,
            tiny,
            F32Mods {
                rounding: Some(m),
                ..Default::default()
            },
        )
    };
    assert_eq!(add(Rounding::Nearest), one);
    assert_eq!(add(Rounding::Zero), one);
    assert_eq!(add(Rounding::Down), one);
    assert_eq!(add(Rounding::Up), one + 1);
    // 1/3 in f64: .rm and .rz give the lower neighbour, .rp the upper.
    let third = |m| f64_binary(F64Op::Div, 1f64.to_bits(), 3f64.to_bits(), m);
    assert_eq!(third(Rounding::Nearest), (1.0f64 / 3.0).to_bits());
    assert_eq!(third(Rounding::Down), (1.0f64 / 3.0).to_bits());
    assert_eq!(third(Rounding::Up), (1.0f64 / 3.0).to_bits() + 1);
    // Overflow: .rz and .rm of a huge positive product stay at the largest finite.
    let big = f32::MAX.to_bits();
    let mul = |m| {
        f32_binary(
            F32Op::Mul,
            big,
            2f32.to_bits(),
            F32Mods {
                rounding: Some(m),
                ..Default::default()
            },
        )
    };
    assert_eq!(mul(Rounding::Nearest), f32::INFINITY.to_bits());
    assert_eq!(mul(Rounding::Zero), big);
    assert_eq!(mul(Rounding::Down), big);
    assert_eq!(mul(Rounding::Up), f32::INFINITY.to_bits());
    // x - x is -0 only when rounding down.
    let sub = |m| f64_binary(F64Op::Sub, 5f64.to_bits(), 5f64.to_bits(), m);
    assert_eq!(sub(Rounding::Nearest), 0);
    assert_eq!(sub(Rounding::Down), 1 << 63);
}

#[test]
fn nan_results_are_canonical() {
    let m = F32Mods::default();
    let snan = 0x7f80_0001;
    let neg_nan = 0xffc0_1234;
    assert_eq!(f32_binary(F32Op::Add, snan, 1f32.to_bits(), m), 0x7fff_ffff);
    assert_eq!(
        f32_binary(F32Op::Mul, neg_nan, 1f32.to_bits(), m),
        0x7fff_ffff
    );
    assert_eq!(f32_fma(0, f32::INFINITY.to_bits(), 0, m), 0x7fff_ffff);
    assert_eq!(f32_unary(F32Unary::Sqrt, (-1f32).to_bits(), m), 0x7fff_ffff);
    assert_eq!(
        f64_binary(
            F64Op::Sub,
            f64::INFINITY.to_bits(),
            f64::INFINITY.to_bits(),
            Rounding::Zero
        ),
        0x7fff_ffff_ffff_ffff
    );
    assert_eq!(
        f64_unary(F64Unary::Sqrt, (-2f64).to_bits(), Rounding::Up),
        0x7fff_ffff_ffff_ffff
    );
}

#[test]
fn ftz_flushes_inputs_and_results() {
    let ftz = F32Mods {
        ftz: true,
        ..Default::default()
    };
    let sub = 0x0000_0400; // a subnormal
    let min_normal = 0x0080_0000;
    // Input flushed: sub + 0 = +0; -sub * 1 = -0.
    assert_eq!(f32_binary(F32Op::Add, sub, 0, ftz), 0);
    assert_eq!(
        f32_binary(F32Op::Mul, sub | 0x8000_0000, 1f32.to_bits(), ftz),
        0x8000_0000
    );
    // Without .ftz the subnormal survives.
    assert_eq!(f32_binary(F32Op::Add, sub, 0, F32Mods::default()), sub);
    // Result flushed: min_normal / 2 is subnormal.
    assert_eq!(f32_binary(F32Op::Mul, min_normal, 0.5f32.to_bits(), ftz), 0);
    assert_eq!(
        f32_binary(F32Op::Mul, min_normal | 0x8000_0000, 0.5f32.to_bits(), ftz),
        0x8000_0000
    );
    // rcp of a flushed subnormal is infinity; neg of one is -0.
    assert_eq!(f32_unary(F32Unary::Rcp, sub, ftz), f32::INFINITY.to_bits());
    assert_eq!(f32_unary(F32Unary::Neg, sub, ftz), 0x8000_0000);
    assert_eq!(
        f32_unary(F32Unary::Neg, sub, F32Mods::default()),
        sub | 0x8000_0000
    );
}

#[test]
fn sat_clamps_to_unit_interval() {
    let sat = F32Mods {
        sat: true,
        ..Default::default()
    };
    let v = |x: f32| x.to_bits();
    assert_eq!(f32_binary(F32Op::Add, v(0.75), v(0.5), sat), v(1.0));
    assert_eq!(f32_binary(F32Op::Add, v(-0.75), v(0.5), sat), 0);
    assert_eq!(f32_binary(F32Op::Mul, v(0.25), v(0.5), sat), v(0.125));
    assert_eq!(
        f32_binary(
            F32Op::Sub,
            f32::INFINITY.to_bits(),
            f32::INFINITY.to_bits(),
            sat
        ),
        0
    );
    assert_eq!(f32_fma(v(-0.0), v(1.0), v(-0.0), sat), 0);
    assert_eq!(f32_fma(v(1e30), v(1e30), v(0.0), sat), v(1.0));
}

#[test]
fn min_max_follow_the_isa() {
    let m = F32Mods::default();
    let v = |x: f32| x.to_bits();
    let nan = 0x7fc0_0000;
    assert_eq!(f32_binary(F32Op::Min, nan, v(2.0), m), v(2.0));
    assert_eq!(f32_binary(F32Op::Max, v(2.0), nan, m), v(2.0));
    assert_eq!(f32_binary(F32Op::Min, nan, 0xffc0_0001, m), 0x7fff_ffff);
    assert_eq!(f32_binary(F32Op::Min, v(-1.0), v(3.0), m), v(-1.0));
    assert_eq!(f32_binary(F32Op::Max, v(-1.0), v(3.0), m), v(3.0));
    assert_eq!(f32_binary(F32Op::Min, v(0.0), v(-0.0), m), v(-0.0));
    assert_eq!(f32_binary(F32Op::Min, v(-0.0), v(0.0), m), v(-0.0));
    assert_eq!(f32_binary(F32Op::Max, v(-0.0), v(0.0), m), v(0.0));
    assert_eq!(f32_binary(F32Op::Max, v(0.0), v(-0.0), m), v(0.0));
    assert_eq!(
        f32_binary(F32Op::Max, f32::NEG_INFINITY.to_bits(), v(-3.0), m),
        v(-3.0)
    );
    // .ftz: a subnormal operand compares as a signed zero.
    let ftz = F32Mods {
        ftz: true,
        ..Default::default()
    };
    assert_eq!(
        f32_binary(F32Op::Max, 0x8000_0001, 0x8000_0000, ftz),
        0x8000_0000
    );
    assert_eq!(f32_binary(F32Op::Max, 0x0000_0001, 0x8000_0000, ftz), 0);
    let d = |x: f64| x.to_bits();
    assert_eq!(
        f64_binary(F64Op::Min, f64::NAN.to_bits(), d(1.5), Rounding::Nearest),
        d(1.5)
    );
    assert_eq!(
        f64_binary(
            F64Op::Max,
            f64::NAN.to_bits(),
            f64::NAN.to_bits(),
            Rounding::Nearest
        ),
        0x7fff_ffff_ffff_ffff
    );
    assert_eq!(
        f64_binary(F64Op::Min, d(0.0), d(-0.0), Rounding::Nearest),
        d(-0.0)
    );
    assert_eq!(
        f64_binary(F64Op::Max, d(-7.0), d(-8.0), Rounding::Nearest),
        d(-7.0)
    );
}

#[test]
fn comparisons_follow_the_isa_tables() {
    use FloatCmp::*;
    let v = |x: f32| x.to_bits();
    let nan = f32::NAN.to_bits();
    let table: [(FloatCmp, [bool; 4]); 14] = [
        // (1 vs 2, 2 vs 2, 3 vs 2, NaN vs 2)
        (Eq, [false, true, false, false]),
        (Ne, [true, false, true, false]),
        (Lt, [true, false, false, false]),
        (Le, [true, true, false, false]),
        (Gt, [false, false, true, false]),
        (Ge, [false, true, true, false]),
        (Equ, [false, true, false, true]),
        (Neu, [true, false, true, true]),
        (Ltu, [true, false, false, true]),
        (Leu, [true, true, false, true]),
        (Gtu, [false, false, true, true]),
        (Geu, [false, true, true, true]),
        (Num, [true, true, true, false]),
        (Nan, [false, false, false, true]),
    ];
    for (cmp, want) in table {
        let a = [v(1.0), v(2.0), v(3.0), nan];
        for i in 0..4 {
            assert_eq!(
                f32_compare(cmp, a[i], v(2.0), false),
                want[i],
                "{cmp:?} f32 case {i}"
            );
            let a64 = f64::from(f32::from_bits(a[i])).to_bits();
            assert_eq!(
                f64_compare(cmp, a64, 2f64.to_bits()),
                want[i],
                "{cmp:?} f64 case {i}"
            );
        }
    }
    // Signed zeros are equal; .ftz makes a subnormal equal to zero.
    assert!(f32_compare(Eq, v(0.0), v(-0.0), false));
    assert!(!f32_compare(Eq, 1, 0, false));
    assert!(f32_compare(Eq, 1, 0, true));
}

#[test]
fn sign_operations() {
    let m = F32Mods::default();
    let v = |x: f32| x.to_bits();
    assert_eq!(f32_unary(F32Unary::Neg, v(1.5), m), v(-1.5));
    assert_eq!(f32_unary(F32Unary::Abs, v(-1.5), m), v(1.5));
    assert_eq!(
        f32_unary(F32Unary::Abs, 0x8000_0001, F32Mods { ftz: true, ..m }),
        0
    );
    assert_eq!(f32_copysign(v(-1.0), v(2.5)), v(-2.5));
    assert_eq!(f32_copysign(v(1.0), v(-2.5)), v(2.5));
    assert_eq!(f64_unary(F64Unary::Neg, 0, Rounding::Nearest), 1 << 63);
    assert_eq!(
        f64_unary(F64Unary::Abs, (-3f64).to_bits(), Rounding::Nearest),
        3f64.to_bits()
    );
}
