"""AutoSGM's kernels.  GLSL twins: shaders/autosgm-update.glsl, autosgm-stats.glsl, autosgm-control.glsl,
autosgm-apply.glsl.

Two programs, chosen by the optimizer:

* ``[autosgm_update]`` when every learning-rate numerator is a host constant (``aoptlr=False`` or
  ``num_lrc`` 0/4): one pass filters the gradient and applies ``p += alpha * v``.
* ``[autosgm_stats, autosgm_control, autosgm_apply]`` when some tensor estimates its numerator
  (``num_lrc`` 1-3): ``stats`` filters the gradient, stores the step direction ``v`` in ``upd``, updates
  the estimator's state and sums its per-element estimate ``e`` per tensor; ``control`` turns each
  tensor's mean into its smoothed numerator (state in the control array) and ``alpha``; ``apply``
  does ``p += alpha * upd``.  One submit either way.

The element-wise front end shared by ``update`` and ``stats`` (every multiplier is derived on the host
in double precision; flags are 0/1):

.. code-block:: text

    w = param, g = grad
    if huber:  s = g_mag + (1-beta_a)|g| ; mu = s*huber_scale ; g_mag = beta_a*s ; g = sign(g) min(|g|, 4 mu)
    wd_w = wd*w ;  g = g + coupled*wd_w                         (weight decay coupled to the gradient)
    a = eta_i*g ;  s = g_sm + a ;  v = s*smooth_scale ;  g_sm = beta_i*s - gamma_i*a     (lowpass filter)
    if aopt:   a = eta_a*(g+eps)^2 ; s = g_var + a ; d = sqrt(s*moment_scale) + eps ; g_var = beta_a*s
    else:      d = 1
    u = g/d ;  v = v/d + decoupled*wd_w                          (decoupled decay, scaled on the host)

Control array layout: two floats per parameter, ``ctl[2i]`` the smoothed numerator's filter state
(upstream ``state['lr_num']``), ``ctl[2i+1]`` the signed step size ``alpha`` of the current step.
"""
import numpy as np

from .core import CONTROL, TILE, block_sum, fused_helper, kernel, lanes_add, tile_terms

CTL_STRIDE = 2          # floats per parameter in the control array
CTL_LR_NUM, CTL_ALPHA = 0, 1
HUBER_CAP = 4.0         # the Huber constant: clip at 4x the running mean magnitude
LR_NUM_POLE = 0.1       # pole of the numerator's smoothing filter (input weight 1 - 0.1)

_FRONT = ("wd", "coupled", "decoupled", "eta_i", "beta_i", "gamma_i", "smooth_scale",
          "aopt", "eta_a", "beta_a", "moment_scale", "eps", "huber", "one_minus_beta_a", "huber_scale")
_F32 = np.float32


def _front(param, grad, g_sm, g_var, g_mag, *, wd, coupled, decoupled, eta_i, beta_i, gamma_i,
           smooth_scale, aopt, eta_a, beta_a, moment_scale, eps, huber, one_minus_beta_a, huber_scale):
    """The shared front end; updates the filter states in place, returns (g, d, v).  The ``1 - beta``
    factors come from the host (in float32, ``1 - beta`` loses up to 4 digits for beta near 1)."""
    g = grad
    if huber:
        mag = np.abs(g)
        s = g_mag + one_minus_beta_a * mag
        np.multiply(s, beta_a, out=g_mag)
        s *= huber_scale
        s *= _F32(HUBER_CAP)
        np.minimum(mag, s, out=s)
        g = np.sign(g)
        g *= s
    # wd = 0 and gamma_i = 0 skip terms that would add exact zeros (same result, fewer passes)
    wd_w = wd * param if wd != 0 else None
    if coupled and wd_w is not None:
        g = g + wd_w
    a = eta_i * g
    s = g_sm + a
    v = s * smooth_scale
    np.multiply(s, beta_i, out=g_sm)
    if gamma_i != 0:
        a *= gamma_i
        g_sm -= a
    if aopt:
        d = g + eps
        d *= d
        d *= eta_a
        d += g_var
        np.multiply(d, beta_a, out=g_var)
        d *= moment_scale
        np.sqrt(d, out=d)
        d += eps
        v /= d
    else:
        d = None
    if decoupled and wd_w is not None:
        wd_w *= decoupled
        v += wd_w
    return g, d, v


