//! The decoder and the interpreter.
//!
//! CONTRACT (fixed; the driver shim is written against it):
//! - [`Program::from_ptx`] parses and decodes a whole module; any PTX form
//!   that is not implemented is a [`LoadError`] naming the instruction and
//!   its line.
//! - [`Program::kernel`] gives a kernel's launch facts ([`Kernel`]).
//! - [`launch`] runs one grid to completion, synchronously, against a
//!   [`DeviceMemory`], and returns its [`Profile`] or the first failed check
//!   as a [`LaunchError`].

mod alu;
mod collective;
mod cta;
mod decode;
mod global;
mod inst;
mod memops;
mod profile;
mod shared;
mod warp;

use std::fmt;

use crate::memory::DeviceMemory;
use crate::settings::Settings;

pub use profile::{Class, Profile};

/// Dynamic shared memory a kernel may use without `cuFuncSetAttribute`.
pub const DEFAULT_DYNAMIC_SHARED_LIMIT: u32 = 48 * 1024;
/// The most shared memory (static + dynamic) one CTA may use after opting in
/// (`CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN` of compute 8.0).
pub const MAX_SHARED_PER_BLOCK_OPTIN: u32 = 166_912;
/// The most threads in one CTA.
pub const MAX_THREADS_PER_BLOCK: u32 = 1024;

/// A PTX module that failed to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The 1-based PTX line (0 when the error is not about one line).
    pub line: u32,
    /// What is wrong, naming the instruction or directive.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PTX line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for LoadError {}

/// Where a kernel parameter lives in the parameter buffer that
/// [`launch`] takes (the bytes of each argument at its offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamLayout {
    /// Byte offset in the buffer (aligned to `align`).
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
    /// Alignment in bytes.
    pub align: usize,
}

/// The launch facts of one kernel (`.entry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    /// The kernel's name.
    pub name: String,
    /// Its parameters, in order.
    pub params: Vec<ParamLayout>,
    /// The size of the whole parameter buffer.
    pub param_bytes: usize,
    /// `.maxntid`, when declared.
    pub maxntid: Option<[u32; 3]>,
    /// `.reqntid`, when declared.
    pub reqntid: Option<[u32; 3]>,
    /// Bytes of static `.shared` memory the kernel uses.
    pub static_shared_bytes: u32,
}

/// One grid launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    /// CTAs per dimension.
    pub grid: [u32; 3],
    /// Threads per CTA per dimension.
    pub block: [u32; 3],
    /// Dynamic shared memory per CTA.
    pub dynamic_shared_bytes: u32,
    /// The function's dynamic shared memory limit
    /// (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`; the default is
    /// [`DEFAULT_DYNAMIC_SHARED_LIMIT`]).
    pub max_dynamic_shared_bytes: u32,
}

/// What kind of failure a [`LaunchError`] is (the shim maps it to a `CUresult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchErrorKind {
    /// The launch configuration is invalid (block size, shared memory,
    /// parameter buffer): the launch never started.
    InvalidConfig,
    /// An access outside every allocation or shared window.
    IllegalAddress,
    /// A misaligned access.
    Misaligned,
    /// A sanitizer check failed (race, uninitialised read, cp.async read
    /// before its wait, `.nc` aliasing, unconverged `.aligned` instruction).
    CheckFailed,
    /// Threads wait on each other forever.
    Deadlock,
    /// `trap`, or an instruction whose operands the ISA leaves undefined.
    Trap,
}

/// A launch that failed, with the report (kernel, CTA, thread, PTX line,
/// address) that is printed to stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchError {
    /// The kind of failure.
    pub kind: LaunchErrorKind,
    /// The report.
    pub report: String,
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.report)
    }
}

impl std::error::Error for LaunchError {}

/// A loaded module: every kernel decoded and ready to launch. `Send + Sync`:
/// one program is launched from many threads at once.
#[derive(Debug)]
pub struct Program {
    kernels: Vec<KernelInfo>,
    decoded: Vec<decode::DecodedKernel>,
}

// One program is launched from many threads at once.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Program>();
};

impl Program {
    /// Parses and decodes PTX text.
    pub fn from_ptx(text: &str) -> Result<Program, LoadError> {
        let decoded = decode::load(text)?;
        Ok(Program {
            kernels: decoded.iter().map(|k| k.info.clone()).collect(),
            decoded,
        })
    }

    /// The launch facts of kernel `name`.
    pub fn kernel(&self, name: &str) -> Option<&KernelInfo> {
        self.kernels.iter().find(|k| k.name == name)
    }

    /// Every kernel's launch facts, in module order.
    pub fn kernels(&self) -> &[KernelInfo] {
        &self.kernels
    }
}

fn invalid(report: String) -> LaunchError {
    LaunchError {
        kind: LaunchErrorKind::InvalidConfig,
        report: format!("dropless-emu: invalid launch: {report}"),
    }
}

