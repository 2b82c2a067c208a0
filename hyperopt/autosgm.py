"""AutoSGM: stochastic gradient learning as a first-order lowpass filter and an iteration-dependent
learning rate (PHB, NAG, Adam and the points between them)."""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from .kernels.autosgm import (CTL_ALPHA, CTL_LR_NUM, CTL_STRIDE, autosgm_apply, autosgm_control,
                              autosgm_stats, autosgm_update)
from .optimizer import Optimizer, _data, check_range
from .schedules import Window, window_rcm

__all__ = ["AutoSGM", "LrCfg", "BetaCfg", "RcCfg", "WdCfg", "EpsCfg", "MixCfg"]


# ---------------------------------------------------------------------------- configuration records
class LrCfg(NamedTuple):
    """``lr_cfg``: the learning-rate algorithm."""
    aoptlr: bool = True         # iteration-dependent rate (moment estimator + numerator) or constant lr_init
    lr_init: float = 1e-2       # the constant rate (aoptlr=False) or the trust-region constant (aoptlr=True)
    num_lrc: int = 0            # numerator: 0 unity, 1 parcor, 2 parcor + Huber, 3 moment, 4 unity + Huber


class BetaCfg(NamedTuple):
    """``beta_cfg``: the filters."""
    beta_n: float = 0.9999      # pole of the numerator estimators' averages
    beta_a: float = 0.999       # pole of the moment estimator
    beta_i: float = 0.9         # pole of the gradient-smoothing filter
    gamma_i: float = 0.0        # its zero: 0 is heavy ball, beta_i/(1+beta_i) is Nesterov
    eta_i: float = 0.0          # its input gain (0: 1 - beta_i); also feeds the moment estimator
    debias: bool = True


class RcCfg(NamedTuple):
    """``rc_cfg``: the window (learning-rate schedule); see ``hyperopt.schedules``."""
    rcm: int = 0                # 0 flat, 1 cosine, 2 polynomial, 3 exponential, 4 simple-polynomial,
    inseq: int = 0              # 5 sigmoid, 6 late-sigmoid (names accepted); inseq 1: Kronecker order
    x: float = 0.0
    n: float = 2
    m: int = 1
    tau: int = 1000
    spe: int = 1
    cfact: int = 1
    e: float = 0.0


class WdCfg(NamedTuple):
    """``wd_cfg``: weight decay."""
    wd: float = 0.0
    wd_lvl: int = 0             # 0 coupled to the gradient, 1 decoupled (added to the normalised step)


class EpsCfg(NamedTuple):
    """``eps_cfg``."""
    eps: float = 1e-10


class MixCfg(NamedTuple):
    """``mix_cfg``: the matrix path for 2-D (and higher, reshaped) tensors."""
    mix: bool = False
    avg: bool = False           # average v v^T (and the numerator norms) with pole 1/2
    lr_init: float = 1e-2
    beta: float = 0.95          # pole of the matrix path's gradient filter
    gamma: float = 0.0          # its zero


_CONFIGS = {"lr_cfg": LrCfg, "beta_cfg": BetaCfg, "rc_cfg": RcCfg, "wd_cfg": WdCfg, "eps_cfg": EpsCfg,
            "mix_cfg": MixCfg}
_BUFFER_ORDER = ("g_sm", "g_var", "g_mag", "wsq", "pcor", "pcx", "upd")
_MIX_MIN, _MIX_MAX = 4, 2048          # the matrix path takes 2-D views with min dim >= 4, max dim <= 2048


def _config(cls, value, key):
    """A config record from a tuple/list (positional, trailing fields default), a dict or the record."""
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        unknown = set(value) - set(cls._fields)
        if unknown:
            raise ValueError(f"Invalid {key}: unknown field(s) {sorted(unknown)}; fields are {cls._fields}")
        return cls(**value)
    if isinstance(value, (tuple, list)):
        if len(value) > len(cls._fields):
            raise ValueError(f"Invalid {key}: {tuple(value)} has {len(value)} entries, expected at most "
                             f"{len(cls._fields)} {cls._fields}")
        return cls(*value)
    raise ValueError(f"Invalid {key}: {value!r} (expected a tuple, a dict or {cls.__name__})")


