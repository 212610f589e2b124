//! `cuLaunchKernel`: the parameter buffer from `kernelParams` (or a packed
//! `extra` buffer), the launch limits of the function, and the interpreter
//! run to completion. A launch that fails while running is reported on
//! stderr, returned, and left pending on its stream; a configuration that
//! is refused before the launch starts is only returned, as the driver does.

use std::ffi::{c_uint, c_void};
use std::sync::atomic::Ordering;

use super::failure::{guard, report, Failure, Outcome};
use super::module::max_threads;
use super::state::{driver, Function};
use super::status::name as name_of;
use super::status::{
    CUresult, CUDA_ERROR_ILLEGAL_ADDRESS, CUDA_ERROR_ILLEGAL_INSTRUCTION,
    CUDA_ERROR_INVALID_CONTEXT, CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_LAUNCH_FAILED,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, CUDA_ERROR_LAUNCH_TIMEOUT, CUDA_ERROR_MISALIGNED_ADDRESS,
    CUDA_ERROR_NOT_SUPPORTED,
};
use super::{CUfunction, CUstream};
use crate::exec::{launch, LaunchConfig, LaunchErrorKind};
use crate::settings::Settings;

/// `CU_LAUNCH_PARAM_END`, `CU_LAUNCH_PARAM_BUFFER_POINTER`,
/// `CU_LAUNCH_PARAM_BUFFER_SIZE` (the markers of `extra`).
const PARAM_END: usize = 0;
const PARAM_BUFFER_POINTER: usize = 1;
const PARAM_BUFFER_SIZE: usize = 2;

/// The `CUresult` of a failed launch.
pub fn launch_code(kind: LaunchErrorKind) -> CUresult {
    match kind {
        LaunchErrorKind::InvalidConfig => CUDA_ERROR_INVALID_VALUE,
        LaunchErrorKind::IllegalAddress => CUDA_ERROR_ILLEGAL_ADDRESS,
        LaunchErrorKind::Misaligned => CUDA_ERROR_MISALIGNED_ADDRESS,
        LaunchErrorKind::CheckFailed => CUDA_ERROR_LAUNCH_FAILED,
        LaunchErrorKind::Deadlock => CUDA_ERROR_LAUNCH_TIMEOUT,
        LaunchErrorKind::Trap => CUDA_ERROR_ILLEGAL_INSTRUCTION,
    }
}

fn invalid(message: String) -> Failure {
    Failure::new(CUDA_ERROR_INVALID_VALUE, message)
}

/// The parameter buffer of `function` from `kernelParams` (one pointer to
/// each argument's bytes) or from `extra` (a whole buffer).
///
/// # Safety
///
/// `params` must be null or hold one readable pointer per kernel parameter,
/// each to that parameter's bytes; `extra` must be null or a
/// `CU_LAUNCH_PARAM_END`-terminated list of (marker, pointer) pairs.
unsafe fn parameter_buffer(
    function: &Function,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Outcome<Vec<u8>> {
    let info = &function.info;
    let mut buffer = vec![0u8; info.param_bytes];
    // SAFETY: `extra` is null or END-terminated per the caller's contract.
    let packed = unsafe { packed_buffer(extra)? };
    match (params.is_null(), packed) {
        (false, Some(_)) => Err(invalid(
            "kernelParams and an extra buffer are both given".into(),
        )),
        (true, Some((ptr, size))) => {
            if size != info.param_bytes {
                return Err(invalid(format!(
                    "{}: the extra buffer holds {size} bytes, the kernel's parameters {}",
                    info.name, info.param_bytes
                )));
            }
            if size > 0 {
                // SAFETY: the buffer pointer of `extra` holds `size` bytes per
                // the caller's contract.
                let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), size) };
                buffer.copy_from_slice(bytes);
            }
            Ok(buffer)
        }
        (true, None) if info.params.is_empty() => Ok(buffer),
        (true, None) => Err(invalid(format!(
            "{}: kernelParams is null but the kernel takes {} parameters",
            info.name,
            info.params.len()
        ))),
        (false, None) => {
            for (i, p) in info.params.iter().enumerate() {
                // SAFETY: `params` holds one pointer per parameter.
                let arg = unsafe { *params.add(i) };
                if arg.is_null() {
                    return Err(invalid(format!(
                        "{}: kernelParams[{i}] is a null pointer",
                        info.name
                    )));
                }
                let slot = buffer.get_mut(p.offset..p.offset + p.size).ok_or_else(|| {
                    invalid(format!(
                        "{}: parameter {i} lies outside the buffer",
                        info.name
                    ))
                })?;
                // SAFETY: argument `i` points to its parameter's `size` bytes.
                slot.copy_from_slice(unsafe {
                    std::slice::from_raw_parts(arg.cast::<u8>(), p.size)
                });
            }
            Ok(buffer)
        }
    }
}

