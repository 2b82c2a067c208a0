"""Learning-rate schedulers with torch.optim.lr_scheduler's constructors, values and conventions.

.. code-block:: python

    from hyperopt import AdamW, CosineAnnealingLR
    opt = AdamW(params, lr=1e-3)
    sched = CosineAnnealingLR(opt, T_max=1000)
    for batch in data:
        opt.step(gradients=...)
        sched.step()                   # after the optimizer's step, as in torch

Each class takes the arguments of its torch namesake (``last_epoch`` included) and writes the same
floats into ``group['lr']`` (the recursive "chainable" forms torch uses, so several schedulers can
be stacked, with the same rounding).  ``state_dict()`` / ``load_state_dict()`` hold everything but
the optimizer (for ``LambdaLR``, the state of callable objects; plain functions are not saved), as
torch's do.  ``get_last_lr()`` gives the rates of the last step.

Which number is scheduled.  Every optimizer here keeps its learning rate in ``group['lr']`` except:

* ``AutoSGM``: the scheduled value is ``lr_cfg.lr_init`` (the numerator of its automatic rate; the
  window in ``rc_cfg`` is a second, multiplicative schedule);
* ``HL``: it has no learning rate (a weight moves by ``delta * beta * costate`` with ``delta`` the
  model's time step), so a scheduler over HL raises TypeError; schedule ``group['beta']`` by hand.

The hypergradient optimizers adapt ``group['lr']`` themselves at every step: a scheduler's write
re-bases the adaptation (the recursive forms, StepLR's ``lr *= gamma`` for instance, act on the
adapted value, which is what they do in torch as well).
"""
from __future__ import annotations

import math
import numbers
import types
from bisect import bisect_right
from collections import Counter

__all__ = ["LRScheduler", "LambdaLR", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR",
           "SequentialLR"]


def get_group_lr(optimizer, group) -> float:
    """The learning rate a scheduler works on for ``group``: ``group['lr']``, or AutoSGM's
    ``lr_cfg.lr_init``; TypeError naming the optimizer for one without a learning rate (HL)."""
    if "lr" in group:
        return group["lr"]
    if "lr_cfg" in group:
        return group["lr_cfg"][1]
    raise TypeError(f"{type(optimizer).__name__} has no learning rate in its parameter groups (no 'lr' nor "
                    "'lr_cfg'), so a learning-rate schedule has nothing to act on"
                    + ("; HL moves weights by delta * beta * costate: schedule group['beta'] yourself"
                       if type(optimizer).__name__ == "HL" else ""))


def set_group_lr(group, value) -> None:
    """Write the scheduled learning rate where ``get_group_lr`` read it."""
    if "lr" in group or "lr_cfg" not in group:
        group["lr"] = value
    else:
        cfg = group["lr_cfg"]
        group["lr_cfg"] = cfg._replace(lr_init=value) if hasattr(cfg, "_replace") else \
            type(cfg)((cfg[0], value) + tuple(cfg[2:]))


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"Invalid {name}: {value!r} (expected an integer >= {low})")
    return int(value)


class LRScheduler:
    """Base class: ``base_lrs`` from each group's ``initial_lr``, ``last_epoch`` counting ``step()`` calls.

    ``last_epoch=-1`` (a fresh run) stores ``initial_lr`` in every group that lacks it; a resumed
    run (``last_epoch >= 0``) needs it there already (KeyError otherwise, as in torch).  The
    constructor makes the first step (epoch 0).  Subclasses implement ``get_lr()``.
    """

    def __init__(self, optimizer, last_epoch: int = -1):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        last_epoch = _check_int("last_epoch", last_epoch, -1)
        for i, group in enumerate(optimizer.param_groups):
            lr = get_group_lr(optimizer, group)
            if last_epoch == -1:
                group.setdefault("initial_lr", lr)
            elif "initial_lr" not in group:
                raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] when resuming a "
                               "scheduler with last_epoch >= 0")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self) -> None:
        """Reset the step count and make the first step (the constructor's)."""
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def _current_lrs(self) -> list:
        return [get_group_lr(self.optimizer, g) for g in self.optimizer.param_groups]

    def get_lr(self) -> list:
        """The rates for ``last_epoch`` (after it was advanced); implemented by each schedule."""
        raise NotImplementedError

    def get_last_lr(self) -> list:
        """The rates the last ``step()`` (or the constructor) wrote, one per parameter group."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advance one epoch (or step) and write the new rates; call it after ``optimizer.step()``."""
        self._step_count += 1
        self._update_lr(None)

    def _update_lr(self, epoch) -> None:
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = epoch
            values = self._get_closed_form_lr() if hasattr(self, "_get_closed_form_lr") else self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            set_group_lr(group, lr)
        self._last_lr = self._current_lrs()

    def state_dict(self) -> dict:
        """Everything but the optimizer (a plain dict: save it with the optimizer's own state)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a ``state_dict()`` (the optimizer's state, group rates included, is restored separately)."""
        self.__dict__.update(state_dict)

    def __repr__(self):
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, last_lr={self.get_last_lr()})"


