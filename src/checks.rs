//! Argument checks shared by the CPU reference and the CUDA wrappers, so that
//! both backends reject the same bad input with the same error.

use crate::error::{check_i32, product, Error, Result};

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
