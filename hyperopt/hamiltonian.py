"""HL: Hamiltonian Learning, an Euler-discretised Hamiltonian flow of weights and costates."""
from __future__ import annotations

import math
import numbers

import numpy as np

from .kernels.hamiltonian import euler_costate, hamiltonian_euler
from .optimizer import Optimizer, _interrupts_deferred, check_range
from .state_checks import check_array

_FLAGS = ("reset_neuron_costate", "reset_weight_costate", "local")


class HL(Optimizer):
    r"""Hamiltonian Learning: weights follow costates that integrate the gradient of a Hamiltonian.

    Paper: S. Melacci, A. Betti, M. Casoni, T. Guidi, M. Tiezzi, M. Gori, "A Unified Framework for
    Neural Computation and Learning Over Time", https://arxiv.org/abs/2409.12038 (PMLR 277, 2025).
    Code followed (upstream): the ``HL`` class of unaiverse,
    https://github.com/collectionlessai/unaiverse-src (``src/unaiverse/modules/hl/hl_utils.py``).
    Working settings: a TinySSM with 8 states (A scaled to spectral radius 0.8) learns online to
    map (sin wk, cos wk) to 0.8 sin(wk + 0.5) with ``gamma=1, theta=0.1, beta=1`` (the defaults):
    squared error 0.48 -> 1.4e-5 in 3000 steps (benchmarks/mechanisms.py).  HL has no learning
    rate, so the ``hyperopt.lr_scheduler`` classes refuse it; schedule ``group['beta']`` by hand.

    For each model (one parameter group) with time step ``delta = model.delta`` (read every step),
    ``s = -delta * flip`` and ``theta' = -flip * theta``:

    .. code-block:: text

        H      = gamma * V + <dh, p_xi>                       compute_hamiltonian(V): V the potential (a loss)
        p_xi  <- (1 - theta') p_xi + s * dH/dh                the neuron costate, shaped like model.h_init
        local:     w <- w - delta*beta * p_w ;  p_w <- (1 - theta') p_w + s * dH/dw     (old costate moves w)
        non-local: p_w <- (1 - theta') p_w + s * dH/dw ;  w <- w - delta*beta * p_w     (new costate moves w)
        zero_grad: p_xi <- 0 if reset_neuron_costate;  p_w <- 0 if reset_weight_costate

    With the defaults (flip = -1) this is ``p <- (1 - theta) p + delta * grad``, ``w <- w - delta*beta*p``:
    a damped heavy ball whose momentum is the costate (the decay theta is not scaled by delta).

    **The model.**  Any object with ``h`` (the current state), ``dh`` (its time derivative, same
    number of elements as ``h_init``), ``delta`` (float > 0), ``h_init`` (read once, shapes p_xi) and
    ``named_parameters()`` returning ``(name, float array)`` pairs; the arrays are updated in place.
    ``models`` is one such object or a list of dicts ``{"params": model, <per-group overrides>}``.
    ``HL.for_params(arrays, delta=...)`` wraps plain arrays in a stateless model (HL as a heavy ball).

    **Gradients.**  NumPy has no autograd, so the caller forms dH/dh and dH/dw (for the H that
    ``compute_hamiltonian`` returns, i.e. with the costate *before* the step, ``neuron_costate()``) and
    passes them to ``step(gradients=..., h_grad=...)``:

    * ``gradients``: ``{name: array}`` (one model), a list of such dicts (one per group), a list
      aligned with ``params()``, ``{id(array): array}``, or ``.grad`` on parameter objects;
    * ``h_grad``: dH/dh as an array (one model) or a list with one entry per group.  A group without
      one uses zeros (its p_xi only decays), as upstream does when ``h`` has no gradient.

    A weight without a gradient is skipped entirely (no move, no decay).  A complete loop with the
    TinySSM of ``hyperopt.models`` (closed-form gradients)::

        import numpy as np
        from hyperopt.hamiltonian import HL
        from hyperopt.models import TinySSM

        model = TinySSM(h_dim=4, u_dim=2, y_dim=1, delta=0.1, seed=7)
        hl = HL(model, gamma=1.0, theta=0.1, beta=1.0, use_gpu=False)
        for k in range(30):
            u, target = [np.sin(0.3 * k), np.cos(0.3 * k)], 0.8 * np.sin(0.3 * k + 0.5)
            model.forward(u)                                    # sets model.h, model.dh, model.y
            loss = model.loss(target)
            H = hl.compute_hamiltonian(loss)                    # gamma * loss + <dh, p_xi>
            dH_dh, dH_dw = model.hamiltonian_grads(target, hl.neuron_costate(), gamma=1.0)
            hl.step(gradients=dH_dw, h_grad=dH_dh)
            hl.zero_grad()

    The weight costates are the per-element state buffer ``costate`` (on the device with
    ``use_gpu``; one kernel, ``hamiltonian_euler``, moves weights and costates); the neuron costates
    are small and stay on the host, where the caller reads them every step.

    Deliberate differences from upstream: ``local=True`` with
    ``reset_weight_costate=True`` is refused (upstream accepts it and the weights never move, since
    each step moves them with a costate that ``zero_grad`` has just cleared); ``state_dict`` /
    ``load_state_dict`` exist (upstream has none); hyperparameters are read from the group at every
    step and validated; a weight without a gradient is skipped (upstream uses zeros).
    """

    state_buffers = ("costate",)
    _buffer_kinds = {"costate": "elements"}
    _host_reads_gradients = False
    _internal_group_keys = ("model", "names")     # kept in the groups, not hyperparameters

    def __init__(self, models, *, gamma=1.0, flip=-1.0, theta=0.1, beta=1.0, reset_neuron_costate=False,
                 reset_weight_costate=False, local=True, use_gpu="auto", device=None, comm=None):
        defaults = dict(gamma=gamma, flip=flip, theta=theta, beta=beta, reset_neuron_costate=reset_neuron_costate,
                        reset_weight_costate=reset_weight_costate, local=local)
        self._validate_group(defaults)
        if isinstance(models, dict):
            models = [models]
        elif _is_model(models):
            models = [{"params": models}]
        else:
            try:
                models = list(models)
            except TypeError:
                raise TypeError("HL expects a model exposing h, dh, delta, h_init and named_parameters(), or a list "
                                f"of {{'params': model, ...}} groups; got {type(models).__name__}") from None
        if not models:
            raise ValueError("HL got an empty list of models")
        for group in models:
            if not isinstance(group, dict) or "params" not in group:
                raise ValueError("each HL parameter group must be a dict with a 'params' key holding the model")
        self._xi_costates: list[np.ndarray] = []
        super().__init__(models, defaults, use_gpu=use_gpu, device=device, comm=comm)

    @classmethod
    def for_params(cls, params, *, delta=0.1, **kwargs):
        """HL over a plain list of arrays, wrapped in a ``StatelessModel`` (time step ``delta``).

        Without state dynamics there is no dH/dh and H's gradient is the loss gradient (times gamma),
        so HL is the damped heavy ball of the algorithm block: ``step(gradients=[...])`` as for any
        optimizer.  With the defaults the effective learning rate is ``gamma * delta**2 * beta / theta``.
        """
        return cls(StatelessModel(params, delta), **kwargs)

    # ------------------------------------------------------------------ groups
    def _add_group(self, group, rebind):
        group = self._model_group(group)
        h_init = np.asarray(group["model"].h_init)
        dtype = h_init.dtype if np.issubdtype(h_init.dtype, np.floating) else np.float32
        super()._add_group(group, rebind)
        self._xi_costates.append(np.zeros(h_init.shape, dtype))

    def _check_new_group(self, group):
        super()._check_new_group(self._model_group(group))

    @staticmethod
    def _model_group(group) -> dict:
        """A group over a model as the base class's group: its parameters, names and model."""
        if not isinstance(group, dict):
            raise TypeError(f"param group must be a dict, got {type(group).__name__}")
        group = dict(group)
        model = group.get("params")
        if not _is_model(model):
            raise TypeError("HL expects models exposing h, dh, delta, h_init and named_parameters(); "
                            f"got {type(model).__name__}")
        named = list(model.named_parameters())
        if not named:
            raise ValueError("the model has no parameters")
        group["model"] = model
        group["names"] = [str(n) for n, _ in named]
        if len(set(group["names"])) != len(named):
            raise ValueError("the model's parameter names are not unique")
        group["params"] = [p for _, p in named]
        return group

    def _rebind(self):
        super()._rebind()
        self._program = self._backend.program([(hamiltonian_euler, ("param", "grad", "costate"))])

    def _validate_group(self, group):
        for name in ("gamma", "flip", "theta", "beta"):
            check_range(name, group[name], label=f"{name} value")
        for name in _FLAGS:
            if not isinstance(group[name], (bool, np.bool_)):
                raise ValueError(f"Invalid {name}: {group[name]!r} (expected True or False)")
        if group["local"] and group["reset_weight_costate"]:
            raise ValueError("local=True with reset_weight_costate=True can never move the weights (local HL moves "
                             "them with the costate that zero_grad has just reset); use local=False or keep the "
                             "weight costates")

    # ------------------------------------------------------------------ the Hamiltonian and costates
    def compute_hamiltonian(self, *potentials) -> float:
        """``sum over groups of gamma * V + Re <vec(model.dh), vec(p_xi)>`` (one potential per group)."""
        if len(potentials) != len(self.param_groups):
            raise ValueError(f"compute_hamiltonian needs one potential per group: got {len(potentials)}, "
                             f"there are {len(self.param_groups)} groups")
        total = 0.0
        for group, p_xi, V in zip(self.param_groups, self._xi_costates, potentials):
            dh = np.asarray(group["model"].dh).reshape(-1)
            if dh.size != p_xi.size:
                raise ValueError(f"model.dh has {dh.size} elements, the neuron costate (shaped like h_init) "
                                 f"{p_xi.size}")
            kinetic = np.dot(dh.astype(np.complex128 if np.iscomplexobj(dh) else np.float64),
                             p_xi.reshape(-1).astype(np.float64))
            total += float(group["gamma"]) * float(V) + float(np.real(kinetic))
        return total

    def neuron_costate(self, group: int = 0) -> np.ndarray:
        """A copy of group ``group``'s neuron costate p_xi (shaped like its model's ``h_init``)."""
        return self._xi_costates[group].copy()

    def weight_costates(self, group: int = 0) -> dict:
        """Copies of group ``group``'s weight costates, by parameter name."""
        self._check_open()
        start = sum(len(g["params"]) for g in self.param_groups[:group])
        g = self.param_groups[group]
        return {name: self._backend.read("costate", start + k) for k, name in enumerate(g["names"])}

    # ------------------------------------------------------------------ stepping
    def step(self, closure=None, gradients=None, h_grad=None):
        """One HL step for every group; returns the closure's loss (None without a closure).

        Everything (gradients, ``h_grad``, each model's ``delta``, the hyperparameters) is checked
        before anything changes.
        """
        # never a no-op: without any gradient the neuron costates still take their decay step
        loss, costates = None, []
        with self._until_agreed():
            self._check_step_args(closure, gradients, other_sources=True)
            loss = closure() if closure is not None else None
            for group in self.param_groups:
                self._validate_group(group)
            deltas = [_check_delta(g["model"]) for g in self.param_groups]
            self._sync_params()
        # with comm, the neuron costates (each rank's own h_grad) are checked among the ranks' inputs
        grads = self._collect_gradients(gradients, check=lambda: costates.extend(self._next_costates(h_grad, deltas)))
        with _interrupts_deferred():
            if grads:
                table = self._program.tables[0]
                for i in grads:
                    gi = self._group_of[i]
                    keep, cstep, neg_wstep = self._coefficients(self.param_groups[gi], deltas[gi])
                    table[i] = (keep, cstep, neg_wstep, 0.0 if self.param_groups[gi]["local"] else 1.0)
                self._run(self._program, grads, upload_params=True)
                for i in grads:
                    self._param_state.setdefault(i, {"step": 0})["step"] += 1
            for p_xi, new in zip(self._xi_costates, costates):
                p_xi[...] = new
        return loss

    def _next_costates(self, h_grad, deltas):
        """The neuron costates' new values, computed on copies (written with the weights' update)."""
        h_grads = self._check_h_grads(h_grad)
        costates = []
        for gi, group in enumerate(self.param_groups):
            keep, cstep, _ = self._coefficients(group, deltas[gi])
            p_xi = self._xi_costates[gi].copy()
            euler_costate(p_xi, h_grads[gi], keep, cstep)
            if not np.isfinite(p_xi).all():
                raise FloatingPointError(f"HL: the neuron costate of group {gi} would not be finite; step refused")
            costates.append(p_xi)
        return costates

    @staticmethod
    def _coefficients(group, delta):
        """(keep, costate step, negative weight step), in double; the kernels take them as float32."""
        decay = -group["flip"] * group["theta"]
        return 1.0 - decay, -delta * group["flip"], -delta * group["beta"]

    def _collect_local_gradients(self, gradients):
        return super()._collect_local_gradients(self._by_name(gradients))

    def _by_name(self, gradients):
        """Translate name-keyed gradients into the base class's ``{id(param): grad}``."""
        if isinstance(gradients, dict) and gradients and all(isinstance(k, str) for k in gradients):
            if len(self.param_groups) != 1:
                raise ValueError("gradients keyed by name are ambiguous with several groups: "
                                 "pass a list with one {name: grad} dict per group")
            gradients = [gradients]
        per_group = (isinstance(gradients, (list, tuple)) and any(isinstance(g, dict) for g in gradients)
                     and all(isinstance(g, dict) or g is None for g in gradients))
        if per_group:
            if len(gradients) != len(self.param_groups):
                raise ValueError(f"got {len(gradients)} gradient dicts for {len(self.param_groups)} groups")
            out = {}
            for gi, (group, named) in enumerate(zip(self.param_groups, gradients)):
                named = named or {}
                index = dict(zip(group["names"], group["params"]))
                for name, g in named.items():
                    if name not in index:
                        raise KeyError(f"group {gi} has no parameter named {name!r} (it has {group['names']})")
                    out[id(index[name])] = g
            return out
        return gradients

    def _check_h_grads(self, h_grad):
        n = len(self.param_groups)
        if h_grad is None:
            h_grad = [None] * n
        elif not isinstance(h_grad, (list, tuple)):
            if n != 1:
                raise ValueError(f"h_grad must be a list with one entry per group ({n} groups)")
            h_grad = [h_grad]
        if len(h_grad) != n:
            raise ValueError(f"got {len(h_grad)} state gradients for {n} groups")
        out = []
        for gi, (g, p_xi) in enumerate(zip(h_grad, self._xi_costates)):
            if g is None:
                out.append(np.zeros_like(p_xi))
                continue
            g = np.asarray(g)
            if not (np.issubdtype(g.dtype, np.floating) or np.issubdtype(g.dtype, np.integer)):
                raise TypeError(f"h_grad of group {gi} has dtype {g.dtype}")
            if g.size != p_xi.size:
                raise ValueError(f"h_grad of group {gi} has shape {g.shape}, expected {p_xi.shape} (like h_init)")
            g = g.reshape(p_xi.shape).astype(p_xi.dtype, copy=False)
            if not np.isfinite(g).all():
                raise ValueError(f"h_grad of group {gi} contains NaN or infinity")
            out.append(g)
        return out

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Clear ``.grad`` of parameter objects (if any); reset the costates the groups ask to reset."""
        self._check_open()
        super().zero_grad(set_to_none)
        start = 0
        for gi, group in enumerate(self.param_groups):
            if group["reset_neuron_costate"]:
                self._xi_costates[gi][...] = 0
            if group["reset_weight_costate"]:
                for i in range(start, start + len(group["params"])):
                    self._backend.clear(i)      # zeroes every state buffer: only the costate here
            start += len(group["params"])

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The base class's state dict, with the neuron costates and without the models."""
        sd = super().state_dict()
        for entry in sd["param_groups"]:
            entry.pop("model", None)       # the model object is the caller's, not optimizer state
        return sd

    def _check_state_dict(self, sd):
        sd = super()._check_state_dict(sd)
        for gi, (mine, theirs) in enumerate(zip(self.param_groups, sd["param_groups"])):
            if "model" in theirs:
                raise ValueError(f"param group {gi} of the state dict holds a model: models are the caller's")
            if "names" in theirs and list(theirs["names"]) != mine["names"]:
                raise ValueError(f"group {gi} has parameters {theirs['names']} in the state dict, "
                                 f"{mine['names']} in the optimizer")
        return sd

    def _group_extra_kinds(self):
        return ("neuron_costate",)

    def _check_group_extra(self, gi, extra):
        if "neuron_costate" in extra:
            p_xi = self._xi_costates[gi]
            extra["neuron_costate"] = check_array(extra["neuron_costate"], f"neuron costate of group {gi}",
                                                  shape=p_xi.shape, dtype=p_xi.dtype)
        return extra

    def _group_extra(self):
        return [{"neuron_costate": p.copy()} for p in self._xi_costates]

    def _load_group_extra(self, extra):
        for e, p_xi in zip(extra, self._xi_costates):
            if "neuron_costate" in e:
                p_xi[...] = e["neuron_costate"]


class StatelessModel:
    """The smallest model HL accepts: named parameters ``p0, p1, ...``, a one-element state that
    never changes (h, dh and h_init), and a time step ``delta``."""

    def __init__(self, params, delta=0.1):
        params = [params] if isinstance(params, np.ndarray) else list(params)
        self._named = [(f"p{k}", p) for k, p in enumerate(params)]
        self.h_init = np.zeros(1, np.float32)
        self.h = self.h_init.copy()
        self.dh = np.zeros(1, np.float32)
        self.delta = delta

    def named_parameters(self):
        return list(self._named)


def _is_model(obj) -> bool:
    return all(hasattr(obj, a) for a in ("h_init", "delta")) and callable(getattr(obj, "named_parameters", None))


def _check_delta(model) -> float:
    delta = model.delta
    if not (isinstance(delta, numbers.Real) and not isinstance(delta, bool) and math.isfinite(delta) and delta > 0):
        raise ValueError(f"Invalid model.delta: {delta!r} (expected a finite number > 0)")
    return float(delta)
