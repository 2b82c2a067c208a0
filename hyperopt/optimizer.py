"""The ``Optimizer`` base class: torch.optim conventions for NumPy parameters.

Parameters are NumPy arrays, or objects with ``.data`` (an array) and ``.grad``.  They are kept in
``param_groups`` (dicts with per-group hyperparameters, read again at every step so that a schedule
writing ``group['lr']`` takes effect).  ``opt.state`` is keyed by parameter id, as gradients are
(``opt.state[id(W)]``: torch keys state by the parameter itself, and arrays are unhashable); each
entry holds everything kept for that parameter, per-element arrays included, as copies.  Inside,
per-parameter scalar state (step counters) is in ``self._param_state[i]``, ``i`` being the
parameter's index in group order, and per-element state (moments, metrics) lives in the backend,
on the device for the Vulkan path.

``state_dict()`` is plain data (by parameter index) and ``load_state_dict`` checks every entry before
anything changes; ``hyperopt.save``/``hyperopt.load`` (``checkpoint.py``) put it in a file without
pickle.  Optimizers themselves are neither pickled nor copied (they hold the caller's arrays and
device resources): the error says to use those two.

Subclasses declare ``state_buffers`` (per-element state, zero-initialised) and implement
``_step(grads)`` with ``grads`` a dict ``{index: float array}`` of checked gradients.

The caller's arrays are the truth.  Every step starts from the parameter arrays as they are then:
edits in place, ``p.data = new_array`` and a replaced entry of ``param_groups[g]['params']`` (same
shape and dtype: the state is kept) are all seen, on every backend (the Vulkan path uploads the
parameters with each step).  A step is all or nothing: everything is checked first, step
counters move only with the update, and Ctrl-C during the update is raised once it is complete.
"""
from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
import math
import numbers
import signal
import threading

# signal's own C functions: the `signal` module's wrappers convert handlers to and from enums, which
# cost more than the rest of a small step's host work (two calls every step)
import _signal

import numpy as np

from .backends import fit_backend, select_backend
from .state_checks import ShardPiece, check_entry, check_keys, plain_copy

#: why an optimizer is not pickled or copied, and what to use instead
_NO_COPY = ("{} objects cannot be {}: an optimizer is bound to the caller's parameter arrays and to device "
            "resources.  Save a checkpoint with hyperopt.save(optimizer, path) and restore it into a new optimizer "
            "over the same parameters with hyperopt.load(optimizer, path) (or use state_dict()/load_state_dict()).")

try:
    from numpy.lib.array_utils import byte_bounds as _byte_bounds
