//! Integer, bit and predicate instructions, each against its PTX ISA
//! definition over edge-case operands (one kernel per instruction form,
//! one operand triple per thread).

mod exec_support;

use exec_support::{Arg, Gpu};

const EDGE: [u32; 16] = [
    0,
    1,
    2,
    7,
    31,
    32,
    33,
    0xffff_ffff,
    0xffff_fff9,
    0x8000_0000,
    0x8000_0001,
    0x7fff_ffff,
    0xdead_beef,
    0x1234_5678,
    0x0000_ffff,
    0x00ff_00f0,
];

/// Operand triples: every pair of edge values over 256 threads.
fn operands() -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut c = Vec::new();
    for i in 0..16 {
        for j in 0..16 {
            a.push(EDGE[i]);
            b.push(EDGE[j]);
            c.push(EDGE[(i * 5 + j * 3) % 16]);
        }
    }
    (a, b, c)
}

/// A kernel that loads %r1, %r2, %r3 from three arrays, runs `body`
/// (which leaves its result in %r4) and stores %r4.
fn kernel32(body: &str) -> String {
    format!(
        r#"
.visible .entry k(.param .u64 pa, .param .u64 pb, .param .u64 pc, .param .u64 pout)
{{
    .reg .pred %p<4>;
    .reg .b16 %rs<4>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<12>;
    ld.param.u64 %rd1, [pa];
    ld.param.u64 %rd2, [pb];
    ld.param.u64 %rd3, [pc];
    ld.param.u64 %rd4, [pout];
    mov.u32 %r0, %ctaid.x;
    mov.u32 %r7, %ntid.x;
    mov.u32 %r6, %tid.x;
    mad.lo.s32 %r0, %r0, %r7, %r6;
    mul.wide.u32 %rd5, %r0, 4;
    add.s64 %rd6, %rd1, %rd5;
    ld.global.u32 %r1, [%rd6];
    add.s64 %rd6, %rd2, %rd5;
    ld.global.u32 %r2, [%rd6];
    add.s64 %rd6, %rd3, %rd5;
    ld.global.u32 %r3, [%rd6];
    {body}
    add.s64 %rd6, %rd4, %rd5;
    st.global.u32 [%rd6], %r4;
    ret;
}}
"#
    )
}

fn check32(body: &str, want: impl Fn(u32, u32, u32) -> u32) {
    let gpu = Gpu::default();
    let (a, b, c) = operands();
    let n = a.len();
    let (da, db, dc, out) = (gpu.u32s(&a), gpu.u32s(&b), gpu.u32s(&c), gpu.zeros(n));
    gpu.run(
        &kernel32(body),
        "k",
        (n / 64) as u32,
        64,
        &[Arg::U64(da), Arg::U64(db), Arg::U64(dc), Arg::U64(out)],
    )
    .unwrap_or_else(|e| panic!("{body}: {e}"));
    let got = gpu.read_u32(out, n);
    for i in 0..n {
        let w = want(a[i], b[i], c[i]);
        assert_eq!(
            got[i], w,
            "{body} with a={:#x} b={:#x} c={:#x}: got {:#x}, want {w:#x}",
            a[i], b[i], c[i], got[i]
        );
    }
}

fn s(x: u32) -> i64 {
    x as i32 as i64
}

#[test]
fn add_sub_mul_mad() {
    check32("add.s32 %r4, %r1, %r2;", |a, b, _| {
        ((a as u64 + b as u64) % (1 << 32)) as u32
    });
    check32("sub.s32 %r4, %r1, %r2;", |a, b, _| {
        ((a as u64 + (1 << 32) - b as u64) % (1 << 32)) as u32
    });
    check32("add.u32 %r4, %r1, 5;", |a, _, _| a.wrapping_add(5));
    check32("mul.lo.s32 %r4, %r1, %r2;", |a, b, _| (s(a) * s(b)) as u32);
    check32("mul.lo.u32 %r4, %r1, %r2;", |a, b, _| {
        (a as u64 * b as u64) as u32
    });
    check32("mul.hi.s32 %r4, %r1, %r2;", |a, b, _| {
        ((s(a) * s(b)) >> 32) as u32
    });
    check32("mul.hi.u32 %r4, %r1, %r2;", |a, b, _| {
        ((a as u64 * b as u64) >> 32) as u32
    });
    check32("mad.lo.s32 %r4, %r1, %r2, %r3;", |a, b, c| {
        (s(a) * s(b) + s(c)) as u32
    });
    check32("mad.hi.u32 %r4, %r1, %r2, %r3;", |a, b, c| {
        (((a as u64 * b as u64) >> 32) + c as u64) as u32
    });
    check32(
        "mul.wide.s32 %rd9, %r1, %r2; mov.b64 {%r5, %r4}, %rd9;",
        |a, b, _| ((s(a) * s(b)) >> 32) as u32,
    );
    check32(
        "mul.wide.u32 %rd9, %r1, %r2; mov.b64 {%r4, %r5}, %rd9;",
        |a, b, _| (a as u64 * b as u64) as u32,
    );
    check32(
        "mul.wide.u32 %rd9, %r1, %r2; mov.b64 {%r5, %r4}, %rd9;",
        |a, b, _| ((a as u64 * b as u64) >> 32) as u32,
    );
    check32("neg.s32 %r4, %r1;", |a, _, _| (-s(a)) as u32);
    check32("abs.s32 %r4, %r1;", |a, _, _| {
        if a == 0x8000_0000 {
            a
        } else {
            s(a).unsigned_abs() as u32
        }
    });
}

