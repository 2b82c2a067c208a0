"""The kernel table: every device kernel is declared once, next to its NumPy twin.

A declaration names the kernel's arena buffers (binding order), its per-segment scalars (the field
order of the ``Scalars`` struct in the GLSL), the sums it produces per segment, and whether it reads
the optimizer's small control buffer.  Both backends read the same declaration: the NumPy backend
calls the twin, the numba backend compiles the fused body, the Vulkan backend derives bindings and
the scalar-table layout from it and runs ``shaders/<name with dashes>.glsl``.  ``tests/test_kernel_table.py`` checks every GLSL file against
its declaration, so the two can never disagree silently.

Kinds of kernel
---------------
``elementwise``  runs over every element of every active parameter (one "segment" per parameter).
                 Twin: ``fn(*buffers, **scalars) -> tuple of sums | None``, called on matching
                 slices (possibly chunks) of the buffers, updating them in place.  When
                 ``ctl=True`` it also gets ``ctl=`` (the control array) and ``segment=`` (its index).
``control``      runs once per step on small per-segment/per-group data (scalar logic that must
                 stay on the device to keep one submit per step).  Twin:
                 ``fn(ctl, sums, table)`` with ``sums`` the per-segment sums of the previous
                 sum-producing kernel and ``table`` this kernel's scalar table, updating ``ctl``.

Fused bodies (``fused=``, elementwise kernels)
----------------------------------------------
``body(lo, hi, bufs, s, ctl, lanes)`` updates elements ``lo:hi`` of the flat (C-order) buffers
``bufs`` (a tuple in declaration order) with ``s`` the segment's row of the scalar table,
in the twin's order of operations, so both give the same bits.  Numba compiles it
(``hyperopt.backends.numba_backend``), so it is written in the numba subset: plain loops, explicit
types for literals (``x + 1`` would promote float32 to float64), helpers marked ``@fused_helper``
that take and return scalars (an array argument costs reference counting on every call).
Sum ``k`` of the block adds its per-element term to lane ``(i - lo) % LANES`` of ``lanes[k]``; the
backend then totals the lanes with ``lanes_total``, which is what ``block_sum`` does for the twins.
Not element by element, though: ``lanes[k, i % LANES] += term`` is a read-modify-write through
memory that keeps the compiler from vectorising the loop (and numba leaves LLVM's SLP vectoriser
off, so eight scalar accumulators would not be vectorised either).  A sum-producing body runs a
tile (``TILE`` elements from ``lo``) at a time: a straight loop writes the tile's terms to a scratch
(``tile_terms``), which ``lanes_add`` adds to the lanes lane-major, each lane in element order, as
vector additions.  Bodies with several sums or modes run one straight loop per sum or mode over the
tile (it stays in cache), and a loop over many buffers may go in a helper of its own, so that each
loop vectorises (helpers called once per tile may take arrays: their reference counting is paid
per tile, not per element).  Check a body's compiled loops for packed instructions
(``inspect_asm`` of its driver) and for the absence of ``vfmadd`` (no contraction).

A control kernel may have a fused body too: ``body(ctl, sums, table)``, the twin's signature,
written as plain loops over its rows with the twin's float32 operations (a twin's masked array
operations cost a microsecond each however few the rows); the numba backend compiles it and
runs it in place of the twin.

Per-segment sums
----------------
A segment's sum is the float64 sum, in block order from 0.0, of per-block partials; blocks are
``CHUNK`` elements counted from the segment's start.  A block's partial is ``block_sum`` of its
per-element float64 terms: lane ``j`` adds terms ``j, j+8, j+16, ...`` in order from 0.0, then the
eight lanes are added as a fixed tree.  Nothing depends on threads, so every backend that follows
it (NumPy twins, fused bodies, the distributed layer) gets the same bits.  The Vulkan backend keeps
the blocks and the float64 total (``segment_totals``) but adds inside a block in its own fixed
order (workgroup trees), so its sums agree with the CPU's to rounding, and are the same bits for
any number of ranks.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

ELEMENTWISE = "elementwise"
CONTROL = "control"

KERNELS: dict[str, "Kernel"] = {}


@dataclass(frozen=True)
class Kernel:
    name: str
    kind: str
    buffers: tuple[str, ...]
    scalars: tuple[str, ...]
    sums: tuple[str, ...] = ()
    ctl: bool = False
    numpy: Callable = field(default=None, repr=False, compare=False)
    fused: Callable | None = field(default=None, repr=False, compare=False)

    @property
    def shader(self) -> str:
        """File stem of the GLSL twin: ``adamw_update`` -> ``adamw-update``."""
        return self.name.replace("_", "-")

    def __call__(self, *args, **kwargs):
        return self.numpy(*args, **kwargs)


def dispatch(kernel: Kernel, names) -> tuple[Kernel, tuple[str, ...]]:
    """A program entry: the kernel and the buffer names bound to its buffers (default: its own)."""
    names = tuple(names) if names else kernel.buffers
    if len(names) != len(kernel.buffers):
        raise ValueError(f"kernel {kernel.name} takes buffers {kernel.buffers}, got {names}")
    return kernel, names


def kernel(name: str, *, kind: str = ELEMENTWISE, buffers=(), scalars=(), sums=(), ctl=False, fused=None):
    """Declare a kernel and register its NumPy twin (used as a decorator) and its fused body."""
    if kind not in (ELEMENTWISE, CONTROL):
        raise ValueError(f"unknown kernel kind {kind!r}")

    def register(fn: Callable) -> Kernel:
        if name in KERNELS:
            raise ValueError(f"kernel {name!r} declared twice")
        k = Kernel(name, kind, tuple(buffers), tuple(scalars), tuple(sums), bool(ctl), fn, fused)
        KERNELS[name] = k
        return k

    return register


# ------------------------------------------------------------------ per-segment sums
CHUNK = 1 << 17      # elements per block of a segment (the unit of the per-segment sums)
LANES = 8            # float64 accumulators per block sum

#: helpers that fused bodies call; the numba backend compiles them along with the bodies
FUSED_HELPERS: dict[str, Callable] = {}


def fused_helper(fn: Callable) -> Callable:
    """Mark a plain function as callable from fused bodies (it stays an ordinary Python function)."""
    FUSED_HELPERS[fn.__name__] = fn
    return fn


@fused_helper
def lanes_total(lanes):
    """The fixed tree that adds a block's eight lane sums."""
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))


