//! The cuBLAS shim's GEMMs against a naive column-major loop, per the
//! cuBLAS documentation: every transpose and type combination, leading
//! dimensions with gaps (neither read nor written), alpha and beta (host and
//! device pointer modes), beta = 0 ignoring NaN in C, strided batches,
//! round-to-nearest-even outputs, and the refusals (out of bounds, bad
//! arguments, unsupported types, dead handles).

mod driver_support;

use std::ffi::{c_int, c_void, CStr};
use std::ptr::null_mut;

use driver_support::{alloc, buffer, context, download, expect, free, ok};
use dropless_emu::cublas::cublasHandle_t;
use dropless_emu::cublas::gemm_api::*;
use dropless_emu::cublas::handle::*;
use dropless_emu::cublas::status::*;
use dropless_emu::driver::CUdeviceptr;
use half::{bf16, f16};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    F32,
    F16,
    Bf16,
}

impl Ty {
    fn cuda(self) -> c_int {
        match self {
            Ty::F32 => 0,
            Ty::F16 => 2,
            Ty::Bf16 => 14,
        }
    }

    fn size(self) -> usize {
        if self == Ty::F32 {
            4
        } else {
            2
        }
    }

    fn encode(self, v: f32) -> Vec<u8> {
        match self {
            Ty::F32 => v.to_le_bytes().to_vec(),
            Ty::F16 => f16::from_f32(v).to_le_bytes().to_vec(),
            Ty::Bf16 => bf16::from_f32(v).to_le_bytes().to_vec(),
        }
    }

    fn decode(self, b: &[u8]) -> f32 {
        match self {
            Ty::F32 => f32::from_le_bytes(b.try_into().unwrap()),
            Ty::F16 => f16::from_le_bytes(b.try_into().unwrap()).to_f32(),
            Ty::Bf16 => bf16::from_le_bytes(b.try_into().unwrap()).to_f32(),
        }
    }

    /// Rounds `v` to this type, to nearest even.
    fn round(self, v: f32) -> f32 {
        self.decode(&self.encode(v))
    }
}

/// A column-major matrix with leading dimension `ld`; the gaps hold NaN.
#[derive(Debug, Clone)]
struct Mat {
    ld: usize,
    data: Vec<f32>,
}

impl Mat {
    fn new(rows: usize, cols: usize, ld: usize, mut f: impl FnMut(usize, usize) -> f32) -> Mat {
        let mut data = vec![f32::NAN; ld * cols.max(1)];
        for j in 0..cols {
            for i in 0..rows {
                data[i + j * ld] = f(i, j);
            }
        }
        Mat { ld, data }
    }

    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i + j * self.ld]
    }

    fn bytes(&self, ty: Ty) -> Vec<u8> {
        self.data.iter().flat_map(|&v| ty.encode(v)).collect()
    }
}

/// Small integers: every product and sum is exact in f32, f16 and bf16.
fn ints(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    ((*seed >> 33) % 5) as f32 - 2.0
}

fn op(t: c_int, x: &Mat, i: usize, j: usize) -> f32 {
    if t == 0 {
        x.at(i, j)
    } else {
        x.at(j, i)
    }
}

/// The naive GEMM: C = alpha op(A) op(B) + beta C (C not read when beta = 0).
#[allow(clippy::too_many_arguments)]
fn reference(
    ta: c_int,
    tb: c_int,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &Mat,
    b: &Mat,
    beta: f32,
    c: &Mat,
) -> Mat {
    let mut out = c.clone();
    for i in 0..m {
        for j in 0..n {
            let dot: f32 = (0..k).map(|l| op(ta, a, i, l) * op(tb, b, l, j)).sum();
            let prior = if beta == 0.0 { 0.0 } else { beta * c.at(i, j) };
            out.data[i + j * c.ld] = alpha * dot + prior;
        }
    }
    out
}

fn handle() -> cublasHandle_t {
    context(0);
    let mut h = null_mut();
    // SAFETY: a valid out-parameter.
    ok(unsafe { cublasCreate_v2(&mut h) });
    h
}

fn device(m: &Mat, ty: Ty) -> CUdeviceptr {
    buffer(&m.bytes(ty))
}

