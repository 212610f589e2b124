//! The decoder: a parsed module to [`DecodedKernel`]s.
//!
//! Per kernel: every register gets a slot (one `u64` per lane), every
//! distinct immediate and every special register it reads gets a slot that
//! is filled when a warp starts, predicates get a lane mask each, labels
//! become instruction indices, and each `call` of a `.func` is inlined (its
//! `.param` arguments and results become slots; recursion is refused). The
//! shared window is laid out here: the static `.shared` variables the kernel
//! references, in declaration order with their alignment, then the dynamic
//! (`.extern`) part. Any form not implemented is a [`LoadError`] naming the
//! instruction and its line.

mod instr;
mod modifiers;

use std::collections::HashMap;

use super::inst::{Inst, Op, Pred, Slot};
use super::{KernelInfo, LoadError, ParamLayout};
use crate::ptx::ast::{Function, Instruction, Module, Operand, Space, Statement, Variable};

/// A special register whose value is fixed for a thread during a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Special {
    /// `%tid.{x,y,z}`
    Tid(u8),
    /// `%ntid.{x,y,z}`
    Ntid(u8),
    /// `%ctaid.{x,y,z}`
    Ctaid(u8),
    /// `%nctaid.{x,y,z}`
    Nctaid(u8),
    /// `%laneid`
    LaneId,
    /// `%warpid`
    WarpId,
    /// `%nwarpid`
    NWarpId,
    /// `%lanemask_eq`
    LanemaskEq,
    /// `%lanemask_lt`
    LanemaskLt,
    /// `%lanemask_le`
    LanemaskLe,
    /// `%lanemask_gt`
    LanemaskGt,
    /// `%lanemask_ge`
    LanemaskGe,
    /// `%smid` (0)
    SmId,
    /// `%nsmid` (1)
    NSmId,
}

/// What a slot holds when a warp starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotInit {
    /// An immediate (or a symbol's address).
    Const(u64),
    /// A special register.
    Special(Special),
}

/// One kernel, decoded.
#[derive(Debug)]
pub struct DecodedKernel {
    /// The launch facts.
    pub info: KernelInfo,
    /// The instructions (callees inlined).
    pub code: Vec<Inst>,
    /// Each instruction's PTX line.
    pub lines: Vec<u32>,
    /// Each instruction's text, for reports.
    pub texts: Vec<String>,
    /// Value slots per lane.
    pub num_slots: usize,
    /// Predicate registers.
    pub num_preds: usize,
    /// Slots filled when a warp starts.
    pub init: Vec<(Slot, SlotInit)>,
    /// Where the dynamic shared memory starts in the window.
    pub dynamic_shared_offset: u32,
}

/// Decodes every kernel of a module.
pub fn decode_module(module: &Module) -> Result<Vec<DecodedKernel>, LoadError> {
    let funcs: HashMap<&str, &Function> = module
        .functions
        .iter()
        .map(|f| (f.name.as_str(), f))
        .collect();
    for v in &module.variables {
        if v.space != Space::Shared {
            return Err(LoadError {
                line: v.line,
                message: format!(
                    "module variable {} in {:?} space: only .shared module variables are implemented",
                    v.name, v.space
                ),
            });
        }
    }
    module
        .functions
        .iter()
        .filter(|f| f.is_entry)
        .map(|f| decode_kernel(module, &funcs, f))
        .collect()
}

/// The byte size of one element of a variable type (`b8` .. `f64`).
fn type_size(ty: &str) -> Option<u32> {
    Some(match ty {
        "b8" | "u8" | "s8" | "pred" => 1,
        "b16" | "u16" | "s16" | "f16" | "bf16" => 2,
        "b32" | "u32" | "s32" | "f32" | "f16x2" | "bf16x2" => 4,
        "b64" | "u64" | "s64" | "f64" => 8,
        _ => return None,
    })
}

fn variable_size(v: &Variable) -> Result<u64, LoadError> {
    let elem = type_size(&v.ty).ok_or_else(|| LoadError {
        line: v.line,
        message: format!("variable {}: type .{} is not implemented", v.name, v.ty),
    })? as u64;
    Ok(elem * v.array_len.unwrap_or(1))
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a.max(1)) * a.max(1)
}

