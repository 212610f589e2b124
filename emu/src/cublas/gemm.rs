//! The column-major GEMM of cuBLAS over emulated device memory:
//! `C_i = alpha * op(A_i) * op(B_i) + beta * C_i` for each batch `i`, with
//! `op(A)` `m x k`, `op(B)` `k x n` and `C` `m x n`.
//!
//! Operands are converted to f32, multiplied with f32 accumulation
//! (`matrixmultiply::sgemm`), and the result rounded to C's type to nearest,
//! ties to even. With `beta == 0`, C is not read (a NaN in C does not
//! reach the result). Every matrix's byte range, of every batch, is checked
//! against the allocation map before any is touched; only C's elements are
//! written (not the gaps its leading dimension leaves).

use super::status::{CUBLAS_STATUS_EXECUTION_FAILED, CUBLAS_STATUS_INVALID_VALUE};
use crate::driver::failure::{Failure, Outcome};
use crate::memory::{DeviceMemory, MemoryView, Region};
use crate::numeric::convert::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use crate::numeric::Rounding;

/// An element type of a GEMM operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// `CUDA_R_32F`
    F32,
    /// `CUDA_R_16F`
    F16,
    /// `CUDA_R_16BF`
    Bf16,
}

impl Elem {
    /// The type of a `cudaDataType` value, if a GEMM here takes it.
    pub fn from_cuda(t: i32) -> Option<Elem> {
        match t {
            0 => Some(Elem::F32),
            2 => Some(Elem::F16),
            14 => Some(Elem::Bf16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::Bf16 => 2,
        }
    }

    /// Reads one element at `p`.
    ///
    /// # Safety
    ///
    /// `p` must be valid for reads of [`Elem::bytes`] bytes.
    unsafe fn load(self, p: *const u8) -> f32 {
        // SAFETY: per the caller's contract (reads are unaligned-safe).
        unsafe {
            match self {
                Elem::F32 => f32::from_le_bytes(p.cast::<[u8; 4]>().read_unaligned()),
                Elem::F16 => f32::from_bits(f16_to_f32(u16::from_le_bytes(
                    p.cast::<[u8; 2]>().read_unaligned(),
                ))),
                Elem::Bf16 => f32::from_bits(bf16_to_f32(u16::from_le_bytes(
                    p.cast::<[u8; 2]>().read_unaligned(),
                ))),
            }
        }
    }

    /// Writes `v`, rounded to this type to nearest even, at `p`.
    ///
    /// # Safety
    ///
    /// `p` must be valid for writes of [`Elem::bytes`] bytes.
    unsafe fn store(self, p: *mut u8, v: f32) {
        // SAFETY: per the caller's contract (writes are unaligned-safe).
        unsafe {
            match self {
                Elem::F32 => p.cast::<[u8; 4]>().write_unaligned(v.to_le_bytes()),
                Elem::F16 => p
                    .cast::<[u8; 2]>()
                    .write_unaligned(f32_to_f16(v.to_bits(), Rounding::Nearest).to_le_bytes()),
                Elem::Bf16 => p
                    .cast::<[u8; 2]>()
                    .write_unaligned(f32_to_bf16(v.to_bits(), Rounding::Nearest).to_le_bytes()),
            }
        }
    }
}

/// A `cublasOperation_t` on a real matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `CUBLAS_OP_N`
    N,
    /// `CUBLAS_OP_T`, and `CUBLAS_OP_C` (the same on real matrices).
    T,
}

impl Op {
    /// The operation of a `cublasOperation_t` value.
    pub fn from_cublas(op: i32) -> Option<Op> {
        match op {
            0 => Some(Op::N),
            1 | 2 => Some(Op::T),
            _ => None,
        }
    }
}

/// One matrix operand: where it starts, its type, leading dimension (in
/// elements) and batch stride (in elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matrix {
    /// The device address of batch 0's first element.
    pub addr: u64,
    /// The element type.
    pub elem: Elem,
    /// The leading dimension.
    pub ld: i64,
    /// Elements from one batch's matrix to the next.
    pub stride: i64,
}

