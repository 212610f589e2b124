#!/usr/bin/env python3
"""Cross-checks every cudarc launch in src/cuda/*.rs against the extern "C"
kernel signatures of cuda/*.cu (macros expanded with `nvcc -E`): the number
of arguments and, position by position, pointer vs scalar and the scalar's
type (i32 / f32 / u64 ...). Pointer element types are not inferred: check
those by hand against the SAFETY comments. Best effort: a launch whose kernel
name or scalar types it cannot resolve is reported as UNRESOLVED, not OK.

    NVCC=.nvcc/nvidia/cu13/bin/nvcc python3 scripts/check-launch-args.py

Exit status 1 when some launch matches no kernel signature.
"""
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_SCALARS = {"int32_t": "i32", "int": "i32", "float": "f32", "int64_t": "i64",
             "unsigned long long": "u64", "uint32_t": "u32", "double": "f64"}
SUFFIXES = "(?:f32|f16|bf16)"


def kernel_signatures():
    """{name: [kind]} with kind 'ptr' or a Rust scalar type, for every kernel."""
    nvcc = os.environ.get("NVCC", "nvcc")
    sigs = {}
    for cu in sorted(glob.glob(os.path.join(ROOT, "cuda", "*.cu"))):
        src = subprocess.run([nvcc, "-E", "-std=c++17", "-I" + os.path.join(ROOT, "cuda"),
                              "-x", "cu", cu], check=True, capture_output=True,
                             text=True).stdout
        decl = r'extern\s+"C"\s+(?:__attribute__\(\(global\)\)|__global__)[^{;]*?\b(dl_\w+)\s*\(([^)]*)\)'
        for m in re.finditer(decl, src, re.S):
            kinds = []
            for p in m.group(2).split(","):
                p = " ".join(p.replace("__restrict__", "").replace("const", "").split())
                if "*" in p:
                    kinds.append("ptr")
                else:
                    ctype = " ".join(p.split()[:-1])
                    kinds.append(C_SCALARS.get(ctype, "C:" + ctype))
            sigs[m.group(1)] = kinds
    return sigs


def balanced(text, start):
    """Index just past the bracket group opening at text[start]."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    close, depth = pairs[text[start]], 0
    for i in range(start, len(text)):
        if text[i] == text[start]:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def functions(text):
    """[(name, signature, body)] of the fns of a Rust file."""
    out = []
    for m in re.finditer(r"\bfn\s+(\w+)\s*(?:<[^(]*>)?\s*\(", text):
        open_paren = m.end() - 1
        after_args = balanced(text, open_paren)
        brace = text.find("{", after_args)
        if brace < 0 or ";" in text[after_args:brace]:
            continue
        out.append((m.group(1), text[m.start():brace], text[brace:balanced(text, brace)]))
    return out


def return_types(fns, name):
    """The tuple element types of fn `name`'s return type (Result unwrapped)."""
    for fname, sig, _ in fns:
        if fname == name and "->" in sig:
            ret = sig.split("->", 1)[1].strip()
            ret = re.sub(r"^Result<(.*)>$", r"\1", ret)
            if ret.startswith("("):
                return [t.strip() for t in split_top(ret[1:-1])]
            return [ret]
    return None


