//! Memory instructions: load/store widths and sign extension, vectors,
//! global and shared atomics under contention, `cp.async` groups and
//! zero-fill, bounds and alignment.

mod exec_support;

use dropless_emu::exec::LaunchErrorKind;
use exec_support::{expect_error, seeded, Arg, Gpu, SEEDS};

#[test]
fn load_widths_extend_per_type() {
    // Thread 0 loads bytes and halves of one word with every type and
    // stores the 32-bit register values.
    let gpu = Gpu::default();
    let input = gpu.bytes(&[
        0x81, 0x7f, 0xfe, 0x80, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ]);
    let out = gpu.zeros(12);
    let ptx = r#"
.visible .entry k(.param .u64 pin, .param .u64 pout)
{
    .reg .b16 %rs<4>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [pin];
    ld.param.u64 %rd2, [pout];
    ld.global.u8 %r1, [%rd1];
    ld.global.s8 %r2, [%rd1];
    ld.global.s8 %r3, [%rd1+1];
    ld.global.u16 %r4, [%rd1+2];
    ld.global.s16 %r5, [%rd1+2];
    ld.global.u16 %rs1, [%rd1+2];
    mov.b32 %r6, {%rs1, %rs1};
    ld.global.v2.u32 {%r7, %r8}, [%rd1+8];
    ld.global.u64 %rd3, [%rd1+8];
    mov.b64 {%r9, %r10}, %rd3;
    st.global.v4.u32 [%rd2], {%r1, %r2, %r3, %r4};
    st.global.v4.u32 [%rd2+16], {%r5, %r6, %r7, %r8};
    st.global.v2.u32 [%rd2+32], {%r9, %r10};
    st.global.u16 [%rd2+40], %rs1;
    st.global.u8 [%rd2+42], %r3;
    ret;
}
"#;
    gpu.run(ptx, "k", 1, 1, &[Arg::U64(input), Arg::U64(out)])
        .unwrap();
    let got = gpu.read_u32(out, 11);
    assert_eq!(
        got,
        vec![
            0x81,
            0xffff_ff81,
            0x7f,
            0x80fe,
            0xffff_80fe,
            0x80fe_80fe,
            0x0807_0605,
            0x0c0b_0a09,
            0x0807_0605,
            0x0c0b_0a09,
            0x007f_80fe
        ]
    );
}

#[test]
fn global_and_shared_atomics_under_contention() {
    let gpu = Gpu::default();
    let counters = gpu.u32s(&[0, 0, 0, 0, 0, 0]);
    let ptx = r#"
.visible .entry k(.param .u64 pc)
{
    .reg .pred %p<3>;
    .reg .b32 %r<10>;
    .reg .b64 %rd<6>;
    .shared .align 4 .b32 local_sum;
    ld.param.u64 %rd1, [pc];
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mad.lo.s32 %r4, %r2, %r3, %r1;
    setp.ne.u32 %p1, %r1, 0;
    @%p1 bra INIT_DONE;
    st.shared.u32 [local_sum], 0;
INIT_DONE:
    bar.sync 0;
    atom.shared.add.u32 %r5, [local_sum], 1;
    atom.global.add.u32 %r6, [%rd1], 1;
    atom.global.max.u32 %r6, [%rd1+4], %r4;
    atom.global.min.s32 %r6, [%rd1+8], %r4;
    mov.u64 %rd2, 0;
    cvt.u64.u32 %rd3, %r4;
    atom.global.max.u64 %rd4, [%rd1+16], %rd3;
LOOP:
    ld.global.u32 %r7, [%rd1+12];
    add.s32 %r8, %r7, 2;
    atom.global.cas.b32 %r9, [%rd1+12], %r7, %r8;
    setp.ne.u32 %p2, %r9, %r7;
    @%p2 bra LOOP;
    bar.sync 0;
    @%p1 bra END;
    ld.shared.u32 %r5, [local_sum];
    red.global.add.u32 [%rd1], %r5;
END:
    ret;
}
"#;
    for seed in SEEDS {
        gpu.mem.write(counters, &[0; 24]).unwrap();
        gpu.run_with(
            ptx,
            "k",
            [8, 1, 1],
            [256, 1, 1],
            0,
            &[Arg::U64(counters)],
            &seeded(seed),
        )
        .unwrap();
        let got = gpu.read_u32(counters, 6);
        assert_eq!(got, vec![4096, 2047, 0, 4096, 2047, 0], "seed {seed:?}");
    }
}

