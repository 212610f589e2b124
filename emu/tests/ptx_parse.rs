//! The PTX parser against hand-written snippets of the PTX ISA's syntax:
//! exact trees for every construct, and errors with their lines.

use dropless_emu::ptx::ast::{
    Directives, Function, Immediate, Instruction, Module, Operand, RegisterDecl, Space, Statement,
    Variable,
};
use dropless_emu::ptx::{parse_module, ParseError};
use proptest::prelude::*;

const HEADER: &str = ".version 8.0\n.target sm_80\n.address_size 64\n";

fn parse(text: &str) -> Module {
    match parse_module(text) {
        Ok(m) => m,
        Err(e) => panic!("{e}\n--- text ---\n{text}"),
    }
}

fn parse_err(text: &str) -> ParseError {
    match parse_module(text) {
        Ok(m) => panic!("parsed, expected an error: {m:?}"),
        Err(e) => e,
    }
}

/// The one function of a module made of the header and `body` inside
/// `.entry k() { ... }` (the body starts on line 6).
fn kernel(body: &str) -> Function {
    let text = format!("{HEADER}.entry k()\n{{\n{body}\n}}\n");
    let mut m = parse(&text);
    assert_eq!(m.functions.len(), 1);
    m.functions.remove(0)
}

/// The instructions of `kernel(body)`.
fn instructions(body: &str) -> Vec<Instruction> {
    kernel(body)
        .body
        .into_iter()
        .filter_map(|s| match s {
            Statement::Instruction(i) => Some(i),
            Statement::Label(_) => None,
        })
        .collect()
}

/// The operands of the single instruction `ins`.
fn operands(ins: &str) -> Vec<Operand> {
    let mut all = instructions(ins);
    assert_eq!(all.len(), 1);
    all.remove(0).operands
}

fn reg(name: &str) -> Operand {
    Operand::Register(name.into())
}

fn sym(name: &str) -> Operand {
    Operand::Symbol(name.into())
}

fn int(v: i64) -> Operand {
    Operand::Immediate(Immediate::Int(v))
}

fn addr(base: Option<Operand>, offset: i64) -> Operand {
    Operand::Address {
        base: base.map(Box::new),
        offset,
    }
}

fn words(opcode: &[&str]) -> Vec<String> {
    opcode.iter().map(|s| s.to_string()).collect()
}

#[test]
fn header_directives() {
    let m = parse(".version 7.8\n.target sm_86, texmode_independent, debug\n.address_size 32\n");
    assert_eq!(m.version, "7.8");
    assert_eq!(m.target, ["sm_86", "texmode_independent", "debug"]);
    assert_eq!(m.address_size, 32);
    assert!(m.variables.is_empty() && m.functions.is_empty());
    let m = parse(".version 9.0 .target sm_90a");
    assert_eq!(m.address_size, 64);
    assert_eq!(m.target, ["sm_90a"]);
}

#[test]
fn comments_are_skipped_and_keep_line_numbers() {
    let text = "// leading comment\n.version /* inline */ 8.0\n/* a\n block\n comment */ .target sm_80 // trailing\n.entry k()\n{\n\t// comment in a body\n\tret; /* after */\n}\n";
    let m = parse(text);
    assert_eq!(m.version, "8.0");
    let f = &m.functions[0];
    assert_eq!(f.line, 6);
    assert_eq!(
        f.body,
        [Statement::Instruction(Instruction {
            guard: None,
            opcode: words(&["ret"]),
            operands: vec![],
            line: 9,
        })]
    );
}

#[test]
fn debug_and_pragma_directives_are_skipped() {
    let text = format!(
        "{HEADER}.file 1 \"/src/a.cu\"\n.file 2 \"/src/b.h\", 1700000000, 1234\n.pragma \"nounroll\";\n\
         .entry k()\n{{\n.loc 1 10 3\n.pragma \"nounroll\";\nexit;\n.loc 1 12 5, function_name $L__info_string0, inlined_at 1 4 2\n}}\n\
         .section .debug_str\n{{\n$L__info_string0:\n.b8 95,90,0\n.b32 .debug_abbrev\n{{ .b8 1 }}\n}}\n"
    );
    let m = parse(&text);
    assert_eq!(m.functions.len(), 1);
    assert_eq!(
        m.functions[0].body,
        [Statement::Instruction(Instruction {
            guard: None,
            opcode: words(&["exit"]),
            operands: vec![],
            line: 11,
        })]
    );
}