@fused_helper
def autosgm_front_scalars(s):
    """The front end's scalars (the first 15 of a row) as a tuple, taken once per block."""
    return (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11], s[12], s[13], s[14])


@fused_helper
def autosgm_front_fused(w, g, g_sm, g_var, g_mag, front):
    """One element of ``_front`` (``front`` from ``autosgm_front_scalars``): takes the element's
    filter states and returns (g, d, v, g_sm, g_var, g_mag) with the states updated.  Scalars in,
    scalars out: an array argument would cost reference counting on every element."""
    (wd, coupled, decoupled, eta_i, beta_i, gamma_i, smooth_scale, aopt, eta_a, beta_a, moment_scale,
     eps, huber, one_minus_beta_a, huber_scale) = front
    if huber != 0:
        mag = np.abs(g)
        t = g_mag + one_minus_beta_a * mag
        g_mag = t * beta_a
        t = (t * huber_scale) * np.float32(HUBER_CAP)
        g = np.sign(g) * np.minimum(mag, t)
    wd_w = wd * w
    if coupled != 0 and wd != 0:
        g = g + wd_w
    a = eta_i * g
    t = g_sm + a
    v = t * smooth_scale
    g_sm = t * beta_i
    if gamma_i != 0:
        g_sm = g_sm - a * gamma_i
    d = g                  # unused when the moment is off (the callers test ``aopt``)
    if aopt != 0:
        d = g + eps
        d = (d * d) * eta_a + g_var
        g_var = d * beta_a
        d = np.sqrt(d * moment_scale) + eps
        v = v / d
    if decoupled != 0 and wd != 0:
        v = v + wd_w * decoupled
    return g, d, v, g_sm, g_var, g_mag


def autosgm_update_fused(lo, hi, bufs, s, ctl, lanes):
    """Fused body of ``autosgm_update``."""
    param, grad, g_sm, g_var, g_mag = bufs
    alpha, aopt, huber = s[15], s[7], s[12]
    front = autosgm_front_scalars(s)
    for i in range(lo, hi):
        w = param[i]
        _, _, v, sm, var, mag = autosgm_front_fused(w, grad[i], g_sm[i], g_var[i], g_mag[i], front)
        g_sm[i] = sm
        if aopt != 0:          # buffers of switched-off parts may be placeholders: never written
            g_var[i] = var
        if huber != 0:
            g_mag[i] = mag
        param[i] = w + v * alpha


@kernel("autosgm_update",
        buffers=("param", "grad", "g_sm", "g_var", "g_mag"),
        scalars=_FRONT + ("alpha",),
        fused=autosgm_update_fused)
def autosgm_update(param, grad, g_sm, g_var, g_mag, *, alpha, **front):
    """One-pass step with a host-side step size: the front end, then ``p += alpha*v``
    (``alpha = -lr0*W``, positive when maximizing)."""
    _, _, v = _front(param, grad, g_sm, g_var, g_mag, **front)
    v *= alpha
    param += v


@fused_helper
def autosgm_front_tile(start, stop, param, grad, g_sm, g_var, g_mag, upd, u_tile, with_u, front):
    """The front end of ``autosgm_stats`` over elements ``start:stop`` (a tile): ``upd = v``, and
    ``u_tile[i - start] = u`` (``u = g/d``, or ``g`` without the moment) when ``with_u``.  A helper
    of its own so that the compiler optimises (vectorises) its loop apart from the body's others."""
    aopt, huber = front[7], front[12]
    if with_u:
        for i in range(start, stop):
            g, d, v, sm, var, mag = autosgm_front_fused(param[i], grad[i], g_sm[i], g_var[i], g_mag[i], front)
            g_sm[i] = sm
            if aopt != 0:
                g_var[i] = var
            if huber != 0:
                g_mag[i] = mag
            upd[i] = v
            u_tile[i - start] = g / d if aopt != 0 else g
    else:
        for i in range(start, stop):
            _, _, v, sm, var, mag = autosgm_front_fused(param[i], grad[i], g_sm[i], g_var[i], g_mag[i], front)
            g_sm[i] = sm
            if aopt != 0:
                g_var[i] = var
            if huber != 0:
                g_mag[i] = mag
            upd[i] = v


