"""Generic reductions over parameters (per segment; group and global totals are sums of those).

GLSL twins: shaders/reduce-dot.glsl and shaders/reduce-sumsq.glsl.  On the device each workgroup
adds its elements in a fixed tree order and shaders/segment-sum.glsl adds the workgroup partials of
each parameter in a fixed order, so a reduction gives the same bits every run.
"""
import numpy as np

from .core import kernel


@kernel("reduce_dot", buffers=("a", "b"), sums=("dot",))
def reduce_dot(a, b):
    return (float(np.dot(a.reshape(-1).astype(np.float64), b.reshape(-1))),)


@kernel("reduce_sumsq", buffers=("a",), sums=("sumsq",))
def reduce_sumsq(a):
    a = a.reshape(-1).astype(np.float64)
    return (float(np.dot(a, a)),)
