//! Shared bench helpers: the GPU (or a clean exit without one), random
//! operands, and CUDA-event timing as criterion measurements.

use std::time::Duration;

use dropless::cuda::{CudaBackend, DeviceElement, DeviceTensor, KERNELS_BUILT};
use dropless::Element;

/// The GPU (after printing its name, so that a run on the emulator says
/// so), or `None` after printing why the GPU benches are skipped.
pub fn gpu_or_skip(bench: &str) -> Option<CudaBackend> {
    match CudaBackend::try_new() {
        Ok(_) if !KERNELS_BUILT => {
            println!("{bench}: skipped: {}", dropless::Error::KernelsNotBuilt);
            None
        }
        Ok(b) => {
            let name = b.context().name().unwrap_or_else(|_| "unnamed GPU".into());
            println!("{bench}: on {name}");
            Some(b)
        }
        Err(e) => {
            println!("{bench}: skipped, no GPU: {e}");
            None
        }
    }
}

/// A `shape` tensor of pseudo-random non-zero values in ±[0.25, 1) * scale.
pub fn random_tensor<T: DeviceElement + Element>(
    backend: &CudaBackend,
    shape: &[usize],
    seed: u64,
    scale: f32,
) -> DeviceTensor<T> {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let host: Vec<T> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            let v = 0.25 + 0.75 * u;
            T::from_f32(if state & 1 == 0 {
                v * scale
            } else {
                -v * scale
            })
        })
        .collect();
    DeviceTensor::from_host(backend, shape, &host).expect("upload bench operand")
}

/// Times `iters` runs of `f` with CUDA events and returns the total as a
/// criterion duration (for `iter_custom`). Panics on a CUDA error: a bench
/// that fails must not report a number.
pub fn time_gpu(
    backend: &CudaBackend,
    iters: u64,
    f: impl FnMut() -> dropless::Result<()>,
) -> Duration {
    let ms = backend
        .time_ms(iters as usize, f)
        .expect("CUDA error while timing");
    Duration::from_secs_f64(ms * iters as f64 / 1e3)
}

/// Median GPU time of one run of `f` in ms, over `reps` timed batches of 10.
pub fn median_ms(
    backend: &CudaBackend,
    reps: usize,
    mut f: impl FnMut() -> dropless::Result<()>,
) -> f64 {
    f().expect("warm-up run");
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            backend
                .time_ms(10, &mut f)
                .expect("CUDA error while timing")
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
