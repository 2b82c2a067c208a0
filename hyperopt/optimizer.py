"""The ``Optimizer`` base class: torch.optim conventions for NumPy parameters.

Parameters are NumPy arrays, or objects with ``.data`` (an array) and ``.grad``.  They are kept in
``param_groups`` (dicts with per-group hyperparameters, read again at every step so that a schedule
writing ``group['lr']`` takes effect).  Per-parameter scalar state (step counters) is in
``self.state[i]``, ``i`` being the parameter's index in group order; per-element state (moments,
metrics) lives in the backend, on the device for the Vulkan path, and ``state_of(p)`` returns all of
it as NumPy arrays.

Subclasses declare ``state_buffers`` (per-element state, zero-initialised) and implement
``_step(grads)`` with ``grads`` a dict ``{index: float array}`` of checked gradients.
"""
from __future__ import annotations

import copy
import functools
import math
import numbers
import pickle
import threading

import numpy as np

from .backends import select_backend


def _data(p) -> np.ndarray:
    """The array behind a parameter (an ndarray itself, or an object's ``.data``)."""
    if isinstance(p, np.ndarray):
        return p
    data = getattr(p, "data", None)
    if isinstance(data, np.ndarray):
        return data
    raise TypeError(f"parameters must be NumPy arrays or objects with a .data array, got {type(p).__name__}")


def _serialised(method):
    """One call at a time per optimizer: stepped from two threads, it runs one step after the other."""
    @functools.wraps(method)
    def serialised(self, *args, **kwargs):
        lock = self.__dict__.get("_lock") or self.__dict__.setdefault("_lock", threading.RLock())
        with lock:
            return method(self, *args, **kwargs)
    serialised.serialised = True
    return serialised


