"""AdamW with a learning rate (and optionally beta1) adapted online by hypergradient descent.

``HypergradientAdamW`` is the basic form (Baydin et al., ICLR 2018): the learning rate follows the
agreement between the new gradient and the previous update direction.  ``AutoHypergradientAdamW``
normalises that signal and steps it with an RMS-scaled meta learning rate (after the OSGM/HDM
line of work, arXiv:2502.11229), and can also adapt beta1 and report a "surprise" signal.

Both keep their per-element state on the backend: the previous direction d (a state buffer), the
first moment (AdamW's ``exp_avg``, which at the start of a step *is* the previous step's moment)
and, for the surprise signal, the gradient EMA.  Every sum comes from the device's reduction,
per parameter; the host adds them per group in float64.  A step is at most two submits: the
reduction (whose sums set lr and beta1), then AdamW's update followed by the new direction and
its squared norm, which return with the parameters.

Schedules.  ``group['lr']`` (and ``group['betas']``) hold the adapted values, and each step adapts
from whatever they hold.  So a schedule that writes ``group['lr']`` re-bases the adaptation: a
relative schedule (one that multiplies the current value, like a step decay) composes with it,
while one that writes an absolute value every step leaves the adaptation one step of effect.

Histories (``lr_history`` and friends) keep the last ``history_size`` values (default 10000).
"""
from __future__ import annotations

import math
import numbers
from collections import deque

from .adamw import AdamW
from .kernels import adamw_update
from .kernels.hypergradient import hypergradient_direction, hypergradient_reduce
from .optimizer import check_flag, check_range
from .state_checks import check_count, check_keys, check_real, check_reals

#: A previous-direction norm at or below this is treated as "no direction yet".
_TINY = 1e-12
#: The Auto variant's meta accumulator: G <- decay*G + (1 - decay)*h^2, seeded at 1.
_META_DECAY = 0.99
#: The Auto variant's largest relative change of lr in one step.
_MAX_LR_CHANGE = 0.1


def _check_history_size(history_size):
    if history_size is not None and (isinstance(history_size, bool) or not isinstance(history_size, numbers.Integral)
                                     or history_size < 0):
        raise ValueError(f"Invalid history_size: {history_size} (expected None or an integer >= 0)")


def _rows_total(sums, rows):
    """``sums[rows].sum(axis=0)`` (``rows``: sorted parameter indices): the same additions in the
    same order, without the gather (microseconds a step) where the rows are consecutive, as they
    usually are: a slice, or for one row ``0.0 + row``, which is what NumPy's sum of one row adds."""
    first, last = rows[0], rows[-1]
    if last - first + 1 != len(rows):
        return sums[rows].sum(axis=0)
    return sums[first] + 0.0 if first == last else sums[first:last + 1].sum(axis=0)