except ImportError:       # NumPy < 2
    _byte_bounds = np.byte_bounds


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
    #: False where ``_step`` only hands the gradients to the backend: with ``comm`` each rank then
    #: gets just its shard of the averaged gradient (one exchange fewer per step)
    _host_reads_gradients: bool = True
    #: the step changes nothing (or undoes what it changed) until its first backend run, so the
    #: fused backend may check the gradients there, inside a first pass that only reads
    _defers_gradient_check: bool = False
    #: group keys that are bookkeeping, not hyperparameters (left out of ``repr``)
    _internal_group_keys: tuple[str, ...] = ()
    #: with ``comm``: an error of this step's checks, raised on every rank by the agreement
    _held_error: Exception | None = None

    def __init__(self, params, defaults: dict, *, use_gpu="auto", device=None, comm=None):
        self.defaults = dict(defaults)
        self._param_state: dict[int, dict] = {}
        self.param_groups: list[dict] = []
        params = list(params) if not isinstance(params, np.ndarray) else [params]
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        self.comm = comm
        if comm is None:
            self._backend = select_backend(use_gpu, device)
        else:                   # data-parallel over MPI: see hyperopt/distributed.py
            from .distributed import distributed_backend
            self._backend = distributed_backend(comm, use_gpu, device)
        for group in params:
            self._add_group(group, rebind=False)
        self._rebind()

    # ------------------------------------------------------------------ groups and parameters
    @property
    def backend(self) -> str:
        """Which backend really runs the kernels: ``"numpy"`` or ``"vulkan:<device name>"``."""
        return self._backend.name

    def params(self) -> list:
        """Every parameter, in group order: position ``i`` here is the index used by ``state_dict()``."""
        return [p for g in self.param_groups for p in g["params"]]

    @_serialised
    def add_param_group(self, group: dict) -> None:
        """Add a group ``{"params": [...], <hyperparameter overrides>}``; missing keys take the defaults."""
        self._check_open()

        def check():
            self._sync_params()      # arrays rebound since the last step keep their state
            self._check_new_group(group)
        self._agreed(check)          # with comm, an error on any rank is raised on every rank
        self._add_group(group, rebind=True)

    def _check_new_group(self, group) -> None:
        """Raise what ``_add_group`` would raise for ``group``, changing nothing."""
        self._checked_group(group)

    def _add_group(self, group, rebind):
        group = self._checked_group(group)
        self.param_groups.append(group)
        if rebind:
            try:
                self._rebind()
            except Exception:   # e.g. a float64 array on the Vulkan backend: the optimizer stays as it was
                self.param_groups.pop()
                self._rebind()
                raise

    def _checked_group(self, group) -> dict:
        """``group`` checked and completed with the defaults (a new dict); changes nothing."""
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
            _check_param_array(a, "parameter")
            if id(p) in seen:
                raise ValueError("some parameters appear in more than one parameter group")
            seen.add(id(p))
        _check_no_aliasing([_data(p) for p in self.params()], [_data(p) for p in ps])
        group["params"] = ps
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._validate_group(group)
        return group

    def _rebind(self):
        if getattr(self, "_arrays", None) is not None:
            self._sync_params(prefix=True)   # the backend carries state over by array identity
        params = self.params()
        arrays = [_data(p) for p in params]
        self._backend = fit_backend(self._backend, arrays)    # e.g. float64 on a device without shaderFloat64
        self._backend.bind(arrays, self.state_buffers)
        self._track(params, arrays)
        self._group_of = [gi for gi, g in enumerate(self.param_groups) for _ in g["params"]]

    # ------------------------------------------------------------------ the caller's arrays
    def _track(self, params, arrays):
        """Remember which objects and arrays the backend holds (``_sync_params`` compares)."""
        self._param_objs = list(params)
        self._arrays = list(arrays)
        self._shapes = [a.shape for a in arrays]
        self._index = {id(p): i for i, p in enumerate(params)}
        self._roots = {id(_root(a)) for a in arrays}

    def _sync_params(self, prefix=False):
        """Adopt the arrays the caller holds now: ``p.data = new_array`` or a replaced entry of
        ``param_groups[g]['params']``.  A new array of the same shape and dtype takes the place of
        the old one (the state is kept); anything else is refused before anything changes.
        (``prefix``: only the parameters the backend already holds, during a layout change.)"""
        objs, arrays, shapes = self._param_objs, self._arrays, self._shapes
        params = [p for g in self.param_groups for p in g["params"]]
        n = min(len(objs), len(params)) if prefix else len(objs)
        if len(params) != n and not prefix:
            raise ValueError(f"the optimizer holds {n} parameters but param_groups now list {len(params)}: "
                             "add parameters with add_param_group(), never by editing a group's list")
        changed = []
        for i in range(n):
            p = params[i]
            a = p if type(p) is np.ndarray else _data(p)
            if a is not arrays[i] or p is not objs[i]:
                changed.append((i, p, a))
            elif a.shape != shapes[i]:
                raise ValueError(f"parameter {i} was reshaped in place from {shapes[i]} to {a.shape}; "
                                 "the optimizer's state has the old shape")
            elif not a.flags.writeable:
                raise ValueError(f"parameter {i} (shape {a.shape}) is read-only: the optimizer updates it in place")
        if not changed:
            return
        backend_check = getattr(self._backend, "check_param", None)   # a backend's own limits
        for i, p, a in changed:
            old = arrays[i]
            _check_param_array(a, f"parameter {i}")
            if a.shape != old.shape or a.dtype != old.dtype:
                raise ValueError(f"parameter {i} was rebound to an array of shape {a.shape} and dtype {a.dtype}, "
                                 f"but the optimizer holds state for shape {old.shape} and dtype {old.dtype}: "
                                 "rebind to an array of the same shape and dtype, or build a new optimizer")
            if backend_check is not None:
                backend_check(i, a)
        new_arrays = list(arrays)
        for i, _, a in changed:
            new_arrays[i] = a
        _check_no_aliasing([], new_arrays)
        for i, p, a in changed:
            if a is not arrays[i]:
                self._backend.set_param(i, a)
                self._param_rebound(i, a)
        self._track(params, new_arrays + [_data(p) for p in params[n:]])

    def _param_rebound(self, i, array) -> None:
        """Parameter i now lives in ``array`` (override to re-key anything kept by array identity)."""

    def _validate_group(self, group: dict) -> None:
        """Raise ValueError for an out-of-range hyperparameter (override per optimizer)."""

    def _group_values(self) -> list:
        """Every group's hyperparameters as plain values, to compare from one step to the next."""
        return [[list(v) if isinstance(v, list) else v for k, v in g.items() if k != "params"]
                for g in self.param_groups]

    def _groups_validated(self) -> None:
        """The optimizer itself set group values its checks accept (an adapted lr, clipped to its
        range): the next step need not check them again."""
        self._validated = self._group_values()

    def _revalidate(self) -> None:
        """Check groups a schedule (or the user) changed since the last step, before anything moves."""
        seen = getattr(self, "_validated", None)
        snapshot = self._group_values()
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
        """Clear ``.grad`` on parameter objects: set it to None, or to zeros with ``set_to_none=False``.

        Plain arrays carry no gradient (gradients are passed to ``step``), so for them this does nothing.
        """
        for p in self.params():
            if not isinstance(p, np.ndarray) and getattr(p, "grad", None) is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad[...] = 0

    @_serialised
    def step(self, closure=None, gradients=None):
        """One optimization step; returns the closure's loss (None without a closure).

        ``closure``: an optional callable that recomputes and returns the loss (called first).
        ``gradients``, in any of these forms (one array per parameter, its shape; cast to its dtype):

        * a dict ``{id(param): grad}`` (parameters absent from it, or with None, get no step,
          unless they are objects with a ``.grad``, which then fills in);
        * a list or tuple aligned with ``params()`` (None entries: no step for that parameter);
        * None: the ``.grad`` attribute of parameter objects (objects with ``.data`` and ``.grad``).

        A parameter without a gradient is skipped entirely.  NumPy-array parameters carry no
        ``.grad``, so for them ``gradients=`` is required (``step()`` without it raises).

        All or nothing: the gradients (known parameter, shape, numeric dtype, finite, squares
        finite), the parameter arrays and the hyperparameters are checked before anything
        changes; a bad one raises KeyError, ValueError or TypeError naming the parameter, leaving
        parameters and state as they were.  An interrupt (Ctrl-C) arriving during the update is
        held until parameters, state and step counters are all at the next step.  Some optimizers
        add keyword arguments (HCNaturalGrad ``branches=``, HL ``h_grad=``) or return more
        (HIOptimizer: its status tuple); see their ``step``.
        """
        loss = None
        with self._until_agreed():
            self._check_step_args(closure, gradients)
            loss = closure() if closure is not None else None
            self._revalidate()
            self._sync_params()
        grads = self._collect_gradients(gradients)
        with _interrupts_deferred():
            self._step(grads)
        return loss

    def _until_agreed(self):
        """Context for a step's checks before its gradients are collected.  Without ``comm`` an
        error propagates.  With ``comm`` it is held (the rest of the block is skipped) and raised
        on every rank by the agreement in ``_collect_gradients``: a rank that failed alone would
        leave the others waiting in a collective."""
        return _HeldUntilAgreed(self)

    def _check_step_args(self, closure, gradients, other_sources=False):
        """The closure slot takes a callable; array parameters need ``gradients=``."""
        self._check_open()
        if closure is not None and not callable(closure):
            raise TypeError(f"step() got a {type(closure).__name__} where the closure goes: pass gradients "
                            "as step(gradients=[...]) (a list aligned with the parameters, or a dict "
                            "{id(param): grad})")
        if gradients is None and not other_sources and all(type(p) is np.ndarray for p in self._param_objs):
            raise ValueError("step() has no gradients: the parameters are NumPy arrays, which carry no .grad; "
                             "pass them as step(gradients=[...]) (a list aligned with the parameters, or a "
                             "dict {id(param): grad})")

    def _check_open(self):
        if getattr(self, "_closed", False):
            raise RuntimeError(f"this {type(self).__name__} was closed (close() released its buffers); "
                               "build a new optimizer")

    def _check_tables(self, program):
        """Refuse the step when a host-side scalar is not finite (e.g. a hyperparameter beyond
        float32's range), before anything changes."""
        for table in program.tables:
            # a finite sum means finite entries (an inf or NaN entry makes the sum inf or NaN); only
            # a sum that overflows needs the entries looked at one by one.  A small table is summed
            # as Python floats (doubles, which float32 entries cannot overflow): a third of a ufunc's cost.
            total = sum(table.ravel().tolist()) if table.size <= 64 else np.add.reduce(table, axis=None)
            if not math.isfinite(total) and not np.isfinite(table).all():
                raise FloatingPointError(f"{type(self).__name__}: this step's scalars are not finite "
                                         "(a hyperparameter beyond the float32 range?); step refused")

    def _run(self, program, grads, **kwargs):
        """``backend.run`` after ``_check_tables``."""
        self._check_tables(program)
        return self._backend.run(program, grads, **kwargs)

    def _step(self, grads: dict[int, np.ndarray]) -> None:
        raise NotImplementedError

    def _collect_gradients(self, gradients, *, check=None, same=None) -> dict[int, np.ndarray]:
        """Gradients by parameter index, checked (shape, dtype, finite) before anything changes.

        ``check()`` validates the step's other inputs; ``same()`` returns bytes that must be equal on
        every rank.  With ``comm`` all of it runs on every rank and the ranks agree on the outcome
        before the gradients are averaged over them."""
        if self.comm is not None:
            held, self._held_error = self._held_error, None

            def checks():
                if held is not None:       # an error of this step's earlier checks (``_until_agreed``)
                    raise held
                if check is not None:
                    check()
            return self._backend.collect(self._collect_local_gradients, gradients, checks, same,
                                         full=self._host_reads_gradients)
        if check is not None:
            check()
        return self._collect_local_gradients(gradients)

    def _collect_local_gradients(self, gradients) -> dict[int, np.ndarray]:
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
        arrays, roots = self._arrays, self._roots
        for i, g in raw.items():
            p = arrays[i]
            if type(g) is not np.ndarray:   # masked arrays too: their hidden values count
                g = np.asarray(g) if isinstance(g, np.ndarray) else np.asarray(getattr(g, "data", g))
            dtype = g.dtype
            if dtype.kind not in "fiu":
                raise TypeError(f"gradient of parameter {i} has dtype {dtype}, which cannot be cast to {p.dtype}")
            if g.shape != p.shape:
                raise ValueError(f"gradient of parameter {i} has shape {g.shape}, expected {p.shape}")
            if dtype != p.dtype:
                g = g.astype(p.dtype)
            elif id(_root(g)) in roots and _shares_any(g, arrays):
                g = g.copy()                 # the update writes the parameters while it reads g
            grads[i] = g
        compiled_check = getattr(self._backend, "check_gradients", None)   # the fused backend's one pass
        if compiled_check is None:
            _check_magnitudes(grads, arrays)
        elif self._defers_gradient_check and self.comm is None:
            # the backend checks them in the step's first run, before anything moves
            compiled_check(grads, _square_limit_of_dtype, lambda bad: _refuse_gradient(bad, grads[bad], arrays),
                           self._read_only_program())
        else:
            bad = compiled_check(grads, _square_limit_of_dtype)
            if bad is not None:
                _refuse_gradient(bad, grads[bad], arrays)
        return grads

    def _read_only_program(self):
        """The program this step runs first, if its first kernel only reads (the gradient check can
        then ride on that pass), else None; asked only where ``_defers_gradient_check``."""
        return None

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> "ParamState":
        """Per-parameter state keyed by ``id(param)``: ``opt.state[id(W)]`` is ``state_of(W)``
        (step counters and every per-element buffer, as copies).  Parameters that have not stepped
        have no entry.  A read-only view; ``state_dict()`` is the portable, by-index form."""
        return ParamState(self)

    @_serialised
    def state_of(self, p) -> dict:
        """Everything the optimizer keeps for parameter ``p`` (copies on the Vulkan path)."""
        self._check_open()
        i = self._index[id(p)] if not isinstance(p, int) else p
        out = copy.deepcopy(self._param_state.get(i, {}))
        if i in self._param_state:
            local = self.__dict__.get("_pieces_only", False)
            for name in self._backend.buffers:
                if not local:
                    out[name] = self._backend.read(name, i)
                elif self.comm is not None:
                    out[name] = self._backend.read_piece(name, i, copy=local != "views")
                else:         # one process: its piece is the whole buffer
                    full = np.asarray(self._backend.read(name, i))
                    out[name] = ShardPiece(full.reshape(-1), 0, full.size, full.shape, i)
        return out

    def _local_state_dict(self, pieces=None, views: bool = False) -> dict:
        """``state_dict()`` without a collective: each per-element buffer as this rank's
        ``ShardPiece`` of it (never the whole buffer under ``comm``).  ``pieces`` defaults to
        whether there is a ``comm``; without one, ``pieces=True`` gives whole-buffer pieces.
        ``views=True`` (under comm): the pieces may be views of the live buffers, for a caller that
        holds the optimizer's lock for as long as it reads them (``hyperopt.save``)."""
        if pieces is None:
            pieces = getattr(self, "comm", None) is not None
        if not pieces:
            return self.state_dict()
        with self._lock_of():
            self._pieces_only = "views" if views else True
            try:
                return self.state_dict()
            finally:
                self._pieces_only = False

    def _lock_of(self):
        return self.__dict__.get("_lock") or self.__dict__.setdefault("_lock", threading.RLock())

    def _group_extra(self) -> list[dict]:
        """Per-group state that is not a hyperparameter (override; plain data: numbers, lists, arrays)."""
        return [{} for _ in self.param_groups]

    def _load_group_extra(self, extra: list[dict]) -> None:
        pass

    def group_sums(self, segment_sums: np.ndarray) -> np.ndarray:
        """Per-group totals (float64) of per-parameter sums such as ``backend.run`` returns."""
        out = np.zeros((len(self.param_groups),) + segment_sums.shape[1:], np.float64)
        np.add.at(out, np.asarray(self._group_of), segment_sums)
        return out

    #: per-parameter state that is not a state buffer: name -> kind (see ``state_checks.check_entry``)
    _state_kinds: dict[str, str] = {"step": "count"}
    #: entries every parameter's state must have in a loaded dict
    _required_state: tuple[str, ...] = ("step",)
    #: every per-element buffer a loaded dict may carry: name -> kind ("elements" or "nonneg elements")
    _buffer_kinds: dict[str, str] = {}

    @_serialised
    def state_dict(self) -> dict:
        """A portable snapshot: parameters by index, arrays as NumPy copies, the optimizer's class
        name under ``"optimizer"``.  Plain data only (dicts, lists, numbers, strings, arrays):
        ``hyperopt.save`` writes it without pickle."""
        self._check_open()
        groups, start = [], 0
        for g in self.param_groups:
            entry = {k: v for k, v in g.items() if k != "params"}
            entry["params"] = list(range(start, start + len(g["params"])))
            start += len(g["params"])
            groups.append(entry)
        state = {i: self.state_of(i) for i in sorted(self._param_state)}
        return {"optimizer": type(self).__name__, "state": state, "param_groups": groups,
                "extra": self._group_extra()}

    @_serialised
    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a ``state_dict()`` of this optimizer class.  Every entry is checked first (class,
        groups, types, ranges, finiteness, shapes); a dict that fails anywhere raises and leaves the
        optimizer exactly as it was."""
        self._check_open()
        checked = self._agreed(lambda: self._check_state_dict(plain_copy(state_dict)))   # a copy: never alias
        backup = self._local_state_dict()     # under comm: this rank's pieces, not the whole state
        with _interrupts_deferred():             # Ctrl-C waits until the load (or its rollback) is done
            try:
                self._load_state(checked)
            except BaseException:
                self._load_state(self._check_state_dict(backup))
                raise

    def _agreed(self, fn):
        """``fn()``; with ``comm``, every rank raises if it raised on any rank (before a collective)."""
        return fn() if getattr(self, "comm", None) is None else self._backend.agree(fn)

    def _check_state_dict(self, sd) -> dict:
        """``sd`` checked entry by entry and normalised (in place), or an error; changes nothing
        in the optimizer.  Subclasses extend it for their own entries."""
        self._check_made_by(sd)
        for key in ("state", "param_groups"):
            if key not in sd:
                raise ValueError(f"state dict has no '{key}' entry")
        groups = sd["param_groups"]
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self.param_groups):
            n = len(groups) if isinstance(groups, (list, tuple)) else type(groups).__name__
            raise ValueError(f"loaded state dict has {n} parameter groups, optimizer has {len(self.param_groups)}")
        start, checked = 0, []
        for gi, (mine, theirs) in enumerate(zip(self.param_groups, groups)):
            if not isinstance(theirs, dict):
                raise ValueError(f"param group {gi} of the state dict is a {type(theirs).__name__}, not a dict")
            n = len(mine["params"])
            if list(theirs.get("params", ())) != list(range(start, start + n)):
                raise ValueError(f"group {gi} has parameters {theirs.get('params')} in the state dict, expected "
                                 f"the indices {list(range(start, start + n))} ({n} parameters)")
            start += n
            unknown = sorted(set(theirs) - set(mine), key=str)
            if unknown:
                raise ValueError(f"param group {gi} of the state dict has unknown entries {unknown}")
            candidate = dict(mine, **{k: v for k, v in theirs.items() if k != "params"})
            self._validate_group(candidate)          # types and ranges, as for the constructor
            checked.append(dict({k: v for k, v in candidate.items() if k in theirs}, params=theirs["params"]))
        sd["param_groups"] = checked
        params = [_data(p) for p in self.params()]
        state = sd["state"]
        if not isinstance(state, dict):
            raise ValueError(f"state dict's 'state' must be a dict by parameter index, got {type(state).__name__}")
        kinds = dict(self._state_kinds, **self._buffer_kinds)
        out = {}
        for i, entry in state.items():
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(params):
                raise ValueError(f"state dict has state for parameter {i!r}, optimizer has {len(params)} "
                                 f"(state is keyed by parameter index)")
            check_keys(entry, f"state of parameter {i}", kinds, self._required_state)
            out[i] = {name: check_entry(kinds[name], value, f"state '{name}' of parameter {i}", params[i])
                      for name, value in entry.items()}
        sd["state"] = out
        extra = sd.get("extra", [{} for _ in groups])
        if not isinstance(extra, (list, tuple)) or len(extra) != len(groups):
            raise ValueError(f"state dict's 'extra' must be a list with one dict per parameter group ({len(groups)})")
        sd["extra"] = [self._check_group_extra(gi, check_keys(e, f"group state {gi}", self._group_extra_kinds()))
                       for gi, e in enumerate(extra)]
        return sd

    def _check_made_by(self, sd) -> None:
        """Refuse anything but a dict made by this optimizer class."""
        if not isinstance(sd, dict):
            raise TypeError(f"state dict must be a dict, got {type(sd).__name__}")
        made_by = sd.get("optimizer")
        if made_by != type(self).__name__:
            made_by = made_by if isinstance(made_by, str) else "an unknown optimizer (it has no 'optimizer' entry)"
            raise ValueError(f"state dict was made by {made_by}, not {type(self).__name__}: "
                             "an optimizer loads only its own class's state")

    def _group_extra_kinds(self) -> tuple[str, ...]:
        """Names a group's extra state may have (override with ``_group_extra``)."""
        return ()

    def _check_group_extra(self, gi: int, extra: dict) -> dict:
        """Group ``gi``'s extra state checked and normalised (override with ``_load_group_extra``)."""
        return extra

    def _load_state(self, state_dict: dict) -> None:
        """``load_state_dict`` without the checks and the rollback (``state_dict`` is checked)."""
        for mine, theirs in zip(self.param_groups, state_dict["param_groups"]):
            mine.update({k: v for k, v in theirs.items() if k != "params"})
        if tuple(self.state_buffers) != tuple(self._backend.buffers):
            self._rebind()          # e.g. amsgrad switched on: its buffer must exist before the write
        self._param_state = {}
        for i in range(len(self.params())):
            self._backend.clear(i)  # parameters the dict has no state for start fresh
        for i, entry in state_dict["state"].items():
            self._param_state[i] = {k: v for k, v in entry.items() if k not in self._backend.buffers}
            for name in self._backend.buffers:
                if name in entry:
                    self._backend.write(name, i, entry[name])
        self._load_group_extra(state_dict["extra"])

    # ------------------------------------------------------------------ copies
    def __reduce_ex__(self, protocol):
        raise TypeError(_NO_COPY.format(type(self).__name__, "pickled"))

    def __copy__(self):
        raise TypeError(_NO_COPY.format(type(self).__name__, "copied"))

    def __deepcopy__(self, memo):
        raise TypeError(_NO_COPY.format(type(self).__name__, "copied"))

    def reload_params(self) -> None:
        """No longer needed: every step starts from the parameter arrays as they are (in-place
        edits, ``p.data`` rebinding and restores are all seen, on every backend).  Kept so that
        older code runs; it copies the arrays to the device once more, which changes nothing."""
        self._check_open()
        self._backend.reload_params()

    @_serialised
    def close(self) -> None:
        """Release device memory now (it is also released when the optimizer is garbage collected).
        Any later use of the optimizer raises RuntimeError; closing twice is harmless."""
        self._closed = True
        self._backend.close()

    def __repr__(self):
        lines = [f"{type(self).__name__} (backend={self.backend})"]
        for gi, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {gi}")
            for k in sorted(g):
                if k != "params" and k not in self._internal_group_keys:
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines)


