#!/usr/bin/env python3
"""Host model of cuda/block_sparse.cu: every CTA of the 6 kernels on small
random BCSR topologies (with empty rows/columns and spare capacity rows),
transliterated from the kernel, with the PTX primitives modelled from the
ISA spec (cp.async zero-fill + commit/wait groups, ldmatrix .x4 / .x4.trans,
mma.m16n8k16.row.col fragment ownership). Compares against numpy.

Checks along the way: every global read is inside its allocation and 16-byte
aligned, every smem access 16-byte aligned and inside 64 KiB, cp.async writes
land either eagerly (at issue) or lazily (at wait_group), every output element
is written at most once and rows/cols without blocks are zero, ldmatrix
phases are bank-conflict free.
"""
import sys
import numpy as np

kBlock = 128
kBlockElems = kBlock * kBlock
kTileM = kTileN = 128
kTileK = 32
kStages = 4
kThreads = 256
kWarpM, kWarpN = 64, 32
kMmaM, kMmaN = kWarpM // 16, kWarpN // 8
kOperandBytes = kTileM * kTileK * 2
kStageBytes = 2 * kOperandBytes
kPipeBytes = kStages * kStageBytes
kOutBytes = kTileM * kTileN * 2
kSmemBytes = max(kPipeBytes, kOutBytes)
assert kSmemBytes == 65536
K, MN = "K", "MN"
I32_MAX = 2**31 - 1


def i32(v):
    assert -(2**31) <= v <= I32_MAX, f"i32 overflow: {v}"
    return v


# ---------------------------------------------------------------- memories
class Global:
    """A device allocation of elements; offsets are element indices."""

    def __init__(self, data, name):
        self.d = np.asarray(data, dtype=np.float64).ravel().copy()
        self.name = name

    def read16(self, off):
        assert off % 8 == 0, f"{self.name}: unaligned 16-byte read at {off}"
        assert 0 <= off and off + 8 <= len(self.d), f"{self.name}: OOB read {off}"
        return self.d[off:off + 8].copy()


class IntGlobal:
    def __init__(self, data, name):
        self.d = list(int(x) for x in data)
        self.name = name

    def __getitem__(self, i):
        assert 0 <= i < len(self.d), f"{self.name}: OOB index {i} (len {len(self.d)})"
        return self.d[i]


class Out:
    def __init__(self, n, name):
        self.d = np.full(n, np.nan)
        self.writes = np.zeros(n, dtype=np.int64)
        self.name = name

    def write16(self, off, vals):
        assert off % 8 == 0, f"{self.name}: unaligned store at {off}"
        assert 0 <= off and off + 8 <= len(self.d), f"{self.name}: OOB store {off}"
        self.d[off:off + 8] = vals
        self.writes[off:off + 8] += 1


