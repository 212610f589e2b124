//! Control flow under independent thread scheduling, warp collectives
//! (`shfl.sync`, `vote.sync`, `match.sync`, `redux.sync`, `bar.warp.sync`)
//! with partial membermasks and exited lanes, CTA barriers with exited
//! threads, deadlocks, and `call.uni` — every test under the fixed order and
//! several seeded schedules.

mod exec_support;

use dropless_emu::exec::LaunchErrorKind;
use exec_support::{expect_error, seeded, Arg, Gpu, SEEDS};

/// A kernel over one output word per thread: `body` leaves the value in %r4
/// (%r1 = linear thread id, %r2 = lane); a lane that exits stores nothing.
fn kernel(body: &str) -> String {
    format!(
        r#"
.visible .entry k(.param .u64 pout)
{{
    .reg .pred %p<8>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [pout];
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, %laneid;
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    mov.u32 %r4, 0xdead;
    {body}
    st.global.u32 [%rd3], %r4;
    ret;
}}
"#
    )
}

/// Runs `body` over `threads` threads (one CTA) under every seed and
/// compares with `want(tid)` (`None`: the thread stores nothing).
fn check(body: &str, threads: u32, want: impl Fn(u32) -> Option<u32>) {
    for seed in SEEDS {
        let gpu = Gpu::default();
        let out = gpu.u32s(&vec![0x5555_5555; threads as usize]);
        gpu.run_with(
            &kernel(body),
            "k",
            [1, 1, 1],
            [threads, 1, 1],
            0,
            &[Arg::U64(out)],
            &seeded(seed),
        )
        .unwrap_or_else(|e| panic!("seed {seed:?}: {e}"));
        let got = gpu.read_u32(out, threads as usize);
        for t in 0..threads {
            let w = want(t).unwrap_or(0x5555_5555);
            assert_eq!(
                got[t as usize], w,
                "seed {seed:?}, thread {t}: got {:#x}, want {w:#x}",
                got[t as usize]
            );
        }
    }
}

#[test]
fn divergent_if_else_and_reconvergence() {
    // Odd lanes take one side, even the other; after the join a full-mask
    // shuffle needs every lane back together.
    check(
        r#"
    and.b32 %r5, %r1, 1;
    setp.eq.s32 %p1, %r5, 0;
    @%p1 bra EVEN;
    mul.lo.s32 %r6, %r1, 3;
    bra.uni JOIN;
EVEN:
    add.s32 %r6, %r1, 1000;
JOIN:
    shfl.sync.idx.b32 %r4|%p2, %r6, 0, 31, -1;
    add.s32 %r4, %r4, %r6;
"#,
        64,
        |t| {
            let v = |x: u32| if x.is_multiple_of(2) { x + 1000 } else { x * 3 };
            Some(v(t - t % 32) + v(t))
        },
    );
}

#[test]
fn loops_with_per_lane_trip_counts() {
    // Lane l iterates l times (sum 0..l), nested with an inner loop of
    // (l % 3) iterations each adding 1.
    check(
        r#"
    mov.u32 %r4, 0;
    mov.u32 %r5, 0;
OUTER:
    setp.ge.u32 %p1, %r5, %r2;
    @%p1 bra DONE;
    add.s32 %r4, %r4, %r5;
    rem.u32 %r7, %r2, 3;
    mov.u32 %r8, 0;
INNER:
    setp.ge.u32 %p2, %r8, %r7;
    @%p2 bra NEXT;
    add.s32 %r4, %r4, 1;
    add.s32 %r8, %r8, 1;
    bra.uni INNER;
NEXT:
    add.s32 %r5, %r5, 1;
    bra.uni OUTER;
DONE:
    bar.warp.sync -1;
"#,
        96,
        |t| {
            let l = t % 32;
            Some((0..l).sum::<u32>() + l * (l % 3))
        },
    );
}

#[test]
fn shuffles_of_every_mode_and_the_predicate() {
    // up 1 / down 3 / bfly 5 / idx 7, whole warp (c = 31 or 0); the
    // predicate tells whether the source lane was in range.
    let modes = [
        (
            "up",
            1,
            0,
            Box::new(|l: u32| if l >= 1 { Some(l - 1) } else { None })
                as Box<dyn Fn(u32) -> Option<u32>>,
        ),
        (
            "down",
            3,
            31,
            Box::new(|l: u32| if l + 3 <= 31 { Some(l + 3) } else { None }),
        ),
        ("bfly", 5, 31, Box::new(|l: u32| Some(l ^ 5))),
        ("idx", 7, 31, Box::new(|_| Some(7))),
    ];
    for (mode, b, c, src) in modes {
        check(
            &format!(
                "mul.lo.s32 %r6, %r1, 10; shfl.sync.{mode}.b32 %r7|%p1, %r6, {b}, {c}, -1; selp.b32 %r8, 1, 0, %p1; mad.lo.s32 %r4, %r7, 2, %r8;"
            ),
            64,
            |t| {
                let (w, l) = (t - t % 32, t % 32);
                Some(match src(l) {
                    Some(j) => (w + j) * 10 * 2 + 1,
                    None => t * 10 * 2,
                })
            },
        );
    }
    // Segments of 8 lanes (c = ((32 - 8) << 8) | 7): idx 3 reads lane 3 of
    // the lane's own segment.
    check("shfl.sync.idx.b32 %r4|%p1, %r1, 3, 0x1807, -1;", 32, |t| {
        Some(t - t % 8 + 3)
    });
}