_SQUARE_LIMITS: dict = {}


def _square_limit(dtype) -> float:
    """The largest magnitude whose square is finite in ``dtype`` (a Python float)."""
    limit = _SQUARE_LIMITS.get(dtype)
    if limit is None:
        limit = _SQUARE_LIMITS[dtype] = math.sqrt(float(np.finfo(dtype).max)) if dtype.kind == "f" else math.inf
    return limit


def _square_limit_of_dtype(dtype):
    """``_square_limit`` as a value of ``dtype`` itself, rounded down: comparing an element with it in
    its own precision decides exactly as comparing in double does."""
    key = ("own", dtype)
    limit = _SQUARE_LIMITS.get(key)
    if limit is None:
        exact = _square_limit(dtype)
        limit = dtype.type(exact)
        if float(limit) > exact:
            limit = np.nextafter(limit, dtype.type(0))
        _SQUARE_LIMITS[key] = limit
    return limit


def _check_magnitudes(grads, arrays):
    """Every gradient finite, with finite squares.  Small gradients are checked together (one
    concatenation instead of a call per tensor); the one at fault is looked for only on failure."""
    small: dict = {}
    for i, g in grads.items():
        if g.size <= 4096:
            small.setdefault(g.dtype, []).append(i)
        elif not _all_finite(g):
            _refuse_gradient(i, g, arrays)
    for dtype, idx in small.items():
        if len(idx) > 1:
            joined = np.concatenate([grads[i].reshape(-1) for i in idx])
            if _all_finite(joined):
                continue
        for i in idx:
            if not _all_finite(grads[i]):
                _refuse_gradient(i, grads[i], arrays)


