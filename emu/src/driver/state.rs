//! The driver's state: the emulated devices with their primary contexts, the
//! objects behind every handle (streams, events, modules, functions), each
//! thread's current context, and the launch failures pending on streams.
//!
//! Handles are opaque numbers, never dereferenced: a null, destroyed or
//! foreign handle is looked up, not followed, so it is an error and not a
//! crash. Work runs synchronously when it is submitted, so a stream is an
//! ordering no-op except for the failures pending on it.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

use super::failure::{Failure, Outcome};
use super::status::{
    CUresult, CUDA_ERROR_INVALID_CONTEXT, CUDA_ERROR_INVALID_DEVICE, CUDA_ERROR_INVALID_HANDLE,
    CUDA_ERROR_NOT_INITIALIZED,
};
use crate::exec::{KernelInfo, Program, DEFAULT_DYNAMIC_SHARED_LIMIT};
use crate::memory::DeviceMemory;
use crate::settings::Settings;

/// Locks `m`, ignoring poison: every critical section here leaves its data
/// consistent (single assignments and map updates).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The stream handles that name a context's default stream: null, the
/// legacy stream (`CU_STREAM_LEGACY`) and the per-thread stream
/// (`CU_STREAM_PER_THREAD`).
pub const DEFAULT_STREAM_HANDLES: [usize; 3] = [0, 1, 2];

/// A launch failure not yet returned by a synchronisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Which failure (a stream that waited on another's event shares it).
    pub id: u64,
    /// Its `CUresult`.
    pub code: CUresult,
}

/// A stream of one context.
#[derive(Debug)]
pub struct Stream {
    /// The device (and so the context) it belongs to.
    pub ordinal: usize,
    pending: Mutex<Option<Pending>>,
}

impl Stream {
    fn new(ordinal: usize) -> Self {
        Stream {
            ordinal,
            pending: Mutex::new(None),
        }
    }

    /// Leaves `code` pending, unless an earlier failure already is (the first
    /// failure is the one a synchronisation returns).
    pub fn fail(&self, code: CUresult) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let mut pending = lock(&self.pending);
        if pending.is_none() {
            *pending = Some(Pending {
                id: NEXT.fetch_add(1, Ordering::Relaxed),
                code,
            });
        }
    }

    /// Adopts `failure` (from an event this stream waits on) unless a
    /// failure is already pending.
    pub fn inherit(&self, failure: Pending) {
        lock(&self.pending).get_or_insert(failure);
    }

    /// The pending failure, left pending.
    pub fn peek(&self) -> Option<Pending> {
        *lock(&self.pending)
    }

    /// The pending failure, cleared.
    pub fn take(&self) -> Option<Pending> {
        lock(&self.pending).take()
    }

    /// Clears the pending failure if it is failure `id`.
    pub fn clear(&self, id: u64) {
        let mut pending = lock(&self.pending);
        if pending.is_some_and(|p| p.id == id) {
            *pending = None;
        }
    }
}

/// The primary context of one device, with the device's memory.
#[derive(Debug)]
pub struct Context {
    /// The context's handle.
    pub handle: usize,
    /// The device ordinal.
    pub ordinal: usize,
    /// The device's memory.
    pub memory: DeviceMemory,
    /// The default (null) stream.
    pub default_stream: Arc<Stream>,
    refs: Mutex<u32>,
}

impl Context {
    /// Adds a reference (`cuDevicePrimaryCtxRetain`).
    pub fn retain(&self) {
        *lock(&self.refs) += 1;
    }

    /// Drops a reference (`cuDevicePrimaryCtxRelease`); false when none is held.
    pub fn release(&self) -> bool {
        let mut refs = lock(&self.refs);
        let held = *refs > 0;
        *refs = refs.saturating_sub(1);
        held
    }

    /// Whether any reference is held.
    pub fn active(&self) -> bool {
        *lock(&self.refs) > 0
    }
}

/// A recorded event: when, and the failure pending on its stream then.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The wall-clock time of the record.
    pub at: Instant,
    /// The failure pending on the stream at the record, with the stream.
    pub pending: Option<(Pending, Weak<Stream>)>,
}

/// An event.
#[derive(Debug)]
pub struct Event {
    /// The device it belongs to.
    pub ordinal: usize,
    /// Whether it records time (not `CU_EVENT_DISABLE_TIMING`).
    pub timing: bool,
    /// The last record, if any.
    pub recorded: Mutex<Option<Recorded>>,
}