#[test]
fn division_and_remainder() {
    // The divisor is made nonzero and positive (the ISA leaves division by
    // zero unspecified).
    let d = "and.b32 %r5, %r2, 65535; or.b32 %r5, %r5, 1;";
    let dv = |b: u32| (b & 0xffff) | 1;
    check32(&format!("{d} div.u32 %r4, %r1, %r5;"), move |a, b, _| {
        a / dv(b)
    });
    check32(&format!("{d} rem.u32 %r4, %r1, %r5;"), move |a, b, _| {
        a % dv(b)
    });
    // Signed division truncates toward zero; the remainder has the dividend's sign.
    check32(&format!("{d} div.s32 %r4, %r1, %r5;"), move |a, b, _| {
        let (x, y) = (s(a), dv(b) as i64);
        let q = x.abs() / y;
        (if x < 0 { -q } else { q }) as u32
    });
    check32(&format!("{d} rem.s32 %r4, %r1, %r5;"), move |a, b, _| {
        let (x, y) = (s(a), dv(b) as i64);
        let r = x.abs() % y;
        (if x < 0 { -r } else { r }) as u32
    });
}

#[test]
fn min_max_logic() {
    check32(
        "min.s32 %r4, %r1, %r2;",
        |a, b, _| if s(a) < s(b) { a } else { b },
    );
    check32(
        "max.s32 %r4, %r1, %r2;",
        |a, b, _| if s(a) > s(b) { a } else { b },
    );
    check32("min.u32 %r4, %r1, %r2;", |a, b, _| a.min(b));
    check32("max.u32 %r4, %r1, %r2;", |a, b, _| a.max(b));
    check32("and.b32 %r4, %r1, %r2;", |a, b, _| a & b);
    check32("or.b32 %r4, %r1, %r2;", |a, b, _| a | b);
    check32("xor.b32 %r4, %r1, %r2;", |a, b, _| a ^ b);
    check32("not.b32 %r4, %r1;", |a, _, _| !a);
    check32("cnot.b32 %r4, %r1;", |a, _, _| (a == 0) as u32);
}

#[test]
fn shifts_clamp_at_the_width() {
    check32(
        "shl.b32 %r4, %r1, %r3;",
        |a, _, c| if c >= 32 { 0 } else { a << c },
    );
    check32(
        "shr.u32 %r4, %r1, %r3;",
        |a, _, c| if c >= 32 { 0 } else { a >> c },
    );
    check32("shr.s32 %r4, %r1, %r3;", |a, _, c| {
        (s(a) >> c.min(63)) as u32
    });
    check32("shr.b32 %r4, %r1, 4;", |a, _, _| a >> 4);
    // Funnel shifts of {b, a}: .wrap takes the amount mod 32, .clamp caps it at 32.
    check32("shf.l.wrap.b32 %r4, %r1, %r2, %r3;", |a, b, c| {
        let v = ((b as u64) << 32) | a as u64;
        ((v << (c % 32)) >> 32) as u32
    });
    check32("shf.r.clamp.b32 %r4, %r1, %r2, %r3;", |a, b, c| {
        let v = ((b as u64) << 32) | a as u64;
        (v >> c.min(32)) as u32
    });
    check32("shf.l.clamp.b32 %r4, %r1, %r2, %r3;", |a, b, c| {
        let v = ((b as u64) << 32) | a as u64;
        ((v << c.min(32)) >> 32) as u32
    });
}