class Smem:
    """64 KiB of shared memory as 2-byte elements, with cp.async groups."""

    def __init__(self, eager):
        self.e = np.full(kSmemBytes // 2, np.nan)
        self.eager = eager
        self.pending = []  # committed groups (lists of writes), oldest first
        self.current = []  # writes issued since the last commit

    def _put(self, byte, vals):
        assert byte % 16 == 0 and 0 <= byte and byte + 16 <= kSmemBytes, byte
        self.e[byte // 2: byte // 2 + 8] = vals

    def cp_async_16(self, dst, src_mem, src_off, valid):
        # src must be a valid global address even when src-size is 0.
        vals = src_mem.read16(src_off) if valid else np.zeros(8)
        if not valid:
            src_mem.read16(src_off)  # address validity (nothing is read on HW)
        if self.eager:
            self._put(dst, vals)
        else:
            self.current.append((dst, vals))

    def commit(self):
        self.pending.append(self.current)
        self.current = []

    def wait(self, n):
        while len(self.pending) > n:
            for dst, vals in self.pending.pop(0):
                self._put(dst, vals)

    def read16(self, byte):
        assert byte % 16 == 0 and 0 <= byte and byte + 16 <= kSmemBytes, byte
        v = self.e[byte // 2: byte // 2 + 8]
        assert not np.isnan(v).any(), f"read of never-written smem at {byte}"
        return v.copy()


# ------------------------------------------------------ PTX primitive models
def bank_check(addrs):
    # ldmatrix: each 8-lane phase reads 8 x 16 bytes; conflict-free iff the
    # 8 rows hit 8 distinct 16-byte bank groups (addr / 16 mod 8).
    for p in range(4):
        groups = {(a // 16) % 8 for a in addrs[8 * p: 8 * p + 8]}
        STATS["ldm_phases"] += 1
        if len(groups) != 8:
            STATS["ldm_conflicts"] += 1


def ldmatrix_x4(smem, addrs, trans):
    """PTX: lanes 8i..8i+7 give the row addresses of matrix i. Register i of
    lane l holds row l/4, cols 2(l%4), 2(l%4)+1 of matrix i (non-trans) or,
    with .trans, rows 2(l%4), 2(l%4)+1 of column l/4 of the stored matrix."""
    assert len(addrs) == 32
    bank_check(addrs)
    mats = [np.stack([smem.read16(addrs[8 * i + r]) for r in range(8)]) for i in range(4)]
    regs = np.zeros((4, 32, 2))
    for i in range(4):
        m = mats[i].T if trans else mats[i]
        for l in range(32):
            regs[i, l] = m[l // 4, 2 * (l % 4): 2 * (l % 4) + 2]
    return regs


def mma_16816(d, a, b):
    """PTX m16n8k16 .row.col, f16/bf16 (identical layouts). g = l/4, t = l%4.
    A: a{0,1}: (g, 2t+{0,1}); a{2,3}: (g+8, 2t..); a{4,5}: (g, 2t+8..);
       a{6,7}: (g+8, 2t+8..). Register r holds a{2r, 2r+1}.
    B: b{0,1}: (k=2t+{0,1}, n=g); b{2,3}: (k=2t+8.., n=g).
    C/D: c{0,1}: (g, 2t+{0,1}); c{2,3}: (g+8, 2t+{0,1})."""
    A = np.full((16, 16), np.nan)
    B = np.full((16, 8), np.nan)
    for l in range(32):
        g, t = l // 4, l % 4
        for h in range(2):
            A[g, 2 * t + h] = a[0][l][h]
            A[g + 8, 2 * t + h] = a[1][l][h]
            A[g, 2 * t + 8 + h] = a[2][l][h]
            A[g + 8, 2 * t + 8 + h] = a[3][l][h]
            B[2 * t + h, g] = b[0][l][h]
            B[2 * t + 8 + h, g] = b[1][l][h]
    assert not np.isnan(A).any() and not np.isnan(B).any()
    D = A @ B
    for l in range(32):
        g, t = l // 4, l % 4
        d[l][0] += D[g, 2 * t]
        d[l][1] += D[g, 2 * t + 1]
        d[l][2] += D[g + 8, 2 * t]
        d[l][3] += D[g + 8, 2 * t + 1]


# ---------------------------------------------- transliteration of the kernel
def chunk_offset(L, mn, k):
    if L == K:
        return (mn * 4 + ((k >> 3) ^ ((mn >> 1) & 3))) * 16
    return (k * 16 + ((mn >> 3) ^ (k & 7))) * 16


def global_offset(L, mn, k, ld):
    return i32(mn * ld + k) if L == K else i32(k * ld + mn)


def load_operand(smem, L, tile, mem, origin, op, k_valid):
    ld, mn_valid = op
    for tid in range(kThreads):
        for i in range(2):
            idx = tid + i * kThreads
            mn = (idx >> 2) if L == K else ((idx & 15) << 3)
            k = ((idx & 3) << 3) if L == K else (idx >> 4)
            valid = mn < mn_valid and k < k_valid
            off = global_offset(L, mn, k, ld) if valid else 0
            smem.cp_async_16(tile + chunk_offset(L, mn, k), mem, i32(origin + off), valid)


def advance_k(L, base, k, ld):
    return i32(base + global_offset(L, 0, k, ld))


def load_a_frag(L, tile, m, kk):
    addrs = []
    for lane in range(32):
        if L == K:
            addrs.append(tile + chunk_offset(L, m + (lane & 15), kk + ((lane >> 4) << 3)))
        else:
            j = lane >> 3
            k = kk + (lane & 7) + ((j >> 1) << 3)
            addrs.append(tile + chunk_offset(L, m + ((j & 1) << 3), k))
    return addrs, L == MN


def load_b_frag(L, tile, n, kk):
    addrs = []
    for lane in range(32):
        j = lane >> 3
        if L == K:
            addrs.append(tile + chunk_offset(L, n + (lane & 7) + ((j >> 1) << 3), kk + ((j & 1) << 3)))
        else:
            k = kk + (lane & 7) + ((j & 1) << 3)
            addrs.append(tile + chunk_offset(L, n + ((j >> 1) << 3), k))
    return addrs, L == MN


def mainloop(smem, src, LA, LB, opa, opb, mem_a, mem_b):
    # acc[warp][i][j][lane][e]
    acc = np.zeros((8, kMmaM, kMmaN, 32, 4))
    seg_k = src.segment_k()
    tiles_per_seg = (seg_k + kTileK - 1) // kTileK
    num_tiles = src.segments() * tiles_per_seg
    st = {"seg": 0, "kt": 0, "a": None, "b": None}
    if num_tiles > 0:
        st["a"], st["b"] = src.segment(0)

    def load_next(stage):
        a_tile = stage * kStageBytes
        k0 = st["kt"] * kTileK
        k_valid = seg_k - k0
        load_operand(smem, LA, a_tile, mem_a, advance_k(LA, st["a"], k0, opa[0]), opa, k_valid)
        load_operand(smem, LB, a_tile + kOperandBytes, mem_b, advance_k(LB, st["b"], k0, opb[0]), opb, k_valid)
        st["kt"] += 1
        if st["kt"] == tiles_per_seg:
            st["kt"] = 0
            st["seg"] += 1
            if st["seg"] < src.segments():
                st["a"], st["b"] = src.segment(st["seg"])

    for s in range(kStages - 1):
        if s < num_tiles:
            load_next(s)
        smem.commit()
    stage, next_stage = 0, kStages - 1
    for t in range(num_tiles):
        smem.wait(kStages - 2)
        # __syncthreads(): all warps finished tile t-1 (sequential model)
        if t + kStages - 1 < num_tiles:
            load_next(next_stage)
        smem.commit()
        a_tile = stage * kStageBytes
        b_tile = a_tile + kOperandBytes
        for warp in range(8):
            warp_m = (warp >> 2) * kWarpM
            warp_n = (warp & 3) * kWarpN
            for kk in range(0, kTileK, 16):
                af = [ldmatrix_x4(smem, *load_a_frag(LA, a_tile, warp_m + i * 16, kk)) for i in range(kMmaM)]
                bf = [None] * kMmaN
                for j in range(0, kMmaN, 2):
                    r = ldmatrix_x4(smem, *load_b_frag(LB, b_tile, warp_n + j * 8, kk))
                    bf[j] = (r[0], r[1])
                    bf[j + 1] = (r[2], r[3])
                for i in range(kMmaM):
                    for j in range(kMmaN):
                        mma_16816(acc[warp][i][j], af[i], bf[j])
        stage = 0 if stage + 1 == kStages else stage + 1
        next_stage = 0 if next_stage + 1 == kStages else next_stage + 1
    smem.wait(0)
    return acc


def out_chunk(row, c):
    return row * 256 + ((c ^ (row & 7)) << 4)


def store_tile(acc, smem, out, base, ld, m_valid, n_valid):
    stage = np.full(kOutBytes // 2, np.nan)
    for warp in range(8):
        warp_m = (warp >> 2) * kWarpM
        warp_n = (warp & 3) * kWarpN
        for lane in range(32):
            for i in range(kMmaM):
                for j in range(kMmaN):
                    row = warp_m + i * 16 + (lane >> 2)
                    col = warp_n + j * 8 + ((lane & 3) << 1)
                    in_chunk = (col & 7) * 2
                    for rr, e in ((row, 0), (row + 8, 2)):
                        byte = out_chunk(rr, col >> 3) + in_chunk
                        assert byte % 4 == 0 and byte + 4 <= kOutBytes
                        assert np.isnan(stage[byte // 2]), "staging element written twice"
                        stage[byte // 2] = acc[warp][i][j][lane][e]
                        stage[byte // 2 + 1] = acc[warp][i][j][lane][e + 1]
    assert not np.isnan(stage).any()
    for tid in range(kThreads):
        for i in range(kOutBytes // (kThreads * 16)):
            idx = tid + i * kThreads
            row, c = idx >> 4, idx & 15
            if row < m_valid and (c << 3) < n_valid:
                b = out_chunk(row, c)
                out.write16(i32(base + i32(row * ld) + (c << 3)), stage[b // 2: b // 2 + 8])


class DenseSource:
    def __init__(self, a, b, k):
        self.a, self.b, self.k = a, b, k

    def segments(self):
        return 1

    def segment_k(self):
        return self.k

    def segment(self, s):
        return self.a, self.b


class SparseSource:
    def __init__(self, LDense, sparse_a, by_column, dense, ld_dense, indices, block_ids, first, count):
        self.__dict__.update(locals())

    def segments(self):
        return self.count

    def segment_k(self):
        return kBlock

    def segment(self, s):
        pos = self.first + s
        block = self.block_ids[pos] if self.by_column else pos
        sparse = i32(block * kBlockElems)
        dense_k = advance_k(self.LDense, self.dense, i32(self.indices[pos] * kBlock), self.ld_dense)
        return (sparse, dense_k) if self.sparse_a else (dense_k, sparse)


def sdd(blk, eager, trans_b, a, b, out, row_indices, column_indices, offsets, max_block_rows, k, cols):
    if blk >= offsets[max_block_rows]:
        return
    smem = Smem(eager)
    r, c = row_indices[blk], column_indices[blk]
    LB = K if trans_b else MN
    src = DenseSource(i32(r * kBlock * k), i32(c * kBlock * k) if trans_b else i32(c * kBlock), k)
    acc = mainloop(smem, src, K, LB, (k, kBlock), (k if trans_b else cols, kBlock), a, b)
    store_tile(acc, smem, out, i32(blk * kBlockElems), kBlock, kBlock, kBlock)


def dsd(cta, eager, trans, s, b, out, offsets, indices, block_ids, num_sparse, n):
    sparse = cta % num_sparse
    n0 = (cta // num_sparse) * kTileN
    first = offsets[sparse]
    LA = MN if trans else K
    src = SparseSource(MN, True, trans, n0, n, indices, block_ids, first, offsets[sparse + 1] - first)
    smem = Smem(eager)
    acc = mainloop(smem, src, LA, MN, (kBlock, kBlock), (n, n - n0), s, b)
    store_tile(acc, smem, out, i32(sparse * kBlock * n + n0), n, kTileM, n - n0)


def dds(cta, eager, trans, a, s, out, offsets, indices, block_ids, num_sparse, m, lda):
    sparse = cta % num_sparse
    m0 = (cta // num_sparse) * kTileM
    first = offsets[sparse]
    LB = K if trans else MN
    src = SparseSource(K, False, not trans, i32(m0 * lda), lda, indices, block_ids, first, offsets[sparse + 1] - first)
    smem = Smem(eager)
    acc = mainloop(smem, src, K, LB, (lda, m - m0), (kBlock, kBlock), a, s)
    ldo = num_sparse * kBlock
    store_tile(acc, smem, out, i32(m0 * ldo + sparse * kBlock), ldo, m - m0, kTileN)


# ---------------------------------------------------------------- topology
def topology(block_rows_used, block_cols, spare_rows, rng):
    """Random BCSR with empty rows/columns, padded to capacity like a device
    topology: unused rows' offsets = block count, index arrays padded."""
    mask = rng.random((block_rows_used, block_cols)) < 0.5
    mask[0, :] = False  # an empty block row
    mask[:, -1] = False  # an empty block column
    mask[1, 0] = True
    mask[1, 1] = True
    mask[2, :-1] = True
    mask[-1, 0] = True
    offsets, cols_idx, rows_idx = [0], [], []
    for r in range(block_rows_used):
        for c in range(block_cols):
            if mask[r, c]:
                cols_idx.append(c)
                rows_idx.append(r)
        offsets.append(len(cols_idx))
    nnz = len(cols_idx)
    offsets_t, ci_t, bo_t = [], [], []
    for c in range(block_cols):
        offsets_t.append(len(ci_t))
        for bidx in range(nnz):
            if cols_idx[bidx] == c:
                ci_t.append(rows_idx[bidx])
                bo_t.append(bidx)
    offsets_t.append(len(ci_t))
    max_block_rows = block_rows_used + spare_rows
    per_row = block_cols
    max_blocks = max_block_rows * per_row
    pad = lambda v, n, f: v + [f] * (n - len(v))
    return dict(
        mask=mask, nnz=nnz, max_block_rows=max_block_rows, block_cols=block_cols,
        max_blocks=max_blocks, used_rows=block_rows_used,
        row_indices=pad(rows_idx, max_blocks, 0), column_indices=pad(cols_idx, max_blocks, 0),
        offsets=pad(offsets, max_block_rows + 1, nnz),
        column_indices_t=pad(ci_t, max_blocks, 0), offsets_t=offsets_t,
        block_offsets_t=pad(bo_t, max_blocks, 0),
    )


def dense_of(topo, values):
    """Dense [cap_rows, cols] of the sparse matrix (only true blocks)."""
    S = np.zeros((topo["max_block_rows"] * kBlock, topo["block_cols"] * kBlock))
    for bidx in range(topo["nnz"]):
        r, c = topo["row_indices"][bidx], topo["column_indices"][bidx]
        S[r * kBlock:(r + 1) * kBlock, c * kBlock:(c + 1) * kBlock] = values[bidx].reshape(kBlock, kBlock)
    return S


def check(name, got, want, writes, rtol=1e-9):
    assert writes.max() <= 1, f"{name}: element written twice"
    err = np.nanmax(np.abs(got - want)) if got.size else 0.0
    assert not np.isnan(got).any(), f"{name}: unwritten output elements"
    scale = max(np.abs(want).max(), 1e-30)
    assert err <= rtol * scale, f"{name}: max error {err} (scale {scale})"
    print(f"  {name}: OK (max |err| {err:.2e}, {got.size} elements)")


STATS = {"ldm_phases": 0, "ldm_conflicts": 0}


def run(seed, eager, ks=(72,), rest=True):
    rng = np.random.default_rng(seed)
    topo = topology(block_rows_used=4, block_cols=3, spare_rows=1, rng=rng)
    cap_rows = topo["max_block_rows"] * kBlock
    cols = topo["block_cols"] * kBlock
    used_rows = topo["used_rows"] * kBlock
    print(f"seed {seed} eager={eager}: nnz {topo['nnz']} of {topo['mask'].shape}, cap rows {cap_rows}")
    I = lambda name: IntGlobal(topo[name], name)
    values = rng.standard_normal((topo["max_blocks"], kBlockElems))
    values[topo["nnz"]:] = np.nan  # capacity blocks must never be read
    S = dense_of(topo, values)
    Sg = Global(values, "S")

    # SDD nt / nn, k ragged (multiple of 8, not of 32).
    for k, trans_b in [(k, t) for k in ks for t in (True, False)]:
        A = rng.standard_normal((cap_rows, k))
        A[used_rows:] = np.nan  # capacity rows of A must not be read
        Bm = rng.standard_normal((cols, k))
        Bstore = Bm if trans_b else Bm.T.copy()
        out = Out(topo["max_blocks"] * kBlockElems, "sdd_out")
        for blk in range(topo["max_blocks"]):
            sdd(blk, eager, trans_b, Global(A, "A"), Global(Bstore, "B"), out, I("row_indices"),
                I("column_indices"), I("offsets"), topo["max_block_rows"], k, cols)
        full = np.nan_to_num(A) @ Bm.T
        want = np.full(topo["max_blocks"] * kBlockElems, np.nan)
        for bidx in range(topo["nnz"]):
            r, c = topo["row_indices"][bidx], topo["column_indices"][bidx]
            want[bidx * kBlockElems:(bidx + 1) * kBlockElems] = \
                full[r * kBlock:(r + 1) * kBlock, c * kBlock:(c + 1) * kBlock].ravel()
        nb = topo["nnz"] * kBlockElems
        assert out.writes[nb:].sum() == 0, "sdd wrote past the true blocks"
        check(f"sdd_{'nt' if trans_b else 'nn'} k={k}", out.d[:nb], want[:nb], out.writes)
    if not rest:
        return

    # DSD nn: [cap_rows, cols] x [cols, h]; h ragged over two n tiles.
    h = 136
    Bd = rng.standard_normal((cols, h))
    out = Out(cap_rows * h, "dsd_out")
    nsp = topo["max_block_rows"]
    for cta in range(nsp * -(-h // 128)):
        dsd(cta, eager, False, Sg, Global(Bd, "B"), out, I("offsets"), I("column_indices"), None, nsp, h)
    check("dsd_nn", out.d, (S @ Bd).ravel(), out.writes)

    # DSD tn: S^T [cols, cap_rows] x [cap_rows, h]; B's capacity rows NaN.
    Bd = rng.standard_normal((cap_rows, h))
    Bd[used_rows:] = np.nan
    out = Out(cols * h, "dsd_t_out")
    nsp = topo["block_cols"]
    for cta in range(nsp * -(-h // 128)):
        dsd(cta, eager, True, Sg, Global(Bd, "B"), out, I("offsets_t"), I("column_indices_t"),
            I("block_offsets_t"), nsp, h)
    check("dsd_tn", out.d, (S.T @ np.nan_to_num(Bd)).ravel(), out.writes)

    # DDS nn: a [m, cap_rows] x S [cap_rows, cols]; m ragged (not a multiple of 8).
    m = 141
    Ad = rng.standard_normal((m, cap_rows))
    Ad[:, used_rows:] = np.nan
    out = Out(m * cols, "dds_out")
    nsp = topo["block_cols"]
    for cta in range(nsp * -(-m // 128)):
        dds(cta, eager, False, Global(Ad, "A"), Sg, out, I("offsets_t"), I("column_indices_t"),
            I("block_offsets_t"), nsp, m, cap_rows)
    check("dds_nn", out.d, (np.nan_to_num(Ad) @ S).ravel(), out.writes)

    # DDS nt: a [m, cols] x S^T [cols, cap_rows].
    Ad = rng.standard_normal((m, cols))
    out = Out(m * cap_rows, "dds_t_out")
    nsp = topo["max_block_rows"]
    for cta in range(nsp * -(-m // 128)):
        dds(cta, eager, True, Global(Ad, "A"), Sg, out, I("offsets"), I("column_indices"), None, nsp, m, cols)
    check("dds_nt", out.d, (Ad @ S.T).ravel(), out.writes)


if __name__ == "__main__":
    seeds = [int(s) for s in sys.argv[1:]] or [1]
    for seed in seeds:
        for eager in (False, True):
            run(seed, eager)
            run(seed, eager, ks=(8, 200), rest=False)
    print(f"ldmatrix phases {STATS['ldm_phases']}, bank-conflicted {STATS['ldm_conflicts']}")