class _HypergradientBase(AdamW):
    """The machinery both variants share: programs, the two-submit step, group state, histories.

    Subclasses say which groups need this step's reduction (``_wants_sums``) and turn a group's
    summed reduction into new hyperparameters (``_adapt``).
    """

    _tracks_surprise = False
    _defers_gradient_check = True      # nothing moves before the reduction's run (see _step)
    _state_kinds = {"step": "count", "direction_sq": "nonneg", "has_ema": "flag"}
    _buffer_kinds = dict(AdamW._buffer_kinds, direction="elements", grad_ema="elements")

    def __init__(self, params, defaults, *, use_gpu, device, history_size, comm=None):
        _check_history_size(history_size)
        self._history_size = history_size
        self._hyper: list[dict] = []   # per group: adaptation state and histories
        self._steps = 0                # optimizer steps that had at least one gradient
        self._validate_group(defaults)
        # AdamW.__init__ only assembles AdamW's own defaults; ours carry more keys.
        super(AdamW, self).__init__(params, defaults, use_gpu=use_gpu, device=device, comm=comm)

    # ------------------------------------------------------------------ layout
    @property
    def state_buffers(self):
        """AdamW's buffers, the previous update direction and (with the surprise signal) the gradient EMA."""
        return super().state_buffers + ("direction",) + (("grad_ema",) if self._tracks_surprise else ())

    def _rebind(self):
        # AdamW's base rebinding only: AdamW's own one-kernel program would go unused.
        super(AdamW, self)._rebind()
        second = "max_exp_avg_sq" if "max_exp_avg_sq" in self.state_buffers else "exp_avg_sq"
        # Without the surprise signal the EMA slot gets a placeholder the kernel never touches.
        ema = "grad_ema" if self._tracks_surprise else "direction"
        self._reduce = self._backend.program([(hypergradient_reduce, ("grad", "direction", "exp_avg", ema))])
        self._update = self._backend.program([
            (adamw_update, ("param", "grad", "exp_avg", "exp_avg_sq", second)),
            (hypergradient_direction, ("exp_avg", "exp_avg_sq", second, "direction", "grad", ema))])
        start, self._members = 0, []
        for g in self.param_groups:
            self._members.append(range(start, start + len(g["params"])))
            start += len(g["params"])

    def _add_group(self, group, rebind):
        super()._add_group(group, rebind)
        g = self.param_groups[-1]
        self._hyper.append({"steps": 0, "G_lr": 1.0, "G_beta": 1.0,
                            "lr_history": self._history([g["lr"]]),
                            "beta1_history": self._history([g["betas"][0]])})

    def _history(self, values=()):
        return deque(values, maxlen=self._history_size)

    # ------------------------------------------------------------------ stepping
    def _step(self, grads):
        if not grads:
            return
        # Everything this step decides is staged first and committed once the update has run, so
        # that a failure (or a refused non-finite result) leaves the optimizer at the previous step.
        members: dict[int, list[int]] = {}
        steps = self._next_steps(sorted(grads))
        for i in steps:
            members.setdefault(self._group_of[i], []).append(i)
        wants = {gi: self._wants_sums(gi, idx) for gi, idx in members.items()}
        surprise = self._surprise_due()
        uploaded = False
        staged: dict[int, tuple[dict, dict]] = {}     # group index -> (new group values, new group state)
        observed = None
        if surprise or any(w is not None for w in wants.values()):
            self._fill_reduce_table(members, wants, surprise)
            sums = self._backend.run(self._reduce, grads, download=False)[0]
            uploaded = True
            for gi, idx in members.items():
                if wants[gi] is not None:
                    total = _rows_total(sums, idx)
                    group = dict(self.param_groups[gi])
                    hyper = {k: v for k, v in self._hyper[gi].items() if not k.endswith("history")}
                    hyper["appended"] = []
                    if group["maximize"]:   # the step descends along -g
                        total[:2] = -total[:2]
                    self._adapt(gi, group, hyper, total)
                    staged[gi] = (group, hyper)
            if surprise:
                observed = self._observe_surprise(_rows_total(sums, sorted(grads)))
        self._check_staged(staged, observed)

        update, direction = self._update.tables
        for i in grads:
            gi = self._group_of[i]
            group = staged[gi][0] if gi in staged else self.param_groups[gi]
            t = steps[i]
            beta1, beta2 = group["betas"]
            update[i] = self._update_scalars(group, t)
            direction[i] = (1 - beta1 ** t, 1 - beta2 ** t, group["eps"], bool(group["amsgrad"])) \
                + self._ema_scalars(i, surprise)
        norms = self._run(self._update, None if uploaded else grads, download=True, upload_params=True)[0]

        self._commit_steps(steps)
        for i in grads:
            self._param_state[i]["direction_sq"] = float(norms[i, 0])
            if surprise:
                self._param_state[i]["has_ema"] = True
        for gi, (group, hyper) in staged.items():
            self.param_groups[gi]["lr"] = group["lr"]
            self.param_groups[gi]["betas"] = group["betas"]
            for name, value in hyper.pop("appended"):
                self._hyper[gi][name].append(value)
            self._hyper[gi].update(hyper)
        if staged:
            self._groups_validated()
        if observed is not None:
            self._commit_surprise(observed)
        for gi in members:
            self._hyper[gi]["steps"] += 1
        self._steps += 1

    def _check_staged(self, staged, observed):
        values = [v for group, hyper in staged.values()
                  for v in (group["lr"], *group["betas"], hyper["G_lr"], hyper["G_beta"])]
        values += list((observed or {}).values())
        if not all(math.isfinite(v) for v in values):
            raise FloatingPointError(f"{type(self).__name__}: the adapted hyperparameters are not finite this "
                                     "step; step refused (parameters, state and lr unchanged)")

    def _read_only_program(self):
        """The reduction: it only reads (the EMA moves on in the update, the step's last run)."""
        return self._reduce

    def _fill_reduce_table(self, members, wants, surprise):
        table = self._reduce.tables[0]
        for gi, idx in members.items():
            momentum = bool(wants[gi])
            for i in idx:
                table[i] = (momentum, surprise)

    def _ema_scalars(self, i, surprise):
        """Parameter ``i``'s (with_surprise, ema_decay, ema_rate) for ``hypergradient_direction``:
        the EMA left alone, started at this gradient, or moved on."""
        if not surprise:
            return (False, 0.0, 1.0)
        if self._param_state.get(i, {}).get("has_ema"):
            return (True, self.surprise_gamma, 1.0 - self.surprise_gamma)
        return (True, 0.0, 1.0)

    def _prev_norm(self, gi):
        """|d|^2 of the group's previous directions (parameters without a gradient keep theirs)."""
        return math.fsum(self._param_state[i].get("direction_sq", 0.0) for i in self._members[gi] if i in self._param_state)

    @staticmethod
    def _set_lr(group, hyper, lr):
        group["lr"] = lr
        hyper["appended"].append(("lr_history", lr))

    def _wants_sums(self, gi, idx):
        """None if group ``gi`` adapts nothing this step, else whether it needs <g, m> too."""
        raise NotImplementedError

    def _adapt(self, gi, group, hyper, sums):
        """Update ``group``'s hyperparameters and ``hyper`` (copies of the group's values and
        adaptation state, committed after the update) from its sums (<g,d>, <g,m>, |g|^2, |g-ema|^2)."""
        raise NotImplementedError

    def _surprise_due(self):
        return False

    def _observe_surprise(self, sums):
        """The surprise values after this step (committed by ``_commit_surprise``)."""
        return None

    def _commit_surprise(self, observed):
        pass

    # ------------------------------------------------------------------ reading
    @property
    def current_lr(self):
        """The learning rate of the first parameter group (``param_groups[g]['lr']`` for the others)."""
        return self.param_groups[0]["lr"]

    @property
    def lr_history(self):
        """The first group's lr: its initial value, then each adapted value (the last
        ``history_size`` of them); ``history(g)`` gives any group's."""
        return list(self._hyper[0]["lr_history"])

    def history(self, group=0):
        """``{"lr": [...], "beta1": [...]}`` of parameter group ``group``, bounded by ``history_size``."""
        h = self._hyper[group]
        return {"lr": list(h["lr_history"]), "beta1": list(h["beta1_history"])}

    # ------------------------------------------------------------------ state_dict
    def _group_extra(self):
        return [{"steps": h["steps"], "G_lr": h["G_lr"], "G_beta": h["G_beta"],
                 "lr_history": list(h["lr_history"]), "beta1_history": list(h["beta1_history"])}
                for h in self._hyper]

    _EXTRA = ("steps", "G_lr", "G_beta", "lr_history", "beta1_history")

    def _group_extra_kinds(self):
        return self._EXTRA

    def _check_group_extra(self, gi, e):
        where = f"group state {gi}"
        out = {}
        if "steps" in e:
            out["steps"] = check_count(e["steps"], f"{where} 'steps'")
        for key in ("G_lr", "G_beta"):        # meta accumulators: start at 1, stay > 0
            if key in e:
                out[key] = check_real(e[key], f"{where} '{key}'", 0.0, low_open=True)
        for key in ("lr_history", "beta1_history"):
            if key in e:
                out[key] = check_reals(e[key], f"{where} '{key}'")
        return out

    def _load_group_extra(self, extra):
        for h, e, g in zip(self._hyper, extra, self.param_groups):
            h["steps"] = int(e.get("steps", 0))
            h["G_lr"] = float(e.get("G_lr", 1.0))
            h["G_beta"] = float(e.get("G_beta", 1.0))
            h["lr_history"] = self._history(e.get("lr_history", [g["lr"]]))
            h["beta1_history"] = self._history(e.get("beta1_history", [g["betas"][0]]))

    def _global_state(self):
        return {"steps": self._steps}

    def _check_global_state(self, state):
        """The optimizer-wide entries (``"hypergradient"``), checked and normalised."""
        if "steps" in state:
            state["steps"] = check_count(state["steps"], "hypergradient 'steps'")
        return state

    def _load_global_state(self, state):
        self._steps = int(state.get("steps", 0))

    def state_dict(self):
        """The base class's state dict plus ``"hypergradient"``: the adaptation state and histories."""
        sd = super().state_dict()
        sd["hypergradient"] = self._global_state()
        return sd

    def _check_state_dict(self, sd):
        sd = super()._check_state_dict(sd)
        allowed = tuple(self._global_state())
        sd["hypergradient"] = self._check_global_state(
            dict(check_keys(sd.get("hypergradient", {}), "state dict's 'hypergradient'", allowed)))
        return sd

    def _load_state(self, state_dict):
        super()._load_state(state_dict)
        self._load_global_state(dict(state_dict.get("hypergradient", {})))

    def _validate_lr_range(self, group):
        check_range("lr_min", group["lr_min"], 0, label="lr_min value")
        check_range("lr_max", group["lr_max"], group["lr_min"], label="lr_max value")


