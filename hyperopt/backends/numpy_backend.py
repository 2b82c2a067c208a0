"""The NumPy backend: runs each kernel's NumPy twin, parameter by parameter, in cache-sized chunks.

The interface (shared with the Vulkan backend):
  bind(arrays, state_names)    lay out the parameters (one segment each) and their state buffers
  read(name, i) / write(...)   copy one parameter's region of a buffer out / in
  clear(i)                     zero one parameter's region of every state buffer (fresh state)
  ctl_array(size)              the optimizer's small float32 control buffer (host-visible)
  program(dispatches)          compile a list of (kernel, buffer names) into a Program; its
                               ``tables[j]`` is dispatch j's per-segment scalar table
                               (n_segments, n_scalars), filled by the host before each run; float64
                               when any parameter is float64, else float32
  set_param(i, array)          the caller rebound parameter i to another array of the same shape
                               and dtype; its state is kept
  run(program, grads, download, upload_params)
                               one submit: upload ``grads`` ({index: array}; None keeps the last
                               ones and the active set) and, with ``upload_params``, the caller's
                               parameter arrays; run every dispatch, copy parameters back when
                               ``download``; returns the per-segment sums (float64
                               (n_segments, n_sums)) of each summing kernel, in program order
  close()                      later calls raise; ``lock`` serialises one backend's calls

Large kernels are cut into chunks that a process-wide thread pool shares out; optimizers in several
threads share it safely, and a forked child builds a new one (the inherited one has no threads).
"""
from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..kernels.core import CONTROL, dispatch
from . import launch_counts

# 128K floats per chunk: a chunk's buffers stay in cache between the twin's passes (measured best
# with two threads on two cores: 32K chunks spend too long in Python, 512K ones fall out of cache).
CHUNK = 1 << 17
# Threads for the chunks (HYPEROPT_NUMPY_THREADS; default: the cores this process may use, up to 8).
THREADS = int(os.environ.get("HYPEROPT_NUMPY_THREADS", min(8, len(os.sched_getaffinity(0))
                                                            if hasattr(os, "sched_getaffinity") else os.cpu_count())))
_pool = None
_pool_lock = threading.Lock()


def _reset_pool_in_child():
    # A forked child inherits the pool object but not its threads: work sent to it would wait forever.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_reset_pool_in_child)


def _worker_pool():
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(THREADS - 1, thread_name_prefix="hyperopt")
        return _pool