#[test]
fn module_variables() {
    let text = format!(
        "{HEADER}.extern .shared .align 16 .b8 dyn_smem[];\n\
         .shared .u32 counts[4][8];\n\
         .global .align 4 .b8 bytes[6] = {{1, -1, 0x7f, 010, 0b101, 255U}};\n\
         .const .f32 consts[4] = {{0f3F800000, 1.5, {{2, -0.25}}}};\n\
         .visible .global .f64 d = 0d4000000000000000;\n\
         .const .f64 e[] = {{0.5, 0f40400000}};\n\
         .global .v4 .f32 quad[2];\n\
         .weak .global .align 8 .u64 w;\n"
    );
    let m = parse(&text);
    let v = |space, is_extern, align, ty: &str, name: &str, len, init, line| Variable {
        space,
        is_extern,
        align,
        ty: ty.into(),
        name: name.into(),
        array_len: len,
        init,
        line,
    };
    use Immediate::{F32Bits, F64Bits, Int};
    assert_eq!(
        m.variables,
        [
            v(Space::Shared, true, 16, "b8", "dyn_smem", Some(0), None, 4),
            v(Space::Shared, false, 4, "u32", "counts", Some(32), None, 5),
            v(
                Space::Global,
                false,
                4,
                "b8",
                "bytes",
                Some(6),
                Some(vec![Int(1), Int(-1), Int(0x7f), Int(8), Int(5), Int(255)]),
                6
            ),
            v(
                Space::Const,
                false,
                4,
                "f32",
                "consts",
                Some(4),
                Some(vec![
                    F32Bits(0x3F80_0000),
                    F32Bits(1.5f32.to_bits()),
                    F32Bits(2.0f32.to_bits()),
                    F32Bits((-0.25f32).to_bits()),
                ]),
                7
            ),
            v(
                Space::Global,
                false,
                8,
                "f64",
                "d",
                None,
                Some(vec![F64Bits(0x4000_0000_0000_0000)]),
                8
            ),
            v(
                Space::Const,
                false,
                8,
                "f64",
                "e",
                Some(2),
                Some(vec![F64Bits(0.5f64.to_bits()), F64Bits(3.0f64.to_bits())]),
                9
            ),
            v(Space::Global, false, 16, "f32", "quad", Some(8), None, 10),
            v(Space::Global, false, 8, "u64", "w", None, None, 11),
        ]
    );
}

#[test]
fn entry_signature_and_directives() {
    let text = format!(
        "{HEADER}.visible .entry gemm(\n\t.param .u64 gemm_param_0,\n\t.param .align 8 .b8 gemm_param_1[24],\n\
         \t.param .u64 .ptr .global .align 16 gemm_param_2,\n\t.param .u32 gemm_param_3\n)\n\
         .maxntid 256\n.reqntid 64, 2\n.minnctapersm 2\n.maxnreg 128\n{{\nret;\n}}\n\
         .entry tiny() .maxntid 32, 4, 2 {{ ret; }}\n"
    );
    let m = parse(&text);
    assert_eq!(m.functions.len(), 2);
    let f = &m.functions[0];
    assert!(f.is_entry);
    assert_eq!(f.linkage, ["visible"]);
    assert_eq!(f.name, "gemm");
    assert_eq!(f.line, 4);
    assert!(f.returns.is_empty());
    let p = |align, ty: &str, name: &str, len, line| Variable {
        space: Space::Param,
        is_extern: false,
        align,
        ty: ty.into(),
        name: name.into(),
        array_len: len,
        init: None,
        line,
    };
    assert_eq!(
        f.params,
        [
            p(8, "u64", "gemm_param_0", None, 5),
            p(8, "b8", "gemm_param_1", Some(24), 6),
            p(16, "u64", "gemm_param_2", None, 7),
            p(4, "u32", "gemm_param_3", None, 8),
        ]
    );
    assert_eq!(
        f.directives,
        Directives {
            maxntid: Some([256, 1, 1]),
            reqntid: Some([64, 2, 1]),
            minnctapersm: Some(2),
            maxnreg: Some(128),
        }
    );
    assert_eq!(m.functions[1].directives.maxntid, Some([32, 4, 2]));
    assert_eq!(m.functions[1].linkage, Vec::<String>::new());
}

