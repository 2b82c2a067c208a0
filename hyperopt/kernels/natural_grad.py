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

from .core import TILE, block_sum, fused_helper, kernel, lanes_add, tile_terms

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


@fused_helper
def hash32_fused(x):
    """``hash32`` of one value held in a uint64 (products masked back to 32 bits)."""
    mask = np.uint64(0xFFFFFFFF)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & mask
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & mask
    return x ^ (x >> np.uint64(16))


@fused_helper
def hash_sign_fused(h, bit):
    """The float32 sign (bit 0 -> +1, bit 1 -> -1) of bit ``bit`` of the hash ``h``."""
    return np.float32(1.0) - np.float32(2.0) * np.float32((h >> np.uint64(bit)) & np.uint64(1))


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
    """``sum(col_j * grad * scale)`` (float64 terms, ``block_sum``) for the first ``n`` columns, 0.0
    for the rest of WIDTH."""
    g = grad.reshape(-1).astype(np.float64)
    g *= np.float64(scale)
    return tuple(block_sum(np.multiply(cols[j].reshape(-1), g, dtype=np.float64)) if j < n else 0.0
                 for j in range(WIDTH))


def natural_grad_store_fused(lo, hi, bufs, s, ctl, lanes):
    """Fused body of ``natural_grad_store``."""
    grad, proj = bufs
    scale = s[0]
    for i in range(lo, hi):
        proj[i] = grad[i] * scale


@kernel("natural_grad_store",
        buffers=("grad", "proj"),
        scalars=("scale",), fused=natural_grad_store_fused)
def natural_grad_store(grad, proj, *, scale):
    """``proj <- scale * grad``: a column of P sent through the gradient upload (see the optimizer)."""
    np.multiply(grad, scale, out=proj, casting="unsafe")


def natural_grad_project_fused(lo, hi, bufs, s, ctl, lanes):
    """Fused body of ``natural_grad_project``."""
    grad, proj0, proj1, proj2, proj3 = bufs
    n = int(s[1])
    scale = np.float64(s[0])
    terms = tile_terms(WIDTH)
    for start in range(lo, hi, TILE):
        stop = min(start + TILE, hi)
        # one loop per column (the tile stays in cache): straight loops, each vectorised
        for k, proj in enumerate((proj0, proj1, proj2, proj3)):
            if k < n:
                for i in range(start, stop):
                    terms[k, i - start] = np.float64(proj[i]) * (np.float64(grad[i]) * scale)
                lanes_add(lanes, k, terms, stop - start)


@kernel("natural_grad_project",
        buffers=("grad", "proj0", "proj1", "proj2", "proj3"),
        scalars=("scale", "n_cols"),
        sums=("s0", "s1", "s2", "s3"), fused=natural_grad_project_fused)
def natural_grad_project(grad, proj0, proj1, proj2, proj3, *, scale, n_cols):
    """``scale * sum(proj_j * grad)`` for the first ``n_cols`` columns (0.0 for the others)."""
    return _dots64((proj0, proj1, proj2, proj3), grad, n_cols, scale)


def natural_grad_expand_fused(lo, hi, bufs, s, ctl, lanes):
    """Fused body of ``natural_grad_expand``."""
    param, proj0, proj1, proj2, proj3 = bufs
    c0, c1, c2, c3, n_cols, clip, apply_clip = s
    n = int(n_cols)
    for i in range(lo, hi):
        x = param[i]
        if n > 0:
            x = x + c0 * proj0[i]
        if n > 1:
            x = x + c1 * proj1[i]
        if n > 2:
            x = x + c2 * proj2[i]
        if n > 3:
            x = x + c3 * proj3[i]
        if apply_clip != 0:
            x = np.minimum(np.maximum(x, -clip), clip)
        param[i] = x


@kernel("natural_grad_expand",
        buffers=("param", "proj0", "proj1", "proj2", "proj3"),
        scalars=("c0", "c1", "c2", "c3", "n_cols", "clip", "apply_clip"),
        fused=natural_grad_expand_fused)
