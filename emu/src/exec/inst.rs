//! The executable form of a kernel: a flat list of small instructions whose
//! operands are slot indices resolved at load (registers, immediates and
//! special registers all live in per-lane slots), so the interpreter never
//! looks a name up.

use crate::numeric::approx::Approx;
use crate::numeric::convert::CvtMods;
use crate::numeric::float::{F32Mods, F32Op, F32Unary, F64Op, F64Unary, FloatCmp};
use crate::numeric::tensor::MmaType;
use crate::numeric::{Rounding, Scalar};

/// A value slot: one `u64` per lane (a register, an immediate, or a special
/// register filled when the warp starts).
pub type Slot = u32;
/// A predicate register: one bit per lane.
pub type Pred = u32;

/// A slot index meaning "no operand" (a sink `_` destination).
pub const NO_SLOT: Slot = u32::MAX;

/// A binary integer function over raw register bits.
pub type Fn2 = fn(u64, u64) -> u64;
/// A ternary integer function.
pub type Fn3 = fn(u64, u64, u64) -> u64;
/// A unary integer function.
pub type Fn1 = fn(u64) -> u64;
/// An integer comparison.
pub type Cmp = fn(u64, u64) -> bool;

/// How `setp` combines its comparison with the optional predicate `c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoolOp {
    /// `.and`
    And,
    /// `.or`
    Or,
    /// `.xor`
    Xor,
}

impl BoolOp {
    /// Applies the operation to two lane masks.
    pub fn apply(self, a: u32, b: u32) -> u32 {
        match self {
            BoolOp::And => a & b,
            BoolOp::Or => a | b,
            BoolOp::Xor => a ^ b,
        }
    }
}

/// A predicate source: the register and whether it is negated (`!p`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PredSrc {
    /// The predicate register.
    pub pred: Pred,
    /// `!p`
    pub negated: bool,
}

/// The comparison half of a `setp`.
#[derive(Debug, Clone, Copy)]
pub enum Compare {
    /// An integer (or bit-type) comparison.
    Int(Cmp),
    /// `setp.cmp{.ftz}.f32`.
    F32(FloatCmp, bool),
    /// `setp.cmp.f64`.
    F64(FloatCmp),
}

/// A memory state space as the interpreter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemSpace {
    /// `.global` (checked against the allocation map).
    Global,
    /// `.shared` (the CTA's window).
    Shared,
}

/// An address operand: `[base + offset]`, `base` a slot (a register, or an
/// immediate slot holding a symbol's address) or absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    /// The base slot ([`NO_SLOT`]: an absolute address).
    pub base: Slot,
    /// The byte offset.
    pub offset: i64,
}

/// A load or store: element width, vector length, registers.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// The state space.
    pub space: MemSpace,
    /// Bytes per element (1, 2, 4, 8).
    pub width: u8,
    /// Elements (1, 2, 4).
    pub count: u8,
    /// Loads: sign-extend each element (a `.s` type).
    pub signed: bool,
    /// Loads: the mask of each destination register's width.
    pub dst_mask: u64,
    /// `.nc` (a non-coherent load: the launch must not write the bytes).
    pub nc: bool,
    /// The registers (destinations of a load, sources of a store).
    pub regs: [Slot; 4],
    /// The address.
    pub addr: Addr,
}

/// An atomic operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomOp {
    /// `.add` (integer)
    Add,
    /// `.add.f32`
    AddF32,
    /// `.min` (unsigned)
    MinU,
    /// `.min` (signed)
    MinS,
    /// `.max` (unsigned)
    MaxU,
    /// `.max` (signed)
    MaxS,
    /// `.and`
    And,
    /// `.or`
    Or,
    /// `.xor`
    Xor,
    /// `.exch`
    Exch,
    /// `.cas`
    Cas,
    /// `.inc` (wrapping at b)
    Inc,
    /// `.dec` (wrapping at b)
    Dec,
}

/// A shuffle mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShflMode {
    /// `.up`
    Up,
    /// `.down`
    Down,
    /// `.bfly`
    Bfly,
    /// `.idx`
    Idx,
}

