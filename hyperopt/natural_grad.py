"""HCNaturalGrad: gradient preconditioning by the covariance of model state branches.

Two ways to use it (see the class docstring): upstream's functional interface over a dict of
parameters (float64, on the host, reproducing upstream's trajectories and random stream bit for bit),
and the ordinary optimizer over a list of arrays, whose two large products run on the backend.
The helpers the functional interface rests on (``flatten_params``, ``deflatten_params``,
``cov_empirical``, ``cg_solve``) are public here.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .kernels.natural_grad import (WIDTH, element_keys, hash_stream, natural_grad_expand,
                                   natural_grad_hash_expand, natural_grad_hash_project,
                                   natural_grad_project, natural_grad_store)
from .optimizer import Optimizer, _data, _interrupts_deferred, check_range
from .state_checks import check_count, check_keys, check_real

CG_TOL = 1e-6          # upstream's fixed tolerance on the residual norm


# ---------------------------------------------------------------------------------------------- helpers
def flatten_params(params) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Concatenate a dict of arrays into one float64 vector, keys in sorted order.

    Returns ``(theta, layout)`` with ``layout = [(key, size), ...]``; an empty dict gives a vector of
    size 0.  Scalars count as one element.
    """
    layout, chunks = [], []
    for key in sorted(params):
        v = np.atleast_1d(np.asarray(params[key], dtype=float)).reshape(-1)
        layout.append((key, v.size))
        chunks.append(v)
    theta = np.concatenate(chunks) if chunks else np.zeros(0, dtype=float)
    return theta, layout


def deflatten_params(vec, layout, like) -> dict:
    """Split ``vec`` back into a dict shaped like ``like``; one-element entries come back as 0-d arrays."""
    vec = np.asarray(vec, dtype=float)
    out, start = {}, 0
    for key, size in layout:
        chunk = vec[start:start + size]
        start += size
        out[key] = np.squeeze(chunk).copy() if size == 1 else chunk.reshape(np.shape(like[key])).copy()
    return out


def cov_empirical(X) -> np.ndarray:
    """Unbiased covariance of the rows of ``X`` (N x D): ``Xc^T Xc / max(1, N-1)``; N = 1 gives zeros."""
    X = np.asarray(X, dtype=float)
    centred = X - X.mean(axis=0, keepdims=True)
    return centred.T @ centred / max(1, X.shape[0] - 1)


def cg_solve(A, b, iters: int = 10, tol: float = 1e-6) -> np.ndarray:
    """Conjugate gradient for ``A x = b`` from ``x = 0``; ``A`` is a matrix or a function ``v -> A v``.

    At most ``iters`` iterations, stopping when the residual norm drops below ``tol``.  The two
    denominators are floored at 1e-12, so a zero or indefinite direction gives a large step rather than
    a division by zero (as upstream).
    """
    matvec = A if callable(A) else (lambda v, M=np.asarray(A, dtype=float): M @ v)
    b = np.asarray(b, dtype=float)
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rho = float(r @ r)
    for _ in range(iters):
        Ap = matvec(p)
        alpha = rho / max(1e-12, float(p @ Ap))
        x = x + alpha * p
        r = r - alpha * Ap
        rho_new = float(r @ r)
        if math.sqrt(rho_new) < tol:
            break
        p = r + (rho_new / max(1e-12, rho)) * p
        rho = rho_new
    return x


def check_branches(branches) -> np.ndarray:
    """The branches as a float64 (K x D) matrix, or ValueError naming what is wrong."""
    B = np.asarray(branches)
    if not (np.issubdtype(B.dtype, np.floating) or np.issubdtype(B.dtype, np.integer)):
        raise ValueError(f"branches must be a numeric (K x D) matrix, got dtype {B.dtype}")
    if B.ndim != 2:
        raise ValueError(f"branches must be a (K x D) matrix of K state branches, got shape {B.shape}")
    if B.shape[0] < 1 or B.shape[1] < 1:
        raise ValueError(f"branches must have at least one branch and one state dimension, got shape {B.shape}")
    B = B.astype(float)
    if not np.isfinite(B).all():
        raise ValueError("branches contain NaN or infinity")
    return B


