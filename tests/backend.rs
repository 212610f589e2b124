//! The CUDA entry point never panics: on a machine without a driver or device
//! it returns a typed error, on a GPU machine it opens the device.

use dropless::cuda::{histogram::histogram, CudaBackend, DeviceTensor, KERNELS_BUILT};
use dropless::Error;

#[test]
fn try_new_returns_a_value_not_a_panic() {
    match CudaBackend::try_new() {
        Ok(_) => {}
        Err(Error::NoCudaDriver | Error::NoDevice(_)) => {}
        Err(other) => panic!("unexpected error from CudaBackend::try_new: {other}"),
    }
}

#[test]
fn a_missing_device_ordinal_is_an_error() {
    match CudaBackend::try_new_on(1 << 20) {
        Err(Error::NoCudaDriver | Error::NoDevice(_)) => {}
        other => panic!("expected NoCudaDriver or NoDevice, got {other:?}"),
    }
}

#[test]
#[ignore = "requires a CUDA device"]
fn histogram_counts_expert_ids() {
    let backend = CudaBackend::try_new().expect("a CUDA device");
    let (tokens, top_k, experts) = (1000usize, 2usize, 7usize);
    let ids: Vec<i32> = (0..tokens * top_k)
        .map(|i| ((i * 2654435761) % 97 % experts) as i32)
        .collect();
    let dev = DeviceTensor::from_host(&backend, &[tokens, top_k], &ids).unwrap();
    let counts = histogram(&backend, &dev, experts);
    if !KERNELS_BUILT {
        assert!(matches!(counts, Err(Error::KernelsNotBuilt)));
        return;
    }
    let counts = counts.unwrap().to_host(&backend).unwrap();
    let mut want = vec![0i32; experts];
    for &e in &ids {
        want[e as usize] += 1;
    }
    assert_eq!(counts, want);
}