#[test]
fn collectives_with_partial_masks_in_divergent_halves() {
    // Each half of the warp shuffles and reduces within its own mask while
    // the other half is elsewhere.
    check(
        r#"
    setp.lt.u32 %p1, %r2, 16;
    @%p1 bra LOW;
    shfl.sync.idx.b32 %r6|%p2, %r1, 20, 31, 0xffff0000;
    redux.sync.max.u32 %r7, %r1, 0xffff0000;
    bra.uni JOIN;
LOW:
    shfl.sync.idx.b32 %r6|%p2, %r1, 3, 31, 0x0000ffff;
    redux.sync.min.s32 %r7, %r1, 0x0000ffff;
JOIN:
    add.s32 %r4, %r6, %r7;
"#,
        32,
        |t| Some(if t < 16 { 3 } else { 20 + 31 }),
    );
}

#[test]
fn exited_lanes_are_not_waited_for() {
    // Lanes 24..32 exit; a full-mask vote/ballot/shuffle/match/redux among
    // the rest completes, reading an exited lane gives the reader's own value.
    check(
        r#"
    setp.ge.u32 %p1, %r2, 24;
    @%p1 exit;
    setp.lt.u32 %p2, %r2, 4;
    vote.sync.ballot.b32 %r5, %p2, -1;
    vote.sync.any.pred %p3, %p2, -1;
    vote.sync.all.pred %p4, %p2, -1;
    vote.sync.uni.pred %p5, %p2, -1;
    selp.b32 %r6, 1, 0, %p3;
    selp.b32 %r7, 2, 0, %p4;
    selp.b32 %r8, 4, 0, %p5;
    add.s32 %r6, %r6, %r7;
    add.s32 %r6, %r6, %r8;
    shfl.sync.bfly.b32 %r9|%p6, %r2, 16, 31, -1;
    and.b32 %r10, %r2, 3;
    match.any.sync.b32 %r11, %r10, -1;
    redux.sync.add.u32 %r12, %r2, -1;
    xor.b32 %r4, %r5, %r6;
    shl.b32 %r9, %r9, 8;
    xor.b32 %r4, %r4, %r9;
    xor.b32 %r4, %r4, %r11;
    xor.b32 %r4, %r4, %r12;
"#,
        32,
        |t| {
            if t >= 24 {
                return None;
            }
            let ballot = 0xfu32;
            let flags = 1; // any, not all, not uniform
            let partner = t ^ 16;
            let shfl = if partner < 24 { partner } else { t };
            let peers = (0..24)
                .filter(|j| j % 4 == t % 4)
                .fold(0u32, |m, j| m | (1 << j));
            let sum: u32 = (0..24).sum();
            Some(ballot ^ flags ^ (shfl << 8) ^ peers ^ sum)
        },
    );
}

#[test]
fn match_all_and_vote_on_a_partial_mask() {
    check(
        r#"
    and.b32 %r5, %r2, 8;
    match.all.sync.b32 %r6|%p1, %r5, 0x000000ff;
    selp.b32 %r7, 1, 0, %p1;
    setp.lt.u32 %p2, %r2, 8;
    @!%p2 bra SKIP;
    match.all.sync.b32 %r6|%p1, %r5, 0x000000ff;
    selp.b32 %r7, 1, 0, %p1;
SKIP:
    shl.b32 %r4, %r7, 31;
    or.b32 %r4, %r4, %r6;
"#,
        8,
        |_| Some(0x8000_00ff),
    );
}