/// The kernel's parameter buffer layout.
fn param_layout(
    f: &Function,
) -> Result<(Vec<ParamLayout>, HashMap<String, ParamLayout>), LoadError> {
    let mut offset = 0u64;
    let mut list = Vec::new();
    let mut by_name = HashMap::new();
    for p in &f.params {
        if p.space != Space::Param {
            return Err(LoadError {
                line: p.line,
                message: format!("kernel parameter {} is not in .param space", p.name),
            });
        }
        let size = variable_size(p)?;
        let align = p.align.max(1) as u64;
        offset = align_up(offset, align);
        let layout = ParamLayout {
            offset: offset as usize,
            size: size as usize,
            align: align as usize,
        };
        offset += size;
        list.push(layout);
        by_name.insert(p.name.clone(), layout);
    }
    Ok((list, by_name))
}

/// Every `.func` reachable from `f` by `call` (f included), or the
/// recursion or missing callee that prevents inlining.
fn reachable<'m>(
    funcs: &HashMap<&str, &'m Function>,
    f: &'m Function,
    stack: &mut Vec<String>,
    out: &mut Vec<&'m Function>,
) -> Result<(), LoadError> {
    if !out.iter().any(|g| g.name == f.name) {
        out.push(f);
    }
    stack.push(f.name.clone());
    for s in &f.body {
        let Statement::Instruction(i) = s else {
            continue;
        };
        if i.opcode.first().map(String::as_str) != Some("call") {
            continue;
        }
        let callee = call_target(i).ok_or_else(|| LoadError {
            line: i.line,
            message: format!("{}: cannot find the call target", instr::text(i)),
        })?;
        if stack.iter().any(|n| n == callee) {
            return Err(LoadError {
                line: i.line,
                message: format!(
                    "{}: recursive call of {callee} is not implemented",
                    instr::text(i)
                ),
            });
        }
        let g = funcs.get(callee).ok_or_else(|| LoadError {
            line: i.line,
            message: format!("{}: {callee} has no body in this module", instr::text(i)),
        })?;
        reachable(funcs, g, stack, out)?;
    }
    stack.pop();
    Ok(())
}

/// The callee name of a `call` instruction.
fn call_target(i: &Instruction) -> Option<&str> {
    i.operands.iter().find_map(|o| match o {
        Operand::Symbol(s) => Some(s.as_str()),
        _ => None,
    })
}

/// Symbols an operand names (directly or as an address base).
fn operand_symbols<'a>(o: &'a Operand, out: &mut Vec<&'a str>) {
    match o {
        Operand::Symbol(s) => out.push(s),
        Operand::Address { base: Some(b), .. } => operand_symbols(b, out),
        Operand::Vector(v) | Operand::List(v) => v.iter().for_each(|x| operand_symbols(x, out)),
        Operand::Pair(a, b) => {
            operand_symbols(a, out);
            operand_symbols(b, out);
        }
        _ => {}
    }
}

/// The shared window of one kernel: symbol offsets, static size, and the
/// start of the dynamic part.
struct SharedLayout {
    offsets: HashMap<String, u32>,
    static_bytes: u32,
    dynamic_offset: u32,
}

fn shared_layout(module: &Module, funcs: &[&Function]) -> Result<SharedLayout, LoadError> {
    let mut used: Vec<&str> = Vec::new();
    for f in funcs {
        for s in &f.body {
            if let Statement::Instruction(i) = s {
                for o in &i.operands {
                    operand_symbols(o, &mut used);
                }
            }
        }
    }
    let mut vars: Vec<&Variable> = module
        .variables
        .iter()
        .filter(|v| v.space == Space::Shared && used.contains(&v.name.as_str()))
        .collect();
    for f in funcs {
        vars.extend(f.locals.iter().filter(|v| v.space == Space::Shared));
    }
    let mut offsets = HashMap::new();
    let mut offset = 0u64;
    let mut dyn_align = 16u64;
    for v in vars.iter().filter(|v| !v.is_extern) {
        let a = v.align.max(1) as u64;
        offset = align_up(offset, a);
        offsets.insert(v.name.clone(), offset as u32);
        offset += variable_size(v)?;
    }
    let static_bytes = offset;
    for v in vars.iter().filter(|v| v.is_extern) {
        dyn_align = dyn_align.max(v.align as u64);
    }
    let dynamic_offset = align_up(static_bytes, dyn_align);
    for v in vars.iter().filter(|v| v.is_extern) {
        offsets.insert(v.name.clone(), dynamic_offset as u32);
    }
    if dynamic_offset > u32::MAX as u64 / 2 {
        return Err(LoadError {
            line: 0,
            message: "static shared memory is too large".into(),
        });
    }
    Ok(SharedLayout {
        offsets,
        static_bytes: static_bytes as u32,
        dynamic_offset: dynamic_offset as u32,
    })
}