#[test]
fn cp_async_groups_complete_in_order_and_zero_fill() {
    // Thread 0 issues three groups into shared memory (the last with
    // src-size 4: 12 zero bytes), waits with wait_group 1 (first two groups
    // done) then wait_all, and copies the shared bytes out.
    let gpu = Gpu::default();
    let src: Vec<u8> = (1..=48).collect();
    let input = gpu.bytes(&src);
    let out = gpu.bytes(&[0xee; 48]);
    let ptx = r#"
.visible .entry k(.param .u64 pin, .param .u64 pout)
{
    .reg .b32 %r<16>;
    .reg .b64 %rd<4>;
    .shared .align 16 .b8 buf[48];
    ld.param.u64 %rd1, [pin];
    ld.param.u64 %rd2, [pout];
    mov.u32 %r1, buf;
    cp.async.cg.shared.global [%r1], [%rd1], 16;
    cp.async.commit_group;
    cp.async.ca.shared.global [%r1+16], [%rd1+16], 16, 16;
    cp.async.commit_group;
    cp.async.cg.shared.global [%r1+32], [%rd1+32], 16, 4;
    cp.async.commit_group;
    cp.async.wait_group 1;
    ld.shared.v4.u32 {%r2, %r3, %r4, %r5}, [buf];
    ld.shared.v4.u32 {%r6, %r7, %r8, %r9}, [buf+16];
    cp.async.wait_all;
    ld.shared.v4.u32 {%r10, %r11, %r12, %r13}, [buf+32];
    st.global.v4.u32 [%rd2], {%r2, %r3, %r4, %r5};
    st.global.v4.u32 [%rd2+16], {%r6, %r7, %r8, %r9};
    st.global.v4.u32 [%rd2+32], {%r10, %r11, %r12, %r13};
    ret;
}
"#;
    gpu.run(ptx, "k", 1, 1, &[Arg::U64(input), Arg::U64(out)])
        .unwrap();
    let got = gpu.read_bytes(out, 48);
    let mut want: Vec<u8> = (1..=36).collect();
    want.extend([0u8; 12]);
    assert_eq!(got, want);
}

#[test]
fn cp_async_with_src_size_zero_needs_no_valid_source() {
    let gpu = Gpu::default();
    let out = gpu.bytes(&[0xee; 16]);
    let ptx = r#"
.visible .entry k(.param .u64 pout)
{
    .reg .b32 %r<6>;
    .reg .b64 %rd<4>;
    .shared .align 16 .b8 buf[16];
    ld.param.u64 %rd2, [pout];
    mov.u64 %rd1, 16;
    mov.u32 %r1, buf;
    cp.async.cg.shared.global [%r1], [%rd1], 16, 0;
    cp.async.commit_group;
    cp.async.wait_group 0;
    ld.shared.v4.u32 {%r2, %r3, %r4, %r5}, [buf];
    st.global.v4.u32 [%rd2], {%r2, %r3, %r4, %r5};
    ret;
}
"#;
    gpu.run(ptx, "k", 1, 1, &[Arg::U64(out)]).unwrap();
    assert_eq!(gpu.read_bytes(out, 16), vec![0; 16]);
}

#[test]
fn copies_pending_at_exit_are_performed() {
    // Thread 0 issues a copy and exits without waiting; after a barrier
    // thread 32 (another warp) would read it — the exit performed it, so
    // only the barrier orders it (no report), and the data is there.
    let gpu = Gpu::default();
    let input = gpu.u32s(&[9, 8, 7, 6]);
    let out = gpu.zeros(4);
    let ptx = r#"
.visible .entry k(.param .u64 pin, .param .u64 pout)
{
    .reg .pred %p<3>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<4>;
    .shared .align 16 .b8 buf[16];
    ld.param.u64 %rd1, [pin];
    ld.param.u64 %rd2, [pout];
    mov.u32 %r1, %tid.x;
    setp.ne.u32 %p1, %r1, 0;
    @%p1 bra OTHER;
    mov.u32 %r2, buf;
    cp.async.cg.shared.global [%r2], [%rd1], 16;
    exit;
OTHER:
    bar.sync 0;
    setp.ne.u32 %p2, %r1, 32;
    @%p2 bra END;
    ld.shared.v4.u32 {%r3, %r4, %r5, %r6}, [buf];
    st.global.v4.u32 [%rd2], {%r3, %r4, %r5, %r6};
END:
    ret;
}
"#;
    for seed in SEEDS {
        gpu.mem.write(out, &[0; 16]).unwrap();
        gpu.run_with(
            ptx,
            "k",
            [1, 1, 1],
            [64, 1, 1],
            0,
            &[Arg::U64(input), Arg::U64(out)],
            &seeded(seed),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gpu.read_u32(out, 4), vec![9, 8, 7, 6]);
    }
}