def _refuse_gradient(i, g, arrays):
    shape = arrays[i].shape
    if not np.isfinite(g).all():
        raise ValueError(f"gradient of parameter {i} (shape {shape}) contains NaN or infinity")
    raise ValueError(f"gradient of parameter {i} (shape {shape}) has an element beyond {_square_limit(g.dtype):.3g}, "
                     f"whose square overflows {g.dtype}; step refused")


def _all_finite(a: np.ndarray) -> bool:
    """Every element finite and with a finite square in its own dtype (|a| <= sqrt(max)): an
    element beyond that (1.8e19 in float32) would overflow the optimizers' second moments."""
    if a.dtype.kind != "f" or a.size == 0:
        return True
    if a.size <= 1 << 16:              # small: the exact check is cheaper than the errstate below
        return bool(np.abs(a).max() <= _square_limit(a.dtype))    # NaN compares False
    # Large: one fast pass.  A NaN or infinity, or an element whose square overflows, always makes
    # the sum of squares non-finite (squares cannot cancel).  A non-finite sum of acceptable
    # values is rare (many elements near the limit), so only then is the exact check paid for.
    flat = a.reshape(-1) if a.flags.c_contiguous else a.ravel()
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(float(np.dot(flat, flat))):
            return True
    return bool(np.abs(a).max() <= _square_limit(a.dtype))