#: groups of LANES elements per tile of a sum-producing fused body (see ``lanes_add``)
TILE_GROUPS = 64
#: elements per tile, unsigned like the bodies' indices (an int would turn ``start + TILE`` into a float)
TILE = np.uint64(TILE_GROUPS * LANES)


@fused_helper
def tile_terms(n_sums):
    """The scratch a sum-producing fused body writes its per-element float64 terms to, one tile
    (``TILE`` elements) at a time: ``terms[k, p]`` is sum ``k``'s term of the tile's element ``p``."""
    return np.empty((n_sums, TILE), np.float64)


@fused_helper
def lanes_add(lanes, k, terms, n):
    """Adds the terms ``terms[k, :n]`` of a tile (``n <= TILE``, the tile starting a multiple of
    LANES elements after the block's start) to the lanes of sum ``k``: lane ``j`` adds the terms
    ``j, j + LANES, j + 2 LANES, ...`` in that order, as ``lanes[k, p % LANES] += terms[k, p]``
    element by element would.

    Written lane-major so that the compiler vectorises it without reassociating anything: the
    inner loop over the tile's groups is unrolled (its trip count is a constant) and the outer loop
    over the lanes, whose iterations are independent, runs as one vector of lanes; each lane's
    additions keep their order.  (Adding into ``lanes`` element by element, a read-modify-write
    through memory, would run as scalar code.)  A tile with ``n < TILE`` terms is padded with
    +0.0, which adds nothing: a lane starts at +0.0 and can never become -0.0 (a sum is -0.0 only
    when both of its operands are), and ``x + 0.0`` is ``x`` for every other ``x``, inf and NaN
    included."""
    if n < TILE:
        for p in range(n, TILE):
            terms[k, p] = 0.0
    for j in range(lanes.shape[1]):
        acc = lanes[k, j]
        for group in range(TILE_GROUPS):
            acc += terms[k, group * LANES + j]
        lanes[k, j] = acc


def block_sum(terms) -> float:
    """A block's partial: its float64 terms added lane by lane (see "Per-segment sums"), exactly as
    the fused bodies add them.  ``np.add.reduce`` over axis 0 adds each column in row order."""
    t = np.asarray(terms).reshape(-1).astype(np.float64, copy=False)
    whole = t.size - t.size % LANES
    lanes = np.add.reduce(t[:whole].reshape(-1, LANES), axis=0, initial=0.0)
    lanes[: t.size - whole] += t[whole:]
    return float(lanes_total(lanes))


def segment_totals(partials, segment_blocks) -> np.ndarray:
    """Per-segment sums from per-block partials (rows in global block order): segment ``s`` adds
    ``partials[first:first + count]`` (``segment_blocks[s] = (first, count)``) in block order, in
    float64, from 0.0.  The Vulkan backend and the distributed layer total block partials here."""
    partials = np.asarray(partials, np.float64)
    first, count = np.asarray(segment_blocks, np.int64).reshape(-1, 2).T
    out = np.zeros((len(first),) + partials.shape[1:], np.float64)
    for n in np.unique(count[count > 0]).tolist():       # segments of n blocks, together
        segs = np.nonzero(count == n)[0]
        rows = np.zeros((n + 1, len(segs)) + partials.shape[1:], np.float64)     # row 0: the 0.0 it starts from
        rows[1:] = partials[first[segs][None, :] + np.arange(n)[:, None]]
        out[segs] = np.add.accumulate(rows, axis=0)[-1]       # strictly in order (a reduce may go pairwise)
    return out


def dot_sum(a, b) -> float:
    """``block_sum`` of the float64 products ``a[i] * b[i]``."""
    return block_sum(np.multiply(a.reshape(-1), b.reshape(-1), dtype=np.float64))


_scratch: dict[tuple, np.ndarray] = {}


def scratch(like: np.ndarray, slot: int) -> np.ndarray:
    """A reusable temporary shaped like ``like`` (twins run on cache-sized chunks, so reusing a
    few buffers avoids an allocation, and its page faults, per operation)."""
    key = (like.shape, like.dtype.str, slot, threading.get_ident())
    buf = _scratch.get(key)
    if buf is None:
        if len(_scratch) > 256:
            _scratch.clear()
        buf = _scratch[key] = np.empty(like.shape, like.dtype)
    return buf