#[test]
fn funcs_with_returns_and_prototypes() {
    let text = format!(
        "{HEADER}.extern .func (.param .b32 func_retval0) vprintf\n(\n\t.param .b64 vprintf_param_0,\n\t.param .b64 vprintf_param_1\n)\n;\n\
         .func (.param .b64 func_retval0) twice(.param .b64 x)\n{{\n\
         .reg .b64 %rd<2>;\nld.param.b64 %rd0, [x];\nadd.s64 %rd1, %rd0, %rd0;\nst.param.b64 [func_retval0+0], %rd1;\nret;\n}}\n\
         .weak .func noargs\n{{\nret;\n}}\n.func proto_only(.param .u32 a);\n"
    );
    let m = parse(&text);
    let names: Vec<&str> = m.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["twice", "noargs"]);
    let f = &m.functions[0];
    assert!(!f.is_entry);
    assert_eq!(f.line, 10);
    assert_eq!(
        f.returns,
        [Variable {
            space: Space::Param,
            is_extern: false,
            align: 8,
            ty: "b64".into(),
            name: "func_retval0".into(),
            array_len: None,
            init: None,
            line: 10,
        }]
    );
    assert_eq!(f.params.len(), 1);
    assert_eq!(f.params[0].name, "x");
    assert_eq!(f.body.len(), 4);
    assert_eq!(m.functions[1].linkage, ["weak"]);
    assert!(m.functions[1].params.is_empty());
}

#[test]
fn register_declarations() {
    let f = kernel(
        ".reg .pred %p<3>;\n.reg .b32 %a, %b<2>, c;\n.reg .f16x2 %h;\n.reg .b64 %SP;\n.reg .f64 %fd<1>;",
    );
    let d = |ty: &str, name: &str, count, line| RegisterDecl {
        ty: ty.into(),
        name: name.into(),
        count,
        scope_suffix: String::new(),
        line,
    };
    assert_eq!(
        f.registers,
        [
            d("pred", "%p", Some(3), 6),
            d("b32", "%a", None, 7),
            d("b32", "%b", Some(2), 7),
            d("b32", "c", None, 7),
            d("f16x2", "%h", None, 8),
            d("b64", "%SP", None, 9),
            d("f64", "%fd", Some(1), 10),
        ]
    );
    assert_eq!(f.registers[0].names(), ["%p0", "%p1", "%p2"]);
    assert!(f.body.is_empty());
}

#[test]
fn body_variables() {
    let f = kernel(
        ".local .align 8 .b8 __local_depot0[40];\n.shared .align 4 .f32 tile[16][17];\n.extern .shared .b32 more[];\n.const .u32 k = 7;",
    );
    let names: Vec<(&str, Space, bool, Option<u64>, u32)> = f
        .locals
        .iter()
        .map(|v| (v.name.as_str(), v.space, v.is_extern, v.array_len, v.line))
        .collect();
    assert_eq!(
        names,
        [
            ("__local_depot0", Space::Local, false, Some(40), 6),
            ("tile", Space::Shared, false, Some(272), 7),
            ("more", Space::Shared, true, Some(0), 8),
            ("k", Space::Const, false, None, 9),
        ]
    );
    assert_eq!(f.locals[3].init, Some(vec![Immediate::Int(7)]));
}