def split_top(s):
    """Splits s at top-level commas."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "(<[{":
            depth += 1
        elif ch in ")>]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def type_kind(ty):
    ty = ty.strip()
    if re.search(r"Cuda(Slice|View|ViewMut)\b|\bCUdeviceptr\b", ty):
        return "ptr"
    m = re.search(r"\b(i32|f32|u64|i64|u32|usize|f64|bool)\b", ty)
    return m.group(1) if m else "?"


def expr_kind(expr, fns):
    expr = expr.strip()
    m = re.search(r"\bas\s+(i32|f32|u64|i64|u32|usize|f64)\s*$", expr)
    if m:
        return m.group(1)
    m = re.match(r"(\w+)(?:::<[^>]*>)?\s*\(", expr)
    if m and return_types(fns, m.group(1)):
        return return_types(fns, m.group(1))
    if re.search(r"\.len\(\)\s*$", expr):
        return "usize"
    if "num_blocks_view" in expr or re.search(r"\.slice(_mut)?\(\)", expr):
        return "ptr"
    m = re.findall(r"\bas\s+(i32|f32|u64|i64|u32|usize|f64)\b", expr)
    if m:
        return m[-1]
    m = re.search(r"\b(i32|f32|u64)::from\b|\d(i32|f32|u64)\b", expr)
    if m:
        return m.group(1) or m.group(2)
    return "?"


def scalar_type(ident, sig, body, fns, file_text):
    """Kind of the value `&ident` pushes."""
    m = re.search(r"\b" + ident + r"\s*:\s*([^,)]+)", sig)
    if m:
        return type_kind(m.group(1))
    m = re.search(r"const\s+" + ident + r"\s*:\s*(\w+)", file_text)
    if m:
        return "null" if ident == "NULL" else type_kind(m.group(1))
    for lm in re.finditer(r"let\s+(?:mut\s+)?(\(|\w+)", body):
        eq = body.find("=", lm.end())
        end = body.find(";", eq)
        if lm.group(1) == "(":
            names = [n.strip() for n in body[lm.end():body.find(")", lm.end())].split(",")]
            if ident not in names:
                continue
            rhs = body[eq + 1:end].strip()
            if re.search(r"\.device_ptr(_mut)?\(", rhs):
                return "ptr" if names.index(ident) == 0 else "?"
            if rhs.startswith("match"):
                arm = rhs.find("=> (")
                rhs = rhs[arm + 3:balanced(rhs, arm + 3)]
            kinds = expr_kind(rhs, fns)
            if isinstance(kinds, list):
                return type_kind(kinds[names.index(ident)])
            if rhs.startswith("("):
                kind = expr_kind(split_top(rhs[1:-1])[names.index(ident)], fns)
                return type_kind(kind[0]) if isinstance(kind, list) else kind
        elif lm.group(1) == ident:
            kinds = expr_kind(body[eq + 1:end], fns)
            return type_kind(kinds[0]) if isinstance(kinds, list) else kinds
    return "?"


def field_type(var, field, body, file_text):
    """Kind of `&var.field` where `let var = Struct::...` or `Struct { ... }`
    is in the body and `struct Struct { field: ty, ... }` in the file."""
    m = re.search(r"let\s+(?:mut\s+)?" + var + r"\s*=\s*(\w+)\s*(?:::|\{)", body)
    if not m:
        return "?"
    decl = re.search(r"struct\s+" + m.group(1) + r"\s*\{", file_text)
    if not decl:
        return "?"
    fields = file_text[decl.end():balanced(file_text, decl.end() - 1)]
    f = re.search(r"\b" + field + r"\s*:\s*([^,}]+)", fields)
    return type_kind(f.group(1)) if f else "?"


def arg_kinds(expr, sig, body, fns, file_text):
    expr = expr.strip()
    if expr.startswith("&") and re.fullmatch(r"&\w+", expr):
        return scalar_type(expr[1:], sig, body, fns, file_text)
    m = re.fullmatch(r"&(\w+)\.(\w+)", expr)
    if m:
        return field_type(m.group(1), m.group(2), body, file_text)
    return "ptr"


def pushes(region, sig, body, fns, file_text):
    """Alternatives (list of kind lists) of the args pushed in `region`."""
    alts = [[]]
    i = 0
    pat = re.compile(r"\.arg\(|\b(push_\w+)\(&mut launch|\bif let Some\([^)]*\)\s*=\s*\w+\s*\{")
    while True:
        m = pat.search(region, i)
        if not m:
            return alts
        if m.group(0).startswith(".arg("):
            end = balanced(region, m.end() - 1)
            kind = arg_kinds(region[m.end():end - 1], sig, body, fns, file_text)
            alts = [a + [kind] for a in alts]
            i = end
        elif m.group(1):
            end = balanced(region, m.start(1) + len(m.group(1)))
            helper = next(b for n, _, b in fns if n == m.group(1))
            sub = []
            for branch in re.split(r"\}\s*else\s*\{|=>", helper):
                got = pushes(branch, sig, helper, fns, file_text)
                if got != [[]]:
                    sub.extend(got)
            alts = [a + s for a in alts for s in sub]
            i = end
        else:
            end = balanced(region, m.end() - 1)
            sub = pushes(region[m.end():end - 1], sig, body, fns, file_text)
            alts = [a + s for a in alts for s in sub + [[]]]
            i = end


def name_pattern(func_var, launch_at, sig, body, fns, file_text):
    """A regex of the kernel names launch_builder(&func_var) may load."""
    before = body[:launch_at]
    found = list(re.finditer(r"let\s+(?:\(\s*)?" + func_var + r"\b[^=]*=\s*", before))
    if not found:
        return None
    m = found[-1]
    rhs = body[m.end():body.find(";", m.end())]
    literals = re.findall(r'"([^"]*)"', rhs)
    lookup = re.search(r"backend\.function\(\s*\w+\s*,\s*(.*)\)\?", rhs, re.S)
    if lookup:
        expr = lookup.group(1)
        params = {}
    else:
        call = re.match(r"(\w+)", rhs.strip())
        helper = next(((s, b) for n, s, b in fns if call and n == call.group(1)), None)
        if not helper:
            return None
        hm = re.search(r"backend\.function\(\s*\w+\s*,\s*(.*?)\)\?", helper[1], re.S)
        if not hm:
            return None
        expr = hm.group(1)
        # Literal names at this call, else the ones the enclosing fn's callers pass.
        literals = literals or caller_literals(re.search(r"fn\s+(\w+)", sig).group(1), file_text)
        params = {p: literals for p in re.findall(r"(\w+)\s*:\s*&str", helper[0])}
    return expr_pattern(expr, params, sig, file_text)


def caller_literals(fn_name, file_text):
    """The "dl_*" literals passed in the file's calls of fn `fn_name`."""
    lits = []
    for m in re.finditer(r"(?<!fn )\b" + fn_name + r"\(", file_text):
        call = file_text[m.end() - 1:balanced(file_text, m.end() - 1)]
        lits += re.findall(r'"(dl_\w+)"', call)
    return lits


