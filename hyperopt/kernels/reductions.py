"""Generic reductions over parameters (per segment; group and global totals are sums of those).

GLSL twins: shaders/reduce-dot.glsl and shaders/reduce-sumsq.glsl.  On the device each workgroup
adds its elements in a fixed tree order, shaders/segment-sum.glsl adds the workgroup partials of
each CHUNK-element block in a fixed order, and the host adds the blocks in order, so a reduction
gives the same bits every run (and for any number of MPI ranks).
"""
import numpy as np

from .core import TILE, dot_sum, kernel, lanes_add, tile_terms


def reduce_dot_fused(lo, hi, bufs, s, ctl, lanes):
    a, b = bufs
    terms = tile_terms(1)
    for start in range(lo, hi, TILE):
        stop = min(start + TILE, hi)
        for i in range(start, stop):
            terms[0, i - start] = np.float64(a[i]) * np.float64(b[i])
        lanes_add(lanes, 0, terms, stop - start)


@kernel("reduce_dot", buffers=("a", "b"), sums=("dot",), fused=reduce_dot_fused)
def reduce_dot(a, b):
    return (dot_sum(a, b),)


def reduce_sumsq_fused(lo, hi, bufs, s, ctl, lanes):
    (a,) = bufs
    terms = tile_terms(1)
    for start in range(lo, hi, TILE):
        stop = min(start + TILE, hi)
        for i in range(start, stop):
            x = np.float64(a[i])
            terms[0, i - start] = x * x
        lanes_add(lanes, 0, terms, stop - start)


@kernel("reduce_sumsq", buffers=("a",), sums=("sumsq",), fused=reduce_sumsq_fused)
def reduce_sumsq(a):
    return (dot_sum(a, a),)
