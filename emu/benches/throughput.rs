//! The emulator's throughput in thread-instructions per second (an `mma`
//! counts once per lane), on a block-sparse-like kernel: a cp.async
//! global-to-shared pipeline, ldmatrix, and mma.sync.m16n8k16 (bf16, f32
//! accumulators) over 64x32 output tiles, and on an integer kernel
//! (a shared-memory histogram with atomics and barriers).
//!
//! `cargo bench -p dropless-emu --bench throughput` prints criterion's
//! timings with the throughput in elements (thread-instructions) per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dropless_emu::exec::{launch, LaunchConfig, Program};
use dropless_emu::memory::DeviceMemory;
use dropless_emu::settings::Settings;

/// One CTA (4 warps) computes C[64 x 32] = A[64 x K] * B[32 x K]^T, K = 32
/// per k-tile: each k-tile is copied to shared memory with cp.async, then
/// every warp loads its 16 rows of A and all of B with ldmatrix and runs 8
/// mma (two k16 steps, four n8 tiles).
const MMA_KERNEL: &str = r#"
.version 8.0
.target sm_80
.address_size 64

.visible .entry bs_like(.param .u64 pa, .param .u64 pb, .param .u64 pc, .param .u32 ktiles)
.maxntid 128, 1, 1
{
    .reg .pred %p<2>;
    .reg .b32 %r<48>;
    .reg .f32 %f<16>;
    .reg .b64 %rd<16>;
    .shared .align 128 .b8 sa[4096];
    .shared .align 128 .b8 sb[2048];

    ld.param.u64 %rd1, [pa];
    ld.param.u64 %rd2, [pb];
    ld.param.u64 %rd3, [pc];
    ld.param.u32 %r1, [ktiles];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    cvta.to.global.u64 %rd3, %rd3;
    mov.u32 %r2, %tid.x;
    mov.u32 %r3, %laneid;
    shr.u32 %r4, %r2, 5;
    mov.u32 %r5, %ctaid.x;
    shl.b32 %r6, %r1, 6;
    // cp.async sources and destinations: A chunks tid and tid + 128, B chunk tid.
    mov.u32 %r10, sa;
    shl.b32 %r11, %r2, 4;
    add.s32 %r12, %r10, %r11;
    add.s32 %r13, %r12, 2048;
    mov.u32 %r14, sb;
    add.s32 %r15, %r14, %r11;
    shr.u32 %r16, %r2, 2;
    and.b32 %r17, %r2, 3;
    shl.b32 %r17, %r17, 4;
    shl.b32 %r18, %r5, 6;
    add.s32 %r19, %r18, %r16;
    mad.lo.s32 %r20, %r19, %r6, %r17;
    cvt.u64.u32 %rd4, %r20;
    add.s64 %rd4, %rd1, %rd4;
    add.s32 %r21, %r19, 32;
    mad.lo.s32 %r22, %r21, %r6, %r17;
    cvt.u64.u32 %rd5, %r22;
    add.s64 %rd5, %rd1, %rd5;
    mad.lo.s32 %r23, %r16, %r6, %r17;
    cvt.u64.u32 %rd6, %r23;
    add.s64 %rd6, %rd2, %rd6;
    // ldmatrix row addresses: A rows warp*16 + (lane & 7) + 8 * ((lane >> 3) & 1),
    // k offset 16 bytes * (lane >> 4); B rows n = (lane & 7) + 8 * (lane >> 4),
    // k offset 16 bytes * ((lane >> 3) & 1).
    and.b32 %r24, %r3, 7;
    bfe.u32 %r25, %r3, 3, 1;
    shr.u32 %r26, %r3, 4;
    shl.b32 %r27, %r4, 4;
    add.s32 %r27, %r27, %r24;
    shl.b32 %r28, %r25, 3;
    add.s32 %r27, %r27, %r28;
    shl.b32 %r27, %r27, 6;
    shl.b32 %r29, %r26, 4;
    add.s32 %r27, %r27, %r29;
    add.s32 %r27, %r27, %r10;
    shl.b32 %r30, %r26, 3;
    add.s32 %r30, %r30, %r24;
    shl.b32 %r30, %r30, 6;
    shl.b32 %r31, %r25, 4;
    add.s32 %r30, %r30, %r31;
    add.s32 %r30, %r30, %r14;
    mov.f32 %f0, 0f00000000;
    mov.f32 %f1, 0f00000000;
    mov.f32 %f2, 0f00000000;
    mov.f32 %f3, 0f00000000;
    mov.f32 %f4, 0f00000000;
    mov.f32 %f5, 0f00000000;
    mov.f32 %f6, 0f00000000;
    mov.f32 %f7, 0f00000000;
    mov.f32 %f8, 0f00000000;
    mov.f32 %f9, 0f00000000;
    mov.f32 %f10, 0f00000000;
    mov.f32 %f11, 0f00000000;
    mov.f32 %f12, 0f00000000;
    mov.f32 %f13, 0f00000000;
    mov.f32 %f14, 0f00000000;
    mov.f32 %f15, 0f00000000;
    mov.u32 %r7, 0;
LOOP:
    cp.async.cg.shared.global [%r12], [%rd4], 16;
    cp.async.cg.shared.global [%r13], [%rd5], 16;
    cp.async.cg.shared.global [%r15], [%rd6], 16;
    cp.async.commit_group;
    cp.async.wait_group 0;
    bar.sync 0;
    ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r32, %r33, %r34, %r35}, [%r27];
    ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r36, %r37, %r38, %r39}, [%r30];
    ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r40, %r41, %r42, %r43}, [%r30+1024];
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f0, %f1, %f2, %f3}, {%r32, %r33, %r34, %r35}, {%r36, %r37}, {%f0, %f1, %f2, %f3};
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f4, %f5, %f6, %f7}, {%r32, %r33, %r34, %r35}, {%r38, %r39}, {%f4, %f5, %f6, %f7};
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f8, %f9, %f10, %f11}, {%r32, %r33, %r34, %r35}, {%r40, %r41}, {%f8, %f9, %f10, %f11};
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f12, %f13, %f14, %f15}, {%r32, %r33, %r34, %r35}, {%r42, %r43}, {%f12, %f13, %f14, %f15};
    ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r32, %r33, %r34, %r35}, [%r27+32];
    ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r36, %r37, %r38, %r39}, [%r30+32];
    ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r40, %r41, %r42, %r43}, [%r30+1056];
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f0, %f1, %f2, %f3}, {%r32, %r33, %r34, %r35}, {%r36, %r37}, {%f0, %f1, %f2, %f3};
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f4, %f5, %f6, %f7}, {%r32, %r33, %r34, %r35}, {%r38, %r39}, {%f4, %f5, %f6, %f7};
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f8, %f9, %f10, %f11}, {%r32, %r33, %r34, %r35}, {%r40, %r41}, {%f8, %f9, %f10, %f11};
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f12, %f13, %f14, %f15}, {%r32, %r33, %r34, %r35}, {%r42, %r43}, {%f12, %f13, %f14, %f15};
    bar.sync 0;
    add.s64 %rd4, %rd4, 64;
    add.s64 %rd5, %rd5, 64;
    add.s64 %rd6, %rd6, 64;
    add.s32 %r7, %r7, 1;
    setp.lt.u32 %p1, %r7, %r1;
    @%p1 bra LOOP;
    // Epilogue: row warp*16 + lane/4 (+8), column 8*tile + 2*(lane%4).
    shr.u32 %r44, %r3, 2;
    and.b32 %r45, %r3, 3;
    shl.b32 %r45, %r45, 1;
    shl.b32 %r46, %r4, 4;
    add.s32 %r46, %r46, %r44;
    add.s32 %r46, %r46, %r18;
    shl.b32 %r46, %r46, 5;
    add.s32 %r46, %r46, %r45;
    mul.wide.u32 %rd7, %r46, 4;
    add.s64 %rd7, %rd3, %rd7;
    st.global.v2.f32 [%rd7], {%f0, %f1};
    st.global.v2.f32 [%rd7+1024], {%f2, %f3};
    st.global.v2.f32 [%rd7+32], {%f4, %f5};
    st.global.v2.f32 [%rd7+1056], {%f6, %f7};
    st.global.v2.f32 [%rd7+64], {%f8, %f9};
    st.global.v2.f32 [%rd7+1088], {%f10, %f11};
    st.global.v2.f32 [%rd7+96], {%f12, %f13};
    st.global.v2.f32 [%rd7+1120], {%f14, %f15};
    ret;
}
"#;