/// What a name in a function's scope stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    /// A value register (or a `.param` variable of a call) with its width
    /// in bits.
    Reg(Slot, u32),
    /// A predicate register.
    Pred(Pred),
}

/// The decoder's state for one kernel.
struct Decoder<'m> {
    funcs: HashMap<&'m str, &'m Function>,
    kernel_params: HashMap<String, ParamLayout>,
    shared: SharedLayout,
    /// Names per function (callees share one namespace per function).
    names: HashMap<(String, String), Name>,
    num_slots: u32,
    num_preds: u32,
    consts: HashMap<u64, Slot>,
    specials: HashMap<Special, Slot>,
    init: Vec<(Slot, SlotInit)>,
    code: Vec<Inst>,
    lines: Vec<u32>,
    texts: Vec<String>,
}

fn decode_kernel(
    module: &Module,
    funcs: &HashMap<&str, &Function>,
    f: &Function,
) -> Result<DecodedKernel, LoadError> {
    let mut reach = Vec::new();
    reachable(funcs, f, &mut Vec::new(), &mut reach)?;
    let shared = shared_layout(module, &reach)?;
    let (params, by_name) = param_layout(f)?;
    let param_bytes = params.last().map_or(0, |p| p.offset + p.size);
    let mut d = Decoder {
        funcs: funcs.clone(),
        kernel_params: by_name,
        shared,
        names: HashMap::new(),
        num_slots: 0,
        num_preds: 0,
        consts: HashMap::new(),
        specials: HashMap::new(),
        init: Vec::new(),
        code: Vec::new(),
        lines: Vec::new(),
        texts: Vec::new(),
    };
    for g in &reach {
        d.declare(g)?;
    }
    d.emit_body(f, None)?;
    let info = KernelInfo {
        name: f.name.clone(),
        params,
        param_bytes,
        maxntid: f.directives.maxntid,
        reqntid: f.directives.reqntid,
        static_shared_bytes: d.shared.static_bytes,
    };
    Ok(DecodedKernel {
        info,
        code: d.code,
        lines: d.lines,
        texts: d.texts,
        num_slots: d.num_slots as usize,
        num_preds: d.num_preds as usize,
        init: d.init,
        dynamic_shared_offset: d.shared.dynamic_offset,
    })
}

/// Where an inlined callee returns to, and how its results flow back.
struct CallSite {
    /// Instruction indices of the callee's `ret` branches, patched to the
    /// end of the inlined body.
    rets: Vec<usize>,
}

impl<'m> Decoder<'m> {
    fn new_slot(&mut self) -> Slot {
        self.num_slots += 1;
        self.num_slots - 1
    }

    /// Declares every register and call-sequence `.param` of `f` (and a
    /// `.func`'s parameters and results) in `f`'s namespace.
    fn declare(&mut self, f: &Function) -> Result<(), LoadError> {
        for r in &f.registers {
            for name in r.names() {
                let entry = if r.ty == "pred" {
                    self.num_preds += 1;
                    Name::Pred(self.num_preds - 1)
                } else {
                    let bits = type_size(&r.ty).ok_or_else(|| LoadError {
                        line: r.line,
                        message: format!("register {name}: type .{} is not implemented", r.ty),
                    })? * 8;
                    Name::Reg(self.new_slot(), bits)
                };
                self.names.insert((f.name.clone(), name), entry);
            }
        }
        let mut param_vars: Vec<&Variable> = f
            .locals
            .iter()
            .filter(|v| v.space == Space::Param)
            .collect();
        if !f.is_entry {
            param_vars.extend(f.params.iter());
            param_vars.extend(f.returns.iter());
        }
        for v in param_vars {
            let size = variable_size(v)?;
            if v.array_len.is_some() || size > 8 {
                return Err(LoadError {
                    line: v.line,
                    message: format!(
                        "parameter {}: array (aggregate) parameters of calls are not implemented",
                        v.name
                    ),
                });
            }
            let slot = self.new_slot();
            self.names.insert(
                (f.name.clone(), v.name.clone()),
                Name::Reg(slot, size as u32 * 8),
            );
        }
        for v in &f.locals {
            if v.space == Space::Local || v.space == Space::Global || v.space == Space::Const {
                return Err(LoadError {
                    line: v.line,
                    message: format!(
                        "variable {} in {:?} space inside a function is not implemented",
                        v.name, v.space
                    ),
                });
            }
        }
        Ok(())
    }

