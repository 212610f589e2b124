//! Elementwise loops compiled for AVX-512 when the CPU has it: the crate is
//! built for baseline x86-64 (SSE2), so without this a loop over `f32` runs
//! four lanes wide however wide the CPU's vectors are.

/// Runs `body` with the code it inlines compiled for AVX-512 (16 f32 lanes)
/// when the CPU has it, else as built. The results are the same either way:
/// Rust never contracts a multiply and an add into a fused one on its own, so
/// the wider code does the same IEEE operations on more lanes at a time.
#[inline]
pub(crate) fn wide<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        /// `body()`, compiled with AVX-512 enabled.
        ///
        /// # Safety
        /// The CPU must support avx512f.
        #[target_feature(enable = "avx512f")]
        unsafe fn run<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        // SAFETY: the CPU has avx512f, checked just above.
        return unsafe { run(body) };
    }
    body()
}
