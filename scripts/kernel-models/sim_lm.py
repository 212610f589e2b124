# Host model of cuda/lm.cu: attention (online softmax over 256-key chunks, GQA,
# causal bounds, cache rows b * tmax + j, vec / scalar head paths), rms_norm
# (block and warp reductions), rope, argmax_rows, write_kv and the row gather
# (embedding / take_rows), thread by thread on simt.Block, against
# src/reference/lm.rs and the generate example's greedy argmax. Also the i32
# index math at the largest shapes src/cuda/lm.rs accepts.
import math
import random
import sys
import numpy as np
from simt import F32, I32_MAX, Block, Global, Shared, bar, i32, shfl_xor

THREADS = 256
PACK = {"f32": 4, "f16": 8, "bf16": 8}
TOL = {"f32": 2e-5, "f16": 5e-3, "bf16": 1.6e-2}


def rnd(x, dt):
    x = np.asarray(x, np.float32)
    if dt == "f16":
        return x.astype(np.float16).astype(np.float32)
    if dt == "bf16":
        b = x.view(np.uint32).astype(np.uint64)
        b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16 << 16
        return b.astype(np.uint32).view(np.float32)
    return x


def load(g, i, P):
    if P > 1:
        assert i % P == 0, f"{g.name}: misaligned 16-byte access at {i}"
    return [F32(g.load(i + k)) for k in range(P)]


def store(g, i, v, dt):
    if len(v) > 1:
        assert i % len(v) == 0, f"{g.name}: misaligned 16-byte store at {i}"
    for k, x in enumerate(v):
        g.store(i + k, rnd(x, dt))


fmax = lambda a, b: F32(np.fmax(a, b))
fadd = lambda a, b: F32(a + b)


def warp_reduce(v, op):
    for o in (16, 8, 4, 2, 1):
        v = op(v, (yield shfl_xor(v, o)))
    return v


def block_reduce(blk, v, scratch, op, tid):
    v = yield from warp_reduce(v, op)
    yield bar()
    if tid & 31 == 0:
        scratch.store(tid >> 5, v, tid)
    yield bar()
    r = scratch.load(0, tid)
    for w in range(1, blk.n >> 5):
        r = op(r, scratch.load(w, tid))
    return r


# ------------------------------------------------------------------ attention
def attention_gpu(q, kc, vc, tq, tmax, kv_len, hq, hkv, d, dt, vec):
    P = PACK[dt] if vec else 1
    if vec:
        assert d % P == 0
    rows = q.shape[0]
    out = Global(np.full(q.size, np.nan, np.float32), "out")
    scale = F32(1.0) / F32(math.sqrt(d))  # the wrapper: 1 / (d as f32).sqrt()
    kv_cols = hkv * d
    for bid in range(rows * hq):
        h, row = bid % hq, bid // hq
        b, visible = row // tq, kv_len - tq + row % tq + 1
        kvh = h // (hq // hkv)

        def ok(i):
            r, c = divmod(i, kv_cols)
            return b * tmax <= r < b * tmax + visible and kvh * d <= c < kvh * d + d
        K, V, Q = Global(kc, "k_cache", ok), Global(vc, "v_cache", ok), Global(q, "q")
        blk = Block(THREADS)
        q_s, p_s = Shared(blk, 256, "q_s"), Shared(blk, THREADS, "p_s")
        part, scratch = Shared(blk, THREADS * P, "partial"), Shared(blk, 32, "scratch")

        def th(tid):
            k_base = i32(b * tmax * kv_cols) + kvh * d
            q_row = i32(row * hq * d) + h * d
            for k in range(tid, d, THREADS):
                q_s.store(k, F32(Q.load(q_row + k)), tid)
            yield bar()
            packs = d // P
            groups, pk, group = THREADS // packs, tid % packs, tid // packs
            m, l, acc = F32(-np.inf), F32(0), [F32(0)] * P
            for c0 in range(0, visible, THREADS):
                n = min(THREADS, visible - c0)
                s = F32(-np.inf)
                if tid < n:
                    k_row = k_base + i32((c0 + tid) * kv_cols)
                    dot = F32(0)
                    for p in range(packs):
                        kv = load(K, k_row + p * P, P)
                        for k in range(P):
                            dot = F32(dot + F32(q_s.load(p * P + k, tid) * kv[k]))
                    s = F32(dot * scale)
                m_new = fmax(m, (yield from block_reduce(blk, s, scratch, fmax, tid)))
                prob = F32(np.exp(F32(s - m_new))) if tid < n else F32(0)
                p_s.store(tid, prob, tid)
                corr = F32(np.exp(F32(m - m_new)))
                l = F32(l * corr + (yield from block_reduce(blk, prob, scratch, fadd, tid)))
                m = m_new
                acc = [F32(a * corr) for a in acc]
                if group < groups:
                    for j in range(group, n, groups):
                        pj = p_s.load(j, tid)
                        vv = load(V, k_base + i32((c0 + j) * kv_cols) + pk * P, P)
                        acc = [F32(pj * vv[k] + acc[k]) for k in range(P)]
                yield bar()
            if group < groups:
                for k in range(P):
                    part.store((group * packs + pk) * P + k, acc[k], tid)
            yield bar()
            if tid < packs:
                o = []
                for k in range(P):
                    tot = F32(0)
                    for g in range(groups):
                        tot = F32(tot + part.load((g * packs + tid) * P + k, tid))
                    o.append(F32(tot / l))
                store(out, row * hq * d + h * d + tid * P, o, dt)
        blk.run(th)
    assert out.written.all(), "attention left outputs unwritten"
    return out.a.reshape(q.shape)


