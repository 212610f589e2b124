//! Integer and bit arithmetic (PTX ISA, "Integer Arithmetic Instructions",
//! "Logic and Shift Instructions", "Comparison and Selection
//! Instructions"), chosen per operation and type at load time. Values are
//! raw register bits: each function reads the low bits its type names
//! (sign-extending signed types) and returns its result zero-extended.

use super::inst::{Cmp, Fn1, Fn2, Fn3};

/// An integer operand type: `.b`/`.u`/`.s` of 8 to 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntTy {
    /// 8, 16, 32 or 64.
    pub bits: u32,
    /// A `.s` type.
    pub signed: bool,
}

/// The mask of the low `bits` bits.
pub fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Sign-extends the low `bits` bits of `v`.
pub fn sext(v: u64, bits: u32) -> u64 {
    let s = 64 - bits;
    (((v << s) as i64) >> s) as u64
}

macro_rules! per_width {
    ($bits:expr, $signed:expr, |$a:ident, $b:ident| u => $u:expr, s => $s:expr) => {
        match ($bits, $signed) {
            (16, false) => Some(
                (|a: u64, b: u64| {
                    let ($a, $b) = (a as u16, b as u16);
                    ($u) as u16 as u64
                }) as Fn2,
            ),
            (16, true) => Some(
                (|a: u64, b: u64| {
                    let ($a, $b) = (a as i16, b as i16);
                    ($s) as u16 as u64
                }) as Fn2,
            ),
            (32, false) => Some(
                (|a: u64, b: u64| {
                    let ($a, $b) = (a as u32, b as u32);
                    ($u) as u32 as u64
                }) as Fn2,
            ),
            (32, true) => Some(
                (|a: u64, b: u64| {
                    let ($a, $b) = (a as i32, b as i32);
                    ($s) as u32 as u64
                }) as Fn2,
            ),
            (64, false) => Some(
                (|a: u64, b: u64| {
                    let ($a, $b) = (a, b);
                    $u
                }) as Fn2,
            ),
            (64, true) => Some(
                (|a: u64, b: u64| {
                    let ($a, $b) = (a as i64, b as i64);
                    ($s) as u64
                }) as Fn2,
            ),
            _ => None,
        }
    };
}

/// Same-width binary operations: `add sub mul.lo mul.hi div rem min max
/// and or xor`. `None` when the operation or type is not defined.
pub fn binary(op: &str, ty: IntTy) -> Option<Fn2> {
    let (w, s) = (ty.bits, ty.signed);
    match op {
        "add" => per_width!(w, s, |a, b| u => a.wrapping_add(b), s => a.wrapping_add(b)),
        "sub" => per_width!(w, s, |a, b| u => a.wrapping_sub(b), s => a.wrapping_sub(b)),
        "mul.lo" => per_width!(w, s, |a, b| u => a.wrapping_mul(b), s => a.wrapping_mul(b)),
        // Division by zero: the ISA leaves the value unspecified; all ones
        // (what the hardware gives for the unsigned quotient) is returned.
        "div" => per_width!(w, s, |a, b| u => a.checked_div(b).unwrap_or(!0),
            s => a.checked_div(b).unwrap_or(if b == 0 { -1 } else { a.wrapping_div(b) })),
        // Remainder by zero: unspecified; the dividend is returned.
        "rem" => per_width!(w, s, |a, b| u => a.checked_rem(b).unwrap_or(a),
            s => if b == 0 { a } else { a.wrapping_rem(b) }),
        "min" => per_width!(w, s, |a, b| u => a.min(b), s => a.min(b)),
        "max" => per_width!(w, s, |a, b| u => a.max(b), s => a.max(b)),
        "and" if !s => per_width!(w, s, |a, b| u => a & b, s => a & b),
        "or" if !s => per_width!(w, s, |a, b| u => a | b, s => a | b),
        "xor" if !s => per_width!(w, s, |a, b| u => a ^ b, s => a ^ b),
        "mul.hi" => mul_hi(ty),
        _ => None,
    }
}

