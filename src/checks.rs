//! Argument checks shared by the CPU reference and the CUDA wrappers, so that
//! both backends reject the same bad input with the same error.

use ndarray::ArrayView2;

use crate::dtype::Element;
use crate::error::{check_i32, product, Error, Result};

/// Checks that every value of `m` is finite: [`Error::NonFinite`] names
/// `what` and the row and column of the first NaN or infinity (row-major).
pub(crate) fn check_all_finite<T: Element>(what: &'static str, m: ArrayView2<T>) -> Result<()> {
    match m.indexed_iter().find(|(_, v)| !v.to_f32().is_finite()) {
        Some(((row, col), v)) => Err(Error::NonFinite {
            what,
            row,
            col,
            value: v.to_f32(),
        }),
        None => Ok(()),
    }
}

/// Rejects a zero `size` with [`Error::Empty`] naming `what` (e.g. "the
/// number of tokens").
pub(crate) fn check_nonempty(op: &'static str, what: &'static str, size: usize) -> Result<()> {
    if size == 0 {
        return Err(Error::Empty { op, what });
    }
    Ok(())
}

/// Checks that `top_k` lies in `1..=num_experts`.
pub(crate) fn check_top_k(top_k: usize, num_experts: usize) -> Result<()> {
    if top_k == 0 || top_k > num_experts {
        return Err(Error::InvalidTopK { top_k, num_experts });
    }
    Ok(())
}

/// Checks the sizes of a `[tokens, experts]` matrix of router logits (or
/// probabilities): non-empty and indexable with i32.
pub(crate) fn check_router_dims(op: &'static str, tokens: usize, experts: usize) -> Result<()> {
    check_nonempty(op, "the number of tokens", tokens)?;
    check_nonempty(op, "the number of experts", experts)?;
    check_i32("tokens x experts", product(&[tokens, experts]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_are_located() {
        let mut m = ndarray::Array2::<f32>::zeros((3, 4));
        assert!(check_all_finite("m", m.view()).is_ok());
        m[[2, 1]] = f32::NEG_INFINITY;
        m[[1, 3]] = f32::NAN;
        assert!(matches!(
            check_all_finite("m", m.view()),
            Err(Error::NonFinite { what: "m", row: 1, col: 3, value }) if value.is_nan()
        ));
        let h = ndarray::Array2::from_elem((1, 2), half::bf16::INFINITY);
        assert!(matches!(
            check_all_finite("h", h.view()),
            Err(Error::NonFinite { row: 0, col: 0, value, .. }) if value == f32::INFINITY
        ));
    }

    #[test]
    fn sizes_and_top_k_are_checked() {
        assert!(check_nonempty("t", "x", 1).is_ok());
        assert!(matches!(
            check_nonempty("t", "x", 0),
            Err(Error::Empty { op: "t", what: "x" })
        ));
        assert!(check_top_k(1, 1).is_ok());
        assert!(check_top_k(4, 8).is_ok());
        assert!(matches!(check_top_k(0, 8), Err(Error::InvalidTopK { .. })));
        assert!(matches!(check_top_k(9, 8), Err(Error::InvalidTopK { .. })));
        assert!(check_router_dims("t", 4, 8).is_ok());
        assert!(matches!(
            check_router_dims("t", 0, 8),
            Err(Error::Empty {
                what: "the number of tokens",
                ..
            })
        ));
        assert!(matches!(
            check_router_dims("t", 4, 0),
            Err(Error::Empty {
                what: "the number of experts",
                ..
            })
        ));
        assert!(matches!(
            check_router_dims("t", 1 << 16, 1 << 16),
            Err(Error::IndexOverflow { .. })
        ));
    }
}