/// The (pointer, size) buffer that `extra` passes, if any.
///
/// # Safety
///
/// `extra` must be null or an END-terminated list of (marker, pointer) pairs.
unsafe fn packed_buffer(extra: *mut *mut c_void) -> Outcome<Option<(*const c_void, usize)>> {
    if extra.is_null() {
        return Ok(None);
    }
    let (mut pointer, mut size) = (None, None);
    for i in (0..).step_by(2) {
        // SAFETY: the list is END-terminated; a marker other than END is
        // followed by its value.
        let marker = unsafe { *extra.add(i) } as usize;
        if marker == PARAM_END {
            break;
        }
        // SAFETY: as above.
        let value = unsafe { *extra.add(i + 1) };
        match marker {
            PARAM_BUFFER_POINTER => pointer = Some(value.cast_const()),
            PARAM_BUFFER_SIZE if !value.is_null() => {
                // SAFETY: the value of BUFFER_SIZE points to a size_t.
                size = Some(unsafe { *value.cast::<usize>() });
            }
            m => {
                return Err(Failure::new(
                    CUDA_ERROR_NOT_SUPPORTED,
                    format!("extra launch option {m:#x} (value {value:?}) is not emulated"),
                ))
            }
        }
    }
    match (pointer, size) {
        (None, None) => Ok(None),
        (Some(p), Some(s)) if !p.is_null() || s == 0 => Ok(Some((p, s))),
        _ => Err(invalid(
            "extra needs both CU_LAUNCH_PARAM_BUFFER_POINTER (non-null) and \
             CU_LAUNCH_PARAM_BUFFER_SIZE"
                .into(),
        )),
    }
}

/// Checks the CTA shape against the kernel's declared limits and the
/// dynamic shared memory against the function's attribute.
fn check_limits(function: &Function, config: &LaunchConfig) -> Outcome {
    let info = &function.info;
    if config.grid.contains(&0) || config.block.contains(&0) {
        return Err(invalid(format!(
            "{}: grid {:?} and block {:?} must have no zero dimension",
            info.name, config.grid, config.block
        )));
    }
    if let Some(req) = info.reqntid {
        if req != config.block {
            return Err(invalid(format!(
                "{}: block {:?} launched, the kernel requires .reqntid {req:?}",
                info.name, config.block
            )));
        }
    }
    let threads: u64 = config.block.iter().map(|&d| u64::from(d)).product();
    let most = max_threads(function);
    if threads > u64::from(most) {
        return Err(Failure::new(
            CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
            format!(
                "{}: {threads} threads per CTA launched, the kernel allows {most}",
                info.name
            ),
        ));
    }
    if config.dynamic_shared_bytes > config.max_dynamic_shared_bytes {
        return Err(invalid(format!(
            "{}: {} bytes of dynamic shared memory launched, the function allows {} \
             (cuFuncSetAttribute CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES raises it)",
            info.name, config.dynamic_shared_bytes, config.max_dynamic_shared_bytes
        )));
    }
    Ok(())
}

/// `cuLaunchKernel`: runs the grid to completion before returning.
///
/// # Safety
///
/// `params` must be null or hold one pointer per kernel parameter, each to
/// that parameter's bytes; `extra` must be null or an END-terminated list.
#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: CUfunction,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    shared_mem_bytes: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    guard("cuLaunchKernel", || {
        let driver = driver()?;
        let function = driver.function(f as usize)?;
        let stream = driver.stream(stream as usize)?;
        let ordinal = function.module.ordinal;
        if stream.ordinal != ordinal {
            return Err(Failure::new(
                CUDA_ERROR_INVALID_CONTEXT,
                format!(
                    "{}: the stream belongs to device {}, the function to device {ordinal}",
                    function.info.name, stream.ordinal
                ),
            ));
        }
        let config = LaunchConfig {
            grid: [grid_x, grid_y, grid_z],
            block: [block_x, block_y, block_z],
            dynamic_shared_bytes: shared_mem_bytes,
            max_dynamic_shared_bytes: function.max_dynamic_shared.load(Ordering::Relaxed),
        };
        check_limits(&function, &config)?;
        // SAFETY: per this function's contract.
        let buffer = unsafe { parameter_buffer(&function, params, extra)? };
        let memory = &driver.device(ordinal as i32)?.memory;
        let settings = Settings::global();
        let name = &function.info.name;
        let shape = format!("grid {:?} block {:?}", config.grid, config.block);
        match launch(
            &function.module.program,
            name,
            &config,
            &buffer,
            memory,
            settings,
        ) {
            Ok(profile) => {
                if settings.profile {
                    report("profile", &format!("{name} ({shape}): {profile}"));
                }
                Ok(())
            }
            Err(e) => {
                let code = launch_code(e.kind);
                // A launch that never started is refused at once, as the
                // driver does; one that failed while running stays pending.
                if e.kind != LaunchErrorKind::InvalidConfig {
                    stream.fail(code);
                }
                let code_name = name_of(code)
                    .map_or_else(|| code.to_string(), |n| n.to_string_lossy().into_owned());
                Err(Failure::new(
                    code,
                    format!("{name} ({shape}) failed with {code_name}:\n{}", e.report),
                ))
            }
        }
    })
}