    fn push(&mut self, inst: Inst, line: u32, text: &str) -> usize {
        self.code.push(inst);
        self.lines.push(line);
        self.texts.push(text.to_string());
        self.code.len() - 1
    }

    /// Emits `f`'s body; `site` is `Some` when it is an inlined callee.
    fn emit_body(
        &mut self,
        f: &'m Function,
        mut site: Option<&mut CallSite>,
    ) -> Result<(), LoadError> {
        let mut labels: HashMap<&str, usize> = HashMap::new();
        let mut fixups: Vec<(usize, &str, u32)> = Vec::new();
        for s in &f.body {
            match s {
                Statement::Label(l) => {
                    labels.insert(l.as_str(), self.code.len());
                }
                Statement::Instruction(i) if i.opcode.is_empty() => {
                    return Err(LoadError {
                        line: i.line,
                        message: "an instruction without an opcode".into(),
                    });
                }
                Statement::Instruction(i) => {
                    let text = instr::text(i);
                    let err = |message: String| LoadError {
                        line: i.line,
                        message: format!("{text}: {message}"),
                    };
                    match i.opcode[0].as_str() {
                        "call" => self.emit_call(f, i, &text).map_err(err)?,
                        "ret" if site.is_some() => {
                            let guard = self.guard(f, i).map_err(err)?;
                            let at = self.push(
                                Inst {
                                    guard,
                                    op: Op::Bra { target: 0 },
                                },
                                i.line,
                                &text,
                            );
                            if let Some(s) = site.as_deref_mut() {
                                s.rets.push(at);
                            }
                        }
                        "bra" => {
                            let target = match i.operands.as_slice() {
                                [Operand::Symbol(t)] => t.as_str(),
                                _ => return Err(err("expected one label operand".into())),
                            };
                            let mods = &i.opcode[1..];
                            if !mods.iter().all(|m| m == "uni") {
                                return Err(err(format!(
                                    "modifier .{} is not implemented",
                                    mods.join(".")
                                )));
                            }
                            let guard = self.guard(f, i).map_err(err)?;
                            let at = self.push(
                                Inst {
                                    guard,
                                    op: Op::Bra { target: 0 },
                                },
                                i.line,
                                &text,
                            );
                            fixups.push((at, target, i.line));
                        }
                        _ => {
                            let guard = self.guard(f, i).map_err(err)?;
                            let ops = self.decode_instruction(f, i).map_err(err)?;
                            for op in ops {
                                self.push(Inst { guard, op }, i.line, &text);
                            }
                        }
                    }
                }
            }
        }
        for (at, label, line) in fixups {
            let target = *labels.get(label).ok_or_else(|| LoadError {
                line,
                message: format!("branch to unknown label {label}"),
            })?;
            self.code[at].op = Op::Bra {
                target: target as u32,
            };
        }
        if site.is_none() {
            // Falling off the end of a kernel is `ret`.
            self.push(
                Inst {
                    guard: None,
                    op: Op::Exit,
                },
                f.line,
                "ret (end of kernel)",
            );
        }
        Ok(())
    }

