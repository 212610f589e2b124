# Host model of dl_build_topology, thread by thread, against the host
# Topology::from_tokens_per_expert (BCSR + transpose by stable counting sort).
import random

def upper_bound(a, n, x):
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] > x: hi = mid
        else: lo = mid + 1
    return lo

def host(counts, per_row, blk):
    rows = [-(-c // blk) for c in counts]
    ri, ci, off = [], [], [0]
    r0 = 0
    for e, nr in enumerate(rows):
        for r in range(r0, r0 + nr):
            for c in range(per_row):
                ri.append(r); ci.append(e * per_row + c)
            off.append(len(ri))
        r0 += nr
    nnz = len(ri)
    cols = len(counts) * per_row
    order = sorted(range(nnz), key=lambda g: (ci[g], g))
    cit = [ri[g] for g in order]
    bot = order
    offt = [0] * (cols + 1)
    for g in range(nnz): offt[ci[g] + 1] += 1
    for c in range(cols): offt[c + 1] += offt[c]
    return ri, ci, off, cit, offt, bot

def device(counts, per_row, blk, max_block_rows):
    E = len(counts)
    pb = []; run = 0
    for c in counts:
        run += -(-c // blk) * blk; pb.append(run)
    max_blocks = max_block_rows * per_row
    block_cols = E * per_row
    P = -7
    ri = [P] * max_blocks; ci = [P] * max_blocks; cit = [P] * max_blocks; bot = [P] * max_blocks
    off = [P] * (max_block_rows + 1); offt = [P] * (block_cols + 1)
    rows_end = [min(max(p // blk, 0), max_block_rows) for p in pb]
    used = rows_end[E - 1]
    nnz = used * per_row
    threads = max(max_blocks, block_cols + 1, max_block_rows + 1)
    grid = -(-threads // 256) * 256
    for g in range(grid):
        if g < max_blocks:
            r = g // per_row; c = g - r * per_row
            if r < used:
                e = upper_bound(rows_end, E, r)
                if e < E:
                    first = rows_end[e - 1] if e > 0 else 0
                    rows = rows_end[e] - first
                    ri[g] = r; ci[g] = e * per_row + c
                    s = first * per_row + c * rows + (r - first)
                    if 0 <= s < max_blocks:
                        assert cit[s] == P, "double write"
                        cit[s] = r; bot[s] = g
        if g <= max_block_rows: off[g] = min(g, used) * per_row
        if g < block_cols:
            e = g // per_row; c = g - e * per_row
            first = rows_end[e - 1] if e > 0 else 0
            offt[g] = first * per_row + c * (rows_end[e] - first)
        elif g == block_cols:
            offt[g] = nnz
    return ri, ci, off, cit, offt, bot, nnz, used

random.seed(2)
blk = 128
for trial in range(400):
    E = random.randint(1, 40)
    k = random.randint(1, E)
    tokens = random.randint(1, 600)
    per_row = random.randint(1, 5)
    # counts summing to tokens * k with each <= tokens
    n = tokens * k
    counts = [0] * E
    for t in range(tokens):
        for e in random.sample(range(E), k) if random.random() < 0.5 else random.sample(range(min(E, k + 1)), k):
            counts[e] += 1
    mbr = (n + E * (blk - 1)) // blk
    h = host(counts, per_row, blk)
    ri, ci, off, cit, offt, bot, nnz, used = device(counts, per_row, blk, mbr)
    assert used <= mbr
    assert ri[:nnz] == h[0] and ci[:nnz] == h[1]
    assert off[:used + 1] == h[2] and all(o == nnz for o in off[used:])
    assert cit[:nnz] == h[3] and bot[:nnz] == h[5] and offt == h[4]
print("topology ok")
