# Host model of route_token's top-k (keys, two reductions, live bits, slot
# writes by lane r & 31, renormalisation) against sort by (-p, expert).
import random, struct
import numpy as np

def bits(f):
    return struct.unpack("<I", struct.pack("<f", f))[0]

def vpt_for(E):
    c = -(-E // 32)
    for v in (1, 2, 4, 8, 16, 32):
        if c <= v: return v

def gpu_topk(p, k, renorm):
    E = len(p); V = vpt_for(E)
    NOEXP = 0x7fffffff
    live = [0] * 32
    v = [[0.0] * V for _ in range(32)]
    for lane in range(32):
        for i in range(V):
            e = i * 32 + lane
            if e < E:
                v[lane][i] = p[e]; live[lane] |= 1 << i
    ids = [None] * k; w = [None] * k
    mine = [0.0] * 32
    sel = np.float32(0)
    for r in range(k):
        bk = []; be = []
        for lane in range(32):
            best_key, best_e = 0, NOEXP
            for i in range(V):
                key = (bits(v[lane][i]) + 1) if (live[lane] >> i) & 1 else 0
                if key > best_key:
                    best_key, best_e = key, i * 32 + lane
            bk.append(best_key); be.append(best_e)
        win_key = max(bk)
        win_e = min(be[l] if bk[l] == win_key else NOEXP for l in range(32))
        assert win_key >= 1 and win_e < E
        pv = struct.unpack("<f", struct.pack("<I", win_key - 1))[0]
        live[win_e & 31] &= ~(1 << (win_e >> 5))
        lane = r & 31
        ids[r] = win_e
        if r < 32: mine[lane] = pv
        else: w[r] = pv
        sel = np.float32(sel + np.float32(pv))
    for lane in range(32):
        if lane < k:
            w[lane] = float(np.float32(mine[lane]) / sel) if renorm else mine[lane]
    if renorm:
        for lane in range(32):
            j = lane + 32
            while j < k:
                w[j] = float(np.float32(w[j]) / sel); j += 32
    return ids, w

def ref_topk(p, k, renorm):
    order = sorted(range(len(p)), key=lambda e: (-p[e], e))[:k]
    ws = [p[e] for e in order]
    if renorm:
        s = np.float32(0)
        for x in ws: s = np.float32(s + np.float32(x))
        ws = [float(np.float32(x) / s) for x in ws]
    return order, ws

random.seed(3)
for trial in range(600):
    E = random.choice([1, 2, 3, 7, 31, 32, 33, 63, 64, 65, 100, 128, 129, 255, 257, 513, 1000, 1024])
    k = min(E, random.choice([1, 2, E, max(1, E // 2), 33, 70]))
    mode = random.random()
    if mode < 0.3:   # heavy ties
        logits = np.array([random.choice([0.0, 1.0, -3.0]) for _ in range(E)], np.float32)
    elif mode < 0.5: # underflow to zero probability
        logits = np.array([random.choice([0.0, -200.0, -90.0]) for _ in range(E)], np.float32)
    else:
        logits = np.array(np.random.randn(E) * 3, np.float32)
    m = logits.max()
    ex = np.exp(logits - m).astype(np.float32)
    s = np.float32(0)
    for x in ex: s = np.float32(s + x)
    p = [float(np.float32(x / s)) for x in ex]
    renorm = random.random() < 0.5
    g = gpu_topk(p, k, renorm)
    r = ref_topk(p, k, renorm)
    assert g[0] == r[0], (E, k, g[0], r[0])
    assert g[1] == r[1], (E, k)
print("routing ok")