#[test]
fn guards_labels_and_opcodes() {
    let f = kernel(
        ".reg .pred %p<2>;\nLOOP:\n@%p0 bra LOOP;\n@!%p1 bra.uni $L__BB0_2;\n$L__BB0_2:\nld.global.nc.v4.u32 {%r0, %r1, %r2, %r3}, [%rd1];\nbar.sync 0;",
    );
    assert_eq!(
        f.body,
        [
            Statement::Label("LOOP".into()),
            Statement::Instruction(Instruction {
                guard: Some((false, "%p0".into())),
                opcode: words(&["bra"]),
                operands: vec![sym("LOOP")],
                line: 8,
            }),
            Statement::Instruction(Instruction {
                guard: Some((true, "%p1".into())),
                opcode: words(&["bra", "uni"]),
                operands: vec![sym("$L__BB0_2")],
                line: 9,
            }),
            Statement::Label("$L__BB0_2".into()),
            Statement::Instruction(Instruction {
                guard: None,
                opcode: words(&["ld", "global", "nc", "v4", "u32"]),
                operands: vec![
                    Operand::Vector(vec![reg("%r0"), reg("%r1"), reg("%r2"), reg("%r3")]),
                    addr(Some(reg("%rd1")), 0),
                ],
                line: 11,
            }),
            Statement::Instruction(Instruction {
                guard: None,
                opcode: words(&["bar", "sync"]),
                operands: vec![int(0)],
                line: 12,
            }),
        ]
    );
}

#[test]
fn integer_immediates() {
    assert_eq!(
        operands("mov.b64 %rd1, 42, -42, 0x1F, 0XfF, 017, 0b1011, 0B11, 7U, 0xFFFFFFFFFFFFFFFF, -9223372036854775808, 18446744073709551615U, 0;"),
        [
            reg("%rd1"),
            int(42),
            int(-42),
            int(31),
            int(255),
            int(15),
            int(11),
            int(3),
            int(7),
            int(-1),
            int(i64::MIN),
            int(-1),
            int(0),
        ]
    );
}

#[test]
fn float_immediates() {
    use Immediate::{F32Bits, F64Bits, Float};
    let imm = Operand::Immediate;
    assert_eq!(
        operands("mov.f32 %f1, 0f3F800000, 0FBF800000, 0d3FF0000000000000, 0D8000000000000000, 1.5, -2.25, 1e-3, 2.5E+2, 3.;"),
        [
            reg("%f1"),
            imm(F32Bits(0x3F80_0000)),
            imm(F32Bits(0xBF80_0000)),
            imm(F64Bits(0x3FF0_0000_0000_0000)),
            imm(F64Bits(0x8000_0000_0000_0000)),
            imm(Float(1.5)),
            imm(Float(-2.25)),
            imm(Float(1e-3)),
            imm(Float(250.0)),
            imm(Float(3.0)),
        ]
    );
}

#[test]
fn special_registers_symbols_and_negation() {
    assert_eq!(
        operands(
            "mov.u32 %r1, %tid.x, %ctaid.y, %nctaid.z, %laneid, %clock64, WARP_SZ, smem, !%p3;"
        ),
        [
            reg("%r1"),
            reg("%tid.x"),
            reg("%ctaid.y"),
            reg("%nctaid.z"),
            reg("%laneid"),
            reg("%clock64"),
            sym("WARP_SZ"),
            sym("smem"),
            Operand::NotRegister("%p3".into()),
        ]
    );
}

#[test]
fn addresses() {
    assert_eq!(
        operands("ld.u32 %r1, [%rd1], [%rd1+16], [%rd1+-16], [%rd1-8], [smem], [smem+8], [8], [-4], [%r2+0x10];"),
        [
            reg("%r1"),
            addr(Some(reg("%rd1")), 0),
            addr(Some(reg("%rd1")), 16),
            addr(Some(reg("%rd1")), -16),
            addr(Some(reg("%rd1")), -8),
            addr(Some(sym("smem")), 0),
            addr(Some(sym("smem")), 8),
            addr(None, 8),
            addr(None, -4),
            addr(Some(reg("%r2")), 16),
        ]
    );
}

#[test]
fn vectors_sinks_and_pairs() {
    assert_eq!(
        operands("mov.b32 %r1, {0, %rs1}, {%rs2, _}, _, %r2|%p1;"),
        [
            reg("%r1"),
            Operand::Vector(vec![int(0), reg("%rs1")]),
            Operand::Vector(vec![reg("%rs2"), Operand::Sink]),
            Operand::Sink,
            Operand::Pair(Box::new(reg("%r2")), Box::new(reg("%p1"))),
        ]
    );
}

