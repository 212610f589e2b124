//! The sanitizer checks: for each, a kernel that violates it and must be
//! reported, and a correct one that must pass. Also the launch
//! configuration checks and the decoder's refusals.

mod exec_support;

use dropless_emu::exec::{launch, LaunchConfig, LaunchErrorKind, Program};
use dropless_emu::settings::Settings;
use exec_support::{expect_error, module, seeded, Arg, Gpu, SEEDS};

/// Runs a one-CTA kernel `k(.param .u64 p)` over `threads` threads with a
/// 16-word buffer, under every seed.
fn run_all(ptx: &str, threads: u32) -> Vec<Result<(), dropless_emu::exec::LaunchError>> {
    SEEDS
        .iter()
        .map(|&seed| {
            let gpu = Gpu::default();
            let buf = gpu.zeros(16);
            gpu.run_with(
                ptx,
                "k",
                [1, 1, 1],
                [threads, 1, 1],
                0,
                &[Arg::U64(buf)],
                &seeded(seed),
            )
            .map(|_| ())
        })
        .collect()
}

fn passes(ptx: &str, threads: u32) {
    for r in run_all(ptx, threads) {
        if let Err(e) = r {
            panic!("unexpected failure:\n{e}");
        }
    }
}

fn fails(ptx: &str, threads: u32, kind: LaunchErrorKind, words: &[&str]) {
    for r in run_all(ptx, threads) {
        expect_error(r.map(|_| Default::default()), kind, words);
    }
}

/// Thread 0 initialises `sm[0]`, all meet at a barrier, thread 0 writes
/// it again and thread `reader` reads it after `sync`.
fn write_then_read(reader: u32, sync: &str) -> String {
    format!(
        r#"
.visible .entry k(.param .u64 p)
{{
    .reg .pred %p<3>;
    .reg .b32 %r<6>;
    .reg .b64 %rd<2>;
    .shared .align 4 .b32 sm[4];
    ld.param.u64 %rd1, [p];
    mov.u32 %r1, %tid.x;
    setp.ne.u32 %p1, %r1, 0;
    @%p1 bra INIT;
    st.shared.u32 [sm], 0;
INIT:
    bar.sync 0;
    @%p1 bra SYNC;
    st.shared.u32 [sm], 42;
SYNC:
    {sync}
    setp.ne.u32 %p2, %r1, {reader};
    @%p2 bra END;
    ld.shared.u32 %r2, [sm];
    st.global.u32 [%rd1], %r2;
END:
    ret;
}}
"#
    )
}

#[test]
fn shared_races_between_warps() {
    fails(
        &write_then_read(32, ""),
        64,
        LaunchErrorKind::CheckFailed,
        &["race", "thread (0, 0, 0)", "thread (32, 0, 0)"],
    );
    passes(&write_then_read(32, "bar.sync 0;"), 64);
}

#[test]
fn shared_races_within_a_warp() {
    fails(
        &write_then_read(1, ""),
        32,
        LaunchErrorKind::CheckFailed,
        &["race", "st.shared.u32 [sm], 42"],
    );
    passes(&write_then_read(1, "bar.warp.sync -1;"), 32);
    passes(&write_then_read(0, ""), 32);
}

#[test]
fn write_after_read_races_and_atomics() {
    // Thread 5 reads sm[0] while thread 6 overwrites it without a barrier.
    let war = |sync: &str| {
        format!(
            r#"
.visible .entry k(.param .u64 p)
{{
    .reg .pred %p<3>;
    .reg .b32 %r<6>;
    .reg .b64 %rd<2>;
    .shared .align 4 .b32 sm[4];
    mov.u32 %r1, %tid.x;
    setp.ne.u32 %p1, %r1, 0;
    @%p1 bra A;
    st.shared.u32 [sm], 1;
A:
    bar.sync 0;
    setp.ne.u32 %p1, %r1, 5;
    @%p1 bra B;
    ld.shared.u32 %r2, [sm];
B:
    {sync}
    setp.ne.u32 %p1, %r1, 6;
    @%p1 bra C;
    st.shared.u32 [sm], 2;
C:
    atom.shared.add.u32 %r3, [sm+4], 1;
    ret;
}}
"#
        )
    };
    // sm[1] is never initialised: write it first in both variants.
    let fix = |s: String| {
        s.replace(
            "st.shared.u32 [sm], 1;",
            "st.shared.u32 [sm], 1;\n    st.shared.u32 [sm+4], 0;",
        )
    };
    fails(
        &fix(war("")),
        64,
        LaunchErrorKind::CheckFailed,
        &["race", "earlier read by thread (5, 0, 0)"],
    );
    passes(&fix(war("bar.sync 0;")), 64);
}