# ---------------------------------------------------------------------------------------------- optimizer
class HCNaturalGrad(Optimizer):
    r"""HyperCausal natural gradient: precondition by the covariance of state branches, through a
    random projection between parameter space and state space.

    Source: the ``HCNaturalGrad`` of qml-hcs (QML-HCS, "Quantum Machine Learning Hypercausal
    System"), PyPI ``qml-hcs==0.2.0`` (https://pypi.org/project/qml-hcs/), module
    ``qmlhc/optim/numpy_optim/natural_grad.py``; the GitHub repository
    (https://github.com/Neureonmindflux-Research-Lab/qml-hcs) does not contain it.  That wheel is
    the upstream code this class follows; there is no paper for the optimizer.

    **What the branches are.**  ``branches`` is a K x D matrix: K samples of a D-dimensional state
    of the model, whose covariance C weights the step.  For an ordinary network, a meaningful
    choice is a hidden layer's mean activation under K forward passes of the batch with input noise
    (benchmarks/train.py ``noisy_hidden_branches``: K=8, noise 0.1, D = the layer width): C says
    how much the hidden state moves under perturbation.  Working settings on the digits MLP
    [64, 64, 10]: ``lr=0.02, fisher_damp=0.1, projection="hash"`` reaches 93 % test accuracy
    in 10 epochs, against 84 % for the same lr without branches (the step P (C + damp I)^-1 P^T g
    is up to 1/damp larger, in a random rank-D subspace) and 95 % for tuned plain descent
    (lr 0.5), in benchmarks/mechanisms.py; with damp 0.1, lr 0.1 stalls (78 %) and lr 0.5
    diverges (15 epochs, measured while choosing these settings).  **Without
    branches the step is plain gradient descent** ``theta -= lr * g``.

    .. code-block:: text

        given the gradient g (n) and branches B (K x D: K samples of a D-dim model state):
            C  <- (B - mean(B))^T (B - mean(B)) / max(1, K-1)          unbiased covariance, D x D
            P  <- N(0, 1)^(n x D) / sqrt(D)                             fresh every step, seeded stream
            v  <- CG(C + fisher_damp * I,  P^T g,  cg_iters, tol 1e-6)   on the host (D x D)
            theta <- theta - lr * P v                                   without branches: - lr * g
            theta <- clip(theta, -clip, clip)                           if clip: a box on the values

    ``P (C + fisher_damp I)^-1 P^T`` is positive semi-definite, so the step is a descent direction,
    but its rank is at most D and it is scaled by up to ``1/fisher_damp`` along low-variance state
    directions: upstream's defaults (damping 1e-3) can raise the loss; damping ~0.1 descends.

    **Functional form** (upstream's interface, float64 on the host, bit for bit upstream's numbers
    and random stream)::

        opt = HCNaturalGrad(lr=5e-3, fisher_damp=1e-3, cg_iters=8, clip=None, grad_estimator=None, seed=12345)
        state = opt.initialize(params)                       # {"steps": 0}
        params, state = opt.step_params(model, params, {"grads": {...}, "info": {"branches": B}})

    ``params`` is a dict of arrays, flattened in sorted key order; ``grad_estimator(model, params,
    context)``, when given, replaces ``context["grads"]``.  The step returns new arrays and the state
    ``{"steps", "precond_norm"}``.

    **Ordinary form** (the first argument is the parameter list)::

        opt = HCNaturalGrad([W, b], lr=0.05, fisher_damp=0.1, use_gpu=True)
        opt.step(gradients=[gW, gb], branches=B)             # in place; branches=None: plain descent

    Hyperparameters (``lr``, ``fisher_damp``, ``cg_iters``, ``clip``) are per group and read at every
    step; each group solves its own D x D system from its own parameters' ``P^T g`` (one group is
    upstream's single solve).  Parameters without a gradient are skipped and get no rows of P.
    ``branches=`` at construction sets a default used when ``step`` gets none.

    The projection (``projection=``):

    * ``"numpy"`` (default): P comes from ``np.random.default_rng(seed).normal``, drawn parameter
      by parameter in order (the same stream as one draw over the concatenation).  It lives in D
      state buffers ``proj0..proj<D-1>`` (created when a larger D is first seen); each column goes up
      through the gradient upload, the one transfer that is a single copy on every device, and a
      small kernel stores it scaled by 1/sqrt(D) (D extra submits per step).  With parameters in
      upstream's sorted-key order the steps follow upstream's trajectory to float32 accuracy.  The
      host's normal draws dominate the step time (~50 ms per million parameters at D = 4).
    * ``"hash"``: P is generated inside the kernels from a counter-based hash of (seed, step,
      parameter, element, column); entries are ``+-1/sqrt(D)`` (same mean and variance as the
      Gaussian ones).  Nothing is drawn on the host or uploaded, and only one ``key`` buffer is stored
      instead of D; a different, equally valid random stream, reproduced exactly by the NumPy twin.

    On the backend a branched step runs ``P^T g`` (per-parameter sums, four columns per dispatch),
    then, after the host's CG, ``theta += sum_j (-lr v_j) P[:, j]`` and the clip: two submits with
    the hash projection, D + 2 with the NumPy stream; a step without branches is one submit.

    Deliberate differences from upstream: malformed branches (not a finite K x D
    matrix) raise ValueError (upstream silently falls back to plain descent when ``ndim != 2``); a
    missing gradient key raises ValueError (upstream: KeyError); hyperparameters are validated.
    """

    def __init__(self, params=None, lr=5e-3, fisher_damp=1e-3, cg_iters=8, clip=None, grad_estimator=None,
                 seed=12345, *, branches=None, projection="numpy", use_gpu="auto", device=None, comm=None):
        """``HCNaturalGrad(params, lr=..., ...)`` over a list of arrays (or parameter groups); without
        ``params`` (``HCNaturalGrad(lr=..., ...)``) the functional interface (``step_params``)."""
        if isinstance(params, numbers.Number):
            raise TypeError(f"HCNaturalGrad: the first argument is the parameter list, got the number {params!r}; "
                            "for the functional interface pass the hyperparameters by keyword: HCNaturalGrad(lr=...)")
        hyper = dict(lr=lr, fisher_damp=fisher_damp, cg_iters=cg_iters, clip=clip)
        self._validate_group(hyper)
        self._rng = np.random.default_rng(seed)
        self._seed_word = _seed_word(seed)
        self._functional = params is None
        if self._functional:
            given = {"branches": branches is not None, "projection": projection != "numpy",
                     "use_gpu": not (isinstance(use_gpu, str) and use_gpu == "auto"), "device": device is not None,
                     "comm": comm is not None}
            extra = [k for k, v in given.items() if v]
            if extra:
                raise TypeError(f"HCNaturalGrad: {', '.join(extra)} only apply when constructed over parameters "
                                "(the functional interface runs in float64 on the host)")
            self.lr, self.fisher_damp = float(lr), float(fisher_damp)
            self.cg_iters, self.clip = int(cg_iters), clip
            self.grad_estimator = grad_estimator
            self.defaults, self.param_groups, self._param_state = dict(hyper), [], {}
            self._state = {}
            return
        if grad_estimator is not None:
            raise TypeError("HCNaturalGrad: grad_estimator belongs to the functional interface (step_params); "
                            "pass gradients to step() instead")
        if projection not in ("numpy", "hash"):
            raise ValueError(f"Invalid projection: {projection!r} (expected 'numpy' or 'hash')")
        self.projection = projection
        self.branches = None if branches is None else check_branches(branches)
        self._n_proj = self.branches.shape[1] if (self.branches is not None and projection == "numpy") else 0
        self._hash_step = 0
        super().__init__(params, hyper, use_gpu=use_gpu, device=device, comm=comm)

    # ------------------------------------------------------------------ validation and layout
    def _validate_group(self, group):
        check_range("lr", group["lr"], 0, label="learning rate")
        check_range("fisher_damp", group["fisher_damp"], 0, label="fisher_damp value")
        cg = group["cg_iters"]
        if not (isinstance(cg, numbers.Integral) and not isinstance(cg, bool) and cg >= 1):
            raise ValueError(f"Invalid cg_iters: {cg}")
        if group["clip"] is not None:
            check_range("clip", group["clip"], 0, low_open=True, label="clip value")

    @property
    def state_buffers(self):
        """``("key",)`` with the hash projection, else the D stored projection columns ``proj0..``."""
        if getattr(self, "projection", "numpy") == "hash":
            return ("key",)
        return tuple(f"proj{j}" for j in range(getattr(self, "_n_proj", 0)))

    def _rebind(self):
        super()._rebind()
        self._programs, self._stores = {}, {}
        self._keys_ready = False
        self._descent = self._backend.program([(natural_grad_expand, ("param", "grad", "grad", "grad", "grad"))])

    def _programs_for(self, D):
        """(project, expand) programs for D columns: ceil(D/4) dispatches each, built once per D."""
        if D not in self._programs:
            blocks = [(j0, min(WIDTH, D - j0)) for j0 in range(0, D, WIDTH)]
            if self.projection == "hash":
                proj = [(natural_grad_hash_project, ("grad", "key")) for _ in blocks]
                expand = [(natural_grad_hash_expand, ("param", "key")) for _ in blocks]
            else:
                def cols(j0, n):
                    names = [f"proj{j0 + j}" for j in range(n)]
                    return tuple(names + names[-1:] * (WIDTH - n))
                proj = [(natural_grad_project, ("grad",) + cols(j0, n)) for j0, n in blocks]
                expand = [(natural_grad_expand, ("param",) + cols(j0, n)) for j0, n in blocks]
            self._programs[D] = (blocks, self._backend.program(proj), self._backend.program(expand))
        return self._programs[D]

    def _store_program(self, j):
        if j not in self._stores:
            self._stores[j] = self._backend.program([(natural_grad_store, ("grad", f"proj{j}"))])
        return self._stores[j]

    # ------------------------------------------------------------------ ordinary interface
    def step(self, closure=None, gradients=None, branches=None):
        """One step; returns the closure's loss (None without a closure).

        ``gradients`` takes the forms of ``Optimizer.step``; ``branches`` (K x D, see the class
        docstring) defaults to the constructor's; with neither, the step is plain gradient descent.
        """
        if self._functional:
            raise TypeError("this HCNaturalGrad was built without parameters: use step_params(model, params, "
                            "context), or construct it as HCNaturalGrad(params, ...)")
        loss, given = None, {}
        with self._until_agreed():
            self._check_step_args(closure, gradients)
            if self.comm is None:
                given["B"] = check_branches(branches) if branches is not None else self.branches
            loss = closure() if closure is not None else None
            for group in self.param_groups:
                self._validate_group(group)
            self._sync_params()
        if self.comm is not None:   # checked among the ranks' inputs, and equal on every rank
            grads = self._collect_gradients(gradients, check=lambda: given.setdefault(
                "B", check_branches(branches) if branches is not None else self.branches),
                same=lambda: b"" if given["B"] is None else given["B"].tobytes())
        else:
            grads = self._collect_gradients(gradients)
        B = given["B"]
        if grads:
            rng = self._rng.bit_generator.state
            with _interrupts_deferred():
                try:
                    self._step(grads, B)
                except BaseException:
                    self._rng.bit_generator.state = rng      # a refused step draws nothing
                    raise
        return loss

    def _step(self, grads, B=None):
        if B is None:
            table = self._descent.tables[0]
            for i in grads:
                group = self.param_groups[self._group_of[i]]
                table[i] = (-group["lr"], 0.0, 0.0, 0.0, 1.0) + _clip_fields(group, True)
            self._run(self._descent, grads, upload_params=True)
            self._count_steps(grads)
            return
        C = cov_empirical(B)
        D = C.shape[0]
        if self.projection == "numpy" and D > self._n_proj:
            self._n_proj = D
            self._rebind()          # new projection buffers
        blocks, project, expand = self._programs_for(D)
        active = sorted(grads)
        if self.projection == "numpy":
            scale = 1.0
            # one stream over the active parameters, in order; each column goes up through the
            # gradient upload (one copy per run on every device) and is stored scaled by 1/sqrt(D)
            draws = {i: self._rng.normal(size=(grads[i].size, D)) for i in active}
            for j in range(D):
                store = self._store_program(j)
                store.tables[0][active] = 1.0 / math.sqrt(D)
                self._backend.run(store, {i: draws[i][:, j].reshape(grads[i].shape) for i in active}, download=False)
            del draws
            streams = None
        else:
            if not self._keys_ready:     # after every layout change: new parameters have zero keys
                for i, p in enumerate(self.params()):
                    a = _data(p)
                    self._backend.write("key", i, element_keys(a.size).reshape(a.shape))
                self._keys_ready = True
            scale = 1.0 / math.sqrt(D)
            streams = {(i, j0): hash_stream(self._seed_word, self._hash_step + 1, i, j0 // 32)
                       for i in active for j0, _ in blocks}
        for d, (j0, n) in enumerate(blocks):
            table = project.tables[d]
            for i in active:
                table[i] = (scale, n) if streams is None else (streams[i, j0], j0 % 32, n, scale)
        sums = self._backend.run(project, grads, download=False)
        per_param = np.concatenate([s[:, :n] for s, (_, n) in zip(sums, blocks)], axis=1)   # (n_params, D)
        coef = {}
        for gi, group in enumerate(self.param_groups):
            members = [i for i in active if self._group_of[i] == gi]
            if not members:
                continue
            g_state = per_param[members].sum(axis=0)
            damp = float(group["fisher_damp"])
            v = cg_solve(lambda z, C=C, damp=damp: C @ z + damp * z, g_state, iters=int(group["cg_iters"]), tol=CG_TOL)
            coef[gi] = -float(group["lr"]) * v * scale
            if not np.isfinite(coef[gi]).all():
                raise FloatingPointError(f"HCNaturalGrad: the preconditioned step of group {gi} is not finite "
                                         "(try a larger fisher_damp); step refused")
        for d, (j0, n) in enumerate(blocks):
            table = expand.tables[d]
            last = d == len(blocks) - 1
            for i in active:
                group = self.param_groups[self._group_of[i]]
                c = list(coef[self._group_of[i]][j0:j0 + n]) + [0.0] * (WIDTH - n)
                clip = _clip_fields(group, last)
                table[i] = tuple(c) + (n,) + clip if streams is None else (streams[i, j0], j0 % 32, n) + tuple(c) + clip
        self._run(expand, None, download=True, upload_params=True)
        self._count_steps(grads)
        if streams is not None:
            self._hash_step += 1

    def _count_steps(self, grads):
        for i in grads:
            st = self._param_state.setdefault(i, {"step": 0})
            st["step"] += 1

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """The optimizer's state; also the position in its random stream (``rng`` for the NumPy
        projection, ``seed_word`` and ``hash_step`` for the hash projection), so a resumed run draws
        the same projections as an uninterrupted one."""
        if self._functional:
            return {"optimizer": type(self).__name__, "functional": True, "state": dict(self._state),
                    "rng": self._rng.bit_generator.state,
                    "hyper": dict(lr=self.lr, fisher_damp=self.fisher_damp, cg_iters=self.cg_iters, clip=self.clip)}
        sd = super().state_dict()
        for entry in sd["state"].values():      # projections and keys are scratch, regenerated each step
            for name in self.state_buffers:
                entry.pop(name, None)
        sd["functional"] = False
        sd["rng"] = self._rng.bit_generator.state
        sd["seed_word"] = self._seed_word
        sd["hash_step"] = self._hash_step
        return sd

    def _check_state_dict(self, sd):
        self._check_made_by(sd)
        if bool(sd.get("functional")) != self._functional:
            raise ValueError("state dict comes from " + ("an HCNaturalGrad over parameters, this one is functional"
                                                         if self._functional else
                                                         "a functional HCNaturalGrad, this one is built over parameters"))
        if self._functional:
            check_keys(sd, "state dict", ("optimizer", "functional", "state", "rng", "hyper"),
                       ("state", "rng", "hyper"))
            hyper = dict(check_keys(sd["hyper"], "state dict's 'hyper'", ("lr", "fisher_damp", "cg_iters", "clip"),
                                    ("lr", "fisher_damp", "cg_iters", "clip")))
            self._validate_group(hyper)
            state = check_keys(sd["state"], "state dict's 'state'", ("steps", "precond_norm"))
            if "steps" in state:
                state["steps"] = check_count(state["steps"], "state 'steps'")
            if "precond_norm" in state:
                state["precond_norm"] = check_real(state["precond_norm"], "state 'precond_norm'", 0.0)
            _check_rng(sd["rng"], self._rng)
            return sd
        extra = {k: sd.pop(k) for k in ("functional", "rng", "seed_word", "hash_step") if k in sd}
        missing = [k for k in ("rng", "hash_step") if k not in extra]
        if missing:
            raise ValueError(f"state dict lacks {missing}")
        sd = super()._check_state_dict(sd)
        _check_rng(extra["rng"], self._rng)
        sd["rng"] = extra["rng"]
        sd["hash_step"] = check_count(extra["hash_step"], "state dict's 'hash_step'")
        if "seed_word" in extra:
            word = check_count(extra["seed_word"], "state dict's 'seed_word'")
            if word >= 2 ** 32:
                raise ValueError(f"state dict's 'seed_word' must be a 32-bit word, got {word}")
            sd["seed_word"] = word
        return sd

    def _load_state(self, state_dict):
        if self._functional:
            self._rng.bit_generator.state = state_dict["rng"]
            self._state = dict(state_dict["state"])
            for k, v in state_dict["hyper"].items():
                setattr(self, k, v)
            return
        self._keys_ready = False    # the base class clears every buffer, the hash keys included
        super()._load_state(state_dict)
        self._rng.bit_generator.state = state_dict["rng"]
        self._seed_word = state_dict.get("seed_word", self._seed_word)
        self._hash_step = state_dict["hash_step"]

    @property
    def backend(self) -> str:
        """Which backend runs the steps (the functional form is always float64 NumPy on the host)."""
        return "numpy (functional, float64)" if self._functional else super().backend

    def close(self) -> None:
        """Release device memory now (nothing to release for the functional form)."""
        if not self._functional:
            super().close()

    def __repr__(self):
        if self._functional:
            return (f"HCNaturalGrad(lr={self.lr}, fisher_damp={self.fisher_damp}, cg_iters={self.cg_iters}, "
                    f"clip={self.clip}, functional)")
        return super().__repr__()

    # ------------------------------------------------------------------ functional interface
    def initialize(self, params) -> dict:
        """Start (or restart) the step count; the random stream continues."""
        self._require_functional("initialize")
        self._state = {"steps": 0}
        return dict(self._state)

    def step_params(self, model, params, context):
        """One step on a dict of parameters; returns ``(new_params, state)``, the input is not modified."""
        self._require_functional("step_params")
        self._validate_group(dict(lr=self.lr, fisher_damp=self.fisher_damp, cg_iters=self.cg_iters, clip=self.clip))
        theta, layout = flatten_params(params)
        if self.grad_estimator is not None:
            g = np.asarray(self.grad_estimator(model, params, context), dtype=float)
            if g.size != theta.size:
                raise ValueError(f"grad_estimator returned {g.size} values for {theta.size} parameters")
            g = g.reshape(theta.shape)
        else:
            grads = context.get("grads") or {}
            if not grads:
                raise ValueError("HCNaturalGrad expects either grad_estimator or context['grads']")
            chunks = []
            for key, size in layout:
                if key not in grads:
                    raise ValueError(f"context['grads'] has no gradient for parameter '{key}'")
                v = np.atleast_1d(np.asarray(grads[key], dtype=float)).reshape(-1)
                if v.size != size:
                    raise ValueError(f"Gradient size mismatch for key '{key}': got {v.size} values, expected {size}")
                chunks.append(v)
            g = np.concatenate(chunks) if chunks else np.zeros(0, dtype=float)
        B = (context.get("info") or {}).get("branches")
        if B is None:
            precond = g
        else:
            C = cov_empirical(check_branches(B))
            D = C.shape[0]
            P = self._rng.normal(size=(theta.size, D)) / np.sqrt(D)
            damp = self.fisher_damp
            v = cg_solve(lambda z: C @ z + damp * z, P.T @ g, iters=self.cg_iters, tol=CG_TOL)
            precond = P @ v
        theta = theta - self.lr * precond
        if self.clip is not None:
            theta = np.clip(theta, -self.clip, self.clip)
        self._state = {"steps": self._state.get("steps", 0) + 1, "precond_norm": float(np.linalg.norm(precond))}
        return deflatten_params(theta, layout, params), dict(self._state)

    def _require_functional(self, what):
        if not self._functional:
            raise TypeError(f"{what} is the functional interface; this HCNaturalGrad was built over parameters: "
                            "use step(gradients=..., branches=...)")


def _clip_fields(group, apply):
    clip = group["clip"]
    return (0.0, 0.0) if clip is None or not apply else (float(clip), 1.0)


def _seed_word(seed) -> int:
    """A 32-bit word for the hash projection's streams (any seed ``default_rng`` takes; None: random)."""
    if isinstance(seed, numbers.Integral):
        return int(seed) & 0xFFFFFFFF
    return int(np.random.default_rng(seed).integers(0, 2**32))


def _check_rng(state, rng):
    """A saved bit-generator state of the same kind as ``rng``'s, checked by NumPy on a scratch generator."""
    own = rng.bit_generator.state
    if not isinstance(state, dict) or state.get("bit_generator") != own["bit_generator"]:
        raise ValueError(f"state dict's 'rng' must be the state of a {own['bit_generator']} generator")
    scratch = type(rng.bit_generator)()
    try:
        scratch.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ValueError(f"state dict's 'rng' is not a valid {own['bit_generator']} state: {exc}") from None