#[test]
fn out_of_bounds_and_misaligned_accesses_are_refused() {
    let gpu = Gpu::default();
    let buf = gpu.zeros(4);
    let ptx = |line: &str| {
        format!(
            r#"
.visible .entry k(.param .u64 p)
{{
    .reg .b32 %r<6>;
    .reg .b64 %rd<4>;
    .shared .align 4 .b8 sm[16];
    ld.param.u64 %rd1, [p];
    mov.u32 %r1, 0;
    mov.u32 %r3, sm;
    {line}
    ret;
}}
"#
        )
    };
    let args = [Arg::U64(buf)];
    expect_error(
        gpu.run(&ptx("st.global.u32 [%rd1+16], %r1;"), "k", 1, 1, &args),
        LaunchErrorKind::IllegalAddress,
        &[
            "outside every live allocation",
            "st.global.u32 [%rd1+16], %r1",
        ],
    );
    expect_error(
        gpu.run(&ptx("ld.global.u32 %r2, [%rd1+2];"), "k", 1, 1, &args),
        LaunchErrorKind::Misaligned,
        &["not aligned"],
    );
    expect_error(
        gpu.run(
            &ptx("ld.global.v4.u32 {%r1, %r2, %r4, %r5}, [%rd1+4];"),
            "k",
            1,
            1,
            &args,
        ),
        LaunchErrorKind::Misaligned,
        &["16 bytes"],
    );
    expect_error(
        gpu.run(&ptx("st.shared.u32 [%r3+16], %r1;"), "k", 1, 1, &args),
        LaunchErrorKind::IllegalAddress,
        &["16-byte shared window"],
    );
    expect_error(
        gpu.run(&ptx("st.shared.u32 [%r3+2], %r1;"), "k", 1, 1, &args),
        LaunchErrorKind::Misaligned,
        &["shared address 0x2"],
    );
    // Bounds stay on when the sanitizer checks are off.
    let off = dropless_emu::settings::Settings {
        checks: false,
        ..Default::default()
    };
    expect_error(
        gpu.run_with(
            &ptx("st.global.u32 [%rd1+16], %r1;"),
            "k",
            [1, 1, 1],
            [1, 1, 1],
            0,
            &args,
            &off,
        ),
        LaunchErrorKind::IllegalAddress,
        &["outside"],
    );
}

#[test]
fn dynamic_shared_follows_the_static_variables() {
    // Static 12 bytes at 0, dynamic aligned to 16: extern starts at 16.
    let gpu = Gpu::default();
    let out = gpu.zeros(2);
    let ptx = r#"
.extern .shared .align 16 .b8 dyn[];
.shared .align 4 .b8 unused_here[64];
.visible .entry k(.param .u64 p)
{
    .reg .b32 %r<4>;
    .reg .b64 %rd<2>;
    .shared .align 4 .b8 stat[12];
    ld.param.u64 %rd1, [p];
    mov.u32 %r1, stat;
    mov.u32 %r2, dyn;
    st.shared.u32 [dyn+60], %r2;
    st.global.v2.u32 [%rd1], {%r1, %r2};
    ret;
}
"#;
    gpu.run_with(
        ptx,
        "k",
        [1, 1, 1],
        [1, 1, 1],
        64,
        &[Arg::U64(out)],
        &Default::default(),
    )
    .unwrap();
    assert_eq!(gpu.read_u32(out, 2), vec![0, 16]);
    expect_error(
        gpu.run_with(
            ptx,
            "k",
            [1, 1, 1],
            [1, 1, 1],
            60,
            &[Arg::U64(out)],
            &Default::default(),
        ),
        LaunchErrorKind::IllegalAddress,
        &["76-byte shared window"],
    );
}