def _parallel(fn, items):
    """``fn`` on every item (segment, (arrays, kwargs), slice or None), results in item order.

    The items are cut into one contiguous block per thread, of about equal element counts."""
    def run(block):
        return [fn(*([a[sl] for a in arrays] if sl is not None else arrays), **kw) for _, (arrays, kw), sl in block]
    sizes = np.array([(sl.stop - sl.start) if sl is not None else arrays[0].size for _, (arrays, _), sl in items])
    if THREADS < 2 or sizes.sum() < 4 * CHUNK:
        return run(items)
    cuts = np.searchsorted(np.cumsum(sizes), np.linspace(0, sizes.sum(), THREADS + 1)[1:-1])
    bounds = [0, *cuts.tolist(), len(items)]
    blocks = [items[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    try:
        futures = [_worker_pool().submit(run, b) for b in blocks[1:]]
    except RuntimeError:     # interpreter shutdown (a daemon thread still stepping): no new threads
        return run(items)
    out = run(blocks[0])
    for f in futures:
        out += f.result()
    return out


def _guarded(method):
    """A backend method: one call at a time per backend (one optimizer stepped from two threads
    runs one step after the other), and never after close()."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        with self.lock:
            if self._closed:
                raise RuntimeError("this optimizer was closed: build a new optimizer to continue")
            return method(self, *args, **kwargs)
    return guarded


class NumpyBackend:
    name = "numpy"

    def __init__(self):
        self.lock = threading.RLock()
        self._closed = False
        self.buffers: tuple[str, ...] = ()
        self._params: list[np.ndarray] = []
        self._state: dict[str, list[np.ndarray]] = {}
        self._ctl = np.zeros(0, np.float32)
        self._grads: dict[int, np.ndarray] = {}

    # -------------------------------------------------------------- layout and state
    @_guarded
    def bind(self, arrays, state_names):
        old = {name: dict(enumerate(bufs)) for name, bufs in self._state.items()}
        old_ids = {id(a): i for i, a in enumerate(self._params)}
        self._params = list(arrays)
        self.buffers = tuple(state_names)
        self._state = {}
        for name in self.buffers:
            bufs = []
            for a in self._params:
                j = old_ids.get(id(a))
                prev = old.get(name, {}).get(j) if j is not None else None
                bufs.append(prev if prev is not None else np.zeros_like(a))
            self._state[name] = bufs

    @_guarded
    def read(self, name, i):
        return self._arrays(name, i).copy()

    @_guarded
    def write(self, name, i, values):
        self._arrays(name, i)[...] = values

    @_guarded
    def clear(self, i):
        for bufs in self._state.values():
            bufs[i][...] = 0

    @_guarded
    def buffer(self, name, i):
        """Live view of one parameter's state (the NumPy backend has nothing to copy)."""
        return self._state[name][i]

    @_guarded
    def set_param(self, i, array):
        """The caller rebound parameter i to ``array`` (same shape and dtype); its state is kept."""
        self._params[i] = array

    def reload_params(self):
        pass   # the twins update the user's arrays directly

    @_guarded
    def ctl_array(self, size):
        if self._ctl.size != size:
            self._ctl = np.zeros(size, np.float32)
        return self._ctl

    # -------------------------------------------------------------- running
    @_guarded
    def program(self, dispatches):
        return Program(dispatches, len(self._params), table_dtype(self._params))

    @_guarded
    def run(self, program, grads=None, download=True, upload_params=False):
        if grads is not None:
            self._grads = grads
        results, last = [], None
        launch_counts["numpy"] += len(program.dispatches)
        for (kernel, names), table in zip(program.dispatches, program.tables):
            if kernel.kind == CONTROL:
                kernel.numpy(self._ctl, last, table)
                continue
            last = self._run_elementwise(kernel, names, table)
            if kernel.sums:
                results.append(last)
        return results

    def _arrays(self, name, i):
        if name == "param":
            return self._params[i]
        if name == "grad":
            return self._grads[i]
        return self._state[name][i]

    def _run_elementwise(self, kernel, names, table):
        # Work items: (segment, start, stop) chunks of cache size; spread over threads in contiguous
        # runs of about equal size (ufuncs release the GIL).  Sums are added in item order, so the
        # result does not depend on the thread count.
        items = []
        for i in sorted(self._grads):
            arrays = [self._arrays(n, i) for n in names]
            if arrays[0].ndim == 0:          # 0-d parameters: 1-element views (the twins write via out=)
                arrays = [a.reshape(1) for a in arrays]
            extra = {"ctl": self._ctl, "segment": i} if kernel.ctl else {}
            row = table[i] if self._params[i].dtype == table.dtype else table[i].astype(self._params[i].dtype)
            call = (arrays, dict(zip(kernel.scalars, row), **extra))
            n = arrays[0].size
            if n <= CHUNK or not all(a.flags.c_contiguous for a in arrays):
                items.append((i, call, None))
            else:
                flat = ([a.reshape(-1) for a in arrays], call[1])
                items += [(i, flat, slice(s, s + CHUNK)) for s in range(0, n, CHUNK)]
        parts = _parallel(kernel.numpy, items)
        sums = np.zeros((len(self._params), len(kernel.sums)), np.float64)
        if kernel.sums:
            for (i, _, _), part in zip(items, parts):
                sums[i] += part
        return sums

    def close(self):
        with self.lock:
            self._closed = True


class Program:
    """A list of (kernel, buffer names) dispatches with one scalar table each."""

    def __init__(self, dispatches, n_segments, dtype=np.float32):
        self.dispatches = [dispatch(k, names) for k, names in dispatches]
        self.tables = [np.zeros((n_segments, len(k.scalars)), dtype) for k, _ in self.dispatches]


def table_dtype(arrays):
    """Scalar tables carry hyperparameters at the parameters' precision: float64 as soon as one
    parameter is float64 (a float32 parameter's row is cast to float32 before its twin runs)."""
    return np.float64 if any(a.dtype == np.float64 for a in arrays) else np.float32
