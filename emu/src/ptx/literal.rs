//! Numeric literals and the sizes of PTX's fundamental types.

use super::ast::Immediate;

/// The size in bytes of a fundamental type named without its dot (`u32`,
/// `f16x2`, `pred`), or `None` when it is not one.
pub(crate) fn type_size(ty: &str) -> Option<u32> {
    Some(match ty {
        "pred" => 1,
        "b8" | "u8" | "s8" => 1,
        "b16" | "u16" | "s16" | "f16" | "bf16" | "e4m3x2" | "e5m2x2" => 2,
        "b32" | "u32" | "s32" | "f32" | "f16x2" | "bf16x2" | "tf32" => 4,
        "b64" | "u64" | "s64" | "f64" => 8,
        "b128" => 16,
        _ => return None,
    })
}

/// Reads an unsigned integer literal: decimal, hex `0x`, binary `0b` or
/// octal `0...`, with an optional `U` suffix, as its 64-bit pattern.
fn parse_unsigned(text: &str) -> Result<u64, String> {
    let body = text.strip_suffix(['U', 'u']).unwrap_or(text);
    let (digits, radix) = if let Some(h) = body.strip_prefix("0x").or(body.strip_prefix("0X")) {
        (h, 16)
    } else if let Some(b) = body.strip_prefix("0b").or(body.strip_prefix("0B")) {
        (b, 2)
    } else if body.len() > 1 && body.starts_with('0') {
        (&body[1..], 8)
    } else {
        (body, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(format!("`{text}` is not a valid integer literal"));
    }
    u64::from_str_radix(digits, radix)
        .map_err(|_| format!("the integer literal `{text}` does not fit in 64 bits"))
}

/// Reads a hex bit pattern of exactly `len` digits.
fn parse_bits(text: &str, hex: &str, len: usize) -> Result<u64, String> {
    if hex.len() != len || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "`{text}` is not a valid float literal: expected exactly {len} hex digits after the prefix"
        ));
    }
    u64::from_str_radix(hex, 16).map_err(|_| format!("`{text}` is not a valid float literal"))
}

/// Reads a numeric literal as the lexer gave it (without a sign), negated
/// when `negative`.
pub(crate) fn parse_immediate(text: &str, negative: bool) -> Result<Immediate, String> {
    let prefix = text.get(..2).unwrap_or("");
    if matches!(prefix, "0f" | "0F" | "0d" | "0D") {
        if negative {
            return Err(format!(
                "a `-` before the float bit pattern `{text}` (write the sign in the pattern)"
            ));
        }
        let hex = &text[2..];
        return if matches!(prefix, "0f" | "0F") {
            parse_bits(text, hex, 8).map(|b| Immediate::F32Bits(b as u32))
        } else {
            parse_bits(text, hex, 16).map(Immediate::F64Bits)
        };
    }
    let hexlike = matches!(prefix, "0x" | "0X" | "0b" | "0B");
    if !hexlike && text.contains(['.', 'e', 'E']) {
        let value: f64 = text
            .parse()
            .map_err(|_| format!("`{text}` is not a valid floating-point literal"))?;
        return Ok(Immediate::Float(if negative { -value } else { value }));
    }
    let bits = parse_unsigned(text)?;
    let value = bits as i64;
    Ok(Immediate::Int(if negative {
        value.wrapping_neg()
    } else {
        value
    }))
}

/// Converts an initialiser element to the form the variable's element type
/// gives it: float types hold bit patterns of their own width; integer and
/// bit types hold integers or bit patterns as written.
pub(crate) fn convert_init(value: Immediate, ty: &str) -> Result<Immediate, String> {
    match (ty, value) {
        ("f32", Immediate::Float(v)) => Ok(Immediate::F32Bits((v as f32).to_bits())),
        ("f32", Immediate::F64Bits(b)) => Ok(Immediate::F32Bits((f64::from_bits(b) as f32).to_bits())),
        ("f32", Immediate::Int(i)) => Ok(Immediate::F32Bits((i as f32).to_bits())),
        ("f64", Immediate::Float(v)) => Ok(Immediate::F64Bits(v.to_bits())),
        ("f64", Immediate::F32Bits(b)) => Ok(Immediate::F64Bits(f64::from(f32::from_bits(b)).to_bits())),
        ("f64", Immediate::Int(i)) => Ok(Immediate::F64Bits((i as f64).to_bits())),
        (_, Immediate::Float(v)) => Err(format!(
            "the decimal float `{v}` initialises a `.{ty}` variable (only .f32 and .f64 take decimal floats)"
        )),
        (_, other) => Ok(other),
    }
}
