//! Modules and functions: `cuModuleLoadData` (the PTX of a fatbin, decoded
//! by the interpreter), `cuModuleGetFunction` and the function attributes.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::failure::{guard, put, Failure};
use super::state::{driver, lock, Function, Module, Object};
use super::status::{
    CUresult, CUDA_ERROR_INVALID_IMAGE, CUDA_ERROR_INVALID_PTX, CUDA_ERROR_INVALID_VALUE,
    CUDA_ERROR_NOT_FOUND, CUDA_ERROR_NO_BINARY_FOR_GPU,
};
use super::{CUfunction, CUmodule};
use crate::exec::{Program, MAX_SHARED_PER_BLOCK_OPTIN, MAX_THREADS_PER_BLOCK};
use crate::fatbin::{image_at, ptx_from_image, ImageError, DEVICE_ARCH};

/// `CU_FUNC_ATTRIBUTE_*` numbers.
mod attr {
    pub const MAX_THREADS_PER_BLOCK: i32 = 0;
    pub const SHARED_SIZE_BYTES: i32 = 1;
    pub const CONST_SIZE_BYTES: i32 = 2;
    pub const LOCAL_SIZE_BYTES: i32 = 3;
    pub const NUM_REGS: i32 = 4;
    pub const PTX_VERSION: i32 = 5;
    pub const BINARY_VERSION: i32 = 6;
    pub const CACHE_MODE_CA: i32 = 7;
    pub const MAX_DYNAMIC_SHARED_SIZE_BYTES: i32 = 8;
    pub const PREFERRED_SHARED_MEMORY_CARVEOUT: i32 = 9;
    /// `CU_FUNC_ATTRIBUTE_MAX`: attributes are `0..END`.
    pub const END: i32 = 18;
}

/// The `CUresult` of an image the emulator cannot take PTX from.
fn image_failure(e: &ImageError) -> CUresult {
    match e {
        ImageError::SassOnly { .. } | ImageError::NoPtxForDevice { .. } => {
            CUDA_ERROR_NO_BINARY_FOR_GPU
        }
        ImageError::Null => CUDA_ERROR_INVALID_VALUE,
        _ => CUDA_ERROR_INVALID_IMAGE,
    }
}

/// `cuModuleLoadData`: loads a fatbin, a fatbin wrapper or PTX text into
/// the current context. The PTX is parsed and decoded now; any form the
/// emulator does not implement is an error naming its PTX line.
///
/// # Safety
///
/// `image` must be null or point to a whole image (see
/// [`crate::fatbin::image_at`]); `module` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut CUmodule, image: *const c_void) -> CUresult {
    guard("cuModuleLoadData", || {
        let driver = driver()?;
        let ctx = driver.current()?;
        if module.is_null() {
            return Err(Failure::new(
                CUDA_ERROR_INVALID_VALUE,
                "module is a null pointer",
            ));
        }
        // SAFETY: per this function's contract.
        let bytes = unsafe { image_at(image.cast()) }
            .map_err(|e| Failure::new(image_failure(&e), e.to_string()))?;
        let ptx =
            ptx_from_image(bytes).map_err(|e| Failure::new(image_failure(&e), e.to_string()))?;
        let program = Program::from_ptx(&ptx).map_err(|e| {
            Failure::new(
                CUDA_ERROR_INVALID_PTX,
                format!("the module's PTX (compute_{DEVICE_ARCH}) does not load: {e}"),
            )
        })?;
        let loaded = Module {
            ordinal: ctx.ordinal,
            program: Arc::new(program),
            functions: Mutex::new(HashMap::new()),
        };
        let handle = driver.insert(Object::Module(Arc::new(loaded)));
        // SAFETY: non-null, valid per this function's contract.
        unsafe { put(module, handle as CUmodule, "module") }
    })
}

/// `cuModuleUnload`: the module's function handles become invalid (a launch
/// already running keeps its module alive).
///
/// # Safety
///
/// Takes a handle, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(module: CUmodule) -> CUresult {
    guard("cuModuleUnload", || {
        driver()?.remove_module(module as usize)
    })
}

/// `cuModuleGetFunction`: the kernel (`.entry`) `name` of the module; the
/// same handle for the same name.
///
/// # Safety
///
/// `name` must be null or a NUL-terminated string; `out` must be null or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    out: *mut CUfunction,
    module: CUmodule,
    name: *const c_char,
) -> CUresult {
    guard("cuModuleGetFunction", || {
        let driver = driver()?;
        let loaded = driver.module(module as usize)?;
        if name.is_null() || out.is_null() {
            return Err(Failure::new(
                CUDA_ERROR_INVALID_VALUE,
                "name or hfunc is a null pointer",
            ));
        }
        // SAFETY: a NUL-terminated string per this function's contract.
        let name = unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned();
        let mut functions = lock(&loaded.functions);
        let handle = match functions.get(&name) {
            Some(&h) => h,
            None => {
                let info = loaded.program.kernel(&name).cloned().ok_or_else(|| {
                    Failure::new(
                        CUDA_ERROR_NOT_FOUND,
                        format!("the module has no kernel (.entry) named {name:?}"),
                    )
                })?;
                let function = Function::new(loaded.clone(), info);
                let h = driver.insert(Object::Function(Arc::new(function)));
                functions.insert(name, h);
                h
            }
        };
        // SAFETY: non-null, valid per this function's contract.
        unsafe { put(out, handle as CUfunction, "hfunc") }
    })
}

