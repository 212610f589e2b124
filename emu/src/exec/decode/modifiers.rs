//! Reading an opcode's modifiers: each one must be consumed by the
//! instruction's decoder, so an unknown modifier is refused, never ignored.

use crate::numeric::{Rounding, Scalar};

/// A PTX operand type named by a modifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// `.pred`
    Pred,
    /// `.bN`
    B(u32),
    /// `.uN`
    U(u32),
    /// `.sN`
    S(u32),
    /// `.f16`
    F16,
    /// `.f16x2`
    F16x2,
    /// `.bf16`
    Bf16,
    /// `.bf16x2`
    Bf16x2,
    /// `.f32`
    F32,
    /// `.f64`
    F64,
}

impl Ty {
    /// Reads a type modifier.
    pub fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "pred" => Ty::Pred,
            "b8" => Ty::B(8),
            "b16" => Ty::B(16),
            "b32" => Ty::B(32),
            "b64" => Ty::B(64),
            "u8" => Ty::U(8),
            "u16" => Ty::U(16),
            "u32" => Ty::U(32),
            "u64" => Ty::U(64),
            "s8" => Ty::S(8),
            "s16" => Ty::S(16),
            "s32" => Ty::S(32),
            "s64" => Ty::S(64),
            "f16" => Ty::F16,
            "f16x2" => Ty::F16x2,
            "bf16" => Ty::Bf16,
            "bf16x2" => Ty::Bf16x2,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            _ => return None,
        })
    }

    /// The width in bits (1 for `.pred`).
    pub fn bits(self) -> u32 {
        match self {
            Ty::Pred => 1,
            Ty::B(n) | Ty::U(n) | Ty::S(n) => n,
            Ty::F16 | Ty::Bf16 => 16,
            Ty::F16x2 | Ty::Bf16x2 | Ty::F32 => 32,
            Ty::F64 => 64,
        }
    }

    /// The integer view of a `.b`/`.u`/`.s` type.
    pub fn int(self) -> Option<super::super::alu::IntTy> {
        match self {
            Ty::B(n) | Ty::U(n) => Some(super::super::alu::IntTy {
                bits: n,
                signed: false,
            }),
            Ty::S(n) => Some(super::super::alu::IntTy {
                bits: n,
                signed: true,
            }),
            _ => None,
        }
    }

    /// The numeric library's name for the type (bit types as unsigned).
    pub fn scalar(self) -> Option<Scalar> {
        Some(match self {
            Ty::B(8) | Ty::U(8) => Scalar::U8,
            Ty::B(16) | Ty::U(16) => Scalar::U16,
            Ty::B(32) | Ty::U(32) => Scalar::U32,
            Ty::B(64) | Ty::U(64) => Scalar::U64,
            Ty::S(8) => Scalar::S8,
            Ty::S(16) => Scalar::S16,
            Ty::S(32) => Scalar::S32,
            Ty::S(64) => Scalar::S64,
            Ty::F16 => Scalar::F16,
            Ty::Bf16 => Scalar::Bf16,
            Ty::F32 => Scalar::F32,
            Ty::F64 => Scalar::F64,
            _ => return None,
        })
    }
}

/// An opcode's modifiers, consumed one by one.
pub struct Mods<'a> {
    parts: &'a [String],
    used: Vec<bool>,
}

impl<'a> Mods<'a> {
    /// The modifiers after the opcode name.
    pub fn new(opcode: &'a [String]) -> Self {
        let parts = &opcode[1..];
        Mods {
            parts,
            used: vec![false; parts.len()],
        }
    }

    /// Consumes `m` if present.
    pub fn take(&mut self, m: &str) -> bool {
        for (i, p) in self.parts.iter().enumerate() {
            if !self.used[i] && p == m {
                self.used[i] = true;
                return true;
            }
        }
        false
    }

    /// Consumes the first of `options` present, returning it.
    pub fn one_of(&mut self, options: &[&'static str]) -> Option<&'static str> {
        for (i, p) in self.parts.iter().enumerate() {
            if self.used[i] {
                continue;
            }
            if let Some(o) = options.iter().find(|o| **o == p.as_str()) {
                self.used[i] = true;
                return Some(o);
            }
        }
        None
    }

    /// Consumes the next unused type modifier.
    pub fn ty(&mut self) -> Result<Ty, String> {
        for (i, p) in self.parts.iter().enumerate() {
            if self.used[i] {
                continue;
            }
            if let Some(t) = Ty::parse(p) {
                self.used[i] = true;
                return Ok(t);
            }
        }
        Err("a type modifier is missing".into())
    }

    /// Consumes a rounding modifier `.rn .rz .rm .rp`.
    pub fn rounding(&mut self) -> Option<Rounding> {
        self.one_of(&["rn", "rz", "rm", "rp"]).map(|r| match r {
            "rn" => Rounding::Nearest,
            "rz" => Rounding::Zero,
            "rm" => Rounding::Down,
            _ => Rounding::Up,
        })
    }

    /// Consumes an integer rounding modifier `.rni .rzi .rmi .rpi`.
    pub fn int_rounding(&mut self) -> Option<Rounding> {
        self.one_of(&["rni", "rzi", "rmi", "rpi"]).map(|r| match r {
            "rni" => Rounding::Nearest,
            "rzi" => Rounding::Zero,
            "rmi" => Rounding::Down,
            _ => Rounding::Up,
        })
    }

    /// Consumes any of the modifiers that do not change the result in the
    /// emulator (cache and scope hints).
    pub fn hints(&mut self, hints: &[&'static str]) {
        while self.one_of(hints).is_some() {}
    }

    /// Succeeds only if every modifier was consumed.
    pub fn finish(self) -> Result<(), String> {
        let left: Vec<&str> = self
            .parts
            .iter()
            .zip(&self.used)
            .filter(|(_, u)| !**u)
            .map(|(p, _)| p.as_str())
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "modifier .{} is not implemented here",
                left.join(" .")
            ))
        }
    }
}
