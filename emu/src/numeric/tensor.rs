//! The warp-wide tensor-core instructions: `mma.sync.aligned.m16n8k16.row.col`
//! (f16 and bf16 operands, f32 accumulators) and `ldmatrix.sync.aligned.m8n8`
//! (`.x1 .x2 .x4`, with and without `.trans`), with the fragment layouts
//! and lane/row mapping exactly as the PTX ISA's "Matrix fragments for
//! mma.m16n8k16" and "ldmatrix" sections define them.

/// The operand type of an `mma`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmaType {
    /// `.f16.f16` operands
    F16,
    /// `.bf16.bf16` operands
    Bf16,
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32 d, a, b, c` for a
/// whole warp: `a[lane]` is that lane's four `.b32` A registers (each two
/// packed halves), `b[lane]` its two B registers, `c[lane]` its four f32
/// accumulators (bits). Returns every lane's four D registers (f32 bits).
/// The products are exact and summed in f32 with round-to-nearest (the
/// hardware's order is unspecified; this sums k in order 0..16 then adds c).
pub fn mma_m16n8k16(
    ty: MmaType,
    a: &[[u32; 4]; 32],
    b: &[[u32; 2]; 32],
    c: &[[u32; 4]; 32],
) -> [[u32; 4]; 32] {
    let _ = (ty, a, b, c);
    unimplemented!("numeric::tensor::mma_m16n8k16")
}

/// `ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16` for a whole
/// warp: `row_addr[lane]` is the shared address each lane supplies (only the
/// lanes that supply rows for `num` matrices are read: lanes 0-7 for x1,
/// 0-15 for x2, all for x4), `read_row(addr)` returns the 16 bytes of one
/// 8-element row. Returns each lane's `num` destination registers (unused
/// entries 0).
pub fn ldmatrix(
    num: usize,
    trans: bool,
    row_addr: &[u32; 32],
    read_row: impl FnMut(u32) -> [u8; 16],
) -> [[u32; 4]; 32] {
    let _ = (num, trans, row_addr, read_row);
    unimplemented!("numeric::tensor::ldmatrix")
}