/// A shared-memory histogram: integer ALU, loads, shared atomics, barriers.
const HISTOGRAM_KERNEL: &str = r#"
.version 8.0
.target sm_80
.address_size 64

.visible .entry histogram(.param .u64 pin, .param .u32 n, .param .u64 pout)
{
    .reg .pred %p<4>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<8>;
    .shared .align 4 .b32 bins[64];
    ld.param.u64 %rd1, [pin];
    ld.param.u32 %r1, [n];
    ld.param.u64 %rd2, [pout];
    mov.u32 %r2, %tid.x;
    setp.ge.u32 %p1, %r2, 64;
    shl.b32 %r3, %r2, 2;
    mov.u32 %r4, bins;
    add.s32 %r5, %r4, %r3;
    @!%p1 st.shared.u32 [%r5], 0;
    bar.sync 0;
    mov.u32 %r6, %ctaid.x;
    mov.u32 %r7, %ntid.x;
    mad.lo.s32 %r8, %r6, %r7, %r2;
    mov.u32 %r9, %nctaid.x;
    mul.lo.s32 %r9, %r9, %r7;
LOOP:
    setp.ge.u32 %p2, %r8, %r1;
    @%p2 bra DONE;
    mul.wide.u32 %rd3, %r8, 4;
    add.s64 %rd4, %rd1, %rd3;
    ld.global.nc.u32 %r10, [%rd4];
    mul.lo.s32 %r11, %r10, -1640531535;
    shr.u32 %r11, %r11, 26;
    shl.b32 %r11, %r11, 2;
    add.s32 %r12, %r4, %r11;
    atom.shared.add.u32 %r13, [%r12], 1;
    add.s32 %r8, %r8, %r9;
    bra.uni LOOP;
DONE:
    bar.sync 0;
    @%p1 bra END;
    ld.shared.u32 %r14, [%r5];
    mul.wide.u32 %rd5, %r2, 4;
    add.s64 %rd6, %rd2, %rd5;
    red.global.add.u32 [%rd6], %r14;
END:
    ret;
}
"#;