class HypergradientAdamW(_HypergradientBase):
    r"""AdamW whose learning rate follows the hypergradient (Baydin et al., 2018).

    Paper: A. G. Baydin, R. Cornish, D. Martinez Rubio, M. Schmidt, F. Wood, "Online Learning Rate
    Adaptation with Hypergradient Descent", ICLR 2018, https://arxiv.org/abs/1703.04782 (authors'
    code: https://github.com/gbaydin/hypergradient-descent).  Code followed (upstream):
    grilly's ``HypergradientAdamW``, https://github.com/Grillcheese-AI/grilly (``optim/hypergradient.py``).
    Working settings (digits MLP, benchmarks/mechanisms.py): ``lr=1e-4, beta_hyper=1e-4`` climbs
    to lr ~ 1.7e-2 within ~30 steps and reaches the accuracy of a tuned AdamW.

    .. code-block:: text

        per parameter group, before the AdamW step k (k >= 2; d: the group's previous directions):
            h   <- sum_p <g_p, d_p>                         (over the group's parameters with g and d)
            lr  <- clip(lr + beta_hyper * h, lr_min, lr_max)                    (log_scale=False)
            lr  <- exp(clip(log lr + beta_hyper * h, log lr_min, log lr_max))   (log_scale=True)
        AdamW step with lr (see ``AdamW``), then for each stepped parameter (own step count t):
            d_p <- (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    lr grows while successive gradients agree with the last step and shrinks when they oscillate.
    Each parameter group adapts its own lr from its own sums (upstream kept one global lr, which
    is what a single group gives).  ``group['lr']`` is the state: a schedule that writes it sets
    the value the next adaptation starts from (and that value may leave [lr_min, lr_max] until
    the next adaptation clips it).  With ``maximize`` the hypergradient uses -g.

    Args: as ``AdamW`` (``amsgrad``, ``maximize``, also per group), plus ``beta_hyper`` (the
    hypergradient step, per group like ``lr_min``, ``lr_max``, ``log_scale``), ``use_gpu`` /
    ``device`` (see ``hyperopt.backends``), and ``history_size``: ``lr_history`` keeps the last
    ``history_size`` values (default 10000, ``0`` keeps none, ``None`` keeps all: unbounded growth).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, beta_hyper=1e-7,
                 lr_min=1e-6, lr_max=1.0, log_scale=False, *, amsgrad=False, maximize=False,
                 history_size=10000, use_gpu="auto", device=None, comm=None):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, beta_hyper=beta_hyper, lr_min=lr_min, lr_max=lr_max,
                        log_scale=log_scale)
        super().__init__(params, defaults, use_gpu=use_gpu, device=device, history_size=history_size, comm=comm)

    def _validate_group(self, group):
        super()._validate_group(group)
        check_range("beta_hyper", group["beta_hyper"], 0, label="beta_hyper value")
        self._validate_lr_range(group)
        check_flag("log_scale", group["log_scale"])
        if group["log_scale"]:   # the adaptation works on log(lr)
            check_range("lr_min", group["lr_min"], 0, low_open=True, label="lr_min value (log_scale needs lr_min > 0)")

    def _wants_sums(self, gi, idx):
        return False if any(i in self._param_state and self._param_state[i]["step"] >= 1 for i in idx) else None

    def _adapt(self, gi, group, hyper, sums):
        h = float(sums[0])
        lr = group["lr"]
        low, high = group["lr_min"], group["lr_max"]
        if group["log_scale"]:   # clipped in log space first so that exp cannot overflow (log 0 = -inf)
            log_lr = math.log(lr) if lr > 0 else -math.inf
            lr = math.exp(min(max(log_lr + group["beta_hyper"] * h, math.log(low)), math.log(high)))
        else:
            lr = lr + group["beta_hyper"] * h
        self._set_lr(group, hyper, min(max(lr, low), high))


class AutoHypergradientAdamW(_HypergradientBase):
    r"""AdamW with a self-scaled hypergradient on lr (and optionally beta1), plus a surprise signal.

    Papers: hypergradient descent (Baydin et al., ICLR 2018, https://arxiv.org/abs/1703.04782) and
    its analysis and stabilisation as HDM in the online-scaled-gradient (OSGM) line of work: Y.-C. Chu,
    W. Gao, Y. Ye, M. Udell, "Provable and Practical Online Learning Rate Adaptation with
    Hypergradient Descent", https://arxiv.org/abs/2502.11229.  Code followed (upstream): grilly's
    ``AutoHypergradientAdamW``, https://github.com/Grillcheese-AI/grilly (``optim/hypergradient.py``).
    Working settings (digits MLP, benchmarks/mechanisms.py): from ``lr=1e-4`` with the defaults
    (``hyper_lr=0.01``) and ``adapt_momentum=True``, lr rises to ~5e-3 (at most 10 % per step)
    while beta1 settles near 0.885; ``track_surprise=True`` feeds the spiking-network input gain
    of benchmarks/snn.py.

    .. code-block:: text

        per parameter group, before AdamW step k+1, once the group has made k >= warmup_steps
        steps and its previous directions have N = sum_p |d_p|^2 > 1e-12:
            h     <- clip(-sum_p <g_p, d_p> / N, -1, 1)
            G_lr  <- 0.99 G_lr + 0.01 h^2                          (G_lr starts at 1)
            lr'   <- lr - hyper_lr * h / (sqrt(G_lr) + 1e-12), moved at most 10% of lr from lr
            lr    <- clip(lr', lr_min, lr_max)
            if adapt_momentum (m: the first moments before this step):
                hb    <- clip(sum_p <g_p, m_p> / N, -1, 1)
                G_b   <- 0.99 G_b + 0.01 hb^2                      (G_b starts at 1)
                beta1 <- clip(beta1 - hyper_lr_beta * hb / (sqrt(G_b) + 1e-12), beta_min, beta_max)
        AdamW step with lr and beta1, then d_p <- (m/(1-beta1^t)) / (sqrt(v/(1-beta2^t)) + eps).

        surprise (track_surprise; over all parameters, once the optimizer has made
        k >= warmup_steps steps; never changes the update):
            V     <- |g|^2 at the first such step, else gamma V + (1 - gamma) |g|^2
            S     <- tanh(sum_p |g_p - ema_p|^2 / (V + 1e-12))   (ema_p = 0 for a new parameter)
            S_bar <- alpha S + (1 - alpha) S_bar;   gain <- S_bar exp(-S_bar / trauma_threshold)
            ema_p <- gamma ema_p + (1 - gamma) g_p                (ema_p <- g_p the first time)

    The normaliser is the previous direction's norm |d_{k-1}|^2 (the newest upstream variant; an
    older one divided by |g_{k-1}|^2).  lr and beta1 adapt per parameter group, from the group's
    own sums (upstream kept one global value, which is what a single group gives).  ``group['lr']``
    and ``group['betas']`` are the state: a schedule that writes them sets the values the next
    adaptation starts from; the 10% limit then applies to the scheduled value.  The surprise signal
    is informational: read ``current_surprise_gain`` to modulate a model's input gain.

    Args: as ``AdamW``, plus the per-group ``hyper_lr``, ``hyper_lr_beta``, ``lr_min``, ``lr_max``,
    ``adapt_momentum``, ``beta_min``, ``beta_max``, ``warmup_steps``; the optimizer-wide
    ``track_surprise``, ``surprise_gamma`` (EMA decay of the gradient and of |g|^2),
    ``surprise_alpha`` (S_bar's rate), ``trauma_threshold`` (where the gain peaks); ``use_gpu`` /
    ``device``; and ``history_size``: each history keeps its last ``history_size`` values
    (default 10000, ``0`` keeps none, ``None`` keeps all: unbounded growth).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, hyper_lr=0.01,
                 hyper_lr_beta=1.0, lr_min=1e-6, lr_max=1.0, adapt_momentum=False, track_surprise=False,
                 surprise_gamma=0.9, surprise_alpha=0.1, trauma_threshold=0.5, beta_min=0.5, beta_max=0.9995,
                 warmup_steps=10, *, amsgrad=False, maximize=False, history_size=10000, use_gpu="auto", device=None, comm=None):
        check_flag("track_surprise", track_surprise)
        check_range("surprise_gamma", surprise_gamma, 0, 1, label="surprise_gamma value")
        check_range("surprise_alpha", surprise_alpha, 0, 1, label="surprise_alpha value")
        check_range("trauma_threshold", trauma_threshold, 0, low_open=True, label="trauma_threshold value")
        self._tracks_surprise = bool(track_surprise)
        self.surprise_gamma = float(surprise_gamma)
        self.surprise_alpha = float(surprise_alpha)
        self.trauma_threshold = float(trauma_threshold)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, hyper_lr=hyper_lr, hyper_lr_beta=hyper_lr_beta, lr_min=lr_min,
                        lr_max=lr_max, adapt_momentum=adapt_momentum, beta_min=beta_min,
                        beta_max=beta_max, warmup_steps=warmup_steps)
        super().__init__(params, defaults, use_gpu=use_gpu, device=device, history_size=history_size, comm=comm)
        self._reset_surprise()

    @property
    def track_surprise(self):
        """Whether the surprise signal is computed (``track_surprise=True`` at construction)."""
        return self._tracks_surprise

    def _reset_surprise(self):
        self._var_ema = 0.0
        self._surprise = 0.0
        self._s_bar = 0.0
        self._gain = 0.0
        self._surprise_history = self._history()
        self._s_bar_history = self._history()

    def _validate_group(self, group):
        super()._validate_group(group)
        check_range("hyper_lr", group["hyper_lr"], 0, label="hyper_lr value")
        check_range("hyper_lr_beta", group["hyper_lr_beta"], 0, label="hyper_lr_beta value")
        self._validate_lr_range(group)
        check_flag("adapt_momentum", group["adapt_momentum"])
        check_range("beta_min", group["beta_min"], 0, 1, high_open=True, label="beta_min value")
        check_range("beta_max", group["beta_max"], group["beta_min"], 1, high_open=True, label="beta_max value")
        w = group["warmup_steps"]
        if isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 0:
            raise ValueError(f"Invalid warmup_steps value: {w}")

    # ------------------------------------------------------------------ adaptation
    def _wants_sums(self, gi, idx):
        group = self.param_groups[gi]
        if self._hyper[gi]["steps"] < group["warmup_steps"] or self._prev_norm(gi) <= _TINY:
            return None
        return bool(group["adapt_momentum"])

    def _adapt(self, gi, group, hyper, sums):
        norm = self._prev_norm(gi)
        h = min(max(-float(sums[0]) / norm, -1.0), 1.0)
        hyper["G_lr"] = _META_DECAY * hyper["G_lr"] + (1 - _META_DECAY) * h * h
        lr = group["lr"]
        target = lr - group["hyper_lr"] * h / (math.sqrt(hyper["G_lr"]) + _TINY)
        limit = _MAX_LR_CHANGE * lr
        if abs(target - lr) > limit:
            target = lr + math.copysign(limit, target - lr)
        self._set_lr(group, hyper, min(max(target, group["lr_min"]), group["lr_max"]))
        if group["adapt_momentum"]:
            hb = min(max(float(sums[1]) / norm, -1.0), 1.0)
            hyper["G_beta"] = _META_DECAY * hyper["G_beta"] + (1 - _META_DECAY) * hb * hb
            beta1, beta2 = group["betas"]
            beta1 -= group["hyper_lr_beta"] * hb / (math.sqrt(hyper["G_beta"]) + _TINY)
            beta1 = min(max(beta1, group["beta_min"]), group["beta_max"])
            group["betas"] = (beta1, beta2)
            hyper["appended"].append(("beta1_history", beta1))

    # ------------------------------------------------------------------ surprise
    def _surprise_due(self):
        return self._tracks_surprise and self._steps >= self.defaults["warmup_steps"]

    def _observe_surprise(self, sums):
        gamma, alpha = self.surprise_gamma, self.surprise_alpha
        norm_sq, error_sq = float(sums[2]), float(sums[3])
        if self._var_ema == 0.0 and self._steps == self.defaults["warmup_steps"]:
            var_ema = norm_sq
        else:
            var_ema = gamma * self._var_ema + (1 - gamma) * norm_sq
        surprise = math.tanh(error_sq / (var_ema + _TINY))
        s_bar = alpha * surprise + (1 - alpha) * self._s_bar
        gain = s_bar * math.exp(-s_bar / self.trauma_threshold)
        return {"var_ema": var_ema, "surprise": surprise, "s_bar": s_bar, "gain": gain}

    def _commit_surprise(self, observed):
        self._var_ema, self._surprise = observed["var_ema"], observed["surprise"]
        self._s_bar, self._gain = observed["s_bar"], observed["gain"]
        self._surprise_history.append(self._surprise)
        self._s_bar_history.append(self._s_bar)

    @property
    def current_surprise(self):
        """Instant surprise S in [0, 1): the gradient's error against its EMA (0 before warmup)."""
        return self._surprise

    @property
    def accumulated_surprise(self):
        """S_bar, the EMA of the instant surprise."""
        return self._s_bar

    @property
    def current_surprise_gain(self):
        """S_bar exp(-S_bar / trauma_threshold): peaks at S_bar = trauma_threshold (0 when off)."""
        return self._gain

    @property
    def beta1_history(self):
        """The first group's beta1: its initial value, then each adapted value (bounded)."""
        return list(self._hyper[0]["beta1_history"])

    @property
    def surprise_history(self):
        """The surprise signal of recent steps (oldest first, at most ``history_size``)."""
        return list(self._surprise_history)

    @property
    def s_bar_history(self):
        """The running mean of the surprise signal at recent steps (oldest first)."""
        return list(self._s_bar_history)

    def _global_state(self):
        return dict(super()._global_state(), var_ema=self._var_ema, surprise=self._surprise, s_bar=self._s_bar,
                    gain=self._gain, surprise_history=list(self._surprise_history),
                    s_bar_history=list(self._s_bar_history))

    def _check_global_state(self, state):
        state = super()._check_global_state(state)
        for key in ("var_ema", "surprise", "s_bar", "gain"):
            if key in state:
                state[key] = check_real(state[key], f"hypergradient '{key}'", 0.0)
        for key in ("surprise_history", "s_bar_history"):
            if key in state:
                state[key] = check_reals(state[key], f"hypergradient '{key}'")
        return state

    def _load_global_state(self, state):
        super()._load_global_state(state)
        self._reset_surprise()
        self._var_ema = float(state.get("var_ema", 0.0))
        self._surprise = float(state.get("surprise", 0.0))
        self._s_bar = float(state.get("s_bar", 0.0))
        self._gain = float(state.get("gain", 0.0))
        self._surprise_history.extend(state.get("surprise_history", ()))
        self._s_bar_history.extend(state.get("s_bar_history", ()))

    def __repr__(self):
        lines = super().__repr__().split("\n")
        lines.insert(1, f"surprise: track_surprise={self._tracks_surprise}, gamma={self.surprise_gamma}, "
                        f"alpha={self.surprise_alpha}, trauma_threshold={self.trauma_threshold}, "
                        f"gain={self._gain:.6g}")
        return "\n".join(lines)
