//! Decoding one instruction: opcode and modifiers to an [`Op`], operands to
//! slots. Everything not listed here is refused with a message.

use super::modifiers::{Mods, Ty};
use super::{Decoder, Name, Special};
use crate::exec::alu;
use crate::exec::inst::*;
use crate::numeric::approx::Approx;
use crate::numeric::convert::CvtMods;
use crate::numeric::float::{F32Mods, F32Op, F32Unary, F64Op, F64Unary, FloatCmp};
use crate::numeric::tensor::MmaType;
use crate::numeric::Rounding;
use crate::ptx::ast::{Function, Immediate, Instruction, Operand};

/// An instruction as text, for reports.
pub fn text(i: &Instruction) -> String {
    let mut s = String::new();
    if let Some((neg, p)) = &i.guard {
        s.push('@');
        if *neg {
            s.push('!');
        }
        s.push_str(p);
        s.push(' ');
    }
    s.push_str(&i.opcode.join("."));
    let ops: Vec<String> = i.operands.iter().map(operand_text).collect();
    if !ops.is_empty() {
        s.push(' ');
        s.push_str(&ops.join(", "));
    }
    s
}

/// An operand as text.
pub fn operand_text(o: &Operand) -> String {
    match o {
        Operand::Register(r) | Operand::Symbol(r) => r.clone(),
        Operand::NotRegister(r) => format!("!{r}"),
        Operand::Immediate(Immediate::Int(v)) => v.to_string(),
        Operand::Immediate(Immediate::F32Bits(b)) => format!("0f{b:08X}"),
        Operand::Immediate(Immediate::F64Bits(b)) => format!("0d{b:016X}"),
        Operand::Immediate(Immediate::Float(f)) => f.to_string(),
        Operand::Address { base, offset } => match base {
            Some(b) if *offset != 0 => format!("[{}+{offset}]", operand_text(b)),
            Some(b) => format!("[{}]", operand_text(b)),
            None => format!("[{offset}]"),
        },
        Operand::Vector(v) => format!(
            "{{{}}}",
            v.iter().map(operand_text).collect::<Vec<_>>().join(", ")
        ),
        Operand::List(v) => format!(
            "({})",
            v.iter().map(operand_text).collect::<Vec<_>>().join(", ")
        ),
        Operand::Pair(a, b) => format!("{}|{}", operand_text(a), operand_text(b)),
        Operand::Sink => "_".into(),
    }
}