/// A vote mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteMode {
    /// `.all`
    All,
    /// `.any`
    Any,
    /// `.uni`
    Uni,
    /// `.ballot.b32`
    Ballot,
}

/// A `redux.sync` operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduxOp {
    /// `.add`
    Add,
    /// `.min.u32`
    MinU,
    /// `.min.s32`
    MinS,
    /// `.max.u32`
    MaxU,
    /// `.max.s32`
    MaxS,
    /// `.and`
    And,
    /// `.or`
    Or,
    /// `.xor`
    Xor,
}

/// A barrier's reduction (`bar.red`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarRed {
    /// `.popc.u32`: how many threads had the predicate true.
    Popc(Slot),
    /// `.and.pred`
    And(Pred),
    /// `.or.pred`
    Or(Pred),
}

/// The special registers that vary during execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// `%clock` (32 bits)
    Clock32,
    /// `%clock64`
    Clock64,
    /// `%globaltimer` (nanoseconds)
    GlobalTimer,
}

/// One operation with its operands resolved.
#[derive(Debug, Clone)]
pub enum Op {
    /// `d = a & mask`.
    Mov { d: Slot, a: Slot, mask: u64 },
    /// `d = f(a)`.
    Int1 { f: Fn1, d: Slot, a: Slot },
    /// `d = f(a, b)`.
    Int2 { f: Fn2, d: Slot, a: Slot, b: Slot },
    /// `d = f(a, b, c)`.
    Int3 {
        f: Fn3,
        d: Slot,
        a: Slot,
        b: Slot,
        c: Slot,
    },
    /// `bfi.b32/.b64 d, a, b, pos, len` (`wide`: 64 bits).
    Bfi {
        wide: bool,
        d: Slot,
        a: Slot,
        b: Slot,
        pos: Slot,
        len: Slot,
    },
    /// `d = p ? a : b`.
    Selp {
        d: Slot,
        a: Slot,
        b: Slot,
        p: PredSrc,
    },
    /// `setp`: `p = cmp(a, b) op c`, `q = !cmp(a, b) op c`.
    Setp {
        cmp: Compare,
        p: Pred,
        q: Option<Pred>,
        a: Slot,
        b: Slot,
        combine: Option<(BoolOp, PredSrc)>,
    },
    /// A predicate logic operation.
    PredLogic {
        op: BoolOp,
        d: Pred,
        a: PredSrc,
        b: PredSrc,
    },
    /// `mov.pred` / `not.pred`: `d = a` (negated per `a`).
    PredMov { d: Pred, a: PredSrc },
    /// `mov.pred d, imm`.
    PredConst { d: Pred, value: bool },
    /// `mov.bN d, {a, b, ..}`: packs `parts` of `bits` each, low first.
    Pack {
        d: Slot,
        parts: [Slot; 4],
        count: u8,
        bits: u8,
    },
    /// `mov.bN {a, b, ..}, s`: unpacks into `parts` (sinks are [`NO_SLOT`]).
    Unpack {
        parts: [Slot; 4],
        count: u8,
        bits: u8,
        a: Slot,
    },
    /// Reads a clock special register.
    ReadClock { d: Slot, clock: Clock },
    /// `op.{rnd}{.ftz}{.sat}.f32`.
    F32Bin {
        op: F32Op,
        mods: F32Mods,
        d: Slot,
        a: Slot,
        b: Slot,
    },
    /// `fma/mad.rnd.f32`.
    F32Fma {
        mods: F32Mods,
        d: Slot,
        a: Slot,
        b: Slot,
        c: Slot,
    },
    /// `neg abs sqrt rcp .f32`.
    F32Un {
        op: F32Unary,
        mods: F32Mods,
        d: Slot,
        a: Slot,
    },
    /// `ex2 lg2 rcp sqrt rsqrt sin cos tanh .approx.f32`.
    F32Approx {
        op: Approx,
        ftz: bool,
        d: Slot,
        a: Slot,
    },
    /// `div.approx/.full.f32`.
    F32DivApprox {
        ftz: bool,
        d: Slot,
        a: Slot,
        b: Slot,
    },
    /// `copysign.f32`.
    F32Copysign { d: Slot, a: Slot, b: Slot },
    /// `op.rnd.f64`.
    F64Bin {
        op: F64Op,
        rnd: Rounding,
        d: Slot,
        a: Slot,
        b: Slot,
    },
    /// `fma.rnd.f64`.
    F64Fma {
        rnd: Rounding,
        d: Slot,
        a: Slot,
        b: Slot,
        c: Slot,
    },
    /// `neg abs sqrt rcp .f64`.
    F64Un {
        op: F64Unary,
        rnd: Rounding,
        d: Slot,
        a: Slot,
    },
    /// `rcp.approx.ftz.f64`.
    F64RcpApprox { d: Slot, a: Slot },
    /// `cvt`.
    Cvt {
        dst: Scalar,
        src: Scalar,
        mods: CvtMods,
        d: Slot,
        a: Slot,
    },
    /// `cvt.rn.f16x2.f32 d, a, b` and the bf16x2 form.
    CvtPack {
        dst: Scalar,
        mods: CvtMods,
        d: Slot,
        a: Slot,
        b: Slot,
    },
    /// `ld.param` of a kernel parameter: the bytes at `offset` of the
    /// parameter buffer (the same for every thread).
    LdParam {
        d: Slot,
        offset: u32,
        width: u8,
        signed: bool,
        dst_mask: u64,
    },
    /// `ld.global` / `ld.shared`.
    Ld(Access),
    /// `st.global` / `st.shared`.
    St(Access),
    /// `atom` (`d` is [`NO_SLOT`] for `red`).
    Atom {
        space: MemSpace,
        op: AtomOp,
        wide: bool,
        d: Slot,
        addr: Addr,
        b: Slot,
        c: Slot,
    },
    /// `cp.async.{ca,cg}.shared.global [dst], [src], cp_size{, src_size}`.
    CpAsync {
        dst: Addr,
        src: Addr,
        size: u8,
        src_size: Slot,
    },
    /// `cp.async.commit_group`.
    CpAsyncCommit,
    /// `cp.async.wait_group n` (`wait_all`: n = 0 and every uncommitted copy too).
    CpAsyncWait { n: u32, all: bool },
    /// `ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16`.
    Ldmatrix {
        num: u8,
        trans: bool,
        d: [Slot; 4],
        addr: Addr,
    },
    /// `mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{..}.f32`.
    Mma {
        ty: MmaType,
        d: [Slot; 4],
        a: [Slot; 4],
        b: [Slot; 2],
        c: [Slot; 4],
    },
    /// `shfl.sync.mode.b32 d[|p], a, b, c, membermask`.
    Shfl {
        mode: ShflMode,
        d: Slot,
        p: Option<Pred>,
        a: Slot,
        b: Slot,
        c: Slot,
        mask: Slot,
    },
    /// `vote.sync.mode` (`d_pred` for all/any/uni, `d_slot` for ballot).
    Vote {
        mode: VoteMode,
        d_pred: Pred,
        d_slot: Slot,
        a: PredSrc,
        mask: Slot,
    },
    /// `match.{any,all}.sync.{b32,b64} d[|p], a, membermask`.
    Match {
        all: bool,
        wide: bool,
        d: Slot,
        p: Option<Pred>,
        a: Slot,
        mask: Slot,
    },
    /// `redux.sync.op.type d, a, membermask`.
    Redux {
        op: ReduxOp,
        d: Slot,
        a: Slot,
        mask: Slot,
    },
    /// `bar.warp.sync membermask`.
    WarpSync { mask: Slot },
    /// `bar.sync` / `barrier.sync` / `bar.red` / `bar.arrive`.
    Bar {
        id: Slot,
        count: Slot,
        aligned: bool,
        arrive: bool,
        red: Option<(BarRed, PredSrc)>,
    },
    /// `bra target`.
    Bra { target: u32 },
    /// `exit`, or `ret` of the kernel itself.
    Exit,
    /// `trap`.
    Trap,
    /// An instruction with no effect in the emulator (`membar`, `fence`).
    Nop,
}

/// One instruction: its guard and its operation.
#[derive(Debug, Clone)]
pub struct Inst {
    /// `@p` / `@!p`.
    pub guard: Option<PredSrc>,
    /// The operation.
    pub op: Op,
}
