# A small SIMT executor for the host models: one CTA's threads run as Python
# generators that yield at every collective. Block barriers must be reached by
# every thread of the block (no thread may have exited); warp collectives
# (full mask) by all 32 lanes of the warp. Shared arrays are poisoned, bounds
# checked and race checked per barrier interval (RAW / WAR / WAW between
# different threads with no barrier in between). Global buffers are bounds
# checked and may restrict reads to allowed indices.
import numpy as np

F32 = np.float32
I32_MAX = 2**31 - 1


def i32(x):
    """An i32 index expression of a kernel: must not overflow."""
    assert -2**31 <= x <= I32_MAX, f"i32 overflow: {x}"
    return x


class Block:
    def __init__(self, nthreads):
        assert nthreads % 32 == 0
        self.n = nthreads
        self.epoch = 0

    def run(self, body):
        """Runs body(tid) (a generator function) for every thread."""
        n = self.n
        gens = [body(t) for t in range(n)]
        pend = [None] * n
        done = [False] * n

        def step(t, val):
            try:
                pend[t] = gens[t].send(val)
            except StopIteration:
                done[t], pend[t] = True, None

        for t in range(n):
            step(t, None)
        while not all(done):
            progress = False
            for w in range(n // 32):
                lanes = range(32 * w, 32 * w + 32)
                live = [l for l in lanes if not done[l]]
                if not live or pend[live[0]][0] == "bar":
                    continue
                assert len(live) == 32, f"warp {w}: full-mask collective with exited lanes"
                kind = pend[live[0]][0]
                assert all(pend[l][0] == kind for l in lanes), f"warp {w}: divergent collectives"
                vals = [pend[l][1] for l in lanes]
                if kind == "xor":
                    out = [vals[i ^ pend[32 * w + i][2]] for i in range(32)]
                elif kind == "idx":
                    out = [vals[pend[32 * w + i][2]] for i in range(32)]
                else:
                    raise AssertionError(kind)
                for i, l in enumerate(lanes):
                    step(l, out[i])
                progress = True
            if progress:
                continue
            waiting = [t for t in range(n) if not done[t]]
            assert all(pend[t][0] == "bar" for t in waiting), "deadlock: warp op vs barrier"
            assert len(waiting) == n, f"barrier reached by {len(waiting)} of {n} threads"
            res = any(pend[t][1] for t in range(n))
            self.epoch += 1
            for t in range(n):
                step(t, res)


# Yielded requests: ("bar", pred) -> any(pred); ("xor", v, o); ("idx", v, src).
def bar(pred=False):
    return ("bar", pred)


def shfl_xor(v, o):
    return ("xor", v, o)


def shfl(v, src):
    return ("idx", v, src)


class Shared:
    def __init__(self, block, size, name):
        self.b, self.name = block, name
        self.v = [None] * size
        self.w = [(-1, -1)] * size  # (epoch, tid) of the last write
        self.r = [(-1, -1)] * size  # (epoch, tid or -2 for many) of reads

    def load(self, i, tid):
        assert 0 <= i < len(self.v), f"{self.name}[{i}] out of bounds"
        assert self.v[i] is not None, f"{self.name}[{i}] read before written"
        we, wt = self.w[i]
        assert not (we == self.b.epoch and wt != tid), f"{self.name}[{i}] RAW race"
        re, rt = self.r[i]
        self.r[i] = (self.b.epoch, tid if re != self.b.epoch or rt == tid else -2)
        return self.v[i]

    def store(self, i, x, tid):
        assert 0 <= i < len(self.v), f"{self.name}[{i}] out of bounds"
        e = self.b.epoch
        assert not (self.w[i][0] == e and self.w[i][1] != tid), f"{self.name}[{i}] WAW race"
        assert not (self.r[i][0] == e and self.r[i][1] != tid), f"{self.name}[{i}] WAR race"
        self.v[i] = x
        self.w[i] = (e, tid)


class Global:
    def __init__(self, arr, name, readable=None):
        self.a, self.name, self.ok = arr.reshape(-1), name, readable
        self.written = np.zeros(self.a.size, bool)

    def load(self, i):
        assert 0 <= i < self.a.size, f"{self.name}[{i}] out of bounds ({self.a.size})"
        assert self.ok is None or self.ok(i), f"{self.name}[{i}] is not to be read"
        return self.a[i]

    def store(self, i, x):
        assert 0 <= i < self.a.size, f"{self.name}[{i}] out of bounds ({self.a.size})"
        self.a[i] = x
        self.written[i] = True