#[test]
fn bit_counting_and_fields() {
    check32("popc.b32 %r4, %r1;", |a, _, _| a.count_ones());
    check32("clz.b32 %r4, %r1;", |a, _, _| a.leading_zeros());
    check32("brev.b32 %r4, %r1;", |a, _, _| {
        (0..32).fold(0, |acc, i| acc | (((a >> i) & 1) << (31 - i)))
    });
    let msb = |v: u32| {
        if v == 0 {
            0xffff_ffff
        } else {
            31 - v.leading_zeros()
        }
    };
    check32("bfind.u32 %r4, %r1;", move |a, _, _| msb(a));
    check32("bfind.s32 %r4, %r1;", move |a, _, _| {
        msb(if s(a) < 0 { !a } else { a })
    });
    check32("bfind.shiftamt.u32 %r4, %r1;", move |a, _, _| {
        match msb(a) {
            0xffff_ffff => 0xffff_ffff,
            p => 31 - p,
        }
    });
    // bfe: pos and len are the low 8 bits of b and c; bits past the msb
    // repeat the last bit extracted (signed) or are zero.
    let bfe = |a: u32, b: u32, c: u32, signed: bool| {
        let (pos, len) = (b & 0xff, c & 0xff);
        let sbit = if signed && len > 0 {
            (a >> (pos + len - 1).min(31)) & 1
        } else {
            0
        };
        (0..32).fold(0u32, |d, i| {
            let bit = if i < len && pos + i <= 31 {
                (a >> (pos + i)) & 1
            } else {
                sbit
            };
            d | (bit << i)
        })
    };
    check32("bfe.u32 %r4, %r1, %r2, %r3;", move |a, b, c| {
        bfe(a, b, c, false)
    });
    check32("bfe.s32 %r4, %r1, %r2, %r3;", move |a, b, c| {
        bfe(a, b, c, true)
    });
    check32("bfe.u32 %r4, %r1, 4, 8;", move |a, _, _| (a >> 4) & 0xff);
    // bfi: len bits of a go into b at pos.
    let bfi = |a: u32, b: u32, pos: u32, len: u32| {
        let (pos, len) = (pos & 0xff, len & 0xff);
        (0..len).filter(|i| pos + i < 32).fold(b, |f, i| {
            (f & !(1 << (pos + i))) | (((a >> i) & 1) << (pos + i))
        })
    };
    check32("bfi.b32 %r4, %r1, %r2, %r3, 5;", move |a, b, c| {
        bfi(a, b, c, 5)
    });
    check32("bfi.b32 %r4, %r1, %r2, 6, 26;", move |a, b, _| {
        bfi(a, b, 6, 26)
    });
}

#[test]
fn comparisons_selection_and_predicates() {
    check32(
        "setp.lt.s32 %p1, %r1, %r2; selp.b32 %r4, 1, 0, %p1;",
        |a, b, _| (s(a) < s(b)) as u32,
    );
    check32(
        "setp.lo.u32 %p1, %r1, %r2; selp.b32 %r4, 1, 0, %p1;",
        |a, b, _| (a < b) as u32,
    );
    check32(
        "setp.ls.u32 %p1, %r1, %r2; selp.b32 %r4, 1, 0, %p1;",
        |a, b, _| (a <= b) as u32,
    );
    check32(
        "setp.hi.u32 %p1, %r1, %r2; selp.b32 %r4, 1, 0, %p1;",
        |a, b, _| (a > b) as u32,
    );
    check32(
        "setp.ge.u32 %p1, %r1, %r2; selp.b32 %r4, 1, 0, %p1;",
        |a, b, _| (a >= b) as u32,
    );
    check32(
        "setp.ne.b32 %p1, %r1, %r2; selp.b32 %r4, 1, 0, %p1;",
        |a, b, _| (a != b) as u32,
    );
    check32(
        "setp.le.s32 %p1, %r1, %r2; selp.b32 %r4, %r1, %r2, %p1;",
        |a, b, _| if s(a) <= s(b) { a } else { b },
    );
    // The second destination receives the complement; .and/.or/.xor combine with c.
    check32(
        "setp.ne.s32 %p3, %r3, 0; setp.gt.and.s32 %p1|%p2, %r1, %r2, %p3; selp.b32 %r5, 1, 0, %p1; selp.b32 %r6, 2, 0, %p2; or.b32 %r4, %r5, %r6;",
        |a, b, c| {
            let (cmp, cp) = (s(a) > s(b), c != 0);
            ((cmp && cp) as u32) | (((!cmp && cp) as u32) << 1)
        },
    );
    check32(
        "setp.eq.s32 %p1, %r1, %r2; setp.lt.u32 %p2, %r1, %r3; xor.pred %p3, %p1, %p2; not.pred %p3, %p3; or.pred %p3, %p3, %p1; selp.b32 %r4, 1, 0, %p3;",
        |a, b, c| {
            let (p1, p2) = (a == b, a < c);
            (!(p1 ^ p2) || p1) as u32
        },
    );
    check32(
        "setp.lt.s32 %p1, %r1, %r2; @%p1 mov.b32 %r4, 11; @!%p1 mov.b32 %r4, 22;",
        |a, b, _| {
            if s(a) < s(b) {
                11
            } else {
                22
            }
        },
    );
    // 16-bit registers: halves of a 32-bit value, signed compare.
    check32(
        "mov.b32 {%rs1, %rs2}, %r1; setp.gt.s16 %p1, %rs2, -1; selp.u16 %rs3, 1, 0, %p1; mov.b32 %r4, {%rs3, %rs1};",
        |a, _, _| (((a >> 31) == 0) as u32) | ((a & 0xffff) << 16),
    );
}

