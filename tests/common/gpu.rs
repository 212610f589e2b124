//! Device helpers shared by the GPU routing and router-gradient tests.

use std::sync::OnceLock;

use dropless::cuda::{CudaBackend, DeviceElement, DeviceTensor};
use ndarray::ArrayView2;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::Rng;

/// The one CUDA backend of the test binary.
pub fn backend() -> &'static CudaBackend {
    static BACKEND: OnceLock<CudaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| CudaBackend::try_new().expect("these tests need a CUDA device"))
}

/// Uploads `data` as a tensor of `shape`.
pub fn upload<T: DeviceElement>(shape: &[usize], data: &[T]) -> DeviceTensor<T> {
    DeviceTensor::from_host(backend(), shape, data).unwrap()
}

/// Uploads a 2-D array.
pub fn upload2<T: DeviceElement>(a: ArrayView2<T>) -> DeviceTensor<T> {
    DeviceTensor::from_array(backend(), a).unwrap()
}

/// A tensor of `shape` filled with `value` (e.g. NaN poison).
pub fn filled<T: DeviceElement>(shape: &[usize], value: T) -> DeviceTensor<T> {
    DeviceTensor::filled(backend(), shape, value).unwrap()
}

/// A random value of magnitude 0.05..=1 and random sign (never zero).
pub fn signed_value(rng: &mut StdRng) -> f32 {
    let m = rng.gen_range(0.05f32..=1.0);
    if rng.gen() {
        m
    } else {
        -m
    }
}

/// Token counts: tiny, small, one past a CTA multiple, and a few thousand.
pub fn tokens_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![1..=3usize, 4..=300usize, Just(129usize), 1000..=3000usize]
}