def _root(a):
    """The object at the end of an array's ``.base`` chain (arrays sharing memory share it)."""
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


def _shares_any(g, arrays) -> bool:
    root = id(_root(g))
    return any(id(_root(a)) == root and np.may_share_memory(g, a) for a in arrays)


def _check_param_array(a, what):
    if a.dtype.kind != "f":
        raise TypeError(f"can only optimize floating-point arrays, got dtype {a.dtype}")
    if not a.flags.writeable:
        raise ValueError(f"{what} (shape {a.shape}) is read-only: the optimizer updates parameters in place")


def _check_no_aliasing(old, new):
    """Refuse two parameters that share memory (W and W.T, overlapping views): each update would
    overwrite the other's, and the backends would disagree."""
    arrays = list(old) + list(new)
    if len(arrays) < 2:
        return
    spans = sorted((*_byte_bounds(a), k) for k, a in enumerate(arrays) if a.size)
    for pos, (lo, hi, k) in enumerate(spans):
        for lo2, _, k2 in spans[pos + 1:]:
            if lo2 >= hi:
                break
            if k < len(old) and k2 < len(old):
                continue                     # checked when they were added
            try:
                shared = np.shares_memory(arrays[k], arrays[k2], max_work=10**6)
            except np.exceptions.TooHardError:
                shared = True
            if shared:
                a, b = sorted((k, k2))
                raise ValueError(f"parameters {a} and {b} (shapes {arrays[a].shape} and {arrays[b].shape}) share "
                                 "memory: tied or overlapping parameters cannot be optimized as two; pass the "
                                 "shared array once")


