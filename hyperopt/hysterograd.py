"""HysteroGrad: a diagonal natural-gradient step gated by a hysteresis barrier that stiffens with use."""
from __future__ import annotations

import numpy as np

from .kernels.hysterograd import (CTL_BARRIER, CTL_CLIP, CTL_ENERGY, CTL_LIQUID, CTL_NORM, CTL_STARTED,
                                  CTL_STRIDE, CTL_TAU, CTL_TEMP, hysteresis_control, hysteresis_gate,
                                  natural_gradient)
from .optimizer import Optimizer, check_flag, check_range
from .state_checks import check_real

_SHOCK_MIN_TEMP = np.float32(0.2)


class HIOptimizer(Optimizer):
    r"""HysteroGrad's hysteretic information-geometric optimizer.

    Source: HysteroGrad, https://github.com/dingste/HysteroGrad (``hysterograd/optimizer.py``; the
    repository's documents give the theory, there is no paper).  That repository is the upstream
    code this class follows.  The step is a diagonal natural-gradient step (an EMA of g^2 as the metric) that is
    taken only while the preconditioned gradient norm clears a hysteresis barrier ("Liquid");
    below it the group is "Frozen" and does not move.  The barrier grows with the information path
    length tau (stiffening) and is cooled by a temperature.  Working settings: ``lr=0.01,
    stiffening_factor=0.05`` (upstream's Moons example): two moons 99.7 % test accuracy, digits MLP
    96.7 %, Liquid on ~65-70 % of the steps (benchmarks/hysterograd_moons.py, benchmarks/mechanisms.py).

    .. code-block:: text

        per group (beta, eps, s_m = metric_scale, kappa = stiffening_factor, eta = lr, q = metric_power),
        skipped entirely when none of its parameters has a gradient:
            for each p with gradient g:   G <- beta*G + (1-beta)*s_m*g*g          (G starts at 0)
                                          c_p <- g / (G^q + eps)                   (q = 0.5: g/(sqrt(G)+eps))
            n     <- sqrt(sum_p sum_i c_p,i^2)                                     (L2 over the group)
            k     <- min(1, grad_clip / (n + 1e-6)) if grad_clip else 1;   n_eff <- k*n
            tau   <- tau + eta*n_eff;   T <- T*cooling_rate;   E <- beta*E + (1-beta)*n_eff
            h     <- kappa * sqrt(tau) * (1 - clamp(T, 0, 1)) * hysteresis_scale
            h     <- h * (E + 1e-8)                                                 if adaptive_threshold
            Liquid if n_eff > a*h  (a = low if the group was Liquid, high if Frozen; both 1 by default)
            Liquid: p <- p - eta*k*c_p for every p with a gradient;  Frozen: p unchanged

        tau = 0, T = initial_temp, E = 0 are set for every group on the first step after it appears.
        step() returns (status, mean n_eff, mean h): "Liquid" if any group stepping this time is
        Liquid, else "Frozen"; the means are over the groups that had gradients.
        shock(factor): tau <- factor*tau and T <- max(T, 0.2) in every started group.

    Everything runs in float32 (upstream keeps tau, T and E in float32 tensors).  On the Vulkan
    backend a step is one submit: the group logic runs on the device in a control kernel, and the
    host only reads the small control array back.  Every hyperparameter can be overridden per
    parameter group (layer-specific hysteresis) and is read at each step.  ``diagnostics()`` gives
    each group's tau, T, E, n_eff, h, k and status after a step.

    Differences from upstream, on purpose:

    * tau, T and E belong to the parameter group (upstream keeps them in the state of the group's
      first parameter) and survive ``state_dict`` round trips.
    * The returned means average over the groups that had gradients (upstream divides by all groups).
    * ``step(closure)`` keeps the closure's loss in ``last_loss`` (upstream drops it).
    * ``metric_power`` (default 0.5 = upstream's ``g/sqrt(G)``; 1.0 gives the diagonal natural
      gradient ``G^-1 g`` that the README writes).
    * ``schmitt=(low, high)``: a true two-threshold trigger (the README's claim; upstream compares
      with one threshold, ``schmitt=None`` = ``(1, 1)``).  A Liquid group freezes once
      ``n_eff <= low*h``; a Frozen group thaws once ``n_eff > high*h``.  tau still grows while a
      group is Frozen, so the barrier keeps rising; ``shock()`` is the way out of a long freeze.
      ``shock()`` also marks the groups Liquid, which only matters with a Schmitt band.
    """

    state_buffers = ("metric",)
    _state_kinds: dict = {}
    _required_state = ()
    _buffer_kinds = {"metric": "nonneg elements"}

    _host_reads_gradients = False

    def __init__(self, params, lr=1e-3, stiffening_factor=0.01, beta=0.99, epsilon=1e-7, cooling_rate=0.99,
                 initial_temp=1.0, metric_scale=1.0, adaptive_threshold=True, grad_clip=None,
                 hysteresis_scale=1.0, *, metric_power=0.5, schmitt=None, use_gpu="auto", device=None, comm=None):
        defaults = dict(lr=lr, stiffening_factor=stiffening_factor, beta=beta, epsilon=epsilon,
                        cooling_rate=cooling_rate, initial_temp=initial_temp, metric_scale=metric_scale,
                        adaptive_threshold=adaptive_threshold, grad_clip=grad_clip,
                        hysteresis_scale=hysteresis_scale, metric_power=metric_power, schmitt=schmitt)
        self._validate_group(defaults)
        self.last_loss = None
        self._result = ("Frozen", 0.0, 0.0)
        super().__init__(params, defaults, use_gpu=use_gpu, device=device, comm=comm)

    def _validate_group(self, group):
        check_range("lr", group["lr"], 0, label="learning rate")
        check_range("stiffening_factor", group["stiffening_factor"], 0, label="stiffening factor")
        check_range("beta", group["beta"], 0, 1, high_open=True, label="beta value")
        # > 0: with epsilon = 0 a zero gradient on a zero metric is 0/0, a NaN the step would store
        check_range("epsilon", group["epsilon"], 0, low_open=True, label="epsilon value")
        check_range("cooling_rate", group["cooling_rate"], 0, label="cooling rate")
        check_range("initial_temp", group["initial_temp"], 0, label="initial temperature")
        check_range("metric_scale", group["metric_scale"], 0, low_open=True, label="metric scale")
        check_flag("adaptive_threshold", group["adaptive_threshold"])
        if group["grad_clip"] is not None:
            check_range("grad_clip", group["grad_clip"], 0, label="grad_clip value")
        check_range("hysteresis_scale", group["hysteresis_scale"], 0, label="hysteresis scale")
        check_range("metric_power", group["metric_power"], 0, low_open=True, label="metric power")
        schmitt = group["schmitt"]
        if schmitt is not None:
            if not (isinstance(schmitt, (tuple, list)) and len(schmitt) == 2):
                raise ValueError(f"Invalid schmitt thresholds: {schmitt} (expected a pair (low, high))")
            check_range("schmitt", schmitt[0], 0, label="schmitt low threshold")
            check_range("schmitt", schmitt[1], schmitt[0], label="schmitt high threshold")

    # ------------------------------------------------------------------ layout
    def _rebind(self):
        # Keep the groups' records: the control array is reallocated when the group count changes,
        # so copy it out before anything frees it.
        old = getattr(self, "_records", None)
        saved = None if old is None else old.copy()
        super()._rebind()
        self._records = self._backend.ctl_array(len(self.param_groups) * CTL_STRIDE).reshape(-1, CTL_STRIDE)
        self._records[:] = 0
        if saved is not None:
            self._records[: len(saved)] = saved
        # The programs come after ctl_array: a new control buffer invalidates older programs.
        self._program = self._backend.program([
            (natural_gradient, ("grad", "metric")),
            (hysteresis_control, ()),
            (hysteresis_gate, ("param", "grad", "metric")),
        ])
        bounds = np.cumsum([0] + [len(g["params"]) for g in self.param_groups])
        self._segments = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))

    # ------------------------------------------------------------------ stepping
    def step(self, closure=None, gradients=None):
        """One step; returns ``(status, grad_norm, h_width)`` over the groups that had a gradient:
        ``status`` "Liquid" if any of them moved, else "Frozen"; the preconditioned gradient norm
        and the hysteresis barrier, averaged over them (``("Frozen", 0.0, 0.0)`` when none had one).
        ``gradients`` takes the forms of ``Optimizer.step``; the closure's loss is kept in
        ``last_loss``; ``diagnostics()`` gives the per-group values."""
        self.last_loss = super().step(closure, gradients)
        return self._result

    def _step(self, grads):
        records = self._records
        before = records.copy()       # the groups' records change on the device: restored on failure
        try:
            self._run_step(grads)
        except BaseException:
            records[:] = before
            raise

    def _run_step(self, grads):
        records = self._records
        for gi, group in enumerate(self.param_groups):
            if not records[gi, CTL_STARTED]:
                records[gi] = 0
                records[gi, CTL_TEMP] = group["initial_temp"]
                records[gi, CTL_LIQUID] = 1
                records[gi, CTL_STARTED] = 1
        active = sorted({self._group_of[i] for i in grads})
        if not active:
            self._result = ("Frozen", 0.0, 0.0)
            return
        for i in grads:
            if i not in self._param_state:
                self._backend.clear(i)   # state may remain from a load or an earlier layout
        nat, control, gate = self._program.tables
        for gi, group in enumerate(self.param_groups):
            beta = group["beta"]
            low, high = group["schmitt"] if group["schmitt"] is not None else (1.0, 1.0)
            control[gi] = (*self._segments[gi], gi in active, group["lr"], group["grad_clip"] or 0.0,
                           group["cooling_rate"], beta, 1 - beta, group["stiffening_factor"],
                           group["hysteresis_scale"], bool(group["adaptive_threshold"]), low, high)
        for i in grads:
            gi = self._group_of[i]
            group = self.param_groups[gi]
            nat[i] = (group["beta"], (1 - group["beta"]) * group["metric_scale"], group["epsilon"],
                      group["metric_power"])
            gate[i] = (group["lr"], group["epsilon"], group["metric_power"], gi * CTL_STRIDE)
        self._run(self._program, grads, upload_params=True)
        for i in grads:
            self._param_state.setdefault(i, {})
        rows = records[active]
        liquid = bool(rows[:, CTL_LIQUID].any())
        self._result = ("Liquid" if liquid else "Frozen",
                        sum(float(v) for v in rows[:, CTL_NORM]) / len(active),
                        sum(float(v) for v in rows[:, CTL_BARRIER]) / len(active))

    def shock(self, factor=0.5):
        """Geometric shock: ``tau <- factor*tau`` and ``T <- max(T, 0.2)`` in every started group,
        which lowers the barrier and lets frozen groups move again."""
        self._check_open()
        check_range("factor", factor, 0, label="shock factor")
        for rec in self._records:
            if rec[CTL_STARTED]:
                rec[CTL_TAU] = rec[CTL_TAU] * np.float32(factor)
                rec[CTL_TEMP] = max(rec[CTL_TEMP], _SHOCK_MIN_TEMP)
                rec[CTL_LIQUID] = 1

    # ------------------------------------------------------------------ diagnostics and state
    def diagnostics(self) -> list[dict]:
        """Per group, as of its last step: ``tau``, ``temperature``, ``energy``, ``norm`` (n_eff),
        ``barrier`` (h), ``clip_factor`` (k) and ``status`` ("Liquid"/"Frozen"; None before the
        optimizer's first step, "Liquid" until the group's first decision)."""
        self._check_open()
        out = []
        for gi, rec in enumerate(self._records):
            started = bool(rec[CTL_STARTED])
            out.append({
                "tau": float(rec[CTL_TAU]),
                "temperature": float(rec[CTL_TEMP]) if started else float(self.param_groups[gi]["initial_temp"]),
                "energy": float(rec[CTL_ENERGY]),
                "norm": float(rec[CTL_NORM]),
                "barrier": float(rec[CTL_BARRIER]),
                "clip_factor": float(rec[CTL_CLIP]) if started else 1.0,
                "status": ("Liquid" if rec[CTL_LIQUID] else "Frozen") if started else None,
            })
        return out

    _EXTRA = (("tau", CTL_TAU), ("temp", CTL_TEMP), ("avg_energy", CTL_ENERGY), ("norm", CTL_NORM),
              ("barrier", CTL_BARRIER), ("clip_factor", CTL_CLIP), ("liquid", CTL_LIQUID))

    def _group_extra(self):
        return [{key: float(rec[col]) for key, col in self._EXTRA} if rec[CTL_STARTED] else {}
                for rec in self._records]

    #: group records that cannot be negative (tau and T grow from 0 and cool towards 0, the rest are norms)
    _NONNEG_EXTRA = ("tau", "temp", "avg_energy", "norm", "barrier", "clip_factor")

    def _group_extra_kinds(self):
        return tuple(key for key, _ in self._EXTRA)

    def _check_group_extra(self, gi, entry):
        if not entry:
            return entry                 # a group that has not started
        missing = [key for key, _ in self._EXTRA if key not in entry]
        if missing:
            raise ValueError(f"group state {gi} lacks {missing}")
        out = {key: check_real(entry[key], f"group state {gi} '{key}'", 0.0) for key in self._NONNEG_EXTRA}
        if entry["liquid"] not in (0, 1) or isinstance(entry["liquid"], str):
            raise ValueError(f"group state {gi} 'liquid' must be 0 or 1, got {entry['liquid']!r}")
        out["liquid"] = float(entry["liquid"])
        return out

    def _load_group_extra(self, extra):
        if len(extra) != len(self._records):
            raise ValueError(f"state dict has group state for {len(extra)} groups, optimizer has {len(self._records)}")
        for rec, entry in zip(self._records, extra):
            rec[:] = 0
            if entry:
                for key, col in self._EXTRA:
                    rec[col] = entry[key]
                rec[CTL_STARTED] = 1