def attention_ref(q, k, v, batch, hq, hkv, d, dt):
    tq, tk = q.shape[0] // batch, k.shape[0] // batch
    group, scale = hq // hkv, F32(1.0) / F32(math.sqrt(d))
    out = np.zeros(q.shape, np.float32)
    for b in range(batch):
        for i in range(tq):
            row, vis = b * tq + i, tk - tq + i + 1
            for h in range(hq):
                qc, kc = h * d, (h // group) * d
                qs = q[row, qc:qc + d]
                ks = k[b * tk:b * tk + vis, kc:kc + d]
                sc = np.array([np.cumsum(qs * kr, dtype=np.float32)[-1] for kr in ks], np.float32) * scale
                e = np.exp(sc - sc.max()).astype(np.float32)
                acc = (e[:, None] * v[b * tk:b * tk + vis, kc:kc + d]).sum(0, dtype=np.float32)
                out[row, qc:qc + d] = acc / e.sum(dtype=np.float32)
    return rnd(out, dt)


def check_attention(rng, batch, tq, tmax, kv_len, hq, hkv, d, dt, vec):
    q = rnd(rng.standard_normal((batch * tq, hq * d)), dt)
    kc = rnd(rng.standard_normal((batch * tmax, hkv * d)), dt)
    vc = rnd(rng.standard_normal((batch * tmax, hkv * d)), dt)
    kc[np.isin(np.arange(batch * tmax) % tmax, np.arange(kv_len, tmax))] = np.nan  # never read
    got = attention_gpu(q, kc, vc, tq, tmax, kv_len, hq, hkv, d, dt, vec)
    idx = np.concatenate([np.arange(b * tmax, b * tmax + kv_len) for b in range(batch)])
    want = attention_ref(q, kc[idx], vc[idx], batch, hq, hkv, d, dt)
    err = np.abs(got - want).max()
    assert err <= TOL[dt] * max(1.0, np.abs(want).max()), (batch, tq, kv_len, hq, hkv, d, dt, vec, err)


# ------------------------------------------------------------------- rms_norm
def rms_norm_gpu(x, w, eps, dt, vec):
    rows, d = x.shape
    P = PACK[dt] if vec and d % PACK[dt] == 0 else 1
    rpb = THREADS // 32 if d <= 1024 else 1  # the wrapper's choice
    X, W = Global(x, "x"), Global(w, "w")
    out = Global(np.full(x.size, np.nan, np.float32), "out")
    for cta in range(-(-rows // rpb)):
        blk = Block(THREADS)
        scratch = Shared(blk, 32, "scratch")

        def th(tid):
            if rpb == 1:
                row, lane, stride = cta, tid, THREADS
            else:
                row, lane, stride = cta * rpb + (tid >> 5), tid & 31, 32
                if row >= rows:
                    return
            xr = i32(row * d)
            ss = F32(0)
            for p in range(lane, d // P, stride):
                for v in load(X, xr + p * P, P):
                    ss = F32(np.float64(v) * v + ss)  # fmaf: one rounding
            if rpb == 1:
                ss = yield from block_reduce(blk, ss, scratch, fadd, tid)
            else:
                ss = yield from warp_reduce(ss, fadd)
            scale = F32(1) / F32(np.sqrt(F32(F32(ss / F32(d)) + F32(eps))))
            for p in range(lane, d // P, stride):
                v, g = load(X, xr + p * P, P), load(W, p * P, P)
                store(out, xr + p * P, [F32(F32(a * scale) * c) for a, c in zip(v, g)], dt)
        blk.run(th)
    assert out.written.all()
    return out.a.reshape(x.shape)


def rms_norm_ref(x, w, eps, dt):
    out = np.zeros_like(x)
    for r in range(x.shape[0]):
        ss = np.cumsum(x[r] * x[r], dtype=np.float32)[-1]
        scale = F32(1) / F32(np.sqrt(F32(ss / F32(x.shape[1]) + F32(eps))))
        out[r] = (x[r] * scale) * w
    return rnd(out, dt)


# ----------------------------------------------------------------------- rope
def rope_gpu(x, pos, hd, theta, dt, vec):
    rows, cols = x.shape
    half = hd // 2
    P = PACK[dt] if vec and half % PACK[dt] == 0 else 1
    X, POS = Global(x, "x"), Global(pos, "positions")
    out = Global(np.full(x.size, np.nan, np.float32), "out")
    for row in range(rows):
        blk = Block(THREADS)
        table = Shared(blk, hd, "table")  # dynamic: head_dim floats

        def th(tid):
            p_ = F32(POS.load(row))
            for i in range(tid, half, THREADS):
                e = F32(F32(2 * i) / F32(hd))
                pw = F32(float(theta) ** float(e))
                ang = F32(p_ * F32(F32(1) / pw))
                table.store(i, F32(math.cos(float(ang))), tid)
                table.store(half + i, F32(math.sin(float(ang))), tid)
            yield bar()
            pph = half // P
            for idx in range(tid, (cols // hd) * pph, THREADS):
                base, i0 = (idx // pph) * hd, (idx % pph) * P
                a = load(X, i32(row * cols) + base + i0, P)
                b = load(X, row * cols + base + half + i0, P)
                c = [table.load(i0 + k, tid) for k in range(P)]
                s = [table.load(half + i0 + k, tid) for k in range(P)]
                store(out, row * cols + base + i0, [F32(F32(a[k] * c[k]) - F32(b[k] * s[k])) for k in range(P)], dt)
                store(out, row * cols + base + half + i0,
                      [F32(F32(b[k] * c[k]) + F32(a[k] * s[k])) for k in range(P)], dt)
        blk.run(th)
    assert out.written.all()
    return out.a.reshape(x.shape)


def rope_ref(x, pos, hd, theta, dt):
    half = hd // 2
    inv = np.array([F32(1) / F32(float(theta) ** float(F32(2 * i) / F32(hd))) for i in range(half)], np.float32)
    out = np.zeros_like(x)
    for t, p in enumerate(pos):
        f = (F32(p) * inv).astype(np.float32)
        c, s = np.cos(f), np.sin(f)
        for h0 in range(0, x.shape[1], hd):
            a, b = x[t, h0:h0 + half], x[t, h0 + half:h0 + hd]
            out[t, h0:h0 + half] = a * c - b * s
            out[t, h0 + half:h0 + hd] = b * c + a * s
    return rnd(out, dt)


# --------------------------------------------------------------------- argmax
def argmax_gpu(x):
    rows, cols = x.shape
    vec = cols % 4 == 0
    X = Global(x, "x")
    out = Global(np.full(rows, -7, np.int64), "out")
    for r in range(rows):
        blk = Block(THREADS)
        best_v, best_i = Shared(blk, 8, "best_v"), Shared(blk, 8, "best_i")

        def th(tid):
            st = {"v": F32(-np.inf), "i": I32_MAX, "bad": False}

            def visit(v, i):
                st["bad"] |= not np.isfinite(v)
                if v > st["v"] or (v == st["v"] and i < st["i"]):
                    st["v"], st["i"] = v, i
            xr = i32(r * cols)
            if vec:
                for p in range(tid, cols // 4, THREADS):
                    for k, v in enumerate(load(X, xr + 4 * p, 4)):
                        visit(v, 4 * p + k)
            else:
                for i in range(tid, cols, THREADS):
                    visit(F32(X.load(xr + i)), i)
            bv, bi = st["v"], st["i"]
            for o in (16, 8, 4, 2, 1):
                ov = yield shfl_xor(bv, o)
                oi = yield shfl_xor(bi, o)
                if ov > bv or (ov == bv and oi < bi):
                    bv, bi = ov, oi
            if tid & 31 == 0:
                best_v.store(tid >> 5, bv, tid)
                best_i.store(tid >> 5, bi, tid)
            any_bad = yield bar(st["bad"])
            if tid == 0:
                for w in range(1, THREADS >> 5):
                    wv, wi = best_v.load(w, tid), best_i.load(w, tid)
                    if wv > bv or (wv == bv and wi < bi):
                        bv, bi = wv, wi
                out.store(r, -1 if any_bad else bi)
        blk.run(th)
    assert out.written.all()
    return out.a


def argmax_ref(row):  # examples/generate/model.rs `argmax`, error -> -1
    best = 0
    for i, v in enumerate(row):
        if not np.isfinite(v):
            return -1
        if v > row[best]:
            best = i
    return best


# ----------------------------------------------------- gather rows, write_kv
def copy_row(dst, doff, src, soff, cols, P, tid):
    if P > 1:
        for i in range(tid, cols // P, THREADS):
            store(dst, doff + i * P, load(src, soff + i * P, P), "f32")
    else:
        for i in range(tid, cols, THREADS):
            dst.store(doff + i, src.load(soff + i))


def gather_gpu(src, ids, dt):
    n_src, cols = src.shape
    P = PACK[dt] if cols % PACK[dt] == 0 else 1
    S, IDS = Global(src, "src"), Global(ids, "ids")
    out = Global(np.full(len(ids) * cols, np.nan, np.float32), "out")
    for r in range(len(ids)):
        def th(tid):
            i = IDS.load(r)
            if 0 <= i < n_src:
                copy_row(out, i32(r * cols), S, i32(i * cols), cols, P, tid)
            else:
                for c in range(tid, cols, THREADS):
                    out.store(r * cols + c, 0.0)
            yield from ()
        Block(THREADS).run(th)
    assert out.written.all()
    return out.a.reshape(len(ids), cols)


def write_kv_gpu(cache, new, start, batch, dt):
    cols = cache.shape[1]
    tq, tmax = new.shape[0] // batch, cache.shape[0] // batch
    assert start + tq <= tmax
    P = PACK[dt] if cols % PACK[dt] == 0 else 1
    C, N = Global(cache.copy(), "cache"), Global(new, "new")
    for r in range(batch * tq):
        def th(tid):
            dst = i32((r // tq) * tmax + start + r % tq)
            copy_row(C, i32(dst * cols), N, i32(r * cols), cols, P, tid)
            yield from ()
        Block(THREADS).run(th)
    return C.a.reshape(cache.shape)


# ------------------------------------------------- i32 at the largest shapes
def i32_extremes():
    """Every intermediate of the kernels' index math, at the last block and
    thread, for shapes the wrapper accepts (all tensors <= I32_MAX elements)."""
    M = I32_MAX
    # attention: q [batch*tq, hq*d], caches [batch*tmax, hkv*d].
    for batch, tq, tmax, hq, hkv, d in [(1, 1, M // 256, 1, 1, 256), (M // 256, 1, 1, 1, 1, 256),
                                        (1, M // 8192, M // 8192, 32, 32, 256), (1, 1, M // 2048, 64, 8, 256)]:
        assert batch * tq * hq * d <= M and batch * tmax * hkv * d <= M
        kv_cols, bid = hkv * d, batch * tq * hq - 1
        row, h = bid // hq, bid % hq
        b = row // tq
        i32(b * tmax)
        i32(b * tmax * kv_cols + (h // (hq // hkv)) * d)
        i32(b * tmax * kv_cols + (tmax - 1) * kv_cols + kv_cols - 1)
        i32(row * hq), i32(row * hq * d + h * d + d - 1)
    # write_kv / gather / rms_norm / rope / argmax: row * cols of the last row.
    for rows, cols in [(M // 4, 4), (1, M), (M, 1)]:
        i32((rows - 1) * cols + cols - 1)
        i32((-(-rows // 8) - 1) * 8 + 7)  # rms_norm warp rows: blockIdx.x * 8 + warp
    print("i32 extremes ok")


def main(seed):
    rng = np.random.default_rng(seed)
    random.seed(seed)
    i32_extremes()
    for dt in ("f32", "bf16", "f16"):
        # argmax: ties, -0/+0, non-finite, both load paths
        for cols in (1, 3, 8, 300, 1024, 1027):
            x = rng.integers(-3, 4, (3, cols)).astype(np.float32)
            x[1, rng.integers(cols)] = -0.0
            if cols > 2:
                x[2, rng.integers(cols)] = random.choice([np.nan, np.inf, -np.inf])
            got = argmax_gpu(x)
            assert list(got) == [argmax_ref(r) for r in x], (cols, got)
        # gather with out-of-range ids, write_kv
        for cols in (8, 12, 24, 5):
            src = rnd(rng.standard_normal((7, cols)), dt)
            ids = np.array([0, 6, -1, 7, 3, 3], np.int64)
            got = gather_gpu(src, ids, dt)
            want = np.where(((ids >= 0) & (ids < 7))[:, None], src[np.clip(ids, 0, 6)], 0)
            assert np.array_equal(got, want)
            batch, tq, tmax, start = 2, 3, 7, 4
            cache = rnd(rng.standard_normal((batch * tmax, cols)), dt)
            new = rnd(rng.standard_normal((batch * tq, cols)), dt)
            got, want = write_kv_gpu(cache, new, start, batch, dt), cache.copy()
            for b in range(batch):
                want[b * tmax + start:b * tmax + start + tq] = new[b * tq:(b + 1) * tq]
            assert np.array_equal(got, want)
        # rms_norm: warp rows (d <= 1024) and whole-block rows, both paths
        for rows, d in ((9, 64), (3, 40), (2, 1030), (2, 2048), (17, 12)):
            for vec in (True, False):
                x = rnd(rng.standard_normal((rows, d)) * 3, dt)
                w = rnd(rng.standard_normal(d), dt)
                got, want = rms_norm_gpu(x, w, 1e-6, dt, vec), rms_norm_ref(x, w, 1e-6, dt)
                assert np.abs(got - want).max() <= TOL[dt] * np.abs(want).max(), (rows, d, dt)
        # rope
        for rows, hd, heads in ((3, 16, 2), (2, 64, 3), (2, 6, 4), (1, 32, 1)):
            for vec in (True, False):
                x = rnd(rng.standard_normal((rows, hd * heads)), dt)
                pos = rng.integers(0, 5000, rows)
                got, want = rope_gpu(x, pos, hd, 1e4, dt, vec), rope_ref(x, pos, hd, 1e4, dt)
                assert np.abs(got - want).max() <= 2 * TOL[dt] * np.abs(want).max(), (rows, hd, dt)
    # attention: chunks (kv_len > 256, > 512), GQA, tq > 1 inside a longer cache
    cases = [(2, 2, 9, 7, 4, 2, 8, "f32", True), (1, 3, 600, 530, 2, 1, 16, "bf16", True),
             (2, 1, 300, 257, 2, 2, 8, "f16", True), (1, 2, 520, 513, 3, 3, 5, "f32", False),
             (2, 1, 40, 33, 4, 1, 256, "bf16", True), (1, 1, 20, 20, 2, 1, 256, "f32", False),
             (1, 2, 260, 258, 1, 1, 12, "bf16", False)]
    for c in cases:
        check_attention(rng, *c)
    print("lm ok")


if __name__ == "__main__":
    for s in (sys.argv[1:] or ["1"]):
        main(int(s))
