//! The syntax tree of a PTX module, as the parser produces it.
//!
//! The tree is generic: an instruction is its opcode split on `.` and its
//! operands, with no meaning attached. [`crate::exec`] decodes it into the
//! executable form and refuses, at module load, any form it does not
//! implement. Scopes (`{ ... }` blocks of inline asm and call sequences) are
//! already resolved here: a register or `.param` variable declared in an
//! inner scope is renamed to a name unique in its function (its original name
//! followed by `@` and the scope's number), and every declaration is listed
//! on its function, so statements are only labels and instructions.

/// A whole module (one PTX text).
#[derive(Debug, Clone, PartialEq)]
pub struct Module {
    /// `.version` as written, e.g. `"9.0"`.
    pub version: String,
    /// `.target` names, e.g. `["sm_80"]`.
    pub target: Vec<String>,
    /// `.address_size` (64 when absent).
    pub address_size: u32,
    /// Module-scope variables (`.shared`, `.extern .shared`, `.global`, `.const`).
    pub variables: Vec<Variable>,
    /// Every `.entry` and `.func` with a body, in source order.
    pub functions: Vec<Function>,
}

/// The state space of a variable or memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    /// `.global`
    Global,
    /// `.shared`
    Shared,
    /// `.const`
    Const,
    /// `.local`
    Local,
    /// `.param`
    Param,
}

/// A variable declaration: `[.extern] .space [.align N] .type name[len] [= {init}]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    /// The state space.
    pub space: Space,
    /// `.extern` (for `.shared`: the dynamic shared memory).
    pub is_extern: bool,
    /// `.align N`, or the element size when absent.
    pub align: u32,
    /// The element type without the dot, e.g. `"b8"`, `"u32"`, `"f32"`.
    pub ty: String,
    /// The name (renamed when declared in an inner scope).
    pub name: String,
    /// `None` for a scalar, `Some(0)` for `[]` (unsized), `Some(n)` for `[n]`
    /// (a multi-dimensional array is flattened to the product of its dims).
    pub array_len: Option<u64>,
    /// The initialiser's elements, as integers or float bit patterns of the
    /// element type, when there is one.
    pub init: Option<Vec<Immediate>>,
    /// The 1-based source line.
    pub line: u32,
}

/// A function: `.entry` (a kernel) or `.func`.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    /// `true` for `.entry`.
    pub is_entry: bool,
    /// `.visible` / `.weak` / `.extern` linkage is not needed to run; kept
    /// as written for reports.
    pub linkage: Vec<String>,
    /// The function name.
    pub name: String,
    /// `.func` return parameters (`(.param .b64 func_retval0)`), in order.
    pub returns: Vec<Variable>,
    /// Parameters, in order (`.param` for kernels; `.param` or `.reg` for funcs).
    pub params: Vec<Variable>,
    /// Performance directives.
    pub directives: Directives,
    /// Every register declared in the body, inner scopes included (renamed).
    pub registers: Vec<RegisterDecl>,
    /// Every variable declared in the body (`.shared`, `.local`, `.param`
    /// of call sequences), inner scopes included (renamed).
    pub locals: Vec<Variable>,
    /// Labels and instructions, in order.
    pub body: Vec<Statement>,
    /// The 1-based line of the function's name.
    pub line: u32,
}

/// `.maxntid`, `.reqntid`, `.minnctapersm`, `.maxnreg` (absent: `None`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Directives {
    /// `.maxntid x[, y[, z]]` (missing dims are 1).
    pub maxntid: Option<[u32; 3]>,
    /// `.reqntid x[, y[, z]]` (missing dims are 1).
    pub reqntid: Option<[u32; 3]>,
    /// `.minnctapersm n`.
    pub minnctapersm: Option<u32>,
    /// `.maxnreg n`.
    pub maxnreg: Option<u32>,
}

/// `.reg .type name` or `.reg .type name<count>` (which declares
/// `name0 .. name{count-1}`).
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterDecl {
    /// The type without the dot: `pred`, `b16`, `b32`, `b64`, `f32`, `f64`, `u32`, ...
    pub ty: String,
    /// The name, or the prefix when `count` is set (the scope suffix goes
    /// after the number: see [`RegisterDecl::names`]).
    pub name: String,
    /// `<count>` when present.
    pub count: Option<u32>,
    /// The scope suffix (`""` at function scope, `"@N"` in inner scope N).
    pub scope_suffix: String,
    /// The 1-based source line.
    pub line: u32,
}

impl RegisterDecl {
    /// Every register name this declaration introduces, as operands spell
    /// them after renaming (`%r0@3` for `%r<4>` in scope 3).
    pub fn names(&self) -> Vec<String> {
        match self.count {
            None => vec![format!("{}{}", self.name, self.scope_suffix)],
            Some(n) => (0..n)
                .map(|i| format!("{}{}{}", self.name, i, self.scope_suffix))
                .collect(),
        }
    }
}

/// A label or an instruction.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `name:`
    Label(String),
    /// An instruction.
    Instruction(Instruction),
}

/// One instruction: `[@[!]pred] opcode.mod.mod operands;`.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    /// The guard predicate: `(negated, register name)`.
    pub guard: Option<(bool, String)>,
    /// The opcode split on `.`: `ld.global.nc.v4.u32` is
    /// `["ld", "global", "nc", "v4", "u32"]`.
    pub opcode: Vec<String>,
    /// The operands, in order.
    pub operands: Vec<Operand>,
    /// The 1-based source line.
    pub line: u32,
}

/// An instruction operand.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A register (after renaming), a special register such as `%tid.x`, or
    /// a predicate; `%r1|%p2` (shfl's optional predicate destination) is
    /// [`Operand::Pair`].
    Register(String),
    /// A register negated with `!` (predicate source operands).
    NotRegister(String),
    /// A numeric literal.
    Immediate(Immediate),
    /// A name that is not a register: a variable (`smem`), a label (branch
    /// target), a function (call target), or a param variable.
    Symbol(String),
    /// `[base + offset]`: base is a register or a symbol (or absent: an
    /// absolute address `[imm]`).
    Address {
        /// The base register or symbol.
        base: Option<Box<Operand>>,
        /// The byte offset.
        offset: i64,
    },
    /// `{a, b, c, d}`: a vector of operands (`_` is [`Operand::Sink`]).
    Vector(Vec<Operand>),
    /// `(a, b)`: a parenthesised list (call return values and arguments).
    List(Vec<Operand>),
    /// `a|b`: two destinations (e.g. `shfl.sync`'s value and predicate).
    Pair(Box<Operand>, Box<Operand>),
    /// `_`: the sink (a discarded result).
    Sink,
}

/// A numeric literal as written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Immediate {
    /// A decimal, hex (`0x`), octal or binary integer (with a `U` suffix or
    /// a leading `-`), as the 64-bit pattern PTX gives it.
    Int(i64),
    /// `0fXXXXXXXX`: an f32 by its bit pattern.
    F32Bits(u32),
    /// `0dXXXXXXXXXXXXXXXX`: an f64 by its bit pattern.
    F64Bits(u64),
    /// A decimal floating-point literal (`1.5`, `1e-3`), which PTX reads as f64.
    Float(f64),
}