#[test]
fn barriers_count_only_threads_that_have_not_exited() {
    // 96 threads: warp 2 exits entirely, the upper half of warp 1 exits;
    // the rest meet at bar.sync and read what thread 0 wrote before it.
    let gpu = Gpu::default();
    let ptx = r#"
.visible .entry k(.param .u64 pout)
{
    .reg .pred %p<4>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<4>;
    .shared .align 4 .b32 flag;
    ld.param.u64 %rd1, [pout];
    mov.u32 %r1, %tid.x;
    setp.ge.u32 %p1, %r1, 48;
    @%p1 exit;
    setp.ne.u32 %p2, %r1, 0;
    @%p2 bra WAIT;
    mov.u32 %r2, 77;
    st.shared.u32 [flag], %r2;
WAIT:
    bar.sync 0;
    ld.shared.u32 %r3, [flag];
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r3;
    ret;
}
"#;
    for seed in SEEDS {
        let out = gpu.zeros(96);
        gpu.run_with(
            ptx,
            "k",
            [2, 1, 1],
            [96, 1, 1],
            0,
            &[Arg::U64(out)],
            &seeded(seed),
        )
        .unwrap();
        let got = gpu.read_u32(out, 96);
        assert!(got[..48].iter().all(|&v| v == 77), "{got:?}");
        assert!(got[48..].iter().all(|&v| v == 0));
    }
}

#[test]
fn bar_red_and_named_barriers_with_counts() {
    // bar.red.popc / .and / .or over 64 threads; then warps 0 and 1 meet at
    // barrier 1 (count 64) while warp 2 passes barrier 2 (count 32) alone.
    let gpu = Gpu::default();
    let ptx = r#"
.visible .entry k(.param .u64 pout)
{
    .reg .pred %p<6>;
    .reg .b32 %r<10>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [pout];
    mov.u32 %r1, %tid.x;
    and.b32 %r2, %r1, 3;
    setp.eq.u32 %p1, %r2, 0;
    bar.red.popc.u32 %r3, 0, %p1;
    setp.lt.u32 %p2, %r1, 200;
    bar.red.and.pred %p3, 0, %p2;
    bar.red.or.pred %p4, 0, %p1;
    selp.b32 %r4, 1000, 0, %p3;
    selp.b32 %r5, 10000, 0, %p4;
    add.s32 %r3, %r3, %r4;
    add.s32 %r3, %r3, %r5;
    setp.ge.u32 %p5, %r1, 64;
    @%p5 bra THIRD;
    barrier.sync 1, 64;
    bra.uni OUT;
THIRD:
    bar.sync 2, 32;
OUT:
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r3;
    ret;
}
"#;
    for seed in SEEDS {
        let out = gpu.zeros(96);
        gpu.run_with(
            ptx,
            "k",
            [1, 1, 1],
            [96, 1, 1],
            0,
            &[Arg::U64(out)],
            &seeded(seed),
        )
        .unwrap();
        assert!(gpu
            .read_u32(out, 96)
            .iter()
            .all(|&v| v == 24 + 1000 + 10000));
    }
}

#[test]
fn deadlocks_are_reported_with_where_threads_wait() {
    let gpu = Gpu::default();
    let ptx = r#"
.visible .entry k()
{
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    mov.u32 %r1, %tid.x;
    setp.lt.u32 %p1, %r1, 32;
    @%p1 bra FIRST;
    bar.sync 2;
    ret;
FIRST:
    bar.sync 1;
    ret;
}
"#;
    let r = gpu.run_with(ptx, "k", [1, 1, 1], [64, 1, 1], 0, &[], &Default::default());
    expect_error(
        r,
        LaunchErrorKind::Deadlock,
        &[
            "deadlock",
            "PTX line 16: bar.sync 1",
            "PTX line 13: bar.sync 2",
            "warp 1",
        ],
    );
    // A shuffle naming a lane that waits at a barrier never completes.
    let ptx = r#"
.visible .entry k()
{
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    mov.u32 %r1, %laneid;
    setp.lt.u32 %p1, %r1, 16;
    @%p1 bra LOW;
    barrier.sync 0;
    ret;
LOW:
    shfl.sync.idx.b32 %r2|%p1, %r1, 0, 31, -1;
    ret;
}
"#;
    let r = gpu.run_with(ptx, "k", [1, 1, 1], [32, 1, 1], 0, &[], &Default::default());
    expect_error(
        r,
        LaunchErrorKind::Deadlock,
        &["membermask 0xffffffff", "at a barrier"],
    );
}

