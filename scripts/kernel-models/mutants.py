"""Checks that the model catches deliberate kernel bugs (it has teeth)."""
import sim_block_sparse as S
import numpy as np

orig = {n: getattr(S, n) for n in ("chunk_offset", "load_b_frag", "load_a_frag", "mainloop", "out_chunk", "Smem")}

def mut_wait():
    src = open("sim_block_sparse.py").read()
    return src.replace("smem.wait(kStages - 2)", "smem.wait(kStages - 1)")
def mut_stage():
    return open("sim_block_sparse.py").read().replace("load_next(next_stage)", "load_next(stage)")
def mut_swz():
    return open("sim_block_sparse.py").read().replace(
        "addrs.append(tile + chunk_offset(L, m + (lane & 15), kk + ((lane >> 4) << 3)))",
        "addrs.append(tile + (m + (lane & 15)) * 64 + (kk + ((lane >> 4) << 3)) * 2)")
def mut_bk():
    return open("sim_block_sparse.py").read().replace(
        "n + (lane & 7) + ((j >> 1) << 3), kk + ((j & 1) << 3)", "n + (lane & 7) + ((j & 1) << 3), kk + ((j >> 1) << 3)")
def mut_mntrans():
    return open("sim_block_sparse.py").read().replace(
        "return addrs, L == MN\n\n\ndef load_b_frag", "return addrs, False\n\n\ndef load_b_frag")
def mut_nozero():
    return open("sim_block_sparse.py").read().replace(
        "valid = mn < mn_valid and k < k_valid", "valid = mn < mn_valid")
def mut_pred():
    return open("sim_block_sparse.py").read().replace(
        "if row < m_valid and (c << 3) < n_valid:", "if row < m_valid:")
def mut_col():
    return open("sim_block_sparse.py").read().replace(
        "SparseSource(MN, True, trans, n0", "SparseSource(MN, True, False, n0")

import types, traceback
for name, f in list(globals().items()):
    if not name.startswith("mut_"):
        continue
    src = f()
    assert src != open("sim_block_sparse.py").read(), name
    mod = types.ModuleType("m")
    mod.__dict__["__name__"] = "m"
    exec(compile(src, "m", "exec"), mod.__dict__)
    try:
        mod.run(3, eager=(name in ("mut_stage",)))
        print(f"{name}: NOT CAUGHT")
    except AssertionError as e:
        print(f"{name}: caught ({str(e)[:80]})")