fn bf16_bits(x: f32) -> u16 {
    (x.to_bits() >> 16) as u16
}

fn params(words: &[u64], sizes: &[usize]) -> Vec<u8> {
    let mut b = Vec::new();
    for (&w, &s) in words.iter().zip(sizes) {
        while b.len() % s != 0 {
            b.push(0);
        }
        b.extend_from_slice(&w.to_le_bytes()[..s]);
    }
    b
}

fn bench(c: &mut Criterion) {
    let mem = DeviceMemory::new(256 << 20);
    // bs_like: 8 CTAs of 64 rows, K = 512 (16 k-tiles).
    let (ctas, ktiles) = (8u32, 16u32);
    let k = ktiles as usize * 32;
    let rows = ctas as usize * 64;
    let a: Vec<u8> = (0..rows * k)
        .flat_map(|i| bf16_bits(((i % 7) as f32 - 3.0) / 4.0).to_le_bytes())
        .collect();
    let b: Vec<u8> = (0..32 * k)
        .flat_map(|i| bf16_bits(((i % 5) as f32 - 2.0) / 2.0).to_le_bytes())
        .collect();
    let (da, db) = (
        mem.alloc(a.len() as u64).unwrap(),
        mem.alloc(b.len() as u64).unwrap(),
    );
    mem.write(da, &a).unwrap();
    mem.write(db, &b).unwrap();
    let dc = mem.alloc((rows * 32 * 4) as u64).unwrap();
    let mma = Program::from_ptx(MMA_KERNEL).expect("bench kernel loads");
    let mma_params = params(&[da, db, dc, ktiles as u64], &[8, 8, 8, 4]);
    let mma_cfg = LaunchConfig {
        grid: [ctas, 1, 1],
        block: [128, 1, 1],
        dynamic_shared_bytes: 0,
        max_dynamic_shared_bytes: 48 << 10,
    };

    // histogram: 1M inputs over 64 CTAs of 256 threads.
    let n = 1 << 20;
    let input: Vec<u8> = (0..n as u32).flat_map(|i| i.to_le_bytes()).collect();
    let din = mem.alloc(input.len() as u64).unwrap();
    mem.write(din, &input).unwrap();
    let dout = mem.alloc(256).unwrap();
    let hist = Program::from_ptx(HISTOGRAM_KERNEL).expect("bench kernel loads");
    let hist_params = params(&[din, n as u64, dout], &[8, 4, 8]);
    let hist_cfg = LaunchConfig {
        grid: [64, 1, 1],
        block: [256, 1, 1],
        dynamic_shared_bytes: 0,
        max_dynamic_shared_bytes: 48 << 10,
    };

    let cases = [
        ("block_sparse_like", &mma, "bs_like", &mma_cfg, &mma_params),
        ("histogram", &hist, "histogram", &hist_cfg, &hist_params),
    ];
    for (name, program, kernel, cfg, prm) in cases {
        let counted = Settings {
            profile: true,
            ..Settings::default()
        };
        let profile = launch(program, kernel, cfg, prm, &mem, &counted).expect("bench kernel runs");
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(profile.thread_instructions));
        group.sample_size(10);
        for checks in [true, false] {
            let settings = Settings {
                checks,
                ..Settings::default()
            };
            let label = if checks { "checks" } else { "no checks" };
            group.bench_function(label, |bench| {
                bench.iter(|| {
                    mem.write(dout, &[0; 256]).unwrap();
                    launch(program, kernel, cfg, prm, &mem, &settings).unwrap()
                })
            });
            let start = std::time::Instant::now();
            launch(program, kernel, cfg, prm, &mem, &settings).unwrap();
            let rate = profile.thread_instructions as f64 / start.elapsed().as_secs_f64() / 1e6;
            println!(
                "{name} ({label}): {} thread-instructions, {rate:.1} M/s",
                profile.thread_instructions
            );
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