#[test]
fn call_uni_passes_params_and_returns() {
    let gpu = Gpu::default();
    let ptx = r#"
.func (.param .b32 ret) scale_add(.param .b32 x, .param .b32 y)
{
    .reg .b32 %r<4>;
    .reg .pred %p<2>;
    ld.param.b32 %r1, [x];
    ld.param.b32 %r2, [y];
    setp.eq.u32 %p1, %r2, 0;
    @%p1 bra ZERO;
    mad.lo.s32 %r3, %r1, 3, %r2;
    st.param.b32 [ret], %r3;
    ret;
ZERO:
    st.param.b32 [ret], 7;
    ret;
}

.visible .entry k(.param .u64 pout)
{
    .reg .b32 %r<6>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [pout];
    mov.u32 %r1, %tid.x;
    and.b32 %r2, %r1, 1;
    {
    .param .b32 a0;
    st.param.b32 [a0], %r1;
    .param .b32 a1;
    st.param.b32 [a1], %r2;
    .param .b32 r0;
    call.uni (r0), scale_add, (a0, a1);
    ld.param.b32 %r3, [r0];
    }
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r3;
    ret;
}
"#;
    for seed in SEEDS {
        let out = gpu.zeros(40);
        gpu.run_with(
            ptx,
            "k",
            [1, 1, 1],
            [40, 1, 1],
            0,
            &[Arg::U64(out)],
            &seeded(seed),
        )
        .unwrap();
        let got = gpu.read_u32(out, 40);
        for t in 0..40u32 {
            assert_eq!(got[t as usize], if t % 2 == 0 { 7 } else { t * 3 + 1 });
        }
    }
}

#[test]
fn trap_and_multidimensional_grids() {
    let gpu = Gpu::default();
    let ptx = r#"
.visible .entry k()
{
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    mov.u32 %r1, %ctaid.y;
    mov.u32 %r2, %tid.z;
    add.s32 %r3, %r1, %r2;
    setp.eq.u32 %p1, %r3, 3;
    @%p1 trap;
    ret;
}
"#;
    let r = gpu.run_with(ptx, "k", [1, 3, 1], [2, 2, 2], 0, &[], &Default::default());
    expect_error(
        r,
        LaunchErrorKind::Trap,
        &["CTA (0, 2, 0)", "thread (0, 0, 1)", "trap"],
    );
}

#[test]
fn seeds_shuffle_the_cta_order_reproducibly() {
    // Each CTA takes a ticket from a global counter: the tickets show the order.
    let ptx = r#"
.visible .entry k(.param .u64 pcount, .param .u64 pout)
{
    .reg .b32 %r<4>;
    .reg .b64 %rd<6>;
    ld.param.u64 %rd1, [pcount];
    ld.param.u64 %rd2, [pout];
    atom.global.add.u32 %r1, [%rd1], 1;
    mov.u32 %r2, %ctaid.x;
    mul.wide.u32 %rd3, %r2, 4;
    add.s64 %rd4, %rd2, %rd3;
    st.global.u32 [%rd4], %r1;
    ret;
}
"#;
    let gpu = Gpu::default();
    let order = |seed: Option<u64>| {
        let (count, out) = (gpu.zeros(1), gpu.zeros(30));
        gpu.run_with(
            ptx,
            "k",
            [30, 1, 1],
            [1, 1, 1],
            0,
            &[Arg::U64(count), Arg::U64(out)],
            &seeded(seed),
        )
        .unwrap();
        gpu.read_u32(out, 30)
    };
    let fixed = order(None);
    assert_eq!(fixed, (0..30).collect::<Vec<u32>>());
    let a = order(Some(7));
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, fixed, "a permutation");
    assert_ne!(a, fixed);
    assert_eq!(order(Some(7)), a, "the same seed, the same order");
}

#[test]
fn bar_arrive_lets_producers_pass() {
    // Warp 1 produces and signals with bar.arrive (it does not wait); warp 0
    // waits at bar.sync 1, 64 and then reads what warp 1 wrote.
    let ptx = r#"
.visible .entry k(.param .u64 pout)
{
    .reg .pred %p<2>;
    .reg .b32 %r<6>;
    .reg .b64 %rd<4>;
    .shared .align 4 .b32 buf[32];
    ld.param.u64 %rd1, [pout];
    mov.u32 %r1, %tid.x;
    and.b32 %r2, %r1, 31;
    shl.b32 %r3, %r2, 2;
    mov.u32 %r4, buf;
    add.s32 %r4, %r4, %r3;
    setp.lt.u32 %p1, %r1, 32;
    @%p1 bra CONSUMER;
    mul.lo.s32 %r5, %r2, 9;
    st.shared.u32 [%r4], %r5;
    bar.arrive 1, 64;
    ret;
CONSUMER:
    bar.sync 1, 64;
    ld.shared.u32 %r5, [%r4];
    mul.wide.u32 %rd2, %r2, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r5;
    ret;
}
"#;
    for seed in SEEDS {
        let gpu = Gpu::default();
        let out = gpu.zeros(32);
        gpu.run_with(
            ptx,
            "k",
            [1, 1, 1],
            [64, 1, 1],
            0,
            &[Arg::U64(out)],
            &seeded(seed),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            gpu.read_u32(out, 32),
            (0..32).map(|l| l * 9).collect::<Vec<u32>>()
        );
    }
}