fn mul_hi(ty: IntTy) -> Option<Fn2> {
    Some(match (ty.bits, ty.signed) {
        (16, false) => |a, b| ((a as u16 as u32 * b as u16 as u32) >> 16) as u64,
        (16, true) => |a, b| (((a as i16 as i32 * b as i16 as i32) >> 16) as u16) as u64,
        (32, false) => |a, b| (a as u32 as u64 * b as u32 as u64) >> 32,
        (32, true) => |a, b| (((a as i32 as i64 * b as i32 as i64) >> 32) as u32) as u64,
        (64, false) => |a, b| ((a as u128 * b as u128) >> 64) as u64,
        (64, true) => |a, b| ((a as i64 as i128 * b as i64 as i128) >> 64) as u64,
        _ => return None,
    })
}

/// `mul.wide.{u16,s16,u32,s32}`: the double-width product.
pub fn mul_wide(ty: IntTy) -> Option<Fn2> {
    Some(match (ty.bits, ty.signed) {
        (16, false) => |a, b| (a as u16 as u32 * b as u16 as u32) as u64,
        (16, true) => |a, b| (a as i16 as i32).wrapping_mul(b as i16 as i32) as u32 as u64,
        (32, false) => |a, b| a as u32 as u64 * b as u32 as u64,
        (32, true) => |a, b| (a as i32 as i64 * b as i32 as i64) as u64,
        _ => return None,
    })
}

/// `shl.bN`, `shr.{bN,uN,sN}`: the shift amount is an unsigned 32-bit
/// value; amounts above the width clamp to the width.
pub fn shift(left: bool, ty: IntTy) -> Option<Fn2> {
    Some(match (left, ty.bits, ty.signed) {
        (true, 16, _) => |a, b| ((a as u16 as u32) << (b as u32).min(16)) as u16 as u64,
        (true, 32, _) => |a, b| ((a as u32 as u64) << (b as u32).min(32)) as u32 as u64,
        (true, 64, _) => |a, b| a.checked_shl(b as u32).unwrap_or(0),
        (false, 16, false) => |a, b| ((a as u16 as u32) >> (b as u32).min(16)) as u64,
        (false, 16, true) => |a, b| ((a as i16) >> (b as u32).min(15)) as u16 as u64,
        (false, 32, false) => |a, b| (a as u32 as u64) >> (b as u32).min(32),
        (false, 32, true) => |a, b| ((a as i32) >> (b as u32).min(31)) as u32 as u64,
        (false, 64, false) => |a, b| a.checked_shr(b as u32).unwrap_or(0),
        (false, 64, true) => |a, b| ((a as i64) >> (b as u32).min(63)) as u64,
        _ => return None,
    })
}

/// `mad.lo`, `mad.hi`, `mad.wide`: `a * b + c` with the product's part
/// the modifier names (the addend of `.wide` is double width).
pub fn mad(part: &str, ty: IntTy) -> Option<Fn3> {
    match part {
        "lo" => Some(match ty.bits {
            16 => |a, b, c| (a as u16).wrapping_mul(b as u16).wrapping_add(c as u16) as u64,
            32 => |a, b, c| (a as u32).wrapping_mul(b as u32).wrapping_add(c as u32) as u64,
            64 => |a, b, c| a.wrapping_mul(b).wrapping_add(c),
            _ => return None,
        }),
        "hi" => Some(match (ty.bits, ty.signed) {
            (16, false) => |a, b, c| mul_hi_u16(a, b).wrapping_add(c) & 0xffff,
            (16, true) => |a, b, c| (mul_hi_s16(a, b).wrapping_add(c)) & 0xffff,
            (32, false) => {
                |a, b, c| ((a as u32 as u64 * b as u32 as u64) >> 32).wrapping_add(c) & 0xffff_ffff
            }
            (32, true) => |a, b, c| {
                ((((a as i32 as i64 * b as i32 as i64) >> 32) as u64).wrapping_add(c)) & 0xffff_ffff
            },
            (64, false) => |a, b, c| (((a as u128 * b as u128) >> 64) as u64).wrapping_add(c),
            (64, true) => {
                |a, b, c| (((a as i64 as i128 * b as i64 as i128) >> 64) as u64).wrapping_add(c)
            }
            _ => return None,
        }),
        "wide" => Some(match (ty.bits, ty.signed) {
            (16, false) => {
                |a, b, c| (a as u16 as u32 * b as u16 as u32).wrapping_add(c as u32) as u64
            }
            (16, true) => {
                |a, b, c| (a as i16 as i32 * b as i16 as i32).wrapping_add(c as i32) as u32 as u64
            }
            (32, false) => |a, b, c| (a as u32 as u64 * b as u32 as u64).wrapping_add(c),
            (32, true) => |a, b, c| ((a as i32 as i64 * b as i32 as i64) as u64).wrapping_add(c),
            _ => return None,
        }),
        _ => None,
    }
}

