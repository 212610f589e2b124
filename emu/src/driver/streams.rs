//! Streams and events. Work runs when it is submitted, so a stream only
//! orders nothing and keeps the launch failures pending on it; events record
//! wall-clock time and the failure pending on their stream.

use std::ffi::{c_float, c_int, c_uint};
use std::sync::Arc;
use std::time::Instant;

use super::failure::{guard, put, Failure, Outcome};
use super::state::{driver, lock, Event, Object, Pending, Recorded};
use super::status::{
    CUresult, CUDA_ERROR_INVALID_CONTEXT, CUDA_ERROR_INVALID_HANDLE, CUDA_ERROR_INVALID_VALUE,
};
use super::{CUevent, CUstream};

/// `CU_STREAM_NON_BLOCKING`: the only stream flag.
const STREAM_NON_BLOCKING: c_uint = 1;
/// `CU_EVENT_DEFAULT | CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING`.
const EVENT_FLAGS: c_uint = 0b11;
/// `CU_EVENT_DISABLE_TIMING`.
const EVENT_DISABLE_TIMING: c_uint = 2;

/// The failure a synchronisation returns for `pending`.
fn pending_failure(p: Pending) -> Failure {
    Failure::new(
        p.code,
        "an earlier launch on this stream failed (reported above)",
    )
}

/// Creates a stream of the current context into `out`.
///
/// # Safety
///
/// `out` must be null or valid for a write.
unsafe fn create_stream(out: *mut CUstream, flags: c_uint) -> Outcome {
    let driver = driver()?;
    let ctx = driver.current()?;
    if flags & !STREAM_NON_BLOCKING != 0 {
        return Err(Failure::new(
            CUDA_ERROR_INVALID_VALUE,
            format!("stream flags {flags:#x}: only CU_STREAM_NON_BLOCKING (1) is defined"),
        ));
    }
    if out.is_null() {
        return Err(Failure::new(
            CUDA_ERROR_INVALID_VALUE,
            "phStream is a null pointer",
        ));
    }
    let handle = driver.new_stream(ctx.ordinal);
    // SAFETY: non-null, valid per the caller's contract.
    unsafe { put(out, handle as CUstream, "phStream") }
}

/// `cuStreamCreate`: a stream of the current context.
///
/// # Safety
///
/// `out` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(out: *mut CUstream, flags: c_uint) -> CUresult {
    // SAFETY: per this function's contract.
    guard("cuStreamCreate", || unsafe { create_stream(out, flags) })
}

/// `cuStreamCreateWithPriority`: as [`cuStreamCreate`] (priorities do not
/// change the order of synchronous work).
///
/// # Safety
///
/// `out` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    out: *mut CUstream,
    flags: c_uint,
    priority: c_int,
) -> CUresult {
    let _ = priority;
    // SAFETY: per this function's contract.
    guard("cuStreamCreateWithPriority", || unsafe {
        create_stream(out, flags)
    })
}

/// `cuStreamDestroy_v2`.
///
/// # Safety
///
/// Takes a handle, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(stream: CUstream) -> CUresult {
    guard("cuStreamDestroy_v2", || {
        driver()?.remove_stream(stream as usize)
    })
}

/// `cuStreamSynchronize`: returns (and clears) the launch failure pending
/// on the stream.
///
/// # Safety
///
/// Takes a handle, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(stream: CUstream) -> CUresult {
    guard("cuStreamSynchronize", || {
        match driver()?.stream(stream as usize)?.take() {
            None => Ok(()),
            Some(p) => Err(pending_failure(p)),
        }
    })
}

/// `cuStreamQuery`: the pending launch failure (left pending), else success:
/// all work on a stream is complete when its call returns.
///
/// # Safety
///
/// Takes a handle, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cuStreamQuery(stream: CUstream) -> CUresult {
    guard("cuStreamQuery", || {
        match driver()?.stream(stream as usize)?.peek() {
            None => Ok(()),
            Some(p) => Err(pending_failure(p)),
        }
    })
}

/// `cuStreamWaitEvent`: the stream adopts the failure pending on the event.
///
/// # Safety
///
/// Takes handles, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cuStreamWaitEvent(
    stream: CUstream,
    event: CUevent,
    flags: c_uint,
) -> CUresult {
    guard("cuStreamWaitEvent", || {
        let driver = driver()?;
        let stream = driver.stream(stream as usize)?;
        let event = driver.event(event as usize)?;
        if flags > 1 {
            return Err(Failure::new(
                CUDA_ERROR_INVALID_VALUE,
                format!("event wait flags {flags:#x}: only 0 and 1 are defined"),
            ));
        }
        if let Some((p, _)) = lock(&event.recorded)
            .as_ref()
            .and_then(|r| r.pending.clone())
        {
            stream.inherit(p);
        }
        Ok(())
    })
}