    /// Inlines a `call{.uni} (ret), f, (args)`.
    fn emit_call(
        &mut self,
        caller: &'m Function,
        i: &Instruction,
        text: &str,
    ) -> Result<(), String> {
        if i.guard.is_some() {
            return Err("a predicated call is not implemented".into());
        }
        if !i.opcode[1..].iter().all(|m| m == "uni") {
            return Err(format!(
                "modifier .{} is not implemented",
                i.opcode[1..].join(".")
            ));
        }
        let (rets, callee, args) = match i.operands.as_slice() {
            [Operand::List(r), Operand::Symbol(c), Operand::List(a)] => {
                (r.as_slice(), c, a.as_slice())
            }
            [Operand::Symbol(c), Operand::List(a)] => (&[][..], c, a.as_slice()),
            [Operand::List(r), Operand::Symbol(c)] => (r.as_slice(), c, &[][..]),
            [Operand::Symbol(c)] => (&[][..], c, &[][..]),
            _ => return Err("expected call (results), target, (arguments)".into()),
        };
        let g: &'m Function = self
            .funcs
            .get(callee.as_str())
            .copied()
            .ok_or("unknown call target")?;
        if g.is_entry {
            return Err("calling a kernel is not allowed".into());
        }
        if args.len() != g.params.len() || rets.len() != g.returns.len() {
            return Err(format!(
                "{} takes {} arguments and {} results",
                g.name,
                g.params.len(),
                g.returns.len()
            ));
        }
        for (a, p) in args.iter().zip(&g.params) {
            let (src, _) = self.value_name(caller, a)?;
            let (dst, bits) = self.named_reg(&g.name, &p.name)?;
            let op = Op::Mov {
                d: dst,
                a: src,
                mask: super::alu::mask(bits),
            };
            self.push(Inst { guard: None, op }, i.line, text);
        }
        let mut site = CallSite { rets: Vec::new() };
        self.emit_body(g, Some(&mut site))
            .map_err(|e| e.to_string())?;
        let end = self.code.len();
        for at in site.rets {
            self.code[at].op = Op::Bra { target: end as u32 };
        }
        for (r, p) in rets.iter().zip(&g.returns) {
            let (dst, bits) = self.value_name(caller, r)?;
            let (src, _) = self.named_reg(&g.name, &p.name)?;
            let op = Op::Mov {
                d: dst,
                a: src,
                mask: super::alu::mask(bits),
            };
            self.push(Inst { guard: None, op }, i.line, text);
        }
        Ok(())
    }

    /// A register or call `.param` named by a plain operand.
    fn value_name(&self, f: &Function, o: &Operand) -> Result<(Slot, u32), String> {
        match o {
            Operand::Register(n) | Operand::Symbol(n) => self.named_reg(&f.name, n),
            _ => Err(format!(
                "expected a register or parameter name, found {}",
                instr::operand_text(o)
            )),
        }
    }

    fn named_reg(&self, func: &str, name: &str) -> Result<(Slot, u32), String> {
        match self.names.get(&(func.to_string(), name.to_string())) {
            Some(Name::Reg(s, bits)) => Ok((*s, *bits)),
            Some(Name::Pred(_)) => Err(format!("{name} is a predicate, a value was expected")),
            None => Err(format!("{name} is not declared")),
        }
    }

    fn guard(&self, f: &Function, i: &Instruction) -> Result<Option<super::inst::PredSrc>, String> {
        match &i.guard {
            None => Ok(None),
            Some((negated, name)) => match self.names.get(&(f.name.clone(), name.clone())) {
                Some(Name::Pred(p)) => Ok(Some(super::inst::PredSrc {
                    pred: *p,
                    negated: *negated,
                })),
                _ => Err(format!("guard {name} is not a declared predicate")),
            },
        }
    }

    /// The slot holding the constant `value`.
    fn const_slot(&mut self, value: u64) -> Slot {
        if let Some(&s) = self.consts.get(&value) {
            return s;
        }
        let s = self.new_slot();
        self.consts.insert(value, s);
        self.init.push((s, SlotInit::Const(value)));
        s
    }

    /// The slot holding special register `sp`.
    fn special_slot(&mut self, sp: Special) -> Slot {
        if let Some(&s) = self.specials.get(&sp) {
            return s;
        }
        let s = self.new_slot();
        self.specials.insert(sp, s);
        self.init.push((s, SlotInit::Special(sp)));
        s
    }
}

/// The entry point used by [`super::Program::from_ptx`].
pub fn load(text: &str) -> Result<Vec<DecodedKernel>, LoadError> {
    let module = crate::ptx::parse_module(text).map_err(|e| LoadError {
        line: e.line,
        message: e.message,
    })?;
    decode_module(&module)
}