/// Checks a launch configuration against the kernel and the device limits.
fn check_config(
    info: &KernelInfo,
    config: &LaunchConfig,
    params: &[u8],
) -> Result<(), LaunchError> {
    let name = &info.name;
    let [bx, by, bz] = config.block;
    let threads = bx as u64 * by as u64 * bz as u64;
    if threads == 0 || threads > MAX_THREADS_PER_BLOCK as u64 || bz > 64 {
        return Err(invalid(format!(
            "kernel {name}: block ({bx}, {by}, {bz}) must have 1 to {MAX_THREADS_PER_BLOCK} threads (z at most 64)"
        )));
    }
    let [gx, gy, gz] = config.grid;
    if gx == 0 || gy == 0 || gz == 0 || gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
        return Err(invalid(format!(
            "kernel {name}: grid ({gx}, {gy}, {gz}) must be nonzero (x < 2^31, y and z at most 65535)"
        )));
    }
    if let Some(m) = info.maxntid {
        let max = m[0] as u64 * m[1] as u64 * m[2] as u64;
        if threads > max {
            return Err(invalid(format!(
                "kernel {name}: block of {threads} threads is above its .maxntid {}, {}, {} ({max} threads)",
                m[0], m[1], m[2]
            )));
        }
    }
    if let Some(r) = info.reqntid {
        if r != config.block {
            return Err(invalid(format!(
                "kernel {name}: block ({bx}, {by}, {bz}) differs from its .reqntid {}, {}, {}",
                r[0], r[1], r[2]
            )));
        }
    }
    let dynamic = config.dynamic_shared_bytes;
    if dynamic > config.max_dynamic_shared_bytes {
        return Err(invalid(format!(
            "kernel {name}: {dynamic} bytes of dynamic shared memory are above the function's limit of {} (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)",
            config.max_dynamic_shared_bytes
        )));
    }
    let total = info.static_shared_bytes as u64 + dynamic as u64;
    if total > MAX_SHARED_PER_BLOCK_OPTIN as u64 {
        return Err(invalid(format!(
            "kernel {name}: {} static + {dynamic} dynamic bytes of shared memory are above the {MAX_SHARED_PER_BLOCK_OPTIN}-byte limit per CTA",
            info.static_shared_bytes
        )));
    }
    if params.len() != info.param_bytes {
        return Err(invalid(format!(
            "kernel {name}: the parameter buffer has {} bytes, the kernel's parameters take {}",
            params.len(),
            info.param_bytes
        )));
    }
    Ok(())
}

/// Runs kernel `kernel` of `program` over the grid to completion.
/// `params` is the parameter buffer laid out per [`KernelInfo::params`].
pub fn launch(
    program: &Program,
    kernel: &str,
    config: &LaunchConfig,
    params: &[u8],
    memory: &DeviceMemory,
    settings: &Settings,
) -> Result<Profile, LaunchError> {
    let Some(k) = program.decoded.iter().find(|k| k.info.name == kernel) else {
        return Err(invalid(format!("no kernel named {kernel} in this module")));
    };
    check_config(&k.info, config, params)?;
    let view = memory.view();
    let window = if config.dynamic_shared_bytes > 0 {
        k.dynamic_shared_offset as usize + config.dynamic_shared_bytes as usize
    } else {
        k.info.static_shared_bytes as usize
    };
    let mut cx = cta::Cx {
        k,
        params,
        global: global::GlobalMem::new(&view, k.code.len(), settings.checks),
        shared: shared::SharedMem::new(window, settings.checks),
        checks: settings.checks,
        profile: settings.profile.then(Profile::default),
        clock: 0,
        cta: [0; 3],
        bar_gen: 0,
        barrier_dirty: false,
        arrivals: [0; 16],
        block: config.block,
    };
    let [gx, gy, gz] = config.grid;
    let ctas = gx as u64 * gy as u64 * gz as u64;
    let mut rng = settings.seed.map(cta::SplitMix);
    let order = rng.as_mut().map_or(cta::CtaOrder::linear(ctas), |r| {
        cta::CtaOrder::shuffled(ctas, r)
    });
    let threads = config.block.iter().product::<u32>();
    let nwarps = threads.div_ceil(32) as usize;
    let mut warps: Vec<warp::Warp> = (0..nwarps)
        .map(|w| warp::Warp::new(k, w, config.block))
        .collect();
    for lin in (0..ctas).map(|i| order.at(i)) {
        let id = [
            (lin % gx as u64) as u32,
            ((lin / gx as u64) % gy as u64) as u32,
            (lin / (gx as u64 * gy as u64)) as u32,
        ];
        cx.cta = id;
        cx.bar_gen = 0;
        cx.arrivals = [0; 16];
        cx.shared.reset(window);
        for w in &mut warps {
            w.start(k, config.block, config.grid, id);
        }
        cta::run_cta(&mut cx, &mut warps, &mut rng)?;
        if let Some(p) = cx.profile.as_mut() {
            p.ctas += 1;
        }
    }
    Ok(cx.profile.unwrap_or_default())
}