def _flag(value, label):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"Invalid {label}: {value!r} (expected True or False)")


def _choice(value, label, options):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value not in options:
        raise ValueError(f"Invalid {label}: {value!r} (expected one of {sorted(options)})")
    return int(value)


class AutoSGM(Optimizer):
    r"""AutoSGM: a first-order lowpass filter on the gradient and an iteration-dependent learning rate.

    Paper: O. A. Somefun et al., "AutoSGM: A Unified Lowpass Regularization Framework for
    Accelerated Learning", ICASSP 2024, https://openreview.net/forum?id=dHdzbKpPNc (overview:
    https://somefunagba.github.io/asgm.html).  Code followed (upstream): https://github.com/somefunAgba/autosgm
    (``asgm.py``).  Its windows (``rc_cfg``) are also usable alone as schedules: ``hyperopt.WindowLR``.

    Heavy ball, Nesterov's accelerated gradient and Adam are points of one design space: the gradient
    goes through a lowpass filter with pole ``beta_i`` and zero ``gamma_i`` (``gamma_i=0`` is Polyak's
    heavy ball, ``gamma_i = beta_i/(1+beta_i)`` Nesterov, anything up to ``beta_i`` in between), is
    normalised by a moment estimate (Adam's denominator) and scaled by a numerator (a constant, or an
    estimate of the partial correlation between weights and gradient), times a window ``W``.  As
    upstream, the filter's first output is ``h x`` (its zero's gain ``1/(1 - c)`` applies from step 2),
    so Nesterov's first step is a plain gradient step; from then on the updates are Nesterov's.

    .. code-block:: text

        per parameter with a gradient g, its own step t (epoch k = (t-1)//spe + 1), w = its weights:
            F[b, c, h](x):  a = h x ;  y = (s + a) / (1 if t == 1 else 1 - c) ;  s <- b (s + a) - c a
                            debiased: y <- y (1 - b) / (h (1 - b^t))          (s: the filter's state)
            if num_lrc == 4 (aoptlr): g <- sign(g) min(|g|, 4 mu),  mu = F[beta_a, 0, 1-beta_a](|g|)
            if wd_lvl == 0: g <- g + wd w
            v = F[beta_i, gamma_i, eta_i](g)                     eta_i = 0 means 1 - beta_i
            d = sqrt(F[beta_a, 0, eta_i]((g + eps)^2)) + eps      if aoptlr, else d = 1
            v <- v / d ;  if wd_lvl == 1: v <- v + (1 - beta_i)/(1 - gamma_i) wd w
            alpha = lr_init W(t)                                  aoptlr False, or num_lrc 0 and 4
            alpha = F[0.1, 0, 0.9](mean_over_tensor(e)) W(t)      num_lrc 1-3, e the estimator below
            w <- w - alpha v                                      (+ alpha v if maximize)
        numerator estimators (per element; F without debias; c = F[beta_n, 0, 1-beta_n](w^2)):
            1  e = min(|F[beta_n, 0, 1](lr_init w v)|, lr_init (c + 1))
            2  x = w v, x~ = sign(x) min(|x|, 4 F[beta_a, 0, 1-beta_a](|x|)),
               e = min(|F[beta_n, 0, 1](lr_init x~ / (c + 1))|, lr_init (c + 1))
            3  e = min(F[beta_n, 0, 1-beta_n](lr_init (g/d)^2), lr_init)

    Configuration (keyword-only; each can be overridden per parameter group and is read every step).
    Each ``*_cfg`` is a tuple in upstream's order (missing trailing entries take the defaults), a dict
    of field names, or the matching record, so these are the same::

        AutoSGM(ps, lr_cfg=(True, 1e-3, 2), rc_cfg=(1, 0, 0, 2, 1, 10, 500, 1, 0))
        AutoSGM(ps, lr_cfg=LrCfg(lr_init=1e-3, num_lrc=2),
                rc_cfg=RcCfg(rcm="cosine", tau=10, spe=500))
        AutoSGM(ps, lr_cfg=dict(lr_init=1e-3, num_lrc=2), rc_cfg=dict(rcm=1, tau=10, spe=500))

    * ``lr_cfg = (aoptlr, lr_init, num_lrc)`` (``LrCfg``): ``num_lrc`` 0 unity numerator (Adam-like),
      1 parcor, 2 parcor with a Huber prefilter, 3 moment estimator, 4 unity with a Huber gradient
      prefilter.  ``num_lrc`` only acts when ``aoptlr`` is true.
    * ``beta_cfg = (beta_n, beta_a, beta_i, gamma_i, eta_i, debias)`` (``BetaCfg``).
    * ``rc_cfg = (rcm, inseq, x, n, m, tau, spe, cfact, e)`` (``RcCfg``): the window, exactly
      ``hyperopt.schedules.Window`` (``rcm`` may be a name such as ``"cosine"``).
    * ``wd_cfg = (wd, wd_lvl)`` (``WdCfg``);  ``eps_cfg = (eps,)`` (``EpsCfg``).
    * ``mix_cfg = (mix, avg, lr_init, beta, gamma)`` (``MixCfg``): with ``mix``, tensors of rank >= 2
      whose 2-D view (first dimension x the rest, transposed to rows <= cols) has both sides in
      [4, 2048] take the matrix path: ``v = F[beta, gamma, 1, no debias](g)`` (decay coupled as
      above), ``v <- (v v^T + eps I)^(-1/2) v`` (``v v^T`` averaged with pole 1/2 if ``avg``; the
      inverse root by 5 steps of a cubic Newton-Schulz iteration on the Frobenius-normalised
      matrix), decoupled decay ``(1-beta)/(1-gamma) wd w``, and ``alpha = mix lr_init * W``, or for
      ``aoptlr`` with ``num_lrc`` 1/2 ``alpha = clip(|lr_init w v^T|_F, eps, clip(|lr_init w w^T|_F,
      eps, lr_init)) * W``.  **The matrix path runs on the host in NumPy, also with use_gpu=True**
      (its parameters are updated in place and left out of the device run).

    The element-wise path runs on the device with ``use_gpu=True``: one submit per step, with the
    per-tensor mean of the numerator estimate reduced on the device and the numerator's smoothing
    done by a control kernel (see ``hyperopt.kernels.autosgm``).  ``state_of(p)`` shows ``step``,
    ``window`` (the last ``W``), ``lr_num`` (the smoothed numerator's filter state) and the buffers.

    Differences from upstream (deliberate):

    * The optimizer updates the caller's array in place; there is no master copy (upstream
      overwrites the parameters with its shadow copy, losing edits made between steps).  As upstream
      does, elements with ``|w| < eps`` are nudged by ``+eps`` at a parameter's first step.  On the
      Vulkan backend each step uploads the parameters with the gradients, so edits are kept there too.
    * ``num_lrc=4`` applies the documented Huber prefilter (upstream's test for it never fires); its
      running mean magnitude is debiased with ``debias``.
    * The epoch advances every ``spe`` steps (upstream: every ``tau``), and the window is a function of
      each parameter's own step count (upstream keeps a per-tensor frame that drifts).
    * ``inseq=1`` gives the Kronecker ordering (the newest upstream ignores it).
    * The matrix path reshapes tensors of rank > 2 (upstream raises), and keeps the two norms of the
      numerator in separate averages (upstream shares one state for both).
    * ``step(closure)`` returns the closure's loss (upstream returns None).
    """

    def __init__(self, params, *, lr_cfg=(True, 1e-2, 0), beta_cfg=(0.9999, 0.999, 0.9, 0.0, 0.0, True),
                 rc_cfg=(0, 0, 0, 2, 1, 1000, 1, 1, 0), wd_cfg=(0.0, 0), eps_cfg=(1e-10,),
                 mix_cfg=(False, False, 1e-2, 0.95, 0.0), maximize=False, use_gpu="auto", device=None, comm=None):
        defaults = dict(lr_cfg=lr_cfg, beta_cfg=beta_cfg, rc_cfg=rc_cfg, wd_cfg=wd_cfg, eps_cfg=eps_cfg,
                        mix_cfg=mix_cfg, maximize=maximize)
        self._windows: dict[tuple, Window] = {}
        self._keep: set[str] = set()
        self._ctl = None
        self._ctl_ids: list[int] = []
        self._validate_group(defaults)
        super().__init__(params, defaults, use_gpu=use_gpu, device=device, comm=comm)

    # ------------------------------------------------------------------ configuration
    def _validate_group(self, group):
        for key, cls in _CONFIGS.items():
            group[key] = _config(cls, group[key], key)
        lr, beta, rc, wd, eps, mix = (group[k] for k in _CONFIGS)
        group["lr_cfg"] = lr = lr._replace(aoptlr=_flag(lr.aoptlr, "aoptlr"),
                                           num_lrc=_choice(lr.num_lrc, "num_lrc value", {0, 1, 2, 3, 4}))
        check_range("lr_init", lr.lr_init, 0, label="learning rate")
        for name in ("beta_n", "beta_a", "beta_i"):
            check_range(name, getattr(beta, name), 0, 1, high_open=True, label=f"{name} value")
        check_range("gamma_i", beta.gamma_i, label="gamma_i value")
        if beta.gamma_i > beta.beta_i:
            raise ValueError(f"Invalid gamma_i value: {beta.gamma_i} (the filter's zero must not exceed "
                             f"its pole beta_i={beta.beta_i})")
        check_range("eta_i", beta.eta_i, 0, 1, label="eta_i value")
        group["beta_cfg"] = beta._replace(debias=_flag(beta.debias, "debias"))
        group["rc_cfg"] = rc = rc._replace(rcm=window_rcm(rc.rcm))
        self._window(rc)                       # builds (and so validates) the window
        check_range("wd", wd.wd, 0, label="weight_decay value")
        group["wd_cfg"] = wd._replace(wd_lvl=_choice(wd.wd_lvl, "wd_lvl value", {0, 1}))
        check_range("eps", eps.eps, 0, label="epsilon value")
        group["mix_cfg"] = mix = mix._replace(mix=_flag(mix.mix, "mix"), avg=_flag(mix.avg, "avg"))
        check_range("mix lr_init", mix.lr_init, 0, label="mix learning rate")
        check_range("mix beta", mix.beta, 0, 1, high_open=True, label="mix beta value")
        check_range("mix gamma", mix.gamma, label="mix gamma value")
        if mix.gamma > mix.beta:
            raise ValueError(f"Invalid mix gamma value: {mix.gamma} (must not exceed mix beta={mix.beta})")
        group["maximize"] = _flag(group["maximize"], "maximize")

    def _window(self, rc) -> Window:
        w = self._windows.get(rc)
        if w is None:
            w = self._windows[rc] = Window.from_rc_cfg(rc)
        return w

    @staticmethod
    def _numerator(group) -> int:
        """The active numerator estimator (0 when aoptlr is off)."""
        lr = group["lr_cfg"]
        return lr.num_lrc if lr.aoptlr else 0

    @property
    def state_buffers(self):
        """The per-element buffers the groups' configurations need (the smoothed gradient at least)."""
        need = {"g_sm"} | self._keep
        for g in self.param_groups:
            nl = self._numerator(g)
            if g["lr_cfg"].aoptlr:
                need.add("g_var")
            need |= {4: {"g_mag"}, 1: {"wsq", "pcor", "upd"}, 2: {"wsq", "pcor", "pcx", "upd"},
                     3: {"pcor", "upd"}}.get(nl, set())
        return tuple(n for n in _BUFFER_ORDER if n in need)

    def _estimating(self) -> bool:
        return any(self._numerator(g) in (1, 2, 3) for g in self.param_groups)

    # ------------------------------------------------------------------ layout and programs
    def _rebind(self):
        old = (self._ctl.copy(), list(self._ctl_ids)) if self._ctl is not None else None
        super()._rebind()
        params = [_data(p) for p in self.params()]
        # the control array first: resizing it frees the backend's programs
        self._ctl = self._backend.ctl_array(CTL_STRIDE * len(params))
        self._ctl[:] = 0
        self._ctl_ids = [id(a) for a in params]
        if old is not None:
            where = {pid: j for j, pid in enumerate(old[1])}
            for i, pid in enumerate(self._ctl_ids):
                if pid in where:
                    j = where[pid]
                    self._ctl[CTL_STRIDE * i:CTL_STRIDE * (i + 1)] = old[0][CTL_STRIDE * j:CTL_STRIDE * (j + 1)]
        have = set(self._backend.buffers)
        name = lambda n: n if n in have else "g_sm"     # a buffer no parameter uses: never written
        front = ("param", "grad", "g_sm", name("g_var"), name("g_mag"))
        self._estimator = self._estimating()
        if self._estimator:
            self._program = self._backend.program([
                (autosgm_stats, front + (name("wsq"), name("pcor"), name("pcx"), "upd")),
                (autosgm_control, ()),
                (autosgm_apply, ("param", "upd"))])
            self._program.tables[2][:, 0] = CTL_STRIDE * np.arange(len(params)) + CTL_ALPHA
        else:
            self._program = self._backend.program([(autosgm_update, front)])
        self._layout = (self._backend.buffers, self._estimator)

    def _param_rebound(self, i, array):
        self._ctl_ids[i] = id(array)       # its control record follows it through later layouts

    def _sync_layout(self):
        """Rebuild buffers and program when the groups' settings now need a different layout."""
        if (self.state_buffers, self._estimating()) != self._layout:
            self._rebind()

    # ------------------------------------------------------------------ stepping
    def _step(self, grads):
        self._sync_layout()
        params = self.params()
        tables = self._program.tables
        if self._estimator:
            tables[1][:, 0] = 0                         # control: skip parameters without a gradient
        device = {}
        cache = {}
        steps, mixed = {}, {}
        for i, g in grads.items():
            gi = self._group_of[i]
            group = self.param_groups[gi]
            p = _data(params[i])
            st = self._param_state.get(i)
            t = 1 if st is None else st["step"] + 1
            window = self._window(group["rc_cfg"])(t)
            if not math.isfinite(window):
                raise FloatingPointError(f"AutoSGM: the window of parameter {i} at step {t} is not finite; step refused")
            steps[i] = (t, window)
            if self._takes_mix(group, p):
                # the host's matrix path: computed now on copies, written after the device's run
                if st is None:
                    p = p.copy()
                    self._nudge(p, group)
                mixed[i] = self._mix_step(p, g, group, dict(st or {}), t, window)
                continue
            device[i] = g
            key = (gi, t)
            if key not in cache:
                cache[key] = self._front_scalars(group, t)
            front = cache[key]
            lr = group["lr_cfg"]
            sign = 1.0 if group["maximize"] else -1.0
            alpha = sign * lr.lr_init * window
            if not self._estimator:
                tables[0][i] = front + (alpha,)
                continue
            nl = self._numerator(group)
            beta_n = group["beta_cfg"].beta_n
            tables[0][i] = front + (nl, lr.lr_init, beta_n, 1 - beta_n)
            tables[1][i] = (2 if nl in (1, 2, 3) else 1, window, p.size, alpha, sign)
        self._check_tables(self._program)
        nudged = []
        for i in grads:
            if i not in self._param_state:
                nudged += self._begin_state(i, _data(params[i]), self.param_groups[self._group_of[i]],
                                            nudge=i in device)
        if device:   # upload_params: edits to the arrays between steps are respected on the device too
            try:
                self._backend.run(self._program, device, upload_params=True)
            except BaseException:
                for p, small, old in nudged:     # a failed step leaves the caller's arrays as they were
                    p[small] = old
                raise
        for i, (new_p, new_st) in mixed.items():
            _data(params[i])[...] = new_p
            self._param_state[i] = new_st
        for i, (t, window) in steps.items():
            st = self._param_state.setdefault(i, {})
            st["step"], st["window"] = t, window

    @staticmethod
    def _front_scalars(group, t) -> tuple:
        """The front end's multipliers for step t, derived in double precision."""
        lr, beta, wd, eps = group["lr_cfg"], group["beta_cfg"], group["wd_cfg"], group["eps_cfg"]
        b_i, g_i, b_a = beta.beta_i, beta.gamma_i, beta.beta_a
        eta_i = beta.eta_i if beta.eta_i != 0 else 1 - b_i
        eta_a = beta.eta_i if beta.eta_i != 0 else 1 - b_a
        smooth = 1.0 if t == 1 else 1 / (1 - g_i)      # upstream leaves the zero's gain out at t=1
        moment = huber = 1.0
        if beta.debias:
            smooth *= ((1 - b_i) / eta_i) / (1 - math.pow(b_i, t))
            moment = ((1 - b_a) / eta_a) / (1 - math.pow(b_a, t))
            huber = 1 / (1 - math.pow(b_a, t))
        coupled = 1.0 if wd.wd_lvl == 0 else 0.0
        decoupled = (1 - b_i) / (1 - g_i) if wd.wd_lvl == 1 else 0.0
        use_huber = 1.0 if (lr.aoptlr and lr.num_lrc == 4) else 0.0
        return (wd.wd, coupled, decoupled, eta_i, b_i, g_i, smooth, float(lr.aoptlr), eta_a, b_a, moment,
                eps.eps, use_huber, 1 - b_a, huber)

    def _begin_state(self, i, p, group, nudge=True):
        """A parameter's first step: fresh buffers and control record, and upstream's nudge; returns
        what the nudge changed (``_nudge``), so that a step that fails can put it back."""
        for name in self._backend.buffers:              # state may remain from a load or an earlier layout
            self._backend.write(name, i, 0.0)
        self._ctl[CTL_STRIDE * i:CTL_STRIDE * (i + 1)] = 0
        return self._nudge(p, group) if nudge else []

    @staticmethod
    def _nudge(p, group):
        """Upstream's nudge, in place: values below eps in magnitude move eps up.  Returns
        ``[(p, mask, old values)]`` of what moved (empty when nothing did)."""
        eps = group["eps_cfg"].eps
        small = np.abs(p) < eps
        if not small.any():
            return []
        old = p[small]
        p[small] += p.dtype.type(eps)
        return [(p, small, old)]

    # ------------------------------------------------------------------ the matrix path (host)
    @staticmethod
    def _takes_mix(group, p) -> bool:
        if not group["mix_cfg"].mix or p.ndim < 2 or p.size == 0:
            return False
        rows, cols = p.shape[0], p.size // p.shape[0]
        return min(rows, cols) >= _MIX_MIN and max(rows, cols) <= _MIX_MAX

    def _mix_step(self, p, g, group, st, t, window):
        """The matrix path's step on a copy: returns (new parameter values, new state ``st``),
        refused when either is not finite."""
        lr, mix, wdc, eps = group["lr_cfg"], group["mix_cfg"], group["wd_cfg"], group["eps_cfg"].eps
        dt = p.dtype.type
        w = p.reshape(p.shape[0], -1)
        g = g.reshape(w.shape)
        flip = w.shape[0] > w.shape[1]
        if flip:                                        # work on the side with fewer rows
            w, g = w.T, g.T
        x = g + dt(wdc.wd) * w if wdc.wd_lvl == 0 else g.copy()
        s = st.get("mix_sm")
        s = st["mix_sm"] = np.zeros_like(x) if s is None or s.shape != x.shape else s.copy()
        s += x                                           # F[beta, gamma, 1]: the transposed form
        v = s / dt(1.0 if t == 1 else 1 - mix.gamma)
        s *= dt(mix.beta)
        s -= dt(mix.gamma) * x
        m = v @ v.T
        if mix.avg:
            m = self._average(st, "mix_M", m)
        v = _inv_sqrt(m, eps) @ v
        if wdc.wd_lvl == 1:
            v += dt((1 - mix.beta) / (1 - mix.gamma) * wdc.wd) * w
        if lr.aoptlr and lr.num_lrc in (1, 2):
            c = lr.lr_init * float(np.linalg.norm(w @ v.T))
            cw = lr.lr_init * float(np.linalg.norm(w @ w.T))
            if mix.avg:
                c, cw = self._average(st, "mix_c", c), self._average(st, "mix_cw", cw)
            alpha = min(max(c, eps), min(max(cw, eps), lr.lr_init)) * window
        else:
            alpha = mix.lr_init * window
        step = dt(alpha if group["maximize"] else -alpha) * v
        new = (w + step).T.reshape(p.shape) if flip else (w + step).reshape(p.shape)
        if not (np.isfinite(new).all() and np.isfinite(s).all()
                and all(np.isfinite(v).all() for k, v in st.items() if k.startswith("mix_"))):
            raise FloatingPointError("AutoSGM: the matrix path's step is not finite; step refused")
        return new, st

    @staticmethod
    def _average(st, key, value):
        """F[1/2, 0, 1/2] on a host value: y = s + value/2, s <- y/2."""
        y = st.get(key, 0.0) + 0.5 * value
        st[key] = 0.5 * y
        return y

    # ------------------------------------------------------------------ state
    def state_of(self, p) -> dict:
        """Everything kept for parameter ``p`` (index or array), with the per-tensor controller values."""
        out = super().state_of(p)
        i = p if isinstance(p, int) else self._index[id(p)]
        if i in self._param_state:
            out["lr_num"] = float(self._ctl[CTL_STRIDE * i + CTL_LR_NUM])
        return out

    _state_kinds = {"step": "count", "window": "real", "lr_num": "real", "mix_sm": "array", "mix_M": "array",
                    "mix_c": "nonneg", "mix_cw": "nonneg"}
    _buffer_kinds = {"g_sm": "elements", "g_var": "nonneg elements", "g_mag": "nonneg elements",
                     "wsq": "nonneg elements", "pcor": "elements", "pcx": "elements", "upd": "elements"}

    def _check_state_dict(self, sd):
        sd = super()._check_state_dict(sd)
        params = self.params()
        for i, entry in sd["state"].items():
            p = _data(params[i])
            if not any(k.startswith("mix_") for k in entry):
                continue
            if p.ndim < 2 or p.size == 0:
                raise ValueError(f"state of parameter {i} has matrix-path entries, but the parameter has shape {p.shape}")
            rows, cols = sorted((p.shape[0], p.size // p.shape[0]))   # the side with fewer rows, as _mix_step
            for key, shape in (("mix_sm", (rows, cols)), ("mix_M", (rows, rows))):
                if key in entry and entry[key].shape != shape:
                    raise ValueError(f"state '{key}' of parameter {i} has shape {entry[key].shape}, expected {shape}")
        return sd

    def _load_state(self, state_dict: dict) -> None:
        # make room for every buffer the dict carries before the base class writes them
        carried = {k for entry in state_dict["state"].values() for k in entry if k in _BUFFER_ORDER}
        self._keep = carried
        try:
            self._sync_layout()
            super()._load_state(state_dict)
        finally:
            self._keep = set()
        for group in self.param_groups:
            self._validate_group(group)
        for i, st in self._param_state.items():
            self._ctl[CTL_STRIDE * i:CTL_STRIDE * (i + 1)] = 0
            self._ctl[CTL_STRIDE * i + CTL_LR_NUM] = st.pop("lr_num", 0.0)
        self._sync_layout()


def _inv_sqrt(m, eps, steps=5):
    """``(m + eps I)^(-1/2)`` for a symmetric positive semi-definite ``m``: the matrix is scaled by its
    Frobenius norm (eigenvalues in (0, 1]), then ``steps`` rounds of the cubic coupled iteration
    ``P = (15 I - 10 Y + 3 Y^2)/8,  X <- X P,  Y <- Y P^2`` (X -> Y0^(-1/2), Y -> I)."""
    n = m.shape[0]
    eye = np.eye(n, dtype=m.dtype)
    a = m + m.dtype.type(eps) * eye
    norm = float(np.linalg.norm(a))
    if norm == 0.0 or not math.isfinite(norm):
        return eye
    y = a / m.dtype.type(norm)
    x = eye
    for _ in range(steps):
        p = (15 * eye - 10 * y + 3 * (y @ y)) / 8
        x = x @ p
        y = y @ p @ p
    return x / m.dtype.type(math.sqrt(norm))