def autosgm_stats_fused(lo, hi, bufs, s, ctl, lanes):
    """Fused body of ``autosgm_stats``, a tile at a time: the front end, then the estimator of
    ``num_lrc`` in its own loop (``v`` read back from ``upd``, ``u = g/d`` from a tile of its own),
    so that each loop is a straight loop over few buffers, which the compiler vectorises; the
    estimator writes its terms ``e`` to a tile, then added to the lanes (``lanes_add``)."""
    param, grad, g_sm, g_var, g_mag, wsq, pcor, pcx, upd = bufs
    num_lrc, lr0, beta_n, one_minus_beta_n = s[15:]
    aopt, beta_a, huber, one_minus_beta_a = s[7], s[9], s[12], s[13]
    mode = int(num_lrc)
    one = np.ones(1, param.dtype)[0]      # a literal 1 would promote float32 to float64
    front = autosgm_front_scalars(s)
    terms = tile_terms(1)
    u_tile = np.empty(TILE, param.dtype)
    for start in range(lo, hi, TILE):
        stop = min(start + TILE, hi)
        autosgm_front_tile(start, stop, param, grad, g_sm, g_var, g_mag, upd, u_tile, mode == 3, front)
        if mode == 1:
            for i in range(start, stop):
                w = param[i]
                c = wsq[i] + one_minus_beta_n * (w * w)
                wsq[i] = beta_n * c
                c1 = c + one
                r = pcor[i] + (lr0 * w) * upd[i]
                pcor[i] = beta_n * r
                terms[0, i - start] = np.float64(np.minimum(np.abs(r), lr0 * c1))
        elif mode == 2:
            for i in range(start, stop):
                w = param[i]
                c = wsq[i] + one_minus_beta_n * (w * w)
                wsq[i] = beta_n * c
                c1 = c + one
                x = w * upd[i]
                mag = np.abs(x)
                mu = pcx[i] + one_minus_beta_a * mag
                pcx[i] = beta_a * mu
                x = np.sign(x) * np.minimum(mag, np.float32(HUBER_CAP) * mu)
                r = pcor[i] + (lr0 * x) / c1
                pcor[i] = beta_n * r
                terms[0, i - start] = np.float64(np.minimum(np.abs(r), lr0 * c1))
        elif mode == 3:
            for i in range(start, stop):
                u = u_tile[i - start]
                r = pcor[i] + one_minus_beta_n * (lr0 * (u * u))
                pcor[i] = beta_n * r
                terms[0, i - start] = np.float64(np.minimum(r, lr0))
        else:
            continue           # no numerator: the sum stays 0
        lanes_add(lanes, 0, terms, stop - start)


@kernel("autosgm_stats",
        buffers=("param", "grad", "g_sm", "g_var", "g_mag", "wsq", "pcor", "pcx", "upd"),
        scalars=_FRONT + ("num_lrc", "lr0", "beta_n", "one_minus_beta_n"),
        sums=("numerator",), fused=autosgm_stats_fused)
