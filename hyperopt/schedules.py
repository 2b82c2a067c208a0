"""Window functions: AutoSGM's learning-rate windows, usable as schedules by any optimizer.

A window maps the (1-based) step ``t`` of a training run to a factor in ``[x, 1]`` (``rcm=6`` can leave
that range, see below).  ``Window`` is the pure function; ``WindowLR`` is a torch-style scheduler that
writes ``group['lr'] = initial_lr * W(t)`` into every parameter group of an optimizer.

Parameters (AutoSGM's ``rc_cfg = (rcm, inseq, x, n, m, tau, spe, cfact, e)``)
---------------------------------------------------------------------------
``rcm``    the shape, an int or a name: 0 ``"flat"`` (always 1), 1 ``"cosine"`` (raised cosine),
           2 ``"polynomial"``, 3 ``"exponential"``, 4 ``"simple-polynomial"``, 5 ``"sigmoid"``
           (logistic, inflection at the middle), 6 ``"late-sigmoid"`` (logistic, inflection at 7/8).
``inseq``  input sequence: 0 uniform (the steps in order), 1 Kronecker (the shape sampled at the
           golden-ratio sequence ``frac(j*phi)``, sorted, served largest first).
``x``      floor, as a fraction of the peak: the window runs from 1 down to ``x``.
``n``      the shape's parameter: the order (1, 2, 4), the base (3, ``0 < n``, ``n != 1``) or the
           logistic rate (5, 6).
``m``      1: half window (flat top, then anneal); 0: full window (warm-up, flat top, anneal).
``tau``    number of epochs; ``spe`` steps per epoch.
``cfact``  the window's unit: 0 epochs (length ``tau``), 1 steps (length ``tau*spe``), 2 steps within
           each epoch (length ``spe``, restarting every epoch), ``> 2`` steps with ``cfact`` sub-shapes
           stacked inside one window of length ``tau*spe``.
``e``      flat-top fraction of the window, ``0 <= e <= 1``.

The maths (uniform sequence).  With ``L`` the length and ``u`` the step (or epoch, for ``cfact=0``;
the epoch is ``k = (t-1)//spe + 1``):

.. code-block:: text

    tc = (u - 1) mod L                  periodic: a new window frame starts every L units
    f  = tc / L ;  f = |2f - 1| if full ;  if f < e: W = 1        (flat top)
    f  = (f - e) / (1 - e)
    i  = max(1, ceil(M f)),  r = M f - i + 1      (M sub-shapes; M = cfact if cfact > 2 else 1)
    y  = (M - i + z(r)) / M                      with
        rcm 1: z = cos(pi r / 2)^n                (n=2, m=1, x=0: standard cosine annealing)
        rcm 2: y = (1 - f)^n                      (M ignored; n=1: linear decay)
        rcm 3: z = (n^r - n) / (1 - n)
        rcm 4: z = (1 - r^n)^2
        rcm 5: y = (S(f) - S(1)) / (S(0) - S(1)),  S(f) = sum_j 1/(1 + 2^(2 M n (f - (j+1/2)/M)))
        rcm 6: z = (s(r) - s_min) / (s_max - s_min),  s(r) = 1/(1 + 2^(2 n (r - 7/8))),
               s_max = 1/(1 + 2^-n), s_min = 1/(1 + 2^n)   (not renormalised: z(0) > 1 > z(1) > 0)
    W = y (1 - x) + x

Kronecker sequence (``inseq=1``), per frame: ``gen`` shape values ``y(frac(j phi))``, ``phi = (sqrt 5 - 1)/2``,
sorted ascending, then the flat top (``cove`` ones) appended, and for full windows the whole list
appended again in descending order; step ``tc`` of the frame takes element ``-1 - tc`` (so: warm-up,
flat top, anneal).  ``cove = int(e L / b)``, ``gen = int(L / b - cove)`` with ``b = 2`` for full windows,
else 1, and one more flat-top point if ``b (gen + cove) < L``; ``rcm=2`` samples ``L`` points instead of
``gen``.  The frame list is built once (``L`` floats), so ``L`` is capped at 2**24 there.

Notes on upstream: the window is a pure function of the step here (upstream keeps a frame offset
per tensor, which in epoch units yields values past the end of the shape from the second frame on,
and falls out of sync for a tensor that misses a step); the epoch advances every ``spe`` steps
(upstream: every ``tau``); upstream's newest version ignores ``inseq``.
"""
from __future__ import annotations