class _HeldUntilAgreed:
    """See ``Optimizer._until_agreed``."""

    def __init__(self, optimizer):
        self._optimizer = optimizer

    def __enter__(self):
        self._optimizer._held_error = None
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or self._optimizer.comm is None or not isinstance(exc, Exception):
            return False
        self._optimizer._held_error = exc
        return True


class _interrupts_deferred:
    """Hold SIGINT (Ctrl-C) for the duration of a step's update and raise it afterwards, so that a
    KeyboardInterrupt never leaves parameters, state and counters at different steps.  Only the
    main thread receives signals; elsewhere (and when nested) this does nothing."""

    _active = False

    def __enter__(self):
        self._previous = None
        if _interrupts_deferred._active or threading.current_thread() is not threading.main_thread():
            return self
        previous = _signal.getsignal(signal.SIGINT)
        if previous is None:                 # a handler installed outside Python: leave it alone
            return self
        self._pending = []
        _signal.signal(signal.SIGINT, lambda signum, frame: self._pending.append(frame))
        self._previous = previous
        _interrupts_deferred._active = True
        return self

    def __exit__(self, *exc):
        if self._previous is None:
            return False
        _interrupts_deferred._active = False
        _signal.signal(signal.SIGINT, self._previous)
        if self._pending:
            if callable(self._previous):
                self._previous(signal.SIGINT, self._pending[0])   # default: raises KeyboardInterrupt
            elif self._previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)
        return False


