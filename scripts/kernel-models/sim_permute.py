# Host model of cuda/permute.cu index logic (sort, scan, positions, gather,
# scatter) and cuda/topology.cu, thread by thread, against the CPU semantics.
import random
import numpy as np

SORT_WARPS, SORT_ROUNDS = 8, 16
WARP_CHUNK = 32 * SORT_ROUNDS
CHUNK = SORT_WARPS * WARP_CHUNK
SCAN_T, SCAN_I = 1024, 4

def bucket(i, E):
    return i if 0 <= i < E else E

def warp_entries(ids, n, E, blk, w):
    base = blk * CHUNK + w * WARP_CHUNK
    for r in range(SORT_ROUNDS):
        lanes = []
        for lane in range(32):
            i = base + r * 32 + lane
            b = bucket(ids[i], E) if i < n else E + 1
            lanes.append((i, b))
        # match_any: peers mask per lane
        peers = []
        for lane in range(32):
            m = 0
            for l2 in range(32):
                if lanes[l2][1] == lanes[lane][1]:
                    m |= 1 << l2
            peers.append(m)
        yield lanes, peers

def ffs(m):
    return (m & -m).bit_length()

def popc(m):
    return bin(m).count("1")

def sort_count(ids, n, E, chunks):
    buckets = E + 1
    counts = [0] * (buckets * chunks)
    for blk in range(chunks):
        hist = [0] * buckets
        for w in range(SORT_WARPS):
            for lanes, peers in warp_entries(ids, n, E, blk, w):
                for lane in range(32):
                    b = lanes[lane][1]
                    if b < buckets and lane == ffs(peers[lane]) - 1:
                        hist[b] += popc(peers[lane])
        for b in range(buckets):
            counts[b * chunks + blk] = hist[b]
    return counts