/// The special register named `name`, if it is one.
fn special(name: &str) -> Option<Special> {
    let dim = |s: &str| match s {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    if let Some((reg, d)) = name.split_once('.') {
        let d = dim(d)?;
        return Some(match reg {
            "%tid" => Special::Tid(d),
            "%ntid" => Special::Ntid(d),
            "%ctaid" => Special::Ctaid(d),
            "%nctaid" => Special::Nctaid(d),
            _ => return None,
        });
    }
    Some(match name {
        "%laneid" => Special::LaneId,
        "%warpid" => Special::WarpId,
        "%nwarpid" => Special::NWarpId,
        "%lanemask_eq" => Special::LanemaskEq,
        "%lanemask_lt" => Special::LanemaskLt,
        "%lanemask_le" => Special::LanemaskLe,
        "%lanemask_gt" => Special::LanemaskGt,
        "%lanemask_ge" => Special::LanemaskGe,
        "%smid" => Special::SmId,
        "%nsmid" => Special::NSmId,
        _ => return None,
    })
}

fn clock(name: &str) -> Option<Clock> {
    Some(match name {
        "%clock" => Clock::Clock32,
        "%clock64" => Clock::Clock64,
        "%globaltimer" => Clock::GlobalTimer,
        _ => return None,
    })
}

/// An immediate as the bits of an operand of type `ty`.
fn imm_bits(imm: Immediate, ty: Ty) -> Result<u64, String> {
    Ok(match (imm, ty) {
        (Immediate::Int(v), Ty::F32 | Ty::F64) => {
            return Err(format!(
                "integer literal {v} as a .{ty:?} operand is not implemented"
            ))
        }
        (Immediate::Int(v), _) => v as u64,
        (Immediate::F32Bits(b), Ty::F64) => (f32::from_bits(b) as f64).to_bits(),
        (Immediate::F32Bits(b), _) => b as u64,
        (Immediate::F64Bits(b), Ty::F64 | Ty::B(64) | Ty::U(64) | Ty::S(64)) => b,
        (Immediate::F64Bits(b), Ty::F32) => (f64::from_bits(b) as f32).to_bits() as u64,
        (Immediate::Float(f), Ty::F32) => (f as f32).to_bits() as u64,
        (Immediate::Float(f), Ty::F64) => f.to_bits(),
        (imm, ty) => {
            return Err(format!(
                "literal {imm:?} as a .{ty:?} operand is not implemented"
            ))
        }
    })
}

fn f32_mods(m: &mut Mods) -> F32Mods {
    F32Mods {
        rounding: m.rounding(),
        ftz: m.take("ftz"),
        sat: m.take("sat"),
    }
}

impl<'m> Decoder<'m> {
    /// A source operand of type `ty` as a slot.
    fn src(&mut self, f: &Function, o: &Operand, ty: Ty) -> Result<Slot, String> {
        match o {
            Operand::Register(n) => {
                if let Some(sp) = special(n) {
                    return Ok(self.special_slot(sp));
                }
                match self.names.get(&(f.name.clone(), n.clone())) {
                    Some(Name::Reg(s, _)) => Ok(*s),
                    Some(Name::Pred(_)) => Err(format!("predicate {n} where a value is expected")),
                    None => Err(format!("{n} is not a declared register")),
                }
            }
            Operand::Immediate(imm) => {
                let bits = imm_bits(*imm, ty)?;
                Ok(self.const_slot(bits))
            }
            Operand::Symbol(s) => self.symbol(s),
            other => Err(format!(
                "operand {} is not implemented here",
                operand_text(other)
            )),
        }
    }

    /// A shared variable's window address.
    fn symbol(&mut self, s: &str) -> Result<Slot, String> {
        match self.shared.offsets.get(s) {
            Some(&off) => Ok(self.const_slot(off as u64)),
            None => Err(format!(
                "symbol {s} is not a .shared variable of this kernel"
            )),
        }
    }

    /// A destination register (`allow_sink`: `_` gives [`NO_SLOT`]).
    fn dst(&mut self, f: &Function, o: &Operand, allow_sink: bool) -> Result<(Slot, u32), String> {
        match o {
            Operand::Register(n) => match self.names.get(&(f.name.clone(), n.clone())) {
                Some(Name::Reg(s, bits)) => Ok((*s, *bits)),
                Some(Name::Pred(_)) => {
                    Err(format!("predicate {n} where a value register is expected"))
                }
                None => Err(format!(
                    "{n} is not a declared register (special registers are read-only)"
                )),
            },
            Operand::Sink if allow_sink => Ok((NO_SLOT, 64)),
            other => Err(format!(
                "destination {} is not implemented here",
                operand_text(other)
            )),
        }
    }

    fn pred(&self, f: &Function, name: &str) -> Result<Pred, String> {
        match self.names.get(&(f.name.clone(), name.to_string())) {
            Some(Name::Pred(p)) => Ok(*p),
            _ => Err(format!("{name} is not a declared predicate")),
        }
    }

    fn pred_dst(&self, f: &Function, o: &Operand) -> Result<Pred, String> {
        match o {
            Operand::Register(n) => self.pred(f, n),
            other => Err(format!(
                "expected a predicate destination, found {}",
                operand_text(other)
            )),
        }
    }

    fn pred_src(&self, f: &Function, o: &Operand) -> Result<PredSrc, String> {
        match o {
            Operand::Register(n) => Ok(PredSrc {
                pred: self.pred(f, n)?,
                negated: false,
            }),
            Operand::NotRegister(n) => Ok(PredSrc {
                pred: self.pred(f, n)?,
                negated: true,
            }),
            other => Err(format!(
                "expected a predicate, found {}",
                operand_text(other)
            )),
        }
    }

    fn addr(&mut self, f: &Function, o: &Operand) -> Result<Addr, String> {
        match o {
            Operand::Address { base, offset } => {
                let base = match base.as_deref() {
                    None => NO_SLOT,
                    Some(Operand::Symbol(s)) => self.symbol(s)?,
                    Some(b @ Operand::Register(_)) => self.src(f, b, Ty::U(64))?,
                    Some(other) => {
                        return Err(format!(
                            "address base {} is not implemented",
                            operand_text(other)
                        ))
                    }
                };
                Ok(Addr {
                    base,
                    offset: *offset,
                })
            }
            other => Err(format!(
                "expected an address, found {}",
                operand_text(other)
            )),
        }
    }

    fn vector_dsts(&mut self, f: &Function, o: &Operand, n: usize) -> Result<[Slot; 4], String> {
        let mut out = [NO_SLOT; 4];
        match o {
            Operand::Vector(v) if v.len() == n => {
                for (k, x) in v.iter().enumerate() {
                    out[k] = self.dst(f, x, true)?.0;
                }
                Ok(out)
            }
            _ if n == 1 => {
                out[0] = self.dst(f, o, false)?.0;
                Ok(out)
            }
            other => Err(format!(
                "expected a vector of {n} registers, found {}",
                operand_text(other)
            )),
        }
    }

    fn vector_srcs(
        &mut self,
        f: &Function,
        o: &Operand,
        n: usize,
        ty: Ty,
    ) -> Result<[Slot; 4], String> {
        let mut out = [NO_SLOT; 4];
        match o {
            Operand::Vector(v) if v.len() == n => {
                for (k, x) in v.iter().enumerate() {
                    out[k] = self.src(f, x, ty)?;
                }
                Ok(out)
            }
            _ if n == 1 => {
                out[0] = self.src(f, o, ty)?;
                Ok(out)
            }
            other => Err(format!(
                "expected a vector of {n} operands, found {}",
                operand_text(other)
            )),
        }
    }

    /// Decodes one instruction (not `bra`/`call`/inlined `ret`, which the
    /// body emitter handles) into one or more operations.
    pub(super) fn decode_instruction(
        &mut self,
        f: &Function,
        i: &Instruction,
    ) -> Result<Vec<Op>, String> {
        let name = i.opcode[0].as_str();
        let mut m = Mods::new(&i.opcode);
        let ops = &i.operands;
        let n_ops = |n: usize| -> Result<(), String> {
            if ops.len() == n {
                Ok(())
            } else {
                Err(format!("expected {n} operands, found {}", ops.len()))
            }
        };
        let op = match name {
            "mov" => {
                let ty = m.ty()?;
                n_ops(2)?;
                m.finish()?;
                return self.decode_mov(f, ty, &ops[0], &ops[1]).map(|op| vec![op]);
            }
            "add" | "sub" | "mul" | "div" | "rem" | "min" | "max" | "and" | "or" | "xor"
            | "shl" | "shr"
                if ops.len() == 3 =>
            {
                return self.decode_binary(f, name, m, ops).map(|op| vec![op]);
            }
            "mad" | "fma" => return self.decode_mad(f, name, m, ops).map(|op| vec![op]),
            "not" | "neg" | "abs" | "popc" | "clz" | "brev" | "bfind" | "cnot" | "sqrt" | "rcp"
            | "rsqrt" | "ex2" | "lg2" | "sin" | "cos" | "tanh" => {
                return self.decode_unary(f, name, m, ops).map(|op| vec![op])
            }
            "copysign" => {
                let ty = m.ty()?;
                m.finish()?;
                n_ops(3)?;
                if ty != Ty::F32 {
                    return Err("only copysign.f32 is implemented".into());
                }
                let (d, _) = self.dst(f, &ops[0], false)?;
                let a = self.src(f, &ops[1], ty)?;
                let b = self.src(f, &ops[2], ty)?;
                Op::F32Copysign { d, a, b }
            }
            "bfe" => {
                let ty = m.ty()?;
                m.finish()?;
                n_ops(4)?;
                let it = ty.int().ok_or("bfe needs an integer type")?;
                let fun = alu::bfe(it).ok_or("bfe: type not implemented")?;
                let (d, _) = self.dst(f, &ops[0], false)?;
                let a = self.src(f, &ops[1], ty)?;
                let b = self.src(f, &ops[2], Ty::U(32))?;
                let c = self.src(f, &ops[3], Ty::U(32))?;
                Op::Int3 { f: fun, d, a, b, c }
            }
            "bfi" => {
                let ty = m.ty()?;
                m.finish()?;
                n_ops(5)?;
                let wide = match ty {
                    Ty::B(32) => false,
                    Ty::B(64) => true,
                    _ => return Err("bfi needs .b32 or .b64".into()),
                };
                let (d, _) = self.dst(f, &ops[0], false)?;
                let a = self.src(f, &ops[1], ty)?;
                let b = self.src(f, &ops[2], ty)?;
                let pos = self.src(f, &ops[3], Ty::U(32))?;
                let len = self.src(f, &ops[4], Ty::U(32))?;
                Op::Bfi {
                    wide,
                    d,
                    a,
                    b,
                    pos,
                    len,
                }
            }
            "shf" => {
                let left = match m.one_of(&["l", "r"]) {
                    Some("l") => true,
                    Some(_) => false,
                    None => return Err("shf needs .l or .r".into()),
                };
                let wrap = match m.one_of(&["wrap", "clamp"]) {
                    Some("wrap") => true,
                    Some(_) => false,
                    None => return Err("shf needs .wrap or .clamp".into()),
                };
                let ty = m.ty()?;
                m.finish()?;
                n_ops(4)?;
                if ty != Ty::B(32) {
                    return Err("shf needs .b32".into());
                }
                let (d, _) = self.dst(f, &ops[0], false)?;
                let a = self.src(f, &ops[1], ty)?;
                let b = self.src(f, &ops[2], ty)?;
                let c = self.src(f, &ops[3], Ty::U(32))?;
                Op::Int3 {
                    f: alu::funnel(left, wrap),
                    d,
                    a,
                    b,
                    c,
                }
            }
            "selp" => {
                let ty = m.ty()?;
                m.finish()?;
                n_ops(4)?;
                if ty == Ty::Pred {
                    return Err("selp.pred is not a PTX form".into());
                }
                let (d, _) = self.dst(f, &ops[0], false)?;
                let a = self.src(f, &ops[1], ty)?;
                let b = self.src(f, &ops[2], ty)?;
                let p = self.pred_src(f, &ops[3])?;
                Op::Selp { d, a, b, p }
            }
            "setp" => return self.decode_setp(f, m, ops).map(|op| vec![op]),
            "cvt" => return self.decode_cvt(f, m, ops).map(|op| vec![op]),
            "cvta" => {
                let to = m.take("to");
                let space = m.one_of(&["global", "shared", "local", "const", "param"]);
                let ty = m.ty()?;
                m.finish()?;
                n_ops(2)?;
                if space != Some("global") || !matches!(ty, Ty::U(64) | Ty::B(64)) {
                    return Err(
                        "only cvta{.to}.global.u64 is implemented (generic addresses are global addresses)".into(),
                    );
                }
                let _ = to;
                let (d, _) = self.dst(f, &ops[0], false)?;
                let a = self.src(f, &ops[1], ty)?;
                Op::Mov {
                    d,
                    a,
                    mask: u64::MAX,
                }
            }
            "ld" | "st" => {
                return self
                    .decode_ld_st(f, name == "ld", m, ops)
                    .map(|op| vec![op])
            }
            "atom" | "red" => {
                return self
                    .decode_atom(f, name == "atom", m, ops)
                    .map(|op| vec![op])
            }
            "cp" => return self.decode_cp_async(f, m, ops).map(|op| vec![op]),
            "ldmatrix" => {
                if !(m.take("sync") && m.take("aligned") && m.take("m8n8")) {
                    return Err("only ldmatrix.sync.aligned.m8n8 is implemented".into());
                }
                let num = match m.one_of(&["x1", "x2", "x4"]) {
                    Some("x1") => 1u8,
                    Some("x2") => 2,
                    Some(_) => 4,
                    None => return Err("ldmatrix needs .x1, .x2 or .x4".into()),
                };
                let trans = m.take("trans");
                if m.one_of(&["shared", "shared::cta"]).is_none() {
                    return Err("ldmatrix needs .shared".into());
                }
                if m.ty()? != Ty::B(16) {
                    return Err("ldmatrix needs .b16".into());
                }
                m.finish()?;
                n_ops(2)?;
                let d = self.vector_dsts(f, &ops[0], num as usize)?;
                let addr = self.addr(f, &ops[1])?;
                Op::Ldmatrix {
                    num,
                    trans,
                    d,
                    addr,
                }
            }
            "mma" => {
                let ok = m.take("sync")
                    && m.take("aligned")
                    && m.take("m16n8k16")
                    && m.take("row")
                    && m.take("col");
                let t = [m.ty()?, m.ty()?, m.ty()?, m.ty()?];
                m.finish()?;
                let ty = match t {
                    [Ty::F32, Ty::F16, Ty::F16, Ty::F32] => MmaType::F16,
                    [Ty::F32, Ty::Bf16, Ty::Bf16, Ty::F32] => MmaType::Bf16,
                    _ => {
                        return Err(
                            "only .f32.f16.f16.f32 and .f32.bf16.bf16.f32 are implemented".into(),
                        )
                    }
                };
                if !ok {
                    return Err("only mma.sync.aligned.m16n8k16.row.col is implemented".into());
                }
                n_ops(4)?;
                let d = self.vector_dsts(f, &ops[0], 4)?;
                let a = self.vector_srcs(f, &ops[1], 4, Ty::B(32))?;
                let b4 = self.vector_srcs(f, &ops[2], 2, Ty::B(32))?;
                let c = self.vector_srcs(f, &ops[3], 4, Ty::F32)?;
                Op::Mma {
                    ty,
                    d,
                    a,
                    b: [b4[0], b4[1]],
                    c,
                }
            }
            "shfl" => {
                if !m.take("sync") {
                    return Err("only shfl.sync is implemented".into());
                }
                let mode = match m.one_of(&["up", "down", "bfly", "idx"]) {
                    Some("up") => ShflMode::Up,
                    Some("down") => ShflMode::Down,
                    Some("bfly") => ShflMode::Bfly,
                    Some(_) => ShflMode::Idx,
                    None => return Err("shfl.sync needs a mode".into()),
                };
                if m.ty()? != Ty::B(32) {
                    return Err("shfl.sync needs .b32".into());
                }
                m.finish()?;
                n_ops(5)?;
                let (d, p) = self.value_and_pred(f, &ops[0])?;
                let a = self.src(f, &ops[1], Ty::B(32))?;
                let b = self.src(f, &ops[2], Ty::B(32))?;
                let c = self.src(f, &ops[3], Ty::B(32))?;
                let mask = self.src(f, &ops[4], Ty::B(32))?;
                Op::Shfl {
                    mode,
                    d,
                    p,
                    a,
                    b,
                    c,
                    mask,
                }
            }
            "vote" => {
                if !m.take("sync") {
                    return Err("only vote.sync is implemented".into());
                }
                let mode = match m.one_of(&["all", "any", "uni", "ballot"]) {
                    Some("all") => VoteMode::All,
                    Some("any") => VoteMode::Any,
                    Some("uni") => VoteMode::Uni,
                    Some(_) => VoteMode::Ballot,
                    None => return Err("vote.sync needs a mode".into()),
                };
                let ty = m.ty()?;
                m.finish()?;
                n_ops(3)?;
                let a = self.pred_src(f, &ops[1])?;
                let mask = self.src(f, &ops[2], Ty::B(32))?;
                match (mode, ty) {
                    (VoteMode::Ballot, Ty::B(32)) => {
                        let (d, _) = self.dst(f, &ops[0], false)?;
                        Op::Vote {
                            mode,
                            d_pred: 0,
                            d_slot: d,
                            a,
                            mask,
                        }
                    }
                    (VoteMode::Ballot, _) => return Err("vote.ballot needs .b32".into()),
                    (_, Ty::Pred) => {
                        let d = self.pred_dst(f, &ops[0])?;
                        Op::Vote {
                            mode,
                            d_pred: d,
                            d_slot: NO_SLOT,
                            a,
                            mask,
                        }
                    }
                    _ => return Err("vote.all/any/uni need .pred".into()),
                }
            }
            "match" => {
                let all = match m.one_of(&["any", "all"]) {
                    Some("any") => false,
                    Some(_) => true,
                    None => return Err("match needs .any or .all".into()),
                };
                if !m.take("sync") {
                    return Err("only match.sync is implemented".into());
                }
                let wide = match m.ty()? {
                    Ty::B(32) => false,
                    Ty::B(64) => true,
                    _ => return Err("match needs .b32 or .b64".into()),
                };
                m.finish()?;
                n_ops(3)?;
                let (d, p) = self.value_and_pred(f, &ops[0])?;
                if p.is_some() && !all {
                    return Err("match.any has no predicate destination".into());
                }
                let a = self.src(f, &ops[1], if wide { Ty::B(64) } else { Ty::B(32) })?;
                let mask = self.src(f, &ops[2], Ty::B(32))?;
                Op::Match {
                    all,
                    wide,
                    d,
                    p,
                    a,
                    mask,
                }
            }
            "redux" => {
                if !m.take("sync") {
                    return Err("only redux.sync is implemented".into());
                }
                let o = m
                    .one_of(&["add", "min", "max", "and", "or", "xor"])
                    .ok_or("redux.sync needs an operation")?;
                let ty = m.ty()?;
                m.finish()?;
                n_ops(3)?;
                let op = match (o, ty) {
                    ("add", Ty::U(32) | Ty::S(32)) => ReduxOp::Add,
                    ("min", Ty::U(32)) => ReduxOp::MinU,
                    ("min", Ty::S(32)) => ReduxOp::MinS,
                    ("max", Ty::U(32)) => ReduxOp::MaxU,
                    ("max", Ty::S(32)) => ReduxOp::MaxS,
                    ("and", Ty::B(32)) => ReduxOp::And,
                    ("or", Ty::B(32)) => ReduxOp::Or,
                    ("xor", Ty::B(32)) => ReduxOp::Xor,
                    _ => return Err(format!("redux.sync.{o}.{ty:?} is not a PTX form")),
                };
                let (d, _) = self.dst(f, &ops[0], false)?;
                let a = self.src(f, &ops[1], ty)?;
                let mask = self.src(f, &ops[2], Ty::B(32))?;
                Op::Redux { op, d, a, mask }
            }
            "bar" | "barrier" => return self.decode_bar(f, name, m, ops).map(|op| vec![op]),
            "ret" | "exit" => {
                m.finish()?;
                n_ops(0)?;
                Op::Exit
            }
            "trap" => {
                m.finish()?;
                Op::Trap
            }
            "membar" | "fence" => {
                m.hints(&["cta", "gl", "sys", "gpu", "sc", "acq_rel"]);
                m.finish()?;
                Op::Nop
            }
            _ => return Err("this instruction is not implemented".into()),
        };
        Ok(vec![op])
    }

    /// `d|p` or just `d`.
    fn value_and_pred(
        &mut self,
        f: &Function,
        o: &Operand,
    ) -> Result<(Slot, Option<Pred>), String> {
        match o {
            Operand::Pair(a, b) => Ok((self.dst(f, a, true)?.0, Some(self.pred_dst(f, b)?))),
            other => Ok((self.dst(f, other, false)?.0, None)),
        }
    }

    fn decode_mov(&mut self, f: &Function, ty: Ty, d: &Operand, a: &Operand) -> Result<Op, String> {
        if ty == Ty::Pred {
            let dp = self.pred_dst(f, d)?;
            return match a {
                Operand::Immediate(Immediate::Int(v)) => Ok(Op::PredConst {
                    d: dp,
                    value: *v != 0,
                }),
                other => Ok(Op::PredMov {
                    d: dp,
                    a: self.pred_src(f, other)?,
                }),
            };
        }
        let bits = ty.bits();
        if let Operand::Vector(parts) = d {
            let count = parts.len();
            if !matches!(count, 2 | 4)
                || !bits.is_multiple_of(count as u32)
                || !matches!(ty, Ty::B(_))
            {
                return Err("unpacking needs a .b type and 2 or 4 parts".into());
            }
            let slots = self.vector_dsts(f, d, count)?;
            let a = self.src(f, a, ty)?;
            return Ok(Op::Unpack {
                parts: slots,
                count: count as u8,
                bits: (bits / count as u32) as u8,
                a,
            });
        }
        if let Operand::Vector(parts) = a {
            let count = parts.len();
            if !matches!(count, 2 | 4)
                || !bits.is_multiple_of(count as u32)
                || !matches!(ty, Ty::B(_))
            {
                return Err("packing needs a .b type and 2 or 4 parts".into());
            }
            let part_bits = bits / count as u32;
            let part_ty = Ty::B(part_bits);
            let slots = self.vector_srcs(f, a, count, part_ty)?;
            let (dd, _) = self.dst(f, d, false)?;
            return Ok(Op::Pack {
                d: dd,
                parts: slots,
                count: count as u8,
                bits: part_bits as u8,
            });
        }
        let (dd, _) = self.dst(f, d, false)?;
        if let Operand::Register(n) = a {
            if let Some(c) = clock(n) {
                return Ok(Op::ReadClock { d: dd, clock: c });
            }
        }
        let s = self.src(f, a, ty)?;
        Ok(Op::Mov {
            d: dd,
            a: s,
            mask: alu::mask(bits),
        })
    }

    fn decode_binary(
        &mut self,
        f: &Function,
        name: &str,
        mut m: Mods,
        ops: &[Operand],
    ) -> Result<Op, String> {
        let ty = m.ty()?;
        if ty == Ty::Pred {
            m.finish()?;
            let op = match name {
                "and" => BoolOp::And,
                "or" => BoolOp::Or,
                "xor" => BoolOp::Xor,
                _ => return Err("not a predicate operation".into()),
            };
            let d = self.pred_dst(f, &ops[0])?;
            let a = self.pred_src(f, &ops[1])?;
            let b = self.pred_src(f, &ops[2])?;
            return Ok(Op::PredLogic { op, d, a, b });
        }
        if ty == Ty::F32 {
            let approx = name == "div" && m.one_of(&["approx", "full"]).is_some();
            let mods = f32_mods(&mut m);
            m.finish()?;
            let (d, _) = self.dst(f, &ops[0], false)?;
            let a = self.src(f, &ops[1], ty)?;
            let b = self.src(f, &ops[2], ty)?;
            if approx {
                if mods.rounding.is_some() || mods.sat {
                    return Err("div.approx/.full take only .ftz".into());
                }
                return Ok(Op::F32DivApprox {
                    ftz: mods.ftz,
                    d,
                    a,
                    b,
                });
            }
            let op = match name {
                "add" => F32Op::Add,
                "sub" => F32Op::Sub,
                "mul" => F32Op::Mul,
                "div" if mods.rounding.is_some() => F32Op::Div,
                "div" => return Err("div.f32 needs .rn/.rz/.rm/.rp, .approx or .full".into()),
                "min" => F32Op::Min,
                "max" => F32Op::Max,
                _ => return Err(format!("{name}.f32 is not a PTX form")),
            };
            if matches!(op, F32Op::Min | F32Op::Max) && (mods.rounding.is_some() || mods.sat) {
                return Err("min/max.f32 take only .ftz".into());
            }
            return Ok(Op::F32Bin { op, mods, d, a, b });
        }
        if ty == Ty::F64 {
            let rnd = m.rounding();
            m.finish()?;
            let (d, _) = self.dst(f, &ops[0], false)?;
            let a = self.src(f, &ops[1], ty)?;
            let b = self.src(f, &ops[2], ty)?;
            let op = match name {
                "add" => F64Op::Add,
                "sub" => F64Op::Sub,
                "mul" => F64Op::Mul,
                "div" if rnd.is_some() => F64Op::Div,
                "div" => return Err("div.f64 needs a rounding modifier".into()),
                "min" => F64Op::Min,
                "max" => F64Op::Max,
                _ => return Err(format!("{name}.f64 is not a PTX form")),
            };
            return Ok(Op::F64Bin {
                op,
                rnd: rnd.unwrap_or(Rounding::Nearest),
                d,
                a,
                b,
            });
        }
        let it = ty
            .int()
            .ok_or_else(|| format!("{name} on .{ty:?} is not implemented"))?;
        let bit_type = matches!(ty, Ty::B(_));
        let fun = match name {
            "mul" => {
                let part = m
                    .one_of(&["lo", "hi", "wide"])
                    .ok_or("integer mul needs .lo, .hi or .wide")?;
                match part {
                    "wide" => alu::mul_wide(it),
                    "hi" => alu::binary("mul.hi", it),
                    _ => alu::binary("mul.lo", it),
                }
            }
            "shl" => alu::shift(true, it),
            "shr" => alu::shift(false, it),
            "and" | "or" | "xor" => alu::binary(name, it),
            _ if bit_type => None,
            _ => alu::binary(name, it),
        }
        .ok_or_else(|| format!("{name}.{ty:?} is not implemented"))?;
        m.finish()?;
        let (d, _) = self.dst(f, &ops[0], false)?;
        let a = self.src(f, &ops[1], ty)?;
        let b_ty = if matches!(name, "shl" | "shr") {
            Ty::U(32)
        } else {
            ty
        };
        let b = self.src(f, &ops[2], b_ty)?;
        Ok(Op::Int2 { f: fun, d, a, b })
    }

    fn decode_mad(
        &mut self,
        f: &Function,
        name: &str,
        mut m: Mods,
        ops: &[Operand],
    ) -> Result<Op, String> {
        if ops.len() != 4 {
            return Err(format!("expected 4 operands, found {}", ops.len()));
        }
        let ty = m.ty()?;
        match ty {
            Ty::F32 => {
                let mods = f32_mods(&mut m);
                m.finish()?;
                if mods.rounding.is_none() {
                    return Err(format!("{name}.f32 needs a rounding modifier"));
                }
                let (d, _) = self.dst(f, &ops[0], false)?;
                let a = self.src(f, &ops[1], ty)?;
                let b = self.src(f, &ops[2], ty)?;
                let c = self.src(f, &ops[3], ty)?;
                Ok(Op::F32Fma { mods, d, a, b, c })
            }
            Ty::F64 => {
                let rnd = m
                    .rounding()
                    .ok_or(format!("{name}.f64 needs a rounding modifier"))?;
                m.finish()?;
                let (d, _) = self.dst(f, &ops[0], false)?;
                let a = self.src(f, &ops[1], ty)?;
                let b = self.src(f, &ops[2], ty)?;
                let c = self.src(f, &ops[3], ty)?;
                Ok(Op::F64Fma { rnd, d, a, b, c })
            }
            _ if name == "mad" => {
                let it = ty.int().ok_or("mad needs an integer or float type")?;
                let part = m
                    .one_of(&["lo", "hi", "wide"])
                    .ok_or("integer mad needs .lo, .hi or .wide")?;
                m.finish()?;
                if matches!(ty, Ty::B(_)) {
                    return Err("mad needs a .u or .s type".into());
                }
                let fun = alu::mad(part, it).ok_or("mad: type not implemented")?;
                let (d, _) = self.dst(f, &ops[0], false)?;
                let a = self.src(f, &ops[1], ty)?;
                let b = self.src(f, &ops[2], ty)?;
                let c_ty = if part == "wide" {
                    Ty::U(it.bits * 2)
                } else {
                    ty
                };
                let c = self.src(f, &ops[3], c_ty)?;
                Ok(Op::Int3 { f: fun, d, a, b, c })
            }
            _ => Err(format!("fma.{ty:?} is not implemented")),
        }
    }

    fn decode_unary(
        &mut self,
        f: &Function,
        name: &str,
        mut m: Mods,
        ops: &[Operand],
    ) -> Result<Op, String> {
        if ops.len() != 2 {
            return Err(format!("expected 2 operands, found {}", ops.len()));
        }
        let approx = m.take("approx");
        let shiftamt = name == "bfind" && m.take("shiftamt");
        let ty = m.ty()?;
        if ty == Ty::Pred {
            m.finish()?;
            if name != "not" {
                return Err(format!("{name}.pred is not a PTX form"));
            }
            let d = self.pred_dst(f, &ops[0])?;
            let a = self.pred_src(f, &ops[1])?;
            return Ok(Op::PredMov {
                d,
                a: PredSrc {
                    pred: a.pred,
                    negated: !a.negated,
                },
            });
        }
        if ty == Ty::F32 {
            let mods = f32_mods(&mut m);
            m.finish()?;
            let (d, _) = self.dst(f, &ops[0], false)?;
            let a = self.src(f, &ops[1], ty)?;
            if approx {
                if mods.rounding.is_some() || mods.sat {
                    return Err(".approx takes only .ftz".into());
                }
                let op = match name {
                    "ex2" => Approx::Ex2,
                    "lg2" => Approx::Lg2,
                    "rcp" => Approx::Rcp,
                    "sqrt" => Approx::Sqrt,
                    "rsqrt" => Approx::Rsqrt,
                    "sin" => Approx::Sin,
                    "cos" => Approx::Cos,
                    "tanh" => Approx::Tanh,
                    _ => return Err(format!("{name}.approx is not a PTX form")),
                };
                return Ok(Op::F32Approx {
                    op,
                    ftz: mods.ftz,
                    d,
                    a,
                });
            }
            let op = match name {
                "neg" => F32Unary::Neg,
                "abs" => F32Unary::Abs,
                "sqrt" if mods.rounding.is_some() => F32Unary::Sqrt,
                "rcp" if mods.rounding.is_some() => F32Unary::Rcp,
                _ => return Err(format!("{name}.f32 needs .approx or a rounding modifier")),
            };
            if matches!(op, F32Unary::Neg | F32Unary::Abs) && (mods.rounding.is_some() || mods.sat)
            {
                return Err("neg/abs.f32 take only .ftz".into());
            }
            return Ok(Op::F32Un { op, mods, d, a });
        }
        if ty == Ty::F64 {
            if approx {
                let ftz = m.take("ftz");
                m.finish()?;
                if name != "rcp" || !ftz {
                    return Err(
                        "only rcp.approx.ftz.f64 is implemented of the f64 approximations".into(),
                    );
                }
                let (d, _) = self.dst(f, &ops[0], false)?;
                let a = self.src(f, &ops[1], ty)?;
                return Ok(Op::F64RcpApprox { d, a });
            }
            let rnd = m.rounding();
            m.finish()?;
            let (d, _) = self.dst(f, &ops[0], false)?;
            let a = self.src(f, &ops[1], ty)?;
            let op = match name {
                "neg" => F64Unary::Neg,
                "abs" => F64Unary::Abs,
                "sqrt" if rnd.is_some() => F64Unary::Sqrt,
                "rcp" if rnd.is_some() => F64Unary::Rcp,
                _ => return Err(format!("{name}.f64 is not implemented")),
            };
            return Ok(Op::F64Un {
                op,
                rnd: rnd.unwrap_or(Rounding::Nearest),
                d,
                a,
            });
        }
        if approx {
            return Err(".approx needs a float type".into());
        }
        m.finish()?;
        let it = ty
            .int()
            .ok_or_else(|| format!("{name}.{ty:?} is not implemented"))?;
        let key = if shiftamt { "bfind.shiftamt" } else { name };
        let fun = alu::unary(key, it).ok_or_else(|| format!("{name}.{ty:?} is not implemented"))?;
        let (d, _) = self.dst(f, &ops[0], false)?;
        let a = self.src(f, &ops[1], ty)?;
        Ok(Op::Int1 { f: fun, d, a })
    }

    fn decode_setp(&mut self, f: &Function, mut m: Mods, ops: &[Operand]) -> Result<Op, String> {
        let cmp_name = m
            .one_of(&[
                "eq", "ne", "lt", "le", "gt", "ge", "lo", "ls", "hi", "hs", "equ", "neu", "ltu",
                "leu", "gtu", "geu", "num", "nan",
            ])
            .ok_or("setp needs a comparison")?;
        let bool_op = m.one_of(&["and", "or", "xor"]).map(|b| match b {
            "and" => BoolOp::And,
            "or" => BoolOp::Or,
            _ => BoolOp::Xor,
        });
        let ftz = m.take("ftz");
        let ty = m.ty()?;
        m.finish()?;
        let cmp = match ty {
            Ty::F32 => Compare::F32(float_cmp(cmp_name)?, ftz),
            Ty::F64 if !ftz => Compare::F64(float_cmp(cmp_name)?),
            _ if ftz => return Err(".ftz needs .f32".into()),
            _ => {
                let it = ty
                    .int()
                    .ok_or_else(|| format!("setp on .{ty:?} is not implemented"))?;
                Compare::Int(
                    alu::compare(cmp_name, it, matches!(ty, Ty::B(_)))
                        .ok_or_else(|| format!("setp.{cmp_name}.{ty:?} is not a PTX form"))?,
                )
            }
        };
        let expect = if bool_op.is_some() { 4 } else { 3 };
        if ops.len() != expect {
            return Err(format!("expected {expect} operands, found {}", ops.len()));
        }
        let (p, q) = match &ops[0] {
            Operand::Pair(a, b) => (self.pred_dst(f, a)?, Some(self.pred_dst(f, b)?)),
            other => (self.pred_dst(f, other)?, None),
        };
        let a = self.src(f, &ops[1], ty)?;
        let b = self.src(f, &ops[2], ty)?;
        let combine = match bool_op {
            Some(op) => Some((op, self.pred_src(f, &ops[3])?)),
            None => None,
        };
        Ok(Op::Setp {
            cmp,
            p,
            q,
            a,
            b,
            combine,
        })
    }

    fn decode_cvt(&mut self, f: &Function, mut m: Mods, ops: &[Operand]) -> Result<Op, String> {
        let mods = CvtMods {
            rounding: m.rounding(),
            integer_rounding: m.int_rounding(),
            ftz: m.take("ftz"),
            sat: m.take("sat"),
            relu: m.take("relu"),
        };
        let dty = m.ty()?;
        let sty = m.ty()?;
        m.finish()?;
        if matches!(dty, Ty::F16x2 | Ty::Bf16x2) {
            if ops.len() != 3 || sty != Ty::F32 {
                return Err("cvt to f16x2/bf16x2 needs two .f32 sources".into());
            }
            let dst = if dty == Ty::F16x2 { Ty::F16 } else { Ty::Bf16 };
            let (d, _) = self.dst(f, &ops[0], false)?;
            let a = self.src(f, &ops[1], sty)?;
            let b = self.src(f, &ops[2], sty)?;
            return Ok(Op::CvtPack {
                dst: dst.scalar().ok_or("bad type")?,
                mods,
                d,
                a,
                b,
            });
        }
        if ops.len() != 2 {
            return Err(format!("expected 2 operands, found {}", ops.len()));
        }
        let dst = dty
            .scalar()
            .ok_or_else(|| format!("cvt to .{dty:?} is not implemented"))?;
        let src = sty
            .scalar()
            .ok_or_else(|| format!("cvt from .{sty:?} is not implemented"))?;
        if crate::numeric::convert::convert(dst, src, 0, mods).is_none() {
            return Err("this cvt combination is not defined by the ISA".into());
        }
        let (d, _) = self.dst(f, &ops[0], false)?;
        let a = self.src(f, &ops[1], sty)?;
        Ok(Op::Cvt {
            dst,
            src,
            mods,
            d,
            a,
        })
    }

    fn decode_ld_st(
        &mut self,
        f: &Function,
        load: bool,
        mut m: Mods,
        ops: &[Operand],
    ) -> Result<Op, String> {
        m.hints(&[
            "weak", "volatile", "relaxed", "acquire", "release", "cta", "gpu", "sys",
        ]);
        let space = m.one_of(&["global", "shared", "shared::cta", "param", "local", "const"]);
        let nc = m.take("nc");
        m.hints(&["ca", "cg", "cs", "lu", "cv", "wb", "wt"]);
        let count = match m.one_of(&["v2", "v4"]) {
            Some("v2") => 2u8,
            Some(_) => 4,
            None => 1,
        };
        let ty = m.ty()?;
        m.finish()?;
        if ops.len() != 2 {
            return Err(format!("expected 2 operands, found {}", ops.len()));
        }
        let width = match ty {
            Ty::Pred => return Err("ld/st of .pred is not a PTX form".into()),
            Ty::F16x2 | Ty::Bf16x2 => 4,
            t => (t.bits() / 8) as u8,
        };
        let signed = matches!(ty, Ty::S(_));
        let (reg_op, addr_op) = if load {
            (&ops[0], &ops[1])
        } else {
            (&ops[1], &ops[0])
        };
        if nc && (!load || space != Some("global")) {
            return Err(".nc is only defined for ld.global".into());
        }
        let space = match space {
            Some("global") => MemSpace::Global,
            Some("shared") | Some("shared::cta") => MemSpace::Shared,
            Some("param") => return self.decode_param(f, load, ty, reg_op, addr_op, count),
            Some(other) => return Err(format!("ld/st in .{other} space is not implemented")),
            None => {
                return Err(
                    "generic addressing (ld/st without a state space) is not implemented".into(),
                )
            }
        };
        let addr = self.addr(f, addr_op)?;
        let (regs, dst_mask) = if load {
            let regs = self.vector_dsts(f, reg_op, count as usize)?;
            let bits = match reg_op {
                Operand::Vector(v) => self.dst(f, &v[0], true)?.1,
                other => self.dst(f, other, false)?.1,
            };
            (regs, alu::mask(bits.max(ty.bits())))
        } else {
            (self.vector_srcs(f, reg_op, count as usize, ty)?, u64::MAX)
        };
        let access = Access {
            space,
            width,
            count,
            signed,
            dst_mask,
            nc,
            regs,
            addr,
        };
        Ok(if load { Op::Ld(access) } else { Op::St(access) })
    }

    /// `ld.param` / `st.param`: a kernel parameter (from the parameter
    /// buffer) or a call's `.param` variable (a slot).
    fn decode_param(
        &mut self,
        f: &Function,
        load: bool,
        ty: Ty,
        reg_op: &Operand,
        addr_op: &Operand,
        count: u8,
    ) -> Result<Op, String> {
        if count != 1 {
            return Err("vector ld/st.param is not implemented".into());
        }
        let (name, offset) = match addr_op {
            Operand::Address {
                base: Some(b),
                offset,
            } => match b.as_ref() {
                Operand::Symbol(s) | Operand::Register(s) => (s.clone(), *offset),
                _ => return Err("ld/st.param needs a parameter name".into()),
            },
            _ => return Err("ld/st.param needs [parameter+offset]".into()),
        };
        let width = (ty.bits() / 8) as u8;
        if f.is_entry {
            if let Some(p) = self.kernel_params.get(&name).copied() {
                if !load {
                    return Err("kernel parameters are read-only".into());
                }
                if offset < 0 || offset as usize + width as usize > p.size {
                    return Err(format!(
                        "[{name}+{offset}] reads past the parameter's {} bytes",
                        p.size
                    ));
                }
                let (d, bits) = self.dst(f, reg_op, false)?;
                return Ok(Op::LdParam {
                    d,
                    offset: (p.offset + offset as usize) as u32,
                    width,
                    signed: matches!(ty, Ty::S(_)),
                    dst_mask: alu::mask(bits.max(ty.bits())),
                });
            }
        }
        let (slot, bits) = match self.names.get(&(f.name.clone(), name.clone())) {
            Some(Name::Reg(s, b)) => (*s, *b),
            _ => return Err(format!("{name} is not a parameter")),
        };
        if offset != 0 || ty.bits() != bits {
            return Err(format!("ld/st.param of part of {name} is not implemented"));
        }
        if load {
            let (d, dbits) = self.dst(f, reg_op, false)?;
            Ok(Op::Mov {
                d,
                a: slot,
                mask: alu::mask(dbits.min(bits)),
            })
        } else {
            let a = self.src(f, reg_op, ty)?;
            Ok(Op::Mov {
                d: slot,
                a,
                mask: alu::mask(bits),
            })
        }
    }

    fn decode_atom(
        &mut self,
        f: &Function,
        atom: bool,
        mut m: Mods,
        ops: &[Operand],
    ) -> Result<Op, String> {
        m.hints(&[
            "relaxed", "acquire", "release", "acq_rel", "cta", "gpu", "sys",
        ]);
        let space = match m.one_of(&["global", "shared", "shared::cta"]) {
            Some("global") => MemSpace::Global,
            Some(_) => MemSpace::Shared,
            None => return Err("generic-address atomics are not implemented".into()),
        };
        let o = m
            .one_of(&[
                "add", "min", "max", "and", "or", "xor", "exch", "cas", "inc", "dec",
            ])
            .ok_or("atom needs an operation")?;
        let ty = m.ty()?;
        m.finish()?;
        let wide = match ty.bits() {
            32 => false,
            64 => true,
            _ => return Err("atomics on other than 32 or 64 bits are not implemented".into()),
        };
        let signed = matches!(ty, Ty::S(_));
        let op = match (o, ty) {
            ("add", Ty::U(_) | Ty::S(_)) => AtomOp::Add,
            ("add", Ty::F32) => AtomOp::AddF32,
            ("min", Ty::U(_) | Ty::S(_)) => {
                if signed {
                    AtomOp::MinS
                } else {
                    AtomOp::MinU
                }
            }
            ("max", Ty::U(_) | Ty::S(_)) => {
                if signed {
                    AtomOp::MaxS
                } else {
                    AtomOp::MaxU
                }
            }
            ("and", Ty::B(_)) => AtomOp::And,
            ("or", Ty::B(_)) => AtomOp::Or,
            ("xor", Ty::B(_)) => AtomOp::Xor,
            ("exch", Ty::B(_) | Ty::U(_) | Ty::S(_) | Ty::F32) => AtomOp::Exch,
            ("cas", Ty::B(_) | Ty::U(_) | Ty::S(_)) => AtomOp::Cas,
            ("inc", Ty::U(32)) => AtomOp::Inc,
            ("dec", Ty::U(32)) => AtomOp::Dec,
            _ => return Err(format!("atom.{o}.{ty:?} is not implemented")),
        };
        let cas = op == AtomOp::Cas;
        let expect = usize::from(atom) + 2 + usize::from(cas);
        if ops.len() != expect {
            return Err(format!("expected {expect} operands, found {}", ops.len()));
        }
        let mut k = 0;
        let d = if atom {
            k = 1;
            self.dst(f, &ops[0], true)?.0
        } else {
            NO_SLOT
        };
        let addr = self.addr(f, &ops[k])?;
        let b = self.src(f, &ops[k + 1], ty)?;
        let c = if cas {
            self.src(f, &ops[k + 2], ty)?
        } else {
            NO_SLOT
        };
        Ok(Op::Atom {
            space,
            op,
            wide,
            d,
            addr,
            b,
            c,
        })
    }

    fn decode_cp_async(
        &mut self,
        f: &Function,
        mut m: Mods,
        ops: &[Operand],
    ) -> Result<Op, String> {
        if !m.take("async") {
            return Err("only cp.async is implemented of cp".into());
        }
        if m.take("commit_group") {
            m.finish()?;
            return Ok(Op::CpAsyncCommit);
        }
        if m.take("wait_group") {
            m.finish()?;
            let n = match ops {
                [Operand::Immediate(Immediate::Int(n))] if *n >= 0 => *n as u32,
                _ => return Err("cp.async.wait_group needs an immediate count".into()),
            };
            return Ok(Op::CpAsyncWait { n, all: false });
        }
        if m.take("wait_all") {
            m.finish()?;
            return Ok(Op::CpAsyncWait { n: 0, all: true });
        }
        let cg = match m.one_of(&["ca", "cg"]) {
            Some(c) => c == "cg",
            None => return Err("cp.async needs .ca or .cg".into()),
        };
        if m.one_of(&["shared", "shared::cta"]).is_none() || !m.take("global") {
            return Err("only cp.async.{ca,cg}.shared.global is implemented".into());
        }
        m.hints(&["L2::64B", "L2::128B", "L2::256B"]);
        m.finish()?;
        if ops.len() != 3 && ops.len() != 4 {
            return Err("cp.async needs [dst], [src], cp-size{, src-size}".into());
        }
        let dst = self.addr(f, &ops[0])?;
        let src = self.addr(f, &ops[1])?;
        let size = match &ops[2] {
            Operand::Immediate(Immediate::Int(n)) if matches!(*n, 4 | 8 | 16) => *n as u8,
            _ => return Err("cp-size must be 4, 8 or 16".into()),
        };
        if cg && size != 16 {
            return Err("cp.async.cg needs cp-size 16".into());
        }
        let src_size = if ops.len() == 4 {
            self.src(f, &ops[3], Ty::U(32))?
        } else {
            NO_SLOT
        };
        Ok(Op::CpAsync {
            dst,
            src,
            size,
            src_size,
        })
    }

    fn decode_bar(
        &mut self,
        f: &Function,
        name: &str,
        mut m: Mods,
        ops: &[Operand],
    ) -> Result<Op, String> {
        if name == "bar" && m.take("warp") {
            if !m.take("sync") {
                return Err("only bar.warp.sync is implemented".into());
            }
            m.finish()?;
            if ops.len() != 1 {
                return Err("bar.warp.sync needs a membermask".into());
            }
            let mask = self.src(f, &ops[0], Ty::B(32))?;
            return Ok(Op::WarpSync { mask });
        }
        m.take("cta");
        // bar.* is barrier.*.aligned; barrier.* is aligned only when written.
        let aligned = name == "bar" || m.take("aligned");
        let kind = m
            .one_of(&["sync", "arrive", "red"])
            .ok_or("needs .sync, .arrive or .red")?;
        if name == "barrier" {
            m.take("aligned");
        }
        let red_op = if kind == "red" {
            let o = m
                .one_of(&["popc", "and", "or"])
                .ok_or("bar.red needs .popc, .and or .or")?;
            let ty = m.ty()?;
            Some((o, ty))
        } else {
            None
        };
        m.finish()?;
        let args = match (red_op.is_some(), ops.split_first()) {
            (true, Some((_, rest))) => rest,
            (true, None) => return Err("bar.red needs a destination".into()),
            (false, _) => ops,
        };
        let (id_op, count_op, pred_op) = match (red_op.is_some(), args) {
            (false, [a]) => (a, None, None),
            (false, [a, b]) => (a, Some(b), None),
            (true, [a, c]) => (a, None, Some(c)),
            (true, [a, b, c]) => (a, Some(b), Some(c)),
            _ => return Err("wrong number of operands".into()),
        };
        let id = self.src(f, id_op, Ty::U(32))?;
        let count = match count_op {
            Some(c) => self.src(f, c, Ty::U(32))?,
            None => NO_SLOT,
        };
        if kind == "arrive" && count == NO_SLOT {
            return Err("bar.arrive needs a thread count".into());
        }
        let red = match red_op {
            None => None,
            Some((o, ty)) => {
                let c = self.pred_src(f, pred_op.ok_or("bar.red needs a predicate")?)?;
                let r = match (o, ty) {
                    ("popc", Ty::U(32)) => BarRed::Popc(self.dst(f, &ops[0], false)?.0),
                    ("and", Ty::Pred) => BarRed::And(self.pred_dst(f, &ops[0])?),
                    ("or", Ty::Pred) => BarRed::Or(self.pred_dst(f, &ops[0])?),
                    _ => return Err("bar.red needs .popc.u32, .and.pred or .or.pred".into()),
                };
                Some((r, c))
            }
        };
        Ok(Op::Bar {
            id,
            count,
            aligned,
            arrive: kind == "arrive",
            red,
        })
    }
}

fn float_cmp(name: &str) -> Result<FloatCmp, String> {
    Ok(match name {
        "eq" => FloatCmp::Eq,
        "ne" => FloatCmp::Ne,
        "lt" => FloatCmp::Lt,
        "le" => FloatCmp::Le,
        "gt" => FloatCmp::Gt,
        "ge" => FloatCmp::Ge,
        "equ" => FloatCmp::Equ,
        "neu" => FloatCmp::Neu,
        "ltu" => FloatCmp::Ltu,
        "leu" => FloatCmp::Leu,
        "gtu" => FloatCmp::Gtu,
        "geu" => FloatCmp::Geu,
        "num" => FloatCmp::Num,
        "nan" => FloatCmp::Nan,
        _ => return Err(format!("{name} is not a float comparison")),
    })
}
