"""Checks for optimizer state coming from outside (``load_state_dict``, ``hyperopt.load``).

Every entry is checked by kind before anything changes: step counters are non-negative integers,
second moments are non-negative, everything is finite and has the parameter's shape.  Each check
returns the value in the form the optimizer keeps (Python scalars, float arrays of the parameter's
dtype) or raises ``ValueError``/``TypeError`` naming the entry.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

_PLAIN = (str, bool, int, float, type(None))


class ShardPiece:
    """One rank's part of a per-element state buffer under ``comm``: the flat elements
    ``[start, stop)`` (``values``, 1-D) of the buffer of parameter ``index``, whose whole shape is
    ``shape``.  Checkpoints pass these instead of whole buffers, so that no rank holds another
    rank's state (``Optimizer._local_state_dict``; ``load_state_dict`` accepts them under comm)."""
    __slots__ = ("values", "start", "stop", "shape", "index")

    def __init__(self, values, start: int, stop: int, shape, index: int):
        self.values, self.start, self.stop = values, int(start), int(stop)
        self.shape, self.index = tuple(shape), int(index)

    @property
    def dtype(self):
        return self.values.dtype

    def copy(self) -> "ShardPiece":
        return ShardPiece(np.array(self.values, copy=True), self.start, self.stop, self.shape, self.index)

    def __repr__(self):
        return f"ShardPiece(parameter {self.index} {self.shape}, elements [{self.start}, {self.stop}))"


def plain_copy(obj, where: str = "state dict"):
    """A deep copy built only of dicts, lists, tuples, strings, numbers, None and NumPy arrays.

    Anything else raises ``TypeError``: no object's own copy or unpickling code ever runs, and the
    copy never aliases the caller's arrays.
    """
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, (np.bool_, np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"{where} holds an array of dtype {obj.dtype}; only numeric arrays are state")
        return np.array(obj, copy=True)
    if isinstance(obj, ShardPiece):
        return obj.copy()
    if isinstance(obj, dict):
        return {plain_copy(k, where): plain_copy(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [plain_copy(v, f"{where}[{k}]") for k, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"{where} holds a {type(obj).__name__}; state is made of dicts, lists, numbers, "
                    "strings and NumPy arrays only")


def check_count(value, where: str) -> int:
    """A non-negative integer (a step counter)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)) or value < 0:
        raise ValueError(f"{where} must be a non-negative integer, got {value!r}")
    return int(value)


def check_real(value, where: str, low: float | None = None, *, low_open: bool = False) -> float:
    """A finite real number, optionally bounded below."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if not ok:
        bound = "" if low is None else f" {'>' if low_open else '>='} {low}"
        raise ValueError(f"{where} must be a finite number{bound}, got {value!r}")
    return float(value)


def check_flag(value, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where} must be True or False, got {value!r}")
    return bool(value)


def check_array(value, where: str, *, shape=None, dtype=None, nonneg: bool = False) -> np.ndarray:
    """A finite float array (a list is accepted); ``shape`` fixed when given, ``dtype`` the one kept."""
    a = value if isinstance(value, np.ndarray) else np.asarray(value) if isinstance(value, (list, tuple)) else None
    if a is None or a.dtype.kind not in "biuf":
        raise ValueError(f"{where} must be a numeric array, got {type(value).__name__}"
                         + (f" of dtype {a.dtype}" if a is not None else ""))
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f"{where} has shape {a.shape}, expected {tuple(shape)}")
    a = a.astype(dtype or (a.dtype if a.dtype.kind == "f" else np.float64))
    if not np.isfinite(a).all():
        raise ValueError(f"{where} contains NaN or infinity")
    if nonneg and (a < 0).any():
        raise ValueError(f"{where} has negative entries (it is a second moment or a magnitude: >= 0)")
    return a


def check_reals(value, where: str) -> list[float]:
    """A list of finite real numbers (a history)."""
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise ValueError(f"{where} must be a list of numbers, got {type(value).__name__}")
    return [check_real(v, f"{where}[{k}]") for k, v in enumerate(value)]


def check_entry(kind: str, value, where: str, param: np.ndarray):
    """Check ``value`` as a state entry of ``kind`` for parameter array ``param``."""
    if kind == "count":
        return check_count(value, where)
    if kind == "real":
        return check_real(value, where)
    if kind == "nonneg":
        return check_real(value, where, 0.0)
    if kind == "flag":
        return check_flag(value, where)
    if kind in ("elements", "nonneg elements") and isinstance(value, ShardPiece):
        if value.shape != param.shape:
            raise ValueError(f"{where} belongs to a parameter of shape {value.shape}, expected {param.shape}")
        checked = check_array(value.values, where, shape=(value.stop - value.start,), dtype=param.dtype,
                              nonneg=kind.startswith("nonneg"))
        return ShardPiece(checked, value.start, value.stop, value.shape, value.index)
    if kind in ("elements", "nonneg elements"):
        return check_array(value, where, shape=param.shape, dtype=param.dtype, nonneg=kind.startswith("nonneg"))
    if kind == "array":
        return check_array(value, where, dtype=param.dtype)
    raise AssertionError(f"unknown state kind {kind!r}")


def check_keys(entry, where: str, allowed, required=()) -> dict:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a dict, got {type(entry).__name__}")
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        raise ValueError(f"{where} has unknown entries {unknown} (expected some of {sorted(allowed)})")
    missing = [k for k in required if k not in entry]
    if missing:
        raise ValueError(f"{where} lacks {missing}")
    return entry