/// `cuEventCreate`: an event of the current context.
///
/// # Safety
///
/// `out` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(out: *mut CUevent, flags: c_uint) -> CUresult {
    guard("cuEventCreate", || {
        let driver = driver()?;
        let ctx = driver.current()?;
        if flags & !EVENT_FLAGS != 0 {
            return Err(Failure::new(
                CUDA_ERROR_INVALID_VALUE,
                format!("event flags {flags:#x}: interprocess events are not emulated"),
            ));
        }
        if out.is_null() {
            return Err(Failure::new(
                CUDA_ERROR_INVALID_VALUE,
                "phEvent is a null pointer",
            ));
        }
        let event = Event {
            ordinal: ctx.ordinal,
            timing: flags & EVENT_DISABLE_TIMING == 0,
            recorded: Default::default(),
        };
        let handle = driver.insert(Object::Event(Arc::new(event)));
        // SAFETY: non-null, valid per this function's contract.
        unsafe { put(out, handle as CUevent, "phEvent") }
    })
}

/// `cuEventRecord`: the time now and the stream's pending failure.
///
/// # Safety
///
/// Takes handles, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(event: CUevent, stream: CUstream) -> CUresult {
    guard("cuEventRecord", || {
        let driver = driver()?;
        let event = driver.event(event as usize)?;
        let stream = driver.stream(stream as usize)?;
        if stream.ordinal != event.ordinal {
            return Err(Failure::new(
                CUDA_ERROR_INVALID_CONTEXT,
                "the event and the stream belong to different contexts",
            ));
        }
        let pending = stream.peek().map(|p| (p, Arc::downgrade(&stream)));
        *lock(&event.recorded) = Some(Recorded {
            at: Instant::now(),
            pending,
        });
        Ok(())
    })
}

/// `cuEventSynchronize`: returns (and clears, on the event and on its
/// stream) the failure pending when the event was recorded.
///
/// # Safety
///
/// Takes a handle, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(event: CUevent) -> CUresult {
    guard("cuEventSynchronize", || {
        let event = driver()?.event(event as usize)?;
        let pending = lock(&event.recorded)
            .as_mut()
            .and_then(|r| r.pending.take());
        match pending {
            None => Ok(()),
            Some((p, stream)) => {
                if let Some(stream) = stream.upgrade() {
                    stream.clear(p.id);
                }
                Err(pending_failure(p))
            }
        }
    })
}

/// `cuEventQuery`: the failure pending at the record (left pending), else
/// success.
///
/// # Safety
///
/// Takes a handle, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(event: CUevent) -> CUresult {
    guard("cuEventQuery", || {
        let event = driver()?.event(event as usize)?;
        let pending = lock(&event.recorded)
            .as_ref()
            .and_then(|r| r.pending.clone());
        match pending {
            None => Ok(()),
            Some((p, _)) => Err(pending_failure(p)),
        }
    })
}

/// `cuEventDestroy_v2`.
///
/// # Safety
///
/// Takes a handle, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(event: CUevent) -> CUresult {
    guard("cuEventDestroy_v2", || {
        driver()?.remove_event(event as usize)
    })
}

/// Milliseconds of wall-clock time between two recorded timing events.
///
/// # Safety
///
/// `ms` must be null or valid for a write.
unsafe fn elapsed(ms: *mut c_float, start: CUevent, end: CUevent) -> Outcome {
    let driver = driver()?;
    let (start, end) = (driver.event(start as usize)?, driver.event(end as usize)?);
    if !start.timing || !end.timing {
        return Err(Failure::new(
            CUDA_ERROR_INVALID_HANDLE,
            "an event was created with CU_EVENT_DISABLE_TIMING",
        ));
    }
    let at = |e: &Event| lock(&e.recorded).as_ref().map(|r| r.at);
    let (Some(t0), Some(t1)) = (at(&start), at(&end)) else {
        return Err(Failure::new(
            CUDA_ERROR_INVALID_HANDLE,
            "an event has not been recorded",
        ));
    };
    let millis = match t1.checked_duration_since(t0) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(t0.duration_since(t1).as_secs_f64() * 1e3),
    };
    // SAFETY: per the caller's contract.
    unsafe { put(ms, millis as c_float, "pMilliseconds") }
}

/// `cuEventElapsedTime`: see [`cuEventElapsedTime_v2`].
///
/// # Safety
///
/// `ms` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(
    ms: *mut c_float,
    start: CUevent,
    end: CUevent,
) -> CUresult {
    // SAFETY: per this function's contract.
    guard("cuEventElapsedTime", || unsafe { elapsed(ms, start, end) })
}

/// `cuEventElapsedTime_v2`: the wall-clock milliseconds between the two
/// records: CPU time of the emulator, not a GPU measurement.
///
/// # Safety
///
/// `ms` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(
    ms: *mut c_float,
    start: CUevent,
    end: CUevent,
) -> CUresult {
    // SAFETY: per this function's contract.
    guard("cuEventElapsedTime_v2", || unsafe {
        elapsed(ms, start, end)
    })
}