import math
import numbers
from types import SimpleNamespace

import numpy as np

from .lr_scheduler import get_group_lr, set_group_lr

__all__ = ["WINDOW_NAMES", "Window", "WindowLR", "window_rcm"]

WINDOW_NAMES = {"flat": 0, "cosine": 1, "polynomial": 2, "exponential": 3, "simple-polynomial": 4,
                "sigmoid": 5, "late-sigmoid": 6}
_PHI = 0.5 * (math.sqrt(5.0) - 1.0)
_KRONECKER_MAX = 1 << 24

# The same shape code runs on Python floats (exact, fast for one value) and on NumPy arrays.
_SCALAR = SimpleNamespace(cos=math.cos, ceil=math.ceil, maximum=max)
_ARRAY = SimpleNamespace(cos=np.cos, ceil=np.ceil, maximum=np.maximum)


def window_rcm(rcm) -> int:
    """The window number for an int or a name from ``WINDOW_NAMES``."""
    if isinstance(rcm, str):
        key = rcm.strip().lower().replace("_", "-")
        if key not in WINDOW_NAMES:
            raise ValueError(f"Invalid window: {rcm!r} (expected one of {sorted(WINDOW_NAMES)} or 0-6)")
        return WINDOW_NAMES[key]
    if isinstance(rcm, bool) or not isinstance(rcm, numbers.Integral) or not 0 <= int(rcm) <= 6:
        raise ValueError(f"Invalid window: {rcm!r} (expected 0-6 or one of {sorted(WINDOW_NAMES)})")
    return int(rcm)


def _shape(rcm, f, n, M, xp):
    """The window shape y(f) in [0, 1] (before the floor ``x``), for f in [0, 1]."""
    if rcm == 2:
        return (1 - f) ** n
    if rcm == 5:
        a = 2 * M * n
        fs = 1 / M
        y = y_min = y_max = 0
        for j in range(M):
            d = fs * (j + 0.5)
            y_max += 1 / (1 + 2 ** (a * (-d)))
            y_min += 1 / (1 + 2 ** (a * (1 - d)))
            y = y + 1 / (1 + 2 ** (a * (f - d)))
        y_min *= fs
        y_max *= fs
        dy = y_max - y_min
        return y * (fs / dy) - y_min / dy
    i = xp.maximum(1, xp.ceil(f * M))
    r = M * f - i + 1
    if rcm == 1:
        z = xp.cos(0.5 * math.pi * r) ** n
    elif rcm == 3:
        z = (n ** r - n) / (1 - n)
    elif rcm == 4:
        z = (1 - r ** n) ** 2
    else:  # 6
        s_max = 1 / (1 + 2 ** (-n))
        s_min = 1 / (1 + 2 ** n)
        z = (1 / (1 + 2 ** (2 * n * (r - 0.875))) - s_min) / (s_max - s_min)
    return (M - i + z) / M