/// A loaded module.
#[derive(Debug)]
pub struct Module {
    /// The device it was loaded on.
    pub ordinal: usize,
    /// The decoded PTX.
    pub program: Arc<Program>,
    /// The function handle of each kernel looked up so far.
    pub functions: Mutex<HashMap<String, usize>>,
}

/// A kernel of a loaded module.
#[derive(Debug)]
pub struct Function {
    /// Its module (kept alive while a launch runs, even if unloaded).
    pub module: Arc<Module>,
    /// Its launch facts.
    pub info: KernelInfo,
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
    pub max_dynamic_shared: AtomicU32,
    /// `CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT` (-1: no preference).
    pub carveout: AtomicI32,
}

impl Function {
    /// A function with the default attributes.
    pub fn new(module: Arc<Module>, info: KernelInfo) -> Self {
        Function {
            module,
            info,
            max_dynamic_shared: AtomicU32::new(DEFAULT_DYNAMIC_SHARED_LIMIT),
            carveout: AtomicI32::new(-1),
        }
    }
}

/// The object behind a handle.
#[derive(Debug, Clone)]
pub enum Object {
    /// A context.
    Context(Arc<Context>),
    /// A created stream.
    Stream(Arc<Stream>),
    /// An event.
    Event(Arc<Event>),
    /// A module.
    Module(Arc<Module>),
    /// A function.
    Function(Arc<Function>),
}

impl Object {
    fn kind(&self) -> &'static str {
        match self {
            Object::Context(_) => "context",
            Object::Stream(_) => "stream",
            Object::Event(_) => "event",
            Object::Module(_) => "module",
            Object::Function(_) => "function",
        }
    }
}

#[derive(Debug)]
struct Objects {
    next: usize,
    map: HashMap<usize, Object>,
}

/// The emulated driver, created by `cuInit`.
#[derive(Debug)]
pub struct Driver {
    devices: Vec<Arc<Context>>,
    objects: Mutex<Objects>,
}

static DRIVER: OnceLock<Driver> = OnceLock::new();

thread_local! {
    /// The ordinal of this thread's current context.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Initialises the driver (idempotent): one device per
/// `Settings::global().devices`, each with its memory.
pub fn init() -> &'static Driver {
    DRIVER.get_or_init(|| Driver::new(Settings::global()))
}

/// The driver, or `CUDA_ERROR_NOT_INITIALIZED` before `cuInit`.
pub fn driver() -> Outcome<&'static Driver> {
    DRIVER.get().ok_or_else(|| {
        Failure::new(
            CUDA_ERROR_NOT_INITIALIZED,
            "the driver is not initialised: call cuInit(0) first",
        )
    })
}

/// Sets this thread's current context (`None`: no context).
pub fn set_current(ordinal: Option<usize>) {
    CURRENT.with(|c| c.set(ordinal));
}

fn invalid_handle(what: &str, handle: usize) -> Failure {
    Failure::new(
        CUDA_ERROR_INVALID_HANDLE,
        format!("{handle:#x} is not a live {what} handle"),
    )
}

impl Driver {
    fn new(settings: &Settings) -> Self {
        let mut objects = Objects {
            next: 0x1000,
            map: HashMap::new(),
        };
        let devices = (0..settings.devices)
            .map(|ordinal| {
                let handle = objects.next;
                objects.next += 0x10;
                let ctx = Arc::new(Context {
                    handle,
                    ordinal,
                    memory: DeviceMemory::new(settings.memory_bytes),
                    default_stream: Arc::new(Stream::new(ordinal)),
                    refs: Mutex::new(0),
                });
                objects.map.insert(handle, Object::Context(ctx.clone()));
                ctx
            })
            .collect();
        Driver {
            devices,
            objects: Mutex::new(objects),
        }
    }

    /// The number of devices.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// The primary context of device `ordinal`.
    pub fn device(&self, ordinal: i32) -> Outcome<&Arc<Context>> {
        usize::try_from(ordinal)
            .ok()
            .and_then(|o| self.devices.get(o))
            .ok_or_else(|| {
                Failure::new(
                    CUDA_ERROR_INVALID_DEVICE,
                    format!(
                        "device {ordinal} requested, {} emulated (DROPLESS_EMU_DEVICES)",
                        self.devices.len()
                    ),
                )
            })
    }

    /// This thread's current context.
    pub fn current(&self) -> Outcome<&Arc<Context>> {
        CURRENT
            .with(Cell::get)
            .and_then(|o| self.devices.get(o))
            .ok_or_else(|| {
                Failure::new(
                    CUDA_ERROR_INVALID_CONTEXT,
                    "no context is current on this thread (cuDevicePrimaryCtxRetain, then \
                     cuCtxSetCurrent)",
                )
            })
    }