#[test]
fn call_sequences_span_lines_and_rename_params() {
    let f = kernel(
        ".reg .f64 %fd<4>;\n{\n.reg .b32 temp_param_reg;\n.param .b64 param0;\nst.param.f64 [param0+0], %fd1;\n.param .b64 retval0;\ncall.uni (retval0),\n\tpow,\n\t(\n\tparam0\n\t);\nld.param.f64 %fd2, [retval0+0];\n}\n{\n.param .b64 param0;\ncall.uni\n\tnoret,\n\t(param0);\ncall.uni empty, ();\n}",
    );
    let calls: Vec<&Instruction> = f
        .body
        .iter()
        .filter_map(|s| match s {
            Statement::Instruction(i) if i.opcode[0] == "call" => Some(i),
            _ => None,
        })
        .collect();
    assert_eq!(
        *calls[0],
        Instruction {
            guard: None,
            opcode: words(&["call", "uni"]),
            operands: vec![
                Operand::List(vec![sym("retval0@1")]),
                sym("pow"),
                Operand::List(vec![sym("param0@1")]),
            ],
            line: 12,
        }
    );
    assert_eq!(
        calls[1].operands,
        [sym("noret"), Operand::List(vec![sym("param0@2")])]
    );
    assert_eq!(calls[2].operands, [sym("empty"), Operand::List(vec![])]);
    let locals: Vec<(&str, u32)> = f.locals.iter().map(|v| (v.name.as_str(), v.line)).collect();
    assert_eq!(
        locals,
        [("param0@1", 9), ("retval0@1", 11), ("param0@2", 20)]
    );
    assert_eq!(f.registers[1].names(), ["temp_param_reg@1"]);
    let Statement::Instruction(st) = &f.body[0] else {
        panic!("expected the st.param first");
    };
    assert_eq!(st.operands, [addr(Some(sym("param0@1")), 0), reg("%fd1")]);
}

/// An instruction's guard: `(negated, predicate)`.
type Guard = Option<(bool, String)>;

#[test]
fn inner_scopes_rename_registers_and_labels() {
    let f = kernel(
        ".reg .b32 %r<3>;\n.reg .pred p;\n{ .reg .b32 %r<2>; .reg .pred p;\nL:\n@p bra L;\nadd.s32 %r1, %r2, %r0;\n{ .reg .b64 %r1;\nmov.b64 %r1, %r1;\nmov.b32 %r0, %r2;\n}\n}\n{ .reg .b32 t; mov.b32 t, %r1; }\n@p bra L;",
    );
    let suffixes: Vec<String> = f.registers.iter().flat_map(|r| r.names()).collect();
    assert_eq!(
        suffixes,
        ["%r0", "%r1", "%r2", "p", "%r0@1", "%r1@1", "p@1", "%r1@2", "t@3"]
    );
    let ins: Vec<(Guard, Vec<Operand>)> = f
        .body
        .iter()
        .filter_map(|s| match s {
            Statement::Instruction(i) => Some((i.guard.clone(), i.operands.clone())),
            Statement::Label(_) => None,
        })
        .collect();
    assert_eq!(f.body[0], Statement::Label("L@1".into()));
    assert_eq!(
        ins,
        [
            (Some((false, "p@1".into())), vec![sym("L@1")]),
            (None, vec![reg("%r1@1"), reg("%r2"), reg("%r0@1")]),
            (None, vec![reg("%r1@2"), reg("%r1@2")]),
            (None, vec![reg("%r0@1"), reg("%r2")]),
            (None, vec![reg("t@3"), reg("%r1")]),
            (Some((false, "p".into())), vec![sym("L")]),
        ]
    );
    assert_eq!(f.registers[2].scope_suffix, "@1");
    assert_eq!(f.registers[2].line, 8);
}

#[test]
fn counted_registers_match_only_their_range() {
    let ops = operands("{ .reg .b32 %r<10>; mov.b32 %r9, %r10, %r09, %r, %r0; }");
    assert_eq!(
        ops,
        [
            reg("%r9@1"),
            reg("%r10"),
            reg("%r09"),
            reg("%r"),
            reg("%r0@1")
        ]
    );
}

fn err_at(text: &str, line: u32, needle: &str) {
    let e = parse_err(text);
    assert_eq!(e.line, line, "{e}");
    assert!(e.message.contains(needle), "`{needle}` not in: {e}");
    assert!(e.to_string().starts_with(&format!("PTX line {line}: ")));
}