fn read(p: CUdeviceptr, like: &Mat, ty: Ty) -> Vec<f32> {
    download::<u8>(p, like.data.len() * ty.size())
        .chunks(ty.size())
        .map(|b| ty.decode(b))
        .collect()
}

/// Asserts `got` equals `want` element for element, NaN gaps included.
#[track_caller]
fn same(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g == w || (g.is_nan() && w.is_nan()),
            "{what}: element {i}: {g} != {w}"
        );
    }
}

#[test]
fn every_transpose_and_type_combination_matches_the_loop() {
    let h = handle();
    let (m, n, k) = (5, 4, 3);
    let types = [
        (Ty::F32, Ty::F32),
        (Ty::F16, Ty::F16),
        (Ty::F16, Ty::F32),
        (Ty::Bf16, Ty::Bf16),
        (Ty::Bf16, Ty::F32),
    ];
    let mut seed = 1;
    for (ab, cty) in types {
        for ta in [0, 1, 2] {
            for tb in [0, 1, 2] {
                let (ra, ca) = if ta == 0 { (m, k) } else { (k, m) };
                let (rb, cb) = if tb == 0 { (k, n) } else { (n, k) };
                let a = Mat::new(ra, ca, ra + 2, |_, _| ints(&mut seed));
                let b = Mat::new(rb, cb, rb + 1, |_, _| ints(&mut seed));
                let c = Mat::new(m, n, m + 3, |_, _| ints(&mut seed));
                let (alpha, beta) = (2.0f32, 0.5f32);
                let (pa, pb, pc) = (device(&a, ab), device(&b, ab), device(&c, cty));
                // SAFETY: host scalars; device matrices are checked.
                ok(unsafe {
                    cublasGemmEx(
                        h,
                        ta,
                        tb,
                        m as c_int,
                        n as c_int,
                        k as c_int,
                        (&alpha as *const f32).cast(),
                        pa as *const c_void,
                        ab.cuda(),
                        a.ld as c_int,
                        pb as *const c_void,
                        ab.cuda(),
                        b.ld as c_int,
                        (&beta as *const f32).cast(),
                        pc as *mut c_void,
                        cty.cuda(),
                        c.ld as c_int,
                        68,
                        -1,
                    )
                });
                let mut want = reference(ta, tb, m, n, k, alpha, &a, &b, beta, &c);
                want.data.iter_mut().for_each(|v| *v = cty.round(*v));
                same(
                    &read(pc, &c, cty),
                    &want.data,
                    &format!("{ab:?}/{cty:?} op {ta},{tb}"),
                );
                for p in [pa, pb, pc] {
                    free(p);
                }
            }
        }
    }
    // SAFETY: a live handle.
    ok(unsafe { cublasDestroy_v2(h) });
}

#[test]
fn beta_zero_does_not_read_c() {
    let h = handle();
    let a = Mat::new(2, 2, 2, |i, j| (i + 2 * j) as f32);
    let c = Mat::new(2, 2, 2, |_, _| f32::NAN);
    let (pa, pc) = (device(&a, Ty::F32), device(&c, Ty::F32));
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: host scalars; device matrices are checked.
    ok(unsafe {
        cublasSgemm_v2(
            h,
            0,
            0,
            2,
            2,
            2,
            &alpha,
            pa as *const f32,
            2,
            pa as *const f32,
            2,
            &beta,
            pc as *mut f32,
            2,
        )
    });
    let want = reference(0, 0, 2, 2, 2, 1.0, &a, &a, 0.0, &c);
    same(&read(pc, &c, Ty::F32), &want.data, "beta = 0");
    assert!(want.data.iter().all(|v| v.is_finite()));
}