def natural_grad_expand(param, proj0, proj1, proj2, proj3, *, c0, c1, c2, c3, n_cols, clip, apply_clip):
    """``param += c_j * proj_j`` over the first ``n_cols`` columns, in column order; then, when
    ``apply_clip``, the box ``param <- clip(param, -clip, clip)`` (upstream clips values, not steps)."""
    for j, (c, col) in enumerate(zip((c0, c1, c2, c3), (proj0, proj1, proj2, proj3))):
        if j < n_cols:
            param += c * col
    if apply_clip:
        np.clip(param, -clip, clip, out=param)


def natural_grad_hash_project_fused(lo, hi, bufs, s, ctl, lanes):
    """Fused body of ``natural_grad_hash_project``."""
    grad, key = bufs
    stream, bit0, n_cols, scale = s
    n, b0, sc = int(n_cols), int(bit0), np.float64(scale)
    salt = hash32_fused(np.uint64(int(stream)))
    bits = key[lo:hi].astype(np.float32).view(np.uint32)
    terms = tile_terms(WIDTH)
    hashes = np.empty(TILE, np.uint64)
    for start in range(lo, hi, TILE):
        stop = min(start + TILE, hi)
        for i in range(start, stop):
            hashes[i - start] = hash32_fused(np.uint64(bits[i - lo]) ^ salt)
        for j in range(n):
            bit = b0 + j
            for i in range(start, stop):
                g = np.float64(grad[i]) * sc
                terms[j, i - start] = np.float64(hash_sign_fused(hashes[i - start], bit)) * g
            lanes_add(lanes, j, terms, stop - start)


@kernel("natural_grad_hash_project",
        buffers=("grad", "key"),
        scalars=("stream", "bit0", "n_cols", "scale"),
        sums=("s0", "s1", "s2", "s3"), fused=natural_grad_hash_project_fused)
def natural_grad_hash_project(grad, key, *, stream, bit0, n_cols, scale):
    """As ``natural_grad_project`` with the columns generated from ``key`` (see the module notes)."""
    n = int(n_cols)
    return _dots64(hash_signs(key, stream, bit0, n), grad, n, scale)


def natural_grad_hash_expand_fused(lo, hi, bufs, s, ctl, lanes):
    """Fused body of ``natural_grad_hash_expand``."""
    param, key = bufs
    stream, bit0, n_cols, c0, c1, c2, c3, clip, apply_clip = s
    n, b0 = int(n_cols), int(bit0)
    cs = (c0, c1, c2, c3)
    salt = hash32_fused(np.uint64(int(stream)))
    bits = key[lo:hi].astype(np.float32).view(np.uint32)
    hashes = np.empty(TILE, np.uint64)
    for start in range(lo, hi, TILE):
        stop = min(start + TILE, hi)
        for i in range(start, stop):
            hashes[i - start] = hash32_fused(np.uint64(bits[i - lo]) ^ salt)
        # a column at a time, ``param`` holding the running sum in between (the same roundings as
        # one running value per element): straight loops, each vectorised
        for j in range(n):
            c, bit = cs[j], b0 + j
            for i in range(start, stop):
                param[i] = param[i] + c * hash_sign_fused(hashes[i - start], bit)
        if apply_clip != 0:
            for i in range(start, stop):
                param[i] = np.minimum(np.maximum(param[i], -clip), clip)


@kernel("natural_grad_hash_expand",
        buffers=("param", "key"),
        scalars=("stream", "bit0", "n_cols", "c0", "c1", "c2", "c3", "clip", "apply_clip"),
        fused=natural_grad_hash_expand_fused)
def natural_grad_hash_expand(param, key, *, stream, bit0, n_cols, c0, c1, c2, c3, clip, apply_clip):
    """As ``natural_grad_expand`` with the columns generated from ``key``; ``c_j`` include the scale."""
    n = int(n_cols)
    signs = hash_signs(key, stream, bit0, n).reshape((n,) + param.shape)
    for j, c in enumerate((c0, c1, c2, c3)[:n]):
        param += c * signs[j]
    if apply_clip:
        np.clip(param, -clip, clip, out=param)
