"""The fused CPU backend: each elementwise kernel's fused body, compiled by numba, in one pass.

Same interface and state layout as the NumPy backend (it only replaces how elementwise kernels
run).  A kernel's run is one compiled call per parameter: its blocks of ``CHUNK`` elements (counted
from the parameter's start) go to numba's threads, each block's sums are totalled from its lanes,
then the block partials are added in block order, so the sums are the NumPy twins' bits whatever
the thread count.  One-block parameters take a serial build of the same code (no thread launch).

Compilation is lazy (numba is imported when the first optimizer picks this backend, kernels are
compiled at their first run) and cached on disk in ``NUMBA_CACHE_DIR``, which defaults here to
``$XDG_CACHE_HOME/hyperopt/numba``; where that cannot be written, kernels compile in memory each
process.

Threads and processes: numba's ``workqueue`` layer (the one that survives ``fork``) is used unless
``NUMBA_THREADING_LAYER`` says otherwise; it must never run two parallel regions at once, so one
lock serialises them (optimizers stepping in several threads take turns for their parallel
kernels; serial ones run freely).  The lock is renewed in a forked child.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import sys
import tempfile
import threading
import types

import numpy as np

from ..kernels.core import CHUNK, CONTROL, FUSED_HELPERS, LANES, lanes_total
from . import launch_counts
from .numpy_backend import NumpyBackend

_log = logging.getLogger("hyperopt")
_numba = None
_cache = False
_compiled: dict[tuple[str, bool], object] = {}
# IEEE arithmetic as NumPy does it: no fast-math (no reassociation, no FMA contraction), and
# division by zero gives inf/nan instead of raising.
_FLAGS = dict(fastmath=False, error_model="numpy")
_compile_lock = threading.Lock()
_parallel_lock = threading.Lock()


def _renew_locks():
    global _parallel_lock, _compile_lock
    _parallel_lock, _compile_lock = threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_locks)   # a lock held by another thread at fork stays held


def cache_dir() -> str:
    """Where compiled kernels are kept: ``NUMBA_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/hyperopt/numba``."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hyperopt", "numba")