def expr_pattern(expr, params, sig, file_text):
    expr = expr.strip()
    m = re.match(r"&?lane_variant\(\"(\w+)\"", expr)
    if m:
        return m.group(1) + r"_v\d+"
    m = re.match(r"&?dtype_kernel::<\w+>\(\"(\w+)\"", expr)
    if m:
        return m.group(1) + "_" + SUFFIXES + "_(?:vec|scalar)"
    m = re.match(r'&?format!\("([^"]*)"', expr)
    if m:
        out = re.escape(m.group(1)).replace(r"\{\}", SUFFIXES)
        for p, lits in params.items():
            out = out.replace(r"\{" + p + r"\}", "(?:" + "|".join(map(re.escape, lits)) + ")")
        return out
    m = re.fullmatch(r'"(\w+)"', expr)
    if m:
        return m.group(1)
    if re.fullmatch(r"\w+", expr) and re.search(r"\b" + expr + r"\s*:\s*&str", sig):
        callers = caller_literals(re.search(r"fn\s+(\w+)", sig).group(1), file_text)
        return "(?:" + "|".join(callers) + ")" if callers else None
    return None


def main():
    sigs = kernel_signatures()
    bad, sites, launched = 0, 0, set()
    for path in sorted(glob.glob(os.path.join(ROOT, "src", "cuda", "*.rs"))):
        text = open(path).read()
        fns = functions(text)
        for fname, sig, body in fns:
            for lb in re.finditer(r"launch_builder\(&(\w+)\)", body):
                end = body.find(".launch(", lb.end())
                alts = pushes(body[lb.end():end], sig, body, fns, text)
                pattern = name_pattern(lb.group(1), lb.start(), sig, body, fns, text)
                line = text[: text.find(body)].count("\n") + body[: lb.start()].count("\n") + 1
                where = f"{os.path.relpath(path, ROOT)}:{line} ({fname})"
                sites += 1
                names = [k for k in sigs if pattern and re.fullmatch(pattern, k)]
                launched.update(names)
                if not names:
                    print(f"UNRESOLVED {where}: kernel name pattern {pattern!r}")
                    continue
                for name in names:
                    want = sigs[name]
                    ok = [a for a in alts if len(a) == len(want) and all(
                        g == w or (w == "ptr" and g == "null") for g, w in zip(a, want))]
                    unknown = [a for a in alts if len(a) == len(want) and "?" in a]
                    if ok:
                        print(f"OK         {where}: {name}({', '.join(want)})")
                    elif unknown:
                        print(f"UNRESOLVED {where}: {name}({', '.join(want)}) vs {unknown}")
                    else:
                        bad += 1
                        print(f"MISMATCH   {where}: {name}({', '.join(want)}) vs pushed {alts}")
    total = len(re.findall(r"launch_builder\(", "".join(
        open(p).read() for p in glob.glob(os.path.join(ROOT, "src", "cuda", "*.rs")))))
    print(f"{sites} of {total} launch sites parsed; kernels never launched: "
          f"{sorted(set(sigs) - launched) or 'none'}")
    sys.exit(1 if bad or sites != total else 0)


if __name__ == "__main__":
    main()