#[test]
fn errors_in_the_module_header() {
    err_at(".target sm_80\n", 1, "`.version`");
    err_at(".version 8.0\n.entry k() { ret; }\n", 2, "`.target`");
    err_at(".version 8.0\n.target sm_80\n.version 8.0\n", 3, "twice");
    err_at(".version 8\n", 1, "version");
    err_at(
        ".version 8.0\n.target sm_80\n.address_size 48\n",
        3,
        "32 or 64",
    );
    err_at(
        ".version 8.0\n.target sm_80\nret;\n",
        3,
        "expected a directive",
    );
    err_at(".version 8.0\n.target sm_80\n.texref t;\n", 3, "`.texref`");
    err_at(".version 8.0\n/* open\n\n", 2, "`/*`");
    err_at(".version 8.0\n.target sm_80\n.pragma \"x\n", 3, "string");
    err_at(
        ".version 8.0\n.target sm_80\n.section .debug_info\n{\n.b8 0\n",
        4,
        "not closed",
    );
}

#[test]
fn errors_in_declarations() {
    let e = |rest: &str| format!("{HEADER}{rest}");
    err_at(&e(".global .u32 x[2] = {1, 2, 3};\n"), 4, "initialisers");
    err_at(&e(".global .u32 x = {1, 2};\n"), 4, "scalar");
    err_at(&e(".global .u32 x = 1.5;\n"), 4, "decimal float");
    err_at(&e(".global .u32 x = sym;\n"), 4, "numeric initialiser");
    err_at(&e(".global .quad x;\n"), 4, "type");
    err_at(&e(".global .align 3 .u32 x;\n"), 4, "power of two");
    err_at(
        &e(".global .u32 x\n.global .u32 y;\n"),
        5,
        "`;` ending the declaration of `x`",
    );
    err_at(&e(".global .attribute(.managed) .u32 x;\n"), 4, "attribute");
    err_at(
        &e(".entry k(.reg .u32 a) { ret; }\n"),
        4,
        "`.reg` parameters",
    );
    err_at(
        &e(".entry k(\n.param .u32 a\n.param .u32 b) { ret; }\n"),
        6,
        "`,` or `)`",
    );
    err_at(
        &e(".entry k() .maxntid 32\n.maxclusterrank 2\n{ ret; }\n"),
        5,
        "`.maxclusterrank`",
    );
    err_at(
        &e(".entry k() .maxnreg 32 .maxnreg 40 { ret; }\n"),
        4,
        "twice",
    );
    err_at(&e(".entry k { ret; }\n"), 4, "`(`");
}

