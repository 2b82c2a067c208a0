"""AdamW, exactly as torch.optim.AdamW computes it."""
from __future__ import annotations

import math


from .kernels import adamw_update
from .optimizer import Optimizer, check_flag, check_range


class AdamW(Optimizer):
    r"""AdamW (Loshchilov & Hutter), the update of ``torch.optim.AdamW``.

    Paper: I. Loshchilov, F. Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
    https://arxiv.org/abs/1711.05101.  Code followed: ``torch.optim.AdamW``
    (https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html), matched number for number by
    the tests; upstream here (see ``hyperopt``'s docstring) is grilly's NumPy AdamW, which the
    hypergradient optimizers build on.

    .. code-block:: text

        for each parameter p with gradient g (g <- -g if maximize), its own step t <- t + 1:
            p   <- p * (1 - lr * weight_decay)
            m   <- beta1 * m + (1 - beta1) * g
            v   <- beta2 * v + (1 - beta2) * g^2
            v'  <- max(v', v) if amsgrad else v
            p   <- p - lr / (1 - beta1^t) * m / (sqrt(v') / sqrt(1 - beta2^t) + eps)

    Every hyperparameter can be overridden per parameter group and is read at each step.  A
    parameter without a gradient is skipped: no decay, no state, no step count.  (Upstream read
    only the constructor's values and counted steps globally.)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, use_gpu="auto", device=None, comm=None):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize)
        self._validate_group(defaults)
        super().__init__(params, defaults, use_gpu=use_gpu, device=device, comm=comm)

    _host_reads_gradients = False
    _buffer_kinds = {"exp_avg": "elements", "exp_avg_sq": "nonneg elements", "max_exp_avg_sq": "nonneg elements"}

    @property
    def state_buffers(self):
        """``exp_avg``, ``exp_avg_sq`` and, when a group uses amsgrad, ``max_exp_avg_sq``."""
        amsgrad = any(g["amsgrad"] for g in self.param_groups)
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())

    def _validate_group(self, group):
        check_range("lr", group["lr"], 0, label="learning rate")
        check_range("eps", group["eps"], 0, label="epsilon value")
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"Invalid betas: {betas} (expected a pair)")
        for k, b in enumerate(betas):
            check_range("beta", b, 0, 1, high_open=True, label=f"beta parameter at index {k}")
        group["betas"] = tuple(betas)
        check_range("weight_decay", group["weight_decay"], 0, label="weight_decay value")
        check_flag("amsgrad", group["amsgrad"])
        check_flag("maximize", group["maximize"])

    def _add_group(self, group, rebind):
        had_amsgrad = any(g["amsgrad"] for g in self.param_groups)
        super()._add_group(group, rebind)
        if rebind and not had_amsgrad and self.param_groups[-1]["amsgrad"]:
            self._rebind()   # a new state buffer appeared

    def _rebind(self):
        super()._rebind()
        amsgrad = "max_exp_avg_sq" in self.state_buffers
        names = ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq" if amsgrad else "exp_avg_sq")
        self._program = self._backend.program([(adamw_update, names)])

    def _step(self, grads):
        table = self._program.tables[0]
        steps = self._next_steps(grads)
        rows: dict[tuple, list] = {}         # parameters of one group at one step share their scalars
        group_of = self._group_of
        for i, t in steps.items():
            rows.setdefault((group_of[i], t), []).append(i)
        for (gi, t), idx in rows.items():
            table[idx[0] if len(idx) == 1 else idx] = self._update_scalars(self.param_groups[gi], t)  # a row: 5x faster
        self._run(self._program, grads, upload_params=True)
        self._commit_steps(steps)

    @staticmethod
    def _update_scalars(group, t):
        """The adamw_update table row of a parameter of ``group`` at its step ``t`` (derived in double)."""
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        return (1 - lr * group["weight_decay"], 1 - beta1, beta2, 1 - beta2, group["eps"],
                -lr / (1 - beta1 ** t), math.sqrt(1 - beta2 ** t), bool(group["amsgrad"]), bool(group["maximize"]))

    def _next_steps(self, indices) -> dict:
        """Each parameter's step count after this step (its state is created by ``_commit_steps``)."""
        state, steps = self._param_state, {}
        for i in indices:
            st = state.get(i)
            if st is None:
                self._backend.clear(i)           # state may remain from a load or an earlier layout
                steps[i] = 1
            else:
                steps[i] = st["step"] + 1
        return steps

    def _commit_steps(self, steps):
        """The counters move only once the update has run."""
        state = self._param_state
        for i, t in steps.items():
            st = state.get(i)
            if st is None:
                state[i] = {"step": t}
            else:
                st["step"] = t