class Window:
    """One window function ``W(t)``; see the module docstring for the maths.

    ``Window(rcm=1, n=2, tau=1, spe=1000)`` is cosine annealing over 1000 steps.
    ``Window.from_rc_cfg(rc_cfg)`` reads AutoSGM's 9-tuple ``(rcm, inseq, x, n, m, tau, spe, cfact, e)``.
    ``w(t)`` is the value at the 1-based step ``t`` (``w(t, k)`` passes the epoch explicitly);
    ``w.values(t_array)`` evaluates many steps at once.
    """

    def __init__(self, rcm=1, *, inseq=0, x=0.0, n=2, m=1, tau=1, spe=1, cfact=1, e=0.0):
        rcm = window_rcm(rcm)
        if inseq not in (0, 1) or isinstance(inseq, float) and not float(inseq).is_integer():
            raise ValueError(f"Invalid input sequence inseq: {inseq} (expected 0 or 1)")
        _check(x, "window floor x", 0, 1)
        _check(e, "flat-top fraction e", 0, 1)
        if m not in (0, 1):
            raise ValueError(f"Invalid window mode m: {m} (expected 1 for half or 0 for full)")
        for name, value in (("tau", tau), ("spe", spe)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 1 or value != int(value):
                raise ValueError(f"Invalid {name}: {value} (expected an integer >= 1)")
        if isinstance(cfact, bool) or not isinstance(cfact, numbers.Real) or cfact < 0 or cfact != int(cfact):
            raise ValueError(f"Invalid window unit cfact: {cfact} (expected an integer >= 0)")
        _check(n, "window shape n", 0, low_open=True)
        if rcm == 3 and n == 1:
            raise ValueError("Invalid window shape n: 1 (the exponential window needs n != 1)")
        self.rcm, self.inseq, self.x, self.n, self.m = rcm, int(inseq), float(x), n, int(m)
        self.tau, self.spe, self.cfact, self.e = int(tau), int(spe), int(cfact), float(e)
        self.full = self.m == 0
        self.M = self.cfact if self.cfact > 2 else 1
        if self.cfact == 0:
            self.length = self.tau
        elif self.cfact == 2:
            self.length = self.spe
        else:
            self.length = self.tau * self.spe
        if rcm != 0:
            if self.tau * self.spe < 2:
                raise ValueError(f"Invalid window length: tau*spe = {self.tau * self.spe} (expected at least 2)")
            if self.cfact == 0 and self.tau < 2:
                raise ValueError(f"Invalid tau: {tau} (a window in epoch units, cfact=0, needs tau >= 2)")
            if self.length < 2:
                raise ValueError(f"Invalid window length: {self.length} (expected at least 2)")
            if self.inseq == 1 and self.length > _KRONECKER_MAX:
                raise ValueError(f"Invalid window length for the Kronecker sequence: {self.length} "
                                 f"(at most {_KRONECKER_MAX})")
        self._frame = None       # Kronecker frame values, built on first use
        self._last = (None, 1.0)

    @classmethod
    def from_rc_cfg(cls, rc_cfg) -> "Window":
        """The window of AutoSGM's 9-tuple ``(rcm, inseq, x, n, m, tau, spe, cfact, e)``."""
        rcm, inseq, x, n, m, tau, spe, cfact, e = rc_cfg
        return cls(rcm, inseq=inseq, x=x, n=n, m=m, tau=tau, spe=spe, cfact=cfact, e=e)

    @property
    def rc_cfg(self) -> tuple:
        """This window as AutoSGM's 9-tuple ``(rcm, inseq, x, n, m, tau, spe, cfact, e)``."""
        return (self.rcm, self.inseq, self.x, self.n, self.m, self.tau, self.spe, self.cfact, self.e)

    def __repr__(self):
        return ("Window(rcm={}, inseq={}, x={}, n={}, m={}, tau={}, spe={}, cfact={}, e={})"
                .format(*self.rc_cfg))

    def epoch(self, t: int) -> int:
        """The 1-based epoch of the 1-based step ``t``: it advances every ``spe`` steps."""
        return (int(t) - 1) // self.spe + 1

    def __call__(self, t, k=None) -> float:
        if self.rcm == 0:
            return 1.0
        t = int(t)
        if t < 1:
            raise ValueError(f"window steps are 1-based, got t={t}")
        k = self.epoch(t) if k is None else int(k)
        u = k if self.cfact == 0 else t
        if self._last[0] == u:
            return self._last[1]
        tc = (u - 1) % self.length
        y = self._kronecker()[-1 - tc] if self.inseq == 1 else self._uniform(tc)
        self._last = (u, y)
        return y

    def values(self, steps) -> np.ndarray:
        """``W`` at each of the given 1-based steps (float64)."""
        return np.array([self(t) for t in np.asarray(steps).ravel()], np.float64).reshape(np.shape(steps))

    def shape(self, f):
        """The scaled shape ``y(f) (1 - x) + x`` at window fractions ``f`` in [0, 1] (no flat top)."""
        if self.rcm == 0:
            return np.ones_like(np.asarray(f, np.float64))
        f = np.asarray(f, np.float64)
        return _shape(self.rcm, f, self.n, self.M, _ARRAY) * (1 - self.x) + self.x

    # ------------------------------------------------------------------ the two sequences
    def _uniform(self, tc: int) -> float:
        # The order of operations is upstream's: the flat-top test compares the rounded |2f - 1|.
        f = tc / self.length
        if self.full:
            f = 2 * f - 1
        f = abs(f)
        if f < self.e or self.e == 1:
            return 1.0
        f = (f - self.e) / (1 - self.e)
        y = _shape(self.rcm, f, self.n, self.M, _SCALAR)
        y *= 1 - self.x
        y += self.x
        return float(y)

    def _kronecker(self) -> list:
        if self._frame is None:
            L = self.length
            b = 2 if self.full else 1
            cove = int(self.e * (L / b))
            gen = int(L / b - cove)
            if b * (gen + cove) < L:
                cove += 1
            count = L if self.rcm == 2 else gen
            f = (_PHI * np.arange(count, dtype=np.float64)) % 1.0
            y = np.sort(_shape(self.rcm, f, self.n, self.M, _ARRAY) * (1 - self.x) + self.x).tolist()
            y.extend([1.0] * cove)
            if self.full:
                y.extend(sorted(y, reverse=True))
            self._frame = y
        return self._frame


def _check(value, label, low=None, high=None, *, low_open=False):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        raise ValueError(f"Invalid {label}: {value}")


class WindowLR:
    """A learning-rate schedule from a window: ``lr = initial_lr * W(t)`` for every parameter group.

    .. code-block:: python

        opt = AdamW(params, lr=1e-3)
        sched = WindowLR(opt, "cosine", tau=1, spe=1000)       # or WindowLR(opt, Window(...))
        for batch in data:
            opt.step(gradients=...)
            sched.step()

    torch convention: constructing the scheduler sets the rate of the first step (``W(1)``), and each
    ``step()`` after an optimizer step moves to the next one.  ``initial_lr`` is kept in each group
    (as torch does) so that several schedulers or a reload start from the same base.  An optimizer
    whose groups have no ``lr`` but an AutoSGM ``lr_cfg`` gets its ``lr_init`` field scheduled
    instead (AutoSGM also has its own per-parameter window in ``rc_cfg``); HL, which has no learning
    rate, is refused with a TypeError.

    After its length (``window.length`` units: epochs for ``cfact=0``, else steps) a window
    *restarts*: AutoSGM's windows are periodic, so step ``length + 1`` is at the peak again, a warm
    restart like ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`` (``T_mult=1``), not like
    ``CosineAnnealingLR``, which climbs back along the cosine.  ``restart=False`` holds the
    window's last value instead (one anneal, then the floor); ``hyperopt.CosineAnnealingLR`` is
    torch's schedule exactly.
    """

    def __init__(self, optimizer, window=1, *, last_step: int = 0, restart: bool = True, **window_kwargs):
        self.optimizer = optimizer
        if isinstance(window, Window):
            if window_kwargs:
                raise TypeError("pass either a Window or the window's parameters, not both")
            self.window = window
        else:
            self.window = Window(window, **window_kwargs)
        if not isinstance(restart, bool):
            raise TypeError(f"restart must be True or False, got {restart!r}")
        self.restart = restart
        lrs = [get_group_lr(optimizer, group) for group in optimizer.param_groups]   # all checked first
        for group, lr in zip(optimizer.param_groups, lrs):
            group.setdefault("initial_lr", lr)
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_step = int(last_step)
        self._apply()

    @property
    def length_steps(self) -> int:
        """The window's length in steps (``length * spe`` for a window in epochs)."""
        w = self.window
        return w.length * w.spe if w.cfact == 0 else w.length

    def step(self) -> None:
        """Move to the next step's rate; call it after ``optimizer.step()``."""
        self.last_step += 1
        self._apply()

    def _apply(self):
        t = self.last_step + 1
        if not self.restart:
            t = min(t, self.length_steps)
        factor = self.window(t)
        self._last_lr = []
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            set_group_lr(group, base * factor)
            self._last_lr.append(base * factor)

    def get_last_lr(self) -> list:
        """The rates written by the last ``step()`` (or the constructor), one per parameter group."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """``{"last_step", "base_lrs", "rc_cfg", "restart"}``: plain values."""
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs), "rc_cfg": self.window.rc_cfg,
                "restart": self.restart}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` and write the rate of the restored step."""
        self.window = Window.from_rc_cfg(state["rc_cfg"])
        self.base_lrs = list(state["base_lrs"])
        self.last_step = int(state["last_step"])
        self.restart = bool(state.get("restart", True))
        self._apply()