def autosgm_stats(param, grad, g_sm, g_var, g_mag, wsq, pcor, pcx, upd, *, num_lrc, lr0, beta_n, one_minus_beta_n,
                  **front):
    """The front end, ``upd = v``, and the numerator estimator (w: the weights before the step):

    .. code-block:: text

        num_lrc 1, 2:  c = wsq + (1-beta_n) w^2 ;  wsq = beta_n c            (EMA of w^2, not debiased)
        num_lrc 1:     r = pcor + lr0 w v ;  pcor = beta_n r ;  e = min(|r|, lr0 (c+1))
        num_lrc 2:     x = w v ;  mu = pcx + (1-beta_a)|x| ;  pcx = beta_a mu ;  x~ = sign(x) min(|x|, 4 mu)
                       r = pcor + lr0 x~/(c+1) ;  pcor = beta_n r ;  e = min(|r|, lr0 (c+1))
        num_lrc 3:     r = pcor + (1-beta_n) lr0 u^2 ;  pcor = beta_n r ;  e = min(r, lr0)     (u = g/d)
        other:         e = 0

    returns ``sum(e)`` for this (part of the) tensor.
    """
    g, d, v = _front(param, grad, g_sm, g_var, g_mag, **front)
    upd[...] = v
    mode = int(num_lrc)
    if mode not in (1, 2, 3):
        return (0.0,)
    w = param
    if mode in (1, 2):
        c = wsq + one_minus_beta_n * (w * w)
        wsq[...] = beta_n * c
        cap = lr0 * (c + 1)
        if mode == 1:
            r = pcor + lr0 * w * v
        else:
            x = w * v
            mag = np.abs(x)
            mu = pcx + front["one_minus_beta_a"] * mag
            pcx[...] = front["beta_a"] * mu
            x = np.sign(x) * np.minimum(mag, _F32(HUBER_CAP) * mu)
            r = pcor + lr0 * x / (c + 1)
        pcor[...] = beta_n * r
        e = np.minimum(np.abs(r), cap)
    else:
        u = g / d if d is not None else g
        r = pcor + one_minus_beta_n * (lr0 * (u * u))
        pcor[...] = beta_n * r
        e = np.minimum(r, lr0)
    return (block_sum(e),)


def autosgm_control_fused(ctl, sums, table):
    """Fused body of ``autosgm_control``: the twin's float32 operations, one tensor at a time (the
    twin's masked array operations cost a microsecond each, whatever the number of tensors)."""
    for i in range(min(table.shape[0], ctl.shape[0] // CTL_STRIDE)):
        base = i * CTL_STRIDE
        if table[i, 0] == 1:
            ctl[base + CTL_ALPHA] = table[i, 3]
        elif table[i, 0] == 2:
            mean = np.float32(sums[i, 0]) / table[i, 2]
            y = ctl[base + CTL_LR_NUM] + np.float32(1 - LR_NUM_POLE) * mean
            ctl[base + CTL_LR_NUM] = np.float32(LR_NUM_POLE) * y
            ctl[base + CTL_ALPHA] = table[i, 4] * (y * table[i, 1])


@kernel("autosgm_control", kind=CONTROL,
        scalars=("mode", "window", "numel", "alpha_const", "direction"), fused=autosgm_control_fused)
def autosgm_control(ctl, sums, table):
    """Per tensor ``i`` (row ``i`` of the table): mode 0 skips it (no gradient this step); mode 1 sets
    ``alpha = alpha_const``; mode 2 smooths the numerator's mean and sets the signed step size:

    .. code-block:: text

        y = ctl[2i] + 0.9 * sum_i/numel ;  ctl[2i] = 0.1 y ;  ctl[2i+1] = direction * (y * window)
    """
    rec = ctl.reshape(-1, CTL_STRIDE)
    table = table[: len(rec)]
    mode = table[:, 0]
    const = mode == 1
    rec[const, CTL_ALPHA] = table[const, 3]
    est = mode == 2
    if est.any():          # vectorised over tensors; float32 throughout, like the shader
        mean = sums[: len(rec)][est, 0].astype(_F32) / table[est, 2]
        y = rec[est, CTL_LR_NUM] + _F32(1 - LR_NUM_POLE) * mean
        rec[est, CTL_LR_NUM] = _F32(LR_NUM_POLE) * y
        rec[est, CTL_ALPHA] = table[est, 4] * (y * table[est, 1])


def autosgm_apply_fused(lo, hi, bufs, s, ctl, lanes):
    """Fused body of ``autosgm_apply``."""
    param, upd = bufs
    alpha = ctl[int(s[0])]
    for i in range(lo, hi):
        param[i] = param[i] + alpha * upd[i]


@kernel("autosgm_apply", buffers=("param", "upd"), scalars=("alpha_index",), ctl=True, fused=autosgm_apply_fused)
def autosgm_apply(param, upd, *, alpha_index, ctl, segment):
    """``p += ctl[alpha_index] * upd``."""
    param += ctl[int(alpha_index)] * upd