/// A (strided batched) GEMM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemm {
    /// `op(A)`.
    pub transa: Op,
    /// `op(B)`.
    pub transb: Op,
    /// Rows of `op(A)` and C.
    pub m: i64,
    /// Columns of `op(B)` and C.
    pub n: i64,
    /// Columns of `op(A)`, rows of `op(B)`.
    pub k: i64,
    /// The product's scale.
    pub alpha: f32,
    /// C's scale (0: C is not read).
    pub beta: f32,
    /// A.
    pub a: Matrix,
    /// B.
    pub b: Matrix,
    /// C.
    pub c: Matrix,
    /// The number of products.
    pub batch: i64,
}

fn invalid(message: String) -> Failure {
    Failure::new(CUBLAS_STATUS_INVALID_VALUE, message)
}

/// A stored column-major matrix of one batch: `rows x cols` at `addr`.
#[derive(Debug, Clone, Copy)]
struct Stored {
    name: char,
    addr: u64,
    elem: Elem,
    ld: usize,
    rows: usize,
    cols: usize,
}

impl Stored {
    /// Bytes from the first element to one past the last.
    fn span(&self) -> Option<u64> {
        if self.rows == 0 || self.cols == 0 {
            return Some(0);
        }
        let elements = (self.cols as u128 - 1) * self.ld as u128 + self.rows as u128;
        u64::try_from(elements * self.elem.bytes() as u128).ok()
    }

    /// Its allocation, checked to hold all of it.
    fn region<'v>(&self, view: &'v MemoryView<'_>, batch: i64) -> Outcome<Region<'v>> {
        let out_of_bounds = |what: String| {
            Failure::new(
                CUBLAS_STATUS_EXECUTION_FAILED,
                format!(
                    "matrix {} of batch {batch} ({} x {}, ld {}, {:?} at {:#x}) {what}",
                    self.name, self.rows, self.cols, self.ld, self.elem, self.addr
                ),
            )
        };
        let span = self
            .span()
            .ok_or_else(|| out_of_bounds("is larger than the address space".into()))?;
        view.checked(self.addr, span)
            .map_err(|e| out_of_bounds(format!("lies outside device memory: {e}")))
    }

    /// The element at (`row`, `col`).
    ///
    /// # Safety
    ///
    /// `region` must hold this matrix ([`Stored::region`]); `row < rows`,
    /// `col < cols`.
    unsafe fn at(&self, region: &Region<'_>, row: usize, col: usize) -> *mut u8 {
        let offset = ((col * self.ld + row) * self.elem.bytes()) as u64;
        region.ptr_at(self.addr + offset)
    }
}

impl Gemm {
    /// Checks the dimensions; `false` when there is nothing to compute.
    fn check(&self) -> Outcome<bool> {
        for (name, v) in [
            ("m", self.m),
            ("n", self.n),
            ("k", self.k),
            ("batchCount", self.batch),
        ] {
            if v < 0 {
                return Err(invalid(format!("{name} = {v} is negative")));
            }
        }
        let rows_a = if self.transa == Op::N { self.m } else { self.k };
        let rows_b = if self.transb == Op::N { self.k } else { self.n };
        for (name, ld, rows) in [
            ("lda", self.a.ld, rows_a),
            ("ldb", self.b.ld, rows_b),
            ("ldc", self.c.ld, self.m),
        ] {
            if ld < rows.max(1) {
                return Err(invalid(format!(
                    "{name} = {ld} is less than max(1, {rows}), the rows it stores"
                )));
            }
        }
        if self.batch > 1 {
            for (name, s) in [
                ("strideA", self.a.stride),
                ("strideB", self.b.stride),
                ("strideC", self.c.stride),
            ] {
                if s < 0 {
                    return Err(invalid(format!("{name} = {s} is negative")));
                }
            }
        }
        Ok(self.m > 0 && self.n > 0 && self.batch > 0)
    }