#[test]
fn outputs_round_to_nearest_even() {
    let h = handle();
    for (ty, half_ulp) in [(Ty::Bf16, 2f32.powi(-8)), (Ty::F16, 2f32.powi(-11))] {
        // [1, e] . [1, 1] = 1 + e: a tie between 1 (even) and 1 + 2e.
        // [1 + 2e, e] . [1, 1] = 1 + 3e: a tie between 1 + 2e and 1 + 4e (even).
        for (first, want) in [(1.0, 1.0), (1.0 + 2.0 * half_ulp, 1.0 + 4.0 * half_ulp)] {
            let a = Mat::new(1, 2, 1, |_, j| if j == 0 { first } else { half_ulp });
            let b = Mat::new(2, 1, 2, |_, _| 1.0);
            let c = Mat::new(1, 1, 1, |_, _| 0.0);
            let (pa, pb, pc) = (device(&a, ty), device(&b, ty), device(&c, ty));
            let (alpha, beta) = (1.0f32, 0.0f32);
            // SAFETY: host scalars; device matrices are checked.
            ok(unsafe {
                cublasGemmEx(
                    h,
                    0,
                    0,
                    1,
                    1,
                    2,
                    (&alpha as *const f32).cast(),
                    pa as *const c_void,
                    ty.cuda(),
                    1,
                    pb as *const c_void,
                    ty.cuda(),
                    2,
                    (&beta as *const f32).cast(),
                    pc as *mut c_void,
                    ty.cuda(),
                    1,
                    68,
                    -1,
                )
            });
            assert_eq!(read(pc, &c, ty), [want], "{ty:?} from {first}");
        }
    }
}

#[test]
fn strided_batches_match_the_loop_per_batch() {
    let h = handle();
    let (m, n, k, batch) = (3, 2, 4, 3);
    let mut seed = 7;
    // A: one matrix for every batch (stride 0); B and C: padded strides.
    let a = Mat::new(m, k, m, |_, _| ints(&mut seed));
    let (sb, sc) = (k * n + 3, m * n + 1);
    let bs: Vec<Mat> = (0..batch)
        .map(|_| Mat::new(k, n, k, |_, _| ints(&mut seed)))
        .collect();
    let cs: Vec<Mat> = (0..batch)
        .map(|_| Mat::new(m, n, m, |_, _| ints(&mut seed)))
        .collect();
    for (ab, cty) in [(Ty::Bf16, Ty::Bf16), (Ty::F16, Ty::F32), (Ty::F32, Ty::F32)] {
        let flat = |ms: &[Mat], stride: usize, ty: Ty| {
            let mut bytes = Vec::new();
            for mat in ms {
                let mut one = mat.bytes(ty);
                one.resize(stride * ty.size(), 0xFF);
                bytes.extend(one);
            }
            bytes
        };
        let pa = device(&a, ab);
        let pb = buffer(&flat(&bs, sb, ab));
        let pc = buffer(&flat(&cs, sc, cty));
        let (alpha, beta) = (1.0f32, -1.0f32);
        // SAFETY: host scalars; device matrices are checked.
        ok(unsafe {
            cublasGemmStridedBatchedEx(
                h,
                0,
                0,
                m as c_int,
                n as c_int,
                k as c_int,
                (&alpha as *const f32).cast(),
                pa as *const c_void,
                ab.cuda(),
                m as c_int,
                0,
                pb as *const c_void,
                ab.cuda(),
                k as c_int,
                sb as i64,
                (&beta as *const f32).cast(),
                pc as *mut c_void,
                cty.cuda(),
                m as c_int,
                sc as i64,
                batch as c_int,
                68,
                -1,
            )
        });
        let got = download::<u8>(pc, batch * sc * cty.size());
        for i in 0..batch {
            let want = reference(0, 0, m, n, k, alpha, &a, &bs[i], beta, &cs[i]);
            let start = i * sc * cty.size();
            let one: Vec<f32> = got[start..start + m * n * cty.size()]
                .chunks(cty.size())
                .map(|b| cty.decode(b))
                .collect();
            let want: Vec<f32> = want.data.iter().map(|&v| cty.round(v)).collect();
            same(&one, &want, &format!("batch {i} {ab:?}/{cty:?}"));
            let pad = &got[start + m * n * cty.size()..start + sc * cty.size()];
            assert!(
                pad.iter().all(|&b| b == 0xFF),
                "the stride's gap is untouched"
            );
        }
        for p in [pa, pb, pc] {
            free(p);
        }
    }
    // The f32 entry point agrees.
    let pa = device(&a, Ty::F32);
    let pb = buffer(&flat_f32(&bs, sb));
    let pc = alloc(batch * sc * 4);
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: host scalars; device matrices are checked.
    ok(unsafe {
        cublasSgemmStridedBatched(
            h,
            0,
            0,
            m as c_int,
            n as c_int,
            k as c_int,
            &alpha,
            pa as *const f32,
            m as c_int,
            0,
            pb as *const f32,
            k as c_int,
            sb as i64,
            &beta,
            pc as *mut f32,
            m as c_int,
            sc as i64,
            batch as c_int,
        )
    });
    let got = download::<f32>(pc, batch * sc);
    for (i, bm) in bs.iter().enumerate() {
        let want = reference(
            0,
            0,
            m,
            n,
            k,
            1.0,
            &a,
            bm,
            0.0,
            &Mat::new(m, n, m, |_, _| 0.0),
        );
        same(
            &got[i * sc..i * sc + m * n],
            &want.data,
            &format!("Sgemm batch {i}"),
        );
    }
}