def check_range(name: str, value, low=None, high=None, *, low_open=False, high_open=False, label=None):
    """torch-style check: raise ``ValueError('Invalid <label>: <value>')`` when out of range."""
    label = label or name
    ok = (type(value) in (float, int) or isinstance(value, numbers.Real) and not isinstance(value, bool)) \
        and math.isfinite(value)      # the exact types first: an ABC check costs a microsecond
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"Invalid {label}: {value}")


def check_flag(name: str, value) -> None:
    """torch-style check of a boolean flag: ``ValueError('Invalid <name>: ...')`` unless it is a bool
    (a string such as ``"False"`` would otherwise be read by its truthiness)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"Invalid {name}: {value!r} (expected True or False, got {type(value).__name__})")


class ParamState(Mapping):
    """``opt.state``: the optimizer's per-parameter state keyed by ``id(param)`` (read-only copies)."""

    def __init__(self, optimizer):
        self._opt = optimizer

    def _ids(self):
        params = getattr(self._opt, "_param_objs", [])
        return {id(params[i]): i for i in sorted(self._opt._param_state) if i < len(params)}

    def __getitem__(self, key):
        i = self._ids().get(key)
        if i is None:
            raise KeyError(f"no state for parameter id {key!r}: opt.state is keyed by id(param), and a parameter "
                           "has state once it has stepped")
        return self._opt.state_of(i)

    def __iter__(self):
        return iter(self._ids())

    def __len__(self):
        return len(self._ids())

    def __repr__(self):
        return f"ParamState({{{', '.join(f'{k}: ...' for k in self)}}})"