    /// The three stored matrices of batch `i`.
    fn stored(&self, i: i64) -> Outcome<[Stored; 3]> {
        let (m, n, k) = (self.m as usize, self.n as usize, self.k as usize);
        let (ra, ca) = if self.transa == Op::N { (m, k) } else { (k, m) };
        let (rb, cb) = if self.transb == Op::N { (k, n) } else { (n, k) };
        let place = |name: char, x: &Matrix, rows: usize, cols: usize| -> Outcome<Stored> {
            let offset = i as i128 * x.stride as i128 * x.elem.bytes() as i128;
            let addr = u64::try_from(x.addr as i128 + offset).map_err(|_| {
                Failure::new(
                    CUBLAS_STATUS_EXECUTION_FAILED,
                    format!("matrix {name} of batch {i} starts outside the address space"),
                )
            })?;
            Ok(Stored {
                name,
                addr,
                elem: x.elem,
                ld: x.ld as usize,
                rows,
                cols,
            })
        };
        Ok([
            place('A', &self.a, ra, ca)?,
            place('B', &self.b, rb, cb)?,
            place('C', &self.c, m, n)?,
        ])
    }

    /// Runs the GEMM against `memory`.
    pub fn run(&self, memory: &DeviceMemory) -> Outcome {
        if !self.check()? {
            return Ok(());
        }
        let view = memory.view();
        let batches: Vec<[Stored; 3]> = (0..self.batch)
            .map(|i| self.stored(i))
            .collect::<Outcome<_>>()?;
        for (i, mats) in batches.iter().enumerate() {
            for s in mats {
                s.region(&view, i as i64)?;
            }
        }
        for (i, [a, b, c]) in batches.iter().enumerate() {
            let regions = [a, b, c].map(|s| s.region(&view, i as i64));
            let [ra, rb, rc] = regions;
            self.product(a, &ra?, b, &rb?, c, &rc?);
        }
        Ok(())
    }

    /// One product, on matrices whose regions were checked.
    fn product(
        &self,
        a: &Stored,
        ra: &Region<'_>,
        b: &Stored,
        rb: &Region<'_>,
        c: &Stored,
        rc: &Region<'_>,
    ) {
        let (m, n, k) = (self.m as usize, self.n as usize, self.k as usize);
        let mut opa = vec![0f32; m * k];
        for i in 0..m {
            for l in 0..k {
                let (r, col) = if self.transa == Op::N { (i, l) } else { (l, i) };
                // SAFETY: `ra` holds A, and (r, col) is inside it.
                opa[i * k + l] = unsafe { a.elem.load(a.at(ra, r, col)) };
            }
        }
        let mut opb = vec![0f32; k * n];
        for l in 0..k {
            for j in 0..n {
                let (r, col) = if self.transb == Op::N { (l, j) } else { (j, l) };
                // SAFETY: `rb` holds B, and (r, col) is inside it.
                opb[l * n + j] = unsafe { b.elem.load(b.at(rb, r, col)) };
            }
        }
        let mut out = vec![0f32; m * n];
        if self.beta != 0.0 {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: `rc` holds C, and (i, j) is inside it.
                    out[i * n + j] = unsafe { c.elem.load(c.at(rc, i, j)) };
                }
            }
        }
        // SAFETY: the three buffers are row-major m x k, k x n and m x n, as
        // the strides say; `out` is zero when beta is 0 (and not read then).
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                self.alpha,
                opa.as_ptr(),
                k as isize,
                1,
                opb.as_ptr(),
                n as isize,
                1,
                self.beta,
                out.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        for i in 0..m {
            for j in 0..n {
                // SAFETY: `rc` holds C, and (i, j) is inside it.
                unsafe { c.elem.store(c.at(rc, i, j), out[i * n + j]) };
            }
        }
    }
}