fn mul_hi_u16(a: u64, b: u64) -> u64 {
    (a as u16 as u64 * b as u16 as u64) >> 16
}

fn mul_hi_s16(a: u64, b: u64) -> u64 {
    ((a as i16 as i64 * b as i16 as i64) >> 16) as u64
}

/// Unary integer operations: `not neg abs popc clz brev cnot bfind`
/// (`bfind.shiftamt` as `"bfind.shiftamt"`).
pub fn unary(op: &str, ty: IntTy) -> Option<Fn1> {
    let (w, s) = (ty.bits, ty.signed);
    Some(match (op, w, s) {
        ("not", 16, false) => |a| !a & 0xffff,
        ("not", 32, false) => |a| !a & 0xffff_ffff,
        ("not", 64, false) => |a| !a,
        ("cnot", 16, false) => |a| (a as u16 == 0) as u64,
        ("cnot", 32, false) => |a| (a as u32 == 0) as u64,
        ("cnot", 64, false) => |a| (a == 0) as u64,
        ("neg", 16, true) => |a| (a as i16).wrapping_neg() as u16 as u64,
        ("neg", 32, true) => |a| (a as i32).wrapping_neg() as u32 as u64,
        ("neg", 64, true) => |a| (a as i64).wrapping_neg() as u64,
        ("abs", 16, true) => |a| (a as i16).wrapping_abs() as u16 as u64,
        ("abs", 32, true) => |a| (a as i32).wrapping_abs() as u32 as u64,
        ("abs", 64, true) => |a| (a as i64).wrapping_abs() as u64,
        ("popc", 32, false) => |a| (a as u32).count_ones() as u64,
        ("popc", 64, false) => |a| a.count_ones() as u64,
        ("clz", 32, false) => |a| (a as u32).leading_zeros() as u64,
        ("clz", 64, false) => |a| a.leading_zeros() as u64,
        ("brev", 32, false) => |a| (a as u32).reverse_bits() as u64,
        ("brev", 64, false) => |a| a.reverse_bits(),
        ("bfind", 32, false) => |a| bfind(a as u32 as u64, 32, false),
        ("bfind", 32, true) => |a| bfind(a as u32 as u64, 32, true),
        ("bfind", 64, false) => |a| bfind(a, 64, false),
        ("bfind", 64, true) => |a| bfind(a, 64, true),
        ("bfind.shiftamt", 32, false) => |a| bfind_shiftamt(a as u32 as u64, 32, false),
        ("bfind.shiftamt", 32, true) => |a| bfind_shiftamt(a as u32 as u64, 32, true),
        ("bfind.shiftamt", 64, false) => |a| bfind_shiftamt(a, 64, false),
        ("bfind.shiftamt", 64, true) => |a| bfind_shiftamt(a, 64, true),
        _ => return None,
    })
}

/// `bfind`: the bit position of the most significant non-sign bit, or
/// `0xffffffff` when there is none.
fn bfind(a: u64, bits: u32, signed: bool) -> u64 {
    let v = if signed && (a >> (bits - 1)) & 1 == 1 {
        !a & mask(bits)
    } else {
        a
    };
    if v == 0 {
        0xffff_ffff
    } else {
        (63 - v.leading_zeros()) as u64
    }
}

/// `bfind.shiftamt`: the left shift that moves the found bit to the top.
fn bfind_shiftamt(a: u64, bits: u32, signed: bool) -> u64 {
    match bfind(a, bits, signed) {
        0xffff_ffff => 0xffff_ffff,
        pos => (bits as u64 - 1) - pos,
    }
}