#[test]
fn errors_in_bodies() {
    let e = |body: &str| format!("{HEADER}.entry k()\n{{\n{body}\n}}\n");
    err_at(&e("ret;\n.reg .v2 .b32 %v;"), 7, "vector registers");
    err_at(&e(".reg .b33 %r;"), 6, "register type");
    err_at(&e(".reg .b32 %r<4;"), 6, "`>`");
    err_at(&e("add.s32 %r1, %r2\nret;"), 7, "`,` or `;`");
    err_at(&e("add.s32 %r1, %r2 %r3;"), 6, "`,` or `;`");
    err_at(&e("mov.f32 %f1, 0f3F80;"), 6, "8 hex digits");
    err_at(&e("mov.f64 %fd1, 0d3FF0;"), 6, "16 hex digits");
    err_at(&e("mov.u32 %r1, -0f3F800000;"), 6, "`-`");
    err_at(&e("mov.u32 %r1, 0x;"), 6, "integer literal");
    err_at(&e("mov.u64 %rd1, 18446744073709551616;"), 6, "64 bits");
    err_at(&e("mov.u32 %r1, 09;"), 6, "integer literal");
    err_at(&e("ld.u32 %r1, [%rd1+%rd2];"), 6, "integer offset");
    err_at(&e("ld.u32 %r1, [%rd1+1.5];"), 6, "integer");
    err_at(&e("ld.u32 %r1, [];"), 6, "empty address");
    err_at(&e("ld.u32 %r1, [%rd1*4];"), 6, "`+`, `-` or `]`");
    err_at(&e("mov.b32 %r1, {};"), 6, "operand in the vector");
    err_at(&e("ld..u32 %r1, [%rd1];"), 6, "empty part");
    err_at(&e("%r1 ret;"), 6, "opcode");
    err_at(&e(".maxnreg 4"), 6, "not supported in a function body");
    err_at(&e("mov.u32 %r1, ^;"), 6, "an operand");
    err_at(&format!("{HEADER}.entry k()\n{{\nret;\n"), 5, "not closed");
    err_at(
        &format!("{HEADER}.entry k()\n{{\n{{\nret;\n}}\n"),
        5,
        "not closed",
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let body = "{".repeat(10_000);
    let e = parse_err(&format!("{HEADER}.entry k() {body}"));
    assert!(e.message.contains("too deep"), "{e}");
    let vec = format!(
        "mov.b32 %r1, {}%r2{};",
        "{".repeat(10_000),
        "}".repeat(10_000)
    );
    let e = parse_err(&format!("{HEADER}.entry k() {{ {vec} }}"));
    assert!(e.message.contains("too deep"), "{e}");
    let init = format!(
        "{HEADER}.global .u32 x[1] = {}1{};",
        "{".repeat(10_000),
        "}".repeat(10_000)
    );
    assert!(parse_err(&init).message.contains("too deep"));
}

/// A module using most constructs, for the robustness properties.
const SAMPLE: &str = ".version 8.0\n.target sm_80\n.address_size 64\n\
.extern .shared .align 16 .b8 smem[];\n.const .f32 c[2] = {0f3F800000, 2.0};\n\
.func (.param .b32 r) f(.param .b32 a)\n{\n.reg .b32 %r<2>;\nld.param.b32 %r0, [a];\nst.param.b32 [r+0], %r0;\nret;\n}\n\
.visible .entry k(.param .u64 p)\n.maxntid 128, 1, 1\n{\n.reg .pred %p<2>;\n.reg .b32 %r<8>;\n.reg .b64 %rd<4>;\n\
ld.param.u64 %rd1, [p];\nmov.u32 %r1, %tid.x;\nsetp.lt.u32 %p1, %r1, 32;\n@!%p1 bra $L__BB0_1;\n\
{ .reg .b16 %rs<2>; mov.b32 {%rs0, %rs1}, %r1; mov.b32 %r2, {0, %rs1}; }\n\
shfl.sync.idx.b32 %r3|%p0, %r1, 0, 31, -1;\n\
{ .param .b32 param0; st.param.b32 [param0+0], %r3; .param .b32 retval0;\ncall.uni (retval0),\nf,\n(param0);\nld.param.b32 %r4, [retval0+0]; }\n\
st.global.v2.u32 [%rd1+-8], {%r4, %r2};\n$L__BB0_1:\nret;\n}\n";

#[test]
fn sample_parses() {
    let m = parse(SAMPLE);
    assert_eq!(m.functions.len(), 2);
    assert_eq!(m.functions[1].body.len(), 13);
}

proptest! {
    #[test]
    fn truncations_give_errors_not_panics(cut in 0usize..SAMPLE.len()) {
        let text = &SAMPLE[..cut];
        let kernel_start = SAMPLE.find(".visible .entry").unwrap_or(0);
        let kernel_end = SAMPLE.rfind('}').unwrap_or(0);
        let result = parse_module(text);
        if cut > kernel_start && cut <= kernel_end {
            prop_assert!(result.is_err(), "a cut inside the kernel parsed: {cut}");
        }
    }

    #[test]
    fn corrupted_modules_never_panic(
        edits in proptest::collection::vec((0usize..SAMPLE.len(), proptest::sample::select(
            vec!['{', '}', '[', ']', '(', ')', ';', ',', '.', '%', '@', '!', '-', '+', '|', '<', '>', '=', '0', 'f', 'x', '"', '/', '*', '_', ' ', '\n', 'é'],
        )), 1..6)
    ) {
        let mut chars: Vec<char> = SAMPLE.chars().collect();
        let len = chars.len();
        for (i, c) in edits {
            chars[i % len] = c;
        }
        let text: String = chars.into_iter().collect();
        let _ = parse_module(&text);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse_module(&text);
        let _ = parse_module(&format!("{HEADER}.entry k() {{ {text} }}"));
    }
}