fn flat_f32(ms: &[Mat], stride: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for mat in ms {
        let mut one = mat.data.clone();
        one.resize(stride, 0.0);
        out.extend(one);
    }
    out
}

#[test]
fn device_pointer_mode_reads_alpha_and_beta_from_device_memory() {
    let h = handle();
    let a = Mat::new(2, 2, 2, |i, j| (1 + i + 2 * j) as f32);
    let c = Mat::new(2, 2, 2, |_, _| 1.0);
    let (pa, pc) = (device(&a, Ty::F32), device(&c, Ty::F32));
    let scalars = buffer(&[3.0f32, 2.0]);
    let mut mode = -1;
    // SAFETY: device scalars (device pointer mode); matrices are checked.
    unsafe {
        ok(cublasSetPointerMode_v2(h, POINTER_MODE_DEVICE));
        ok(cublasGetPointerMode_v2(h, &mut mode));
        ok(cublasSgemm_v2(
            h,
            0,
            0,
            2,
            2,
            2,
            scalars as *const f32,
            pa as *const f32,
            2,
            pa as *const f32,
            2,
            (scalars + 4) as *const f32,
            pc as *mut f32,
            2,
        ));
        let host = 1.0f32;
        expect(
            cublasSgemm_v2(
                h,
                0,
                0,
                2,
                2,
                2,
                &host,
                pa as *const f32,
                2,
                pa as *const f32,
                2,
                &host,
                pc as *mut f32,
                2,
            ),
            CUBLAS_STATUS_EXECUTION_FAILED,
        );
        expect(cublasSetPointerMode_v2(h, 2), CUBLAS_STATUS_INVALID_VALUE);
    }
    assert_eq!(mode, POINTER_MODE_DEVICE);
    let want = reference(0, 0, 2, 2, 2, 3.0, &a, &a, 2.0, &c);
    same(&read(pc, &c, Ty::F32), &want.data, "device scalars");
}

#[test]
fn matrices_outside_their_allocations_are_refused_untouched() {
    let h = handle();
    let (alpha, beta) = (1.0f32, 0.0f32);
    let a = buffer(&[1.0f32; 4]);
    let small_c = buffer(&[9.0f32; 3]);
    // SAFETY: host scalars; device matrices are checked.
    unsafe {
        expect(
            cublasSgemm_v2(
                h,
                0,
                0,
                2,
                2,
                2,
                &alpha,
                a as *const f32,
                2,
                a as *const f32,
                2,
                &beta,
                small_c as *mut f32,
                2,
            ),
            CUBLAS_STATUS_EXECUTION_FAILED,
        );
        // lda = 3 makes A reach one element past its 4.
        expect(
            cublasSgemm_v2(
                h,
                0,
                0,
                2,
                2,
                1,
                &alpha,
                a as *const f32,
                3,
                a as *const f32,
                2,
                &beta,
                small_c as *mut f32,
                2,
            ),
            CUBLAS_STATUS_EXECUTION_FAILED,
        );
        // A batch past the end of B.
        expect(
            cublasSgemmStridedBatched(
                h,
                0,
                0,
                1,
                1,
                1,
                &alpha,
                a as *const f32,
                1,
                1,
                a as *const f32,
                1,
                2,
                &beta,
                small_c as *mut f32,
                1,
                1,
                3,
            ),
            CUBLAS_STATUS_EXECUTION_FAILED,
        );
    }
    assert_eq!(download::<f32>(small_c, 3), [9.0; 3], "nothing was written");
}

