//! Builds the block-diagonal dMoE topology on the device from the padded
//! bins, without a host synchronisation: the buffers have the capacity of
//! [`DeviceTopology`]'s bound and the kernel writes the true counts into
//! device memory. The used part equals
//! [`crate::Topology::from_tokens_per_expert`] of the same counts.

use std::sync::Arc;

use cudarc::driver::PushKernelArg;

use super::kernels::{launch_1d, TOPOLOGY};
use super::{CudaBackend, DeviceTensor, DeviceTopology};
use crate::checks::{check_nonempty, check_top_k};
use crate::error::{check_i32, Error, Result};

/// Most experts the kernel takes (one i32 per expert in 48 KiB of shared memory).
pub const MAX_TOPOLOGY_EXPERTS: usize = 12 * 1024;

/// Checks the arguments of [`topology`]; returns the number of experts.
fn check_topology_shapes(padded_bins: &[usize], tokens: usize, top_k: usize) -> Result<usize> {
    const OP: &str = "topology";
    let [experts] = padded_bins[..] else {
        return Err(Error::ShapeMismatch {
            op: OP,
            message: format!("padded_bins must be 1-D [experts], found {padded_bins:?}"),
        });
    };
    check_nonempty(OP, "the number of experts", experts)?;
    check_nonempty(OP, "the number of tokens", tokens)?;
    check_top_k(top_k, experts)?;
    if experts > MAX_TOPOLOGY_EXPERTS {
        return Err(Error::InvalidConfig(format!(
            "the CUDA topology builder supports at most {MAX_TOPOLOGY_EXPERTS} experts, found {experts}"
        )));
    }
    Ok(experts)
}

/// The topology of a dMoE step on the device: `padded_bins` (`[experts]`
/// i32, from [`crate::cuda::permute::padded_bins`] with the same
/// `block_size`) gives each expert's padded row range; `tokens` and `top_k`
/// size the capacity (`max_padded_tokens(tokens, top_k, experts,
/// block_size)` rows); each block row of expert `e` holds the
/// `ffn_per_expert / block_size` blocks of its FFN columns.
///
/// Errors: [`Error::ShapeMismatch`] unless `padded_bins` is 1-D,
/// [`Error::Empty`], [`Error::InvalidTopK`], [`Error::UnsupportedBlockSize`],
/// [`Error::InvalidConfig`] for an ffn size that is not a positive multiple
/// of the block size, [`Error::IndexOverflow`].
pub fn topology(
    backend: &CudaBackend,
    padded_bins: &DeviceTensor<i32>,
    tokens: usize,
    top_k: usize,
    ffn_per_expert: usize,
    block_size: usize,
) -> Result<Arc<DeviceTopology>> {
    let experts = check_topology_shapes(padded_bins.shape(), tokens, top_k)?;
    let mut out =
        DeviceTopology::with_capacity(backend, tokens, top_k, experts, ffn_per_expert, block_size)?;
    build_into(backend, padded_bins, &mut out)?;
    Ok(Arc::new(out))
}