class Optimizer:
    #: methods that run under the optimizer's lock, in every subclass that overrides them too
    _serialised_methods = ("step", "state_dict", "load_state_dict", "add_param_group", "state_of", "close")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in cls._serialised_methods:
            fn = cls.__dict__.get(name)
            if callable(fn) and not getattr(fn, "serialised", False):
                setattr(cls, name, _serialised(fn))

    #: names of per-element state arrays every parameter gets on its first step (zeros)
    state_buffers: tuple[str, ...] = ()
    #: group keys that are bookkeeping, not hyperparameters (left out of ``repr``)
    _internal_group_keys: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict, *, use_gpu: bool = False, device: str | None = None):
        self._lock = threading.RLock()
        self.defaults = dict(defaults)
        self.state: dict[int, dict] = {}
        self.param_groups: list[dict] = []
        params = list(params) if not isinstance(params, np.ndarray) else [params]
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        self._backend = select_backend(use_gpu, device)
        for group in params:
            self._add_group(group, rebind=False)
        self._rebind()

    # ------------------------------------------------------------------ groups and parameters
    @property
    def backend(self) -> str:
        """Which backend really runs the kernels: ``"numpy"`` or ``"vulkan:<device name>"``."""
        return self._backend.name

    def params(self) -> list:
        return [p for g in self.param_groups for p in g["params"]]

    @_serialised
    def add_param_group(self, group: dict) -> None:
        self._add_group(group, rebind=True)

    def _add_group(self, group, rebind):
        if not isinstance(group, dict):
            raise TypeError(f"param group must be a dict, got {type(group).__name__}")
        group = dict(group)
        ps = group.get("params")
        if ps is None:
            raise ValueError("param group has no 'params' entry")
        ps = [ps] if isinstance(ps, np.ndarray) or not isinstance(ps, (list, tuple)) else list(ps)
        if not ps:
            raise ValueError("param group has an empty 'params' list")
        seen = {id(p) for p in self.params()}
        for p in ps:
            a = _data(p)
            if a.dtype.kind != "f":
                raise TypeError(f"can only optimize floating-point arrays, got dtype {a.dtype}")
            if id(p) in seen:
                raise ValueError("some parameters appear in more than one parameter group")
            seen.add(id(p))
        group["params"] = ps
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._validate_group(group)
        self.param_groups.append(group)
        if rebind:
            try:
                self._rebind()
            except Exception:   # e.g. a float64 array on the Vulkan backend: the optimizer stays as it was
                self.param_groups.pop()
                self._rebind()
                raise

    def _rebind(self):
        self._backend.bind([_data(p) for p in self.params()], self.state_buffers)
        self._index = {id(p): i for i, p in enumerate(self.params())}
        self._group_of = [gi for gi, g in enumerate(self.param_groups) for _ in g["params"]]

    def _validate_group(self, group: dict) -> None:
        """Raise ValueError for an out-of-range hyperparameter (override per optimizer)."""

    def _revalidate(self) -> None:
        """Check groups a schedule (or the user) changed since the last step, before anything moves."""
        seen = getattr(self, "_validated", None)
        snapshot = [[list(v) if isinstance(v, list) else v for k, v in g.items() if k != "params"]
                    for g in self.param_groups]
        try:
            same = snapshot == seen
        except (TypeError, ValueError):   # e.g. an array-valued hyperparameter
            same = False
        if not same:
            for group in self.param_groups:
                self._validate_group(group)
            if tuple(self.state_buffers) != tuple(self._backend.buffers):
                self._rebind()      # a group switched on an option that needs another state buffer
            self._validated = snapshot

    # ------------------------------------------------------------------ stepping
    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params():
            if not isinstance(p, np.ndarray) and getattr(p, "grad", None) is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad[...] = 0

    @_serialised
    def step(self, closure=None, gradients=None):
        """One optimization step; returns the closure's loss (None without a closure)."""
        loss = closure() if closure is not None else None
        self._revalidate()
        grads = self._collect_gradients(gradients)
        self._step(grads)
        return loss

    def _step(self, grads: dict[int, np.ndarray]) -> None:
        raise NotImplementedError

    def _collect_gradients(self, gradients) -> dict[int, np.ndarray]:
        """Gradients by parameter index, checked (shape, dtype, finite) before anything changes."""
        params = self.params()
        raw: dict[int, object] = {}
        if gradients is None:
            for i, p in enumerate(params):
                g = None if isinstance(p, np.ndarray) else getattr(p, "grad", None)
                if g is not None:
                    raw[i] = g
        elif isinstance(gradients, dict):
            for key, g in gradients.items():
                i = self._index.get(key)
                if i is None:
                    raise KeyError(f"gradient given for unknown parameter id {key}: it is in no parameter group "
                                   "(gradients are keyed by id(param))")
                if g is not None:
                    raw[i] = g
            for i, p in enumerate(params):   # .grad fills in what the dict leaves out
                if i not in raw and not isinstance(p, np.ndarray) and getattr(p, "grad", None) is not None:
                    raw[i] = p.grad
        elif isinstance(gradients, (list, tuple)):
            if len(gradients) != len(params):
                raise ValueError(f"got {len(gradients)} gradients for {len(params)} parameters")
            raw = {i: g for i, g in enumerate(gradients) if g is not None}
        else:
            raise TypeError("gradients must be a dict {id(param): grad}, a list aligned with the parameters, or None")

        grads = {}
        for i, g in raw.items():
            p = _data(params[i])
            if not isinstance(g, np.ndarray):
                g = np.asarray(getattr(g, "data", g))
            if g.dtype.kind not in "fiu":
                raise TypeError(f"gradient of parameter {i} has dtype {g.dtype}, which cannot be cast to {p.dtype}")
            if g.shape != p.shape:
                raise ValueError(f"gradient of parameter {i} has shape {g.shape}, expected {p.shape}")
            if g.dtype != p.dtype:
                g = g.astype(p.dtype)
            if not _all_finite(g):
                raise ValueError(f"gradient of parameter {i} (shape {p.shape}) contains NaN or infinity")
            grads[i] = g
        return grads

    # ------------------------------------------------------------------ state
    @_serialised
    def state_of(self, p) -> dict:
        """Everything the optimizer keeps for parameter ``p`` (copies on the Vulkan path)."""
        i = self._index[id(p)] if not isinstance(p, int) else p
        out = copy.deepcopy(self.state.get(i, {}))
        if i in self.state:
            for name in self._backend.buffers:
                out[name] = self._backend.read(name, i)
        return out

    def _group_extra(self) -> list[dict]:
        """Per-group state that is not a hyperparameter (override; must be picklable)."""
        return [{} for _ in self.param_groups]

    def _load_group_extra(self, extra: list[dict]) -> None:
        pass

    def group_sums(self, segment_sums: np.ndarray) -> np.ndarray:
        """Per-group totals (float64) of per-parameter sums such as ``backend.run`` returns."""
        out = np.zeros((len(self.param_groups),) + segment_sums.shape[1:], np.float64)
        np.add.at(out, np.asarray(self._group_of), segment_sums)
        return out

    @_serialised
    def state_dict(self) -> dict:
        """A portable snapshot: parameters by index, arrays as NumPy copies, picklable."""
        groups, start = [], 0
        for g in self.param_groups:
            entry = {k: v for k, v in g.items() if k != "params"}
            entry["params"] = list(range(start, start + len(g["params"])))
            start += len(g["params"])
            groups.append(entry)
        state = {i: self.state_of(i) for i in sorted(self.state)}
        return {"state": state, "param_groups": groups, "extra": self._group_extra()}

    @_serialised
    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a ``state_dict()``.  All or nothing: a dict that fails a check part-way leaves
        the optimizer exactly as it was."""
        backup = self.state_dict()
        try:
            self._load_state(pickle.loads(pickle.dumps(state_dict)))   # never alias the caller's arrays
        except Exception:
            self._load_state(backup)
            raise

    def _load_state(self, state_dict: dict) -> None:
        """``load_state_dict`` without the rollback (subclasses extend this one)."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(groups)} parameter groups, optimizer has {len(self.param_groups)}")
        for gi, (mine, theirs) in enumerate(zip(self.param_groups, groups)):
            if len(theirs["params"]) != len(mine["params"]):
                raise ValueError(f"group {gi} has {len(theirs['params'])} parameters in the state dict, "
                                 f"{len(mine['params'])} in the optimizer")
        params = self.params()
        for i, entry in state_dict["state"].items():
            if not 0 <= int(i) < len(params):
                raise ValueError(f"state dict has state for parameter {i}, optimizer has {len(params)}")
            shape = _data(params[int(i)]).shape
            for name, value in entry.items():
                if isinstance(value, np.ndarray) and value.shape != shape and name in self._backend.buffers:
                    raise ValueError(f"state '{name}' of parameter {i} has shape {value.shape}, expected {shape}")
                if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not _all_finite(value):
                    raise ValueError(f"state '{name}' of parameter {i} contains NaN or infinity")
        for mine, theirs in zip(self.param_groups, groups):
            candidate = dict(mine, **{k: v for k, v in theirs.items() if k != "params"})
            self._validate_group(candidate)
        for mine, theirs in zip(self.param_groups, groups):
            mine.update({k: v for k, v in theirs.items() if k != "params"})
        if tuple(self.state_buffers) != tuple(self._backend.buffers):
            self._rebind()          # e.g. amsgrad switched on: its buffer must exist before the write
        self.state = {}
        for i in range(len(params)):
            self._backend.clear(i)  # parameters the dict has no state for start fresh
        for i, entry in state_dict["state"].items():
            i = int(i)
            self.state[i] = {k: v for k, v in entry.items() if k not in self._backend.buffers}
            for name in self._backend.buffers:
                if name in entry:
                    self._backend.write(name, i, entry[name])
        self._load_group_extra(state_dict.get("extra", [{} for _ in groups]))

    def reload_params(self) -> None:
        """Tell the optimizer that parameter arrays were changed in place outside ``step()``.

        The Vulkan path keeps the parameters on the device between steps and copies them back after
        each step; edits made to the arrays in between are only seen after this call.  (NumPy
        updates the arrays themselves, so there it does nothing.)
        """
        self._backend.reload_params()

    @_serialised
    def close(self) -> None:
        """Release device memory now (it is also released when the optimizer is garbage collected)."""
        self._backend.close()

    def __repr__(self):
        lines = [f"{type(self).__name__} (backend={self.backend})"]
        for gi, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {gi}")
            for k in sorted(g):
                if k != "params" and k not in self._internal_group_keys:
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines)


def _all_finite(a: np.ndarray) -> bool:
    if a.size <= 1 << 16:              # small: the plain check is cheaper than the errstate below
        return bool(np.isfinite(a).all())
    # Large: one fast pass.  A NaN or infinity always makes the sum of squares non-finite (squares
    # cannot cancel); a non-finite sum of finite values (overflow past ~1.8e19) is rare, so only
    # then is the exact check paid for.
    flat = a.reshape(-1) if a.flags.c_contiguous else a.ravel()
    with np.errstate(over="ignore", invalid="ignore"):
        s = float(np.dot(flat, flat))
    return math.isfinite(s) or bool(np.isfinite(a).all())


def check_range(name: str, value, low=None, high=None, *, low_open=False, high_open=False, label=None):
    """torch-style check: raise ``ValueError('Invalid <label>: <value>')`` when out of range."""
    label = label or name
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"Invalid {label}: {value}")