/// The most threads a CTA of `function` may have.
pub fn max_threads(function: &Function) -> u32 {
    let product = |d: [u32; 3]| d.iter().map(|&x| u64::from(x)).product::<u64>();
    let bound = function
        .info
        .reqntid
        .or(function.info.maxntid)
        .map_or(u64::from(MAX_THREADS_PER_BLOCK), product);
    bound.min(u64::from(MAX_THREADS_PER_BLOCK)) as u32
}

/// `cuFuncGetAttribute`. The emulator has no registers or local memory to
/// count: `NUM_REGS` is 32 and `LOCAL_SIZE_BYTES` 0.
///
/// # Safety
///
/// `value` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(
    value: *mut c_int,
    attribute: c_int,
    function: CUfunction,
) -> CUresult {
    guard("cuFuncGetAttribute", || {
        let f = driver()?.function(function as usize)?;
        let v = match attribute {
            attr::MAX_THREADS_PER_BLOCK => max_threads(&f) as c_int,
            attr::SHARED_SIZE_BYTES => f.info.static_shared_bytes as c_int,
            attr::CONST_SIZE_BYTES | attr::LOCAL_SIZE_BYTES | attr::CACHE_MODE_CA => 0,
            attr::NUM_REGS => 32,
            attr::PTX_VERSION | attr::BINARY_VERSION => DEVICE_ARCH as c_int,
            attr::MAX_DYNAMIC_SHARED_SIZE_BYTES => {
                f.max_dynamic_shared.load(Ordering::Relaxed) as c_int
            }
            attr::PREFERRED_SHARED_MEMORY_CARVEOUT => f.carveout.load(Ordering::Relaxed),
            a if (0..attr::END).contains(&a) => 0,
            a => {
                return Err(Failure::new(
                    CUDA_ERROR_INVALID_VALUE,
                    format!("{a} is not a function attribute"),
                ))
            }
        };
        // SAFETY: per this function's contract.
        unsafe { put(value, v, "pi") }
    })
}

/// `cuFuncSetAttribute`: `MAX_DYNAMIC_SHARED_SIZE_BYTES` (up to the opt-in
/// limit less the kernel's static shared memory) and
/// `PREFERRED_SHARED_MEMORY_CARVEOUT` (-1 to 100); the others are read-only.
///
/// # Safety
///
/// Takes a handle, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cuFuncSetAttribute(
    function: CUfunction,
    attribute: c_int,
    value: c_int,
) -> CUresult {
    guard("cuFuncSetAttribute", || {
        let f = driver()?.function(function as usize)?;
        match attribute {
            attr::MAX_DYNAMIC_SHARED_SIZE_BYTES => {
                let limit = MAX_SHARED_PER_BLOCK_OPTIN.saturating_sub(f.info.static_shared_bytes);
                let v = u32::try_from(value)
                    .ok()
                    .filter(|&v| v <= limit)
                    .ok_or_else(|| {
                        Failure::new(
                            CUDA_ERROR_INVALID_VALUE,
                            format!(
                            "{}: {value} bytes of dynamic shared memory asked, at most {limit} \
                             ({MAX_SHARED_PER_BLOCK_OPTIN} opt-in less {} static)",
                            f.info.name, f.info.static_shared_bytes
                        ),
                        )
                    })?;
                f.max_dynamic_shared.store(v, Ordering::Relaxed);
                Ok(())
            }
            attr::PREFERRED_SHARED_MEMORY_CARVEOUT if (-1..=100).contains(&value) => {
                f.carveout.store(value, Ordering::Relaxed);
                Ok(())
            }
            a => Err(Failure::new(
                CUDA_ERROR_INVALID_VALUE,
                format!("function attribute {a} = {value} cannot be set"),
            )),
        }
    })
}

/// `cuFuncSetCacheConfig`: accepted; the emulator has no L1 to divide.
///
/// # Safety
///
/// Takes a handle, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cuFuncSetCacheConfig(function: CUfunction, config: c_int) -> CUresult {
    guard("cuFuncSetCacheConfig", || {
        driver()?.function(function as usize)?;
        if (0..=3).contains(&config) {
            Ok(())
        } else {
            Err(Failure::new(
                CUDA_ERROR_INVALID_VALUE,
                format!("cache config {config} is not a CUfunc_cache value"),
            ))
        }
    })
}
