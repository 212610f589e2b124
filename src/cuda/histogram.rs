//! The expert histogram on the device.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::kernels::HISTOGRAM;
use super::{CudaBackend, DeviceTensor};
use crate::checks::{check_nonempty, check_top_k};
use crate::error::{check_i32, product, Error, Result};

const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 1024;

/// Most experts the kernel counts (one i32 counter each in 48 KiB of shared
/// memory).
pub const MAX_HISTOGRAM_EXPERTS: usize = 12 * 1024;

/// Checks `[tokens, top_k]` expert ids against `num_experts`; returns the
/// number of assignments.
fn check_histogram_shapes(shape: &[usize], num_experts: usize) -> Result<usize> {
    const OP: &str = "histogram";
    let [tokens, top_k] = shape[..] else {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!("expert ids must be [tokens, top_k], found {shape:?}"),
        });
    };
    check_nonempty(OP, "the number of tokens", tokens)?;
    check_nonempty(OP, "the number of experts", num_experts)?;
    check_top_k(top_k, num_experts)?;
    if num_experts > MAX_HISTOGRAM_EXPERTS {
        return Err(Error::InvalidConfig(format!(
            "histogram supports at most {MAX_HISTOGRAM_EXPERTS} experts, found {num_experts}"
        )));
    }
    let n = product(&[tokens, top_k]);
    check_i32("tokens x top_k", n)?;
    Ok(n as usize)
}

/// Tokens per expert: counts each id of `expert_ids` (`[tokens, top_k]`, i32).
/// Ids outside `0..num_experts` are not counted (the device router never
/// writes them); returns a `[num_experts]` i32 tensor.
///
/// Errors: [`Error::ShapeMismatch`] unless the ids are 2-D, [`Error::Empty`],
/// [`Error::InvalidTopK`] unless `1 <= top_k <= num_experts`,
/// [`Error::InvalidConfig`] past [`MAX_HISTOGRAM_EXPERTS`],
/// [`Error::IndexOverflow`].
pub fn histogram(
    backend: &CudaBackend,
    expert_ids: &DeviceTensor<i32>,
    num_experts: usize,
) -> Result<DeviceTensor<i32>> {
    let n = check_histogram_shapes(expert_ids.shape(), num_experts)?;
    let mut counts = DeviceTensor::<i32>::zeros(backend, &[num_experts])?;
    let func = backend.function(HISTOGRAM, "dl_histogram")?;
    let blocks = n.div_ceil(THREADS as usize).min(MAX_BLOCKS) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: (num_experts * 4) as u32,
    };
    let (n_i32, e_i32) = (n as i32, num_experts as i32);
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(expert_ids.slice())
        .arg(&n_i32)
        .arg(&e_i32)
        .arg(counts.slice_mut());
    // SAFETY: dl_histogram(const i32* ids, i32 n, i32 num_experts, i32* counts)
    // reads ids[0..n) (the tensor holds n <= i32::MAX elements, checked),
    // writes counts[0..num_experts) (allocated with that length) and uses
    // num_experts * 4 <= 48 KiB of dynamic shared memory, which the config
    // gives it. Its grid-stride step never overflows i32 (see the kernel).
    unsafe { launch.launch(cfg) }?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked() {
        assert_eq!(check_histogram_shapes(&[10, 2], 8).unwrap(), 20);
        assert_eq!(check_histogram_shapes(&[3, 8], 8).unwrap(), 24);
        assert!(matches!(
            check_histogram_shapes(&[20], 8),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            check_histogram_shapes(&[0, 2], 8),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            check_histogram_shapes(&[4, 2], 0),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            check_histogram_shapes(&[4, 0], 8),
            Err(Error::InvalidTopK { .. })
        ));
        assert!(matches!(
            check_histogram_shapes(&[4, 9], 8),
            Err(Error::InvalidTopK { .. })
        ));
        assert!(matches!(
            check_histogram_shapes(&[4, 2], MAX_HISTOGRAM_EXPERTS + 1),
            Err(Error::InvalidConfig(_))
        ));
        assert!(check_histogram_shapes(&[4, 2], MAX_HISTOGRAM_EXPERTS).is_ok());
        assert!(matches!(
            check_histogram_shapes(&[1 << 29, 8], 64),
            Err(Error::IndexOverflow { .. })
        ));
    }
}