class LambdaLR(LRScheduler):
    """``lr = initial_lr * lr_lambda(epoch)``; one function, or a list with one per group (torch's LambdaLR)."""

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1):
        self.optimizer = optimizer
        if not isinstance(lr_lambda, (list, tuple)):
            self.lr_lambdas = [lr_lambda] * len(optimizer.param_groups)
        else:
            if len(lr_lambda) != len(optimizer.param_groups):
                raise ValueError(f"Expected {len(optimizer.param_groups)} lr_lambdas, but got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        for fn in self.lr_lambdas:
            if not callable(fn):
                raise TypeError(f"lr_lambda must be callable, got {type(fn).__name__}")
        super().__init__(optimizer, last_epoch)

    def state_dict(self) -> dict:
        """As the base class, with ``lr_lambdas`` holding the ``__dict__`` of callable objects
        (None for plain functions and lambdas, which cannot be saved)."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [None if isinstance(fn, types.FunctionType) else dict(fn.__dict__)
                               for fn in self.lr_lambdas]
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a ``state_dict()``, updating callable objects' ``__dict__`` from it."""
        state = dict(state_dict)
        lambdas = state.pop("lr_lambdas")
        self.__dict__.update(state)
        for fn, saved in zip(self.lr_lambdas, lambdas):
            if saved is not None:
                fn.__dict__.update(saved)

    def get_lr(self) -> list:
        """``initial_lr * lr_lambda(last_epoch)`` per group."""
        return [base * fn(self.last_epoch) for fn, base in zip(self.lr_lambdas, self.base_lrs)]


class StepLR(LRScheduler):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs (torch's StepLR)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        self.step_size = _check_int("step_size", step_size, 1)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """The current rates, times ``gamma`` at every multiple of ``step_size``."""
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _get_closed_form_lr(self) -> list:
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the rate by ``gamma`` at each milestone epoch (torch's MultiStepLR; a repeated
    milestone applies gamma that many times)."""

    def __init__(self, optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1):
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """The current rates, times ``gamma`` (per occurrence) at a milestone."""
        if self.last_epoch not in self.milestones:
            return self._current_lrs()
        return [lr * self.gamma ** self.milestones[self.last_epoch] for lr in self._current_lrs()]

    def _get_closed_form_lr(self) -> list:
        milestones = sorted(self.milestones.elements())
        return [base * self.gamma ** bisect_right(milestones, self.last_epoch) for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    """Multiply the rate by ``gamma`` every epoch (torch's ExponentialLR)."""

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """The current rates times ``gamma`` (unchanged at construction)."""
        if self._is_initial:          # a resumed scheduler must not move one step ahead of itself
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _get_closed_form_lr(self) -> list:
        return [base * self.gamma ** self.last_epoch for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from ``initial_lr`` to ``eta_min`` over ``T_max`` epochs (torch's CosineAnnealingLR).

    .. code-block:: text

        lr_t = eta_min + (initial_lr - eta_min) (1 + cos(pi t / T_max)) / 2

    computed recursively as torch does; past ``T_max`` the rate climbs back along the cosine
    (period ``2 T_max``), it does not restart at ``initial_lr``.
    """

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        self.T_max = _check_int("T_max", T_max, 1)
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """The next point of the cosine, from the current rates (torch's recursive form)."""
        lrs = self._current_lrs()
        if self._is_initial:
            return lrs
        if self._step_count == 1 and self.last_epoch > 0:
            return [self.eta_min + (base - self.eta_min) * (1 + math.cos(self.last_epoch * math.pi / self.T_max)) / 2
                    for base in self.base_lrs]
        if (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [lr + (base - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
                    for base, lr in zip(self.base_lrs, lrs)]
        return [(1 + math.cos(math.pi * self.last_epoch / self.T_max))
                / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max)) * (lr - self.eta_min) + self.eta_min
                for lr in lrs]

    def _get_closed_form_lr(self) -> list:
        return [self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base in self.base_lrs]


class LinearLR(LRScheduler):
    """Scale the rate linearly from ``start_factor`` to ``end_factor`` over ``total_iters`` epochs (torch's LinearLR)."""

    def __init__(self, optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5,
                 last_epoch: int = -1):
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError("Starting multiplicative factor expected to be greater than 0 and less or equal to 1.")
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = _check_int("total_iters", total_iters, 1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """The current rates, moved one step along the line from ``start_factor`` to ``end_factor``."""
        lrs = self._current_lrs()
        if self.last_epoch == 0:
            return [lr * self.start_factor for lr in lrs]
        if self._is_initial or self.last_epoch > self.total_iters:
            return lrs
        slope = self.end_factor - self.start_factor
        return [lr * (1.0 + slope / (self.total_iters * self.start_factor + (self.last_epoch - 1) * slope))
                for lr in lrs]

    def _get_closed_form_lr(self) -> list:
        return [base * (self.start_factor + (self.end_factor - self.start_factor)
                        * min(self.total_iters, self.last_epoch) / self.total_iters) for base in self.base_lrs]


class SequentialLR(LRScheduler):
    """Run ``schedulers`` one after another, switching at the ``milestones`` epochs (torch's SequentialLR).

    At a milestone the next scheduler starts from its epoch 0 (its closed form at 0: ``initial_lr``
    times its starting factor).
    """

    def __init__(self, optimizer, schedulers, milestones, last_epoch: int = -1):
        schedulers = list(schedulers)
        milestones = list(milestones)
        if len(schedulers) < 1:
            raise ValueError("SequentialLR expects at least one scheduler, but got no scheduler.")
        for i, s in enumerate(schedulers):
            if not hasattr(s, "optimizer"):
                raise TypeError(f"SequentialLR at index {i} should have `optimizer` as its attribute.")
            if s.optimizer is not optimizer:
                raise ValueError(f"SequentialLR expects all schedulers to belong to the same optimizer, but got "
                                 f"scheduler {type(s).__name__} at index {i} with a different optimizer.")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError("Sequential Schedulers expects number of schedulers provided to be one more than the "
                             f"number of milestone points, but got number of schedulers {len(schedulers)} and the "
                             f"number of milestones to be equal to {len(milestones)}")
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = _check_int("last_epoch", last_epoch, -1) + 1
        self.optimizer = optimizer
        for group in optimizer.param_groups:          # back to the initial rates ...
            set_group_lr(group, group["initial_lr"])
        for s in schedulers:                          # ... and undo the constructors' first steps
            self._undo(s)
        idx = bisect_right(milestones, 0)
        schedulers[idx]._initial_step()
        self._last_lr = schedulers[idx].get_last_lr()

    def _undo(self, sched):
        if hasattr(sched, "_schedulers"):
            for s in sched._schedulers:
                self._undo(s)
        elif hasattr(sched, "last_epoch"):
            sched.last_epoch -= 1

    def step(self) -> None:
        """Advance one epoch in the scheduler whose turn it is (restarting it at its milestone)."""
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self) -> dict:
        """As the base class, with each inner scheduler's ``state_dict()`` under ``_schedulers``."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a ``state_dict()``, the inner schedulers' states included."""
        state = dict(state_dict)
        inner = state.pop("_schedulers")
        self.__dict__.update(state)
        for s, saved in zip(self._schedulers, inner):
            s.load_state_dict(saved)