#[test]
fn sixty_four_bit_forms() {
    check32(
        "mov.b64 %rd9, {%r1, %r2}; mov.b64 %rd10, {%r3, %r1}; add.s64 %rd11, %rd9, %rd10; xor.b64 %rd11, %rd11, %rd9; shr.s64 %rd11, %rd11, 7; min.s64 %rd11, %rd11, %rd10; mov.b64 {%r5, %r4}, %rd11;",
        |a, b, c| {
            let x = ((b as u64) << 32) | a as u64;
            let y = ((a as u64) << 32) | c as u64;
            let r = ((x.wrapping_add(y) ^ x) as i64) >> 7;
            (r.min(y as i64) as u64 >> 32) as u32
        },
    );
    check32(
        "mov.b64 %rd9, {%r1, %r2}; mov.b64 %rd10, {%r3, %r1}; mul.hi.u64 %rd11, %rd9, %rd10; mov.b64 {%r4, %r5}, %rd11;",
        |a, b, c| {
            let x = ((b as u64) << 32) | a as u64;
            let y = ((a as u64) << 32) | c as u64;
            ((x as u128 * y as u128) >> 64) as u32
        },
    );
    check32(
        "mov.b64 %rd9, {%r1, %r2}; shl.b64 %rd11, %rd9, %r3; mov.b64 {%r4, %r5}, %rd11;",
        |a, b, c| {
            let x = ((b as u64) << 32) | a as u64;
            (if c >= 64 { 0 } else { x << c }) as u32
        },
    );
    check32(
        "mov.b64 %rd9, {%r1, %r2}; popc.b64 %r4, %rd9;",
        |a, b, _| a.count_ones() + b.count_ones(),
    );
}

#[test]
fn special_registers() {
    let gpu = Gpu::default();
    let out = gpu.zeros(8 * 96);
    let ptx = r#"
.visible .entry k(.param .u64 pout)
{
    .reg .b32 %r<12>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [pout];
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, %tid.y;
    mov.u32 %r3, %ntid.x;
    mad.lo.s32 %r4, %r2, %r3, %r1;
    mul.wide.u32 %rd2, %r4, 32;
    add.s64 %rd3, %rd1, %rd2;
    mov.u32 %r5, %laneid;
    mov.u32 %r6, %warpid;
    mov.u32 %r7, %lanemask_lt;
    mov.u32 %r8, %lanemask_ge;
    mov.u32 %r9, %ctaid.y;
    mov.u32 %r10, %nctaid.y;
    mov.u32 %r11, %ntid.y;
    st.global.v4.u32 [%rd3], {%r5, %r6, %r7, %r8};
    st.global.v4.u32 [%rd3+16], {%r9, %r10, %r11, %r4};
    ret;
}
"#;
    gpu.run_with(
        ptx,
        "k",
        [1, 2, 1],
        [48, 2, 1],
        0,
        &[Arg::U64(out)],
        &Default::default(),
    )
    .unwrap();
    let got = gpu.read_u32(out, 8 * 96);
    // Only CTA (0, 1) and (0, 0) write the same slots; the values of y are
    // the same for both but ctaid.y differs, so check the fields that do not
    // depend on the CTA.
    for t in 0..96u32 {
        let g = &got[t as usize * 8..t as usize * 8 + 8];
        let lane = t % 32;
        assert_eq!(g[0], lane);
        assert_eq!(g[1], t / 32);
        assert_eq!(g[2], (1u32 << lane) - 1);
        assert_eq!(g[3], !((1u32 << lane) - 1));
        assert_eq!(g[5], 2);
        assert_eq!(g[6], 2);
        assert_eq!(g[7], t);
    }
}
