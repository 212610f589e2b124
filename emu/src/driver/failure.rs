//! What an entry point returns when it fails, and the guard every entry point
//! runs its body in (reports on stderr, catches panics).

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::status::{CUresult, CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_UNKNOWN, CUDA_SUCCESS};

/// A failed call: the code it returns and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The `CUresult` returned.
    pub code: CUresult,
    /// What is wrong, printed to stderr with the entry point's name.
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: CUresult, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// The result of an entry point's body.
pub type Outcome<T = ()> = Result<T, Failure>;

/// Prints one line of the emulator's report on stderr (a failed write is
/// ignored: `eprintln!` would panic, and a panic must not leave an FFI call).
pub fn report(entry: &str, message: &str) {
    let _ = writeln!(std::io::stderr(), "dropless-emu: {entry}: {message}");
}

/// Runs the body of driver entry point `entry`: success is `CUDA_SUCCESS`, a
/// failure is reported and its code returned, a panic is reported and
/// returns `CUDA_ERROR_UNKNOWN`.
pub fn guard(entry: &str, body: impl FnOnce() -> Outcome) -> CUresult {
    guard_with(entry, CUDA_ERROR_UNKNOWN, body)
}

/// As [`guard`], for any API whose success is 0: a panic returns `on_panic`.
pub fn guard_with(entry: &str, on_panic: i32, body: impl FnOnce() -> Outcome) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => CUDA_SUCCESS,
        Ok(Err(failure)) => {
            report(entry, &failure.message);
            failure.code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            report(entry, &format!("internal error in the emulator: {what}"));
            on_panic
        }
    }
}

/// Writes `value` through the out-parameter `ptr`, refusing null.
///
/// # Safety
///
/// `ptr` must be null or valid for a write of `T`.
pub unsafe fn put<T>(ptr: *mut T, value: T, what: &str) -> Outcome {
    if ptr.is_null() {
        return Err(Failure::new(
            CUDA_ERROR_INVALID_VALUE,
            format!("{what} is a null pointer"),
        ));
    }
    // SAFETY: non-null, and valid for a write per the caller's contract.
    unsafe { ptr.write(value) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_and_panics_become_codes() {
        assert_eq!(guard("test", || Ok(())), CUDA_SUCCESS);
        assert_eq!(
            guard("test", || Err(Failure::new(
                CUDA_ERROR_INVALID_VALUE,
                "bad"
            ))),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(guard("test", || panic!("boom")), CUDA_ERROR_UNKNOWN);
        assert_eq!(guard_with("test", 14, || panic!("boom")), 14);
    }

    #[test]
    fn null_out_parameters_are_refused() {
        // SAFETY: null is refused before any write; the local is valid.
        unsafe {
            assert!(put(std::ptr::null_mut::<i32>(), 1, "out").is_err());
            let mut v = 0;
            put(&mut v, 5, "out").unwrap();
            assert_eq!(v, 5);
        }
    }
}