/// `shf.{l,r}.{wrap,clamp}.b32 d, a, b, c`: funnel shift of `{b, a}` by `c`.
pub fn funnel(left: bool, wrap: bool) -> Fn3 {
    match (left, wrap) {
        (true, true) => |a, b, c| funnel_l(a, b, c as u32 & 31),
        (true, false) => |a, b, c| funnel_l(a, b, (c as u32).min(32)),
        (false, true) => |a, b, c| funnel_r(a, b, c as u32 & 31),
        (false, false) => |a, b, c| funnel_r(a, b, (c as u32).min(32)),
    }
}

fn funnel_l(a: u64, b: u64, n: u32) -> u64 {
    let v = ((b as u32 as u64) << 32) | a as u32 as u64;
    ((v << n) >> 32) as u32 as u64
}

fn funnel_r(a: u64, b: u64, n: u32) -> u64 {
    let v = ((b as u32 as u64) << 32) | a as u32 as u64;
    (v >> n) as u32 as u64
}

/// `bfe.{u32,s32,u64,s64} d, a, pos, len`: extracts `len` bits at `pos`
/// (both taken from their low 8 bits), sign-extending from the last bit
/// extracted for signed types (zero when `len` is 0).
pub fn bfe(ty: IntTy) -> Option<Fn3> {
    Some(match (ty.bits, ty.signed) {
        (32, false) => |a, b, c| bfe_impl(a, b, c, 32, false),
        (32, true) => |a, b, c| bfe_impl(a, b, c, 32, true),
        (64, false) => |a, b, c| bfe_impl(a, b, c, 64, false),
        (64, true) => |a, b, c| bfe_impl(a, b, c, 64, true),
        _ => return None,
    })
}

fn bfe_impl(a: u64, pos: u64, len: u64, bits: u32, signed: bool) -> u64 {
    let (pos, len) = ((pos & 0xff) as u32, (len & 0xff) as u32);
    let a = a & mask(bits);
    let msb = bits - 1;
    let sbit = if signed && len != 0 {
        let at = (pos + len - 1).min(msb);
        (a >> at) & 1 == 1
    } else {
        false
    };
    let mut d = 0u64;
    for i in 0..bits {
        let bit = if i < len && pos + i <= msb {
            (a >> (pos + i)) & 1 == 1
        } else {
            sbit
        };
        d |= (bit as u64) << i;
    }
    d
}

/// `bfi.bN f, a, b, pos, len`: `b` with `len` bits of `a` inserted at `pos`.
pub fn bfi(a: u64, b: u64, pos: u64, len: u64, bits: u32) -> u64 {
    let (pos, len) = ((pos & 0xff) as u32, (len & 0xff) as u32);
    let mut f = b & mask(bits);
    for i in 0..len {
        if pos + i >= bits {
            break;
        }
        let bit = (a >> i) & 1;
        f = (f & !(1 << (pos + i))) | (bit << (pos + i));
    }
    f
}

/// `setp.cmp.type` for integer and bit types (`lo ls hi hs` are the
/// unsigned forms; bit types allow `eq ne` only).
pub fn compare(cmp: &str, ty: IntTy, bit_type: bool) -> Option<Cmp> {
    macro_rules! cmp_fn {
        ($t:ty, $op:tt) => {
            (|a: u64, b: u64| (a as $t) $op (b as $t)) as Cmp
        };
    }
    macro_rules! by_type {
        ($op:tt, $signed:expr) => {
            match (ty.bits, $signed) {
                (8, false) => cmp_fn!(u8, $op),
                (8, true) => cmp_fn!(i8, $op),
                (16, false) => cmp_fn!(u16, $op),
                (16, true) => cmp_fn!(i16, $op),
                (32, false) => cmp_fn!(u32, $op),
                (32, true) => cmp_fn!(i32, $op),
                (64, false) => cmp_fn!(u64, $op),
                (64, true) => cmp_fn!(i64, $op),
                _ => return None,
            }
        };
    }
    let s = ty.signed;
    Some(match cmp {
        "eq" => by_type!(==, false),
        "ne" => by_type!(!=, false),
        _ if bit_type => return None,
        "lt" => by_type!(<, s),
        "le" => by_type!(<=, s),
        "gt" => by_type!(>, s),
        "ge" => by_type!(>=, s),
        "lo" => by_type!(<, false),
        "ls" => by_type!(<=, false),
        "hi" => by_type!(>, false),
        "hs" => by_type!(>=, false),
        _ => return None,
    })
}