    /// The handle of this thread's current context, if any.
    pub fn current_handle(&self) -> Option<usize> {
        CURRENT
            .with(Cell::get)
            .and_then(|o| self.devices.get(o))
            .map(|c| c.handle)
    }

    /// Registers `object` under a new handle.
    pub fn insert(&self, object: Object) -> usize {
        let mut objects = lock(&self.objects);
        let handle = objects.next;
        objects.next += 0x10;
        objects.map.insert(handle, object);
        handle
    }

    fn get(&self, handle: usize) -> Option<Object> {
        lock(&self.objects).map.get(&handle).cloned()
    }

    /// Removes the object behind `handle` if it is a `kind`.
    fn remove(&self, handle: usize, kind: &str) -> Outcome<Object> {
        let mut objects = lock(&self.objects);
        if objects.map.get(&handle).is_some_and(|o| o.kind() == kind) {
            if let Some(object) = objects.map.remove(&handle) {
                return Ok(object);
            }
        }
        Err(invalid_handle(kind, handle))
    }

    /// The context behind `handle`.
    pub fn context(&self, handle: usize) -> Outcome<Arc<Context>> {
        match self.get(handle) {
            Some(Object::Context(c)) => Ok(c),
            _ => Err(Failure::new(
                CUDA_ERROR_INVALID_CONTEXT,
                format!("{handle:#x} is not a context handle"),
            )),
        }
    }

    /// The stream behind `handle`; the default-stream handles name the
    /// current context's default stream.
    pub fn stream(&self, handle: usize) -> Outcome<Arc<Stream>> {
        if DEFAULT_STREAM_HANDLES.contains(&handle) {
            return Ok(self.current()?.default_stream.clone());
        }
        match self.get(handle) {
            Some(Object::Stream(s)) => Ok(s),
            _ => Err(invalid_handle("stream", handle)),
        }
    }

    /// The event behind `handle`.
    pub fn event(&self, handle: usize) -> Outcome<Arc<Event>> {
        match self.get(handle) {
            Some(Object::Event(e)) => Ok(e),
            _ => Err(invalid_handle("event", handle)),
        }
    }

    /// The module behind `handle`.
    pub fn module(&self, handle: usize) -> Outcome<Arc<Module>> {
        match self.get(handle) {
            Some(Object::Module(m)) => Ok(m),
            _ => Err(invalid_handle("module", handle)),
        }
    }

    /// The function behind `handle`.
    pub fn function(&self, handle: usize) -> Outcome<Arc<Function>> {
        match self.get(handle) {
            Some(Object::Function(f)) => Ok(f),
            _ => Err(invalid_handle("function", handle)),
        }
    }

    /// Destroys stream `handle` (the default stream cannot be destroyed).
    pub fn remove_stream(&self, handle: usize) -> Outcome {
        self.remove(handle, "stream").map(drop)
    }

    /// Destroys event `handle`.
    pub fn remove_event(&self, handle: usize) -> Outcome {
        self.remove(handle, "event").map(drop)
    }

    /// Unloads module `handle` and invalidates its function handles.
    pub fn remove_module(&self, handle: usize) -> Outcome {
        if let Object::Module(module) = self.remove(handle, "module")? {
            let functions: Vec<usize> = lock(&module.functions).values().copied().collect();
            let mut objects = lock(&self.objects);
            for f in functions {
                objects.map.remove(&f);
            }
        }
        Ok(())
    }

    /// Every created stream of device `ordinal`, its default stream first.
    pub fn streams_of(&self, ordinal: usize) -> Vec<Arc<Stream>> {
        let mut streams = vec![self.devices[ordinal].default_stream.clone()];
        streams.extend(lock(&self.objects).map.values().filter_map(|o| match o {
            Object::Stream(s) if s.ordinal == ordinal => Some(s.clone()),
            _ => None,
        }));
        streams
    }

    /// A new stream of device `ordinal`, registered.
    pub fn new_stream(&self, ordinal: usize) -> usize {
        self.insert(Object::Stream(Arc::new(Stream::new(ordinal))))
    }

    /// The device whose memory holds `addr`: the current context's device
    /// first (the common case), then the others (unified addressing).
    pub fn memory_of(&self, addr: u64) -> Option<&Context> {
        let current = CURRENT.with(Cell::get);
        let first = current.and_then(|o| self.devices.get(o));
        first
            .into_iter()
            .chain(self.devices.iter().filter(|c| Some(c.ordinal) != current))
            .find(|c| c.memory.view().region(addr).is_some())
            .map(|c| &**c)
    }
}
