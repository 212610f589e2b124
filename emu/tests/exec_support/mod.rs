//! Helpers shared by the interpreter tests: a device, buffers, and launches
//! of hand-written PTX.

#![allow(dead_code)]

use dropless_emu::exec::{launch, LaunchConfig, LaunchError, LaunchErrorKind, Profile, Program};
use dropless_emu::memory::DeviceMemory;
use dropless_emu::settings::Settings;

/// The module header every test kernel gets.
pub fn module(body: &str) -> String {
    format!(".version 8.0\n.target sm_80\n.address_size 64\n\n{body}")
}

/// A kernel argument.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A 64-bit value (pointers).
    U64(u64),
    /// A 32-bit value.
    U32(u32),
}

/// A device with helpers.
pub struct Gpu {
    /// Its memory.
    pub mem: DeviceMemory,
}

impl Default for Gpu {
    fn default() -> Self {
        Gpu {
            mem: DeviceMemory::new(64 << 20),
        }
    }
}

impl Gpu {
    /// A buffer holding `data`.
    pub fn u32s(&self, data: &[u32]) -> u64 {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.bytes(&bytes)
    }

    /// A buffer holding `data`.
    pub fn bytes(&self, data: &[u8]) -> u64 {
        let a = self.mem.alloc(data.len().max(1) as u64).unwrap();
        self.mem.write(a, data).unwrap();
        a
    }

    /// `n` zeroed 32-bit words.
    pub fn zeros(&self, n: usize) -> u64 {
        self.u32s(&vec![0; n])
    }

    /// Reads `n` 32-bit words.
    pub fn read_u32(&self, addr: u64, n: usize) -> Vec<u32> {
        let mut b = vec![0u8; n * 4];
        self.mem.read_into(addr, &mut b).unwrap();
        b.chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Reads `n` bytes.
    pub fn read_bytes(&self, addr: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.mem.read_into(addr, &mut b).unwrap();
        b
    }

    /// Loads `ptx` (a module body) and launches `kernel` on a 1-D grid.
    pub fn run(
        &self,
        ptx: &str,
        kernel: &str,
        grid: u32,
        block: u32,
        args: &[Arg],
    ) -> Result<Profile, LaunchError> {
        self.run_with(
            ptx,
            kernel,
            [grid, 1, 1],
            [block, 1, 1],
            0,
            args,
            &Settings::default(),
        )
    }

    /// The general form of [`Gpu::run`].
    #[allow(clippy::too_many_arguments)]
    pub fn run_with(
        &self,
        ptx: &str,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        dynamic_shared: u32,
        args: &[Arg],
        settings: &Settings,
    ) -> Result<Profile, LaunchError> {
        let program = Program::from_ptx(&module(ptx)).unwrap_or_else(|e| panic!("load: {e}"));
        let info = program.kernel(kernel).expect("kernel").clone();
        let mut params = vec![0u8; info.param_bytes];
        for (p, a) in info.params.iter().zip(args) {
            match *a {
                Arg::U64(v) => params[p.offset..p.offset + 8].copy_from_slice(&v.to_le_bytes()),
                Arg::U32(v) => params[p.offset..p.offset + 4].copy_from_slice(&v.to_le_bytes()),
            }
        }
        let config = LaunchConfig {
            grid,
            block,
            dynamic_shared_bytes: dynamic_shared,
            max_dynamic_shared_bytes: dropless_emu::exec::DEFAULT_DYNAMIC_SHARED_LIMIT,
        };
        launch(&program, kernel, &config, &params, &self.mem, settings)
    }
}

/// Seeds the scheduler tests run under (None: the fixed order).
pub const SEEDS: [Option<u64>; 4] = [None, Some(1), Some(7), Some(12345)];

/// Settings with `seed`.
pub fn seeded(seed: Option<u64>) -> Settings {
    Settings {
        seed,
        ..Settings::default()
    }
}

/// Asserts that `r` failed with `kind` and its report mentions every one of `words`.
pub fn expect_error(r: Result<Profile, LaunchError>, kind: LaunchErrorKind, words: &[&str]) {
    match r {
        Ok(_) => panic!("expected a {kind:?} error, the launch succeeded"),
        Err(e) => {
            assert_eq!(e.kind, kind, "report: {}", e.report);
            for w in words {
                assert!(e.report.contains(w), "report lacks {w:?}:\n{}", e.report);
            }
        }
    }
}