def scan(inp, n, r, exclusive):
    M = 1 << 32
    out = [None] * n
    carry = 0
    tile = 0
    while tile < n:
        x = []; local = []
        for tid in range(SCAN_T):
            first = tile + tid * SCAN_I
            xs = []
            for q in range(SCAN_I):
                v = (inp[first + q] % M) if first + q < n else 0
                xs.append(v if r == 1 else ((v + r - 1) % M) // r * r % M)
            x.append(xs); local.append(sum(xs) % M)
        incl = [0] * SCAN_T
        for wp in range(32):
            run = 0
            for lane in range(32):
                run = (run + local[wp * 32 + lane]) % M
                incl[wp * 32 + lane] = run
        wt = []
        run = 0
        for wp in range(32):
            run = (run + incl[wp * 32 + 31]) % M
            wt.append(run)
        for tid in range(SCAN_T):
            wp = tid >> 5
            first = tile + tid * SCAN_I
            run = (carry + (wt[wp - 1] if wp > 0 else 0) + incl[tid] - local[tid]) % M
            for q in range(SCAN_I):
                if exclusive:
                    if first + q < n: out[first + q] = run
                    run = (run + x[tid][q]) % M
                else:
                    run = (run + x[tid][q]) % M
                    if first + q < n: out[first + q] = run
        carry = (carry + wt[31]) % M
        tile += SCAN_T * SCAN_I
    return [v - M if v >= 1 << 31 else v for v in out]

def sort_scatter(ids, n, E, chunks, offsets):
    buckets = E + 1
    indices = [None] * n
    bin_ids = [None] * n
    for blk in range(chunks):
        wh = [[0] * buckets for _ in range(SORT_WARPS)]
        for w in range(SORT_WARPS):
            for lanes, peers in warp_entries(ids, n, E, blk, w):
                for lane in range(32):
                    b = lanes[lane][1]
                    if b < buckets and lane == ffs(peers[lane]) - 1:
                        wh[w][b] += popc(peers[lane])
        for b in range(buckets):
            run = offsets[b * chunks + blk]
            for w in range(SORT_WARPS):
                c = wh[w][b]; wh[w][b] = run; run += c
        for w in range(SORT_WARPS):
            h = wh[w]
            for lanes, peers in warp_entries(ids, n, E, blk, w):
                pos = []
                for lane in range(32):
                    i, b = lanes[lane]
                    valid = b < buckets
                    lower = (1 << lane) - 1
                    pos.append(h[b] + popc(peers[lane] & lower) if valid else 0)
                upd = {}
                for lane in range(32):
                    i, b = lanes[lane]
                    if b < buckets and lane == ffs(peers[lane]) - 1:
                        upd[b] = h[b] + popc(peers[lane])
                for b, v in upd.items(): h[b] = v
                for lane in range(32):
                    i, b = lanes[lane]
                    if b < buckets:
                        assert indices[pos[lane]] is None, "double write"
                        indices[pos[lane]] = i
                        bin_ids[pos[lane]] = b if b < E else -1
    return indices, bin_ids

def gpu_sort(ids, E):
    n = len(ids)
    chunks = -(-n // CHUNK)
    padded_ids = ids + [0] * (chunks * CHUNK - n)  # reads past n never happen (i < n)
    counts = sort_count(padded_ids, n, E, chunks)
    offsets = scan(counts, len(counts), 1, True)
    return sort_scatter(padded_ids, n, E, chunks, offsets)

def ref_sort(ids, E):
    key = lambda a: (ids[a] if 0 <= ids[a] < E else E, a)
    order = sorted(range(len(ids)), key=key)
    return order, [ids[a] if 0 <= ids[a] < E else -1 for a in order]

def upper_bound(a, n, x):
    lo, hi = 0, n
    while lo < hi:
        mid = lo + ((hi - lo) >> 1)
        if a[mid] > x: hi = mid
        else: lo = mid + 1
    return lo

def gpu_positions(indices, bins, pbins, n, E):
    pos = [0] * n
    for i in range(n):
        e = upper_bound(bins, E, i)
        if e >= E: continue
        a = indices[i]
        if a < 0 or a >= n: continue
        bstart = bins[e - 1] if e > 0 else 0
        pstart = pbins[e - 1] if e > 0 else 0
        pos[a] = pstart + (i - bstart)
    return pos

def gpu_gather_src(indices, bins, pbins, tokens, k, E, out_rows):
    src = []
    for r in range(out_rows):
        s = -1
        if r < pbins[E - 1]:
            e = upper_bound(pbins, E, r)
            if e < E:
                pstart = pbins[e - 1] if e > 0 else 0
                bstart = bins[e - 1] if e > 0 else 0
                i = bstart + (r - pstart)
                if 0 <= i < bins[e]:
                    a = indices[i]
                    if 0 <= a < tokens * k:
                        s = a
        src.append(s)
    return src

def ref_rows(indices, bins, pbins, n, E):
    row_of = [None] * n
    start = pstart = 0
    for e in range(E):
        for i in range(start, bins[e]):
            row_of[indices[i]] = pstart + (i - start)
        start, pstart = bins[e], pbins[e]
    return row_of

def max_padded(tokens, k, E, blk):
    b = tokens * k + E * (blk - 1)
    return b // blk * blk

def check_permute(tokens, k, E, blk=128, bad=False):
    ids = []
    for t in range(tokens):
        mode = random.random()
        if mode < 0.3:
            row = random.sample(range(E), k)
        elif mode < 0.6:
            # skewed: favour few experts
            row = random.sample(range(min(E, k + 2)), k)
        else:
            row = random.sample(range(E), k)
        ids.extend(row)
    if bad:
        for _ in range(5):
            ids[random.randrange(len(ids))] = random.choice([-1, E, E + 7, -(1 << 31)])
    idx, bid = gpu_sort(ids, E)
    ridx, rbid = ref_sort(ids, E)
    assert idx == ridx and bid == rbid, (tokens, k, E)
    if bad:
        return
    counts = [0] * E
    for e in ids: counts[e] += 1
    bins = scan(counts, E, 1, False)
    pbins = scan(counts, E, blk, False)
    assert bins == list(np.cumsum(counts))
    assert pbins == list(np.cumsum([-(-c // blk) * blk for c in counts]))
    n = tokens * k
    pos = gpu_positions(idx, bins, pbins, n, E)
    assert pos == ref_rows(idx, bins, pbins, n, E)
    rows = max_padded(tokens, k, E, blk)
    assert pbins[-1] <= rows
    src = gpu_gather_src(idx, bins, pbins, tokens, k, E, rows)
    # every assignment's row gets it; every other row is zero
    want = [-1] * rows
    for a, p in enumerate(pos): want[p] = a
    assert src == want

random.seed(1)
cases = [(1, 1, 1), (1, 1, 3), (3, 3, 3), (5, 2, 7), (100, 2, 8), (257, 4, 60), (300, 1, 1),
         (2049, 2, 5), (1000, 8, 64), (4096, 1, 3), (5000, 2, 129), (1500, 5, 33), (700, 13, 13),
         (40, 2, 1535 // 20)]
for c in cases:
    check_permute(*c)
    check_permute(*c, bad=True) if c[0] * c[1] > 10 else None
    print("ok", c)
# scan with many tiles and rounding
for n in [1, 31, 4095, 4096, 4097, 9000, 12289]:
    v = [random.randrange(0, 300) for _ in range(n)]
    for r in [1, 128]:
        for ex in [True, False]:
            got = scan(v, n, r, ex)
            rv = [-(-x // r) * r for x in v]
            cs = list(np.cumsum(rv))
            want = [0] + cs[:-1] if ex else cs
            assert got == want, (n, r, ex)
print("scan ok")