def _writable(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            return True
    except OSError:
        return False


def load_numba():
    """Import and configure numba once (raises ImportError where it is missing or broken).

    Only numba's config is set, not the environment, and only what the user left unset."""
    global _numba, _cache
    if _numba is not None:
        return _numba
    import numba
    path = cache_dir()
    _cache = _writable(path)
    if not _cache:
        _log.info("hyperopt: %s is not writable; numba kernels are compiled in memory in each process", path)
    elif not os.environ.get("NUMBA_CACHE_DIR"):
        numba.config.CACHE_DIR = path
    if not os.environ.get("NUMBA_THREADING_LAYER"):
        numba.config.THREADING_LAYER = "workqueue"
    _numba = numba
    return numba


# The driver of every kernel: ``_body`` and ``prange`` are bound per kernel and variant (see
# ``_driver``).  Segment ``i`` has ``n`` elements, its scalars in ``table[i]``; ``sums[i]`` gets
# its sums.  (Whole tables in, rows taken here: fewer Python objects per call.)
def _drive(n, bufs, table, i, ctl, sums):
    s = table[i]
    out = sums[i]
    n_sums = out.shape[0]
    n_blocks = (n + CHUNK - 1) // CHUNK
    partials = np.zeros((n_blocks, n_sums))
    for b in prange(n_blocks):  # noqa: F821 - bound by _driver
        lo = b * CHUNK
        lanes = np.zeros((n_sums, LANES))
        # unsigned bounds: indices the compiler knows are non-negative need no wraparound, so it vectorises
        _body(np.uint64(lo), np.uint64(min(n, lo + CHUNK)), bufs, s, ctl, lanes)  # noqa: F821 - bound by _driver
        for k in range(n_sums):
            partials[b, k] = _lanes_total(lanes[k])  # noqa: F821 - bound by _driver
    for k in range(n_sums):
        total = 0.0
        for b in range(n_blocks):
            total += partials[b, k]
        out[k] = total


def _jit_helpers(fn, numba, done):
    """``fn``'s globals with every fused helper it names replaced by its compiled version."""
    env = dict(fn.__globals__)
    for name in fn.__code__.co_names:
        helper = FUSED_HELPERS.get(name)
        if helper is not None and env.get(name) is helper:
            if name not in done:
                done[name] = None          # guards recursion
                done[name] = numba.njit(types.FunctionType(helper.__code__, _jit_helpers(helper, numba, done),
                                                           name, helper.__defaults__), **_FLAGS)
            env[name] = done[name]
    return env


@functools.lru_cache(maxsize=1)
def _kernels_hash() -> str:
    """A short hash of the source of every module of ``hyperopt.kernels`` (bodies and helpers)."""
    digest = hashlib.sha1()
    for name in sorted(m for m in sys.modules if m.startswith("hyperopt.kernels")):
        module = sys.modules[name]
        try:
            digest.update(inspect.getsource(module).encode())
        except (OSError, TypeError):       # no source shipped: the compiled file's bytes instead
            with open(module.__file__, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:12]


def _driver(kernel, parallel: bool):
    """The compiled driver of ``kernel`` (parallel over blocks or serial), built once per process."""
    key = (kernel.name, parallel)
    fn = _compiled.get(key)
    if fn is not None:
        return fn
    with _compile_lock:
        if key not in _compiled:
            numba = load_numba()
            body_fn = kernel.fused
            done: dict = {}
            body = numba.njit(types.FunctionType(body_fn.__code__, _jit_helpers(body_fn, numba, done),
                                                 body_fn.__name__), **_FLAGS)
            # numba's cache is keyed by the driver's name and file (whose stamp it checks): name it after
            # the kernel, the variant and a hash of the kernel modules, so an edited body or helper
            # never meets a stale build.
            tag = _kernels_hash()
            env = dict(_drive.__globals__, _body=body, _lanes_total=numba.njit(lanes_total, **_FLAGS),
                       prange=numba.prange if parallel else range)
            name = f"drive_{kernel.name}_{'parallel' if parallel else 'serial'}_{tag}"
            drive = types.FunctionType(_drive.__code__, env, name)
            drive.__qualname__ = name
            _compiled[key] = numba.njit(drive, parallel=parallel, cache=_cache, **_FLAGS)
    return _compiled[key]


class NumbaBackend(NumpyBackend):
    name = "numba"

    def __init__(self):
        load_numba()
        super().__init__()
        self._views: dict[tuple[str, ...], list] = {}
        self._no_sums = np.zeros((0, 0), np.float64)

    def bind(self, arrays, state_names):
        super().bind(arrays, state_names)
        for bufs in self._state.values():      # flat C-order state, whatever the parameter's layout
            for j, b in enumerate(bufs):
                if not b.flags.c_contiguous:
                    bufs[j] = np.ascontiguousarray(b)
        self._views = {}

    def set_param(self, i, array):
        """The caller rebound parameter ``i`` to ``array`` (same shape and dtype); state is kept."""
        parent = getattr(super(), "set_param", None)
        if parent is not None:
            parent(i, array)
        else:
            self._params[i] = array
        self._views = {}

    def run(self, program, grads=None, download=True, upload_params=False):
        if grads is not None:
            self._grads = grads
        results, last = [], None
        for (kernel, names), table in zip(program.dispatches, program.tables):
            if kernel.kind == CONTROL:
                kernel.numpy(self._ctl, last, table)
                continue
            last = self._run_fused(kernel, names, table) if kernel.fused is not None else \
                self._run_elementwise(kernel, names, table)
            if kernel.sums:
                results.append(last)
        return results

    def _flat_views(self, names):
        """Per segment, the flat views of the buffers ``names`` (None where a copy or the gradient is
        needed at run time); they only change when ``bind`` or ``set_param`` does."""
        views = self._views.get(names)
        if views is None:
            views = self._views[names] = [
                [None if n == "grad" or not self._arrays(n, i).flags.c_contiguous else self._arrays(n, i).reshape(-1)
                 for n in names] for i in range(len(self._params))]
        return views

    def _run_fused(self, kernel, names, table):
        if kernel.sums:
            sums = np.zeros((len(self._params), len(kernel.sums)), np.float64)
        else:                                  # nothing to hand back: one shared empty table
            sums = self._no_sums
            if sums.shape[0] != len(self._params):
                sums = self._no_sums = np.zeros((len(self._params), 0), np.float64)
        ctl = self._ctl
        views = self._flat_views(names)
        # float64 tables when any parameter is float64; float32 parameters take their rows rounded
        # to float32, as the NumPy backend hands them to the twins (one rounded copy per run)
        by_dtype = {table.dtype: table}
        for i in sorted(self._grads):
            flat, back = list(views[i]), None
            for j, v in enumerate(flat):
                if v is None:
                    a = self._arrays(names[j], i)
                    if a.flags.c_contiguous:
                        flat[j] = a.reshape(-1)
                    else:                      # e.g. a transposed parameter: run on a C-order copy
                        flat[j] = np.ascontiguousarray(a).reshape(-1)
                        if names[j] != "grad":   # kernels never write gradients (which may be read-only)
                            back = (back or []) + [(a, flat[j])]
            n = flat[0].size
            dtype = self._params[i].dtype
            rows = by_dtype.get(dtype)
            if rows is None:
                rows = by_dtype[dtype] = table.astype(dtype)
            args = (n, tuple(flat), rows, i, ctl, sums)
            if n > CHUNK:
                drive = _driver(kernel, True)
                with _parallel_lock:
                    drive(*args)
            else:
                _driver(kernel, False)(*args)
            for a, c in back or ():
                a[...] = c.reshape(a.shape)
        launch_counts["numba"] += 1
        return sums