#[test]
fn bad_arguments_and_types_are_refused() {
    let h = handle();
    let (alpha, beta) = (1.0f32, 0.0f32);
    let p = buffer(&[0.0f32; 16]);
    let gemm = |ta: c_int, m: c_int, lda: c_int, at: c_int, ct: c_int, compute: c_int| {
        // SAFETY: host scalars; device matrices are checked.
        unsafe {
            cublasGemmEx(
                h,
                ta,
                0,
                m,
                2,
                2,
                (&alpha as *const f32).cast(),
                p as *const c_void,
                at,
                lda,
                p as *const c_void,
                at,
                2,
                (&beta as *const f32).cast(),
                p as *mut c_void,
                ct,
                2,
                compute,
                -1,
            )
        }
    };
    ok(gemm(0, 2, 2, 0, 0, 68));
    ok(gemm(0, 0, 1, 0, 0, 68));
    expect(gemm(0, -1, 2, 0, 0, 68), CUBLAS_STATUS_INVALID_VALUE);
    expect(gemm(0, 2, 1, 0, 0, 68), CUBLAS_STATUS_INVALID_VALUE);
    expect(gemm(3, 2, 2, 0, 0, 68), CUBLAS_STATUS_INVALID_VALUE);
    expect(gemm(0, 2, 2, 1, 1, 68), CUBLAS_STATUS_NOT_SUPPORTED);
    expect(gemm(0, 2, 2, 2, 14, 68), CUBLAS_STATUS_NOT_SUPPORTED);
    expect(gemm(0, 2, 2, 0, 0, 64), CUBLAS_STATUS_NOT_SUPPORTED);
    expect(gemm(0, 2, 2, 2, 2, 77), CUBLAS_STATUS_NOT_SUPPORTED);
    ok(gemm(0, 2, 2, 0, 0, 77));
    // SAFETY: null scalars are refused before any read.
    let null_alpha = unsafe {
        cublasSgemm_v2(
            h,
            0,
            0,
            2,
            2,
            2,
            std::ptr::null(),
            p as *const f32,
            2,
            p as *const f32,
            2,
            &beta,
            p as *mut f32,
            2,
        )
    };
    expect(null_alpha, CUBLAS_STATUS_INVALID_VALUE);
}

#[test]
fn handles_are_checked_and_bound_to_a_context() {
    let h = handle();
    let mut stream = null_mut();
    let mut s = null_mut();
    let mut version = 0;
    // SAFETY: valid out-parameters; handles are looked up.
    unsafe {
        ok(dropless_emu::driver::streams::cuStreamCreate(&mut s, 0));
        ok(cublasSetStream_v2(h, s));
        ok(cublasGetStream_v2(h, &mut stream));
        assert_eq!(stream, s);
        expect(
            cublasSetStream_v2(h, 0x4242_0000usize as _),
            CUBLAS_STATUS_INVALID_VALUE,
        );
        ok(cublasSetMathMode(h, 1));
        ok(cublasSetWorkspace_v2(h, null_mut(), 0));
        ok(cublasGetVersion_v2(h, &mut version));
        ok(cublasDestroy_v2(h));
        expect(cublasDestroy_v2(h), CUBLAS_STATUS_NOT_INITIALIZED);
        expect(cublasSetMathMode(h, 0), CUBLAS_STATUS_NOT_INITIALIZED);
    }
    assert_eq!(version, VERSION);
    assert_eq!(cublasGetCudartVersion(), 13_000);
    let without_context = std::thread::spawn(|| {
        let mut h = null_mut();
        // SAFETY: a valid out-parameter.
        unsafe { cublasCreate_v2(&mut h) }
    })
    .join()
    .unwrap();
    expect(without_context, CUBLAS_STATUS_NOT_INITIALIZED);
    // SAFETY: static strings.
    let text = unsafe { CStr::from_ptr(cublasGetStatusString(13)) };
    assert_eq!(text.to_str().unwrap(), "the GPU program failed to execute");
    // SAFETY: static strings.
    let name = unsafe { CStr::from_ptr(cublasGetStatusName(15)) };
    assert_eq!(name.to_str().unwrap(), "CUBLAS_STATUS_NOT_SUPPORTED");
    expect(
        dropless_emu::cublas::unsupported::cublasDgemm_v2(),
        CUBLAS_STATUS_NOT_SUPPORTED,
    );
}