/// Writes the topology of `padded_bins` into `out` (its capacity and block
/// columns must be those of [`DeviceTopology::with_capacity`] for
/// `padded_bins.len()` experts).
fn build_into(
    backend: &CudaBackend,
    padded_bins: &DeviceTensor<i32>,
    out: &mut DeviceTopology,
) -> Result<()> {
    let experts = padded_bins.len();
    let per_row = out.block_cols / experts;
    if experts == 0
        || per_row * experts != out.block_cols
        || out.max_blocks != out.max_block_rows * per_row
    {
        return Err(Error::InvalidTopology(format!(
            "capacity {} block rows x {} block columns does not fit {experts} experts",
            out.max_block_rows, out.block_cols
        )));
    }
    let threads = out
        .max_blocks
        .max(out.block_cols + 1)
        .max(out.max_block_rows + 1);
    // The kernel's thread index runs up to one CTA past `threads`.
    check_i32("topology threads (+ one CTA)", threads as u128 + 256)?;
    let func = backend.function(TOPOLOGY, "dl_build_topology")?;
    let cfg = launch_1d(threads.div_ceil(256), 256, experts * 4);
    let (e_i32, b_i32, pr_i32, rows_i32) = (
        experts as i32,
        out.block_size as i32,
        per_row as i32,
        out.max_block_rows as i32,
    );
    let mut launch = backend.stream().launch_builder(&func);
    launch
        .arg(padded_bins.slice())
        .arg(&e_i32)
        .arg(&b_i32)
        .arg(&pr_i32)
        .arg(&rows_i32)
        .arg(out.row_indices.slice_mut())
        .arg(out.column_indices.slice_mut())
        .arg(out.offsets.slice_mut())
        .arg(out.column_indices_t.slice_mut())
        .arg(out.offsets_t.slice_mut())
        .arg(out.block_offsets_t.slice_mut());
    // SAFETY: dl_build_topology(const i32* padded_bins, i32 E, i32 block,
    // i32 per_row, i32 max_block_rows, i32* row_indices, i32* column_indices,
    // i32* offsets, i32* column_indices_t, i32* offsets_t,
    // i32* block_offsets_t) reads padded_bins[0..E) and writes, with explicit
    // bounds checks, the four block arrays at [0..max_block_rows * per_row)
    // (= max_blocks, their length from `with_capacity`), offsets at
    // [0..=max_block_rows) and offsets_t at [0..=E * per_row) (= block_cols,
    // their lengths). All sizes fit i32 (with_capacity checked
    // max_blocks * block^2 and E * ffn). The grid covers `threads` threads;
    // dynamic shared memory E * 4 <= 48 KiB.
    unsafe { launch.launch(cfg) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked() {
        assert_eq!(check_topology_shapes(&[8], 100, 2).unwrap(), 8);
        assert!(matches!(
            check_topology_shapes(&[8, 1], 100, 2),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            check_topology_shapes(&[0], 100, 2),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            check_topology_shapes(&[8], 0, 2),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            check_topology_shapes(&[8], 100, 9),
            Err(Error::InvalidTopK { .. })
        ));
        assert!(matches!(
            check_topology_shapes(&[MAX_TOPOLOGY_EXPERTS + 1], 100, 2),
            Err(Error::InvalidConfig(_))
        ));
    }

    /// Every device array, including the transpose metadata and the offsets
    /// of unused rows, against the host topology (buffers poisoned first).
    #[test]
    #[ignore = "requires a CUDA device"]
    fn device_arrays_match_the_host_topology() {
        use crate::topology::Topology;
        let backend = CudaBackend::try_new().expect("a CUDA device");
        let (block, ffn, top_k) = (128usize, 384usize, 2usize);
        for counts in [
            vec![0usize, 5, 0, 300, 128, 1, 0],
            vec![1],
            vec![0, 0, 129],
            vec![256, 0],
        ] {
            let experts = counts.len();
            let tokens = counts.iter().sum::<usize>().div_ceil(top_k).max(1);
            let top_k = top_k.min(experts);
            let mut padded = Vec::new();
            let mut run = 0i32;
            for &c in &counts {
                run += (c.div_ceil(block) * block) as i32;
                padded.push(run);
            }
            let host = Topology::from_tokens_per_expert(&counts, ffn, block).unwrap();
            let bins = DeviceTensor::from_host(&backend, &[experts], &padded).unwrap();
            let mut dev =
                DeviceTopology::with_capacity(&backend, tokens, top_k, experts, ffn, block)
                    .unwrap();
            let poison = |n: usize| DeviceTensor::filled(&backend, &[n], -7i32).unwrap();
            dev.row_indices = poison(dev.max_blocks);
            dev.column_indices = poison(dev.max_blocks);
            dev.offsets = poison(dev.max_block_rows + 1);
            dev.column_indices_t = poison(dev.max_blocks);
            dev.offsets_t = poison(dev.block_cols + 1);
            dev.block_offsets_t = poison(dev.max_blocks);
            build_into(&backend, &bins, &mut dev).unwrap();

            let nnz = host.num_blocks();
            let read = |t: &DeviceTensor<i32>| t.to_host(&backend).unwrap();
            assert_eq!(&read(&dev.row_indices)[..nnz], host.row_indices());
            assert_eq!(&read(&dev.column_indices)[..nnz], host.column_indices());
            assert_eq!(&read(&dev.column_indices_t)[..nnz], host.column_indices_t());
            assert_eq!(&read(&dev.block_offsets_t)[..nnz], host.block_offsets_t());
            assert_eq!(read(&dev.offsets_t), host.offsets_t());
            let offsets = read(&dev.offsets);
            let used = host.block_rows();
            assert_eq!(&offsets[..=used], host.offsets());
            assert!(offsets[used..].iter().all(|&o| o as usize == nnz));
            assert_eq!(dev.to_host(&backend).unwrap(), host);
        }
    }
}
