# Host model of cuda/router_grad.cu (route_backward: per-warp dp, slot-order
# accumulation, renormalisation, load-balancing and z-loss terms, softmax
# backward butterfly; the two-pass loss reductions) and of the live-element
# bound of cuda/activation.cu, lane by lane on simt.Block, against
# src/reference/router_grad.rs and src/reference/loss.rs.
import sys
import numpy as np
from simt import F32, I32_MAX, Block, Global, Shared, bar, i32, shfl, shfl_xor

THREADS, WARPS = 256, 8
MAX_LOSS_CTAS = 1024


def vpt_for(E):  # backward_kernel_name
    c = -(-E // 32)
    return next(v for v in (1, 2, 4, 8, 16, 32) if c <= v)


def warp_max(v):
    for o in (16, 8, 4, 2, 1):
        v = F32(np.fmax(v, (yield shfl_xor(v, o))))
    return v


def warp_sum(v):
    for o in (16, 8, 4, 2, 1):
        v = F32(v + (yield shfl_xor(v, o)))
    return v


def route_backward_gpu(logits, probs, ids, w, gw, counts, renorm, lb, zc):
    T, E = probs.shape
    k = ids.shape[1]
    VPT = vpt_for(E)
    assert E <= 32 * VPT
    t64, e64, k64 = float(T), float(E), float(k)  # backward_scales, f64
    lb_scale, z_scale = F32(lb * e64 / (t64 * t64 * k64)), F32(2.0 * zc / t64)
    L = Global(logits, "logits", lambda i: z_scale != 0)
    Pr, I, W, G, C = (Global(a, n) for a, n in
                      [(probs, "probs"), (ids, "ids"), (w, "weights"), (gw, "grad_w"), (counts, "counts")])
    out = Global(np.full(T * E, np.nan, np.float32), "dlogits")
    dps = np.full((T, E), np.nan, np.float32)  # instrumentation: dp per lane
    for cta in range(-(-T // WARPS)):
        def th(tid):
            lane, t = tid & 31, cta * WARPS + (tid >> 5)
            if t >= T:
                return
            prow, krow = i32(t * E), i32(t * k)
            lse = F32(0)
            if z_scale != 0:
                x = [F32(L.load(prow + i * 32 + lane)) if i * 32 + lane < E else F32(-np.inf) for i in range(VPT)]
                m = F32(-np.inf)
                for v in x:
                    m = F32(np.fmax(m, v))
                m = yield from warp_max(m)
                s = F32(0)
                for i in range(VPT):
                    if i * 32 + lane < E:
                        s = F32(s + F32(np.exp(F32(x[i] - m))))
                s = yield from warp_sum(s)
                lse = F32(m + F32(np.log(s)))
            p = [F32(Pr.load(prow + i * 32 + lane)) if i * 32 + lane < E else F32(0) for i in range(VPT)]
            dp = [F32(lb_scale * F32(C.load(i * 32 + lane))) if i * 32 + lane < E else F32(0) for i in range(VPT)]
            corr, sel = F32(0), F32(1)
            if renorm:
                c, s = F32(0), F32(0)
                for j in range(lane, k, 32):
                    e = I.load(krow + j)
                    c = F32(c + F32(G.load(krow + j) * W.load(krow + j)))
                    if 0 <= e < E:
                        s = F32(s + Pr.load(prow + e))
                corr = yield from warp_sum(c)
                sel = yield from warp_sum(s)
            for base in range(0, k, 32):
                j, e, g = base + lane, -1, F32(0)
                if j < k:
                    e = int(I.load(krow + j))
                    g = F32(F32(G.load(krow + j) - corr) / sel) if renorm else F32(G.load(krow + j))
                for jj in range(min(32, k - base)):
                    ej = yield shfl(e, jj)
                    gj = yield shfl(g, jj)
                    if 0 <= ej < E and (ej & 31) == lane:
                        slot = ej >> 5
                        assert slot < VPT
                        dp[slot] = F32(dp[slot] + gj)
            for i in range(VPT):
                if i * 32 + lane < E:
                    dps[t, i * 32 + lane] = dp[i]
            dot = F32(0)
            for i in range(VPT):
                dot = F32(dot + F32(p[i] * dp[i]))
            dot = yield from warp_sum(dot)
            z = F32(z_scale * lse)
            for i in range(VPT):
                e = i * 32 + lane
                if e < E:
                    out.store(prow + e, F32(p[i] * F32(dp[i] - dot)) + F32(z * p[i]))
        Block(THREADS).run(th)
    assert out.written.all()
    return out.a.reshape(T, E), dps


def lse_ref(row):
    m = row.max()
    return F32(m + np.log(np.cumsum(np.exp(row - m), dtype=np.float32)[-1]))


def route_backward_ref(logits, probs, ids, w, gw, renorm, lb, zc):
    T, E = probs.shape
    k = ids.shape[1]
    counts = np.bincount(ids.ravel(), minlength=E)
    inv_t, assign = F32(1) / F32(T), F32(T * k)
    lbl = np.array([F32(F32(F32(lb) * F32(E)) * F32(F32(c) / assign)) * inv_t for c in counts], np.float32)
    out = np.zeros((T, E), np.float32)
    for t in range(T):
        dp = lbl.copy()
        if renorm:
            s = np.cumsum(probs[t, ids[t]], dtype=np.float32)[-1]
            d = np.cumsum(gw[t] * w[t], dtype=np.float32)[-1]
            for e, g in zip(ids[t], gw[t]):
                dp[e] = F32(dp[e] + F32(F32(g - d) / s))
        else:
            for e, g in zip(ids[t], gw[t]):
                dp[e] = F32(dp[e] + g)
        mean = np.cumsum(probs[t] * dp, dtype=np.float32)[-1]
        zg = F32(F32(F32(zc) * F32(2)) * lse_ref(logits[t])) * inv_t
        out[t] = probs[t] * (dp - mean) + zg * probs[t]
    return out


# ---------------------------------------------------------------- the losses
def partials_gpu(T, ctas, per_token):
    """dl_*_loss_partials: per_token(t, lane) is a generator giving the warp's
    per-token value (all lanes equal)."""
    parts = Global(np.full(ctas, np.nan, np.float32), "partials")
    for cta in range(ctas):
        blk = Block(THREADS)
        wv = Shared(blk, WARPS, "warp_values")

        def th(tid):
            acc, t = F32(0), i32(cta * WARPS + (tid >> 5))
            while t < T:
                acc = F32(acc + (yield from per_token(t, tid & 31)))
                t = i32(t + ctas * WARPS)
            if tid & 31 == 0:
                wv.store(tid >> 5, acc, tid)
            yield bar()
            if tid == 0:
                s = F32(0)
                for w in range(WARPS):
                    s = F32(s + wv.load(w, tid))
                parts.store(cta, s)
        blk.run(th)
    assert parts.written.all()
    return parts


def finish_gpu(parts, scale):
    n, out = parts.a.size, Global(np.full(1, np.nan, np.float32), "out")
    blk = Block(THREADS)
    sums = Shared(blk, THREADS, "sums")

    def th(tid):
        s = F32(0)
        for i in range(tid, n, THREADS):
            s = F32(s + parts.load(i))
        sums.store(tid, s, tid)
        yield bar()
        width = THREADS // 2
        while width > 0:
            if tid < width:
                sums.store(tid, F32(sums.load(tid, tid) + sums.load(tid + width, tid)), tid)
            yield bar()
            width >>= 1
        if tid == 0:
            out.store(0, F32(scale * sums.load(0, tid)))
    blk.run(th)
    return out.a[0]


def lb_loss_gpu(probs, counts, k):
    T, E = probs.shape
    P, C = Global(probs, "probs"), Global(counts, "counts")

    def tok(t, lane):
        s = F32(0)
        for e in range(lane, E, 32):
            s = F32(s + F32(P.load(i32(t * E) + e) * F32(C.load(e))))
        return (yield from warp_sum(s))
    ctas = min(max(-(-T // WARPS), 1), MAX_LOSS_CTAS)
    return finish_gpu(partials_gpu(T, ctas, tok), F32(E / (T * T * k)))


def z_loss_gpu(logits):
    T, E = logits.shape
    L = Global(logits, "logits")

    def tok(t, lane):
        m = F32(-np.inf)
        for e in range(lane, E, 32):
            m = F32(np.fmax(m, L.load(t * E + e)))
        m = yield from warp_max(m)
        s = F32(0)
        for e in range(lane, E, 32):
            s = F32(s + F32(np.exp(F32(L.load(t * E + e) - m))))
        s = yield from warp_sum(s)
        lse = F32(m + F32(np.log(s)))
        return F32(lse * lse)
    ctas = min(max(-(-T // WARPS), 1), MAX_LOSS_CTAS)
    return finish_gpu(partials_gpu(T, ctas, tok), F32(1.0 / T))


def lb_loss_ref(probs, ids, E):
    T, k = ids.shape
    c = np.bincount(ids.ravel(), minlength=E).astype(np.float32)
    colsum = probs.sum(0, dtype=np.float32)
    return F32(E) * np.sum((c / F32(T * k)) * (colsum / F32(T)), dtype=np.float32)


def z_loss_ref(logits):
    return F32(np.sum([lse_ref(r) ** 2 for r in logits], dtype=np.float32) / F32(logits.shape[0]))


# ------------------------------------------------- activation.cu live bound
def activation_visits(nb, be, cap, grid):
    """Indices touched by the grid-stride loop of every activation kernel."""
    n = int(min(max(nb, 0) * be, cap))  # live_elems, in i64
    stride, seen = grid * THREADS, []
    for g in range(grid):
        for t in range(THREADS):
            i = i32(g * THREADS + t)
            while i < n:
                seen.append(i)
                i = i32(i + stride) if n - i > stride else n  # next_index
    return n, seen


def check_activation():
    for nb, be, cap in [(3, 16, 64), (0, 16, 64), (-2, 16, 64), (5, 64, 320), (9, 64, 320), (7, 4, 28)]:
        grid = min(max(-(-cap // THREADS), 1), 4096)
        n, seen = activation_visits(nb, be, cap, grid)
        assert sorted(seen) == list(range(n)), (nb, be, cap)
    # next_index near INT32_MAX: the last threads of the largest grid.
    cap = I32_MAX
    n, stride = cap, 4096 * THREADS
    for i0 in (cap - 1, cap - stride, cap - stride - 1, 4095 * THREADS + 255):
        i = i0
        while i < n:
            i = i32(i + stride) if n - i > stride else n
    print("activation ok")


def routing(rng, T, E, k, renorm, repeat):
    logits = (rng.standard_normal((T, E)) * 2).astype(np.float32)
    ex = np.exp(logits - logits.max(1, keepdims=True)).astype(np.float32)
    probs = (ex / ex.sum(1, keepdims=True, dtype=np.float32)).astype(np.float32)
    if repeat:  # repeated ids: slot order must decide the sums
        ids = rng.integers(0, min(E, 5), (T, k))
    else:
        ids = np.argsort(-probs, 1, kind="stable")[:, :k]
    w = np.take_along_axis(probs, ids, 1)
    if renorm:
        w = (w / np.cumsum(w, 1, dtype=np.float32)[:, -1:]).astype(np.float32)
    return logits, probs, ids.astype(np.int64), w.astype(np.float32)


def main(seed):
    rng = np.random.default_rng(seed)
    check_activation()
    cases = [(9, 8, 2, True, 0.01, 1e-3, False), (5, 33, 33, False, 0.5, 0.0, False),
             (17, 70, 40, True, 0.0, 0.1, True), (3, 1, 1, False, 1.0, 1.0, False),
             (11, 130, 9, True, 0.02, 0.0, True), (4, 300, 64, False, 0.0, 0.01, False),
             (2, 1024, 70, True, 0.1, 0.1, False), (8, 600, 600, False, 0.3, 0.0, True), (6, 40, 40, False, 0.0, 0.2, True)]
    for T, E, k, renorm, lb, zc, rep in cases:
        logits, probs, ids, w = routing(rng, T, E, k, renorm, rep)
        gw = (rng.standard_normal((T, k)) * 10.0 ** rng.integers(-3, 3, (T, k))).astype(np.float32)
        counts = np.bincount(ids.ravel(), minlength=E).astype(np.int64)
        got, dps = route_backward_gpu(logits, probs, ids, w, gw, counts, renorm, lb, zc)
        if not renorm and lb == 0:  # dp = the slot gradients summed in slot order, exactly
            want_dp = np.zeros((T, E), np.float32)
            for t in range(T):
                for e, g in zip(ids[t], gw[t]):
                    want_dp[t, e] = F32(want_dp[t, e] + g)
            assert np.array_equal(dps, want_dp), (T, E, k)
        want = route_backward_ref(logits, probs, ids, w, gw, renorm, lb, zc)
        err = np.abs(got - want).max()
        assert err <= 1e-5 * max(1.0, np.abs(want).max()), (T, E, k, renorm, err)
    for T, E, k in [(1, 4, 1), (13, 8, 2), (100, 65, 3), (8 * 1024 + 13, 3, 2)]:
        logits, probs, ids, _ = routing(rng, T, E, k, False, False)
        counts = np.bincount(ids.ravel(), minlength=E).astype(np.int64)
        g, r = lb_loss_gpu(probs, counts, k), lb_loss_ref(probs, ids, E)
        assert abs(g - r) <= 1e-5 * abs(r), (T, E, g, r)
        g, r = z_loss_gpu(logits), z_loss_ref(logits)
        assert abs(g - r) <= 1e-5 * abs(r), (T, E, g, r)
    print("router_grad ok")


if __name__ == "__main__":
    for s in (sys.argv[1:] or ["1"]):
        main(int(s))