#[test]
fn uninitialised_shared_reads() {
    let ptx = |init: &str| {
        format!(
            r#"
.visible .entry k(.param .u64 p)
{{
    .reg .b32 %r<4>;
    .shared .align 4 .b32 sm[4];
    {init}
    bar.sync 0;
    ld.shared.u32 %r1, [sm+8];
    ret;
}}
"#
        )
    };
    fails(
        &ptx(""),
        32,
        LaunchErrorKind::CheckFailed,
        &["no thread of this CTA wrote", "ld.shared.u32 %r1, [sm+8]"],
    );
    fails(
        &ptx("st.shared.u16 [sm+8], 0;"),
        1,
        LaunchErrorKind::CheckFailed,
        &["no thread"],
    );
    // Every thread writing the same word is itself a race.
    fails(
        &ptx("st.shared.u32 [sm+8], 0;"),
        32,
        LaunchErrorKind::CheckFailed,
        &["race"],
    );
    passes(&ptx("st.shared.u32 [sm+8], 0;"), 1);
}

#[test]
fn cp_async_destination_read_before_its_wait() {
    let ptx = |wait: &str| {
        format!(
            r#"
.visible .entry k(.param .u64 p)
{{
    .reg .b32 %r<4>;
    .reg .b64 %rd<2>;
    .shared .align 16 .b8 sm[16];
    ld.param.u64 %rd1, [p];
    mov.u32 %r1, sm;
    cp.async.cg.shared.global [%r1], [%rd1], 16;
    cp.async.commit_group;
    {wait}
    ld.shared.u32 %r2, [sm+4];
    ret;
}}
"#
        )
    };
    fails(
        &ptx(""),
        1,
        LaunchErrorKind::CheckFailed,
        &["cp.async destination read before cp.async.wait_group"],
    );
    fails(
        &ptx("cp.async.wait_group 1;"),
        1,
        LaunchErrorKind::CheckFailed,
        &["cp.async.wait_group"],
    );
    passes(&ptx("cp.async.wait_group 0;"), 1);
    passes(&ptx("cp.async.wait_all;"), 1);
}

#[test]
fn stores_to_bytes_read_through_nc() {
    let ptx = |store_offset: u32| {
        format!(
            r#"
.visible .entry k(.param .u64 p)
{{
    .reg .b32 %r<4>;
    .reg .b64 %rd<2>;
    ld.param.u64 %rd1, [p];
    ld.global.nc.u32 %r1, [%rd1+8];
    st.global.u32 [%rd1+{store_offset}], %r1;
    ret;
}}
"#
        )
    };
    fails(
        &ptx(8),
        1,
        LaunchErrorKind::CheckFailed,
        &["read through ld.global.nc"],
    );
    passes(&ptx(12), 1);
    // The other order: a store, then an .nc load of the same bytes.
    let ptx2 = r#"
.visible .entry k(.param .u64 p)
{
    .reg .b32 %r<4>;
    .reg .b64 %rd<2>;
    ld.param.u64 %rd1, [p];
    st.global.u32 [%rd1+4], 3;
    ld.global.nc.u32 %r1, [%rd1+4];
    ret;
}
"#;
    fails(
        ptx2,
        1,
        LaunchErrorKind::CheckFailed,
        &["ld.global.nc of", "which this launch wrote"],
    );
    let gpu = Gpu::default();
    let buf = gpu.zeros(4);
    let off = Settings {
        checks: false,
        ..Default::default()
    };
    gpu.run_with(ptx2, "k", [1, 1, 1], [1, 1, 1], 0, &[Arg::U64(buf)], &off)
        .unwrap();
}

#[test]
fn aligned_instructions_need_the_converged_warp() {
    let ptx = |cond: &str| {
        format!(
            r#"
.visible .entry k(.param .u64 p)
{{
    .reg .pred %p<2>;
    .reg .b32 %r<8>;
    .shared .align 16 .b8 sm[512];
    mov.u32 %r1, %laneid;
    shl.b32 %r2, %r1, 4;
    mov.u32 %r3, sm;
    add.s32 %r3, %r3, %r2;
    st.shared.v4.u32 [%r3], {{%r1, %r1, %r1, %r1}};
    bar.warp.sync -1;
    setp.lt.u32 %p1, %r1, {cond};
    @%p1 bra SKIP;
    ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{%r4, %r5, %r6, %r7}}, [%r3];
SKIP:
    bar.sync 0;
    ret;
}}
"#
        )
    };
    fails(
        &ptx("4"),
        32,
        LaunchErrorKind::CheckFailed,
        &[".aligned", "lane 0 at PTX line"],
    );
    passes(&ptx("0"), 32);
    // bar.sync reached by half a warp.
    let half = r#"
