"""HCNaturalGrad's two large products, ``P^T g`` and ``P v``.  GLSL twins: shaders/natural-grad-*.glsl.

P is the (n_params x D) random projection; a step is two programs with the D x D solve on the host
in between:

* ``natural_grad_store`` copies one uploaded column of P (sent in place of a gradient, the one
  upload channel that is cheap on every device) into its buffer ``proj<j>``, scaled by 1/sqrt(D);
* ``natural_grad_project`` (elementwise, 4 sums) gives ``sum_i P[i, j] * g[i]`` per parameter for
  four columns of P, each column stored in its own state buffer ``proj<j>``;
* ``natural_grad_expand`` (elementwise) applies ``p += sum_j c_j * P[:, j]`` for four columns with
  ``c_j = -lr * v_j`` from the host, then (on the last dispatch only) clips ``p`` to ``[-clip, clip]``.

Each dispatch covers four columns; D > 4 takes ceil(D/4) dispatches, and a last dispatch with fewer
than four columns names its last buffer again for the unused slots and masks them with ``n_cols``.
Plain gradient descent (no branches) is the expand kernel with the gradient as its only column.

The ``natural_grad_hash_*`` pair computes the same products for a projection that is generated where
it is used, so P is never stored or uploaded: ``P[i, j] = scale * (+1 or -1)``, the sign being bit
``bit0 + j`` of ``hash32(key[i] ^ hash32(stream))``.  ``key`` holds each element's index within its
parameter as the bit pattern of a float32 (written once by the optimizer), ``stream`` is a 24-bit
integer the host derives from (seed, step, parameter, column block), so every column block, step and
parameter gets independent signs.  Sign entries have the moments of the Gaussian entries they stand
for (mean 0, variance ``scale**2``); the NumPy twin reproduces them exactly.
"""
import numpy as np

from .core import kernel

WIDTH = 4                          # columns of P per dispatch
_M1, _M2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)


def hash32(x):
    """A 32-bit integer mixer (xorshift-multiply, "lowbias32"); uint32 arrays or scalars, wrapping."""
    x = np.asarray(x, np.uint32)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(16))
        x = x * _M1
        x = x ^ (x >> np.uint32(15))
        x = x * _M2
        x = x ^ (x >> np.uint32(16))
    return x


def hash32_int(x: int) -> int:
    """``hash32`` of one Python int (taken modulo 2**32)."""
    return int(hash32(np.uint32(x & 0xFFFFFFFF)))


def hash_stream(seed: int, step: int, segment: int, block: int) -> int:
    """The 24-bit stream of one (seed, step, parameter, 32-column block); exact as a float32 scalar."""
    h = hash32_int(seed)
    for word in (step, segment, block):
        h = hash32_int(h ^ hash32_int(word))
    return h & 0xFFFFFF


def element_keys(size: int) -> np.ndarray:
    """The ``key`` buffer of a parameter with ``size`` elements: indices as float32 bit patterns."""
    return np.arange(size, dtype=np.uint32).view(np.float32)


def hash_signs(key, stream, bit0, n_cols):
    """float32 +-1 signs, shape (n_cols, key.size), of columns ``bit0 .. bit0+n_cols-1``."""
    h = hash32(np.asarray(key, np.float32).reshape(-1).view(np.uint32) ^ hash32(np.uint32(int(stream))))
    out = np.empty((n_cols, h.size), np.float32)
    for j in range(n_cols):
        bit = (h >> np.uint32(int(bit0) + j)) & np.uint32(1)
        out[j] = 1.0 - 2.0 * bit.astype(np.float32)          # bit 0 -> +1, bit 1 -> -1
    return out


def _dots64(cols, grad, n, scale):
    """``scale * <col_j, grad>`` in float64 for the first ``n`` columns, 0.0 for the rest of WIDTH."""
    g = grad.reshape(-1).astype(np.float64)
    return tuple(float(scale) * float(np.dot(cols[j].reshape(-1).astype(np.float64), g)) if j < n else 0.0
                 for j in range(WIDTH))


@kernel("natural_grad_store",
        buffers=("grad", "proj"),
        scalars=("scale",))
def natural_grad_store(grad, proj, *, scale):
    """``proj <- scale * grad``: a column of P sent through the gradient upload (see the optimizer)."""
    np.multiply(grad, scale, out=proj, casting="unsafe")


@kernel("natural_grad_project",
        buffers=("grad", "proj0", "proj1", "proj2", "proj3"),
        scalars=("scale", "n_cols"),
        sums=("s0", "s1", "s2", "s3"))
def natural_grad_project(grad, proj0, proj1, proj2, proj3, *, scale, n_cols):
    """``scale * sum(proj_j * grad)`` for the first ``n_cols`` columns (0.0 for the others)."""
    return _dots64((proj0, proj1, proj2, proj3), grad, n_cols, scale)


@kernel("natural_grad_expand",
        buffers=("param", "proj0", "proj1", "proj2", "proj3"),
        scalars=("c0", "c1", "c2", "c3", "n_cols", "clip", "apply_clip"))
def natural_grad_expand(param, proj0, proj1, proj2, proj3, *, c0, c1, c2, c3, n_cols, clip, apply_clip):
    """``param += c_j * proj_j`` over the first ``n_cols`` columns, in column order; then, when
    ``apply_clip``, the box ``param <- clip(param, -clip, clip)`` (upstream clips values, not steps)."""
    for j, (c, col) in enumerate(zip((c0, c1, c2, c3), (proj0, proj1, proj2, proj3))):
        if j < n_cols:
            param += c * col
    if apply_clip:
        np.clip(param, -clip, clip, out=param)


@kernel("natural_grad_hash_project",
        buffers=("grad", "key"),
        scalars=("stream", "bit0", "n_cols", "scale"),
        sums=("s0", "s1", "s2", "s3"))
def natural_grad_hash_project(grad, key, *, stream, bit0, n_cols, scale):
    """As ``natural_grad_project`` with the columns generated from ``key`` (see the module notes)."""
    n = int(n_cols)
    return _dots64(hash_signs(key, stream, bit0, n), grad, n, scale)


@kernel("natural_grad_hash_expand",
        buffers=("param", "key"),
        scalars=("stream", "bit0", "n_cols", "c0", "c1", "c2", "c3", "clip", "apply_clip"))
def natural_grad_hash_expand(param, key, *, stream, bit0, n_cols, c0, c1, c2, c3, clip, apply_clip):
    """As ``natural_grad_expand`` with the columns generated from ``key``; ``c_j`` include the scale."""
    n = int(n_cols)
    signs = hash_signs(key, stream, bit0, n).reshape((n,) + param.shape)
    for j, c in enumerate((c0, c1, c2, c3)[:n]):
        param += c * signs[j]
    if apply_clip:
        np.clip(param, -clip, clip, out=param)
