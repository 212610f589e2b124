//! The device handle: a CUDA context and stream, created through one entry
//! point that never panics, and a cache of loaded kernel modules.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use super::kernels::KernelModule;
use crate::error::{Error, Result};

/// A CUDA device with its stream. Ops on one backend run in stream order.
#[derive(Debug)]
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
    blas: Mutex<Option<Arc<CudaBlas>>>,
}

/// The error of a cache whose lock a panicking thread left poisoned.
fn poisoned() -> Error {
    Error::Cuda("the kernel cache lock was poisoned".into())
}

impl CudaBackend {
    /// Opens device 0. See [`CudaBackend::try_new_on`].
    pub fn try_new() -> Result<Self> {
        Self::try_new_on(0)
    }

    /// Opens device `ordinal`. Returns [`Error::NoCudaDriver`] when libcuda
    /// cannot be loaded and [`Error::NoDevice`] when the driver reports no such
    /// device; never panics, whatever the machine has.
    pub fn try_new_on(ordinal: usize) -> Result<Self> {
        // SAFETY: `is_culib_present` only tries to dlopen the driver library;
        // it must run before any other driver call, which would panic (dynamic
        // loading) if the library were missing.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::NoCudaDriver);
        }
        let count = CudaContext::device_count()
            .map_err(|e| Error::NoDevice(format!("the driver could not count devices: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::NoDevice(format!(
                "device {ordinal} requested, the driver reports {count}"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::NoDevice(format!("could not open device {ordinal}: {e}")))?;
        // SAFETY: every buffer this backend allocates is allocated, used and
        // freed (stream-ordered) on its one stream, so cudarc's cross-stream
        // event tracking (two event records per kernel argument) is not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        Ok(CudaBackend {
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            blas: Mutex::new(None),
        })
    }

    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every op of this backend is launched on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// `(free, total)` bytes of device memory, from the driver (for sizing a
    /// run before allocating it).
    pub fn memory_info(&self) -> Result<(u64, u64)> {
        let (free, total) = self.ctx.mem_get_info()?;
        Ok((free as u64, total as u64))
    }

    /// Waits for all work queued on the stream (for tests, benches and reads).
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize()?;
        Ok(())
    }

    /// Runs `f` `iters` times on the stream and returns the mean GPU time of
    /// one run in milliseconds, measured with CUDA events (waits for the end).
    pub fn time_ms(&self, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.stream.record_event(timing)?;
        for _ in 0..iters {
            f()?;
        }
        let end = self.stream.record_event(timing)?;
        Ok(f64::from(start.elapsed_ms(&end)?) / iters.max(1) as f64)
    }

    /// The cuBLAS handle on this backend's stream, created on first use.
    /// Returns [`Error::Cublas`] when libcublas cannot be loaded.
    pub(crate) fn blas(&self) -> Result<Arc<CudaBlas>> {
        let mut blas = self
            .blas
            .lock()
            .map_err(|_| Error::Cublas("the cuBLAS handle lock was poisoned".into()))?;
        if let Some(b) = blas.as_ref() {
            return Ok(b.clone());
        }
        // SAFETY: only tries to dlopen libcublas; it must run before any other
        // cuBLAS call, which would panic (dynamic loading) if it were missing.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::Cublas(
                "libcublas could not be loaded: install the CUDA toolkit's cuBLAS".into(),
            ));
        }
        let b = Arc::new(CudaBlas::new(self.stream.clone())?);
        *blas = Some(b.clone());
        Ok(b)
    }

    /// Looks up kernel `name` in `module`, loading the module once and
    /// caching the function, so a launch costs one map lookup. A function of
    /// a module with [`KernelModule::max_dynamic_shared_bytes`] gets that
    /// limit when it is loaded (once, with the context bound).
    pub(crate) fn function(&self, module: KernelModule, name: &str) -> Result<CudaFunction> {
        let fatbin = module.fatbin.ok_or(Error::KernelsNotBuilt)?;
        let key = (module.name, name.to_string());
        if let Some(f) = self.functions.lock().map_err(|_| poisoned())?.get(&key) {
            return Ok(f.clone());
        }
        let loaded = {
            let mut modules = self.modules.lock().map_err(|_| poisoned())?;
            match modules.get(module.name) {
                Some(m) => m.clone(),
                None => {
                    let m = self.ctx.load_module(Ptx::from_binary(fatbin.to_vec()))?;
                    modules.insert(module.name, m.clone());
                    m
                }
            }
        };
        let f = loaded.load_function(name)?;
        if module.max_dynamic_shared_bytes > 0 {
            self.ctx.bind_to_thread()?;
            let bytes = i32::try_from(module.max_dynamic_shared_bytes).map_err(|_| {
                Error::Cuda(format!(
                    "module {} asks for {} bytes of dynamic shared memory",
                    module.name, module.max_dynamic_shared_bytes
                ))
            })?;
            f.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes,
            )?;
        }
        self.functions
            .lock()
            .map_err(|_| poisoned())?
            .insert(key, f.clone());
        Ok(f)
    }
}