.visible .entry k(.param .u64 p)
{
    .reg .pred %p<2>;
    .reg .b32 %r<2>;
    mov.u32 %r1, %laneid;
    setp.lt.u32 %p1, %r1, 16;
    @%p1 bra END;
    bar.sync 0;
END:
    ret;
}
"#;
    fails(
        half,
        32,
        LaunchErrorKind::CheckFailed,
        &[".aligned", "bar.sync 0"],
    );
}

#[test]
fn lanes_outside_their_own_membermask() {
    let ptx = r#"
.visible .entry k(.param .u64 p)
{
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    mov.u32 %r1, %laneid;
    shfl.sync.bfly.b32 %r2|%p1, %r1, 1, 31, 0x0000fffe;
    ret;
}
"#;
    fails(
        ptx,
        32,
        LaunchErrorKind::CheckFailed,
        &["not in its own membermask"],
    );
}

#[test]
fn launch_configuration_checks() {
    let gpu = Gpu::default();
    let p = Program::from_ptx(&module(
        r#"
.visible .entry bounded(.param .u32 x) .maxntid 64, 1, 1
{
    ret;
}
.visible .entry exact(.param .u32 x) .reqntid 32, 2, 1
{
    ret;
}
.visible .entry big()
{
    .shared .align 4 .b8 s[100000];
    ret;
}
"#,
    ))
    .unwrap();
    let cfg = |block: [u32; 3], dynamic: u32, max: u32| LaunchConfig {
        grid: [1, 1, 1],
        block,
        dynamic_shared_bytes: dynamic,
        max_dynamic_shared_bytes: max,
    };
    let s = Settings::default();
    let run = |k: &str, c: LaunchConfig, params: &[u8]| launch(&p, k, &c, params, &gpu.mem, &s);
    let four = [0u8; 4];
    assert!(run("bounded", cfg([64, 1, 1], 0, 48 << 10), &four).is_ok());
    expect_error(
        run("bounded", cfg([65, 1, 1], 0, 48 << 10), &four),
        LaunchErrorKind::InvalidConfig,
        &[".maxntid"],
    );
    expect_error(
        run("exact", cfg([64, 1, 1], 0, 48 << 10), &four),
        LaunchErrorKind::InvalidConfig,
        &[".reqntid"],
    );
    assert!(run("exact", cfg([32, 2, 1], 0, 48 << 10), &four).is_ok());
    expect_error(
        run("bounded", cfg([0, 1, 1], 0, 48 << 10), &four),
        LaunchErrorKind::InvalidConfig,
        &["1 to 1024"],
    );
    expect_error(
        run("bounded", cfg([1025, 1, 1], 0, 48 << 10), &four),
        LaunchErrorKind::InvalidConfig,
        &["1 to 1024"],
    );
    expect_error(
        run("bounded", cfg([32, 1, 1], 50 << 10, 48 << 10), &four),
        LaunchErrorKind::InvalidConfig,
        &["above the function's limit"],
    );
    expect_error(
        run("bounded", cfg([32, 1, 1], 0, 48 << 10), &[0u8; 8]),
        LaunchErrorKind::InvalidConfig,
        &["8 bytes"],
    );
    expect_error(
        run("big", cfg([32, 1, 1], 80_000, 100_000), &[]),
        LaunchErrorKind::InvalidConfig,
        &["100000 static + 80000 dynamic"],
    );
    let mut zero_grid = cfg([32, 1, 1], 0, 48 << 10);
    zero_grid.grid = [0, 1, 1];
    expect_error(
        run("bounded", zero_grid, &four),
        LaunchErrorKind::InvalidConfig,
        &["grid"],
    );
    expect_error(
        run("missing", cfg([32, 1, 1], 0, 48 << 10), &four),
        LaunchErrorKind::InvalidConfig,
        &["no kernel named missing"],
    );
}

#[test]
fn the_decoder_refuses_what_it_does_not_implement() {
    let load = |body: &str| {
        Program::from_ptx(&module(&format!(
            ".visible .entry k()\n{{\n    .reg .b32 %r<4>;\n    {body}\n    ret;\n}}\n"
        )))
    };
    let e = load("prmt.b32 %r1, %r2, %r3, %r0;").unwrap_err();
    assert_eq!(e.line, 8, "{e}");
    assert!(e.message.contains("prmt.b32 %r1, %r2, %r3, %r0"), "{e}");
    let e = load("add.sat.s32 %r1, %r2, %r3;").unwrap_err();
    assert!(
        e.message.contains("add.sat.s32") && e.message.contains(".sat"),
        "{e}"
    );
    let e = load("ld.u32 %r1, [%r2];").unwrap_err();
    assert!(e.message.contains("generic addressing"), "{e}");
    let e = load("add.s32 %r1, %r9, 1;").unwrap_err();
    assert!(e.message.contains("%r9 is not a declared register"), "{e}");
    let e = load("bra NOWHERE;").unwrap_err();
    assert!(e.message.contains("NOWHERE"), "{e}");
}
