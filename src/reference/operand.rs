//! The operands of the CPU reference's block products, prepared once per
//! panel for the many `bs`-sized products that reuse them, and the one
//! product over them.
//!
//! f32 and f16 operands are f32 (views of f32 operands, widened copies of
//! f16 ones) and multiply on the `gemm` crate. bf16 operands on a CPU with
//! AVX512-BF16 stay bf16: left operands as stored, right operands packed for
//! [`gemm_bf16`] (its `vdpbf16ps` kernel, or its AMX tiles where the CPU
//! has them). A bf16 or f16 right operand that only few left rows use (a
//! decode step) is read as stored ([`few_rows`]). f32 accumulation on every
//! path.

use std::ops::Range;

use half::bf16;
use ndarray::{s, ArrayView2, ArrayViewMut2, CowArray, Ix2};

use crate::dtype::{DType, Element};
use crate::reference::few_rows;
use crate::reference::gemm::{as_f32, gemm_into, to_f32, widen, Order, Threads};
use crate::reference::gemm_bf16::{self, PackedB};

/// Whether `T`'s products take the bf16 dot-product kernel on this CPU.
pub(crate) fn bf16_kernel<T: Element>() -> bool {
    T::DTYPE == DType::BF16 && gemm_bf16::available()
}

/// A left-hand operand, prepared.
pub(crate) enum Lhs<'a> {
    /// f32 values.
    F32(CowArray<'a, f32, Ix2>),
    /// bf16 values as stored, for the bf16 kernel.
    Bf16(ArrayView2<'a, bf16>),
}

impl<'a> Lhs<'a> {
    /// `x` as a left-hand operand; f32 copies are made in `order`.
    pub(crate) fn new<T: Element>(x: ArrayView2<'a, T>, order: Order) -> Self {
        match T::bf16_view(x) {
            Some(x) if bf16_kernel::<T>() => Lhs::Bf16(x),
            _ => Lhs::F32(to_f32(x, order)),
        }
    }

    /// A view of the whole operand.
    pub(crate) fn view(&self) -> LhsView<'_> {
        match self {
            Lhs::F32(x) => LhsView::F32(x.view()),
            Lhs::Bf16(x) => LhsView::Bf16(x.view()),
        }
    }
}

/// A view of an [`Lhs`].
#[derive(Clone, Copy)]
pub(crate) enum LhsView<'a> {
    /// f32 values.
    F32(ArrayView2<'a, f32>),
    /// bf16 values.
    Bf16(ArrayView2<'a, bf16>),
}

impl LhsView<'_> {
    /// Rows `rows` of the view.
    pub(crate) fn rows(self, rows: Range<usize>) -> Self {
        match self {
            LhsView::F32(x) => LhsView::F32(x.slice_move(s![rows, ..])),
            LhsView::Bf16(x) => LhsView::Bf16(x.slice_move(s![rows, ..])),
        }
    }

    /// The transposed view.
    pub(crate) fn t(self) -> Self {
        match self {
            LhsView::F32(x) => LhsView::F32(x.reversed_axes()),
            LhsView::Bf16(x) => LhsView::Bf16(x.reversed_axes()),
        }
    }
}

/// A right-hand operand of element type `T`, prepared.
pub(crate) enum Rhs<'a, T> {
    /// f32 values.
    F32(CowArray<'a, f32, Ix2>),
    /// bf16 values packed for the bf16 kernel.
    Bf16(PackedB),
    /// The values as stored, for products with few left rows.
    Stored(ArrayView2<'a, T>),
}

impl<'a, T: Element> Rhs<'a, T> {
    /// `x` as the right-hand operand of products whose left operands have
    /// `rows` rows in all (every product that reuses it).
    pub(crate) fn new(x: ArrayView2<'a, T>, rows: usize) -> Self {
        if few_rows::reads_as_stored::<T>(rows) {
            return Rhs::Stored(x);
        }
        match T::bf16_view(x) {
            Some(x) if bf16_kernel::<T>() => Rhs::Bf16(PackedB::new(x)),
            _ => Rhs::F32(as_f32(x)),
        }
    }
}

/// `c = lhs · rhs` (`c += lhs · rhs` when `accumulate`) on the calling
/// thread, f32 accumulation. Both operands come from the same `T` (the
/// constructors above pick matching kinds for it).
pub(crate) fn multiply<T: Element>(
    lhs: LhsView,
    rhs: &Rhs<T>,
    c: ArrayViewMut2<f32>,
    accumulate: bool,
) {
    match (lhs, rhs) {
        (LhsView::F32(a), Rhs::F32(b)) => gemm_into(a, b.view(), c, accumulate, Threads::One),
        (LhsView::Bf16(a), Rhs::Bf16(b)) => gemm_bf16::gemm(a, b, c, accumulate),
        (LhsView::F32(a), Rhs::Stored(b)) => few_rows::product_into(a, *b, c, accumulate),
        (LhsView::Bf16(a), Rhs::Stored(b)) => {
            few_rows::product_into(widen(a).view(), *b, c, accumulate)
        }
        (LhsView::F32(_), Rhs::Bf16(_)) => {
            unreachable!("a packed bf16 operand is only made when the left one is bf16 too")
        }
        (LhsView::Bf16(_), Rhs::F32(_)) => {
            unreachable!("a bf16 left operand is only kept when the right one is packed bf16")
        }
    }
}
